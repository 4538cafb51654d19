"""Bridge benchmark: per-tick cost of the CARLA bridge around the renderer, with 100 moving actors.

On the stand-in server (carla_bridge/standin.py, real carla value types): a rig of neural
cameras on one ego (by default an rgb, a depth and a semantic camera on one mount: one render
serves all three) among 100 vehicles and walkers that move every tick. Per tick we time the
snapshot conversion (CARLA snapshot -> WorldSnapshot with every actor's kind, box and pose) and
the delivery (each camera's encoding: BGRA, CARLA's 24-bit depth, labels in R; the NeuralImage
objects), apart from the rig's capture (compose + render), which is reported on its own.
The thread hand-off of the live path (on_tick queueing a frame for the rig's worker) is not
in these numbers. Prints one JSON object and a one-line summary; writes
benchmarks/results/bridge-<machine>.json.

    python benchmarks/bridge.py [--ticks 200] [--actors 100] [--cameras rgb,depth,semantic_segmentation]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import carla
import numpy as np

from _machine import count, machine_name, run_main, write_result
from carla_bridge.sensor import NeuralCamera
from carla_bridge.standin import StandInBlueprint, StandInWorld
from neural_sensor.testing import make_street_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=count(1), default=200, help="timed ticks (after 5 untimed)")
    parser.add_argument("--actors", type=count(0), default=100, help="moving vehicles and walkers")
    parser.add_argument("--width", type=count(1), default=480, help="camera width, pixels")
    parser.add_argument("--height", type=count(1), default=270, help="camera height, pixels")
    parser.add_argument("--cameras", default="rgb,depth,semantic_segmentation",
                        help="camera blueprints (sensor.camera.<name>) on one mount of the ego")
    parser.add_argument("--backend", default="cpu", help="render backend")
    parser.add_argument("--json", type=Path, default=None,
                        help="output (default results/bridge-<machine>.json, the committed one)")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.cameras.split(",") if k.strip()]
    if not kinds:
        parser.error(f"--cameras: no camera named in {args.cameras!r}")
    rng = np.random.default_rng(0)
    world = StandInWorld()
    ego = world.spawn_actor(StandInBlueprint("vehicle.tesla.model3"), carla.Transform(carla.Location(0, 1.75, 0)))
    others = []
    for i in range(args.actors):
        kind = "walker.pedestrian.0001" if i % 4 == 0 else "vehicle.audi.a2"
        where = carla.Transform(carla.Location(float(rng.uniform(5, 150)), float(rng.uniform(-10, 10)), 0.0),
                                carla.Rotation(yaw=float(rng.uniform(-180, 180))))
        others.append(world.spawn_actor(StandInBlueprint(kind), where))
    scene = make_street_scene(100_000)
    cameras = [NeuralCamera(world, {"image_size_x": args.width, "image_size_y": args.height, "fov": 90},
                            carla.Transform(carla.Location(1.5, 0, 1.6)), ego, scene, args.backend,
                            type_id=f"sensor.camera.{kind}") for kind in kinds]
    rig = cameras[0].rig
    assert all(c.rig is rig for c in cameras)
    convert_ms, render_ms, deliver_ms = [], [], []
    load_before = os.getloadavg()[0]
    for tick in range(args.ticks + 5):
        for actor in others:  # every actor moves every tick (outside the timed part)
            t = actor.get_transform()
            actor.set_transform(carla.Transform(carla.Location(t.location.x + 0.1, t.location.y, 0.0),
                                                carla.Rotation(yaw=t.rotation.yaw + 0.5)))
        world.tick()
        snapshot_carla = world.get_snapshot()
        t0 = time.perf_counter()
        snapshot = rig.snapshot_from_carla(snapshot_carla)
        t1 = time.perf_counter()
        images = rig.capture(snapshot, cameras)  # one render for the rig, then each camera's encoding + image
        t2 = time.perf_counter()
        assert [images[c].frame for c in cameras] == [snapshot.frame] * len(cameras)
        if tick >= 5:  # warm-up
            convert_ms.append((t1 - t0) * 1e3)
            render_ms.append(cameras[0].last_render_ms)
            deliver_ms.append((t2 - t1) * 1e3 - cameras[0].last_render_ms)
    assert len(snapshot.agents) == args.actors and rig.renders == args.ticks + 5
    for camera in cameras:
        camera.destroy()
    med = {k: round(statistics.median(v), 3) for k, v in
           (("convert", convert_ms), ("render", render_ms), ("deliver", deliver_ms))}
    result = {"benchmark": "bridge", "machine": machine_name(), "actors": args.actors, "ticks": args.ticks,
              "cameras": [f"sensor.camera.{k}" for k in kinds], "renders_per_tick": 1,
              "image_size": [args.width, args.height], "median_ms": med,
              "p90_ms": {k: round(float(np.percentile(v, 90)), 3) for k, v in
                         (("convert", convert_ms), ("deliver", deliver_ms))},
              "bridge_overhead_ms": round(med["convert"] + med["deliver"], 3),
              # the CPU renderer's OpenMP threads spin after each render unless told to wait passively, taking
              # the bridge's CPU on a small machine; the load average says how busy the machine was otherwise
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
              "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    result["summary"] = (f"{result['machine']}: bridge overhead {result['bridge_overhead_ms']} ms per tick "
                         f"(convert {med['convert']} + deliver {med['deliver']}) for {args.actors} moving actors "
                         f"and {len(kinds)} cameras ({args.cameras}) from one render; render {med['render']} ms")
    write_result(result, "bridge", args.json)


if __name__ == "__main__":
    run_main(main)
