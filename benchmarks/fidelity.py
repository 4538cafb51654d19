"""Fidelity benchmark: how well a reconstruction renders held-out worlds at new poses.

For each held-out world (seeds from 1,000,000; never trained on) the reconstructor sees
the front cameras at two context timesteps; its scene is rendered at every target kind
(interpolated; shifted 1, 2, 3 m; raised 1 m) and compared with the ground truth:
PSNR over all pixels, over surface pixels visible in some context view and over
disoccluded surface pixels (seen by no context view; visibility from ground-truth depth;
sky pixels belong to neither), SSIM, depth AbsRel. Baseline in the same
run: the context images warped into the target with the target's ground-truth depth, each
pixel from the nearest context view that sees it (`baseline_warp`; disoccluded pixels black). The builder's own scene is the ground
truth itself, so it is not listed as a baseline. LPIPS is not reported: its backbone
weights cannot be downloaded here.

    python benchmarks/fidelity.py [--seeds 1000010:1000014] [--checkpoint checkpoints/reconstructor-small]
                                  [--json OUT]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _machine import machine_name, write_result
from neural_sensor.enhance.warp import visibility_masks
from neural_sensor.metrics import depth_abs_rel, psnr, ssim
from neural_sensor.reconstruct.model import ReconNet, reconstruct
from neural_sensor.render import render
from neural_sensor.train.synthetic import TARGET_KINDS, WorldConfig, make_world

CONTEXT = [t * 6 + c for t in (0, 2) for c in range(3)]


def _summary(rows: list[dict]) -> dict:
    keys = rows[0].keys()
    return {k: round(float(np.nanmean([r[k] for r in rows])), 4) for k in keys} | {"n_images": len(rows)}


def evaluate(model: ReconNet, seeds: range, config: WorldConfig) -> dict:
    results = {kind: {"reconstruction": [], "baseline_warp": []} for kind in TARGET_KINDS}
    for seed in seeds:
        world = make_world(seed, "heldout", config)
        ctx_cams = [world.context.cameras[i] for i in CONTEXT]
        scene = reconstruct(model, world.context.rgb[CONTEXT], ctx_cams)
        contexts = [(world.context.cameras[i], world.context.rgb[i], world.context.depth[i]) for i in CONTEXT]
        for kind in TARGET_KINDS:
            views = world.targets[kind]
            out = render(scene, views.cameras, backend="cpu", outputs=("rgb", "depth", "alpha"),
                         background=world.background_rgb)
            for i, cam in enumerate(views.cameras):
                visible, disoccluded, warp = visibility_masks(cam, views.depth[i], views.alpha[i], contexts)
                gt = views.rgb[i]
                for name, image, depth in (("reconstruction", out.rgb[i], out.depth[i]), ("baseline_warp", warp, None)):
                    row = {"psnr": psnr(image, gt), "psnr_visible": psnr(image, gt, visible),
                           "psnr_disoccluded": psnr(image, gt, disoccluded), "ssim": ssim(image, gt),
                           "visible_fraction": float(visible.mean()), "disoccluded_fraction": float(disoccluded.mean())}
                    if depth is not None:
                        row["depth_abs_rel"] = depth_abs_rel(depth, views.depth[i], views.alpha[i] > 0.5)
                    results[kind][name].append(row)
    # per kind: the reconstruction's figures at the top level, each baseline under its own key
    return {kind: {**_summary(by_name["reconstruction"]), "baseline_warp": _summary(by_name["baseline_warp"])}
            for kind, by_name in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1000010:1000014", help="held-out seed range A:B (B exclusive)")
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/reconstructor-small"))
    parser.add_argument("--json", type=Path, default=None, help="output JSON (default results/fidelity-<machine>)")
    args = parser.parse_args()
    first, last = (int(x) for x in args.seeds.split(":"))
    model = ReconNet.from_pretrained(args.checkpoint)
    config = WorldConfig(width=160, height=96, timesteps=3, voxel_m=0.4)
    result = {"benchmark": "fidelity", "machine": machine_name(), "checkpoint": str(args.checkpoint),
              "seeds": [first, last], "resolution": [config.width, config.height],
              "lpips": "not computed: its pretrained backbone weights are not on this machine and cannot be downloaded",
              **evaluate(model, range(first, last), config)}
    interp, shift2 = result["interpolated"], result["shift_2m"]
    result["summary"] = (f"{result['machine']}: interpolated PSNR {interp['psnr']} dB; shift 2 m: visible "
                         f"{shift2['psnr_visible']} dB, disoccluded {shift2['psnr_disoccluded']} dB "
                         f"(seeds {first}:{last}, {config.width}x{config.height})")
    write_result(result, "fidelity", args.json)


if __name__ == "__main__":
    main()
