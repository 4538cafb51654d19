"""Fidelity benchmark: how well a reconstruction renders held-out worlds at new poses.

For each held-out world (seeds from 1,000,000; never trained on) the reconstructor sees
the front cameras at two context timesteps; its scene is rendered at every target kind
(interpolated; shifted 1, 2, 3 m; raised 1 m) and compared with the ground truth:
PSNR over all pixels, over surface pixels visible in some context view and over
disoccluded surface pixels (seen by no context view; visibility from ground-truth depth;
sky pixels belong to neither), SSIM, depth AbsRel (median depths, the surfaces, of the reconstruction
and the builder; results written before compared expected depths, and the visibility masks and the
baseline warp used the builder's expected depth too). Baseline in the same
run: the context images warped into the target with the target's ground-truth depth, each
pixel from the nearest context view that sees it (`baseline_warp`; disoccluded pixels black). The builder's own scene is the ground
truth itself, so it is not listed as a baseline. LPIPS is not reported: its backbone
weights cannot be downloaded here. With `--enhancer local|tcp://...` each kind also gets
"enhanced" (the render refined by the enhancer from the render alone, as the rig calls
it) and "enhanced_reference" (also given the nearest context image warped in through
the rendered depth), both through the real client and server; results then go to
results/fidelity-enhanced-<machine>.json.

    python benchmarks/fidelity.py [--seeds 1000010:1000014] [--checkpoint checkpoints/reconstructor-small]
                                  [--enhancer local|tcp://HOST:PORT] [--json OUT]
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from _machine import machine_name, run_main, write_result
from neural_sensor.checkpoints import default_checkpoint
from neural_sensor.enhance.client import EnhancerClient
from neural_sensor.enhance.local import local_server
from neural_sensor.enhance.warp import visibility_masks, warp_views
from neural_sensor.metrics import depth_abs_rel, psnr, ssim
from neural_sensor.reconstruct.model import ReconNet, reconstruct
from neural_sensor.render import render
from neural_sensor.train.synthetic import TARGET_KINDS, WorldConfig, make_world
from neural_sensor.train.train_enhancer import CONTEXT, context_with_depths



def _summary(rows: list[dict]) -> dict:
    keys = rows[0].keys()
    return {k: round(float(np.nanmean([r[k] for r in rows])), 4) for k in keys} | {"n_images": len(rows)}


def _enhance(client, rgb, depth, alpha, references=None) -> np.ndarray:
    """The enhancer's output for a batch of views, through the client (real transport)."""
    frames = [{"camera": f"view{i}", "rgb": rgb[i], "depth": depth[i], "alpha": alpha[i]} for i in range(len(rgb))]
    if references is not None:
        for frame, (ref, valid) in zip(frames, references):
            frame["reference"], frame["reference_valid"] = ref, valid
    result = client.enhance(frames)
    if not result.enhanced:
        raise RuntimeError(f"fidelity: the enhancer gave no answer ({result.reason})")
    return np.stack(result.rgb)


def _save_picture(path: Path, raw: np.ndarray, enhanced: np.ndarray, truth: np.ndarray) -> None:
    """Rows: raw render, enhanced, ground truth; columns: the views (each [V, H, W, 3] in [0, 1])."""
    from PIL import Image

    rows = [np.concatenate(list(images), axis=1) for images in (raw, enhanced, truth)]
    grid = (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255 + 0.5).astype(np.uint8)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)


def evaluate(model: ReconNet, seeds: range, config: WorldConfig, enhancer=None, picture: Path | None = None) -> dict:
    names = ["reconstruction", "baseline_warp"] + (["enhanced", "enhanced_reference"] if enhancer else [])
    results = {kind: {name: [] for name in names} for kind in TARGET_KINDS}
    for seed in seeds:
        world = make_world(seed, "heldout", config)
        ctx_cams = [world.context.cameras[i] for i in CONTEXT]
        scene = reconstruct(model, world.context.rgb[CONTEXT], ctx_cams)
        rendered_ctx, contexts = context_with_depths(world, scene)
        for kind in TARGET_KINDS:
            views = world.targets[kind]
            out = render(scene, views.cameras, backend="cpu", outputs=("rgb", "depth", "alpha", "median_depth"),
                         background=world.background_rgb)
            images = {"reconstruction": out.rgb}
            if enhancer is not None:
                images["enhanced"] = _enhance(enhancer, out.rgb, out.depth, out.alpha)
                # the reference input: the nearest context image warped through the RENDERED depth
                refs = [warp_views(cam, out.depth[i], out.alpha[i], rendered_ctx) for i, cam in enumerate(views.cameras)]
                images["enhanced_reference"] = _enhance(enhancer, out.rgb, out.depth, out.alpha, refs)
            if enhancer is not None and picture is not None and seed == seeds[0] and kind == "shift_2m":
                _save_picture(picture, out.rgb, images["enhanced"], views.rgb)
            for i, cam in enumerate(views.cameras):
                visible, disoccluded, warp = visibility_masks(cam, views.depth[i], views.alpha[i], contexts)
                gt = views.rgb[i]
                candidates = [(name, images[name][i], out.median_depth[i] if name == "reconstruction" else None)
                              for name in images] + [("baseline_warp", warp, None)]
                for name, image, depth in candidates:
                    row = {"psnr": psnr(image, gt), "psnr_visible": psnr(image, gt, visible),
                           "psnr_disoccluded": psnr(image, gt, disoccluded), "ssim": ssim(image, gt),
                           "visible_fraction": float(visible.mean()), "disoccluded_fraction": float(disoccluded.mean())}
                    if depth is not None:
                        row["depth_abs_rel"] = depth_abs_rel(depth, views.depth[i], views.alpha[i] > 0.5)
                    results[kind][name].append(row)
    # per kind: the reconstruction's figures at the top level, each baseline / enhanced variant under its own key
    return {kind: {**_summary(by_name.pop("reconstruction")), **{n: _summary(rows) for n, rows in by_name.items()}}
            for kind, by_name in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1000010:1000014", help="held-out seed range A:B (B exclusive)")
    parser.add_argument("--checkpoint", type=Path, default=default_checkpoint("reconstructor-small"))
    parser.add_argument("--json", type=Path, default=None, help="output JSON (default results/fidelity-<machine>)")
    parser.add_argument("--enhancer", default=None, metavar="local|tcp://HOST:PORT",
                        help="add 'enhanced' (render only, as the rig sends) and 'enhanced_reference' (+ the nearest "
                             "context view warped in) figures per target kind")
    parser.add_argument("--enhancer-checkpoint", type=Path, default=default_checkpoint("enhancer-small"))
    parser.add_argument("--picture", action="store_true",
                        help="with --enhancer: save results/enhancer-shift2m.png (raw / enhanced / truth)")
    args = parser.parse_args()
    try:
        first, last = (int(x) for x in args.seeds.split(":"))
    except ValueError:
        parser.error(f"--seeds must be a range A:B of integers, got {args.seeds!r}")
    if not 0 <= first < last:
        parser.error(f"--seeds A:B needs 0 <= A < B (B exclusive), got {args.seeds!r}")
    model = ReconNet.from_pretrained(args.checkpoint)
    config = WorldConfig(width=160, height=96, timesteps=3, voxel_m=0.4)
    result = {"benchmark": "fidelity", "machine": machine_name(), "checkpoint": str(args.checkpoint),
              "seeds": [first, last], "resolution": [config.width, config.height],
              "lpips": "not computed: its pretrained backbone weights are not on this machine and cannot be downloaded"}
    with ExitStack() as stack:
        client = None
        if args.enhancer is not None:
            endpoint = args.enhancer
            if endpoint == "local":
                endpoint = stack.enter_context(local_server(checkpoint=args.enhancer_checkpoint)).endpoint
            client = stack.enter_context(EnhancerClient(endpoint, deadline_ms=120_000))
            hello = client.wait_ready()
            result["enhancer"] = {k: hello[k] for k in ("model_name", "checkpoint_hash", "server_version")}
        picture = Path(__file__).parent / "results" / "enhancer-shift2m.png" if args.picture else None
        result |= evaluate(model, range(first, last), config, client, picture)
    interp, shift2 = result["interpolated"], result["shift_2m"]
    result["summary"] = (f"{result['machine']}: interpolated PSNR {interp['psnr']} dB; shift 2 m: visible "
                         f"{shift2['psnr_visible']} dB, disoccluded {shift2['psnr_disoccluded']} dB")
    if client is not None:
        e = shift2["enhanced"]
        result["summary"] += (f"; enhanced: visible {e['psnr_visible']} dB, disoccluded {e['psnr_disoccluded']} dB, "
                              f"SSIM {shift2['ssim']} -> {e['ssim']}")
    result["summary"] += f" (seeds {first}:{last}, {config.width}x{config.height})"
    write_result(result, "fidelity" if client is None else "fidelity-enhanced", args.json)


if __name__ == "__main__":
    run_main(main)
