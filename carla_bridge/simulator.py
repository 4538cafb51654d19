"""The Simulator protocol every world source implements, and the control it takes.

`EmbeddedSimulator` (embedded.py, no server) and `CarlaSimulator` (carla_world.py,
another issue) both produce `WorldSnapshot`s; the scenario runner and the neural
sensor rig only see this face. WorldSnapshot and AgentState are defined in
neural_sensor.world (the rig consumes them, and neural_sensor imports nothing
from here) and re-exported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from neural_sensor.world import AgentState, WorldSnapshot

__all__ = ["AgentState", "Simulator", "VehicleControl", "WorldSnapshot"]


@dataclass(frozen=True)
class VehicleControl:
    """The fields of carla.VehicleControl that drive a car: throttle, steer, brake, hand_brake, reverse.

    throttle in [0, 1], steer in [-1, 1] (positive steers right, as in CARLA), brake in [0, 1]; hand_brake
    brakes fully; reverse makes the throttle drive backwards. NaN or out-of-range values raise ValueError naming
    the field and value. (manual_gear_shift and gear are not modelled.)
    """

    throttle: float = 0.0
    steer: float = 0.0
    brake: float = 0.0
    hand_brake: bool = False
    reverse: bool = False

    def __post_init__(self) -> None:
        for name, lo, hi in (("throttle", 0.0, 1.0), ("steer", -1.0, 1.0), ("brake", 0.0, 1.0)):
            value = getattr(self, name)
            # (numpy's numbers too: an agent's np.float32(0.5) was refused as if it were out of range)
            if not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value) \
                    or not lo <= value <= hi:
                raise ValueError(f"VehicleControl.{name} must be a number in [{lo}, {hi}], got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("hand_brake", "reverse"):  # True / False, or 0 / 1 (libcarla's bool conversion takes both)
            value = getattr(self, name)
            if not (isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1))):
                raise ValueError(f"VehicleControl.{name} must be True or False, got {value!r}")
            object.__setattr__(self, name, bool(value))

    @classmethod
    def from_any(cls, control) -> "VehicleControl":
        """Accept our VehicleControl, a carla.VehicleControl, anything with throttle / steer / brake, or a mapping
        with those three keys (`{"throttle": 0.5, "steer": 0.0, "brake": 0.0}`); hand_brake and reverse are read
        where present (False otherwise)."""
        if isinstance(control, cls):
            return control
        if isinstance(control, Mapping):
            missing = [k for k in ("throttle", "steer", "brake") if k not in control]
            if missing:
                raise ValueError(f"control must have throttle, steer and brake, got a mapping without "
                                 f"{', '.join(missing)}")
            return cls(control["throttle"], control["steer"], control["brake"], control.get("hand_brake", False),
                       control.get("reverse", False))
        try:
            return cls(control.throttle, control.steer, control.brake, getattr(control, "hand_brake", False),
                       getattr(control, "reverse", False))
        except AttributeError:
            raise ValueError(f"control must have throttle, steer and brake, got {type(control).__name__}") from None


def speed_after(speed_mps: float, control, dt_s: float, accel_mps2: float, brake_mps2: float,
                drag_per_s: float = 0.0) -> float:
    """A car's speed, signed along its heading (negative: backwards, in reverse), after dt_s under `control` (a
    VehicleControl or a carla.VehicleControl): the throttle pulls the way the gear does (accel_mps2 at full
    throttle), the brakes (brake_mps2 at full brake, the hand brake fully) and a drag of drag_per_s x |speed| act
    against the motion and never past rest (the embedded ego's and the stand-in server's vehicles)."""
    gear, brake = (-1.0 if control.reverse else 1.0), (1.0 if control.hand_brake else control.brake)
    moving = 1.0 if speed_mps > 0.0 else -1.0 if speed_mps < 0.0 else gear  # at rest: the gear's way
    accel = accel_mps2 * control.throttle * gear - brake_mps2 * brake * moving - drag_per_s * abs(speed_mps) * moving
    speed = speed_mps + accel * dt_s
    if speed * moving < 0.0 and not (gear != moving and control.throttle > 0.0):  # the brakes stop the car, no more
        speed = 0.0
    return speed


@runtime_checkable
class Simulator(Protocol):
    """A world that advances in fixed steps under the ego's control."""

    dt_s: float  # simulated seconds per tick

    def tick(self) -> WorldSnapshot:
        """Advance one step (applying the last control) and return the new world state."""

    def apply_control(self, control: VehicleControl) -> None:
        """Set the ego's control for the following ticks."""

    def close(self) -> None:
        """Release the world (restore settings, destroy actors)."""
