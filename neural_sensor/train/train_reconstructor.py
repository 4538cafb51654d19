"""Train ReconNet on synthetic worlds, rendering its Gaussians through the torch reference renderer.

Per step: a training world's front cameras at two context timesteps go through the
network; its Gaussians are rendered at target poses (the middle timestep's cameras
and the interpolated poses) and compared with the ground truth: L1 on RGB plus an
L1 on log depth where the ground truth is solid. Progress bar; a checkpoint (model
safetensors + optimiser state) every `save_every` steps; `--resume` continues from it;
held-out worlds (seeds >= 1,000,000, never trained on) are evaluated every `eval_every`.

    python -m neural_sensor.train.train_reconstructor --steps 800 --out out/reconstructor-small
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from neural_sensor.metrics import psnr
from neural_sensor.reconstruct.model import ReconConfig, ReconNet, camera_tensors, gaussians_from_prediction
from neural_sensor.render._torch_ref import render_torch
from neural_sensor.train.state import (NonFiniteLoss, add_out_options, apply_gradients, check_out_options,
                                       check_training_options, finished_line, record_step, start_or_resume,
                                       write_summary)
from neural_sensor.train.synthetic import HELDOUT_FIRST_SEED, WorldConfig, check_split, make_world

CONTEXT_TIMESTEPS = (0, 2)
CONTEXT_CAMERAS = 3  # the front three cameras of the rig


@dataclass
class TrainConfig:
    """Training run settings (stored with the checkpoint)."""

    steps: int = 800  # optimiser steps
    lr: float = 2e-3  # Adam learning rate
    worlds: int = 24  # training worlds, seeds 0..worlds-1
    targets_per_step: int = 2  # target views rendered per step
    depth_weight: float = 0.1  # weight of the log-depth L1
    eval_every: int = 200  # steps between held-out evaluations
    eval_worlds: int = 2  # held-out worlds, seeds from 1,000,000
    save_every: int = 100  # steps between checkpoints
    seed: int = 0
    world: WorldConfig = field(default_factory=lambda: WorldConfig(width=160, height=96, timesteps=3, voxel_m=0.4))


def context_views(world):
    """Indices of the context views (front cameras at CONTEXT_TIMESTEPS) and of the targets between them."""
    per_t = 6
    ctx = [t * per_t + c for t in CONTEXT_TIMESTEPS for c in range(CONTEXT_CAMERAS)]
    middle = [1 * per_t + c for c in range(CONTEXT_CAMERAS)]
    return ctx, middle


def predict(model: ReconNet, world, ctx):
    images = torch.from_numpy(world.context.rgb[ctx]).permute(0, 3, 1, 2).contiguous()
    pred = model(images)
    h, w = pred["depth"].shape[-2:]
    poses, K = camera_tensors([world.context.cameras[i] for i in ctx], h, w)
    return gaussians_from_prediction(pred, poses, K)


def render_targets(gaussians, cameras, background):
    means, quats, scales, opac, sh, _ = gaussians
    viewmats = torch.tensor(np.stack([c.pose_world_to_camera for c in cameras]), dtype=torch.float32)
    Ks = torch.tensor(np.stack([c.K for c in cameras]), dtype=torch.float32)
    return render_torch(means, quats, scales, opac, sh, viewmats, Ks, cameras[0].width, cameras[0].height,
                        background=torch.tensor(background, dtype=torch.float32))


def supervised_losses(rendered: dict, gt_rgb: np.ndarray, gt_depth: np.ndarray, gt_alpha: np.ndarray):
    """(L1 rgb, L1 log depth where both are solid) of renders [V, H, W, ...] against ground truth."""
    loss_rgb = (rendered["rgb"] - torch.from_numpy(gt_rgb)).abs().mean()
    solid = torch.from_numpy((gt_alpha > 0.5) & (gt_depth > 0)) & (rendered["alpha"] > 0.5)
    if not solid.any():
        return loss_rgb, torch.zeros(())
    loss_depth = (torch.log(rendered["depth"][solid].clamp_min(1e-3))
                  - torch.log(torch.from_numpy(gt_depth)[solid])).abs().mean()
    return loss_rgb, loss_depth


@torch.no_grad()
def evaluate(model: ReconNet, worlds) -> dict:
    """Mean PSNR of the middle-timestep views and the interpolated targets on held-out worlds."""
    scores = {"middle": [], "interpolated": []}
    for world in worlds:
        ctx, middle = context_views(world)
        gaussians = predict(model, world, ctx)
        for name, cams, gt in (("middle", [world.context.cameras[i] for i in middle], world.context.rgb[middle]),
                               ("interpolated", world.targets["interpolated"].cameras,
                                world.targets["interpolated"].rgb)):
            out = render_targets(gaussians, cams, world.background_rgb)["rgb"].numpy()
            scores[name] += [psnr(o, g) for o, g in zip(out, gt)]
    return {k: round(float(np.mean(v)), 3) for k, v in scores.items()}


def train(config: TrainConfig, out: Path, resume: bool = False) -> dict:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    out = Path(out)
    worlds = [make_world(s, "train", config.world) for s in tqdm(range(config.worlds), desc="train worlds")]
    for world in worlds:
        check_split(world.seed, "train")
    eval_worlds = [make_world(HELDOUT_FIRST_SEED + i, "heldout", config.world) for i in range(config.eval_worlds)]
    model, optimiser, step, history = start_or_resume(
        out, resume, lambda: ReconNet(ReconConfig()), ReconNet.from_pretrained,
        lambda m: torch.optim.Adam(m.parameters(), lr=config.lr))
    start = time.perf_counter()
    bar = tqdm(total=config.steps, initial=step, desc="train", unit="step")
    while step < config.steps:
        model.train()
        world = worlds[rng.integers(len(worlds))]
        ctx, middle = context_views(world)
        pool = [("context", i) for i in middle] + [("interpolated", i) for i in range(len(world.targets["interpolated"].cameras))]
        picks = [pool[i] for i in rng.choice(len(pool), config.targets_per_step, replace=False)]
        cams = [world.context.cameras[i] if kind == "context" else world.targets["interpolated"].cameras[i]
                for kind, i in picks]
        gt_rgb = np.stack([world.context.rgb[i] if kind == "context" else world.targets["interpolated"].rgb[i]
                           for kind, i in picks])
        gt_depth = np.stack([world.context.depth[i] if kind == "context" else world.targets["interpolated"].depth[i]
                             for kind, i in picks])
        gt_alpha = np.stack([world.context.alpha[i] if kind == "context" else world.targets["interpolated"].alpha[i]
                             for kind, i in picks])
        gaussians = predict(model, world, ctx)
        rendered = render_targets(gaussians, cams, world.background_rgb)
        loss_rgb, loss_depth = supervised_losses(rendered, gt_rgb, gt_depth, gt_alpha)
        loss = loss_rgb + config.depth_weight * loss_depth
        apply_gradients(model, optimiser, loss)
        step += 1
        bar.update(1)
        bar.set_postfix(l1=f"{loss_rgb.item():.4f}", depth=f"{loss_depth.item():.3f}")
        record = {"step": step, "loss_rgb_l1": round(loss_rgb.item(), 5), "loss_log_depth": round(loss_depth.item(), 4)}
        record_step(out, model, optimiser, step, history, record, config, lambda: evaluate(model, eval_worlds),
                    key="heldout_psnr")
    bar.close()
    return write_summary(out, step, start, history, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--worlds", type=int, default=24)
    parser.add_argument("--lr", type=float, default=2e-3)
    add_out_options(parser, Path("out/reconstructor-small"))
    args = parser.parse_args()
    check_out_options(parser, args)
    check_training_options(parser, args, init_class="ReconNet")
    try:
        summary = train(TrainConfig(steps=args.steps, worlds=args.worlds, lr=args.lr), args.out, resume=args.resume)
    except NonFiniteLoss as err:
        raise SystemExit(f"{parser.prog}: error: {err}") from None
    print(finished_line(args.out, summary))


if __name__ == "__main__":
    main()
