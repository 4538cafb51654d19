"""Differentiable rendering for training: gsplat's rasteriser on CUDA, a pure-torch path elsewhere.

The training scripts render predicted Gaussians through `render_differentiable`, which
dispatches by backend:

    "torch"         our reference (`_torch_ref.render_torch`): any device, the CPU default
    "gsplat"        `gsplat.rasterization` (CUDA kernels, "classic" mode, RGB + expected depth)
    "auto"          "gsplat" when the tensors are on CUDA and gsplat's kernels load, else "torch"

Every backend takes the same tensors and returns the same dict, so a training step is
written once, and runs (and is tested) on a CPU with "torch". gsplat's rasteriser itself
needs CUDA (its pure-torch twin still calls a CUDA kernel to enumerate pixel-Gaussian
pairs), so on a CPU the tests check the conventions we hand it (view matrices, intrinsics,
dilation, SH layout) against gsplat's pure-torch projection and SH evaluation, and the
full parity test runs where CUDA is. gsplat 1.5.x clamps alpha at 0.999 where our contract says 0.99 (see
gsplat_backend.py): pixels where one Gaussian's alpha would exceed 0.99 differ slightly.
"""

from __future__ import annotations

import torch

from neural_sensor.render._common import EPS2D, FAR_PLANE_M, NEAR_PLANE_M, TILE_SIZE

DIFF_BACKENDS = ("auto", "torch", "gsplat")


def resolve_diff_backend(backend: str, device: torch.device | str) -> str:
    """Map "auto" to a concrete differentiable backend for tensors on `device`; reject unknown names."""
    if backend not in DIFF_BACKENDS:
        raise ValueError(f"render_differentiable: backend must be one of {DIFF_BACKENDS}, got {backend!r}")
    on_cuda = torch.device(device).type == "cuda"
    if backend == "auto":
        from neural_sensor.render import cuda_available

        return "gsplat" if on_cuda and cuda_available() else "torch"
    if backend == "gsplat" and not on_cuda:
        raise ValueError("render_differentiable: backend 'gsplat' needs CUDA tensors; use 'torch' on a CPU")
    return backend


def render_differentiable(
    means: torch.Tensor,  # [N, 3]
    quats: torch.Tensor,  # [N, 4]
    scales: torch.Tensor,  # [N, 3]
    opacities: torch.Tensor,  # [N]
    sh: torch.Tensor,  # [N, K, 3]
    viewmats: torch.Tensor,  # [C, 4, 4]
    Ks: torch.Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    background: torch.Tensor,  # [3]
    backend: str = "auto",
) -> dict[str, torch.Tensor]:
    """Render C cameras with gradients to every Gaussian parameter.

    Args:
        means [N, 3] world frame; quats [N, 4] (w, x, y, z); scales [N, 3] linear; opacities [N] in [0, 1];
        sh [N, K, 3] SH coefficients (K in 1, 4, 9, 16); viewmats [C, 4, 4] pose_world_to_camera;
        Ks [C, 3, 3]; background [3] RGB behind everything; backend: see the module docstring.
    Returns:
        rgb [C, H, W, 3], depth [C, H, W] (expected camera z, 0 where alpha is 0), alpha [C, H, W].
    """
    n, c_count = means.shape[0], viewmats.shape[0]
    assert means.shape == (n, 3) and quats.shape == (n, 4) and scales.shape == (n, 3), (means.shape, quats.shape)
    assert opacities.shape == (n,) and sh.ndim == 3 and sh.shape[0] == n and sh.shape[2] == 3, sh.shape
    assert viewmats.shape == (c_count, 4, 4) and Ks.shape == (c_count, 3, 3), (viewmats.shape, Ks.shape)
    assert background.shape == (3,), background.shape
    background = background.to(device=means.device, dtype=means.dtype)
    name = resolve_diff_backend(backend, means.device)
    if name == "torch":
        from neural_sensor.render._torch_ref import render_torch

        out = render_torch(means, quats, scales, opacities, sh, viewmats, Ks, width, height, background=background)
        return {"rgb": out["rgb"], "depth": out["depth"], "alpha": out["alpha"]}
    from gsplat import rasterization

    renders, alphas, _ = rasterization(means, quats, scales, opacities, sh, viewmats, Ks, width, height,
                                       **gsplat_kwargs(sh.shape[1], background, c_count))
    return {"rgb": renders[..., :3], "depth": renders[..., 3], "alpha": alphas[..., 0]}


def gsplat_kwargs(sh_bases: int, background: torch.Tensor, c_count: int) -> dict:
    """The keyword arguments our contract gives `gsplat.rasterization` (DESIGN.md, Rendering contract)."""
    return dict(near_plane=NEAR_PLANE_M, far_plane=FAR_PLANE_M, eps2d=EPS2D,
                sh_degree={1: 0, 4: 1, 9: 2, 16: 3}[sh_bases], tile_size=TILE_SIZE,
                backgrounds=background[None].expand(c_count, 3).contiguous(), render_mode="RGB+ED",
                rasterize_mode="classic", packed=False)
