"""CarlaSimulator: the Simulator protocol over a real CARLA server, in synchronous mode.

The scenario's layout is exported as OpenDRIVE and loaded with
`client.generate_opendrive_world`, so CARLA's physics and the neural scene share
the same roads. The ego is a CARLA vehicle driven by our control through
physics; the other agents are CARLA actors placed each tick at the poses the
scenario's behaviours give (the embedded simulator's kinematics run alongside
as the behaviour engine), and a collision sensor on the ego reports hits.
Collisions with anything that is not an agent (walls, the static world) are
reported with id -1. Synchronous mode with fixed_delta_seconds is switched on at
start and the settings from before are restored by close() (also on Ctrl-C, via the context
manager or the runner's finally).
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading

import numpy as np

from carla_bridge.embedded import EgoStart, EmbeddedSimulator
from carla_bridge.simulator import VehicleControl
from carla_bridge.transforms import actor_origin_pose, agent_box, transform_from_pose
from neural_sensor.scene.layout import Layout
from neural_sensor.scene.opendrive import layout_to_opendrive
from neural_sensor.world import AgentState, WorldSnapshot

BLUEPRINTS = {"car": "vehicle.tesla.model3", "truck": "vehicle.carlamotors.carlacola",
              "pedestrian": "walker.pedestrian.0001", "cyclist": "vehicle.diamondback.century"}


def carla_address(address: str) -> tuple[str, int]:
    """(host, port) of "HOST:PORT", "HOST" or "HOST:" (port 2000), "" for localhost; ValueError naming bad input."""
    host, _, port = address.partition(":")
    try:
        port_number = int(port or 2000)
    except ValueError:
        raise ValueError(f"--carla must be HOST:PORT, got {address!r}") from None
    if not 0 < port_number < 65536:
        raise ValueError(f"--carla port must be in 1..65535, got {port_number}")
    return host or "localhost", port_number


_PROBE = ("import sys, carla\n"
          "client = carla.Client(sys.argv[1], int(sys.argv[2]))\n"
          "client.set_timeout(float(sys.argv[3]))\n"
          "print(client.get_server_version())\n")


def _probe(host: str, port: int, timeout_s: float) -> None:
    """Ask HOST:PORT for its version in a child process first: libcarla ends the whole process (std::terminate,
    SIGABRT) when what answers is not a CARLA server (a web service on that port, a proxy), which had killed the run
    in 0.5 s with no word and no agent's destroy() (a new user's finding). RuntimeError naming what happened."""
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE, host, str(port), str(timeout_s)], capture_output=True,
                               text=True, timeout=timeout_s + 60.0)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"no CARLA server answered at {host}:{port} within {timeout_s:.0f} s") from None
    said = ([line.strip() for line in probe.stderr.splitlines() if line.strip()] or ["nothing"])[-1]
    if probe.returncode < 0 or probe.returncode == 134:
        raise RuntimeError(f"something at {host}:{port} answered, but not as a CARLA server (the CARLA client "
                           f"aborted on its reply: {said}); is it the simulator's RPC port (2000 by default)?")
    if probe.returncode != 0:
        raise RuntimeError(f"no CARLA server answered at {host}:{port} within {timeout_s:.0f} s (CARLA says: {said})")


def connect(address: str, timeout_s: float = 10.0):
    """A carla.Client for "HOST:PORT" whose server answered (asked in a child process first, `_probe`), or
    RuntimeError with CARLA's own message."""
    import carla

    host, port = carla_address(address)
    _probe(host, port, timeout_s)
    client = carla.Client(host, port)
    client.set_timeout(timeout_s)
    try:
        client.get_server_version()
    except RuntimeError as err:
        raise RuntimeError(f"no CARLA server answered at {host}:{port} "
                           f"within {timeout_s:.0f} s (CARLA says: {err})") from None
    return client


class CarlaSimulator:
    """See the module docstring. `tick()` first returns the state after spawning (one world tick)."""

    def __init__(self, client, layout: Layout, ego: EgoStart, agents=(), *, dt_s: float = 0.05, seed: int = 0):
        import carla

        self._carla = carla
        self.dt_s = float(dt_s)
        self._behaviours = EmbeddedSimulator(layout, ego, list(agents), dt_s=dt_s, seed=seed)
        self.client = client
        # generate_opendrive_world resets the settings: keep the user's from before
        self._original_settings = client.get_world().get_settings()
        self.world = client.generate_opendrive_world(layout_to_opendrive(layout))
        settings = self.world.get_settings()
        settings.synchronous_mode = True
        settings.fixed_delta_seconds = self.dt_s
        self.world.apply_settings(settings)
        self._actors: dict[int, object] = {}
        self._collisions: list[tuple[int, int]] = []  # (frame, agent id; -1 = the static world)
        self._collision_lock = threading.Lock()
        try:
            initial = self._behaviours.tick()
            self._kinds = {agent.agent_id: agent.kind for agent in initial.agents}
            library = self.world.get_blueprint_library()
            ego_bp = library.find(BLUEPRINTS["car"])
            ego_bp.set_attribute("role_name", "hero")
            spawn = self._spawn_transform(initial.ego.pose_agent_to_world)
            self.ego = self.world.spawn_actor(ego_bp, spawn)
            yaw = math.radians(spawn.rotation.yaw)  # the scenario's start speed, along the heading (UE axes)
            speed = float(initial.ego.speed_mps)
            self.ego.set_target_velocity(carla.Vector3D(speed * math.cos(yaw), speed * math.sin(yaw), 0.0))
            for agent in initial.agents:
                bp = library.find(BLUEPRINTS[agent.kind])
                # walkers' origins sit mid-body: spawn them high enough, the next tick places them exactly
                lift = 1.2 if agent.kind == "pedestrian" else 0.3
                actor = self.world.try_spawn_actor(bp, self._spawn_transform(agent.pose_agent_to_world, lift))
                if actor is None:
                    raise RuntimeError(f"CARLA could not spawn agent {agent.agent_id} ({agent.kind}) at its start")
                actor.set_simulate_physics(False)  # moved kinematically by its behaviour
                self._actors[agent.agent_id] = actor
            sensor_bp = library.find("sensor.other.collision")
            self._collision_sensor = self.world.spawn_actor(sensor_bp, carla.Transform(), attach_to=self.ego)
            self._by_carla_id = {actor.id: agent_id for agent_id, actor in self._actors.items()}
            self._collision_sensor.listen(self._on_collision)
        except BaseException:
            self.close()
            raise
        self._started = False
        self._speeds = {agent.agent_id: agent.speed_mps for agent in initial.agents}

    def _spawn_transform(self, pose_agent_to_world: np.ndarray, lift_m: float = 0.3):
        lifted = pose_agent_to_world.copy()
        lifted[2, 3] += lift_m  # spawn above the road so nothing starts inside it
        return transform_from_pose(lifted)

    def _on_collision(self, event) -> None:
        """Collision sensor callback (CARLA's thread): remember the frame and whom we hit."""
        with self._collision_lock:
            self._collisions.append((int(event.frame), self._by_carla_id.get(event.other_actor.id, -1)))

    def apply_control(self, control) -> None:
        c = VehicleControl.from_any(control)
        self.ego.apply_control(self._carla.VehicleControl(throttle=c.throttle, steer=c.steer, brake=c.brake,
                                                          hand_brake=c.hand_brake, reverse=c.reverse))

    def tick(self) -> WorldSnapshot:
        if self._started:
            moved = self._behaviours.tick()
            self._speeds = {agent.agent_id: agent.speed_mps for agent in moved.agents}
            for agent in moved.agents:
                actor = self._actors[agent.agent_id]
                actor.set_transform(transform_from_pose(actor_origin_pose(actor.bounding_box, agent.pose_agent_to_world)))
        self._started = True
        frame = self.world.tick()
        snapshot = self.world.get_snapshot()
        ego_snap = snapshot.find(self.ego.id)
        size, ego_pose = agent_box(self.ego.bounding_box, ego_snap.get_transform())
        v = ego_snap.get_velocity()
        ego = AgentState(0, "car", size, ego_pose, math.sqrt(v.x**2 + v.y**2 + v.z**2))
        # the behaviours react to the real ego (cut-in and crossing triggers measure distance to it; the traffic
        # behind it its speed, signed: backing up it closes on them)
        forward = ego_snap.get_transform().get_forward_vector()
        self._behaviours.set_ego_state(ego_pose[:2, 3], ego.yaw_rad, math.copysign(
            ego.speed_mps, v.x * forward.x + v.y * forward.y + v.z * forward.z))
        agents = []
        for agent_id, actor in self._actors.items():
            size, pose = agent_box(actor.bounding_box, snapshot.find(actor.id).get_transform())
            # kinematic actors report no velocity in CARLA: their speed is the behaviour's
            agents.append(AgentState(agent_id, self._kinds[agent_id], size, pose, self._speeds.get(agent_id, 0.0)))
        with self._collision_lock:
            hits = [who for hit_frame, who in self._collisions if hit_frame <= frame]
            self._collisions = [(f, who) for f, who in self._collisions if f > frame]
        return WorldSnapshot(int(frame), float(snapshot.timestamp.elapsed_seconds), ego, tuple(agents),
                             tuple(sorted(set(hits))))

    def close(self) -> None:
        """Destroy what we spawned and restore the world's settings (idempotent)."""
        try:
            sensor = getattr(self, "_collision_sensor", None)
            if sensor is not None:
                self._collision_sensor = None
                try:
                    sensor.stop()
                finally:
                    sensor.destroy()
            for actor in list(self._actors.values()) + [getattr(self, "ego", None)]:
                if actor is not None:
                    try:
                        actor.destroy()
                    except RuntimeError:  # the server may already be gone; keep cleaning up
                        pass
            self._actors.clear()
            self.ego = None
        finally:
            if getattr(self, "_original_settings", None) is not None and hasattr(self, "world"):
                settings, self._original_settings = self._original_settings, None
                self.world.apply_settings(settings)

    def __enter__(self) -> "CarlaSimulator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
