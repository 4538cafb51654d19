"""OpenDRIVE <-> Layout: read a map's roads into a Layout, write a Layout's roads as OpenDRIVE 1.4.

Reading (`layout_from_opendrive`): the plan view's geometries (line, arc,
spiral, poly3, paramPoly3) are sampled along s; lane offsets, lane sections and
lane width polynomials give every lane's boundaries; driving-type lanes become
Layout lanes (travel direction from maliput's `vectorLane travelDir` user data
when present, else right-hand traffic unless the road says rule="LHT", turned by
OpenDRIVE 1.7's direction="reversed"), sidewalk (1.8: walking) lanes become
sidewalk strips,
and crosswalk objects become crosswalk boxes. Junction roads are read like any
road, so their lanes pave the junction. Parking, shoulder, biking, border, stop and
restricted lanes are road surface without markings (Layout.paved), and the kerb
runs outside the outermost of them. Roadside buildings, trees and parked
cars can be added procedurally (`decorate=True`): OpenDRIVE carries no
buildings. Where a road has a parking lane its parked cars stand in that lane,
one behind another, rather than half on the kerb. A Layout lane has one
width, so a lane whose width varies within a section takes its median width
there.

Not read: elevation and superelevation (the scene is flat; a map whose roads
climb is said once, as an OpenDriveWarning), road marks, and lane widths given
as <border> (refused by name).

Writing (`layout_to_opendrive`, for `client.generate_opendrive_world`): `neural_sensor.scene.opendrive_write`,
its names re-exported here.

OpenDRIVE's inertial frame is x east, y north, z up, right-handed, metres, like
our world frame.
"""

from __future__ import annotations

import codecs
import math
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np

from neural_sensor.scene.layout import (MAX_COORD_M, PARKED_SIZE_M, Box, Lane, Layout, RoadReference, Strip, Style,
                                       densified, roadside_objects)
from neural_sensor.scene.opendrive_write import (GEO_REFERENCE, JUNCTION_RIGHT_TURN_M, layout_export_problem,
                                                 layout_to_opendrive)

__all__ = ["GEO_REFERENCE", "JUNCTION_RIGHT_TURN_M", "LANE_CLEARANCE_M", "LANE_EDGE_CLEARANCE_M", "OpenDriveWarning",
           "junction_lanes", "layout_export_problem", "layout_from_opendrive", "layout_to_opendrive"]

SAMPLE_STEP_M = 1.0  # spacing of the sampled reference line
LANE_CLEARANCE_M = 2.0  # a generated building's footprint keeps this far from every driving lane's centre line,
LANE_EDGE_CLEARANCE_M = 0.25  # and this far outside its edge (the two agree for 3.5 m lanes; wider ones need the edge)
MAX_PLAN_GAP_M = 1.0  # a plan-view geometry must start within this of where the one before it ends
MAX_ROAD_LENGTH_M = 100_000.0  # a layout lies within 100 km of its origin
DRIVING_TYPES = {"driving", "bidirectional", "entry", "exit", "onRamp", "offRamp", "connectingRamp",
                 "slipLane", "bus", "taxi", "HOV"}  # (the last four: OpenDRIVE 1.7 / 1.8)
SIDEWALK_TYPES = {"sidewalk", "walking"}  # (walking: 1.8's name for it)
PAVED_TYPES = {"parking", "shoulder", "biking", "border", "stop", "restricted"}  # road surface, no lane of ours
PARKING_OCCUPANCY = 0.55  # the share of a parking lane's car-length slots that hold a parked car
PARKING_GAP_M = (0.8, 2.0)  # the gap between two slots' cars, uniform
MIN_PARKING_WIDTH_M = 1.6  # a narrower parking lane (a motorcycle bay, a painted margin) gets no cars
MIN_SECTION_M = 1e-3  # a lane section (or road) shorter than this is round-off between two others: skipped
FLAT_TOLERANCE_M = 0.5  # a map whose roads rise or fall more than this is said to be drawn flat


class OpenDriveWarning(UserWarning):
    """What the reader draws differently from the map (its elevation, drawn flat)."""


def _f(element, name: str, default: float | None = None) -> float:
    value = element.get(name)
    if value is None:
        if default is None:
            raise ValueError(f"OpenDRIVE: <{element.tag}> lacks attribute {name!r}")
        return default
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"OpenDRIVE: <{element.tag} {name}={value!r}> is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"OpenDRIVE: <{element.tag} {name}={value!r}> is not a finite number")
    return number


def _geometry_points(geometry, s_local: np.ndarray) -> np.ndarray:
    """[M, 3] (x, y, heading) of one plan-view geometry at local arc lengths s_local."""
    x0, y0, h0, length = _f(geometry, "x"), _f(geometry, "y"), _f(geometry, "hdg"), _f(geometry, "length")
    kind = next(iter(geometry), None)
    if kind is None:
        raise ValueError("OpenDRIVE: <geometry> without a shape element")
    if length < 0.0:
        raise ValueError(f"OpenDRIVE: <geometry length={geometry.get('length')!r}> is negative")
    if length == 0.0:  # a point (some maps hold one between two geometries)
        return np.tile([x0, y0, h0], (len(s_local), 1)).astype(np.float64)
    s = s_local
    if kind.tag == "line":
        return np.stack([x0 + s * math.cos(h0), y0 + s * math.sin(h0), np.full_like(s, h0)], axis=1)
    if kind.tag == "arc":
        k = _f(kind, "curvature")
        if abs(k) < 1e-12:
            return np.stack([x0 + s * math.cos(h0), y0 + s * math.sin(h0), np.full_like(s, h0)], axis=1)
        heading = h0 + k * s
        return np.stack([x0 + (np.sin(heading) - math.sin(h0)) / k, y0 - (np.cos(heading) - math.cos(h0)) / k,
                         heading], axis=1)
    if kind.tag == "spiral":
        c0, c1 = _f(kind, "curvStart"), _f(kind, "curvEnd")
        fine = np.linspace(0.0, length, max(2, int(length / 0.02) + 1))
        heading = h0 + c0 * fine + (c1 - c0) * fine**2 / (2.0 * length)
        dx, dy = np.cos(heading), np.sin(heading)
        step = np.diff(fine)
        xs = x0 + np.concatenate([[0.0], np.cumsum(0.5 * (dx[1:] + dx[:-1]) * step)])
        ys = y0 + np.concatenate([[0.0], np.cumsum(0.5 * (dy[1:] + dy[:-1]) * step)])
        return np.stack([np.interp(s, fine, xs), np.interp(s, fine, ys), np.interp(s, fine, heading)], axis=1)
    if kind.tag in ("poly3", "paramPoly3"):
        fine = np.linspace(0.0, 1.0, max(2, int(length / 0.02) + 1))
        if kind.tag == "poly3":
            # v(u) with u along the start heading; u ends where the curve's arc length reaches the record's length
            a, b, c, d = (_f(kind, n) for n in "abcd")
            u = fine * length
            v = a + b * u + c * u**2 + d * u**3
            arc_u = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(u), np.diff(v)))])
            u = fine * float(np.interp(length, arc_u, u))
            v = a + b * u + c * u**2 + d * u**3
        else:
            p_range = kind.get("pRange", "normalized")
            p = fine if p_range == "normalized" else fine * length
            u = _f(kind, "aU") + _f(kind, "bU") * p + _f(kind, "cU") * p**2 + _f(kind, "dU") * p**3
            v = _f(kind, "aV") + _f(kind, "bV") * p + _f(kind, "cV") * p**2 + _f(kind, "dV") * p**3
        xs = x0 + u * math.cos(h0) - v * math.sin(h0)
        ys = y0 + u * math.sin(h0) + v * math.cos(h0)
        arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(xs), np.diff(ys)))])
        arc *= length / max(arc[-1], 1e-9)  # the record's length is authoritative
        heading = np.unwrap(np.arctan2(np.gradient(ys), np.gradient(xs)))
        return np.stack([np.interp(s, arc, xs), np.interp(s, arc, ys), np.interp(s, arc, heading)], axis=1)
    raise ValueError(f"OpenDRIVE: unsupported geometry <{kind.tag}>")


def _poly_records(elements, key: str):
    """[(start, a, b, c, d)] sorted by start from elements with attribute `key` (s or sOffset)."""
    records = sorted((_f(e, key), _f(e, "a", 0.0), _f(e, "b", 0.0), _f(e, "c", 0.0), _f(e, "d", 0.0)) for e in elements)
    return records


def _eval_poly(records, s: np.ndarray) -> np.ndarray:
    out = np.zeros_like(s)
    for i, (start, a, b, c, d) in enumerate(records):
        end = records[i + 1][0] if i + 1 < len(records) else np.inf
        sel = (s >= start - 1e-9) & (s < end)
        ds = s[sel] - start
        out[sel] = a + b * ds + c * ds**2 + d * ds**3
    return out


@dataclass
class _RoadSample:
    s: np.ndarray  # [M]
    xy: np.ndarray  # [M, 2]
    heading: np.ndarray  # [M]
    offset: np.ndarray  # [M] lane offset of the centre lane

    def at(self, sel, t: np.ndarray, *, from_reference_line: bool = False) -> np.ndarray:
        """[K, 2] points at lateral t from the centre lane (lanes' frame), or from the reference line itself
        (objects' frame: OpenDRIVE measures an object's t from the reference line, not the lane offset)."""
        normal = np.stack([-np.sin(self.heading[sel]), np.cos(self.heading[sel])], axis=1)
        lateral = t if from_reference_line else self.offset[sel] + t
        return self.xy[sel] + lateral[:, None] * normal


def _sample_road(road) -> _RoadSample:
    """Sample the reference line every SAMPLE_STEP_M and at every lane section start (so sections meet)."""
    length = _f(road, "length")
    if not 0.0 < length <= MAX_ROAD_LENGTH_M:  # (a zero-length road is skipped before this: `_read_road`)
        raise ValueError(f"OpenDRIVE: <road length={road.get('length')!r}> must be positive and at most "
                         f"{MAX_ROAD_LENGTH_M:g} m")
    plan = road.find("planView")
    if plan is None or not list(plan):
        raise ValueError("OpenDRIVE: no planView geometry")
    geometries = sorted(plan.findall("geometry"), key=lambda g: _f(g, "s"))
    if _f(geometries[0], "s") > MAX_PLAN_GAP_M:  # s before it would lie on no geometry
        raise ValueError(f"OpenDRIVE: the plan view starts at s = {_f(geometries[0], 's'):g} (its first geometry "
                         f"must start at s = 0, within {MAX_PLAN_GAP_M:g} m)")
    for geometry in geometries:
        if _f(geometry, "length") > MAX_ROAD_LENGTH_M:
            raise ValueError(f"OpenDRIVE: <geometry length={geometry.get('length')!r}> is over {MAX_ROAD_LENGTH_M:g} m")
    for before, after in zip(geometries[:-1], geometries[1:]):  # where the sampler leaves one for the next
        used = min(_f(before, "length"), max(_f(after, "s") - _f(before, "s"), 0.0))
        end = _geometry_points(before, np.array([used]))[0, :2]
        gap = float(np.hypot(*(end - (_f(after, "x"), _f(after, "y")))))
        if gap > MAX_PLAN_GAP_M:
            raise ValueError(f"OpenDRIVE: the plan view jumps {gap:.6g} m between the geometries at s = "
                             f"{_f(before, 's'):g} and s = {_f(after, 's'):g} (a geometry must start where the one "
                             f"before it ends, within {MAX_PLAN_GAP_M:g} m)")
    plan_end = max(_f(g, "s") + _f(g, "length") for g in geometries)
    if plan_end < length - MAX_PLAN_GAP_M:  # s past it would lie on no geometry (it was cut there, silently)
        raise ValueError(f"OpenDRIVE: the plan view's geometries end at s = {plan_end:g} but the road is "
                         f"{length:g} m long (they must cover it, within {MAX_PLAN_GAP_M:g} m)")
    section_starts = [_f(sec, "s") for sec in road.findall("lanes/laneSection")]
    s = np.unique(np.concatenate([np.arange(0.0, length, SAMPLE_STEP_M), [length],
                                  np.clip(section_starts, 0.0, length)]))
    out = np.zeros((len(s), 3))
    for i, geometry in enumerate(geometries):
        start = _f(geometry, "s")
        end = _f(geometries[i + 1], "s") if i + 1 < len(geometries) else np.inf
        if i == 0:
            start_sel = -np.inf  # s before a first geometry that starts a little after 0 takes its start point
        else:
            start_sel = start - 1e-9
        sel = (s >= start_sel) & (s <= end + 1e-9) if i + 1 == len(geometries) else (s >= start_sel) & (s < end)
        out[sel] = _geometry_points(geometry, np.clip(s[sel] - start, 0.0, _f(geometry, "length")))
    lanes = road.find("lanes")
    offsets = _poly_records(lanes.findall("laneOffset"), "s") if lanes is not None else []
    return _RoadSample(s, out[:, :2], out[:, 2], _eval_poly(offsets, s) if offsets else np.zeros_like(s))


def _lane_id(lane) -> int:
    try:
        return int(lane.get("id"))
    except (TypeError, ValueError):
        raise ValueError(f"OpenDRIVE: a <lane> without an integer id ({lane.get('id')!r})") from None


def _lane_direction(lane, lane_id: int, rule: str) -> int:
    vector = lane.find("userData/vectorLane")
    if vector is not None and vector.get("travelDir") in ("forward", "backward"):
        return 1 if vector.get("travelDir") == "forward" else -1
    right_hand = rule != "LHT"
    default = (1 if lane_id < 0 else -1) if right_hand else (1 if lane_id > 0 else -1)
    return -default if lane.get("direction") == "reversed" else default  # OpenDRIVE 1.7 (standard, reversed, both)


def layout_from_opendrive(xodr: str | bytes, *, decorate: bool = True, style: Style | None = None,
                          name: str = "opendrive") -> Layout:
    """A Layout of the roads of an OpenDRIVE document (the text of a .xodr file, or its bytes: then the XML
    declaration's encoding applies, UTF-8 without one).

    Raises ValueError naming the problem for malformed or unsupported input.
    """
    try:
        root = ET.fromstring(xodr)
    except ET.ParseError as err:
        raise ValueError(f"OpenDRIVE: not well-formed XML ({err})") from None
    if root.tag != "OpenDRIVE":
        raise ValueError(f"OpenDRIVE: the root element is <{root.tag}>, not <OpenDRIVE>")
    roads = root.findall("road")
    if not roads:
        raise ValueError("OpenDRIVE: the document has no <road>")
    style = style or Style()
    lanes, edges, sidewalks, paved, crosswalks, references, half_widths = [], [], [], [], [], [], []
    parking: list[Strip] = []  # the parking lanes among the paved strips (roads outside junctions)
    for road in roads:
        try:
            _read_road(road, lanes, edges, sidewalks, paved, crosswalks, references, half_widths, parking)
            _check_profiles(road)
        except ValueError as err:
            raise ValueError(f"OpenDRIVE: road {road.get('id')!r}: {str(err).removeprefix('OpenDRIVE: ')}") from None
    if not lanes:
        raise ValueError("OpenDRIVE: no driving lanes found")
    _say_if_not_flat(roads)
    objects = []
    if decorate:
        rng = np.random.default_rng(style.seed)
        lane_points = np.concatenate([densified(lane.centre_m) for lane in lanes])  # no building may stand on one
        # one clearance from every lane's centre line: the widest lane's (a map with a 6 m lane keeps buildings 3.25
        # m from every lane's centre; until 2026-12-06 it was 2 m whatever the width, and 6 m lanes were built on)
        keep_clear_m = max(LANE_CLEARANCE_M, LANE_EDGE_CLEARANCE_M + 0.5 * max(lane.width_m for lane in lanes))
        on_a_lane = _make_clearance_test(lane_points, LANE_EDGE_CLEARANCE_M + 0.5 * max(lane.width_m for lane in lanes))
        for ref, half in zip(references, half_widths):
            outer = [widths[-1] for widths in (ref.right_widths_m, ref.left_widths_m) if widths]
            objects += roadside_objects(rng, ref.points_m, half, max(ref.sidewalk_width_m, 1.0), True,
                                         skip_fn=on_a_lane, keep_clear_xy_m=lane_points,
                                         keep_clear_m=keep_clear_m, lane_width_m=min(outer, default=3.5))
        if parking:  # (a map without parking lanes is decorated as it always was, bit for bit)
            objects = _parked_in_parking_lanes(np.random.default_rng([style.seed, 1]), objects, parking,
                                               _make_lane_test(lanes), crosswalks)
    return Layout(lanes, edges, sidewalks, crosswalks, objects, style, name=name, references=references,
                  opendrive=_document_text(xodr, root), paved=paved)


def junction_lanes(xodr: str) -> list[Lane]:
    """The driving lanes of an OpenDRIVE map's junction roads (its connecting roads: CARLA's waypoints there are
    `is_junction`), read as `layout_from_opendrive` reads every road's; xodr the map's text."""
    try:
        root = ET.fromstring(xodr)
    except ET.ParseError as err:
        raise ValueError(f"OpenDRIVE: not well-formed XML ({err})") from None
    lanes: list[Lane] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OpenDriveWarning)  # (said when the map was read)
        for road in root.findall("road"):
            if road.get("junction", "-1") != "-1":
                _read_road(road, lanes, [], [], [], [], [], [], [])
    return lanes


def _document_text(xodr: str | bytes, root) -> str:
    """The map's own text (its comments, a licence's included), bytes decoded as the parser read them (a BOM, else
    the XML declaration's encoding, else UTF-8); the parsed tree re-serialised where that decoding fails."""
    if isinstance(xodr, str):
        return xodr
    for bom, codec in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if xodr.startswith(bom):
            break
    else:
        declared = re.match(rb"\s*<\?xml[^>]*encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']", xodr)
        codec = declared.group(1).decode("ascii") if declared else "utf-8"
    try:
        return xodr.decode(codec)
    except (LookupError, UnicodeDecodeError):
        return ET.tostring(root, encoding="unicode")


def _check_profiles(road) -> None:
    """ValueError naming the record where a road's elevation or superelevation has a bad number (read here, within
    the road's own error, rather than in `_say_if_not_flat` after every road)."""
    _poly_records(road.findall("elevationProfile/elevation"), "s")
    _poly_records(road.findall("lateralProfile/superelevation"), "s")


def _say_if_not_flat(roads) -> None:
    """An OpenDriveWarning where the roads' elevation spans more than FLAT_TOLERANCE_M or a road banks (the
    scene is drawn flat: a camera riding CARLA's vehicle up a hill sees it from above the road)."""
    heights, bank_rad = [], 0.0
    for road in roads:
        length = _f(road, "length")
        s = np.linspace(0.0, length, max(2, int(length / SAMPLE_STEP_M) + 1))
        elevation = _poly_records(road.findall("elevationProfile/elevation"), "s")
        if elevation:
            heights.append(_eval_poly(elevation, s))
        bank = _poly_records(road.findall("lateralProfile/superelevation"), "s")
        if bank:
            bank_rad = max(bank_rad, float(np.max(np.abs(_eval_poly(bank, s)))))
    rise_m = float(np.ptp(np.concatenate(heights))) if heights else 0.0
    if rise_m > FLAT_TOLERANCE_M or bank_rad > 0.01:
        warnings.warn(f"OpenDRIVE: the roads rise and fall by {rise_m:.1f} m and bank up to "
                      f"{math.degrees(bank_rad):.1f} degrees; elevation is not read, the scene is drawn flat at "
                      "z = 0", OpenDriveWarning, stacklevel=3)


def _read_road(road, lanes: list, edges: list, sidewalks: list, paved: list, crosswalks: list, references: list,
               half_widths: list, parking: list) -> None:
    """One <road>'s lanes, edges, sidewalks, paved strips and crosswalks appended to the lists (a parking lane of a
    road outside a junction to parking as well as to paved); a road outside a
    junction with driving lanes also appends its RoadReference and, to half_widths, the largest distance from its
    reference line to the outer edge of the lanes inside its sidewalks (driving, parking, biking, shoulder...: where
    the roadside decoration starts). A road of length 0 (SUMO's netconvert writes junction connectors so) adds
    nothing, and so does a lane section shorter than MIN_SECTION_M (round-off between two sections)."""
    if _f(road, "length") == 0.0:
        return
    sample = _sample_road(road)
    if np.abs(sample.xy).max() > MAX_COORD_M:
        x_m, y_m = sample.xy[np.argmax(np.abs(sample.xy).max(axis=1))]
        raise ValueError(f"OpenDRIVE: the road lies at x = {x_m:.0f}, y = {y_m:.0f} m, more than "
                         f"{MAX_COORD_M / 1000:.0f} km from the map's origin: the scene (float32, as CARLA's) needs its "
                         "roads near (0, 0); translate the map first (subtract the same x and y from every "
                         "<geometry>'s x and y attributes)")
    rule = road.get("rule", "RHT")
    sections = road.findall("lanes/laneSection")
    starts = [_f(sec, "s") for sec in sections]
    road_widths = {"left": [], "right": [], "sidewalk": 0.0}
    kerb_m = 0.0  # the largest distance from the reference line to a non-sidewalk lane's outer edge
    negative: list[str] = []  # lanes whose width is negative (not drawn; said once per road)
    first_read = None  # the first section read (the road's widths are its: a round-off section 0 is skipped)
    for k, section in enumerate(sections):
        end = starts[k + 1] if k + 1 < len(sections) else sample.s[-1]
        sel = np.flatnonzero((sample.s >= starts[k] - 1e-9) & (sample.s <= end + 1e-9))  # shares its end
        if len(sel) < 2 or sample.s[sel[-1]] - sample.s[sel[0]] < MIN_SECTION_M:
            continue
        first_read = k if first_read is None else first_read
        s_sec = sample.s[sel] - starts[k]
        for side, sign in (("left", 1.0), ("right", -1.0)):
            entries = sorted(((_lane_id(lane), lane) for lane in section.findall(f"{side}/lane")),
                             key=lambda pair: abs(pair[0]))
            inner = np.zeros(len(sel))
            outer_road = None  # the outer boundary of the outermost driving (or paved, inside a sidewalk) lane
            past_sidewalk = False
            for lane_id, lane in entries:
                where = f"lane {lane_id} of the lane section at s = {starts[k]:g}"
                if lane.find("border") is not None and lane.find("width") is None:
                    raise ValueError(f"OpenDRIVE: {where} gives its width as <border>, which is not read "
                                     "(write it as <width> polynomials)")
                kind = lane.get("type")
                if kind is None:
                    raise ValueError(f"OpenDRIVE: {where} has no type attribute (OpenDRIVE requires one: driving, "
                                     "sidewalk, shoulder, none, ...)")
                widths = _poly_records(lane.findall("width"), "sOffset")
                width = _eval_poly(widths, s_sec) if widths else np.zeros(len(sel))
                outer = inner + width
                centre = sample.at(sel, sign * 0.5 * (inner + outer))
                typical = float(np.median(width))
                if kind in SIDEWALK_TYPES:
                    past_sidewalk = True  # lanes beyond it (a border) are not the road's
                elif kind != "none" and not past_sidewalk:
                    kerb_m = max(kerb_m, float(np.max(np.abs(sample.offset[sel] + sign * outer))))
                try:
                    if typical > 0.05:
                        if kind in DRIVING_TYPES:
                            lanes.append(Lane(_dedupe(centre), typical, _lane_direction(lane, lane_id, rule),
                                              len(lanes)))
                            outer_road = outer
                            if k == first_read:
                                road_widths[side].append(typical)
                        elif kind in PAVED_TYPES and not past_sidewalk:
                            paved.append(Strip(_dedupe(centre), typical))
                            outer_road = outer
                            if kind == "parking" and road.get("junction", "-1") == "-1":
                                parking.append(paved[-1])
                        elif kind in SIDEWALK_TYPES:
                            sidewalks.append(Strip(_dedupe(centre), typical))
                            road_widths["sidewalk"] = typical
                    elif typical < -0.05:
                        negative.append(f"{lane_id} at s = {starts[k]:g} ({typical:.2f} m)")
                except ValueError as err:  # (Lane / Strip name their own index, not the map's lane)
                    raise ValueError(f"OpenDRIVE: {where}: {err}") from None
                inner = outer
            if outer_road is not None and road.get("junction", "-1") == "-1":
                edges.append(_dedupe(sample.at(sel, sign * outer_road)))
    if negative:
        warnings.warn(f"OpenDRIVE: road {road.get('id')!r}: {'lanes' if len(negative) > 1 else 'lane'} "
                      f"{', '.join(negative)} {'have' if len(negative) > 1 else 'has'} a negative width (median over "
                      "its section): not drawn, and the lanes outside move in by that much",
                      OpenDriveWarning, stacklevel=4)
    if road.get("junction", "-1") == "-1" and (road_widths["left"] or road_widths["right"]):
        references.append(RoadReference(_dedupe(sample.at(slice(None), np.zeros(len(sample.s)))),
                                        tuple(road_widths["right"]), tuple(road_widths["left"]),
                                        road_widths["sidewalk"]))
        half_widths.append(max(kerb_m, sum(road_widths["right"]), sum(road_widths["left"])))
    for obj in road.findall("objects/object"):
        if obj.get("type") == "crosswalk":
            crosswalks.append(_crosswalk_box(obj, sample))


def _parked_in_parking_lanes(rng: np.random.Generator, objects: list[Box], parking: list[Strip], on_a_lane,
                             crosswalks: list[Box]) -> list[Box]:
    """objects with parked cars in the map's parking lanes: a kerb-side parked car of the roadside mix beside a
    parking lane (it would stand half on the kerb, touching the lane's cars) is dropped, and each parking lane at
    least MIN_PARKING_WIDTH_M wide is cut into slots of a car's length plus a PARKING_GAP_M gap, PARKING_OCCUPANCY of
    them holding a car centred in the lane along it. A car whose centre or either end lies on a driving lane
    (on_a_lane, `_make_lane_test`: a junction's lanes where the parking lane meets one) or within 2 m of a crosswalk is left out.
    (Until 2026-12-07 a map's parking lanes stood empty, the cars on the kerb outside them.)"""
    parking = [strip for strip in parking if strip.width_m >= MIN_PARKING_WIDTH_M]
    strips = [(densified(strip.centre_m, 0.5), strip.width_m) for strip in parking]

    def beside_parking(box: Box) -> bool:
        p = np.asarray(box.centre_m[:2])
        return any(np.min(np.linalg.norm(points - p, axis=1)) < 0.5 * width + PARKED_SIZE_M[1] + 0.5
                   for points, width in strips)

    def on_a_crosswalk(p: np.ndarray) -> bool:
        for box in crosswalks:
            c, s = math.cos(box.yaw_rad), math.sin(box.yaw_rad)
            d = p - np.asarray(box.centre_m[:2])
            if (abs(c * d[0] + s * d[1]) < 0.5 * box.size_m[0] + 2.0
                    and abs(-s * d[0] + c * d[1]) < 0.5 * box.size_m[1] + 2.0):
                return True
        return False

    kept = [box for box in objects if box.cls != "parked_vehicle" or not beside_parking(box)]
    length_m = PARKED_SIZE_M[0]
    for strip in parking:
        line = strip.centre_m
        seg = np.diff(line, axis=0)
        cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(seg, axis=1))])
        s = rng.uniform(0.5, 3.0)
        while s + length_m + 0.5 <= cum[-1]:
            gap = rng.uniform(*PARKING_GAP_M)
            if rng.uniform() < PARKING_OCCUPANCY:
                mid = s + 0.5 * length_m
                i = min(int(np.searchsorted(cum, mid, side="right")) - 1, len(seg) - 1)
                d = seg[i] / np.linalg.norm(seg[i])
                centre = line[i] + (mid - cum[i]) * d
                ends = (centre - 0.5 * length_m * d, centre + 0.5 * length_m * d)
                if not any(on_a_lane(p) or on_a_crosswalk(p) for p in (centre, *ends)):
                    kept.append(Box((centre[0], centre[1], 0.0), PARKED_SIZE_M, math.atan2(d[1], d[0]),
                                    "parked_vehicle"))
            s += length_m + gap
    return kept


def _make_lane_test(lanes: list[Lane]):
    """True where a point lies on a driving lane or within LANE_EDGE_CLEARANCE_M of its edge, each lane by its own
    width (a parked car beside a 3.5 m lane is not on it because another lane of the map is 6 m wide)."""
    lines = [densified(lane.centre_m) for lane in lanes]
    points = np.concatenate(lines)
    half = np.concatenate([np.full(len(line), 0.5 * lane.width_m) for line, lane in zip(lines, lanes)])

    def on_a_lane(p) -> bool:
        return bool(np.min(np.linalg.norm(points - np.asarray(p)[None, :2], axis=1) - half) < LANE_EDGE_CLEARANCE_M)
    return on_a_lane


def _make_clearance_test(lane_points: np.ndarray, clearance_m: float):
    """skip_fn for decorations: True where an object's centre is within clearance_m of a driving lane's centre
    line (lane_points [N, 2], sampled densely), i.e. on a lane. (Until 2026-12-06 the radius was the road's half
    width + 2 m, which took every tree, pole and parked car at its own road's kerb: a map's streets had buildings
    only.)"""
    def too_close(p) -> bool:
        return bool(np.min(np.linalg.norm(lane_points - np.asarray(p)[None, :2], axis=1)) < clearance_m)
    return too_close


def _dedupe(points: np.ndarray) -> np.ndarray:
    keep = np.concatenate([[True], np.linalg.norm(np.diff(points, axis=0), axis=1) > 1e-6])
    return points[keep]


def _crosswalk_box(obj, sample: _RoadSample) -> Box:
    """The crosswalk object's footprint as a Box on the road. Its outline's cornerRoad points (s, t) span a box along
    the road; cornerLocal points (u, v) and an outline-less object's length (along u) and width (along v) lie in
    the object's own frame at (s, t), turned by its hdg from the road's heading (CARLA's towns give a crosswalk
    across the road as hdg ~ pi / 2 with its length across)."""
    road_corners = obj.findall("outlines/outline/cornerRoad") or obj.findall("outline/cornerRoad")
    if road_corners:
        s_c = np.array([_f(c, "s") for c in road_corners])
        t_c = np.array([_f(c, "t") for c in road_corners])
        s_mid, t_mid, yaw, size = s_c.mean(), t_c.mean(), 0.0, (np.ptp(s_c), np.ptp(t_c))
    else:
        s0, t0, yaw = _f(obj, "s"), _f(obj, "t", 0.0), _f(obj, "hdg", 0.0)
        local = obj.findall("outlines/outline/cornerLocal") or obj.findall("outline/cornerLocal")
        if local:
            u = np.array([_f(c, "u") for c in local])
            v = np.array([_f(c, "v") for c in local])
        else:
            half_l, half_w = _f(obj, "length", 2.0) / 2, _f(obj, "width", 3.0) / 2
            u, v = np.array([-half_l, half_l]), np.array([-half_w, half_w])
        u_mid, v_mid = 0.5 * (u.min() + u.max()), 0.5 * (v.min() + v.max())
        s_mid = s0 + u_mid * math.cos(yaw) - v_mid * math.sin(yaw)
        t_mid = t0 + u_mid * math.sin(yaw) + v_mid * math.cos(yaw)
        size = (np.ptp(u), np.ptp(v))
    s_mid = float(np.clip(s_mid, sample.s[0], sample.s[-1]))
    i = int(np.argmin(np.abs(sample.s - s_mid)))
    heading = float(sample.heading[i])
    centre = sample.at(np.array([i]), np.array([t_mid]), from_reference_line=True)[0]
    return Box((float(centre[0]), float(centre[1]), 0.0),
               (max(float(size[0]), 0.5), max(float(size[1]), 0.5), 0.02), heading + float(yaw), "crosswalk")
