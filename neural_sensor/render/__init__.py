"""render(): one entry point for every backend.

Backends:
    "gsplat"  gsplat.rasterization on CUDA (optional extra `pip install .[gpu]`)
    "cpu"     numba kernels, parallel over tiles: the fast path on CPUs
    "torch"   the plain-PyTorch reference (`_torch_ref.py`), differentiable
    "auto"    gsplat when CUDA and gsplat are available, else "cpu"

For gradients, call `neural_sensor.render._torch_ref.render_torch` with tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from neural_sensor.camera import Camera
from neural_sensor.gaussians import GaussianScene, PlacedScene
from neural_sensor.parallel import parallel_section
from neural_sensor.render._common import (ALL_OUTPUTS, LOD_PX, RECONSTRUCTION_LOD_PX, SKY_RGB, check_background,
                                          check_lod_px, check_outputs, stack_cameras)
from neural_sensor.render.upsample import RECONSTRUCTION_SCALE, check_scale, upsample

BACKENDS = ("auto", "gsplat", "cpu", "torch")


@dataclass
class RenderOutput:
    """Rendered images for C cameras; fields not requested are None.

    rgb       [C, H, W, 3] float32 >= 0 (plus background x remaining transmittance); at most 1 where the
              scene's colours are (a PLY's SH highlights above 1 are drawn as they are, as gsplat does)
    depth     [C, H, W] float32 expected camera z in metres (sum w z / alpha; 0 where alpha = 0)
    alpha     [C, H, W] float32 accumulated opacity, 1 - final transmittance
    semantic  [C, H, W] uint8 label of the Gaussian with the largest blending weight; 0 where alpha < 0.5
    instance  [C, H, W] int32 instance id by the same rule
    median_depth [C, H, W] float32 camera z in metres of the Gaussian that takes the transmittance to 0.5
              or below (the surface a depth sensor sees; MEDIAN_T); the expected depth where alpha < 0.5
    backend   the backend that produced it
    """

    rgb: np.ndarray | None = None
    depth: np.ndarray | None = None
    alpha: np.ndarray | None = None
    semantic: np.ndarray | None = None
    instance: np.ndarray | None = None
    median_depth: np.ndarray | None = None
    backend: str = ""


def cuda_available() -> bool:
    """True when torch sees a CUDA device, gsplat imports and its CUDA kernels load.

    gsplat's PyPI wheel compiles its kernels on first use (minutes, once per machine); where that compile
    fails gsplat still imports but cannot rasterise, so "auto" must not pick it (it says why on stderr).
    """
    try:
        import torch

        if not torch.cuda.is_available():
            return False
        from gsplat.cuda._backend import _C  # imports gsplat; compiles its kernels on first use
    except (ImportError, OSError, RuntimeError):  # not installed, or its kernels could not be built / loaded
        return False
    return _C is not None


# outputs gsplat cannot accumulate: it enumerates every (Gaussian, pixel) pair and sorts them
# (`gsplat_backend`), measured slower than the cpu kernel on a run's rig (docs/results.md, "On a GPU")
PAIR_OUTPUTS = frozenset({"semantic", "instance", "median_depth"})


def resolve_backend(backend: str, outputs: Sequence[str] = ("rgb", "depth", "alpha")) -> str:
    """Map "auto" to a concrete backend for these outputs; reject unknown names.

    "auto" is gsplat where its kernels load and every output is an accumulation (rgb, depth, alpha), else cpu.
    """
    if backend not in BACKENDS:
        raise ValueError(f"render: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "gsplat" if not PAIR_OUTPUTS & set(outputs) and cuda_available() else "cpu"
    return backend


def backend_impl(name: str):
    """The render function of a concrete backend ("cpu", "torch", "gsplat"), its module imported now (a caller
    that renders on a worker thread imports it first on its own: torch's first import in a daemon thread while
    the interpreter exits crashes it)."""
    if name == "cpu":
        from neural_sensor.render.cpu import render_cpu as impl
    elif name == "torch":
        from neural_sensor.render._torch_ref import render_reference as impl
    elif name == "gsplat":
        from neural_sensor.render.gsplat_backend import render_gsplat as impl
    else:
        raise ValueError(f"render: backend_impl takes cpu, torch or gsplat, got {name!r}")
    return impl


def render(
    scene: GaussianScene | PlacedScene | Sequence[GaussianScene | PlacedScene],
    cameras: Camera | Sequence[Camera],
    *,
    backend: str = "auto",
    outputs: Sequence[str] = ("rgb", "depth", "alpha"),
    background: Sequence[float] = SKY_RGB,
    lod_px: float = 0.0,
    out: Mapping[str, np.ndarray] | None = None,
    scale: float = 1.0,
) -> RenderOutput:
    """Render a Gaussian scene into C cameras that share one image size.

    Args:
        scene: GaussianScene with N Gaussians (world frame), a PlacedScene (local
            scene + pose), or a list of them rendered together as one scene
            (e.g. `compose()`'s background + agents).
        cameras: one Camera or a list of C Cameras, all W x H.
        backend: "auto" | "gsplat" | "cpu" | "torch".
        outputs: subset of ("rgb", "depth", "alpha", "semantic", "instance", "median_depth").
        background: [3] RGB in [0, 1] behind everything (default: a clear sky, SKY_RGB; pass
            (0, 0, 0) for black).
        lod_px: level of detail of the "cpu" backend (the others draw every Gaussian): where a group of up to 8
            neighbouring Gaussians lies so far that its moment-matched merge has its largest standard deviation
            within lod_px pixels, the merge is drawn instead of the group (`render.cpu.LOD_PX` is what a run
            uses). 0 (the default) draws every Gaussian: the exact render.
        out: optional arrays the caller owns that receive some of the float outputs ("rgb", "depth", "alpha",
            "median_depth", each requested, float32, C-contiguous, writable, shaped as below); the "cpu" backend
            renders into them, the others copy into them. An enhancer client's shared block
            (`EnhancerClient.frame_buffers`) is such a place: the images then travel to its worker without a copy.
        scale: in (0, 1]: render at this fraction of the cameras' size (each side rounded, at least 1 pixel; lod_px
            keeps its meaning in the cameras' pixels) and upsample to it (`render.upsample`: bilinear for rgb,
            depth and alpha, nearest for median_depth, semantic and instance). A reconstruction's Gaussians are
            coarser than the rig's pixels, so the run draws one at RECONSTRUCTION_SCALE: 40 % less of the render's
            time for 0.00-0.02 dB (render/upsample.py). 1 (the default): the cameras' size.
    Returns:
        RenderOutput with rgb [C, H, W, 3], depth [C, H, W], alpha [C, H, W],
        semantic [C, H, W] uint8, instance [C, H, W] int32, median_depth [C, H, W] (those requested).
    """
    with parallel_section():  # (numba's workqueue layer takes one thread at a time: neural_sensor.parallel)
        return _render(scene, cameras, backend, outputs, background, lod_px, out, scale)


def _render(scene, cameras, backend, outputs, background, lod_px, out, scale) -> RenderOutput:
    single = isinstance(scene, (GaussianScene, PlacedScene))
    parts = [scene] if single else list(scene) if isinstance(scene, (list, tuple)) else None
    if not parts or not all(isinstance(p, (GaussianScene, PlacedScene)) for p in parts):
        raise ValueError("render: scene must be a GaussianScene, a PlacedScene or a non-empty list of them, "
                         f"got {type(scene).__name__}")
    batch = stack_cameras(cameras)
    outputs = check_outputs(outputs)
    bg = check_background(background)
    lod_px = check_lod_px(lod_px, "render")
    scale = check_scale(scale, "render")
    name = resolve_backend(backend, outputs)
    c, h, w = len(batch.viewmats), batch.height, batch.width
    expected = {"rgb": (c, h, w, 3), **{k: (c, h, w) for k in ALL_OUTPUTS if k != "rgb"}}
    out = _check_out(out, outputs, expected)
    small_h, small_w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if (small_h, small_w) != (h, w):
        cams = [cameras] if isinstance(cameras, Camera) else list(cameras)
        small = [Camera(small_w, small_h, np.diag([small_w / w, small_h / h, 1.0]) @ cam.K, cam.pose_camera_to_world)
                 for cam in cams]
        low = _render(parts, small, name, outputs, bg, lod_px * small_w / w, None, 1.0)
        images = {}
        for key in outputs:
            mode = "bilinear" if key in ("rgb", "depth", "alpha") else "nearest"
            images[key] = upsample(getattr(low, key), h, w, mode, out=out.get(key))
        return RenderOutput(**{k: images.get(k) for k in ALL_OUTPUTS}, backend=name)
    impl = backend_impl(name)
    if name != "cpu":
        world = [p.materialize() if isinstance(p, PlacedScene) else p for p in parts]
        parts = [world[0] if len(world) == 1 else GaussianScene.concat(world)]
    if name == "cpu":
        images = impl(parts, batch, outputs, bg, lod_px=lod_px, out=out)
    else:
        images = impl(parts[0], batch, outputs, bg)
        for key, target in out.items():
            np.copyto(target, images[key], casting="same_kind")
            images[key] = target
    for key in outputs:
        assert images[key].shape == expected[key], (key, images[key].shape)
    return RenderOutput(**{k: images.get(k) for k in ALL_OUTPUTS}, backend=name)


_OUT_KEYS = ("rgb", "depth", "alpha", "median_depth")


def _check_out(out, outputs: tuple[str, ...], expected: dict) -> dict[str, np.ndarray]:
    """render()'s `out`, checked: {output: float32 C-contiguous writable array of its shape}; ValueError naming
    the first that is not."""
    if out is None:
        return {}
    if not isinstance(out, Mapping):
        raise ValueError(f"render: out must be a mapping of output name to array, got {type(out).__name__}")
    for key, array in out.items():
        if key not in _OUT_KEYS or key not in outputs:
            raise ValueError(f"render: out[{key!r}]: only requested outputs among {_OUT_KEYS} can be given "
                             f"(requested: {outputs})")
        if (not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.shape != expected[key]
                or not array.flags.c_contiguous or not array.flags.writeable):
            got = (f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__)
            raise ValueError(f"render: out[{key!r}] must be a writable C-contiguous float32 array of "
                             f"{expected[key]}, got {got}")
    return dict(out)


__all__ = ["render", "backend_impl", "RenderOutput", "BACKENDS", "LOD_PX", "RECONSTRUCTION_LOD_PX",
           "RECONSTRUCTION_SCALE", "SKY_RGB", "resolve_backend", "cuda_available"]
