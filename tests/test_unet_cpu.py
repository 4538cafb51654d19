"""`enhance.unet_cpu`: the enhancer's UNet forward for CPU inference against its reference twin, diffusers' own."""

import numpy as np
import pytest
import torch

from neural_sensor.checkpoints import default_checkpoint
from neural_sensor.enhance import unet_cpu
from neural_sensor.enhance.model import Enhancer, EnhancerConfig


def _random_unet(**kwargs):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    config = dict(sample_size=None, in_channels=12, out_channels=6, block_out_channels=(16, 32, 64),
                  down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, layers_per_block=2,
                  norm_num_groups=8, add_attention=False)
    config.update(kwargs)
    unet = UNet2DModel(**config).eval()
    torch.nn.init.normal_(unet.conv_out.weight, std=0.2)  # diffusers starts it small: make the output matter
    return unet


@pytest.mark.parametrize("which", ["enhancer-run", "enhancer-small", "random"])
def test_unet_forward_equals_the_diffusers_forward(which):
    """On the shipped checkpoints and a random two-layer UNet, for a channels-last input as `enhance` sends it:
    float32 within 1e-5 of diffusers' forward (relative to the output's range); under a bfloat16 autocast its
    error against float32 is at most 1.25x that of diffusers' forward under the same autocast on average and 2x at
    its worst element (measured: 0.85-0.99x on an AMD EPYC Zen 4; the worst element 1.37x on an Intel Xeon with
    AMX, whose bfloat16 convolutions round in another order; its small GroupNorms run in float32)."""
    unet = _random_unet() if which == "random" else Enhancer.from_pretrained(default_checkpoint(which)).unet.eval()
    assert unet_cpu.unsupported_reason(unet) is None
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 32, 48, unet.config.in_channels, generator=g).permute(0, 3, 1, 2)  # channels-last
    t = torch.full((3,), 199, dtype=torch.long)
    with torch.no_grad():
        expected = unet(x, t).sample
        got = unet_cpu.unet_forward(unet, x, 199)
        scale = float(expected.abs().max())
        assert scale > 1e-3 and got.shape == expected.shape
        assert float((got - expected).abs().max()) <= 1e-5 * scale
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected16 = unet(x, t).sample.float()
            got16 = unet_cpu.unet_forward(unet, x, 199).float()
        ours, theirs = (got16 - expected).abs(), (expected16 - expected).abs()  # each one's error against float32
        assert float(theirs.max()) > 0 and float(ours.max()) <= 2.0 * float(theirs.max())
        assert float(ours.mean()) <= 1.25 * float(theirs.mean())


def test_other_unets_take_diffusers_forward():
    """A UNet with attention, attention blocks or a scale-shift time embedding is named unsupported (and why), and
    an enhancer built on one still enhances, through diffusers' forward, exactly as its torch forward does."""
    assert "attention" in unet_cpu.unsupported_reason(_random_unet(add_attention=True))
    blocks = _random_unet(down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
    assert "AttnDownBlock2D" in unet_cpu.unsupported_reason(blocks)
    assert "scale-shift" in unet_cpu.unsupported_reason(_random_unet(resnet_time_scale_shift="scale_shift"))
    assert "UNet2DModel" in unet_cpu.unsupported_reason(torch.nn.Conv2d(3, 3, 1))

    unet = _random_unet(in_channels=9 * 4, out_channels=3 * 4, layers_per_block=1, add_attention=True)
    model = Enhancer(EnhancerConfig(unshuffle=2), unet=unet).eval()
    rng = np.random.default_rng(2)
    rgb, depth = rng.random((2, 16, 24, 3), dtype=np.float32), (rng.random((2, 16, 24)) * 30).astype(np.float32)
    alpha = np.ones((2, 16, 24), np.float32)
    got = model.enhance(rgb, depth, alpha)
    with torch.no_grad():
        expected = model(torch.from_numpy(rgb).permute(0, 3, 1, 2), torch.from_numpy(depth), torch.from_numpy(alpha))
    assert np.array_equal(got, expected.clamp(0, 1).permute(0, 2, 3, 1).numpy())


def test_folded_biases_follow_the_weights():
    """The cached biases are reused while nothing changes, and made again when a bias they fold changes in place
    (an optimizer step, `load_state_dict`) or the timestep does."""
    unet = _random_unet()
    cache: dict = {}
    first = unet_cpu.folded_biases(unet, 199, cache)
    assert unet_cpu.folded_biases(unet, 199, cache) is first
    resnet = unet.down_blocks[0].resnets[0]
    with torch.no_grad():
        resnet.conv1.bias.add_(1.0)
    again = unet_cpu.folded_biases(unet, 199, cache)
    assert again is not first and torch.allclose(again[id(resnet)], first[id(resnet)] + 1.0)
    other = unet_cpu.folded_biases(unet, 500, cache)
    assert not torch.allclose(other[id(resnet)], again[id(resnet)])
    assert torch.equal(other[id(resnet)], unet_cpu.folded_biases(unet, 500)[id(resnet)])


def test_hooks_and_subclassed_convolutions_take_diffusers_forward():
    """`unet_forward` calls some modules' weights directly, so a forward hook or pre-hook on any of the UNet's
    modules, a global one, or a ResNet block's first convolution of another class is named unsupported; removing
    the hook makes it supported again."""
    unet = _random_unet()
    assert unet_cpu.unsupported_reason(unet) is None
    handle = unet.down_blocks[0].resnets[0].conv1.register_forward_hook(lambda m, i, o: o * 2)
    assert "hook" in unet_cpu.unsupported_reason(unet)
    handle.remove()
    handle = unet.register_forward_pre_hook(lambda m, i: None)
    assert "hook" in unet_cpu.unsupported_reason(unet)
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        assert "global" in unet_cpu.unsupported_reason(unet)
    finally:
        handle.remove()
    assert unet_cpu.unsupported_reason(unet) is None
    unet.mid_block.resnets[0].conv1.__class__ = type("Conv", (torch.nn.Conv2d,), {})
    assert "plain nn.Conv2d" in unet_cpu.unsupported_reason(unet)


def test_unet_forward_with_bfloat16_weights():
    """A UNet whose weights are bfloat16, under a bfloat16 autocast (its small GroupNorms run in float32 with the
    weights widened), gives diffusers' forward's output to bfloat16 rounding."""
    unet = _random_unet().to(torch.bfloat16)
    x = torch.rand(2, 32, 48, unet.config.in_channels, generator=torch.Generator().manual_seed(3)).permute(0, 3, 1, 2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = unet(x, torch.full((2,), 199, dtype=torch.long)).sample.float()
        got = unet_cpu.unet_forward(unet, x, 199).float()
    scale = float(expected.abs().max())
    assert scale > 1e-3 and float((got - expected).abs().max()) <= 0.05 * scale
