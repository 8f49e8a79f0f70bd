"""Recipe -> Resolution: every source pinned, every step keyed. No tensor data is read.

Resolution is what `lock`, `plan`, `build` and `verify` share. Pinning hashes each
source file once (then remembers it by stat); a hub source whose request is unchanged
is fetched at its locked commit, so a moved branch never moves a build until
`mergepkg lock --upgrade`. What each step writes (its layout, from configs and
headers) is the next layer's job: `mergepkg/layout/`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from mergepkg.errors import LockError, SourceError, did_you_mean
from mergepkg.lockfile import (
    Lock,
    LockedDependency,
    LockedSource,
    LockedStep,
    Pin,
    differences,
    lock_path,
    read_lock,
    recipe_hash,
)
from mergepkg.recipe.flatten import flatten
from mergepkg.recipe.model import Recipe
from mergepkg.recipe.plan import Plan, make_plan
from mergepkg.registry.dependencies import install_dependencies
from mergepkg.registry.pick import ALL
from mergepkg.resolve.keys import check_experts, key_of, step_entry
from mergepkg.resolve.sources import fetch, pin_folder
from mergepkg.store.session import Session

Mode = Literal["update", "locked", "frozen"]


@dataclass
class SourceState:
    folder: Path
    locked: LockedSource  # the request and its pin


@dataclass
class Resolution:
    recipe: Recipe  # flattened: steps of imported recipes included
    plan: Plan
    sources: dict[str, SourceState]
    entries: dict[str, dict]  # step -> canonical lock entry
    keys: dict[str, str]  # step -> sha256 of its entry
    seeds: dict[str, int]  # step -> seed for random methods (imported steps keep their recipe's)
    dependencies: dict[str, LockedDependency] = field(default_factory=dict)  # registry recipes, resolved

    def lock(self, digests: Mapping[str, str | None]) -> Lock:
        steps = {n: LockedStep(n, self.recipe.steps[n].method, self.keys[n], digests.get(n)) for n in self.plan.order}
        return Lock(
            recipe_hash(self.recipe),
            {n: s.locked for n, s in self.sources.items()},
            steps,
            dependencies=dict(self.dependencies),
        )


def expand(recipe: Recipe, session: Session) -> Recipe:
    """The recipe with the steps of imported recipes and dependencies joined in
    (dependencies at their locked versions where the lock still fits)."""
    lock = read_lock(lock_path(recipe))
    deps = install_dependencies(recipe, session.settings, locked=lock.dependencies if lock else None)
    return flatten(recipe, bind=deps.bind)


def resolve(
    recipe: Recipe,
    session: Session,
    *,
    lock: Lock | None = None,
    mode: Mode = "update",
    upgrade: frozenset[str] = frozenset(),
    seed: int | None = None,
    targets: tuple[str, ...] | None = None,
) -> Resolution:
    settings = session.settings
    indirect = set(lock.dependencies) if lock else set()  # dependencies of dependencies
    unknown = sorted(upgrade - {ALL} - set(recipe.sources) - set(recipe.dependencies) - indirect)
    if unknown:
        raise LockError(
            f"--upgrade: no source or dependency named {unknown[0]!r}",
            file=str(recipe.path),
            hint=did_you_mean(unknown[0], [*recipe.sources, *recipe.dependencies]),
        )
    if mode == "frozen":
        if lock is None:
            raise LockError(
                "--frozen needs a lock file and there is none", file=str(recipe.path), hint="run `mergepkg lock` first"
            )
        settings = replace(settings, offline=True)  # never touch the network
    deps = install_dependencies(
        recipe, settings, locked=lock.dependencies if lock else None, mode=mode, upgrade=upgrade
    )
    recipe = flatten(recipe, bind=deps.bind)
    plan = make_plan(recipe, targets)
    sources = {}
    adapters = recipe.adapters  # LoRA adapters: pinned by their adapter files (resolve/sources.py)
    for name in plan.sources_used():
        src = recipe.sources[name]
        rel = os.path.relpath(src.path, recipe.path.parent) if src.path else None
        request = LockedSource(name, src.hf, src.revision if src.hf else None, rel, Pin(None, ()))
        kept = lock.sources.get(name) if lock else None  # the lock's entry, while it still holds
        if kept is not None and (not kept.same_request(request) or {name, ALL} & upgrade):
            kept = None  # the recipe asks for something else, or --upgrade moves it
        if mode == "frozen" and kept is None:
            raise recipe.locate(
                LockError(
                    f"source {name!r} is not in the lock as the recipe asks for it",
                    hint="run `mergepkg lock` to update the lock",
                ),
                f"sources.{name}",
            )
        try:
            held = kept if kept is not None and src.hf else None  # the locked commit and its files
            fetched = fetch(
                src,
                settings,
                commit=held.pin.commit if held else None,
                files=[f.name for f in held.pin.files] if held else (),
                adapter=name in adapters,
            )
            pin = pin_folder(fetched.folder, session.hashes, fetched.commit, adapter=name in adapters)
        except SourceError as e:
            recipe.locate(e, f"sources.{name}")
            if mode == "frozen" and src.hf:
                e.hint = "--frozen never downloads: build once without --frozen to fetch the locked commit"
            raise
        if kept is not None and src.hf and pin != kept.pin:
            raise recipe.locate(
                SourceError(
                    f"files of {src.hf}@{pin.commit} differ from the lock (a damaged Hugging Face cache?)",
                    hint="delete that repo from the Hugging Face cache and build again",
                ),
                f"sources.{name}",
            )
        sources[name] = SourceState(fetched.folder, replace(request, pin=pin))
    refs: dict[str, str] = {n: s.locked.pin.ref for n, s in sources.items()}
    own_seed = recipe.seed if seed is None else seed
    entries, keys, seeds = {}, {}, {}
    for name in plan.order:
        step = recipe.steps[name]
        seeds[name] = step.origin.seed if step.origin else own_seed
        if step.moe is not None:
            check_experts(recipe, step, refs)  # needs identities: the base under another name
        entries[name] = step_entry(step, refs, seeds[name])
        keys[name] = refs[name] = key_of(entries[name])
    res = Resolution(recipe, plan, sources, entries, keys, seeds, deps.picks)
    if mode in ("locked", "frozen"):
        changes = differences(lock, res.lock({}))
        if changes:
            raise LockError(
                f"{lock_path(recipe).name} is out of date: " + "; ".join(changes),
                file=str(lock_path(recipe)),
                hint="run `mergepkg lock` to update it (or build without --locked/--frozen)",
            )
    return res
