"""The training renderer: one call for our torch reference and gsplat.

gsplat's rasteriser needs CUDA (its pure-torch twin still enumerates pixel-Gaussian pairs
with a CUDA kernel), so its parity test is skipped without it. On a CPU, what we hand
gsplat (view matrices, intrinsics, dilation, near / far planes, SH layout) is checked
against gsplat's own pure-torch projection and SH evaluation, and the training path runs
through the "torch" backend (tests/test_run_regime_training.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _scenes import forward_camera, random_scene
from neural_sensor.render._common import stack_cameras
from neural_sensor.render._torch_ref import _project, _quat_scale_to_covar, _sh_to_rgb
from neural_sensor.render.differentiable import gsplat_kwargs, render_differentiable, resolve_diff_backend


def _inputs(seed: int, sh_degree: int, n: int = 600):
    scene = random_scene(n, seed=seed, sh_degree=sh_degree)
    tensors = {k: torch.tensor(getattr(scene, k), dtype=torch.float32)
               for k in ("means", "quats", "scales", "opacities", "sh")}
    batch = stack_cameras([forward_camera(48, 32, yaw=yaw) for yaw in (0.0, 0.25)])
    return tensors, torch.tensor(batch.viewmats, dtype=torch.float32), torch.tensor(batch.Ks, dtype=torch.float32)


def test_our_projection_conventions_match_gsplats_torch_projection():
    twin = pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat is not installed (pip install .[gpu])")
    t, viewmats, Ks = _inputs(0, 0)
    kwargs = gsplat_kwargs(1, torch.zeros(3), len(viewmats))
    covars, _ = twin._quat_scale_to_covar_preci(t["quats"], t["scales"], True, False, triu=False)
    np.testing.assert_allclose(covars.numpy(), _quat_scale_to_covar(t["quats"], t["scales"]).numpy(), atol=1e-5)
    radii, means2d, depths, conics, _ = twin._fully_fused_projection(
        t["means"], covars, viewmats, Ks, 48, 32, eps2d=kwargs["eps2d"], near_plane=kwargs["near_plane"],
        far_plane=kwargs["far_plane"])
    checked = 0
    for cam in range(len(viewmats)):
        ours = _project(t["means"], covars, t["opacities"], viewmats[cam], Ks[cam], 48, 32)
        both = ours["valid"] & (radii[cam] > 0).all(dim=-1)
        checked += int(both.sum())
        torch.testing.assert_close(ours["mean2d"][both], means2d[cam][both], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(ours["conic"][both], conics[cam][both], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours["depth"][both], depths[cam][both])
    assert checked > 200


def test_our_sh_layout_matches_gsplats():
    twin = pytest.importorskip("gsplat.cuda._torch_impl", reason="gsplat is not installed (pip install .[gpu])")
    for degree in (0, 1, 2, 3):
        t, _, _ = _inputs(degree, degree, n=50)
        dirs = torch.nn.functional.normalize(torch.randn(50, 3, generator=torch.Generator().manual_seed(degree)),
                                             dim=-1)
        theirs = torch.clamp_min(twin._spherical_harmonics(degree, dirs, t["sh"]) + 0.5, 0.0)
        torch.testing.assert_close(_sh_to_rgb(t["sh"], dirs), theirs, rtol=1e-4, atol=1e-5)


def test_torch_backend_renders_with_gradients():
    t, viewmats, Ks = _inputs(3, 1, n=300)
    leaves = {k: v.clone().requires_grad_(True) for k, v in t.items()}
    out = render_differentiable(leaves["means"], leaves["quats"], leaves["scales"], leaves["opacities"],
                                leaves["sh"], viewmats, Ks, 48, 32, background=torch.tensor([0.1, 0.2, 0.3]),
                                backend="auto")
    assert out["rgb"].shape == (2, 32, 48, 3) and out["depth"].shape == out["alpha"].shape == (2, 32, 48)
    assert out["alpha"].max() > 0.5
    (out["rgb"].mean() + out["depth"].mean()).backward()
    assert all(leaf.grad is not None and leaf.grad.abs().sum() > 0 for leaf in leaves.values())


def test_backend_resolution():
    assert resolve_diff_backend("auto", "cpu") == "torch"
    with pytest.raises(ValueError, match="needs CUDA"):
        resolve_diff_backend("gsplat", "cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_diff_backend("vulkan", "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for gsplat's rasteriser")
def test_gsplat_matches_reference_with_gradients():  # pragma: no cover - needs a GPU
    pytest.importorskip("gsplat")
    t, viewmats, Ks = _inputs(4, 1)
    t["opacities"] = t["opacities"].clamp_max(0.9)  # below gsplat 1.5's 0.999 clamp and our 0.99
    background = torch.tensor([0.2, 0.5, 0.8])
    outs, grads = [], []
    for backend, device in (("torch", "cpu"), ("gsplat", "cuda")):
        leaves = {k: v.to(device).clone().requires_grad_(True) for k, v in t.items()}
        out = render_differentiable(*leaves.values(), viewmats.to(device), Ks.to(device), 48, 32,
                                    background=background.to(device), backend=backend)
        (out["rgb"].square().mean() + 0.01 * out["depth"].mean()).backward()
        outs.append({k: v.detach().cpu() for k, v in out.items()})
        grads.append({k: v.grad.cpu() for k, v in leaves.items()})
    assert (outs[0]["rgb"] - outs[1]["rgb"]).abs().max() < 1e-3
    assert (outs[0]["alpha"] - outs[1]["alpha"]).abs().max() < 1e-3
    for key in ("means", "opacities", "sh"):
        scale = grads[0][key].abs().max().clamp_min(1e-8)
        assert (grads[0][key] - grads[1][key]).abs().max() / scale < 2e-2, key
