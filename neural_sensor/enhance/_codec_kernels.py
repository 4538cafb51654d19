"""Compiled image codecs of the enhancer's wire (numba, one thread, one pass over the data).

The same values as the numpy references in `protocol.py` (`_to_uint8_reference`, `_to_float_reference`,
`_all_finite_reference`), tested against them: float32 arithmetic throughout, uint8 = clip(x * 255, 0, 255) + 0.5
truncated, float = u8 / 255.
One thread on purpose: the client's renderer and the server's model own the cores between these passes, and a
parallel loop waiting on a busy core costs more than it saves (measured: 8 ms instead of 0.5 ms per tick).
Imported lazily, so the broker and message parsing never pay numba's import.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_JIT = dict(cache=True, nogil=True, fastmath=False)


@njit(**_JIT)
def uint8_from_float(source, out):  # pragma: no cover - compiled
    """out[i] = uint8(min(max(float32(source[i]) * 255, 0), 255) + 0.5) over flat arrays of one length; returns
    whether any source value was NaN (which has no uint8: its out[i] is 0)."""
    scale, lo, hi, half = np.float32(255.0), np.float32(0.0), np.float32(255.0), np.float32(0.5)
    nan = False
    for i in range(source.shape[0]):
        v = np.float32(source[i]) * scale
        nan |= v != v
        out[i] = np.uint8(min(max(v, lo), hi) + half) if v == v else np.uint8(0)
    return nan


@njit(**_JIT)
def float_from_uint8(source, out):  # pragma: no cover - compiled
    """out[i] = float32(source[i]) / 255 over flat arrays of one length."""
    scale = np.float32(255.0)
    for i in range(source.shape[0]):
        out[i] = np.float32(source[i]) / scale


@njit(**_JIT)
def largest_magnitude_bits(bits):  # pragma: no cover - compiled
    """max(bits[i] & 0x7FFFFFFF) over a flat uint32 view of float32 data: at least 0x7F800000 iff a NaN or inf."""
    mask = np.uint32(0x7FFFFFFF)
    largest = np.uint32(0)
    for i in range(bits.shape[0]):
        largest = max(largest, bits[i] & mask)
    return largest
