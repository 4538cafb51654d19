"""ReconNet: checkpoint round trip, reconstruct() output, and the shipped checkpoint on a held-out world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from neural_sensor.gaussians import GaussianScene
from neural_sensor.metrics import psnr
from neural_sensor.reconstruct.model import ReconConfig, ReconNet, reconstruct
from neural_sensor.render import render
from neural_sensor.train.synthetic import WorldConfig, make_world

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "reconstructor-small"
SHIPPED_MIN_PSNR_DB = 20.0  # context-pose PSNR on held-out world 1,000,003 (measured 22.1; an untrained net gets ~10)


def test_save_load_round_trip_is_identical(tmp_path):
    torch.manual_seed(0)
    model = ReconNet(ReconConfig(channels=16, depth_bins=8)).eval()
    images = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        before = model(images)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = ReconNet.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        after = loaded(images)
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["channels"] == 16


def test_bad_checkpoints_raise(tmp_path):
    with pytest.raises(ValueError, match="not a ReconNet checkpoint"):
        ReconNet.from_pretrained(tmp_path)
    ReconNet(ReconConfig(channels=16)).save_pretrained(tmp_path / "a")
    (tmp_path / "a" / "config.json").write_text(json.dumps({"class": "ReconNet", "channels": 32}))
    with pytest.raises(ValueError, match="does not load into ReconNet"):
        ReconNet.from_pretrained(tmp_path / "a")


def test_reconstruct_returns_a_scene_and_merges():
    world = make_world(1_000_002, "heldout", WorldConfig(width=64, height=40, timesteps=2, voxel_m=0.6))
    model = ReconNet(ReconConfig(channels=16, depth_bins=8))
    images, cameras = world.context.rgb[:3], world.context.cameras[:3]
    merged = reconstruct(model, images, cameras)
    unmerged = reconstruct(model, images, cameras, merge=False)
    assert isinstance(merged, GaussianScene) and 0 < len(merged) <= len(unmerged) <= 3 * 32 * 20
    out = render(merged, cameras[0], backend="cpu")
    assert out.rgb.shape == (1, 40, 64, 3)
    with pytest.raises(ValueError, match="one camera each"):
        reconstruct(model, images, cameras[:2])


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").exists(), reason="no shipped checkpoint")
def test_shipped_checkpoint_reconstructs_a_held_out_world():
    """Catches a broken checkpoint: its reconstruction, seen from the context poses, must resemble the views."""
    model = ReconNet.from_pretrained(SHIPPED)
    world = make_world(1_000_003, "heldout", WorldConfig(width=160, height=96, timesteps=3, voxel_m=0.4))
    ctx = [t * 6 + c for t in (0, 2) for c in range(3)]
    scene = reconstruct(model, world.context.rgb[ctx], [world.context.cameras[i] for i in ctx])
    out = render(scene, [world.context.cameras[i] for i in ctx], backend="cpu", background=world.background_rgb)
    score = psnr(out.rgb, world.context.rgb[ctx])
    assert score >= SHIPPED_MIN_PSNR_DB, score


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").exists(), reason="no shipped checkpoint")
def test_reconstructed_scene_of_a_drive_is_cached(tmp_path):
    from neural_sensor.reconstruct.drive import reconstructed_scene
    from neural_sensor.scene.layout import straight_road

    layout = straight_road(40.0, buildings=False)
    path = layout.lanes[0].travel_polyline()
    scene, meta = reconstructed_scene(layout, path, step_m=15.0, width=64, height=40, voxel_m=0.6, cache_dir=tmp_path)
    assert meta["cached"] is False and meta["views"] == 3 * 6 and len(scene) > 1000
    again, meta2 = reconstructed_scene(layout, path, step_m=15.0, width=64, height=40, voxel_m=0.6,
                                       cache_dir=tmp_path)
    assert meta2["cached"] is True and len(again) == len(scene)
    with pytest.raises(ValueError, match="checkpoint not found"):
        reconstructed_scene(layout, path, checkpoint=tmp_path / "nothing", cache_dir=tmp_path)
