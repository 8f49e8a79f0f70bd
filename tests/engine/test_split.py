"""One step split across workers (`engine/split.py`): parts built into separate folders,
assembled and committed, give the one-machine build's files byte for byte and its
digest; an incomplete, repeated or foreign set of parts is refused and nothing is stored."""

from __future__ import annotations

import multiprocessing
import pickle
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import build_recipe

from mergepkg.engine.split import Part, PartResult, assemble, build_part, plan_parts
from mergepkg.errors import BuildError
from mergepkg.layout.steps import lay_out
from mergepkg.layout.types import StepLayout
from mergepkg.recipe.parse import load_recipe
from mergepkg.resolve.resolution import resolve
from mergepkg.store.local import MANIFEST, Artifact, Store
from mergepkg.store.session import Session

SHARD = 20_000  # bytes: the tiny models (about 170 KB) in about ten shards

STEPS = {
    "linear": """
        [steps.s]
        method = "linear"
        inputs = [{ model = "ft1", weight = 0.3 }, { model = "ft2", weight = 0.7 }]
        """,
    "ties": """
        [steps.s]
        method = "ties"
        base = "base"
        inputs = [{ model = "ft1", weight = 1.0, density = 0.5 }, { model = "ft2", weight = 0.5, density = 0.7 }]
        """,
    "dare_ties": """
        [steps.s]
        method = "dare_ties"
        base = "base"
        inputs = [{ model = "ft1", weight = 1.0, density = 0.5 }, { model = "ft3", weight = 0.8, density = 0.4 }]
        """,
    "slerp": """
        [steps.s]
        method = "slerp"
        base = "base"
        slices = [
          { sources = [{ model = "base", layers = [0, 2] }, { model = "ft1", layers = [0, 2] }], params = { t = [0, 1] } },
          { sources = [{ model = "base", layers = [2, 4] }, { model = "ft1", layers = [2, 4] }], params = { t = 0.5 } },
        ]
        """,
    "passthrough": """
        [steps.s]
        method = "passthrough"
        slices = [
          { sources = [{ model = "base", layers = [0, 3] }] },
          { sources = [{ model = "ft2", layers = [1, 4] }] },
        ]
        """,
    "moe": """
        [steps.s]
        method = "moe"
        base = "base"
        experts = [
          { model = "ft1", prompts = ["12+3=", "4+4="], negative_prompts = ["abc"] },
          { model = "ft2", prompts = ["hello"] },
          { model = "ft3", prompts = ["what?"] },
        ]
        params = { experts_per_token = 2, gate_mode = "hidden" }
        """,
    "union": """
        [steps.s]
        method = "task_arithmetic"
        base = "base"
        inputs = [{ model = "chat", weight = 0.5 }, { model = "ft2", weight = 0.25 }]
        tokenizer = { source = "union" }
        """,
}


@dataclass
class Laid:
    res: object
    layout: StepLayout
    folders: dict[str, Path]
    infos: dict[str, dict]
    key: str
    seed: int


def laid(path: Path, step: str = "s", seed: int | None = None) -> Laid:
    res = resolve(load_recipe(path), Session(), seed=seed)
    folders = {n: s.folder for n, s in res.sources.items() if s.folder is not None}
    layouts, infos = lay_out(res.recipe, res.plan.order, folders)
    tensors = {m: info.tensors for m, info in infos.items()}
    return Laid(res, layouts[step], folders, tensors, res.keys[step], res.seeds[step])


def build_parts(it: Laid, parts: list[Part], root: Path) -> list[tuple[Part, Path, PartResult]]:
    """Each part into a folder of its own, as separate workers would."""
    built = []
    for part in parts:
        out = root / f"part-{part.index}-of-{part.count}"
        out.mkdir(parents=True)
        built.append((part, out, build_part(it.layout, it.folders, it.infos, part, out)))
    return built


def commit(it: Laid, built, home: Path) -> Artifact:
    store = Store(home)
    into = store.new_folder(it.key)
    try:
        tensors = assemble(it.layout, it.folders, built, into, key=it.key)
    except BaseException:
        shutil.rmtree(into)
        raise
    return store.commit(it.key, into, it.res.entries["s"], tensors, seconds=0.0)


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != MANIFEST}


def reference(path: Path, key: str, seed: int | None = None) -> Artifact:
    """The one-machine build of the recipe's step, in the test's own store."""
    build_recipe(path, seed=seed, max_shard_bytes=SHARD)
    art = Session().store.get(key)
    assert art is not None
    return art


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(STEPS))
def test_parts_assembled_are_the_one_machine_build_byte_for_byte(method, write_recipe, chat, tmp_path):
    seed = 1234 if method == "dare_ties" else None
    path = write_recipe(STEPS[method] + f'\n[sources.chat]\npath = "{chat}"\n')
    it = laid(path, seed=seed)
    whole = reference(path, it.key, seed)
    want = files(whole.folder)
    assert len([n for n in want if n.endswith(".safetensors")]) >= 3  # sharded, so parts differ
    if method == "union":
        assert any(t.row_map is not None for t in it.layout.tensors)  # vocabulary rows aligned
    if method == "moe":
        assert any(not t.parts for t in it.layout.tensors)  # routers, computed by their parts
    for count in (1, 2, 3):
        parts = plan_parts(it.layout, count, key=it.key, seed=it.seed, max_shard_bytes=SHARD)
        assert len(parts) == count
        art = commit(it, build_parts(it, parts, tmp_path / f"workers-{count}"), tmp_path / f"home-{count}")
        assert files(art.folder) == want, count
        assert art.digest == whole.digest and art.manifest["tensors"] == whole.manifest["tensors"]
        assert art.intact() and art.holds()


def _worker(path: Path, seed: int, part: Part, out: Path) -> PartResult:
    """A worker in a process of its own: it lays the step out again from the recipe
    (headers only) and builds its part, which it checks was planned for that layout."""
    it = laid(path, seed=seed)
    return build_part(it.layout, it.folders, it.infos, part, out, threads=1)


@pytest.mark.slow
def test_parts_built_in_separate_processes(write_recipe, tmp_path):
    path = write_recipe(STEPS["dare_ties"])
    it = laid(path, seed=7)
    whole = reference(path, it.key, seed=7)
    parts = plan_parts(it.layout, 3, key=it.key, seed=it.seed, max_shard_bytes=SHARD)
    parts = [pickle.loads(pickle.dumps(p)) for p in parts]  # what travels to a worker
    outs = [tmp_path / "w" / str(p.index) for p in parts]
    for out in outs:
        out.mkdir(parents=True)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_worker, path, 7, p, o) for p, o in zip(parts, outs)]
        results = [pickle.loads(pickle.dumps(f.result())) for f in futures]
    art = commit(it, list(zip(parts, outs, results)), tmp_path / "home")
    assert files(art.folder) == files(whole.folder) and art.digest == whole.digest


@pytest.mark.slow
def test_parts_under_a_memory_limit_give_the_same_bytes(write_recipe, tmp_path, monkeypatch):
    from mergepkg.engine import memory
    from mergepkg.io.reader import ModelReader

    path = write_recipe(STEPS["linear"])
    it = laid(path)
    whole = reference(path, it.key)
    blocks = []
    real = ModelReader.get_rows
    monkeypatch.setattr(ModelReader, "get_rows", lambda self, *a: blocks.append(a) or real(self, *a))
    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)  # tiny models: a tiny budget, all the engine's
    monkeypatch.setattr(memory, "CHUNK_WORK", 0)
    built = []
    for part in plan_parts(it.layout, 2, key=it.key, seed=it.seed, max_shard_bytes=SHARD):
        out = tmp_path / str(part.index)
        out.mkdir()
        built.append((part, out, build_part(it.layout, it.folders, it.infos, part, out, max_memory=4096)))
    assert blocks  # merged in blocks of rows
    art = commit(it, built, tmp_path / "home")
    assert files(art.folder) == files(whole.folder) and art.digest == whole.digest


# -- the plan ---------------------------------------------------------------------------
@pytest.mark.slow
def test_plan_covers_every_shard_once_in_order_and_balances_bytes(write_recipe):
    it = laid(write_recipe(STEPS["linear"]))
    one = plan_parts(it.layout, 1, key=it.key, max_shard_bytes=SHARD)
    (whole,) = one
    for count in (2, 3, 4, 50):
        parts = plan_parts(it.layout, count, key=it.key, max_shard_bytes=SHARD)
        assert parts == plan_parts(it.layout, count, key=it.key, max_shard_bytes=SHARD)  # deterministic
        assert [p.index for p in parts] == list(range(len(parts))) and {p.count for p in parts} == {len(parts)}
        assert len(parts) == min(count, len(whole.shards))
        assert [s for p in parts for s in p.shards] == list(whole.shards)
        assert sum(p.bytes for p in parts) == whole.bytes == it.layout.bytes_out
        assert sum(p.tensors for p in parts) == whole.tensors == len(it.layout.tensors)
        assert all(p.shards for p in parts)
    three = plan_parts(it.layout, 3, key=it.key, max_shard_bytes=SHARD)
    assert max(p.bytes for p in three) < 0.5 * whole.bytes
    (single,) = plan_parts(it.layout, 3, key=it.key)  # 2 GB shards: one file, one part
    assert single.shards == ("model.safetensors",)
    with pytest.raises(ValueError):
        plan_parts(it.layout, 0, key=it.key)


# -- refusals ---------------------------------------------------------------------------
TWO = """
[steps.s]
method = "linear"
inputs = [{ model = "ft1", weight = 0.3 }, { model = "ft2", weight = 0.7 }]

[steps.t]
method = "linear"
inputs = [{ model = "ft1", weight = 0.6 }, { model = "ft2", weight = 0.4 }]
"""


@pytest.fixture
def two(write_recipe, tmp_path):
    """Steps s and t (same tensors, other weights), each planned in 3 parts and built."""
    path = write_recipe(TWO)
    s, t = laid(path, "s"), laid(path, "t")
    built = {}
    for name, it in (("s", s), ("t", t)):
        parts = plan_parts(it.layout, 3, key=it.key, seed=it.seed, max_shard_bytes=SHARD)
        built[name] = build_parts(it, parts, tmp_path / f"workers-{name}")
    return s, t, built


def refused(it: Laid, built, home: Path, match: str) -> None:
    with pytest.raises(BuildError, match=match):
        commit(it, built, home)
    store = Store(home)
    assert store.get(it.key) is None  # nothing committed
    assert not store.tmp.is_dir() or not any(store.tmp.iterdir())


@pytest.mark.slow
def test_missing_repeated_or_foreign_parts_are_refused_and_nothing_is_committed(two, tmp_path):
    s, t, built = two
    s0, s1, s2 = built["s"]
    home = tmp_path / "home"
    refused(s, [s0, s2], home, "1 of 3 parts missing: 1")
    refused(s, [s0, s1, s1, s2], home, "part 1 of 3 is given twice")
    refused(s, [s0, built["t"][1], s2], home, "part 1 of 3 is planned for another step")
    refused(s, built["t"], home, "planned for step")
    refused(s, [s0, (s1[0], s1[1], built["t"][1][2]), s2], home, "built for another part, step or layout")
    refused(s, [s0, (s1[0], s1[1], s2[2]), s2], home, "built for another part")
    refused(s, [], home, "no parts")
    # a part of t, built from s's layout, is refused before anything is read
    out = tmp_path / "stray"
    out.mkdir()
    with pytest.raises(BuildError, match="planned for another step or layout"):
        build_part(s.layout, s.folders, s.infos, built["t"][0][0], out)
    assert not any(out.iterdir())
    # the parts as planned: both steps commit, each its own
    assert commit(s, built["s"], home).digest != commit(t, built["t"], tmp_path / "home-t").digest


@pytest.mark.slow
def test_a_damaged_or_missing_shard_file_is_refused(two, tmp_path):
    s, _, built = two
    part, folder, _ = built["s"][1]
    name = part.shards[0]
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit flipped
    refused(s, built["s"], tmp_path / "home", f"{name} is not the file its worker wrote")
    (folder / name).write_bytes(data[:-4])
    refused(s, built["s"], tmp_path / "home", f"{name} has {len(data) - 4} bytes")
    (folder / name).unlink()
    refused(s, built["s"], tmp_path / "home", f"{name} is missing")
    (folder / name).write_bytes(data)
    assert commit(s, built["s"], tmp_path / "home").intact()
