"""GaussianScene: validation, PLY round trip and interop, concat / subset / transformed."""

from __future__ import annotations

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from _scenes import forward_camera, random_scene
from neural_sensor.gaussians import GaussianScene
from neural_sensor.render import render
from neural_sensor.sh import sh_basis


def _arrays(n=10, k=1):
    rng = np.random.default_rng(0)
    return dict(
        means=rng.normal(size=(n, 3)).astype(np.float32),
        quats=rng.normal(size=(n, 4)).astype(np.float32),
        scales=rng.uniform(0.1, 1, (n, 3)).astype(np.float32),
        opacities=rng.uniform(0, 1, n).astype(np.float32),
        sh=rng.normal(size=(n, k, 3)).astype(np.float32),
    )


def test_construction_normalises_quats_and_fills_labels():
    scene = GaussianScene(**_arrays())
    np.testing.assert_allclose(np.linalg.norm(scene.quats, axis=1), 1.0, rtol=1e-6)
    assert scene.labels.dtype == np.uint8 and scene.labels.shape == (10,)
    assert scene.instance.dtype == np.int32 and not scene.instance.any()
    assert scene.sh_degree == 0 and len(scene) == 10


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("means", lambda a: a["means"][:, :2], r"means must be an \[N, 3\]"),
        ("quats", lambda a: a["quats"][:5], r"quats must have shape \(10, 4\)"),
        ("scales", lambda a: a["scales"].astype(np.float64), "scales must be float32, got float64"),
        ("sh", lambda a: np.zeros((10, 5, 3), np.float32), "sh: SH coefficient count must be 1, 4, 9 or 16"),
        ("opacities", lambda a: np.where(np.arange(10) < 3, np.nan, a["opacities"]).astype(np.float32),
         r"opacities: 3 of 10 Gaussians are NaN or infinite \(first at index 0\)"),
        ("means", lambda a: np.where(np.arange(30).reshape(10, 3) == 13, np.inf, a["means"]).astype(np.float32),
         r"means: 1 of 10 Gaussians are NaN or infinite \(first at index 4\)"),
        ("scales", lambda a: np.where(np.arange(30).reshape(10, 3) % 7 == 0, 0.0, a["scales"]).astype(np.float32),
         "scales: 5 of 10 Gaussians have a non-positive scale"),
        ("quats", lambda a: np.where(np.arange(10)[:, None] == 2, 0.0, a["quats"]).astype(np.float32),
         r"quats: 1 of 10 Gaussians are zero quaternions \(first at index 2\)"),
        ("opacities", lambda a: np.full(10, 1.5, np.float32), "opacities: 10 of 10 Gaussians are outside"),
    ],
)
def test_construction_rejects_bad_fields(field, value, message):
    arrays = _arrays()
    arrays[field] = value(arrays)
    with pytest.raises(ValueError, match=message):
        GaussianScene(**arrays)


def test_labels_dtype_checked():
    with pytest.raises(ValueError, match="labels must be uint8"):
        GaussianScene(**_arrays(), labels=np.zeros(10, np.int64))


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_ply_round_trip(tmp_path, degree):
    scene = random_scene(500, seed=degree, sh_degree=degree)
    path = tmp_path / "scene.ply"
    scene.save_ply(path)
    back = GaussianScene.load_ply(path)
    # stored as-is: bit-exact
    for name in ("means", "quats", "sh", "labels", "instance"):
        np.testing.assert_array_equal(getattr(back, name), getattr(scene, name), err_msg=name)
    # stored as log / logit float32: exact to float32 rounding of exp and log
    np.testing.assert_allclose(back.scales, scene.scales, rtol=2e-6)
    np.testing.assert_allclose(back.opacities, np.clip(scene.opacities, 1e-7, 1 - 1e-7), rtol=2e-6, atol=1e-7)
    # and a second round trip changes nothing
    back.save_ply(tmp_path / "again.ply")
    again = GaussianScene.load_ply(tmp_path / "again.ply")
    np.testing.assert_allclose(again.scales, back.scales, rtol=2e-6)


def _inria_vertex(n, degree, rng, extra=()):
    k = (degree + 1) ** 2
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * (k - 1))]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    record = np.zeros(n, dtype=[(name, "f4") for name in names] + list(extra))
    for name in names:
        record[name] = rng.normal(size=n)
    return record, k


def test_loads_plyfile_written_inria_layout(tmp_path):
    rng = np.random.default_rng(3)
    record, k = _inria_vertex(64, 3, rng)
    for i in range(3 * (k - 1)):
        record[f"f_rest_{i}"] = i  # channel-major: f_rest index = channel * (K-1) + (k-1)
    PlyData([PlyElement.describe(record, "vertex")], byte_order="<").write(str(tmp_path / "inria.ply"))
    scene = GaussianScene.load_ply(tmp_path / "inria.ply")
    assert scene.sh_degree == 3 and len(scene) == 64
    for band in range(1, k):
        for channel in range(3):
            assert np.all(scene.sh[:, band, channel] == channel * (k - 1) + band - 1)
    np.testing.assert_allclose(scene.means[:, 0], record["x"])
    np.testing.assert_allclose(scene.sh[:, 0, 1], record["f_dc_1"])
    np.testing.assert_allclose(scene.opacities, 1 / (1 + np.exp(-record["opacity"].astype(np.float64))), rtol=1e-6)
    np.testing.assert_allclose(scene.scales[:, 2], np.exp(record["scale_2"].astype(np.float64)), rtol=1e-6)
    raw_q = np.stack([record[f"rot_{i}"] for i in range(4)], 1).astype(np.float64)
    np.testing.assert_allclose(scene.quats, raw_q / np.linalg.norm(raw_q, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert not scene.labels.any() and not scene.instance.any()


def test_loads_ascii_and_big_endian(tmp_path):
    rng = np.random.default_rng(4)
    record, _ = _inria_vertex(8, 1, rng)
    PlyData([PlyElement.describe(record, "vertex")], text=True).write(str(tmp_path / "a.ply"))
    PlyData([PlyElement.describe(record, "vertex")], byte_order=">").write(str(tmp_path / "b.ply"))
    a = GaussianScene.load_ply(tmp_path / "a.ply")
    b = GaussianScene.load_ply(tmp_path / "b.ply")
    written = np.stack([record["x"], record["y"], record["z"]], axis=1)
    np.testing.assert_allclose(a.means, written, rtol=1e-6)  # ascii prints floats with limited digits
    np.testing.assert_array_equal(b.means, written)
    np.testing.assert_array_equal(b.sh[:, 2, 0], record["f_rest_1"])
    assert a.sh_degree == 1 and b.sh_degree == 1


def test_written_ply_header_is_inria_layout(tmp_path):
    random_scene(20, seed=1, sh_degree=2).save_ply(tmp_path / "s.ply")
    ply = PlyData.read(str(tmp_path / "s.ply"))
    names = ply["vertex"].data.dtype.names
    assert names[:9] == ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2")
    assert names[9:33] == tuple(f"f_rest_{i}" for i in range(24))
    assert names[33:] == ("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
                          "semantic", "instance")
    assert ply.byte_order == "<" and not ply.text


def test_a_ply_with_a_gaussian_too_large_to_project_is_refused(tmp_path):
    from neural_sensor.gaussians import MAX_PLY_SCALE_M

    scene = random_scene(50, seed=6, sh_degree=1)
    scales = scene.scales.copy()
    scales[7, 1] = 0.99 * MAX_PLY_SCALE_M
    scene.replace(scales=scales).save_ply(tmp_path / "large.ply")
    assert GaussianScene.load_ply(tmp_path / "large.ply").scales[7, 1] == pytest.approx(0.99 * MAX_PLY_SCALE_M)
    scales[7, 1] = 4.9e8  # the 1,000 km and larger that the renderers' float32 projections disagree on
    scales[9, 0] = 2.0 * MAX_PLY_SCALE_M
    with pytest.raises(ValueError, match=r"save_ply: 2 of 50 Gaussians have a scale above 10000 m \(first at 7: "
                                         r"4.9e\+08 m\), which load_ply refuses"):
        scene.replace(scales=scales).save_ply(tmp_path / "huge.ply")  # (written, then refused by load_ply)
    assert not (tmp_path / "huge.ply").exists()
    ply = PlyData.read(str(tmp_path / "large.ply"))  # another tool's file holding them
    ply["vertex"].data["scale_1"][7] = np.log(4.9e8)
    ply["vertex"].data["scale_0"][9] = np.log(2.0 * MAX_PLY_SCALE_M)
    ply.write(str(tmp_path / "huge.ply"))
    with pytest.raises(ValueError, match=r"huge.ply: 2 of 50 Gaussians have a scale above 10000 m \(first at 7: 4.9e\+08"):
        GaussianScene.load_ply(tmp_path / "huge.ply")


def test_bad_files_raise_value_error(tmp_path):
    scene = random_scene(100, seed=5, sh_degree=1)
    good = tmp_path / "good.ply"
    scene.save_ply(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.ply"
    truncated.write_bytes(data[: len(data) - 500])
    with pytest.raises(ValueError, match="truncated.ply: not a readable 3DGS PLY"):
        GaussianScene.load_ply(truncated)
    longer = tmp_path / "longer.ply"  # a header counting fewer vertices than the body holds: the count was loaded
    longer.write_bytes(data + data[-620:])
    with pytest.raises(ValueError, match=r"longer.ply: 620 bytes follow the elements its header counts \(vertex: 100\)"):
        GaussianScene.load_ply(longer)
    not_ply = tmp_path / "image.png"
    not_ply.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(ValueError, match="image.png: not a readable 3DGS PLY"):
        GaussianScene.load_ply(not_ply)
    with pytest.raises(ValueError, match="missing.ply: not a readable 3DGS PLY"):
        GaussianScene.load_ply(tmp_path / "missing.ply")
    # a point cloud PLY without the 3DGS properties
    cloud = np.zeros(4, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(cloud, "vertex")]).write(str(tmp_path / "cloud.ply"))
    with pytest.raises(ValueError, match=r"lacks the 3DGS properties \['f_dc_0'"):
        GaussianScene.load_ply(tmp_path / "cloud.ply")


def test_bad_values_in_file_raise(tmp_path):
    rng = np.random.default_rng(6)
    record, _ = _inria_vertex(16, 0, rng)
    record["scale_1"][[3, 9]] = np.nan
    PlyData([PlyElement.describe(record, "vertex")]).write(str(tmp_path / "nan.ply"))
    with pytest.raises(ValueError, match=r"2 of 16 Gaussians have NaN/inf in 'scale' \(first at 3\)"):
        GaussianScene.load_ply(tmp_path / "nan.ply")
    record, _ = _inria_vertex(16, 0, rng)
    for i in range(4):
        record[f"rot_{i}"][7] = 0.0
    PlyData([PlyElement.describe(record, "vertex")]).write(str(tmp_path / "zeroq.ply"))
    with pytest.raises(ValueError, match=r"zeroq.ply: GaussianScene.quats: 1 of 16 Gaussians are zero quaternions"):
        GaussianScene.load_ply(tmp_path / "zeroq.ply")
    names = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("f_dc_0", "f4"), ("f_dc_1", "f4"), ("f_dc_2", "f4")]
    names += [(f"f_rest_{i}", "f4") for i in range(6)]  # 6 is not 3 * (K - 1) for K in {4, 9, 16}
    names += [(p, "f4") for p in ("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")]
    PlyData([PlyElement.describe(np.ones(3, dtype=names), "vertex")]).write(str(tmp_path / "rest.ply"))
    with pytest.raises(ValueError, match="6 f_rest_\\* properties make 3 SH coefficients"):
        GaussianScene.load_ply(tmp_path / "rest.ply")
    # values a file holds that float32 cannot: said as what they are (they were "a non-positive scale" and "NaN or
    # infinite")
    record, _ = _inria_vertex(16, 0, rng)
    record["scale_2"][5] = -120.0
    PlyData([PlyElement.describe(record, "vertex")]).write(str(tmp_path / "tiny.ply"))
    with pytest.raises(ValueError, match=r"1 of 16 Gaussians have a scale below float32's smallest normal number "
                                         r"\(first at 5: log-scale -120\)"):
        GaussianScene.load_ply(tmp_path / "tiny.ply")
    record, _ = _inria_vertex(16, 0, rng)
    wide = np.empty(16, dtype=[(name, "f8" if name == "x" else record.dtype[name]) for name in record.dtype.names])
    for name in record.dtype.names:
        wide[name] = record[name]
    wide["x"][2] = 1e39
    PlyData([PlyElement.describe(wide, "vertex")]).write(str(tmp_path / "wide.ply"))
    with pytest.raises(ValueError, match=r"1 of 16 Gaussians have a position or colour beyond float32's range "
                                         r"\(first at 2\)"):
        GaussianScene.load_ply(tmp_path / "wide.ply")
    face = np.zeros(2, dtype=[("vertex_indices", "i4", (3,))])
    PlyData([PlyElement.describe(face, "face")]).write(str(tmp_path / "faces.ply"))
    with pytest.raises(ValueError, match=r"faces.ply: the PLY has no vertex element \(elements: \['face'\]\)"):
        GaussianScene.load_ply(tmp_path / "faces.ply")


def test_scaled_moves_and_grows_every_gaussian_about_the_origin():
    scene = random_scene(20, seed=3, sh_degree=1)
    twice = scene.scaled(2.0)
    np.testing.assert_allclose(twice.means, 2.0 * scene.means, rtol=1e-6)
    np.testing.assert_allclose(twice.scales, 2.0 * scene.scales, rtol=1e-6)
    np.testing.assert_array_equal(twice.quats, scene.quats)
    np.testing.assert_array_equal(twice.sh, scene.sh)
    for bad in (0.0, -1.0, float("nan"), float("inf"), True, "2"):
        with pytest.raises(ValueError, match="scaled: factor must be a finite number > 0"):
            scene.scaled(bad)


def test_concat_pads_sh_and_subset_selects():
    a = random_scene(30, seed=1, sh_degree=0)
    b = random_scene(20, seed=2, sh_degree=2)
    both = GaussianScene.concat([a, b])
    assert len(both) == 50 and both.sh_degree == 2
    np.testing.assert_array_equal(both.sh[:30, 0], a.sh[:, 0])
    assert not both.sh[:30, 1:].any()
    np.testing.assert_array_equal(both.sh[30:], b.sh)
    np.testing.assert_array_equal(both.subset(np.arange(30, 50)).means, b.means)
    mask = np.zeros(50, bool)
    mask[[0, 49]] = True
    sub = both.subset(mask)
    np.testing.assert_array_equal(sub.instance, both.instance[[0, 49]])
    with pytest.raises(ValueError, match=r"boolean mask must have shape \(50,\)"):
        both.subset(np.ones(3, bool))
    with pytest.raises(ValueError, match="at least one scene"):
        GaussianScene.concat([])


def _pose(yaw, pitch, translation):
    cz, sz, cy, sy = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    rot = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rot, translation
    return pose


@pytest.mark.parametrize("degree", [1, 3])
def test_transformed_scene_renders_like_moved_camera(degree):
    """Moving the scene and the camera by the same rigid transform leaves the image unchanged (SH rotated)."""
    scene = random_scene(400, seed=11, sh_degree=degree)
    sh = scene.sh.copy()
    sh[:, 1:] *= 4.0  # strong view dependence so an unrotated SH would show
    scene = scene.replace(sh=sh)
    camera = forward_camera(48, 32)
    pose = _pose(0.7, -0.3, [5.0, -2.0, 1.0])
    moved = scene.transformed(pose)
    moved_camera = camera.with_pose(pose @ camera.pose_camera_to_world)
    ref = render(scene, camera, backend="cpu").rgb
    out = render(moved, moved_camera, backend="cpu").rgb
    assert np.abs(out - ref).max() < 2e-3


def test_sh_rotation_matches_rotated_directions():
    rng = np.random.default_rng(2)
    scene = random_scene(5, seed=3, sh_degree=3)
    pose = _pose(1.1, 0.4, [0, 0, 0])
    moved = scene.transformed(pose)
    dirs = rng.normal(size=(7, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    # colour of the moved Gaussian along R d equals the original along d
    before = np.einsum("mk,nkc->nmc", sh_basis(3, dirs), scene.sh)
    after = np.einsum("mk,nkc->nmc", sh_basis(3, dirs @ pose[:3, :3].T), moved.sh)
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_transformed_rejects_non_rigid():
    scene = random_scene(5, seed=3)
    with pytest.raises(ValueError, match="not a proper rotation"):
        scene.transformed(np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        scene.transformed(np.full((4, 4), np.nan))


def test_from_colors_round_trips_colour():
    rng = np.random.default_rng(0)
    colors = rng.uniform(0, 1, (6, 3)).astype(np.float32)
    arrays = _arrays(6)
    del arrays["sh"]
    scene = GaussianScene.from_colors(**arrays, colors_rgb=colors)
    np.testing.assert_allclose(scene.colors_dc, colors, atol=1e-6)
    with pytest.raises(ValueError, match=r"colors_rgb must be \[N, 3\]"):
        GaussianScene.from_colors(**arrays, colors_rgb=colors[:, :2])


def test_scene_is_an_immutable_value():
    arrays = _arrays()
    scene = GaussianScene(**arrays)
    assert arrays["means"].flags.writeable  # the caller's arrays are copied, not frozen
    with pytest.raises(ValueError, match="read-only"):
        scene.means[0, 0] = 1.0
    brighter = scene.replace(opacities=np.ones(10, np.float32))
    assert brighter.opacities.min() == 1.0 and scene.opacities.max() < 1.0
    calls = []
    assert scene.derived("k", lambda s: calls.append(1) or 5) == 5
    assert scene.derived("k", lambda s: calls.append(1) or 6) == 5 and len(calls) == 1
    with pytest.raises(ValueError, match="unknown fields"):
        scene.replace(colour=np.zeros(3))


def test_out_of_range_labels_in_file_raise(tmp_path):
    rng = np.random.default_rng(8)
    record, _ = _inria_vertex(6, 0, rng, extra=[("semantic", "i4"), ("instance", "f8")])
    record["semantic"] = [1, 2, 300, 3, 4, 5]
    record["instance"] = 0
    PlyData([PlyElement.describe(record, "vertex")]).write(str(tmp_path / "labels.ply"))
    with pytest.raises(ValueError, match=r"1 of 6 Gaussians have a 'semantic' value that is not an integer in \[0, 255\]"):
        GaussianScene.load_ply(tmp_path / "labels.ply")
    record["semantic"] = 1
    record["instance"][2] = 3.5
    PlyData([PlyElement.describe(record, "vertex")]).write(str(tmp_path / "inst.ply"))
    with pytest.raises(ValueError, match="'instance' value that is not an integer"):
        GaussianScene.load_ply(tmp_path / "inst.ply")


def test_more_bad_arguments():
    scene = random_scene(10, seed=0)
    with pytest.raises(ValueError, match="GaussianScene objects only"):
        GaussianScene.concat([scene, 2])
    with pytest.raises(ValueError, match=r"indices must be in \[-10, 10\)"):
        scene.subset(np.array([10]))
    pose = np.eye(4)
    pose[3, 0] = 1.0
    with pytest.raises(ValueError, match="pose: the last row must be"):
        scene.transformed(pose)


def test_rotmats_to_quats_matches_its_one_at_a_time_twin():
    from neural_sensor.gaussians import quats_to_rotmats, rotmat_to_quat, rotmats_to_quats

    q = np.random.default_rng(0).normal(size=(500, 4))
    rotations = quats_to_rotmats(q / np.linalg.norm(q, axis=1, keepdims=True))
    np.testing.assert_allclose(rotmats_to_quats(rotations), np.stack([rotmat_to_quat(r) for r in rotations]),
                               atol=1e-9)
