"""Calls of a function as Ray tasks: one task per call, answers read in the order of the calls.

This is the generic piece a package above `cluster/` runs its own units of work with
(`tune --ray`: a trial built and evaluated on one node, `tune/parallel.py`). The function
must be importable on every node (Ray pickles it by reference) and follow the cluster's
failure rule (`connect.py`): a recipe's error (`MergepkgError`) is returned inside the
answer, not raised, so Ray never retries it; a task whose worker or node dies, or that
raises a remote's hiccup (`connect.retryable`), is retried on another node (`MAX_RETRIES`). Any
other failure, or one that outlives its retries, cancels the calls still running and is
raised as a `BuildError` naming the call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mergepkg.cluster.connect import MAX_RETRIES, retryable, task_failure
from mergepkg.errors import BuildError


@dataclass(frozen=True)
class Call:
    """One call: the function's arguments (small, picklable records) and a task name."""

    args: tuple
    name: str


def submit_calls(
    ray: Any, fn: Callable[..., Any], calls: Sequence[Call], *, num_cpus: float = 1, num_gpus: float = 0
) -> list[Any]:
    """Start a task per call (`num_cpus` and `num_gpus` each); their object references."""
    options: dict = {"num_cpus": num_cpus, "max_retries": MAX_RETRIES, "retry_exceptions": retryable()}
    if num_gpus:
        options["num_gpus"] = num_gpus
    task = ray.remote(fn)
    return [task.options(**options, name=c.name).remote(*c.args) for c in calls]


def answers(ray: Any, calls: Sequence[Call], refs: Sequence[Any]) -> Iterator[Any]:
    """Each call's answer, in the order of `calls`, as soon as it and those before it are
    done (the others keep running meanwhile). A failed task cancels the rest and raises;
    so does closing the iterator early (the caller stopped: nothing more is wanted)."""
    done = 0
    try:
        for call, ref in zip(calls, refs):
            try:
                answer = ray.get(ref)
            except Exception as e:  # RayTaskError after its retries, a worker or node lost for good
                raise BuildError(
                    f"{call.name} failed on the cluster: {task_failure(e)}",
                    hint="a worker or node was lost more often than Ray retries, or the task raised",
                ) from None
            done += 1
            yield answer
    finally:
        cancel(ray, refs[done:])


def cancel(ray: Any, refs: Sequence[Any]) -> None:
    """Cancel tasks that may still run (finished ones are left as they are)."""
    for ref in refs:
        with contextlib.suppress(Exception):  # done already, or its node is gone: nothing to cancel
            ray.cancel(ref, force=True)


def cluster_cpus(ray: Any) -> int:
    """The CPUs the cluster offers tasks (at least 1)."""
    return max(int(ray.cluster_resources().get("CPU", 0)), 1)
