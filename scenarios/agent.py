"""The built-in driving agent: lane keeping (pure pursuit on the route), adaptive cruise control, and yielding to
road users whose way crosses its route (oncoming traffic across a left turn, a pedestrian about to step out).

It has the CARLA leaderboard's face: `sensors()` lists leaderboard sensor dicts
(UE frame, degrees), `run_step(input_data, timestamp) -> control`. Besides the
cameras it reads the embedded runner's privileged pseudo-sensor
input_data["world"] = (frame, WorldSnapshot) for its own pose and the agents.
A user's agent is any class with the same face, constructed as
`Agent(route_xy_m=..., target_speed_mps=...)`, or a CARLA leaderboard agent (an
AutonomousAgent: setup and set_global_plan, of leaderboard 2.x or 1.0), built
and set up as that leaderboard does, its run_step given the leaderboard's clock.

`load_agent` builds the run's agent; `agent_call` and `destroy_agent` call into it, so that whatever the agent's
code raises (its own sys.exit() included) comes out as an AgentError naming the agent and the call.
"""

from __future__ import annotations

import enum
import inspect
import math
import os
from collections.abc import Mapping

import numpy as np

from carla_bridge.embedded import MAX_BRAKE_MPS2, MAX_STEER_RAD, WHEELBASE_M
from carla_bridge.simulator import VehicleControl
from neural_sensor.rig import NUSCENES_LIKE_RIG
from neural_sensor.scene.path import Path
from scenarios.base import Scenario
from scenarios.route_options import route_options
from scenarios.signals import SIGNALLED, host_handles_signals
from scenarios.user_code import import_user_module, module_from_file


def nuscenes_like_sensors(width: int = 480, height: int = 270) -> list[dict]:
    """neural_sensor.rig.NUSCENES_LIKE_RIG as leaderboard sensor dicts (UE frame: y right, yaw clockwise, degrees)."""
    return [{"type": "sensor.camera.rgb", "id": name, "x": x, "y": -y, "z": z, "roll": 0.0, "pitch": 0.0,
             "yaw": -yaw, "width": width, "height": height, "fov": fov}
            for name, x, y, z, yaw, fov in NUSCENES_LIKE_RIG]


CURVE_LATERAL_MPS2 = 5.0  # the built-in agent takes a turn no faster than this across it (a 5 m corner at 5 m/s)
CURVE_BRAKE_MPS2 = 1.5  # and slows for it at this
CURVE_WINDOW_M = 4  # over this much of the route its curvature is measured (an even number of metres)
CURVE_PREVIEW_S = 1.0  # the speed for a turn is asked for this much earlier (the cruise controller's lag)
# yielding: another road user's way is predicted YIELD_HORIZON_S ahead (constant speed and turn rate); where it
# enters the route's corridor the agent passes only if it clears that place YIELD_GAP_S before the other arrives, or
# gets there YIELD_GAP_S after the other has left (taking off at YIELD_ACCEL_MPS2); else it stops YIELD_STOP_M short
YIELD_HORIZON_S = 6.0
YIELD_STEP_S = 0.2
YIELD_GAP_S = 1.5
YIELD_ACCEL_MPS2 = 2.0
YIELD_BRAKE_MPS2 = 3.0
YIELD_STOP_M = 2.0
YIELD_LAST_M = 0.5  # braking as hard as it takes, it stops at least this short of the other's way
TURN_RATE_S = 2.0  # another road user's turn rate is its heading's change over this long (at least half of it seen)
HEAD_ON_DEG = 20.0  # a moving road user's way within this of head-on along the route is not a crossing (the cruise
#                     controller's, as a car ahead in the lane: a prediction's drift on a bend is not a conflict)
MERGE_BESIDE_M = 3.5  # a car this near the corridor (the lane beside) ahead or behind the ego is not yielded to
CORRIDOR_MARGIN_M = 0.4  # the corridor is the ego's and the other's half-widths plus this
HOLD_BELOW_MPS = 0.1  # asked for less than this below 1 m/s, the agent brakes fully and stands
STATION_M = 0.5  # the route's stations for yielding, this far apart
_PREFILTER = True  # False: every agent goes through the yield search (the reference the prefilter is tested against)


class BuiltinAgent:
    """Pure-pursuit lane keeping on the route, a time-gap cruise controller behind what is ahead in its lane, and
    yielding where another road user's predicted way crosses the route ahead (`_yield_limit_mps`)."""

    def __init__(self, route_xy_m: np.ndarray, target_speed_mps: float = 10.0, width: int = 480, height: int = 270):
        self.route = Path(np.asarray(route_xy_m, dtype=np.float64))
        self.target_speed_mps = float(target_speed_mps)
        self.width, self.height = width, height
        self.time_gap_s = 1.5
        self.standstill_gap_m = 4.0
        # the route's curvature a metre apart (its heading's change over CURVE_WINDOW_M): the cruise speed is
        # held to what a turn allows (CURVE_LATERAL_MPS2 across it), braking for it in time (CURVE_BRAKE_MPS2)
        self.stations_m = np.arange(0.0, self.route.length_m + 1.0, 1.0)
        headings = np.unwrap(self.route.chord_headings(self.stations_m))
        half = int(CURVE_WINDOW_M // 2)
        ahead = np.concatenate([headings[half:], np.full(half, headings[-1])])
        behind = np.concatenate([np.full(half, headings[0]), headings[:-half]])
        self.curve_speed_mps = np.sqrt(CURVE_LATERAL_MPS2 / np.maximum(np.abs(ahead - behind) / (2 * half), 1e-6))
        # the route every STATION_M for yielding: points, unit tangents and headings
        self.yield_stations_m = np.arange(0.0, self.route.length_m + 1e-9, STATION_M)
        self.yield_headings = np.unwrap(self.route.chord_headings(self.yield_stations_m, STATION_M))
        self.yield_tangents = np.stack([np.cos(self.yield_headings), np.sin(self.yield_headings)], axis=1)
        self.yield_xy_m = np.array([self.route.at(float(v))[0][:2] for v in self.yield_stations_m])
        self._seen: dict[int, list[tuple[float, float]]] = {}  # agent id -> its (timestamp s, yaw rad) lately
        self._yield_room_m = math.inf

    def sensors(self) -> list[dict]:
        return nuscenes_like_sensors(self.width, self.height)

    def run_step(self, input_data: dict, timestamp: float) -> VehicleControl:
        _, snapshot = input_data["world"]
        ego = snapshot.ego
        xy, yaw, speed = ego.position_m[:2], ego.yaw_rad, ego.speed_mps
        # lateral: pure pursuit towards a point one look-ahead distance along the route (a shorter one through a
        # turn that holds the speed down: the long one cuts the corner and swings wide out of it)
        s, _ = self.route.project(xy)
        lookahead = self._lookahead_m(s, speed)
        target, _ = self.route.at(s + lookahead)
        rel = target - xy
        alpha = math.atan2(rel[1], rel[0]) - yaw
        curvature = 2.0 * math.sin(alpha) / max(float(np.linalg.norm(rel)), 1e-3)
        delta = math.atan(WHEELBASE_M * curvature)
        steer = float(np.clip(-delta / MAX_STEER_RAD, -1.0, 1.0))  # CARLA: positive steer turns right
        # longitudinal: follow the closest agent in our corridor ahead, else cruise (no faster than the turns ahead
        # allow)
        cruise = min(self.target_speed_mps, self._curve_limit_mps(s, speed * CURVE_PREVIEW_S))
        desired = cruise
        ahead = set()
        if snapshot.agents:  # every agent in the ego's frame at once (hundreds of them cost ms one by one)
            inv = np.linalg.inv(ego.pose_agent_to_world)
            local = np.array([a.pose_agent_to_world[:3, 3] for a in snapshot.agents]) @ inv[:3, :3].T + inv[:3, 3]
            widths_m = np.array([a.size_m[1] for a in snapshot.agents])
            near = ((local[:, 0] > 0) & (local[:, 0] <= 60)
                    & (np.abs(local[:, 1]) <= 0.5 * (ego.size_m[1] + widths_m) + CORRIDOR_MARGIN_M))
            for n in np.flatnonzero(near):
                agent = snapshot.agents[n]
                ahead.add(agent.agent_id)
                gap = local[n, 0] - 0.5 * (ego.size_m[0] + agent.size_m[0])
                desired = min(desired, self._follow_mps(gap, math.cos(agent.yaw_rad - yaw) * agent.speed_mps))
        yield_mps = self._yield_limit_mps(snapshot, s, speed, cruise, ahead)
        desired = min(desired, yield_mps)
        accel = 0.8 * (desired - speed)
        throttle = float(np.clip(accel / 3.5, 0.0, 1.0))
        brake = float(np.clip(-accel / 6.0, 0.0, 1.0)) if accel < -0.3 else 0.0
        if yield_mps < speed and self._yield_room_m < math.inf:  # as hard as stopping short of the other's way needs
            # (the cruise control's brake eases off as the speed falls: a walker stepping out 6 m ahead was hit)
            needed_mps2 = speed * speed / (2.0 * max(self._yield_room_m - YIELD_LAST_M, 0.1))
            brake = max(brake, float(min(1.0, needed_mps2 / MAX_BRAKE_MPS2)))
        if desired < HOLD_BELOW_MPS and speed < 1.0:
            brake = 1.0  # asked to stand: it holds (the dead band let it creep on into what it waited behind)
        return VehicleControl(throttle, steer, brake)

    def _follow_mps(self, gap_m: float, lead_mps: float) -> float:
        """The speed the cruise control asks for gap_m behind a car moving lead_mps along the ego's way: halfway
        from the lead's speed to what keeps time_gap_s beyond standstill_gap_m, and no more than that."""
        lead_mps = max(0.0, lead_mps)
        safe_mps = max(0.0, (gap_m - self.standstill_gap_m) / self.time_gap_s)
        return min(lead_mps + 0.5 * (safe_mps - lead_mps), safe_mps)

    def _lookahead_m(self, s_m: float, speed_mps: float) -> float:
        """How far ahead along the route the pure pursuit aims: max(6, 0.9 v), or max(2.5, 0.5 v) where a turn
        within that distance holds the speed down."""
        lookahead = max(6.0, 0.9 * speed_mps)
        return max(2.5, 0.5 * speed_mps) if self._turn_within(s_m, lookahead) else lookahead

    def _turn_within(self, s_m: float, ahead_m: float) -> bool:
        """Whether the route between s_m and ahead_m beyond it turns too sharply for the cruise speed."""
        first = min(max(int(s_m), 0), len(self.stations_m) - 1)
        return bool(self.curve_speed_mps[first:int(s_m + ahead_m) + 2].min() < self.target_speed_mps)

    def _curve_limit_mps(self, s_m: float, early_m: float = 0.0) -> float:
        """The fastest speed at arc length s_m from which every turn ahead can still be taken in time, braking
        early_m sooner."""
        ahead = self.stations_m >= s_m
        distance_m = np.maximum(self.stations_m[ahead] - s_m - early_m, 0.0)
        if not len(distance_m):
            return math.inf
        return float(np.min(np.sqrt(self.curve_speed_mps[ahead] ** 2 + 2.0 * CURVE_BRAKE_MPS2 * distance_m)))

    def _yield_limit_mps(self, snapshot, s_m: float, speed_mps: float, cruise_mps: float, skip_ids: set) -> float:
        """The speed from which the ego can still stop YIELD_STOP_M short of the first place ahead on its route
        where another road user's predicted way crosses it too close in time (math.inf if none).

        Each agent seen for at least half of TURN_RATE_S (its turn rate is its yaw's change over that) and not in
        skip_ids (what the cruise controller follows) is moved ahead at its speed and turn rate, every YIELD_STEP_S for
        YIELD_HORIZON_S; its box, turned to the route there, is in the route's corridor where its half-width
        across the route plus the ego's plus CORRIDOR_MARGIN_M reaches the route, unless it is moving within
        HEAD_ON_DEG of head-on (a car ahead in the lane is the cruise controller's). Those samples give the stretch
        of route it takes and from when to when (for ever if it is still there at the horizon). The ego, taking
        off from speed_mps at YIELD_ACCEL_MPS2 up to cruise_mps, passes if its rear clears the stretch YIELD_GAP_S
        before the other arrives or its front gets there YIELD_GAP_S after the other has left; else it yields.
        An agent moving the route's way where it reaches it is followed as the cruise control follows if it is in
        the corridor ahead now (round a bend or a turn); is left alone if it is within MERGE_BESIDE_M of the corridor
        and ahead of the ego or behind it (merging in ahead: followed once in; behind: nothing to do); else (level
        with the ego, or coming through a junction into the lane it turns into) only the place where it reaches the
        route counts. Where the ego's front is already in the stretch, it goes on only if it clears it before the
        other arrives, and else stands."""
        ego, now_s = snapshot.ego, float(snapshot.timestamp_s)
        self._yield_room_m = math.inf  # how far the ego's front is from the nearest way it yields to
        seen, self._seen = self._seen, {}
        for agent in snapshot.agents:  # the last TURN_RATE_S of each one's headings (a lane's polyline turns
            #                            it in steps: its turn rate over one tick is 0 or a jump)
            kept = [(t, yaw) for t, yaw in seen.get(agent.agent_id, []) if now_s - TURN_RATE_S <= t < now_s]
            self._seen[agent.agent_id] = kept + [(now_s, agent.yaw_rad)]
        reach_m = max(cruise_mps, speed_mps) * YIELD_HORIZON_S + 20.0
        lo = int(max(s_m, 0.0) // STATION_M)
        hi = min(int((s_m + reach_m) // STATION_M) + 1, len(self.yield_stations_m))
        if hi - lo < 2:
            return math.inf
        points, tangents = self.yield_xy_m[lo:hi], self.yield_tangents[lo:hi]
        headings, stations = self.yield_headings[lo:hi], self.yield_stations_m[lo:hi]
        times = np.arange(0.0, YIELD_HORIZON_S + 1e-9, YIELD_STEP_S)
        half_length = 0.5 * ego.size_m[0]
        # an agent whose box cannot reach the corridor of this stretch of route within the horizon at its speed is
        # left out before the [N, K, M] search below (with hundreds of agents that search was most of the cost)
        everyone = snapshot.agents
        if not everyone:
            return math.inf
        xy0 = np.array([a.pose_agent_to_world[:2, 3] for a in everyone])
        boxes = np.array([a.size_m[:2] for a in everyone])
        nearest_m = np.sqrt(np.min(((xy0[:, None, :] - points[None]) ** 2).sum(axis=2), axis=1))
        reach_now_m = (np.maximum([a.speed_mps for a in everyone], 0.0) * YIELD_HORIZON_S + 0.5 * STATION_M
                       + 0.5 * ego.size_m[1] + 0.5 * np.hypot(boxes[:, 0], boxes[:, 1]) + CORRIDOR_MARGIN_M)
        candidates, rates = [], []
        for n in np.flatnonzero((nearest_m <= reach_now_m + 1e-6) | (not _PREFILTER)):
            agent = everyone[n]
            history = self._seen[agent.agent_id]
            if agent.agent_id in skip_ids or now_s - history[0][0] < 0.5 * TURN_RATE_S:
                continue
            v = max(agent.speed_mps, 0.0)
            turn_rate = math.remainder(agent.yaw_rad - history[0][1], 2.0 * math.pi) / (now_s - history[0][0])
            rates.append(float(np.clip(turn_rate, -min(1.0, v / 3.0), min(1.0, v / 3.0))))  # no tighter than 3 m
            candidates.append(agent)
        if not candidates:
            return math.inf
        # every candidate's way at once: [N, K] headings, [N, K, 2] places, each place's nearest station [N, K]
        yaw = np.array([a.yaw_rad for a in candidates])[:, None]
        v = np.array([max(a.speed_mps, 0.0) for a in candidates])[:, None]
        rate = np.array(rates)[:, None]
        way = yaw + rate * times[None]
        straight = np.abs(rate) < 1e-4
        safe_rate = np.where(straight, 1.0, rate)
        dx = np.where(straight, v * times * np.cos(yaw), v / safe_rate * (np.sin(way) - np.sin(yaw)))
        dy = np.where(straight, v * times * np.sin(yaw), v / safe_rate * (np.cos(yaw) - np.cos(way)))
        xy = np.array([a.position_m[:2] for a in candidates])[:, None, :] + np.stack([dx, dy], axis=2)
        rel = xy[:, :, None, :] - points[None, None]  # [N, K, M, 2]
        j = np.argmin(np.einsum("nkmd,nkmd->nkm", rel, rel), axis=2)
        rel = np.take_along_axis(rel, j[..., None, None], axis=2)[:, :, 0]
        along = np.einsum("nkd,nkd->nk", rel, tangents[j])
        across = tangents[j][..., 0] * rel[..., 1] - tangents[j][..., 1] * rel[..., 0]
        turned = way - headings[j]
        size = np.array([a.size_m[:2] for a in candidates])
        half_across = 0.5 * (size[:, :1] * np.abs(np.sin(turned)) + size[:, 1:] * np.abs(np.cos(turned)))
        half_along_all = 0.5 * (size[:, :1] * np.abs(np.cos(turned)) + size[:, 1:] * np.abs(np.sin(turned)))
        on_route = np.abs(along) <= 0.5 * STATION_M + 1e-6  # (not beyond the window's ends)
        hits = on_route & (np.abs(across) <= 0.5 * ego.size_m[1] + half_across + CORRIDOR_MARGIN_M)
        hits &= (v <= 0.5) | (np.cos(turned) > -math.cos(math.radians(HEAD_ON_DEG)))
        limit = math.inf
        for n in np.flatnonzero(hits.any(axis=1)):
            hit, half_along = hits[n], half_along_all[n]
            first = int(np.argmax(hit))
            arrives_s = float(times[first])
            if v[n, 0] > 0.5 and math.cos(turned[n, first]) > 0.5:  # moving the route's way where it reaches it
                now_m = stations[j[n, 0]] + along[n, 0]  # where it is along the route now
                if first == 0 and now_m - half_along[0] > s_m + half_length:
                    # in the corridor ahead (round a bend or a turn, where the cruise control's straight look
                    # misses it): followed as the cruise control follows
                    gap_m = now_m - half_along[0] - s_m - half_length
                    limit = min(limit, self._follow_mps(gap_m, v[n, 0] * math.cos(turned[n, 0])))
                    continue
                beside_m = abs(across[n, 0]) - 0.5 * ego.size_m[1] - half_across[n, 0]
                if beside_m < MERGE_BESIDE_M and abs(now_m - s_m) > half_length:
                    continue  # in the lane beside, ahead (merging in: followed once in) or behind (nothing to do)
                # level with the ego, or coming into the route from a crossing road (through the junction into the
                # lane the ego turns into): the place where it reaches the route is passed YIELD_GAP_S before it, or
                # after it
                hit = np.arange(len(hit)) == first
            at_m = stations[j[n, hit]] + along[n, hit]
            enter_m = float(np.min(at_m - half_along[hit])) - s_m - half_length  # the ego's front to the stretch
            leave_m = float(np.max(at_m + half_along[hit])) - s_m + half_length  # its rear past it
            leaves_s = math.inf if hit[-1] else float(times[hit].max()) + YIELD_STEP_S
            ego_in_s = _time_to_cover(max(enter_m, 0.0), speed_mps, cruise_mps)
            ego_out_s = _time_to_cover(leave_m, speed_mps, cruise_mps)
            if enter_m <= 0.0:  # its front already in the stretch: through if it clears it before the other comes
                if ego_out_s <= arrives_s:
                    continue
                limit, self._yield_room_m = 0.0, 0.0  # else it stands (a walker about to step in front of it)
                continue
            if ego_out_s + YIELD_GAP_S <= arrives_s or ego_in_s >= leaves_s + YIELD_GAP_S:
                continue
            room_m = enter_m - YIELD_STOP_M - speed_mps * CURVE_PREVIEW_S  # (asked for a cruise lag early)
            limit = min(limit, math.sqrt(2.0 * YIELD_BRAKE_MPS2 * max(room_m, 0.0)))
            self._yield_room_m = min(self._yield_room_m, enter_m)
        return limit

    def destroy(self) -> None:
        pass


def _time_to_cover(distance_m: float, speed_mps: float, cruise_mps: float) -> float:
    """Seconds to drive distance_m from speed_mps, speeding up at YIELD_ACCEL_MPS2 to at most
    max(cruise_mps, speed_mps, 1 m/s)."""
    top = max(cruise_mps, speed_mps, 1.0)
    v0 = max(speed_mps, 0.0)
    accel_s = (top - v0) / YIELD_ACCEL_MPS2
    accel_m = 0.5 * (v0 + top) * accel_s
    if distance_m <= accel_m:
        return (math.sqrt(v0 * v0 + 2.0 * YIELD_ACCEL_MPS2 * distance_m) - v0) / YIELD_ACCEL_MPS2
    return accel_s + (distance_m - accel_m) / top


class ScenarioError(RuntimeError):
    """A scenario's make_scenario raised something other than a ValueError: a bug in the user's code (the CLI prints
    its traceback, the __cause__, and exits 2: the scenario could not be built, which is not a failed run)."""

    def __init__(self, where: str, seed: int, err: BaseException):
        detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        super().__init__(f"{where}: make_scenario({seed}) raised {detail}")


class AgentError(RuntimeError):
    """The user's driving agent raised: which agent, where (its constructor, sensors(), run_step at frame N), what.

    The agent's own exception is the __cause__ (the CLI prints its traceback: the bug is in the agent's code).
    """

    def __init__(self, agent: str | None, where: str, err: BaseException, keys=None):
        self.agent, self.where = agent or "builtin", where
        detail = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        # keys: what the agent was given (input_data's sensor ids); a KeyError is most often one it did not get
        given = (f" (input_data has {', '.join(map(repr, keys))})" if keys is not None and isinstance(err, KeyError)
                 else "")
        super().__init__(f"the agent {self.agent} raised {detail} in {where}{given}")


LEADERBOARD_PLAN_STEP_M = 1.0  # the leaderboard's route: interpolate_trajectory's 1 m hops
LEADERBOARD_HOST_PORT = ("localhost", 2000)  # what a leaderboard agent's constructor is given without --carla


def is_leaderboard_agent(cls) -> bool:
    """A CARLA leaderboard AutonomousAgent's face (setup, set_global_plan, sensors, run_step); load_agent builds one
    as leaderboard_evaluator does (`leaderboard_major`: 2.x or 1.0)."""
    return all(callable(getattr(cls, name, None)) for name in ("setup", "set_global_plan", "sensors", "run_step"))


def leaderboard_plan(scenario: Scenario) -> tuple[list, list]:
    """The scenario's route as the leaderboard hands it to set_global_plan: (gps_route, route), a point every
    LEADERBOARD_PLAN_STEP_M, [({"lat", "lon", "z"}, RoadOption)] (the leaderboard's own projection,
    `carla_bridge.pseudo_sensors.leaderboard_gps`) and [(carla.Transform, RoadOption)] in CARLA's frame (UE: y to the
    right, yaw clockwise, degrees). Each point's RoadOption is the command the leaderboard's route planner would
    give it (`scenarios.route_options`: LEFT / RIGHT / STRAIGHT through a junction, CHANGELANELEFT / RIGHT where
    the route leaves its lane for the next, else LANEFOLLOW); RoadOption is CARLA's own (agents.navigation) where
    that package is importable, else an enum with its names and values. Needs the carla package."""
    try:
        import carla
    except ImportError:
        raise ValueError("a leaderboard agent is given its route as carla.Transforms: install the CARLA client "
                         "package (pip install carla==0.9.16)") from None
    from carla_bridge.pseudo_sensors import leaderboard_gps, leaderboard_latlon_ref
    from neural_sensor.scene.opendrive import layout_to_opendrive

    try:
        from agents.navigation.local_planner import RoadOption
    except ImportError:
        RoadOption = _RoadOption
    path = Path(np.asarray(scenario.route_xy_m, dtype=np.float64))
    # from where the ego starts, as the leaderboard's route does (a lane route starts at the lane's beginning)
    lane = scenario.layout.lanes[scenario.ego.lane]
    start_xy, _ = Path(lane.travel_polyline()).at(scenario.ego.start_s_m)
    start_m = path.project(start_xy, s_window_m=(0.0, min(60.0, path.length_m)))[0]  # (its first leg: a U-turn's
    start_m = min(start_m, max(path.length_m - LEADERBOARD_PLAN_STEP_M, 0.0))  # way back may pass nearer)
    stations = np.linspace(start_m, path.length_m,
                           max(2, int(math.ceil((path.length_m - start_m) / LEADERBOARD_PLAN_STEP_M)) + 1))
    lat_ref, lon_ref = leaderboard_latlon_ref(layout_to_opendrive(scenario.layout))
    options = route_options(scenario.layout, path.points[:, :2], stations)
    gps_route, route = [], []
    for s, name in zip(stations, options):
        (x, y), heading = path.at(float(s))
        transform = carla.Transform(carla.Location(float(x), float(-y), 0.0),
                                    carla.Rotation(yaw=float(-math.degrees(heading))))
        gps_route.append((leaderboard_gps(lat_ref, lon_ref, float(x), float(-y), 0.0), RoadOption[name]))
        route.append((transform, RoadOption[name]))
    return gps_route, route


class _RoadOption(enum.IntEnum):
    """agents.navigation.local_planner.RoadOption's names and values (CARLA's PythonAPI), where it is not installed."""

    VOID = -1
    LEFT = 1
    RIGHT = 2
    STRAIGHT = 3
    LANEFOLLOW = 4
    CHANGELANELEFT = 5
    CHANGELANERIGHT = 6


LEADERBOARD_MAX_RADIUS_M = 3.0  # agent_wrapper.MAX_ALLOWED_RADIUS_SENSOR (leaderboard 1.0 and 2.x)
LEADERBOARD_SENSOR_LIMITS = {  # agent_wrapper.SENSORS_LIMITS: 2.x's (its qualifier tracks': 4 cameras), 1.0's
    2: {"sensor.camera.rgb": 8, "sensor.lidar.ray_cast": 2, "sensor.other.radar": 4, "sensor.other.gnss": 1,
        "sensor.other.imu": 1, "sensor.opendrive_map": 1, "sensor.speedometer": 1},
    1: {"sensor.camera.rgb": 4, "sensor.lidar.ray_cast": 1, "sensor.other.radar": 2, "sensor.other.gnss": 1,
        "sensor.other.imu": 1, "sensor.opendrive_map": 1, "sensor.speedometer": 1},
}
LEADERBOARD_QUALIFIER_CAMERAS = 4  # 2.x's QUALIFIER_SENSORS_LIMITS["sensor.camera.rgb"]


def leaderboard_major(cls) -> int | None:
    """How load_agent builds an agent class: 2 as a leaderboard 2.x AutonomousAgent (Class(carla_host, carla_port,
    debug)), 1 as a leaderboard 1.0 one (Class(path_to_conf_file), which calls setup() itself), None as ours
    (Class(route_xy_m=..., target_speed_mps=...): one that takes ours is ours, setup() or not)."""
    if not is_leaderboard_agent(cls) or _binds(cls, route_xy_m=None, target_speed_mps=None) is True:
        return None
    if _binds(cls, "localhost", 2000, False) is True:
        return 2
    if _binds(cls, "") is True:
        return 1
    return None


def leaderboard_clock_s(timestamp_s: float, first_timestamp_s: float, dt_s: float) -> float:
    """run_step's timestamp as the leaderboard gives it (scenario_runner's GameTime): the simulated seconds since
    the route began, one step (dt_s) at its first tick; a tick's own timestamp_s starts at 0 (the embedded world) or
    at the server's elapsed seconds (--carla)."""
    return float(timestamp_s) - float(first_timestamp_s) + float(dt_s)


def leaderboard_suite_breaks(agent, sensors, major: int) -> list[str]:
    """What the CARLA leaderboard's `validate_sensor_configuration` would refuse in a leaderboard agent's sensor
    dicts (major: 1 or 2, its version), in its words: opendrive_map on a SENSORS track (agent.track), a mount farther than
    LEADERBOARD_MAX_RADIUS_M from the vehicle's origin, more sensors of a type than LEADERBOARD_SENSOR_LIMITS (a 2.x
    qualifier track: LEADERBOARD_QUALIFIER_CAMERAS cameras). A run here renders them all; the list says what a
    submission would meet. Types the leaderboard does not know, and repeated ids, are refused before this."""
    track = getattr(agent, "track", None)  # (set by the leaderboard's AutonomousAgent: SENSORS unless setup() says)
    track = "" if track is None else str(getattr(track, "value", track))  # (its Track enum, or the value)
    limits = dict(LEADERBOARD_SENSOR_LIMITS[major])
    if major == 2 and track.endswith("QUALIFIER"):
        limits["sensor.camera.rgb"] = LEADERBOARD_QUALIFIER_CAMERAS
    breaks, counts = [], {}
    for sensor in sensors:
        if not isinstance(sensor, Mapping):
            continue
        kind, name = sensor.get("type"), sensor.get("id")
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "sensor.opendrive_map" and track == "SENSORS":  # (2.x: Track.SENSORS alone, not its qualifier)
            breaks.append(f"sensor {name!r}: sensor.opendrive_map on the {track} track (the MAP track's)")
        xyz = [sensor.get(k) for k in ("x", "y", "z")]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xyz):
            radius = math.sqrt(sum(float(v) ** 2 for v in xyz))
            if radius > LEADERBOARD_MAX_RADIUS_M:
                breaks.append(f"sensor {name!r}: mounted {radius:.2f} m from the vehicle's origin (at most "
                              f"{LEADERBOARD_MAX_RADIUS_M:g} m)")
    for kind, count in counts.items():
        if kind in limits and count > limits[kind]:
            breaks.append(f"{count} {kind} (at most {limits[kind]})")
    return breaks


def load_agent(dotted: str | None, scenario: Scenario, width: int, height: int, *, agent_config: str | None = None,
               carla_address: str | None = None):
    """The run's driving agent: the BuiltinAgent (dotted None, its cameras width x height) or the user's class,
    `package.module:Class` or `path/to/file.py:Class` (or `path/to/file.py` / `package.module` alone where the
    module has the leaderboard's get_entry_point()).

    A CARLA leaderboard agent (`is_leaderboard_agent`; `leaderboard_major` tells 2.x from 1.0, and one that takes
    our constructor is ours) is built as that leaderboard does: 2.x's Class(host, port, False) (the --carla
    server's, else LEADERBOARD_HOST_PORT), set_global_plan(`leaderboard_plan`), setup(agent_config or ""); 1.0's
    Class(agent_config or "") (its base class calls setup() from there), then set_global_plan.
    Any other class is built as Class(route_xy_m=..., target_speed_mps=...).
    ValueError names what cannot be loaded; AgentError wraps what the agent's code raised."""
    if dotted is None:
        if agent_config is not None:
            raise ValueError("--agent-config is handed to a leaderboard agent's setup(): give the agent (--agent)")
        return BuiltinAgent(scenario.route_xy_m, scenario.target_speed_mps, width, height)
    module_name, colon, attr = dotted.rpartition(":")
    if not colon:  # the leaderboard's way: the module alone, its get_entry_point() names the class
        module_name, attr = dotted, None
    if not module_name or attr == "":
        raise ValueError(f"agent must be given as 'package.module:Class' or 'path/to/file.py:Class', got {dotted!r}")
    if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
        module = module_from_file(module_name, "agent")
    else:
        try:
            module = import_user_module(module_name)
        except ImportError as err:
            hint = (f" (a module is found on sys.path: run from the folder above its package, set PYTHONPATH, or "
                    f"give the file: --agent path/to/{module_name.replace('.', '/')}.py{':' + attr if attr else ''})"
                    if isinstance(err, ModuleNotFoundError) else "")
            raise ValueError(f"cannot load agent {dotted!r}: {err}{hint}") from None
    if attr is None:
        entry = getattr(module, "get_entry_point", None)
        if not callable(entry):
            raise ValueError(f"agent {dotted!r}: give its class ('{dotted}:Class'); the module has no "
                             "get_entry_point() (the leaderboard's way of naming it)")
        attr = agent_call(dotted, "get_entry_point()", entry)
        if not isinstance(attr, str):
            raise ValueError(f"agent {dotted!r}: get_entry_point() must return the class's name, got {attr!r}")
    cls = getattr(module, attr, None)
    if cls is None:
        raise ValueError(f"cannot load agent {dotted!r}: {module_name} defines no {attr!r}")
    kwargs = {"route_xy_m": scenario.route_xy_m, "target_speed_mps": scenario.target_speed_mps}
    ours = _binds(cls, **kwargs)
    major = leaderboard_major(cls)
    if major is not None:
        return _leaderboard_agent(cls, major, dotted, scenario, agent_config, carla_address)
    if ours is not True and is_leaderboard_agent(cls):
        raise ValueError(f"agent {dotted!r} has a leaderboard agent's setup() and set_global_plan(), but its "
                         "constructor takes neither leaderboard 2.x's Class(carla_host, carla_port, debug), 1.0's "
                         "Class(path_to_conf_file) nor Class(route_xy_m=..., target_speed_mps=...)")
    if agent_config is not None:
        raise ValueError(f"--agent-config is handed to a leaderboard agent's setup(); agent {dotted!r} is built as "
                         "Class(route_xy_m=..., target_speed_mps=...)")
    if isinstance(ours, TypeError):
        raise ValueError(f"agent {dotted!r} must accept Class(route_xy_m=..., target_speed_mps=...): {ours}")
    try:
        agent = cls(**kwargs)
    except Exception as err:
        raise AgentError(dotted, "its constructor", err) from err
    except SystemExit as err:
        agent_exit(dotted, "its constructor", err)
    # said before any scene is built (a missing run_step was an AttributeError traceback after it, exit 1)
    missing = [f"{name}()" for name in ("sensors", "run_step") if not callable(getattr(agent, name, None))]
    if missing:
        raise ValueError(f"agent {dotted!r} has no {' and no '.join(missing)}: a driving agent has the leaderboard's "
                         "sensors() -> [sensor dicts] and run_step(input_data, timestamp) -> control")
    return agent


def _binds(cls, *args, **kwargs):
    """True where cls(*args, **kwargs) binds its signature, the TypeError where not, None where it has none to read
    (a builtin: the call itself says)."""
    try:
        inspect.signature(cls).bind(*args, **kwargs)
    except TypeError as err:
        return err
    except ValueError:
        return None
    return True


def _leaderboard_agent(cls, major: int, dotted: str, scenario: Scenario, agent_config: str | None,
                       carla_address: str | None):
    """cls built and set up as leaderboard `major`'s leaderboard_evaluator does (see load_agent)."""
    from carla_bridge.carla_world import carla_address as parse_address

    host, port = parse_address(carla_address) if carla_address else LEADERBOARD_HOST_PORT
    gps_route, route = leaderboard_plan(scenario)  # (before the agent is built: a missing carla package said first)
    config = "" if agent_config is None else str(agent_config)
    try:
        # 1.0: Class(path_to_conf_file), whose AutonomousAgent.__init__ calls setup(path_to_conf_file)
        agent = cls(host, port, False) if major == 2 else cls(config)
    except Exception as err:
        how = "Class(host, port, debug)" if major == 2 else "Class(path_to_conf_file), which calls setup()"
        raise AgentError(dotted, f"its constructor (leaderboard {major}.x's {how})", err) from err
    except SystemExit as err:
        agent_exit(dotted, "its constructor", err)
    try:
        agent_call(dotted, "set_global_plan()", agent.set_global_plan, gps_route, route)
        if major == 2:
            agent_call(dotted, "setup()", agent.setup, config)
    except BaseException:  # built: its destroy() is called however the run ends, this way too
        destroy_agent(agent, dotted, failing=True)
        raise
    return agent


def agent_call(agent_name: str | None, where: str, fn, *args, keys=None):
    """fn(*args), an exception from the agent's code re-raised as AgentError naming the agent and the call (and,
    for a KeyError, `keys`: what input_data held)."""
    try:
        return fn(*args)
    except Exception as err:
        raise AgentError(agent_name, where, err, keys) from err
    except SystemExit as err:
        agent_exit(agent_name, where, err)


def agent_exit(agent_name: str | None, where: str, err: SystemExit):
    """An agent's own sys.exit() as AgentError (it ended the run with no record, exit 0 or 1, which read as a pass
    or a failed criterion). A signal's SystemExit raised while the agent's code ran goes on as it is: ours (SIGTERM:
    143), or a host application's own handler's (which `terminate_as_exception` leaves in place: its exit cannot be
    told from the agent's, so it is not taken for one)."""
    if SIGNALLED or host_handles_signals():
        raise err
    raise AgentError(agent_name, where, err) from err


def destroy_agent(agent, name: str | None, failing: bool) -> None:
    """agent.destroy(), as the leaderboard calls it when a route ends, on every way out of a run: an exception from
    it is the agent's error (AgentError) unless the run is already failing (then the first error stands)."""
    destroy = getattr(agent, "destroy", None)
    if not callable(destroy):
        return
    try:
        destroy()
    except Exception as err:
        if not failing:
            raise AgentError(name, "destroy()", err) from err
    except SystemExit as err:  # as in every other call of the agent's (`agent_exit`)
        if not failing or SIGNALLED or host_handles_signals():
            agent_exit(name, "destroy()", err)
