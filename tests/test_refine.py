"""Test-time colour refinement (neural_sensor/reconstruct/refine.py): it fits colours, prunes what no view weighs,
keeps geometry, and refuses bad input."""

from __future__ import annotations

import numpy as np
import pytest

from neural_sensor.gaussians import GaussianScene
from neural_sensor.reconstruct.refine import RefineConfig, refine_colours
from neural_sensor.render import render
from neural_sensor.testing import make_street_scene, street_cameras

BACKGROUND = (0.53, 0.71, 0.92)


def _psnr(a, b) -> float:
    return float(10.0 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.fixture(scope="module")
def street():
    """A street scene, views of it, and the same scene with every colour replaced by grey noise."""
    truth = make_street_scene(20_000, seed=3, sh_degree=0)
    cameras = street_cameras(96, 64, count=6)
    images = render(truth, cameras, backend="cpu", background=BACKGROUND).rgb
    noise = np.random.default_rng(0).uniform(0.3, 0.7, (len(truth), 3)).astype(np.float32)
    wrong = GaussianScene.from_colors(truth.means, truth.quats, truth.scales, truth.opacities, noise, truth.labels)
    return truth, wrong, images, cameras


def test_refinement_fits_the_colours_the_images_were_rendered_with(street):
    truth, wrong, images, cameras = street
    config = RefineConfig(iterations=4, prune_weight=0.0, report_final=True)
    assert config.lod_px > 0  # the default: the views are rendered at the run's level of detail
    before = _psnr(render(wrong, cameras, backend="cpu", background=BACKGROUND, lod_px=config.lod_px).rgb, images)
    refined, stats = refine_colours(wrong, images, cameras, background=BACKGROUND, config=config)
    after = _psnr(render(refined, cameras, backend="cpu", background=BACKGROUND, lod_px=config.lod_px).rgb, images)
    assert after > before + 8.0, (before, after)
    assert stats["psnr_db"][0] == pytest.approx(before, abs=1e-3) and stats["psnr_db"][-1] == pytest.approx(after, abs=1e-3)
    assert all(b > a for a, b in zip(stats["psnr_db"], stats["psnr_db"][1:])), stats["psnr_db"]
    # the Gaussians the views see well get (close to) their true colour; geometry, opacity and labels are untouched
    seen = stats["updated"]
    assert seen > 1000
    for name in ("means", "quats", "scales", "opacities", "labels"):
        assert np.array_equal(getattr(refined, name), getattr(wrong, name)), name
    assert refined.colors_dc.min() >= 0.0 and refined.colors_dc.max() <= 1.0 + 1e-6


def test_pruning_drops_only_what_no_view_weighs(street):
    truth, wrong, images, cameras = street
    # a cluster 500 m under the street: no view sees it
    far = GaussianScene.from_colors(truth.means[:50] - np.float32([0.0, 0.0, 500.0]), truth.quats[:50],
                                    truth.scales[:50], truth.opacities[:50], np.full((50, 3), 0.5, np.float32))
    scene = GaussianScene.concat([wrong, far])
    # a threshold just above 0 drops exactly what no recorded pixel weighs: the renders cannot change (drawing
    # every Gaussian: at a level of detail a pruned member would change its group's merge)
    kept, stats = refine_colours(scene, images, cameras, background=BACKGROUND,
                                 config=RefineConfig(iterations=2, prune_weight=1e-9, lod_px=0.0))
    unpruned, _ = refine_colours(scene, images, cameras, background=BACKGROUND,
                                 config=RefineConfig(iterations=2, prune_weight=0.0, lod_px=0.0))
    assert stats["pruned"] == len(scene) - len(kept) >= 50
    assert kept.means[:, 2].min() > -100.0  # the unseen cluster is gone
    a = render(kept, cameras, backend="cpu", background=BACKGROUND).rgb
    b = render(unpruned, cameras, backend="cpu", background=BACKGROUND).rgb
    assert np.abs(a - b).max() < 1e-4, np.abs(a - b).max()  # float32 rounding only
    # the default threshold (1 pixel of summed weight) drops more, and the fit still beats the start
    lean, lean_stats = refine_colours(scene, images, cameras, background=BACKGROUND)
    assert lean_stats["pruned"] > stats["pruned"]
    start = _psnr(render(scene, cameras, backend="cpu", background=BACKGROUND).rgb, images)
    assert _psnr(render(lean, cameras, backend="cpu", background=BACKGROUND).rgb, images) > start + 3.0


def test_zero_iterations_is_the_identity_and_bad_input_is_refused(street):
    truth, wrong, images, cameras = street
    same, stats = refine_colours(wrong, images, cameras, config=RefineConfig(iterations=0, prune_weight=0.0))
    assert same is wrong and stats["psnr_db"] == [] and stats["updated"] == 0
    bad = images.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        refine_colours(wrong, bad, cameras)
    with pytest.raises(AssertionError):
        refine_colours(wrong, images[:3], cameras)
    with pytest.raises(ValueError, match="RefineConfig"):
        RefineConfig(step=0.0)
    for bad in (-1.0, float("nan"), "2"):
        with pytest.raises(ValueError, match="lod_px"):
            RefineConfig(lod_px=bad)
    assert RefineConfig().cache_inputs() != RefineConfig(lod_px=0.0).cache_inputs()
    assert RefineConfig(iterations=0).cache_inputs() == {}
    assert RefineConfig().cache_inputs() != RefineConfig(iterations=3).cache_inputs()


def test_what_no_view_sees_keeps_its_coefficients_bit_for_bit(street):
    """Only moved colours are written: an unseen Gaussian keeps its SH (even a colour outside [0, 1]), and the
    stats count only Gaussians of the result."""
    truth, wrong, images, cameras = street
    bright = np.full((50, 3), 1.2, np.float32)  # outside [0, 1]: a refit would clip it
    far = GaussianScene.from_colors(truth.means[:50] - np.float32([0.0, 0.0, 500.0]), truth.quats[:50],
                                    truth.scales[:50], truth.opacities[:50], bright)
    scene = GaussianScene.concat([wrong, far])
    refined, stats = refine_colours(scene, images, cameras, background=BACKGROUND,
                                    config=RefineConfig(iterations=2, prune_weight=0.0))
    assert np.array_equal(refined.sh[len(wrong):], scene.sh[len(wrong):])
    assert 0 < stats["updated"] <= len(refined)
    pruned, pruned_stats = refine_colours(scene, images, cameras, background=BACKGROUND)
    assert pruned_stats["updated"] <= len(pruned) < len(scene)


def test_sky_pruning_drops_what_lies_on_sky_and_spares_the_dome(street):
    """With sky masks, the first sweep also drops the Gaussians, other than SKY-labelled ones (the dome), that
    have more than sky_prune_fraction of their blending weight on sky pixels: exactly those, from the weights
    `backproject_colour_residuals` reports."""
    from neural_sensor.labels import CityObjectLabel
    from neural_sensor.render._common import stack_cameras
    from neural_sensor.render.backproject import backproject_colour_residuals

    truth, wrong, images, cameras = street
    sky = np.zeros(images.shape[:3], bool)
    sky[:, :26] = True  # the upper 40 % of every view stands in for the sky the network would mark
    labels = wrong.labels.copy()
    labels[::7] = CityObjectLabel.SKY  # every 7th Gaussian plays a dome Gaussian: never pruned on sky
    scene = wrong.replace(labels=labels)
    config = RefineConfig(iterations=2, prune_weight=0.0, sky_prune_fraction=0.3, lod_px=0.0)  # the exact weights
    pruned, stats = refine_colours(scene, images, cameras, background=BACKGROUND, config=config, sky_masks=sky)
    _, weight, _, on_sky = backproject_colour_residuals(scene, stack_cameras(cameras), images,
                                                        np.float32(BACKGROUND), sky)
    expected = (on_sky > 0.3 * weight) & (labels != CityObjectLabel.SKY)
    assert 100 < expected.sum() < len(scene) // 2
    assert stats["pruned_on_sky"] == stats["pruned"] == expected.sum()
    assert np.array_equal(pruned.means, scene.means[~expected])
    # without masks, or with the fraction at 1, nothing is pruned on sky
    for kwargs in ({}, {"config": RefineConfig(iterations=2, prune_weight=0.0, sky_prune_fraction=1.0),
                        "sky_masks": sky}):
        kept, kept_stats = refine_colours(scene, images, cameras, background=BACKGROUND,
                                          **{"config": config, **kwargs})
        assert kept_stats["pruned"] == kept_stats["pruned_on_sky"] == 0 and len(kept) == len(scene)
    with pytest.raises(ValueError, match="sky_prune_fraction"):
        RefineConfig(sky_prune_fraction=1.5)
    assert RefineConfig().cache_inputs() != RefineConfig(sky_prune_fraction=1.0).cache_inputs()
