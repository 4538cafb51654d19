"""The drive log as the enhancer's reference: its images warped into the rig's cameras.

A reconstruction loses detail its log holds (at the log's own poses the 160x96 log image,
upsampled, is ~3.6 dB closer to the ground truth than the 480x270 render of the fused
Gaussians: docs/results.md, "where the enhancer's missing decibels are"), all the more when the log is
recorded at a higher resolution than the network reads (drive.RECORD_SIZE). `LogReference` keeps a
log's images, cameras and sensor ids with each view's depth (the reconstruction's median
depth rendered at the log pose, for the visibility test), and `warp` gives every rig camera
its reference: the log images of the same sensor nearest to it warped in through the camera's
RENDERED depth and blended by distance, the other sensors' views filling what those do not see
(`neural_sensor.enhance.log_warp`, where the per-tick warp lives so that changing it never invalidates a cached
scene).

Stored with a reconstruction in its SceneCache entry (`reference.npz`: uint8 images, float16
depths, intrinsics, poses and sensor ids), so a cached scene comes back with its reference.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neural_sensor.camera import Camera

FILE_NAME = "reference.npz"
REFERENCE_LOD_PX = 2.0  # the level of detail the views' depths are rendered at (pixels of the reference's images, 320
#   wide for a generated drive: about the colour refinement's 1.5 px at 160 wide). The demo drive's 306 views at
#   320x192 took 6.55 s instead of 7.97-8.36 s within its reconstruction (alternating fresh processes; AMD EPYC, 2
#   threads); 0.04 % of their pixels are more than 5 % away from the exact render's depth. A render of the median
#   depth alone stops each pixel where the median is found (render/cpu.py, the same values): 5.45 -> 3.97 s for
#   those 306 views (one process, 2026-12-02 fifth round)


@dataclass
class LogReference:
    """A drive log's views for the enhancer's reference input (see the module docstring).

    images: [V, h, w, 3] uint8; depth_m: [V, h, w] float32 (camera z, the reconstruction's median depth);
    K: [V, 3, 3] and pose_camera_to_world: [V, 4, 4] float64; sensor_ids: [V] str.
    """

    images: np.ndarray
    depth_m: np.ndarray
    K: np.ndarray
    pose_camera_to_world: np.ndarray
    sensor_ids: np.ndarray

    def __post_init__(self) -> None:
        v, h, w = self.depth_m.shape
        assert self.images.shape == (v, h, w, 3) and self.images.dtype == np.uint8, (self.images.shape, self.images.dtype)
        assert self.K.shape == (v, 3, 3) and self.pose_camera_to_world.shape == (v, 4, 4), (self.K.shape, v)
        assert len(self.sensor_ids) == v, (len(self.sensor_ids), v)
        self.depth_m = np.ascontiguousarray(self.depth_m, dtype=np.float32)
        self._view = np.linalg.inv(self.pose_camera_to_world)  # world -> camera

    def __len__(self) -> int:
        return len(self.depth_m)

    @classmethod
    def from_views(cls, images: np.ndarray, cameras: list[Camera], sensor_ids, scene, background,
                   lod_px: float = REFERENCE_LOD_PX) -> "LogReference":
        """From a log's images [V, h, w, 3] (float in [0, 1] or uint8), its cameras and sensor ids, and the scene
        reconstructed from it (whose median depth is rendered at every log view, over `background`, at lod_px
        pixels' level of detail: 0 renders it exactly, as a benchmark's ground truth does)."""
        from neural_sensor.render import render

        images = np.asarray(images)
        assert images.ndim == 4 and images.shape[0] == len(cameras) == len(sensor_ids), (images.shape, len(cameras))
        if images.dtype != np.uint8:
            images = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
        depth = np.concatenate([render(scene, cameras[i:i + 60], backend="cpu", outputs=("median_depth",),
                                       background=background, lod_px=lod_px).median_depth
                                for i in range(0, len(cameras), 60)])
        return cls(images, depth, np.stack([c.K for c in cameras]), np.stack([c.pose_camera_to_world for c in cameras]),
                   np.array([str(s) for s in sensor_ids]))

    def camera(self, index: int) -> Camera:
        return Camera(self.depth_m.shape[2], self.depth_m.shape[1], self.K[index], self.pose_camera_to_world[index])

    # ------------------------------------------------------------------ storage
    def save(self, path: Path | str) -> None:
        np.savez(path, images=self.images, depth_m=self.depth_m.astype(np.float16), K=self.K,
                 pose_camera_to_world=self.pose_camera_to_world, sensor_ids=self.sensor_ids.astype(str))

    @classmethod
    def load(cls, path: Path | str) -> "LogReference":
        """Read `save`'s file; ValueError naming the file when it is damaged."""
        try:
            with np.load(path, allow_pickle=False) as data:
                ref = cls(data["images"], data["depth_m"].astype(np.float32), data["K"].astype(np.float64),
                          data["pose_camera_to_world"].astype(np.float64), data["sensor_ids"])
        except (OSError, KeyError, ValueError, AssertionError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"log reference {path} is unreadable ({type(err).__name__}: {err})") from None
        if not (np.isfinite(ref.K).all() and np.isfinite(ref.pose_camera_to_world).all()):
            raise ValueError(f"log reference {path}: non-finite intrinsics or poses")
        return ref

    @property
    def world_to_camera(self) -> np.ndarray:
        """[V, 4, 4] each view's world -> camera transform."""
        return self._view

    def warp(self, sensor_ids, cameras: list[Camera], depth_m: np.ndarray, alpha: np.ndarray, views: int = 2,
             fallback: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Every camera's reference: `neural_sensor.enhance.log_warp.warp_log` (rgb [C, H, W, 3] uint8, valid
        [C, H, W] bool from depth_m / alpha [C, H, W]; fallback: the other sensors' views fill in what the
        camera's own do not see; the per-tick warp lives there, outside the scene cache's code hash)."""
        from neural_sensor.enhance.log_warp import warp_log

        return warp_log(self, sensor_ids, cameras, depth_m, alpha, views, fallback)
