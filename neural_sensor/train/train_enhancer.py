"""Train the enhancer on (raw render of a reconstruction -> ground truth) pairs from synthetic worlds.

Data: for each training world (seeds 0..9999, the reconstructor's synthetic worlds)
the shipped reconstructor sees the front cameras at two context timesteps; its scene
is rendered at every target pose (interpolated; shifted 1, 2, 3 m; raised 1 m: 12 of
18 views off the recorded path) and paired with the builder's ground truth. The
reference input is the nearest context image warped into the target through the
RENDERED depth (what is available at run time). Pairs are written per world under
`--data` (a folder per reconstructor checkpoint hash; an existing world file is
reused, so generation resumes).

Training: loss = MSE (pixels whose surface no context view saw weigh 1 + disoccluded_weight;
the mask comes from the ground-truth depth, which only training has) + ssim_weight * (1 - SSIM), Adam with a cosine schedule,
random horizontal flips, the reference dropped for half of the samples (so the
model also works from the render alone, as the rig calls it). Progress bar; a
checkpoint + optimiser state every `save_every` steps; `--resume` continues.
Held-out worlds (seeds >= 1,000,000) are evaluated every `eval_every` steps: PSNR
over all / visible / disoccluded pixels and SSIM, raw vs enhanced.

    python -m neural_sensor.train.train_enhancer --steps 4000 --worlds 400 --out out/enhancer-small
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from neural_sensor.checkpoints import default_checkpoint
from neural_sensor.enhance.model import Enhancer, EnhancerConfig
from neural_sensor.enhance.warp import visibility_masks, warp_views
from neural_sensor.metrics import psnr, ssim
from neural_sensor.reconstruct.model import ReconNet, checkpoint_hash, reconstruct
from neural_sensor.render import render
from neural_sensor.train.losses import ssim_map_torch
from neural_sensor.train.state import (NonFiniteLoss, add_out_options, apply_gradients, check_out_options,
                                       check_training_options, default_data_root, load_or_make_npz, save_checkpoint,
                                       set_cosine_lr, start_or_resume)
from neural_sensor.train.synthetic import HELDOUT_FIRST_SEED, TARGET_KINDS, WorldConfig, check_split, make_world

CONTEXT = [t * 6 + c for t in (0, 2) for c in range(3)]  # front cameras at context timesteps 0 and 2
WORLD_CONFIG = WorldConfig(width=160, height=96, timesteps=3, voxel_m=0.4)
DATA_VERSION = "v4"  # bump when the stored pair fields or the worlds change (v3: ground-truth views carry the median
#   depth; v4: the intersection worlds' buildings kept off the crossing road, layout.roadside_objects)
EVAL_SEEDS = range(HELDOUT_FIRST_SEED + 4, HELDOUT_FIRST_SEED + 8)  # the fidelity benchmark uses +10..+13


@dataclass
class EnhancerTrainConfig:
    """Training run settings (stored with the checkpoint)."""

    steps: int = 4000
    batch: int = 8
    lr: float = 1e-3
    ssim_weight: float = 0.05
    reference_dropout: float = 0.5
    disoccluded_weight: float = 4.0  # extra loss weight on pixels whose surface no context view saw
    worlds: int = 400
    eval_every: int = 500
    save_every: int = 200
    seed: int = 0


def context_with_depths(world, scene) -> tuple[list, list]:
    """The context views as (camera, rgb, depth) with the reconstruction's RENDERED depth (for the reference
    warp: what run time has) and with the ground-truth depth (for visibility masks: what only evaluation has)."""
    cams = [world.context.cameras[i] for i in CONTEXT]
    depth = render(scene, cams, backend="cpu", outputs=("depth",)).depth
    rendered = [(c, world.context.rgb[i], d) for c, i, d in zip(cams, CONTEXT, depth)]
    true = [(c, world.context.rgb[i], world.context.depth[i]) for c, i in zip(cams, CONTEXT)]
    return rendered, true


def world_pairs(world, recon: ReconNet, with_masks: bool = False) -> dict[str, np.ndarray]:
    """Raw renders of `world`'s reconstruction at every target pose, their references and ground truth.

    Returns arrays over the V target views (in TARGET_KINDS order): rgb [V, H, W, 3], depth [V, H, W],
    alpha [V, H, W], reference [V, H, W, 3], reference_valid [V, H, W], target [V, H, W, 3], kind [V] (index
    into TARGET_KINDS); with_masks adds visible / disoccluded [V, H, W] (from the ground-truth depth).
    """
    scene = reconstruct(recon, world.context.rgb[CONTEXT], [world.context.cameras[i] for i in CONTEXT])
    rendered_views, true_views = context_with_depths(world, scene)
    out: dict[str, list] = {k: [] for k in ("rgb", "depth", "alpha", "reference", "reference_valid", "target", "kind")}
    if with_masks:
        out |= {"visible": [], "disoccluded": []}
    for k, kind in enumerate(TARGET_KINDS):
        views = world.targets[kind]
        raw = render(scene, views.cameras, backend="cpu", outputs=("rgb", "depth", "alpha"),
                     background=world.background_rgb)
        for i, cam in enumerate(views.cameras):
            ref, valid = warp_views(cam, raw.depth[i], raw.alpha[i], rendered_views)
            for name, value in (("rgb", raw.rgb[i]), ("depth", raw.depth[i]), ("alpha", raw.alpha[i]),
                                ("reference", ref), ("reference_valid", valid), ("target", views.rgb[i]), ("kind", k)):
                out[name].append(value)
            if with_masks:
                visible, disoccluded, _ = visibility_masks(cam, views.depth[i], views.alpha[i], true_views)
                out["visible"].append(visible)
                out["disoccluded"].append(disoccluded)
    return {k: np.stack(v) for k, v in out.items()}


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def _world_file(folder: Path, seed: int, split: str, recon: ReconNet) -> dict[str, np.ndarray]:
    """The pairs of one world, from `folder` if written before, else made and written atomically."""
    def make() -> dict[str, np.ndarray]:
        pairs = world_pairs(make_world(seed, split, WORLD_CONFIG), recon, with_masks=True)
        return {"disoccluded": pairs["disoccluded"], "rgb": _to_u8(pairs["rgb"]),
                "depth": pairs["depth"].astype(np.float16), "alpha": _to_u8(pairs["alpha"]),
                "reference": _to_u8(pairs["reference"]), "reference_valid": pairs["reference_valid"],
                "target": _to_u8(pairs["target"]), "kind": pairs["kind"].astype(np.uint8)}

    return load_or_make_npz(folder / f"world-{seed}.npz", make)


def load_pairs(data_root: Path, recon_folder: Path, worlds: int) -> dict[str, np.ndarray]:
    """Pairs of training worlds 0..worlds-1 for the reconstructor at `recon_folder`, made where missing."""
    recon = ReconNet.from_pretrained(recon_folder)
    folder = Path(data_root) / f"{checkpoint_hash(recon_folder)}-{DATA_VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for seed in tqdm(range(worlds), desc="enhancer pairs", unit="world"):
        check_split(seed, "train")
        shards.append(_world_file(folder, seed, "train", recon))
    return {k: np.concatenate([s[k] for s in shards]) for k in shards[0]}


def _batch(pairs: dict[str, np.ndarray], idx: np.ndarray, flip: np.ndarray, drop_ref: np.ndarray):
    def f32(x, scale):
        return torch.from_numpy(x[idx].astype(np.float32) * scale)

    rgb, target, ref = (f32(pairs[k], 1 / 255).permute(0, 3, 1, 2) for k in ("rgb", "target", "reference"))
    depth, alpha = f32(pairs["depth"], 1.0), f32(pairs["alpha"], 1 / 255)
    valid = torch.from_numpy(pairs["reference_valid"][idx] & ~drop_ref[:, None, None]).float()
    disoccluded = torch.from_numpy(pairs["disoccluded"][idx]).float()
    flip_t = torch.from_numpy(flip)
    tensors = [rgb, target, ref, depth, alpha, valid, disoccluded]
    for i, t in enumerate(tensors):
        tensors[i] = torch.where(flip_t.view(-1, *([1] * (t.ndim - 1))), t.flip(-1), t)
    return tensors


@torch.no_grad()
def evaluate(model: Enhancer, eval_pairs: list[dict[str, np.ndarray]], use_reference: bool = False) -> dict:
    """Per target kind, mean over views: PSNR (all / visible / disoccluded) and SSIM of raw and enhanced."""
    rows: dict[str, list] = {kind: [] for kind in TARGET_KINDS}
    for pairs in eval_pairs:
        enhanced = model.enhance(pairs["rgb"], pairs["depth"], pairs["alpha"],
                                 pairs["reference"] if use_reference else None,
                                 pairs["reference_valid"] if use_reference else None)
        for i in range(len(pairs["rgb"])):
            gt = pairs["target"][i]
            row = {}
            for name, image in (("raw", pairs["rgb"][i]), ("enhanced", enhanced[i])):
                row[f"{name}_psnr"] = psnr(image, gt)
                row[f"{name}_psnr_visible"] = psnr(image, gt, pairs["visible"][i])
                row[f"{name}_psnr_disoccluded"] = psnr(image, gt, pairs["disoccluded"][i])
                row[f"{name}_ssim"] = ssim(image, gt)
            rows[TARGET_KINDS[int(pairs["kind"][i])]].append(row)
    return {kind: {k: round(float(np.nanmean([r[k] for r in rs])), 3) for k in rs[0]} for kind, rs in rows.items()}


def heldout_pairs(recon: ReconNet, seeds=EVAL_SEEDS) -> list[dict[str, np.ndarray]]:
    """Float pairs with visibility masks for held-out worlds."""
    return [world_pairs(make_world(s, "heldout", WORLD_CONFIG), recon, with_masks=True) for s in seeds]


def train(config: EnhancerTrainConfig, out: Path, data_root: Path, recon_folder: Path, resume: bool = False) -> dict:
    torch.manual_seed(config.seed)
    out = Path(out)
    pairs = load_pairs(data_root, recon_folder, config.worlds)
    n = len(pairs["rgb"])
    eval_pairs = heldout_pairs(ReconNet.from_pretrained(recon_folder), EVAL_SEEDS)
    model, optimiser, step, history = start_or_resume(
        out, resume, lambda: Enhancer(EnhancerConfig()), Enhancer.from_pretrained,
        lambda m: torch.optim.Adam(m.parameters(), lr=config.lr))
    rng = np.random.default_rng(config.seed + step)
    start = time.perf_counter()
    bar = tqdm(total=config.steps, initial=step, desc="train enhancer", unit="step")
    while step < config.steps:
        model.train()
        lr = set_cosine_lr(optimiser, config.lr, step, config.steps)
        idx = rng.integers(n, size=config.batch)
        rgb, target, ref, depth, alpha, valid, disoccluded = _batch(pairs, idx, rng.random(config.batch) < 0.5,
                                                       rng.random(config.batch) < config.reference_dropout)
        pred = model(rgb, depth, alpha, ref, valid)
        # surfaces no context view saw (known here from the ground truth) weigh more: they are what a
        # raw render gets wrong and where the enhancer has to invent content
        weight = 1.0 + config.disoccluded_weight * disoccluded[:, None]
        mse = (weight * (pred - target) ** 2).mean() / weight.mean()
        ssim_value = ssim_map_torch(pred, target).mean()
        loss = mse + config.ssim_weight * (1 - ssim_value)
        apply_gradients(model, optimiser, loss)
        step += 1
        bar.update(1)
        bar.set_postfix(mse=f"{mse.item():.5f}", ssim=f"{ssim_value.item():.3f}")
        record = {"step": step, "mse": round(mse.item(), 6), "ssim": round(ssim_value.item(), 4), "lr": round(lr, 6)}
        if step % config.eval_every == 0 or step == config.steps:
            record["heldout"] = evaluate(model, eval_pairs)
            shift = record["heldout"]["shift_2m"]
            tqdm.write(f"step {step}: shift 2 m disoccluded {shift['raw_psnr_disoccluded']} -> "
                       f"{shift['enhanced_psnr_disoccluded']} dB, visible {shift['raw_psnr_visible']} -> "
                       f"{shift['enhanced_psnr_visible']} dB")
        history.append(record)
        if step % config.save_every == 0 or step == config.steps:
            save_checkpoint(out, model, optimiser, step, history)
    bar.close()
    summary = {"steps": step, "wall_s_this_run": round(time.perf_counter() - start, 1), "pairs": n,
               "reconstructor": str(recon_folder), "reconstructor_hash": checkpoint_hash(recon_folder),
               "final": history[-1] if history else {}, "config": asdict(config)}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--worlds", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    add_out_options(parser, Path("out/enhancer-small"))
    parser.add_argument("--data", type=Path, default=default_data_root("enhancer-data"),
                        help="pair cache (per reconstructor; $NEURAL_SENSOR_CACHE/enhancer-data when that is set)")
    parser.add_argument("--reconstructor", type=Path, default=default_checkpoint("reconstructor-small"))
    args = parser.parse_args()
    check_out_options(parser, args)
    check_training_options(parser, args, init_class="Enhancer")
    config = EnhancerTrainConfig(steps=args.steps, worlds=args.worlds, batch=args.batch, lr=args.lr)
    try:
        summary = train(config, args.out, args.data, args.reconstructor, resume=args.resume)
    except NonFiniteLoss as err:
        raise SystemExit(f"{parser.prog}: error: {err}") from None
    print(json.dumps(summary["final"]))


if __name__ == "__main__":
    main()
