"""Fast CPU backend: numba kernels, parallel over Gaussians and over tiles.

Same semantics as the reference (`_torch_ref.py`, gsplat "classic"), not
differentiable. Per camera:

1. project: EWA projection, opacity-aware tile box, SH colour (parallel over spatial chunks; far groups
   of neighbours drawn as one merged Gaussian when a level of detail is asked for);
2. sort the visible Gaussians by camera z with an LSD radix sort on the float
   bits (parallel over pieces of the data; stable, so ties keep index order like
   the reference's stable argsort);
3. bin them into 16x16 tiles (counting sort, depth order kept inside a tile);
4. rasterise, parallel over tiles: each Gaussian only visits the pixels of the
   tile inside its bounding box, pixels stop front to back at the transmittance
   threshold, and a tile stops when all its pixels have.

Kernels are compiled on first use and cached on disk (numba `cache=True`) so a
second process starts fast. NUMBA_NUM_THREADS sets the thread count.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from neural_sensor.render._common import (
    ALPHA_THRESHOLD,
    EPS2D,
    FAR_PLANE_M,
    GAUSSIAN_EXTEND,
    MAX_ALPHA,
    MEDIAN_T,
    NEAR_PLANE_M,
    SEMANTIC_MIN_ALPHA,
    TILE_SIZE,
    TRANSMITTANCE_THRESHOLD,
    CameraBatch,
)
from neural_sensor.gaussians import PlacedScene
from neural_sensor.render.lod import _chunk_groups, _lod_groups
from neural_sensor.sh import SH_C0, SH_C1, SH_C2, SH_C3

# float32 copies so numba keeps the arithmetic in float32
_F_ALPHA_THRESHOLD = np.float32(ALPHA_THRESHOLD)
_F_MAX_ALPHA = np.float32(MAX_ALPHA)
_F_T_THRESHOLD = np.float32(TRANSMITTANCE_THRESHOLD)
_F_MEDIAN_T = np.float32(MEDIAN_T)
_F_EPS2D = np.float32(EPS2D)
_F_EXTEND = np.float32(GAUSSIAN_EXTEND)
_F_NEAR = np.float32(NEAR_PLANE_M)
_F_FAR = np.float32(FAR_PLANE_M)
_C0 = np.float32(SH_C0)
_C1 = np.float32(SH_C1)
_C2 = np.array(SH_C2, np.float32)
_C3 = np.array(SH_C3, np.float32)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)

_SPAN_EPS_PX = np.float32(0.01)  # slack on each row span so float rounding never drops a contributing pixel
_ROW_SLACK_PX = np.float32(1e-3)  # slack on the rows a Gaussian's y half-extent reaches, plus _ROW_SLACK_REL x the
_ROW_SLACK_REL = np.float32(1e-6)  # magnitudes involved (8 float32 steps): always a superset of _tile_chords' exact test

GEOM_WIDTH = 12  # per-Gaussian projected record: mean_x, mean_y, conic a, b, c, opacity, camera z,
#                  sigma_max, 1/conic_a, ellipse half-extent x, half-extent y (px), unused

_JIT = dict(cache=True, fastmath=False, nogil=True)
_JIT_FAST = dict(cache=True, fastmath=True, nogil=True)


# exp(-s) for the pixel loop: exp(-s) = exp(-s/8)^8 with a degree-6 fit of exp(-y) on [0, 0.7]; relative
# error < 2e-6 in float32 on [0, EXP_CLAMP]. Pure multiply-adds, so the loop that calls it vectorises.
# s is clamped to EXP_CLAMP: exp(-5.6) < ALPHA_THRESHOLD, so a clamped value never passes the alpha test.
EXP_CLAMP = 5.6
_F_EXP_CLAMP = np.float32(EXP_CLAMP)
_EXP_POLY = tuple(np.float32(c) for c in (
    0.0009830238923477397, -0.007966792433229779, 0.04149725537742905, -0.1666259532230343,
    0.4999953108192579, -0.999999796750499, 0.9999999985597138,
))
_EIGHTH = np.float32(0.125)
assert math.exp(-EXP_CLAMP) < ALPHA_THRESHOLD


@njit(inline="always", **_JIT_FAST)
def _exp_neg(s):  # pragma: no cover - compiled
    """exp(-s) for s in [0, EXP_CLAMP], float32; larger s gives exp(-EXP_CLAMP), negative s gives 1."""
    y = min(max(s, _ZERO), _F_EXP_CLAMP) * _EIGHTH
    p = _EXP_POLY[0]
    p = p * y + _EXP_POLY[1]
    p = p * y + _EXP_POLY[2]
    p = p * y + _EXP_POLY[3]
    p = p * y + _EXP_POLY[4]
    p = p * y + _EXP_POLY[5]
    p = p * y + _EXP_POLY[6]
    p = p * p
    p = p * p
    return p * p


@njit(inline="always", **_JIT_FAST)
def _floor_int(x):  # pragma: no cover - compiled
    """floor(x) as an int (x float32, |x| < 2**63), inline: numba makes math.floor a libm call, with a vzeroupper
    each time, in the projection's and the rasteriser's per-Gaussian paths."""
    t = np.int64(x)  # truncates toward zero
    return t - np.int64(x < np.float32(t))


@njit(inline="always", **_JIT_FAST)
def _ceil_int(x):  # pragma: no cover - compiled
    """ceil(x) as an int (x float32, |x| < 2**63), inline (see _floor_int)."""
    t = np.int64(x)
    return t + np.int64(x > np.float32(t))


@njit(parallel=True, **_JIT)
def _covariances(quats, scales, out):  # pragma: no cover - compiled
    """World covariance R S S^T R^T as 6 unique entries (xx, xy, xz, yy, yz, zz), then a bounding radius."""
    for i in prange(quats.shape[0]):
        w, x, y, z = quats[i, 0], quats[i, 1], quats[i, 2], quats[i, 3]
        norm = math.sqrt(w * w + x * x + y * y + z * z)
        w, x, y, z = w / norm, x / norm, y / norm, z / norm
        r00, r01, r02 = 1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)
        r10, r11, r12 = 2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)
        r20, r21, r22 = 2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)
        sx, sy, sz = scales[i, 0], scales[i, 1], scales[i, 2]
        m00, m01, m02 = r00 * sx, r01 * sy, r02 * sz
        m10, m11, m12 = r10 * sx, r11 * sy, r12 * sz
        m20, m21, m22 = r20 * sx, r21 * sy, r22 * sz
        out[i, 0] = m00 * m00 + m01 * m01 + m02 * m02
        out[i, 1] = m00 * m10 + m01 * m11 + m02 * m12
        out[i, 2] = m00 * m20 + m01 * m21 + m02 * m22
        out[i, 3] = m10 * m10 + m11 * m11 + m12 * m12
        out[i, 4] = m10 * m20 + m11 * m21 + m12 * m22
        out[i, 5] = m20 * m20 + m21 * m21 + m22 * m22
        out[i, 6] = _F_EXTEND * max(sx, max(sy, sz))  # radius of a sphere holding the 3.33-sigma ellipsoid


@njit(inline="always", **_JIT)
def _project_one(means, covs, opacities, sh, src, dst, sh_degree, viewmat, K, campos, w_f, h_f, lims, slacks,
                 tiles_x, tiles_y, tile_size, out_geom, out_color, out_rect, out_valid):  # pragma: no cover - compiled
    """Project Gaussian `src` of (means, covs, opacities, sh) into output row `dst` (see `_project`)."""
    out_valid[dst] = 0
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg = lims[0], lims[1], lims[2], lims[3]
    slack_x, slack_y = slacks[0], slacks[1]
    i = src
    mx, my, mz = means[i, 0], means[i, 1], means[i, 2]
    x = viewmat[0, 0] * mx + viewmat[0, 1] * my + viewmat[0, 2] * mz + viewmat[0, 3]
    y = viewmat[1, 0] * mx + viewmat[1, 1] * my + viewmat[1, 2] * mz + viewmat[1, 3]
    z = viewmat[2, 0] * mx + viewmat[2, 1] * my + viewmat[2, 2] * mz + viewmat[2, 3]
    if z < _F_NEAR or z > _F_FAR:
        return
    opac = opacities[i]
    if opac < _F_ALPHA_THRESHOLD:
        return
    # conservative early-out: a bounding sphere entirely outside a side of the frustum cannot reach
    # the image (its EWA box, dilation included, stays beyond the edge), so skip the covariance work
    reach = covs[i, 6]
    margin = np.float32(2.0) * z
    if (x * fx - z * (w_f - cx) > reach * slack_x * fx + margin
            or -x * fx - z * cx > reach * slack_x * fx + margin
            or y * fy - z * (h_f - cy) > reach * slack_y * fy + margin
            or -y * fy - z * cy > reach * slack_y * fy + margin):
        return
    # camera-frame covariance W S W^T
    s00, s01, s02, s11, s12, s22 = covs[i, 0], covs[i, 1], covs[i, 2], covs[i, 3], covs[i, 4], covs[i, 5]
    w00, w01, w02 = viewmat[0, 0], viewmat[0, 1], viewmat[0, 2]
    w10, w11, w12 = viewmat[1, 0], viewmat[1, 1], viewmat[1, 2]
    w20, w21, w22 = viewmat[2, 0], viewmat[2, 1], viewmat[2, 2]
    a00 = w00 * s00 + w01 * s01 + w02 * s02
    a01 = w00 * s01 + w01 * s11 + w02 * s12
    a02 = w00 * s02 + w01 * s12 + w02 * s22
    a10 = w10 * s00 + w11 * s01 + w12 * s02
    a11 = w10 * s01 + w11 * s11 + w12 * s12
    a12 = w10 * s02 + w11 * s12 + w12 * s22
    a20 = w20 * s00 + w21 * s01 + w22 * s02
    a21 = w20 * s01 + w21 * s11 + w22 * s12
    a22 = w20 * s02 + w21 * s12 + w22 * s22
    c00 = a00 * w00 + a01 * w01 + a02 * w02
    c01 = a00 * w10 + a01 * w11 + a02 * w12
    c02 = a00 * w20 + a01 * w21 + a02 * w22
    c11 = a10 * w10 + a11 * w11 + a12 * w12
    c12 = a10 * w20 + a11 * w21 + a12 * w22
    c22 = a20 * w20 + a21 * w21 + a22 * w22
    rz = _ONE / z
    tx = z * min(lim_x_pos, max(-lim_x_neg, x * rz))
    ty = z * min(lim_y_pos, max(-lim_y_neg, y * rz))
    j00 = fx * rz
    j02 = -fx * tx * rz * rz
    j11 = fy * rz
    j12 = -fy * ty * rz * rz
    cov_a = j00 * j00 * c00 + np.float32(2.0) * j00 * j02 * c02 + j02 * j02 * c22 + _F_EPS2D
    cov_b = j00 * j11 * c01 + j00 * j12 * c02 + j02 * j11 * c12 + j02 * j12 * c22
    cov_c = j11 * j11 * c11 + np.float32(2.0) * j11 * j12 * c12 + j12 * j12 * c22 + _F_EPS2D
    det = cov_a * cov_c - cov_b * cov_b
    if det <= _ZERO:
        return
    extend = min(_F_EXTEND, math.sqrt(np.float32(2.0) * math.log(opac / _F_ALPHA_THRESHOLD)))
    radius_x = _ceil_int(extend * math.sqrt(cov_a))
    radius_y = _ceil_int(extend * math.sqrt(cov_c))
    if radius_x <= 0 and radius_y <= 0:
        return
    px = fx * x * rz + cx
    py = fy * y * rz + cy
    if px + radius_x <= 0 or px - radius_x >= w_f or py + radius_y <= 0 or py - radius_y >= h_f:
        return
    out_geom[dst, 0] = px
    out_geom[dst, 1] = py
    out_geom[dst, 2] = cov_c / det
    out_geom[dst, 3] = -cov_b / det
    out_geom[dst, 4] = cov_a / det
    out_geom[dst, 5] = opac
    out_geom[dst, 6] = z
    sigma_max = math.log(opac / _F_ALPHA_THRESHOLD)  # beyond this sigma, alpha < ALPHA_THRESHOLD
    ext_x = math.sqrt(np.float32(2.0) * sigma_max * cov_a) + _SPAN_EPS_PX  # exact ellipse half-extents
    ext_y = math.sqrt(np.float32(2.0) * sigma_max * cov_c) + _SPAN_EPS_PX
    out_geom[dst, 7] = sigma_max
    out_geom[dst, 8] = det / cov_c  # 1 / conic_a
    out_geom[dst, 9] = ext_x
    out_geom[dst, 10] = ext_y
    # tiles holding a pixel centre inside the ellipse: centres are at k + 0.5
    out_rect[dst, 0] = min(max(0, _ceil_int(px - ext_x - _HALF) // tile_size), tiles_x)
    out_rect[dst, 1] = min(max(0, _floor_int(px + ext_x - _HALF) // tile_size + 1), tiles_x)
    out_rect[dst, 2] = min(max(0, _ceil_int(py - ext_y - _HALF) // tile_size), tiles_y)
    out_rect[dst, 3] = min(max(0, _floor_int(py + ext_y - _HALF) // tile_size + 1), tiles_y)
    out_valid[dst] = 1
    # view-dependent colour, direction from the camera centre to the Gaussian (world frame)
    dx, dy, dz = mx - campos[0], my - campos[1], mz - campos[2]
    inv = _ONE / max(math.sqrt(dx * dx + dy * dy + dz * dz), np.float32(1e-12))
    dx, dy, dz = dx * inv, dy * inv, dz * inv
    # SH basis along the view direction (same polynomial as neural_sensor.sh.sh_basis)
    b1 = b2 = b3 = b4 = b5 = b6 = b7 = b8 = b9 = b10 = b11 = b12 = b13 = b14 = b15 = _ZERO
    if sh_degree >= 1:
        b1, b2, b3 = -_C1 * dy, _C1 * dz, -_C1 * dx
    if sh_degree >= 2:
        xx, yy, zz = dx * dx, dy * dy, dz * dz
        b4, b5, b6 = _C2[0] * dx * dy, _C2[1] * dy * dz, _C2[2] * (np.float32(2.0) * zz - xx - yy)
        b7, b8 = _C2[3] * dx * dz, _C2[4] * (xx - yy)
        if sh_degree >= 3:
            b9 = _C3[0] * dy * (np.float32(3.0) * xx - yy)
            b10 = _C3[1] * dx * dy * dz
            b11 = _C3[2] * dy * (np.float32(4.0) * zz - xx - yy)
            b12 = _C3[3] * dz * (np.float32(2.0) * zz - np.float32(3.0) * xx - np.float32(3.0) * yy)
            b13 = _C3[4] * dx * (np.float32(4.0) * zz - xx - yy)
            b14 = _C3[5] * dz * (xx - yy)
            b15 = _C3[6] * dx * (xx - np.float32(3.0) * yy)
    for ch in range(3):
        v = _C0 * sh[i, 0, ch]
        if sh_degree >= 1:
            v += b1 * sh[i, 1, ch] + b2 * sh[i, 2, ch] + b3 * sh[i, 3, ch]
        if sh_degree >= 2:
            v += (b4 * sh[i, 4, ch] + b5 * sh[i, 5, ch] + b6 * sh[i, 6, ch] + b7 * sh[i, 7, ch]
                  + b8 * sh[i, 8, ch])
        if sh_degree >= 3:
            v += (b9 * sh[i, 9, ch] + b10 * sh[i, 10, ch] + b11 * sh[i, 11, ch] + b12 * sh[i, 12, ch]
                  + b13 * sh[i, 13, ch] + b14 * sh[i, 14, ch] + b15 * sh[i, 15, ch])
        out_color[dst, ch] = max(v + _HALF, _ZERO)


@njit(parallel=True, **_JIT)
def _project(means, covs, opacities, sh, sh_degree, viewmat, K, campos, width, height, tile_size, chunk_spheres,
             chunk_groups, group_starts, group_order, lod_means, lod_covs, lod_opacities, lod_sh, lod_sigma, lod_px,
             out_geom, out_color, out_rect, out_valid):  # pragma: no cover - compiled
    """Project every Gaussian into one camera, skipping spatial chunks that cannot reach the image, and drawing
    far groups of neighbours as their merged Gaussian (level of detail).

    chunk_spheres [C, 4], chunk_groups [C + 1], group_starts [M + 1], group_order [N], lod_* (M merged
    Gaussians and their largest standard deviation lod_sigma, metres): `render.lod._lod_groups` of the scene. Chunk c
    holds groups chunk_groups[c]..chunk_groups[c + 1]; group g holds Gaussians
    group_order[group_starts[g]:group_starts[g + 1]]. A chunk whose bounding sphere fails the per-Gaussian
    early-out below (or lies behind the near plane) is skipped whole: every Gaussian in it would have been
    skipped one by one, so the result is the same. With lod_px > 0 a group whose merged Gaussian lies
    far enough that its largest standard deviation projects to at most lod_px pixels (camera z * lod_px >=
    focal * lod_sigma) is drawn as that one Gaussian (output row N + g) instead of its members; lod_px = 0
    draws every Gaussian (exact).

    Outputs have N + M rows (row i: Gaussian i, row N + g: group g's merged Gaussian):
    out_geom [N + M, GEOM_WIDTH]: the columns listed at GEOM_WIDTH
    out_color [N + M, 3]: SH colour + 0.5, clamped at 0 (visible rows only)
    out_rect [N + M, 4]: tile x0, x1, y0, y1 (x1, y1 exclusive) of the exact alpha >= ALPHA_THRESHOLD ellipse
    out_valid [N + M]: 1 if the row is drawn and passes gsplat's culling (near/far, det, opacity, box off image)
    """
    n = means.shape[0]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    w_f = np.float32(width)
    h_f = np.float32(height)
    tan_fovx = _HALF * w_f / fx
    tan_fovy = _HALF * h_f / fy
    lims = np.empty(4, np.float32)
    lims[0] = (w_f - cx) / fx + np.float32(0.3) * tan_fovx
    lims[1] = cx / fx + np.float32(0.3) * tan_fovx
    lims[2] = (h_f - cy) / fy + np.float32(0.3) * tan_fovy
    lims[3] = cy / fy + np.float32(0.3) * tan_fovy
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    # the clamped Jacobian of persp_proj is at most (f / z) sqrt(1 + lim^2) per unit of 3D offset
    slacks = np.empty(2, np.float32)
    slacks[0] = math.sqrt(_ONE + max(lims[0], lims[1]) ** 2)
    slacks[1] = math.sqrt(_ONE + max(lims[2], lims[3]) ** 2)
    # the per-Gaussian early-out is "f(mean) > reach * k" with f linear in camera coordinates; for a
    # chunk sphere (centre c, radius R holding every mean + reach) f(c) > R * max(k, |grad f|) implies it
    kx = max(slacks[0] * fx, math.sqrt(fx * fx + (max(w_f - cx, cx) + np.float32(2.0)) ** 2))
    ky = max(slacks[1] * fy, math.sqrt(fy * fy + (max(h_f - cy, cy) + np.float32(2.0)) ** 2))
    focal = max(fx, fy)
    for ci in prange(chunk_spheres.shape[0]):
        cmx, cmy, cmz, rad = chunk_spheres[ci, 0], chunk_spheres[ci, 1], chunk_spheres[ci, 2], chunk_spheres[ci, 3]
        x = viewmat[0, 0] * cmx + viewmat[0, 1] * cmy + viewmat[0, 2] * cmz + viewmat[0, 3]
        y = viewmat[1, 0] * cmx + viewmat[1, 1] * cmy + viewmat[1, 2] * cmz + viewmat[1, 3]
        z = viewmat[2, 0] * cmx + viewmat[2, 1] * cmy + viewmat[2, 2] * cmz + viewmat[2, 3]
        margin = np.float32(2.0) * z
        culled = (z + rad < _F_NEAR or x * fx - z * (w_f - cx) - margin > rad * kx
                  or -x * fx - z * cx - margin > rad * kx
                  or y * fy - z * (h_f - cy) - margin > rad * ky or -y * fy - z * cy - margin > rad * ky)
        for g in range(chunk_groups[ci], chunk_groups[ci + 1]):
            coarse = False
            if not culled and lod_px > _ZERO:
                gz = (viewmat[2, 0] * lod_means[g, 0] + viewmat[2, 1] * lod_means[g, 1]
                      + viewmat[2, 2] * lod_means[g, 2] + viewmat[2, 3])
                coarse = gz * lod_px >= focal * lod_sigma[g]
            if coarse:
                _project_one(lod_means, lod_covs, lod_opacities, lod_sh, g, n + g, sh_degree, viewmat, K, campos,
                             w_f, h_f, lims, slacks, tiles_x, tiles_y, tile_size, out_geom, out_color, out_rect,
                             out_valid)
            else:
                out_valid[n + g] = 0
            for j in range(group_starts[g], group_starts[g + 1]):
                i = group_order[j]
                if culled or coarse:
                    out_valid[i] = 0
                else:
                    _project_one(means, covs, opacities, sh, i, i, sh_degree, viewmat, K, campos, w_f, h_f, lims,
                                 slacks, tiles_x, tiles_y, tile_size, out_geom, out_color, out_rect, out_valid)


SORT_BITS = 11  # radix digit of the depth sort: three passes over the 32-bit keys
SORT_PIECES_PER_THREAD = 2


@njit(parallel=True, **_JIT)
def _sort_visible(valid, geom, pieces):  # pragma: no cover - compiled
    """Indices of valid rows sorted by camera z: a stable LSD radix sort on the float32 bits (z > 0, so the bit
    pattern orders like the value), parallel over `pieces` consecutive pieces of the data.

    Each pass counts digits per piece in parallel, then scatters each piece in parallel to offsets that put
    every piece's entries of a digit after the previous pieces' (stable). Twin: `_sort_visible_reference`.
    """
    n = valid.shape[0]
    counts = np.zeros(pieces + 1, np.int64)
    for p in prange(pieces):
        c = 0
        for i in range(p * n // pieces, (p + 1) * n // pieces):
            c += valid[i]
        counts[p + 1] = c
    for p in range(pieces):
        counts[p + 1] += counts[p]
    n_valid = counts[pieces]
    ids = np.empty(n_valid, np.int32)
    keys = np.empty(n_valid, np.uint32)
    for p in prange(pieces):
        k = counts[p]
        for i in range(p * n // pieces, (p + 1) * n // pieces):
            if valid[i]:
                ids[k] = i
                keys[k] = geom[i, 6:7].view(np.uint32)[0]
                k += 1
    tmp_ids = np.empty_like(ids)
    tmp_keys = np.empty_like(keys)
    radix = 1 << SORT_BITS
    mask = radix - 1
    for shift in (0, SORT_BITS, 2 * SORT_BITS):
        hist = np.zeros((pieces, radix), np.int64)
        for p in prange(pieces):
            for j in range(p * n_valid // pieces, (p + 1) * n_valid // pieces):
                hist[p, (keys[j] >> shift) & mask] += 1
        total = 0
        for d in range(radix):  # exclusive offsets, digit-major then piece-major: stable
            for p in range(pieces):
                c = hist[p, d]
                hist[p, d] = total
                total += c
        for p in prange(pieces):
            fill = hist[p]
            for j in range(p * n_valid // pieces, (p + 1) * n_valid // pieces):
                d = (keys[j] >> shift) & mask
                pos = fill[d]
                fill[d] = pos + 1
                tmp_ids[pos] = ids[j]
                tmp_keys[pos] = keys[j]
        ids, tmp_ids = tmp_ids, ids
        keys, tmp_keys = tmp_keys, keys
    return ids


@njit(**_JIT)
def _sort_visible_reference(valid, geom):  # pragma: no cover - compiled
    """The serial twin of `_sort_visible` (tests): the same stable LSD radix sort, one thread."""
    n_valid = 0
    for i in range(valid.shape[0]):
        n_valid += valid[i]
    ids = np.empty(n_valid, np.int32)
    keys = np.empty(n_valid, np.uint32)
    k = 0
    for i in range(valid.shape[0]):
        if valid[i]:
            ids[k] = i
            keys[k] = geom[i, 6:7].view(np.uint32)[0]  # z > 0: the bit pattern orders like the value
            k += 1
    tmp_ids = np.empty_like(ids)
    tmp_keys = np.empty_like(keys)
    for shift in (0, 11, 22):
        counts = np.zeros(2049, np.int64)
        for j in range(n_valid):
            counts[((keys[j] >> shift) & 2047) + 1] += 1
        for b in range(2048):
            counts[b + 1] += counts[b]
        for j in range(n_valid):
            d = (keys[j] >> shift) & 2047
            pos = counts[d]
            counts[d] = pos + 1
            tmp_ids[pos] = ids[j]
            tmp_keys[pos] = keys[j]
        ids, tmp_ids = tmp_ids, ids
        keys, tmp_keys = tmp_keys, keys
    return ids


@njit(parallel=True, **_JIT)
def _bin_tiles(order, rect, n_tiles, tiles_x, n_chunks):  # pragma: no cover - compiled
    """Parallel counting sort of (tile, Gaussian) pairs; `order` is depth-sorted, and so is each tile's list.

    The sorted Gaussians are split into n_chunks consecutive chunks; chunk c's entries for
    a tile are placed after chunk c-1's, which keeps the global depth order.
    Returns tile_offsets [n_tiles + 1] and tile_gauss [n_isects] (Gaussian indices).
    """
    n = order.shape[0]
    chunk_counts = np.zeros((n_chunks, n_tiles), np.int64)
    for c in prange(n_chunks):
        for k in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            g = order[k]
            for ty in range(rect[g, 2], rect[g, 3]):
                for tx in range(rect[g, 0], rect[g, 1]):
                    chunk_counts[c, ty * tiles_x + tx] += 1
    offsets = np.empty(n_tiles + 1, np.int64)
    starts = np.empty((n_chunks, n_tiles), np.int64)
    total = 0
    for t in range(n_tiles):
        offsets[t] = total
        for c in range(n_chunks):
            starts[c, t] = total
            total += chunk_counts[c, t]
    offsets[n_tiles] = total
    out = np.empty(total, np.int32)
    for c in prange(n_chunks):
        fill = starts[c]
        for k in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            g = order[k]
            for ty in range(rect[g, 2], rect[g, 3]):
                for tx in range(rect[g, 0], rect[g, 1]):
                    t = ty * tiles_x + tx
                    out[fill[t]] = g
                    fill[t] += 1
    return offsets, out


_TILE_ORDERS: dict[int, np.ndarray] = {}


def _tile_order(n_tiles: int) -> np.ndarray:
    """A fixed shuffle of the tiles: numba splits prange statically, and sky / street rows differ in cost."""
    if n_tiles not in _TILE_ORDERS:
        _TILE_ORDERS[n_tiles] = np.random.default_rng(n_tiles).permutation(n_tiles).astype(np.int64)
    return _TILE_ORDERS[n_tiles]


LANES = 16  # pixels of a tile row, updated together (LLVM vectorises a fixed 16-trip loop, not an 8-trip one)


@njit(inline="always", **_JIT_FAST)
def _composite_lanes(state, best, lane_px, mx, ca, cyy, cbdy, opac, z, cr, cg, cbl, g, w_out,
                     median, median_stops=None):  # pragma: no cover
    """Composite one Gaussian onto LANES pixels of a row; returns how many of them finished.

    state [6, LANES] ([7, LANES] when the median is tracked), best [LANES] or None (then the best Gaussian is
    not tracked), lane_px [LANES] (pixel centre x) are one tile row;
    w_out [LANES] or None: gets the Gaussian's blending weight alpha T at each lane (0 where it adds nothing);
    median: None, or anything else to track the median depth in state row 6: it gets z where this Gaussian
    takes the transmittance from above MEDIAN_T to MEDIAN_T or below (left as it was elsewhere);
    median_stops: None, or (with median) anything else to finish a pixel at that Gaussian (a render of the median
    depth alone: what comes after cannot change it), its transmittance kept as that Gaussian left it.

    state rows: 0 transmittance (negated once the pixel has finished), 1-3 rgb, 4 depth,
    5 best weight, 6 median depth. Branch-free so LLVM vectorises it: the sums take 0/1 blends, which are
    exact, and the best Gaussian and the median depth are kept by selects (measured: as 0/1 blends they
    cost 8 ms more per 480x270 camera of the demo street for the median, 16 ms for both). A finished pixel
    (t < 0) takes no weight and cannot finish again.
    """
    ended = 0
    for u in range(LANES):
        dx = mx - lane_px[u]
        sigma = _HALF * ca * dx * dx + cyy + cbdy * dx
        alpha = min(_F_MAX_ALPHA, opac * _exp_neg(sigma))
        counts = (sigma >= _ZERO) & (alpha >= _F_ALPHA_THRESHOLD)
        t = state[0, u]
        next_t = t * (_ONE - alpha)
        ends = counts & (t > _ZERO) & (next_t <= _F_T_THRESHOLD)
        adds = counts & (next_t > _F_T_THRESHOLD)
        adds_f = np.float32(adds)
        ends_f = np.float32(ends)
        w = alpha * t * adds_f
        if w_out is not None:  # pruned at compile time when the caller passes None
            w_out[u] = w
        crossed = adds & (t > _F_MEDIAN_T) & (next_t <= _F_MEDIAN_T)
        if median is not None:  # likewise
            state[6, u] = z if crossed else state[6, u]
        state[1, u] += w * cr
        state[2, u] += w * cg
        state[3, u] += w * cbl
        state[4, u] += w * z
        if best is not None:  # pruned at compile time when the caller passes None
            better = w > state[5, u]
            state[5, u] = max(w, state[5, u])
            best[u] = g if better else best[u]
        state[0, u] = next_t * adds_f + t * (_ONE - adds_f - np.float32(2.0) * ends_f)
        ended += np.int32(ends)
        if median_stops is not None:  # likewise: the median found, the pixel is finished (negated)
            state[0, u] = -next_t if crossed else state[0, u]
            ended += np.int32(crossed)
    return ended


@njit(inline="always", **_JIT_FAST)
def _tile_box(tile, tiles_x, width, height):  # pragma: no cover - compiled
    """(x0, y0, width, height) in pixels of a tile (LANES x LANES, cut at the image's right and bottom)."""
    tx0 = (tile % tiles_x) * LANES
    ty0 = (tile // tiles_x) * LANES
    return tx0, ty0, min(LANES, width - tx0), min(LANES, height - ty0)


@njit(inline="always", **_JIT_FAST)
def _tile_gaussians(tile_gauss, offsets, tile, geom, color):  # pragma: no cover - compiled
    """A tile's Gaussians: (start, count) of its entries in tile_gauss, then one contiguous row per field: x, y,
    conic a, b, c, opacity, z, half-extent y, sigma_max, 1 / conic a, r, g, b ([13, count] float32), and their
    indices ([count] int32)."""
    start = offsets[tile]
    count = offsets[tile + 1] - start
    local = np.empty((13, count), np.float32)
    gid = np.empty(count, np.int32)
    for k in range(count):
        g = tile_gauss[start + k]
        gid[k] = g
        for c in range(7):
            local[c, k] = geom[g, c]
        local[7, k] = geom[g, 10]
        local[8, k] = geom[g, 7]
        local[9, k] = geom[g, 8]
        local[10, k] = color[g, 0]
        local[11, k] = color[g, 1]
        local[12, k] = color[g, 2]
    return start, count, local, gid


@njit(inline="always", **_JIT_FAST)
def _lane_centres(tx0):  # pragma: no cover - compiled
    """[LANES] float32: the pixel-centre coordinate of LANES consecutive pixels from pixel tx0 (a tile row's
    lanes in x, or a tile's rows in y)."""
    lane_px = np.empty(LANES, np.float32)
    for u in range(LANES):
        lane_px[u] = np.float32(tx0 + u) + _HALF
    return lane_px


@njit(inline="always", **_JIT_FAST)
def _start_row(state, best, tw):  # pragma: no cover - compiled
    """Reset a tile row's compositing state (see _composite_lanes): transmittance 1 on the tw lanes inside the
    image, lanes past its edge start finished, sums 0, no best Gaussian."""
    for u in range(LANES):
        state[0, u] = _ONE if u < tw else -_ONE
        for c in range(1, state.shape[0]):
            state[c, u] = _ZERO
        best[u] = -1


@njit(inline="always", **_JIT_FAST)
def _start_tile(state, best, alive, tw, th):  # pragma: no cover - compiled
    """Reset a tile's th rows (`_start_row`, alive[v] = tw pixels still taking Gaussians); returns the rows left."""
    for v in range(th):
        _start_row(state[v], best[v], tw)
        alive[v] = tw
    return th


@njit(inline="always", **_JIT_FAST)
def _chord_at(local, k, dy, tx0):  # pragma: no cover - compiled
    """Branch-free chord of tile Gaussian k's alpha >= ALPHA_THRESHOLD ellipse along a row dy pixels from its
    centre: (crosses, cyy, cbdy), crosses = the row lies within the ellipse's half-extent and its chord (in
    lane units, with _SPAN_EPS_PX of slack) reaches the tile; cyy, cbdy: the row's constant terms of the
    Gaussian's exponent for _composite_lanes."""
    ca, cb, cc = local[2, k], local[3, k], local[4, k]
    cbdy = cb * dy
    disc = max(cbdy * cbdy - ca * (cc * dy * dy - np.float32(2.0) * local[8, k]), _ZERO)
    root = math.sqrt(disc)
    centre = local[0, k] - np.float32(tx0) - _HALF
    lane_lo = centre + (cbdy - root) * local[9, k] - _SPAN_EPS_PX
    lane_hi = centre + (cbdy + root) * local[9, k] + _SPAN_EPS_PX
    crosses = (abs(dy) <= local[7, k]) & (lane_hi >= _ZERO) & (lane_lo <= np.float32(LANES - 1))
    return crosses, _HALF * cc * dy * dy, cbdy


@njit(inline="always", **_JIT_FAST)
def _row_range(local, k, ty0, th):  # pragma: no cover - compiled
    """(v_lo, v_hi): the tile rows within tile Gaussian k's half-extent, with a slack above the float32 rounding
    of the rows' dy at any magnitude (the exact test is `_tile_chords`')."""
    centre_row = local[1, k] - np.float32(ty0) - _HALF
    slack = _ROW_SLACK_PX + _ROW_SLACK_REL * (abs(local[1, k]) + local[7, k] + np.float32(ty0 + LANES))
    return (max(0, _ceil_int(centre_row - local[7, k] - slack)),
            min(th, _floor_int(centre_row + local[7, k] + slack) + 1))


@njit(inline="always", **_JIT_FAST)
def _tile_chords(local, k, row_py, tx0, chord):  # pragma: no cover - compiled
    """`_chord_at` for all LANES rows of a tile at once (it vectorises): row_py [LANES] pixel-centre heights;
    chord [3, LANES] gets per row 1 / 0 (crosses or not), cyy, cbdy."""
    for v in range(LANES):
        crosses, cyy, cbdy = _chord_at(local, k, local[1, k] - row_py[v], tx0)
        chord[0, v] = np.float32(crosses)
        chord[1, v] = cyy
        chord[2, v] = cbdy


@njit(parallel=True, **_JIT_FAST)
def _rasterize(tile_order, offsets, tile_gauss, geom, color, width, height, tiles_x, background,
               out_rgb, out_depth, out_alpha, out_best, out_median, median_only=None):  # pragma: no cover - compiled
    """Front-to-back alpha compositing, parallel over 16x16 tiles (tile lists are in depth order).

    A tile walks its Gaussian list once; each Gaussian is composited onto the tile rows its alpha >=
    ALPHA_THRESHOLD ellipse crosses (the rows are independent, so their work overlaps in the core), only where
    that exact chord crosses the tile. A row stops taking Gaussians once all its pixels have stopped, the tile
    once all its rows have. Every pixel sees the same Gaussians in the same order as a row-by-row walk.
    out_best [H, W] or None (then not computed): the index of the Gaussian with the largest blending weight
    at each pixel (-1 if none); out_median [H, W] or None (then not computed): the median depth, the z of
    the Gaussian that takes the pixel's transmittance to MEDIAN_T or below (the expected depth where it
    never gets there, i.e. alpha < 1 - MEDIAN_T). median_only: None, or (with out_median) anything else when the
    median depth is the only output wanted: a pixel stops at that Gaussian (`_composite_lanes`' median_stops), so
    out_median is the same and out_rgb / out_depth / out_alpha are left partial (not to be used).
    """
    for j in prange(offsets.shape[0] - 1):
        tile = tile_order[j]
        tx0, ty0, tw, th = _tile_box(tile, tiles_x, width, height)
        _, count, local, gid = _tile_gaussians(tile_gauss, offsets, tile, geom, color)
        lane_px = _lane_centres(tx0)
        state = np.empty((LANES, 7, LANES), np.float32)  # per row, see _composite_lanes (row 6: the median)
        best = np.empty((LANES, LANES), np.int32)
        alive = np.empty(LANES, np.int32)  # pixels of each row still taking Gaussians
        rows_left = _start_tile(state, best, alive, tw, th)
        row_py = _lane_centres(ty0)  # the pixel-centre heights of the tile's rows
        chord = np.empty((3, LANES), np.float32)
        for k in range(count):
            v_lo, v_hi = _row_range(local, k, ty0, th)
            _tile_chords(local, k, row_py, tx0, chord)
            for v in range(v_lo, v_hi):
                if alive[v] <= 0 or chord[0, v] == _ZERO:
                    continue
                cyy = chord[1, v]
                cbdy = chord[2, v]
                if out_best is None:  # pruned at compile time: the plain render keeps its kernel
                    best_row = None
                else:
                    best_row = best[v]
                alive[v] -= _composite_lanes(state[v], best_row, lane_px, local[0, k], local[2, k], cyy, cbdy,
                                             local[5, k], local[6, k], local[10, k], local[11, k], local[12, k],
                                             gid[k], None, out_median, median_only)  # track / stop or not
                if alive[v] <= 0:
                    rows_left -= 1
            if rows_left <= 0:
                break
        for v in range(th):
            yy = ty0 + v
            for u in range(tw):
                t = abs(state[v, 0, u])
                xx = tx0 + u
                out_rgb[yy, xx, 0] = state[v, 1, u] + t * background[0]
                out_rgb[yy, xx, 1] = state[v, 2, u] + t * background[1]
                out_rgb[yy, xx, 2] = state[v, 3, u] + t * background[2]
                a = _ONE - t
                out_alpha[yy, xx] = a
                out_depth[yy, xx] = state[v, 4, u] / max(a, np.float32(1e-10))
                if out_best is not None:
                    out_best[yy, xx] = best[v, u]
                if out_median is not None:
                    out_median[yy, xx] = state[v, 6, u] if t <= _F_MEDIAN_T else out_depth[yy, xx]


CHUNK_SIZE = 256  # Gaussians per spatial chunk of the projection's frustum test


def _spatial_chunks(scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Consecutive runs of CHUNK_SIZE Gaussians (index order) with a bounding sphere each, for frustum culling.

    Index order keeps memory access sequential; scenes whose order follows space (the builder emits
    surface by surface, a fused reconstruction is stored along a Morton curve) get tight spheres, others
    simply cull less.
    Returns order [N] int32 (Gaussian indices, chunk by chunk), starts [M + 1] int64 and spheres [M, 4]
    float32: centre xyz and a radius that holds every member's mean plus its bounding radius (covariances'
    column 6), rounded up so float32 arithmetic never makes it too small.
    """
    n = len(scene)
    means = scene.means.astype(np.float64)
    reach = scene.derived("covariances_and_radius", _world_covariances)[:, 6].astype(np.float64)
    if n == 0:
        return np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros((0, 4), np.float32)
    order = np.arange(n, dtype=np.int32)
    starts = np.append(np.arange(0, n, CHUNK_SIZE), n).astype(np.int64)
    firsts = starts[:-1]
    centres = (np.minimum.reduceat(means, firsts, axis=0) + np.maximum.reduceat(means, firsts, axis=0)) / 2.0
    chunk_of = np.repeat(np.arange(len(firsts)), np.diff(starts))
    gap = np.linalg.norm(means - centres[chunk_of], axis=1) + reach
    spheres = np.empty((len(firsts), 4), np.float32)
    spheres[:, :3] = centres
    spheres[:, 3] = np.maximum.reduceat(gap, firsts) * (1.0 + 1e-4) + 1e-3
    return order, starts, spheres


def _world_covariances(scene) -> np.ndarray:
    """[N, 7] float32: covariance (xx, xy, xz, yy, yz, zz) in the scene's frame, bounding radius (m)."""
    covs = np.empty((len(scene), 7), np.float32)
    _covariances(scene.quats, scene.scales, covs)
    return covs


def render_cpu(parts, batch: CameraBatch, outputs: tuple[str, ...], background: np.ndarray,
               lod_px: float = 0.0, out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Backend adapter for `render()`: scene parts (numpy) in, numpy images out.

    The parts (e.g. a static background and posed agents) are projected into one
    buffer side by side, so the background is never copied or concatenated.
    lod_px > 0: level of detail (see `_project`): groups of neighbours whose merged Gaussian's largest standard
    deviation projects to <= lod_px pixels are drawn as that Gaussian; 0 draws every Gaussian (exact).
    Reference twin of the level of detail: `render.lod.lod_scene` (the Gaussians one camera draws), rendered exactly.
    out: {output: array} the caller owns (checked by `render`), rendered into instead of fresh arrays.
    """
    assert TILE_SIZE == LANES, "the rasteriser updates a whole tile row at once"
    assert lod_px >= 0.0, lod_px
    scenes = [p.scene if isinstance(p, PlacedScene) else p for p in parts]
    # the exact render needs only the chunks (`_chunk_groups`), not the merges
    lods = [sc.derived("lod_groups", _lod_groups) if lod_px > 0 else sc.derived("chunk_groups", _chunk_groups)
            for sc in scenes]
    # rows of part k: its Gaussians, then its merged groups
    starts = np.cumsum([0] + [len(sc) + len(lod.sigma) for sc, lod in zip(scenes, lods)])
    n = int(starts[-1])
    c_count, h, w = batch.viewmats.shape[0], batch.height, batch.width
    tiles_x, tiles_y = -(-w // TILE_SIZE), -(-h // TILE_SIZE)
    poses = [p.pose_local_to_world if isinstance(p, PlacedScene) else None for p in parts]
    covs = [sc.derived("covariances_and_radius", _world_covariances) for sc in scenes]
    # only entries of valid Gaussians are ever read, so the buffers need no clearing
    geom = np.empty((n, GEOM_WIDTH), np.float32)
    color = np.empty((n, 3), np.float32)
    rect = np.empty((n, 4), np.int32)
    valid = np.empty(n, np.uint8)
    out = out or {}
    rgb = out["rgb"] if "rgb" in out else np.empty((c_count, h, w, 3), np.float32)
    depth = out["depth"] if "depth" in out else np.empty((c_count, h, w), np.float32)
    alpha = out["alpha"] if "alpha" in out else np.empty((c_count, h, w), np.float32)
    labelled = "semantic" in outputs or "instance" in outputs  # they come from the best Gaussian of each pixel
    best = np.empty((c_count, h, w), np.int32) if labelled else None
    median = (out["median_depth"] if "median_depth" in out else np.empty((c_count, h, w), np.float32)
              ) if "median_depth" in outputs else None
    # the median depth alone (a log reference's depths): pixels stop where the median is found, the same values
    median_only = tuple(outputs) == ("median_depth",)
    campos = batch.camera_positions_world.astype(np.float32)
    for cam in range(c_count):
        K = batch.Ks[cam].astype(np.float32)
        for sc, pose, cov, lod, lo, hi in zip(scenes, poses, covs, lods, starts[:-1], starts[1:]):
            # a placed part is projected from its own frame: the pose folds into the view transform
            viewmat = batch.viewmats[cam] if pose is None else batch.viewmats[cam] @ pose
            eye = campos[cam] if pose is None else (np.linalg.inv(pose) @ np.append(campos[cam], 1.0))[:3]
            _project(sc.means, cov, sc.opacities, sc.sh, sc.sh_degree, viewmat.astype(np.float32), K,
                     eye.astype(np.float32), w, h, TILE_SIZE, *lod.project_args(), np.float32(lod_px),
                     geom[lo:hi], color[lo:hi], rect[lo:hi], valid[lo:hi])
        order = _sort_visible(valid, geom, SORT_PIECES_PER_THREAD * numba.get_num_threads())
        offsets, tile_gauss = _bin_tiles(order, rect, tiles_x * tiles_y, tiles_x, 4 * numba.get_num_threads())
        _rasterize(_tile_order(tiles_x * tiles_y), offsets, tile_gauss, geom, color, w, h, tiles_x, background,
                   rgb[cam], depth[cam], alpha[cam], None if best is None else best[cam],
                   None if median is None else median[cam], True if median_only else None)
    result = {"rgb": rgb, "depth": depth, "alpha": alpha, "median_depth": median}
    if labelled:
        rows = "lod" if lod_px > 0 else "chunk"  # the labels of each part's rows, cached with the groups
        labels = [sc.derived(f"{rows}_row_labels", lambda s, g=lod: np.concatenate([s.labels, g.labels]))
                  for sc, lod in zip(scenes, lods)]
        instance = [sc.derived(f"{rows}_row_instance", lambda s, g=lod: np.concatenate([s.instance, g.instance]))
                    for sc, lod in zip(scenes, lods)]
        result.update(_labels_of_best(labels, instance, starts, best, alpha))
    return {k: result[k] for k in outputs}


@njit(parallel=True, **_JIT)
def _labels_of_first_part(best, alpha, first_end, labels, instance, out_semantic, out_instance):  # pragma: no cover
    """Flat per-pixel labels: the first part's label / instance where its Gaussian wins with alpha >=
    SEMANTIC_MIN_ALPHA, 0 where no Gaussian does; returns a mask of the pixels another part wins (left 0)."""
    other = np.zeros(best.shape[0], np.bool_)
    for p in prange(best.shape[0]):
        b = best[p]
        out_semantic[p] = 0
        out_instance[p] = 0
        if b < 0 or alpha[p] < SEMANTIC_MIN_ALPHA:
            continue
        if b < first_end:
            out_semantic[p] = labels[b]
            out_instance[p] = instance[b]
        else:
            other[p] = True
    return other


def _labels_of_best(labels: list, instance: list, starts: np.ndarray, best: np.ndarray,
                    alpha: np.ndarray) -> dict[str, np.ndarray]:
    """semantic / instance images from the per-pixel best row (global over the parts; part k's rows
    starts[k]..starts[k + 1] carry labels[k] and instance[k])."""
    semantic = np.empty(best.shape, np.uint8)
    inst = np.empty(best.shape, np.int32)
    # most pixels show the first part (the background): a kernel labels those, the rest are gathered here
    rest = np.flatnonzero(_labels_of_first_part(best.reshape(-1), alpha.reshape(-1), int(starts[1]), labels[0],
                                                instance[0], semantic.reshape(-1), inst.reshape(-1)))
    if rest.size:
        index = best.reshape(-1)[rest]
        which = np.searchsorted(starts, index, side="right") - 1
        for k in np.unique(which):
            sel = which == k
            semantic.reshape(-1)[rest[sel]] = labels[k][index[sel] - starts[k]]
            inst.reshape(-1)[rest[sel]] = instance[k][index[sel] - starts[k]]
    return {"semantic": semantic, "instance": inst}


def set_num_threads(count: int) -> None:
    """Use `count` CPU threads for the parallel kernels (<= NUMBA_NUM_THREADS)."""
    numba.set_num_threads(count)
