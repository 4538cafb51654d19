"""Image and depth metrics: PSNR, SSIM, depth AbsRel, each optionally restricted to a pixel mask.

Images are float arrays in [0, 1] shaped [..., H, W, 3] (or [..., H, W] for one channel);
masks are boolean [..., H, W]. SSIM is the standard one (Wang et al. 2004): an 11x11 Gaussian
window with sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, averaged over channels; with a
mask, the SSIM map is averaged over the masked pixels. LPIPS needs pretrained backbone
weights that cannot be downloaded here, so it is not provided.
"""

from __future__ import annotations

import math

import numpy as np

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _check_pair(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray | None) -> None:
    if prediction.shape != target.shape:
        raise ValueError(f"metrics: prediction {prediction.shape} and target {target.shape} differ in shape")
    if mask is not None:
        spatial = prediction.shape if prediction.ndim == mask.ndim else prediction.shape[:-1]
        if mask.shape != spatial:
            raise ValueError(f"metrics: mask {mask.shape} does not match the images' pixels {spatial}")


def psnr(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB for data range 1 (inf for identical images, nan for an empty mask).

    Args:
        prediction, target: [..., H, W, C] or [..., H, W] floats in [0, 1].
        mask: optional [..., H, W] bool; only those pixels count.
    """
    _check_pair(prediction, target, mask)
    err = (prediction.astype(np.float64) - target.astype(np.float64)) ** 2
    if mask is not None:
        if err.ndim > mask.ndim:
            err = err.mean(axis=-1)
        if not mask.any():
            return float("nan")
        err = err[mask]
    mse = float(err.mean())
    return float("inf") if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_window() -> np.ndarray:
    x = np.arange(SSIM_WINDOW) - SSIM_WINDOW // 2
    g = np.exp(-(x**2) / (2.0 * SSIM_SIGMA**2))
    return g / g.sum()


def _blur(image: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter over the last two axes ([..., H, W]), 'valid' region only."""
    g = _gaussian_window()
    k = len(g)
    h, w = image.shape[-2:]
    rows = sum(g[i] * image[..., i:h - k + 1 + i, :] for i in range(k))
    return sum(g[i] * rows[..., :, i:w - k + 1 + i] for i in range(k))


def ssim_map(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM [..., H - 10, W - 10] (the window's valid region), averaged over channels.

    Args:
        prediction, target: [..., H, W, C] or [..., H, W], H and W >= 11.
    """
    _check_pair(prediction, target, None)
    a, b = prediction.astype(np.float64), target.astype(np.float64)
    if a.ndim >= 3 and a.shape[-1] in (1, 3, 4):
        a, b = np.moveaxis(a, -1, -3), np.moveaxis(b, -1, -3)  # channels first: [..., C, H, W]
        channel_axis = -3
    else:
        channel_axis = None
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim: images must be at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {a.shape[-2:]}")
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mu_a, mu_b = _blur(a), _blur(b)
    var_a = _blur(a * a) - mu_a**2
    var_b = _blur(b * b) - mu_b**2
    cov = _blur(a * b) - mu_a * mu_b
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return value.mean(axis=channel_axis) if channel_axis is not None else value


def ssim(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean SSIM; with a mask [..., H, W], the mean over masked pixels inside the window's valid region."""
    _check_pair(prediction, target, mask)
    values = ssim_map(prediction, target)
    if mask is None:
        return float(values.mean())
    half = SSIM_WINDOW // 2
    inner = mask[..., half:mask.shape[-2] - half, half:mask.shape[-1] - half]
    return float(values[inner].mean()) if inner.any() else float("nan")


def depth_abs_rel(prediction_m: np.ndarray, target_m: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean |prediction - target| / target over pixels with target > 0 (and in the mask)."""
    _check_pair(prediction_m, target_m, mask)
    valid = target_m > 0
    if mask is not None:
        valid &= mask
    if not valid.any():
        return float("nan")
    return float(np.mean(np.abs(prediction_m[valid] - target_m[valid]) / target_m[valid]))
