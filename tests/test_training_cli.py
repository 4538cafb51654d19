"""The training scripts' command lines: what they refuse before making any data or taking any step (a new user's
one-step trial used to replace the shipped checkpoints/enhancer-run, and `--resume` into an empty folder trained a
fresh net without a word)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest
import torch

from neural_sensor.train import (cotrain, gpu_pipeline, state, train_enhancer, train_enhancer_run, train_reconstructor,
                                 train_reconstructor_run)

SCRIPTS = [train_enhancer, train_enhancer_run, train_reconstructor, train_reconstructor_run, cotrain]


def _refusal(monkeypatch, capsys, module, *argv: str) -> str:
    """The parser's error for `module.main()` on argv (exit status 2, nothing trained)."""
    monkeypatch.setattr(sys, "argv", [module.__name__, *argv])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def _checkpoint(folder):
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


@pytest.mark.parametrize("module", SCRIPTS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_a_folder_holding_a_checkpoint_is_not_replaced_without_overwrite(module, tmp_path, monkeypatch, capsys):
    """No script writes over a checkpoint unless told to; --resume needs a state to resume; a file is no folder;
    the default --out is under out/, not checkpoints/."""
    held = _checkpoint(tmp_path / "held")
    assert "already holds a checkpoint (config.json)" in _refusal(monkeypatch, capsys, module, "--out", str(held))
    assert "nothing to resume" in _refusal(monkeypatch, capsys, module, "--out", str(tmp_path / "none"), "--resume")
    assert "nothing to resume" in _refusal(monkeypatch, capsys, module, "--out", str(held), "--resume")
    assert "give one" in _refusal(monkeypatch, capsys, module, "--out", str(held), "--resume", "--overwrite")
    (tmp_path / "file").write_text("x")
    assert "a file, not a folder" in _refusal(monkeypatch, capsys, module, "--out", str(tmp_path / "file"))
    assert 'add_out_options(parser, Path("out/' in inspect.getsource(module.main)  # the default: not checkpoints/


def test_bad_training_options_are_named_before_any_data_is_made(tmp_path, monkeypatch, capsys):
    out = ["--out", str(tmp_path / "new")]
    cases = [(train_enhancer_run, ["--steps", "0"], "--steps 0: must be at least 1"),
             (train_enhancer_run, ["--worlds", "0"], "--worlds 0: must be at least 1"),
             (train_enhancer_run, ["--pairs", "-1"], "--pairs -1"),
             (train_enhancer_run, ["--lr", "-1"], "--lr -1.0: must be a positive learning rate"),
             (train_enhancer_run, ["--lr", "nan"], "--lr nan"),
             (train_enhancer_run, ["--init", str(tmp_path / "missing")], "no such checkpoint folder"),
             (train_enhancer_run, ["--reconstructor", str(tmp_path / "missing")], "--reconstructor"),
             (train_enhancer_run, ["--device", "bogus"], "not a torch device"),
             (train_reconstructor_run, ["--renderer", "gsplat", "--device", "cpu"], "--renderer gsplat: gsplat's "
              "rasteriser needs CUDA and the training runs on cpu"),
             (train_enhancer_run, ["--data", __file__], "a file, not a folder for the training data"),
             (train_reconstructor_run, ["--data", "/proc/no_such/data"], "--data /proc/no_such/data: no data can be "
              "written there"),
             (train_reconstructor_run, ["--context-stations", "0"], "--context-stations 0"),
             (train_reconstructor_run, ["--targets-per-step", "0"], "--targets-per-step 0"),
             (train_reconstructor_run, ["--depth-bins", "1"], "--depth-bins 1: 0 (the --init's planes) or at least 2"),
             (train_reconstructor_run, ["--min-depth-m", "-1"], "--min-depth-m -1.0"),
             (train_reconstructor, ["--worlds", "0"], "--worlds 0"),
             (train_enhancer, ["--batch", "0"], "--batch 0"),
             (cotrain, ["--enhancer", str(tmp_path / "missing")], "--enhancer"),
             (gpu_pipeline, ["--recon-worlds", "0"], "--recon-worlds 0"),
             (gpu_pipeline, ["--stages", "recon"], "the stages are reconstructor_data, reconstructor"),
             # a new user's findings: these failed with a traceback after the data (minutes) had been made
             (train_enhancer_run, ["--init", "checkpoints/reconstructor-run"],
              "a checkpoint of class ReconNet, not Enhancer"),
             (train_enhancer_run, ["--reconstructor", "checkpoints/enhancer-run"],
              "a checkpoint of class Enhancer, not ReconNet"),
             (train_reconstructor_run, ["--init", str(tmp_path)], "not a checkpoint folder"),
             (train_enhancer_run, ["--save-every", "0"], "--save-every 0: must be at least 1"),
             (train_reconstructor_run, ["--save-every", "0"], "--save-every 0: must be at least 1"),
             (train_reconstructor_run, ["--minutes", "nan"], "--minutes nan: must be a finite number of minutes"),
             (train_enhancer_run, ["--shift-weights", "0:-1"], "shift_weights 0:-1: expected a shift >= 0 m and a "
                                                               "finite weight >= 0"),
             (train_enhancer_run, ["--shift-weights", "3:nan"], "shift_weights 3:nan"),
             (train_enhancer_run, ["--shift-weights", "0:0,3:0"], "every weight is 0"),
             (gpu_pipeline, ["--minutes", "-1"], "--minutes -1.0: must be a finite number of minutes"),
             # a new user's findings (2026-12-07): NaN weights trained a NaN net and saved it (exit 0); a negative
             # one reversed its term; --pairs 0 and an incomplete --shift-weights failed after the data was made
             (train_reconstructor_run, ["--view-depth-weight", "nan"],
              "--view-depth-weight nan: must be a finite number, 0 or more"),
             (train_reconstructor_run, ["--keep-weight", "-1"], "--keep-weight -1.0: must be a finite number"),
             (train_enhancer_run, ["--temporal-weight", "-3"], "--temporal-weight -3.0: must be a finite number"),
             (train_enhancer_run, ["--identity-fraction", "1.5"], "--identity-fraction 1.5: must be a fraction"),
             (train_enhancer_run, ["--pairs", "0"], "pairs_per_world 0 makes no frame pairs, and the temporal term"),
             (train_enhancer_run, ["--shift-weights", "0:1"], "no weight for the data's shift(s) 0.5, 1, 2, 3 m"),
             (train_reconstructor_run, ["--depth-only"], "--depth-only needs --init"),
             (cotrain, ["--reconstructor", "checkpoints/reconstructor-run"], "a net with ray inputs and a cost "
                                                                            "volume (the run regime's")]
    if not torch.cuda.is_available():
        cases.append((train_reconstructor_run, ["--device", "cuda"], "no CUDA device"))
    for module, argv, message in cases:
        assert message in _refusal(monkeypatch, capsys, module, *out, *argv), (module.__name__, argv)
    assert not (tmp_path / "new").exists()
    unwritable = Path("/proc/neural-sensor-out")  # a run trained to the end, then died saving there
    assert "no checkpoint can be written there" in _refusal(monkeypatch, capsys, train_enhancer_run, "--out",
                                                            str(unwritable))


class _TinyModel(torch.nn.Linear):
    def save_pretrained(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), Path(folder) / "model.pt")


@pytest.mark.parametrize("sig, raised", [("SIGINT", KeyboardInterrupt), ("SIGTERM", SystemExit)])
def test_an_interrupted_training_keeps_its_last_step(sig, raised, tmp_path, capsys):
    """A Ctrl-C or SIGTERM inside the training loop lets the step in flight finish, saves the step reached, says so
    and leaves as KeyboardInterrupt / SystemExit(143) (a run under save_every steps kept nothing, with a
    KeyboardInterrupt traceback: a new user's finding); with no step taken nothing is written; the handlers that
    were there are put back."""
    import os
    import signal

    from neural_sensor.train.state import STATE_FILE, stop_requested

    signum = getattr(signal, sig)
    model = _TinyModel(2, 2)
    optimiser = torch.optim.Adam(model.parameters())
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    history = []
    out = tmp_path / "out"
    for signal_at in (0, 3):
        step = 0
        with pytest.raises(raised) as exit_info:
            with stop_requested(out, lambda: (model, optimiser, step, history)) as request:
                while step < 10 and request.signum is None:
                    if step == signal_at:
                        os.kill(os.getpid(), signum)  # lands mid-step: the step still finishes
                        if signal_at == 0:
                            break
                    step += 1
                    history.append({"step": step})
        if raised is SystemExit:
            assert exit_info.value.code == 143
        err = capsys.readouterr().err
        if signal_at == 0:
            assert "no step was taken, so nothing was saved" in err and not out.exists()
        else:
            assert "holds step 4: --resume continues it" in err
            assert torch.load(out / STATE_FILE, weights_only=True)["step"] == 4
        assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.parametrize("module, name", [(train_enhancer_run, "enhancer-run-data"),
                                          (train_reconstructor_run, "reconstructor-run-data")])
def test_the_data_default_follows_the_cache_variable(module, name, tmp_path, monkeypatch, capsys):
    """--data defaults under $NEURAL_SENSOR_CACHE when it is set, as the scene cache does (it used to ignore it and
    fill ~/.cache whatever the user had pointed the caches at)."""
    monkeypatch.setenv("NEURAL_SENSOR_CACHE", str(tmp_path / "caches"))
    monkeypatch.setattr(sys, "argv", [module.__name__, "--help"])
    with pytest.raises(SystemExit):
        module.main()
    assert str(tmp_path / "caches" / name) in capsys.readouterr().out.replace("\n", "").replace(" ", "")
    monkeypatch.delenv("NEURAL_SENSOR_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    from neural_sensor.train.state import default_data_root
    cache = tmp_path / ".cache"
    assert default_data_root(name) == cache / "neural_sensor" / name  # one folder with the scene cache
    (cache / "neural-sensor" / name).mkdir(parents=True)  # data made before the folders were one is still used
    assert default_data_root(name) == cache / "neural-sensor" / name
    (cache / "neural_sensor" / name).mkdir(parents=True)
    assert default_data_root(name) == cache / "neural_sensor" / name


def test_the_gpu_pipeline_keeps_a_trained_pair_as_every_script_keeps_its_checkpoint(tmp_path, monkeypatch, capsys):
    """gpu_pipeline took neither the rule nor --overwrite: a rerun into the same --out replaced OUT/reconstructor
    and OUT/enhancer without a word, and --resume into an empty folder started afresh. A data stage alone is
    let through (it writes no checkpoint: gpu_session.sh makes the data first)."""
    out = tmp_path / "pair"
    out.mkdir()
    _checkpoint(out / "reconstructor")
    said = _refusal(monkeypatch, capsys, gpu_pipeline, "--out", str(out))
    assert f"{out / 'reconstructor'} already holds a checkpoint (config.json)" in said
    assert "give one" in _refusal(monkeypatch, capsys, gpu_pipeline, "--out", str(out), "--resume", "--overwrite")
    assert "nothing to resume" in _refusal(monkeypatch, capsys, gpu_pipeline, "--out", str(tmp_path / "new"),
                                           "--resume")
    assert "nothing to resume" in _refusal(monkeypatch, capsys, gpu_pipeline, "--out", str(out), "--resume",
                                           "--stages", "enhancer")
    (tmp_path / "file").write_text("x")
    assert "a file, not a folder" in _refusal(monkeypatch, capsys, gpu_pipeline, "--out", str(tmp_path / "file"))
    (out / "reconstructor" / "train_state.pt").write_bytes(b"")  # the reconstructor resumable, the enhancer's
    _checkpoint(out / "enhancer")  # checkpoint without its state (killed between the two saves): not restarted over it
    assert f"--resume: {out / 'enhancer'} holds a checkpoint (config.json) but no train_state.pt" in _refusal(
        monkeypatch, capsys, gpu_pipeline, "--out", str(out), "--resume")
    from neural_sensor.train.gpu_pipeline import _check_out

    class Parser:
        def error(self, message):
            raise AssertionError(message)

    _check_out(Parser(), out, ("reconstructor_data",), False, False)  # data alone: let through
    root = Path(__file__).resolve().parents[1] / "checkpoints"  # (the enhancer's data render with OUT/reconstructor)
    for name in ("config.json", "model.safetensors"):  # (the weights too: a folder without them is refused)
        (out / "reconstructor" / name).write_bytes((root / "reconstructor-run" / name).read_bytes())
    _check_out(Parser(), out, ("reconstructor_data", "enhancer_data"), False, False)
    _check_out(Parser(), out, ("reconstructor", "enhancer"), False, True)  # --overwrite: let through


def test_checkpoint_folders_of_the_wrong_class_are_named():
    """One check (`checkpoints.checkpoint_problem`) for every option that takes a checkpoint: an enhancer's folder
    given to the reconstruction failed only inside the network."""
    from neural_sensor.checkpoints import checkpoint_problem
    from neural_sensor.reconstruct.drive import _check_checkpoint

    assert checkpoint_problem("checkpoints/reconstructor-run", "ReconNet") is None
    assert checkpoint_problem("checkpoints/enhancer-run", "ReconNet") == "a checkpoint of class Enhancer, not ReconNet"
    assert checkpoint_problem("checkpoints/no-such", None) == "no such folder"
    with pytest.raises(ValueError, match="reconstruction checkpoint checkpoints/enhancer-run: a checkpoint of class "
                                         "Enhancer, not ReconNet"):
        _check_checkpoint("checkpoints/enhancer-run")


def test_a_resumed_training_refuses_options_that_change_the_checkpoints_shape(tmp_path, monkeypatch, capsys):
    """--resume loads the model saved in --out as it is: --depth-bins 64 on a 32-plane reconstructor, or other
    enhancer widths, were silently ignored. They are refused by name; the checkpoint's own values pass."""
    root = Path(__file__).resolve().parents[1] / "checkpoints"
    for name in ("reconstructor-run", "enhancer-run"):
        out = tmp_path / name
        out.mkdir()
        (out / "config.json").write_text((root / name / "config.json").read_text())
        (out / "train_state.pt").write_bytes(b"")
    recon = str(tmp_path / "reconstructor-run")
    err = _refusal(monkeypatch, capsys, train_reconstructor_run, "--out", recon, "--resume", "--depth-bins", "64",
                   "--min-depth-m", "1")
    assert "--depth-bins 64 (the checkpoint has 32)" in err and "--min-depth-m 1" not in err
    enh = str(tmp_path / "enhancer-run")
    assert "--block-channels 32,64,128 (the checkpoint has 16,32,64)" in _refusal(
        monkeypatch, capsys, train_enhancer_run, "--out", enh, "--resume", "--block-channels", "32,64,128")
    assert "--widen 32,64,128 (the checkpoint has 16,32,64)" in _refusal(
        monkeypatch, capsys, train_enhancer_run, "--out", enh, "--resume", "--widen", "--init",
        str(root / "enhancer-run"))

    class Parser:  # what passes: the checkpoint's own shape
        def error(self, message):
            raise AssertionError(message)

    args = type("Args", (), {"resume": True, "out": recon})()
    state.check_resumed_shape(Parser(), args, {"--depth-bins": ("depth_bins", 32),
                                               "--min-depth-m": ("min_depth_m", 1.0),
                                               "--cost-volume": ("cost_volume", True)})


def test_training_checkpoints_and_data_survive_what_a_new_user_did(tmp_path, monkeypatch, capsys):
    """A new user's training findings (2026-12-06), each checked on what it touches:
    - a state saved on a GPU (CUDA tensors; the shipped reconstructor's) raised on a CPU-only resume;
    - --resume with --steps at or below the saved step took no step and rewrote the summary with the smaller count;
    - an interrupted run left the last run's train_summary.json saying its old step;
    - a damaged model.safetensors raised safetensors' own error (and the file was written 0600, in place);
    - a truncated cached .npz (BadZipFile) was never made again;
    - gpu_pipeline's enhancer stages with no OUT/reconstructor failed after starting;
    - train_reconstructor_run's default rate with --init was 5e-4, which undid the shipped net in three steps."""
    from neural_sensor.reconstruct.model import ReconConfig, ReconNet
    from neural_sensor.train.state import STATE_FILE, load_or_make_npz, save_checkpoint, start_or_resume

    out = tmp_path / "run"
    model = _TinyModel(2, 2)
    optimiser = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimiser.step()
    save_checkpoint(out, model, optimiser, 27, [{"step": 27}])
    state_dict = torch.load(out / STATE_FILE, weights_only=True)
    real_load = torch.load

    def as_if_saved_on_a_gpu(path, *args, map_location=None, **kwargs):  # a CPU-only torch given CUDA tensors
        if map_location is None:
            raise RuntimeError("Attempting to deserialize object on a CUDA device but torch.cuda.is_available() "
                               "is False")
        return real_load(path, *args, map_location=map_location, **kwargs)

    monkeypatch.setattr(torch, "load", as_if_saved_on_a_gpu)
    _, resumed, step, _ = start_or_resume(out, True, None, lambda folder: _TinyModel(2, 2),
                                          lambda m: torch.optim.Adam(m.parameters()))
    assert step == 27 and resumed.state_dict()["state"][0]["step"] == state_dict["optimiser"]["state"][0]["step"]
    recon_out = tmp_path / "recon"
    recon_out.mkdir()
    (recon_out / "config.json").write_text((Path(__file__).resolve().parents[1] / "checkpoints" / "reconstructor-run"
                                            / "config.json").read_text())
    (recon_out / STATE_FILE).write_bytes((out / STATE_FILE).read_bytes())
    assert "--steps 20: the checkpoint in" in _refusal(monkeypatch, capsys, train_reconstructor_run, "--out",
                                                       str(recon_out), "--resume", "--steps", "20")
    monkeypatch.setattr(torch, "load", real_load)
    (out / "train_summary.json").write_text('{"steps": 4, "final": {"step": 4}, "config": {"lr": 0.1}}')
    save_checkpoint(out, model, optimiser, 31, [{"step": 31}])  # as an interrupt saves it
    import json

    summary = json.loads((out / "train_summary.json").read_text())
    assert summary == {"steps": 31, "final": {"step": 31}, "config": {"lr": 0.1}, "in_progress": True}
    start_or_resume(out, False, lambda: _TinyModel(2, 2), None, lambda m: torch.optim.Adam(m.parameters()))
    assert not (out / "train_summary.json").exists()  # a fresh run over it (--overwrite): not the old run's

    net_folder = tmp_path / "net"
    ReconNet(ReconConfig()).save_pretrained(net_folder)
    assert (net_folder / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in net_folder.iterdir()) == ["config.json", "model.safetensors"]
    data = (net_folder / "model.safetensors").read_bytes()
    (net_folder / "model.safetensors").write_bytes(data[:1000])
    with pytest.raises(ValueError, match="model.safetensors does not load into ReconNet"):
        ReconNet.from_pretrained(net_folder)

    npz = tmp_path / "world.npz"
    import numpy as np

    load_or_make_npz(npz, lambda: {"a": np.arange(1000)})
    npz.write_bytes(npz.read_bytes()[:200])
    assert load_or_make_npz(npz, lambda: {"a": np.arange(3)})["a"].tolist() == [0, 1, 2]

    said = _refusal(monkeypatch, capsys, gpu_pipeline, "--out", str(tmp_path / "pair"), "--stages",
                    "enhancer_data,enhancer")
    assert "the enhancer stages render with the reconstructor in" in said and "add the reconstructor stage" in said

    seen = {}

    def rate_only(config, *args, **kwargs):  # the rate main() hands the training, then out as a Ctrl-C leaves
        seen["lr"] = config.lr
        raise KeyboardInterrupt

    monkeypatch.setattr(train_reconstructor_run, "train", rate_only)
    resumable = tmp_path / "resumable"  # a run started at 3e-4 resumes at 3e-4 (its saved optimiser's rate)
    fresh = torch.optim.Adam(_TinyModel(2, 2).parameters(), lr=3e-4)
    save_checkpoint(resumable, _TinyModel(2, 2), fresh, 5, [{"step": 5}])
    (resumable / "config.json").write_text((Path(__file__).resolve().parents[1] / "checkpoints" / "reconstructor-run"
                                            / "config.json").read_text())
    for argv, lr in ((["--init", "checkpoints/reconstructor-run"], train_reconstructor_run.FINE_TUNE_LR),
                     ([], train_reconstructor_run.FROM_SCRATCH_LR), (["--lr", "1e-3"], 1e-3),
                     (["--resume", "--out", str(resumable)], 3e-4)):
        seen.clear()
        monkeypatch.setattr(sys, "argv", ["x", "--out", str(tmp_path / f"lr{len(argv)}"), *argv])
        with pytest.raises(SystemExit):
            train_reconstructor_run.main()
        assert seen["lr"] == lr, argv


def test_a_resumed_training_takes_the_settings_it_was_started_with(tmp_path, monkeypatch, capsys):
    """A new user's findings (2026-12-07): --resume without the options a run was started with trained on at their
    defaults (24 worlds for a 2-world run, lr 1e-3 for 5e-4, temporal weight 5 for 20, a fused reconstructor
    unfused) and its summary said the whole run had used them; an interrupted fresh run left no summary to take
    them from. The settings saved at the start are taken back, and an option given with another value is refused."""
    import argparse
    import json

    root = Path(__file__).resolve().parents[1] / "checkpoints"
    out = tmp_path / "enhancer"
    out.mkdir()
    (out / "config.json").write_text((root / "enhancer-run" / "config.json").read_text())
    (out / "train_state.pt").write_bytes(b"")
    config = train_enhancer_run.RunEnhancerTrainConfig(worlds=2, lr=5e-4, temporal_weight=20.0,
                                                       shift_weights=((0.0, 1.0), (3.0, 2.0)))
    state.begin_summary(out, config, reconstructor="checkpoints/reconstructor-run", init=None)
    assert json.loads((out / "train_summary.json").read_text())["in_progress"] is True
    err = _refusal(monkeypatch, capsys, train_enhancer_run, "--out", str(out), "--resume", "--steps", "9",
                   "--lr", "1e-3", "--worlds", "2")
    assert "--lr 0.001 (the run was started with 0.0005)" in err and "--worlds 2 (" not in err

    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--worlds", type=int, default=24)
    parser.add_argument("--lr", type=float, default=1e-3)
    argv = ["--out", str(out), "--resume"]
    args = parser.parse_args(argv)
    fresh = train_enhancer_run.RunEnhancerTrainConfig(worlds=24, lr=1e-3)
    resumed = state.resumed_settings(parser, args, fresh, {"worlds": "worlds", "lr": "lr", "x": "temporal_weight",
                                                           "y": "shift_weights"}, argv)
    assert (resumed.worlds, resumed.lr, resumed.temporal_weight) == (2, 5e-4, 20.0)
    assert resumed.shift_weights == ((0.0, 1.0), (3.0, 2.0))  # (a tuple again, as the config holds it)
    assert state.resumed_settings(parser, parser.parse_args(["--out", str(out)]), fresh, {"lr": "lr"}) is fresh
    # the summary at the end keeps what a resumed run was not told again (the reconstructor's "init": null)
    state.begin_summary(out, config, init="checkpoints/reconstructor-run")
    summary = state.write_summary(out, 9, 0.0, [{"step": 9}], config, init=None)
    assert summary["init"] == "checkpoints/reconstructor-run" and "in_progress" not in summary


def test_a_non_finite_loss_stops_the_training_before_its_update():
    """A NaN loss was applied and the NaN net saved as the checkpoint (exit 0)."""
    model = torch.nn.Linear(2, 2)
    before = [p.detach().clone() for p in model.parameters()]
    optimiser = torch.optim.Adam(model.parameters())
    loss = model(torch.ones(1, 2)).sum() * float("nan")
    with pytest.raises(state.NonFiniteLoss, match="the training loss is nan: stopped before this step's update"):
        state.apply_gradients(model, optimiser, loss)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_damaged_checkpoints_are_named_before_any_data_is_made(tmp_path, monkeypatch, capsys):
    """A checkpoint folder whose weights are missing or truncated passed the check (its config.json named the
    class), and the run failed after making all its data; gpu_pipeline's --resume with a step cap already reached
    took no step; its report lost the stages of earlier calls."""
    import json

    from neural_sensor.checkpoints import checkpoint_problem

    root = Path(__file__).resolve().parents[1] / "checkpoints"
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "config.json").write_text((root / "enhancer-run" / "config.json").read_text())
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text((root / "enhancer-run" / "config.json").read_text())
    (truncated / "model.safetensors").write_bytes((root / "enhancer-run" / "model.safetensors").read_bytes()[:-100])
    assert checkpoint_problem(missing, "Enhancer").startswith("its weights are missing (no model.safetensors")
    assert checkpoint_problem(truncated, "Enhancer").startswith("its weights do not read (model.safetensors:")
    err = _refusal(monkeypatch, capsys, train_enhancer_run, "--out", str(tmp_path / "new"), "--init", str(truncated))
    assert "--init" in err and "its weights do not read" in err

    out = tmp_path / "pair"
    (out / "reconstructor").mkdir(parents=True)
    (out / "reconstructor" / "config.json").write_text((root / "reconstructor-run" / "config.json").read_text())
    torch.save({"step": 50, "optimiser": {}}, out / "reconstructor" / "train_state.pt")
    assert "--recon-steps 40: " in _refusal(monkeypatch, capsys, gpu_pipeline, "--out", str(out), "--resume",
                                            "--stages", "reconstructor", "--recon-steps", "40")
    (out / "pipeline.json").write_text(json.dumps({"stages": {"reconstructor": {"wall_s": 1.0, "steps": 50}}}))
    report = gpu_pipeline.run_pipeline(out, device="cpu", minutes=1.0, recon_worlds=1, enhancer_worlds=1,
                                       reconstructor_init=root / "reconstructor-run",
                                       enhancer_init=root / "enhancer-run", resume=True, stages=())
    assert report["stages"] == {"reconstructor": {"wall_s": 1.0, "steps": 50}}


def test_shipped_checkpoints_are_found_wherever_the_package_went(tmp_path, monkeypatch):
    """A new user's findings (2026-12-07): after `pip install --target DIR` the shipped checkpoints were not found
    (pip records them as ../../share/... but puts them in DIR/share/...), and the README's training commands
    (`--init checkpoints/reconstructor-run`) worked only from the repository's root."""
    from importlib import metadata

    from neural_sensor import checkpoints

    target = tmp_path / "target"
    shipped = target / "share" / "neural-sensor" / "checkpoints" / "enhancer-run"
    shipped.mkdir(parents=True)

    class Installed:
        def __init__(self):
            self.files = [metadata.PackagePath("../../share/neural-sensor/checkpoints/enhancer-run/config.json")]
            self.files[0].dist = self

        def locate_file(self, path):
            return target / path

    monkeypatch.setattr(metadata, "distribution", lambda name: Installed())
    checkpoints._installed_roots.cache_clear()
    try:
        assert shipped.parent.resolve() in checkpoints._installed_roots()
    finally:
        checkpoints._installed_roots.cache_clear()
    monkeypatch.chdir(tmp_path)
    assert checkpoints.resolve_checkpoint("checkpoints/reconstructor-run") == \
        checkpoints.checkpoint_path("reconstructor-run")
    assert checkpoints.resolve_checkpoint("mine/reconstructor-run") == Path("mine/reconstructor-run")


def test_a_resumed_gpu_pipeline_takes_its_trainings_settings_back(tmp_path, monkeypatch, capsys):
    """A reviewer's finding: gpu_pipeline --resume built its trainings from the options of that call (the two
    training scripts take their saved settings back since 2026-12-07); it does the same now."""
    import json

    root = Path(__file__).resolve().parents[1] / "checkpoints"
    stage = tmp_path / "pair" / "reconstructor"
    stage.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (stage / name).write_bytes((root / "reconstructor-run" / name).read_bytes())
    torch.save({"step": 5, "optimiser": {}}, stage / "train_state.pt")
    (stage / "train_summary.json").write_text(json.dumps({"steps": 5, "in_progress": True, "config": {
        "lr": 1e-4, "context_stations": 4, "worlds": 2}}))
    out = str(tmp_path / "pair")
    assert "--recon-lr 0.002 (its reconstructor was started with 0.0001)" in _refusal(
        monkeypatch, capsys, gpu_pipeline, "--out", out, "--resume", "--stages", "reconstructor", "--recon-lr", "2e-3")
    taken = {}
    monkeypatch.setattr(gpu_pipeline, "_run", lambda args, device, stages: taken.update(vars(args)) or {})
    monkeypatch.setattr(sys, "argv", ["gpu_pipeline", "--out", out, "--resume", "--stages", "reconstructor",
                                      "--recon-worlds", "2"])
    gpu_pipeline.main()
    assert (taken["recon_lr"], taken["context_stations"], taken["recon_worlds"]) == (1e-4, 4, 2)


def test_a_finished_training_writes_its_card_and_keeps_a_hand_written_one(tmp_path):
    """docs/DESIGN.md: a checkpoint folder holds a CARD.md; the training scripts wrote none (a new user's finding)."""
    from dataclasses import dataclass

    root = Path(__file__).resolve().parents[1] / "checkpoints"

    @dataclass
    class Config:
        steps: int = 3
        lr: float = 1e-4

    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((root / "enhancer-run" / name).read_bytes())
    state.write_summary(tmp_path, 3, 0.0, [{"step": 3, "heldout": {"psnr_db": 30.1}}], Config(),
                        reconstructor="checkpoints/reconstructor-run", init=None)
    card = (tmp_path / "CARD.md").read_text()
    from neural_sensor.enhance.model import checkpoint_hash

    assert state.CARD_MARK in card and f"An Enhancer checkpoint (hash `{checkpoint_hash(tmp_path)}`" in card
    assert '"psnr_db": 30.1' in card and "- reconstructor: `checkpoints/reconstructor-run`" in card
    (tmp_path / "CARD.md").write_text("# mine\n")
    state.write_summary(tmp_path, 3, 0.0, [], Config())
    assert (tmp_path / "CARD.md").read_text() == "# mine\n"
