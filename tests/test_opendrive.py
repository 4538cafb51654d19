"""OpenDRIVE: real third-party maps import, build and render; our export parses back to the same lanes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from neural_sensor.camera import Camera
from neural_sensor.labels import CityObjectLabel as L
from neural_sensor.render import render
from neural_sensor.scene.layout import _footprint_distance_m, curve, densified, straight_road
from neural_sensor.scene.occupancy import _segment_distances, build_occupancy
from neural_sensor.scene.opendrive import LANE_CLEARANCE_M, layout_from_opendrive, layout_to_opendrive
from neural_sensor.scene.to_gaussians import occupancy_to_gaussians, sky_rgb

MAPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "opendrive" / "maliput_xodr"
MAP_FILES = sorted(MAPS.glob("*.xodr")) if MAPS.is_dir() else []


@pytest.mark.skipif(not MAP_FILES, reason=f"third-party OpenDRIVE maps not found at {MAPS}")
@pytest.mark.parametrize("path", MAP_FILES, ids=lambda p: p.stem)
def test_real_map_imports_builds_and_renders(path):
    layout = layout_from_opendrive(path.read_text(), name=path.stem)
    assert len(layout.lanes) >= 4 and layout.references
    if "crosswalk" in path.stem:
        assert layout.crosswalks
    occupancy = build_occupancy(layout, voxel_m=0.5)
    scene = occupancy_to_gaussians(occupancy, layout)
    lane = next(ln for ln in layout.lanes if ln.direction == 1)
    points = lane.travel_polyline()
    # the lane's centre line is road in the occupancy grid
    probe = np.concatenate([points[2:-2], np.full((len(points) - 4, 1), -0.1)], axis=1)
    assert np.isin(occupancy.label_at(probe), [L.ROADS, L.ROAD_LINE]).mean() > 0.95
    eye, target = points[2], points[8]
    camera = Camera.look_at(96, 54, 90.0, [eye[0], eye[1], 1.6], [target[0], target[1], 1.2])
    out = render(scene, camera, backend="cpu", outputs=("alpha", "semantic"), background=sky_rgb(layout.style))
    bottom = out.semantic[0, 40:, 24:72]
    assert np.isin(bottom, [L.ROADS, L.ROAD_LINE]).mean() > 0.8  # the road ahead of the camera


@pytest.mark.skipif(not MAP_FILES, reason=f"third-party OpenDRIVE maps not found at {MAPS}")
@pytest.mark.parametrize("path", MAP_FILES, ids=lambda p: p.stem)
def test_real_map_buildings_stand_off_the_driving_lanes(path):
    # three of these four maps had two decorated buildings each across a driving lane (only a building's centre was
    # checked); a building that would cover one is now shortened along its road
    layout = layout_from_opendrive(path.read_text(), name=path.stem)
    lanes = np.concatenate([densified(lane.centre_m, 0.5) for lane in layout.lanes])
    buildings = [o for o in layout.objects if o.cls == "building"]
    assert buildings
    for b in buildings:
        distance_m = _footprint_distance_m(b.centre_m[:2], b.yaw_rad, b.size_m[0], b.size_m[1], lanes)
        assert distance_m >= LANE_CLEARANCE_M - 0.01, b


@pytest.mark.parametrize("make", [lambda: straight_road(120.0), lambda: curve(50.0, 70.0)], ids=["straight", "curve"])
def test_export_parses_back_to_the_same_lanes(make):
    layout = make()
    text = layout_to_opendrive(layout)
    root = ET.fromstring(text)
    assert root.tag == "OpenDRIVE" and root.find("header").get("revMinor") == "4"
    assert len(root.findall("road")) == len(layout.references)
    back = layout_from_opendrive(text, decorate=False)
    assert len(back.lanes) == len(layout.lanes) and len(back.sidewalks) == len(layout.sidewalks)
    for lane in layout.lanes:
        # the matching lane (same direction and width): every vertex of ours lies on its centre line
        best = min(_segment_distances(lane.centre_m, other.centre_m)[0].max()
                   for other in back.lanes if other.direction == lane.direction and other.width_m == lane.width_m)
        assert best < 0.01


def test_bad_opendrive_raises():
    with pytest.raises(ValueError, match="not well-formed XML"):
        layout_from_opendrive("<OpenDRIVE><road>")
    with pytest.raises(ValueError, match="root element is <svg>"):
        layout_from_opendrive("<svg/>")
    with pytest.raises(ValueError, match="has no <road>"):
        layout_from_opendrive("<OpenDRIVE/>")
    bad_geometry = ('<OpenDRIVE><road id="1" length="10"><planView><geometry s="0" x="0" y="0" hdg="0" length="10">'
                    '<clothoid/></geometry></planView></road></OpenDRIVE>')
    with pytest.raises(ValueError, match="unsupported geometry <clothoid>"):
        layout_from_opendrive(bad_geometry)
    with pytest.raises(ValueError, match="no road references"):
        from neural_sensor.scene.layout import Lane, Layout

        layout_to_opendrive(Layout([Lane(np.array([[0.0, 0.0], [10.0, 0.0]]))]))


@pytest.mark.parametrize("make", [lambda: straight_road(80.0), lambda: curve(50.0, 70.0)], ids=["straight", "curve"])
def test_export_reads_in_an_independent_opendrive_reader(make, tmp_path):
    """pyxodr (PyPI) parses our export and finds our lanes where we put them."""
    network_module = pytest.importorskip("pyxodr.road_objects.network", reason="pyxodr not installed")
    layout = make()
    path = tmp_path / "export.xodr"
    path.write_text(layout_to_opendrive(layout))
    found = 0
    for road in network_module.RoadNetwork(str(path)).get_roads():
        for section in road.lane_sections:
            for lane in section.lanes:
                if lane.type != "driving":
                    continue
                found += 1
                centre = lane.centre_line[:, :2]
                # our template lanes are polylines through points on the arcs: chords sag by < 5 cm
                assert min(_segment_distances(centre, ours.centre_m)[0].max() for ours in layout.lanes) < 0.06
    assert found == len(layout.lanes)


def _road_xml(geometry: str, sections: str, length: float) -> str:
    return (f'<OpenDRIVE><header revMajor="1" revMinor="4"/><road id="1" length="{length}" junction="-1">'
            f'<planView>{geometry}</planView><lanes>{sections}</lanes></road></OpenDRIVE>')


def _section(s: float, width: float) -> str:
    lane = '<lane id="{}" type="driving"><width sOffset="0" a="{}" b="0" c="0" d="0"/></lane>'
    return (f'<laneSection s="{s}"><left>{lane.format(1, width)}</left><center><lane id="0" type="none"/></center>'
            f'<right>{lane.format(-1, width)}</right></laneSection>')


def test_lane_sections_meet_and_short_sections_survive():
    geometry = '<geometry s="0" x="0" y="0" hdg="0" length="30"><line/></geometry>'
    layout = layout_from_opendrive(_road_xml(geometry, _section(0, 3.5) + _section(10.5, 3.0) + _section(11.2, 3.5),
                                             30.0), decorate=False)
    right = sorted((ln for ln in layout.lanes if ln.direction == 1), key=lambda ln: ln.centre_m[0, 0])
    assert len(right) == 3  # the 0.7 m section keeps its lane
    for a, b in zip(right[:-1], right[1:]):
        assert a.centre_m[-1, 0] == pytest.approx(b.centre_m[0, 0])  # no gap along the road
    assert right[1].width_m == pytest.approx(3.0)


def test_poly3_ends_where_its_arc_length_does():
    # v = 0.02 u^2 from u = 0 to 30: its arc length is the record's length
    u = np.linspace(0, 30, 200001)
    arc = float(np.sum(np.hypot(np.diff(u), np.diff(0.02 * u**2))))
    geometry = f'<geometry s="0" x="0" y="0" hdg="0" length="{arc}"><poly3 a="0" b="0" c="0.02" d="0"/></geometry>'
    layout = layout_from_opendrive(_road_xml(geometry, _section(0, 3.5), arc), decorate=False)
    ref = layout.references[0].points_m
    np.testing.assert_allclose(ref[-1], [30.0, 18.0], atol=0.02)


def test_lane_without_id_is_a_clear_error():
    geometry = '<geometry s="0" x="0" y="0" hdg="0" length="10"><line/></geometry>'
    bad = ('<laneSection s="0"><right><lane type="driving"><width sOffset="0" a="3" b="0" c="0" d="0"/></lane>'
           '</right></laneSection>')
    with pytest.raises(ValueError, match="without an integer id"):
        layout_from_opendrive(_road_xml(geometry, bad, 10.0))
