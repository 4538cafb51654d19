"""gsplat backend: parity with the reference on CUDA (skipped without it), and its CPU-side pair logic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _scenes import brute_force_composite, forward_camera, psnr, random_scene
from neural_sensor.render import cuda_available, render
from neural_sensor.render.gsplat_backend import best_gaussian_from_pairs
from neural_sensor.testing import make_street_scene, street_cameras

ALL = ("rgb", "depth", "alpha", "semantic", "instance", "median_depth")


def test_best_gaussian_from_pairs_matches_reference_semantics():
    scene = random_scene(400, seed=3, sh_degree=0)
    scene = scene.replace(labels=(np.arange(len(scene)) % 250 + 1).astype(np.uint8))  # labels identify Gaussians
    camera = forward_camera(40, 30)
    oracle = brute_force_composite(scene, camera)
    gauss, pixel, alphas, depths = (oracle[k] for k in ("pair_gauss", "pair_pixel", "pair_alpha", "pair_depth"))
    n_pixels = camera.width * camera.height
    assert gauss.numel() > 1000
    shuffle = torch.randperm(gauss.numel(), generator=torch.Generator().manual_seed(0))  # any input order
    best = best_gaussian_from_pairs(gauss[shuffle], pixel[shuffle], alphas[shuffle], depths[shuffle], n_pixels)
    ref = render(scene, camera, backend="torch", outputs=("alpha", "semantic"))
    shown = (best >= 0).numpy() & (ref.alpha[0].reshape(-1) >= 0.5)
    labels = np.where(shown, scene.labels[best.clamp_min(0).numpy()], 0)
    assert (labels == ref.semantic[0].reshape(-1)).mean() >= 0.999
    assert shown.mean() > 0.3


def test_best_gaussian_from_pairs_empty():
    empty = torch.zeros(0, dtype=torch.int64)
    best = best_gaussian_from_pairs(empty, empty, empty.double(), empty.double(), 5)
    assert best.tolist() == [-1] * 5


def test_auto_takes_gsplat_only_for_accumulated_outputs(monkeypatch):
    """Where gsplat's kernels load, "auto" renders rgb / depth / alpha with it, and anything that needs its
    pair enumeration (the rig asks for all of them) with the cpu kernel."""
    import neural_sensor.render as render_module
    from neural_sensor.rig import RIG_OUTPUTS

    monkeypatch.setattr(render_module, "cuda_available", lambda: True)
    assert render_module.resolve_backend("auto") == "gsplat"
    assert render_module.resolve_backend("auto", ("rgb", "alpha")) == "gsplat"
    for extra in ("semantic", "instance", "median_depth"):
        assert render_module.resolve_backend("auto", ("rgb", extra)) == "cpu"
    assert render_module.resolve_backend("auto", RIG_OUTPUTS) == "cpu"
    assert render_module.resolve_backend("gsplat", RIG_OUTPUTS) == "gsplat"  # asked for by name: taken
    monkeypatch.setattr(render_module, "cuda_available", lambda: False)
    assert render_module.resolve_backend("auto") == "cpu"


def test_pair_order_matches_its_three_sort_twin():
    """Pixel, then camera z, then Gaussian index: the packed two-sort order equals one stable sort per key, with
    many ties in z (quantised) and in pixel, negative z included."""
    from neural_sensor.render.gsplat_backend import _pair_order, _pair_order_reference

    g = torch.Generator().manual_seed(0)
    m = 20_000
    gauss = torch.randint(0, 3000, (m,), generator=g)
    pixel = torch.randint(0, 500, (m,), generator=g)
    depth = (torch.randint(-40, 400, (m,), generator=g).float() * 0.25).float()  # ties, and z < 0
    fast, ref = _pair_order(pixel, depth, gauss), _pair_order_reference(pixel, depth, gauss)
    assert torch.equal(fast, ref)
    key = [(int(pixel[i]), float(depth[i]), int(gauss[i])) for i in fast.tolist()]
    assert key == sorted(key)


def test_one_ordering_serves_median_and_labels():
    from neural_sensor.render.gsplat_backend import _front_to_back, median_depth_from_pairs

    scene = random_scene(400, seed=4, sh_degree=0)
    oracle = brute_force_composite(scene, forward_camera(40, 30))
    pairs = tuple(oracle[k] for k in ("pair_gauss", "pair_pixel", "pair_alpha", "pair_depth"))
    ordered = _front_to_back(pairs[1], pairs[2], pairs[3], pairs[0])
    n = 40 * 30
    assert torch.equal(best_gaussian_from_pairs(*pairs, n, ordered=ordered), best_gaussian_from_pairs(*pairs, n))
    median = median_depth_from_pairs(*pairs, n, ordered=ordered)
    assert torch.allclose(median, median_depth_from_pairs(*pairs, n), rtol=0, atol=0, equal_nan=True)
    assert torch.isfinite(median).mean(dtype=torch.float32) > 0.3


def test_median_depth_from_pairs_known_answers():
    """Pixel 0: alphas 0.3, 0.3, 0.9 at z 2, 3, 4 (T 0.7, 0.49, ...): the crossing is the second pair, z 3.
    Pixel 1: one pair of alpha 0.6 (T 0.4) at z 7. Pixel 2: alpha 0.3 alone: never (NaN).
    Pixel 3: no pairs (NaN). Pairs come shuffled."""
    from neural_sensor.render.gsplat_backend import median_depth_from_pairs

    gauss = torch.tensor([0, 1, 2, 3, 4])
    pixel = torch.tensor([0, 0, 0, 1, 2])
    alphas = torch.tensor([0.3, 0.3, 0.9, 0.6, 0.3], dtype=torch.float64)
    depths = torch.tensor([2.0, 3.0, 4.0, 7.0, 5.0], dtype=torch.float64)
    shuffle = torch.tensor([4, 2, 0, 3, 1])
    median = median_depth_from_pairs(gauss[shuffle], pixel[shuffle], alphas[shuffle], depths[shuffle], 4)
    assert median[:2].tolist() == [3.0, 7.0] and torch.isnan(median[2:]).all()


needs_gsplat = pytest.mark.skipif(not cuda_available(), reason="needs CUDA and gsplat (pip install .[gpu])")


@needs_gsplat
@pytest.mark.gpu
@pytest.mark.parametrize("seed, sh_degree", [(0, 0), (1, 3)])
def test_gsplat_matches_reference(seed, sh_degree):
    scene = random_scene(3000, seed=seed, sh_degree=sh_degree)
    # gsplat < 1.6 clamps alpha at 0.999, we (and gsplat >= 1.6) at 0.99: keep alpha below both
    scene = scene.replace(opacities=np.minimum(scene.opacities, np.float32(0.99)))
    cameras = [forward_camera(96, 64, yaw=yaw) for yaw in (0.0, 0.25)]
    out = render(scene, cameras, backend="gsplat", outputs=ALL, background=(0.1, 0.2, 0.3))
    ref = render(scene, cameras, backend="torch", outputs=ALL, background=(0.1, 0.2, 0.3))
    assert psnr(out.rgb, ref.rgb) >= 45.0
    assert np.abs(out.alpha - ref.alpha).max() <= 1e-3
    solid = ref.alpha >= 0.01
    assert np.abs(out.depth - ref.depth)[solid].max() <= 1e-2
    assert (out.semantic == ref.semantic).mean() >= 0.995
    assert (out.instance == ref.instance).mean() >= 0.995
    assert (np.abs(out.median_depth - ref.median_depth) <= 1e-3 * ref.median_depth + 1e-4).mean() >= 0.995


@needs_gsplat
@pytest.mark.gpu
def test_gsplat_matches_reference_on_street_scene():
    scene = make_street_scene(100_000, seed=2, sh_degree=1)
    cameras = street_cameras(320, 180, count=2)
    out = render(scene, cameras, backend="gsplat", outputs=("rgb", "alpha"))
    ref = render(scene, cameras, backend="cpu", outputs=("rgb", "alpha"))
    assert psnr(out.rgb, ref.rgb) >= 45.0


def test_gsplat_pair_decoding_with_a_fake_gsplat(monkeypatch):
    """gsplat's rasterize_to_indices_in_range returns per-image Gaussian ids (g % N) and image ids apart.

    A stand-in following that contract (pairs from the brute-force oracle) checks the decoding on the CPU.
    """
    import sys
    import types

    from neural_sensor.render._common import stack_cameras
    from neural_sensor.render._torch_ref import _project, _quat_scale_to_covar
    from neural_sensor.render.gsplat_backend import _gsplat_pairs, median_depth_from_pairs

    scene = random_scene(300, seed=3)
    scene = scene.replace(instance=np.arange(1, len(scene) + 1, dtype=np.int32))
    cams = [forward_camera(40, 30, yaw=0.0), forward_camera(40, 30, yaw=0.25)]
    c_count, n, h, w = len(cams), len(scene), 30, 40
    batch = stack_cameras(cams)
    t = {k: torch.tensor(getattr(scene, k)) for k in ("means", "quats", "scales", "opacities")}
    cov = _quat_scale_to_covar(t["quats"], t["scales"])
    projs = [_project(t["means"], cov, t["opacities"], torch.tensor(batch.viewmats[c], dtype=torch.float32),
                      torch.tensor(batch.Ks[c], dtype=torch.float32), w, h) for c in range(c_count)]
    meta = {"means2d": torch.stack([p["mean2d"] for p in projs]), "conics": torch.stack([p["conic"] for p in projs]),
            "opacities": t["opacities"].expand(c_count, n), "depths": torch.stack([p["depth"] for p in projs]),
            "isect_offsets": torch.zeros(c_count, 2, 3, dtype=torch.int32),
            "flatten_ids": torch.zeros(5000, dtype=torch.int32)}

    def fake_indices(range_start, range_end, transmittances, means2d, conics, opacities, width, height, tile_size,
                     isect_offsets, flatten_ids):
        gauss, pixel, image = [], [], []
        for c, cam in enumerate(cams):
            oracle = brute_force_composite(scene, cam)
            gauss.append(oracle["pair_gauss"])
            pixel.append(oracle["pair_pixel"])
            image.append(torch.full_like(oracle["pair_pixel"], c))
        return torch.cat(gauss), torch.cat(pixel), torch.cat(image)

    gsplat = types.ModuleType("gsplat")
    gsplat.__version__ = "1.6.0"
    wrapper = types.ModuleType("gsplat.cuda._wrapper")
    wrapper.rasterize_to_indices_in_range = fake_indices
    monkeypatch.setitem(sys.modules, "gsplat", gsplat)
    monkeypatch.setitem(sys.modules, "gsplat.cuda", types.ModuleType("gsplat.cuda"))
    monkeypatch.setitem(sys.modules, "gsplat.cuda._wrapper", wrapper)
    pairs = _gsplat_pairs(meta, c_count, h, w, n)
    best = best_gaussian_from_pairs(*pairs, c_count * h * w).reshape(c_count, h, w)
    median = median_depth_from_pairs(*pairs, c_count * h * w).reshape(c_count, h, w).numpy()
    ref = render(scene, cams, backend="torch", outputs=("alpha", "instance", "median_depth", "depth"))
    crossed = ref.alpha > 0.5 + 1e-4  # away from the 0.5 crossing itself, where float order decides
    assert crossed.mean() > 0.3
    np.testing.assert_allclose(median[crossed], ref.median_depth[crossed], rtol=1e-5)
    assert np.isnan(median[ref.alpha < 0.5 - 1e-4]).all()
    shown = (best >= 0).numpy() & (ref.alpha >= 0.5)
    instance = np.where(shown, scene.instance[best.clamp_min(0).numpy()], 0)
    for cam in range(c_count):
        assert (instance[cam] == ref.instance[cam]).mean() >= 0.999
        assert (ref.instance[cam] > 0).mean() > 0.3  # both cameras see Gaussians
