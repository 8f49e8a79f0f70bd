"""Randomness is per tensor: every random draw is seeded by what it is for, never by
when it happens, so no result depends on the order of steps or tensors."""

from __future__ import annotations

import hashlib


def tensor_seed(seed: int, tensor: str, index: int) -> int:
    """Seed of input `index` of output tensor `tensor`: independent of execution order."""
    digest = hashlib.sha256(f"{seed}\0{tensor}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
