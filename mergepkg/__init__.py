"""mergepkg: a declarative package manager for LLM weight merges.

    import mergepkg

    report = mergepkg.build("recipes/demo.toml", out="out/demo")
    print(report.built, report.outputs)

The names below are the public API (docs/api.md); each is imported on first use, so
`import mergepkg` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mergepkg._version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "build": "mergepkg.api",
    "status": "mergepkg.api",
    "validate": "mergepkg.api",
    "lock": "mergepkg.api",
    "verify": "mergepkg.api",
    "load_recipe": "mergepkg.recipe.parse",
    "parse_recipe": "mergepkg.recipe.parse",
    "Recipe": "mergepkg.recipe.model",
    "make_plan": "mergepkg.recipe.plan",
    "Plan": "mergepkg.recipe.plan",
    "Settings": "mergepkg.settings",
    "Session": "mergepkg.store.session",
    "Store": "mergepkg.store.local",
    "Artifact": "mergepkg.store.local",
    "BuildReport": "mergepkg.builder.build",
    "Status": "mergepkg.builder.status",
    "Check": "mergepkg.builder.verify",
    "Locked": "mergepkg.resolve.lock",
    "MergepkgError": "mergepkg.errors",
    "Pitfall": "mergepkg.pitfalls.pitfall",
    "WarningsDenied": "mergepkg.pitfalls.pitfall",
    "METHODS": "mergepkg.methods",
}

__all__ = [
    "METHODS",
    "Artifact",
    "BuildReport",
    "Check",
    "Locked",
    "MergepkgError",
    "Pitfall",
    "Plan",
    "Recipe",
    "Session",
    "Settings",
    "Status",
    "Store",
    "WarningsDenied",
    "__version__",
    "build",
    "load_recipe",
    "lock",
    "make_plan",
    "parse_recipe",
    "status",
    "validate",
    "verify",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module 'mergepkg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from mergepkg.api import build, lock, status, validate, verify
    from mergepkg.builder.build import BuildReport
    from mergepkg.builder.status import Status
    from mergepkg.builder.verify import Check
    from mergepkg.errors import MergepkgError
    from mergepkg.methods import METHODS
    from mergepkg.pitfalls.pitfall import Pitfall, WarningsDenied
    from mergepkg.recipe.model import Recipe
    from mergepkg.recipe.parse import load_recipe, parse_recipe
    from mergepkg.recipe.plan import Plan, make_plan
    from mergepkg.resolve.lock import Locked
    from mergepkg.settings import Settings
    from mergepkg.store.local import Artifact, Store
    from mergepkg.store.session import Session
