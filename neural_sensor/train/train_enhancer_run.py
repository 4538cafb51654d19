"""Train the enhancer in the run's regime, so that it never harms: reconstruction renders AND clean renders.

Data: `neural_sensor.train.enhancer_run_data` (frames and frame pairs in the run's regime, made per world
and stored, so generation resumes).

Training: random crops; a fraction `identity_fraction` of the samples feed the CLEAN
render (with its own depth and alpha) and ask for itself back, so that a sharp input
passes through unchanged (with no reference: a builder scene has no log); the rest map the
reconstruction's render, with its reference (dropped for `reference_dropout` of them, so the
enhancer also serves a reconstruction without a log), to the ground truth.
Temporal term (`temporal_weight` > 0): consecutive frame pairs PAIR_STEP_M apart along the
drive (`world_pairs`: each pixel of the later frame knows where its surface point lies in
the earlier one, through the ground-truth depth and poses, as the benchmark's flicker warp);
the enhanced pair must change from one frame to the next as the truth does: mean
|(E_t - E_{t-1}(warped)) - (G_t - G_{t-1}(warped))| (`temporal_change_error`), so that it
adds no flicker and removes the reconstruction's (a term on the enhancer's residual alone,
|r_t - r_{t-1}(warped)|, was tried first: it drives the enhancer to the identity before the
raw render's flicker is reached). The pair crops also take the L1 towards the truth.
Loss = L1 + ssim_weight (1 - SSIM) [+ mse_weight x squared error] [+ unseen_weight x the L1 over the pixels the log
reference does not cover, `unseen_error`] + perceptual_weight x the VGG16 perceptual distance
(`neural_sensor.perceptual`, approximates LPIPS; on a 64 px square of half the batch every
second step, because the VGG16 pass costs ten times the enhancer's on a CPU). Adam, cosine schedule, random flips.
A fresh model takes RUN_ENHANCER's widths or `--block-channels`; `--widen` starts from `--init` with every width
doubled and the same function (`widened`), to try a larger enhancer without training it from the identity.
Progress bar; checkpoint + optimiser state every `save_every` steps; `--resume`
continues. Held-out worlds (seeds from HELDOUT_FIRST_SEED + 300, clear of the run-regime
benchmark's) are evaluated every `eval_every` steps: PSNR raw vs enhanced, and a clean
render through the enhancer against itself.

    python -m neural_sensor.train.train_enhancer_run --worlds 24 --steps 2000 --out out/enhancer-run
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from neural_sensor.enhance.model import Enhancer, EnhancerConfig
from neural_sensor.metrics import psnr
from neural_sensor.train.enhancer_run_data import DATA_VERSION, REFERENCE_VIEWS, SHIFTS_M, load_frames, load_pairs
from neural_sensor.train.losses import ssim_map_torch
from neural_sensor.reconstruct.model import checkpoint_hash as recon_checkpoint_hash
from neural_sensor.train.state import (NonFiniteLoss, add_out_options, apply_gradients, begin_summary,
                                       check_out_options, check_resumed_shape, check_training_options,
                                       default_data_root, finished_line, out_of_time, record_step, resumed_settings,
                                       set_cosine_lr, start_or_resume, stop_requested, write_summary)
from neural_sensor.train.synthetic import HELDOUT_FIRST_SEED

SHIPPED_TEMPORAL_WEIGHT = 5.0  # the temporal term's CLI default (stages 4 and 5a trained at 5; stage 8 was
#   fine-tuned at 10, then 600 steps at 20, which holds its delivered flicker under the raw render's, and the shipped
#   stage 10 800 steps more at 20 on 48 worlds; stage 12, shipped, 800 more with --shift-weights: its CARD)
EVAL_SEEDS = range(HELDOUT_FIRST_SEED + 300, HELDOUT_FIRST_SEED + 302)
RUN_ENHANCER = EnhancerConfig(model_name="enhancer-run", unshuffle=4, block_out_channels=(16, 32, 64))


@dataclass
class RunEnhancerTrainConfig:
    """Training run settings (stored with the checkpoint)."""

    steps: int = 2000
    batch: int = 8
    crop: tuple[int, int] = (128, 224)  # (height, width) of the training crops; multiples of 16
    lr: float = 1e-3
    identity_fraction: float = 0.35  # samples whose input is the clean render and target itself
    reference_dropout: float = 0.2  # reconstruction samples trained without their log reference
    ssim_weight: float = 0.1
    mse_weight: float = 0.0  # a squared-error term beside the L1 (PSNR reads squared error; 0 until stage 13)
    unseen_weight: float = 0.0  # an L1 term averaged over the pixels no log view covers (`unseen_error`; where the
    #   enhancer has no reference to copy: the disocclusions off the path)
    perceptual_weight: float = 0.1
    perceptual_every: int = 2  # the VGG16 term (costly on a CPU): every Nth step (weighted x N), on a
    perceptual_crop: int = 64  # random square of this side from the first half of the batch
    worlds: int = 24
    ticks_per_world: int = 4  # rig poses per world (6 frames each)
    temporal_weight: float = 0.0  # the temporal-change term on frame pairs (0: no pairs loaded)
    pair_batch: int = 4  # frame pairs per step (two crops each)
    pairs_per_world: int = 4  # pair poses per world (6 cameras each)
    pair_worlds: int = 0  # frame pairs from the first this many training worlds (0: all `worlds`; ~110 MB each)
    eval_every: int = 250
    save_every: int = 100
    seed: int = 0
    time_budget_s: float = 0.0  # stop at this many seconds of training even before `steps` (0: no budget)
    device: str = "cpu"  # "cpu" or "cuda"
    block_out_channels: tuple[int, ...] = ()  # a fresh model's UNet widths (() = RUN_ENHANCER's)
    widen: bool = False  # start from `init` with every UNet width doubled (`widened`: the same function)
    widen_noise: float = 0.01  # with widen: the noise that lets the copied channels part
    shift_weights: tuple[tuple[float, float], ...] = ()  # (shift_m, weight): frames (and pairs) drawn in proportion
    #                                                      to the weight of their shift; () = uniformly


def shift_probabilities(shift_m: np.ndarray, shift_weights) -> np.ndarray | None:
    """Each frame's probability of being drawn, [N] summing to 1, from its shift_m [N] and (shift_m, weight) pairs
    (every shift present must have a weight); None for no weights (uniform)."""
    if not shift_weights:
        return None
    table = {round(float(shift), 3): float(weight) for shift, weight in shift_weights}
    missing = sorted({round(float(s), 3) for s in shift_m} - set(table))
    if missing or any(w < 0 for w in table.values()):
        raise ValueError(f"shift weights {dict(table)}: need a weight >= 0 for every shift in the data, "
                         f"missing {missing}")
    weights = np.array([table[round(float(s), 3)] for s in shift_m], np.float64)
    if not weights.sum() > 0:
        raise ValueError(f"shift weights {dict(table)} give every frame weight 0")
    return weights / weights.sum()


def _draw_crops(shape: tuple[int, int, int], rng: np.random.Generator, count: int, crop: tuple[int, int],
                identity_fraction: float, probabilities: np.ndarray | None = None):
    """(frame index, crop top, crop left, identity, flip), [count] each, for frames of shape (N, H, W); frames
    drawn uniformly or by `probabilities` [N]."""
    n, height, width = shape
    ch, cw = crop
    assert ch <= height and cw <= width, (crop, height, width)
    assert probabilities is None or probabilities.shape == (n,), (None if probabilities is None else
                                                                  probabilities.shape, n)
    idx = rng.integers(n, size=count) if probabilities is None else rng.choice(n, size=count, p=probabilities)
    ys, xs = rng.integers(0, height - ch + 1, size=count), rng.integers(0, width - cw + 1, size=count)
    return idx, ys, xs, rng.random(count) < identity_fraction, rng.random(count) < 0.5


def _images(items: list[np.ndarray]) -> torch.Tensor:
    """uint8 [h, w, 3] images -> float [B, 3, h, w] in [0, 1]."""
    return torch.from_numpy(np.stack(items).astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()


def sample_pairs(pairs: dict[str, np.ndarray], rng: np.random.Generator, count: int, crop: tuple[int, int],
                 identity_fraction: float, reference_dropout: float = 0.0, probabilities: np.ndarray | None = None):
    """Crops of `count` frame pairs, the same window (and flip) in both frames: (rgb [2B, 3, h, w], depth [2B, h,
    w], alpha [2B, h, w], target [2B, 3, h, w], reference [2B, 3, h, w], reference_valid [2B, h, w], source [B, h,
    w] int64), rows 0..B-1 the earlier frames, B..2B-1 the later ones; source: each later-crop pixel's flat index
    in its earlier crop, -1 where that frame does not see it or it falls outside the window. A fraction of the
    pairs are clean renders (the truth as input, no reference); `reference_dropout` of the others have none;
    `probabilities` [N] draws the pairs unevenly (`shift_probabilities`)."""
    width = pairs["rgb"].shape[2]
    ch, cw = crop
    idx, ys, xs, identity, flip = _draw_crops(pairs["rgb"].shape[:3], rng, count, crop, identity_fraction,
                                              probabilities)
    use_reference = ~identity & (rng.random(count) >= reference_dropout)
    items = {k: [] for k in ("rgb", "depth", "alpha", "target", "reference", "reference_valid")}
    sources = []
    for prefix in ("prev_", ""):
        for i, y, x, ident, fl, use in zip(idx, ys, xs, identity, flip, use_reference):
            win = (slice(y, y + ch), slice(x, x + cw))
            src = ("truth", "truth_depth", "truth_alpha") if ident else ("rgb", "depth", "alpha")
            parts = [pairs[prefix + k][i][win] for k in (*src, "truth", "reference", "reference_valid")]
            if not use:
                parts[-1] = np.zeros_like(parts[-1])
            if fl:
                parts = [p[:, ::-1] for p in parts]
            for key, part in zip(items, parts):
                items[key].append(part)
            if prefix == "":
                source = pairs["source"][i][win].astype(np.int64)
                sv, su = np.divmod(source, width)
                inside = (source >= 0) & (sv >= y) & (sv < y + ch) & (su >= x) & (su < x + cw)
                su = su - x
                if fl:
                    su = cw - 1 - su
                local = np.where(inside, (sv - y) * cw + su, -1)
                sources.append(local[:, ::-1] if fl else local)
    return (_images(items["rgb"]), torch.from_numpy(np.stack(items["depth"]).astype(np.float32)),
            torch.from_numpy(np.stack(items["alpha"]).astype(np.float32) / 255.0), _images(items["target"]),
            _images(items["reference"]), torch.from_numpy(np.stack(items["reference_valid"]).astype(np.float32)),
            torch.from_numpy(np.ascontiguousarray(np.stack(sources))))


def warped_change(image_prev: torch.Tensor, image: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """image - image_prev warped into it ([B, C, h, w]; 0 where a pixel has no source): image_prev / image [B, C,
    h, w] the earlier / later frame, source [B, h, w] int64 (flat index into the earlier frame, -1: none)."""
    b, c, h, w = image.shape
    assert image_prev.shape == image.shape and source.shape == (b, h, w), (image.shape, source.shape)
    gathered = torch.gather(image_prev.reshape(b, c, h * w), 2,
                            source.clamp(min=0).reshape(b, 1, h * w).expand(b, c, h * w)).reshape(b, c, h, w)
    return (image - gathered) * (source >= 0)[:, None].to(image.dtype)


def temporal_change_error(pred_prev: torch.Tensor, pred: torch.Tensor, target_prev: torch.Tensor,
                          target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Mean |(pred_t - pred_{t-1} warped) - (target_t - target_{t-1} warped)| over the pixels with a source and
    the channels (all [B, C, h, w]; source as `warped_change`); 0 when no pixel has a source."""
    valid = source >= 0
    if not valid.any():
        return pred.sum() * 0.0
    error = warped_change(pred_prev, pred, source) - warped_change(target_prev, target, source)
    return error.abs().sum() / (valid.sum() * pred.shape[1])


def unseen_error(pred: torch.Tensor, target: torch.Tensor, reference_valid: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over the channels and the pixels the log reference does not cover, in the samples that
    were sent one (pred / target [B, C, h, w], reference_valid [B, h, w] 0/1; a sample whose reference_valid is all
    0 had none: a clean render or a dropped reference); 0 when no such pixel exists."""
    b, c, h, w = pred.shape
    assert target.shape == pred.shape and reference_valid.shape == (b, h, w), (pred.shape, reference_valid.shape)
    covered = reference_valid > 0.5
    unseen = ~covered & covered.flatten(1).any(dim=1)[:, None, None]
    if not unseen.any():
        return pred.sum() * 0.0
    return ((pred - target).abs() * unseen[:, None].to(pred.dtype)).sum() / (unseen.sum() * c)


def sample_batch(frames: dict[str, np.ndarray], rng: np.random.Generator, batch: int, crop: tuple[int, int],
                 identity_fraction: float, reference_dropout: float = 0.0, probabilities: np.ndarray | None = None):
    """(rgb [B, 3, h, w], depth [B, h, w], alpha [B, h, w], target [B, 3, h, w], reference [B, 3, h, w],
    reference_valid [B, h, w], identity [B] bool): random crops, flips, and a fraction of clean-render identity
    samples (no reference); `reference_dropout` of the others go without their reference too."""
    ch, cw = crop
    idx, ys, xs, identity, flip = _draw_crops(frames["rgb"].shape[:3], rng, batch, crop, identity_fraction,
                                              probabilities)
    use_reference = ~identity & (rng.random(batch) >= reference_dropout)
    items: list[list] = [[] for _ in range(6)]
    for i, y, x, ident, fl, use in zip(idx, ys, xs, identity, flip, use_reference):
        win = (slice(y, y + ch), slice(x, x + cw))
        src = ("truth", "truth_depth", "truth_alpha") if ident else ("rgb", "depth", "alpha")
        parts = [frames[k][i][win] for k in (*src, "truth", "reference", "reference_valid")]
        if not use:
            parts[-1] = np.zeros_like(parts[-1])
        if fl:
            parts = [p[:, ::-1] for p in parts]
        for item, part in zip(items, parts):
            item.append(part)
    rgb, depth, alpha, target, reference, valid = items
    return (_images(rgb), torch.from_numpy(np.stack(depth).astype(np.float32)),
            torch.from_numpy(np.stack(alpha).astype(np.float32) / 255.0), _images(target), _images(reference),
            torch.from_numpy(np.stack(valid).astype(np.float32)), torch.from_numpy(identity))


MONITOR_MAX_PSNR_DB = 100.0  # `evaluate`: the PSNR an identical image is recorded with


@torch.no_grad()
def evaluate(model: Enhancer, frames: dict[str, np.ndarray]) -> dict:
    """Mean PSNR over held-out frames: raw and enhanced reconstruction renders against ground truth (enhanced with
    the log reference, as the rig sends it, and without), and a clean render through the enhancer against
    itself."""
    f32 = {k: frames[k].astype(np.float32) for k in ("rgb", "depth", "alpha", "truth", "truth_depth", "truth_alpha",
                                                     "reference")}
    for k in ("rgb", "alpha", "truth", "truth_alpha", "reference"):
        f32[k] /= 255.0
    enhanced = model.enhance(f32["rgb"], f32["depth"], f32["alpha"], f32["reference"], frames["reference_valid"])
    alone = model.enhance(f32["rgb"], f32["depth"], f32["alpha"])
    passthrough = model.enhance(f32["truth"], f32["truth_depth"], f32["truth_alpha"])
    truth = f32["truth"]

    def mean_psnr(images) -> float:  # an identical image counts as MONITOR_MAX_PSNR_DB: JSON has no Infinity
        return round(float(np.mean([min(psnr(a, b), MONITOR_MAX_PSNR_DB) for a, b in zip(images, truth)])), 3)

    return {"raw_psnr": mean_psnr(f32["rgb"]), "enhanced_psnr": mean_psnr(enhanced),
            "enhanced_no_reference_psnr": mean_psnr(alone), "passthrough_psnr": mean_psnr(passthrough)}


@torch.no_grad()
def evaluate_pairs(model: Enhancer, pairs: dict[str, np.ndarray]) -> dict:
    """Flicker over held-out frame pairs, as the run-regime benchmark measures it (8-bit levels): mean |frame t -
    frame t-1 warped| over the pixels with a source, raw and enhanced."""
    def f32(key, scale=255.0):
        return pairs[key].astype(np.float32) / scale

    images = {"raw": (f32("prev_rgb"), f32("rgb"))}
    images["enhanced"] = tuple(model.enhance(f32(p + "rgb"), f32(p + "depth", 1.0), f32(p + "alpha"),
                                             f32(p + "reference"), pairs[p + "reference_valid"]) for p in ("prev_", ""))
    result = {}
    for name, (prev, now) in images.items():
        diffs = []
        for a, b, src in zip(prev, now, pairs["source"]):
            seen = src >= 0
            if seen.any():
                diffs.append(np.abs(a.reshape(-1, 3)[src[seen]] - b[seen]).mean() * 255.0)
        result[f"flicker_{name}"] = round(float(np.mean(diffs)), 4)
    return result


def check_config(config: RunEnhancerTrainConfig, init: Path | None = None) -> None:
    """ValueError naming the setting, for a training run that cannot work: identity_fraction outside [0, 1], a
    negative mse_weight or unseen_weight, block_out_channels that are not positive multiples of RUN_ENHANCER's
    GroupNorm groups or are given with `init` (a fine-tune keeps its checkpoint's shape), widen without `init`.
    `train` calls it before loading any data; the CLI turns it into a usage error."""
    if not 0.0 <= config.identity_fraction <= 1.0:
        raise ValueError(f"identity_fraction {config.identity_fraction}: expected a fraction in [0, 1]")
    if not config.mse_weight >= 0.0:
        raise ValueError(f"mse_weight {config.mse_weight}: expected a weight >= 0")
    if not config.unseen_weight >= 0.0:
        raise ValueError(f"unseen_weight {config.unseen_weight}: expected a weight >= 0")
    if not 0 <= config.pair_worlds <= config.worlds:
        raise ValueError(f"pair_worlds {config.pair_worlds}: expected 0 (all) to worlds ({config.worlds})")
    groups = RUN_ENHANCER.norm_num_groups
    if not all(c > 0 and c % groups == 0 for c in config.block_out_channels):
        raise ValueError(f"block_out_channels {config.block_out_channels}: expected positive multiples of {groups} "
                         "(the GroupNorm groups)")
    if config.block_out_channels and init:
        raise ValueError(f"block_out_channels {config.block_out_channels} with init {init}: a fine-tune keeps the "
                         "shape of the checkpoint it starts from")
    if config.widen and init is None:
        raise ValueError("widen needs init: it doubles the widths of a trained enhancer")
    for shift, weight in config.shift_weights:  # (-1 failed in numpy after the data was made; nan was "all zero")
        if not (math.isfinite(shift) and shift >= 0 and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"shift_weights {shift:g}:{weight:g}: expected a shift >= 0 m and a finite weight >= 0")
    if config.shift_weights and not any(weight > 0 for _, weight in config.shift_weights):
        raise ValueError("shift_weights: every weight is 0, so no frame could be drawn")
    missing = sorted(set(SHIFTS_M) - {round(float(s), 3) for s, _ in config.shift_weights})
    if config.shift_weights and missing:  # (it failed after the data was made)
        raise ValueError(f"shift_weights: no weight for the data's shift(s) {', '.join(f'{s:g}' for s in missing)} m "
                         f"(the frames are drawn at {', '.join(f'{s:g}' for s in sorted(set(SHIFTS_M)))} m off the path)")
    if config.temporal_weight > 0 and config.pairs_per_world == 0:  # (it failed on an empty array after the data)
        raise ValueError(f"pairs_per_world 0 makes no frame pairs, and the temporal term (temporal_weight "
                         f"{config.temporal_weight:g}) needs them: give temporal_weight 0 too")


def pair_worlds(config: RunEnhancerTrainConfig) -> int:
    """How many training worlds the frame pairs come from (the first ones)."""
    return config.pair_worlds or config.worlds


def new_model(init: Path | None = None, block_out_channels: tuple[int, ...] = ()) -> Enhancer:
    """A fresh run-regime enhancer (RUN_ENHANCER, with `block_out_channels` if given; the identity at start), or the
    weights of `init` to fine-tune (then `block_out_channels` must be empty: a checkpoint's shape is its own)."""
    check_config(RunEnhancerTrainConfig(block_out_channels=tuple(block_out_channels)), init)
    if init:
        return Enhancer.from_pretrained(init).train()
    config = asdict(RUN_ENHANCER)
    if block_out_channels:
        config["block_out_channels"] = tuple(block_out_channels)
    return Enhancer(EnhancerConfig(**config))


def widened(model: Enhancer, noise: float = 0.0, seed: int = 0) -> Enhancer:
    """`model` with every UNet width doubled and the same function (Net2WiderNet, Chen et al. 2016): each channel of
    every feature map becomes two adjacent copies (new 2i and 2i + 1 <- old i), so each GroupNorm group of the wide
    net holds its old group's channels twice (the same mean and variance) and a concatenation of copies is the copy
    of the concatenation; a weight reading a doubled dimension is halved over the two copies. The fixed timestep's
    embedding is carried as a constant (the wide net's sinusoid has other frequencies). `noise` > 0 adds Gaussian
    noise of that fraction of each widened tensor's std, so the copies can part in training (0: the same outputs to
    float rounding, tested).
    """
    unet = model.unet
    config = replace(model.config, block_out_channels=tuple(2 * c for c in unet.config.block_out_channels), unet={})
    assert config.norm_num_groups == unet.config.norm_num_groups, (config.norm_num_groups, unet.config)
    wide = Enhancer(config)
    generator = torch.Generator().manual_seed(seed)
    old = unet.state_dict()
    new = wide.unet.state_dict()
    with torch.no_grad():
        t = torch.full((1,), model.config.timestep, dtype=torch.long)
        temb = unet.time_embedding.linear_1(unet.time_proj(t).to(unet.dtype))[0]  # [E] before its activation
        for name, target in new.items():
            source = old[name]
            if name == "time_embedding.linear_1.weight":
                new[name] = torch.zeros_like(target)
                continue
            if name == "time_embedding.linear_1.bias":
                source = temb
            value = source
            for dim in range(source.ndim):
                if target.shape[dim] == source.shape[dim]:
                    continue
                assert target.shape[dim] == 2 * source.shape[dim], (name, source.shape, target.shape)
                value = value.repeat_interleave(2, dim=dim)
                if dim == 1:  # an input dimension of a conv / linear: its two copies share the old weight
                    value = value / 2.0
            if noise > 0 and value.ndim > 1 and value.shape != source.shape:
                value = value + noise * value.std() * torch.randn(value.shape, generator=generator)
            new[name] = value.to(target.dtype)
    wide.unet.load_state_dict(new)
    return wide


def train(config: RunEnhancerTrainConfig, out: Path, data_root: Path, recon_folder: Path, resume: bool = False,
          cache_dir: Path | None = None, init: Path | None = None) -> dict:
    from neural_sensor.perceptual import perceptual_distance_torch

    check_config(config, init)  # before any data is made or loaded
    torch.manual_seed(config.seed)
    out = Path(out)
    frames = load_frames(data_root, recon_folder, range(config.worlds), "train", config.ticks_per_world, cache_dir)
    eval_frames = load_frames(data_root, recon_folder, EVAL_SEEDS, "heldout", 2, cache_dir)
    pairs = eval_pairs = None
    if config.temporal_weight > 0:
        pairs = load_pairs(data_root, recon_folder, range(pair_worlds(config)), "train", config.pairs_per_world,
                           cache_dir)
        eval_pairs = load_pairs(data_root, recon_folder, EVAL_SEEDS, "heldout", 2, cache_dir)
    frame_p = shift_probabilities(frames["shift_m"], config.shift_weights)
    pair_p = None if pairs is None else shift_probabilities(pairs["shift_m"], config.shift_weights)

    def monitor() -> dict:
        return {**evaluate(model, eval_frames), **(evaluate_pairs(model, eval_pairs) if eval_pairs else {})}

    def fresh() -> Enhancer:  # trained with the log reference: its config says so (the rig then sends it)
        model = new_model(init, config.block_out_channels)
        if config.widen:
            model = widened(model, config.widen_noise, config.seed).train()
        model.config = replace(model.config, reference_views=REFERENCE_VIEWS)
        return model.to(config.device)

    model, optimiser, step, history = start_or_resume(
        out, resume, fresh,
        lambda folder: Enhancer.from_pretrained(folder).to(config.device),
        lambda m: torch.optim.Adam(m.parameters(), lr=config.lr))
    rng = np.random.default_rng(config.seed + step)
    start = time.perf_counter()
    extras = dict(frames=int(len(frames["rgb"])), reconstructor=str(recon_folder),
                  reconstructor_hash=recon_checkpoint_hash(recon_folder), init=str(init) if init else None,
                  data_version=DATA_VERSION)
    if step == 0:
        begin_summary(out, config, **extras)
        record = {"step": 0, "heldout": monitor()}
        history.append(record)
        tqdm.write(json.dumps(record))
    bar = tqdm(total=config.steps, initial=step, desc="train enhancer (run regime)", unit="step")
    with stop_requested(out, lambda: (model, optimiser, step, history)) as request:
        while step < config.steps and not out_of_time(config, start) and request.signum is None:
            model.train()
            set_cosine_lr(optimiser, config.lr, step, config.steps)
            rgb, depth, alpha, target, reference, valid, identity = sample_batch(
                frames, rng, config.batch, config.crop, config.identity_fraction, config.reference_dropout, frame_p)
            rgb, depth, alpha, target, reference, valid = (t.to(config.device)
                                                           for t in (rgb, depth, alpha, target, reference, valid))
            pred = model(rgb, depth, alpha, reference, valid)
            l1 = (pred - target).abs().mean()
            loss_ssim = 1.0 - ssim_map_torch(pred.clamp(0, 1), target).mean()
            loss = l1 + config.ssim_weight * loss_ssim
            if config.mse_weight > 0:
                loss = loss + config.mse_weight * (pred - target).square().mean()
            if config.unseen_weight > 0:
                loss = loss + config.unseen_weight * unseen_error(pred, target, valid)
            loss_perceptual = None
            if config.perceptual_weight > 0 and step % config.perceptual_every == 0:
                c = config.perceptual_crop
                y0, x0 = (int(rng.integers(0, n - c + 1)) for n in config.crop)
                half = max(1, config.batch // 2)
                window = (slice(0, half), slice(None), slice(y0, y0 + c), slice(x0, x0 + c))
                loss_perceptual = perceptual_distance_torch(pred[window].clamp(0, 1), target[window]).mean()
                loss = loss + config.perceptual_every * config.perceptual_weight * loss_perceptual
            loss_temporal = None
            if pairs is not None:
                p_rgb, p_depth, p_alpha, p_target, p_ref, p_valid, source = (
                    t.to(config.device) for t in sample_pairs(pairs, rng, config.pair_batch, config.crop,
                                                              config.identity_fraction, config.reference_dropout, pair_p))
                p_pred = model(p_rgb, p_depth, p_alpha, p_ref, p_valid)
                half = config.pair_batch
                loss_temporal = temporal_change_error(p_pred[:half], p_pred[half:], p_target[:half], p_target[half:],
                                                      source)
                loss = loss + (p_pred - p_target).abs().mean() + config.temporal_weight * loss_temporal
            apply_gradients(model, optimiser, loss)
            step += 1
            bar.update(1)
            bar.set_postfix(l1=f"{l1.item():.4f}")
            record = {"step": step, "loss": round(loss.item(), 5), "l1": round(l1.item(), 5),
                      "ssim_term": round(loss_ssim.item(), 5), "identity_samples": int(identity.sum())}
            if loss_perceptual is not None:
                record["perceptual"] = round(loss_perceptual.item(), 5)
            if loss_temporal is not None:
                record["temporal"] = round(loss_temporal.item(), 6)
            record_step(out, model, optimiser, step, history, record, config, monitor,
                        last=out_of_time(config, start))
    bar.close()
    return write_summary(out, step, start, history, config, **extras)


def main() -> None:
    from neural_sensor.checkpoints import DEFAULT_RECONSTRUCTOR, default_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--worlds", type=int, default=24, help="training worlds, seeds 0..N-1")
    parser.add_argument("--ticks", type=int, default=4, help="rig poses per world")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--save-every", type=int, default=RunEnhancerTrainConfig.save_every,
                        help="steps between checkpoints (a Ctrl-C or SIGTERM also saves the last step)")
    add_out_options(parser, Path("out/enhancer-run"))
    parser.add_argument("--data", type=Path, default=default_data_root("enhancer-run-data"),
                        help="where the made data is kept ($NEURAL_SENSOR_CACHE/enhancer-run-data when that is set)")
    parser.add_argument("--reconstructor", type=Path, default=default_checkpoint(DEFAULT_RECONSTRUCTOR))
    parser.add_argument("--init", type=Path, default=None, help="start from this enhancer checkpoint's weights")
    parser.add_argument("--data-only", action="store_true", help="make the frames and stop")
    parser.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda")
    parser.add_argument("--temporal-weight", type=float, default=SHIPPED_TEMPORAL_WEIGHT,
                        help="weight of the temporal-change term on consecutive frame pairs (0: off)")
    parser.add_argument("--pairs", type=int, default=4, help="frame-pair poses per world (with --temporal-weight)")
    parser.add_argument("--pair-worlds", type=int, default=0,
                        help="frame pairs from the first N training worlds only (0: all; each world's pairs take "
                             "~110 MB of memory, its frames ~50 MB)")
    parser.add_argument("--identity-fraction", type=float, default=RunEnhancerTrainConfig.identity_fraction,
                        help="fraction of the samples that feed a clean render and ask for itself back")
    parser.add_argument("--block-channels", default="", metavar="C,C,...",
                        help="a fresh model's UNet block widths (default: RUN_ENHANCER's 16,32,64)")
    parser.add_argument("--widen", action="store_true",
                        help="with --init: double every UNet width, starting from the same function (Net2WiderNet)")
    parser.add_argument("--mse-weight", type=float, default=RunEnhancerTrainConfig.mse_weight,
                        help="weight of a squared-error term beside the L1 (0: off)")
    parser.add_argument("--unseen-weight", type=float, default=RunEnhancerTrainConfig.unseen_weight,
                        help="weight of an L1 term over the pixels the log reference does not cover (0: off)")
    parser.add_argument("--shift-weights", default="", metavar="S:W,...",
                        help="draw frames in proportion to the weight of their shift off the path, e.g. "
                             "0:0.5,0.5:1,1:1,2:1.5,3:1.5 (every shift of the data needs one; default: uniformly)")
    args = parser.parse_args()
    check_out_options(parser, args)
    check_training_options(parser, args, init_class="Enhancer")
    try:
        shift_weights = tuple((float(a), float(b)) for a, b in (item.split(":") for item in args.shift_weights.split(",")
                                                                if item.strip()))
    except ValueError:
        parser.error(f"--shift-weights {args.shift_weights!r}: expected SHIFT:WEIGHT pairs separated by commas")
    try:
        block_channels = tuple(int(c) for c in args.block_channels.split(",") if c.strip())
    except ValueError:
        parser.error(f"--block-channels {args.block_channels!r}: expected widths separated by commas, e.g. 32,64,128")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    config = RunEnhancerTrainConfig(steps=args.steps, worlds=args.worlds, ticks_per_world=args.ticks, lr=args.lr,
                                    save_every=args.save_every,
                                    device=device, temporal_weight=args.temporal_weight, pairs_per_world=args.pairs,
                                    pair_worlds=args.pair_worlds,
                                    shift_weights=shift_weights, identity_fraction=args.identity_fraction,
                                    mse_weight=args.mse_weight, unseen_weight=args.unseen_weight,
                                    block_out_channels=block_channels,
                                    widen=args.widen)
    config = resumed_settings(parser, args, config, {
        "worlds": "worlds", "ticks": "ticks_per_world", "lr": "lr", "temporal_weight": "temporal_weight",
        "pairs": "pairs_per_world", "pair_worlds": "pair_worlds", "identity_fraction": "identity_fraction",
        "mse_weight": "mse_weight", "unseen_weight": "unseen_weight", "shift_weights": "shift_weights"})
    try:
        check_config(config, args.init)
    except ValueError as err:
        parser.error(str(err))
    widths = block_channels
    if args.widen and args.init is not None:  # the widened run's widths: twice its --init's
        saved = json.loads((Path(args.init) / "config.json").read_text())  # an enhancer's (check_training_options)
        widths = tuple(2 * c for c in saved.get("block_out_channels", RUN_ENHANCER.block_out_channels))
    option = "--widen" if args.widen else "--block-channels"
    check_resumed_shape(parser, args, {option: ("block_out_channels", widths)} if widths else {})
    if args.data_only:
        load_frames(args.data, args.reconstructor, range(config.worlds), "train", config.ticks_per_world, keep=False)
        load_frames(args.data, args.reconstructor, EVAL_SEEDS, "heldout", 2, keep=False)
        if config.temporal_weight > 0:
            load_pairs(args.data, args.reconstructor, range(pair_worlds(config)), "train", config.pairs_per_world,
                       keep=False)
            load_pairs(args.data, args.reconstructor, EVAL_SEEDS, "heldout", 2, keep=False)
        return
    try:
        summary = train(config, args.out, args.data, args.reconstructor, resume=args.resume, init=args.init)
    except KeyboardInterrupt:  # saved and said by `stop_requested`
        raise SystemExit(130) from None
    except NonFiniteLoss as err:
        raise SystemExit(f"{parser.prog}: error: {err}") from None
    print(finished_line(args.out, summary))


if __name__ == "__main__":
    main()
