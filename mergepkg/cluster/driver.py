"""The driver of a cluster build: recipes resolved and keyed here, their steps built as Ray
tasks (`plan.py`, `worker.py`), then each recipe's lock written and outputs placed here.

The driver reads no tensor data: it pins and keys as a local build does, looks up what
its store and the remote hold, pushes what a task reads that only it holds, submits one
task per step to build (a task waits for the tasks of its input steps: Ray passes it
their small answers), and follows the cluster's progress on its reporter. The first
answer carrying an error cancels the rest and raises it, placed at its step; a task
whose worker or node dies is retried by Ray on another node. Then, per recipe, as
`builder/build.py` does: digests checked against the lock (`--locked`, `--frozen`), the
lock written, the outputs pulled from the remote (checked against the digests the
tasks reported) and placed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergepkg.builder.build import SPOT_CHECK_BYTES, BuildReport, BuildWarnings
from mergepkg.builder.outputs import check_replaceable, output_lock, place_outputs
from mergepkg.builder.substitute import Remotes
from mergepkg.cluster.connect import check_fits, connect, start_board, submit, submit_split, task_failure
from mergepkg.cluster.jobs import Engine, StepDone
from mergepkg.cluster.plan import Graph, Planned, Split, make_graph, make_jobs
from mergepkg.cluster.progress import Tally
from mergepkg.engine.progress import NullReporter, Reporter
from mergepkg.errors import BuildError, LockError
from mergepkg.lockfile import Lock, lock_path, read_lock, write_lock
from mergepkg.pitfalls.params import recipe_pitfalls
from mergepkg.recipe.model import Recipe
from mergepkg.remote.adopt import check_adoptable
from mergepkg.remote.config import configured
from mergepkg.remote.store import Remote
from mergepkg.remote.sync import open_remote, push_artifact, substitute
from mergepkg.resolve.resolution import Mode, resolve
from mergepkg.store.evals import EvalCache
from mergepkg.store.session import Session

CLUSTER_REMOTE = "cluster"  # the remote's name in messages, where it has none configured


@dataclass
class ClusterBuild:
    reports: list[BuildReport]  # one per recipe, in the order given
    tasks: dict[str, StepDone] = field(default_factory=dict)  # key -> the answer of the task that built it


def build_on_cluster(
    recipes: Sequence[Recipe],
    session: Session,
    *,
    address: str,
    remote: str,
    outs: Sequence[Path | None] | None = None,
    seed: int | None = None,
    mode: Mode = "update",
    reporter: Reporter | None = None,
    verify_store: bool = False,
    deny_warnings: bool = False,
    split: Split | None = None,
    remote_name: str | None = None,
) -> ClusterBuild:
    """Build `recipes` on the Ray cluster at `address` through the remote at URL `remote`,
    one DAG for all of them (a step they share is built once); `outs`: each recipe's
    output folder (None: not placed); `split`: large steps split by tensors over workers;
    `remote_name`: the remote's name in messages (default: the configured remote with
    that URL, else "cluster")."""
    reporter = reporter or NullReporter()
    outs = list(outs) if outs is not None else [None] * len(recipes)
    target = open_remote(remote, skip_instance_cache=True)
    shown = remote_name or _name_of(session, target.url)  # the remote's name in messages
    with session.store.in_use():
        session.store.clean_tmp()
        planned = [_plan(r, o, session, seed, mode, reporter, deny_warnings) for r, o in zip(recipes, outs)]
        warn = planned[0].warnings.warning if planned else reporter.warning
        remotes = Remotes(session.settings, [(shown, target.url)], warn)
        sample = None if verify_store else SPOT_CHECK_BYTES if mode != "update" else 0
        graph = make_graph(planned, session, remotes, sample)
        make_jobs(graph, target.url, Engine.of(session.settings), deny_warnings, split, settings=session.settings)
        if graph.parts:
            check_adoptable(target)  # split steps are assembled on the remote: not on the Hub
        for p in planned:
            for name in p.res.plan.order:
                if p.res.keys[name] in graph.local:
                    p.warnings.step_reused(name, p.res.keys[name])
        for art in graph.push:
            push_artifact(target, art, hashes=session.hashes)
        tasks = _run(graph, reporter, address) if graph.build else {}
        reports = [_finish(p, graph, tasks, session, target, shown, mode) for p in planned]
    return ClusterBuild(reports, tasks)


def _name_of(session: Session, url: str) -> str:
    """The name of the configured remote at `url` (the first), for messages."""
    return next((r.name for r in configured(session.settings) if r.url == url), CLUSTER_REMOTE)


def _plan(
    recipe: Recipe, out: Path | None, session: Session, seed: int | None, mode: Mode, reporter: Reporter, deny: bool
) -> Planned:
    if out is not None:
        out = out.resolve()
        check_replaceable(out, store=session.store, recipe=recipe)
    warnings = BuildWarnings(reporter, deny)
    old_lock = read_lock(lock_path(recipe))
    res = resolve(recipe, session, lock=old_lock, mode=mode, seed=seed, defer=True)
    warnings.recipe = res.recipe
    warnings.found(recipe_pitfalls(res.recipe, res.plan.order))
    locked = {
        n: s.digest
        for n, s in (old_lock.steps.items() if old_lock else ())
        if s.digest is not None and res.keys.get(n) == s.key
    }
    return Planned(recipe, res, warnings, old_lock, locked, out)


def _run(graph: Graph, reporter: Reporter, address: str) -> dict[str, StepDone]:
    """Submit every task, follow them, and return their answers by key."""
    names = {k: graph.owner[k][1] for k in graph.build}
    with connect(address) as ray:
        check_fits(ray, graph.sizes, names)
        board = start_board(ray)
        refs: dict[str, object] = {}
        for key in graph.build:
            upstream = [refs[i] for i in graph.inputs(key) if i in refs]
            job, size = graph.jobs[key], graph.sizes[key]
            if key in graph.parts:
                refs[key] = submit_split(ray, job, graph.parts[key], size, board, upstream)
            else:
                refs[key] = submit(ray, job, size, board, upstream)
        tensors = sum(t for t, _ in graph.totals.values())
        tally = Tally(reporter, names, tensors, sum(b for _, b in graph.totals.values()), set(graph.totals))
        pending = {ref: key for key, ref in refs.items()}
        done: dict[str, StepDone] = {}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.2)
                tally.take(_drain(ray, board))
                answers = [_answer(ray, ref, names[pending.pop(ref)]) for ref in ready]
                for answer in sorted(answers, key=lambda a: a.error is None):  # errors first
                    if answer.error is not None:
                        _tell(graph.owner[answer.key][0], answer)
                        raise answer.error
                    done[answer.key] = answer
                    tally.built(answer.key, answer.node)
            tally.take(_drain(ray, board))
        finally:
            for ref in pending:
                ray.cancel(ref)
            tally.close()
            ray.kill(board)
    return done


def _drain(ray: Any, board: Any) -> list:
    """The board's new events; none once the board is gone (its node lost with the driver's
    own: progress is told, never needed, so the build goes on without it)."""
    try:
        return ray.get(board.drain.remote())
    except ray.exceptions.RayActorError:
        return []


def _tell(p: Planned, answer: StepDone) -> None:
    """A step's warnings, as a local build tells them: those of a step that failed before
    its error (a denied one among them), already denied on the worker."""
    for message in answer.warnings:
        p.warnings.warning(message)
    p.warnings.found(answer.pitfalls, hold=True)


def _answer(ray: Any, ref: Any, name: str) -> StepDone:
    """A task's answer; a task Ray gave up on (its retries spent) as a BuildError, in one line."""
    try:
        return ray.get(ref)
    except Exception as e:  # Ray's own errors: a worker or node lost after every retry, an exception raised
        raise BuildError(
            f"step {name!r} failed on the cluster: {task_failure(e)}",
            hint="see the cluster's logs (`ray logs`); the steps finished are on the remote, "
            "so building again resumes from them",
        ) from None


def _finish(
    p: Planned,
    graph: Graph,
    tasks: dict[str, StepDone],
    session: Session,
    target: Remote,
    remote_name: str,
    mode: Mode,
) -> BuildReport:
    """One recipe's lock and outputs, as a local build leaves them. `pulled` in the report:
    the outputs taken from the remote as they were there (not built by this build's tasks),
    as a local build reports what it substituted; a step the cluster read from the remote
    was pulled by its node, not here."""
    res, store = p.res, session.store
    digests: dict[str, str | None] = {n: d for n, d in p.locked.items() if n in res.keys}
    built, reused, pulled = [], [], {}
    for name in res.plan.order:
        key = res.keys[name]
        if key in graph.local:
            digests[name] = graph.local[key].digest
            reused.append(name)
        elif key in tasks:
            answer = tasks[key]
            digests[name] = answer.digest
            built.append(name)
            _tell(p, answer)
        elif key in graph.offers:
            digests[name] = graph.offers[key].digest
    if mode != "update" and p.old_lock is not None:
        _check_digests(digests, p.old_lock, lock_path(p.recipe))
    lock = res.lock(digests)
    if mode == "update" and lock != p.old_lock:
        write_lock(lock_path(p.recipe), lock)
    store.add_root(lock_path(p.recipe))
    artifacts = {res.keys[n]: graph.local[res.keys[n]] for n in reused}
    arts = {}
    for name in res.recipe.outputs:
        key = res.keys[name]
        if key not in artifacts:
            p.warnings.pull_started(name, remote_name, tasks[key].size if key in tasks else graph.offers[key].size)
            artifacts[key] = substitute(target, store, key, expected_digest=digests[name])
            p.warnings.step_pulled(name, key, remote_name)
            if key not in tasks:
                pulled[name] = remote_name
        arts[name] = artifacts[key]
    outputs = {}
    if p.out is not None:
        with output_lock(p.out):
            outputs = place_outputs(
                res,
                arts,
                p.out,
                EvalCache(session.settings.home).rows,
                max_shard_bytes=session.settings.max_shard_bytes,
                lock=lock,
            )
    by_name = {n: artifacts[res.keys[n]] for n in res.plan.order if res.keys[n] in artifacts}
    report = BuildReport(res, by_name, built, reused, outputs, lock, p.warnings.messages, p.warnings.pitfalls)
    report.pulled = pulled
    return report


def _check_digests(digests: dict[str, str | None], lock: Lock, lock_file: Path) -> None:
    for name, digest in digests.items():
        locked = lock.steps[name].digest if name in lock.steps else None
        if locked is not None and digest is not None and locked != digest:
            raise LockError(
                f"step {name!r} built to {digest[:19]}, but the lock records {locked[:19]}",
                file=str(lock_file),
                hint="the build is not reproducing the locked bytes; "
                "`mergepkg verify --rebuild` shows which steps differ",
            )
