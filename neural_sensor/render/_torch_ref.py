"""Reference renderer in plain PyTorch: the twin every fast backend is tested against.

Differentiable with respect to means, quats, scales, opacities and sh (through
projection, SH evaluation and alpha compositing); the tile lists and the
termination masks are integer bookkeeping and carry no gradient, as in gsplat.

It is tile-based so that memory stays O(pixels-per-tile x Gaussians-in-tile)
and a 96x160 image of ~30k Gaussians trains on a CPU. Every Gaussian listed for
a tile is composited: there is no per-tile cap. Because a Gaussian's tile
bounding box is the opacity-aware box outside which its alpha is below
ALPHA_THRESHOLD everywhere, the image does not depend on the tile size.

Semantics are gsplat's "classic" mode; see `_common.py` for the constants.
"""

from __future__ import annotations

import math

import numpy as np
import torch

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
from neural_sensor.sh import SH_C0, SH_C1, SH_C2, SH_C3, sh_degree_from_bases


def _quat_scale_to_covar(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """[N, 4] (w, x, y, z) any norm, [N, 3] linear scales -> [N, 3, 3] world covariance R S S^T R^T."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)
    m = rot * scales[:, None, :]
    return m @ m.transpose(1, 2)


def _sh_to_rgb(sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """SH coefficients [N, K, 3] seen along directions [N, 3] (any norm) -> colour [N, 3], clamped at 0."""
    degree = sh_degree_from_bases(sh.shape[1])
    d = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x, y, z = d[:, 0:1], d[:, 1:2], d[:, 2:3]
    out = SH_C0 * sh[:, 0]
    if degree >= 1:
        out = out - SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out = (
            out
            + SH_C2[0] * xy * sh[:, 4]
            + SH_C2[1] * yz * sh[:, 5]
            + SH_C2[2] * (2.0 * zz - xx - yy) * sh[:, 6]
            + SH_C2[3] * xz * sh[:, 7]
            + SH_C2[4] * (xx - yy) * sh[:, 8]
        )
    if degree >= 3:
        out = (
            out
            + SH_C3[0] * y * (3.0 * xx - yy) * sh[:, 9]
            + SH_C3[1] * xy * z * sh[:, 10]
            + SH_C3[2] * y * (4.0 * zz - xx - yy) * sh[:, 11]
            + SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * sh[:, 12]
            + SH_C3[4] * x * (4.0 * zz - xx - yy) * sh[:, 13]
            + SH_C3[5] * z * (xx - yy) * sh[:, 14]
            + SH_C3[6] * x * (xx - 3.0 * yy) * sh[:, 15]
        )
    return torch.clamp_min(out + 0.5, 0.0)


def _project(
    means: torch.Tensor,  # [N, 3]
    covars: torch.Tensor,  # [N, 3, 3]
    opacities: torch.Tensor,  # [N]
    viewmat: torch.Tensor,  # [4, 4]
    K: torch.Tensor,  # [3, 3]
    width: int,
    height: int,
) -> dict[str, torch.Tensor]:
    """EWA projection of 3D Gaussians into one camera (gsplat's persp_proj + eps2d dilation).

    Returns mean2d [N, 2], conic [N, 3] (inverse 2D covariance a, b, c), depth [N]
    (camera z), radii [N, 2] int64 (0 where culled) and valid [N] bool.
    """
    rot, trans = viewmat[:3, :3], viewmat[:3, 3]
    means_c = means @ rot.T + trans
    x, y, z = means_c.unbind(-1)
    in_depth = (z >= NEAR_PLANE_M) & (z <= FAR_PLANE_M)
    z_safe = torch.where(in_depth, z, torch.ones_like(z))  # keeps culled Gaussians out of the gradient
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = z_safe * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x / z_safe))
    ty = z_safe * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y / z_safe))
    zeros = torch.zeros_like(z_safe)
    jac = torch.stack(
        [fx / z_safe, zeros, -fx * tx / z_safe**2, zeros, fy / z_safe, -fy * ty / z_safe**2], dim=-1
    ).reshape(-1, 2, 3)
    covar_c = rot @ covars @ rot.T
    cov2d = jac @ covar_c @ jac.transpose(1, 2)
    a = cov2d[:, 0, 0] + EPS2D
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + EPS2D
    det = a * c - b * b
    ok_det = det > 0
    det_safe = torch.where(ok_det, det, torch.ones_like(det))
    conic = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    mean2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)

    with torch.no_grad():
        opac = opacities.detach()
        visible_opac = opac >= ALPHA_THRESHOLD
        extend = torch.sqrt(2.0 * torch.log(opac.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
        extend = torch.clamp_max(extend, GAUSSIAN_EXTEND)
        radius_x = torch.ceil(extend * torch.sqrt(a.detach().clamp_min(0)))
        radius_y = torch.ceil(extend * torch.sqrt(c.detach().clamp_min(0)))
        m2 = mean2d.detach()
        on_image = (
            (m2[:, 0] + radius_x > 0)
            & (m2[:, 0] - radius_x < width)
            & (m2[:, 1] + radius_y > 0)
            & (m2[:, 1] - radius_y < height)
        )
        valid = in_depth & ok_det & visible_opac & ((radius_x > 0) | (radius_y > 0)) & on_image
        radii = torch.stack([radius_x, radius_y], dim=-1).to(torch.int64) * valid[:, None]
    return {"mean2d": mean2d, "conic": conic, "depth": z, "radii": radii, "valid": valid}


def _intersect_tiles(
    mean2d: torch.Tensor, radii: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor,
    width: int, height: int, tile_size: int,
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Tile lists, sorted front to back (by camera z, then Gaussian index).

    Returns tile_offsets [n_tiles + 1] and flat_ids [n_isects] (Gaussian indices),
    plus the tile grid size (tiles_x, tiles_y).
    """
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    with torch.no_grad():
        ids = torch.nonzero(valid).squeeze(1)
        order = torch.argsort(depth.detach()[ids], stable=True)
        ids = ids[order]
        m = mean2d.detach()[ids] / tile_size
        r = radii[ids].to(m.dtype) / tile_size
        x0 = torch.clamp(torch.floor(m[:, 0] - r[:, 0]), 0, tiles_x).long()
        x1 = torch.clamp(torch.ceil(m[:, 0] + r[:, 0]), 0, tiles_x).long()
        y0 = torch.clamp(torch.floor(m[:, 1] - r[:, 1]), 0, tiles_y).long()
        y1 = torch.clamp(torch.ceil(m[:, 1] + r[:, 1]), 0, tiles_y).long()
        nx, ny = x1 - x0, y1 - y0
        counts = nx * ny
        total = int(counts.sum())
        gauss_of_isect = torch.repeat_interleave(torch.arange(ids.numel()), counts)
        starts = torch.cumsum(counts, 0) - counts
        local = torch.arange(total) - starts[gauss_of_isect]
        nx_g = nx[gauss_of_isect].clamp_min(1)
        tile_ids = (y0[gauss_of_isect] + local // nx_g) * tiles_x + x0[gauss_of_isect] + local % nx_g
        # stable sort by tile keeps the depth order inside each tile
        by_tile = torch.argsort(tile_ids, stable=True)
        flat_ids = ids[gauss_of_isect[by_tile]]
        tile_counts = torch.bincount(tile_ids, minlength=tiles_x * tiles_y)
        tile_offsets = torch.zeros(tiles_x * tiles_y + 1, dtype=torch.long)
        tile_offsets[1:] = torch.cumsum(tile_counts, 0)
    return tile_offsets, flat_ids, tiles_x, tiles_y


def render_torch(
    means: torch.Tensor,  # [N, 3]
    quats: torch.Tensor,  # [N, 4]
    scales: torch.Tensor,  # [N, 3]
    opacities: torch.Tensor,  # [N]
    sh: torch.Tensor,  # [N, K, 3]
    viewmats: torch.Tensor,  # [C, 4, 4]
    Ks: torch.Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    background: torch.Tensor | None = None,  # [3]
    labels: torch.Tensor | None = None,  # [N] integer
    instance: torch.Tensor | None = None,  # [N] integer
    tile_size: int = TILE_SIZE,
) -> dict[str, torch.Tensor]:
    """Differentiable reference render of C cameras.

    Args:
        means: [N, 3] world frame.
        quats: [N, 4] (w, x, y, z), any non-zero norm.
        scales: [N, 3] linear.
        opacities: [N] in [0, 1].
        sh: [N, K, 3] SH coefficients, K in {1, 4, 9, 16}.
        viewmats: [C, 4, 4] pose_world_to_camera.
        Ks: [C, 3, 3] intrinsics.
        background: [3] colour added with the remaining transmittance.
        labels, instance: [N]; when given, "semantic" / "instance" are returned.
    Returns:
        dict with rgb [C, H, W, 3], depth [C, H, W] (expected camera z, 0 where
        alpha is 0), alpha [C, H, W], median_depth [C, H, W] (camera z of the Gaussian that takes the
        transmittance to MEDIAN_T or below; the expected depth where it never gets there; no gradient),
        and semantic / instance [C, H, W] int64 if asked.
    """
    n = means.shape[0]
    assert means.shape == (n, 3), means.shape
    assert quats.shape == (n, 4), quats.shape
    assert scales.shape == (n, 3), scales.shape
    assert opacities.shape == (n,), opacities.shape
    assert sh.ndim == 3 and sh.shape[0] == n and sh.shape[2] == 3, sh.shape
    c_count = viewmats.shape[0]
    assert viewmats.shape == (c_count, 4, 4), viewmats.shape
    assert Ks.shape == (c_count, 3, 3), Ks.shape
    assert labels is None or labels.shape == (n,), labels.shape
    assert instance is None or instance.shape == (n,), instance.shape
    dtype = means.dtype
    if background is None:
        background = torch.zeros(3, dtype=dtype)
    assert background.shape == (3,), background.shape

    covars = _quat_scale_to_covar(quats, scales)
    camera_pos = -torch.einsum("cji,cj->ci", viewmats[:, :3, :3], viewmats[:, :3, 3])
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)

    # pixel centres of every tile, computed once for all cameras
    ty_grid, tx_grid = torch.meshgrid(torch.arange(tile_size), torch.arange(tile_size), indexing="ij")
    local_x, local_y = tx_grid.reshape(-1), ty_grid.reshape(-1)

    results: dict[str, list[torch.Tensor]] = {"rgb": [], "depth": [], "alpha": [], "median_depth": [], "semantic": [],
                                              "instance": []}
    for cam in range(c_count):
        proj = _project(means, covars, opacities, viewmats[cam], Ks[cam], width, height)
        colors = _sh_to_rgb(sh, means - camera_pos[cam])
        offsets, flat_ids, _, _ = _intersect_tiles(
            proj["mean2d"], proj["radii"], proj["depth"], proj["valid"], width, height, tile_size
        )
        pix_index, rgb_px, depth_px, alpha_px, best_px, median_px = [], [], [], [], [], []
        for tile in range(tiles_x * tiles_y):
            t_x, t_y = tile % tiles_x, tile // tiles_x
            px = t_x * tile_size + local_x
            py = t_y * tile_size + local_y
            inside = (px < width) & (py < height)
            px, py = px[inside], py[inside]
            pix_index.append(py * width + px)
            ids = flat_ids[offsets[tile] : offsets[tile + 1]]
            if ids.numel() == 0:
                p = px.numel()
                rgb_px.append(background.expand(p, 3))
                depth_px.append(torch.zeros(p, dtype=dtype))
                alpha_px.append(torch.zeros(p, dtype=dtype))
                best_px.append(torch.full((p,), -1, dtype=torch.long))
                median_px.append(torch.full((p,), math.nan, dtype=dtype))
                continue
            mean2d = proj["mean2d"][ids]
            conic = proj["conic"][ids]
            dx = mean2d[None, :, 0] - (px.to(dtype) + 0.5)[:, None]  # [P, M]
            dy = mean2d[None, :, 1] - (py.to(dtype) + 0.5)[:, None]
            sigma = 0.5 * (conic[None, :, 0] * dx * dx + conic[None, :, 2] * dy * dy) + conic[None, :, 1] * dx * dy
            alpha = torch.clamp_max(opacities[ids][None, :] * torch.exp(-sigma), MAX_ALPHA)
            contributes = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
            alpha = torch.where(contributes, alpha, torch.zeros_like(alpha))
            with torch.no_grad():
                # front to back, a pixel stops (exclusive) at the first Gaussian that takes T to the threshold
                keep = torch.cumprod(1.0 - alpha.detach(), dim=1) > TRANSMITTANCE_THRESHOLD
            alpha = alpha * keep
            trans_incl = torch.cumprod(1.0 - alpha, dim=1)
            trans_excl = torch.cat([torch.ones_like(trans_incl[:, :1]), trans_incl[:, :-1]], dim=1)
            weights = alpha * trans_excl  # [P, M]
            t_final = trans_incl[:, -1]
            rgb_px.append(weights @ colors[ids] + t_final[:, None] * background)
            depth_px.append(weights @ proj["depth"][ids])
            alpha_px.append(1.0 - t_final)
            with torch.no_grad():
                w_max, arg = weights.detach().max(dim=1)
                best_px.append(torch.where(w_max > 0, ids[arg], torch.full_like(arg, -1)))
                # median depth: the first Gaussian after which T <= MEDIAN_T (NaN: never; the expected depth below)
                crossed = trans_incl.detach() <= MEDIAN_T
                first = crossed.to(torch.int8).argmax(dim=1)
                median_px.append(torch.where(crossed.any(dim=1), proj["depth"].detach()[ids][first],
                                             torch.full_like(t_final.detach(), math.nan)))
        order = torch.cat(pix_index)
        hw = height * width

        def scatter(parts: list[torch.Tensor], trailing: tuple[int, ...] = ()) -> torch.Tensor:
            values = torch.cat(parts)
            out = torch.zeros((hw,) + trailing, dtype=values.dtype)
            return out.index_copy(0, order, values)

        alpha_img = scatter(alpha_px)
        depth_sum = scatter(depth_px)
        results["rgb"].append(scatter(rgb_px, (3,)).reshape(height, width, 3))
        results["alpha"].append(alpha_img.reshape(height, width))
        results["depth"].append((depth_sum / alpha_img.clamp_min(1e-10)).reshape(height, width))
        median = scatter(median_px)
        results["median_depth"].append(torch.where(torch.isnan(median), results["depth"][-1].detach().reshape(-1),
                                                   median).reshape(height, width))
        best = scatter(best_px)
        shown = (best >= 0) & (alpha_img.detach() >= SEMANTIC_MIN_ALPHA)
        for name, values in (("semantic", labels), ("instance", instance)):
            if values is not None:
                if values.numel() == 0:  # an empty scene labels nothing
                    results[name].append(torch.zeros(height, width, dtype=torch.long))
                    continue
                picked = values.long()[best.clamp_min(0)]
                results[name].append(torch.where(shown, picked, torch.zeros_like(picked)).reshape(height, width))
    return {k: torch.stack(v) for k, v in results.items() if v}


def render_reference(scene, batch: CameraBatch, outputs: tuple[str, ...], background: np.ndarray) -> dict[str, np.ndarray]:
    """Backend adapter for `render()`: numpy scene in, numpy images out (no gradient)."""
    with torch.no_grad():
        # torch.tensor copies: the scene's arrays are read-only
        out = render_torch(
            torch.tensor(scene.means),
            torch.tensor(scene.quats),
            torch.tensor(scene.scales),
            torch.tensor(scene.opacities),
            torch.tensor(scene.sh),
            torch.tensor(batch.viewmats, dtype=torch.float32),
            torch.tensor(batch.Ks, dtype=torch.float32),
            batch.width,
            batch.height,
            background=torch.tensor(background),
            labels=torch.tensor(scene.labels, dtype=torch.int64) if "semantic" in outputs else None,
            instance=torch.tensor(scene.instance, dtype=torch.int64) if "instance" in outputs else None,
        )
    result = {k: out[k].numpy() for k in outputs}
    if "semantic" in result:
        result["semantic"] = result["semantic"].astype(np.uint8)
    if "instance" in result:
        result["instance"] = result["instance"].astype(np.int32)
    return result


def _backproject_colour_residuals_reference(scene, batch: CameraBatch, targets_rgb: np.ndarray,
                                            background: np.ndarray, sky_masks: np.ndarray | None = None,
                                            lod_px: float = 0.0
                                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Twin of `backproject.backproject_colour_residuals` by autograd: sum_p w_ip r_p is the gradient of sum_p r_p . rgb_p
    (r held fixed) with respect to Gaussian i's colour, sum_p w_ip that of the summed image, and sum_p w_ip s_p
    that of the image weighted by the sky mask s.

    With lod_px > 0 each camera renders what `render_cpu(..., lod_px)` draws (`lod.lod_split`): the Gaussians
    drawn themselves, then the merged Gaussians of the far groups, whose gradients reach their members through
    the merge (merged colour = sum_i shares_i c_i, `LodGroups.shares`).
    Exact for Gaussians whose colour is not clamped at 0 (where the render's colour has no gradient).
    Returns weighted_residual [N, 3], weight [N], rgb [C, H, W, 3], sky_weight [N] as the fast path does.
    """
    from neural_sensor.camera import Camera
    from neural_sensor.render.lod import _lod_groups, lod_split, lod_scene

    n = len(scene)
    weighted, weight, sky_weight = np.zeros((n, 3)), np.zeros(n), np.zeros(n)
    rgbs = []
    for cam in range(batch.viewmats.shape[0]):
        drawn, to_members = scene, None
        if lod_px > 0:
            camera = Camera(batch.width, batch.height, batch.Ks[cam], np.linalg.inv(batch.viewmats[cam]))
            fine, coarse = lod_split(scene, camera, lod_px)
            drawn = lod_scene(scene, camera, lod_px)  # scene.subset(fine), then the coarse groups' merges
            lod = scene.derived("lod_groups", _lod_groups)
            # row r of `drawn` -> (member, share) pairs: a fine Gaussian itself, a merge each of its group's members
            member_group = np.repeat(np.arange(len(lod.sigma)), np.diff(lod.group_starts))
            in_coarse = coarse[member_group]
            merged_row = np.full(len(lod.sigma), -1)
            merged_row[coarse] = int(fine.sum()) + np.arange(int(coarse.sum()))
            to_members = (np.concatenate([np.nonzero(fine)[0], lod.group_order[in_coarse]]),
                          np.concatenate([np.arange(int(fine.sum())), merged_row[member_group[in_coarse]]]),
                          np.concatenate([np.ones(int(fine.sum())), lod.shares[in_coarse].astype(np.float64)]))
        sh = torch.tensor(drawn.sh, dtype=torch.float64, requires_grad=True)
        out = render_torch(torch.tensor(drawn.means, dtype=torch.float64),
                           torch.tensor(drawn.quats, dtype=torch.float64),
                           torch.tensor(drawn.scales, dtype=torch.float64),
                           torch.tensor(drawn.opacities, dtype=torch.float64), sh,
                           torch.tensor(batch.viewmats[cam:cam + 1], dtype=torch.float64),
                           torch.tensor(batch.Ks[cam:cam + 1], dtype=torch.float64),
                           batch.width, batch.height, background=torch.tensor(background, dtype=torch.float64))
        rgb = out["rgb"]
        residual = torch.tensor(targets_rgb[cam:cam + 1], dtype=torch.float64) - rgb.detach()
        (grad_weighted,) = torch.autograd.grad((residual * rgb).sum(), sh, retain_graph=True)
        (grad_weight,) = torch.autograd.grad(rgb[..., 0].sum(), sh, retain_graph=True)
        sky = torch.zeros(rgb.shape[:3], dtype=torch.float64) if sky_masks is None else torch.tensor(
            np.asarray(sky_masks[cam:cam + 1], np.float64))
        (grad_sky,) = torch.autograd.grad((rgb[..., 0] * sky).sum(), sh)
        rows = (grad_weighted[:, 0, :].numpy() / SH_C0, grad_weight[:, 0, 0].numpy() / SH_C0,
                grad_sky[:, 0, 0].numpy() / SH_C0)  # d colour / d sh_dc = SH_C0
        if to_members is None:
            weighted += rows[0]
            weight += rows[1]
            sky_weight += rows[2]
        else:
            member, row, share = to_members
            np.add.at(weighted, member, share[:, None] * rows[0][row])
            np.add.at(weight, member, share * rows[1][row])
            np.add.at(sky_weight, member, share * rows[2][row])
        rgbs.append(rgb.detach().numpy()[0].astype(np.float32))
    return weighted, weight, np.stack(rgbs), sky_weight
