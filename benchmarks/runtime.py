"""Runtime benchmark: scene building and the closed-loop demo tick rate.

1. Build the Gaussian scene of a 200 m straight road from its layout into an empty cache
   (wall seconds), then load it from the cache.
2. Run the demo scenario (cut_in, 6 cameras at 480x270, no enhancer) for --ticks ticks,
   without and with the video writer; report ticks/s and the median ms of every stage
   (sim, compose, render, deliver, agent, record).
Prints one JSON object and a one-line summary; writes benchmarks/results/runtime-<machine>.json.

    python benchmarks/runtime.py [--ticks 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numba

from _machine import machine_name, write_result
from neural_sensor.scene.build import build_scene
from neural_sensor.scene.layout import straight_road
from scenarios.runner import RunOptions, run_scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=200, help="demo ticks per run")
    parser.add_argument("--backend", default="auto", help="render backend")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default results/runtime-<machine>.json)")
    args = parser.parse_args()
    result = {"benchmark": "runtime", "machine": machine_name(), "cpu_threads": numba.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        layout = straight_road(200.0)
        start = time.perf_counter()
        scene, meta = build_scene(layout, cache_dir=cache)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        _, cached = build_scene(layout, cache_dir=cache)
        load_s = time.perf_counter() - start
        assert cached["cached"]
        result["scene_build"] = {"layout": "straight_road(200 m)", "voxel_m": meta["voxel_m"],
                                 "gaussians": meta["n_gaussians"], "build_s": round(build_s, 2),
                                 "cached_load_s": round(load_s, 2)}
        for video in (False, True):
            summary = run_scenario("cut_in", RunOptions(out_dir=Path(tmp) / f"run{int(video)}", ticks=args.ticks,
                                                        backend=args.backend, video=video, cache_dir=cache,
                                                        progress=False))
            result["demo_video" if video else "demo"] = {
                k: summary[k] for k in ("scenario", "ticks", "wall_s", "ticks_per_s", "cameras", "image_size",
                                        "backend", "stage_ms_median")}
            result["demo_video" if video else "demo"]["gaussians"] = summary["scene"]["n_gaussians"]
    demo = result["demo"]
    result["summary"] = (f"{result['machine']}: demo {demo['ticks_per_s']} ticks/s ({demo['cameras']} cameras "
                         f"{demo['image_size'][0]}x{demo['image_size'][1]}, {demo['backend']}), "
                         f"{result['demo_video']['ticks_per_s']} ticks/s writing video; "
                         f"200 m road scene built in {result['scene_build']['build_s']} s")
    write_result(result, "runtime", args.out)


if __name__ == "__main__":
    main()
