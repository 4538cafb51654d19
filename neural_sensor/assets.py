"""Agent assets as Gaussians, and compose(): placing them in the scene each tick.

An asset lives in its agent's local box frame: FLU (x forward, y left, z up),
origin at the centre of the box's bottom face, metres. Assets are procedural
(boxes for body, cabin, wheels, limbs), coloured per seed, labelled with the
agent's CARLA class and carrying its instance id.

compose() copies nothing: it returns the background and each agent as an
(asset, pose) PlacedScene, parts which render() takes as a list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from neural_sensor.gaussians import GaussianScene, PlacedScene, rotmat_to_quat
from neural_sensor.labels import CityObjectLabel as L

AGENT_KINDS = {  # kind -> (semantic label, default box size (length, width, height) in m)
    "car": (L.CAR, (4.5, 1.9, 1.5)),
    "truck": (L.TRUCK, (8.0, 2.5, 3.4)),
    "pedestrian": (L.PEDESTRIAN, (0.5, 0.6, 1.75)),
    "cyclist": (L.RIDER, (1.8, 0.6, 1.75)),
}
GAUSSIANS_PER_M2 = 150.0  # surface density of asset Gaussians (about 8 cm apart)


@dataclass(frozen=True)
class _Part:
    """A coloured box: min corner and size in the asset frame (m), RGB, and a glass band above z_glass."""

    lo: tuple[float, float, float]
    size: tuple[float, float, float]
    rgb: tuple[float, float, float]
    z_glass: float = math.inf


def _parts(kind: str, size: tuple[float, float, float], rng: np.random.Generator) -> list[_Part]:
    length, width, height = size
    paint = tuple(float(v) for v in rng.uniform(0.08, 0.85, 3))
    dark = (0.06, 0.06, 0.07)
    if kind == "car":
        wheel = 0.34 * height
        body_h = 0.45 * height
        parts = [_Part((-length / 2, -width / 2, wheel * 0.6), (length, width, body_h), paint),
                 _Part((-0.3 * length, -0.45 * width, wheel * 0.6 + body_h), (0.58 * length, 0.9 * width,
                       height - wheel * 0.6 - body_h), paint, z_glass=wheel * 0.6 + body_h + 0.05)]
        for sx in (-0.32, 0.32):
            for sy in (-1, 1):
                parts.append(_Part((sx * length - wheel / 2, sy * (width / 2) - (0.22 if sy > 0 else 0), 0.0),
                                   (wheel, 0.22, wheel), dark))
        return parts
    if kind == "truck":
        cab = 0.25 * length
        wheel = 0.3 * height
        return [_Part((length / 2 - cab, -width / 2, wheel), (cab, width, height - wheel), paint, z_glass=0.6 * height),
                _Part((-length / 2, -width / 2, wheel), (length - cab - 0.2, width, height - wheel), (0.8, 0.8, 0.78)),
                _Part((-length / 2 + 0.3, -width / 2, 0.0), (length - 0.6, width, wheel), dark)]
    if kind == "pedestrian":
        clothes = paint
        legs = (0.15, 0.15, 0.25)
        skin = tuple(float(v) for v in rng.uniform(0.35, 0.8) * np.array([1.0, 0.8, 0.65]))
        leg_h, torso_h = 0.47 * height, 0.35 * height
        return [_Part((-0.1, -0.2, 0.0), (0.2, 0.15, leg_h), legs), _Part((-0.1, 0.05, 0.0), (0.2, 0.15, leg_h), legs),
                _Part((-0.12, -0.22, leg_h), (0.24, 0.44, torso_h), clothes),
                _Part((-0.1, -0.1, leg_h + torso_h), (0.2, 0.2, height - leg_h - torso_h), skin)]
    if kind == "cyclist":
        wheel = 0.7
        rider = _parts("pedestrian", (0.5, 0.5, height - 0.5), rng)  # seated 0.5 m up: the head tops the box
        shifted = [_Part((p.lo[0], p.lo[1], p.lo[2] + 0.5), p.size, p.rgb) for p in rider[2:]]
        return [_Part((-length / 2, -0.03, 0.0), (wheel, 0.06, wheel), (0.1, 0.1, 0.1)),
                _Part((length / 2 - wheel, -0.03, 0.0), (wheel, 0.06, wheel), (0.1, 0.1, 0.1)),
                _Part((-length / 2 + wheel / 2, -0.04, wheel / 2), (length - wheel, 0.08, 0.08), paint)] + shifted
    raise ValueError(f"unknown agent kind {kind!r}; choose from {sorted(AGENT_KINDS)}")


def _box_faces(part: _Part):
    """(origin, u axis, v axis, size_u, size_v, outward normal) of the 6 faces of a part."""
    lo, (sx, sy, sz) = np.array(part.lo), part.size
    ex, ey, ez = np.eye(3)
    return [
        (lo + [0, 0, sz], ex, ey, sx, sy, ez), (lo, ex, ey, sx, sy, -ez),
        (lo, ex, ez, sx, sz, -ey), (lo + [0, sy, 0], ex, ez, sx, sz, ey),
        (lo, ey, ez, sy, sz, -ex), (lo + [sx, 0, 0], ey, ez, sy, sz, ex),
    ]


def make_asset(kind: str, *, instance_id: int, size_m: tuple[float, float, float] | None = None,
               seed: int = 0, density_per_m2: float = GAUSSIANS_PER_M2) -> GaussianScene:
    """A procedural Gaussian asset in the agent's local box frame.

    Args:
        kind: car | truck | pedestrian | cyclist.
        instance_id: the agent's id, written to every Gaussian's `instance` (must be > 0).
        size_m: (length, width, height) of the agent's box; the kind's default if None.
        seed: colour seed.
        density_per_m2: Gaussians per square metre of surface.
    Returns:
        GaussianScene (SH degree 0), label = the kind's CARLA class.
    """
    if kind not in AGENT_KINDS:
        raise ValueError(f"unknown agent kind {kind!r}; choose from {sorted(AGENT_KINDS)}")
    if instance_id <= 0:
        raise ValueError(f"make_asset: instance_id must be > 0 (0 is the background), got {instance_id}")
    label, default_size = AGENT_KINDS[kind]
    size = tuple(float(v) for v in (size_m or default_size))
    if len(size) != 3 or not all(math.isfinite(v) and v > 0 for v in size):
        raise ValueError(f"make_asset: size_m must be 3 positive numbers, got {size_m}")
    rng = np.random.default_rng(seed)
    chunks = {"means": [], "quats": [], "scales": [], "colors": []}
    for part in _parts(kind, size, rng):
        for origin, u, v, su, sv, normal in _box_faces(part):
            count = max(4, int(round(su * sv * density_per_m2)))
            s, t = rng.uniform(0, su, count), rng.uniform(0, sv, count)
            points = origin + s[:, None] * u + t[:, None] * v
            spacing = math.sqrt(su * sv / count)
            scale = np.empty((count, 3))
            scale[:, :2] = np.clip(spacing * rng.uniform(0.7, 1.0, (count, 2)), 0.005, None)
            scale[:, 2] = 0.05 * spacing + 1e-3
            rot = np.stack([u, v, normal], axis=1)
            if np.linalg.det(rot) < 0:
                rot = np.stack([v, u, normal], axis=1)
                scale[:, [0, 1]] = scale[:, [1, 0]]
            color = np.tile(part.rgb, (count, 1)) + rng.normal(0, 0.02, (count, 1))
            glass = (points[:, 2] > part.z_glass) & (np.abs(normal[2]) < 0.5)
            color[glass] = [0.08, 0.1, 0.13]
            shade = 0.75 + 0.25 * max(normal[2], 0.0) + 0.1 * normal[0]
            chunks["means"].append(points)
            chunks["quats"].append(np.tile(rotmat_to_quat(rot), (count, 1)))
            chunks["scales"].append(scale)
            chunks["colors"].append(np.clip(color * shade, 0, 1))
    cat = {k: np.concatenate(v).astype(np.float32) for k, v in chunks.items()}
    n = len(cat["means"])
    return GaussianScene.from_colors(cat["means"], cat["quats"], cat["scales"], np.full(n, 0.95, np.float32),
                                     cat["colors"], np.full(n, int(label), np.uint8), np.full(n, instance_id, np.int32))


def compose(background: GaussianScene, agents: list[tuple[GaussianScene, np.ndarray]]) -> list:
    """The scene of one tick: the background and each agent asset placed at its pose.

    Nothing is copied: the background is passed through and each agent becomes a
    PlacedScene (asset + pose); the CPU renderer folds the pose into its view
    transform, other backends materialise it.

    Args:
        background: static scene (world frame).
        agents: (asset in its local box frame, pose_agent_to_world [4, 4]) per agent.
    Returns:
        [background, PlacedScene(agent 1), ...]: parts for render().
    """
    return [background] + [PlacedScene(asset, pose) for asset, pose in agents]
