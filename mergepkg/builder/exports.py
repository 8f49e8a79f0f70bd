"""Make the exports a build asks for (`[exports.NAME]`, docs/export.md).

Each export is an artifact of the store under its own key (resolve/exports.py): reused
when stored and intact, else converted from its step's artifact into a temp folder of
the store and committed there, under the key's file lock, as steps are. The artifact
holds one file, `model.gguf`, and its sha256 is the artifact's digest, so the lock's
digest is what `sha256sum` prints for the placed `NAME.gguf`. A converter that fails
leaves nothing: not in the store, not in `--out`, not in the lock.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from mergepkg.builder.outputs import MARKER, check_replaceable, link_or_copy
from mergepkg.engine.progress import Reporter
from mergepkg.errors import BuildError, MergepkgError
from mergepkg.export.gguf import check_model, convert
from mergepkg.recipe.exports import export_file
from mergepkg.resolve.resolution import Resolution
from mergepkg.store.hashcache import sha256_file
from mergepkg.store.local import Artifact
from mergepkg.store.session import Session

FILE = "model.gguf"  # an export artifact's one file; placed as NAME.gguf


def make_exports(
    res: Resolution,
    session: Session,
    steps: dict[str, Artifact],
    names: tuple[str, ...],
    reporter: Reporter,
    sample: int | None,
) -> tuple[dict[str, Artifact], list[str]]:
    """The artifacts of exports `names` (their steps' artifacts in `steps`), and those
    converted here. `sample` as for steps: bytes of a reused file re-hashed (None: all)."""
    store, made, built = session.store, {}, []
    for name in names:
        locked = res.exports[name]
        with store.lock(locked.key):
            art = store.get(locked.key)
            if art is not None and art.intact() and (sample == 0 or art.holds(sample)):
                reporter.step_reused(name, locked.key)
            else:
                if art is not None:
                    store.discard(locked.key)  # edited or truncated: never reused silently
                try:
                    art = _convert(res, session, name, steps[locked.step], reporter)
                except MergepkgError as e:
                    raise res.recipe.locate(e, f"exports.{name}") from None
                built.append(name)
        made[name] = art
    return made, built


def _convert(res: Resolution, session: Session, name: str, step: Artifact, reporter: Reporter) -> Artifact:
    export, locked, converter = res.recipe.exports[name], res.exports[name], res.converter
    assert converter is not None  # resolve found it, or the recipe has no exports
    check_model(step.folder, converter)
    reporter.step_started(name, 1, step.size)
    folder = session.store.new_folder(locked.key)
    started = time.monotonic()
    try:
        convert(step.folder, folder / FILE, export.type, converter, session.settings.threads)
        sha256 = sha256_file(folder / FILE)
        entry = {"export": export.format, "type": export.type, "step": step.key, "converter": converter.identity}
        art = session.store.commit(
            locked.key, folder, entry, {}, seconds=time.monotonic() - started, sha256={FILE: sha256}
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    reporter.tensor_done(step.size)
    reporter.step_finished(name)
    return art


def place_exports(exports: dict[str, Artifact], out: Path) -> dict[str, Path]:
    """Each export as `out/NAME.gguf`, linked (or copied) and renamed into place one by
    one, into an output folder of mergepkg's (`mergepkg export`; a build places its
    exports with its outputs, in one swap)."""
    check_replaceable(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).exists():
        (out / MARKER).write_text("{}\n")
    placed = {}
    for name, art in exports.items():
        target = out / export_file(name)
        if target.is_dir():
            raise BuildError(f"{target} is a folder", hint="rename the export or the step")
        temp = out / f".{export_file(name)}.{os.getpid()}.tmp"
        link_or_copy(art.folder / FILE, temp)
        os.replace(temp, target)
        placed[name] = target
    return placed
