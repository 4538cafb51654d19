"""Agent assets, compose(), the sensor rig, leaderboard transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from carla_bridge.transforms import (
    camera_pose_from_ue,
    rgb_to_bgra,
    sensor_spec_from_leaderboard,
    ue_matrix,
    ue_to_flu,
)
from neural_sensor.assets import compose, make_asset
from neural_sensor.camera import Camera
from neural_sensor.labels import CityObjectLabel as L
from neural_sensor.render import render
from neural_sensor.rig import NeuralSensorRig, SensorSpec
from neural_sensor.testing import make_street_scene
from neural_sensor.world import AgentState, WorldSnapshot, pose_from_xyz_yaw


@pytest.mark.parametrize("kind, label", [("car", L.CAR), ("truck", L.TRUCK), ("pedestrian", L.PEDESTRIAN),
                                         ("cyclist", L.RIDER)])
def test_assets_fit_their_box_and_carry_ids(kind, label):
    asset = make_asset(kind, instance_id=7, seed=1)
    assert (asset.labels == label).all() and (asset.instance == 7).all()
    from neural_sensor.assets import AGENT_KINDS

    length, width, height = AGENT_KINDS[kind][1]
    assert asset.means[:, 2].min() >= -1e-5 and asset.means[:, 2].max() <= height + 1e-5
    assert np.abs(asset.means[:, 0]).max() <= length / 2 + 1e-5
    assert np.abs(asset.means[:, 1]).max() <= width / 2 + 1e-5
    with pytest.raises(ValueError, match="instance_id must be > 0"):
        make_asset(kind, instance_id=0)
    with pytest.raises(ValueError, match="unknown agent kind"):
        make_asset("tank", instance_id=1)


def test_compose_moves_exactly_the_agents_gaussians():
    background = make_street_scene(60_000, seed=0)  # its own cars have instance ids 1..21
    car = make_asset("car", instance_id=99)
    pose = pose_from_xyz_yaw(10.0, 2.0, 0.0, 0.5)
    parts = compose(background, [(car, pose)])
    assert parts[0] is background and parts[1].scene is car  # nothing copied
    moved = parts[1].materialize()
    np.testing.assert_allclose(moved.means, car.means @ pose[:3, :3].T + pose[:3, 3], atol=1e-5)
    np.testing.assert_array_equal(moved.instance, car.instance)
    # rendering the parts (pose folded into the view) equals rendering the materialised concatenation
    camera = Camera.look_at(64, 48, 80.0, [0.0, 2.0, 1.6], [10.0, 2.0, 1.0])
    from neural_sensor.gaussians import GaussianScene

    a = render(parts, camera, backend="cpu", outputs=("rgb", "instance"))
    b = render(GaussianScene.concat([background, moved]), camera, backend="cpu", outputs=("rgb", "instance"))
    c = render(parts, camera, backend="torch", outputs=("rgb", "instance"))
    np.testing.assert_allclose(a.rgb, b.rgb, atol=2e-4)
    assert (a.instance == b.instance).mean() > 0.999 and (a.instance == c.instance).mean() > 0.999
    assert (a.instance == 99).mean() > 0.03  # the car is in view


def test_ue_to_flu_known_answers():
    # UE yaw +90 deg faces UE +y (right); in FLU that is -y
    pose = ue_to_flu(ue_matrix(1.0, 2.0, 3.0, 0.0, 0.0, 90.0))
    np.testing.assert_allclose(pose[:3, 0], [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(pose[:3, 3], [1.0, -2.0, 3.0])
    # UE pitch +10 deg is nose up: FLU forward gets +z
    pose = ue_to_flu(ue_matrix(0, 0, 0, 0.0, 10.0, 0.0))
    assert pose[2, 0] == pytest.approx(math.sin(math.radians(10)))
    # a forward camera looks along +x with image right = -y, image down = -z
    cam = camera_pose_from_ue(ue_matrix(1.5, 0, 1.6, 0, 0, 0))
    np.testing.assert_allclose(cam[:3, :3], [[0, 0, 1], [-1, 0, 0], [0, -1, 0]], atol=1e-12)


def test_ue_matrix_matches_carla():
    carla = pytest.importorskip("carla", reason="the carla client package is not installed")
    for values in [(1, 2, 3, 5, 10, 30), (-4, 0.5, 2, -20, 45, -170), (0, 0, 0, 90, -30, 200)]:
        x, y, z, roll, pitch, yaw = values
        t = carla.Transform(carla.Location(x, y, z), carla.Rotation(pitch=pitch, yaw=yaw, roll=roll))
        np.testing.assert_allclose(np.array(t.get_matrix()), ue_matrix(*values), atol=1e-5)


def test_labels_match_carla():
    carla = pytest.importorskip("carla", reason="the carla client package is not installed")
    from neural_sensor.labels import CityObjectLabel

    names = {"Roads": "ROADS", "Sidewalks": "SIDEWALKS", "Buildings": "BUILDING", "Vegetation": "VEGETATION",
             "Car": "CAR", "Truck": "TRUCK", "Pedestrians": "PEDESTRIAN", "Rider": "RIDER", "RoadLines": "ROAD_LINE",
             "Poles": "POLE", "TrafficSigns": "TRAFFIC_SIGN", "Terrain": "TERRAIN", "GuardRail": "GUARD_RAIL"}
    for carla_name, ours in names.items():
        assert int(getattr(carla.CityObjectLabel, carla_name)) == CityObjectLabel[ours]


@pytest.mark.parametrize("change, message", [
    ({"fov": 0}, "fov must be in"), ({"fov": -5}, "fov must be in"), ({"width": 0}, "width must be a positive"),
    ({"height": 2.5}, "height must be a positive"), ({"x": float("nan")}, "x must be a finite"),
    ({"type": "sensor.lidar.ray_cast"}, "is not an RGB camera"), ({"type": "sensor.camera.depth"}, "is not an RGB camera"),
    ({"width": 9000}, "width 9000 pixels is over the largest side"), ({"width": 64.5}, "width must be a positive"),
    ({"fov": "wide"}, "fov must be a finite number, got 'wide'"), ({"height": "0"}, "height must be a positive"),
    ({"x": "1.5"}, "x must be a finite"),  # carla.Location takes no string: neither does the leaderboard
])
def test_bad_sensor_dicts(change, message):
    sensor = {"type": "sensor.camera.rgb", "id": "front", "x": 1.5, "y": 0, "z": 1.6, "roll": 0, "pitch": 0,
              "yaw": 0, "width": 64, "height": 48, "fov": 90}
    sensor.update(change)
    with pytest.raises(ValueError, match=message):
        sensor_spec_from_leaderboard(sensor)
    sensor["type"] = "sensor.camera.rgb"
    del sensor["yaw"]
    with pytest.raises(ValueError, match=r"missing keys \['yaw'\]"):
        sensor_spec_from_leaderboard(sensor)
    del sensor["type"]  # was taken for an RGB camera; the leaderboard itself fails on it (sensor["type"])
    with pytest.raises(ValueError, match=r"sensor 'front': missing key 'type'"):
        sensor_spec_from_leaderboard(sensor)


def test_a_numpy_fov_is_a_number_and_a_dict_is_no_sensor_spec():
    """A new user's findings: SensorSpec refused np.float32(90) as "fov must be in (0, 180) degrees", and
    NeuralSensorRig given a leaderboard dict said "'dict' object has no attribute 'sensor_id'"."""
    from neural_sensor.testing import make_street_scene

    for fov in (np.float32(90), np.int64(90)):  # kept as a float: an np.int64 failed later, at the capture
        spec = SensorSpec("a", 16, 12, fov, np.eye(4))
        assert spec.fov_deg == 90.0 and type(spec.fov_deg) is float
    with pytest.raises(ValueError, match="fov must be a number of degrees, got True"):
        SensorSpec("a", 16, 12, True, np.eye(4))
    sensor = {"type": "sensor.camera.rgb", "id": "front", "x": 1.5, "y": 0, "z": 1.6, "roll": 0, "pitch": 0,
              "yaw": 0, "width": 64, "height": 48, "fov": 90}
    with pytest.raises(ValueError, match="sensors must be SensorSpec, got dict .a leaderboard sensor dict: "
                                         "carla_bridge.transforms.sensor_spec_from_leaderboard reads one"):
        NeuralSensorRig(make_street_scene(1000), [sensor])
    rig = NeuralSensorRig(make_street_scene(1000), [SensorSpec("a", 16, 12, np.int64(90), np.eye(4))], backend="cpu")
    ego = AgentState(0, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(0.0, 0.0, 0.0, 0.0))
    assert rig.capture(WorldSnapshot(0, 0.0, ego))["a"].rgb.shape == (12, 16, 3)


def test_a_snapshot_names_an_agent_id_the_capture_could_not_draw():
    """An agent with id 0 (the background's instance label) was accepted and failed at the capture that drew it, in
    make_asset; a repeated id or a rig given None failed with unnamed errors."""
    ego = AgentState(0, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(0.0, 0.0, 0.0, 0.0))  # the ego is 0

    def agent(agent_id):
        return AgentState(agent_id, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(10.0, 0.0, 0.0, 0.0))

    with pytest.raises(ValueError, match=r"agent id 0 \(car\): an agent's id must be an integer in 1..2\*\*31 - 1"):
        WorldSnapshot(0, 0.0, ego, (agent(0),))
    with pytest.raises(ValueError, match=r"agent id 2147483648 \(car\)"):  # (an OverflowError at the capture)
        WorldSnapshot(0, 0.0, ego, (agent(2**31),))
    with pytest.raises(ValueError, match="agent id 3 is given twice"):
        WorldSnapshot(0, 0.0, ego, (agent(3), agent(3)))
    with pytest.raises(TypeError, match="expected AgentStates, got a dict"):
        WorldSnapshot(0, 0.0, ego, ({"id": 3},))
    with pytest.raises(TypeError, match="WorldSnapshot.ego: expected an AgentState, got NoneType"):
        WorldSnapshot(0, 0.0, None)
    assert WorldSnapshot(0, 0.0, ego, (agent(np.int64(3)), agent(4))).agents[0].agent_id == 3
    rig = NeuralSensorRig(make_street_scene(1000), [SensorSpec("a", 16, 12, 90.0, np.eye(4))], backend="cpu")
    with pytest.raises(TypeError, match="NeuralSensorRig.capture: expected a WorldSnapshot, got NoneType"):
        rig.capture(None)


def test_sensor_dicts_as_the_leaderboard_passes_them_to_carla():
    """The leaderboard hands width, height and fov to CARLA as str(value), so "90" or 800.0 work there: here too."""
    sensor = {"type": "sensor.camera.rgb", "id": "front", "x": 1.5, "y": 0, "z": 1.6, "roll": 0, "pitch": 0,
              "yaw": 0, "width": 64.0, "height": "48", "fov": "90"}
    spec = sensor_spec_from_leaderboard(sensor)
    assert (spec.width, spec.height, spec.fov_deg) == (64, 48, 90.0) and isinstance(spec.width, int)


def test_rig_capture_echoes_frame_and_sees_agents():
    background = make_street_scene(60_000, seed=0)
    front = sensor_spec_from_leaderboard({"type": "sensor.camera.rgb", "id": "front", "x": 1.5, "y": 0, "z": 1.6,
                                          "roll": 0, "pitch": 0, "yaw": 0, "width": 64, "height": 48, "fov": 90})
    left = SensorSpec.mounted("left", 32, 24, 90.0, (0, 0.5, 1.6), yaw_rad=math.pi / 2)
    rig = NeuralSensorRig(background, [front, left], backend="cpu")
    ego = AgentState(0, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(0.0, -1.75, 0.0, 0.0))
    car = AgentState(55, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(9.0, -1.75, 0.0, 0.0), 3.0)
    frames = rig.capture(WorldSnapshot(1234, 61.7, ego, (car,)))
    assert list(frames) == ["front", "left"]
    f = frames["front"]
    assert f.frame == 1234 and f.timestamp_s == 61.7 and f.rgb.shape == (48, 64, 3)
    assert frames["left"].rgb.shape == (24, 32, 3)
    assert (f.instance == 55).mean() > 0.02 and (f.semantic[f.instance == 55] == L.CAR).all()
    assert f.meta["enhanced"] is False and f.meta["enhancer_reason"] == "no enhancer configured"
    with pytest.raises(ValueError, match="duplicate sensor ids"):
        NeuralSensorRig(background, [front, front])
    with pytest.raises(ValueError, match="enhancer must have an enhance"):
        NeuralSensorRig(background, [front], enhancer=object())
    many = [SensorSpec.mounted(f"c{i}", 8, 8, 60.0, (0, 0, 1.5)) for i in range(17)]
    with pytest.raises(ValueError, match="at most 16"):
        NeuralSensorRig(background, many, enhancer=type("E", (), {"enhance": lambda self, frames: None})())


def test_rig_renders_only_the_fields_it_is_asked_for():
    """A rig of RGB cameras (outputs=("rgb",)) skips the median depth and the labels: the same pixels as a full
    rig (the compositing kernel without the best-Gaussian and median bookkeeping), the other fields None."""
    background = make_street_scene(40_000, seed=2)
    specs = [SensorSpec.mounted("front", 64, 48, 90.0, (1.5, 0, 1.6)),
             SensorSpec.mounted("left", 48, 32, 100.0, (0, 0.5, 1.6), yaw_rad=math.pi / 2)]
    ego = AgentState(0, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(0.0, -1.75, 0.0, 0.0))
    car = AgentState(9, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(8.0, -1.75, 0.0, 0.0), 2.0)
    snapshot = WorldSnapshot(3, 0.1, ego, (car,))
    full = NeuralSensorRig(background, specs, backend="cpu").capture(snapshot)
    rgb_only = NeuralSensorRig(background, specs, backend="cpu", outputs=("rgb",))
    assert rgb_only.render_outputs == ("rgb", "depth", "alpha")
    frames = rgb_only.capture(snapshot)
    for sid in ("front", "left"):
        np.testing.assert_array_equal(frames[sid].rgb, full[sid].rgb)
        assert frames[sid].depth is None and frames[sid].semantic is None and frames[sid].instance is None
    labelled = NeuralSensorRig(background, specs, backend="cpu", outputs=("semantic", "rgb")).capture(snapshot)
    np.testing.assert_array_equal(labelled["front"].semantic, full["front"].semantic)
    assert labelled["front"].depth is None and labelled["front"].instance is None
    for bad in (("depth",), ("rgb", "normals")):
        with pytest.raises(ValueError, match="outputs must include 'rgb'"):
            NeuralSensorRig(background, specs, outputs=bad)


def test_rig_draws_at_its_render_scale_and_delivers_the_cameras_size():
    """render_scale 0.5 (how a run draws a reconstruction): every field at the camera's own size, the pixels those
    of render(scale=0.5) of the composed scene; a bad scale is refused by name."""
    background = make_street_scene(40_000, seed=2)
    specs = [SensorSpec.mounted("front", 64, 48, 90.0, (1.5, 0, 1.6)),
             SensorSpec.mounted("left", 48, 32, 100.0, (0, 0.5, 1.6), yaw_rad=math.pi / 2)]
    ego = AgentState(0, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(0.0, -1.75, 0.0, 0.0))
    snapshot = WorldSnapshot(3, 0.1, ego, ())
    rig = NeuralSensorRig(background, specs, backend="cpu", render_scale=0.5)
    frames = rig.capture(snapshot)
    for spec in specs:
        frame = frames[spec.sensor_id]
        assert frame.rgb.shape == (spec.height, spec.width, 3) and frame.depth.shape == (spec.height, spec.width)
        assert frame.semantic.shape == (spec.height, spec.width)
        camera = Camera.from_fov(spec.width, spec.height, spec.fov_deg,
                                 ego.pose_agent_to_world @ spec.pose_camera_to_ego)
        expected = render(compose(background, []), [camera], backend="cpu", outputs=("rgb",), lod_px=rig.lod_px,
                          scale=0.5)
        np.testing.assert_array_equal(frame.rgb, expected.rgb[0])
    with pytest.raises(ValueError, match=r"NeuralSensorRig: scale must be a number in \(0, 1\]"):
        NeuralSensorRig(background, specs, render_scale=0.0)


def test_rig_depth_is_the_surface_and_the_enhancer_gets_the_expected_depth():
    """A frame's depth is the median depth (what a depth camera reports); the enhancer is sent the expected
    depth it was trained on."""
    scene = make_street_scene(30_000, seed=4)
    spec = SensorSpec.mounted("front", 48, 32, 90.0, (0, 0, 1.6))
    seen = {}

    class Recorder:
        def enhance(self, frames):
            seen.update({f["camera"]: f["depth"].copy() for f in frames})
            return type("R", (), {"rgb": None, "reason": "recorder", "latency_ms": 0.0})()

    ego = AgentState(0, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(0.0, -1.75, 0.0, 0.0))
    rig = NeuralSensorRig(scene, [spec], backend="cpu", enhancer=Recorder(), lod_px=0.0)
    frame = rig.capture(WorldSnapshot(1, 0.0, ego, ()))
    camera = Camera.from_fov(48, 32, 90.0, ego.pose_agent_to_world @ spec.pose_camera_to_ego)
    ref = render(scene, camera, backend="cpu", outputs=("depth", "median_depth"))
    np.testing.assert_array_equal(frame["front"].depth, ref.median_depth[0])
    np.testing.assert_array_equal(seen["front"], ref.depth[0])
    assert not np.array_equal(ref.depth[0], ref.median_depth[0])  # the two differ on this scene


def test_rig_sends_each_camera_its_warped_log_reference():
    """Given a LogReference, each camera's request carries the log's nearest views of that camera warped in
    through the render's MEDIAN depth (`LogReference.warp`), while the frame keeps its own fields; without an
    enhancer the rig neither renders nor warps for it."""
    from neural_sensor.reconstruct.reference import LogReference

    scene = make_street_scene(30_000, seed=4)
    spec = SensorSpec.mounted("front", 48, 32, 90.0, (0, 0, 1.6))
    ego = AgentState(0, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(0.0, -1.75, 0.0, 0.0))
    camera = Camera.from_fov(48, 32, 90.0, ego.pose_agent_to_world @ spec.pose_camera_to_ego)
    log_cams = [Camera.from_fov(24, 16, 90.0, pose_from_xyz_yaw(x, -1.75, 0.0, 0.0) @ spec.pose_camera_to_ego)
                for x in (-4.0, 0.5, 4.0)]
    log_images = render(scene, log_cams, backend="cpu", outputs=("rgb",)).rgb
    reference = LogReference.from_views(log_images, log_cams, ["front"] * 3, scene, (0.53, 0.71, 0.92))
    seen = {}

    class Recorder:
        def enhance(self, frames):
            seen.update({f["camera"]: (f["reference"].copy(), f["reference_valid"].copy()) for f in frames})
            return type("R", (), {"rgb": None, "reason": "recorder", "latency_ms": 0.0})()

    rig = NeuralSensorRig(scene, [spec], backend="cpu", enhancer=Recorder(), lod_px=0.0, outputs=("rgb",),
                          reference=reference)
    frame = rig.capture(WorldSnapshot(1, 0.0, ego, ()))["front"]
    assert frame.depth is None and frame.meta["reference_ms"] >= 0.0  # an RGB camera: no depth delivered
    out = render(scene, camera, backend="cpu", outputs=("rgb", "alpha", "median_depth"))
    expected = reference.warp(["front"], [camera], out.median_depth, out.alpha, 2)
    np.testing.assert_array_equal(seen["front"][0], expected[0][0])
    np.testing.assert_array_equal(seen["front"][1], expected[1][0])
    assert expected[1][0][out.alpha[0] > 0.5].mean() > 0.3  # a good share of the street is seen by the log
    assert NeuralSensorRig(scene, [spec], backend="cpu", reference=reference).reference is None
    with pytest.raises(ValueError, match="reference must be a LogReference"):
        NeuralSensorRig(scene, [spec], backend="cpu", enhancer=Recorder(), reference="log")
    with pytest.raises(ValueError, match="reference_views"):
        NeuralSensorRig(scene, [spec], backend="cpu", enhancer=Recorder(), reference=reference, reference_views=0)


def test_rig_prepare_does_the_first_captures_one_off_work():
    """`prepare` derives the scene's level-of-detail data and sends the enhancer one request of blank frames at
    each camera's size (with a reference when the rig sends one); the captures after it are the same as a rig's
    without it, and an enhancer that fails in it is not an error."""
    from neural_sensor.reconstruct.reference import LogReference

    scene = make_street_scene(30_000, seed=4)
    specs = [SensorSpec.mounted("front", 48, 32, 90.0, (0, 0, 1.6)),
             SensorSpec.mounted("left", 48, 32, 100.0, (0, 0.5, 1.6), yaw_rad=math.pi / 2)]
    ego = AgentState(0, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(0.0, -1.75, 0.0, 0.0))
    log_cams = [Camera.from_fov(24, 16, 90.0, pose_from_xyz_yaw(x, -1.75, 0.0, 0.0) @ specs[0].pose_camera_to_ego)
                for x in (-4.0, 4.0)]
    reference = LogReference.from_views(render(scene, log_cams, backend="cpu", outputs=("rgb",)).rgb, log_cams,
                                        ["front"] * 2, scene, (0.53, 0.71, 0.92))
    requests = []

    class Recorder:
        def enhance(self, frames):
            requests.append([(f["camera"], f["rgb"].shape, "reference" in f) for f in frames])
            return type("R", (), {"rgb": None, "reason": "recorder", "latency_ms": 0.0})()

    rig = NeuralSensorRig(scene, specs, backend="cpu", enhancer=Recorder(), lod_px=3.0, outputs=("rgb",),
                          reference=reference)
    scene._derived.clear()  # (the log's own render derived some)
    assert rig.prepare() >= 0.0 and "lod_groups" in scene._derived
    assert requests == [[("front", (32, 48, 3), True), ("left", (32, 48, 3), True)]]
    snapshot = WorldSnapshot(1, 0.0, ego, ())
    fresh = NeuralSensorRig(make_street_scene(30_000, seed=4), specs, backend="cpu", lod_px=3.0, outputs=("rgb",))
    np.testing.assert_array_equal(NeuralSensorRig(scene, specs, backend="cpu", lod_px=3.0, outputs=("rgb",))
                                  .capture(snapshot)["left"].rgb, fresh.capture(snapshot)["left"].rgb)

    class Broken:
        def enhance(self, frames):
            raise ConnectionError("no server")

    NeuralSensorRig(scene, specs, backend="cpu", enhancer=Broken()).prepare()


def test_rig_prepare_loads_the_warp_and_accumulation_kernels_a_capture_runs(monkeypatch):
    """A fresh install compiled the log warp's and the temporal accumulation's kernels in its first two ticks
    (~4 s and ~2.5 s): `prepare` calls both with arguments of the types a capture passes, so the capture finds
    them compiled (numba compiles once per type signature)."""
    import numba

    from neural_sensor.enhance import log_warp, temporal
    from neural_sensor.reconstruct.reference import LogReference

    calls: dict[str, list[tuple]] = {"warp": [], "temporal": []}

    def spy(name, kernel):
        def call(*args):
            calls[name].append(tuple(numba.typeof(a) for a in args))
            return kernel(*args)
        return call

    monkeypatch.setattr(log_warp, "_blend_kernel", spy("warp", log_warp._blend_kernel))
    monkeypatch.setattr(temporal, "_accumulate_kernel", spy("temporal", temporal._accumulate_kernel))
    scene = make_street_scene(20_000, seed=5)
    specs = [SensorSpec.mounted("front", 40, 24, 90.0, (0, 0, 1.6))]
    log_cams = [Camera.from_fov(24, 16, 90.0, pose_from_xyz_yaw(x, -1.75, 0.0, 0.0) @ specs[0].pose_camera_to_ego)
                for x in (-4.0, 4.0)]
    reference = LogReference.from_views(render(scene, log_cams, backend="cpu", outputs=("rgb",)).rgb, log_cams,
                                        ["front"] * 2, scene, (0.53, 0.71, 0.92))

    class Echo:  # "enhances" every camera into its own render
        def enhance(self, frames):
            return type("R", (), {"rgb": [f["rgb"].copy() for f in frames], "reason": "", "latency_ms": 0.0,
                                  "model_ms": 0.0})()

    rig = NeuralSensorRig(scene, specs, backend="cpu", enhancer=Echo(), lod_px=3.0, outputs=("rgb",),
                          reference=reference, temporal_blend=0.5)
    rig.prepare()
    prepared = {name: set(types) for name, types in calls.items()}
    assert all(prepared.values()), prepared  # both kernels ran in prepare
    for name in calls:
        calls[name].clear()
    for frame in (1, 2):  # the second capture blends the first one's history in
        rig.capture(WorldSnapshot(frame, 0.1 * frame, AgentState(0, "car", (4.5, 1.9, 1.5),
                                                                  pose_from_xyz_yaw(0.3 * frame, -1.75, 0.0, 0.0)), ()))
    assert calls["warp"] and calls["temporal"], calls
    for name, types in calls.items():
        assert set(types) <= prepared[name], (name, set(types) - prepared[name])


def test_rgb_to_bgra():
    rgb = np.zeros((2, 3, 3), np.float32)
    rgb[0, 0] = [1.0, 0.5, 0.0]
    out = rgb_to_bgra(rgb)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    assert out[0, 0].tolist() == [0, 128, 255, 255]


def test_recorded_uint8_equals_the_delivered_bgra():
    """The runner records the frames with the compiled to_uint8_into: the same pixels as the BGRA the agent
    gets (read back as RGB) and as the numpy _to_uint8, out-of-range values and rounding edges included."""
    from neural_sensor.enhance.protocol import to_uint8_into
    from scenarios.record import to_uint8 as _to_uint8

    rgb = np.random.default_rng(0).uniform(-0.1, 1.1, (40, 50, 3)).astype(np.float32)
    rgb[0, :4, 0] = [0.5 / 255, 254.5 / 255, 1.0, 0.0]
    recorded = to_uint8_into(rgb, np.empty(rgb.shape, np.uint8))
    np.testing.assert_array_equal(recorded, rgb_to_bgra(rgb)[..., 2::-1])
    np.testing.assert_array_equal(recorded, _to_uint8(rgb))


def test_rig_accumulates_enhanced_images_over_ticks():
    """temporal_blend: the second enhanced tick (the ego half a metre on) is blended with the first, reprojected
    through the render's depth and clamped (the twin's values; a rig without a reference renders no median depth
    for it, so the expected depth serves); a tick the enhancer did not refine is delivered raw and the next one
    starts afresh."""
    from neural_sensor.enhance.temporal import accumulate_reference

    scene = make_street_scene(30_000, seed=4)
    spec = SensorSpec.mounted("front", 48, 32, 90.0, (0, 0, 1.6))
    ego = AgentState(0, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(0.0, -1.75, 0.0, 0.0))
    rng = np.random.default_rng(0)
    state = {"fail": False}

    class Noisy:  # refines by adding noise: every tick differs
        def enhance(self, frames):
            if state["fail"]:
                return type("R", (), {"rgb": None, "reason": "down", "latency_ms": 0.0})()
            rgb = [np.clip(f["rgb"] + 0.1 * rng.standard_normal(f["rgb"].shape), 0, 1).astype(np.float32)
                   for f in frames]
            state["sent"] = rgb
            return type("R", (), {"rgb": rgb, "reason": "", "latency_ms": 0.0, "model_ms": 0.0})()

    rig = NeuralSensorRig(scene, [spec], backend="cpu", enhancer=Noisy(), lod_px=0.0, outputs=("rgb",),
                          temporal_blend=0.5)
    assert "median_depth" not in rig.render_outputs  # the filter alone asks the renderer for nothing more
    first = rig.capture(WorldSnapshot(1, 0.0, ego, ()))["front"]
    np.testing.assert_array_equal(first.rgb, state["sent"][0])  # no history yet
    moved = AgentState(0, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(0.5, -1.75, 0.0, 0.0))
    second = rig.capture(WorldSnapshot(2, 0.05, moved, ()))["front"]
    cameras = [Camera.from_fov(48, 32, 90.0, e.pose_agent_to_world @ spec.pose_camera_to_ego) for e in (ego, moved)]
    before, now = (render(scene, c, backend="cpu", outputs=("rgb", "depth", "alpha"), lod_px=0.0) for c in cameras)
    expected = accumulate_reference(cameras[1], now.depth[0], now.alpha[0], state["sent"][0], cameras[0], first.rgb,
                                    before.depth[0], 0.5)
    np.testing.assert_allclose(second.rgb, expected, atol=1e-5)
    assert not np.allclose(second.rgb, state["sent"][0]) and second.meta["temporal_ms"] >= 0.0
    state["fail"] = True
    assert not rig.capture(WorldSnapshot(3, 0.1, moved, ()))["front"].meta["enhanced"]
    state["fail"] = False
    fourth = rig.capture(WorldSnapshot(4, 0.15, moved, ()))["front"]
    np.testing.assert_array_equal(fourth.rgb, state["sent"][0])  # afresh after the raw tick
    with pytest.raises(ValueError, match="blend"):
        NeuralSensorRig(scene, [spec], backend="cpu", temporal_blend=1.0)


def test_mounted_cameras_and_the_rigs_background_are_checked_at_once():
    """A new user's findings: SensorSpec.mounted cut 64.7 pixels to 64 (SensorSpec itself refuses a float), a
    position of two numbers was a bare broadcast error, degrees given as radians were taken; a bad background_rgb
    failed at the first capture (or as "could not convert string to float: 'r'"), and so did gsplat without CUDA."""
    with pytest.raises(ValueError, match="sensor 'a': width must be a positive integer, got 64.7"):
        SensorSpec.mounted("a", 64.7, 48, 90.0, (0, 0, 1.5))
    with pytest.raises(ValueError, match=r"sensor 'a': position_ego_m must be 3 numbers \(x, y, z metres\)"):
        SensorSpec.mounted("a", 64, 48, 90.0, (1, 2))
    with pytest.raises(ValueError, match=r"sensor 'a': yaw_rad must be a finite angle within a full turn \(radians\), "
                                         r"got 90 \(degrees\?"):
        SensorSpec.mounted("a", 64, 48, 90.0, (0, 0, 1.5), yaw_rad=90)
    assert SensorSpec.mounted("a", np.int64(64), 48, 90.0, (0, 0, 1.5), yaw_rad=-math.pi).width == 64
    scene = make_street_scene(1000)
    for bad in ((2.0, 0.0, 0.0), "red", (0.5, 0.5)):
        with pytest.raises(ValueError, match="NeuralSensorRig: background_rgb must be 3 floats in"):
            NeuralSensorRig(scene, [SensorSpec("a", 16, 12, 90.0, np.eye(4))], backend="cpu", background_rgb=bad)
    from neural_sensor.render import cuda_available

    if not cuda_available():  # gsplat without CUDA failed only at the first capture
        with pytest.raises(ValueError, match="NeuralSensorRig: backend 'gsplat' needs a CUDA device"):
            NeuralSensorRig(scene, [SensorSpec("a", 16, 12, 90.0, np.eye(4))], backend="gsplat")


def test_the_assets_of_agents_gone_are_dropped():
    """A new user's soak: traffic that respawns (new agent ids) around a camera that stays kept one asset per agent
    ever seen, ~0.4 MB each, for good (200 -> 596 MB over 200 respawns of five cars). Assets of agents absent from
    the tick go once the cache holds more than twice the tick's agents plus ASSET_SLACK."""
    from neural_sensor.rig import ASSET_SLACK

    rig = NeuralSensorRig(make_street_scene(1000), [SensorSpec("a", 16, 12, 90.0, np.eye(4))], backend="cpu")
    ego = AgentState(0, "car", (4.5, 1.9, 1.5), np.eye(4))
    sizes = []
    for k in range(60):  # two cars a tick, new ids every tick
        agents = tuple(AgentState(1 + 2 * k + i, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(10.0, 3.0 * i, 0.0, 0.0))
                       for i in range(2))
        rig.capture(WorldSnapshot(k, 0.05 * k, ego, agents))
        sizes.append(len(rig._assets))
    assert max(sizes) <= 2 * 2 + ASSET_SLACK + 2, sizes
    kept = AgentState(999, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(10.0, 0.0, 0.0, 0.0))
    rig.capture(WorldSnapshot(100, 5.0, ego, (kept,)))
    asset = next(v for k, v in rig._assets.items() if k[1] == 999)
    for k in range(30):  # an agent that stays keeps its asset (the same object, not rebuilt)
        rig.capture(WorldSnapshot(101 + k, 5.0 + 0.05 * k, ego, (kept,)))
    assert next(v for k, v in rig._assets.items() if k[1] == 999) is asset


RIGS_ON_THREADS = """
import threading
from neural_sensor.rig import NeuralSensorRig, nuscenes_like_rig
from neural_sensor.testing import make_street_scene
from neural_sensor.world import AgentState, WorldSnapshot, pose_from_xyz_yaw

scene = make_street_scene(seed=0)
rigs = [NeuralSensorRig(scene, nuscenes_like_rig(64, 36), backend="cpu") for _ in range(3)]
errors = []

def capture(rig, k):
    try:
        for t in range(4):
            ego = AgentState(0, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(2.0 * k + t, 0.0, 0.0, 0.0), 5.0)
            rig.capture(WorldSnapshot(t + 1, 0.05 * t, ego))
    except Exception as err:
        errors.append(err)

threads = [threading.Thread(target=capture, args=(rig, k)) for k, rig in enumerate(rigs)]
for thread in threads:
    thread.start()
for _ in range(3):  # a camera spawned meanwhile: its rig prepared (warmed up) on this thread
    NeuralSensorRig(scene, nuscenes_like_rig(64, 36), backend="cpu", render_scale=0.5).prepare()
for thread in threads:
    thread.join()
import numba
assert numba.threading_layer() == "workqueue" and not errors, errors
"""


def test_rigs_capturing_on_threads_of_their_own_under_numbas_workqueue_layer():
    """A new user's finding: cameras on two egos, a parked car and a fixed camera (four rigs, each rendering on its
    own thread) ended the process (exit 134) under numba's workqueue threading layer, which numba takes where the
    machine has neither TBB nor libgomp: its parallel regions are entered one thread at a time there (a reviewer's
    finding: a rig prepared on the spawning thread while others render, too)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    result = subprocess.run([sys.executable, "-c", RIGS_ON_THREADS], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
