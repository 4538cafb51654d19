"""Traffic keeps its distance from what is ahead on its lane or route (carla_bridge.embedded: the intelligent driver
model in `EmbeddedSimulator._traffic_accel_mps2`), unless an agent is told not to (`keep_gap=False`)."""

from __future__ import annotations

import numpy as np
import pytest

from carla_bridge.embedded import TRAFFIC_STANDSTILL_M, AgentSpec, EgoStart, EmbeddedSimulator, _obb_overlap
from carla_bridge.simulator import VehicleControl
from neural_sensor.scene.layout import intersection, straight_road
from scenarios.base import turn_route

ROAD = straight_road(200.0)  # lanes 0 and 1 run +x, 2 and 3 -x
CROSSING = intersection()  # lanes: 0 along +x, 1 along -x, 2 along +y, 3 along -y


def _gap_m(a, b) -> float:
    """Bumper to bumper along x of two boxes headed along x (a behind b)."""
    return float(b.position_m[0] - a.position_m[0] - 0.5 * (a.size_m[0] + b.size_m[0]))


def _run(sim, ticks: int, control=VehicleControl(brake=1.0)):
    snapshots = []
    for _ in range(ticks):
        sim.apply_control(control)
        snapshots.append(sim.tick())
    return snapshots


@pytest.mark.parametrize("speed_mps", [6.0, 10.0, 14.0])
def test_a_car_behind_a_standing_ego_stops_behind_it(speed_mps):
    """A user's ego waiting (for a gap, a walker, a left turn) was driven into by the traffic behind it, and the
    collision failed the ego's scenario: the car behind now stands TRAFFIC_STANDSTILL_M behind it."""
    follower = AgentSpec(1, "car", "follow_lane", lane=0, start_s_m=5.0, speed_mps=speed_mps)
    sim = EmbeddedSimulator(ROAD, EgoStart(lane=0, start_s_m=80.0), [follower], seed=0)
    snapshots = _run(sim, 400)
    assert not any(s.collisions for s in snapshots)
    last = snapshots[-1]
    assert last.agents[0].speed_mps < 0.05
    assert _gap_m(last.agents[0], last.ego) == pytest.approx(TRAFFIC_STANDSTILL_M, abs=0.6)
    assert min(_gap_m(s.agents[0], s.ego) for s in snapshots) > 1.0


def test_keep_gap_false_drives_on_as_scripted():
    """A scripted adversary drives at its speed whatever is there (the ego's collision is reported)."""
    follower = AgentSpec(1, "car", "follow_lane", lane=0, start_s_m=5.0, speed_mps=10.0, keep_gap=False)
    sim = EmbeddedSimulator(ROAD, EgoStart(lane=0, start_s_m=80.0), [follower], seed=0)
    snapshots = _run(sim, 200)
    assert any(1 in s.collisions for s in snapshots)
    assert {round(a.speed_mps, 9) for s in snapshots for a in s.agents} == {round(snapshots[0].agents[0].speed_mps, 9)}


def test_with_nothing_ahead_traffic_drives_its_speed_exactly():
    """Nothing in its way (the ego in the next lane, an oncoming car in its own): as before, bit for bit."""
    specs = [AgentSpec(1, "car", "follow_lane", lane=1, start_s_m=0.0, speed_mps=9.0),
             AgentSpec(2, "car", "follow_lane", lane=2, start_s_m=0.0, speed_mps=9.0)]
    sim = EmbeddedSimulator(ROAD, EgoStart(lane=0, start_s_m=40.0, speed_mps=3.0), specs, seed=3)
    first = sim.tick()
    speeds = [a.speed_mps for a in first.agents]
    for k, snapshot in enumerate(_run(sim, 150, VehicleControl()), start=1):
        for agent, speed, spec in zip(snapshot.agents, speeds, specs):
            assert agent.speed_mps == speed
            expected = sim.lanes[spec.lane].at(spec.start_s_m + speed * 0.05 * k)[0]
            np.testing.assert_allclose(agent.position_m[:2], expected, atol=1e-9)


def test_a_faster_car_follows_a_slower_one_at_its_speed():
    """Two cars on one lane: the faster one behind closes up and follows at the slower one's speed, a time gap
    behind, never touching (before, it drove through it)."""
    specs = [AgentSpec(1, "car", "follow_lane", lane=1, start_s_m=40.0, speed_mps=5.0),
             AgentSpec(2, "truck", "follow_lane", lane=1, start_s_m=5.0, speed_mps=12.0)]
    sim = EmbeddedSimulator(ROAD, EgoStart(lane=3, start_s_m=5.0), specs, seed=0)
    snapshots = _run(sim, 500)
    for snapshot in snapshots:
        lead, truck = snapshot.agents
        assert not _obb_overlap(lead, truck)
    lead, truck = snapshots[-1].agents
    assert truck.speed_mps == pytest.approx(lead.speed_mps, abs=0.1)
    assert TRAFFIC_STANDSTILL_M < _gap_m(truck, lead) < TRAFFIC_STANDSTILL_M + 2.0 * lead.speed_mps


def test_traffic_turning_into_the_lane_the_ego_stands_in_waits_behind_it():
    """A follow_route car turning left into the lane the ego stands in stops behind the ego round the corner."""
    turning = AgentSpec(1, "car", "follow_route", route_xy_m=turn_route(CROSSING, 1, 3, 20.0, 60.0),
                        speed_mps=7.0)
    sim = EmbeddedSimulator(CROSSING, EgoStart(lane=3, start_s_m=68.0), [turning], seed=0)
    snapshots = _run(sim, 300)
    assert not any(s.collisions for s in snapshots)
    assert snapshots[-1].agents[0].speed_mps < 0.05
    ego, car = snapshots[-1].ego, snapshots[-1].agents[0]
    assert 0.0 < car.position_m[1] - ego.position_m[1] - 0.5 * (car.size_m[0] + ego.size_m[0]) < 3.0


def test_a_car_waits_for_a_walker_on_the_crosswalk():
    walker = AgentSpec(2, "pedestrian", "cross", start_xy_m=(60.0, -8.0), heading_rad=np.pi / 2, speed_mps=1.0,
                       distance_m=16.0, trigger_m=200.0)
    car = AgentSpec(1, "car", "follow_lane", lane=0, start_s_m=20.0, speed_mps=8.0)
    sim = EmbeddedSimulator(ROAD, EgoStart(lane=3, start_s_m=5.0), [car, walker], seed=0)
    snapshots = _run(sim, 400)
    assert min(s.agents[0].speed_mps for s in snapshots) < 0.5  # it stood for the walker
    assert not any(_obb_overlap(s.agents[0], s.agents[1]) for s in snapshots)
    assert snapshots[-1].agents[0].position_m[0] > 70.0  # and went on once the walker had crossed


def test_a_cut_in_car_looks_along_the_lane_it_moves_into():
    """Once its cut-in has begun, a car slows for what is ahead in the lane it moves into."""
    cutter = AgentSpec(1, "car", "cut_in", lane=1, start_s_m=30.0, speed_mps=10.0, target_lane=0, trigger_m=40.0,
                       duration_s=2.0)
    slow = AgentSpec(2, "car", "follow_lane", lane=0, start_s_m=50.0, speed_mps=3.0)
    sim = EmbeddedSimulator(ROAD, EgoStart(lane=0, start_s_m=5.0), [cutter, slow], seed=0)
    snapshots = _run(sim, 300)
    assert not any(_obb_overlap(s.agents[0], s.agents[1]) for s in snapshots)
    assert snapshots[-1].agents[0].speed_mps == pytest.approx(snapshots[-1].agents[1].speed_mps, abs=0.2)


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_keep_gap_must_be_a_bool(bad):
    with pytest.raises(ValueError, match="keep_gap must be True or False"):
        AgentSpec(1, "car", "follow_lane", keep_gap=bad)
