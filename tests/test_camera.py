"""Camera: intrinsics from fov, frames, projection of known points."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neural_sensor.camera import Camera


def test_intrinsics_from_fov_carla_convention():
    cam = Camera.from_fov(800, 600, 90.0, np.eye(4))
    # f = W / (2 tan(fov/2)) = 800 / 2 = 400 for 90 degrees
    np.testing.assert_allclose(cam.K, [[400, 0, 400], [0, 400, 300], [0, 0, 1]], atol=1e-9)
    cam = Camera.from_fov(1600, 900, 70.0, np.eye(4))
    assert cam.K[0, 0] == pytest.approx(1600 / (2 * math.tan(math.radians(35))))
    assert cam.K[1, 1] == cam.K[0, 0]


def test_known_point_projects_to_hand_computed_pixel():
    # camera 1.5 m up at x=2, looking along world +x (FLU): OpenCV z = world x, x = -world y, y = -world z
    cam = Camera.look_at(640, 360, 90.0, [2.0, 0.0, 1.5], [12.0, 0.0, 1.5])
    f = 320.0
    point = np.array([[12.0, 1.0, 0.5]])  # 10 m ahead, 1 m to the left, 1 m below the camera
    uv, depth = cam.project(point)
    np.testing.assert_allclose(depth, [10.0], atol=1e-9)
    # left of centre (u smaller) and below centre (v larger)
    np.testing.assert_allclose(uv[0], [320.0 - f * 1.0 / 10.0, 180.0 + f * 1.0 / 10.0], atol=1e-9)


def test_look_at_frame_is_opencv():
    cam = Camera.look_at(100, 100, 60.0, [0, 0, 0], [1, 0, 0])
    rot = cam.pose_camera_to_world[:3, :3]
    np.testing.assert_allclose(rot[:, 0], [0, -1, 0], atol=1e-12)  # camera x (right) = world -y
    np.testing.assert_allclose(rot[:, 1], [0, 0, -1], atol=1e-12)  # camera y (down) = world -z
    np.testing.assert_allclose(rot[:, 2], [1, 0, 0], atol=1e-12)  # camera z (forward) = world x
    np.testing.assert_allclose(cam.pose_world_to_camera @ cam.pose_camera_to_world, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(cam.position_world, [0, 0, 0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(width=0, height=10, K=np.eye(3), pose_camera_to_world=np.eye(4)), "positive integers"),
        (dict(width=10, height=10, K=np.eye(2), pose_camera_to_world=np.eye(4)), r"K must be \[3, 3\]"),
        (dict(width=10, height=10, K=-np.eye(3), pose_camera_to_world=np.eye(4)), "positive focal"),
        (dict(width=10, height=10, K=np.array([[1.0, 0.1, 5], [0, 1, 5], [0, 0, 1]]), pose_camera_to_world=np.eye(4)),
         "no skew"),
        (dict(width=10, height=10, K=np.eye(3), pose_camera_to_world=np.full((4, 4), np.nan)), "NaN"),
        (dict(width=10, height=10, K=np.eye(3), pose_camera_to_world=np.diag([1.0, 1.0, -1.0, 1.0])),
         "not a proper rotation"),
        (dict(width=10, height=10, K=np.eye(3), pose_camera_to_world=np.eye(3)), r"must be \[4, 4\]"),
    ],
)
def test_bad_cameras_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Camera(**kwargs)


@pytest.mark.parametrize("width, K", [(None, np.eye(3)), (float("inf"), np.eye(3)), (np.array([5]), np.eye(3)),
                                      (10, "K"), (True, np.eye(3))])
def test_bad_camera_types_raise_value_error(width, K):
    with pytest.raises(ValueError):
        Camera(width, 10, K, np.eye(4))
    with pytest.raises(ValueError, match="fov"):
        Camera.from_fov(10, 10, "90", np.eye(4))


def test_look_at_degenerate():
    with pytest.raises(ValueError, match="coincide"):
        Camera.look_at(10, 10, 60, [1, 1, 1], [1, 1, 1])
    with pytest.raises(ValueError, match="parallel to up"):
        Camera.look_at(10, 10, 60, [0, 0, 0], [0, 0, 5])
    with pytest.raises(ValueError, match="fov"):
        Camera.from_fov(10, 10, 180.0, np.eye(4))
