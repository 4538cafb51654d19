"""Layout: the bird's-eye description of a driving scene (X-Scene's layout stage, made procedurally).

World frame FLU (x forward, y left, z up), metres, radians. A layout holds:

- lanes: centre polylines with a width and a travel direction (+1 along the
  polyline, -1 against it);
- road edges: kerb polylines (where the road surface ends);
- sidewalks: strips (a centre polyline and a width), raised by the kerb height;
- paved: strips of road surface that are not driving lanes (a map's parking, shoulder, biking or border lanes),
  at road level and unmarked;
- crosswalks: oriented rectangles painted on the road;
- static objects: oriented 3D boxes with a class;
- a style: time of day, weather palette and seed for appearance.

Templates build straight roads, curves and four-way intersections of any size.
`to_json` / `from_json` round-trip exactly (floats as JSON numbers).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from neural_sensor.labels import CityObjectLabel as L

OBJECT_CLASSES = {  # static object class -> semantic label
    "building": L.BUILDING,
    "vegetation": L.VEGETATION,
    "pole": L.POLE,
    "traffic_sign": L.TRAFFIC_SIGN,
    "parked_vehicle": L.CAR,
    "barrier": L.GUARD_RAIL,
}
TIMES_OF_DAY = ("morning", "noon", "evening", "dusk")  # dusk: the textured builder's after-sunset light
PALETTES = ("clear", "overcast", "wet")
BUILDING_STYLES = ("mixed", "office", "apartment", "old_town", "house")  # facade families, for the appearance


PARKED_SIZE_M = (4.5, 1.9, 1.5)  # a parked car's box (length, width, height)
PARKED_CLEARANCE_M = 0.25  # at least this between a parked car and a car as wide centred in the outer lane
SWEPT_CAR_SIZE_M = (4.8, 1.9)  # that car (the ego's 4.7 m and a little): on a bend its box swept along the lane
PARKED_KEEP_OUT = ("building", "vegetation", "pole")  # a parked car and these never overlap (the later one is left out)
PARKED_BEND_MAX_M = 1.5  # a parked car moves at most this much further onto the kerb on a bend for it
MIN_BUILDING_LENGTH_M = 6.0  # a building shortened to keep a road clear is dropped below this
ROAD_CLEARANCE_M = 0.5  # no building's footprint comes nearer than this to its own road's edge (a tight bend's inside)
MIN_DRIVE_LANE_M = 40.0  # a run's plain drive needs a lane at least this long (scenarios.base.drive_scenario)
CURVE_INSIDE_M = 2.0  # a curve's inside sidewalk edge keeps at least this from its centre (its lanes folded before)
DEFAULT_TREE_DENSITY = 0.4  # trees' weight in the roadside mix (poles 0.3, signs 0.1, parked cars 0.2 by default)
MIN_TREE_GAP = 0.5  # a denser mix closes the gap after a tree down to this fraction of it (roadside_objects)
TREE_CLEARANCE_M = 4.0  # ... the next object's centre this far from the tree's (bounding circles apart)
MAX_COORD_M = 100_000.0  # a layout lives within 100 km of its origin (float32 scenes lose centimetres beyond)


def _polyline(points, name: str) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] < 2:
        raise ValueError(f"{name}: a polyline needs >= 2 points of (x, y), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: polyline contains NaN or infinity")
    if np.abs(array).max() > MAX_COORD_M:
        where = np.unravel_index(np.argmax(np.abs(array)), array.shape)[0]
        raise ValueError(f"{name}: point {where} {array[where].tolist()} is more than {MAX_COORD_M:.0f} m from the "
                         "origin; move the layout near (0, 0)")
    if np.any(np.linalg.norm(np.diff(array, axis=0), axis=1) < 1e-9):
        raise ValueError(f"{name}: polyline has repeated consecutive points")
    return array


def _positive(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


@dataclass
class Lane:
    """A driving lane: centre polyline [P, 2] (m), width (m), direction +1 / -1 along the polyline."""

    centre_m: np.ndarray
    width_m: float = 3.5
    direction: int = 1
    lane_id: int = 0

    def __post_init__(self) -> None:
        self.centre_m = _polyline(self.centre_m, f"Lane {self.lane_id}.centre_m")
        self.width_m = _positive(self.width_m, f"Lane {self.lane_id}.width_m")
        if self.direction not in (1, -1):
            raise ValueError(f"Lane {self.lane_id}.direction must be +1 or -1, got {self.direction}")

    def travel_polyline(self) -> np.ndarray:
        """[P, 2] centre points in the direction of travel."""
        return self.centre_m if self.direction == 1 else self.centre_m[::-1].copy()


@dataclass
class Strip:
    """A band of constant width around a centre polyline (sidewalks, paved strips)."""

    centre_m: np.ndarray
    width_m: float

    def __post_init__(self) -> None:
        self.centre_m = _polyline(self.centre_m, "Strip.centre_m")
        self.width_m = _positive(self.width_m, "Strip.width_m")


@dataclass
class Box:
    """An oriented box: bottom-centre (x, y, z) m, size (length, width, height) m, yaw rad about z."""

    centre_m: tuple[float, float, float]
    size_m: tuple[float, float, float]
    yaw_rad: float = 0.0
    cls: str = "building"

    def __post_init__(self) -> None:
        self.centre_m = tuple(float(v) for v in self.centre_m)
        self.size_m = tuple(float(v) for v in self.size_m)
        if len(self.centre_m) != 3 or not all(math.isfinite(v) and abs(v) <= MAX_COORD_M for v in self.centre_m):
            raise ValueError(f"Box.centre_m must be 3 finite numbers within {MAX_COORD_M:.0f} m of the origin, "
                             f"got {self.centre_m}")
        if len(self.size_m) != 3 or not all(math.isfinite(v) and v > 0 for v in self.size_m):
            raise ValueError(f"Box.size_m must be 3 positive numbers, got {self.size_m}")
        if not math.isfinite(float(self.yaw_rad)):
            raise ValueError(f"Box.yaw_rad must be finite, got {self.yaw_rad}")
        self.yaw_rad = float(self.yaw_rad)
        if self.cls not in OBJECT_CLASSES and self.cls != "crosswalk":
            raise ValueError(f"Box.cls must be one of {sorted(OBJECT_CLASSES)}, got {self.cls!r}")

    @property
    def label(self) -> int:
        return int(OBJECT_CLASSES[self.cls])


@dataclass
class Style:
    """Appearance controls: time of day, weather palette, seed, building (facade) style."""

    time_of_day: str = "noon"
    palette: str = "clear"
    seed: int = 0
    building_style: str = "mixed"  # one of BUILDING_STYLES; "mixed" lets the appearance choose per building

    def __post_init__(self) -> None:
        if self.time_of_day not in TIMES_OF_DAY:
            raise ValueError(f"Style.time_of_day must be one of {TIMES_OF_DAY}, got {self.time_of_day!r}")
        if self.palette not in PALETTES:
            raise ValueError(f"Style.palette must be one of {PALETTES}, got {self.palette!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"Style.seed must be an integer >= 0, got {self.seed!r}")
        self.seed = int(self.seed)
        if self.building_style not in BUILDING_STYLES:
            raise ValueError(f"Style.building_style must be one of {BUILDING_STYLES}, got {self.building_style!r}")


@dataclass
class RoadReference:
    """How a road was laid out: its reference (centre) polyline [P, 2] and lane widths on each side.

    Right lanes (inner to outer) travel along the polyline, left lanes against it (right-hand traffic);
    a sidewalk of sidewalk_width_m (0 = none) lies outside each side. The OpenDRIVE writer needs it for a
    layout not read from a map (one read from a map writes that map back; its references place the decoration).
    """

    points_m: np.ndarray
    right_widths_m: tuple = ()
    left_widths_m: tuple = ()
    sidewalk_width_m: float = 0.0

    def __post_init__(self) -> None:
        self.points_m = _polyline(self.points_m, "RoadReference.points_m")
        self.right_widths_m = tuple(_positive(w, "RoadReference lane width") for w in self.right_widths_m)
        self.left_widths_m = tuple(_positive(w, "RoadReference lane width") for w in self.left_widths_m)
        self.sidewalk_width_m = float(self.sidewalk_width_m)


@dataclass
class Layout:
    """A scene layout; see the module docstring."""

    lanes: list[Lane]
    road_edges: list[np.ndarray] = field(default_factory=list)  # kerb polylines [P, 2]
    sidewalks: list[Strip] = field(default_factory=list)
    crosswalks: list[Box] = field(default_factory=list)  # flat boxes on the road, cls "crosswalk"
    objects: list[Box] = field(default_factory=list)
    style: Style = field(default_factory=Style)
    name: str = "layout"
    references: list[RoadReference] = field(default_factory=list)  # road structure, for OpenDRIVE export
    opendrive: str | None = None  # the OpenDRIVE map it was read from, which the exporter writes back whole
    paved: list[Strip] = field(default_factory=list)  # road surface outside the lanes (parking, shoulder, ...)

    def __post_init__(self) -> None:
        if not self.lanes:
            raise ValueError("Layout needs at least one lane")
        if self.opendrive is not None and not isinstance(self.opendrive, str):
            raise ValueError(f"Layout.opendrive must be the map's text or None, not {type(self.opendrive).__name__}")
        self.road_edges = [_polyline(edge, f"road edge {i}") for i, edge in enumerate(self.road_edges)]
        for box in self.crosswalks:
            if box.cls != "crosswalk":
                raise ValueError(f"Layout.crosswalks entries must have cls 'crosswalk', got {box.cls!r}")
        for box in self.objects:
            if box.cls == "crosswalk":
                raise ValueError("Layout.objects: crosswalks belong in Layout.crosswalks, not objects")

    def bounds_m(self, margin_m: float = 0.0) -> tuple[float, float, float, float]:
        """(x_min, y_min, x_max, y_max) covering every element, plus a margin."""
        strips = self.sidewalks + self.paved
        pts = [lane.centre_m for lane in self.lanes] + [s.centre_m for s in strips] + list(self.road_edges)
        for box in self.objects + self.crosswalks:
            radius = 0.5 * math.hypot(box.size_m[0], box.size_m[1])
            pts.append(np.array([[box.centre_m[0] - radius, box.centre_m[1] - radius],
                                 [box.centre_m[0] + radius, box.centre_m[1] + radius]]))
        pad = max([lane.width_m for lane in self.lanes] + [s.width_m for s in strips]) + margin_m
        allpts = np.concatenate(pts)
        return (float(allpts[:, 0].min() - pad), float(allpts[:, 1].min() - pad),
                float(allpts[:, 0].max() + pad), float(allpts[:, 1].max() + pad))

    # ------------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "lanes": [{"centre_m": l.centre_m.tolist(), "width_m": l.width_m, "direction": l.direction,
                       "lane_id": l.lane_id} for l in self.lanes],
            "road_edges": [e.tolist() for e in self.road_edges],
            "sidewalks": [{"centre_m": s.centre_m.tolist(), "width_m": s.width_m} for s in self.sidewalks],
            "crosswalks": [asdict(b) for b in self.crosswalks],
            "objects": [asdict(b) for b in self.objects],
            "style": asdict(self.style),
            "references": [{"points_m": r.points_m.tolist(), "right_widths_m": list(r.right_widths_m),
                            "left_widths_m": list(r.left_widths_m), "sidewalk_width_m": r.sidewalk_width_m}
                           for r in self.references],
            **({"opendrive": self.opendrive} if self.opendrive is not None else {}),
            # only where there are some: the layouts before this field keep their cache keys
            **({"paved": [{"centre_m": s.centre_m.tolist(), "width_m": s.width_m} for s in self.paved]}
               if self.paved else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict) -> "Layout":
        try:
            return cls(
                lanes=[Lane(**lane) for lane in data["lanes"]],
                road_edges=[np.asarray(e) for e in data.get("road_edges", [])],
                sidewalks=[Strip(**s) for s in data.get("sidewalks", [])],
                crosswalks=[Box(**b) for b in data.get("crosswalks", [])],
                objects=[Box(**b) for b in data.get("objects", [])],
                style=Style(**data.get("style", {})),
                name=data.get("name", "layout"),
                references=[RoadReference(**r) for r in data.get("references", [])],
                opendrive=data.get("opendrive"),
                paved=[Strip(**s) for s in data.get("paved", [])],
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"Layout: malformed layout description ({type(err).__name__}: {err})") from None

    @classmethod
    def from_json(cls, text: str) -> "Layout":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"Layout: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ValueError("Layout: JSON must be an object")
        return cls.from_dict(data)


# ---------------------------------------------------------------- templates
UNEVEN_END_STEP = 1e-3  # `polyline_tangents`: end steps differing by more than this fraction are taken unevenly


def polyline_tangents(points: np.ndarray) -> np.ndarray:
    """[N, 2] unit tangents of a polyline [N, 2] (N >= 2, no repeated consecutive points): central differences,
    second order at the ends. An end whose last two steps differ by more than UNEVEN_END_STEP of the longer takes
    its second-order difference against arc length: taken as if evenly spaced, an OpenDRIVE road sampled every metre
    whose last step is 0.2 m got a backward end tangent, and its lane markings' last point crossed the lane. Other
    polylines (the default templates' and the synthetic worlds': their end steps agree to 2.5e-4) keep the plain
    differences bit for bit (`marking_cache_inputs`)."""
    assert points.ndim == 2 and points.shape[1] == 2 and len(points) >= 2, points.shape
    tangents = np.gradient(points, axis=0, edge_order=2 if len(points) > 2 else 1)
    for end, at in zip((slice(0, 3), slice(-3, None)), (0, -1)):
        if _uneven_end(points[end]):
            three = points[end]
            arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(three, axis=0), axis=1))])
            tangents[at] = np.gradient(three, arc, axis=0, edge_order=2)[at]
    return tangents / np.linalg.norm(tangents, axis=1, keepdims=True)


def _uneven_end(three: np.ndarray) -> bool:
    """True for a polyline end's three points [3, 2] whose two steps differ by more than UNEVEN_END_STEP."""
    if len(three) < 3:
        return False
    step = np.linalg.norm(np.diff(three, axis=0), axis=1)
    return bool(abs(step[1] - step[0]) > UNEVEN_END_STEP * step.max())


def marking_cache_inputs(layout: "Layout") -> dict:
    """What a scene's cache key adds for `layout`'s lane markings: {"marking_ends": 2} when a lane ends unevenly
    (`polyline_tangents`; the markings' ends changed there on 2026-12-06), else nothing, so the default templates'
    and the synthetic worlds' keys did not move (a curve of 30 m radius or less, a prompt's sharp bend or hairpin,
    ends unevenly enough: its key moved, its markings by at most 1.6 mm). `build_scene` and the reconstructions
    (whose drive is the built scene's) both add it."""
    uneven = any(_uneven_end(lane.centre_m[:3]) or _uneven_end(lane.centre_m[-3:]) for lane in layout.lanes)
    return {"marking_ends": 2} if uneven else {}


def _offset_polyline(points: np.ndarray, offset_m: float) -> np.ndarray:
    """Shift a polyline sideways by offset_m (positive = to the left of the direction of travel)."""
    tangents = polyline_tangents(points)
    normals = np.stack([-tangents[:, 1], tangents[:, 0]], axis=1)
    return points + offset_m * normals


def _road_from_reference(reference: np.ndarray, lanes_per_direction: int, lane_width_m: float,
                         sidewalk_width_m: float, first_id: int = 0):
    """Lanes, kerbs and sidewalks of a two-way road around a reference (centre) polyline.

    Right-hand traffic: lanes to the right of the reference travel along it (+1).
    """
    lanes, edges, sidewalks = [], [], []
    lane_id = first_id
    for side in (-1, 1):  # right of the reference, then left
        for k in range(lanes_per_direction):
            offset = side * (k + 0.5) * lane_width_m
            lanes.append(Lane(_offset_polyline(reference, offset), lane_width_m, -side, lane_id))
            lane_id += 1
        half_road = lanes_per_direction * lane_width_m
        edges.append(_offset_polyline(reference, side * half_road))
        if sidewalk_width_m > 0:
            sidewalks.append(Strip(_offset_polyline(reference, side * (half_road + sidewalk_width_m / 2)),
                                   sidewalk_width_m))
    return lanes, edges, sidewalks


def _footprint_distance_m(centre_xy: np.ndarray, yaw_rad: float, length_m: float, width_m: float,
                          points_xy: np.ndarray) -> float:
    """The smallest distance (m) from points [N, 2] to a box's footprint (0 for a point inside it)."""
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    d = np.asarray(points_xy, np.float64) - np.asarray(centre_xy, np.float64)[:2]
    along, across = d[:, 0] * c + d[:, 1] * s, -d[:, 0] * s + d[:, 1] * c
    out_along = np.maximum(np.abs(along) - length_m / 2, 0.0)
    out_across = np.maximum(np.abs(across) - width_m / 2, 0.0)
    return float(np.min(np.hypot(out_along, out_across))) if len(d) else math.inf


def _footprints_overlap_m(a: "Box", b: "Box") -> float:
    """How deep (m) two boxes' footprints overlap: the smallest penetration over the separating axes of both
    rectangles (<= 0: they do not overlap)."""
    corners = []
    for box in (a, b):
        c, s = math.cos(box.yaw_rad), math.sin(box.yaw_rad)
        half = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]]) * (0.5 * np.array(box.size_m[:2]))
        corners.append(np.asarray(box.centre_m[:2]) + half @ np.array([[c, s], [-s, c]]))
    depth = math.inf
    for box in (a, b):
        for axis in ((math.cos(box.yaw_rad), math.sin(box.yaw_rad)), (-math.sin(box.yaw_rad), math.cos(box.yaw_rad))):
            pa, pb = corners[0] @ axis, corners[1] @ axis
            depth = min(depth, float(min(pa.max() - pb.min(), pb.max() - pa.min())))
    return depth


def _overlaps_any(box: "Box", placed: Sequence["Box"]) -> bool:
    """Whether box's footprint overlaps one of placed's (those whose bounding circles meet are tested)."""
    radius = 0.5 * math.hypot(box.size_m[0], box.size_m[1])
    for other in placed:
        reach = radius + 0.5 * math.hypot(other.size_m[0], other.size_m[1])
        if (abs(other.centre_m[0] - box.centre_m[0]) < reach and abs(other.centre_m[1] - box.centre_m[1]) < reach
                and _footprints_overlap_m(box, other) > 1e-6):
            return True
    return False


def _swept_car_points(at, s_m: float, lateral_m: float) -> np.ndarray:
    """[N, 2] the long sides of a SWEPT_CAR_SIZE_M car centred lateral_m off a road's reference and headed along
    it, every 0.25 m of the reference within one and a half car lengths of s_m (at: the road's (s, lateral) ->
    (xy, heading)), sampled every 0.25 m: on a bend its corners reach beyond the lane's edge line."""
    length_m, width_m = SWEPT_CAR_SIZE_M
    along = np.linspace(-length_m / 2, length_m / 2, int(length_m / 0.25) + 1)
    points = []
    reach_m = 1.5 * length_m + 1.0  # (stations of the reference: on the outside of a bend a lane's are longer)
    for station in np.arange(max(s_m - reach_m, 1.0), s_m + reach_m + 1e-9, 0.25):  # (from 1 m, where at() once
        #                                            read the last segment for s < 0: kept so, the worlds unchanged)
        xy = at(station, lateral_m)[0]
        forward = at(station + 1.0, lateral_m)[0] - at(station - 1.0, lateral_m)[0]  # (smooth over the vertices,
        forward = forward / np.linalg.norm(forward)  # as a car turns)
        left = np.array([-forward[1], forward[0]])
        for across in (-width_m / 2, width_m / 2):
            points.append(xy + along[:, None] * forward + across * left)
    return np.concatenate(points)


def densified(points_xy: np.ndarray, step_m: float = 1.0) -> np.ndarray:
    """[M, 2]: a polyline [N, 2] with points at most step_m apart along each segment (the vertices kept)."""
    points_xy = np.asarray(points_xy, np.float64)
    out = [points_xy[:1]]
    for a, b in zip(points_xy[:-1], points_xy[1:]):
        n = max(1, int(math.ceil(np.linalg.norm(b - a) / step_m)))
        out.append(a + (b - a) * (np.arange(1, n + 1)[:, None] / n))
    return np.concatenate(out)


def roadside_objects(rng: np.random.Generator, reference: np.ndarray, half_road_m: float, sidewalk_m: float,
                      buildings: bool, skip_fn=None, *, building_height_m: tuple = (7.0, 20.0),
                      tree_density: float = DEFAULT_TREE_DENSITY, parked_car_density: float = 0.2,
                      keep_clear_xy_m: np.ndarray | None = None, keep_clear_m: float = 0.0,
                      lane_width_m: float = 3.5) -> list[Box]:
    """Buildings behind the sidewalks, trees, poles and signs on them, parked cars at the kerb.

    building_height_m is the (min, max) of the uniform building heights; tree_density and parked_car_density
    are the weights of trees and parked cars in the roadside mix (poles weigh 0.3, signs 0.1; 0 = none).
    keep_clear_xy_m: optional [N, 2] world points (other roads' centre lines or driving lanes, sampled densely)
    that no building's footprint may come within keep_clear_m of: a building that would is shortened along its
    road, 1 m at a time from whichever end is nearer to such a point, and dropped below MIN_BUILDING_LENGTH_M.
    (skip_fn sees only an object's centre; a building up to 24 m long can reach past the end of its road's
    reference, which at an intersection is the crossing road: the recorded drives of every intersection world
    went through such buildings until 2026-12-05.)
    A building never comes within ROAD_CLEARANCE_M of its own road's edge: on the inside of a tight bend (a 25 m
    radius) a straight one tangent to the sidewalk reached up to 1 m into the inner lane; such a building is
    shortened from both ends, 0.5 m at a time (layouts where none reaches that close are unchanged).
    Above DEFAULT_TREE_DENSITY the gap after a tree also shrinks, by DEFAULT_TREE_DENSITY / tree_density down to
    MIN_TREE_GAP of itself, keeping the next object TREE_CLEARANCE_M from the tree (on the inside of a bend a gap
    along the road's centre line is shorter at the kerb).
    lane_width_m: the outer lanes' width: a parked car stands half on the kerb, at most as far into the lane as
    leaves PARKED_CLEARANCE_M beside a car centred in it (narrower lanes push it further onto the kerb).
    """
    low_m, high_m = (float(v) for v in building_height_m)
    if not (math.isfinite(low_m) and math.isfinite(high_m) and 0 < low_m <= high_m):
        raise ValueError(f"building_height_m must be (min, max) with 0 < min <= max, got {building_height_m}")
    # 0.4 m beyond the road's edge in lanes of 3.5 m or wider (as always), further out in narrower ones
    parked_offset_m = max(0.4, PARKED_SIZE_M[1] / 2 + PARKED_CLEARANCE_M - (lane_width_m - PARKED_SIZE_M[1]) / 2)
    weights = np.array([tree_density, 0.3, 0.1, parked_car_density], dtype=np.float64)
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(f"tree_density and parked_car_density must be finite and >= 0, got "
                         f"{tree_density}, {parked_car_density}")
    tree_gap = min(1.0, max(MIN_TREE_GAP, DEFAULT_TREE_DENSITY / max(tree_density, 1e-9)))
    objects: list[Box] = []
    seg = np.diff(reference, axis=0)
    seg_len = np.linalg.norm(seg, axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    total = cum[-1]

    def at(s: float, lateral: float):  # (before the start and past the end: along the first / last segment)
        i = int(np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1))
        t = (s - cum[i]) / seg_len[i]
        p = reference[i] + t * seg[i]
        d = seg[i] / seg_len[i]
        n = np.array([-d[1], d[0]])
        return p + lateral * n, math.atan2(d[1], d[0])

    own_road = densified(reference, 0.5)
    for side in (-1, 1):
        s = rng.uniform(0, 4)
        while buildings and s < total - 6:
            length = rng.uniform(10, 24)
            depth, height = rng.uniform(8, 14), rng.uniform(low_m, high_m)
            mid = min(s + length / 2, total - 3)
            lateral = side * (half_road_m + sidewalk_m + 0.5 + depth / 2)
            centre, yaw = at(mid, lateral)
            first, last = mid - length / 2, mid + length / 2
            shortened = False
            if keep_clear_xy_m is not None:  # shortened until its footprint is clear of the other roads
                while (last - first >= MIN_BUILDING_LENGTH_M
                       and _footprint_distance_m(centre, yaw, last - first, depth, keep_clear_xy_m) < keep_clear_m):
                    ends = [at(first, lateral)[0], at(last, lateral)[0]]
                    nearer = [np.min(np.linalg.norm(keep_clear_xy_m - e, axis=1)) for e in ends]
                    first, last = (first + 1.0, last) if nearer[0] < nearer[1] else (first, last - 1.0)
                    centre, yaw = at((first + last) / 2, lateral)
            # on the inside of a tight bend a straight building's ends swing towards the road: shortened from both
            # ends until its footprint stays ROAD_CLEARANCE_M beyond the road's edge
            while (last - first >= MIN_BUILDING_LENGTH_M and _footprint_distance_m(
                    centre, yaw, last - first, depth, own_road) < half_road_m + ROAD_CLEARANCE_M):
                first, last = first + 0.5, last - 0.5
                centre, yaw = at((first + last) / 2, lateral)
                shortened = True
            if shortened or keep_clear_xy_m is not None:  # (as it always was with keep_clear: bit for bit)
                length = last - first
            if (skip_fn is None or not skip_fn(centre)) and length >= MIN_BUILDING_LENGTH_M:
                objects.append(Box((centre[0], centre[1], 0.0), (length, depth, height), yaw, "building"))
            s += length + rng.uniform(0.5, 3)
        s = rng.uniform(2, 10)
        # where each kind stands across the road on this side (parked car, tree, pole, sign)
        kerb_lateral = [side * (half_road_m + parked_offset_m), side * (half_road_m + sidewalk_m * 0.75),
                        side * (half_road_m + 0.4), side * (half_road_m + 0.5)]
        while s < total - 2:
            kind = rng.choice(["vegetation", "pole", "traffic_sign", "parked_vehicle"], p=weights / weights.sum())
            if kind == "parked_vehicle":
                # half up on the kerb, PARKED_CLEARANCE_M clear of a car centred in the outer lane (agents, and the
                # ego, drive there): on a bend further out, as far as that car's box swept along the lane needs
                offset_m = parked_offset_m
                centre, yaw = at(s, side * (half_road_m + offset_m))
                swept = _swept_car_points(at, s, side * (half_road_m - lane_width_m / 2))
                while (offset_m < parked_offset_m + PARKED_BEND_MAX_M and _footprint_distance_m(
                        centre, yaw, PARKED_SIZE_M[0], PARKED_SIZE_M[1], swept) < PARKED_CLEARANCE_M - 1e-6):
                    offset_m += 0.05
                    centre, yaw = at(s, side * (half_road_m + offset_m))
                box = Box((centre[0], centre[1], 0.0), PARKED_SIZE_M, yaw, kind)
            elif kind == "vegetation":
                centre, yaw = at(s, side * (half_road_m + sidewalk_m * 0.75))
                box = Box((centre[0], centre[1], 0.0), (2.2, 2.2, rng.uniform(4, 7)), yaw, kind)
            elif kind == "pole":
                centre, yaw = at(s, side * (half_road_m + 0.4))
                box = Box((centre[0], centre[1], 0.0), (0.25, 0.25, 6.0), yaw, kind)
            else:
                centre, yaw = at(s, side * (half_road_m + 0.5))
                box = Box((centre[0], centre[1], 1.8), (0.1, 0.8, 0.8), yaw, kind)
            # a parked car does not stand in a building, a tree or a pole, nor one of those in a parked car (on the
            # inside of a tight bend a car moved out for the lane, or a straight building's end, met them): left out
            if (skip_fn is None or not skip_fn(centre)) and not _overlaps_any(
                    box, [o for o in objects if o.cls in PARKED_KEEP_OUT] if kind == "parked_vehicle"
                    else [o for o in objects if o.cls == "parked_vehicle"] if kind in PARKED_KEEP_OUT else []):
                objects.append(box)
            # a denser mix of trees than the default also closes up the gap after each tree (the mix alone made
            # "many trees" only 1.5 x "some"); at the default and below the gaps are as they always were
            s += rng.uniform(7, 16) * (tree_gap if kind == "vegetation" else 1.0)
            if tree_gap < 1.0 and kind == "vegetation":  # a closed-up gap measured on the road's centre line is
                # shorter on the inside of a bend: the next object keeps TREE_CLEARANCE_M from this tree's centre
                while s < total - 2 and min(np.linalg.norm(at(s, lateral)[0] - centre)
                                            for lateral in kerb_lateral) < TREE_CLEARANCE_M:
                    s += 0.25
    return objects


def straight_road(length_m: float = 200.0, *, lanes_per_direction: int = 2, lane_width_m: float = 3.5,
                  sidewalk_width_m: float = 3.0, buildings: bool = True, style: Style | None = None,
                  building_height_m: tuple = (7.0, 20.0), tree_density: float = DEFAULT_TREE_DENSITY,
                  parked_car_density: float = 0.2) -> Layout:
    """A straight two-way road along +x from x = 0 to length_m, centre line on y = 0."""
    style = style or Style()
    length_m = _positive(length_m, "straight_road length_m")
    n_points = max(2, int(length_m // 10) + 1)
    reference = np.stack([np.linspace(0.0, length_m, n_points), np.zeros(n_points)], 1)
    lanes, edges, sidewalks = _road_from_reference(reference, lanes_per_direction, lane_width_m, sidewalk_width_m)
    half = lanes_per_direction * lane_width_m
    rng = np.random.default_rng(style.seed)
    objects = roadside_objects(rng, reference, half, sidewalk_width_m, buildings, building_height_m=building_height_m,
                               tree_density=tree_density, parked_car_density=parked_car_density,
                               lane_width_m=lane_width_m)
    crosswalks = [Box((length_m * 0.6, 0.0, 0.0), (4.0, 2 * half, 0.02), 0.0, "crosswalk")]
    refs = [RoadReference(reference, (lane_width_m,) * lanes_per_direction, (lane_width_m,) * lanes_per_direction,
                          sidewalk_width_m)]
    return Layout(lanes, edges, sidewalks, crosswalks, objects, style, name=f"straight_{int(length_m)}m",
                  references=refs)


def curve(radius_m: float = 60.0, angle_deg: float = 90.0, *, lanes_per_direction: int = 2, lane_width_m: float = 3.5,
          sidewalk_width_m: float = 3.0, buildings: bool = True, style: Style | None = None,
          building_height_m: tuple = (7.0, 20.0), tree_density: float = DEFAULT_TREE_DENSITY,
          parked_car_density: float = 0.2) -> Layout:
    """A left-hand curve starting at the origin heading +x, turning angle_deg with the given centre-line radius."""
    style = style or Style()
    radius_m = _positive(radius_m, "curve radius_m")
    angle = math.radians(_positive(angle_deg, "curve angle_deg"))
    half_m = lanes_per_direction * lane_width_m + sidewalk_width_m
    if radius_m - half_m < CURVE_INSIDE_M:  # the inside lanes and sidewalk would fold through the centre
        raise ValueError(f"curve: radius_m {radius_m:g} cannot hold {lanes_per_direction} lane(s) per direction of "
                         f"{lane_width_m:g} m and {sidewalk_width_m:g} m sidewalks ({half_m:g} m each side of the "
                         f"centre line); the radius must be at least {half_m + CURVE_INSIDE_M:g} m")
    n = max(8, int(radius_m * angle / 4))
    theta = np.linspace(0, angle, n)
    reference = np.stack([radius_m * np.sin(theta), radius_m * (1 - np.cos(theta))], 1)
    lanes, edges, sidewalks = _road_from_reference(reference, lanes_per_direction, lane_width_m, sidewalk_width_m)
    rng = np.random.default_rng(style.seed)
    objects = roadside_objects(rng, reference, lanes_per_direction * lane_width_m, sidewalk_width_m, buildings,
                               building_height_m=building_height_m, tree_density=tree_density,
                               parked_car_density=parked_car_density, lane_width_m=lane_width_m)
    refs = [RoadReference(reference, (lane_width_m,) * lanes_per_direction, (lane_width_m,) * lanes_per_direction,
                          sidewalk_width_m)]
    return Layout(lanes, edges, sidewalks, [], objects, style, name=f"curve_r{int(radius_m)}", references=refs)


def intersection(arm_length_m: float = 60.0, *, lanes_per_direction: int = 1, lane_width_m: float = 3.5,
                 sidewalk_width_m: float = 3.0, buildings: bool = True, style: Style | None = None,
                 building_height_m: tuple = (7.0, 20.0), tree_density: float = DEFAULT_TREE_DENSITY,
                 parked_car_density: float = 0.2) -> Layout:
    """A four-way intersection centred on the origin, arms along +-x and +-y, crosswalks on every arm."""
    style = style or Style()
    arm = _positive(arm_length_m, "intersection arm_length_m")
    half = lanes_per_direction * lane_width_m
    lanes, edges, sidewalks, crosswalks, refs = [], [], [], [], []
    for axis in range(2):
        reference = np.zeros((max(3, int(2 * arm // 10) + 1), 2))
        reference[:, axis] = np.linspace(-arm, arm, reference.shape[0])
        arm_lanes, _, _ = _road_from_reference(reference, lanes_per_direction, lane_width_m, sidewalk_width_m,
                                               first_id=len(lanes))
        lanes += arm_lanes
        refs.append(RoadReference(reference, (lane_width_m,) * lanes_per_direction,
                                  (lane_width_m,) * lanes_per_direction, 0.0))
    # kerbs and sidewalks: each of the four corners has an edge and a sidewalk along each arm
    off = half + sidewalk_width_m / 2
    for sx in (-1, 1):
        for sy in (-1, 1):
            along_x = np.array([[sx * half, sy * half], [sx * arm, sy * half]])
            along_y = np.array([[sx * half, sy * half], [sx * half, sy * arm]])
            edges += [along_x, along_y]
            sidewalks.append(Strip(np.array([[sx * half, sy * off], [sx * arm, sy * off]]), sidewalk_width_m))
            sidewalks.append(Strip(np.array([[sx * off, sy * half], [sx * off, sy * arm]]), sidewalk_width_m))
    for axis in range(2):
        for sign in (-1, 1):
            c = [0.0, 0.0]
            c[axis] = sign * (half + 2.5)
            yaw = 0.0 if axis == 0 else math.pi / 2
            crosswalks.append(Box((c[0], c[1], 0.0), (4.0, 2 * half, 0.02), yaw, "crosswalk"))
    rng = np.random.default_rng(style.seed)
    objects: list[Box] = []
    clear = half + sidewalk_width_m + 2.0

    for axis in range(2):
        crossing = densified(refs[1 - axis].points_m)  # the other road's centre line: buildings keep off it
        for sign in (-1, 1):
            reference = np.zeros((2, 2))
            reference[:, axis] = [sign * clear, sign * arm]
            if sign < 0:
                reference = reference[::-1].copy()
            objects += roadside_objects(rng, reference, half, sidewalk_width_m, buildings,
                                         skip_fn=lambda p: bool(abs(p[0]) < clear and abs(p[1]) < clear),
                                         building_height_m=building_height_m, tree_density=tree_density,
                                         parked_car_density=parked_car_density, keep_clear_xy_m=crossing,
                                         keep_clear_m=half + sidewalk_width_m, lane_width_m=lane_width_m)
    return Layout(lanes, edges, sidewalks, crosswalks, objects, style, name=f"intersection_{int(arm)}m",
                  references=refs)


TEMPLATES = {"straight": straight_road, "curve": curve, "intersection": intersection}


def from_template(name: str, **kwargs) -> Layout:
    """Build a layout from a template name: straight | curve | intersection."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown layout template {name!r}; choose from {sorted(TEMPLATES)}")
    return TEMPLATES[name](**kwargs)


def lanes_polylines(layout: Layout) -> Sequence[np.ndarray]:
    """Travel-direction centre polylines of every lane."""
    return [lane.travel_polyline() for lane in layout.lanes]
