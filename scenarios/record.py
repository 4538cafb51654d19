"""A run's record: its folder (what may be written where, and how it is put in place) and its pictures.

A record is the files a run writes (`RECORD_FILES`) plus `MANIFEST`, which names them. A run writes into a
temporary folder beside `out_dir` (`.NAME.run-PID-...`) and moves its files into place only when it finishes
(`install_record`); a later run into the same folder replaces only the files the manifest names. `check_out_dir`
says which folders may take a record: new, empty, a record, or a folder holding only folders of records; anything
else is refused by name. A run killed outright leaves its temporary folder, which the next run into the same folder
removes (`remove_stale_temporaries`).

Pictures: `mosaic` tiles the cameras for the video (H.264: no side over `VIDEO_MAX_SIDE_PX`, `check_video_size`),
`label_tiles` names them on the strip.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import threading
from pathlib import Path

import numpy as np

from neural_sensor.host import process_alive, write_problem

MANIFEST = "manifest.json"
RECORD_FILES = ("log.jsonl", "strip.png", "summary.json", "video.mp4",  # what a run writes into its temporary folder
                "prompt.json")  # (a run of a prompt's street: the description it was built from)


def mosaic(frames: list[np.ndarray], columns: int = 3) -> np.ndarray:
    """Tile [H, W, 3] uint8 images into a grid of at most `columns` columns (no more than there are images) with
    even width and height (video encoders need it)."""
    columns = min(columns, len(frames))  # two cameras: two tiles wide, not a third one left black
    h, w = max(f.shape[0] for f in frames), max(f.shape[1] for f in frames)  # cameras may differ in size
    rows = -(-len(frames) // columns)
    out = np.zeros((rows * h + (rows * h) % 2, columns * w + (columns * w) % 2, 3), np.uint8)
    for i, image in enumerate(frames):
        r, c = divmod(i, columns)
        out[r * h:r * h + image.shape[0], c * w:c * w + image.shape[1]] = image
    return out


def label_tiles(image: np.ndarray, names: list[str], tile_width: int) -> np.ndarray:
    """Write each name in the top-left corner of its tile of a side-by-side strip, in place: white text on a black
    box (PIL's default bitmap font), clipped to the tile. image [H, W, 3] uint8; tile i spans columns
    [i * tile_width, (i + 1) * tile_width). Returns image."""
    from PIL import Image, ImageDraw

    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, (image.shape, image.dtype)
    assert tile_width >= 1 and len(names) * tile_width <= image.shape[1], (len(names), tile_width, image.shape)
    for i, name in enumerate(names):
        tile = Image.fromarray(np.ascontiguousarray(image[:, i * tile_width:(i + 1) * tile_width]))
        draw = ImageDraw.Draw(tile)
        left, top, right, bottom = draw.textbbox((3, 2), str(name))
        draw.rectangle((0, 0, right + 2, bottom + 2), fill=(0, 0, 0))
        draw.text((3, 2), str(name), fill=(255, 255, 255))
        image[:, i * tile_width:(i + 1) * tile_width] = np.asarray(tile)
    return image


VIDEO_MAX_SIDE_PX = 16384  # libx264 opens no encoder for a longer side (it then writes an empty file, no error)


def check_video_size(specs: list, columns: int = 3, truth: bool = False) -> tuple[int, int]:
    """(width, height) of the video's mosaic of these cameras (each beside its truth with --truth); ValueError
    where a side passes VIDEO_MAX_SIDE_PX, naming the cameras' size and the ways out."""
    columns = min(columns, len(specs))  # as `mosaic` lays them out
    width = max(spec.width for spec in specs) * (2 if truth else 1)
    height = max(spec.height for spec in specs)
    rows = -(-len(specs) // columns)
    size = (columns * width + (columns * width) % 2, rows * height + (rows * height) % 2)
    if max(size) > VIDEO_MAX_SIDE_PX:
        raise ValueError(f"the video of {len(specs)} cameras of up to {max(s.width for s in specs)}x"
                         f"{height} pixels{', each beside its truth (--truth),' if truth else ''} would be "
                         f"{size[0]}x{size[1]} pixels, and H.264 encodes no side longer than {VIDEO_MAX_SIDE_PX}: "
                         "smaller --width / --height, or --no-video")
    return size


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _record_files(out_dir: Path) -> list[str]:
    """The files a previous run wrote into out_dir, from its manifest ([] where there is none)."""
    manifest = out_dir / MANIFEST
    if manifest.exists():
        try:
            files = json.loads(manifest.read_text())["files"]
            assert isinstance(files, list) and all(isinstance(f, str) and f and "/" not in f and f not in
                                                   (".", "..") for f in files)
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            raise ValueError(f"--out {out_dir}: {MANIFEST} is damaged; refusing to touch the folder") from None
        return files + [MANIFEST]
    return []


def check_out_dir(out_dir: Path) -> Path:
    """The record folder: new, empty, a previous record (it has manifest.json), or a folder holding only folders
    of records (`bench` writes out/bench, `demo` then out/).

    Only the files the previous record lists are ever replaced; a folder holding anything else is refused
    (ValueError naming it and what is in it).
    """
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.parent == out_dir:
        raise ValueError(f"--out {out_dir} is a filesystem root")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"--out {out_dir} exists and is not a folder")
        if not _record_files(out_dir):
            stray = _not_records(out_dir)
            if stray:
                raise ValueError(f"--out {out_dir} holds what no run of this tool wrote there ({stray[0].name}"
                                 f"{f' and {len(stray) - 1} more' if len(stray) > 1 else ''}; a record has "
                                 f"{MANIFEST}); refusing to write into it: choose another folder")
    beside = next(folder for folder in out_dir.parents if folder.exists())  # the run writes next to out_dir first
    problem = write_problem(beside) if beside.is_dir() else f"{beside} is a file"
    if problem:
        raise ValueError(f"--out {out_dir}: nothing can be written in {beside} ({problem})")
    return out_dir


def _not_records(folder: Path, depth: int = 3) -> list[Path]:
    """What in folder is not a record of a run: a file, a link, or a folder that neither is a record (has
    MANIFEST), nor is empty, nor holds only such folders (to depth levels)."""
    stray = []
    for entry in sorted(folder.iterdir()):
        if _is_run_temporary(entry):  # a run into a sub-folder is writing here, or was killed (SIGKILL) doing so
            continue
        if entry.is_symlink() or not entry.is_dir():
            stray.append(entry)
        elif not (entry / MANIFEST).exists() and (depth == 0 or _not_records(entry, depth - 1)):
            stray.append(entry)
    return stray


_RUN_TEMPORARY = re.compile(r"\.(.+)\.run-(\d+)-[a-z0-9_]{8}")  # runner's mkdtemp(prefix=".NAME.run-PID-")


def _is_run_temporary(entry: Path) -> bool:
    """Is entry a run's temporary folder (`.NAME.run-PID-XXXX`, as `runner` makes it beside its out_dir) holding
    nothing but a record's files? A SIGKILLed `bench` leaves one beside out/bench, and `demo` into out/ then read it
    as something no run of this tool wrote. The next run into NAME removes it (`remove_stale_temporaries`)."""
    if not _RUN_TEMPORARY.fullmatch(entry.name) or entry.is_symlink() or not entry.is_dir():
        return False
    return all(item.is_file() and item.name in RECORD_FILES for item in entry.iterdir())


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Remove the temporary folders of earlier runs into out_dir that were killed outright (SIGKILL, a power cut:
    no handler ran): `.NAME.run-PID-XXXX` beside out_dir whose PID is no longer a process and that hold nothing
    but a record's files. Returns what was removed."""
    removed = []
    for folder in out_dir.parent.glob(f".{out_dir.name}.run-*-*"):
        pid = folder.name[len(f".{out_dir.name}.run-"):].split("-", 1)[0]
        if not (pid.isdigit() and folder.is_dir() and not folder.is_symlink()) or process_alive(int(pid)):
            continue
        if all(entry.is_file() and entry.name in RECORD_FILES for entry in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def install_record(tmp: Path, out_dir: Path, files: list[str]) -> None:
    """Move the new record's files from tmp into out_dir, replacing only the previous record's files."""
    for name in files:
        target = out_dir / name
        if target.is_dir() and not target.is_symlink():
            raise ValueError(f"--out {out_dir}: {name} is a folder; refusing to replace it with a file")
    out_dir.mkdir(parents=True, exist_ok=True)  # a new folder as the umask makes it; an existing one keeps its mode
    folder_fd = os.open(out_dir, os.O_RDONLY)
    try:  # runs finishing into one folder at once install one after the other (the later record stays, whole;
        # two threads had raced on one manifest's temporary file: FileNotFoundError)
        try:
            fcntl.flock(folder_fd, fcntl.LOCK_EX)
        except OSError as err:  # a filesystem without locks (NFS without lockd): installed unguarded (a run had
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # failed after all
                raise  # its work, "[Errno 37] No locks available", its record lost: a new user's finding)
        old = set(_record_files(out_dir))
        # a manifest naming old and new files first: an interruption from here on leaves a folder that the
        # next run still recognises (and cleans) as a record
        _write_json_atomic(out_dir / MANIFEST, {"tool": "neural-sensor",
                                                "files": sorted((old | set(files)) - {MANIFEST})})
        for name in files:
            os.replace(tmp / name, out_dir / name)
        for name in old - set(files) - {MANIFEST}:
            (out_dir / name).unlink(missing_ok=True)
        _write_json_atomic(out_dir / MANIFEST, {"tool": "neural-sensor", "files": sorted(files)})
    finally:
        os.close(folder_fd)  # (releases the lock)
    shutil.rmtree(tmp, ignore_errors=True)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)

