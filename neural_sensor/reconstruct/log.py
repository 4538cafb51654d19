"""Drive logs: posed multi-camera images on disk, the reconstruction's input.

A drive log is a folder holding a nerfstudio-style `transforms.json` (per-frame
pinhole intrinsics `fl_x fl_y cx cy w h`, a camera-to-world `transform_matrix` in
nerfstudio's OpenGL camera axes, `file_path`) and the images as PNG files beside
it; docs/drive_log.md is the specification. Our own keys (`timestamp_s`, `camera`,
`frame_index`, `pose_ego_to_world`, and the top-level `neural_sensor` block) are
extra keys nerfstudio ignores, and optional when reading, so a pinhole nerfstudio
dataset in a metric z-up world reads as a drive log too.

- `write_drive_log(folder, images, cameras, ...)` writes one (atomically: a
  temporary folder renamed into place);
- `read_drive_log(folder)` -> (images [V, H, W, 3] float32, cameras, meta), every
  problem raised as a `DriveLogError` naming the file and the frame (our optional keys
  too, when present with the wrong type);
- `record_drive(layout, path_xy_m, folder, ...)` "records" a generated world: the
  builder's scene rendered by the nuScenes-like rig every `step_m` along a path
  (`render_drive`, which keeps the drive in memory, then `write_drive_log`);
- `log_digest(folder)`: sha256 of transforms.json and every image's bytes (the
  SceneCache key of the log's reconstruction), without decoding the images.

Every function that takes a log's folder takes the path of its transforms.json as well
(`drive_log_folder`: what nerfstudio's tools and a file browser hand a user).

Frames: the world is FLU (x forward, y left, z up), metres; our cameras are OpenCV
(x right, y down, z forward), nerfstudio's are OpenGL (x right, y up, z back), so
transform_matrix = pose_camera_to_world @ diag(1, -1, -1, 1), both ways.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import numbers
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from neural_sensor.camera import Camera
from neural_sensor.host import abandoned, check_memory
from neural_sensor.poses import check_pose
from neural_sensor.reconstruct.log_checks import (DriveLogWarning, drive_log_warnings, ignored_intrinsics_warnings,
                                                  is_json_number)

FORMAT_NAME = "neural-sensor drive log"
FORMAT_VERSION = 1
TRANSFORMS = "transforms.json"
IMAGES_DIR = "images"
NETWORK_STRIDE_PX = 4  # the reconstructor crops a log's images to a multiple of it: no side may be under it
MAX_STATIONS = 2000  # record_drive refuses a step that would make more stations than this (a typo like 1e-3 m)
# OpenCV camera axes (x right, y down, z forward) <-> OpenGL / nerfstudio axes (x right, y up, z back)
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])
# nerfstudio camera models that are a pinhole when their distortion parameters are zero
PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")


class DriveLogError(ValueError):
    """A drive log that cannot be used; the message names the file and, where one is at fault, the frame."""

    def __init__(self, folder: Path | str, problem: str, *, frame: int | None = None, file: str | None = None):
        self.folder, self.frame, self.file = Path(folder), frame, file
        where = f"drive log {self.folder}"
        if frame is not None:
            where += f": frame {frame}" + (f" ({file})" if file else "")
        elif file:
            where += f": {file}"
        super().__init__(f"{where}: {problem}")


def _separator_hint(file_path: str) -> str:
    """For a missing image: a hint when its file_path separates folders with backslashes (a log written on
    Windows), which name no folder here."""
    return " (file_path separates folders with '\\'; write '/')" if "\\" in str(file_path) else ""


def _extension_hint(folder: Path, file_path: str) -> str:
    """For a missing image named without an extension (instant-ngp and Blender-style files often leave it out): a
    hint naming the files beside it that have one."""
    path = folder / file_path
    if not path.parent.is_dir():
        return ""
    found = sorted(p.name for p in path.parent.glob(f"{glob.escape(path.name)}.*"))
    if found:  # e.g. "frame.0001" for frame.0001.png
        return f" (the folder holds {', '.join(found[:3])}: name the file in full, with its extension)"
    return "" if path.suffix else " (file_path has no extension: give the image's full file name)"


def opencv_to_nerfstudio(pose_camera_to_world: np.ndarray) -> np.ndarray:
    """Our camera-to-world pose (OpenCV camera axes) as nerfstudio's transform_matrix (OpenGL camera axes)."""
    return np.asarray(pose_camera_to_world, dtype=np.float64) @ OPENCV_TO_OPENGL


def nerfstudio_to_opencv(transform_matrix: np.ndarray) -> np.ndarray:
    """nerfstudio's transform_matrix (OpenGL camera axes) as our pose_camera_to_world (OpenCV camera axes)."""
    return np.asarray(transform_matrix, dtype=np.float64) @ OPENCV_TO_OPENGL


FLOAT_IMAGE_MIN, FLOAT_IMAGE_MAX = -1.0, 2.0  # a float image beyond these is not RGB in [0, 1] (e.g. 0-255)


def _to_uint8(image: np.ndarray, who: str = "write_drive_log") -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if image.dtype.kind != "f":  # an int64 / uint16 / bool image was scaled as if it were [0, 1] floats
        raise ValueError(f"{who}: an image is {image.dtype}; images are uint8, or float RGB in [0, 1]")
    if not np.all(np.isfinite(image)):
        raise ValueError(f"{who}: an image contains NaN or infinity")
    return np.clip(image.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "camera"


def write_drive_log(folder: Path | str, images, cameras: Sequence[Camera], *,
                    camera_names: Sequence[str] | None = None, timestamps_s: Sequence[float] | None = None,
                    frame_indices: Sequence[int] | None = None, poses_ego_to_world: Sequence[np.ndarray] | None = None,
                    source: dict | None = None, progress: bool = False) -> Path:
    """Write images and their cameras as a drive log; returns the folder.

    Args:
        folder: the log folder; it must not exist or be empty (the log is written beside it and renamed
            into place, so a reader never sees half a log).
        images: V images [H, W, 3], float RGB in [0, 1] (rounded to 8 bits) or uint8; an array [V, H, W, 3]
            or a list (sizes may differ between cameras).
        cameras: V Cameras; each image's size must be its camera's.
        camera_names: the sensor of each view (e.g. "CAM_FRONT"); default "cam<i>".
        timestamps_s, frame_indices: per view; default 0.0 and the view's index.
        poses_ego_to_world: per view, the ego's [4, 4] FLU pose when the image was taken (optional).
        source: JSON-serialisable facts about where the log came from (stored under neural_sensor.source).
    """
    folder = Path(folder)
    views = len(cameras)
    if len(images) != views:
        raise ValueError(f"write_drive_log: {len(images)} images for {views} cameras")
    for name, values in (("camera_names", camera_names), ("timestamps_s", timestamps_s),
                         ("frame_indices", frame_indices), ("poses_ego_to_world", poses_ego_to_world)):
        if values is not None and len(values) != views:
            raise ValueError(f"write_drive_log: {len(values)} {name} for {views} cameras")
    if timestamps_s is not None:  # refused here, not when the log is read back
        bad = [i for i, t in enumerate(timestamps_s)
               if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Real) or not math.isfinite(t)]
        if bad:
            raise ValueError(f"write_drive_log: timestamps_s[{bad[0]}] must be a finite number of seconds, got "
                             f"{timestamps_s[bad[0]]!r}")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"write_drive_log: {folder} exists and is not an empty folder; choose another")
    floats = [a for a in map(np.asarray, images) if a.dtype.kind == "f" and a.size]
    if floats:  # over all the views: a dark frame of a 0-255 drive is not brightened 255 times on its own
        # (a 0-255 float drive was clipped to an all-white log without a word; renders overshoot 1 a little: kept)
        low, high = min(float(np.nanmin(a)) for a in floats), max(float(np.nanmax(a)) for a in floats)
        if high > FLOAT_IMAGE_MAX or low < FLOAT_IMAGE_MIN:
            raise ValueError(f"write_drive_log: the float images hold values in [{low:g}, {high:g}]; float images "
                             "are RGB in [0, 1] (divide 0-255 images by 255, or pass them as uint8)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_writes(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.log-{os.getpid()}-", dir=folder.parent))
    try:
        (tmp / IMAGES_DIR).mkdir()
        frames = []
        from PIL import Image

        for i in tqdm(range(views), desc="writing drive log", unit="image", disable=not progress):
            cam = cameras[i]
            image = _to_uint8(images[i])
            if image.shape != (cam.height, cam.width, 3):
                raise ValueError(f"write_drive_log: image {i} is {image.shape}, its camera is "
                                 f"{cam.width}x{cam.height} (expected [{cam.height}, {cam.width}, 3])")
            name = camera_names[i] if camera_names is not None else f"cam{i}"
            index = int(frame_indices[i]) if frame_indices is not None else i
            file_path = f"{IMAGES_DIR}/{index:06d}_{_safe_name(name)}.png"
            if (tmp / file_path).exists():
                raise ValueError(f"write_drive_log: two views share frame index {index} and camera {name!r}")
            Image.fromarray(image).save(tmp / file_path, compress_level=1)
            frame = {"file_path": file_path,
                     "fl_x": float(cam.K[0, 0]), "fl_y": float(cam.K[1, 1]),
                     "cx": float(cam.K[0, 2]), "cy": float(cam.K[1, 2]), "w": cam.width, "h": cam.height,
                     "transform_matrix": opencv_to_nerfstudio(cam.pose_camera_to_world).tolist(),
                     "camera": name, "frame_index": index,
                     "timestamp_s": float(timestamps_s[i]) if timestamps_s is not None else 0.0}
            if poses_ego_to_world is not None:
                frame["pose_ego_to_world"] = check_pose(poses_ego_to_world[i], f"poses_ego_to_world[{i}]").tolist()
            frames.append(frame)
        transforms = {"camera_model": "OPENCV",
                      "neural_sensor": {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                                        "world_frame": "FLU: x forward, y left, z up; metres",
                                        "source": source or {}},
                      "frames": frames}
        (tmp / TRANSFORMS).write_text(json.dumps(transforms, indent=1))
        tmp.chmod(0o755)
        if folder.exists():
            folder.rmdir()  # empty, checked above
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _remove_abandoned_writes(folder: Path) -> None:
    """Remove what killed writes of this log left beside it (SIGKILL: no handler ran): `.NAME.log-PID-XXXX`
    folders whose process is gone, unwritten for an hour, holding nothing but a log's images folder and
    transforms.json."""
    for tmp in folder.parent.glob(f".{glob.escape(folder.name)}.log-*-*"):
        pid = tmp.name[len(f".{folder.name}.log-"):].split("-", 1)[0]
        if not (pid.isdigit() and tmp.is_dir() and not tmp.is_symlink()) or not abandoned(tmp, int(pid)):
            continue
        try:
            if all(item.name in (IMAGES_DIR, TRANSFORMS) for item in tmp.iterdir()):
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:  # removed meanwhile (another writer's sweep)
            pass


# ----------------------------------------------------------------------------------------------- reading
def drive_log_folder(path: Path | str) -> Path:
    """The log folder a user's path names: the folder itself, or the folder holding it when the path is its
    transforms.json; DriveLogError for a path to any other file (an image, another JSON file)."""
    path = Path(path)
    if path.name == TRANSFORMS and not path.is_dir():
        return path.parent
    if path.exists() and not path.is_dir():
        raise DriveLogError(path, f"is a file, not a drive log: give the log's folder (holding {TRANSFORMS} and the "
                                  f"images) or its {TRANSFORMS}")
    return path


def _load_transforms(folder: Path) -> tuple[dict, bytes]:
    path = folder / TRANSFORMS
    if not folder.is_dir():
        raise DriveLogError(folder, "not a folder (a drive log is a folder holding transforms.json and images)")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DriveLogError(folder, "no transforms.json in the folder", file=TRANSFORMS) from None
    except OSError as err:
        raise DriveLogError(folder, f"cannot be read: {err.strerror or err}", file=TRANSFORMS) from None
    try:
        data = json.loads(raw.decode("utf-8-sig"))  # a byte-order mark (some Windows editors write one) is fine
    except UnicodeDecodeError as err:
        raise DriveLogError(folder, f"not UTF-8 text (byte {err.start})", file=TRANSFORMS) from None
    except json.JSONDecodeError as err:
        raise DriveLogError(folder, f"malformed JSON at line {err.lineno} column {err.colno}: {err.msg}",
                            file=TRANSFORMS) from None
    if not isinstance(data, dict):
        raise DriveLogError(folder, f"must hold a JSON object, got {type(data).__name__}", file=TRANSFORMS)
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise DriveLogError(folder, "needs a non-empty list 'frames'", file=TRANSFORMS)
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise DriveLogError(folder, f"must be a JSON object, got {type(frame).__name__}", frame=i)
        if "file_path" not in frame:
            raise DriveLogError(folder, "missing key 'file_path' (the image, relative to the log folder)", frame=i)
        if not isinstance(frame["file_path"], str) or not frame["file_path"]:
            raise DriveLogError(folder, f"file_path must be a non-empty string (the image, relative to the log "
                                        f"folder), got {frame['file_path']!r}", frame=i)
    return data, raw


def log_digest(folder: Path | str) -> str:
    """sha256 of transforms.json and the bytes of every frame's image, in frame order (images not decoded)."""
    folder = drive_log_folder(folder)
    data, raw = _load_transforms(folder)
    digest = hashlib.sha256(raw)
    for i, frame in enumerate(data["frames"]):
        image_path = folder / frame["file_path"]
        try:
            digest.update(image_path.read_bytes())
        except FileNotFoundError:  # worded as the reader words it (the command line meets this one first)
            file = frame["file_path"]
            raise DriveLogError(folder, f"image file missing{_separator_hint(file)}{_extension_hint(folder, file)}",
                                frame=i, file=file) from None
        except OSError as err:
            raise DriveLogError(folder, f"image unreadable: {err.strerror or err}{_separator_hint(frame['file_path'])}",
                                frame=i, file=frame["file_path"]) from None
    return digest.hexdigest()


def log_image_sizes(folder: Path | str) -> list[tuple[int, int]]:
    """The distinct (width, height) of a drive log's frames, from transforms.json alone (sorted; no image read).
    DriveLogError for a malformed transforms.json or a frame without a positive integer w / h."""
    folder = drive_log_folder(folder)
    data, _ = _load_transforms(folder)
    return sorted({_frame_size(folder, data, frame, i) for i, frame in enumerate(data["frames"])})


def _frame_size(folder: Path, data: dict, frame: dict, i: int) -> tuple[int, int]:
    """A frame's (w, h) in pixels; DriveLogError unless both are positive integers."""
    w, h = (_number(folder, data, frame, key, i, frame["file_path"]) for key in ("w", "h"))
    if w != int(w) or h != int(h) or w <= 0 or h <= 0:
        raise DriveLogError(folder, f"w and h must be positive integers, got w={w!r} h={h!r}", frame=i,
                            file=frame["file_path"])
    return int(w), int(h)


def _number(folder, data: dict, frame: dict, key: str, i: int, file: str) -> float:
    """A frame's intrinsic: the top-level value when the file has one (as nerfstudio reads it), else the frame's."""
    value = data[key] if key in data else frame.get(key)
    if value is None and key in data:  # (it had been called missing)
        raise DriveLogError(folder, f"{key} at the top of transforms.json is null (a top-level value applies to "
                                    "every frame: give a number, or leave it out and give it per frame)", frame=i,
                            file=file)
    if value is None:
        raise DriveLogError(folder, f"missing key {key!r} (per frame or at the top of transforms.json)", frame=i,
                            file=file)
    if not is_json_number(value, finite=True):
        raise DriveLogError(folder, f"{key} must be a finite number, got {value!r}", frame=i, file=file)
    return float(value)


def _frame_facts(folder: Path, frame: dict, i: int) -> dict:
    """A frame's entry of read_drive_log's meta: its file_path and our optional keys (camera, frame_index,
    timestamp_s, pose_ego_to_world), each None where absent or null; DriveLogError naming the frame and the key
    for one of the wrong type. A JSON true / false is not taken for a number (Python's bool is an int)."""
    file = frame["file_path"]
    camera, index, timestamp, ego = (frame.get(key) for key in ("camera", "frame_index", "timestamp_s",
                                                                "pose_ego_to_world"))
    if camera is not None and (not isinstance(camera, str) or not camera):
        raise DriveLogError(folder, f"camera must be a non-empty string (the sensor's name, e.g. 'CAM_FRONT'), got "
                                    f"{camera!r}", frame=i, file=file)
    if index is not None:
        if not is_json_number(index, finite=True) or index != int(index) or index < 0:
            raise DriveLogError(folder, f"frame_index must be an integer >= 0 (the rig frame the image belongs to), "
                                        f"got {index!r}", frame=i, file=file)
        index = int(index)
    if timestamp is not None:
        if not is_json_number(timestamp, finite=True):
            raise DriveLogError(folder, f"timestamp_s must be a finite number of seconds, got {timestamp!r}",
                                frame=i, file=file)
        timestamp = float(timestamp)
    if ego is not None:
        try:
            ego = check_pose(ego, "pose_ego_to_world", snap=True).tolist()
        except ValueError as err:
            raise DriveLogError(folder, str(err), frame=i, file=file) from None
    return {"file_path": file, "camera": camera, "frame_index": index, "timestamp_s": timestamp,
            "pose_ego_to_world": ego}


def _neural_sensor_block(folder: Path, data: dict) -> dict | None:
    """The top-level neural_sensor block (None where absent or null); DriveLogError naming the key where it, its
    source or the source's sky_rgb (the keys a reconstruction reads) has the wrong type, where its format names
    another format, or where its version is not an integer >= 1 or is newer than FORMAT_VERSION (a log from a
    later neural-sensor, whose keys this one might misread)."""
    block = data.get("neural_sensor")
    if block is None:
        return None
    if not isinstance(block, dict):
        raise DriveLogError(folder, f"neural_sensor must be a JSON object, got {block!r}", file=TRANSFORMS)
    name, version = block.get("format"), block.get("version")
    if name is not None and name != FORMAT_NAME:
        raise DriveLogError(folder, f"neural_sensor.format is {name!r}, not {FORMAT_NAME!r}: this block was not "
                                    f"written for this reader", file=TRANSFORMS)
    if version is not None and not (is_json_number(version, finite=True) and version == int(version)
                                    and version >= 1):
        raise DriveLogError(folder, f"neural_sensor.version must be an integer >= 1 (the drive log format's "
                                    f"version), got {version!r}", file=TRANSFORMS)
    if version is not None and version > FORMAT_VERSION:
        raise DriveLogError(folder, f"neural_sensor.version {int(version)}: a newer drive log format than this "
                                    f"neural-sensor reads (up to version {FORMAT_VERSION}); upgrade neural-sensor",
                            file=TRANSFORMS)
    source = block.get("source")
    if source is not None and not isinstance(source, dict):
        raise DriveLogError(folder, f"neural_sensor.source must be a JSON object, got {source!r}", file=TRANSFORMS)
    sky = (source or {}).get("sky_rgb")
    if sky is not None and not (isinstance(sky, list) and len(sky) == 3 and all(
            is_json_number(c) and 0.0 <= c <= 1.0 for c in sky)):
        raise DriveLogError(folder, f"neural_sensor.source.sky_rgb must be 3 numbers in [0, 1] (the background "
                                    f"colour, RGB), got {sky!r}", file=TRANSFORMS)
    return block


def _png_bit_depth(path: Path) -> int:
    """The bit depth in a PNG's IHDR chunk (byte 24 of the file), 8 where it cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(25)
    except OSError:
        return 8
    return head[24] if len(head) == 25 and head[12:16] == b"IHDR" else 8


def _read_image(folder: Path, path: Path, i: int, file: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if img.format == "PNG" and _png_bit_depth(path) > 8:  # (PIL reads a 16-bit RGB PNG as "RGB")
                raise DriveLogError(folder, "image is a 16-bit PNG: 8-bit RGB only (PIL would cut it to 8 bits "
                                            "without a word; convert it first)", frame=i, file=file)
            array = np.asarray(img)
    except FileNotFoundError:
        raise DriveLogError(folder, f"image file missing{_separator_hint(file)}{_extension_hint(folder, file)}",
                            frame=i, file=file) from None
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        # (a header claiming more pixels than PIL's bound is not an OSError: it had raised through, exit 1)
        raise DriveLogError(folder, f"image unreadable: {err}", frame=i, file=file) from None
    if mode == "RGBA":
        if np.any(array[..., 3] != 255):
            raise DriveLogError(folder, "image has transparent pixels (RGB images only; RGBA only if opaque)",
                                frame=i, file=file)
        array = array[..., :3]
    elif mode != "RGB":
        raise DriveLogError(folder, f"image mode {mode} is not 8-bit RGB", frame=i, file=file)
    return array


def read_drive_log(folder: Path | str, *, size: tuple[int, int] | None = None, progress: bool = False
                   ) -> tuple[np.ndarray, list[Camera], dict]:
    """A drive log's images and cameras.

    Args:
        folder: the log folder (holding transforms.json), or its transforms.json.
        size: (width, height) to resample every image to (intrinsics scaled to match, area-averaged pixels);
            None keeps the log's size, which must then be the same for every frame.
    Returns:
        images [V, H, W, 3] float32 RGB in [0, 1]; V Cameras (OpenCV axes, FLU world); meta
        {"folder", "frames": [{file_path, camera, frame_index, timestamp_s, pose_ego_to_world}], "neural_sensor",
        "image_size": [W, H], "sizes_in_log": [[W, H], ...]}.
    Raises:
        DriveLogError (a ValueError) naming the file and the frame: malformed JSON, missing keys, a missing or
        unreadable image, an image whose size is not the frame's w x h, a NaN or non-rigid transform_matrix or
        pose_ego_to_world (a null in it named as such), one of our optional keys of the wrong type, a distortion
        model, images of different sizes (without `size`), an image listed twice. MemoryError when the images at
        `size` would not fit in the memory available now.
    """
    folder = drive_log_folder(folder)
    data, _ = _load_transforms(folder)
    neural_sensor_block = _neural_sensor_block(folder, data)
    model = data.get("camera_model", "OPENCV")
    if model not in PINHOLE_MODELS:
        raise DriveLogError(folder, f"camera_model {model!r} is not supported (pinhole only: "
                                    f"{', '.join(PINHOLE_MODELS)} without distortion)", file=TRANSFORMS)
    if size is not None:
        if (len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s <= 0
                                  for s in size)):
            raise ValueError(f"read_drive_log: size must be (width, height) positive integers, got {size!r}")
        size = (int(size[0]), int(size[1]))
        # the images as read and their float32 stack (the reconstruction needs more): said before, not by the
        check_memory(2 * len(data["frames"]) * size[0] * size[1] * 3 * 4,  # kernel's out-of-memory killer
                     f"reading {len(data['frames'])} images at {size[0]}x{size[1]}")
    images, cameras, frames_meta, sizes = [], [], [], []
    first_size = None
    seen_files: dict[str, int] = {}
    for i, frame in enumerate(tqdm(data["frames"], desc="reading drive log", unit="image", disable=not progress)):
        file = frame["file_path"]
        # one image twice would weigh twice in the reconstruction; the same file under a relative and an absolute
        # path, or through a link, is one image
        same = os.path.realpath(folder / file)
        if same in seen_files:
            raise DriveLogError(folder, f"frame {seen_files[same]} already names this image: list each image once",
                                frame=i, file=file)
        seen_files[same] = i
        for key in DISTORTION_KEYS:  # the top level's and the frame's both (a frame's own k1 = 0.2 under a
            # top-level 0 had been dropped without a word)
            for value in (data.get(key, 0.0), frame.get(key, 0.0)):
                if not is_json_number(value):  # true / "0.1" are not coefficients
                    raise DriveLogError(folder, f"distortion parameter {key} must be a number (0 or absent: none), "
                                                f"got {value!r}", frame=i, file=file)
                if value != 0:
                    raise DriveLogError(folder, f"distortion parameter {key}={value!r} is not supported (undistort "
                                                "the images first; pinhole only)", frame=i, file=file)
        fx, fy, cx, cy = (_number(folder, data, frame, key, i, file) for key in INTRINSIC_KEYS[:4])
        w, h = _frame_size(folder, data, frame, i)
        for key, value in (("fl_x", fx), ("fl_y", fy)):  # (named by the log's keys, not Camera.K)
            if value <= 0:
                raise DriveLogError(folder, f"{key} must be a positive focal length in pixels, got {value:g}",
                                    frame=i, file=file)
        for key, value, side in (("cx", cx, w), ("cy", cy, h)):
            if not -side <= value <= 2 * side:  # a crop may move it off the image, but not by a whole image
                raise DriveLogError(folder, f"{key}={value:g} lies more than an image away from the frame's "
                                            f"{w}x{h} image (the principal point is in its pixels)",
                                    frame=i, file=file)
        if "transform_matrix" not in frame:
            raise DriveLogError(folder, "missing key 'transform_matrix' (camera-to-world, OpenGL camera axes)",
                                frame=i, file=file)
        entries = np.asarray(frame["transform_matrix"], dtype=object)  # ragged rows: an array of lists
        bad = [v for v in entries.reshape(-1) if not is_json_number(v)]  # null (read as NaN before), true, "1"
        if bad:
            raise DriveLogError(folder, f"transform_matrix must be a [4, 4] array of numbers (holds "
                                        f"{json.dumps(bad[0], default=repr)})", frame=i, file=file)
        matrix = entries.astype(np.float64)
        if matrix.shape == (3, 4):  # instant-ngp style, the homogeneous row left out
            matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
        try:
            pose = nerfstudio_to_opencv(check_pose(matrix, "transform_matrix", snap=True))
        except ValueError as err:
            raise DriveLogError(folder, str(err), frame=i, file=file) from None
        facts = _frame_facts(folder, frame, i)
        image = _read_image(folder, folder / file, i, file)
        if image.shape[:2] != (h, w):
            says = ("the top of transforms.json says (for every frame)" if "w" in data or "h" in data
                    else "the frame says")
            raise DriveLogError(folder, f"image is {image.shape[1]}x{image.shape[0]} but {says} w={w} h={h}",
                                frame=i, file=file)
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        if size is None:
            if first_size is None:
                first_size = (w, h)
            elif (w, h) != first_size:
                raise DriveLogError(folder, f"image is {w}x{h} but frame 0 is {first_size[0]}x{first_size[1]}: one "
                                            "reconstruction takes one image size (read_drive_log(size=(W, H)) "
                                            "resamples them all; `neural-sensor reconstruct LOG` and "
                                            "`reconstructed_scene_from_log` pick one by default, `--size W H` "
                                            "another)", frame=i, file=file)
        elif (w, h) != size:
            image, K = _resample(image, K, size)
        try:
            cameras.append(Camera(image.shape[1], image.shape[0], K, pose))
        except ValueError as err:
            raise DriveLogError(folder, str(err), frame=i, file=file) from None
        images.append(image)
        sizes.append([w, h])
        frames_meta.append(facts)
    for problem in (ignored_intrinsics_warnings(data, INTRINSIC_KEYS)
                    + drive_log_warnings(cameras, [f["camera"] for f in frames_meta],
                                         [f["pose_ego_to_world"] for f in frames_meta],
                                         [f["frame_index"] for f in frames_meta])):
        warnings.warn(DriveLogWarning(f"drive log {folder}: {problem}", problem), stacklevel=2)
    stacked = np.stack(images).astype(np.float32) / np.float32(255.0)
    meta = {"folder": str(folder), "frames": frames_meta, "neural_sensor": neural_sensor_block,
            "image_size": [stacked.shape[2], stacked.shape[1]], "sizes_in_log": sorted({tuple(s) for s in sizes})}
    meta["sizes_in_log"] = [list(s) for s in meta["sizes_in_log"]]
    return stacked, cameras, meta


def resample_views(images: np.ndarray, cameras: Sequence[Camera], size: tuple[int, int]
                   ) -> tuple[np.ndarray, list[Camera]]:
    """Views read by `read_drive_log` ([V, H, W, 3] float32 in [0, 1], 8-bit values; or those values as uint8)
    resampled to size = (W', H') exactly as `read_drive_log(size=)` resamples them (the same 8-bit values through
    the same area filter, the intrinsics scaled alike), in the dtype given; returned as they are when already
    that size."""
    images = np.asarray(images)
    assert images.ndim == 4 and images.shape[0] == len(cameras) and images.shape[3] == 3, images.shape
    if (images.shape[2], images.shape[1]) == tuple(size):
        return images, list(cameras)
    out, resampled = [], []
    for image, cam in zip(images, cameras):  # back to its 8-bit values one image at a time (no second stack)
        if image.dtype != np.uint8:
            image = np.round(image * np.float32(255.0)).astype(np.uint8)
        image, K = _resample(image, cam.K, tuple(size))
        out.append(image)
        resampled.append(Camera(image.shape[1], image.shape[0], K, cam.pose_camera_to_world))
    stack = np.stack(out)
    return (stack if images.dtype == np.uint8 else stack.astype(np.float32) / np.float32(255.0)), resampled


def _resample(image: np.ndarray, K: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resample to size = (W, H) with PIL's area filter; K scales with the continuous image coordinates."""
    from PIL import Image

    h, w = image.shape[:2]
    out = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
    scaled = K.copy()
    scaled[0] *= size[0] / w
    scaled[1] *= size[1] / h
    scaled[2] = [0.0, 0.0, 1.0]
    return out, scaled


# ----------------------------------------------------------------------------------------------- recording
@dataclass
class RecordedDrive:
    """A generated drive's views as `render_drive` renders them and `write_drive_log` stores them (per view:
    images [H, W, 3] float RGB in [0, 1], cameras, camera_names, timestamps_s, frame_indices,
    poses_ego_to_world [4, 4]; source: the log's neural_sensor.source facts; stations along the path)."""

    images: list
    cameras: list
    camera_names: list
    timestamps_s: list
    frame_indices: list
    poses_ego_to_world: list
    source: dict
    stations: int

    def as_read(self, *, uint8: bool = False) -> tuple[np.ndarray, list[Camera], dict]:
        """What `read_drive_log` returns for the log `write_drive_log` would make of this drive, without the files:
        the images rounded to 8 bits as the log stores them ([V, H, W, 3] float32; with uint8, those 8-bit values
        as uint8, a quarter of the memory and no conversion), the cameras, and the meta's fields the reconstruction
        reads (frames' camera and frame_index, neural_sensor.source, sizes_in_log)."""
        images = np.stack([_to_uint8(image, "RecordedDrive") for image in self.images])
        if not uint8:
            images = images.astype(np.float32) / np.float32(255.0)
        frames = [{"camera": name, "frame_index": int(index)}
                  for name, index in zip(self.camera_names, self.frame_indices, strict=True)]
        meta = {"folder": None, "frames": frames, "neural_sensor": {"source": self.source},
                "image_size": [images.shape[2], images.shape[1]], "sizes_in_log": [[images.shape[2], images.shape[1]]]}
        return images, list(self.cameras), meta


def render_drive(layout, path_xy_m: np.ndarray, *, step_m: float = 4.0, width: int = 160, height: int = 96,
                 voxel_m: float = 0.3, speed_mps: float = 10.0, cache_dir: Path | None = None,
                 progress: bool = False) -> RecordedDrive:
    """A drive of a generated world as a car would record it, in memory (`record_drive` writes it as a log).

    The builder's scene of `layout` (cached) is rendered by the nuScenes-like rig (six cameras, width x
    height) at stations every `step_m` along `path_xy_m` ([P, 2] world FLU metres, ego at z = 0 heading
    along the path), as a car driving at `speed_mps` would record it (timestamp_s = arc length / speed).
    """
    from neural_sensor.render import render
    from neural_sensor.rig import nuscenes_like_rig
    from neural_sensor.scene.build import build_scene
    from neural_sensor.scene.path import Path as Polyline
    from neural_sensor.scene.to_gaussians import sky_rgb
    from neural_sensor.world import pose_from_xyz_yaw

    if not (isinstance(step_m, (int, float)) and step_m > 0 and math.isfinite(step_m)):
        raise ValueError(f"record_drive: step_m must be a positive number of metres, got {step_m!r}")
    if not (isinstance(speed_mps, (int, float)) and speed_mps > 0 and math.isfinite(speed_mps)):
        raise ValueError(f"record_drive: speed_mps must be positive, got {speed_mps!r}")
    path = Polyline(np.asarray(path_xy_m, dtype=np.float64))
    stations = np.arange(0.0, path.length_m + 1e-6, step_m)
    if len(stations) < 2:  # said before the street is built; a log of one station reconstructs nothing
        raise ValueError(f"record_drive: step_m {step_m:g} is longer than the path ({path.length_m:.1f} m): a drive "
                         "needs two stations at least")
    if len(stations) > MAX_STATIONS:
        raise ValueError(f"record_drive: step_m {step_m:g} makes {len(stations)} stations of {len(nuscenes_like_rig())} "
                         f"cameras along {path.length_m:.1f} m (at most {MAX_STATIONS}); the run records every 4 m")
    rig = nuscenes_like_rig(width, height)
    views = len(stations) * len(rig)  # every view is held (float32 RGB) until the log is written: said before the
    check_memory(views * width * height * 3 * 4, f"recording {views} images of {width}x{height}")  # OOM killer
    world, _ = build_scene(layout, voxel_m=voxel_m, cache_dir=cache_dir, progress=progress)
    background = sky_rgb(layout.style)
    images, cameras, names, stamps, indices, egos = [], [], [], [], [], []
    for index, s in enumerate(tqdm(stations, desc="recording drive", unit="step", disable=not progress)):
        xy, heading = path.at(float(s))
        ego = pose_from_xyz_yaw(xy[0], xy[1], 0.0, heading)
        step = [Camera.from_fov(spec.width, spec.height, spec.fov_deg, ego @ spec.pose_camera_to_ego) for spec in rig]
        images.extend(render(world, step, backend="cpu", outputs=("rgb",), background=background).rgb)
        cameras += step
        names += [spec.sensor_id for spec in rig]
        stamps += [float(s) / speed_mps] * len(rig)
        indices += [index] * len(rig)
        egos += [ego] * len(rig)
    source = {"kind": "generated", "layout": layout.name, "step_m": step_m, "speed_mps": speed_mps,
              "voxel_m": voxel_m, "path_length_m": round(path.length_m, 3),
              "sky_rgb": [float(c) for c in background]}
    return RecordedDrive(images, cameras, names, stamps, indices, egos, source, len(stations))


def record_drive(layout, path_xy_m: np.ndarray, folder: Path | str, *, step_m: float = 4.0, width: int = 160,
                 height: int = 96, voxel_m: float = 0.3, speed_mps: float = 10.0, cache_dir: Path | None = None,
                 progress: bool = False) -> dict:
    """Record a drive of a generated world as a drive log (`render_drive`, then `write_drive_log`); returns a
    summary."""
    drive = render_drive(layout, path_xy_m, step_m=step_m, width=width, height=height, voxel_m=voxel_m,
                         speed_mps=speed_mps, cache_dir=cache_dir, progress=progress)
    write_drive_log(folder, drive.images, drive.cameras, camera_names=drive.camera_names,
                    timestamps_s=drive.timestamps_s, frame_indices=drive.frame_indices,
                    poses_ego_to_world=drive.poses_ego_to_world, source=drive.source)
    return {"log": str(folder), "frames": drive.stations, "views": len(drive.cameras),
            "cameras": len(set(drive.camera_names)), "image_size": [width, height],
            "path_length_m": round(drive.source["path_length_m"], 1),
            "step_m": step_m}
