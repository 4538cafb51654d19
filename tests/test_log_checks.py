"""A drive log that reads but would reconstruct badly is named (reconstruct/log_checks.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from neural_sensor.camera import Camera
from neural_sensor.reconstruct.log import read_drive_log, write_drive_log
from neural_sensor.reconstruct.log_checks import DriveLogWarning, drive_log_warnings
from neural_sensor.rig import nuscenes_like_rig
from neural_sensor.world import pose_from_xyz_yaw

OPENCV_AS_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV camera axes written where OpenGL's are read


def _drive(stations: int = 3, offset_m=(0.0, 0.0, 0.0), post=np.eye(4), world=np.eye(4)):
    """A six-camera rig 4 m apart along x: (cameras, sensor ids)."""
    cameras, ids = [], []
    for k in range(stations):
        ego = world @ pose_from_xyz_yaw(4.0 * k + offset_m[0], offset_m[1], offset_m[2], 0.0)
        for spec in nuscenes_like_rig(16, 12):
            cameras.append(Camera.from_fov(16, 12, spec.fov_deg, ego @ spec.pose_camera_to_ego @ post))
            ids.append(spec.sensor_id)
    return cameras, ids


def test_a_sound_drive_has_no_warning():
    assert drive_log_warnings(*_drive()) == []


@pytest.mark.parametrize("case, words", [
    ({"offset_m": (412_345.0, 5_412_345.0, 230.0)}, "5412 km from the world origin"),
    ({"post": OPENCV_AS_OPENGL}, "upside down"),
    ({"world": np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])}, "z up"),
    ({"stations": 1}, "holds one station"),
])
def test_each_problem_is_named(case, words):
    problems = drive_log_warnings(*_drive(**case))
    assert len(problems) == 1 and words in problems[0], problems


def test_the_reader_warns_and_still_reads(tmp_path):
    rng = np.random.default_rng(0)
    cameras, ids = _drive()
    images = rng.integers(0, 256, size=(len(cameras), 12, 16, 3), dtype=np.uint8)
    write_drive_log(tmp_path / "good", images, cameras, camera_names=ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DriveLogWarning)
        read_drive_log(tmp_path / "good")
    flipped = [Camera(c.width, c.height, c.K, c.pose_camera_to_world @ OPENCV_AS_OPENGL) for c in cameras]
    write_drive_log(tmp_path / "flipped", images, flipped, camera_names=ids)
    with pytest.warns(DriveLogWarning, match=r"flipped: the cameras look upside down"):
        read_images, _, _ = read_drive_log(tmp_path / "flipped")
    assert read_images.shape == images.shape
