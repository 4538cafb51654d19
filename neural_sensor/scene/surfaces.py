"""Occupancy + layout -> textured appearance Gaussians on the surfaces the semantic occupancy bounds.

The occupancy (X-Scene's backbone) decides what is where; this module puts the
appearance on continuous surfaces that follow the layout, not on voxel faces:

- ground: road, sidewalks and terrain sampled in 1.8 m blocks whose Gaussian spacing grows with
  the distance from the drivable area (fine on the road, coarse far from it); labels from the
  layout's own classifier at every sample; sidewalks raised by the kerb height;
- lane markings and crosswalk stripes: thin elongated Gaussians along the lane boundaries
  (solid at the road edge and between opposite directions, dashed 3 m / 6 m between lanes of
  one direction), label ROAD_LINE;
- kerbs: a vertical kerb-stone face along every road edge that borders a raised sidewalk;
- buildings: facade planes on the sides a street viewer can see, textured with a facade photograph
  whose windows and doors are recessed; flat roofs with a cornice; label BUILDING;
- trees (a trunk and a crown volume of leaf clusters coloured from tree photographs), poles with a
  lamp arm, traffic signs on posts, parked cars from the textured car asset;
- the sky: a dome of far Gaussians with the palette's gradient (optional).

Colours are area-averaged texture samples (`Texture.sample` with each Gaussian's footprint), lit by
`light.shade` with cast shadows ray-marched through the occupancy and ambient occlusion. Static
objects carry instance id STATIC_INSTANCE_BASE + object index, everything else 0.
"""

from __future__ import annotations

import math

import numpy as np
from tqdm import tqdm

from neural_sensor.gaussians import GaussianScene, rotmats_to_quats
from neural_sensor.labels import CityObjectLabel as L
from neural_sensor.scene import light
from neural_sensor.scene.layout import Box, Layout, _offset_polyline
from neural_sensor.scene.occupancy import KERB_HEIGHT_M, Occupancy, _inside_box_2d, _segment_distances, _surface_labels
from neural_sensor.scene.textures import TextureLibrary, load_library

STATIC_INSTANCE_BASE = 100_000  # same numbering as the legacy builder
STREET_EYE_HEIGHT_M = 3.0
BLOCK_M = 1.8  # ground block edge; a multiple of every ground spacing
GROUND_SPACINGS = (0.18, 0.225, 0.3, 0.45, 0.6, 0.9)  # m, by distance from the drivable area
SIGMA_PER_SPACING = 0.62  # tangent standard deviation of a surface Gaussian, in spacings
MARKING_HALF_WIDTH_M = 0.075
FACE_SIGMA_PER_CELL = 0.7  # facade Gaussians overlap a little more: they are seen closer
FACADE_CELLS_NEAR = (0.4, 0.2, 0.1)  # facade Gaussian sizes (m): split where the photograph has detail
FACADE_CELLS_FAR = (0.6, 0.3)  # facades more than 12 m from the drivable area
FINEST_BELOW_M = 7.0
DETAIL_SPLIT = 0.09  # split a cell when the luminance std of the texture inside it exceeds this
WINDOW_RECESS_M = 0.18
MAX_SCALE_M = 1.2  # no surface Gaussian is wider than this (the sky dome excepted)


def _quats_from_frames(t: np.ndarray, b: np.ndarray, n: np.ndarray) -> np.ndarray:
    """[M, 4] (w, x, y, z) quaternions of rotations whose columns are t, b, n (each [M, 3], right-handed)."""
    return rotmats_to_quats(np.stack([t, b, n], axis=2))


def _yaw_quats(yaw: np.ndarray) -> np.ndarray:
    yaw = np.asarray(yaw, np.float64)
    return np.stack([np.cos(yaw / 2), np.zeros_like(yaw), np.zeros_like(yaw), np.sin(yaw / 2)], 1)


def _hash01(seed: int, *ints) -> np.ndarray:
    h = np.full(np.broadcast(*ints).shape, np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64), np.uint64)
    for value in ints:
        h ^= np.asarray(value).astype(np.int64).astype(np.uint64) + np.uint64(0x632BE59BD9B4E019)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)


def _smooth_noise(seed: int, x: np.ndarray, y: np.ndarray, cell_m: float) -> np.ndarray:
    """Value noise in [0, 1] with features about cell_m across (large-scale wear and stains)."""
    gx, gy = x / cell_m, y / cell_m
    i, j = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    fx, fy = gx - i, gy - j
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    a, b = _hash01(seed, i, j), _hash01(seed, i + 1, j)
    c, d = _hash01(seed, i, j + 1), _hash01(seed, i + 1, j + 1)
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


class _Parts:
    """Accumulates Gaussians: means, quats, scales, albedo, opacity, label, instance, normal, ground z, lit."""

    def __init__(self):
        self.chunks: list[dict] = []

    def add(self, means, quats, scales, albedo, labels, instance, normals, *, opacity=0.98, ground_z=0.0,
            lit=True):
        n = len(means)
        if n == 0:
            return
        self.chunks.append({
            "means": np.asarray(means, np.float64).reshape(n, 3),
            "quats": np.broadcast_to(np.asarray(quats, np.float64), (n, 4)),
            "scales": np.broadcast_to(np.asarray(scales, np.float64), (n, 3)),
            "albedo": np.broadcast_to(np.asarray(albedo, np.float64), (n, 3)),
            "opacity": np.broadcast_to(np.asarray(opacity, np.float64), (n,)),
            "labels": np.broadcast_to(np.asarray(labels, np.uint8), (n,)),
            "instance": np.broadcast_to(np.asarray(instance, np.int32), (n,)),
            "normals": np.broadcast_to(np.asarray(normals, np.float64), (n, 3)),
            "ground_z": np.broadcast_to(np.asarray(ground_z, np.float64), (n,)),
            "lit": np.broadcast_to(np.asarray(lit, bool), (n,)),
        })

    def cat(self) -> dict:
        return {k: np.concatenate([c[k] for c in self.chunks]) for k in self.chunks[0]}


def _lane_eyes(layout: Layout) -> np.ndarray:
    """[E, 3] viewer positions: lane centre points every 4 m at STREET_EYE_HEIGHT_M."""
    samples = []
    for lane in layout.lanes:
        for a, d in zip(lane.centre_m[:-1], np.diff(lane.centre_m, axis=0)):
            steps = max(1, int(np.linalg.norm(d) // 4.0))
            samples.append(a + np.linspace(0, 1, steps, endpoint=False)[:, None] * d)
        samples.append(lane.centre_m[-1:])
    eyes = np.concatenate(samples)
    return np.concatenate([eyes, np.full((len(eyes), 1), STREET_EYE_HEIGHT_M)], axis=1)


def _road_distance(occupancy: Occupancy):
    """Distance (m) from every occupancy column to the drivable area, and a lookup for points [M, 2]."""
    from scipy.ndimage import distance_transform_edt

    k0 = int(np.floor((-0.05 - occupancy.origin_m[2]) / occupancy.voxel_m))
    surface = occupancy.labels[:, :, max(k0, 0)]
    road = np.isin(surface, [L.ROADS, L.ROAD_LINE])
    dist = distance_transform_edt(~road) * occupancy.voxel_m if road.any() else np.full(road.shape, 50.0)

    def lookup(xy: np.ndarray) -> np.ndarray:
        idx = np.floor((xy - occupancy.origin_m[:2]) / occupancy.voxel_m).astype(np.int64)
        idx = np.clip(idx, 0, np.array(dist.shape) - 1)
        return dist[idx[:, 0], idx[:, 1]]

    return lookup


def _ground(parts: _Parts, layout: Layout, occupancy: Occupancy, library: TextureLibrary, road_dist) -> None:
    seed = layout.style.seed
    x0, y0 = occupancy.origin_m[:2]
    x1 = x0 + occupancy.shape[0] * occupancy.voxel_m
    y1 = y0 + occupancy.shape[1] * occupancy.voxel_m
    bx = np.arange(math.floor(x0 / BLOCK_M), math.ceil(x1 / BLOCK_M)) * BLOCK_M
    by = np.arange(math.floor(y0 / BLOCK_M), math.ceil(y1 / BLOCK_M)) * BLOCK_M
    gx, gy = np.meshgrid(bx, by, indexing="ij")
    corners = np.stack([gx.ravel(), gy.ravel()], 1)
    # a block's spacing follows its nearest point to the drivable area (5 probes per block)
    probes = np.concatenate([corners + BLOCK_M * np.array(o) for o in ((0.5, 0.5), (0, 0), (1, 0), (0, 1), (1, 1))])
    dist = road_dist(probes).reshape(5, -1).min(axis=0)
    level = np.clip(np.searchsorted([1.0, 4.0, 8.0, 14.0, 22.0], dist), 0, len(GROUND_SPACINGS) - 1)
    buildings = [b for b in layout.objects if b.cls == "building"]
    asphalt = library.choose("asphalt", 0, seed)
    sidewalk_tex = library.choose("sidewalk", 1, seed)
    grass = library.choose("grass", 2, seed)
    rng = np.random.default_rng(seed + 5)
    refs = [r.points_m for r in layout.references] or [lane.centre_m for lane in layout.lanes]
    # blocks in compact groups (16 x 16), so each classification batch only examines nearby lane segments
    group = np.floor(corners / (16 * BLOCK_M)).astype(np.int64)
    order = np.lexsort((corners[:, 1], corners[:, 0], group[:, 1], group[:, 0]))
    corners, level = corners[order], level[order]
    for lv, spacing in enumerate(GROUND_SPACINGS):
        blocks = corners[level == lv]
        if len(blocks) == 0:
            continue
        k = int(round(BLOCK_M / spacing))
        offs = (np.stack(np.meshgrid(np.arange(k), np.arange(k), indexing="ij"), -1).reshape(-1, 2) + 0.5) * spacing
        for lo in range(0, len(blocks), 400):
            xy = (blocks[lo:lo + 400, None, :] + offs[None]).reshape(-1, 2)
            xy = xy + rng.uniform(-0.18, 0.18, xy.shape) * spacing
            inside = (xy[:, 0] > x0) & (xy[:, 0] < x1) & (xy[:, 1] > y0) & (xy[:, 1] < y1)
            for box in buildings:
                inside &= ~_inside_box_2d(xy, box, pad=-0.05)[0]
            xy = xy[inside]
            if len(xy) == 0:
                continue
            label, top = _surface_labels(layout, xy, occupancy.voxel_m)
            label[label == L.ROAD_LINE] = L.ROADS  # the markings are their own Gaussians on top
            albedo = np.empty((len(xy), 3))
            road = label == L.ROADS
            side = label == L.SIDEWALKS
            terr = ~road & ~side
            wear = _smooth_noise(seed, xy[:, 0], xy[:, 1], 6.0)[:, None]
            if road.any():
                albedo[road] = asphalt.sample(xy[road, 0], xy[road, 1], spacing) * (0.68 + 0.16 * wear[road])
                if layout.style.palette == "wet":
                    albedo[road] *= 0.6
            if side.any():
                # slabs follow the road: texture coordinates are (arc length, offset) along the nearest reference
                best = np.full(side.sum(), np.inf)
                u = np.zeros(side.sum())
                v = np.zeros(side.sum())
                for ref in refs:
                    d, arc, sign = _segment_distances(xy[side], ref, reach_m=30.0)
                    closer = d < best
                    best[closer], u[closer], v[closer] = d[closer], arc[closer], d[closer] * sign[closer]
                albedo[side] = sidewalk_tex.sample(u, v, spacing) * (0.85 + 0.2 * wear[side])
                if layout.style.palette == "wet":
                    albedo[side] *= 0.7
            if terr.any():
                g = grass.sample(xy[terr, 0], xy[terr, 1], spacing)
                g = 0.55 * g + 0.45 * g.mean(axis=1, keepdims=True)  # the photograph is greener than a verge
                albedo[terr] = g * (0.7 + 0.35 * wear[terr])
            means = np.concatenate([xy, top[:, None]], 1)
            sigma = SIGMA_PER_SPACING * spacing
            parts.add(means, (1.0, 0.0, 0.0, 0.0), (sigma, sigma, 0.02 * spacing), albedo, label, 0,
                      (0.0, 0.0, 1.0), ground_z=top)


def _markings(parts: _Parts, layout: Layout, occupancy: Occupancy) -> None:
    step = 0.2
    seed = layout.style.seed
    for i, lane in enumerate(layout.lanes):
        for side in (1, -1):
            boundary = _offset_polyline(lane.centre_m, side * lane.width_m / 2)
            s, pts, tangent = _resample(boundary, step)
            # shared with another lane? then only the lower-numbered lane draws it
            shared = np.zeros(len(pts), bool)
            shared_by_lower = np.zeros(len(pts), bool)
            same_dir = np.zeros(len(pts), bool)
            for k, other in enumerate(layout.lanes):
                if k == i:
                    continue
                d, _, _ = _segment_distances(pts, other.centre_m, reach_m=other.width_m)
                on = np.abs(d - other.width_m / 2) < 0.05
                shared |= on
                shared_by_lower |= on & (k < i)
                same_dir |= on & (other.direction == lane.direction)
            keep = ~shared_by_lower
            # the lane's own arc length decides the dashes, as in the occupancy's rule
            _, arc, _ = _segment_distances(pts, lane.centre_m)
            dashed = shared & same_dir
            keep &= ~dashed | ((arc % 9.0) < 3.0)
            # an outer edge line sits just inside the road; it must lie on road per the layout
            normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1) * side
            pts = np.where(shared[:, None], pts, pts - normal * 0.2)
            label, _ = _surface_labels(layout, pts, occupancy.voxel_m)
            keep &= np.isin(label, [L.ROADS, L.ROAD_LINE])
            pts, tangent = pts[keep], tangent[keep]
            grime = 0.78 + 0.12 * _hash01(seed, np.floor(pts[:, 0] / 0.4), np.floor(pts[:, 1] / 0.4))[:, None]
            albedo = np.broadcast_to(grime, (len(pts), 3)) * np.array([1.0, 1.0, 0.97])
            if layout.style.palette == "wet":
                albedo = albedo * 0.8
            means = np.concatenate([pts, np.full((len(pts), 1), 0.012)], 1)
            yaw = np.arctan2(tangent[:, 1], tangent[:, 0])
            parts.add(means, _yaw_quats(yaw), (0.75 * step, MARKING_HALF_WIDTH_M * 0.6, 0.003), albedo,
                      L.ROAD_LINE, 0, (0.0, 0.0, 1.0), opacity=0.97)
    for box in layout.crosswalks:
        c, s_ = math.cos(box.yaw_rad), math.sin(box.yaw_rad)
        length, width = box.size_m[0], box.size_m[1]
        sp = 0.12
        us = np.arange(-length / 2 + sp / 2, length / 2, sp)
        stripes = []
        v = -width / 2 + 0.05
        while v < width / 2:
            vs = np.arange(v, min(v + 0.5, width / 2), sp) + sp / 2
            uu, vv = np.meshgrid(us, vs, indexing="ij")
            stripes.append(np.stack([uu.ravel(), vv.ravel()], 1))
            v += 1.0
        if not stripes:
            continue
        uv = np.concatenate(stripes)
        xy = np.array(box.centre_m[:2]) + uv[:, :1] * [c, s_] + uv[:, 1:] * [-s_, c]
        label, _ = _surface_labels(layout, xy, occupancy.voxel_m)
        xy = xy[np.isin(label, [L.ROADS, L.ROAD_LINE])]
        albedo = 0.8 + 0.1 * _hash01(seed + 3, np.floor(xy[:, 0] / 0.3), np.floor(xy[:, 1] / 0.3))[:, None]
        means = np.concatenate([xy, np.full((len(xy), 1), 0.012)], 1)
        parts.add(means, _yaw_quats(np.full(len(xy), box.yaw_rad)), (0.6 * sp, 0.6 * sp, 0.003),
                  np.broadcast_to(albedo, (len(xy), 3)), L.ROAD_LINE, 0, (0.0, 0.0, 1.0), opacity=0.97)


def _resample(polyline: np.ndarray, step_m: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points every step_m along a polyline [P, 2] (the first half a step in): arc lengths [M], points [M, 2],
    unit tangents [M, 2]."""
    seg = np.diff(polyline, axis=0)
    seg_len = np.linalg.norm(seg, axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    s = np.arange(0.5 * step_m, cum[-1], step_m)
    j = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1)
    return s, polyline[j] + ((s - cum[j]) / seg_len[j])[:, None] * seg[j], seg[j] / seg_len[j][:, None]


def _kerbs(parts: _Parts, layout: Layout, occupancy: Occupancy, library: TextureLibrary) -> None:
    kerb = library.choose("kerb", 3, layout.style.seed)
    step = 0.15
    for edge in layout.road_edges:
        s, pts, t = _resample(edge, step)
        n = np.stack([-t[:, 1], t[:, 0]], 1)
        left, _ = _surface_labels(layout, pts + 0.3 * n, occupancy.voxel_m)
        right, _ = _surface_labels(layout, pts - 0.3 * n, occupancy.voxel_m)
        road_l = np.isin(left, [L.ROADS, L.ROAD_LINE])
        road_r = np.isin(right, [L.ROADS, L.ROAD_LINE])
        facing = np.where(road_l, 1.0, -1.0)[:, None] * n  # towards the road
        raised = np.where(road_l, right, left) == L.SIDEWALKS
        keep = (road_l ^ road_r) & raised
        pts, facing, s, t = pts[keep], facing[keep], s[keep], t[keep]
        for z in (0.04, 0.11):
            means = np.concatenate([pts, np.full((len(pts), 1), z)], 1)
            albedo = kerb.sample(s, np.full(len(s), z), step) * 0.9
            nz = np.zeros((len(pts), 3))
            n3 = np.concatenate([facing, nz[:, :1]], 1)
            tan = np.concatenate([np.stack([facing[:, 1], -facing[:, 0]], 1), nz[:, :1]], 1)
            up = np.cross(n3, tan)
            parts.add(means, _quats_from_frames(tan, up, n3), (0.62 * step, 0.045, 0.004), albedo, L.SIDEWALKS, 0,
                      n3, ground_z=0.0)
        # the kerb's rounded top edge
        means = np.concatenate([pts + facing * 0.02, np.full((len(pts), 1), KERB_HEIGHT_M)], 1)
        albedo = kerb.sample(s, np.full(len(s), 0.28), step)
        parts.add(means, _yaw_quats(np.arctan2(t[:, 1], t[:, 0])), (0.62 * step, 0.06, 0.01), albedo,
                  L.SIDEWALKS, 0, (0.0, 0.0, 1.0), ground_z=0.0)


def _adaptive_cells(tex, span: float, height: float, sizes, offset_u: float, rng):
    """Cells (u, z centres and sizes, metres) covering a span x height face: cells of sizes[0], each split in
    four while the texture inside it has detail (luminance std > DETAIL_SPLIT) and a finer size is left."""
    h0 = sizes[0]
    uu, zz = np.meshgrid((np.arange(math.ceil(span / h0)) + 0.5) * h0, (np.arange(math.ceil(height / h0)) + 0.5) * h0,
                         indexing="ij")
    u, z = uu.ravel(), zz.ravel()
    done_u, done_z, done_s = [], [], []
    for level, size in enumerate(sizes):
        inside = (u - size / 2 < span) & (z - size / 2 < height)
        u, z = u[inside], z[inside]
        if level + 1 < len(sizes):
            split = tex.detail(u + offset_u, z, size) > DETAIL_SPLIT
            if level + 2 == len(sizes):
                split &= z < FINEST_BELOW_M  # the finest cells only where viewers are close: the lower storeys
            # cells on the outline too: a wide Gaussian there would blur the building's edge into the sky
            split |= (u - size / 2 < 1e-6) | (u + size / 2 > span - 1e-6) | (z + size / 2 > height - 1e-6)
        else:
            split = np.zeros(len(u), bool)
        done_u.append(u[~split])
        done_z.append(z[~split])
        done_s.append(np.full((~split).sum(), size))
        q = size / 4
        u = (u[split, None] + np.array([-q, q, -q, q])[None]).ravel()
        z = (z[split, None] + np.array([-q, -q, q, q])[None]).ravel()
    u, z, s = np.concatenate(done_u), np.concatenate(done_z), np.concatenate(done_s)
    u = np.clip(u + rng.uniform(-0.12, 0.12, len(u)) * s, 0.02, span - 0.02)
    z = np.clip(z + rng.uniform(-0.12, 0.12, len(z)) * s, 0.02, height - 0.02)
    return u, z, s


def _face_scales(size: np.ndarray) -> np.ndarray:
    sigma = FACE_SIGMA_PER_CELL * size
    return np.stack([sigma, sigma, np.full(len(size), 0.01)], 1)


def _box_frame(box: Box):
    c, s = math.cos(box.yaw_rad), math.sin(box.yaw_rad)
    return np.array(box.centre_m), np.array([c, s, 0.0]), np.array([-s, c, 0.0])


def _building(parts: _Parts, box: Box, obj: int, layout: Layout, library: TextureLibrary, eyes, road_dist,
              palette) -> None:
    seed = layout.style.seed
    tex = library.choose("facade", obj, seed, getattr(layout.style, "building_style", "mixed"))
    jitter = library.jitter("facade", obj, seed, hue=0.02, brightness=0.12)
    mask = tex.window_mask()
    centre, ex, ey = _box_frame(box)
    length, width, height = box.size_m
    instance = STATIC_INSTANCE_BASE + obj
    offset_u = float(_hash01(seed, obj)) * tex.tile_m[0]
    rng = np.random.default_rng([seed & 0xFFFFFFFF, obj, 11])
    faces = [(ex, ey, width, length), (-ex, -ey, width, length), (ey, -ex, length, width), (-ey, ex, length, width)]
    for normal, along, span, depth in faces:
        face_centre = centre + normal * depth / 2
        # seen from a lane: some viewer in front of the face
        if not np.any((eyes - face_centre) @ normal > 0.5):
            continue
        d_road = float(road_dist(face_centre[None, :2])[0])
        # the front (facing the road, close to it) gets the fine cells; side walls seen through gaps coarse ones
        probe = face_centre[None, :2] + normal[None, :2] * np.array([[2.0], [6.0]])
        facing_road = bool(np.all(np.diff(road_dist(probe)) < 0)) and road_dist(probe)[1] < d_road
        sizes = FACADE_CELLS_NEAR if (d_road < 12.0 and facing_road) else FACADE_CELLS_FAR
        u, z, size = _adaptive_cells(tex, span, height, sizes, offset_u, rng)
        albedo = tex.sample(u + offset_u, z, size) @ jitter.T
        tu, tv = tex.tex_coords(u + offset_u, z)
        h, w = mask.shape
        win = mask[np.clip(((1 - tv) * h).astype(int), 0, h - 1), np.clip((tu * w).astype(int), 0, w - 1)]
        win &= z > 0.3
        if palette.window_glow > 0:
            lit = _hash01(seed + obj, np.floor(u / 2.5), np.floor(z / 3.0)) < palette.window_glow
            albedo[win & lit] = albedo[win & lit] * 0.3 + np.array([1.0, 0.78, 0.45]) * 0.7
        else:
            albedo[win] = albedo[win] * 0.75 + 0.25 * (palette.horizon_rgb * 0.55)  # the sky in the glass
        base = centre + normal * depth / 2 - along * span / 2
        means = base[None] + u[:, None] * along[None] + z[:, None] * np.array([0, 0, 1.0])[None]
        means -= win[:, None] * normal[None] * WINDOW_RECESS_M
        up = np.tile([0.0, 0.0, 1.0], (len(u), 1))
        t = np.tile(along, (len(u), 1))
        n = np.tile(normal, (len(u), 1))
        emissive = np.zeros(len(u), bool)
        if palette.window_glow > 0:
            emissive = win & (_hash01(seed + obj, np.floor(u / 2.5), np.floor(z / 3.0)) < palette.window_glow)
        parts.add(means[~emissive], _quats_from_frames(t, up, n)[~emissive],
                  _face_scales(size[~emissive]), albedo[~emissive], L.BUILDING, instance,
                  n[~emissive], ground_z=0.0)
        parts.add(means[emissive], _quats_from_frames(t, up, n)[emissive],
                  _face_scales(size[emissive]), albedo[emissive], L.BUILDING, instance,
                  n[emissive], lit=False)
        # cornice: a protruding band under the roof line
        cu = (np.arange(max(2, int(span / 0.3))) + 0.5) * span / max(2, int(span / 0.3))
        for dz, out in ((-0.15, 0.12), (-0.35, 0.06)):
            cm = base[None] + cu[:, None] * along[None] + np.array([0, 0, height + dz]) + normal[None] * out
            colour = np.broadcast_to(tex.mean_rgb @ jitter.T * 0.9, (len(cu), 3))
            parts.add(cm, _quats_from_frames(np.tile(along, (len(cu), 1)), np.tile([0, 0, 1.0], (len(cu), 1)),
                                             np.tile(normal, (len(cu), 1))),
                      (0.2, 0.1, 0.01), colour, L.BUILDING, instance, normal, ground_z=0.0)
    # roof: coarse, seen only from above the street
    roof = library.choose("roof", obj, seed)
    sp = 0.7
    nu, nv = max(2, int(length / sp)), max(2, int(width / sp))
    uu, vv = np.meshgrid((np.arange(nu) + 0.5) / nu - 0.5, (np.arange(nv) + 0.5) / nv - 0.5, indexing="ij")
    u, v = uu.ravel() * length, vv.ravel() * width
    means = centre[None] + u[:, None] * ex + v[:, None] * ey + np.array([0, 0, height])
    parts.add(means, _yaw_quats(np.full(len(u), box.yaw_rad)),
              (SIGMA_PER_SPACING * length / nu, SIGMA_PER_SPACING * width / nv, 0.01),
              roof.sample(u, v, sp) * 0.8, L.BUILDING, instance, (0.0, 0.0, 1.0), ground_z=0.0)


def _tree(parts: _Parts, box: Box, obj: int, layout: Layout, library: TextureLibrary) -> None:
    seed = layout.style.seed
    rng = np.random.default_rng([seed & 0xFFFFFFFF, obj, 7])
    tex = library.choose("tree", obj, seed)
    jitter = library.jitter("tree", obj, seed, hue=0.03, brightness=0.15)
    centre, ex, ey = _box_frame(box)
    length, width, height = box.size_m
    instance = STATIC_INSTANCE_BASE + obj
    crown_lo = box.centre_m[2] + 0.35 * height
    # trunk: a cylinder up into the crown
    trunk_h = 0.35 * height + 0.3 * height
    radius = min(0.16, 0.4 * min(length, width))
    phi = np.linspace(0, 2 * math.pi, 10, endpoint=False)
    zs = np.arange(0.1, trunk_h, 0.2)
    pp, zz = np.meshgrid(phi, zs, indexing="ij")
    pp, zz = pp.ravel(), zz.ravel()
    n = np.stack([np.cos(pp), np.sin(pp), np.zeros_like(pp)], 1)
    t = np.stack([-np.sin(pp), np.cos(pp), np.zeros_like(pp)], 1)
    up = np.tile([0.0, 0.0, 1.0], (len(pp), 1))
    means = centre[None] + n * radius + np.stack([np.zeros_like(zz), np.zeros_like(zz), zz], 1)
    bark = np.array([0.32, 0.26, 0.2]) * (0.8 + 0.3 * rng.random((len(pp), 1)))
    parts.add(means, _quats_from_frames(t, up, n), (0.08, 0.12, 0.01), bark, L.VEGETATION, instance, n,
              ground_z=box.centre_m[2])
    # crown: leaf clusters in a shell of an ellipsoid (denser near the surface), coloured from the photograph
    half = np.array([length / 2, width / 2, 0.65 * height / 2]) * 0.95
    mid = centre + np.array([0, 0, crown_lo - box.centre_m[2] + half[2]])
    count = int(1.3 * 4 * math.pi * (np.prod(half) ** (2 / 3)) / 0.06)
    d = rng.normal(size=(count, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = rng.uniform(0.7, 1.0, count) ** 0.5
    wobble = 1.0 + 0.12 * np.sin(3 * np.arctan2(d[:, 1], d[:, 0]) + 2 * d[:, 2] * 3 + obj)
    pts = mid + d * half * (r * wobble)[:, None]
    leaves = tex.alpha is not None
    if leaves:
        hh, ww = tex.alpha.shape
        cand = np.flatnonzero((tex.alpha.ravel() > 0.6) & (np.arange(hh * ww) // ww < 0.75 * hh))
        pick = cand[rng.integers(len(cand), size=count)] if len(cand) else rng.integers(hh * ww, size=count)
        colour = tex.image.reshape(-1, 3)[pick]
    else:
        colour = tex.sample(rng.uniform(0, 10, count), rng.uniform(0, 10, count), 0.2)
    colour = np.clip(colour @ jitter.T, 0, 1) * (0.65 + 0.45 * r[:, None])  # darker inside the crown
    # leaf clusters face outwards, tilted at random, so a ray into the crown stops after a few
    normals = d + rng.normal(0, 0.35, d.shape)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    tangent = np.cross(normals, rng.normal(size=(count, 3)))
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    q = _quats_from_frames(tangent, np.cross(normals, tangent), normals)
    size = rng.uniform(0.12, 0.24, (count, 1)) * np.array([1.0, 0.8, 0.1])
    parts.add(pts, q, size, colour, L.VEGETATION, instance, d, opacity=0.95, ground_z=box.centre_m[2])


def _pole(parts: _Parts, box: Box, obj: int, layout: Layout, road_dir_sign: float) -> None:
    centre, ex, ey = _box_frame(box)
    instance = STATIC_INSTANCE_BASE + obj
    radius = min(0.08, 0.4 * min(box.size_m[:2]))
    height = box.size_m[2]
    phi = np.linspace(0, 2 * math.pi, 8, endpoint=False)
    zs = np.arange(0.08, height, 0.15) + box.centre_m[2]
    pp, zz = np.meshgrid(phi, zs, indexing="ij")
    pp, zz = pp.ravel(), zz.ravel()
    n = np.stack([np.cos(pp), np.sin(pp), np.zeros_like(pp)], 1)
    t = np.stack([-np.sin(pp), np.cos(pp), np.zeros_like(pp)], 1)
    up = np.tile([0.0, 0.0, 1.0], (len(pp), 1))
    means = np.array([centre[0], centre[1], 0.0]) + n * radius + np.stack([0 * zz, 0 * zz, zz], 1)
    metal = np.array([0.42, 0.43, 0.45])
    parts.add(means, _quats_from_frames(t, up, n), (0.06, 0.1, 0.005), metal, L.POLE, instance, n, ground_z=0.0)
    # lamp arm towards the road and the lamp head
    toward = ey * road_dir_sign
    s = np.arange(0.05, 1.3, 0.08)
    arm = np.array([centre[0], centre[1], box.centre_m[2] + height - 0.1]) + s[:, None] * toward
    yaw = math.atan2(toward[1], toward[0])
    parts.add(arm, _yaw_quats(np.full(len(s), yaw)), (0.06, 0.04, 0.04), metal * 0.9, L.POLE, instance,
              (0.0, 0.0, 1.0), ground_z=0.0)
    head = arm[-1] + toward * 0.15 - np.array([0, 0, 0.05])
    parts.add(head[None], _yaw_quats(np.array([yaw])), (0.22, 0.1, 0.05), (0.85, 0.85, 0.8), L.POLE, instance,
              (0.0, 0.0, -1.0), ground_z=0.0, lit=False)


def _sign(parts: _Parts, box: Box, obj: int, layout: Layout) -> None:
    centre, ex, ey = _box_frame(box)
    instance = STATIC_INSTANCE_BASE + obj
    bottom, size = box.centre_m[2], box.size_m
    radius = 0.45 * min(size[1], size[2])
    mid = np.array([centre[0], centre[1], bottom + size[2] / 2])
    kind = int(_hash01(layout.style.seed, obj) * 3)
    rr, aa = np.meshgrid(np.linspace(0.03, 1.0, 8) * radius, np.linspace(0, 2 * math.pi, 24, endpoint=False),
                         indexing="ij")
    rr, aa = rr.ravel(), aa.ravel()
    for facing in (1.0, -1.0):  # front faces against the road direction (towards oncoming traffic), back grey
        normal = -ex * facing
        pts = mid[None] + normal * 0.02 + rr[:, None] * (np.cos(aa)[:, None] * ey + np.sin(aa)[:, None]
                                                         * np.array([0, 0, 1.0]))
        if facing > 0:
            ring = rr > 0.75 * radius
            colour = np.where(ring[:, None], [0.75, 0.08, 0.08], [0.92, 0.92, 0.9]) if kind < 2 else \
                np.where(ring[:, None], [0.9, 0.9, 0.9], [0.1, 0.3, 0.7])
            if kind == 1:
                colour = np.where((np.abs(rr * np.sin(aa)) < 0.18 * radius)[:, None] & ~ring[:, None],
                                  [0.92, 0.92, 0.9], [0.75, 0.08, 0.08])
        else:
            colour = np.broadcast_to([0.5, 0.5, 0.52], (len(rr), 3))
        n = np.tile(normal, (len(rr), 1))
        t = np.tile(ey if facing > 0 else -ey, (len(rr), 1))
        up = np.cross(n, t)
        parts.add(pts, _quats_from_frames(t, up, n), (0.05, 0.05, 0.005), colour, L.TRAFFIC_SIGN, instance, n,
                  ground_z=0.0)
    # the post it stands on (a pole, as CARLA labels it)
    zs = np.arange(0.1, bottom + 0.1, 0.15)
    for phi in np.linspace(0, 2 * math.pi, 6, endpoint=False):
        n = np.array([math.cos(phi), math.sin(phi), 0.0])
        pts = np.array([centre[0], centre[1], 0.0]) + n * 0.04 + zs[:, None] * np.array([0, 0, 1.0]) - ex * 0.05
        t = np.array([-n[1], n[0], 0.0])
        parts.add(pts, _quats_from_frames(np.tile(t, (len(zs), 1)), np.tile([0, 0, 1.0], (len(zs), 1)),
                                          np.tile(n, (len(zs), 1))),
                  (0.04, 0.1, 0.005), (0.45, 0.46, 0.48), L.POLE, instance, n, ground_z=0.0)


def _parked_car(parts: _Parts, box: Box, obj: int, layout: Layout) -> None:
    from neural_sensor.assets import make_asset

    asset = make_asset("car", instance_id=STATIC_INSTANCE_BASE + obj, size_m=box.size_m,
                       seed=layout.style.seed * 1000 + obj)
    c, s = math.cos(box.yaw_rad), math.sin(box.yaw_rad)
    pose = np.eye(4)
    pose[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    pose[:3, 3] = box.centre_m
    placed = asset.transformed(pose)
    from neural_sensor.sh import SH_C0

    rgb = placed.sh[:, 0, :] * SH_C0 + 0.5
    parts.add(placed.means, placed.quats, placed.scales, np.clip(rgb, 0, 1), placed.labels, placed.instance,
              (0.0, 0.0, 1.0), opacity=placed.opacities, ground_z=0.0, lit=False)


def _generic_box(parts: _Parts, box: Box, obj: int, colour) -> None:
    centre, ex, ey = _box_frame(box)
    length, width, height = box.size_m
    sp = 0.15
    for normal, along, span, depth in ((ex, ey, width, length), (-ex, ey, width, length), (ey, ex, length, width),
                                       (-ey, ex, length, width)):
        nu, nz = max(2, int(span / sp)), max(2, int(height / sp))
        uu, zz = np.meshgrid((np.arange(nu) + 0.5) / nu - 0.5, (np.arange(nz) + 0.5) / nz, indexing="ij")
        pts = centre + normal * depth / 2 + uu.ravel()[:, None] * span * along + zz.ravel()[:, None] * height * \
            np.array([0, 0, 1.0])
        n = np.tile(normal, (len(pts), 1))
        t = np.tile(along, (len(pts), 1))
        parts.add(pts, _quats_from_frames(t, np.cross(n, t), n), (0.62 * span / nu, 0.62 * height / nz, 0.005),
                  colour, box.label, STATIC_INSTANCE_BASE + obj, n, ground_z=0.0)


def _road_side_sign(layout: Layout, box: Box) -> float:
    """+1 if the road lies to the box's left (its +y), else -1."""
    centre, _, ey = _box_frame(box)
    dists = [_segment_distances(np.array([centre[:2] + 2.0 * sign * ey[:2]]), lane.centre_m)[0][0]
             for sign in (1, -1) for lane in layout.lanes]
    half = len(dists) // 2
    return 1.0 if min(dists[:half]) < min(dists[half:]) else -1.0


def surface_gaussians(occupancy: Occupancy, layout: Layout, *, library: TextureLibrary | None = None,
                      sky: bool = False, shadows: bool = True, progress: bool = False) -> GaussianScene:
    """The textured, lit Gaussian scene of a layout on the surfaces its occupancy bounds.

    Args:
        occupancy: from `build_occupancy(layout, ...)`; the shadow and occlusion source.
        layout: the layout (surfaces follow it; its style picks textures, light and weather).
        library: texture library (default `load_library()`).
        sky: add the sky dome (label SKY); the render background shows where it is absent.
        shadows: ray-march cast shadows (off: sun on every surface facing it).
        progress: a progress bar over the phases (ground, markings and kerbs, each object, light).
    Returns:
        GaussianScene (SH degree 0) with labels and instance ids.
    """
    library = library or load_library()
    palette = light.lighting(layout.style)
    parts = _Parts()
    bar = tqdm(total=3 + len(layout.objects), desc="surfaces", unit="step", disable=not progress)
    road_dist = _road_distance(occupancy)
    eyes = _lane_eyes(layout)
    bar.set_postfix_str("ground")
    _ground(parts, layout, occupancy, library, road_dist)
    bar.update(1)
    bar.set_postfix_str("markings, kerbs")
    _markings(parts, layout, occupancy)
    _kerbs(parts, layout, occupancy, library)
    bar.update(1)
    bar.set_postfix_str("objects")
    for obj, box in enumerate(layout.objects):
        bar.update(1)
        if box.cls == "building":
            _building(parts, box, obj, layout, library, eyes, road_dist, palette)
        elif box.cls == "vegetation":
            _tree(parts, box, obj, layout, library)
        elif box.cls == "pole":
            _pole(parts, box, obj, layout, _road_side_sign(layout, box))
        elif box.cls == "traffic_sign":
            _sign(parts, box, obj, layout)
        elif box.cls == "parked_vehicle":
            _parked_car(parts, box, obj, layout)
        else:
            _generic_box(parts, box, obj, (0.62, 0.63, 0.6))
    g = parts.cat()
    bar.set_postfix_str("shadows, ambient occlusion")
    lit = g["lit"]
    colors = g["albedo"].copy()
    if lit.any():
        pts, nrm = g["means"][lit], g["normals"][lit]
        vis = (light.sun_visibility(occupancy, pts, nrm, palette.sun_dir) if shadows
               else np.ones(len(pts), np.float32))
        ao = light.ambient_occlusion(occupancy, pts, nrm, g["ground_z"][lit])
        colors[lit] = light.shade(g["albedo"][lit], nrm, palette, vis, ao)
    unlit = ~lit & (g["labels"] != L.CAR)
    colors[unlit] = np.clip(g["albedo"][unlit], 0, 1)  # emissive: lamps and lit windows
    car = ~lit & (g["labels"] == L.CAR)
    if car.any():  # the assets carry their own shading; tint them by the sky and sun
        tint = np.clip(palette.sky_rgb * 1.2 + palette.sun_rgb * 0.6, 0.0, 1.2)
        colors[car] = np.clip(g["albedo"][car] * tint, 0, 1)
    scales = np.minimum(g["scales"], MAX_SCALE_M)
    chunks = [(g["means"], g["quats"], scales, g["opacity"], colors, g["labels"], g["instance"])]
    if sky:
        x0, y0, x1, y1 = layout.bounds_m()
        dome = light.sky_dome(palette, np.array([(x0 + x1) / 2, (y0 + y1) / 2]))
        d = dome["means"]
        chunks.append((dome["means"], dome["quats"], dome["scales"], np.full(len(d), 0.99),
                       dome["colors"], np.full(len(d), int(L.SKY), np.uint8), np.zeros(len(d), np.int32)))
    cat = [np.concatenate([c[i] for c in chunks]) for i in range(7)]
    bar.update(1)
    bar.close()
    return GaussianScene.from_colors(cat[0].astype(np.float32), cat[1].astype(np.float32),
                                     cat[2].astype(np.float32), cat[3].astype(np.float32), cat[4].astype(np.float32),
                                     cat[5].astype(np.uint8), cat[6].astype(np.int32))
