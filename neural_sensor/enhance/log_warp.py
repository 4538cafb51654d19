"""A drive log's images warped into the rig's cameras: the enhancer's reference input.

Every rig camera takes the `views` log views of its sensor id nearest to it (camera centres; a sensor id the log
lacks takes the views facing within 45 degrees of it), each warped in through the camera's RENDERED depth with
bilinear sampling (a surface pixel's point must agree with the view's own depth within 5 % + 0.2 m, as
`warp.warp_views`), and BLENDED per pixel by weights that change continuously as the camera moves
(`log_view_weights`): view i of the k nearest gets 1 / d_i - 1 / d_(k+1), d the distance between camera
centres (floored at 0.1 m), so a view enters the blend at weight zero and the one it replaces leaves at weight
zero. Taking the nearest view first instead (the 2026-12-01 stage 5 enhancer's input) swaps the whole reference
image the moment another view becomes nearer, and the enhancer's output flickered with it.

`warp_log` is the compiled fast path (numba, rows in parallel) the rig runs every tick; `warp_log_reference` its
numpy twin (`warp.warp_views(..., sample="bilinear", weights=...)`), tested equal. The log itself (images, the
depth of each view, cameras) is `neural_sensor.reconstruct.reference.LogReference`, kept with the reconstruction;
this module holds only what is computed from it per tick, so changing it never invalidates a cached scene.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from neural_sensor.camera import Camera

FACING_COS = float(np.cos(np.radians(45.0)))  # a log view of another sensor id must face within this of the camera
MIN_DISTANCE_M = 0.1  # distances below this count as this (a camera at a log view takes ~all of it)


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
    order = np.argsort(distance, kind="stable")[:views + 1]
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
    """Per target pixel: its surface point (depth, pixel centre) in each view; a view whose nearest pixel agrees
    in depth (5 % + 0.2 m) gives the bilinear blend of the 2 x 2 pixels around the projection that agree too
    (weights renormalised); the views' colours are blended by `view_weight` over the views that see the point.
    Pixels with alpha <= 0.5 or depth <= 0 stay unseen."""
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
            r = 0.0
            g = 0.0
            b = 0.0
            total = 0.0
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
                vr = 0.0
                vg = 0.0
                vb = 0.0
                wsum = 0.0
                for k in range(4):
                    du, dt = k % 2, k // 2
                    uu, tt = u0 + du, t0 + dt
                    wk = (au if du else 1.0 - au) * (at if dt else 1.0 - at)
                    if uu < 0 or uu >= vw or tt < 0 or tt >= vh or wk <= 0.0:
                        continue
                    if not abs(view_depth[v, tt, uu] - qz) < tol:
                        continue
                    vr += wk * images[v, tt, uu, 0]
                    vg += wk * images[v, tt, uu, 1]
                    vb += wk * images[v, tt, uu, 2]
                    wsum += wk
                # the nearest pixel (a bilinear weight >= 0.25) passed the test, so wsum > 0
                wv = view_weight[v]
                r += wv * vr / wsum
                g += wv * vg / wsum
                b += wv * vb / wsum
                total += wv
            if total > 0.0:
                out_rgb[y, x, 0] = np.uint8(r / total + 0.5)  # a weighted mean of 8-bit values: <= 255
                out_rgb[y, x, 1] = np.uint8(g / total + 0.5)
                out_rgb[y, x, 2] = np.uint8(b / total + 0.5)
                out_valid[y, x] = True
