"""Rigid 4x4 poses: the one validation every pose input goes through."""

from __future__ import annotations

import math

import numpy as np


SNAP_ATOL = 2e-3  # check_pose(snap=True): a 3x3 block this close to a rotation is replaced by the nearest rotation


def check_pose(pose, name: str, atol: float = 1e-4, snap: bool = False) -> np.ndarray:
    """A finite rigid [4, 4] float64 pose (proper rotation, last row [0, 0, 0, 1]), or ValueError naming it and
    saying how far the 3x3 block is from a rotation (max |R^T R - I| and det R against the tolerance).

    snap: a block within SNAP_ATOL of a rotation (poses rounded in a JSON file, a float32 export) is replaced by
    the nearest rotation (the polar factor, from the SVD) instead of refused; a returned pose is then a new array.
    """
    try:
        pose = np.asarray(pose, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a [4, 4] array of numbers") from None
    if pose.shape != (4, 4):
        raise ValueError(f"{name} must be [4, 4], got {pose.shape}")
    # plain-float checks: this runs for every agent of every tick, and np.allclose alone costs ~40 us
    m = pose.tolist()
    if not all(map(math.isfinite, m[0] + m[1] + m[2] + m[3])):
        raise ValueError(f"{name} contains NaN or infinity")
    if abs(m[3][0]) + abs(m[3][1]) + abs(m[3][2]) + abs(m[3][3] - 1.0) > 1e-8:
        raise ValueError(f"{name}: the last row must be [0, 0, 0, 1], got {m[3]}")
    (a, b, c, _), (d, e, f, _), (g, h, i, _) = m[0], m[1], m[2]
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    gram = (a * a + b * b + c * c - 1.0, d * d + e * e + f * f - 1.0, g * g + h * h + i * i - 1.0,
            a * d + b * e + c * f, a * g + b * h + c * i, d * g + e * h + f * i)
    deviation = max(map(abs, gram))
    if det > 0 and deviation > atol and snap and deviation <= SNAP_ATOL:
        u, _, vt = np.linalg.svd(pose[:3, :3])
        pose = pose.copy()
        pose[:3, :3] = u @ vt
        return pose
    if det <= 0 or deviation > atol:
        limit = f"{SNAP_ATOL:g} (rotations that close are snapped to the nearest)" if snap else f"{atol:g}"
        raise ValueError(f"{name}: the 3x3 block is not a proper rotation (rigid transforms only): max |R^T R - I| = "
                         f"{deviation:.2g} (tolerance {limit}), det R = {det:.4g}")
    return pose
