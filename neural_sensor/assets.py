"""Agent assets as Gaussians, and compose(): placing them in the scene each tick.

An asset lives in its agent's local box frame: FLU (x forward, y left, z up),
origin at the centre of the box's bottom face, metres. Assets are procedural
surfaces sampled with Gaussians, labelled with the agent's CARLA class and
carrying its instance id:

- car: a body with rounded shoulders, a tapered glasshouse (windscreen, side and
  rear windows with pillars), wheels with tyres and rims, head and tail lights,
  number plates, dark bumpers and sills; paint drawn from a realistic colour mix
  (white, black, greys and silver, some red, blue and other colours);
- truck: a cab with a windscreen, a box body, wheels, lights;
- pedestrian: shoes, trousers or a skirt, a shirt or jacket with sleeves, hands,
  neck, head with hair, in human proportions and everyday clothing colours;
- cyclist: a bicycle (two spoked wheels, frame) and a seated rider.

Colours are pre-lit (sky from above, a darker underside, glass reflecting the
sky) because agents move through the scene's light. The seed picks colours.

compose() copies nothing: it returns the background and each agent as an
(asset, pose) PlacedScene, parts which render() takes as a list.
"""

from __future__ import annotations

import math

import numpy as np

from neural_sensor.gaussians import GaussianScene, PlacedScene
from neural_sensor.labels import CityObjectLabel as L

AGENT_KINDS = {  # kind -> (semantic label, default box size (length, width, height) in m)
    "car": (L.CAR, (4.5, 1.9, 1.5)),
    "truck": (L.TRUCK, (8.0, 2.5, 3.4)),
    "pedestrian": (L.PEDESTRIAN, (0.5, 0.6, 1.75)),
    "cyclist": (L.RIDER, (1.8, 0.6, 1.75)),
}
GAUSSIANS_PER_M2 = 85.0  # surface density of asset Gaussians (about 11 cm apart)

_PAINTS = (  # (weight, rgb): the colour mix of a car park
    (0.24, (0.86, 0.86, 0.85)), (0.18, (0.05, 0.05, 0.06)), (0.16, (0.55, 0.56, 0.58)),
    (0.12, (0.32, 0.33, 0.35)), (0.09, (0.55, 0.07, 0.07)), (0.09, (0.08, 0.18, 0.42)),
    (0.04, (0.62, 0.6, 0.52)), (0.04, (0.12, 0.3, 0.18)), (0.04, (0.8, 0.45, 0.08)),
)
_TOPS = ((0.1, 0.12, 0.2), (0.05, 0.05, 0.05), (0.55, 0.55, 0.55), (0.85, 0.85, 0.82), (0.55, 0.1, 0.1),
         (0.2, 0.35, 0.2), (0.6, 0.5, 0.35), (0.25, 0.4, 0.65), (0.7, 0.6, 0.2), (0.35, 0.2, 0.3))
_BOTTOMS = ((0.12, 0.18, 0.32), (0.05, 0.05, 0.06), (0.3, 0.3, 0.32), (0.45, 0.38, 0.28), (0.18, 0.25, 0.45),
            (0.6, 0.58, 0.52))
_HAIR = ((0.05, 0.04, 0.03), (0.2, 0.12, 0.06), (0.45, 0.32, 0.18), (0.6, 0.6, 0.58), (0.12, 0.08, 0.05))
GLASS = np.array([0.1, 0.13, 0.17])
RUBBER = np.array([0.05, 0.05, 0.055])


class _Builder:
    """Collects surface Gaussians: points, outward normals, tangent u, colours and the spacing they stand for."""

    def __init__(self, rng: np.random.Generator, density: float):
        self.rng = rng
        self.spacing = 1.0 / math.sqrt(density)
        self.points, self.normals, self.tangents, self.colors, self.sizes = [], [], [], [], []

    def add(self, points, normals, tangents, colors, size):
        n = len(points)
        self.points.append(np.asarray(points, np.float64).reshape(n, 3))
        self.normals.append(np.broadcast_to(np.asarray(normals, np.float64), (n, 3)))
        self.tangents.append(np.broadcast_to(np.asarray(tangents, np.float64), (n, 3)))
        self.colors.append(np.broadcast_to(np.asarray(colors, np.float64), (n, 3)))
        self.sizes.append(np.broadcast_to(np.asarray(size, np.float64), (n,)))

    def quad(self, p00, p10, p01, p11, color_fn, spacing=None):
        """A bilinear patch p(s, t), s, t in [0, 1]; color_fn(s, t, points, normal) -> [M, 3]."""
        p00, p10, p01, p11 = (np.asarray(p, np.float64) for p in (p00, p10, p01, p11))
        spacing = spacing or self.spacing
        su = max(np.linalg.norm(p10 - p00), np.linalg.norm(p11 - p01))
        sv = max(np.linalg.norm(p01 - p00), np.linalg.norm(p11 - p10))
        nu, nv = max(2, int(round(su / spacing))), max(2, int(round(sv / spacing)))
        s, t = np.meshgrid((np.arange(nu) + 0.5) / nu, (np.arange(nv) + 0.5) / nv, indexing="ij")
        s, t = s.ravel(), t.ravel()
        s = np.clip(s + self.rng.uniform(-0.15, 0.15, len(s)) / nu, 0, 1)
        t = np.clip(t + self.rng.uniform(-0.15, 0.15, len(t)) / nv, 0, 1)
        pts = ((1 - s) * (1 - t))[:, None] * p00 + (s * (1 - t))[:, None] * p10 + ((1 - s) * t)[:, None] * p01 \
            + (s * t)[:, None] * p11
        du = (p10 - p00) + (p11 - p01)
        dv = (p01 - p00) + (p11 - p10)
        normal = np.cross(du, dv)
        normal /= max(np.linalg.norm(normal), 1e-9)
        tangent = du / max(np.linalg.norm(du), 1e-9)
        size = max(su / nu, sv / nv)
        self.add(pts, normal, tangent, color_fn(s, t, pts, normal), size)

    def box(self, lo, hi, color_fn, spacing=None, skip=()):
        """The faces of an axis-aligned box (face names in skip are left out: '+x', '-x', '+y', '-y', '+z', '-z')."""
        (x0, y0, z0), (x1, y1, z1) = lo, hi
        faces = {
            "+z": ((x0, y0, z1), (x1, y0, z1), (x0, y1, z1), (x1, y1, z1)),
            "-z": ((x0, y0, z0), (x0, y1, z0), (x1, y0, z0), (x1, y1, z0)),
            "+x": ((x1, y0, z0), (x1, y1, z0), (x1, y0, z1), (x1, y1, z1)),
            "-x": ((x0, y0, z0), (x0, y0, z1), (x0, y1, z0), (x0, y1, z1)),
            "+y": ((x0, y1, z0), (x0, y1, z1), (x1, y1, z0), (x1, y1, z1)),
            "-y": ((x0, y0, z0), (x1, y0, z0), (x0, y0, z1), (x1, y0, z1)),
        }
        for name, corners in faces.items():
            if name not in skip:
                self.quad(*corners, color_fn, spacing)

    def cylinder(self, centre, axis, radius, length, color_fn, spacing=None, caps=True):
        """A cylinder around `axis` (unit) through `centre`; color_fn(r_frac, points, normals) for the caps
        and the mantle (r_frac = 1 on the mantle)."""
        spacing = spacing or self.spacing
        axis = np.asarray(axis, np.float64)
        ref = np.array([0.0, 0.0, 1.0]) if abs(axis[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        e1 = np.cross(axis, ref)
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(axis, e1)
        n_phi = max(8, int(round(2 * math.pi * radius / spacing)))
        n_len = max(1, int(round(length / spacing)))
        phi, h = np.meshgrid(np.linspace(0, 2 * math.pi, n_phi, endpoint=False),
                             (np.arange(n_len) + 0.5) / n_len - 0.5, indexing="ij")
        phi, h = phi.ravel(), h.ravel()
        radial = np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2
        pts = np.asarray(centre) + radial * radius + (h * length)[:, None] * axis
        self.add(pts, radial, axis, color_fn(np.ones(len(pts)), pts, radial),
                 max(2 * math.pi * radius / n_phi, length / n_len))
        if caps:
            for sign in (-1.0, 1.0):
                rings = max(1, int(round(radius / spacing)))
                pts, fr = [], []
                for k in range(rings):
                    r = (k + 0.5) / rings * radius
                    m = max(4, int(round(2 * math.pi * r / spacing)))
                    a = np.linspace(0, 2 * math.pi, m, endpoint=False) + k
                    pts.append(np.asarray(centre) + sign * axis * length / 2
                               + r * (np.cos(a)[:, None] * e1 + np.sin(a)[:, None] * e2))
                    fr.append(np.full(m, r / radius))
                pts, fr = np.concatenate(pts), np.concatenate(fr)
                self.add(pts, sign * axis, e1, color_fn(fr, pts, np.tile(sign * axis, (len(pts), 1))),
                         radius / rings)

    def ellipsoid(self, centre, radii, color_fn, spacing=None):
        spacing = spacing or self.spacing
        radii = np.asarray(radii, np.float64)
        area = 4 * math.pi * (np.prod(radii) ** (2 / 3))
        count = max(12, int(area / spacing**2))
        golden = math.pi * (3 - math.sqrt(5))
        k = np.arange(count) + 0.5
        z = 1 - 2 * k / count
        r = np.sqrt(1 - z * z)
        d = np.stack([r * np.cos(golden * k), r * np.sin(golden * k), z], 1)
        pts = np.asarray(centre) + d * radii
        normal = d / radii
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        tangent = np.cross(normal, [0.0, 0.0, 1.0]) + 1e-6
        tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
        self.add(pts, normal, tangent, color_fn(pts, normal), math.sqrt(area / count))

    def scene(self, label: int, instance_id: int, opacity: float = 0.99) -> GaussianScene:
        pts = np.concatenate(self.points)
        normals = np.concatenate(self.normals)
        tangents = np.concatenate(self.tangents)
        tangents = tangents - (tangents * normals).sum(1, keepdims=True) * normals
        bad = np.linalg.norm(tangents, axis=1) < 1e-6
        tangents[bad] = np.cross(normals[bad], [0.3, 0.5, 0.8])
        tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
        bitangents = np.cross(normals, tangents)
        sizes = np.concatenate(self.sizes)
        # pre-lit: sky from above, darker underneath, a little key light from the front-left
        shade = 0.72 + 0.28 * normals[:, 2] + 0.06 * normals[:, 0] + 0.04 * normals[:, 1]
        colors = np.clip(np.concatenate(self.colors) * np.clip(shade, 0.35, 1.1)[:, None], 0, 1)
        from neural_sensor.scene.surfaces import _quats_from_frames

        quats = _quats_from_frames(tangents, bitangents, normals)
        scales = np.stack([0.62 * sizes, 0.62 * sizes, np.full(len(sizes), 0.004)], 1)
        n = len(pts)
        return GaussianScene.from_colors(pts.astype(np.float32), quats.astype(np.float32),
                                         np.clip(scales, 1e-3, None).astype(np.float32),
                                         np.full(n, opacity, np.float32), colors.astype(np.float32),
                                         np.full(n, int(label), np.uint8), np.full(n, instance_id, np.int32))


def _paint(rng: np.random.Generator) -> np.ndarray:
    weights = np.array([w for w, _ in _PAINTS])
    base = np.array(_PAINTS[int(rng.choice(len(_PAINTS), p=weights / weights.sum()))][1])
    return np.clip(base * rng.uniform(0.92, 1.06) + rng.normal(0, 0.015, 3), 0, 1)


def _car(b: _Builder, size, rng) -> None:
    length, width, height = size
    paint = _paint(rng)
    hx, hy = length / 2, width / 2
    wheel_r = min(0.33, 0.24 * height)
    sill = 0.55 * wheel_r  # body bottom
    belt = 0.56 * height  # window line
    roof = height
    hood_front = hx - 0.02

    def paint_fn(s, t, pts, n):
        # a faint vertical gradient (horizon reflected in the lower doors) and a darker sill band
        c = np.tile(paint, (len(pts), 1)) * (0.9 + 0.12 * np.clip((pts[:, 2] - sill) / (belt - sill), 0, 1))[:, None]
        c[pts[:, 2] < sill + 0.12] = c[pts[:, 2] < sill + 0.12] * 0.55 + 0.03
        return c

    def front_fn(s, t, pts, n):
        c = paint_fn(s, t, pts, n)
        y, z = pts[:, 1], pts[:, 2]
        lamp = (np.abs(np.abs(y) - 0.72 * hy) < 0.16 * hy) & (np.abs(z - (belt - 0.12)) < 0.06)
        c[lamp] = [0.92, 0.92, 0.85]
        grille = (np.abs(y) < 0.4 * hy) & (np.abs(z - (belt - 0.2)) < 0.08)
        c[grille] = [0.08, 0.08, 0.09]
        bumper = z < sill + 0.22
        c[bumper] = [0.12, 0.12, 0.13]
        plate = (np.abs(y) < 0.26) & (np.abs(z - (sill + 0.18)) < 0.06)
        c[plate] = [0.9, 0.9, 0.88]
        return c

    def rear_fn(s, t, pts, n):
        c = paint_fn(s, t, pts, n)
        y, z = pts[:, 1], pts[:, 2]
        lamp = (np.abs(y) > 0.6 * hy) & (np.abs(z - (belt - 0.1)) < 0.08)
        c[lamp] = [0.7, 0.05, 0.04]
        bumper = z < sill + 0.2
        c[bumper] = [0.12, 0.12, 0.13]
        plate = (np.abs(y) < 0.26) & (np.abs(z - (sill + 0.32)) < 0.06)
        c[plate] = [0.9, 0.9, 0.88]
        return c

    # lower body: slightly narrower at the top (rounded shoulders)
    sh = 0.94 * hy
    b.quad((-hx, -hy, sill), (hx, -hy, sill), (-hx, -sh, belt), (hood_front, -sh, belt), paint_fn)
    b.quad((hx, hy, sill), (-hx, hy, sill), (hood_front, sh, belt), (-hx, sh, belt), paint_fn)
    b.quad((hx, -hy, sill), (hx, hy, sill), (hood_front, -sh, belt), (hood_front, sh, belt), front_fn)
    b.quad((-hx, hy, sill), (-hx, -hy, sill), (-hx, sh, belt), (-hx, -sh, belt), rear_fn)
    b.quad((-hx, -hy, sill), (-hx, hy, sill), (hx, -hy, sill), (hx, hy, sill),
           lambda s, t, p, n: np.tile([0.04, 0.04, 0.045], (len(p), 1)), spacing=2 * b.spacing)
    # glasshouse: a frustum from the belt line to the roof, windscreen raked, pillars in paint
    wf, wr = 0.22 * length, -0.34 * length  # windscreen base / rear window base (x)
    tf, tr = 0.02 * length, -0.24 * length  # roof front / rear edge (x)
    ry = 0.8 * hy
    hood = (hood_front, wf)
    b.quad((hood[1], -sh, belt), (hood[0], -sh, belt), (hood[1], sh, belt), (hood[0], sh, belt), paint_fn)  # bonnet
    b.quad((-hx, -sh, belt), (wr, -sh, belt), (-hx, sh, belt), (wr, sh, belt), paint_fn)  # boot lid

    def glass_fn(frame_s=0.08, frame_t=0.1):
        def fn(s, t, pts, n):
            c = np.tile(GLASS, (len(pts), 1)) + 0.12 * np.clip(n[2], 0, 1)  # sky in the glass
            c = c + 0.05 * (pts[:, 2:3] - belt) / max(roof - belt, 1e-3)
            pillar = (s < frame_s) | (s > 1 - frame_s) | (t > 1 - frame_t)
            c[pillar] = paint * 0.9
            return c
        return fn

    b.quad((wf, -sh, belt), (wf, sh, belt), (tf, -ry, roof), (tf, ry, roof), glass_fn(0.06, 0.06))  # windscreen
    b.quad((wr, sh, belt), (wr, -sh, belt), (tr, ry, roof), (tr, -ry, roof), glass_fn(0.06, 0.06))  # rear window
    for side in (-1, 1):
        a, c_ = (wr, wf) if side < 0 else (wf, wr)
        ta, tb = (tr, tf) if side < 0 else (tf, tr)

        def side_fn(s, t, pts, n):
            col = glass_fn(0.05, 0.12)(s, t, pts, n)
            b_pillar = np.abs(pts[:, 0] - 0.5 * (wf + wr) + 0.05) < 0.06
            col[b_pillar] = paint * 0.85
            return col

        b.quad((a, side * sh, belt), (c_, side * sh, belt), (ta, side * ry, roof), (tb, side * ry, roof), side_fn)
    b.quad((tr, -ry, roof), (tf, -ry, roof), (tr, ry, roof), (tf, ry, roof), paint_fn)  # roof
    # wheels: tyre with a rim, in the arches
    for x in (0.3 * length, -0.3 * length):
        for side in (-1, 1):
            centre = (x, side * (hy - 0.11), wheel_r)

            def wheel_fn(r, pts, n):
                c = np.tile(RUBBER, (len(pts), 1))
                c[r < 0.62] = [0.55, 0.56, 0.58]
                c[r < 0.2] = [0.3, 0.3, 0.32]
                return c

            b.cylinder(centre, (0.0, 1.0, 0.0), wheel_r, 0.22, wheel_fn, spacing=0.06)


def _truck(b: _Builder, size, rng) -> None:
    length, width, height = size
    paint = _paint(rng)
    hx, hy = length / 2, width / 2
    wheel_r = min(0.5, 0.15 * height)
    cab = 0.25 * length
    floor = wheel_r * 1.3

    def cab_fn(s, t, pts, n):
        c = np.tile(paint, (len(pts), 1))
        front = n[:, 0] > 0.5 if n.ndim > 1 else np.full(len(pts), n[0] > 0.5)
        screen = (pts[:, 2] > 0.6 * height) & (pts[:, 2] < 0.92 * height)
        c[screen & (front | (np.abs(pts[:, 0] - (hx - cab * 0.4)) < cab * 0.3))] = GLASS + 0.05
        lamp = front & (np.abs(np.abs(pts[:, 1]) - 0.8 * hy) < 0.12) & (np.abs(pts[:, 2] - floor - 0.3) < 0.08)
        c[lamp] = [0.92, 0.92, 0.85]
        c[pts[:, 2] < floor + 0.15] = [0.12, 0.12, 0.13]
        return c

    box_colour = np.array([0.82, 0.82, 0.8]) * rng.uniform(0.85, 1.05)

    def box_fn(s, t, pts, n):
        c = np.tile(box_colour, (len(pts), 1))
        ribs = (np.mod(pts[:, 0], 0.6) < 0.05)
        c[ribs] *= 0.85
        rear = (n[:, 0] < -0.5) if n.ndim > 1 else np.full(len(pts), n[0] < -0.5)
        c[rear & (np.abs(np.abs(pts[:, 1]) - 0.85 * hy) < 0.1) & (pts[:, 2] < floor + 0.25)] = [0.7, 0.05, 0.04]
        return c

    b.box((hx - cab, -hy, floor), (hx, hy, height), cab_fn, skip=("-z",))
    b.box((-hx, -hy, floor), (hx - cab - 0.15, hy, height - 0.05), box_fn, skip=("-z",))
    b.box((-hx + 0.3, -hy + 0.2, wheel_r * 0.6), (hx - 0.2, hy - 0.2, floor),
          lambda s, t, p, n: np.tile([0.08, 0.08, 0.09], (len(p), 1)), spacing=2 * b.spacing)
    for x in (hx - cab * 0.5, -hx + 1.2, -hx + 2.3):
        for side in (-1, 1):
            b.cylinder((x, side * (hy - 0.16), wheel_r), (0.0, 1.0, 0.0), wheel_r, 0.3,
                       lambda r, p, n: np.where((r < 0.6)[:, None], [0.5, 0.5, 0.52], RUBBER), spacing=0.08)


def _person(b: _Builder, height: float, rng, z0: float = 0.0, seated: bool = False) -> None:
    """A person standing (or seated: legs forward) on z0, facing +x, height m tall."""
    skin = np.array([0.85, 0.66, 0.52]) * rng.uniform(0.35, 1.05)
    top = np.array(_TOPS[int(rng.integers(len(_TOPS)))]) * rng.uniform(0.85, 1.1)
    bottom = np.array(_BOTTOMS[int(rng.integers(len(_BOTTOMS)))]) * rng.uniform(0.85, 1.1)
    hair = np.array(_HAIR[int(rng.integers(len(_HAIR)))])
    shoes = np.array([0.06, 0.05, 0.05]) if rng.random() < 0.7 else np.array([0.85, 0.85, 0.85])
    h = height
    sp = 0.045

    def flat(c):
        return lambda *args: np.tile(np.clip(c, 0, 1), (len(args[-2]), 1))

    leg_top = 0.47 * h
    hip_w = 0.09 * h / 1.75
    for side in (-1, 1):
        if seated:
            b.cylinder((0.12, side * hip_w, z0 + 0.02), (1.0, 0.0, 0.0), 0.065, 0.3, flat(bottom), spacing=sp)
            b.cylinder((0.27, side * hip_w, z0 - 0.2), (0.0, 0.0, 1.0), 0.055, 0.42, flat(bottom), spacing=sp)
        else:
            b.cylinder((0.0, side * hip_w, leg_top / 2 + z0 + 0.04), (0.0, 0.0, 1.0), 0.068 * h / 1.75,
                       leg_top - 0.06, flat(bottom), spacing=sp)
            b.box((-0.05, side * hip_w - 0.045, z0), (0.16, side * hip_w + 0.045, z0 + 0.07), flat(shoes),
                  spacing=0.04)
    torso_lo, torso_hi = leg_top, 0.81 * h
    if seated:
        torso_lo, torso_hi = 0.0, torso_hi - leg_top
    b.ellipsoid((0.0, 0.0, z0 + (torso_lo + torso_hi) / 2), (0.11 * h / 1.75, 0.19 * h / 1.75, (torso_hi - torso_lo) / 2 + 0.03),
                flat(top), spacing=sp)
    shoulder = z0 + torso_hi - 0.05
    for side in (-1, 1):
        arm_len = 0.3 * h
        b.cylinder((0.0, side * 0.215 * h / 1.75, shoulder - arm_len / 2), (0.0, 0.0, 1.0), 0.045, arm_len,
                   flat(top), spacing=sp, caps=False)
        b.ellipsoid((0.0, side * 0.215 * h / 1.75, shoulder - arm_len - 0.04), (0.04, 0.03, 0.06), flat(skin),
                    spacing=0.03)
    neck = z0 + torso_hi + 0.03
    b.cylinder((0.0, 0.0, neck), (0.0, 0.0, 1.0), 0.05, 0.07, flat(skin), spacing=0.03, caps=False)
    head_r = 0.065 * h
    head_c = (0.0, 0.0, z0 + (h if not seated else h - leg_top) - head_r * 1.05)

    def head_fn(pts, n):
        c = np.tile(skin, (len(pts), 1))
        c[(n[:, 2] > 0.25) | (n[:, 0] < -0.35)] = hair  # hair on top and at the back
        return c

    b.ellipsoid(head_c, (0.85 * head_r, 0.75 * head_r, head_r), head_fn, spacing=0.03)


def _bicycle(b: _Builder, length: float, rng) -> None:
    frame = np.array(_TOPS[int(rng.integers(len(_TOPS)))])
    wheel_r = 0.34
    for x in (length / 2 - wheel_r - 0.02, -length / 2 + wheel_r + 0.02):
        phi = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        pts = np.stack([x + wheel_r * np.cos(phi), np.zeros_like(phi), wheel_r + wheel_r * np.sin(phi)], 1)
        tang = np.stack([-np.sin(phi), np.zeros_like(phi), np.cos(phi)], 1)
        normal = np.stack([np.cos(phi), np.zeros_like(phi), np.sin(phi)], 1)
        b.add(pts, normal, tang, RUBBER, 0.05)
        for a in np.linspace(0, math.pi, 6, endpoint=False):  # spokes
            s = np.linspace(-wheel_r * 0.9, wheel_r * 0.9, 10)
            sp = np.stack([x + s * math.cos(a), np.zeros_like(s), wheel_r + s * math.sin(a)], 1)
            b.add(sp, (0.0, 1.0, 0.0), (math.cos(a), 0.0, math.sin(a)), (0.6, 0.6, 0.62), 0.02)
    rear, front = -length / 2 + wheel_r + 0.02, length / 2 - wheel_r - 0.02
    tubes = [((rear, wheel_r), (0.0, wheel_r + 0.05)), ((0.0, wheel_r + 0.05), (front - 0.12, wheel_r + 0.5)),
             ((rear, wheel_r), (-0.12, wheel_r + 0.45)), ((-0.12, wheel_r + 0.45), (front - 0.12, wheel_r + 0.5)),
             ((0.0, wheel_r + 0.05), (-0.12, wheel_r + 0.45)), ((front, wheel_r), (front - 0.12, wheel_r + 0.55))]
    for (x0, z0), (x1, z1) in tubes:
        s = np.linspace(0, 1, max(3, int(math.hypot(x1 - x0, z1 - z0) / 0.04)))
        pts = np.stack([x0 + s * (x1 - x0), np.zeros_like(s), z0 + s * (z1 - z0)], 1)
        d = np.array([x1 - x0, 0.0, z1 - z0])
        d /= np.linalg.norm(d)
        b.add(pts, (0.0, 1.0, 0.0), d, frame, 0.035)


def make_asset(kind: str, *, instance_id: int, size_m: tuple[float, float, float] | None = None,
               seed: int = 0, density_per_m2: float = GAUSSIANS_PER_M2) -> GaussianScene:
    """A procedural, textured Gaussian asset in the agent's local box frame.

    Args:
        kind: car | truck | pedestrian | cyclist.
        instance_id: the agent's id, written to every Gaussian's `instance` (must be > 0).
        size_m: (length, width, height) of the agent's box; the kind's default if None.
        seed: colour seed.
        density_per_m2: Gaussians per square metre of large surfaces (bodies); small parts are finer.
    Returns:
        GaussianScene (SH degree 0), label = the kind's CARLA class; every mean lies inside the box.
    """
    if kind not in AGENT_KINDS:
        raise ValueError(f"unknown agent kind {kind!r}; choose from {sorted(AGENT_KINDS)}")
    if instance_id <= 0:
        raise ValueError(f"make_asset: instance_id must be > 0 (0 is the background), got {instance_id}")
    label, default_size = AGENT_KINDS[kind]
    size = tuple(float(v) for v in (size_m or default_size))
    if len(size) != 3 or not all(math.isfinite(v) and v > 0 for v in size):
        raise ValueError(f"make_asset: size_m must be 3 positive numbers, got {size_m}")
    rng = np.random.default_rng(seed)
    b = _Builder(rng, density_per_m2)
    length, width, height = size
    if kind == "car":
        _car(b, size, rng)
    elif kind == "truck":
        _truck(b, size, rng)
    elif kind == "pedestrian":
        _person(b, height, rng)
    else:
        _bicycle(b, length, rng)
        _person(b, height - 0.55, rng, z0=0.62, seated=True)
    scene = b.scene(int(label), instance_id)
    # every mean inside the agent's box (the box is what the simulator collides and the labels promise)
    half = np.array([length / 2, width / 2])
    means = scene.means.astype(np.float64)
    means[:, :2] = np.clip(means[:, :2], -half, half)
    means[:, 2] = np.clip(means[:, 2], 0.0, height)
    return scene.replace(means=means.astype(np.float32))


def compose(background: GaussianScene, agents: list[tuple[GaussianScene, np.ndarray]]) -> list:
    """The scene of one tick: the background and each agent asset placed at its pose.

    Nothing is copied: the background is passed through and each agent becomes a
    PlacedScene (asset + pose); the CPU renderer folds the pose into its view
    transform, other backends materialise it.

    Args:
        background: static scene (world frame).
        agents: (asset in its local box frame, pose_agent_to_world [4, 4]) per agent.
    Returns:
        [background, PlacedScene(agent 1), ...]: parts for render().
    """
    return [background] + [PlacedScene(asset, pose) for asset, pose in agents]
