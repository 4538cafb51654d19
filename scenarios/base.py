"""Scenario: what a closed-loop test is made of, and the criteria it is judged by.

A scenario module in this package defines `make_scenario(seed: int = 0) -> Scenario`.
World frame FLU, metres, seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from carla_bridge.embedded import AgentSpec, EgoStart
from neural_sensor.scene.path import Path
from neural_sensor.scene.layout import MIN_DRIVE_LANE_M, Layout
from neural_sensor.world import WorldSnapshot

ROUTE_FROM_EGO_M = 5.0  # the route must pass at most this far from the ego's start
ROUTE_CORRIDOR_M = 5.0  # time to collision follows the ego's route while the ego is within this of it
CROSSING_DEG = 30.0  # an agent moving across the route at this angle or more may cross out of the ego's corridor
ROUTE_TRACK_M = 10.0  # the criteria follow the ego along its route within this of where it was a tick before
REVERSE_MIN_MPS, REVERSE_MIN_STEP_M = 0.1, 0.002  # an ego moving backwards: at least this fast and this far a tick
ROUTE_SLACK_M = 2.0  # a route may pass this far beyond a lane's width from its centre line (a wide turn's corner)


@dataclass
class Scenario:
    """A closed-loop test: scene, ego start and route, agents, criteria thresholds."""

    name: str
    description: str
    layout: Layout
    ego: EgoStart
    agents: list[AgentSpec]
    route_xy_m: np.ndarray  # [P, 2] the path the ego is asked to drive
    target_speed_mps: float = 10.0
    route_goal_m: float = 80.0  # route completion is progress along the route / this distance
    min_ttc_s: float = 1.0  # the minimum time-to-collision criterion threshold
    max_ticks: int = 200
    recorded_lane: int = 0  # the lane the scene was "recorded" along (off-trajectory is measured from it)
    voxel_m: float = 0.3
    max_route_deviation_m: float = 2.5  # the route deviation criterion: the ego's centre at most this far from its
    #                                     route (an agent that drove in the oncoming lane passed every criterion)
    recorded_xy_m: np.ndarray | None = None  # [P, 2] where the drive was recorded, if not along recorded_lane (a
    #                                          turn's route: the reconstruction sees the road it turns into)

    def __post_init__(self) -> None:
        """The fields a run reads before its simulator checks the rest (lanes, agents): ValueError naming one."""
        if not isinstance(self.layout, Layout):
            raise ValueError(f"scenario {self.name!r}: layout must be a Layout, got {type(self.layout).__name__}")
        if not isinstance(self.ego, EgoStart):
            raise ValueError(f"scenario {self.name!r}: ego must be an EgoStart, got {type(self.ego).__name__}")
        if not isinstance(self.agents, (list, tuple)) or not all(isinstance(a, AgentSpec) for a in self.agents):
            raise ValueError(f"scenario {self.name!r}: agents must be a list of AgentSpec")
        _check_lane(self.layout, self.recorded_lane, f"scenario {self.name!r}: recorded_lane")
        route = np.asarray(self.route_xy_m, dtype=np.float64) if self.route_xy_m is not None else np.zeros(0)
        if route.ndim != 2 or route.shape[1] != 2 or len(route) < 2 or not np.isfinite(route).all():
            raise ValueError(f"scenario {self.name!r}: route_xy_m must be [P >= 2, 2] finite metres, got shape "
                             f"{route.shape}")
        self.route_xy_m = route
        for name, low, strict in (("target_speed_mps", 0.0, True), ("route_goal_m", 0.0, True),
                                  ("min_ttc_s", 0.0, False), ("voxel_m", 0.0, True),
                                  ("max_route_deviation_m", 0.0, True)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(value) or value < low or (strict and value == low):
                raise ValueError(f"scenario {self.name!r}: {name} must be a finite number {'>' if strict else '>='} "
                                 f"{low:g}, got {value!r}")
            setattr(self, name, float(value))  # (a numpy number went into summary.json, which json cannot write)
        if isinstance(self.max_ticks, bool) or not isinstance(self.max_ticks, (int, np.integer)) or self.max_ticks < 1:
            raise ValueError(f"scenario {self.name!r}: max_ticks must be an integer >= 1, got {self.max_ticks!r}")
        self.recorded_lane, self.max_ticks = int(self.recorded_lane), int(self.max_ticks)
        off_m, point = _route_off_road_m(self.layout, route)
        if off_m > 0.0:
            raise ValueError(f"scenario {self.name!r}: route_xy_m point {point} {route[point].round(1).tolist()} is "
                             f"{off_m:.1f} m beyond the layout's lanes (a route runs on the road: within a lane's "
                             f"width + {ROUTE_SLACK_M:g} m of some lane's centre line, never past a road's end)")
        self._check_route_from_the_ego()
        if self.recorded_xy_m is not None:
            recorded = np.asarray(self.recorded_xy_m, dtype=np.float64)
            if recorded.ndim != 2 or recorded.shape[1] != 2 or len(recorded) < 2 or not np.isfinite(recorded).all():
                raise ValueError(f"scenario {self.name!r}: recorded_xy_m must be [P >= 2, 2] finite metres (or None: "
                                 f"along recorded_lane), got shape {recorded.shape}")
            off_m, point = _route_off_road_m(self.layout, recorded)
            if off_m > 0.0:
                raise ValueError(f"scenario {self.name!r}: recorded_xy_m point {point} "
                                 f"{recorded[point].round(1).tolist()} is {off_m:.1f} m beyond the layout's lanes (the "
                                 "drive is recorded on the road)")
            self.recorded_xy_m = recorded

    def _check_route_from_the_ego(self) -> None:
        """The route must pass the ego's start, run the ego's way there, and reach route_goal_m beyond it (the
        route completion criterion measures progress along it from there). An ego start off its lane is left to
        the simulator, which names it."""
        lanes = self.layout.lanes
        if not 0 <= self.ego.lane < len(lanes):
            return
        lane = Path(lanes[self.ego.lane].travel_polyline())
        if not 0.0 <= self.ego.start_s_m <= lane.length_m:
            return
        start_xy, start_yaw = lane.at(self.ego.start_s_m)
        route = Path(self.route_xy_m)
        along_m, lateral_m = route.project(start_xy)
        _, route_yaw = route.at(along_m)
        where = f"scenario {self.name!r}: route_xy_m"
        # an ego starting farther from its route than the route deviation criterion allows fails it at frame 1
        limit_m = min(ROUTE_FROM_EGO_M, float(self.max_route_deviation_m))
        if abs(lateral_m) > limit_m:
            said = "" if limit_m == ROUTE_FROM_EGO_M else ", max_route_deviation_m"
            raise ValueError(f"{where} passes {abs(lateral_m):.1f} m from the ego's start {start_xy.round(1).tolist()} "
                             f"(lane {self.ego.lane} at {self.ego.start_s_m:g} m); the route is the path the ego is "
                             f"asked to drive from there (at most {limit_m:g} m away{said})")
        if math.cos(route_yaw - start_yaw) < 0.0:
            raise ValueError(f"{where} runs against the ego's lane {self.ego.lane} at its start (their headings differ "
                             f"by {abs(math.degrees(math.remainder(route_yaw - start_yaw, 2 * math.pi))):.0f} "
                             "degrees): give its points in the direction the ego drives")
        ahead_m = route.length_m - along_m
        if self.route_goal_m > ahead_m + 1e-6:
            raise ValueError(f"scenario {self.name!r}: route_goal_m {self.route_goal_m:g} is longer than the route "
                             f"ahead of the ego's start ({ahead_m:.1f} m): route completion could never reach 1")

    @property
    def recorded_path_xy_m(self) -> np.ndarray:
        """[P, 2] where the drive was recorded: recorded_xy_m where given, else the recorded lane's centre line in
        its direction of travel."""
        if self.recorded_xy_m is not None:
            return self.recorded_xy_m
        return self.layout.lanes[self.recorded_lane].travel_polyline()


def _route_off_road_m(layout: Layout, route_xy_m: np.ndarray, width_share: float = 1.0,
                      slack_m: float = ROUTE_SLACK_M) -> tuple[float, int]:
    """(metres, index) of the route point farthest beyond the road: its distance to the nearest lane's centre
    polyline less width_share of that lane's width and slack_m (0 where every point is within that of some lane).
    route_xy_m [P, 2]."""
    assert route_xy_m.ndim == 2 and route_xy_m.shape[1] == 2, route_xy_m.shape
    excess = np.full(len(route_xy_m), np.inf)
    for lane in layout.lanes:
        excess = np.minimum(excess, Path(lane.centre_m).distances_m(route_xy_m) - width_share * lane.width_m - slack_m)
    worst = int(np.argmax(excess))
    return max(0.0, float(excess[worst])), worst


def lane_change_route(layout: Layout, lane: int, start_s_m: float, change_at_s_m: float,
                      offset_m: float, length_m: float, change_len_m: float = 20.0) -> np.ndarray:
    """A route along `lane` that shifts sideways by offset_m (left positive) over change_len_m."""
    path = Path(layout.lanes[lane].travel_polyline())
    s = np.arange(start_s_m, start_s_m + length_m, 1.0)
    points = []
    for value in s:
        xy, yaw = path.at(float(value))
        t = np.clip((value - change_at_s_m) / change_len_m, 0.0, 1.0)
        shift = offset_m * (0.5 - 0.5 * math.cos(math.pi * t))
        points.append(xy + shift * np.array([-math.sin(yaw), math.cos(yaw)]))
    return np.asarray(points)


def turn_route(layout: Layout, from_lane: int, to_lane: int, start_s_m: float, length_m: float,
               radius_m: float | None = None) -> np.ndarray:
    """[P, 2] a route a point a metre (m, the layout's frame): along from_lane from start_s_m, turning into to_lane
    where their centre lines cross (an intersection's lanes) on a circular arc of radius_m (default
    TURN_RADIUS_M: right or left), then along to_lane, length_m in all or to to_lane's end. Raises ValueError
    naming the problem: lanes that are not the layout's, or whose centre lines do not cross ahead of start_s_m,
    or cross at under 20 degrees (no turn); an arc that would begin behind start_s_m, leave the road (the largest
    radius that stays on it is named) or turn tighter than MIN_TURN_RADIUS_M; a length that ends before the turn
    does. Lanes that end where the next begins (a map's junction): `chain_route`."""
    for name, lane in (("from_lane", from_lane), ("to_lane", to_lane)):
        _check_lane(layout, lane, f"turn_route: {name}")
    for name, value in (("start_s_m", start_s_m), ("length_m", length_m)):
        if not (isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"turn_route: {name} must be a number of metres >= 0, got {value!r}")
    start = Path(layout.lanes[from_lane].travel_polyline())
    end = Path(layout.lanes[to_lane].travel_polyline())
    if start_s_m > start.length_m:
        raise ValueError(f"turn_route: start_s_m {start_s_m:g} is beyond lane {from_lane}'s end "
                         f"({start.length_m:.1f} m long)")
    crossing = _first_crossing(start, end, start_s_m)
    if crossing is None:
        raise ValueError(f"turn_route: lane {from_lane}'s centre line does not cross lane {to_lane}'s beyond "
                         f"{start_s_m:g} m (a turn goes from one road's lane into a crossing road's; U-turns are not "
                         "made here; lanes that end where the next begins, as a map's junction's: chain_route)")
    s_from, s_to = crossing
    heading_in, heading_out = start.at(s_from)[1], end.at(s_to)[1]
    turn = math.remainder(heading_out - heading_in, 2.0 * math.pi)  # counter-clockwise (left) positive
    if abs(turn) < math.radians(20.0):
        raise ValueError(f"turn_route: lanes {from_lane} and {to_lane} cross at {abs(math.degrees(turn)):.0f} "
                         "degrees: no turn (follow one lane with lane_route)")
    radius = radius_m if radius_m is not None else TURN_RADIUS_M["left" if turn > 0 else "right"]
    if not (isinstance(radius, (int, float, np.integer, np.floating)) and math.isfinite(radius)
            and radius >= MIN_TURN_RADIUS_M):
        raise ValueError(f"turn_route: radius_m must be a number of metres >= {MIN_TURN_RADIUS_M:g} (a car's "
                         f"turning circle), got {radius_m!r}")
    radius = float(radius)
    tangent_m = radius * math.tan(abs(turn) / 2.0)  # from the arc's ends to where the centre lines cross
    if s_from - tangent_m < start_s_m:
        raise ValueError(f"turn_route: the turn's arc (radius {radius:g} m) would start {tangent_m:.1f} m before "
                         f"the crossing, behind start_s_m {start_s_m:g}: start earlier or give a smaller radius_m")
    arc = _turn_arc(start, s_from - tangent_m, turn, radius)
    fine_arc = _turn_arc(start, s_from - tangent_m, turn, radius, 0.1)
    off_m, worst = _route_off_road_m(layout, fine_arc, 0.5, 0.0)  # (beyond the lanes' edges)
    where = fine_arc[worst]
    if off_m > TURN_OFF_ROAD_M:
        fits = [r for r in np.arange(radius - 0.5, MIN_TURN_RADIUS_M - 1e-9, -0.5)
                if _route_off_road_m(layout, _turn_arc(start, s_from - r * math.tan(abs(turn) / 2.0), turn, r, 0.1),
                                     0.5, 0.0)[0] <= TURN_OFF_ROAD_M]
        raise ValueError(f"turn_route: the turn's arc (radius {radius:g} m) leaves the road by {off_m:.1f} m at "
                         f"{np.round(where, 1).tolist()}: "
                         + (f"give radius_m {fits[0]:g} or less" if fits else "no radius keeps it on the road"))
    arc_m = radius * abs(turn)
    before = [start.at(float(s))[0] for s in np.arange(start_s_m, s_from - tangent_m, 1.0)]
    left_m = min(length_m - (s_from - tangent_m - start_s_m) - arc_m, end.length_m - s_to - tangent_m)
    if left_m < 0.0:
        raise ValueError(f"turn_route: length_m {length_m:g} ends before the turn does "
                         f"({s_from - tangent_m - start_s_m + arc_m:.1f} m along the route)")
    after = [end.at(float(s))[0] for s in s_to + tangent_m + np.arange(1.0, left_m + 1e-9, 1.0)]
    return np.asarray(before + list(arc) + after)


def chain_route(layout: Layout, lanes: list[int], start_s_m: float = 0.0, length_m: float | None = None
                ) -> np.ndarray:
    """[P, 2] a route a point a metre along lanes one after another, each beginning within CHAIN_GAP_M of where the
    one before ends (a map's lanes through its junctions: `lanes_after` lists them), from start_s_m along the
    first, length_m in all (None: to the last lane's end). Raises ValueError naming a lane that is not the
    layout's or does not follow the one before."""
    if isinstance(lanes, (int, np.integer)) or len(lanes) < 1:
        raise ValueError(f"chain_route: lanes must be a list of lane indices, got {lanes!r}")
    for lane in lanes:
        _check_lane(layout, lane, "chain_route: lanes")
    points = [layout.lanes[lanes[0]].travel_polyline()]
    for before, after in zip(lanes, lanes[1:]):
        if after not in lanes_after(layout, before):
            raise ValueError(f"chain_route: lane {after} does not begin where lane {before} ends (within "
                             f"{CHAIN_GAP_M:g} m, going on its way); lanes_after(layout, {before}) = "
                             f"{lanes_after(layout, before)}")
        points.append(layout.lanes[after].travel_polyline()[1:])
    path = Path(np.concatenate(points))
    end_m = path.length_m if length_m is None else start_s_m + length_m
    if not (math.isfinite(start_s_m) and 0.0 <= start_s_m < path.length_m and math.isfinite(end_m)
            and end_m > start_s_m):
        raise ValueError(f"chain_route: start_s_m {start_s_m!r} and length_m {length_m!r} must lie along the "
                         f"chain's {path.length_m:.1f} m, length_m > 0")
    return np.array([path.at(float(s))[0] for s in np.append(np.arange(start_s_m, min(end_m, path.length_m), 1.0),
                                                             min(end_m, path.length_m))])


def lanes_after(layout: Layout, lane: int) -> list[int]:
    """The lanes that begin where `lane` ends (within CHAIN_GAP_M) going on its way (turning by less than
    CHAIN_TURN_DEG where they meet): at a map's junction, its connecting lanes; after one, the road beyond."""
    _check_lane(layout, lane, "lanes_after: lane")
    end = Path(layout.lanes[lane].travel_polyline())
    tip, heading = end.at(end.length_m)
    found = []
    for index, other in enumerate(layout.lanes):
        if index == lane:
            continue
        start = Path(other.travel_polyline())
        begin, other_heading = start.at(0.0)
        if (np.linalg.norm(begin - tip) <= CHAIN_GAP_M
                and abs(math.remainder(other_heading - heading, 2.0 * math.pi)) < math.radians(CHAIN_TURN_DEG)):
            found.append(index)
    return found


CHAIN_GAP_M = 0.5  # chain_route: a lane begins this near where the one before ends
CHAIN_TURN_DEG = 100.0  # lanes_after: and turns by less than this from it (no U-turn)


def _turn_arc(start: Path, s_m: float, turn_rad: float, radius_m: float, step_m: float = 1.0) -> np.ndarray:
    """[K, 2] a circular arc of radius_m leaving the path at s_m along its heading, turning by turn_rad (left
    positive), a point about every step_m."""
    p0, h0 = start.at(s_m)
    side = math.copysign(1.0, turn_rad)
    centre = p0 + side * radius_m * np.array([-math.sin(h0), math.cos(h0)])
    count = max(2, int(radius_m * abs(turn_rad) / step_m) + 2)
    angles = h0 - side * math.pi / 2.0 + side * np.linspace(0.0, abs(turn_rad), count)
    return centre + radius_m * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _check_lane(layout: Layout, lane, name: str) -> None:
    """A lane index of the layout, or ValueError naming it (-1 is not the last lane here)."""
    if isinstance(lane, bool) or not isinstance(lane, (int, np.integer)) or not 0 <= lane < len(layout.lanes):
        raise ValueError(f"{name} must be a lane of the layout (0..{len(layout.lanes) - 1}), got {lane!r}")


MIN_TURN_RADIUS_M = 4.0  # a car's turning circle (WHEELBASE_M / tan(MAX_STEER_RAD))
TURN_OFF_ROAD_M = 0.25  # a turn's arc may pass this far beyond the lanes' edges (a corner's kerb), no farther
TURN_RADIUS_M = {"right": 5.0, "left": 6.0}  # turn_route's default arcs (an urban corner, inside the junction)


def _first_crossing(a: Path, b: Path, from_s_m: float) -> tuple[float, float] | None:
    """(arc length along a, along b) of the first point beyond from_s_m along a where the two polylines cross."""
    best = None
    for i in range(len(a.seg_len)):
        if a.cum[i + 1] < from_s_m:
            continue
        p, r = a.points[i, :2], a.dirs[i, :2] * a.seg_len[i]
        q, d = b.points[:-1, :2], b.dirs[:, :2] * b.seg_len[:, None]
        denominator = r[0] * d[:, 1] - r[1] * d[:, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((q[:, 0] - p[0]) * d[:, 1] - (q[:, 1] - p[1]) * d[:, 0]) / denominator
            u = ((q[:, 0] - p[0]) * r[1] - (q[:, 1] - p[1]) * r[0]) / denominator
        hit = np.flatnonzero((np.abs(denominator) > 1e-12) & (t >= 0) & (t <= 1) & (u >= 0) & (u <= 1))
        hit = [j for j in hit if a.cum[i] + t[j] * a.seg_len[i] >= from_s_m]
        if hit:
            j = min(hit, key=lambda k: t[k])
            best = (float(a.cum[i] + t[j] * a.seg_len[i]), float(b.cum[j] + u[j] * b.seg_len[j]))
            break
    return best


def lane_route(layout: Layout, lane: int, start_s_m: float, length_m: float) -> np.ndarray:
    return lane_change_route(layout, lane, start_s_m, math.inf, 0.0, length_m)


def drive_scenario(layout: Layout, name: str, description: str, *, target_speed_mps: float = 10.0,
                   dt_s: float = 0.05) -> Scenario:
    """A plain drive through any layout (a prompt's, a user's map): the ego follows the layout's longest lane,
    a slower car leads it, and a car comes the other way where the road has an oncoming lane."""
    lengths = [Path(lane.travel_polyline()).length_m for lane in layout.lanes]
    lane = int(np.argmax(lengths))
    length_m = lengths[lane]
    if length_m < MIN_DRIVE_LANE_M:
        raise ValueError(f"layout {layout.name!r}: its longest lane is {length_m:.0f} m; a drive needs >= "
                         f"{MIN_DRIVE_LANE_M:g} m")
    ego = EgoStart(lane=lane, start_s_m=5.0, speed_mps=0.8 * target_speed_mps)
    agents = [AgentSpec(1, "car", "follow_lane", lane=lane, start_s_m=min(40.0, 0.4 * length_m),
                        speed_mps=0.6 * target_speed_mps)]
    direction = layout.lanes[lane].direction
    oncoming = [i for i, other in enumerate(layout.lanes) if other.direction != direction and lengths[i] >= 40.0]
    if oncoming:
        agents.append(AgentSpec(2, "car", "follow_lane", lane=oncoming[0], start_s_m=10.0,
                                speed_mps=0.8 * target_speed_mps))
    ticks = int(min(600, (length_m - 10.0) / (0.6 * target_speed_mps) / dt_s))
    return Scenario(name, description, layout, ego, agents, route_xy_m=lane_route(layout, lane, 0.0, length_m - 1.0),
                    target_speed_mps=target_speed_mps, route_goal_m=min(80.0, 0.5 * length_m), max_ticks=ticks,
                    recorded_lane=lane)


@dataclass
class CriteriaState:
    """Running evaluation of collision, route completion, minimum time-to-collision and route deviation. `ticks`: the
    ticks the run will take (None: the scenario's max_ticks); a run cut shorter than the scenario does not judge the
    route completion it has not reached (a quick `--ticks 40` look is not a failed scenario): that criterion's
    "passed" is None and "not_judged" says why, and `passed` is over the criteria judged."""

    scenario: Scenario
    ticks: int | None = None
    route: Path = field(init=False)
    start_s_m: float | None = None
    progress_m: float = 0.0
    collision_frame: int | None = None
    collision_with: tuple[int, ...] = ()
    min_ttc_s: float = math.inf
    max_offset_from_recorded_m: float = 0.0
    max_route_deviation_m: float = 0.0
    route_deviation_frame: int | None = None  # the first frame past the scenario's max_route_deviation_m
    route_s_m: float | None = None  # where along the route the ego is (followed tick to tick)
    _last_xy: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.route = Path(self.scenario.route_xy_m)
        self.recorded = Path(self.scenario.recorded_path_xy_m)

    def update(self, snapshot: WorldSnapshot) -> None:
        ego = snapshot.ego
        xy = np.array(ego.position_m[:2], np.float64)  # (a copy: kept for the next tick)
        # the ego's place along the route is followed within ROUTE_TRACK_M of where it was (and of how far it moved
        # since: a set_transform): a route that comes back near itself (a U-turn) was projected onto whichever leg
        # was nearest, and 22 m of driving read as 175 m
        moved_m = 0.0 if self._last_xy is None else float(np.linalg.norm(xy - self._last_xy))
        window = None if self.route_s_m is None else (self.route_s_m - ROUTE_TRACK_M - moved_m,
                                                      self.route_s_m + ROUTE_TRACK_M + moved_m)
        s, _ = self.route.project(xy, window)
        self.route_s_m = s
        if self.start_s_m is None:
            self.start_s_m = s
        self.progress_m = max(self.progress_m, s - self.start_s_m)
        _, lateral = self.recorded.project(xy)
        self.max_offset_from_recorded_m = max(self.max_offset_from_recorded_m, abs(lateral))
        along_m, lateral_m = _along_route(self.route, ego.position_m, window)
        # within the route its distance to the polyline (a projection's lateral is to one segment's line, which
        # near a corner is less: an ego going straight on past a turn read 0); beyond its ends, to the continuation
        inside = 0.0 < along_m < self.route.length_m
        deviation = float(self.route.distances_m(xy[None], window)[0]) if inside else abs(lateral_m)
        self.max_route_deviation_m = max(self.max_route_deviation_m, deviation)
        if deviation > self.scenario.max_route_deviation_m and self.route_deviation_frame is None:
            self.route_deviation_frame = snapshot.frame
        if snapshot.collisions and self.collision_frame is None:
            self.collision_frame, self.collision_with = snapshot.frame, snapshot.collisions
        # the ego's speed is a length (as CARLA's velocity's): which way it moves is told by its step since the last
        # tick (an ego in reverse had its speed taken as forwards, and failed against a car it backed away from)
        # (a stopped car's physics jitters by a fraction of a millimetre: only a real step backwards counts)
        backwards = (self._last_xy is not None and ego.speed_mps > REVERSE_MIN_MPS
                     and float(np.dot(xy - self._last_xy, (math.cos(ego.yaw_rad), math.sin(ego.yaw_rad))))
                     < -REVERSE_MIN_STEP_M)
        self._last_xy = xy
        self.min_ttc_s = min(self.min_ttc_s, time_to_collision(snapshot, self.route, ego_s_m=s,
                                                               ego_forward_mps=-ego.speed_mps if backwards else None))

    def results(self) -> dict:
        # the end of the route reached is the whole route done (the run stops 1 m before its end, so a goal as long
        # as the route ahead read 0.9 there)
        completion = 1.0 if self.route_end_reached else min(1.0, self.progress_m / self.scenario.route_goal_m)
        route = {"passed": bool(completion >= 0.95), "value": round(float(completion), 4),
                 "progress_m": round(float(self.progress_m), 2)}
        if not route["passed"] and self.ticks is not None and self.ticks < self.scenario.max_ticks:
            route.update(passed=None, not_judged=f"the run was cut to {self.ticks} of the scenario's "
                                                 f"{self.scenario.max_ticks} ticks")
        return {
            "collision": {"passed": self.collision_frame is None, "frame": self.collision_frame,
                          "with": list(self.collision_with)},
            "route_completion": route,
            "min_time_to_collision": {"passed": bool(self.min_ttc_s >= self.scenario.min_ttc_s),
                                      "value_s": None if math.isinf(self.min_ttc_s) else round(float(self.min_ttc_s), 3),
                                      "threshold_s": self.scenario.min_ttc_s},
            "route_deviation": {"passed": self.route_deviation_frame is None,
                                "value_m": round(float(self.max_route_deviation_m), 3),
                                "threshold_m": self.scenario.max_route_deviation_m,
                                "frame": self.route_deviation_frame},
            "max_offset_from_recorded_path_m": round(float(self.max_offset_from_recorded_m), 3),
        }

    @property
    def route_end_reached(self) -> bool:
        """The ego is within 1 m of the route's end (there is no road to drive on past it)."""
        return self.start_s_m is not None and self.start_s_m + self.progress_m >= self.route.length_m - 1.0

    @property
    def passed(self) -> bool:
        """Every criterion judged passed (route completion is not judged on a run cut short: see the class)."""
        return all(v["passed"] is not False for v in self.results().values() if isinstance(v, dict))

    def not_judged(self) -> list[str]:
        """'criterion: why' for each criterion this run could not judge."""
        return [f"{name.replace('_', ' ')}: {v['not_judged']}" for name, v in self.results().items()
                if isinstance(v, dict) and "not_judged" in v]


def time_to_collision(snapshot: WorldSnapshot, route: Path | None = None, *, ego_s_m: float | None = None,
                      ego_forward_mps: float | None = None) -> float:
    """Smallest gap / closing speed over agents in the ego's corridor ahead (inf if none is closing).

    The corridor is as wide as the ego and the agent side by side. With the ego's `route` (what the run's criteria
    pass) it follows the route: an agent is in it when its lateral offset from the route is within that width of
    the ego's own, the gap is along the route and the speeds are along its tangents, so a car coming the other way
    round a bend in its own lane is not ahead of the ego (a straight corridor along the ego's heading crosses the
    oncoming lane there: a user's bend with oncoming traffic failed this criterion at 0.6 s), and one that will have
    crossed out of the corridor when the gap closes (through a junction in front of a waiting ego) is not closing on
    it; before the route's start and past its end the route continues straight. Without a route, with the ego
    more than ROUTE_CORRIDOR_M off it, or facing against it, the corridor runs straight along the ego's heading.
    ego_s_m: where along the route the ego was found (CriteriaState follows it; None: its nearest point).
    ego_forward_mps: the ego's signed speed along its heading (None: its speed_mps, forwards); an ego moving
    backwards has its corridor behind it.
    """
    ego = snapshot.ego
    forward_mps = ego.speed_mps if ego_forward_mps is None else float(ego_forward_mps)
    if forward_mps < 0.0:  # reversing: what it may hit is behind it
        return _ttc_straight(snapshot, -1.0, -forward_mps)
    if route is not None:
        window = None if ego_s_m is None else (ego_s_m - ROUTE_TRACK_M, ego_s_m + ROUTE_TRACK_M)
        s_ego, lateral_ego = _along_route(route, ego.position_m, window)
        facing = math.cos(ego.yaw_rad - route.at(s_ego)[1]) > 0.0  # driving against the route: its heading
        if abs(lateral_ego) <= ROUTE_CORRIDOR_M and facing:
            return _ttc_along(snapshot, route, s_ego, lateral_ego, forward_mps)
    return _ttc_straight(snapshot, 1.0, forward_mps)


def _ttc_straight(snapshot: WorldSnapshot, sign: float, speed_mps: float) -> float:
    """`time_to_collision` in a straight corridor along the ego's heading (sign 1) or behind it (sign -1), the ego
    moving that way at speed_mps."""
    ego = snapshot.ego
    inv = np.linalg.inv(ego.pose_agent_to_world)
    best = math.inf
    for agent in snapshot.agents:
        local = inv @ np.append(agent.position_m, 1.0)
        half_widths = 0.5 * (ego.size_m[1] + agent.size_m[1])
        if sign * local[0] <= 0 or abs(local[1]) > half_widths:
            continue
        gap = sign * local[0] - 0.5 * (ego.size_m[0] + agent.size_m[0])
        agent_along = sign * math.cos(agent.yaw_rad - ego.yaw_rad) * agent.speed_mps
        closing = speed_mps - agent_along
        if gap <= 0:
            return 0.0
        if closing > 1e-6:
            best = min(best, gap / closing)
    return best


def _along_route(route: Path, position_m, s_window_m: tuple[float, float] | None = None) -> tuple[float, float]:
    """(arc length, lateral offset) of a position along `route`, the arc length continued along the first / last
    segment before its start (negative) and past its end (Path.project clamps it there, which put an ego past the
    end ahead of agents behind it)."""
    xy = np.asarray(position_m[:2], np.float64)
    s_m, lateral_m = route.project(xy, s_window_m)  # (s_window_m: Path.project's)
    for at_m, sign in ((0.0, -1.0), (route.length_m, 1.0)):
        if abs(s_m - at_m) < 1e-9:
            point, heading = route.at(at_m)
            beyond = float(np.dot(xy - point, (math.cos(heading), math.sin(heading))))
            if sign * beyond > 0.0:
                return at_m + beyond, lateral_m
    return s_m, lateral_m


def _ttc_along(snapshot: WorldSnapshot, route: Path, s_ego: float, lateral_ego: float, speed_mps: float) -> float:
    """`time_to_collision` in a corridor that follows `route` (the ego at arc length s_ego, lateral_ego off it,
    moving forwards at speed_mps)."""
    ego = snapshot.ego

    def along(s_m: float, yaw_rad: float, speed_mps: float) -> float:  # a speed's component along the route
        return math.cos(yaw_rad - route.at(s_m)[1]) * speed_mps

    ego_along = along(s_ego, ego.yaw_rad, speed_mps)
    best = math.inf
    for agent in snapshot.agents:
        s_agent, lateral = _along_route(route, agent.position_m)
        half_widths = 0.5 * (ego.size_m[1] + agent.size_m[1])
        if s_agent <= s_ego or abs(lateral - lateral_ego) > half_widths:
            continue
        gap = s_agent - s_ego - 0.5 * (ego.size_m[0] + agent.size_m[0])
        closing = ego_along - along(s_agent, agent.yaw_rad, agent.speed_mps)
        if gap <= 0:
            return 0.0
        if closing > 1e-6:
            # one crossing the corridor (at CROSSING_DEG or more to it: a car through a junction in front of a
            # waiting ego) is on a collision course only if it is still in the corridor when the gap would close
            turned = agent.yaw_rad - route.at(s_agent)[1]
            crossing = math.sin(turned)
            ahead_then = lateral + crossing * agent.speed_mps * gap / closing
            across_m = 0.5 * (ego.size_m[1] + agent.size_m[0] * abs(crossing)
                              + agent.size_m[1] * abs(math.cos(turned)))
            if abs(crossing) < math.sin(math.radians(CROSSING_DEG)) or abs(ahead_then - lateral_ego) <= across_m:
                best = min(best, gap / closing)
    return best
