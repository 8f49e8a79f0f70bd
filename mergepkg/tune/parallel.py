"""`tune --ray`: a generation of trials at once on a Ray cluster, each built and scored on one node.

The search (`search.py`) asks the sampler for a whole generation (CMA-ES's population;
for `random`, as many points as the cluster has CPUs) and hands it to `Cluster.run`.
Here, on the driver, each trial's recipe is keyed (no tensors) and each step it needs is
looked up: on the remote (its record's digest), or in this machine's store (pushed to
the remote first). What nobody holds is built on a node; a step that several trials of
the generation would build (an upstream step, the first time) is built once first by a
task of its own. Then one task per trial (`cluster/calls.py`) runs `run_on_node`:

- the node's settings are its own (`MERGEPKG_HOME`, Hugging Face cache), with the
  driver's engine settings (`--device`, `--threads`, ...);
- the steps the driver found held are pulled from the remote into the node's store,
  checked against their digests; the trial's step (and anything else missing) is
  built there (`build(targets=...)`, the recipe's lock untouched) and pushed;
- it is scored on the validation tasks, read at their paths (every node must see the
  tune file's task files, as it sees the recipe's local sources), with the node's
  evaluation cache keyed by (model key, task) as here;
- it answers with a small record: key, digest, scores, objective, seconds, node.

Answers are read in the order asked, so the log and the sampler see the trials exactly
as a one-machine search does. A node lost mid-trial is retried by Ray; a recipe's error
comes back in the answer and fails the search, placed in the recipe, as it does here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from mergepkg.builder.build import build
from mergepkg.builder.share import choose_remote
from mergepkg.cluster.calls import Call, answers, cluster_cpus, submit_calls
from mergepkg.cluster.connect import connect
from mergepkg.cluster.jobs import Engine
from mergepkg.cluster.worker import node_id
from mergepkg.errors import MergepkgError
from mergepkg.lockfile import lock_path, read_lock
from mergepkg.recipe.model import Recipe
from mergepkg.remote.sync import open_remote, push_artifact, substitute
from mergepkg.resolve.resolution import Resolution, resolve
from mergepkg.store.session import Session
from mergepkg.tune.log import Trial
from mergepkg.tune.sampler import Sampler
from mergepkg.tune.search import Asked, tasks, validation_scores
from mergepkg.tune.spec import TaskEntry, TuneSpec
from mergepkg.tune.substitute import Base, trial_recipe


@dataclass(frozen=True)
class Objective:
    """How a node scores a trial: the validation tasks (at their paths) and how they combine."""

    combine: str
    validation: tuple[TaskEntry, ...]


@dataclass(frozen=True)
class TrialJob:
    number: int  # the trial's number (-1: a task building shared steps only)
    recipe: Recipe  # the trial's recipe (its values substituted)
    targets: tuple[str, ...]  # the step scored, or the shared steps to build
    pulls: dict[str, str]  # key -> digest: put into the node's store from the remote first
    remote: str  # the remote's URL
    engine: Engine
    objective: Objective | None  # None: build and push only


@dataclass
class TrialDone:
    number: int
    key: str = ""
    digest: str | None = None
    scores: dict = field(default_factory=dict)
    objective: float = 0.0
    build_s: float = 0.0  # pulls, build and pushes
    eval_s: float = 0.0
    stored: bool = False  # the scored step was on the remote or the node's store: not built
    node: str = ""
    pushed: dict[str, str] = field(default_factory=dict)  # key -> digest of what this task built and pushed
    error: MergepkgError | None = None


def run_on_node(job: TrialJob) -> TrialDone:
    """One trial on this node (see the module's docstring); a recipe's error is answered."""
    node = node_id()
    session = Session(job.engine.settings())
    try:
        remote = open_remote(job.remote, skip_instance_cache=True)
        started = time.monotonic()
        with session.store.in_use():
            for key, digest in job.pulls.items():
                substitute(remote, session.store, key, expected_digest=digest)
            report = build(job.recipe, session, targets=job.targets, remote="never")
            pushed = {}
            for name in report.built:
                art = report.artifacts[name]
                push_artifact(remote, art, hashes=session.hashes)
                pushed[art.key] = art.digest
            built_at = time.monotonic()
            if job.objective is None:
                return TrialDone(job.number, node=node, pushed=pushed, build_s=round(built_at - started, 3))
            art = report.artifacts[job.targets[0]]
            validation = tasks(job.objective.validation, session)
            scores, objective = validation_scores(job.objective.combine, art.folder, art.key, validation, session)
    except MergepkgError as e:
        return TrialDone(job.number, node=node, error=e)
    return TrialDone(
        job.number,
        art.key,
        art.digest,
        scores,
        objective,
        round(built_at - started, 3),
        round(time.monotonic() - built_at, 3),
        stored=job.targets[0] not in report.built,
        node=node,
        pushed=pushed,
    )


class Cluster:
    """The search's runner on a Ray cluster (`search(runner=...)`), through the remote at `url`."""

    def __init__(self, spec: TuneSpec, session: Session, ray: object, url: str):
        self.spec, self.session, self.ray, self.url = spec, session, ray, url
        self.remote = open_remote(url, skip_instance_cache=True)
        self.engine = Engine.of(session.settings)
        self.objective = Objective(spec.combine, spec.validation)
        self.digests: dict[str, str] = {}  # keys known on the remote -> their digests
        self.listed: set[str] = set()

    def batch(self, sampler: Sampler) -> int:
        return sampler.generation if sampler.kind == "cmaes" else cluster_cpus(self.ray)

    def run(self, base: Base, asked: list[Asked]) -> Iterator[Trial]:
        recipes = [trial_recipe(base, a.values) for a in asked]
        resolved = [self._resolve(r) for r in recipes]
        self.listed = set(self.remote.keys())
        plans = [self._needs(res) for res in resolved]
        builders: dict[str, int] = {}  # a key nobody holds -> the first trial that would build it
        shared: dict[int, list[str]] = {}  # trial index -> names of the steps it builds for others too
        for i, (_, missing) in enumerate(plans):
            for key, name in missing.items():
                if key in builders and name not in shared.setdefault(builders[key], []):
                    shared[builders[key]].append(name)
                builders.setdefault(key, i)
        if any(shared.values()):  # built once, before the trials that read them
            first = [(i, names) for i, names in shared.items() if names]
            calls = [
                Call((self._job(-1, recipes[i], tuple(n), {}, None),), f"mergepkg tune shared {n}") for i, n in first
            ]
            for done in answers(self.ray, calls, self._submit(calls)):
                self._check(done)
                self.digests.update(done.pushed)
            plans = [self._needs(res) for res in resolved]
        calls = [
            Call(
                (self._job(a.number, r, (self.spec.evaluate,), pulls, self.objective),),
                f"mergepkg tune trial {a.number}",
            )
            for a, r, (pulls, _) in zip(asked, recipes, plans)
        ]
        for a, done in zip(asked, answers(self.ray, calls, self._submit(calls))):
            self._check(done)
            self.digests.update(done.pushed)
            yield Trial(
                number=a.number,
                values=a.values,
                unit=a.unit,
                key=done.key,
                scores=done.scores,
                objective=done.objective,
                build_s=done.build_s,
                eval_s=done.eval_s,
                stored=done.stored,
                finished=time.time(),
                digest=done.digest,
                node=done.node,
            )

    def fetch(self, trial: Trial) -> None:
        """Put the trial's step into this machine's store from the remote (checked against
        the digest its node reported): `finish` then builds `best.toml` without building it."""
        substitute(self.remote, self.session.store, trial.key, expected_digest=trial.digest)

    def _resolve(self, recipe: Recipe) -> Resolution:
        targets = (self.spec.evaluate,)
        return resolve(recipe, self.session, lock=read_lock(lock_path(recipe)), targets=targets, defer=True)

    def _needs(self, res: Resolution) -> tuple[dict[str, str], dict[str, str]]:
        """What a trial's node pulls (key -> digest: the held steps nearest the scored one)
        and what it builds (key -> step name)."""
        pulls: dict[str, str] = {}
        missing: dict[str, str] = {}
        todo = [self.spec.evaluate]
        while todo:
            name = todo.pop()
            key = res.keys[name]
            if key in pulls or key in missing:
                continue
            digest = self._held(key)
            if digest is not None:
                pulls[key] = digest
                continue
            missing[key] = name
            todo += [m for m in res.recipe.steps[name].models if m in res.recipe.steps]
        return pulls, missing

    def _held(self, key: str) -> str | None:
        """The digest of `key` on the remote; a step only this store holds is pushed first."""
        if key in self.digests:
            return self.digests[key]
        record = self.remote.record(key) if key in self.listed else None
        if record is not None:
            self.digests[key] = record.digest
            return record.digest
        here = self.session.store.get(key)
        if here is not None and here.intact():
            push_artifact(self.remote, here, hashes=self.session.hashes)
            self.digests[key] = here.digest
            return here.digest
        return None

    def _job(
        self, number: int, recipe: Recipe, targets: tuple[str, ...], pulls: dict, objective: Objective | None
    ) -> TrialJob:
        return TrialJob(number, recipe, targets, pulls, self.url, self.engine, objective)

    def _submit(self, calls: list[Call]) -> list:
        gpus = 1.0 if self.engine.device.startswith("cuda") else 0.0
        return submit_calls(self.ray, run_on_node, calls, num_cpus=float(self.engine.threads or 1), num_gpus=gpus)

    def _check(self, done: TrialDone) -> None:
        if done.error is not None:
            raise done.error


@contextmanager
def on_cluster(spec: TuneSpec, session: Session, address: str, remote: str | None) -> Iterator[Cluster]:
    """The runner for the cluster at `address`, through the configured remote `remote`
    (default: the only one configured); Ray connected for the block."""
    url = choose_remote(session.settings, remote).url
    with connect(address) as ray:
        yield Cluster(spec, session, ray, url)
