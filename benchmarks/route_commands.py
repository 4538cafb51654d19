"""Route commands against CARLA's own route planner: the RoadOption each point of a route gets from
`scenarios.route_options` (what a leaderboard agent's set_global_plan receives) and from CARLA's
GlobalRoutePlanner (`agents.navigation`, as the leaderboard's interpolate_trajectory labels a route), on
OpenDRIVE maps with junctions.

For each map, random pairs of waypoints off junctions are traced by the planner (libcarla's `carla.Map`
built from the map's text: no server); the traced waypoints, in our frame, are the route, labelled by both.
Reported per map: the routes whose sequence of junction commands (LEFT / RIGHT / STRAIGHT, in order) agree,
the share of points with the same command and the differences ("the planner's -> ours"); apart for the routes
on which the planner changes lanes (its trace jumps to the next lane in one step, which no driven route does).
Maps: --xodr files, or the intersection template's own export and, with SUMO's netgenerate and netconvert on
PATH (pip install eclipse-sumo), generated grid, spider and random networks. CARLA's `agents` package is not on PyPI: point
--agents-path at a folder holding it (CARLA's PythonAPI/carla). Prints one JSON object and a summary line;
writes benchmarks/results/route-commands-<machine>.json.

    python benchmarks/route_commands.py --agents-path ~/carla/PythonAPI/carla [--xodr MAP.xodr ...] [--routes 300]
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from _machine import count, machine_name, run_main, write_result
from neural_sensor.scene.opendrive import layout_from_opendrive
from scenarios.route_options import route_options

GENERATED = {  # netgenerate's arguments for the generated networks (two lanes each way; one on the spider)
    "grid": ["--grid", "--grid.number", "3", "--grid.length", "80", "--default.lanenumber", "2"],
    "spider": ["--spider", "--spider.arm-number", "5", "--spider.circle-number", "3", "--default.lanenumber", "1"],
    "random": ["--rand", "--rand.iterations", "60", "--seed", "3", "--default.lanenumber", "2",
               "--rand.max-distance", "120"],
}
TURNS = ("LEFT", "RIGHT", "STRAIGHT")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents-path", type=Path, required=True,
                        help="a folder holding CARLA's `agents` package (CARLA's PythonAPI/carla)")
    parser.add_argument("--xodr", type=Path, nargs="*", default=[], help="OpenDRIVE maps (default: generated ones)")
    parser.add_argument("--routes", type=count(1), default=300, help="random routes per map")
    parser.add_argument("--seed", type=int, default=0, help="the routes' random seed")
    parser.add_argument("--json", type=Path, default=None, help="write the result here instead")
    args = parser.parse_args()
    import carla

    sys.path.insert(0, str(args.agents_path))
    try:
        from agents.navigation.global_route_planner import GlobalRoutePlanner
    except ImportError as err:
        parser.error(f"--agents-path {args.agents_path}: CARLA's agents package not importable there ({err})")
    maps = {path.stem: path.read_text() for path in args.xodr} or _default_maps()
    per_map = {}
    for name, text in maps.items():
        per_map[name] = _compare(carla, GlobalRoutePlanner, text, args.routes, args.seed)
    result = {"benchmark": "route_commands", "machine": machine_name(), "routes_per_map": args.routes,
              "seed": args.seed, "maps": per_map}
    result["summary"] = "; ".join(
        f"{name}: junction commands agree on {m['without_lane_changes']['same_junction_commands']} of "
        f"{m['without_lane_changes']['routes']} routes without lane changes "
        f"({m['with_lane_changes']['same_junction_commands']} of {m['with_lane_changes']['routes']} with), "
        f"{m['without_lane_changes']['same_point_share']:.3f} of points" for name, m in per_map.items())
    write_result(result, "route-commands", args.json)
    return 0


def _default_maps() -> dict[str, str]:
    """The intersection template's export (one and two lanes each way), and the generated networks where SUMO's
    tools are on PATH."""
    from neural_sensor.scene.layout import intersection
    from neural_sensor.scene.opendrive import layout_to_opendrive

    maps = {f"template_four_way_{n}_lane": layout_to_opendrive(intersection(lanes_per_direction=n)) for n in (1, 2)}
    if not (shutil.which("netgenerate") and shutil.which("netconvert")):
        print("route_commands: SUMO's netgenerate / netconvert are not on PATH (pip install eclipse-sumo): the "
              "template's maps only", file=sys.stderr)
        return maps
    with tempfile.TemporaryDirectory() as folder:
        for name, options in GENERATED.items():
            net, xodr = Path(folder) / f"{name}.net.xml", Path(folder) / f"{name}.xodr"
            subprocess.run(["netgenerate", *options, "-o", str(net)], check=True, capture_output=True)
            subprocess.run(["netconvert", "-s", str(net), "--opendrive-output", str(xodr)], check=True,
                           capture_output=True)
            maps[name] = xodr.read_text()
    return maps


def _compare(carla, planner_class, text: str, routes: int, seed: int) -> dict:
    """Both labellings of `routes` random planner routes on one map, tallied apart with and without the planner's
    lane changes."""
    import networkx  # (the planner's own dependency)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layout = layout_from_opendrive(text, decorate=False)
    carla_map = carla.Map("route_commands", text)
    planner = planner_class(carla_map, 1.0)
    waypoints = [w for w in carla_map.generate_waypoints(2.0) if not w.is_junction]
    rng = random.Random(seed)
    tallies = {key: {"routes": 0, "same_junction_commands": 0, "points": 0, "same_points": 0, "differences": {}}
               for key in ("without_lane_changes", "with_lane_changes")}
    for _ in range(routes):
        start, end = rng.sample(waypoints, 2)
        try:
            trace = planner.trace_route(start.transform.location, end.transform.location)
        except (TypeError, KeyError, ValueError, networkx.NetworkXException):  # (no path between the two: the
            continue                                                         # planner's errors say so)
        xy = np.array([[w.transform.location.x, -w.transform.location.y] for w, _ in trace])  # CARLA's y: right
        theirs = [option.name for _, option in trace]
        keep = np.concatenate([[True], np.linalg.norm(np.diff(xy, axis=0), axis=1) > 1e-6])
        xy, theirs = xy[keep], [o for o, k in zip(theirs, keep) if k]
        if len(xy) < 3:
            continue
        stations = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
        ours = route_options(layout, xy, stations)
        tally = tallies["with_lane_changes" if any(o.startswith("CHANGELANE") for o in theirs)
                        else "without_lane_changes"]
        tally["routes"] += 1
        planner_says, we_say = _junction_commands(theirs), _junction_commands(ours)
        tally["same_junction_commands"] += int(we_say == planner_says)
        for key in ([f"{a} -> {b}" for a, b in zip(planner_says, we_say) if a != b]
                    if len(we_say) == len(planner_says) else [f"{len(planner_says)} junctions -> {len(we_say)}"]):
            tally["differences"][key] = tally["differences"].get(key, 0) + 1  # (the planner's -> ours)
        tally["points"] += len(ours)
        tally["same_points"] += sum(a == b for a, b in zip(ours, theirs))
    for tally in tallies.values():
        tally["same_point_share"] = round(tally["same_points"] / max(tally["points"], 1), 4)
    return tallies


def _junction_commands(options: list[str]) -> list[str]:
    """The junction commands in the order the route meets them (one per junction; lane changes skipped)."""
    kept = [o for o in options if not o.startswith("CHANGELANE")]
    return [o for i, o in enumerate(kept) if o in TURNS and (i == 0 or kept[i - 1] != o)]


if __name__ == "__main__":
    run_main(main)
