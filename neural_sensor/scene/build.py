"""build_scene: layout -> occupancy -> Gaussians, cached in a SceneCache entry.

The cache key hashes the layout JSON, the voxel size and the builder version, so
an entry is reused exactly when the same scene would be built again.
"""

from __future__ import annotations

from pathlib import Path

from neural_sensor.gaussians import GaussianScene
from neural_sensor.reconstruct.cache import SceneCache
from neural_sensor.scene.layout import Layout
from neural_sensor.scene.occupancy import build_occupancy
from neural_sensor.scene.to_gaussians import occupancy_to_gaussians, sky_rgb

BUILDER_VERSION = 2  # bump when occupancy or appearance rules change, so old cache entries are not reused


def build_scene(layout: Layout, *, voxel_m: float = 0.3, cache_dir: Path | None = None,
                progress: bool = False) -> tuple[GaussianScene, dict]:
    """The Gaussian scene of a layout, from the cache or built and cached.

    Returns:
        (scene, meta) where meta has key, n_gaussians, voxel_m, build_s, sky_rgb, cached, path.
    """
    inputs = {"kind": "layout", "layout": layout.to_dict(), "voxel_m": voxel_m, "builder": BUILDER_VERSION}

    def build():
        occupancy = build_occupancy(layout, voxel_m=voxel_m, progress=progress)
        scene = occupancy_to_gaussians(occupancy, layout)
        meta = {"builder_version": BUILDER_VERSION, "layout_name": layout.name, "voxel_m": voxel_m,
                "occupancy_shape": list(occupancy.shape), "sky_rgb": list(sky_rgb(layout.style))}
        return scene, meta, layout.to_json()

    return SceneCache(cache_dir).get_or_build(inputs, build)
