"""Ray, imported and connected only when a cluster build starts.

`connect` joins the cluster at `address` (`auto`: the one `ray start` made on this
machine, or RAY_ADDRESS) unless this process is connected already, and leaves it on exit
only if it joined. A `HOST:PORT` address is probed first with a short TCP connect: Ray
itself retries an address nothing answers at for many minutes, printing warnings.
`submit` wraps the worker's function as a Ray task: resources from the step's layout,
retried on another node when its worker or node dies (`max_retries`), and for an
`OSError` (a remote's hiccup), never for a recipe's error (those come back in the
answer, not raised). `task_failure` says any other failure of a task in one line.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from mergepkg.cluster.jobs import Resources, StepJob
from mergepkg.cluster.parts import run_assemble, run_part
from mergepkg.cluster.progress import Board
from mergepkg.cluster.worker import run_step
from mergepkg.engine.split import Part
from mergepkg.errors import BuildError
from mergepkg.remote.errors import remote_errors

MAX_RETRIES = 3  # attempts after the first, for a worker or node lost (and a remote's hiccup: `retryable`)


def retryable() -> list[type[BaseException]]:
    """What a task raises that Ray retries on another node: a remote's hiccup, as
    `remote/errors.remote_errors` says it (Ray's `retry_exceptions` takes a list)."""
    return list(remote_errors())


RAY_HINT = "install the extra: pip install 'mergepkg[ray]'"
REACH_HINT = "start one (`ray start --head` on this machine), or give its address: --ray HOST:6379"
PROBE_SECONDS = 5.0  # a TCP connect to the cluster's address: an answer is well within it


def ray_module() -> Any:
    try:
        import ray
    except ImportError:
        raise BuildError("--ray needs Ray, which is not installed", hint=RAY_HINT) from None
    return ray


@contextmanager
def connect(address: str) -> Iterator[Any]:
    """The `ray` module, connected to the cluster at `address` for the block."""
    ray = ray_module()
    joined = False
    if not ray.is_initialized():
        probe(address)
        terminate = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=True)
        except ConnectionError as e:
            raise unreachable(address, str(e)) from None
        except ValueError as e:  # Ray's own reading of the address: `127.0.0.1` (no port), `host:abc`
            raise BuildError(
                f"not a Ray cluster's address: {address!r} ({e})",
                hint="give HOST:PORT of the head node (ray start --head prints it), or auto",
            ) from None
        finally:  # ray.init sets a SIGTERM handler (sys.exit) and never restores it: the CLI's stops as Ctrl-C
            if terminate is not None:
                with contextlib.suppress(ValueError):  # not the main thread: Ray set none there either
                    signal.signal(signal.SIGTERM, terminate)
        joined = True
    try:
        yield ray
    finally:
        if joined:
            ray.shutdown()


def probe(address: str, seconds: float = PROBE_SECONDS) -> None:
    """An error at once when nothing accepts a TCP connection at `address` (for `auto`,
    RAY_ADDRESS where set); an address without a port (or `auto` alone) is left to Ray."""
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
    found = re.fullmatch(r"(?:[a-z]+://)?\[?([^\[\]/]+?)\]?:(\d+)/?", address.strip())
    if found is None:
        return
    try:
        with socket.create_connection((found[1], int(found[2])), timeout=seconds):
            pass
    except OSError as e:
        reason = "no answer" if isinstance(e, TimeoutError) else e.strerror or type(e).__name__
        raise unreachable(address, f"{reason} at {found[1]}:{found[2]}") from None


def unreachable(address: str, reason: str) -> BuildError:
    return BuildError(f"cannot reach a Ray cluster at {address!r}: {reason}", hint=REACH_HINT)


ANSI = re.compile(r"\x1b\[[0-9;]*m")
NODE_IP = re.compile(r"\(pid=\d+, ip=([^\s)]+)\)")


def task_failure(e: BaseException) -> str:
    """A failed Ray task in one line, for an error message: what the task raised
    (`NotADirectoryError: ...`, its last line, not Ray's traceback) and the address of
    the node it ran on where Ray says it; Ray's own failures (a worker or node lost) as
    their last line. Ray's colour codes removed."""
    text = ANSI.sub("", str(e)).strip()
    cause = getattr(e, "cause", None)  # a RayTaskError's: the exception the task raised
    what = cause if isinstance(cause, BaseException) else e
    line = _last_line(ANSI.sub("", str(what))) if what is not e else _last_line(text)
    said = f"{type(what).__name__}: {line}" if line else type(what).__name__
    node = NODE_IP.search(text)
    return f"{said} (on the node at {node[1]})" if node else said


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def start_board(ray: Any) -> Any:
    """The progress board, an actor on the driver's node, never elsewhere: it must outlive
    any worker node (a lost node is retried; a lost board would lose the progress)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    strategy = NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    return ray.remote(Board).options(num_cpus=0, scheduling_strategy=strategy).remote()


def submit(ray: Any, job: StepJob, size: Resources, board: Any, upstream: Sequence[Any]) -> Any:
    """The task building `job`'s step; Ray starts it once the `upstream` tasks are done."""
    task = ray.remote(run_step).options(
        **size.options(),
        max_retries=MAX_RETRIES,
        retry_exceptions=retryable(),
        name=f"mergepkg {job.name} {job.key[:12]}",
    )
    return task.remote(job, board, *upstream)


def submit_split(
    ray: Any, job: StepJob, parts: list[Part], size: Resources, board: Any, upstream: Sequence[Any]
) -> Any:
    """A task per part (each waits for the `upstream` tasks), then the assemble task, which
    waits for the parts; its answer is the step's."""
    options = dict(**size.options(), max_retries=MAX_RETRIES, retry_exceptions=retryable())
    part_refs = [
        ray.remote(run_part)
        .options(**options, name=f"mergepkg {job.name} part {p.index + 1}/{p.count}")
        .remote(job, p, board, *upstream)
        for p in parts
    ]
    assembling = ray.remote(run_assemble).options(**options, name=f"mergepkg {job.name} assemble")
    return assembling.remote(job, parts, board, *part_refs, *upstream)


def check_fits(ray: Any, sizes: dict[str, Resources], names: dict[str, str]) -> None:
    """An error before anything runs when no node has what a step asks for (Ray would wait
    for such a node for ever)."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    for key, size in sizes.items():
        ask = {"CPU": size.num_cpus, "memory": size.memory, "GPU": size.num_gpus}
        if not any(all(node.get(r, 0) >= v for r, v in ask.items() if v) for node in nodes):
            most = max((node.get("memory", 0) for node in nodes), default=0)
            raise BuildError(
                f"step {names[key]!r} needs {size.num_cpus:g} CPUs, {size.memory / 1e9:.1f} GB of memory"
                + (f" and {size.num_gpus:g} GPUs" if size.num_gpus else "")
                + f", and no node of the cluster has that (the most memory a node offers: {most / 1e9:.1f} GB)",
                hint="add a larger node, or build under --max-memory (the engine keeps to it) and fewer --threads",
            )
