"""Reading a model's tensors one at a time, on demand."""

from __future__ import annotations

import os
from io import FileIO
from pathlib import Path

from mergepkg._lazy import torch
from mergepkg.errors import SourceError
from mergepkg.io.buffers import BufferPool
from mergepkg.io.tensors import NAME_OF, TensorInfo, load_bin, parse_header, torch_dtype


class ModelReader:
    """Reads single tensors of one model folder on demand.

    Safetensors tensors are read with pread straight into a new tensor's memory: no
    mmap, so the file's pages stay in the page cache and out of this process's resident
    set, and memory holds only the tensors in flight. Dtypes torch cannot view as bytes
    go through `safe_open`; `.bin` files through torch.load(mmap=True).
    """

    def __init__(self, folder: Path, infos: dict[str, TensorInfo], pool: BufferPool | None = None):
        self.folder, self.infos, self.pool = folder, infos, pool
        self._files: dict[str, tuple[FileIO, int, dict]] = {}  # file -> (open file, data start, header)
        self._other: dict[str, object] = {}

    def _safetensors(self, file: str) -> tuple[FileIO, int, dict]:
        if file not in self._files:
            path = self.folder / file
            f = open(path, "rb", buffering=0)  # noqa: SIM115 - kept open: its descriptor serves the preads until close()
            header, start = parse_header(f, path)
            self._files[file] = (f, start, header)
        return self._files[file]

    def _handle(self, file: str):
        if file not in self._other:
            if file.endswith(".safetensors"):
                from safetensors import safe_open

                self._other[file] = safe_open(self.folder / file, framework="pt", device="cpu")
            else:
                self._other[file] = load_bin(self.folder / file)
        return self._other[file]

    def get(self, name: str) -> torch.Tensor:
        info = self.infos[name]
        if info.file.endswith(".safetensors") and info.dtype in NAME_OF:
            return self._pread(name, info)
        handle = self._handle(info.file)
        return handle[name] if isinstance(handle, dict) else handle.get_tensor(name)

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows start:stop of a tensor (its first dimension), reading only those."""
        info = self.infos[name]
        if info.file.endswith(".safetensors") and info.dtype in NAME_OF:
            return self._pread(name, info, start, stop)
        return self.get(name)[start:stop]

    def _pread(self, name: str, info: TensorInfo, start: int = 0, stop: int | None = None) -> torch.Tensor:
        f, data_start, header = self._safetensors(info.file)
        begin, end = header[name]["data_offsets"]
        shape = info.shape
        if stop is not None:  # a block of rows
            row = (end - begin) // shape[0]
            begin, end, shape = begin + start * row, begin + stop * row, (stop - start, *shape[1:])
        if self.pool is not None:
            tensor = self.pool.tensor(torch_dtype(info.dtype), shape, end - begin)
        else:
            tensor = torch.empty(shape, dtype=torch_dtype(info.dtype))
        buffer = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        done = 0
        while done < end - begin:
            got = os.preadv(f.fileno(), [buffer[done:]], data_start + begin + done)
            if got == 0:
                raise SourceError(f"truncated tensor {name}", file=self.folder / info.file)
            done += got
        return tensor

    def close(self) -> None:
        for f, _, _ in self._files.values():
            f.close()
        self._files.clear()
        self._other.clear()
