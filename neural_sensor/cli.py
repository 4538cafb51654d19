"""The rendering subcommands of `neural-sensor` (the whole CLI is scenarios.cli):

    neural-sensor render scene.ply --pose 0 0 1.6 0 5 0 -o view.png     (x y z roll pitch yaw)
    neural-sensor render scene.ply --eye 0 0 1.6 --target 10 0 1.5 -o view.png
    neural-sensor street --gaussians 300000 --cameras 6 --out street.png

Each writes a contact sheet: RGB on top, depth and semantic below.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neural_sensor.camera import MAX_SIDE_PX, Camera
from neural_sensor.gaussians import GaussianScene
from neural_sensor.host import check_writable_parent
from neural_sensor.labels import CityObjectLabel
from neural_sensor.render import BACKENDS, SKY_RGB, RenderOutput, render
from neural_sensor.testing import MIN_STREET_GAUSSIANS

STREET_MAX_GAUSSIANS = 10_000_000  # 20 M at SH degree 3 peaked at 15.9 GB; 100 M was killed for memory (24 GB)


@dataclass
class ViewOptions:
    """Image and rendering options shared by the subcommands."""

    width: int = 640  # image width, pixels
    height: int = 360  # image height, pixels
    fov_deg: float = 90.0  # horizontal field of view, degrees (CARLA convention)
    backend: str = "auto"  # auto | gsplat | cpu | torch
    background: tuple[float, float, float] = SKY_RGB  # RGB in [0, 1] behind everything (sky)
    out: Path = field(default_factory=lambda: Path("render.png"))  # PNG contact sheet to write


def int_at_least(text: str, minimum: int, must_be: str) -> int:
    """An argparse type's integer >= minimum, else argparse's one-line error for the option ("must be
    {must_be}, got ..."), not a traceback from deeper in."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {must_be}, got {value}")
    return value


def seed_int(text: str) -> int:
    """argparse type for --seed: an integer >= 0 (numpy's generators take no negative seed)."""
    return int_at_least(text, 0, "an integer >= 0")


def _add_view_options(parser: argparse.ArgumentParser) -> None:
    defaults = ViewOptions()
    parser.add_argument("--width", type=int, default=defaults.width, help="image width in pixels")
    parser.add_argument("--height", type=int, default=defaults.height, help="image height in pixels")
    parser.add_argument("--fov", dest="fov_deg", type=float, default=defaults.fov_deg, help="horizontal fov, degrees")
    parser.add_argument("--backend", choices=BACKENDS, default=defaults.backend, help="render backend")
    parser.add_argument("--background", type=float, nargs=3, default=defaults.background,
                        help="RGB in [0, 1] behind every Gaussian (a built or reconstructed scene's PLY holds its "
                             "own sky dome, which covers it)")
    parser.add_argument("-o", "--out", type=Path, default=defaults.out,
                        help="PNG contact sheet to write: each camera's RGB on top; below it its depth (near bright) "
                             "on the left half and its semantic labels on the right")


def _palette(labels: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] colours for label ids (fixed pseudo-random palette, 0 = black)."""
    rng = np.random.default_rng(12345)
    table = rng.integers(40, 256, (256, 3)).astype(np.uint8)
    table[0] = 0
    return table[labels]


def contact_sheet(images: RenderOutput) -> np.ndarray:
    """[2 H, C W, 3] uint8: RGB per camera on top; depth (inverse depth: the nearest surfaces white, half as bright
    twice as far, sky black) and semantic halves below."""
    rgb = np.clip(images.rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    top = np.concatenate(list(rgb), axis=1)
    depth = images.depth
    # surfaces: drawn and not sky (a fitted sky dome ~1 km away is drawn too, and would make every surface white)
    solid = (images.alpha > 0.5) & (images.semantic != CityObjectLabel.SKY)
    # inverse depth (disparity) against the nearest surfaces' (their 2nd percentile): white near, halving at twice
    # the distance, so a street's metres-to-a-hundred-metres all show
    near = np.percentile(depth[solid], 2) if solid.any() else 1.0
    depth_u8 = (np.clip(max(near, 1e-6) / np.maximum(depth, 1e-6), 0, 1) * 255 * solid).astype(np.uint8)
    bottom = []
    for cam in range(rgb.shape[0]):
        half = rgb.shape[2] // 2
        d = np.repeat(depth_u8[cam][..., None], 3, axis=2)
        s = _palette(images.semantic[cam])
        bottom.append(np.concatenate([d[:, :half], s[:, half:]], axis=1))
    return np.concatenate([top, np.concatenate(bottom, axis=1)], axis=0)


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _render_and_save(scene: GaussianScene, cameras: list[Camera], opts: ViewOptions) -> dict:
    start = time.perf_counter()
    images = render(scene, cameras, backend=opts.backend, outputs=("rgb", "depth", "alpha", "semantic"),
                    background=opts.background)
    elapsed_ms = (time.perf_counter() - start) * 1000.0
    _write_png(opts.out, contact_sheet(images))
    return {"out": str(opts.out), "gaussians": len(scene), "cameras": len(cameras), "backend": images.backend,
            "size": [opts.width, opts.height], "render_ms_first_call": round(elapsed_ms, 1)}




MAX_COORDINATE_M = 1e7  # --pose / --eye / --target beyond this overflowed the renderer's float32 (a blank image)


def check_view_options(opts: ViewOptions) -> None:
    """ValueError naming the option for sizes, fov, background or an output that is not a .png file."""
    for name, value in (("width", opts.width), ("height", opts.height)):
        if not 1 <= value <= MAX_SIDE_PX:
            raise ValueError(f"--{name} must be in 1..{MAX_SIDE_PX} pixels, got {value}")
    if not 0.0 < opts.fov_deg < 180.0:
        raise ValueError(f"--fov must be in (0, 180) degrees, got {opts.fov_deg}")
    if not all(math.isfinite(c) and 0.0 <= c <= 1.0 for c in opts.background):
        raise ValueError(f"--background must be three numbers in [0, 1], got {list(opts.background)}")
    if opts.out.suffix.lower() != ".png" or opts.out.name.lower() == ".png":
        raise ValueError(f"-o/--out must name a .png file (e.g. view.png), got {opts.out}")
    if opts.out.is_dir():
        raise ValueError(f"-o/--out {opts.out} is a folder; give a .png file name")
    check_writable_parent("-o/--out", opts.out)  # before the render (it can take a minute), not after it


def add_render_commands(sub, formatter_class=argparse.HelpFormatter) -> None:
    """The `render` and `street` subcommands (the full CLI lives in scenarios.cli)."""
    p_render = sub.add_parser("render", help="render a 3DGS PLY from one camera", formatter_class=formatter_class)
    p_render.add_argument("ply", type=Path, help="INRIA-layout 3DGS PLY (gsplat, nerfstudio, INRIA trainer)")
    where = p_render.add_mutually_exclusive_group(required=True)
    where.add_argument("--pose", type=float, nargs=6, metavar=("X", "Y", "Z", "ROLL", "PITCH", "YAW"),
                       help="camera pose: position in world FLU metres, then roll / pitch / yaw in degrees about "
                            "the FLU axes (yaw left, pitch nose down); the camera looks along its x axis")
    where.add_argument("--eye", type=float, nargs=3, help="camera position, world FLU metres (with --target)")
    p_render.add_argument("--target", type=float, nargs=3, help="point looked at, world FLU metres (with --eye)")
    p_render.add_argument("--up", type=float, nargs=3, default=None,
                          help="world up direction, with --eye / --target (default 0 0 1; --pose gives the roll)")
    _add_view_options(p_render)

    p_street = sub.add_parser("street", help="render the street benchmark scene from a 1-6 camera rig",
                              formatter_class=formatter_class)
    p_street.add_argument("--gaussians", type=int, default=300_000,
                          help=f"Gaussian count ({MIN_STREET_GAUSSIANS:,}-{STREET_MAX_GAUSSIANS:,})")
    p_street.add_argument("--cameras", type=int, default=6, help="rig cameras (1-6)")
    p_street.add_argument("--seed", type=seed_int, default=0, help="scene seed")
    p_street.add_argument("--sh-degree", type=int, default=1, help="SH degree 0-3")
    _add_view_options(p_street)


def run_render_command(args: argparse.Namespace) -> dict:
    """Execute `render` or `street`; returns the JSON summary. Raises ValueError / RuntimeError on bad input."""
    opts = ViewOptions(args.width, args.height, args.fov_deg, args.backend, tuple(args.background), args.out)
    check_view_options(opts)
    if args.command == "render":
        if args.pose is not None and args.target is not None:
            raise ValueError("render: --target goes with --eye; --pose already gives the viewing direction")
        if args.eye is not None and args.target is None:
            raise ValueError("render: --eye needs --target")
        if args.pose is not None and args.up is not None:  # (it was taken and dropped without a word)
            raise ValueError("render: --up goes with --eye / --target; with --pose the roll angle sets the up")
        args.up = (0.0, 0.0, 1.0) if args.up is None else args.up
        for name in ("pose", "eye", "target", "up"):
            values = getattr(args, name)
            if values is not None and not all(math.isfinite(v) for v in values):
                raise ValueError(f"render: --{name} must be finite numbers, got {' '.join(map(str, values))}")
            if values is not None and name != "up" and not all(abs(v) <= MAX_COORDINATE_M for v in values):
                raise ValueError(f"render: --{name} must be within {MAX_COORDINATE_M:g} (metres, degrees) of zero, "
                                 f"got {' '.join(map(str, values))}")
        if not any(args.up):
            raise ValueError("render: --up must not be the zero vector")
        scene = GaussianScene.load_ply(args.ply)
        if args.pose is not None:
            from neural_sensor.rig import SensorSpec

            x, y, z, roll, pitch, yaw = args.pose
            spec = SensorSpec.mounted("cli", opts.width, opts.height, opts.fov_deg, (x, y, z),
                                      *(math.radians(math.remainder(a, 360.0)) for a in (roll, pitch, yaw)))
            cameras = [Camera.from_fov(opts.width, opts.height, opts.fov_deg, spec.pose_camera_to_ego)]
        else:
            cameras = [Camera.look_at(opts.width, opts.height, opts.fov_deg, args.eye, args.target, args.up)]
    else:
        from neural_sensor.testing import make_street_scene, street_cameras

        if not 1 <= args.cameras <= 6:
            raise ValueError(f"--cameras must be in 1..6, got {args.cameras}")
        if not 0 <= args.sh_degree <= 3:
            raise ValueError(f"--sh-degree must be 0, 1, 2 or 3, got {args.sh_degree}")
        if not MIN_STREET_GAUSSIANS <= args.gaussians <= STREET_MAX_GAUSSIANS:
            raise ValueError(f"--gaussians must be in {MIN_STREET_GAUSSIANS:,}..{STREET_MAX_GAUSSIANS:,} (the "
                             f"street's layout needs the least; the most keeps its arrays and the renderer's within a "
                             f"few GB), got {args.gaussians:,}")
        scene = make_street_scene(args.gaussians, seed=args.seed, sh_degree=args.sh_degree)
        cameras = street_cameras(opts.width, opts.height, count=args.cameras, fov_deg=opts.fov_deg)
    return _render_and_save(scene, cameras, opts)


if __name__ == "__main__":  # `python -m neural_sensor.cli` is the whole command line, as `neural-sensor` is
    from scenarios.cli import main

    raise SystemExit(main())
