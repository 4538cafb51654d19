"""The compiled per-pixel sampling both reprojection kernels share (the drive-log reference, `log_warp`, and the
temporal accumulation, `temporal`): a world point looked up in a posed view with its depth, as `warp.warp_views`
(`sample="bilinear"`) does in numpy.

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


@njit(cache=True, nogil=True, inline="always", fastmath=WARP_FASTMATH)
def sample_view(px, py, pz, v, w2c, K, image, depth):  # pragma: no cover - compiled
    """What view v of a stack (w2c [V, 4, 4] world -> camera, K [V, 3, 3], image [V, h, w, 3], depth [V, h, w]
    camera z) sees at world point (px, py, pz): (True, r, g, b) when the point projects inside the view, in front
    of it, and the depth of the pixel it falls in agrees with the point's (within 5 % + 0.2 m): the bilinear blend
    of the 2 x 2 pixels around the projection that agree too (weights renormalised); (False, 0, 0, 0) otherwise.
    The view is indexed in place, never sliced or copied (a drive log's views stay in its one array)."""
    vh, vw = depth.shape[1], depth.shape[2]
    qx = w2c[v, 0, 0] * px + w2c[v, 0, 1] * py + w2c[v, 0, 2] * pz + w2c[v, 0, 3]
    qy = w2c[v, 1, 0] * px + w2c[v, 1, 1] * py + w2c[v, 1, 2] * pz + w2c[v, 1, 3]
    qz = w2c[v, 2, 0] * px + w2c[v, 2, 1] * py + w2c[v, 2, 2] * pz + w2c[v, 2, 3]
    if qz <= 0.05:
        return False, 0.0, 0.0, 0.0
    u = qx / qz * K[v, 0, 0] + K[v, 0, 2]
    t = qy / qz * K[v, 1, 1] + K[v, 1, 2]
    un, tn = int(np.floor(u)), int(np.floor(t))
    if un < 0 or un >= vw or tn < 0 or tn >= vh:
        return False, 0.0, 0.0, 0.0
    tol = 0.05 * qz + 0.2
    if not abs(depth[v, tn, un] - qz) < tol:
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
        if not abs(depth[v, tt, uu] - qz) < tol:
            continue
        r += wk * image[v, tt, uu, 0]
        g += wk * image[v, tt, uu, 1]
        b += wk * image[v, tt, uu, 2]
        wsum += wk
    # the nearest pixel (a bilinear weight >= 0.25) passed the test, so wsum > 0
    return True, r / wsum, g / wsum, b / wsum


@njit(cache=True, nogil=True, inline="always", fastmath=WARP_FASTMATH)
def surface_point(x, y, z, K, pose):  # pragma: no cover - compiled
    """World point of pixel (x, y)'s centre at camera depth z (K [3, 3], pose [4, 4] camera -> world)."""
    xc = (x + 0.5 - K[0, 2]) / K[0, 0] * z
    yc = (y + 0.5 - K[1, 2]) / K[1, 1] * z
    return (pose[0, 0] * xc + pose[0, 1] * yc + pose[0, 2] * z + pose[0, 3],
            pose[1, 0] * xc + pose[1, 1] * yc + pose[1, 2] * z + pose[1, 3],
            pose[2, 0] * xc + pose[2, 1] * yc + pose[2, 2] * z + pose[2, 3])
