"""A scenario's scene as the plugin is meant to get it: reconstructed from images along a recorded drive.

The builder's scene stands in for the world; the nuScenes-like rig "records" it along
a path (every `step_m`), and the feed-forward reconstructor turns those posed images
into the Gaussian scene the sensor renders from then on. The result is cached in a
SceneCache entry keyed by the layout, the path, the rig resolution and the
checkpoint's hash.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from neural_sensor.camera import Camera
from neural_sensor.checkpoints import default_checkpoint
from neural_sensor.gaussians import GaussianScene
from neural_sensor.reconstruct.cache import SceneCache
from neural_sensor.reconstruct.model import ReconNet, checkpoint_hash, reconstruct
from neural_sensor.render import render
from neural_sensor.rig import nuscenes_like_rig
from neural_sensor.scene.build import build_scene
from neural_sensor.scene.layout import Layout
from neural_sensor.scene.path import Path as Polyline
from neural_sensor.scene.to_gaussians import sky_rgb
from neural_sensor.world import pose_from_xyz_yaw

DEFAULT_CHECKPOINT = default_checkpoint("reconstructor-small")


def reconstructed_scene(layout: Layout, path_xy_m: np.ndarray, *, checkpoint: Path = DEFAULT_CHECKPOINT,
                        step_m: float = 4.0, width: int = 160, height: int = 96, voxel_m: float = 0.3,
                        cache_dir: Path | None = None, progress: bool = False) -> tuple[GaussianScene, dict]:
    """Reconstruct the scene of `layout` from a drive along `path_xy_m` ([P, 2], world FLU metres)."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "model.safetensors").exists():
        raise ValueError(f"reconstruction checkpoint not found at {checkpoint}")
    path = Polyline(np.asarray(path_xy_m, dtype=np.float64))
    inputs = {"kind": "reconstruction", "layout": layout.to_dict(), "path": np.round(path.points, 3).tolist(),
              "step_m": step_m, "size": [width, height], "voxel_m": voxel_m, "checkpoint": checkpoint_hash(checkpoint)}

    def build():
        world, _ = build_scene(layout, voxel_m=voxel_m, cache_dir=cache_dir, progress=progress)
        rig = nuscenes_like_rig(width, height)
        stations = np.arange(0.0, path.length_m + 1e-6, step_m)
        cameras: list[Camera] = []
        images = []
        # progress: one step per recorded timestep (all rig cameras), then one for the network pass + fusion
        with tqdm(total=len(stations) + 1, desc="reconstruction", unit="step", disable=not progress) as bar:
            for s in stations:
                xy, heading = path.at(float(s))
                ego = pose_from_xyz_yaw(xy[0], xy[1], 0.0, heading)
                step = [Camera.from_fov(spec.width, spec.height, spec.fov_deg, ego @ spec.pose_camera_to_ego)
                        for spec in rig]
                images.append(render(world, step, backend="cpu", outputs=("rgb",),
                                     background=sky_rgb(layout.style)).rgb)
                cameras += step
                bar.update(1)
            bar.set_postfix_str(f"network pass over {len(cameras)} views")
            scene = reconstruct(ReconNet.from_pretrained(checkpoint), np.concatenate(images), cameras)
            bar.update(1)
        meta = {"source": "reconstruction", "views": len(cameras), "checkpoint": str(checkpoint),
                "sky_rgb": list(sky_rgb(layout.style))}
        return scene, meta, layout.to_json()

    return SceneCache(cache_dir).get_or_build(inputs, build)
