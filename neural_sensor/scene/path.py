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

    def at_many(self, s_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`at` for many arc lengths: ([N, 2] x, y, [N] heading rad) at s_m [N] (beyond the ends: along the end
        segments)."""
        s_m = np.asarray(s_m, dtype=np.float64)
        assert s_m.ndim == 1, s_m.shape
        i = np.clip(np.searchsorted(self.cum, s_m, side="right") - 1, 0, len(self.seg_len) - 1)
        points = self.points[i, :2] + (s_m - self.cum[i])[:, None] * self.dirs[i, :2]
        return points, np.arctan2(self.dirs[i, 1], self.dirs[i, 0])

    def _bounds_t(self, s_window_m) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per segment: the range of t (metres along it) within arc lengths s_window_m = (lo, hi) (None: all of
        it), and whether any of it is (the window clamped to the path, so at least one segment is)."""
        if s_window_m is None:
            return np.zeros_like(self.seg_len), self.seg_len, np.ones(len(self.seg_len), bool)
        lo = min(max(float(s_window_m[0]), 0.0), self.length_m)
        hi = min(max(float(s_window_m[1]), lo), self.length_m)
        usable = (self.cum[1:] >= lo) & (self.cum[:-1] <= hi)
        return np.clip(lo - self.cum[:-1], 0.0, self.seg_len), np.clip(hi - self.cum[:-1], 0.0, self.seg_len), usable

    def distances_m(self, points_xy: np.ndarray, s_window_m: tuple[float, float] | None = None) -> np.ndarray:
        """[P] each point's distance to the polyline (to its nearest segment, not beyond the ends); points_xy [P, 2].
        s_window_m: (lo, hi) arc lengths: to that part of the polyline only."""
        points_xy = np.asarray(points_xy, dtype=np.float64)
        assert points_xy.ndim == 2 and points_xy.shape[1] == 2, points_xy.shape
        lo_t, hi_t, usable = self._bounds_t(s_window_m)
        rel = points_xy[:, None, :] - self.points[None, :-1, :2]  # [P, S, 2]
        t = np.clip(np.einsum("psd,sd->ps", rel, self.dirs[:, :2]), lo_t, hi_t)
        distance = np.linalg.norm(rel - t[..., None] * self.dirs[None, :, :2], axis=2)
        return np.where(usable[None], distance, np.inf).min(axis=1)

    def chord_headings(self, stations_m: np.ndarray, half_m: float = 1.0) -> np.ndarray:
        """[N] the heading (rad) at each arc length of stations_m [N]: of the chord from half_m before it to half_m
        after it (clamped to the ends), so a densely sampled noisy polyline's segments do not jitter it."""
        stations_m = np.asarray(stations_m, dtype=np.float64)
        assert stations_m.ndim == 1, stations_m.shape
        before = np.array([self.at(float(s))[0] for s in np.clip(stations_m - half_m, 0.0, self.length_m)])
        after = np.array([self.at(float(s))[0] for s in np.clip(stations_m + half_m, 0.0, self.length_m)])
        step = after[:, :2] - before[:, :2]
        return np.arctan2(step[:, 1], step[:, 0])

    def nearest(self, points_xy: np.ndarray, s_window_m: tuple[float, float] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each point's nearest place on the polyline (not beyond its ends): ([P] distance m, [P] signed lateral
        offset m, left positive, [P] the heading there, rad, [P] its arc length m); points_xy [P, 2].
        s_window_m: (lo, hi) arc lengths: the nearest place within them (only their segments are looked at)."""
        points_xy = np.asarray(points_xy, dtype=np.float64)
        assert points_xy.ndim == 2 and points_xy.shape[1] == 2, points_xy.shape
        lo_t, hi_t, usable = self._bounds_t(s_window_m)
        first, last = int(np.argmax(usable)), len(usable) - int(np.argmax(usable[::-1]))
        dirs = self.dirs[first:last, :2]
        rel = points_xy[:, None, :] - self.points[None, first:last, :2]  # [P, S, 2]
        t = np.clip(np.einsum("psd,sd->ps", rel, dirs), lo_t[first:last], hi_t[first:last])
        distance = np.linalg.norm(rel - t[..., None] * dirs[None], axis=2)
        j = np.argmin(distance, axis=1)
        rows = np.arange(len(points_xy))
        lateral = dirs[j, 0] * rel[rows, j, 1] - dirs[j, 1] * rel[rows, j, 0]
        side = np.where(lateral < 0.0, -1.0, 1.0)
        return (distance[rows, j], side * distance[rows, j], np.arctan2(dirs[j, 1], dirs[j, 0]),
                self.cum[first + j] + t[rows, j])

    def project(self, xy: np.ndarray, s_window_m: tuple[float, float] | None = None) -> tuple[float, float]:
        """(arc length, signed lateral offset, left positive) of the closest point to xy. s_window_m: (lo, hi) arc
        lengths: the closest point within them (a route that comes back near itself: the part being driven, not
        the leg that happens to be nearest)."""
        lo_t, hi_t, usable = self._bounds_t(s_window_m)
        rel = xy[None, :] - self.points[:-1]
        t = np.clip(np.einsum("sd,sd->s", rel, self.dirs), lo_t, hi_t)
        closest = self.points[:-1] + t[:, None] * self.dirs
        i = int(np.argmin(np.where(usable, np.linalg.norm(xy[None, :] - closest, axis=1), np.inf)))
        lateral = self.dirs[i, 0] * rel[i, 1] - self.dirs[i, 1] * rel[i, 0]
        return float(self.cum[i] + t[i]), float(lateral)
