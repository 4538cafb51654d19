"""How much the drive log's own images could add to the run's render: a measurement for the enhancer's next input.

In the run's regime (held-out worlds as `runtime_fidelity.py` picks them, the recorded drive's log at
160x96 every 4 m, its reconstruction as `--scene reconstruction` builds it, the six-camera rig at
480x270 on the recorded path and shifted 1-3 m), each rig camera's nearest log images of the same
camera (`--views`, by camera centre) are warped into it through the reconstruction's RENDERED median depth
(`neural_sensor.enhance.warp.warp_views`, the log views' own depth rendered from the reconstruction at their
poses, `--sample` nearest or bilinear), blended by distance as the rig does (`--combine distance`:
`neural_sensor.enhance.log_warp`) or each pixel from the nearest view that sees it (`--combine nearest-first`,
the rig's rule until 2026-12-01's second round). Against the builder's ground truth at the same pose, per shift:

- raw: the reconstruction's render (what the enhancer gets today);
- filled: the warped log colour where a log view sees the pixel's surface, the render elsewhere;
- blend: the mean of the two there, the render elsewhere (a fixed, untrained blend);
- coverage: the share of pixels some log view sees;
- warp_ms: the numpy warp's time per camera (not the run's budget: a compiled one would be needed).

The learned use of the reference (the enhancer trained with it as input) is the next step; this measures
what a fixed rule already gets, with no training.

    python benchmarks/log_reference.py [--worlds 6] [--views 2] [--sample bilinear] [--combine distance]
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
from _machine import machine_name, write_result
from neural_sensor.enhance.log_warp import log_view_weights
from neural_sensor.enhance.warp import warp_views
from neural_sensor.metrics import psnr
from neural_sensor.reconstruct.drive import reconstructed_scene_from_log
from neural_sensor.reconstruct.log import read_drive_log, record_drive
from neural_sensor.reconstruct.reference import LogReference
from neural_sensor.render import RECONSTRUCTION_LOD_PX, render
from neural_sensor.rig import nuscenes_like_rig
from neural_sensor.scene.build import build_scene
from neural_sensor.scene.path import Path as Polyline
from neural_sensor.scene.to_gaussians import sky_rgb

SHIFTS_M = (0.0, 1.0, 2.0, 3.0)


def evaluate_world(seed: int, layout, work: Path, views: int, sample: str, combine: str) -> list[dict]:
    """Per camera and tick: {"seed", "shift_m", "raw", "filled", "blend", "coverage", "warp_ms"}."""
    path_xy = rf.recorded_path(layout)
    path = Polyline(path_xy)
    folder = work / f"log-{seed}"
    if not (folder / "transforms.json").exists():
        record_drive(layout, path_xy, folder, voxel_m=rf.VOXEL_M, cache_dir=work)
    scene, _ = reconstructed_scene_from_log(folder, cache_dir=work)
    truth, _ = build_scene(layout, voxel_m=rf.VOXEL_M, cache_dir=work)
    background = sky_rgb(layout.style)
    images, log_cams, log_meta = read_drive_log(folder)
    # the log's views and their depths as the run keeps them (the warp below is the float twin, bilinear or nearest)
    reference = LogReference.from_views(images, log_cams, [f["camera"] for f in log_meta["frames"]], scene, background)
    specs = nuscenes_like_rig(480, 270)
    rows = []
    for start in rf.clip_starts(path.length_m, 1, 3, 0.5):
        for shift in SHIFTS_M:
            for tick in range(3):
                cams = rf.rig_cameras(specs, path, start + tick * 0.5, shift)
                raw = render(scene, cams, backend="cpu", outputs=("rgb", "alpha", "median_depth"),
                             background=background, lod_px=RECONSTRUCTION_LOD_PX)
                gt = render(truth, cams, backend="cpu", outputs=("rgb",), background=background)
                for i, (spec, cam) in enumerate(zip(specs, cams)):
                    near, weight = log_view_weights(reference, spec.sensor_id, cam, views)
                    t0 = time.perf_counter()
                    ref, seen = warp_views(cam, raw.median_depth[i], raw.alpha[i],
                                           [(log_cams[j], images[j], reference.depth_m[j]) for j in near],
                                           sample=sample, weights=weight if combine == "distance" else None)
                    warp_ms = (time.perf_counter() - t0) * 1e3
                    filled = np.where(seen[..., None], ref, raw.rgb[i])
                    blend = np.where(seen[..., None], 0.5 * (ref + raw.rgb[i]), raw.rgb[i])
                    rows.append({"seed": seed, "shift_m": shift, "camera": spec.sensor_id,
                                 "raw": psnr(raw.rgb[i], gt.rgb[i]), "filled": psnr(filled, gt.rgb[i]),
                                 "blend": psnr(blend, gt.rgb[i]), "coverage": float(seen.mean()), "warp_ms": warp_ms})
    return rows


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
        for key in ("raw", "filled", "blend", "coverage", "warp_ms"):
            means = [float(np.mean([r[key] for r in rs])) for rs in per_world.values()]
            entry[key] = {"median": round(float(np.median(means)), 3), "min": round(min(means), 3),
                          "per_world": [round(m, 3) for m in means]}
        entry["worst_frame"] = {key: round(min(r[key] for rs in per_world.values() for r in rs), 3)
                                 for key in ("raw", "filled", "blend")}
        out[f"{shift:g}m"] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, default=6, help="held-out worlds (templates round-robin)")
    parser.add_argument("--views", type=int, default=2, help="nearest log views of the same camera to warp")
    parser.add_argument("--sample", choices=("nearest", "bilinear"), default="bilinear")
    parser.add_argument("--combine", choices=("distance", "nearest-first"), default="distance",
                        help="blend the views by distance (the rig's rule) or take the nearest that sees a pixel")
    parser.add_argument("--work", type=Path, default=None, help="folder for logs and caches (default: temporary)")
    parser.add_argument("--json", type=Path, default=None, help="output (default results/log-reference-<machine>)")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="log-reference-") as tmp:
        work = args.work or Path(tmp)
        rows = []
        for seed, layout in rf.heldout_worlds(rf.DEFAULT_FIRST_SEED, args.worlds):
            rows += evaluate_world(seed, layout, work, args.views, args.sample, args.combine)
            print(f"seed {seed} {layout.name}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    per_shift = summarise(rows)
    summary = "; ".join(f"{s}: raw {e['raw']['median']:.2f} / filled {e['filled']['median']:.2f} / blend "
                        f"{e['blend']['median']:.2f} dB (coverage {e['coverage']['median']:.2f})"
                        for s, e in per_shift.items())
    result = {"benchmark": "log_reference", "machine": machine_name(),
              "command": "python benchmarks/log_reference.py " + shlex.join(sys.argv[1:]),
              "regime": {"rig": "nuscenes_like_rig (6 cameras)", "size": [480, 270],
                         "log": "160x96 every 4 m (record_drive)", "views": args.views, "sample": args.sample, "combine": args.combine,
                         "target_depth": "the reconstruction's rendered median depth", "clips": 1, "ticks": 3,
                         "shifts_m": list(SHIFTS_M)},
              "seeds": sorted({r["seed"] for r in rows}), "wall_s": round(time.perf_counter() - start, 1),
              "per_shift": per_shift, "summary": f"{machine_name()}: median over worlds, {summary}"}
    write_result(result, "log-reference", args.json)


if __name__ == "__main__":
    main()
