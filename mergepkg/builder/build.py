"""Build a recipe: resolve, build each step whose key is not stored, lock, place outputs.

A step whose key is in the store (and whose files are as built) is reused without
reading anything; an unchanged, fully stored recipe therefore touches no tensor data.
Otherwise every remaining step is laid out first (so a late error stops the build
before the first tensor is read), and steps are built into the store one by one under
their key's file lock. Outputs are then hard-linked (or copied) into `--out` by a
rename (`outputs.py`): a failed or killed build leaves `--out` as it was.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mergepkg.builder.outputs import check_replaceable, place_outputs
from mergepkg.engine.device import check_device
from mergepkg.engine.progress import Reporter
from mergepkg.engine.step import build_step
from mergepkg.errors import LockError, MergepkgError
from mergepkg.layout.steps import lay_out, read_model_info
from mergepkg.layout.types import ModelInfo, StepLayout
from mergepkg.lockfile import Lock, lock_path, read_lock, write_lock
from mergepkg.recipe.model import Recipe
from mergepkg.resolve.resolution import Mode, Resolution, resolve
from mergepkg.store.evals import EvalCache
from mergepkg.store.local import Artifact
from mergepkg.store.session import Session


@dataclass
class BuildReport:
    resolution: Resolution
    artifacts: dict[str, Artifact]  # every planned step
    built: list[str]
    reused: list[str]
    outputs: dict[str, Path]  # output step -> placed folder (empty without --out)
    lock: Lock


def build(
    recipe: Recipe,
    session: Session,
    *,
    out: Path | None = None,
    seed: int | None = None,
    mode: Mode = "update",
    reporter: Reporter | None = None,
    targets: tuple[str, ...] | None = None,
    check_digests: bool = True,
) -> BuildReport:
    """Build the recipe's outputs (or only `targets` and what they need; the lock is then
    left alone) and place the outputs in `out` when given. With --locked/--frozen, a
    digest that differs from the lock's is an error unless `check_digests` is off
    (`verify --rebuild` compares them itself)."""
    if out is not None:
        out = out.resolve()
        check_replaceable(out)
    with session.store.in_use():  # `cache gc` waits for us
        old_lock = read_lock(lock_path(recipe))
        res = resolve(recipe, session, lock=old_lock, mode=mode, seed=seed, targets=targets)
        artifacts, built, reused = _build_steps(res, session, reporter)
        digests = {n: a.digest for n, a in artifacts.items()}
        if mode != "update" and old_lock is not None and check_digests:
            _check_digests(digests, old_lock, lock_path(recipe))
        lock = res.lock(digests)
        if mode == "update" and targets is None and lock != old_lock:
            write_lock(lock_path(recipe), lock)
        session.store.add_root(lock_path(recipe))
        outputs = {}
        if out is not None:
            with session.store.output_lock(out):
                outputs = place_outputs(
                    res, {n: artifacts[n] for n in recipe.outputs}, out, EvalCache(session.settings.home).rows
                )
        return BuildReport(res, artifacts, built, reused, outputs, lock)


def _build_steps(
    res: Resolution, session: Session, reporter: Reporter | None
) -> tuple[dict[str, Artifact], list[str], list[str]]:
    """Reuse or build every planned step, in plan order: (artifacts, built, reused)."""
    store = session.store
    folders: dict[str, Path] = {n: s.folder for n, s in res.sources.items()}
    artifacts: dict[str, Artifact] = {}
    built, reused = [], []
    planned = None  # layouts, computed the first time a step must be built
    for name in res.plan.order:
        key = res.keys[name]
        with store.lock(key):  # a second builder of this key waits here, then reuses
            art = store.get(key)
            if art is not None and art.intact():
                reused.append(name)
                if reporter:
                    reporter.step_reused(name, key)
            else:
                if art is not None:
                    store.discard(key)  # edited or truncated: never reused silently
                if planned is None:
                    check_device(session.settings.device)
                    planned = lay_out(res.recipe, res.plan.order, folders)
                art = _build_one(res, name, planned, folders, session, reporter)
                built.append(name)
        artifacts[name] = art
        folders[name] = art.folder
        if planned is not None:
            planned[1][name] = read_model_info(art.folder)  # real shard names for readers downstream
    return artifacts, built, reused


def _check_digests(digests: dict[str, str], lock: Lock, lock_file: Path) -> None:
    for name, digest in digests.items():
        locked = lock.steps[name].digest
        if locked is not None and locked != digest:
            raise LockError(
                f"step {name!r} built to {digest[:19]}, but the lock records {locked[:19]}",
                file=str(lock_file),
                hint="the build is not reproducing the locked bytes; "
                "`mergepkg verify --rebuild` shows which steps differ",
            )


def _build_one(
    res: Resolution,
    name: str,
    planned: tuple[dict[str, StepLayout], dict[str, ModelInfo]],
    folders: dict[str, Path],
    session: Session,
    reporter: Reporter | None,
) -> Artifact:
    layouts, infos = planned
    key = res.keys[name]
    settings = session.settings
    folder = session.store.new_folder(key)
    started = time.monotonic()
    try:
        digest = build_step(
            layouts[name],
            folders,
            {m: info.tensors for m, info in infos.items()},
            folder,
            seed=res.seeds[name],
            device=settings.device,
            max_shard_bytes=settings.max_shard_bytes,
            max_memory=settings.max_memory,
            threads=settings.threads,
            reporter=reporter,
        )
        return session.store.commit(key, folder, res.entries[name], digest, seconds=time.monotonic() - started)
    except MergepkgError as e:
        res.recipe.written(name).locate(e)  # engine errors: at the step that failed
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # gone already when committed
