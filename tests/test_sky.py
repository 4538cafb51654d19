"""The reconstruction's explicit sky: a fitted far dome instead of sky Gaussians at a guessed depth."""

from __future__ import annotations

import numpy as np
import torch

from neural_sensor.camera import Camera
from neural_sensor.gaussians import GaussianScene
from neural_sensor.labels import CityObjectLabel
from neural_sensor.metrics import psnr
from neural_sensor.reconstruct.model import SKY_LOGIT_THRESHOLD, ReconConfig, ReconNet, predict_views, reconstruct
from neural_sensor.reconstruct.sky import fit_sky_dome
from neural_sensor.render import render
from neural_sensor.rig import nuscenes_like_rig
from neural_sensor.scene import light
from neural_sensor.scene.layout import Style
from neural_sensor.world import pose_from_xyz_yaw

SKY = int(CityObjectLabel.SKY)


def _dome_scene(style: Style) -> GaussianScene:
    dome = light.sky_dome(light.lighting(style), np.zeros(2))
    n = len(dome["means"])
    return GaussianScene.from_colors(dome["means"].astype(np.float32), dome["quats"].astype(np.float32),
                                     dome["scales"].astype(np.float32), np.full(n, 0.99, np.float32),
                                     dome["colors"].astype(np.float32), np.full(n, SKY, np.uint8),
                                     np.zeros(n, np.int32))


def _rig(x_m: float, yaw: float, width: int = 96, height: int = 64) -> list[Camera]:
    ego = pose_from_xyz_yaw(x_m, 0.0, 0.0, yaw)
    return [Camera.from_fov(s.width, s.height, s.fov_deg, ego @ s.pose_camera_to_ego)
            for s in nuscenes_like_rig(width, height)]


def test_a_fitted_dome_renders_the_sky_it_was_fitted_to_from_a_new_pose():
    truth = _dome_scene(Style(time_of_day="evening", palette="clear", seed=3))
    cams = _rig(-20.0, 0.0) + _rig(0.0, 0.0) + _rig(20.0, 0.0)
    seen = render(truth, cams, backend="cpu", outputs=("rgb", "alpha"), background=(0.0, 0.0, 0.0))
    sky = seen.alpha > 0.5
    dome = fit_sky_dome(seen.rgb, sky, cams)
    assert dome is not None and len(dome) == len(truth) and (dome.labels == SKY).all()
    new = _rig(7.0, 0.3, 160, 96)  # a pose and size no view had
    expected = render(truth, new, backend="cpu", outputs=("rgb",), background=(0.0, 0.0, 0.0)).rgb
    got = render(dome, new, backend="cpu", outputs=("rgb",), background=(0.0, 0.0, 0.0)).rgb
    assert psnr(got, expected) > 45.0, psnr(got, expected)  # measured 53.5 dB (28.5 without the refinement)


def test_no_sky_pixel_no_dome():
    cams = _rig(0.0, 0.0)
    assert fit_sky_dome(np.zeros((6, 64, 96, 3), np.float32), np.zeros((6, 64, 96), bool), cams) is None


def _model_that_calls_everything(sky: bool) -> ReconNet:
    torch.manual_seed(0)
    model = ReconNet(ReconConfig(channels=16, depth_bins=8, sky_head=True)).eval()
    with torch.no_grad():  # the head's SKY logit: a large constant
        model.head.bias[model.config.depth_bins + 7 + SKY] = 50.0 if sky else -50.0
    return model


def test_reconstruct_draws_sky_pixels_as_the_dome_only():
    cams = _rig(0.0, 0.0, 64, 48)
    images = np.random.default_rng(0).random((6, 48, 64, 3)).astype(np.float32)
    all_sky = reconstruct(_model_that_calls_everything(sky=True), images, cams)
    assert (all_sky.labels == SKY).all() and len(all_sky) == len(light.dome_geometry(np.zeros(2))["means"])
    assert np.all(np.linalg.norm(all_sky.means, axis=1) > 500.0)  # far away, not at a predicted depth
    no_sky = reconstruct(_model_that_calls_everything(sky=False), images, cams)
    # and the rest UNLABELED: the other classes' logits are not trained (their argmax had made a plain street road
    # lines, motorcycles and traffic lights for a semantic camera; a new user's finding)
    assert len(no_sky) > 0 and (no_sky.labels == 0).all()
    legacy = ReconNet(ReconConfig(channels=16, depth_bins=8)).eval()  # no sky head: no dome, as before
    assert not np.any(np.linalg.norm(reconstruct(legacy, images, cams).means, axis=1) > 500.0)


def test_a_pixel_is_sky_only_past_the_threshold_not_at_even_odds():
    """A SKY logit between 0 and SKY_LOGIT_THRESHOLD (more likely sky than not) is still drawn as a surface: a surface
    called sky would carve away every Gaussian along its ray, so sky needs the larger margin."""
    assert SKY_LOGIT_THRESHOLD > 0.0
    cams = _rig(0.0, 0.0, 64, 48)
    images = np.random.default_rng(0).random((6, 48, 64, 3)).astype(np.float32)
    channel = ReconConfig(channels=16, depth_bins=8).depth_bins + 7 + SKY

    def labels_with_sky_logit(logit: float) -> np.ndarray:
        model = _model_that_calls_everything(sky=False)
        with torch.no_grad():  # the SKY logit exactly `logit` at every pixel
            model.head.weight[channel] = 0.0
            model.head.bias[channel] = logit
        return predict_views(model, images, cams)[0].labels

    assert not (labels_with_sky_logit(0.5 * SKY_LOGIT_THRESHOLD) == SKY).any()
    assert (labels_with_sky_logit(SKY_LOGIT_THRESHOLD + 0.5) == SKY).all()
