"""Temporal accumulation of the enhancer's output: each camera's previous image, reprojected, blended in.

The enhancer refines every tick on its own, so detail it adds (above all from the drive log's reference,
warped through the render's imperfect depth) can swim from one tick to the next. As a game engine's
temporal anti-aliasing does, `TemporalFilter` keeps each camera's last delivered image with its camera
and rendered depth (the rig's median depth when it renders one, else the expected depth); the next
tick, every surface pixel's point (the new render's depth) is projected into the previous camera, and
where that camera saw the same surface (its depth there within 5 % + 0.2 m, as the log warp's test) the
previous image is sampled bilinearly, CLAMPED to the range of
the new image's 3 x 3 neighbourhood (per channel, so a stale colour, e.g. a car that moved, cannot ghost
in), and blended: out = (1 - blend) new + blend history. The output becomes the next history
(an exponential moving average along each surface point's track). Sky and pixels the previous camera did
not see take the new image as it is.

`TemporalFilter.apply` runs the compiled kernel; `accumulate_reference` is its numpy twin (`warp.warp_views`
for the reprojection), tested equal. State is per sensor id: a camera that moved more than `max_jump_m` since
its last tick starts afresh, and `reset()` forgets a camera (the rig calls it for a tick the enhancer did not
refine; a new rig, as for a new scene, starts empty).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from neural_sensor.camera import Camera
from neural_sensor.enhance._warp_kernels import WARP_FASTMATH, pixel_to_view, project_pixel, sample_projected

MAX_JUMP_M = 5.0  # a camera that moved farther than this since its last tick starts afresh
TEMPORAL_BLEND = 0.6  # the run's default history weight (RunOptions.temporal_blend, --temporal-blend). 0.5 took
#   0.08-0.10 levels of flicker off enhancer-run stage 6 at the same PSNR (its CARD); with stage 7, 0.6 takes
#   another 0.016-0.017 off at every shift for 0.003 dB (six held-out worlds, docs/results.md, "2026-12-02"),
#   which brings what the agent gets on the path below the raw render's flicker (1.278 against 1.291; 0.5: 1.294)


class TemporalFilter:
    """Per-camera history of delivered images (see the module docstring). blend in [0, 1): the history's weight."""

    def __init__(self, blend: float, max_jump_m: float = MAX_JUMP_M):
        if not (isinstance(blend, (int, float)) and 0.0 <= float(blend) < 1.0):
            raise ValueError(f"TemporalFilter: blend must be in [0, 1), got {blend!r}")
        self.blend = float(blend)
        self.max_jump_m = float(max_jump_m)
        self._history: dict[str, tuple[Camera, np.ndarray, np.ndarray]] = {}
        self._ticks: dict[str, int] = {}  # per camera: the ticks its history holds (1: this tick's alone)

    def reset(self, sensor_id: str | None = None) -> None:
        """Forget one camera's history (or every camera's)."""
        if sensor_id is None:
            self._history.clear()
            self._ticks.clear()
        else:
            self._history.pop(sensor_id, None)
            self._ticks.pop(sensor_id, None)

    def history_ticks(self, sensor_id: str) -> int:
        """How many ticks the camera's last delivered image accumulates (1: no history blended in, as after a raw
        tick or a jump; 0: none delivered since the last reset). A record tells by it why two runs' images differ
        a few ticks after a raw one."""
        return self._ticks.get(sensor_id, 0)

    def apply(self, sensor_id: str, camera: Camera, depth_m: np.ndarray, alpha: np.ndarray, rgb: np.ndarray
              ) -> np.ndarray:
        """The delivered image for this tick, [H, W, 3] float32 in [0, 1] (a new array), from the enhanced rgb
        [H, W, 3] and the render's depth_m / alpha [H, W] at `camera`; it becomes the history."""
        h, w = depth_m.shape
        assert rgb.shape == (h, w, 3) and alpha.shape == (h, w) and (camera.height, camera.width) == (h, w), \
            (rgb.shape, alpha.shape, depth_m.shape, camera.width, camera.height)
        current = np.ascontiguousarray(rgb, dtype=np.float32)
        depth = np.array(depth_m, dtype=np.float32, order="C")  # a copy: it is kept as the next tick's history
        previous = self._history.get(sensor_id)
        if previous is not None and (previous[1].shape != current.shape or np.linalg.norm(
                previous[0].position_world - camera.position_world) > self.max_jump_m):
            previous = None
        if previous is None or self.blend == 0.0:
            out = current.copy()
        else:
            prev_cam, prev_rgb, prev_depth = previous
            out = np.empty_like(current)
            _accumulate_kernel(depth, np.ascontiguousarray(alpha, np.float32),
                               pixel_to_view(camera.K, camera.pose_camera_to_world, prev_cam.K[None],
                                             prev_cam.pose_world_to_camera[None]), current,
                               prev_rgb[None], prev_depth[None], np.float32(self.blend), out)
        self._history[sensor_id] = (camera, out, depth)
        self._ticks[sensor_id] = 1 if previous is None or self.blend == 0.0 else self._ticks.get(sensor_id, 0) + 1
        return out.copy()  # the caller's to keep or change; the history stays as delivered


def accumulate_reference(camera: Camera, depth_m: np.ndarray, alpha: np.ndarray, rgb: np.ndarray,
                         prev_camera: Camera, prev_rgb: np.ndarray, prev_depth_m: np.ndarray, blend: float
                         ) -> np.ndarray:
    """The numpy twin of one `TemporalFilter.apply` with a history: rgb [H, W, 3], depth_m / alpha [H, W] at
    `camera`; the previous camera's delivered prev_rgb [H, W, 3] and its depth prev_depth_m [H, W]."""
    from neural_sensor.enhance.warp import warp_views

    history, seen = warp_views(camera, depth_m, alpha, [(prev_camera, prev_rgb, prev_depth_m)], sample="bilinear")
    padded = np.pad(rgb, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = depth_m.shape
    windows = np.stack([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)])
    clamped = np.clip(history, windows.min(0), windows.max(0))
    out = np.where(seen[..., None], (1.0 - blend) * rgb + blend * clamped, rgb)
    return out.astype(np.float32)


@njit(parallel=True, cache=True, nogil=True, fastmath=WARP_FASTMATH)
def _accumulate_kernel(depth, alpha, to_prev, current, prev_rgb, prev_depth, blend, out):  # pragma: no cover
    """out = current, and where the previous camera (prev_* with a leading axis of one view; to_prev [1, 3, 4] this
    camera's pixels into it, `pixel_to_view`) saw the pixel's surface point (`sample_projected`: the nearest pixel's
    depth within 5 % + 0.2 m, bilinear over the 2 x 2 pixels that agree too), (1 - blend) current +
    blend clamp(that history colour, current's 3 x 3 min / max). The 3 x 3 min / max is taken as a 3-row min / max
    per column first (each row's thread keeps its own), then over three columns."""
    h, w = depth.shape
    for y in prange(h):
        lo = np.empty((w, 3), np.float32)  # per column, the min / max over rows y - 1 .. y + 1 (clamped)
        hi = np.empty((w, 3), np.float32)
        ya, yb = max(y - 1, 0), min(y + 1, h - 1)
        for x in range(w):
            for c in range(3):
                a, b, d = current[ya, x, c], current[y, x, c], current[yb, x, c]
                lo[x, c] = min(a, min(b, d))
                hi[x, c] = max(a, max(b, d))
        for x in range(w):
            c0, c1, c2 = current[y, x, 0], current[y, x, 1], current[y, x, 2]
            out[y, x, 0], out[y, x, 1], out[y, x, 2] = c0, c1, c2
            z = depth[y, x]
            if not (alpha[y, x] > 0.5 and z > 0.0):
                continue
            uq, tq, q = project_pixel(to_prev, 0, x, y, z)
            seen, h0, h1, h2 = sample_projected(uq, tq, q, 0, prev_rgb, prev_depth)
            if not seen:
                continue
            xa, xb = max(x - 1, 0), min(x + 1, w - 1)
            lo0, hi0 = min(lo[xa, 0], min(lo[x, 0], lo[xb, 0])), max(hi[xa, 0], max(hi[x, 0], hi[xb, 0]))
            lo1, hi1 = min(lo[xa, 1], min(lo[x, 1], lo[xb, 1])), max(hi[xa, 1], max(hi[x, 1], hi[xb, 1]))
            lo2, hi2 = min(lo[xa, 2], min(lo[x, 2], lo[xb, 2])), max(hi[xa, 2], max(hi[x, 2], hi[xb, 2]))
            out[y, x, 0] = (1.0 - blend) * c0 + blend * min(max(h0, lo0), hi0)
            out[y, x, 1] = (1.0 - blend) * c1 + blend * min(max(h1, lo1), hi1)
            out[y, x, 2] = (1.0 - blend) * c2 + blend * min(max(h2, lo2), hi2)
