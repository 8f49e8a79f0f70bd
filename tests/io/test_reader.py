"""io/reader.py: tensors mapped from safetensors files, or read where they cannot be."""

import errno
import gc
import json
import mmap
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mergepkg.io.buffers import BufferPool
from mergepkg.io.reader import ModelReader
from mergepkg.io.tensors import scan_tensors


def _mapped(path: Path) -> int:
    """How many mappings of `path` this process holds."""
    return sum(line.rstrip().endswith(str(path)) for line in Path("/proc/self/maps").read_text().splitlines())


@pytest.fixture
def model(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(300, 70, generator=gen).to(torch.bfloat16),
        "b": torch.randn(5000, generator=gen),
        "c": torch.randn(3, 4, generator=gen).to(torch.float16),
        "empty": torch.zeros(0, 8),
    }
    save_file(tensors, tmp_path / "model.safetensors")
    return tmp_path, tensors


def test_tensors_and_rows_hold_the_file_s_values(model):
    folder, tensors = model
    reader = ModelReader(folder, scan_tensors(folder))
    for name, want in tensors.items():
        got = reader.get(name)
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert torch.equal(reader.get_rows("a", 10, 250), tensors["a"][10:250])
    reader.close()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps: Linux only")
def test_a_window_is_unmapped_when_its_tensor_is_freed(model):
    folder, _ = model
    path = (folder / "model.safetensors").resolve()
    reader = ModelReader(folder, scan_tensors(folder))
    a, rows = reader.get("a"), reader.get_rows("b", 100, 4000)
    reader.close()  # mappings outlive the reader's own file
    assert _mapped(path) >= 1  # two windows, or one where the kernel joined them
    del a
    gc.collect()
    assert _mapped(path) >= 1  # the rows' window stays
    del rows
    gc.collect()
    assert _mapped(path) == 0


def test_writing_to_a_mapped_tensor_leaves_the_file_alone(model):
    folder, tensors = model
    before = (folder / "model.safetensors").read_bytes()
    with ModelReader(folder, scan_tensors(folder)) as reader:
        a = reader.get("a")
    a.add_(1)  # copy on write: this page, in this process
    assert torch.equal(a, tensors["a"] + 1)
    assert (folder / "model.safetensors").read_bytes() == before
    with ModelReader(folder, scan_tensors(folder)) as reader:
        assert torch.equal(reader.get("a"), tensors["a"])


def test_a_tensor_not_aligned_to_its_dtype_is_read_into_a_buffer(tmp_path):
    """Three bytes of uint8 first put the float32 tensor at an odd offset, which a
    mapping cannot hand to torch; pread into a pooled buffer can."""
    values = torch.arange(10, dtype=torch.float32)
    header = {
        "u": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
        "f": {"dtype": "F32", "shape": [10], "data_offsets": [3, 43]},
    }
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    data = bytes([7, 8, 9]) + values.numpy().tobytes()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + data)
    pool = BufferPool()
    with ModelReader(tmp_path, scan_tensors(tmp_path), pool) as reader:
        got = reader.get("f")
        assert torch.equal(got, values)
        assert got.data_ptr() in pool._issued  # the pooled buffer, not a mapping
        assert reader.get("u").tolist() == [7, 8, 9]


def test_a_file_that_cannot_be_mapped_is_read(model, monkeypatch):
    """A FUSE mount with direct I/O refuses mmap (ENODEV): the tensors are read instead."""
    folder, tensors = model

    def refuse(*args, **kwargs):
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(mmap, "mmap", refuse)
    with ModelReader(folder, scan_tensors(folder), BufferPool()) as reader:
        for name, want in tensors.items():
            assert torch.equal(reader.get(name), want)
        assert torch.equal(reader.get_rows("a", 5, 9), tensors["a"][5:9])
