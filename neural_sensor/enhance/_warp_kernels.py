"""The compiled per-pixel sampling both reprojection kernels share (the drive-log reference, `log_warp`, and the
temporal accumulation, `temporal`): a pixel's surface point looked up in a posed view with its depth, as
`warp.warp_views` (`sample="bilinear"`) does in numpy. The pixel goes into the view through one 3 x 4 matrix per
camera and view (`pixel_to_view`, computed once a tick) rather than through its world position.

The kernels compile with `WARP_FASTMATH`: LLVM may contract multiply-adds into FMAs, reassociate sums and divide
by reciprocals (the log warp 35 -> 30 ms for six cameras on a Zen 4 EPYC, 2026-12-04), but not assume away NaNs
or infinities, so a NaN depth still fails every depth test. Results then differ from the numpy twins in the last
bits: the tests allow one level of 255 (the log warp's uint8) or 2e-6 (the accumulation).

Numba's on-disk cache keys each kernel on its OWN file: these helpers are inlined into `log_warp._blend_kernel`
and `temporal._accumulate_kernel`, so an edit here alone leaves those cached kernels stale. Touch (or edit) both
callers' files with any change here.
"""

from __future__ import annotations

import numpy as np
from numba import njit

WARP_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}  # not "nnan" / "ninf": NaN depths must fail the tests


def pixel_to_view(K: np.ndarray, pose_camera_to_world: np.ndarray, view_K: np.ndarray,
                  view_world_to_camera: np.ndarray) -> np.ndarray:
    """The camera's pixels projected into views, as one matrix per view.

    Args: K [3, 3] and pose_camera_to_world [4, 4] of the camera; view_K [V, 3, 3] and view_world_to_camera
    [V, 4, 4] of the views (OpenCV axes).
    Returns: P [V, 3, 4] float64 (C-contiguous) with P[v] @ (z (x + 0.5), z (y + 0.5), z, 1) = (u q, t q, q) for
    the point at camera depth z behind pixel (x, y)'s centre: (u, t) its pixel coordinates in view v and q its
    depth there. One matrix product per pixel and view instead of the point's world position and then its
    projection (`sample_projected` takes the result; the temporal accumulation 2.7 -> 2.1 ms a camera on an Intel
    Xeon, 2026-12-05).
    """
    K, pose = np.asarray(K, np.float64), np.asarray(pose_camera_to_world, np.float64)
    view_K, view_w2c = np.asarray(view_K, np.float64), np.asarray(view_world_to_camera, np.float64)
    assert K.shape == (3, 3) and pose.shape == (4, 4), (K.shape, pose.shape)
    v = len(view_K)
    assert view_K.shape == (v, 3, 3) and view_w2c.shape == (v, 4, 4), (view_K.shape, view_w2c.shape)
    rotation = view_w2c[:, :3, :3] @ pose[:3, :3]  # [V, 3, 3] camera -> view axes
    out = np.empty((v, 3, 4))
    out[:, :, :3] = view_K @ rotation @ np.linalg.inv(K)
    out[:, :, 3] = (view_K @ (view_w2c[:, :3, :3] @ pose[:3, 3] + view_w2c[:, :3, 3])[..., None])[..., 0]
    return out


@njit(cache=True, nogil=True, inline="always", fastmath=WARP_FASTMATH)
def project_pixel(P, v, x, y, z):  # pragma: no cover - compiled
    """(u q, t q, q) of pixel (x, y) at depth z in view v (P [V, 3, 4] from `pixel_to_view`)."""
    xz, yz = (x + 0.5) * z, (y + 0.5) * z
    return (P[v, 0, 0] * xz + P[v, 0, 1] * yz + P[v, 0, 2] * z + P[v, 0, 3],
            P[v, 1, 0] * xz + P[v, 1, 1] * yz + P[v, 1, 2] * z + P[v, 1, 3],
            P[v, 2, 0] * xz + P[v, 2, 1] * yz + P[v, 2, 2] * z + P[v, 2, 3])


@njit(cache=True, nogil=True, inline="always", fastmath=WARP_FASTMATH)
def sample_projected(uq, tq, q, v, image, depth):  # pragma: no cover - compiled
    """What view v of a stack (image [V, h, w, 3], depth [V, h, w] camera z) sees at a point that projects to
    (uq / q, tq / q) at depth q (`project_pixel`): (True, r, g, b) when that is inside the view, in front of it,
    and the depth of the pixel it falls in agrees with q (within 5 % + 0.2 m): the bilinear blend of the 2 x 2
    pixels around the projection that agree too (weights renormalised); (False, 0, 0, 0) otherwise. The view is
    indexed in place, never sliced or copied (a drive log's views stay in its one array)."""
    vh, vw = depth.shape[1], depth.shape[2]
    if q <= 0.05:
        return False, 0.0, 0.0, 0.0
    u = uq / q
    t = tq / q
    un, tn = int(np.floor(u)), int(np.floor(t))
    if un < 0 or un >= vw or tn < 0 or tn >= vh:
        return False, 0.0, 0.0, 0.0
    tol = 0.05 * q + 0.2
    if not abs(depth[v, tn, un] - q) < tol:
        return False, 0.0, 0.0, 0.0
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
        if not abs(depth[v, tt, uu] - q) < tol:
            continue
        r += wk * image[v, tt, uu, 0]
        g += wk * image[v, tt, uu, 1]
        b += wk * image[v, tt, uu, 2]
        wsum += wk
    # the nearest pixel (a bilinear weight >= 0.25) passed the test, so wsum > 0
    return True, r / wsum, g / wsum, b / wsum
