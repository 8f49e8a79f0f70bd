"""Make the exports a build asks for (`[exports.NAME]`, docs/export.md).

Each export is an artifact of the store under its own key (resolve/exports.py): reused
when stored and intact, else converted from its step's artifact into a temp folder of
the store and committed there, under the key's file lock, as steps are. The artifact
holds one file, `model.gguf`, and its sha256 is the artifact's digest, so the lock's
digest is what `sha256sum` prints for the placed `NAME.gguf`; its manifest's entry is
what its key hashes. A converter that fails (or writes no GGUF file) leaves nothing:
not in the store, not in `--out`, not in the lock. Exports are not shared through
remotes (builder/share.py leaves them out): each is made again from its step.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from mergepkg.builder.outputs import MARKER, check_makeable, link_or_copy
from mergepkg.engine.progress import Reporter
from mergepkg.errors import BuildError, MergepkgError
from mergepkg.export.gguf import check_model, convert, export_key
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
    entry = res.export_entries[name]  # what the key hashes: the manifest's entry, as a step's is
    assert converter is not None  # resolve(exports="converter") found it
    assert export_key(entry) == locked.key and entry["converter"] == converter.digest
    check_model(step.folder, converter)
    reporter.step_started(name, 1, step.size)
    folder = session.store.new_folder(locked.key)
    started = time.monotonic()
    try:
        convert(step.folder, folder / FILE, export.type, converter, entry["metadata"], session.settings.threads)
        sha256 = sha256_file(folder / FILE)
        art = session.store.commit(
            locked.key, folder, entry, {}, seconds=time.monotonic() - started, sha256={FILE: sha256}
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    reporter.tensor_done(step.size)
    reporter.step_finished(name)
    return art


def is_export(art: Artifact) -> bool:
    """Whether a stored artifact is an export (its entry is export/gguf.py's `export_entry`)."""
    entry = art.manifest.get("entry")
    return isinstance(entry, dict) and "export" in entry


def check_export_folder(out: Path, names: Iterable[str]) -> None:
    """Refuse, before any work, an `out` that `place_exports` cannot add `NAME.gguf`
    files to: a file, or a folder where one of those names is a folder. Other files in
    it are no concern: only the exports' files are added (or replaced)."""
    if out.exists() and not out.is_dir():
        raise BuildError(f"{out} is a file, not a folder", hint="choose another --out")
    for name in names:
        if (target := out / export_file(name)).is_dir():
            raise BuildError(f"{target} is a folder", hint="rename the export, or choose another --out")
    check_makeable(out)


def place_exports(exports: dict[str, Artifact], out: Path) -> dict[str, Path]:
    """Each export as `out/NAME.gguf`, linked (or copied) and renamed into place one by
    one (`mergepkg export`; a build places its exports with its outputs, in one swap).
    `out` may be any folder: nothing but those files is touched. A folder made here is
    marked as mergepkg's; a folder that was there keeps its marker, or its lack of one,
    so a later build never takes a folder of the user's for its own."""
    check_export_folder(out, exports)
    try:
        out.mkdir(parents=True)
        (out / MARKER).write_text("{}\n")
    except FileExistsError:
        pass
    placed = {}
    for name, art in exports.items():
        target = out / export_file(name)
        temp = out / f".{export_file(name)}.{os.getpid()}.tmp"
        try:
            link_or_copy(art.folder / FILE, temp)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        placed[name] = target
    return placed
