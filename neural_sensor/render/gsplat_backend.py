"""gsplat backend: `gsplat.rasterization` on CUDA ("classic" mode, RGB + expected depth).

gsplat is an optional extra (`pip install .[gpu]`) and is imported only when
this backend renders, never at module import on a CPU machine. gsplat 1.5.x
clamps alpha at 0.999 where our contract (and gsplat >= 1.6) says 0.99: with
1.5.x, pixels where a Gaussian's alpha would exceed 0.99 differ slightly.

Semantic and instance maps (label of the Gaussian with the largest blending
weight) are not an accumulation, so gsplat cannot rasterise them directly: we
ask gsplat for every contributing (Gaussian, pixel) pair with
`rasterize_to_indices_in_range`, recompute each pair's alpha and transmittance
exactly as the rasteriser composited them, and take the per-pixel maximum
(`best_gaussian_from_pairs`, which runs and is tested on the CPU too). The median depth
comes from the same pairs (`median_depth_from_pairs`: the pair that takes the
transmittance to MEDIAN_T).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from neural_sensor.render._common import ALPHA_THRESHOLD, MEDIAN_T, SEMANTIC_MIN_ALPHA, TILE_SIZE, CameraBatch
from neural_sensor.render.differentiable import gsplat_kwargs


def gsplat_max_alpha() -> float:
    """The alpha clamp of the installed gsplat: 0.999 before 1.6, 0.99 from 1.6 (ours is 0.99)."""
    import gsplat

    major, minor = (int(p) for p in gsplat.__version__.split(".")[:2])
    return 0.999 if (major, minor) < (1, 6) else 0.99


def _sortable_float_bits(values: torch.Tensor) -> torch.Tensor:
    """int64 keys that order like the float32 `values` (finite; -0.0 sorts just before 0.0)."""
    bits = values.float().contiguous().view(torch.int32).long()
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _pair_order(pixel_ids: torch.Tensor, depths: torch.Tensor, gauss_ids: torch.Tensor) -> torch.Tensor:
    """[M] order that puts the pairs front to back per pixel: by pixel, then camera z, then Gaussian index (as the
    tile lists are). Two stable sorts: (z, Gaussian) packed into one int64 key, then the pixel; the same order as
    `_pair_order_reference`'s three (tested)."""
    key = (_sortable_float_bits(depths) << 32) | gauss_ids.long()
    order = torch.argsort(key, stable=True)
    return order[torch.argsort(pixel_ids[order], stable=True)]


def _pair_order_reference(pixel_ids: torch.Tensor, depths: torch.Tensor, gauss_ids: torch.Tensor) -> torch.Tensor:
    """`_pair_order`'s twin: one stable sort per key, the least significant first."""
    order = torch.argsort(gauss_ids, stable=True)
    order = order[torch.argsort(depths[order], stable=True)]
    return order[torch.argsort(pixel_ids[order], stable=True)]


def _front_to_back(pixel_ids: torch.Tensor, alphas: torch.Tensor, depths: torch.Tensor, gauss_ids: torch.Tensor):
    """The pairs put front to back per pixel (`_pair_order`).

    Returns (order [M] into the pairs, pixel [M] int64, alpha [M] float64, transmittance before each pair [M],
    transmittance after it [M], first pair of its pixel [M] bool), all in that order.
    """
    m = gauss_ids.shape[0]
    order = _pair_order(pixel_ids, depths, gauss_ids)
    pix, alpha = pixel_ids[order].long(), alphas[order].double()
    log_keep = torch.log1p(-alpha)
    cum = torch.cumsum(log_keep, 0)
    seg_start = torch.ones_like(pix, dtype=torch.bool)
    seg_start[1:] = pix[1:] != pix[:-1]
    start_index = torch.cummax(torch.where(seg_start, torch.arange(m, device=pix.device), 0), 0).values
    before_segment = torch.where(start_index > 0, cum[(start_index - 1).clamp_min(0)], torch.zeros_like(cum))
    trans_before = torch.exp(cum - log_keep - before_segment)
    return order, pix, alpha, trans_before, torch.exp(cum - before_segment), seg_start


def _check_pairs(gauss_ids, pixel_ids, alphas, depths) -> None:
    m = gauss_ids.shape[0]
    assert gauss_ids.shape == (m,) and pixel_ids.shape == (m,), (gauss_ids.shape, pixel_ids.shape)
    assert alphas.shape == (m,) and depths.shape == (m,), (alphas.shape, depths.shape)


def best_gaussian_from_pairs(
    gauss_ids: torch.Tensor,  # [M] int, Gaussian index of each contributing pair
    pixel_ids: torch.Tensor,  # [M] int, flat pixel index (image * H * W + row * W + col)
    alphas: torch.Tensor,  # [M] float, the pair's alpha as composited
    depths: torch.Tensor,  # [M] float, the Gaussian's camera z (front-to-back order key)
    n_pixels: int,
    ordered: tuple | None = None,
) -> torch.Tensor:
    """Index of the Gaussian with the largest blending weight alpha * T at each pixel.

    Pairs may come in any order: each pixel's pairs are put front to back (camera z,
    then Gaussian index, as the tile lists are) and T is the product of (1 - alpha) of
    the pairs in front. Ties go to the front-most Gaussian. `ordered`: `_front_to_back` of these pairs when
    the caller has it already (the median depth uses the same).

    Returns:
        [n_pixels] int64, -1 where no Gaussian contributes.
    """
    _check_pairs(gauss_ids, pixel_ids, alphas, depths)
    m = gauss_ids.shape[0]
    best = torch.full((n_pixels,), -1, dtype=torch.int64, device=gauss_ids.device)
    if m == 0:
        return best
    order, pix, alpha, trans_before, _, _ = ordered or _front_to_back(pixel_ids, alphas, depths, gauss_ids)
    gid = gauss_ids[order].long()
    weight = alpha * trans_before
    best_weight = torch.zeros(n_pixels, dtype=weight.dtype, device=weight.device)
    best_weight = best_weight.scatter_reduce(0, pix, weight, reduce="amax")
    position = torch.arange(m, device=pix.device)
    candidate = torch.where(weight >= best_weight[pix], position, torch.full_like(position, m))
    first = torch.full((n_pixels,), m, dtype=torch.int64, device=pix.device).scatter_reduce(
        0, pix, candidate, reduce="amin"
    )
    hit = first < m
    best[hit] = gid[first[hit]]
    return best


def median_depth_from_pairs(
    gauss_ids: torch.Tensor,  # [M] int
    pixel_ids: torch.Tensor,  # [M] int, flat pixel index
    alphas: torch.Tensor,  # [M] float
    depths: torch.Tensor,  # [M] float, camera z
    n_pixels: int,
    ordered: tuple | None = None,
) -> torch.Tensor:
    """Camera z of the pair that takes each pixel's transmittance from above MEDIAN_T to MEDIAN_T or below
    (pairs in any order, put front to back as in `best_gaussian_from_pairs`; `ordered` as there).

    Returns:
        [n_pixels] float32, NaN where the transmittance never gets there.
    """
    _check_pairs(gauss_ids, pixel_ids, alphas, depths)
    median = torch.full((n_pixels,), math.nan, dtype=torch.float32, device=gauss_ids.device)
    if gauss_ids.shape[0] == 0:
        return median
    order, pix, _, _, trans_after, first = ordered or _front_to_back(pixel_ids, alphas, depths, gauss_ids)
    # the transmittance before a pair is the one after the previous pair of its pixel (1 for the first), the same
    # float: exactly one crossing per pixel that gets there
    before = torch.cat([torch.ones_like(trans_after[:1]), trans_after[:-1]])
    before = torch.where(first, torch.ones_like(before), before)
    crossing = (before > MEDIAN_T) & (trans_after <= MEDIAN_T)
    median[pix[crossing]] = depths[order][crossing].float()
    return median


def render_gsplat(scene, batch: CameraBatch, outputs: tuple[str, ...], background: np.ndarray) -> dict[str, np.ndarray]:
    """Backend adapter for `render()`: gsplat on the current CUDA device, numpy out."""
    if not torch.cuda.is_available():
        raise RuntimeError("render: backend 'gsplat' needs a CUDA device; use the cpu backend on this machine "
                           "(--backend cpu, or backend='cpu' in Python)")
    try:
        from gsplat import rasterization
    except ImportError as err:
        raise RuntimeError(f"render: backend 'gsplat' needs the gsplat package (pip install .[gpu]): {err}") from None
    device = torch.device("cuda")

    def to_dev(array: np.ndarray) -> torch.Tensor:
        return torch.tensor(array, device=device)  # copies: the scene's arrays are read-only

    c_count, h, w = batch.viewmats.shape[0], batch.height, batch.width
    opacities = to_dev(scene.opacities)
    renders, alphas, meta = rasterization(
        to_dev(scene.means),
        to_dev(scene.quats),
        to_dev(scene.scales),
        opacities,
        to_dev(scene.sh),
        to_dev(batch.viewmats.astype(np.float32)),
        to_dev(batch.Ks.astype(np.float32)),
        w,
        h,
        **gsplat_kwargs(scene.sh.shape[1], to_dev(background), c_count),
    )
    result = {
        "rgb": renders[..., :3].float().cpu().numpy(),
        "depth": renders[..., 3].float().cpu().numpy(),
        "alpha": alphas[..., 0].float().cpu().numpy(),
    }
    pairs = _gsplat_pairs(meta, c_count, h, w, len(scene)) if len(scene) > 0 and (
        {"semantic", "instance", "median_depth"} & set(outputs)) else None
    # one front-to-back ordering of the pairs serves the median depth and the labels
    ordered = None if pairs is None or pairs[0].numel() == 0 else _front_to_back(pairs[1], pairs[2], pairs[3],
                                                                                pairs[0])
    if "median_depth" in outputs:
        median = torch.full((c_count * h * w,), math.nan, device=device) if pairs is None else \
            median_depth_from_pairs(*pairs, c_count * h * w, ordered=ordered)
        median = median.reshape(c_count, h, w).cpu().numpy()
        result["median_depth"] = np.where(np.isnan(median), result["depth"], median).astype(np.float32)
    if ("semantic" in outputs or "instance" in outputs) and len(scene) > 0:
        best = best_gaussian_from_pairs(*pairs, c_count * h * w, ordered=ordered).reshape(c_count, h, w)
        shown = (best >= 0) & (alphas[..., 0] >= SEMANTIC_MIN_ALPHA)
        index = best.clamp_min(0)
        if "semantic" in outputs:
            labels = torch.tensor(scene.labels, dtype=torch.int64, device=device)[index]
            result["semantic"] = torch.where(shown, labels, 0).to(torch.uint8).cpu().numpy()
        if "instance" in outputs:
            inst = torch.tensor(scene.instance, dtype=torch.int64, device=device)[index]
            result["instance"] = torch.where(shown, inst, 0).to(torch.int32).cpu().numpy()
    else:
        result["semantic"] = np.zeros((c_count, h, w), np.uint8)
        result["instance"] = np.zeros((c_count, h, w), np.int32)
    return {k: result[k] for k in outputs}


def _gsplat_pairs(meta: dict, c_count: int, h: int, w: int, n: int) -> tuple[torch.Tensor, ...]:
    """gsplat's contributing (Gaussian, pixel) pairs: Gaussian index, flat pixel (image * H * W + pixel), alpha
    and camera z, each [M]: the input of `best_gaussian_from_pairs` and `median_depth_from_pairs`."""
    from gsplat.cuda._wrapper import rasterize_to_indices_in_range

    flatten_ids = meta["flatten_ids"]
    n_batches = int(flatten_ids.numel()) // (TILE_SIZE * TILE_SIZE) + 1
    gauss_ids, pixel_ids, image_ids = rasterize_to_indices_in_range(
        0,
        n_batches,
        torch.ones((c_count, h, w), device=flatten_ids.device),
        meta["means2d"],
        meta["conics"],
        meta["opacities"],
        w,
        h,
        TILE_SIZE,
        meta["isect_offsets"],
        flatten_ids,
    )
    # gsplat returns per-image Gaussian ids (g % N) and the image in a separate tensor
    image = image_ids.long()
    gauss = gauss_ids.long()
    flat = image * n + gauss
    means2d = meta["means2d"].reshape(-1, 2)[flat]
    conics = meta["conics"].reshape(-1, 3)[flat]
    opac = meta["opacities"].reshape(-1)[flat]
    px = (pixel_ids % w).float() + 0.5
    py = (pixel_ids // w).float() + 0.5
    dx, dy = means2d[:, 0] - px, means2d[:, 1] - py
    sigma = 0.5 * (conics[:, 0] * dx * dx + conics[:, 2] * dy * dy) + conics[:, 1] * dx * dy
    alpha = torch.clamp_max(opac * torch.exp(-sigma), gsplat_max_alpha())
    keep = alpha >= ALPHA_THRESHOLD
    depth = meta["depths"].reshape(-1)[flat]
    flat_pixel = image * (h * w) + pixel_ids.long()
    return gauss[keep], flat_pixel[keep], alpha[keep], depth[keep]
