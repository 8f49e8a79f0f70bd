"""lockfile.py: what a lock of another format says to do."""

from __future__ import annotations

import pytest

from mergepkg.errors import RecipeError
from mergepkg.lockfile import LOCK_VERSION, parse_lock


@pytest.mark.parametrize(
    ("version", "hint"),
    [
        (LOCK_VERSION + 1, "a newer mergepkg wrote it: upgrade mergepkg"),
        (LOCK_VERSION - 1, "delete it and run `mergepkg lock`"),
        ('"1"', "delete it and run `mergepkg lock`"),
    ],
)
def test_a_lock_of_another_format_says_how_to_go_on(version, hint):
    """The hint said `mergepkg lock`, which reads the lock and refused with the same error."""
    with pytest.raises(RecipeError, match="lock format") as info:
        parse_lock(f"version = {version}\n", "r.lock")
    assert info.value.hint == hint
