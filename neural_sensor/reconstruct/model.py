"""ReconNet: a small feed-forward reconstructor (MVSplat / DrivingForward family).

Each context view goes through a CNN encoder (with pixel-coordinate channels) to
features at half resolution; per feature pixel the heads predict depth as a
softmax over inverse-depth bins, opacity, two in-plane scales and a thickness,
colour (SH degree 0) and semantic logits. With `config.cost_volume` the depth is
multi-view, as in MVSplat: matching features at quarter resolution are plane-swept
into each view's neighbours (`neighbour_views`: the nearest other views that look the
same way, i.e. the same camera one station back and ahead on a drive) at every depth
bin, and the correlations (a cost volume [V, D, h, w]) feed the depth logits directly
and the decoder; a view without neighbours falls back to its single-view cues. Gaussians are unprojected along the
pixel rays into the world, oriented with the camera (in-plane axes along the
image axes), and the views are fused (`neural_sensor.reconstruct.fuse`): Gaussians in
space other views see through are carved away, near-duplicates merged, and a budget
caps the count, so a long drive neither fogs up nor grows without bound.

Self-describing: `save_pretrained(dir)` writes config.json + model.safetensors,
`from_pretrained(dir)` reads them back (no pickle).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from neural_sensor.camera import Camera
from neural_sensor.gaussians import GaussianScene, rotmat_to_quat
from neural_sensor.labels import CityObjectLabel
from neural_sensor.reconstruct.fuse import FusionConfig, fuse_views
from neural_sensor.reconstruct.photometric import DepthRefineConfig, move_along_rays, refine_depths
from neural_sensor.reconstruct.sky import fit_sky_dome, without_sky
from neural_sensor.sh import SH_C0

NUM_CLASSES = 29  # CARLA CityObjectLabel ids 0..28
SKY = int(CityObjectLabel.SKY)
# a pixel is sky where its SKY logit exceeds this (1.0: p = 0.73), not where it exceeds 0 (p = 0.5): the two errors do
# not cost the same. A surface called sky gets no Gaussian and its ray carves every Gaussian in front of the 1 km dome,
# the surface's own from other views included (a hole showing the dome); sky called a surface only adds Gaussians
# where the network put its depth (a halo). Chosen on the six tuning held-out worlds against 0, 2, 3 and 5
# (docs/results.md, "2026-12-05 (seventh session)"); the sky head's training is unchanged (logit 0 is its decision
# boundary there).
SKY_LOGIT_THRESHOLD = 1.0


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
    # multi-view depth: a plane-sweep cost volume over each view's neighbour views (see the module docstring)
    cost_volume: bool = False
    match_channels: int = 16  # width of the matching features (L2-normalised; correlation = cosine)
    neighbours: int = 2  # neighbour views per view
    # two more input channels: each pixel's camera ray (x / z, y / z from K), so the depth can follow the
    # intrinsics (the same image row is a different ground distance behind a 110 degree lens than a 70 degree one)
    ray_inputs: bool = False


INFERENCE_CHUNK = 12  # views per forward pass in predict_views (demo drive, 306 views: 12 -> 4.4 s, 30 -> 5.1 s, all -> 9.5 s)
COST_VOLUME_LAYERS = ("match", "cost_decoder", "cost_logits")  # ReconNet's modules that only a cost volume has


def _check_cost_volume_inputs(v: int, poses, K, neighbours) -> None:
    """A cost-volume net's forward needs every view's pose [V, 4, 4], K [V, 3, 3] and neighbours [V, N]."""
    if poses is None or K is None or neighbours is None:
        raise ValueError("ReconNet: a cost-volume checkpoint needs the views' poses, K and neighbours")
    assert poses.shape == (v, 4, 4) and K.shape == (v, 3, 3) and neighbours.shape[0] == v, \
        (poses.shape, K.shape, neighbours.shape)


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())


class ReconNet(nn.Module):
    """See the module docstring."""

    def __init__(self, config: ReconConfig | None = None):
        super().__init__()
        self.config = config or ReconConfig()
        c = self.config.channels
        # rgb + (u, v) coordinates (+ the camera ray) -> 1/2 resolution
        self.stem = _block(3 + 2 + (2 if self.config.ray_inputs else 0), c, stride=2)
        self.down = nn.Sequential(_block(c, c), _block(c, 2 * c, stride=2), _block(2 * c, 2 * c))  # 1/4
        self.fuse = nn.Sequential(_block(3 * c, c), _block(c, c))
        self.head = nn.Conv2d(c, self.config.depth_bins + 1 + 3 + 3 + self.config.num_classes, 1)
        inv = torch.linspace(1.0 / self.config.max_depth_m, 1.0 / self.config.min_depth_m, self.config.depth_bins)
        self.register_buffer("inverse_depths", inv, persistent=False)
        if self.config.cost_volume:
            d = self.config.depth_bins
            self.match = nn.Conv2d(2 * c, self.config.match_channels, 1)
            # the cost volume (+ the fraction of its samples that fell inside a neighbour) into the decoder and,
            # directly, into the depth logits; both zero at initialisation, so a single-view net extended with
            # `extended` starts out predicting exactly what it did
            self.cost_decoder = nn.Sequential(_block(d + 1, c), nn.Conv2d(c, c, 3, 1, 1))
            self.cost_logits = nn.Conv2d(d + 1, d, 3, 1, 1)
            for conv in (self.cost_decoder[-1], self.cost_logits):
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)

    def forward(self, images: torch.Tensor, poses: torch.Tensor | None = None, K: torch.Tensor | None = None,
                neighbours: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-pixel Gaussian parameters at half resolution.

        Args:
            images: [V, 3, H, W] RGB in [0, 1], H and W divisible by 4.
            poses, K, neighbours: [V, 4, 4] pose_camera_to_world, [V, 3, 3] intrinsics at H x W, [V, N] long
                indices of each view's neighbour views (-1: none; `neighbour_views`): all three required with
                `config.cost_volume`, K with `config.ray_inputs`, else ignored (`view_inputs` makes them).
        Returns:
            depth [V, h, w] metres, opacity [V, h, w], scale_px [V, 3, h, w] (in-plane x, y in half-res
            pixels, thickness as a fraction of them), rgb [V, 3, h, w], semantic_logits [V, K, h, w].
        """
        v, ch, height, width = images.shape
        assert ch == 3 and height % 4 == 0 and width % 4 == 0, images.shape
        half, quarter = self._trunk(images, K)
        cost = None
        if self.config.cost_volume:
            _check_cost_volume_inputs(v, poses, K, neighbours)
            cost = self._cost(self._matching(quarter), poses, self._quarter_K(K, quarter, height, width), neighbours)
        return self._decode(half, quarter, cost)

    def forward_chunked(self, images: torch.Tensor, poses: torch.Tensor | None = None, K: torch.Tensor | None = None,
                        neighbours: torch.Tensor | None = None, chunk: int = 32) -> dict[str, torch.Tensor]:
        """`forward` for many views (inference), `chunk` views at a time: the same outputs (to float rounding).

        Every layer but the cost volume works on one view, and a few dozen views' activations stay in the CPU's
        caches (306 views of the demo drive: 9.5 s in one batch, 4.4 s in chunks of 12). The cost volume needs
        each view's neighbours: a first pass makes every view's quarter-resolution features (kept) and matching
        features, a second recomputes the half-resolution stem chunk by chunk, sweeps against every view's
        matching features and decodes. Arguments and outputs as `forward`.
        """
        v, ch, height, width = images.shape
        assert ch == 3 and height % 4 == 0 and width % 4 == 0 and chunk >= 1, (images.shape, chunk)
        if v <= chunk:  # one chunk: exactly forward
            return self(images, poses, K, neighbours)
        spans = [(lo, min(v, lo + chunk)) for lo in range(0, v, chunk)]

        def view_K(lo, hi):
            return None if K is None else K[lo:hi]

        if not self.config.cost_volume:
            parts = [self(images[lo:hi], K=view_K(lo, hi)) for lo, hi in spans]
            return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
        _check_cost_volume_inputs(v, poses, K, neighbours)
        quarters = [self._trunk(images[lo:hi], view_K(lo, hi))[1] for lo, hi in spans]
        matching = torch.cat([self._matching(quarter) for quarter in quarters])
        K_quarter = self._quarter_K(K, matching, height, width)
        parts = []
        for (lo, hi), quarter in zip(spans, quarters):
            half = self._stem(images[lo:hi], view_K(lo, hi))
            cost = self._cost(matching, poses, K_quarter, neighbours, views=torch.arange(lo, hi))
            parts.append(self._decode(half, quarter, cost))
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}

    def _trunk(self, images: torch.Tensor, K: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per view: the half- and quarter-resolution features of images [V, 3, H, W] (K [V, 3, 3] at H x W)."""
        half = self._stem(images, K)
        return half, self.down(half)

    def _stem(self, images: torch.Tensor, K: torch.Tensor | None) -> torch.Tensor:
        """Per view: the half-resolution features of images [V, 3, H, W] (K [V, 3, 3] at H x W)."""
        v, _, height, width = images.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        coords = torch.stack([xs, ys]).expand(v, 2, height, width).to(images.device)
        if self.config.ray_inputs:
            if K is None:
                raise ValueError("ReconNet: a checkpoint with ray inputs needs the views' K")
            coords = torch.cat([coords, pixel_rays(K.to(images.device, images.dtype), height, width)], dim=1)
        return self.stem(torch.cat([images * 2.0 - 1.0, coords], dim=1))

    def _cost(self, matching: torch.Tensor, poses: torch.Tensor, K_quarter: torch.Tensor, neighbours: torch.Tensor,
              views: torch.Tensor | None = None) -> torch.Tensor:
        """`plane_sweep_cost` over the depth bins, in float32 even under a bfloat16 autocast (`predict_views`):
        swept in bfloat16, the demo drive's depths moved 5.6 % from float32's at the 90th percentile, with the
        sweep (and its intrinsics, `_quarter_K`) in float32 and the convolutions in bfloat16 0.5 % (AMD EPYC Zen 4,
        2026-12-04)."""
        with torch.autocast(matching.device.type, enabled=False):
            return plane_sweep_cost(matching.float(), poses.float(), K_quarter.float(), neighbours,
                                    (1.0 / self.inverse_depths).float(), views=views)

    def _matching(self, quarter: torch.Tensor) -> torch.Tensor:
        """[V, match_channels, h/2, w/2] L2-normalised matching features of the cost volume."""
        return nn.functional.normalize(self.match(quarter), dim=1)

    @staticmethod
    def _quarter_K(K: torch.Tensor, quarter: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """K [V, 3, 3] at height x width rescaled to the quarter-resolution features' grid, float32 (the cost
        volume's sweep is float32, `_cost`: under a bfloat16 autocast the features are bfloat16, and K in their dtype
        would lose its focal lengths' third digit)."""
        q_h, q_w = quarter.shape[-2:]
        K_quarter = K.to(torch.float32).clone()
        K_quarter[:, 0] *= q_w / width
        K_quarter[:, 1] *= q_h / height
        return K_quarter

    def _decode(self, half: torch.Tensor, quarter: torch.Tensor, cost: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The per-pixel outputs of `forward` from the trunk's features and the cost volume (None: none)."""
        up = nn.functional.interpolate(quarter, size=half.shape[-2:], mode="bilinear", align_corners=False)
        feat = self.fuse(torch.cat([half, up], dim=1))
        cost_logits = None
        if cost is not None:
            cost = nn.functional.interpolate(cost, size=half.shape[-2:], mode="bilinear", align_corners=False)
            feat = feat + self.cost_decoder(cost)
            cost_logits = self.cost_logits(cost)
        out = self.head(feat)
        d = self.config.depth_bins
        logits = out[:, :d] if cost_logits is None else out[:, :d] + cost_logits
        probs = torch.softmax(logits, dim=1)
        inverse_depth = (probs * self.inverse_depths[None, :, None, None]).sum(dim=1)
        return {
            "depth": 1.0 / inverse_depth,
            "opacity": torch.sigmoid(out[:, d]),
            "scale_px": torch.nn.functional.softplus(out[:, d + 1:d + 4]) + 0.1,
            "rgb": torch.sigmoid(out[:, d + 4:d + 7]),
            "semantic_logits": out[:, d + 7:],
        }

    def extended(self, cost_volume: bool = False, ray_inputs: bool = False) -> "ReconNet":
        """A copy of this net with a cost volume and / or ray inputs added (see ReconConfig): the same weights,
        the new layers' outputs and the new input channels' weights zeroed, so it predicts exactly what this one
        does until trained."""
        if (cost_volume and self.config.cost_volume) or (ray_inputs and self.config.ray_inputs):
            raise ValueError("ReconNet.extended: the net already has what was asked for")
        config = replace(self.config, cost_volume=self.config.cost_volume or cost_volume,
                         ray_inputs=self.config.ray_inputs or ray_inputs)
        model = ReconNet(config)
        state = dict(self.state_dict())
        if ray_inputs:
            old = state["stem.0.weight"]
            state["stem.0.weight"] = torch.cat([old, old.new_zeros(old.shape[0], 2, *old.shape[2:])], dim=1)
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all(k.split(".")[0] in COST_VOLUME_LAYERS for k in missing)
        return model.train(self.training)

    # ------------------------------------------------------------- checkpoints
    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # each file replaced whole, readable by all (safetensors writes 0600): a kill mid-save leaves the last one
        tmp = folder / f".model.safetensors.{os.getpid()}"
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(tmp))
        tmp.chmod(0o644)
        tmp.replace(folder / "model.safetensors")
        tmp = folder / f".config.json.{os.getpid()}"
        tmp.write_text(json.dumps({"class": "ReconNet", **asdict(self.config)}, indent=1))
        tmp.replace(folder / "config.json")

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
        except Exception as err:  # noqa: BLE001 -- safetensors' own SafetensorError for a damaged file among them
            raise ValueError(f"{folder}: model.safetensors does not load into ReconNet ({type(err).__name__}: "
                             f"{err})") from None
        return model.eval()


def neighbour_views(poses_camera_to_world: np.ndarray, count: int, max_angle_deg: float = 40.0,
                    min_distance_m: float = 0.5, max_distance_m: float = 12.0) -> np.ndarray:
    """Each view's `count` nearest other views that look the same way (the cost volume's matching partners).

    Args:
        poses_camera_to_world: [V, 4, 4].
        count: neighbours per view.
        max_angle_deg: largest angle between the two optical axes; min/max_distance_m: camera-centre distance
            (too close: no parallax; too far: little overlap).
    Returns:
        [V, count] int64 view indices, nearest first; -1 where fewer qualify.
    """
    poses = np.asarray(poses_camera_to_world, dtype=np.float64)
    assert poses.ndim == 3 and poses.shape[1:] == (4, 4), poses.shape
    centres, axes = poses[:, :3, 3], poses[:, :3, 2]
    distance = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    aligned = (axes @ axes.T) >= np.cos(np.radians(max_angle_deg))
    ok = aligned & (distance >= min_distance_m) & (distance <= max_distance_m)
    np.fill_diagonal(ok, False)
    order = np.argsort(np.where(ok, distance, np.inf), axis=1, kind="stable")[:, :count]
    found = np.take_along_axis(ok, order, axis=1)
    result = np.where(found, order, -1).astype(np.int64)
    if result.shape[1] < count:
        result = np.pad(result, ((0, 0), (0, count - result.shape[1])), constant_values=-1)
    return result


def plane_sweep_cost(features: torch.Tensor, poses: torch.Tensor, K: torch.Tensor, neighbours: torch.Tensor,
                     depths_m: torch.Tensor, chunk: int = 32, views: torch.Tensor | None = None) -> torch.Tensor:
    """Plane-sweep correlation of every view's features with its neighbours' (MVSplat's cost volume).

    Args:
        features: [V, C, h, w] matching features (L2-normalised over C: the correlation is a cosine).
        poses: [V, 4, 4] pose_camera_to_world; K: [V, 3, 3] intrinsics at h x w (pixel centres at i + 0.5).
        neighbours: [V, N] long neighbour view indices, -1 for none.
        depths_m: [D] camera-z depths of the sweep's planes.
        chunk: views per batch of samples (bounds memory on long drives).
        views: [B] long, the views to sweep (their neighbours are any of the V); None: all V.
    Returns:
        [V (or B), D + 1, h, w]: per depth plane, the mean over neighbours that see the point of the cosine between the
        view's feature and the neighbour's, sampled where the pixel's ray meets the plane (0 where none sees it);
        the last channel, the fraction of (neighbour, plane) samples that landed inside a neighbour.
    """
    v, c, h, w = features.shape
    n = neighbours.shape[1]
    dn = depths_m.shape[0]
    assert poses.shape == (v, 4, 4) and K.shape == (v, 3, 3) and neighbours.shape == (v, n), \
        (poses.shape, K.shape, neighbours.shape)
    neighbours = neighbours.to(features.device)
    world_to_camera = torch.linalg.inv(poses)
    views = torch.arange(v, device=features.device) if views is None else views.to(features.device)
    out = []
    for lo in range(0, len(views), chunk):
        idx = views[lo:lo + chunk]
        nb = neighbours[idx]  # [B, N]
        present = nb >= 0
        nb_safe = nb.clamp_min(0)
        xy = pixel_rays(K[idx], h, w).flatten(2).transpose(1, 2)  # [B, P, 2]
        rays = torch.cat([xy, torch.ones_like(xy[..., :1])], dim=-1)  # [B, P, 3] camera-frame rays with z = 1
        relative = world_to_camera[nb_safe] @ poses[idx][:, None]  # [B, N, 4, 4] this camera -> neighbour's
        direction = torch.einsum("bnij,bpj->bnpi", relative[..., :3, :3], rays)  # [B, N, P, 3]
        points = depths_m[None, None, :, None, None] * direction[:, :, None] + relative[:, :, None, None, :3, 3]
        projected = torch.einsum("bnij,bndpj->bndpi", K[nb_safe], points)  # [B, N, D, P, 3] neighbour pixels
        z = projected[..., 2]
        front = z > 1e-3
        u = projected[..., 0] / z.clamp_min(1e-3)
        vv = projected[..., 1] / z.clamp_min(1e-3)
        inside = front & (u >= 0) & (u <= w) & (vv >= 0) & (vv <= h) & present[:, :, None, None]
        grid = torch.stack([u / w * 2 - 1, vv / h * 2 - 1], dim=-1)  # [B, N, D, P, 2]
        grid = torch.where(inside[..., None], grid, torch.full_like(grid, 2.0))  # outside: sampled as zeros
        sampled = nn.functional.grid_sample(features[nb_safe.reshape(-1)],
                                            grid.reshape(len(idx) * n, dn * h, w, 2), mode="bilinear",
                                            padding_mode="zeros", align_corners=False)  # [B*N, C, D*h, w]
        sampled = sampled.reshape(len(idx), n, c, dn, h, w)
        correlation = (sampled * features[idx][:, None, :, None]).sum(dim=2)  # [B, N, D, h, w]
        seen = inside.reshape(len(idx), n, dn, h, w).to(features.dtype)
        count = seen.sum(dim=1)
        cost = (correlation * seen).sum(dim=1) / count.clamp_min(1.0)
        coverage = seen.mean(dim=(1, 2))[:, None]
        out.append(torch.cat([cost, coverage], dim=1))
    return torch.cat(out, dim=0)


def view_inputs(model: ReconNet, cameras: list[Camera], height: int, width: int,
                device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """ReconNet.forward's keyword arguments for views of these cameras at height x width: poses, K and
    neighbours for a cost-volume net, K for one with ray inputs, nothing for a plain single-view one."""
    if not (model.config.cost_volume or model.config.ray_inputs):
        return {}
    poses, K = camera_tensors(cameras, height, width)
    if not model.config.cost_volume:
        return {"K": K.to(device)}
    neighbours = torch.from_numpy(neighbour_views(poses.numpy(), model.config.neighbours))
    return {"poses": poses.to(device), "K": K.to(device), "neighbours": neighbours.to(device)}


def pixel_rays(K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[V, 2, H, W] each pixel centre's camera ray as (x / z, y / z), from K [V, 3, 3] at H x W."""
    assert K.ndim == 3 and K.shape[1:] == (3, 3), K.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=K.dtype, device=K.device) + 0.5,
                            torch.arange(width, dtype=K.dtype, device=K.device) + 0.5, indexing="ij")
    x = (xs[None] - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]
    y = (ys[None] - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]
    return torch.stack([x, y], dim=1)


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


@torch.inference_mode()
def predict_views(model: ReconNet, images: np.ndarray, cameras: list[Camera], *,
                  precision: str = "float32") -> tuple[GaussianScene, np.ndarray]:
    """Posed images -> every view's pixel-aligned Gaussians and depth map, one network pass over the views
    (INFERENCE_CHUNK views at a time, `ReconNet.forward_chunked`; no fusion).

    Args:
        model: a ReconNet.
        images: [V, H, W, 3] float RGB in [0, 1]; H, W divisible by 4.
        cameras: V Cameras (the images' poses and intrinsics).
        precision: "float32", or "bfloat16": the convolutions under a CPU bfloat16 autocast (the cost volume's
            sweep stays float32, `ReconNet._cost`; the outputs are float32). On an AMD EPYC Zen 4 (AVX-512 BF16)
            the demo drive's 306 views take 2.8-3.8 s instead of 4.8-5.0, the depths within 0.5 % of float32's
            at the 90th percentile; slower than float32 where the CPU emulates bfloat16
            (`neural_sensor.enhance.precision.resolve_cpu_precision` picks it per host).
    Returns:
        (per_view, depths): per_view holds V * h * w Gaussians (h, w = H / 2, W / 2), view-major and row-major
        over each view's pixels, as `fuse.fuse_views` takes them; depths [V, h, w] float32 metres (camera z).
        With `config.sky_head`, the Gaussians of sky pixels carry the label SKY (CityObjectLabel).
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3 or len(cameras) != images.shape[0]:
        raise ValueError(f"reconstruct: images must be [V, H, W, 3] with one camera each, got {images.shape} "
                         f"and {len(cameras)} cameras")
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"reconstruct: precision must be 'float32' or 'bfloat16', got {precision!r}")
    model.eval()
    # a channels-last copy of the network (the caller's model keeps its memory format): the demo drive's 306 views in
    # 10.6-10.7 s instead of 10.8-11.7 as a process's first pass, 9.0 instead of 10.9 warmed (AMD EPYC, 2
    # threads); the same Gaussians to float rounding (means within 0.3 mm)
    model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
        pred = model.forward_chunked(tensor, **view_inputs(model, cameras, tensor.shape[-2], tensor.shape[-1]),
                                     chunk=INFERENCE_CHUNK)
    pred = {key: value.float() for key, value in pred.items()}
    h, w = pred["depth"].shape[-2:]
    poses, K = camera_tensors(cameras, h, w)
    means, quats, scales, opac, sh, sem = (t.numpy() for t in gaussians_from_prediction(pred, poses, K))
    labels = sem.argmax(axis=1).astype(np.uint8)
    if model.config.sky_head:  # the SKY logit alone decides sky; the other classes' logits are not trained, so the
        # rest is UNLABELED (their argmax had labelled a plain street's Gaussians road lines, motorcycles and traffic
        # lights: a semantic camera on a reconstruction showed noise)
        labels = np.where(sem[:, SKY] > SKY_LOGIT_THRESHOLD, SKY, CityObjectLabel.UNLABELED).astype(np.uint8)
    per_view = GaussianScene(means.astype(np.float32), quats.astype(np.float32),
                             np.maximum(scales, 1e-5).astype(np.float32), np.clip(opac, 0, 1).astype(np.float32),
                             sh.astype(np.float32), labels)
    return per_view, pred["depth"].numpy().astype(np.float32)


def reconstruct(model: ReconNet, images: np.ndarray, cameras: list[Camera], *, merge: bool = True,
                merge_cell_m: float | None = None, min_opacity: float = 0.02, fusion: str = "carve",
                fusion_config: FusionConfig | None = None, return_sky: bool = False,
                depth_refine: DepthRefineConfig | None = None, precision: str = "float32"):
    """Posed images -> GaussianScene (world frame): one network pass over the views and a fusion of them.

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
        return_sky: also return the views' sky masks.
        depth_refine: refine the network's depths against the neighbour views before the fusion
            (`photometric.refine_depths`, the Gaussians moved along their rays); None: the network's depths (a
            run's reconstruction passes photometric.DEFAULT_DEPTH_REFINE, drive.py).
        precision: the network's arithmetic, "float32" or "bfloat16" (`predict_views`).
    Returns:
        GaussianScene; with return_sky, (GaussianScene, sky [V, H, W] bool: the pixels the network's sky output
        calls sky, each half-resolution prediction covering its 2 x 2 pixels; None for a net without one).
    """
    if fusion not in FUSIONS:
        raise ValueError(f"reconstruct: fusion must be one of {FUSIONS}, got {fusion!r}")
    per_view, depths = predict_views(model, images, cameras, precision=precision)
    if depth_refine is not None:
        network_sky = (per_view.labels == SKY).reshape(depths.shape) if model.config.sky_head else \
            np.zeros(depths.shape, bool)
        refined = refine_depths(depths, images, cameras, network_sky, depth_refine)
        means, scales = move_along_rays(per_view.means, per_view.scales, depths, refined, cameras)
        per_view, depths = per_view.replace(means=means, scales=scales), refined
    dome = sky_masks = None
    if model.config.sky_head:
        sky = (per_view.labels == SKY).reshape(depths.shape)
        v, h, w = depths.shape
        half = np.asarray(images, np.float32)[:, :2 * h, :2 * w].reshape(v, h, 2, w, 2, 3).mean(axis=(2, 4))
        dome = fit_sky_dome(half, sky, cameras)
        if return_sky:
            sky_masks = np.zeros(np.shape(images)[:3], bool)
            sky_masks[:, :2 * h, :2 * w] = np.repeat(np.repeat(sky, 2, axis=1), 2, axis=2)
        opacities, depths = without_sky(per_view.opacities, depths, sky)
        per_view = per_view.replace(opacities=opacities)
    config = fusion_config or FusionConfig()
    if fusion == "merge":
        config = replace(config, carve_views=0, hidden_views=0, min_consistent=0, budget=0)
    if merge_cell_m is None:
        merge_cell_m = LEGACY_MERGE_CELL_M if fusion == "merge" else config.merge_cell_m
    config = replace(config, merge_cell_m=merge_cell_m if merge else 0.0, min_opacity=min_opacity)
    fused = fuse_views(per_view, depths, cameras, config)
    scene = fused if dome is None else GaussianScene.concat([fused, dome])
    return (scene, sky_masks) if return_sky else scene


def checkpoint_hash(folder: str | Path) -> str:
    """sha256 of a checkpoint's config.json and weights (the SceneCache key of its reconstructions)."""
    import hashlib

    folder = Path(folder)
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:16]
