"""Deferred imports of heavy libraries.

`from mergepkg._lazy import torch` gives a module object that imports torch on first
attribute access. Planning, locking and no-op rebuilds then never pay for torch.
"""

import importlib.util
import sys
from typing import Any


def lazy_import(name: str) -> Any:  # Any: a module whose attributes mypy cannot know
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"No module named {name!r}")
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


torch = lazy_import("torch")
