"""Train ReconNet in the run's regime: textured worlds, all six rig cameras, drives recorded every 4 m.

The shipped reconstructor was trained on the front three cameras of flat-coloured
worlds at two timesteps; a run feeds it every rig camera (side cameras see facades at
5 m, the back camera has a 110 degree field) along a whole drive of a textured world.
This script trains (or fine-tunes) it in that regime:

Data, per training world (seeds 0..9999, `synthetic.world_layout`, built by the textured
builder at the runner's voxel size): the drive along the recorded lane, the rig at
`size` every 4 m (what `record_drive` writes), with the ground-truth depth of every
view; and `targets` random poses between stations, on the path or shifted up to 3 m
left, two random rig cameras each, with ground-truth rgb / depth / alpha. Stored per
world under `--data` (resumes). Ground-truth depth is the builder's MEDIAN depth (the
surface where the transmittance crosses 0.5; data "run-v2"): its expected depth looks
through the gaps between a textured facade's Gaussians and lies 0.4-0.5 AbsRel behind
the surface, which taught "run-v1" nets to put near surfaces 10-20 % too far.

Per step: a world and one of its target poses; the views of the three stations around
it (18 views; `--context-stations`, up to the whole drive) go through the network; their
Gaussians are rendered (torch reference renderer on a CPU, gsplat on CUDA; differentiable)
at the target camera, or at `--targets-per-step` target cameras that share those context
views (on a GPU: the whole drive and every target of the world in one step).
Loss = L1(rgb) + ssim_weight (1 - SSIM) + render_depth_weight L1(log depth of the render, solid
pixels) + view_depth_weight L1(log depth of every context view's prediction against its ground truth, sky pixels at
the network's far limit) + sky_weight BCE(the semantic head's SKY logit, ground-truth sky;
the reconstruction replaces sky pixels by a fitted sky dome): the direct depth term is what the old training lacked
(its held-out depth AbsRel in the run regime was 0.36-0.42).

`--depth-only` (a fine-tune, cheap on a CPU: ~1 s a step for three stations on two cores): no render; per step
the views of `--context-stations` stations through the network, loss = view_depth_weight x the depth term +
sky_weight x the sky term + keep_weight x L1(opacity, log scale, colour against the frozen --init net's outputs
on the same views), so that the depth moves while the appearance the run's fusion and refinement were tuned
with stays.

    python -m neural_sensor.train.train_reconstructor_run --init checkpoints/reconstructor-small \
        --worlds 48 --steps 1500 --out out/reconstructor-run
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from neural_sensor.camera import Camera
from neural_sensor.labels import CityObjectLabel
from neural_sensor.metrics import psnr
from neural_sensor.reconstruct.model import (COST_VOLUME_LAYERS, SKY_LOGIT_THRESHOLD, ReconConfig, ReconNet,
                                             camera_tensors, gaussians_from_prediction, view_inputs)
from neural_sensor.train.losses import ssim_map_torch
from neural_sensor.train.state import (NonFiniteLoss, add_out_options, apply_gradients, begin_summary,
                                       check_out_options, check_resumed_shape, check_training_options,
                                       default_data_root, finished_line, load_or_make_npz, out_of_time, record_step,
                                       resumed_settings, saved_state, saved_summary, start_or_resume, stop_requested,
                                       write_summary)
from neural_sensor.train.synthetic import HELDOUT_FIRST_SEED, check_split, recorded_lane_xy_m, world_layout

DATA_VERSION = "run-v3"  # v2: median-depth targets (v1: the expected depth); v3: the intersection worlds' buildings
#   kept off the crossing road (layout.roadside_objects' keep_clear_xy_m: the drives went through them before)
VOXEL_M = 0.3  # the runner's voxel size
STEP_M = 4.0  # the runner's recording step
CAMERAS = 6
TARGET_SKY_M = 500.0  # a target pixel whose true depth is beyond this shows the builder's sky dome (at ~1 km)
EVAL_SEEDS = range(HELDOUT_FIRST_SEED + 320, HELDOUT_FIRST_SEED + 322)  # clear of the run-regime benchmark's


@dataclass
class RunReconTrainConfig:
    """Training run settings (stored with the checkpoint)."""

    steps: int = 1500
    lr: float = 5e-4
    worlds: int = 48
    targets: int = 12  # target poses per world
    size: tuple[int, int] = (160, 96)  # (width, height) of recorded views and targets: the runner's record size
    ssim_weight: float = 0.1
    render_depth_weight: float = 0.1
    view_depth_weight: float = 0.5
    sky_weight: float = 0.2  # BCE of the semantic head's SKY logit against the ground-truth sky (the explicit sky)
    eval_every: int = 250
    save_every: int = 100
    seed: int = 0
    time_budget_s: float = 0.0  # stop at this many seconds of training even before `steps` (0: no budget)
    context_stations: int = 3  # stations around the target whose views (6 each) go through the network
    targets_per_step: int = 1  # target views rendered per step from the same context (one network pass)
    fuse: bool = False  # render the target from the context views' Gaussians as the run's fusion keeps them
    device: str = "cpu"  # "cpu" or "cuda" (the model, its inputs and the render)
    renderer: str = "auto"  # render_differentiable backend: "torch" on a CPU, "gsplat" on CUDA
    cost_volume: bool = False  # a multi-view net (plane-sweep cost volume); an --init without one is extended
    ray_inputs: bool = False  # the camera ray of every pixel as input; an --init without them is extended
    depth_bins: int = 0  # the depth planes; an --init with other planes is `rebinned` (0: the --init's own)
    min_depth_m: float = 0.0  # the nearest plane, with depth_bins (0: the --init's own)
    new_layer_lr_scale: float = 10.0  # the cost-volume layers' learning rate / lr (they start from zero)
    depth_only: bool = False  # no render: the context views' depth and sky terms, the other heads held (keep_weight)
    keep_weight: float = 1.0  # depth_only: L1 of opacity, log scale and colour against the --init net's own outputs


def _u8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def world_data(seed: int, split: str, targets: int, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """A world's recorded drive (with ground-truth depth) and its target views (see the module docstring)."""
    from neural_sensor.render import render
    from neural_sensor.rig import nuscenes_like_rig, rig_cameras_on_path
    from neural_sensor.scene.build import build_scene
    from neural_sensor.scene.path import Path as Polyline
    from neural_sensor.scene.to_gaussians import sky_rgb

    check_split(seed, split)
    layout = world_layout(seed)
    path = Polyline(recorded_lane_xy_m(layout))
    truth, _ = build_scene(layout, voxel_m=VOXEL_M)
    background = np.asarray(sky_rgb(layout.style), np.float32)
    specs = nuscenes_like_rig(*size)
    stations = np.arange(0.0, path.length_m + 1e-6, STEP_M)
    cams = [c for s in stations for c in rig_cameras_on_path(specs, path, float(s))]
    views = render(truth, cams, backend="cpu", outputs=("rgb", "median_depth", "semantic"), background=background)
    sky = views.semantic == CityObjectLabel.SKY
    rng = np.random.default_rng(seed + 99)
    t_cams, t_station = [], []
    for _ in range(targets):
        i = int(rng.integers(1, max(2, len(stations) - 2)))
        s = min(float(stations[i] + rng.uniform(0.0, STEP_M)), path.length_m)
        shift = float(rng.choice([0.0, 1.0, 2.0, 3.0]))
        rig = rig_cameras_on_path(specs, path, s, shift)
        t_cams += [rig[k] for k in rng.choice(CAMERAS, 2, replace=False)]
        t_station += [i, i]
    gt = render(truth, t_cams, backend="cpu", outputs=("rgb", "median_depth", "alpha"), background=background)
    return {"rgb": _u8(views.rgb), "depth": np.where(sky, 0.0, views.median_depth).astype(np.float16),
            "sky": sky, "K": np.stack([c.K for c in cams]), "pose": np.stack([c.pose_camera_to_world for c in cams]),
            "target_rgb": _u8(gt.rgb), "target_depth": gt.median_depth.astype(np.float16),
            "target_alpha": _u8(gt.alpha),
            "target_K": np.stack([c.K for c in t_cams]),
            "target_pose": np.stack([c.pose_camera_to_world for c in t_cams]),
            "target_station": np.asarray(t_station, np.int32), "background": background}


def load_world(root: Path, seed: int, split: str, targets: int, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """world_data from `root` when stored before, else made and stored atomically."""
    folder = Path(root) / f"{DATA_VERSION}-{size[0]}x{size[1]}"
    folder.mkdir(parents=True, exist_ok=True)
    return load_or_make_npz(folder / f"world-{seed}-t{targets}.npz", lambda: world_data(seed, split, targets, size))


def _cameras(K: np.ndarray, pose: np.ndarray, size: tuple[int, int]) -> list[Camera]:
    return [Camera(size[0], size[1], k, p) for k, p in zip(K, pose)]


def context_indices(world: dict, station: int, stations: int = 3) -> np.ndarray:
    """The views of `stations` consecutive stations around `station` (the target lies between station and
    station + 1), shifted to stay on the drive."""
    n_stations = len(world["rgb"]) // CAMERAS
    lo = min(max(0, station - (stations - 1) // 2), max(0, n_stations - stations))
    hi = min(n_stations, lo + stations)
    return np.arange(lo * CAMERAS, hi * CAMERAS)


def fused_selection(model: ReconNet, pred: dict, means: torch.Tensor, scales: torch.Tensor, opac: torch.Tensor,
                    cameras: list[Camera]) -> torch.Tensor:
    """Indices [M] of the context Gaussians the run's fusion keeps: `fuse.fusion_selection` on the detached
    prediction, sky pixels given no Gaussian as `reconstruct` does (`sky.without_sky`)."""
    from neural_sensor.reconstruct.fuse import FusionConfig, fusion_selection
    from neural_sensor.reconstruct.sky import without_sky

    opacities = opac.detach().clamp(0, 1).cpu().numpy()
    depths = pred["depth"].detach().cpu().numpy()
    if model.config.sky_head:
        sky = (pred["semantic_logits"][:, CityObjectLabel.SKY] > SKY_LOGIT_THRESHOLD).detach().cpu().numpy()
        opacities, depths = without_sky(opacities, depths, sky)
    idx, _, _ = fusion_selection(means.detach().cpu().numpy(), scales.detach().cpu().numpy(), opacities, depths,
                                 cameras, FusionConfig())
    return torch.from_numpy(idx).to(means.device)


def targets_sharing_context(world: dict, target: int, count: int, stations: int,
                            rng: np.random.Generator) -> np.ndarray:
    """`target` and up to count - 1 other target views drawn at random from those whose context (the views of
    `stations` stations, `context_indices`) is the same as its own, so that one network pass serves them all."""
    first = context_indices(world, int(world["target_station"][target]), stations)
    shares = {int(s): np.array_equal(context_indices(world, int(s), stations), first)
              for s in np.unique(world["target_station"])}  # a target's context is its station's
    same = [t for t, s in enumerate(world["target_station"]) if t != target and shares[int(s)]]
    more = rng.choice(same, min(count - 1, len(same)), replace=False) if same and count > 1 else []
    return np.asarray([target, *more], np.int64)


def context_inputs(model: ReconNet, world: dict, ctx: np.ndarray, config: RunReconTrainConfig):
    """The context views `ctx` of `world` as the network takes them: (images [V, 3, H, W] float on config.device,
    their cameras, the forward pass's keyword inputs: poses, K and neighbours where the net uses them)."""
    device = torch.device(config.device)
    images = torch.from_numpy(world["rgb"][ctx].astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()
    cameras = _cameras(world["K"][ctx], world["pose"][ctx], config.size)
    return images.to(device), cameras, view_inputs(model, cameras, images.shape[-2], images.shape[-1], device)


def step_losses(model: ReconNet, world: dict, target, config: RunReconTrainConfig) -> dict[str, torch.Tensor]:
    """The loss terms of target view(s) `target` (an index, or indices of targets that share their context views,
    `targets_sharing_context`) rendered from the Gaussians of their context views (see the module docstring);
    "psnr" is the mean over the targets."""
    from neural_sensor.render.differentiable import render_differentiable

    device = torch.device(config.device)
    targets = np.atleast_1d(np.asarray(target, np.int64))
    ctx = context_indices(world, int(world["target_station"][targets[0]]), config.context_stations)
    for t in targets[1:]:
        assert np.array_equal(context_indices(world, int(world["target_station"][t]), config.context_stations),
                              ctx), f"target {t} does not share the context of target {targets[0]}"
    images, context_cameras, inputs = context_inputs(model, world, ctx, config)
    pred = model(images, **inputs)
    h, w = pred["depth"].shape[-2:]
    poses, K = camera_tensors(context_cameras, h, w)
    means, quats, scales, opac, sh, _ = gaussians_from_prediction(pred, poses.to(device), K.to(device))
    if config.fuse:
        idx = fused_selection(model, pred, means, scales, opac, context_cameras)  # never a sky Gaussian
        means, quats, scales, opac, sh = (t[idx] for t in (means, quats, scales, opac, sh))
    cams = _cameras(world["target_K"][targets], world["target_pose"][targets], config.size)
    background = torch.from_numpy(world["background"])
    out = render_differentiable(means, quats, scales, opac, sh,
                                torch.tensor(np.stack([c.pose_world_to_camera for c in cams]), dtype=torch.float32,
                                             device=device),
                                torch.tensor(np.stack([c.K for c in cams]), dtype=torch.float32, device=device),
                                config.size[0], config.size[1],
                                background=torch.zeros(3) if config.fuse else background, backend=config.renderer)
    out = {k: v.cpu() for k, v in out.items()}
    pred = {k: v.cpu() for k, v in pred.items()}
    gt = torch.from_numpy(world["target_rgb"][targets].astype(np.float32) / 255.0)
    rgb = out["rgb"]
    if config.fuse:  # the run draws the sky as a dome fitted to the drive: stand in for it with the true sky
        target_sky = torch.from_numpy(world["target_depth"][targets].astype(np.float32) > TARGET_SKY_M)
        behind = torch.where(target_sky[..., None], gt, background)
        rgb = rgb + (1.0 - out["alpha"])[..., None] * behind
    l1 = (rgb - gt).abs().mean()
    ssim_term = 1.0 - ssim_map_torch(rgb.permute(0, 3, 1, 2).clamp(0, 1), gt.permute(0, 3, 1, 2)).mean()
    gt_depth = torch.from_numpy(world["target_depth"][targets].astype(np.float32))
    solid = (torch.from_numpy(world["target_alpha"][targets] > 127) & (gt_depth > 0) & (gt_depth < 1e3)
             & (out["alpha"] > 0.5))
    render_depth = ((torch.log(out["depth"][solid].clamp_min(1e-3)) - torch.log(gt_depth[solid])).abs().mean()
                    if solid.any() else torch.zeros(()))
    return {"l1": l1, "ssim": ssim_term, "render_depth": render_depth, **view_terms(model, pred, world, ctx),
            "psnr": torch.tensor(float(np.mean([psnr(a, b) for a, b in zip(rgb.detach().clamp(0, 1).numpy(),
                                                                            gt.numpy())])))}


def view_terms(model: ReconNet, pred: dict, world: dict, ctx: np.ndarray) -> dict[str, torch.Tensor]:
    """The context views' own terms: L1 of log depth against the ground truth at half resolution (averaged as
    inverse depth; sky pixels at the network's far limit) and the BCE of the SKY logit against each half-resolution
    pixel's sky fraction. pred: the network's outputs on the views `ctx` of `world` (on the CPU)."""
    view_gt = torch.from_numpy(world["depth"][ctx].astype(np.float32))
    sky = torch.from_numpy(world["sky"][ctx])
    view_gt = torch.where(sky | (view_gt <= 0), torch.full_like(view_gt, model.config.max_depth_m),
                          view_gt.clamp(model.config.min_depth_m, model.config.max_depth_m))
    inverse = F.avg_pool2d((1.0 / view_gt)[:, None], 2)[:, 0]  # half resolution, averaged as inverse depth
    assert inverse.shape == pred["depth"].shape, (inverse.shape, pred["depth"].shape)
    view_depth = (torch.log(pred["depth"]) + torch.log(inverse)).abs().mean()
    sky_half = F.avg_pool2d(sky[:, None].float(), 2)[:, 0]  # fraction of sky in each half-resolution pixel
    sky_term = F.binary_cross_entropy_with_logits(pred["semantic_logits"][:, CityObjectLabel.SKY], sky_half)
    return {"view_depth": view_depth, "sky": sky_term}


def depth_step_losses(model: ReconNet, reference: ReconNet, world: dict, station: int,
                      config: RunReconTrainConfig) -> dict[str, torch.Tensor]:
    """A depth-only step (`config.depth_only`): the views of `config.context_stations` stations around `station`
    through the network, no render; `view_terms` plus "keep": the L1 of the opacity, log in-plane scale and colour
    against `reference` (the frozen --init net) on the same views, so that the appearance heads, which the run's
    refinement and fusion were tuned with, stay where they were while the depth moves."""
    ctx = context_indices(world, station, config.context_stations)
    images, _, inputs = context_inputs(model, world, ctx, config)
    pred = {k: v.cpu() for k, v in model(images, **inputs).items()}
    with torch.no_grad():
        ref = {k: v.cpu() for k, v in reference(images, **inputs).items()}
    keep = ((pred["opacity"] - ref["opacity"]).abs().mean()
            + (torch.log(pred["scale_px"]) - torch.log(ref["scale_px"])).abs().mean()
            + (pred["rgb"] - ref["rgb"]).abs().mean())
    return {**view_terms(model, pred, world, ctx), "keep": keep}


@torch.no_grad()
def evaluate(model: ReconNet, worlds: list[dict], config: RunReconTrainConfig) -> dict:
    """Mean PSNR of the target views and mean context-view depth AbsRel (solid pixels) on held-out worlds."""
    model.eval()
    scores, abs_rel, sky_acc = [], [], []
    bar = tqdm(total=sum(len(w["target_station"]) for w in worlds), desc="held-out evaluation", unit="view",
               leave=False)  # (minutes on a CPU: say it is working)
    for world in worlds:
        for t in range(len(world["target_station"])):  # one at a time: the same figure whatever targets_per_step
            scores.append(float(step_losses(model, world, t, config)["psnr"]))
            bar.update(1)
        images = torch.from_numpy(world["rgb"].astype(np.float32) / 255.0).permute(0, 3, 1, 2)
        cameras = _cameras(world["K"], world["pose"], config.size)
        pred = model(images.to(config.device), **view_inputs(model, cameras, images.shape[-2],
                                                                 images.shape[-1], config.device))
        pred = {k: v.cpu() for k, v in pred.items()}
        depth = pred["depth"].numpy()
        gt = world["depth"].astype(np.float32)[:, ::2, ::2]
        solid = (gt > 0) & ~world["sky"][:, ::2, ::2]
        abs_rel.append(float(np.mean(np.abs(depth[solid] - gt[solid]) / gt[solid])))
        sky_pred = pred["semantic_logits"][:, CityObjectLabel.SKY].numpy() > 0
        sky_acc.append(float(np.mean(sky_pred == world["sky"][:, ::2, ::2])))
    bar.close()
    return {"target_psnr": round(float(np.mean(scores)), 3), "view_depth_abs_rel": round(float(np.mean(abs_rel)), 4),
            "sky_accuracy": round(float(np.mean(sky_acc)), 4)}


OUT_OF_RANGE_LOGIT = 10.0  # `rebinned`: logits of depth planes beyond the old range start this far below the edge's


def _interpolation(old_inverse: np.ndarray, new_inverse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[D', D] weights taking values at the old inverse-depth planes (ascending) linearly to the new ones (clamped
    to the old edges), and [D'] bool: the new planes outside the old range."""
    weights = np.zeros((len(new_inverse), len(old_inverse)))
    for i, x in enumerate(new_inverse):
        j = int(np.clip(np.searchsorted(old_inverse, x) - 1, 0, len(old_inverse) - 2))
        t = float(np.clip((x - old_inverse[j]) / (old_inverse[j + 1] - old_inverse[j]), 0.0, 1.0))
        weights[i, j], weights[i, j + 1] = 1.0 - t, t
    outside = (new_inverse < old_inverse[0] - 1e-9) | (new_inverse > old_inverse[-1] + 1e-9)
    return weights, outside


def rebinned(model: ReconNet, depth_bins: int, min_depth_m: float | None = None) -> ReconNet:
    """A copy of `model` whose depth is a softmax over `depth_bins` inverse-depth planes (from min_depth_m, default
    the model's, to its max_depth_m) instead of its own: finer planes, or a nearer first plane, for a GPU fine-tune.

    It starts out predicting nearly what `model` does: the depth logits (the head's and the cost volume's) are the
    old ones interpolated linearly in inverse depth onto the new planes (planes beyond the old range take the edge's
    logit less OUT_OF_RANGE_LOGIT), and the layers that read the plane-sweep cost volume read the new planes
    through the pseudo-inverse of that interpolation (so a cost volume sampled at the new planes, which is about the
    interpolation of the old one, feeds them what the old one did). Everything else is copied.
    """
    old = model.config
    config = replace(old, depth_bins=int(depth_bins), min_depth_m=float(min_depth_m or old.min_depth_m))
    if not (config.depth_bins >= 2 and 0.0 < config.min_depth_m < config.max_depth_m):
        raise ValueError(f"rebinned: {config.depth_bins} planes from {config.min_depth_m} to {config.max_depth_m} m")
    new_model = ReconNet(config)
    old_inverse = model.inverse_depths.detach().cpu().double().numpy()
    new_inverse = new_model.inverse_depths.detach().cpu().double().numpy()
    interp, outside = _interpolation(old_inverse, new_inverse)
    to_new = torch.from_numpy(interp).float()  # [D', D]
    # the cost volume's readers see the new planes within the old range only: a plane nearer than the old nearest
    # is clamped to it in `interp`, but the cost sampled there is not the cost at the old plane
    inverse = np.zeros(interp.T.shape)
    inverse[:, ~outside] = np.linalg.pinv(interp[~outside])
    from_new = torch.from_numpy(inverse).float()  # [D, D']
    d, d2 = old.depth_bins, config.depth_bins
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def rows(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first d output channels of a conv mapped onto the new planes."""
        w = torch.einsum("nd,d...->n...", to_new, weight[:d])
        return torch.cat([w, weight[d:]]), torch.cat([to_new @ bias[:d], bias[d:]])

    w, b = rows(state["head.weight"], state["head.bias"])
    b[:d2][torch.from_numpy(outside)] -= OUT_OF_RANGE_LOGIT
    state["head.weight"], state["head.bias"] = w, b
    if old.cost_volume:
        for name in ("cost_decoder.0.0.weight", "cost_logits.weight"):  # input channels: D planes + the inside share
            weight = state[name]
            state[name] = torch.cat([torch.einsum("oi...,in->on...", weight[:, :d], from_new), weight[:, d:]], dim=1)
        state["cost_logits.weight"], state["cost_logits.bias"] = rows(state["cost_logits.weight"],
                                                                      state["cost_logits.bias"])
    new_model.load_state_dict(state)
    return new_model.train(model.training)


def train(config: RunReconTrainConfig, out: Path, data_root: Path, init: Path | None = None,
          resume: bool = False) -> dict:
    if config.depth_only and init is None:
        raise SystemExit("--depth-only needs --init: the net whose appearance heads it holds")
    torch.manual_seed(config.seed)
    out = Path(out)
    worlds = [load_world(data_root, s, "train", config.targets, config.size)
              for s in tqdm(range(config.worlds), desc="reconstructor data (train)", unit="world")]
    eval_worlds = [load_world(data_root, s, "heldout", 4, config.size) for s in EVAL_SEEDS]

    def new_model():
        model = ReconNet.from_pretrained(init).train() if init else ReconNet(ReconConfig())
        add_cost = config.cost_volume and not model.config.cost_volume
        add_rays = config.ray_inputs and not model.config.ray_inputs
        if add_cost or add_rays:
            model = model.extended(cost_volume=add_cost, ray_inputs=add_rays)
        bins = config.depth_bins or model.config.depth_bins  # --min-depth-m alone keeps the init's plane count
        if (bins, config.min_depth_m or model.config.min_depth_m) != (model.config.depth_bins,
                                                                      model.config.min_depth_m):
            model = rebinned(model, bins, config.min_depth_m)
        model.config.sky_head = config.sky_weight > 0  # the saved config says the SKY logit was trained
        return model.to(config.device)

    def optimiser_of(m: ReconNet) -> torch.optim.Optimizer:
        new = [p for n, p in m.named_parameters() if n.split(".")[0] in COST_VOLUME_LAYERS]
        old = [p for n, p in m.named_parameters() if n.split(".")[0] not in COST_VOLUME_LAYERS]
        groups = [{"params": old}] + ([{"params": new, "lr": config.lr * config.new_layer_lr_scale}] if new else [])
        return torch.optim.Adam(groups, lr=config.lr)

    model, optimiser, step, history = start_or_resume(
        out, resume, new_model, lambda folder: ReconNet.from_pretrained(folder).to(config.device), optimiser_of)
    for group, lr in zip(optimiser.param_groups, (config.lr, config.lr * config.new_layer_lr_scale)):
        group["lr"] = lr  # a resumed optimiser state brings back its own rates: this run's --lr applies
    rng = np.random.default_rng(config.seed + step)
    reference = None
    if config.depth_only:
        reference = ReconNet.from_pretrained(init).to(config.device).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
    if step == 0:
        begin_summary(out, config, init=str(init) if init else None, data_version=DATA_VERSION)
        history.append({"step": 0, "heldout": evaluate(model, eval_worlds, config)})
        tqdm.write(json.dumps(history[-1]))
    start = time.perf_counter()
    bar = tqdm(total=config.steps, initial=step, desc="train reconstructor (run regime)", unit="step")
    with stop_requested(out, lambda: (model, optimiser, step, history)) as request:
        while step < config.steps and not out_of_time(config, start) and request.signum is None:
            model.train()
            world = worlds[int(rng.integers(len(worlds)))]
            if config.depth_only:
                terms = depth_step_losses(model, reference, world, int(rng.integers(len(world["rgb"]) // CAMERAS)),
                                          config)
                loss = (config.view_depth_weight * terms["view_depth"] + config.sky_weight * terms["sky"]
                        + config.keep_weight * terms["keep"])
            else:
                target = targets_sharing_context(world, int(rng.integers(len(world["target_station"]))),
                                                 config.targets_per_step, config.context_stations, rng)
                terms = step_losses(model, world, target, config)
                loss = (terms["l1"] + config.ssim_weight * terms["ssim"]
                        + config.render_depth_weight * terms["render_depth"]
                        + config.view_depth_weight * terms["view_depth"] + config.sky_weight * terms["sky"])
            apply_gradients(model, optimiser, loss)
            step += 1
            bar.update(1)
            bar.set_postfix(depth=f"{terms['view_depth'].item():.3f}",
                            **({"keep": f"{terms['keep'].item():.4f}"} if config.depth_only
                               else {"l1": f"{terms['l1'].item():.4f}"}))
            record = {"step": step, **{k: round(float(v.detach()), 5) for k, v in terms.items()}}
            record_step(out, model, optimiser, step, history, record, config,
                        lambda: evaluate(model, eval_worlds, config), last=out_of_time(config, start))
    bar.close()
    from neural_sensor.render.differentiable import resolve_diff_backend

    return write_summary(out, step, start, history, config, init=str(init) if init else None,
                         data_version=DATA_VERSION,
                         model_config=asdict(model.config),  # (config's flags say what this run added, not the net)
                         renderer_used=resolve_diff_backend(config.renderer, config.device))  # ("auto" resolved)


def resumed_rate(out: Path) -> float | None:
    """The learning rate the run in `out` was trained at (its saved optimiser's first group: this script keeps
    it constant), None where unknown."""
    try:
        rate = saved_state(out)["optimiser"]["param_groups"][0]["lr"]
    except (TypeError, KeyError, IndexError):  # none, or unreadable (start_or_resume names it): the default rate
        return None
    return float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0 else None


FROM_SCRATCH_LR = 5e-4
FINE_TUNE_LR = 5e-5  # (the cost-volume layers train at new_layer_lr_scale times it)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--worlds", type=int, default=48)
    parser.add_argument("--lr", type=float, default=None,
                        help=f"learning rate (default: {FROM_SCRATCH_LR:g} from scratch, {FINE_TUNE_LR:g} with --init; "
                             "with --resume the rate the run was trained at, from its saved optimiser: the "
                             "default checkpoint's fine-tunes ran at 5e-5 to 1.5e-4, and 5e-4 undid it within "
                             "three steps)")
    parser.add_argument("--init", type=Path, default=None, help="start from this checkpoint (fine-tune)")
    add_out_options(parser, Path("out/reconstructor-run"))
    parser.add_argument("--data", type=Path, default=default_data_root("reconstructor-run-data"),
                        help="where the made data is kept ($NEURAL_SENSOR_CACHE/reconstructor-run-data if set)")
    parser.add_argument("--context-stations", type=int, default=3,
                        help="stations (6 views each) per step; more than a drive has: the whole drive")
    parser.add_argument("--targets-per-step", type=int, default=1,
                        help="target views rendered per step from one network pass over their shared context")
    parser.add_argument("--fuse", action="store_true",
                        help="render targets from the context Gaussians the run's fusion keeps (train through it)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda")
    parser.add_argument("--renderer", default="auto", choices=("auto", "torch", "gsplat"),
                        help="differentiable renderer: auto = gsplat on CUDA, the torch reference on a CPU")
    parser.add_argument("--cost-volume", action="store_true",
                        help="multi-view depth (a plane-sweep cost volume over neighbour views); extends a "
                             "single-view --init with zero-initialised cost-volume layers")
    parser.add_argument("--ray-inputs", action="store_true",
                        help="each pixel's camera ray as two more input channels (depth that follows the "
                             "intrinsics); extends an --init without them with zero-initialised weights")
    parser.add_argument("--depth-bins", type=int, default=0,
                        help="inverse-depth planes of the depth softmax (0: the --init's; other counts rebin its "
                             "depth layers, starting from nearly its own depth)")
    parser.add_argument("--min-depth-m", type=float, default=0.0,
                        help="the nearest depth plane (0: the --init's, 1 m for the shipped net); alone it keeps the "
                             "--init's number of planes")
    parser.add_argument("--view-depth-weight", type=float, default=RunReconTrainConfig.view_depth_weight,
                        help="weight of the context views' log-depth term")
    parser.add_argument("--render-depth-weight", type=float, default=RunReconTrainConfig.render_depth_weight,
                        help="weight of the target render's log-depth term")
    parser.add_argument("--depth-only", action="store_true",
                        help="no render: train the context views' depth (and sky) against the ground truth, "
                             "the other heads held to the --init net's outputs (--keep-weight); cheap on a CPU")
    parser.add_argument("--keep-weight", type=float, default=RunReconTrainConfig.keep_weight,
                        help="--depth-only: weight of the L1 that holds opacity, scale and colour to --init's")
    parser.add_argument("--minutes", type=float, default=0.0, help="stop after this much training (0: no limit)")
    parser.add_argument("--eval-every", type=int, default=250, help="steps between held-out evaluations")
    parser.add_argument("--save-every", type=int, default=RunReconTrainConfig.save_every,
                        help="steps between checkpoints (a Ctrl-C or SIGTERM also saves the last step)")
    parser.add_argument("--data-only", action="store_true", help="make the worlds' data and stop")
    args = parser.parse_args()
    if args.resume and args.init is None:  # a resumed --depth-only run holds its heads to the net it started from
        before = saved_summary(args.out)
        if (before.get("config") or {}).get("depth_only") and isinstance(before.get("init"), str):
            args.init = Path(before["init"])
    if args.lr is None:  # a resumed run keeps the rate it was started with, where its summary says it
        args.lr = (resumed_rate(args.out) if args.resume else None) or (
            FINE_TUNE_LR if (args.init is not None or args.resume) else FROM_SCRATCH_LR)
    check_out_options(parser, args)
    check_training_options(parser, args, init_class="ReconNet")
    if args.depth_bins == 1 or args.depth_bins < 0:
        parser.error(f"--depth-bins {args.depth_bins}: 0 (the --init's planes) or at least 2")
    if not (args.min_depth_m == 0.0 or 0.0 < args.min_depth_m < 80.0):  # (nan fails both)
        parser.error(f"--min-depth-m {args.min_depth_m}: 0 (the --init's nearest plane) or a positive distance "
                     "nearer than the farthest plane")
    check_resumed_shape(parser, args, {
        name: value for name, value in (("--depth-bins", ("depth_bins", args.depth_bins or None)),
                                        ("--min-depth-m", ("min_depth_m", args.min_depth_m or None)),
                                        ("--cost-volume", ("cost_volume", args.cost_volume or None)),
                                        ("--ray-inputs", ("ray_inputs", args.ray_inputs or None)))
        if value[1] is not None})
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    config = RunReconTrainConfig(steps=args.steps, worlds=args.worlds, lr=args.lr,
                                 context_stations=args.context_stations, fuse=args.fuse, device=device,
                                 renderer=args.renderer, eval_every=args.eval_every,
                                 save_every=args.save_every, cost_volume=args.cost_volume,
                                 ray_inputs=args.ray_inputs, view_depth_weight=args.view_depth_weight,
                                 render_depth_weight=args.render_depth_weight, time_budget_s=60.0 * args.minutes,
                                 targets_per_step=args.targets_per_step, depth_only=args.depth_only,
                                 keep_weight=args.keep_weight, depth_bins=args.depth_bins,
                                 min_depth_m=args.min_depth_m)
    config = resumed_settings(parser, args, config, {
        name: name for name in ("worlds", "lr", "context_stations", "targets_per_step", "fuse", "view_depth_weight",
                                "render_depth_weight", "depth_only", "keep_weight")})
    if config.depth_only and args.init is None:  # (it was an exit 1 without the usage line, after the checks)
        parser.error("--depth-only needs --init: the net whose appearance heads it holds")
    if args.data_only:
        for s in tqdm(range(config.worlds), desc="reconstructor data (train)", unit="world"):
            load_world(args.data, s, "train", config.targets, config.size)
        for s in EVAL_SEEDS:
            load_world(args.data, s, "heldout", 4, config.size)
        return
    try:
        summary = train(config, args.out, args.data, init=args.init, resume=args.resume)
    except KeyboardInterrupt:  # saved and said by `stop_requested`
        raise SystemExit(130) from None
    except NonFiniteLoss as err:
        raise SystemExit(f"{parser.prog}: error: {err}") from None
    print(finished_line(args.out, summary))


if __name__ == "__main__":
    main()
