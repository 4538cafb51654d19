"""The built-in agent yields where another road user's way crosses its route (scenarios.agent.BuiltinAgent), and the
time-to-collision criterion does not count one crossing out of the ego's corridor (scenarios.base)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from carla_bridge.embedded import AgentSpec, EgoStart, EmbeddedSimulator
from neural_sensor.scene.layout import Style, curve, intersection, straight_road
from neural_sensor.scene.path import Path
from neural_sensor.world import AgentState, WorldSnapshot, pose_from_xyz_yaw
from scenarios.agent import BuiltinAgent
from scenarios.base import drive_scenario, lane_route, time_to_collision, turn_route
from scenarios.runner import load_scenario

LAYOUT = intersection()  # lanes: 0 along +x (y -1.75), 1 along -x (y +1.75), 2 along +y (x +1.75), 3 along -y
LEFT = turn_route(LAYOUT, 0, 2, 10.0, 100.0)
RIGHT = turn_route(LAYOUT, 0, 3, 10.0, 100.0)
STRAIGHT = lane_route(LAYOUT, 0, 10.0, 100.0)


def _drive(route, agents, layout=LAYOUT, ticks: int = 400, ego_speed_mps: float = 8.0) -> dict:
    """Drive the built-in agent along route from lane 0 at 10 m: collisions, the lowest speed, when it got to the
    route's end, how often it was yielding."""
    sim = EmbeddedSimulator(layout, EgoStart(lane=0, start_s_m=10.0, speed_mps=ego_speed_mps), agents, seed=0)
    agent = BuiltinAgent(route, 9.0)
    path = Path(route)
    snapshot = sim.tick()
    hits, speeds, done_s, yielding = set(), [], None, 0
    for _ in range(ticks):
        s_m = path.project(snapshot.ego.position_m[:2])[0]
        seen = {key: list(value) for key, value in agent._seen.items()}
        yielding += agent._yield_limit_mps(snapshot, s_m, snapshot.ego.speed_mps, 9.0, set()) < 9.0
        agent._seen = seen  # (that look did not count)
        sim.apply_control(agent.run_step({"world": (snapshot.frame, snapshot)}, snapshot.timestamp_s))
        snapshot = sim.tick()
        hits |= set(snapshot.collisions)
        speeds.append(snapshot.ego.speed_mps)
        if path.project(snapshot.ego.position_m[:2])[0] > path.length_m - 3.0:
            done_s = snapshot.timestamp_s
            break
    return {"hits": hits, "min_speed": min(speeds), "done_s": done_s, "yielding_ticks": yielding}


@pytest.mark.parametrize("start_m", [0.0, 6.0, 12.0, 18.0])
@pytest.mark.parametrize("speed_mps", [7.0, 10.0])
def test_a_left_turn_waits_for_oncoming_traffic(start_m, speed_mps):
    """A new user's: the agent turned left across an oncoming car when it got there (it hit the car starting 6,
    12 and 18 m down the oncoming lane at 7 m/s); it waits, then turns."""
    oncoming = AgentSpec(1, "car", "follow_lane", lane=1, start_s_m=start_m, speed_mps=speed_mps)
    result = _drive(LEFT, [oncoming])
    assert not result["hits"]
    assert result["done_s"] is not None and result["yielding_ticks"] > 0


def test_a_left_turn_takes_a_gap_it_has():
    """An oncoming car far enough away is no reason to stop: the turn is taken at the turn's own speed."""
    result = _drive(LEFT, [AgentSpec(1, "car", "follow_lane", lane=1, start_s_m=0.0, speed_mps=3.0)])
    assert not result["hits"] and result["min_speed"] > 4.0 and result["yielding_ticks"] == 0


def test_a_stream_of_oncoming_cars_is_waited_out():
    cars = [AgentSpec(k + 1, "car", "follow_lane", lane=1, start_s_m=start, speed_mps=10.0)
            for k, start in enumerate((0.0, 15.0, 30.0))]
    result = _drive(LEFT, cars)
    assert not result["hits"] and result["done_s"] is not None


@pytest.mark.parametrize("route, start_xy_m", [(LEFT, (-6.0, 6.0)), (RIGHT, (-7.0, -6.0))])
def test_a_pedestrian_crossing_the_road_turned_into(route, start_xy_m):
    """A pedestrian on the crosswalk of the road the ego turns into (the old agent hit the one on the left turn's)."""
    walker = AgentSpec(1, "pedestrian", "cross", start_xy_m=start_xy_m, heading_rad=0.0, speed_mps=1.4,
                       distance_m=12.0, trigger_m=30.0)
    result = _drive(route, [walker])
    assert not result["hits"] and result["done_s"] is not None and result["yielding_ticks"] > 0


@pytest.mark.parametrize("lane, start_m", [(3, 8.0), (2, 14.0)])
def test_crossing_traffic_going_straight_through(lane, start_m):
    """A car crossing the junction as the ego goes straight through it (the old agent hit the one from the left)."""
    result = _drive(STRAIGHT, [AgentSpec(1, "car", "follow_lane", lane=lane, start_s_m=start_m, speed_mps=9.0)])
    assert not result["hits"] and result["done_s"] is not None


def test_it_stands_behind_a_car_stopped_round_the_corner():
    """A car standing in the lane the ego turns into is outside the straight corridor ahead: the agent stops behind
    it and holds (its cruise control's dead band had let it creep on into it at 0.3 m/s)."""
    stopped = AgentSpec(1, "car", "parked", start_xy_m=(1.75, 14.0), heading_rad=math.pi / 2)
    result = _drive(LEFT, [stopped], ticks=600)
    assert not result["hits"] and result["done_s"] is None and result["min_speed"] < 0.05


@pytest.mark.parametrize("name", ["cut_in", "lane_change"])
def test_traffic_along_the_route_is_the_cruise_controls(name):
    """Cars in the lanes beside the route, oncoming or merging, are never yielded to (the built-in scenarios drive
    as they did: their ego tracks were identical point for point)."""
    for seed in range(2):
        scenario = load_scenario(name, seed)
        _check_never_yields(scenario)


@pytest.mark.parametrize("radius_m", [30.0, 60.0, 120.0])
def test_oncoming_traffic_round_a_bend_is_not_yielded_to(radius_m):
    """An oncoming car's straight prediction on a bend crosses the ego's lane; its turn rate, over TURN_RATE_S,
    keeps it in its own (a one-tick rate is 0 or a jump on a lane's polyline: the agent braked for it)."""
    _check_never_yields(drive_scenario(curve(radius_m, style=Style(seed=0)), "drive", ""))
    _check_never_yields(drive_scenario(straight_road(200.0), "drive", ""))


def _check_never_yields(scenario) -> None:
    sim = EmbeddedSimulator(scenario.layout, scenario.ego, scenario.agents, seed=0)
    agent = BuiltinAgent(scenario.route_xy_m, scenario.target_speed_mps)
    limits = []
    original = agent._yield_limit_mps
    agent._yield_limit_mps = lambda *args: limits.append(original(*args)) or limits[-1]
    snapshot = sim.tick()
    for _ in range(scenario.max_ticks):
        sim.apply_control(agent.run_step({"world": (snapshot.frame, snapshot)}, snapshot.timestamp_s))
        snapshot = sim.tick()
    assert len(limits) == scenario.max_ticks and all(math.isinf(limit) for limit in limits)


def _state(agent_id, x, y, yaw_rad, speed_mps, size=(4.5, 1.9, 1.5)):
    return AgentState(agent_id, "car", size, pose_from_xyz_yaw(x, y, 0.0, yaw_rad), speed_mps)


def test_time_to_collision_leaves_out_one_that_crosses_out_of_the_corridor():
    """A car crossing the route ahead fast enough to be out of the corridor when the gap would close is not on a
    collision course (the criterion said 0.3-0.9 s for an oncoming car passing through the junction in front of an
    ego waiting to turn left); a slow one, still in it then, is; a car cutting in at a shallow angle is as before."""
    route = Path(np.array([[-50.0, 0.0], [50.0, 0.0]]))
    ego = _state(0, 0.0, 0.0, 0.0, 2.0)
    fast = _state(1, 8.0, 0.0, math.pi / 2, 8.0)  # across the route, 8 m ahead
    slow = _state(2, 8.0, 0.0, math.pi / 2, 0.3)
    assert time_to_collision(WorldSnapshot(1, 0.05, ego, (fast,)), route) == math.inf
    gap = 8.0 - 4.5  # less half the ego's length and half the car's
    assert time_to_collision(WorldSnapshot(1, 0.05, ego, (slow,)), route) == pytest.approx(gap / 2.0, rel=1e-3)
    shallow = _state(3, 10.0, 1.0, math.radians(-10.0), 5.0)  # cutting in at 10 degrees, faster than it crosses
    closing = 10.0 - 5.0 * math.cos(math.radians(10.0))
    assert time_to_collision(WorldSnapshot(1, 0.05, _state(0, 0.0, 0.0, 0.0, 10.0), (shallow,)), route) \
        == pytest.approx((10.0 - 4.5) / closing, rel=1e-3)
