"""io/writer.py: shards of safetensors written as tensors arrive, each tensor's digest
taken beside the writes, the tensors starting on an aligned offset of every file."""

import struct

import pytest
import torch
from safetensors.torch import load_file

from mergepkg.io.buffers import BufferPool
from mergepkg.io.digest import tensor_digests
from mergepkg.io.direct import ALIGN
from mergepkg.io.tensors import TensorInfo, code_of
from mergepkg.io.writer import ShardWriter


@pytest.fixture
def tensors():
    gen = torch.Generator().manual_seed(0)
    return {
        "embed": torch.randn(64, 128, generator=gen).to(torch.bfloat16),  # 4 pages
        "norm": torch.randn(33, generator=gen),  # 132 bytes: what follows it is unaligned
        "proj": torch.randn(96, 64, generator=gen).to(torch.float16),
        "head": torch.randn(64, 128, generator=gen),
    }


def write(folder, tensors, shard_bytes, pool=None):
    infos = [(name, TensorInfo(code_of(t.dtype), tuple(t.shape))) for name, t in tensors.items()]
    writer = ShardWriter(folder, infos, shard_bytes)
    for name, t in tensors.items():
        if pool is not None:  # in a pooled (page-aligned) buffer, as the engine's results are
            into = pool.tensor(t.dtype, tuple(t.shape), t.nbytes)
            into.copy_(t)
            t = into
        writer.write(name, t)
    writer.close()
    return writer


@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize("shard_bytes", [1 << 30, 20_000])  # one file, or several
def test_shards_hold_the_tensors_from_an_aligned_offset(tmp_path, tensors, pooled, shard_bytes):
    writer = write(tmp_path, tensors, shard_bytes, BufferPool() if pooled else None)
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) == (1 if shard_bytes > 1 << 20 else 3)
    read = {}
    for file in files:
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
        assert (8 + size) % ALIGN == 0  # the header padded (with spaces) to the boundary
        read.update(load_file(file))
    assert read.keys() == tensors.keys()
    for name, t in tensors.items():
        assert read[name].dtype == t.dtype and torch.equal(read[name], t)
    assert writer.digests == tensor_digests(tmp_path)  # taken beside the writes = re-read


def test_pooled_buffers_start_on_a_page(tensors):
    pool = BufferPool()
    made = [pool.tensor(t.dtype, tuple(t.shape), t.nbytes) for t in tensors.values()]
    assert all(t.data_ptr() % ALIGN == 0 for t in made)
    pool.give_back(made)
    again = pool.tensor(torch.bfloat16, (64, 128), 64 * 128 * 2)
    assert again.data_ptr() == made[0].data_ptr()  # the same buffer, reused
