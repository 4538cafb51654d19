"""What traffic that keeps its distance costs the embedded simulator's tick (`carla_bridge.embedded`, the agents'
`keep_gap`): the median tick with every lane agent keeping its gap against the same world with `keep_gap=False`,
alternating in one process.

Worlds: N cars on 1 km of a straight four-lane road (a quarter of them in each lane, evenly spaced, 8-12 m/s, the
ego braking at the start of lane 0), and, with SUMO's netgenerate and netconvert on PATH (pip install eclipse-sumo),
N cars on random lanes of a generated 5 x 5 grid (100 m blocks, two lanes each way) read through
`layout_from_opendrive`, and N cars on routes that all turn through one junction (`intersection(200 m, two lanes
each way)`, every incoming lane's cars 9 m apart, each turning into a random other lane: the worst case of the
traffic's own-way prediction, which places each turning car along its route for every other). Prints one JSON object and a summary line; writes benchmarks/results/traffic-<machine>.json.

    python benchmarks/traffic.py [--agents 40,200,500] [--grid-agents 10,40] [--junction-agents 20,100]
        [--ticks 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._machine import count, machine_name, run_main, write_result  # noqa: E402
from carla_bridge.embedded import AgentSpec, EgoStart, EmbeddedSimulator  # noqa: E402
from carla_bridge.simulator import VehicleControl  # noqa: E402

GRID = ["--grid", "--grid.number", "5", "--grid.length", "100", "--default.lanenumber", "2"]


def _counts(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"a comma-separated list of agent counts >= 1, got {text!r}")
    return values


def tick_ms(layout, ego: EgoStart, specs: list[AgentSpec], ticks: int) -> float:
    """The median wall time (ms) of `ticks` ticks, the ego braking, after the first (the initial state)."""
    sim = EmbeddedSimulator(layout, ego, specs, seed=0)
    sim.tick()
    times = []
    for _ in range(ticks):
        sim.apply_control(VehicleControl(brake=1.0))
        start = time.perf_counter()
        sim.tick()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def road_world(n: int):
    from neural_sensor.scene.layout import straight_road

    layout = straight_road(1020.0, lanes_per_direction=2)
    per = int(np.ceil(n / 4))
    specs = [AgentSpec(i + 1, "car", "follow_lane", lane=i % 4, start_s_m=12.0 + (i // 4) * 990.0 / per,
                       speed_mps=8.0 + (i % 5)) for i in range(n)]
    return layout, EgoStart(lane=0, start_s_m=2.0), specs


def grid_layout():
    """The generated grid's layout, or None without SUMO's tools."""
    from neural_sensor.scene.opendrive import layout_from_opendrive

    if not (shutil.which("netgenerate") and shutil.which("netconvert")):
        print("traffic: SUMO's netgenerate / netconvert are not on PATH (pip install eclipse-sumo): the road only",
              file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as folder:
        net, xodr = Path(folder) / "grid.net.xml", Path(folder) / "grid.xodr"
        subprocess.run(["netgenerate", *GRID, "-o", str(net)], check=True, capture_output=True)
        subprocess.run(["netconvert", "-s", str(net), "--opendrive-output", str(xodr)], check=True,
                       capture_output=True)
        return layout_from_opendrive(xodr.read_text(), decorate=False)


def grid_world(layout, n: int, seed: int = 0):
    """n cars at random places of random lanes (a placement whose boxes overlap is drawn again)."""
    rng = np.random.default_rng(seed)
    lengths = [float(np.linalg.norm(np.diff(lane.travel_polyline()[:, :2], axis=0), axis=1).sum())
               for lane in layout.lanes]
    while True:
        lanes = rng.integers(len(layout.lanes), size=n)
        specs = [AgentSpec(i + 1, "car", "follow_lane", lane=int(k), start_s_m=float(rng.uniform(0, lengths[k])),
                           speed_mps=8.0) for i, k in enumerate(lanes)]
        try:
            EmbeddedSimulator(layout, EgoStart(lane=0, start_s_m=1.0), specs, seed=0)
            return layout, EgoStart(lane=0, start_s_m=1.0), specs
        except ValueError:
            continue


def junction_world(n: int, seed: int = 0):
    """n cars on routes turning through one junction (see the module docstring)."""
    from neural_sensor.scene.layout import intersection
    from neural_sensor.scene.path import Path as Polyline
    from scenarios.base import turn_route

    layout = intersection(200.0, lanes_per_direction=2)
    lengths = [Polyline(lane.travel_polyline()).length_m for lane in layout.lanes]
    incoming = [i for i, length in enumerate(lengths) if length > 100.0]
    rng = np.random.default_rng(seed)
    specs = []
    for j in range(int(np.ceil(n / len(incoming)))):
        for lane in incoming:
            if len(specs) == n:
                break
            for to in rng.permutation(len(layout.lanes)):
                try:
                    route = turn_route(layout, lane, int(to), 0.5 * lengths[lane] - 12.0 - 9.0 * j, 150.0)
                except ValueError:  # no turn from this lane into that one
                    continue
                specs.append(AgentSpec(len(specs) + 1, "car", "follow_route", route_xy_m=route, speed_mps=8.0))
                break
    return layout, EgoStart(lane=incoming[0], start_s_m=2.0), specs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=_counts, default=[40, 200, 500], help="cars on the 1 km road")
    parser.add_argument("--grid-agents", type=_counts, default=[10, 40], help="cars on the generated grid")
    parser.add_argument("--junction-agents", type=_counts, default=[20, 100],
                        help="cars on routes turning through one junction")
    parser.add_argument("--ticks", type=count(), default=40)
    parser.add_argument("--repeats", type=count(), default=3)
    parser.add_argument("--json", type=Path, default=None, help="write here instead of benchmarks/results/")
    args = parser.parse_args()
    worlds = {f"road_1km_{n}": road_world(n) for n in args.agents}
    grid = grid_layout() if args.grid_agents else None
    if grid is not None:
        worlds.update({f"grid_5x5_{n}": grid_world(grid, n) for n in args.grid_agents})
    worlds.update({f"junction_routes_{n}": junction_world(n) for n in args.junction_agents})
    rows = {}
    for name, (layout, ego, specs) in worlds.items():
        scripted = [dataclasses.replace(spec, keep_gap=False) for spec in specs]
        gap, fixed = [], []
        for _ in range(args.repeats):  # alternating, so a drift of the host's speed falls on both
            gap.append(tick_ms(layout, ego, specs, args.ticks))
            fixed.append(tick_ms(layout, ego, scripted, args.ticks))
        rows[name] = {"agents": len(specs), "lanes": len(layout.lanes),
                      "tick_ms_keep_gap": round(float(np.median(gap)), 2), "tick_ms_scripted": round(float(np.median(fixed)), 2),
                      "ratio": round(float(np.median(gap) / np.median(fixed)), 2)}
        print(name, rows[name], file=sys.stderr, flush=True)
    summary = "traffic: median tick ms, keeping the gap / scripted speeds: " + "; ".join(
        f"{name} {row['tick_ms_keep_gap']} / {row['tick_ms_scripted']}" for name, row in rows.items())
    write_result({"benchmark": "traffic", "machine": machine_name(), "ticks": args.ticks, "repeats": args.repeats,
                  "worlds": rows, "summary": summary}, "traffic", args.json)
    return 0


if __name__ == "__main__":
    run_main(main)
