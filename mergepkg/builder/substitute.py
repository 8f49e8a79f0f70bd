"""Substitution: steps taken from remotes instead of built (docs/remote.md#substitution-build-plan-verify-and-eval).

A build may take a step it lacks from the configured remotes (`remotes.toml`, in the
order they were added) and from the remote the recipe's `[package] remote` names. Each
remote is asked once per build which keys it has (one listing of its records), then
for the record of each key the build lacks: its size and digest decide, before any
download, whether it could be accepted (the lock's digest, or a trusted signature for a
step the lock does not pin) and what pulling it would move.

The rule (`choose`), per step not in the local store, in plan order:

- `never` (`--no-remote`): build it;
- `prefer` (`--prefer-remote`): pull it when a remote offers it;
- `auto` (the default): pull it when its files are no larger than what building it here
  would still download (a tie pulls: building would cost compute besides): the inputs'
  files not on this machine (a hub source's files missing from the Hugging Face cache,
  a local folder that is gone: infinite), and for an input step not stored here, what
  obtaining that step would move (pulled or built, whichever this rule picked). A step
  whose inputs are all here is built: it downloads nothing.

Every planned step is obtained (a stored output's missing inputs are built again, as
without remotes), except upstream of a pulled step: a pulled step's inputs are neither
built, pulled nor fetched, unless another step built or stored here reads them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from mergepkg.builder.share import skippable_steps
from mergepkg.engine.progress import Reporter
from mergepkg.errors import LockError, MergepkgError
from mergepkg.lockfile import lock_path, read_lock
from mergepkg.recipe.model import Recipe
from mergepkg.remote.config import configured, configured_url, locate, trusted_keys
from mergepkg.remote.errors import Refused, RemoteConfigError, RemoteError, reaching
from mergepkg.remote.record import Record
from mergepkg.remote.sign import trusted_signer
from mergepkg.remote.store import PushReport, Remote
from mergepkg.remote.sync import open_remote, push_artifact, substitute
from mergepkg.settings import Settings
from mergepkg.store.local import Artifact, Store

Policy = Literal["auto", "prefer", "never"]
RECIPE_REMOTE = "recipe"  # the name a recipe's `[package] remote` goes by in messages


@dataclass(frozen=True)
class Offer:
    """A remote's artifact for a step, which the cheap checks (digest, signature) admit."""

    remote: str  # the remote's name (`recipe` for the recipe's own)
    url: str
    size: int  # bytes a pull moves
    digest: str


@dataclass(frozen=True)
class Refusal:
    """Why a remote's artifact for a key was not offered, and which remote (its name), so a
    hint can say where to repair it (`cache push --rehash -r NAME`)."""

    remote: str
    error: RemoteError

    @property
    def told(self) -> bool:
        """Whether `warn` heard of it already: a malformed record (a plain `RemoteError`) is
        warned about as the look-up meets it, a cheap check's `Refused` is not."""
        return not isinstance(self.error, Refused)


class Remotes:
    """The remotes one build may substitute from, asked in order; each opened and listed
    at most once. `warn` is told when a remote cannot be read or a record is malformed.

    Every remote is a candidate for every key: `look_up` finds the first remote whose
    record the cheap checks admit, and `next_offer` the one after it, so a pull that fails
    (a file damaged on one remote, a network error) falls back to the next remote
    (`pull_any`, for build and verify alike) before the step is built here or the build
    fails."""

    def __init__(self, settings: Settings, remotes: Sequence[tuple[str, str]], warn: Callable[[str], None]):
        self.settings, self.remotes, self.warn = settings, list(remotes), warn
        self.trusted = trusted_keys(settings) if remotes else []
        self.opened: dict[str, Remote] = {}
        self.held: dict[str, set[str] | None] = {}  # name -> the keys it lists (None: cannot be read)
        self.refused: dict[str, Refusal] = {}  # key -> why a remote's artifact was refused (the first)
        self.asked: dict[str, int] = {}  # key -> how many remotes were asked for it, in order

    @classmethod
    def for_recipe(cls, settings: Settings, recipe: Recipe, warn: Callable[[str], None]) -> Remotes:
        """The configured remotes, then the recipe's `[package] remote` (unless configured)."""
        remotes = [(r.name, r.url) for r in configured(settings)]
        if recipe.remote and all(url != recipe.remote for _, url in remotes):
            remotes.append((RECIPE_REMOTE, recipe.remote))
        return cls(settings, remotes, warn)

    def look_up(self, wanted: Mapping[str, str | None]) -> dict[str, Offer]:
        """The offers for the keys of `wanted` (key -> the lock's digest, or None), from the
        first remote that has each acceptably; a remote that cannot be read is warned about
        and skipped. `next_offer` goes on from there."""
        offers: dict[str, Offer] = {}
        for key, expected in wanted.items():
            self.asked[key] = 0
            if (offer := self.next_offer(key, expected)) is not None:
                offers[key] = offer
        return offers

    def next_offer(self, key: str, expected: str | None) -> Offer | None:
        """The offer for `key` of the next remote (after those asked already) whose record
        the cheap checks admit, or None when no remote is left; refusals on the way are kept
        in `refused` (the first one per key), so a caller can say why."""
        while (i := self.asked.get(key, 0)) < len(self.remotes):
            self.asked[key] = i + 1
            name, url = self.remotes[i]
            if (offer := self._offer(name, url, key, expected)) is not None:
                self.refused.pop(key, None)  # an earlier remote's refusal no longer matters
                return offer
        return None

    def _offer(self, name: str, url: str, key: str, expected: str | None) -> Offer | None:
        """Remote `name`'s offer for `key`, when its record passes the cheap checks."""
        held = self._listing(name, url)
        if held is None or key not in held:
            return None
        try:
            record = self.opened[name].record(key)
        except RemoteError as e:  # this record is malformed: it alone is not offered
            self.warn(f"remote {name}: a record is refused: {reason(e)}")
            self.refused.setdefault(key, Refusal(name, e))
            return None
        except Exception as e:  # the backend failed on the way: the rest of this remote too
            self.warn(f"remote {name} ({url}) cannot be read, not used: {reason(e)}")
            self.held[name] = None
            return None
        if record is None:
            return None
        problem = self._admits(record, expected, url)
        if problem is not None:
            self.refused.setdefault(key, Refusal(name, problem))
            return None
        return Offer(name, url, record.size, record.digest)

    def _listing(self, name: str, url: str) -> set[str] | None:
        """The keys remote `name` holds, listed once per build; None when it cannot be read
        (warned about once)."""
        if name not in self.held:
            try:
                self.opened[name] = self.opened.get(name) or open_remote(url, skip_instance_cache=True)
                self.held[name] = set(self.opened[name].keys())
            except Exception as e:  # any backend's failure (network, credentials): build instead
                if isinstance(e, RemoteConfigError):  # a bad URL edited into remotes.toml: said there
                    e = locate(self.settings, name, url, e)
                self.warn(f"remote {name} ({url}) cannot be read, not used: {reason(e)}")
                self.held[name] = None
        return self.held[name]

    def _admits(self, record: Record, expected: str | None, url: str) -> RemoteError | None:
        """Why `record` would be refused before anything is downloaded, or None."""
        where = f"{url}/records/{record.key}.json"
        if expected is not None:
            if record.digest == expected:
                return None
            return Refused(f"the remote's artifact has digest {record.digest}, the lock pins {expected}", file=where)
        try:
            if trusted_signer(record, self.trusted, where=where) is not None:
                return None
        except Refused as e:  # a trusted key's name on a signature that does not verify: forged
            return e
        return Refused("the lock pins no digest for this step and no trusted key signed the record", file=where)

    def pull_any(
        self, store: Store, name: str, key: str, offer: Offer, expected: str | None, reporter: Reporter
    ) -> tuple[Artifact, Offer]:
        """Step `name` (`key`) pulled into `store` from `offer`'s remote or, while pulls fail
        (a file that differs from its record, a network error), from each next remote whose
        record the cheap checks admit, each failure warned about (`trying remote X`): one
        damaged copy never hides a whole one. Returns the artifact and the offer it came
        from. When none gives it, raises the first failure: the one of the remote the caller
        chose (`offer.remote`), so build and verify report the same remote. Each try is told
        to `reporter` (started, progress, pulled)."""
        first: RemoteError | OSError | None = None
        current: Offer | None = offer
        while current is not None:
            try:
                return self._pull(store, name, key, current, expected, reporter), current
            except (RemoteError, OSError) as e:  # OSError: writing it here (a full disk) fails the same way
                first = first or e
                current = self.next_offer(key, expected)
                if current is not None:
                    reporter.warning(f"step {name!r}: {reason(e)}; trying remote {current.remote}")
        assert first is not None  # the loop ran at least once
        raise first

    def _pull(
        self, store: Store, name: str, key: str, offer: Offer, expected: str | None, reporter: Reporter
    ) -> Artifact:
        """`key` pulled from the offering remote into `store`, every check made (remote/sync.py)."""
        reporter.pull_started(name, offer.remote, offer.size)

        def progress(file: str, done: int, total: int) -> None:
            reporter.pull_progress(done)

        with reaching(offer.url):
            art = substitute(
                self.opened[offer.remote], store, key, expected_digest=expected, trusted=self.trusted, progress=progress
            )
        reporter.step_pulled(name, key, offer.remote)
        return art


def reason(e: Exception) -> str:
    """An error in one line, where it happened first (a remote's record and field)."""
    return e.located if isinstance(e, MergepkgError) else f"{type(e).__name__}: {e}"


@dataclass
class Choice:
    """What a build does with each step the outputs need and the local store lacks."""

    pull: dict[str, Offer] = field(default_factory=dict)  # step -> the remote's artifact
    build: list[str] = field(default_factory=list)  # in plan order
    sources: list[str] = field(default_factory=list)  # the sources the built steps read
    download: dict[str, float] = field(default_factory=dict)  # step -> bytes building it would download (inf: cannot)

    def unneeded(self, order: Iterable[str], local: Iterable[str]) -> list[str]:
        """The steps neither stored, pulled nor built: upstream of pulled ones."""
        done = set(self.pull) | set(self.build) | set(local)
        return [n for n in order if n not in done]


def choose(
    order: Sequence[str],
    inputs: Mapping[str, Iterable[str]],
    roots: Iterable[str],
    local: Iterable[str],
    offers: Mapping[str, Offer],
    missing: Mapping[str, int | None],
    policy: Policy,
) -> Choice:
    """The rule (see the module's docstring). `order`: steps in plan order; `inputs`: each
    step's models (steps and sources); `roots`: the steps wanted; `local`: those stored
    here; `offers`: by step; `missing`: each source's bytes still to download (None: cannot)."""
    local = set(local)
    cost: dict[str, float] = {}  # bytes obtaining each step moves
    pulled: set[str] = set()
    choice = Choice()
    for name in order:
        if name in local:
            cost[name] = 0
            continue
        build = 0.0
        for m in inputs[name]:
            m_cost = cost[m] if m in cost else missing.get(m, 0)
            build += math.inf if m_cost is None else m_cost
        choice.download[name] = build
        offer = offers.get(name) if policy != "never" else None
        if offer is not None and (policy == "prefer" or offer.size <= build):
            pulled.add(name)
            cost[name] = offer.size
        else:
            cost[name] = build
    needed = set(roots)
    for name in reversed(order):
        if name not in needed:
            continue
        if name in local:  # a stored step's inputs are kept as before: only a pull cuts them off
            needed.update(m for m in inputs[name] if m in cost)
            continue
        if name in pulled:
            choice.pull[name] = offers[name]
            continue
        choice.build.append(name)
        for m in inputs[name]:
            if m in cost:
                needed.add(m)
            elif m not in choice.sources:
                choice.sources.append(m)
    choice.build.reverse()
    choice.pull = {n: choice.pull[n] for n in order if n in choice.pull}
    return choice


def push_locked(settings: Settings, store: Store, recipe: Recipe, remote: str) -> dict[str, PushReport]:
    """Push the stored artifacts of the steps `recipe`'s lock pins to `remote` (a
    configured remote's name, or a URL), each checked against the lock's digest first;
    the outputs must be stored (built). Returns each step's push. What `publish --push`
    does before the registry names the version, so the remote holds what the lock says."""
    lock = read_lock(lock_path(recipe))
    if lock is None:
        raise LockError("there is no lock to push the steps of", file=str(lock_path(recipe)), hint="build it first")
    url = remote if "://" in remote else configured_url(settings, remote)
    chosen = {}  # every step is checked before the first push, so a refusal pushes nothing
    optional = skippable_steps(lock, recipe.outputs)  # as `cache push RECIPE`
    for name, step in lock.steps.items():
        art = store.get(step.key)
        if art is None or not art.intact():
            if name not in optional:
                raise LockError(f"output {name!r} is not in the store", hint="build the recipe first, then push")
            continue  # a step the outputs do not need (pulled past)
        if step.digest is not None and art.digest != step.digest:
            raise LockError(
                f"the stored {name!r} has digest {art.digest[:19]}, the lock pins {step.digest[:19]}",
                file=str(lock_path(recipe)),
                hint="`mergepkg verify` the recipe, then build it again",
            )
        chosen[name] = art
    target = open_remote(url, skip_instance_cache=True)
    with reaching(url):
        return {name: push_artifact(target, art) for name, art in chosen.items()}
