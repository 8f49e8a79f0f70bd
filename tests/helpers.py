"""Small helpers shared by tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder (any number of safetensors shards)."""
    from safetensors import safe_open  # torch with it: only the tests that read tensors pay for it

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(f, framework="pt") as h:
            for k in h.keys():  # noqa: SIM118 - a safe_open handle is not iterable
                out[k] = h.get_tensor(k)
    return out


MERGEPKG = str(Path(sys.executable).parent / "mergepkg")


def llama_cpp_tree() -> Path:
    """MERGEPKG_LLAMA_CPP, else `.venv/llama.cpp` (where .ci/run puts the converter of the
    llama-cpp-python release it installs). Missing is a failure: CI installs it."""
    root = Path(os.environ.get("MERGEPKG_LLAMA_CPP") or Path(sys.prefix) / "llama.cpp")
    if not (root / "convert_hf_to_gguf.py").is_file():
        pytest.fail(f"no llama.cpp converter at {root}: set MERGEPKG_LLAMA_CPP, or run .ci/run (CONTRIBUTING.md)")
    return root


MERGEKIT_SITE = Path(__file__).parent / "mergekit_site"


def mergekit_env() -> dict[str, str]:
    """The environment of a mergekit run: its arcee_fusion given mergepkg's softmax
    (mergekit_site/sitecustomize.py), PYTHONPATH otherwise kept."""
    paths = [str(MERGEKIT_SITE), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def run_cli(*args, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real `mergepkg` script, wide enough that rich tables do not wrap."""
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", **(env or {})}
    return subprocess.run([MERGEPKG, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def cli(capsys, *args) -> tuple[int, str, str]:
    """In-process `mergepkg ARGS`: (exit code, stdout, stderr)."""
    from mergepkg.cli.app import main

    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def build_recipe(
    recipe_path: Path, out: Path | None = None, *, seed: int | None = None, mode: str = "update", **settings
):
    """Build through the library with a fresh Session (MERGEPKG_HOME is per test)."""
    from mergepkg.builder.build import build
    from mergepkg.recipe.parse import load_recipe
    from mergepkg.settings import Settings
    from mergepkg.store.session import Session

    return build(load_recipe(recipe_path), Session(Settings(**settings)), out=out, seed=seed, mode=mode)


def build_one(recipe_path: Path, out: Path, **kw) -> dict[str, torch.Tensor]:
    """Build a one-output recipe into `out` and load its tensors."""
    report = build_recipe(recipe_path, out, **kw)
    (folder,) = report.outputs.values()
    return load_tensors(folder)


# a -> b, and z beside them: outputs are b and z
THREE = """
[steps.a]
method = "task_arithmetic"
base = "base"
inputs = [{ model = "ft1", weight = 1.0 }, { model = "ft2", weight = 0.5 }]

[steps.b]
method = "linear"
inputs = [{ model = "a", weight = 0.5 }, { model = "ft3", weight = 0.5 }]

[steps.z]
method = "linear"
inputs = [{ model = "ft2", weight = 0.3 }, { model = "ft3", weight = 0.7 }]
"""


def ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many representable values of their dtype lie between a and b (both finite)."""
    import torch

    bits = {2: torch.int16, 4: torch.int32}[a.element_size()]
    ia, ib = a.view(bits).to(torch.int64), b.view(bits).to(torch.int64)
    sign = 1 << (8 * a.element_size() - 1)
    ia, ib = torch.where(ia < 0, -(ia + sign), ia), torch.where(ib < 0, -(ib + sign), ib)  # monotone integers
    return (ia - ib).abs()


def reduction_mismatches(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Entries of a method that reduces over whole tensors (slerp, nuslerp, model_stock) that
    differ from mergekit's `b` by more than one unit in the last place of that reduction.

    The reduction's scalars (a dot product, a norm) may differ in their last float32 bit
    with torch's summation order; each entry is then within one ulp of its dtype, except
    where the weighted terms cancel (a result near 0): there a change of a few float32 ulps
    of the tensor's scale is the same one-bit difference, seen through a cancellation."""
    import torch

    cancelled = (a.float() - b.float()).abs() <= 4 * torch.finfo(torch.float32).eps * float(b.float().abs().max())
    return (ulps(a, b) > 1) & ~cancelled


# one step line of `mergepkg plan`'s tree
PLAN_LINE = re.compile(
    r"^[\s│├└─]*(?P<name>\S+) (?P<key>[0-9a-f]{12}) (?P<method>\S+) "
    r"(?P<state>stored|build reads (?P<reads>.+?), writes (?P<writes>.+?))(?P<above> \(above\))?$"
)


def plan_steps(text: str) -> dict[str, dict]:
    """`mergepkg plan` stdout -> step name -> {key, method, state, reads, writes} (the
    first time each step appears in the tree)."""
    steps = {}
    for line in text.splitlines():
        m = PLAN_LINE.match(line)
        if m and m["name"] not in steps:
            steps[m["name"]] = m.groupdict()
    return steps


@contextlib.contextmanager
def time_limit(seconds: int):
    """Fail the test (TimeoutError, by SIGALRM) past `seconds`: a bound for tests that start services."""

    def fail(*_):
        raise TimeoutError(f"the test took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def gc_refusals(monkeypatch, module, name: str) -> list[str]:
    """Wrap `module.name` so that each call first asks `cache gc` (a dry run) to start,
    recording its refusals: one per call made while the store is held for a reader."""
    from mergepkg.errors import BuildError
    from mergepkg.store.gc import collect_garbage
    from mergepkg.store.session import Session

    refused: list[str] = []
    real = getattr(module, name)

    def probed(*args, **kwargs):
        try:
            collect_garbage(Session().store, dry_run=True)
        except BuildError as e:
            refused.append(e.message)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, probed)
    return refused
