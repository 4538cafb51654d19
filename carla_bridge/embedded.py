"""EmbeddedSimulator: a deterministic kinematic world, no CARLA server needed (the default).

Fixed step (0.05 s by default). The ego is a kinematic bicycle driven by
throttle / steer / brake. Other agents move by behaviour along the layout's
lanes: follow a lane at a speed, cut in from a neighbouring lane when the ego
comes close, cross the road (pedestrians, cyclists) when the ego comes close,
or stay parked. Traffic on a lane or a route keeps its distance from whatever is
ahead of it there (the ego, another agent, a walker on the crosswalk), as the
intelligent driver model does (`_traffic_accel_mps2`), unless told not to, and
slows for the turns of its way. Footprints are oriented boxes; an overlap with
the ego (and in height) is a collision, reported in the snapshot. Frame ids count
up by one per tick from `start_frame`, timestamps are frame steps times dt.
Hitting a static object of the layout (a parked car, a building, a pole) is a
collision with id -1. The same inputs
and seed give the same snapshots, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from carla_bridge.simulator import VehicleControl, speed_after
from neural_sensor.assets import AGENT_KINDS
from neural_sensor.scene.layout import Layout, densified
from neural_sensor.scene.path import Path
from neural_sensor.world import AgentState, WorldSnapshot, pose_from_xyz_yaw

BEHAVIOURS = ("follow_lane", "cut_in", "cross", "parked", "follow_route")
XY_BEHAVIOURS = ("cross", "parked")  # placed by start_xy_m, not by a lane and an arc length
EGO_ID = 0  # the ego's id in snapshots (agents are > 0; the ego carries the cameras and is not rendered)
WHEELBASE_M = 2.8
MAX_STEER_RAD = math.radians(35.0)
MAX_ACCEL_MPS2 = 3.5
MAX_BRAKE_MPS2 = 8.0
ROLLING_DRAG_PER_S = 0.02  # fraction of speed lost per second without throttle
# traffic keeping its distance (the intelligent driver model: Treiber, Hennecke and Helbing 2000)
TRAFFIC_TIME_GAP_S = 1.2
TRAFFIC_STANDSTILL_M = 2.0  # bumper to bumper, standing behind what it waits for
TRAFFIC_ACCEL_MPS2 = 1.5
TRAFFIC_COMFORT_BRAKE_MPS2 = 3.0
TRAFFIC_LOOK_M = 60.0  # what is farther ahead along its way than this is not looked at
TRAFFIC_MARGIN_M = 0.3  # something is in its way if its box comes within this of the agent's half-width across it
TRAFFIC_ENTER_S = 2.0  # a walker crossing, or a car cutting in, is in its way this long before it is
TRAFFIC_CROSS_DEG = 45.0  # moving traffic headed across the way at this or more is seen TRAFFIC_ENTER_S early
TRAFFIC_ALONG_DEG = 20.0  # moving traffic headed within this of the way (or against it) counts by its centre
TRAFFIC_LATERAL_MPS2 = 3.0  # traffic takes a turn of its way no faster than this across it (a 6 m corner: 4.2 m/s)
TRAFFIC_TURN_BRAKE_MPS2 = 2.0  # and slows for it at this
TRAFFIC_PAST_END_M = 1000.0  # an agent's way for keeping its gap goes on this far past its lane's or route's end
TRAFFIC_SAMPLE_S = 0.25  # a road user whose own way turns ahead is placed along it every this (to TRAFFIC_ENTER_S)
TRAFFIC_TURNING_DEG = 10.0  # ... when its way's heading changes by more than this within TRAFFIC_ENTER_S
TRAFFIC_NEAR_MARGIN_M = 15.0  # (what is farther than TRAFFIC_LOOK_M and this from it is not placed along its way)


@dataclass
class AgentSpec:
    """An agent and its behaviour.

    follow_lane: drive lane `lane` from arc length `start_s_m` at `speed_mps` (past the lane's end, on along its
        last segment's heading: a lane does not continue into the next road).
    cut_in: like follow_lane, then move to `target_lane` over `duration_s` once the ego is within
        `trigger_m` (arc length) behind it.
    cross: walk / ride from `start_xy_m` along `heading_rad` at `speed_mps` for `distance_m`, once the ego is
        within `trigger_m` (straight-line distance).
    parked: stand at `start_xy_m`, `heading_rad`.
    follow_route: drive `route_xy_m` ([P, 2] world metres: through a junction, say, made with
        scenarios.base.turn_route or chain_route) from arc length `start_s_m` at `speed_mps` (past its end, on along
        its last segment's heading).
    An agent's speed is `speed_mps` times a factor in [0.95, 1.05] drawn from the simulator's seed (the run's --seed),
    as traffic varies; the same seed gives the same speeds. A follow_lane, cut_in or follow_route agent slows for
    what is ahead on its lane or route (the ego, another agent, a walker or a car crossing) and stands behind it,
    then takes up its speed again, and slows for the turns of its way; `keep_gap=False` drives at its speed whatever
    is there (a scripted adversary).
    """

    agent_id: int
    kind: str = "car"
    behaviour: str = "follow_lane"
    lane: int = 0
    start_s_m: float = 0.0
    speed_mps: float = 8.0
    target_lane: int = 0
    trigger_m: float = 15.0
    duration_s: float = 2.5
    start_xy_m: tuple[float, float] | None = None  # needed by (and only by) cross and parked
    heading_rad: float = 0.0
    distance_m: float = 12.0
    size_m: tuple[float, float, float] | None = None
    route_xy_m: np.ndarray | None = field(default=None, compare=False)  # needed by (and only by) follow_route
    keep_gap: bool = True  # follow_lane, cut_in, follow_route: slow for what is ahead and for turns (False: no)

    def __post_init__(self) -> None:
        if isinstance(self.agent_id, bool) or not isinstance(self.agent_id, (int, np.integer)) or self.agent_id <= 0:
            raise ValueError(f"AgentSpec.agent_id must be an integer > 0 (0 is the ego), got {self.agent_id!r}")
        if self.kind not in AGENT_KINDS:
            raise ValueError(f"agent {self.agent_id}: kind must be one of {sorted(AGENT_KINDS)}, got {self.kind!r}")
        if self.behaviour not in BEHAVIOURS:
            raise ValueError(f"agent {self.agent_id}: behaviour must be one of {BEHAVIOURS}, got {self.behaviour!r}")
        for name in ("start_s_m", "speed_mps", "trigger_m", "duration_s", "heading_rad", "distance_m"):
            value = getattr(self, name)
            if not _is_finite_number(value):
                raise ValueError(f"agent {self.agent_id}: {name} must be a finite number, got {value!r}")
        for name in ("speed_mps", "trigger_m", "distance_m"):
            if getattr(self, name) < 0:
                raise ValueError(f"agent {self.agent_id}: {name} must be >= 0, got {getattr(self, name)}")
        if self.duration_s <= 0:
            raise ValueError(f"agent {self.agent_id}: duration_s must be > 0, got {self.duration_s}")
        if not isinstance(self.keep_gap, (bool, np.bool_)):
            raise ValueError(f"agent {self.agent_id}: keep_gap must be True or False, got {self.keep_gap!r}")
        self.keep_gap = bool(self.keep_gap)
        if abs(self.heading_rad) > 2.0 * math.pi:
            raise ValueError(f"agent {self.agent_id}: heading_rad {self.heading_rad:g} is more than a turn: it is in "
                             f"radians (degrees? math.radians({self.heading_rad:g}) = "
                             f"{math.radians(self.heading_rad):.4f})")
        if self.start_xy_m is not None:
            if not (isinstance(self.start_xy_m, (tuple, list, np.ndarray)) and len(self.start_xy_m) == 2
                    and all(_is_finite_number(v) for v in self.start_xy_m)):
                raise ValueError(f"agent {self.agent_id}: start_xy_m must be 2 finite numbers (world x, y in "
                                 f"metres), got {self.start_xy_m!r}")
            self.start_xy_m = (float(self.start_xy_m[0]), float(self.start_xy_m[1]))
        for name in ("lane", "target_lane"):
            if not _is_index(getattr(self, name)):
                raise ValueError(f"agent {self.agent_id}: {name} must be an integer >= 0 (a lane of the layout), "
                                 f"got {getattr(self, name)!r}")
        if (self.route_xy_m is not None) != (self.behaviour == "follow_route"):
            raise ValueError(f"agent {self.agent_id}: route_xy_m is what a 'follow_route' agent drives (and only one), "
                             f"got behaviour {self.behaviour!r} with route_xy_m "
                             f"{'given' if self.route_xy_m is not None else 'missing'}")
        if self.route_xy_m is not None:
            route = np.asarray(self.route_xy_m, dtype=np.float64) if _numeric(self.route_xy_m) else np.zeros(0)
            if route.ndim != 2 or route.shape[1] != 2 or len(route) < 2 or not np.isfinite(route).all():
                raise ValueError(f"agent {self.agent_id}: route_xy_m must be [P >= 2, 2] finite world metres, got "
                                 f"shape {route.shape}")
            if np.linalg.norm(np.diff(route, axis=0), axis=1).sum() <= 0.0:
                raise ValueError(f"agent {self.agent_id}: route_xy_m has no length (all its points at one place)")
            self.route_xy_m = route
        if self.size_m is None:
            self.size_m = AGENT_KINDS[self.kind][1]
        elif not (isinstance(self.size_m, (tuple, list, np.ndarray)) and np.shape(self.size_m) == (3,)
                  and all(_is_finite_number(v) and v > 0 for v in self.size_m)):
            raise ValueError(f"agent {self.agent_id}: size_m must be 3 positive lengths (m: length, width, height), "
                             f"got {self.size_m!r}")
        else:
            self.size_m = tuple(float(v) for v in self.size_m)
        # plain Python numbers from here (numpy's went into log.jsonl and summary.json, which json cannot write)
        self.agent_id, self.lane, self.target_lane = int(self.agent_id), int(self.lane), int(self.target_lane)
        for name in ("start_s_m", "speed_mps", "trigger_m", "duration_s", "heading_rad", "distance_m"):
            setattr(self, name, float(getattr(self, name)))


ROUTE_OFF_LANE_M = 5.0  # a follow_route agent's route keeps within this of some lane's centre line
OFF_ROAD_LIMIT_M = 60.0  # a crossing or parked agent placed farther than this from every lane is refused


@dataclass
class EgoStart:
    """Where the ego starts: a lane and an arc length on it, an initial speed, and a box size."""

    lane: int = 0
    start_s_m: float = 5.0
    speed_mps: float = 0.0
    size_m: tuple[float, float, float] = (4.7, 1.9, 1.5)

    def __post_init__(self) -> None:
        if not _is_index(self.lane):
            raise ValueError(f"the ego's start: lane must be an integer >= 0 (a lane of the layout), got {self.lane!r}")
        for name in ("start_s_m", "speed_mps"):
            value = getattr(self, name)
            if not _is_finite_number(value):
                raise ValueError(f"the ego's start: {name} must be a finite number, got {value!r}")
        if self.speed_mps < 0:
            raise ValueError(f"the ego's start: speed_mps must be >= 0, got {self.speed_mps}")
        if not (isinstance(self.size_m, (tuple, list)) and len(self.size_m) == 3
                and all(_is_finite_number(v) and v > 0 for v in self.size_m)):
            raise ValueError(f"the ego's start: size_m must be 3 positive lengths (m), got {self.size_m!r}")
        self.lane, self.start_s_m, self.speed_mps = int(self.lane), float(self.start_s_m), float(self.speed_mps)
        self.size_m = tuple(float(v) for v in self.size_m)


def _is_index(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 0


def _numeric(value) -> bool:
    """Whether value is an array or nested sequence of numbers (np.asarray(value, float) would take it)."""
    try:
        np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return True


def _is_finite_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.floating)) and math.isfinite(value)


@dataclass
class _AgentRuntime:
    spec: AgentSpec
    s_m: float
    speed_mps: float
    desired_mps: float = 0.0  # its speed with nothing ahead (speed_mps: what it drives now)
    triggered_at_s: float | None = None
    travelled_m: float = 0.0
    xy: np.ndarray = field(default_factory=lambda: np.zeros(2))
    yaw: float = 0.0


def _ring(lead: dict) -> list:
    """The members of a cycle in a who-waits-for-whom map (key -> the key it waits for, or None / a key not in
    it), the first one found; [] if none. Each key is walked once."""
    done: set = set()
    for start in lead:
        path, on_path, n = [], set(), start
        while n in lead and n not in done and n not in on_path:
            path.append(n)
            on_path.add(n)
            n = lead[n]
        if n in on_path:
            return path[path.index(n):]
        done.update(path)
    return []


def _box_half_extents_m(length_m, width_m, turned_rad) -> tuple[np.ndarray, np.ndarray]:
    """A box's half-extents (m) across and along a way it is turned turned_rad from (arrays broadcast)."""
    sin, cos = np.abs(np.sin(turned_rad)), np.abs(np.cos(turned_rad))
    return 0.5 * (length_m * sin + width_m * cos), 0.5 * (length_m * cos + width_m * sin)


def _obb_overlap(a: AgentState, b: AgentState) -> bool:
    """Oriented-box overlap test: separating axes of the two footprints, then the height ranges."""
    def corners(state: AgentState) -> np.ndarray:
        length, width, _ = state.size_m
        local = np.array([[length, width], [length, -width], [-length, -width], [-length, width]]) * 0.5
        rot = state.pose_agent_to_world[:2, :2]
        return local @ rot.T + state.pose_agent_to_world[:2, 3]

    ca, cb = corners(a), corners(b)
    for poly in (ca, cb):
        for k in range(2):
            edge = poly[k + 1] - poly[k]
            axis = np.array([-edge[1], edge[0]])
            pa, pb = ca @ axis, cb @ axis
            if pa.max() < pb.min() or pb.max() < pa.min():
                return False
    za, zb = a.pose_agent_to_world[2, 3], b.pose_agent_to_world[2, 3]
    return za < zb + b.size_m[2] and zb < za + a.size_m[2]


def _centre_inside(a: AgentState, box: AgentState) -> bool:
    """Whether a's footprint centre lies inside box's footprint."""
    local = box.pose_agent_to_world[:2, :2].T @ (a.pose_agent_to_world[:2, 3] - box.pose_agent_to_world[:2, 3])
    return bool(abs(local[0]) < 0.5 * box.size_m[0] and abs(local[1]) < 0.5 * box.size_m[1])


def _near(a: AgentState, b: AgentState) -> bool:
    """Cheap pre-test for the box overlap: centres closer than the sum of the boxes' half diagonals."""
    reach = 0.5 * (math.hypot(a.size_m[0], a.size_m[1]) + math.hypot(b.size_m[0], b.size_m[1]))
    return float(np.linalg.norm(a.position_m[:2] - b.position_m[:2])) < reach


SOLID_CLASSES = ("building", "parked_vehicle")  # layout objects no agent may start inside
SIGN_POST_M = 0.15  # a traffic sign's post, as a collision box this wide from the ground to its panel


def _check_start_overlaps(start: WorldSnapshot, static: list[AgentState], classes: list[str]) -> None:
    """ValueError naming two actors (the ego, agents) whose boxes overlap where they start, the ego starting in
    an object of the layout (a parked car, a tree, a building), or an agent whose centre starts inside a building or
    a parked car (static[i] of class classes[i]): the first tick would be a collision the scenario did not mean, or
    an agent the cameras cannot see. An agent may graze such a box (a truck in the outer lane beside a parked car)
    and start in a tree's, pole's or sign's (a pedestrian under a tree's crown: those boxes are coarse, and only the
    ego's collisions are judged)."""
    assert len(static) == len(classes), (len(static), len(classes))
    actors = [start.ego, *start.agents]
    name = {a.agent_id: ("the ego" if a.agent_id == EGO_ID else f"agent {a.agent_id}") for a in actors}
    for i, a in enumerate(actors):
        for b in actors[i + 1:]:
            if _near(a, b) and _obb_overlap(a, b):
                raise ValueError(f"{name[a.agent_id]} and {name[b.agent_id]} overlap where they start (centres "
                                 f"{np.linalg.norm(a.position_m[:2] - b.position_m[:2]):.1f} m apart): move one")
    for box in static:
        if _near(start.ego, box) and _obb_overlap(start.ego, box):
            raise ValueError(f"the ego starts inside an object of the layout (a parked car, a tree, a building) at "
                             f"({box.position_m[0]:.1f}, {box.position_m[1]:.1f}): move it")
    for agent in start.agents:  # its centre inside (grazing one, as a truck in the outer lane may, is allowed)
        for box, cls in zip(static, classes):
            if cls in SOLID_CLASSES and _near(agent, box) and _centre_inside(agent, box):
                what = "a building" if cls == "building" else "a parked car of the layout"
                raise ValueError(f"agent {agent.agent_id} starts inside {what} (its box centred at "
                                 f"({box.position_m[0]:.1f}, {box.position_m[1]:.1f})), where no camera would see it: "
                                 f"move it")


class EmbeddedSimulator:
    """See the module docstring. `tick()` first returns the initial state (frame start_frame)."""

    def __init__(self, layout: Layout, ego: EgoStart, agents: list[AgentSpec] = (), *, dt_s: float = 0.05,
                 seed: int = 0, start_frame: int = 1):
        if not (0.0 < dt_s <= 1.0):
            raise ValueError(f"EmbeddedSimulator: dt_s must be in (0, 1] s, got {dt_s}")
        ids = [a.agent_id for a in agents]
        if len(set(ids)) != len(ids):
            raise ValueError(f"EmbeddedSimulator: duplicate agent ids {ids}")
        self.layout = layout
        self.dt_s = float(dt_s)
        self.lanes = [Path(lane.travel_polyline()) for lane in layout.lanes]
        for spec in list(agents) + [ego]:
            whose = f"agent {spec.agent_id}'s" if isinstance(spec, AgentSpec) else "the ego's"
            for name in ("lane", "target_lane"):
                lane = getattr(spec, name, 0)
                if not 0 <= lane < len(self.lanes):
                    raise ValueError(f"{whose} {name}: lane index {lane} is out of range (layout has "
                                     f"{len(self.lanes)} lanes)")
            if getattr(spec, "behaviour", "") == "cut_in":
                a, b = layout.lanes[spec.lane], layout.lanes[spec.target_lane]
                if a.direction != b.direction or spec.lane == spec.target_lane:
                    raise ValueError(f"agent {spec.agent_id}: cut_in needs a different target lane running the "
                                     f"same way (lane {spec.lane} -> {spec.target_lane})")
        road_xy = np.concatenate([lane.points[:, :2] for lane in self.lanes]) if self.lanes else None
        self._routes = {}
        self._gap_ways: dict[tuple, Path] = {}  # (see _gap_way)
        self._turn_speeds: dict[tuple, tuple] = {}  # (see _turn_limit_mps)
        self._way_turns: dict[tuple, bool] = {}  # (see _ways_ahead)
        for spec in agents:
            if spec.behaviour == "follow_route":
                route = self._routes[spec.agent_id] = Path(spec.route_xy_m)
                if spec.lane != 0 or spec.start_xy_m is not None:
                    raise ValueError(f"agent {spec.agent_id}: a 'follow_route' agent drives route_xy_m from start_s_m "
                                     "along it; lane and start_xy_m are not its")
                if not 0.0 <= spec.start_s_m <= route.length_m:
                    raise ValueError(f"agent {spec.agent_id}: start_s_m {spec.start_s_m:g} is not on its route (its "
                                     f"length is {route.length_m:.1f} m)")
                points = densified(spec.route_xy_m, 1.0)
                off = np.min([lane.distances_m(points) for lane in self.lanes], axis=0)  # (to the lanes' segments)
                if off.max() > ROUTE_OFF_LANE_M:
                    where = np.round(points[int(np.argmax(off))], 1).tolist()
                    raise ValueError(f"agent {spec.agent_id}: route_xy_m goes {off.max():.1f} m from the nearest "
                                     f"lane's centre line at {where} (at most {ROUTE_OFF_LANE_M:g} m: a route keeps "
                                     "to the road)")
                continue
            if spec.behaviour not in XY_BEHAVIOURS:
                lane_m = self.lanes[spec.lane].length_m
                if not 0.0 <= spec.start_s_m <= lane_m:
                    raise ValueError(f"agent {spec.agent_id}: start_s_m {spec.start_s_m:g} is not on lane {spec.lane} "
                                     f"(its length is {lane_m:.1f} m)")
                if spec.start_xy_m is not None:
                    raise ValueError(f"agent {spec.agent_id}: start_xy_m places a {'/'.join(XY_BEHAVIOURS)} agent; a "
                                     f"{spec.behaviour!r} agent starts on lane {spec.lane} at start_s_m")
                continue
            if spec.lane != 0 or spec.start_s_m != 0.0:
                raise ValueError(f"agent {spec.agent_id}: lane and start_s_m place a lane behaviour (follow_lane, "
                                 f"cut_in); a {spec.behaviour!r} agent starts at start_xy_m (world x, y in metres)")
            if spec.start_xy_m is None:
                raise ValueError(f"agent {spec.agent_id}: a {spec.behaviour!r} agent needs start_xy_m (world x, y in "
                                 "metres; it is not placed on a lane)")
            if road_xy is not None:
                off_m = float(np.min(np.linalg.norm(road_xy - np.asarray(spec.start_xy_m, float)[:2], axis=1)))
                if off_m > OFF_ROAD_LIMIT_M:
                    raise ValueError(f"agent {spec.agent_id}: start_xy_m {tuple(spec.start_xy_m)} is {off_m:.0f} m "
                                     f"from the nearest lane (more than {OFF_ROAD_LIMIT_M:.0f} m: outside the world)")
        # static boxes an agent can hit: everything but crosswalk paint (reported as collision id -1); a traffic
        # sign's box is its panel, up in the air: the post it stands on (as the builder draws it) is a box too
        self._static, static_classes = [], []
        for box in layout.objects:
            self._static.append(AgentState(-1, "car", box.size_m, pose_from_xyz_yaw(*box.centre_m, box.yaw_rad)))
            static_classes.append(box.cls)
            if box.cls == "traffic_sign" and box.centre_m[2] > 0.0:
                self._static.append(AgentState(-1, "car", (SIGN_POST_M, SIGN_POST_M, box.centre_m[2]),
                                               pose_from_xyz_yaw(box.centre_m[0], box.centre_m[1], 0.0, box.yaw_rad)))
                static_classes.append("pole")
        rng = np.random.default_rng(seed)
        self._agents = []
        for spec in agents:
            jitter = 1.0 + 0.05 * rng.uniform(-1.0, 1.0)  # seeded speed variation
            runtime = _AgentRuntime(spec, spec.start_s_m, spec.speed_mps * jitter, spec.speed_mps * jitter)
            if spec.behaviour in XY_BEHAVIOURS:
                runtime.xy, runtime.yaw = np.array(spec.start_xy_m, float), spec.heading_rad
            self._agents.append(runtime)
        length_m = self.lanes[ego.lane].length_m
        if not 0.0 <= ego.start_s_m <= length_m:
            raise ValueError(f"the ego's start_s_m {ego.start_s_m:g} is not on lane {ego.lane} (its length is "
                             f"{length_m:.1f} m)")
        self.ego_size_m = tuple(ego.size_m)
        xy, yaw = self.lanes[ego.lane].at(ego.start_s_m)
        self._ego = {"xy": xy.copy(), "yaw": yaw, "speed": float(ego.speed_mps)}
        self._control = VehicleControl()
        self._frame = int(start_frame)
        self._steps = -1  # the first tick returns the initial state
        _check_start_overlaps(self._snapshot(), self._static, static_classes)

    # ------------------------------------------------------------------ API
    def set_ego_state(self, xy_m: np.ndarray, yaw_rad: float, speed_mps: float) -> None:
        """Override the ego's state (CarlaSimulator feeds the real ego in, so behaviours react to it)."""
        self._ego = {"xy": np.asarray(xy_m, dtype=np.float64)[:2].copy(), "yaw": float(yaw_rad),
                     "speed": float(speed_mps)}

    def apply_control(self, control) -> None:
        self._control = VehicleControl.from_any(control)

    def tick(self) -> WorldSnapshot:
        if self._steps >= 0:
            self._step_ego()
            accel_mps2 = self._traffic_accel_mps2()  # (from where everyone is before the agents move)
            for agent in self._agents:
                if agent.spec.agent_id in accel_mps2:
                    agent.speed_mps = max(0.0, agent.speed_mps + accel_mps2[agent.spec.agent_id] * self.dt_s)
                self._step_agent(agent)
        self._steps += 1
        return self._snapshot()

    def close(self) -> None:
        pass

    # ------------------------------------------------------------- dynamics
    def _step_ego(self) -> None:
        c, dt = self._control, self.dt_s
        ego = self._ego
        speed = speed_after(ego["speed"], c, dt, MAX_ACCEL_MPS2, MAX_BRAKE_MPS2, ROLLING_DRAG_PER_S)  # signed
        delta = -c.steer * MAX_STEER_RAD  # CARLA: positive steer turns right, i.e. negative yaw rate in FLU
        mean_speed = 0.5 * (speed + ego["speed"])
        yaw_rate = mean_speed / WHEELBASE_M * math.tan(delta)
        heading = ego["yaw"] + 0.5 * yaw_rate * dt
        ego["xy"] = ego["xy"] + mean_speed * dt * np.array([math.cos(heading), math.sin(heading)])
        ego["yaw"] = (ego["yaw"] + yaw_rate * dt + math.pi) % (2 * math.pi) - math.pi
        ego["speed"] = speed

    def _step_agent(self, agent: _AgentRuntime) -> None:
        spec, dt = agent.spec, self.dt_s
        t_now = (self._steps + 1) * dt
        if spec.behaviour in ("follow_lane", "cut_in", "follow_route"):
            agent.s_m += agent.speed_mps * dt
            if spec.behaviour == "cut_in" and agent.triggered_at_s is None:
                ego_s, _ = self.lanes[spec.lane].project(self._ego["xy"])
                if 0.0 <= agent.s_m - ego_s <= spec.trigger_m:
                    agent.triggered_at_s = t_now
        elif spec.behaviour == "cross":
            if agent.triggered_at_s is None:
                if np.linalg.norm(self._ego["xy"] - agent.xy) <= spec.trigger_m:
                    agent.triggered_at_s = t_now
            elif agent.travelled_m < spec.distance_m:
                step = min(agent.speed_mps * dt, spec.distance_m - agent.travelled_m)
                agent.xy = agent.xy + step * np.array([math.cos(spec.heading_rad), math.sin(spec.heading_rad)])
                agent.travelled_m += step

    def _traffic_accel_mps2(self) -> dict[int, float]:
        """Each keep_gap agent on a lane or a route: its acceleration (m/s^2) by the intelligent driver model
        towards its own speed (no faster than the turns of its way ahead allow: `_turn_limit_mps`), behind the
        nearest road user ahead along its way (the ego included; the way goes on past the lane's or route's end
        along its last heading, as the agent does), no farther than TRAFFIC_LOOK_M: its gap bumper to bumper and
        the speed it moves along the way (one coming the other way closes the faster). In the way: the ego and
        anything standing, turning or crossing where its box comes within the agent's half-width plus
        TRAFFIC_MARGIN_M across the way; moving traffic headed within TRAFFIC_ALONG_DEG of the way (or against it)
        only with its centre there (it keeps to its lane: two wide trucks passing in narrow lanes stood nose to
        nose); a walker, a car cutting in and one crossing the way at TRAFFIC_CROSS_DEG or more also from
        TRAFFIC_ENTER_S before it gets there, at the speed it moves across; traffic whose own lane or route turns
        within TRAFFIC_ENTER_S is placed along it instead (`_enters_along_own_way`: a car turning out of the way is
        not waited for, one turning across it is waited for short of where it will cross). A ring of agents each
        waiting for the next (two cars turning left from opposite sides, three through a junction) is broken where
        the lead is least squarely in the way, among those whose lead is only predicted to come or whose box they
        would pass clear of (a ring of agents each squarely in the next one's way is a jam and stands). Braking is
        capped at MAX_BRAKE_MPS2. A cut_in agent looks along the lane it moves into once it has begun. Followers
        sharing a way are worked out together (one projection a way a tick)."""
        groups: dict[tuple, list[int]] = {}  # its way -> the followers' indices (0 is the ego)
        for n, agent in enumerate(self._agents, start=1):
            spec = agent.spec
            if not spec.keep_gap or spec.behaviour in XY_BEHAVIOURS:
                continue
            if spec.behaviour == "follow_route":
                key = ("route", spec.agent_id)
            else:
                key = ("lane", spec.target_lane if spec.behaviour == "cut_in" and agent.triggered_at_s is not None
                       else spec.lane)
            groups.setdefault(key, []).append(n)
        if not groups:
            return {}
        poses = [self._agent_pose(a) for a in self._agents]
        xy = np.array([self._ego["xy"]] + [p[0] for p in poses])
        yaw = np.array([self._ego["yaw"]] + [p[1] for p in poses])
        speed = np.array([self._ego["speed"]] + [p[2] for p in poses])
        size = np.array([self.ego_size_m[:2]] + [a.spec.size_m[:2] for a in self._agents])
        now_s = self._steps * self.dt_s  # (a cut_in agent crosses only while its lane change is under way)
        crossing = np.array([False] + [a.spec.behaviour == "cross" or (
            a.spec.behaviour == "cut_in" and a.triggered_at_s is not None
            and now_s - a.triggered_at_s < a.spec.duration_s) for a in self._agents])
        ahead_xy, ahead_yaw, turning = self._ways_ahead(speed, yaw)
        # each follower's way: who is in it, how far ahead (pass 1); rings of followers each waiting for the next
        # broken where one can go (pass 2); then the model (pass 3)
        found = {}  # follower's index -> (near [U], inside [U], gap [U] m, off [U] m, along-speed [U] m/s, its turn
        #             limit m/s, whether each is only predicted to come into its way or passed box clear of box [U])
        for key, followers in groups.items():
            f = np.array(followers)
            # only those near enough to be within TRAFFIC_LOOK_M along the way of one of them are placed along it
            apart_m = np.linalg.norm(xy[f][:, None, :] - xy[None, :, :], axis=2)  # [F, N]
            near_f = apart_m <= TRAFFIC_LOOK_M + TRAFFIC_NEAR_MARGIN_M
            near = np.flatnonzero(near_f.any(axis=0))  # [U] (the followers themselves among them)
            _, lateral_m, heading, s_m = self._gap_way(key).nearest(xy[near])
            turned = yaw[near] - heading
            length_m, width_m = size[near, 0], size[near, 1]
            half_across, half_along = _box_half_extents_m(length_m, width_m, turned)
            mine = np.searchsorted(near, f)  # each follower's column among the near ones
            ahead_m = s_m[None, :] - s_m[mine][:, None]  # [F, U]
            signed_off = lateral_m[None, :] - lateral_m[mine][:, None]
            off_m = np.abs(signed_off)
            # moving traffic along the way or against it keeps to its lane: its centre must be in the way; the ego,
            # what stands, what turns or crosses: its box
            lane_kept = ((speed[near] > 0.5) & ~crossing[near] & (near != 0)
                         & (np.abs(np.sin(turned)) < math.sin(math.radians(TRAFFIC_ALONG_DEG))))
            reach_m = 0.5 * size[f, 1][:, None] + np.where(lane_kept, 0.0, half_across)[None, :] + TRAFFIC_MARGIN_M
            # what crosses its way (a walker, a car through the junction or turning across it) or cuts in: also
            # from TRAFFIC_ENTER_S before it gets there (not the ego changing lanes, a car turning out of it)
            predicted = crossing[near] | ((speed[near] > 0.5)
                                          & (np.abs(np.sin(turned)) > math.sin(math.radians(TRAFFIC_CROSS_DEG))))
            across_mps = np.where(predicted, speed[near] * np.sin(turned), 0.0)
            with np.errstate(divide="ignore", invalid="ignore"):  # when a crossing one gets into its way
                enters_s = np.where(off_m <= reach_m, 0.0, np.where(signed_off * across_mps[None, :] < 0.0,
                                                                    (off_m - reach_m) / np.abs(across_mps), np.inf))
            # one whose own way turns ahead is placed along it instead (a car turning right out of its way was
            # predicted to drive on straight across it) and, coming in, waited for short of the nearest its box
            # comes along the way (short of where it was first seen coming in, a car stood in its path); one that
            # would come in only beside or behind the follower's front is left to the straight-line rule (stopping
            # for it there stood a truck in its path)
            half_along_m = np.broadcast_to(half_along, ahead_m.shape)
            bends = np.flatnonzero(turning[near])
            if len(bends):
                enters, edge_m = self._enters_along_own_way(
                    key, ahead_xy[near[bends]], ahead_yaw[near[bends]], size[near[bends]], lateral_m[bends],
                    lateral_m[mine], s_m[mine], size[f, 1])
                there = off_m[:, bends] <= reach_m[:, bends]
                coming = ~there & np.isfinite(enters) & (edge_m > (s_m[mine] + 0.5 * size[f, 0])[:, None])
                beside = ~there & np.isfinite(enters) & ~coming
                enters_s[:, bends] = np.where(there, 0.0, np.where(coming, enters, np.where(
                    beside, enters_s[:, bends], np.inf)))
                ahead_m[:, bends] = np.where(coming, edge_m - s_m[mine][:, None], ahead_m[:, bends])
                half_along_m = half_along_m.copy()
                half_along_m[:, bends] = np.where(coming, 0.0, half_along_m[:, bends])
            inside = ((ahead_m > 0.0) & (ahead_m <= TRAFFIC_LOOK_M) & (enters_s <= TRAFFIC_ENTER_S)
                      & near_f[:, near])
            inside[np.arange(len(f)), mine] = False
            gap_m = ahead_m - half_along_m - 0.5 * size[f, 0][:, None]
            along_mps = speed[near] * np.cos(turned)
            limit_mps = self._turn_limit_mps(key, s_m[mine])
            for row, n in enumerate(f):
                found[n] = (near, inside[row], gap_m[row], off_m[row], along_mps, limit_mps[row],
                            (enters_s[row] > 0.0) | (off_m[row] > reach_m[row] - TRAFFIC_MARGIN_M))
        jammed: set = set()
        for _ in range(len(found)):  # a ring of road users each in the next one's way (two cars turning left
            # from opposite sides; three through a junction) would stand for good: in the ring, the one whose lead
            # is least squarely in its way (the largest offset across; a tie: the lowest id) no longer waits for it
            lead = {n: int(near[np.argmin(np.where(inside, gap, np.inf))]) if inside.any() else None
                    for n, (near, inside, gap, *_) in found.items()}
            ring = _ring({n: m for n, m in lead.items() if n not in jammed})
            if not ring:
                break
            # only one whose lead is not yet in its way (predicted to come), or whose box it would pass clear of
            # (only the margin between them), may go: one with the other's box in its way stays (else it drove into
            # a truck standing 2 m ahead); a ring of those is a true jam
            free = [n for n in ring if found[n][6][np.searchsorted(found[n][0], lead[n])]]
            if not free:
                jammed.update(ring)
                continue
            goes = max(free, key=lambda n: (found[n][3][np.searchsorted(found[n][0], lead[n])], -n))
            near, inside, *rest = found[goes]
            inside = inside.copy()
            inside[np.searchsorted(near, lead[goes])] = False
            found[goes] = (near, inside, *rest)
        out = {}
        for n, (near, inside, gap, _, along_mps, limit_mps, _) in found.items():
            agent = self._agents[n - 1]
            v, v0 = agent.speed_mps, min(agent.desired_mps, limit_mps)
            free = 1.0 - (v / v0) ** 4 if v0 > 0.0 else -1.0
            accel = TRAFFIC_ACCEL_MPS2 * free
            if inside.any():
                u = int(np.argmin(np.where(inside, gap, np.inf)))
                wanted_m = TRAFFIC_STANDSTILL_M + max(0.0, v * TRAFFIC_TIME_GAP_S + v * (v - along_mps[u]) / (
                    2.0 * math.sqrt(TRAFFIC_ACCEL_MPS2 * TRAFFIC_COMFORT_BRAKE_MPS2)))
                accel = TRAFFIC_ACCEL_MPS2 * (free - (wanted_m / max(float(gap[u]), 0.1)) ** 2)
            # and never faster than the turns allow (that limit falls at TRAFFIC_TURN_BRAKE_MPS2 along the way)
            accel = min(accel, TRAFFIC_ACCEL_MPS2, (limit_mps - v) / self.dt_s)
            out[agent.spec.agent_id] = float(max(-MAX_BRAKE_MPS2, accel))
        return out

    def _ways_ahead(self, speed_mps: np.ndarray, yaw_rad: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where each road user goes along its own way (a follow_lane or follow_route agent's lane or route) at its
        speed every TRAFFIC_SAMPLE_S to TRAFFIC_ENTER_S: ([N, K, 2] x, y m, [N, K] heading rad, [N] bool whether
        its way turns by more than TRAFFIC_TURNING_DEG by then; only those are filled in); speed_mps [N] and
        yaw_rad [N] (each one's heading now, its way's there), index 0 the ego (no way known). Agents sharing a
        way are placed along it together; a way that never turns is skipped."""
        times_s = np.arange(1, int(round(TRAFFIC_ENTER_S / TRAFFIC_SAMPLE_S)) + 1) * TRAFFIC_SAMPLE_S  # [K]
        n = len(speed_mps)
        xy, yaw = np.zeros((n, len(times_s), 2)), np.zeros((n, len(times_s)))
        turning = np.zeros(n, bool)
        on_way: dict[tuple, list[int]] = {}
        for i, agent in enumerate(self._agents, start=1):
            behaviour = agent.spec.behaviour
            if behaviour in ("follow_lane", "follow_route") and speed_mps[i] > 0.5:
                key = ("route", agent.spec.agent_id) if behaviour == "follow_route" else ("lane", agent.spec.lane)
                on_way.setdefault(key, []).append(i)
        for key, members in on_way.items():
            way = self._way(key)
            if key not in self._way_turns:  # the spread of its segments' headings
                headings = np.unwrap(np.arctan2(way.dirs[:, 1], way.dirs[:, 0]))
                self._way_turns[key] = np.ptp(headings) > math.radians(TRAFFIC_TURNING_DEG)
            if not self._way_turns[key]:
                continue
            m = np.array(members)
            s_now = np.array([self._agents[i - 1].s_m for i in members])
            points, headings = way.at_many((s_now[:, None] + speed_mps[m][:, None] * times_s[None, :]).ravel())
            xy[m], yaw[m] = points.reshape(len(m), -1, 2), headings.reshape(len(m), -1)
            turned = np.abs((yaw[m] - yaw_rad[m][:, None] + math.pi) % (2.0 * math.pi) - math.pi)
            turning[m] = turned.max(axis=1) > math.radians(TRAFFIC_TURNING_DEG)
        return xy, yaw, turning

    def _enters_along_own_way(self, key: tuple, xy_m: np.ndarray, yaw_rad: np.ndarray, size_m: np.ndarray,
                              lateral_now_m: np.ndarray, follower_lateral_m: np.ndarray, follower_s_m: np.ndarray,
                              follower_width_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """When and how near each of B road users, placed along its own way (xy_m [B, K, 2], yaw_rad [B, K] every
        TRAFFIC_SAMPLE_S; size_m [B, 2]; lateral_now_m [B] its offset across key's way now), comes into the way of
        each of F followers on key's way (follower_lateral_m [F] across it, follower_s_m [F] along it,
        follower_width_m [F]; the way looked at from TRAFFIC_NEAR_MARGIN_M behind them to as far past
        TRAFFIC_LOOK_M ahead, so that a long route costs what its stretch here does): its box within the
        follower's half-width plus TRAFFIC_MARGIN_M across the way (by its centre where it moves along the way,
        within TRAFFIC_ALONG_DEG: it keeps to its lane, as `_traffic_accel_mps2`), or passing from one side of it to
        the other between two samples. Returns [F, B] each: the first such time s (inf: not within TRAFFIC_ENTER_S)
        and the least arc length m along key's way its box reaches at any such sample (a turning truck's box sweeps
        on towards the follower after it first comes in; inf: none)."""
        b, k = yaw_rad.shape
        window_m = (follower_s_m.min() - TRAFFIC_NEAR_MARGIN_M,
                    follower_s_m.max() + TRAFFIC_LOOK_M + TRAFFIC_NEAR_MARGIN_M)
        _, lateral_m, heading, along_m = self._gap_way(key).nearest(xy_m.reshape(-1, 2), window_m)
        lateral_m, turned, along_m = lateral_m.reshape(b, k), yaw_rad - heading.reshape(b, k), along_m.reshape(b, k)
        half_across, half_along = _box_half_extents_m(size_m[:, :1], size_m[:, 1:], turned)
        half_across = np.where(np.abs(np.sin(turned)) < math.sin(math.radians(TRAFFIC_ALONG_DEG)), 0.0, half_across)
        reach_m = 0.5 * follower_width_m[:, None, None] + half_across[None] + TRAFFIC_MARGIN_M  # [F, B, K]
        rel_m = lateral_m[None] - follower_lateral_m[:, None, None]  # [F, B, K]
        before_m = np.concatenate([lateral_now_m[None, :, None] - follower_lateral_m[:, None, None], rel_m[..., :-1]],
                                  axis=2)
        hit = (np.abs(rel_m) <= reach_m) | (np.sign(rel_m) * np.sign(before_m) < 0.0)
        times_s = np.where(hit.any(axis=2), (np.argmax(hit, axis=2) + 1) * TRAFFIC_SAMPLE_S, np.inf)
        return times_s, np.where(hit, (along_m - half_along)[None], np.inf).min(axis=2)

    def _turn_limit_mps(self, key: tuple, s_m: np.ndarray) -> np.ndarray:
        """[F] the fastest speed at arc lengths s_m [F] of a way from which every turn of it within TRAFFIC_LOOK_M
        ahead is taken at TRAFFIC_LATERAL_MPS2 across, braking at TRAFFIC_TURN_BRAKE_MPS2 (inf: none)."""
        if key not in self._turn_speeds:
            path = self._way(key)
            stations = np.arange(0.0, path.length_m + 1.0, 1.0)
            headings = np.unwrap(path.chord_headings(stations, 2.0))
            turn = np.abs(np.gradient(headings, stations)) if len(stations) > 1 else np.zeros(1)
            self._turn_speeds[key] = (stations, np.sqrt(TRAFFIC_LATERAL_MPS2 / np.maximum(turn, 1e-9)))
        stations, v_turn = self._turn_speeds[key]
        to_go = stations[None, :] - np.asarray(s_m)[:, None]  # [F, M]
        reachable = np.sqrt(v_turn[None, :] ** 2 + 2.0 * TRAFFIC_TURN_BRAKE_MPS2 * np.maximum(to_go, 0.0))
        return np.min(np.where((to_go >= -1.0) & (to_go <= TRAFFIC_LOOK_M), reachable, np.inf), axis=1)

    def _way(self, key: tuple) -> Path:
        """A follower's way: ("lane", index) or ("route", agent id)."""
        return self._routes[key[1]] if key[0] == "route" else self.lanes[key[1]]

    def _gap_way(self, key: tuple) -> Path:
        """A lane's or a route's polyline for keeping the gap, going on TRAFFIC_PAST_END_M past its end along its
        last heading (where an agent goes on past it: a lane ends at the junction)."""
        if key not in self._gap_ways:
            path = self._way(key)
            points = path.points[:, :2]
            self._gap_ways[key] = Path(np.vstack([points, points[-1] + TRAFFIC_PAST_END_M * path.dirs[-1, :2]]))
        return self._gap_ways[key]

    def _agent_pose(self, agent: _AgentRuntime) -> tuple[np.ndarray, float, float]:
        spec = agent.spec
        if spec.behaviour == "follow_route":
            xy, yaw = self._routes[spec.agent_id].at(agent.s_m)
            return xy, yaw, agent.speed_mps
        if spec.behaviour in ("follow_lane", "cut_in"):
            xy, yaw = self.lanes[spec.lane].at(agent.s_m)
            if spec.behaviour == "cut_in" and agent.triggered_at_s is not None:
                t = min(1.0, (self._steps * self.dt_s - agent.triggered_at_s) / spec.duration_s)
                blend = 0.5 - 0.5 * math.cos(math.pi * max(t, 0.0))
                # the target lane's point beside us (lanes need not share arc length, e.g. on curves)
                target = self.lanes[spec.target_lane]
                target_s, _ = target.project(xy)
                target_xy, target_yaw = target.at(target_s)
                if not 0.0 < target_s < target.length_m:  # past its end (or before its start): its end segment's
                    # line beside us, as the lanes' own points go on (it froze at the end reporting its speed)
                    along = np.array([math.cos(target_yaw), math.sin(target_yaw)])
                    target_xy = target_xy + float(np.dot(xy - target_xy, along)) * along
                lateral = target_xy - xy
                xy = xy + blend * lateral
                # heading follows the motion: forward speed plus the rate of the sideways blend
                blend_rate = 0.5 * math.pi * math.sin(math.pi * t) / spec.duration_s if t < 1.0 else 0.0
                left = math.cos(yaw) * lateral[1] - math.sin(yaw) * lateral[0]  # signed sideways distance
                yaw = yaw + math.atan2(blend_rate * left, max(agent.speed_mps, 0.1))
            return xy, yaw, agent.speed_mps
        moving = spec.behaviour == "cross" and agent.triggered_at_s is not None and agent.travelled_m < spec.distance_m
        return agent.xy, agent.yaw, agent.speed_mps if moving else 0.0

    def _snapshot(self) -> WorldSnapshot:
        ego = AgentState(EGO_ID, "car", self.ego_size_m,
                         pose_from_xyz_yaw(self._ego["xy"][0], self._ego["xy"][1], 0.0, self._ego["yaw"]),
                         abs(self._ego["speed"]))  # a speed, as CARLA's velocity's length
        agents = []
        for agent in self._agents:
            xy, yaw, speed = self._agent_pose(agent)
            agents.append(AgentState(agent.spec.agent_id, agent.spec.kind, tuple(agent.spec.size_m),
                                     pose_from_xyz_yaw(xy[0], xy[1], 0.0, yaw), speed))
        collisions = tuple(a.agent_id for a in agents if _obb_overlap(ego, a))
        if any(_obb_overlap(ego, box) for box in self._static if _near(ego, box)):
            collisions = (-1,) + collisions
        return WorldSnapshot(self._frame + self._steps, self._steps * self.dt_s, ego, tuple(agents), collisions)
