"""A stand-in for the parts of a CARLA server that the bridge talks to, for tests and benchmarks without one.

It speaks the client API the bridge uses (generate_opendrive_world, settings, blueprint
library, spawn_actor / try_spawn_actor, tick, get_snapshot, on_tick, get_actors) with
real `carla` value types (Transform, Location, Vector3D, BoundingBox), and moves a vehicle
under VehicleControl with a plain kinematic model. It is not a simulator of CARLA's
physics; it exists so the bridge's code paths run, frame ids and all, on machines
without a server. Needs the `carla` package.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import carla

# (half extents, box centre height above the actor origin): vehicles' origins are at their wheels' base,
# walkers' at the middle of their capsule, as in CARLA
_BOXES = {"vehicle": ((2.25, 0.95, 0.75), 0.75), "walker": ((0.25, 0.3, 0.9), 0.0)}


@dataclass
class StandInSettings:
    synchronous_mode: bool = False
    fixed_delta_seconds: float | None = None


class StandInBlueprint:
    def __init__(self, type_id: str, **attributes):
        self.id = type_id
        self._attributes = {k: str(v) for k, v in attributes.items()}

    def set_attribute(self, key, value) -> None:
        self._attributes[str(key)] = str(value)

    def has_attribute(self, key) -> bool:
        return key in self._attributes

    def get_attribute(self, key):
        value = self._attributes[key]
        return type("Attribute", (), {"as_str": lambda self: value})()


class StandInLibrary:
    def find(self, type_id: str) -> StandInBlueprint:
        return StandInBlueprint(type_id)


class StandInActor:
    def __init__(self, world, actor_id: int, type_id: str, transform, parent=None):
        self.world, self.id, self.type_id, self.parent = world, actor_id, type_id, parent
        family = type_id.split(".")[0]
        extent, z = _BOXES.get(family, ((0.1, 0.1, 0.1), 0.0))
        self.bounding_box = carla.BoundingBox(carla.Location(0.0, 0.0, z), carla.Vector3D(*extent))
        self.attributes = {"number_of_wheels": "4"} if family == "vehicle" else {}
        self._transform = transform
        self.speed_mps = 0.0
        self.control = carla.VehicleControl()
        self.physics = True
        self.alive = True
        self._callback = None

    # actor face
    def get_transform(self):
        return self._transform

    def set_transform(self, transform) -> None:
        self._transform = transform

    def set_simulate_physics(self, enabled: bool) -> None:
        self.physics = bool(enabled)

    def apply_control(self, control) -> None:
        self.control = control

    def get_velocity(self):
        if not self.physics:  # like CARLA: an actor moved by set_transform reports no velocity
            return carla.Vector3D(0.0, 0.0, 0.0)
        yaw = math.radians(self._transform.rotation.yaw)
        return carla.Vector3D(self.speed_mps * math.cos(yaw), self.speed_mps * math.sin(yaw), 0.0)

    def destroy(self) -> bool:
        self.alive = False
        self.world.actors.pop(self.id, None)
        return True

    # sensor face
    def listen(self, callback) -> None:
        self._callback = callback

    def stop(self) -> None:
        self._callback = None

    def emit_collision(self, other_actor) -> None:
        """Fire a collision event at this (sensor) actor for the current frame, as CARLA would."""
        if self._callback is not None:
            self._callback(type("CollisionEvent", (), {"frame": self.world.frame, "other_actor": other_actor})())


class StandInActorSnapshot:
    def __init__(self, actor: StandInActor):
        self.id = actor.id
        self._transform = actor.get_transform()
        self._velocity = actor.get_velocity()

    def get_transform(self):
        return self._transform

    def get_velocity(self):
        return self._velocity


class StandInSnapshot:
    def __init__(self, frame: int, elapsed_seconds: float, actors):
        self.frame = frame
        self.timestamp = type("Timestamp", (), {"elapsed_seconds": elapsed_seconds})()
        self._snaps = {a.id: StandInActorSnapshot(a) for a in actors}

    def __iter__(self):
        return iter(self._snaps.values())

    def __len__(self) -> int:
        return len(self._snaps)

    def find(self, actor_id: int):
        return self._snaps.get(actor_id)


class StandInWorld:
    """World with on_tick callbacks, spawning, synchronous ticking and a kinematic vehicle model."""

    def __init__(self, opendrive: str = ""):
        self.opendrive = opendrive
        self.settings = StandInSettings()
        self.settings_history: list[StandInSettings] = []
        self.actors: dict[int, StandInActor] = {}
        self._ids = itertools.count(start=100)
        self._callbacks: dict[int, object] = {}
        self._callback_ids = itertools.count(start=1)
        self.frame = 5000
        self.elapsed_seconds = 0.0

    def get_settings(self) -> StandInSettings:
        return StandInSettings(self.settings.synchronous_mode, self.settings.fixed_delta_seconds)

    def apply_settings(self, settings) -> None:
        self.settings = StandInSettings(settings.synchronous_mode, settings.fixed_delta_seconds)
        self.settings_history.append(self.settings)

    def get_blueprint_library(self) -> StandInLibrary:
        return StandInLibrary()

    def spawn_actor(self, blueprint, transform, attach_to=None) -> StandInActor:
        actor = StandInActor(self, next(self._ids), blueprint.id, transform, attach_to)
        self.actors[actor.id] = actor
        return actor

    try_spawn_actor = spawn_actor

    def get_actors(self, ids=None):
        return [self.actors[i] for i in ids] if ids is not None else list(self.actors.values())

    def on_tick(self, callback) -> int:
        callback_id = next(self._callback_ids)
        self._callbacks[callback_id] = callback
        return callback_id

    def remove_on_tick(self, callback_id: int) -> None:
        self._callbacks.pop(callback_id, None)

    def get_snapshot(self) -> StandInSnapshot:
        return StandInSnapshot(self.frame, self.elapsed_seconds, self.actors.values())

    def tick(self) -> int:
        dt = self.settings.fixed_delta_seconds or 0.05
        for actor in self.actors.values():
            if actor.type_id.startswith("vehicle.") and actor.physics:
                c = actor.control
                actor.speed_mps = max(0.0, actor.speed_mps + (3.5 * c.throttle - 8.0 * c.brake) * dt)
                t = actor.get_transform()
                yaw = t.rotation.yaw + math.degrees(actor.speed_mps * dt / 2.8 * math.tan(c.steer * math.radians(35)))
                step = actor.speed_mps * dt
                loc = carla.Location(t.location.x + step * math.cos(math.radians(yaw)),
                                     t.location.y + step * math.sin(math.radians(yaw)), t.location.z)
                actor.set_transform(carla.Transform(loc, carla.Rotation(pitch=t.rotation.pitch, yaw=yaw,
                                                                        roll=t.rotation.roll)))
        self.frame += 1
        self.elapsed_seconds += dt
        snapshot = self.get_snapshot()
        for callback in list(self._callbacks.values()):
            callback(snapshot)
        return self.frame


class StandInClient:
    """carla.Client's face for the calls CarlaSimulator makes."""

    def __init__(self):
        self.world = StandInWorld()

    def generate_opendrive_world(self, opendrive: str) -> StandInWorld:
        self.world = StandInWorld(opendrive)
        return self.world

    def get_world(self) -> StandInWorld:
        return self.world
