"""Path: a polyline with arc-length parametrisation (lanes, routes, recorded drives)."""

from __future__ import annotations

import math

import numpy as np


class Path:
    """A polyline with arc-length parametrisation: position and heading at s (clamped, extrapolated linearly)."""

    def __init__(self, points_m: np.ndarray):
        points = np.asarray(points_m, dtype=np.float64)
        assert points.ndim == 2 and points.shape[1] >= 2 and len(points) >= 2, points.shape
        # a point repeating the one before it (polylines joined end to start) would be a zero-length segment with
        # no direction: dropped
        step = np.linalg.norm(np.diff(points[:, :2], axis=0), axis=1)
        keep = np.concatenate([[True], step > 1e-9])
        if keep.sum() < 2:
            raise ValueError(f"Path: a polyline needs two distinct points, got {len(points)} at one place")
        self.points = points[keep]
        seg = np.diff(self.points, axis=0)
        self.seg_len = np.linalg.norm(seg, axis=1)
        self.cum = np.concatenate([[0.0], np.cumsum(self.seg_len)])
        self.length_m = float(self.cum[-1])
        self.dirs = seg / self.seg_len[:, None]

    def at(self, s_m: float) -> tuple[np.ndarray, float]:
        """(x, y) and heading (rad) at arc length s (beyond the ends: along the end segments)."""
        i = int(np.clip(np.searchsorted(self.cum, s_m, side="right") - 1, 0, len(self.seg_len) - 1))
        point = self.points[i] + (s_m - self.cum[i]) * self.dirs[i]
        return point, math.atan2(self.dirs[i, 1], self.dirs[i, 0])

    def distances_m(self, points_xy: np.ndarray) -> np.ndarray:
        """[P] each point's distance to the polyline (to its nearest segment, not beyond the ends); points_xy [P, 2]."""
        points_xy = np.asarray(points_xy, dtype=np.float64)
        assert points_xy.ndim == 2 and points_xy.shape[1] == 2, points_xy.shape
        rel = points_xy[:, None, :] - self.points[None, :-1, :2]  # [P, S, 2]
        t = np.clip(np.einsum("psd,sd->ps", rel, self.dirs[:, :2]), 0.0, self.seg_len)
        return np.linalg.norm(rel - t[..., None] * self.dirs[None, :, :2], axis=2).min(axis=1)

    def project(self, xy: np.ndarray) -> tuple[float, float]:
        """(arc length, signed lateral offset, left positive) of the closest point to xy."""
        rel = xy[None, :] - self.points[:-1]
        t = np.clip(np.einsum("sd,sd->s", rel, self.dirs), 0.0, self.seg_len)
        closest = self.points[:-1] + t[:, None] * self.dirs
        i = int(np.argmin(np.linalg.norm(xy[None, :] - closest, axis=1)))
        lateral = self.dirs[i, 0] * rel[i, 1] - self.dirs[i, 1] * rel[i, 0]
        return float(self.cum[i] + t[i]), float(lateral)
