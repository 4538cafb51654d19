"""fuse_views: free-space carving, depth consistency, merging, the budget, and the reference twin."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neural_sensor.camera import Camera
from neural_sensor.gaussians import GaussianScene
from neural_sensor.reconstruct.fuse import (FusionConfig, _cross_view_counts, cross_view_counts, fuse_views,
                                            neighbour_lists, usefulness, view_geometry)
from neural_sensor.reconstruct.model import ReconConfig, ReconNet, predict_views, reconstruct

WIDTH, HEIGHT = 32, 24
WALL_X_M = 10.0  # a wall across the world x axis, seen by every camera


def _cameras(offsets_y=(-1.0, 0.0, 1.0)) -> list[Camera]:
    return [Camera.look_at(WIDTH, HEIGHT, 60.0, [0.0, y, 1.5], [WALL_X_M, y, 1.5]) for y in offsets_y]


def _wall_depths(cameras: list[Camera]) -> np.ndarray:
    """[V, H, W] camera z of the wall x = WALL_X_M at every pixel centre (the cameras look along +x)."""
    return np.stack([np.full((HEIGHT, WIDTH), WALL_X_M - cam.position_world[0], np.float32) for cam in cameras])


def _pixel_gaussians(cameras: list[Camera], depths: np.ndarray, opacity: float = 0.8) -> GaussianScene:
    """One Gaussian per pixel at its depth (view-major, row-major), as predict_views lays them out."""
    means = []
    for cam, depth in zip(cameras, depths):
        ys, xs = np.meshgrid(np.arange(HEIGHT) + 0.5, np.arange(WIDTH) + 0.5, indexing="ij")
        x = (xs - cam.K[0, 2]) / cam.K[0, 0] * depth
        y = (ys - cam.K[1, 2]) / cam.K[1, 1] * depth
        points = np.stack([x, y, depth], -1).reshape(-1, 3)
        means.append(points @ cam.pose_camera_to_world[:3, :3].T + cam.pose_camera_to_world[:3, 3])
    means = np.concatenate(means).astype(np.float32)
    n = len(means)
    quats = np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1))
    return GaussianScene(means, quats, np.full((n, 3), 0.05, np.float32), np.full(n, opacity, np.float32),
                         np.zeros((n, 1, 3), np.float32))


def _wall_with_block(depth_m: float):
    """Three views of the wall; a block of view 0's pixels put at depth_m instead of on the wall."""
    cameras = _cameras()
    depths = _wall_depths(cameras)
    block = np.zeros_like(depths, dtype=bool)
    block[0, 8:16, 10:22] = True
    depths[block] = depth_m
    return cameras, depths, block, _pixel_gaussians(cameras, depths)


def _wall_with_floaters():
    """View 0 has a block of floaters at 6 m (4 m in front of the wall)."""
    return _wall_with_block(6.0)


NO_MERGE = dict(merge_cell_m=0.0, budget=0)


def test_floaters_in_front_of_a_wall_seen_by_two_other_views_are_carved_and_the_wall_kept():
    cameras, depths, floater, per_view = _wall_with_floaters()
    fused = fuse_views(per_view, depths, cameras, FusionConfig(**NO_MERGE))  # the default carving
    x = fused.means[:, 0]
    assert not np.any(x < WALL_X_M - 0.5), "a floater in front of the wall survived"
    # every wall Gaussian is kept (nothing sees through the wall): all pixels but the floaters
    assert len(fused) == depths.size - floater.sum()
    assert np.allclose(x, WALL_X_M, atol=1e-3)
    # the same with the merge and the budget: still no floater, the wall still covered
    merged = fuse_views(per_view, depths, cameras)
    assert not np.any(merged.means[:, 0] < WALL_X_M - 0.5) and len(merged) > 0.5 * (depths.size - floater.sum()) / 3


def test_without_carving_the_floaters_stay():
    """The carving test above can fail: the merge alone keeps the floaters."""
    cameras, depths, floater, per_view = _wall_with_floaters()
    fused = fuse_views(per_view, depths, cameras, FusionConfig(carve_views=0, **NO_MERGE))
    assert np.sum(fused.means[:, 0] < WALL_X_M - 0.5) == floater.sum()


def test_seen_through_and_consistent_counts_on_the_wall():
    cameras, depths, floater, per_view = _wall_with_floaters()
    w2c, intrinsics, centres = view_geometry(cameras, HEIGHT, WIDTH)
    seen_through, consistent, observed = cross_view_counts(per_view.means.reshape(3, -1, 3), w2c, intrinsics, depths,
                                                 neighbour_lists(centres, 30.0), 0.2, 0.1)
    flat = floater.reshape(3, -1)
    assert np.all(seen_through[flat] == 2)  # both other views see the wall 4 m behind each floater
    assert np.all(seen_through[~flat] == 0)  # nothing sees through the wall
    assert np.all(observed[flat] == 2) and observed.max() == 2
    # wall points of the side views land in view 0's floater block: occluded there, so consistent in one view
    assert consistent[~flat].max() == 2 and np.median(consistent[~flat]) == 2


def test_noisy_but_consistent_points_are_kept():
    """Depth noise within the tolerances: carving and a consistency requirement keep (almost) every point."""
    cameras = _cameras()
    rng = np.random.default_rng(0)
    depths = (_wall_depths(cameras) * (1 + rng.uniform(-0.03, 0.03, (3, HEIGHT, WIDTH)))).astype(np.float32)
    per_view = _pixel_gaussians(cameras, depths)
    fused, stats = fuse_views(per_view, depths, cameras, FusionConfig(carve_views=1, min_consistent=1, **NO_MERGE),
                              return_stats=True)
    # pixels near the image sides see wall the other views do not: no consistent view there, so those go
    assert stats["after_carving"] == depths.size
    assert len(fused) >= 0.85 * depths.size


def test_inconsistent_points_are_down_weighted_when_asked():
    cameras, depths, floater, per_view = _wall_with_floaters()
    config = FusionConfig(carve_views=0, min_consistent=1, inconsistent_opacity=0.25, **NO_MERGE)
    fused = fuse_views(per_view, depths, cameras, config)
    floaters = fused.means[:, 0] < WALL_X_M - 0.5
    assert floaters.sum() == floater.sum() and np.allclose(fused.opacities[floaters], 0.8 * 0.25)
    assert np.median(fused.opacities[~floaters]) == pytest.approx(0.8)


def test_budget_keeps_the_most_useful():
    cameras, depths, _, per_view = _wall_with_floaters()
    rng = np.random.default_rng(1)
    per_view = per_view.replace(opacities=rng.uniform(0.1, 1.0, len(per_view)).astype(np.float32),
                                scales=rng.uniform(0.01, 0.2, (len(per_view), 3)).astype(np.float32))
    everything = fuse_views(per_view, depths, cameras, FusionConfig(carve_views=0, merge_cell_m=0.0, budget=0))
    kept = fuse_views(per_view, depths, cameras, FusionConfig(carve_views=0, merge_cell_m=0.0, budget=100))
    assert len(kept) == 100 < len(everything)
    score_all = usefulness(everything.scales, everything.opacities)
    score_kept = usefulness(kept.scales, kept.opacities)
    assert score_kept.min() >= np.sort(score_all)[-100]


def test_merge_keeps_one_gaussian_per_cell():
    cameras, depths, _, per_view = _wall_with_floaters()
    fused = fuse_views(per_view, depths, cameras, FusionConfig(carve_views=0, merge_cell_m=0.5, budget=0))
    cells = np.floor(fused.means / 0.5).astype(np.int64)
    assert len(np.unique(cells, axis=0)) == len(fused) < len(per_view)


@pytest.mark.parametrize("views", [2, 5])
def test_fast_counts_match_the_reference_twin(views):
    rng = np.random.default_rng(views)
    cameras = [Camera.look_at(WIDTH, HEIGHT, 70.0, rng.uniform(-2, 2, 3) + [0, 0, 1.5],
                              rng.uniform(-3, 3, 3) + [12, 0, 1.5]) for _ in range(views)]
    depths = rng.uniform(3.0, 20.0, (views, HEIGHT, WIDTH)).astype(np.float32)
    points = rng.uniform([-2, -8, -2], [25, 8, 6], (views, 500, 3)).astype(np.float32)
    w2c, intrinsics, centres = view_geometry(cameras, HEIGHT, WIDTH)
    neighbours = neighbour_lists(centres, 30.0)
    fast = cross_view_counts(points, w2c, intrinsics, depths, neighbours, 0.2, 0.1)
    reference = _cross_view_counts(points, w2c, intrinsics, depths, neighbours, 0.2, 0.1)
    for a, b in zip(fast, reference):
        assert a.shape == b.shape == (views, 500)
        assert np.array_equal(a, b)
    assert fast[0].sum() > 0 and fast[1].sum() > 0  # the random case exercises both counts


def test_shapes_are_checked():
    cameras, depths, _, per_view = _wall_with_floaters()
    with pytest.raises(AssertionError):
        fuse_views(per_view, depths[:2], cameras)
    with pytest.raises(AssertionError):
        fuse_views(per_view.subset(np.arange(10)), depths, cameras)
    with pytest.raises(ValueError, match="tolerances"):
        FusionConfig(carve_tol=1.5)


def test_reconstruct_fusion_options():
    torch.manual_seed(0)
    model = ReconNet(ReconConfig(channels=16, depth_bins=8))
    cameras = [Camera.look_at(64, 40, 80.0, [4.0 * t, 0, 1.5], [4.0 * t + 10, 0, 1.5]) for t in range(3)]
    images = np.random.default_rng(0).uniform(0, 1, (3, 40, 64, 3)).astype(np.float32)
    per_view, depths = predict_views(model, images, cameras)
    assert depths.shape == (3, 20, 32) and len(per_view) == 3 * 20 * 32
    carved = reconstruct(model, images, cameras)
    merged = reconstruct(model, images, cameras, fusion="merge")
    expected = fuse_views(per_view, depths, cameras, FusionConfig())
    assert np.array_equal(carved.means, expected.means) and len(carved) <= len(merged)
    legacy = fuse_views(per_view, depths, cameras, FusionConfig(carve_views=0, budget=0, merge_cell_m=0.15))
    assert np.array_equal(merged.means, legacy.means)  # "merge" is the fusion reconstruct() had before carving
    with pytest.raises(ValueError, match="fusion must be one of"):
        reconstruct(model, images, cameras, fusion="fog")



def test_fusion_key_names_the_options():
    from neural_sensor.reconstruct.fuse import FUSION_VERSION, fusion_key

    key = fusion_key()
    assert key["version"] == FUSION_VERSION and key["fusion"] == "carve" and key["carve_views"] == FusionConfig().carve_views
    assert fusion_key(config=FusionConfig(budget=10)) != key and fusion_key("merge") != key


def test_hidden_points_are_dropped_when_asked():
    """A block of view 0 put 4 m behind the wall: the other views see the wall in front of it, none agrees with it."""
    cameras, depths, behind, per_view = _wall_with_block(14.0)
    kept = fuse_views(per_view, depths, cameras, FusionConfig(**NO_MERGE))
    assert len(kept) == depths.size  # carving alone keeps them: nothing sees through them
    dropped = fuse_views(per_view, depths, cameras, FusionConfig(hidden_views=2, **NO_MERGE))
    assert len(dropped) == depths.size - behind.sum() and np.allclose(dropped.means[:, 0], WALL_X_M, atol=1e-3)



def test_a_fused_scene_is_in_spatial_order():
    """fuse_views returns its Gaussians along a Morton curve: the same set as the selection, runs of consecutive
    Gaussians compact in space (the renderers cull them by one bounding sphere)."""
    from neural_sensor.reconstruct.fuse import fusion_selection, morton_order

    cameras, depths, _, per_view = _wall_with_floaters()
    config = FusionConfig(**NO_MERGE)
    fused = fuse_views(per_view, depths, cameras, config)
    idx = fusion_selection(per_view.means, per_view.scales, per_view.opacities, depths, cameras, config)[0]
    assert len(fused) == len(idx)
    assert np.array_equal(np.sort(fused.means.view(np.uint8).reshape(len(fused), -1), axis=0),
                          np.sort(per_view.means[idx].view(np.uint8).reshape(len(idx), -1), axis=0))
    # the order itself: a permutation that puts the points of one cell next to each other
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 8, (4000, 3))
    order = morton_order(points, 1.0)
    assert np.array_equal(np.sort(order), np.arange(len(points)))
    runs = points[order].reshape(-1, 8, 3)  # 8 consecutive points
    shuffled = points.reshape(-1, 8, 3)
    spread = lambda r: np.ptp(r, axis=1).max(axis=1).mean()  # noqa: E731
    assert spread(runs) < 0.5 * spread(shuffled)
    assert len(morton_order(np.zeros((0, 3)), 1.0)) == 0
