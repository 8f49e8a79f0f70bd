"""numba as the kernels use it: compiled code cached on disk, kept true to every module
it compiles from, and numba's array support loaded without its BLAS probe.

numba stamps a cached function with a hash of its own source file only (and its
bytecode), yet a kernel's machine code also holds what it inlines or freezes from other
modules: spherical.py's loops inline dtypes.py's `_read` and `_store`, compiled.py's
freeze reduce.py's BLOCK. Edited or upgraded, such a module left every kernel that uses
it loading its old code from the cache (pip keeps numba's files in `__pycache__` across
an upgrade), with other bits, silently.

`njit` compiles as numba.njit(cache=True) does, into the same places, but stamps each
entry with a digest of every module of the function's package (here, kernels/) beside
numba's own stamp: a change to any of them recompiles every kernel once. So compiled
code in this package uses only what the package defines (tests/methods/test_jit.py
checks its imports). Where numba has nowhere to write the cache, the kernels compile in
memory (UNCACHED). Every kernel module imports this one first, so the probe is refused
before any kernel loads.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.abc
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import numba
from numba.core import caching


class _Refuse(importlib.abc.MetaPathFinder):
    """An import finder that refuses one package and its modules."""

    def __init__(self, package: str):
        self.package = package

    def find_spec(self, name, path, target=None):
        if name == self.package or name.startswith(self.package + "."):
            raise ImportError(f"{name} is not loaded for mergepkg's kernels")
        return None


@contextlib.contextmanager
def _no_blas_probe() -> Iterator[None]:
    """numba's array implementations probe for a BLAS by importing scipy.linalg where
    SciPy is installed (0.3-0.5 s, on every build's first kernel: the registries load on
    first use, cache hits included). No kernel here calls a BLAS; numba only falls back
    to its own loop for np.convolve and np.correlate. Where scipy.linalg is loaded
    already, nothing changes."""
    if "scipy.linalg" in sys.modules:
        yield
        return
    refuse = _Refuse("scipy.linalg")
    sys.meta_path.insert(0, refuse)
    try:
        yield
    finally:
        sys.meta_path.remove(refuse)


with _no_blas_probe():
    import numba.np.arraymath  # (what a kernel's first load imports, probe included)


@functools.cache
def digest(folder: Path) -> str:
    """sha256 over the name and bytes of each Python module in `folder`, by name (not
    an editor's hidden `.#name.py`)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.glob("*.py") if not p.name.startswith(".")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


class PackageCache(caching.FunctionCache):
    """numba's per-function cache (index and data files where numba puts them), its
    entries valid while numba's own stamp (the function's file) and the package's `digest`
    are those they were compiled under."""

    def __init__(self, py_func) -> None:
        super().__init__(py_func)
        folder = Path(inspect.getfile(py_func)).parent
        self._cache_file = caching.IndexDataCacheFile(
            cache_path=self._cache_path,
            filename_base=self._impl.filename_base,
            source_stamp=(self._cache_file._source_stamp, digest(folder)),
        )


# Kernels numba found no writable folder to cache (a read-only install, no writable
# home): compiled in memory in each process that runs them, several seconds a build.
UNCACHED: list[str] = []


def njit(**options):
    """numba.njit(**options) with its compiled code cached on disk by PackageCache, or
    only in memory where numba has nowhere to write it (UNCACHED)."""

    def decorate(py_func):
        dispatcher = numba.njit(**options)(py_func)
        if not isinstance(dispatcher, numba.core.dispatcher.Dispatcher):  # NUMBA_DISABLE_JIT=1: the function
            return dispatcher
        try:
            dispatcher._cache = PackageCache(dispatcher.py_func)  # type: ignore[attr-defined]  # as enable_caching sets it
        except RuntimeError as e:  # numba: "cannot cache function ...: no locator available"
            if "no locator" not in str(e):
                raise
            UNCACHED.append(py_func.__qualname__)
        return dispatcher

    return decorate
