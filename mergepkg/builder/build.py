"""Build a recipe: resolve, build each step whose key is not stored, lock, place outputs.

A step whose key is in the store (and whose files are as built) is reused without
reading anything; an unchanged, fully stored recipe therefore touches no tensor data.
A step the store lacks may be pulled from a remote instead of built (`substitute.py`);
then its inputs are neither built nor fetched unless another step built here reads
them. The steps left are laid out first (so a late error stops the build before the
first tensor is read) and built into the store one by one under their key's file lock
(`steps.py`). Exports (`[exports.NAME]`: GGUF files) are then made from their steps'
artifacts, or reused, the same way (`exports.py`). Outputs and exports are then
hard-linked (or copied) into `--out` by a rename (`outputs.py`): a failed or killed
build leaves `--out` as it was.

Pitfall warnings (docs/warnings.md) are told to the reporter and kept in the report:
the recipe's (MP1xx) before anything is read, the layouts' (MP2xx) once steps are laid
out, the tensor values' (MP3xx) as each step is built. With `deny_warnings` any of them
fails the build: MP1xx and MP2xx before anything is written, MP3xx before the step that
shows them is committed to the store (steps committed before it stay: the store holds
only what was built as its key says), and the lock and outputs are then left as they were.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

from mergepkg.builder.exports import FILE as EXPORT_FILE
from mergepkg.builder.exports import check_export_folder, make_exports, place_exports
from mergepkg.builder.outputs import check_replaceable, output_lock, place_outputs
from mergepkg.builder.steps import StepRunner
from mergepkg.builder.substitute import Policy, Remotes
from mergepkg.engine.progress import NullReporter, Reporter
from mergepkg.errors import LockError
from mergepkg.lockfile import Lock, LockedExport, LockedStep, lock_path, locked_digests, read_lock, write_lock
from mergepkg.pitfalls.params import recipe_pitfalls
from mergepkg.pitfalls.pitfall import Pitfall, deny, settle
from mergepkg.recipe.exports import export_file
from mergepkg.recipe.model import Recipe
from mergepkg.resolve.resolution import Mode, Resolution, resolve
from mergepkg.store.evals import EvalCache
from mergepkg.store.local import Artifact
from mergepkg.store.session import Session

# How much of each reused artifact --locked and --frozen re-read, at random, to check it
# still holds the bytes it was built with (`--verify-store` re-reads all of it).
SPOT_CHECK_BYTES = 256 << 20


@dataclass
class BuildReport:
    resolution: Resolution
    # every step the build has in the store: reused, pulled or built (a step upstream of a
    # pulled one that nothing else needed is not there: `all_steps` makes every step be)
    artifacts: dict[str, Artifact]
    built: list[str]
    reused: list[str]
    outputs: dict[str, Path]  # output step -> placed folder (empty without --out)
    lock: Lock
    warnings: list[str] = field(default_factory=list)  # also told to the reporter, as they happened
    pitfalls: list[Pitfall] = field(default_factory=list)  # coded warnings (docs/warnings.md), likewise
    pulled: dict[str, str] = field(default_factory=dict)  # step -> the remote it was substituted from
    exports: dict[str, Artifact] = field(default_factory=dict)  # export -> its artifact (one GGUF file)
    exported: list[str] = field(default_factory=list)  # the exports converted (not reused)
    placed_exports: dict[str, Path] = field(default_factory=dict)  # export -> NAME.gguf in --out


def build(
    recipe: Recipe,
    session: Session,
    *,
    out: Path | None = None,
    seed: int | None = None,
    mode: Mode = "update",
    reporter: Reporter | None = None,
    targets: tuple[str, ...] | None = None,
    check_digests: bool = True,
    verify_store: bool = False,
    deny_warnings: bool = False,
    remote: Policy = "auto",
    all_steps: bool = False,
    only_exports: tuple[str, ...] | None = None,
) -> BuildReport:
    """Build the recipe's outputs (or only `targets` and what they need; the lock is then
    left alone) and place the outputs in `out` when given. With --locked/--frozen, a
    digest that differs from the lock's is an error unless `check_digests` is off
    (`verify --rebuild` compares them itself), and what is reused from the store is
    spot-checked (`verify_store`: checked whole). `deny_warnings`: a pitfall warning is
    an error (`WarningsDenied`), raised before anything it concerns is written.

    A step the store lacks is taken from a remote (configured, or the recipe's `[package]
    remote`) as `remote` says: "auto" when its files are smaller than what building it
    would download, "prefer" whenever one has it, "never" not at all (builder/substitute.py).
    Only what the outputs (or `targets`; `all_steps`: every planned step) need is obtained,
    and only the sources the steps built here read are fetched.

    The recipe's exports are made too (not with `targets` or `all_steps`); `only_exports`: these
    exports and the steps they need, nothing else, each placed as `out/NAME.gguf`."""
    if remote not in get_args(Policy):  # a caller's typo would otherwise pull as another policy
        raise ValueError(f"remote must be one of {', '.join(map(repr, get_args(Policy)))}, not {remote!r}")
    if out is not None:
        out = out.resolve()
        if only_exports is not None:
            check_export_folder(out, only_exports)  # NAME.gguf files added to any folder
        else:
            check_replaceable(out, store=session.store, recipe=recipe)
    warnings = BuildWarnings(reporter or NullReporter(), deny_warnings)
    with session.store.in_use():  # `cache gc` waits for us
        session.store.clean_tmp()  # what killed builds left behind
        old_lock = read_lock(lock_path(recipe))
        exporting = only_exports is not None or (bool(recipe.exports) and not targets and not all_steps)
        res = resolve(
            recipe,
            session,
            lock=old_lock,
            mode=mode,
            seed=seed,
            targets=targets,
            defer=True,
            exports="converter" if exporting else "locked",  # only a build that makes them needs llama.cpp
        )
        warnings.recipe = res.recipe
        warnings.found(recipe_pitfalls(res.recipe, res.plan.order))  # MP1xx: before anything is read
        sample = None if verify_store else SPOT_CHECK_BYTES if mode != "update" else 0
        held = locked_digests(old_lock)  # by key: a step renamed keeps its digest
        locked = {n: held[k] for n, k in res.keys.items() if k in held}
        wanted: tuple[str, ...] = ()
        if only_exports is not None:  # these exports, and the steps they are made from
            exports = only_exports
        else:
            exports = tuple(res.recipe.exports) if exporting else ()
            wanted = targets or res.recipe.outputs
        export_steps = (res.recipe.exports[n].step for n in exports)
        roots = res.plan.order if all_steps else tuple(dict.fromkeys((*wanted, *export_steps)))
        remotes = Remotes.for_recipe(session.settings, res.recipe, warnings.warning) if remote != "never" else None
        steps = StepRunner(res, session, warnings, sample, remotes, remote, locked, tuple(roots))
        steps.run()
        artifacts, built, reused = steps.artifacts, steps.built, steps.reused
        made, exported = make_exports(res, session, artifacts, exports, warnings, sample)
        export_digests = {n: a.digest for n, a in made.items()}
        # a step nothing needed (upstream of a pulled one) keeps the lock's digest for its key
        digests = locked | {n: a.digest for n, a in artifacts.items()}
        if mode != "update" and old_lock is not None and check_digests:
            _check_digests(digests, old_lock.steps, lock_path(recipe))
            _check_digests(export_digests, old_lock.exports, lock_path(recipe), "export")
        lock = res.lock(digests, export_digests)
        session.store.add_root(lock_path(recipe))  # first: a lock written is one gc keeps
        if mode == "update" and targets is None and lock != old_lock:
            write_lock(lock_path(recipe), lock)
        outputs, placed = {}, {}
        if out is not None:
            with output_lock(out):
                if only_exports is not None:
                    placed = place_exports(made, out)
                else:
                    outputs = place_outputs(
                        res,
                        {n: artifacts[n] for n in recipe.outputs},
                        out,
                        EvalCache(session.settings.home).rows,
                        max_shard_bytes=session.settings.max_shard_bytes,
                        lock=lock,
                        exports={n: a.folder / EXPORT_FILE for n, a in made.items()},
                    )
                    placed = {n: out / export_file(n) for n in made}
        return BuildReport(
            res,
            artifacts,
            built,
            reused,
            outputs,
            lock,
            warnings.messages,
            warnings.pitfalls,
            steps.pulled,
            made,
            exported,
            placed,
        )


class BuildWarnings:
    """The caller's reporter, keeping the warnings for the report too; pitfalls are placed
    in the recipe, those it allows dropped, and with `deny` the rest raise."""

    def __init__(self, reporter: Reporter, deny: bool = False):
        self.reporter, self.deny = reporter, deny
        self.messages: list[str] = []
        self.pitfalls: list[Pitfall] = []
        self.held: list[Pitfall] = []  # told, not yet denied
        self.recipe: Recipe | None = None  # the resolved recipe the pitfalls point into

    def found(self, pitfalls: list[Pitfall], *, hold: bool = False) -> None:
        """Tell `pitfalls` (raw, as the checks make them); with `deny`, raise at once, or
        (`hold`) when `release` is called."""
        assert self.recipe is not None  # set once the recipe is resolved, before any check runs
        shown = [p for p in settle(pitfalls, self.recipe) if p not in self.pitfalls]
        for p in shown:
            self.pitfalls.append(p)
            self.reporter.pitfall(p)
        self.held += shown
        if not hold:
            self.release("nothing was built")

    def release(self, outcome: str) -> None:
        """With `deny`, raise for the warnings told since the last call; `outcome` says what was not done."""
        held, self.held = self.held, []
        if self.deny:
            deny(held, outcome)

    def pitfall(self, pitfall: Pitfall) -> None:
        self.found([pitfall], hold=True)  # the engine's (MP3xx): all of a step's told, then `release`

    def step_reused(self, name: str, key: str) -> None:
        self.reporter.step_reused(name, key)

    def step_started(self, name: str, tensors: int, nbytes: int) -> None:
        self.reporter.step_started(name, tensors, nbytes)

    def tensor_done(self, nbytes: int) -> None:
        self.reporter.tensor_done(nbytes)

    def step_finished(self, name: str) -> None:
        self.reporter.step_finished(name)

    def warning(self, message: str) -> None:
        if message not in self.messages:  # told once a build, as pitfalls are
            self.messages.append(message)
            self.reporter.warning(message)

    def pull_started(self, name: str, remote: str, nbytes: int) -> None:
        self.reporter.pull_started(name, remote, nbytes)

    def pull_progress(self, done: int) -> None:
        self.reporter.pull_progress(done)

    def step_pulled(self, name: str, key: str, remote: str) -> None:
        self.reporter.step_pulled(name, key, remote)


def _check_digests(
    digests: dict[str, str], lock: Mapping[str, LockedStep | LockedExport], lock_file: Path, kind: str = "step"
) -> None:
    for name, digest in digests.items():
        locked = lock[name].digest if name in lock else None
        if locked is not None and locked != digest:
            raise LockError(
                f"{kind} {name!r} built to {digest[:19]}, but the lock records {locked[:19]}",
                file=str(lock_file),
                hint="the build is not reproducing the locked bytes; "
                "`mergepkg verify --rebuild` shows which steps differ",
            )
