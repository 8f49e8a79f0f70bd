"""mergepkg/files.py: small files written whole or not at all."""

from __future__ import annotations

import os
import time

from mergepkg.files import LEFTOVER_SECONDS, write_atomic


def test_a_write_replaces_the_file_whole_and_removes_old_leftovers_of_killed_writers(tmp_path):
    target = tmp_path / "r [1].lock"  # brackets: a glob pattern would read them as a class
    stale = tmp_path / ".r [1].lock.abc123.tmp"  # what a writer killed before its rename left
    fresh = tmp_path / ".r [1].lock.def456.tmp"  # a writer at work right now
    other = tmp_path / ".other.lock.abc123.tmp"
    for f in (stale, fresh, other):
        f.write_text("half")
    long_ago = time.time() - LEFTOVER_SECONDS - 60
    for f in (stale, other):
        os.utime(f, (long_ago, long_ago))
    write_atomic(target, "whole\n")
    assert target.read_text() == "whole\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, fresh.name, other.name])
