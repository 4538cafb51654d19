"""PSNR, SSIM and depth AbsRel against known answers and a brute-force SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neural_sensor.metrics import _gaussian_window, depth_abs_rel, psnr, ssim, ssim_map


def test_psnr_known_answers():
    a = np.zeros((8, 8, 3))
    assert psnr(a, a) == math.inf
    assert psnr(a + 0.1, a) == pytest.approx(20.0)  # MSE 0.01
    mask = np.zeros((8, 8), bool)
    mask[:2] = True
    b = a.copy()
    b[4:] = 0.5  # error only outside the mask
    lower = np.zeros((8, 8), bool)
    lower[4:] = True
    assert psnr(b, a, mask) == math.inf and psnr(b, a, lower) == pytest.approx(10 * math.log10(1 / 0.25))
    assert psnr(b, a, ~mask) == pytest.approx(10 * math.log10(1 / (0.25 * 4 / 6)))
    assert math.isnan(psnr(b, a, np.zeros((8, 8), bool)))
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(a, a[:4])
    with pytest.raises(ValueError, match="does not match the images' pixels"):
        psnr(a, a, np.ones((4, 4), bool))


def _ssim_one_window(a, b):
    """SSIM at the centre of an 11x11 patch, from the definition, single channel."""
    g = _gaussian_window()
    w = np.outer(g, g)
    mu_a, mu_b = (w * a).sum(), (w * b).sum()
    var_a = (w * (a - mu_a) ** 2).sum()
    var_b = (w * (b - mu_b) ** 2).sum()
    cov = (w * (a - mu_a) * (b - mu_b)).sum()
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def test_ssim_matches_the_definition_and_behaves():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (11, 11))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    assert ssim_map(a, b).shape == (1, 1)
    assert ssim_map(a, b)[0, 0] == pytest.approx(_ssim_one_window(a, b), rel=1e-9)
    img = rng.uniform(0, 1, (32, 40, 3))
    assert ssim(img, img) == pytest.approx(1.0)
    noisy = [ssim(np.clip(img + rng.normal(0, s, img.shape), 0, 1), img) for s in (0.02, 0.1, 0.3)]
    assert noisy[0] > noisy[1] > noisy[2]
    assert ssim(img, img * 0.5) == pytest.approx(ssim(img * 0.5, img))  # symmetric
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(img[:8], img[:8])


def test_depth_abs_rel():
    gt = np.array([[10.0, 20.0], [0.0, 5.0]])
    pred = np.array([[11.0, 18.0], [3.0, 5.0]])
    assert depth_abs_rel(pred, gt) == pytest.approx((0.1 + 0.1 + 0.0) / 3)  # the gt = 0 pixel is ignored
    assert depth_abs_rel(pred, gt, np.array([[True, False], [False, False]])) == pytest.approx(0.1)
