"""Light for the textured builder: sun and sky per time of day and weather, cast shadows, ambient occlusion.

- `lighting(style)`: the palette (sun direction, sun and sky colours, sky gradient) of a style. Times of
  day: morning, noon, evening, dusk; weather: clear, overcast (no direct sun, a bright grey sky), wet.
- `sun_visibility`: cast shadows, by ray-marching the semantic occupancy from every surface point towards
  the sun (a few rays spread over the sun's disc and a penumbra, so edges are soft); foliage voxels let
  part of the light through.
- `ambient_occlusion`: the share of the sky a point sees, from the density of object voxels in front of
  it, plus a darkening where a wall meets the ground.
- `shade`: albedo x (sky light x occlusion + sun x Lambert x visibility).
- `sky_dome`: the sky as a ring of large, far Gaussians (label SKY) with the palette's gradient and a glow
  around the sun; the render background stays `sky_rgb` for any gap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from neural_sensor.gaussians import rotmats_to_quats
from neural_sensor.labels import CityObjectLabel as L
from neural_sensor.scene.layout import Style
from neural_sensor.scene.occupancy import Occupancy

SKY_RADIUS_M = 1000.0  # the dome's distance (CARLA's depth camera puts the sky at 1000 m too)
EXPOSURE = 0.7  # scene-referred light -> display value
GROUND_LABELS = (L.ROADS, L.ROAD_LINE, L.SIDEWALKS, L.TERRAIN)


@dataclass(frozen=True)
class Palette:
    """Light of one style: directions are unit vectors in the world frame (FLU)."""

    sun_dir: np.ndarray  # towards the sun
    sun_rgb: np.ndarray  # direct sun irradiance on a surface facing it
    sky_rgb: np.ndarray  # sky light on an upward surface with a clear view of the sky
    zenith_rgb: np.ndarray  # sky colour overhead
    horizon_rgb: np.ndarray  # sky colour at the horizon
    glow_rgb: np.ndarray  # added around the sun on the dome
    window_glow: float  # share of windows lit from inside (dusk)
    wet: bool


_SUN = {  # time of day -> (elevation deg, azimuth deg, sun colour)
    "morning": (25.0, 35.0, (1.0, 0.88, 0.72)),
    "noon": (62.0, 160.0, (1.0, 0.97, 0.92)),
    "evening": (16.0, 325.0, (1.0, 0.74, 0.48)),
    "dusk": (3.0, 285.0, (0.9, 0.45, 0.25)),
}
_SKY = {  # time of day -> (zenith, horizon, sky light)
    "morning": ((0.38, 0.56, 0.86), (0.78, 0.82, 0.86), (0.36, 0.40, 0.48)),
    "noon": ((0.30, 0.50, 0.86), (0.72, 0.80, 0.90), (0.38, 0.42, 0.50)),
    "evening": ((0.32, 0.42, 0.70), (0.95, 0.72, 0.52), (0.34, 0.33, 0.40)),
    "dusk": ((0.10, 0.13, 0.30), (0.78, 0.45, 0.34), (0.16, 0.16, 0.26)),
}


def lighting(style: Style) -> Palette:
    """The palette of a style (see the module docstring)."""
    elevation, azimuth, sun_rgb = _SUN[style.time_of_day]
    zenith, horizon, sky = (np.array(v) for v in _SKY[style.time_of_day])
    el, az = math.radians(elevation), math.radians(azimuth)
    sun_dir = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    sun = np.array(sun_rgb) * {"dusk": 0.55}.get(style.time_of_day, 1.0)
    glow = np.array(sun_rgb) * 0.35
    if style.palette == "overcast":
        grey = {"dusk": 0.3, "evening": 0.6}.get(style.time_of_day, 0.82)
        zenith = np.array([0.78, 0.79, 0.81]) * grey
        horizon = np.array([0.86, 0.87, 0.88]) * grey
        sky = np.array([0.80, 0.81, 0.84]) * grey
        sun, glow = sun * 0.06, glow * 0.15
    elif style.palette == "wet":
        zenith, horizon = zenith * 0.8 + 0.1, horizon * 0.85 + 0.08
        sun, sky = sun * 0.7, sky * 1.15
    return Palette(sun_dir, sun, sky, zenith, horizon, glow,
                   0.2 if style.time_of_day == "dusk" else 0.0, style.palette == "wet")


def sky_colour(palette: Palette, directions: np.ndarray) -> np.ndarray:
    """[M, 3] sky colour seen along unit directions [M, 3]."""
    up = np.clip(directions[:, 2], -0.2, 1.0)
    t = np.clip(up, 0.0, 1.0) ** 0.6
    rgb = palette.horizon_rgb[None] * (1 - t[:, None]) + palette.zenith_rgb[None] * t[:, None]
    cos_sun = np.clip(directions @ palette.sun_dir, -1.0, 1.0)
    rgb += palette.glow_rgb[None] * (np.exp((cos_sun - 1.0) / 0.02) + 0.4 * np.exp((cos_sun - 1.0) / 0.3))[:, None]
    haze = np.clip(-up / 0.2, 0.0, 1.0)[:, None]  # below the horizon: haze
    return np.clip(rgb * (1 - 0.3 * haze), 0.0, 1.0)


@njit(parallel=True, cache=True)
def _march(labels, origin, voxel, starts, dirs, max_dist, leaf_transmit, leaf_label):  # pragma: no cover
    n = starts.shape[0]
    r = dirs.shape[0]
    nx, ny, nz = labels.shape
    out = np.ones(n, np.float32)
    step = 0.5 * voxel
    steps = int(max_dist / step)
    for i in prange(n):
        total = 0.0
        for k in range(r):
            t = 1.0
            for s in range(1, steps):
                x = starts[i, 0] + dirs[k, 0] * s * step
                y = starts[i, 1] + dirs[k, 1] * s * step
                z = starts[i, 2] + dirs[k, 2] * s * step
                iz = int(math.floor((z - origin[2]) / voxel))
                if iz >= nz:
                    break
                ix = int(math.floor((x - origin[0]) / voxel))
                iy = int(math.floor((y - origin[1]) / voxel))
                if ix < 0 or iy < 0 or ix >= nx or iy >= ny or iz < 0:
                    break
                lab = labels[ix, iy, iz]
                if lab != 0:
                    if lab == leaf_label:
                        t *= leaf_transmit
                        if t < 0.02:
                            t = 0.0
                            break
                    else:
                        t = 0.0
                        break
            total += t
        out[i] = total / r
    return out


def sun_visibility(occupancy: Occupancy, points: np.ndarray, normals: np.ndarray, sun_dir: np.ndarray, *,
                   rays: int = 4, penumbra_rad: float = 0.02, max_dist_m: float = 80.0) -> np.ndarray:
    """[M] share of the sun each surface point [M, 3] (normals [M, 3]) sees: 0 in full shadow, 1 in full sun."""
    if sun_dir[2] <= 0:
        return np.zeros(len(points), np.float32)
    rng = np.random.default_rng(0)
    tangent = np.cross(sun_dir, [0.0, 0.0, 1.0])
    tangent /= np.linalg.norm(tangent)
    bitangent = np.cross(sun_dir, tangent)
    dirs = [sun_dir]
    for _ in range(rays - 1):
        a, b = rng.normal(0, penumbra_rad, 2)
        d = sun_dir + a * tangent + b * bitangent
        dirs.append(d / np.linalg.norm(d))
    dirs = np.asarray(dirs, np.float64)
    starts = points + normals * (0.75 * occupancy.voxel_m) + sun_dir[None] * 0.05
    return _march(occupancy.labels, occupancy.origin_m.astype(np.float64), float(occupancy.voxel_m),
                  starts.astype(np.float64), dirs, float(max_dist_m), 0.6, int(L.VEGETATION))


def ambient_occlusion(occupancy: Occupancy, points: np.ndarray, normals: np.ndarray, ground_z: np.ndarray | None = None
                      ) -> np.ndarray:
    """[M] sky visibility in (0, 1]: dark near walls, cars and trees (object voxels within about a metre in front
    of the point) and where a wall meets the ground."""
    from scipy.ndimage import uniform_filter

    objects = ((occupancy.labels > 0) & ~np.isin(occupancy.labels, GROUND_LABELS)).astype(np.float32)
    objects[occupancy.labels == L.VEGETATION] = 0.25  # a crown's box is mostly air and leaves
    size = max(3, int(round(2.1 / occupancy.voxel_m)) | 1)
    density = uniform_filter(objects, size=size, mode="constant")
    probe = points + normals * 0.6
    idx = np.floor((probe - occupancy.origin_m) / occupancy.voxel_m).astype(np.int64)
    idx = np.clip(idx, 0, np.array(occupancy.shape) - 1)
    dens = density[idx[:, 0], idx[:, 1], idx[:, 2]]
    half = 0.5 * size * occupancy.voxel_m
    vertical = np.abs(normals[:, 2]) < 0.5
    base = np.where(vertical, max(0.0, half - 0.6) / (2 * half), 0.0)  # a flat wall's own share
    ao = 1.0 - 1.6 * np.clip(dens - base, 0.0, None)
    if ground_z is not None:
        height = np.clip(points[:, 2] - ground_z, 0.0, None)
        ao *= np.where(vertical, 1.0 - 0.35 * np.exp(-height / 0.6), 1.0)
    return np.clip(ao, 0.25, 1.0).astype(np.float32)


def shade(albedo: np.ndarray, normals: np.ndarray, palette: Palette, visibility: np.ndarray, ao: np.ndarray
          ) -> np.ndarray:
    """[M, 3] lit colour: albedo x (sky light x (0.55 + 0.45 n_z) x ao + street bounce + sun x max(0, n.sun) x visibility)."""
    sky = palette.sky_rgb[None] * ((0.55 + 0.45 * normals[:, 2]) * ao)[:, None]
    # light bounced off the sunlit street onto walls (and under eaves)
    bounce = (0.5 * (1.0 - normals[:, 2]) * ao)[:, None] * (0.25 * palette.sun_rgb * max(palette.sun_dir[2], 0.0)
                                                           + 0.12 * palette.sky_rgb)[None]
    lambert = np.clip(normals @ palette.sun_dir, 0.0, None) * visibility
    light = 1.45 * sky + bounce + palette.sun_rgb[None] * lambert[:, None] * 1.25
    # the photographs are display-encoded: scale them by the light in display terms (gamma 2.2)
    return np.clip(albedo * np.clip(light * EXPOSURE, 0.0, 1.6) ** (1 / 2.2), 0.0, 1.0)


def dome_geometry(centre_xy: np.ndarray, *, rings: int = 14) -> dict:
    """The sky hemisphere's Gaussians without colour (elevation -6 to 90 degrees around centre_xy at SKY_RADIUS_M,
    flattened towards the centre, overlapping into a continuous sky): means [M, 3], normals [M, 3] (towards the
    centre), scales [M, 3] and quats [M, 4] (w, x, y, z; the flat axis along the normal)."""
    elevations = np.linspace(math.radians(-6.0), math.radians(84.0), rings)
    step = elevations[1] - elevations[0]
    means, sizes = [], []
    for el in elevations:
        count = max(6, int(round(2 * math.pi * math.cos(el) / step)))
        az = np.linspace(0, 2 * math.pi, count, endpoint=False) + (0.5 * (len(means) % 2)) * 2 * math.pi / count
        d = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.full(count, math.sin(el))], 1)
        means.append(d)
        sizes.append(np.full(count, 2 * math.pi * math.cos(el) / count))
    means.append(np.array([[0.0, 0.0, 1.0]]))
    sizes.append(np.array([step * 1.2]))
    d = np.concatenate(means)
    arc = np.concatenate(sizes)
    tangent = np.maximum(arc, step) * SKY_RADIUS_M * 0.6
    scales = np.stack([tangent, np.full(len(d), step * SKY_RADIUS_M * 0.6), np.full(len(d), 2.0)], 1)
    centre = np.array([centre_xy[0], centre_xy[1], 0.0])
    normals = -d
    az_t = np.stack([-d[:, 1], d[:, 0], np.zeros(len(d))], 1)
    norm = np.linalg.norm(az_t, axis=1, keepdims=True)
    az_t = np.where(norm > 1e-6, az_t / np.maximum(norm, 1e-9), [1.0, 0.0, 0.0])
    frames = np.stack([az_t, np.cross(normals, az_t), normals], axis=2)  # columns: tangent, bitangent, normal
    return {"means": centre + d * SKY_RADIUS_M, "normals": normals, "scales": scales,
            "quats": rotmats_to_quats(frames)}


def sky_dome(palette: Palette, centre_xy: np.ndarray, *, rings: int = 14) -> dict:
    """dome_geometry with the palette's sky colours (colors [M, 3])."""
    dome = dome_geometry(centre_xy, rings=rings)
    return {**dome, "colors": sky_colour(palette, -dome["normals"])}
