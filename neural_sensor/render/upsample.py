"""Images rendered at a fraction of the cameras' size, brought back to it (`render(..., scale=)`).

A reconstructed scene's Gaussians are as coarse as the pixels of the 160x96 images the network reads (one spans
about three pixels of the rig's 480x270), so rendering it at half the rig's size and upsampling loses almost
nothing the render had: on twelve held-out worlds the raw render is 0.01-0.02 dB CLOSER to the ground truth that
way (the bilinear upsample smooths the splats' noise; 0.05 on six others), what the agent gets after the enhancer
is 0.00-0.02 dB lower, both flicker less, and the six-camera render takes 47 ms instead of 77 on an Intel Xeon
(docs/results.md, "2026-12-05 (fifth session)").

`upsample` is the compiled fast path (numba, rows in parallel), writing into a caller's array (the enhancer
client's shared block); `upsample_reference` its torch twin (`torch.nn.functional.interpolate`, bilinear with
align_corners=False or nearest-exact), tested equal. Bilinear: the source coordinate of output pixel x is (x + 0.5)
w / W - 0.5, clamped to the image; nearest: the source pixel floor((x + 0.5) w / W).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from numba import njit, prange

MODES = ("bilinear", "nearest")
RECONSTRUCTION_SCALE = 0.5  # the fraction of the cameras' size a run draws a reconstruction at (render(scale=)): see
#   the module docstring (docs/results.md, 2026-12-05, fifth session). Kept here, not in _common.py, whose bytes are
#   part of every reconstruction's cache key


def check_scale(scale, who: str) -> float:
    """scale as a float: a real in (0, 1] (the fraction of the cameras' size rendered); ValueError naming `who`."""
    if isinstance(scale, bool) or not (isinstance(scale, numbers.Real) and math.isfinite(scale) and 0 < scale <= 1):
        raise ValueError(f"{who}: scale must be a number in (0, 1] (the fraction of the cameras' size rendered, then "
                         f"upsampled), got {scale!r}")
    return float(scale)


def upsample(image: np.ndarray, height: int, width: int, mode: str, out: np.ndarray | None = None) -> np.ndarray:
    """[C, h, w] or [C, h, w, K] -> [C, height, width(, K)] of the same dtype (see the module docstring).

    Args: image (float32 for "bilinear"; any numeric dtype for "nearest"); height >= h, width >= w; mode
    "bilinear" or "nearest"; out: an optional C-contiguous writable array of the result's shape and dtype.
    """
    if mode not in MODES:
        raise ValueError(f"upsample: mode must be one of {MODES}, got {mode!r}")
    assert image.ndim in (3, 4), image.shape
    c, h, w = image.shape[:3]
    assert height >= h >= 1 and width >= w >= 1, (image.shape, height, width)
    assert mode == "nearest" or image.dtype == np.float32, (mode, image.dtype)
    shape = (c, height, width) + image.shape[3:]
    if out is None:
        out = np.empty(shape, image.dtype)
    assert out.shape == shape and out.dtype == image.dtype and out.flags.c_contiguous and out.flags.writeable, \
        (out.shape, shape, out.dtype, image.dtype)
    src = np.ascontiguousarray(image)
    src4 = src.reshape(c, h, w, -1)
    dst4 = out.reshape(c, height, width, -1)
    if mode == "bilinear":
        _bilinear_kernel(src4, dst4)
    else:
        _nearest_kernel(src4, dst4)
    return out


def upsample_reference(image: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    """The torch twin of `upsample` (float64 arithmetic for "bilinear", returned in the input's dtype)."""
    import torch

    if mode not in MODES:
        raise ValueError(f"upsample: mode must be one of {MODES}, got {mode!r}")
    c, h, w = image.shape[:3]
    channels = image.reshape(c, h, w, -1)
    tensor = torch.from_numpy(np.ascontiguousarray(channels, dtype=np.float64)).permute(0, 3, 1, 2)
    kwargs = {"mode": "bilinear", "align_corners": False} if mode == "bilinear" else {"mode": "nearest-exact"}
    result = torch.nn.functional.interpolate(tensor, size=(height, width), **kwargs).permute(0, 2, 3, 1).numpy()
    result = result.reshape((c, height, width) + image.shape[3:])
    return result.astype(image.dtype)


@njit(parallel=True, cache=True, nogil=True)
def _bilinear_kernel(src, dst):  # pragma: no cover - compiled
    c, h, w, k = src.shape
    height, width = dst.shape[1], dst.shape[2]
    sy, sx = h / height, w / width
    x0s = np.empty(width, np.int64)  # the columns' taps and weights, the same on every row
    x1s = np.empty(width, np.int64)
    wxs = np.empty(width, np.float32)
    for x in range(width):
        fx = max((x + 0.5) * sx - 0.5, 0.0)
        x0s[x] = min(int(fx), w - 1)
        x1s[x] = min(x0s[x] + 1, w - 1)
        wxs[x] = np.float32(fx - x0s[x])
    for row in prange(c * height):
        i, y = row // height, row % height
        fy = max((y + 0.5) * sy - 0.5, 0.0)
        y0 = min(int(fy), h - 1)
        y1 = min(y0 + 1, h - 1)
        wy = np.float32(fy - y0)
        a, b, o = src[i, y0], src[i, y1], dst[i, y]
        for x in range(width):
            x0, x1, wx = x0s[x], x1s[x], wxs[x]
            for ch in range(k):
                top = a[x0, ch] + wx * (a[x1, ch] - a[x0, ch])
                bottom = b[x0, ch] + wx * (b[x1, ch] - b[x0, ch])
                o[x, ch] = top + wy * (bottom - top)


@njit(parallel=True, cache=True, nogil=True)
def _nearest_kernel(src, dst):  # pragma: no cover - compiled
    c, h, w, k = src.shape
    height, width = dst.shape[1], dst.shape[2]
    for row in prange(c * height):
        i, y = row // height, row % height
        ys = min(int((y + 0.5) * h / height), h - 1)
        for x in range(width):
            xs = min(int((x + 0.5) * w / width), w - 1)
            for ch in range(k):
                dst[i, y, x, ch] = src[i, ys, xs, ch]
