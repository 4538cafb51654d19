"""Tiny drive logs for the drive-log tests (test_drive_log.py, test_log_reconstruction.py): cameras at random
poses (they read as upside down or not level: the reader's DriveLogWarning, tested in test_log_checks.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neural_sensor.camera import Camera
from neural_sensor.reconstruct.log import write_drive_log


def _random_pose(rng) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    pose = np.eye(4)
    pose[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                    [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                    [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]
    pose[:3, 3] = rng.uniform(-50, 50, size=3)
    return pose


def _tiny_views(rng, count: int = 3, width: int = 16, height: int = 12):
    cameras = [Camera(width, height, [[20.0 + i, 0, 7.5 + i], [0, 21.5 + i, 6.25], [0, 0, 1]], _random_pose(rng))
               for i in range(count)]
    images = rng.integers(0, 256, size=(count, height, width, 3), dtype=np.uint8)
    return images, cameras


def _tiny_log(tmp_path: Path, name: str = "log") -> Path:
    images, cameras = _tiny_views(np.random.default_rng(5))
    return write_drive_log(tmp_path / name, images, cameras, camera_names=["CAM_A", "CAM_B", "CAM_C"])
