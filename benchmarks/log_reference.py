"""How much the drive log's own images could add to the run's render: a measurement for the enhancer's next input.

In the run's regime (held-out worlds as `runtime_fidelity.py` picks them, the recorded drive's log every 4 m at
`--log-size`, by default the run's 320x192 (`reconstruct.drive.RECORD_SIZE`), its reconstruction as `--scene
reconstruction` builds it, the six-camera rig at 480x270 on the recorded path and shifted 1-3 m), each rig
camera's nearest log images of the same camera (`--views`, by camera centre) are warped into it through a depth
(`neural_sensor.enhance.warp.warp_views`, `--sample` nearest or bilinear), blended by distance as the rig does
(`--combine distance`: `neural_sensor.enhance.log_warp`) or each pixel from the nearest view that sees it
(`--combine nearest-first`); the camera's own sensor's views only (the rig's fallback to the other cameras' views
where those see nothing, `log_warp.fallback_view_weights`, is not applied here). The depth (`--depth`): the reconstruction's rendered median depth at the rig camera
and at the log views (the run's), the ground truth's at both (`truth`: an oracle of perfect geometry; with
`--depth-noise SIGMA` every depth map multiplied by a smooth log-normal field, to see what depth error the log
tolerates), the ground truth's at the rig camera only (`truth-target`), or the reconstruction's with the rig
camera's refined by photo-consistency between the log views (`sweep`, `swept_depth`: a probe), or the log views'
depths splatted forward into the rig camera (`forward`, `forward_depth`: a probe). `--gate TAU`
counts as unseen the pixels whose log views disagree by more than TAU (`inconsistent_views`: a probe of a validity
signal). Against the builder's ground truth at the same pose, per shift:

- raw: the reconstruction's render (what the enhancer gets today);
- filled: the warped log colour where a log view sees the pixel's surface, the render elsewhere;
- blend: the mean of the two there, the render elsewhere (a fixed, untrained blend);
- coverage: the share of pixels some log view sees;
- depth_abs_rel: the AbsRel of the depth the log is warped through (surface pixels, sky domes left out), and
  depth_within_warp_tol the share of those pixels within the warp's own depth test (5 % + 0.2 m);
- warp_ms: the numpy warp's time per camera (not the run's budget: the rig's warp is compiled).

The enhancer takes this warp as its reference input; this measures what a fixed rule gets from it, with no
training, and how much of the log's information the geometry lets through.

    python benchmarks/log_reference.py [--worlds 6] [--views 2] [--sample bilinear] [--combine distance]
        [--log-size 320x192] [--depth reconstruction|truth|truth-target|sweep|forward] [--depth-noise SIGMA]
        [--gate TAU]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import runtime_fidelity as rf
from _machine import count, machine_name, run_main, write_result
from neural_sensor.enhance.log_warp import log_view_weights
from neural_sensor.enhance.warp import warp_views
from neural_sensor.metrics import depth_abs_rel, psnr
from neural_sensor.reconstruct.drive import RECORD_SIZE, reconstructed_scene_from_log
from neural_sensor.reconstruct.log import read_drive_log, record_drive
from neural_sensor.reconstruct.reference import REFERENCE_LOD_PX, LogReference
from neural_sensor.render import RECONSTRUCTION_LOD_PX, render
from neural_sensor.rig import nuscenes_like_rig
from neural_sensor.scene.build import build_scene
from neural_sensor.scene.path import Path as Polyline
from neural_sensor.scene.to_gaussians import sky_rgb

SHIFTS_M = (0.0, 1.0, 2.0, 3.0)
DEPTHS = {"reconstruction": "the reconstruction's rendered median depth (rig and log views)",
          "truth": "the builder's median depth (rig and log views): an oracle",
          "truth-target": "the builder's median depth at the rig cameras, the reconstruction's at the log views",
          "sweep": "the reconstruction's, the rig cameras' refined by photo-consistency of the log views "
                   "(swept_depth, a probe)",
          "forward": "the reconstruction's at the log views, splatted forward into the rig camera (forward_depth, "
                     "a probe); the render's where no view lands"}
FORWARD_FAR_M = 500.0  # --depth forward: log-view depths beyond this (the sky dome) are not splatted


def forward_depth(camera, depth_m: np.ndarray, views: list, footprint_px: int = 3) -> np.ndarray:
    """A probe of the rig camera's geometry taken from the log views' own depths instead of the render at the new
    pose: every log view's pixel (camera, rgb, depth [h, w]) unprojected and projected into `camera`, the nearest
    kept per pixel (a z-buffer), then a footprint_px x footprint_px minimum closes the holes a lower-resolution
    view leaves between its splats; depth_m [H, W] (the render's) where no view lands. Numpy: a measurement."""
    from scipy.ndimage import minimum_filter

    from neural_sensor.enhance.warp import points_world

    h, w = depth_m.shape
    zbuf = np.full(h * w, np.inf)
    for cam, _, view_depth in views:
        keep = (np.isfinite(view_depth) & (view_depth > 0) & (view_depth < FORWARD_FAR_M)).reshape(-1)
        points = points_world(cam, view_depth).reshape(-1, 3)[keep]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv, z = camera.project(points)
        uv = np.where(np.isfinite(uv), uv, -1.0)
        u, t = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
        inside = (z > 0.05) & (u >= 0) & (u < w) & (t >= 0) & (t < h)
        np.minimum.at(zbuf, t[inside] * w + u[inside], z[inside])
    zbuf = minimum_filter(zbuf.reshape(h, w), size=footprint_px, mode="nearest")
    return np.where(np.isfinite(zbuf), zbuf, depth_m).astype(np.float32)


def smooth_log_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator, cell_px: int = 16) -> np.ndarray:
    """[H, W] float32 factors exp(sigma n), n a smooth unit-variance Gaussian field (independent values every
    `cell_px` pixels, bilinearly interpolated and renormalised): a depth multiplied by it has AbsRel ~0.8 sigma."""
    from scipy.ndimage import zoom

    h, w = shape
    coarse = rng.standard_normal((h // cell_px + 2, w // cell_px + 2))
    field = zoom(coarse, (h / (coarse.shape[0] - 1), w / (coarse.shape[1] - 1)), order=1)[:h, :w]
    field = (field - field.mean()) / max(float(field.std()), 1e-6)
    return np.exp(sigma * field).astype(np.float32)


SWEEP_DELTAS = np.linspace(-0.15, 0.15, 13)  # --depth sweep: relative depth candidates around the rendered depth
SWEEP_WINDOW_PX = 7  # the photo-consistency cost's box window
SWEEP_PRIOR = 0.1  # cost added per unit of |relative change|: ties and flat texture keep the rendered depth


def swept_depth(camera, depth_m: np.ndarray, alpha: np.ndarray, views: list) -> np.ndarray:
    """A probe of per-tick geometry: the rendered depth [H, W] refined by photo-consistency between the log views
    (camera, float rgb [h, w, 3], depth) warped into `camera`: each pixel takes the candidate depth_m x (1 + d), d
    in SWEEP_DELTAS, whose bilinear samples in the views agree best (mean |difference| over a SWEEP_WINDOW_PX box,
    where at least half the box lands in every view, + SWEEP_PRIOR |d|). No occlusion test in the sweep; pixels
    without alpha > 0.5 or with fewer than two views keep their depth. Numpy, slow: a measurement, not the run's."""
    from scipy.ndimage import map_coordinates, uniform_filter

    from neural_sensor.enhance.warp import points_world

    if len(views) < 2:
        return depth_m
    h, w = depth_m.shape
    costs = []
    for d in SWEEP_DELTAS:
        points = points_world(camera, depth_m * (1.0 + d)).reshape(-1, 3)
        samples, inside = [], np.ones(h * w, bool)
        for cam, rgb, _ in views:
            with np.errstate(divide="ignore", invalid="ignore"):
                uv, z = cam.project(points)
            uv = np.where(np.isfinite(uv), uv, -1e6)
            inside &= (z > 0.05) & (uv[:, 0] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height)
            coords = [uv[:, 1] - 0.5, uv[:, 0] - 0.5]
            samples.append(np.stack([map_coordinates(rgb[..., c], coords, order=1, mode="nearest")
                                     for c in range(3)], axis=-1))
        diff = np.abs(samples[0] - samples[1]).mean(-1) if len(samples) == 2 else np.mean(
            [np.abs(a - b).mean(-1) for i, a in enumerate(samples) for b in samples[i + 1:]], axis=0)
        both = inside.reshape(h, w).astype(np.float32)
        support = uniform_filter(both, SWEEP_WINDOW_PX)
        cost = uniform_filter(diff.reshape(h, w) * both, SWEEP_WINDOW_PX) / np.maximum(support, 1e-3)
        costs.append(np.where(support >= 0.5, cost + SWEEP_PRIOR * abs(d), np.inf))
    costs = np.stack(costs)
    best = np.argmin(costs, axis=0)
    keep = ~np.isfinite(costs.min(0)) | ~(alpha > 0.5)
    return np.where(keep, depth_m, depth_m * (1.0 + SWEEP_DELTAS[best])).astype(np.float32)


def inconsistent_views(camera, depth_m: np.ndarray, alpha: np.ndarray, views: list, sample: str,
                       gate: float) -> np.ndarray:
    """[H, W] bool: pixels two or more of the views (camera, rgb, depth) see through depth_m whose warped colours
    disagree by more than `gate` (the largest pairwise mean |difference| over the channels, in [0, 1], averaged over
    a 3 x 3 box): the geometry placed the point wrong in at least one of them (a probe of a validity signal the warp
    could give the enhancer)."""
    from scipy.ndimage import uniform_filter

    warped = [warp_views(camera, depth_m, alpha, [view], sample=sample) for view in views]
    worst = np.zeros(depth_m.shape, np.float32)
    both_any = np.zeros(depth_m.shape, bool)
    for a in range(len(warped)):
        for b in range(a + 1, len(warped)):
            both = warped[a][1] & warped[b][1]
            diff = uniform_filter(np.abs(warped[a][0] - warped[b][0]).mean(-1) * both, 3)
            worst = np.maximum(worst, np.where(both, diff, 0.0))
            both_any |= both
    return both_any & (worst > gate)


def evaluate_world(seed: int, layout, work: Path, views: int, sample: str, combine: str,
                   log_size: tuple[int, int] = RECORD_SIZE, depth: str = "reconstruction",
                   depth_noise: float = 0.0, gate: float = 0.0) -> list[dict]:
    """Per camera and tick: {"seed", "shift_m", "camera", "raw", "filled", "blend", "coverage", "warp_ms",
    "depth_abs_rel", "depth_within_warp_tol"}. depth: what the
    log is warped through, "reconstruction" (the run's: the rendered median depth at the rig camera and at every
    log view), "truth" (the builder's at both: an oracle of perfect geometry) or "truth-target" (the builder's at
    the rig camera, the reconstruction's at the log views, whose depth only tests occlusion) or "sweep" (the
    reconstruction's, the rig camera's refined by `swept_depth`). depth_noise (with
    "truth"): every depth map, the rig cameras' and the log views', multiplied by `smooth_log_noise` of this sigma,
    to see how the oracle degrades with the depth's error (its AbsRel is recorded as "depth_abs_rel"). gate > 0: a
    pixel whose views disagree by more than it (`inconsistent_views`) counts as unseen."""
    assert depth in DEPTHS, depth
    assert depth_noise == 0.0 or depth == "truth", (depth, depth_noise)
    noise_rng = np.random.default_rng(seed)
    path_xy = rf.recorded_path(layout)
    path = Polyline(path_xy)
    folder = work / f"log-{seed}-{log_size[0]}x{log_size[1]}"
    if not (folder / "transforms.json").exists():
        record_drive(layout, path_xy, folder, width=log_size[0], height=log_size[1], voxel_m=rf.VOXEL_M,
                     cache_dir=work)
    scene, _ = reconstructed_scene_from_log(folder, cache_dir=work)
    truth, _ = build_scene(layout, voxel_m=rf.VOXEL_M, cache_dir=work)
    background = sky_rgb(layout.style)
    images, log_cams, log_meta = read_drive_log(folder)
    # the log's views and their depths as the run keeps them (the warp below is the float twin, bilinear or nearest)
    geometry = truth if depth == "truth" else scene
    reference = LogReference.from_views(images, log_cams, [f["camera"] for f in log_meta["frames"]], geometry,
                                        background, lod_px=0.0 if depth == "truth" else REFERENCE_LOD_PX)
    view_depth = [d * smooth_log_noise(d.shape, depth_noise, noise_rng) if depth_noise else d
                  for d in reference.depth_m]
    specs = nuscenes_like_rig(480, 270)
    rows = []
    for start in rf.clip_starts(path.length_m, 1, 3, 0.5):
        for shift in SHIFTS_M:
            for tick in range(3):
                cams = rf.rig_cameras(specs, path, start + tick * 0.5, shift)
                raw = render(scene, cams, backend="cpu", outputs=("rgb", "alpha", "median_depth"),
                             background=background, lod_px=RECONSTRUCTION_LOD_PX)
                gt = render(truth, cams, backend="cpu", outputs=("rgb", "alpha", "median_depth"), background=background)
                target = gt if depth in ("truth", "truth-target") else raw  # the depth the log is warped through
                for i, (spec, cam) in enumerate(zip(specs, cams)):
                    near, weight = log_view_weights(reference, spec.sensor_id, cam, views)
                    near_views = [(log_cams[j], images[j], view_depth[j]) for j in near]
                    target_depth = target.median_depth[i]
                    if depth_noise:
                        target_depth = target_depth * smooth_log_noise(target_depth.shape, depth_noise, noise_rng)
                    if depth == "sweep":
                        target_depth = swept_depth(cam, target_depth, target.alpha[i], near_views)
                    if depth == "forward":
                        target_depth = forward_depth(cam, target_depth, near_views)
                    t0 = time.perf_counter()
                    ref, seen = warp_views(cam, target_depth, target.alpha[i], near_views,
                                           sample=sample, weights=weight if combine == "distance" else None)
                    warp_ms = (time.perf_counter() - t0) * 1e3
                    if gate > 0 and len(near) >= 2:
                        seen = seen & ~inconsistent_views(cam, target_depth, target.alpha[i], near_views, sample,
                                                          gate)
                    filled = np.where(seen[..., None], ref, raw.rgb[i])
                    blend = np.where(seen[..., None], 0.5 * (ref + raw.rgb[i]), raw.rgb[i])
                    rows.append({"seed": seed, "shift_m": shift, "camera": spec.sensor_id,
                                 "raw": psnr(raw.rgb[i], gt.rgb[i]), "filled": psnr(filled, gt.rgb[i]),
                                 "blend": psnr(blend, gt.rgb[i]), "coverage": float(seen.mean()), "warp_ms": warp_ms,
                                 **_depth_errors(target_depth, gt.median_depth[i],
                                                 (gt.alpha[i] > 0.5) & (target.alpha[i] > 0.5))})
    return rows


def _depth_errors(depth_m: np.ndarray, truth_m: np.ndarray, mask: np.ndarray) -> dict:
    """Over `mask` where both depths are positive and below 500 m (a sky dome, in the truth or in the reconstruction
    where it lacks a far surface, is left out as `runtime_fidelity` leaves it): "depth_abs_rel", the mean |depth -
    truth| / truth, and "depth_within_warp_tol", the share within the warp's own depth test (5 % + 0.2 m)."""
    keep = (mask & np.isfinite(truth_m) & (truth_m > 0) & (truth_m < 500.0) & (depth_m > 0)
            & (depth_m < 500.0))
    within = np.abs(depth_m[keep] - truth_m[keep]) < 0.05 * truth_m[keep] + 0.2
    return {"depth_abs_rel": depth_abs_rel(depth_m, truth_m, keep),
            "depth_within_warp_tol": float(within.mean()) if keep.any() else float("nan")}


def summarise(rows: list[dict]) -> dict:
    """Per shift: the mean over cameras and ticks of each world, then the median and min over worlds; worst_frame:
    the lowest single camera frame."""
    out = {}
    for shift in SHIFTS_M:
        per_world = {}
        for r in rows:
            if r["shift_m"] == shift:
                per_world.setdefault(r["seed"], []).append(r)
        entry = {}
        for key in ("raw", "filled", "blend", "coverage", "warp_ms", "depth_abs_rel", "depth_within_warp_tol"):
            means = [float(np.mean([r[key] for r in rs])) for rs in per_world.values()]
            entry[key] = {"median": round(float(np.median(means)), 3), "min": round(min(means), 3),
                          "per_world": [round(m, 3) for m in means]}
        entry["worst_frame"] = {key: round(min(r[key] for rs in per_world.values() for r in rs), 3)
                                 for key in ("raw", "filled", "blend")}
        out[f"{shift:g}m"] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=count(1), default=6, help="held-out worlds (templates round-robin)")
    parser.add_argument("--views", type=count(1), default=2, help="nearest log views of the same camera to warp")
    parser.add_argument("--sample", choices=("nearest", "bilinear"), default="bilinear")
    parser.add_argument("--combine", choices=("distance", "nearest-first"), default="distance",
                        help="blend the views by distance (the rig's rule) or take the nearest that sees a pixel")
    parser.add_argument("--log-size", default=f"{RECORD_SIZE[0]}x{RECORD_SIZE[1]}", metavar="WxH",
                        help="the drive log's image size (default: the run's, reconstruct.drive.RECORD_SIZE)")
    parser.add_argument("--depth", choices=tuple(DEPTHS), default="reconstruction",
                        help="warp through the reconstruction's rendered depth (the run's) or the ground truth's "
                             "(an oracle of perfect geometry; truth-target: at the rig cameras only), or the "
                             "reconstruction's refined per tick by photo-consistency (sweep, a probe)")
    parser.add_argument("--depth-noise", type=float, default=0.0, metavar="SIGMA",
                        help="with --depth truth: multiply every depth map by a smooth log-normal field of this sigma")
    parser.add_argument("--gate", type=float, default=0.0, metavar="TAU",
                        help="count as unseen the pixels whose log views disagree by more than TAU (0-1; 0: off)")
    parser.add_argument("--work", type=Path, default=None, help="folder for logs and caches (default: temporary)")
    parser.add_argument("--json", type=Path, default=None, help="output (default results/log-reference-<machine>)")
    args = parser.parse_args()
    if not args.depth_noise >= 0.0:
        parser.error(f"--depth-noise {args.depth_noise}: expected a sigma >= 0")
    if not 0.0 <= args.gate <= 1.0:
        parser.error(f"--gate {args.gate}: expected a colour difference in [0, 1] (0: off)")
    if args.depth_noise and args.depth != "truth":
        parser.error("--depth-noise perturbs the oracle's depths: it needs --depth truth")
    try:
        log_size = tuple(int(v) for v in args.log_size.lower().split("x"))
        assert len(log_size) == 2 and min(log_size) > 0
    except (ValueError, AssertionError):
        parser.error(f"--log-size {args.log_size!r}: expected WIDTHxHEIGHT, e.g. 320x192")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="log-reference-") as tmp:
        work = args.work or Path(tmp)
        rows = []
        for seed, layout in rf.heldout_worlds(rf.DEFAULT_FIRST_SEED, args.worlds):
            rows += evaluate_world(seed, layout, work, args.views, args.sample, args.combine, log_size, args.depth,
                                   args.depth_noise, args.gate)
            print(f"seed {seed} {layout.name}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    per_shift = summarise(rows)
    summary = "; ".join(f"{s}: raw {e['raw']['median']:.2f} / filled {e['filled']['median']:.2f} / blend "
                        f"{e['blend']['median']:.2f} dB (coverage {e['coverage']['median']:.2f})"
                        for s, e in per_shift.items())
    result = {"benchmark": "log_reference", "machine": machine_name(),
              "command": "python benchmarks/log_reference.py " + shlex.join(sys.argv[1:]),
              "regime": {"rig": "nuscenes_like_rig (6 cameras)", "size": [480, 270],
                         "log": f"{log_size[0]}x{log_size[1]} every 4 m (record_drive)", "views": args.views,
                         "sample": args.sample, "combine": args.combine,
                         "depth": DEPTHS[args.depth], "depth_noise_sigma": args.depth_noise, "gate": args.gate, "clips": 1, "ticks": 3,
                         "shifts_m": list(SHIFTS_M)},
              "seeds": sorted({r["seed"] for r in rows}), "wall_s": round(time.perf_counter() - start, 1),
              "per_shift": per_shift, "summary": f"{machine_name()}: median over worlds, {summary}"}
    write_result(result, "log-reference", args.json)


if __name__ == "__main__":
    run_main(main)
