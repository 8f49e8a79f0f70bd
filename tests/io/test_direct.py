"""direct.SequentialFile writes exactly the bytes given, with O_DIRECT, without it, and
when the file system refuses direct writes half way."""

from __future__ import annotations

import errno
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
