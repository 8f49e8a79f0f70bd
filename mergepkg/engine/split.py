"""One step built by several workers: each builds some of its shards, one assembles them.

A step's output tensors are cut into shards exactly as a one-machine build cuts them
(`io/writer.plan_shards` under the same `max_shard_bytes`, named by `shard_names`), and
the shards, in order, are grouped into parts of about equal bytes: whole shards, so a
part's files are the one-machine build's files of the same names, byte for byte.

    parts = plan_parts(layout, workers, key=key, seed=seed, max_shard_bytes=size)   # driver
    result = build_part(layout, folders, infos, part, out)                          # worker, per part
    tensors = assemble(layout, folders, [(part, out, result), ...], into, key=key)  # one machine
    store.commit(key, into, entry, tensors, seconds=...)                            # its key's lock held

or, the shards left on a remote where the workers staged them (`cluster/parts.py`):

    tensors = check_parts(layout, [(part, result), ...], key=key)   # no file read
    side = side_files(layout, folders, max_shard_bytes=size)        # then remote/adopt.py

Why the bytes match: a shard's header depends only on its own tensors (names, dtypes,
shapes, offsets), and every tensor's bytes only on its own inputs: random methods draw
from per-tensor seeds (`engine/seeds.py`), reductions run in fixed blocks, vocabulary
rows move by the layout's `RowMap`. A part streams its tensors through the same engine
as a whole build (`engine/step.write_tensors`) over a layout cut to its tensors. An moe
step's routers are computed by the part whose shards hold them, and only there
(`engine/routers.py` over the part's tensors: per-tensor seeds in the random modes;
the same prompts through the same base in the prompt modes, on one CPU thread), so a
part without routers never loads the base into transformers. The step's digest is over
per-tensor digests (`io/digest.py`), so it holds however the work was split.

What `check_parts` checks, before anything is written: the parts are exactly the plan's
(each index once, none missing, none from another plan: every `Part` carries the
plan's fingerprint, a sha256 over the step's key, seed, shard size and layout, and
`plan_parts` is recomputed from the layout it is given); each result was built for
its part and digests exactly its shards' tensors. `assemble` also checks each file
is there with the size (and, with `verify`, the sha256) its worker recorded; only then
are the files linked (copied across file systems) into `into` and the `side_files`
written. The caller commits; a refused assembly commits nothing.

Parts and results are plain frozen dataclasses (picklable), and nothing here knows
how workers are run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mergepkg.engine.progress import NullReporter, Reporter
from mergepkg.engine.side_files import write_side_files
from mergepkg.engine.step import budget_for, write_tensors
from mergepkg.errors import BuildError
from mergepkg.io.digest import BLOCK
from mergepkg.io.tensors import TensorInfo
from mergepkg.io.writer import MAX_SHARD_BYTES, ShardWriter, plan_shards, shard_names, write_index
from mergepkg.layout.types import StepLayout

Shards = list[list[tuple[str, TensorInfo]]]


@dataclass(frozen=True)
class Part:
    """One worker's share of a step: consecutive whole shards of the one-machine plan."""

    index: int  # 0..count-1, in tensor order
    count: int  # parts in the plan (at most the count asked for, at most one per shard)
    shards: tuple[str, ...]  # the file names this part writes, as the one-machine build names them
    tensors: int  # output tensors in them
    bytes: int  # their tensor bytes (for sizing tasks)
    key: str  # the step's key
    seed: int  # the recipe's seed: a random method's draws depend on it
    max_shard_bytes: int
    plan: str  # sha256 over key, seed, max_shard_bytes and the layout: the same in every part of a plan


@dataclass(frozen=True)
class PartResult:
    """What a worker built: `tensors` {name: digest, as io/digest.py computes it} of every
    tensor in the part's shards; `files` {shard name: (size, sha256)}."""

    index: int
    plan: str  # the plan of the part it was built for
    tensors: dict[str, str]
    files: dict[str, tuple[int, str]]


def plan_parts(
    layout: StepLayout, count: int, *, key: str, seed: int = 0, max_shard_bytes: int = MAX_SHARD_BYTES
) -> list[Part]:
    """The step's shards, as a one-machine build plans them, grouped in order into at most
    `count` parts of about equal bytes (each at least one shard). Deterministic."""
    if count < 1:
        raise ValueError(f"a step is split into at least one part, not {count}")
    shards = _shards(layout, max_shard_bytes)
    names = shard_names(len(shards))
    sizes = [sum(info.nbytes for _, info in items) for items in shards]
    cuts = _cuts(sizes, min(count, len(shards)))
    plan = fingerprint(layout, key=key, seed=seed, max_shard_bytes=max_shard_bytes)
    return [
        Part(
            index=i,
            count=len(cuts) - 1,
            shards=tuple(names[a:b]),
            tensors=sum(len(items) for items in shards[a:b]),
            bytes=sum(sizes[a:b]),
            key=key,
            seed=seed,
            max_shard_bytes=max_shard_bytes,
            plan=plan,
        )
        for i, (a, b) in enumerate(itertools.pairwise(cuts))
    ]


def build_part(
    layout: StepLayout,
    folders: dict[str, Path],
    infos: dict[str, dict[str, TensorInfo]],
    part: Part,
    out: Path,
    *,
    device: str = "cpu",
    threads: int | None = None,
    max_memory: int | None = None,
    reporter: Reporter | None = None,
) -> PartResult:
    """Write `part`'s shard files into `out` (an empty folder the caller owns): the output
    tensors in them, merged from the inputs they need only. No index or side files
    (`assemble` writes those). A part planned for another layout is refused first."""
    if _replan(layout, part) != part:
        raise BuildError(f"part {part.index} of {part.count} was planned for another step or layout")
    shards = _shards(layout, part.max_shard_bytes)
    names = shard_names(len(shards))
    own = [s for s, name in enumerate(names) if name in part.shards]
    first = sum(len(items) for items in shards[: own[0]])
    tensors = layout.tensors[first : first + part.tensors]
    bytes_in = sum(infos[p.model][p.tensor].nbytes for t in tensors for p in t.parts)
    sub = dataclasses.replace(layout, tensors=tensors, bytes_in=bytes_in)
    writer = ShardWriter(out, _pairs(layout), part.max_shard_bytes, only=own, hash_files=True)
    reporter = reporter or NullReporter()
    budget = budget_for([sub], infos, max_memory, device)
    write_tensors(
        sub, folders, infos, writer, seed=part.seed, device=device, budget=budget, threads=threads, reporter=reporter
    )
    reporter.step_finished(layout.step.name)
    hashes = writer.file_digests
    files = {name: ((out / name).stat().st_size, hashes[name]) for name in part.shards}
    return PartResult(index=part.index, plan=part.plan, tensors=writer.digests, files=files)


def check_parts(layout: StepLayout, parts: list[tuple[Part, PartResult]], *, key: str) -> dict[str, str]:
    """Check that `parts` (each: the part and its worker's result) are the whole plan of
    step `key`, recomputed from `layout`: every part once, none missing, none of another
    step, layout or plan; each result built for its part, digesting exactly the tensors
    of its shards and naming exactly its shard files. Returns every tensor's digest (for
    `Store.commit`, or `combine_digests` for a record). Reads no file: where the shards
    are is the caller's (`assemble` here; `remote/adopt.py` on a remote)."""
    if not parts:
        raise BuildError("no parts to assemble")
    given = parts[0][0]
    if given.key != key:
        raise BuildError(f"part {given.index} was planned for step {given.key[:12]}, not {key[:12]}")
    expected = plan_parts(layout, given.count, key=key, seed=given.seed, max_shard_bytes=given.max_shard_bytes)
    seen: set[int] = set()
    for part, _ in parts:
        if part.index in seen or not 0 <= part.index < len(expected) or part != expected[part.index]:
            what = "given twice" if part.index in seen else "planned for another step, layout or plan"
            raise BuildError(f"part {part.index} of {part.count} is {what}")
        seen.add(part.index)
    missing = [i for i in range(len(expected)) if i not in seen]
    if missing:
        which = ", ".join(map(str, missing))
        raise BuildError(f"{len(missing)} of {len(expected)} parts missing: {which}", hint="build them, then assemble")
    shards = _shards(layout, given.max_shard_bytes)
    names = shard_names(len(shards))
    tensors: dict[str, str] = {}
    for part, result in parts:
        _check(part, result, [n for s, name in enumerate(names) if name in part.shards for n, _ in shards[s]])
        tensors.update(result.tensors)
    return tensors


def side_files(
    layout: StepLayout, folders: dict[str, Path], *, max_shard_bytes: int, tmp: Path | None = None
) -> dict[str, bytes]:
    """The output's files besides its shards, by name, as `build_step` writes them: index,
    config, generation config, tokenizer, chat template (written under `tmp`, read back)."""
    shards = _shards(layout, max_shard_bytes)
    with tempfile.TemporaryDirectory(prefix="side-files.", dir=tmp) as where:
        folder = Path(where)
        write_index(folder, shards, shard_names(len(shards)))
        write_side_files(layout, folders, folder)
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def assemble(
    layout: StepLayout,
    folders: dict[str, Path],
    parts: list[tuple[Part, Path, PartResult]],
    into: Path,
    *,
    key: str,
    verify: bool = True,
) -> dict[str, str]:
    """One machine's assembly: `check_parts` over `parts` (each: the part, the folder its
    worker wrote, its result), each file there with its recorded size (and, with
    `verify`, re-read against its worker's sha256), then the files linked into `into` (an
    empty folder the caller owns; hard links, so the workers' files are not written
    again, or copies across file systems) and the `side_files` written. Returns every
    tensor's digest, for `Store.commit`. Raises `BuildError` having written nothing when
    a part is missing, given twice, of another plan or broken."""
    tensors = check_parts(layout, [(part, result) for part, _, result in parts], key=key)
    for part, folder, result in parts:
        _check_files(part, folder, result)
        for name, (_, sha) in result.files.items() if verify else ():
            if _sha256(folder / name) != sha:
                raise BuildError(f"part {part.index}: {name} is not the file its worker wrote (sha256)")
    if any(into.iterdir()):
        raise BuildError(f"{into} is not empty")
    side = side_files(layout, folders, max_shard_bytes=parts[0][0].max_shard_bytes, tmp=into.parent)
    for part, folder, _ in parts:
        for name in part.shards:
            try:
                os.link(folder / name, into / name)
            except OSError:  # another file system, or no hard links there
                shutil.copyfile(folder / name, into / name)
    for name, data in side.items():
        (into / name).write_bytes(data)
    return tensors


def fingerprint(layout: StepLayout, *, key: str, seed: int, max_shard_bytes: int) -> str:
    """sha256 over what a part's bytes depend on: the key, seed and shard size, and every
    output tensor's name, dtype, shape, inputs, parameters and row map."""
    h = hashlib.sha256(repr((key, seed, max_shard_bytes, layout.method.name, layout.step.dtype)).encode())
    for t in layout.tensors:
        params = sorted(t.params.items())
        h.update(repr((t.name, t.info.dtype, t.info.shape, t.base, t.inputs, params, t.row_map)).encode())
    return h.hexdigest()


def _check(part: Part, result: PartResult, names: list[str]) -> None:
    """A result is its part's: the same plan, every tensor of its shards digested once,
    every shard file named."""
    if result.plan != part.plan or result.index != part.index:
        raise BuildError(f"the result given for part {part.index} was built for another part, step or layout")
    if sorted(result.tensors) != sorted(names):
        raise BuildError(f"part {part.index} digested {len(result.tensors)} tensors; its shards hold {len(names)}")
    if sorted(result.files) != sorted(part.shards):
        raise BuildError(f"part {part.index} wrote {sorted(result.files)}; its shards are {list(part.shards)}")


def _check_files(part: Part, folder: Path, result: PartResult) -> None:
    """Every file of a result in `folder` with the recorded size."""
    for name, (size, _) in result.files.items():
        try:
            found = (folder / name).stat().st_size
        except FileNotFoundError:
            raise BuildError(f"part {part.index}: {name} is missing from {folder}") from None
        if found != size:
            raise BuildError(f"part {part.index}: {name} has {found} bytes; its worker wrote {size}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
    return h.hexdigest()


def _replan(layout: StepLayout, part: Part) -> Part | None:
    """The part of that index in the plan `part` claims to be of, recomputed from `layout`."""
    parts = plan_parts(layout, part.count, key=part.key, seed=part.seed, max_shard_bytes=part.max_shard_bytes)
    return parts[part.index] if 0 <= part.index < len(parts) else None


def _pairs(layout: StepLayout) -> list[tuple[str, TensorInfo]]:
    return [(t.name, t.info) for t in layout.tensors]


def _shards(layout: StepLayout, max_shard_bytes: int) -> Shards:
    return plan_shards(_pairs(layout), max_shard_bytes)


def _cuts(sizes: list[int], count: int) -> list[int]:
    """Boundaries [0, ..., len(sizes)] cutting `sizes` into `count` non-empty runs: each
    inner cut where the running total is nearest its share of the whole."""
    total, running = sum(sizes), [0]
    for size in sizes:
        running.append(running[-1] + size)
    cuts = [0]
    for i in range(1, count):
        lo, hi = cuts[-1] + 1, len(sizes) - (count - i)  # leave at least one shard to each run
        off = [abs(running[j] * count - total * i) for j in range(lo, hi + 1)]  # distance from i/count of the total
        cuts.append(lo + off.index(min(off)))
    return [*cuts, len(sizes)]
