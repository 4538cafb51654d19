"""Small random scenes and cameras shared by the render tests."""

from __future__ import annotations

import numpy as np
import torch

from neural_sensor.camera import Camera
from neural_sensor.gaussians import GaussianScene
from neural_sensor.render._common import ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_THRESHOLD, stack_cameras
from neural_sensor.render._torch_ref import _project, _quat_scale_to_covar, _sh_to_rgb
from neural_sensor.sh import num_sh_bases


def random_scene(n: int, seed: int, sh_degree: int = 0, spread_m: float = 3.0) -> GaussianScene:
    """n Gaussians scattered in front of a camera at the origin looking along +x (FLU world).

    Includes every case the rasteriser has to handle: random orientations, very
    anisotropic and tiny Gaussians, opacities above the 0.99 clamp and below the
    1/255 threshold, Gaussians behind the camera and off screen.
    """
    rng = np.random.default_rng(seed)
    means = np.stack(
        [rng.uniform(1.0, 8.0, n), rng.uniform(-spread_m, spread_m, n), rng.uniform(-spread_m, spread_m, n) * 0.6],
        axis=1,
    )
    means[: max(1, n // 20), 0] = -rng.uniform(0.5, 3.0, max(1, n // 20))  # behind the camera
    quats = rng.normal(size=(n, 4))
    scales = np.exp(rng.uniform(np.log(0.005), np.log(0.4), (n, 3)))
    scales[: n // 10, 2] = 1e-4  # flat splats
    opacities = rng.uniform(0.0, 1.0, n)
    opacities[: n // 8] = 1.0
    sh = rng.normal(0.0, 0.6, (n, num_sh_bases(sh_degree), 3))
    sh[:, 1:] *= 0.3
    labels = rng.integers(0, 29, n)
    instance = rng.integers(0, 50, n)
    return GaussianScene(
        means.astype(np.float32),
        quats.astype(np.float32),
        scales.astype(np.float32),
        opacities.astype(np.float32),
        sh.astype(np.float32),
        labels.astype(np.uint8),
        instance.astype(np.int32),
    )


def forward_camera(width: int = 64, height: int = 48, fov_deg: float = 70.0, yaw: float = 0.0) -> Camera:
    """Camera at the origin looking along +x (rotated by `yaw` radians about z)."""
    target = np.array([np.cos(yaw), np.sin(yaw), 0.02])
    return Camera.look_at(width, height, fov_deg, np.zeros(3), target)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def brute_force_composite(scene: GaussianScene, camera: Camera, background=(0.0, 0.0, 0.0)) -> dict:
    """Composite every projected Gaussian at every pixel, no tiles, float64: the oracle for the tiling.

    Uses the reference's projection (checked by known answers) and gsplat's classic compositing rule.
    Returns rgb [H, W, 3], alpha [H, W] and the contributing pairs pair_gauss, pair_pixel (flat), pair_alpha, pair_depth [M].
    """
    t = {k: torch.tensor(getattr(scene, k), dtype=torch.float64) for k in ("means", "quats", "scales", "opacities", "sh")}
    batch = stack_cameras([camera])
    w, h = batch.width, batch.height
    proj = _project(t["means"], _quat_scale_to_covar(t["quats"], t["scales"]), t["opacities"],
                    torch.tensor(batch.viewmats[0]), torch.tensor(batch.Ks[0]), w, h)
    colors = _sh_to_rgb(t["sh"], t["means"] - torch.tensor(camera.position_world))
    ids = torch.nonzero(proj["valid"]).squeeze(1)
    ids = ids[torch.argsort(proj["depth"][ids], stable=True)]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    trans = torch.ones(h * w, dtype=torch.float64)
    done = torch.zeros(h * w, dtype=torch.bool)
    acc = torch.zeros(h * w, 3, dtype=torch.float64)
    pairs = {"pair_gauss": [], "pair_pixel": [], "pair_alpha": [], "pair_depth": []}
    for g in ids.tolist():
        dx = proj["mean2d"][g, 0] - (xs + 0.5)
        dy = proj["mean2d"][g, 1] - (ys + 0.5)
        a, b, c = proj["conic"][g]
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = torch.clamp(t["opacities"][g] * torch.exp(-sigma), max=MAX_ALPHA)
        ok = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & ~done
        next_t = trans * (1 - alpha)
        stop = ok & (next_t <= TRANSMITTANCE_THRESHOLD)
        add = ok & ~stop
        acc += torch.where(add[:, None], (alpha * trans)[:, None] * colors[g], torch.zeros(3, dtype=torch.float64))
        where = torch.nonzero(add).squeeze(1)
        pairs["pair_gauss"].append(torch.full_like(where, g))
        pairs["pair_pixel"].append(where)
        pairs["pair_alpha"].append(alpha[where])
        pairs["pair_depth"].append(torch.full((where.numel(),), float(proj["depth"][g]), dtype=torch.float64))
        trans = torch.where(add, next_t, trans)
        done |= stop
    rgb = acc + trans[:, None] * torch.tensor(background, dtype=torch.float64)
    return {
        "rgb": rgb.reshape(h, w, 3).numpy(),
        "alpha": (1 - trans).reshape(h, w).numpy(),
        **{k: torch.cat(v) for k, v in pairs.items()},
    }
