"""Progress across the cluster: workers tell a board (a Ray actor on the driver's node),
the driver drains it and tells its `Reporter`.

A worker's `BoardReporter` is the engine's reporter on the node: it sends a step's start
(with the node), its tensors (batched, a few times a second) and its end to the board,
and keeps the warnings and pitfalls for the task's answer. On the driver, `Tally` turns
the drained events into the Reporter's calls: one bar for the whole cluster, in bytes
and tensors over every step built there (a step the driver could not lay out added to
its totals when its node starts it), and (for a reporter that has them) a line per step
placed on a node and per step built.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Set
from typing import Any, Protocol

from mergepkg.engine.progress import Reporter
from mergepkg.pitfalls.pitfall import Pitfall

FLUSH_SECONDS = 0.25  # a worker sends its tensors' progress at most this often

Event = tuple  # ("placed", key, node, tensors, nbytes) | ("tensors", key, count, nbytes) | ("built", key, node)


class Board:
    """Events from every worker, kept until the driver drains them (made a Ray actor)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def tell(self, events: list[Event]) -> None:
        self.events.extend(events)

    def drain(self) -> list[Event]:
        events, self.events = self.events, []
        return events


class BoardReporter:
    """The engine's reporter on a worker: progress to the board, warnings kept."""

    def __init__(self, board: Any, key: str, node: str):
        self.board, self.key, self.node = board, key, node
        self.warnings: list[str] = []
        self.pitfalls: list[Pitfall] = []
        self.count = self.nbytes = 0
        self.sent = time.monotonic()

    def send(self, *events: Event) -> None:
        if self.board is not None:
            self.board.tell.remote(list(events))  # fire and forget: progress never fails a step

    def flush(self) -> None:
        if self.count:
            self.send(("tensors", self.key, self.count, self.nbytes))
            self.count = self.nbytes = 0
        self.sent = time.monotonic()

    def settle(self) -> None:
        """Every event sent so far is on the board when this returns (an actor runs one
        caller's calls in order), so the driver, which reads the task's answer after,
        has seen them all. Progress never fails a step: a board gone is let be."""
        self.flush()
        if self.board is not None:
            import ray

            with contextlib.suppress(ray.exceptions.RayError):
                ray.get(self.board.tell.remote([]))

    def step_reused(self, name: str, key: str) -> None:
        pass

    def step_started(self, name: str, tensors: int, nbytes: int) -> None:
        self.send(("placed", self.key, self.node, tensors, nbytes))

    def tensor_done(self, nbytes: int) -> None:
        self.count += 1
        self.nbytes += nbytes
        if time.monotonic() - self.sent >= FLUSH_SECONDS:
            self.flush()

    def step_finished(self, name: str) -> None:
        self.flush()

    def warning(self, message: str) -> None:
        self.warnings.append(message)

    def pitfall(self, pitfall: Pitfall) -> None:
        self.pitfalls.append(pitfall)

    def pull_started(self, name: str, remote: str, nbytes: int) -> None:
        pass

    def pull_progress(self, done: int) -> None:
        pass

    def step_pulled(self, name: str, key: str, remote: str) -> None:
        pass


class ClusterReporter(Reporter, Protocol):
    """A reporter that also shows where each step runs (the CLI's does; optional)."""

    def step_placed(self, name: str, key: str, node: str) -> None: ...
    def step_built(self, name: str, key: str, node: str) -> None: ...
    # the cluster's bar grows: a step the driver could not lay out was laid out on its node
    def total_grown(self, tensors: int, nbytes: int) -> None: ...


class Tally:
    """The driver's side: the cluster's bar, fed from drained events. Its totals are
    those of the steps the driver laid out (`sized`); each other step adds its own once
    its node has laid it out (its first start: a retry adds nothing)."""

    def __init__(
        self, reporter: Reporter, names: Mapping[str, str], tensors: int, nbytes: int, sized: Set[str] | None = None
    ):
        self.reporter, self.names = reporter, names  # key -> a step name for messages
        self.sized = set(names if sized is None else sized)  # keys counted in the totals
        self.open = bool(names)
        if self.open:
            nodes = f"{len(names)} step{'s' if len(names) != 1 else ''} on the cluster"
            reporter.step_started(nodes, tensors, nbytes)

    def take(self, events: list[Event]) -> None:
        for event in events:
            kind, key = event[0], event[1]
            if kind == "tensors":
                count, nbytes = event[2], event[3]
                for i in range(count):  # the Reporter counts tensors one call each
                    self.reporter.tensor_done(nbytes if i == 0 else 0)
            elif kind == "placed":
                if key not in self.sized and len(event) >= 5:
                    self.sized.add(key)
                    grown = getattr(self.reporter, "total_grown", None)
                    if grown is not None:
                        grown(event[3], event[4])
                told = getattr(self.reporter, "step_placed", None)
                if told is not None:
                    told(self.names.get(key, key[:12]), key, event[2])

    def built(self, key: str, node: str) -> None:
        told = getattr(self.reporter, "step_built", None)
        if told is not None:
            told(self.names.get(key, key[:12]), key, node)

    def close(self) -> None:
        if self.open:
            self.reporter.step_finished("cluster")
            self.open = False
