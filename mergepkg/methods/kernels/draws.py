"""DARE's draws in compiled code: splitmix64 of (seed, entry index), as sparsify.draws
computes them, and the keep masks (one bit an entry) the merge reads them from."""

from __future__ import annotations

import numba
import numpy as np

from mergepkg.methods.kernels import jit
from mergepkg.methods.kernels.reduce import BLOCK

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1, MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@numba.njit(inline="always")
def _draw(seed, at):
    """The top 24 bits of splitmix64's output number at+1 from `seed` (uint64s)."""
    z = seed + (at + np.uint64(1)) * GOLDEN
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return (z ^ (z >> np.uint64(31))) >> np.uint64(40)


@jit.njit(nogil=True)
def drawn(seed, start, limit, out):
    """out[j] = 1.0 where entry start + j is kept (its draw is below `limit`), else 0.0."""
    s, first = np.uint64(seed), np.uint64(start)
    for j in range(out.shape[0]):
        out[j] = np.float32(_draw(s, first + np.uint64(j)) < limit)


# DARE's keep masks, one bit an entry: merge_drawn reads whether it keeps an entry from a
# mask rather than drawing it, so each entry of an input is drawn once. A rescaled input's
# L1 pass (l1_drawn) draws every entry already and writes the mask as it goes; without a
# rescale, draw_bits writes it just before the merge. Entry start + 8q + i is bit i of
# byte q (start a multiple of 8: chunks start at multiples of BLOCK). Three draws an entry
# cost 0.6-0.9 ns in the merge loop, unpacking three masks a few hundredths of that.

PACK = np.uint64(0x0102040810204080)  # times 8 bytes of 0 or 1: byte i lands on bit 56 + i, no carries
SPREAD = np.uint64(0x0101010101010101)  # times a byte: the byte in each of 8 bytes
BIT_OF_BYTE = np.uint64(0x8040201008040201)  # bit i of byte i
BELOW_TOP = np.uint64(0x7F7F7F7F7F7F7F7F)  # added to bytes of 0 or 2**i: bit 7 set where not 0


@numba.njit(inline="always")
def _pack(kept, bits, count):
    """bits[q] = the 0/1 bytes kept[8q : 8q + 8] as bits 0..7, for `count` bytes (8 bytes
    as one little-endian word, times PACK)."""
    words = kept.view(np.uint64)
    for q in range(count):
        bits[q] = np.uint8((words[q] * PACK) >> np.uint64(56))


@numba.njit(inline="always")
def _unpack(bits, count, kept):
    """kept[8q + i] = bit i of bits[q] (a 0/1 byte), for `count` bytes: _pack undone."""
    words = kept.view(np.uint64)
    for q in range(count):
        spread = (np.uint64(bits[q]) * SPREAD) & BIT_OF_BYTE  # byte i: 0 or 2**i
        words[q] = ((spread + BELOW_TOP) >> np.uint64(7)) & SPREAD  # byte i: 0 or 1


@jit.njit(nogil=True)
def draw_bits(seed, start, limit, bits):
    """bits = the keep mask of entries start, start + 1, ... (8 a byte, start a multiple of
    8): bit set where the entry's draw from `seed` is below `limit`."""
    kept = np.empty(BLOCK, np.uint8)
    s, first = np.uint64(seed), np.uint64(start)
    n = bits.shape[0] * 8
    for lo in range(0, n, BLOCK):
        size = min(BLOCK, n - lo)
        at = first + np.uint64(lo)
        for j in range(size):
            kept[j] = np.uint8(_draw(s, at + np.uint64(j)) < limit)
        _pack(kept, bits[lo // 8 :], size // 8)


@jit.njit(nogil=True)
def unpacked(bits, kept):
    """kept = the keep mask `bits` as 0/1 bytes (tests)."""
    _unpack(bits, bits.shape[0], kept)
