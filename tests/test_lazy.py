"""mergepkg/_lazy.py: stand-ins that import a module on first use."""

import sys
import threading

import pytest

from mergepkg._lazy import lazy_import


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package whose import sets a submodule on itself, as torch's sets torch.cuda."""
    root = tmp_path / "lazypkg"
    root.mkdir()
    (root / "__init__.py").write_text("from . import sub\nimport time\ntime.sleep(0.05)\nVALUE = sub.VALUE + 1\n")
    (root / "sub.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "lazypkg"
    for name in ("lazypkg", "lazypkg.sub"):
        sys.modules.pop(name, None)


def test_nothing_is_imported_until_an_attribute_is_read(package):
    module = lazy_import(package)
    assert package not in sys.modules  # the stand-in is not registered either
    assert module.VALUE == 42
    assert sys.modules[package].VALUE == 42


def test_the_submodules_its_import_sets_are_seen(package):
    """On Python 3.12.3, importlib's LazyLoader lost these (`torch.cuda` was missing)."""
    module = lazy_import(package)
    assert module.sub is sys.modules[f"{package}.sub"]
    assert module.sub.VALUE == 41


def test_threads_touching_it_first_all_see_the_module(package):
    module = lazy_import(package)
    seen: list = []
    threads = [threading.Thread(target=lambda: seen.append((module.VALUE, module.sub.VALUE))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [(42, 41)] * 8


def test_an_imported_module_is_returned_as_it_is():
    import json

    assert lazy_import("json") is json


def test_a_missing_module_fails_at_once():
    with pytest.raises(ImportError, match="no_such_module_here"):
        lazy_import("no_such_module_here")


def test_torch_cuda_is_reachable_through_the_stand_in():
    from mergepkg._lazy import torch

    assert isinstance(torch.cuda.is_available(), bool)
    assert torch.tensor([1.0]).dtype is torch.float32


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_a_stop_during_the_import_waits_for_it_to_finish(tmp_path, monkeypatch, stop):
    """An import interrupted part-way leaves a half-made module (torch's then fails, or
    aborts in C++): Ctrl-C, or the SIGTERM the CLI raises on, is raised once it is done."""
    import signal

    from mergepkg.cli.app import STATE, _stop

    name = f"slowpkg_{stop.lower()}"
    (tmp_path / f"{name}.py").write_text(
        f"import os, signal, time\nos.kill(os.getpid(), signal.{stop})\ntime.sleep(0.2)\nDONE = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = lazy_import(name)
    # Python's own handler, as in a terminal (a shell's background job starts with SIGINT ignored)
    signum, handler = getattr(signal, stop), signal.default_int_handler if stop == "SIGINT" else _stop
    before = signal.signal(signum, handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            module.DONE  # noqa: B018 - the first attribute read imports it
        assert sys.modules[name].DONE is True  # the import ran to its end
        assert signal.getsignal(signum) is handler
    finally:
        signal.signal(signum, before)
        sys.modules.pop(name, None)
        STATE.pop("signal", None)  # what _stop noted for the CLI's exit code
