"""The library's front door: build, check, lock and verify recipes from Python.

Each function takes a recipe file (or a `Recipe` already loaded) and, optionally, a
`Session` (settings and the store under `$MERGEPKG_HOME`); without one it makes one
from the environment, as the `mergepkg` command does. These are the functions the
commands call; see docs/api.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from mergepkg.builder.build import BuildReport
from mergepkg.builder.build import build as build_recipe
from mergepkg.builder.status import Status
from mergepkg.builder.status import status as recipe_status
from mergepkg.builder.substitute import Policy
from mergepkg.builder.verify import Check
from mergepkg.builder.verify import verify as verify_recipe
from mergepkg.engine.progress import Reporter
from mergepkg.errors import RecipeError
from mergepkg.pitfalls.pitfall import deny
from mergepkg.recipe.model import Recipe
from mergepkg.recipe.parse import load_recipe
from mergepkg.resolve.lock import Locked, lock_recipe
from mergepkg.resolve.resolution import Mode
from mergepkg.store.session import Session
from mergepkg.tune.log import Trial, held
from mergepkg.tune.parallel import on_cluster
from mergepkg.tune.search import Finished, Searched, finish, search
from mergepkg.tune.spec import load_tune

RecipeLike = str | Path | Recipe


def _open(recipe: RecipeLike, session: Session | None) -> tuple[Recipe, Session]:
    return (recipe if isinstance(recipe, Recipe) else load_recipe(recipe)), session or Session()


def build(
    recipe: RecipeLike,
    *,
    out: str | Path | None = None,
    session: Session | None = None,
    mode: Mode = "update",
    seed: int | None = None,
    reporter: Reporter | None = None,
    deny_warnings: bool = False,
    remote: Policy = "auto",
) -> BuildReport:
    """Build what is not stored, update the lock, and place the outputs in `out` (when
    given): `mergepkg build`. `mode` "locked" or "frozen" holds the lock as it is. The
    pitfall warnings are the report's `pitfalls` (and told to `reporter`); with
    `deny_warnings` one raises `WarningsDenied` before what it concerns is written.
    `remote`: "auto" pulls a step the store lacks from a remote when that moves fewer
    bytes than building it, "prefer" whenever a remote has it, "never" not at all
    (docs/remote.md#substitution-build-plan-verify-and-eval)."""
    r, s = _open(recipe, session)
    return build_recipe(
        r,
        s,
        out=Path(out) if out is not None else None,
        seed=seed,
        mode=mode,
        reporter=reporter,
        deny_warnings=deny_warnings,
        remote=remote,
    )


def status(recipe: RecipeLike, *, session: Session | None = None, remote: Policy = "auto") -> Status:
    """Each step's key, layout and what a build would do with it (stored, pulled from a
    remote, built), building nothing: `mergepkg plan`."""
    r, s = _open(recipe, session)
    return recipe_status(r, s, remote=remote)


def validate(recipe: RecipeLike, *, session: Session | None = None, deny_warnings: bool = False) -> Status:
    """The recipe checked against its models' configs and headers: `mergepkg validate`.
    Its pitfall warnings (MP1xx, MP2xx) are the status's `pitfalls`; with `deny_warnings`
    any of them raises `WarningsDenied`."""
    r, s = _open(recipe, session)
    st = recipe_status(r, s, use_store=False)
    if deny_warnings:
        deny(st.pitfalls, "the recipe is not valid as it is")
    return st


def lock(recipe: RecipeLike, *, upgrade: frozenset[str] | None = None, session: Session | None = None) -> Locked:
    """Write or refresh the lock file: `mergepkg lock` (`upgrade`: see `lock_recipe`)."""
    r, s = _open(recipe, session)
    return lock_recipe(r, s, upgrade=upgrade)


def verify(
    recipe: RecipeLike,
    *,
    rebuild: bool = False,
    session: Session | None = None,
    reporter: Reporter | None = None,
    remote: Policy = "auto",
) -> list[Check]:
    """Stored artifacts (or, with `rebuild`, a fresh build) checked against the lock:
    `mergepkg verify`. Locked steps the store lacks are pulled from the remotes, checked,
    unless `remote` is "never"."""
    r, s = _open(recipe, session)
    return verify_recipe(r, s, rebuild=rebuild, reporter=reporter, remote=remote)


def tune(
    tune_file: str | Path,
    *,
    session: Session | None = None,
    trials: int | None = None,
    seconds: float | None = None,
    restart: bool = False,
    reporter: Reporter | None = None,
    on_trial: Callable[[Trial, bool], None] | None = None,
    ray: str | None = None,
    remote: str | None = None,
) -> tuple[Searched, Finished]:
    """Search a step's parameters as the tune file says (`trials`, `seconds` override its
    budget), resuming from its trial log unless `restart`; then write, build and lock
    `best.toml` and score it on the held-out tasks: `mergepkg tune` (docs/tune.md).
    `reporter` hears the build of best.toml; the trials' builds report nothing. With
    `ray` (an address, or "auto"), each generation's trials run at once on that Ray
    cluster through the configured remote `remote` (tune/parallel.py)."""
    if trials is not None and trials < 1:
        raise ValueError(f"trials must be at least 1, not {trials}")
    spec = load_tune(tune_file)
    changes = {k: v for k, v in (("trials", trials), ("seconds", seconds)) if v is not None}
    spec = replace(spec, **changes)  # type: ignore[arg-type]
    s = session or Session()
    with held(spec.folder, spec.path):  # no other run between the search and its finish
        if ray is None:
            searched = search(spec, s, on_trial=on_trial, restart=restart)  # trials' pitfalls: the space's business
        else:
            with on_cluster(spec, s, ray, remote) as runner:
                searched = search(spec, s, on_trial=on_trial, restart=restart, runner=runner)
                if searched.trials:
                    runner.fetch(searched.best)
        if not searched.trials:
            raise RecipeError("no trial finished within the budget", file=spec.path, hint="raise `trials` or `seconds`")
        return searched, finish(searched, s, reporter=reporter)
