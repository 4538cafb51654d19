"""Synthetic worlds with exact ground truth at any pose, for training and evaluating reconstruction.

A world is a random layout (template, length, objects, style; all from the seed) built
into a Gaussian scene by the scene-from-layout builder. Along a recorded path (the
centre of a lane) a 6-camera nuScenes-like rig takes context views at a few timesteps;
target views are taken (a) between context timesteps (interpolated) and (b) off the
recorded path: the ego shifted 1, 2 and 3 m to the left and raised by 1 m. Ground truth
for every view is the builder's scene rendered at that pose: rgb, depth, alpha, semantic.

Seeds 0..9999 are for training; seeds from 1_000_000 up are held out for evaluation.
`make_world` refuses a seed outside the split it is asked for, so held-out worlds can
never enter training by accident.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from neural_sensor.camera import Camera
from neural_sensor.render import render
from neural_sensor.rig import nuscenes_like_rig
from neural_sensor.scene.layout import Layout, Style, curve, intersection, straight_road
from neural_sensor.scene.occupancy import build_occupancy
from neural_sensor.scene.path import Path
from neural_sensor.scene.to_gaussians import occupancy_to_gaussians, sky_rgb
from neural_sensor.world import pose_from_xyz_yaw

TRAIN_SEEDS = range(0, 10_000)
HELDOUT_FIRST_SEED = 1_000_000
SHIFTS_M = (1.0, 2.0, 3.0)
RAISE_M = 1.0
TARGET_KINDS = ("interpolated", "shift_1m", "shift_2m", "shift_3m", "raised_1m")


def check_split(seed: int, split: str) -> None:
    """Raise ValueError if `seed` does not belong to `split` ("train" or "heldout")."""
    if split == "train":
        if seed not in TRAIN_SEEDS:
            raise ValueError(f"seed {seed} is not a training seed (training seeds are 0..{TRAIN_SEEDS.stop - 1})")
    elif split == "heldout":
        if seed < HELDOUT_FIRST_SEED:
            raise ValueError(f"seed {seed} is not a held-out seed (held-out seeds start at {HELDOUT_FIRST_SEED})")
    else:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")


@dataclass
class WorldConfig:
    """How views are taken in a synthetic world."""

    width: int = 160  # image width, pixels
    height: int = 96  # image height, pixels
    timesteps: int = 4  # context timesteps along the recorded path
    step_m: float = 4.0  # metres between context timesteps
    voxel_m: float = 0.4  # scene builder voxel size
    target_cameras: tuple[str, ...] = ("CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT")  # rig cameras for targets
    # scene appearance: "legacy" (builder version 2's voxel faces, which trained the shipped checkpoints; kept
    # until the reconstructor and enhancer are retrained) or "textured" (photographs, shadows, sky dome)
    appearance: str = "legacy"


@dataclass
class Views:
    """Rendered views: cameras and ground-truth images, V of them."""

    cameras: list[Camera]
    rgb: np.ndarray  # [V, H, W, 3] float32
    depth: np.ndarray  # [V, H, W] float32, metres: the median depth (the surface; the builder's expected depth looks
    #                    through the gaps between a textured surface's Gaussians)
    alpha: np.ndarray  # [V, H, W] float32
    semantic: np.ndarray  # [V, H, W] uint8
    timestep: np.ndarray  # [V] context timestep (fractional for interpolated targets)


@dataclass
class SyntheticWorld:
    seed: int
    layout: Layout
    scene: object  # GaussianScene
    background_rgb: tuple[float, float, float]
    context: Views
    targets: dict[str, Views] = field(default_factory=dict)


def world_layout(seed: int) -> Layout:
    """The random layout of a world: template, size, style and objects all follow from the seed."""
    rng = np.random.default_rng(seed)
    style = Style(time_of_day=str(rng.choice(["morning", "noon", "evening"])),
                  palette=str(rng.choice(["clear", "overcast", "wet"], p=[0.6, 0.25, 0.15])), seed=seed)
    kind = rng.choice(["straight", "curve", "intersection"], p=[0.5, 0.3, 0.2])
    if kind == "straight":
        return straight_road(float(rng.uniform(60, 120)), lanes_per_direction=int(rng.integers(1, 3)), style=style)
    if kind == "curve":
        return curve(float(rng.uniform(40, 90)), float(rng.uniform(40, 80)), lanes_per_direction=int(rng.integers(1, 3)),
                     style=style)
    return intersection(float(rng.uniform(35, 55)), style=style)


def recorded_lane_xy_m(layout: Layout) -> np.ndarray:
    """[P, 2] world metres: the lane a synthetic world's drive is recorded along, its first lane in the travel
    direction, in travel order (make_world, the run-regime trainings and benchmarks/runtime_fidelity.py)."""
    return next(lane for lane in layout.lanes if lane.direction == 1).travel_polyline()


def _render(scene, cameras, background) -> dict:
    return render(scene, cameras, backend="cpu", outputs=("rgb", "median_depth", "alpha", "semantic"),
                  background=background)


def make_world(seed: int, split: str, config: WorldConfig | None = None) -> SyntheticWorld:
    """Build world `seed` of `split` and render its context and target views (deterministic per seed)."""
    check_split(seed, split)
    config = config or WorldConfig()
    layout = world_layout(seed)
    scene = occupancy_to_gaussians(build_occupancy(layout, voxel_m=config.voxel_m), layout,
                                   appearance=config.appearance, sky=config.appearance == "textured")
    background = sky_rgb(layout.style)
    rng = np.random.default_rng(seed + 17)
    path = Path(recorded_lane_xy_m(layout))
    span = (config.timesteps - 1) * config.step_m
    start = float(rng.uniform(2.0, max(2.5, path.length_m - span - 8.0)))
    specs = nuscenes_like_rig(config.width, config.height)  # the rig the demo drives with

    def ego_pose(t: float, left_m: float = 0.0, up_m: float = 0.0) -> np.ndarray:
        xy, heading = path.at(start + t * config.step_m)
        xy = xy + left_m * np.array([-math.sin(heading), math.cos(heading)])
        return pose_from_xyz_yaw(xy[0], xy[1], up_m, heading)

    def views(times, left_m=0.0, up_m=0.0, names=None) -> Views:
        cams, stamps = [], []
        for t in times:
            pose = ego_pose(t, left_m, up_m)
            for spec in specs:
                if names is None or spec.sensor_id in names:
                    cams.append(Camera.from_fov(spec.width, spec.height, spec.fov_deg, pose @ spec.pose_camera_to_ego))
                    stamps.append(t)
        out = _render(scene, cams, background)
        return Views(cams, out.rgb, out.median_depth, out.alpha, out.semantic, np.asarray(stamps, np.float32))

    context = views(range(config.timesteps))
    mids = [t + 0.5 for t in range(config.timesteps - 1)]
    targets = {"interpolated": views(mids, names=config.target_cameras)}
    anchor = [config.timesteps // 2]
    for shift in SHIFTS_M:
        targets[f"shift_{int(shift)}m"] = views(anchor, left_m=shift, names=config.target_cameras)
    targets["raised_1m"] = views(anchor, up_m=RAISE_M, names=config.target_cameras)
    return SyntheticWorld(seed, layout, scene, background, context, targets)
