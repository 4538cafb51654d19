"""Enhancer wire protocol, model, warp and loss twins (no sockets here; see test_enhance_server.py)."""

import json

import msgpack
import numpy as np
import pytest
import torch

from neural_sensor.enhance import protocol as wire
from neural_sensor.enhance.model import Enhancer, EnhancerConfig, checkpoint_hash
from neural_sensor.enhance.warp import warp_views
from neural_sensor.camera import Camera
from neural_sensor.metrics import ssim_map
from neural_sensor.train.losses import ssim_map_torch


def _frame(h=6, w=10, rgb="uint8", depth="float32", alpha="uint8", reference=None, camera="cam"):
    rng = np.random.default_rng(0)
    f = {"camera": camera,
         "rgb": (rng.integers(0, 256, (h, w, 3)) if rgb == "uint8" else rng.random((h, w, 3))).astype(rgb),
         "depth": (rng.random((h, w)) * 50).astype(depth),
         "alpha": (rng.integers(0, 256, (h, w)) if alpha == "uint8" else rng.random((h, w))).astype(alpha)}
    if reference is not None:
        f["reference"] = (rng.random((h, w, 3))).astype(reference)
        f["reference_valid"] = rng.random((h, w)) > 0.5
    return f


@pytest.mark.parametrize("rgb", ["uint8", "float16", "float32"])
@pytest.mark.parametrize("depth", ["float16", "float32"])
@pytest.mark.parametrize("alpha", ["uint8", "float16", "float32"])
def test_every_allowed_dtype_round_trips(rgb, depth, alpha):
    frames = [_frame(rgb=rgb, depth=depth, alpha=alpha, reference="float32"), _frame(7, 3, rgb=rgb, depth=depth,
                                                                                   alpha=alpha, camera="b")]
    req = wire.parse_request(wire.make_request("enhance", "r1", frames, deadline_ms=250))
    assert req.request_id == "r1" and req.op == "enhance" and req.deadline_ms == 250
    for sent, got in zip(frames, req.frames):
        assert got["camera"] == sent["camera"]
        for key in sent:
            if key != "camera":
                assert got[key].dtype == sent[key].dtype and got[key].shape == sent[key].shape
                np.testing.assert_array_equal(got[key], sent[key])


def test_reference_valid_accepts_uint8_and_replies_decode():
    f = _frame(reference="uint8")
    f["reference_valid"] = f["reference_valid"].astype(np.uint8)
    assert wire.parse_request(wire.make_request("enhance", 7, [f])).frames[0]["reference_valid"].dtype == np.uint8
    rgb = np.arange(6 * 10 * 3, dtype=np.uint8).reshape(6, 10, 3)
    reply = wire.parse_reply(wire.ok_reply(7, frames=[{"camera": "cam", "rgb": wire.encode_array(rgb)}], model_ms=1.0))
    np.testing.assert_array_equal(reply["frames"][0]["rgb"], rgb)
    err = wire.parse_reply(wire.error_reply(7, "BadRequest", "nope"))
    assert err["ok"] is False and err["error"] == {"type": "BadRequest", "message": "nope"}


def _raw(message) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def _nd(array, **override):
    """An ndarray map built by hand (any dtype), fields overridable."""
    array = np.ascontiguousarray(array)
    return {"__ndarray__": True, "dtype": array.dtype.name, "shape": list(array.shape), "data": array.tobytes(),
            **override}


def _refusals():
    good = {k: (v if k == "camera" else wire.encode_array(v)) for k, v in _frame().items()}

    def enhance(**frame_override):
        return {"v": 1, "id": "x", "op": "enhance", "frames": [{**good, **frame_override}]}

    rgb64 = np.zeros((6, 10, 3), np.float64)
    return [
        ("BadMessage", b"\x00\x01garbage"),
        ("BadMessage", _raw([1, 2, 3])),
        ("BadMessage", msgpack.packb(msgpack.ExtType(5, b"x"))),
        ("VersionMismatch", _raw({"v": 2, "id": "x", "op": "hello"})),
        ("BadRequest", _raw({"v": 1, "id": 1.5, "op": "hello"})),
        ("BadRequest", _raw({"v": 1, "id": "x", "op": "pickle"})),
        ("BadRequest", _raw({"v": 1, "id": "x", "op": "enhance", "frames": []})),
        ("BadRequest", _raw({"v": 1, "id": "x", "op": "enhance", "frames": [good], "deadline_ms": -1})),
        ("LimitExceeded", _raw({"v": 1, "id": "x", "op": "enhance", "frames": [good] * (wire.MAX_FRAMES + 1)})),
        ("BadRequest", _raw(enhance(rgb=_nd(rgb64)))),
        ("BadRequest", _raw(enhance(rgb=_nd(np.zeros((6, 10, 3), np.int32), dtype="int32")))),
        ("BadRequest", _raw(enhance(rgb=_nd(np.zeros((6, 10, 4), np.uint8))))),
        ("BadRequest", _raw(enhance(depth=_nd(np.zeros((6, 10, 1), np.float32))))),
        ("BadRequest", _raw(enhance(depth=_nd(np.zeros((6, 11), np.float32))))),
        ("BadRequest", _raw(enhance(depth=_nd(np.full((6, 10), np.nan, np.float32))))),
        ("LimitExceeded", _raw(enhance(depth=_nd(np.zeros((6, 10), np.float32), shape=[10**6, 10**6])))),
        ("BadRequest", _raw(enhance(alpha=_nd(np.zeros((6, 10), bool))))),
        ("BadRequest", _raw(enhance(alpha={"__ndarray__": True, "dtype": "uint8", "shape": [6, 10], "data": "str"}))),
        ("BadRequest", _raw(enhance(alpha=[1, 2, 3]))),
        ("BadRequest", _raw(enhance(depth=_nd(np.zeros((6, 10), np.float32), dtype=["float32"])))),
        ("BadRequest", _raw(enhance(alpha={"__ndarray__": True, "dtype": "uint8", "shape": [0, 2**26, 2**26],
                                           "data": b""}))),
        ("BadRequest", _raw(enhance(reference=wire.encode_array(np.zeros((6, 10, 3), np.float32))))),
        ("BadRequest", _raw(enhance(pickle=b"cos\nsystem\n"))),
        ("BadRequest", _raw(enhance(camera=""))),
        ("LimitExceeded", _raw(enhance(rgb=_nd(np.zeros((1, wire.MAX_SIDE + 1, 3), np.uint8)),
                                       depth=_nd(np.zeros((1, wire.MAX_SIDE + 1), np.float32)),
                                       alpha=_nd(np.zeros((1, wire.MAX_SIDE + 1), np.uint8))))),
    ]


@pytest.mark.parametrize("expected,payload", _refusals())
def test_refusals_name_the_problem(expected, payload):
    with pytest.raises(wire.ProtocolError) as info:
        wire.parse_request(payload)
    assert info.value.error_type == expected, info.value
    assert len(info.value.message) > 10


def test_version_mismatch_names_both_versions_and_keeps_the_id():
    with pytest.raises(wire.ProtocolError) as info:
        wire.parse_request(_raw({"v": 9, "id": "abc", "op": "hello"}))
    assert "9" in info.value.message and str(wire.PROTOCOL_VERSION) in info.value.message
    assert info.value.request_id == "abc"


def test_oversized_message_is_refused_before_parsing():
    with pytest.raises(wire.ProtocolError, match="LimitExceeded"):
        wire.unpack(b"\x00" * (wire.MAX_MESSAGE_BYTES + 1))


# ------------------------------------------------------------------ model
def _tiny(tmp_path=None):
    model = Enhancer(EnhancerConfig(model_name="tiny", block_out_channels=(8, 16), norm_num_groups=4))
    if tmp_path is not None:
        model.save_pretrained(tmp_path)
    return model


def test_untrained_enhancer_is_the_identity_on_any_size():
    rng = np.random.default_rng(1)
    rgb = rng.random((2, 27, 45, 3)).astype(np.float32)  # not a multiple of the UNet's stride
    out = _tiny().enhance(rgb, rng.random((2, 27, 45)) * 20, rng.random((2, 27, 45)))
    np.testing.assert_allclose(out, rgb, atol=1e-6)


def test_checkpoint_round_trip_and_bad_checkpoints(tmp_path):
    model = _tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "ok")
    loaded = Enhancer.from_pretrained(tmp_path / "ok")
    x = torch.rand(1, 3, 16, 24), torch.rand(1, 16, 24) * 10, torch.rand(1, 16, 24)
    torch.testing.assert_close(loaded(*x), model(*x))
    assert len(checkpoint_hash(tmp_path / "ok")) == 16
    with pytest.raises(ValueError, match="config.json unreadable"):
        Enhancer.from_pretrained(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="does not load into the enhancer"):
        Enhancer.from_pretrained(tmp_path / "bad")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"class": "ReconNet"}))
    with pytest.raises(ValueError, match="neither an Enhancer config"):
        Enhancer.from_pretrained(tmp_path / "other")


def test_loads_a_users_diffusers_unet_folder_by_path(tmp_path):
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=None, in_channels=9, out_channels=3, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                       layers_per_block=1, norm_num_groups=4, add_attention=False)
    unet.save_pretrained(tmp_path / "user")
    (tmp_path / "user" / "enhancer.json").write_text(json.dumps({"timestep": 50, "model_name": "users-fixer"}))
    model = Enhancer.from_pretrained(tmp_path / "user")
    assert model.config.unshuffle == 1 and model.config.timestep == 50 and model.config.model_name == "users-fixer"
    out = model.enhance(np.full((1, 20, 30, 3), 0.5, np.float32), np.ones((1, 20, 30)), np.ones((1, 20, 30)))
    assert out.shape == (1, 20, 30, 3) and np.isfinite(out).all()
    wrong = UNet2DModel(sample_size=None, in_channels=4, out_channels=3, block_out_channels=(8, 16),
                        down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, add_attention=False)
    wrong.save_pretrained(tmp_path / "wrong")
    with pytest.raises(ValueError, match="must take 9 channels"):
        Enhancer.from_pretrained(tmp_path / "wrong")


# ------------------------------------------------------------------ twins and warping
def test_torch_ssim_matches_the_numpy_metric():
    rng = np.random.default_rng(2)
    a = rng.random((2, 3, 30, 40))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    ours = ssim_map_torch(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    ref = ssim_map(np.moveaxis(a, 1, -1), np.moveaxis(b, 1, -1))
    np.testing.assert_allclose(ours, ref, atol=1e-10)


def test_a_view_warped_into_itself_is_itself():
    cam = Camera.from_fov(40, 24, 70.0, np.eye(4))
    rng = np.random.default_rng(3)
    rgb = rng.random((24, 40, 3)).astype(np.float32)
    depth = (5 + 10 * rng.random((24, 40))).astype(np.float32)
    alpha = np.ones((24, 40), np.float32)
    alpha[:3] = 0  # sky: never warped
    warped, visible = warp_views(cam, depth, alpha, [(cam, rgb, depth)])
    assert visible[3:].all() and not visible[:3].any()
    np.testing.assert_array_equal(warped[3:], rgb[3:])
    assert (warped[:3] == 0).all()


def test_bilinear_warp_of_a_small_view_is_its_bilinear_upsampling():
    """A 16 x 10 view of a wall seen again by a camera of three times its resolution at the same pose: sample=
    "bilinear" gives the bilinear upsampling of the small image (pixel centres aligned, edges clamped), a view into
    itself is itself, and a source pixel hidden behind another surface is left out of the blend."""
    small = Camera.from_fov(16, 10, 70.0, np.eye(4))
    big = Camera(48, 30, small.K * np.array([[3.0], [3.0], [1.0]]), np.eye(4))
    ys, xs = np.meshgrid(np.arange(10) + 0.5, np.arange(16) + 0.5, indexing="ij")
    rgb = np.stack([xs / 16, ys / 10, 0.5 + 0 * xs], -1).astype(np.float32)  # linear in x and y
    depth_s = np.full((10, 16), 6.0, np.float32)
    depth_t = np.full((30, 48), 6.0, np.float32)
    alpha = np.ones((30, 48), np.float32)
    warped, visible = warp_views(big, depth_t, alpha, [(small, rgb, depth_s)], sample="bilinear")
    assert visible.all()
    by, bx = np.meshgrid((np.arange(30) + 0.5) / 3, (np.arange(48) + 0.5) / 3, indexing="ij")
    inner = (bx >= 0.5) & (bx <= 15.5) & (by >= 0.5) & (by <= 9.5)  # between the outer pixel centres
    np.testing.assert_allclose(warped[inner][:, 0], (bx / 16)[inner], atol=1e-6)
    np.testing.assert_allclose(warped[inner][:, 1], (by / 10)[inner], atol=1e-6)
    same, _ = warp_views(small, depth_s, np.ones((10, 16), np.float32), [(small, rgb, depth_s)], sample="bilinear")
    np.testing.assert_allclose(same, rgb, atol=1e-6)
    hidden = depth_s.copy()
    hidden[:, 8:] = 2.0  # columns 8+ of the source see a nearer surface: not the wall's colour
    warped, visible = warp_views(big, depth_t, alpha, [(small, rgb, hidden)], sample="bilinear")
    assert visible[:, :24].all() and not visible[:, 24:].any()
    np.testing.assert_allclose(warped[:, 22:24, 0], rgb[0, 7, 0], atol=1e-6)  # centres 7.5, 7.83: column 7 alone
    with pytest.raises(ValueError, match="sample"):
        warp_views(big, depth_t, alpha, [(small, rgb, depth_s)], sample="cubic")


def test_source_pixels_are_where_warp_views_takes_its_colours():
    """`source_pixels` (one view, as indices) agrees with `warp_views` for a camera moved forward over a wall."""
    from neural_sensor.enhance.warp import source_pixels

    target = Camera.from_fov(40, 24, 70.0, np.eye(4))
    moved = np.eye(4)
    moved[2, 3] = -0.5  # half a metre behind: the earlier frame of a drive
    source = Camera.from_fov(40, 24, 70.0, moved)
    depth_t = np.full((24, 40), 8.0, np.float32)
    depth_s = np.full((24, 40), 8.5, np.float32)
    alpha = np.ones((24, 40), np.float32)
    alpha[:2] = 0
    rgb = np.random.default_rng(0).random((24, 40, 3)).astype(np.float32)
    index = source_pixels(target, depth_t, alpha, source, depth_s)
    warped, visible = warp_views(target, depth_t, alpha, [(source, rgb, depth_s)])
    np.testing.assert_array_equal(index >= 0, visible)
    assert visible[2:].mean() > 0.8 and not visible[:2].any()
    np.testing.assert_array_equal(rgb.reshape(-1, 3)[index[visible]], warped[visible])
    assert (index[visible] != np.arange(24 * 40).reshape(24, 40)[visible]).any()  # it did move
    far = np.full((24, 40), 20.0, np.float32)  # the source sees something else there: hidden
    assert (source_pixels(target, depth_t, alpha, source, far) == -1).all()


def test_compiled_codecs_equal_their_numpy_twins():
    """The wire's uint8 / float conversions (numba, one pass) give exactly the numpy references' values."""
    rng = np.random.default_rng(0)
    edges = np.array([-1.0, -0.0, 0.0, 0.5 / 255, 0.49999 / 255, 0.50001 / 255, 0.5, 254.5 / 255, 1.0, 1.5, 1e9],
                     np.float32)
    for dtype in (np.float32, np.float64):
        image = np.concatenate([rng.uniform(-0.1, 1.1, 10_007), edges]).astype(dtype).reshape(-1, 1)
        fast = wire.to_uint8_into(image, np.empty(image.shape, np.uint8))
        np.testing.assert_array_equal(fast, wire._to_uint8_reference(image, np.empty(image.shape, np.uint8)))
    codes = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(wire.to_float(codes), wire._to_float_reference(codes))
    nan = np.array([0.2, np.nan, 1.0, np.inf, -np.inf], np.float32)  # NaN has no uint8: written as 0, and said
    for convert in (wire.to_uint8_into, wire._to_uint8_reference):
        with pytest.raises(wire.NaNImageError, match="contains NaN"):
            convert(nan, np.empty(5, np.uint8))
        np.testing.assert_array_equal(convert(nan, np.empty(5, np.uint8), allow_nan=True), [51, 0, 255, 255, 0])


def test_float16_codecs_equal_numpy_on_every_half():
    """float32 -> float16 (round to nearest even; torch's vectorised cast, measured 4x faster than a compiled
    bitwise loop and ~20x faster than numpy) and back, against numpy's casts, on every float16 value, the
    midpoints between neighbours (ties), random floats, and the odd ones (zeros, subnormals, overflow, inf, NaN)."""
    from neural_sensor.enhance.model import _float32_into  # how the enhancer takes a float16 depth off the wire

    every_half = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    back = np.empty(every_half.shape, np.float32)
    _float32_into(every_half, back)
    expected = every_half.astype(np.float32)
    np.testing.assert_array_equal(back.view(np.uint32)[~np.isnan(expected)],
                                  expected.view(np.uint32)[~np.isnan(expected)])
    assert np.isnan(back[np.isnan(expected)]).all()
    finite = expected[np.isfinite(expected)]
    ordered = np.sort(finite[finite > 0])
    ties = ((ordered[1:].astype(np.float64) + ordered[:-1]) / 2).astype(np.float32)
    rng = np.random.default_rng(1)
    values = np.concatenate([finite, ties, -ties, rng.uniform(-1e3, 1e3, 50_000).astype(np.float32),
                             rng.uniform(0, 80, 50_000).astype(np.float32),
                             np.array([0.0, -0.0, 1e-8, 6e-5, 6.1e-5, 65504.0, 65519.0, 65520.0, 1e6, np.inf, -np.inf],
                                      np.float32)])
    fast = wire.to_float16_into(values, np.empty(values.shape, np.float16))
    np.testing.assert_array_equal(fast.view(np.uint16), wire._to_float16_reference(values).view(np.uint16))
    nan = wire.to_float16_into(np.array([np.nan], np.float32), np.empty(1, np.float16))
    assert np.isnan(nan).all()
    # a depth of 65520 m or more became inf, and the server refused the whole tick as "NaN or inf": held at the
    # largest float16; an inf given stays one (the server names it)
    held = wire.to_float16_into(np.array([65520.0, 1e6, -1e9, np.inf], np.float32), np.empty(4, np.float16))
    assert held.tolist() == [65504.0, 65504.0, -65504.0, np.inf]


def test_compiled_finiteness_check_matches_its_numpy_twin():
    """all_finite's compiled float32 pass gives what `_all_finite_reference` gives: every non-finite value (NaN
    of either sign and payload, +-inf) anywhere in an array is found, the largest finite floats are not."""
    rng = np.random.default_rng(3)
    base = rng.uniform(-3.4e38, 3.4e38, 10_001).astype(np.float32)
    base[:4] = [np.finfo(np.float32).max, -np.finfo(np.float32).max, 0.0, -0.0]
    odd = [np.nan, -np.nan, np.inf, -np.inf, np.array([0x7FC00001], np.uint32).view(np.float32)[0]]
    cases = [base] + [np.where(np.arange(base.size) == at, value, base).astype(np.float32)
                      for at in (0, 5_000, base.size - 1) for value in odd]
    for array in cases:
        assert wire.all_finite(array) == wire._all_finite_reference(array)
        assert wire.all_finite(array.reshape(1, -1)) == wire.all_finite(array)
    assert wire.all_finite(base) and not wire.all_finite(cases[1])
    assert wire.all_finite(base[::2]) == wire._all_finite_reference(base[::2])  # strided: the twin's path
    with np.errstate(over="ignore"):
        half = base.astype(np.float16)
    assert wire.all_finite(half) == wire._all_finite_reference(half) is False  # overflowed to inf in float16


def test_hello_reference_views_takes_only_a_positive_integer():
    """The log views a client sends per camera come from the hello: a positive int, else none (the runner, the CARLA
    bridge and the run-regime benchmark share this reading)."""
    from neural_sensor.enhance.client import hello_reference_views

    assert hello_reference_views({"reference_views": 2}) == 2
    assert hello_reference_views({"reference_views": 4, "model_name": "x"}) == 4
    for bad in ({}, None, {"reference_views": 0}, {"reference_views": -1}, {"reference_views": True},
                {"reference_views": 2.0}, {"reference_views": "2"}, {"reference_views": None}):
        assert hello_reference_views(bad) == 0, bad
