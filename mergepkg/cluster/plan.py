"""One DAG over every recipe of a cluster build, by key: what is stored here, what the
remote holds, what the cluster builds, and each task's job and resources.

A step two recipes share has one key, so one node of this DAG and at most one task.
What each recipe's outputs need is walked back from them: a step stored here or on the
remote ends the walk (its inputs are not needed for it), every other step is built on
the cluster. A step stored only here that a task reads is pushed to the remote first.
The driver lays out what it can (the sources on this machine, the steps stored here)
to size tasks and to find a layout's error or warning before any task starts. A source
the lock pins is not fetched here (resolve's `defer`), but where this machine's Hugging
Face cache holds its files at the locked commit, their config and headers are read
there (no tensor data). A step whose inputs it cannot see (a source not in this
machine's cache, a local folder gone, a step only on the remote) is laid out on its
node alone: its task asks for `DEFAULT_MEMORY`, the node checks its MP2xx warnings, and
it is not split (the driver warns).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mergepkg.builder.build import BuildWarnings
from mergepkg.builder.substitute import Offer, Remotes
from mergepkg.cluster.jobs import Engine, Resources, SourceInput, StepInput, StepJob, resources
from mergepkg.engine.split import Part, plan_parts
from mergepkg.layout.lora import read_adapter_info
from mergepkg.layout.steps import read_model_info, step_layout
from mergepkg.layout.types import ModelInfo
from mergepkg.lockfile import Lock, Pin
from mergepkg.pitfalls.layouts import layout_pitfalls
from mergepkg.recipe.model import Recipe, Source
from mergepkg.resolve.resolution import Resolution
from mergepkg.settings import Settings
from mergepkg.store.local import Artifact
from mergepkg.store.session import Session


@dataclass(frozen=True)
class Split:
    """`--split N` over steps whose output is at least `min_bytes` (`--split-bytes`)."""

    count: int
    min_bytes: int = 0


@dataclass
class Planned:
    """One recipe of the build, resolved."""

    recipe: Recipe  # as given (its lock sits beside it)
    res: Resolution
    warnings: BuildWarnings
    old_lock: Lock | None
    locked: dict[str, str]  # step -> the old lock's digest, where its key still holds
    out: Path | None


@dataclass
class Graph:
    """The build's steps by key, over every recipe."""

    owner: dict[str, tuple[Planned, str]] = field(default_factory=dict)  # key -> a recipe and its step's name
    local: dict[str, Artifact] = field(default_factory=dict)  # stored here, checked
    offers: dict[str, Offer] = field(default_factory=dict)  # on the remote, admitted
    present: set[str] = field(default_factory=set)  # on the remote, refused: built anyway
    build: list[str] = field(default_factory=list)  # keys the cluster builds, dependencies first
    jobs: dict[str, StepJob] = field(default_factory=dict)
    sizes: dict[str, Resources] = field(default_factory=dict)
    totals: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (tensors, bytes) where laid out
    push: list[Artifact] = field(default_factory=list)  # stored here only, read by a task
    parts: dict[str, list[Part]] = field(default_factory=dict)  # key -> its parts, for a step split by tensors

    def inputs(self, key: str) -> list[str]:
        """The keys of the steps a step reads."""
        planned, name = self.owner[key]
        res = planned.res
        return [res.keys[m] for m in res.plan.graph.predecessors(name) if m in res.recipe.steps]


def make_graph(planned: list[Planned], session: Session, remotes: Remotes, sample: int | None) -> Graph:
    """What is stored, what the remote offers, and what the cluster must build."""
    g = Graph()
    store = session.store
    for p in planned:
        for name in p.res.plan.order:
            key = p.res.keys[name]
            if key in g.owner:
                continue
            g.owner[key] = (p, name)
            with store.lock(key):
                art = store.get(key)
                if art is not None and art.intact() and (sample == 0 or art.holds(sample)):
                    g.local[key] = art
                elif art is not None:
                    store.discard(key)  # edited, truncated or flipped: never reused silently
    wanted = {k: p.locked.get(n) for k, (p, n) in g.owner.items() if k not in g.local}
    if wanted:
        g.offers = remotes.look_up(wanted)
        g.present = {k for k in remotes.refused if k in wanted}
    needed: set[str] = set()
    todo = [p.res.keys[n] for p in planned for n in p.res.recipe.outputs]
    while todo:
        key = todo.pop()
        if key in needed:
            continue
        needed.add(key)
        if key not in g.local and key not in g.offers:
            todo += g.inputs(key)
    order = [k for k in g.owner if k in needed]  # each recipe's plan order, recipes in turn
    g.build = _topological([k for k in order if k not in g.local and k not in g.offers], g)
    reads = {i for k in g.build for i in g.inputs(k)}
    g.push = [g.local[k] for k in order if k in reads and k in g.local and k not in g.offers]
    return g


def _topological(keys: list[str], g: Graph) -> list[str]:
    """`keys` with every step after the steps it reads (across recipes)."""
    out: list[str] = []
    placed: set[str] = set()
    wanted = set(keys)

    def visit(key: str) -> None:
        if key in placed:
            return
        placed.add(key)
        for i in g.inputs(key):
            if i in wanted:
                visit(i)
        out.append(key)

    for k in keys:
        visit(k)
    return out


def make_jobs(
    g: Graph,
    remote_url: str,
    engine: Engine,
    deny_warnings: bool,
    split: Split | None = None,
    *,
    settings: Settings | None = None,
) -> None:
    """Every task's job and resources; layouts (on this machine, where it can) first: an
    error or a denied warning in any of them is raised before any task starts. With
    `split`, a step whose output is at least `split.min_bytes` (its layout known here) is
    planned in `split.count` parts (`engine/split.py`); a step whose layout is not known
    here is not split, and the recipe's reporter is told so. `settings`: where this
    machine's Hugging Face cache is (default: the environment's)."""
    settings = settings or Settings()
    sources: dict[int, dict[str, ModelInfo]] = {}  # per recipe: its sources readable here
    laid: dict[str, ModelInfo] = {k: read_model_info(a.folder) for k, a in g.local.items()}  # by key
    for key in g.build:
        p, name = g.owner[key]
        res = p.res
        known = dict(sources.setdefault(id(p), _sources(p, settings)))
        known.update({n: laid[res.keys[n]] for n in res.plan.order if res.keys[n] in laid})
        models = list(res.plan.graph.predecessors(name))
        layout = None
        if all(m in known for m in models):
            layout = step_layout(res.recipe, res.recipe.steps[name], known)
            known[name] = laid[key] = layout.info
            p.warnings.found(layout_pitfalls(layout, known))  # MP2xx: with --deny-warnings, raised now
            g.totals[key] = (len(layout.tensors), layout.bytes_in)
            if split is not None and split.count > 1 and layout.bytes_out >= split.min_bytes:
                parts = plan_parts(
                    layout, split.count, key=key, seed=res.seeds[name], max_shard_bytes=engine.max_shard_bytes
                )
                if len(parts) > 1:  # a step of one shard is not split
                    g.parts[key] = parts
        elif split is not None and split.count > 1:
            unseen = ", ".join(repr(m) for m in models if m not in known)
            p.warnings.warning(
                f"--split not applied to step {name!r}: its layout is not known on the driver "
                f"(it cannot read {unseen} here); built whole on one node"
            )
        g.sizes[key] = resources(layout, known, engine)
        items: list[SourceInput | StepInput] = []
        for m in models:
            if m in res.recipe.steps:
                k = res.keys[m]
                digest = g.local[k].digest if k in g.local else g.offers[k].digest if k in g.offers else None
                items.append(StepInput(m, k, digest))
            else:
                pin = res.sources[m].locked.pin
                items.append(SourceInput(m, res.recipe.sources[m], pin, m in res.recipe.adapters))
        g.jobs[key] = StepJob(
            name,
            key,
            res.entries[name],
            res.seeds[name],
            res.recipe,
            tuple(items),
            remote_url,
            engine,
            deny_warnings,
            key in g.present,
            laid_out=layout is not None,
        )


def _sources(p: Planned, settings: Settings) -> dict[str, ModelInfo]:
    """What this machine knows of a recipe's sources: those fetched here, and those the
    lock pins whose files this machine's Hugging Face cache holds at the locked commit
    (config and headers read there, nothing fetched)."""
    res = p.res
    out: dict[str, ModelInfo] = {}
    for name, state in res.sources.items():
        folder = state.folder
        if folder is None and state.missing == 0:
            folder = _cached(res.recipe.sources[name], state.locked.pin, settings)
        if folder is not None:
            read = read_adapter_info if name in res.recipe.adapters else read_model_info
            out[name] = read(folder)
    return out


def _cached(source: Source, pin: Pin, settings: Settings) -> Path | None:
    """The snapshot folder of a hub source at `pin`'s commit in this machine's Hugging
    Face cache, where it holds every pinned file; None otherwise (or for a folder source)."""
    if source.hf is None or not pin.files:
        return None
    from huggingface_hub import try_to_load_from_cache

    folders = set()
    for f in pin.files:
        found = try_to_load_from_cache(source.hf, f.name, cache_dir=settings.hf_cache, revision=pin.commit)
        if not isinstance(found, str):
            return None
        folders.add(Path(found).parents[len(Path(f.name).parts) - 1])
    return folders.pop() if len(folders) == 1 else None
