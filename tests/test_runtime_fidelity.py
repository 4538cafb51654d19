"""benchmarks/runtime_fidelity.py: its pieces (world choice, poses, flicker, aggregation) and a tiny end-to-end run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import runtime_fidelity as rf  # noqa: E402

from neural_sensor.camera import Camera  # noqa: E402
from neural_sensor.rig import nuscenes_like_rig  # noqa: E402
from neural_sensor.scene.layout import TEMPLATES  # noqa: E402
from neural_sensor.scene.path import Path as Polyline  # noqa: E402
from neural_sensor.train.synthetic import HELDOUT_FIRST_SEED  # noqa: E402


def test_worlds_are_held_out_and_cover_every_template():
    worlds = rf.heldout_worlds(HELDOUT_FIRST_SEED + 100, 4)
    assert all(seed >= HELDOUT_FIRST_SEED for seed, _ in worlds)
    assert len({seed for seed, _ in worlds}) == 4
    assert [rf.template_of(layout) for _, layout in worlds] == list(TEMPLATES)[:3] + [list(TEMPLATES)[0]]
    with pytest.raises(ValueError, match="not a held-out seed"):
        rf.heldout_worlds(5, 1)  # a training seed never becomes an evaluation world


def test_clips_stay_inside_the_drive():
    starts = rf.clip_starts(100.0, 3, 4, 0.5)
    assert len(starts) == 3 and starts == sorted(starts)
    assert starts[0] >= rf.END_MARGIN_M and starts[-1] + 1.5 <= 100.0 - rf.END_MARGIN_M
    with pytest.raises(ValueError, match="too short"):
        rf.clip_starts(15.0, 1, 3, 0.5)


def test_shifted_rig_moves_every_camera_sideways_by_the_shift():
    path = Polyline(np.array([[0.0, 0.0], [10.0, 10.0]]))  # heading 45 degrees
    specs = nuscenes_like_rig(64, 36)
    on_path = rf.rig_cameras(specs, path, 5.0, 0.0)
    shifted = rf.rig_cameras(specs, path, 5.0, 2.0)
    left = np.array([-math.sin(math.pi / 4), math.cos(math.pi / 4), 0.0])
    for a, b in zip(on_path, shifted):
        np.testing.assert_allclose(b.position_world - a.position_world, 2.0 * left, atol=1e-9)
        np.testing.assert_allclose(b.pose_camera_to_world[:3, :3], a.pose_camera_to_world[:3, :3])


def test_flicker_is_zero_for_a_frame_against_itself_and_positive_for_a_change():
    cam = Camera.look_at(48, 32, 70.0, eye_world=[0, 0, 1.5], target_world=[10, 0, 1.5])
    depth = np.full((32, 48), 8.0, np.float32)
    alpha = np.ones((32, 48), np.float32)
    image = np.random.default_rng(0).random((32, 48, 3)).astype(np.float32)
    same = rf.flicker(cam, image, depth, cam, image, depth, alpha)
    assert same["mad"] == 0.0 and same["psnr"] == math.inf and same["valid"] == 1.0
    brighter = np.clip(image + 0.1, 0, 1)
    changed = rf.flicker(cam, image, depth, cam, brighter, depth, alpha)
    expected = np.abs(brighter - image).mean() * 255
    assert changed["mad"] == pytest.approx(expected, rel=1e-5)
    sky = rf.flicker(cam, image, depth, cam, image, depth, np.zeros_like(alpha))
    assert sky["valid"] == 0.0 and math.isnan(sky["mad"])


def test_aggregate_averages_within_a_world_then_takes_the_median_over_worlds():
    rows = []
    for seed, values in ((1, [10.0, 12.0]), (2, [20.0, 20.0]), (3, [30.0, 34.0])):
        for tick, v in enumerate(values):
            rows.append({"seed": seed, "template": "straight", "shift_m": 0.0, "camera": "CAM_FRONT", "clip": 0,
                         "tick": tick, "raw_psnr": v, "flicker_raw_mad": float("nan") if tick == 0 else v})
    table = rf.aggregate(rows, ("shift_m",))["0m"]
    assert table["raw_psnr"] == {"median": 20.0, "mean": 21.0, "min": 11.0, "max": 32.0, "n_worlds": 3}
    assert table["flicker_raw_mad"]["median"] == 20.0  # the nan of a clip's first frame is skipped
    # a paired gain per view: its median over worlds is the median of the worlds' gains, not a difference of medians
    gains = {1: [1.0, 1.0], 2: [0.0, 0.0], 3: [3.0, 5.0]}
    for row in rows:
        row["temporal_psnr"] = row["raw_psnr"] + gains[row["seed"]][row["tick"]]
        row["temporal_gain_db"] = row["temporal_psnr"] - row["raw_psnr"]
    table = rf.aggregate(rows, ("shift_m",))["0m"]
    assert table["temporal_gain_db"]["median"] == 1.0
    assert table["temporal_psnr"]["median"] - table["raw_psnr"]["median"] == 0.0  # world 2's 20 dB both ways
    by_camera = rf.aggregate(rows, ("camera", "shift_m"))
    assert list(by_camera) == ["CAM_FRONT/0m"]


def test_seen_by_log_marks_what_a_log_view_saw_and_nothing_behind_it():
    from neural_sensor.reconstruct.reference import LogReference

    w, h = 64, 36
    view = Camera.from_fov(w, h, 70.0, np.eye(4))  # looks along world +z at a wall 10 m away
    log = LogReference(np.zeros((1, h, w, 3), np.uint8), np.full((1, h, w), 10.0, np.float32), view.K[None],
                       view.pose_camera_to_world[None], np.array(["CAM_FRONT"]))
    depth = np.full((1, h, w), 10.0, np.float32)
    alpha = np.ones((1, h, w), np.float32)
    assert rf.seen_by_log(log, [view], depth, alpha).all()
    sideways = np.eye(4)
    sideways[0, 3] = 6.0  # 6 m to the side: the wall's left part is in the log view, the right part is not
    seen = rf.seen_by_log(log, [Camera.from_fov(w, h, 70.0, sideways)], depth, alpha)[0]
    assert seen[:, :8].all() and not seen[:, -8:].any()
    behind = np.diag([-1.0, 1.0, -1.0, 1.0])  # facing the other way: a wall the log never saw
    assert not rf.seen_by_log(log, [Camera.from_fov(w, h, 70.0, behind)], depth, alpha).any()
    assert not rf.seen_by_log(log, [view], depth, np.zeros_like(alpha)).any()  # no surface: nothing to see


def test_enhance_tick_refuses_a_missing_answer():
    client = SimpleNamespace(enhance=lambda frames: SimpleNamespace(enhanced=False, rgb=None, reason="down"))
    rgb = np.zeros((6, 8, 8, 3), np.float32)
    with pytest.raises(RuntimeError, match="down"):
        rf.enhance_tick(client, [f"c{i}" for i in range(6)], rgb, rgb[..., 0], rgb[..., 0])


def test_reference_views_below_one_are_refused_before_any_work():
    with pytest.raises(SystemExit, match="--reference-views must be >= 1"):
        rf.main(["--reference-views", "0", "--enhancer", "none"])


def test_tiny_end_to_end_run(tmp_path, capsys, monkeypatch):
    full = rf.recorded_path
    # the first 24 m of the recorded lane: fewer recorded views to reconstruct, same code path
    monkeypatch.setattr(rf, "recorded_path", lambda layout: _prefix(full(layout), 24.0))
    out = tmp_path / "rf.json"
    rf.main(["--worlds", "1", "--width", "64", "--height", "36", "--clips", "1", "--ticks", "2", "--shifts", "0,1",
             "--enhancer", "none", "--perceptual-every", "1", "--cache", str(tmp_path / "cache"), "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["seeds"][0] >= HELDOUT_FIRST_SEED
    assert set(result["per_shift"]) == {"0m", "1m"}
    assert len(result["per_camera_shift"]) == 12
    on_path = result["per_shift"]["0m"]
    assert 5.0 < on_path["raw_psnr"]["median"] < 60.0
    assert 0.0 <= on_path["raw_ssim"]["median"] <= 1.0
    assert on_path["depth_abs_rel"]["median"] >= 0.0
    # the builder's expected depth lies behind its own surfaces (it looks through textured gaps): median depths
    # (surface against surface) agree better than expected depths do
    assert 0.0 <= on_path["depth_abs_rel_expected"]["median"] < 1.0
    assert on_path["depth_abs_rel"]["median"] < on_path["depth_abs_rel_vs_expected_truth"]["median"]
    assert "flicker_truth_mad" in on_path and "flicker_raw_mad" in on_path
    assert 0.0 <= on_path["disoccluded_fraction"]["median"] <= 1.0
    assert "enhanced_psnr" not in on_path
    shares = on_path["raw_error_share_false_surface"]["median"], on_path["raw_error_share_hole"]["median"]
    assert all(0.0 <= s <= 1.0 for s in shares) and sum(shares) <= 1.0
    if "approximates LPIPS" in result["perceptual"]["note"]:
        assert on_path["raw_perceptual"]["median"] > 0.0
    else:
        assert result["perceptual"]["note"].startswith("not computed")
    assert result["summary"] in capsys.readouterr().out


def test_error_shares_split_the_squared_error_by_what_truth_and_reconstruction_draw():
    truth = np.zeros((4, 5, 3))
    image = np.zeros((4, 5, 3))
    truth_surface = np.ones((4, 5), bool)
    truth_surface[0] = False  # the top row is sky in the truth
    drawn = np.ones((4, 5), bool)
    drawn[3, :2] = False  # the reconstruction leaves two pixels of the bottom row open
    image[0, 0] = 0.5  # a surface drawn over the sky: error 0.25 a channel
    image[3, 0] = 1.0  # a hole: error 1 a channel
    image[2, 2] = np.sqrt(0.75)  # elsewhere: error 0.75
    shares = rf.error_shares("raw", image, truth, truth_surface, drawn)
    assert shares["raw_error_share_false_surface"] == pytest.approx(0.25 / 2.0)
    assert shares["raw_error_share_hole"] == pytest.approx(1.0 / 2.0)
    nothing = rf.error_shares("enhanced", truth, truth, truth_surface, drawn)
    assert all(math.isnan(v) for v in nothing.values()) and set(nothing) == {
        "enhanced_error_share_false_surface", "enhanced_error_share_hole"}
    with pytest.raises(AssertionError):
        rf.error_shares("raw", image, truth, truth_surface[:3], drawn)


def _prefix(points: np.ndarray, length_m: float) -> np.ndarray:
    """The first length_m of a polyline [P, 2]."""
    path = Polyline(points)
    return np.array([path.at(s)[0] for s in np.linspace(0.0, min(length_m, path.length_m), 7)])


def test_log_reference_probes_noise_and_sweep():
    """benchmarks/log_reference.py's geometry probes: the smooth depth noise has the AbsRel it promises, and the
    photo-consistency sweep takes a depth 8 % off a textured plane back to the plane, leaving pixels without a
    surface (and a camera with one view) as they were; the views' disagreement gate fires through the wrong depth
    and not through the true one."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import log_reference as lr

    rng = np.random.default_rng(0)
    field = lr.smooth_log_noise((96, 160), 0.06, rng)
    assert field.shape == (96, 160) and (field > 0).all()
    assert abs(float(np.mean(np.abs(field - 1.0))) - 0.8 * 0.06) < 0.015
    assert np.array_equal(field, lr.smooth_log_noise((96, 160), 0.06, np.random.default_rng(0)))

    plane_m = 5.0

    def camera(x_m: float) -> Camera:
        pose = np.eye(4)
        pose[0, 3] = x_m
        return Camera.from_fov(160, 96, 90.0, pose)

    def image(cam: Camera) -> np.ndarray:  # a textured plane at camera z = plane_m, seen by a camera at (x, 0, 0)
        ys, xs = np.meshgrid(np.arange(cam.height) + 0.5, np.arange(cam.width) + 0.5, indexing="ij")
        x = cam.pose_camera_to_world[0, 3] + (xs - cam.K[0, 2]) / cam.K[0, 0] * plane_m
        y = (ys - cam.K[1, 2]) / cam.K[1, 1] * plane_m
        grey = 0.5 + 0.25 * np.sin(7.0 * x) * np.cos(5.0 * y) + 0.15 * np.sin(3.1 * x + 2.3 * y)
        return np.repeat(grey[..., None], 3, axis=2).astype(np.float32)

    target = camera(0.0)
    views = [(cam, image(cam), np.full((96, 160), plane_m, np.float32)) for cam in (camera(-2.0), camera(2.0))]
    off = np.full((96, 160), plane_m * 1.08, np.float32)
    alpha = np.ones((96, 160), np.float32)
    alpha[:, :10] = 0.0
    swept = lr.swept_depth(target, off, alpha, views)
    interior = np.s_[20:76, 50:110]  # both views see it, away from the borders
    assert abs(float(np.median(swept[interior])) / plane_m - 1.0) < 0.015
    assert np.array_equal(swept[:, :10], off[:, :10])  # no surface: kept
    assert np.array_equal(lr.swept_depth(target, off, alpha, views[:1]), off)  # one view: nothing to compare
    # the views' colours agree through the true depth and disagree through the wrong one
    true = np.full((96, 160), plane_m, np.float32)
    assert lr.inconsistent_views(target, true, alpha, views, "bilinear", 0.05)[interior].mean() < 0.02
    assert lr.inconsistent_views(target, off, alpha, views, "bilinear", 0.05)[interior].mean() > 0.3


def test_reference_gate_marks_what_the_log_views_disagree_on(monkeypatch):
    """`--reference-gate`'s probe: through the true depth of a textured plane two log views agree and the reference
    is passed on as it is; through a depth 8 % off they disagree and those pixels go out as unseen (rgb 0)."""
    import neural_sensor.enhance.log_warp as log_warp

    plane_m = 5.0
    cams = []
    for x_m in (-2.0, 2.0):
        pose = np.eye(4)
        pose[0, 3] = x_m
        cams.append(Camera.from_fov(160, 96, 90.0, pose))
    target = Camera.from_fov(160, 96, 90.0, np.eye(4))

    def image(cam: Camera) -> np.ndarray:  # uint8 views of the plane at camera z = plane_m
        ys, xs = np.meshgrid(np.arange(96) + 0.5, np.arange(160) + 0.5, indexing="ij")
        x = cam.pose_camera_to_world[0, 3] + (xs - cam.K[0, 2]) / cam.K[0, 0] * plane_m
        y = (ys - cam.K[1, 2]) / cam.K[1, 1] * plane_m
        grey = 0.5 + 0.25 * np.sin(7.0 * x) * np.cos(5.0 * y) + 0.15 * np.sin(3.1 * x + 2.3 * y)
        return np.round(np.repeat(grey[..., None], 3, axis=2) * 255).astype(np.uint8)

    log = SimpleNamespace(images=np.stack([image(c) for c in cams]), depth_m=np.full((2, 96, 160), plane_m, np.float32),
                          camera=lambda j: cams[j])
    monkeypatch.setattr(log_warp, "log_view_weights", lambda reference, sid, cam, views: (np.array([0, 1]), None))
    alpha = np.ones((1, 96, 160), np.float32)
    reference = (np.full((1, 96, 160, 3), 100, np.uint8), np.ones((1, 96, 160), bool))
    interior = np.s_[20:76, 50:110]
    for depth_m, unseen_share in ((plane_m, (0.0, 0.02)), (plane_m * 1.08, (0.3, 1.0))):
        depth = np.full((1, 96, 160), depth_m, np.float32)
        rgb, valid = rf.gated_reference(log, reference, ["CAM_FRONT"], [target], depth, alpha, 2, 0.05)
        share = 1.0 - valid[0][interior].mean()
        assert unseen_share[0] <= share <= unseen_share[1], (depth_m, share)
        assert (rgb[~valid] == 0).all() and (rgb[valid] == 100).all()
    assert reference[1].all() and (reference[0] == 100).all()  # the rig's reference itself untouched
    with pytest.raises(SystemExit, match="--reference-gate must be in"):
        rf.main(["--reference-gate", "1.5", "--enhancer", "none"])


def test_every_benchmark_result_records_its_command(tmp_path, monkeypatch, capsys):
    """write_result (all the benchmarks write through it) records the command line unless the benchmark set one."""
    import _machine

    monkeypatch.setattr(sys, "argv", ["benchmarks/render.py", "--rig", "--frames", "8"])
    _machine.write_result({"machine": "m", "summary": "s"}, "render-rig", tmp_path / "a.json")
    assert json.loads((tmp_path / "a.json").read_text())["command"] == "python benchmarks/render.py --rig --frames 8"
    _machine.write_result({"machine": "m", "summary": "s", "command": "own"}, "x", tmp_path / "b.json")
    assert json.loads((tmp_path / "b.json").read_text())["command"] == "own"
    capsys.readouterr()
