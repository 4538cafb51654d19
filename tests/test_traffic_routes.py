"""Traffic that turns: the embedded simulator's follow_route behaviour (carla_bridge.embedded.AgentSpec)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from carla_bridge.embedded import AgentSpec, EgoStart, EmbeddedSimulator
from neural_sensor.scene.layout import intersection
from neural_sensor.scene.path import Path
from scenarios.base import Scenario, lane_route, turn_route

LAYOUT = intersection()  # lanes: 0 along +x (y -1.75), 1 along -x (y +1.75), 2 along +y (x +1.75), 3 along -y


def test_a_follow_route_agent_drives_its_route_through_the_junction():
    """follow_lane traffic could not turn (a lane does not continue into the next road): a follow_route car takes
    the left turn it is given, at its speed, headed along it, and goes on past its end along its last heading."""
    route = turn_route(LAYOUT, 1, 3, 20.0, 60.0)  # from the +x arm, left into the -y arm
    spec = AgentSpec(1, "car", "follow_route", route_xy_m=route, start_s_m=5.0, speed_mps=8.0,
                     keep_gap=False)  # (its scripted speed, so its place is known: it slows for the turn otherwise)
    sim = EmbeddedSimulator(LAYOUT, EgoStart(lane=0, start_s_m=5.0), [spec], seed=0)
    path = Path(route)
    first = sim.tick().agents[0]
    np.testing.assert_allclose(first.position_m[:2], path.at(5.0)[0], atol=1e-9)
    speed = first.speed_mps
    assert 0.95 * 8.0 <= speed <= 1.05 * 8.0  # the seeded traffic variation
    headings = []
    for k in range(1, 161):  # 8 s
        agent = sim.tick().agents[0]
        s_m = 5.0 + speed * 0.05 * k
        expected, heading = path.at(s_m)
        np.testing.assert_allclose(agent.position_m[:2], expected, atol=1e-6)
        assert agent.yaw_rad == pytest.approx(heading)
        headings.append(agent.yaw_rad)
    assert math.remainder(headings[-1] - first.yaw_rad, 2 * math.pi) == pytest.approx(math.pi / 2, abs=0.05)
    assert s_m > path.length_m  # past its end: on along its last heading
    assert agent.position_m[1] < -10.0 and abs(agent.position_m[0] + 1.75) < 0.05


@pytest.mark.parametrize("kwargs, match", [
    ({"behaviour": "follow_route"}, "route_xy_m is what a 'follow_route' agent drives"),
    ({"behaviour": "follow_lane", "route_xy_m": [[0.0, 0.0], [5.0, 0.0]]}, "got behaviour 'follow_lane' with route"),
    ({"behaviour": "follow_route", "route_xy_m": [[0.0, 0.0]]}, r"must be \[P >= 2, 2\] finite"),
    ({"behaviour": "follow_route", "route_xy_m": [[0.0, 0.0], [float("nan"), 1.0]]}, r"must be \[P >= 2, 2\]"),
    ({"behaviour": "follow_route", "route_xy_m": [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]}, r"got shape \(2, 3\)"),
    ({"behaviour": "follow_route", "route_xy_m": "north"}, r"must be \[P >= 2, 2\]"),
    ({"behaviour": "follow_route", "route_xy_m": [[1.0, 1.0], [1.0, 1.0]]}, "has no length"),
])
def test_a_bad_route_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AgentSpec(1, "car", **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"start_s_m": 500.0}, "start_s_m 500 is not on its route"),
    ({"lane": 2}, "lane and start_xy_m are not its"),
    ({"start_xy_m": (0.0, 0.0)}, "lane and start_xy_m are not its"),
])
def test_a_follow_route_agent_placed_wrong_is_named(kwargs, match):
    spec = AgentSpec(1, "car", "follow_route", route_xy_m=lane_route(LAYOUT, 1, 0.0, 50.0), **kwargs)
    with pytest.raises(ValueError, match=match):
        EmbeddedSimulator(LAYOUT, EgoStart(lane=0, start_s_m=5.0), [spec])


@pytest.mark.parametrize("route, match", [
    ([[0.0, 0.0], [0.0, 500.0]], r"goes 4[0-9][0-9]\.[0-9] m from the nearest lane's centre line at \[0.0, 500.0\]"),
    ([[-30.0, -1.75], [-20.0, -1.75], [-1.75, -20.0], [-1.75, -30.0]], r"goes [0-9.]+ m from .* at \[-[0-9.]+, -[0-9.]+\]"),
])
def test_a_route_off_the_road_is_refused(route, match):
    """A route had only to come within 60 m of a lane's points: one cutting a junction's corner through the
    buildings passed, and one along a lane whose points are 300 m apart was refused (the reviewer's)."""
    with pytest.raises(ValueError, match=match):
        EmbeddedSimulator(LAYOUT, EgoStart(lane=0, start_s_m=5.0),
                          [AgentSpec(1, "car", "follow_route", route_xy_m=np.array(route))])


def test_a_route_along_a_sparse_lane_is_taken():
    from neural_sensor.scene.layout import Lane, Layout

    sparse = Layout([Lane(np.array([[0.0, 0.0], [300.0, 0.0]])), Lane(np.array([[300.0, 3.5], [0.0, 3.5]]))])
    along = np.stack([np.arange(10.0, 290.0, 1.0), np.zeros(280)], axis=1)
    sim = EmbeddedSimulator(sparse, EgoStart(lane=1, start_s_m=5.0),
                            [AgentSpec(1, "car", "follow_route", route_xy_m=along)])
    assert sim.tick().agents[0].position_m[0] == pytest.approx(10.0)


@pytest.mark.parametrize("from_lane, to_lane, start_m", [(3, 0, 20.0), (2, 1, 15.0)])
def test_the_builtin_agent_waits_for_a_car_turning_across_its_way(from_lane, to_lane, start_m):
    """A scenario's turning traffic from the crossing road, through the junction across the ego's lane (the agent
    that yielded to nobody hit both), is waited for: no collision, and the ego gets through."""
    from scenarios.agent import BuiltinAgent
    from scenarios.base import CriteriaState

    turning = turn_route(LAYOUT, from_lane, to_lane, start_m, 80.0)
    scenario = Scenario("turning_traffic", "", LAYOUT, EgoStart(lane=0, start_s_m=10.0, speed_mps=8.0),
                        [AgentSpec(1, "car", "follow_route", route_xy_m=turning, speed_mps=7.0)],
                        lane_route(LAYOUT, 0, 10.0, 100.0), target_speed_mps=9.0, max_ticks=400)
    sim = EmbeddedSimulator(scenario.layout, scenario.ego, scenario.agents, seed=0)
    agent = BuiltinAgent(scenario.route_xy_m, scenario.target_speed_mps)
    criteria = CriteriaState(scenario)
    snapshot = sim.tick()
    for _ in range(scenario.max_ticks):
        criteria.update(snapshot)
        if criteria.route_end_reached:
            break
        sim.apply_control(agent.run_step({"world": (snapshot.frame, snapshot)}, snapshot.timestamp_s))
        snapshot = sim.tick()
    results = criteria.results()
    assert results["collision"]["passed"] and results["route_completion"]["passed"], results
