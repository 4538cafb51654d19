"""Warping posed views into a target camera through a depth map, and context visibility.

Used three ways: the enhancer's optional reference input (the nearest context view
warped into the target through the RENDERED depth), the fidelity benchmark's
visible / disoccluded masks (through the GROUND-TRUTH depth) and its warp baseline.
Each target pixel takes its colour from the nearest view (camera centres) that sees
its surface point: the point projects inside that view and agrees with that view's
depth within 5 % + 0.2 m. The colour is that view's pixel (`sample="nearest"`), or
(`sample="bilinear"`, for sources of lower resolution than the target such as a drive
log's 160x96 images under a 480x270 rig) the bilinear blend of the 2 x 2 source pixels
around the projection that pass the same depth test, their weights renormalised. With
`weights`, a pixel instead takes the weighted mean over every view that sees it (the drive
log's reference: `log_warp`).
"""

from __future__ import annotations

import numpy as np

from neural_sensor.camera import Camera


def points_world(camera: Camera, depth_m: np.ndarray) -> np.ndarray:
    """[H, W, 3] world points of the pixel centres of a depth map [H, W] (camera z, metres)."""
    assert depth_m.shape == (camera.height, camera.width), (depth_m.shape, camera.height, camera.width)
    ys, xs = np.meshgrid(np.arange(camera.height) + 0.5, np.arange(camera.width) + 0.5, indexing="ij")
    cam = np.stack([(xs - camera.K[0, 2]) / camera.K[0, 0] * depth_m, (ys - camera.K[1, 2]) / camera.K[1, 1] * depth_m,
                    depth_m], axis=-1)
    return cam @ camera.pose_camera_to_world[:3, :3].T + camera.pose_camera_to_world[:3, 3]


def _lookup(camera: Camera, points: np.ndarray):
    """Pixel indices of world points [..., 3] in a camera, their depth, and whether they fall inside the image."""
    with np.errstate(divide="ignore", invalid="ignore"):  # points at the camera centre (z = 0): outside below
        uv, z = camera.project(points.reshape(-1, 3))
        uv = np.where(np.isfinite(uv), uv, -1.0)
    u, v = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    inside = (z > 0.05) & (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height)
    return u.clip(0, camera.width - 1), v.clip(0, camera.height - 1), z, inside


def warp_views(target: Camera, target_depth_m: np.ndarray, target_alpha: np.ndarray,
               views: list[tuple[Camera, np.ndarray, np.ndarray]], sample: str = "nearest",
               weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Warp posed views into `target` through its depth.

    Args:
        target: the target camera; target_depth_m [H, W] metres; target_alpha [H, W] (surface where > 0.5).
        views: (camera, rgb [h, w, 3], depth_m [h, w]) per view; sizes may differ from the target's.
        sample: "nearest" (the source pixel the point falls in) or "bilinear" (see the module docstring).
        weights: None (each pixel from the nearest view that sees it) or [len(views)] > 0: each pixel the
            weighted mean over the views that see it (`log_warp.log_view_weights` makes them).
    Returns:
        rgb [H, W, 3] float32 (0 where no view sees the point) and visible [H, W] bool.
    """
    if sample not in ("nearest", "bilinear"):
        raise ValueError(f"warp_views: sample must be 'nearest' or 'bilinear', got {sample!r}")
    h, w = target_depth_m.shape
    assert target_alpha.shape == (h, w), (target_alpha.shape, h, w)
    points = points_world(target, target_depth_m)
    solid = (target_alpha.reshape(-1) > 0.5) & (target_depth_m.reshape(-1) > 0)
    if weights is not None:
        assert np.shape(weights) == (len(views),) and np.all(np.asarray(weights) > 0), (np.shape(weights), len(views))
        total = np.zeros((h * w, 3), np.float64)
        weight_sum = np.zeros(h * w, np.float64)
        for (cam, rgb, depth), wv in zip(views, weights):
            assert rgb.shape == (cam.height, cam.width, 3)
            index = _source_index(points, solid, cam, depth)
            seen = index >= 0
            colour = (rgb.reshape(-1, 3)[index[seen]] if sample == "nearest"
                      else _bilinear(cam, rgb, depth, points.reshape(-1, 3)[seen]))
            total[seen] += float(wv) * colour
            weight_sum[seen] += float(wv)
        visible = weight_sum > 0
        warped = np.zeros((h * w, 3), np.float32)
        warped[visible] = total[visible] / weight_sum[visible, None]
        return warped.reshape(h, w, 3), visible.reshape(h, w)
    visible = np.zeros(h * w, bool)
    warped = np.zeros((h * w, 3), np.float32)
    for cam, rgb, depth in sorted(views, key=lambda v: np.linalg.norm(v[0].position_world - target.position_world)):
        assert rgb.shape == (cam.height, cam.width, 3)
        index = _source_index(points, solid, cam, depth)
        fill = (index >= 0) & ~visible
        if sample == "nearest":
            warped[fill] = rgb.reshape(-1, 3)[index[fill]]
        else:
            warped[fill] = _bilinear(cam, rgb, depth, points.reshape(-1, 3)[fill])
        visible |= index >= 0
    return warped.reshape(h, w, 3), visible.reshape(h, w)


def _source_index(points: np.ndarray, solid: np.ndarray, cam: Camera, depth_m: np.ndarray) -> np.ndarray:
    """[P] flat pixel index in `cam` of each world point [P, 3] it sees (inside the image, its depth there within
    5 % + 0.2 m of the point's), -1 elsewhere and where `solid` [P] is False."""
    assert depth_m.shape == (cam.height, cam.width), (depth_m.shape, cam.height, cam.width)
    u, v, z, inside = _lookup(cam, points)
    consistent = inside & (np.abs(depth_m[v, u] - z) < 0.05 * z + 0.2) & solid
    return np.where(consistent, v * cam.width + u, -1)


def _bilinear(cam: Camera, rgb: np.ndarray, depth_m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[P, 3] colours of world points [P, 3] that `cam` sees (its nearest pixel passes the depth test): the
    bilinear blend of the 2 x 2 pixels around each projection, over those that pass the depth test too."""
    uv, z = cam.project(points)
    x, y = uv[:, 0] - 0.5, uv[:, 1] - 0.5  # in pixel-centre units
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    total = np.zeros((len(points), 3), np.float64)
    weight = np.zeros(len(points), np.float64)
    for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        u, v = x0 + dx, y0 + dy
        inside = (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
        u, v = u.clip(0, cam.width - 1), v.clip(0, cam.height - 1)
        ok = inside & (np.abs(depth_m[v, u] - z) < 0.05 * z + 0.2)
        wgt = np.where(ok, wgt, 0.0)
        total += wgt[:, None] * rgb[v, u]
        weight += wgt
    # the nearest pixel (a bilinear weight >= 0.25) passed the test, so the weight is never 0
    return (total / np.maximum(weight, 1e-12)[:, None]).astype(np.float32)


def source_pixels(target: Camera, target_depth_m: np.ndarray, target_alpha: np.ndarray, source: Camera,
                  source_depth_m: np.ndarray) -> np.ndarray:
    """Where each target pixel's surface point lies in a source view: `warp_views` for one view, as indices.

    Args: target camera, target_depth_m [H, W] metres, target_alpha [H, W] (surface where > 0.5), the source
    camera and its depth source_depth_m [h, w].
    Returns: [H, W] int64 flat index into the source image (row * w + column), -1 where the source does not
    see the point (outside it, hidden: depths disagree, or no surface).
    """
    h, w = target_depth_m.shape
    assert target_alpha.shape == (h, w), (target_alpha.shape, h, w)
    solid = (target_alpha.reshape(-1) > 0.5) & (target_depth_m.reshape(-1) > 0)
    return _source_index(points_world(target, target_depth_m), solid, source, source_depth_m).reshape(h, w)


def visibility_masks(target: Camera, target_depth_m: np.ndarray, target_alpha: np.ndarray,
                     views: list[tuple[Camera, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Masks [H, W] of surface pixels seen by some view and of disoccluded ones (surface seen by none; sky is
    neither), and the warp [H, W, 3] of the views (see warp_views)."""
    warped, visible = warp_views(target, target_depth_m, target_alpha, views)
    solid = (target_alpha > 0.5) & (target_depth_m > 0)
    return visible, solid & ~visible, warped
