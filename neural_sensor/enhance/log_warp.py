"""A drive log's images warped into the rig's cameras: the enhancer's reference input.

Every rig camera takes the `views` log views of its sensor id nearest to it (camera centres; a sensor id the log
lacks takes the views facing within 45 degrees of it), each warped in through the camera's RENDERED depth with
bilinear sampling (a surface pixel's point must agree with the view's own depth within 5 % + 0.2 m, as
`warp.warp_views`), and BLENDED per pixel by weights that change continuously as the camera moves
(`log_view_weights`): view i of the k nearest gets 1 / d_i - 1 / d_(k+1), d the distance between camera
centres (floored at 0.1 m; views at one centre count once), so a view enters the blend at weight zero and the
one it replaces leaves at weight zero. Weights are renormalised per pixel over the views that see it, so where
only one view sees a surface (a frustum's border, a disocclusion) that view's colour is taken whatever its
weight, and such pixels can still change at once as views come and go; everywhere else the reference changes
continuously. Taking the nearest view first instead (the 2026-12-01 stage 5 enhancer's input) swapped the
whole reference image the moment another view became nearer, and the enhancer's output flickered with it.

Where none of those views sees a pixel, the OTHER sensors' log views fill it in (`fallback=True`, the default;
`fallback_view_weights`): each other sensor id's `views` nearest views, weighted alike and shared evenly between
the sensors whose nearest view faces within 90 degrees of the camera. A rig camera moved off the recorded path
sees parts of the street that its own log views missed but a neighbouring camera's saw (the road and facades at
the edges of the right-hand cameras when the car moves left): 2-3 m off the path that fills 14-39 % of such a
camera's pixels (docs/results.md, "2026-12-04: the other cameras' log views").

`warp_log` is the compiled fast path (numba, rows in parallel) the rig runs every tick; `warp_log_reference` its
numpy twin (`warp.warp_views(..., sample="bilinear", weights=...)`), tested equal. The log itself (images, the
depth of each view, cameras) is `neural_sensor.reconstruct.reference.LogReference`, kept with the reconstruction;
this module holds only what is computed from it per tick, so changing it never invalidates a cached scene.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from neural_sensor.camera import Camera
from neural_sensor.enhance._warp_kernels import WARP_FASTMATH, pixel_to_view, project_pixel, sample_projected

FACING_COS = float(np.cos(np.radians(45.0)))  # a log view of another sensor id must face within this of the camera
FALLBACK_FACING_COS = 0.0  # another sensor fills in only when its nearest view faces within 90 degrees of the camera
MIN_DISTANCE_M = 0.1  # distances below this count as this (a camera at a log view takes ~all of it)
SAME_CENTRE_M = 0.01  # log views whose centres are closer than this count once (the nearest of them)


def log_view_weights(reference, sensor_id: str, camera: Camera, views: int) -> tuple[np.ndarray, np.ndarray]:
    """The log views blended into `camera`'s reference and their weights (see the module docstring).

    Args: reference a LogReference; the camera's sensor id; camera; views (k) the most views blended.
    Returns: indices [n] int64 into the log (nearest first, n <= k, only views of weight > 0) and weights [n]
    float64 summing to 1; both empty when the log has no view of that sensor id or facing its way.
    """
    assert views >= 1, views
    poses = reference.pose_camera_to_world
    same = np.flatnonzero(reference.sensor_ids == sensor_id)
    if len(same) == 0:
        same = np.flatnonzero(poses[:, :3, 2] @ camera.pose_camera_to_world[:3, 2] > FACING_COS)
    if len(same) == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    distance = np.linalg.norm(poses[same, :3, 3] - camera.position_world, axis=1)
    order = []  # nearest first, one view per camera centre (a log that stood still repeats its pose)
    for i in np.argsort(distance, kind="stable"):
        centre = poses[same[i], :3, 3]
        if all(np.linalg.norm(centre - poses[same[j], :3, 3]) > SAME_CENTRE_M for j in order):
            order.append(i)
            if len(order) == views + 1:
                break
    order = np.array(order, np.int64)
    inverse = 1.0 / np.maximum(distance[order], MIN_DISTANCE_M)
    weight = inverse[:views] - (inverse[views] if len(order) > views else 0.0)
    if not weight.sum() > 0.0:  # the k-th and (k+1)-th views equally far: an even blend of the k
        weight = np.ones(len(weight))
    keep = weight > 0.0
    return same[order[:views]][keep].astype(np.int64), weight[keep] / weight[keep].sum()


def fallback_view_weights(reference, sensor_id: str, camera: Camera, views: int, exclude=()
                          ) -> tuple[np.ndarray, np.ndarray]:
    """The log views that fill in the pixels `camera`'s own views (`log_view_weights`) do not see.

    Args: reference a LogReference; the camera's sensor id; camera; views (k) per other sensor; exclude: indices
    already among the camera's own views (a sensor id the log lacks takes views of other ids there).
    Returns: indices [m] int64 into the log and weights [m] float64 summing to 1 (empty when no other sensor's
    nearest view faces within 90 degrees of the camera): every other sensor id's k nearest views with their
    `log_view_weights`, divided evenly between the sensors kept.
    """
    excluded = set(int(i) for i in exclude)
    axis = camera.pose_camera_to_world[:3, 2]
    indices, weights = [], []
    for other in np.unique(reference.sensor_ids):
        if other == sensor_id:
            continue
        near, weight = log_view_weights(reference, str(other), camera, views)
        if len(near) == 0 or not reference.pose_camera_to_world[near[0], :3, 2] @ axis > FALLBACK_FACING_COS:
            continue
        keep = np.array([int(i) not in excluded for i in near], bool)
        if keep.any():
            indices.append(near[keep])
            weights.append(weight[keep] / weight[keep].sum())
    if not indices:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(indices).astype(np.int64), np.concatenate(weights) / len(indices)


def warp_log(reference, sensor_ids, cameras: list[Camera], depth_m: np.ndarray, alpha: np.ndarray, views: int = 2,
             fallback: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Every camera's reference, compiled (`warp_log_reference` is the numpy twin).

    Args:
        reference: a LogReference; sensor_ids: C sensor ids; cameras: C Cameras of H x W; depth_m [C, H, W] the
        rendered depth (metres); alpha [C, H, W] the rendered alpha (a surface where > 0.5); views: log views
        blended per camera; fallback: the other sensors' views fill in what the camera's own do not see
        (`fallback_view_weights`).
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
        near, weight = log_view_weights(reference, str(sid), cam, views)
        other, other_weight = (fallback_view_weights(reference, str(sid), cam, views, near) if fallback
                               else (np.zeros(0, np.int64), np.zeros(0)))
        if len(near) == 0 and len(other) == 0:
            continue
        # the log's arrays whole, with the indices of the views blended (no per-tick copies of its images); the
        # camera's pixels go into those views through one matrix each
        views_used = np.concatenate([near, other])
        to_view = pixel_to_view(cam.K, cam.pose_camera_to_world, reference.K[views_used],
                                reference.world_to_camera[views_used])
        _blend_kernel(np.ascontiguousarray(depth_m[i], dtype=np.float32), np.ascontiguousarray(alpha[i], np.float32),
                      reference.images, reference.depth_m, to_view, near, weight.astype(np.float64), other,
                      other_weight.astype(np.float64), rgb[i], valid[i])
    return rgb, valid


def warp_log_reference(reference, sensor_ids, cameras: list[Camera], depth_m: np.ndarray, alpha: np.ndarray,
                       views: int = 2, fallback: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The numpy twin of `warp_log` (`warp_views`, bilinear, the same weights; the other sensors' views where the
    camera's own see nothing), rgb float32 in [0, 1] before the fast path's rounding to uint8."""
    from neural_sensor.enhance.warp import warp_views

    def warp(cam, depth, alpha_i, index, weight):
        if len(index) == 0:
            return np.zeros(depth.shape + (3,), np.float32), np.zeros(depth.shape, bool)
        return warp_views(cam, depth, alpha_i, [(reference.camera(j), reference.images[j].astype(np.float32)
                                                 / np.float32(255.0), reference.depth_m[j]) for j in index],
                          sample="bilinear", weights=weight)

    rgbs, valids = [], []
    for i, (sid, cam) in enumerate(zip(sensor_ids, cameras)):
        near, weight = log_view_weights(reference, str(sid), cam, views)
        rgb, valid = warp(cam, depth_m[i], alpha[i], near, weight)
        if fallback:
            other_rgb, other_valid = warp(cam, depth_m[i], alpha[i],
                                          *fallback_view_weights(reference, str(sid), cam, views, near))
            fill = other_valid & ~valid
            rgb[fill], valid = other_rgb[fill], valid | fill
        rgbs.append(rgb)
        valids.append(valid)
    return np.stack(rgbs), np.stack(valids)


@njit(parallel=True, cache=True, nogil=True, fastmath=WARP_FASTMATH)
def _blend_kernel(depth, alpha, images, view_depth, to_view, index, weight, other, other_weight, out_rgb,
                  out_valid):  # pragma: no cover - compiled
    """Per target pixel: its surface point (depth, pixel centre) looked up in the log views `index` (images
    [V, h, w, 3] uint8 and view_depth [V, h, w], the whole log; to_view [n + m, 3, 4] the camera's pixels into the
    views `index` then `other`, `pixel_to_view`; `sample_projected`: the nearest pixel's depth within 5 % + 0.2 m,
    bilinear over the 2 x 2 pixels that agree too); their colours are blended by `weight` over the views that see
    the point, or, where none does, the views `other`'s by `other_weight`. Pixels with alpha <= 0.5 or depth <= 0
    stay unseen."""
    h, w = depth.shape
    n = index.shape[0]
    for y in prange(h):
        for x in range(w):
            z = depth[y, x]
            if not (alpha[y, x] > 0.5 and z > 0.0):
                continue
            r, g, b, total = _blend_views(x, y, z, images, view_depth, to_view, 0, index, weight)
            if total == 0.0:
                r, g, b, total = _blend_views(x, y, z, images, view_depth, to_view, n, other, other_weight)
            if total > 0.0:
                out_rgb[y, x, 0] = np.uint8(r / total + 0.5)  # a weighted mean of 8-bit values: <= 255
                out_rgb[y, x, 1] = np.uint8(g / total + 0.5)
                out_rgb[y, x, 2] = np.uint8(b / total + 0.5)
                out_valid[y, x] = True


@njit(cache=True, nogil=True, inline="always", fastmath=WARP_FASTMATH)
def _blend_views(x, y, z, images, view_depth, to_view, first, index, weight):  # pragma: no cover - compiled
    """(r, g, b, total): the `weight`-weighted sums of the colours the log views `index` see at pixel (x, y)'s
    point at depth z (to_view[first + j] takes it into view index[j]) and the sum of those views' weights (0 when
    none sees it)."""
    r = 0.0
    g = 0.0
    b = 0.0
    total = 0.0
    for j in range(index.shape[0]):
        uq, tq, q = project_pixel(to_view, first + j, x, y, z)
        seen, vr, vg, vb = sample_projected(uq, tq, q, index[j], images, view_depth)
        if not seen:
            continue
        wv = weight[j]
        r += wv * vr
        g += wv * vg
        b += wv * vb
        total += wv
    return r, g, b, total
