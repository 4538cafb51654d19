"""Embedded simulator, scenarios, runner, CLI exit codes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from carla_bridge.embedded import AgentSpec, EgoStart, EmbeddedSimulator
from carla_bridge.simulator import Simulator, VehicleControl
from neural_sensor.render import LOD_PX, RECONSTRUCTION_LOD_PX
from neural_sensor.scene.layout import straight_road
from scenarios.base import lane_route, time_to_collision
from scenarios.cli import main as cli_main
from scenarios.runner import SCENARIOS, RunOptions, load_scenario, run_scenario


def _log(seed: int, ticks: int = 60) -> list:
    layout = straight_road(120.0)
    agents = [AgentSpec(1, "car", "cut_in", lane=1, start_s_m=25, speed_mps=6, target_lane=0, trigger_m=12),
              AgentSpec(2, "pedestrian", "cross", start_xy_m=(50, -9), heading_rad=math.pi / 2, speed_mps=1.4,
                        trigger_m=30, distance_m=18)]
    sim = EmbeddedSimulator(layout, EgoStart(lane=0, start_s_m=5, speed_mps=8), agents, seed=seed)
    assert isinstance(sim, Simulator)
    out = []
    for i in range(ticks):
        snap = sim.tick()
        sim.apply_control(VehicleControl(throttle=0.4, steer=0.05 * math.sin(i / 10)))
        out.append((snap.frame, snap.timestamp_s, snap.ego.pose_agent_to_world.tobytes(),
                    [a.pose_agent_to_world.tobytes() for a in snap.agents], snap.collisions))
    return out


def test_simulator_is_deterministic_and_counts_frames():
    a, b = _log(seed=3), _log(seed=3)
    assert a == b
    assert _log(seed=4) != a  # the seed changes agent speeds
    frames = [entry[0] for entry in a]
    assert frames == list(range(1, 61))
    assert a[20][1] == pytest.approx(20 * 0.05)


def _cut_in_track(layout, ego: EgoStart, *, start_s_m: float, trigger_m: float, ticks: int) -> list:
    """Positions (x, y) per tick of a 6 m/s car cutting in from lane 1 to lane 0 while the ego cruises."""
    sim = EmbeddedSimulator(layout, ego, [AgentSpec(1, "car", "cut_in", lane=1, start_s_m=start_s_m, speed_mps=6,
                                                    target_lane=0, trigger_m=trigger_m, duration_s=2.0)])
    positions = []
    for _ in range(ticks):
        snap = sim.tick()
        sim.apply_control(VehicleControl(throttle=0.2))
        positions.append(snap.agents[0].position_m[:2])
    return positions


def test_cut_in_happens_and_kinematics_follow_controls():
    layout = straight_road(120.0)
    ys = [p[1] for p in _cut_in_track(layout, EgoStart(lane=0, start_s_m=5, speed_mps=8), start_s_m=25,
                                      trigger_m=12, ticks=120)]
    assert ys[0] == pytest.approx(-5.25) and ys[-1] == pytest.approx(-1.75, abs=1e-6)  # moved into the ego lane
    # steering right (positive, CARLA convention) turns the ego clockwise: yaw decreases, y decreases
    sim = EmbeddedSimulator(layout, EgoStart(lane=0, start_s_m=5, speed_mps=8))
    sim.tick()
    sim.apply_control(VehicleControl(throttle=0.3, steer=0.5))
    for _ in range(20):
        snap = sim.tick()
    assert snap.ego.yaw_rad < -0.1 and snap.ego.position_m[1] < -1.75


def test_collision_detected_in_a_staged_crash():
    layout = straight_road(80.0)
    parked = AgentSpec(1, "car", "parked", start_xy_m=(25.0, -1.75), heading_rad=0.3)
    sim = EmbeddedSimulator(layout, EgoStart(lane=0, start_s_m=5, speed_mps=10), [parked])
    first_hit = None
    for _ in range(80):
        snap = sim.tick()
        sim.apply_control(VehicleControl(throttle=0.5))
        if snap.collisions and first_hit is None:
            first_hit = snap
    assert first_hit is not None and first_hit.collisions == (1,)
    gap = first_hit.agents[0].position_m[0] - first_hit.ego.position_m[0]
    assert 2.0 < gap < 4.8  # boxes touch when the centres are about a car length apart
    assert time_to_collision(first_hit) == 0.0


@pytest.mark.parametrize("bad", [dict(throttle=float("nan")), dict(steer=1.5), dict(brake=-0.1), dict(throttle="1")])
def test_bad_control_raises(bad):
    with pytest.raises(ValueError, match="VehicleControl"):
        VehicleControl(**bad)


def test_bad_agent_specs_raise():
    with pytest.raises(ValueError, match="behaviour must be one of"):
        AgentSpec(1, "car", "teleport")
    with pytest.raises(ValueError, match="agent_id must be an integer > 0"):
        AgentSpec(0, "car")
    with pytest.raises(ValueError, match="lane index 9 is out of range"):
        EmbeddedSimulator(straight_road(50.0), EgoStart(lane=9))


@pytest.fixture(scope="module")
def scene_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scenes")


def test_scenario_runs_40_ticks_and_criteria_evaluate(tmp_path, scene_cache):
    out = tmp_path / "run"
    summary = run_scenario("lane_change", RunOptions(out_dir=out, ticks=40, width=64, height=36, backend="cpu",
                                                     cache_dir=scene_cache, progress=False))
    assert summary["ticks"] == 40 and summary["cameras"] == 6
    assert set(summary["criteria"]) >= {"collision", "route_completion", "min_time_to_collision"}
    assert summary["criteria"]["collision"]["passed"] is True
    assert 0.1 < summary["criteria"]["route_completion"]["value"] < 1.0
    assert summary["criteria"]["max_offset_from_recorded_path_m"] > 0.3  # the lane change has begun
    assert set(summary["stage_ms_median"]) == {"sim", "compose", "render", "reference", "enhance", "temporal",
                                               "deliver", "agent", "record"}
    assert summary["enhancer"] is None and summary["stage_ms_median"]["enhance"] == 0.0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["log.jsonl", "manifest.json", "strip.png", "summary.json", "video.mp4"]
    lines = (out / "log.jsonl").read_text().splitlines()
    assert len(lines) == 40 and json.loads(lines[0])["frame"] == 1
    assert (out / "video.mp4").stat().st_size > 1000
    assert json.loads((out / "summary.json").read_text())["ticks_per_s"] > 0


class _CrashingAgent:
    def __init__(self, route_xy_m, target_speed_mps):
        self.calls = 0

    def sensors(self):
        from scenarios.agent import nuscenes_like_sensors

        return nuscenes_like_sensors(32, 18)[:1]

    def run_step(self, input_data, timestamp):
        self.calls += 1
        return VehicleControl(throttle=float("nan") if self.calls > 3 else 0.5)


class _BlindAgent(_CrashingAgent):
    def sensors(self):
        return []


def test_an_agent_asking_for_no_camera_is_named(tmp_path, scene_cache):
    """An agent whose sensors() is [] met "max() arg is an empty sequence" (the video's size check) first."""
    with pytest.raises(ValueError, match="_BlindAgent: sensors.. returned no camera"):
        run_scenario("cut_in", RunOptions(out_dir=tmp_path / "o", ticks=2, cache_dir=scene_cache, progress=False,
                                          scene="builder", enhancer=None, agent=f"{__name__}:_BlindAgent"))
    assert list(tmp_path.iterdir()) == []


def test_reverse_and_the_hand_brake_drive_the_embedded_ego():
    """carla.VehicleControl(reverse=True) sped the ego up forwards, hand_brake did nothing: both were dropped."""
    import carla

    sim = EmbeddedSimulator(straight_road(200.0), EgoStart(speed_mps=5.0), [])
    start = sim.tick().ego.position_m[0]
    sim.apply_control(carla.VehicleControl(throttle=1.0, reverse=True))  # slows, stops, then backs up
    speeds = [sim.tick().ego.speed_mps for _ in range(60)]
    assert min(speeds) < 1.0 and speeds[-1] > 1.0 and sim.tick().ego.position_m[0] < start + 5.0
    backing = sim.tick().ego.position_m[0]
    assert sim.tick().ego.position_m[0] < backing  # moving backwards
    sim.apply_control({"throttle": 0.0, "steer": 0.0, "brake": 0.0, "hand_brake": True})
    assert [sim.tick().ego.speed_mps for _ in range(40)][-1] == 0.0  # stopped, and not driven the other way
    sim.apply_control(VehicleControl(throttle=0.5, brake=1.0))  # forwards: the brake wins, never backwards
    assert sim.tick().ego.speed_mps == 0.0


def test_failed_run_leaves_nothing_behind(tmp_path, scene_cache):
    out = tmp_path / "crash"
    from scenarios.agent import AgentError

    # the NaN control is built inside the agent's run_step: the agent's error, named so
    with pytest.raises(AgentError, match=r"_CrashingAgent raised ValueError: VehicleControl.throttle .* in run_step "
                                         r"at frame 4") as err:
        run_scenario("cut_in", RunOptions(out_dir=out, ticks=10, cache_dir=scene_cache, progress=False,
                                          agent=f"{__name__}:_CrashingAgent"))
    assert isinstance(err.value.__cause__, ValueError)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder either


def test_a_run_takes_your_own_reconstructor(tmp_path, capsys, monkeypatch):
    """--reconstructor-checkpoint reaches the reconstruction (whose cache key holds its hash); it is refused for the
    builder's scene and for a folder that holds no reconstructor (a new user had no way to run the reconstructor they
    trained: only the enhancer's checkpoint could be named)."""
    import neural_sensor.reconstruct.drive as drive
    from scenarios.cli import main as cli_main

    seen = {}

    class _Reached(Exception):
        pass

    def fake(*_args, **kwargs):
        seen.update(kwargs)
        raise _Reached

    monkeypatch.setattr(drive, "reconstructed_scene", fake)
    mine = Path("checkpoints/reconstructor-small").resolve()
    with pytest.raises(_Reached):
        run_scenario("cut_in", RunOptions(out_dir=tmp_path / "a", ticks=2, scene="reconstruction", enhancer=None,
                                          reconstructor_checkpoint=mine, progress=False, video=False))
    assert seen["checkpoint"] == mine
    seen.clear()
    with pytest.raises(_Reached):  # without it: the shipped default, as before
        run_scenario("cut_in", RunOptions(out_dir=tmp_path / "b", ticks=2, scene="reconstruction", enhancer=None,
                                          progress=False, video=False))
    assert "checkpoint" not in seen
    for argv, message in (
            (["--scene", "builder", "--reconstructor-checkpoint", str(mine)],
             "--reconstructor-checkpoint is for a reconstructed scene"),
            (["--reconstructor-checkpoint", "checkpoints/enhancer-run"], "a checkpoint of class Enhancer, not "
                                                                         "ReconNet; it takes a reconstructor"),
            (["--reconstructor-checkpoint", str(tmp_path / "missing")], "missing: no such folder")):
        assert cli_main(["demo", "--ticks", "2", "--out", str(tmp_path / "c"), *argv]) == 2
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "c").exists()


def test_every_scenario_loads():
    for name in SCENARIOS:
        scenario = load_scenario(name)
        assert scenario.name == name and scenario.route_xy_m.shape[1] == 2
    with pytest.raises(ValueError, match="unknown scenario 'nope'"):
        load_scenario("nope")


def test_cli_bad_input_exit_code_2(tmp_path, capsys, scene_cache, monkeypatch):
    assert cli_main(["run", "nope", "--out", str(tmp_path / "a")]) == 2
    assert "unknown scenario 'nope'" in capsys.readouterr().err
    assert cli_main(["run", "--ticks", "2", "--out", str(tmp_path / "a")]) == 2  # neither a scenario nor --prompt
    err = capsys.readouterr().err
    assert "run needs a scenario" in err and "not both" not in err
    notes = tmp_path / "notes.md"  # a file in the working folder that is not Python: said so, not "No module named"
    notes.write_text("# not a scenario\n")
    monkeypatch.chdir(tmp_path)
    assert cli_main(["run", "notes.md", "--out", str(tmp_path / "a")]) == 2
    assert "scenario file notes.md is not a .py file" in capsys.readouterr().err
    notes.unlink()
    assert cli_main(["render", str(tmp_path / "missing.ply"), "--eye", "0", "0", "1", "--target", "1", "0", "1",
                     "-o", str(tmp_path / "x.png")]) == 2
    assert cli_main(["demo", "--ticks", "2", "--agent", "no.such:Agent", "--out", str(tmp_path / "b"),
                     "--cache", str(scene_cache)]) == 2
    assert "cannot load agent" in capsys.readouterr().err
    # an enhancer option where the run has no enhancer (the builder's default) is refused, not silently ignored
    assert cli_main(["demo", "--scene", "builder", "--enhancer-checkpoint", str(tmp_path), "--ticks", "2",
                     "--out", str(tmp_path / "b"), "--cache", str(scene_cache)]) == 2
    assert ("--enhancer-checkpoint is for a run with an enhancer, and this run has none (--enhancer none, the "
            "default for --scene builder): add --enhancer local") in capsys.readouterr().err
    for option, value in (("--enhancer-deadline-ms", "nan"), ("--enhancer-deadline-ms", "50"),
                          ("--temporal-blend", "0.3")):  # silently ignored without an enhancer (nan too)
        assert cli_main(["demo", "--scene", "builder", option, value, "--ticks", "2", "--out", str(tmp_path / "b"),
                         "--cache", str(scene_cache)]) == 2
        assert f"{option} is for a run with an enhancer, and this run has none" in capsys.readouterr().err
    for option, value in (("--ticks", "0"), ("--width", "-5")):  # argparse's own exit 2, naming the option
        with pytest.raises(SystemExit) as exit_:
            cli_main(["demo", option, value, "--out", str(tmp_path / "c"), "--cache", str(scene_cache)])
        assert exit_.value.code == 2
        assert f"argument {option}: must be a positive integer, got {int(value)}" in capsys.readouterr().err
    for option, value, said in (("--lod-px", "-1", "must be a finite number >= 0"),  # before any scene loads
                                ("--lod-px", "nan", "must be a finite number >= 0"),
                                ("--temporal-blend", "1", "must be a number in [0, 1)"),
                                ("--temporal-blend", "nan", "must be a number in [0, 1)"),
                                ("--enhancer", "tcp://nowhere", "with a port 1-65535"),  # not zmq's traceback
                                ("--enhancer", "remote", "local, none or a server's endpoint"),
                                ("--seed", "-1", "must be an integer >= 0, got -1")):  # numpy's traceback before
        with pytest.raises(SystemExit) as exit_:
            cli_main(["demo", option, value, "--out", str(tmp_path / "c"), "--cache", str(scene_cache)])
        assert exit_.value.code == 2
        assert f"argument {option}: " in (err := capsys.readouterr().err) and said in err, err
    assert not any(tmp_path.iterdir())


def test_cli_demo_writes_summary(tmp_path, scene_cache, capsys):
    out = tmp_path / "demo"
    # a run cut short of the scenario's length passes without judging the route it could not finish
    assert cli_main(["demo", "--ticks", "3", "--width", "48", "--height", "32", "--out", str(out), "--no-video",
                     "--cache", str(scene_cache), "--backend", "cpu", "--scene", "builder"]) == 0
    err = capsys.readouterr().err.strip().splitlines()  # a line for people after the JSON
    assert err[-1].startswith("neural-sensor demo: scenario cut_in passed its criteria (route completion not judged: "
                              "the run was cut to 3 of the scenario's "), err
    assert "; 3 ticks at" in err[-1] and str(out) in err[-1] and "out/bench" not in err[-1], err
    summary = json.loads((out / "summary.json").read_text())
    for key in ("ticks", "wall_s", "ticks_per_s", "tick_ms_median", "stage_ms_median", "criteria", "paths"):
        assert key in summary
    assert np.isfinite(summary["wall_s"]) and summary["tick_ms_median"] > 0
    # the builder's scene is the ground-truth mode: no enhancer unless asked for, the run's level of detail
    assert summary["scene"]["source"] == "builder" and summary["enhancer"] is None and summary["lod_px"] == LOD_PX
    assert summary["scene"]["scene_s"] >= 0  # what this run spent on its scene (build_s: the cached entry's build)


def test_the_cli_runs_the_neural_chain_by_default(tmp_path, scene_cache, capsys):
    """No --scene, no --enhancer: the world's recorded drive reconstructed (cached), drawn at the
    reconstruction's level of detail, every tick refined by a local enhancer server the run starts and stops."""
    out = tmp_path / "chain"
    assert cli_main(["run", "lane_change", "--ticks", "3", "--width", "64", "--height", "36", "--out", str(out),
                     "--no-video", "--cache", str(scene_cache), "--backend", "cpu", "--allow-fail"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scene"]["source"] == "reconstruction" and summary["lod_px"] == RECONSTRUCTION_LOD_PX
    assert summary["enhancer"]["endpoint"].startswith("tcp://127.0.0.1:") and summary["enhancer"]["ticks_enhanced"] >= 2
    # what makes the delivered images is in the record (a new user's finding: these two were not)
    assert summary["enhancer"]["temporal_blend"] == 0.6 and summary["enhancer"]["log_reference"] is True
    assert summary["neural_sensor_version"] == __import__("scenarios.runner").runner.package_version()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert sum(r["enhanced"] for r in records) == summary["enhancer"]["ticks_enhanced"]
    history = 0  # the accumulation's age, tick by tick: one more each enhanced tick, none after a raw one
    for record in records:
        history = history + 1 if record["enhanced"] else 0
        assert record["temporal_ticks"] == history, records
    plain = tmp_path / "plain"
    assert cli_main(["run", "lane_change", "--ticks", "2", "--width", "64", "--height", "36", "--out", str(plain),
                     "--no-video", "--cache", str(scene_cache), "--backend", "cpu", "--allow-fail",
                     "--enhancer", "none"]) == 0
    summary = json.loads((plain / "summary.json").read_text())
    assert summary["scene"]["source"] == "reconstruction" and summary["enhancer"] is None
    assert "missed" not in capsys.readouterr().err
    # a deadline no enhancer meets: every tick delivers the raw render, and the terminal says so
    late = tmp_path / "late"
    assert cli_main(["run", "lane_change", "--ticks", "2", "--width", "64", "--height", "36", "--out", str(late),
                     "--no-video", "--cache", str(scene_cache), "--backend", "cpu", "--allow-fail",
                     "--enhancer-deadline-ms", "0.001"]) == 0
    summary = json.loads((late / "summary.json").read_text())
    assert summary["enhancer"]["ticks_raw"] == 2 and summary["enhancer"]["ticks_enhanced"] == 0
    assert sum(summary["enhancer"]["raw_reasons"].values()) == 2, summary["enhancer"]["raw_reasons"]
    # counted without the server's port or socket: two runs' summaries count their reasons under the same keys
    assert not any("tcp://" in reason or "/dev/shm" in reason for reason in summary["enhancer"]["raw_reasons"])
    err = capsys.readouterr().err
    assert "the enhancer did not refine 2 of 2 ticks; those cameras got the raw render; on 2 of them: " in err, err
    assert "it missed its 0.001 ms deadline" in err, err


def test_the_raw_ticks_line_says_why_not_only_the_deadline():
    """A server that went away is said as such, not blamed on the deadline (the summary counts the reasons)."""
    from scenarios.cli import _raw_ticks_line

    gone = "enhancer at tcp://h:5 is not connected (reconnecting in the background)"
    line = _raw_ticks_line({"ticks_raw": 3, "deadline_ms": 1000.0, "raw_reasons": {
        gone: 2, "no reply from the enhancer at tcp://h:5 within 1000 ms": 1}}, 5)
    assert line == (f"the enhancer did not refine 3 of 5 ticks; those cameras got the raw render; on 2 of them: {gone} "
                    "(the connection to the server was lost: is it still running?; 1 other reason in log.jsonl)")
    assert "deadline" not in line


def test_run_scenario_names_arguments_of_the_wrong_kind(tmp_path):
    """run_scenario(None, options) and run_scenario("cut_in", None) failed with AttributeErrors from deep inside."""
    from scenarios.runner import RunOptions, run_scenario

    with pytest.raises(TypeError, match="scenario must be a Scenario or a name .* got NoneType"):
        run_scenario(None, RunOptions(out_dir=tmp_path / "a"))
    with pytest.raises(TypeError, match="options must be a RunOptions, got NoneType"):
        run_scenario("cut_in", None)
    assert not (tmp_path / "a").exists()


def test_more_bad_agent_specs():
    with pytest.raises(ValueError, match="duration_s must be > 0"):
        AgentSpec(1, "car", "cut_in", duration_s=0.0)
    with pytest.raises(ValueError, match="agent_id must be an integer"):
        AgentSpec("1", "car")
    with pytest.raises(ValueError, match="speed_mps must be >= 0"):
        AgentSpec(1, "car", speed_mps=-3.0)
    with pytest.raises(ValueError, match="cut_in needs a different target lane running the same way"):
        EmbeddedSimulator(straight_road(80.0), EgoStart(), [AgentSpec(1, "car", "cut_in", lane=0, target_lane=2)])
    # a size of the wrong form was a TypeError traceback (exit 1, as a failed scenario) or "not enough values to
    # unpack" naming no agent, and only once the simulator was built
    for size in ("big", (4.5, 1.8), (4.5, 1.8, -1.0), (4.5, float("nan"), 1.5)):
        with pytest.raises(ValueError, match=r"agent 1: size_m must be 3 positive lengths"):
            AgentSpec(1, "car", size_m=size)
    assert AgentSpec(1, "car", size_m=[4, 2, 1.5]).size_m == (4.0, 2.0, 1.5)
    assert AgentSpec(1, "car", size_m=np.array([4.5, 1.8, 1.5])).size_m == (4.5, 1.8, 1.5)


def test_cut_in_on_a_curve_keeps_its_speed():
    from neural_sensor.scene.layout import curve

    layout = curve(40.0, 90.0)
    positions = _cut_in_track(layout, EgoStart(lane=0, start_s_m=2, speed_mps=5), start_s_m=12, trigger_m=20,
                              ticks=80)
    steps = np.linalg.norm(np.diff(np.array(positions), axis=0), axis=1) / 0.05
    assert steps.max() < 6.0 * 1.4  # along the lane plus the sideways move, never a jump along the other lane


def test_hitting_a_parked_car_is_a_collision():
    from neural_sensor.scene.layout import Box

    layout = straight_road(80.0, buildings=False)
    layout.objects[:] = [Box((30.0, -1.75, 0.0), (4.5, 1.9, 1.5), 0.0, "parked_vehicle")]
    sim = EmbeddedSimulator(layout, EgoStart(lane=0, start_s_m=5, speed_mps=10))
    hits = []
    for _ in range(60):
        snap = sim.tick()
        sim.apply_control(VehicleControl(throttle=0.3))
        hits += list(snap.collisions)
    assert -1 in hits


def test_out_folder_safety(tmp_path, scene_cache):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep me")
    options = RunOptions(out_dir=precious, ticks=2, width=32, height=18, cache_dir=scene_cache, progress=False,
                         video=False)
    with pytest.raises(ValueError, match="holds what no run of this tool wrote there"):
        run_scenario("cut_in", options)
    assert (precious / "thesis.tex").read_text() == "keep me"
    record = tmp_path / "record"
    options.out_dir = record
    run_scenario("cut_in", options)
    first = (record / "summary.json").read_text()
    options.ticks = 3
    run_scenario("cut_in", options)  # a previous record is replaced
    assert json.loads((record / "summary.json").read_text())["ticks"] == 3 and first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "record"]


def test_truth_puts_the_builder_render_beside_each_camera_and_logs_psnr(tmp_path, scene_cache):
    from PIL import Image

    common = dict(ticks=2, width=64, height=36, backend="cpu", cache_dir=scene_cache, progress=False, video=False)
    same = run_scenario("lane_change", RunOptions(out_dir=tmp_path / "same", truth=True, lod_px=0.0, **common))
    record = json.loads((tmp_path / "same" / "log.jsonl").read_text().splitlines()[0])
    assert set(record["truth_psnr_db"]) == {"CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK",
                                            "CAM_BACK_LEFT", "CAM_BACK_RIGHT"}
    # the truth's render is its own stage, not counted as the record's (writing the log and video)
    assert record["ms"]["truth"] > 0 and "truth" in same["stage_ms_median"]
    assert record["ms"]["record"] < record["ms"]["truth"]
    # the builder's scene drawn in full IS the truth: identical
    assert all(v is None for v in record["truth_psnr_db"].values())
    assert all(v is None for v in same["truth_psnr_db_median"].values())
    # with the run's level of detail the far field is merged and the truth stays exact: they differ, a little
    # (at 64x36 a pixel spans 1.6 degrees, so a 2-pixel merge is coarse: 28-48 dB measured; at 480x270, >= 39 dB)
    lod = run_scenario("lane_change", RunOptions(out_dir=tmp_path / "lod", truth=True, **common))
    values = list(lod["truth_psnr_db_median"].values())
    assert all(v is None or v >= 25.0 for v in values) and any(v is not None for v in values), values
    strip = np.asarray(Image.open(tmp_path / "same" / "strip.png"))
    assert strip.shape[1] == 6 * 2 * 64  # each camera with its ground truth beside it
    assert all((strip[0, x] == 0).all() for x in range(0, 6 * 2 * 64, 64))  # both halves labelled (black boxes)
    recon = run_scenario("lane_change", RunOptions(out_dir=tmp_path / "recon", truth=True, scene="reconstruction",
                                                   **common))
    values = list(recon["truth_psnr_db_median"].values())
    assert all(v is not None and 5.0 < v < 60.0 for v in values), values
    plain = run_scenario("lane_change", RunOptions(out_dir=tmp_path / "plain", **common))
    assert plain["truth_psnr_db_median"] is None
    assert "truth_psnr_db" not in json.loads((tmp_path / "plain" / "log.jsonl").read_text().splitlines()[0])


def test_the_strip_names_its_cameras():
    """label_tiles writes each camera's name in its own tile's top-left corner and touches nothing else."""
    from scenarios.record import label_tiles

    image = np.full((60, 300, 3), 128, np.uint8)
    before = image.copy()
    label_tiles(image, ["CAM_FRONT", "CAM_BACK", "X"], tile_width=100)
    changed = np.any(image != before, axis=2)
    rows, cols = np.nonzero(changed)
    assert rows.max() < 20  # the label's box only
    for tile in range(3):
        in_tile = changed[:, tile * 100:(tile + 1) * 100]
        assert in_tile[:, :4].any() and not in_tile[:, 95:].any()  # each tile labelled at its left, clipped
    assert (image[0, 0] == 0).all() and image[..., 0].max() >= 250  # a black box, white text (antialiased)
    assert changed[:, :100].sum() > changed[:, 200:].sum()  # the longer name takes more room


def test_the_video_mosaic_has_no_empty_tiles_for_fewer_than_three_cameras():
    from neural_sensor.rig import SensorSpec
    from scenarios.record import check_video_size, mosaic

    two = [np.full((96, 160, 3), 9, np.uint8), np.full((64, 96, 3), 9, np.uint8)]
    assert mosaic(two).shape == (96, 320, 3)  # 480 wide, a third tile black, until 2026-12-06
    assert mosaic(two * 3).shape == (192, 480, 3)
    specs = [SensorSpec.mounted(name, w, h, 90.0, (0, 0, 1.6)) for name, w, h in (("a", 160, 96), ("b", 96, 64))]
    assert check_video_size(specs) == (320, 96) and check_video_size(specs, truth=True) == (640, 96)


def test_scenario_fields_are_checked_by_name():
    """What a user's make_scenario can get wrong is refused where it is made, naming the field (not a TypeError or
    IndexError deep in the simulator, and not an ego extrapolated off its lane into empty space)."""
    from scenarios.base import Scenario, lane_route

    layout = straight_road(60.0, lanes_per_direction=1)
    for kwargs, message in (({"lane": "1"}, "the ego's start: lane must be an integer >= 0"),
                            ({"start_s_m": float("nan")}, "the ego's start: start_s_m must be a finite number"),
                            ({"speed_mps": -1.0}, "the ego's start: speed_mps must be >= 0"),
                            ({"size_m": (4.0, 0.0, 1.5)}, "the ego's start: size_m must be 3 positive lengths")):
        with pytest.raises(ValueError, match=message):
            EgoStart(**kwargs)
    with pytest.raises(ValueError, match="agent 1: lane must be an integer >= 0"):
        AgentSpec(1, lane="1")
    with pytest.raises(ValueError, match="agent 2: target_lane must be an integer >= 0"):
        AgentSpec(2, target_lane=1.0)
    with pytest.raises(ValueError, match=r"the ego's start_s_m 300 is not on lane 0 \(its length is 60.0 m\)"):
        EmbeddedSimulator(layout, EgoStart(start_s_m=300.0))
    with pytest.raises(ValueError, match="the ego's start_s_m -10 is not on lane 0"):
        EmbeddedSimulator(layout, EgoStart(start_s_m=-10.0))
    with pytest.raises(ValueError, match="agent 7's lane: lane index 9 is out of range"):
        EmbeddedSimulator(layout, EgoStart(), [AgentSpec(7, lane=9)])
    with pytest.raises(ValueError, match=r"agent 3: start_xy_m \(500.0, 500.0\) is \d+ m from the nearest lane"):
        EmbeddedSimulator(layout, EgoStart(), [AgentSpec(3, "car", "parked", start_xy_m=(500.0, 500.0))])
    EmbeddedSimulator(layout, EgoStart(), [AgentSpec(3, "car", "parked", start_xy_m=(30.0, -5.0))])  # a verge
    with pytest.raises(ValueError, match="agent 3 starts inside a building"):  # 1.5 m past the pavement
        EmbeddedSimulator(layout, EgoStart(), [AgentSpec(3, "car", "parked", start_xy_m=(30.0, -8.0))])
    with pytest.raises(ValueError, match="a 'parked' agent starts at start_xy_m"):  # not silently at (0, 0)
        EmbeddedSimulator(layout, EgoStart(), [AgentSpec(3, "car", "parked", lane=1, start_s_m=20.0)])
    with pytest.raises(ValueError, match=r"agent 3: start_s_m 400 is not on lane 0 \(its length is"):
        EmbeddedSimulator(layout, EgoStart(), [AgentSpec(3, "car", "follow_lane", start_s_m=400.0)])
    route = lane_route(layout, 0, 0.0, 50.0)
    ok = Scenario("mine", "", layout, EgoStart(), [], route, route_goal_m=40.0)
    assert ok.route_xy_m.shape == (50, 2)
    with pytest.raises(ValueError, match=r"recorded_lane must be a lane of the layout \(0..1\), got 9"):
        Scenario("mine", "", layout, EgoStart(), [], route, recorded_lane=9)
    with pytest.raises(ValueError, match=r"route_xy_m must be \[P >= 2, 2\]"):
        Scenario("mine", "", layout, EgoStart(), [], route[:, :1])
    with pytest.raises(ValueError, match="agents must be a list of AgentSpec"):
        Scenario("mine", "", layout, EgoStart(), [{"agent_id": 1}], route)
    for field, value, message in (("target_speed_mps", -5.0, "target_speed_mps must be a finite number > 0, got -5.0"),
                                  ("target_speed_mps", float("nan"), "target_speed_mps must be a finite number > 0"),
                                  ("route_goal_m", 0.0, "route_goal_m must be a finite number > 0"),
                                  ("min_ttc_s", -1.0, "min_ttc_s must be a finite number >= 0"),
                                  ("voxel_m", "0.3", "voxel_m must be a finite number > 0"),
                                  ("max_ticks", 0, "max_ticks must be an integer >= 1, got 0"),
                                  ("max_ticks", 20.5, "max_ticks must be an integer >= 1")):
        with pytest.raises(ValueError, match=rf"scenario 'mine': {re.escape(message)}"):
            Scenario("mine", "", layout, EgoStart(), [], route, **{field: value})
    # a route that runs on past the road's end (lane_route extrapolates the last segment), or beside the road
    with pytest.raises(ValueError, match=r"route_xy_m point 99 \[99.0, -1.8\] is 33.5 m beyond the layout's lanes"):
        Scenario("mine", "", layout, EgoStart(), [], lane_route(layout, 0, 0.0, 100.0))
    with pytest.raises(ValueError, match=r"route_xy_m point 0 .* is 4.5 m beyond the layout's lanes"):
        Scenario("mine", "", layout, EgoStart(), [], route + np.array([0.0, -10.0]))
    # (a route that far from the ego's start takes a route deviation bound that lets the ego start there)
    Scenario("mine", "", layout, EgoStart(), [], route + np.array([0.0, 3.4]), route_goal_m=40.0,
             max_route_deviation_m=5.0)  # the next lane
    Scenario("mine", "", layout, EgoStart(), [], route + np.array([0.0, -4.9]), route_goal_m=40.0,
             max_route_deviation_m=5.0)  # the shoulder


def test_a_route_and_agents_that_cannot_be_meant_are_refused_where_they_are_made():
    """A new user's mistakes (2026-12-06), each refused naming it instead of a run that fails or passes for nothing:
    a route joined from lane polylines (repeated end points) drives instead of steering NaN; a route against the
    ego's lane, one far from its start, a route goal longer than the route; two actors overlapping at the start, the
    ego inside a parked car; a heading in degrees; a parked agent without a place."""
    from carla_bridge.embedded import AgentSpec
    from neural_sensor.scene.path import Path as Polyline
    from scenarios.base import Scenario, lane_route

    layout = straight_road(120.0, lanes_per_direction=1)
    route = lane_route(layout, 0, 0.0, 100.0)
    joined = np.concatenate([route[:50], route[49:]])  # the joint repeated, as concatenated lanes give it
    scenario = Scenario("mine", "", layout, EgoStart(), [], joined, max_ticks=40)
    assert len(Polyline(scenario.route_xy_m).points) == 100 and np.isfinite(Polyline(joined).dirs).all()
    from scenarios.agent import BuiltinAgent

    agent = BuiltinAgent(joined, 10.0)  # its steering follows the route's Path: every segment has a direction
    assert np.isfinite(agent.route.dirs).all() and agent.route.length_m == pytest.approx(99.0)
    with pytest.raises(ValueError, match=r"route_xy_m runs against the ego's lane 0 at its start \(their headings "
                                         r"differ by 180 degrees\)"):
        Scenario("mine", "", layout, EgoStart(), [], route[::-1].copy())
    with pytest.raises(ValueError, match=r"route_xy_m passes 6.0 m from the ego's start \[5.0, -1.8\]"):
        Scenario("mine", "", layout, EgoStart(), [], lane_route(layout, 0, 0.0, 90.0) + np.array([0.0, 6.0]))
    with pytest.raises(ValueError, match=r"route_goal_m 100 is longer than the route ahead of the ego's start "
                                         r"\(94.0 m\)"):
        Scenario("mine", "", layout, EgoStart(), [], route, route_goal_m=100.0)
    Scenario("mine", "", layout, EgoStart(), [], lane_route(layout, 0, 10.0, 90.0))  # starting 5 m ahead: fine
    with pytest.raises(ValueError, match=r"the ego and agent 1 overlap where they start \(centres 1.0 m apart\)"):
        EmbeddedSimulator(layout, EgoStart(start_s_m=5.0), [AgentSpec(1, start_s_m=6.0)])
    with pytest.raises(ValueError, match=r"agent 1 and agent 2 overlap where they start"):
        EmbeddedSimulator(layout, EgoStart(), [AgentSpec(1, start_s_m=30.0), AgentSpec(2, start_s_m=31.0)])
    EmbeddedSimulator(layout, EgoStart(), [AgentSpec(1, lane=1, start_s_m=115.0)])  # the other lane, beside: fine
    import dataclasses

    from neural_sensor.scene.layout import Box

    blocked = dataclasses.replace(layout, objects=[Box((6.0, -2.5, 0.0), (4.5, 1.9, 1.5), 0.0, "parked_vehicle")])
    with pytest.raises(ValueError, match=r"the ego starts inside an object of the layout .* at \(6.0, -2.5\)"):
        EmbeddedSimulator(blocked, EgoStart(start_s_m=5.0))
    # a narrow street's parked cars stand clear of a car centred in its lane (they touched it until 2026-12-06)
    narrow = straight_road(120.0, lanes_per_direction=1, lane_width_m=3.0, parked_car_density=5.0)
    cars = [box for box in narrow.objects if box.cls == "parked_vehicle"]
    assert cars and all(abs(box.centre_m[1]) - 0.95 >= 3.0 - (3.0 - 1.9) / 2 + 0.25 - 1e-9 for box in cars)
    with pytest.raises(ValueError, match=r"heading_rad 90 is more than a turn: it is in radians \(degrees\? "
                                         r"math.radians\(90\) = 1.5708\)"):
        AgentSpec(1, "pedestrian", "parked", start_xy_m=(10.0, -5.0), heading_rad=90.0)
    with pytest.raises(ValueError, match=r"agent 1: a 'parked' agent needs start_xy_m"):
        EmbeddedSimulator(layout, EgoStart(), [AgentSpec(1, "car", "parked")])
    with pytest.raises(ValueError, match=r"agent 1: start_xy_m places a cross/parked agent"):
        EmbeddedSimulator(layout, EgoStart(), [AgentSpec(1, start_s_m=40.0, start_xy_m=(40.0, -1.75))])
    with pytest.raises(ValueError, match=r"start_xy_m must be 2 finite numbers"):
        AgentSpec(1, "car", "parked", start_xy_m=(1.0, float("nan")))


def test_the_agent_is_destroyed_on_every_way_out(tmp_path, scene_cache):
    """As the leaderboard does when a route ends, the runner calls agent.destroy(): after a run, and after a run
    the agent's run_step broke (whose error stands)."""
    marks = tmp_path / "destroyed.txt"
    (tmp_path / "my_agent.py").write_text(
        "from scenarios.agent import BuiltinAgent\n"
        "class Tidy(BuiltinAgent):\n"
        "    def destroy(self):\n"
        f"        open({str(marks)!r}, 'a').write('tidy\\n')\n"
        "class Broken(Tidy):\n"
        "    def run_step(self, input_data, timestamp):\n"
        "        raise RuntimeError('wheel fell off')\n")
    common = dict(ticks=2, width=32, height=18, cache_dir=scene_cache, progress=False, video=False, scene="builder")
    run_scenario("lane_change", RunOptions(out_dir=tmp_path / "a", agent=f"{tmp_path / 'my_agent.py'}:Tidy", **common))
    assert marks.read_text() == "tidy\n"
    from scenarios.agent import AgentError

    with pytest.raises(AgentError, match="wheel fell off"):
        run_scenario("lane_change", RunOptions(out_dir=tmp_path / "b", agent=f"{tmp_path / 'my_agent.py'}:Broken",
                                               **common))
    assert marks.read_text() == "tidy\ntidy\n"


def test_time_to_collision_follows_the_route_round_a_bend():
    """A user's bend with a car coming the other way in its own lane failed min time-to-collision at 0.6 s: the
    straight corridor along the ego's heading crosses the oncoming lane on a bend. Along the ego's route (what the
    criteria pass) that car is not ahead, and a slower car ahead in the ego's own lane is, its gap along the arc."""
    from neural_sensor.scene.layout import curve
    from neural_sensor.scene.path import Path
    from neural_sensor.world import AgentState, WorldSnapshot, pose_from_xyz_yaw

    layout = curve(40.0, 90.0, parked_car_density=0.0)
    own = next(i for i, lane in enumerate(layout.lanes) if lane.direction == -1)
    other = next(i for i, lane in enumerate(layout.lanes) if lane.direction == 1)
    route = Path(lane_route(layout, own, 0.0, 55.0))
    oncoming = Path(lane_route(layout, other, 0.0, 55.0))

    def car(agent_id, path, s_m, speed_mps):
        (x, y), yaw = path.at(s_m)
        return AgentState(agent_id, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(x, y, 0.0, yaw), speed_mps)

    ego = car(0, route, 20.0, 8.0)
    coming = car(1, oncoming, 28.0, 8.0)  # further round the bend, in its own lane, where the heading points
    crossing = WorldSnapshot(1, 0.05, ego, (coming,))
    assert time_to_collision(crossing) < 1.0  # the straight corridor: what the criteria used to say
    assert time_to_collision(crossing, route) == float("inf")
    leader = car(2, route, 34.0, 5.0)  # 14 m ahead along the arc, 3 m/s slower
    expected = (14.0 - 4.5) / 3.0
    assert time_to_collision(WorldSnapshot(1, 0.05, ego, (coming, leader)), route) == pytest.approx(expected, rel=1e-3)



@pytest.mark.parametrize("ego_x, ego_yaw, agent_x, agent_speed, expected", [
    (10.0, 0.0, 20.0, 0.0, 0.55),  # the ego before the route's start (a route starting ahead of it)
    (-4.0, 0.0, -0.5, 0.0, 0.0),  # ... touching a car there
    (60.0, 0.0, 52.0, 5.0, float("inf")),  # past the route's end: a car behind is not ahead
    (60.0, 0.0, 70.0, 5.0, 1.1),  # ... and one ahead is, at its own gap
    (50.0, math.pi, 40.0, 0.0, 0.55),  # driving against the route: along its own heading
])
def test_time_to_collision_beyond_the_routes_ends(ego_x, ego_yaw, agent_x, agent_speed, expected):
    """A route's arc length continues straight before its start and past its end (Path.project clamps it: an ego
    past the end was put level with the end and a car behind it counted as ahead at a gap of zero)."""
    from neural_sensor.scene.path import Path
    from neural_sensor.world import AgentState, WorldSnapshot, pose_from_xyz_yaw

    route = Path(np.array([[30.0, 0.0], [50.0, 0.0]]) if ego_x == 10.0 else np.array([[0.0, 0.0], [50.0, 0.0]]))
    ego = AgentState(0, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(ego_x, 0.0, 0.0, ego_yaw), 10.0)
    agent = AgentState(1, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(agent_x, 0.0, 0.0, 0.0), agent_speed)
    assert time_to_collision(WorldSnapshot(1, 0.05, ego, (agent,)), route) == pytest.approx(expected, rel=1e-6)


def test_route_deviation_fails_an_ego_that_leaves_its_route():
    """An agent that drove its whole run in the oncoming lane (7.6 m off its route) passed every criterion: route
    completion projects onto the route whatever the distance. The ego's centre may stray max_route_deviation_m."""
    from neural_sensor.world import AgentState, WorldSnapshot, pose_from_xyz_yaw
    from scenarios.base import CriteriaState, Scenario

    layout = straight_road(120.0)
    scenario = Scenario("s", "", layout, EgoStart(lane=1, start_s_m=5.0), [], lane_route(layout, 1, 0.0, 110.0),
                        route_goal_m=40.0)
    y_route = scenario.route_xy_m[0, 1]
    for offset_m, passed in ((1.0, True), (scenario.max_route_deviation_m + 0.5, False)):
        state = CriteriaState(scenario)
        for frame in range(1, 30):
            pose = pose_from_xyz_yaw(5.0 + 2.0 * frame, y_route + (offset_m if frame > 10 else 0.0), 0.0, 0.0)
            state.update(WorldSnapshot(frame, frame * 0.05, AgentState(0, "car", (4.5, 1.9, 1.5), pose, 10.0)))
        result = state.results()["route_deviation"]
        assert result["passed"] is passed and result["value_m"] == pytest.approx(offset_m, abs=1e-6)
        assert result["frame"] == (None if passed else 11) and state.passed is passed
    with pytest.raises(ValueError, match="max_route_deviation_m must be a finite number > 0"):
        Scenario("s", "", layout, EgoStart(lane=1), [], lane_route(layout, 1, 0.0, 110.0), max_route_deviation_m=0.0)
    # a route passing farther from the ego's start than the criterion allows would fail it at frame 1: refused
    with pytest.raises(ValueError, match=r"passes 3.0 m from the ego's start .* \(at most 2.5 m away, "
                                         r"max_route_deviation_m\)"):
        Scenario("s", "", layout, EgoStart(lane=1, start_s_m=5.0), [],
                 lane_route(layout, 1, 0.0, 110.0) + np.array([0.0, 3.0]), route_goal_m=40.0)
    # near a corner of a route given as a few waypoints the deviation is the distance to the polyline (the
    # projection's lateral offset, to one segment's line, read 0 for an ego going straight on past the turn)
    x0, y0 = scenario.route_xy_m[0]
    turning = Scenario("t", "", layout, EgoStart(lane=1, start_s_m=5.0), [],
                       np.array([[x0, y0], [60.0, y0], [60.0, y0 + 0.5]]), route_goal_m=40.0)
    state = CriteriaState(turning)
    pose = pose_from_xyz_yaw(75.0, y0, 0.0, 0.0)  # 15 m straight on past the corner at x = 60
    state.update(WorldSnapshot(1, 0.05, AgentState(0, "car", (4.5, 1.9, 1.5), pose, 10.0)))
    assert state.results()["route_deviation"]["value_m"] == pytest.approx(15.0, abs=1e-6)  # was 0


def test_an_agent_starting_inside_a_building_or_a_parked_car_is_refused():
    """A parked agent placed inside a building or on the layout's own parked car is refused by name (the cameras
    would never see it); one beside a parked car's box, or under a tree, is not."""
    layout = straight_road(120.0, parked_car_density=1.0)
    by_class = {}
    for box in layout.objects:
        by_class.setdefault(box.cls, box)
    ego = EgoStart(lane=0, start_s_m=5.0)
    for cls, what in (("building", "a building"), ("parked_vehicle", "a parked car of the layout")):
        x, y, _ = by_class[cls].centre_m
        with pytest.raises(ValueError, match=f"agent 7 starts inside {what}"):
            EmbeddedSimulator(layout, ego, [AgentSpec(7, "pedestrian", "parked", start_xy_m=(x + 0.3, y))])
    car = by_class["parked_vehicle"]
    x, y, _ = car.centre_m
    half_m = 0.5 * (car.size_m[1] + 0.6)  # a pedestrian's centre just off the car's long side
    beside = (x - math.sin(car.yaw_rad) * half_m, y + math.cos(car.yaw_rad) * half_m)
    EmbeddedSimulator(layout, ego, [AgentSpec(7, "pedestrian", "parked", start_xy_m=beside)])
    if "vegetation" in by_class:
        tree = by_class["vegetation"].centre_m
        EmbeddedSimulator(layout, ego, [AgentSpec(7, "pedestrian", "parked", start_xy_m=tree[:2])])


def test_truth_psnr_median_counts_identical_ticks():
    """A new user's finding: the per-camera median of --truth's PSNR left out identical ticks (+inf): a camera
    identical on most ticks and 40 dB on one had the median 40."""
    import math

    from scenarios.runner import _median_db

    assert _median_db([math.inf, math.inf, 40.0]) is None
    assert _median_db([30.0, math.inf, 40.0]) == 40.0
    assert _median_db([30.0, 31.0, math.inf]) == 31.0
