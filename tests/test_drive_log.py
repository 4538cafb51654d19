"""Drive logs (docs/drive_log.md): the format's round trip, nerfstudio's conventions, every bad-log case named
(the reconstruction through a log and the CLI / runner entry points: test_log_reconstruction.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from neural_sensor.camera import Camera
from neural_sensor.reconstruct.log import (DriveLogError, log_digest, log_image_sizes, nerfstudio_to_opencv,
                                           opencv_to_nerfstudio, read_drive_log, write_drive_log)
from neural_sensor.rig import nuscenes_like_rig
from neural_sensor.world import pose_from_xyz_yaw

from _drive_logs import _random_pose, _tiny_log, _tiny_views  # noqa: E402



# the tiny logs below have cameras at random orientations, which read as upside down or not level: the reader's
# DriveLogWarning for that is tested in test_log_checks.py
pytestmark = pytest.mark.filterwarnings("ignore::neural_sensor.reconstruct.log_checks.DriveLogWarning")

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


def test_a_new_users_log_mistakes_are_named(tmp_path):
    """A float image in 0-255 was written as an all-white log; a NaN timestamp was written and refused only when
    read; a negative fl_x was named as Camera.K and a cx off the image accepted; a file_path without its extension
    said only "missing"; a transforms.json with a byte-order mark was refused as malformed JSON."""
    rng = np.random.default_rng(3)
    images, cameras = _tiny_views(rng, count=3)
    with pytest.raises(ValueError, match=r"float images hold values in \[0.5, 200\]; float images are RGB in \[0, 1\]"):
        dark_first = np.full((3, 12, 16, 3), 200.0, np.float32)
        dark_first[0] = 0.5  # a dark frame of a 0-255 drive is judged with the others, not brightened alone
        write_drive_log(tmp_path / "white", dark_first, cameras)
    with pytest.raises(ValueError, match=r"an image is int64; images are uint8, or float RGB in \[0, 1\]"):
        write_drive_log(tmp_path / "int64", images.astype(np.int64), cameras)
    with pytest.raises(ValueError, match=r"timestamps_s\[1\] must be a finite number of seconds, got nan"):
        write_drive_log(tmp_path / "nan_time", images, cameras, timestamps_s=[0.0, float("nan"), 1.0])
    assert not (tmp_path / "white").exists() and not (tmp_path / "nan_time").exists()
    overshoot = np.clip(images.astype(np.float32) / 255 * 1.01, 0, 1.01)  # a render a little over 1 is kept
    write_drive_log(tmp_path / "overshoot", overshoot, cameras, timestamps_s=np.array([0.0, 0.5, 1.0], np.float32))

    log = _tiny_log(tmp_path, "focal")
    _edit(log, lambda d: d["frames"][1].__setitem__("fl_x", -114.0))
    _expect(log, "frame 1", "fl_x must be a positive focal length in pixels, got -114")
    log = _tiny_log(tmp_path, "centre")
    _edit(log, lambda d: d["frames"][0].__setitem__("cx", 5000.0))
    _expect(log, "frame 0", "cx=5000 lies more than an image away from the frame's 16x12 image")
    _edit(log, lambda d: d["frames"][0].__setitem__("cx", -1e-9))  # a crop's principal point just off the image
    _edit(log, lambda d: d["frames"][1].__setitem__("cy", 14.0))
    assert read_drive_log(log)[0].shape[0] == 3
    log = _tiny_log(tmp_path, "no_extension")
    _edit(log, lambda d: d["frames"][1].__setitem__("file_path", d["frames"][1]["file_path"][:-4]))
    _expect(log, "image file missing (the folder holds 000001_CAM_B.png: name the file in full, with its extension)")
    with pytest.raises(DriveLogError, match=r"image file missing \(the folder holds 000001_CAM_B.png: name the file"):
        log_digest(log)  # what the command line reads first (the cache key): it had said only "No such file"
    log = _tiny_log(tmp_path, "null")  # json's null became NaN and was named as one
    _edit(log, lambda d: d["frames"][2]["transform_matrix"][0].__setitem__(3, None))
    _expect(log, "frame 2", "transform_matrix must be a [4, 4] array of numbers (holds null)")
    log = _tiny_log(tmp_path, "twice")  # a frame listed twice was read as two views of one image
    _edit(log, lambda d: d["frames"].append(dict(d["frames"][0])))
    _expect(log, "frame 3", "frame 0 already names this image: list each image once")
    log = _tiny_log(tmp_path, "twice_absolute")  # the same image under its absolute path was read twice
    _edit(log, lambda d: d["frames"].append(dict(d["frames"][0], file_path=str(log / d["frames"][0]["file_path"]))))
    _expect(log, "frame 3", "frame 0 already names this image: list each image once")
    log = _tiny_log(tmp_path, "bomb")  # a header claiming 20000x20000 pixels: PIL's bound raised through (exit 1)
    from PIL import Image

    with Image.open(log / "images" / "000000_CAM_A.png") as img:
        img.load()
        big = img.resize((16, 12))
    original_bound = Image.MAX_IMAGE_PIXELS
    big.save(log / "images" / "000000_CAM_A.png")
    try:
        Image.MAX_IMAGE_PIXELS = 50  # the 192-pixel image is over twice the bound: DecompressionBombError
        _expect(log, "frame 0 (images/000000_CAM_A.png)", "image unreadable", "decompression bomb")
    finally:
        Image.MAX_IMAGE_PIXELS = original_bound
    log = _tiny_log(tmp_path, "bom")
    (log / "transforms.json").write_bytes(b"\xef\xbb\xbf" + (log / "transforms.json").read_bytes())
    assert read_drive_log(log)[0].shape[0] == len(json.loads((log / "transforms.json").read_text("utf-8-sig"))[
        "frames"])


def test_a_docs_checks_findings_16_bit_png_a_frames_own_distortion_and_a_null_top_level_intrinsic(tmp_path):
    """A docs check found: a 16-bit RGB PNG read as 8 bits without a word (PIL calls it "RGB"); a frame's own k1 =
    0.2 under a top-level k1 = 0 dropped; a top-level "fl_x": null called missing."""
    import struct
    import zlib

    log = _tiny_log(tmp_path, "png16")
    first = json.loads((log / "transforms.json").read_text())["frames"][0]["file_path"]
    w, h = 16, 12

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + struct.pack(">" + "H" * 3 * w, *([40000] * 3 * w)) for _ in range(h))
    (log / first).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                              + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    _expect(log, "16-bit PNG")
    log = _tiny_log(tmp_path, "k1")
    _edit(log, lambda d: (d.__setitem__("k1", 0), d["frames"][1].__setitem__("k1", 0.2)))
    _expect(log, "k1=0.2 is not supported")
    log = _tiny_log(tmp_path, "null")
    _edit(log, lambda d: d.__setitem__("fl_x", None))
    _expect(log, "fl_x at the top of transforms.json is null")
