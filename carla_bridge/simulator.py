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

from neural_sensor.world import AgentState, WorldSnapshot

__all__ = ["AgentState", "Simulator", "VehicleControl", "WorldSnapshot"]


@dataclass(frozen=True)
class VehicleControl:
    """The fields of carla.VehicleControl that drive a car: throttle, steer, brake.

    throttle in [0, 1], steer in [-1, 1] (positive steers right, as in CARLA), brake in [0, 1].
    NaN or out-of-range values raise ValueError naming the field and value.
    """

    throttle: float = 0.0
    steer: float = 0.0
    brake: float = 0.0

    def __post_init__(self) -> None:
        for name, lo, hi in (("throttle", 0.0, 1.0), ("steer", -1.0, 1.0), ("brake", 0.0, 1.0)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not lo <= value <= hi:
                raise ValueError(f"VehicleControl.{name} must be a number in [{lo}, {hi}], got {value!r}")
            object.__setattr__(self, name, float(value))

    @classmethod
    def from_any(cls, control) -> "VehicleControl":
        """Accept our VehicleControl, a carla.VehicleControl, anything with throttle / steer / brake, or a mapping
        with those three keys (`{"throttle": 0.5, "steer": 0.0, "brake": 0.0}`)."""
        if isinstance(control, cls):
            return control
        if isinstance(control, Mapping):
            missing = [k for k in ("throttle", "steer", "brake") if k not in control]
            if missing:
                raise ValueError(f"control must have throttle, steer and brake, got a mapping without "
                                 f"{', '.join(missing)}")
            return cls(control["throttle"], control["steer"], control["brake"])
        try:
            return cls(control.throttle, control.steer, control.brake)
        except AttributeError:
            raise ValueError(f"control must have throttle, steer and brake, got {type(control).__name__}") from None


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
