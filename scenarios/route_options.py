"""The commands a CARLA route carries, as the leaderboard's route planner labels them (RoadOption names):
LEFT / RIGHT / STRAIGHT through a junction, CHANGELANELEFT / CHANGELANERIGHT where the route moves to the
neighbouring lane, LANEFOLLOW elsewhere. A learned driving agent reads them as its navigation command.

CARLA's GlobalRoutePlanner labels from the map's junction records. A layout read from an OpenDRIVE map keeps
them: the route is in a junction where it lies on a lane of a junction road. A template's or a prompt's roads
have none, so there a junction is where lanes cross: two lanes under the route at more than
JUNCTION_CROSSING_DEG to each other (an intersection's square). A turn's arc begins before the junction and ends
after it (a corner cut): the stretch through a junction reaches out, at most TURN_REACH_M each way, while the
route bends. Through each such stretch the turn is decided as the planner's `_turn_decision` does: the heading
from before it to after it, within TURN_STRAIGHT_DEG straight, else left or right by its sign (a U-turn: the way
the route goes round), and every point of it labelled so. A lane change labels one point, where the route
starts to leave its lane for the lane beside it (the old lane going on there), as the planner's `trace_route`
labels the waypoint before a lane-change edge; a lane that ends where the next begins, or a move onto an
oncoming lane (no lane-change edge joins them), is not one.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from neural_sensor.scene.layout import Lane, Layout
from neural_sensor.scene.opendrive import junction_lanes
from neural_sensor.scene.path import Path

JUNCTION_CROSSING_DEG = 30.0  # two lanes under a point at more than this to each other: a junction
JUNCTION_MERGE_M = 3.0  # junction stretches closer than this along the route are one junction
JUNCTION_EDGE_M = 2.0  # a route ending less than this into a junction ends at its edge (no turn taken)
TURN_REACH_M = 10.0  # a junction's stretch reaches out at most this far along the route while it bends
BENDING_RAD_PER_M = 1.0 / 60.0  # the route bends where its heading turns faster than this (a radius under 60 m)
TURN_STRAIGHT_DEG = 35.0  # GlobalRoutePlanner._turn_decision's threshold
U_TURN_DEG = 150.0  # a turn sharper than this is a U-turn: left or right as the route goes round
SAME_LANE_DEG = 30.0  # a lane within this of the route's heading, under it, is the lane the route is in
LANE_GOES_ON_M = 2.0  # a lane change leaves a lane that goes on at least this far beyond the route's last point in it
LANE_CHANGE_START_M = 0.25  # a lane change starts where the route was last this near its usual place in its lane
LANE_EDGE_SLACK_M = 0.05  # a point this far beyond a lane's half width is still on it (a shared boundary)
NEAREST_BLOCK = 512  # route points measured against a lane at a time


def route_options(layout: Layout, route_xy_m: np.ndarray, stations_m: np.ndarray) -> list[str]:
    """The RoadOption name of each route point: route_xy_m [P, 2] (m, the layout's frame), stations_m [N] metres
    along it (ascending), returns N names."""
    route_xy_m = np.asarray(route_xy_m, dtype=np.float64)
    stations_m = np.asarray(stations_m, dtype=np.float64)
    assert route_xy_m.ndim == 2 and route_xy_m.shape[1] == 2 and len(route_xy_m) >= 2, route_xy_m.shape
    assert stations_m.ndim == 1 and len(stations_m) >= 1, stations_m.shape
    assert np.isfinite(stations_m).all() and (np.diff(stations_m) >= 0).all(), "stations_m ascending and finite"
    path = Path(route_xy_m)
    points = np.array([path.at(float(s))[0] for s in stations_m])
    headings = np.unwrap(path.chord_headings(stations_m, 0.5))  # (a noisy route's segments jitter)
    crossing, lane_of, lateral_of, ahead_of, lane_heading_of = _lanes_under(layout.lanes, points, headings)
    if layout.opendrive is not None:
        crossing = _lanes_under(_junction_lanes(layout.opendrive), points, headings, any_lane=True)[0]
    junction = _merged(crossing, stations_m, JUNCTION_MERGE_M)
    options = ["LANEFOLLOW"] * len(stations_m)
    turning = np.zeros(len(stations_m), bool)
    for first, last in _runs(junction):
        if first == 0 or (last == len(stations_m) - 1 and stations_m[last] - stations_m[first] < JUNCTION_EDGE_M):
            continue  # a route starting in a junction, or ending at its edge: no turn to judge from where it starts
        first, last = _while_bending(headings, stations_m, first, last)
        turning[first:last + 1] = True
        before, after = headings[max(first - 1, 0)], headings[min(last + 1, len(headings) - 1)]
        turn = after - before  # (unwrapped: the change along the way, counter-clockwise, left, positive)
        if abs(math.remainder(turn, 2.0 * math.pi)) <= math.radians(U_TURN_DEG):
            turn = math.remainder(turn, 2.0 * math.pi)  # (beyond it, a U-turn: its way round kept)
        option = "STRAIGHT" if abs(turn) < math.radians(TURN_STRAIGHT_DEG) else ("LEFT" if turn > 0 else "RIGHT")
        options[first:last + 1] = [option] * (last + 1 - first)
    for start, side in _lane_changes(lane_of, lateral_of, ahead_of, lane_heading_of, turning):
        options[start] = "CHANGELANELEFT" if side > 0 else "CHANGELANERIGHT"
    return options


@functools.lru_cache(maxsize=4)
def _junction_lanes(xodr: str) -> list[Lane]:
    """`junction_lanes` of a map, read once per map (a route after another on the same map)."""
    return junction_lanes(xodr)


def _lanes_under(lanes: list[Lane], points: np.ndarray, headings: np.ndarray, any_lane: bool = False):
    """Per point [N]: whether two lanes under it cross (at more than JUNCTION_CROSSING_DEG; any_lane: whether any
    lane is under it), the lane the route is in (its index, -1 for none: the nearest lane under it running the
    route's way), the point's signed lateral offset from that lane's centre (left positive), how far that lane
    goes on beyond the point (m) and its heading there (rad)."""
    n = len(points)
    any_under = np.zeros(n, bool)
    crossing = np.zeros(n, bool)
    first_axis = np.full((n, 2), np.nan)  # the first lane under each point: its direction, doubled (undirected)
    lane_of = np.full(n, -1)
    best_m = np.full(n, np.inf)
    lateral_of, ahead_of, heading_of = np.zeros(n), np.zeros(n), np.zeros(n)
    for index, lane in enumerate(lanes):
        centre = lane.travel_polyline()
        reach = lane.width_m / 2.0 + LANE_EDGE_SLACK_M
        # only the route's points near the lane's box, a block at a time (a big map's lanes by a long route)
        near = np.flatnonzero(((points >= centre.min(axis=0) - reach) & (points <= centre.max(axis=0) + reach))
                              .all(axis=1))
        if not len(near):
            continue
        lane_path = Path(centre)
        for block in np.array_split(near, max(1, len(near) // NEAREST_BLOCK)):
            distance, lateral, lane_heading, along = lane_path.nearest(points[block])
            under = (distance <= reach) & (along > 0.0) & (along < lane_path.length_m)  # (not beyond its ends)
            at = block[under]
            distance, lateral, lane_heading, along = distance[under], lateral[under], lane_heading[under], along[under]
            axis = np.stack([np.cos(2.0 * lane_heading), np.sin(2.0 * lane_heading)], axis=1)
            seen = ~np.isnan(first_axis[at, 0])
            crossing[at] |= seen & (np.einsum("nd,nd->n", np.nan_to_num(first_axis[at]), axis)
                                    < math.cos(math.radians(2.0 * JUNCTION_CROSSING_DEG)))
            first_axis[at[~seen]] = axis[~seen]
            any_under[at] = True
            angle = np.abs(np.remainder(lane_heading - headings[at] + np.pi, 2.0 * np.pi) - np.pi)  # [0, pi]
            mine = (angle < math.radians(SAME_LANE_DEG)) & (distance < best_m[at])
            rows = at[mine]
            lane_of[rows], best_m[rows], lateral_of[rows] = index, distance[mine], lateral[mine]
            ahead_of[rows], heading_of[rows] = lane_path.length_m - along[mine], lane_heading[mine]
    return (any_under if any_lane else crossing), lane_of, lateral_of, ahead_of, heading_of


def _while_bending(headings: np.ndarray, stations_m: np.ndarray, first: int, last: int) -> tuple[int, int]:
    """The junction stretch [first, last] reached out along the route, at most TURN_REACH_M each way, while the
    route bends."""
    def bends(k: int) -> bool:
        step_m = stations_m[k + 1] - stations_m[k]
        return step_m > 0 and abs(headings[k + 1] - headings[k]) > BENDING_RAD_PER_M * step_m

    start, end = first, last
    while start > 0 and stations_m[first] - stations_m[start - 1] <= TURN_REACH_M and bends(start - 1):
        start -= 1
    while end + 1 < len(headings) and stations_m[end + 1] - stations_m[last] <= TURN_REACH_M and bends(end):
        end += 1
    return start, end


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """The (first, last) indices of each run of True."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def _merged(flags: np.ndarray, stations_m: np.ndarray, gap_m: float) -> np.ndarray:
    """flags with gaps of False shorter than gap_m (between two runs of True) filled."""
    out = flags.copy()
    runs = _runs(flags)
    for (_, end), (start, _) in zip(runs, runs[1:]):
        if stations_m[start] - stations_m[end] < gap_m:
            out[end:start] = True
    return out


def _lane_changes(lane_of: np.ndarray, lateral_of: np.ndarray, ahead_of: np.ndarray, heading_of: np.ndarray,
                  junction: np.ndarray) -> list[tuple[int, float]]:
    """(the point where the route starts to leave its lane, the side it leaves to: + left) for each move outside
    junctions from one lane to another beside it (the old lane going on LANE_GOES_ON_M beyond, the two running
    the same way within SAME_LANE_DEG: a U-turn onto the oncoming lane is none)."""
    changes = []
    previous, since, last = -1, 0, 0  # the lane the route was last in, where the route may start to leave it
    for i, lane in enumerate(lane_of):   # from, and the last point in it
        if junction[i]:
            previous, since = -1, i + 1
            continue
        if lane < 0:
            continue
        alongside = abs(math.remainder(heading_of[i] - heading_of[last], 2.0 * math.pi)) < math.radians(SAME_LANE_DEG)
        if previous >= 0 and lane != previous and ahead_of[last] >= LANE_GOES_ON_M and alongside:
            own = [k for k in range(since, last + 1) if lane_of[k] == previous]
            usual = float(np.median(lateral_of[own]))  # (a route may run beside its lane's centre line)
            near = [k for k in own if abs(lateral_of[k] - usual) <= LANE_CHANGE_START_M]
            side = lateral_of[last] if abs(lateral_of[last]) > LANE_CHANGE_START_M else -lateral_of[i]
            changes.append((near[-1] if near else since, float(side)))
            since = i
        elif previous < 0 or lane != previous:
            since = i
        previous, last = lane, i
    return changes
