"""Reuse, pull or build each step a build needs (`StepRunner`), in plan order.

What the store holds is checked first; then the rule of `substitute.py` picks what to
pull from remotes and what to build; pulls happen before any step is laid out (a pulled
step's files describe it to the steps after it), and only the sources of the steps
built here are fetched. Every step to build is laid out before the first is built, so a
late error stops the build before the first tensor is read.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Protocol

from mergepkg.builder.substitute import RECIPE_REMOTE, Choice, Offer, Policy, Remotes, choose, reason
from mergepkg.engine.device import check_device
from mergepkg.engine.memory import Budget
from mergepkg.engine.progress import Reporter
from mergepkg.engine.step import budget_for, build_step
from mergepkg.errors import MergepkgError, disk_error
from mergepkg.layout.steps import lay_out, read_model_info
from mergepkg.layout.types import ModelInfo, StepLayout
from mergepkg.pitfalls.layouts import layout_pitfalls
from mergepkg.pitfalls.pitfall import Pitfall
from mergepkg.remote.errors import Refused, RemoteError
from mergepkg.resolve.resolution import Resolution
from mergepkg.store.local import Artifact
from mergepkg.store.session import Session


class StepReporter(Reporter, Protocol):
    """The build's reporter: also told the layouts' pitfalls, and when a step's own are settled."""

    def found(self, pitfalls: list[Pitfall], *, hold: bool = False) -> None: ...
    def release(self, outcome: str) -> None: ...


class StepRunner:
    """Reuse, pull or build every step the wanted ones need, in plan order. `sample`: bytes
    of each reused artifact re-read to check it (None: all of it; 0: none, sizes and mtimes
    only); `locked`: the old lock's digest of each step whose key it still holds."""

    def __init__(
        self,
        res: Resolution,
        session: Session,
        reporter: StepReporter,
        sample: int | None,
        remotes: Remotes | None,
        policy: Policy,
        locked: dict[str, str],
        roots: tuple[str, ...],
    ):
        self.res, self.session, self.reporter, self.sample = res, session, reporter, sample
        self.remotes, self.policy, self.locked, self.roots = remotes, policy, locked, roots
        self.folders: dict[str, Path] = {}
        self.planned: tuple[dict[str, StepLayout], dict[str, ModelInfo]] | None = None  # when a step must be built
        self.budget: Budget | None = None
        self.artifacts: dict[str, Artifact] = {}
        self.built: list[str] = []
        self.reused: list[str] = []
        self.pulled: dict[str, str] = {}  # step -> the remote it came from

    def run(self) -> None:
        res, store = self.res, self.session.store
        for name in res.plan.order:  # what the store holds, checked (a bad artifact is discarded)
            key = res.keys[name]
            with store.lock(key):
                art = store.get(key)
                if art is not None and art.intact() and (self.sample == 0 or art.holds(self.sample)):
                    self.keep(name, art)
                    self.reused.append(name)
                    self.reporter.step_reused(name, key)
                elif art is not None:
                    store.discard(key)  # edited, truncated or flipped: never reused silently
        choice = self.pull_all()
        for source in choice.sources:
            self.folders[source] = res.source_folder(source)
        for name in choice.build:
            key = res.keys[name]
            with store.lock(key):  # a second builder of this key waits here, then reuses
                art = store.get(key)
                if art is not None and art.intact():
                    self.reused.append(name)
                    self.reporter.step_reused(name, key)
                else:
                    if art is not None:
                        store.discard(key)
                    art = self.build_one(name, choice.build)
                    self.built.append(name)
            self.keep(name, art)

    def keep(self, name: str, art: Artifact) -> None:
        self.artifacts[name] = art
        self.folders[name] = art.folder
        if self.planned is not None:
            self.planned[1][name] = read_model_info(art.folder)  # real shard names for readers downstream

    def pull_all(self) -> Choice:
        """Pull what the rule picks, each step from the first remote that gives it
        (`Remotes.pull_any`); a step no remote gives is built instead (the rule is asked
        again without its offer), unless it cannot be built here: then it raises."""
        res = self.res
        inputs = {n: res.plan.inputs(n) for n in res.plan.order}
        missing = {n: (s.missing if s.folder is None else 0) for n, s in res.sources.items()}
        lacking = [n for n in res.plan.order if n not in self.artifacts]
        offers = {}
        if lacking and self.remotes is not None and self.policy != "never":
            found = self.remotes.look_up({res.keys[n]: self.locked.get(n) for n in lacking})
            offers = {n: found[res.keys[n]] for n in lacking if res.keys[n] in found}
        while True:
            choice = choose(res.plan.order, inputs, self.roots, self.artifacts, offers, missing, self.policy)
            self.refusals(choice)
            failed = False
            for name, offer in choice.pull.items():
                try:
                    self.keep(name, self.pull_one(name, offer))
                except (RemoteError, OSError) as e:  # every remote's copy failed: `e` is the first's
                    if math.isinf(choice.download[name]):
                        raise self.cannot_build(e, name, offer.remote) from None
                    self.reporter.warning(f"step {name!r}: {reason(e)}; building it here")
                    del offers[name]
                    failed = True
            if not failed:
                return choice

    def refusals(self, choice: Choice) -> None:
        """Say why each step to build was not pulled, where a remote had it but was refused;
        raise that when the step cannot be built here either."""
        if self.remotes is None:
            return
        for name in choice.build:
            refused = self.remotes.refused.pop(self.res.keys[name], None)
            if refused is not None and math.isinf(choice.download[name]):
                raise self.cannot_build(refused.error, name, refused.remote)
            if refused is not None and not refused.told:  # a malformed record: warned already
                self.reporter.warning(f"step {name!r}: {reason(refused.error)}; building it here")

    def cannot_build(self, e: RemoteError | OSError, name: str, remote: str) -> MergepkgError:
        """The remote's refusal of a step that cannot be built here either (its inputs are
        absent), with the command that repairs the remote (`remote`: the one that failed,
        named with `-r` where it is a configured one)."""
        if not isinstance(e, MergepkgError):
            e = RemoteError(f"cannot reach the remote: {e}")
        e.message = (
            f"step {name!r} cannot be built here (its inputs are absent) and the remote's copy failed: {e.message}"
        )
        if not isinstance(e, Refused):  # unreachable, denied: nothing on the remote to repair
            e.hint = "fetch the step's sources, or build again once the remote can be reached"
            return e
        recipe = self.res.recipe.display
        where = f" -r {remote}" if remote != RECIPE_REMOTE else ""
        e.hint = (
            "fetch the step's sources, or repair the remote from a home that holds the build the lock was made"
            f" from: mergepkg cache push {recipe} --rehash{where}"
        )
        return e

    def pull_one(self, name: str, offer: Offer) -> Artifact:
        """Step `name` from `offer`'s remote, or the next that gives it (`Remotes.pull_any`)."""
        assert self.remotes is not None  # offers come from remotes
        key = self.res.keys[name]
        art, source = self.remotes.pull_any(self.session.store, name, key, offer, self.locked.get(name), self.reporter)
        self.pulled[name] = source.remote
        return art

    def build_one(self, name: str, order: list[str]) -> Artifact:
        res, settings = self.res, self.session.settings
        if self.planned is None:  # every step to build laid out before the first: late errors come first
            check_device(settings.device)
            self.planned = lay_out(res.recipe, order, self.folders)
            layouts, infos = self.planned  # MP2xx, before the first step is built
            self.reporter.found([p for n in order for p in layout_pitfalls(layouts[n], infos)])
            read = {m: info.tensors for m, info in infos.items()}
            self.budget = budget_for(layouts.values(), read, settings.max_memory, settings.device)
        layouts, infos = self.planned  # infos: with the real shards of steps built since (`keep`)
        key = res.keys[name]
        folder = self.session.store.new_folder(key)
        started = time.monotonic()
        try:
            tensors = build_step(
                layouts[name],
                self.folders,
                {m: info.tensors for m, info in infos.items()},
                folder,
                seed=res.seeds[name],
                device=settings.device,
                max_shard_bytes=settings.max_shard_bytes,
                budget=self.budget,
                threads=settings.threads,
                reporter=self.reporter,
            )
            self.reporter.release("the step was not stored; the lock and outputs are as they were")
            entry = res.entries[name]
            return self.session.store.commit(key, folder, entry, tensors, seconds=time.monotonic() - started)
        except MergepkgError as e:
            res.recipe.written(name).locate(e)  # engine errors: at the step that failed
            raise
        except OSError as e:  # a full disk, a read-only one: said at the step, not as a traceback
            disk = disk_error(e, f"writing the step into {folder}")
            if disk is None:
                raise
            raise res.recipe.written(name).locate(disk) from e
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # gone already when committed
