"""mergepkg: a declarative package manager for LLM weight merges."""

__version__ = "0.1.0"

# Bumped whenever the bytes the engine writes for the same inputs could change.
ENGINE_VERSION = 1
