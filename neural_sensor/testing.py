"""Street-like Gaussian scenes and camera rigs for tests and benchmarks.

A fixture, not the scene builder: a straight two-way street (asphalt with lane
markings, raised sidewalks with kerbs, building facades with windows, parked
and driving cars), covered by flat surface Gaussians. The Gaussian count is
exact and configurable (10k to 1M+), the content is seeded, and the density
scales with the count so every size looks like the same street.
"""

from __future__ import annotations

import math

import numpy as np

from neural_sensor.camera import Camera
from neural_sensor.gaussians import GaussianScene, rotmat_to_quat
from neural_sensor.labels import CityObjectLabel as L
from neural_sensor.sh import SH_C0, num_sh_bases

STREET_X_RANGE_M = (-60.0, 140.0)  # street extent along x (forward)
ROAD_HALF_WIDTH_M = 7.0  # two lanes each way, 3.5 m each
SIDEWALK_WIDTH_M = 3.0
KERB_HEIGHT_M = 0.15
EGO_START_WORLD = np.array([0.0, -1.75, 0.0])  # centre of the right-hand lane

# share of the Gaussians each part gets
_SHARES = {"road": 0.38, "sidewalk": 0.12, "kerb": 0.03, "facade": 0.35, "cars": 0.12}


def _rect_samples(rng, n, origin, axis_u, axis_v, size_u, size_v):
    """n points uniformly on the rectangle origin + [0,size_u]*u + [0,size_v]*v; returns points, (s, t) in metres."""
    s = rng.uniform(0, size_u, n)
    t = rng.uniform(0, size_v, n)
    return origin + s[:, None] * axis_u + t[:, None] * axis_v, s, t


def _frame_quat(axis_u, axis_v):
    """Unit quaternion (w, x, y, z) of the rotation whose columns are u, v, u x v."""
    rot = np.stack([axis_u, axis_v, np.cross(axis_u, axis_v)], axis=1)
    return rotmat_to_quat(rot)


def _surface(rng, n, origin, axis_u, axis_v, size_u, size_v, color_fn, label, instance=0):
    """n flat Gaussians tiling a rectangle; color_fn(s, t) -> [n, 3] RGB."""
    points, s, t = _rect_samples(rng, n, origin, axis_u, axis_v, size_u, size_v)
    spacing = math.sqrt(size_u * size_v / max(n, 1))
    scales = np.empty((n, 3))
    scales[:, 0] = spacing * rng.uniform(0.7, 1.1, n)
    scales[:, 1] = spacing * rng.uniform(0.7, 1.1, n)
    scales[:, 2] = spacing * 0.05 + 1e-3
    quat = _frame_quat(np.asarray(axis_u, float), np.asarray(axis_v, float))
    return {
        "means": points,
        "quats": np.repeat(quat[None], n, axis=0),
        "scales": scales,
        "opacities": rng.uniform(0.75, 0.99, n),
        "colors": np.clip(color_fn(s, t), 0, 1),
        "labels": np.full(n, int(label)),
        "instance": np.full(n, instance),
    }


def _split(total: int, weights: list[float]) -> list[int]:
    """Split an integer into parts proportional to weights, summing exactly to total."""
    raw = np.asarray(weights, float) / sum(weights) * total
    counts = np.floor(raw).astype(int)
    counts[np.argsort(raw - counts)[::-1][: total - counts.sum()]] += 1
    return counts.tolist()


MIN_STREET_GAUSSIANS = 1000  # the street's layout needs at least this many


def make_street_scene(n_gaussians: int = 100_000, *, seed: int = 0, sh_degree: int = 1) -> GaussianScene:
    """A seeded street of exactly `n_gaussians` Gaussians.

    Args:
        n_gaussians: total count, >= 1000.
        seed: content seed (same seed and count -> identical scene).
        sh_degree: 0..3; bands above 0 get small random view-dependent terms.
    Returns:
        GaussianScene with labels (CARLA ids) and instance ids (cars 1..).
    """
    if n_gaussians < MIN_STREET_GAUSSIANS:
        raise ValueError(f"make_street_scene: n_gaussians must be >= {MIN_STREET_GAUSSIANS}, got {n_gaussians}")
    rng = np.random.default_rng(seed)
    x0, x1 = STREET_X_RANGE_M
    length = x1 - x0
    ex, ey, ez = np.eye(3)
    n_road, n_side, n_kerb, n_facade, n_cars = _split(n_gaussians, list(_SHARES.values()))
    parts = []

    def asphalt(s, t):
        grain = rng.normal(0, 0.025, s.shape)[:, None]
        base = np.array([0.27, 0.27, 0.29]) + grain
        y = t - ROAD_HALF_WIDTH_M
        centre = (np.abs(y) < 0.08) & ((s % 6.0) < 3.0)
        lane = (np.abs(np.abs(y) - 3.5) < 0.07) & ((s % 9.0) < 3.0)
        edge = np.abs(np.abs(y) - (ROAD_HALF_WIDTH_M - 0.25)) < 0.08
        base[centre] = [0.85, 0.72, 0.2]
        base[lane | edge] = [0.9, 0.9, 0.88]
        return base

    parts.append(_surface(rng, n_road, np.array([x0, -ROAD_HALF_WIDTH_M, 0.0]), ex, ey, length,
                          2 * ROAD_HALF_WIDTH_M, asphalt, L.ROADS))
    side_counts = _split(n_side, [1, 1])
    kerb_counts = _split(n_kerb, [1, 1])
    for sign, n_s, n_k in ((1.0, side_counts[0], kerb_counts[0]), (-1.0, side_counts[1], kerb_counts[1])):
        y_in = sign * ROAD_HALF_WIDTH_M
        y_out = sign * (ROAD_HALF_WIDTH_M + SIDEWALK_WIDTH_M)
        paving = lambda s, t: np.array([0.55, 0.53, 0.5]) + 0.08 * (((s // 0.6) + (t // 0.6)) % 2)[:, None] * 0.5 \
            + rng.normal(0, 0.02, s.shape)[:, None]
        parts.append(_surface(rng, n_s, np.array([x0, min(y_in, y_out), KERB_HEIGHT_M]), ex, ey, length,
                              SIDEWALK_WIDTH_M, paving, L.SIDEWALKS))
        kerb = lambda s, t: np.full((s.size, 3), 0.68) + rng.normal(0, 0.02, (s.size, 1))
        parts.append(_surface(rng, n_k, np.array([x0, y_in, 0.0]), ex, ez, length, KERB_HEIGHT_M, kerb,
                              L.SIDEWALKS))

    # facades: a row of buildings on each side with window grids
    buildings = []
    for sign in (1.0, -1.0):
        x = x0
        while x < x1:
            width = rng.uniform(8, 22)
            buildings.append((sign, x, min(width, x1 - x), rng.uniform(7, 18), rng.uniform(0.35, 0.8, 3)))
            x += width
    areas = [b[2] * b[3] for b in buildings]
    for (sign, bx, width, height, wall), n_b in zip(buildings, _split(n_facade, areas)):
        y = sign * (ROAD_HALF_WIDTH_M + SIDEWALK_WIDTH_M)
        win_w, win_h, pitch_x, pitch_z = rng.uniform(0.8, 1.4), rng.uniform(1.0, 1.6), rng.uniform(2.2, 3.2), 3.0

        def facade(s, t, wall=wall, win_w=win_w, win_h=win_h, pitch_x=pitch_x, pitch_z=pitch_z):
            col = np.tile(wall, (s.size, 1)) + rng.normal(0, 0.02, (s.size, 1))
            window = ((s % pitch_x) < win_w) & ((t % pitch_z) > 1.0) & ((t % pitch_z) < 1.0 + win_h) & (t > 2.5)
            col[window] = np.array([0.15, 0.2, 0.28]) + rng.normal(0, 0.03, (window.sum(), 1))
            return col

        parts.append(_surface(rng, n_b, np.array([bx, y, 0.0]), ex, ez, width, height, facade, L.BUILDING))

    # cars: boxes (5 faces each) parked at the kerbs and in the lanes
    car_slots = [(rng.uniform(-50, 130), yy) for yy in (-5.25, 5.25) for _ in range(8)]
    car_slots += [(x, -1.75) for x in (14.0, 40.0)] + [(x, 1.75) for x in (22.0, 60.0, -25.0)]
    for car_id, (n_car, (cx, cy)) in enumerate(zip(_split(n_cars, [1] * len(car_slots)), car_slots), start=1):
        size = np.array([4.5, 1.9, 1.5])
        paint = rng.uniform(0.05, 0.9, 3)
        lo = np.array([cx - size[0] / 2, cy - size[1] / 2, 0.2])
        faces = [  # origin, u, v, size_u, size_v
            (lo + [0, 0, size[2]], ex, ey, size[0], size[1]),
            (lo, ex, ez, size[0], size[2]),
            (lo + [0, size[1], 0], ex, ez, size[0], size[2]),
            (lo, ey, ez, size[1], size[2]),
            (lo + [size[0], 0, 0], ey, ez, size[1], size[2]),
        ]
        face_areas = [f[3] * f[4] for f in faces]
        for (origin, u, v, su, sv), n_f in zip(faces, _split(n_car, face_areas)):
            glass = lambda s, t, sv=sv: (t > sv * 0.55)[:, None]
            color = lambda s, t, glass=glass: np.where(glass(s, t), [0.1, 0.12, 0.15], paint)
            parts.append(_surface(rng, n_f, origin, u, v, su, sv, color, L.CAR, instance=car_id))

    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = cat["means"].shape[0]
    assert n == n_gaussians, (n, n_gaussians)
    sh = np.zeros((n, num_sh_bases(sh_degree), 3), np.float32)
    sh[:, 0] = (cat["colors"] - 0.5) / SH_C0
    if sh_degree > 0:
        sh[:, 1:] = rng.normal(0, 0.04, sh[:, 1:].shape)
    return GaussianScene(
        cat["means"].astype(np.float32),
        cat["quats"].astype(np.float32),
        cat["scales"].astype(np.float32),
        cat["opacities"].astype(np.float32),
        sh,
        cat["labels"].astype(np.uint8),
        cat["instance"].astype(np.int32),
    )


RIG_YAWS_DEG = (0.0, 55.0, -55.0, 180.0, 110.0, -110.0)  # front, front-left, front-right, back, back-left, back-right


def street_cameras(width: int, height: int, *, count: int = 1, fov_deg: float = 70.0,
                   ego_world: np.ndarray = EGO_START_WORLD, height_m: float = 1.6) -> list[Camera]:
    """`count` cameras (1..6) on an ego at `ego_world`, facing along the street (yaws of RIG_YAWS_DEG)."""
    if not 1 <= count <= len(RIG_YAWS_DEG):
        raise ValueError(f"street_cameras: count must be 1..{len(RIG_YAWS_DEG)}, got {count}")
    eye = np.asarray(ego_world, float) + [0.0, 0.0, height_m]
    cams = []
    for yaw in RIG_YAWS_DEG[:count]:
        yaw_rad = math.radians(yaw)
        target = eye + [math.cos(yaw_rad), math.sin(yaw_rad), -0.05]
        cams.append(Camera.look_at(width, height, fov_deg, eye, target))
    return cams
