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
(carla_bridge/camera_rig.py) with ONE on_tick callback: it converts the snapshot once (the parent
is the ego, every vehicle and walker an agent), picks the cameras due this tick (sensor_tick: the
first tick at or after each period) and queues the frame for the rig's worker thread. The worker renders every due
camera of the frame in one batched call (one per image size: the renderer batches cameras of one
size; cameras with the same view share one rendered view, so an rgb, a depth and a semantic
camera on one mount cost one view), encodes each as its blueprint says, and hands it to the camera's own
listener thread, lowest frame first (frames queued while a render runs are taken in frame order): as libcarla's
sensor streams, a slow listener holds up only its own camera. A listener's exception is printed and
swallowed, as libcarla does with sensor callbacks. A render error is logged at once (logger
"carla_bridge") and raised as NeuralCameraError, naming the camera and the frame, by the next
call on any camera of the rig (listen, is_listening, get_transform, ...; never by stop() or destroy(),
which libcarla's never raise for sensor data, so a cleanup loop runs to its end) or by
`camera.raise_if_failed()`. A neural camera renders after the tick (a server has its images by the
time world.tick() returns): a loop that ticks without waiting for the images queues them (a warning
past camera_rig.BACKLOG_WARN_FRAMES), and destroy() delivers the queued ones first (at most
DESTROY_FLUSH_S). At interpreter exit the rigs stop after the frame in flight.

Actor face: positive ids from NEURAL_ID_BASE (3 * 2^30) up, which a server counting up from 1
never reaches; id, type_id, attributes (strings), is_alive, parent, get_world, get_transform,
get_location, set_transform (on an attached camera: its mount relative to the parent, as libcarla's),
destroy. After destroy(), as libcarla's, listen, get_transform, set_transform and
get_velocity raise RuntimeError ("trying to operate on a destroyed actor; ..."). Importing this module makes carla.command.DestroyActor
accept a camera too (carla_bridge/commands.py: a subclass, every former use unchanged); a batch
sent through a NeuralClient (carla_bridge/client.py) destroys the cameras client-side, a batch
sent to the server directly gets "not found" for them, as for any unknown id.

Drive-log reference: an enhancer trained with the drive log's images as its reference (its hello's
`reference_views` > 0, as the shipped one) gains most of its decibels from it; give the camera the
reconstruction's log (`reference=`, `neural_sensor.reconstruct.drive.scene_reference(meta)`) and each
camera's request carries the log views facing its way, warped in through the render's median depth (as
`neural-sensor run` sends them). The rig asks the server's hello once (again after a failed one, at most
every `camera_rig.RETRY_HELLO_S` seconds); an enhancer without `reference_views` gets no reference. The enhanced
images are accumulated over ticks as a run does (`neural_sensor.enhance.temporal`, TEMPORAL_BLEND).

Attachment: Rigid is exact; SpringArm and SpringArmGhost are applied as rigid (no spring lag,
no collision test), with a warning once. A camera without a parent is fixed in the world.
"""

from __future__ import annotations

import itertools
import logging
import time
import weakref
from pathlib import Path

import numpy as np

# re-exported from here: CameraRig, NeuralCameraError
from carla_bridge.camera_rig import CameraRig, NeuralCameraError, join_rig  # noqa: F401
from carla_bridge.attributes import apply_postprocess, camera_settings, check_camera_type
from carla_bridge.encodings import convert_bgra, depth_to_bgra_fast, instance_to_bgra, semantic_to_bgra
from carla_bridge.transforms import (
    camera_pose_from_ue,
    pose_from_transform,
    rgb_to_bgra,
    transform_from_pose,
    ue_to_flu,
)
from neural_sensor.gaussians import GaussianScene
from neural_sensor.render import BACKENDS, LOD_PX
from neural_sensor.render._common import check_lod_px
from neural_sensor.render.upsample import check_scale
from neural_sensor.world import WorldSnapshot

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
NEURAL_ID_BASE = 3 << 30  # actor ids are uint32 and a server hands them out from 1 upwards
_ids = itertools.count(start=NEURAL_ID_BASE + 1)
_cameras: "weakref.WeakValueDictionary[int, NeuralCamera]" = weakref.WeakValueDictionary()
_warned_attachments: set[str] = set()
# the SensorFrame fields each camera type's raw_data is made from (NeuralCamera._encode)
_FRAME_FIELDS_OF_TYPE = {"sensor.camera.rgb": ("rgb",), "sensor.camera.depth": ("rgb", "depth", "semantic"),
                         "sensor.camera.semantic_segmentation": ("rgb", "semantic"),
                         "sensor.camera.instance_segmentation": ("rgb", "semantic", "instance")}
_FORMAT_BY_ENDING = (("tiff", "TIFF"), ("jpeg", "JPEG"), ("jpg", "JPEG"))  # libcarla's match_extension: how the
_DEFAULT_EXTENSION = {"PNG": "png", "TIFF": "tiff", "JPEG": "jpeg"}        # path ends (iends_with: any case)
DESTROY_MIN_FLUSH_S = 5.0  # ... of which the frames already queued get at least this
DESTROY_FLUSH_S = 60.0  # NeuralCamera.destroy() waits this long at most for the frames of ticks already taken
# the post-processing model is relative to the blueprint's defaults for these (carla_bridge/attributes.py)
_REFERENCE_KEYS = ("exposure_compensation", "gamma", "lens_k", "lens_kcube", "lens_x_size", "lens_y_size")


def neural_camera(actor_id: int) -> "NeuralCamera | None":
    """The live NeuralCamera with this actor id, or None (the id belongs to the server, or the camera is gone)."""
    return _cameras.get(int(actor_id))


def neural_cameras_of(world) -> list:
    """The live NeuralCameras spawned in `world`, oldest first: the same world id (libcarla's get_world() makes a
    new Python object each call), or the same object where there is no id."""
    key = getattr(world, "id", None)

    def same(other) -> bool:
        other_key = getattr(other, "id", None)
        return other is world or (isinstance(key, int) and isinstance(other_key, int) and other_key == key)

    return sorted((c for c in list(_cameras.values()) if c.is_alive and same(c._world)), key=lambda c: c.id)


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
        if name != "Raw":  # into its own buffer, as libcarla's ConvertInPlace: an array taken from raw_data before
            # sees the change (the buffer had been replaced)
            self._bgra[...] = convert_bgra(self._bgra, name)

    def save_to_disk(self, path: str, color_converter=None) -> str:
        """Write the image and return the path written, as libcarla's ImageIO does: the format is chosen by how the
        path ends (tiff, jpeg or jpg, else PNG, whatever the extension: "0.05" is a PNG file named 0.05), ".png"
        is appended only to a path without an extension, missing folders are created, and the path is used as
        given (a '%' is no placeholder: format the frame in yourself, `'out/%06d.png' % image.frame`). Raw and
        CityScapesPalette are written as 4-channel (RGBA) pictures, Depth and LogarithmicDepth as one-channel
        gray. The image itself is unchanged."""
        from PIL import Image

        name = "Raw" if color_converter is None else self._converter_name(color_converter)
        path = str(path)
        kind = next((k for ends, k in _FORMAT_BY_ENDING if path.lower().endswith(ends)), "PNG")
        target = Path(path)
        if not target.suffix:  # boost::filesystem's extension(): none for "out/0" or "out/.hidden"
            target = Path(path + "." + _DEFAULT_EXTENSION[kind])
        target.parent.mkdir(parents=True, exist_ok=True)
        bgra = self._bgra if name == "Raw" else convert_bgra(self._bgra, name)
        if name in ("Depth", "LogarithmicDepth"):
            picture = Image.fromarray(np.ascontiguousarray(bgra[..., 0]), "L")
        elif kind == "JPEG":
            picture = Image.fromarray(np.ascontiguousarray(bgra[..., 2::-1]), "RGB")
        else:
            picture = Image.fromarray(np.ascontiguousarray(bgra[..., [2, 1, 0, 3]]), "RGBA")
        picture.save(target, format=kind)
        return str(target)

    def __repr__(self) -> str:
        return f"NeuralImage(frame={self._frame}, timestamp={self._timestamp:.3f}, size={self.width}x{self.height})"


# --------------------------------------------------------------------------- the camera actor
class NeuralCamera:
    """A camera actor rendered from a Gaussian scene; the sensor face of carla.Sensor and the actor face of
    carla.Actor (see the module docstring). `attributes`: blueprint attributes by name (any value type)."""

    def __init__(self, world, attributes: dict, transform, parent, scene: GaussianScene, backend: str = "auto",
                 background_rgb=(0.53, 0.71, 0.92), enhancer: str | None = None, enhancer_deadline_ms: float = 1000.0,
                 *, type_id: str = "sensor.camera.rgb", attachment_type=None, strict_attributes: bool = True,
                 attribute_defaults: dict | None = None, lod_px: float = LOD_PX, reference=None,
                 render_scale: float = 1.0):
        check_camera_type(type_id)
        lod_px = check_lod_px(lod_px, "neural camera")
        render_scale = check_scale(render_scale, "neural camera")
        if not isinstance(scene, GaussianScene):
            raise ValueError(f"neural camera: scene must be a GaussianScene, got {type(scene).__name__}")
        if backend not in BACKENDS:  # said at the spawn, not by the first tick's render
            raise ValueError(f"neural camera: backend must be one of {BACKENDS}, got {backend!r}")
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
        self._set_mount(transform)
        self._callback = None
        self._closing = False  # destroy() under way: no new tick is queued for it
        self._alive = True
        self._next_due_s: float | None = None
        self.last_render_ms = 0.0
        self.last_meta: dict = {}
        self.rig = join_rig(self, world, parent, scene, backend, background_rgb, enhancer, enhancer_deadline_ms,
                            lod_px, reference, render_scale)
        _cameras[self.id] = self

    def _set_mount(self, transform) -> None:
        """The camera's transform relative to its parent (for a world-fixed camera: the world transform), as a
        carla.Transform; a non-finite one is refused by name."""
        matrix_ue = np.array(transform.get_matrix(), dtype=np.float64)
        if not np.isfinite(matrix_ue).all():
            raise ValueError(f"neural camera: transform {transform} is not finite")
        self._mount = carla.Transform(transform.location, transform.rotation)  # a copy: the caller's may change
        mount_flu = ue_to_flu(matrix_ue)  # camera body -> parent (or world), FLU
        view = (self.settings.width, self.settings.height, float(self.settings.fov_deg),
                tuple(camera_pose_from_ue(matrix_ue).ravel().round(9)))
        # (the rendered view's key, the mount FLU): one attribute, replaced whole, so that a tick's job takes both
        # as they were at its tick whatever a set_transform does meanwhile on another thread (a queued frame is
        # rendered and labelled at the mount of its tick)
        self._placement = (view, mount_flu)

    @property
    def _mount_flu(self) -> np.ndarray:
        return self._placement[1]

    def _view_key(self) -> tuple:
        return self._placement[0]

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

    @property
    def frame_fields(self) -> tuple[str, ...]:
        """The SensorFrame fields this camera's raw_data is made from (the rig renders only what its cameras need)."""
        return _FRAME_FIELDS_OF_TYPE[self.type_id]

    def image(self, snapshot: WorldSnapshot, frame, mount_flu: np.ndarray | None = None) -> NeuralImage:
        """The carla.Image of one rendered view (a rig's SensorFrame) of this camera at `snapshot`, mounted at
        `mount_flu` (its tick's; None: now)."""
        mount = self._mount_flu if mount_flu is None else mount_flu
        return NeuralImage.create(snapshot.frame, snapshot.timestamp_s,
                                  transform_from_pose(snapshot.ego.pose_agent_to_world @ mount),
                                  self.settings.fov_deg, self._encode(frame))

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

    def _check_alive(self) -> None:
        """libcarla's RuntimeError for a call that needs the simulator on a destroyed actor (its episode pointer is
        cleared by destroy(); id, type_id, attributes, is_alive, is_listening and stop() still answer)."""
        if not self._alive:
            raise RuntimeError("trying to operate on a destroyed actor; an actor's function was called, but the actor "
                               "is already destroyed.")

    def listen(self, callback) -> None:
        self._check_alive()
        self.raise_if_failed()
        if not callable(callback):
            raise TypeError("callback argument must be callable!")  # libcarla's message
        self._callback = callback

    def stop(self) -> None:
        """Stop listening. As libcarla's, it never raises for a frame that failed to render (that was logged when
        it happened; `raise_if_failed` still raises it): a cleanup loop of stop() / destroy() runs to its end."""
        self._callback = None

    def is_listening(self) -> bool:
        self.raise_if_failed()
        return self._callback is not None

    def destroy(self) -> bool:
        """Deliver the frames of ticks already taken (a server has rendered those by the time its tick returns; a
        neural camera renders after it, so a loop of world.tick() calls that never waits for an image would lose
        them all: this waits up to DESTROY_FLUSH_S, then says how many were dropped), stop, leave the rig (the
        last one out closes it) and return True; False if already destroyed. As libcarla's, it never raises for
        a frame that failed to render (logged when it happened)."""
        if not self._alive:
            return False
        if self._callback is not None:
            start = time.monotonic()
            self.rig.catch_up(DESTROY_FLUSH_S)  # the ticks already taken reach the rig first (they were dropped)
            self._closing = True  # the ticks from now on are not waited for (nor rendered)
            self.rig.flush(self, max(DESTROY_MIN_FLUSH_S, DESTROY_FLUSH_S - (time.monotonic() - start)))
        self._alive = False
        self._callback = None
        _cameras.pop(self.id, None)
        self.rig.remove(self)
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
        self._check_alive()
        self.raise_if_failed()
        return transform_from_pose(self._pose_parent() @ self._mount_flu)

    def get_location(self):
        return self.get_transform().location

    def set_transform(self, transform) -> None:
        """As libcarla: the server's SetActorGlobalTransform sets UE's RELATIVE transform, so on an attached camera
        `transform` is its new mount, relative to the parent (x forward, y right, z up from the parent's origin),
        and the camera stays attached; a world-fixed camera takes it as its world transform."""
        self._check_alive()
        self._set_mount(transform)

    def set_location(self, location) -> None:
        """As libcarla (SetActorRelativeLocation): the mount's location (a world-fixed camera's world location);
        the mount's rotation is kept."""
        self._check_alive()
        self._set_mount(carla.Transform(location, self._mount.rotation))

    def _parent_motion(self, getter: str):
        """The parent's vector `getter` answers (a rigid mount moves with it); zero for a world-fixed camera."""
        self._check_alive()
        return getattr(self._parent, getter)() if self._parent is not None else carla.Vector3D(0.0, 0.0, 0.0)

    def get_velocity(self):
        """The parent's velocity; zero for a world-fixed camera."""
        return self._parent_motion("get_velocity")

    def get_acceleration(self):
        """The parent's acceleration; zero for a world-fixed camera."""
        return self._parent_motion("get_acceleration")

    def get_angular_velocity(self):
        """The parent's angular velocity (deg/s, as libcarla's); zero for a world-fixed camera."""
        return self._parent_motion("get_angular_velocity")

    # the rest of carla.Actor's face, as a server's camera answers it (a generic loop over world.get_actors(),
    # which lists the neural cameras, failed on them): a camera is active while alive, has no physics and no bones
    @property
    def actor_state(self):
        return carla.ActorState.Active if self._alive else carla.ActorState.Invalid

    @property
    def is_active(self) -> bool:
        return self._alive

    @property
    def is_dormant(self) -> bool:
        return False

    def _no_physics(self, *args, **kwargs) -> None:
        """A camera has no body: libcarla's call changes nothing on a sensor, and so does this."""
        self._check_alive()

    add_force = add_impulse = add_torque = add_angular_impulse = _no_physics
    set_simulate_physics = set_enable_gravity = set_collisions = _no_physics
    set_target_velocity = set_target_angular_velocity = _no_physics
    enable_constant_velocity = disable_constant_velocity = _no_physics

    def _none(self) -> list:
        return []

    get_bone_names = get_bone_relative_transforms = get_bone_world_transforms = _none
    get_socket_names = get_socket_relative_transforms = get_socket_world_transforms = get_component_names = _none

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


def _check_parent(world, attach_to) -> None:
    """Refuse at the spawn, as the server does, a parent that is gone; name what cannot be a parent (a neural camera
    is not a server actor its rig can follow; a str was an AttributeError '...has no attribute id')."""
    if attach_to is None:
        return
    if isinstance(attach_to, NeuralCamera):
        raise ValueError("spawn_neural_camera: attach_to is a neural camera, which cannot carry another; attach both "
                         "cameras to the vehicle")
    actor_id = getattr(attach_to, "id", None)
    if isinstance(actor_id, bool) or not isinstance(actor_id, int):
        raise TypeError(f"spawn_neural_camera: attach_to must be a carla.Actor (or None), got "
                        f"{type(attach_to).__name__}")
    if world.get_actor(actor_id) is None:  # an id the client never knew or the server does not hold: as the
        # server's spawn_actor_with_parent answers. (A parent destroyed through this client stays in libcarla's
        # actor cache, so get_actor cannot tell it apart: such a camera fails at its first tick, by name.)
        raise RuntimeError("unable to attach actor: parent actor not found")


def spawn_neural_camera(world, blueprint, transform, attach_to=None, scene: GaussianScene | None = None,
                        backend: str = "auto", background_rgb=(0.53, 0.71, 0.92), enhancer: str | None = None,
                        enhancer_deadline_ms: float = 1000.0, attachment_type=None,
                        socket_name: str = "", lod_px: float = LOD_PX, reference=None,
                        render_scale: float = 1.0) -> NeuralCamera:
    """world.spawn_actor's stand-in for a camera blueprint: every attribute of the blueprint is read and parsed.
    `attach_to=None` fixes the camera in the world (transform is then a world transform).
    `enhancer`: the endpoint (tcp://HOST:PORT) of an enhancer server refining each rgb image within the deadline.
    `reference`: the scene's drive log (`neural_sensor.reconstruct.drive.scene_reference(meta)` of a
    reconstruction), sent to an enhancer trained to take it (see the module docstring).
    `lod_px`: the CPU renderer's level of detail (`neural_sensor.render.render(lod_px=)`; 0 draws every Gaussian).
    `render_scale`: the fraction of the camera's size the scene is drawn at, then upsampled (`render(scale=)`; a
    reconstruction loses 0.00-0.02 dB at `neural_sensor.render.RECONSTRUCTION_SCALE`, in 40 % less of the render's
    time)."""
    if scene is None:
        raise ValueError("spawn_neural_camera: scene= (a GaussianScene) is required")
    type_id = getattr(blueprint, "id", None)
    check_camera_type(str(type_id))
    if socket_name:
        raise ValueError(f"spawn_neural_camera: socket_name {socket_name!r} is not supported (mount by transform)")
    _check_parent(world, attach_to)
    attributes, defaults = {}, {}
    for attribute in blueprint:
        attributes[attribute.id] = attribute.as_str()
        recommended = list(getattr(attribute, "recommended_values", None) or [])
        if recommended and attribute.id in _REFERENCE_KEYS:  # a server's first recommended value is its default
            defaults[attribute.id] = recommended[0]
    return NeuralCamera(world, attributes, transform, attach_to, scene, backend, background_rgb, enhancer,
                        enhancer_deadline_ms, type_id=type_id, attachment_type=attachment_type,
                        strict_attributes=False, attribute_defaults=defaults, lod_px=lod_px, reference=reference,
                        render_scale=render_scale)
