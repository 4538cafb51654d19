"""What a run judges and logs must be what happened: a new user's findings on the criteria, the agent's contract
and log.jsonl (2026-12-07)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from carla_bridge.embedded import AgentSpec, EgoStart, EmbeddedSimulator
from carla_bridge.simulator import VehicleControl
from carla_bridge.transforms import sensor_specs_from_leaderboard
from neural_sensor.scene.layout import Style, straight_road
from neural_sensor.world import AgentState, WorldSnapshot, pose_from_xyz_yaw
from scenarios.agent import load_agent
from scenarios.base import CriteriaState, Scenario, lane_route, time_to_collision
from scenarios.runner import RunOptions, run_scenario


def _ego(x_m: float, y_m: float, yaw_rad: float = 0.0, speed_mps: float = 0.0) -> AgentState:
    return AgentState(0, "car", (4.7, 1.9, 1.5), pose_from_xyz_yaw(x_m, y_m, 0.0, yaw_rad), speed_mps)


def _uturn_scenario() -> Scenario:
    layout = straight_road(120.0, style=Style(seed=0))
    out = np.stack([np.arange(0.0, 100.0, 1.0), np.full(100, -1.75)], 1)
    angles = np.linspace(-math.pi / 2, math.pi / 2, 9)[1:-1]
    turn = np.stack([100.0 + 1.75 * np.cos(angles), 1.75 * np.sin(angles)], 1)
    back = np.stack([np.arange(100.0, -1.0, -1.0), np.full(101, 1.75)], 1)
    return Scenario("uturn", "out along lane 0, a U-turn, back", layout, EgoStart(lane=0, start_s_m=5.0), [],
                    route_xy_m=np.concatenate([out, turn, back]), route_goal_m=150.0, max_ticks=400)


def test_progress_follows_the_route_leg_being_driven():
    """A route that comes back beside itself (a U-turn): an ego that drove 22 m and drifted past the lane's middle
    was projected onto the return leg and passed with 175 m of progress."""
    criteria = CriteriaState(_uturn_scenario())
    for k, x_m in enumerate(np.arange(5.0, 27.5, 0.5)):
        criteria.update(WorldSnapshot(k, 0.05 * k, _ego(x_m, -1.75 + 2.1 * (x_m - 5.0) / 22.5, speed_mps=4.0)))
    result = criteria.results()["route_completion"]
    assert result["progress_m"] == pytest.approx(22.0, abs=0.6) and result["value"] < 0.2
    # the deviation is from the leg being driven (the return leg was 0.2 m away at the end)
    assert criteria.results()["route_deviation"]["value_m"] == pytest.approx(2.1, abs=0.05)


def test_the_end_of_the_route_reached_is_the_route_completed():
    """A goal as long as the route ahead was accepted but could not be met: the run stops 1 m before the route's
    end, and 9 of 10 m read 0.9 (FAILED)."""
    layout = straight_road(60.0)
    scenario = Scenario("short", "ten metres", layout, EgoStart(lane=0, start_s_m=5.0), [],
                        route_xy_m=np.array([[5.0, -1.75], [15.0, -1.75]]), route_goal_m=10.0, max_ticks=100)
    criteria = CriteriaState(scenario)
    for k, x_m in enumerate(np.arange(5.0, 14.3, 0.4)):
        criteria.update(WorldSnapshot(k, 0.05 * k, _ego(x_m, -1.75, speed_mps=8.0)))
    assert criteria.route_end_reached
    assert criteria.results()["route_completion"] == {"passed": True, "value": 1.0,
                                                      "progress_m": pytest.approx(9.2, abs=0.05)}


def test_an_ego_in_reverse_has_its_corridor_behind_it():
    """The snapshot's speed is a length: an ego backing away from a parked car read as closing on it (0.96 s,
    FAILED); a car behind a reversing ego is what it may hit."""
    ahead = AgentState(1, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(12.0, -1.75, 0.0, 0.0), 0.0)
    behind = AgentState(2, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(-2.0, -1.75, 0.0, 0.0), 0.0)
    ego = _ego(5.0, -1.75, speed_mps=3.0)
    route = CriteriaState(_uturn_scenario()).route
    assert time_to_collision(WorldSnapshot(1, 0.05, ego, (ahead,)), route) < 1.0  # forwards: closing
    assert time_to_collision(WorldSnapshot(1, 0.05, ego, (ahead,)), route, ego_forward_mps=-3.0) == math.inf
    assert time_to_collision(WorldSnapshot(1, 0.05, ego, (behind,)), route,
                             ego_forward_mps=-3.0) == pytest.approx((7.0 - 4.6) / 3.0)
    # the criteria tell the way the ego moves from its step since the last tick
    scenario = _uturn_scenario()
    scenario.agents = [AgentSpec(1, "car", "parked", start_xy_m=(11.5, -1.75))]
    criteria = CriteriaState(scenario)
    for k, x_m in enumerate([5.0, 4.9, 4.75, 4.5, 4.2]):  # (a run starts forwards or at rest: the first tick)
        criteria.update(WorldSnapshot(k, 0.05 * k, _ego(x_m, -1.75, speed_mps=3.0 * (k > 0)), (ahead,)))
    assert criteria.min_ttc_s > 1.0
    # a stopped car's physics jitters by a fraction of a millimetre: not reversing (a car closing from behind)
    closing = AgentState(2, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(-3.0, -1.75, 0.0, 0.0), 3.0)
    criteria = CriteriaState(_uturn_scenario())
    for k in range(6):
        criteria.update(WorldSnapshot(k, 0.05 * k, _ego(5.0 - 1e-4 * (k % 2), -1.75, speed_mps=0.01), (closing,)))
    assert criteria.min_ttc_s == math.inf


def test_an_ego_moved_far_in_one_tick_is_followed():
    """The route is followed within 10 m of where the ego was, and of how far it moved since (a set_transform
    that moved it 35 m was measured against the window's edge: 24.5 m off its route)."""
    criteria = CriteriaState(_uturn_scenario())
    for k, x_m in enumerate([5.0, 5.5, 40.0, 40.5, 41.0]):
        criteria.update(WorldSnapshot(k, 0.05 * k, _ego(x_m, -1.75, speed_mps=8.0)))
    assert criteria.max_route_deviation_m < 0.01 and criteria.progress_m == pytest.approx(36.0)


def test_a_traffic_signs_post_is_hit():
    """A sign's box is its panel, 1.8 m up: driving through its post (drawn from the ground) was no collision."""
    layout = straight_road(120.0, style=Style(seed=0))
    signs = [o for o in layout.objects if o.cls == "traffic_sign"]
    assert signs
    sim = EmbeddedSimulator(layout, EgoStart(lane=0, start_s_m=5.0), [])
    for sign in signs:
        sim.set_ego_state(np.asarray(sign.centre_m[:2]), 0.0, 0.0)
        assert sim.tick().collisions == (-1,)


class _NoRunStep:
    def __init__(self, route_xy_m, target_speed_mps):
        pass

    def sensors(self):
        return []


def test_an_agent_without_the_leaderboards_face_is_named():
    """An agent without run_step met an AttributeError after the scene was built (exit 1), and a sensors() that
    returned one dict was read as its keys ("sensor must be a dict, got str")."""
    scenario = _uturn_scenario()
    with pytest.raises(ValueError, match=r"has no run_step\(\): a driving agent has the leaderboard's sensors"):
        load_agent(f"{__name__}:_NoRunStep", scenario, 64, 36)
    camera = {"type": "sensor.camera.rgb", "id": "C", "x": 0.0, "y": 0.0, "z": 2.0, "roll": 0.0, "pitch": 0.0,
              "yaw": 0.0, "width": 32, "height": 24, "fov": 90}
    with pytest.raises(ValueError, match=r"sensors\(\) must return a list of sensor dicts .*got dict \(one sensor"):
        sensor_specs_from_leaderboard(camera)
    with pytest.raises(ValueError, match=r"sensors\(\) must return a list of sensor dicts .*got NoneType"):
        sensor_specs_from_leaderboard(None)
    assert [s.sensor_id for s in sensor_specs_from_leaderboard(c for c in [camera])] == ["C"]


class _EditsItsWorld:
    """Moves the snapshot's poses to its own frame in place, and drives with numpy numbers and the hand brake."""

    def __init__(self, route_xy_m, target_speed_mps):
        self.origin = np.asarray(route_xy_m)[0]

    def sensors(self):
        return [{"type": "sensor.camera.rgb", "id": "C", "x": 1.3, "y": 0.0, "z": 2.3, "roll": 0.0, "pitch": 0.0,
                 "yaw": 0.0, "width": 32, "height": 24, "fov": 90}]

    edits = True

    def run_step(self, input_data, timestamp):
        _, world = input_data["world"]
        if self.edits:
            world.ego.position_m[:2] -= self.origin
            world.ego.pose_agent_to_world[:] = np.eye(4)  # (and every pose, the --truth cameras' too)
        return {"throttle": np.float32(0.5), "steer": np.float32(0.0), "brake": 0.0, "hand_brake": True}


class _LeavesItsWorld(_EditsItsWorld):
    edits = False


def test_what_the_agent_does_to_its_snapshot_changes_neither_verdict_nor_log(tmp_path):
    """An agent that edited input_data["world"] in place failed route deviation at frame 1 (5.25 m) and its log
    read y 0; numpy numbers in a scenario's agents broke log.jsonl (int64 is not JSON serializable); a control of
    np.float32 was refused as if out of range; log.jsonl left out hand_brake and reverse."""
    layout = straight_road(120.0, style=Style(seed=0))
    agents = [AgentSpec(np.int64(1), "car", "follow_lane", lane=1, start_s_m=np.float32(40.0),
                        speed_mps=np.float32(4.0))]
    scenario = Scenario("edits", "an agent that edits its world", layout,
                        EgoStart(lane=1, start_s_m=np.float64(5.0), speed_mps=8.0), agents,
                        route_xy_m=lane_route(layout, 1, 0.0, 110.0), route_goal_m=np.float32(60.0), max_ticks=100)
    options = RunOptions(out_dir=tmp_path / "o", ticks=6, cache_dir=tmp_path / "scenes", progress=False,
                         scene="builder", enhancer=None, video=False, agent=f"{__name__}:_EditsItsWorld", truth=True)
    summary = run_scenario(scenario, options)
    assert summary["criteria"]["route_deviation"]["passed"] and summary["criteria"]["route_deviation"]["value_m"] < 0.1
    records = [json.loads(line) for line in (tmp_path / "o" / "log.jsonl").read_text().splitlines()]
    assert all(r["ego"]["y_m"] == pytest.approx(-5.25) for r in records)
    options.agent, options.out_dir = f"{__name__}:_LeavesItsWorld", tmp_path / "left"
    run_scenario(scenario, options)
    left = [json.loads(line) for line in (tmp_path / "left" / "log.jsonl").read_text().splitlines()]
    assert [r["truth_psnr_db"] for r in records] == [r["truth_psnr_db"] for r in left]  # the truth: where it was
    assert records[-1]["control"] == {"throttle": 0.5, "steer": 0.0, "brake": 0.0, "hand_brake": True,
                                      "reverse": False}
    assert records[-1]["ego"]["speed_mps"] < records[0]["ego"]["speed_mps"]  # the hand brake held
    assert VehicleControl.from_any({"throttle": np.float32(0.25), "steer": np.float16(-0.5), "brake": 0}).steer == -0.5
