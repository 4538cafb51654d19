"""carla_bridge against the real carla package (no server needed): conversions, NeuralImage, NeuralCamera."""

from __future__ import annotations

import math
import queue

import numpy as np
import pytest

carla = pytest.importorskip("carla", reason="the carla client package is not installed (pip install .[test])")

from carla_bridge.sensor import NeuralCamera, NeuralImage  # noqa: E402
from carla_bridge.transforms import (  # noqa: E402
    agent_box,
    camera_pose_from_ue,
    pose_from_transform,
    transform_from_pose,
    ue_matrix,
)
from neural_sensor.camera import Camera  # noqa: E402
from neural_sensor.testing import make_street_scene  # noqa: E402

S = np.diag([1.0, -1.0, 1.0, 1.0])


def _random_transforms(count, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        x, y, z = rng.uniform(-100, 100, 3)
        pitch, yaw, roll = rng.uniform(-80, 80), rng.uniform(-180, 180), rng.uniform(-60, 60)
        yield carla.Transform(carla.Location(x, y, z), carla.Rotation(pitch=pitch, yaw=yaw, roll=roll))


def test_poses_agree_with_carla_matrices():
    for t in _random_transforms(50):
        ours = pose_from_transform(t)
        np.testing.assert_allclose(S @ ours @ S, np.array(t.get_matrix()), atol=1e-5)
        rot = t.rotation
        np.testing.assert_allclose(ue_matrix(t.location.x, t.location.y, t.location.z, rot.roll, rot.pitch, rot.yaw),
                                   np.array(t.get_matrix()), atol=1e-5)
        back = transform_from_pose(ours)
        np.testing.assert_allclose(np.array(back.get_matrix()), np.array(t.get_matrix()), atol=1e-4)


def test_projection_matches_carlas_recipe():
    """A world point lands on the same pixel as with PythonAPI's recipe (K from fov, UE camera axes (y, -z, x))."""
    rng = np.random.default_rng(1)
    width, height, fov = 800, 600, 90.0
    for cam_t in _random_transforms(20, seed=2):
        world_to_camera = np.array(cam_t.get_inverse_matrix())
        fwd = cam_t.get_forward_vector()
        forward = (fwd.x, fwd.y, fwd.z)
        for _ in range(5):
            # a point in front of the camera
            d = np.array([float(forward[0]), forward[1], forward[2]]) * rng.uniform(5, 50) + rng.normal(0, 2, 3)
            p_ue = np.array([cam_t.location.x, cam_t.location.y, cam_t.location.z]) + d
            pc = world_to_camera @ np.append(p_ue, 1.0)
            pc = np.array([pc[1], -pc[2], pc[0]])
            if pc[2] <= 0.5:
                continue
            focal = width / (2.0 * math.tan(fov * math.pi / 360.0))
            K = np.array([[focal, 0, width / 2.0], [0, focal, height / 2.0], [0, 0, 1]])
            expected = (K @ pc)[:2] / pc[2]
            camera = Camera.from_fov(width, height, fov, camera_pose_from_ue(np.array(cam_t.get_matrix())))
            uv, depth = camera.project((S[:3, :3] @ p_ue)[None])
            np.testing.assert_allclose(uv[0], expected, rtol=1e-5, atol=2e-3)  # carla stores float32 matrices
            assert depth[0] == pytest.approx(pc[2], rel=1e-6)


def test_agent_box_from_carla_bounding_box():
    bbox = carla.BoundingBox(carla.Location(0.2, 0.1, 0.75), carla.Vector3D(2.3, 1.0, 0.75))
    actor = carla.Transform(carla.Location(10, 5, 0), carla.Rotation(yaw=90))
    size, pose = agent_box(bbox, actor)
    assert size == pytest.approx((4.6, 2.0, 1.5))
    # UE yaw 90 faces UE +y = FLU -y; the box centre offset (0.2 forward, 0.1 right) rotates with it
    np.testing.assert_allclose(pose[:3, 0], [0, -1, 0], atol=1e-6)
    np.testing.assert_allclose(pose[:3, 3], [10 - 0.1, -5 - 0.2, 0.0], atol=1e-5)


def test_neural_image_is_a_carla_image(tmp_path):
    bgra = np.zeros((4, 6, 4), np.uint8)
    bgra[1, 2] = [10, 20, 30, 255]
    t = carla.Transform(carla.Location(1, 2, 3))
    image = NeuralImage.create(77, 3.85, t, 90.0, bgra)
    assert isinstance(image, carla.Image) and isinstance(image, carla.SensorData)
    assert (image.width, image.height, image.frame, image.frame_number, image.fov) == (6, 4, 77, 77, 90.0)
    assert image.timestamp == pytest.approx(3.85) and image.transform.location.z == pytest.approx(3)
    array = np.frombuffer(image.raw_data, dtype=np.uint8).reshape((image.height, image.width, 4))
    np.testing.assert_array_equal(array, bgra)  # the examples' recipe for turning an image into numpy
    assert len(image) == 24
    pixel = image[1 * 6 + 2]
    assert (pixel.r, pixel.g, pixel.b, pixel.a) == (30, 20, 10, 255)
    image.save_to_disk(str(tmp_path / "%06d.png"))
    assert (tmp_path / "000077.png").exists()
    with pytest.raises(ValueError, match="only ColorConverter.Raw"):
        image.convert(carla.ColorConverter.Depth)


class _Actor:
    def __init__(self, actor_id, type_id, transform, bbox, wheels="4"):
        self.id, self.type_id, self.bounding_box = actor_id, type_id, bbox
        self.attributes = {"number_of_wheels": wheels}
        self._transform = transform

    def get_transform(self):
        return self._transform


class _ActorSnapshot:
    def __init__(self, actor):
        self.id = actor.id
        self._t = actor.get_transform()

    def get_transform(self):
        return self._t

    def get_velocity(self):
        return carla.Vector3D(3.0, 0.0, 0.0)


class _Timestamp:
    def __init__(self, seconds):
        self.elapsed_seconds = seconds


class _Snapshot:
    """Stands in for carla.WorldSnapshot: iterable of actor snapshots, find(), frame, timestamp."""

    def __init__(self, frame, actors):
        self.frame = frame
        self.timestamp = _Timestamp(frame * 0.05)
        self._snaps = [_ActorSnapshot(a) for a in actors]

    def __iter__(self):
        return iter(self._snaps)

    def find(self, actor_id):
        return next((s for s in self._snaps if s.id == actor_id), None)


class _World:
    """Stands in for carla.World: on_tick callbacks fired by tick(), get_actors by id."""

    def __init__(self, actors):
        self.actors = {a.id: a for a in actors}
        self.callbacks = {}
        self.frame = 100

    def on_tick(self, callback):
        self.callbacks[len(self.callbacks) + 1] = callback
        return len(self.callbacks)

    def remove_on_tick(self, callback_id):
        del self.callbacks[callback_id]

    def get_actors(self, ids):
        return [self.actors[i] for i in ids]

    def tick(self):
        self.frame += 1
        snapshot = _Snapshot(self.frame, self.actors.values())
        for callback in list(self.callbacks.values()):
            callback(snapshot)
        return self.frame


def test_neural_camera_delivers_every_tick_in_order_with_agents():
    box = carla.BoundingBox(carla.Location(0, 0, 0.75), carla.Vector3D(2.25, 0.95, 0.75))
    ego = _Actor(1, "vehicle.tesla.model3", carla.Transform(carla.Location(0, 1.75, 0)), box)
    lead = _Actor(2, "vehicle.audi.a2", carla.Transform(carla.Location(9, 1.75, 0)), box)  # UE y=1.75: FLU -1.75
    light = _Actor(3, "traffic.traffic_light", carla.Transform(carla.Location(0, 0, 0)), box)
    world = _World([ego, lead, light])
    scene = make_street_scene(30_000, seed=0)
    camera = NeuralCamera(world, {"image_size_x": 64, "image_size_y": 48, "fov": 90, "role_name": "front"},
                          carla.Transform(carla.Location(1.5, 0, 1.6)), ego, scene, backend="cpu")
    images = queue.Queue()
    camera.listen(images.put)
    assert camera.is_listening()
    for _ in range(3):  # the synchronous-mode pattern of CARLA's examples
        frame = world.tick()
        image = images.get(timeout=10)
        assert image.frame == frame and isinstance(image, carla.Image)
    snapshot = camera.snapshot_from_carla(_Snapshot(5, world.actors.values()))
    assert [a.agent_id for a in snapshot.agents] == [2] and snapshot.agents[0].kind == "car"
    assert snapshot.agents[0].position_m[1] == pytest.approx(-1.75)
    # the lead car is drawn: the centre of the image differs from a render without it
    world_without = _World([ego])
    alone = NeuralCamera(world_without, {"image_size_x": 64, "image_size_y": 48, "fov": 90},
                         carla.Transform(carla.Location(1.5, 0, 1.6)), ego, scene, backend="cpu")
    other = queue.Queue()
    alone.listen(other.put)
    world_without.tick()
    a = np.frombuffer(image.raw_data, np.uint8).reshape(48, 64, 4).astype(int)
    b = np.frombuffer(other.get(timeout=10).raw_data, np.uint8).reshape(48, 64, 4).astype(int)
    assert np.abs(a[20:34, 24:40] - b[20:34, 24:40]).mean() > 10
    camera.stop()
    world.tick()
    assert images.empty() and not camera.is_listening()
    assert camera.destroy() and not world.callbacks


def test_no_server_is_a_clear_error():
    from carla_bridge.carla_world import connect

    with pytest.raises(RuntimeError, match=r"no CARLA server answered at 127.0.0.1:2999 within 1 s \(CARLA says: "):
        connect("127.0.0.1:2999", timeout_s=1.0)
    with pytest.raises(ValueError, match="must be HOST:PORT"):
        connect("localhost:twothousand")


@pytest.mark.skipif(not __import__("os").environ.get("CARLA_HOST"), reason="needs a CARLA server (set CARLA_HOST)")
def test_scenario_runs_on_a_carla_server(tmp_path):
    import os

    from scenarios.runner import RunOptions, run_scenario

    summary = run_scenario("cut_in", RunOptions(out_dir=tmp_path / "carla", ticks=20, width=96, height=54,
                                                progress=False, carla=os.environ["CARLA_HOST"], video=False))
    assert summary["ticks"] == 20


class _Blueprint:
    def __init__(self, type_id, **attributes):
        self.id = type_id
        self._attributes = {k: str(v) for k, v in attributes.items()}

    def has_attribute(self, key):
        return key in self._attributes

    def get_attribute(self, key):
        value = self._attributes[key]

        class _Attr:
            def as_str(self):
                return value

        return _Attr()


def test_leaderboard_cameras_become_neural_and_deliver_like_the_sensor_interface(monkeypatch):
    """enable() routes the leaderboard's `spawn_actor` of RGB cameras to NeuralCameras; other sensors pass through."""
    import sys
    import types

    import carla_bridge.leaderboard as lb

    box = carla.BoundingBox(carla.Location(0, 0, 0.75), carla.Vector3D(2.25, 0.95, 0.75))
    ego = _Actor(1, "vehicle.tesla.model3", carla.Transform(carla.Location(0, 1.75, 0)), box)
    world = _World([ego])
    spawned = []
    world.spawn_actor = lambda bp, transform, attach_to=None: spawned.append(bp.id) or "real sensor"

    class CarlaDataProvider:
        @staticmethod
        def get_world():
            return world

    provider = types.ModuleType("srunner.scenariomanager.carla_data_provider")
    provider.CarlaDataProvider = CarlaDataProvider
    for name in ("srunner", "srunner.scenariomanager"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "srunner.scenariomanager.carla_data_provider", provider)
    lb.enable(make_street_scene(20_000, seed=0), backend="cpu")
    try:
        proxy = CarlaDataProvider.get_world()
        camera = proxy.spawn_actor(_Blueprint("sensor.camera.rgb", image_size_x=64, image_size_y=48, fov=100,
                                              role_name="Center"), carla.Transform(carla.Location(x=1.5, z=1.6)), ego)
        gnss = proxy.spawn_actor(_Blueprint("sensor.other.gnss"), carla.Transform(), ego)
        assert isinstance(camera, NeuralCamera) and gnss == "real sensor" and spawned == ["sensor.other.gnss"]
        assert camera.attributes["fov"] == "100" and camera.attributes["image_size_x"] == "64"
        received = {}

        def callback(data):  # what the leaderboard's CallBack does with a carla.Image
            assert isinstance(data, carla.libcarla.Image)
            array = np.frombuffer(data.raw_data, dtype=np.dtype("uint8")).reshape((data.height, data.width, 4))
            received["Center"] = (data.frame, array.copy())

        camera.listen(callback)
        frame = proxy.tick()
        assert received["Center"][0] == frame and received["Center"][1].shape == (48, 64, 4)
        camera.stop()
        camera.destroy()
    finally:
        lb.disable()
    assert CarlaDataProvider.get_world() is world
