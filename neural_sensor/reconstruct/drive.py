"""A scenario's scene as the plugin is meant to get it: reconstructed from a drive log.

Two ways in, one code path (`_reconstruct_log`: read the log -> ReconNet, its depths refined against the
neighbour views (photometric.py), fusion -> colour refinement against the log's images (refine.py) -> scene):
- `reconstructed_scene(layout, path_xy_m, ...)`: the builder's scene stands in for the
  world; `render_drive` renders it with the nuScenes-like rig every `step_m` along the
  path, and the drive log it would make (8-bit images; `RecordedDrive.as_read`) is reconstructed
  from memory (no files: the same scene as `record_drive` + `reconstructed_scene_from_log`). The
  SceneCache key is the layout, the path, the record and network sizes, the voxel size, the log
  format, the checkpoint's hash, the reconstruction code's hash and the network's precision (when bfloat16),
  so a cached scene needs no recording;
- `reconstructed_scene_from_log(folder, ...)`: a drive log from disk (ours or a user's
  car; docs/drive_log.md). Its SceneCache key is the sha256 of its transforms.json and
  image bytes plus the checkpoint's hash, the reconstruction code's hash (`reconstruction_code_hash`,
  so a new fusion never serves an old scene), the resampling size, if any, both refinements' settings and the
  network's precision (when bfloat16). With network_precision "auto" a scene cached in the other precision is
  served as it is (`_get_or_build`).
  A log that names no sky colour is refined over SKY_RGB (the runner then renders it over the scenario's
  sky; the two differ only where the fitted sky dome leaves a gap).

Both keep the log's images, with each view's depth rendered from the reconstruction, in the cache entry
as the enhancer's reference (`reference.LogReference`, `reference.npz`): `scene_reference(meta)` reads it.
The network reads the log at the size it was trained at (160x96, resampled: `size`); the reference keeps the
log's own resolution (at most REFERENCE_MAX_WIDTH wide), since what the network cannot use the enhancer can:
a generated drive is recorded at RECORD_SIZE for that reason (measured: its reference at 320x192 is 1.8 dB
closer to the ground truth on the recorded path than at 160x96, 0.8 dB at 1 m, 0.3 dB at 2 m).

A log whose images are not multiples of 4 on a side is cropped at the right and
bottom to the nearest multiple (the network's stride; the intrinsics stay exact).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from neural_sensor.camera import Camera
from neural_sensor.checkpoints import DEFAULT_RECONSTRUCTOR, checkpoint_problem, default_checkpoint
from neural_sensor.enhance.precision import resolve_cpu_precision
from neural_sensor.gaussians import GaussianScene
from neural_sensor.jit_cache import RECONSTRUCTION_MODULES, announce_compiling
from neural_sensor.render._common import SKY_RGB
from neural_sensor.reconstruct.cache import SceneCache, cache_key
from neural_sensor.reconstruct.log_checks import DriveLogWarning
from neural_sensor.reconstruct.log import (FORMAT_VERSION, NETWORK_STRIDE_PX, drive_log_folder, log_digest,
                                           log_image_sizes, read_drive_log, render_drive, resample_views)
from neural_sensor.reconstruct.model import ReconNet, checkpoint_hash, reconstruct
from neural_sensor.reconstruct.photometric import DEFAULT_DEPTH_REFINE, DepthRefineConfig, depth_refine_inputs
from neural_sensor.reconstruct.reference import FILE_NAME as REFERENCE_FILE
from neural_sensor.reconstruct.reference import LogReference
from neural_sensor.reconstruct.refine import DEFAULT_REFINE, RefineConfig, refine_colours
from neural_sensor.scene.build import build_inputs
from neural_sensor.scene.layout import Layout, marking_cache_inputs
from neural_sensor.scene.path import Path as Polyline

DEFAULT_CHECKPOINT = default_checkpoint(DEFAULT_RECONSTRUCTOR)
NETWORK_SIZE = (160, 96)  # (width, height) the reconstructors were trained at: a generated drive is resampled to it
RECORD_SIZE = (320, 192)  # (width, height) a generated drive is recorded at: the network reads it at NETWORK_SIZE,
#   the enhancer's reference keeps it (twice the network's size: 480x288 measured only 0-0.4 dB better, at 2.25x
#   the reference's bytes)
REFERENCE_MAX_WIDTH = 480  # a log wider than this keeps its reference resampled to this width (the run's rig width)


def reconstruction_code_hash() -> str:
    """sha256 of the reconstruction's code: reconstruct/model.py, photometric.py, fuse.py, sky.py, refine.py,
    reference.py (the stored reference), log.py (reading, rounding and resampling the drive), log_checks.py (the
    log's warnings, which a cached scene says again) and drive.py (which
    wires them), labels.py (the sky label), and the CPU renderer the refinement renders with (render/cpu.py,
    lod.py, backproject.py, _common.py). Part of every reconstruction's
    cache key, so a change to the network's use, the fusion, the refinement or its kernels never serves a
    scene the old code made."""
    import hashlib

    from neural_sensor.reconstruct import model
    from neural_sensor.render import cpu

    files = [Path(model.__file__).with_name(n)
             for n in ("model.py", "photometric.py", "fuse.py", "sky.py", "refine.py", "drive.py", "reference.py",
                       "log.py", "log_checks.py")]
    files += [Path(cpu.__file__).with_name(n) for n in ("cpu.py", "lod.py", "backproject.py", "_common.py")]
    files.append(Path(cpu.__file__).parent.parent / "labels.py")
    digest = hashlib.sha256()
    for path in files:
        if path.exists():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _check_checkpoint(checkpoint: Path | str) -> Path:
    checkpoint = Path(checkpoint)
    if not (checkpoint / "model.safetensors").exists():
        raise ValueError(f"reconstruction checkpoint not found at {checkpoint}")
    problem = checkpoint_problem(checkpoint, "ReconNet")  # an enhancer's folder failed only inside the network
    if problem:
        raise ValueError(f"reconstruction checkpoint {checkpoint}: {problem}")
    return checkpoint


def reconstructed_scene(layout: Layout, path_xy_m: np.ndarray, *, checkpoint: Path = DEFAULT_CHECKPOINT,
                        step_m: float = 4.0, width: int = NETWORK_SIZE[0], height: int = NETWORK_SIZE[1],
                        voxel_m: float = 0.3, cache_dir: Path | None = None, progress: bool = False,
                        refine: RefineConfig = DEFAULT_REFINE,
                        record_size: tuple[int, int] = RECORD_SIZE,
                        depth_refine: DepthRefineConfig | None = DEFAULT_DEPTH_REFINE,
                        network_precision: str = "auto") -> tuple[GaussianScene, dict]:
    """Reconstruct the scene of `layout` from a drive along `path_xy_m` ([P, 2], world FLU metres).

    The drive is recorded as a drive log would hold it (render_drive, the rig's cameras at record_size, (width, height)
    pixels) and the log reconstructed exactly as reconstructed_scene_from_log(size=(width, height)) does: the
    network reads it resampled to width x height, the enhancer's reference keeps record_size. The result is
    cached by the layout, path and settings.
    refine: the test-time colour refinement against the log's images (RefineConfig(iterations=0): none).
    depth_refine: the test-time photometric refinement of the network's depths (photometric.py; None: none).
    network_precision: the network's arithmetic, "auto" (bfloat16 where this CPU runs it faster, as the
        enhancer's "auto" decides: `network_precision_inputs`), "float32" or "bfloat16"; part of the cache key.
    """
    checkpoint = _check_checkpoint(checkpoint)
    precision = network_precision_inputs(network_precision)
    path = Polyline(np.asarray(path_xy_m, dtype=np.float64))
    record_size = (int(record_size[0]), int(record_size[1]))
    inputs = {"kind": "reconstruction", "layout": layout.to_dict(), "path": np.round(path.points, 3).tolist(),
              "step_m": step_m, "size": [width, height], "record_size": list(record_size), "voxel_m": voxel_m,
              "checkpoint": checkpoint_hash(checkpoint), "drive_log_format": FORMAT_VERSION,
              "code": reconstruction_code_hash(), **refine.cache_inputs(), **depth_refine_inputs(depth_refine),
              **precision, **marking_cache_inputs(layout), **_recorded_world_inputs(layout, voxel_m)}

    def build():
        if progress:  # a cache miss: the reconstruction's kernels run (a fresh install compiles them first)
            announce_compiling(RECONSTRUCTION_MODULES)
        # the drive as its log would hold it (8-bit images), handed over in memory: no PNG written or read back
        # (the same scene as recording the log and reconstructing it, tests/test_drive_log.py)
        drive = render_drive(layout, path.points, step_m=step_m, width=record_size[0], height=record_size[1],
                             voxel_m=voxel_m, cache_dir=cache_dir, progress=progress)
        # 8-bit values as uint8 until the network reads them: the reference stores uint8 (the same values, without
        # two conversions of the whole drive, ~0.8 s of the demo drive's reconstruction)
        log_images, log_cameras, log_meta = drive.as_read(uint8=True)
        del drive
        ref_size = reference_size(record_size)
        ref_images, ref_cameras = resample_views(log_images, log_cameras, ref_size)
        images, cameras = resample_views(log_images, log_cameras, (width, height))
        del log_images
        images = images.astype(np.float32) / np.float32(255.0)
        scene, meta, reference = _reconstruct_views(images, cameras, ref_images, ref_cameras, log_meta, checkpoint,
                                                    progress, refine, depth_refine, _resolved(precision))
        meta = {**meta, "log": None,  # the drive was never written (its images are in the reference)
                "world": {k: inputs[k] for k in ("world_builder", "world_textures")}}
        return scene, meta, layout.to_json(), {REFERENCE_FILE: reference.save}

    return _get_or_build(cache_dir, inputs, network_precision, build)


def _recorded_world_inputs(layout: Layout, voxel_m: float) -> dict:
    """What the builder's scene that the drive is recorded from depends on beyond the layout and voxel: its builder
    version and the texture files' hash (`build_inputs`). A reconstruction made before torcs-data was installed
    (the procedural colours) had been served after it, the same key for another world (a new user's finding)."""
    world = build_inputs(layout, voxel_m)
    return {"world_builder": world["builder"], "world_textures": world.get("textures")}


def reconstructed_scene_from_log(folder: Path | str, *, checkpoint: Path = DEFAULT_CHECKPOINT,
                                 size: tuple[int, int] | None = None, cache_dir: Path | None = None,
                                 progress: bool = False, refine: RefineConfig = DEFAULT_REFINE,
                                 depth_refine: DepthRefineConfig | None = DEFAULT_DEPTH_REFINE,
                                 network_precision: str = "auto") -> tuple[GaussianScene, dict]:
    """Reconstruct the scene of a drive log (docs/drive_log.md); cached by the log's bytes and the checkpoint.

    size: (width, height) to resample every image to before the network. None: the network's scale
    (`network_read_size`): a log of one size wider than NETWORK_SIZE (160x96, what the network was trained at)
    is resampled to its width, the aspect kept; a narrower one is read as it is; a log of mixed sizes is
    resampled to one (`mixed_size`). Pass the log's own size to read a wider log as it is. The enhancer's
    reference keeps the log's own size when all its images share one (at most REFERENCE_MAX_WIDTH wide,
    resampled beyond); a mixed log's is `mixed_size` at most REFERENCE_MAX_WIDTH wide.
    refine: the test-time colour refinement against the log's images (RefineConfig(iterations=0): none).
    depth_refine: the test-time photometric refinement of the network's depths (photometric.py; None: none).
    network_precision: the network's arithmetic (as `reconstructed_scene`'s); part of the cache key.
    Raises DriveLogError (a ValueError) naming the file and frame of a bad log.
    """
    checkpoint = _check_checkpoint(checkpoint)
    precision = network_precision_inputs(network_precision)
    folder = drive_log_folder(folder)  # the folder, or its transforms.json
    if size is None:
        size = network_read_size(log_image_sizes(folder))
    inputs = {"kind": "reconstruction-log", "log_sha256": log_digest(folder), "checkpoint": checkpoint_hash(checkpoint),
              "size": None if size is None else [int(size[0]), int(size[1])], "code": reconstruction_code_hash(),
              **refine.cache_inputs(), **depth_refine_inputs(depth_refine), **precision}

    built = []

    def build():
        if progress:
            announce_compiling(RECONSTRUCTION_MODULES)
        with warnings.catch_warnings(record=True) as caught:  # issued below, and kept with the entry
            warnings.simplefilter("always", DriveLogWarning)
            scene, meta, reference = _reconstruct_log(folder, checkpoint, size, progress, refine, depth_refine,
                                                      _resolved(precision))
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        built.append(True)
        said = [w.message for w in caught if issubclass(w.category, DriveLogWarning)]
        return (scene, {**meta, "log": str(folder.resolve()), "log_warnings": [str(w) for w in said],
                        "log_problems": [w.problem for w in said]}, None, {REFERENCE_FILE: reference.save})

    scene, meta = _get_or_build(cache_dir, inputs, network_precision, build)
    if not built:  # a cached scene: its log's warnings again (they still hold: the entry is keyed on its bytes),
        problems = meta.get("log_problems")  # naming the folder read now (the same bytes may have been elsewhere)
        messages = ((meta.get("log_warnings") or ()) if problems is None
                    else [f"drive log {folder}: {problem}" for problem in problems])
        meta = {**meta, "log_warnings": list(messages)}
        for message, problem in zip(messages, problems or messages):
            warnings.warn(DriveLogWarning(message, problem), stacklevel=2)
    return scene, meta


def _get_or_build(cache_dir: Path | None, inputs: dict, network_precision: str, build) -> tuple[GaussianScene, dict]:
    """`SceneCache.get_or_build`, except that with network_precision "auto" an entry already built in the other
    precision is served when this one's is absent: "auto" rests on a timed probe (`resolve_cpu_precision`),
    which another process, or a moment when another process holds a core, may answer the other way, and the
    two precisions' scenes tie in fidelity (docs/results.md, "2026-12-04 (third session)"), so such a flip
    never costs a rebuild. An explicit precision is served only in that precision."""
    cache = SceneCache(cache_dir)
    if network_precision == "auto" and not cache.path(cache_key(inputs)).exists():
        other = dict(inputs)
        if other.pop("network_precision", None) is None:
            other["network_precision"] = "bfloat16"
        if cache.path(cache_key(other)).exists():
            hit = cache.load(cache_key(other))
            if hit is not None:
                return hit
    return cache.get_or_build(inputs, build)


def scene_reference(meta: dict) -> LogReference | None:
    """The log reference stored with a reconstruction (the meta `reconstructed_scene*` returned), None for a
    scene that has none (a builder scene, or an entry written before references were kept)."""
    path = Path(meta.get("path") or "") / REFERENCE_FILE
    if not (meta.get("path") and path.is_file()):
        return None
    try:
        return LogReference.load(path)
    except ValueError as err:  # (an entry stored with its files' CRC-32s never gets here: the cache rebuilds it)
        raise ValueError(f"{err}: the scene cache entry {path.parent} is damaged; remove that folder and run again "
                         "to rebuild it") from None


def _reconstruct_log(folder: Path, checkpoint: Path, size: tuple[int, int] | None, progress: bool,
                     refine: RefineConfig = DEFAULT_REFINE,
                     depth_refine: DepthRefineConfig | None = DEFAULT_DEPTH_REFINE, precision: str = "float32"
                     ) -> tuple[GaussianScene, dict, LogReference]:
    """A drive log on disk to a scene: read (validated), then `_reconstruct_views`: crop to the stride, ReconNet
    (its depths refined photometrically against the neighbour views unless depth_refine is None), the colour
    refinement against the log's images (rendered over the log's sky colour, if it names one), and the log's
    LogReference (its views' depths rendered from the scene)."""
    native = log_image_sizes(folder)
    if len(native) == 1 and reference_size(native[0]) == tuple(native[0]):
        # the reference keeps the log's own size (not cropped to the network's stride): read once, and the
        # network's views resampled from it in memory
        ref_images, ref_cameras, log_meta = read_drive_log(folder, progress=progress)
        images, cameras = (ref_images, ref_cameras) if size is None else resample_views(ref_images, ref_cameras, size)
    else:  # a log wider than the reference keeps, or of mixed sizes: never held at its own size, each image
        # resampled as it is read (a mixed log's reference at one size, as its network's, `mixed_size`)
        images, cameras, log_meta = read_drive_log(folder, size=size, progress=progress)
        ref_size = reference_size(native[0]) if len(native) == 1 else mixed_size(native, REFERENCE_MAX_WIDTH)
        ref_images, ref_cameras = images, cameras
        if ref_size != (images.shape[2], images.shape[1]):
            ref_images, ref_cameras, _ = read_drive_log(folder, size=ref_size, progress=progress)
    return _reconstruct_views(images, cameras, ref_images, ref_cameras, log_meta, checkpoint, progress, refine,
                              depth_refine, precision)


def _reconstruct_views(images: np.ndarray, cameras: list[Camera], ref_images: np.ndarray, ref_cameras: list[Camera],
                       log_meta: dict, checkpoint: Path, progress: bool, refine: RefineConfig,
                       depth_refine: DepthRefineConfig | None, precision: str = "float32"
                       ) -> tuple[GaussianScene, dict, LogReference]:
    """A log's views read for the network (images [V, H, W, 3] float32 in [0, 1] and cameras) and for the reference
    (ref_images at the reference's size, float32 or uint8) -> (scene, meta, LogReference); log_meta as
    read_drive_log returns it; precision: the network's arithmetic, resolved ("float32" or "bfloat16")."""
    images, cameras = _crop_to_multiple(images, cameras, NETWORK_STRIDE_PX)
    with tqdm(total=1, desc="reconstruction", unit="pass", disable=not progress) as bar:
        bar.set_postfix_str(f"network pass over {len(cameras)} views")
        scene, sky_masks = reconstruct(ReconNet.from_pretrained(checkpoint), images, cameras, return_sky=True,
                                       depth_refine=depth_refine, precision=precision)
        bar.update(1)
    source = (log_meta.get("neural_sensor") or {}).get("source") or {}
    sky = source.get("sky_rgb") if isinstance(source.get("sky_rgb"), list) else SKY_RGB
    refine_stats = None
    if refine.iterations > 0:
        scene, refine_stats = refine_colours(scene, images, cameras, background=sky, config=refine, sky_masks=sky_masks,
                                             progress=progress)
    meta = {"source": "reconstruction", "views": len(cameras), "checkpoint": str(checkpoint),
            "image_size": [images.shape[2], images.shape[1]], "log_image_sizes": log_meta["sizes_in_log"],
            "reference_size": [ref_images.shape[2], ref_images.shape[1]],
            "frames": len({f["frame_index"] for f in log_meta["frames"]} - {None}) or None,
            "colour_refinement": refine_stats, **depth_refine_inputs(depth_refine),
            "network_precision": precision}
    if isinstance(source.get("sky_rgb"), list):
        meta["sky_rgb"] = source["sky_rgb"]
    reference = LogReference.from_views(ref_images, ref_cameras, [f["camera"] for f in log_meta["frames"]], scene, sky)
    return scene, meta, reference


def network_precision_inputs(network_precision: str) -> dict:
    """The network's arithmetic as a reconstruction's cache inputs: {} for float32 (the key every reconstruction
    had before bfloat16 existed), {"network_precision": "bfloat16"} for bfloat16. "auto" is resolved on this host
    (`resolve_cpu_precision`: AMX, or native bfloat16 that a timed probe finds faster); ValueError for a value
    other than auto / float32 / bfloat16."""
    resolved = resolve_cpu_precision(network_precision, "network precision")
    return {"network_precision": resolved} if resolved == "bfloat16" else {}


def _resolved(precision_inputs: dict) -> str:
    """The precision `network_precision_inputs` put in a cache key: "bfloat16", or "float32" where it put none."""
    return precision_inputs.get("network_precision", "float32")


def network_read_size(log_sizes: list[tuple[int, int]]) -> tuple[int, int] | None:
    """(width, height) the network reads a drive log at by default, given the log's distinct image sizes
    [(width, height), ...]: a log of one size wider than NETWORK_SIZE is resampled to NETWORK_SIZE's width with
    its aspect kept (the height rounded; the stride crop takes it to a multiple of 4), since the network does not
    carry over to other scales (a 320x192 log read as it is measured 4-6 dB worse than resampled to 160x96);
    None (read as it is) for a narrower log. A log of mixed sizes (a real rig's front and side cameras often
    differ) is resampled to one size: `mixed_size(log_sizes, NETWORK_SIZE[0])`."""
    assert len(log_sizes) >= 1, log_sizes
    if len(log_sizes) != 1:
        return mixed_size(log_sizes, NETWORK_SIZE[0])
    capped = _capped_width(log_sizes[0], NETWORK_SIZE[0])
    return None if capped == tuple(log_sizes[0]) else capped


def mixed_size(log_sizes: list[tuple[int, int]], max_width: int) -> tuple[int, int]:
    """One (width, height) for a log whose images differ in size: the narrowest image's width, at most max_width,
    and the aspect (width / height) halfway, geometrically, between the log's narrowest and widest aspects, so no
    camera's pixels are stretched more than another's (each image's fx, cx and fy, cy are scaled to match)."""
    assert len(log_sizes) >= 1 and all(w > 0 and h > 0 for w, h in log_sizes), log_sizes
    aspects = [w / h for w, h in log_sizes]
    aspect = math.sqrt(min(aspects) * max(aspects))
    width = min(max_width, min(w for w, _ in log_sizes))
    return width, max(1, round(width / aspect))


def reference_size(log_size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) the enhancer's reference keeps of a log of log_size: the log's own, at most
    REFERENCE_MAX_WIDTH wide (the height scaled alike, rounded)."""
    return _capped_width(log_size, REFERENCE_MAX_WIDTH)


def _capped_width(size: tuple[int, int], max_width: int) -> tuple[int, int]:
    """size = (width, height) as is when at most max_width wide, else max_width wide with the aspect kept (the
    height rounded, at least 1)."""
    w, h = int(size[0]), int(size[1])
    assert w > 0 and h > 0, size
    if w <= max_width:
        return w, h
    return max_width, max(1, round(h * max_width / w))


def _crop_to_multiple(images: np.ndarray, cameras: list[Camera], multiple: int):
    """Crop right / bottom so both sides are multiples of `multiple` (K unchanged: the origin stays put)."""
    h, w = images.shape[1:3]
    h2, w2 = h - h % multiple, w - w % multiple
    if (h2, w2) == (h, w):
        return images, cameras
    if h2 == 0 or w2 == 0:
        raise ValueError(f"drive log images of {w}x{h} are too small to reconstruct (at least "
                         f"{multiple}x{multiple})")
    return (np.ascontiguousarray(images[:, :h2, :w2]),
            [Camera(w2, h2, c.K, c.pose_camera_to_world) for c in cameras])
