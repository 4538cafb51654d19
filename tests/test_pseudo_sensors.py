"""A leaderboard agent's GNSS, IMU and speedometer in a run (carla_bridge.pseudo_sensors).

A new user's agent listed a sensor.other.gnss, a sensor.other.imu and a sensor.speedometer beside its cameras, as
leaderboard agents do: the run refused it ("type 'sensor.other.gnss' is not an RGB camera"). They are computed from
the snapshots now, as a CARLA 0.9.16 server and the leaderboard compute them.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from _cli import TINY, cli as _cli
from carla_bridge.pseudo_sensors import GRAVITY_MPS2, PseudoSensors, split_sensors
from carla_bridge.transforms import flu_to_ue, ue_matrix
from neural_sensor.world import AgentState, WorldSnapshot, pose_from_xyz_yaw

IMU = {"type": "sensor.other.imu", "id": "IMU", "x": 0.0, "y": 0.0, "z": 0.0, "roll": 0.0, "pitch": 0.0, "yaw": 0.0}
SPEED = {"type": "sensor.speedometer", "id": "SPEED", "reading_frequency": 20}


def _snapshot(frame: int, t_s: float, x_m: float, y_m: float, yaw_rad: float, speed_mps: float) -> WorldSnapshot:
    ego = AgentState(0, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(x_m, y_m, 0.0, yaw_rad), speed_mps)
    return WorldSnapshot(frame, t_s, ego)


def test_the_imu_and_speedometer_of_a_straight_and_a_turning_drive():
    # straight east (FLU +x, CARLA +x) under a constant 2 m/s^2: the server's three-point formula is exact for it
    sensors = PseudoSensors([IMU, SPEED])
    dt = 0.05
    for k in range(6):
        t = k * dt
        out = sensors.readings(_snapshot(k, t, 10.0 * t + t * t, 0.0, 0.0, 10.0 + 2.0 * t))
    imu = out["IMU"][1]
    assert out["IMU"][0] == 5 and imu.dtype == np.float64 and imu.shape == (7,)
    np.testing.assert_allclose(imu[:3], [2.0, 0.0, GRAVITY_MPS2], atol=1e-6)
    np.testing.assert_allclose(imu[3:6], 0.0, atol=1e-9)
    assert imu[6] == pytest.approx(math.pi / 2)  # facing CARLA +x: north is -y, so east is 90 degrees clockwise
    assert out["SPEED"] == (5, {"speed": pytest.approx(10.5)})
    # the first two readings are gravity alone (no start-up artefact)
    first = PseudoSensors([IMU]).readings(_snapshot(0, 0.0, 50.0, 0.0, 0.0, 10.0))["IMU"][1]
    np.testing.assert_allclose(first[:3], [0.0, 0.0, GRAVITY_MPS2])
    # a left turn on a 20 m circle at 10 m/s (FLU yaw rate +0.5 rad/s): UE's left-handed gyroscope says -0.5 about
    # z, and the centripetal 5 m/s^2 points left, which is -y in the sensor's UE axes
    sensors, radius, rate = PseudoSensors([IMU]), 20.0, 0.5
    for k in range(4):
        t = k * dt
        yaw = rate * t
        out = sensors.readings(_snapshot(k, t, radius * math.sin(yaw), radius * (1 - math.cos(yaw)), yaw, 10.0))
    imu = out["IMU"][1]
    np.testing.assert_allclose(imu[3:6], [0.0, 0.0, -rate], atol=1e-9)
    # (the three-point acceleration is the middle tick's, turned into the sensor's axes of the last tick, as the
    # server does: 0.025 rad of turn puts 5 x 0.025 m/s^2 of it along x)
    np.testing.assert_allclose(imu[:3], [radius * rate ** 2 * rate * dt, -radius * rate ** 2, GRAVITY_MPS2], atol=0.01)


@pytest.mark.parametrize("yaw_flu_deg, compass_rad", [(90.0, 0.0), (0.0, math.pi / 2), (-90.0, math.pi),
                                                      (180.0, 3 * math.pi / 2), (45.0, math.pi / 4)])
def test_the_compass_reads_clockwise_from_carlas_north(yaw_flu_deg, compass_rad):
    """CARLA's north is (0, -1, 0) in its (UE) axes, which is FLU +y; the compass turns clockwise from it."""
    out = PseudoSensors([IMU]).readings(_snapshot(0, 0.0, 0.0, 0.0, math.radians(yaw_flu_deg), 0.0))
    assert out["IMU"][1][6] == pytest.approx(compass_rad % (2 * math.pi), abs=1e-9)
    mounted = dict(IMU, yaw=90.0)  # a mount turned 90 degrees clockwise (UE) adds a quarter turn
    out = PseudoSensors([mounted]).readings(_snapshot(0, 0.0, 0.0, 0.0, math.radians(yaw_flu_deg), 0.0))
    assert out["IMU"][1][6] == pytest.approx((compass_rad + math.pi / 2) % (2 * math.pi), abs=1e-9)


def test_the_speedometer_is_negative_in_reverse():
    sensors = PseudoSensors([SPEED])
    sensors.readings(_snapshot(0, 0.0, 10.0, 0.0, 0.0, 2.0))
    assert sensors.readings(_snapshot(1, 0.05, 9.9, 0.0, 0.0, 2.0))["SPEED"][1]["speed"] == pytest.approx(-2.0)
    assert sensors.readings(_snapshot(2, 0.10, 9.8, 0.0, 0.0, -2.0))["SPEED"][1]["speed"] == pytest.approx(-2.0)


def test_gnss_is_the_leaderboards_projection_by_default_and_libcarla_0916s_when_asked():
    """A new user's leaderboard agent (GNSS to local metres, route from set_global_plan, compass steering) left the
    road within 2.3 s: the GNSS was libcarla 0.9.16's projection (CARLA's +y to the north, carla-simulator/carla#9389)
    while the route GPS and the compass put -y there. By default the GNSS is now CARLA <= 0.9.15's, which is the
    leaderboard's route GPS: the three agree; "carla-0.9.16" gives libcarla's, exactly."""
    carla = pytest.importorskip("carla")
    from carla_bridge.pseudo_sensors import leaderboard_gps
    from neural_sensor.scene.layout import straight_road
    from neural_sensor.scene.opendrive import layout_to_opendrive

    text = layout_to_opendrive(straight_road(100.0, buildings=False))
    gnss = {"type": "sensor.other.gnss", "id": "GPS", "x": 1.5, "y": 0.5, "z": 2.0}
    snapshot = _snapshot(3, 0.15, 30.0, -2.0, 0.3, 5.0)
    where = (flu_to_ue(snapshot.ego.pose_agent_to_world) @ ue_matrix(1.5, 0.5, 2.0, 0, 0, 0))[:3, 3]
    frame, data = PseudoSensors([gnss], text).readings(snapshot)["GPS"]
    route = leaderboard_gps(0.0, 0.0, *where)  # (the generated map's geoReference: lat_0 = lon_0 = 0)
    assert frame == 3 and data.dtype == np.float64
    np.testing.assert_allclose(data, [route["lat"], route["lon"], route["z"]], rtol=0, atol=1e-12)
    north = PseudoSensors([gnss], text).readings(_snapshot(0, 0.0, 0.0, 10.0, 0.0, 0.0))["GPS"][1]
    assert north[0] > 0.0  # FLU +y is CARLA's -y: north, as the compass says (facing it reads 0)
    _, data = PseudoSensors([gnss], text, gnss_projection="carla-0.9.16").readings(snapshot)["GPS"]
    truth = carla.Map("t", text).transform_to_geolocation(carla.Location(*where))
    np.testing.assert_allclose(data, [truth.latitude, truth.longitude, truth.altitude], rtol=0, atol=1e-12)
    assert np.sign(data[0]) == -np.sign(route["lat"])  # 0.9.16's latitude mirrored
    with pytest.raises(ValueError, match="needs the world.s OpenDRIVE map"):
        PseudoSensors([gnss])
    with pytest.raises(ValueError, match="gnss projection must be one of"):
        PseudoSensors([gnss], text, gnss_projection="utm")


def test_bad_pseudo_sensor_dicts_are_named():
    with pytest.raises(ValueError, match="sensor 'IMU': yaw must be a finite number"):
        PseudoSensors([dict(IMU, yaw=float("nan"))])
    with pytest.raises(ValueError, match="a sensor.speedometer sensor: missing key 'id'"):
        PseudoSensors([{"type": "sensor.speedometer"}])
    # the keys the leaderboard reads (a KeyError there; a default of 0 put the sensor somewhere else)
    with pytest.raises(ValueError, match=r"sensor 'IMU' \(sensor.other.imu\): missing keys \['roll'\]"):
        PseudoSensors([{k: v for k, v in IMU.items() if k != "roll"}])
    with pytest.raises(ValueError, match=r"missing keys \['reading_frequency'\]"):
        PseudoSensors([{"type": "sensor.speedometer", "id": "SPEED"}])
    cameras, others = split_sensors([{"type": "sensor.camera.rgb", "id": "A"}, IMU, SPEED])
    assert [c["id"] for c in cameras] == ["A"] and [o["id"] for o in others] == ["IMU", "SPEED"]


LEADERBOARD_AGENT = '''
import math
import numpy as np
from scenarios.agent import BuiltinAgent


class GpsAgent(BuiltinAgent):
    """A leaderboard agent's sensor list: cameras, GNSS, IMU and the speedometer."""
    seen = []

    def sensors(self):
        return super().sensors()[:1] + [
            {"type": "sensor.other.gnss", "x": 0.0, "y": 0.0, "z": 0.0, "id": "GPS"},
            {"type": "sensor.other.imu", "x": 0.0, "y": 0.0, "z": 0.0, "roll": 0.0, "pitch": 0.0, "yaw": 0.0,
             "sensor_tick": 0.05, "id": "IMU"},
            {"type": "sensor.speedometer", "reading_frequency": 20, "id": "SPEED"}]

    def run_step(self, input_data, timestamp):
        frame, gps = input_data["GPS"]
        _, imu = input_data["IMU"]
        _, speed = input_data["SPEED"]
        assert gps.shape == (3,) and imu.shape == (7,) and math.isfinite(speed["speed"]), (gps, imu, speed)
        with open("readings.jsonl", "a") as f:
            f.write(__import__("json").dumps({"frame": frame, "gps": gps.tolist(), "imu": imu.tolist(),
                                              "speed": speed["speed"]}) + "\\n")
        return super().run_step(input_data, timestamp)
'''


def test_a_leaderboard_agents_gnss_imu_and_speedometer_reach_run_step(tmp_path):
    pytest.importorskip("carla")
    (tmp_path / "gps_agent.py").write_text(LEADERBOARD_AGENT)
    run = _cli(["run", "cut_in", *TINY, "--ticks", "4", "--agent", "./gps_agent.py:GpsAgent", "-o",
                str(tmp_path / "o")], tmp_path, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in (tmp_path / "readings.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in rows] == [1, 2, 3, 4]
    assert all(r["speed"] > 0 for r in rows) and rows[-1]["imu"][2] == pytest.approx(GRAVITY_MPS2, abs=2.0)
    assert len({tuple(r["gps"]) for r in rows}) == 4  # the ego moves: each tick its own fix
    clash = LEADERBOARD_AGENT.replace('"id": "SPEED"', '"id": "GPS"')
    (tmp_path / "gps_agent.py").write_text(clash)
    bad = _cli(["run", "cut_in", *TINY, "--ticks", "2", "--agent", "./gps_agent.py:GpsAgent", "-o",
                str(tmp_path / "o2")], tmp_path, cwd=tmp_path)
    assert bad.returncode == 2 and "gives the id 'GPS' to more than one sensor" in bad.stderr, bad.stderr


LEADERBOARD_2_AGENT = '''
"""A leaderboard 2.x agent as its authors write it (the AutonomousAgent base's calls, without the package)."""
import json
import carla


def get_entry_point():
    return "MyAutonomousAgent"


class MyAutonomousAgent:
    def __init__(self, carla_host, carla_port, debug=False):
        self.calls = [["init", carla_host, carla_port, debug]]
        self._global_plan = None

    def set_global_plan(self, global_plan_gps, global_plan_world_coord):
        self.calls.append(["set_global_plan", len(global_plan_gps), global_plan_gps[0][0],
                           int(global_plan_gps[0][1]), global_plan_world_coord[0][0].location.x,
                           global_plan_world_coord[-1][0].location.x, global_plan_world_coord[0][0].rotation.yaw])
        assert isinstance(global_plan_world_coord[0][0], carla.Transform)

    def setup(self, path_to_conf_file):
        self.calls.append(["setup", path_to_conf_file])

    def sensors(self):
        return [{"type": "sensor.camera.rgb", "x": 1.3, "y": 0.0, "z": 2.3, "roll": 0.0, "pitch": 0.0, "yaw": 0.0,
                 "width": 64, "height": 36, "fov": 100, "id": "Center"},
                {"type": "sensor.other.gnss", "x": 0.0, "y": 0.0, "z": 0.0, "id": "GPS"},
                {"type": "sensor.opendrive_map", "reading_frequency": 1, "id": "OpenDRIVE"},
                {"type": "sensor.speedometer", "reading_frequency": 20, "id": "SPEED"}]

    def run_step(self, input_data, timestamp):
        assert input_data["Center"][1].shape == (36, 64, 4) and "<OpenDRIVE" in input_data["OpenDRIVE"][1]["opendrive"]
        self.calls.append(["run_step", input_data["GPS"][0], input_data["SPEED"][1]["speed"], timestamp])
        return carla.VehicleControl(throttle=0.5)

    def destroy(self):
        with open("calls.json", "w") as f:
            json.dump(self.calls + [["destroy"]], f)
'''


def test_a_leaderboard_2_agent_runs_as_the_leaderboard_runs_it(tmp_path):
    """A new user's leaderboard agent needed a thin subclass (Class(route_xy_m, target_speed_mps), no setup): it is
    built as leaderboard_evaluator does now, from its file alone (get_entry_point), with --agent-config."""
    pytest.importorskip("carla")
    (tmp_path / "my_lb_agent.py").write_text(LEADERBOARD_2_AGENT)
    (tmp_path / "agent.yaml").write_text("model: none\n")
    run = _cli(["run", "cut_in", *TINY, "--ticks", "3", "--agent", "my_lb_agent.py", "--agent-config", "agent.yaml",
                "-o", str(tmp_path / "o")], tmp_path, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    calls = json.loads((tmp_path / "calls.json").read_text())
    assert calls[0] == ["init", "localhost", 2000, False]
    name, points, first_gps, option, x0, x1, yaw = calls[1]
    assert name == "set_global_plan" and option == 4  # RoadOption.LANEFOLLOW
    assert set(first_gps) == {"lat", "lon", "z"} and points > 50 and x1 - x0 > 50  # one point a metre along +x
    from carla_bridge.embedded import EmbeddedSimulator
    from scenarios.runner import load_scenario

    scenario = load_scenario("cut_in")
    ego_x = EmbeddedSimulator(scenario.layout, scenario.ego, scenario.agents).tick().ego.position_m[0]
    assert abs(x0 - ego_x) < 1.5  # from where the ego starts, as the leaderboard's route (not the lane's start)
    assert yaw == pytest.approx(0.0, abs=1e-3)
    assert calls[2] == ["setup", "agent.yaml"]
    assert [c[1] for c in calls[3:6]] == [1, 2, 3] and calls[-1] == ["destroy"]
    # the leaderboard's clock (GameTime): one step at the first tick (the run's log starts at 0.0)
    assert [c[3] for c in calls[3:6]] == pytest.approx([0.05, 0.10, 0.15])
    assert "would refuse" not in run.stderr  # its suite is one the leaderboard takes
    wrong = _cli(["run", "cut_in", *TINY, "--ticks", "2", "--agent-config", "agent.yaml", "-o", str(tmp_path / "o")],
                 tmp_path, cwd=tmp_path)
    assert wrong.returncode == 2 and "--agent-config is handed to a leaderboard agent's setup()" in wrong.stderr


def test_the_leaderboards_route_gps_is_its_own_mercator():
    """set_global_plan's GPS is the leaderboard's route_manipulation._location_to_gps (CARLA's -y to the north),
    not libcarla's projection of the GNSS sensor (which on 0.9.16 puts +y to the north)."""
    from carla_bridge.pseudo_sensors import leaderboard_gps as _leaderboard_gps
    from carla_bridge.pseudo_sensors import leaderboard_latlon_ref as _leaderboard_latlon_ref

    origin = _leaderboard_gps(42.0, 2.0, 0.0, 0.0, 1.5)
    assert origin["lat"] == pytest.approx(42.0, abs=1e-12) and origin["lon"] == pytest.approx(2.0, abs=1e-12)
    assert origin["z"] == 1.5
    east = _leaderboard_gps(42.0, 2.0, 100.0, 0.0, 0.0)  # 100 m along x: the longitude, by 100 m / (R cos 42)
    assert east["lon"] - 2.0 == pytest.approx(math.degrees(100.0 / (6378137.0 * math.cos(math.radians(42.0)))))
    assert east["lat"] == pytest.approx(42.0, abs=1e-12)
    south = _leaderboard_gps(42.0, 2.0, 0.0, 100.0, 0.0)  # CARLA's +y is south here
    assert -1.2e-3 < south["lat"] - 42.0 < -0.8e-3
    header = '<OpenDRIVE><header><geoReference><![CDATA[+proj=tmerc +lat_0=48.1 +lon_0=11.5 +k=1]]></geoReference>'
    assert _leaderboard_latlon_ref(header + "</header></OpenDRIVE>") == (48.1, 11.5)
    assert _leaderboard_latlon_ref("<OpenDRIVE><header/></OpenDRIVE>") == (42.0, 2.0)


def test_an_agent_that_takes_our_constructor_is_ours_and_a_leaderboard_agents_destroy_is_called(tmp_path,
                                                                                              monkeypatch):
    """A reviewer's findings: the thin wrapper the README recommended before (our constructor, plus the leaderboard
    agent's setup / set_global_plan it wraps) was built as a leaderboard agent and failed; a leaderboard agent whose
    setup() raised was never destroyed; `--carla HOST` without a port failed in int()."""
    pytest.importorskip("carla")
    from scenarios.agent import AgentError, load_agent
    from scenarios.runner import load_scenario

    scenario = load_scenario("cut_in")
    monkeypatch.chdir(tmp_path)  # (the agent writes its calls.json there)
    (tmp_path / "wrapped.py").write_text(
        "from scenarios.agent import BuiltinAgent\n"
        "class Thin(BuiltinAgent):\n"
        "    def setup(self, path): raise AssertionError('not called')\n"
        "    def set_global_plan(self, gps, route): raise AssertionError('not called')\n")
    agent = load_agent(f"{tmp_path / 'wrapped.py'}:Thin", scenario, 64, 36)
    assert type(agent).__name__ == "Thin"
    (tmp_path / "lb.py").write_text(LEADERBOARD_2_AGENT)
    agent = load_agent(f"{tmp_path / 'lb.py'}", scenario, 64, 36, carla_address="carlahost")
    assert agent.calls[0] == ["init", "carlahost", 2000, False]
    (tmp_path / "lb_fails.py").write_text(LEADERBOARD_2_AGENT + (
        "\n\nclass SetupFails(MyAutonomousAgent):\n"
        "    def setup(self, path_to_conf_file):\n"
        "        raise RuntimeError('no model file')\n"))
    with pytest.raises(AgentError, match="raised RuntimeError: no model file in setup"):
        load_agent(f"{tmp_path / 'lb_fails.py'}:SetupFails", scenario, 64, 36, agent_config=str(tmp_path / "c"))
    calls = json.loads((tmp_path / "calls.json").read_text())  # written by its destroy()
    assert [c[0] for c in calls] == ["init", "set_global_plan", "destroy"]


LEADERBOARD_1_AGENT = '''
"""A leaderboard 1.0 agent as its authors write it: the AutonomousAgent base's constructor calls setup()."""
import json
from enum import Enum

import carla


class Track(Enum):
    SENSORS = "SENSORS"
    MAP = "MAP"


def get_entry_point():
    return "OldAgent"


class OldAgent:
    def __init__(self, path_to_conf_file):
        self.track = Track.SENSORS
        self.calls = [["init", path_to_conf_file]]
        self.setup(path_to_conf_file)

    def setup(self, path_to_conf_file):
        self.calls.append(["setup", path_to_conf_file])

    def set_global_plan(self, global_plan_gps, global_plan_world_coord):
        self.calls.append(["set_global_plan", len(global_plan_gps)])

    def sensors(self):  # five cameras (1.0 allows four), one 4 m up (at most 3 m), a map on the SENSORS track
        cams = [{"type": "sensor.camera.rgb", "x": 1.3, "y": 0.0, "z": 2.3, "roll": 0.0, "pitch": 0.0,
                 "yaw": 72.0 * i, "width": 32, "height": 18, "fov": 100, "id": f"Cam{i}"} for i in range(5)]
        cams[4]["z"] = 4.0
        return cams + [{"type": "sensor.opendrive_map", "reading_frequency": 1, "id": "OpenDRIVE"}]

    def run_step(self, input_data, timestamp):
        self.calls.append(["run_step", input_data["Cam0"][0], timestamp])
        return carla.VehicleControl(throttle=0.3)

    def destroy(self):
        with open("calls.json", "w") as f:
            json.dump(self.calls + [["destroy"]], f)
'''


def test_a_leaderboard_1_agent_runs_as_leaderboard_1_runs_it(tmp_path):
    """Leaderboard 1.0 agents (Class(path_to_conf_file), setup() called from the base's constructor) were refused
    by name: they are built as 1.0's leaderboard_evaluator does, then given the route; what the leaderboard's
    sensor check would refuse is said (the run renders it all)."""
    pytest.importorskip("carla")
    (tmp_path / "old_agent.py").write_text(LEADERBOARD_1_AGENT)
    run = _cli(["run", "cut_in", *TINY, "--ticks", "3", "--agent", "old_agent.py", "--agent-config", "cfg.txt",
                "-o", str(tmp_path / "o")], tmp_path, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    calls = json.loads((tmp_path / "calls.json").read_text())
    assert calls[:2] == [["init", "cfg.txt"], ["setup", "cfg.txt"]] and calls[2][0] == "set_global_plan"
    assert [c[1] for c in calls[3:6]] == [1, 2, 3] and calls[-1] == ["destroy"]
    assert [c[2] for c in calls[3:6]] == pytest.approx([0.05, 0.10, 0.15])
    note = next(line for line in run.stderr.splitlines() if "would refuse" in line)
    assert "leaderboard 1.x" in note and "5 sensor.camera.rgb (at most 4)" in note, note
    assert "sensor 'Cam4': mounted 4.21 m from the vehicle's origin (at most 3 m)" in note, note
    assert "sensor 'OpenDRIVE': sensor.opendrive_map on the SENSORS track" in note, note


def test_a_leaderboard_agent_under_carla_is_built_after_the_server_answers(tmp_path, monkeypatch):
    """Under --carla the agent's constructor and setup() (a model loaded) ran before a missing server was said;
    the leaderboard asks the server first. With the stand-in server its clock starts at one step, not at the
    server's elapsed seconds."""
    pytest.importorskip("carla")
    import carla_bridge.carla_world as carla_world
    from carla_bridge.standin import StandInClient
    from scenarios.runner import RunOptions, run_scenario

    monkeypatch.chdir(tmp_path)
    (tmp_path / "lb.py").write_text(LEADERBOARD_2_AGENT.replace(
        "        self._global_plan = None\n", "        self._global_plan = None\n        open('built', 'w').close()\n"))

    def no_server(address, timeout_s=10.0):
        raise RuntimeError(f"no CARLA server answered at {address}")

    monkeypatch.setattr(carla_world, "connect", no_server)
    options = dict(ticks=3, width=64, height=36, backend="cpu", scene="builder", video=False,
                   cache_dir=tmp_path / "cache", progress=False, agent=str(tmp_path / "lb.py"))
    with pytest.raises(RuntimeError, match="no CARLA server answered at standin:2000"):
        run_scenario("cut_in", RunOptions(out_dir=tmp_path / "run", carla="standin:2000", **options))
    assert not (tmp_path / "built").exists()
    monkeypatch.setattr(carla_world, "connect", lambda address, timeout_s=10.0: StandInClient())
    run_scenario("cut_in", RunOptions(out_dir=tmp_path / "run", carla="standin:2000", **options))
    calls = json.loads((tmp_path / "calls.json").read_text())
    assert calls[0] == ["init", "standin", 2000, False]
    log = [json.loads(line)["timestamp_s"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    clock = [c[3] for c in calls if c[0] == "run_step"]  # (the log keeps the server's own elapsed seconds)
    assert clock == pytest.approx([0.05, 0.10, 0.15]) and clock == pytest.approx([t - log[0] + 0.05 for t in log])
