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
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neural_sensor.enhance.precision import resolve_cpu_precision

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
    reference_views: int = 0  # trained with the drive log's nearest views of each camera warped in as its reference:
    #   how many (the rig then sends them, `enhance.log_warp`); 0: trained without, the rig sends none


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


def _per_camera(arrays, name: str) -> list[np.ndarray]:
    """A [C, ...] array or a sequence of C arrays, as a list of C numpy arrays."""
    if isinstance(arrays, np.ndarray):
        if arrays.ndim < 1:
            raise ValueError(f"enhance: {name} must be [C, ...] or a sequence of C arrays, got a scalar")
        return list(arrays)
    if isinstance(arrays, torch.Tensor):
        raise ValueError(f"enhance: {name} must be numpy arrays, got a torch tensor")
    return [np.asarray(a) for a in arrays]


def _image(array: np.ndarray, name: str) -> np.ndarray:
    """A C-contiguous float32 or uint8 image (uint8 stays: the compiled passes decode it); bool / other floats ->
    float32."""
    if array.dtype == np.uint8 or array.dtype == np.float32:
        return np.ascontiguousarray(array)
    if array.dtype.kind not in "fb":
        raise ValueError(f"enhance: {name} must be float or uint8, got {array.dtype}")
    return np.ascontiguousarray(array, np.float32)


def _divisor(image: np.ndarray) -> float:
    """What the compiled passes divide an image's values by: 255 for uint8, 1 (exact) for float32."""
    return 255.0 if image.dtype == np.uint8 else 1.0


def _as_float(array: np.ndarray) -> np.ndarray:
    """float32 [..]: uint8 / 255 (the wire's decoding, bit for bit), bool as 0 / 1, other floats cast."""
    if array.dtype == np.uint8:
        return np.divide(array, np.float32(255.0), dtype=np.float32)
    return np.ascontiguousarray(array, np.float32)


def _kernel_mask(array: np.ndarray) -> np.ndarray:
    """A reference validity as the compiled input pass takes it: a bool mask or float32 weights as they are, an
    integer mask as bool (nonzero = valid), other floats as float32 (the same values as `_mask`)."""
    if array.dtype == np.bool_ or array.dtype == np.float32:
        return array
    return np.ascontiguousarray(array, np.float32) if array.dtype.kind == "f" else array != 0


def _mask(array: np.ndarray) -> np.ndarray:
    """A reference validity as float32: bool / integer masks as 0 / 1 (nonzero = valid), floats as they are."""
    if array.dtype.kind == "f":
        return np.ascontiguousarray(array, np.float32)
    return (array != 0).astype(np.float32)


def _depth(array: np.ndarray) -> np.ndarray:
    """A depth map as float32 (any float width); ValueError for other dtypes."""
    out = np.empty(array.shape, np.float32)
    _float32_into(array, out)
    return out


def _float32_into(array: np.ndarray, out: np.ndarray) -> None:
    """out (float32) = array, a float of any width (float16 through torch's vectorised cast)."""
    if array.dtype.kind != "f":
        raise ValueError(f"enhance: depth_m must be float, got {array.dtype}")
    if array.dtype == np.float16:
        with warnings.catch_warnings():  # a bytes message's arrays are read-only; torch only reads this one
            warnings.simplefilter("ignore", UserWarning)
            source = torch.from_numpy(np.ascontiguousarray(array))
        torch.from_numpy(out).copy_(source)
    else:
        np.copyto(out, array, casting="unsafe")


def _store(value: np.ndarray, target: np.ndarray) -> None:
    """target = value (float32 in [0, 1]); a uint8 target gets clip(v * 255, 0, 255) + 0.5 truncated (the wire's)."""
    if target.dtype == np.uint8:
        scaled = np.clip(value * np.float32(255.0), 0.0, 255.0) + np.float32(0.5)
        target[...] = scaled.astype(np.uint8)
    else:
        target[...] = value


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
        self.cpu_precision = "float32"  # the UNet's arithmetic in `enhance` on a CPU (`set_cpu_precision`)
        self._folded_biases: dict = {}  # `unet_cpu.folded_biases`' cache

    def set_cpu_precision(self, precision: str) -> str:
        """How `enhance` runs the UNet on a CPU: "float32" (the default; within 1e-4 of `forward`), "bfloat16" (an
        autocast: the weights and the input stay float32, the convolutions run in bfloat16; the residual differs by
        ~1e-4 on average, tested), or "auto" (bfloat16 where the CPU has AMX or runs it faster,
        `resolve_cpu_precision`).
        Returns the precision now in use. Training, `forward` and other devices are not affected."""
        self.cpu_precision = resolve_cpu_precision(precision, "enhancer precision")
        return self.cpu_precision

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
    def enhance(self, rgb, depth_m, alpha, reference_rgb=None, reference_valid=None, max_batch: int = 6,
                out=None) -> np.ndarray | list[np.ndarray]:
        """Refined rgb in [0, 1] for C cameras of one size.

        Args:
            rgb: [C, H, W, 3] float in [0, 1] or uint8 (value / 255, as the wire's `to_float`), or a sequence of C
                such [H, W, 3] arrays; depth_m: [C, H, W] metres (any float width) or C [H, W] arrays; alpha:
                [C, H, W] float in [0, 1] or uint8, or C [H, W] arrays.
            reference_rgb: optional warped reference, [C, H, W, 3] or C arrays (float or uint8);
                reference_valid: [C, H, W] or C arrays (needed with it): float weights, or bool / integer masks
                (nonzero = valid).
            out: None, or C writable targets [H, W, 3] (a [C, H, W, 3] array or a sequence), float32 or uint8 (rounded
                as the wire's `to_uint8_into`): a server writes a reply straight into a client's shared block.
        Returns:
            [C, H, W, 3] float32 (out=None), else out itself; C = 0 gives an empty result.
        On a CPU the UNet is called between compiled input / output passes (`_enhance_cpu`), not through
        `forward`: a subclass's forward or a forward hook on the Enhancer applies on other devices only (a hook on a
        module of the UNet sends it through diffusers' forward instead of `unet_cpu`'s); its arithmetic is
        `cpu_precision` (float32 unless `set_cpu_precision` chose bfloat16).
        Raises ValueError for mismatched shapes or dtypes (the compiled passes do not check bounds).
        """
        given = rgb
        rgb, depth_m, alpha = _per_camera(rgb, "rgb"), _per_camera(depth_m, "depth_m"), _per_camera(alpha, "alpha")
        c = len(rgb)
        if c == 0 and not depth_m and not alpha:  # nothing to refine (e.g. a mask that selected no view)
            if out is not None:
                return out
            return np.empty((0, *np.shape(given)[1:]) if np.ndim(given) == 4 else (0, 0, 0, 3), np.float32)
        if c == 0 or rgb[0].ndim != 3 or rgb[0].shape[-1] != 3 or any(a.shape != rgb[0].shape for a in rgb):
            raise ValueError(f"enhance: rgb must be [C, H, W, 3] (C >= 1, one size), got {[a.shape for a in rgb]}")
        h, w, _ = rgb[0].shape
        if len(depth_m) != c or len(alpha) != c or any(a.shape != (h, w) for a in depth_m + alpha):
            raise ValueError(f"enhance: depth_m and alpha must be {(c, h, w)}, got {[a.shape for a in depth_m]} and "
                             f"{[a.shape for a in alpha]}")
        if reference_rgb is not None:
            reference_rgb = _per_camera(reference_rgb, "reference_rgb")
            reference_valid = _per_camera(reference_valid, "reference_valid") if reference_valid is not None else []
            if (len(reference_rgb) != c or len(reference_valid) != c or any(a.shape != (h, w, 3) for a in reference_rgb)
                    or any(a.shape != (h, w) for a in reference_valid)):
                raise ValueError(f"enhance: reference_rgb must be {(c, h, w, 3)} and reference_valid {(c, h, w)}, got "
                                 f"{[a.shape for a in reference_rgb]} and {[a.shape for a in reference_valid]}")
        result = out
        if out is None:
            result = np.empty((c, h, w, 3), np.float32)
            out = list(result)
        else:
            out = _per_camera(out, "out")
            if len(out) != c or any(a.shape != (h, w, 3) or a.dtype not in (np.float32, np.uint8)
                                    or not a.flags.writeable for a in out):
                got = [(a.shape, str(a.dtype), "writable" if a.flags.writeable else "read-only") for a in out]
                raise ValueError(f"enhance: out must be {c} writable float32 / uint8 arrays of {(h, w, 3)}, got {got}")
        rgb, alpha = [_image(a, "rgb") for a in rgb], [_image(a, "alpha") for a in alpha]
        self.eval()
        device = next(self.parameters()).device
        if device.type == "cpu":
            self._enhance_cpu(rgb, depth_m, alpha, reference_rgb, reference_valid, max_batch, out)
            return result

        def tensor(arrays, channels_last=False, convert=_as_float) -> torch.Tensor:
            t = torch.from_numpy(np.stack([convert(a) for a in arrays])).to(device)
            return t.permute(0, 3, 1, 2) if channels_last else t

        for i in range(0, c, max_batch):
            sl = slice(i, i + max_batch)
            ref = None if reference_rgb is None else tensor(reference_rgb[sl], True)
            valid = None if reference_rgb is None else tensor(reference_valid[sl], convert=_mask)
            y = self(tensor(rgb[sl], True), tensor(depth_m[sl], convert=_depth), tensor(alpha[sl]), ref, valid)
            y = y.clamp_(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
            for value, target in zip(y, out[sl]):
                _store(value, target)
        return result

    def warm_up(self) -> None:
        """Run one tiny frame, as arrays of floats and as a server's frames (uint8 and float32, writable and
        read-only) with replies of their dtype, so a server's first request does not pay for compiling the CPU
        passes (numba's cache makes it fast after the first process) or for torch's first call."""
        m = self.multiple
        self.enhance(np.zeros((1, m, m, 3), np.float32), np.ones((1, m, m), np.float32), np.ones((1, m, m), np.float32))
        for writable in (True, False):  # frames in a shared block are writable, those of a bytes message read-only
            frames = [np.zeros((m, m, 3), np.uint8), np.ones((m, m), np.float16), np.ones((m, m), np.uint8),
                      np.zeros((m, m, 3), np.float32), np.ones((m, m), np.float32)]
            for array in frames:
                array.setflags(write=writable)
            rgb8, depth16, alpha8, rgb32, one32 = frames
            self.enhance([rgb8], [depth16], [alpha8], out=[np.empty((m, m, 3), np.uint8)])
            self.enhance([rgb32], [one32], [one32], out=[np.empty((m, m, 3), np.float32)])
            valid = np.ones((m, m), np.bool_)  # and with the rig's reference: uint8 rgb, a bool mask
            valid.setflags(write=writable)
            self.enhance([rgb8], [depth16], [alpha8], [rgb8], [valid], out=[np.empty((m, m, 3), np.uint8)])

    def _enhance_cpu(self, rgb: list, depth_m: list, alpha: list, reference_rgb, reference_valid, max_batch: int,
                     out: list) -> None:
        """`enhance` on a CPU, into `out`: each camera's input is made and its output finished by compiled passes
        over its numpy arrays (`_model_kernels`: the same values as `network_input` and `pixel_shuffle` + add +
        clamp, tested; uint8 images read and written in place), so the only torch work is the UNet's (`unet_cpu`'s
        forward where it applies, diffusers' otherwise)."""
        from neural_sensor.enhance._model_kernels import add_shuffled_residual, unshuffled_input
        from neural_sensor.enhance.unet_cpu import unet_forward, unsupported_reason

        c, (h, w, _) = len(rgb), rgb[0].shape
        s, multiple = self.config.unshuffle, self.multiple
        hp, wp = h + (-h) % multiple, w + (-w) % multiple
        if reference_rgb is None and not self._skips_reference:  # a first layer that needs the zero channels
            reference_rgb, reference_valid = [np.zeros((h, w, 3), np.float32)] * c, [np.zeros((h, w), np.float32)] * c
        channels = RENDER_CHANNELS if reference_rgb is None else INPUT_CHANNELS
        no_ref, no_valid = np.empty((0, 0, 0, 3), np.float32), np.empty((0, 0, 0), np.float32)
        fast = unsupported_reason(self.unet) is None
        depth = np.empty((h, w), np.float32)  # a float16 / float64 depth map converted, one camera at a time
        for i in range(0, c, max_batch):
            n = min(max_batch, c - i)
            x = np.empty((n, hp // s, wp // s, channels * s * s), np.float32)
            for j in range(n):
                k = i + j
                d = depth_m[k]
                if d.dtype != np.float32 or not d.flags.c_contiguous:
                    _float32_into(d, depth)
                    d = depth
                ref = no_ref if reference_rgb is None else _image(reference_rgb[k], "reference_rgb")[None]
                valid = no_valid if reference_rgb is None else _kernel_mask(reference_valid[k])[None]
                unshuffled_input(rgb[k][None], d[None], alpha[k][None], ref, valid, self.config.depth_scale_m, s,
                                 _divisor(rgb[k]), _divisor(alpha[k]), _divisor(ref), x[j:j + 1])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_precision == "bfloat16"):
                if fast:  # diffusers' forward less its per-call costs (`unet_cpu`: equal to float rounding, tested)
                    residual = unet_forward(self.unet, torch.from_numpy(x).permute(0, 3, 1, 2), self.config.timestep,
                                            self._folded_biases)
                else:
                    t = torch.full((n,), self.config.timestep, dtype=torch.long)
                    residual = self.unet(torch.from_numpy(x).permute(0, 3, 1, 2), t).sample
            # a view (oneDNN answers channels-last); float32 also under a bfloat16 autocast
            residual = residual.permute(0, 2, 3, 1).contiguous().float().numpy()
            for j in range(n):
                k = i + j
                add_shuffled_residual(rgb[k][None], residual[j:j + 1], s, _divisor(rgb[k]), out[k].dtype == np.uint8,
                                      out[k][None])

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
