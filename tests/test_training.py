"""Training scripts run, checkpoint, and resume (tiny runs; the real runs are in the checkpoints' CARDs)."""

import json

import numpy as np

from neural_sensor.enhance.model import Enhancer, EnhancerConfig
from neural_sensor.reconstruct.model import ReconNet
from neural_sensor.train import cotrain, train_enhancer


def test_enhancer_training_checkpoints_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(train_enhancer, "EVAL_SEEDS", range(1_000_004, 1_000_005))
    config = train_enhancer.EnhancerTrainConfig(steps=2, batch=2, worlds=2, eval_every=2, save_every=2)
    out, data = tmp_path / "enh", tmp_path / "data"
    summary = train_enhancer.train(config, out, data, train_enhancer.Path("checkpoints/reconstructor-small"))
    assert summary["steps"] == 2 and summary["pairs"] == 2 * 18
    assert len(list(data.glob("*/world-*.npz"))) == 2  # pairs cached per world
    heldout = summary["final"]["heldout"]["shift_2m"]
    assert np.isfinite(heldout["raw_psnr"]) and np.isfinite(heldout["enhanced_psnr"])
    config.steps = 3
    summary = train_enhancer.train(config, out, data, train_enhancer.Path("checkpoints/reconstructor-small"),
                                   resume=True)
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3]
    Enhancer.from_pretrained(out)


def test_cotraining_fine_tunes_the_reconstructor_with_enhancer_targets(tmp_path):
    Enhancer(EnhancerConfig(block_out_channels=(8, 16), norm_num_groups=4)).save_pretrained(tmp_path / "fixer")
    config = cotrain.CotrainConfig(steps=2, worlds=1, save_every=1)
    summary = cotrain.train(config, cotrain.Path("checkpoints/reconstructor-small"), tmp_path / "fixer",
                            tmp_path / "recon")
    assert summary["steps"] == 2
    history = json.loads((tmp_path / "recon" / "history.json").read_text())
    assert all(np.isfinite(h["loss_pseudo_l1"]) and h["loss_pseudo_l1"] >= 0 for h in history)
    before = ReconNet.from_pretrained("checkpoints/reconstructor-small").state_dict()
    after = ReconNet.from_pretrained(tmp_path / "recon").state_dict()
    assert any(not np.allclose(before[k].numpy(), after[k].numpy()) for k in before)
