"""Build a recipe: resolve, build each step whose key is not stored, lock, place outputs.

A step whose key is in the store (and whose files are as built) is reused without
reading anything; an unchanged, fully stored recipe therefore touches no tensor data.
Otherwise every remaining step is laid out first (so a late error stops the build
before the first tensor is read), and steps are built into the store one by one under
their key's file lock. Outputs are then hard-linked (or copied) into `--out` by a
rename: a failed or killed build leaves `--out` as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mergepkg.card import render_card
from mergepkg.engine import Reporter, build_step, check_device
from mergepkg.evaluate import EvalCache
from mergepkg.errors import BuildError, LockError, MergepkgError
from mergepkg.locate import locate
from mergepkg.lock import Lock, lock_path, read_lock, write_lock
from mergepkg.recipe import Recipe
from mergepkg.resolve import Mode, Resolution, Session, layouts, read_model_info, resolve
from mergepkg.store import MANIFEST, Artifact

MARKER = ".mergepkg-output"  # marks a folder mergepkg wrote, so a rebuild may replace it


@dataclass
class BuildReport:
    resolution: Resolution
    artifacts: dict[str, Artifact]  # every planned step
    built: list[str]
    reused: list[str]
    outputs: dict[str, Path]  # output step -> placed folder (empty without --out)
    lock: Lock


def build(recipe: Recipe, session: Session, *, out: Path | None = None, seed: int | None = None,
          mode: Mode = "update", reporter: Reporter | None = None,
          targets: tuple[str, ...] | None = None, check_digests: bool = True) -> BuildReport:
    """Build the recipe's outputs (or only `targets` and what they need; the lock is then
    left alone) and place the outputs in `out` when given. With --locked/--frozen, a
    digest that differs from the lock's is an error unless `check_digests` is off
    (`verify --rebuild` compares them itself)."""
    if out is not None:
        out = out.resolve()
        _check_replaceable(out)
    with session.store.in_use():  # `cache gc` waits for us
        return _build(recipe, session, out, seed, mode, reporter, targets, check_digests)


def _build(recipe, session, out, seed, mode, reporter, targets, check_digests) -> BuildReport:
    settings = session.settings
    lock_file = lock_path(recipe)
    old_lock = read_lock(lock_file)
    res = resolve(recipe, session, lock=old_lock, mode=mode, seed=seed, targets=targets)
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
                    check_device(settings.device)
                    planned = layouts(res, folders)
                art = _build_one(res, name, planned, folders, session, reporter)
                built.append(name)
        artifacts[name] = art
        folders[name] = art.folder
        if planned is not None:
            planned[1][name] = read_model_info(art.folder)  # real shard names for readers downstream
    digests = {n: a.digest for n, a in artifacts.items()}
    if mode != "update" and old_lock is not None and check_digests:
        for name, digest in digests.items():
            locked = old_lock.steps[name].digest
            if locked is not None and locked != digest:
                raise LockError(f"step {name!r} built to {digest[:19]}, but the lock records {locked[:19]}",
                                file=str(lock_file), hint="the build is not reproducing the locked bytes; "
                                "`mergepkg verify --rebuild` shows which steps differ")
    lock = res.lock(digests)
    if mode == "update" and targets is None and lock != old_lock:
        write_lock(lock_file, lock)
    session.add_root(lock_file)
    outputs = {}
    if out is not None:
        evals = EvalCache(settings)
        with store.output_lock(out):
            outputs = place_outputs(res, {n: artifacts[n] for n in recipe.outputs}, out, evals.rows)
    return BuildReport(res, artifacts, built, reused, outputs, lock)


def _build_one(res: Resolution, name: str, planned, folders, session: Session, reporter) -> Artifact:
    layouts_, infos = planned
    key = res.keys[name]
    folder = session.store.new_folder(key)
    started = time.monotonic()
    try:
        digest = build_step(layouts_[name], folders, {m: info.tensors for m, info in infos.items()}, folder,
                            seed=res.seeds[name], device=session.settings.device,
                            max_shard_bytes=session.settings.max_shard_bytes,
                            max_memory=session.settings.max_memory, threads=session.settings.threads,
                            reporter=reporter)
        return session.store.commit(key, folder, res.entries[name], digest, seconds=time.monotonic() - started)
    except MergepkgError as e:
        if e.key is None:  # locate engine errors at the step that failed
            step = res.recipe.steps[name]
            origin = step.origin
            e.file = str(origin.path if origin else res.recipe.path)
            e.key = f"steps.{origin.name if origin else name}"
            e.line = locate(origin.text if origin else res.recipe.text, e.key)
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # gone already when committed


def place_outputs(res: Resolution, artifacts: dict[str, Artifact], out: Path, eval_rows=lambda key: []) -> dict[str, Path]:
    """Hard-link (or copy, across filesystems) artifacts into `out`, each with a model
    card: one output is `out` itself, several are `out/<step>`. Never symlinks: `cache
    gc` must not break them. The swap into place is a rename."""
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".mergepkg-build-{out.name}-"
    for stale in out.parent.glob(prefix + "*"):  # a placement killed half-way (we hold out's lock)
        if not out.exists() and (stale / "previous").is_dir():
            os.rename(stale / "previous", out)  # killed between the two renames: restore
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    try:
        staged = work / "out"
        single = len(artifacts) == 1
        for name, art in artifacts.items():
            target = staged if single else staged / name
            target.mkdir(parents=True)
            for f in art.folder.iterdir():
                if f.name != MANIFEST:
                    _link_or_copy(f, target / f.name)
            (target / "README.md").write_text(render_card(res, name, art.digest, eval_rows(art.key)))
        (staged / MARKER).write_text(json.dumps({"recipe": str(res.recipe.path),
                                                 "outputs": {n: a.key for n, a in artifacts.items()}}) + "\n")
        if out.exists():
            os.rename(out, work / "previous")
        os.rename(staged, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {next(iter(artifacts)): out} if single else {n: out / n for n in artifacts}


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _check_replaceable(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise BuildError(f"{out} exists and was not written by mergepkg; refusing to replace it",
                         hint="choose another --out, or remove the folder")
