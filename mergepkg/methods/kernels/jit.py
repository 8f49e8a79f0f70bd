"""numba's on-disk cache of compiled kernels, kept true to every module they compile from.

numba stamps a cached function with a hash of its own source file only (and its
bytecode), yet a kernel's machine code also holds what it inlines or freezes from other
modules: spherical.py's loops inline compiled.py's `_read` and `_store`, compiled.py's
freeze reduce.py's BLOCK. Edited or upgraded, such a module left every kernel that uses
it loading its old code from the cache (pip keeps numba's files in `__pycache__` across
an upgrade), with other bits, silently.

`njit` compiles as numba.njit(cache=True) does, into the same places, but stamps each
entry with a digest of every module of the function's package (here, kernels/): a
change to any of them recompiles every kernel once. So compiled code in this package
uses only what the package defines (tests/methods/test_caching.py checks its imports).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from pathlib import Path

import numba
from numba.core import caching


@functools.cache
def digest(folder: Path) -> str:
    """sha256 over the name and bytes of each Python module in `folder`, by name."""
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


class PackageCache(caching.FunctionCache):
    """numba's per-function cache (index and data files where numba puts them), its
    entries valid while the package's `digest` is the one they were compiled under."""

    def __init__(self, py_func) -> None:
        super().__init__(py_func)
        folder = Path(inspect.getfile(py_func)).parent
        self._cache_file = caching.IndexDataCacheFile(
            cache_path=self._cache_path,
            filename_base=self._impl.filename_base,
            source_stamp=digest(folder),  # in place of the hash of the function's own file
        )


# Kernels numba found no writable folder to cache (a read-only install, no writable
# home): compiled in memory in each process that runs them, several seconds a build.
UNCACHED: list[str] = []


def njit(**options):
    """numba.njit(**options) with its compiled code cached on disk by PackageCache, or
    only in memory where numba has nowhere to write it (UNCACHED)."""

    def decorate(py_func):
        dispatcher = numba.njit(**options)(py_func)
        try:
            dispatcher._cache = PackageCache(dispatcher.py_func)  # what cache=True's enable_caching sets
        except RuntimeError as e:  # numba: "cannot cache function ...: no locator available"
            if "no locator" not in str(e):
                raise
            UNCACHED.append(py_func.__qualname__)
        return dispatcher

    return decorate
