"""refine_depths: the photometric plane sweep finds a textured wall's depth, leaves what it cannot match alone,
and agrees with its numpy twin; move_along_rays keeps a Gaussian where its own view sees it."""

from __future__ import annotations

import numpy as np
import pytest

from neural_sensor.camera import Camera
from neural_sensor.reconstruct.photometric import (DepthRefineConfig, _refine_depths_reference, move_along_rays,
                                                   refine_depths)

WIDTH, HEIGHT = 128, 96  # the images; the depth maps are half of it, as the network's
WALL_X_M = 10.0  # a wall across the world x axis


def _cameras(offsets_y=(-2.0, 0.0, 2.0), wall_x_m: float = WALL_X_M) -> list[Camera]:
    return [Camera.look_at(WIDTH, HEIGHT, 60.0, [0.0, y, 1.5], [wall_x_m, y, 1.5]) for y in offsets_y]


def _rays_world(cam: Camera, width: int, height: int) -> np.ndarray:
    """[h, w, 3] world ray directions (camera z = 1) through the pixel centres of an h x w grid of cam."""
    ys, xs = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    fx, fy = cam.K[0, 0] * width / cam.width, cam.K[1, 1] * height / cam.height
    cx, cy = cam.K[0, 2] * width / cam.width, cam.K[1, 2] * height / cam.height
    rays = np.stack([(xs - cx) / fx, (ys - cy) / fy, np.ones_like(xs)], -1)
    return rays @ cam.pose_camera_to_world[:3, :3].T


def _wall_images(cameras: list[Camera], texture, wall_x_m: float = WALL_X_M) -> np.ndarray:
    """[V, H, W, 3] each camera's view of the wall (at x = wall_x_m) painted with texture(y_m, z_m) -> grey in
    [0, 1]."""
    images = []
    for cam in cameras:
        rays = _rays_world(cam, WIDTH, HEIGHT)
        t = (wall_x_m - cam.position_world[0]) / rays[..., 0]
        points = cam.position_world + rays * t[..., None]
        images.append(np.repeat(texture(points[..., 1], points[..., 2])[..., None], 3, axis=-1))
    return np.stack(images).astype(np.float32)


def _bricks(y_m, z_m):
    """A texture with structure at several scales (what a facade photograph has)."""
    return (0.5 + 0.2 * np.sin(7.0 * y_m) * np.cos(5.0 * z_m) + 0.15 * np.sin(19.0 * y_m + 3.0 * z_m)
            + 0.1 * np.cos(13.0 * z_m - 11.0 * y_m))


_NOISE = np.random.default_rng(7).random((200, 200))


def _blotches(y_m, z_m, cell_m: float = 0.15):
    """An aperiodic texture (random values on a 0.15 m grid, bilinear): a periodic one lets a plane sweep match a
    shifted period, the classic failure of multi-view stereo on repeated patterns."""
    u, v = (np.asarray(y_m) + 15.0) / cell_m, (np.asarray(z_m) + 15.0) / cell_m
    i, j = np.clip(np.floor(u).astype(int), 0, 198), np.clip(np.floor(v).astype(int), 0, 198)
    fu, fv = u - i, v - j
    return 0.2 + 0.6 * ((_NOISE[i, j] * (1 - fu) + _NOISE[i + 1, j] * fu) * (1 - fv)
                        + (_NOISE[i, j + 1] * (1 - fu) + _NOISE[i + 1, j + 1] * fu) * fv)


def _far_blotches(y_m, z_m):
    """_blotches on a 0.5 m grid: at 30 m a cell covers ~2 pixels (0.15 m cells would alias to noise)."""
    return _blotches(y_m, z_m, cell_m=0.5)


def _true_depths(cameras: list[Camera], wall_x_m: float = WALL_X_M) -> np.ndarray:
    """[V, h, w] the wall's camera z on the half-resolution grid (the cameras look along +x)."""
    return np.stack([np.full((HEIGHT // 2, WIDTH // 2), wall_x_m - c.position_world[0], np.float32) for c in cameras])


def test_the_sweep_brings_a_wrong_depth_back_to_the_textured_wall():
    cameras = _cameras()
    truth = _true_depths(cameras)
    guess = truth * np.float32(1.08)  # the network's scatter: 8 % behind the wall
    refined = refine_depths(guess, _wall_images(cameras, _bricks), cameras, np.zeros(truth.shape, bool))
    error_before = np.abs(guess - truth) / truth
    error_after = np.abs(refined - truth) / truth
    inner = np.s_[:, 8:-8, 8:-8]  # away from the borders, where a neighbour's patch falls outside
    assert np.median(error_before[inner]) == pytest.approx(0.08, abs=1e-4)
    assert np.median(error_after[inner]) < 0.01, np.median(error_after[inner])
    assert np.mean(error_after[inner] < 0.02) > 0.9


def test_the_far_sweep_finds_a_far_wall_the_local_span_cannot_reach():
    """The network's far depths are its coarsest (its last planes: 13, 22 and 80 m): a wall at 30 m guessed at 12 m
    lies 0.05 1/m off, beyond the local span (+-0.03); the far sweep over 4.5-40 m finds it, and without it the
    guess stays wrong."""
    from dataclasses import replace

    from neural_sensor.reconstruct.photometric import DEFAULT_DEPTH_REFINE

    cameras = _cameras(wall_x_m=30.0)
    truth = _true_depths(cameras, wall_x_m=30.0)
    images = _wall_images(cameras, _far_blotches, wall_x_m=30.0)
    guess = np.full_like(truth, 12.0)
    skip = np.zeros(truth.shape, bool)
    inner = np.s_[:, 8:-8, 8:-8]
    local_only = refine_depths(guess, images, cameras, skip, replace(DEFAULT_DEPTH_REFINE, far_from_m=0.0))
    assert np.median((np.abs(local_only - truth) / truth)[inner]) > 0.3
    # the best candidate as it is: within half a far candidate's step (at 30 m the 60 candidates over 4.5-40 m lie
    # ~10 % apart; measured: median 5.2 %)
    candidate = refine_depths(guess, images, cameras, skip, replace(DEFAULT_DEPTH_REFINE, far_vertex=False))
    error = (np.abs(candidate - truth) / truth)[inner]
    assert np.median(error) < 0.06 and np.mean(error < 0.06) > 0.9, (np.median(error), np.mean(error < 0.06))
    # the parabola through the best's and its neighbours' scores finds the wall between candidates (measured:
    # median 0.3 %, 90 % within 2 %)
    refined = refine_depths(guess, images, cameras, skip, DEFAULT_DEPTH_REFINE)
    error = (np.abs(refined - truth) / truth)[inner]
    assert np.median(error) < 0.01 and np.mean(error < 0.02) > 0.85, (np.median(error), np.mean(error < 0.02))
    # a depth the local sweep leaves nearer than far_from_m (5 m: its span reaches 5.9 m) never enters the far one
    near_guess = np.full_like(truth, 5.0)
    no_far = replace(DEFAULT_DEPTH_REFINE, far_from_m=0.0)
    assert np.array_equal(refine_depths(near_guess, images, cameras, skip, DEFAULT_DEPTH_REFINE),
                          refine_depths(near_guess, images, cameras, skip, no_far))


def test_a_slanted_wall_seen_by_yawed_cameras():
    """Neighbours that look a different way (R_n^T R_v is no identity) at a wall the image rows meet at an angle."""
    normal = np.array([1.0, -0.6, 0.0]) / np.linalg.norm([1.0, -0.6, 0.0])
    on_wall = np.array([WALL_X_M, 0.0, 0.0])
    cameras = [Camera.look_at(WIDTH, HEIGHT, 60.0, [0.0, y, 1.5], [WALL_X_M, 1.75 * y, 1.5]) for y in (-2.0, 0.0, 2.0)]

    def hits(cam, width, height):  # ray parameters (camera z) and points where the pixel rays meet the wall
        rays = _rays_world(cam, width, height)
        t = ((on_wall - cam.position_world) @ normal) / (rays @ normal)
        return t, cam.position_world + rays * t[..., None]

    images = np.stack([np.repeat(_bricks(p[..., 1] + 0.6 * p[..., 0], p[..., 2])[..., None], 3, axis=-1)
                       for p in (hits(c, WIDTH, HEIGHT)[1] for c in cameras)]).astype(np.float32)
    truth = np.stack([hits(c, WIDTH // 2, HEIGHT // 2)[0] for c in cameras]).astype(np.float32)
    guess = truth * np.float32(1.08)
    refined = refine_depths(guess, images, cameras, np.zeros(truth.shape, bool))
    inner = np.s_[:, 8:-8, 8:-8]
    assert np.median((np.abs(refined - truth) / truth)[inner]) < 0.01


def test_reconstruct_moves_the_networks_gaussians_onto_the_wall():
    """The shipped network on three views of a textured wall (far from its training data: its depths scatter over
    4-25 m): with the refinement many more of the fused Gaussians lie on the wall (reconstruct(depth_refine=...),
    the path every run's reconstruction takes). Depths beyond the sweep's span stay where the network put them."""
    from neural_sensor.reconstruct.drive import DEFAULT_CHECKPOINT
    from neural_sensor.reconstruct.model import ReconNet, reconstruct
    from neural_sensor.reconstruct.photometric import DEFAULT_DEPTH_REFINE

    if not (DEFAULT_CHECKPOINT / "model.safetensors").exists():
        pytest.skip("no shipped reconstructor checkpoint")
    cameras = _cameras()
    images = _wall_images(cameras, _blotches)
    model = ReconNet.from_pretrained(DEFAULT_CHECKPOINT)
    plain = reconstruct(model, images, cameras)
    refined = reconstruct(model, images, cameras, depth_refine=DEFAULT_DEPTH_REFINE)

    def on_wall(scene) -> float:  # share of the Gaussians (not the sky dome's) within 0.3 m of the wall
        means = scene.means[np.linalg.norm(scene.means, axis=1) < 100.0]
        return float(np.mean(np.abs(means[:, 0] - WALL_X_M) < 0.3))

    assert on_wall(refined) > 2.0 * on_wall(plain) and on_wall(refined) > 0.25, (on_wall(plain), on_wall(refined))


def test_what_cannot_be_matched_keeps_the_networks_depth():
    cameras = _cameras()
    guess = _true_depths(cameras) * np.float32(1.08)
    flat = _wall_images(cameras, lambda y, z: np.full_like(y, 0.4))  # no texture: nothing to match
    assert np.array_equal(refine_depths(guess, flat, cameras, np.zeros(guess.shape, bool)), guess)
    skip = np.zeros(guess.shape, bool)
    skip[:, :, : WIDTH // 4] = True  # the sky, say
    refined = refine_depths(guess, _wall_images(cameras, _bricks), cameras, skip)
    assert np.array_equal(refined[skip], guess[skip])
    assert not np.array_equal(refined[~skip], guess[~skip])
    alone = refine_depths(guess[:1], _wall_images(cameras[:1], _bricks), cameras[:1], skip[:1])  # no neighbour
    assert np.array_equal(alone, guess[:1])


def test_kernel_matches_its_numpy_twin():
    cameras = _cameras((-2.0, -0.7, 0.0, 1.1, 2.0))
    rng = np.random.default_rng(3)
    truth = _true_depths(cameras)
    guess = (truth * rng.uniform(0.9, 1.12, truth.shape)).astype(np.float32)  # scattered about the wall
    images = _wall_images(cameras, _bricks)
    skip = rng.random(truth.shape) < 0.1
    config = DepthRefineConfig(neighbours=3, candidates=15)
    fast = refine_depths(guess, images, cameras, skip, config)
    twin = _refine_depths_reference(guess, images, cameras, skip, config)
    changed_fast, changed_twin = fast != guess, twin != guess
    assert changed_fast.mean() > 0.5
    assert np.mean(changed_fast == changed_twin) > 0.995  # float32 against float64 may flip a borderline match
    both = changed_fast & changed_twin
    np.testing.assert_allclose(fast[both], twin[both], rtol=2e-3)


def test_move_along_rays_keeps_each_gaussian_on_its_pixel():
    cameras = _cameras()
    before = _true_depths(cameras)
    after = before * np.linspace(0.8, 1.3, before.size, dtype=np.float32).reshape(before.shape)
    v, h, w = before.shape
    means = np.concatenate([c.position_world + _rays_world(c, w, h).reshape(-1, 3) * d.reshape(-1, 1)
                            for c, d in zip(cameras, before)]).astype(np.float32)
    scales = np.full((v * h * w, 3), 0.05, np.float32)
    moved, moved_scales = move_along_rays(means, scales, before, after, cameras)
    expected = np.concatenate([c.position_world + _rays_world(c, w, h).reshape(-1, 3) * d.reshape(-1, 1)
                               for c, d in zip(cameras, after)])
    np.testing.assert_allclose(moved, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(moved_scales[:, 0], 0.05 * (after / before).reshape(-1), rtol=1e-5)


def test_move_along_rays_leaves_what_has_no_usable_depth():
    cameras = _cameras()
    before = _true_depths(cameras)
    after = before * np.float32(1.1)
    before[0, 0, 0], before[0, 0, 1], after[1, 0, 0] = 0.0, -1.0, np.nan
    means = np.ones((before.size, 3), np.float32)
    scales = np.full((before.size, 3), 0.05, np.float32)
    moved, moved_scales = move_along_rays(means, scales, before, after, cameras)
    h, w = before.shape[1:]
    for index in (0, 1, h * w):  # view 0's first two pixels, view 1's first
        assert np.array_equal(moved[index], means[index]) and np.array_equal(moved_scales[index], scales[index])
    assert np.all(np.isfinite(moved)) and np.all(moved_scales > 0)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="candidates must be odd"):
        DepthRefineConfig(candidates=24)
    with pytest.raises(ValueError, match="neighbours >= 1"):
        DepthRefineConfig(neighbours=0)
    with pytest.raises(ValueError, match="min_texture > 0"):
        DepthRefineConfig(min_texture=0.0)
    with pytest.raises(ValueError, match="far_candidates >= 2"):
        DepthRefineConfig(far_candidates=1)
    with pytest.raises(ValueError, match="far_from_m >= 0"):
        DepthRefineConfig(far_from_m=-1.0)
    with pytest.raises(ValueError, match="far_max_m > far_from_m"):
        DepthRefineConfig(far_from_m=50.0)


def test_the_far_sweep_matches_its_numpy_twin():
    cameras = _cameras((-2.0, -0.7, 0.0, 1.1, 2.0), wall_x_m=30.0)
    rng = np.random.default_rng(5)
    truth = _true_depths(cameras, wall_x_m=30.0)
    guess = (truth * rng.uniform(0.35, 0.45, truth.shape)).astype(np.float32)  # 10.5-13.5 m: beyond the local span
    images = _wall_images(cameras, _far_blotches, wall_x_m=30.0)
    skip = rng.random(truth.shape) < 0.1
    config = DepthRefineConfig(neighbours=3, candidates=15, far_candidates=40)
    fast = refine_depths(guess, images, cameras, skip, config)
    twin = _refine_depths_reference(guess, images, cameras, skip, config)
    far_fast, far_twin = fast > 20.0, twin > 20.0  # what the far sweep moved onto the wall
    assert far_fast.mean() > 0.5
    assert np.mean(far_fast == far_twin) > 0.99
    both = far_fast & far_twin
    # the same far depth (float32 against float64 may pick the other of two near-equal candidates)
    assert np.mean(np.isclose(fast[both], twin[both], rtol=2e-3)) > 0.995
    # and the same without the parabola: the same candidate
    config = DepthRefineConfig(neighbours=3, candidates=15, far_candidates=40, far_vertex=False)
    fast = refine_depths(guess, images, cameras, skip, config)
    twin = _refine_depths_reference(guess, images, cameras, skip, config)
    both = (fast > 20.0) & (twin > 20.0)
    assert both.mean() > 0.5 and np.mean(np.isclose(fast[both], twin[both], rtol=1e-6)) > 0.995
