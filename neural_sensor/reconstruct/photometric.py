"""Test-time photometric refinement of the network's per-view depths: a local plane sweep.

The reconstructor's depth is a softmax over 32 inverse-depth planes between 1 and 80 m, so
neighbouring planes lie 0.032 1/m apart (at 10 m: 7.6 and 14.7 m) and the soft-argmin between
them scatters a facade's Gaussians in front of and behind the wall; views 4 m apart at 160x96
barely resolve the far end (side cameras' median predicted / true depth 0.37 at 32-64 m). Fused,
the front layer of that scatter wins the render (docs/results.md, "Open problems in detail").

`refine_depths` sweeps each pixel's depth finely around the network's estimate, as classic
multi-view stereo does: candidates `candidates` inverse depths within +- `inverse_depth_span`
1/m of the network's (the prior's error is about one plane in inverse depth, so the span is
narrow near the car and wide far away), each scored by the normalised cross-correlation (NCC) of a
fronto-parallel patch (`patch` x `patch` samples, `patch_step_px` apart, grey levels of the
network's input images) with its reprojection into the view's `neighbours` nearest views that look
the same way (`model.neighbour_views`, the cost volume's partners); a candidate's score is the
mean of its best two neighbours' NCCs (one occluded neighbour does not veto it; a candidate only one
neighbour sees scores that one's NCC) minus
`prior_weight` x its offset as a fraction of the span. The best candidate (refined to a parabola's
vertex) replaces the network's depth only where the patch has texture (grey standard deviation >=
`min_texture`), matches well (score >= `min_ncc`) and beats the network's own depth by `margin`;
elsewhere (sky, flat walls, out of view) the network's depth stays. `move_along_rays` then slides
each Gaussian along its pixel ray to the refined depth, its extent scaled alike, so its own view
sees it exactly where it was.

The far sweep. The network's far planes are its coarsest (13.1, 22.5, then 80 m), and where a far
surface shows through a gap (a crossing street seen between two corner buildings) it puts the surface
near the gap's edges, at half its true depth, beyond the local span's reach. Those too-near depths keep
the other views from carving the Gaussians they place in the gap: the ghost facades across side streets
3 m off the path (docs/results.md, "2026-12-04 (evening)"). So a pixel whose depth after the local sweep
lies beyond `far_from_m` is also scored at `far_candidates` depths evenly spaced in inverse depth from
`far_max_m` to 0.75 x far_from_m (`far_inverse_depths`); the best of them replaces it only where it
correlates almost perfectly (score >= `far_min_ncc`) and beats the local result's own score by
`far_margin`, moved between candidates to the peak of the parabola through its and its two neighbours'
scores (`far_vertex`; the candidates lie ~10 % apart at 30 m). A wide sweep finds false matches on
repeated texture: these bounds keep 1-2 % of the pixels, and the 40 m limit keeps the false ones from
flying off (out to 150 m, 7-12 % of the replaced pixels went beyond 60 m, all of them wrong, and one rig
camera's depth AbsRel rose from 0.20 to 0.53 where they showed through its holes).

A reference twin in numpy (`_refine_depths_reference`, the same arithmetic in float64, a view at a
time) is tested against the compiled kernel.

Measured (docs/results.md, "2026-12-02 (third round)"): the run-regime benchmark's six held-out worlds,
raw PSNR +1.16 / +1.18 / +0.98 / +0.65 dB at 0 / 1 / 2 / 3 m, depth AbsRel 0.124 -> 0.096 on the path; about
2.3 s per 100 views of 160x96 on two cores. The far sweep and its settings: docs/results.md, "2026-12-04
(evening)"; it adds about 40 % to the refinement's time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numba as nb
import numpy as np

from neural_sensor.camera import Camera

GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)  # Rec. 601 luma
FAR_LIMIT_INVERSE_M = 1.0 / 150.0  # no candidate beyond 150 m
_NO_SCORE = -2.0  # below any NCC: no neighbour could score the candidate
_MAX_NCC = 1.001  # above any NCC (1 in exact arithmetic; float32 rounding may pass it by a hair)


@dataclass(frozen=True)
class DepthRefineConfig:
    """Options of `refine_depths`."""

    neighbours: int = 4  # views each view is matched against (model.neighbour_views)
    inverse_depth_span: float = 0.03  # 1/m either side of the network's inverse depth (about one of its planes)
    candidates: int = 25  # inverse depths swept across the span (odd: the network's own depth is the middle one;
    #   every candidate, the middle one included, is kept within 150 m, FAR_LIMIT_INVERSE_M)
    patch: int = 5  # patch side in samples
    patch_step_px: float = 1.5  # samples apart, in pixels of the network's images
    min_texture: float = 0.01  # a patch whose grey levels (0-1) vary less keeps the network's depth
    min_ncc: float = 0.5  # the best candidate's score must reach this ...
    margin: float = 0.02  # ... and beat the network's depth's score by this
    prior_weight: float = 0.1  # score penalty per span of offset from the network's depth
    far_from_m: float = 6.0  # a depth beyond this (after the local sweep) also tries the far sweep (0: none)
    far_max_m: float = 40.0  # the far sweep's farthest depth
    far_candidates: int = 60  # depths of the far sweep (far_inverse_depths)
    far_min_ncc: float = 0.85  # the far sweep's best must reach this score ...
    far_margin: float = 0.15  # ... and beat the depth it would replace by this
    far_vertex: bool = True  # the far sweep's depth moved between candidates to the peak of a parabola through
    #   the best's and its two neighbours' scores (as the local sweep's); False: the best candidate as it is

    def __post_init__(self) -> None:
        if self.candidates < 3 or self.candidates % 2 == 0:
            raise ValueError(f"DepthRefineConfig: candidates must be odd and >= 3, got {self.candidates}")
        if self.neighbours < 1 or self.patch < 2 or not self.inverse_depth_span > 0 or not self.patch_step_px > 0:
            raise ValueError(f"DepthRefineConfig: neighbours >= 1, patch >= 2, a positive span and step: {self}")
        if not (self.min_texture > 0 and -1.0 <= self.min_ncc <= 1.0 and self.margin >= 0 and self.prior_weight >= 0):
            raise ValueError(f"DepthRefineConfig: min_texture > 0 (a flat patch has no correlation), min_ncc in "
                             f"[-1, 1], margin and prior_weight >= 0: {self}")
        if self.far_from_m < 0 or self.far_max_m <= self.far_from_m or self.far_candidates < 2 or \
                not -1.0 <= self.far_min_ncc <= 1.0 or self.far_margin < 0:
            raise ValueError(f"DepthRefineConfig: far_from_m >= 0 (0: no far sweep), far_max_m > far_from_m, "
                             f"far_candidates >= 2, far_min_ncc in [-1, 1], far_margin >= 0: {self}")

    def cache_inputs(self) -> dict:
        """What a cached reconstruction depends on."""
        return {"depth_refinement": asdict(self)}


DEFAULT_DEPTH_REFINE = DepthRefineConfig()


def far_inverse_depths(config: DepthRefineConfig) -> np.ndarray:
    """[far_candidates] float64: the far sweep's inverse depths (1/m), evenly spaced from 1 / far_max_m to
    1 / (0.75 x far_from_m); empty when far_from_m is 0."""
    if config.far_from_m <= 0:
        return np.zeros(0)
    return np.linspace(1.0 / config.far_max_m, 1.0 / (0.75 * config.far_from_m), config.far_candidates)


def depth_refine_config(no_refinement: bool = False) -> DepthRefineConfig | None:
    """The depth refinement a `--no-depth-refinement` option asks for: DEFAULT_DEPTH_REFINE, or None when set."""
    return None if no_refinement else DEFAULT_DEPTH_REFINE


def depth_refine_inputs(config: DepthRefineConfig | None) -> dict:
    """{"depth_refinement": its settings, or None when there is none}: a reconstruction's cache key and meta."""
    return config.cache_inputs() if config is not None else {"depth_refinement": None}


def refine_depths(depth_m: np.ndarray, images: np.ndarray, cameras: list[Camera], skip: np.ndarray,
                  config: DepthRefineConfig = DEFAULT_DEPTH_REFINE) -> np.ndarray:
    """Each view's depth refined against its neighbour views (see the module docstring).

    Args:
        depth_m: [V, h, w] the network's depth (camera z, metres), h x w a fraction of the images' size.
        images: [V, H, W, 3] float RGB in [0, 1], the views the depths were predicted from.
        cameras: V Cameras of the images (H x W).
        skip: [V, h, w] bool, pixels left as they are (the network's sky).
    Returns:
        [V, h, w] float32 depths: refined where the match is confident, the input's elsewhere.
    """
    return _refine(depth_m, images, cameras, skip, config, _refine_kernel)


def move_along_rays(means_world: np.ndarray, scales: np.ndarray, depth_before_m: np.ndarray,
                    depth_after_m: np.ndarray, cameras: list[Camera]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-aligned Gaussians moved to new depths along their rays.

    Args:
        means_world: [V * h * w, 3] and scales [V * h * w, 3], view-major, row-major over each view's pixels (as
            `model.predict_views` makes them); depth_before_m / depth_after_m: [V, h, w]; cameras: V Cameras.
    Returns:
        (means_world, scales) float32: each Gaussian at depth_after / depth_before of its distance from its
        camera's centre, its scales multiplied alike (its own view sees it where it was, as large); where either
        depth is not a positive finite number the Gaussian stays as it is.
    """
    v, h, w = depth_before_m.shape
    assert depth_after_m.shape == (v, h, w) and len(cameras) == v, (depth_after_m.shape, len(cameras))
    assert means_world.shape == (v * h * w, 3) and scales.shape == (v * h * w, 3), (means_world.shape, scales.shape)
    usable = (depth_before_m > 0) & np.isfinite(depth_before_m) & (depth_after_m > 0) & np.isfinite(depth_after_m)
    ratio = np.where(usable, depth_after_m / np.where(usable, depth_before_m, 1.0), 1.0)  # unusable: left in place
    ratio = ratio.reshape(-1, 1).astype(np.float32)
    centres = np.repeat(np.stack([c.position_world for c in cameras]).astype(np.float32), h * w, axis=0)
    return ((centres + (means_world - centres) * ratio).astype(np.float32), (scales * ratio).astype(np.float32))


def _refine(depth_m, images, cameras, skip, config, kernel) -> np.ndarray:
    """Shared set-up of `refine_depths` and its twin: checks, grey images, neighbours, projection maps."""
    depth_m = np.asarray(depth_m, np.float32)
    images = np.asarray(images, np.float32)
    assert depth_m.ndim == 3 and skip.shape == depth_m.shape, (depth_m.shape, np.shape(skip))
    assert images.ndim == 4 and images.shape[0] == len(cameras) == depth_m.shape[0] and images.shape[3] == 3, (
        images.shape, len(cameras), depth_m.shape)
    assert all(c.width == images.shape[2] and c.height == images.shape[1] for c in cameras), "cameras != images"
    from neural_sensor.reconstruct.model import neighbour_views

    grey = np.ascontiguousarray(images @ GREY_WEIGHTS, dtype=np.float32)
    poses = np.stack([c.pose_camera_to_world for c in cameras])
    neighbours = neighbour_views(poses, config.neighbours)
    pixel_to_neighbour, neighbour_offset = _projections(cameras, poses, neighbours)
    inverse_offsets = np.linspace(-config.inverse_depth_span, config.inverse_depth_span, config.candidates)
    inverse_offsets[config.candidates // 2] = 0.0
    side = (np.arange(config.patch) - (config.patch - 1) / 2.0) * config.patch_step_px
    patch = np.stack(np.meshgrid(side, side), axis=-1).reshape(-1, 2)
    valid = ~skip & (depth_m > 0) & np.isfinite(depth_m)
    refined = kernel(np.where(valid, depth_m, 0.0).astype(np.float32), grey, pixel_to_neighbour, neighbour_offset,
                     neighbours, inverse_offsets.astype(np.float32), patch.astype(np.float32), config)
    return np.where(valid, refined, depth_m)  # the kernel skips (and returns as 0) what it was not to refine


def _projections(cameras: list[Camera], poses: np.ndarray, neighbours: np.ndarray):
    """For view v and its neighbour n: the 3 x 3 map A taking a pixel q (homogeneous, continuous coordinates) of
    v to A q such that the point at depth d on q's ray projects into n at (d A q + b) up to scale; [V, N, 3, 3]
    and b [V, N, 3] float32 (A = K_n R_n^T R_v K_v^-1, b = K_n R_n^T (t_v - t_n))."""
    v_count, n_count = neighbours.shape
    maps = np.zeros((v_count, n_count, 3, 3), np.float64)
    offsets = np.zeros((v_count, n_count, 3), np.float64)
    for v in range(v_count):
        rotation, centre, k_inverse = poses[v, :3, :3], poses[v, :3, 3], np.linalg.inv(cameras[v].K)
        for n, other in enumerate(neighbours[v]):
            if other < 0:
                continue
            to_other = cameras[other].K @ poses[other, :3, :3].T
            maps[v, n] = to_other @ rotation @ k_inverse
            offsets[v, n] = to_other @ (centre - poses[other, :3, 3])
    return maps.astype(np.float32), offsets.astype(np.float32)


def _refine_kernel(depth, grey, maps, offsets, neighbours, inverse_offsets, patch, config) -> np.ndarray:
    return _sweep(depth, grey, maps, offsets, neighbours, inverse_offsets, patch, np.float32(config.min_texture),
                  np.float32(config.min_ncc), np.float32(config.margin), np.float32(config.prior_weight),
                  np.float32(config.far_from_m), far_inverse_depths(config).astype(np.float32),
                  np.float32(config.far_min_ncc), np.float32(config.far_margin), config.far_vertex)


@nb.njit(inline="always", fastmath=True)
def _bilinear(image, x, y):
    """image [H, W] at continuous (x, y) (pixel centres at integer + 0.5); the caller keeps it inside."""
    x -= 0.5
    y -= 0.5
    x0 = int(x)
    y0 = int(y)
    fx = x - x0
    fy = y - y0
    return ((image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx) * (1 - fy)
            + (image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx) * fy)


@nb.njit(inline="always")
def _inside(x, y, width, height):
    return 0.5 <= x < width - 0.501 and 0.5 <= y < height - 0.501


@nb.njit(inline="always", fastmath=True)
def _score(d, v, grey, rays, offsets, neighbours, source, nccs):
    """The score of depth d for view v's patch (source: its normalised grey samples; rays: their rays mapped into
    each neighbour): the mean of the best two neighbours' NCCs (_best_two_mean), _NO_SCORE if none sees it."""
    width, height = grey.shape[2], grey.shape[1]
    p_count = source.shape[0]
    count = 0
    for n in range(neighbours.shape[1]):
        k = neighbours[v, n]
        if k < 0:
            continue
        t1 = 0.0
        t2 = 0.0
        cross = 0.0
        seen = True
        for p in range(p_count):
            z = d * rays[n, p, 2] + offsets[v, n, 2]
            if z < 0.1:
                seen = False
                break
            x = (d * rays[n, p, 0] + offsets[v, n, 0]) / z
            y = (d * rays[n, p, 1] + offsets[v, n, 1]) / z
            if not _inside(x, y, width, height):
                seen = False
                break
            value = _bilinear(grey[k], x, y)
            t1 += value
            t2 += value * value
            cross += value * source[p]
        if not seen:
            continue
        variance = t2 / p_count - (t1 / p_count) ** 2
        if variance < 1e-8:
            continue
        nccs[count] = cross / p_count / np.sqrt(variance)
        count += 1
    return _best_two_mean(nccs, count)


@nb.njit(parallel=True, fastmath=True, cache=True)
def _sweep(depth, grey, maps, offsets, neighbours, inverse_offsets, patch, min_texture, min_ncc, margin, prior_weight,
           far_from_m, far_inverse, far_min_ncc, far_margin, far_vertex):
    v_count, h, w = depth.shape
    height, width = grey.shape[1], grey.shape[2]
    scale_x = width / w
    scale_y = height / h
    n_count = neighbours.shape[1]
    m_count = inverse_offsets.shape[0]
    p_count = patch.shape[0]
    middle = m_count // 2
    span = inverse_offsets[m_count - 1]
    f_count = far_inverse.shape[0]
    out = depth.copy()
    for row in nb.prange(v_count * h):
        v = row // h
        i = row % h
        source = np.empty(p_count, np.float32)
        rays = np.empty((n_count, p_count, 3), np.float32)
        scores = np.empty(m_count, np.float32)
        far_scores = np.empty(max(f_count, 1), np.float32)
        nccs = np.empty(n_count, np.float32)
        for j in range(w):
            d0 = depth[v, i, j]
            if d0 <= 0.0:
                continue
            u = (j + 0.5) * scale_x
            t = (i + 0.5) * scale_y
            inside = True
            s1 = 0.0
            s2 = 0.0
            for p in range(p_count):
                x = u + patch[p, 0]
                y = t + patch[p, 1]
                if not _inside(x, y, width, height):
                    inside = False
                    break
                value = _bilinear(grey[v], x, y)
                source[p] = value
                s1 += value
                s2 += value * value
            if not inside:
                continue
            mean = s1 / p_count
            variance = s2 / p_count - mean * mean
            if variance < min_texture * min_texture:
                continue
            std = np.sqrt(variance)
            for p in range(p_count):
                source[p] = (source[p] - mean) / std
            for n in range(n_count):
                if neighbours[v, n] < 0:
                    continue
                for p in range(p_count):
                    x = u + patch[p, 0]
                    y = t + patch[p, 1]
                    for c in range(3):
                        rays[n, p, c] = maps[v, n, c, 0] * x + maps[v, n, c, 1] * y + maps[v, n, c, 2]
            inverse0 = 1.0 / d0
            for m in range(m_count):
                scores[m] = _score(1.0 / max(inverse0 + inverse_offsets[m], FAR_LIMIT_INVERSE_M), v, grey, rays,
                                   offsets, neighbours, source, nccs)
            best = -1
            best_value = -1e30
            for m in range(m_count):
                if scores[m] <= _NO_SCORE:
                    continue
                value = scores[m] - prior_weight * abs(inverse_offsets[m]) / span
                if value > best_value:
                    best_value = value
                    best = m
            if best >= 0 and scores[best] >= min_ncc and scores[best] >= scores[middle] + margin:
                offset = inverse_offsets[best] + _peak_offset(scores, best, inverse_offsets)
                out[v, i, j] = 1.0 / max(inverse0 + offset, FAR_LIMIT_INVERSE_M)
            # the far sweep: a depth beyond far_from_m may lie farther than the local span reaches
            if far_from_m > 0.0 and out[v, i, j] > far_from_m:
                here = _score(out[v, i, j], v, grey, rays, offsets, neighbours, source, nccs)
                if here + far_margin > _MAX_NCC:  # no correlation can beat it by the margin
                    continue
                far_best = -1
                far_value = np.float32(_NO_SCORE)
                for f in range(f_count):
                    far_scores[f] = _score(1.0 / far_inverse[f], v, grey, rays, offsets, neighbours, source, nccs)
                    if far_scores[f] > far_value:
                        far_value = far_scores[f]
                        far_best = f
                if far_best >= 0 and far_value >= far_min_ncc and far_value > here + far_margin:
                    inverse = far_inverse[far_best]
                    if far_vertex:
                        inverse += _peak_offset(far_scores, far_best, far_inverse)
                    out[v, i, j] = 1.0 / inverse
    return out


@nb.njit(inline="always")
def _best_two_mean(nccs, count):
    if count == 0:
        return _NO_SCORE
    best1 = -3.0
    best2 = -3.0
    for c in range(count):
        if nccs[c] > best1:
            best2 = best1
            best1 = nccs[c]
        elif nccs[c] > best2:
            best2 = nccs[c]
    return best1 if count == 1 else 0.5 * (best1 + best2)


@nb.njit(inline="always")
def _vertex(left, centre, right):
    """Offset in [-0.5, 0.5] samples of a parabola's peak through three scores (0 unless it peaks)."""
    denominator = left - 2.0 * centre + right
    if denominator >= 0.0:
        return 0.0
    return min(0.5, max(-0.5, 0.5 * (left - right) / denominator))


@nb.njit(inline="always")
def _peak_offset(scores, best, values):
    """How far the peak of the parabola through the scores of candidate `best` and its two neighbours lies from
    values[best] (candidates `values`, evenly spaced; 0 at an end or where a neighbour could not score)."""
    if 0 < best < values.shape[0] - 1 and scores[best - 1] > _NO_SCORE and scores[best + 1] > _NO_SCORE:
        return _vertex(scores[best - 1], scores[best], scores[best + 1]) * (values[best + 1] - values[best - 1]) * 0.5
    return 0.0


# ---------------------------------------------------------------------------------------------- reference twin
def _refine_depths_reference(depth_m, images, cameras, skip, config: DepthRefineConfig = DEFAULT_DEPTH_REFINE):
    """`refine_depths` in plain numpy (float64, a view at a time): the twin its kernel is tested against."""
    return _refine(depth_m, images, cameras, skip, config, _reference_kernel)


def _reference_kernel(depth, grey, maps, offsets, neighbours, inverse_offsets, patch, config) -> np.ndarray:
    grey = grey.astype(np.float64)
    v_count, h, w = depth.shape
    height, width = grey.shape[1:]
    inverse_offsets = inverse_offsets.astype(np.float64)
    m_count = len(inverse_offsets)
    out = depth.copy()

    def sample(image, x, y):  # -> values, inside
        inside = (x >= 0.5) & (x < width - 0.501) & (y >= 0.5) & (y < height - 0.501)
        xs, ys = np.where(inside, x, 1.0) - 0.5, np.where(inside, y, 1.0) - 0.5
        x0, y0 = xs.astype(np.int64), ys.astype(np.int64)
        fx, fy = xs - x0, ys - y0
        value = ((image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx) * (1 - fy)
                 + (image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx) * fy)
        return value, inside

    for v in range(v_count):
        ii, jj = np.nonzero(depth[v] > 0)
        if len(ii) == 0:
            continue
        u = (jj + 0.5) * (width / w)
        t = (ii + 0.5) * (height / h)
        x = u[:, None] + patch[None, :, 0].astype(np.float64)  # [Q, P]
        y = t[:, None] + patch[None, :, 1].astype(np.float64)
        source, inside = sample(grey[v], x, y)
        mean = source.mean(axis=1, keepdims=True)
        std = np.sqrt(np.maximum((source ** 2).mean(axis=1, keepdims=True) - mean ** 2, 0.0))
        textured = inside.all(axis=1) & (std[:, 0] >= config.min_texture)
        source = (source - mean) / np.where(std > 0, std, 1.0)
        inverse0 = 1.0 / depth[v, ii, jj].astype(np.float64)
        live = [(n, k) for n, k in enumerate(neighbours[v]) if k >= 0]
        if not live:
            continue
        ray_maps = {n: np.einsum("ab,qpb->qpa", maps[v, n].astype(np.float64), np.stack([x, y, np.ones_like(x)], -1))
                    for n, _ in live}

        def scores_of(d):  # d [Q, M] depths -> [Q, M] the mean of the best two neighbours' NCCs, or _NO_SCORE
            nccs = []  # per neighbour [Q, M], nan where it cannot score
            for n, k in live:
                hom = d[:, :, None, None] * ray_maps[n][:, None] + offsets[v, n].astype(np.float64)  # [Q, M, P, 3]
                z = hom[..., 2]
                front = z >= 0.1
                zs = np.where(front, z, 1.0)
                values, seen = sample(grey[k], hom[..., 0] / zs, hom[..., 1] / zs)
                seen &= front
                variance = (values ** 2).mean(-1) - values.mean(-1) ** 2
                ok = seen.all(-1) & (variance >= 1e-8)
                ncc = (values * source[:, None]).mean(-1) / np.sqrt(np.where(ok, variance, 1.0))
                nccs.append(np.where(ok, ncc, np.nan))
            stack = np.sort(np.nan_to_num(np.stack(nccs), nan=-np.inf), axis=0)[::-1]  # best first
            count = np.isfinite(stack).sum(axis=0)
            best_two = np.where(count >= 2, 0.5 * (stack[0] + stack[min(1, len(stack) - 1)]), stack[0])
            return np.where(count == 0, _NO_SCORE, best_two)

        scores = scores_of(1.0 / np.maximum(inverse0[:, None] + inverse_offsets[None], FAR_LIMIT_INVERSE_M))  # [Q, M]
        penalised = np.where(scores > _NO_SCORE,
                             scores - config.prior_weight * np.abs(inverse_offsets) / inverse_offsets[-1], -np.inf)
        best = np.argmax(penalised, axis=1)
        rows = np.arange(len(ii))
        best_score = scores[rows, best]
        accept = (textured & np.isfinite(penalised[rows, best]) & (best_score >= config.min_ncc)
                  & (best_score >= scores[:, m_count // 2] + config.margin))
        offset = inverse_offsets[best] + _peak_offsets(scores, best, inverse_offsets)
        refined = 1.0 / np.maximum(inverse0 + offset, FAR_LIMIT_INVERSE_M)
        result = np.where(accept, refined, depth[v, ii, jj])
        far_inverse = far_inverse_depths(config)
        far = textured & (result > config.far_from_m) if len(far_inverse) else np.zeros(len(ii), bool)
        if far.any():
            here = scores_of(result[:, None])[:, 0]
            far_scores = scores_of(np.broadcast_to(1.0 / far_inverse[None], (len(ii), len(far_inverse))))
            far_best = np.argmax(far_scores, axis=1)
            far_value = far_scores[rows, far_best]
            take = far & (far_value >= config.far_min_ncc) & (far_value > here + config.far_margin)
            far_chosen = far_inverse[far_best]
            if config.far_vertex:
                far_chosen = far_chosen + _peak_offsets(far_scores, far_best, far_inverse)
            result = np.where(take, 1.0 / far_chosen, result)
        out[v, ii, jj] = result.astype(np.float32)
    return out


def _peak_offsets(scores: np.ndarray, best: np.ndarray, values: np.ndarray) -> np.ndarray:
    """scores [Q, M] of the candidates `values` [M], best [Q] the chosen ones -> [Q]: how far the peak of the
    parabola through the best's and its two neighbours' scores lies from values[best] (`_peak_offset`'s twin; 0 at an
    end, where a neighbour could not score, or where the scores do not peak)."""
    m_count = len(values)
    rows = np.arange(len(best))
    left, right = np.clip(best - 1, 0, m_count - 1), np.clip(best + 1, 0, m_count - 1)
    interior = (best > 0) & (best < m_count - 1) & (scores[rows, left] > _NO_SCORE) & (scores[rows, right] > _NO_SCORE)
    denominator = scores[rows, left] - 2.0 * scores[rows, best] + scores[rows, right]
    vertex = np.where(denominator < 0, np.clip(0.5 * (scores[rows, left] - scores[rows, right])
                                               / np.where(denominator < 0, denominator, -1.0), -0.5, 0.5), 0.0)
    return np.where(interior, vertex * (values[right] - values[left]) * 0.5, 0.0)
