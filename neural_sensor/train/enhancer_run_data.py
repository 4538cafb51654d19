"""The enhancer's training data in the run's regime: frames and frame pairs of generated worlds.

Data (what a run feeds the enhancer): for each training world (seeds 0..9999, the
layouts of `synthetic.world_layout`, built by the textured builder at the runner's voxel
size) the drive along its recorded lane is reconstructed exactly as `--scene
reconstruction` does (`reconstructed_scene`: drive log every 4 m, six cameras, the
shipped reconstructor, cached), and the six-camera rig renders it at 480x270 at random
stations of the drive, on the recorded path or shifted 0.5-3 m to its left. Each frame
keeps the raw render (rgb, depth, alpha) and the builder's render at the same pose
(rgb, depth, alpha), and the reference the rig sends with it: the drive log's REFERENCE_VIEWS nearest
images of that camera warped in through the render's median depth and blended by distance, the other cameras'
views filling what those miss (`enhance.log_warp`; the log is kept with the reconstruction, `reconstruct.reference`). Frames are stored per world under `--data` (a folder per
reconstructor checkpoint hash and data version; existing worlds are reused, so
generation resumes).

Frame pairs (`world_pairs`): the same cameras PAIR_STEP_M apart along the drive, each pixel of the later frame
knowing where its surface point lies in the earlier one (the temporal term of `train_enhancer_run`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from neural_sensor.render.upsample import RECONSTRUCTION_SCALE
from neural_sensor.train.state import load_or_make_npz
from neural_sensor.train.synthetic import check_split, recorded_lane_xy_m, world_layout

DATA_VERSION = "run-v14"  # bump when the stored frame fields or their making change (v2: colour-refined
#   reconstructions; v3: the log reference; v4: the log views blended by distance; v5: the drive recorded at
#   320x192, the network reading it at 160x96 and the reference keeping 320x192; v6: the network's depths refined
#   photometrically before the fusion, reconstruct/photometric.py; v7: the reference's per-view depths rendered at
#   reference.REFERENCE_LOD_PX, so that frames made before and after never mix; v8: the fusion's carve_tol 0.1,
#   fuse.FUSION_VERSION 3; v9: the other sensors' log views fill what a camera's own do not see, log_warp.fallback_view_weights;
#   v10: three views per sensor; v11: the depth refinement's far sweep, photometric.DepthRefineConfig.far_from_m;
#   v12: the reconstruction drawn at half the cameras' size and upsampled, as the run draws it, RENDER_SCALE; v13: the
#   intersection worlds' buildings kept off the crossing road, layout.roadside_objects' keep_clear_xy_m; v14: a pixel
#   is sky where the sky logit exceeds model.SKY_LOGIT_THRESHOLD, 1, not 0)
REFERENCE_VIEWS = 3  # log views per sensor warped into each camera (stage 14 on; 2 until stage 13: its CARD); the
#   checkpoint's config.json says it, the server's hello passes it on and the rig sends that many
RENDER_SCALE = RECONSTRUCTION_SCALE  # the reconstruction drawn at this fraction of the rig's size, then upsampled
#   (render(scale=)), as a run draws it since 2026-12-05 (fifth session); the ground truth at full size
PAIR_STEP_M = 0.5  # metres between the two frames of a temporal pair (the run-regime benchmark's clip step)
RUN_SIZE = (480, 270)  # the rig's size in a run (nuscenes_like_rig's default)
VOXEL_M = 0.3  # the runner's voxel size (Scenario.voxel_m's default)
SHIFTS_M = (0.0, 0.0, 0.5, 1.0, 2.0, 3.0)  # drawn uniformly: a third of the frames on the recorded path
END_MARGIN_M = 10.0



def world_frames(seed: int, split: str, ticks: int, recon_folder: Path,
                 cache_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Frames of one world in the run's regime (see the module docstring); deterministic per seed.

    Returns uint8 rgb / truth / reference [F, H, W, 3], float16 depth / truth_depth [F, H, W] (metres), uint8
    alpha / truth_alpha [F, H, W] (x 255), bool reference_valid [F, H, W] and float32 shift_m [F], for F = ticks x
    6 frames at 480x270.
    """
    from neural_sensor.render import render
    from neural_sensor.rig import rig_cameras_on_path

    path, scene, truth, background, specs, reference = _world_scenes(seed, split, recon_folder, cache_dir)
    rng = np.random.default_rng(seed + 4242)
    out: dict[str, list] = {k: [] for k in (*FRAME_FIELDS, "shift_m")}
    for _ in range(ticks):
        s_m = float(rng.uniform(END_MARGIN_M, max(END_MARGIN_M + 1e-3, path.length_m - END_MARGIN_M)))
        shift = float(rng.choice(SHIFTS_M))
        cams = rig_cameras_on_path(specs, path, s_m, shift)
        raw = render(scene, cams, backend="cpu", outputs=("rgb", "depth", "alpha", "median_depth"),
                     background=background, scale=RENDER_SCALE)
        gt = render(truth, cams, backend="cpu", outputs=("rgb", "depth", "alpha"), background=background)
        _store_frames(out, "", raw, gt, reference.warp([s.sensor_id for s in specs], cams, raw.median_depth, raw.alpha,
                                                       REFERENCE_VIEWS))
        out["shift_m"].append(np.full(len(cams), shift, np.float32))
    return {k: np.concatenate(v) for k, v in out.items()}


def world_pairs(seed: int, split: str, pairs: int, recon_folder: Path,
                cache_dir: Path | None = None) -> dict[str, np.ndarray]:
    """Consecutive frame pairs of one world in the run's regime; deterministic per seed.

    Each pose (a station of the recorded lane, on it or shifted as SHIFTS_M) gives six frames and the same
    cameras PAIR_STEP_M further on. Returns the `world_frames` fields of both (the earlier frames' with a
    "prev_" prefix), F = pairs x 6, and source [F, H, W] int32: for each surface pixel of the later frame (ground
    truth alpha > 0.5, not sky) its flat index in the earlier frame (`warp.source_pixels` through the
    ground-truth median depths and poses), -1 where the earlier frame does not see it.
    """
    from neural_sensor.enhance.warp import source_pixels
    from neural_sensor.labels import CityObjectLabel
    from neural_sensor.render import render
    from neural_sensor.rig import rig_cameras_on_path

    path, scene, truth, background, specs, reference = _world_scenes(seed, split, recon_folder, cache_dir)
    rng = np.random.default_rng(seed + 7373)
    out: dict[str, list] = {k: [] for k in (*FRAME_FIELDS, *(f"prev_{k}" for k in FRAME_FIELDS), "source",
                                            "shift_m")}
    for _ in range(pairs):
        s_m = float(rng.uniform(END_MARGIN_M, max(END_MARGIN_M + 1e-3, path.length_m - END_MARGIN_M - PAIR_STEP_M)))
        shift = float(rng.choice(SHIFTS_M))
        views = []
        for prefix, station in (("prev_", s_m), ("", s_m + PAIR_STEP_M)):
            cams = rig_cameras_on_path(specs, path, station, shift)
            raw = render(scene, cams, backend="cpu", outputs=("rgb", "depth", "alpha", "median_depth"),
                         background=background, scale=RENDER_SCALE)
            gt = render(truth, cams, backend="cpu", outputs=("rgb", "depth", "alpha", "semantic", "median_depth"),
                        background=background)
            _store_frames(out, prefix, raw, gt, reference.warp([s.sensor_id for s in specs], cams, raw.median_depth,
                                                               raw.alpha, REFERENCE_VIEWS))
            views.append((cams, gt))
        (cams0, gt0), (cams1, gt1) = views
        surface = (gt1.alpha > 0.5) & (gt1.semantic != CityObjectLabel.SKY)
        out["source"].append(np.stack([
            source_pixels(cams1[i], gt1.median_depth[i], np.where(surface[i], gt1.alpha[i], 0.0), cams0[i],
                          gt0.median_depth[i]) for i in range(len(cams1))]).astype(np.int32))
        out["shift_m"].append(np.full(len(cams1), shift, np.float32))
    return {k: np.concatenate(v) for k, v in out.items()}


# a stored frame: render, truth, and the render's log reference
FRAME_FIELDS = ("rgb", "depth", "alpha", "truth", "truth_depth", "truth_alpha", "reference", "reference_valid")


def _world_scenes(seed: int, split: str, recon_folder: Path, cache_dir: Path | None):
    """(recorded lane as a scene.path.Path, its reconstruction as a run makes it, the builder's scene, the sky
    colour, the run's rig specs, the reconstruction's LogReference) of training / held-out world `seed`."""
    from neural_sensor.reconstruct.drive import reconstructed_scene, scene_reference
    from neural_sensor.rig import nuscenes_like_rig
    from neural_sensor.scene.build import build_scene
    from neural_sensor.scene.path import Path as Polyline
    from neural_sensor.scene.to_gaussians import sky_rgb

    check_split(seed, split)
    layout = world_layout(seed)
    lane = recorded_lane_xy_m(layout)
    scene, meta = reconstructed_scene(layout, lane, checkpoint=recon_folder, voxel_m=VOXEL_M, cache_dir=cache_dir)
    truth, _ = build_scene(layout, voxel_m=VOXEL_M, cache_dir=cache_dir)
    return (Polyline(lane), scene, truth, sky_rgb(layout.style), nuscenes_like_rig(*RUN_SIZE),
            scene_reference(meta))


def _store_frames(out: dict[str, list], prefix: str, raw, gt, reference: tuple[np.ndarray, np.ndarray]) -> None:
    """Append a tick's raw render, ground truth (RenderOutputs) and log reference (rgb [C, H, W, 3], valid [C, H,
    W]) to out[prefix + field] as stored: uint8 images and alphas, float16 depths, bool validity."""
    out[f"{prefix}rgb"].append(_u8(raw.rgb))
    out[f"{prefix}depth"].append(raw.depth.astype(np.float16))
    out[f"{prefix}alpha"].append(_u8(raw.alpha))
    out[f"{prefix}truth"].append(_u8(gt.rgb))
    out[f"{prefix}truth_depth"].append(np.minimum(gt.depth, 6.0e4).astype(np.float16))
    out[f"{prefix}truth_alpha"].append(_u8(gt.alpha))
    out[f"{prefix}reference"].append(reference[0])  # LogReference.warp's uint8, as stored
    out[f"{prefix}reference_valid"].append(reference[1])


def _u8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def _world_file(folder: Path, seed: int, split: str, ticks: int, recon_folder: Path,
                cache_dir: Path | None) -> dict[str, np.ndarray]:
    """One world's frames from `folder` if written before (with as many ticks), else made and written atomically."""
    return load_or_make_npz(folder / f"world-{seed}-t{ticks}.npz",
                            lambda: world_frames(seed, split, ticks, recon_folder, cache_dir))


def data_folder(data_root: Path, recon_folder: Path) -> Path:
    """Where the frames made with the reconstructor at `recon_folder` live."""
    from neural_sensor.reconstruct.model import checkpoint_hash

    return Path(data_root) / f"{checkpoint_hash(recon_folder)}-{DATA_VERSION}"


def load_frames(data_root: Path, recon_folder: Path, seeds, split: str, ticks: int,
                cache_dir: Path | None = None, keep: bool = True) -> dict[str, np.ndarray] | None:
    """Frames of `seeds`, made where missing (progress bar over worlds); keep=False: only made, None returned."""
    return _load_worlds(data_root, recon_folder, seeds, f"enhancer frames ({split})",
                        lambda folder, seed: _world_file(folder, seed, split, ticks, recon_folder, cache_dir), keep)


def _load_worlds(data_root: Path, recon_folder: Path, seeds, what: str, load,
                 keep: bool = True) -> dict[str, np.ndarray] | None:
    """load(folder, seed) -> arrays of each seed (the data folder of `recon_folder` made first), concatenated; with
    keep=False each seed's file is only made where missing (nothing is held: `--data-only`) and None is returned.
    The concatenation goes one array name at a time, each seed's copy dropped as it is joined, so loading holds
    the data about once (96 worlds of frame pairs are ~11 GB)."""
    folder = data_folder(data_root, recon_folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for seed in tqdm(list(seeds), desc=what, unit="world"):
        arrays = load(folder, seed)
        if keep:
            shards.append(arrays)
    if not keep:
        return None
    return {k: np.concatenate([s.pop(k) for s in shards]) for k in list(shards[0])}


def load_pairs(data_root: Path, recon_folder: Path, seeds, split: str, pairs: int,
               cache_dir: Path | None = None, keep: bool = True) -> dict[str, np.ndarray] | None:
    """Frame pairs (`world_pairs`) of `seeds`, made where missing (progress bar over worlds); keep=False: only
    made, None returned."""
    return _load_worlds(data_root, recon_folder, seeds, f"enhancer frame pairs ({split})",
                        lambda folder, seed: load_or_make_npz(
                            folder / f"pairs-{seed}-p{pairs}.npz",
                            lambda: world_pairs(seed, split, pairs, recon_folder, cache_dir)), keep)
