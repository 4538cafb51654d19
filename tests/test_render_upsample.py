"""render(scale=): a scene drawn at a fraction of the cameras' size and upsampled (render/upsample.py).

The compiled upsample against its torch twin (bilinear with align_corners=False, nearest-exact), and render(scale=)
against the render at the small cameras upsampled by the twin."""

from __future__ import annotations

import numpy as np
import pytest

from neural_sensor.camera import Camera
from neural_sensor.render import render
from neural_sensor.render.upsample import upsample, upsample_reference
from neural_sensor.testing import make_street_scene, street_cameras

ALL = ("rgb", "depth", "alpha", "semantic", "instance", "median_depth")


@pytest.mark.parametrize("shape, size", [((2, 5, 7), (11, 16)), ((3, 135, 240, 3), (270, 480)),
                                         ((1, 1, 1), (3, 4)), ((1, 4, 4, 2), (4, 4))])
def test_upsample_matches_its_torch_twin(shape, size):
    rng = np.random.default_rng(len(shape))
    image = rng.random(shape).astype(np.float32)
    fast = upsample(image, *size, "bilinear")
    assert fast.shape == (shape[0], *size) + shape[3:] and fast.dtype == np.float32
    np.testing.assert_allclose(fast, upsample_reference(image, *size, "bilinear"), atol=2e-7)
    labels = rng.integers(0, 30, shape).astype(np.uint8)
    np.testing.assert_array_equal(upsample(labels, *size, "nearest"), upsample_reference(labels, *size, "nearest"))
    out = np.full((shape[0], *size) + shape[3:], -1.0, np.float32)
    assert upsample(image, *size, "nearest", out=out) is out and (out >= 0).all()


def test_upsample_refuses_a_bad_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        upsample(np.zeros((1, 2, 2), np.float32), 4, 4, "bicubic")


def test_render_at_half_size_is_the_small_render_upsampled():
    scene = make_street_scene(20_000, seed=0)
    cameras = street_cameras(96, 54, count=2)
    half = render(scene, cameras, backend="cpu", outputs=ALL, lod_px=2.0, scale=0.5)
    small = [Camera(48, 27, np.diag([0.5, 0.5, 1.0]) @ c.K, c.pose_camera_to_world) for c in cameras]
    low = render(scene, small, backend="cpu", outputs=ALL, lod_px=1.0)  # lod_px keeps its meaning in the cameras' px
    assert low.alpha.max() > 0.5
    for key in ALL:
        got, source = getattr(half, key), getattr(low, key)
        assert got.shape == ((2, 54, 96, 3) if key == "rgb" else (2, 54, 96)) and got.dtype == source.dtype, key
        mode = "bilinear" if key in ("rgb", "depth", "alpha") else "nearest"
        np.testing.assert_allclose(got.astype(np.float64), upsample_reference(source, 54, 96, mode).astype(np.float64),
                                   rtol=1e-5, atol=1e-5, err_msg=key)
    # into a caller's buffers (the enhancer client's shared block), and scale 1 is the plain render
    out = {"rgb": np.zeros((2, 54, 96, 3), np.float32), "alpha": np.zeros((2, 54, 96), np.float32)}
    into = render(scene, cameras, backend="cpu", outputs=("rgb", "alpha"), lod_px=2.0, scale=0.5, out=out)
    assert into.rgb is out["rgb"] and np.array_equal(out["rgb"], half.rgb)
    full = render(scene, cameras, backend="cpu", outputs=("rgb",), lod_px=2.0)
    assert np.array_equal(render(scene, cameras, backend="cpu", outputs=("rgb",), lod_px=2.0, scale=1.0).rgb, full.rgb)


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, float("nan"), "0.5", True])
def test_render_refuses_a_bad_scale(bad):
    scene = make_street_scene(1_000, seed=0)
    with pytest.raises(ValueError, match=r"scale must be a number in \(0, 1\]"):
        render(scene, street_cameras(32, 18), scale=bad)
