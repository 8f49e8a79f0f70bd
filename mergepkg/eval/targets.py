"""What `mergepkg eval` (and later commands) accept as a model, made into folders.

- `recipe.toml`          every source and step of the recipe (steps built if needed)
- `recipe.toml:NAME`     one step (built if needed, with what it needs) or source
A step the store lacks may be pulled from a remote as a build would (`remote`: the
policy of builder/substitute.py); for one step, its inputs are then not fetched.
- `./some/folder`        a local model folder
- `org/name[@revision]`  a Hugging Face model
Each comes with a key that identifies its content: a step's store key, else the pin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mergepkg.builder.build import build
from mergepkg.builder.substitute import Policy
from mergepkg.engine.progress import Reporter
from mergepkg.errors import RecipeError, SourceError, did_you_mean
from mergepkg.lockfile import lock_path, read_lock
from mergepkg.recipe.model import Source
from mergepkg.recipe.parse import load_recipe
from mergepkg.recipe.publish import hub_repo_problem
from mergepkg.resolve.resolution import expand
from mergepkg.resolve.sources import fetch, pin_folder
from mergepkg.store.session import Session


@dataclass(frozen=True)
class Model:
    label: str
    folder: Path
    key: str


def target_models(
    target: str, session: Session, reporter: Reporter | None = None, remote: Policy = "auto"
) -> list[Model]:
    path, _, name = target.partition(":") if ".toml:" in target or target.endswith(".toml") else (target, "", "")
    if path.endswith(".toml"):
        return _from_recipe(Path(path), name or None, session, reporter, remote)
    folder = Path(target)
    if folder.is_dir():
        return [Model(target, folder.resolve(), pin_folder(folder.resolve(), session.hashes).ref)]
    repo, _, revision = target.partition("@")
    is_repo = hub_repo_problem(repo) is None  # `./x` and `a/b/c` are paths
    if is_repo and not folder.exists():
        fetched = fetch(Source(repo, hf=repo, revision=revision or "main"), session.settings)
        return [Model(target, fetched.folder, pin_folder(fetched.folder, session.hashes, fetched.commit).ref)]
    raise SourceError(
        f"not a model folder, recipe or Hugging Face repo: {target}"
        + (": no such folder" if not folder.exists() and not is_repo else ""),
        hint="give a folder, org/name[@revision], recipe.toml or recipe.toml:step",
    )


def _from_recipe(
    path: Path, name: str | None, session: Session, reporter: Reporter | None, remote: Policy
) -> list[Model]:
    recipe = load_recipe(path)
    flat = expand(recipe, session)
    label = path.name + ":{}"
    if name is not None and name in flat.sources:
        src = flat.sources[name]
        lock = read_lock(lock_path(recipe))
        locked = lock.sources.get(name) if lock else None
        held = locked if locked and src.hf else None
        fetched = fetch(
            src,
            session.settings,
            commit=held.pin.commit if held else None,
            files=[f.name for f in held.pin.files] if held else (),
        )
        return [
            Model(label.format(name), fetched.folder, pin_folder(fetched.folder, session.hashes, fetched.commit).ref)
        ]
    if name is not None and name not in flat.steps:
        raise RecipeError(
            f"no step or source named {name!r}", file=str(path), hint=did_you_mean(name, [*flat.steps, *flat.sources])
        )
    report = build(
        recipe, session, reporter=reporter, targets=(name,) if name else None, remote=remote, all_steps=not name
    )
    res = report.resolution
    models = (
        []
        if name
        else [Model(label.format(s), res.source_folder(s), st.locked.pin.ref) for s, st in res.sources.items()]
    )
    models += [
        Model(label.format(s), report.artifacts[s].folder, report.artifacts[s].key)
        for s in res.plan.order
        if name is None or s == name
    ]
    return models
