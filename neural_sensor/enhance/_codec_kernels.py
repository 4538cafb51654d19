"""Compiled image codecs of the enhancer's wire (numba, one thread, one pass over the data).

The same values as the numpy references in `protocol.py` (`_to_uint8_reference`, `_to_float_reference`), tested
against them: float32 arithmetic throughout, uint8 = clip(x * 255, 0, 255) + 0.5 truncated, float = u8 / 255.
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
    """out[i] = uint8(min(max(float32(source[i]) * 255, 0), 255) + 0.5) over flat arrays of one length."""
    scale, lo, hi, half = np.float32(255.0), np.float32(0.0), np.float32(255.0), np.float32(0.5)
    for i in range(source.shape[0]):
        v = np.float32(source[i]) * scale
        out[i] = np.uint8(min(max(v, lo), hi) + half)


@njit(**_JIT)
def float_from_uint8(source, out):  # pragma: no cover - compiled
    """out[i] = float32(source[i]) / 255 over flat arrays of one length."""
    scale = np.float32(255.0)
    for i in range(source.shape[0]):
        out[i] = np.float32(source[i]) / scale


@njit(**_JIT)
def half_bits_from_float_bits(source, out):  # pragma: no cover - compiled
    """float32 bit patterns -> float16 bit patterns, rounded to nearest even (numpy's rule): normal results,
    signed zeros, and overflow / inf (to a signed inf); returns how many it left alone (float16 subnormals and
    NaN, which `protocol.to_float16_into` redoes with numpy)."""
    outside = 0
    for i in range(source.shape[0]):
        f = source[i]
        f_exp = f & np.uint32(0x7F800000)
        h_sgn = (f & np.uint32(0x80000000)) >> np.uint32(16)
        if f_exp < np.uint32(0x38800000):
            if (f & np.uint32(0x7FFFFFFF)) == np.uint32(0):
                out[i] = np.uint16(h_sgn)
            else:
                outside += 1
            continue
        if f_exp >= np.uint32(0x47800000):
            if f_exp == np.uint32(0x7F800000) and (f & np.uint32(0x007FFFFF)) != np.uint32(0):
                outside += 1  # NaN
            else:
                out[i] = np.uint16(h_sgn + np.uint32(0x7C00))
            continue
        h_exp = (f_exp - np.uint32(0x38000000)) >> np.uint32(13)
        f_sig = f & np.uint32(0x007FFFFF)
        if (f_sig & np.uint32(0x00003FFF)) != np.uint32(0x00001000):  # not a tie with an even last bit
            f_sig += np.uint32(0x00001000)
        out[i] = np.uint16(h_sgn + h_exp + (f_sig >> np.uint32(13)))  # a carry into the exponent is right
    return outside


@njit(**_JIT)
def float_bits_from_half_bits(source, out):  # pragma: no cover - compiled
    """float16 bit patterns -> float32 bit patterns (exact, every case: zeros, subnormals, inf, NaN payloads)."""
    for i in range(source.shape[0]):
        h = np.uint32(source[i])
        sign = (h & np.uint32(0x8000)) << np.uint32(16)
        h_exp = h & np.uint32(0x7C00)
        if h_exp == np.uint32(0x7C00):
            out[i] = sign + np.uint32(0x7F800000) + ((h & np.uint32(0x03FF)) << np.uint32(13))
        elif h_exp != np.uint32(0):
            out[i] = sign + (((h & np.uint32(0x7FFF)) + np.uint32(0x1C000)) << np.uint32(13))
        else:
            h_sig = h & np.uint32(0x03FF)
            if h_sig == np.uint32(0):
                out[i] = sign
            else:
                e = np.uint32(0)
                h_sig <<= np.uint32(1)
                while (h_sig & np.uint32(0x0400)) == np.uint32(0):
                    h_sig <<= np.uint32(1)
                    e += np.uint32(1)
                out[i] = sign + ((np.uint32(112) - e) << np.uint32(23)) + ((h_sig & np.uint32(0x03FF)) << np.uint32(13))
