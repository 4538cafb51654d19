"""build_scene: layout -> occupancy -> Gaussians, cached in a content-addressed folder.

The cache key hashes the layout JSON, the voxel size and the builder version;
a folder holds {scene.ply, layout.json, meta.json}. A build writes into a
temporary folder and renames it into place, so an interrupted build leaves no
half-written entry and the next call simply builds again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from neural_sensor.gaussians import GaussianScene
from neural_sensor.scene.layout import Layout
from neural_sensor.scene.occupancy import build_occupancy
from neural_sensor.scene.to_gaussians import occupancy_to_gaussians, sky_rgb

BUILDER_VERSION = 2  # bump when occupancy or appearance rules change, so old cache entries are not reused


def default_cache_dir() -> Path:
    """$NEURAL_SENSOR_CACHE, else ~/.cache/neural_sensor/scenes."""
    return Path(os.environ.get("NEURAL_SENSOR_CACHE", Path.home() / ".cache" / "neural_sensor")) / "scenes"


def scene_key(layout: Layout, voxel_m: float) -> str:
    payload = json.dumps({"layout": layout.to_dict(), "voxel_m": voxel_m, "builder": BUILDER_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def build_scene(layout: Layout, *, voxel_m: float = 0.3, cache_dir: Path | None = None,
                progress: bool = False) -> tuple[GaussianScene, dict]:
    """The Gaussian scene of a layout, from the cache or built and cached.

    Returns:
        (scene, meta) where meta has key, n_gaussians, voxel_m, build_s, sky_rgb, cached, path.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = scene_key(layout, voxel_m)
    folder = cache_dir / key
    if (folder / "scene.ply").exists() and (folder / "meta.json").exists():
        try:
            meta = json.loads((folder / "meta.json").read_text())
            scene = GaussianScene.load_ply(folder / "scene.ply")
            return scene, {**meta, "cached": True, "path": str(folder)}
        except (ValueError, OSError) as err:  # a damaged entry is derived data: say so and build it again
            print(f"neural-sensor: scene cache entry {folder} is unreadable ({err}); rebuilding it", file=sys.stderr)
            shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    occupancy = build_occupancy(layout, voxel_m=voxel_m, progress=progress)
    scene = occupancy_to_gaussians(occupancy, layout)
    meta = {"key": key, "builder_version": BUILDER_VERSION, "layout_name": layout.name, "voxel_m": voxel_m,
            "n_gaussians": len(scene), "occupancy_shape": list(occupancy.shape),
            "build_s": round(time.perf_counter() - start, 2), "sky_rgb": list(sky_rgb(layout.style))}
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir))
    try:
        scene.save_ply(tmp / "scene.ply")
        (tmp / "layout.json").write_text(layout.to_json())
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same build first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return scene, {**meta, "cached": False, "path": str(folder)}
