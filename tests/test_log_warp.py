"""The drive log's reference for the enhancer (`neural_sensor.enhance.log_warp`): view weights that change
continuously as the camera moves, and the compiled blend against its numpy twin."""

from __future__ import annotations

import numpy as np
import pytest

from neural_sensor.camera import Camera
from neural_sensor.enhance.log_warp import fallback_view_weights, log_view_weights, warp_log, warp_log_reference
from neural_sensor.reconstruct.reference import REFERENCE_LOD_PX, LogReference


def _camera_at(z_m: float, x_m: float = 0.0, size=(40, 24)) -> Camera:
    pose = np.eye(4)
    pose[0, 3], pose[2, 3] = x_m, z_m  # OpenCV camera looking down +z, moved along its own axis
    return Camera.from_fov(size[0], size[1], 70.0, pose)


def _log_along_z(spacing_m: float = 4.0, count: int = 5, wall_z_m: float = 40.0) -> LogReference:
    """`count` views 'CAM_FRONT' every `spacing_m` along z facing a wall at z = wall_z_m, each image one flat
    colour (view i: red = 40 i + 20), their depth the wall's."""
    cams = [_camera_at(i * spacing_m) for i in range(count)]
    images = np.zeros((count, 24, 40, 3), np.uint8)
    images[..., 0] = (40 * np.arange(count) + 20)[:, None, None]
    images[..., 1] = 128
    depth = np.stack([np.full((24, 40), wall_z_m - c.pose_camera_to_world[2, 3], np.float32) for c in cams])
    return LogReference(images, depth, np.stack([c.K for c in cams]), np.stack([c.pose_camera_to_world for c in cams]),
                        np.array(["CAM_FRONT"] * count))


def _dense_weights(reference: LogReference, camera: Camera, views: int) -> np.ndarray:
    index, weight = log_view_weights(reference, "CAM_FRONT", camera, views)
    dense = np.zeros(len(reference))
    dense[index] = weight
    return dense


def test_log_view_weights_change_continuously_along_the_drive():
    """Along the log's path the weights sum to one, a camera at a log view takes (almost) only that view, halfway
    between two views it takes both evenly, and no view's weight jumps when the set of nearest views changes (a
    nearest-first choice jumps by 1 there)."""
    reference = _log_along_z()
    positions = np.arange(0.0, 16.0, 0.02)
    dense = np.stack([_dense_weights(reference, _camera_at(z, x_m=0.5), 2) for z in positions])
    np.testing.assert_allclose(dense.sum(1), 1.0, atol=1e-12)
    assert (dense >= 0).all() and ((dense > 0).sum(1) <= 2).all()
    assert np.abs(np.diff(dense, axis=0)).max() < 0.1
    at_view = _dense_weights(reference, _camera_at(8.0), 2)
    assert at_view[2] > 0.95
    np.testing.assert_allclose(_dense_weights(reference, _camera_at(6.0), 2)[[1, 2]], [0.5, 0.5], atol=1e-12)
    # a sensor id the log lacks takes the views facing its way; none facing it: no views
    # a log that stood still (three views at one centre) counts that centre once: still no jump
    still = _log_along_z(count=5)
    still.pose_camera_to_world[1:3] = still.pose_camera_to_world[0]
    dense = np.stack([_dense_weights(still, _camera_at(z, x_m=0.5), 2) for z in positions])
    merged = np.stack([dense[:, :3].sum(1), dense[:, 3], dense[:, 4]], 1)
    assert np.abs(np.diff(merged, axis=0)).max() < 0.1 and ((dense[:, 1:3] > 0).sum() == 0)
    index, _ = log_view_weights(reference, "CAM_BACK", _camera_at(6.0), 2)
    np.testing.assert_array_equal(np.sort(index), [1, 2])
    behind = _camera_at(6.0)
    behind.pose_camera_to_world[:3, :3] = np.diag([-1.0, 1.0, -1.0])
    assert len(log_view_weights(reference, "CAM_BACK", behind, 2)[0]) == 0


def test_compiled_log_warp_equals_its_twin_and_blends_by_weight():
    """A rig camera between two log views of a wall, at twice their resolution: the compiled warp equals the numpy
    twin (rounded to uint8), every wall pixel is seen, its colour the views' weighted mean where both see it and
    the nearer view's alone at the border the farther one's narrower frustum misses; sky (alpha 0) stays unseen."""
    reference = _log_along_z()
    target = _camera_at(5.0, size=(80, 48))
    target = Camera(80, 48, reference.K[0] * np.array([[2.0], [2.0], [1.0]]), target.pose_camera_to_world)
    depth = np.full((1, 48, 80), 35.0, np.float32)
    alpha = np.ones((1, 48, 80), np.float32)
    alpha[0, :5] = 0.0
    fast_rgb, fast_valid = warp_log(reference, ["CAM_FRONT"], [target], depth, alpha, 2)
    twin_rgb, twin_valid = warp_log_reference(reference, ["CAM_FRONT"], [target], depth, alpha, 2)
    np.testing.assert_array_equal(fast_valid, twin_valid)
    assert fast_rgb.dtype == np.uint8
    assert np.abs(fast_rgb.astype(np.int16) - np.round(twin_rgb * 255).astype(np.int16)).max() <= 1
    assert fast_valid[0, 5:].all() and not fast_valid[0, :5].any()
    index, weight = log_view_weights(reference, "CAM_FRONT", target, 2)
    expected_red = float(weight @ reference.images[index, 0, 0, 0])
    np.testing.assert_allclose(fast_rgb[0, 10:40, 10:70, 0], round(expected_red), atol=1)
    assert (fast_rgb[0, 10:40, 0, 0] == reference.images[index[0], 0, 0, 0]).all()  # the border: the nearest view alone
    assert (fast_rgb[0, :5] == 0).all()


def _log_with_other_sensors() -> LogReference:
    """`_log_along_z` (CAM_FRONT at x = 0) plus two views of CAM_SIDE at x = 20 m facing the same wall (blue 200)
    and one of CAM_BACK there facing away from it."""
    front = _log_along_z()
    cams = [_camera_at(0.0, x_m=20.0), _camera_at(4.0, x_m=20.0), _camera_at(4.0, x_m=20.0)]
    cams[2].pose_camera_to_world[:3, :3] = np.diag([-1.0, 1.0, -1.0])  # CAM_BACK: looking down -z
    images = np.zeros((3, 24, 40, 3), np.uint8)
    images[..., 2] = 200
    depth = np.stack([np.full((24, 40), 40.0 - c.pose_camera_to_world[2, 3], np.float32) for c in cams])
    return LogReference(np.concatenate([front.images, images]), np.concatenate([front.depth_m, depth]),
                        np.concatenate([front.K, np.stack([c.K for c in cams])]),
                        np.concatenate([front.pose_camera_to_world, np.stack([c.pose_camera_to_world for c in cams])]),
                        np.array(list(front.sensor_ids) + ["CAM_SIDE", "CAM_SIDE", "CAM_BACK"]))


def test_other_sensors_fill_what_the_cameras_own_views_miss():
    """A rig camera 10 m to the side of its own sensor's log views sees part of the wall only the other sensor's
    views saw: with the fallback those pixels take that sensor's colour (its views weighted by distance, the sensor
    facing away left out), every pixel the camera's own views see keeps their blend, and the compiled warp equals
    its twin; without it (`fallback=False`, the stage-12 enhancer's input) they stay unseen."""
    reference = _log_with_other_sensors()
    target = _camera_at(5.0, x_m=10.0, size=(80, 48))
    target = Camera(80, 48, reference.K[0] * np.array([[2.0], [2.0], [1.0]]), target.pose_camera_to_world)
    depth = np.full((1, 48, 80), 35.0, np.float32)
    alpha = np.ones((1, 48, 80), np.float32)
    own_rgb, own_valid = warp_log(reference, ["CAM_FRONT"], [target], depth, alpha, 2, fallback=False)
    rgb, valid = warp_log(reference, ["CAM_FRONT"], [target], depth, alpha, 2)
    twin_rgb, twin_valid = warp_log_reference(reference, ["CAM_FRONT"], [target], depth, alpha, 2)
    np.testing.assert_array_equal(valid, twin_valid)
    assert np.abs(rgb.astype(np.int16) - np.round(twin_rgb * 255).astype(np.int16)).max() <= 1
    filled = valid & ~own_valid
    assert own_valid.mean() > 0.5 and filled.mean() > 0.1 and valid.all()
    np.testing.assert_array_equal(rgb[own_valid], own_rgb[own_valid])  # the camera's own views come first
    assert (rgb[filled][:, 2] == 200).all() and (rgb[filled][:, 0] == 0).all()  # CAM_SIDE's blue, nothing of CAM_FRONT
    index, weight = fallback_view_weights(reference, "CAM_FRONT", target, 2)
    assert set(reference.sensor_ids[index]) == {"CAM_SIDE"}  # CAM_BACK faces away
    np.testing.assert_allclose(weight.sum(), 1.0)
    assert len(fallback_view_weights(reference, "CAM_FRONT", target, 2, exclude=index)[0]) == 0
    twin_none = warp_log_reference(reference, ["CAM_FRONT"], [target], depth, alpha, 2, fallback=False)[1]
    np.testing.assert_array_equal(twin_none, own_valid)


def test_temporal_filter_equals_its_twin_clamps_and_forgets():
    """The compiled temporal accumulation equals its numpy twin; a history far outside the new image's 3 x 3
    range is clamped to it (no ghost); a camera that jumped, or a first tick, gets the new image as it is."""
    from neural_sensor.enhance.temporal import TemporalFilter, accumulate_reference

    rng = np.random.default_rng(5)
    prev_cam, cam = _camera_at(0.0, size=(40, 24)), _camera_at(0.5, x_m=0.1, size=(40, 24))
    depth_prev = np.full((24, 40), 20.0, np.float32)
    depth = np.full((24, 40), 19.5, np.float32)  # the same wall, half a metre nearer
    alpha = np.ones((24, 40), np.float32)
    alpha[:3] = 0.0
    first = rng.random((24, 40, 3)).astype(np.float32)
    second = np.clip(first + 0.05 * rng.standard_normal(first.shape), 0, 1).astype(np.float32)
    f = TemporalFilter(0.5)
    assert f.history_ticks("front") == 0
    np.testing.assert_array_equal(f.apply("front", prev_cam, depth_prev, alpha, first), first)  # no history yet
    assert f.history_ticks("front") == 1
    fast = f.apply("front", cam, depth, alpha, second)
    assert f.history_ticks("front") == 2  # (what a run's log.jsonl records as temporal_ticks)
    twin = accumulate_reference(cam, depth, alpha, second, prev_cam, first, depth_prev, 0.5)
    np.testing.assert_allclose(fast, twin, atol=2e-6)
    assert not np.array_equal(fast[3:], second[3:]) and np.array_equal(fast[:3], second[:3])  # sky as it is
    # a history of white over a black new image: clamped to the new image's neighbourhood (black), no ghost
    f = TemporalFilter(0.5)
    f.apply("front", prev_cam, depth_prev, alpha, np.ones_like(first))
    np.testing.assert_array_equal(f.apply("front", cam, depth, alpha, np.zeros_like(first)), 0.0)
    # a jump beyond max_jump_m starts afresh
    far = TemporalFilter(0.5, max_jump_m=0.1)
    far.apply("front", prev_cam, depth_prev, alpha, first)
    np.testing.assert_array_equal(far.apply("front", cam, depth, alpha, second), second)
    assert far.history_ticks("front") == 1
    far.reset("front")
    assert far.history_ticks("front") == 0
    for bad in (-0.1, 1.0, "0.5"):
        with pytest.raises(ValueError, match="blend"):
            TemporalFilter(bad)


def test_reference_depths_are_the_median_depth_at_its_level_of_detail():
    """`LogReference.from_views` keeps each view's median depth rendered at REFERENCE_LOD_PX (the level of detail a
    generated drive's 320-wide reference is rendered at), which on a street scene stays within 5 % of the exact
    render's depth on all but a few pixels (lod_px=0: exactly it), and keeps the images as uint8."""
    from neural_sensor.render import render
    from neural_sensor.testing import make_street_scene

    scene = make_street_scene(60_000, seed=3)
    cams = []
    for x in (0.0, 4.0, 8.0):  # FLU street, an OpenCV camera looking along +x at 1.6 m
        pose = np.array([[0, 0, 1, x], [-1, 0, 0, -1.75], [0, -1, 0, 1.6], [0, 0, 0, 1]], float)
        cams.append(Camera.from_fov(160, 96, 70.0, pose))
    images = render(scene, cams, backend="cpu", outputs=("rgb",)).rgb
    ref = LogReference.from_views(images, cams, ["CAM_FRONT"] * 3, scene, (0.5, 0.6, 0.9))
    at_lod = render(scene, cams, backend="cpu", outputs=("median_depth",), background=(0.5, 0.6, 0.9),
                    lod_px=REFERENCE_LOD_PX).median_depth
    exact = render(scene, cams, backend="cpu", outputs=("median_depth",), background=(0.5, 0.6, 0.9)).median_depth
    np.testing.assert_array_equal(ref.depth_m, at_lod)
    assert not np.array_equal(at_lod, exact)  # the level of detail does change some pixels here
    exactly = LogReference.from_views(images, cams, ["CAM_FRONT"] * 3, scene, (0.5, 0.6, 0.9), lod_px=0.0)
    np.testing.assert_array_equal(exactly.depth_m, exact)  # lod_px=0: the exact depth (a benchmark's ground truth)
    assert ref.images.dtype == np.uint8 and ref.images.shape == (3, 96, 160, 3)
    surface = np.isfinite(exact) & (exact > 0) & (exact < 1e3)
    relative = np.abs(ref.depth_m - exact)[surface] / exact[surface]
    assert surface.mean() > 0.3 and (relative > 0.05).mean() < 0.01, ((relative > 0.05).mean(), surface.mean())
