"""One-pass numba kernels for the per-tick image encodings (carla_bridge/encodings.py defines what they compute;
tests check them against the plain-numpy formulas there). Single-threaded and nogil: they run on the
rig's worker thread next to the renderer and must not start a thread pool of their own."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def rgb_to_bgra_kernel(rgb, out):  # rgb [H, W, 3] float32 in [0, 1] -> out [H, W, 4] uint8 BGRA, alpha 255
    height, width = rgb.shape[0], rgb.shape[1]
    for y in range(height):
        for x in range(width):
            for c in range(3):
                v = rgb[y, x, c] * np.float32(255.0)
                v = min(max(v, np.float32(0.0)), np.float32(255.0)) + np.float32(0.5)
                out[y, x, 2 - c] = np.uint8(v)
            out[y, x, 3] = 255


@numba.njit(cache=True, nogil=True)
def depth_to_bgra_kernel(depth, semantic, scale, max_code, out):  # depth [H, W] float32 m, semantic [H, W] uint8
    height, width = depth.shape[0], depth.shape[1]
    for y in range(height):
        for x in range(width):
            if semantic[y, x] == 0:  # uncovered: CARLA's sky at the far plane
                code = max_code
            else:
                v = depth[y, x] * scale + np.float32(0.5)
                v = min(max(v, np.float32(0.0)), np.float32(max_code))
                code = np.uint32(v)
            out[y, x, 0] = (code >> 16) & 255
            out[y, x, 1] = (code >> 8) & 255
            out[y, x, 2] = code & 255
            out[y, x, 3] = 255
