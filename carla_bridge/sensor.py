"""A neural camera with the face of a CARLA sensor, delivering images that ARE carla.Image objects.

Swap a CARLA camera for a neural one by changing the spawn line:

    camera = world.spawn_actor(bp, transform, attach_to=vehicle)                       # before
    camera = spawn_neural_camera(world, bp, transform, attach_to=vehicle, scene=scene) # after

The camera subscribes to `world.on_tick`; on every simulator tick it renders the
parent's view of the Gaussian scene, with every vehicle and walker of that tick
composited as an asset, and calls the listener with a NeuralImage carrying that
tick's frame id, so the synchronous-mode pattern of CARLA's examples (wait on a
queue until image.frame == world.tick()) works unchanged.
"""

from __future__ import annotations

import itertools
import math
import threading
import time

import numpy as np

from carla_bridge.transforms import agent_box, camera_pose_from_ue, pose_from_transform, rgb_to_bgra, ue_to_flu
from neural_sensor.gaussians import GaussianScene
from neural_sensor.rig import NeuralSensorRig, SensorSpec
from neural_sensor.world import AgentState, WorldSnapshot

try:  # the carla package is needed for NeuralImage; the rest of carla_bridge works without it
    import carla

    _ImageBase = carla.Image
except ImportError:  # pragma: no cover - exercised only without the carla package
    carla = None
    _ImageBase = object

_ids = itertools.count(start=1)


class NeuralImage(_ImageBase):
    """A carla.Image (isinstance holds) whose pixels come from the neural renderer.

    The C++ base cannot be constructed from Python, so instances are made with
    `NeuralImage.create(...)` and every accessor is overridden here.
    """

    @classmethod
    def create(cls, frame: int, timestamp_s: float, transform, fov_deg: float, bgra: np.ndarray) -> "NeuralImage":
        """frame id, simulation seconds, the sensor's world carla.Transform, fov, [H, W, 4] uint8 BGRA."""
        assert bgra.ndim == 3 and bgra.shape[2] == 4 and bgra.dtype == np.uint8, (bgra.shape, bgra.dtype)
        image = cls.__new__(cls)
        image._frame, image._timestamp, image._transform = int(frame), float(timestamp_s), transform
        image._fov, image._bgra = float(fov_deg), np.ascontiguousarray(bgra)
        return image

    raw_data = property(lambda self: memoryview(self._bgra).cast("B"), doc="BGRA bytes, row-major, top row first")
    width = property(lambda self: int(self._bgra.shape[1]))
    height = property(lambda self: int(self._bgra.shape[0]))
    fov = property(lambda self: self._fov)
    frame = property(lambda self: self._frame)
    frame_number = property(lambda self: self._frame)
    timestamp = property(lambda self: self._timestamp)
    transform = property(lambda self: self._transform)

    def __len__(self) -> int:
        return self.width * self.height

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"pixel index {index} out of range for {len(self)} pixels")
        b, g, r, a = (int(v) for v in self._bgra.reshape(-1, 4)[index])
        return carla.Color(r, g, b, a)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __setitem__(self, index: int, color) -> None:
        if not -len(self) <= index < len(self):
            raise IndexError(f"pixel index {index} out of range for {len(self)} pixels")
        self._bgra.reshape(-1, 4)[index] = (color.b, color.g, color.r, color.a)

    def __str__(self) -> str:
        return repr(self)

    def convert(self, color_converter) -> None:
        if color_converter != carla.ColorConverter.Raw:
            raise ValueError(f"NeuralImage holds an RGB camera image; only ColorConverter.Raw applies, "
                             f"got {color_converter}")

    def save_to_disk(self, path: str, color_converter=None) -> None:
        """Write the image (format from the extension); a '%' in path is filled with the frame id, as CARLA does."""
        from PIL import Image

        if color_converter is not None:
            self.convert(color_converter)
        if "%" in path:
            path = path % self._frame
        Image.fromarray(self._bgra[..., [2, 1, 0]]).save(path)

    def __repr__(self) -> str:
        return f"NeuralImage(frame={self._frame}, timestamp={self._timestamp:.3f}, size={self.width}x{self.height})"


def _kind_of(actor) -> str:
    type_id = actor.type_id
    if type_id.startswith("walker."):
        return "pedestrian"
    wheels = actor.attributes.get("number_of_wheels", "4") if hasattr(actor, "attributes") else "4"
    if str(wheels) == "2":
        return "cyclist"
    return "truck" if 2.0 * actor.bounding_box.extent.x > 6.5 else "car"


class NeuralCamera:
    """A camera sensor rendered from a Gaussian scene; listen / stop / is_listening / destroy like carla.Sensor."""

    type_id = "sensor.camera.rgb"

    def __init__(self, world, attributes: dict, transform, parent, scene: GaussianScene, backend: str = "auto",
                 background_rgb=(0.53, 0.71, 0.92), enhancer: str | None = None, enhancer_deadline_ms: float = 1000.0):
        self.id = -next(_ids)  # negative: never clashes with a server actor id
        self.parent = parent
        self.attributes = {"image_size_x": "800", "image_size_y": "600", "fov": "90", "sensor_tick": "0.0",
                           "role_name": "front"}
        self.attributes.update({k: str(v) for k, v in attributes.items()})
        width, height = int(self.attributes["image_size_x"]), int(self.attributes["image_size_y"])
        fov = float(self.attributes["fov"])
        self._mount_flu = ue_to_flu(np.array(transform.get_matrix(), dtype=np.float64))  # fixed: computed once
        spec = SensorSpec(self.attributes["role_name"] or "camera", width, height, fov,
                          camera_pose_from_ue(np.array(transform.get_matrix(), dtype=np.float64)))
        self._enhancer = None
        if enhancer is not None:  # one client per camera: each renders in its own on_tick callback
            from neural_sensor.enhance.client import EnhancerClient

            self._enhancer = EnhancerClient(enhancer, deadline_ms=enhancer_deadline_ms)
        self._rig = NeuralSensorRig(scene, [spec], backend=backend, background_rgb=background_rgb,
                                    enhancer=self._enhancer)
        self._spec = spec
        self._world = world
        self._callback = None
        self._lock = threading.Lock()
        self._actors: dict[int, tuple[str, object]] = {}  # id -> (kind, bounding box)
        self.last_render_ms = 0.0
        self.last_meta: dict = {}
        self._tick_id = world.on_tick(self._on_tick)

    # ---------------------------------------------------------- sensor face
    def listen(self, callback) -> None:
        if not callable(callback):
            raise ValueError(f"listen: callback must be callable, got {type(callback).__name__}")
        with self._lock:
            self._callback = callback

    def stop(self) -> None:
        with self._lock:
            self._callback = None

    def is_listening(self) -> bool:
        return self._callback is not None

    def destroy(self) -> bool:
        self.stop()
        if self._tick_id is not None:
            self._world.remove_on_tick(self._tick_id)
            self._tick_id = None
        if self._enhancer is not None:
            self._enhancer.close()
            self._enhancer = None
        return True

    def get_transform(self):
        from carla_bridge.transforms import transform_from_pose

        return transform_from_pose(pose_from_transform(self.parent.get_transform()) @ self._mount_flu)

    # ------------------------------------------------------------- per tick
    def _refresh_actors(self, ids) -> None:
        missing = [i for i in ids if i not in self._actors]
        if not missing:
            return
        for actor in self._world.get_actors(missing):
            if actor.type_id.startswith(("vehicle.", "walker.")):
                self._actors[actor.id] = (_kind_of(actor), actor.bounding_box)
            else:
                self._actors[actor.id] = ("", None)

    def snapshot_from_carla(self, world_snapshot) -> WorldSnapshot:
        """Our WorldSnapshot from a carla.WorldSnapshot: the parent is the ego, vehicles and walkers the agents."""
        parent_snap = world_snapshot.find(self.parent.id)
        if parent_snap is None:
            raise ValueError(f"NeuralCamera: parent actor {self.parent.id} is not in frame {world_snapshot.frame}")
        ids = [s.id for s in world_snapshot]
        self._refresh_actors(ids)
        ego_pose = pose_from_transform(parent_snap.get_transform())
        ego = AgentState(0, "car", (4.5, 1.9, 1.5), ego_pose, 0.0)
        agents = []
        for actor_snap in world_snapshot:
            kind, bbox = self._actors.get(actor_snap.id, ("", None))
            if not kind or actor_snap.id == self.parent.id:
                continue
            size, pose = agent_box(bbox, actor_snap.get_transform())
            velocity = actor_snap.get_velocity()
            speed = math.sqrt(velocity.x**2 + velocity.y**2 + velocity.z**2)
            agents.append(AgentState(actor_snap.id, kind, size, pose, speed))
        timestamp = world_snapshot.timestamp.elapsed_seconds
        return WorldSnapshot(int(world_snapshot.frame), float(timestamp), ego, tuple(agents))

    def image_for(self, snapshot: WorldSnapshot) -> "NeuralImage":
        """Render this camera for a snapshot and wrap it as a NeuralImage; the rig's ms go to last_render_ms."""
        from carla_bridge.transforms import transform_from_pose

        start = time.perf_counter()
        frame = self._rig.capture(snapshot)[self._spec.sensor_id]
        self.last_render_ms = (time.perf_counter() - start) * 1000.0  # the rig: compose + render (+ enhance)
        self.last_meta = frame.meta  # enhanced or not, and why
        pose_world = snapshot.ego.pose_agent_to_world @ self._mount_flu
        return NeuralImage.create(snapshot.frame, snapshot.timestamp_s, transform_from_pose(pose_world),
                                  self._spec.fov_deg, rgb_to_bgra(frame.rgb))

    def _on_tick(self, world_snapshot) -> None:
        with self._lock:
            callback = self._callback
        if callback is None:
            return
        callback(self.image_for(self.snapshot_from_carla(world_snapshot)))


def spawn_neural_camera(world, blueprint, transform, attach_to, scene: GaussianScene, backend: str = "auto",
                        background_rgb=(0.53, 0.71, 0.92), enhancer: str | None = None,
                        enhancer_deadline_ms: float = 1000.0) -> NeuralCamera:
    """world.spawn_actor's stand-in for a camera: reads image_size_x / image_size_y / fov from the blueprint.
    `enhancer`: the endpoint (tcp://HOST:PORT) of an enhancer server refining each image within the deadline."""
    if attach_to is None:
        raise ValueError("spawn_neural_camera: a neural camera must be attached to a parent actor")
    attributes = {}
    for key in ("image_size_x", "image_size_y", "fov", "sensor_tick", "role_name"):
        if blueprint.has_attribute(key):
            attributes[key] = blueprint.get_attribute(key).as_str()
    return NeuralCamera(world, attributes, transform, attach_to, scene, backend, background_rgb, enhancer,
                        enhancer_deadline_ms)
