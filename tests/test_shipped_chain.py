"""The shipped reconstructor + enhancer pair, checked by value on a fixed held-out drive in the run's regime.

One held-out world (never trained on) is reconstructed as `--scene reconstruction` does (its recorded lane,
six cameras every 4 m, the default checkpoint, the carving fusion) and the six-camera rig renders it at
480x270 one metre left of the recorded path; the builder's render at the same pose is the truth. The enhancer
gets what the rig sends it: with the drive log's images warped in as its reference when its checkpoint was
trained with one (`reference_views`).
"""

from __future__ import annotations

import numpy as np
import pytest

from neural_sensor.checkpoints import DEFAULT_ENHANCER, DEFAULT_RECONSTRUCTOR, default_checkpoint
from neural_sensor.enhance.model import Enhancer
from neural_sensor.metrics import psnr
from neural_sensor.reconstruct.drive import reconstructed_scene, scene_reference
from neural_sensor.render import render
from neural_sensor.rig import nuscenes_like_rig, rig_cameras_on_path
from neural_sensor.scene.build import build_scene
from neural_sensor.scene.path import Path as Polyline
from neural_sensor.scene.to_gaussians import sky_rgb
from neural_sensor.train.synthetic import check_split, recorded_lane_xy_m, world_layout

SEED = 1_000_340  # held out: clear of every seed a training script or benchmark uses
PASSTHROUGH_MIN_DB = 35.0  # a sharp render through the enhancer, against itself (the target)
MIN_GAIN_DB = 0.3  # the enhancer with the log reference, as the rig runs it, on the fixed drive (measured with stage
#   5: +0.75 dB, 24.22 -> 24.97; stage 6 passes, its gain here not printed; without a reference it must not lower
#   PSNR: +0.06 with stage 5)


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    check_split(SEED, "heldout")
    cache = tmp_path_factory.mktemp("cache")
    layout = world_layout(SEED)
    lane = recorded_lane_xy_m(layout)
    scene, meta = reconstructed_scene(layout, lane, checkpoint=default_checkpoint(DEFAULT_RECONSTRUCTOR), voxel_m=0.3,
                                      cache_dir=cache)
    truth, _ = build_scene(layout, voxel_m=0.3, cache_dir=cache)
    path = Polyline(lane)
    specs = nuscenes_like_rig(480, 270)
    cams = rig_cameras_on_path(specs, path, path.length_m / 2, 1.0)
    background = sky_rgb(layout.style)
    raw = render(scene, cams, backend="cpu", outputs=("rgb", "depth", "alpha", "median_depth"), background=background)
    gt = render(truth, cams, backend="cpu", outputs=("rgb", "depth", "alpha"), background=background)
    views = Enhancer.from_pretrained(default_checkpoint(DEFAULT_ENHANCER)).config.reference_views
    reference = (None, None) if not views else scene_reference(meta).warp(
        [s.sensor_id for s in specs], cams, raw.median_depth, raw.alpha, views)  # as the rig sends it
    return raw, gt, reference


def test_the_reconstruction_of_a_heldout_drive_beats_a_flat_colour(drive):
    """A weak floor, stated plainly: each camera's ground truth replaced by its own mean colour (what fog converges
    to) scores 16.9 dB here; the reconstruction 19.1 dB (measured; CAM_FRONT_RIGHT alone is below its flat image)."""
    raw, gt, _ = drive
    flat = np.broadcast_to(gt.rgb.mean(axis=(1, 2), keepdims=True), gt.rgb.shape)
    assert psnr(raw.rgb, gt.rgb) > psnr(flat, gt.rgb) + 1.5


def test_the_shipped_enhancer_does_not_lower_psnr_on_the_heldout_drive(drive):
    """As the rig sends it (the log reference, if the checkpoint takes one), and without a reference (a
    reconstruction whose log is not at hand)."""
    raw, gt, reference = drive
    enhancer = Enhancer.from_pretrained(default_checkpoint(DEFAULT_ENHANCER))
    out = enhancer.enhance(raw.rgb, raw.depth, raw.alpha, *reference)
    assert psnr(out, gt.rgb) >= psnr(raw.rgb, gt.rgb) + MIN_GAIN_DB, (psnr(out, gt.rgb), psnr(raw.rgb, gt.rgb))
    alone = enhancer.enhance(raw.rgb, raw.depth, raw.alpha)
    assert psnr(alone, gt.rgb) >= psnr(raw.rgb, gt.rgb), (psnr(alone, gt.rgb), psnr(raw.rgb, gt.rgb))


def test_a_sharp_render_passes_through_the_shipped_enhancer(drive):
    _, gt, _ = drive
    enhancer = Enhancer.from_pretrained(default_checkpoint(DEFAULT_ENHANCER))
    out = enhancer.enhance(gt.rgb, gt.depth, gt.alpha)
    assert min(psnr(a, b) for a, b in zip(out, gt.rgb)) >= PASSTHROUGH_MIN_DB
