"""One step split across workers by tensors (`engine/split.py`), on the nodes.

A part task builds some of the step's shards (whole shards, named as a one-machine build
names them) and puts them on the remote under a staging prefix of its own,
`staging/<key>/<plan>/part-<i>/`; it answers with the part's `PartResult` (per-tensor
digests, each file's size and sha256), never the bytes. The assemble task, once every
part is done, pulls the parts' files (checked against their sha256), lets
`engine/split.assemble` check the whole plan and write the index and side files,
commits the artifact to its node's store, pushes it with its record, and removes the
staging prefix. The digest is the one a one-machine build gives: it is over per-tensor
digests, and the shards are the same bytes.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergepkg.cluster.jobs import StepDone, StepJob
from mergepkg.cluster.progress import BoardReporter
from mergepkg.cluster.worker import node_id, obtain_inputs
from mergepkg.engine.split import Part, PartResult, assemble, build_part
from mergepkg.errors import BuildError, MergepkgError
from mergepkg.layout.steps import lay_out
from mergepkg.remote.store import Remote
from mergepkg.remote.sync import open_remote, push_artifact
from mergepkg.remote.transfer import get_file, put_file
from mergepkg.store.session import Session


@dataclass
class PartDone:
    index: int
    result: PartResult | None = None
    node: str = ""
    error: MergepkgError | None = None
    skipped: bool = False


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
            session.store.tmp.mkdir(parents=True, exist_ok=True)
            out = Path(tempfile.mkdtemp(prefix=f"{job.key}.part{part.index}.", dir=session.store.tmp))
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
                for name in part.shards:
                    put_file(remote.fs, out / name, f"{staging(remote, part)}/{name}")
            finally:
                shutil.rmtree(out, ignore_errors=True)
    except MergepkgError as e:
        job.recipe.written(job.name).locate(e)
        return PartDone(part.index, node=node, error=e)
    return PartDone(part.index, result, node)


def run_assemble(job: StepJob, parts: list[Part], board: Any, *answers: StepDone | PartDone) -> StepDone:
    """Gather the staged parts of `job`'s step (`answers`: the parts' and the input steps'),
    commit the artifact here and push it to the remote."""
    node = node_id()
    done = {a.index: a for a in answers if isinstance(a, PartDone)}
    upstream = [a for a in answers if isinstance(a, StepDone)]
    failed = next((a.error for a in done.values() if a.error is not None), None)
    if failed is not None:
        return StepDone(job.key, job.name, node=node, error=failed)
    if any(a.skipped for a in answers):
        return StepDone(job.key, job.name, node=node, skipped=True)
    started = time.monotonic()
    session = Session(job.engine.settings())
    store = session.store
    try:
        remote = open_remote(job.remote, skip_instance_cache=True)
        with store.in_use():
            folders = obtain_inputs(job, remote, session, upstream)
            layouts, _ = lay_out(job.recipe, [job.name], folders)
            with store.lock(job.key):
                art = store.get(job.key)
                if art is None or not art.intact():
                    if art is not None:
                        store.discard(job.key)
                    into = store.new_folder(job.key)
                    gathered = store.new_folder(job.key)
                    try:
                        given = []
                        for part in parts:
                            result = done[part.index].result
                            assert result is not None  # a part without an error has its result
                            given.append((part, _fetch_part(remote, part, result, gathered), result))
                        tensors = assemble(layouts[job.name], folders, given, into, key=job.key)
                        seconds = time.monotonic() - started
                        art = store.commit(job.key, into, job.entry, tensors, seconds=seconds)
                    finally:
                        shutil.rmtree(into, ignore_errors=True)
                        shutil.rmtree(gathered, ignore_errors=True)
            push_artifact(remote, art, hashes=session.hashes)
            with contextlib.suppress(OSError):  # staging left behind is only space: the artifact is whole
                remote.fs.rm(remote.path("staging", job.key), recursive=True)
    except MergepkgError as e:
        job.recipe.written(job.name).locate(e)
        return StepDone(job.key, job.name, node=node, error=e)
    return StepDone(job.key, job.name, art.digest, art.size, node, time.monotonic() - started)


def _fetch_part(remote: Remote, part: Part, result: PartResult, root: Path) -> Path:
    """A part's staged files in a folder of their own under `root`, each checked."""
    folder = root / f"part-{part.index}"
    folder.mkdir()
    for name, (size, sha) in result.files.items():
        _, got = get_file(remote.fs, f"{staging(remote, part)}/{name}", folder / name, size)
        if got != sha:
            raise BuildError(f"part {part.index}: the staged {name} is not the file its worker wrote (sha256)")
    return folder
