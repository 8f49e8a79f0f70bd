"""kernels/caching.py: a cached kernel is compiled again when any module of its package
changes, the one it inlines from included; and the kernels compile only what their
package defines."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import pytest

from mergepkg.methods.kernels import caching, compiled, draws, dtypes, spherical, torch_sum

KERNELS = Path(compiled.__file__).parent


def _run(folder: Path) -> str:
    """A fresh interpreter (so nothing is compiled in memory) calls pkg.b.g(1)."""
    code = "from pkg.b import g; print(g(1))"
    r = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_kernel_is_compiled_again_when_a_module_it_inlines_from_changes(tmp_path):
    """g, cached, inlines f from another module: numba's own stamp (g's file) would load
    g's old code after f changed; the package's digest does not."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text('import numba\n\n@numba.njit(inline="always")\ndef f(x):\n    return x + 1\n')
    (pkg / "b.py").write_text(
        textwrap.dedent(
            """\
            from mergepkg.methods.kernels import caching
            from pkg.a import f

            @caching.njit(nogil=True)
            def g(x):
                return f(x)
            """
        )
    )
    assert _run(tmp_path) == "2"
    assert list((pkg / "__pycache__").glob("b.g-*.nbi")), "compiled code was cached beside the module"
    assert _run(tmp_path) == "2"  # loaded from the cache
    (pkg / "a.py").write_text((pkg / "a.py").read_text().replace("x + 1", "x + 2"))
    assert _run(tmp_path) == "3"


def test_the_digest_covers_every_module_of_the_package_by_name_and_bytes(tmp_path):
    (tmp_path / "a.py").write_text("A = 1\n")
    (tmp_path / "notes.txt").write_text("not a module")
    first = caching.digest.__wrapped__(tmp_path)
    (tmp_path / "notes.txt").write_text("changed")
    assert caching.digest.__wrapped__(tmp_path) == first
    (tmp_path / "b.py").write_text("")
    second = caching.digest.__wrapped__(tmp_path)
    assert second != first
    (tmp_path / "b.py").rename(tmp_path / "c.py")
    assert caching.digest.__wrapped__(tmp_path) != second


def test_every_cached_kernel_is_stamped_with_the_package_digest():
    """No kernel caches by numba's own stamp (a plain numba.njit(cache=True) would)."""
    dispatchers = [
        v
        for m in (compiled, dtypes, draws, spherical, torch_sum)
        for v in vars(m).values()
        if isinstance(v, numba.core.dispatcher.Dispatcher)
    ]
    dispatchers += [
        entry
        for kernel in (compiled.merge_top_k, compiled.merge_drawn, compiled.merge_weighted)
        for entry in kernel.entries
    ]
    cached = [d for d in dispatchers if not isinstance(d._cache, numba.core.caching.NullCache)]
    assert len(cached) >= 25  # every module's kernels, 4 counts of each merge
    for d in cached:
        assert isinstance(d._cache, caching.PackageCache), d
        assert d._cache._cache_file._source_stamp == caching.digest(KERNELS)


def test_the_kernels_import_nothing_of_mergepkg_from_outside_their_package():
    """What a kernel compiles in must be stamped with it: only kernels/ modules (and the lazy
    torch import, which no compiled code uses)."""
    allowed = ("mergepkg.methods.kernels", "mergepkg._lazy")
    for path in KERNELS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                if name.startswith("mergepkg"):
                    assert name.startswith(allowed), f"{path.name} imports {name}"


NOWHERE = {"NUMBA_CACHE_LOCATOR_CLASSES": "IPythonCacheLocator"}  # a locator that takes no module file


def test_with_nowhere_to_cache_them_the_kernels_compile_in_memory_and_run():
    """A read-only install with no writable home: numba has no folder for the cache, and
    cache=True would fail the kernels' import ("no locator available")."""
    code = (
        "import numpy as np\n"
        "from mergepkg.methods.kernels import caching, compiled, dtypes\n"
        "x, out = np.arange(4, dtype=np.float32), np.zeros(4, np.float32)\n"
        "dtypes.read(x, out, dtypes.MARKERS['float32'])\n"
        "print(out.tolist(), 'read' in caching.UNCACHED, 'band' in caching.UNCACHED)\n"
    )
    env = {**os.environ, **NOWHERE}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[0.0,", "1.0,", "2.0,", "3.0]", "True", "True"]


@pytest.mark.slow
def test_a_build_whose_kernels_cannot_be_cached_says_so_and_succeeds(write_recipe, tmp_path, mergepkg_home):
    path = write_recipe(
        """
        [steps.merged]
        method = "task_arithmetic"
        base = "base"
        inputs = [{ model = "ft1", weight = 0.5 }, { model = "ft2", weight = 0.5 }]
        """
    )
    env = {**os.environ, **NOWHERE, "MERGEPKG_HOME": str(mergepkg_home)}
    cmd = [sys.executable, "-m", "mergepkg", "build", str(path), "--out", str(tmp_path / "out")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("set NUMBA_CACHE_DIR to a writable folder") == 1, r.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()
