"""Drive logs (docs/drive_log.md) reconstructed: a recorded drive, the scene and reference a log gives, the cache
key, logs of other sizes, and the CLI / runner entry points (the format itself: test_drive_log.py)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from neural_sensor.camera import Camera
from neural_sensor.gaussians import GaussianScene
from neural_sensor.reconstruct.drive import DEFAULT_CHECKPOINT
from neural_sensor.reconstruct.photometric import DEFAULT_DEPTH_REFINE
from neural_sensor.reconstruct.log import DriveLogError, read_drive_log, record_drive, write_drive_log
from neural_sensor.rig import nuscenes_like_rig
from neural_sensor.world import pose_from_xyz_yaw

from _drive_logs import _tiny_log, _tiny_views  # noqa: E402

SHIPPED = DEFAULT_CHECKPOINT  # the reconstructor a run uses (neural_sensor.checkpoints.DEFAULT_RECONSTRUCTOR)
needs_checkpoint = pytest.mark.skipif(not (SHIPPED / "model.safetensors").exists(), reason="no shipped checkpoint")

SHORT_SCENARIO = '''
import dataclasses
from neural_sensor.scene.layout import straight_road
from scenarios.base import drive_scenario

def make_scenario(seed):
    layout = straight_road(50.0, buildings=False)
    return dataclasses.replace(drive_scenario(layout, "short_drive", "a short straight road"), voxel_m=0.6)
'''


# the tiny logs have cameras at random orientations, which read as upside down or not level: the reader's
# DriveLogWarning for that is tested in test_log_checks.py
pytestmark = pytest.mark.filterwarnings("ignore::neural_sensor.reconstruct.log_checks.DriveLogWarning")


@pytest.fixture(scope="module")
def short_drive(tmp_path_factory):
    """A 40 m road recorded every 15 m by the 6-camera rig at 64x40 (18 views)."""
    from neural_sensor.scene.layout import straight_road

    root = tmp_path_factory.mktemp("drive")
    layout = straight_road(40.0, buildings=False)
    path = layout.lanes[0].travel_polyline()
    summary = record_drive(layout, path, root / "log", step_m=15.0, width=64, height=40, voxel_m=0.6,
                           cache_dir=root / "cache")
    return {"root": root, "layout": layout, "path": path, "log": root / "log", "summary": summary}


def test_record_drive_writes_the_rig_along_the_path(short_drive):
    summary = short_drive["summary"]
    assert summary["frames"] == 3 and summary["views"] == 18
    images, cameras, meta = read_drive_log(short_drive["log"])
    assert images.shape == (18, 40, 64, 3)
    assert [f["camera"] for f in meta["frames"][:6]] == [s.sensor_id for s in nuscenes_like_rig()]
    assert [f["timestamp_s"] for f in meta["frames"][::6]] == [0.0, 1.5, 3.0]  # 15 m apart at 10 m/s
    # each camera sits at its rig mount on the ego pose of its frame
    for cam, frame, spec in zip(cameras, meta["frames"], nuscenes_like_rig(64, 40) * 3):
        assert np.allclose(cam.pose_camera_to_world, np.array(frame["pose_ego_to_world"]) @ spec.pose_camera_to_ego)
    assert meta["neural_sensor"]["source"]["sky_rgb"] and meta["neural_sensor"]["source"]["kind"] == "generated"
    # a step that leaves one station, or makes thousands (1e-3 m: 40,000 stations here), is refused before building
    for step, said in ((50.0, r"step_m 50 is longer than the path \(40.0 m\)"), (1e-3, r"makes 40001 stations")):
        with pytest.raises(ValueError, match=said):
            record_drive(short_drive["layout"], short_drive["path"], short_drive["root"] / "never", step_m=step)
    assert not (short_drive["root"] / "never").exists()


@needs_checkpoint
def test_a_log_reconstructs_to_the_same_scene_as_the_in_memory_path(short_drive):
    from neural_sensor.reconstruct.drive import reconstructed_scene, reconstructed_scene_from_log
    from neural_sensor.reconstruct.model import ReconNet, reconstruct
    from neural_sensor.reconstruct.refine import refine_colours
    from neural_sensor.render import render
    from neural_sensor.scene.build import build_scene
    from neural_sensor.scene.path import Path as Polyline
    from neural_sensor.scene.to_gaussians import sky_rgb

    cache = short_drive["root"] / "cache"
    from_log, meta = reconstructed_scene_from_log(short_drive["log"], cache_dir=cache)
    assert meta["cached"] is False and meta["views"] == 18 and meta["frames"] == 3
    in_run, run_meta = reconstructed_scene(short_drive["layout"], short_drive["path"], step_m=15.0, width=64,
                                           height=40, voxel_m=0.6, cache_dir=cache, record_size=(64, 40))
    assert run_meta["key"] != meta["key"]  # keyed by layout + path vs by the log's bytes
    for name in ("means", "quats", "scales", "opacities", "sh", "labels"):
        assert np.array_equal(getattr(from_log, name), getattr(in_run, name)), name
    # the same scene from images rendered in memory and rounded to 8 bits, without any file in between
    layout, path = short_drive["layout"], Polyline(short_drive["path"])
    world, _ = build_scene(layout, voxel_m=0.6, cache_dir=cache)
    images, cameras = [], []
    for s in (0.0, 15.0, 30.0):
        xy, heading = path.at(s)
        ego = pose_from_xyz_yaw(xy[0], xy[1], 0.0, heading)
        step = [Camera.from_fov(sp.width, sp.height, sp.fov_deg, ego @ sp.pose_camera_to_ego)
                for sp in nuscenes_like_rig(64, 40)]
        images.append(render(world, step, backend="cpu", outputs=("rgb",), background=sky_rgb(layout.style)).rgb)
        cameras += step
    quantised = np.clip(np.concatenate(images) * 255.0 + 0.5, 0, 255).astype(np.uint8)  # rounded to nearest
    inputs = quantised.astype(np.float32) / np.float32(255)
    # the network's depths refined photometrically (the run's default), then fused (this fixture's stations are 15
    # m apart, beyond model.neighbour_views' 12 m, so the sweep finds no neighbour here and leaves the depths: what
    # it does to a reconstruction is tests/test_photometric.py's)
    # (in the arithmetic the reconstruction resolved "auto" to on this host)
    direct, sky_masks = reconstruct(ReconNet.from_pretrained(SHIPPED), inputs, cameras, return_sky=True,
                                    depth_refine=DEFAULT_DEPTH_REFINE, precision=meta["network_precision"])
    assert meta["depth_refinement"] == asdict(DEFAULT_DEPTH_REFINE)
    assert sky_masks.shape == inputs.shape[:3] and sky_masks.any()
    # then the default colour refinement (and its sky pruning) against the same images, over the log's sky
    direct, stats = refine_colours(direct, inputs, cameras, background=sky_rgb(layout.style), sky_masks=sky_masks)
    assert meta["colour_refinement"]["psnr_db"] == stats["psnr_db"] and stats["iterations"] == 2
    direct.save_ply(short_drive["root"] / "direct.ply")  # the cache returns a scene as its PLY stores it
    direct = GaussianScene.load_ply(short_drive["root"] / "direct.ply")
    for name in ("means", "quats", "scales", "opacities", "sh", "labels"):
        assert np.array_equal(getattr(direct, name), getattr(from_log, name)), name
    # cached: the same key from the same bytes; a changed image is a new key
    again, meta2 = reconstructed_scene_from_log(short_drive["log"], cache_dir=cache)
    assert meta2["cached"] is True and meta2["key"] == meta["key"] and len(again) == len(from_log)


@needs_checkpoint
def test_a_log_larger_than_the_network_reads_is_kept_as_the_reference(short_drive, monkeypatch):
    """reconstructed_scene records at record_size and reconstructs as reconstructed_scene_from_log(size=) does: the
    network (and the colour refinement) read the log resampled to width x height, the enhancer's reference keeps
    the log's own images at their size, with each view's depth rendered there; the two paths give the same scene."""
    from neural_sensor.reconstruct import drive
    from neural_sensor.reconstruct.drive import (REFERENCE_MAX_WIDTH, reconstructed_scene, reconstructed_scene_from_log,
                                                 reference_size, scene_reference)
    from neural_sensor.reconstruct.reference import REFERENCE_LOD_PX
    from neural_sensor.render import render
    from neural_sensor.render._common import SKY_RGB

    root = short_drive["root"]
    record_drive(short_drive["layout"], short_drive["path"], root / "log128", step_m=15.0, width=128, height=80,
                 voxel_m=0.6, cache_dir=root / "cache")
    in_run, run_meta = reconstructed_scene(short_drive["layout"], short_drive["path"], step_m=15.0, width=64,
                                           height=40, voxel_m=0.6, cache_dir=root / "cache", record_size=(128, 80))
    from_log, meta = reconstructed_scene_from_log(root / "log128", size=(64, 40), cache_dir=root / "cache")
    for name in ("means", "quats", "scales", "opacities", "sh", "labels"):
        assert np.array_equal(getattr(from_log, name), getattr(in_run, name)), name
    assert meta["image_size"] == run_meta["image_size"] == [64, 40]
    assert meta["reference_size"] == run_meta["reference_size"] == [128, 80]
    images, cameras, _ = read_drive_log(root / "log128")
    depth = render(from_log, cameras[:6], backend="cpu", outputs=("rgb", "median_depth"), background=SKY_RGB,
                   lod_px=REFERENCE_LOD_PX).median_depth  # as the reference keeps it
    for entry in (meta, run_meta):
        reference = scene_reference(entry)
        np.testing.assert_array_equal(reference.images, np.round(images * 255).astype(np.uint8))
        assert reference.depth_m.shape == (18, 80, 128)
        np.testing.assert_allclose(reference.depth_m[:6], depth, rtol=1e-3)  # stored as float16
    # a log wider than the run's rig keeps a reference of at most REFERENCE_MAX_WIDTH pixels across
    assert reference_size((128, 80)) == (128, 80)
    assert reference_size((REFERENCE_MAX_WIDTH, 7)) == (REFERENCE_MAX_WIDTH, 7)
    assert reference_size((1600, 900)) == (480, 270) == reference_size((960, 540))
    monkeypatch.setattr(drive, "REFERENCE_MAX_WIDTH", 96)  # the network reads the log as it is, the reference less
    _, capped = reconstructed_scene_from_log(root / "log128", cache_dir=root / "capped")
    assert capped["image_size"] == [128, 80] and capped["reference_size"] == [96, 60]
    assert scene_reference(capped).images.shape == (18, 60, 96, 3)
    # by default a log wider than the network's training size is read at that width, its aspect kept (the same
    # cache entry as asking for that size); a narrower log as it is; one of mixed sizes at one (`mixed_size`)
    assert drive.network_read_size([(1600, 900)]) == (160, 90) and drive.network_read_size([(320, 192)]) == (160, 96)
    assert drive.network_read_size([(160, 96)]) is None and drive.network_read_size([(320, 192), (64, 40)]) == (64, 39)
    monkeypatch.setattr(drive, "NETWORK_SIZE", (64, 40))
    auto, auto_meta = reconstructed_scene_from_log(root / "log128", cache_dir=root / "cache")
    assert auto_meta["cached"] and auto_meta["key"] == meta["key"] and auto_meta["image_size"] == [64, 40]
    assert np.array_equal(auto.means, from_log.means)


@needs_checkpoint
def test_a_reconstruction_keeps_its_log_as_the_enhancers_reference(short_drive, tmp_path):
    """The cache entry holds the log's images with each view's depth rendered from the reconstruction
    (reference.npz); the compiled warp equals its numpy twin (warp_views, bilinear, blended by the same
    weights); a damaged file is named."""
    from neural_sensor.reconstruct.drive import reconstructed_scene_from_log, scene_reference
    from neural_sensor.reconstruct.log import read_drive_log
    from neural_sensor.enhance.log_warp import log_view_weights, warp_log_reference
    from neural_sensor.reconstruct.reference import REFERENCE_LOD_PX, LogReference
    from neural_sensor.render import render
    from neural_sensor.render._common import SKY_RGB

    scene, meta = reconstructed_scene_from_log(short_drive["log"], cache_dir=short_drive["root"] / "cache")
    reference = scene_reference(meta)
    images, cameras, log_meta = read_drive_log(short_drive["log"])
    assert len(reference) == len(cameras) == 18
    assert list(reference.sensor_ids) == [f["camera"] for f in log_meta["frames"]]
    np.testing.assert_array_equal(reference.images, np.round(images * 255).astype(np.uint8))
    depth = render(scene, cameras[:6], backend="cpu", outputs=("rgb", "median_depth"), background=SKY_RGB,
                   lod_px=REFERENCE_LOD_PX).median_depth  # as the reference keeps it
    np.testing.assert_allclose(reference.depth_m[:6], depth, rtol=1e-3)  # stored as float16
    # the rig's cameras at twice the log's resolution, 1 m to the left of each station's pose
    specs = nuscenes_like_rig(128, 80)
    targets = [Camera(128, 80, c.K * np.array([[2.0], [2.0], [1.0]]),
                      pose_from_xyz_yaw(0.0, 1.0, 0.0, 0.0) @ c.pose_camera_to_world) for c in cameras[6:12]]
    out = render(scene, targets, backend="cpu", outputs=("rgb", "alpha", "median_depth"), background=SKY_RGB)
    ids = [s.sensor_id for s in specs]
    fast = reference.warp(ids, targets, out.median_depth, out.alpha, 2)
    twin = warp_log_reference(reference, ids, targets, out.median_depth, out.alpha, 2)
    np.testing.assert_array_equal(fast[1], twin[1])
    assert fast[0].dtype == np.uint8  # the wire's dtype, rounded from the twin's floats
    assert np.abs(fast[0].astype(np.int16) - np.round(twin[0] * 255).astype(np.int16)).max() <= 1
    assert fast[1].mean() > 0.5
    # a sensor id the log lacks takes the views facing its way
    assert set(reference.sensor_ids[log_view_weights(reference, "my_front", targets[0], 3)[0]]) == {"CAM_FRONT"}
    damaged = tmp_path / "reference.npz"
    damaged.write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match="reference.npz is unreadable"):
        LogReference.load(damaged)
    assert scene_reference({"path": str(tmp_path / "nothing")}) is None
    with pytest.raises(ValueError, match=f"entry {tmp_path} is damaged; remove that folder"):  # one stored
        scene_reference({"path": str(tmp_path)})  # before the cache kept CRC-32s: how to get past it


@needs_checkpoint
def test_odd_sizes_are_cropped_to_the_networks_stride(tmp_path):
    from neural_sensor.reconstruct.drive import reconstructed_scene_from_log

    rng = np.random.default_rng(6)
    images, cameras = _tiny_views(rng, count=2, width=34, height=26)
    write_drive_log(tmp_path / "log", images, cameras)
    scene, meta = reconstructed_scene_from_log(tmp_path / "log", cache_dir=tmp_path / "cache")
    assert meta["image_size"] == [32, 24] and meta["log_image_sizes"] == [[34, 26]] and len(scene) > 0
    assert meta["reference_size"] == [34, 26]  # the reference keeps the log's images whole
    new_key = reconstructed_scene_from_log(tmp_path / "log", size=(16, 12), cache_dir=tmp_path / "cache")[1]
    assert new_key["cached"] is False and new_key["image_size"] == [16, 12]


@needs_checkpoint
def test_the_cache_key_follows_the_log_bytes_and_the_reconstruction_code(tmp_path, monkeypatch):
    from neural_sensor.reconstruct import drive

    rng = np.random.default_rng(7)
    images, cameras = _tiny_views(rng, count=2, width=32, height=24)
    log = write_drive_log(tmp_path / "log", images, cameras)
    first = drive.reconstructed_scene_from_log(log, cache_dir=tmp_path / "cache")[1]
    assert first["cached"] is False and drive.reconstructed_scene_from_log(log, cache_dir=tmp_path / "cache")[1][
        "cached"] is True
    monkeypatch.setattr(drive, "reconstruction_code_hash", lambda: "another fusion")
    assert drive.reconstructed_scene_from_log(log, cache_dir=tmp_path / "cache")[1]["cached"] is False
    monkeypatch.undo()
    images[1, 0, 0] ^= 1  # one changed byte of one image
    changed = write_drive_log(tmp_path / "changed", images, cameras)
    again = drive.reconstructed_scene_from_log(changed, cache_dir=tmp_path / "cache")[1]
    assert again["cached"] is False and again["key"] != first["key"]


# --------------------------------------------------------------------------------------------- CLI and runner
@needs_checkpoint
def test_cli_reconstruct_and_record_drive(tmp_path, capsys, short_drive):
    from neural_sensor.gaussians import GaussianScene
    from scenarios.cli import main as cli_main

    assert cli_main(["reconstruct", str(short_drive["log"]), "-o", str(tmp_path / "scene.ply"),
                     "--cache", str(tmp_path / "cache")]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["views"] == 18 and result["frames"] == 3 and result["image_size"] == [64, 40]
    # and a person's line: how many Gaussians, built or cached, where the scene and its PLY are
    assert captured.err.strip().splitlines()[-1] == (
        f"neural-sensor reconstruct: {result['n_gaussians']} Gaussians (built in {result['wall_s']} s); the scene is "
        f"cached in {result['path']}, its PLY copied to {tmp_path / 'scene.ply'}")
    assert len(GaussianScene.load_ply(tmp_path / "scene.ply")) == result["n_gaussians"] > 1000
    refined = result["colour_refinement"]  # on by default: the fit raised the log views' PSNR
    assert refined["iterations"] == 2 and refined["psnr_db"][1] > refined["psnr_db"][0]
    # without the refinement: another cache entry, nothing pruned, the network's colours
    assert cli_main(["reconstruct", str(short_drive["log"]), "--refine-iterations", "0",
                     "--cache", str(tmp_path / "cache")]) == 0
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plain["colour_refinement"] is None and plain["key"] != result["key"]
    assert plain["n_gaussians"] == result["n_gaussians"] + refined["pruned"]
    assert result["depth_refinement"] == asdict(DEFAULT_DEPTH_REFINE)  # on by default, named in the result
    assert cli_main(["reconstruct", str(short_drive["log"]), "--no-depth-refinement",
                     "--cache", str(tmp_path / "cache")]) == 0
    network_depths = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert network_depths["depth_refinement"] is None and network_depths["key"] not in (result["key"], plain["key"])
    assert cli_main(["reconstruct", str(short_drive["log"]), "--refine-iterations", "-1"]) == 2
    assert "--refine-iterations must be >= 0" in capsys.readouterr().err
    assert result["reference_size"] == [64, 40]
    # -o never writes into the log it reads (it once overwrote transforms.json with the PLY), and writes a .ply
    transforms = (short_drive["log"] / "transforms.json").read_bytes()
    for out, problem in ((short_drive["log"] / "transforms.json", "give a .ply file name"),
                         (short_drive["log"] / "scene.ply", "lies inside the drive log"),
                         (tmp_path / "scene.png", "give a .ply file name")):
        assert cli_main(["reconstruct", str(short_drive["log"]), "-o", str(out),
                         "--cache", str(tmp_path / "cache")]) == 2
        assert problem in capsys.readouterr().err
    assert (short_drive["log"] / "transforms.json").read_bytes() == transforms
    assert not (short_drive["log"] / "scene.ply").exists() and not (tmp_path / "scene.png").exists()

    bad = _tiny_log(tmp_path, "bad")
    (bad / "images" / "000002_CAM_C.png").unlink()
    assert cli_main(["reconstruct", str(bad), "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "frame 2 (images/000002_CAM_C.png)" in err[0]
    assert err[0].startswith("neural-sensor reconstruct: error")

    scenario_file = tmp_path / "short_drive.py"
    scenario_file.write_text(SHORT_SCENARIO)
    assert cli_main(["record-drive", str(scenario_file), "-o", str(tmp_path / "rec"), "--step", "25", "--width", "32",
                     "--height", "24", "--cache", str(tmp_path / "cache")]) == 0
    captured = capsys.readouterr()
    recorded = json.loads(captured.out.strip().splitlines()[-1])
    assert recorded["scenario"] == "short_drive" and recorded["views"] == 6 * recorded["frames"]
    assert "warning: views 25 m apart reconstruct poorly" in captured.err  # (18 m made an almost empty scene)
    assert captured.err.strip().splitlines()[-1] == (
        f"neural-sensor record-drive: {recorded['frames']} frames, {recorded['views']} images; the drive log is in "
        f"{recorded['log']}")
    images, _, _ = read_drive_log(tmp_path / "rec")
    assert images.shape == (recorded["views"], 24, 32, 3)
    # the folder now holds a log: a second recording there is refused, before the drive is rendered (it was
    # refused only after rendering every view); a missing scenario would say so, so the folder is said first
    assert cli_main(["record-drive", str(tmp_path / "no_such_scenario.py"), "-o", str(tmp_path / "rec")]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err


def test_the_cli_and_a_run_take_a_logs_transforms_json(tmp_path, capsys):
    from scenarios.cli import main as cli_main
    from scenarios.runner import RunOptions, run_scenario

    log = _tiny_log(tmp_path)
    transforms = (log / "transforms.json").read_bytes()
    # -o inside the log is refused before any reading, the log named by its transforms.json as by its folder
    assert cli_main(["reconstruct", str(log / "transforms.json"), "-o", str(log / "scene.ply"),
                     "--cache", str(tmp_path / "cache")]) == 2
    assert "lies inside the drive log" in capsys.readouterr().err
    assert not (log / "scene.ply").exists() and (log / "transforms.json").read_bytes() == transforms
    assert cli_main(["reconstruct", str(log / "images" / "000000_CAM_A.png"), "-o", str(tmp_path / "scene.ply")]) == 2
    assert "000000_CAM_A.png: is a file, not a drive log" in capsys.readouterr().err
    # a run reads the file's folder: its missing image is named before anything starts
    (log / "images" / "000002_CAM_C.png").unlink()
    with pytest.raises(DriveLogError, match=r"frame 2 \(images/000002_CAM_C.png\): image file missing"):
        run_scenario("cut_in", RunOptions(out_dir=tmp_path / "out", ticks=2, progress=False,
                                          scene=f"log:{log / 'transforms.json'}"))
    assert cli_main(["run", "cut_in", "--scene-log", str(log / "transforms.json"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "frame 2 (images/000002_CAM_C.png)" in err[0], err
    assert not (tmp_path / "out").exists()


@needs_checkpoint
def test_reconstruct_takes_a_logs_transforms_json(tmp_path, capsys):
    from scenarios.cli import main as cli_main

    images, cameras = _tiny_views(np.random.default_rng(8), count=2, width=32, height=24)
    log = write_drive_log(tmp_path / "log", images, cameras)
    fast = ["--refine-iterations", "0", "--no-depth-refinement", "--cache", str(tmp_path / "cache")]
    assert cli_main(["reconstruct", str(log / "transforms.json"), "-o", str(tmp_path / "scene.ply"), *fast]) == 0
    by_file = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert by_file["views"] == 2 and by_file["cached"] is False and (tmp_path / "scene.ply").is_file()
    assert cli_main(["reconstruct", str(log), *fast]) == 0  # the same log: the same cache entry
    by_folder = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert by_folder["cached"] is True and by_folder["key"] == by_file["key"]


def _with_wider_front_camera(log: Path, out: Path, size=(96, 48)) -> Path:
    """A copy of `log` whose CAM_FRONT images are resampled to `size` (another aspect), their intrinsics scaled:
    a rig whose cameras differ in size, as a real car's often do."""
    import shutil

    from PIL import Image

    shutil.copytree(log, out)
    data = json.loads((out / "transforms.json").read_text())
    for frame in data["frames"]:
        if frame["camera"] == "CAM_FRONT":
            sx, sy = size[0] / frame["w"], size[1] / frame["h"]
            path = out / frame["file_path"]
            Image.open(path).resize(size, Image.BICUBIC).save(path)
            frame.update(w=size[0], h=size[1], fl_x=frame["fl_x"] * sx, cx=frame["cx"] * sx, fl_y=frame["fl_y"] * sy,
                         cy=frame["cy"] * sy)
    (out / "transforms.json").write_text(json.dumps(data))
    return out


@needs_checkpoint
def test_a_log_of_mixed_sizes_is_reconstructed_and_run_without_a_size(tmp_path, short_drive):
    """A log whose cameras differ in size (here the front camera 96x48, the others 64x40) is read at one size by
    default (`mixed_size`: the narrowest width, the aspect halfway between the log's), and a run takes it as its
    scene; its scene is as good as the one-size log's where the other cameras look."""
    from neural_sensor.metrics import psnr
    from neural_sensor.reconstruct import drive
    from neural_sensor.reconstruct.drive import reconstructed_scene_from_log, scene_reference
    from neural_sensor.render import render
    from neural_sensor.render._common import SKY_RGB
    from scenarios.runner import RunOptions, run_scenario

    assert drive.mixed_size([(64, 40), (96, 48)], 160) == (64, 36)  # aspects 1.6 and 2.0: sqrt(3.2) = 1.79
    assert drive.mixed_size([(1920, 1280), (1920, 886)], 160) == (160, 89)  # a front and a side camera
    assert drive.network_read_size([(1920, 1280), (1920, 886)]) == (160, 89)
    assert drive.mixed_size([(1920, 1280), (1920, 886)], drive.REFERENCE_MAX_WIDTH) == (480, 266)
    mixed = _with_wider_front_camera(short_drive["log"], tmp_path / "mixed")
    with pytest.raises(DriveLogError, match="one reconstruction takes one image size"):
        read_drive_log(mixed)  # the reader itself still takes a size for such a log
    cache = short_drive["root"] / "cache"
    scene, meta = reconstructed_scene_from_log(mixed, cache_dir=cache)
    assert meta["image_size"] == [64, 36] and meta["reference_size"] == [64, 36]
    assert meta["log_image_sizes"] == [[64, 40], [96, 48]]
    assert scene_reference(meta).images.shape == (18, 36, 64, 3)
    same, _ = reconstructed_scene_from_log(short_drive["log"], size=(64, 36), cache_dir=cache)
    images, cameras, log_meta = read_drive_log(short_drive["log"], size=(64, 36))
    others = [i for i, f in enumerate(log_meta["frames"]) if f["camera"] != "CAM_FRONT"]
    got = [render(s, [cameras[i] for i in others], backend="cpu", background=SKY_RGB).rgb for s in (scene, same)]
    mixed_db, same_db = (psnr(g, images[others]) for g in got)
    assert len(scene) > 1000 and mixed_db > same_db - 0.5, (mixed_db, same_db)  # 16.8 / 16.8 dB at 64x36
    scenario_file = tmp_path / "short_drive.py"
    scenario_file.write_text(SHORT_SCENARIO)
    summary = run_scenario(str(scenario_file), RunOptions(out_dir=tmp_path / "out", ticks=2, width=32, height=18,
                                                          backend="cpu", video=False, cache_dir=cache,
                                                          progress=False, scene=f"log:{mixed}"))
    assert summary["ticks"] == 2 and summary["scene"]["cached"] and summary["scene"]["key"] == meta["key"]


@needs_checkpoint
def test_a_run_takes_a_log_as_its_scene(tmp_path, capsys, short_drive, monkeypatch):
    from scenarios.cli import main as cli_main
    from scenarios.runner import RunOptions, run_scenario

    scenario_file = tmp_path / "short_drive.py"
    scenario_file.write_text(SHORT_SCENARIO)
    options = RunOptions(out_dir=tmp_path / "out", ticks=2, width=32, height=18, backend="cpu", video=False,
                         cache_dir=short_drive["root"] / "cache", progress=False,
                         scene=f"log:{short_drive['log']}")
    summary = run_scenario(str(scenario_file), options)
    assert summary["ticks"] == 2 and summary["scene"]["source"] == f"log:{short_drive['log']}"
    assert summary["scene"]["log"] == str(short_drive["log"].resolve()) and summary["scene"]["n_gaussians"] > 1000
    # the log passes the ego's start: no warning; a log of another world would be named (here: any distance is far)
    import scenarios.runner as runner

    assert 0.0 <= summary["scene"]["log_nearest_to_ego_start_m"] < runner.LOG_FAR_FROM_EGO_M
    assert (summary["scene"]["log_nearest_to_ego_start_m"] <= summary["scene"]["log_farthest_from_ego_lane_m"]
            < runner.LOG_FAR_FROM_EGO_M)
    assert "warning" not in capsys.readouterr().err
    # a log that passes the ego's start but not the whole lane ahead (this short drive covers its first metres)
    near, far = summary["scene"]["log_nearest_to_ego_start_m"], summary["scene"]["log_farthest_from_ego_lane_m"]
    assert far > near + 1.0, (near, far)
    monkeypatch.setattr(runner, "LOG_FAR_FROM_EGO_M", (near + far) / 2)
    run_scenario(str(scenario_file), replace(options, out_dir=tmp_path / "out_leaves"))
    assert "leaves the ego's lane" in capsys.readouterr().err
    monkeypatch.setattr(runner, "LOG_FAR_FROM_EGO_M", -1.0)
    run_scenario(str(scenario_file), replace(options, out_dir=tmp_path / "out_far"))
    assert "passes no nearer than" in capsys.readouterr().err
    with pytest.raises(DriveLogError, match="no transforms.json"):
        run_scenario(str(scenario_file), RunOptions(out_dir=tmp_path / "out2", ticks=2, progress=False,
                                                    scene=f"log:{tmp_path}"))
    assert not (tmp_path / "out2").exists()
    with pytest.raises(ValueError, match="'log:PATH'"):
        run_scenario(str(scenario_file), RunOptions(out_dir=tmp_path / "out3", scene="recon"))
    assert cli_main(["run", str(scenario_file), "--scene", "reconstruction", "--scene-log", str(short_drive["log"]),
                     "--out", str(tmp_path / "out4")]) == 2
    assert "not both" in capsys.readouterr().err
