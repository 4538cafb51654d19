"""Traffic keeps its distance from what is ahead on its lane or route (carla_bridge.embedded: the intelligent driver
model in `EmbeddedSimulator._traffic_accel_mps2`), unless an agent is told not to (`keep_gap=False`)."""

from __future__ import annotations

import numpy as np
import pytest

from carla_bridge.embedded import TRAFFIC_STANDSTILL_M, AgentSpec, EgoStart, EmbeddedSimulator, _obb_overlap
from carla_bridge.simulator import VehicleControl
from neural_sensor.scene.layout import curve, intersection, straight_road
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


def test_a_standing_ego_past_the_end_of_the_lane_is_not_driven_into():
    """A review's: a lane ends at the junction, and what stood more than ~2 m past its end read as beside the lane
    (its end point the nearest place): an ego waiting 6 m into the junction was hit at full speed. The way goes on
    past the end along the last heading, as the agents do."""
    follower = AgentSpec(1, "car", "follow_lane", lane=0, start_s_m=150.0, speed_mps=10.0)
    sim = EmbeddedSimulator(ROAD, EgoStart(lane=0, start_s_m=199.0), [follower], seed=0)
    for _ in range(300):
        sim.set_ego_state(np.array([206.0, -1.75]), 0.0, 0.0)
        snapshot = sim.tick()
        assert not _obb_overlap(snapshot.agents[0], snapshot.ego)
    assert snapshot.agents[0].speed_mps < 0.05 and snapshot.agents[0].position_m[0] > 195.0


def test_two_cars_past_the_end_of_their_lane_keep_their_gap():
    specs = [AgentSpec(1, "car", "follow_lane", lane=0, start_s_m=195.0, speed_mps=2.0),
             AgentSpec(2, "car", "follow_lane", lane=0, start_s_m=170.0, speed_mps=6.0)]
    sim = EmbeddedSimulator(ROAD, EgoStart(lane=3, start_s_m=5.0), specs, seed=0)
    for snapshot in _run(sim, 600):
        assert not _obb_overlap(*snapshot.agents)
    assert snapshot.agents[1].speed_mps == pytest.approx(snapshot.agents[0].speed_mps, abs=0.1)


def test_wide_trucks_in_narrow_lanes_pass_each_other_and_a_slower_one_beside():
    """A review's: two 2.5 m trucks in 2.75 m lanes, oncoming in the lanes either side of the centre line, took
    each other for head-on traffic in their own lane and stood nose to nose for good (and a truck in the next lane
    held back the one beside it): moving traffic counts with its centre in the agent's way."""
    road = straight_road(200.0, lane_width_m=2.75)
    specs = [AgentSpec(1, "truck", "follow_lane", lane=0, start_s_m=40.0, speed_mps=8.0),
             AgentSpec(2, "truck", "follow_lane", lane=2, start_s_m=40.0, speed_mps=8.0),
             AgentSpec(3, "truck", "follow_lane", lane=1, start_s_m=60.0, speed_mps=4.0)]
    sim = EmbeddedSimulator(road, EgoStart(lane=3, start_s_m=190.0), specs, seed=0)
    first = sim.tick()
    last = _run(sim, 400)[-1]
    assert [a.speed_mps for a in last.agents] == [a.speed_mps for a in first.agents]


def test_wide_trucks_in_narrow_lanes_on_a_curve_pass_each_other_and_a_slower_one_beside():
    """The same trucks on a bend: traffic whose lane turns is placed along it ahead (`_enters_along_own_way`), and
    counted there by its box stood them nose to nose again (a review's); moving along the way it counts by its
    centre there too."""
    road = curve(60.0, 90.0, lanes_per_direction=2, lane_width_m=2.75)
    specs = [AgentSpec(1, "truck", "follow_lane", lane=0, start_s_m=10.0, speed_mps=8.0),
             AgentSpec(2, "truck", "follow_lane", lane=2, start_s_m=10.0, speed_mps=8.0),
             AgentSpec(3, "truck", "follow_lane", lane=1, start_s_m=20.0, speed_mps=4.0)]
    sim = EmbeddedSimulator(road, EgoStart(lane=3, start_s_m=80.0), specs, seed=0)
    first = sim.tick()
    snapshots = _run(sim, 200)
    assert all(a.speed_mps == b.speed_mps for s in snapshots for a, b in zip(s.agents, first.agents))


def test_the_carla_ego_backing_up_is_closing_on_the_traffic_behind():
    """Under --carla the ego's speed came as the velocity's length: backing towards the car behind it read as
    pulling away. It is signed along the ego's heading now (as the embedded ego's)."""
    from carla_bridge.carla_world import CarlaSimulator
    from carla_bridge.standin import StandInClient

    layout = straight_road(120.0, buildings=False)
    layout.objects.clear()
    follower = AgentSpec(1, "car", "follow_lane", lane=0, start_s_m=30.0, speed_mps=4.0)
    sim = CarlaSimulator(StandInClient(), layout, EgoStart(lane=0, start_s_m=45.0), [follower], seed=0)
    sim.tick()
    for _ in range(20):
        sim.apply_control(VehicleControl(throttle=0.6, reverse=True))
        sim.tick()
    assert sim._behaviours._ego["speed"] < -0.5
    sim.close()


def _closest_approach(sim, ticks: int) -> tuple[int, dict]:
    """Ticks in which two agents overlap, and each agent's ticks standing at the end (None: moving)."""
    overlapping, standing = 0, {}
    for _ in range(ticks):
        sim.apply_control(VehicleControl(brake=1.0))
        snapshot = sim.tick()
        agents = snapshot.agents
        overlapping += sum(_obb_overlap(a, b) for i, a in enumerate(agents) for b in agents[i + 1:])
        for agent in agents:
            standing[agent.agent_id] = (standing.get(agent.agent_id) or 0) + 1 if agent.speed_mps < 0.05 else None
    return overlapping, standing


@pytest.mark.parametrize("offset_m", [0.0, 1.0, 2.0, 3.0, 5.0])
def test_two_cars_turning_left_from_opposite_sides_neither_meet_nor_stand_for_good(offset_m):
    """A new user's: two cars turning left from opposite sides locked in the junction, each in the other's way,
    for good (and the ego waiting behind them failed its route). The one the other is less squarely in the way of
    goes on."""
    specs = [AgentSpec(1, "car", "follow_route", route_xy_m=turn_route(CROSSING, 2, 1, 20.0, 80.0), speed_mps=6.0),
             AgentSpec(2, "car", "follow_route", route_xy_m=turn_route(CROSSING, 3, 0, 20.0 + offset_m, 80.0),
                       speed_mps=6.0)]
    sim = EmbeddedSimulator(CROSSING, EgoStart(lane=3, start_s_m=2.0), specs, seed=0)
    overlapping, standing = _closest_approach(sim, 600)
    assert overlapping == 0 and all(ticks is None for ticks in standing.values())


@pytest.mark.parametrize("offset_m", [-5.0, -3.0, -1.0, 0.0, 2.0, 4.0])
def test_cars_crossing_the_junction_let_each_other_through(offset_m):
    """Two cars through the junction on crossing roads: the one crossing the other's way is seen 2 s before it gets
    there, and the pair (each in the other's way) is resolved: no contact, no one left standing."""
    specs = [AgentSpec(1, "car", "follow_lane", lane=0, start_s_m=30.0, speed_mps=8.0),
             AgentSpec(2, "car", "follow_lane", lane=2, start_s_m=30.0 + offset_m, speed_mps=8.0)]
    sim = EmbeddedSimulator(CROSSING, EgoStart(lane=3, start_s_m=2.0), specs, seed=0)
    overlapping, standing = _closest_approach(sim, 400)
    assert overlapping == 0 and all(ticks is None for ticks in standing.values())


def test_three_cars_each_in_the_next_ones_way_do_not_stand_for_good():
    """A new user's junction: a truck going straight, a car turning left across it and a car coming up the crossing
    road stood in a ring, each waiting for the next, for good; the ring is broken."""
    specs = [AgentSpec(4, "truck", "follow_lane", lane=1, start_s_m=24.0, speed_mps=7.0),
             AgentSpec(6, "car", "follow_route", route_xy_m=turn_route(CROSSING, 3, 0, 20.0, 90.0), speed_mps=7.5),
             AgentSpec(7, "car", "follow_lane", lane=2, start_s_m=15.0, speed_mps=8.0)]
    sim = EmbeddedSimulator(CROSSING, EgoStart(lane=3, start_s_m=2.0), specs, seed=0)
    overlapping, standing = _closest_approach(sim, 600)
    assert overlapping == 0 and all(ticks is None for ticks in standing.values())


def test_ring_finds_a_cycle_of_who_waits_for_whom():
    from carla_bridge.embedded import _ring

    assert _ring({1: 2, 2: 3, 3: None}) == []
    assert sorted(_ring({1: 2, 2: 3, 3: 1, 4: 1})) == [1, 2, 3]
    assert _ring({5: 0, 6: 5}) == []  # (0: the ego, who is no follower)
    assert sorted(_ring({1: 2, 2: 1})) == [1, 2]


def test_turning_traffic_slows_for_its_turn():
    """A new user's: a follow_route car took a 6 m corner at 7 m/s (8 m/s^2 across); now no faster than 3 m/s^2
    across allows (the route's curvature from its heading over +-2 m), and back to its speed after."""
    from neural_sensor.scene.path import Path

    route = turn_route(CROSSING, 1, 3, 20.0, 60.0)
    path = Path(route)
    stations = np.arange(0.0, path.length_m, 0.5)
    curvature = np.abs(np.gradient(np.unwrap(path.chord_headings(stations, 2.0)), stations))
    sim = EmbeddedSimulator(CROSSING, EgoStart(lane=0, start_s_m=5.0),
                            [AgentSpec(1, "car", "follow_route", route_xy_m=route, speed_mps=7.0)], seed=0)
    first = sim.tick().agents[0]
    lateral, speeds = [], []
    for snapshot in _run(sim, 260, VehicleControl()):
        agent = snapshot.agents[0]
        speeds.append(agent.speed_mps)
        lateral.append(agent.speed_mps ** 2 * np.interp(path.project(agent.position_m[:2])[0], stations, curvature))
    assert max(lateral) < 3.5 and 1.0 / curvature.max() < 7.0  # (a tight corner; 3 m/s^2 on the 1 m stations)
    assert min(speeds) < 4.5 and speeds[-1] == pytest.approx(first.speed_mps, abs=0.05)


def test_a_ring_is_not_broken_into_a_car_standing_in_the_way():
    """A review's: of a ring, the one let go was the one whose lead was farthest across its way, even where that
    lead stood in it already: two cars turning left from opposite sides, one fast, one slow, and the released one
    drove into the other standing. Only one whose lead is not yet in its way (predicted to come), or whose box it
    would pass clear of, is let go. (These two end nose to the other's side in the junction, each squarely in the
    other's way: they stand there, a jam, rather than drive into each other; README "What does not work yet".)"""
    specs = [AgentSpec(1, "car", "follow_route", route_xy_m=turn_route(CROSSING, 0, 2, 30.0, 80.0), speed_mps=10.0),
             AgentSpec(2, "car", "follow_route", route_xy_m=turn_route(CROSSING, 1, 3, 37.5, 80.0), speed_mps=6.0)]
    sim = EmbeddedSimulator(CROSSING, EgoStart(lane=3, start_s_m=2.0), specs, seed=0)
    overlapping, _ = _closest_approach(sim, 600)
    assert overlapping == 0


def test_a_cut_in_car_that_has_not_begun_is_traffic_in_its_own_lane():
    """A review's: a cut_in agent counted as crossing from the start, so in 2.75 m lanes a truck was held back
    behind one still in the next lane (4.9 m/s against its 12)."""
    road = straight_road(400.0, lane_width_m=2.75)
    specs = [AgentSpec(1, "truck", "cut_in", lane=1, start_s_m=120.0, speed_mps=5.0, target_lane=0, trigger_m=0.0),
             AgentSpec(2, "truck", "follow_lane", lane=0, start_s_m=60.0, speed_mps=12.0)]
    sim = EmbeddedSimulator(road, EgoStart(lane=3, start_s_m=5.0), specs, seed=0)
    first = sim.tick()
    assert min(s.agents[1].speed_mps for s in _run(sim, 400)) == first.agents[1].speed_mps


def test_a_car_cutting_in_drives_on_past_its_target_lanes_end():
    """A cut_in car that reached the end of the lane it moved into froze there while reporting its speed (a stack
    reading its velocity saw it move): it now goes on along that lane's last heading, as a follow_lane car does."""
    spec = AgentSpec(1, "car", "cut_in", lane=1, target_lane=0, start_s_m=150.0, speed_mps=10.0, trigger_m=100.0,
                     duration_s=2.0, keep_gap=False)
    sim = EmbeddedSimulator(ROAD, EgoStart(lane=0, start_s_m=120.0), [spec], seed=0)
    snapshots = _run(sim, 160)
    end_x = sim.lanes[0].points[-1, 0]
    speed = snapshots[-1].agents[0].speed_mps
    assert snapshots[-1].agents[0].position_m[0] > end_x + 20.0
    for before, after in zip(snapshots[100:], snapshots[101:]):  # well past the end: it moves as it says
        moved_m = np.linalg.norm(after.agents[0].position_m[:2] - before.agents[0].position_m[:2])
        assert moved_m == pytest.approx(speed * sim.dt_s, rel=1e-6)
        assert after.agents[0].position_m[1] == pytest.approx(sim.lanes[0].points[-1, 1], abs=1e-6)


def test_path_at_many_is_at_for_each_arc_length():
    """The vectorised lookup the traffic's prediction uses, against the scalar one (beyond both ends too)."""
    from neural_sensor.scene.path import Path

    path = Path(turn_route(CROSSING, 0, 2, 20.0, 60.0))
    s_m = np.array([-5.0, 0.0, 0.3, 17.2, 33.3, path.length_m, path.length_m + 12.0])
    xy, heading = path.at_many(s_m)
    for i, s in enumerate(s_m):
        point, yaw = path.at(float(s))
        np.testing.assert_allclose(xy[i], point[:2], atol=1e-12)
        assert heading[i] == pytest.approx(yaw, abs=1e-12)


@pytest.mark.parametrize("start_s_m", [25.0, 30.0, 35.0])
def test_a_car_going_straight_drives_on_past_one_turning_out_of_its_way(start_s_m):
    """A car turning right from the crossing road, away from a car going straight through, was predicted along its
    heading straight across the junction: the car going straight stood for it. Placed along its own route it never
    comes into that car's way, which drives on at its speed."""
    turning = AgentSpec(2, "car", "follow_route", route_xy_m=turn_route(CROSSING, 0, 3, start_s_m, 60.0),
                        speed_mps=8.0)
    straight = AgentSpec(1, "car", "follow_lane", lane=2, start_s_m=30.0, speed_mps=10.0)
    sim = EmbeddedSimulator(CROSSING, EgoStart(lane=1, start_s_m=5.0), [straight, turning], seed=0)
    snapshots = _run(sim, 120)
    speeds = [s.agents[0].speed_mps for s in snapshots]
    assert min(speeds) == max(speeds)
    assert not any(_obb_overlap(*s.agents) for s in snapshots)


@pytest.mark.parametrize("start_s_m, speed_mps", [(20.0, 13.0), (25.0, 13.0), (27.5, 10.0), (30.0, 10.0)])
def test_a_car_waits_for_one_turning_across_it_short_of_where_it_will_cross(start_s_m, speed_mps):
    """An oncoming car turning left across a car going straight: seen coming along its route, it is waited for short
    of where it will cross that car's lane (waiting short of where it was when first seen stood the car in its
    path, and it was driven into), or passed ahead of it; the two never touch and both get through."""
    turning = AgentSpec(2, "car", "follow_route", route_xy_m=turn_route(CROSSING, 3, 0, 40.0, 80.0), speed_mps=7.0)
    straight = AgentSpec(1, "car", "follow_lane", lane=2, start_s_m=start_s_m, speed_mps=speed_mps)
    sim = EmbeddedSimulator(CROSSING, EgoStart(lane=1, start_s_m=5.0), [straight, turning], seed=0)
    snapshots = _run(sim, 300)
    assert not any(_obb_overlap(*s.agents) for s in snapshots)
    last = snapshots[-1].agents
    assert last[0].position_m[1] > 10.0 and last[1].position_m[0] > 10.0  # both through the junction


@pytest.mark.parametrize("truck_s_m, truck_mps, car_s_m, car_mps", [(36.0, 6.0, 16.0, 12.0), (32.0, 4.0, 22.0, 9.0),
                                                                    (40.0, 8.0, 10.0, 12.0)])
def test_a_car_waits_clear_of_a_truck_turning_across_it(truck_s_m, truck_mps, car_s_m, car_mps):
    """A truck turning left across a car going straight: its 8 m box sweeps on towards the car after it first
    comes into the car's lane, so the car waits short of the nearest the box comes, not of where it first came
    in (a review's: the car stood 2 m short of that and the truck's box ran into it)."""
    truck = AgentSpec(2, "truck", "follow_route", route_xy_m=turn_route(CROSSING, 3, 0, truck_s_m, 80.0),
                      speed_mps=truck_mps)
    car = AgentSpec(1, "car", "follow_lane", lane=2, start_s_m=car_s_m, speed_mps=car_mps)
    sim = EmbeddedSimulator(CROSSING, EgoStart(lane=0, start_s_m=2.0), [car, truck], seed=0)
    snapshots = _run(sim, 300)
    assert not any(_obb_overlap(*s.agents) for s in snapshots)
    assert snapshots[-1].agents[0].position_m[1] > 10.0  # and the car got through
