"""The command line: exit codes, stdout/stderr separation, located error messages,
--debug tracebacks and atomic builds.

A few tests run the installed `mergepkg` script as a real subprocess; the many error
cases call `mergepkg.cli.app.main(argv)` in-process (it returns the exit code), which
keeps the file fast.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import MERGEPKG, cli, load_tensors, run_cli

from mergepkg import __version__
from mergepkg.builder.outputs import MARKER
from mergepkg.cli.app import main
from mergepkg.errors import MergepkgError
from mergepkg.methods import METHODS

ALL_METHODS = (
    "linear",
    "slerp",
    "nuslerp",
    "karcher",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "sce",
    "model_stock",
    "arcee_fusion",
    "nearswap",
    "passthrough",
    "moe",
)

GOOD = """
[steps.m]
method = "ties"
base = "base"
inputs = [
  { model = "ft1", weight = 1.0, density = 0.5 },
  { model = "ft2", weight = 0.5, density = 0.7 },
]
"""


# -- helpers -------------------------------------------------------------------------
def line_of(path: Path, needle: str) -> int:
    """1-based line of the first line of `path` that contains `needle`."""
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in {path}")


def assert_located(err: str, file: Path | str, line: int | None, key: str | None, *fragments: str) -> None:
    """stderr holds `error: FILE:LINE: KEY: message` plus every fragment, and no traceback."""
    where = str(file) + (f":{line}" if line else "") + (f": {key}" if key else "")
    assert f"error: {where}: " in err, f"expected a located error at {where!r}, got:\n{err}"
    for f in fragments:
        assert f in err, f"{f!r} not in:\n{err}"
    assert "Traceback" not in err


def temp_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".mergepkg-build-"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_raw(tmp_path: Path, text: str, name: str = "raw.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path.resolve()


# -- version and methods ----------------------------------------------------------------
def test_version_subprocess():
    r = run_cli("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"mergepkg {__version__}"
    assert "Traceback" not in r.stderr


def test_version_in_process(capsys):
    code, out, _err = cli(capsys, "--version")
    assert code == 0
    assert __version__ in out


def _methods_table(text: str) -> dict[str, list[tuple[str, str]]]:
    """Parse the `mergepkg methods` table: method -> [(parameter, default), ...]."""
    table: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        if not line.startswith("│"):
            if line.startswith(("├", "└")):
                current = None
            continue
        cells = [c.strip() for c in line.strip("│").split("│")]
        if current is None:
            current = cells[0]
            table[current] = []
        if cells[1]:
            table[current].append((cells[1], cells[2]))
    return table


def test_methods_lists_every_method_with_parameters_and_defaults():
    r = run_cli("methods")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    table = _methods_table(r.stdout)
    assert sorted(table) == sorted(ALL_METHODS)
    assert list(table) == list(ALL_METHODS) == list(METHODS)
    for spec in METHODS.values():
        want = [
            (p.name, "required" if p.required else ("none" if p.default is None else str(p.default).lower()))
            for p in spec.params
        ]
        assert table[spec.name] == want, spec.name
    # a few spot checks independent of the specs
    assert ("weight", "required") in table["linear"]
    assert ("normalize", "true") in table["linear"]
    assert table["slerp"] == [("t", "required")]
    assert ("density", "1.0") in table["ties"]
    assert ("lambda", "1.0") in table["task_arithmetic"]


def test_methods_in_process_writes_stdout_only(capsys):
    code, out, err = cli(capsys, "methods")
    assert code == 0
    for name in ALL_METHODS:
        assert name in out
    assert err == ""


# -- build ----------------------------------------------------------------------------------
def test_build_subprocess_output_loads_and_generates(write_recipe, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = write_recipe(GOOD)
    out_dir = tmp_path / "built"
    r = run_cli("build", recipe, "--out", out_dir, "--seed", "7", "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # stdout: the output folder and nothing else; progress and "built" go to stderr
    assert r.stdout.strip().splitlines() == [str(out_dir.resolve())]
    assert "done: 1 built" in r.stderr
    assert re.search(r"^m .* (\d+)/\1 tensors", r.stderr, re.M), r.stderr  # progress names the step
    assert "Traceback" not in r.stderr
    assert str(out_dir) not in r.stderr
    assert (out_dir / MARKER).is_file()
    assert temp_leftovers(tmp_path) == []
    tensors = load_tensors(out_dir)
    assert tensors and all(torch.isfinite(t).all() for t in tensors.values())

    tok = AutoTokenizer.from_pretrained(out_dir)
    model = AutoModelForCausalLM.from_pretrained(out_dir)
    model.eval()
    ids = tok("ab", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        gen = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=4,
            min_new_tokens=4,
            do_sample=False,
            pad_token_id=tok.eos_token_id,
        )
    assert gen.shape == (1, ids.shape[1] + 4)
    assert isinstance(tok.decode(gen[0]), str)


def test_build_in_process_stdout_is_the_folder(write_recipe, tmp_path, capsys):
    recipe = write_recipe(GOOD)
    out_dir = tmp_path / "o"
    code, out, err = cli(capsys, "build", recipe, "--out", out_dir, "--device", "cpu", "--quiet")
    assert code == 0, err
    assert out.strip() == str(out_dir.resolve())
    assert "built m" in err


@pytest.mark.parametrize("folder", ["final [v2]", "[/x]"])
def test_build_prints_a_bracketed_out_folder_as_it_is(write_recipe, tmp_path, capsys, folder):
    """stdout is data: `final [v2]` was printed `final ` (rich markup), `[/x]` a traceback
    after the build."""
    recipe = write_recipe(GOOD)
    code, out, err = cli(capsys, "build", recipe, "--out", tmp_path / folder, "--quiet")
    assert code == 0, err
    assert out == f"{(tmp_path / folder).resolve()}\n"
    assert (tmp_path / folder / "config.json").is_file()


def test_build_several_outputs_prints_each_folder(write_recipe, tmp_path, capsys):
    recipe = write_recipe("""
        [steps.one]
        method = "linear"
        inputs = [{ model = "ft1", weight = 1.0 }, { model = "ft2", weight = 1.0 }]

        [steps.two]
        method = "slerp"
        base = "base"
        inputs = ["ft3"]
        params = { t = 0.5 }
    """)
    out_dir = tmp_path / "o"
    code, out, err = cli(capsys, "build", recipe, "--out", out_dir, "-q")
    assert code == 0, err
    assert out.strip().splitlines() == [str(out_dir.resolve() / "one"), str(out_dir.resolve() / "two")]
    assert "built one" in err and "built two" in err


def test_seed_option_is_used(write_recipe, tmp_path, capsys):
    recipe = write_recipe("""
        [steps.d]
        method = "dare_ties"
        base = "base"
        inputs = [{ model = "ft1", weight = 1.0, density = 0.5 }, { model = "ft2", weight = 1.0, density = 0.5 }]
    """)
    built = {}
    for label, seed in (("a", 1), ("b", 1), ("c", 2)):
        code, _out, err = cli(capsys, "build", recipe, "--out", tmp_path / label, "--seed", seed, "-q")
        assert code == 0, err
        built[label] = load_tensors(tmp_path / label)
    name = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(built["a"][name], built["b"][name])
    assert not torch.equal(built["a"][name], built["c"][name])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_a_clean_error_subprocess(write_recipe, tmp_path):
    recipe = write_recipe(GOOD)
    r = run_cli("build", recipe, "--out", tmp_path / "o", "--device", "cuda")
    assert r.returncode == 1
    assert "error:" in r.stderr and "--device cuda" in r.stderr and "no CUDA device" in r.stderr
    assert "hint: use --device cpu" in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("device", ["tpu", "CPU", "cuda:0"])
def test_unusable_device_is_a_clean_error(write_recipe, tmp_path, capsys, device):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    recipe = write_recipe(GOOD)
    code, out, err = cli(capsys, "build", recipe, "--out", tmp_path / "o", "--device", device)
    assert code == 1
    assert "error:" in err and device in err
    assert out == ""
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is available here")
def test_device_mps_without_mps_is_a_clean_error(write_recipe, tmp_path, capsys):
    """--device mps where MPS is missing is refused up front (engine/device.check_device),
    not a RuntimeError traceback from inside torch."""
    recipe = write_recipe(GOOD)
    try:
        code, _out, err = cli(capsys, "build", recipe, "--out", tmp_path / "o", "--device", "mps")
    except RuntimeError as e:  # escaped main(): the user sees a traceback
        pytest.fail(f"--device mps on a machine without MPS crashed with a traceback: {e}")
    assert code == 1
    assert "error:" in err and "mps" in err
    assert not (tmp_path / "o").exists()
    assert temp_leftovers(tmp_path) == []


# -- validate ---------------------------------------------------------------------------------
def test_validate_prints_the_steps_table(write_recipe, tmp_path):
    recipe = write_recipe("""
        [steps.soup]
        method = "linear"
        inputs = [{ model = "ft1", weight = 1.0 }, { model = "ft2", weight = 1.0 }]

        [steps.final]
        method = "ties"
        base = "base"
        inputs = [{ model = "soup", weight = 1.0, density = 0.5 }, { model = "ft3", weight = 1.0 }]
    """)
    r = run_cli("validate", recipe)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    rows = [[c.strip() for c in line.strip("│").split("│")] for line in r.stdout.splitlines() if line.startswith("│")]
    assert [row[:3] for row in rows] == [["soup", "linear", "ft1, ft2"], ["final (output)", "ties", "base, soup, ft3"]]
    for col in ("step", "method", "models", "tensors", "reads", "writes"):
        assert col in r.stdout
    assert all(row[3].isdigit() and int(row[3]) > 0 for row in rows)
    assert "ok" in r.stderr and "2 steps" in r.stderr and "final" in r.stderr
    assert "ok:" not in r.stdout
    assert not any(p.name.startswith(("out", ".mergepkg-build-")) for p in tmp_path.iterdir())


def test_validate_in_process(write_recipe, capsys):
    code, out, err = cli(capsys, "validate", write_recipe(GOOD))
    assert code == 0, err
    assert "ties" in out and "m (output)" in out
    assert "ok" in err


# -- located errors -----------------------------------------------------------------------------
# (id, recipe body, key, text on the error's line, fragments of the message / hint)
BAD = [
    (
        "unknown-method",
        """
        [steps.m]
        method = "tie"
        base = "base"
        inputs = [{ model = "ft1", weight = 1.0 }]
     """,
        "steps.m.method",
        'method = "tie"',
        ["unknown method 'tie'", "did you mean 'ties'?"],
    ),
    (
        "unknown-parameter",
        """
        [steps.m]
        method = "ties"
        base = "base"
        inputs = [
          { model = "ft1", weight = 1.0, density = 0.5 },
          { model = "ft2", weight = 1.0, densty = 0.5 },
        ]
     """,
        "steps.m.inputs[1].densty",
        "densty = 0.5",
        ["method 'ties' has no per-input parameter 'densty'", "did you mean 'density'?"],
    ),
    (
        "unknown-step-param",
        """
        [steps.m]
        method = "ties"
        base = "base"
        inputs = [{ model = "ft1", weight = 1.0 }]

        [steps.m.params]
        lamda = 0.5
     """,
        "steps.m.params.lamda",
        "lamda = 0.5",
        ["no parameter 'lamda'", "did you mean 'lambda'?"],
    ),
    (
        "unknown-source",
        """
        [steps.m]
        method = "linear"
        inputs = [
          { model = "ft1", weight = 1.0 },
          { model = "ft1_shardd", weight = 1.0 },
        ]
     """,
        "steps.m.inputs[1].model",
        '"ft1_shardd"',
        ["no source or step named 'ft1_shardd'", "did you mean 'ft1_sharded'?"],
    ),
    (
        "unknown-step",
        """
        [steps.soup]
        method = "linear"
        inputs = [{ model = "ft1", weight = 1.0 }, { model = "ft2", weight = 1.0 }]

        [steps.top]
        method = "ties"
        base = "base"
        inputs = [
          { model = "ft3", weight = 1.0 },
          { model = "soupp", weight = 1.0 },
        ]
     """,
        "steps.top.inputs[1].model",
        '"soupp"',
        ["no source or step named 'soupp'", "did you mean 'soup'?"],
    ),
    (
        "unknown-base",
        """
        [steps.m]
        method = "ties"
        base = "bsae"
        inputs = [{ model = "ft1", weight = 1.0 }]
     """,
        "steps.m.base",
        'base = "bsae"',
        ["no source or step named 'bsae'", "did you mean 'base'?"],
    ),
    (
        "density-out-of-range",
        """
        [steps.m]
        method = "ties"
        base = "base"
        inputs = [
          { model = "ft1", weight = 1.0, density = 1.5 },
        ]
     """,
        "steps.m.inputs[0].density",
        "density = 1.5",
        ["expected a number in (0, 1], got 1.5"],
    ),
    (
        "density-out-of-range",
        """
        [steps.s]
        method = "ties"
        base = "base"
        inputs = [{ model = "ft1", weight = 1 }]
        params = { density = 2 }
     """,
        "steps.s.params.density",
        "params = { density = 2 }",
        ["expected a number in (0, 1], got 2"],
    ),
    (
        "density-in-params-table",
        """
        [steps.s]
        method = "ties"
        base = "base"
        inputs = [{ model = "ft1", weight = 1 }]

        [steps.s.params]
        density = 2
     """,
        "steps.s.params.density",
        "density = 2",
        ["expected a number in (0, 1], got 2"],
    ),
    (
        "ties-without-base",
        """
        [steps.m]
        method = "ties"
        inputs = [{ model = "ft1", weight = 1.0 }]
     """,
        "steps.m",
        "[steps.m]",
        ["method 'ties' needs a base model", "add base ="],
    ),
    (
        "linear-with-base",
        """
        [steps.m]
        method = "linear"
        base = "base"
        inputs = [{ model = "ft1", weight = 1.0 }]
     """,
        "steps.m.base",
        'base = "base"',
        ["method 'linear' takes no base model", "remove `base`"],
    ),
    (
        "missing-weight",
        """
        [steps.m]
        method = "linear"
        inputs = [
          { model = "ft1", weight = 1.0 },
          { model = "ft2" },
        ]
     """,
        "steps.m.inputs[1]",
        '{ model = "ft2" }',
        ["missing parameter 'weight' for input 'ft2'"],
    ),
    (
        "shape-mismatch",
        """
        [steps.m]
        method = "linear"
        inputs = [
          { model = "ft1", weight = 1.0 },
          { model = "wide", weight = 1.0 },
        ]
     """,
        "steps.m.inputs[1]",
        '"wide"',
        ["'wide' has hidden size 48 but 'ft1' has 32", "models of different sizes cannot merge"],
    ),
    (
        "layer-range-past-the-model",
        """
        [steps.p]
        method = "passthrough"
        slices = [
          { sources = [{ model = "ft1", layers = [0, 2] }] },
          { sources = [{ model = "base", layers = [0, 9] }] },
        ]
     """,
        "steps.p.slices[1].sources[0].layers",
        "[0, 9]",
        ["layers [0, 9] go past the 4 layers of 'base'", "use an end of at most 4"],
    ),
    (
        "cycle",
        """
        [steps.a]
        method = "linear"
        inputs = [{ model = "b", weight = 1.0 }, { model = "ft1", weight = 1.0 }]

        [steps.b]
        method = "linear"
        inputs = [{ model = "a", weight = 1.0 }, { model = "ft2", weight = 1.0 }]
     """,
        "steps.a",
        "[steps.a]",
        ["steps form a cycle: a -> b -> a"],
    ),
]


@pytest.mark.parametrize("command", ["validate", "build"])
@pytest.mark.parametrize("body,key,needle,fragments", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_recipe_is_a_located_error(write_recipe, tmp_path, capsys, command, body, key, needle, fragments):
    recipe = write_recipe(body).resolve()
    out_dir = tmp_path / "o"
    args = ["build", recipe, "--out", out_dir, "-q"] if command == "build" else ["validate", recipe]
    code, out, err = cli(capsys, *args)
    assert code == 1
    assert_located(err, recipe, line_of(recipe, needle), key, *fragments)
    assert out == ""
    assert not out_dir.exists()
    assert temp_leftovers(tmp_path) == []

    with pytest.raises(MergepkgError) as info:  # --debug: the exception escapes (a traceback)
        main(["--debug", *map(str, args)])
    assert info.value.key == key


def test_models_with_different_layer_counts_are_a_mismatch(write_recipe, capsys):
    """A 6-layer and a 4-layer model cannot be merged whole, whichever comes first
    (layout once checked only the reference model's tensors and dropped layers 4-5)."""
    for first, second in (("deep", "ft1"), ("ft1", "deep")):
        recipe = write_recipe(f"""
            [steps.m]
            method = "linear"
            inputs = [
              {{ model = "{first}", weight = 1.0 }},
              {{ model = "{second}", weight = 1.0 }},
            ]
        """).resolve()
        code, out, err = cli(capsys, "validate", recipe)
        assert code == 1, f"inputs [{first}, {second}] validated: {out}"
        assert "error:" in err and "steps.m.inputs[1]" in err and "layers but" in err and "6" in err and "4" in err


def test_invalid_toml_reports_the_line(write_recipe, tmp_path, capsys):
    recipe = write_recipe("""
        [steps.m]
        method = "linear"
        inputs = [{ model = "ft1", weight = }]
    """).resolve()
    code, out, err = cli(capsys, "build", recipe, "--out", tmp_path / "o")
    assert code == 1
    assert_located(err, recipe, line_of(recipe, "weight = }"), None, "invalid TOML")
    assert out == ""
    assert not (tmp_path / "o").exists()


def test_invalid_toml_unclosed_table_header(tmp_path, capsys):
    recipe = write_raw(tmp_path, '[package]\nname = "x"\nversion = "0.1.0"\n\n[steps.m\nmethod = "linear"\n')
    code, _out, err = cli(capsys, "validate", recipe)
    assert code == 1
    assert_located(err, recipe, 5, None, "invalid TOML")


def test_missing_source_path(tmp_path, models, capsys):
    recipe = write_raw(
        tmp_path,
        f"""[package]
name = "x"
version = "0.1.0"

[sources]
base = {{ path = "{models["base"]}" }}
gone = {{ path = "no/such/model" }}

[steps.m]
method = "linear"
inputs = [{{ model = "base", weight = 1.0 }}, {{ model = "gone", weight = 1.0 }}]
""",
    )
    for args in (["validate", recipe], ["build", recipe, "--out", tmp_path / "o"]):
        code, _out, err = cli(capsys, *args)
        assert code == 1
        assert_located(
            err,
            recipe,
            7,
            "sources.gone.path",
            "model folder not found",
            str(tmp_path / "no" / "such" / "model"),
            "relative to the recipe file",
        )
        assert not (tmp_path / "o").exists()


def test_source_folder_without_config(tmp_path, models, capsys):
    (tmp_path / "empty").mkdir()
    recipe = write_raw(
        tmp_path,
        f"""[package]
name = "x"
version = "0.1.0"

[sources]
base = {{ path = "{models["base"]}" }}
empty = {{ path = "empty" }}

[steps.m]
method = "linear"
inputs = [{{ model = "base", weight = 1.0 }}, {{ model = "empty", weight = 1.0 }}]
""",
    )
    code, _out, err = cli(capsys, "validate", recipe)
    assert code == 1
    assert_located(err, recipe, 7, "sources.empty", "config.json")


def test_missing_recipe_file(tmp_path, capsys):
    missing = tmp_path / "nope.toml"
    for args in (["validate", missing], ["build", missing, "--out", tmp_path / "o"]):
        code, out, err = cli(capsys, *args)
        assert code == 1
        assert f"error: {missing}: recipe file not found" in err
        assert "Traceback" not in err
        assert out == ""
    assert not (tmp_path / "o").exists()


def test_error_subprocess_has_no_traceback_and_debug_has_one(write_recipe, tmp_path):
    recipe = write_recipe(BAD[0][1]).resolve()  # unknown method "tie"
    r = run_cli("build", recipe, "--out", tmp_path / "o")
    assert r.returncode == 1
    assert r.stdout == ""
    assert_located(
        r.stderr,
        recipe,
        line_of(recipe, 'method = "tie"'),
        "steps.m.method",
        "unknown method 'tie'",
        "hint: did you mean 'ties'?",
    )

    r = run_cli("--debug", "build", recipe, "--out", tmp_path / "o")
    assert r.returncode != 0
    assert "Traceback" in r.stderr
    assert "RecipeError" in r.stderr and "unknown method 'tie'" in r.stderr
    assert not (tmp_path / "o").exists()


def test_missing_recipe_subprocess(tmp_path):
    r = run_cli("validate", tmp_path / "nope.toml")
    assert r.returncode == 1
    assert "recipe file not found" in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize(
    "args",
    [["build"], ["frobnicate"], ["build", "r.toml", "--seed", "abc"], ["validate", "r.toml", "--bogus"]],
    ids=["missing-argument", "unknown-command", "bad-option-value", "unknown-option"],
)
def test_usage_error_exits_2_without_traceback(capsys, args):
    """Usage errors are click's message and exit 2, never a traceback (typer >= 0.2x vendors
    click as `typer._click`, so cli/app.py catches typer's own exception classes)."""
    try:
        code, _out, err = cli(capsys, *args)
    except Exception as e:  # escaped main(): a traceback for the user
        pytest.fail(f"usage error escaped main() as {type(e).__module__}.{type(e).__name__}: {e}")
    assert code == 2
    assert "Usage" in err or "Error" in err
    assert "Traceback" not in err


def test_no_arguments_shows_help_subprocess():
    r = run_cli()
    assert "Traceback" not in r.stderr, r.stderr[-600:]
    assert "Usage" in r.stdout + r.stderr
    assert "build" in r.stdout + r.stderr and "validate" in r.stdout + r.stderr


def test_missing_argument_subprocess():
    r = run_cli("build")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr, r.stderr[-600:]
    assert "Missing argument" in r.stderr and "recipe" in r.stderr.lower()
    assert r.stdout == ""


# -- build-time errors and atomicity ------------------------------------------------------------
ZERO_SUM = """
[steps.soup]
method = "linear"
inputs = [{ model = "ft1", weight = 1.0 }, { model = "ft2", weight = 1.0 }]

[steps.bad]
method = "linear"
inputs = [
  { model = "soup", weight = 1.0 },
  { model = "ft3", weight = -1.0 },
]
"""


def test_linear_weights_summing_to_zero_fail_the_build_cleanly(write_recipe, tmp_path, capsys):
    recipe = write_recipe(ZERO_SUM).resolve()
    out_dir = tmp_path / "o"
    code, out, err = cli(capsys, "build", recipe, "--out", out_dir, "-q")
    assert code == 1
    assert out == ""
    assert "linear weights sum to 0" in err
    assert "normalize" in err  # the hint
    assert "Traceback" not in err
    # nothing written: no output (so no NaN model), no temp folders next to it
    assert not out_dir.exists()
    assert temp_leftovers(tmp_path) == []

    with pytest.raises(MergepkgError):
        main(["--debug", "build", str(recipe), "--out", str(out_dir), "-q"])
    assert not out_dir.exists()
    assert temp_leftovers(tmp_path) == []


def test_linear_weights_summing_to_zero_error_names_the_step(write_recipe, tmp_path, capsys):
    """An error met by the engine is located at the step that failed (and names the tensor)."""
    recipe = write_recipe(ZERO_SUM).resolve()
    code, _out, err = cli(capsys, "build", recipe, "--out", tmp_path / "o", "-q")
    assert code == 1
    assert_located(
        err,
        recipe,
        line_of(recipe, "[steps.bad]"),
        "steps.bad",
        "model.embed_tokens.weight",
        "linear weights sum to 0",
        "hint: change the weights, or set params.normalize = false",
    )


def test_late_failure_leaves_no_output_subprocess(write_recipe, tmp_path):
    recipe = write_recipe(ZERO_SUM)
    out_dir = tmp_path / "o"
    r = run_cli("build", recipe, "--out", out_dir)
    assert r.returncode == 1
    assert "linear weights sum to 0" in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
    assert not out_dir.exists()
    assert temp_leftovers(tmp_path) == []


def test_a_build_out_of_room_says_so_in_a_line_and_stores_nothing(write_recipe, tmp_path):
    """A real write refused for lack of room (here a file size limit, `ulimit -f`, as a full
    disk would): one error line at the step and its hint, no traceback, nothing in the
    store, no output, no temp folders left."""
    recipe = write_recipe(GOOD)
    out_dir, home = tmp_path / "o", tmp_path / "home"

    def limit() -> None:  # the output shard is larger than this; the hash cache and locks are not
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))

    env = {**os.environ, "MERGEPKG_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200"}
    r = subprocess.run(
        [MERGEPKG, "build", str(recipe), "--out", str(out_dir), "-q"],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=limit,
        timeout=300,
    )
    assert r.returncode == 1, r.stderr
    first, hint = r.stderr.splitlines()[:2]
    assert first.startswith(
        f"error: {recipe}:{line_of(recipe, '[steps.m]')}: steps.m: File too large while writing the step into {home}"
    ), r.stderr
    assert "ulimit -f" in hint and "Traceback" not in r.stderr
    assert not out_dir.exists() and temp_leftovers(tmp_path) == []
    assert not (home / "store").exists() or not any((home / "store").iterdir())
    assert not any((home / "tmp").iterdir())


def test_failed_rebuild_keeps_the_old_output(write_recipe, tmp_path, capsys):
    out_dir = tmp_path / "o"
    good = write_recipe(GOOD, name="good.toml")
    code, _, err = cli(capsys, "build", good, "--out", out_dir, "-q")
    assert code == 0, err
    before = snapshot(out_dir)
    assert MARKER in before and any(k.endswith(".safetensors") for k in before)

    bad = write_recipe(ZERO_SUM, name="bad.toml")  # fails in its second step, at build time
    code, _, err = cli(capsys, "build", bad, "--out", out_dir, "-q")
    assert code == 1
    assert "linear weights sum to 0" in err
    assert snapshot(out_dir) == before
    assert temp_leftovers(tmp_path) == []

    # a recipe error (caught before any step runs) leaves it too
    typo = write_recipe(BAD[0][1], name="typo.toml")
    code, _, err = cli(capsys, "build", typo, "--out", out_dir, "-q")
    assert code == 1
    assert snapshot(out_dir) == before

    # and a good rebuild replaces it (the marker makes it replaceable)
    other = write_recipe(GOOD.replace("weight = 0.5", "weight = 0.25"), name="other.toml")
    code, _out, err = cli(capsys, "build", other, "--out", out_dir, "-q")
    assert code == 0, err
    after = snapshot(out_dir)
    assert after != before and MARKER in after
    assert temp_leftovers(tmp_path) == []


def test_out_folder_not_written_by_mergepkg_is_refused(write_recipe, tmp_path, capsys):
    out_dir = tmp_path / "precious"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("do not touch\n")
    (out_dir / "sub").mkdir()
    (out_dir / "sub" / "data.bin").write_bytes(b"\x00\x01")
    before = snapshot(out_dir)

    code, out, err = cli(capsys, "build", write_recipe(GOOD), "--out", out_dir, "-q")
    assert code == 1
    assert out == ""
    assert "error:" in err and str(out_dir) in err and "not written by mergepkg" in err
    assert "hint:" in err and "--out" in err
    assert "Traceback" not in err
    assert snapshot(out_dir) == before
    assert sorted(p.name for p in out_dir.iterdir()) == ["notes.txt", "sub"]
    assert temp_leftovers(tmp_path) == []


def test_out_pointing_to_a_file_is_refused(write_recipe, tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep\n")
    code, _out, err = cli(capsys, "build", write_recipe(GOOD), "--out", target, "-q")
    assert code == 1
    assert "not written by mergepkg" in err
    assert target.read_text() == "keep\n"
    assert temp_leftovers(tmp_path) == []


def test_out_empty_folder_is_used(write_recipe, tmp_path, capsys):
    out_dir = tmp_path / "empty"
    out_dir.mkdir()
    code, _out, err = cli(capsys, "build", write_recipe(GOOD), "--out", out_dir, "-q")
    assert code == 0, err
    assert (out_dir / MARKER).is_file()
    assert load_tensors(out_dir)


def test_ctrl_c_in_a_command_says_so_and_exits_130(recipe_file, capsys, monkeypatch):
    """typer turns a KeyboardInterrupt inside a command into a silent exit 130: it is said."""
    import mergepkg.cli.build as build_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_cli, "build_recipe", interrupted)
    path = recipe_file('[steps.s]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 1.0 }]\n')
    assert main(["build", str(path), "--out", str(path.parent / "out")]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err


def test_sigterm_stops_a_command_as_ctrl_c_does(recipe_file, capsys, monkeypatch):
    """A `kill` ended the process where it stood: a GGUF converter it had started ran on
    (and wrote into tmp/ after the next build cleaned it), a `verify --rebuild` scratch
    store stayed. It now raises where Ctrl-C does, so the same cleanup runs, and exits 143."""
    import mergepkg.cli.build as build_cli
    from mergepkg.cli.app import STATE, stop_on_signals

    cleaned = []

    def killed(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
        finally:
            cleaned.append(True)  # what a converter's or a scratch store's cleanup does

    monkeypatch.setattr(build_cli, "build_recipe", killed)
    path = recipe_file('[steps.s]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 1.0 }]\n')
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        stop_on_signals()
        assert main(["build", str(path), "--out", str(path.parent / "out")]) == 143
    finally:
        signal.signal(signal.SIGTERM, before)
        STATE.pop("signal", None)
    err = capsys.readouterr().err
    assert cleaned and "stopped by SIGTERM: nothing half-written was kept" in err and "Traceback" not in err
