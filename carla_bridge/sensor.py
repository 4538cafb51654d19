"""Neural cameras with the face of CARLA camera actors, delivering images that ARE carla.Image objects.

Swap a CARLA camera for a neural one by changing the spawn line:

    camera = world.spawn_actor(bp, transform, attach_to=vehicle)                       # before
    camera = spawn_neural_camera(world, bp, transform, attach_to=vehicle, scene=scene) # after

Blueprints: sensor.camera.rgb, .depth, .semantic_segmentation and .instance_segmentation, in
CARLA 0.9.16's encodings (carla_bridge/encodings.py); any other blueprint is refused by name.
Attributes are parsed as CARLA parses them and the post-processing ones with an image-space
meaning are applied (carla_bridge/attributes.py).

How a tick flows (libcarla's threading, which the stand-in server reproduces): the server's
world snapshot reaches `world.on_tick` callbacks on a client thread after `world.tick()` has
returned. Every camera on one parent (or every world-fixed camera) belongs to one `CameraRig`
with ONE on_tick callback: it converts the snapshot once (the parent is the ego, every vehicle
and walker an agent), picks the cameras due this tick (sensor_tick: the first tick at or after
each period) and queues the frame for the rig's worker thread. The worker renders every due
camera of the frame in one batched call (one per image size: the renderer batches cameras of one
size; cameras with the same view share one rendered view, so an rgb, a depth and a semantic
camera on one mount cost one view), encodes each as its blueprint says, and calls each listener,
lowest frame first (frames queued while a render runs are taken in frame order). A listener's exception is printed and
swallowed, as libcarla does with sensor callbacks. A render error is logged at once (logger
"carla_bridge") and raised as NeuralCameraError, naming the camera and the frame, by the next
call on any camera of the rig (listen, stop, is_listening, get_transform, destroy, ...) or by
`camera.raise_if_failed()`.

Actor face: positive ids from NEURAL_ID_BASE (3 * 2^30) up, which a server counting up from 1
never reaches; id, type_id, attributes (strings), is_alive, parent, get_world, get_transform,
get_location, set_transform, destroy. Importing this module makes carla.command.DestroyActor
accept a camera too (carla_bridge/commands.py: a subclass, every former use unchanged); a batch
sent through a NeuralClient (carla_bridge/client.py) destroys the cameras client-side, a batch
sent to the server directly gets "not found" for them, as for any unknown id.

Drive-log reference: an enhancer trained with the drive log's images as its reference (its hello's
`reference_views` > 0, as the shipped one) gains most of its decibels from it; give the camera the
reconstruction's log (`reference=`, `neural_sensor.reconstruct.drive.scene_reference(meta)`) and each
camera's request carries the log views facing its way, warped in through the render's median depth (as
`neural-sensor run` sends them). The rig asks the server's hello once (again after a failed one, at most
every RETRY_HELLO_S seconds); an enhancer without `reference_views` gets no reference. The enhanced
images are accumulated over ticks as a run does (`neural_sensor.enhance.temporal`, TEMPORAL_BLEND).

Attachment: Rigid is exact; SpringArm and SpringArmGhost are applied as rigid (no spring lag,
no collision test), with a warning once. A camera without a parent is fixed in the world.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
import traceback
import weakref
from pathlib import Path

import numpy as np

from carla_bridge.attributes import apply_postprocess, camera_settings, check_camera_type
from carla_bridge.encodings import convert_bgra, depth_to_bgra_fast, instance_to_bgra, semantic_to_bgra
from carla_bridge.transforms import (
    camera_pose_from_ue,
    flu_poses_from_ue,
    flu_to_ue,
    pose_from_transform,
    rgb_to_bgra,
    transform_from_pose,
    ue_to_flu,
)
from neural_sensor.enhance.temporal import TEMPORAL_BLEND
from neural_sensor.gaussians import GaussianScene
from neural_sensor.render import LOD_PX
from neural_sensor.render._common import check_lod_px
from neural_sensor.rig import NeuralSensorRig, SensorSpec, frame_fields
from neural_sensor.world import AgentState, WorldSnapshot

try:  # the carla package is needed for NeuralImage; the rest of carla_bridge works without it
    import carla

    _ImageBase = carla.Image
except ImportError:  # pragma: no cover - exercised only without the carla package
    carla = None
    _ImageBase = object
else:  # DestroyActor(camera) in a clean-up batch, as CARLA's tutorial.py writes it (carla_bridge/commands.py)
    from carla_bridge import commands as _commands

    _commands.install()

_log = logging.getLogger("carla_bridge")
RETRY_HELLO_S = 5.0  # after a failed hello, the enhancer is asked for its reference_views again after this long
HELLO_TIMEOUT_MS = 500.0
NEURAL_ID_BASE = 3 << 30  # actor ids are uint32 and a server hands them out from 1 upwards
_ids = itertools.count(start=NEURAL_ID_BASE + 1)
_cameras: "weakref.WeakValueDictionary[int, NeuralCamera]" = weakref.WeakValueDictionary()
_rigs: dict[tuple, "CameraRig"] = {}
_rigs_lock = threading.Lock()
_warned_attachments: set[str] = set()
# the SensorFrame fields each camera type's raw_data is made from (NeuralCamera._encode)
_FRAME_FIELDS_OF_TYPE = {"sensor.camera.rgb": ("rgb",), "sensor.camera.depth": ("rgb", "depth", "semantic"),
                         "sensor.camera.semantic_segmentation": ("rgb", "semantic"),
                         "sensor.camera.instance_segmentation": ("rgb", "semantic", "instance")}
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# the post-processing model is relative to the blueprint's defaults for these (carla_bridge/attributes.py)
_REFERENCE_KEYS = ("exposure_compensation", "gamma", "lens_k", "lens_kcube", "lens_x_size", "lens_y_size")


class NeuralCameraError(RuntimeError):
    """A neural camera could not render a frame (raised by the next call on a camera of its rig)."""


def neural_camera(actor_id: int) -> "NeuralCamera | None":
    """The live NeuralCamera with this actor id, or None (the id belongs to the server, or the camera is gone)."""
    return _cameras.get(int(actor_id))


def is_neural_id(actor_id: int) -> bool:
    return int(actor_id) > NEURAL_ID_BASE


# --------------------------------------------------------------------------- images
class NeuralImage(_ImageBase):
    """A carla.Image (isinstance holds) whose pixels come from the neural renderer.

    The C++ base cannot be constructed from Python, so instances are made with
    `NeuralImage.create(...)` and every accessor is overridden here. raw_data is read-only, as
    CARLA's; convert() changes the pixels in place, as CARLA's does.
    """

    @classmethod
    def create(cls, frame: int, timestamp_s: float, transform, fov_deg: float, bgra: np.ndarray) -> "NeuralImage":
        """frame id, simulation seconds, the sensor's world carla.Transform, fov, [H, W, 4] uint8 BGRA."""
        assert bgra.ndim == 3 and bgra.shape[2] == 4 and bgra.dtype == np.uint8, (bgra.shape, bgra.dtype)
        image = cls.__new__(cls)
        image._frame, image._timestamp, image._transform = int(frame), float(timestamp_s), transform
        image._fov, image._bgra = float(fov_deg), np.ascontiguousarray(bgra)
        return image

    raw_data = property(lambda self: memoryview(self._bgra).toreadonly().cast("B"),
                        doc="BGRA bytes, row-major, top row first (read-only)")
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

    @staticmethod
    def _converter_name(color_converter) -> str:
        if carla is None or not isinstance(color_converter, carla.ColorConverter):
            raise TypeError(f"color_converter must be a carla.ColorConverter, got {color_converter!r}")
        return str(color_converter.name)

    def convert(self, color_converter) -> None:
        """In place, as carla.Image.convert: Raw, Depth, LogarithmicDepth or CityScapesPalette."""
        name = self._converter_name(color_converter)
        if name != "Raw":
            self._bgra = convert_bgra(self._bgra, name)

    def save_to_disk(self, path: str, color_converter=None) -> str:
        """Write the image and return the path written, as CARLA does: missing folders are created, an extension
        other than png / jpg / jpeg / tif / tiff is replaced by .png, Raw and CityScapesPalette are written as
        4-channel (RGBA) pictures, Depth and LogarithmicDepth as one-channel gray. The image itself is unchanged.
        A '%' in path is filled with the frame id (path % frame)."""
        from PIL import Image

        name = "Raw" if color_converter is None else self._converter_name(color_converter)
        path = str(path)
        if "%" in path:
            path = path % self._frame
        target = Path(path)
        if target.suffix.lower() not in _IMAGE_EXTENSIONS:
            target = target.with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        bgra = self._bgra if name == "Raw" else convert_bgra(self._bgra, name)
        if name in ("Depth", "LogarithmicDepth"):
            picture = Image.fromarray(np.ascontiguousarray(bgra[..., 0]), "L")
        elif target.suffix.lower() in (".jpg", ".jpeg"):
            picture = Image.fromarray(np.ascontiguousarray(bgra[..., 2::-1]), "RGB")
        else:
            picture = Image.fromarray(np.ascontiguousarray(bgra[..., [2, 1, 0, 3]]), "RGBA")
        picture.save(target)
        return str(target)

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


_EGO_SIZE_M = (4.5, 1.9, 1.5)


def _agent_state(agent_id: int, kind: str, size_m: tuple, pose: np.ndarray, speed_mps: float) -> AgentState:
    """An AgentState without its per-instance check: the conversion builds every pose from CARLA's angles (a
    rotation by construction), checks all of them for finiteness at once, and bounding-box sizes come from the
    server (positive). AgentState's own check costs ~7 us per agent, a third of the 2 ms tick budget at 100 actors."""
    state = object.__new__(AgentState)
    for name, value in (("agent_id", agent_id), ("kind", kind), ("size_m", size_m), ("pose_agent_to_world", pose),
                        ("speed_mps", speed_mps)):
        object.__setattr__(state, name, value)
    return state


# --------------------------------------------------------------------------- the rig: one render per tick
class CameraRig:
    """Every neural camera on one parent (or every world-fixed one) of one world, scene and renderer setup:
    one on_tick callback, one snapshot conversion and one batched render per tick, a worker thread that
    delivers in frame order. Made by NeuralCamera; see the module docstring."""

    def __init__(self, key: tuple, world, parent, scene: GaussianScene, backend: str, background_rgb,
                 enhancer: str | None, enhancer_deadline_ms: float, lod_px: float = LOD_PX, reference=None):
        self.key = key
        self.reference = reference  # the drive log (LogReference) sent to an enhancer trained to take it
        self._reference_views: int | None = None  # from the enhancer's hello; None: not asked yet (or it failed)
        self._hello_failed_at = -math.inf
        self.world = world
        self.parent = parent
        self.scene = scene
        self.backend = backend
        self.lod_px = float(lod_px)
        self.background_rgb = tuple(background_rgb)
        self.enhancer_client = None
        if enhancer is not None:  # one client per rig: every camera of a tick goes in one request
            from neural_sensor.enhance.client import EnhancerClient

            self.enhancer_client = EnhancerClient(enhancer, deadline_ms=enhancer_deadline_ms)
        self.cameras: list[NeuralCamera] = []
        self._actors: dict[int, tuple] = {}  # id -> (kind, size_m, box-bottom offset FLU); kind "" = not drawn
        self._rigs: dict[tuple, NeuralSensorRig] = {}
        self._jobs: list = []  # heap of (frame, sequence, snapshot, cameras)
        self._sequence = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False
        self.error: NeuralCameraError | None = None
        self.renders = 0  # batched render calls made (one per tick with a due, listening camera)
        self._worker = threading.Thread(target=self._run, name=f"neural-camera-rig-{id(self):x}", daemon=True)
        self._worker.start()
        self._tick_id = world.on_tick(self._on_tick)

    # ---------------------------------------------------------------- membership
    def add(self, camera: "NeuralCamera") -> None:
        with self._cond:
            self.cameras = self.cameras + [camera]

    def remove(self, camera: "NeuralCamera") -> None:
        with _rigs_lock:  # a camera joining this rig meanwhile either finds it open or makes a new one
            with self._cond:
                self.cameras = [c for c in self.cameras if c is not camera]
                empty = not self.cameras
            if empty and _rigs.get(self.key) is self:
                del _rigs[self.key]
        if empty:
            self.close()

    def close(self) -> None:
        with _rigs_lock:
            if _rigs.get(self.key) is self:
                del _rigs[self.key]
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._tick_id is not None:
            self.world.remove_on_tick(self._tick_id)
            self._tick_id = None
        if self.enhancer_client is not None:
            self.enhancer_client.close()
            self.enhancer_client = None

    def raise_if_failed(self) -> None:
        with self._cond:
            error, self.error = self.error, None
        if error is not None:
            raise error

    # ---------------------------------------------------------------- per tick (client stream thread)
    def _on_tick(self, world_snapshot) -> None:
        timestamp_s = float(world_snapshot.timestamp.elapsed_seconds)
        due = [camera for camera in self.cameras if camera._due(timestamp_s)]
        due = [camera for camera in due if camera._callback is not None]
        if not due:
            return
        try:
            snapshot = self.snapshot_from_carla(world_snapshot)
        except Exception as err:  # noqa: BLE001 - logged now, raised by the camera at the next call
            self._fail(int(world_snapshot.frame), due, err)
            return
        with self._cond:
            heapq.heappush(self._jobs, (snapshot.frame, next(self._sequence), snapshot, due))
            self._cond.notify_all()

    def _refresh_actors(self, ids) -> None:
        missing = [i for i in ids if i not in self._actors]
        if not missing:
            return
        for actor in self.world.get_actors(missing):
            if actor.type_id.startswith(("vehicle.", "walker.")):
                ext, loc = actor.bounding_box.extent, actor.bounding_box.location
                size = (2.0 * float(ext.x), 2.0 * float(ext.y), 2.0 * float(ext.z))
                # the box-bottom centre in the actor frame, FLU (agent_box's offset)
                offset = (float(loc.x), -float(loc.y), float(loc.z) - float(ext.z))
                if not all(math.isfinite(v) and v > 0 for v in size):
                    _log.warning("neural camera: actor %d (%s) has bounding box %s; it is not drawn", actor.id,
                                 actor.type_id, size)
                    self._actors[actor.id] = ("", None, None)
                    continue
                self._actors[actor.id] = (_kind_of(actor), size, offset)
            else:
                self._actors[actor.id] = ("", None, None)

    def snapshot_from_carla(self, world_snapshot) -> WorldSnapshot:
        """Our WorldSnapshot from a carla.WorldSnapshot: the parent (if any) is the ego, vehicles and walkers the
        agents; a world-fixed rig has an ego at the origin that draws nothing. Vectorised over the actors (it
        runs every tick for every actor): the same poses as transforms.agent_box, checked in bulk."""
        parent_id = self.parent.id if self.parent is not None else None
        if parent_id is not None:
            parent_snap = world_snapshot.find(parent_id)
            if parent_snap is None:
                raise NeuralCameraError(f"neural camera: parent actor {parent_id} is not in frame "
                                        f"{world_snapshot.frame} (destroyed?)")
            ego_pose = pose_from_transform(parent_snap.get_transform())
        else:
            ego_pose = np.eye(4)
        actor_snaps = list(world_snapshot)
        self._refresh_actors([a.id for a in actor_snaps])
        known = self._actors
        drawn, rows = [], []
        for actor_snap in actor_snaps:
            entry = known.get(actor_snap.id)
            if entry is None or not entry[0] or actor_snap.id == parent_id:
                continue
            transform = actor_snap.get_transform()
            location, rotation, velocity = transform.location, transform.rotation, actor_snap.get_velocity()
            drawn.append((actor_snap.id, entry))
            rows.append((location.x, location.y, location.z, rotation.roll, rotation.pitch, rotation.yaw,
                         velocity.x, velocity.y, velocity.z))
        agents: tuple = ()
        if drawn:
            values = np.array(rows, dtype=np.float64)
            poses = flu_poses_from_ue(values[:, :6])
            offsets = np.array([entry[2] for _, entry in drawn])
            poses[:, :3, 3] += np.einsum("nij,nj->ni", poses[:, :3, :3], offsets)
            speeds = np.sqrt(np.einsum("ni,ni->n", values[:, 6:9], values[:, 6:9]))
            if not (np.isfinite(poses).all() and np.isfinite(speeds).all()):
                bad = [i for (i, _), row in zip(drawn, rows) if not all(map(math.isfinite, row))]
                raise NeuralCameraError(f"neural camera: frame {world_snapshot.frame}: actors {bad} have "
                                        "non-finite transforms or velocities")
            agents = tuple(_agent_state(actor_id, entry[0], entry[1], pose, speed)
                           for (actor_id, entry), pose, speed in zip(drawn, poses, speeds.tolist()))
        ego = AgentState(0, "car", _EGO_SIZE_M, ego_pose, 0.0)
        return WorldSnapshot(int(world_snapshot.frame), float(world_snapshot.timestamp.elapsed_seconds), ego, agents)

    # ---------------------------------------------------------------- render + delivery (worker thread)
    def _reference_views_now(self) -> int | None:
        """The log views the enhancer takes per camera (0: none; None: unknown, its hello failed lately)."""
        client = self.enhancer_client  # read once: close() may clear it from another thread
        if self.reference is None or client is None:
            return 0
        if self._reference_views is None:
            if time.monotonic() - self._hello_failed_at < RETRY_HELLO_S:
                return None
            from neural_sensor.enhance.client import EnhancerError, hello_reference_views

            try:  # the client retries a call: the attempts together stay within HELLO_TIMEOUT_MS
                hello = client.server or client.hello(
                    timeout_ms=HELLO_TIMEOUT_MS / (1 + max(0, int(getattr(client, "retries", 0)))))
            except EnhancerError as err:
                self._hello_failed_at = time.monotonic()
                _log.warning("neural camera: the enhancer's hello failed (%s); no drive-log reference until it "
                             "answers", err)
                return None
            self._reference_views = hello_reference_views(hello)
        return self._reference_views

    def _rig_for(self, views: tuple, fields: tuple) -> NeuralSensorRig:
        reference_views = self._reference_views_now()
        if reference_views is not None:  # answered: the rig made while it was unknown is done with
            for key in [k for k in self._rigs if k[2] is None]:
                del self._rigs[key]
        rig = self._rigs.get((views, fields, reference_views))
        if rig is None:
            specs = [SensorSpec(f"view{i}", w, h, fov, np.array(pose, dtype=np.float64).reshape(4, 4))
                     for i, (w, h, fov, pose) in enumerate(views)]
            if len(self._rigs) > 8:  # mounts or sizes changing all the time: keep the cache small
                self._rigs.clear()
            rig = NeuralSensorRig(self.scene, specs, backend=self.backend, background_rgb=self.background_rgb,
                                  enhancer=self.enhancer_client, lod_px=self.lod_px, outputs=fields,
                                  reference=self.reference if reference_views else None,
                                  reference_views=max(1, reference_views or 0), temporal_blend=TEMPORAL_BLEND)
            self._rigs[(views, fields, reference_views)] = rig
        return rig

    def capture(self, snapshot: WorldSnapshot, cameras) -> dict:
        """{camera: NeuralImage} for every camera, from one batched render of their distinct views."""
        views, index = [], {}
        for camera in cameras:
            view = camera._view_key()
            if view not in index:
                index[view] = len(views)
                views.append(view)
        # only what these cameras' types encode is rendered (RGB cameras alone: no median depth, no labels)
        fields = frame_fields([f for camera in cameras for f in _FRAME_FIELDS_OF_TYPE[camera.type_id]])
        rig = self._rig_for(tuple(views), fields)
        start = time.perf_counter()
        frames = rig.capture(snapshot)
        render_ms = (time.perf_counter() - start) * 1000.0
        self.renders += 1
        pose_ego = snapshot.ego.pose_agent_to_world
        out = {}
        for camera in cameras:
            frame = frames[f"view{index[camera._view_key()]}"]
            camera.last_render_ms = render_ms
            camera.last_meta = frame.meta
            out[camera] = NeuralImage.create(snapshot.frame, snapshot.timestamp_s,
                                             transform_from_pose(pose_ego @ camera._mount_flu),
                                             camera.settings.fov_deg, camera._encode(frame))
        return out

    def _fail(self, frame: int, cameras, err: Exception) -> None:
        """Log a failed frame at once and keep it for the next call on a camera of this rig (the first one kept)."""
        names = ", ".join(f"{c.type_id} {c.id}" for c in cameras)
        with self._cond:
            pending = self.error is not None
        # the first failure is logged at once; further ones while it waits to be raised only at debug level
        # (a destroyed parent fails every tick)
        _log.log(logging.DEBUG if pending else logging.ERROR, "neural camera: rendering frame %d failed for %s: %s: %s",
                 frame, names, type(err).__name__, err, exc_info=err)
        with self._cond:
            if self.error is None:
                self.error = NeuralCameraError(f"neural camera ({names}): rendering frame {frame} failed: "
                                               f"{type(err).__name__}: {err}")
                self.error.__cause__ = err

    def _next_job(self):
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None
            self._busy = True
            return heapq.heappop(self._jobs)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
            job = self._next_job()
            if job is None:
                return
            frame, _, snapshot, cameras = job
            cameras = [c for c in cameras if c._alive]
            if not cameras:
                continue
            try:
                images = self.capture(snapshot, cameras)
            except Exception as err:  # noqa: BLE001 - logged now, raised by the camera at the next call
                self._fail(frame, cameras, err)
                continue
            for camera, image in images.items():
                callback = camera._callback
                if callback is None or not camera._alive:
                    continue
                try:
                    callback(image)
                except Exception:  # noqa: BLE001 - libcarla prints a sensor callback's exception and goes on
                    traceback.print_exc()

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Block until every queued frame has been rendered and delivered; False on timeout (tests, benchmarks)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._jobs or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True


def _rig_key(world, parent, scene, backend, background_rgb, enhancer, deadline_ms, lod_px=LOD_PX,
             reference=None) -> tuple:
    world_key = getattr(world, "id", None)
    if not isinstance(world_key, int):
        world_key = id(world)
    return (world_key, None if parent is None else parent.id, id(scene), backend,
            tuple(float(v) for v in background_rgb), enhancer, float(deadline_ms), float(lod_px),
            None if reference is None else id(reference))


# --------------------------------------------------------------------------- the camera actor
class NeuralCamera:
    """A camera actor rendered from a Gaussian scene; the sensor face of carla.Sensor and the actor face of
    carla.Actor (see the module docstring). `attributes`: blueprint attributes by name (any value type)."""

    def __init__(self, world, attributes: dict, transform, parent, scene: GaussianScene, backend: str = "auto",
                 background_rgb=(0.53, 0.71, 0.92), enhancer: str | None = None, enhancer_deadline_ms: float = 1000.0,
                 *, type_id: str = "sensor.camera.rgb", attachment_type=None, strict_attributes: bool = True,
                 attribute_defaults: dict | None = None, lod_px: float = LOD_PX, reference=None):
        check_camera_type(type_id)
        lod_px = check_lod_px(lod_px, "neural camera")
        if not isinstance(scene, GaussianScene):
            raise ValueError(f"neural camera: scene must be a GaussianScene, got {type(scene).__name__}")
        if reference is not None and not callable(getattr(reference, "warp", None)):
            raise ValueError(f"neural camera: reference must be a LogReference (reconstruct.drive.scene_reference), "
                             f"got {type(reference).__name__}")
        self.settings = camera_settings(type_id, attributes, strict=strict_attributes, defaults=attribute_defaults)
        self.type_id = type_id
        self.attributes = dict(self.settings.strings)
        self.id = next(_ids)
        self._parent = parent
        self._world = world
        self.attachment_type = _check_attachment(attachment_type, parent)
        self._set_mount(np.array(transform.get_matrix(), dtype=np.float64))
        self._callback = None
        self._alive = True
        self._next_due_s: float | None = None
        self.last_render_ms = 0.0
        self.last_meta: dict = {}
        key = _rig_key(world, parent, scene, backend, background_rgb, enhancer, enhancer_deadline_ms, lod_px,
                       reference)
        with _rigs_lock:
            rig = _rigs.get(key)
            if rig is None:
                rig = _rigs[key] = CameraRig(key, world, parent, scene, backend, background_rgb, enhancer,
                                             enhancer_deadline_ms, lod_px, reference)
            rig.add(self)
        self.rig = rig
        _cameras[self.id] = self

    def _set_mount(self, matrix_ue: np.ndarray) -> None:
        self._mount_flu = ue_to_flu(matrix_ue)  # camera body -> parent (or world), FLU
        self._view = (self.settings.width, self.settings.height, float(self.settings.fov_deg),
                      tuple(camera_pose_from_ue(matrix_ue).ravel().round(9)))

    def _view_key(self) -> tuple:
        return self._view

    def _due(self, timestamp_s: float) -> bool:
        """sensor_tick as CARLA: 0 = every tick; else the first tick at or after each period since the first."""
        period = self.settings.sensor_tick_s
        if period <= 0.0:
            return True
        if self._next_due_s is None:
            self._next_due_s = timestamp_s + period
            return True
        if timestamp_s + 1e-6 < self._next_due_s:
            return False
        while self._next_due_s <= timestamp_s + 1e-6:
            self._next_due_s += period
        return True

    def _encode(self, frame) -> np.ndarray:
        """The blueprint's raw_data for one rendered view: [H, W, 4] BGRA uint8 (from the SensorFrame fields
        _FRAME_FIELDS_OF_TYPE names)."""
        if self.type_id == "sensor.camera.rgb":
            return rgb_to_bgra(apply_postprocess(frame.rgb, self.settings))
        if self.type_id == "sensor.camera.depth":
            return depth_to_bgra_fast(frame.depth, frame.semantic)
        if self.type_id == "sensor.camera.semantic_segmentation":
            return semantic_to_bgra(frame.semantic)
        return instance_to_bgra(frame.semantic, frame.instance)

    # ---------------------------------------------------------- sensor face
    def raise_if_failed(self) -> None:
        """Raise the NeuralCameraError of a failed render of this camera's rig, once."""
        self.rig.raise_if_failed()

    def listen(self, callback) -> None:
        self.raise_if_failed()
        if not callable(callback):
            raise TypeError("callback argument must be callable!")  # libcarla's message
        self._callback = callback

    def stop(self) -> None:
        self._callback = None
        self.raise_if_failed()

    def is_listening(self) -> bool:
        self.raise_if_failed()
        return self._callback is not None

    def destroy(self) -> bool:
        """Stop, leave the rig (the last one out closes it) and return True; False if already destroyed.
        A pending render error is raised after the camera is gone."""
        if not self._alive:
            return False
        self._alive = False
        self._callback = None
        _cameras.pop(self.id, None)
        self.rig.remove(self)
        self.raise_if_failed()
        return True

    # ---------------------------------------------------------- actor face
    @property
    def is_alive(self) -> bool:
        return self._alive

    @property
    def parent(self):
        return self._parent

    def get_world(self):
        return self._world

    def _pose_parent(self) -> np.ndarray:
        return np.eye(4) if self._parent is None else pose_from_transform(self._parent.get_transform())

    def get_transform(self):
        """The camera's world transform now (parent's transform composed with the mount)."""
        self.raise_if_failed()
        return transform_from_pose(self._pose_parent() @ self._mount_flu)

    def get_location(self):
        return self.get_transform().location

    def set_transform(self, transform) -> None:
        """Move the camera to a world transform; an attached camera stays attached at the new offset (as UE does)."""
        self.raise_if_failed()
        pose_world = pose_from_transform(transform)
        self._set_mount(flu_to_ue(np.linalg.inv(self._pose_parent()) @ pose_world))

    def set_location(self, location) -> None:
        current = self.get_transform()
        self.set_transform(carla.Transform(location, current.rotation))

    def get_velocity(self):
        """The parent's velocity (a rigid mount moves with it); zero for a world-fixed camera."""
        return self._parent.get_velocity() if self._parent is not None else carla.Vector3D(0.0, 0.0, 0.0)

    @property
    def bounding_box(self):
        return carla.BoundingBox(carla.Location(0.0, 0.0, 0.0), carla.Vector3D(0.0, 0.0, 0.0))

    @property
    def semantic_tags(self) -> list:
        return []

    def __repr__(self) -> str:
        return f"NeuralCamera(id={self.id}, type={self.type_id}, parent={getattr(self._parent, 'id', None)})"

    # ---------------------------------------------------------- synchronous helpers (benchmarks, tests)
    def snapshot_from_carla(self, world_snapshot) -> WorldSnapshot:
        return self.rig.snapshot_from_carla(world_snapshot)

    def image_for(self, snapshot: WorldSnapshot) -> NeuralImage:
        """Render this camera alone for a snapshot, on the calling thread; the rig's ms go to last_render_ms."""
        return self.rig.capture(snapshot, [self])[self]


def _check_attachment(attachment_type, parent):
    if attachment_type is None:
        return None if carla is None else carla.AttachmentType.Rigid
    if carla is not None and not isinstance(attachment_type, carla.AttachmentType):
        raise ValueError(f"attachment_type must be a carla.AttachmentType, got {attachment_type!r}")
    name = str(getattr(attachment_type, "name", attachment_type))
    if parent is None and name != "Rigid":
        raise ValueError(f"attachment_type {name} needs a parent actor (attach_to)")
    if name != "Rigid" and name not in _warned_attachments:
        _warned_attachments.add(name)
        _log.warning("neural camera: attachment %s is applied as Rigid (no spring-arm lag or collision)", name)
    return attachment_type


def spawn_neural_camera(world, blueprint, transform, attach_to=None, scene: GaussianScene | None = None,
                        backend: str = "auto", background_rgb=(0.53, 0.71, 0.92), enhancer: str | None = None,
                        enhancer_deadline_ms: float = 1000.0, attachment_type=None,
                        socket_name: str = "", lod_px: float = LOD_PX, reference=None) -> NeuralCamera:
    """world.spawn_actor's stand-in for a camera blueprint: every attribute of the blueprint is read and parsed.
    `attach_to=None` fixes the camera in the world (transform is then a world transform).
    `enhancer`: the endpoint (tcp://HOST:PORT) of an enhancer server refining each rgb image within the deadline.
    `reference`: the scene's drive log (`neural_sensor.reconstruct.drive.scene_reference(meta)` of a
    reconstruction), sent to an enhancer trained to take it (see the module docstring).
    `lod_px`: the CPU renderer's level of detail (`neural_sensor.render.render(lod_px=)`; 0 draws every Gaussian)."""
    if scene is None:
        raise ValueError("spawn_neural_camera: scene= (a GaussianScene) is required")
    type_id = getattr(blueprint, "id", None)
    check_camera_type(str(type_id))
    if socket_name:
        raise ValueError(f"spawn_neural_camera: socket_name {socket_name!r} is not supported (mount by transform)")
    attributes, defaults = {}, {}
    for attribute in blueprint:
        attributes[attribute.id] = attribute.as_str()
        recommended = list(getattr(attribute, "recommended_values", None) or [])
        if recommended and attribute.id in _REFERENCE_KEYS:  # a server's first recommended value is its default
            defaults[attribute.id] = recommended[0]
    return NeuralCamera(world, attributes, transform, attach_to, scene, backend, background_rgb, enhancer,
                        enhancer_deadline_ms, type_id=type_id, attachment_type=attachment_type,
                        strict_attributes=False, attribute_defaults=defaults, lod_px=lod_px, reference=reference)
