"""Real spherical harmonics as 3DGS uses them: constants, basis, rotation.

The basis and its sign convention are the ones of the INRIA 3DGS code and of
gsplat (`sh_coeffs_to_color`): band l has 2l+1 coefficients, ordered m = -l..l,
and the colour of a Gaussian seen along the unit direction d (world frame, from
the camera centre towards the Gaussian) is  sum_k sh[k] * Y_k(d) + 0.5, clamped
at 0.

This module is NumPy only; the render backends evaluate the same polynomial in
their own array language (torch, numba) and are tested against `sh_basis`.
"""

from __future__ import annotations

import numpy as np

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)

MAX_SH_DEGREE = 3


def num_sh_bases(degree: int) -> int:
    """Number of coefficients K = (degree + 1)^2 for an SH degree in 0..3."""
    if degree not in (0, 1, 2, 3):
        raise ValueError(f"SH degree must be 0, 1, 2 or 3, got {degree}")
    return (degree + 1) ** 2


def sh_degree_from_bases(num_bases: int) -> int:
    """Inverse of `num_sh_bases`; raises ValueError for K not in {1, 4, 9, 16}."""
    for degree in range(MAX_SH_DEGREE + 1):
        if (degree + 1) ** 2 == num_bases:
            return degree
    raise ValueError(f"SH coefficient count must be 1, 4, 9 or 16 (degree 0-3), got {num_bases}")


def sh_basis(degree: int, dirs: np.ndarray) -> np.ndarray:
    """Evaluate the real SH basis up to `degree` along unit directions.

    Args:
        degree: 0..3.
        dirs: [M, 3] unit vectors (x, y, z) in the frame the coefficients live in.
    Returns:
        [M, K] float64, K = (degree + 1)^2.
    """
    assert dirs.ndim == 2 and dirs.shape[1] == 3, dirs.shape
    x, y, z = (dirs[:, i].astype(np.float64) for i in range(3))
    out = [np.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [
            SH_C2[0] * xy,
            SH_C2[1] * yz,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * xz,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            SH_C3[0] * y * (3.0 * xx - yy),
            SH_C3[1] * xy * z,
            SH_C3[2] * y * (4.0 * zz - xx - yy),
            SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            SH_C3[4] * x * (4.0 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    return np.stack(out, axis=1)


def sh_rotation_matrices(degree: int, rotation: np.ndarray) -> list[np.ndarray]:
    """Per-band matrices that rotate SH coefficients with a rigid rotation.

    If a Gaussian's colour is c(d) = sum_k sh[k] Y_k(d) and the Gaussian is
    rotated by R (world frame), its new colour is c'(d) = c(R^T d). Each band
    is closed under rotation, so the row vector Y_l(R^T d) = Y_l(d) @ A_l for a
    (2l+1) x (2l+1) matrix A_l, and the new coefficients are sh'_l = A_l @ sh_l.
    A_l is solved exactly (to float64 round-off) by least squares over a fixed
    set of directions.

    Args:
        degree: 0..3 (band 0 is invariant, so degree 0 gives an empty list).
        rotation: [3, 3] proper rotation matrix.
    Returns:
        list of A_l for l = 1..degree, each [2l+1, 2l+1] float64.
    """
    assert rotation.shape == (3, 3), rotation.shape
    if degree == 0:
        return []
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(64, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    basis = sh_basis(degree, dirs)
    basis_rotated = sh_basis(degree, dirs @ rotation.astype(np.float64))  # row i is R^T d_i
    mats = []
    for band in range(1, degree + 1):
        lo, hi = band * band, (band + 1) * (band + 1)
        band_map, *_ = np.linalg.lstsq(basis[:, lo:hi], basis_rotated[:, lo:hi], rcond=None)
        mats.append(band_map)
    return mats
