"""A cluster task, on the node that runs it: one step built into the node's own store and
pushed to the remote.

The node's settings are its own (`MERGEPKG_HOME`, the Hugging Face cache, offline or
not); the job adds the driver's engine settings. Inputs come from the node: a source is
fetched at its locked commit into the node's Hugging Face cache (a local path is read
where it is) and must give the pin the driver resolved; an input step is pulled from the
remote, checked against the digest its own task reported. The step is laid out again
from those files (its MP2xx checked here when the driver could not lay it out), built
under its key's lock, committed, and pushed. A step the remote
holds when the task starts (an earlier attempt pushed it before its node was lost) is
not built again.

A `MergepkgError` (a recipe's error, a refused input, a denied warning) comes back in the
answer, placed at the step that failed, so Ray does not retry it; any other exception is
raised (Ray retries tasks whose worker or node died, and those raising `OSError`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mergepkg.cluster.jobs import SourceInput, StepDone, StepInput, StepJob
from mergepkg.cluster.progress import BoardReporter
from mergepkg.engine.device import check_device
from mergepkg.engine.step import budget_for, build_step
from mergepkg.errors import MergepkgError, SourceError
from mergepkg.layout.steps import lay_out
from mergepkg.layout.types import ModelInfo, StepLayout
from mergepkg.pitfalls.layouts import layout_pitfalls
from mergepkg.pitfalls.pitfall import deny, settle
from mergepkg.remote.store import Remote
from mergepkg.remote.sync import open_remote, push_artifact, substitute
from mergepkg.resolve.sources import fetch, pin_folder
from mergepkg.store.local import Artifact
from mergepkg.store.session import Session


def node_id() -> str:
    """The Ray node this runs on ("" outside Ray). Never starts Ray: asking a process that
    is not connected for its runtime context would start a local Ray instance in it."""
    import sys

    ray = sys.modules.get("ray")  # a Ray worker has imported it; a local call may not have
    if ray is None or not ray.is_initialized():
        return ""
    return ray.get_runtime_context().get_node_id()


def run_step(job: StepJob, board: Any, *upstream: StepDone) -> StepDone:
    """Build `job`'s step on this node (see the module's docstring). `upstream`: the answers
    of the tasks that built its input steps (Ray waits for them before this runs)."""
    node = node_id()
    if any(u.error is not None or u.skipped for u in upstream):
        return StepDone(job.key, job.name, node=node, skipped=True)
    started = time.monotonic()
    session = Session(job.engine.settings())
    reporter = BoardReporter(board, job.key, node)
    try:
        remote = open_remote(job.remote, skip_instance_cache=True)
        record = remote.record(job.key) if not job.present else None
        if record is not None:
            return StepDone(job.key, job.name, record.digest, record.size, node, found=True)
        with session.store.in_use():
            folders = obtain_inputs(job, remote, session, upstream)
            art = _build(job, session, folders, reporter)
            push_artifact(remote, art, hashes=session.hashes)
    except MergepkgError as e:
        job.recipe.written(job.name).locate(e)
        return StepDone(job.key, job.name, node=node, error=e, warnings=reporter.warnings, pitfalls=reporter.pitfalls)
    finally:
        reporter.settle()  # the driver sees this step's progress before its answer
    seconds = time.monotonic() - started
    return StepDone(job.key, job.name, art.digest, art.size, node, seconds, False, reporter.warnings, reporter.pitfalls)


def obtain_inputs(job: StepJob, remote: Remote, session: Session, upstream: Sequence[StepDone]) -> dict[str, Path]:
    """The folders of a job's inputs on this node; `upstream`: the input steps' answers."""
    digests = {u.key: u.digest for u in upstream}
    return {i.name: _obtain(i, remote, session, digests) for i in job.inputs}


def _obtain(item: SourceInput | StepInput, remote: Remote, session: Session, digests: dict) -> Path:
    """The folder of one input on this node."""
    if isinstance(item, StepInput):
        digest = item.digest if item.digest is not None else digests.get(item.key)
        return substitute(remote, session.store, item.key, expected_digest=digest).folder
    fetched = fetch(
        item.source,
        session.settings,
        commit=item.pin.commit,
        files=[f.name for f in item.pin.files],
        adapter=item.adapter,
    )
    pin = pin_folder(fetched.folder, session.hashes, fetched.commit, adapter=item.adapter)
    if pin != item.pin:
        raise SourceError(
            f"source {item.name!r} on this node ({fetched.folder}) differs from what the driver pinned",
            hint="every node must hold the same files for a local source; hub sources are fetched by commit",
        )
    return fetched.folder


def _build(job: StepJob, session: Session, folders: dict[str, Path], reporter: BoardReporter) -> Artifact:
    """The step built into the node's store under its key's lock (reused when there)."""
    settings, store = session.settings, session.store
    check_device(settings.device)
    layouts, infos = lay_out(job.recipe, [job.name], folders)
    layout = layouts[job.name]
    if not job.laid_out:  # the driver could not read its inputs: its MP2xx are told from here
        check_layout(job, layout, infos, reporter)
    with store.lock(job.key):
        found = store.get(job.key)
        if found is not None and found.intact():
            return found
        if found is not None:
            store.discard(job.key)
        read = {m: info.tensors for m, info in infos.items()}
        budget = budget_for([layout], read, settings.max_memory, settings.device)
        folder = store.new_folder(job.key)
        started = time.monotonic()
        try:
            tensors = build_step(
                layout,
                folders,
                read,
                folder,
                seed=job.seed,
                device=settings.device,
                max_shard_bytes=settings.max_shard_bytes,
                budget=budget,
                threads=settings.threads,
                reporter=reporter,
            )
            if job.deny_warnings:
                deny(settle(reporter.pitfalls, job.recipe), "the step was not stored; nothing was written")
            return store.commit(job.key, folder, job.entry, tensors, seconds=time.monotonic() - started)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # gone already when committed


def check_layout(job: StepJob, layout: StepLayout, infos: dict[str, ModelInfo], reporter: BoardReporter) -> None:
    """The layout's pitfalls (MP2xx), as the driver checks those of the steps it can lay
    out: told in the answer, and with `--deny-warnings` an error before anything is built."""
    found = layout_pitfalls(layout, infos)
    for pitfall in found:
        reporter.pitfall(pitfall)
    if job.deny_warnings:
        deny(settle(found, job.recipe), "nothing was built")
