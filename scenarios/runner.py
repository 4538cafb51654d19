"""Run a scenario in closed loop: simulator -> neural sensor rig -> driving agent -> control, and record it.

Per tick: the simulator steps and returns a WorldSnapshot; the rig renders
every camera; the frames go to the agent as leaderboard input_data
{sensor_id: (frame, BGRA uint8)} plus the privileged {"world": (frame, snapshot)};
the agent's control goes back to the simulator; the criteria are updated.

Everything is written to a temporary folder next to `out_dir` and moved into
place only when the run finishes, so a failed or interrupted run (an exception,
Ctrl-C, SIGTERM) leaves nothing half-written and no temporary folder behind:
    out_dir/video.mp4       mosaic of all cameras, 20 fps (1 / dt)
    out_dir/strip.png       the cameras of the last tick, side by side
    out_dir/log.jsonl       one JSON object per tick (poses, control, stage times, criteria; with
                            RunOptions.truth the per-camera PSNR against the builder's render)
    out_dir/summary.json    ticks, wall_s, ticks_per_s, median stage ms, criteria, paths
    out_dir/manifest.json   the files this run wrote
A later run into the same folder replaces only the files named in its manifest;
anything else in the folder (the user's notes, another record in a sub-folder) is
left alone, and a folder that holds anything but records is refused (scenarios/record.py).

Scenarios: a built-in name (cut_in, pedestrian_crossing, lane_change), a Python
file defining `make_scenario(seed) -> Scenario`, or an importable module doing so.
"""

from __future__ import annotations

import importlib
import copy
import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from carla_bridge.embedded import EmbeddedSimulator
from carla_bridge.pseudo_sensors import PseudoSensors, split_sensors
from carla_bridge.simulator import VehicleControl
from carla_bridge.transforms import rgb_to_bgra, sensor_specs_from_leaderboard
from neural_sensor.enhance.protocol import to_uint8_into
from neural_sensor.enhance.temporal import TEMPORAL_BLEND
from neural_sensor.jit_cache import (LOG_REFERENCE_MODULES, RENDER_MODULES, TEMPORAL_MODULES, UPSAMPLE_MODULES,
                                     announce_compiling)
from neural_sensor.metrics import psnr
from neural_sensor.render import LOD_PX, RECONSTRUCTION_LOD_PX, RECONSTRUCTION_SCALE, resolve_backend
from neural_sensor.render._common import check_lod_px
from neural_sensor.render.upsample import check_scale
from neural_sensor.rig import NeuralSensorRig
from neural_sensor.scene.build import build_scene
from neural_sensor.scene.opendrive import layout_to_opendrive
from neural_sensor.scene.to_gaussians import sky_rgb
from scenarios.agent import (ScenarioError, agent_call, destroy_agent, leaderboard_clock_s, leaderboard_major,
                             leaderboard_suite_breaks, load_agent)
from scenarios.base import CriteriaState, Scenario
from scenarios.enhancer_link import LocalServerKeeper, check_enhancer_options, connect_enhancer
from scenarios.record import (check_out_dir, check_video_size, install_record, label_tiles, mosaic,
                              remove_stale_temporaries, to_uint8)
from scenarios.signals import raise_if_signalled, terminate_as_exception
from scenarios.user_code import import_user_module, module_from_file, raised_by_our_checks

SCENARIOS = ("cut_in", "pedestrian_crossing", "lane_change")
DEFAULT_SCENARIO = "cut_in"


@dataclass
class RunOptions:
    """How to run a scenario."""

    out_dir: Path = Path("out")  # where the record goes (replaced if it exists)
    ticks: int | None = None  # ticks to run; None = the scenario's max_ticks
    width: int = 480  # camera image width, pixels
    height: int = 270  # camera image height, pixels
    backend: str = "auto"  # render backend: auto | cpu | torch | gsplat
    seed: int = 0  # scenario and simulator seed
    agent: str | None = None  # dotted path "package.module:Class" of a user agent; None = built-in
    agent_config: str | None = None  # a leaderboard agent's setup(path_to_conf_file) argument (load_agent)
    gnss_projection: str = "leaderboard"  # an agent's sensor.other.gnss: "leaderboard" (CARLA <= 0.9.15, the route
    #                                       GPS's) | "carla-0.9.16" (+y north: carla-simulator/carla#9389)
    video: bool = True  # write video.mp4
    cache_dir: Path | None = None  # scene cache; None = $NEURAL_SENSOR_CACHE or ~/.cache/neural_sensor
    progress: bool = True  # progress bars
    carla: str | None = None  # "HOST:PORT" of a CARLA server to run on; None = the embedded simulator
    scene: str = "builder"  # "builder": the layout's scene; "reconstruction": reconstructed from a drive along the
    #                         recorded lane; "log:PATH": reconstructed from the drive log at PATH (docs/drive_log.md)
    enhancer: str | None = None  # None | "local" (start a server subprocess) | "tcp://HOST:PORT" of a running server
    enhancer_deadline_ms: float = 1000.0  # per-tick budget for the enhancer; past it the raw render is delivered
    enhancer_checkpoint: Path | None = None  # for "local"; None = the shipped default (checkpoints.DEFAULT_ENHANCER)
    enhancer_precision: str = "auto"  # for "local": the model's arithmetic on a CPU, auto (bfloat16 where the CPU has
    #                                   AMX or runs it faster, precision.py) | float32 | bfloat16 (enhance.precision)
    reconstructor_checkpoint: Path | None = None  # a reconstructed scene's network (a ReconNet checkpoint folder, in
    #                                              the scene's cache key); None = the shipped default
    network_precision: str = "auto"  # a reconstructed scene's network arithmetic: auto (bfloat16 where the CPU runs it
    #                                  faster, as enhancer_precision's auto) | float32 | bfloat16; in the scene's cache key
    log_reference: bool = True  # send a reconstructed scene's drive log to an enhancer trained to take it (its hello's
    #                             reference_views); False: none (faster: no median depth and no warp per tick)
    temporal_blend: float = TEMPORAL_BLEND  # with an enhancer: the weight of each camera's previous enhanced image,
    #                                         reprojected and clamped (enhance.temporal); 0: every tick on its own
    truth: bool = False  # also render the builder's scene (the ground truth) at every tick: beside each camera in
    #                      the video, and per-camera PSNR of the delivered image against it in log.jsonl
    lod_px: float | None = None  # the cpu renderer's level of detail (render(lod_px=)); 0 = every Gaussian (exact);
    #                              None = the scene's: LOD_PX for the builder's, RECONSTRUCTION_LOD_PX for a
    #                              reconstruction (`scene_lod_px`). The --truth render is always exact
    render_scale: float | None = None  # the fraction of the cameras' size the scene is drawn at, then upsampled
    #                                    (render(scale=)); None = the scene's: 1 for the builder's, RECONSTRUCTION_SCALE
    #                                    for a reconstruction (`scene_render_scale`). The --truth render is full size
    prompt_description: dict | None = None  # the structured description a prompt's street was built from
    #                                        (`scene.prompt.layout_from_prompt`): kept in the record as prompt.json


def scene_lod_px(scene_kind: str, lod_px: float | None = None) -> float:
    """The level of detail a run draws a scene with: lod_px if given, else LOD_PX for the builder's scene and
    RECONSTRUCTION_LOD_PX for a reconstruction ("reconstruction" or "log")."""
    if lod_px is not None:
        return check_lod_px(lod_px, "RunOptions (--lod-px)")
    return LOD_PX if scene_kind == "builder" else RECONSTRUCTION_LOD_PX


def scene_render_scale(scene_kind: str, render_scale: float | None = None) -> float:
    """The fraction of the cameras' size a run draws a scene at: render_scale if given, else 1 for the builder's
    scene and RECONSTRUCTION_SCALE for a reconstruction ("reconstruction" or "log"), whose Gaussians are coarser
    than the rig's pixels."""
    if render_scale is not None:
        return check_scale(render_scale, "RunOptions (--render-scale)")
    return 1.0 if scene_kind == "builder" else RECONSTRUCTION_SCALE


def scene_source(scene: str) -> tuple[str, Path | None]:
    """("builder" | "reconstruction", None) or ("log", folder) for RunOptions.scene; ValueError otherwise."""
    if scene in ("builder", "reconstruction"):
        return scene, None
    if isinstance(scene, str) and scene.startswith("log:") and len(scene) > 4:
        return "log", Path(scene[4:]).expanduser()
    raise ValueError(f"scene must be 'builder', 'reconstruction' or 'log:PATH' (a drive log folder), got {scene!r}")


def load_scenario(name: str, seed: int = 0) -> Scenario:
    """The Scenario of a built-in name, a Python file (`path/to/my_scenario.py`) or a module (`package.module`, or
    a top-level `module`, on the PYTHONPATH or in the current folder).

    A file or module must define `make_scenario(seed: int) -> Scenario`; ValueError names what is wrong.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"scenario must be a built-in name, a .py file or a module, got {name!r}")
    if name in SCENARIOS:
        module = importlib.import_module(f"scenarios.{name}")
        where = f"built-in scenario {name!r}"
    elif name.endswith(".py") or os.sep in name or "/" in name or Path(name).is_file():
        # any existing file goes to the file loader, which names a non-.py one as such
        module, where = module_from_file(Path(name)), f"scenario file {name}"
    elif "." in name or name.isidentifier():  # a module on the PYTHONPATH (or beside us), dotted or not
        where = f"scenario module {name!r}"
        try:
            module = import_user_module(name)
        except ImportError as err:
            if "." not in name and isinstance(err, ModuleNotFoundError) and err.name == name:
                raise ValueError(f"unknown scenario {name!r}: use a built-in name ({', '.join(SCENARIOS)}), a path "
                                 "to a .py file, or a module on the PYTHONPATH defining make_scenario(seed) (no "
                                 f"module {name!r} there)") from None
            raise ValueError(f"cannot import {where}: {err}") from None
    else:
        raise ValueError(f"unknown scenario {name!r}: use a built-in name ({', '.join(SCENARIOS)}), "
                         "a path to a .py file, or a package.module defining make_scenario(seed)")
    make = getattr(module, "make_scenario", None)
    if not callable(make):
        raise ValueError(f"{where} defines no make_scenario(seed) function returning a Scenario")
    try:
        scenario = make(seed)
    except ValueError as err:
        if raised_by_our_checks(err, module):  # a field the scenario classes refuse, by name: one line
            raise ValueError(f"{where}: make_scenario({seed}): {err}") from None
        raise ScenarioError(where, seed, err) from err  # the user's own code (or a library it called): its traceback
    except Exception as err:  # a bug in the user's code: its traceback, then this line (exit 2, not "failed")
        raise ScenarioError(where, seed, err) from err
    if not isinstance(scenario, Scenario):
        raise ValueError(f"{where}: make_scenario({seed}) returned {type(scenario).__name__}, not a Scenario "
                         "(scenarios.base.Scenario)")
    return scenario


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else 0.0


def _median_db(values: list[float]) -> float | None:
    """The median of PSNRs where an identical image is +inf (they count: a camera identical on most ticks and 40 dB
    on one had the median 40), None (JSON's null) where that median is infinite."""
    median = statistics.median(values) if values else math.inf
    return round(median, 2) if math.isfinite(median) else None


def run_scenario(scenario: Scenario | str, options: RunOptions) -> dict:
    """Run a scenario (a Scenario, or a name / file / module for load_scenario) in closed loop and record it.

    Returns the summary dict. SIGTERM (when the host has no handler of its own) unwinds like Ctrl-C: the
    temporary folder is removed and a local enhancer server stopped on every way out.
    """
    with terminate_as_exception():
        return _run_scenario(scenario, options)


def _kernel_modules(options: RunOptions, scene_kind: str) -> list[str]:
    """The modules whose compiled kernels this run will use (`neural_sensor.jit_cache`): the CPU renderer, unless
    a builder's scene is rendered by gsplat or torch; the upsampling of a scene drawn below the cameras' size; the
    enhancer client's log warp and temporal accumulation when they run. (A reconstruction's kernels run only when
    the scene is not cached: its build announces them, `reconstructed_scene`; a generated street's shadow kernel
    likewise runs only when the street is built.)"""
    modules = []
    if resolve_backend(options.backend, ("rgb",)) == "cpu":
        modules += RENDER_MODULES
    if scene_render_scale(scene_kind, options.render_scale) < 1.0:
        modules += UPSAMPLE_MODULES
    if options.enhancer is not None:
        modules += list(LOG_REFERENCE_MODULES) if options.log_reference and scene_kind != "builder" else []
        modules += list(TEMPORAL_MODULES) if options.temporal_blend > 0 else []
    return modules


def check_reconstructor_checkpoint(checkpoint: Path | None, scene_kind: str) -> None:
    """ValueError naming the problem: a reconstructor checkpoint for the builder's scene (which has none), a folder
    that holds no ReconNet checkpoint (an enhancer's, say)."""
    if checkpoint is None:
        return
    if scene_kind == "builder":
        raise ValueError("--reconstructor-checkpoint is for a reconstructed scene (--scene reconstruction or "
                         "--scene-log LOG); the builder's scene has no network")
    from neural_sensor.checkpoints import checkpoint_problem

    problem = checkpoint_problem(checkpoint, "ReconNet")
    if problem:
        raise ValueError(f"--reconstructor-checkpoint {checkpoint}: {problem}; it takes a reconstructor (ReconNet) "
                         "checkpoint folder")


def _run_scenario(scenario: Scenario | str, options: RunOptions) -> dict:
    if not isinstance(options, RunOptions):
        raise TypeError(f"run_scenario: options must be a RunOptions, got {type(options).__name__}")
    if not isinstance(scenario, (Scenario, str)):
        raise TypeError(f"run_scenario: scenario must be a Scenario or a name / .py file / module for "
                        f"load_scenario, got {type(scenario).__name__}")
    scene_kind, log_folder = scene_source(options.scene)
    if log_folder is not None:  # a missing log, bad JSON or a missing image is reported before anything starts
        from neural_sensor.reconstruct.log import log_digest

        log_digest(log_folder)
    scene_lod_px(scene_kind, options.lod_px)  # a bad level of detail or scale is reported before anything loads
    check_reconstructor_checkpoint(options.reconstructor_checkpoint, scene_kind)
    scene_render_scale(scene_kind, options.render_scale)
    check_enhancer_options(options)
    seed = options.seed  # a Scenario object skips load_scenario's check: numpy said "expected non-negative integer"
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"RunOptions.seed must be an integer >= 0, got {seed!r}")
    ticks = options.ticks
    if ticks is not None and (isinstance(ticks, bool) or not isinstance(ticks, (int, np.integer))):
        raise ValueError(f"RunOptions.ticks must be an integer (or None: the scenario's max_ticks), got "
                         f"{options.ticks!r}")  # 2.5 ran 2 ticks
    if isinstance(scenario, str):
        scenario = load_scenario(scenario, options.seed)
    ticks = scenario.max_ticks if options.ticks is None else int(options.ticks)
    if ticks <= 0:
        raise ValueError(f"ticks must be positive, got {ticks}")
    check_out_dir(options.out_dir)  # after the scenario's own errors, before the agent is constructed
    # the server is asked first, as the leaderboard does: an agent's setup() (a model loaded) ran before a missing
    # server was said
    client = _connect_carla(options.carla) if options.carla else None
    agent = load_agent(options.agent, scenario, options.width, options.height, agent_config=options.agent_config,
                       carla_address=options.carla)
    try:
        summary = _run_with_agent(scenario, options, ticks, agent, scene_kind, log_folder, client)
    except BaseException:
        destroy_agent(agent, options.agent, failing=True)
        raise
    destroy_agent(agent, options.agent, failing=False)
    return summary


def _reconstructor(options: RunOptions) -> dict:
    """The checkpoint keyword for `reconstructed_scene(_from_log)`: none for the shipped default."""
    return {} if options.reconstructor_checkpoint is None else {"checkpoint": Path(options.reconstructor_checkpoint)}


def _connect_carla(address: str):
    """A carla.Client whose server answered at --carla's address (ValueError without the carla package)."""
    try:
        import carla  # noqa: F401
    except ImportError:
        raise ValueError("--carla needs the CARLA client package, which is not installed: "
                         "pip install carla==0.9.16") from None
    from carla_bridge.carla_world import connect

    return connect(address)


def _run_with_agent(scenario: Scenario, options: RunOptions, ticks: int, agent, scene_kind: str,
                    log_folder: Path | None, client=None) -> dict:
    """The run from the agent's sensors on (`_run_scenario` destroys the agent however this ends); client: the
    --carla server's carla.Client."""
    sensors = agent_call(options.agent, "sensors()", agent.sensors)
    # its GNSS / IMU / speedometer are computed from the snapshots (carla_bridge.pseudo_sensors), its cameras rendered
    if isinstance(sensors, Iterable) and not isinstance(sensors, (Mapping, str, bytes)):
        sensors = list(sensors)  # (a generator: read once)
    sensors, pseudo_dicts = split_sensors(sensors) if isinstance(sensors, list) else (sensors, [])
    specs = sensor_specs_from_leaderboard(sensors)
    if not specs:  # (the video's size check said "max() arg is an empty sequence")
        raise ValueError(f"agent {options.agent}: sensors() returned no camera; a neural-sensor run renders the "
                         "cameras an agent asks for (leaderboard sensor dicts of type sensor.camera.rgb)")
    if options.video:  # H.264 (libx264) encodes no side longer than 16384 pixels: say so before anything starts
        check_video_size(specs, columns=3, truth=options.truth)
    if options.backend == "gsplat":  # said before any scene is built (the rig says it too, later)
        from neural_sensor.render import cuda_available

        if not cuda_available():
            raise ValueError("--backend gsplat needs a CUDA device and gsplat's kernels (pip install .[gpu]); use "
                             "--backend cpu (or auto) on this machine")
    if options.enhancer is not None:  # the enhancer's protocol refuses larger images: every tick would be raw
        from neural_sensor.enhance.protocol import MAX_SIDE, check_request_size

        large = [sp for sp in specs if max(sp.width, sp.height) > MAX_SIDE]
        if large:
            raise ValueError(f"the enhancer takes images of at most {MAX_SIDE} pixels a side, and camera "
                             f"{large[0].sensor_id} is {large[0].width}x{large[0].height}: smaller --width / "
                             "--height, or --enhancer none")
        # ... nor a request over its size: six 1920x1080 cameras went raw every tick, and the run passed
        check_request_size([(sp.width, sp.height) for sp in specs], options.log_reference and scene_kind != "builder",
                           what="--enhancer")
    ids = [spec.sensor_id for spec in specs] + [str(d.get("id", "<no id>")) for d in pseudo_dicts]
    if "world" in ids:
        raise ValueError("sensor id 'world' is reserved for the runner's privileged world snapshot")
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:  # (input_data is keyed by id: one sensor's data would hide the other's)
        raise ValueError(f"agent {options.agent or 'builtin'}: sensors() gives the id {repeated[0]!r} to more than "
                         "one sensor")
    major = leaderboard_major(type(agent))
    breaks = leaderboard_suite_breaks(agent, list(sensors) + pseudo_dicts, major) if major is not None else []
    if breaks:  # a run here renders them all; a submission would meet the leaderboard's check
        print(f"neural-sensor: note: the CARLA leaderboard {major}.x would refuse agent {options.agent}'s sensors "
              f"(validate_sensor_configuration; this run renders them all): {'; '.join(breaks)}", file=sys.stderr)
    pseudo = None
    if pseudo_dicts:  # said before any scene is built: a GNSS without the carla package, a bad mount
        needs_map = any(d.get("type") in ("sensor.other.gnss", "sensor.opendrive_map") for d in pseudo_dicts)
        pseudo = PseudoSensors(pseudo_dicts, layout_to_opendrive(scenario.layout) if needs_map else None,
                               gnss_projection=options.gnss_projection)
    if client is not None:
        from carla_bridge.carla_world import CarlaSimulator

        sim = CarlaSimulator(client, scenario.layout, scenario.ego, scenario.agents, seed=options.seed)
    else:
        sim = EmbeddedSimulator(scenario.layout, scenario.ego, scenario.agents, seed=options.seed)
    enhancer = keeper = None
    try:  # (from here on the simulator is closed whatever happens: a CARLA server's settings restored, actors gone)
        if scene_kind != "builder":  # checked, and "auto"'s timed probe run (cached), before the enhancer server
            # starts beside this process and competes for the cores
            from neural_sensor.enhance.precision import resolve_cpu_precision

            resolve_cpu_precision(options.network_precision, "network precision")
        if options.enhancer is not None:
            enhancer, server = connect_enhancer(options)
            keeper = LocalServerKeeper(server) if server is not None else None
        background = sky_rgb(scenario.layout.style)
        announce_compiling(_kernel_modules(options, scene_kind))  # a fresh install compiles on the way: say so
        scene_start = time.perf_counter()
        if scene_kind == "reconstruction":
            from neural_sensor.reconstruct.drive import reconstructed_scene

            _say_if_the_route_leaves_the_recording(scenario)
            scene, scene_meta = reconstructed_scene(scenario.layout, scenario.recorded_path_xy_m,
                                                    voxel_m=scenario.voxel_m, cache_dir=options.cache_dir,
                                                    progress=options.progress,
                                                    network_precision=options.network_precision,
                                                    **_reconstructor(options))
        elif scene_kind == "log":
            from neural_sensor.reconstruct.drive import reconstructed_scene_from_log

            scene, scene_meta = reconstructed_scene_from_log(log_folder, cache_dir=options.cache_dir,
                                                             progress=options.progress,
                                                             network_precision=options.network_precision,
                                                             **_reconstructor(options))
            if scene_meta.get("sky_rgb") is not None:  # the sky the log was recorded under
                background = tuple(float(c) for c in scene_meta["sky_rgb"])
            scene_meta = {**scene_meta, **_log_distance_to_ego_lane(scenario, scene_meta, log_folder)}
        else:
            scene, scene_meta = build_scene(scenario.layout, voxel_m=scenario.voxel_m, cache_dir=options.cache_dir,
                                            progress=options.progress)
        # what this run spent on its scene (a cache hit's build_s is the time the cached entry took to build)
        scene_meta = {**scene_meta, "scene_s": round(time.perf_counter() - scene_start, 2)}
        # an enhancer trained with the drive log's images as its reference (its hello says how many): send them
        from neural_sensor.enhance.client import hello_reference_views

        reference, reference_views = None, hello_reference_views(enhancer.server if enhancer is not None else None)
        if options.log_reference and reference_views > 0 and scene_kind in ("reconstruction", "log"):
            from neural_sensor.reconstruct.drive import scene_reference

            reference = scene_reference(scene_meta)
        # the agent's sensors are RGB cameras (sensor_spec_from_leaderboard): no depth or labels are rendered
        rig = NeuralSensorRig(scene, specs, backend=options.backend, background_rgb=background,
                              asset_seed=options.seed, enhancer=enhancer,
                              lod_px=scene_lod_px(scene_kind, options.lod_px), outputs=("rgb",), reference=reference,
                              reference_views=max(1, reference_views), temporal_blend=options.temporal_blend,
                              render_scale=scene_render_scale(scene_kind, options.render_scale))
        rig.prepare()  # the scene's render data derived while it loads, not in the first tick
        truth_rig = None
        if options.truth:  # the builder's scene, the same assets and sky, no enhancer
            truth_scene, _ = (scene, scene_meta) if scene_kind == "builder" and enhancer is None else build_scene(
                scenario.layout, voxel_m=scenario.voxel_m, cache_dir=options.cache_dir, progress=options.progress)
            truth_rig = NeuralSensorRig(truth_scene, specs, backend=options.backend, background_rgb=background,
                                        asset_seed=options.seed, lod_px=0.0, outputs=("rgb",))
        return _run_loop(scenario, options, ticks, agent, specs, scene_meta, rig, sim, truth_rig, pseudo, keeper,
                         major)
    finally:
        sim.close()
        if enhancer is not None:
            enhancer.close()
        if keeper is not None:
            keeper.stop()


ROUTE_FAR_FROM_RECORDING_M = 10.0  # a route going farther than this from where the drive was recorded is said


def _say_if_the_route_leaves_the_recording(scenario: Scenario) -> float:
    """The farthest the route goes (m) from the path its world's drive is recorded along, said on stderr beyond
    ROUTE_FAR_FROM_RECORDING_M (a turn into a road the recording never drove: its images there are smeared)."""
    from neural_sensor.scene.path import Path as Polyline

    route = Polyline(scenario.route_xy_m)
    stations = np.arange(0.0, route.length_m + 1.0, 2.0)
    points = np.array([route.at(float(s))[0] for s in stations])
    farthest = float(Polyline(scenario.recorded_path_xy_m).distances_m(points).max())
    if farthest > ROUTE_FAR_FROM_RECORDING_M:
        where = ("the path given as recorded_xy_m" if scenario.recorded_xy_m is not None
                 else f"recorded_lane {scenario.recorded_lane}")
        print(f"neural-sensor: warning: the route of scenario {scenario.name!r} goes {farthest:.0f} m from where its "
              f"world's drive is recorded ({where}): the reconstruction has not seen the road there and its images "
              "will be smeared; to record the drive along the route, give the Scenario recorded_xy_m=route_xy_m",
              file=sys.stderr)
    return farthest


LOG_FAR_FROM_EGO_M = 20.0  # a drive log whose cameras all pass farther than this from a point of the ego's lane:
#   named on stderr
LOG_ROUTE_CHECK_M = 60.0  # ... the ego's lane checked this far ahead of its start (or to the lane's end)


def _log_distance_to_ego_lane(scenario: Scenario, scene_meta: dict, log_folder: Path) -> dict:
    """How well the drive log the scene was reconstructed from covers the ego's drive: the distance (m, ground plane)
    from the ego's start to the log's nearest camera, and the largest such distance along the ego's lane up to
    LOG_ROUTE_CHECK_M ahead (every 5 m); beyond LOG_FAR_FROM_EGO_M a warning on stderr (a log of another world, or
    of this one along another road, renders smears there, and the off-trajectory criterion is measured from the
    scenario's lane, not the log's drive). Empty without the log's poses (a scene cached before they were kept)."""
    from neural_sensor.reconstruct.drive import scene_reference
    from neural_sensor.scene.path import Path as Polyline

    log = scene_reference(scene_meta)
    if log is None or len(log) == 0:
        return {}
    lane = Polyline(scenario.layout.lanes[scenario.ego.lane].travel_polyline())
    start_s = float(scenario.ego.start_s_m)
    # every 5 m ahead, then the start itself last (the range is empty for an ego at its lane's very end)
    stations = np.append(np.arange(start_s, min(lane.length_m, start_s + LOG_ROUTE_CHECK_M), 5.0), start_s)
    centres = log.pose_camera_to_world[:, :2, 3]
    nearest = np.array([np.min(np.linalg.norm(centres - np.asarray(lane.at(float(s))[0])[:2], axis=1))
                        for s in stations])
    at_start, worst = float(nearest[-1]), int(np.argmax(nearest))
    if at_start > LOG_FAR_FROM_EGO_M:
        print(f"neural-sensor: warning: the drive log {log_folder} passes no nearer than {at_start:.0f} m to the ego's "
              f"start in scenario {scenario.name!r}: is it a drive of this scenario's world? (the images will be "
              "smeared, and max_offset_from_recorded_path_m is measured from the scenario's recorded lane)",
              file=sys.stderr)
    elif nearest[worst] > LOG_FAR_FROM_EGO_M:
        print(f"neural-sensor: warning: the drive log {log_folder} leaves the ego's lane in scenario "
              f"{scenario.name!r}: {stations[worst] - start_s:.0f} m ahead of the ego's start its nearest camera is "
              f"{nearest[worst]:.0f} m away (the images will be smeared there: does the log drive this lane?)",
              file=sys.stderr)
    return {"log_nearest_to_ego_start_m": round(at_start, 2),
            "log_farthest_from_ego_lane_m": round(float(nearest.max()), 2)}


def _world_record(snapshot) -> dict:
    """log.jsonl's frame, time, ego and agents of a tick (plain numbers, copied out of the snapshot)."""
    return {
        "frame": int(snapshot.frame), "timestamp_s": round(float(snapshot.timestamp_s), 4),
        "ego": {"x_m": round(float(snapshot.ego.position_m[0]), 3), "y_m": round(float(snapshot.ego.position_m[1]), 3),
                "yaw_rad": round(snapshot.ego.yaw_rad, 4), "speed_mps": round(float(snapshot.ego.speed_mps), 3)},
        "agents": [{"id": int(a.agent_id), "kind": a.kind, "x_m": round(float(a.position_m[0]), 3),
                    "y_m": round(float(a.position_m[1]), 3), "yaw_rad": round(a.yaw_rad, 4),
                    "speed_mps": round(float(a.speed_mps), 3)} for a in snapshot.agents],
        "collisions": [int(c) for c in snapshot.collisions],
    }


def _json_number(value):
    """json.dumps' default: a numpy number as its Python one (anything else is still a TypeError)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def package_version() -> str:
    """The installed neural-sensor's version (the record's and `--version`'s)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("neural-sensor")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _reason_without_address(reason: str) -> str:
    """An enhancer's raw-tick reason without the server's port or worker socket, so that two runs' summaries count
    the same reasons under the same keys ("no reply from the enhancer at tcp://127.0.0.1:39227 within 25 ms")."""
    reason = re.sub(r" at (?:tcp|ipc)://\S+", "", reason)
    return re.sub(r" \((?:/|ipc://|tcp://)[^)]*\)", "", reason)


RAW_STREAK_SAID = 3  # raw ticks in a row (with an enhancer) that are said on stderr as they happen, with their end


def _run_loop(scenario, options, ticks, agent, specs, scene_meta, rig, sim, truth_rig=None, pseudo=None,
              keeper=None, leaderboard=None) -> dict:
    criteria = CriteriaState(scenario, ticks=ticks)
    ticks_requested = ticks
    first_timestamp_s = None  # (leaderboard: the agent's leaderboard version, `leaderboard_major`, or None)

    out_dir = check_out_dir(options.out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.run-{os.getpid()}-", dir=out_dir.parent))
    writer = None
    log = None
    stages: dict[str, list[float]] = {k: [] for k in ("sim", "compose", "render", "reference", "enhance", "temporal",
                                                      "deliver", "agent", "record")}
    ticks_enhanced = 0
    raw_streak = 0  # raw ticks in a row (with an enhancer); said live once it reaches RAW_STREAK_SAID
    raw_reasons: dict[str, int] = {}  # why the ticks the enhancer did not refine got the raw render, counted
    transport_ms: list[float] = []  # per enhanced tick: the enhancer's round trip above its model time
    routes: dict[str, int] = {}  # enhanced ticks per path they travelled ("shm/direct", ...)
    tick_ms: list[float] = []
    truth_psnr: dict[str, list[float]] = {spec.sensor_id: [] for spec in specs}
    try:
        log = (tmp / "log.jsonl").open("w")
        start_wall = time.perf_counter()
        last_images: list[np.ndarray] = []
        ticks_run, stopped_early = 0, None
        bar = tqdm(range(ticks), desc=scenario.name, unit="tick", disable=not options.progress)
        for tick in bar:
            raise_if_signalled()  # a signal whose exception something caught during the last tick
            t0 = time.perf_counter()
            snapshot = sim.tick()
            t1 = time.perf_counter()
            frames = rig.capture(snapshot)
            t2 = time.perf_counter()
            input_data = {sid: (f.frame, rgb_to_bgra(f.rgb)) for sid, f in frames.items()}
            # the agent's own copy: one that edited the snapshot's arrays in place (a pose moved to its own frame)
            # changed its verdict, the log and the --truth cameras
            input_data["world"] = (snapshot.frame, copy.deepcopy(snapshot))
            if pseudo is not None:  # GNSS / IMU / speedometer, as the leaderboard's SensorInterface hands them
                input_data.update(pseudo.readings(snapshot))
            criteria.update(snapshot)
            world_record = _world_record(snapshot)
            t3 = time.perf_counter()
            where = f"run_step at frame {snapshot.frame}"  # the frame of input_data and log.jsonl
            if first_timestamp_s is None:
                first_timestamp_s = snapshot.timestamp_s
            # a leaderboard agent's clock is the leaderboard's: one step at the first tick, from any server's time
            timestamp_s = (snapshot.timestamp_s if leaderboard is None else
                           leaderboard_clock_s(snapshot.timestamp_s, first_timestamp_s, sim.dt_s))
            returned = agent_call(options.agent, where, agent.run_step, input_data, timestamp_s,
                                   keys=input_data)  # its keys are named only for a KeyError
            try:
                control = VehicleControl.from_any(returned)
            except (ValueError, TypeError) as err:
                raise ValueError(f"the agent {options.agent or 'builtin'} returned a bad control from {where}: "
                                 f"{err}") from None
            sim.apply_control(control)
            t4 = time.perf_counter()
            # what the video and strip show: the delivered images as RGB uint8 (one compiled pass each, the
            # rounding of rgb_to_bgra and _to_uint8; tested equal)
            last_images = [to_uint8_into(f.rgb, np.empty(f.rgb.shape, np.uint8), allow_nan=True)
                           for f in frames.values()]
            tick_truth, truth_ms = None, 0.0
            if truth_rig is not None:  # its own stage: it was booked under "record" (361 ms for 5)
                t_truth = time.perf_counter()
                truth_frames = truth_rig.capture(snapshot)
                tick_truth = {}
                for sid, f in frames.items():  # None: identical images (infinite PSNR)
                    value = float(psnr(f.rgb, truth_frames[sid].rgb))
                    tick_truth[sid] = round(value, 3) if math.isfinite(value) else None
                    truth_psnr[sid].append(value)
                last_images = [np.concatenate([image, to_uint8(truth_frames[sid].rgb)], axis=1)
                               for image, sid in zip(last_images, frames)]
                truth_ms = (time.perf_counter() - t_truth) * 1e3
            if options.video:
                image = mosaic(last_images)
                if writer is None:
                    import imageio_ffmpeg

                    writer = imageio_ffmpeg.write_frames(str(tmp / "video.mp4"), (image.shape[1], image.shape[0]),
                                                         fps=round(1.0 / sim.dt_s), codec="libx264",
                                                         macro_block_size=1,
                                                         output_params=["-preset", "ultrafast", "-crf", "28",
                                                                        "-threads", "1"])
                    writer.send(None)
                writer.send(np.ascontiguousarray(image))
            first = next(iter(frames.values()))
            enhance_ms = first.meta.get("enhance_ms", 0.0)
            reference_ms = sum(f.meta.get("reference_ms", 0.0) for f in frames.values())  # the log warped in
            temporal_ms = sum(f.meta.get("temporal_ms", 0.0) for f in frames.values())  # the history blended in
            ticks_enhanced += bool(first.meta["enhanced"])
            if keeper is not None and not first.meta["enhanced"]:  # the run's own server: restarted if it exited
                keeper.check(snapshot.frame, options)
            if rig.enhancer is not None and not first.meta["enhanced"]:
                reason = _reason_without_address(first.meta["enhancer_reason"])  # (log.jsonl keeps it whole)
                raw_reasons[reason] = raw_reasons.get(reason, 0) + 1
                raw_streak += 1
                if raw_streak == RAW_STREAK_SAID:  # an outage, said as it starts (not a deadline missed now and then)
                    tqdm.write(f"neural-sensor: the enhancer has not refined the last {RAW_STREAK_SAID} ticks (frame "
                               f"{snapshot.frame}: {reason}); the cameras get the raw render until it answers again",
                               file=sys.stderr)
            elif rig.enhancer is not None:
                if raw_streak >= RAW_STREAK_SAID:  # ... and its end
                    tqdm.write(f"neural-sensor: the enhancer refines the cameras again from frame {snapshot.frame} "
                               f"(after {raw_streak} raw ticks)", file=sys.stderr)
                raw_streak = 0
            if first.meta["enhanced"] and first.meta.get("enhancer_model_ms") is not None:
                transport_ms.append(enhance_ms - first.meta["enhancer_model_ms"])
            if first.meta["enhanced"] and first.meta.get("enhancer_path"):
                routes[first.meta["enhancer_path"]] = routes.get(first.meta["enhancer_path"], 0) + 1
            record = {
                **world_record,
                "control": {"throttle": control.throttle, "steer": control.steer, "brake": control.brake,
                            "hand_brake": control.hand_brake, "reverse": control.reverse},
                "enhanced": first.meta["enhanced"], "enhancer_reason": first.meta["enhancer_reason"],
                # the ticks the delivered image accumulates (1 after a raw tick: the images differ from a run
                # without that raw tick for a few ticks more, a new user's finding)
                **({"temporal_ticks": first.meta["temporal_ticks"]} if "temporal_ticks" in first.meta else {}),
                **({} if tick_truth is None else {"truth_psnr_db": tick_truth}),
                "ms": {"sim": round((t1 - t0) * 1e3, 2), "compose": round(first.meta["compose_ms"], 2),
                       "render": round((t2 - t1) * 1e3 - first.meta["compose_ms"] - reference_ms - enhance_ms
                                       - temporal_ms, 2),
                       "reference": round(reference_ms, 2), "enhance": round(enhance_ms, 2),
                       "temporal": round(temporal_ms, 2),
                       "deliver": round((t3 - t2) * 1e3, 2), "agent": round((t4 - t3) * 1e3, 2),
                       **({} if truth_rig is None else {"truth": round(truth_ms, 2)})},
            }
            t5 = time.perf_counter()
            record["ms"]["record"] = round((t5 - t4) * 1e3 - truth_ms, 2)
            tick_ms.append(round((t5 - t0) * 1e3, 2))  # the whole tick, video (and --truth) included
            for key, value in record["ms"].items():
                stages.setdefault(key, []).append(value)
            log.write(json.dumps(record, default=_json_number) + "\n")
            ticks_run = tick + 1
            if criteria.route_end_reached and ticks_run < ticks:
                stopped_early = (f"the ego reached the end of its route ({criteria.route.length_m:.0f} m) "
                                 f"at tick {ticks_run} of {ticks}")
                bar.close()
                if options.progress:
                    print(f"{scenario.name}: stopped early: {stopped_early}", file=sys.stderr)
                break
        wall_s = time.perf_counter() - start_wall
        ticks = ticks_run
        log.close()
        if writer is not None:
            writer.close()
            writer = None
            if (tmp / "video.mp4").stat().st_size == 0:  # the encoder failed (its message is on stderr above)
                raise RuntimeError(f"ffmpeg wrote an empty video.mp4 of the {image.shape[1]}x{image.shape[0]} "
                                   "mosaic (its message is above); --no-video skips the video")
        from PIL import Image

        strip = mosaic(last_images, columns=len(last_images))
        # which camera is which (with --truth each camera's tile is its delivered image, then the builder's)
        names = [name for sid in frames for name in ((sid, f"{sid} truth") if truth_rig is not None else (sid,))]
        label_tiles(strip, names, tile_width=strip.shape[1] // len(names))
        Image.fromarray(strip).save(tmp / "strip.png")
        paths = {"log": str(out_dir / "log.jsonl"), "strip": str(out_dir / "strip.png")}
        if options.video:
            paths["video"] = str(out_dir / "video.mp4")
        if options.prompt_description is not None:
            paths["prompt"] = str(out_dir / "prompt.json")
        summary = {
            "neural_sensor_version": package_version(),
            "scenario": scenario.name, "description": scenario.description, "seed": options.seed,
            "ticks": ticks, "ticks_requested": ticks_requested, "stopped_early": stopped_early,
            "wall_s": round(wall_s, 3), "ticks_per_s": round(ticks / wall_s, 3),
            # the agent's cameras' own size ([width, height]; None where they differ: image_sizes has each)
            "cameras": len(specs), "image_size": (None if len({(sp.width, sp.height) for sp in specs}) > 1
                                                  else [specs[0].width, specs[0].height]),
            "image_sizes": {sp.sensor_id: [sp.width, sp.height] for sp in specs}, "backend": rig.backend,
            "lod_px": rig.lod_px, "render_scale": rig.render_scale, "tick_ms_median": _median(tick_ms),
            "stage_ms_median": {k: _median(v) for k, v in stages.items()},
            "criteria": criteria.results(), "passed": criteria.passed,
            "criteria_not_judged": criteria.not_judged(),
            "scene": {"source": options.scene, **{k: scene_meta.get(k) for k in (
                "key", "checkpoint", "n_gaussians", "build_s", "cached", "scene_s", "path", "log", "network_precision",
                "log_nearest_to_ego_start_m", "log_farthest_from_ego_lane_m")}},
            "agent": options.agent or "builtin", "paths": paths,
            "gnss_projection": options.gnss_projection if pseudo is not None and any(
                kind == "sensor.other.gnss" for _, kind, _ in pseudo.sensors) else None,
            "truth_psnr_db_median": None if truth_rig is None else {  # None: identical on half the ticks or more
                sid: _median_db(values) for sid, values in truth_psnr.items()},
            "enhancer": None if rig.enhancer is None else {
                "endpoint": rig.enhancer.endpoint, "deadline_ms": rig.enhancer.deadline_ms,
                # what else makes the delivered images: the accumulation and the drive log sent (a record did not
                # say, a new user's finding)
                "temporal_blend": options.temporal_blend, "log_reference": rig.reference is not None,
                **{k: (rig.enhancer.server or {}).get(k) for k in ("model_name", "checkpoint_hash", "server_version",
                                                                    "cpu_precision")},
                # the model that enhanced the run: its first hello's (a later server's other model is refused)
                **{k: v for k, v in (rig.enhancer.model or {}).items() if v is not None},
                "ticks_enhanced": ticks_enhanced, "ticks_raw": ticks - ticks_enhanced,
                "local_server_restarts": None if keeper is None else keeper.restarts,
                "raw_reasons": dict(sorted(raw_reasons.items(), key=lambda kv: -kv[1])),  # most frequent first
                # the path most enhanced ticks took, and how many took each
                "transport": max(routes, key=routes.get) if routes else None, "transport_ticks": routes,
                "transport_ms_median": _median(transport_ms) if transport_ms else None},
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1, default=_json_number))
        files = ["log.jsonl", "strip.png", "summary.json"] + (["video.mp4"] if options.video else [])
        if options.prompt_description is not None:  # in the record (its manifest) like the rest: a later run
            (tmp / "prompt.json").write_text(json.dumps(options.prompt_description, indent=1))  # replaces it
            files.append("prompt.json")
        install_record(tmp, check_out_dir(out_dir), files)
        return summary
    except BaseException:
        if log is not None and not log.closed:
            log.close()
        if writer is not None:
            try:
                writer.close()
            except Exception:  # the encoder may already be gone; the folder is removed either way
                pass
        shutil.rmtree(tmp, ignore_errors=True)
        raise
