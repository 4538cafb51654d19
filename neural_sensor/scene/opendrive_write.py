"""Layout -> OpenDRIVE 1.4, for `client.generate_opendrive_world` (`layout_to_opendrive`; reading is
`neural_sensor.scene.opendrive`, which re-exports these names).

A Layout read from a map writes that map back whole (its junctions, links, elevation, left-hand traffic and
geoReference kept). Otherwise each road reference of the Layout (the templates record them) becomes a road whose
plan view is a chain of lines and arcs through the reference polyline, with constant-width driving lanes on both
sides (right-hand traffic) and sidewalk lanes outside them, its header's bounds those of the roads; two straight
roads crossing at right angles (the intersection template) become four arms and a junction of connecting roads
(`_write_four_way`).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import numpy as np

from neural_sensor.scene.layout import Layout, RoadReference, polyline_tangents


def _arc_chain(points: np.ndarray) -> list[tuple[np.ndarray, float, float, float]]:
    """(start, heading, curvature, length) of circular arcs (or lines) through consecutive polyline points.

    Each piece starts at a point with the polyline's tangent there and bends to reach the next point,
    so points sampled on a circle give that circle exactly and straight runs give lines.
    """
    tangents = polyline_tangents(points)
    out = []
    for p, q, t in zip(points[:-1], points[1:], tangents[:-1]):
        chord = q - p
        c_len = float(np.linalg.norm(chord))
        heading = math.atan2(t[1], t[0])
        phi = math.atan2(chord[1], chord[0]) - heading
        phi = (phi + math.pi) % (2 * math.pi) - math.pi  # turn from the tangent to the chord
        if abs(phi) < 1e-9:
            out.append((p, heading, 0.0, c_len))
        else:
            out.append((p, heading, 2.0 * math.sin(phi) / c_len, c_len * phi / math.sin(phi)))
    return out



def layout_export_problem(layout: Layout) -> str | None:
    """Why `layout_to_opendrive` cannot write the layout, or None: a layout read from a map, or one whose roads
    were recorded as road references (the templates, prompts), can be written; hand-made lane lists cannot."""
    if layout.opendrive is None and not layout.references:
        return (f"the layout {layout.name!r} has no road references to export (it was not read from a map, and its "
                "lanes were given one by one)")
    return None


GEO_REFERENCE = "+proj=tmerc +lat_0=0 +lon_0=0 +k=1 +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"


def layout_to_opendrive(layout: Layout, *, name: str | None = None) -> str:
    """OpenDRIVE text for the layout: the map it was read from, whole, or else OpenDRIVE 1.4 for its road
    references (lines and arcs through each reference polyline, right-hand traffic). Two straight roads of one
    width crossing at right angles (the intersection template's) are written as a junction: the four arms, each
    from the junction's edge outwards, and connecting roads for every lane straight on, for the inner lane
    turning left and the outer lane turning right (CARLA's route planner and traffic manager route through it).

    Raises ValueError when the layout has neither (hand-made lane lists): `layout_export_problem` says so first.
    """
    if layout.opendrive is not None:  # its own declaration (which may name another encoding) replaced
        body = re.sub(r"^\ufeff?\s*<\?xml[^>]*\?>\s*", "", layout.opendrive)
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + body.rstrip() + "\n"
    problem = layout_export_problem(layout)
    if problem:
        raise ValueError(f"layout_to_opendrive: {problem}")
    points = np.concatenate([ref.points_m for ref in layout.references])
    reach_m = max(max(sum(ref.right_widths_m), sum(ref.left_widths_m)) + ref.sidewalk_width_m
                  for ref in layout.references)
    (west, south), (east, north) = points.min(axis=0) - reach_m, points.max(axis=0) + reach_m
    root = ET.Element("OpenDRIVE")
    header = ET.SubElement(root, "header", revMajor="1", revMinor="4", name=name or layout.name, version="1.00",
                           north=f"{north:.3f}", south=f"{south:.3f}", east=f"{east:.3f}", west=f"{west:.3f}")
    # the map's origin at latitude / longitude 0 as CARLA's own towns give it (without one libcarla warns "cannot
    # parse georeference" on every map it reads)
    ET.SubElement(header, "geoReference").text = GEO_REFERENCE
    crossing = _four_way_crossing(layout.references)
    if crossing is None:
        for road_id, ref in enumerate(layout.references, start=1):
            _write_road(root, road_id, _arc_chain(ref.points_m), ref.right_widths_m, ref.left_widths_m,
                        ref.sidewalk_width_m)
    else:
        _write_four_way(root, layout.references, *crossing)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


JUNCTION_ID = 1000  # the id of the four-way junction's <junction> (roads are numbered from 1)
JUNCTION_RIGHT_TURN_M = 5.0  # the radius of a right turn's lane through the four-way junction


def _four_way_crossing(references: list[RoadReference]) -> tuple[np.ndarray, float] | None:
    """(the crossing point, the roads' half width) where the layout is two straight roads of the same lanes and
    width crossing at right angles, each going on at least its half width beyond the junction both ways; None
    otherwise."""
    if len(references) != 2:
        return None
    a, b = references
    if (a.right_widths_m, a.left_widths_m) != (b.right_widths_m, b.left_widths_m) \
            or a.right_widths_m != a.left_widths_m:
        return None
    lines = []
    for ref in references:
        start, end = ref.points_m[0], ref.points_m[-1]
        direction = (end - start) / np.linalg.norm(end - start)
        off = (ref.points_m - start) @ np.array([-direction[1], direction[0]])
        if np.abs(off).max() > 1e-6:
            return None
        lines.append((start, direction, float(np.linalg.norm(end - start))))
    (pa, da, la), (pb, db, lb) = lines
    if abs(float(da @ db)) > 1e-6:
        return None
    # pa + t da = pb + u db
    t, u = np.linalg.solve(np.stack([da, -db], axis=1), pb - pa)
    half = float(sum(a.right_widths_m))
    if min(t, la - t, u, lb - u) < 2.0 * half + JUNCTION_RIGHT_TURN_M:
        return None
    return pa + t * da, half


def _write_four_way(root, references: list[RoadReference], centre: np.ndarray, half_m: float) -> None:
    """The four arms (reference lines from the junction's edge outwards: their left lanes come in, their right
    lanes go out) and the junction's connecting roads (right lanes only, from an arm's edge to another's). The
    junction reaches JUNCTION_RIGHT_TURN_M beyond the outer lanes' centre lines, so that a right turn's lane is an
    arc of that radius (the roads' own crossing square would give it half a lane)."""
    outer = references[0].left_widths_m
    half_m = max(half_m, JUNCTION_RIGHT_TURN_M + sum(outer[:-1]) + outer[-1] / 2.0)  # (where the arms begin)
    arms = []  # (road id, unit direction outwards, reference) per arm
    for ref in references:
        start, end = ref.points_m[0], ref.points_m[-1]
        for far in (end, start):
            direction = (far - centre) / np.linalg.norm(far - centre)
            edge = centre + half_m * direction
            road_id = len(arms) + 1
            chain = [(edge, math.atan2(direction[1], direction[0]), 0.0, float(np.linalg.norm(far - edge)))]
            road = _write_road(root, road_id, chain, ref.right_widths_m, ref.left_widths_m, ref.sidewalk_width_m)
            ET.SubElement(road.find("link"), "predecessor", elementType="junction", elementId=str(JUNCTION_ID))
            arms.append((road_id, direction, ref))
    junction = ET.Element("junction", id=str(JUNCTION_ID), name="four-way")
    lanes = len(references[0].left_widths_m)
    connection_id = 0
    for in_id, in_dir, ref in arms:
        for out_id, out_dir, _ in arms:
            if out_id == in_id:
                continue
            turn = math.atan2(float(-in_dir[0] * out_dir[1] + in_dir[1] * out_dir[0]),
                              float(-in_dir @ out_dir))  # from heading in (-in_dir) to heading out: left positive
            if abs(turn) < 1e-6:
                kept = range(1, lanes + 1)  # straight on: every lane
            elif turn > 0:
                kept = [1]  # left: from the inner lane into the inner lane
            else:
                kept = [lanes]  # right: from the outer lane into the outer lane
            road_id = len(arms) + 1 + connection_id
            start = centre + half_m * in_dir
            heading = math.atan2(-in_dir[1], -in_dir[0])
            if abs(turn) < 1e-6:
                chain = [(start, heading, 0.0, 2.0 * half_m)]
            else:  # an arc tangent to both arms' reference lines, half_m from where they cross
                chain = [(start, heading, math.copysign(1.0 / half_m, turn), half_m * abs(turn))]
            widths = tuple(ref.left_widths_m[k - 1] for k in kept)
            road = _write_road(root, road_id, chain, widths, (), 0.0, junction=str(JUNCTION_ID),
                               lane_links=[(k, -k) for k in kept],
                               offset_m=-float(sum(ref.left_widths_m[:kept[0] - 1])))  # (the lanes it joins)
            link = road.find("link")
            ET.SubElement(link, "predecessor", elementType="road", elementId=str(in_id), contactPoint="start")
            ET.SubElement(link, "successor", elementType="road", elementId=str(out_id), contactPoint="start")
            connection = ET.SubElement(junction, "connection", id=str(connection_id), incomingRoad=str(in_id),
                                       connectingRoad=str(road_id), contactPoint="start")
            for position, k in enumerate(kept, start=1):
                ET.SubElement(connection, "laneLink", **{"from": str(k), "to": str(-position)})
            connection_id += 1
    root.append(junction)


def _write_road(root, road_id: int, chain, right_widths_m, left_widths_m, sidewalk_width_m: float,
                junction: str = "-1", lane_links=None, offset_m: float = 0.0):
    """One <road> of constant-width lanes along a chain of (start, heading, curvature, length) lines and arcs,
    appended to root and returned (its <link> empty). lane_links: (predecessor lane id, successor lane id) for
    each right lane, inner to outer (a junction's connecting road); offset_m: the lanes' offset from the
    reference line (left positive)."""
    road = ET.SubElement(root, "road", name=f"road {road_id}", length=f"{sum(c[3] for c in chain):.6f}",
                         id=str(road_id), junction=junction)
    ET.SubElement(road, "link")
    plan = ET.SubElement(road, "planView")
    s = 0.0
    for p, heading, curvature, length in chain:
        geometry = ET.SubElement(plan, "geometry", s=f"{s:.6f}", x=f"{p[0]:.6f}", y=f"{p[1]:.6f}",
                                 hdg=f"{heading:.9f}", length=f"{length:.6f}")
        if abs(curvature) < 1e-9:
            ET.SubElement(geometry, "line")
        else:
            ET.SubElement(geometry, "arc", curvature=f"{curvature:.9f}")
        s += float(length)
    ET.SubElement(road, "elevationProfile")
    ET.SubElement(road, "lateralProfile")
    lanes = ET.SubElement(road, "lanes")
    if offset_m:
        ET.SubElement(lanes, "laneOffset", s="0.0", a=f"{offset_m:.6f}", b="0.0", c="0.0", d="0.0")
    section = ET.SubElement(lanes, "laneSection", s="0.0")
    groups = {}
    for side, widths, sign in (("left", left_widths_m, 1), ("right", right_widths_m, -1)):
        if not widths and not sidewalk_width_m:
            continue
        group = groups[side] = ET.Element(side)
        entries = [("driving", w) for w in widths] + ([("sidewalk", sidewalk_width_m)]
                                                      if sidewalk_width_m > 0 else [])
        for k, (kind, width) in enumerate(entries, start=1):
            lane = ET.SubElement(group, "lane", id=str(sign * k), type=kind, level="false")
            link = ET.SubElement(lane, "link")
            if lane_links is not None and sign < 0 and kind == "driving":
                ET.SubElement(link, "predecessor", id=str(lane_links[k - 1][0]))
                ET.SubElement(link, "successor", id=str(lane_links[k - 1][1]))
            ET.SubElement(lane, "width", sOffset="0.0", a=f"{width:.6f}", b="0.0", c="0.0", d="0.0")
            mark = "broken" if kind == "driving" and k < len(widths) else "solid"
            ET.SubElement(lane, "roadMark", sOffset="0.0", type=mark, weight="standard", color="standard",
                          width="0.12")
    center = ET.Element("center")
    lane0 = ET.SubElement(center, "lane", id="0", type="none", level="false")
    ET.SubElement(lane0, "roadMark", sOffset="0.0", type="solid solid" if junction == "-1" else "none",
                  weight="standard", color="yellow", width="0.12")
    for element in (groups.get("left"), center, groups.get("right")):  # the schema's order
        if element is not None:
            section.append(element)
    return road
