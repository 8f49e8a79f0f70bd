"""Recipe -> Resolution: every source pinned, every step keyed. No tensor data is read.

Resolution is what `lock`, `plan`, `build` and `verify` share. Pinning hashes each
source file once (then remembers it by stat); a hub source whose request is unchanged
is fetched at its locked commit, so a moved branch never moves a build until
`mergepkg lock --upgrade`. What each step writes (its layout, from configs and
headers) is the next layer's job: `mergepkg/layout/`.

A first build need not wait for its hashes: a file the lock records, unchanged since the
lock was written, and a Hugging Face cache blob (named by its sha256) are keyed by that
sha256 and hashed beside the build; `Resolution.lock` and the engine confirm it before
anything made from the file is recorded or stored (`store/hashcache.py`). The files
still to hash are hashed together, one per core.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

from mergepkg.errors import LockError, SourceError, did_you_mean
from mergepkg.export.gguf import Converter
from mergepkg.lockfile import (
    Lock,
    LockedDependency,
    LockedExport,
    LockedPush,
    LockedSource,
    LockedStep,
    Pin,
    differences,
    lock_path,
    read_lock,
    recipe_hash,
)
from mergepkg.recipe.flatten import SEP, flatten
from mergepkg.recipe.locate import key_name
from mergepkg.recipe.model import Recipe
from mergepkg.recipe.plan import Plan, make_plan
from mergepkg.registry.dependencies import install_dependencies
from mergepkg.registry.pick import ALL
from mergepkg.resolve.exports import How, key_exports
from mergepkg.resolve.keys import check_experts, key_of, step_entry
from mergepkg.resolve.sources import NotCached, fetch, missing_bytes, pin_folder, start_pin
from mergepkg.settings import Settings
from mergepkg.store.hashcache import Trust, check_files
from mergepkg.store.session import Session

Mode = Literal["update", "locked", "frozen"]


@dataclass
class SourceState:
    folder: Path | None  # None: deferred, not fetched yet (`Resolution.source_folder` fetches it)
    locked: LockedSource  # the request and its pin
    later: Callable[[], SourceState] | None = field(default=None, repr=False)  # fetches a deferred source
    missing: int | None = 0  # bytes a fetch would still download; None: it cannot be had here


@dataclass
class Resolution:
    recipe: Recipe  # flattened: steps of imported recipes included
    plan: Plan
    sources: dict[str, SourceState]
    entries: dict[str, dict]  # step -> canonical lock entry
    keys: dict[str, str]  # step -> sha256 of its entry
    seeds: dict[str, int]  # step -> seed for random methods (imported steps keep their recipe's)
    dependencies: dict[str, LockedDependency] = field(default_factory=dict)  # registry recipes, resolved
    pushes: tuple[LockedPush, ...] = ()  # the lock's record of `mergepkg push`, kept as it is
    # `[exports.NAME]` keyed (the digest the lock holds for the key, or None), what each key
    # hashes (those keyed here), and the converter (None unless `resolve(exports=...)` needed it)
    exports: dict[str, LockedExport] = field(default_factory=dict)
    export_entries: dict[str, dict] = field(default_factory=dict)
    converter: Converter | None = None
    seed: int | None = None  # the seed given in place of the recipe's (`--seed`), recorded in the lock

    def source_folder(self, name: str) -> Path:
        """The folder of source `name`, fetched now if it was deferred (and checked against
        the lock's pin as `resolve` would have)."""
        state = self.sources[name]
        if state.folder is None:
            assert state.later is not None  # a deferred source always knows how to fetch itself
            state = self.sources[name] = state.later()
        assert state.folder is not None
        return state.folder

    def lock(
        self, digests: Mapping[str, str | None], exported: Mapping[str, str] | None = None, *, checked: bool = True
    ) -> Lock:
        """The lock with these steps' digests and, in `exported`, these exports' file digests.
        `checked`: every sha256 the sources were pinned with confirmed first (a claim read
        and found true, `store/hashcache.check_files`), so a lock never records one no read gave."""
        if checked:
            check_files([s.folder for s in self.sources.values() if s.folder is not None], unchanged=False)
        steps = {n: LockedStep(n, self.recipe.steps[n].method, self.keys[n], digests.get(n)) for n in self.plan.order}
        return Lock(
            recipe_hash(self.recipe),
            {n: s.locked for n, s in self.sources.items()},
            steps,
            dependencies=dict(self.dependencies),
            pushes=self.pushes,
            exports={n: replace(e, digest=(exported or {}).get(n, e.digest)) for n, e in self.exports.items()},
            seed=self.seed,
        )


def expand(recipe: Recipe, session: Session) -> Recipe:
    """The recipe with the steps of imported recipes and dependencies joined in
    (dependencies at their locked versions where the lock still fits)."""
    lock = read_lock(lock_path(recipe))
    deps = install_dependencies(recipe, session.settings, locked=lock.dependencies if lock else None)
    return flatten(recipe, bind=deps.bind, loaded=deps.loaded)


def resolve(
    recipe: Recipe,
    session: Session,
    *,
    lock: Lock | None = None,
    mode: Mode = "update",
    upgrade: frozenset[str] = frozenset(),
    seed: int | None = None,
    targets: tuple[str, ...] | None = None,
    defer: bool = False,
    claims: bool = True,
    exports: How = "locked",
) -> Resolution:
    """Pin the sources the plan uses and key every step. With `defer`, a source the lock
    pins (a hub source at its locked commit, or a local folder that is gone) is not
    fetched: its `SourceState.folder` is None until `Resolution.source_folder` fetches it,
    so a build that takes every step from a store or a remote never downloads its inputs.
    `claims`: a file's sha256 may be taken from the lock, a hub blob's name or
    huggingface_hub's record of a `--local-dir` download, to be
    confirmed by `Resolution.lock` or the engine (`store/hashcache.py`); off, every file
    not remembered is read first. `exports`: how `[exports.NAME]` are keyed
    (resolve/exports.py): "converter" (llama.cpp's, needed: the caller makes them),
    "current" (the converter where one is set) or "locked" (the lock's converter)."""
    if mode not in get_args(Mode):  # a caller's typo would otherwise resolve as "update"
        raise ValueError(f"mode must be one of {', '.join(map(repr, get_args(Mode)))}, not {mode!r}")
    asked = recipe
    settings = session.settings
    packages = set(recipe.dependencies) | set(lock.dependencies if lock else ())  # theirs too
    _check_upgrade(asked, {u.split(SEP)[0] for u in upgrade}, set(recipe.sources) | packages)  # before installing
    if mode == "frozen":
        if lock is None:
            raise LockError(
                "--frozen needs a lock file and there is none",
                file=str(recipe.display),
                hint="run `mergepkg lock` first",
            )
        settings = replace(settings, offline=True)  # never touch the network
    since = _written_ns(lock_path(recipe)) if lock is not None else None  # the lock's claims hold before it
    deps = install_dependencies(
        recipe, settings, locked=lock.dependencies if lock else None, mode=mode, upgrade=upgrade
    )
    recipe = flatten(recipe, bind=deps.bind, loaded=deps.loaded)
    _check_upgrade(asked, upgrade, set(asked.sources) | _upgradable(recipe) | packages)
    plan = make_plan(recipe, targets)
    sources: dict[str, SourceState] = {}
    pins = {}  # source -> how to pin it now, once every file to hash is begun
    adapters = recipe.adapters  # LoRA adapters: pinned by their adapter files (resolve/sources.py)
    for name in plan.sources_used():
        src = recipe.sources[name]
        request = LockedSource(
            name, src.hf, src.revision if src.hf else None, src.lock_path(recipe.path.parent), Pin(None, ())
        )
        kept = _kept(lock, request, set(recipe.sources), renamed=mode != "frozen")  # while it still holds
        if kept is not None and _upgrading(name, upgrade):
            kept = None  # --upgrade moves it
        if mode == "frozen" and kept is None:
            raise recipe.locate(
                LockError(
                    f"source {name!r} is not in the lock as the recipe asks for it",
                    hint="run `mergepkg lock` to update the lock",
                ),
                f"sources.{key_name(name)}",
            )
        trust = _trust(kept, since) if src.path is not None else None
        pin_now = functools.partial(
            _pin_source, recipe, name, request, kept, settings, session, name in adapters, mode, trust, claims
        )
        # the lock's pin stands for a hub source at its locked commit, and for a local folder
        # that is gone: fetched (or found missing) only when a step to build reads it
        absent = src.path is not None and not src.path.is_dir()
        if defer and kept is not None and (src.hf or absent):
            later = functools.partial(pin_now, keyed=True)  # steps are keyed by the lock's pin meanwhile
            sources[name] = SourceState(None, kept, later, missing_bytes(src, kept.pin, settings))
        else:
            pins[name] = pin_now
            if src.path is not None and src.path.is_dir():
                start_pin(src.path, session.hashes, adapter=name in adapters, trust=trust, claims=claims)
    for name, pin_now in pins.items():
        sources[name] = pin_now()
    sources = {n: sources[n] for n in plan.sources_used()}  # in plan order, as before
    refs: dict[str, str] = {n: s.locked.pin.ref for n, s in sources.items()}
    if seed is None and mode in ("locked", "frozen") and lock is not None:
        seed = lock.seed  # the lock was made with a seed of its own: build what it says
    own_seed = recipe.seed if seed is None else seed
    entries, keys, seeds = {}, {}, {}
    for name in plan.order:
        step = recipe.steps[name]
        seeds[name] = step.origin.seed if step.origin else own_seed
        if step.moe is not None:
            check_experts(recipe, step, refs)  # needs identities: the base under another name
        entries[name] = step_entry(step, refs, seeds[name])
        keys[name] = refs[name] = key_of(entries[name])
    res = Resolution(recipe, plan, sources, entries, keys, seeds, deps.picks, lock.pushes if lock else ())
    res.seed = None if own_seed == recipe.seed else own_seed
    if recipe.exports:
        res.converter, res.exports, res.export_entries = key_exports(
            recipe, plan, keys, lock, llama_cpp=settings.llama_cpp, how=exports
        )
    if mode in ("locked", "frozen"):
        changes = differences(lock, res.lock({}, checked=False))  # claims are confirmed as the build reads
        if changes and claims:  # say what differs as the files' own hashes show it (a claim may be what does)
            return resolve(
                asked,
                session,
                lock=lock,
                mode=mode,
                upgrade=upgrade,
                seed=seed,
                targets=targets,
                defer=defer,
                claims=False,
                exports=exports,
            )
        if changes:
            raise LockError(
                f"{lock_path(recipe).name} is out of date: " + "; ".join(changes),
                file=str(lock_path(recipe)),
                # build --locked, export --locked, verify --rebuild (frozen) all come here: a
                # hint naming build's options sent verify's user to options verify lacks
                hint=f"run `mergepkg lock {asked.display}` to update it, then run this command again",
            )
    return res


def _kept(lock: Lock | None, request: LockedSource, names: set[str], *, renamed: bool) -> LockedSource | None:
    """The lock's entry for the source `request` asks for, under its name while the request
    is the same. With `renamed`, else an entry of the same request under another name (a
    source renamed, or an import renamed: its sources' names with it), preferring a name the
    recipe (`names`) no longer has: renaming moves no pin, only `lock --upgrade` does."""
    if lock is None:
        return None
    held = lock.sources.get(request.name)
    if held is not None and held.same_request(request):
        return held
    if not renamed:
        return None
    alike = sorted((s.name in names, s.name) for s in lock.sources.values() if s.same_request(request))
    return replace(lock.sources[alike[0][1]], name=request.name) if alike else None


def _upgradable(recipe: Recipe) -> set[str]:
    """What `--upgrade` may name of the flattened `recipe`'s sources: each as the lock names
    it (`soup::ft1`), and each import, at any depth, for every source inside it (`soup`)."""
    names: set[str] = set()
    for name in recipe.sources:
        parts = name.split(SEP)
        names.update(SEP.join(parts[:i]) for i in range(1, len(parts) + 1))
    return names


def _check_upgrade(recipe: Recipe, upgrade: set[str] | frozenset[str], known: set[str]) -> None:
    """A name `--upgrade` was given that names nothing is an error: a typo would otherwise
    upgrade nothing, silently."""
    unknown = sorted(upgrade - {ALL} - known)
    if unknown:
        raise LockError(
            f"--upgrade: no source or dependency named {unknown[0]!r}",
            file=str(recipe.display),
            hint=did_you_mean(unknown[0], sorted(known)),
        )


def _upgrading(name: str, upgrade: frozenset[str]) -> bool:
    """Whether `--upgrade` moves source `name`: named, inside an import named, or all."""
    return ALL in upgrade or any(name == u or name.startswith(u + SEP) for u in upgrade)


def _pin_source(
    recipe: Recipe,
    name: str,
    request: LockedSource,
    kept: LockedSource | None,
    settings: Settings,
    session: Session,
    adapter: bool,
    mode: Mode,
    trust: dict[str, Trust] | None = None,
    claims: bool = True,
    *,
    keyed: bool = False,
) -> SourceState:
    """Fetch and pin source `name`; a hub source at the lock's commit must give the lock's
    pin, but for other files read where the lock is being refreshed (`mode` update) and
    no step was `keyed` by the lock's pin already (a deferred source)."""
    src = recipe.sources[name]
    try:
        held = kept if kept is not None and src.hf else None  # the locked commit and its files
        fetched = fetch(
            src,
            settings,
            commit=held.pin.commit if held else None,
            files=[f.name for f in held.pin.files] if held else (),
            adapter=adapter,
        )
        pin = pin_folder(fetched.folder, session.hashes, fetched.commit, adapter=adapter, trust=trust, claims=claims)
    except SourceError as e:
        recipe.locate(e, f"sources.{key_name(name)}")
        if mode == "frozen" and isinstance(e, NotCached) and not session.settings.offline:  # offline anyway: its hint
            e.hint = "--frozen never downloads: build once without --frozen to fetch what the lock pins"
        raise
    if kept is not None and src.hf and pin != kept.pin:
        problem = _unlike_lock(src.hf, kept.pin, pin, refresh=mode == "update" and not keyed)
        if problem is not None:
            raise recipe.locate(problem, f"sources.{key_name(name)}")
    return SourceState(fetched.folder, replace(request, pin=pin))


def _unlike_lock(repo: str, locked: Pin, pin: Pin, *, refresh: bool) -> SourceError | LockError | None:
    """What is wrong with `pin`, hub repo `repo`'s files at the lock's commit, that is not
    the lock's `locked`: a file of other bytes (a commit's files never change: a damaged
    cache), or other files read (a lock made from a partly downloaded cache, or before
    another format was downloaded), which a lock being refreshed pins anew (None, with
    `refresh`)."""
    old, new = ({f.name: f for f in p.files} for p in (locked, pin))
    changed = sorted(n for n in old.keys() & new.keys() if old[n] != new[n])
    if changed or pin.commit != locked.commit:
        return SourceError(
            f"files of {repo}@{pin.commit} differ from the lock (a damaged Hugging Face cache?): "
            + ", ".join(changed or sorted(new)),
            hint="delete that repo from the Hugging Face cache and build again",
        )
    if refresh:
        return None
    extra, lacking = sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())
    return LockError(
        f"a merge reads other files of {repo}@{pin.commit} than the lock pins: "
        + "; ".join(
            [f"{', '.join(extra)} not in the lock"] * bool(extra) + [f"{', '.join(lacking)} not read"] * bool(lacking)
        ),
        hint="run `mergepkg lock` to pin the files the cache now holds (the lock was made from other files "
        "of that commit: a partly downloaded cache?)",
    )


def _written_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _trust(kept: LockedSource | None, since: int | None) -> dict[str, Trust] | None:
    """The lock's record of each file of a local source it still pins, for files unchanged
    since the lock was written (`store/hashcache.Trust`)."""
    if kept is None or since is None:
        return None
    return {f.name: Trust(f.size, f.sha256, since) for f in kept.pin.files}
