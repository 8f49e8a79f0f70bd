"""Outputs: the built steps a recipe delivers, placed into `--out` as model folders.

Artifacts are hard-linked (or copied, across file systems) into a temp folder beside
`--out`, each with the files that describe it, written there and never in the store:
its model card (`README.md`), the recipe and its lock (`mergepkg.toml`, `mergepkg.lock`
and any recipe files it imports: `bundle.py`), so that the folder rebuilds itself, and
`mergekit_config.yml` when mergekit can run its step (`mergekit_yaml.py`). The folder
is swapped in by rename (the previous output renamed aside first): a failed or killed
build leaves `--out` as it was. An output folder carries a `.mergepkg-output` marker; a
non-empty folder without one is never replaced. None of these files is a tensor, so
digests and `mergepkg verify` do not see them.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mergepkg.builder.bundle import LOCK_FILE, Bundle, bundle
from mergepkg.builder.card import render_card
from mergepkg.builder.mergekit_yaml import MERGEKIT_FILE, mergekit_yaml
from mergepkg.errors import BuildError
from mergepkg.files import TEMP_RANDOM, exchange, temp_prefix
from mergepkg.io.folder import INDEX, weight_files
from mergepkg.io.reshard import reshard, sharded_as
from mergepkg.io.tensors import NAME_OF, scan_tensors
from mergepkg.layout.chat import TEMPLATE_FILE
from mergepkg.lockfile import Lock
from mergepkg.recipe.exports import export_file
from mergepkg.recipe.model import Recipe
from mergepkg.resolve.resolution import Resolution
from mergepkg.store.local import MANIFEST, Artifact, Store

MARKER = ".mergepkg-output"  # marks a folder mergepkg wrote, so a rebuild may replace it


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Held while outputs are placed into `out` (or files added to it): a lock on the folder
    that holds `out`, so builds from any `MERGEPKG_HOME` take turns (a lock file in one home
    would not keep another's build from removing this one's staging folder), and no file is
    left beside `out`."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise BuildError(f"cannot write into {out.parent}: {e.strerror or e}", hint="choose another --out") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def place_outputs(
    res: Resolution,
    artifacts: dict[str, Artifact],
    out: Path,
    eval_rows: Callable[[str], list[dict]] = lambda key: [],
    *,
    max_shard_bytes: int | None = None,
    lock: Lock | None = None,
    exports: dict[str, Path] | None = None,
) -> dict[str, Path]:
    """Hard-link (or copy, across filesystems) artifacts into `out`, each with a model
    card, the recipe and `lock` (default: the lock of `res` with these artifacts'
    digests), and a mergekit config where one applies: one output is `out` itself,
    several are `out/<step>`. Never symlinks: `cache gc` must not break them. An
    artifact built in other shards than `max_shard_bytes` gives (stored before, with
    another `--shard-size`) is written again in those shards. `exports`: files placed as
    `out/NAME.gguf` (builder/exports.py), beside the steps' folders or, for one output,
    in its folder. The swap into place is one exchange of the two folders (`files.exchange`),
    or two renames where the file system has none. The caller holds `output_lock(out)`."""
    if lock is None:
        lock = res.lock({n: a.digest for n, a in artifacts.items()})
    prefix = staging_prefix(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for stale in staged_beside(out):  # a placement killed half-way (we hold out's lock)
            if not out.exists() and (stale / "previous").is_dir():
                os.rename(stale / "previous", out)  # killed between the two renames: restore
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    except OSError as e:
        raise BuildError(f"cannot write into {out.parent}: {e.strerror or e}", hint="choose another --out") from None
    try:
        staged = work / "out"
        single = len(artifacts) == 1
        # the recipe files and lock as placed: what they say is relative to the output's
        # folder, and the outputs are siblings, so one bundle serves all (made per output,
        # 300 outputs took 19 s of a no-op rebuild)
        packed: Bundle | None = None
        for name, art in artifacts.items():
            target = staged if single else staged / name
            target.mkdir(parents=True)
            weights = set(weight_files(art.folder)) | {INDEX}
            resharded = max_shard_bytes is not None and not sharded_as(art.folder, max_shard_bytes)
            if resharded:
                assert max_shard_bytes is not None
                reshard(art.folder, target, max_shard_bytes, art.digest)
            for f in art.folder.iterdir():
                if f.name != MANIFEST and not (resharded and f.name in weights):
                    link_or_copy(f, target / f.name)
            packed = packed or bundle(res, lock, out if single else out / name)  # the same for every sibling
            describe(res, name, art, lock, target, packed=packed, evals=eval_rows(art.key))
        for name, file in (exports or {}).items():
            link_or_copy(file, staged / export_file(name))
        (staged / MARKER).write_text(
            json.dumps({"recipe": str(res.recipe.path), "outputs": {n: a.key for n, a in artifacts.items()}}) + "\n"
        )
        try:
            if not out.exists():
                os.rename(staged, out)
            elif not exchange(staged, out):  # swapped in one step: `staged` now holds the old output
                os.rename(out, work / "previous")  # else two renames, with their moment without `out`
                os.rename(staged, out)
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.EXDEV):
                raise
            raise _unswappable(out, e) from None
    finally:
        if not out.exists() and (work / "previous").is_dir():  # interrupted between the two renames
            os.rename(work / "previous", out)
        shutil.rmtree(work, ignore_errors=True)
    return {next(iter(artifacts)): out} if single else {n: out / n for n in artifacts}


def staging_prefix(out: Path) -> str:
    """The name start of `out`'s staging folders, beside it: `.mergepkg-build-NAME-`, NAME
    cut short (`files.temp_prefix`) where a long one would not leave room for the rest."""
    return temp_prefix(".mergepkg-build-", out.name, "-")


def staged_beside(out: Path) -> list[Path]:
    """The staging folders of `out` that placements killed half-way left beside it: its
    prefix and mkdtemp's random part, nothing more, read literally (`out` may hold `?`,
    `*` or `[`, which a glob would take as a pattern). The prefix of `x` starts the
    folders of `x-y` too: they have more after it, and hold `x-y`'s only copy."""
    prefix = staging_prefix(out)
    return [
        out.parent / n
        for n in sorted(os.listdir(out.parent))
        if n.startswith(prefix) and len(n) == len(prefix) + TEMP_RANDOM
    ]


def _unswappable(out: Path, e: OSError) -> BuildError:
    """The swap of a folder into `out` refused by the system: `out` is a mount point (a
    container's volume, a disk of its own), which no rename replaces (EBUSY), or is on
    another file system than its folder (EXDEV)."""
    return BuildError(
        f"cannot put the output in place of {out}: {e.strerror}",
        hint=f"{out} is a mount point or on another file system than its folder: "
        f"use a folder inside it, e.g. --out {out / 'model'}",
    )


def describe(
    res: Resolution, name: str, art: Artifact, lock: Lock, target: Path, *, packed: Bundle, evals: list[dict]
) -> None:
    """Write the files that describe output `name` into its staged folder `target`: the
    recipe files and lock as placed (`packed`), the mergekit config where mergekit can
    run the step, and the model card."""
    for rel, text in packed.files.items():
        _write(target / rel, text)
    _write(target / LOCK_FILE, packed.lock_text)
    step = res.recipe.steps[name]
    template = art.folder / TEMPLATE_FILE
    config = mergekit_yaml(
        res,
        name,
        local=packed.local,
        saved_dtypes=_saved_dtypes(art.folder),
        chat_template=template.read_text(encoding="utf-8") if step.chat_template and template.is_file() else None,
    )
    if config is not None:
        _write(target / MERGEKIT_FILE, config)
    files = tuple(packed.files)
    card = render_card(
        res, name, art.digest, evals, local=packed.local, files=files, mergekit=config is not None, exports=lock.exports
    )
    _write(target / "README.md", card)


def _saved_dtypes(folder: Path) -> tuple[str, ...]:
    """The dtypes of a model's floating-point tensors, by name."""
    return tuple(sorted({NAME_OF[t.dtype] for t in scan_tensors(folder).values() if t.dtype in NAME_OF}))


def _write(path: Path, text: str) -> None:
    """A new file in a staged output (never through a hard link into the store)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.write_text(text, encoding="utf-8")


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def check_replaceable(out: Path, *, store: Store | None = None, recipe: Recipe | None = None) -> None:
    """Refuse, before any work, an `out` that is not ours to replace or cannot be made: a
    folder mergepkg did not write; a mount point (a container's volume: no rename replaces
    it, and placing the files one by one would not be atomic); a folder in `store`'s own
    (`Store.cleaned`: `tmp/`, whose content the next build removes); a local source of
    `recipe`, or a folder holding one, which the output would replace."""
    out = out.resolve()
    if out.is_dir() and os.path.ismount(out):
        raise BuildError(
            f"{out} is a mount point: an output is swapped in by a rename, which cannot replace it",
            hint=f"use a folder inside it, e.g. --out {out / 'model'}",
        )
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise BuildError(
            f"{out} exists and was not written by mergepkg; refusing to replace it",
            hint="choose another --out, or remove the folder",
        )
    for folder in (f.resolve() for f in store.cleaned()) if store is not None else ():
        if out == folder or folder in out.parents:
            raise BuildError(
                f"{out} is inside {folder}, which builds and `cache gc` clean: the output would be deleted",
                hint="choose an --out outside MERGEPKG_HOME's store/, tmp/ and locks/",
            )
    for source in (s.path.resolve() for s in recipe.sources.values() if s.path is not None) if recipe else ():
        if out == source or out in source.parents:
            what = "is" if out == source else f"holds {source},"
            raise BuildError(
                f"{out} {what} a local model the recipe reads: the output would replace it",
                hint="choose another --out (to build on an earlier output, place the new one elsewhere)",
            )
    check_makeable(out)


def check_makeable(out: Path) -> None:
    """Refuse an `out` under a file: its nearest existing parent must be a folder."""
    above = next(p for p in out.absolute().parents if p.exists())  # the root exists
    if not above.is_dir():
        raise BuildError(f"cannot make {out}: {above} is a file, not a folder", hint="choose another --out")
