"""The floor of a merge on this machine: read its inputs once, write one output once.

    python bench/floor.py [--torch] OUT_FILE OUT_BYTES INPUT...

Reads every INPUT from start to end into one reused buffer (no mmap, no fresh memory
per block), then writes OUT_BYTES to OUT_FILE from one reused, page-aligned buffer
through O_DIRECT where the file system takes it (as mergepkg's writer does; buffered
writes otherwise); the caller removes OUT_FILE. Nothing else: no torch, no parsing, no
arithmetic, no hashing. With `--torch` it imports torch first, and nothing else
changes: the floor of any program that merges with torch. bench/run.py times both as it
times a build (a fresh process, the same files, the page cache warmed the same way) and
reports linear/floor.
"""

from __future__ import annotations

import mmap
import os
import sys

BLOCK = 16 << 20  # bytes a read or write moves; a multiple of any O_DIRECT alignment


def read_all(paths: list[str], buffer: memoryview) -> int:
    """Every byte of `paths` read once into `buffer`, over and over; the bytes read."""
    total = 0
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                total += n
    return total


def write(path: str, size: int, buffer: mmap.mmap) -> None:
    """`size` bytes of `buffer`'s contents, block after block, into a new file at `path`."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        fd = os.open(path, flags | getattr(os, "O_DIRECT", 0), 0o644)
        direct = hasattr(os, "O_DIRECT")
    except OSError:  # a file system without O_DIRECT (tmpfs)
        fd, direct = os.open(path, flags, 0o644), False
    try:
        whole = size - size % mmap.PAGESIZE if direct else size
        done = 0
        while done < whole:
            done += os.write(fd, memoryview(buffer)[: min(BLOCK, whole - done)])
        if done < size:  # the unaligned end, buffered
            os.close(fd)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            os.write(fd, memoryview(buffer)[: size - done])
    finally:
        os.close(fd)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--torch"]:
        import torch  # noqa: F401  (its import is what the flag times)

        argv = argv[1:]
    if len(argv) < 3:
        raise SystemExit(__doc__)
    out, size, inputs = argv[0], int(argv[1]), argv[2:]
    buffer = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
    read_all(inputs, memoryview(buffer))
    write(out, size, buffer)


if __name__ == "__main__":
    main(sys.argv[1:])
