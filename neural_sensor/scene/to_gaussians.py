"""Occupancy -> GaussianScene, in one of two appearances.

- "textured" (the default, builder version 3): `neural_sensor.scene.surfaces` puts photograph-textured
  Gaussians on the continuous surfaces the occupancy bounds, with cast shadows, ambient occlusion and
  (optionally) a sky dome. See that module.
- "legacy": the appearance of builder version 2, which trained the shipped checkpoints, kept bit for bit
  (the synthetic training worlds use it until the models are retrained); described below.

Legacy: one flat Gaussian on every exposed voxel face, procedurally coloured. Each face that borders empty space (the underside of voxels excepted) gets a
Gaussian at the face centre, flattened along the face normal, wide enough that
neighbours overlap into a continuous surface. Colour is a per-class procedural
albedo (asphalt grain, lane markings, paving, facades with windows, foliage,
metal, paint) lit by a sun whose direction and tint follow the layout's style;
the sky is the render background (`sky_rgb`). Labels are the voxel labels;
static objects carry instance ids STATIC_INSTANCE_BASE + object index, the
rest of the background 0.
"""

from __future__ import annotations

import math

import numpy as np

from neural_sensor.gaussians import GaussianScene, rotmat_to_quat
from neural_sensor.labels import CityObjectLabel as L
from neural_sensor.scene.layout import Layout, Style
from neural_sensor.scene.occupancy import Occupancy

APPEARANCES = ("textured", "legacy")

STATIC_INSTANCE_BASE = 100_000  # instance id of static object k is this + k (agents use small ids)
STREET_EYE_HEIGHT_M = 3.0  # faces are kept if a viewer up to this height on a lane could see their front side
FACE_SIGMA = 0.55  # tangent standard deviation of a face Gaussian, in voxels
FACE_THICKNESS = 0.03  # normal standard deviation, in voxels
FACE_OPACITY = 0.97

_DIRECTIONS = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1))  # no downward faces


def _hash01(*ints: np.ndarray, seed: int = 0) -> np.ndarray:
    """Deterministic uniform [0, 1) noise from integer coordinates (a 64-bit multiply-xorshift hash)."""
    h = np.full(np.broadcast(*ints).shape, np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64), np.uint64)
    for value in ints:
        h ^= np.asarray(value).astype(np.int64).astype(np.uint64) + np.uint64(0x632BE59BD9B4E019)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)


def sun_direction(style: Style) -> np.ndarray:
    """Unit vector towards the sun (world FLU) for the style's time of day."""
    elevation, azimuth = {"morning": (20.0, 60.0), "noon": (65.0, 160.0), "evening": (12.0, 290.0),
                          "dusk": (3.0, 285.0)}[style.time_of_day]
    el, az = math.radians(elevation), math.radians(azimuth)
    return np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])


def sky_rgb(style: Style) -> tuple[float, float, float]:
    """Background colour for the style (the sky is not made of Gaussians)."""
    if style.palette == "overcast":
        return (0.72, 0.74, 0.77)
    return {"morning": (0.62, 0.74, 0.9), "noon": (0.53, 0.71, 0.92), "evening": (0.86, 0.62, 0.45),
            "dusk": (0.45, 0.35, 0.42)}[style.time_of_day]


def _albedo(label: np.ndarray, pos: np.ndarray, normal: np.ndarray, obj: np.ndarray, layout: Layout) -> np.ndarray:
    """[M, 3] base colour per face from its class, world position (m), normal and object id."""
    seed = layout.style.seed
    m = len(label)
    cell = np.floor(pos / 0.1).astype(np.int64)
    grain = _hash01(cell[:, 0], cell[:, 1], cell[:, 2], seed=seed)[:, None] - 0.5
    out = np.full((m, 3), 0.5)
    road = label == L.ROADS
    out[road] = 0.26 + 0.06 * grain[road]
    out[label == L.ROAD_LINE] = 0.86
    side = label == L.SIDEWALKS
    tiles = ((np.floor(pos[:, 0] / 0.6) + np.floor(pos[:, 1] / 0.6)) % 2)[:, None]
    out[side] = (0.56 + 0.05 * tiles + 0.05 * grain)[side]
    terrain = label == L.TERRAIN
    out[terrain] = (np.array([0.33, 0.42, 0.2]) + 0.1 * grain)[terrain]
    # per-object colours
    obj_rand = _hash01(obj, seed=seed + 1)[:, None]
    obj_rand2 = _hash01(obj, seed=seed + 2)[:, None]
    building = label == L.BUILDING
    wall = 0.45 + 0.35 * np.concatenate([obj_rand, obj_rand2, 1 - obj_rand], axis=1)
    out[building] = (wall + 0.04 * grain)[building]
    vertical = np.abs(normal[:, 2]) < 0.5
    u = np.where(np.abs(normal[:, 0]) > 0.5, pos[:, 1], pos[:, 0])
    z = pos[:, 2]
    window = building & vertical & ((u % 3.0) > 0.9) & ((u % 3.0) < 2.1) & ((z % 3.2) > 1.0) & ((z % 3.2) < 2.4)
    window &= z > 2.5
    lit = _hash01(np.floor(u / 3.0).astype(np.int64), np.floor(z / 3.2).astype(np.int64), obj, seed=seed) < 0.15
    glass = np.where(lit[:, None], [0.85, 0.78, 0.5], [0.16, 0.2, 0.27])
    out[window] = glass[window]
    foliage = label == L.VEGETATION
    trunk = foliage & vertical & (pos[:, 2] < 2.0)
    out[foliage] = (np.array([0.2, 0.4, 0.15]) + 0.15 * grain)[foliage]
    out[trunk] = [0.35, 0.25, 0.15]
    out[label == L.POLE] = 0.45
    out[label == L.TRAFFIC_SIGN] = np.where(obj_rand > 0.5, [0.75, 0.1, 0.1], [0.1, 0.25, 0.7])[label == L.TRAFFIC_SIGN]
    car = label == L.CAR
    paint = np.concatenate([obj_rand2, _hash01(obj, seed=seed + 3)[:, None], obj_rand], axis=1) * 0.8 + 0.05
    out[car] = paint[car]
    out[car & (pos[:, 2] > 1.0) & vertical] = [0.1, 0.12, 0.15]  # windows
    out[label == L.GUARD_RAIL] = 0.7
    if layout.style.palette == "wet":
        out[road | side] *= 0.7
    return np.clip(out, 0.0, 1.0)


def _shade(albedo: np.ndarray, normal: np.ndarray, style: Style) -> np.ndarray:
    sun = sun_direction(style)
    tint = {"morning": (1.0, 0.95, 0.85), "noon": (1.0, 1.0, 1.0), "evening": (1.0, 0.8, 0.6),
            "dusk": (0.8, 0.6, 0.5)}[style.time_of_day]
    ambient, diffuse = (0.75, 0.25) if style.palette == "overcast" else (0.5, 0.6)
    lambert = np.clip(normal @ sun, 0.0, None)[:, None]
    return np.clip(albedo * (ambient + diffuse * lambert * np.array(tint)), 0.0, 1.0)


def _street_visible(means: np.ndarray, normals: np.ndarray, labels: np.ndarray, layout: Layout) -> np.ndarray:
    """Faces a street-level viewer can see: a face is kept if some lane centre point, raised to eye
    height, lies on its front side (n . (eye - x) > 0). Roofs above eye height and the backs of
    buildings go; the back side of a face is never visible, so the image from the street is the same.
    """
    samples = []
    for lane in layout.lanes:
        seg = np.diff(lane.centre_m, axis=0)
        for a, d in zip(lane.centre_m[:-1], seg):
            steps = max(1, int(np.linalg.norm(d) // 4.0))
            samples.append(a + np.linspace(0, 1, steps, endpoint=False)[:, None] * d)
    samples.append(layout.lanes[-1].centre_m[-1:])
    eyes = np.concatenate(samples)
    eyes = np.concatenate([eyes, np.full((len(eyes), 1), STREET_EYE_HEIGHT_M)], axis=1)
    keep = np.ones(len(means), bool)
    for lo in range(0, len(means), 20000):
        x, n = means[lo:lo + 20000], normals[lo:lo + 20000]
        # n . (eye - x) = n . eye - n . x, for all eyes at once
        front = (n @ eyes.T) - np.einsum("md,md->m", n, x)[:, None] > 0
        keep[lo:lo + 20000] &= front.any(axis=1)
    return keep


def occupancy_to_gaussians(occupancy: Occupancy, layout: Layout, *, appearance: str = "textured",
                           sky: bool = False, progress: bool = False) -> GaussianScene:
    """The appearance Gaussians of an occupancy grid.

    Args:
        occupancy: labels [X, Y, Z] and object ids from `build_occupancy`.
        layout: the layout it came from (style and seed for appearance).
        appearance: "textured" (photographs on surfaces, shadows) or "legacy" (builder version 2's voxel faces).
        sky: textured only: add the sky dome (label SKY).
        progress: textured only: a progress bar over the building phases.
    Returns:
        GaussianScene (SH degree 0) with labels and instance ids set.
    """
    if appearance not in APPEARANCES:
        raise ValueError(f"appearance must be one of {APPEARANCES}, got {appearance!r}")
    if appearance == "textured":
        from neural_sensor.scene.surfaces import surface_gaussians

        return surface_gaussians(occupancy, layout, sky=sky, progress=progress)
    if sky:
        raise ValueError("occupancy_to_gaussians: the legacy appearance has no sky dome (sky=True)")
    return _legacy_gaussians(occupancy, layout)


def _legacy_gaussians(occupancy: Occupancy, layout: Layout) -> GaussianScene:
    """Builder version 2: one flat Gaussian on every exposed voxel face (see the module docstring)."""
    labels = occupancy.labels
    solid = labels > 0
    voxel = occupancy.voxel_m
    parts = {"means": [], "normals": [], "labels": [], "objects": []}
    for direction in _DIRECTIONS:
        axis = int(np.flatnonzero(direction)[0])
        step = direction[axis]
        neighbour = np.zeros_like(solid) if axis == 2 else np.ones_like(solid)  # grid sides count as solid
        src = [slice(None)] * 3
        dst = [slice(None)] * 3
        if step > 0:
            src[axis], dst[axis] = slice(1, None), slice(None, -1)
        else:
            src[axis], dst[axis] = slice(None, -1), slice(1, None)
        neighbour[tuple(dst)] = solid[tuple(src)]
        exposed = solid & ~neighbour
        index = np.argwhere(exposed)
        normal = np.zeros(3)
        normal[axis] = step
        centres = occupancy.centres_m(index) + 0.5 * voxel * normal
        parts["means"].append(centres)
        parts["normals"].append(np.broadcast_to(normal, centres.shape))
        parts["labels"].append(labels[exposed])
        parts["objects"].append(occupancy.object_ids[exposed])
    means = np.concatenate(parts["means"])
    normals = np.concatenate(parts["normals"])
    face_labels = np.concatenate(parts["labels"])
    objects = np.concatenate(parts["objects"])
    keep = _street_visible(means, normals, face_labels, layout)
    coarse = keep & (face_labels == L.TERRAIN)  # terrain is seen only in gaps: one face in four, twice as wide
    index = np.floor((means - occupancy.origin_m) / voxel).astype(np.int64)
    keep &= ~coarse | ((index[:, 0] % 2 == 0) & (index[:, 1] % 2 == 0))
    widen = np.where(coarse[keep], 2.0, 1.0)
    means, normals, face_labels, objects = means[keep], normals[keep], face_labels[keep], objects[keep]
    colors = _shade(_albedo(face_labels, means, normals, objects, layout), normals, layout.style)
    quats = np.zeros((len(means), 4))
    for direction in _DIRECTIONS:
        normal = np.asarray(direction, float)
        tangent = np.array([0.0, 0.0, 1.0]) if abs(normal[2]) < 0.5 else np.array([1.0, 0.0, 0.0])
        bitangent = np.cross(normal, tangent)
        rot = np.stack([tangent, bitangent, normal], axis=1)  # local z -> face normal
        quats[np.all(normals == normal, axis=1)] = rotmat_to_quat(rot)
    n = len(means)
    scales = np.empty((n, 3))
    scales[:, :2] = FACE_SIGMA * voxel * widen[:, None]
    scales[:, 2] = FACE_THICKNESS * voxel
    instance = np.where(objects >= 0, STATIC_INSTANCE_BASE + objects, 0)
    return GaussianScene.from_colors(
        means.astype(np.float32),
        quats.astype(np.float32),
        scales.astype(np.float32),
        np.full(n, FACE_OPACITY, np.float32),
        colors.astype(np.float32),
        face_labels.astype(np.uint8),
        instance.astype(np.int32),
    )
