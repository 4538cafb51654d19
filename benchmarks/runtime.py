"""Runtime benchmark: building the demo's scenes and the closed-loop demo tick rate.

1. Into an empty cache: build the Gaussian scene of a 200 m straight road from its layout
   (wall seconds; then its load from the cache), and reconstruct the demo's own scene as a
   run does (`reconstructed_scene` of cut_in's world along its recorded lane: its drive
   recorded, reconstructed, colour-refined; the builder's street included, built first).
2. Run the demo scenario (cut_in, 6 cameras at 480x270) for --ticks ticks in each mode:
   "demo" (what `neural-sensor demo` runs: the reconstruction and a local enhancer server;
   without and with the video writer; "demo_float32": the same with the enhancer's arithmetic forced
   to float32, the baseline of a host where the server's auto precision picks bfloat16), "chain" (the reconstruction, no enhancer) and
   "builder" (the ground-truth mode, `--scene builder`); report ticks/s (wall, first tick
   included), the median ms of a whole tick and of every stage (sim, compose, render,
   enhance, deliver, agent, record), and with the enhancer the median of its round trip above
   the model's time per tick (the transport overhead as the run pays it).
Prints one JSON object and a one-line summary; writes benchmarks/results/runtime-<machine>.json.

    python benchmarks/runtime.py [--ticks 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numba

from _machine import count, machine_name, run_main, write_result
from neural_sensor.reconstruct.drive import reconstructed_scene
from neural_sensor.scene.build import build_scene
from neural_sensor.scene.layout import straight_road
from scenarios.runner import RunOptions, load_scenario, run_scenario

MODES = {  # name: (RunOptions fields, video)
    "demo": (dict(scene="reconstruction", enhancer="local"), False),
    "demo_float32": (dict(scene="reconstruction", enhancer="local", enhancer_precision="float32"), False),
    "demo_video": (dict(scene="reconstruction", enhancer="local"), True),
    "chain": (dict(scene="reconstruction"), False),
    "builder": (dict(scene="builder"), False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=count(1), default=200, help="demo ticks per run")
    parser.add_argument("--backend", default="auto", help="render backend")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default results/runtime-<machine>.json)")
    args = parser.parse_args()
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown modes {unknown}; known: {', '.join(MODES)}")
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
        demo = load_scenario("cut_in")
        run_cache = Path(tmp) / "run-cache"  # empty: the street is built inside the time; the runs then use it
        start = time.perf_counter()
        recon, recon_meta = reconstructed_scene(demo.layout, demo.recorded_path_xy_m, voxel_m=demo.voxel_m,
                                                cache_dir=run_cache)
        result["reconstruction"] = {"scenario": "cut_in", "gaussians": len(recon),
                                    "reconstruct_s": round(time.perf_counter() - start, 2),
                                    "colour_refinement": recon_meta.get("colour_refinement")}
        for mode in modes:
            fields, video = MODES[mode]
            summary = run_scenario("cut_in", RunOptions(out_dir=Path(tmp) / mode, ticks=args.ticks,
                                                        backend=args.backend, video=video, cache_dir=run_cache,
                                                        progress=False, **fields))
            result[mode] = {k: summary[k] for k in ("scenario", "ticks", "wall_s", "ticks_per_s", "tick_ms_median",
                                                    "cameras", "image_size", "backend", "lod_px", "render_scale",
                                                    "stage_ms_median")}
            result[mode].update(scene=summary["scene"]["source"], gaussians=summary["scene"]["n_gaussians"],
                                enhanced_ticks=(summary["enhancer"] or {}).get("ticks_enhanced"),
                                enhancer_transport=(summary["enhancer"] or {}).get("transport"),
                                enhancer_cpu_precision=(summary["enhancer"] or {}).get("cpu_precision"),
                                transport_ms_median=(summary["enhancer"] or {}).get("transport_ms_median"))
    parts = [f"{m} {result[m]['ticks_per_s']} ticks/s ({result[m]['tick_ms_median']} ms per tick)" for m in modes]
    result["summary"] = (f"{result['machine']}: " + "; ".join(parts) +
                         f"; the demo's reconstruction {result['reconstruction']['reconstruct_s']} s, "
                         f"200 m road scene built in {result['scene_build']['build_s']} s")
    write_result(result, "runtime", args.out)


if __name__ == "__main__":
    run_main(main)
