"""What a build would do, without building: each step's key, layout and whether it is
stored, pulled from a remote or built (`mergepkg plan`), and the whole recipe checked against its models (`validate`),
with the pitfall warnings its recipe and layouts show (docs/warnings.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mergepkg.builder.substitute import Offer, Policy, Remotes, choose
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

    @property
    def to_build(self) -> list[StepStatus]:
        return [s for s in self.steps.values() if s.state == "build"]

    @property
    def to_pull(self) -> list[StepStatus]:
        return [s for s in self.steps.values() if s.state == "remote"]


def status(recipe: Recipe, session: Session, *, use_store: bool = True, remote: Policy = "auto") -> Status:
    """What a build would do: resolve `recipe` as a build would (the lock's commits held,
    no source fetched that no step to build reads), then per step `stored`, `remote` (the
    rule of builder/substitute.py picks a remote's artifact, with the bytes it moves and
    those building would download), `build` (laid out) or `unneeded`. Without `use_store`
    every step is described from its sources, as `validate` checks a recipe."""
    lock = read_lock(lock_path(recipe))
    res = resolve(recipe, session, lock=lock, defer=use_store)
    order = res.plan.order
    if not use_store:
        folders = {n: res.source_folder(n) for n in res.sources}
        laid, infos = lay_out(res.recipe, order, folders)
        steps = {n: StepStatus(n, res.keys[n], laid[n], None) for n in order}
        return Status(res, steps, step_pitfalls(res, laid, infos))
    stored = {n: a for n, k in res.keys.items() if (a := session.store.get(k)) is not None and a.intact()}
    warnings: list[str] = []
    offers = {}
    lacking = [n for n in order if n not in stored]
    remotes = Remotes.for_recipe(session.settings, res.recipe, warnings.append) if remote != "never" else None
    if remotes is not None and lacking:
        locked = {n: s.digest for n, s in (lock.steps.items() if lock else ()) if res.keys.get(n) == s.key}
        found = remotes.look_up({res.keys[n]: locked.get(n) for n in lacking})
        offers = {n: found[res.keys[n]] for n in lacking if res.keys[n] in found}
    inputs = {n: list(res.plan.graph.predecessors(n)) for n in order}
    missing = {n: (s.missing if s.folder is None else 0) for n, s in res.sources.items()}
    choice = choose(order, inputs, res.recipe.outputs, stored, offers, missing, remote)
    folders = {n: res.source_folder(n) for n in choice.sources} | {n: a.folder for n, a in stored.items()}
    layable: list[str] = []  # steps to build whose inputs are all here or laid out before them
    for n in choice.build:
        if all(m in folders or m in layable for m in inputs[n]):
            layable.append(n)
    laid, infos = lay_out(res.recipe, layable, folders)
    state = {n: "stored" for n in stored} | {n: "remote" for n in choice.pull} | {n: "build" for n in choice.build}
    steps = {
        n: StepStatus(
            n,
            res.keys[n],
            laid.get(n),
            stored.get(n),
            state.get(n, "unneeded"),
            offers.get(n),
            choice.download.get(n, 0.0),
        )
        for n in order
    }
    return Status(res, steps, step_pitfalls(res, laid, infos), warnings)


def step_pitfalls(res: Resolution, laid: dict[str, StepLayout], infos: dict[str, ModelInfo]) -> list[Pitfall]:
    """The MP1xx warnings of every planned step and the MP2xx ones of those in `laid`, settled."""
    found: list[Pitfall] = []
    for name in res.plan.order:
        found += recipe_pitfalls(res.recipe, [name])
        if name in laid:
            found += layout_pitfalls(laid[name], infos)
    return settle(found, res.recipe)
