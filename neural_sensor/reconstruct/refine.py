"""Test-time colour refinement: fit a fused scene's colours to the drive log's own images.

The network predicts each Gaussian's colour from one view; fusion then blends many
views' Gaussians, so a pixel of a recorded image is rarely reproduced by the render.
With geometry and opacities held fixed the render is linear in the Gaussians'
(view-independent) colours, rgb_p = sum_i w_ip c_i + T_p bg, so fitting them to the
log's images is a linear least-squares problem. `refine_colours` runs a few sweeps of
a Jacobi-style iteration on it:

    c_i <- c_i + step * sum_p w_ip (image_p - rgb_p) / sum_p w_ip

over every pixel p of every recorded view, i.e. each Gaussian moves to the blend
weighted mean of the residuals it contributes to (sum_i w_ip <= 1 at a pixel, so a
step of 1 cannot overshoot a pixel on its own). `backproject_colour_residuals`
(render/backproject.py, numba; torch-autograd twin in render/_torch_ref.py) renders a view and
shares its residual out in the same pass. Only the degree-0 colour changes; higher
SH bands, geometry and opacities are untouched, and a moved colour stays in [0, 1].
Gaussians that no recorded pixel weighs more than `min_weight` keep their colour.

Level of detail: the views are rendered as the run renders a reconstruction, far groups of neighbours drawn as
their merged Gaussian (`lod_px`), each member handed its share of the merge's residual (the chain rule through
the merge). On the demo drive (306 views, 478k Gaussians before pruning) the refinement takes 20.0 s instead of
26.7 s (AMD EPYC, 2 threads, one process); on three held-out worlds the raw rig PSNR at 480x270 (0 and 2 m) moved
by at most 0.01 dB (docs/results.md, "2026-12-01 (night)").

Pruning: after the first sweep, Gaussians whose blending weight summed over every pixel of
every recorded view is below `prune_weight` are dropped, so the refined scene can have fewer
Gaussians than the input (31 % fewer on the demo drive, its views read at 160x96 every 4 m). The threshold
is in pixels of the log's images: a log of few or small images weighs every Gaussian less, so
the same threshold prunes more of it (set prune_weight=0 for such logs).

Sky pruning: given the views' sky masks (the reconstructor's sky output), the same first sweep also
measures how much of each Gaussian's weight falls on pixels that see sky, and drops the Gaussians
(other than the sky dome's) that lie more than `sky_prune_fraction` on sky: halos of coarse Gaussians
around roofs and tree tops, and floaters, that hang in front of the dome when seen from another pose
(chosen on 3 held-out worlds, six cameras at 480x270: sky pixels +0.1-0.9 dB, overall +0.0-0.26 dB; on the
run-regime benchmark's 6 worlds: sky pixels +0.2 dB, mean PSNR +0.03-0.06 dB at 0-3 m, the median on path
0.05 dB down and the worst world-camera mean 19.34 -> 19.28 dB).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from neural_sensor.camera import Camera
from neural_sensor.gaussians import GaussianScene
from neural_sensor.labels import CityObjectLabel
from neural_sensor.render._common import SKY_RGB, check_background, stack_cameras
from neural_sensor.sh import SH_C0


@dataclass(frozen=True)
class RefineConfig:
    """Options of `refine_colours`."""

    iterations: int = 2  # sweeps over every recorded view (0: no refinement)
    step: float = 1.5  # multiple of the weighted-mean residual applied per sweep (over-relaxed: measured better than 1)
    min_weight: float = 0.05  # a Gaussian's summed blending weight (pixels) below which its colour is kept
    views_per_batch: int = 60  # views rendered per call (the per-Gaussian buffers are allocated once per call)
    report_final: bool = False  # one more render pass to report the PSNR after the last sweep
    prune_weight: float = 1.0  # after the first sweep, drop Gaussians whose summed blending weight over every
    #   recorded pixel is below this (pixels of the log's images, so it prunes more of a small log; 0: keep all)
    sky_prune_fraction: float = 0.3  # ... and, given sky masks, those (the sky dome's aside) with more than this
    #   fraction of their weight on sky pixels (1: keep all)
    lod_px: float = 1.5  # the level of detail the views are rendered at (pixels of the images refined against: 160
    #   wide for a generated drive and, by default, any wider log; 0: exact): a far group is drawn as its merged
    #   Gaussian and its members share its residual (backproject_colour_residuals), so the summed weights of
    #   min_weight / prune_weight count a member's share of its merge's; 1.5 px of a 160x96 view is 4.5 px at
    #   480x270, about the run's RECONSTRUCTION_LOD_PX of 5

    def __post_init__(self) -> None:
        if (self.iterations < 0 or not 0.0 < self.step <= 2.0 or self.min_weight < 0 or self.views_per_batch < 1
                or self.prune_weight < 0 or not 0.0 <= self.sky_prune_fraction <= 1.0
                or not (isinstance(self.lod_px, (int, float, np.number)) and np.isfinite(self.lod_px)
                        and self.lod_px >= 0)):
            raise ValueError(f"RefineConfig: need iterations >= 0, 0 < step <= 2, min_weight >= 0, views_per_batch >= 1, "
                             f"prune_weight >= 0, 0 <= sky_prune_fraction <= 1 and lod_px >= 0, got {self}")

    def cache_inputs(self) -> dict:
        """What a cached reconstruction's key records of the refinement (nothing when it is off)."""
        if self.iterations == 0:
            return {}
        inputs = {"iterations": self.iterations, "step": self.step, "min_weight": self.min_weight,
                  "prune_weight": self.prune_weight, "sky_prune_fraction": self.sky_prune_fraction}
        if self.lod_px > 0:
            inputs["lod_px"] = self.lod_px
        return {"colour_refinement": inputs}


DEFAULT_REFINE = RefineConfig()


def refine_config(iterations: int | None = None) -> RefineConfig:
    """The refinement a `--refine-iterations N` option asks for: None = DEFAULT_REFINE, 0 = none (no pruning
    either: pruning happens inside a sweep), N > 0 = the default with N sweeps."""
    if iterations is None:
        return DEFAULT_REFINE
    return replace(DEFAULT_REFINE, iterations=iterations, prune_weight=DEFAULT_REFINE.prune_weight if iterations else 0.0)


def refine_colours(scene: GaussianScene, images: np.ndarray, cameras: list[Camera], *,
                   background=SKY_RGB, config: RefineConfig = RefineConfig(), sky_masks: np.ndarray | None = None,
                   progress: bool = False) -> tuple[GaussianScene, dict]:
    """Fit the degree-0 colours of `scene` to posed images (see the module docstring).

    Args:
        scene: N Gaussians, world frame.
        images: [V, H, W, 3] float RGB in [0, 1], the views the scene was reconstructed from.
        cameras: V Cameras of H x W, the images' poses and intrinsics.
        background: [3] the colour the scene is rendered over (the log's sky colour).
        config: RefineConfig.
        sky_masks: optional [V, H, W] bool, the pixels of each view that see sky (for the sky pruning).
    Returns:
        (scene, stats): the scene with refitted colours, without the Gaussians the pruning dropped (so its
        indices do not line up with the input's when any were); stats has "psnr_db": the PSNR of the
        renders against the images before each sweep (and after the last with config.report_final),
        "updated": Gaussians of the result whose colour moved, "pruned": Gaussians dropped, "iterations"
        "pruned_on_sky" (of "pruned") and "seconds".
    """
    images = np.asarray(images, dtype=np.float32)
    v_count = len(cameras)
    assert images.ndim == 4 and images.shape[0] == v_count and images.shape[3] == 3, images.shape
    assert sky_masks is None or np.shape(sky_masks) == images.shape[:3], (np.shape(sky_masks), images.shape)
    if not np.isfinite(images).all():
        raise ValueError("refine_colours: images contain NaN or infinite values")
    bg = check_background(background)
    from neural_sensor.render.backproject import backproject_colour_residuals

    start = time.perf_counter()
    sh = scene.sh.copy()
    colours = scene.colors_dc.astype(np.float64)
    current = scene
    history: list[float] = []
    updated = np.zeros(len(scene), bool)
    kept = np.arange(len(scene))  # indices into `scene` of the Gaussians still in `current`
    pruned_on_sky = 0
    for sweep in range(config.iterations + int(config.report_final)):
        weighted = np.zeros((len(current), 3), np.float64)
        weight = np.zeros(len(current), np.float64)
        on_sky = np.zeros(len(current), np.float64)
        squared_error = 0.0
        for lo in tqdm(range(0, v_count, config.views_per_batch), unit="batch", disable=not progress, leave=False,
                       desc=f"colour refinement {sweep + 1}/{config.iterations + int(config.report_final)}"):
            hi = min(lo + config.views_per_batch, v_count)
            masks = None if sky_masks is None or sweep > 0 else sky_masks[lo:hi]  # the sky pruning is in sweep 0
            wr, w, rgb, s = backproject_colour_residuals(current, stack_cameras(cameras[lo:hi]), images[lo:hi], bg,
                                                         masks, lod_px=config.lod_px)
            weighted += wr
            weight += w
            on_sky += s
            squared_error += float(np.square(rgb.astype(np.float64) - images[lo:hi]).sum())
        history.append(round(float(10.0 * np.log10(images.size / max(squared_error, 1e-12))), 3))
        if sweep == config.iterations:  # the report_final pass: measured, nothing applied
            break
        seen = weight > config.min_weight
        updated[kept[seen]] = True
        # only the colours that move are written: an unseen Gaussian keeps its coefficients bit for bit
        colours[seen] = np.clip(colours[seen] + config.step * weighted[seen] / weight[seen, None], 0.0, 1.0)
        sh[seen, 0, :] = ((colours[seen] - 0.5) / SH_C0).astype(np.float32)
        current = current.replace(sh=sh.copy())
        if sweep == 0 and (config.prune_weight > 0 or (sky_masks is not None and config.sky_prune_fraction < 1)):
            keep = weight >= config.prune_weight
            if sky_masks is not None and config.sky_prune_fraction < 1:
                sky_bound = (on_sky > config.sky_prune_fraction * weight) & (current.labels != CityObjectLabel.SKY)
                pruned_on_sky = int((keep & sky_bound).sum())
                keep &= ~sky_bound
            kept, colours, sh = kept[keep], colours[keep], sh[keep]
            current = current.subset(keep)
    return current, {"psnr_db": history, "updated": int(updated[kept].sum()), "pruned": len(scene) - len(current),
                     "pruned_on_sky": pruned_on_sky, "iterations": config.iterations,
                     "seconds": round(time.perf_counter() - start, 2)}
