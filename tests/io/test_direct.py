"""direct.SequentialFile writes exactly the bytes given, with O_DIRECT, without it, and
when the file system refuses direct writes half way."""

from __future__ import annotations

import errno
import mmap
import os

import pytest

from mergepkg.io import direct

SIZES = [0, 1, 4095, 4096, 4097, direct.STAGE - 1, direct.STAGE + 12345]


def payload(sizes):
    rng = __import__("random").Random(len(sizes))
    return [rng.randbytes(n) for n in sizes]


def write(path, pieces):
    f = direct.SequentialFile(path)
    for piece in pieces:
        f.write(piece)
    f.close()
    return f


def test_bytes_round_trip(tmp_path):
    pieces = payload(SIZES)
    f = write(tmp_path / "a.bin", pieces)
    assert (tmp_path / "a.bin").read_bytes() == b"".join(pieces)
    assert f.size == sum(SIZES)


def test_without_o_direct(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "O_DIRECT", raising=False)
    pieces = payload(SIZES[:4])
    f = write(tmp_path / "b.bin", pieces)
    assert not f.direct and (tmp_path / "b.bin").read_bytes() == b"".join(pieces)


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="needs O_DIRECT")
def test_refused_direct_write_falls_back(tmp_path, monkeypatch):
    real, refused = os.write, []

    def refuse_once(fd, data):
        if not refused:
            refused.append(fd)
            raise OSError(errno.EINVAL, "direct I/O refused")
        return real(fd, data)

    monkeypatch.setattr(os, "write", refuse_once)
    pieces = payload([direct.STAGE + 5, 100])
    f = direct.SequentialFile(tmp_path / "c.bin")
    was_direct = f.direct
    for piece in pieces:
        f.write(piece)
    f.close()
    assert (tmp_path / "c.bin").read_bytes() == b"".join(pieces)
    assert refused and (not was_direct or not f.direct)


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="needs O_DIRECT")
def test_a_short_write_then_a_refusal_resumes_where_it_stopped(tmp_path, monkeypatch):
    """At a limit a direct write may write part of its bytes; the rest, unaligned, is then
    refused (EINVAL) and goes through the cache from there, not from the stage's start."""
    real, calls = os.write, []

    def short_then_refused(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real(fd, data[: direct.ALIGN * 3])
        if len(calls) == 2:
            raise OSError(errno.EINVAL, "unaligned")
        return real(fd, data)

    monkeypatch.setattr(os, "write", short_then_refused)
    pieces = payload([direct.STAGE + 777])
    write(tmp_path / "d.bin", pieces)
    assert (tmp_path / "d.bin").read_bytes() == b"".join(pieces)
    assert calls[0] == direct.STAGE and calls[2] == direct.STAGE - direct.ALIGN * 3


@pytest.mark.parametrize("size", [direct.STAGE + 5, 100])  # failing in a flush, or in close's
def test_a_failed_write_raises_its_own_error_and_closes(tmp_path, monkeypatch, size):
    """A full disk: the write's OSError reaches the caller (not a BufferError from
    unmapping a stage a view of the failed write still held), and the file is closed."""

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    f = direct.SequentialFile(tmp_path / "e.bin")
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError) as caught:
        f.write(payload([size])[0])
        f.close()
    assert caught.value.errno == errno.ENOSPC
    if f.fd >= 0:  # failed in write(): the caller's close, as ShardWriter's finally does
        with pytest.raises(OSError):
            f.close()
    assert f.fd == -1


def aligned(data: bytes) -> mmap.mmap:
    """`data` in memory that starts on a page, as the engine's result buffers do."""
    page = mmap.mmap(-1, len(data))
    page.write(data)
    return page


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="needs O_DIRECT")
def test_aligned_bytes_go_to_the_disk_without_a_copy(tmp_path, monkeypatch):
    """Bytes on a page of memory, at an aligned offset of the file, are written from the
    caller's memory: only what is not aligned goes through the stage (a header's bytes,
    a piece's last partial block and what follows it), and the file holds every byte."""
    staged, copy = [], direct.SequentialFile._stage_copy

    def counted(self, data):
        staged.append(len(data))
        copy(self, data)

    monkeypatch.setattr(direct.SequentialFile, "_stage_copy", counted)
    head, body, tail, more = payload([2 * direct.ALIGN, 5 * direct.ALIGN + 100, 3 * direct.ALIGN, 2 * direct.ALIGN])
    f = direct.SequentialFile(tmp_path / "f.bin")
    assert f.direct  # tmp_path is on a file system that takes O_DIRECT, as CI's is
    for piece in (head, aligned(body), aligned(tail), aligned(more)):
        f.write(piece)
    f.close()
    assert (tmp_path / "f.bin").read_bytes() == head + body + tail + more
    # head staged, then flushed before body; body's last 100 bytes leave the file
    # unaligned, so tail and more are staged too
    assert staged == [len(head), 100, len(tail), len(more)]


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="needs O_DIRECT")
def test_an_aligned_write_refused_goes_on_through_the_cache(tmp_path, monkeypatch):
    real, refused = os.write, []

    def refuse_once(fd, data):
        if not refused:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "direct I/O refused")
        return real(fd, data)

    monkeypatch.setattr(os, "write", refuse_once)
    body = payload([4 * direct.ALIGN + 7])[0]
    f = direct.SequentialFile(tmp_path / "g.bin")
    f.write(aligned(body))
    f.close()
    assert (tmp_path / "g.bin").read_bytes() == body
    assert refused == [4 * direct.ALIGN] and not f.direct
