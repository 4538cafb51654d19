"""Small random scenes and cameras shared by the render tests."""

from __future__ import annotations

import numpy as np

from neural_sensor.camera import Camera
from neural_sensor.gaussians import GaussianScene
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
