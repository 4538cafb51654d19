"""A stand-in CARLA server + client for tests, examples and benchmarks on machines without a server.

`StandInClient(host, port)` is a drop-in `carla.Client` for what a camera script touches, with
real `carla` value types (Transform, Location, Timestamp, WorldSettings, WeatherParameters,
and a real `carla.Map` built from the world's OpenDRIVE). It behaves as libcarla does where a
script can tell:

- `world.tick()` advances the world and returns the new frame id BEFORE the on_tick callbacks
  run; they run on another thread (the "stream" thread, one per world, in frame order), and an
  exception a callback raises is printed (with its traceback) and swallowed, as libcarla's
  MakeCallback does. `on_tick` / `listen` refuse a non-callable with libcarla's TypeError.
- Blueprints validate `set_attribute` as LibCarla's ActorAttribute does: an unknown attribute
  is an IndexError, a bool must be true / false (ValueError), an int or a float is read with
  atoi / atof (garbage reads as 0, as on a real client: the neural camera refuses it by name).
- `apply_batch` / `apply_batch_sync` run DestroyActor, ApplyVehicleControl, ApplyTransform,
  SetSimulatePhysics and SetAutopilot; a DestroyActor of an id the server does not know answers
  an error ("actor not found"), as a server does (a neural camera lives in the client: destroy
  it through carla_bridge.client.NeuralClient). A SpawnActor command built by the `carla`
  package carries a blueprint Python cannot read back, so the stand-in answers it with an error
  response naming this, unless it was built through NeuralClient.
- `set_autopilot` and the traffic manager's settings are accepted and recorded, and nothing drives
  (there is no traffic manager: `get_trafficmanager()` records settings only); vehicles move
  under VehicleControl with a plain kinematic model, not CARLA's physics.
- `wait_for_tick()` advances the world one step itself (there is no free-running server).
- `get_map().get_spawn_points()`: one spawn point every 20 m along every lane of the OpenDRIVE
  (a generated world's spawn points are the server's choice; these are ours).
Needs the `carla` package.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import queue
import struct
import threading
import time
import traceback

import carla
import numpy as np

from carla_bridge.attributes import CAMERA_DEFINITIONS
from carla_bridge.simulator import speed_after

# (half extents, box centre height above the actor origin): vehicles' origins are at their wheels' base,
# walkers' at the middle of their capsule, as in CARLA
_BOXES = {"vehicle": ((2.25, 0.95, 0.75), 0.75), "walker": ((0.25, 0.3, 0.9), 0.0)}
_VEHICLES = {"vehicle.tesla.model3": 4, "vehicle.audi.a2": 4, "vehicle.lincoln.mkz_2020": 4,
             "vehicle.carlamotors.carlacola": 4, "vehicle.diamondback.century": 2, "vehicle.yamaha.yzf": 2}
_OTHER_SENSORS = ("sensor.other.collision", "sensor.other.gnss", "sensor.other.imu", "sensor.other.lane_invasion",
                  "sensor.other.obstacle", "sensor.lidar.ray_cast", "sensor.lidar.ray_cast_semantic",
                  "sensor.other.radar", "sensor.camera.optical_flow", "sensor.camera.dvs",
                  "sensor.camera.normals")
_NOISE_ATTRIBUTES = {  # the GNSS's and the IMU's noise settings, as the server defines them (all 0 by default)
    "sensor.other.gnss": ("noise_alt_bias", "noise_alt_stddev", "noise_lat_bias", "noise_lat_stddev",
                          "noise_lon_bias", "noise_lon_stddev", "noise_seed"),
    "sensor.other.imu": tuple(f"noise_{kind}_{axis}" for kind in ("accel_stddev", "gyro_bias", "gyro_stddev")
                              for axis in "xyz") + ("noise_seed",)}
_TYPES = {"bool": carla.ActorAttributeType.Bool, "int": carla.ActorAttributeType.Int,
          "float": carla.ActorAttributeType.Float, "string": carla.ActorAttributeType.String}
_world_ids = itertools.count(start=1)


def StandInSettings(synchronous_mode: bool = False, fixed_delta_seconds: float | None = None) -> carla.WorldSettings:
    """A real carla.WorldSettings with these two fields set (the stand-in's settings type)."""
    settings = carla.WorldSettings()
    settings.synchronous_mode = bool(synchronous_mode)
    settings.fixed_delta_seconds = fixed_delta_seconds
    return settings


# --------------------------------------------------------------------------- blueprints
class StandInAttribute:
    """carla.ActorAttribute's face: id, type, value accessors, is_modifiable, recommended_values."""

    def __init__(self, attribute_id: str, kind: str, value: str, recommended=(), modifiable: bool = True):
        self.id, self._kind, self._value = attribute_id, kind, str(value)
        self.type = _TYPES[kind]
        self.is_modifiable = modifiable
        self.recommended_values = list(recommended) or [str(value)]

    def _set(self, value) -> None:
        if not self.is_modifiable:
            raise ValueError(f"{self.id}: read-only attribute")
        value = str(value)
        if self._kind == "bool":
            value = value.lower()
            if value not in ("true", "false"):
                raise ValueError(f"{self.id}: invalid bool: {value}")
        if self._kind == "float":
            number = _atof(value)
            if abs(number) > 3.4028234663852886e38:
                raise ValueError(f"{self.id}: float overflow")
        self._value = value

    def as_str(self) -> str:
        return self._value

    def as_int(self) -> int:
        return _atoi(self._value)

    def as_float(self) -> float:
        return _atof(self._value)

    def as_bool(self) -> bool:
        return self._value.lower() == "true"

    def __str__(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"ActorAttribute(id={self.id},type={self._kind},value={self._value})"


def _number_prefix(text: str, allow_float: bool) -> str:
    """The longest leading number C's atoi / atof would read (after leading blanks), or ''."""
    text = text.lstrip()
    best = ""
    for end in range(1, len(text) + 1):
        try:
            (float if allow_float else int)(text[:end])
        except ValueError:
            continue
        best = text[:end]
    return best


def _atoi(text: str) -> int:
    prefix = _number_prefix(text, allow_float=False)
    return int(prefix) if prefix else 0


def _atof(text: str) -> float:
    prefix = _number_prefix(text, allow_float=True)
    return float(prefix) if prefix else 0.0


class StandInBlueprint:
    """carla.ActorBlueprint's face. Known type ids carry CARLA's attribute set; `attributes` set values (and, for an
    unknown type id, define free string attributes)."""

    def __init__(self, type_id: str, **attributes):
        self.id = type_id
        self.tags = type_id.split(".")
        self._attributes: dict[str, StandInAttribute] = {}
        if type_id in CAMERA_DEFINITIONS:
            for key, spec in CAMERA_DEFINITIONS[type_id].items():
                self._attributes[key] = StandInAttribute(key, spec.type, spec.default, spec.choices)
        elif type_id.startswith(("sensor.",)):
            self._attributes["role_name"] = StandInAttribute("role_name", "string", "front")
            self._attributes["sensor_tick"] = StandInAttribute("sensor_tick", "float", "0.0")
            for key in _NOISE_ATTRIBUTES.get(type_id, ()):  # (UActorBlueprintFunctionLibrary's GNSS / IMU sets)
                self._attributes[key] = StandInAttribute(key, "int" if key == "noise_seed" else "float",
                                                         "0" if key == "noise_seed" else "0.0")
        elif type_id.startswith("vehicle."):
            self._attributes["role_name"] = StandInAttribute("role_name", "string", "autopilot")
            self._attributes["number_of_wheels"] = StandInAttribute(
                "number_of_wheels", "int", str(_VEHICLES.get(type_id, 4)), modifiable=False)
        elif type_id.startswith("walker."):
            self._attributes["role_name"] = StandInAttribute("role_name", "string", "walker")
            self._attributes["is_invincible"] = StandInAttribute("is_invincible", "bool", "true")
        for key, value in attributes.items():
            if key in self._attributes:
                self._attributes[key]._set(value)
            else:
                self._attributes[key] = StandInAttribute(key, "string", str(value))

    def set_attribute(self, key, value) -> None:
        if not (isinstance(key, str) and isinstance(value, str)):  # libcarla: set_attribute(str, str), Boost.Python
            raise TypeError(f"Python argument types in ActorBlueprint.set_attribute(ActorBlueprint, "
                            f"{type(key).__name__}, {type(value).__name__}) did not match C++ signature: "
                            "set_attribute(carla::client::ActorBlueprint {lvalue}, std::string, std::string)")
        self.get_attribute(key)._set(value)

    def has_attribute(self, key) -> bool:
        return key in self._attributes

    def get_attribute(self, key) -> StandInAttribute:
        if key not in self._attributes:
            raise IndexError(f"attribute '{key}' not found")
        return self._attributes[key]

    def has_tag(self, tag: str) -> bool:
        return tag in self.tags

    def match_tags(self, pattern: str) -> bool:
        return fnmatch.fnmatchcase(self.id, pattern) or any(fnmatch.fnmatchcase(t, pattern) for t in self.tags)

    def __iter__(self):
        return iter(list(self._attributes.values()))

    def __len__(self) -> int:
        return len(self._attributes)

    def __repr__(self) -> str:
        return f"ActorBlueprint(id={self.id},tags={self.tags})"


class StandInLibrary:
    """carla.BlueprintLibrary's face: find (IndexError when missing), filter (wildcards on ids and tags), iteration."""

    _IDS = (tuple(_VEHICLES) + tuple(f"walker.pedestrian.{i:04d}" for i in range(1, 5)) + tuple(CAMERA_DEFINITIONS)
            + _OTHER_SENSORS + ("static.prop.bench", "static.prop.streetbarrier", "traffic.traffic_light"))

    def __init__(self, ids=None):
        self._ids = tuple(ids) if ids is not None else self._IDS

    def find(self, type_id: str) -> StandInBlueprint:
        if type_id not in self._ids:
            raise IndexError(f"blueprint '{type_id}' not found")
        return StandInBlueprint(type_id)

    def filter(self, pattern: str) -> "StandInLibrary":
        return StandInLibrary([i for i in self._ids if StandInBlueprint(i).match_tags(pattern)])

    def __iter__(self):
        return (StandInBlueprint(i) for i in self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: int) -> StandInBlueprint:
        return StandInBlueprint(self._ids[index])


class StandInMap(carla.Map):
    """A real carla.Map of the OpenDRIVE, with spawn points every 20 m along every lane (see the module docstring)."""

    def __init__(self, name: str, opendrive: str):
        super().__init__(name, opendrive)
        self._spawn_points = [w.transform for w in self.generate_waypoints(20.0)]

    def get_spawn_points(self):
        return list(self._spawn_points)


# --------------------------------------------------------------------------- actors
class StandInActor:
    def __init__(self, world, actor_id: int, type_id: str, transform, parent=None, attributes=None):
        self.world, self.id, self.type_id, self.parent = world, actor_id, type_id, parent
        family = type_id.split(".")[0]
        extent, z = _BOXES.get(family, ((0.1, 0.1, 0.1), 0.0))
        self.bounding_box = carla.BoundingBox(carla.Location(0.0, 0.0, z), carla.Vector3D(*extent))
        self.attributes = dict(attributes or {})
        if family == "vehicle":
            self.attributes.setdefault("number_of_wheels", "4")
        self.semantic_tags = []
        self._transform = transform  # relative to the parent when attached, as given to spawn_actor
        self.speed_mps = 0.0
        self.control = carla.VehicleControl()
        self.physics = True
        self.autopilot = False
        self._alive = True
        self._callback = None
        self._measuring = None  # a listening GNSS's / IMU's _MeasuringSensor

    # actor face
    @property
    def is_alive(self) -> bool:
        return self._alive

    def get_world(self):
        return self.world

    def get_transform(self):
        if self.parent is None:
            return self._transform
        from carla_bridge.transforms import pose_from_transform, transform_from_pose

        return transform_from_pose(pose_from_transform(self.parent.get_transform()) @ pose_from_transform(self._transform))

    def get_location(self):
        return self.get_transform().location

    def set_transform(self, transform) -> None:
        self._transform = transform

    def set_location(self, location) -> None:
        self._transform = carla.Transform(location, self._transform.rotation)

    def set_simulate_physics(self, enabled: bool = True) -> None:
        self.physics = bool(enabled)

    def set_autopilot(self, enabled: bool = True, port: int = 8000) -> None:
        """Accepted and recorded; the stand-in has no traffic manager, so nothing drives the vehicle."""
        self.autopilot = bool(enabled)

    def apply_control(self, control) -> None:
        self.control = control

    def set_target_velocity(self, velocity) -> None:
        """As CARLA (for a vehicle with physics): its velocity from the next tick; the stand-in's vehicles move
        along their heading, so the velocity's component along it is their speed."""
        yaw = math.radians(self.get_transform().rotation.yaw)
        self.speed_mps = float(velocity.x) * math.cos(yaw) + float(velocity.y) * math.sin(yaw)

    def get_velocity(self):
        if not self.physics:  # like CARLA: an actor moved by set_transform reports no velocity
            return carla.Vector3D(0.0, 0.0, 0.0)
        yaw = math.radians(self.get_transform().rotation.yaw)
        return carla.Vector3D(self.speed_mps * math.cos(yaw), self.speed_mps * math.sin(yaw), 0.0)

    def get_angular_velocity(self):
        return carla.Vector3D(0.0, 0.0, 0.0)

    def get_acceleration(self):
        return carla.Vector3D(0.0, 0.0, 0.0)

    def destroy(self) -> bool:
        if not self._alive:
            return False
        self._alive = False
        self._callback = None  # as libcarla's Sensor::Destroy: a listening sensor stops first
        self.world.actors.pop(self.id, None)
        return True

    # sensor face
    def listen(self, callback) -> None:
        if not callable(callback):
            raise TypeError("callback argument must be callable!")
        self._callback = callback
        if self.type_id in _NOISE_ATTRIBUTES and self._measuring is None:  # a GNSS / IMU measures from now on
            self._measuring = _MeasuringSensor(self)

    def stop(self) -> None:
        self._callback = None

    def is_listening(self) -> bool:
        return self._callback is not None

    def emit_collision(self, other_actor) -> None:
        """Fire a collision event at this (sensor) actor for the current frame, as CARLA would."""
        if self._callback is not None:
            self._callback(type("CollisionEvent", (), {"frame": self.world.frame, "other_actor": other_actor})())

    def __repr__(self) -> str:
        return f"Actor(id={self.id}, type={self.type_id})"


class _StandInSensorData:
    """carla.SensorData's face: frame (and its old name frame_number), timestamp, the sensor's world transform."""

    def __init__(self, frame: int, timestamp: float, transform):
        self.frame = self.frame_number = frame
        self.timestamp, self.transform = timestamp, transform


class StandInGnssMeasurement(_StandInSensorData):
    """carla.GnssMeasurement's face (the real class cannot be made from Python)."""

    def __init__(self, frame: int, timestamp: float, transform, latitude: float, longitude: float, altitude: float):
        super().__init__(frame, timestamp, transform)
        self.latitude, self.longitude, self.altitude = latitude, longitude, altitude

    def __repr__(self) -> str:
        return (f"GnssMeasurement(frame={self.frame}, timestamp={self.timestamp:.6f}, lat={self.latitude:.6f}, "
                f"lon={self.longitude:.6f}, alt={self.altitude:.6f})")


class StandInIMUMeasurement(_StandInSensorData):
    """carla.IMUMeasurement's face (the real class cannot be made from Python)."""

    def __init__(self, frame: int, timestamp: float, transform, accelerometer, gyroscope, compass: float):
        super().__init__(frame, timestamp, transform)
        self.accelerometer, self.gyroscope, self.compass = accelerometer, gyroscope, compass

    def __repr__(self) -> str:
        return (f"IMUMeasurement(frame={self.frame}, timestamp={self.timestamp:.6f}, accelerometer="
                f"{self.accelerometer}, gyroscope={self.gyroscope}, compass={self.compass:.6f})")


class _MeasuringSensor:
    """What a stand-in GNSS or IMU measures each tick: carla_bridge.pseudo_sensors' readings of its mount on its
    parent (or of itself, unattached), with the blueprint's noise drawn from its noise_seed, every sensor_tick."""

    def __init__(self, actor: "StandInActor"):
        self.actor = actor
        self._mount = None
        self._sensors = None
        self._last_emit_s = None
        self._rng = np.random.default_rng(_atoi(actor.attributes.get("noise_seed", "0")))

    def _number(self, key: str) -> float:
        return _atof(self.actor.attributes.get(key, "0"))

    def measure(self, frame: int, elapsed_s: float):
        """The measurement of this tick, or None where sensor_tick says not yet."""
        from carla_bridge.pseudo_sensors import PseudoSensors
        from carla_bridge.transforms import pose_from_transform
        from neural_sensor.world import AgentState, WorldSnapshot

        actor, number = self.actor, self._number
        tick_s = number("sensor_tick")
        if self._last_emit_s is not None and tick_s > 0.0 and elapsed_s - self._last_emit_s < tick_s - 1e-9:
            return None
        carrier = actor.parent
        t = actor._transform if carrier is not None else carla.Transform()
        mount = (t.location.x, t.location.y, t.location.z, t.rotation.roll, t.rotation.pitch, t.rotation.yaw)
        if mount != self._mount:  # a moved mount measures afresh (as a sensor spawned there)
            self._mount = mount
            sensor = dict(zip(("x", "y", "z", "roll", "pitch", "yaw"), mount), type=actor.type_id, id="s")
            self._sensors = PseudoSensors([sensor], actor.world.get_map().to_opendrive()
                                          if actor.type_id == "sensor.other.gnss" else None,
                                          gnss_projection="carla-0.9.16")  # (the stand-in is a 0.9.16 server)
        pose = pose_from_transform((carrier or actor).get_transform())
        speed = carrier.speed_mps if carrier is not None else 0.0
        snapshot = WorldSnapshot(frame, elapsed_s, AgentState(0, "car", (1.0, 1.0, 1.0), pose, speed))
        _, data = self._sensors.readings(snapshot)["s"]
        self._last_emit_s = elapsed_s
        transform = actor.get_transform()
        normal = lambda std: float(self._rng.normal(0.0, std)) if std > 0.0 else 0.0
        if actor.type_id == "sensor.other.gnss":
            lat, lon, alt = (float(v) + number(f"noise_{k}_bias") + normal(number(f"noise_{k}_stddev"))
                             for v, k in zip(data, ("lat", "lon", "alt")))
            return StandInGnssMeasurement(frame, elapsed_s, transform, lat, lon, alt)
        accel = [float(v) + normal(number(f"noise_accel_stddev_{a}")) for v, a in zip(data[:3], "xyz")]
        gyro = [float(v) + number(f"noise_gyro_bias_{a}") + normal(number(f"noise_gyro_stddev_{a}"))
                for v, a in zip(data[3:6], "xyz")]
        return StandInIMUMeasurement(frame, elapsed_s, transform, carla.Vector3D(*accel), carla.Vector3D(*gyro),
                                     float(data[6]))


class StandInActorList(list):
    """carla.ActorList's face: a list with filter(wildcard) and find(id)."""

    def filter(self, pattern: str) -> "StandInActorList":
        return StandInActorList(a for a in self if fnmatch.fnmatchcase(a.type_id, pattern))

    def find(self, actor_id: int):
        return next((a for a in self if a.id == actor_id), None)


class StandInActorSnapshot:
    def __init__(self, actor: StandInActor):
        self.id = actor.id
        self._transform = actor.get_transform()
        self._velocity = actor.get_velocity()

    def get_transform(self):
        return self._transform

    def get_velocity(self):
        return self._velocity

    def get_angular_velocity(self):
        return carla.Vector3D(0.0, 0.0, 0.0)

    def get_acceleration(self):
        return carla.Vector3D(0.0, 0.0, 0.0)


class StandInSnapshot:
    """carla.WorldSnapshot's face: id, frame, a real carla.Timestamp, find, has_actor, iteration."""

    def __init__(self, world_id: int, frame: int, elapsed_seconds: float, delta_seconds: float, actors):
        self.id = world_id
        self.frame = frame
        self.timestamp = carla.Timestamp(frame, elapsed_seconds, delta_seconds, elapsed_seconds)
        self._snaps = {a.id: StandInActorSnapshot(a) for a in actors}

    def __iter__(self):
        return iter(list(self._snaps.values()))

    def __len__(self) -> int:
        return len(self._snaps)

    def find(self, actor_id: int):
        return self._snaps.get(actor_id)

    def has_actor(self, actor_id: int) -> bool:
        return actor_id in self._snaps


class StandInResponse:
    """carla.command.Response's face: actor_id, error, has_error()."""

    def __init__(self, actor_id: int = 0, error: str = ""):
        self.actor_id, self.error = int(actor_id), str(error)

    def has_error(self) -> bool:
        return bool(self.error)

    def __repr__(self) -> str:
        return f"Response(actor_id={self.actor_id}, error={self.error!r})"


# --------------------------------------------------------------------------- the world
class StandInWorld:
    """World with on_tick callbacks on a stream thread, spawning, synchronous ticking, a kinematic vehicle model."""

    def __init__(self, opendrive: str = "", map_name: str = "StandIn"):
        self.id = next(_world_ids)
        self.opendrive = opendrive
        self._map_name = map_name
        self._map = None
        self.settings = StandInSettings()
        self.settings_history: list = []
        self.actors: dict[int, StandInActor] = {}  # alive, as the server holds them
        self._seen: dict[int, StandInActor] = {}  # every actor spawned here (libcarla's client-side actor cache)
        self._ids = itertools.count(start=100)
        self._callbacks: dict[int, object] = {}
        self._callback_ids = itertools.count(start=1)
        self.frame = 5000
        self.elapsed_seconds = 0.0
        self._delta_seconds = 0.0
        self._weather = carla.WeatherParameters()
        self._lock = threading.RLock()
        self._stream: queue.Queue = queue.Queue()
        self._stream_thread = threading.Thread(target=self._run_stream, name=f"standin-stream-{self.id}", daemon=True)
        self._stream_thread.carla_stream = True  # (libcarla's stream threads are C++ ones: the bridge tells them apart)
        self._stream_thread.start()
        self._expired = False  # a new episode was started (StandInClient._new_episode): libcarla refuses this world
        self._spectator = self.spawn_actor(StandInBlueprint("spectator"), carla.Transform())
        self._snapshot = self._make_snapshot()

    def _episode(self) -> None:
        """As libcarla's EpisodeProxy: a world whose episode a new one replaced refuses its calls."""
        if self._expired:
            raise RuntimeError("trying to access an expired episode; a new episode was started in the simulation "
                               "but an object tried accessing the old one.")

    # settings, map, weather
    def get_settings(self):
        self._episode()
        return StandInSettings(self.settings.synchronous_mode, self.settings.fixed_delta_seconds)

    def apply_settings(self, settings) -> int:
        self._episode()
        self.settings = StandInSettings(settings.synchronous_mode, settings.fixed_delta_seconds)
        self.settings_history.append(self.settings)
        return self.frame

    def get_map(self) -> StandInMap:
        self._episode()
        if self._map is None:
            if not self.opendrive:
                from neural_sensor.scene.layout import straight_road
                from neural_sensor.scene.opendrive import layout_to_opendrive

                self.opendrive = layout_to_opendrive(straight_road(200.0, buildings=False))
            self._map = StandInMap(self._map_name, self.opendrive)
        return self._map

    def get_weather(self):
        self._episode()
        return self._weather

    def set_weather(self, weather) -> None:
        self._episode()
        self._weather = weather

    def get_blueprint_library(self) -> StandInLibrary:
        self._episode()
        return StandInLibrary()

    def get_spectator(self) -> StandInActor:
        self._episode()
        return self._spectator

    # actors
    def spawn_actor(self, blueprint, transform, attach_to=None, attachment_type=None, bone: str = ""):
        """libcarla's keyword names (bone, not socket_name: that is command.SpawnActor's). As the server's
        spawn_actor_with_parent, a parent that is gone is an error raised after the child was spawned (the server
        leaves that child in the world)."""
        self._episode()
        attributes = {a.id: a.as_str() for a in blueprint} if hasattr(blueprint, "__iter__") else {}
        with self._lock:
            actor = StandInActor(self, next(self._ids), blueprint.id, transform, attach_to, attributes)
            self.actors[actor.id] = actor
            self._seen[actor.id] = actor
            if attach_to is not None and getattr(attach_to, "id", None) not in self.actors:
                raise RuntimeError("unable to attach actor: parent actor not found")
        return actor

    def try_spawn_actor(self, blueprint, transform, attach_to=None, attachment_type=None, bone: str = ""):
        """As spawn_actor: the stand-in has no collision test, so it never answers None."""
        self._episode()
        return self.spawn_actor(blueprint, transform, attach_to, attachment_type, bone)

    def get_actors(self, ids=None) -> StandInActorList:
        self._episode()
        with self._lock:
            if ids is None:
                return StandInActorList(self.actors.values())
            return StandInActorList(self.actors.get(i) or self._seen[i] for i in ids
                                    if i in self.actors or i in self._seen)

    def get_actor(self, actor_id: int):
        """As libcarla's: its client keeps every actor it has seen (dead ones too) in a cache read first."""
        self._episode()
        return self.actors.get(actor_id) or self._seen.get(actor_id)

    # ticking
    def on_tick(self, callback) -> int:
        self._episode()
        if not callable(callback):
            raise TypeError("callback argument must be callable!")
        callback_id = next(self._callback_ids)
        self._callbacks[callback_id] = callback
        return callback_id

    def remove_on_tick(self, callback_id: int) -> None:
        self._episode()
        self._callbacks.pop(callback_id, None)

    def get_snapshot(self) -> StandInSnapshot:
        self._episode()
        return self._snapshot

    def _make_snapshot(self) -> StandInSnapshot:
        with self._lock:
            return StandInSnapshot(self.id, self.frame, self.elapsed_seconds, self._delta_seconds,
                                   list(self.actors.values()))

    def _step(self) -> int:
        dt = self.settings.fixed_delta_seconds or 0.05
        with self._lock:
            for actor in self.actors.values():
                if actor.type_id.startswith("vehicle.") and actor.physics and actor.parent is None:
                    c = actor.control  # speed signed along the heading: reverse drives backwards
                    actor.speed_mps = speed_after(actor.speed_mps, c, dt, 3.5, 8.0)
                    t = actor.get_transform()
                    yaw = t.rotation.yaw + math.degrees(actor.speed_mps * dt / 2.8
                                                        * math.tan(c.steer * math.radians(35)))
                    step = actor.speed_mps * dt
                    loc = carla.Location(t.location.x + step * math.cos(math.radians(yaw)),
                                         t.location.y + step * math.sin(math.radians(yaw)), t.location.z)
                    actor.set_transform(carla.Transform(loc, carla.Rotation(pitch=t.rotation.pitch, yaw=yaw,
                                                                            roll=t.rotation.roll)))
            self.frame += 1
            # as the server's: Unreal's float DeltaSeconds, 0.05 -> 0.0500000007 (the leaderboard's speedometer,
            # `now - last > 1 / rate`, read every other tick at an exact 0.05)
            delta = struct.unpack("f", struct.pack("f", dt))[0]
            self.elapsed_seconds += delta
            self._delta_seconds = delta
            self._snapshot = snapshot = self._make_snapshot()
            measured = []  # (actor, its measurement) of each listening GNSS / IMU
            for actor in self.actors.values():
                if actor._measuring is not None and actor._callback is not None:
                    data = actor._measuring.measure(self.frame, self.elapsed_seconds)
                    if data is not None:
                        measured.append((actor, data))
        self._stream.put((snapshot, measured))  # the callbacks run on the stream thread, after tick() returned
        return self.frame

    def tick(self, seconds: float = 10.0) -> int:
        """Advance one step; returns the new frame id. on_tick callbacks run afterwards on the stream thread."""
        self._episode()
        return self._step()

    def wait_for_tick(self, seconds: float = 10.0) -> StandInSnapshot:
        """The stand-in has no free-running server: it advances one step itself and returns that snapshot."""
        self._episode()
        self._step()
        return self._snapshot

    def _run_stream(self) -> None:
        while True:
            item = self._stream.get()
            if item is None:  # the episode ended (the thread goes with it)
                self._stream.task_done()
                return
            snapshot, measured = item
            calls = [(callback, snapshot) for callback in list(self._callbacks.values())]
            calls += [(actor._callback, data) for actor, data in measured if actor._callback is not None]
            for callback, value in calls:  # (a sensor's data after the tick's on_tick callbacks)
                try:
                    callback(value)
                except Exception:  # noqa: BLE001 - libcarla's MakeCallback: PyErr_Print, then carry on
                    traceback.print_exc()
            self._stream.task_done()

    def wait_for_callbacks(self, timeout_s: float = 30.0) -> None:
        """Block until every snapshot so far went through the on_tick callbacks (tests; no CARLA equivalent)."""
        deadline = time.monotonic() + timeout_s
        while self._stream.unfinished_tasks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"stand-in: on_tick callbacks still running after {timeout_s} s")
            time.sleep(0.001)

    # commands
    def _apply(self, command) -> StandInResponse:
        from carla_bridge.commands import LIBCARLA_DESTROY_ACTOR, LIBCARLA_SPAWN_ACTOR

        cmd = carla.command
        spawn_request = getattr(command, "neural_spawn_request", None)
        if spawn_request is not None:  # a SpawnActor built through carla_bridge.client with a readable blueprint
            blueprint, transform, parent_id = spawn_request
            parent = (self.actors.get(parent_id) or self._seen.get(parent_id)) if parent_id else None
            if parent_id and parent is None:  # (the server's answer; it had spawned the sensor free in the world)
                return StandInResponse(0, "unable to attach actor: parent actor not found")
            try:
                return StandInResponse(self.spawn_actor(blueprint, transform, parent).id)
            except RuntimeError as err:  # a parent gone: the server answers the error (and keeps the child)
                return StandInResponse(0, str(err))
        if isinstance(command, LIBCARLA_SPAWN_ACTOR):
            return StandInResponse(0, "stand-in: a carla.command.SpawnActor's blueprint cannot be read from Python; "
                                      "build the batch with carla_bridge.client.NeuralClient or use spawn_actor")
        actor = self.actors.get(getattr(command, "actor_id", -1))
        if actor is None:
            return StandInResponse(getattr(command, "actor_id", 0), "unable to find actor: actor not found")
        if isinstance(command, LIBCARLA_DESTROY_ACTOR):
            actor.destroy()
        elif isinstance(command, cmd.ApplyVehicleControl):
            actor.apply_control(command.control)
        elif isinstance(command, cmd.ApplyTransform):
            actor.set_transform(command.transform)
        elif isinstance(command, cmd.SetSimulatePhysics):
            actor.set_simulate_physics(command.enabled)
        elif isinstance(command, cmd.SetAutopilot):
            actor.set_autopilot(command.enabled)
        else:
            return StandInResponse(actor.id, f"stand-in: {type(command).__name__} is not supported")
        return StandInResponse(actor.id)


class StandInTrafficManager:
    """carla.TrafficManager's face for the calls traffic scripts make: settings are recorded, and nothing drives
    (the stand-in has no traffic manager; set_autopilot vehicles stand still unless given VehicleControl)."""

    def __init__(self, port: int = 8000):
        self.port = int(port)
        self.settings: dict = {}

    def get_port(self) -> int:
        return self.port

    def _record(self, name: str, *args) -> None:
        self.settings[name] = args

    def set_synchronous_mode(self, mode: bool = True) -> None:
        self._record("synchronous_mode", bool(mode))

    def set_random_device_seed(self, seed: int) -> None:
        self._record("random_device_seed", int(seed))

    def set_global_distance_to_leading_vehicle(self, distance: float) -> None:
        self._record("global_distance_to_leading_vehicle", float(distance))

    def global_percentage_speed_difference(self, percentage: float) -> None:
        self._record("global_percentage_speed_difference", float(percentage))

    def set_hybrid_physics_mode(self, enabled: bool = True) -> None:
        self._record("hybrid_physics_mode", bool(enabled))

    def set_respawn_dormant_vehicles(self, enabled: bool = True) -> None:
        self._record("respawn_dormant_vehicles", bool(enabled))


class StandInClient:
    """carla.Client's face: set_timeout, versions, get_world, generate_opendrive_world, load_world, reload_world,
    apply_batch(_sync)."""

    def __init__(self, host: str = "localhost", port: int = 2000, worker_threads: int = 0):
        self.host, self.port = host, int(port)
        self.timeout_s = 5.0
        self.world = StandInWorld()
        self._traffic_managers: dict[int, StandInTrafficManager] = {}

    def set_timeout(self, seconds: float) -> None:
        self.timeout_s = float(seconds)

    def get_client_version(self) -> str:
        return "0.9.16"

    def get_server_version(self) -> str:
        return self.get_client_version()

    def get_world(self) -> StandInWorld:
        return self.world

    def get_trafficmanager(self, port: int = 8000) -> StandInTrafficManager:
        if port not in self._traffic_managers:
            self._traffic_managers[port] = StandInTrafficManager(port)
        return self._traffic_managers[port]

    def get_available_maps(self) -> list[str]:
        return [f"/Game/Carla/Maps/{self.world._map_name}"]

    def generate_opendrive_world(self, opendrive: str, parameters=None, reset_settings: bool = True) -> StandInWorld:
        """As the server's: a text it cannot parse is refused ("opendrive could not be correctly parsed") and the
        old world goes on; else a new world on that map, the old one's actors destroyed."""
        try:
            parsed = StandInMap("OpenDriveMap", opendrive)
        except (RuntimeError, TypeError, ValueError):  # libcarla prints its parser's error on stderr first
            raise RuntimeError("opendrive could not be correctly parsed") from None
        world = self._new_episode(opendrive, "OpenDriveMap", reset_settings)
        world._map = parsed  # (parsed once: the world's get_map() is this map)
        return world

    def load_world(self, map_name: str, reset_settings: bool = True, map_layers=None) -> StandInWorld:
        """As the server's: a map it does not have is "map not found" (the stand-in has one map, its own, under
        the name get_available_maps lists or its last part); else a new world, the old one's actors destroyed."""
        current = self.world._map_name
        if str(map_name).rsplit("/", 1)[-1] != current:
            raise RuntimeError("map not found")
        return self._new_episode(self.world.opendrive, current, reset_settings)

    def reload_world(self, reset_settings: bool = True) -> StandInWorld:
        """The current map again, as a new world; the old one's actors destroyed."""
        return self._new_episode(self.world.opendrive, self.world._map_name, reset_settings)

    def _new_episode(self, opendrive: str, map_name: str, reset_settings: bool) -> StandInWorld:
        """A new episode, as the server starts one: every actor of the old world is destroyed (an old handle's
        is_alive is False), the world id changes, and the settings are the defaults unless reset_settings is
        False (then the old ones, synchronous mode included, carry over)."""
        old = self.world
        settings = old.get_settings()
        with old._lock:
            for actor in old.actors.values():
                actor._alive = False
            old.actors.clear()
            old._expired = True
        old._stream.put(None)
        self.world = StandInWorld(opendrive, map_name=map_name)
        if not reset_settings:
            self.world.apply_settings(settings)
        return self.world

    def apply_batch(self, commands, do_tick: bool = False) -> None:
        self.apply_batch_sync(commands, do_tick)

    def apply_batch_sync(self, commands, do_tick: bool = False) -> list[StandInResponse]:
        responses = [self.world._apply(command) for command in commands]
        if do_tick:
            self.world.tick()
        return responses
