"""Every step of a recipe described from its sources, nothing built or stored: what
`validate` checks (`mergepkg validate`), with the pitfall warnings its recipe and
layouts show (docs/warnings.md); and the `Status` that `builder/status.py` fills in
for `mergepkg plan`.

Its own module, beside `status.py`, so that `validate` does not import the remotes'
machinery (`builder/substitute.py`, `remote/`), which it never uses
(docs/performance.md#startup).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mergepkg.layout.steps import lay_out
from mergepkg.layout.types import ModelInfo, StepLayout
from mergepkg.lockfile import lock_path, read_lock
from mergepkg.pitfalls.layouts import layout_pitfalls
from mergepkg.pitfalls.params import recipe_pitfalls
from mergepkg.pitfalls.pitfall import Pitfall, settle
from mergepkg.recipe.model import Recipe
from mergepkg.resolve.resolution import Resolution, resolve
from mergepkg.store.session import Session

if TYPE_CHECKING:
    from mergepkg.builder.substitute import Offer
    from mergepkg.store.local import Artifact


@dataclass(frozen=True)
class StepStatus:
    name: str
    key: str
    # from the inputs' configs and headers; None where a build would not lay the step out:
    # stored, pulled, not needed, or built from a step that is pulled first
    layout: StepLayout | None
    stored: Artifact | None  # the artifact a build would reuse
    state: str = "build"  # "stored", "remote" (pulled), "build", "unneeded" (upstream of a pulled step)
    remote: Offer | None = None  # the remote's artifact, where one is offered (state "remote", or refused by the rule)
    download: float = 0.0  # bytes building it here would download first (inf: its inputs cannot be had)


@dataclass(frozen=True)
class Status:
    resolution: Resolution
    steps: dict[str, StepStatus]  # in plan order
    # the MP1xx and MP2xx warnings of every step, placed, less those the recipe allows
    pitfalls: list[Pitfall] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # remotes that could not be read or were refused
    exports: dict[str, bool] = field(default_factory=dict)  # `[exports.NAME]` -> whether it is stored (plan)

    @property
    def to_build(self) -> list[StepStatus]:
        return [s for s in self.steps.values() if s.state == "build"]

    @property
    def to_pull(self) -> list[StepStatus]:
        return [s for s in self.steps.values() if s.state == "remote"]


def describe(recipe: Recipe, session: Session) -> Status:
    """Every planned step described from its sources, as `validate` checks a recipe:
    resolved as a build would (the lock's commits held), each laid out, the store and
    the remotes not consulted."""
    res = resolve(recipe, session, lock=read_lock(lock_path(recipe)), defer=False)
    order = res.plan.order
    folders = {n: res.source_folder(n) for n in res.sources}
    laid, infos = lay_out(res.recipe, order, folders)
    steps = {n: StepStatus(n, res.keys[n], laid[n], None) for n in order}
    return Status(res, steps, step_pitfalls(res, laid, infos))


def step_pitfalls(res: Resolution, laid: dict[str, StepLayout], infos: dict[str, ModelInfo]) -> list[Pitfall]:
    """The MP1xx warnings of every planned step and the MP2xx ones of those in `laid`, settled."""
    found: list[Pitfall] = []
    for name in res.plan.order:
        found += recipe_pitfalls(res.recipe, [name])
        if name in laid:
            found += layout_pitfalls(laid[name], infos)
    return settle(found, res.recipe)
