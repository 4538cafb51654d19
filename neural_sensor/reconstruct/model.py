"""ReconNet: a small feed-forward reconstructor (MVSplat / DrivingForward family, single-view depth).

Each context view goes through a CNN encoder (with pixel-coordinate channels) to
features at half resolution; per feature pixel the heads predict depth as a
softmax over inverse-depth bins, opacity, two in-plane scales and a thickness,
colour (SH degree 0) and semantic logits. Gaussians are unprojected along the
pixel rays into the world, oriented with the camera (in-plane axes along the
image axes), and the views are fused (`neural_sensor.reconstruct.fuse`): Gaussians in
space other views see through are carved away, near-duplicates merged, and a budget
caps the count, so a long drive neither fogs up nor grows without bound.

Self-describing: `save_pretrained(dir)` writes config.json + model.safetensors,
`from_pretrained(dir)` reads them back (no pickle).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from neural_sensor.camera import Camera
from neural_sensor.gaussians import GaussianScene, rotmat_to_quat
from neural_sensor.labels import CityObjectLabel
from neural_sensor.reconstruct.fuse import FusionConfig, fuse_views
from neural_sensor.reconstruct.sky import fit_sky_dome, without_sky
from neural_sensor.sh import SH_C0

NUM_CLASSES = 29  # CARLA CityObjectLabel ids 0..28
SKY = int(CityObjectLabel.SKY)


@dataclass
class ReconConfig:
    """Constructor arguments, stored in config.json."""

    channels: int = 48  # encoder width
    depth_bins: int = 32  # inverse-depth bins between min_depth_m and max_depth_m
    min_depth_m: float = 1.0
    max_depth_m: float = 80.0
    num_classes: int = NUM_CLASSES
    # the semantic head's SKY logit was trained against the ground-truth sky: reconstruct() then draws the sky as a
    # fitted far dome (neural_sensor/reconstruct/sky.py) instead of Gaussians at a predicted depth
    sky_head: bool = False


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())


class ReconNet(nn.Module):
    """See the module docstring."""

    def __init__(self, config: ReconConfig | None = None):
        super().__init__()
        self.config = config or ReconConfig()
        c = self.config.channels
        self.stem = _block(3 + 2, c, stride=2)  # rgb + (u, v) coordinates -> 1/2 resolution
        self.down = nn.Sequential(_block(c, c), _block(c, 2 * c, stride=2), _block(2 * c, 2 * c))  # 1/4
        self.fuse = nn.Sequential(_block(3 * c, c), _block(c, c))
        self.head = nn.Conv2d(c, self.config.depth_bins + 1 + 3 + 3 + self.config.num_classes, 1)
        inv = torch.linspace(1.0 / self.config.max_depth_m, 1.0 / self.config.min_depth_m, self.config.depth_bins)
        self.register_buffer("inverse_depths", inv, persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-pixel Gaussian parameters at half resolution.

        Args:
            images: [V, 3, H, W] RGB in [0, 1], H and W divisible by 4.
        Returns:
            depth [V, h, w] metres, opacity [V, h, w], scale_px [V, 3, h, w] (in-plane x, y in half-res
            pixels, thickness as a fraction of them), rgb [V, 3, h, w], semantic_logits [V, K, h, w].
        """
        v, ch, height, width = images.shape
        assert ch == 3 and height % 4 == 0 and width % 4 == 0, images.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        coords = torch.stack([xs, ys]).expand(v, 2, height, width)
        half = self.stem(torch.cat([images * 2.0 - 1.0, coords], dim=1))
        quarter = self.down(half)
        up = nn.functional.interpolate(quarter, size=half.shape[-2:], mode="bilinear", align_corners=False)
        feat = self.fuse(torch.cat([half, up], dim=1))
        out = self.head(feat)
        d = self.config.depth_bins
        probs = torch.softmax(out[:, :d], dim=1)
        inverse_depth = (probs * self.inverse_depths[None, :, None, None]).sum(dim=1)
        return {
            "depth": 1.0 / inverse_depth,
            "opacity": torch.sigmoid(out[:, d]),
            "scale_px": torch.nn.functional.softplus(out[:, d + 1:d + 4]) + 0.1,
            "rgb": torch.sigmoid(out[:, d + 4:d + 7]),
            "semantic_logits": out[:, d + 7:],
        }

    # ------------------------------------------------------------- checkpoints
    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"class": "ReconNet", **asdict(self.config)}, indent=1))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(folder / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "ReconNet":
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{folder}: not a ReconNet checkpoint ({err})") from None
        if config.pop("class", None) != "ReconNet":
            raise ValueError(f"{folder}: config.json is not a ReconNet config")
        model = cls(ReconConfig(**config))
        try:
            state = load_file(str(folder / "model.safetensors"))
            model.load_state_dict(state)
        except (OSError, RuntimeError, ValueError) as err:
            raise ValueError(f"{folder}: model.safetensors does not load into ReconNet ({err})") from None
        return model.eval()


def camera_tensors(cameras: list[Camera], height: int, width: int):
    """Per camera: pose_camera_to_world [V, 4, 4] and K [V, 3, 3] rescaled to the network's half resolution."""
    poses = torch.tensor(np.stack([c.pose_camera_to_world for c in cameras]), dtype=torch.float32)
    K = torch.tensor(np.stack([c.K for c in cameras]), dtype=torch.float32).clone()
    K[:, 0] *= width / cameras[0].width
    K[:, 1] *= height / cameras[0].height
    return poses, K


def gaussians_from_prediction(pred: dict[str, torch.Tensor], poses: torch.Tensor, K: torch.Tensor):
    """Unproject per-pixel predictions into world-frame Gaussian tensors (differentiable).

    Args:
        pred: ReconNet output for V views at h x w.
        poses: [V, 4, 4] pose_camera_to_world; K: [V, 3, 3] intrinsics at h x w.
    Returns:
        means [M, 3], quats [M, 4], scales [M, 3], opacities [M], sh [M, 1, 3], semantic_logits [M, K].
    """
    v, h, w = pred["depth"].shape
    device = pred["depth"].device
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device) + 0.5,
                            torch.arange(w, dtype=torch.float32, device=device) + 0.5, indexing="ij")
    fx, fy, cx, cy = K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]
    depth = pred["depth"]
    x = (xs[None] - cx[:, None, None]) / fx[:, None, None] * depth
    y = (ys[None] - cy[:, None, None]) / fy[:, None, None] * depth
    points_cam = torch.stack([x, y, depth], dim=-1).reshape(v, -1, 3)
    rot, trans = poses[:, :3, :3], poses[:, :3, 3]
    means = points_cam @ rot.transpose(1, 2) + trans[:, None, :]
    # in-plane extents: a half-res pixel at this depth is depth / f metres wide
    pixel_m = (depth / fx[:, None, None]).reshape(v, -1)
    s = pred["scale_px"].permute(0, 2, 3, 1).reshape(v, -1, 3)
    scales = torch.stack([s[..., 0] * pixel_m, s[..., 1] * pixel_m, 0.2 * s[..., 2] * pixel_m], dim=-1)
    quats = torch.tensor(np.stack([rotmat_to_quat(r) for r in rot.detach().cpu().numpy()]), dtype=torch.float32,
                         device=device)
    quats = quats[:, None, :].expand(v, h * w, 4)
    rgb = pred["rgb"].permute(0, 2, 3, 1).reshape(v, -1, 3)
    sem = pred["semantic_logits"].permute(0, 2, 3, 1).reshape(v, h * w, -1)
    return (means.reshape(-1, 3), quats.reshape(-1, 4), scales.reshape(-1, 3), pred["opacity"].reshape(-1),
            ((rgb - 0.5) / SH_C0).reshape(-1, 1, 3), sem.reshape(-1, sem.shape[-1]))


FUSIONS = ("carve", "merge")  # reconstruct()'s fusion of the views: see neural_sensor/reconstruct/fuse.py
LEGACY_MERGE_CELL_M = 0.15  # the "merge" fusion's cell, as reconstruct() merged before carving existed


@torch.no_grad()
def predict_views(model: ReconNet, images: np.ndarray, cameras: list[Camera]) -> tuple[GaussianScene, np.ndarray]:
    """Posed images -> every view's pixel-aligned Gaussians and depth map, in one forward pass (no fusion).

    Args:
        model: a ReconNet.
        images: [V, H, W, 3] float RGB in [0, 1]; H, W divisible by 4.
        cameras: V Cameras (the images' poses and intrinsics).
    Returns:
        (per_view, depths): per_view holds V * h * w Gaussians (h, w = H / 2, W / 2), view-major and row-major
        over each view's pixels, as `fuse.fuse_views` takes them; depths [V, h, w] float32 metres (camera z).
        With `config.sky_head`, the Gaussians of sky pixels carry the label SKY (CityObjectLabel).
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3 or len(cameras) != images.shape[0]:
        raise ValueError(f"reconstruct: images must be [V, H, W, 3] with one camera each, got {images.shape} "
                         f"and {len(cameras)} cameras")
    model.eval()
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    pred = model(tensor)
    h, w = pred["depth"].shape[-2:]
    poses, K = camera_tensors(cameras, h, w)
    means, quats, scales, opac, sh, sem = (t.numpy() for t in gaussians_from_prediction(pred, poses, K))
    labels = sem.argmax(axis=1).astype(np.uint8)
    if model.config.sky_head:  # the SKY logit alone decides sky (the other classes' logits are not trained)
        sky = sem[:, SKY] > 0.0
        labels = np.where(sky, SKY, np.where(labels == SKY, 0, labels)).astype(np.uint8)
    per_view = GaussianScene(means.astype(np.float32), quats.astype(np.float32),
                             np.maximum(scales, 1e-5).astype(np.float32), np.clip(opac, 0, 1).astype(np.float32),
                             sh.astype(np.float32), labels)
    return per_view, pred["depth"].numpy().astype(np.float32)


def reconstruct(model: ReconNet, images: np.ndarray, cameras: list[Camera], *, merge: bool = True,
                merge_cell_m: float | None = None, min_opacity: float = 0.02, fusion: str = "carve",
                fusion_config: FusionConfig | None = None) -> GaussianScene:
    """Posed images -> GaussianScene (world frame), in one forward pass and a fusion of the views.

    Args:
        model: a ReconNet.
        images: [V, H, W, 3] float RGB in [0, 1]; H, W divisible by 4.
        cameras: V Cameras (the images' poses and intrinsics).
        merge: drop near-duplicates across views: one Gaussian (the most opaque) per merge_cell_m cube.
        merge_cell_m: that cube's edge; None: 0.25 m for "carve" (FusionConfig's default, measured as good as
            0.15 m with 18 % fewer Gaussians), 0.15 m for "merge" (as before).
        min_opacity: Gaussians fainter than this are dropped.
        fusion: "carve" (the default: cross-view free-space carving, then the merge and the Gaussian
            budget of `fusion_config`, see neural_sensor/reconstruct/fuse.py) or "merge" (the merge alone,
            the fusion before carving existed).
        fusion_config: options of the "carve" fusion (min_opacity, and merge_cell_m unless None, are taken from
            the arguments above; merge=False sets merge_cell_m to 0).
    """
    if fusion not in FUSIONS:
        raise ValueError(f"reconstruct: fusion must be one of {FUSIONS}, got {fusion!r}")
    per_view, depths = predict_views(model, images, cameras)
    dome = None
    if model.config.sky_head:
        sky = (per_view.labels == SKY).reshape(depths.shape)
        v, h, w = depths.shape
        half = np.asarray(images, np.float32)[:, :2 * h, :2 * w].reshape(v, h, 2, w, 2, 3).mean(axis=(2, 4))
        dome = fit_sky_dome(half, sky, cameras)
        opacities, depths = without_sky(per_view.opacities, depths, sky)
        per_view = per_view.replace(opacities=opacities)
    config = fusion_config or FusionConfig()
    if fusion == "merge":
        config = replace(config, carve_views=0, hidden_views=0, min_consistent=0, budget=0)
    if merge_cell_m is None:
        merge_cell_m = LEGACY_MERGE_CELL_M if fusion == "merge" else config.merge_cell_m
    config = replace(config, merge_cell_m=merge_cell_m if merge else 0.0, min_opacity=min_opacity)
    fused = fuse_views(per_view, depths, cameras, config)
    return fused if dome is None else GaussianScene.concat([fused, dome])


def checkpoint_hash(folder: str | Path) -> str:
    """sha256 of a checkpoint's config.json and weights (the SceneCache key of its reconstructions)."""
    import hashlib

    folder = Path(folder)
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:16]
