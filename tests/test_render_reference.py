"""The torch reference renderer: known answers, a brute-force oracle, tile independence, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _scenes import brute_force_composite, forward_camera, random_scene
from neural_sensor.camera import Camera
from neural_sensor.gaussians import GaussianScene
from neural_sensor.render import render
from neural_sensor.render._common import MAX_ALPHA, stack_cameras
from neural_sensor.render._torch_ref import render_torch


def _tensors(scene: GaussianScene, dtype=torch.float32):
    return [torch.tensor(getattr(scene, k), dtype=dtype) for k in ("means", "quats", "scales", "opacities", "sh")]


def _camera_tensors(cameras, dtype=torch.float32):
    batch = stack_cameras(cameras)
    return torch.tensor(batch.viewmats, dtype=dtype), torch.tensor(batch.Ks, dtype=dtype), batch.width, batch.height


def _axis_camera(size=33):
    """Odd-sized camera on the world x axis: the centre pixel's centre is the principal point."""
    return Camera.look_at(size, size, 60.0, np.zeros(3), np.array([1.0, 0.0, 0.0]))


def _single(opacity=0.8, scale=0.3, depth=5.0, rgb=(0.9, 0.2, 0.1)):
    sh = ((np.asarray(rgb, np.float32) - 0.5) / 0.28209479177387814)[None, None, :]
    return GaussianScene(
        np.array([[depth, 0.0, 0.0]], np.float32),
        np.array([[1.0, 0.0, 0.0, 0.0]], np.float32),
        np.full((1, 3), scale, np.float32),
        np.array([opacity], np.float32),
        sh.astype(np.float32),
        np.array([7], np.uint8),
        np.array([42], np.int32),
    )


def test_single_gaussian_known_answer():
    """An isotropic Gaussian on the optical axis: at the pixel nearest its centre alpha is o * exp(-sigma)."""
    camera = _axis_camera()
    scene = _single()
    out = render(scene, camera, backend="torch", outputs=("rgb", "depth", "alpha", "semantic", "instance"),
                 background=(0.0, 0.0, 1.0))
    f = camera.K[0, 0]
    # projected variance: (f * s / z)^2 + 0.3 (dilation); the pixel centre sits on the mean (sigma = 0)
    alpha = 0.8
    assert out.alpha[0, 16, 16] == pytest.approx(alpha, rel=1e-5)
    np.testing.assert_allclose(out.rgb[0, 16, 16], np.array([0.9, 0.2, 0.1]) * alpha + [0, 0, 1 - alpha], rtol=1e-5)
    assert out.depth[0, 16, 16] == pytest.approx(5.0, rel=1e-6)
    assert out.semantic[0, 16, 16] == 7 and out.instance[0, 16, 16] == 42
    # one pixel to the right: sigma = 0.5 dx^2 / var
    var = (f * 0.3 / 5.0) ** 2 + 0.3
    assert out.alpha[0, 16, 17] == pytest.approx(alpha * np.exp(-0.5 / var), rel=1e-5)
    # far corner: below the alpha threshold, so untouched background and no label
    assert out.alpha[0, 0, 0] == 0.0 and out.semantic[0, 0, 0] == 0
    np.testing.assert_array_equal(out.rgb[0, 0, 0], [0, 0, 1])


def test_alpha_clamp_and_semantic_threshold():
    camera = _axis_camera()
    out = render(_single(opacity=1.0), camera, backend="torch", outputs=("alpha", "semantic"))
    assert out.alpha[0, 16, 16] == pytest.approx(MAX_ALPHA, rel=1e-6)
    faint = render(_single(opacity=0.4), camera, backend="torch", outputs=("alpha", "semantic"))
    assert faint.alpha[0, 16, 16] == pytest.approx(0.4, rel=1e-5)
    assert faint.semantic[0, 16, 16] == 0  # alpha < 0.5: unlabeled


def test_semantic_is_gaussian_of_largest_weight():
    """A faint Gaussian in front and an opaque one behind: the label is the one behind."""
    camera = _axis_camera()
    front, back = _single(opacity=0.3, depth=4.0), _single(opacity=0.95, depth=6.0)
    back = back.replace(labels=np.array([3], np.uint8), instance=np.array([9], np.int32))
    out = render(GaussianScene.concat([front, back]), camera, backend="torch", outputs=("alpha", "semantic", "instance"))
    # weights at the centre: front 0.3, back 0.95 * 0.7 = 0.665
    assert out.semantic[0, 16, 16] == 3 and out.instance[0, 16, 16] == 9


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_matches_brute_force_oracle(seed):
    scene = random_scene(300, seed=seed, sh_degree=2)
    camera = forward_camera(40, 28)
    background = (0.2, 0.4, 0.6)
    out = render(scene, camera, backend="torch", outputs=("rgb", "alpha"), background=background)
    oracle = brute_force_composite(scene, camera, background)
    np.testing.assert_allclose(out.rgb[0], oracle["rgb"], atol=2e-5)
    np.testing.assert_allclose(out.alpha[0], oracle["alpha"], atol=2e-5)


def test_reference_does_not_depend_on_tile_size():
    """Every Gaussian in a tile list is composited (no cap) and the box is exact, so tiles do not matter."""
    scene = random_scene(3000, seed=4, sh_degree=1, spread_m=1.0)  # thousands of Gaussians in a few tiles
    args = _tensors(scene) + list(_camera_tensors([forward_camera(50, 30)]))
    labels = torch.tensor(scene.labels.astype(np.int64))
    outs = [render_torch(*args, labels=labels, tile_size=ts) for ts in (4, 16, 64)]
    for other in outs[1:]:
        for key in ("rgb", "depth", "alpha"):
            torch.testing.assert_close(other[key], outs[0][key], atol=2e-6, rtol=1e-5)
        assert torch.equal(other["semantic"], outs[0]["semantic"])


def test_gradients_match_finite_differences():
    """d(image)/d(means, quats, scales, opacities, sh) against central differences, float64."""
    scene = random_scene(6, seed=9, sh_degree=1, spread_m=0.4)
    scene = scene.replace(opacities=np.full(6, 0.6, np.float32), scales=np.full((6, 3), 0.15, np.float32))
    viewmats, Ks, w, h = _camera_tensors([forward_camera(12, 10, fov_deg=40.0)], torch.float64)
    params = [t.requires_grad_(True) for t in _tensors(scene, torch.float64)]
    weights = torch.randn(h, w, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss(means, quats, scales, opacities, sh):
        out = render_torch(means, quats, scales, opacities, sh, viewmats, Ks, w, h)
        return (out["rgb"][0] * weights).sum() + 0.1 * (out["depth"][0] * out["alpha"][0]).sum()

    loss(*params).backward()
    for name, p in zip(("means", "quats", "scales", "opacities", "sh"), params):
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient: the check would be empty"
        p.grad = None
    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_render_torch_asserts_shapes_with_the_offending_shape():
    scene = random_scene(5, seed=0)
    means, quats, scales, opacities, sh = _tensors(scene)
    viewmats, Ks, w, h = _camera_tensors([forward_camera()])
    with pytest.raises(AssertionError, match=r"torch.Size\(\[5, 3\]\)"):
        render_torch(means, quats[:, :3], scales, opacities, sh, viewmats, Ks, w, h)
    with pytest.raises(AssertionError, match=r"torch.Size\(\[3, 3\]\)"):
        render_torch(means, quats, scales, opacities, sh, viewmats[0, :3, :3], Ks, w, h)
