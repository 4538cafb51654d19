"""The world state a simulator hands over each tick: WorldSnapshot and AgentState.

Defined here, in neural_sensor, because the sensor rig consumes them and
neural_sensor imports nothing from carla_bridge; carla_bridge.simulator
re-exports them next to the Simulator protocol that produces them.

Frames: world FLU (x forward, y left, z up), metres, seconds. An agent's pose
`pose_agent_to_world` places its local box frame (FLU, origin at the centre of
the box's bottom face) in the world.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from neural_sensor.poses import check_pose


def pose_from_xyz_yaw(x_m: float, y_m: float, z_m: float, yaw_rad: float) -> np.ndarray:
    """[4, 4] pose at (x, y, z) turned by yaw about world z (FLU: counter-clockwise seen from above)."""
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    pose = np.eye(4)
    pose[:2, :2] = [[c, -s], [s, c]]
    pose[:3, 3] = (x_m, y_m, z_m)
    return pose


@dataclass(frozen=True)
class AgentState:
    """One actor: id (> 0; the ego is 0), kind (car | truck | pedestrian | cyclist), box size, pose, speed."""

    agent_id: int
    kind: str
    size_m: tuple[float, float, float]  # length, width, height
    pose_agent_to_world: np.ndarray  # [4, 4]
    speed_mps: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "pose_agent_to_world", check_pose(self.pose_agent_to_world, f"agent {self.agent_id} pose"))
        if not all(math.isfinite(v) and v > 0 for v in self.size_m):
            raise ValueError(f"agent {self.agent_id}: size_m must be positive, got {self.size_m}")
        if not math.isfinite(self.speed_mps):
            raise ValueError(f"agent {self.agent_id}: speed_mps is not finite ({self.speed_mps})")

    @property
    def position_m(self) -> np.ndarray:
        return self.pose_agent_to_world[:3, 3]

    @property
    def yaw_rad(self) -> float:
        return math.atan2(self.pose_agent_to_world[1, 0], self.pose_agent_to_world[0, 0])


@dataclass(frozen=True)
class WorldSnapshot:
    """The world at one tick: CARLA-like frame id, simulation time, the ego and the other agents."""

    frame: int
    timestamp_s: float
    ego: AgentState
    agents: tuple[AgentState, ...] = ()
    collisions: tuple[int, ...] = field(default=())  # ids of what the ego hit this tick; -1 = the static world

    def __post_init__(self) -> None:
        if not math.isfinite(self.timestamp_s):
            raise ValueError(f"WorldSnapshot.timestamp_s is not finite ({self.timestamp_s})")
        if not isinstance(self.ego, AgentState):
            raise TypeError(f"WorldSnapshot.ego: expected an AgentState, got {type(self.ego).__name__}")
        seen = set()
        for agent in self.agents:  # an agent's id labels its Gaussians (instance 0 is the background): said here,
            if not isinstance(agent, AgentState):  # not at the capture that draws it
                raise TypeError(f"WorldSnapshot.agents: expected AgentStates, got a {type(agent).__name__}")
            if not (isinstance(agent.agent_id, (int, np.integer)) and 0 < agent.agent_id < 2**31):
                raise ValueError(f"WorldSnapshot.agents: agent id {agent.agent_id!r} ({agent.kind}): an agent's id "
                                 "must be an integer in 1..2**31 - 1 (0 is the background in the instance labels, "
                                 "which are int32)")
            if agent.agent_id in seen:
                raise ValueError(f"WorldSnapshot.agents: agent id {agent.agent_id} is given twice")
            seen.add(agent.agent_id)
