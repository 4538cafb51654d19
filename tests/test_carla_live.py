"""Live-server checks of the neural camera against CARLA itself: every camera blueprint and attribute, the
converters on CARLA's own images, sensor_tick against CARLA's own cameras, threading, batches.

Skipped unless CARLA_HOST=host[:port] names a running CARLA 0.9.16 server. Each test puts the world in
synchronous mode at 20 Hz and restores the settings and destroys its actors on the way out.
"""

from __future__ import annotations

import logging
import os
import queue
import threading

import numpy as np
import pytest

carla = pytest.importorskip("carla", reason="the carla client package is not installed (pip install .[test])")
pytestmark = pytest.mark.skipif(not os.environ.get("CARLA_HOST"), reason="needs a CARLA server (set CARLA_HOST)")

from _carla import camera_blueprint, image_array  # noqa: E402
from carla_bridge import attributes as attrs  # noqa: E402
from carla_bridge.client import NeuralClient  # noqa: E402
from carla_bridge.encodings import CAMERA_TYPES, convert_bgra, depth_from_bgra  # noqa: E402
from carla_bridge.sensor import NeuralCamera, spawn_neural_camera  # noqa: E402
from neural_sensor.testing import make_street_scene  # noqa: E402

W, H = 96, 54
MOUNT = carla.Transform(carla.Location(x=1.5, z=1.6))
_KINDS = {carla.ActorAttributeType.Bool: "bool", carla.ActorAttributeType.Int: "int",
          carla.ActorAttributeType.Float: "float", carla.ActorAttributeType.String: "string"}


@pytest.fixture(scope="module")
def scene():
    return make_street_scene(20_000, seed=0)


@pytest.fixture()
def live():
    """(client, world, vehicle, actors list to destroy) in synchronous mode at 20 Hz."""
    from carla_bridge.carla_world import connect

    client = connect(os.environ["CARLA_HOST"])
    world = client.get_world()
    original = world.get_settings()
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    actors = []
    library = world.get_blueprint_library()
    vehicle = world.spawn_actor(library.find("vehicle.tesla.model3"), world.get_map().get_spawn_points()[0])
    actors.append(vehicle)
    world.tick()
    try:
        yield client, world, vehicle, actors
    finally:
        for actor in reversed(actors):
            if actor.is_alive:
                actor.destroy()
        world.apply_settings(original)


def _bp(world, type_id, **values):
    return camera_blueprint(world.get_blueprint_library(), type_id.removeprefix("sensor.camera."), (W, H), **values)


def _array(image) -> np.ndarray:
    return image_array(image).copy()


def test_our_definitions_match_the_servers_blueprints(live):
    _, world, _, _ = live
    library = world.get_blueprint_library()
    for type_id in CAMERA_TYPES:
        bp = library.find(type_id)
        ours = attrs.CAMERA_DEFINITIONS[type_id]
        theirs = {a.id: a for a in bp}
        missing = sorted(set(theirs) - set(ours) - {"role_name"})
        assert not missing, f"{type_id}: server attributes we do not know: {missing}"
        for key, attribute in theirs.items():
            if key in ours:
                assert _KINDS[attribute.type] == ours[key].type, (type_id, key)
                attrs.parse_value(type_id, key, attribute.as_str())  # every server default parses
    assert not {a.id for a in library.find("sensor.camera.depth")} & set(attrs._POSTPROCESS)


def test_every_blueprint_delivers_every_frame_in_carlas_encoding(live, scene):
    _, world, vehicle, actors = live
    cameras, queues = {}, {}
    for type_id in CAMERA_TYPES:
        camera = spawn_neural_camera(world, _bp(world, type_id), MOUNT, attach_to=vehicle, scene=scene, backend="auto")
        actors.append(camera)
        cameras[type_id], queues[type_id] = camera, queue.Queue()
        camera.listen(queues[type_id].put)
    assert len({id(c.rig) for c in cameras.values()}) == 1
    ticked = [world.tick() for _ in range(10)]
    for type_id, q in queues.items():
        images = [q.get(timeout=60) for _ in ticked]
        assert [i.frame for i in images] == ticked and q.empty()
        assert all(isinstance(i, carla.Image) and (i.width, i.height) == (W, H) for i in images)
    world.tick()
    samples = {t: _array(q.get(timeout=60)) for t, q in queues.items()}
    metres = depth_from_bgra(samples["sensor.camera.depth"])
    assert (metres > 0).all() and (metres <= 1000.0 + 1e-6).all()
    labels = samples["sensor.camera.semantic_segmentation"][..., 2]
    assert labels.max() <= 28 and (samples["sensor.camera.semantic_segmentation"][..., :2] == 0).all()
    np.testing.assert_array_equal(samples["sensor.camera.instance_segmentation"][..., 2], labels)


def test_converters_match_carlas_on_carlas_own_images(live):
    """Our convert on the raw bytes of CARLA's own depth and semantic images equals carla.Image.convert."""
    _, world, vehicle, actors = live
    received = {}
    for type_id in ("sensor.camera.depth", "sensor.camera.semantic_segmentation"):
        camera = world.spawn_actor(_bp(world, type_id), MOUNT, attach_to=vehicle)
        actors.append(camera)
        received[type_id] = queue.Queue()
        camera.listen(received[type_id].put)
    for _ in range(3):
        world.tick()
    for name in ("Depth", "LogarithmicDepth"):  # one depth image per converter (convert works in place)
        image = received["sensor.camera.depth"].get(timeout=30)
        raw = _array(image)
        assert raw[..., 3].min() == 255  # CARLA's raw alpha, which ours copies
        image.convert(getattr(carla.ColorConverter, name))
        np.testing.assert_array_equal(convert_bgra(raw, name), _array(image))
    semantic_image = received["sensor.camera.semantic_segmentation"].get(timeout=30)
    raw_semantic = _array(semantic_image)
    semantic_image.convert(carla.ColorConverter.CityScapesPalette)
    np.testing.assert_array_equal(convert_bgra(raw_semantic, "CityScapesPalette"), _array(semantic_image))


def test_save_to_disk_matches_carla(live, scene, tmp_path):
    _, world, vehicle, actors = live
    real = world.spawn_actor(_bp(world, "sensor.camera.rgb"), MOUNT, attach_to=vehicle)
    neural = spawn_neural_camera(world, _bp(world, "sensor.camera.rgb"), MOUNT, attach_to=vehicle, scene=scene)
    actors += [real, neural]
    got = {"real": queue.Queue(), "neural": queue.Queue()}
    real.listen(got["real"].put)
    neural.listen(got["neural"].put)
    world.tick()
    for name, q in got.items():
        image = q.get(timeout=60)
        path = image.save_to_disk(str(tmp_path / name / "sub" / "frame"))
        assert path == str(tmp_path / name / "sub" / "frame.png") and os.path.exists(path)
        with pytest.raises(TypeError):
            image.raw_data[0] = 0  # read-only in both


def test_sensor_tick_matches_carlas_own_camera(live, scene):
    _, world, vehicle, actors = live
    frames = {"real": [], "neural": []}
    real = world.spawn_actor(_bp(world, "sensor.camera.rgb", sensor_tick=0.5), MOUNT, attach_to=vehicle)
    neural = spawn_neural_camera(world, _bp(world, "sensor.camera.rgb", sensor_tick=0.5), MOUNT, attach_to=vehicle,
                                 scene=scene)
    actors += [real, neural]
    real.listen(lambda image: frames["real"].append(image.frame))
    neural.listen(lambda image: frames["neural"].append(image.frame))
    ticked = [world.tick() for _ in range(41)]
    neural.rig.wait_idle(60)
    assert len(frames["neural"]) in (4, 5) and np.all(np.diff(frames["neural"]) == 10)
    assert frames["neural"] == sorted(frames["real"]), (frames, ticked[0])


def test_every_attribute_is_accepted_modelled_or_warned(live, scene, caplog):
    _, world, vehicle, actors = live
    bp = world.get_blueprint_library().find("sensor.camera.rgb")
    non_default = {"bool": "false", "int": "7", "float": "0.37", "string": None}
    for attribute in bp:
        value = non_default[_KINDS[attribute.type]]
        if attribute.id in ("image_size_x", "image_size_y", "role_name", "exposure_mode") or value is None:
            continue
        attrs._warned.clear()
        with caplog.at_level(logging.WARNING, logger="carla_bridge"):
            camera = spawn_neural_camera(world, _bp(world, "sensor.camera.rgb", **{attribute.id: value}), MOUNT,
                                         attach_to=vehicle, scene=scene)
        actors.append(camera)
        warned = any(f" {attribute.id}=" in r.getMessage() for r in caplog.records)
        assert warned == (attribute.id not in attrs.MODELLED), attribute.id
        images = queue.Queue()
        camera.listen(images.put)
        frame = world.tick()
        assert images.get(timeout=60).frame == frame
        camera.destroy()
        caplog.clear()
    garbage = _bp(world, "sensor.camera.rgb")
    garbage.set_attribute("gamma", "bright")  # LibCarla reads it as 0 (atof) and accepts it
    with pytest.raises(ValueError, match="gamma"):
        spawn_neural_camera(world, garbage, MOUNT, attach_to=vehicle, scene=scene)
    with pytest.raises((ValueError, RuntimeError)):
        bp.set_attribute("enable_postprocess_effects", "maybe")


def test_on_tick_runs_after_tick_on_another_thread_as_the_stand_in_does(live):
    _, world, _, _ = live
    seen = []
    callback_id = world.on_tick(lambda snapshot: seen.append((snapshot.frame, threading.current_thread().name)))
    try:
        frames = [world.tick() for _ in range(3)]
        for _ in range(100):  # the callbacks may still be running when tick() returns
            if len(seen) >= 3:
                break
            threading.Event().wait(0.05)
        assert [f for f, _ in seen[-3:]] == frames
        assert all(name != threading.main_thread().name for _, name in seen)
    finally:
        world.remove_on_tick(callback_id)


def test_world_fixed_camera_try_spawn_and_batch_destroy(live, scene):
    client, world, vehicle, actors = live
    neural = NeuralClient(client, scene=scene)
    proxy = neural.get_world()
    fixed = proxy.try_spawn_actor(_bp(world, "sensor.camera.instance_segmentation"),
                                  world.get_map().get_spawn_points()[1])
    attached = proxy.spawn_actor(_bp(world, "sensor.camera.depth"), MOUNT, attach_to=vehicle)
    assert isinstance(fixed, NeuralCamera) and fixed.parent is None and attached.parent.id == vehicle.id
    images = queue.Queue()
    fixed.listen(images.put)
    frame = world.tick()
    assert images.get(timeout=60).frame == frame
    other = world.spawn_actor(world.get_blueprint_library().find("vehicle.audi.a2"),
                              world.get_map().get_spawn_points()[2])
    responses = neural.apply_batch_sync([carla.command.DestroyActor(fixed.id), carla.command.DestroyActor(other),
                                         carla.command.DestroyActor(attached.id)], True)
    assert not any(r.has_error() for r in responses)
    # (libcarla's client keeps the actors it has seen in a cache, so get_actor still answers a destroyed one: the
    # world's actors after the batch's tick are what tells)
    assert not fixed.is_alive and not attached.is_alive and other.id not in {a.id for a in world.get_actors()}
