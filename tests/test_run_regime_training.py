"""The run-regime training scripts (enhancer and reconstructor): batches, checkpoints, resume (tiny runs)."""

import json

import numpy as np
import pytest

from neural_sensor.enhance.model import Enhancer
from neural_sensor.reconstruct.model import ReconNet
from neural_sensor.train import enhancer_run_data, train_enhancer_run, train_reconstructor_run


def _fake_frames(seed, split, ticks, recon_folder, cache_dir=None):
    rng = np.random.default_rng(seed)
    n, h, w = 6 * ticks, 80, 112
    truth = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    blurred = ((truth.astype(np.int32) + np.roll(truth, 1, axis=2)) // 2).astype(np.uint8)
    valid = np.zeros((n, h, w), bool)
    valid[:, :, : w // 2] = True  # the log sees the left half: there the reference is the truth
    return {"rgb": blurred, "depth": np.full((n, h, w), 12.0, np.float16), "alpha": np.full((n, h, w), 255, np.uint8),
            "truth": truth, "truth_depth": np.full((n, h, w), 12.0, np.float16),
            "truth_alpha": np.full((n, h, w), 255, np.uint8), "shift_m": np.zeros(n, np.float32),
            "reference": np.where(valid[..., None], truth, 0).astype(np.uint8), "reference_valid": valid}


def test_identity_samples_ask_for_their_own_input_back():
    """Identity samples: the clean render in, itself out, no reference; the others carry their log reference
    (cropped and flipped with them) unless it is dropped."""
    frames = _fake_frames(0, "train", 1, None)
    rng = np.random.default_rng(0)
    rgb, depth, alpha, target, reference, valid, identity = train_enhancer_run.sample_batch(
        frames, rng, 4, (48, 64), 1.0)
    assert identity.all() and rgb.shape == (4, 3, 48, 64) and depth.shape == alpha.shape == (4, 48, 64)
    assert np.array_equal(rgb.numpy(), target.numpy())
    assert not valid.any()  # a clean render has no log
    rgb, _, _, target, reference, valid, identity = train_enhancer_run.sample_batch(frames, rng, 8, (48, 64), 0.0)
    assert not identity.any() and not np.array_equal(rgb.numpy(), target.numpy())
    assert reference.shape == rgb.shape and valid.shape == (8, 48, 64) and valid.any()
    seen = valid.bool()[:, None].expand_as(reference)
    assert np.array_equal(reference[seen].numpy(), target[seen].numpy())  # the fake log is the truth where it sees
    *_, valid, _ = train_enhancer_run.sample_batch(frames, rng, 8, (48, 64), 0.0, reference_dropout=1.0)
    assert not valid.any()


def test_shift_weights_draw_frames_in_proportion():
    """`--shift-weights`: a frame is drawn in proportion to its shift's weight (a weight of 0 never), uniformly
    without weights; a shift of the data without a weight, or all weights 0, is a ValueError naming it."""
    shift_m = np.array([0.0] * 6 + [1.0] * 6 + [3.0] * 6, np.float32)
    assert train_enhancer_run.shift_probabilities(shift_m, ()) is None
    p = train_enhancer_run.shift_probabilities(shift_m, ((0.0, 0.0), (1.0, 1.0), (3.0, 3.0)))
    np.testing.assert_allclose(p, np.repeat([0.0, 1 / 24, 3 / 24], 6))
    rng = np.random.default_rng(0)
    idx = train_enhancer_run._draw_crops((18, 80, 112), rng, 4000, (64, 96), 0.0, p)[0]
    counts = np.bincount((shift_m[idx]).astype(int), minlength=4)
    assert counts[0] == 0 and abs(counts[3] / counts[1] - 3.0) < 0.4, counts
    with pytest.raises(ValueError, match=r"missing \[3.0\]"):
        train_enhancer_run.shift_probabilities(shift_m, ((0.0, 1.0), (1.0, 1.0)))
    with pytest.raises(ValueError, match="weight 0"):
        train_enhancer_run.shift_probabilities(shift_m, ((0.0, 0.0), (1.0, 0.0), (3.0, 0.0)))


def test_run_enhancer_training_checkpoints_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(enhancer_run_data, "world_frames", _fake_frames)
    monkeypatch.setattr(train_enhancer_run, "EVAL_SEEDS", range(1_000_300, 1_000_301))
    config = train_enhancer_run.RunEnhancerTrainConfig(steps=2, batch=2, crop=(64, 96), worlds=2, ticks_per_world=1,
                                                       eval_every=2, save_every=2, perceptual_crop=32)
    out, data = tmp_path / "enh", tmp_path / "data"
    recon = train_enhancer_run.Path("checkpoints/reconstructor-small")
    summary = train_enhancer_run.train(config, out, data, recon)
    assert summary["steps"] == 2 and summary["frames"] == 12
    assert len(list(data.glob("*/world-*.npz"))) == 3  # two training worlds and one held-out, stored per world
    heldout = summary["final"]["heldout"]
    assert np.isfinite(heldout["raw_psnr"]) and np.isfinite(heldout["enhanced_psnr"])
    config.steps = 3
    train_enhancer_run.train(config, out, data, recon, resume=True)
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [0, 1, 2, 3]
    assert "perceptual" in history[1] and "perceptual" not in history[2]  # the VGG16 term every second step
    model = Enhancer.from_pretrained(out)
    assert model.config.unshuffle == 4 and model.config.model_name == "enhancer-run"
    # a widened fine-tune with the squared-error term: the checkpoint is the wide model
    wide_config = train_enhancer_run.replace(config, steps=1, widen=True, mse_weight=10.0, perceptual_weight=0.0)
    summary = train_enhancer_run.train(wide_config, tmp_path / "wide", data, recon, init=out)
    assert np.isfinite(summary["final"]["loss"])
    assert tuple(Enhancer.from_pretrained(tmp_path / "wide").config.block_out_channels) == (32, 64, 128)
    with pytest.raises(ValueError, match="widen needs init"):
        train_enhancer_run.train(wide_config, tmp_path / "wide2", data, recon)


def test_widened_enhancer_starts_as_the_same_function():
    """`widened` doubles every UNet width of a trained (here: perturbed) enhancer and computes the same image to
    float rounding, the time embedding and the skip concatenations included; noise parts the copies a little."""
    import torch

    small = train_enhancer_run.new_model()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in small.parameters():  # a non-trivial function (a fresh model is the identity)
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    wide = train_enhancer_run.widened(small)
    assert tuple(wide.config.block_out_channels) == (32, 64, 128)
    assert wide.config.model_name == small.config.model_name and wide.config.unshuffle == small.config.unshuffle
    rgb = torch.rand(2, 3, 48, 80, generator=generator)
    depth = torch.rand(2, 48, 80, generator=generator) * 30 + 1
    alpha, valid = torch.ones(2, 48, 80), (torch.rand(2, 48, 80, generator=generator) > 0.5).float()
    reference = torch.rand(2, 3, 48, 80, generator=generator)
    with torch.no_grad():
        before = small.eval()(rgb, depth, alpha, reference, valid)
        after = wide.eval()(rgb, depth, alpha, reference, valid)
        parted = train_enhancer_run.widened(small, noise=0.01).eval()(rgb, depth, alpha, reference, valid)
    assert float((before - rgb).abs().mean()) > 0.01  # the residual is not trivially zero
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    assert 0 < float((parted - before).abs().max()) < 0.05
    with pytest.raises(ValueError, match="keeps the shape"):
        train_enhancer_run.new_model(train_enhancer_run.Path("checkpoints/enhancer-run"), (32, 64, 128))


def _fake_pairs(seed, split, pairs, recon_folder, cache_dir=None):
    """Pairs whose later frame is the earlier one moved one pixel right: source = the pixel to the left."""
    prev = _fake_frames(seed, split, pairs, recon_folder)
    now = {k: np.roll(v, 1, axis=2) if v.ndim >= 3 else v for k, v in prev.items()}
    n, h, w = prev["rgb"].shape[:3]
    cols = np.arange(w) - 1
    source = np.broadcast_to(np.where(cols >= 0, np.arange(h)[:, None] * w + cols, -1), (n, h, w)).astype(np.int32)
    return {**now, **{f"prev_{k}": v for k, v in prev.items() if k != "shift_m"}, "source": source.copy()}


def test_frame_pair_crops_keep_their_correspondence():
    """The same window and flip in both frames; a pixel's source index points at the same content in the earlier
    crop, so a pair that moves with the content changes as the truth does, and one that stays put is caught."""
    import torch

    pairs = _fake_pairs(0, "train", 2, None)
    rng = np.random.default_rng(1)
    for _ in range(3):
        rgb, depth, alpha, target, reference, valid, source = train_enhancer_run.sample_pairs(
            pairs, rng, 4, (48, 64), 0.5)
        assert reference.shape == rgb.shape and valid.shape == depth.shape
        assert rgb.shape == (8, 3, 48, 64) and source.shape == (4, 48, 64) and depth.shape == (8, 48, 64)
        valid = source >= 0
        assert valid.float().mean() > 0.9
        earlier = rgb[:4].reshape(4, 3, -1)
        gathered = torch.gather(earlier, 2, source.clamp(min=0).reshape(4, 1, -1).expand(4, 3, -1)).reshape(4, 3, 48, 64)
        assert torch.equal(gathered.permute(0, 2, 3, 1)[valid], rgb[4:].permute(0, 2, 3, 1)[valid])
        error = train_enhancer_run.temporal_change_error
        assert float(error(rgb[:4], rgb[4:], target[:4], target[4:], source)) == 0.0  # changes as the truth does
        assert float(error(rgb[:4], rgb[:4], target[:4], target[4:], source)) > 0.05  # stays put: the truth moved
        assert float(error(target[:4], target[4:], target[:4], target[4:], source)) == 0.0
    none = torch.full((4, 48, 64), -1, dtype=torch.long)
    assert float(train_enhancer_run.temporal_change_error(rgb[:4], rgb[:4], target[:4], target[4:], none)) == 0.0


def test_unseen_error_reads_only_what_the_reference_misses():
    import torch

    pred, target = torch.zeros(3, 3, 4, 5), torch.zeros(3, 3, 4, 5)
    valid = torch.ones(3, 4, 5)
    valid[0, :2] = 0.0  # sample 0: a reference missing its top half
    valid[1] = 0.0  # sample 1: sent no reference (a clean render or a dropped one)
    pred[0, :, :2] += 0.5  # wrong where sample 0's reference is missing ...
    pred[0, :, 2:] += 9.0  # ... and worse where it has one: not this term's business
    pred[1] += 7.0  # wrong everywhere in the sample without a reference: not this term's either
    pred[2] += 3.0  # sample 2's reference covers all of it
    assert float(train_enhancer_run.unseen_error(pred, target, valid)) == pytest.approx(0.5)
    assert float(train_enhancer_run.unseen_error(pred, target, torch.ones(3, 4, 5))) == 0.0
    with pytest.raises(ValueError, match="unseen_weight"):
        train_enhancer_run.check_config(train_enhancer_run.RunEnhancerTrainConfig(unseen_weight=-1.0))
    with pytest.raises(ValueError, match="pair_worlds"):
        train_enhancer_run.check_config(train_enhancer_run.RunEnhancerTrainConfig(worlds=4, pair_worlds=5))


def test_worlds_are_joined_per_array_or_only_made(tmp_path, monkeypatch):
    """_load_worlds joins each array name over the seeds in seed order (one name at a time); keep=False makes every
    seed's data and holds none of it."""
    monkeypatch.setattr(enhancer_run_data, "data_folder", lambda root, recon: tmp_path / "data")
    made = []

    def load(folder, seed):
        made.append(seed)
        return {"rgb": np.full((2, 3), seed, np.uint8), "shift_m": np.array([seed, -seed], np.float32)}

    joined = enhancer_run_data._load_worlds(tmp_path, tmp_path, [4, 1, 7], "test", load)
    assert made == [4, 1, 7] and (tmp_path / "data").is_dir()
    assert joined["rgb"].shape == (6, 3) and joined["rgb"][:, 0].tolist() == [4, 4, 1, 1, 7, 7]
    assert joined["shift_m"].tolist() == [4, -4, 1, -1, 7, -7]
    assert enhancer_run_data._load_worlds(tmp_path, tmp_path, [2, 3], "test", load, keep=False) is None
    assert made[3:] == [2, 3]


def test_run_enhancer_training_with_the_temporal_term(tmp_path, monkeypatch):
    monkeypatch.setattr(enhancer_run_data, "world_frames", _fake_frames)
    monkeypatch.setattr(enhancer_run_data, "world_pairs", _fake_pairs)
    monkeypatch.setattr(train_enhancer_run, "EVAL_SEEDS", range(1_000_300, 1_000_301))
    config = train_enhancer_run.RunEnhancerTrainConfig(steps=2, batch=2, crop=(64, 96), worlds=2, ticks_per_world=1,
                                                       eval_every=2, save_every=2, perceptual_weight=0.0,
                                                       temporal_weight=1.0, pair_batch=2, pairs_per_world=1,
                                                       unseen_weight=1.0, pair_worlds=1)
    out, data = tmp_path / "enh", tmp_path / "data"
    summary = train_enhancer_run.train(config, out, data, train_enhancer_run.Path("checkpoints/reconstructor-small"))
    # frames of both training worlds; pairs of the first one (pair_worlds) and of the held-out world
    assert sorted(p.name for p in data.glob("*/pairs-*.npz")) == ["pairs-0-p1.npz", "pairs-1000300-p2.npz"]
    assert len(list(data.glob("*/world-*.npz"))) == 3
    history = json.loads((out / "history.json").read_text())
    assert all(np.isfinite(h["temporal"]) for h in history[1:])
    heldout = summary["final"]["heldout"]
    assert heldout["flicker_raw"] == 0.0 and np.isfinite(heldout["flicker_enhanced"])  # the fake pairs move exactly


def test_run_reconstructor_training_fine_tunes_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(train_reconstructor_run, "EVAL_SEEDS", range(1_000_320, 1_000_321))
    config = train_reconstructor_run.RunReconTrainConfig(steps=2, worlds=1, targets=2, eval_every=2, save_every=1)
    out = tmp_path / "recon"
    init = train_reconstructor_run.Path("checkpoints/reconstructor-small")
    summary = train_reconstructor_run.train(config, out, tmp_path / "data", init=init)
    assert summary["steps"] == 2
    assert summary["renderer_used"] == "torch" and summary["config"]["renderer"] == "auto"  # "auto" resolved
    heldout = summary["final"]["heldout"]
    assert np.isfinite(heldout["target_psnr"]) and 0 < heldout["view_depth_abs_rel"] < 10
    world = train_reconstructor_run.load_world(tmp_path / "data", 0, "train", 2, config.size)
    assert world["rgb"].shape[0] % 6 == 0 and world["target_rgb"].shape == (4, 96, 160, 3)
    assert world["sky"].any() and (world["depth"][~world["sky"]] > 0).all()
    config.steps = 3
    train_reconstructor_run.train(config, out, tmp_path / "data", init=init, resume=True)
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [0, 1, 2, 3]
    before, after = ReconNet.from_pretrained(init).state_dict(), ReconNet.from_pretrained(out).state_dict()
    assert any(not np.allclose(before[k].numpy(), after[k].numpy()) for k in before)


def test_gpu_pipeline_runs_every_stage_on_a_cpu(tmp_path, monkeypatch):
    """The one-command GPU pipeline, tiny and on the CPU (the torch reference renderer): reconstructor data,
    the reconstructor trained through the run's fusion, enhancer frames (stand-ins here) and the enhancer."""
    from neural_sensor.train import gpu_pipeline

    monkeypatch.setattr(train_reconstructor_run, "EVAL_SEEDS", range(1_000_320, 1_000_321))
    monkeypatch.setattr(train_enhancer_run, "EVAL_SEEDS", range(1_000_300, 1_000_301))
    monkeypatch.setattr(enhancer_run_data, "world_frames", _fake_frames)
    monkeypatch.setattr(enhancer_run_data, "world_pairs", _fake_pairs)
    report = gpu_pipeline.run_pipeline(
        tmp_path / "pair", device="cpu", minutes=30.0, recon_worlds=1, enhancer_worlds=1,
        reconstructor_init=gpu_pipeline.Path("checkpoints/reconstructor-run"),
        enhancer_init=gpu_pipeline.Path("checkpoints/enhancer-run"), context_stations=3, recon_steps=2,
        enhancer_steps=2, workers=1, eval_every=2, recon_overrides={"targets": 2},
        enhancer_overrides={"crop": (64, 96), "batch": 2, "perceptual_crop": 32, "ticks_per_world": 1,
                            "pairs_per_world": 1, "pair_batch": 2})
    assert list(report["stages"]) == ["reconstructor_data", "reconstructor", "enhancer_data", "enhancer"]
    assert report["stages"]["reconstructor"]["steps"] == 2 and report["stages"]["enhancer"]["steps"] == 2
    assert np.isfinite(report["stages"]["reconstructor"]["final"]["heldout"]["target_psnr"])
    assert json.loads((tmp_path / "pair" / "pipeline.json").read_text())["stages"]["enhancer"]["steps"] == 2
    assert len(list((tmp_path / "pair" / "data" / "enhancer").glob("*/pairs-*.npz"))) == 2  # the temporal term's
    history = json.loads((tmp_path / "pair" / "enhancer" / "history.json").read_text())
    assert "temporal" in history[-1]
    recon = ReconNet.from_pretrained(tmp_path / "pair" / "reconstructor")
    assert recon.config.sky_head
    Enhancer.from_pretrained(tmp_path / "pair" / "enhancer")
    summary = json.loads((tmp_path / "pair" / "reconstructor" / "train_summary.json").read_text())
    assert summary["config"]["fuse"] and summary["config"]["context_stations"] == 3


def test_gpu_pipeline_runs_only_the_stages_asked_for(tmp_path, monkeypatch):
    """`--stages reconstructor_data` makes the data and trains nothing; an unknown stage is named."""
    from neural_sensor.train import gpu_pipeline

    monkeypatch.setattr(train_reconstructor_run, "EVAL_SEEDS", range(1_000_320, 1_000_321))
    kwargs = dict(device="cpu", minutes=30.0, recon_worlds=1, enhancer_worlds=1,
                  reconstructor_init=gpu_pipeline.Path("checkpoints/reconstructor-run"),
                  enhancer_init=gpu_pipeline.Path("checkpoints/enhancer-run"), workers=1,
                  recon_overrides={"targets": 2})
    report = gpu_pipeline.run_pipeline(tmp_path / "pair", stages=("reconstructor_data",), **kwargs)
    assert list(report["stages"]) == ["reconstructor_data"]
    assert len(list((tmp_path / "pair" / "data" / "reconstructor").glob("*/world-*.npz"))) == 2  # train + held-out
    assert not (tmp_path / "pair" / "reconstructor").exists()
    with pytest.raises(ValueError, match="unknown stages \\['enhancer-data'\\]"):
        gpu_pipeline.run_pipeline(tmp_path / "other", stages=("reconstructor_data", "enhancer-data"), **kwargs)


def test_several_targets_per_step_are_the_mean_of_single_targets(tmp_path):
    """A step over targets sharing their context renders them in one call: its L1 and PSNR are the means of the
    single-target steps (equal-sized views), and every target it draws shares the first one's context."""
    import torch

    config = train_reconstructor_run.RunReconTrainConfig(worlds=1, targets=6, fuse=True, context_stations=64)
    world = train_reconstructor_run.load_world(tmp_path / "data", 0, "train", 6, config.size)
    model = ReconNet.from_pretrained(train_reconstructor_run.Path("checkpoints/reconstructor-run")).eval()
    rng = np.random.default_rng(0)
    targets = train_reconstructor_run.targets_sharing_context(world, 2, 4, config.context_stations, rng)
    assert len(targets) == 4 and targets[0] == 2 and len(set(targets.tolist())) == 4  # whole drive: all share
    with torch.no_grad():
        together = train_reconstructor_run.step_losses(model, world, targets, config)
        alone = [train_reconstructor_run.step_losses(model, world, int(t), config) for t in targets]
    assert abs(float(together["l1"]) - np.mean([float(a["l1"]) for a in alone])) < 1e-5
    assert abs(float(together["psnr"]) - np.mean([float(a["psnr"]) for a in alone])) < 1e-4
    assert abs(float(together["view_depth"]) - float(alone[0]["view_depth"])) < 1e-6  # the same context views
    config.context_stations = 1  # one station each: only targets between the same stations share it
    near = train_reconstructor_run.targets_sharing_context(world, 0, 6, 1, rng)
    stations = world["target_station"][near]
    assert (stations == stations[0]).all()
    with pytest.raises(AssertionError, match="does not share the context"):
        other = int(np.flatnonzero(world["target_station"] != stations[0])[0])
        train_reconstructor_run.step_losses(model, world, [int(near[0]), other], config)


def test_depth_only_training_moves_the_depth_and_holds_the_rest(tmp_path, monkeypatch):
    """--depth-only: no render; the context views' depth and sky terms are step_losses' own, the "keep" term is
    zero for the --init net itself, a run fine-tunes and checkpoints, and it refuses to start without --init."""
    import torch

    monkeypatch.setattr(train_reconstructor_run, "EVAL_SEEDS", range(1_000_320, 1_000_321))
    config = train_reconstructor_run.RunReconTrainConfig(steps=2, worlds=1, targets=2, eval_every=2, save_every=1,
                                                         depth_only=True, context_stations=2, lr=1e-3)
    init = train_reconstructor_run.Path("checkpoints/reconstructor-run")
    world = train_reconstructor_run.load_world(tmp_path / "data", 0, "train", 2, config.size)
    model, reference = ReconNet.from_pretrained(init).eval(), ReconNet.from_pretrained(init).eval()
    station = int(world["target_station"][0])
    with torch.no_grad():
        depth_terms = train_reconstructor_run.depth_step_losses(model, reference, world, station, config)
        rendered = train_reconstructor_run.step_losses(model, world, 0, config)
    assert float(depth_terms["keep"]) == 0.0
    assert abs(float(depth_terms["view_depth"]) - float(rendered["view_depth"])) < 1e-6
    assert abs(float(depth_terms["sky"]) - float(rendered["sky"])) < 1e-6
    summary = train_reconstructor_run.train(config, tmp_path / "recon", tmp_path / "data", init=init)
    assert summary["steps"] == 2
    history = json.loads((tmp_path / "recon" / "history.json").read_text())
    assert {"view_depth", "sky", "keep"} <= set(history[1]) and "l1" not in history[1]
    assert np.isfinite(summary["final"]["heldout"]["view_depth_abs_rel"])
    before, after = ReconNet.from_pretrained(init).state_dict(), ReconNet.from_pretrained(tmp_path / "recon").state_dict()
    assert any(not np.allclose(before[k].numpy(), after[k].numpy()) for k in before)
    with pytest.raises(SystemExit, match="--depth-only needs --init"):
        train_reconstructor_run.train(config, tmp_path / "other", tmp_path / "data")


def test_a_rebinned_reconstructor_starts_from_nearly_its_own_depth(tmp_path, monkeypatch):
    """`--depth-bins` (finer inverse-depth planes for a GPU fine-tune, `rebinned`): the same planes are the same
    net; twice as many start within a few per cent of its depth (the head's and the cost volume's logits
    interpolated onto the new planes), no further from the truth; a training run saves the new planes."""
    import torch

    from neural_sensor.reconstruct.model import view_inputs

    config = train_reconstructor_run.RunReconTrainConfig(steps=1, worlds=1, targets=2, eval_every=1, save_every=1,
                                                         depth_only=True, context_stations=2, depth_bins=64)
    world = train_reconstructor_run.load_world(tmp_path / "data", 0, "train", 2, config.size)
    views = np.arange(24)
    cams = train_reconstructor_run._cameras(world["K"][views], world["pose"][views], config.size)
    images = torch.from_numpy(world["rgb"][views].astype(np.float32) / 255).permute(0, 3, 1, 2)
    net = ReconNet.from_pretrained(train_reconstructor_run.Path("checkpoints/reconstructor-run")).eval()
    truth = torch.from_numpy(world["depth"][views].astype(np.float32))

    def depth(model):
        with torch.no_grad():
            return model(images, **view_inputs(model, cams, config.size[1], config.size[0]))["depth"]

    base = depth(net)
    half = torch.nn.functional.interpolate(truth[:, None], size=base.shape[-2:], mode="nearest")[:, 0]
    surface = half > 0
    assert torch.equal(depth(train_reconstructor_run.rebinned(net, 32)), base)
    finer = train_reconstructor_run.rebinned(net, 64)
    assert finer.config.depth_bins == 64 and finer.inverse_depths.shape == (64,)
    moved = ((depth(finer) - base).abs() / base).median()
    assert float(moved) < 0.05, float(moved)  # measured 0.028 on a held-out world
    abs_rel = lambda d: float(((d - half).abs() / half)[surface].mean())  # noqa: E731
    assert abs_rel(depth(finer)) < 1.05 * abs_rel(base), (abs_rel(depth(finer)), abs_rel(base))
    nearer = train_reconstructor_run.rebinned(net, 64, 0.5)  # planes nearer than the old nearest: no mass at first,
    assert float((depth(nearer) < 0.99).float().mean()) < 1e-3  # and the cost volume's readers ignore them
    weights = nearer.state_dict()["cost_logits.weight"]
    outside = nearer.inverse_depths > net.inverse_depths[-1] + 1e-6
    assert outside.any() and float(weights[:, :64][:, outside].abs().max()) == 0.0
    monkeypatch.setattr(train_reconstructor_run, "EVAL_SEEDS", range(1_000_320, 1_000_321))
    train_reconstructor_run.train(config, tmp_path / "recon", tmp_path / "data",
                                  init=train_reconstructor_run.Path("checkpoints/reconstructor-run"))
    assert ReconNet.from_pretrained(tmp_path / "recon").config.depth_bins == 64
