"""Rigid 4x4 poses: the one validation every pose input goes through."""

from __future__ import annotations

import math

import numpy as np


def check_pose(pose, name: str, atol: float = 1e-4) -> np.ndarray:
    """A finite rigid [4, 4] float64 pose (proper rotation, last row [0, 0, 0, 1]), or ValueError naming it."""
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
    if det <= 0 or max(map(abs, gram)) > atol:
        raise ValueError(f"{name}: the 3x3 block is not a proper rotation (rigid transforms only)")
    return pose
