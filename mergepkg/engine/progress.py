"""How the engine reports progress: a small protocol the CLI draws with rich.

The library never prints; a command passes a `Reporter` and gets told what happens.
"""

from __future__ import annotations

from typing import Protocol

from mergepkg.pitfalls.pitfall import Pitfall


class Reporter(Protocol):
    """How the engine tells the outside world about progress (the CLI draws bars)."""

    def step_reused(self, name: str, key: str) -> None: ...
    def step_started(self, name: str, tensors: int, nbytes: int) -> None: ...
    def tensor_done(self, nbytes: int) -> None: ...
    def step_finished(self, name: str) -> None: ...
    def warning(self, message: str) -> None: ...
    def pitfall(self, pitfall: Pitfall) -> None: ...  # a coded warning (docs/warnings.md)
    # a step substituted from a remote (builder/substitute.py): started, bytes so far, done
    def pull_started(self, name: str, remote: str, nbytes: int) -> None: ...
    def pull_progress(self, done: int) -> None: ...
    def step_pulled(self, name: str, key: str, remote: str) -> None: ...


class NullReporter:
    def step_reused(self, name: str, key: str) -> None:
        pass

    def step_started(self, name: str, tensors: int, nbytes: int) -> None:
        pass

    def tensor_done(self, nbytes: int) -> None:
        pass

    def step_finished(self, name: str) -> None:
        pass

    def warning(self, message: str) -> None:
        pass

    def pitfall(self, pitfall: Pitfall) -> None:
        pass

    def pull_started(self, name: str, remote: str, nbytes: int) -> None:
        pass

    def pull_progress(self, done: int) -> None:
        pass

    def step_pulled(self, name: str, key: str, remote: str) -> None:
        pass
