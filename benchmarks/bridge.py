"""Bridge benchmark: per-tick cost of the CARLA bridge around the renderer, with 100 actors.

On the stand-in server (carla_bridge/standin.py, real carla value types): a neural camera
on an ego among 100 vehicles and walkers; per tick we time the snapshot conversion (CARLA
snapshot -> WorldSnapshot with every actor's kind and box) and the delivery (BGRA
conversion and NeuralImage), apart from the rig's capture (compose + render).
Prints one JSON object and a one-line summary; writes benchmarks/results/bridge-<machine>.json.

    python benchmarks/bridge.py [--ticks 200] [--actors 100]
"""

from __future__ import annotations

import argparse
import statistics
import time

import carla
import numpy as np

from _machine import machine_name, write_result
from carla_bridge.sensor import NeuralCamera
from carla_bridge.standin import StandInBlueprint, StandInWorld
from neural_sensor.testing import make_street_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=200)
    parser.add_argument("--actors", type=int, default=100)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--height", type=int, default=270)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    world = StandInWorld()
    ego = world.spawn_actor(StandInBlueprint("vehicle.tesla.model3"), carla.Transform(carla.Location(0, 1.75, 0)))
    for i in range(args.actors):
        kind = "walker.pedestrian.0001" if i % 4 == 0 else "vehicle.audi.a2"
        where = carla.Transform(carla.Location(float(rng.uniform(5, 150)), float(rng.uniform(-10, 10)), 0.0),
                                carla.Rotation(yaw=float(rng.uniform(-180, 180))))
        world.spawn_actor(StandInBlueprint(kind), where)
    camera = NeuralCamera(world, {"image_size_x": args.width, "image_size_y": args.height, "fov": 90},
                          carla.Transform(carla.Location(1.5, 0, 1.6)), ego, make_street_scene(100_000), "cpu")
    delivered = []
    convert_ms, render_ms, deliver_ms = [], [], []
    for tick in range(args.ticks + 5):
        world.tick()
        snapshot_carla = world.get_snapshot()
        t0 = time.perf_counter()
        snapshot = camera.snapshot_from_carla(snapshot_carla)
        t1 = time.perf_counter()
        image = camera.image_for(snapshot)  # render, then BGRA + NeuralImage (the delivery)
        delivered.append(image.frame)
        t2 = time.perf_counter()
        if tick >= 5:  # warm-up
            convert_ms.append((t1 - t0) * 1e3)
            render_ms.append(camera.last_render_ms)
            deliver_ms.append((t2 - t1) * 1e3 - camera.last_render_ms)
    assert len(snapshot.agents) == args.actors
    med = {k: round(statistics.median(v), 3) for k, v in
           (("convert", convert_ms), ("render", render_ms), ("deliver", deliver_ms))}
    result = {"benchmark": "bridge", "machine": machine_name(), "actors": args.actors, "ticks": args.ticks,
              "image_size": [args.width, args.height], "median_ms": med,
              "bridge_overhead_ms": round(med["convert"] + med["deliver"], 3)}
    result["summary"] = (f"{result['machine']}: bridge overhead {result['bridge_overhead_ms']} ms per tick "
                         f"(convert {med['convert']} + deliver {med['deliver']}) for {args.actors} actors; "
                         f"render {med['render']} ms")
    write_result(result, "bridge", None)


if __name__ == "__main__":
    main()
