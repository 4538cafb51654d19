"""Enhancer: a single-step, geometry-conditioned image fixer built on diffusers' UNet2DModel.

Input contract (per camera): the raw render's rgb [H, W, 3] in [0, 1], its expected
depth [H, W] (metres, 0 where nothing was hit) and alpha [H, W]; optionally a
reference view already warped into the camera (rgb [H, W, 3] + validity [H, W]).
The network sees 9 channels: rgb, inverse depth s/(s+d) (0 where alpha is 0), alpha,
reference rgb and reference validity (zeros when no reference is given: then only the
first five are made and the first convolution skips the others' weights). Output: the
refined rgb [H, W, 3].

As in single-step fixers (Difix3D+: one denoising step at a fixed timestep), the
UNet's timestep is fixed (`timestep`, default 199 of 1000) and no noise is added:
the model is a deterministic one-step map. It predicts a residual on top of the raw
rgb and its last convolution starts at zero, so an untrained enhancer is the
identity. For speed on CPUs the UNet runs at half resolution on a pixel-unshuffled
input (`unshuffle` = 2: 9 x 4 channels in, 3 x 4 out), shuffled back at the end.

Checkpoints are self-describing folders: `config.json` (class, input contract, the
UNet's diffusers config) + `model.safetensors`. `Enhancer.from_pretrained` also
loads a user's larger diffusers checkpoint by path: a folder that diffusers'
`UNet2DModel.from_pretrained` reads (config.json with "_class_name": "UNet2DModel"),
with an optional `enhancer.json` giving the contract fields (unshuffle, timestep,
depth_scale_m); its in/out channels must be 9 x unshuffle^2 and 3 x unshuffle^2.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INPUT_CHANNELS = 9  # rgb 3, inverse depth 1, alpha 1, reference rgb 3, reference validity 1
RENDER_CHANNELS = 5  # ... the first five: what the network sees without a reference (the rest would be zeros)
OUTPUT_CHANNELS = 3
_WEIGHT_AND_CONFIG_FILES = ("config.json", "enhancer.json", "model.safetensors", "diffusion_pytorch_model.safetensors")
_CONTRACT_FIELDS = ("unshuffle", "timestep", "depth_scale_m", "model_name")


@dataclass
class EnhancerConfig:
    """The input contract and the UNet's shape (stored in config.json)."""

    model_name: str = "enhancer-small"
    unshuffle: int = 2  # pixel-unshuffle factor: the UNet runs at 1/unshuffle resolution
    timestep: int = 199  # fixed diffusion timestep (single step, no added noise)
    depth_scale_m: float = 10.0  # inverse-depth code s / (s + depth)
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    unet: dict = field(default_factory=dict)  # a full diffusers config (overrides the three fields above)


def _unet_from_config(config: EnhancerConfig):
    from diffusers import UNet2DModel

    if config.unet:
        return UNet2DModel.from_config(config.unet)
    n = len(config.block_out_channels)
    s2 = config.unshuffle ** 2
    return UNet2DModel(sample_size=None, in_channels=INPUT_CHANNELS * s2, out_channels=OUTPUT_CHANNELS * s2,
                       block_out_channels=tuple(config.block_out_channels), down_block_types=("DownBlock2D",) * n,
                       up_block_types=("UpBlock2D",) * n, layers_per_block=config.layers_per_block,
                       norm_num_groups=config.norm_num_groups, add_attention=False)


def _inverse_depth_code(depth_m: torch.Tensor, alpha: torch.Tensor, depth_scale_m: float) -> torch.Tensor:
    """[B, H, W] s / (s + depth), 0 where nothing was hit (alpha or depth 0)."""
    return torch.where((alpha > 0) & (depth_m > 0), depth_scale_m / (depth_scale_m + depth_m.clamp_min(0)),
                       torch.zeros_like(depth_m))


def encode_inputs(rgb: torch.Tensor, depth_m: torch.Tensor, alpha: torch.Tensor, reference_rgb: torch.Tensor | None,
                  reference_valid: torch.Tensor | None, depth_scale_m: float) -> torch.Tensor:
    """[B, 9, H, W] network input from rgb [B, 3, H, W], depth_m [B, H, W], alpha [B, H, W] and an optional
    reference rgb [B, 3, H, W] with validity [B, H, W]."""
    b, _, h, w = rgb.shape
    assert depth_m.shape == (b, h, w) and alpha.shape == (b, h, w), (rgb.shape, depth_m.shape, alpha.shape)
    inv = _inverse_depth_code(depth_m, alpha, depth_scale_m)
    if reference_rgb is None:
        reference_rgb = torch.zeros_like(rgb)
        reference_valid = torch.zeros_like(alpha)
    else:
        assert reference_rgb.shape == rgb.shape and reference_valid is not None and reference_valid.shape == (b, h, w)
    valid = reference_valid.to(rgb.dtype)
    return torch.cat([rgb, inv[:, None], alpha[:, None], reference_rgb * valid[:, None], valid[:, None]], dim=1)


def network_input(rgb: torch.Tensor, depth_m: torch.Tensor, alpha: torch.Tensor, reference_rgb: torch.Tensor | None,
                  reference_valid: torch.Tensor | None, depth_scale_m: float, multiple: int,
                  unshuffle: int) -> torch.Tensor:
    """The UNet's input [B, 9 * s * s, Hp / s, Wp / s] (s = unshuffle): `encode_inputs`, padded at the bottom /
    right by repeating the last row / column up to Hp, Wp (multiples of `multiple`), then pixel-unshuffled.
    Without a reference only the first RENDER_CHANNELS * s * s channels are made (the rest would be zeros, and
    the UNet's first convolution skips their weights: `_LeadingChannelsConv2d`).

    Fast path: the channels are written straight into one padded channels-last buffer and unshuffled by one
    reshape-permute copy into a channels-last tensor (torch's pixel_unshuffle kernel is several times slower on
    CPUs, and oneDNN's convolutions run faster on channels-last memory); pure data movement, so it equals its
    twin `_network_input_reference` (cat, replicate pad, F.pixel_unshuffle) bit for bit (without a reference:
    the twin's leading channels, the rest of which are zeros). Differentiable.
    """
    b, _, h, w = rgb.shape
    assert depth_m.shape == (b, h, w) and alpha.shape == (b, h, w), (rgb.shape, depth_m.shape, alpha.shape)
    s = unshuffle
    assert multiple % s == 0, (multiple, s)
    hp, wp = h + (-h) % multiple, w + (-w) % multiple
    channels = RENDER_CHANNELS if reference_rgb is None else INPUT_CHANNELS
    x = rgb.new_empty((b, hp, wp, channels)).permute(0, 3, 1, 2)  # [B, C, Hp, Wp] over channels-last memory
    inner = x[:, :, :h, :w]
    inner[:, 0:3] = rgb
    inner[:, 3] = _inverse_depth_code(depth_m, alpha, depth_scale_m)
    inner[:, 4] = alpha
    if reference_rgb is not None:
        assert reference_rgb.shape == rgb.shape and reference_valid is not None and reference_valid.shape == (b, h, w)
        valid = reference_valid.to(rgb.dtype)
        inner[:, 5:8] = reference_rgb * valid[:, None]
        inner[:, 8] = valid
    if wp > w:  # replicate padding: right columns first, then the bottom rows (corner = the last pixel)
        x[:, :, :h, w:] = x[:, :, :h, w - 1:w]
    if hp > h:
        x[:, :, h:, :] = x[:, :, h - 1:h, :]
    if s == 1:
        return x
    # memory [B, Hp/s, Wp/s, C, s, s] (channels-last, unshuffled channel c*s*s + dy*s + dx), seen as NCHW
    nhwc = x.permute(0, 2, 3, 1).reshape(b, hp // s, s, wp // s, s, channels)
    return nhwc.permute(0, 1, 3, 5, 2, 4).reshape(b, hp // s, wp // s, channels * s * s).permute(0, 3, 1, 2)


def _network_input_reference(rgb, depth_m, alpha, reference_rgb, reference_valid, depth_scale_m: float, multiple: int,
                             unshuffle: int) -> torch.Tensor:
    """The plain twin of `network_input` (tests)."""
    x = encode_inputs(rgb, depth_m, alpha, reference_rgb, reference_valid, depth_scale_m)
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return F.pixel_unshuffle(x, unshuffle) if unshuffle > 1 else x


def pixel_shuffle(x: torch.Tensor, s: int) -> torch.Tensor:
    """F.pixel_shuffle(x, s) of x [B, C * s * s, H, W] -> [B, C, H * s, W * s] as a reshape-permute copy (faster on
    CPUs; the same values, tested)."""
    b, c, h, w = x.shape
    assert c % (s * s) == 0, (c, s)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():  # the UNet's output on CPUs
        # memory [B, H, W, C/s^2, s, s] -> [B, H, s, W, s, C/s^2]: a channels-last result, one copy
        nhwc = x.permute(0, 2, 3, 1).reshape(b, h, w, c // (s * s), s, s)
        return nhwc.permute(0, 1, 4, 2, 5, 3).reshape(b, h * s, w * s, c // (s * s)).permute(0, 3, 1, 2)
    return x.view(b, c // (s * s), s, s, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // (s * s), h * s, w * s)


class _LeadingChannelsConv2d(nn.Conv2d):
    """An nn.Conv2d (same parameters, same state dict) that also takes only its leading input channels: the
    missing trailing ones count as zeros, so their weights are skipped instead of multiplied by zeros."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == self.in_channels:
            return super().forward(x)
        assert x.shape[1] < self.in_channels and self.groups == 1 and self.padding_mode == "zeros", (
            x.shape, self.in_channels, self.groups, self.padding_mode)
        return F.conv2d(x, self.weight[:, :x.shape[1]], self.bias, self.stride, self.padding, self.dilation)


class Enhancer(nn.Module):
    """See the module docstring."""

    def __init__(self, config: EnhancerConfig | None = None, unet=None):
        super().__init__()
        self.config = config or EnhancerConfig()
        self.unet = unet if unet is not None else _unet_from_config(self.config)
        s2 = self.config.unshuffle ** 2
        if self.unet.config.in_channels != INPUT_CHANNELS * s2 or self.unet.config.out_channels != OUTPUT_CHANNELS * s2:
            raise ValueError(f"enhancer UNet must take {INPUT_CHANNELS * s2} channels and give {OUTPUT_CHANNELS * s2} "
                             f"(unshuffle {self.config.unshuffle}), got in={self.unet.config.in_channels} "
                             f"out={self.unet.config.out_channels}")
        self.config.unet = dict(self.unet.config)
        # a render without a reference skips the 4 zero channels (a plain nn.Conv2d first layer, as diffusers makes
        # it; any other layer is sent the zeros)
        self._skips_reference = type(self.unet.conv_in) is nn.Conv2d
        if self._skips_reference:
            self.unet.conv_in.__class__ = _LeadingChannelsConv2d
        if unet is None:  # identity start: the residual branch begins at exactly zero
            nn.init.zeros_(self.unet.conv_out.weight)
            nn.init.zeros_(self.unet.conv_out.bias)

    @property
    def multiple(self) -> int:
        """Input height and width are padded to a multiple of this."""
        downs = len(self.unet.config.block_out_channels) - 1
        return self.config.unshuffle * 2 ** downs

    def forward(self, rgb: torch.Tensor, depth_m: torch.Tensor, alpha: torch.Tensor,
                reference_rgb: torch.Tensor | None = None, reference_valid: torch.Tensor | None = None) -> torch.Tensor:
        """Refined rgb [B, 3, H, W] (not clamped) from rgb [B, 3, H, W], depth_m [B, H, W], alpha [B, H, W] and an
        optional warped reference rgb [B, 3, H, W] with validity [B, H, W]. Differentiable."""
        h, w = rgb.shape[-2:]
        s = self.config.unshuffle
        if reference_rgb is None and not self._skips_reference:
            reference_rgb, reference_valid = torch.zeros_like(rgb), torch.zeros_like(alpha)
        x = network_input(rgb, depth_m, alpha, reference_rgb, reference_valid, self.config.depth_scale_m,
                          self.multiple, s)
        t = torch.full((x.shape[0],), self.config.timestep, dtype=torch.long)
        residual = self.unet(x, t).sample
        if s > 1:
            residual = pixel_shuffle(residual, s)
        return rgb + residual[..., :h, :w]

    @torch.no_grad()
    def enhance(self, rgb: np.ndarray, depth_m: np.ndarray, alpha: np.ndarray, reference_rgb: np.ndarray | None = None,
                reference_valid: np.ndarray | None = None, max_batch: int = 6) -> np.ndarray:
        """Refined rgb [C, H, W, 3] float32 in [0, 1] for C cameras of one size.

        Args:
            rgb: [C, H, W, 3] float in [0, 1]; depth_m: [C, H, W] metres; alpha: [C, H, W] in [0, 1].
            reference_rgb: optional [C, H, W, 3] warped reference; reference_valid: [C, H, W] (needed with it).
        On a CPU the UNet is called between compiled input / output passes (`_enhance_cpu`), not through
        `forward`: a subclass's forward or a forward hook applies on other devices only.
        Raises ValueError for mismatched shapes (the compiled passes do not check bounds).
        """
        rgb = np.asarray(rgb, np.float32)
        if rgb.ndim != 4 or rgb.shape[-1] != 3:
            raise ValueError(f"enhance: rgb must be [C, H, W, 3], got {rgb.shape}")
        c, h, w, _ = rgb.shape
        if np.shape(depth_m) != (c, h, w) or np.shape(alpha) != (c, h, w):
            raise ValueError(f"enhance: depth_m and alpha must be {(c, h, w)}, got {np.shape(depth_m)} and "
                             f"{np.shape(alpha)}")
        if reference_rgb is not None and (np.shape(reference_rgb) != rgb.shape
                                          or np.shape(reference_valid) != (c, h, w)):
            raise ValueError(f"enhance: reference_rgb must be {rgb.shape} and reference_valid {(c, h, w)}, got "
                             f"{np.shape(reference_rgb)} and {np.shape(reference_valid)}")
        self.eval()
        device = next(self.parameters()).device
        if device.type == "cpu":
            return self._enhance_cpu(rgb, depth_m, alpha, reference_rgb, reference_valid, max_batch)

        def tensor(array) -> torch.Tensor:
            return torch.from_numpy(np.asarray(array, np.float32)).to(device)

        out = np.empty_like(rgb)
        for i in range(0, c, max_batch):
            sl = slice(i, i + max_batch)
            ref = None if reference_rgb is None else tensor(reference_rgb[sl]).permute(0, 3, 1, 2)
            valid = None if reference_rgb is None else tensor(reference_valid[sl])
            y = self(tensor(rgb[sl]).permute(0, 3, 1, 2), tensor(depth_m[sl]), tensor(alpha[sl]), ref, valid)
            torch.from_numpy(out[sl]).copy_(y.clamp_(0, 1).permute(0, 2, 3, 1))  # one parallel copy into NHWC
        return out

    def warm_up(self) -> None:
        """Run one tiny frame, so a server's first request does not pay for compiling the CPU passes (numba's
        cache makes it fast after the first process) or for torch's first call."""
        m = self.multiple
        self.enhance(np.zeros((1, m, m, 3), np.float32), np.ones((1, m, m), np.float32), np.ones((1, m, m), np.float32))

    def _enhance_cpu(self, rgb: np.ndarray, depth_m: np.ndarray, alpha: np.ndarray, reference_rgb, reference_valid,
                     max_batch: int) -> np.ndarray:
        """`enhance` on a CPU: the input is made and the output finished by compiled passes over the numpy arrays
        (`_model_kernels`: the same values as `network_input` and `pixel_shuffle` + add + clamp, tested), so the
        only torch work is the UNet's."""
        from neural_sensor.enhance._model_kernels import add_shuffled_residual, unshuffled_input

        c, h, w, _ = rgb.shape
        s, multiple = self.config.unshuffle, self.multiple
        hp, wp = h + (-h) % multiple, w + (-w) % multiple
        rgb = np.ascontiguousarray(rgb, np.float32)
        depth_m = np.ascontiguousarray(depth_m, np.float32)
        alpha = np.ascontiguousarray(alpha, np.float32)
        if reference_rgb is None and not self._skips_reference:  # a first layer that needs the zero channels
            reference_rgb, reference_valid = np.zeros_like(rgb), np.zeros_like(alpha)
        if reference_rgb is None:
            channels = RENDER_CHANNELS
            reference_rgb, reference_valid = np.empty((0, 0, 0, 3), np.float32), np.empty((0, 0, 0), np.float32)
        else:
            channels = INPUT_CHANNELS
            reference_rgb = np.ascontiguousarray(reference_rgb, np.float32)
            reference_valid = np.ascontiguousarray(reference_valid, np.float32)
        out = np.empty_like(rgb)
        for i in range(0, c, max_batch):
            sl = slice(i, i + max_batch)
            n = len(rgb[sl])
            x = np.empty((n, hp // s, wp // s, channels * s * s), np.float32)
            unshuffled_input(rgb[sl], depth_m[sl], alpha[sl], reference_rgb[sl], reference_valid[sl],
                             self.config.depth_scale_m, s, x)  # (slices of the empty placeholders stay empty)
            t = torch.full((n,), self.config.timestep, dtype=torch.long)
            residual = self.unet(torch.from_numpy(x).permute(0, 3, 1, 2), t).sample
            # a view (oneDNN answers channels-last); float32 also under a bfloat16 autocast
            residual = residual.permute(0, 2, 3, 1).contiguous().float()
            add_shuffled_residual(rgb[sl], residual.numpy(), s, out[sl])
        return out

    # ------------------------------------------------------------- checkpoints
    def save_pretrained(self, folder: str | Path) -> None:
        """Write config.json (class, contract, diffusers UNet config) and model.safetensors into `folder`."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = asdict(self.config)
        config["unet"] = json.loads(json.dumps(dict(self.unet.config), default=list))
        tmp = folder / "model.safetensors.tmp"
        save_file({k: v.detach().cpu().contiguous() for k, v in self.unet.state_dict().items()}, str(tmp))
        tmp.chmod(0o644)
        tmp.replace(folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps({"class": "Enhancer", **config}, indent=1))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "Enhancer":
        """Load our checkpoint folder, or a diffusers UNet2DModel folder (+ optional enhancer.json)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            raw = json.loads((folder / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{folder}: not an enhancer checkpoint: config.json unreadable ({err})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{folder}: config.json is not an object")
        if raw.get("class") == "Enhancer":
            raw.pop("class")
            known = {f for f in EnhancerConfig.__dataclass_fields__}
            unknown = set(raw) - known
            if unknown:
                raise ValueError(f"{folder}: config.json has unknown enhancer fields {sorted(unknown)}")
            config = EnhancerConfig(**{**raw, "block_out_channels": tuple(raw.get("block_out_channels", (16, 32, 64)))})
            try:
                model = cls(config)
                state = load_file(str(folder / "model.safetensors"))
                model.unet.load_state_dict(state)
            except Exception as err:  # noqa: BLE001 - safetensors raises its own error type; all become one message
                raise ValueError(f"{folder}: model.safetensors does not load into the enhancer ({err})") from None
            return model.eval()
        if raw.get("_class_name") == "UNet2DModel":
            return cls._from_diffusers_folder(folder)
        raise ValueError(f"{folder}: config.json is neither an Enhancer config nor a diffusers UNet2DModel config "
                         f"(class={raw.get('class')!r}, _class_name={raw.get('_class_name')!r})")

    @classmethod
    def _from_diffusers_folder(cls, folder: Path) -> "Enhancer":
        from diffusers import UNet2DModel

        contract = {}
        if (folder / "enhancer.json").exists():
            try:
                contract = json.loads((folder / "enhancer.json").read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"{folder}: enhancer.json unreadable ({err})") from None
            bad = set(contract) - set(_CONTRACT_FIELDS)
            if bad:
                raise ValueError(f"{folder}: enhancer.json has unknown fields {sorted(bad)}; allowed {_CONTRACT_FIELDS}")
        contract.setdefault("unshuffle", 1)
        contract.setdefault("model_name", folder.name)
        try:
            unet = UNet2DModel.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, RuntimeError, TypeError) as err:
            raise ValueError(f"{folder}: diffusers could not load the UNet2DModel ({err})") from None
        return cls(EnhancerConfig(**contract), unet=unet).eval()


def checkpoint_hash(folder: str | Path) -> str:
    """sha256 (16 hex) over a checkpoint's config and weight files (not its card, history or optimiser state)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    names = [n for n in _WEIGHT_AND_CONFIG_FILES if (folder / n).is_file()]
    if "config.json" not in names:
        raise ValueError(f"{folder}: no config.json; not a checkpoint folder")
    for name in names:
        digest.update(name.encode())
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:16]
