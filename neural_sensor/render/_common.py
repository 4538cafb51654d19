"""Constants and input checks shared by every render backend.

The constants are gsplat's "classic" rasterisation (DESIGN.md, Rendering
contract). Every backend reads them from here so they cannot drift apart.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from neural_sensor.camera import Camera

ALPHA_THRESHOLD = 1.0 / 255.0  # a Gaussian whose alpha at a pixel is below this is skipped there
MAX_ALPHA = 0.99  # alpha = min(MAX_ALPHA, o * exp(-sigma)); gsplat >= 1.6 and INRIA use 0.99 (gsplat 1.5 used 0.999)
TRANSMITTANCE_THRESHOLD = 1e-4  # a pixel stops when T * (1 - alpha) would fall to this or below (exclusive)
EPS2D = 0.3  # px^2 added to the projected covariance diagonal (screen-space dilation)
GAUSSIAN_EXTEND = 3.33  # bounding-box half-size cap in standard deviations
NEAR_PLANE_M = 0.01  # Gaussians with camera z below this are culled
FAR_PLANE_M = 1e10  # ... and above this
TILE_SIZE = 16  # pixels per tile side
SEMANTIC_MIN_ALPHA = 0.5  # semantic / instance are 0 where the pixel's alpha is below this
MEDIAN_T = 0.5  # median depth: z of the Gaussian that takes the transmittance to this or below (the surface)
LOD_PX = 2.0  # the run's level of detail (render(lod_px=), cpu backend): a group of neighbours is drawn as its
#               merged Gaussian where that one's largest standard deviation projects to <= LOD_PX pixels
RECONSTRUCTION_LOD_PX = 5.0  # ... for a reconstructed scene: made from 160x96 images, one of its pixels spans three
#   of the run's 480x270, so merges up to 4-5 px drop no recorded detail: the six tuning held-out worlds deliver
#   within 0.02 dB of 4 px at every shift (6 px: -0.03 on the path, 8 px: -0.05 to -0.17), and the demo's six
#   cameras render 4-6 ms faster a tick (docs/results.md, 2026-12-05)

ALL_OUTPUTS = ("rgb", "depth", "alpha", "semantic", "instance", "median_depth")


@dataclass
class CameraBatch:
    """Cameras stacked for a backend: all share one image size."""

    viewmats: np.ndarray  # [C, 4, 4] float64, pose_world_to_camera per camera
    Ks: np.ndarray  # [C, 3, 3] float64
    width: int
    height: int

    @property
    def camera_positions_world(self) -> np.ndarray:
        """[C, 3] camera centres in the world frame."""
        rot = self.viewmats[:, :3, :3]
        return -np.einsum("cji,cj->ci", rot, self.viewmats[:, :3, 3])


def stack_cameras(cameras: Camera | Sequence[Camera]) -> CameraBatch:
    """Stack one camera or a list of cameras that share width and height."""
    if isinstance(cameras, Camera):
        cameras = [cameras]
    if not isinstance(cameras, (list, tuple)):
        raise ValueError(f"render: cameras must be a Camera or a list of Cameras, got {type(cameras).__name__}")
    cameras = list(cameras)
    if not cameras:
        raise ValueError("render: no cameras given")
    for cam in cameras:
        if not isinstance(cam, Camera):
            raise ValueError(f"render: cameras must be Camera objects, got {type(cam).__name__}")
    sizes = {(c.width, c.height) for c in cameras}
    if len(sizes) != 1:
        raise ValueError(f"render: all cameras in one call must share width x height, got {sorted(sizes)}")
    width, height = sizes.pop()
    return CameraBatch(
        viewmats=np.stack([c.pose_world_to_camera for c in cameras]),
        Ks=np.stack([c.K for c in cameras]),
        width=width,
        height=height,
    )


def check_outputs(outputs: Sequence[str]) -> tuple[str, ...]:
    """Validate the requested output names."""
    if isinstance(outputs, str) or not isinstance(outputs, (list, tuple)):
        raise ValueError(f"render: outputs must be a list or tuple of names from {ALL_OUTPUTS}, got {outputs!r}")
    outputs = tuple(outputs)
    unknown = [o for o in outputs if o not in ALL_OUTPUTS]
    if unknown or not outputs:
        raise ValueError(f"render: outputs must be a non-empty subset of {ALL_OUTPUTS}, got {outputs}")
    return outputs


SKY_RGB = (0.53, 0.71, 0.92)  # the default background: a clear noon sky (the CLI and scenes use the same)


def check_lod_px(lod_px, who: str) -> float:
    """lod_px as a float: a finite real >= 0 (0 = every Gaussian, exact); ValueError naming `who` otherwise."""
    if isinstance(lod_px, bool) or not (isinstance(lod_px, numbers.Real) and math.isfinite(lod_px) and lod_px >= 0):
        raise ValueError(f"{who}: lod_px must be a finite number >= 0 (0 = every Gaussian, exact), got {lod_px!r}")
    return float(lod_px)


def check_background(background: Sequence[float]) -> np.ndarray:
    """[3] float32 background colour in [0, 1]."""
    try:
        bg = np.asarray(background, dtype=np.float32)
    except (TypeError, ValueError):
        bg = np.zeros(0, np.float32)
    if bg.shape != (3,) or not np.all(np.isfinite(bg)) or bg.min() < 0 or bg.max() > 1:
        raise ValueError(f"render: background must be 3 floats in [0, 1], got {background!r}")
    return bg
