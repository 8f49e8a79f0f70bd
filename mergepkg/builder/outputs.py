"""Outputs: the built steps a recipe delivers, placed into `--out` as model folders.

Artifacts are hard-linked (or copied, across file systems) into a temp folder beside
`--out`, each with its model card, and swapped in by rename (the previous output
renamed aside first): a failed or killed build leaves `--out` as it was. An output
folder carries a `.mergepkg-output` marker; a non-empty folder without one is never
replaced.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from mergepkg.builder.card import render_card
from mergepkg.errors import BuildError
from mergepkg.io.folder import INDEX, weight_files
from mergepkg.io.reshard import reshard, sharded_as
from mergepkg.resolve.resolution import Resolution
from mergepkg.store.local import MANIFEST, Artifact

MARKER = ".mergepkg-output"  # marks a folder mergepkg wrote, so a rebuild may replace it


def place_outputs(
    res: Resolution,
    artifacts: dict[str, Artifact],
    out: Path,
    eval_rows: Callable[[str], list[dict]] = lambda key: [],
    *,
    max_shard_bytes: int | None = None,
) -> dict[str, Path]:
    """Hard-link (or copy, across filesystems) artifacts into `out`, each with a model
    card: one output is `out` itself, several are `out/<step>`. Never symlinks: `cache
    gc` must not break them. An artifact built in other shards than `max_shard_bytes`
    gives (stored before, with another `--shard-size`) is written again in those shards.
    The swap into place is a rename."""
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
            weights = set(weight_files(art.folder)) | {INDEX}
            resharded = max_shard_bytes is not None and not sharded_as(art.folder, max_shard_bytes)
            if resharded:
                assert max_shard_bytes is not None
                reshard(art.folder, target, max_shard_bytes, art.digest)
            for f in art.folder.iterdir():
                if f.name != MANIFEST and not (resharded and f.name in weights):
                    _link_or_copy(f, target / f.name)
            (target / "README.md").write_text(render_card(res, name, art.digest, eval_rows(art.key)))
        (staged / MARKER).write_text(
            json.dumps({"recipe": str(res.recipe.path), "outputs": {n: a.key for n, a in artifacts.items()}}) + "\n"
        )
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


def check_replaceable(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise BuildError(
            f"{out} exists and was not written by mergepkg; refusing to replace it",
            hint="choose another --out, or remove the folder",
        )
