"""Training scripts run, checkpoint, and resume (tiny runs; the real runs are in the checkpoints' CARDs)."""

import json

import numpy as np
import pytest

from neural_sensor.enhance.model import Enhancer, EnhancerConfig
from neural_sensor.reconstruct.model import ReconNet
from neural_sensor.train import cotrain, train_enhancer


def test_enhancer_training_checkpoints_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(train_enhancer, "EVAL_SEEDS", range(1_000_004, 1_000_005))
    config = train_enhancer.EnhancerTrainConfig(steps=2, batch=2, worlds=2, eval_every=2, save_every=2)
    out, data = tmp_path / "enh", tmp_path / "data"
    summary = train_enhancer.train(config, out, data, train_enhancer.Path("checkpoints/reconstructor-small"))
    assert summary["steps"] == 2 and summary["pairs"] == 2 * 18
    assert len(list(data.glob("*/world-*.npz"))) == 2  # pairs cached per world
    heldout = summary["final"]["heldout"]["shift_2m"]
    assert np.isfinite(heldout["raw_psnr"]) and np.isfinite(heldout["enhanced_psnr"])
    config.steps = 3
    summary = train_enhancer.train(config, out, data, train_enhancer.Path("checkpoints/reconstructor-small"),
                                   resume=True)
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3]
    Enhancer.from_pretrained(out)


def test_cotraining_fine_tunes_the_reconstructor_with_enhancer_targets(tmp_path):
    Enhancer(EnhancerConfig(block_out_channels=(8, 16), norm_num_groups=4)).save_pretrained(tmp_path / "fixer")
    config = cotrain.CotrainConfig(steps=2, worlds=1, save_every=1)
    summary = cotrain.train(config, cotrain.Path("checkpoints/reconstructor-small"), tmp_path / "fixer",
                            tmp_path / "recon")
    assert summary["steps"] == 2
    history = json.loads((tmp_path / "recon" / "history.json").read_text())
    assert all(np.isfinite(h["loss_pseudo_l1"]) and h["loss_pseudo_l1"] >= 0 for h in history)
    before = ReconNet.from_pretrained("checkpoints/reconstructor-small").state_dict()
    after = ReconNet.from_pretrained(tmp_path / "recon").state_dict()
    assert any(not np.allclose(before[k].numpy(), after[k].numpy()) for k in before)


def test_enhancer_without_a_reference_skips_the_zero_channels():
    """Without a reference the UNet's first convolution takes the five render channels only; the result equals
    the full input with zero reference channels (to float rounding), and the checkpoint keeps its keys."""
    import torch

    from neural_sensor.enhance.model import Enhancer, EnhancerConfig, _network_input_reference

    torch.manual_seed(0)
    model = Enhancer(EnhancerConfig(unshuffle=4))
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.05)  # not the identity start
    rgb, depth, alpha = torch.rand(2, 3, 40, 72), torch.rand(2, 40, 72) * 30, torch.rand(2, 40, 72)
    with torch.no_grad():
        fast = model(rgb, depth, alpha)
        x = _network_input_reference(rgb, depth, alpha, None, None, model.config.depth_scale_m, model.multiple, 4)
        assert x.shape[1] == 9 * 16
        t = torch.full((2,), model.config.timestep, dtype=torch.long)
        full = rgb + torch.nn.functional.pixel_shuffle(model.unet(x, t).sample, 4)[..., :40, :72]
    assert (fast - rgb).abs().max() > 1e-3
    torch.testing.assert_close(fast, full, rtol=0, atol=2e-5)
    assert "conv_in.weight" in model.unet.state_dict() and model.unet.conv_in.weight.shape[1] == 9 * 16
    # a first layer of another type is not touched: it is sent the zero channels, as before
    wrapped = Enhancer(EnhancerConfig(unshuffle=4), unet=_with_conv_in(model.unet, type("Conv", (torch.nn.Conv2d,), {})))
    assert not wrapped._skips_reference
    with torch.no_grad():
        torch.testing.assert_close(wrapped(rgb, depth, alpha), full, rtol=0, atol=2e-5)


def _with_conv_in(unet, cls):
    """A copy of a UNet whose first layer is of class `cls` (same weights)."""
    import copy

    unet = copy.deepcopy(unet)
    unet.conv_in.__class__ = cls
    return unet


def test_network_input_and_shuffle_equal_their_torch_twins():
    """The enhancer's fast input path (channels written into one padded buffer, unshuffled by a reshape-permute
    copy into channels-last memory) equals cat + replicate pad + F.pixel_unshuffle bit for bit, with and without
    a reference, padded or not, and passes the same gradient to the rgb; its pixel_shuffle equals
    F.pixel_shuffle on contiguous and channels-last input."""
    import torch
    import torch.nn.functional as F

    from neural_sensor.enhance.model import _network_input_reference, network_input, pixel_shuffle

    g = torch.Generator().manual_seed(0)
    for b, h, w, multiple, s, with_ref in [(2, 27, 48, 16, 4, False), (1, 37, 53, 8, 2, True), (3, 16, 16, 4, 4, True),
                                           (1, 5, 7, 1, 1, False)]:
        rgb = torch.rand(b, 3, h, w, generator=g, requires_grad=True)
        depth = torch.rand(b, h, w, generator=g) * 30
        depth[0, 0, :3] = 0  # no depth: inverse depth 0
        alpha = torch.rand(b, h, w, generator=g)
        alpha[0, 1, :4] = 0
        ref = torch.rand(b, 3, h, w, generator=g) if with_ref else None
        valid = (torch.rand(b, h, w, generator=g) > 0.5).float() if with_ref else None
        fast = network_input(rgb, depth, alpha, ref, valid, 10.0, multiple, s)
        plain = _network_input_reference(rgb, depth, alpha, ref, valid, 10.0, multiple, s)
        made = (9 if with_ref else 5) * s * s  # without a reference the four zero channels are not made
        assert fast.shape == (b, made, (h + (-h) % multiple) // s, (w + (-w) % multiple) // s)
        assert torch.equal(fast, plain[:, :made]), (b, h, w, s)
        assert not plain[:, made:].any()
        plain = plain[:, :made]
        weights = torch.rand(fast.shape, generator=g)
        grad_fast = torch.autograd.grad((fast * weights).sum(), rgb)[0]
        grad_plain = torch.autograd.grad((plain * weights).sum(), rgb)[0]
        torch.testing.assert_close(grad_fast, grad_plain)  # the padding's sums may add in another order
        if s > 1:  # the input is channels-last memory (what oneDNN's convolutions run fastest on)
            assert fast.is_contiguous(memory_format=torch.channels_last)
        z = torch.rand(b, 3 * s * s, 6, 9, generator=g)
        assert torch.equal(pixel_shuffle(z, s), F.pixel_shuffle(z, s))
        z = z.contiguous(memory_format=torch.channels_last)  # the UNet's output from a channels-last input
        assert torch.equal(pixel_shuffle(z, s), F.pixel_shuffle(z, s))


@pytest.mark.parametrize("unshuffle, h, w", [(4, 37, 70), (2, 32, 48), (1, 13, 21)])
def test_enhance_on_a_cpu_equals_the_torch_forward(unshuffle, h, w, monkeypatch):
    """`Enhancer.enhance` on a CPU makes its input and finishes its output with compiled passes
    (`_model_kernels`); with diffusers' UNet forward between them the result equals the torch forward
    (network_input, UNet, pixel_shuffle, add, clamp) bit for bit: with and without a reference, padded or not,
    unshuffled by 4, 2 or not at all, in batches, and for a first layer that needs the zero channels. With
    `unet_cpu`'s forward (the time embedding folded into the biases: other float rounding) it is within 1e-4 (a fortieth of an 8-bit level).
    Mismatched shapes are a ValueError."""
    import numpy as np
    import torch

    from neural_sensor.enhance import unet_cpu
    from neural_sensor.enhance.model import Enhancer, EnhancerConfig

    torch.manual_seed(0)
    model = Enhancer(EnhancerConfig(unshuffle=unshuffle)).eval()
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.2)  # not the identity start: residuals clamp too
    rng = np.random.default_rng(1)
    c = 3
    rgb = rng.random((c, h, w, 3), dtype=np.float32)
    depth = (rng.random((c, h, w)) * 40).astype(np.float32)
    depth[0, :2] = 0
    alpha = rng.random((c, h, w), dtype=np.float32)
    alpha[1, 3:5] = 0
    ref = rng.random((c, h, w, 3), dtype=np.float32)
    valid = rng.random((c, h, w)) > 0.5

    def torch_forward(m, reference, batch=c):  # in the same batches (oneDNN's sums depend on the batch size)
        t = torch.from_numpy
        out = []
        for sl in (slice(i, i + batch) for i in range(0, c, batch)):
            with torch.no_grad():
                y = m(t(rgb[sl]).permute(0, 3, 1, 2), t(depth[sl]), t(alpha[sl]), *(
                    (t(ref[sl]).permute(0, 3, 1, 2), t(valid[sl].astype(np.float32))) if reference else (None, None)))
            out.append(y.clamp(0, 1).permute(0, 2, 3, 1).numpy())
        return np.concatenate(out)

    assert unet_cpu.unsupported_reason(model.unet) is None  # the fast path is the one tested first
    wrapped = Enhancer(EnhancerConfig(unshuffle=unshuffle),
                       unet=_with_conv_in(model.unet, type("Conv", (torch.nn.Conv2d,), {})))
    for reference in (False, True):
        expected = torch_forward(model, reference, batch=2)
        assert np.abs(expected - rgb).max() > 1e-2 and (expected == 0).any() and (expected == 1).any()
        got = model.enhance(rgb, depth, alpha, *((ref, valid) if reference else (None, None)), max_batch=2)
        assert got.dtype == np.float32 and np.abs(got - expected).max() < 1e-4, reference
    assert np.abs(wrapped.enhance(rgb, depth, alpha) - torch_forward(wrapped, False)).max() < 1e-4
    monkeypatch.setattr(unet_cpu, "unsupported_reason", lambda unet: "diffusers' forward")
    for reference in (False, True):
        got = model.enhance(rgb, depth, alpha, *((ref, valid) if reference else (None, None)), max_batch=2)
        assert np.array_equal(got, torch_forward(model, reference, batch=2)), reference
    assert np.array_equal(wrapped.enhance(rgb, depth, alpha), torch_forward(wrapped, False))
    with pytest.raises(ValueError, match="reference_rgb"):
        model.enhance(rgb, depth, alpha, ref[:1, :8, :8], valid[:1, :8, :8])
    with pytest.raises(ValueError, match="depth_m and alpha"):
        model.enhance(rgb, depth[:, :-1], alpha)


def test_enhance_in_bfloat16_stays_within_a_level_of_float32():
    """`set_cpu_precision("bfloat16")` (what a server picks on a CPU with AMX) runs the shipped enhancer's UNet
    under a bfloat16 autocast: its output differs from float32's (the autocast is on) by at most 0.01 and by
    less than 1e-3 on average (a quarter of an 8-bit level), a street-like frame with its reference. Float32 is
    the default; an unknown precision is a ValueError naming the choices."""
    import numpy as np

    from neural_sensor.checkpoints import DEFAULT_ENHANCER, default_checkpoint
    from neural_sensor.enhance.model import Enhancer

    model = Enhancer.from_pretrained(default_checkpoint(DEFAULT_ENHANCER))
    assert model.cpu_precision == "float32"
    rng = np.random.default_rng(3)
    c, h, w = 2, 64, 96
    ramp = np.linspace(0.2, 0.8, w, dtype=np.float32)[None, None, :, None]
    rgb = np.clip(ramp + 0.05 * rng.standard_normal((c, h, w, 3)), 0, 1).astype(np.float32)
    depth = np.broadcast_to(np.linspace(40.0, 4.0, h, dtype=np.float32)[None, :, None], (c, h, w)).copy()
    alpha = np.ones((c, h, w), np.float32)
    ref = np.clip(rgb + 0.03 * rng.standard_normal(rgb.shape), 0, 1).astype(np.float32)
    valid = rng.random((c, h, w)) > 0.2
    exact = model.enhance(rgb, depth, alpha, ref, valid)
    assert model.set_cpu_precision("bfloat16") == "bfloat16"
    fast = model.enhance(rgb, depth, alpha, ref, valid)
    difference = np.abs(fast - exact)
    assert not np.array_equal(fast, exact)
    assert difference.max() <= 0.01 and difference.mean() < 1e-3, (difference.max(), difference.mean())
    assert model.set_cpu_precision("auto") in ("float32", "bfloat16")
    with pytest.raises(ValueError, match="auto, float32, bfloat16"):
        model.set_cpu_precision("float16")


def test_auto_precision_takes_bfloat16_with_amx_or_where_the_probe_finds_it_faster(monkeypatch, tmp_path):
    """"auto": bfloat16 with AMX (no probe); without AMX, bfloat16 only where the CPU runs it natively AND the
    timed probe finds it at least BF16_MIN_SPEEDUP faster (an AMD EPYC Zen 4: ~1.5x; an earlier AVX-512 BF16
    Xeon: slower); float32 otherwise, without timing anything on a CPU with no native bfloat16. The probe itself
    returns a positive ratio on this host."""
    import math

    from neural_sensor.enhance import precision

    speedup = precision.bfloat16_speedup()
    assert math.isfinite(speedup) and speedup > 0.0
    calls = []

    def probe(ratio):
        def timed():
            calls.append(ratio)
            return ratio
        return timed

    for amx, native, ratio, expected, probed in [(True, True, 0.5, "bfloat16", False),
                                                 (False, True, 1.5, "bfloat16", True),
                                                 (False, True, 1.05, "float32", True),
                                                 (False, False, 9.0, "float32", False)]:
        calls.clear()
        monkeypatch.setenv("NEURAL_SENSOR_CACHE", str(tmp_path / f"{amx}-{native}-{ratio}"))  # no kept answer
        precision.probed_bfloat16_faster.cache_clear()  # (and cleared again below: no faked answer left behind)
        monkeypatch.setattr(precision, "cpu_has_amx", lambda amx=amx: amx)
        monkeypatch.setattr(precision, "cpu_has_bf16", lambda native=native: native)
        monkeypatch.setattr(precision, "bfloat16_speedup", probe(ratio))
        assert precision.resolve_cpu_precision("auto") == expected, (amx, native, ratio)
        assert bool(calls) == probed, (amx, native, ratio)
        assert precision.resolve_cpu_precision("float32") == "float32"
        assert precision.resolve_cpu_precision("bfloat16") == "bfloat16"
    precision.probed_bfloat16_faster.cache_clear()


def test_auto_precision_keeps_a_bfloat16_answer_per_host(monkeypatch, tmp_path):
    """The same command on the same host gave scenes of different cache keys and Gaussian counts: "auto" rested on a
    timed probe that a moment of load answered the other way. A True answer is kept beside the scene cache and
    served without timing again (in a new process too); a False is not kept; a damaged file is probed over."""
    import json

    from neural_sensor.enhance import precision

    monkeypatch.setenv("NEURAL_SENSOR_CACHE", str(tmp_path))
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    ratios = [1.05, 1.2, 1.5, 0.5]  # 1.2 clears the bar for its process, short of the margin to be kept
    monkeypatch.setattr(precision, "bfloat16_speedup", lambda: ratios.pop(0))
    answers = []
    try:
        for _ in range(4):
            precision.probed_bfloat16_faster.cache_clear()  # as a new process
            answers.append(precision.resolve_cpu_precision("auto"))
            if len(answers) == 2:
                assert not precision.decision_path().exists()
        assert answers == ["float32", "bfloat16", "bfloat16", "bfloat16"] and ratios == [0.5]  # 4th: not timed
        kept = json.loads(precision.decision_path().read_text())
        assert kept[precision.host_key()]["bfloat16_faster"] is True and kept[precision.host_key()]["speedup"] == 1.5
        precision.decision_path().write_text("{not json")
        precision.probed_bfloat16_faster.cache_clear()
        assert precision.resolve_cpu_precision("auto") == "float32" and ratios == []  # probed again: 0.5, not kept
        assert precision.decision_path().read_text() == "{not json"
    finally:
        precision.probed_bfloat16_faster.cache_clear()  # no faked answer left for later tests


@pytest.mark.parametrize("unshuffle, h, w, reference", [(2, 27, 48, False), (4, 37, 70, True), (1, 13, 21, False)])
def test_enhance_reads_and_writes_wire_frames_in_place(unshuffle, h, w, reference):
    """A server hands `enhance` the wire's frames as they arrived (uint8 rgb / alpha, float16 depth, per camera)
    and a uint8 target per camera (its reply slot): the result is bit for bit what decoding them (`to_float`),
    enhancing floats and encoding the result (`to_uint8_into`) gives, and a float32 target gets the float
    result itself. Bad targets are a ValueError."""
    import torch

    from neural_sensor.enhance import protocol as wire

    torch.manual_seed(1)
    model = Enhancer(EnhancerConfig(unshuffle=unshuffle)).eval()
    torch.nn.init.normal_(model.unet.conv_out.weight, std=0.2)  # residuals large enough to clamp
    rng = np.random.default_rng(2)
    c = 3
    rgb8 = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(c)]
    alpha8 = [rng.integers(0, 256, (h, w), dtype=np.uint8) for _ in range(c)]
    depth16 = [(rng.random((h, w)) * 60).astype(np.float16) for _ in range(c)]
    ref8 = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(c)] if reference else None
    valid = [rng.random((h, w)) > 0.5 for _ in range(c)] if reference else None
    floats = model.enhance(np.stack([wire.to_float(a) for a in rgb8]), np.stack(depth16).astype(np.float32),
                           np.stack([wire.to_float(a) for a in alpha8]),
                           np.stack([wire.to_float(a) for a in ref8]) if reference else None,
                           np.stack(valid).astype(np.float32) if reference else None, max_batch=2)
    assert (floats == 0).any() and (floats == 1).any()
    expected = [wire.to_uint8_into(f, np.empty(f.shape, np.uint8)) for f in floats]
    assert len({e.tobytes() for e in expected}) == c and any((e != r).any() for e, r in zip(expected, rgb8))
    out8 = [np.empty((h, w, 3), np.uint8) for _ in range(c)]
    assert model.enhance(rgb8, depth16, alpha8, ref8, valid, max_batch=2, out=out8) is not None
    for got, want in zip(out8, expected):
        assert np.array_equal(got, want)
    out32 = np.empty((c, h, w, 3), np.float32)
    model.enhance(rgb8, depth16, alpha8, ref8, valid, max_batch=2, out=out32)
    assert np.array_equal(out32, floats)
    with pytest.raises(ValueError, match="out must be"):
        model.enhance(rgb8, depth16, alpha8, out=[np.empty((h, w, 3), np.float64)] * c)
    with pytest.raises(ValueError, match="out must be"):
        model.enhance(rgb8, depth16, alpha8, out=out8[:2])
    with pytest.raises(ValueError, match="rgb must be"):
        model.enhance([rgb8[0], rgb8[1][:-1]], depth16[:2], alpha8[:2])
    with pytest.raises(ValueError, match="read-only"):
        frozen = np.empty((c, h, w, 3), np.uint8)
        frozen.setflags(write=False)
        model.enhance(rgb8, depth16, alpha8, out=frozen)
    assert model.enhance(rgb8, depth16, alpha8, out=out32) is out32  # an array given is the array returned
    assert model.enhance(np.empty((0, h, w, 3), np.float32), np.empty((0, h, w)), np.empty((0, h, w))).shape == \
        (0, h, w, 3)  # nothing to refine (a mask that selected no view)
    if reference:  # an integer mask means valid where nonzero, as a bool one (not u8 / 255 like an image)
        as_u8 = [v.astype(np.uint8) for v in valid]
        model.enhance(rgb8, depth16, alpha8, ref8, as_u8, max_batch=2, out=out8)
        for got, want in zip(out8, expected):
            assert np.array_equal(got, want)
