"""Pictures of the textured builder: the same cameras before (builder version 2, "legacy") and after
("textured"), and one picture per time of day and weather. 480x270 tiles, PNG.

Writes benchmarks/results/appearance/{before-after.png, times-weather.png} and prints one JSON line with
the scenes' Gaussian counts.

    python benchmarks/appearance_pictures.py [--seed 0] [--x 60] [--out FOLDER]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from _machine import run_main
from neural_sensor.camera import Camera
from neural_sensor.render import render
from neural_sensor.rig import nuscenes_like_rig
from neural_sensor.scene.layout import Style, straight_road
from neural_sensor.scene.occupancy import build_occupancy
from neural_sensor.scene.to_gaussians import occupancy_to_gaussians, sky_rgb
from neural_sensor.world import pose_from_xyz_yaw

OUT = Path(__file__).parent / "results" / "appearance"
W, H = 480, 270


def _cameras(x_m: float, names=("CAM_FRONT", "CAM_FRONT_LEFT")):
    specs = {s.sensor_id: s for s in nuscenes_like_rig(W, H)}
    ego = pose_from_xyz_yaw(x_m, -1.75, 0.0, 0.0)  # the cut_in ego's lane
    return [Camera.from_fov(W, H, specs[n].fov_deg, ego @ specs[n].pose_camera_to_ego) for n in names]


def _label(tile: np.ndarray, text: str) -> Image.Image:
    img = Image.fromarray((np.clip(tile, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, 7 * len(text) + 8, 14), fill=(0, 0, 0))
    draw.text((4, 1), text, fill=(255, 255, 255))
    return img


def _grid(tiles: list[Image.Image], cols: int) -> Image.Image:
    """Tiles side by side, as a 256-colour PNG (a few hundred KB for the README)."""
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * W, rows * H))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % cols) * W, (i // cols) * H))
    return sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="layout seed (cut_in uses 0)")
    parser.add_argument("--x", type=float, default=60.0, help="ego position along the road, m (5-195)")
    parser.add_argument("--out", type=Path, default=OUT,
                        help="folder of the two pictures (default benchmarks/results/appearance, the README's)")
    args = parser.parse_args()
    if not 5.0 <= args.x <= 195.0:
        parser.error(f"--x must be within the 200 m road, 5-195 m, got {args.x}")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    layout = straight_road(200.0, style=Style(time_of_day="noon", seed=args.seed))
    occupancy = build_occupancy(layout, voxel_m=0.3)
    cams = _cameras(args.x)
    tiles = []
    for appearance in ("legacy", "textured"):
        scene = occupancy_to_gaussians(occupancy, layout, appearance=appearance, sky=appearance == "textured")
        counts[appearance] = len(scene)
        rgb = render(scene, cams, backend="cpu", outputs=("rgb",), background=sky_rgb(layout.style)).rgb
        tiles += [_label(rgb[i], f"{appearance}: {name}") for i, name in enumerate(("CAM_FRONT", "CAM_FRONT_LEFT"))]
    _grid(tiles, 2).save(out / "before-after.png", optimize=True)
    tiles = []
    for tod, palette in (("morning", "clear"), ("noon", "clear"), ("evening", "clear"), ("dusk", "clear"),
                         ("noon", "overcast"), ("noon", "wet")):
        lay = straight_road(200.0, style=Style(time_of_day=tod, palette=palette, seed=args.seed))
        scene = occupancy_to_gaussians(build_occupancy(lay, voxel_m=0.3), lay, sky=True)
        counts[f"{tod}-{palette}"] = len(scene)
        rgb = render(scene, _cameras(args.x, ("CAM_FRONT",)), backend="cpu", outputs=("rgb",),
                     background=sky_rgb(lay.style)).rgb
        tiles.append(_label(rgb[0], f"{tod}, {palette}"))
    _grid(tiles, 3).save(out / "times-weather.png", optimize=True)
    print(json.dumps({"pictures": [str(out / "before-after.png"), str(out / "times-weather.png")],
                      "gaussians": counts}))


if __name__ == "__main__":
    run_main(main)
