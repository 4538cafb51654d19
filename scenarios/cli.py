"""`neural-sensor`: the command line.

    neural-sensor demo [--ticks N] [--out DIR] ...     the default scenario on the embedded simulator, seen
                                                       through the neural chain: its world's recorded drive
                                                       reconstructed (cached), rendered, enhanced by a local
                                                       server (--scene builder: the ground truth instead)
    neural-sensor run SCENARIO [--ticks N] [--out DIR] ...  a built-in name, a .py file or a package.module
    neural-sensor build-scene {straight,curve,intersection} | --xodr MAP.xodr | --layout L.json [--voxel M]
                              [--export-xodr OUT.xodr] [--ply OUT.ply]
    neural-sensor render SCENE.ply --eye X Y Z --target X Y Z [-o FILE.png]
    neural-sensor street [--gaussians N] [--cameras C]
    neural-sensor bench [--ticks N]                    closed-loop tick rate, per-stage ms (no video)
    neural-sensor record-drive SCENARIO -o LOG         "record" a drive of the scenario's world as a drive log
    neural-sensor reconstruct LOG [-o SCENE.ply]       reconstruct (and cache) the scene of a drive log

Drive logs (docs/drive_log.md): a folder with a nerfstudio-style transforms.json and
PNG images; `run` / `demo` take one as the scene source with `--scene-log LOG`.

Exit codes: 0 done (and, for demo / run, the scenario passed its criteria); 1 the
scenario failed its criteria (`--allow-fail` keeps 0); 2 bad input (unknown
scenario, bad sensor, unreadable scene: one line naming the problem); 130 / 143
interrupted by Ctrl-C / SIGTERM. Nothing is left half-written on any of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import traceback
import warnings
from pathlib import Path

from neural_sensor.cli import MAX_SIDE_PX, add_render_commands, int_at_least, run_render_command, seed_int
from neural_sensor.enhance.precision import CPU_PRECISIONS
from neural_sensor.enhance.temporal import TEMPORAL_BLEND
from neural_sensor.host import check_writable_parent, write_problem
from neural_sensor.render import BACKENDS, LOD_PX, RECONSTRUCTION_LOD_PX, RECONSTRUCTION_SCALE
from scenarios.agent import AgentError, ScenarioError


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except an on/off flag's ("--no-X ... (default: True)" read as if the flag
    were on by default), a None (which says nothing: the help says what happens without the option) and one the
    help already states ("(default 0.6) (default: 0.6)")."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.nargs == 0 or action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)


_FORMATTER = _Formatter


class _Parser(argparse.ArgumentParser):
    """An argument error is one line naming the problem and where the options are listed (exit code 2, as every
    bad input), not argparse's usage block before it."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _OneDescription(argparse.Action):
    """--prompt given twice is refused: argparse would keep the last and drop the first without a word, and a user
    may take two prompts for one street described in parts."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice: describe the street in one {option_string} (the second "
                         "would replace the first)")
        setattr(namespace, self.dest, values)


_PYTHON_FORMAT_WARNING = warnings.formatwarning  # the CLI formats only a drive log's warnings itself
_CACHE_DEFAULT = "(default: $NEURAL_SENSOR_CACHE/scenes or ~/.cache/neural_sensor/scenes)"  # every --cache

_NETWORK_PRECISION_HELP = ("a reconstructed scene's network arithmetic on a CPU (auto: bfloat16 where the CPU runs it "
                           "natively and a timed probe finds it faster, as for the enhancer; part of the scene's "
                           "cache key; with auto a scene cached in either precision is used)")


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a bad one is the option's own one-line error, not a sensor's later)."""
    return int_at_least(text, 1, "a positive integer")


def _side_px(text: str) -> int:
    """argparse type for --width / --height: an integer in 1..MAX_SIDE_PX (as `render`'s)."""
    value = _positive_int(text)
    if value > MAX_SIDE_PX:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_SIDE_PX} pixels, got {value}")
    return value


def _number(text: str) -> float:
    """A float for an argparse type, or argparse's error naming the text."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None


def _lod_px(text: str) -> float:
    """argparse type for --lod-px: a finite number >= 0."""
    value = _number(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (0 = every Gaussian, exact), got {text}")
    return value


def _blend(text: str) -> float:
    """argparse type for --temporal-blend: a number in [0, 1) (checked before any scene is built)."""
    value = _number(text)
    if not (math.isfinite(value) and 0 <= value < 1):
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1) (0: no blending), got {text}")
    return value


def _render_scale(text: str) -> float:
    """argparse type for --render-scale: a number in (0, 1]."""
    value = _number(text)
    if not (math.isfinite(value) and 0 < value <= 1):
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text}")
    return value


def _enhancer(text: str) -> str:
    """argparse type for --enhancer: local, none, or a server's endpoint (tcp://HOST:PORT, ipc://PATH)."""
    if text in ("local", "none"):
        return text
    from neural_sensor.enhance.protocol import check_endpoint

    try:
        return check_endpoint(text, "endpoint")
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"local, none or a server's endpoint: {err}") from None


def _add_run_options(parser: argparse.ArgumentParser, default_out: str, video: bool = True, truth: bool = True) -> None:
    parser.add_argument("--ticks", type=_positive_int, default=None,
                        help="ticks to run (default: the scenario's length; fewer is a quick look: the route completion it "
                             "cannot reach is then not judged); the run stops early if the ego reaches the end of its "
                             "route")
    parser.add_argument("-o", "--out", type=Path, default=Path(default_out),
                        help="record folder: the files of a previous record there are replaced, nothing else")
    parser.add_argument("--width", type=_side_px, default=480, help=f"camera width, pixels (1..{MAX_SIDE_PX})")
    parser.add_argument("--height", type=_side_px, default=270, help=f"camera height, pixels (1..{MAX_SIDE_PX})")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="render backend")
    parser.add_argument("--lod-px", type=_lod_px, default=argparse.SUPPRESS, metavar="PX",
                        help="level of detail of the cpu renderer: far groups of neighbouring Gaussians are drawn "
                             "as one where that one's largest standard deviation spans <= PX pixels; 0 draws every "
                             f"Gaussian (exact; default {LOD_PX} for the builder's scene, {RECONSTRUCTION_LOD_PX} for "
                             "a reconstruction)")
    parser.add_argument("--render-scale", type=_render_scale, default=argparse.SUPPRESS, metavar="S",
                        help="draw the scene at this fraction of the cameras' size, then upsample (bilinear; default "
                             f"1 for the builder's scene, {RECONSTRUCTION_SCALE} for a reconstruction, whose Gaussians "
                             "are coarser than the rig's pixels: 40 %% less of the render's time, 0.00-0.02 dB)")
    parser.add_argument("--seed", type=seed_int, default=0, help="scenario and simulator seed")
    parser.add_argument("--agent", default=None,
                        help="driving agent as 'package.module:Class' (on sys.path) or 'path/to/file.py:Class' "
                             "(or the module alone where it has the leaderboard's get_entry_point(); default: the "
                             "built-in agent, scenarios.agent.BuiltinAgent)")
    parser.add_argument("--agent-config", default=None, metavar="PATH",
                        help="a CARLA leaderboard agent's configuration, handed to its setup() as the leaderboard's "
                             "--agent-config is")
    parser.add_argument("--gnss-projection", choices=("leaderboard", "carla-0.9.16"), default="leaderboard",
                        help="an agent's sensor.other.gnss: as CARLA up to 0.9.15 and the leaderboard's route GPS "
                             "(route, GNSS and compass agree), or as the CARLA 0.9.16 server (its +y to the north, "
                             "mirrored against the route and the compass: carla-simulator/carla#9389)")
    if video:  # bench writes none
        parser.add_argument("--no-video", action="store_true", help="skip video.mp4")
    parser.add_argument("--cache", type=Path, default=None, help=f"scene cache folder {_CACHE_DEFAULT}")
    parser.add_argument("--scene", choices=("reconstruction", "builder"), default=argparse.SUPPRESS,
                        help="reconstruction (the default): the neural chain, the scene reconstructed from a drive "
                             "along the recorded lane (cached); builder: the layout's own scene, the ground truth")
    parser.add_argument("--scene-log", type=Path, default=None, metavar="LOG",
                        help="render the scene reconstructed from this drive log (its folder or its transforms.json; "
                             "docs/drive_log.md) instead; "
                             "the same as RunOptions(scene='log:LOG')")
    parser.add_argument("--enhancer", type=_enhancer, default=argparse.SUPPRESS, metavar="local|none|tcp://HOST:PORT",
                        help="refine every camera with the enhancer: 'local' starts a server subprocess for the "
                             "run, 'none' delivers the raw render, tcp://HOST:PORT or ipc://PATH uses a running "
                             "`neural-sensor serve-enhancer` there (one that does not answer within 10 s at the start "
                             "is an error, exit 2; later, a tick it misses is delivered raw) (default: local for a "
                             "reconstruction, none for the builder's scene)")
    parser.add_argument("--enhancer-deadline-ms", type=float, default=1000.0,
                        help="per-tick enhancer budget; past it the raw render is delivered (flagged)")
    parser.add_argument("--enhancer-checkpoint", type=Path, default=None,
                        help="checkpoint folder for --enhancer local (default: the shipped one, checkpoints/enhancer-run)")
    parser.add_argument("--enhancer-precision", choices=CPU_PRECISIONS, default="auto",
                        help="for --enhancer local: the model's arithmetic on a CPU (auto: bfloat16 where the CPU "
                             "has AMX or a timed probe finds it faster; float32 elsewhere)")
    parser.add_argument("--network-precision", choices=CPU_PRECISIONS, default="auto",
                        help=_NETWORK_PRECISION_HELP)
    parser.add_argument("--reconstructor-checkpoint", type=Path, default=None,
                        help="a reconstructed scene's network: a ReconNet checkpoint folder, e.g. one you trained "
                             "(default: the shipped one, checkpoints/reconstructor-run; its hash is in the scene's "
                             "cache key)")
    parser.add_argument("--no-log-reference", dest="log_reference", action="store_false",
                        help="do not send the enhancer the drive log's images warped into each camera (faster: no "
                             "median depth and no warp per tick; the enhancer then gains less; by default they are "
                             "sent)")
    parser.add_argument("--temporal-blend", type=_blend, default=TEMPORAL_BLEND, metavar="B",
                        help="weight in [0, 1) of each camera's previous enhanced image, reprojected through the "
                             f"render's depth and clamped, in the delivered one (default {TEMPORAL_BLEND}; 0: none)")
    if truth:  # (not for bench: the truth's render would be timed as part of every tick)
        parser.add_argument("--truth", action="store_true",
                            help="also render the builder's scene of the layout (the ground truth, drawn exactly: "
                                 "--lod-px 0) every tick: beside each camera in the video and strip, per-camera PSNR "
                                 "in log.jsonl and summary.json (null: identical images). With --scene builder it "
                                 "measures the level of detail's error alone")
    parser.add_argument("--carla", default=None, metavar="HOST:PORT",
                        help="run on a CARLA server (synchronous mode) instead of the embedded simulator")
    parser.add_argument("--allow-fail", action="store_true",
                        help="exit 0 even when the scenario fails its criteria (default: exit 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="neural-sensor", description="Neural camera sensor for CARLA",
                                     epilog="exit codes: 0 ok; 1 the scenario failed its criteria (demo / run; "
                                            "--allow-fail keeps 0); 2 bad input; 130 / 143 interrupted")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run the default scenario (cut_in) with a 6-camera rig",
                            formatter_class=_FORMATTER)
    _add_run_options(p_demo, "out")
    p_run = sub.add_parser("run", help="run a scenario: a built-in name, a .py file or a package.module",
                           formatter_class=_FORMATTER)
    p_run.add_argument("scenario", nargs="?", default=None,
                       help="cut_in | pedestrian_crossing | lane_change, or path/to/my_scenario.py, "
                            "or package.module (defining make_scenario(seed) -> Scenario)")
    p_run.add_argument("--prompt", default=None, action=_OneDescription,
                       help="instead of a scenario: a plain drive through the street a text prompt describes")
    _add_run_options(p_run, "out")
    p_build = sub.add_parser("build-scene", help="build (and cache) the Gaussian scene of a layout template, "
                                                 "an OpenDRIVE map or a layout JSON", formatter_class=_FORMATTER)
    p_build.add_argument("template", nargs="?", choices=("straight", "curve", "intersection"),
                         help="layout template (or give --xodr / --layout / --prompt)")
    p_build.add_argument("--prompt", default=None, action=_OneDescription,
                         help="describe the street in words, e.g. 'a 300 m road with four lanes at dusk'")
    p_build.add_argument("--xodr", type=Path, default=None, help="OpenDRIVE map, e.g. a CARLA town's")
    p_build.add_argument("--layout", type=Path, default=None, help="layout JSON (Layout.to_json)")
    p_build.add_argument("--export-xodr", type=Path, default=None, help="also write the layout's roads as OpenDRIVE")
    p_build.add_argument("--ply", type=Path, default=None, help="also copy the scene PLY here")
    p_build.add_argument("--length", type=float, default=None,
                         help="straight: road length; intersection: arm length (default 200 m; a curve takes none)")
    p_build.add_argument("--voxel", type=float, default=0.3, help="voxel size, metres")
    p_build.add_argument("--seed", type=seed_int, default=None,
                         help="style seed (default 0); for a --layout file, which holds its own objects and seed, "
                              "it changes the surfaces' colours and grain only")
    p_build.add_argument("--cache", type=Path, default=None, help=f"scene cache folder {_CACHE_DEFAULT}")
    p_record = sub.add_parser("record-drive", help="'record' a drive of a scenario's generated world (its recorded "
                                                    "lane, the nuScenes-like rig) as a drive log",
                              formatter_class=_FORMATTER)
    p_record.add_argument("scenario", help="cut_in | pedestrian_crossing | lane_change, a .py file or a package.module")
    p_record.add_argument("-o", "--out", type=Path, required=True,
                          help="the drive log folder to write (must not exist or be empty)")
    p_record.add_argument("--seed", type=seed_int, default=0, help="scenario seed")
    p_record.add_argument("--step", type=float, default=4.0, help="metres between recorded rig frames")
    p_record.add_argument("--width", type=_side_px, default=160,
                          help="camera width, pixels (the reconstructor was trained at 160x96; a run records its "
                               "drive at 320x192, which the network reads resampled and the enhancer's reference "
                               "keeps: pass --width 320 --height 192 for the run's reference)")
    p_record.add_argument("--height", type=_side_px, default=96, help="camera height, pixels")
    p_record.add_argument("--speed", type=float, default=10.0, help="driving speed for the timestamps, m/s")
    p_record.add_argument("--cache", type=Path, default=None,
                          help=f"scene cache folder of the builder's scene {_CACHE_DEFAULT}")
    p_recon = sub.add_parser("reconstruct", help="reconstruct the Gaussian scene of a drive log (cached)",
                             formatter_class=_FORMATTER)
    p_recon.add_argument("log", type=Path, help="drive log folder (transforms.json + images; docs/drive_log.md), "
                                                "or its transforms.json")
    p_recon.add_argument("-o", "--out", type=Path, default=None, help="also copy the scene PLY here")
    p_recon.add_argument("--size", type=int, nargs=2, default=None, metavar=("W", "H"),
                         help="resample every image to W x H first (default: a log wider than 160 px, the network's "
                              "training size, is read at 160 px wide with its aspect kept, and one whose cameras "
                              "differ in size at one size, 160 px wide at most, the aspect halfway between its "
                              "cameras'; give the log's own size to read it as it is)")
    p_recon.add_argument("--checkpoint", type=Path, default=None,
                         help="reconstructor checkpoint folder (default: the shipped one, checkpoints/reconstructor-run)")
    p_recon.add_argument("--cache", type=Path, default=None, help=f"scene cache folder {_CACHE_DEFAULT}")
    p_recon.add_argument("--refine-iterations", type=int, default=None, metavar="N",
                         help="sweeps of the colour refinement against the log's images (0: none; default: "
                              "neural_sensor.reconstruct.refine.RefineConfig's)")
    p_recon.add_argument("--no-depth-refinement", action="store_true",
                         help="keep the network's depths (skip the photometric refinement against the neighbour "
                              "views, neural_sensor.reconstruct.photometric: faster, ~1 dB worse)")
    p_recon.add_argument("--network-precision", choices=CPU_PRECISIONS, default="auto",
                         help=_NETWORK_PRECISION_HELP)
    p_cache = sub.add_parser("cache", help="list the scene cache's entries (least recently used first); --prune-gb "
                                           "removes the least recently used down to a size", formatter_class=_FORMATTER)
    p_cache.add_argument("--cache", type=Path, default=None,
                         help=f"scene cache folder {_CACHE_DEFAULT}")
    p_cache.add_argument("--prune-gb", type=float, default=None, metavar="GB",
                         help="remove least recently used entries until the cache holds at most GB gigabytes (0 "
                              "empties it; every store already keeps it under $NEURAL_SENSOR_CACHE_MAX_GB, default "
                              "10, where 0 or none means no bound)")
    p_bench = sub.add_parser("bench", help="closed-loop tick rate of the demo, without video",
                             formatter_class=_FORMATTER)
    _add_run_options(p_bench, "out/bench", video=False, truth=False)
    p_serve = sub.add_parser("serve-enhancer", help="serve the enhancer over ZeroMQ (broker + worker processes)",
                             description="Serve the enhancer over ZeroMQ: a broker and its model worker processes, "
                                         "until Ctrl-C or SIGTERM (then exit 0; 130 / 143 when stopped before it "
                                         "listens). Runs use it with --enhancer tcp://HOST:PORT; from another "
                                         "machine through an SSH tunnel (ssh -N -L 5555:127.0.0.1:5555 HOST): "
                                         "it binds loopback only, unless CurveZMQ, whose keys only the Python "
                                         "EnhancerClient takes.",
                             formatter_class=_FORMATTER)
    from neural_sensor.enhance.server import add_arguments as add_server_arguments

    add_server_arguments(p_serve)
    add_render_commands(sub, formatter_class=_FORMATTER)
    parser.commands = sub.choices  # name -> the command's parser (its own errors name it: `parse_args`)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """parser.parse_args, except that an unknown option is the command's error (its help, a close option named),
    not the top level's: `run --tciks 5` says `neural-sensor run: error: ... (did you mean --ticks?)`."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        import difflib

        command = parser.commands.get(getattr(args, "command", None), parser)
        options = [o for action in command._actions for o in action.option_strings]  # noqa: SLF001
        unknown = [e for e in extra if e.startswith("-")]
        if not unknown:
            command.error(f"unrecognized arguments: {' '.join(extra)}")
        close = difflib.get_close_matches(unknown[0].split("=")[0], options, n=1)
        command.error(f"unrecognized option{'s' if len(unknown) > 1 else ''} {' '.join(unknown)}"
                      + (f" (did you mean {close[0]}?)" if close else ""))
    return args


def _version() -> str:
    from scenarios.runner import package_version

    return package_version()


def _run(args: argparse.Namespace, scenario: str, video: bool, prompt_description: dict | None = None) -> dict:
    from scenarios.runner import RunOptions, run_scenario

    # --scene, --enhancer, --lod-px and --render-scale have no default in args (argparse.SUPPRESS): theirs depend on
    # the scene
    scene = getattr(args, "scene", None) or "reconstruction"
    if args.scene_log is not None:
        if hasattr(args, "scene"):
            raise ValueError(f"give --scene {args.scene} or --scene-log LOG, not both")
        scene = f"log:{args.scene_log}"
    enhancer = getattr(args, "enhancer", None) or ("none" if scene == "builder" else "local")
    enhancer = None if enhancer == "none" else enhancer
    options = RunOptions(out_dir=args.out, ticks=args.ticks, width=args.width, height=args.height,
                         backend=args.backend, seed=args.seed, agent=args.agent, agent_config=args.agent_config,
                         gnss_projection=args.gnss_projection,
                         video=video and not args.no_video,
                         cache_dir=args.cache, carla=args.carla, scene=scene, enhancer=enhancer,
                         enhancer_deadline_ms=args.enhancer_deadline_ms, enhancer_checkpoint=args.enhancer_checkpoint,
                         enhancer_precision=args.enhancer_precision, network_precision=args.network_precision,
                         reconstructor_checkpoint=args.reconstructor_checkpoint,
                         log_reference=args.log_reference, temporal_blend=args.temporal_blend,
                         truth=getattr(args, "truth", False), lod_px=getattr(args, "lod_px", None),
                         render_scale=getattr(args, "render_scale", None), prompt_description=prompt_description)
    return run_scenario(scenario, options)


def _build_scene(args: argparse.Namespace) -> dict:
    import shutil

    from neural_sensor.scene.build import build_scene
    from neural_sensor.scene.layout import Layout, Style, from_template
    from neural_sensor.scene.opendrive import layout_export_problem, layout_from_opendrive, layout_to_opendrive

    sources = [x for x in (args.template, args.xodr, args.layout, args.prompt) if x is not None]
    if len(sources) != 1:
        raise ValueError("build-scene takes exactly one of: a template name, --xodr FILE, --layout FILE, "
                         "--prompt TEXT")
    if args.length is not None and args.template not in ("straight", "intersection"):
        given = args.template or ("--prompt" if args.prompt is not None else "--xodr" if args.xodr is not None
                                  else "--layout")
        raise ValueError(f"--length sets a straight road's length or an intersection's arms; {given} takes none")
    # said before the scene is built, not after
    for option, path in (("--ply", args.ply), ("--export-xodr", args.export_xodr)):
        if path is not None and path.is_dir():
            raise ValueError(f"{option} {path}: a folder; name the file to write")
        if path is not None:
            check_writable_parent(option, path)
    length = 200.0 if args.length is None else args.length
    seed = 0 if args.seed is None else args.seed
    style = Style(seed=seed)
    description = None
    if args.prompt is not None:
        layout, description = _layout_from_prompt(args.prompt, seed, args.voxel)
    elif args.xodr is not None:
        data = _read_bytes(args.xodr, "OpenDRIVE map")  # the XML declaration names its encoding (UTF-8 without one)
        try:
            layout = layout_from_opendrive(data, style=style, name=args.xodr.stem)
        except ValueError as err:
            raise ValueError(f"OpenDRIVE map {args.xodr}: {err}") from None
    elif args.layout is not None:
        text = _read_text(args.layout, "layout")
        try:
            layout = Layout.from_json(text)
        except ValueError as err:
            raise ValueError(f"layout {args.layout}: {err}") from None
        if args.seed is not None:  # (it was ignored without a word: the file's own seed was built)
            layout.style = dataclasses.replace(layout.style, seed=args.seed)
    else:
        kwargs = {"straight": {"length_m": length}, "intersection": {"arm_length_m": length},
                  "curve": {}}[args.template]
        layout = from_template(args.template, style=style, **kwargs)
    if args.export_xodr is not None and layout_export_problem(layout):  # before the build, not after it
        raise ValueError(f"--export-xodr {args.export_xodr}: {layout_export_problem(layout)}")
    _, result = build_scene(layout, voxel_m=args.voxel, cache_dir=args.cache, progress=True)
    if description is not None:
        result["description"] = description
    if args.export_xodr is not None:
        args.export_xodr.parent.mkdir(parents=True, exist_ok=True)
        args.export_xodr.write_text(layout_to_opendrive(layout), encoding="utf-8")  # as its declaration says
        result["xodr"] = str(args.export_xodr)
    if args.ply is not None:
        args.ply.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(result["path"]) / "scene.ply", args.ply)
        result["ply"] = str(args.ply)
    return result


def _record_drive(args: argparse.Namespace) -> dict:
    """`record-drive`: the scenario's world along its recorded lane, as a drive log; returns the summary."""
    import time

    from neural_sensor.reconstruct.log import record_drive
    from scenarios.runner import load_scenario

    from neural_sensor.reconstruct.log import NETWORK_STRIDE_PX

    for name in ("width", "height"):  # (a 1x1 log was written, and then refused by `reconstruct`)
        if getattr(args, name) < NETWORK_STRIDE_PX:
            raise ValueError(f"--{name} must be at least {NETWORK_STRIDE_PX} pixels (the smallest image the "
                             f"reconstructor reads), got {getattr(args, name)}")
    for option, value, unit in (("--step", args.step, "metres"), ("--speed", args.speed, "m/s")):
        if not (math.isfinite(value) and value > 0):  # record_drive said "step_m" / "speed_mps", not the option
            raise ValueError(f"{option} must be a positive number of {unit}, got {value:g}")
    from neural_sensor.reconstruct.log_checks import MAX_VIEW_GAP_M

    if args.step > MAX_VIEW_GAP_M:  # (the log's reader says it too, at every reconstruction)
        print(f"neural-sensor record-drive: warning: views {args.step:g} m apart reconstruct poorly (the reconstructor "
              f"was trained on drives recorded every 4 m; 18 m gave an almost empty scene): --step 4-{MAX_VIEW_GAP_M:g}",
              file=sys.stderr)
    out = Path(args.out)  # said before the drive is rendered (write_drive_log refuses it only when it writes)
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {out} exists and is not a folder; a drive log goes into a new one: choose another")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"-o {out} exists and is not an empty folder; a drive log goes into a new one: choose another")
    scenario = load_scenario(args.scenario, args.seed)
    start = time.perf_counter()
    summary = record_drive(scenario.layout, scenario.recorded_path_xy_m, args.out, step_m=args.step, width=args.width,
                           height=args.height, voxel_m=scenario.voxel_m, speed_mps=args.speed, cache_dir=args.cache,
                           progress=True)
    return {"scenario": scenario.name, "seed": args.seed, **summary, "wall_s": round(time.perf_counter() - start, 2)}


def _check_cache_folder(folder: Path | None, command: str | None = None) -> None:
    """ValueError naming --cache when it names a file (None: the default folder); for a command that uses the scene
    cache, ValueError where a file stands on the cache's way, and for one that builds scenes, a warning first where
    the cache cannot be written (a read-only cache that holds the scene still serves it; one that does not fails
    only after the build)."""
    from neural_sensor.reconstruct.cache import default_cache_root

    if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
        raise ValueError(f"--cache {folder} is a file, not a scene cache folder")
    builds = command in ("demo", "bench", "run", "build-scene", "reconstruct", "record-drive")
    if not (builds or command == "cache"):  # (serve-enhancer, render, street: no cache, whatever HOME holds)
        return
    try:
        root = Path(folder) if folder is not None else default_cache_root()
        existing = next((p for p in (root, *root.parents) if p.exists()), None)
    except (RuntimeError, OSError):  # no home directory, an unreadable parent: the cache's own use says so
        return
    if existing is not None and not existing.is_dir():  # a file on the way can never hold a cache (`cache` listed
        # nothing without a word; a build warned, built the whole scene, then failed to keep it)
        variable = os.environ.get("NEURAL_SENSOR_CACHE")
        named = (f"--cache {folder}" if folder is not None else f"$NEURAL_SENSOR_CACHE {variable}" if variable
                 else "the scene cache's default place")
        raise ValueError(f"{named}: {existing} is a file, so the scene cache {root} cannot be a folder there")
    if builds:
        problem = write_problem(root)
        if problem:
            print(f"neural-sensor: warning: the scene cache {root} cannot be written ({problem}): a scene not in it "
                  "yet is built and kept for this run only (give --cache or $NEURAL_SENSOR_CACHE a folder you can "
                  "write)", file=sys.stderr)


def _cache(args: argparse.Namespace) -> dict:
    """`cache`: the scene cache's entries, least recently used first (after --prune-gb, if given)."""
    import time

    from neural_sensor.reconstruct.cache import SceneCache, bytes_from_gb

    if args.prune_gb is not None and not (math.isfinite(args.prune_gb) and args.prune_gb >= 0):
        raise ValueError(f"--prune-gb must be a finite number of gigabytes >= 0, got {args.prune_gb}")
    cache = SceneCache(args.cache, max_bytes=None)
    removed = [] if args.prune_gb is None else cache.prune(bytes_from_gb(args.prune_gb))
    abandoned = [] if args.prune_gb is None else cache.sweep_abandoned_stores()  # killed stores' folders
    entries = cache.entries()
    left_gb = sum(e["bytes"] for e in entries) / 1e9
    if args.prune_gb is not None and left_gb > args.prune_gb:  # (it said nothing: `"removed": []`, exit 0)
        print(f"neural-sensor cache: {cache.root} still holds {left_gb:.3f} GB, over --prune-gb {args.prune_gb:g}: "
              "what is left could not be removed (a folder this user cannot write?)", file=sys.stderr)
    if not entries and (cache.root / "scenes").is_dir() and SceneCache(cache.root / "scenes", max_bytes=None).entries():
        # `--cache $NEURAL_SENSOR_CACHE` listed nothing without a word: the variable names the scenes folder's parent
        print(f"neural-sensor cache: {cache.root} holds no scene, but its scenes/ folder does: --cache names the scene "
              f"cache folder itself ({cache.root / 'scenes'}), $NEURAL_SENSOR_CACHE the folder that holds it",
              file=sys.stderr)
    return {"root": str(cache.root), "entries": len(entries), "total_gb": round(sum(e["bytes"] for e in entries) / 1e9, 3),
            "removed": removed, **({"abandoned_stores_removed": abandoned} if abandoned else {}),
            "list": [{"key": e["key"], "source": e["source"], "name": e["name"], "mb": round(e["bytes"] / 1e6, 1),
                      "gaussians": e["gaussians"],  # (and "made": two entries of one name were told apart by nothing)
                      "made": None if e["made"] is None else time.strftime("%Y-%m-%d %H:%M:%S",
                                                                           time.localtime(e["made"])),
                      "last_used": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["last_used"]))}
                     for e in entries]}


def _reconstruct(args: argparse.Namespace) -> dict:
    """`reconstruct`: a drive log -> a cached scene (and a PLY copy with -o); returns the summary."""
    import shutil
    import time

    from neural_sensor.reconstruct.drive import DEFAULT_CHECKPOINT, reconstructed_scene_from_log
    from neural_sensor.reconstruct.log import drive_log_folder
    from neural_sensor.reconstruct.photometric import depth_refine_config
    from neural_sensor.reconstruct.refine import refine_config

    if args.size is not None and not 0 < min(args.size) <= max(args.size) <= MAX_SIDE_PX:
        raise ValueError(f"--size must be two numbers of pixels in 1..{MAX_SIDE_PX}, got {args.size}")
    if args.refine_iterations is not None and args.refine_iterations < 0:
        raise ValueError(f"--refine-iterations must be >= 0, got {args.refine_iterations}")
    refine = refine_config(args.refine_iterations)
    if args.out is not None:  # a PLY path that cannot be written is said before the reconstruction, not after
        if args.out.is_dir():
            raise ValueError(f"-o {args.out} is a folder; give the PLY file to write (e.g. {args.out / 'scene.ply'})")
        if args.out.suffix.lower() != ".ply":
            raise ValueError(f"-o {args.out}: the reconstruction is written as a PLY; give a .ply file name")
        check_writable_parent("-o", args.out)
        log_folder = drive_log_folder(args.log).resolve()  # LOG may name its transforms.json
        if log_folder.is_dir() and args.out.resolve().is_relative_to(log_folder):
            raise ValueError(f"-o {args.out} lies inside the drive log {args.log}; write the PLY outside it (a "
                             f"reconstruction never writes into the log it reads)")
    start = time.perf_counter()
    scene, meta = reconstructed_scene_from_log(args.log, checkpoint=args.checkpoint or DEFAULT_CHECKPOINT,
                                               size=None if args.size is None else tuple(args.size),
                                               cache_dir=args.cache, progress=True, refine=refine,
                                               depth_refine=depth_refine_config(args.no_depth_refinement),
                                               network_precision=args.network_precision)
    result = {"log": str(args.log), **{k: meta.get(k) for k in ("views", "frames", "image_size", "log_image_sizes",
                                                                "reference_size", "n_gaussians", "key", "cached",
                                                                "build_s", "path",
                                                                "colour_refinement", "depth_refinement",
                                                                "network_precision")},
              "wall_s": round(time.perf_counter() - start, 2)}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(meta["path"]) / "scene.ply", args.out)
        result["ply"] = str(args.out)
    return result


def _layout_from_prompt(prompt: str, seed: int, voxel_m: float | None = None):
    """(Layout, description) for a prompt (refused where its scene would not fit in memory at voxel_m, default a
    run's); the description the prompt was read as goes to stderr."""
    from neural_sensor.scene.prompt import PromptModelMissing, describe, layout_from_prompt

    try:
        layout, description = layout_from_prompt(prompt, seed=seed, voxel_m=voxel_m)
    except PromptModelMissing as err:
        raise ValueError(str(err)) from None
    print(describe(description), file=sys.stderr)
    return layout, description


def _read_bytes(path: Path, what: str) -> bytes:
    """A file's bytes, or ValueError naming the file and what it should have been."""
    try:
        return path.read_bytes()
    except OSError as err:
        raise ValueError(f"{what} {path} cannot be read: {err.strerror or err}") from None


def _read_text(path: Path, what: str) -> str:
    """A UTF-8 text file's content, or ValueError naming the file and what it should have been."""
    data = _read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path} is not a UTF-8 text file (byte {err.start} is {err.object[err.start]:#04x})"
                         ) from None


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """The CLI's warnings: a drive log's (log_checks.DriveLogWarning) and a map's (opendrive.OpenDriveWarning) as
    one line naming the tool, others as Python formats them."""
    from neural_sensor.reconstruct.log_checks import DriveLogWarning
    from neural_sensor.scene.opendrive import OpenDriveWarning

    if issubclass(category, (DriveLogWarning, OpenDriveWarning)):
        return f"neural-sensor: warning: {message}\n"
    return _PYTHON_FORMAT_WARNING(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    from scenarios.signals import install_early_sigterm, remove_early_sigterm

    install_early_sigterm()  # (a container's PID 1 would drop a SIGTERM until a run's own handler)
    try:
        return _main_with_args(argv)
    finally:
        remove_early_sigterm()  # (main() called in a host's process leaves its signals as they were)


def _main_with_args(argv: list[str] | None) -> int:
    args = parse_args(build_parser(), argv)
    warnings.formatwarning = _format_warning
    ready = getattr(args, "ready_file", None) if args.command == "serve-enhancer" else None
    if ready and Path(ready).is_file():  # a stale one (a killed server's) goes first, before the seconds of imports
        from neural_sensor.enhance.server import remove_stale_ready_file  # and model loading: a script waiting

        remove_stale_ready_file(ready)  # for it would go on at once (a live server's stays)
    try:
        return _main(args)
    except KeyboardInterrupt:
        print("neural-sensor: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exit_:  # SIGTERM unwinds a run as SystemExit(143)
        if exit_.code == 143:
            print("neural-sensor: terminated", file=sys.stderr)
        raise


def _main(args: argparse.Namespace) -> int:
    prog = f"neural-sensor {args.command}"  # argparse's own errors name the command too
    verdict = None  # demo / run: the scenario's verdict, said on the last line
    try:
        _check_cache_folder(getattr(args, "cache", None), args.command)  # every command that caches, first
        if args.command in ("demo", "bench"):
            from scenarios.runner import DEFAULT_SCENARIO

            result = _run(args, DEFAULT_SCENARIO, video=args.command == "demo")
            if args.command == "demo":
                verdict = _verdict(result)
            else:
                result = {k: result[k] for k in ("scenario", "ticks", "wall_s", "ticks_per_s", "tick_ms_median",
                                                 "cameras", "image_size", "backend", "lod_px", "stage_ms_median",
                                                 "scene", "enhancer")}
        elif args.command == "run":
            if args.scenario is None and args.prompt is None:
                raise ValueError("run needs a scenario (a name, a .py file or a module) or --prompt TEXT; "
                                 "neural-sensor run --help lists the scenarios")
            if args.scenario is not None and args.prompt is not None:
                raise ValueError("run takes a scenario (a name, a .py file or a module) or --prompt TEXT, not both")
            scenario, description = args.scenario, None
            if args.prompt is not None:
                from scenarios.base import drive_scenario

                layout, description = _layout_from_prompt(args.prompt, args.seed)
                scenario = drive_scenario(layout, "prompt", args.prompt)
            # a prompt's structured description goes into the record as prompt.json (in its manifest)
            result = _run(args, scenario, video=True, prompt_description=description)
            verdict = _verdict(result)
        elif args.command in ("build-scene", "record-drive", "reconstruct"):
            from scenarios.signals import terminate_as_exception

            # SIGTERM unwinds like Ctrl-C (temporary folders removed), and a Ctrl-C landing in a numba kernel's
            # load (a SystemError wrapping it, exit 1) still leaves as an interrupt (130)
            with terminate_as_exception():
                result = {"build-scene": _build_scene, "record-drive": _record_drive,
                          "reconstruct": _reconstruct}[args.command](args)
        elif args.command == "cache":
            result = _cache(args)
        elif args.command == "serve-enhancer":
            from neural_sensor.enhance.server import config_from_args, serve

            serve(config_from_args(args))
            return 0
        else:
            result = run_render_command(args)
    except (AgentError, ScenarioError) as err:  # the bug is in the user's agent or scenario: its traceback, then
        #                                      what the run was doing
        traceback.print_exception(err.__cause__, file=sys.stderr)
        print(f"{prog}: error: {err} (its traceback is above)", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except MemoryError as err:  # said before the work where it can be (`host.check_memory`), else when it hits
        said = f": {err}" if str(err) else ""
        smaller = {"reconstruct": "a smaller --size", "build-scene": "a shorter --length or a larger --voxel",
                   "record-drive": "smaller images (--width / --height) or a longer --step"}.get(
            args.command, "smaller images (--width / --height)" + (", or fewer cameras (the agent's sensors())"
                                                                   if args.command in ("run", "demo", "bench") else ""))
        print(f"{prog}: error: out of memory{said} (try {smaller})", file=sys.stderr)
        return 2
    print(json.dumps(result))
    enhancer = result.get("enhancer") if args.command in ("demo", "bench", "run") else None
    if enhancer and enhancer.get("ticks_raw"):
        print(f"{prog}: {_raw_ticks_line(enhancer, result['ticks'])}", file=sys.stderr)
    if args.command == "record-drive":  # a person's line beside the JSON on stdout
        print(f"{prog}: {result['frames']} frames, {result['views']} images; the drive log is in {result['log']}",
              file=sys.stderr)
    elif args.command == "reconstruct":
        how = "from the cache" if result.get("cached") else f"built in {result.get('wall_s')} s"
        print(f"{prog}: {result.get('n_gaussians')} Gaussians ({how}); the scene is cached in {result.get('path')}"
              + (f", its PLY copied to {result['ply']}" if result.get("ply") else ""), file=sys.stderr)
    if args.command not in ("demo", "bench", "run"):
        return 0
    line = (f"{prog}: scenario {result['scenario']} {verdict}; " if verdict is not None
            else f"{prog}: scenario {result['scenario']}, ")
    line += (f"{result['ticks']} ticks at {result['ticks_per_s']:.2f} ticks/s (median tick "
             f"{result['tick_ms_median']:.0f} ms); the record is in {args.out}")
    failed = verdict is not None and not result["passed"]
    if failed:
        line += " (exit 0: --allow-fail)" if args.allow_fail else " (exit 1; --allow-fail exits 0)"
    print(line, file=sys.stderr)
    return 1 if failed and not args.allow_fail else 0


def _raw_ticks_line(enhancer: dict, ticks: int) -> str:
    """What the ticks the enhancer did not refine were, and why (the summary's raw_reasons, most frequent first)."""
    reasons = enhancer.get("raw_reasons") or {}
    line = f"the enhancer did not refine {enhancer['ticks_raw']} of {ticks} ticks; those cameras got the raw render"
    if not reasons:
        return line
    reason, count = next(iter(reasons.items()))
    if reason.startswith("no reply from the enhancer"):
        hint = f"it missed its {enhancer['deadline_ms']:g} ms deadline: a busy host, or --enhancer-deadline-ms"
    elif "NotReady" in reason:
        hint = "the server was starting or restarting: its workers were loading the checkpoint"
    elif "not connected" in reason or reason.startswith("no connection"):
        restarts = enhancer.get("local_server_restarts")
        hint = ("the connection to the server was lost: is it still running?" if restarts is None else
                f"the run's local server exited and was restarted {restarts} time{'' if restarts == 1 else 's'}"
                if restarts else "the run's local server did not answer (stalled: a loaded host?)")
    else:
        hint = "log.jsonl has each tick's enhancer_reason"
    others = len(reasons) - 1
    more = f"; {others} other reason{'s' if others > 1 else ''} in log.jsonl" if others else ""
    return f"{line}; on {count} of them: {reason} ({hint}{more})"


def _verdict(result: dict) -> str:
    """'passed its criteria' or 'FAILED its criteria (route completion, ...)', and what was not judged and why."""
    if result["passed"]:
        text = "passed its criteria"
    else:
        failed = [name.replace("_", " ") for name, value in result["criteria"].items()
                  if isinstance(value, dict) and value["passed"] is False]
        text = f"FAILED its criteria ({', '.join(failed)})"
    for reason in result.get("criteria_not_judged") or []:  # "route completion: the run was cut to ..."
        text += f" ({reason.replace(': ', ' not judged: ', 1)})"
    return text


if __name__ == "__main__":
    sys.exit(main())
