"""The drive log as the enhancer's reference: its images warped into the rig's cameras.

A reconstruction loses detail its log holds (at the log's own poses the 160x96 log image,
upsampled, is ~3.6 dB closer to the ground truth than the 480x270 render of the fused
Gaussians: README, "where the enhancer's missing decibels are"). `LogReference` keeps a
log's images, cameras and sensor ids with each view's depth (the reconstruction's median
depth rendered at the log pose, for the visibility test), and `warp` gives every rig camera
its reference: the `views` log images of the same sensor nearest to it (camera centres),
warped in through the camera's RENDERED depth with bilinear sampling, the nearest view first
(`neural_sensor.enhance.warp.warp_views(..., sample="bilinear")` is the numpy reference twin;
`_warp_kernel` the compiled fast path, tested against it). A camera whose sensor id the log
does not have takes the nearest log views that look the same way (forward axes within 45
degrees) instead.

Stored with a reconstruction in its SceneCache entry (`reference.npz`: uint8 images, float16
depths, intrinsics, poses and sensor ids), so a cached scene comes back with its reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit, prange

from neural_sensor.camera import Camera

FILE_NAME = "reference.npz"
FACING_COS = float(np.cos(np.radians(45.0)))  # a log view of another sensor id must face within this of the camera


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
    def from_views(cls, images: np.ndarray, cameras: list[Camera], sensor_ids, scene, background) -> "LogReference":
        """From a log's images [V, h, w, 3] (float in [0, 1] or uint8), its cameras and sensor ids, and the scene
        reconstructed from it (whose median depth is rendered at every log view, over `background`)."""
        from neural_sensor.render import render

        images = np.asarray(images)
        assert images.ndim == 4 and images.shape[0] == len(cameras) == len(sensor_ids), (images.shape, len(cameras))
        if images.dtype != np.uint8:
            images = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
        depth = np.concatenate([render(scene, cameras[i:i + 60], backend="cpu", outputs=("rgb", "median_depth"),
                                       background=background).median_depth for i in range(0, len(cameras), 60)])
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
        except (OSError, KeyError, ValueError, AssertionError, EOFError) as err:
            raise ValueError(f"log reference {path} is unreadable ({type(err).__name__}: {err})") from None
        if not (np.isfinite(ref.K).all() and np.isfinite(ref.pose_camera_to_world).all()):
            raise ValueError(f"log reference {path}: non-finite intrinsics or poses")
        return ref

    # ------------------------------------------------------------------ the reference
    def nearest_views(self, sensor_id: str, camera: Camera, views: int) -> np.ndarray:
        """Indices of the `views` log views of `sensor_id` nearest to the camera (centres), nearest first; for a
        sensor id the log lacks, of the views facing within 45 degrees of it."""
        same = np.flatnonzero(self.sensor_ids == sensor_id)
        if len(same) == 0:
            forward = self.pose_camera_to_world[:, :3, 2] @ camera.pose_camera_to_world[:3, 2]
            same = np.flatnonzero(forward > FACING_COS)
        distance = np.linalg.norm(self.pose_camera_to_world[same, :3, 3] - camera.position_world, axis=1)
        return same[np.argsort(distance, kind="stable")[:views]]

    def warp(self, sensor_ids, cameras: list[Camera], depth_m: np.ndarray, alpha: np.ndarray, views: int = 2
             ) -> tuple[np.ndarray, np.ndarray]:
        """Every camera's reference (compiled; `warp_reference` is the numpy twin).

        Args:
            sensor_ids: C sensor ids; cameras: C Cameras of H x W; depth_m [C, H, W] the rendered depth (metres);
            alpha [C, H, W] the rendered alpha (a surface where > 0.5); views: log views per camera.
        Returns:
            rgb [C, H, W, 3] uint8 (the blend rounded to nearest; 0 where unseen: the enhancer's wire dtype, so the
            client sends it as it is) and valid [C, H, W] bool.
        """
        c = len(cameras)
        assert len(sensor_ids) == c and np.shape(depth_m)[0] == c and np.shape(alpha) == np.shape(depth_m), \
            (len(sensor_ids), c, np.shape(depth_m), np.shape(alpha))
        h, w = np.shape(depth_m)[1:]
        rgb = np.zeros((c, h, w, 3), np.uint8)
        valid = np.zeros((c, h, w), np.bool_)
        for i, (sid, cam) in enumerate(zip(sensor_ids, cameras)):
            assert (cam.height, cam.width) == (h, w), (cam.height, cam.width, h, w)
            near = self.nearest_views(str(sid), cam, views)
            if len(near) == 0:
                continue
            _warp_kernel(np.ascontiguousarray(depth_m[i], dtype=np.float32), np.ascontiguousarray(alpha[i], np.float32),
                         cam.K.astype(np.float64), cam.pose_camera_to_world.astype(np.float64),
                         np.ascontiguousarray(self.images[near]), np.ascontiguousarray(self.depth_m[near]),
                         np.ascontiguousarray(self.K[near]), np.ascontiguousarray(self._view[near]), rgb[i], valid[i])
        return rgb, valid


def warp_reference(reference: LogReference, sensor_ids, cameras: list[Camera], depth_m: np.ndarray,
                   alpha: np.ndarray, views: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The numpy reference twin of `LogReference.warp` (`warp_views` with bilinear sampling), its rgb as float32
    in [0, 1] before the fast path's rounding to uint8."""
    from neural_sensor.enhance.warp import warp_views

    out = [warp_views(cam, depth_m[i], alpha[i],
                      [(reference.camera(j), reference.images[j].astype(np.float32) / np.float32(255.0),
                        reference.depth_m[j]) for j in reference.nearest_views(str(sid), cam, views)],
                      sample="bilinear") for i, (sid, cam) in enumerate(zip(sensor_ids, cameras))]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


@njit(parallel=True, cache=True, nogil=True)
def _warp_kernel(depth, alpha, K, pose, images, view_depth, view_K, view_w2c, out_rgb, out_valid):  # pragma: no cover
    """Per target pixel: its surface point (depth, pixel centre) tried in each view in order; the first whose
    nearest pixel agrees in depth (5 % + 0.2 m) gives the bilinear blend of the 2 x 2 pixels around the projection
    that agree too (weights renormalised). Pixels with alpha <= 0.5 or depth <= 0 stay unseen."""
    h, w = depth.shape
    n_views, vh, vw = view_depth.shape
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    for y in prange(h):
        for x in range(w):
            z = depth[y, x]
            if not (alpha[y, x] > 0.5 and z > 0.0):
                continue
            xc = (x + 0.5 - cx) / fx * z
            yc = (y + 0.5 - cy) / fy * z
            px = pose[0, 0] * xc + pose[0, 1] * yc + pose[0, 2] * z + pose[0, 3]
            py = pose[1, 0] * xc + pose[1, 1] * yc + pose[1, 2] * z + pose[1, 3]
            pz = pose[2, 0] * xc + pose[2, 1] * yc + pose[2, 2] * z + pose[2, 3]
            for v in range(n_views):
                m = view_w2c[v]
                qx = m[0, 0] * px + m[0, 1] * py + m[0, 2] * pz + m[0, 3]
                qy = m[1, 0] * px + m[1, 1] * py + m[1, 2] * pz + m[1, 3]
                qz = m[2, 0] * px + m[2, 1] * py + m[2, 2] * pz + m[2, 3]
                if qz <= 0.05:
                    continue
                u = qx / qz * view_K[v, 0, 0] + view_K[v, 0, 2]
                t = qy / qz * view_K[v, 1, 1] + view_K[v, 1, 2]
                un, tn = int(np.floor(u)), int(np.floor(t))
                if un < 0 or un >= vw or tn < 0 or tn >= vh:
                    continue
                tol = 0.05 * qz + 0.2
                if not abs(view_depth[v, tn, un] - qz) < tol:
                    continue
                fu, ft = u - 0.5, t - 0.5
                u0, t0 = int(np.floor(fu)), int(np.floor(ft))
                au, at = fu - u0, ft - t0
                r = 0.0
                g = 0.0
                b = 0.0
                wsum = 0.0
                for k in range(4):
                    du, dt = k % 2, k // 2
                    uu, tt = u0 + du, t0 + dt
                    wk = (au if du else 1.0 - au) * (at if dt else 1.0 - at)
                    if uu < 0 or uu >= vw or tt < 0 or tt >= vh or wk <= 0.0:
                        continue
                    if not abs(view_depth[v, tt, uu] - qz) < tol:
                        continue
                    r += wk * images[v, tt, uu, 0]
                    g += wk * images[v, tt, uu, 1]
                    b += wk * images[v, tt, uu, 2]
                    wsum += wk
                out_rgb[y, x, 0] = np.uint8(r / wsum + 0.5)  # a weighted mean of 8-bit values: <= 255
                out_rgb[y, x, 1] = np.uint8(g / wsum + 0.5)
                out_rgb[y, x, 2] = np.uint8(b / wsum + 0.5)
                out_valid[y, x] = True
                break
