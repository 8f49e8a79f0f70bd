"""The shards of a built model laid out again for another shard size.

An artifact keeps the shards it was built with; `--shard-size` on a later build that
reuses it asks for others. The tensors are the same, so they are read one at a time
and written again in order, and their digests (hashed as written) must equal the
artifact's: the copy is checked as it is made.
"""

from __future__ import annotations

from pathlib import Path

from mergepkg.errors import BuildError
from mergepkg.io.digest import combine_digests
from mergepkg.io.folder import weight_files
from mergepkg.io.reader import ModelReader
from mergepkg.io.tensors import TensorInfo, read_header, scan_tensors
from mergepkg.io.writer import ShardWriter, plan_shards, shard_names


def stored_order(folder: Path) -> list[tuple[str, TensorInfo]]:
    """The tensors of a safetensors model in the order they are stored (shard, offset)."""
    order = []
    for file in weight_files(folder):
        header = read_header(folder / file)
        for name in sorted(header, key=lambda n: header[n]["data_offsets"][0]):
            meta = header[name]
            order.append((name, TensorInfo(meta["dtype"], tuple(meta["shape"]), file)))
    return order


def sharded_as(folder: Path, max_shard_bytes: int) -> bool:
    """Whether the model in `folder` is already in the shards `max_shard_bytes` gives."""
    order = stored_order(folder)
    shards = plan_shards([(n, i) for n, i in order], max_shard_bytes)
    names = shard_names(len(shards))
    return all(info.file == names[s] for s, items in enumerate(shards) for _, info in items)


def reshard(src: Path, dst: Path, max_shard_bytes: int, digest: str) -> None:
    """Write the weights of the model in `src` into `dst` in shards of `max_shard_bytes`;
    their tensors' digests must combine to `digest` (the artifact's)."""
    order = stored_order(src)
    reader = ModelReader(src, scan_tensors(src))
    writer = ShardWriter(dst, order, max_shard_bytes)
    try:
        for name, _ in order:
            writer.write(name, reader.get(name))
    except BaseException:
        writer.abort()
        raise
    finally:
        reader.close()
    writer.close()
    if combine_digests(writer.digests) != digest:
        raise BuildError(
            f"the stored model in {src} no longer has the digest it was built with",
            hint="`mergepkg verify` removes it; build again",
        )
