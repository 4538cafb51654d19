"""Synthetic worlds: determinism, the train / held-out split, target geometry."""

from __future__ import annotations

import numpy as np
import pytest

from neural_sensor.train.synthetic import TARGET_KINDS, WorldConfig, check_split, make_world

SMALL = WorldConfig(width=64, height=40, timesteps=3, voxel_m=0.6)


def test_same_seed_same_world():
    a, b = make_world(5, "train", SMALL), make_world(5, "train", SMALL)
    assert a.layout.to_json() == b.layout.to_json()
    np.testing.assert_array_equal(a.context.rgb, b.context.rgb)
    np.testing.assert_array_equal(a.targets["shift_2m"].depth, b.targets["shift_2m"].depth)
    c = make_world(6, "train", SMALL)
    assert not np.array_equal(a.context.rgb, c.context.rgb)


def test_views_and_targets():
    world = make_world(1_000_007, "heldout", SMALL)
    assert world.context.rgb.shape == (3 * 6, 40, 64, 3)  # 3 timesteps x 6 cameras
    assert set(world.targets) == set(TARGET_KINDS)
    assert world.context.alpha.mean() > 0.5 and world.context.semantic.max() > 0
    anchor = world.context.cameras[1 * 6]  # CAM_FRONT at the middle timestep
    for shift in (1, 2, 3):
        moved = world.targets[f"shift_{shift}m"].cameras[0]
        offset = moved.position_world - anchor.position_world
        assert np.linalg.norm(offset) == pytest.approx(shift, abs=1e-6)
        # to the left of the camera: along -x of the OpenCV camera frame
        assert offset @ anchor.pose_camera_to_world[:3, 0] == pytest.approx(-shift, abs=1e-6)
    raised = world.targets["raised_1m"].cameras[0]
    assert (raised.position_world - anchor.position_world)[2] == pytest.approx(1.0)
    interp = world.targets["interpolated"]
    assert interp.timestep.tolist() == [0.5] * 3 + [1.5] * 3


def test_held_out_seeds_never_train():
    check_split(0, "train")
    check_split(1_000_000, "heldout")
    with pytest.raises(ValueError, match="not a training seed"):
        make_world(1_000_000, "train", SMALL)
    with pytest.raises(ValueError, match="not a held-out seed"):
        make_world(3, "heldout", SMALL)
    with pytest.raises(ValueError, match="split must be"):
        check_split(3, "validation")
