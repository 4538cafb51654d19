"""Fusion of many views' pixel-aligned Gaussians into one fog-free scene.

A feed-forward reconstructor predicts, per view, one Gaussian per (half-resolution)
pixel at its predicted depth. Each view's depth is imperfect, so a whole drive's
views put Gaussians in front of / behind the true surfaces; seen from other views
those sit in space the other views see through and render as semi-transparent fog.
`fuse_views` turns the per-view Gaussians into one scene with geometry alone (no
network, no training):

1. cross-view checks: every Gaussian centre is projected into the other views whose
   camera centre lies within `neighbour_radius_m` and compared with that view's depth
   map (the 2 x 2 pixels around the projection):
   - *seen through*: the point is more than `carve_tol` (relative) in front of the
     nearest of those depths, i.e. it lies in space that view observes as empty;
   - *consistent*: it lies within `consistent_tol` (relative) of one of them;
   - otherwise it is behind that view's surface (occluded there: no evidence);
2. free-space carving: a Gaussian seen through by >= `carve_views` other views, or by every other view
   that sees it when those are >= `carve_unanimous`, is dropped; optionally (`hidden_views`) so is
   one that no other view agrees with and that lies behind the surface of >= `hidden_views` of them;
   depth consistency: one consistent in fewer than `min_consistent` other views is
   dropped (or, with `inconsistent_opacity` < 1, kept with its opacity scaled down);
3. duplicates merged: in each `merge_cell_m` cube the Gaussian with the highest opacity;
4. a budget: at most `budget` Gaussians, the most useful kept (opacity x world footprint,
   the area of its two largest axes).

Defaults, chosen by measurement (`python benchmarks/fusion.py --variants ...`, held-out worlds,
six cameras at 480x270 on and 2 m off the recorded path; median PSNR over 3 worlds, 2 poses):
carving by >= 3 views 23.65 dB on path against 22.55 (>= 2), 19.38 (>= 1), 23.36 (>= 4), 21.01
(>= 6), and 18.69 for the merge alone; a 50 m neighbour radius, hidden_views and a 0.1 m merge
cell all within 0.1 dB; requiring one consistent view (min_consistent=1) lost 1.1 dB; a 0.25 m
merge cell is as good as 0.15 m with 18 % fewer Gaussians. carve_tol was re-measured in the run
regime (the runner's fused drive, rig raw PSNR on the path / 3 m off it, 3 worlds): 0.2 27.57 /
26.46, 0.15 27.71 / 26.55, 0.1 27.90 / 26.56, 0.075 27.91 / 26.47, 0.05 27.82 / 26.24; on the
run-regime benchmark's six worlds 0.1 against 0.2 raised the raw medians 0.06-0.09 dB at 0-3 m,
the sky pixels 0.9-1.3 dB, and lowered the depth AbsRel from 0.096-0.110 to 0.079-0.096.

`cross_view_counts` is the fast path (numba, parallel over views) of step 1;
`_cross_view_counts` is its plain-numpy reference twin (one vectorised pass per view
pair), tested against it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numba import njit, prange

from neural_sensor.camera import Camera
from neural_sensor.gaussians import GaussianScene

NEAR_M = 0.05  # points closer than this to a camera (or behind it) give that view no evidence
FUSION_VERSION = 3  # bump when fuse_views' result changes for the same inputs and options (it is in fusion_key)


@dataclass(frozen=True)
class FusionConfig:
    """Options of `fuse_views` (see the module docstring for what each step does)."""

    carve_tol: float = 0.1  # relative: a point closer than (1 - carve_tol) x a view's depth is in its free space
    carve_views: int = 3  # a Gaussian seen through by at least this many other views is carved (0: no carving)
    carve_unanimous: int = 2  # also carved: seen through by every view that sees it, at least this many (0: off)
    consistent_tol: float = 0.1  # relative depth agreement that counts a view as consistent
    min_consistent: int = 0  # drop (or down-weight) a Gaussian consistent in fewer other views (0: off)
    inconsistent_opacity: float = 0.0  # opacity factor for those (0 = drop them)
    hidden_views: int = 0  # drop a Gaussian no other view agrees with that is behind the surface of at least this
    #   many other views and seen through by none (0: off)
    neighbour_radius_m: float = 30.0  # other views taken into account: camera centres within this distance
    merge_cell_m: float = 0.25  # one Gaussian per cube of this edge (0: no merging)
    min_opacity: float = 0.02  # Gaussians fainter than this are dropped first
    budget: int = 600_000  # at most this many Gaussians (0: no budget)

    def __post_init__(self) -> None:
        if not (0.0 <= self.carve_tol < 1.0 and 0.0 <= self.consistent_tol < 1.0):
            raise ValueError(f"FusionConfig: tolerances must be in [0, 1), got carve_tol={self.carve_tol}, "
                             f"consistent_tol={self.consistent_tol}")
        if min(self.carve_views, self.carve_unanimous, self.hidden_views, self.min_consistent, self.budget) < 0:
            raise ValueError("FusionConfig: carve_views, carve_unanimous, hidden_views, min_consistent and budget "
                             "must be >= 0")
        if not 0.0 <= self.inconsistent_opacity <= 1.0:
            raise ValueError(f"FusionConfig: inconsistent_opacity must be in [0, 1], got {self.inconsistent_opacity}")
        if self.merge_cell_m < 0 or self.neighbour_radius_m <= 0:
            raise ValueError("FusionConfig: merge_cell_m must be >= 0 and neighbour_radius_m > 0")


def fusion_key(fusion: str = "carve", config: "FusionConfig | None" = None) -> dict:
    """What a cached reconstruction depends on besides the checkpoint: the fusion, its options and its version
    (for SceneCache inputs, e.g. `inputs["fusion"] = fusion_key()`)."""
    return {"fusion": fusion, "version": FUSION_VERSION, **asdict(config or FusionConfig())}


def view_geometry(cameras: list[Camera], height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per view: world -> camera [V, 3, 4], intrinsics (fx, fy, cx, cy) [V, 4] rescaled to height x width,
    and camera centres [V, 3] (all float64)."""
    world_to_camera = np.stack([c.pose_world_to_camera[:3] for c in cameras]).astype(np.float64)
    intrinsics = np.stack([[c.K[0, 0] * width / c.width, c.K[1, 1] * height / c.height,
                            c.K[0, 2] * width / c.width, c.K[1, 2] * height / c.height] for c in cameras])
    centres = np.stack([c.position_world for c in cameras]).astype(np.float64)
    return world_to_camera, intrinsics.astype(np.float64), centres


def neighbour_lists(centres: np.ndarray, radius_m: float) -> np.ndarray:
    """[V, M] int64: for each view, the other views whose centre is within radius_m, padded with -1."""
    assert centres.ndim == 2 and centres.shape[1] == 3, centres.shape
    dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    close = (dist <= radius_m) & ~np.eye(len(centres), dtype=bool)
    width = max(1, int(close.sum(axis=1).max()))
    out = -np.ones((len(centres), width), np.int64)
    for i, row in enumerate(close):
        idx = np.flatnonzero(row)
        out[i, :len(idx)] = idx
    return out


@njit(cache=True, parallel=True)
def _counts_kernel(points, world_to_camera, intrinsics, depths, neighbours, carve_tol, consistent_tol):
    v_count, n_points = points.shape[0], points.shape[1]
    height, width = depths.shape[1], depths.shape[2]
    seen_through = np.zeros((v_count, n_points), np.int32)
    consistent = np.zeros((v_count, n_points), np.int32)
    observed = np.zeros((v_count, n_points), np.int32)
    for i in prange(v_count):
        for k in range(neighbours.shape[1]):
            j = neighbours[i, k]
            if j < 0:
                continue
            r = world_to_camera[j]
            fx, fy, cx, cy = intrinsics[j, 0], intrinsics[j, 1], intrinsics[j, 2], intrinsics[j, 3]
            for p in range(n_points):
                px, py, pz = np.float64(points[i, p, 0]), np.float64(points[i, p, 1]), np.float64(points[i, p, 2])
                z = r[2, 0] * px + r[2, 1] * py + r[2, 2] * pz + r[2, 3]
                if z <= NEAR_M:
                    continue
                x = r[0, 0] * px + r[0, 1] * py + r[0, 2] * pz + r[0, 3]
                y = r[1, 0] * px + r[1, 1] * py + r[1, 2] * pz + r[1, 3]
                u = fx * (x / z) + cx
                v = fy * (y / z) + cy
                if not (u >= 0.0 and u < width and v >= 0.0 and v < height):
                    continue
                observed[i, p] += 1
                c0 = min(max(int(np.floor(u - 0.5)), 0), width - 1)
                r0 = min(max(int(np.floor(v - 0.5)), 0), height - 1)
                c1 = min(c0 + 1, width - 1)
                r1 = min(r0 + 1, height - 1)
                d00, d01, d10, d11 = depths[j, r0, c0], depths[j, r0, c1], depths[j, r1, c0], depths[j, r1, c1]
                nearest = min(min(d00, d01), min(d10, d11))
                if z < (1.0 - carve_tol) * nearest:
                    seen_through[i, p] += 1
                elif (abs(z - d00) <= consistent_tol * d00 or abs(z - d01) <= consistent_tol * d01
                      or abs(z - d10) <= consistent_tol * d10 or abs(z - d11) <= consistent_tol * d11):
                    consistent[i, p] += 1
    return seen_through, consistent, observed


def _check_counts_inputs(points, world_to_camera, intrinsics, depths, neighbours):
    v = points.shape[0]
    assert points.ndim == 3 and points.shape[2] == 3, points.shape
    assert world_to_camera.shape == (v, 3, 4), world_to_camera.shape
    assert intrinsics.shape == (v, 4), intrinsics.shape
    assert depths.ndim == 3 and depths.shape[0] == v, depths.shape
    assert neighbours.ndim == 2 and neighbours.shape[0] == v, neighbours.shape


def cross_view_counts(points: np.ndarray, world_to_camera: np.ndarray, intrinsics: np.ndarray, depths: np.ndarray,
                      neighbours: np.ndarray, carve_tol: float,
                      consistent_tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every view's points: how many neighbouring views see through them, agree with them, see them at all.

    Args:
        points: [V, P, 3] world-frame points of each view (e.g. its Gaussian centres).
        world_to_camera: [V, 3, 4]; intrinsics: [V, 4] (fx, fy, cx, cy) at the depth maps' size.
        depths: [V, h, w] each view's depth map (camera z, metres), pixel centres at integer + 0.5.
        neighbours: [V, M] the views each view is checked against (-1 = none).
        carve_tol, consistent_tol: relative tolerances (see the module docstring).
    Returns:
        seen_through [V, P] int32, consistent [V, P] int32, observed [V, P] int32 (views whose image holds the point,
        in front of the camera: seen through, consistent or occluded there).
    """
    _check_counts_inputs(points, world_to_camera, intrinsics, depths, neighbours)
    return _counts_kernel(np.ascontiguousarray(points, np.float32), np.ascontiguousarray(world_to_camera, np.float64),
                          np.ascontiguousarray(intrinsics, np.float64), np.ascontiguousarray(depths, np.float32),
                          np.ascontiguousarray(neighbours, np.int64), float(carve_tol), float(consistent_tol))


def _cross_view_counts(points: np.ndarray, world_to_camera: np.ndarray, intrinsics: np.ndarray, depths: np.ndarray,
                       neighbours: np.ndarray, carve_tol: float,
                      consistent_tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference twin of `cross_view_counts`: plain numpy, one vectorised pass per (view, neighbour) pair."""
    _check_counts_inputs(points, world_to_camera, intrinsics, depths, neighbours)
    v_count, n_points = points.shape[:2]
    height, width = depths.shape[1:]
    seen_through = np.zeros((v_count, n_points), np.int32)
    consistent = np.zeros((v_count, n_points), np.int32)
    observed = np.zeros((v_count, n_points), np.int32)
    depths = depths.astype(np.float32)
    for i in range(v_count):
        p = points[i].astype(np.float32).astype(np.float64)
        for j in neighbours[i]:
            if j < 0:
                continue
            r = world_to_camera[j]
            z = r[2, 0] * p[:, 0] + r[2, 1] * p[:, 1] + r[2, 2] * p[:, 2] + r[2, 3]
            x = r[0, 0] * p[:, 0] + r[0, 1] * p[:, 1] + r[0, 2] * p[:, 2] + r[0, 3]
            y = r[1, 0] * p[:, 0] + r[1, 1] * p[:, 1] + r[1, 2] * p[:, 2] + r[1, 3]
            front = z > NEAR_M
            safe_z = np.where(front, z, 1.0)
            u = intrinsics[j, 0] * (x / safe_z) + intrinsics[j, 2]
            v = intrinsics[j, 1] * (y / safe_z) + intrinsics[j, 3]
            inside = front & (u >= 0) & (u < width) & (v >= 0) & (v < height)
            idx = np.flatnonzero(inside)
            u, v, z = u[idx], v[idx], z[idx]
            c0 = np.clip(np.floor(u - 0.5).astype(np.int64), 0, width - 1)
            r0 = np.clip(np.floor(v - 0.5).astype(np.int64), 0, height - 1)
            c1, r1 = np.minimum(c0 + 1, width - 1), np.minimum(r0 + 1, height - 1)
            four = np.stack([depths[j, r0, c0], depths[j, r0, c1], depths[j, r1, c0], depths[j, r1, c1]])
            four = four.astype(np.float64)
            through = z < (1.0 - carve_tol) * four.min(axis=0)
            agree = ~through & (np.abs(z[None] - four) <= consistent_tol * four).any(axis=0)
            seen_through[i, idx] += through
            consistent[i, idx] += agree
            observed[i, idx] += 1
    return seen_through, consistent, observed


def merge_cells(means: np.ndarray, scores: np.ndarray, cell_m: float) -> np.ndarray:
    """Indices to keep (sorted): in each occupied cube of edge cell_m, the Gaussian with the highest score.

    Args: means [N, 3], scores [N]. Returns: [M] int64."""
    assert means.ndim == 2 and means.shape[1] == 3 and scores.shape == (len(means),), (means.shape, scores.shape)
    keys = np.floor(means / cell_m).astype(np.int64)
    order = np.lexsort((-scores, keys[:, 2], keys[:, 1], keys[:, 0]))
    sorted_keys = keys[order]
    first = np.ones(len(order), bool)
    first[1:] = np.any(sorted_keys[1:] != sorted_keys[:-1], axis=1)
    return np.sort(order[first])


def usefulness(scene_scales: np.ndarray, opacities: np.ndarray) -> np.ndarray:
    """[N] opacity x footprint (product of the two largest scales, m^2): the budget keeps the largest."""
    assert scene_scales.ndim == 2 and scene_scales.shape[1] == 3 and opacities.shape == (len(scene_scales),)
    s = np.sort(scene_scales.astype(np.float64), axis=1)
    return opacities.astype(np.float64) * s[:, 1] * s[:, 2]


def fuse_views(per_view_gaussians: GaussianScene, depths: np.ndarray, cameras: list[Camera],
               config: FusionConfig | None = None, *, return_stats: bool = False):
    """Fuse V views' pixel-aligned Gaussians into one scene without fog (see the module docstring).

    Args:
        per_view_gaussians: V * h * w Gaussians, view-major, then row-major over each view's h x w pixel grid
            (Gaussian v * h * w + row * w + col belongs to pixel (row, col) of view v).
        depths: [V, h, w] each view's depth map (camera z, metres) of those Gaussians.
        cameras: V Cameras (any resolution with the depth maps' aspect; intrinsics are rescaled to h x w).
        config: FusionConfig (defaults if None).
        return_stats: also return a dict of counts (input, after opacity / carving / consistency / merge / budget).
    Returns:
        the fused GaussianScene (and the stats dict if return_stats).
    """
    config = config or FusionConfig()
    idx, opacities, stats = fusion_selection(per_view_gaussians.means, per_view_gaussians.scales,
                                             per_view_gaussians.opacities, depths, cameras, config)
    fused = per_view_gaussians.subset(idx)
    if config.min_consistent > 0 and config.inconsistent_opacity > 0:
        fused = fused.replace(opacities=opacities)
    # kept in space-filling-curve order: the renderers cull runs of consecutive Gaussians by a bounding sphere,
    # and view-major order makes those runs span a view's whole depth range (12 m median on the demo drive)
    fused = fused.subset(morton_order(fused.means, SPATIAL_ORDER_CELL_M))
    return (fused, stats) if return_stats else fused


SPATIAL_ORDER_CELL_M = 0.25  # cell of the Morton order of a fused scene


def morton_order(points: np.ndarray, cell_m: float) -> np.ndarray:
    """[M] int64: an order of points [M, 3] along a Z-order (Morton) curve of cubes of edge cell_m (stable)."""
    assert points.ndim == 2 and points.shape[1] == 3, points.shape
    if len(points) == 0:
        return np.zeros(0, np.int64)
    cells = np.floor((points.astype(np.float64) - points.min(axis=0)) / cell_m).astype(np.int64)
    cells = np.clip(cells, 0, (1 << 21) - 1)
    code = np.zeros(len(points), np.int64)
    for bit in range(21):
        for axis in range(3):
            code |= ((cells[:, axis] >> bit) & 1) << (3 * bit + axis)
    return np.argsort(code, kind="stable")


def fusion_selection(means: np.ndarray, scales: np.ndarray, opacities: np.ndarray, depths: np.ndarray,
                     cameras: list[Camera], config: FusionConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """Which per-view Gaussians `fuse_views` keeps: the geometry alone, so a training step can select from its
    differentiable tensors with the same rule the run uses.

    Args:
        means [V * h * w, 3], scales [V * h * w, 3], opacities [V * h * w]: the per-view Gaussians (layout as in
            `fuse_views`); depths [V, h, w]; cameras: V Cameras; config: FusionConfig.
    Returns:
        idx [M] int64 (sorted), the kept Gaussians' opacities [M] (scaled where `inconsistent_opacity` applies)
        and the stats dict of `fuse_views`.
    """
    depths = np.asarray(depths, dtype=np.float32)
    assert depths.ndim == 3, depths.shape
    v_count, height, width = depths.shape
    n = v_count * height * width
    assert len(cameras) == v_count, (len(cameras), v_count)
    assert means.shape == (n, 3) and scales.shape == (n, 3) and opacities.shape == (n,), (means.shape, depths.shape)
    assert np.all(np.isfinite(depths)) and np.all(depths > 0), "depths must be finite and positive"
    stats = {"input": n}
    keep = opacities >= config.min_opacity
    stats["after_min_opacity"] = int(keep.sum())
    opacities = np.array(opacities, dtype=np.float32)
    if config.carve_views > 0 or config.min_consistent > 0 or config.hidden_views > 0:
        world_to_camera, intrinsics, centres = view_geometry(cameras, height, width)
        neighbours = neighbour_lists(centres, config.neighbour_radius_m)
        points = np.ascontiguousarray(means, dtype=np.float32).reshape(v_count, height * width, 3)
        seen_through, consistent, observed = cross_view_counts(points, world_to_camera, intrinsics, depths,
                                                               neighbours, config.carve_tol, config.consistent_tol)
        seen_through, consistent, observed = seen_through.reshape(-1), consistent.reshape(-1), observed.reshape(-1)
        if config.carve_views > 0:
            carved = seen_through >= config.carve_views
            if config.carve_unanimous > 0:
                carved |= (seen_through >= config.carve_unanimous) & (seen_through == observed)
            keep &= ~carved
        if config.hidden_views > 0:
            hidden = observed - seen_through - consistent
            keep &= ~((consistent == 0) & (seen_through == 0) & (hidden >= config.hidden_views))
        stats["after_carving"] = int(keep.sum())
        if config.min_consistent > 0:
            weak = consistent < config.min_consistent
            if config.inconsistent_opacity > 0:
                opacities = np.where(weak, opacities * config.inconsistent_opacity, opacities).astype(np.float32)
                keep &= opacities >= config.min_opacity
            else:
                keep &= ~weak
        stats["after_consistency"] = int(keep.sum())
    idx = np.flatnonzero(keep)
    if config.merge_cell_m > 0 and len(idx):
        idx = idx[merge_cells(means[idx], opacities[idx], config.merge_cell_m)]
    stats["after_merge"] = len(idx)
    if config.budget and len(idx) > config.budget:
        score = usefulness(scales[idx], opacities[idx])
        idx = np.sort(idx[np.argpartition(-score, config.budget - 1)[:config.budget]])
    stats["output"] = len(idx)
    return idx, opacities[idx], stats
