"""Co-training (FreeGen): distil the enhancer's prior back into the reconstructor.

Fine-tunes a reconstructor checkpoint with its usual supervision (ground truth at the
context-middle and interpolated poses, which a real drive also has) plus extra targets at
off-trajectory poses (the ego shifted 1, 2, 3 m left), where a real drive has NO ground
truth: there the target is the frozen enhancer's refinement of the reconstructor's own
(detached) render. The synthetic worlds' ground truth at those poses is never used here.

    python -m neural_sensor.train.cotrain --steps 600 --out out/reconstructor-cotrained

Progress bar, a checkpoint + optimiser state every `save_every` steps, `--resume`. The control run
`--pseudo-weight 0` takes the same steps without the enhancer's targets, so a comparison separates the
enhancer's effect from that of simply training longer.
Compare the result with `benchmarks/fidelity.py --checkpoint OUT [--enhancer local]`.
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
from neural_sensor.enhance.model import Enhancer, checkpoint_hash
from neural_sensor.reconstruct.model import ReconNet
from neural_sensor.train.state import (NonFiniteLoss, add_out_options, apply_gradients, check_out_options,
                                       check_training_options, save_checkpoint, start_or_resume)
from neural_sensor.train.synthetic import SHIFTS_M, WorldConfig, make_world
from neural_sensor.train.train_reconstructor import context_views, predict, render_targets, supervised_losses

OFF_TRAJECTORY_KINDS = tuple(f"shift_{int(s)}m" for s in SHIFTS_M)


@dataclass
class CotrainConfig:
    steps: int = 600
    lr: float = 5e-4
    worlds: int = 32  # training worlds, seeds 0..worlds-1 (as the reconstructor's own training)
    targets_per_step: int = 2  # ground-truth targets (context middle / interpolated)
    pseudo_per_step: int = 2  # off-trajectory targets refined by the enhancer
    pseudo_weight: float = 0.1  # weight of the L1 to the enhancer's output (0.5 was tried: worse, see README)
    depth_weight: float = 0.1
    save_every: int = 100
    seed: int = 0


def train(config: CotrainConfig, reconstructor: Path, enhancer: Path, out: Path, resume: bool = False) -> dict:
    torch.manual_seed(config.seed)
    out = Path(out)
    world_config = WorldConfig(width=160, height=96, timesteps=3, voxel_m=0.4)
    worlds = [make_world(s, "train", world_config) for s in tqdm(range(config.worlds), desc="train worlds")]
    fixer = Enhancer.from_pretrained(enhancer).eval()
    for p in fixer.parameters():
        p.requires_grad_(False)
    model, optimiser, step, history = start_or_resume(
        out, resume, lambda: ReconNet.from_pretrained(reconstructor), ReconNet.from_pretrained,
        lambda m: torch.optim.Adam(m.parameters(), lr=config.lr))
    rng = np.random.default_rng(config.seed + step)
    start = time.perf_counter()
    bar = tqdm(total=config.steps, initial=step, desc="co-train", unit="step")
    while step < config.steps:
        model.train()
        world = worlds[rng.integers(len(worlds))]
        ctx, middle = context_views(world)
        interp = world.targets["interpolated"]
        pool = [(world.context.cameras[i], world.context.rgb[i], world.context.depth[i], world.context.alpha[i])
                for i in middle] + [(c, interp.rgb[i], interp.depth[i], interp.alpha[i])
                                    for i, c in enumerate(interp.cameras)]
        picks = [pool[i] for i in rng.choice(len(pool), config.targets_per_step, replace=False)]
        off_cams = [c for kind in OFF_TRAJECTORY_KINDS for c in world.targets[kind].cameras]  # poses only
        n_off = config.pseudo_per_step if config.pseudo_weight > 0 else 0  # weight 0: the control run
        off = [off_cams[i] for i in rng.choice(len(off_cams), n_off, replace=False)]
        gaussians = predict(model, world, ctx)
        rendered = render_targets(gaussians, [p[0] for p in picks] + off, world.background_rgb)
        n = len(picks)
        loss_rgb, loss_depth = supervised_losses({k: v[:n] for k, v in rendered.items()},
                                                 *(np.stack([p[j] for p in picks]) for j in (1, 2, 3)))
        loss_pseudo = torch.zeros(())
        if n_off:
            with torch.no_grad():
                pseudo = fixer(rendered["rgb"][n:].detach().permute(0, 3, 1, 2), rendered["depth"][n:].detach(),
                               rendered["alpha"][n:].detach()).clamp(0, 1).permute(0, 2, 3, 1)
            loss_pseudo = (rendered["rgb"][n:] - pseudo).abs().mean()
        loss = loss_rgb + config.depth_weight * loss_depth + config.pseudo_weight * loss_pseudo
        apply_gradients(model, optimiser, loss)
        step += 1
        bar.update(1)
        bar.set_postfix(l1=f"{loss_rgb.item():.4f}", pseudo=f"{loss_pseudo.item():.4f}")
        history.append({"step": step, "loss_rgb_l1": round(loss_rgb.item(), 5),
                        "loss_pseudo_l1": round(loss_pseudo.item(), 5), "loss_log_depth": round(loss_depth.item(), 4)})
        if step % config.save_every == 0 or step == config.steps:
            save_checkpoint(out, model, optimiser, step, history)
    bar.close()
    summary = {"steps": step, "wall_s_this_run": round(time.perf_counter() - start, 1),
               "initial_reconstructor": str(reconstructor), "enhancer": str(enhancer),
               "enhancer_hash": checkpoint_hash(enhancer), "config": asdict(config)}
    (out / "cotrain_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--reconstructor", type=Path, default=default_checkpoint("reconstructor-small"),
                        help="a single-view reconstructor of the small regime (no ray inputs or cost volume)")
    parser.add_argument("--enhancer", type=Path, default=default_checkpoint("enhancer-small"))
    add_out_options(parser, Path("out/reconstructor-cotrained"))
    parser.add_argument("--pseudo-weight", type=float, default=0.1,
                        help="weight of the enhancer targets; 0 = the control run (same steps, no enhancer)")
    args = parser.parse_args()
    check_out_options(parser, args)
    check_training_options(parser, args)
    saved = json.loads((Path(args.reconstructor) / "config.json").read_text())  # (a ReconNet's: checked above)
    needs = [name for name, key in (("ray inputs", "ray_inputs"), ("a cost volume", "cost_volume")) if saved.get(key)]
    if needs:  # its network wants each view's intrinsics and neighbours, which this 160x96 regime does not pass
        parser.error(f"--reconstructor {args.reconstructor}: a net with {' and '.join(needs)} (the run regime's, "
                     "such as checkpoints/reconstructor-run); co-training here takes a single-view net of the small "
                     "regime, such as checkpoints/reconstructor-small")
    config = CotrainConfig(steps=args.steps, pseudo_weight=args.pseudo_weight)
    try:
        print(json.dumps(train(config, args.reconstructor, args.enhancer, args.out, args.resume)))
    except NonFiniteLoss as err:
        raise SystemExit(f"{parser.prog}: error: {err}") from None


if __name__ == "__main__":
    main()
