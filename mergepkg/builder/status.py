"""What a build would do, without building: each step's key, layout and whether it is
stored (`mergepkg plan`), and the whole recipe checked against its models (`validate`),
with the pitfall warnings its recipe and layouts show (docs/warnings.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mergepkg.layout.steps import lay_out
from mergepkg.layout.types import ModelInfo, StepLayout
from mergepkg.lockfile import lock_path, read_lock
from mergepkg.pitfalls.layouts import layout_pitfalls
from mergepkg.pitfalls.params import recipe_pitfalls
from mergepkg.pitfalls.pitfall import Pitfall, settle
from mergepkg.recipe.model import Recipe
from mergepkg.resolve.resolution import Resolution, resolve
from mergepkg.store.local import Artifact
from mergepkg.store.session import Session


@dataclass(frozen=True)
class StepStatus:
    name: str
    key: str
    layout: StepLayout
    stored: Artifact | None  # the artifact a build would reuse; None: it would build the step


@dataclass(frozen=True)
class Status:
    resolution: Resolution
    steps: dict[str, StepStatus]  # in plan order
    # the MP1xx and MP2xx warnings of every step, placed, less those the recipe allows
    pitfalls: list[Pitfall] = field(default_factory=list)

    @property
    def to_build(self) -> list[StepStatus]:
        return [s for s in self.steps.values() if s.stored is None]


def status(recipe: Recipe, session: Session, *, use_store: bool = True) -> Status:
    """Resolve `recipe` as a build would (the lock's commits held) and lay out every step:
    steps in the store from their files (unless `use_store` is off: then every step is
    described from its sources, as `validate` checks a recipe), the rest from layouts."""
    res = resolve(recipe, session, lock=read_lock(lock_path(recipe)))
    stored: dict[str, Artifact] = {}
    if use_store:
        stored = {n: a for n, k in res.keys.items() if (a := session.store.get(k)) is not None and a.intact()}
    folders = {n: s.folder for n, s in res.sources.items()} | {n: a.folder for n, a in stored.items()}
    laid, infos = lay_out(res.recipe, res.plan.order, folders)
    steps = {n: StepStatus(n, res.keys[n], laid[n], stored.get(n)) for n in res.plan.order}
    return Status(res, steps, step_pitfalls(res, laid, infos))


def step_pitfalls(res: Resolution, laid: dict[str, StepLayout], infos: dict[str, ModelInfo]) -> list[Pitfall]:
    """The MP1xx warnings of every planned step and the MP2xx ones of those in `laid`, settled."""
    found: list[Pitfall] = []
    for name in res.plan.order:
        found += recipe_pitfalls(res.recipe, [name])
        if name in laid:
            found += layout_pitfalls(laid[name], infos)
    return settle(found, res.recipe)
