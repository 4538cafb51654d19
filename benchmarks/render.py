"""Render benchmark: street scenes of 100k / 300k / 1M Gaussians at 640x360 and 1600x900, 1 and 6 cameras.

For every configuration it times `render()` on the fast backend(s) (median and p90 over
`--frames` frames after `--warmup` frames) and the torch reference on the same frame
(the baseline for the speed-up ratio; fewer frames, it is slow). gsplat is timed too
when CUDA is present. Prints one JSON object and a one-line summary, and writes
benchmarks/results/render-<machine>.json.

    python benchmarks/render.py                 # full table
    python benchmarks/render.py --quick         # 300k at 640x360, one camera (printed; a file only with --out)
    python benchmarks/render.py --rig           # the run's regime (below)

`--rig` times the run's own regime instead: the demo's reconstruction (cut_in's recorded drive, reconstructed
as `neural-sensor demo` does, from the scene cache), the six rig cameras at 480x270 at stations along the
recorded path, drawn at the reconstruction's level of detail, with the outputs each consumer asks for: the
runner (rgb, depth, alpha), the runner with the drive-log reference (+ the median depth) and a CARLA depth or
semantic camera (+ the median depth and the labels). The output sets alternate frame by frame, so a drift of
the host's speed reaches all of them alike. Writes benchmarks/results/render-rig-<machine>.json.
"""

from __future__ import annotations

import argparse
import sys
import json
import statistics
import time
from pathlib import Path

from _machine import count, machine_name, run_main, write_result

import numba
import torch

from neural_sensor.render import cuda_available, render
from neural_sensor.testing import make_street_scene, street_cameras

GAUSSIANS = (100_000, 300_000, 1_000_000)
SIZES = ((640, 360), (1600, 900))
CAMERAS = (1, 6)
OUTPUTS = ("rgb", "depth", "alpha")


def time_frames(fn, frames: int, warmup: int, budget_s: float = float("inf")) -> dict:
    """Run fn warmup + frames times; stop early (>= 1 timed frame) once budget_s of timed frames is spent."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
        if sum(times) / 1000.0 > budget_s:
            break
    return timing_stats(times)


def timing_stats(times_ms: list[float]) -> dict:
    """{"median_ms", "p90_ms", "frames"} of per-frame times (ms)."""
    times = sorted(times_ms)
    return {
        "median_ms": round(statistics.median(times), 2),
        "p90_ms": round(times[min(len(times) - 1, int(0.9 * len(times)))], 2),
        "frames": len(times),
    }


def run(args: argparse.Namespace) -> dict:
    gaussian_counts = (300_000,) if args.quick else GAUSSIANS
    sizes = ((640, 360),) if args.quick else SIZES
    cameras = (1,) if args.quick else CAMERAS
    backends = [b for b in args.backends.split(",") if b != "gsplat" or cuda_available()]
    scenes = {n: make_street_scene(n, seed=0, sh_degree=args.sh_degree) for n in gaussian_counts}
    configs = [{"gaussians": n, "width": w, "height": h, "cameras": c}
               for n in gaussian_counts for (w, h) in sizes for c in cameras]
    # fast backends first for every configuration, the reference after: torch's thread pool then never
    # runs just before a timed fast frame
    for row in configs:
        cams = street_cameras(row["width"], row["height"], count=row["cameras"])
        for backend in backends:
            row[backend] = time_frames(lambda: render(scenes[row["gaussians"]], cams, backend=backend,
                                                      outputs=OUTPUTS), args.frames, args.warmup)
        print(json.dumps(row), flush=True)
    if not args.no_reference:
        for row in configs:
            cams = street_cameras(row["width"], row["height"], count=row["cameras"])
            row["torch"] = time_frames(lambda: render(scenes[row["gaussians"]], cams, backend="torch",
                                                      outputs=OUTPUTS), args.ref_frames, 0, budget_s=args.ref_budget_s)
            for backend in backends:
                row[f"{backend}_speedup_vs_torch"] = round(row["torch"]["median_ms"] / row[backend]["median_ms"], 1)
            print(json.dumps(row), flush=True)
    return {
        "benchmark": "render",
        "machine": machine_name(),
        "cpu_threads": numba.get_num_threads(),
        "torch_threads": torch.get_num_threads(),
        "numba": numba.__version__,
        "torch": torch.__version__,
        "scene": f"make_street_scene(n, seed=0, sh_degree={args.sh_degree}), street_cameras(width, height, count)",
        "outputs": list(OUTPUTS),
        "frames": args.frames,
        "warmup": args.warmup,
        "configs": configs,
    }


RIG_OUTPUTS = {  # what each consumer of a rig render asks for (neural_sensor.rig.render_outputs)
    "runner": ("rgb", "depth", "alpha"),
    "runner_with_log_reference": ("rgb", "depth", "alpha", "median_depth"),
    "bridge_depth_or_semantic_camera": ("rgb", "depth", "alpha", "median_depth", "semantic", "instance"),
}


def run_rig(args: argparse.Namespace) -> dict:
    """Median ms per six-camera render of the demo's reconstruction for each of RIG_OUTPUTS (see the docstring)."""
    import numpy as np

    from neural_sensor.reconstruct.drive import reconstructed_scene
    from neural_sensor.render import RECONSTRUCTION_LOD_PX
    from neural_sensor.rig import nuscenes_like_rig, rig_cameras_on_path
    from neural_sensor.scene.path import Path as Polyline
    from scenarios.runner import load_scenario

    demo = load_scenario("cut_in")
    scene, meta = reconstructed_scene(demo.layout, demo.recorded_path_xy_m, voxel_m=demo.voxel_m,
                                      cache_dir=args.cache, progress=True)
    path = Polyline(demo.recorded_path_xy_m)
    specs = nuscenes_like_rig(480, 270)
    stations = np.linspace(10.0, path.length_m - 10.0, args.frames)
    rigs = [rig_cameras_on_path(specs, path, float(s)) for s in stations]
    background = meta.get("sky_rgb") or (0.5, 0.6, 0.7)
    times: dict[str, list[float]] = {name: [] for name in RIG_OUTPUTS}
    for timed_pass in range(1 + args.warmup):  # pass 0 (JIT, caches) is not timed; the others are
        for cameras in rigs:
            for name, outputs in RIG_OUTPUTS.items():
                start = time.perf_counter()
                render(scene, cameras, backend="cpu", outputs=outputs, background=background,
                       lod_px=RECONSTRUCTION_LOD_PX)
                if timed_pass > 0:
                    times[name].append((time.perf_counter() - start) * 1000.0)
    rows = {name: {**timing_stats(t), "outputs": list(RIG_OUTPUTS[name])} for name, t in times.items()}
    return {"benchmark": "render-rig", "machine": machine_name(), "cpu_threads": numba.get_num_threads(),
            "numba": numba.__version__, "scene": f"cut_in's reconstruction ({len(scene)} Gaussians)",
            "cameras": "nuscenes_like_rig(480, 270), 6 cameras", "lod_px": RECONSTRUCTION_LOD_PX,
            "stations": len(stations), "passes": args.warmup, "configs": rows,
            "summary": f"{machine_name()}: six 480x270 cameras of the demo's reconstruction: " + "; ".join(
                f"{name} {row['median_ms']} ms" for name, row in rows.items())}


def summary_line(result: dict) -> str:
    for row in result["configs"]:
        if row["gaussians"] == 300_000 and (row["width"], row["height"]) == (640, 360) and row["cameras"] == 1:
            parts = []
            for backend in ("cpu", "gsplat"):
                if backend in row:
                    text = f"{backend} median {row[backend]['median_ms']} ms, p90 {row[backend]['p90_ms']} ms"
                    ratio = row.get(f"{backend}_speedup_vs_torch")
                    if ratio is not None:
                        text += f", {ratio}x faster than the torch reference ({row['torch']['median_ms']} ms)"
                    parts.append(text)
            return f"{result['machine']}: 300k Gaussians 640x360 1 camera: " + "; ".join(parts)
    return f"{result['machine']}: {len(result['configs'])} configurations"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only 300k Gaussians, 640x360, one camera")
    parser.add_argument("--frames", type=count(1), default=20, help="timed frames per fast backend")
    parser.add_argument("--warmup", type=count(0), default=3, help="untimed frames first (JIT, caches)")
    parser.add_argument("--ref-frames", type=count(1), default=3, help="timed frames of the torch reference")
    parser.add_argument("--ref-budget-s", type=float, default=60.0, help="stop the reference after this many s")
    parser.add_argument("--no-reference", action="store_true", help="skip the torch reference")
    parser.add_argument("--backends", default="cpu,gsplat",
                        help="fast backends to time, comma-separated (gsplat only where CUDA is)")
    parser.add_argument("--sh-degree", type=int, default=1, choices=range(4), help="SH degree of the street scene")
    parser.add_argument("--rig", action="store_true",
                        help="the run's regime: six 480x270 rig cameras of the demo's reconstruction (--frames "
                             "stations, --warmup timed passes over them after an untimed one) on the cpu backend; "
                             "the street's options (--backends, --sh-degree, --no-reference, --ref-*) do not apply")
    parser.add_argument("--cache", type=Path, default=None, help="--rig: scene cache (default: the runner's)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default results/render-<machine>.json)")
    args = parser.parse_args()
    backends = list(dict.fromkeys(b.strip() for b in args.backends.split(",") if b.strip()))
    unknown = [b for b in backends if b not in ("cpu", "gsplat")]
    if unknown or not backends:  # (an unknown one had failed after the scenes were built)
        parser.error(f"--backends: of cpu, gsplat; got {args.backends!r}")
    args.backends = ",".join(backends)  # (what `run` times: the checked list, not the text as typed)
    if not args.rig and backends == ["gsplat"] and not cuda_available():  # (it had written a result of nothing)
        parser.error("--backends gsplat needs CUDA, which this machine lacks: --backends cpu")
    if not args.rig and "gsplat" in backends and not cuda_available():
        print("render.py: no CUDA here: gsplat is left out, cpu timed", file=sys.stderr)
    if args.rig:
        if args.warmup < 1:
            parser.error("--rig times --warmup passes over the stations after an untimed one: give --warmup >= 1")
        result = run_rig(args)
        write_result(result, "render-rig", args.out)
        return
    result = run(args)
    result["summary"] = summary_line(result)
    write_result(result, "render", args.out, save=not args.quick)


if __name__ == "__main__":
    run_main(main)
