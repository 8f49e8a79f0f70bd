"""What a build would do, without building: each step's key, layout and whether it is
stored, pulled from a remote or built (`mergepkg plan`), with the pitfall warnings its
recipe and layouts show (docs/warnings.md). The whole recipe checked against its models
(`validate`, `use_store=False`) is `builder/describe.py`, which imports no remote."""

from __future__ import annotations

from mergepkg.builder.describe import Status, StepStatus, describe, step_pitfalls
from mergepkg.builder.substitute import Policy, Remotes, choose
from mergepkg.layout.steps import lay_out
from mergepkg.lockfile import lock_path, read_lock
from mergepkg.recipe.model import Recipe
from mergepkg.resolve.resolution import resolve
from mergepkg.store.session import Session

__all__ = ["Status", "StepStatus", "status"]  # the first two from builder/describe.py


def status(recipe: Recipe, session: Session, *, use_store: bool = True, remote: Policy = "auto") -> Status:
    """What a build would do: resolve `recipe` as a build would (the lock's commits held,
    no source fetched that no step to build reads), then per step `stored`, `remote` (the
    rule of builder/substitute.py picks a remote's artifact, with the bytes it moves and
    those building would download), `build` (laid out) or `unneeded`. Without `use_store`
    every step is described from its sources, as `validate` checks a recipe."""
    if not use_store:
        return describe(recipe, session)
    lock = read_lock(lock_path(recipe))
    res = resolve(recipe, session, lock=lock, defer=True, exports="current")  # exports: what a build would make
    order = res.plan.order
    stored = {n: a for n, k in res.keys.items() if (a := session.store.get(k)) is not None and a.intact()}
    warnings: list[str] = []
    offers = {}
    lacking = [n for n in order if n not in stored]
    remotes = Remotes.for_recipe(session.settings, res.recipe, warnings.append) if remote != "never" else None
    if remotes is not None and lacking:
        locked = {n: s.digest for n, s in (lock.steps.items() if lock else ()) if res.keys.get(n) == s.key}
        found = remotes.look_up({res.keys[n]: locked.get(n) for n in lacking})
        offers = {n: found[res.keys[n]] for n in lacking if res.keys[n] in found}
    inputs = {n: res.plan.inputs(n) for n in order}
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
    exports = {n: (a := session.store.get(e.key)) is not None and a.intact() for n, e in res.exports.items()}
    return Status(res, steps, step_pitfalls(res, laid, infos), warnings, exports)
