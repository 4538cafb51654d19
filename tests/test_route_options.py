"""The commands a leaderboard route carries (scenarios.route_options), the turn route and the built-in agent's
speed through a turn."""

from __future__ import annotations

import math
from pathlib import Path as FilePath

import numpy as np
import pytest

from carla_bridge.embedded import EgoStart, EmbeddedSimulator
from neural_sensor.scene.layout import Style, intersection, straight_road
from neural_sensor.scene.path import Path
from scenarios.agent import CURVE_LATERAL_MPS2, BuiltinAgent
from scenarios.base import Scenario, lane_change_route, lane_route, turn_route
from scenarios.route_options import route_options

MAPS = FilePath(__file__).resolve().parents[2] / "shared" / "data" / "opendrive" / "maliput_xodr"
JUNCTION_MAP = MAPS / "intersection_3_5m_width_crosswalk.xodr"


def _labels(layout, route) -> tuple[np.ndarray, list[str]]:
    stations = np.arange(0.0, Path(route).length_m, 1.0)
    return stations, route_options(layout, route, stations)


def _runs(stations, options) -> list[tuple[str, float, float]]:
    """(option, first station, last station) of each run of one option."""
    runs = []
    for s, option in zip(stations, options):
        if runs and runs[-1][0] == option:
            runs[-1][2] = float(s)
        else:
            runs.append([option, float(s), float(s)])
    return [tuple(run) for run in runs]


@pytest.mark.parametrize("to_lane, option", [(2, "LEFT"), (3, "RIGHT")])
def test_a_turn_at_a_template_intersection_is_labelled_through_its_bend(to_lane, option):
    layout = intersection()
    route = turn_route(layout, 0, to_lane, 10.0, 100.0)
    stations, options = _labels(layout, route)
    runs = _runs(stations, options)
    assert [r[0] for r in runs] == ["LANEFOLLOW", option, "LANEFOLLOW"]
    # the label covers the arc: from where it leaves the lane's line (y = -1.75) to where it joins the other's
    points = np.array([Path(route).at(s)[0] for s in stations])
    bent = np.flatnonzero((np.abs(points[:, 1] + 1.75) > 0.05) & (np.abs(np.abs(points[:, 0]) - 1.75) > 0.05))
    turning = np.flatnonzero(np.array(options) == option)
    assert turning[0] <= bent[0] + 1 and turning[-1] >= bent[-1] - 1
    assert turning[-1] - turning[0] <= 20  # and no more than the junction and its bend


def test_straight_through_an_intersection_is_straight_and_a_plain_road_is_lane_follow():
    layout = intersection()
    stations, options = _labels(layout, lane_route(layout, 0, 10.0, 100.0))
    runs = _runs(stations, options)
    assert [r[0] for r in runs] == ["LANEFOLLOW", "STRAIGHT", "LANEFOLLOW"]
    points = np.array([Path(lane_route(layout, 0, 10.0, 100.0)).at(s)[0] for s in stations])
    straight = points[np.array(options) == "STRAIGHT"]
    assert np.abs(straight[:, 0]).max() <= 3.5 + 1.0  # the crossing road's width (7 m) and no more
    road = straight_road(200.0)
    assert set(_labels(road, lane_route(road, 0, 0.0, 190.0))[1]) == {"LANEFOLLOW"}


@pytest.mark.parametrize("lane, offset_m, option", [(1, 3.0, "CHANGELANELEFT"), (0, -3.5, "CHANGELANERIGHT")])
def test_a_lane_change_labels_one_point_where_it_starts(lane, offset_m, option):
    road = straight_road(200.0)
    route = lane_change_route(road, lane, 0.0, change_at_s_m=18.0, offset_m=offset_m, length_m=190.0)
    stations, options = _labels(road, route)
    changes = [(s, o) for s, o in zip(stations, options) if o != "LANEFOLLOW"]
    assert len(changes) == 1 and changes[0][1] == option
    assert 18.0 <= changes[0][0] <= 24.0  # where the route starts to leave its lane (its shift begins at 18 m)


def test_moving_onto_an_oncoming_lane_is_no_lane_change():
    road = straight_road(200.0)  # lane 0 at y = -1.75 (+x), lane 2 at y = +1.75 (-x)
    route = lane_change_route(road, 0, 0.0, change_at_s_m=18.0, offset_m=3.5, length_m=190.0)
    assert set(_labels(road, route)[1]) == {"LANEFOLLOW"}


@pytest.mark.skipif(not JUNCTION_MAP.exists(), reason=f"third-party OpenDRIVE map not found at {JUNCTION_MAP}")
def test_a_maps_junction_roads_are_the_junction():
    """A layout read from OpenDRIVE keeps the map's junction records: the route is in a junction on a junction
    road's lanes (here maliput's four-way crossing: lane 0 runs +x to the junction at x = 100, its connecting lane
    turns to +y, lane 3's travel leaves northwards)."""
    from neural_sensor.scene.opendrive import junction_lanes, layout_from_opendrive

    text = JUNCTION_MAP.read_text()
    layout = layout_from_opendrive(text, decorate=False)
    connectors = junction_lanes(text)
    assert len(connectors) == 12 and all(len(lane.centre_m) >= 2 for lane in connectors)
    approach, exit_ = layout.lanes[0].travel_polyline(), layout.lanes[3].travel_polyline()
    turn = next(lane.travel_polyline() for lane in connectors
                if np.allclose(lane.travel_polyline()[0], approach[-1], atol=0.1)
                and np.allclose(lane.travel_polyline()[-1], exit_[0], atol=0.1))
    route = np.concatenate([approach[50:], turn[1:], exit_[1:50]])
    stations, options = _labels(layout, route)
    assert [r[0] for r in _runs(stations, options)] == ["LANEFOLLOW", "LEFT", "LANEFOLLOW"]
    points = np.array([Path(route).at(s)[0] for s in stations])
    inside = points[np.array(options) == "LEFT"]
    assert inside[:, 0].min() >= 100.0 - 1.0 and inside[:, 1].max() <= 11.5 + 1.0  # the junction's box, no more


def test_the_leaderboard_route_carries_the_turn():
    carla = pytest.importorskip("carla")
    del carla
    from scenarios.agent import leaderboard_plan

    layout = intersection(style=Style(seed=0), parked_car_density=0.0)
    scenario = Scenario("left_turn", "a left turn", layout, EgoStart(lane=0, start_s_m=20.0, speed_mps=8.0), [],
                        route_xy_m=turn_route(layout, 0, 2, 15.0, 100.0), target_speed_mps=9.0, route_goal_m=60.0)
    gps_route, route = leaderboard_plan(scenario)
    names = [option.name for _, option in route]
    assert names == [option.name for _, option in gps_route]
    assert names[0] == "LANEFOLLOW" and names[-1] == "LANEFOLLOW" and "LEFT" in names
    assert set(names) == {"LANEFOLLOW", "LEFT"}
    first = names.index("LEFT")
    assert route[first][0].location.x == pytest.approx(1.75 - 6.0, abs=1.5)  # where the arc (radius 6 m) begins


def test_turn_route_geometry_and_its_errors():
    layout = intersection()
    route = turn_route(layout, 0, 2, 10.0, 80.0, radius_m=7.0)
    path = Path(route)
    assert path.length_m == pytest.approx(80.0, abs=1.5) and np.abs(np.diff(route, axis=0)).max() <= 1.0 + 1e-9
    assert route[-1][0] == pytest.approx(1.75) and route[0][1] == pytest.approx(-1.75)
    # the arc: every point on it 7 m from its centre (x = 1.75 - 7, y = -1.75 + 7)
    centre = np.array([1.75 - 7.0, -1.75 + 7.0])
    on_arc = route[(route[:, 0] > centre[0] + 0.01) & (route[:, 1] < centre[1] - 0.01)]
    assert len(on_arc) >= 5 and np.allclose(np.linalg.norm(on_arc - centre, axis=1), 7.0, atol=1e-6)
    Scenario("t", "", layout, EgoStart(lane=0, start_s_m=12.0, speed_mps=5.0), [], route_xy_m=route,
             route_goal_m=40.0)  # a route the scenario checks take (on the road, the ego's way)
    long = turn_route(layout, 0, 2, 10.0, 1000.0)
    assert long[-1][1] <= 60.0 + 1e-9  # no farther than the lane goes
    for args, words in [((0, 1, 10.0, 80.0), "does not cross"), ((0, 0, 10.0, 80.0), "does not cross"),
                        ((0, 2, 10.0, 80.0, 60.0), "behind start_s_m"), ((0, 2, 10.0, 20.0), "ends before the turn"),
                        ((0, 2, 10.0, 80.0, -1.0), "radius_m must be a number of metres >= 4"),
                        ((0, 2, 10.0, 80.0, math.nan), ">= 4"), ((0, 2, 10.0, 80.0, 0.01), ">= 4"),
                        # (a new user's: lane 9 was an IndexError, -1 the last lane, NaN lengths numpy's words)
                        ((0, 9, 10.0, 80.0), r"to_lane must be a lane of the layout \(0..3\), got 9"),
                        ((-1, 2, 10.0, 80.0), "from_lane must be a lane"), ((0, 2.0, 10.0, 80.0), "to_lane must"),
                        ((0, 2, math.nan, 80.0), "start_s_m must be a number of metres >= 0"),
                        ((0, 2, -20.0, 80.0), "start_s_m must be"), ((0, 2, 10.0, math.nan), "length_m must be"),
                        ((0, 2, 500.0, 80.0), "beyond lane 0's end"),
                        # a radius that takes the arc over the corner's sidewalk (the ego hit the kerb's objects)
                        ((0, 2, 5.0, 110.0, 30.0), r"leaves the road by 3.5 m at \[-7.0, 7.0\]: give radius_m")]:
        with pytest.raises(ValueError, match=words):
            turn_route(intersection(60.0) if args[2] == 5.0 else layout, *args)


@pytest.mark.parametrize("to_lane, radius_m", [(2, 6.0), (3, 5.0)])
def test_the_builtin_agent_slows_for_a_turn_and_keeps_to_it(to_lane, radius_m):
    """It took a turn at the cruise speed and swung 0.5 m wide out of it, into the car parked past the corner."""
    layout = intersection(style=Style(seed=0))  # (a car parked 0.25 m clear of a car in the middle of lane 2)
    route = turn_route(layout, 0, to_lane, 15.0, 100.0)
    sim = EmbeddedSimulator(layout, EgoStart(lane=0, start_s_m=20.0, speed_mps=9.0), [])
    agent = BuiltinAgent(route, 9.0)
    path, through_turn, deviation, cruising = Path(route), [], [], []
    headings = np.array([path.at(s)[1] for s in np.arange(0.0, path.length_m, 0.25)])
    bending = np.flatnonzero(np.minimum(np.abs(headings - headings[0]), np.abs(headings - headings[-1])) > 0.05)
    arc_m = (bending[0] * 0.25, bending[-1] * 0.25)
    for tick in range(200):
        snapshot = sim.tick()
        xy = snapshot.ego.position_m[:2]
        deviation.append(path.distances_m(xy[None])[0])
        if arc_m[0] <= path.project(xy)[0] <= arc_m[1]:  # on the arc
            through_turn.append(snapshot.ego.speed_mps)
        elif tick < 20:
            cruising.append(snapshot.ego.speed_mps)
        sim.apply_control(agent.run_step({"world": (snapshot.frame, snapshot)}, tick * 0.05))
        assert not snapshot.collisions
    limit = math.sqrt(CURVE_LATERAL_MPS2 * radius_m)
    assert min(cruising) > 8.5 and through_turn and max(through_turn) < limit + 1.5  # (the cruise control lags)
    assert max(deviation) < 0.3
    assert path.project(snapshot.ego.position_m[:2])[0] > path.length_m - 40.0  # and goes on down the other road


def _left_turn(**fields) -> Scenario:
    layout = intersection(style=Style(seed=0))
    route = turn_route(layout, 0, 2, 15.0, 100.0)
    return Scenario("left_turn", "a left turn", layout, EgoStart(lane=0, start_s_m=20.0, speed_mps=8.0), [],
                    route_xy_m=route, target_speed_mps=9.0, route_goal_m=60.0,
                    **{key: (route if isinstance(value, str) and value == "route" else value)
                       for key, value in fields.items()})


def test_a_turn_is_recorded_along_its_route_where_asked_and_said_where_not(tmp_path, capsys, monkeypatch):
    """A scenario turning into the crossing road was reconstructed from a drive straight through the junction: the
    road it turned into rendered at 16.8 dB against 23.9 dB recorded along its route (the README's left turn,
    480x270, --truth). recorded_xy_m records the drive along any path; a route leaving the recording is said."""
    import neural_sensor.reconstruct.drive as drive
    from scenarios.runner import RunOptions, run_scenario

    seen = []

    class _Reached(Exception):
        pass

    def fake(layout, path_xy_m, **kwargs):
        seen.append(np.asarray(path_xy_m))
        raise _Reached

    monkeypatch.setattr(drive, "reconstructed_scene", fake)
    for scenario, warned in ((_left_turn(), True), (_left_turn(recorded_xy_m="route"), False)):
        with pytest.raises(_Reached):
            run_scenario(scenario, RunOptions(out_dir=tmp_path / str(warned), ticks=2, scene="reconstruction",
                                              enhancer=None, progress=False, video=False))
        err = capsys.readouterr().err
        assert ("goes 56 m from where its world's drive is recorded (recorded_lane 0)" in err) == warned, err
        assert ("recorded_xy_m=route_xy_m" in err) == warned
    assert np.allclose(seen[0], intersection().lanes[0].travel_polyline())
    assert np.allclose(seen[1], _left_turn().route_xy_m)


def test_recorded_xy_m_is_checked_by_name():
    with pytest.raises(ValueError, match=r"recorded_xy_m must be \[P >= 2, 2\] finite metres"):
        _left_turn(recorded_xy_m=np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"recorded_xy_m must be \[P >= 2, 2\]"):
        _left_turn(recorded_xy_m=np.array([[0.0, 0.0], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"recorded_xy_m point 1 \[20.0, 40.0\] is .* beyond the layout.s lanes"):
        _left_turn(recorded_xy_m=np.array([[-40.0, -1.75], [20.0, 40.0]]))
    assert np.allclose(_left_turn(recorded_xy_m="route").recorded_path_xy_m, _left_turn().route_xy_m)


def test_a_route_ending_at_a_junctions_edge_or_u_turning_mid_block_has_no_command():
    """A route ending where the next junction begins was labelled STRAIGHT at its last point (after the leaderboard's
    downsampling an agent heard STRAIGHT for the rest of its drive); a U-turn between junctions was a lane change."""
    layout = intersection()
    ends_at_edge = lane_route(layout, 0, 10.0, 46.6)  # to x = -3.4, inside the crossing road's lane by 0.1 m
    assert set(_labels(layout, ends_at_edge)[1]) == {"LANEFOLLOW"}
    starts_inside = lane_route(layout, 0, 58.0, 50.0)  # from x = -2: no way in to judge
    assert "STRAIGHT" not in _labels(layout, starts_inside)[1]
    angles = np.linspace(-math.pi / 2, math.pi / 2, 12)
    u_turn = np.concatenate([[[-55.0, -1.75]], np.stack([-30 + 1.75 * np.cos(angles), 1.75 * np.sin(angles)], 1),
                             [[-55.0, 1.75]]])
    assert set(_labels(layout, u_turn)[1]) == {"LANEFOLLOW"}


def _four_way_map():
    from neural_sensor.scene.opendrive import layout_from_opendrive, layout_to_opendrive

    return layout_from_opendrive(layout_to_opendrive(intersection()), decorate=False)


def test_chain_route_goes_through_a_maps_junction_lane_by_lane():
    """turn_route needs crossing centre lines; a map's lanes end at its junction: chain_route joins them, and
    lanes_after lists the ways on (the template's map has straight on, left and right from every arm)."""
    from scenarios.base import chain_route, lanes_after

    layout = _four_way_map()
    approach = next(i for i, lane in enumerate(layout.lanes)  # +x, into the junction (its edge at x = -6.75)
                    if np.allclose(lane.travel_polyline()[-1], [-6.75, -1.75], atol=1e-3))
    ways = lanes_after(layout, approach)
    assert len(ways) == 3
    commands = set()
    for way in ways:
        beyond = lanes_after(layout, way)
        assert len(beyond) == 1
        route = chain_route(layout, [approach, way, beyond[0]], start_s_m=20.0)
        assert np.abs(np.diff(route, axis=0)).max() <= 1.0 + 1e-9 and len(route) > 60
        options = _labels(layout, route)[1]
        assert options[0] == options[-1] == "LANEFOLLOW"
        commands |= set(options) - {"LANEFOLLOW"}
    assert commands == {"LEFT", "RIGHT", "STRAIGHT"}
    short = chain_route(layout, [approach], start_s_m=10.0, length_m=20.0)
    assert Path(short).length_m == pytest.approx(20.0)
    with pytest.raises(ValueError, match=rf"lane {approach} does not begin where lane {ways[0]} ends"):
        chain_route(layout, [ways[0], approach])
    with pytest.raises(ValueError, match="lanes must be a lane of the layout"):
        chain_route(layout, [approach, 999])
    with pytest.raises(ValueError, match="must lie along the chain"):
        chain_route(layout, [approach], start_s_m=1e4)


def test_the_builtin_agent_steers_as_before_where_no_turn_holds_it_back():
    """The reviewer's: a shorter look-ahead everywhere had moved a prompt's curve drive by 3.9 m (the ego below
    6.7 m/s behind a slow car); it is shorter only where a turn holds the speed down."""
    from neural_sensor.scene.layout import curve
    from scenarios.base import drive_scenario

    for layout in (curve(60.0, style=Style(seed=0)), straight_road(200.0)):
        scenario = drive_scenario(layout, "drive", "")
        agent = BuiltinAgent(scenario.route_xy_m, scenario.target_speed_mps)
        for s in np.arange(0.0, Path(scenario.route_xy_m).length_m, 5.0):
            for speed in (3.0, 10.0):
                assert agent._lookahead_m(float(s), speed) == max(6.0, 0.9 * speed)
    layout = intersection()
    agent = BuiltinAgent(turn_route(layout, 0, 2, 10.0, 100.0), 9.0)
    assert agent._lookahead_m(42.0, 6.0) == 3.0  # 3.75 m before the arc (at 45.75 m)
    assert agent._lookahead_m(20.0, 6.0) == 6.0


def test_commands_of_noisy_or_offset_routes():
    """The reviewer's: headings from single segments of a route sampled every 0.1 m with 2 cm of noise labelled a
    straight crossing LEFT or RIGHT (4 of 40) and made the agent crawl; a lane change driven 0.3 m beside the
    lane's centre was labelled at the route's start."""
    layout = intersection()
    for seed in range(10):
        x = np.arange(-50.0, 50.0, 0.1)
        noisy = np.stack([x, -1.75 + np.random.default_rng(seed).normal(0.0, 0.02, len(x))], axis=1)
        assert not {"LEFT", "RIGHT"} & set(_labels(layout, noisy)[1])
        assert BuiltinAgent(noisy, 10.0).curve_speed_mps.min() > 10.0
    road = straight_road(200.0)
    beside = lane_change_route(road, 0, 0.0, change_at_s_m=60.0, offset_m=-3.5, length_m=150.0)
    beside[:, 1] -= 0.3
    stations, options = _labels(road, beside)
    changes = [s for s, o in zip(stations, options) if o != "LANEFOLLOW"]
    assert len(changes) == 1 and 60.0 <= changes[0] <= 66.0
