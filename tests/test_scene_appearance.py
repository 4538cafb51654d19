"""The textured builder: labels and instance ids on the new surfaces, the Gaussian budget, shadows, sky,
palettes, textured agents, and the legacy appearance kept bit for bit."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from neural_sensor.assets import make_asset
from neural_sensor.camera import Camera
from neural_sensor.labels import CityObjectLabel as L
from neural_sensor.render import render
from neural_sensor.scene import light
from neural_sensor.scene.layout import Box, Style, straight_road
from neural_sensor.scene.occupancy import _inside_box_2d, _surface_labels, build_occupancy
from neural_sensor.scene.surfaces import MAX_SCALE_M, STATIC_INSTANCE_BASE, surface_gaussians
from neural_sensor.scene.to_gaussians import occupancy_to_gaussians
from neural_sensor.sh import SH_C0

BUILDING = Box((20.0, 15.0, 0.0), (14.0, 8.0, 12.0), 0.0, "building")  # left of the road (+y), facing it


def _street(style: Style | None = None):
    layout = straight_road(40.0, style=style or Style(seed=1), buildings=False)
    layout.objects = [o for o in layout.objects if o.cls != "parked_vehicle" and abs(o.centre_m[0] - 20.0) > 9.0]
    layout.objects.append(BUILDING)
    return layout, build_occupancy(layout, voxel_m=0.3)


@pytest.fixture(scope="module")
def street():
    layout, occ = _street()
    return layout, occ, surface_gaussians(occ, layout, sky=True)


def _rgb(scene):
    return scene.sh[:, 0, :] * SH_C0 + 0.5


def _unproject(camera: Camera, depth: np.ndarray) -> np.ndarray:
    """[H, W, 3] world points of a depth image (OpenCV camera)."""
    h, w = depth.shape
    K = camera.K
    v, u = np.mgrid[0:h, 0:w] + 0.5
    x = (u - K[0, 2]) / K[0, 0] * depth
    y = (v - K[1, 2]) / K[1, 1] * depth
    pts = np.stack([x, y, depth, np.ones_like(depth)], -1)
    return (pts @ camera.pose_camera_to_world.T)[..., :3]


def test_semantic_render_matches_the_layout(street):
    layout, occ, scene = street
    camera = Camera.look_at(160, 90, 90.0, [6.0, -1.75, 1.6], [20.0, 6.0, 1.0])
    out = render(scene, camera, backend="cpu", outputs=("depth", "alpha", "semantic", "instance"))
    sem, inst, depth = out.semantic[0], out.instance[0], out.depth[0]
    world = _unproject(camera, depth)
    ground = np.isin(sem, [L.ROADS, L.ROAD_LINE, L.SIDEWALKS, L.TERRAIN]) & (out.alpha[0] > 0.9)
    assert ground.mean() > 0.3
    truth, _ = _surface_labels(layout, world[ground][:, :2], occ.voxel_m)
    truth[truth == L.ROAD_LINE] = L.ROADS
    seen = sem[ground].copy()
    lines = seen == L.ROAD_LINE
    seen[lines] = L.ROADS
    # away from class borders (one pixel's footprint), the rendered class is the layout's class
    agree = (seen == truth).mean()
    assert agree > 0.95, agree
    for cls in (L.ROADS, L.SIDEWALKS):
        assert (sem == cls).sum() > 100
    # lane markings: ROAD_LINE pixels (within 15 m, where a pixel is a few cm) lie on a lane boundary; edge
    # lines sit 0.2 m inside the road
    pts = world[(sem == L.ROAD_LINE) & (depth < 15.0)][:, :2]
    assert len(pts) > 20
    from neural_sensor.scene.occupancy import _segment_distances

    off = np.min([np.abs(_segment_distances(pts, lane.centre_m)[0] - lane.width_m / 2) for lane in layout.lanes], 0)
    crosswalk = np.zeros(len(pts), bool)
    for box in layout.crosswalks:
        crosswalk |= _inside_box_2d(pts, box, pad=0.2)[0]
    # (expected depth blends the line with the kerb face beside it at a grazing angle: a few pixels move)
    off = np.minimum(off, np.abs(off - 0.2))[~crosswalk]  # from the boundary or the inset edge line
    assert np.median(off) < 0.1 and np.quantile(off, 0.9) < 0.25
    # the building: its pixels lie on its box and carry its instance id; the ground carries 0
    building = sem == L.BUILDING
    assert building.mean() > 0.05
    # (where the building meets the sky dome, expected depth mixes 10 m and 1000 m: check its surface
    # without the dome, on pixels it covers fully)
    ground_only = scene.subset(np.flatnonzero(scene.labels != L.SKY))
    plain = render(ground_only, camera, backend="cpu", outputs=("depth", "alpha", "semantic"))
    solid = (plain.semantic[0] == L.BUILDING) & (plain.alpha[0] > 0.98)
    bpts = _unproject(camera, plain.depth[0])[solid]
    inside = _inside_box_2d(bpts[:, :2], BUILDING, pad=0.35)[0]
    assert inside.mean() > 0.97
    obj = next(i for i, o in enumerate(layout.objects) if o is BUILDING)
    assert (inst[building] == STATIC_INSTANCE_BASE + obj).mean() > 0.99
    assert (inst[ground] == 0).all()
    # the sky dome above the roofs
    assert (sem[0] == L.SKY).mean() > 0.3


def test_no_gaussian_above_the_budget(street):
    _, _, scene = street
    not_sky = scene.labels != L.SKY
    assert scene.scales[not_sky].max() <= MAX_SCALE_M + 1e-6
    # the 200 m demo street stays within 600k Gaussians
    layout = straight_road(200.0)
    big = surface_gaussians(build_occupancy(layout, voxel_m=0.3), layout, sky=True)
    assert len(big) <= 600_000, len(big)
    counts = {int(k): int(v) for k, v in zip(*np.unique(big.labels, return_counts=True))}
    assert counts[L.ROADS] > 50_000 and counts[L.BUILDING] > 50_000 and counts[L.ROAD_LINE] > 1000


def test_shadows_darken_the_road_behind_a_building():
    # morning sun, low, from the +y side (azimuth 60 degrees): the building at +y shades the road
    layout, occ = _street(Style(seed=1, time_of_day="morning"))
    lit = surface_gaussians(occ, layout, shadows=True)
    flat = surface_gaussians(occ, layout, shadows=False)
    np.testing.assert_array_equal(lit.means, flat.means)
    sun = light.lighting(layout.style).sun_dir
    road = np.flatnonzero(lit.labels == L.ROADS)
    pts = lit.means[road].astype(np.float64)
    # analytic shadow: does the ray towards the sun pass through the building box below its top?
    t = np.linspace(0.3, 80.0, 600)
    ray = pts[:, None, :] + t[None, :, None] * sun
    inside = np.zeros(ray.shape[:2], bool)
    for k in range(len(t)):
        inside[:, k] = _inside_box_2d(ray[:, k, :2], BUILDING, pad=-0.3)[0] & (ray[:, k, 2] < BUILDING.size_m[2] - 0.3)
    shadowed, open_sky = inside.any(1), ~_near_any(ray, BUILDING)
    assert shadowed.sum() > 200 and open_sky.sum() > 200
    ratio = _rgb(lit)[road].sum(1) / np.maximum(_rgb(flat)[road].sum(1), 1e-6)
    assert np.median(ratio[shadowed]) < 0.8
    assert np.median(ratio[open_sky]) > 0.97


def _near_any(ray, box) -> np.ndarray:
    near = np.zeros(ray.shape[0], bool)
    for k in range(ray.shape[1]):
        near |= _inside_box_2d(ray[:, k, :2], box, pad=1.5)[0] & (ray[:, k, 2] < box.size_m[2] + 1.5)
    return near


def test_palettes_and_sky_gradient():
    layout, occ = _street(Style(seed=1, time_of_day="noon"))
    noon = surface_gaussians(occ, layout, sky=True)
    means = {}
    for tod, palette in (("noon", "clear"), ("dusk", "clear"), ("noon", "overcast")):
        lay, o = _street(Style(seed=1, time_of_day=tod, palette=palette))
        scene = noon if (tod, palette) == ("noon", "clear") else surface_gaussians(o, lay, sky=True)
        road = scene.labels == L.ROADS
        means[tod, palette] = _rgb(scene)[road].mean()
        sky = scene.labels == L.SKY
        up = scene.means[sky, 2] > 600
        low = scene.means[sky, 2] < 100
        zenith, horizon = _rgb(scene)[sky][up].mean(0), _rgb(scene)[sky][low].mean(0)
        if palette == "clear":  # a gradient: deeper blue overhead than at the horizon
            assert zenith[2] - zenith[0] > horizon[2] - horizon[0] + 0.05
        else:  # overcast: a grey sky
            assert np.ptp(zenith) < 0.05 and np.ptp(horizon) < 0.05
    assert means["dusk", "clear"] < 0.75 * means["noon", "clear"]
    # overcast: no hard sun, so a road in shadow and in the open differ little; it is lit by the sky
    assert light.lighting(Style(palette="overcast")).sun_rgb.max() < 0.1


def test_textured_agents_are_not_plain_boxes():
    car = make_asset("car", instance_id=5, seed=3)
    rgb = _rgb(car)
    assert (car.labels == L.CAR).all() and (car.instance == 5).all()
    quantised = {tuple(c) for c in np.round(rgb * 8).astype(int)}
    assert len(quantised) >= 6  # paint, glass, tyres, rims, lights, plates
    # a dark car: its headlights and number plate stand out on the front
    for seed in range(30):
        dark = make_asset("car", instance_id=5, seed=seed)
        side = np.abs(dark.means[:, 1]) > dark.means[:, 1].max() - 0.02
        if np.median(_rgb(dark)[side]) < 0.25:
            break
    front = dark.means[:, 0] > dark.means[:, 0].max() - 0.05
    assert (_rgb(dark)[front].min(1) > 0.6).sum() > 5
    # pedestrians: trousers and shirt are separate garments (different colours in most outfits)
    differs = []
    for seed in range(10):
        walker = make_asset("pedestrian", instance_id=6, seed=seed)
        w_rgb = _rgb(walker)
        legs = walker.means[:, 2] < 0.6
        chest = (walker.means[:, 2] > 1.0) & (walker.means[:, 2] < 1.3)
        differs.append(np.abs(w_rgb[legs].mean(0) - w_rgb[chest].mean(0)).max() > 0.05)
        assert (walker.labels == L.PEDESTRIAN).all()
    assert sum(differs) >= 6


def test_legacy_appearance_is_builder_version_2():
    layout = straight_road(40.0, style=Style(seed=3, time_of_day="evening", palette="wet"))
    scene = occupancy_to_gaussians(build_occupancy(layout, voxel_m=0.4), layout, appearance="legacy")
    digest = hashlib.sha256()
    for field in ("means", "quats", "scales", "opacities", "sh", "labels", "instance"):
        digest.update(np.ascontiguousarray(getattr(scene, field)).tobytes())
    # the fingerprint of builder version 2's output (git show 4658c05^:neural_sensor/scene/to_gaussians.py)
    assert len(scene) == 24308
    assert digest.hexdigest() == "fca6b9fd3028068d5dba35a57a1b259bba397cd80d6e60a668a990c5eaa2e542"
    with pytest.raises(ValueError, match="appearance must be one of"):
        occupancy_to_gaussians(build_occupancy(layout, voxel_m=0.4), layout, appearance="photoreal")
