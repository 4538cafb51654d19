"""Differentiable image losses (torch twins of neural_sensor.metrics, tested against them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neural_sensor.metrics import SSIM_K1, SSIM_K2, _gaussian_window


def ssim_map_torch(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM [B, H - 10, W - 10] averaged over channels, as metrics.ssim_map (valid window region).

    Args:
        prediction, target: [B, C, H, W] float, data range 1, H and W >= 11.
    """
    assert prediction.shape == target.shape and prediction.ndim == 4, (prediction.shape, target.shape)
    b, c, h, w = prediction.shape
    g = torch.tensor(_gaussian_window(), dtype=prediction.dtype)
    k = len(g)
    assert h >= k and w >= k, (h, w)
    row = g.view(1, 1, 1, k).repeat(c, 1, 1, 1)
    col = g.view(1, 1, k, 1).repeat(c, 1, 1, 1)

    def blur(x):
        return F.conv2d(F.conv2d(x, row, groups=c), col, groups=c)

    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mu_a, mu_b = blur(prediction), blur(target)
    var_a = blur(prediction * prediction) - mu_a**2
    var_b = blur(target * target) - mu_b**2
    cov = blur(prediction * target) - mu_a * mu_b
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return value.mean(dim=1)
