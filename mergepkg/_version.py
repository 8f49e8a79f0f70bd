"""mergepkg's version (the one place it is written: pyproject.toml reads it from here)
and the engine's."""

__version__ = "0.1.0"

# Bumped whenever the bytes the engine writes for the same inputs could change; part of
# every step key (resolve/keys.py).
ENGINE_VERSION = 2
