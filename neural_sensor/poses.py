"""Rigid 4x4 poses: the one validation every pose input goes through."""

from __future__ import annotations

import numpy as np


def check_pose(pose, name: str, atol: float = 1e-4) -> np.ndarray:
    """A finite rigid [4, 4] float64 pose (proper rotation, last row [0, 0, 0, 1]), or ValueError naming it."""
    try:
        pose = np.asarray(pose, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a [4, 4] array of numbers") from None
    if pose.shape != (4, 4):
        raise ValueError(f"{name} must be [4, 4], got {pose.shape}")
    if not np.all(np.isfinite(pose)):
        raise ValueError(f"{name} contains NaN or infinity")
    if not np.allclose(pose[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"{name}: the last row must be [0, 0, 0, 1], got {pose[3].tolist()}")
    rot = pose[:3, :3]
    if not np.allclose(rot @ rot.T, np.eye(3), atol=atol) or np.linalg.det(rot) <= 0:
        raise ValueError(f"{name}: the 3x3 block is not a proper rotation (rigid transforms only)")
    return pose
