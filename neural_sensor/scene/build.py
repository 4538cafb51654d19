"""build_scene: layout -> occupancy -> Gaussians, cached in a SceneCache entry.

The cache key hashes the layout JSON, the voxel size, the builder version, the
appearance and (textured appearance) the hash of the texture files used, so an
entry is reused exactly when the same scene would be built again.
"""

from __future__ import annotations

from pathlib import Path

from neural_sensor.gaussians import GaussianScene
from neural_sensor.reconstruct.cache import SceneCache
from neural_sensor.scene.layout import Layout, marking_cache_inputs
from neural_sensor.scene.occupancy import build_occupancy
from neural_sensor.scene.to_gaussians import APPEARANCES, occupancy_to_gaussians, sky_rgb

BUILDER_VERSION = 3  # bump when occupancy or appearance rules change, so old cache entries are not reused
# 3: textured surfaces (torcs-data photographs), cast shadows, ambient occlusion, sky dome; 2: voxel faces


def build_inputs(layout: Layout, voxel_m: float, appearance: str = "textured") -> dict:
    """Everything the built scene depends on (the cache key is its hash)."""
    if appearance not in APPEARANCES:
        raise ValueError(f"build_scene: appearance must be one of {APPEARANCES}, got {appearance!r}")
    inputs = {"kind": "layout", "layout": layout.to_dict(), "voxel_m": voxel_m, "builder": BUILDER_VERSION,
              "appearance": appearance}
    inputs.update(marking_cache_inputs(layout))  # markings that end as `polyline_tangents` draws them since 2026-12-06
    if appearance == "textured":
        from neural_sensor.scene.textures import load_library

        inputs["textures"] = load_library().hash
    return inputs


def build_scene(layout: Layout, *, voxel_m: float = 0.3, cache_dir: Path | None = None,
                progress: bool = False, appearance: str = "textured") -> tuple[GaussianScene, dict]:
    """The Gaussian scene of a layout, from the cache or built and cached.

    appearance: "textured" (the default; with a sky dome) or "legacy" (builder version 2's look).

    Returns:
        (scene, meta) where meta has key, n_gaussians, voxel_m, build_s, sky_rgb, cached, path, appearance
        and, for the textured appearance, textures (source, hash, licences).
    """
    inputs = build_inputs(layout, voxel_m, appearance)

    def build():
        occupancy = build_occupancy(layout, voxel_m=voxel_m, progress=progress)
        scene = occupancy_to_gaussians(occupancy, layout, appearance=appearance, sky=appearance == "textured",
                                       progress=progress)
        meta = {"builder_version": BUILDER_VERSION, "layout_name": layout.name, "voxel_m": voxel_m,
                "occupancy_shape": list(occupancy.shape), "sky_rgb": list(sky_rgb(layout.style)),
                "appearance": appearance}
        if appearance == "textured":
            from neural_sensor.scene.textures import load_library

            library = load_library()
            meta["textures"] = {"source": library.source, "hash": library.hash, "licences": list(library.licences)}
        return scene, meta, layout.to_json()

    return SceneCache(cache_dir).get_or_build(inputs, build)
