"""A drive log that reads but would reconstruct badly is named (reconstruct/log_checks.py)."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from neural_sensor.camera import Camera
from neural_sensor.reconstruct.log import INTRINSIC_KEYS, read_drive_log, write_drive_log
from neural_sensor.reconstruct.log_checks import DriveLogWarning, drive_log_warnings, ignored_intrinsics_warnings
from neural_sensor.rig import nuscenes_like_rig
from neural_sensor.world import pose_from_xyz_yaw

OPENCV_AS_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV camera axes written where OpenGL's are read


def _drive(stations: int = 3, offset_m=(0.0, 0.0, 0.0), post=np.eye(4), world=np.eye(4), step_m: float = 4.0):
    """A six-camera rig step_m apart along x: (cameras, sensor ids)."""
    cameras, ids = [], []
    for k in range(stations):
        ego = world @ pose_from_xyz_yaw(step_m * k + offset_m[0], offset_m[1], offset_m[2], 0.0)
        for spec in nuscenes_like_rig(16, 12):
            cameras.append(Camera.from_fov(16, 12, spec.fov_deg, ego @ spec.pose_camera_to_ego @ post))
            ids.append(spec.sensor_id)
    return cameras, ids


def test_a_sound_drive_has_no_warning():
    assert drive_log_warnings(*_drive()) == []
    assert drive_log_warnings(*_drive(step_m=10.0)) == []


@pytest.mark.parametrize("case, words", [
    ({"offset_m": (412_345.0, 5_412_345.0, 230.0)}, "5412 km from the world origin"),
    ({"post": OPENCV_AS_OPENGL}, "upside down"),
    ({"world": np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])}, "z up"),
    ({"stations": 1}, "holds one station"),
    # views 18 m apart reconstructed to an almost empty scene without a word (a new user's trial)
    ({"step_m": 18.0}, "a camera's consecutive views lie 18.0 m apart (the median)"),
])
def test_each_problem_is_named(case, words):
    problems = drive_log_warnings(*_drive(**case))
    assert len(problems) == 1 and words in problems[0], problems


def test_a_z_down_world_is_told_from_opencv_camera_axes():
    """A new user's NED (z-down) world with correct OpenGL cameras was told to right-multiply the cameras by
    diag(1, -1, -1, 1); done, the log read without a word and looked backwards in an upside-down world. The ego's
    poses hint at the world (both readings named where both fit: an FRD ego over OpenCV axes looks the same), and
    an FRD ego under level cameras is not told to turn the world."""
    down = np.diag([1.0, -1.0, -1.0, 1.0])
    cameras, ids = _drive(world=down)
    egos = [down @ pose_from_xyz_yaw(4.0 * (k // 6), 0.0, 0.0, 0.0) for k in range(len(cameras))]
    (problem,) = drive_log_warnings(cameras, ids, egos)
    assert "look upside down" in problem and "most likely the world's z points down (a NED frame)" in problem
    assert "median z -1.00" in problem and "left-multiplied by diag(1, -1, -1, 1)" in problem
    assert "or, if the ego poses use a z-down body frame (FRD" in problem
    (problem,) = drive_log_warnings(cameras, ids)  # no ego poses: both causes named
    assert "right-multiplication" in problem and "the world's z points down (a NED frame)" in problem
    told = [Camera(c.width, c.height, c.K, c.pose_camera_to_world @ down) for c in cameras]  # the advice taken
    (problem,) = drive_log_warnings(told, ids, egos)
    assert problem.startswith("the ego's up axis (pose_ego_to_world's third column) points down"), problem
    assert "if the ego poses use a z-down body frame (FRD), turn them to FLU" in problem
    (problem,) = drive_log_warnings(*_drive(post=OPENCV_AS_OPENGL), [pose_from_xyz_yaw(0, 0, 0, 0)] * 18)
    assert "OpenCV axes" in problem and "NED" not in problem  # a z-up ego: the camera axes alone
    assert drive_log_warnings(*_drive(), [pose_from_xyz_yaw(0, 0, 0, 0)] * 18) == []


def test_a_log_that_sees_only_ahead_is_named():
    """A new user's dashcam log (CAM_FRONT alone, or the three front cameras) built a scene with nothing behind
    and the road just before the car faint, without a word; the six-camera rig's log says nothing, whatever its
    ego poses say (a reviewer: an ego pose given as a camera's made a sound rig look half-blind when the yaw was
    taken in the ego's frame: it is taken about the world's z, per station)."""
    cameras, ids = _drive()
    stations = [k // 6 for k in range(len(cameras))]
    camera_as_ego = [c.pose_camera_to_world for c in cameras]
    assert drive_log_warnings(cameras, ids, camera_as_ego, stations) == []
    assert drive_log_warnings(cameras, ids, None, list(range(len(cameras)))) == []  # an index per image: unknown
    front = [k for k, name in enumerate(ids) if name.startswith("CAM_FRONT")]
    (problem,) = drive_log_warnings([cameras[k] for k in front], [ids[k] for k in front], None,
                                    [stations[k] for k in front])
    assert problem.startswith("the log's cameras see ") and "of the 360 degrees around the car" in problem
    assert int(problem.split()[4]) < 270
    one = [k for k, name in enumerate(ids) if name == "CAM_FRONT"]
    (problem,) = drive_log_warnings([cameras[k] for k in one], [ids[k] for k in one], None, [stations[k] for k in one])
    assert problem.startswith("the log's cameras see ")


def test_views_under_the_writers_default_names_are_not_called_one_station():
    """write_drive_log without camera_names names view i "cam<i>": a drive of three stations was warned of as "one
    station"; the warning now says what is wrong. A rig's six named cameras at one station still are one station."""
    cameras, _ = _drive()
    problems = drive_log_warnings(cameras, [f"cam{i}" for i in range(len(cameras))])
    assert len(problems) == 1 and "every view of the log has a camera of its own" in problems[0], problems
    assert not problems[0].startswith("no camera of the log moves") and "8.0 m apart" in problems[0]
    one = drive_log_warnings(*_drive(stations=1))
    assert len(one) == 1 and "holds one station" in one[0], one


def test_the_reader_warns_and_still_reads(tmp_path):
    rng = np.random.default_rng(0)
    cameras, ids = _drive()
    images = rng.integers(0, 256, size=(len(cameras), 12, 16, 3), dtype=np.uint8)
    write_drive_log(tmp_path / "good", images, cameras, camera_names=ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DriveLogWarning)
        read_drive_log(tmp_path / "good")
    flipped = [Camera(c.width, c.height, c.K, c.pose_camera_to_world @ OPENCV_AS_OPENGL) for c in cameras]
    write_drive_log(tmp_path / "flipped", images, flipped, camera_names=ids)
    with pytest.warns(DriveLogWarning, match=r"flipped: the cameras look upside down"):
        read_images, _, _ = read_drive_log(tmp_path / "flipped")
    assert read_images.shape == images.shape


def test_a_cached_reconstruction_warns_of_its_log_again(tmp_path):
    """The warnings come with the scene whether it is built or served from the cache (a second `run --scene-log`
    of the same bad log names the problem again), each once; a sound log's scene warns of nothing."""
    from neural_sensor.reconstruct.drive import DEFAULT_CHECKPOINT, reconstructed_scene_from_log
    from neural_sensor.reconstruct.refine import RefineConfig

    if not (DEFAULT_CHECKPOINT / "model.safetensors").exists():
        pytest.skip("no shipped reconstructor checkpoint")
    rng = np.random.default_rng(1)
    cameras, ids = _drive()
    images = rng.integers(0, 256, size=(len(cameras), 12, 16, 3), dtype=np.uint8)
    flipped = [Camera(c.width, c.height, c.K, c.pose_camera_to_world @ OPENCV_AS_OPENGL) for c in cameras]
    write_drive_log(tmp_path / "flipped", images, flipped, camera_names=ids)
    write_drive_log(tmp_path / "good", images, cameras, camera_names=ids)
    fast = dict(cache_dir=tmp_path / "cache", refine=RefineConfig(iterations=0), depth_refine=None)
    for expect_cached in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, meta = reconstructed_scene_from_log(tmp_path / "flipped", **fast)
        said = [str(w.message) for w in caught if issubclass(w.category, DriveLogWarning)]
        assert meta["cached"] is expect_cached and len(said) == 1 and "upside down" in said[0], said
        assert meta["log_warnings"] == said
        with warnings.catch_warnings():
            warnings.simplefilter("error", DriveLogWarning)
            _, meta = reconstructed_scene_from_log(tmp_path / "good", **fast)
        assert meta["cached"] is expect_cached and meta["log_warnings"] == []
    shutil.copytree(tmp_path / "flipped", tmp_path / "moved")  # the same bytes elsewhere: named where read now
    with pytest.warns(DriveLogWarning) as caught:
        _, meta = reconstructed_scene_from_log(tmp_path / "moved", **fast)
    assert meta["cached"] and [str(w.message) for w in caught] == meta["log_warnings"]
    assert meta["log_warnings"][0].startswith(f"drive log {tmp_path / 'moved'}: the cameras look upside down")


def test_frames_intrinsics_under_top_level_ones_are_named():
    transforms = {"fl_x": 600.0, "w": 160,
                  "frames": [{"fl_x": 600.0, "w": 160}, {"fl_x": 600.0000001}, {}, {"fl_x": 500.0, "cx": 80.0},
                             {"fl_x": None}, {"fl_x": 600, "w": "160"}]}
    assert ignored_intrinsics_warnings(transforms, INTRINSIC_KEYS) == [
        "frame 3's fl_x 500.0 is ignored: the top-level fl_x 600.0 applies to every frame (nerfstudio's rule); 2 of 6 "
        "frames give intrinsics that differ from the top-level ones (remove the top-level ones to use each frame's "
        "own)"]
    assert ignored_intrinsics_warnings({"frames": transforms["frames"]}, INTRINSIC_KEYS) == []  # no top-level ones
    agreeing = {"fl_x": 600.0, "frames": [{"fl_x": 600.0}, {"cx": 3.0}]}
    assert ignored_intrinsics_warnings(agreeing, INTRINSIC_KEYS) == []


def test_the_reader_warns_of_ignored_intrinsics_and_applies_the_top_level_ones(tmp_path):
    rng = np.random.default_rng(1)
    cameras, ids = _drive()  # a sound drive: no other warning
    images = rng.integers(0, 256, size=(len(cameras), 12, 16, 3), dtype=np.uint8)
    log = write_drive_log(tmp_path / "log", images, cameras, camera_names=ids)
    data = json.loads((log / "transforms.json").read_text())
    data.update(fl_x=data["frames"][0]["fl_x"], w=16, h=12)  # CAM_FRONT's focal length; every frame's size
    (log / "transforms.json").write_text(json.dumps(data))
    differ = [i for i, f in enumerate(data["frames"]) if f["fl_x"] != data["fl_x"]]  # the rig's other fields of view
    assert 0 < len(differ) < len(cameras)
    first = data["frames"][differ[0]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, read_cameras, _ = read_drive_log(log)
    messages = [str(w.message) for w in caught if issubclass(w.category, DriveLogWarning)]
    assert messages == [f"drive log {log}: frame {differ[0]}'s fl_x {first['fl_x']!r} is ignored: the top-level fl_x "
                        f"{data['fl_x']!r} applies to every frame (nerfstudio's rule); {len(differ)} of {len(cameras)} "
                        "frames give intrinsics that differ from the top-level ones (remove the top-level ones to use "
                        "each frame's own)"]
    assert all(c.K[0, 0] == data["fl_x"] for c in read_cameras)
