"""The enhancer's UNet run for inference on a CPU: diffusers' `UNet2DModel.forward` (the reference twin, tested
against it) with the same modules and weights, less three costs that change no value beyond float rounding.

1. The timestep is fixed and the same for every image, so each ResNet block's time embedding
   (`time_emb_proj(silu(emb))`, one vector) is added to its first convolution's bias once per call,
   instead of a [B, C, 1, 1] tensor being broadcast-added to the convolution's output (on channels-last
   bfloat16 [6, 16, 68, 120], the run's six cameras, 0.8 ms an add, three such adds a call).
2. No division of each block's output by an `output_scale_factor` of 1 (a full pass over it in diffusers).
3. Under a bfloat16 autocast, the GroupNorm of a small channels-last tensor (<= SMALL_NORM_ELEMENTS) runs in
   float32: torch's bfloat16 channels-last GroupNorm is 2-7x slower than float32 there (8 channels a group on
   [6, 64, 17, 30]: 0.36-1.4 ms against 0.06; larger tensors are as fast in bfloat16, and their cast back is not).

Only the UNets this module was written for take it (`unsupported_reason` says why another does not: attention,
other block types, a scale-shift time embedding, FreeU, ...); `Enhancer` calls diffusers' forward for those.
On the shipped enhancer, six 480x270 frames on two cores of an AMD EPYC Zen 4 in bfloat16: 56 -> 47 ms
(alternating in one process, `docs/results.md`, 2026-12-05).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SMALL_NORM_ELEMENTS = 300_000  # a GroupNorm input at most this big runs in float32 under a bfloat16 autocast


def unsupported_reason(unet) -> str | None:
    """None when `unet_forward` computes this UNet as its diffusers forward does (to float rounding), else why not
    (a string). `unet_forward` calls some modules' weights directly, so a UNet with a forward hook or pre-hook on
    any module (or a global one), or whose ResNet convolutions are not plain `nn.Conv2d`, is not supported."""
    if type(unet).__name__ != "UNet2DModel":
        return f"a {type(unet).__name__}, not a diffusers UNet2DModel"
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return "a global module forward hook is registered"
    hooked = [name or "the UNet" for name, m in unet.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    if hooked:
        return f"forward hooks on {hooked[:3]}"
    config = unet.config
    if config.center_input_sample or config.time_embedding_type != "positional" or unet.class_embedding is not None:
        return "input centring, a Fourier time embedding or a class embedding"
    blocks = [*unet.down_blocks, *unet.up_blocks]
    if [type(b).__name__ for b in unet.down_blocks] != ["DownBlock2D"] * len(unet.down_blocks):
        return f"down blocks {[type(b).__name__ for b in unet.down_blocks]}, not DownBlock2D"
    if [type(b).__name__ for b in unet.up_blocks] != ["UpBlock2D"] * len(unet.up_blocks):
        return f"up blocks {[type(b).__name__ for b in unet.up_blocks]}, not UpBlock2D"
    if type(unet.mid_block).__name__ != "UNetMidBlock2D" or any(a is not None for a in unet.mid_block.attentions):
        return "a mid block other than UNetMidBlock2D without attention"
    if any(getattr(b, name, None) for b in unet.up_blocks for name in ("s1", "s2", "b1", "b2")):
        return "FreeU enabled"
    if not isinstance(unet.conv_act, nn.SiLU):
        return f"output activation {type(unet.conv_act).__name__}"
    resnets = [r for b in [*blocks, unet.mid_block] for r in b.resnets]
    for r in resnets:
        if (type(r).__name__ != "ResnetBlock2D" or r.upsample is not None or r.downsample is not None
                or r.time_embedding_norm != "default" or r.time_emb_proj is None or r.skip_time_act
                or not isinstance(r.nonlinearity, nn.SiLU) or not isinstance(r.norm1, nn.GroupNorm)
                or not isinstance(r.norm2, nn.GroupNorm) or type(r.conv1) is not nn.Conv2d or r.conv1.bias is None):
            return ("a ResNet block with up/down sampling, a scale-shift or skipped time activation, not SiLU, or its "
                    "first convolution not a plain nn.Conv2d with a bias")
    for b in unet.down_blocks:
        for d in b.downsamplers or []:
            if type(d).__name__ != "Downsample2D" or d.norm is not None or not d.use_conv or d.padding == 0:
                return "a downsampler other than a padded strided convolution"
    for b in unet.up_blocks:
        for u in b.upsamplers or []:
            if (type(u).__name__ != "Upsample2D" or u.norm is not None or u.use_conv_transpose or not u.interpolate
                    or not u.use_conv or u.name != "conv"):
                return "an upsampler other than nearest x2 and a convolution"
    return None


@torch.no_grad()
def folded_biases(unet, timestep: int, cache: dict | None = None) -> dict[int, torch.Tensor]:
    """{id(ResNet block): its first convolution's bias + its time embedding at `timestep`} ([C], the weights' dtype).

    cache: a dict the caller keeps: the biases are made again only when the timestep or a parameter they use changed
    (its storage or its version counter: an optimizer step, `load_state_dict`): ~0.1 ms a call instead of ~1."""
    resnets = [r for b in [*unet.down_blocks, unet.mid_block, *unet.up_blocks] for r in b.resnets]
    used = [*unet.time_embedding.parameters(), *(p for r in resnets for p in (r.conv1.bias,
                                                                              *r.time_emb_proj.parameters()))]
    key = (timestep, tuple((p.data_ptr(), p._version) for p in used))
    entry = cache.get("entry") if cache is not None else None  # (key, biases): one object, read and set at once
    if entry is not None and entry[0] == key:
        return entry[1]
    biases = _folded_biases(unet, timestep)
    if cache is not None:
        cache["entry"] = (key, biases)
    return biases


def _folded_biases(unet, timestep: int) -> dict[int, torch.Tensor]:
    t = torch.tensor([timestep], dtype=torch.long, device=unet.device)
    with torch.autocast(unet.device.type, enabled=False):  # the sums in the weights' dtype even under an autocast
        emb = unet.time_embedding(unet.time_proj(t).to(dtype=unet.dtype))  # [1, E]
        return {id(r): (r.conv1.bias + r.time_emb_proj(r.nonlinearity(emb))[0]).contiguous()
                for b in [*unet.down_blocks, unet.mid_block, *unet.up_blocks] for r in b.resnets}


def _norm_silu(norm: nn.GroupNorm, h: torch.Tensor) -> torch.Tensor:
    if h.dtype == torch.bfloat16 and h.numel() <= SMALL_NORM_ELEMENTS:
        weight, bias = (None if p is None else p.float() for p in (norm.weight, norm.bias))  # weights of any width
        return F.silu(F.group_norm(h.float(), norm.num_groups, weight, bias, norm.eps)).to(h.dtype)
    return F.silu(norm(h))


def _resnet(r, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    y = r.conv1._conv_forward(_norm_silu(r.norm1, h), r.conv1.weight, bias)
    y = r.conv2(r.dropout(_norm_silu(r.norm2, y)))
    if r.conv_shortcut is not None:
        h = r.conv_shortcut(h)
    out = h + y
    return out if r.output_scale_factor == 1 else out / r.output_scale_factor


@torch.no_grad()
def unet_forward(unet, x: torch.Tensor, timestep: int, cache: dict | None = None) -> torch.Tensor:
    """The UNet's output [B, C_out, H, W] for input x [B, C_in, H, W] at one fixed integer timestep, as
    `unet(x, timestep).sample` computes it (equal to float rounding, tested), for a UNet `unsupported_reason`
    accepts (C_in below the config's when its first convolution takes a leading slice, as `Enhancer`'s does without
    a reference); H and W multiples of 2^(number of downsamplers). Inference only (no gradient). cache: see
    `folded_biases`."""
    assert x.ndim == 4 and x.shape[1] <= unet.config.in_channels, f"unet_forward: x {tuple(x.shape)}"
    downs = sum(1 for b in unet.down_blocks if b.downsamplers is not None)
    assert x.shape[2] % 2 ** downs == 0 and x.shape[3] % 2 ** downs == 0, f"unet_forward: x {tuple(x.shape)}"
    biases = folded_biases(unet, timestep, cache)
    h = unet.conv_in(x)
    skips = [h]
    for block in unet.down_blocks:
        for r in block.resnets:
            h = _resnet(r, h, biases[id(r)])
            skips.append(h)
        for d in block.downsamplers or []:
            h = d.conv(h)
            skips.append(h)
    for r in unet.mid_block.resnets:
        h = _resnet(r, h, biases[id(r)])
    for block in unet.up_blocks:
        for r in block.resnets:
            h = _resnet(r, torch.cat([h, skips.pop()], dim=1), biases[id(r)])
        for u in block.upsamplers or []:
            h = u.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
    return unet.conv_out(_norm_silu(unet.conv_norm_out, h))
