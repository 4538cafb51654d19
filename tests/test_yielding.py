"""The built-in agent yields where another road user's way crosses its route (scenarios.agent.BuiltinAgent), and the
time-to-collision criterion does not count one crossing out of the ego's corridor (scenarios.base)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from carla_bridge.embedded import AgentSpec, EgoStart, EmbeddedSimulator
from neural_sensor.scene.layout import Style, curve, intersection
from neural_sensor.scene.path import Path
from neural_sensor.world import AgentState, WorldSnapshot, pose_from_xyz_yaw
from scenarios.agent import BuiltinAgent
from scenarios.base import lane_route, time_to_collision, turn_route
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


@pytest.mark.parametrize("route, lane, start_m", [(RIGHT, 3, 18.0), (LEFT, 2, 12.0)])
def test_traffic_coming_through_the_lane_it_turns_into(route, lane, start_m):
    """The reviewer's: a car coming along the crossing road, through the junction and on in the lane the ego turns
    into, was skipped as a car merging ahead (it moves the route's way where it reaches it) and hit: now the place
    where it reaches the route is passed with YIELD_GAP_S to spare, or after it."""
    result = _drive(route, [AgentSpec(1, "car", "follow_lane", lane=lane, start_s_m=start_m, speed_mps=7.0)])
    assert not result["hits"] and result["done_s"] is not None and result["yielding_ticks"] > 0


def test_it_brakes_as_hard_as_a_walker_stepping_out_needs():
    """The reviewer's: a pedestrian stepping out 10 m ahead; the cruise control's brake eased off as the speed fell
    and, the ego's nose in the walker's way, the yield let go (full throttle): it stops short now."""
    walker = AgentSpec(1, "pedestrian", "cross", start_xy_m=(-6.0, -6.0), heading_rad=math.pi / 2, speed_mps=1.6,
                       distance_m=12.0, trigger_m=10.0)
    result = _drive(STRAIGHT, [walker])
    assert not result["hits"] and result["min_speed"] < 0.05 and result["done_s"] is not None


def test_cars_beside_the_route_are_not_yielded_to():
    """Cars in the lane beside the route, ahead (merging in: followed once in) or behind (nothing the ego could do
    on a fixed route), are not yielded to: lane_change's ego track is as it was, point for point."""
    for seed in range(2):
        _check_never_yields(load_scenario("lane_change", seed))


def test_a_cut_in_is_followed_from_when_it_enters_the_route():
    """cut_in: the car pulling in is followed from when its box reaches the route's corridor (a tick or two before
    the straight look along the ego's heading sees it): every criterion passes, the closest time to collision 78 s
    and more (was 3.6-5.2 s)."""
    from scenarios.base import CriteriaState

    for seed in range(2):
        scenario = load_scenario("cut_in", seed)
        sim = EmbeddedSimulator(scenario.layout, scenario.ego, scenario.agents, seed=seed)
        agent = BuiltinAgent(scenario.route_xy_m, scenario.target_speed_mps)
        criteria = CriteriaState(scenario)
        snapshot = sim.tick()
        for _ in range(scenario.max_ticks):
            criteria.update(snapshot)
            sim.apply_control(agent.run_step({"world": (snapshot.frame, snapshot)}, snapshot.timestamp_s))
            snapshot = sim.tick()
        results = criteria.results()
        assert all(results[name]["passed"] for name in ("collision", "route_completion", "min_time_to_collision"))
        assert results["min_time_to_collision"]["value_s"] is None or results["min_time_to_collision"]["value_s"] > 10


@pytest.mark.parametrize("radius_m", [30.0, 60.0, 120.0])
@pytest.mark.parametrize("lanes_per_direction", [1, 2])
def test_oncoming_traffic_round_a_bend_is_not_yielded_to(radius_m, lanes_per_direction):
    """An oncoming car's straight prediction on a bend crosses the ego's lane; its turn rate over TURN_RATE_S keeps
    it in its own (a one-tick rate is 0 or a jump on a lane's polyline). Both ways round, several starts and speeds
    (the reviewer's sweep found phantom yields with a 0.5 s turn-rate window, since removed)."""
    layout = curve(radius_m, lanes_per_direction=lanes_per_direction, style=Style(seed=0))
    for ego_lane, lane in enumerate(layout.lanes):
        length_m = Path(lane.travel_polyline()).length_m
        route = lane_route(layout, ego_lane, 2.0, length_m - 4.0)
        for other, oncoming in enumerate(layout.lanes):
            if oncoming.direction == lane.direction:
                continue
            for start_m in np.arange(0.0, Path(oncoming.travel_polyline()).length_m - 5.0, 12.0):
                for speed_mps in (6.0, 10.0):
                    spec = AgentSpec(1, "car", "follow_lane", lane=other, start_s_m=float(start_m), speed_mps=speed_mps)
                    scenario_ego = EgoStart(lane=ego_lane, start_s_m=2.0, speed_mps=8.0)
                    _check_never_yields_to(layout, scenario_ego, [spec], route, ticks=120)


def _check_never_yields(scenario) -> None:
    _check_never_yields_to(scenario.layout, scenario.ego, scenario.agents, scenario.route_xy_m,
                           ticks=scenario.max_ticks, target_mps=scenario.target_speed_mps)


def _check_never_yields_to(layout, ego, agents, route, ticks: int, target_mps: float = 10.0) -> None:
    """Drive the built-in agent; a second one, fed the same snapshots, says its yield limit (all agents counted,
    the cruise control's too): it must never bind."""
    sim = EmbeddedSimulator(layout, ego, agents, seed=0)
    agent, probe = BuiltinAgent(route, target_mps), BuiltinAgent(route, target_mps)
    snapshot = sim.tick()
    for _ in range(ticks):
        s_m = probe.route.project(snapshot.ego.position_m[:2])[0]
        assert math.isinf(probe._yield_limit_mps(snapshot, s_m, snapshot.ego.speed_mps, target_mps, set())), \
            snapshot.timestamp_s
        sim.apply_control(agent.run_step({"world": (snapshot.frame, snapshot)}, snapshot.timestamp_s))
        snapshot = sim.tick()


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


def _scattered(n: int, seed: int):
    """n cars at random places, headings, speeds and turn rates round a 400 m route along x, seen for 2 s."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform([-50, -120], [350, 120], size=(n, 2))
    yaw, v, rate = rng.uniform(-math.pi, math.pi, n), rng.uniform(0, 14, n), rng.uniform(-0.3, 0.3, n)
    ego = AgentState(0, "car", (4.6, 1.9, 1.5), pose_from_xyz_yaw(100.0, 0.0, 0.0, 0.0), 9.0)
    return [WorldSnapshot(k, t, ego, tuple(
        AgentState(i + 1, "truck" if i % 7 == 0 else "car", (12.0, 2.5, 3.5) if i % 7 == 0 else (4.6, 1.9, 1.5),
                   pose_from_xyz_yaw(xy[i, 0] + v[i] * t * math.cos(yaw[i]), xy[i, 1] + v[i] * t * math.sin(yaw[i]),
                                     0.0, yaw[i] + rate[i] * t), v[i]) for i in range(n)))
            for k, t in enumerate((0.0, 1.0, 2.0))]


@pytest.mark.parametrize("seed", range(6))
def test_the_prefilter_leaves_the_yield_as_the_full_search_has_it(seed, monkeypatch):
    """Agents that cannot reach the route's corridor within the horizon are left out before the search (hundreds
    of agents took 24 ms a step, now 8): with and without that, the same speed limit and the same room to stop."""
    route = np.stack([np.linspace(0.0, 400.0, 401), np.zeros(401)], axis=1)
    results = []
    for prefilter in (True, False):
        monkeypatch.setattr("scenarios.agent._PREFILTER", prefilter)
        found = []
        for n in (40, 200):
            snapshots = _scattered(n, seed)
            agent = BuiltinAgent(route, 10.0)
            for snapshot in snapshots[:2]:
                agent.run_step({"world": (snapshot.frame, snapshot)}, snapshot.timestamp_s)
            for speed_mps in (0.0, 9.0, 14.0):
                seen = {key: list(value) for key, value in agent._seen.items()}
                found.append((agent._yield_limit_mps(snapshots[2], 100.0, speed_mps, 10.0, set()),
                              agent._yield_room_m))
                agent._seen = seen
        results.append(found)
    assert results[0] == results[1]
    assert any(limit < math.inf for limit, _ in results[0])  # (some of them yield: the comparison means something)


def test_a_fast_car_from_far_off_is_still_yielded_to():
    """A car 45 m from the route coming at it at 10 m/s meets the ego where it will be: it is not filtered out."""
    route = np.stack([np.linspace(0.0, 200.0, 201), np.zeros(201)], axis=1)
    agent = BuiltinAgent(route, 10.0)
    for k, t in enumerate((0.0, 1.0, 2.0)):
        ego = AgentState(0, "car", (4.6, 1.9, 1.5), pose_from_xyz_yaw(9.0 * t, 0.0, 0.0, 0.0), 9.0)
        car = AgentState(1, "car", (4.6, 1.9, 1.5), pose_from_xyz_yaw(58.0, -65.0 + 10.0 * t, 0.0, math.pi / 2), 10.0)
        snapshot = WorldSnapshot(k, t, ego, (car,))
        if k < 2:
            agent.run_step({"world": (snapshot.frame, snapshot)}, t)
    assert agent._yield_limit_mps(snapshot, 18.0, 9.0, 10.0, set()) < math.inf  # (it can still stop later)
    assert 35.0 < agent._yield_room_m < 40.0  # its front 40 m from the car's way, less the car's half-width
