"""The numba CPU backend against its twin, the torch reference; render() input checks.

Tolerances (CPU vs reference, same inputs; both float32):
  rgb PSNR >= 90 dB (the issue asks >= 45; we measure ~140);
  alpha: 99.9th percentile of abs error <= 1e-4, max <= 5e-3 (a pixel whose alpha sits exactly at the
    1/255 cut-off may go either way in float32, costing up to ~4e-3 there);
  depth (where alpha >= 0.01): 99.9th percentile <= 5e-3 m (expected depth divides by alpha);
  semantic / instance equal on >= 99.9 % of pixels (near-ties in weight may flip);
  median depth within 1e-5 relative on >= 99.9 % of pixels (a transmittance within float error of 0.5 may
    cross at either of two Gaussians).
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from _scenes import forward_camera, psnr, random_scene
from neural_sensor.gaussians import GaussianScene
from neural_sensor.render import render
from neural_sensor.render.cpu import EXP_CLAMP, _exp_neg
from neural_sensor.testing import make_street_scene, street_cameras

ALL = ("rgb", "depth", "alpha", "semantic", "instance", "median_depth")


def _assert_matches_reference(scene, cameras, background=(0.0, 0.0, 0.0)):
    out = render(scene, cameras, backend="cpu", outputs=ALL, background=background)
    ref = render(scene, cameras, backend="torch", outputs=ALL, background=background)
    assert out.backend == "cpu" and ref.backend == "torch"
    assert ref.alpha.max() > 0.5, "nothing rendered: the comparison would be empty"
    assert psnr(out.rgb, ref.rgb) >= 90.0
    alpha_err = np.abs(out.alpha - ref.alpha)
    assert np.percentile(alpha_err, 99.9) <= 1e-4 and alpha_err.max() <= 5e-3
    solid = ref.alpha >= 0.01
    assert np.percentile(np.abs(out.depth - ref.depth)[solid], 99.9) <= 5e-3
    assert (out.semantic == ref.semantic).mean() >= 0.999
    assert (out.instance == ref.instance).mean() >= 0.999
    assert out.semantic.dtype == np.uint8 and out.instance.dtype == np.int32
    assert (np.abs(out.median_depth - ref.median_depth) <= 1e-5 * ref.median_depth + 1e-6).mean() >= 0.999
    assert out.median_depth.dtype == np.float32
    return out, ref


@pytest.mark.parametrize("seed, sh_degree", [(0, 0), (1, 1), (2, 2), (3, 3)])
def test_cpu_matches_reference_on_random_scenes(seed, sh_degree):
    scene = random_scene(2000, seed=seed, sh_degree=sh_degree)
    cameras = [forward_camera(72, 40, yaw=yaw) for yaw in (0.0, 0.3)]
    _assert_matches_reference(scene, cameras, background=(0.1, 0.5, 0.9))


def test_cpu_matches_reference_on_street_scene():
    scene = make_street_scene(40_000, seed=1, sh_degree=1)
    out, _ = _assert_matches_reference(scene, street_cameras(160, 96, count=3))
    labels = set(np.unique(out.semantic).tolist())
    assert {1, 3, 14} <= labels  # road, building and car pixels are all present
    assert out.instance.max() > 0


def test_cpu_image_edges_and_odd_sizes():
    """Partial tiles at the right and bottom edges (sizes not multiples of 16)."""
    scene = random_scene(1500, seed=7, sh_degree=1)
    _assert_matches_reference(scene, [forward_camera(37, 23)])


def test_empty_view_is_background():
    scene = random_scene(200, seed=1)
    behind = forward_camera(32, 24, yaw=np.pi)  # everything is in front of the origin along +x
    scene = scene.subset(scene.means[:, 0] > 0)
    out = render(scene, behind, backend="cpu", outputs=ALL, background=(0.25, 0.5, 0.75))
    np.testing.assert_array_equal(out.rgb[0], np.broadcast_to([0.25, 0.5, 0.75], (24, 32, 3)).astype(np.float32))
    assert not out.alpha.any() and not out.depth.any() and not out.semantic.any()


@njit(cache=True)
def _exp_many(values):
    out = np.empty_like(values)
    for i in range(values.shape[0]):
        out[i] = _exp_neg(values[i])
    return out


def test_fast_exp_accuracy_and_clamp():
    s = np.linspace(0.0, EXP_CLAMP, 200_001).astype(np.float32)
    rel = np.abs(_exp_many(s) / np.exp(-s.astype(np.float64)) - 1.0)
    assert rel.max() < 3e-6
    big = _exp_many(np.array([6.0, 50.0, 1e30], np.float32))
    assert np.all(big * 1.0 < 1.0 / 255.0)  # clamped values can never pass the alpha threshold
    assert _exp_many(np.array([-1.0], np.float32))[0] == pytest.approx(1.0, abs=1e-6)


def test_render_rejects_bad_arguments():
    scene = random_scene(10, seed=0)
    camera = forward_camera()
    with pytest.raises(ValueError, match="backend must be one of"):
        render(scene, camera, backend="vulkan")
    with pytest.raises(ValueError, match="share width x height"):
        render(scene, [camera, forward_camera(32, 32)])
    with pytest.raises(ValueError, match="outputs must be a non-empty subset"):
        render(scene, camera, outputs=("rgb", "normals"))
    with pytest.raises(ValueError, match=r"background must be 3 floats in \[0, 1\]"):
        render(scene, camera, background=(0.0, float("nan"), 0.0))
    with pytest.raises(ValueError, match="background must be 3 floats"):
        render(scene, camera, background="red")
    with pytest.raises(ValueError, match="background must be 3 floats"):
        render(scene, camera, background=(0.0, 2.0, 0.0))
    with pytest.raises(ValueError, match="outputs must be a list or tuple"):
        render(scene, camera, outputs="rgb")
    with pytest.raises(ValueError, match="cameras must be a Camera or a list"):
        render(scene, 5)
    with pytest.raises(ValueError, match="no cameras"):
        render(scene, [])
    with pytest.raises(ValueError, match="scene must be a GaussianScene, a PlacedScene or a non-empty list"):
        render({"means": scene.means}, camera)
    for bad in (-1.0, float("nan"), float("inf"), "2", True):
        with pytest.raises(ValueError, match="lod_px must be a finite number >= 0"):
            render(scene, camera, lod_px=bad)
    assert render(scene, camera, lod_px=np.float32(2.0)).rgb.shape == (1, camera.height, camera.width, 3)


def test_median_depth_is_the_surface_behind_a_faint_veil():
    """A faint sheet (opacity 0.3) 4 m ahead and an opaque one at 10 m: where the camera sees both, the expected
    depth mixes them and the median depth is the opaque sheet's 10 m (the transmittance crosses 0.5 there);
    where it sees only the veil (alpha < 0.5) the median falls back to the expected depth, 4 m."""
    def sheet(x_m, y_m, half_width_m, opacity):  # one thin camera-facing Gaussian (the camera looks along +x)
        return GaussianScene(np.float32([[x_m, y_m, 0.0]]), np.float32([[1, 0, 0, 0]]),
                             np.float32([[0.01, half_width_m, 5.0]]), np.float32([opacity]),
                             np.zeros((1, 1, 3), np.float32))
    scene = GaussianScene.concat([sheet(4.0, 0.0, 3.0, 0.3), sheet(10.0, 6.0, 2.5, 1.0)])
    camera = forward_camera(32, 16)
    rows = slice(4, 12)
    for backend in ("cpu", "torch"):
        out = render(scene, camera, backend=backend, outputs=("depth", "alpha", "median_depth"))
        both, veil = out.alpha[0][rows, 8], out.alpha[0][rows, 28]  # image left sees both sheets, right the veil
        assert (both > 0.6).all() and (veil < 0.5).all()
        np.testing.assert_allclose(out.median_depth[0][rows, 8], 10.0, atol=0.05)
        assert (out.depth[0][rows, 8] < 9.0).all()  # the veil pulls the expected depth in front of the surface
        np.testing.assert_allclose(out.median_depth[0][rows, 28], out.depth[0][rows, 28])
        np.testing.assert_allclose(out.median_depth[0][rows, 28], 4.0, atol=0.05)


def test_median_depth_alone_stops_at_the_median_with_the_same_values():
    """A render of the median depth alone finishes each pixel at the Gaussian that takes it past MEDIAN_T (what
    follows cannot change it): the same median, bit for bit, as a render that composites everything, on a street
    scene exactly and at a level of detail, veils and pixels that never reach the median included."""
    import neural_sensor.render.cpu as cpu

    scene = make_street_scene(30_000, seed=3)
    cameras = street_cameras(96, 64, count=3)
    rasterize, partial = cpu._rasterize, []

    def spy(*args):  # the median-only render's own alpha: where its pixels stopped
        rasterize(*args)
        if len(args) > 14 and args[14] is not None:
            partial.append(args[11].copy())

    for lod_px in (0.0, 2.0):
        partial.clear()
        cpu._rasterize = spy
        try:
            alone = render(scene, cameras, backend="cpu", outputs=("median_depth",), lod_px=lod_px)
        finally:
            cpu._rasterize = rasterize
        full = render(scene, cameras, backend="cpu", outputs=("rgb", "alpha", "median_depth"), lod_px=lod_px)
        assert alone.rgb is None and alone.alpha is None
        assert (full.alpha > 0.5).mean() > 0.5 and (full.alpha < 0.5).any()  # surfaces, and pixels left short
        np.testing.assert_array_equal(alone.median_depth, full.median_depth)
        # it did stop early: most surface pixels ended at alpha 0.5-0.995, short of the full render's
        assert len(partial) == len(cameras)
        stopped = np.stack(partial) < full.alpha - 0.01
        assert stopped[full.alpha > 0.5].mean() > 0.5


def test_outputs_only_those_requested():
    out = render(random_scene(50, seed=0), forward_camera(16, 16), backend="cpu", outputs=("depth",))
    assert out.depth.shape == (1, 16, 16) and out.rgb is None and out.semantic is None


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_render_into_callers_arrays(backend):
    """render(out=): the requested float outputs land in (and are returned as) the caller's arrays, with the same
    values as fresh ones; bad targets are a ValueError naming the output."""
    scene, cameras = random_scene(300, seed=2), [forward_camera(24, 16), forward_camera(24, 16)]
    outputs = ("rgb", "depth", "alpha", "median_depth")
    fresh = render(scene, cameras, backend=backend, outputs=outputs)
    out = {"rgb": np.full((2, 16, 24, 3), 7.0, np.float32), "depth": np.full((2, 16, 24), 7.0, np.float32),
           "median_depth": np.full((2, 16, 24), 7.0, np.float32)}
    into = render(scene, cameras, backend=backend, outputs=outputs, out=out)
    for key in outputs:
        np.testing.assert_array_equal(getattr(into, key), getattr(fresh, key))
        if key in out:
            assert getattr(into, key) is out[key]
    for bad, match in [({"semantic": np.zeros((2, 16, 24), np.float32)}, "out\\['semantic'\\]: only requested"),
                       ({"rgb": np.zeros((2, 16, 24, 3), np.float64)}, "out\\['rgb'\\] must be a writable"),
                       ({"depth": np.zeros((1, 16, 24), np.float32)}, "out\\['depth'\\] must be"),
                       ({"alpha": np.zeros((2, 16, 24, 2), np.float32)[..., 0]}, "out\\['alpha'\\] must be"),
                       ([np.zeros(3)], "out must be a mapping")]:
        with pytest.raises(ValueError, match=match):
            render(scene, cameras, backend=backend, outputs=outputs, out=bad)


def test_cpu_matches_reference_at_640x360():
    scene = random_scene(3000, seed=1, sh_degree=1)
    _assert_matches_reference(scene, [forward_camera(640, 360)])


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_empty_scene_renders_background(backend):
    from neural_sensor.gaussians import GaussianScene

    empty = GaussianScene(np.zeros((0, 3), np.float32), np.zeros((0, 4), np.float32), np.zeros((0, 3), np.float32),
                          np.zeros(0, np.float32), np.zeros((0, 1, 3), np.float32))
    out = render(empty, forward_camera(16, 12), backend=backend, outputs=ALL, background=(0.5, 0.5, 0.5))
    assert (out.rgb == 0.5).all() and not out.alpha.any() and not out.semantic.any() and not out.instance.any()


def test_contract_constants_are_gsplat_classic():
    """Pinned literally: the reference, the oracle and the CPU kernel all read these."""
    from neural_sensor.render import _common as c

    assert (c.ALPHA_THRESHOLD, c.MAX_ALPHA, c.TRANSMITTANCE_THRESHOLD) == (1.0 / 255.0, 0.99, 1e-4)
    assert (c.EPS2D, c.GAUSSIAN_EXTEND, c.NEAR_PLANE_M, c.TILE_SIZE, c.SEMANTIC_MIN_ALPHA) == (0.3, 3.33, 0.01, 16, 0.5)


def test_chunk_culling_changes_nothing(monkeypatch):
    """The projection skips whole spatial chunks that cannot reach the image: the images must equal those of a
    render whose chunks never cull (one chunk per Gaussian, each with an infinite sphere), for the six cameras
    of a rig on the street, and the chunks must really cull something there."""
    import neural_sensor.render.cpu as cpu

    def street():  # in an order that follows the street, as the builder emits it (chunks follow index order)
        unordered = make_street_scene(30_000, seed=4, sh_degree=1)
        return unordered.subset(np.argsort(np.round(unordered.means[:, 0] / 4.0) * 1e4 + unordered.means[:, 1],
                                           kind="stable"))

    scene = street()
    cameras = street_cameras(96, 64, count=6)
    culled = render(scene, cameras, backend="cpu", outputs=ALL)
    order, starts, spheres = cpu._spatial_chunks(scene)
    assert sorted(order.tolist()) == list(range(len(scene))) and starts[-1] == len(scene)
    # every Gaussian's bounding sphere lies inside its chunk's sphere
    reach = cpu._world_covariances(scene)[:, 6]
    for c in range(len(starts) - 1):
        members = order[starts[c]:starts[c + 1]]
        gap = np.linalg.norm(scene.means[members] - spheres[c, :3], axis=1) + reach[members]
        assert (gap <= spheres[c, 3]).all()
    # chunks wholly behind the front camera are skipped by the near-plane test alone
    centre_cam = (cameras[0].pose_world_to_camera @ np.c_[spheres[:, :3], np.ones(len(spheres))].T).T
    assert (centre_cam[:, 2] + spheres[:, 3] < 0).sum() > len(spheres) // 10

    def never_culled(sc):
        n = len(sc)
        return (np.arange(n, dtype=np.int32), np.arange(n + 1, dtype=np.int64),
                np.tile(np.array([0.0, 0.0, 0.0, 1e30], np.float32), (n, 1)))

    monkeypatch.setattr(cpu, "_spatial_chunks", never_culled)
    fresh = street()  # no chunks cached on it
    plain = render(fresh, cameras, backend="cpu", outputs=ALL)
    for key in ALL:
        np.testing.assert_array_equal(getattr(culled, key), getattr(plain, key), err_msg=key)


@pytest.mark.parametrize("seed, size", [(0, (64, 48)), (1, (37, 23))])
def test_colour_backprojection_matches_its_autograd_twin(seed, size):
    """backproject_colour_residuals: its render equals render_cpu's bit for bit, and its per-Gaussian sums equal
    the gradients the torch reference gives (sum_p w r, sum_p w and sum_p w sky_p), to float32 accumulation
    error."""
    from neural_sensor.render._common import stack_cameras
    from neural_sensor.render._torch_ref import _backproject_colour_residuals_reference
    from neural_sensor.render.backproject import backproject_colour_residuals

    scene = random_scene(1500, seed=seed, sh_degree=0)
    # the twin is exact where a colour is not clamped at 0 (no gradient there): keep every colour in (0, 1)
    scene = GaussianScene.from_colors(scene.means, scene.quats, scene.scales, scene.opacities,
                                      np.random.default_rng(seed).uniform(0.05, 0.95, (len(scene), 3)), scene.labels)
    cameras = [forward_camera(*size, yaw=yaw) for yaw in (0.0, 0.3)]
    batch = stack_cameras(cameras)
    background = np.array([0.2, 0.4, 0.6], np.float32)
    targets = np.random.default_rng(seed + 10).uniform(0, 1, (2, size[1], size[0], 3)).astype(np.float32)
    sky = np.random.default_rng(seed + 20).random((2, size[1], size[0])) < 0.4
    weighted, weight, rgb, sky_weight = backproject_colour_residuals(scene, batch, targets, background, sky)
    assert np.array_equal(rgb, render(scene, cameras, backend="cpu", background=background).rgb)
    ref_weighted, ref_weight, ref_rgb, ref_sky = _backproject_colour_residuals_reference(scene, batch, targets,
                                                                                         background, sky)
    assert psnr(rgb, ref_rgb) >= 90.0
    assert (weight > 1.0).sum() > 100, "too few Gaussians weigh anything: the comparison would be empty"
    np.testing.assert_allclose(weight, ref_weight, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(weighted, ref_weighted, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(sky_weight, ref_sky, rtol=1e-4, atol=1e-3)
    assert 0.2 < sky_weight.sum() / weight.sum() < 0.6  # about the mask's 40 %
    assert np.all(sky_weight <= weight + 1e-6)
    # without a mask nothing lies on sky, the rest unchanged
    none = backproject_colour_residuals(scene, batch, targets, background)
    assert np.all(none[3] == 0) and np.array_equal(none[1], weight) and np.array_equal(none[0], weighted)
    # a Gaussian off screen or behind the camera is handed nothing
    behind = scene.means[:, 0] < 0
    assert behind.any() and np.all(weight[behind] == 0) and np.all(weighted[behind] == 0)


def test_level_of_detail_matches_its_twin_and_stays_close_to_exact():
    """render(lod_px=2): each camera's image equals the reference render of `lod_scene` (the Gaussians the cpu
    backend draws for that camera: near groups in full, far groups as their merges) within the usual tolerances;
    far groups really are merged; and the image stays close to the exact render (lod_px=0)."""
    from neural_sensor.render.lod import lod_scene

    scene = make_street_scene(40_000, seed=1, sh_degree=1)
    cameras = street_cameras(160, 96, count=3)
    fast = render(scene, cameras, backend="cpu", outputs=ALL, lod_px=2.0)
    exact = render(scene, cameras, backend="cpu", outputs=ALL)
    merged_any = False
    for i, cam in enumerate(cameras):
        drawn = lod_scene(scene, cam, 2.0)
        merged_any |= len(drawn) < len(scene)
        ref = render(drawn, [cam], backend="torch", outputs=ALL, background=(0.53, 0.71, 0.92))
        assert psnr(fast.rgb[i:i + 1], ref.rgb) >= 90.0
        alpha_err = np.abs(fast.alpha[i:i + 1] - ref.alpha)
        assert np.percentile(alpha_err, 99.9) <= 1e-4 and alpha_err.max() <= 5e-3
        solid = ref.alpha >= 0.01
        assert np.percentile(np.abs(fast.depth[i:i + 1] - ref.depth)[solid], 99.9) <= 5e-3
        assert (fast.semantic[i:i + 1] == ref.semantic).mean() >= 0.999
    assert merged_any, "no group was far enough to merge: the test would not exercise the level of detail"
    assert psnr(fast.rgb, exact.rgb) >= 35.0
    assert (fast.semantic == exact.semantic).mean() >= 0.99
    same = render(scene, cameras, backend="cpu", outputs=ALL, lod_px=0.0)
    for key in ALL:
        np.testing.assert_array_equal(getattr(same, key), getattr(exact, key), err_msg=key)


def test_level_of_detail_groups_hold_every_gaussian_once():
    """_lod_groups: every Gaussian in exactly one group of at most LOD_GROUP, groups inside their chunk, each
    chunk's (grown) sphere holds its members' and its merges' bounding spheres, merges are moment-matched."""
    import neural_sensor.render.cpu as cpu
    import neural_sensor.render.lod as lod_module

    scene = make_street_scene(5_000, seed=2, sh_degree=0)
    lod = lod_module._lod_groups(scene)
    assert sorted(lod.group_order.tolist()) == list(range(len(scene)))
    sizes = np.diff(lod.group_starts)
    assert sizes.min() >= 1 and sizes.max() <= lod_module.LOD_GROUP
    order, starts, _ = cpu._spatial_chunks(scene)
    covs = cpu._world_covariances(scene)
    for c in range(len(starts) - 1):
        groups = range(lod.chunk_groups[c], lod.chunk_groups[c + 1])
        members = lod.group_order[lod.group_starts[groups.start]:lod.group_starts[groups.stop]]
        assert sorted(members.tolist()) == sorted(order[starts[c]:starts[c + 1]].tolist())
        centre, radius = lod.chunk_spheres[c, :3], lod.chunk_spheres[c, 3]
        assert (np.linalg.norm(scene.means[members] - centre, axis=1) + covs[members, 6] <= radius).all()
        reach = np.linalg.norm(lod.means[groups.start:groups.stop] - centre, axis=1) + lod.covs[groups.start:groups.stop, 6]
        assert (reach <= radius).all()
    g = int(np.argmax(sizes))
    idx = lod.group_order[lod.group_starts[g]:lod.group_starts[g + 1]]
    sc = np.sort(scene.scales[idx].astype(np.float64), axis=1)
    w = scene.opacities[idx] * sc[:, 1] * sc[:, 2]
    np.testing.assert_allclose(lod.means[g], (w[:, None] * scene.means[idx]).sum(0) / w.sum(), rtol=1e-5, atol=1e-5)
    assert lod.opacities[g] == scene.opacities[idx].max()
    # the shares are the merge's weights: the merged SH is their blend of the members'
    np.testing.assert_allclose(lod.shares[lod.group_starts[g]:lod.group_starts[g + 1]], w / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(lod.sh[g], np.einsum("i,ikc->kc", w / w.sum(), scene.sh[idx]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.add.reduceat(lod.shares.astype(np.float64), lod.group_starts[:-1]), 1.0, rtol=1e-5)


def test_colour_backprojection_with_level_of_detail_matches_its_autograd_twin():
    """backproject_colour_residuals(lod_px=2): its render equals render_cpu(lod_px=2)'s bit for bit, and each
    Gaussian's sums equal the autograd twin's, far groups handing their members their share of the merge."""
    from neural_sensor.render._common import stack_cameras
    from neural_sensor.render._torch_ref import _backproject_colour_residuals_reference
    from neural_sensor.render.backproject import backproject_colour_residuals
    from neural_sensor.render.lod import lod_split

    base = make_street_scene(6_000, seed=3, sh_degree=0)
    # keep every colour in (0, 1): the twin is exact where a colour is not clamped at 0
    scene = GaussianScene.from_colors(base.means, base.quats, base.scales, base.opacities,
                                      np.random.default_rng(3).uniform(0.05, 0.95, (len(base), 3)), base.labels)
    cameras = street_cameras(64, 40, count=2)
    coarse_groups = sum(int(lod_split(scene, cam, 2.0)[1].sum()) for cam in cameras)
    assert coarse_groups > 50, "too few groups are merged: the test would not exercise the level of detail"
    batch = stack_cameras(cameras)
    background = np.array([0.2, 0.4, 0.6], np.float32)
    targets = np.random.default_rng(13).uniform(0, 1, (2, 40, 64, 3)).astype(np.float32)
    sky = np.random.default_rng(23).random((2, 40, 64)) < 0.4
    weighted, weight, rgb, sky_weight = backproject_colour_residuals(scene, batch, targets, background, sky, lod_px=2.0)
    assert np.array_equal(rgb, render(scene, cameras, backend="cpu", background=background, lod_px=2.0).rgb)
    ref_weighted, ref_weight, ref_rgb, ref_sky = _backproject_colour_residuals_reference(
        scene, batch, targets, background, sky, lod_px=2.0)
    assert psnr(rgb, ref_rgb) >= 80.0
    assert (weight > 1.0).sum() > 100, "too few Gaussians weigh anything: the comparison would be empty"
    np.testing.assert_allclose(weight, ref_weight, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(weighted, ref_weighted, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(sky_weight, ref_sky, rtol=1e-4, atol=1e-3)
    # the merged groups' members were handed something, and lod_px=0 is the exact walk
    exact = backproject_colour_residuals(scene, batch, targets, background, sky)
    assert not np.array_equal(exact[1], weight)
    assert np.array_equal(exact[2], render(scene, cameras, backend="cpu", background=background).rgb)


@pytest.mark.parametrize("pieces", [1, 3, 8])
def test_parallel_depth_sort_matches_its_serial_twin(pieces):
    """_sort_visible (parallel over pieces) returns exactly the serial radix sort's order: valid rows only,
    by camera z, ties in row order (many ties and an all-invalid tail on purpose)."""
    from neural_sensor.render.cpu import GEOM_WIDTH, _sort_visible, _sort_visible_reference

    rng = np.random.default_rng(pieces)
    n = 50_000
    geom = np.zeros((n, GEOM_WIDTH), np.float32)
    geom[:, 6] = np.round(rng.uniform(0.05, 300.0, n), 1).astype(np.float32)  # ~3000 distinct depths: ties
    valid = (rng.random(n) < 0.6).astype(np.uint8)
    valid[-1000:] = 0
    fast = _sort_visible(valid, geom, pieces)
    np.testing.assert_array_equal(fast, _sort_visible_reference(valid, geom))
    np.testing.assert_array_equal(fast, np.flatnonzero(valid)[np.argsort(geom[valid == 1, 6], kind="stable")])
    assert len(_sort_visible(np.zeros(10, np.uint8), geom[:10], pieces)) == 0


def test_numba_vector_width_setting():
    """neural_sensor drops LLVM's 256-bit vector preference before numba compiles anything, where the host has
    AVX-512F; a user's NUMBA_CPU_FEATURES (or NEURAL_SENSOR_PREFER_256_BIT=1) is left alone."""
    import os
    import subprocess
    import sys

    import llvmlite.binding as llvm

    probe = "import neural_sensor; from numba.core import config; print(config.CPU_FEATURES or '')"

    def features(**env):
        clean = {k: v for k, v in os.environ.items()
                 if k not in ("NUMBA_CPU_FEATURES", "NUMBA_CPU_NAME", "NEURAL_SENSOR_PREFER_256_BIT",
                              "NEURAL_SENSOR_NUMBA_CPU_FEATURES", "NUMBA_ENABLE_AVX")}
        out = subprocess.run([sys.executable, "-c", probe], env={**clean, **env}, capture_output=True, text=True,
                             check=True)
        return out.stdout.strip()

    host_has_avx512 = "+avx512f" in llvm.get_host_cpu_features().flatten().split(",")
    default = features()
    if host_has_avx512:
        assert default.endswith(",-prefer-256-bit") and "+avx512f" in default
    else:
        assert default == ""
    assert features(NUMBA_CPU_FEATURES="+sse2") == "+sse2"
    assert features(NEURAL_SENSOR_PREFER_256_BIT="1") == ""
    assert features(NUMBA_ENABLE_AVX="0") == ""
    if host_has_avx512:  # a child inherits the parent's choice as ours, not as a user setting: it may opt out
        assert features(NUMBA_CPU_FEATURES=default, NEURAL_SENSOR_NUMBA_CPU_FEATURES=default) == default
        assert features(NUMBA_CPU_FEATURES=default, NEURAL_SENSOR_NUMBA_CPU_FEATURES=default,
                        NEURAL_SENSOR_PREFER_256_BIT="1") == ""


def test_interleaved_rows_composite_like_a_row_by_row_walk():
    """`_rasterize` composites each Gaussian onto every row of a tile its ellipse reaches (rows interleaved, only
    those within its y half-extent visited, a row stopping once its pixels have, the tile once its rows have);
    the backprojection walks the same lists row by row with the full per-row test. Thin Gaussians whose
    ellipses end near pixel-row centres, opaque ones that finish rows early, partial tiles at the image's edges
    (93 x 77): rgb must come out bit for bit the same, and so must the alpha of a plain render."""
    from neural_sensor.render._common import stack_cameras
    from neural_sensor.render.backproject import backproject_colour_residuals

    rng = np.random.default_rng(7)
    n, width, height = 4000, 93, 77
    camera = forward_camera(width, height, fov_deg=60.0)
    means = np.stack([rng.uniform(2.0, 6.0, n), rng.uniform(-2.0, 2.0, n), rng.uniform(-1.5, 1.5, n)], axis=1)
    # a few pixels across and a fraction of a pixel tall (about 0.015 m per pixel at 2-6 m), at any angle ...
    scales = np.stack([rng.uniform(0.01, 0.08, n), rng.uniform(0.002, 0.02, n), rng.uniform(0.002, 0.02, n)], axis=1)
    opacities = rng.uniform(0.05, 0.99, n)
    # ... and a tenth of them large and opaque, so that rows and tiles finish before their lists end
    big = rng.random(n) < 0.1
    scales[big] = rng.uniform(0.05, 0.3, (big.sum(), 3))
    opacities[big] = 0.99
    quats = rng.normal(size=(n, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    scene = GaussianScene.from_colors(*(a.astype(np.float32) for a in (means, quats, scales, opacities,
                                                                       rng.uniform(0, 1, (n, 3)))))
    background = np.array([0.1, 0.2, 0.3], np.float32)
    targets = np.zeros((1, height, width, 3), np.float32)
    rgb = backproject_colour_residuals(scene, stack_cameras([camera]), targets, background)[2]
    out = render(scene, [camera], backend="cpu", background=background, outputs=("rgb", "alpha"))
    # a pixel stops before the Gaussian that would take its transmittance to 1e-4, so one behind two opaque
    # Gaussians ends at alpha ~0.99; others run through their whole list
    assert (out.alpha > 0.98).mean() > 0.3, "some pixels must finish early for the comparison to cover it"
    assert (out.alpha < 0.9).mean() > 0.01, "and some must run through their whole list"
    assert np.array_equal(out.rgb, rgb)
