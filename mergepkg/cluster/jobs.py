"""What a cluster task carries and what it answers: small records, never tensors.

A `StepJob` names one step to build: its key, lock entry and seed, the recipe it is
written in (its text, for located errors), each input by identity (a source's request
and pin, fetched into the node's Hugging Face cache or read at its path; a step's key
and digest, pulled from the remote) and the remote's URL. A `StepDone` answers with the
key, the output digest and size, the node, and the warnings the engine told; a recipe's
error (`MergepkgError`) comes back inside it rather than raised, so Ray never retries it.
`resources` sizes a task from what the step's layout knows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

from mergepkg.engine.memory import Budget
from mergepkg.errors import MergepkgError
from mergepkg.layout.types import ModelInfo, StepLayout
from mergepkg.lockfile import Pin
from mergepkg.pitfalls.pitfall import Pitfall
from mergepkg.recipe.model import Recipe, Source
from mergepkg.settings import Settings

PROCESS_BYTES = 1 << 30  # a worker's own memory: the interpreter, torch, numba's kernels
DEFAULT_MEMORY = 4 << 30  # a step whose layout the driver cannot know (an input it cannot read: docs/cluster.md)


@dataclass(frozen=True)
class SourceInput:
    """A source a step reads: fetched (or found) on the node, checked against its pin."""

    name: str
    source: Source
    pin: Pin
    adapter: bool = False  # a LoRA adapter, read as one


@dataclass(frozen=True)
class StepInput:
    """A step a step reads: pulled from the remote, checked against its digest (the
    upstream task's, when None here)."""

    name: str
    key: str
    digest: str | None


@dataclass(frozen=True)
class Engine:
    """The driver's settings a worker builds with; the rest (its home, its Hugging Face
    cache) are the node's own, from its environment. `offline`: the driver's (`--offline`,
    or HF_HUB_OFFLINE / MERGEPKG_OFFLINE where it runs) makes every node offline too; a
    node whose own environment says offline stays so."""

    device: str = "cpu"
    threads: int | None = None
    max_shard_bytes: int = 2 * 1024**3
    max_memory: int | None = None
    offline: bool = False

    @classmethod
    def of(cls, settings: Settings) -> Engine:
        return cls(settings.device, settings.threads, settings.max_shard_bytes, settings.max_memory, settings.offline)

    def settings(self) -> Settings:
        """The node's settings (MERGEPKG_HOME, HF_HUB_CACHE, offline) with these."""
        own = Settings()
        return replace(own, **{**asdict(self), "offline": self.offline or own.offline})


@dataclass(frozen=True)
class StepJob:
    name: str  # the step's name in `recipe`
    key: str
    entry: dict
    seed: int
    recipe: Recipe
    inputs: tuple[SourceInput | StepInput, ...]
    remote: str  # the remote's URL: where inputs come from and the result goes
    engine: Engine
    deny_warnings: bool = False
    present: bool = False  # the remote held a record for the key the driver would not take
    laid_out: bool = False  # the driver laid the step out (its MP2xx told there); else the node checks them


@dataclass
class StepDone:
    key: str
    name: str
    digest: str | None = None
    size: int = 0
    node: str = ""  # the node's id, as Ray names it
    seconds: float = 0.0
    found: bool = False  # on the remote already (an earlier attempt pushed it): not built again
    warnings: list[str] = field(default_factory=list)
    pitfalls: list[Pitfall] = field(default_factory=list)
    error: MergepkgError | None = None
    skipped: bool = False  # an input failed: not attempted


@dataclass(frozen=True)
class Resources:
    """What a task asks Ray for."""

    num_cpus: float
    memory: int
    num_gpus: float = 0

    def options(self) -> dict:
        out: dict = {"num_cpus": self.num_cpus, "memory": self.memory}
        if self.num_gpus:
            out["num_gpus"] = self.num_gpus
        return out


def peak_bytes(layout: StepLayout, infos: Mapping[str, ModelInfo]) -> int:
    """The largest tensor's footprint (engine/memory.py) plus the next tensor's inputs,
    read ahead while it is merged: what building the step holds at most, besides itself."""
    budget = Budget(None)
    tensors = {m: info.tensors for m, info in infos.items()}
    if not layout.tensors:
        return 0
    foot = max(budget.footprint(layout, tensors, t) for t in layout.tensors)
    ahead = max(budget.inputs(tensors, t) for t in layout.tensors)
    return foot + ahead


def resources(layout: StepLayout | None, infos: Mapping[str, ModelInfo], settings: Engine) -> Resources:
    """A step's task: a CPU per thread (`--threads`, default 1), the memory its largest
    tensor needs (or `--max-memory`, which the engine keeps to), a GPU with `--device cuda`."""
    cpus = float(settings.threads or 1)
    if settings.max_memory is not None:
        memory = settings.max_memory
    elif layout is None:
        memory = DEFAULT_MEMORY
    else:
        memory = PROCESS_BYTES + peak_bytes(layout, infos)
    gpus = 1.0 if settings.device.startswith("cuda") else 0.0
    return Resources(cpus, memory, gpus)
