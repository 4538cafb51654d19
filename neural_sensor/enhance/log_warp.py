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

`warp_log` is the compiled fast path (numba, rows in parallel) the rig runs every tick; `warp_log_reference` its
numpy twin (`warp.warp_views(..., sample="bilinear", weights=...)`), tested equal. The log itself (images, the
depth of each view, cameras) is `neural_sensor.reconstruct.reference.LogReference`, kept with the reconstruction;
this module holds only what is computed from it per tick, so changing it never invalidates a cached scene.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from neural_sensor.camera import Camera
from neural_sensor.enhance._warp_kernels import sample_view, surface_point

FACING_COS = float(np.cos(np.radians(45.0)))  # a log view of another sensor id must face within this of the camera
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


def warp_log(reference, sensor_ids, cameras: list[Camera], depth_m: np.ndarray, alpha: np.ndarray, views: int = 2
             ) -> tuple[np.ndarray, np.ndarray]:
    """Every camera's reference, compiled (`warp_log_reference` is the numpy twin).

    Args:
        reference: a LogReference; sensor_ids: C sensor ids; cameras: C Cameras of H x W; depth_m [C, H, W] the
        rendered depth (metres); alpha [C, H, W] the rendered alpha (a surface where > 0.5); views: log views
        blended per camera.
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
    view_w2c = reference.world_to_camera
    for i, (sid, cam) in enumerate(zip(sensor_ids, cameras)):
        assert (cam.height, cam.width) == (h, w), (cam.height, cam.width, h, w)
        near, weight = log_view_weights(reference, str(sid), cam, views)
        if len(near) == 0:
            continue
        _blend_kernel(np.ascontiguousarray(depth_m[i], dtype=np.float32), np.ascontiguousarray(alpha[i], np.float32),
                      cam.K.astype(np.float64), cam.pose_camera_to_world.astype(np.float64),
                      np.ascontiguousarray(reference.images[near]), np.ascontiguousarray(reference.depth_m[near]),
                      np.ascontiguousarray(reference.K[near]), np.ascontiguousarray(view_w2c[near]),
                      weight.astype(np.float64), rgb[i], valid[i])
    return rgb, valid


def warp_log_reference(reference, sensor_ids, cameras: list[Camera], depth_m: np.ndarray, alpha: np.ndarray,
                       views: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The numpy twin of `warp_log` (`warp_views`, bilinear, the same weights), rgb float32 in [0, 1] before the
    fast path's rounding to uint8."""
    from neural_sensor.enhance.warp import warp_views

    out = []
    for i, (sid, cam) in enumerate(zip(sensor_ids, cameras)):
        near, weight = log_view_weights(reference, str(sid), cam, views)
        out.append(warp_views(cam, depth_m[i], alpha[i],
                              [(reference.camera(j), reference.images[j].astype(np.float32) / np.float32(255.0),
                                reference.depth_m[j]) for j in near], sample="bilinear", weights=weight))
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


@njit(parallel=True, cache=True, nogil=True)
def _blend_kernel(depth, alpha, K, pose, images, view_depth, view_K, view_w2c, view_weight, out_rgb,
                  out_valid):  # pragma: no cover - compiled
    """Per target pixel: its surface point (depth, pixel centre) looked up in each view (`sample_view`: the nearest
    pixel's depth within 5 % + 0.2 m, bilinear over the 2 x 2 pixels that agree too); the views' colours are
    blended by `view_weight` over the views that see the point. Pixels with alpha <= 0.5 or depth <= 0 stay
    unseen."""
    h, w = depth.shape
    for y in prange(h):
        for x in range(w):
            z = depth[y, x]
            if not (alpha[y, x] > 0.5 and z > 0.0):
                continue
            px, py, pz = surface_point(x, y, z, K, pose)
            r = 0.0
            g = 0.0
            b = 0.0
            total = 0.0
            for v in range(view_depth.shape[0]):
                seen, vr, vg, vb = sample_view(px, py, pz, view_w2c[v], view_K[v], images[v], view_depth[v])
                if not seen:
                    continue
                wv = view_weight[v]
                r += wv * vr
                g += wv * vg
                b += wv * vb
                total += wv
            if total > 0.0:
                out_rgb[y, x, 0] = np.uint8(r / total + 0.5)  # a weighted mean of 8-bit values: <= 255
                out_rgb[y, x, 1] = np.uint8(g / total + 0.5)
                out_rgb[y, x, 2] = np.uint8(b / total + 0.5)
                out_valid[y, x] = True
