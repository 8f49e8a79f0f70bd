"""Sharing built steps through a remote: the artifacts a recipe's lock pins (or keys
given by hand), pushed, signed or pulled; the roots a remote's gc keeps. Exports are
not shared (docs/export.md): a GGUF file is made again from its step.

A RECIPE argument means the steps its lock (beside it) pins, with their digests; a
`.lock` file the same; anything else that is hex is a key or a unique prefix of one
(of the local store's keys when pushing, of the remote's when pulling). The library
never prints: each artifact's transfer is told to a `ShareReporter`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from mergepkg.builder.exports import is_export
from mergepkg.errors import LockError, StoreError
from mergepkg.lockfile import Lock, read_lock
from mergepkg.recipe.parse import load_recipe
from mergepkg.registry.packages import Spec, looks_like_spec, published_locks
from mergepkg.remote.config import config_path, configured, configured_url
from mergepkg.remote.errors import NotOnRemote, RemoteConfigError, RemoteError, reaching
from mergepkg.remote.sign import SigningKey, keys_dir, load_signing_key
from mergepkg.remote.store import GcReport, PushReport, Remote
from mergepkg.remote.sync import open_remote, push_artifact, sign_artifact, substitute
from mergepkg.remote.transfer import ProgressFn
from mergepkg.resolve.resolution import resolve
from mergepkg.settings import Settings
from mergepkg.store.local import Artifact, is_key
from mergepkg.store.session import Session


class ShareReporter(Protocol):
    """Told about each artifact moved (the CLI draws progress bars from it)."""

    def transfer_started(self, label: str, key: str) -> ProgressFn | None: ...

    def transfer_finished(self, label: str, key: str, what: str, nbytes: int) -> None: ...


@dataclass(frozen=True)
class Wanted:
    key: str
    digest: str | None  # the lock's digest; None for a key given alone (or a step not built)
    label: str  # `recipe.toml:step` or the key as given, for messages
    # a lock's step the command may leave out where this home lacks it (`skipped`): for a
    # pull, one its lock's build did not need (`unneeded_steps`); for a push or a sign, one
    # the outputs do not need (`skippable_steps`). Never a key named on the command line
    optional: bool = False


@dataclass(frozen=True)
class Moved:
    label: str
    key: str
    what: str  # pushed, present, repaired, signed, pulled, stored, skipped (an optional step absent)
    nbytes: int


def choose_remote(settings: Settings, name: str | None) -> Remote:
    """The configured remote `name`, or the only one configured; an error asking for a
    name where there are several. Opened fresh (no cached connection from before)."""
    if name is None:
        remotes = configured(settings)
        if len(remotes) != 1:
            raise RemoteConfigError(
                "no remote is configured" if not remotes else f"{len(remotes)} remotes are configured",
                file=config_path(settings),
                hint="add one: mergepkg remote add NAME URL"
                if not remotes
                else f"pick one with -r: {', '.join(r.name for r in remotes)}",
            )
        name = remotes[0].name
    return open_remote(configured_url(settings, name), skip_instance_cache=True)


def choose_signing_key(settings: Settings, name: str | None) -> SigningKey:
    """The signing key `name` (a key under keys/, or a secret key file), or the only one
    under keys/."""
    if name is None:
        found = sorted(p.stem for p in keys_dir(settings).glob("*.secret"))
        if len(found) != 1:
            raise RemoteConfigError(
                "no signing key" if not found else f"{len(found)} signing keys",
                file=keys_dir(settings),
                hint="make one: mergepkg remote keygen NAME"
                if not found
                else f"pick one with --key: {', '.join(found)}",
            )
        name = found[0]
    return load_signing_key(settings, name)


def lock_for(arg: str | Path) -> tuple[Path, Lock]:
    """The lock a recipe file (the lock beside it) or a lock file names; an error for none."""
    path = Path(arg)
    lock_file = path if path.suffix == ".lock" else path.with_suffix(".lock")
    if not path.exists():
        raise StoreError(f"no such file: {path}", hint="give a recipe file, a lock file, or a key")
    if not path.is_file() or path.suffix not in (".lock", ".toml"):
        raise StoreError(f"not a recipe or a lock file: {path}", hint="give a recipe.toml, its .lock, or a key")
    lock = read_lock(lock_file)
    if lock is None:
        raise StoreError(
            "the recipe has no lock: nothing is pinned", file=path, hint=f"build it first: mergepkg build {path}"
        )
    return lock_file, lock


def check_current(session: Session, args: Iterable[str], hint: str) -> None:
    """Refuse a recipe's lock (a RECIPE argument's, or a `.lock` file's with its recipe
    beside it) that `build --locked` would refuse: its keys are then not what a build
    reuses, so pulling or pushing them moves steps nobody builds from (the recipe changed
    since it was locked, or a step's key moved under it: an upgrade of mergepkg whose keys
    changed, a source edited). The check is the `--locked` resolution, sources deferred as
    a build from the store defers them. A lock with no
    recipe beside it has nothing to be held to. `hint` says what to do, `{recipe}` in it
    the recipe file."""
    for arg in args:
        if is_key_arg(arg):
            continue
        lock_file, lock = lock_for(arg)
        recipe_file = lock_file.with_suffix(".toml")
        if not recipe_file.is_file():
            continue
        try:
            resolve(load_recipe(recipe_file), session, lock=lock, mode="locked", defer=True)
        except LockError as e:  # build's hint: it does not fit here
            raise LockError(e.message, file=e.file, line=e.line, hint=hint.format(recipe=recipe_file)) from None


def is_key_arg(arg: str) -> bool:
    """Whether a command-line argument is a key (or a prefix of one) rather than a file."""
    return is_key(arg) and not Path(arg).exists()


def unneeded_steps(lock: Lock) -> set[str]:
    """The steps `lock` pins without a digest while it pins others: the build that wrote
    it did not need them (upstream of a pulled step, with no digest in the lock before),
    so no home need have them. A lock no build wrote (no digest at all) has none."""
    if all(s.digest is None for s in lock.steps.values()):
        return set()
    return {n for n, s in lock.steps.items() if s.digest is None}


def skippable_steps(lock: Lock, outputs: Collection[str] | None) -> set[str]:
    """The steps of `lock` a push (or a sign) may leave out where this home lacks them:
    those the outputs do not need given what is stored. The outputs must be stored, so
    they need no other step: every step but an output (a build that pulled an output never
    had the steps upstream of it, yet its lock keeps their digests from the lock before),
    and with `outputs` unknown (None: a lock with no recipe beside it) the steps the lock's
    build did not need. The one rule of `cache push RECIPE` and `publish --push`."""
    others = set() if outputs is None else {n for n in lock.steps if n not in outputs}
    return others | unneeded_steps(lock)


def _leaves_out(lock_file: Path, lock: Lock) -> set[str]:
    """What `skippable_steps` says of `lock`, given the outputs of the recipe beside it
    (its `.toml`), where there is one."""
    recipe = lock_file.with_suffix(".toml")
    return skippable_steps(lock, load_recipe(recipe).outputs if recipe.is_file() else None)


def pinned(args: Iterable[str]) -> tuple[list[Wanted], list[str], list[Path]]:
    """The steps the given recipes' (or lock files') locks pin, in lock order and once
    each (with a digest where any lock pins one; optional where `skippable_steps` says so
    of every lock that pins it); the other arguments (keys and prefixes), as given; and
    the lock files."""
    wanted: dict[str, Wanted] = {}
    keys, lock_files = [], []
    for arg in args:
        if is_key_arg(arg):
            keys.append(arg)
            continue
        lock_file, lock = lock_for(arg)
        lock_files.append(lock_file.resolve())
        optional = _leaves_out(lock_file, lock)
        for step in lock.steps.values():
            w = Wanted(step.key, step.digest, f"{arg}:{step.name}", optional=step.name in optional)
            wanted[step.key] = _merged(wanted[step.key], w) if step.key in wanted else w
    return list(wanted.values()), keys, lock_files


def _merged(first: Wanted, then: Wanted) -> Wanted:
    """One key two locks pin: the first's, or the later's where only it has a digest; and
    optional only where both are (a lock that needs the step wins)."""
    chosen = then if first.digest is None and then.digest is not None else first
    return replace(chosen, optional=first.optional and then.optional)


def _one(prefix: str, keys: Sequence[str], where: str, hint: str) -> str:
    found = [k for k in keys if k.startswith(prefix)]
    if len(found) != 1:
        raise StoreError(
            f"{'no' if not found else len(found)} keys {where} match {prefix!r}",
            hint=hint if not found else "give more of the key",
        )
    return found[0]


def stored_targets(session: Session, args: Sequence[str]) -> list[tuple[Wanted, Artifact | None]]:
    """The local artifacts `args` name (none: every stored step), each intact and, for
    a lock's step, with the lock's digest; a step not stored is an error naming it, but
    for one the outputs do not need (`skippable_steps`), paired with None: a home that
    pulled the outputs never had it. Exports (GGUF files) are not shared: left out of
    "every", an error when named by key."""
    store = session.store
    if not args:
        return [(Wanted(a.key, a.digest, a.key[:16]), a) for a in store.all() if not is_export(a)]
    steps, keys, _ = pinned(args)
    named = [(k, store.find_one(k)) for k in keys]  # a key given is wanted: an error where not stored
    out: list[tuple[Wanted, Artifact | None]] = []
    for w in steps:
        art = store.get(w.key)
        if w.optional and all(a.key != w.key for _, a in named) and (art is None or not art.intact()):
            out.append((w, None))
            continue
        if art is None or not art.intact() or (w.digest is not None and art.digest != w.digest):
            state = "is not in the local store" if art is None or not art.intact() else "differs from its lock"
            recipe = w.label.rpartition(":")[0]
            raise StoreError(
                f"step {w.label.rpartition(':')[2]!r} ({w.key[:12]}) {state}",
                file=recipe,
                hint=f"build it first: mergepkg build {recipe}",
            )
        out.append((w, art))
    for k, art in named:
        if is_export(art):
            raise StoreError(
                f"{k} is an export ({art.manifest['entry'].get('type')} GGUF file): exports are not shared "
                "through remotes",
                hint="share the step it is made from; `mergepkg export` makes it again from there",
            )
        if all(w.key != art.key for w, _ in out):
            out.append((Wanted(art.key, art.digest, k), art))
    return out


def push(
    remote: Remote,
    session: Session,
    args: Sequence[str],
    *,
    signing_key: SigningKey | None = None,
    reporter: ShareReporter | None = None,
    rehash: bool = False,
) -> list[Moved]:
    """Push the artifacts `args` name (see `stored_targets`; a step the outputs do not
    need and this home lacks is `skipped`): each checks what the remote has first and
    moves only the files it lacks; with `signing_key`, records are signed, those already
    there too. `rehash` reads the remote's files back and replaces those that differ, and
    a record saying another build: the repair of a remote whose pulls are refused. A
    lock `build --locked` would refuse (`check_current`) is refused before anything moves."""
    check_current(session, args, "build it (`mergepkg build {recipe}` updates its lock, stores its steps), then push")
    done = []
    for w, art in stored_targets(session, args):
        if art is None:
            done.append(Moved(w.label, w.key, "skipped", 0))
            continue
        progress = reporter.transfer_started(w.label, art.key) if reporter else None
        with reaching(remote.url):
            report: PushReport = push_artifact(
                remote, art, hashes=session.hashes, signing_key=signing_key, progress=progress, rehash=rehash
            )
        what = "signed" if report.signed else "present" if report.present else _pushed(report)
        done.append(Moved(w.label, art.key, what, report.nbytes))
        if reporter:
            reporter.transfer_finished(w.label, art.key, what, report.nbytes)
    return done


def _pushed(report: PushReport) -> str:
    """`repaired` where the remote had the key and a rehash replaced files or the record."""
    return "repaired" if report.repaired else "pushed"


def sign(remote: Remote, session: Session, args: Sequence[str], key: SigningKey) -> list[Moved]:
    """Add `key`'s signature to the remote's records of the artifacts `args` name (none:
    every stored artifact the remote has); each must be on the remote and hold the same
    files as here. Only records are rewritten; a step the outputs do not need and this
    home lacks is left out."""
    targets = [(w, a) for w, a in stored_targets(session, args) if a is not None]
    if not args:
        with reaching(remote.url):
            present = set(remote.keys())
        targets = [(w, a) for w, a in targets if a.key in present]
    done = []
    for w, art in targets:
        try:
            with reaching(remote.url):
                signed = sign_artifact(remote, art, key, hashes=session.hashes)
        except NotOnRemote as e:
            raise NotOnRemote(
                f"{w.label} ({art.key[:12]}) is not on the remote", file=remote.url, hint="push it first"
            ) from e
        done.append(Moved(w.label, art.key, "present" if signed is None else "signed", 0))
    return done


def pull(
    remote: Remote,
    session: Session,
    args: Sequence[str],
    *,
    trusted: Sequence[str] = (),
    reporter: ShareReporter | None = None,
) -> list[Moved]:
    """Pull what `args` name into the local store: a lock's steps checked against its
    digests; a key no given lock pins, by a signature of one of the `trusted` keys. A step
    the outputs do not need (`skippable_steps`) is `skipped` where the remote lacks it (a
    push from a home that pulled the outputs never had it), or where the lock pins no
    digest to check it by, unless another lock given needs it or its key is given too. Every key is looked
    up on the remote before anything is pulled; a refusal raises and nothing of that
    artifact enters the store. The locks become `cache gc` roots, as a build's do, so
    what they pinned stays until the build that reuses it. A lock `build --locked` would
    refuse (`check_current`) is refused before anything is pulled."""
    check_current(session, args, "run `mergepkg lock {recipe}` to update it, then pull again")
    steps, keys, lock_files = pinned(args)
    digests = {w.key: w.digest for w in steps}
    on_remote: list[str] | None = None
    for k in keys:
        if on_remote is None:
            with reaching(remote.url):
                on_remote = remote.keys()
        full = k if len(k) == 64 else _one(k, on_remote, "on the remote", f"see what {remote.url} has")
        if full not in digests:
            steps.append(Wanted(full, None, k))
            digests[full] = None
        steps = [replace(w, optional=False) if w.key == full else w for w in steps]  # named: wanted
    stored, skipped = {}, set()
    for w in steps:
        art = session.store.get(w.key)
        if art is not None and art.intact() and (w.digest is None or art.digest == w.digest):
            stored[w.key] = art
        elif w.optional and (w.digest is None or not _has(remote, w.key)):  # no digest to check, or not there
            skipped.add(w.key)
        elif not _has(remote, w.key):
            raise NotOnRemote(
                f"{w.label} ({w.key[:12]}) is not on the remote",
                file=remote.url,
                hint="push it from a home that built it, or build it here",
            )
    for lock_file in lock_files:  # first: a `cache gc` between two pulls keeps the first
        session.store.add_root(lock_file)
    done = []
    for w in steps:
        if w.key in stored or w.key in skipped:
            done.append(Moved(w.label, w.key, "stored" if w.key in stored else "skipped", 0))
            continue
        progress = reporter.transfer_started(w.label, w.key) if reporter else None
        with reaching(remote.url):
            art = substitute(remote, session.store, w.key, expected_digest=w.digest, trusted=trusted, progress=progress)
        done.append(Moved(w.label, w.key, "pulled", art.size))
        if reporter:
            reporter.transfer_finished(w.label, w.key, "pulled", art.size)
    return done


def _has(remote: Remote, key: str) -> bool:
    """Whether the remote holds `key`; a malformed record is its own error, not an absence."""
    with reaching(remote.url):
        return remote.record(key) is not None


def gc_roots(
    recipes: Sequence[str | Path], locks: Sequence[str | Path], settings: Settings | None = None
) -> tuple[set[str], list[str]]:
    """The keys that the given recipes' locks, lock files and published packages
    (`NAME@RANGE`: every matching version's published lock) pin, and what each root was;
    a root that cannot be read is an error (a remote gc keeps nothing else)."""
    keep: set[str] = set()
    roots: list[str] = []
    for arg in [*recipes, *locks]:
        if settings is not None and looks_like_spec(str(arg)):
            for label, lock in published_locks(settings, Spec.parse(str(arg))):
                roots.append(label)
                keep |= {s.key for s in lock.steps.values()}
            continue
        lock_file, lock = lock_for(arg)
        roots.append(str(lock_file))
        keep |= {s.key for s in lock.steps.values()}
    return keep, roots


def remote_gc(remote: Remote, keep: set[str], *, dry_run: bool = False) -> GcReport:
    """The remote's gc keeping `keep`; refuses to run with nothing to keep."""
    if not keep:
        raise RemoteError(
            "no roots: a gc keeping nothing would empty the remote",
            file=remote.url,
            hint="name what to keep: --keep RECIPE, --keep NAME@RANGE or --keep-lock FILE",
        )
    with reaching(remote.url):
        return remote.gc(keep, dry_run=dry_run)
