"""The CLI with a user's own code and inputs: scenario and agent files and modules, bad options, OpenDRIVE maps,
build-scene, prompts, checkpoints found from anywhere, the render command.

Each case here was found by trying the tool as a new user would (split from test_lifecycle.py, which keeps the
processes, signals and record folders).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _cli import ROOT, TINY, cli as _cli
from neural_sensor.render import cuda_available

USER_SCENARIO = '''
"""slow_leader: a user's own scenario, written from scratch."""
from carla_bridge.embedded import AgentSpec, EgoStart
from neural_sensor.scene.layout import Style, straight_road
from scenarios.base import Scenario, lane_route


def make_scenario(seed: int = 0) -> Scenario:
    layout = straight_road(120.0, style=Style(seed=seed))
    ego = EgoStart(lane=1, start_s_m=5.0, speed_mps=8.0)
    agents = [AgentSpec(1, "car", "follow_lane", lane=1, start_s_m=40.0, speed_mps=4.0)]
    return Scenario("slow_leader", "a slow car ahead", layout, ego, agents,
                    route_xy_m=lane_route(layout, 1, 0.0, 110.0), target_speed_mps=8.0, max_ticks=5)
'''


def test_failed_criteria_exit_1_unless_allowed(tmp_path):
    """The last line says the verdict and the speed; a run cut short by --ticks does not judge the route."""
    path = tmp_path / "slow_leader.py"
    path.write_text(USER_SCENARIO)  # 5 ticks: too short to complete its route
    failed = _cli(["run", str(path), *TINY, "-o", str(tmp_path / "a")], tmp_path)
    assert failed.returncode == 1, failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert "scenario slow_leader FAILED its criteria (route completion); 5 ticks at " in last, last
    assert last.endswith("(exit 1; --allow-fail exits 0)"), last
    summary = json.loads(failed.stdout)
    assert summary["passed"] is False and summary["criteria"]["route_completion"]["passed"] is False
    assert summary["criteria_not_judged"] == []
    allowed = _cli(["run", str(path), *TINY, "-o", str(tmp_path / "b"), "--allow-fail"], tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    last = allowed.stderr.strip().splitlines()[-1]
    assert "FAILED its criteria (route completion); 5 ticks at " in last and last.endswith("(exit 0: --allow-fail)")
    cut = _cli(["run", "lane_change", "--ticks", "3", *TINY, "-o", str(tmp_path / "c")], tmp_path)
    assert cut.returncode == 0, cut.stderr
    summary = json.loads(cut.stdout)
    route = summary["criteria"]["route_completion"]
    assert summary["passed"] is True and route["passed"] is None and route["value"] < 0.95
    assert summary["criteria_not_judged"] == ["route completion: the run was cut to 3 of the scenario's 200 ticks"]
    assert "scenario lane_change passed its criteria (route completion not judged: " in cut.stderr


def test_user_scenario_file_and_module(tmp_path):
    from scenarios.runner import load_scenario

    path = tmp_path / "my_scenarios" / "slow_leader.py"
    path.parent.mkdir()
    path.write_text(USER_SCENARIO)
    result = _cli(["run", str(path), *TINY, "-o", str(tmp_path / "out"), "--allow-fail"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["scenario"] == "slow_leader"
    (path.parent / "__init__.py").write_text("")
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = _cli(["run", "my_scenarios.slow_leader", *TINY, "-o", str(tmp_path / "out2"), "--allow-fail"],
                  tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no make_scenario"):
        load_scenario(str(tmp_path / "empty.py"))
    (tmp_path / "wrong.py").write_text("def make_scenario(seed):\n    return 42\n")
    with pytest.raises(ValueError, match="not a Scenario"):
        load_scenario(str(tmp_path / "wrong.py"))
    (tmp_path / "broken.py").write_text("import no_such_module_here\n")
    with pytest.raises(ValueError, match="failed to load"):
        load_scenario(str(tmp_path / "broken.py"))
    with pytest.raises(ValueError, match="does not exist"):
        load_scenario(str(tmp_path / "missing.py"))
    with pytest.raises(ValueError, match="is a folder; name the .py file in it"):  # it said "does not exist"
        load_scenario(str(path.parent))
    from scenarios.runner import RunOptions, run_scenario

    scenario = load_scenario(str(path))  # a Scenario object: the options are checked by run_scenario itself
    for bad, said in ((dict(seed=-1), "RunOptions.seed must be an integer >= 0, got -1"),  # numpy's message
                      (dict(ticks=2.5), "RunOptions.ticks must be an integer")):  # ran 2 ticks
        with pytest.raises(ValueError, match=said):
            run_scenario(scenario, RunOptions(out_dir=tmp_path / "bad", progress=False, **bad))
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="cannot import"):
        load_scenario("no_such_package.scenario")
    # a top-level module on the PYTHONPATH, as the README says ("unknown scenario" before)
    (tmp_path / "top_level_leader.py").write_text(USER_SCENARIO)
    (tmp_path / "top_level_broken.py").write_text("import no_such_module_here\n")
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        assert load_scenario("top_level_leader").name == "slow_leader"
        with pytest.raises(ValueError, match="cannot import scenario module 'top_level_broken'.*no_such_module_here"):
            load_scenario("top_level_broken")
        with pytest.raises(ValueError, match="unknown scenario 'cut_inn'.*no module 'cut_inn' there"):
            load_scenario("cut_inn")
    finally:
        sys.path.remove(str(tmp_path))
        for module in ("top_level_leader", "top_level_broken"):
            sys.modules.pop(module, None)


def test_too_many_ticks_stop_at_the_end_of_the_route(tmp_path):
    """`demo --ticks 100000` drove to x = 2145 m on a 200 m street; here a 60 m street, for speed."""
    path = tmp_path / "short.py"
    path.write_text(USER_SCENARIO.replace("straight_road(120.0", "straight_road(60.0")
                    .replace("lane_route(layout, 1, 0.0, 110.0)", "lane_route(layout, 1, 0.0, 55.0)")
                    .replace("start_s_m=40.0, speed_mps=4.0", "start_s_m=50.0, speed_mps=8.0")
                    .replace("target_speed_mps=8.0,", "target_speed_mps=8.0, route_goal_m=40.0,"))
    result = _cli(["run", str(path), "--ticks", "100000", *TINY, "-o", str(tmp_path / "out"), "--allow-fail"],
                  tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ticks_requested"] == 100000 and summary["ticks"] < 400
    assert "end of its route" in summary["stopped_early"]
    last = json.loads((tmp_path / "out" / "log.jsonl").read_text().splitlines()[-1])
    assert last["ego"]["x_m"] < 62.0


# ------------------------------------------------------------------ bad input, named
USER_AGENTS = '''
from scenarios.agent import BuiltinAgent


class Crashing(BuiltinAgent):
    def __init__(self, route_xy_m, target_speed_mps):
        super().__init__(route_xy_m, target_speed_mps, 64, 36)

    def run_step(self, input_data, timestamp):
        return input_data["CAM_MISSING"]


class BadConfig:
    def __init__(self, route_xy_m, target_speed_mps):
        raise TypeError("bad config")


class NoControl(Crashing):
    def run_step(self, input_data, timestamp):
        return None


class Exits(Crashing):
    def run_step(self, input_data, timestamp):
        raise SystemExit(0)


class ExitsWithText(Crashing):
    def run_step(self, input_data, timestamp):
        import sys
        sys.exit("model file missing")
'''


def test_an_agent_by_file_and_a_bad_control_name_the_agent(tmp_path):
    """`--agent path/to/file.py:Class` loads the file (as a scenario file does); a module not on sys.path says
    how to make it found; a control that is not one names the agent and the frame."""
    (tmp_path / "my_agents.py").write_text(USER_AGENTS)
    bad = _cli(["run", "cut_in", *TINY, "--ticks", "3", "--agent", f"{tmp_path / 'my_agents.py'}:NoControl",
                "-o", str(tmp_path / "o")], tmp_path)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == (
        f"neural-sensor run: error: the agent {tmp_path / 'my_agents.py'}:NoControl returned a bad control from "
        "run_step at frame 1: control must have throttle, steer and brake, got NoneType")
    missing = _cli(["run", "cut_in", *TINY, "--agent", "my_agents:NoControl", "-o", str(tmp_path / "o")], tmp_path)
    assert missing.returncode == 2 and "No module named 'my_agents'" in missing.stderr, missing.stderr
    assert "set PYTHONPATH, or give the file: --agent path/to/my_agents.py:NoControl" in missing.stderr
    relative = _cli(["run", "cut_in", *TINY, "--ticks", "2", "--agent", "./my_agents.py:Crashing", "-o",
                     str(tmp_path / "o")], tmp_path, cwd=tmp_path)
    assert relative.returncode == 2 and "raised KeyError: 'CAM_MISSING' in run_step" in relative.stderr


@pytest.mark.parametrize("agent, message", [
    ("Crashing", "raised KeyError: 'CAM_MISSING' in run_step at frame 1"),
    ("BadConfig", "raised TypeError: bad config in its constructor"),
    # sys.exit() in an agent ended the run with exit 0 (or 1 with a text: a failed criterion) and no record
    ("Exits", "raised SystemExit: 0 in run_step at frame 1"),
    ("ExitsWithText", "raised SystemExit: model file missing in run_step at frame 1"),
])
def test_an_agents_exception_names_the_agent_and_shows_its_traceback(tmp_path, agent, message):
    """A bug in the user's agent is an error of the run (exit 2) that names the agent and where it was called,
    after the agent's own traceback; not a bare traceback (exit 1 would read as "the scenario failed")."""
    (tmp_path / "my_agents.py").write_text(USER_AGENTS)
    result = _cli(["run", "cut_in", *TINY, "--ticks", "3", "--agent", f"my_agents:{agent}", "-o", str(tmp_path / "o")],
                  tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"neural-sensor run: error: the agent my_agents:{agent} {message}"), last
    assert last.endswith(" (its traceback is above)"), last
    if agent == "Crashing":  # a KeyError in run_step: the sensor ids the agent was given
        assert "(input_data has 'CAM_FRONT', 'CAM_FRONT_LEFT'," in last and "'world')" in last, last
    assert "Traceback" in result.stderr and "my_agents.py" in result.stderr
    assert not (tmp_path / "o").exists()


def test_carla_without_the_carla_package(tmp_path):
    code = ("import sys; sys.modules['carla'] = None; from scenarios.cli import main; "
            f"sys.exit(main(['demo', '--carla', 'localhost:1', '-o', {str(tmp_path / 'out')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "pip install carla==0.9.16" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["render", "x.ply", "--eye", "0", "0", "1", "--target", "5", "0", "1", "--width", "20000"], "--width must be"),
    (["render", "x.ply", "--pose", "0", "0", "1", "0", "0", "0", "--target", "5", "0", "1"], "--target goes with"),
    (["render", "x.ply", "--eye", "0", "0", "1", "--target", "5", "0", "1", "-o", "x.txt"], "must name a .png"),
    (["street", "--cameras", "9"], "--cameras must be"),
    (["street", "--gaussians", "100000000"], "--gaussians must be in 1,000..10,000,000"),
    (["street", "--gaussians", "10"], "--gaussians must be in 1,000..10,000,000"),
    (["render", "x.ply", "--pose", "5", "-2", "1.6", "0", "inf", "0"], "render: --pose must be finite numbers"),
    (["render", "x.ply", "--eye", "0", "0", "nan", "--target", "5", "0", "1"], "render: --eye must be finite"),
    (["render", "x.ply", "--eye", "0", "0", "1", "--target", "5", "0", "1", "--up", "0", "0", "0"],
     "render: --up must not be the zero vector"),
    (["run", "cut_in", "--width", "10000"], "must be in 1..8192 pixels, got 10000"),
    (["run", "cut_in", "--render-scale", "0"], "--render-scale: must be a number in (0, 1], got 0"),
    (["run", "--tciks", "5", "cut_in"], "neural-sensor run: error: unrecognized option --tciks (did you mean "
                                        "--ticks?) (see neural-sensor run --help)"),
    (["reconstruct", "no_log", "-o", "."], "-o . is a folder; give the PLY file to write"),
    (["run", "cut_in", "--width", "5000", "--height", "36", "--no-video", "--scene", "builder", "--enhancer",
      "local"], "the enhancer takes images of at most 4096 pixels a side, and camera CAM_FRONT is 5000x36"),
    # six 1920x1080 cameras went unrefined every tick (a request over the protocol's 64 MiB) and the run passed
    (["run", "cut_in", "--width", "1920", "--height", "1080", "--no-video", "--enhancer", "local"],
     "--enhancer: 6 camera(s) up to 1920x1080 make an enhancer request of 124 MB a tick (10 bytes a pixel with the "
     "drive log reference), over the protocol's 67 MB"),
    (["run", "cut_in", *TINY, "--enhancer", "tcp://127.0.0.1:9"],  # a remote server absent at the start
     "; nothing listens at 127.0.0.1:9 (connection refused); is a server running there? (start one with "
     "`neural-sensor serve-enhancer --bind tcp://127.0.0.1:9`"),
    (["demo", "--width", "6000", "--height", "36", "--scene", "builder"], "H.264 encodes no side longer than 16384"),
    (["serve-enhancer", "--threads", "-1"], "threads must be >= 0"),
    (["serve-enhancer", "--workers", "1000"], "workers must be in 1..4 (two per CPU core, or 4), got 1000"
     if (os.cpu_count() or 1) <= 2 else "workers must be in 1.."),  # 1000 model processes were started
    (["reconstruct", "no_log", "--size", "100000", "100000"], "--size must be two numbers of pixels in 1..8192"),
    (["run", "cut_in", *TINY[:-2], "--enhancer", "local", "--enhancer-deadline-ms", "1e12"],
     "enhancer deadline (--enhancer-deadline-ms) must be a positive number of milliseconds, at most 3.6e+06"),
    (["record-drive", "cut_in", "-o", "rec", "--width", "8192", "--height", "8192"],  # killed (exit 137), no word
     "out of memory: recording 306 images of 8192x8192 needs about"),
    (["serve-enhancer", "--max-batch-frames", "0"], "max-batch-frames must be"),
    # a new user's findings (2026-12-07): --up dropped with --pose; a pose at 1e300 m overflowed; an output path that
    # could not be written failed after the whole render; --sh-degree not named; "-o .png"
    (["render", "x.ply", "--pose", "0", "0", "1.6", "0", "0", "0", "--up", "0", "0", "-1"], "--up goes with --eye"),
    (["render", "x.ply", "--pose", "0", "0", "1e300", "0", "0", "0"], "--pose must be within 1e+07"),
    (["street", "--width", "16", "--height", "9", "-o", "/proc/view.png"], "-o/--out /proc/view.png: nothing can be "
                                                                           "written in /proc"),
    (["street", "--sh-degree", "4"], "--sh-degree must be 0, 1, 2 or 3, got 4"),
    (["street", "-o", ".png"], "-o/--out must name a .png file"),
    (["bench", "--truth"], "unrecognized option --truth"),
    # gsplat without CUDA failed at the first tick, after the scene was built
    *([] if cuda_available() else [(["run", "cut_in", *TINY, "--backend", "gsplat"],
                                     "--backend gsplat needs a CUDA device")]),  # (its truth render had been timed as part of each tick)
])
def test_cli_refuses_bad_options_by_name(tmp_path, args, message):
    result = _cli(args, tmp_path, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.txt"))


def test_random_bytes_as_opendrive_name_the_file(tmp_path):
    path = tmp_path / "map.xodr"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    result = _cli(["build-scene", "--xodr", str(path), "--cache", str(tmp_path / "cache")], tmp_path)
    assert result.returncode == 2 and str(path) in result.stderr and "Traceback" not in result.stderr


def test_build_scene_options_that_would_do_nothing_are_refused_first(tmp_path, capsys):
    """`build-scene curve --length 50` built the default curve (a curve takes no length); a --ply under a file
    failed only after the scene was built. Both are refused before anything is built."""
    from scenarios.cli import main as cli_main

    cache = tmp_path / "cache"
    (tmp_path / "a_file").write_text("stands where a folder would be")
    for args, said in ((["curve", "--length", "50"], "--length sets a straight road's length or an intersection's "
                                                     "arms; curve takes none"),
                       (["--prompt", "a quiet street", "--length", "50"], "--prompt takes none"),
                       (["straight", "--ply", str(tmp_path / "a_file" / "no" / "x.ply")],
                        f"{tmp_path / 'a_file'} is a file, not a folder"),
                       (["straight", "--ply", str(tmp_path)], f"--ply {tmp_path}: a folder; name the file to write"),
                       (["straight", "--export-xodr", str(tmp_path)], "--export-xodr")):
        assert cli_main(["build-scene", *args, "--cache", str(cache)]) == 2, args
        assert said in capsys.readouterr().err, args
    assert not cache.exists()
    # a hand-made layout (lanes without road references) cannot be exported: said before the build, and the --ply
    # it would have skipped is never half-done (it was said after the whole build, and the --ply was not written)
    from neural_sensor.scene.layout import Lane, Layout

    hand_made = tmp_path / "hand_made.json"
    hand_made.write_text(Layout([Lane(np.array([[0.0, 0.0], [60.0, 0.0]]))], name="mine").to_json())
    assert cli_main(["build-scene", "--layout", str(hand_made), "--export-xodr", str(tmp_path / "m.xodr"), "--ply",
                     str(tmp_path / "m.ply"), "--cache", str(cache)]) == 2
    assert ("--export-xodr " + str(tmp_path / "m.xodr") + ": the layout 'mine' has no road references to export"
            ) in capsys.readouterr().err
    assert not cache.exists() and not (tmp_path / "m.xodr").exists()
    for command in ("build-scene", "run"):  # argparse kept the last of two --prompt and dropped the first silently
        with pytest.raises(SystemExit) as exit_:
            cli_main([command, "--prompt", "a wide road", "--prompt", "at dusk", "--cache", str(cache)])
        assert exit_.value.code == 2
        assert "--prompt given twice: describe the street in one --prompt" in capsys.readouterr().err, command
    a_file = tmp_path / "cache.txt"
    a_file.write_text("not a folder")
    for command in (["build-scene", "straight"], ["run", "cut_in", "--out", str(tmp_path / "run")], ["cache"]):
        assert cli_main([*command, "--cache", str(a_file)]) == 2, command  # (build-scene built the scene first)
        assert f"--cache {a_file} is a file, not a scene cache folder" in capsys.readouterr().err, command


def test_far_away_layout_points_are_named_errors():
    from neural_sensor.scene.layout import Layout, straight_road
    from neural_sensor.scene.occupancy import build_occupancy

    data = straight_road(50.0).to_dict()
    data["lanes"][0]["centre_m"][-1] = [2000.0, 2000.0]
    with pytest.raises(ValueError, match=r"layout 'straight_50m' spans 2007 x 2037 m.*GiB"):
        build_occupancy(Layout.from_dict(data))
    data["lanes"][0]["centre_m"][-1] = [1e9, 1e9]
    with pytest.raises(ValueError, match="more than 100000 m from the origin"):
        Layout.from_dict(data)


def test_serve_enhancer_default_checkpoint_is_found_from_anywhere(tmp_path):
    from neural_sensor.checkpoints import DEFAULT_ENHANCER, checkpoint_path
    from neural_sensor.enhance.server import ServerConfig

    folder = Path(ServerConfig().checkpoint)
    assert folder.is_absolute() and folder == checkpoint_path(DEFAULT_ENHANCER)
    result = _cli(["serve-enhancer", "--help"], tmp_path, cwd=tmp_path)
    assert str(folder) in result.stdout.replace("\n", "").replace(" ", "") or DEFAULT_ENHANCER in result.stdout


def test_wheel_carries_the_shipped_checkpoints(tmp_path):
    """A non-editable install gets the checkpoints as data files under <prefix>/share/neural-sensor/."""
    import zipfile

    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    wheel = next(tmp_path.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    from neural_sensor.checkpoints import SHIPPED

    for ckpt in SHIPPED:
        for file in ("config.json", "model.safetensors", "CARD.md"):
            assert any(n.endswith(f".data/data/share/neural-sensor/checkpoints/{ckpt}/{file}") for n in names), \
                (ckpt, file)


def test_checkpoint_lookup_falls_back_to_the_installed_data(tmp_path, monkeypatch):
    import neural_sensor.checkpoints as ck

    share = tmp_path / "share" / "neural-sensor" / "checkpoints" / "enhancer-small"
    share.mkdir(parents=True)
    (share / "config.json").write_text("{}")
    (share / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(ck, "_REPO_CHECKPOINTS", tmp_path / "nowhere")
    monkeypatch.setattr(ck.sys, "prefix", str(tmp_path))
    assert ck.checkpoint_path("enhancer-small") == share
    with pytest.raises(ValueError, match="reconstructor-small.*not found"):
        ck.checkpoint_path("reconstructor-small")


def test_help_shows_defaults_and_version(tmp_path):
    result = _cli(["demo", "--help"], tmp_path)
    assert "(default: 480)" in result.stdout and "--allow-fail" in result.stdout
    result = _cli(["serve-enhancer", "--help"], tmp_path)
    assert "most frames one worker job batches" in result.stdout.replace("\n", " ").replace("  ", " ")
    result = _cli(["--version"], tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("neural-sensor ")


def test_render_default_background_is_the_clis_sky():
    from neural_sensor.camera import Camera
    from neural_sensor.render import SKY_RGB, render
    from neural_sensor.testing import make_street_scene

    scene = make_street_scene(1000)
    cam = Camera.look_at(32, 16, 60.0, eye_world=[0, 0, 100.0], target_world=[0, 100.0, 200.0])  # upwards: sky
    rgb = render(scene, [cam], backend="cpu").rgb[0]
    assert np.allclose(rgb, np.array(SKY_RGB, np.float32), atol=1e-6)


def test_prompt_drives_build_scene_and_run(tmp_path):
    pytest.importorskip("sentence_transformers", reason="the prompt model needs sentence-transformers")
    prompt = "a 120 m street with two lanes and many parked cars at dusk"
    built = _cli(["build-scene", "--prompt", prompt, "--voxel", "0.5", "--cache", str(tmp_path / "cache")], tmp_path)
    assert built.returncode == 0, built.stderr
    result = json.loads(built.stdout)
    assert result["description"]["attributes"]["time_of_day"] in ("dusk", "evening")
    assert result["description"]["attributes"]["length_m"] == 120.0
    assert "parked_cars" in built.stderr  # the description it was read as is shown
    run = _cli(["run", "--prompt", prompt, "--ticks", "3", *TINY, "-o", str(tmp_path / "out"), "--allow-fail",
                "--cache", str(tmp_path / "cache")], tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["scenario"] == "prompt"
    kept = json.loads((tmp_path / "out" / "prompt.json").read_text())  # the description, beside the run
    assert kept["attributes"] == result["description"]["attributes"]
    # in the record's manifest, so the next run into the folder replaces it (it was left behind, stale)
    assert "prompt.json" in json.loads((tmp_path / "out" / "manifest.json").read_text())["files"]
    again = _cli(["run", "cut_in", "--ticks", "2", *TINY, "-o", str(tmp_path / "out"), "--allow-fail", "--cache",
                  str(tmp_path / "cache")], tmp_path)
    assert again.returncode == 0, again.stderr
    assert not (tmp_path / "out" / "prompt.json").exists()
    both = _cli(["run", "cut_in", "--prompt", prompt, "-o", str(tmp_path / "x")], tmp_path)
    assert both.returncode == 2 and "not both" in both.stderr


def test_render_contact_sheet_depth_is_inverse_and_ignores_the_sky_dome():
    """A reconstruction draws its sky as a dome ~1 km away: the depth panel must not scale to it (everything near
    was white); inverse depth from the nearest surfaces: white near, half as bright twice as far, the sky black."""
    from neural_sensor.cli import contact_sheet
    from neural_sensor.labels import CityObjectLabel
    from neural_sensor.render import RenderOutput

    depth = np.full((1, 2, 4), 5.0, np.float32)
    depth[0, :, 1] = 10.0
    depth[0, :, 2] = 1000.0
    semantic = np.full((1, 2, 4), CityObjectLabel.BUILDING, np.uint8)
    semantic[0, :, 2] = CityObjectLabel.SKY
    images = RenderOutput(rgb=np.zeros((1, 2, 4, 3), np.float32), depth=depth, alpha=np.ones((1, 2, 4), np.float32),
                          semantic=semantic)
    sheet = contact_sheet(images)
    assert sheet.shape == (4, 4, 3)
    # the bottom-left half is the depth: x = 0 (5 m) white, x = 1 (10 m) half
    assert sheet[2, 0, 0] == 255 and abs(int(sheet[2, 1, 0]) - 128) <= 1
    full = contact_sheet(RenderOutput(rgb=images.rgb, depth=depth[..., [2, 2, 0, 1]],
                                      alpha=images.alpha, semantic=semantic[..., [2, 2, 0, 1]]))
    assert full[2, 0, 0] == 0 and full[2, 1, 0] == 0  # the sky dome: black


def test_serve_hint_for_another_host_is_a_tunnel():
    from scenarios.enhancer_link import serve_hint

    assert serve_hint("tcp://127.0.0.1:9") == "start one with `neural-sensor serve-enhancer --bind tcp://127.0.0.1:9`"
    hint = serve_hint("tcp://10.0.0.5:6000")  # the server refuses a non-loopback bind without CurveZMQ keys
    assert "--bind tcp://127.0.0.1:6000" in hint and "ssh -N -L 6000:127.0.0.1:6000 HOST" in hint
    assert "--enhancer tcp://127.0.0.1:6000" in hint and "10.0.0.5" not in hint


def test_a_scenario_that_raises_is_named_with_its_traceback(tmp_path):
    """A bug in a user's make_scenario (here a missing argument) is exit 2 with the scenario's traceback and one
    line naming the file; a field the scenario classes refuse is one line (exit 2, no traceback). Exit 1 stays
    "the run finished and failed its criteria"."""
    (tmp_path / "broken.py").write_text(
        "from scenarios.base import Scenario\n"
        "def make_scenario(seed=0):\n"
        "    return Scenario('x', 'y')\n")
    result = _cli(["run", str(tmp_path / "broken.py"), *TINY, "--ticks", "2", "-o", str(tmp_path / "out")], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" in result.stderr and "broken.py" in result.stderr
    assert f"scenario file {tmp_path / 'broken.py'}: make_scenario(0) raised TypeError" in result.stderr
    (tmp_path / "off_lane.py").write_text(
        "from carla_bridge.embedded import EgoStart\n"
        "from scenarios.lane_change import make_scenario as base\n"
        "def make_scenario(seed=0):\n"
        "    s = base(seed)\n"
        "    s.ego = EgoStart(lane='1')\n"
        "    return s\n")
    result = _cli(["run", str(tmp_path / "off_lane.py"), *TINY, "--ticks", "2", "-o", str(tmp_path / "out2")],
                  tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert ("make_scenario(0): the ego's start: lane must be an integer >= 0 (a lane of the layout), got '1'"
            in result.stderr)
    # a ValueError of the user's own code (here int("x")) is a bug, not a refused field: its traceback is kept;
    # and a module beside the file imports, as `python file.py` would find it
    (tmp_path / "helpers_beside.py").write_text("def speed():\n    return int('eleven')\n")
    (tmp_path / "uses_helper.py").write_text(
        "from helpers_beside import speed\n"
        "def make_scenario(seed=0):\n"
        "    return speed()\n")
    result = _cli(["run", str(tmp_path / "uses_helper.py"), *TINY, "--ticks", "2", "-o", str(tmp_path / "out3")],
                  tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" in result.stderr and "helpers_beside.py" in result.stderr, result.stderr
    assert (f"scenario file {tmp_path / 'uses_helper.py'}: make_scenario(0) raised ValueError: invalid literal for "
            "int() with base 10: 'eleven'") in result.stderr


def test_each_scenario_file_imports_its_own_neighbour(tmp_path, monkeypatch):
    """Two folders, each a scenario file and a `params.py` beside it, loaded one after the other in one process (a
    test harness's): the second took the first folder's params (a 70 m road for both), without a word."""
    from scenarios.runner import load_scenario

    monkeypatch.setattr(sys, "path", list(sys.path))
    for name, length in (("a", 70), ("b", 120)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "params_beside_each.py").write_text(f"LENGTH_M = {length}.0\n")
        (folder / "road.py").write_text(
            "from carla_bridge.embedded import EgoStart\n"
            "from neural_sensor.scene.layout import Style, straight_road\n"
            "from scenarios.base import Scenario, lane_route\n"
            "from params_beside_each import LENGTH_M\n"
            "def make_scenario(seed=0):\n"
            "    layout = straight_road(LENGTH_M, style=Style(seed=seed))\n"
            "    return Scenario('road', 'a road', layout, EgoStart(lane=1, start_s_m=5.0, speed_mps=5.0), [],\n"
            "                    route_xy_m=lane_route(layout, 1, 0.0, LENGTH_M - 10.0), target_speed_mps=5.0,\n"
            "                    route_goal_m=30.0)\n")
    try:
        names = [load_scenario(str(tmp_path / name / "road.py")).layout.name for name in ("a", "b", "a", "b")]
    finally:
        for name in [m for m in sys.modules if m.startswith("params_beside_each")]:
            del sys.modules[name]
    assert names == ["straight_70m", "straight_120m", "straight_70m", "straight_120m"]
    assert [p for p in sys.path if p.startswith(str(tmp_path))] == [str(tmp_path / "b"), str(tmp_path / "a")]


def test_a_users_module_is_found_from_the_current_folder_as_python_m_finds_it(tmp_path, monkeypatch):
    """The installed `neural-sensor` script does not put the current folder on sys.path (`python -m` does): a
    package.module named from the folder above its package is still found, as the README says."""
    import sys

    from scenarios.user_code import import_user_module

    package = tmp_path / "my_pkg_for_cwd_test"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "agents.py").write_text("VALUE = 7\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert import_user_module("my_pkg_for_cwd_test.agents").VALUE == 7


def test_build_scene_and_reconstruct_create_a_missing_output_folder(tmp_path, capsys, monkeypatch):
    """`reconstruct -o new/x.ply` created the folder while `build-scene --ply new/x.ply` refused it: both now create
    it (as `run --out` does), and both refuse a file standing where a folder would be, before any work."""
    from scenarios.cli import main as cli_main

    ply, xodr = tmp_path / "new" / "deep" / "scene.ply", tmp_path / "maps" / "road.xodr"
    assert cli_main(["build-scene", "straight", "--length", "30", "--cache", str(tmp_path / "cache"),
                     "--ply", str(ply), "--export-xodr", str(xodr)]) == 0
    assert ply.stat().st_size > 1000 and xodr.read_text().lstrip().startswith("<?xml")
    # a map's text goes out as UTF-8, as its declaration says, whatever the locale (an ASCII locale failed after
    # the build with "'ascii' codec can't encode" and left an empty file)
    from neural_sensor.scene.layout import straight_road
    from neural_sensor.scene.opendrive import layout_to_opendrive

    (tmp_path / "Königstraße.xodr").write_bytes(layout_to_opendrive(straight_road(60.0)).replace(
        "<header ", '<header vendor="Straßenbau" ').encode("latin-1").replace(b"UTF-8", b"ISO-8859-1"))
    real_write_text = Path.write_text
    monkeypatch.setattr(Path, "write_text", lambda self, text, encoding=None, **kw: real_write_text(
        self, text, encoding=encoding or "ascii", **kw))  # an ASCII locale's default
    assert cli_main(["build-scene", "--xodr", str(tmp_path / "Königstraße.xodr"), "--cache", str(tmp_path / "cache"),
                     "--export-xodr", str(xodr)]) == 0
    assert 'vendor="Straßenbau"' in xodr.read_bytes().decode("utf-8")
    capsys.readouterr()
    (tmp_path / "a_file").write_text("x")
    assert cli_main(["reconstruct", str(tmp_path / "no_log"), "-o", str(tmp_path / "a_file" / "x.ply")]) == 2
    assert f"{tmp_path / 'a_file'} is a file, not a folder" in capsys.readouterr().err


def test_out_of_memory_and_record_drive_options_are_named_as_the_command_takes_them(tmp_path, capsys, monkeypatch):
    """`reconstruct --size 9000 9000` ran out of memory and was told to use --width / --height, which reconstruct
    does not take; `record-drive --step 0` / `--speed 0` named record_drive's parameters (step_m, speed_mps)."""
    import neural_sensor.reconstruct.drive as drive
    from scenarios.cli import main as cli_main

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(drive, "reconstructed_scene_from_log", no_memory)
    log = tmp_path / "log"
    log.mkdir()
    assert cli_main(["reconstruct", str(log), "--size", "8000", "8000"]) == 2
    said = capsys.readouterr().err
    assert "out of memory (try a smaller --size)" in said and "--width" not in said
    for option, value, unit in (("--step", "0", "metres"), ("--speed", "-2", "m/s")):
        assert cli_main(["record-drive", "cut_in", option, value, "-o", str(tmp_path / "rec")]) == 2
        assert f"{option} must be a positive number of {unit}, got {float(value):g}" in capsys.readouterr().err
    # a 1x1 log was written and then refused by `reconstruct` (at least 4x4)
    assert cli_main(["record-drive", "cut_in", "--width", "3", "-o", str(tmp_path / "rec")]) == 2
    assert "--width must be at least 4 pixels (the smallest image the reconstructor reads), got 3" in \
        capsys.readouterr().err
    assert not (tmp_path / "rec").exists()
    (tmp_path / "a_file").write_text("x")  # (it said "exists and is not an empty folder")
    assert cli_main(["record-drive", "cut_in", "-o", str(tmp_path / "a_file")]) == 2
    assert f"-o {tmp_path / 'a_file'} exists and is not a folder" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc: no folder that even root cannot write to")
def test_a_folder_no_one_can_write_is_refused_before_any_work_even_for_root(tmp_path, capsys):
    """os.access says yes to root everywhere: `reconstruct -o /proc/x.ply` reconstructed for 16 s and then failed,
    `run -o /proc/out` failed with a bare errno. A real write probe now refuses both first."""
    from scenarios.cli import main as cli_main

    assert cli_main(["reconstruct", str(tmp_path / "no_log"), "-o", "/proc/x.ply"]) == 2
    assert "-o /proc/x.ply: nothing can be written in /proc (" in capsys.readouterr().err
    assert cli_main(["run", "cut_in", *TINY, "--ticks", "2", "-o", "/proc/out", "--cache", str(tmp_path / "c")]) == 2
    assert "--out /proc/out: nothing can be written in /proc (" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused_before_any_work(tmp_path, capsys):
    """A --ply into a folder that cannot be written failed only after the scene was built."""
    from scenarios.cli import main as cli_main

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert cli_main(["build-scene", "straight", "--cache", str(tmp_path / "cache"),
                         "--ply", str(locked / "x.ply")]) == 2
        assert f"nothing can be written in {locked} (PermissionError" in capsys.readouterr().err
        assert not (tmp_path / "cache").exists()
    finally:
        locked.chmod(0o700)


def test_serve_enhancer_removes_a_stale_ready_file_first(tmp_path, capsys):
    """A killed server's ready file was removed only after the imports and the checks, so the README's wait loop
    (until [ -e ready.json ]) went on at once; the CLI now removes it before anything else."""
    from scenarios.cli import main as cli_main

    ready = tmp_path / "ready.json"
    ready.write_text('{"pid": 1}')
    assert cli_main(["serve-enhancer", "--ready-file", str(ready), "--workers", "0"]) == 2
    assert "workers must be in 1.." in capsys.readouterr().err and not ready.exists()


def test_the_memory_check_sees_a_containers_limit(tmp_path):
    """MemAvailable is the host's: inside a container whose cgroup allows less, a job that passed the check was
    still killed (exit 137). The cgroup's limit less its use (v2 or v1, droppable page cache not counted) bounds it
    too."""
    from neural_sensor.host import available_memory_bytes, check_memory, usable_cores

    meminfo = tmp_path / "meminfo"  # the host's MemAvailable, fixed: the live one moves between two reads
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\n")
    host = available_memory_bytes(tmp_path / "no_cgroup", meminfo)
    assert host is None or host > 0
    (tmp_path / "memory.max").write_text(f"{3 * 2**30}\n")
    (tmp_path / "memory.current").write_text(f"{2**30}\n")
    assert available_memory_bytes(tmp_path, meminfo) == min(2 * 2**30, host or 2 * 2**30)
    (tmp_path / "memory.stat").write_text(f"anon 1000\ninactive_file {2**29}\n")  # droppable page cache
    assert available_memory_bytes(tmp_path, meminfo) == min(int(2.5 * 2**30), host or int(2.5 * 2**30))
    (tmp_path / "memory.max").write_text("max\n")
    assert available_memory_bytes(tmp_path, meminfo) == host
    # cgroup v1 (docker on an older host): memory/memory.limit_in_bytes, no limit written as 2**63 rounded to a page
    v1 = tmp_path / "memory"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{2**30}\n")
    assert available_memory_bytes(tmp_path, meminfo) == host
    (v1 / "memory.limit_in_bytes").write_text(f"{4 * 2**30}\n")
    (v1 / "memory.stat").write_text(f"cache 5\ntotal_inactive_file {2**28}\n")
    assert available_memory_bytes(tmp_path, meminfo) == min(int(3.25 * 2**30), host or int(3.25 * 2**30))
    assert usable_cores() >= 1
    check_memory(1024, "a kilobyte")  # passes
    with pytest.raises(MemoryError, match="a petabyte needs about 1048576.0 GiB and"):
        check_memory(2**50, "a petabyte")


def test_build_scene_takes_seed_for_a_layout_file(tmp_path, capsys):
    """A new user's finding: `build-scene --layout L.json --seed S` built the file's own seed without a word."""
    from neural_sensor.scene.layout import Lane, Layout
    from scenarios.cli import main as cli_main

    layout_file = tmp_path / "mine.json"
    layout_file.write_text(Layout([Lane(np.array([[0.0, 0.0], [40.0, 0.0]]))], name="mine").to_json())
    keys = []
    for extra in ([], ["--seed", "0"], ["--seed", "5"]):
        assert cli_main(["build-scene", "--layout", str(layout_file), "--voxel", "1.0", "--cache",
                         str(tmp_path / "cache"), *extra]) == 0
        keys.append(json.loads(capsys.readouterr().out)["key"])
    assert keys[0] == keys[1] != keys[2]
