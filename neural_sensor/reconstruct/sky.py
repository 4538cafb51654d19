"""The reconstruction's sky: a far dome coloured from the drive's own sky pixels.

A feed-forward reconstructor that puts every pixel at a predicted depth puts the sky at
some tens of metres: seen from another pose, those Gaussians move with parallax and hang
in front of distant buildings as haze (in the run regime the sky scored about 16 dB). A
reconstructor trained with a sky output (`ReconConfig.sky_head`: its semantic head's SKY
logit, supervised with the ground-truth sky) lets `reconstruct` replace those pixels:

1. every view's sky pixels (SKY logit > 0) get no Gaussian, and their depth for the
   cross-view carving is the dome's distance (a sky pixel sees empty space all the way);
2. `fit_sky_dome` builds the same dome the builder draws (`scene.light.dome_geometry`:
   rings of large flat Gaussians at SKY_RADIUS_M around the drive's centre) and gives each
   dome Gaussian the mean colour of the sky pixels whose rays meet the dome nearest to it
   (rays intersected with the dome's sphere, so the parallax of a long drive is exact);
   dome Gaussians no ray reached take the colour of the nearest one that was reached; a few
   rounds of rendering the dome at the views and adding each Gaussian's mean residual undo
   the smoothing of the overlapping Gaussians (tests/test_sky.py's dome seen from a new pose: 28.5 dB
   from the plain means, 53.5 dB after 3 rounds).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from neural_sensor.camera import Camera
from neural_sensor.gaussians import GaussianScene
from neural_sensor.labels import CityObjectLabel
from neural_sensor.scene.light import SKY_RADIUS_M, dome_geometry

SKY_DEPTH_M = SKY_RADIUS_M  # depth given to sky pixels for the carving
DOME_OPACITY = 0.99


def without_sky(opacities: np.ndarray, depths: np.ndarray, sky: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fusion inputs where sky pixels get no Gaussian: opacities [V * h * w] zeroed there, and depths [V, h, w]
    set to SKY_DEPTH_M there (the carving then treats those rays as empty up to the dome); sky [V, h, w] bool."""
    assert sky.shape == depths.shape and opacities.shape == (sky.size,), (sky.shape, depths.shape, opacities.shape)
    return (np.where(sky.reshape(-1), 0.0, opacities).astype(np.float32),
            np.where(sky, SKY_DEPTH_M, depths).astype(np.float32))


def sky_ray_directions(cameras: list[Camera], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per view and pixel of an h x w grid (pixel centres at integer + 0.5): world unit ray directions
    [V, h, w, 3] and camera centres [V, 3] (float64)."""
    ys, xs = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    out = np.empty((len(cameras), height, width, 3))
    for i, cam in enumerate(cameras):
        fx, fy = cam.K[0, 0] * width / cam.width, cam.K[1, 1] * height / cam.height
        cx, cy = cam.K[0, 2] * width / cam.width, cam.K[1, 2] * height / cam.height
        d = np.stack([(xs - cx) / fx, (ys - cy) / fy, np.ones_like(xs)], axis=-1)
        d = d @ cam.pose_camera_to_world[:3, :3].T
        out[i] = d / np.linalg.norm(d, axis=-1, keepdims=True)
    return out, np.stack([c.position_world for c in cameras]).astype(np.float64)


def fit_sky_dome(images: np.ndarray, sky: np.ndarray, cameras: list[Camera], *,
                 refine_steps: int = 3) -> GaussianScene | None:
    """A sky dome coloured from the views' sky pixels (see the module docstring); None when no pixel is sky.

    Args:
        images: [V, h, w, 3] float RGB in [0, 1] at the sky mask's resolution.
        sky: [V, h, w] bool, the pixels that see sky.
        cameras: V Cameras of those views (any resolution with the same aspect; intrinsics are rescaled).
        refine_steps: rounds of rendering the dome at the views and adding each Gaussian's mean residual over its
            pixels to its colour (overlapping dome Gaussians blend, so plain means come out smoothed).
    Returns:
        GaussianScene of the dome (label SKY), centred on the cameras' mean ground position.
    """
    images = np.asarray(images, dtype=np.float32)
    sky = np.asarray(sky, dtype=bool)
    assert images.ndim == 4 and images.shape[-1] == 3, images.shape
    assert sky.shape == images.shape[:3] and len(cameras) == len(images), (sky.shape, images.shape, len(cameras))
    if not sky.any():
        return None
    v, h, w = sky.shape
    rays, centres = sky_ray_directions(cameras, h, w)
    centre_xy = centres[:, :2].mean(axis=0)
    dome = dome_geometry(centre_xy)
    dome_centre = np.array([centre_xy[0], centre_xy[1], 0.0])
    directions = -dome["normals"]  # [M, 3] unit, from the dome's centre outwards
    view_of_pixel = np.broadcast_to(np.arange(v)[:, None, None], sky.shape)[sky]
    d = rays[sky]  # [P, 3]
    offset = centres[view_of_pixel] - dome_centre  # camera centre relative to the dome's centre
    b = np.einsum("pi,pi->p", d, offset)
    t = -b + np.sqrt(np.maximum(b * b - (np.einsum("pi,pi->p", offset, offset) - SKY_RADIUS_M ** 2), 0.0))
    hit = (offset + t[:, None] * d) / SKY_RADIUS_M
    # the dome Gaussian of largest cosine = the nearest on the unit sphere (both unit vectors): a k-d tree instead of
    # the [P, M] cosines (the demo drive's sky pixels: ~0.5 s -> ~0.05 s, the same Gaussians but for exact ties)
    nearest = cKDTree(directions).query(hit, workers=-1)[1]
    counts = np.bincount(nearest, minlength=len(directions)).astype(np.float64)
    colours = np.stack([np.bincount(nearest, weights=images[sky][:, c], minlength=len(directions))
                        for c in range(3)], axis=1)
    seen = counts > 0
    colours[seen] /= counts[seen, None]
    nearest_seen = None
    if not seen.all():  # unreached dome Gaussians: the colour of the nearest reached one
        nearest_seen = np.flatnonzero(seen)[np.argmax(directions[~seen] @ directions[seen].T, axis=1)]
        colours[~seen] = colours[nearest_seen]
    n = len(directions)

    def scene(rgb: np.ndarray) -> GaussianScene:
        return GaussianScene.from_colors(dome["means"].astype(np.float32), dome["quats"].astype(np.float32),
                                         dome["scales"].astype(np.float32), np.full(n, DOME_OPACITY, np.float32),
                                         np.clip(rgb, 0, 1).astype(np.float32),
                                         np.full(n, int(CityObjectLabel.SKY), np.uint8), np.zeros(n, np.int32))

    if refine_steps > 0:
        from neural_sensor.render import render

        small = [Camera(w, h, _scaled_K(c, w, h), c.pose_camera_to_world) for c in cameras]
        observed = images[sky]
        for _ in range(refine_steps):
            drawn = render(scene(colours), small, backend="cpu", outputs=("rgb",), background=(0.0, 0.0, 0.0)).rgb
            residual = observed - drawn[sky]
            for c in range(3):
                colours[seen, c] += (np.bincount(nearest, weights=residual[:, c], minlength=n)[seen] / counts[seen])
            colours = np.clip(colours, 0, 1)
            if not seen.all():
                colours[~seen] = colours[nearest_seen]
    return scene(colours)


def _scaled_K(cam: Camera, width: int, height: int) -> np.ndarray:
    K = cam.K.astype(np.float64).copy()
    K[0] *= width / cam.width
    K[1] *= height / cam.height
    return K
