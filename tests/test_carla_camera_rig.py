"""CameraRig (carla_bridge/camera_rig.py): the cameras of one parent rendered once per tick and delivered in order,
render errors raised by name, the snapshot conversion, the level of detail, the drive-log reference sent to an
enhancer that takes it and the enhanced images accumulated over ticks."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

carla = pytest.importorskip("carla", reason="the carla client package is not installed (pip install .[test])")

from _carla import MOUNT, H, W, camera_blueprint as _bp, image_array, settle as _settle  # noqa: E402
from carla_bridge.client import NeuralWorld  # noqa: E402
from carla_bridge.sensor import NeuralCameraError, spawn_neural_camera  # noqa: E402
from carla_bridge.standin import StandInBlueprint, StandInWorld  # noqa: E402
from neural_sensor.testing import make_street_scene  # noqa: E402


@pytest.fixture(scope="module")
def scene():
    return make_street_scene(20_000, seed=0)


def test_camera_delivers_every_frame_in_order_despite_a_slow_listener(scene, capfd):
    world = StandInWorld()
    library = world.get_blueprint_library()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform())
    camera = spawn_neural_camera(world, _bp(library, "rgb"), MOUNT, attach_to=ego, scene=scene, backend="cpu")
    got = []

    def listener(image):
        got.append(image.frame)
        if len(got) == 2:
            raise ValueError("a listener bug")  # printed and swallowed, as libcarla does with sensor callbacks

    camera.listen(listener)
    frames = [world.tick() for _ in range(5)]  # ticks do not wait for the renders
    _settle(world, camera)
    assert got == frames
    assert "ValueError: a listener bug" in capfd.readouterr().err


def test_render_errors_are_logged_at_once_and_raised_by_name(scene, caplog):
    world = StandInWorld()
    library = world.get_blueprint_library()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform())
    camera = spawn_neural_camera(world, _bp(library, "depth"), MOUNT, attach_to=ego, scene=scene, backend="cpu")
    camera.listen(lambda image: None)

    class Broken:
        def capture(self, snapshot):
            raise MemoryError("renderer ran out")

    camera.rig._rig_for = lambda views, fields: Broken()
    with caplog.at_level(logging.ERROR, logger="carla_bridge"):
        frame = world.tick()
        _settle(world, camera)
    assert any(f"frame {frame} failed" in r.getMessage() for r in caplog.records)  # logged at once
    with pytest.raises(NeuralCameraError, match=rf"sensor.camera.depth {camera.id}\): rendering frame {frame} "
                                                r"failed: MemoryError: renderer ran out"):
        camera.is_listening()
    assert camera.is_listening()  # raised once
    del camera.rig._rig_for
    ego.destroy()  # the parent is gone: no frame can be converted any more
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="carla_bridge"):
        frame = world.tick()
        world.tick()
        _settle(world, camera)
    assert sum("parent actor" in r.getMessage() for r in caplog.records) == 1  # once while it waits to be raised
    camera.stop()  # stop() and destroy() never raise it (libcarla's do not): a cleanup loop runs to its end
    other = spawn_neural_camera(world, _bp(library, "rgb"), MOUNT, scene=scene, backend="cpu")  # (ego is gone)
    assert camera.destroy() and not camera.is_alive and other.destroy()
    with pytest.raises(NeuralCameraError, match=f"parent actor {ego.id} is not in frame {frame}"):
        camera.raise_if_failed()  # still kept for whoever asks


def test_vectorised_snapshot_conversion_equals_agent_box():
    from carla_bridge.sensor import CameraRig
    from carla_bridge.transforms import agent_box

    world = StandInWorld()
    ego = world.spawn_actor(StandInBlueprint("vehicle.tesla.model3"), carla.Transform())
    rng = np.random.default_rng(4)
    actors = []
    for i in range(20):
        kind = "walker.pedestrian.0001" if i % 3 == 0 else "vehicle.audi.a2"
        where = carla.Transform(carla.Location(*rng.uniform(-50, 50, 3)),
                                carla.Rotation(pitch=rng.uniform(-20, 20), yaw=rng.uniform(-180, 180),
                                               roll=rng.uniform(-20, 20)))
        actors.append(world.spawn_actor(StandInBlueprint(kind), where))
    world.spawn_actor(StandInBlueprint("static.prop.bench"), carla.Transform())
    rig = CameraRig(("test",), world, ego, make_street_scene(2000), "cpu", (0.5, 0.5, 0.5), None, 1000.0)
    world.tick()  # a snapshot holds the actors of its frame, as CARLA's does
    try:
        snapshot = rig.snapshot_from_carla(world.get_snapshot())
    finally:
        rig.close()
    assert [a.agent_id for a in snapshot.agents] == [a.id for a in actors]
    for agent, actor in zip(snapshot.agents, actors):
        size, pose = agent_box(actor.bounding_box, actor.get_transform())
        assert agent.size_m == pytest.approx(size) and agent.kind == ("pedestrian" if "walker" in actor.type_id
                                                                      else "car")
        np.testing.assert_allclose(agent.pose_agent_to_world, pose, atol=1e-5)


def test_level_of_detail_reaches_the_rig_and_bad_values_are_named(scene):
    """lod_px travels from NeuralWorld / spawn_neural_camera to the rig that renders (cameras of different
    levels never share a rig); a negative or NaN one is refused by name."""
    world = StandInWorld()
    library = world.get_blueprint_library()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform())
    exact = spawn_neural_camera(world, _bp(library, "rgb"), MOUNT, attach_to=ego, scene=scene, backend="cpu",
                                lod_px=0.0)
    default = NeuralWorld(world, scene, backend="cpu").spawn_actor(_bp(library, "rgb"), MOUNT, attach_to=ego)
    try:
        assert exact.rig is not default.rig
        assert exact.rig.lod_px == 0.0 and default.rig.lod_px == 2.0
        for bad in (-1.0, float("nan")):
            with pytest.raises(ValueError, match="lod_px must be a finite number >= 0"):
                spawn_neural_camera(world, _bp(library, "rgb"), MOUNT, attach_to=ego, scene=scene, backend="cpu",
                                    lod_px=bad)
    finally:
        exact.destroy()
        default.destroy()


def _parted_views(count: int, width: int, height: int) -> tuple:
    """A camera rig's view keys for `count` cameras 0.1 m apart (as a set_transform parting them makes)."""
    poses = [np.eye(4) for _ in range(count)]
    for k, pose in enumerate(poses):
        pose[0, 3] = 0.1 * k
    return tuple((width, height, 90.0, tuple(pose.ravel())) for pose in poses)


def test_a_rig_whose_enhancer_request_would_be_too_large_is_refused_at_the_spawn(scene, caplog):
    """Six 1920x1080 rgb cameras with an enhancer: each tick's request (every rgb camera of the parent) was over the
    protocol's 64 MiB, so every frame went unrefined without a word. The spawn that makes it too large is refused
    (counting the distinct views, of every camera type: each is rendered and sent); NeuralSensorRig refuses the
    same."""
    from neural_sensor.rig import NeuralSensorRig, nuscenes_like_rig

    world = StandInWorld()
    library = world.get_blueprint_library()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform())
    hd = (1920, 1080)

    def mount(yaw_deg):
        return carla.Transform(MOUNT.location, carla.Rotation(yaw=yaw_deg))

    def spawn(kind, yaw_deg):
        return spawn_neural_camera(world, _bp(library, kind, hd), mount(yaw_deg), attach_to=ego, scene=scene,
                                   backend="cpu", enhancer="tcp://127.0.0.1:9")

    cameras = [spawn("rgb", 60.0 * k) for k in range(4)] + [spawn("depth", 240.0)]  # five distinct views
    try:
        cameras.append(spawn("semantic_segmentation", 0.0))  # the view of an rgb camera: no more to send
        with pytest.raises(ValueError, match=r"6 distinct camera view\(s\) on one parent with an enhancer\): 6 "
                                             r"camera\(s\) up to 1920x1080 make an enhancer request of 75 MB"):
            spawn("depth", 300.0)  # a sixth view, of a depth camera: its view goes in the request too
        assert len(cameras[0].rig.cameras) == 6
        # views the spawn did not count (a set_transform parting two cameras later): the render thread's rig is made
        # without the enhancer, said once (every frame had failed)
        views = _parted_views(6, 1920, 1080)
        with caplog.at_level(logging.WARNING, logger="carla_bridge"):
            assert cameras[0].rig._rig_for(views, ("rgb",)).enhancer is None
            assert cameras[0].rig._rig_for(views + views[:1], ("rgb",)).enhancer is None
        said = [r.getMessage() for r in caplog.records if "delivered unrefined" in r.getMessage()]
        assert len(said) == 1 and "make an enhancer request of 75 MB" in said[0], said
    finally:
        for camera in cameras:
            camera.destroy()

    class Enhancer:
        def enhance(self, frames):
            return None

    with pytest.raises(ValueError, match=r"NeuralSensorRig: 6 camera\(s\) up to 1920x1080 make an enhancer request"):
        NeuralSensorRig(scene, nuscenes_like_rig(*hd), backend="cpu", enhancer=Enhancer())
    NeuralSensorRig(scene, nuscenes_like_rig(1280, 720), backend="cpu", enhancer=Enhancer())


def test_a_seventeenth_camera_view_with_an_enhancer_is_refused_at_the_spawn(scene, caplog):
    """A new user's finding: 17 small cameras with an enhancer were all spawned, then every frame of all of them
    failed ("an enhancer request carries at most 16"). The 17th view is refused at the spawn, as one over the
    request's bytes; views the spawn did not count (a set_transform) go unrefined, said once."""
    world = StandInWorld()
    library = world.get_blueprint_library()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform())

    def spawn(yaw_deg):
        return spawn_neural_camera(world, _bp(library, "rgb", (64, 36)), carla.Transform(MOUNT.location,
                                   carla.Rotation(yaw=yaw_deg)), attach_to=ego, scene=scene, backend="cpu",
                                   enhancer="tcp://127.0.0.1:9")

    cameras = [spawn(20.0 * k) for k in range(16)]
    try:
        with pytest.raises(ValueError, match=r"\(17 distinct camera view\(s\) on one parent with an enhancer\): 17 "
                                             r"cameras; an enhancer request carries at most 16"):
            spawn(330.0)
        assert len(cameras[0].rig.cameras) == 16
        views = _parted_views(17, 64, 36)
        with caplog.at_level(logging.WARNING, logger="carla_bridge"):
            assert cameras[0].rig._rig_for(views, ("rgb",)).enhancer is None
        assert any("carries at most 16" in r.getMessage() for r in caplog.records)
    finally:
        for camera in cameras:
            camera.destroy()


def test_render_scale_reaches_the_rig_and_bad_values_are_named(scene):
    """render_scale travels from NeuralWorld / spawn_neural_camera to the rig (and its NeuralSensorRig); cameras of
    different scales never share a rig; 0 or above 1 is refused by name."""
    world = StandInWorld()
    library = world.get_blueprint_library()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform())
    half = NeuralWorld(world, scene, backend="cpu", render_scale=0.5).spawn_actor(_bp(library, "rgb"), MOUNT,
                                                                                   attach_to=ego)
    full = spawn_neural_camera(world, _bp(library, "rgb"), MOUNT, attach_to=ego, scene=scene, backend="cpu")
    try:
        assert half.rig is not full.rig and half.rig.render_scale == 0.5 and full.rig.render_scale == 1.0
        for bad in (0.0, 1.5):
            with pytest.raises(ValueError, match=r"neural camera: scale must be a number in \(0, 1\]"):
                spawn_neural_camera(world, _bp(library, "rgb"), MOUNT, attach_to=ego, scene=scene, backend="cpu",
                                    render_scale=bad)
    finally:
        half.destroy()
        full.destroy()


def test_a_camera_sends_the_drive_log_to_an_enhancer_trained_to_take_it(scene, monkeypatch, caplog):
    """Given a reconstruction's LogReference, a CARLA camera's enhancer request carries the log warped into it
    once the enhancer's hello says it takes `reference_views`; while the hello fails the frames go without it (a
    warning), and the answer is asked again (after RETRY_HELLO_S) and then kept."""
    from carla_bridge import camera_rig
    from carla_bridge.transforms import camera_pose_from_ue
    from neural_sensor.camera import Camera
    from neural_sensor.enhance.client import EnhancerError
    from neural_sensor.reconstruct.reference import LogReference
    from neural_sensor.render import render
    from neural_sensor.world import pose_from_xyz_yaw

    world = StandInWorld()
    library = world.get_blueprint_library()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform())
    mount = camera_pose_from_ue(np.array(MOUNT.get_matrix()))  # the ego sits at the origin
    log_cams = [Camera.from_fov(24, 16, 90.0, pose_from_xyz_yaw(x, 0.0, 0.0, 0.0) @ mount) for x in (-3.0, 3.0)]
    log_images = render(scene, log_cams, backend="cpu", outputs=("rgb",)).rgb
    reference = LogReference.from_views(log_images, log_cams, ["CAM_FRONT"] * 2, scene, (0.53, 0.71, 0.92))
    with pytest.raises(ValueError, match="reference must be a LogReference"):
        spawn_neural_camera(world, _bp(library, "rgb"), MOUNT, attach_to=ego, scene=scene, reference="log.npz")
    camera = spawn_neural_camera(world, _bp(library, "rgb"), MOUNT, attach_to=ego, scene=scene, backend="cpu",
                                 reference=reference)
    requests = []

    class Server:  # an EnhancerClient's face: hello (failing at first), enhance, close
        server = None
        hellos = 0
        down = True

        def hello(self, timeout_ms=None):
            self.hellos += 1
            if self.down:
                raise EnhancerError("no reply within 500 ms")
            self.server = {"reference_views": 2}
            return self.server

        def enhance(self, frames, out=None):
            requests.append([(f.get("reference"), f.get("reference_valid")) for f in frames])
            return type("Reply", (), {"rgb": None, "reason": "recorded", "latency_ms": 0.0})()

        def close(self):
            pass

    server = camera.rig.enhancer_client = Server()
    camera.listen(lambda image: None)
    with caplog.at_level(logging.WARNING, logger="carla_bridge"):
        world.tick()
        _settle(world, camera)
    assert requests[-1][0][0] is None and "no drive-log reference" in caplog.text
    monkeypatch.setattr(camera_rig, "RETRY_HELLO_S", 0.0)
    server.down = False
    for _ in range(2):
        world.tick()
    _settle(world, camera)
    assert server.hellos == 2  # asked again once, then kept
    warped, valid = requests[-1][0]
    assert warped.shape == (H, W, 3) and warped.dtype == np.uint8 and valid.shape == (H, W)
    view = Camera.from_fov(W, H, 90.0, mount)
    out = render(scene, view, backend="cpu", outputs=("rgb", "alpha", "median_depth"), lod_px=camera.rig.lod_px)
    expected = reference.warp(["view0"], [view], out.median_depth, out.alpha, 2)  # no such sensor: facing views
    np.testing.assert_array_equal(valid, expected[1][0])
    difference = np.abs(warped.astype(np.int16) - expected[0][0])  # the pose came through carla's float32
    assert difference.mean() < 0.5 and np.percentile(difference, 99) <= 4, (difference.mean(), difference.max())
    assert valid[out.alpha[0] > 0.5].mean() > 0.25  # the log sees a good share of the street in front
    camera.destroy()


def test_an_enhancer_that_takes_no_log_gets_none_and_its_images_are_accumulated_over_ticks(scene):
    """A camera given a drive log sends none to an enhancer whose hello says reference_views 0, and what it
    delivers is the enhanced image blended with the previous one reprojected (TEMPORAL_BLEND), as a run does."""
    from carla_bridge.transforms import camera_pose_from_ue
    from neural_sensor.camera import Camera
    from neural_sensor.enhance.temporal import TEMPORAL_BLEND
    from neural_sensor.reconstruct.reference import LogReference
    from neural_sensor.render import render
    from neural_sensor.world import pose_from_xyz_yaw

    world = StandInWorld()
    library = world.get_blueprint_library()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform())
    mount = camera_pose_from_ue(np.array(MOUNT.get_matrix()))
    log_cams = [Camera.from_fov(24, 16, 90.0, pose_from_xyz_yaw(x, 0.0, 0.0, 0.0) @ mount) for x in (-3.0, 3.0)]
    reference = LogReference.from_views(render(scene, log_cams, backend="cpu", outputs=("rgb",)).rgb, log_cams,
                                        ["CAM_FRONT"] * 2, scene, (0.53, 0.71, 0.92))
    camera = spawn_neural_camera(world, _bp(library, "rgb"), MOUNT, attach_to=ego, scene=scene, backend="cpu",
                                 reference=reference)
    rng = np.random.default_rng(5)
    sent, replies = [], []

    class Server:  # an EnhancerClient's face: it takes no log; "enhances" by adding a little noise
        server = {"reference_views": 0}

        def hello(self, timeout_ms=None):
            return self.server

        def enhance(self, frames, out=None):
            sent.append([f.get("reference") for f in frames])
            rgb = [np.clip(f["rgb"] + rng.normal(0.0, 0.03, f["rgb"].shape), 0, 1).astype(np.float32) for f in frames]
            replies.append(rgb)
            return type("Reply", (), {"rgb": rgb, "reason": "", "latency_ms": 1.0, "model_ms": 0.5})()

        def close(self):
            pass

    camera.rig.enhancer_client = Server()
    images = []
    camera.listen(lambda image: images.append(image_array(image)[..., 2::-1]))
    for _ in range(2):  # the ego stands still: the previous image reprojects onto itself
        world.tick()
    _settle(world, camera)
    assert len(images) == 2 and all(refs == [None] for refs in sent), sent
    first, second = (np.round(r[0] * 255).astype(np.float32) for r in replies)
    np.testing.assert_allclose(images[0], first, atol=1)  # the first tick has no history
    blended = TEMPORAL_BLEND * first + (1 - TEMPORAL_BLEND) * second  # where the history stays within the clamp
    error_blended = np.abs(images[1] - blended).mean()
    error_plain = np.abs(images[1] - second).mean()
    assert error_blended < 0.6 * error_plain, (error_blended, error_plain)
    camera.destroy()


def test_an_unreachable_enhancer_is_said_once_and_each_frame_says_it_went_raw(scene, caplog):
    """A CARLA camera whose enhancer endpoint has no server (a wrong port) delivers the raw render every tick, as
    the run's rig does, and says so: one warning naming the reason (not one a tick), and every frame's meta."""
    import socket

    world = StandInWorld()
    library = world.get_blueprint_library()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform())
    with socket.socket() as probe:  # a free loopback port: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    camera = spawn_neural_camera(world, _bp(library, "rgb"), MOUNT, attach_to=ego, scene=scene, backend="cpu",
                                 enhancer=f"tcp://127.0.0.1:{port}", enhancer_deadline_ms=50)
    got = []
    camera.listen(got.append)
    with caplog.at_level(logging.WARNING, logger="carla_bridge"):
        for _ in range(3):
            world.tick()
            _settle(world, camera)
    said = [r.getMessage() for r in caplog.records if "did not refine" in r.getMessage()]
    assert len(got) == 3 and len(said) == 1, said
    assert f"tcp://127.0.0.1:{port}" in said[0] and not camera.last_meta["enhanced"]
    assert camera.last_meta["enhancer_reason"]
    camera.destroy()


def test_destroy_delivers_the_frames_of_ticks_already_taken(scene, caplog):
    """A loop of world.tick() that never waits for an image, then destroy(): all 0 of 50 images were lost (a server
    has rendered them by the time its tick returns; a neural camera renders after it). destroy() delivers them
    first; a backlog past BACKLOG_WARN_FRAMES is said once."""
    from carla_bridge import camera_rig

    world = StandInWorld()
    library = world.get_blueprint_library()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform())
    camera = spawn_neural_camera(world, _bp(library, "rgb"), MOUNT, attach_to=ego, scene=scene, backend="cpu")
    got = []
    camera.listen(lambda image: got.append(image.frame))
    gate = camera_rig.threading.Event()  # the worker waits for it: every tick queues behind the first
    capture = camera.rig.capture
    camera.rig.capture = lambda *args: (gate.wait(10), capture(*args))[1]
    with caplog.at_level(logging.WARNING, logger="carla_bridge"):
        frames = [world.tick() for _ in range(camera_rig.BACKLOG_WARN_FRAMES + 5)]
        world.wait_for_callbacks()
    assert sum("frames are queued to render" in r.getMessage() for r in caplog.records) == 1
    # the ticks taken while destroy() waits are not waited for (with ticks faster than the renders it had waited
    # out DESTROY_FLUSH_S and dropped everything): its frames are those of the ticks before it
    destroying = camera_rig.threading.Thread(target=camera.destroy)
    destroying.start()
    while not camera._closing:
        pass
    for _ in range(5):
        world.tick()
    world.wait_for_callbacks()
    gate.set()
    destroying.join(30)
    assert not destroying.is_alive() and not camera.is_alive and got == frames


def test_a_bad_transform_or_backend_is_refused_at_the_spawn(scene):
    """Both were accepted and failed at the first tick (an ERROR logged, the image never delivered)."""
    world = StandInWorld()
    library = world.get_blueprint_library()
    with pytest.raises(ValueError, match="neural camera: transform .* is not finite"):
        spawn_neural_camera(world, _bp(library, "rgb"), carla.Transform(carla.Location(x=float("nan"))), scene=scene)
    with pytest.raises(ValueError, match="neural camera: backend must be one of .* got 'bogus'"):
        spawn_neural_camera(world, _bp(library, "rgb"), MOUNT, scene=scene, backend="bogus")
    camera = spawn_neural_camera(world, _bp(library, "rgb"), MOUNT, scene=scene, backend="cpu")
    with pytest.raises(ValueError, match="is not finite"):
        camera.set_transform(carla.Transform(carla.Location(z=float("inf"))))
    assert camera.get_location().x == pytest.approx(1.5) and camera.destroy()


def test_a_moving_mount_keeps_the_agents_assets(scene):
    """A gimbal (set_transform every tick) made a NeuralSensorRig per mount, each making every agent's asset again:
    ~20x the tick. The assets are kept by the camera rig for every rig it makes."""
    world = StandInWorld()
    library = world.get_blueprint_library()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform())
    world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform(carla.Location(x=12.0)))
    camera = spawn_neural_camera(world, _bp(library, "rgb"), MOUNT, attach_to=ego, scene=scene, backend="cpu")
    camera.listen(lambda image: None)
    assets = []
    for yaw in (0.0, 5.0, 10.0):
        camera.set_transform(carla.Transform(MOUNT.location, carla.Rotation(yaw=yaw)))
        world.tick()
        _settle(world, camera)
        assets.append({key: id(value) for key, value in camera.rig._assets.items()})
    assert len(camera.rig._rigs) == 3 and len(assets[0]) == 1 and assets[0] == assets[1] == assets[2]
    camera.destroy()


def test_a_script_ending_during_a_torch_render_exits_cleanly(tmp_path):
    """With backend="torch" a script that ended while the rig's worker thread was inside a render aborted
    ("terminate called without an active exception", exit 134): the rigs now stop at exit after that frame."""
    import subprocess
    import sys

    script = tmp_path / "ends.py"
    script.write_text(
        "import carla\n"
        "from carla_bridge.sensor import spawn_neural_camera\n"
        "from carla_bridge.standin import StandInWorld\n"
        "from neural_sensor.testing import make_street_scene\n"
        "world = StandInWorld()\n"
        "library = world.get_blueprint_library()\n"
        "bp = library.find('sensor.camera.rgb')\n"
        "bp.set_attribute('image_size_x', '160'); bp.set_attribute('image_size_y', '120')\n"
        "ego = world.spawn_actor(library.find('vehicle.tesla.model3'), carla.Transform())\n"
        "camera = spawn_neural_camera(world, bp, carla.Transform(carla.Location(x=1.5, z=1.6)), attach_to=ego,\n"
        "                             scene=make_street_scene(20000, seed=0), backend='torch')\n"
        "camera.listen(lambda image: None)\n"
        "import sys, time\n"
        "for _ in range(int(sys.argv[1])):\n"
        "    world.tick()\n"
        "time.sleep(float(sys.argv[2]))\n"
        "busy = camera.rig._busy\n"
        "if sys.argv[3] == 'destroy':\n"
        "    camera.stop(); camera.destroy()\n"
        "print('in flight' if busy else 'idle', flush=True)\n"
        "raise SystemExit('the script ends while frames are still rendering')\n")
    # before the worker's first render (it imported torch at exit); during one, the camera kept or stopped and
    # destroyed (its rig left the registry the exit hook read, and aborted again)
    for ticks, sleep_s, ending in (("5", "0", "keep"), ("40", "2", "keep"), ("40", "2", "destroy")):
        result = subprocess.run([sys.executable, str(script), ticks, sleep_s, ending], capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 1 and "terminate called" not in result.stderr, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1] == "the script ends while frames are still rendering"
        assert ticks == "5" or result.stdout.strip() == "in flight"  # the case it is about did happen


def test_a_chase_camera_sees_the_vehicle_it_follows(scene):
    """A camera never drew the vehicle it was mounted on (a chase camera at 6 m behind saw no ego, as CARLA's
    does). One clear of the vehicle's box draws it; one on the roof (inside the clearance) still does not."""
    world = StandInWorld()
    library = world.get_blueprint_library()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform())
    chase_mount = carla.Transform(carla.Location(x=-6.0, z=3.0), carla.Rotation(pitch=-15.0))
    chase = spawn_neural_camera(world, _bp(library, "semantic_segmentation"), chase_mount, attach_to=ego,
                                scene=scene, backend="cpu")
    roof = spawn_neural_camera(world, _bp(library, "instance_segmentation"), MOUNT, attach_to=ego, scene=scene,
                               backend="cpu")
    fixed = spawn_neural_camera(world, _bp(library, "semantic_segmentation"), chase_mount, scene=scene,
                                backend="cpu")  # the same pose, fixed in the world: it always drew the car
    images = {}
    for camera in (chase, roof, fixed):
        camera.listen(lambda image, camera=camera: images.setdefault(camera, image_array(image).copy()))
    world.tick()
    _settle(world, chase, roof, fixed)
    car = 14  # CityObjectLabel.Car, in R
    assert (images[chase][..., 2] == car).sum() == (images[fixed][..., 2] == car).sum() > 50
    ids = images[roof][..., 1].astype(np.int32) + 256 * images[roof][..., 0].astype(np.int32)
    assert not (ids == ego.id % 65536).any()  # the roof camera does not see into the car's asset
    for camera in (chase, roof, fixed):
        camera.destroy()


def test_destroy_right_after_ticks_delivers_them_though_their_on_tick_comes_late(scene):
    """A new user's finding: a loop of world.tick() that never waited, then destroy(), delivered every frame in some
    runs and none in others, without a word: libcarla calls on_tick on its stream thread after tick() returns, and
    destroy() had stopped the camera taking ticks before the rig's on_tick for them had run. The stream is slowed
    here so that it always comes late."""
    import time

    world = StandInWorld()
    library = world.get_blueprint_library()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform())
    slow = {"first": True}

    def late(snapshot):  # (registered before the rig's: the stream calls it first)
        if slow["first"]:
            slow["first"] = False
            time.sleep(0.5)

    world.on_tick(late)
    camera = spawn_neural_camera(world, _bp(library, "rgb"), MOUNT, attach_to=ego, scene=scene, backend="cpu")
    delivered = []
    camera.listen(lambda image: delivered.append(image.frame))
    frames = [world.tick() for _ in range(4)]
    assert camera.destroy()
    assert delivered == frames


def test_destroy_from_a_users_on_tick_callback_does_not_wait_for_the_stream_it_blocks(scene):
    """A reviewer's finding: destroy() called from the user's own world.on_tick callback waited (60 s) for the rig's
    on_tick of that frame, which the same stream thread runs only after the user's callback returns."""
    import threading
    import time

    world = StandInWorld()
    library = world.get_blueprint_library()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform())
    took, cameras = {}, []
    done = threading.Event()

    def destroy_on_tick(snapshot):  # registered first: the stream calls it before the rig's on_tick
        if cameras and not done.is_set():
            start = time.monotonic()
            cameras[0].destroy()
            took["s"] = time.monotonic() - start
            done.set()

    world.on_tick(destroy_on_tick)
    cameras.append(spawn_neural_camera(world, _bp(library, "rgb"), MOUNT, attach_to=ego, scene=scene, backend="cpu"))
    cameras[0].listen(lambda image: None)
    world.tick()
    assert done.wait(30) and took["s"] < 10.0, took


def test_the_first_spawn_loads_the_renderers_kernels_before_the_first_tick(scene, monkeypatch):
    """On a fresh install the first image came 5-20 s after world.tick() (numba compiling on the rig's worker):
    CARLA's own queue pattern (`q.get(timeout=2)`) raised queue.Empty. The spawn now loads (or compiles, saying so)
    the kernels, once per process and backend."""
    from carla_bridge import camera_rig

    monkeypatch.setattr(camera_rig, "_WARMED", set())
    prepared = []
    real_prepare = camera_rig.NeuralSensorRig.prepare
    monkeypatch.setattr(camera_rig.NeuralSensorRig, "prepare",
                        lambda self: prepared.append(self.outputs) or real_prepare(self))
    world = StandInWorld()
    library = world.get_blueprint_library()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform())
    cameras = [spawn_neural_camera(world, _bp(library, "rgb"), MOUNT, attach_to=ego, scene=scene, backend="cpu")]
    try:
        assert prepared == [("rgb",), tuple(camera_rig.FRAME_FIELDS)] and len(camera_rig._WARMED) == 1
        cameras.append(spawn_neural_camera(world, _bp(library, "depth"), MOUNT, attach_to=ego, scene=scene,
                                           backend="cpu"))
        assert len(prepared) == 2  # once per process and backend
    finally:
        for camera in cameras:
            camera.destroy()


def test_traffic_that_respawns_is_forgotten(scene):
    """A new user's soak: a camera that stays on its vehicle while traffic respawns (new actor ids) kept an entry and
    a Gaussian asset for every actor it ever saw (~0.4 MB each, 200 -> 648 MB over 1200 respawns)."""
    world = StandInWorld()
    library = world.get_blueprint_library()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform())
    camera = spawn_neural_camera(world, _bp(library, "rgb"), MOUNT, attach_to=ego, scene=scene, backend="cpu")
    camera.listen(lambda image: None)
    for _ in range(120):
        npc = world.spawn_actor(library.find("vehicle.audi.a2"), carla.Transform(carla.Location(x=10.0)))
        world.tick()
        _settle(world, camera)
        npc.destroy()
    assert len(camera.rig._actors) < 100 and len(camera.rig._assets) < 40, (len(camera.rig._actors),
                                                                             len(camera.rig._assets))
    camera.destroy()


def test_a_slow_listener_holds_up_only_its_own_camera(scene):
    """A new user's finding: one camera's listener that took 2 s (saving its image) held up the other cameras of
    its vehicle by 2 s a frame, and their renders: the rig's thread called every listener. As libcarla's sensor
    streams, each camera's listener now runs on a thread of its own, in frame order."""
    import threading

    world = StandInWorld()
    library = world.get_blueprint_library()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform())
    slow = spawn_neural_camera(world, _bp(library, "rgb"), MOUNT, attach_to=ego, scene=scene, backend="cpu")
    quick = spawn_neural_camera(world, _bp(library, "depth"), carla.Transform(MOUNT.location, carla.Rotation(yaw=90)),
                                attach_to=ego, scene=scene, backend="cpu")
    quick_frames, slow_frames = [], []
    all_quick = threading.Event()

    def blocked(image):  # holds its thread until the other camera has every frame (or 60 s)
        all_quick.wait(60.0)
        slow_frames.append(image.frame)

    def record(image):
        quick_frames.append(image.frame)
        if len(quick_frames) == 3:
            all_quick.set()

    slow.listen(blocked)
    quick.listen(record)
    try:
        frames = [world.tick() for _ in range(3)]
        assert all_quick.wait(60.0) and quick_frames == frames  # while the slow listener still held its first image
        assert quick.rig.wait_idle(60.0) and slow_frames == frames  # and then its own, in order
    finally:
        slow.destroy()
        quick.destroy()


def test_listeners_destroying_each_others_cameras_do_not_wait_for_each_other(scene, monkeypatch, caplog):
    """A reviewer's finding: with a thread per listener, two listeners each destroying the other's camera (the
    "on error, destroy every sensor" pattern) waited for each other's call in progress, DESTROY_FLUSH_S each, then
    said frames were dropped. A listener's destroy() waits for nothing, as when every listener ran on the worker."""
    import threading

    import carla_bridge.sensor as sensor

    monkeypatch.setattr(sensor, "DESTROY_FLUSH_S", 10.0)
    world = StandInWorld()
    library = world.get_blueprint_library()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform())
    a = spawn_neural_camera(world, _bp(library, "rgb"), MOUNT, attach_to=ego, scene=scene, backend="cpu")
    b = spawn_neural_camera(world, _bp(library, "depth"), MOUNT, attach_to=ego, scene=scene, backend="cpu")
    both_in_listeners = threading.Barrier(2, timeout=30)
    finished = []

    def destroying(me, other):
        def listener(image):
            both_in_listeners.wait()
            other.destroy()
            me.destroy()
            finished.append(me.type_id)
        return listener

    a.listen(destroying(a, b))
    b.listen(destroying(b, a))
    with caplog.at_level(logging.WARNING, logger="carla_bridge"):
        world.tick()
        for _ in range(600):
            if len(finished) == 2:
                break
            threading.Event().wait(0.05)
    assert sorted(finished) == ["sensor.camera.depth", "sensor.camera.rgb"] and not (a.is_alive or b.is_alive)
    assert not [r for r in caplog.records if "dropped" in r.getMessage()]


EXIT_MID_LISTENER = """
import sys, time
sys.path.insert(0, sys.argv[1])
import carla
from _carla import MOUNT, camera_blueprint
from carla_bridge.sensor import spawn_neural_camera
from carla_bridge.standin import StandInWorld
from neural_sensor.testing import make_street_scene

world = StandInWorld()
library = world.get_blueprint_library()
ego = world.spawn_actor(library.find("vehicle.tesla.model3"), carla.Transform())
camera = spawn_neural_camera(world, camera_blueprint(library, "rgb"), MOUNT, attach_to=ego,
                             scene=make_street_scene(5000, seed=0), backend="cpu")
out = open(sys.argv[2], "w")

def listener(image):
    out.write(f"start {image.frame}\\n"); out.flush()
    time.sleep(1.0)
    out.write(f"end {image.frame}\\n"); out.flush()

camera.listen(listener)
world.tick()
time.sleep(0.5)  # the listener is in its call when the script ends
"""


def test_a_script_that_ends_while_a_listener_runs_lets_it_finish(tmp_path):
    """A reviewer's finding: with a thread per listener, a script ending without destroy() cut its listener off
    mid-call (a half-written file): at exit each listener's call in progress ends first, as the frame in flight's
    did when the rig's worker called them."""
    import subprocess
    import sys

    out = tmp_path / "calls.txt"
    result = subprocess.run([sys.executable, "-c", EXIT_MID_LISTENER, str(Path(__file__).parent), str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = out.read_text().split()
    assert lines[0] == "start" and lines[-2] == "end" and lines[1] == lines[-1], lines
