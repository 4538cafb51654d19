"""Level of detail for the CPU renderer: a scene's culling chunks cut into groups of neighbours, each with a
moment-matched merge, and the twin of what a camera draws.

`render_cpu(..., lod_px)` draws a group's merge instead of its members where the merge's largest standard
deviation projects to at most lod_px pixels (the choice is made per camera inside `cpu._project`). The groups
are host-side data built once per scene (`scene.derived`), like the chunks they refine. `lod_scene` is the
reference twin: the Gaussians drawn for one camera, as a scene the torch reference renders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neural_sensor.gaussians import GaussianScene
from neural_sensor.render._common import GAUSSIAN_EXTEND


def _cpu():
    """The kernel module (imported here, not at the top: it imports this one)."""
    from neural_sensor.render import cpu

    return cpu


LOD_GROUP = 8  # neighbouring Gaussians merged into one for the level of detail


@dataclass(frozen=True)
class LodGroups:
    """A scene's spatial chunks split into groups of up to LOD_GROUP neighbours, each with its merged Gaussian.

    chunk_spheres [C, 4] float32: each chunk's bounding sphere (`_spatial_chunks`), grown to hold its merged
        Gaussians' bounding spheres too; chunk_groups [C + 1] int64: chunk c holds groups
        chunk_groups[c]..chunk_groups[c + 1]; group_starts [M + 1] int64 and group_order [N] int32: group g
        holds Gaussians group_order[group_starts[g]:group_starts[g + 1]] (neighbours: consecutive along a
        Morton curve inside the chunk).
    means [M, 3], covs [M, 7] (as `_world_covariances`), opacities [M], sh [M, K, 3]: the merged Gaussians;
        sigma [M]: the largest standard deviation of each (metres); labels [M], instance [M]: those of the member
        that weighs most.
    shares [N] float32, aligned with group_order: each member's weight in its group's merge (w_i / sum_group w, so
        a merged colour is sum_i shares_i c_i; `_chunk_groups`' placeholders: zeros).
    """

    chunk_spheres: np.ndarray
    chunk_groups: np.ndarray
    group_starts: np.ndarray
    group_order: np.ndarray
    means: np.ndarray
    covs: np.ndarray
    opacities: np.ndarray
    sh: np.ndarray
    sigma: np.ndarray
    labels: np.ndarray
    instance: np.ndarray
    shares: np.ndarray

    def project_args(self) -> tuple:
        """The arguments `_project` takes after chunk_spheres... up to lod_sigma, in its order."""
        return (self.chunk_spheres, self.chunk_groups, self.group_starts, self.group_order, self.means, self.covs,
                self.opacities, self.sh, self.sigma)


def _lod_groups(scene) -> LodGroups:
    """The level-of-detail groups of a scene (see LodGroups): moment-matched merges of neighbouring Gaussians.

    A group's merged Gaussian has the weighted mean and second moment of its members (weights: opacity times
    the area of the two largest axes, so each member counts as the surface it covers), their weighted SH, and
    the largest member opacity (the members of a surface overlap, so the group is at least as opaque as each).
    """
    order, starts, spheres = scene.derived("spatial_chunks", _cpu()._spatial_chunks)
    covs = scene.derived("covariances_and_radius", _cpu()._world_covariances)
    n = len(scene)
    n_chunks = len(starts) - 1
    chunk_of = np.repeat(np.arange(n_chunks), np.diff(starts))
    means = scene.means.astype(np.float64)
    if n == 0:
        empty = np.zeros(0, np.float32)
        return LodGroups(spheres, np.zeros(n_chunks + 1, np.int64), np.zeros(1, np.int64), order,
                         np.zeros((0, 3), np.float32), np.zeros((0, 7), np.float32), empty,
                         np.zeros((0,) + scene.sh.shape[1:], np.float32), empty, np.zeros(0, np.uint8),
                         np.zeros(0, np.int32), empty)
    # a Morton order inside each chunk (7 bits per axis of the chunk's box), so groups are compact
    members = means[order]
    first = starts[:-1]
    lo = np.minimum.reduceat(members, first, axis=0)[chunk_of]
    span = np.maximum(np.maximum.reduceat(members, first, axis=0)[chunk_of] - lo, 1e-9)
    cells = np.clip(((members - lo) / span * 127.0).astype(np.int64), 0, 127)
    code = np.zeros(n, np.int64)
    for bit in range(7):
        for axis in range(3):
            code |= ((cells[:, axis] >> bit) & 1) << (3 * bit + axis)
    group_order = order[np.lexsort((code, chunk_of))].astype(np.int32)
    # groups of LOD_GROUP consecutive members inside each chunk (the last one of a chunk may be smaller)
    sizes = np.diff(starts)
    per_chunk = -(-sizes // LOD_GROUP)
    chunk_groups = np.concatenate([[0], np.cumsum(per_chunk)]).astype(np.int64)
    m = int(chunk_groups[-1])
    rank = np.arange(n) - np.repeat(starts[:-1], sizes)
    gid = np.repeat(chunk_groups[:-1], sizes) + rank // LOD_GROUP
    group_starts = np.concatenate([[0], np.cumsum(np.bincount(gid, minlength=m))]).astype(np.int64)
    idx = group_order.astype(np.int64)
    scales = np.sort(scene.scales[idx].astype(np.float64), axis=1)
    opac = scene.opacities[idx].astype(np.float64)
    w = opac * scales[:, 1] * scales[:, 2] + 1e-30
    total = np.bincount(gid, w, m)
    mu = np.stack([np.bincount(gid, w * means[idx, a], m) for a in range(3)], axis=1) / total[:, None]
    d = means[idx] - mu[gid]
    pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    merged = np.stack([np.bincount(gid, w * (covs[idx, k] + d[:, a] * d[:, b]), m)
                       for k, (a, b) in enumerate(pairs)], axis=1) / total[:, None]
    full = merged[:, [0, 1, 2, 1, 3, 4, 2, 4, 5]].reshape(m, 3, 3)
    sigma = np.sqrt(np.maximum(np.linalg.eigvalsh(full)[:, 2], 0.0))
    lod_covs = np.empty((m, 7), np.float32)
    lod_covs[:, :6] = merged
    lod_covs[:, 6] = GAUSSIAN_EXTEND * sigma
    sh = np.stack([np.stack([np.bincount(gid, w * scene.sh[idx, k, c], m) for c in range(3)], axis=1)
                   for k in range(scene.sh.shape[1])], axis=1) / total[:, None, None]
    opacity = np.zeros(m)
    np.maximum.at(opacity, gid, opac)
    heaviest = np.lexsort((-w, gid))[group_starts[:-1]]  # per group, the member of largest weight
    # grow each chunk's sphere to hold its merged Gaussians' bounding spheres (the projection culls by it)
    centres = spheres[:, :3].astype(np.float64)
    chunk_of_group = np.repeat(np.arange(n_chunks), per_chunk)
    gap = np.linalg.norm(mu - centres[chunk_of_group], axis=1) + lod_covs[:, 6]
    grown = spheres.copy()
    grown[:, 3] = np.maximum(spheres[:, 3], (np.maximum.reduceat(gap, chunk_groups[:-1]) if m else 0.0)
                             * (1.0 + 1e-4) + 1e-3)
    return LodGroups(grown.astype(np.float32), chunk_groups, group_starts, group_order, mu.astype(np.float32),
                     lod_covs, opacity.astype(np.float32), sh.astype(np.float32), sigma.astype(np.float32),
                     scene.labels[idx[heaviest]], scene.instance[idx[heaviest]],
                     (w / total[gid]).astype(np.float32))


def _chunk_groups(scene) -> LodGroups:
    """LodGroups of one group per spatial chunk, with placeholder merged Gaussians: for projections that draw
    every Gaussian (lod_px = 0), at none of `_lod_groups`' cost."""
    order, starts, spheres = scene.derived("spatial_chunks", _cpu()._spatial_chunks)
    c = len(starts) - 1
    zeros = np.zeros(c, np.float32)
    return LodGroups(spheres, np.arange(c + 1, dtype=np.int64), starts, order, np.zeros((c, 3), np.float32),
                     np.zeros((c, 7), np.float32), zeros, np.zeros((c,) + scene.sh.shape[1:], np.float32), zeros,
                     np.zeros(c, np.uint8), np.zeros(c, np.int32), np.zeros(len(order), np.float32))


def lod_scene(scene, camera, lod_px: float):
    """The Gaussians `render_cpu(..., lod_px)` draws for one camera: the reference twin of the level of detail.

    Args:
        scene: a GaussianScene (world frame); camera: a Camera; lod_px >= 0.
    Returns:
        GaussianScene: the members of the groups drawn in full, then the merged Gaussians of the others (covariances
        turned into scales and rotations), labelled as `render_cpu` labels them.
    """
    fine, coarse = lod_split(scene, camera, lod_px)
    lod = scene.derived("lod_groups", _lod_groups)
    full = lod.covs[coarse, :6].astype(np.float64)[:, [0, 1, 2, 1, 3, 4, 2, 4, 5]].reshape(-1, 3, 3)
    eigenvalues, vectors = np.linalg.eigh(full)
    vectors[np.linalg.det(vectors) < 0, :, 0] *= -1  # a rotation
    scales = np.sqrt(np.maximum(eigenvalues, 1e-24)).astype(np.float32)  # a degenerate merge: a tiny positive axis
    merged = GaussianScene(lod.means[coarse], _quats_of_rotations(vectors), scales, lod.opacities[coarse],
                           lod.sh[coarse], lod.labels[coarse], lod.instance[coarse])
    return GaussianScene.concat([scene.subset(fine), merged])


def lod_split(scene, camera, lod_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Which Gaussians `render_cpu(..., lod_px)` draws for one camera: fine [N] bool (drawn themselves) and coarse
    [M] bool (the groups of `scene.derived("lod_groups", _lod_groups)` drawn as their merged Gaussian)."""
    assert lod_px >= 0.0, lod_px
    lod = scene.derived("lod_groups", _lod_groups)
    v = camera.pose_world_to_camera[2].astype(np.float32)
    focal = np.float32(max(camera.K[0, 0], camera.K[1, 1]))
    z = ((v[0] * lod.means[:, 0] + v[1] * lod.means[:, 1]) + v[2] * lod.means[:, 2]) + v[3]  # `_project`'s float32 sum
    coarse = (z * np.float32(lod_px) >= focal * lod.sigma) if lod_px > 0 else np.zeros(len(lod.sigma), bool)
    fine = np.ones(len(scene), bool)
    member_group = np.repeat(np.arange(len(lod.sigma)), np.diff(lod.group_starts))
    fine[lod.group_order[coarse[member_group]]] = False
    return fine, coarse


def _quats_of_rotations(r: np.ndarray) -> np.ndarray:
    """[M, 4] float32 (w, x, y, z) unit quaternions of rotation matrices [M, 3, 3] (Shepperd's method)."""
    m = len(r)
    q = np.empty((m, 4))
    trace = r[:, 0, 0] + r[:, 1, 1] + r[:, 2, 2]
    diag = np.stack([trace, r[:, 0, 0], r[:, 1, 1], r[:, 2, 2]], axis=1)
    pick = np.argmax(diag, axis=1)
    for k in range(4):
        sel = pick == k
        rs = r[sel]
        if k == 0:
            s = np.sqrt(1.0 + trace[sel]) * 2.0
            q[sel] = np.stack([0.25 * s, (rs[:, 2, 1] - rs[:, 1, 2]) / s, (rs[:, 0, 2] - rs[:, 2, 0]) / s,
                               (rs[:, 1, 0] - rs[:, 0, 1]) / s], axis=1)
        else:
            i, j, l = k - 1, k % 3, (k + 1) % 3
            s = np.sqrt(np.maximum(1.0 + rs[:, i, i] - rs[:, j, j] - rs[:, l, l], 1e-30)) * 2.0
            out = np.empty((len(rs), 4))
            out[:, 0] = (rs[:, l, j] - rs[:, j, l]) / s
            out[:, 1 + i] = 0.25 * s
            out[:, 1 + j] = (rs[:, j, i] + rs[:, i, j]) / s
            out[:, 1 + l] = (rs[:, l, i] + rs[:, i, l]) / s
            q[sel] = out
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
