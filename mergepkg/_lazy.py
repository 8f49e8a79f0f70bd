"""Deferred imports of heavy libraries.

`from mergepkg._lazy import torch` gives a stand-in module that imports torch on first
attribute access. Planning, locking and no-op rebuilds then never pay for torch.

The stand-in is not importlib's LazyLoader: on Python 3.12.3 (Ubuntu 24.04's) a module
loaded through it loses the submodules its own import sets on it (`torch.cuda` raised
AttributeError), and it is not safe when several threads touch the module first. The real
import here is an ordinary one, under the import lock, and the stand-in is never put in
sys.modules: code that imports the module itself gets the real one.
"""

import importlib
import importlib.util
import signal
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # what stops a command (the CLI raises on each)


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C (or a SIGTERM, a SIGHUP: the CLI raises on them too) held back until the
    block ends, on the main thread, where Python takes it: an import of torch, numpy or
    numba interrupted part-way leaves them half made, and a later import then fails
    ("cannot load module more than once") or the process aborts in C++. The interrupt is
    raised as soon as the import is done."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are taken on the main thread only: nothing to hold here
        return
    # only handlers Python code set (the default SIGTERM, or SIG_IGN, is no exception to hold)
    held = {s: h for s in STOPS if callable(h := signal.getsignal(s))}
    caught: list[int] = []
    for s in held:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, previous in held.items():
            signal.signal(s, previous)
        if caught:
            first = signal.Signals(caught[0])
            held[first](first, None)  # Python's default SIGINT handler raises KeyboardInterrupt


class _Deferred(types.ModuleType):
    """Module `__name__`, imported by the first attribute looked up on this stand-in."""

    def __getattr__(self, attr: str) -> Any:  # only for attributes not yet copied here
        with uninterrupted():
            module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)  # later lookups are plain dict hits
        return getattr(module, attr)  # also what the module makes on demand (its own __getattr__)


def lazy_import(name: str) -> Any:  # Any: a module whose attributes mypy cannot know
    """Module `name`, imported when first used; ImportError now if it is not installed."""
    if name in sys.modules:  # already imported: nothing to defer
        return sys.modules[name]
    if importlib.util.find_spec(name) is None:
        raise ImportError(f"No module named {name!r}", name=name)
    return _Deferred(name)


torch = lazy_import("torch")
