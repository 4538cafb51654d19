"""Camera: pinhole intrinsics and a pose, in the project's one convention.

Camera frame: OpenCV (x right, y down, z forward). World frame: right-handed
FLU (x forward, y left, z up), metres. Pixel (u, v) has its centre at
(u + 0.5, v + 0.5) in the continuous image coordinates K projects to, as in
gsplat. CARLA-style cameras: K = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]] with
f = W / (2 tan(fov_x / 2)) from the horizontal field of view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from neural_sensor.poses import check_pose

MAX_SIDE_PX = 8192  # the largest image side a camera of this tool renders (20000 x 20000 is a typo, not a plan)


@dataclass(frozen=True, eq=False)
class Camera:
    """A pinhole camera.

    width, height: image size in pixels.
    K: [3, 3] intrinsics (fx, fy, cx, cy) in pixels.
    pose_camera_to_world: [4, 4] rigid transform, OpenCV camera -> FLU world.
    """

    width: int
    height: int
    K: np.ndarray  # [3, 3] float64
    pose_camera_to_world: np.ndarray  # [4, 4] float64

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"Camera: width and height must be positive integers, got {name}={value!r}")
            object.__setattr__(self, name, int(value))
        try:
            K = np.asarray(self.K, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"Camera.K must be a [3, 3] array of numbers, got {self.K!r}") from None
        if K.shape != (3, 3):
            raise ValueError(f"Camera.K must be [3, 3], got {K.shape}")
        if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"Camera.K must be finite with positive focal lengths, got {K.tolist()}")
        if K[0, 1] != 0 or K[1, 0] != 0 or not np.array_equal(K[2], [0.0, 0.0, 1.0]):
            raise ValueError(f"Camera.K must be [[fx,0,cx],[0,fy,cy],[0,0,1]] (no skew), got {K.tolist()}")
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "pose_camera_to_world",
                           check_pose(self.pose_camera_to_world, "Camera.pose_camera_to_world"))

    @classmethod
    def from_fov(cls, width: int, height: int, fov_deg: float, pose_camera_to_world: np.ndarray) -> "Camera":
        """CARLA-style camera: horizontal fov in degrees, square pixels, centred principal point."""
        if isinstance(fov_deg, bool) or not isinstance(fov_deg, (int, float, np.floating)) or not (0.0 < fov_deg < 180.0):
            raise ValueError(f"Camera.from_fov: fov must be in (0, 180) degrees, got {fov_deg}")
        if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width <= 0:
            raise ValueError(f"Camera: width and height must be positive integers, got width={width!r}")
        focal = width / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
        K = np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])
        return cls(width, height, K, pose_camera_to_world)

    @classmethod
    def look_at(
        cls,
        width: int,
        height: int,
        fov_deg: float,
        eye_world: np.ndarray,
        target_world: np.ndarray,
        up_world: np.ndarray = (0.0, 0.0, 1.0),
    ) -> "Camera":
        """Camera at `eye_world` looking at `target_world`, image up along `up_world` (FLU world)."""
        eye = np.asarray(eye_world, dtype=np.float64)
        forward = np.asarray(target_world, dtype=np.float64) - eye
        if np.linalg.norm(forward) < 1e-9:
            raise ValueError("Camera.look_at: eye and target coincide")
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, np.asarray(up_world, dtype=np.float64))
        if np.linalg.norm(right) < 1e-9:
            raise ValueError("Camera.look_at: viewing direction is parallel to up")
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        pose = np.eye(4)
        pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, eye
        return cls.from_fov(width, height, fov_deg, pose)

    @property
    def pose_world_to_camera(self) -> np.ndarray:
        """[4, 4] world -> camera transform (gsplat's `viewmat`)."""
        rot = self.pose_camera_to_world[:3, :3]
        out = np.eye(4)
        out[:3, :3] = rot.T
        out[:3, 3] = -rot.T @ self.pose_camera_to_world[:3, 3]
        return out

    @property
    def position_world(self) -> np.ndarray:
        """[3] camera centre in the world frame."""
        return self.pose_camera_to_world[:3, 3].copy()

    def project(self, points_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project world points to continuous pixel coordinates.

        Args:
            points_world: [M, 3] world frame.
        Returns:
            uv [M, 2] (pixel centres at integer + 0.5), depth_m [M] (camera z).
        """
        points = np.asarray(points_world, dtype=np.float64)
        assert points.ndim == 2 and points.shape[1] == 3, points.shape
        view = self.pose_world_to_camera
        cam = points @ view[:3, :3].T + view[:3, 3]
        uv = cam[:, :2] / cam[:, 2:3] * np.array([self.K[0, 0], self.K[1, 1]]) + self.K[:2, 2]
        return uv, cam[:, 2]

    def with_pose(self, pose_camera_to_world: np.ndarray) -> "Camera":
        """Same intrinsics, another pose."""
        return Camera(self.width, self.height, self.K, pose_camera_to_world)
