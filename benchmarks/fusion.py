"""Fusion of a whole drive: the reconstruction's fusion variants measured in the run's regime.

For each held-out world (seeds from 1,000,100 up, `check_split`-checked, templates round-robin
as in runtime_fidelity.py):
1. the drive is recorded EXACTLY as `reconstructed_scene` records it (the builder's scene at
   voxel 0.3 m, all six `nuscenes_like_rig` cameras at 160x96 every 4 m along the recorded lane,
   the layout's sky behind), and the shipped reconstructor runs ONE forward pass over all views
   (`predict_views`);
2. each fusion variant turns those per-view Gaussians into a scene (`fuse_views`), timed;
3. the six-camera rig is rendered at 480x270 at `--poses` poses spread along the recorded path
   (10 m from its ends), on the path and shifted 1/2/3 m to its left, and so is the ground truth
   (the builder's scene, same cameras, same sky);
4. metrics per view: PSNR, SSIM, depth AbsRel on ground-truth surfaces that are not the sky dome
   (the builder's sky dome sits ~900 m away; the reconstruction has no sky, its background is the
   same sky colour), and the reconstruction's mean alpha on the ground truth's sky pixels (fog in the
   sky). Each world's views are averaged per shift (and per camera and shift), then the median over
   worlds is reported.
Optionally (`--refine STEPS`) a test-time refinement of the fused scene: opacities and colours
(optionally positions) optimised against the drive's own recorded images through the
differentiable torch renderer, timed, measured like the variants.

    python benchmarks/fusion.py [--worlds 3] [--poses 3] [--shifts 0,1,2,3] [--variants merge,carve]
        [--refine 0] [--cache DIR] [--json FILE]

A variant is `merge`, `carve`, or `carve:key=value,...` with FusionConfig fields (e.g.
`carve:carve_tol=0.3,carve_views=2`). Results: results/fusion-<machine>.json.
"""

from __future__ import annotations

import argparse
import atexit
import math
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from _machine import count, machine_name, run_main, write_result
from runtime_fidelity import DEFAULT_FIRST_SEED, END_MARGIN_M, heldout_worlds, recorded_path, rig_cameras, template_of
from neural_sensor.camera import Camera
from neural_sensor.labels import CityObjectLabel
from neural_sensor.metrics import depth_abs_rel, psnr, ssim
from neural_sensor.reconstruct.drive import DEFAULT_CHECKPOINT
from neural_sensor.reconstruct.fuse import FusionConfig, fuse_views
from neural_sensor.reconstruct.model import LEGACY_MERGE_CELL_M, ReconNet, predict_views
from neural_sensor.render import render
from neural_sensor.rig import nuscenes_like_rig
from neural_sensor.scene.build import build_scene
from neural_sensor.scene.path import Path as Polyline
from neural_sensor.scene.to_gaussians import sky_rgb
from neural_sensor.world import pose_from_xyz_yaw

VOXEL_M = 0.3  # the runner's builder voxel (reconstructed_scene's default)
RECORD_SIZE = (160, 96)  # the network's size: reconstructed_scene recorded at it until 2026-12-01 (late; now 320x192)
RECORD_STEP_M = 4.0  # reconstructed_scene's default step


def split_variants(text: str) -> list[str]:
    """--variants apart at spaces, or at commas before a variant's name ("merge,carve", the default, had been refused;
    "carve:carve_tol=0.3,carve_views=2" keeps its own commas)."""
    return [v for v in re.split(r"\s+|,(?=\s*(?:merge|carve)\b)", text.strip()) if v]


def parse_variant(text: str) -> tuple[str, str, FusionConfig]:
    """'merge' | 'carve' | 'carve:key=value,...' -> (label, fusion, FusionConfig)."""
    name, _, options = text.partition(":")
    if name not in ("merge", "carve"):
        raise ValueError(f"--variants: unknown fusion {name!r} (merge | carve[:key=value,...])")
    config = FusionConfig()
    if name == "merge":  # reconstruct(fusion="merge"): the merge alone, as before carving existed
        config = replace(config, carve_views=0, min_consistent=0, budget=0, merge_cell_m=LEGACY_MERGE_CELL_M)
    known = {f.name: f.type for f in fields(FusionConfig)}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        if key not in known:
            raise ValueError(f"--variants: {key!r} is not a FusionConfig field ({', '.join(known)})")
        try:
            config = replace(config, **{key: int(value) if known[key] == "int" else float(value)})
        except ValueError:
            raise ValueError(f"--variants: {key}={value!r} is not a number") from None
    return text, name, config


def record_drive(layout, path: Polyline, world) -> tuple[np.ndarray, list[Camera]]:
    """[V, 96, 160, 3] images and V cameras, as reconstructed_scene records them."""
    rig = nuscenes_like_rig(*RECORD_SIZE)
    cameras: list[Camera] = []
    images = []
    for s in np.arange(0.0, path.length_m + 1e-6, RECORD_STEP_M):
        xy, heading = path.at(float(s))
        ego = pose_from_xyz_yaw(xy[0], xy[1], 0.0, heading)
        step = [Camera.from_fov(spec.width, spec.height, spec.fov_deg, ego @ spec.pose_camera_to_ego) for spec in rig]
        images.append(render(world, step, backend="cpu", outputs=("rgb",), background=sky_rgb(layout.style)).rgb)
        cameras += step
    return np.concatenate(images), cameras


def refine(scene, images: np.ndarray, cameras: list[Camera], background, steps: int, lr: float = 0.05,
           views_per_step: int = 2, seed: int = 0):
    """Test-time refinement: the scene's opacities and colours (logit / SH DC) fitted to the drive's own
    images ([V, H, W, 3]) with the differentiable torch renderer; L1, Adam, `views_per_step` random views
    per step, each step rendering only the Gaussians whose centres project into the picked views."""
    from neural_sensor.render._torch_ref import render_torch

    rng = np.random.default_rng(seed)
    logit = torch.logit(torch.tensor(scene.opacities).clamp(1e-4, 1 - 1e-4)).requires_grad_(True)
    sh = torch.tensor(scene.sh).clone().requires_grad_(True)
    means, quats, scales = (torch.tensor(a) for a in (scene.means, scene.quats, scene.scales))
    optimiser = torch.optim.Adam([{"params": [logit], "lr": lr}, {"params": [sh], "lr": lr * 0.2}])
    targets = torch.tensor(images)
    viewmats = torch.tensor(np.stack([c.pose_world_to_camera for c in cameras]), dtype=torch.float32)
    Ks = torch.tensor(np.stack([c.K for c in cameras]), dtype=torch.float32)
    bg = torch.tensor(np.asarray(background, np.float32))
    for _ in range(steps):
        pick = rng.choice(len(cameras), views_per_step, replace=False)
        visible = np.zeros(len(scene), bool)
        for i in pick:
            uv, z = cameras[i].project(scene.means)
            margin = 0.25 * cameras[i].width
            visible |= (z > 0.05) & (uv[:, 0] > -margin) & (uv[:, 0] < cameras[i].width + margin) \
                & (uv[:, 1] > -margin) & (uv[:, 1] < cameras[i].height + margin)
        idx = torch.as_tensor(np.flatnonzero(visible))
        out = render_torch(means[idx], quats[idx], scales[idx], torch.sigmoid(logit[idx]), sh[idx],
                           viewmats[pick], Ks[pick], cameras[0].width, cameras[0].height, background=bg)["rgb"]
        loss = (out - targets[torch.as_tensor(pick)]).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return scene.replace(opacities=torch.sigmoid(logit).detach().numpy().astype(np.float32),
                         sh=sh.detach().numpy().astype(np.float32))


def evaluate(scene, truth_renders, poses_cameras, background) -> list[dict]:
    """Rows of per-view metrics of `scene` against the cached ground-truth renders."""
    rows = []
    for (pose_index, shift), cams in poses_cameras.items():
        gt = truth_renders[(pose_index, shift)]
        out = render(scene, cams, backend="cpu", outputs=("rgb", "median_depth", "alpha"), background=background)
        for i, cam in enumerate(cams):
            sky = gt.semantic[i] == CityObjectLabel.SKY
            surface = (gt.alpha[i] > 0.5) & ~sky
            rows.append({"shift_m": shift, "camera": i, "pose": pose_index,
                         "psnr": psnr(out.rgb[i], gt.rgb[i]), "ssim": ssim(out.rgb[i], gt.rgb[i]),
                         "psnr_surface": psnr(out.rgb[i], gt.rgb[i], surface) if surface.any() else float("nan"),
                         # median depths (the surfaces): the builder's expected depth looks through textured gaps
                         "depth_abs_rel": depth_abs_rel(out.median_depth[i], gt.median_depth[i], surface)
                         if surface.any() else float("nan"),
                         "alpha_on_sky": float(out.alpha[i][sky].mean()) if sky.any() else float("nan")})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=count(1), default=3, help="held-out worlds (templates round-robin)")
    parser.add_argument("--seeds", type=int, default=DEFAULT_FIRST_SEED, help="first held-out seed to scan from")
    parser.add_argument("--poses", type=count(1), default=3, help="rig poses along the recorded path")
    parser.add_argument("--shifts", default="0,1,2,3", help="lateral shifts to the left of the path, metres")
    parser.add_argument("--width", type=count(1), default=480)
    parser.add_argument("--height", type=count(1), default=270)
    parser.add_argument("--variants", default="merge,carve", help="fusion variants, separated by commas or spaces; "
                        "see the module docstring")
    parser.add_argument("--refine", type=count(0), default=0,
                        help="test-time refinement steps on the last variant (0: off)")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--cache", type=Path, default=None, help="builder scene cache (default: a temporary one)")
    parser.add_argument("--demo-street", action="store_true",
                        help="also reconstruct the demo's 200 m street (cut_in, lane 0) with each variant: Gaussians, time")
    parser.add_argument("--picture", action="store_true", help="save results/fusion-shift2m.png: each variant's "
                        "render and the ground truth (first world, first pose, 2 m shift), cameras side by side")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    shifts = [float(s) for s in args.shifts.split(",") if s.strip()]
    try:
        variants = [parse_variant(v) for v in split_variants(args.variants)]
    except ValueError as err:  # (exit 2 as every other bad option; it had been 1)
        parser.error(str(err))
    if not variants:
        parser.error(f"--variants: no variant named in {args.variants!r}")
    if not shifts:
        parser.error(f"--shifts: no shift named in {args.shifts!r}")
    cache = args.cache
    if cache is None:  # a temporary cache goes when the run ends, however it ends (it had stayed in /tmp)
        cache = Path(tempfile.mkdtemp(prefix="fusion-bench-"))
        atexit.register(shutil.rmtree, cache, True)
    model = ReconNet.from_pretrained(args.checkpoint)
    worlds = heldout_worlds(args.seeds, args.worlds)
    command = "python benchmarks/fusion.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    rows: list[dict] = []
    facts: list[dict] = []
    pictures: list[np.ndarray] = []
    t_start = time.perf_counter()
    for n, (seed, layout) in enumerate(worlds):
        world, _ = build_scene(layout, voxel_m=VOXEL_M, cache_dir=cache)
        path = Polyline(recorded_path(layout))
        background = sky_rgb(layout.style)
        t0 = time.perf_counter()
        images, cameras = record_drive(layout, path, world)
        record_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        per_view, depths = predict_views(model, images, cameras)
        network_s = time.perf_counter() - t0
        specs = nuscenes_like_rig(args.width, args.height)
        lo, hi = END_MARGIN_M, path.length_m - END_MARGIN_M
        stations = [lo + (hi - lo) * (k + 0.5) / args.poses for k in range(args.poses)]
        poses_cameras = {(k, shift): rig_cameras(specs, path, s, shift) for k, s in enumerate(stations) for shift in shifts}
        truth = {key: render(world, cams, backend="cpu", outputs=("rgb", "median_depth", "alpha", "semantic"),
                             background=background) for key, cams in poses_cameras.items()}
        world_facts = {"seed": seed, "template": template_of(layout), "layout": layout.name,
                       "recorded_path_m": round(path.length_m, 1), "views": len(cameras), "record_s": round(record_s, 2),
                       "network_s": round(network_s, 2), "variants": {}}
        for label, fusion, config in variants:
            t0 = time.perf_counter()
            scene, stats = fuse_views(per_view, depths, cameras, config, return_stats=True)
            fuse_s = time.perf_counter() - t0
            entries = [(label, scene, {"fusion_s": round(fuse_s, 2), "gaussians": len(scene), "stats": stats})]
            if args.refine and label == variants[-1][0]:
                t0 = time.perf_counter()
                refined = refine(scene, images, cameras, background, args.refine)
                entries.append((label + f"+refine{args.refine}", refined,
                                {"refine_s": round(time.perf_counter() - t0, 1), "gaussians": len(refined)}))
            for name, s, info in entries:
                world_facts["variants"][name] = info
                if args.picture and n == 0 and (0, 2.0) in poses_cameras:
                    pictures.append(render(s, poses_cameras[(0, 2.0)], backend="cpu", outputs=("rgb",),
                                           background=background).rgb)
                for row in evaluate(s, truth, poses_cameras, background):
                    rows.append({"seed": seed, "variant": name, **row})
        facts.append(world_facts)
        if args.picture and n == 0 and pictures:
            save_picture(Path(__file__).parent / "results" / "fusion-shift2m.png", pictures + [truth[(0, 2.0)].rgb])
        summary = "; ".join(f"{name} {np.nanmean([r['psnr'] for r in rows if r['seed'] == seed and r['variant'] == name]):.2f} dB "
                            f"({info['gaussians']} G)" for name, info in world_facts["variants"].items())
        print(f"[{n + 1}/{len(worlds)}] seed {seed} {world_facts['template']} ({len(cameras)} views): {summary}",
              file=sys.stderr, flush=True)
    result = {"benchmark": "fusion", "machine": machine_name(), "command": command.strip(),
              "regime": {"recorded": f"nuscenes_like_rig at {RECORD_SIZE[0]}x{RECORD_SIZE[1]} every {RECORD_STEP_M} m "
                                     "along the recorded lane (as reconstructed_scene)",
                         "rendered": f"nuscenes_like_rig at {args.width}x{args.height}, {args.poses} poses, shifts {shifts}",
                         "ground_truth": f"build_scene(layout, voxel {VOXEL_M} m), same cameras and sky",
                         "depth_abs_rel": "on ground-truth surfaces other than the sky dome",
                         "checkpoint": str(args.checkpoint)},
              "seeds": [s for s, _ in worlds], "worlds": facts, "wall_s": round(time.perf_counter() - t_start, 1)}
    if args.demo_street:
        result["demo_street"] = demo_street(model, variants, cache)
        print(f"demo street: {result['demo_street']}", file=sys.stderr, flush=True)
    result["per_shift"] = aggregate(rows, ("variant", "shift_m"))
    result["per_camera_shift"] = aggregate(rows, ("variant", "camera", "shift_m"))

    def seconds(info: dict) -> float:
        return info.get("fusion_s", info.get("refine_s", 0.0))

    result["counts"] = {name: {"gaussians_median": statistics.median(f["variants"][name]["gaussians"] for f in facts),
                               "fusion_s_median": statistics.median(seconds(f["variants"][name]) for f in facts)}
                        for name in facts[0]["variants"]}
    parts = []
    for name in facts[0]["variants"]:
        cells = [f"{s:g}m {result['per_shift'][f'{name}/{s:g}m']['psnr']:.2f}" for s in shifts]
        parts.append(f"{name}: " + ", ".join(cells) + f" dB, {result['counts'][name]['gaussians_median']} G")
    result["summary"] = f"{result['machine']}: median PSNR over {len(worlds)} held-out worlds: " + " | ".join(parts)
    write_result(result, "fusion", args.json)


def save_picture(path: Path, rows_of_images: list[np.ndarray]) -> None:
    """Rows: [C, H, W, 3] image sets, cameras side by side, saved at half size."""
    from PIL import Image

    grid = np.concatenate([np.concatenate(list(images), axis=1) for images in rows_of_images], axis=0)
    image = Image.fromarray((np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8))
    image.resize((image.width // 2, image.height // 2), Image.BILINEAR).save(path)


def demo_street(model: ReconNet, variants, cache: Path) -> dict:
    """The demo's street (scenarios/cut_in.py, 200 m) recorded along its lane 0 as `reconstructed_scene` does:
    views, recording / network seconds, and per variant the fusion seconds and the Gaussian count."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from scenarios.cut_in import make_scenario

    scenario = make_scenario(0)
    layout = scenario.layout
    world, _ = build_scene(layout, voxel_m=VOXEL_M, cache_dir=cache)
    path = Polyline(scenario.recorded_path_xy_m)
    t0 = time.perf_counter()
    images, cameras = record_drive(layout, path, world)
    out = {"layout": layout.name, "views": len(cameras), "record_s": round(time.perf_counter() - t0, 2)}
    t0 = time.perf_counter()
    per_view, depths = predict_views(model, images, cameras)
    out["network_s"] = round(time.perf_counter() - t0, 2)
    out["variants"] = {}
    for label, _, config in variants:
        t0 = time.perf_counter()
        scene, stats = fuse_views(per_view, depths, cameras, config, return_stats=True)
        out["variants"][label] = {"fusion_s": round(time.perf_counter() - t0, 2), "gaussians": len(scene), "stats": stats}
    return out


def aggregate(rows: list[dict], by: tuple[str, ...]) -> dict:
    """{group: {metric: median over worlds of the world's mean}} (nan-aware)."""
    metrics = ("psnr", "ssim", "psnr_surface", "depth_abs_rel", "alpha_on_sky")
    grouped: dict[str, dict[int, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in rows:
        key = "/".join(f"{row[k]:g}m" if k == "shift_m" else str(row[k]) for k in by)
        for m in metrics:
            grouped[key][row["seed"]][m].append(row[m])
    out = {}
    for key, worlds in grouped.items():
        table = {}
        for m in metrics:
            means = [float(np.nanmean(w[m])) for w in worlds.values() if not all(math.isnan(v) for v in w[m])]
            if means:
                table[m] = round(statistics.median(means), 4)
        out[key] = table
    return out


if __name__ == "__main__":
    run_main(main)
