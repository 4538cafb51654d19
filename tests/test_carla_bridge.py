"""carla_bridge against the real carla package (no server needed): conversions, NeuralImage, NeuralCamera."""

from __future__ import annotations

import json
import math
import os
import queue

import numpy as np
import pytest

carla = pytest.importorskip("carla", reason="the carla client package is not installed (pip install .[test])")

from carla_bridge.sensor import NeuralCamera, NeuralImage  # noqa: E402
from carla_bridge.standin import StandInBlueprint, StandInClient, StandInSettings, StandInWorld  # noqa: E402
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
    assert image.save_to_disk(str(tmp_path / ("%06d.png" % image.frame))) == str(tmp_path / "000077.png")
    assert (tmp_path / "000077.png").exists()


def test_save_to_disk_names_files_as_libcarla_does(tmp_path):
    """libcarla's ImageIO (FileSystem::ValidateFilePath, io_any): ".png" only where the path has no extension, the
    format by how the path ends, the path otherwise as given. A '%' was filled with the frame (three timestamps
    "0.05", "0.10", "0.15" all became 0.png, and "100%_a.png" raised)."""
    from PIL import Image

    image = NeuralImage.create(77, 3.85, carla.Transform(), 90.0, np.full((4, 6, 4), 200, np.uint8))
    for given, written, kind in (("0.05", "0.05", "PNG"), ("0.10", "0.10", "PNG"), ("run_100%_a.png", None, "PNG"),
                                 ("frame", "frame.png", "PNG"), ("a/b/c.jpg", None, "JPEG"), ("d.tiff", None, "TIFF"),
                                 ("e.tif", None, "PNG"), ("f.bmp", None, "PNG"), ("g.JPG", None, "JPEG"),
                                 ("h.TIFF", None, "TIFF")):  # (libcarla's iends_with: any case)
        path = image.save_to_disk(str(tmp_path / given))
        assert path == str(tmp_path / (written or given))
        with Image.open(path) as picture:
            assert picture.format == kind and picture.size == (6, 4), given


def _standin_world_with(*placements):
    """A stand-in world with vehicles at UE (x, y) positions; returns the world and the actors."""
    world = StandInWorld()
    bp = StandInBlueprint("vehicle.tesla.model3")
    actors = [world.spawn_actor(bp, carla.Transform(carla.Location(x, y, 0.0))) for x, y in placements]
    return world, actors


def test_neural_camera_delivers_every_tick_in_order_with_agents():
    world, (ego, lead) = _standin_world_with((0.0, 1.75), (9.0, 1.75))  # UE y = 1.75 is FLU y = -1.75
    world.spawn_actor(StandInBlueprint("traffic.traffic_light"), carla.Transform())
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
    snapshot = camera.snapshot_from_carla(world.get_snapshot())
    assert [a.agent_id for a in snapshot.agents] == [lead.id] and snapshot.agents[0].kind == "car"
    assert snapshot.agents[0].position_m[1] == pytest.approx(-1.75)
    # the lead car is drawn: the centre of the image differs from a render without it
    world_alone, (ego_alone,) = _standin_world_with((0.0, 1.75))
    alone = NeuralCamera(world_alone, {"image_size_x": 64, "image_size_y": 48, "fov": 90},
                         carla.Transform(carla.Location(1.5, 0, 1.6)), ego_alone, scene, backend="cpu")
    other = queue.Queue()
    alone.listen(other.put)
    world_alone.tick()
    a = np.frombuffer(image.raw_data, np.uint8).reshape(48, 64, 4).astype(int)
    b = np.frombuffer(other.get(timeout=10).raw_data, np.uint8).reshape(48, 64, 4).astype(int)
    assert np.abs(a[20:34, 24:40] - b[20:34, 24:40]).mean() > 10
    camera.stop()
    world.tick()
    world.wait_for_callbacks()
    assert camera.rig.wait_idle()
    assert images.empty() and not camera.is_listening()
    assert camera.destroy() and not world._callbacks


def test_carla_simulator_on_the_stand_in_server():
    """CarlaSimulator's code path: settings, spawning, frame-id echo, control, behaviours that see the real ego,
    agent speeds, collisions by frame, restore on close."""
    from carla_bridge.carla_world import CarlaSimulator
    from carla_bridge.embedded import AgentSpec, EgoStart
    from carla_bridge.simulator import VehicleControl
    from neural_sensor.scene.layout import straight_road

    layout = straight_road(120.0, buildings=False)
    layout.objects.clear()
    agents = [AgentSpec(1, "car", "cut_in", lane=1, start_s_m=25, speed_mps=4, target_lane=0, trigger_m=12),
              AgentSpec(2, "pedestrian", "parked", start_xy_m=(60.0, -9.0))]
    client = StandInClient()
    client.world.apply_settings(StandInSettings(False, 0.1))  # the user's settings before we start
    sim = CarlaSimulator(client, layout, EgoStart(lane=0, start_s_m=5, speed_mps=0), agents, seed=0)
    world = client.world
    assert "<OpenDRIVE>" in world.opendrive and world.settings.synchronous_mode
    assert world.settings.fixed_delta_seconds == pytest.approx(0.05)
    ys, speeds = [], []
    for tick in range(160):
        snapshot = sim.tick()
        assert snapshot.frame == world.frame  # the server's frame id, echoed
        sim.apply_control(VehicleControl(throttle=1.0 if tick < 60 else 0.0))
        ys.append(snapshot.agents[0].position_m[1])
        speeds.append(snapshot.agents[0].speed_mps)
    assert snapshot.ego.position_m[0] > 30  # the ego moved under our throttle
    assert sim.ego.control.throttle == pytest.approx(0.0)
    assert ys[0] == pytest.approx(-5.25) and ys[-1] == pytest.approx(-1.75, abs=1e-3)  # the real ego triggered it
    # the behaviour's speed, not the kinematic actor's zero velocity: the car cut in beside the real ego as it
    # passed, stood for it (traffic keeps its gap) and is taking up its speed again
    assert min(speeds) < 0.5 and snapshot.agents[0].speed_mps > 1.0
    assert snapshot.agents[0].speed_mps == sim._behaviours._agents[0].speed_mps
    walker = snapshot.agents[1]
    assert walker.kind == "pedestrian" and walker.position_m[2] == pytest.approx(0.0, abs=1e-6)  # feet on the road
    sensor = next(a for a in world.actors.values() if a.type_id == "sensor.other.collision")
    car = sim._actors[1]
    sensor.emit_collision(car)
    sensor.emit_collision(world.spawn_actor(StandInBlueprint("static.prop.bench"), carla.Transform()))
    world.frame += 5  # an event stamped with a later frame waits for that frame's snapshot
    sensor.emit_collision(car)
    world.frame -= 5
    assert sim.tick().collisions == (-1, 1)
    assert sim.tick().collisions == ()
    sim.close()
    assert world.settings == StandInSettings(False, 0.1)  # the user's settings are back
    assert {a.type_id for a in world.actors.values()} == {"static.prop.bench", "spectator"}  # ours are destroyed


def test_carla_simulator_starts_the_ego_and_the_agents_at_their_speeds():
    """Under --carla the ego stood still at the first tick (the embedded run starts it at EgoStart.speed_mps: cut-in
    and crossing triggers depend on it) and the agents reported speed 0 at the first tick."""
    from carla_bridge.carla_world import CarlaSimulator
    from carla_bridge.embedded import AgentSpec, EgoStart
    from neural_sensor.scene.layout import straight_road

    layout = straight_road(120.0, buildings=False)
    layout.objects.clear()
    sim = CarlaSimulator(StandInClient(), layout, EgoStart(lane=0, start_s_m=5, speed_mps=10.0),
                         [AgentSpec(1, "car", "follow_lane", lane=0, start_s_m=40, speed_mps=6)], seed=0)
    first, second = sim.tick(), sim.tick()
    assert first.ego.speed_mps == pytest.approx(10.0, abs=0.1) and first.agents[0].speed_mps == pytest.approx(6.0, abs=0.2)
    assert second.ego.position_m[0] - first.ego.position_m[0] == pytest.approx(0.5, abs=0.05)  # 10 m/s x 0.05 s
    sim.close()


def test_scenario_runner_drives_the_stand_in_server(tmp_path, monkeypatch):
    import carla_bridge.carla_world as carla_world
    from scenarios.runner import RunOptions, run_scenario

    monkeypatch.setattr(carla_world, "connect", lambda address, timeout_s=10.0: StandInClient())
    summary = run_scenario("cut_in", RunOptions(out_dir=tmp_path / "run", ticks=10, width=48, height=27,
                                                backend="cpu", carla="standin:2000", video=False,
                                                cache_dir=tmp_path / "cache", progress=False))
    frames = [json.loads(line)["frame"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert frames == list(range(frames[0], frames[0] + 10)) and frames[0] > 5000
    assert summary["ticks"] == 10


def test_no_server_is_a_clear_error():
    from carla_bridge.carla_world import connect

    with pytest.raises(RuntimeError, match=r"no CARLA server answered at 127.0.0.1:2999 within 1 s \(CARLA says: "):
        connect("127.0.0.1:2999", timeout_s=1.0)
    with pytest.raises(ValueError, match="must be HOST:PORT"):
        connect("localhost:twothousand")


def test_something_that_is_not_a_carla_server_is_named_not_a_crash():
    """A new user's finding: `--carla` at a port where another service answers (a web server, a proxy) killed the
    run in 0.5 s with SIGABRT from inside libcarla (std::terminate on its reply), no word and no agent's destroy().
    The connection is asked in a child process first."""
    import socket
    import threading

    from carla_bridge.carla_world import connect

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]

    def answer() -> None:  # an HTTP server's 400 to whatever arrives
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    threading.Thread(target=answer, daemon=True).start()
    try:
        with pytest.raises(RuntimeError, match=rf"something at 127.0.0.1:{port} answered, but not as a CARLA server"):
            connect(f"127.0.0.1:{port}", timeout_s=5.0)
    finally:
        listener.close()


needs_server = pytest.mark.skipif(not os.environ.get("CARLA_HOST"), reason="needs a CARLA server (set CARLA_HOST)")


@needs_server
def test_neural_camera_on_a_real_server():
    """A vehicle and a neural camera on a live server: 20 ticks, every frame id arrives once, in order."""
    from carla_bridge.carla_world import connect
    from carla_bridge.sensor import spawn_neural_camera

    client = connect(os.environ["CARLA_HOST"])
    world = client.get_world()
    original = world.get_settings()
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    actors = []
    try:
        library = world.get_blueprint_library()
        vehicle = world.spawn_actor(library.find("vehicle.tesla.model3"), world.get_map().get_spawn_points()[0])
        actors.append(vehicle)
        bp = library.find("sensor.camera.rgb")
        bp.set_attribute("image_size_x", "96")
        bp.set_attribute("image_size_y", "54")
        camera = spawn_neural_camera(world, bp, carla.Transform(carla.Location(x=1.5, z=1.6)), vehicle,
                                     make_street_scene(20_000), backend="cpu")
        actors.append(camera)
        images = queue.Queue()
        camera.listen(images.put)
        ticked = [world.tick() for _ in range(20)]
        received = [images.get(timeout=30).frame for _ in range(20)]
        assert received == ticked and images.empty()
    finally:
        for actor in actors:
            actor.destroy()
        world.apply_settings(original)


@needs_server
def test_scenario_runs_on_a_carla_server(tmp_path):
    from scenarios.runner import RunOptions, run_scenario

    summary = run_scenario("cut_in", RunOptions(out_dir=tmp_path / "carla", ticks=20, width=96, height=54,
                                                progress=False, carla=os.environ["CARLA_HOST"], video=False))
    assert summary["ticks"] == 20


def test_leaderboard_cameras_become_neural_and_deliver_like_the_sensor_interface(monkeypatch, tmp_path):
    """enable() routes the leaderboard's `spawn_actor` of RGB cameras to NeuralCameras; other sensors pass through.
    A drive log given as its reference.npz reaches the cameras; a damaged one is named."""
    import sys
    import types

    import carla_bridge.leaderboard as lb
    from neural_sensor.camera import Camera
    from neural_sensor.reconstruct.reference import LogReference

    world, (ego,) = _standin_world_with((0.0, 1.75))
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
    scene = make_street_scene(20_000, seed=0)
    log_camera = Camera.from_fov(16, 12, 90.0, np.eye(4))
    LogReference(np.zeros((1, 12, 16, 3), np.uint8), np.ones((1, 12, 16), np.float32), log_camera.K[None],
                 np.eye(4)[None], np.array(["CAM_FRONT"])).save(tmp_path / "reference.npz")
    (tmp_path / "damaged.npz").write_bytes(b"PK not really")
    with pytest.raises(ValueError, match="damaged.npz is unreadable"):
        lb.enable(scene, backend="cpu", reference=tmp_path / "damaged.npz")
    lb.enable(scene, backend="cpu", reference=tmp_path / "reference.npz")
    try:
        proxy = CarlaDataProvider.get_world()
        camera = proxy.spawn_actor(StandInBlueprint("sensor.camera.rgb", image_size_x=64, image_size_y=48, fov=100,
                                              role_name="Center"), carla.Transform(carla.Location(x=1.5, z=1.6)), ego)
        gnss = proxy.spawn_actor(StandInBlueprint("sensor.other.gnss"), carla.Transform(), ego)
        assert isinstance(camera, NeuralCamera) and gnss == "real sensor" and spawned == ["sensor.other.gnss"]
        assert camera.attributes["fov"] == "100" and camera.attributes["image_size_x"] == "64"
        assert isinstance(camera.rig.reference, LogReference) and len(camera.rig.reference) == 1
        received = {}

        def callback(data):  # what the leaderboard's CallBack does with a carla.Image
            assert isinstance(data, carla.libcarla.Image)
            array = np.frombuffer(data.raw_data, dtype=np.dtype("uint8")).reshape((data.height, data.width, 4))
            received["Center"] = (data.frame, array.copy())

        camera.listen(callback)
        frame = proxy.tick()
        world.wait_for_callbacks()
        assert camera.rig.wait_idle()
        assert received["Center"][0] == frame and received["Center"][1].shape == (48, 64, 4)
        camera.stop()
        camera.destroy()
    finally:
        lb.disable()
    assert CarlaDataProvider.get_world() is world


def test_neural_image_prints_and_takes_pixels():
    image = NeuralImage.create(3, 0.15, carla.Transform(), 90.0, np.zeros((2, 2, 4), np.uint8))
    assert "frame=3" in str(image)
    image[1] = carla.Color(10, 20, 30, 255)
    assert np.frombuffer(image.raw_data, np.uint8)[4:8].tolist() == [30, 20, 10, 255]


def test_sensor_values_accept_numpy_numbers():
    from carla_bridge.transforms import sensor_spec_from_leaderboard

    spec = sensor_spec_from_leaderboard({"type": "sensor.camera.rgb", "id": "f", "x": np.float32(1.5), "y": 0,
                                         "z": 1.6, "roll": 0, "pitch": 0, "yaw": np.float64(10.0), "width": 64,
                                         "height": 48, "fov": np.float32(90)})
    assert spec.fov_deg == pytest.approx(90.0)


def test_a_control_from_carla_an_object_or_a_dict():
    """run_step may return a carla.VehicleControl, our VehicleControl, any object with the three fields, or a
    dict with them; anything else, or a dict missing one, is a ValueError naming what is missing."""
    from types import SimpleNamespace

    from carla_bridge.simulator import VehicleControl

    expected = VehicleControl(throttle=0.5, steer=-0.25, brake=0.0)
    assert VehicleControl.from_any(carla.VehicleControl(throttle=0.5, steer=-0.25, brake=0.0)) == expected
    assert VehicleControl.from_any(SimpleNamespace(throttle=0.5, steer=-0.25, brake=0.0)) == expected
    assert VehicleControl.from_any({"throttle": 0.5, "steer": -0.25, "brake": 0.0}) == expected
    with pytest.raises(ValueError, match="a mapping without brake"):
        VehicleControl.from_any({"throttle": 0.5, "steer": 0.0})
    with pytest.raises(ValueError, match="got NoneType"):
        VehicleControl.from_any(None)
    with pytest.raises(ValueError, match="VehicleControl.throttle must be a number"):
        VehicleControl.from_any({"throttle": float("nan"), "steer": 0.0, "brake": 0.0})


def test_a_run_that_fails_before_its_loop_leaves_the_server_as_it_found_it(tmp_path, monkeypatch):
    """A new user's finding: a run stopped between the simulator's start (sync mode on, the ego, agents and a
    collision sensor spawned) and its loop (the network precision's probe: a Ctrl-C there, or a bad precision) left a
    CARLA server in synchronous mode with every actor: a real server then waits for ticks forever."""
    import carla_bridge.carla_world as carla_world
    from scenarios.runner import RunOptions, run_scenario

    client = StandInClient()
    monkeypatch.setattr(carla_world, "connect", lambda address, timeout_s=10.0: client)
    with pytest.raises(ValueError, match="precision"):
        run_scenario("cut_in", RunOptions(out_dir=tmp_path / "run", ticks=2, width=48, height=27, backend="cpu",
                                          carla="standin:2000", video=False, scene="reconstruction",
                                          network_precision="bogus", enhancer=None, cache_dir=tmp_path / "cache",
                                          progress=False))
    world = client.get_world()  # (the run loaded the scenario's map: a new world)
    assert world.get_settings().synchronous_mode is False
    assert [a.type_id for a in world.get_actors()] == ["spectator"]


def test_a_neural_clients_new_worlds_spawn_neural_cameras():
    """A new user's finding: the world of NeuralClient.generate_opendrive_world (and load_world / reload_world) was
    the server's own, so a camera spawned there was the server's (on the stand-in it never delivered)."""
    from carla_bridge.client import NeuralClient, NeuralWorld
    from carla_bridge.sensor import NeuralCamera
    from neural_sensor.scene.layout import straight_road
    from neural_sensor.scene.opendrive import layout_to_opendrive
    from neural_sensor.testing import make_street_scene

    client = NeuralClient(StandInClient(), scene=make_street_scene(2000, seed=0), backend="cpu")
    world = client.generate_opendrive_world(layout_to_opendrive(straight_road(80.0)))
    assert isinstance(world, NeuralWorld)
    library = world.get_blueprint_library()
    car = world.spawn_actor(library.find("vehicle.tesla.model3"), world.get_map().get_spawn_points()[0])
    camera = world.spawn_actor(library.find("sensor.camera.rgb"), carla.Transform(), attach_to=car)
    assert isinstance(camera, NeuralCamera)
    camera.destroy()
    car.destroy()


def test_a_new_world_destroys_the_old_worlds_actors_and_cameras_as_the_server_does():
    """The stand-in's generate_opendrive_world kept the old world's actors alive and it had no load_world /
    reload_world; the server destroys every actor of the old episode (sensors too), keeps the settings only with
    reset_settings=False, and refuses a map it cannot parse or does not have, the old world going on."""
    from carla_bridge.client import NeuralClient
    from neural_sensor.scene.layout import straight_road
    from neural_sensor.scene.opendrive import layout_to_opendrive
    from neural_sensor.testing import make_street_scene

    client = NeuralClient(StandInClient(), scene=make_street_scene(2000, seed=0), backend="cpu")
    world = client.get_world()
    library = world.get_blueprint_library()
    car = world.spawn_actor(library.find("vehicle.tesla.model3"), world.get_map().get_spawn_points()[0])
    camera = world.spawn_actor(library.find("sensor.camera.rgb"), carla.Transform(), attach_to=car)
    world.apply_settings(carla.WorldSettings(synchronous_mode=True, fixed_delta_seconds=0.05))
    with pytest.raises(RuntimeError, match="map not found"):
        client.load_world("Town10HD_Opt")
    with pytest.raises(RuntimeError, match="opendrive could not be correctly parsed"):
        client.generate_opendrive_world("not a map")
    assert car.is_alive and camera.is_alive  # a refused world changes nothing

    kept = client.reload_world(reset_settings=False)
    assert not car.is_alive and not camera.is_alive  # (its rig's remove_on_tick met the expired episode)
    with pytest.raises(RuntimeError, match="trying to access an expired episode"):  # as libcarla's EpisodeProxy
        world.tick()
    assert kept.id != world.id and kept.get_settings().synchronous_mode
    assert [a.type_id for a in kept.get_actors()] == ["spectator"]
    car = kept.spawn_actor(library.find("vehicle.tesla.model3"), kept.get_map().get_spawn_points()[0])
    fresh = client.load_world(client.get_available_maps()[0])
    assert not car.is_alive and fresh.get_settings().synchronous_mode is False
    generated = client.generate_opendrive_world(layout_to_opendrive(straight_road(80.0)))
    assert generated.get_map().name == "OpenDriveMap" and client.load_world("OpenDriveMap").id != generated.id


def test_leaderboard_enable_from_the_environment_warms_the_renderer_and_a_second_enable_reaches_the_batch_client(
        monkeypatch, tmp_path):
    """A new user's findings on the leaderboard path: the shipped example's enable(scene) after the import's reset the
    NEURAL_SENSOR_BACKEND / ENHANCER / REFERENCE the variables had set (and read the PLY twice); nothing compiled the
    renderer before the first camera's frame (a fresh install's first route failed: the SensorInterface waits 10 s);
    a second enable() left the batch client with the first scene."""
    import sys
    import types

    import carla_bridge.leaderboard as lb
    from carla_bridge.client import NeuralClient

    class CarlaDataProvider:
        _client = None

        @staticmethod
        def get_world():
            return None

        @staticmethod
        def set_client(client):
            CarlaDataProvider._client = client

    provider = types.ModuleType("srunner.scenariomanager.carla_data_provider")
    provider.CarlaDataProvider = CarlaDataProvider
    for name in ("srunner", "srunner.scenariomanager"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "srunner.scenariomanager.carla_data_provider", provider)
    scene_path = tmp_path / "scene.ply"
    make_street_scene(2000, seed=0).save_ply(scene_path)
    warmed, loads = [], []
    monkeypatch.setattr(lb, "warm_up", lambda scene, backend: warmed.append(backend))
    real_load = lb.GaussianScene.load_ply
    monkeypatch.setattr(lb.GaussianScene, "load_ply", staticmethod(lambda path: loads.append(path) or real_load(path)))
    monkeypatch.setenv("NEURAL_SENSOR_SCENE", str(scene_path))
    monkeypatch.setenv("NEURAL_SENSOR_BACKEND", "cpu")
    monkeypatch.setenv("NEURAL_SENSOR_ENHANCER", "tcp://127.0.0.1:5999")
    try:
        assert lb.enable_from_environment("elsewhere.ply")
        assert lb.enable_from_environment("elsewhere.ply")  # the example's line after the import's
        assert lb._state["backend"] == "cpu" and lb._state["enhancer"] == "tcp://127.0.0.1:5999"
        assert len(loads) == 1 and warmed == ["cpu", "cpu"]
        CarlaDataProvider.set_client(StandInClient())
        first = CarlaDataProvider._client
        other = make_street_scene(2000, seed=1)
        lb.enable(other, backend="cpu")
        assert isinstance(first, NeuralClient) and CarlaDataProvider._client._options["scene"] is other
    finally:
        lb.disable()


def test_the_stand_ins_tick_is_unreals_float_and_whole_float_sizes_read_as_carla_reads_them():
    """The stand-in's delta was exactly 0.05 (the server's is Unreal's float, 0.0500000007: the leaderboard's
    speedometer, now - last > 1 / rate, read every other tick); a width of "800.0" (the leaderboard's str() of 800.0)
    was refused where CARLA's atoi reads 800."""
    import struct

    from carla_bridge.attributes import parse_value

    world = StandInClient().get_world()
    world.tick()
    assert world.get_snapshot().timestamp.delta_seconds == struct.unpack("f", struct.pack("f", 0.05))[0]
    assert parse_value("sensor.camera.rgb", "image_size_x", "800.0") == 800
    with pytest.raises(ValueError, match="not an integer"):
        parse_value("sensor.camera.rgb", "image_size_x", "800.5")


def test_the_standins_gnss_and_imu_measure_every_tick():
    """A new user's CARLA script waited forever for its GNSS: the stand-in's GNSS and IMU never called their
    listeners, and the leaderboard's noise attributes were unknown (IndexError). They measure now, as a server's
    (carla_bridge.pseudo_sensors), on the stream thread after the tick's on_tick callbacks; noise as set."""
    client = StandInClient("localhost", 2000)
    world = client.get_world()
    world.apply_settings(StandInSettings(True, 0.05))
    library = world.get_blueprint_library()
    car = world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform(carla.Location(10, 5, 0)))
    got = {"gnss": [], "imu": []}
    mounts = {"gnss": carla.Transform(carla.Location(1.0, 0.0, 1.6)), "imu": carla.Transform()}
    for kind in ("gnss", "imu"):
        bp = library.find(f"sensor.other.{kind}")
        if kind == "gnss":  # the leaderboard's settings
            for key in ("noise_alt_stddev", "noise_lat_stddev", "noise_lon_stddev"):
                bp.set_attribute(key, "0.0")
            bp.set_attribute("noise_seed", "0")
        world.spawn_actor(bp, mounts[kind], attach_to=car).listen(got[kind].append)
    car.apply_control(carla.VehicleControl(throttle=1.0, steer=0.3))
    for _ in range(5):
        world.tick()
    world.wait_for_callbacks()
    assert [m.frame for m in got["gnss"]] == [m.frame for m in got["imu"]] == list(range(5001, 5006))
    fix = got["gnss"][-1]
    where = fix.transform.location
    truth = world.get_map().transform_to_geolocation(where)
    assert (fix.latitude, fix.longitude, fix.altitude) == pytest.approx((truth.latitude, truth.longitude,
                                                                         truth.altitude), abs=1e-12)
    assert where.x == pytest.approx(car.get_transform().location.x + 1.0, abs=0.1)  # its mount on the car
    imu = got["imu"][-1]
    assert imu.accelerometer.z == pytest.approx(9.81, abs=1.0) and imu.accelerometer.x > 0.5  # gaining speed
    assert imu.gyroscope.z > 0.0  # a right turn (steer > 0) is +z in CARLA's left-handed axes
    assert 0.0 <= imu.compass < 2 * math.pi and "IMUMeasurement(frame=5005" in repr(imu)
    noisy = library.find("sensor.other.imu")
    noisy.set_attribute("noise_gyro_bias_z", "0.5")
    sensor = world.spawn_actor(noisy, carla.Transform(), attach_to=car)
    readings = []
    sensor.listen(readings.append)
    world.tick()
    world.wait_for_callbacks()
    assert readings[0].gyroscope.z == pytest.approx(0.5)  # a first reading has no turn rate yet: the bias alone
    sensor.destroy()  # as libcarla's: a destroyed sensor stops listening, and gets nothing more
    assert not sensor.is_listening()
    world.tick()
    world.wait_for_callbacks()
    assert len(readings) == 1
