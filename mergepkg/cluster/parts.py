"""One step split across workers by tensors (`engine/split.py`), on the nodes.

A part task builds some of the step's shards (whole shards, named as a one-machine build
names them) and puts them on the remote under a staging prefix of its own,
`staging/<key>/<plan>/part-<i>/`; it answers with the part's `PartResult` (per-tensor
digests, each file's size and sha256, hashed as it wrote them), never the bytes. The
assemble task, once every part is done, assembles the step on the remote without
moving its shards: `engine/split.check_parts` checks the whole plan (recomputed from
the layout) against the parts' results, `side_files` makes the index and side files
here (small), the record is made from the parts' sizes and sha256s, the side files'
and the tensors' digest combined from the parts', and `remote/adopt.py` makes the
staged shards the artifact's files where they are (a rename, a server-side copy),
puts the side files and writes the record last. The staging prefix is then removed.
No node's store holds the step: whoever reads it pulls it from the remote, checked.
The digest is the one a one-machine build gives: it is over per-tensor digests, and
the shards are the same bytes. Each part checks its tensors' values as a whole step's
task does (MP3xx; with `--deny-warnings` a part that finds one stages nothing and fails
the step), and the assembly answers with every part's warnings, so the driver tells
them as for a step built whole.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from mergepkg.canonical import sha256_hex
from mergepkg.cluster.jobs import StepDone, StepJob
from mergepkg.cluster.progress import BoardReporter
from mergepkg.cluster.worker import node_id, obtain_inputs
from mergepkg.engine.split import Part, PartResult, build_part, check_parts, side_files
from mergepkg.errors import BuildError, MergepkgError
from mergepkg.io.digest import combine_digests
from mergepkg.layout.steps import lay_out
from mergepkg.pitfalls.pitfall import Pitfall, deny, settle
from mergepkg.remote.adopt import adopt
from mergepkg.remote.record import FileEntry
from mergepkg.remote.store import Remote
from mergepkg.remote.sync import new_record, open_remote
from mergepkg.remote.transfer import put_file
from mergepkg.store.session import Session


@dataclass
class PartDone:
    index: int
    result: PartResult | None = None
    node: str = ""
    error: MergepkgError | None = None
    skipped: bool = False
    warnings: list[str] = field(default_factory=list)  # the engine's, for the step's answer
    pitfalls: list[Pitfall] = field(default_factory=list)  # MP3xx of this part's tensors


def staging(remote: Remote, part: Part) -> str:
    """Where a part's files wait on the remote."""
    return remote.path("staging", part.key, part.plan[:16], f"part-{part.index}")


def run_part(job: StepJob, part: Part, board: Any, *upstream: StepDone) -> PartDone:
    """Build `part` of `job`'s step on this node and stage its files on the remote."""
    node = node_id()
    if any(u.error is not None or u.skipped for u in upstream):
        return PartDone(part.index, node=node, skipped=True)
    session = Session(job.engine.settings())
    settings = session.settings
    reporter = BoardReporter(board, job.key, node)
    try:
        remote = open_remote(job.remote, skip_instance_cache=True)
        with session.store.in_use():
            folders = obtain_inputs(job, remote, session, upstream)
            layouts, infos = lay_out(job.recipe, [job.name], folders)
            out = session.store.temp_folder(f"{job.key}.part{part.index}.")
            try:
                tensors = {m: info.tensors for m, info in infos.items()}
                result = build_part(
                    layouts[job.name],
                    folders,
                    tensors,
                    part,
                    out,
                    device=settings.device,
                    threads=settings.threads,
                    max_memory=settings.max_memory,
                    reporter=reporter,
                )
                if job.deny_warnings:  # MP3xx, as an unsplit step's task denies them: nothing staged
                    deny(settle(reporter.pitfalls, job.recipe), "the step was not stored; nothing was written")
                remote.check_root()  # staging makes the folders it writes to: a gone remote's too
                for name in part.shards:
                    put_file(remote.fs, out / name, f"{staging(remote, part)}/{name}")
            finally:
                shutil.rmtree(out, ignore_errors=True)
    except MergepkgError as e:
        job.recipe.written(job.name).locate(e)
        return PartDone(part.index, node=node, error=e, warnings=reporter.warnings, pitfalls=reporter.pitfalls)
    finally:
        reporter.settle()  # the driver sees this part's progress before the step's answer
    return PartDone(part.index, result, node, warnings=reporter.warnings, pitfalls=reporter.pitfalls)


def run_assemble(job: StepJob, parts: list[Part], board: Any, *answers: StepDone | PartDone) -> StepDone:
    """Assemble `job`'s step on the remote from its staged parts (`answers`: the parts' and
    the input steps'): the whole plan checked, the side files made here, the staged shards
    adopted as the artifact's files where they are, the record written last."""
    node = node_id()
    done = {a.index: a for a in answers if isinstance(a, PartDone)}
    upstream = [a for a in answers if isinstance(a, StepDone)]
    warnings = list(dict.fromkeys(w for a in done.values() for w in a.warnings))
    pitfalls = [p for a in sorted(done.values(), key=lambda a: a.index) for p in a.pitfalls]  # the tensors' order
    failed = next((a.error for a in done.values() if a.error is not None), None)
    if failed is not None:
        return StepDone(job.key, job.name, node=node, error=failed, warnings=warnings, pitfalls=pitfalls)
    if any(a.skipped for a in answers):
        return StepDone(job.key, job.name, node=node, skipped=True)
    started = time.monotonic()
    session = Session(job.engine.settings())
    try:
        remote = open_remote(job.remote, skip_instance_cache=True)
        found = remote.record(job.key) if not job.present else None  # a retry after the record was written
        if found is not None:
            _unstage(remote, parts)
            return StepDone(job.key, job.name, found.digest, found.size, node, 0.0, True, warnings, pitfalls)
        with session.store.in_use():
            folders = obtain_inputs(job, remote, session, upstream)
            layouts, _ = lay_out(job.recipe, [job.name], folders)
            layout = layouts[job.name]
            results = [(part, _result(done, part)) for part in parts]
            tensors = check_parts(layout, results, key=job.key)
            tmp = session.store.tmp
            tmp.mkdir(parents=True, exist_ok=True)
            side = side_files(layout, folders, max_shard_bytes=parts[0].max_shard_bytes, tmp=tmp)
        files = [FileEntry(n, size, sha) for _, r in results for n, (size, sha) in r.files.items()]
        files += [FileEntry(n, len(data), sha256_hex(data)) for n, data in side.items()]
        record = new_record(job.key, job.entry, combine_digests(tensors), files)
        staged = {n: f"{staging(remote, part)}/{n}" for part in parts for n in part.shards}
        adopted = adopt(remote, record, staged, side)
        _unstage(remote, parts)
    except MergepkgError as e:
        job.recipe.written(job.name).locate(e)
        return StepDone(job.key, job.name, node=node, error=e, warnings=warnings, pitfalls=pitfalls)
    seconds = time.monotonic() - started
    return StepDone(job.key, job.name, record.digest, record.size, node, seconds, adopted.present, warnings, pitfalls)


def _unstage(remote: Remote, parts: list[Part]) -> None:
    """Remove the plan's staging folder: what is left there is only space once the record is written."""
    with contextlib.suppress(OSError):
        remote.fs.rm(remote.path("staging", parts[0].key, parts[0].plan[:16]), recursive=True)
    with contextlib.suppress(OSError):  # the key's folder, if no other plan is staged there (a disk's)
        remote.fs.rmdir(remote.path("staging", parts[0].key))


def _result(done: dict[int, PartDone], part: Part) -> PartResult:
    answer = done.get(part.index)
    if answer is None or answer.result is None:
        raise BuildError(f"part {part.index} of {part.count} gave no result", hint="build the step again")
    return answer.result
