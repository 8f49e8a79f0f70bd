"""kernels/jit.py: a cached kernel is compiled again when any module of its package
changes, the one it inlines from included, and only then; the kernels compile only what
their package defines; with nowhere to cache them they compile in memory."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import pytest

from mergepkg.methods.kernels import compiled, draws, dtypes, jit, spherical, torch_sum

KERNELS = Path(compiled.__file__).parent


def _run(folder: Path) -> tuple[str, int]:
    """A fresh interpreter (so nothing is compiled in memory) calls pkg.b.g(1): its
    result, and whether numba loaded g from its cache."""
    code = "from pkg.b import g; print(g(1), sum(g.stats.cache_hits.values()))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CACHE")}  # numba's own places
    r = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    result, hits = r.stdout.split()
    return result, int(hits)


@pytest.mark.slow  # a fresh interpreter loads numba and the kernels: seconds
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
            from mergepkg.methods.kernels import jit
            from pkg.a import f

            @jit.njit(nogil=True)
            def g(x):
                return f(x)
            """
        )
    )
    assert _run(tmp_path) == ("2", 0)
    assert list((pkg / "__pycache__").glob("b.g-*.nbi")), "compiled code was cached beside the module"
    assert _run(tmp_path) == ("2", 1)  # loaded from the cache
    (pkg / "a.py").write_text((pkg / "a.py").read_text().replace("x + 1", "x + 2"))
    assert _run(tmp_path) == ("3", 0)
    assert _run(tmp_path) == ("3", 1)


def test_the_digest_covers_every_module_of_the_package_by_name_and_bytes(tmp_path):
    (tmp_path / "a.py").write_text("A = 1\n")
    (tmp_path / "notes.txt").write_text("not a module")
    first = jit.digest.__wrapped__(tmp_path)
    (tmp_path / "notes.txt").write_text("changed")
    assert jit.digest.__wrapped__(tmp_path) == first
    (tmp_path / "b.py").write_text("")
    second = jit.digest.__wrapped__(tmp_path)
    assert second != first
    (tmp_path / "b.py").rename(tmp_path / "c.py")
    assert jit.digest.__wrapped__(tmp_path) != second
    third = jit.digest.__wrapped__(tmp_path)
    (tmp_path / ".#c.py").symlink_to(tmp_path / "gone")  # an editor's lock file, dangling
    assert jit.digest.__wrapped__(tmp_path) == third


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
        assert isinstance(d._cache, jit.PackageCache), d
        assert d._cache._cache_file._source_stamp[1] == jit.digest(KERNELS)  # beside numba's own


def test_the_kernels_import_nothing_of_mergepkg_from_outside_their_package():
    """What a kernel compiles in must be stamped with it: only kernels/ modules (and the lazy
    torch import, which no compiled code uses)."""
    allowed = ("mergepkg.methods.kernels", "mergepkg._lazy")
    for path in KERNELS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: a relative import"
                names = [node.module or ""]
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_import":
                names = [node.args[0].value]  # type: ignore[attr-defined]
            for name in names:
                if name.startswith("mergepkg"):
                    assert name.startswith(allowed), f"{path.name} imports {name}"


@pytest.mark.slow  # a fresh interpreter loads numba and the kernels: seconds
def test_loading_the_kernels_leaves_scipy_linalg_unloaded():
    """jit._no_blas_probe: numba's BLAS probe would import scipy.linalg (installed here,
    by mergekit) on every build's first kernel. A fresh interpreter, so nothing loaded it."""
    code = (
        "import sys\n"
        "from mergepkg.methods import fused\n"
        "fused.load(['bfloat16'], ['bfloat16'])\n"
        "print('scipy.linalg' in sys.modules)\n"
        "import scipy.linalg\n"  # importable all the same once the kernels are loaded
        "print(scipy.linalg.__name__)\n"
    )
    assert importlib.util.find_spec("scipy") is not None, "the test needs SciPy installed (the parity extra)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert r.stdout.split() == ["False", "scipy.linalg"]


def test_a_refused_import_is_only_scipy_linalg_and_only_while_loading():
    assert all(not isinstance(f, jit._Refuse) for f in sys.meta_path)
    refuse = jit._Refuse("scipy.linalg")
    assert refuse.find_spec("scipy.linalgebra", None) is None  # another name that starts alike
    assert refuse.find_spec("scipy", None) is None
    with pytest.raises(ImportError):
        refuse.find_spec("scipy.linalg.cython_blas", None)


def test_the_kernels_load_without_numba_probing_for_a_blas():
    """jit.py loads numba's array support with scipy.linalg refused (0.3-0.5 s a build);
    every kernel module imports jit, so slerp's loops, run alone, probe nothing either."""
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from mergepkg.methods.kernels import spherical\n"
        "x = np.zeros(4, np.float32)\n"
        "spherical.lerp(x, x, x, np.float32(0.5), spherical.MARKERS['float32'])\n"
        "print('scipy.linalg' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False"]


def test_with_numba_off_the_kernels_are_plain_functions():
    """NUMBA_DISABLE_JIT=1, numba's debugging switch: no dispatcher to give a cache."""
    code = (
        "import numpy as np\n"
        "from mergepkg.methods.kernels import draws\n"
        "out = np.zeros(3, np.float32)\n"
        "draws.drawn(1, 0, np.uint64(1 << 24), out)\n"
        "print(type(draws.drawn).__name__, out.tolist())\n"
    )
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["function", "[1.0,", "1.0,", "1.0]"]


NOWHERE = {"NUMBA_CACHE_LOCATOR_CLASSES": "IPythonCacheLocator"}  # a locator that takes no module file


def test_with_nowhere_to_cache_them_the_kernels_compile_in_memory_and_run():
    """A read-only install with no writable home: numba has no folder for the cache, and
    cache=True would fail the kernels' import ("no locator available")."""
    code = (
        "import numpy as np\n"
        "from mergepkg.methods.kernels import compiled, dtypes, jit\n"
        "x, out = np.arange(4, dtype=np.float32), np.zeros(4, np.float32)\n"
        "dtypes.read(x, out, dtypes.MARKERS['float32'])\n"
        "print(out.tolist(), 'read' in jit.UNCACHED, 'band' in jit.UNCACHED)\n"
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

        [steps.again]  # a second step that runs the kernels: the warning is told once a build
        method = "ties"
        base = "base"
        inputs = [{ model = "merged", weight = 0.5, density = 0.5 }, { model = "ft1", weight = 0.5, density = 0.5 }]
        """
    )
    env = {**os.environ, **NOWHERE, "MERGEPKG_HOME": str(mergepkg_home)}
    cmd = [sys.executable, "-m", "mergepkg", "build", str(path), "--out", str(tmp_path / "out")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("set NUMBA_CACHE_DIR to a writable folder") == 1, r.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()
