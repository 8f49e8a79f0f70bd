"""The device and threads the math runs with."""

from __future__ import annotations

import functools

from mergepkg._lazy import torch
from mergepkg.errors import BuildError


@functools.cache
def default_threads() -> int:
    """torch's own choice of intra-op threads, read before mergepkg changes it."""
    return torch.get_num_threads()


def check_device(device: str) -> None:
    """Fail early, with a message, for a device this machine does not have."""
    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return
    if kind == "cuda" and (not index or index.isdigit()):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BuildError(f"--device {device}: no CUDA device is available", hint="use --device cpu")
        if index and int(index) >= count:
            raise BuildError(
                f"--device {device}: this machine has {count} CUDA device(s)", hint=f"use cuda:0 .. cuda:{count - 1}"
            )
        return
    if kind == "mps" and not index:
        if not torch.backends.mps.is_available():
            raise BuildError("--device mps: MPS is not available on this machine", hint="use --device cpu")
        return
    raise BuildError(f"unknown device {device!r}", hint="use cpu, cuda, cuda:N or mps")
