"""Drive logs (docs/drive_log.md): round trip, nerfstudio's conventions, the reconstruction through a log,
every bad-log case named, and the CLI / runner entry points."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from neural_sensor.camera import Camera
from neural_sensor.gaussians import GaussianScene
from neural_sensor.reconstruct.drive import DEFAULT_CHECKPOINT
from neural_sensor.reconstruct.photometric import DEFAULT_DEPTH_REFINE
from neural_sensor.reconstruct.log import (DriveLogError, log_digest, log_image_sizes, nerfstudio_to_opencv,
                                           opencv_to_nerfstudio, read_drive_log, record_drive, write_drive_log)
from neural_sensor.rig import nuscenes_like_rig
from neural_sensor.world import pose_from_xyz_yaw

SHIPPED = DEFAULT_CHECKPOINT  # the reconstructor a run uses (neural_sensor.checkpoints.DEFAULT_RECONSTRUCTOR)
needs_checkpoint = pytest.mark.skipif(not (SHIPPED / "model.safetensors").exists(), reason="no shipped checkpoint")

SHORT_SCENARIO = '''
import dataclasses
from neural_sensor.scene.layout import straight_road
from scenarios.base import drive_scenario

def make_scenario(seed):
    layout = straight_road(50.0, buildings=False)
    return dataclasses.replace(drive_scenario(layout, "short_drive", "a short straight road"), voxel_m=0.6)
'''


# the tiny logs below have cameras at random orientations, which read as upside down or not level: the reader's
# DriveLogWarning for that is tested in test_log_checks.py
pytestmark = pytest.mark.filterwarnings("ignore::neural_sensor.reconstruct.log_checks.DriveLogWarning")

def _random_pose(rng) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    pose = np.eye(4)
    pose[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                    [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                    [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]
    pose[:3, 3] = rng.uniform(-50, 50, size=3)
    return pose


def _tiny_views(rng, count: int = 3, width: int = 16, height: int = 12):
    cameras = [Camera(width, height, [[20.0 + i, 0, 7.5 + i], [0, 21.5 + i, 6.25], [0, 0, 1]], _random_pose(rng))
               for i in range(count)]
    images = rng.integers(0, 256, size=(count, height, width, 3), dtype=np.uint8)
    return images, cameras


def _tiny_log(tmp_path: Path, name: str = "log") -> Path:
    images, cameras = _tiny_views(np.random.default_rng(5))
    return write_drive_log(tmp_path / name, images, cameras, camera_names=["CAM_A", "CAM_B", "CAM_C"])


# --------------------------------------------------------------------------------------------- round trip
def test_write_read_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    images, cameras = _tiny_views(rng, count=4)
    egos = [pose_from_xyz_yaw(float(i), 2.0, 0.0, 0.3 * i) for i in range(4)]
    write_drive_log(tmp_path / "log", images, cameras, camera_names=["F", "B", "F", "B"],
                    timestamps_s=[0.0, 0.0, 0.4, 0.4], frame_indices=[0, 0, 1, 1], poses_ego_to_world=egos,
                    source={"kind": "test"})
    read_images, read_cameras, meta = read_drive_log(tmp_path / "log")
    assert read_images.dtype == np.float32 and read_images.shape == (4, 12, 16, 3)
    assert np.array_equal(np.round(read_images * 255.0).astype(np.uint8), images)  # 8-bit PNG: exact
    for cam, back in zip(cameras, read_cameras):
        assert (back.width, back.height) == (cam.width, cam.height)
        assert np.array_equal(back.K, cam.K)
        assert np.allclose(back.pose_camera_to_world, cam.pose_camera_to_world, rtol=0, atol=1e-12)
    assert [f["camera"] for f in meta["frames"]] == ["F", "B", "F", "B"]
    assert [f["timestamp_s"] for f in meta["frames"]] == [0.0, 0.0, 0.4, 0.4]
    assert [f["frame_index"] for f in meta["frames"]] == [0, 0, 1, 1]
    assert np.allclose(meta["frames"][3]["pose_ego_to_world"], egos[3], atol=1e-12)
    assert meta["neural_sensor"]["source"] == {"kind": "test"} and meta["neural_sensor"]["version"] == 1
    # float images are rounded to the nearest 8-bit level
    floats = rng.uniform(0, 1, size=(1, 12, 16, 3)).astype(np.float32)
    write_drive_log(tmp_path / "f", floats, cameras[:1])
    back, _, _ = read_drive_log(tmp_path / "f")
    assert np.abs(back - floats).max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match="not an empty folder"):
        write_drive_log(tmp_path / "log", images, cameras)


def test_axis_conversion_round_trip():
    pose = _random_pose(np.random.default_rng(1))
    gl = opencv_to_nerfstudio(pose)
    assert np.array_equal(nerfstudio_to_opencv(gl), pose)
    # OpenGL camera axes: x the same, y and z flipped
    assert np.array_equal(gl[:3, 0], pose[:3, 0]) and np.array_equal(gl[:3, 1:3], -pose[:3, 1:3])


def test_nerfstudio_reading_projects_points_to_the_same_pixels(tmp_path):
    """A world point lands on the same pixel through our Camera and through transforms.json as nerfstudio reads
    it (OpenGL camera: x right, y up, looking down -z; pixel centres at +0.5 as in nerfstudio's rays)."""
    specs = nuscenes_like_rig(64, 40)
    ego = pose_from_xyz_yaw(10.0, -2.0, 0.0, 0.4)
    cameras = [Camera.from_fov(s.width, s.height, s.fov_deg, ego @ s.pose_camera_to_ego) for s in specs]
    write_drive_log(tmp_path / "log", np.zeros((6, 40, 64, 3), np.uint8), cameras,
                    camera_names=[s.sensor_id for s in specs])
    transforms = json.loads((tmp_path / "log" / "transforms.json").read_text())
    assert transforms["camera_model"] == "OPENCV"
    rng = np.random.default_rng(2)
    for cam, frame in zip(cameras, transforms["frames"]):
        assert set(frame) >= {"file_path", "fl_x", "fl_y", "cx", "cy", "w", "h", "transform_matrix"}
        # points in front of this camera, 3-40 m away
        local = np.stack([rng.uniform(-1, 1, 50), rng.uniform(-0.5, 0.5, 50), np.ones(50)], 1)
        local *= rng.uniform(3, 40, (50, 1))
        world = local @ cam.pose_camera_to_world[:3, :3].T + cam.pose_camera_to_world[:3, 3]
        uv, _ = cam.project(world)
        c2w = np.array(frame["transform_matrix"])
        p = (np.linalg.inv(c2w) @ np.c_[world, np.ones(len(world))].T).T[:, :3]
        assert np.all(p[:, 2] < 0)  # in front of an OpenGL camera means negative z
        u = frame["cx"] + frame["fl_x"] * p[:, 0] / -p[:, 2]
        v = frame["cy"] - frame["fl_y"] * p[:, 1] / -p[:, 2]
        assert np.allclose(np.stack([u, v], 1), uv, atol=1e-9)
    front = np.array(transforms["frames"][0]["transform_matrix"])
    assert transforms["frames"][0]["camera"] == "CAM_FRONT"
    heading = np.array([math.cos(0.4), math.sin(0.4), 0.0])
    assert np.allclose(-front[:3, 2], heading) and np.allclose(front[:3, 1], [0, 0, 1])  # looks ahead, y is up


def test_resampling_scales_the_intrinsics(tmp_path):
    rng = np.random.default_rng(3)
    images, cameras = _tiny_views(rng, count=2, width=32, height=24)
    write_drive_log(tmp_path / "log", images, cameras)
    half, half_cams, meta = read_drive_log(tmp_path / "log", size=(16, 12))
    assert half.shape == (2, 12, 16, 3) and meta["sizes_in_log"] == [[32, 24]]
    point = cameras[0].pose_camera_to_world[:3, :3] @ [0.3, -0.2, 5.0] + cameras[0].pose_camera_to_world[:3, 3]
    assert np.allclose(half_cams[0].project(point[None])[0], cameras[0].project(point[None])[0] / 2, atol=1e-9)
    # area resampling: each output pixel is the mean of its 2x2 block (PIL's fixed-point rounding: within 1 level)
    expected = images[0].reshape(12, 2, 16, 2, 3).mean(axis=(1, 3))
    assert np.abs(half[0] * 255 - expected).max() <= 1.0 + 1e-3


# --------------------------------------------------------------------------------------------- bad logs
def _edit(log: Path, change) -> None:
    data = json.loads((log / "transforms.json").read_text())
    change(data)
    (log / "transforms.json").write_text(json.dumps(data))


def _expect(log: Path, *patterns: str, size=None) -> DriveLogError:
    with pytest.raises(DriveLogError) as info:
        read_drive_log(log, size=size)
    message = str(info.value)
    assert "\n" not in message and str(log) in message
    for pattern in patterns:
        assert pattern in message, (pattern, message)
    return info.value


def test_bad_logs_are_named(tmp_path):
    log = _tiny_log(tmp_path, "missing_image")
    (log / "images" / "000001_CAM_B.png").unlink()
    err = _expect(log, "frame 1 (images/000001_CAM_B.png)", "missing")
    assert err.frame == 1 and err.file == "images/000001_CAM_B.png"
    with pytest.raises(DriveLogError, match="frame 1"):
        log_digest(log)
    assert "separates folders" not in str(err)
    log = _tiny_log(tmp_path, "windows_path")  # a log written on Windows: the separator is named
    _edit(log, lambda d: d["frames"][1].__setitem__("file_path", "images\\000001_CAM_B.png"))
    _expect(log, "image file missing (file_path separates folders with '\\'; write '/')")
    with pytest.raises(DriveLogError, match="write '/'"):
        log_digest(log)

    log = _tiny_log(tmp_path, "nan_pose")
    _edit(log, lambda d: d["frames"][2]["transform_matrix"][0].__setitem__(3, float("nan")))
    _expect(log, "frame 2 (images/000002_CAM_C.png)", "NaN")

    log = _tiny_log(tmp_path, "scaled_pose")  # a similarity transform (scale 2), not a rigid one
    _edit(log, lambda d: d["frames"][0].__setitem__("transform_matrix", (np.diag([2.0, 2, 2, 1]) @ np.array(
        d["frames"][0]["transform_matrix"])).tolist()))
    _expect(log, "frame 0 (images/000000_CAM_A.png)", "not a proper rotation (rigid transforms only): max "
                                                      "|R^T R - I| = 3 (tolerance 0.002", "det R = 8")

    log = _tiny_log(tmp_path, "rounded_pose")  # a rotation rounded in the JSON (|R^T R - I| ~1e-3): snapped, read
    _edit(log, lambda d: d["frames"][0].__setitem__("transform_matrix", (np.array(
        d["frames"][0]["transform_matrix"]) @ np.diag([1.0005, 1, 1, 1])).tolist()))
    _, cameras, _ = read_drive_log(log)
    rotation = cameras[0].pose_camera_to_world[:3, :3]
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-12)

    log = _tiny_log(tmp_path, "bad_ego")
    _edit(log, lambda d: d["frames"][1].__setitem__("pose_ego_to_world", [[1, 0, 0, 0]] * 4))
    _expect(log, "frame 1", "pose_ego_to_world")

    log = _tiny_log(tmp_path, "wrong_size")
    _edit(log, lambda d: d["frames"][1].__setitem__("w", 20))
    _expect(log, "frame 1 (images/000001_CAM_B.png)", "image is 16x12 but the frame says w=20 h=12")

    for key in ("fl_x", "cy", "h", "transform_matrix"):
        log = _tiny_log(tmp_path, f"no_{key}")
        _edit(log, lambda d: d["frames"][2].pop(key))
        _expect(log, "frame 2 (images/000002_CAM_C.png)", f"missing key '{key}'")
    log = _tiny_log(tmp_path, "no_file_path")
    _edit(log, lambda d: d["frames"][1].pop("file_path"))
    _expect(log, "frame 1", "missing key 'file_path'")
    log = _tiny_log(tmp_path, "no_frames")
    _edit(log, lambda d: d.pop("frames"))
    _expect(log, "transforms.json", "'frames'")

    log = _tiny_log(tmp_path, "malformed")
    (log / "transforms.json").write_text('{"frames": [ {"file_path": "a.png",, } ]}')
    _expect(log, "transforms.json", "malformed JSON at line 1")
    (log / "transforms.json").unlink()
    _expect(log, "no transforms.json")
    _expect(tmp_path / "nowhere", "not a folder")

    log = _tiny_log(tmp_path, "distorted")
    _edit(log, lambda d: d["frames"][0].__setitem__("k1", 0.01))
    _expect(log, "frame 0", "distortion parameter k1")
    for value in (True, False, "0.01"):  # not a coefficient: named as such, not as an unsupported distortion
        log = _tiny_log(tmp_path, f"k2_{value}")
        _edit(log, lambda d: d["frames"][0].__setitem__("k2", value))
        _expect(log, "frame 0", f"distortion parameter k2 must be a number (0 or absent: none), got {value!r}")
    log = _tiny_log(tmp_path, "top_level_size")  # the size nerfstudio takes from the top applies to every frame
    _edit(log, lambda d: d.update(w=20, h=12))
    _expect(log, "frame 0", "image is 16x12 but the top of transforms.json says (for every frame) w=20 h=12")
    log = _tiny_log(tmp_path, "fisheye")
    _edit(log, lambda d: d.__setitem__("camera_model", "OPENCV_FISHEYE"))
    _expect(log, "transforms.json", "camera_model 'OPENCV_FISHEYE'")

    log = _tiny_log(tmp_path, "not_an_image")
    (log / "images" / "000000_CAM_A.png").write_bytes(b"not a png")
    _expect(log, "frame 0 (images/000000_CAM_A.png)", "unreadable")


def test_images_of_different_sizes_are_refused_or_resampled(tmp_path):
    rng = np.random.default_rng(4)
    big, big_cams = _tiny_views(rng, count=1, width=32, height=24)
    small, small_cams = _tiny_views(rng, count=1, width=16, height=12)
    log = write_drive_log(tmp_path / "log", [big[0], small[0]], big_cams + small_cams)
    _expect(log, "frame 1 (images/000001_cam1.png)", "16x12 but frame 0 is 32x24", "--size W H")
    images, cameras, meta = read_drive_log(log, size=(16, 12))
    assert images.shape == (2, 12, 16, 3) and meta["sizes_in_log"] == [[16, 12], [32, 24]]
    assert np.array_equal(cameras[1].K, small_cams[0].K)  # already the size asked for: untouched


@pytest.mark.parametrize("where, key, value, words", [
    (1, "frame_index", "7", "frame_index must be an integer >= 0 (the rig frame the image belongs to), got '7'"),
    (1, "frame_index", True, "frame_index must be an integer >= 0"),  # a JSON true is not the number 1
    (1, "frame_index", 1.5, "frame_index must be an integer >= 0"),
    (1, "frame_index", -1, "frame_index must be an integer >= 0"),
    (2, "timestamp_s", "0.4", "timestamp_s must be a finite number of seconds, got '0.4'"),
    (2, "timestamp_s", False, "timestamp_s must be a finite number of seconds, got False"),
    (0, "camera", 3, "camera must be a non-empty string (the sensor's name, e.g. 'CAM_FRONT'), got 3"),
    (0, "camera", "", "camera must be a non-empty string"),
    (2, "pose_ego_to_world", "identity", "pose_ego_to_world must be a [4, 4] array of numbers"),
    (None, "neural_sensor", "v1", "neural_sensor must be a JSON object, got 'v1'"),
    (None, "source", ["generated"], "neural_sensor.source must be a JSON object"),
    (None, "sky_rgb", [0.5, 0.7], "neural_sensor.source.sky_rgb must be 3 numbers in [0, 1]"),
    (None, "sky_rgb", ["0.5", "0.7", "0.9"], "neural_sensor.source.sky_rgb must be 3 numbers in [0, 1]"),
    (None, "sky_rgb", [128, 180, 230], "neural_sensor.source.sky_rgb must be 3 numbers in [0, 1]"),
    (None, "version", 2, "neural_sensor.version 2: a newer drive log format than this neural-sensor reads (up to "
                         "version 1); upgrade neural-sensor"),
    (None, "version", "1", "neural_sensor.version must be an integer >= 1 (the drive log format's version), got '1'"),
    (None, "version", True, "neural_sensor.version must be an integer >= 1"),
    (None, "version", 1.5, "neural_sensor.version must be an integer >= 1"),
    (None, "format", "nuscenes", "neural_sensor.format is 'nuscenes', not 'neural-sensor drive log'"),
])
def test_our_optional_keys_of_the_wrong_type_are_named(tmp_path, where, key, value, words):
    log = _tiny_log(tmp_path)
    if where is not None:
        _edit(log, lambda d: d["frames"][where].__setitem__(key, value))
        _expect(log, f"frame {where} (images/00000{where}_CAM_{'ABC'[where]}.png)", words)
    else:
        def edit(d):
            if key == "neural_sensor":
                d["neural_sensor"] = value
            elif key in ("source", "format", "version"):
                d["neural_sensor"][key] = value
            else:
                d["neural_sensor"]["source"][key] = value
        _edit(log, edit)
        _expect(log, "transforms.json", words)


def test_our_optional_keys_absent_null_or_integral_are_read(tmp_path):
    log = _tiny_log(tmp_path)

    def edit(d):
        d["frames"][0].update(frame_index=7.0, timestamp_s=3, camera=None)  # 7.0: a float writer's integer
        d["frames"][1].pop("frame_index"), d["frames"][1].pop("camera")
        d["frames"][2].update(colmap_im_id="x", mask_path=3)  # nerfstudio keys we do not read: not checked
        d["neural_sensor"]["source"]["sky_rgb"] = [0.5, 0.7, 1]
        d["neural_sensor"]["version"] = 1.0  # a float writer's 1
        d.update(ply_file_path=5, applied_transform="whatever")
    _edit(log, edit)
    _, _, meta = read_drive_log(log)
    first, second = meta["frames"][:2]
    assert (first["frame_index"], first["timestamp_s"], first["camera"]) == (7, 3.0, None)
    assert type(first["frame_index"]) is int and type(first["timestamp_s"]) is float
    assert (second["frame_index"], second["camera"]) == (None, None)
    assert meta["neural_sensor"]["source"]["sky_rgb"] == [0.5, 0.7, 1]


def test_a_log_is_named_by_its_folder_or_its_transforms_json(tmp_path):
    log = _tiny_log(tmp_path)
    images, cameras, meta = read_drive_log(log)
    by_file, cameras_by_file, meta_by_file = read_drive_log(log / "transforms.json")
    assert np.array_equal(by_file, images) and meta_by_file["folder"] == str(log) == meta["folder"]
    assert all(np.array_equal(a.K, b.K) for a, b in zip(cameras, cameras_by_file))
    assert log_digest(log / "transforms.json") == log_digest(log)
    assert log_image_sizes(log / "transforms.json") == log_image_sizes(log) == [(16, 12)]
    # the file's folder is the one read: a missing image there is named as in the folder's own reading
    (log / "images" / "000001_CAM_B.png").unlink()
    with pytest.raises(DriveLogError, match=r"drive log .*log: frame 1 \(images/000001_CAM_B.png\): image file missing"):
        read_drive_log(log / "transforms.json")
    # any other file is refused, saying what a log is
    (log / "foo.json").write_text(json.dumps(json.loads((log / "transforms.json").read_text())))
    for other in (log / "images" / "000000_CAM_A.png", log / "foo.json"):
        for reader in (read_drive_log, log_digest, log_image_sizes):
            with pytest.raises(DriveLogError) as info:
                reader(other)
            assert str(info.value) == (f"drive log {other}: is a file, not a drive log: give the log's folder (holding "
                                       "transforms.json and the images) or its transforms.json")


# --------------------------------------------------------------------------------------------- reconstruction
@pytest.fixture(scope="module")
def short_drive(tmp_path_factory):
    """A 40 m road recorded every 15 m by the 6-camera rig at 64x40 (18 views)."""
    from neural_sensor.scene.layout import straight_road

    root = tmp_path_factory.mktemp("drive")
    layout = straight_road(40.0, buildings=False)
    path = layout.lanes[0].travel_polyline()
    summary = record_drive(layout, path, root / "log", step_m=15.0, width=64, height=40, voxel_m=0.6,
                           cache_dir=root / "cache")
    return {"root": root, "layout": layout, "path": path, "log": root / "log", "summary": summary}


def test_record_drive_writes_the_rig_along_the_path(short_drive):
    summary = short_drive["summary"]
    assert summary["frames"] == 3 and summary["views"] == 18
    images, cameras, meta = read_drive_log(short_drive["log"])
    assert images.shape == (18, 40, 64, 3)
    assert [f["camera"] for f in meta["frames"][:6]] == [s.sensor_id for s in nuscenes_like_rig()]
    assert [f["timestamp_s"] for f in meta["frames"][::6]] == [0.0, 1.5, 3.0]  # 15 m apart at 10 m/s
    # each camera sits at its rig mount on the ego pose of its frame
    for cam, frame, spec in zip(cameras, meta["frames"], nuscenes_like_rig(64, 40) * 3):
        assert np.allclose(cam.pose_camera_to_world, np.array(frame["pose_ego_to_world"]) @ spec.pose_camera_to_ego)
    assert meta["neural_sensor"]["source"]["sky_rgb"] and meta["neural_sensor"]["source"]["kind"] == "generated"
    # a step that leaves one station, or makes thousands (1e-3 m: 40,000 stations here), is refused before building
    for step, said in ((50.0, r"step_m 50 is longer than the path \(40.0 m\)"), (1e-3, r"makes 40001 stations")):
        with pytest.raises(ValueError, match=said):
            record_drive(short_drive["layout"], short_drive["path"], short_drive["root"] / "never", step_m=step)
    assert not (short_drive["root"] / "never").exists()


@needs_checkpoint
def test_a_log_reconstructs_to_the_same_scene_as_the_in_memory_path(short_drive):
    from neural_sensor.reconstruct.drive import reconstructed_scene, reconstructed_scene_from_log
    from neural_sensor.reconstruct.model import ReconNet, reconstruct
    from neural_sensor.reconstruct.refine import refine_colours
    from neural_sensor.render import render
    from neural_sensor.scene.build import build_scene
    from neural_sensor.scene.path import Path as Polyline
    from neural_sensor.scene.to_gaussians import sky_rgb

    cache = short_drive["root"] / "cache"
    from_log, meta = reconstructed_scene_from_log(short_drive["log"], cache_dir=cache)
    assert meta["cached"] is False and meta["views"] == 18 and meta["frames"] == 3
    in_run, run_meta = reconstructed_scene(short_drive["layout"], short_drive["path"], step_m=15.0, width=64,
                                           height=40, voxel_m=0.6, cache_dir=cache, record_size=(64, 40))
    assert run_meta["key"] != meta["key"]  # keyed by layout + path vs by the log's bytes
    for name in ("means", "quats", "scales", "opacities", "sh", "labels"):
        assert np.array_equal(getattr(from_log, name), getattr(in_run, name)), name
    # the same scene from images rendered in memory and rounded to 8 bits, without any file in between
    layout, path = short_drive["layout"], Polyline(short_drive["path"])
    world, _ = build_scene(layout, voxel_m=0.6, cache_dir=cache)
    images, cameras = [], []
    for s in (0.0, 15.0, 30.0):
        xy, heading = path.at(s)
        ego = pose_from_xyz_yaw(xy[0], xy[1], 0.0, heading)
        step = [Camera.from_fov(sp.width, sp.height, sp.fov_deg, ego @ sp.pose_camera_to_ego)
                for sp in nuscenes_like_rig(64, 40)]
        images.append(render(world, step, backend="cpu", outputs=("rgb",), background=sky_rgb(layout.style)).rgb)
        cameras += step
    quantised = np.clip(np.concatenate(images) * 255.0 + 0.5, 0, 255).astype(np.uint8)  # rounded to nearest
    inputs = quantised.astype(np.float32) / np.float32(255)
    # the network's depths refined photometrically (the run's default), then fused (this fixture's stations are 15
    # m apart, beyond model.neighbour_views' 12 m, so the sweep finds no neighbour here and leaves the depths: what
    # it does to a reconstruction is tests/test_photometric.py's)
    # (in the arithmetic the reconstruction resolved "auto" to on this host)
    direct, sky_masks = reconstruct(ReconNet.from_pretrained(SHIPPED), inputs, cameras, return_sky=True,
                                    depth_refine=DEFAULT_DEPTH_REFINE, precision=meta["network_precision"])
    assert meta["depth_refinement"] == asdict(DEFAULT_DEPTH_REFINE)
    assert sky_masks.shape == inputs.shape[:3] and sky_masks.any()
    # then the default colour refinement (and its sky pruning) against the same images, over the log's sky
    direct, stats = refine_colours(direct, inputs, cameras, background=sky_rgb(layout.style), sky_masks=sky_masks)
    assert meta["colour_refinement"]["psnr_db"] == stats["psnr_db"] and stats["iterations"] == 2
    direct.save_ply(short_drive["root"] / "direct.ply")  # the cache returns a scene as its PLY stores it
    direct = GaussianScene.load_ply(short_drive["root"] / "direct.ply")
    for name in ("means", "quats", "scales", "opacities", "sh", "labels"):
        assert np.array_equal(getattr(direct, name), getattr(from_log, name)), name
    # cached: the same key from the same bytes; a changed image is a new key
    again, meta2 = reconstructed_scene_from_log(short_drive["log"], cache_dir=cache)
    assert meta2["cached"] is True and meta2["key"] == meta["key"] and len(again) == len(from_log)


@needs_checkpoint
def test_a_log_larger_than_the_network_reads_is_kept_as_the_reference(short_drive, monkeypatch):
    """reconstructed_scene records at record_size and reconstructs as reconstructed_scene_from_log(size=) does: the
    network (and the colour refinement) read the log resampled to width x height, the enhancer's reference keeps
    the log's own images at their size, with each view's depth rendered there; the two paths give the same scene."""
    from neural_sensor.reconstruct import drive
    from neural_sensor.reconstruct.drive import (REFERENCE_MAX_WIDTH, reconstructed_scene, reconstructed_scene_from_log,
                                                 reference_size, scene_reference)
    from neural_sensor.reconstruct.reference import REFERENCE_LOD_PX
    from neural_sensor.render import render
    from neural_sensor.render._common import SKY_RGB

    root = short_drive["root"]
    record_drive(short_drive["layout"], short_drive["path"], root / "log128", step_m=15.0, width=128, height=80,
                 voxel_m=0.6, cache_dir=root / "cache")
    in_run, run_meta = reconstructed_scene(short_drive["layout"], short_drive["path"], step_m=15.0, width=64,
                                           height=40, voxel_m=0.6, cache_dir=root / "cache", record_size=(128, 80))
    from_log, meta = reconstructed_scene_from_log(root / "log128", size=(64, 40), cache_dir=root / "cache")
    for name in ("means", "quats", "scales", "opacities", "sh", "labels"):
        assert np.array_equal(getattr(from_log, name), getattr(in_run, name)), name
    assert meta["image_size"] == run_meta["image_size"] == [64, 40]
    assert meta["reference_size"] == run_meta["reference_size"] == [128, 80]
    images, cameras, _ = read_drive_log(root / "log128")
    depth = render(from_log, cameras[:6], backend="cpu", outputs=("rgb", "median_depth"), background=SKY_RGB,
                   lod_px=REFERENCE_LOD_PX).median_depth  # as the reference keeps it
    for entry in (meta, run_meta):
        reference = scene_reference(entry)
        np.testing.assert_array_equal(reference.images, np.round(images * 255).astype(np.uint8))
        assert reference.depth_m.shape == (18, 80, 128)
        np.testing.assert_allclose(reference.depth_m[:6], depth, rtol=1e-3)  # stored as float16
    # a log wider than the run's rig keeps a reference of at most REFERENCE_MAX_WIDTH pixels across
    assert reference_size((128, 80)) == (128, 80)
    assert reference_size((REFERENCE_MAX_WIDTH, 7)) == (REFERENCE_MAX_WIDTH, 7)
    assert reference_size((1600, 900)) == (480, 270) == reference_size((960, 540))
    monkeypatch.setattr(drive, "REFERENCE_MAX_WIDTH", 96)  # the network reads the log as it is, the reference less
    _, capped = reconstructed_scene_from_log(root / "log128", cache_dir=root / "capped")
    assert capped["image_size"] == [128, 80] and capped["reference_size"] == [96, 60]
    assert scene_reference(capped).images.shape == (18, 60, 96, 3)
    # by default a log wider than the network's training size is read at that width, its aspect kept (the same
    # cache entry as asking for that size); a narrower log as it is; one of mixed sizes at one (`mixed_size`)
    assert drive.network_read_size([(1600, 900)]) == (160, 90) and drive.network_read_size([(320, 192)]) == (160, 96)
    assert drive.network_read_size([(160, 96)]) is None and drive.network_read_size([(320, 192), (64, 40)]) == (64, 39)
    monkeypatch.setattr(drive, "NETWORK_SIZE", (64, 40))
    auto, auto_meta = reconstructed_scene_from_log(root / "log128", cache_dir=root / "cache")
    assert auto_meta["cached"] and auto_meta["key"] == meta["key"] and auto_meta["image_size"] == [64, 40]
    assert np.array_equal(auto.means, from_log.means)


@needs_checkpoint
def test_a_reconstruction_keeps_its_log_as_the_enhancers_reference(short_drive, tmp_path):
    """The cache entry holds the log's images with each view's depth rendered from the reconstruction
    (reference.npz); the compiled warp equals its numpy twin (warp_views, bilinear, blended by the same
    weights); a damaged file is named."""
    from neural_sensor.reconstruct.drive import reconstructed_scene_from_log, scene_reference
    from neural_sensor.reconstruct.log import read_drive_log
    from neural_sensor.enhance.log_warp import log_view_weights, warp_log_reference
    from neural_sensor.reconstruct.reference import REFERENCE_LOD_PX, LogReference
    from neural_sensor.render import render
    from neural_sensor.render._common import SKY_RGB

    scene, meta = reconstructed_scene_from_log(short_drive["log"], cache_dir=short_drive["root"] / "cache")
    reference = scene_reference(meta)
    images, cameras, log_meta = read_drive_log(short_drive["log"])
    assert len(reference) == len(cameras) == 18
    assert list(reference.sensor_ids) == [f["camera"] for f in log_meta["frames"]]
    np.testing.assert_array_equal(reference.images, np.round(images * 255).astype(np.uint8))
    depth = render(scene, cameras[:6], backend="cpu", outputs=("rgb", "median_depth"), background=SKY_RGB,
                   lod_px=REFERENCE_LOD_PX).median_depth  # as the reference keeps it
    np.testing.assert_allclose(reference.depth_m[:6], depth, rtol=1e-3)  # stored as float16
    # the rig's cameras at twice the log's resolution, 1 m to the left of each station's pose
    specs = nuscenes_like_rig(128, 80)
    targets = [Camera(128, 80, c.K * np.array([[2.0], [2.0], [1.0]]),
                      pose_from_xyz_yaw(0.0, 1.0, 0.0, 0.0) @ c.pose_camera_to_world) for c in cameras[6:12]]
    out = render(scene, targets, backend="cpu", outputs=("rgb", "alpha", "median_depth"), background=SKY_RGB)
    ids = [s.sensor_id for s in specs]
    fast = reference.warp(ids, targets, out.median_depth, out.alpha, 2)
    twin = warp_log_reference(reference, ids, targets, out.median_depth, out.alpha, 2)
    np.testing.assert_array_equal(fast[1], twin[1])
    assert fast[0].dtype == np.uint8  # the wire's dtype, rounded from the twin's floats
    assert np.abs(fast[0].astype(np.int16) - np.round(twin[0] * 255).astype(np.int16)).max() <= 1
    assert fast[1].mean() > 0.5
    # a sensor id the log lacks takes the views facing its way
    assert set(reference.sensor_ids[log_view_weights(reference, "my_front", targets[0], 3)[0]]) == {"CAM_FRONT"}
    damaged = tmp_path / "reference.npz"
    damaged.write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match="reference.npz is unreadable"):
        LogReference.load(damaged)
    assert scene_reference({"path": str(tmp_path / "nothing")}) is None


@needs_checkpoint
def test_odd_sizes_are_cropped_to_the_networks_stride(tmp_path):
    from neural_sensor.reconstruct.drive import reconstructed_scene_from_log

    rng = np.random.default_rng(6)
    images, cameras = _tiny_views(rng, count=2, width=34, height=26)
    write_drive_log(tmp_path / "log", images, cameras)
    scene, meta = reconstructed_scene_from_log(tmp_path / "log", cache_dir=tmp_path / "cache")
    assert meta["image_size"] == [32, 24] and meta["log_image_sizes"] == [[34, 26]] and len(scene) > 0
    assert meta["reference_size"] == [34, 26]  # the reference keeps the log's images whole
    new_key = reconstructed_scene_from_log(tmp_path / "log", size=(16, 12), cache_dir=tmp_path / "cache")[1]
    assert new_key["cached"] is False and new_key["image_size"] == [16, 12]


@needs_checkpoint
def test_the_cache_key_follows_the_log_bytes_and_the_reconstruction_code(tmp_path, monkeypatch):
    from neural_sensor.reconstruct import drive

    rng = np.random.default_rng(7)
    images, cameras = _tiny_views(rng, count=2, width=32, height=24)
    log = write_drive_log(tmp_path / "log", images, cameras)
    first = drive.reconstructed_scene_from_log(log, cache_dir=tmp_path / "cache")[1]
    assert first["cached"] is False and drive.reconstructed_scene_from_log(log, cache_dir=tmp_path / "cache")[1][
        "cached"] is True
    monkeypatch.setattr(drive, "reconstruction_code_hash", lambda: "another fusion")
    assert drive.reconstructed_scene_from_log(log, cache_dir=tmp_path / "cache")[1]["cached"] is False
    monkeypatch.undo()
    images[1, 0, 0] ^= 1  # one changed byte of one image
    changed = write_drive_log(tmp_path / "changed", images, cameras)
    again = drive.reconstructed_scene_from_log(changed, cache_dir=tmp_path / "cache")[1]
    assert again["cached"] is False and again["key"] != first["key"]


# --------------------------------------------------------------------------------------------- CLI and runner
@needs_checkpoint
def test_cli_reconstruct_and_record_drive(tmp_path, capsys, short_drive):
    from neural_sensor.gaussians import GaussianScene
    from scenarios.cli import main as cli_main

    assert cli_main(["reconstruct", str(short_drive["log"]), "-o", str(tmp_path / "scene.ply"),
                     "--cache", str(tmp_path / "cache")]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["views"] == 18 and result["frames"] == 3 and result["image_size"] == [64, 40]
    # and a person's line: how many Gaussians, built or cached, where the scene and its PLY are
    assert captured.err.strip().splitlines()[-1] == (
        f"neural-sensor reconstruct: {result['n_gaussians']} Gaussians (built in {result['wall_s']} s); the scene is "
        f"cached in {result['path']}, its PLY copied to {tmp_path / 'scene.ply'}")
    assert len(GaussianScene.load_ply(tmp_path / "scene.ply")) == result["n_gaussians"] > 1000
    refined = result["colour_refinement"]  # on by default: the fit raised the log views' PSNR
    assert refined["iterations"] == 2 and refined["psnr_db"][1] > refined["psnr_db"][0]
    # without the refinement: another cache entry, nothing pruned, the network's colours
    assert cli_main(["reconstruct", str(short_drive["log"]), "--refine-iterations", "0",
                     "--cache", str(tmp_path / "cache")]) == 0
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plain["colour_refinement"] is None and plain["key"] != result["key"]
    assert plain["n_gaussians"] == result["n_gaussians"] + refined["pruned"]
    assert result["depth_refinement"] == asdict(DEFAULT_DEPTH_REFINE)  # on by default, named in the result
    assert cli_main(["reconstruct", str(short_drive["log"]), "--no-depth-refinement",
                     "--cache", str(tmp_path / "cache")]) == 0
    network_depths = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert network_depths["depth_refinement"] is None and network_depths["key"] not in (result["key"], plain["key"])
    assert cli_main(["reconstruct", str(short_drive["log"]), "--refine-iterations", "-1"]) == 2
    assert "--refine-iterations must be >= 0" in capsys.readouterr().err
    assert result["reference_size"] == [64, 40]
    # -o never writes into the log it reads (it once overwrote transforms.json with the PLY), and writes a .ply
    transforms = (short_drive["log"] / "transforms.json").read_bytes()
    for out, problem in ((short_drive["log"] / "transforms.json", "give a .ply file name"),
                         (short_drive["log"] / "scene.ply", "lies inside the drive log"),
                         (tmp_path / "scene.png", "give a .ply file name")):
        assert cli_main(["reconstruct", str(short_drive["log"]), "-o", str(out),
                         "--cache", str(tmp_path / "cache")]) == 2
        assert problem in capsys.readouterr().err
    assert (short_drive["log"] / "transforms.json").read_bytes() == transforms
    assert not (short_drive["log"] / "scene.ply").exists() and not (tmp_path / "scene.png").exists()

    bad = _tiny_log(tmp_path, "bad")
    (bad / "images" / "000002_CAM_C.png").unlink()
    assert cli_main(["reconstruct", str(bad), "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "frame 2 (images/000002_CAM_C.png)" in err[0] and err[0].startswith("neural-sensor reconstruct: error")

    scenario_file = tmp_path / "short_drive.py"
    scenario_file.write_text(SHORT_SCENARIO)
    assert cli_main(["record-drive", str(scenario_file), "-o", str(tmp_path / "rec"), "--step", "25", "--width", "32",
                     "--height", "24", "--cache", str(tmp_path / "cache")]) == 0
    captured = capsys.readouterr()
    recorded = json.loads(captured.out.strip().splitlines()[-1])
    assert recorded["scenario"] == "short_drive" and recorded["views"] == 6 * recorded["frames"]
    assert captured.err.strip().splitlines()[-1] == (f"neural-sensor record-drive: {recorded['frames']} frames, "
                                                     f"{recorded['views']} images; the drive log is in {recorded['log']}")
    images, _, _ = read_drive_log(tmp_path / "rec")
    assert images.shape == (recorded["views"], 24, 32, 3)
    # the folder now holds a log: a second recording there is refused
    assert cli_main(["record-drive", str(scenario_file), "-o", str(tmp_path / "rec")]) == 2


def test_the_cli_and_a_run_take_a_logs_transforms_json(tmp_path, capsys):
    from scenarios.cli import main as cli_main
    from scenarios.runner import RunOptions, run_scenario

    log = _tiny_log(tmp_path)
    transforms = (log / "transforms.json").read_bytes()
    # -o inside the log is refused before any reading, the log named by its transforms.json as by its folder
    assert cli_main(["reconstruct", str(log / "transforms.json"), "-o", str(log / "scene.ply"),
                     "--cache", str(tmp_path / "cache")]) == 2
    assert "lies inside the drive log" in capsys.readouterr().err
    assert not (log / "scene.ply").exists() and (log / "transforms.json").read_bytes() == transforms
    assert cli_main(["reconstruct", str(log / "images" / "000000_CAM_A.png"), "-o", str(tmp_path / "scene.ply")]) == 2
    assert "000000_CAM_A.png: is a file, not a drive log" in capsys.readouterr().err
    # a run reads the file's folder: its missing image is named before anything starts
    (log / "images" / "000002_CAM_C.png").unlink()
    with pytest.raises(DriveLogError, match=r"frame 2 \(images/000002_CAM_C.png\): image missing"):
        run_scenario("cut_in", RunOptions(out_dir=tmp_path / "out", ticks=2, progress=False,
                                          scene=f"log:{log / 'transforms.json'}"))
    assert cli_main(["run", "cut_in", "--scene-log", str(log / "transforms.json"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "frame 2 (images/000002_CAM_C.png)" in err[0], err
    assert not (tmp_path / "out").exists()


@needs_checkpoint
def test_reconstruct_takes_a_logs_transforms_json(tmp_path, capsys):
    from scenarios.cli import main as cli_main

    images, cameras = _tiny_views(np.random.default_rng(8), count=2, width=32, height=24)
    log = write_drive_log(tmp_path / "log", images, cameras)
    fast = ["--refine-iterations", "0", "--no-depth-refinement", "--cache", str(tmp_path / "cache")]
    assert cli_main(["reconstruct", str(log / "transforms.json"), "-o", str(tmp_path / "scene.ply"), *fast]) == 0
    by_file = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert by_file["views"] == 2 and by_file["cached"] is False and (tmp_path / "scene.ply").is_file()
    assert cli_main(["reconstruct", str(log), *fast]) == 0  # the same log: the same cache entry
    by_folder = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert by_folder["cached"] is True and by_folder["key"] == by_file["key"]


def _with_wider_front_camera(log: Path, out: Path, size=(96, 48)) -> Path:
    """A copy of `log` whose CAM_FRONT images are resampled to `size` (another aspect), their intrinsics scaled:
    a rig whose cameras differ in size, as a real car's often do."""
    import shutil

    from PIL import Image

    shutil.copytree(log, out)
    data = json.loads((out / "transforms.json").read_text())
    for frame in data["frames"]:
        if frame["camera"] == "CAM_FRONT":
            sx, sy = size[0] / frame["w"], size[1] / frame["h"]
            path = out / frame["file_path"]
            Image.open(path).resize(size, Image.BICUBIC).save(path)
            frame.update(w=size[0], h=size[1], fl_x=frame["fl_x"] * sx, cx=frame["cx"] * sx, fl_y=frame["fl_y"] * sy,
                         cy=frame["cy"] * sy)
    (out / "transforms.json").write_text(json.dumps(data))
    return out


@needs_checkpoint
def test_a_log_of_mixed_sizes_is_reconstructed_and_run_without_a_size(tmp_path, short_drive):
    """A log whose cameras differ in size (here the front camera 96x48, the others 64x40) is read at one size by
    default (`mixed_size`: the narrowest width, the aspect halfway between the log's), and a run takes it as its
    scene; its scene is as good as the one-size log's where the other cameras look."""
    from neural_sensor.metrics import psnr
    from neural_sensor.reconstruct import drive
    from neural_sensor.reconstruct.drive import reconstructed_scene_from_log, scene_reference
    from neural_sensor.render import render
    from neural_sensor.render._common import SKY_RGB
    from scenarios.runner import RunOptions, run_scenario

    assert drive.mixed_size([(64, 40), (96, 48)], 160) == (64, 36)  # aspects 1.6 and 2.0: sqrt(3.2) = 1.79
    assert drive.mixed_size([(1920, 1280), (1920, 886)], 160) == (160, 89)  # a front and a side camera
    assert drive.network_read_size([(1920, 1280), (1920, 886)]) == (160, 89)
    assert drive.mixed_size([(1920, 1280), (1920, 886)], drive.REFERENCE_MAX_WIDTH) == (480, 266)
    mixed = _with_wider_front_camera(short_drive["log"], tmp_path / "mixed")
    with pytest.raises(DriveLogError, match="one reconstruction takes one image size"):
        read_drive_log(mixed)  # the reader itself still takes a size for such a log
    cache = short_drive["root"] / "cache"
    scene, meta = reconstructed_scene_from_log(mixed, cache_dir=cache)
    assert meta["image_size"] == [64, 36] and meta["reference_size"] == [64, 36]
    assert meta["log_image_sizes"] == [[64, 40], [96, 48]]
    assert scene_reference(meta).images.shape == (18, 36, 64, 3)
    same, _ = reconstructed_scene_from_log(short_drive["log"], size=(64, 36), cache_dir=cache)
    images, cameras, log_meta = read_drive_log(short_drive["log"], size=(64, 36))
    others = [i for i, f in enumerate(log_meta["frames"]) if f["camera"] != "CAM_FRONT"]
    got = [render(s, [cameras[i] for i in others], backend="cpu", background=SKY_RGB).rgb for s in (scene, same)]
    mixed_db, same_db = (psnr(g, images[others]) for g in got)
    assert len(scene) > 1000 and mixed_db > same_db - 0.5, (mixed_db, same_db)  # 16.8 / 16.8 dB at 64x36
    scenario_file = tmp_path / "short_drive.py"
    scenario_file.write_text(SHORT_SCENARIO)
    summary = run_scenario(str(scenario_file), RunOptions(out_dir=tmp_path / "out", ticks=2, width=32, height=18,
                                                          backend="cpu", video=False, cache_dir=cache,
                                                          progress=False, scene=f"log:{mixed}"))
    assert summary["ticks"] == 2 and summary["scene"]["cached"] and summary["scene"]["key"] == meta["key"]


@needs_checkpoint
def test_a_run_takes_a_log_as_its_scene(tmp_path, capsys, short_drive, monkeypatch):
    from scenarios.cli import main as cli_main
    from scenarios.runner import RunOptions, run_scenario

    scenario_file = tmp_path / "short_drive.py"
    scenario_file.write_text(SHORT_SCENARIO)
    options = RunOptions(out_dir=tmp_path / "out", ticks=2, width=32, height=18, backend="cpu", video=False,
                         cache_dir=short_drive["root"] / "cache", progress=False,
                         scene=f"log:{short_drive['log']}")
    summary = run_scenario(str(scenario_file), options)
    assert summary["ticks"] == 2 and summary["scene"]["source"] == f"log:{short_drive['log']}"
    assert summary["scene"]["log"] == str(short_drive["log"].resolve()) and summary["scene"]["n_gaussians"] > 1000
    # the log passes the ego's start: no warning; a log of another world would be named (here: any distance is far)
    import scenarios.runner as runner

    assert 0.0 <= summary["scene"]["log_nearest_to_ego_start_m"] < runner.LOG_FAR_FROM_EGO_M
    assert (summary["scene"]["log_nearest_to_ego_start_m"] <= summary["scene"]["log_farthest_from_ego_lane_m"]
            < runner.LOG_FAR_FROM_EGO_M)
    assert "warning" not in capsys.readouterr().err
    # a log that passes the ego's start but not the whole lane ahead (this short drive covers its first metres)
    near, far = summary["scene"]["log_nearest_to_ego_start_m"], summary["scene"]["log_farthest_from_ego_lane_m"]
    assert far > near + 1.0, (near, far)
    monkeypatch.setattr(runner, "LOG_FAR_FROM_EGO_M", (near + far) / 2)
    run_scenario(str(scenario_file), replace(options, out_dir=tmp_path / "out_leaves"))
    assert "leaves the ego's lane" in capsys.readouterr().err
    monkeypatch.setattr(runner, "LOG_FAR_FROM_EGO_M", -1.0)
    run_scenario(str(scenario_file), replace(options, out_dir=tmp_path / "out_far"))
    assert "passes no nearer than" in capsys.readouterr().err
    with pytest.raises(DriveLogError, match="no transforms.json"):
        run_scenario(str(scenario_file), RunOptions(out_dir=tmp_path / "out2", ticks=2, progress=False,
                                                    scene=f"log:{tmp_path}"))
    assert not (tmp_path / "out2").exists()
    with pytest.raises(ValueError, match="'log:PATH'"):
        run_scenario(str(scenario_file), RunOptions(out_dir=tmp_path / "out3", scene="recon"))
    assert cli_main(["run", str(scenario_file), "--scene", "reconstruction", "--scene-log", str(short_drive["log"]),
                     "--out", str(tmp_path / "out4")]) == 2
    assert "not both" in capsys.readouterr().err
