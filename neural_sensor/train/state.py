"""Shared by the training scripts: start or resume, one optimiser step, record / save, the summary, cached data."""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from neural_sensor.checkpoints import checkpoint_problem, resolve_checkpoint
from neural_sensor.host import write_problem

STATE_FILE = "train_state.pt"  # optimiser state + step (torch.load(weights_only=True): no pickle of code)
HISTORY_FILE = "history.json"  # one record per step
SUMMARY_FILE = "train_summary.json"  # the run's config and where it stands (in_progress until it ends)
CHECKPOINT_FILES = ("config.json", "model.safetensors", STATE_FILE)  # any of these: the folder holds a checkpoint


def default_data_root(name: str) -> Path:
    """Where a training script keeps the data it makes (`--data`'s default): under the scene cache's root
    (`reconstruct.cache.default_cache_root`'s parent), $NEURAL_SENSOR_CACHE/<name> when that is set, else
    ~/.cache/neural_sensor/<name>. Data made before 2026-12-07 under ~/.cache/neural-sensor/<name> is still used
    when it is there and the new folder is not (hours of rendering are not made again for a folder's name)."""
    root = os.environ.get("NEURAL_SENSOR_CACHE")
    if root:
        return Path(root) / name
    new, old = (Path.home() / ".cache" / folder / name for folder in ("neural_sensor", "neural-sensor"))
    return old if old.is_dir() and not new.exists() else new


def add_out_options(parser, default_out: Path) -> None:
    """--out (default `default_out`), --resume and --overwrite, as every training script takes them; check them
    with `check_out_options` right after parsing, before any data is made."""
    parser.add_argument("--out", type=Path, default=default_out,
                        help=f"checkpoint folder (default {default_out}; the shipped checkpoints/ are replaced only "
                             "when named here with --overwrite)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a checkpoint already in --out (without it such a folder is refused)")


def check_out_options(parser, args) -> None:
    """parser.error (exit 2, before any data is made or any step run) when --out cannot take this run: a file;
    --resume with no training state there (it would silently start afresh); a checkpoint there without --resume or
    --overwrite (a new run would replace it: the shipped checkpoints/ among them); both flags."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out}: a file, not a folder for the checkpoint")
    if args.resume and args.overwrite:
        parser.error("--resume continues the checkpoint in --out and --overwrite replaces it: give one")
    if args.resume and not (out / STATE_FILE).is_file():
        parser.error(f"--resume: nothing to resume in {out} (no {STATE_FILE}); drop --resume to start a new run")
    held = [name for name in CHECKPOINT_FILES if (out / name).exists()]
    if held and not (args.resume or args.overwrite):
        parser.error(f"--out {out} already holds a checkpoint ({', '.join(held)}): --resume continues it, "
                     "--overwrite replaces it, or name another --out")


def check_resumed_shape(parser, args, asked: dict) -> None:
    """parser.error (exit 2, before any data is made) when --resume would continue a checkpoint whose shape is not
    the one the options ask for: a resumed run loads the model saved in --out as it is, so --depth-bins 64 on a
    32-plane checkpoint (or --block-channels, --cost-volume, ...) was silently ignored. `asked`: option name ->
    (the key in the checkpoint's config.json, the value asked for); options not given are left out."""
    if not getattr(args, "resume", False) or not asked:
        return
    path = Path(args.out) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        parser.error(f"--resume: {path} cannot be read ({err})")
    clashes = [f"{option} {_shown(value)} (the checkpoint has {_shown(saved.get(key))})"
               for option, (key, value) in asked.items() if _shown(saved.get(key)) != _shown(value)]
    if clashes:
        parser.error(f"--resume continues {args.out} in the shape it was saved with: " + "; ".join(clashes)
                     + ". Drop the option, or start a new run in another --out")


def given_options(parser, argv=None) -> set[str]:
    """The dests of the options given on the command line `argv` (sys.argv[1:] when None), not left at defaults."""
    defaults = [(action, action.default) for action in parser._actions]
    for action, _ in defaults:
        action.default = argparse.SUPPRESS
    try:
        given = parser.parse_known_args(argv)[0]
    finally:
        for action, default in defaults:
            action.default = default
    return set(vars(given)) & {action.dest for action in parser._actions}  # (not set_defaults' keys)


def saved_summary(out: Path | str) -> dict:
    """The train_summary.json in `out` ({} where there is none or it does not read)."""
    try:
        data = json.loads((Path(out) / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def resumed_settings(parser, args, config, options: dict[str, str], argv=None):
    """On --resume, `config` with the settings the run in --out was started with (train_summary.json's "config"):
    an option of `options` (its dest -> its config field) left out takes the saved value, and one given with
    another value is refused by name (parser.error, exit 2, before any data is made). A resumed run had taken the
    options' defaults instead (--worlds 24 for a 2-world run, another learning rate and loss weights) and its
    summary then said the whole run had used them. A checkpoint saved without a summary keeps the options given."""
    if not getattr(args, "resume", False):
        return config
    current = {dest: (key, getattr(config, key)) for dest, key in options.items()}
    updates, clashes = taken_back(saved_summary(args.out).get("config"), current, given_options(parser, argv),
                                  "the run")
    refuse_clashes(parser, args.out, clashes)
    return replace(config, **{options[dest]: value for dest, value in updates.items()})


def taken_back(saved, current: dict[str, tuple[str, object]], given: set[str], who: str) -> tuple[dict, list[str]]:
    """The settings a resumed run takes back from its saved config `saved` (None or not a dict: none).
    current: option dest -> (its key in the saved config, its value now). Returns ({dest: the saved value, in the
    type of the value now} for the options left out that differ, the clashes "--opt NOW (WHO was started with
    THEN)" of the options given that differ)."""
    updates, clashes = {}, []
    if not isinstance(saved, dict):
        return updates, clashes
    for dest, (key, ours) in current.items():
        if key not in saved or _shown(ours) == _shown(saved[key]):
            continue
        if dest in given:
            clashes.append(f"--{dest.replace('_', '-')} {_shown(ours)} ({who} was started with {_shown(saved[key])})")
        else:
            updates[dest] = _as_before(ours, saved[key])
    return updates, clashes


def refuse_clashes(parser, out, clashes: list[str]) -> None:
    """parser.error naming `taken_back`'s clashes (none: nothing)."""
    if clashes:
        parser.error(f"--resume continues {out} with the settings it was started with: " + "; ".join(clashes)
                     + ". Drop the option, or start a new run in another --out")


def _as_before(ours, theirs):
    """A saved JSON value in the type of the config field's (tuples came back as lists)."""
    if isinstance(ours, tuple) and isinstance(theirs, list):
        return tuple(_as_before((), v) if isinstance(v, list) else v for v in theirs)
    if isinstance(ours, float) and isinstance(theirs, int) and not isinstance(theirs, bool):
        return float(theirs)
    return theirs


def _shown(value) -> str:
    """A config value as the user writes it (lists and tuples as 16,32,64; 1.0 as 1)."""
    if isinstance(value, (list, tuple)):
        return ",".join(_shown(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_AT_LEAST_ONE = ("steps", "worlds", "batch", "ticks", "context_stations", "targets_per_step", "eval_every",
                 "save_every", "recon_worlds", "enhancer_worlds", "recon_steps", "enhancer_steps")
_RATES = ("lr", "recon_lr", "enhancer_lr")
_CHECKPOINT_OPTIONS = {"init": None, "reconstructor": "ReconNet", "enhancer": "Enhancer",
                       "reconstructor_init": "ReconNet", "enhancer_init": "Enhancer"}  # option: the class it takes
def check_training_options(parser, args, init_class: str | None = None) -> None:
    """parser.error (exit 2, before any data is made) for the options a training script shares, where given: a
    count below 1 (--steps, --worlds, ...), --pairs below 0, a learning rate that is not a positive number, a
    checkpoint option (--init, --reconstructor, ...) naming no folder, or a folder that holds no checkpoint of the
    class it takes (--init's: `init_class`), a --device torch cannot use here, --out where no folder can be made."""
    for name in _AT_LEAST_ONE:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} {value}: must be at least 1")
    if getattr(args, "pairs", None) is not None and args.pairs < 0:
        parser.error(f"--pairs {args.pairs}: must be 0 (no temporal pairs) or more")
    minutes = getattr(args, "minutes", None)  # NaN ran without a limit, a negative value took no step
    if minutes is not None and not (math.isfinite(minutes) and minutes >= 0):
        parser.error(f"--minutes {minutes}: must be a finite number of minutes, 0 or more")
    for name, value in vars(args).items():  # loss weights (and fractions): NaN trained a NaN net and saved it
        fraction = name.endswith("_fraction")
        if (name.endswith("_weight") or fraction) and isinstance(value, float) \
                and not (math.isfinite(value) and 0.0 <= value <= (1.0 if fraction else math.inf)):
            parser.error(f"--{name.replace('_', '-')} {value}: must be " + ("a fraction in [0, 1]" if fraction else
                                                                            "a finite number, 0 or more"))
    for name in _RATES:
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value > 0):
            parser.error(f"--{name.replace('_', '-')} {value}: must be a positive learning rate")
    steps = getattr(args, "steps", None)
    out = getattr(args, "out", None)
    state = saved_state(out) if getattr(args, "resume", False) and steps is not None and out is not None else None
    if state is not None:
        saved = state.get("step")
        if isinstance(saved, int) and steps <= saved:  # it took no step and rewrote the summary with a smaller count
            parser.error(f"--steps {steps}: the checkpoint in {out} is at step {saved} already; --resume trains on "
                         "up to --steps, so give more")
    for name, wanted in _CHECKPOINT_OPTIONS.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        value = resolve_checkpoint(value)  # a shipped one named as the README does, from any folder
        setattr(args, name, value)
        problem = checkpoint_problem(value, wanted or init_class)
        if problem:
            parser.error(f"--{name.replace('_', '-')} {value}: "
                         + ("no such checkpoint folder" if problem == "no such folder" else problem))
    out = getattr(args, "out", None)
    if out is not None and (Path(out).is_dir() or not Path(out).exists()):  # a file: check_out_options says so
        problem = write_problem(Path(out))
        if problem:
            parser.error(f"--out {out}: no checkpoint can be written there ({problem})")
    device = getattr(args, "device", None)
    kind = None
    if device is not None and device != "auto":
        try:
            kind = torch.device(device).type
        except RuntimeError:
            parser.error(f"--device {device!r}: not a torch device (use auto, cpu or cuda)")
        if kind == "cuda" and not torch.cuda.is_available():
            parser.error(f"--device {device}: torch sees no CUDA device here (use auto or cpu)")
    if getattr(args, "renderer", None) == "gsplat":  # gsplat's rasteriser runs on CUDA only
        on = kind or ("cuda" if torch.cuda.is_available() else "cpu")
        if on != "cuda":
            parser.error(f"--renderer gsplat: gsplat's rasteriser needs CUDA and the training runs on {on} (use "
                         "--renderer auto or torch)")
    data = getattr(args, "data", None)
    if data is not None and Path(data).exists() and not Path(data).is_dir():
        parser.error(f"--data {data}: a file, not a folder for the training data")
    if data is not None and not Path(data).exists():
        problem = write_problem(Path(data))
        if problem:
            parser.error(f"--data {data}: no data can be written there ({problem})")


def saved_state(out: Path | str) -> dict | None:
    """The training state saved in `out` ({"optimiser", "step"}, read onto the CPU), None where there is none or it
    does not read (start_or_resume names that). Read once per file version: the checks before a resumed run and
    its defaults share it."""
    path = Path(out) / STATE_FILE
    try:
        stat = path.stat()
    except OSError:
        return None
    return _read_state(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _read_state(path: str, _mtime_ns: int, _size: int) -> dict | None:
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # noqa: BLE001 -- an unreadable state is start_or_resume's to report
        return None
    return state if isinstance(state, dict) else None


def start_or_resume(out: Path, resume: bool, new_model: Callable, load_model: Callable, make_optimiser: Callable):
    """(model, optimiser, step, history): from `out` when resuming and a state is there, else fresh."""
    out = Path(out)
    if resume and (out / STATE_FILE).exists():
        model = load_model(out)
        optimiser = make_optimiser(model)
        # onto the CPU first (a state saved on a GPU loads on a machine without one); load_state_dict moves each
        # tensor to its parameter's device
        state = torch.load(out / STATE_FILE, weights_only=True, map_location="cpu")
        optimiser.load_state_dict(state["optimiser"])
        history = json.loads((out / HISTORY_FILE).read_text()) if (out / HISTORY_FILE).exists() else []
        return model, optimiser, int(state["step"]), history
    model = new_model()
    # a fresh run (--overwrite, or a folder without a state): an earlier run's summary describes other weights
    (out / "train_summary.json").unlink(missing_ok=True)
    return model, make_optimiser(model), 0, []


def _write_atomic(path: Path, text: str) -> None:
    """`text` into `path` replaced whole (a reader never finds it half-written)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def save_checkpoint(out: Path, model, optimiser, step: int, history: list) -> None:
    """The model (save_pretrained), the optimiser state and step, and the history."""
    out = Path(out)
    model.save_pretrained(out)
    tmp = out / f".{STATE_FILE}.{os.getpid()}"  # each file replaced whole: a reader never finds one half-written
    torch.save({"optimiser": optimiser.state_dict(), "step": step}, tmp)
    tmp.replace(out / STATE_FILE)
    _write_atomic(out / HISTORY_FILE, json.dumps(history))
    summary_path = out / SUMMARY_FILE
    if summary_path.exists():  # a previous run's summary follows the checkpoint (an interrupted run's said step 4 at 27)
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError):
            summary = None
        if isinstance(summary, dict) and summary.get("steps") != step:
            summary.update(steps=step, final=history[-1] if history else {}, in_progress=True)
            _write_atomic(summary_path, json.dumps(summary, indent=1, default=str))


def _signal_exception(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)


class StopRequest:
    """`stop_requested`'s flag: the signal number that asked the training to stop, None until one did."""

    def __init__(self) -> None:
        self.signum: int | None = None


@contextmanager
def stop_requested(out: Path, progress: Callable[[], tuple]):
    """Around a training loop that checks `request.signum is None` once a step: a Ctrl-C (SIGINT) or SIGTERM only
    sets the flag, so the step in flight finishes (never a half-applied optimiser step or a half-written file).
    When the loop ends on it, a checkpoint of progress()'s (model, optimiser, step, history) is saved in `out`
    (unless no step was taken), one line on stderr says so, and the signal's exception is raised:
    KeyboardInterrupt for SIGINT, SystemExit(143) for SIGTERM (as a run's, `scenarios.signals`). A second signal
    before the loop ends raises at once. A run under `save_every` steps had kept nothing.

    As `scenarios.signals.terminate_as_exception`: only in the main thread, and for each signal only while it has
    its default action (a host application's own handler, or SIGINT ignored, is left alone)."""
    request = StopRequest()

    def _note(signum, _frame):
        if request.signum is not None:
            raise _signal_exception(signum)
        request.signum = signum

    installed = {}
    if threading.current_thread() is threading.main_thread():
        defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
        installed = {sig: default for sig, default in defaults.items() if signal.getsignal(sig) is default}
        for sig in installed:
            signal.signal(sig, _note)
    try:
        yield request
    finally:
        for sig, default in installed.items():
            signal.signal(sig, default)
    if request.signum is not None:
        model, optimiser, step, history = progress()
        if step > 0:
            save_checkpoint(out, model, optimiser, step, history)
        what = "interrupted" if request.signum == signal.SIGINT else "terminated"
        kept = (f"the checkpoint in {out} holds step {step}: --resume continues it" if step > 0
                else "no step was taken, so nothing was saved")
        print(f"\ntraining {what} at step {step}; {kept}", file=sys.stderr)
        raise _signal_exception(request.signum)


def set_cosine_lr(optimiser, base_lr: float, step: int, steps: int, floor: float = 0.05) -> float:
    """Set every group's learning rate to base_lr on a cosine from 1 down to `floor` over `steps`; returns it."""
    lr = base_lr * (floor + (1.0 - floor) * 0.5 * (1 + math.cos(math.pi * step / steps)))
    for group in optimiser.param_groups:
        group["lr"] = lr
    return lr


class NonFiniteLoss(FloatingPointError):
    """A training step's loss was NaN or infinite (`apply_gradients`)."""


def apply_gradients(model, optimiser, loss: torch.Tensor, clip_norm: float = 1.0) -> None:
    """zero_grad, backward, clip the gradient norm, step. A loss that is not finite raises NonFiniteLoss before the
    update (the weights stay as they were: a NaN loss had been applied, and the NaN net saved as the checkpoint)."""
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteLoss(f"the training loss is {loss.item()}: stopped before this step's update (the last "
                            "checkpoint saved is untouched); lower --lr or check the data and the loss weights")
    optimiser.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimiser.step()


def record_step(out: Path, model, optimiser, step: int, history: list, record: dict, config,
                evaluate: Callable[[], dict], key: str = "heldout", last: bool = False) -> None:
    """After an optimiser step: record[key] = evaluate() every config.eval_every steps (and at the last, printed),
    append the record to history, save a checkpoint every config.save_every steps (and at the last: step ==
    config.steps, or `last` when a time budget ends the run early)."""
    last = last or step == config.steps
    if step % config.eval_every == 0 or last:
        record[key] = evaluate()
        tqdm.write(json.dumps(record))
    history.append(record)
    if step % config.save_every == 0 or last:
        save_checkpoint(out, model, optimiser, step, history)


def out_of_time(config, start_s: float) -> bool:
    """True once config.time_budget_s (0: none) seconds have passed since start_s."""
    return bool(config.time_budget_s) and time.perf_counter() - start_s > config.time_budget_s


def begin_summary(out: Path, config, **extra) -> None:
    """A fresh run's train_summary.json before its first step (step 0, in_progress, its config and extras): an
    interrupted run's folder said nothing of how it was trained, and --resume could not take its settings back."""
    summary = {"steps": 0, "in_progress": True, "final": {}, "config": asdict(config), **extra}
    Path(out).mkdir(parents=True, exist_ok=True)
    _write_atomic(Path(out) / SUMMARY_FILE, json.dumps(summary, indent=1, default=str))


def write_summary(out: Path, step: int, start_s: float, history: list, config, **extra) -> dict:
    """Write and return out/train_summary.json: steps, this run's wall time, the last record, the config, extras.
    An extra given as None (a resumed run's --init, not given again) keeps the value the summary had."""
    before = saved_summary(out)
    extra = {k: before.get(k) if v is None else v for k, v in extra.items()}
    summary = {"steps": step, "wall_s_this_run": round(time.perf_counter() - start_s, 1),
               "final": history[-1] if history else {}, "config": asdict(config), **extra}
    (Path(out) / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=str))
    write_card(Path(out), summary)
    return summary


CARD_MARK = ("<!-- written by neural_sensor.train from train_summary.json: a CARD.md without this line is never "
             "replaced -->")


def write_card(out: Path, summary: dict) -> None:
    """out/CARD.md from a finished run's summary (what the checkpoint is, its hash, how it was trained, from what,
    its last held-out record), so that a trained folder describes itself as the shipped ones do; a CARD.md written
    by hand (without CARD_MARK) is left alone."""
    path = Path(out) / "CARD.md"
    if path.exists() and CARD_MARK not in path.read_text(errors="replace"):
        return
    from neural_sensor.checkpoints import checkpoint_class

    kind = checkpoint_class(out) or "unknown"
    try:
        if kind == "ReconNet":
            from neural_sensor.reconstruct.model import checkpoint_hash
        else:
            from neural_sensor.enhance.model import checkpoint_hash
        digest = checkpoint_hash(out)
    except (OSError, ValueError):
        digest = "unreadable"
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    command = ("by `" + " ".join(["python", "-m", spec.name, *map(shlex.quote, sys.argv[1:])]) + "`"
               if spec is not None and spec.name.startswith("neural_sensor.train.") else "from Python")
    sources = [f"- {key}: `{summary[key]}`" for key in ("init", "reconstructor", "reconstructor_hash", "data_version",
                                                         "frames") if summary.get(key) is not None]
    text = "\n".join([
        f"# {Path(out).resolve().name}", "", CARD_MARK, "",
        f"{'An' if kind[:1] in 'AEIOU' else 'A'} {kind} checkpoint (hash `{digest}`: config.json and "
        f"model.safetensors), trained {command} for "
        f"{summary['steps']} steps ({summary['wall_s_this_run']:g} s in its last run) on worlds this project "
        "generates (their street photographs, where torcs-data is installed: Free Art License 1.3 / GPL-2+).", "",
        "Started from, and data:", *(sources or ["- a fresh network"]), "",
        "The last record (held-out figures where the step evaluated):", "", "```json",
        json.dumps(summary.get("final", {}), indent=1, default=str), "```", "",
        "The settings (train_summary.json holds them too):", "", "```json",
        json.dumps(summary.get("config", {}), indent=1, default=str), "```", "",
        "Judge it in the run's regime before using it (README, \"Training\").", ""])
    _write_atomic(path, text)


def finished_line(out: Path, summary: dict) -> str:
    """What a training script prints when it ends: where the checkpoint is and what it holds (the last record itself
    was printed by `record_step`, and is in train_summary.json)."""
    return (f"{out}: checkpoint at step {summary['steps']} ({summary['wall_s_this_run']:g} s this run); its last "
            f"record and config in {Path(out) / 'train_summary.json'}")


def load_or_make_npz(path: Path, make: Callable[[], dict]) -> dict:
    """The arrays stored at `path` (an .npz) when written before, else make()'s, written atomically first; a file
    damaged by an interrupted run is made again."""
    path = Path(path)
    if path.exists():
        try:
            with np.load(path) as data:
                return dict(data)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # (a truncated .npz is a BadZipFile)
            path.unlink()
    arrays = make()
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return arrays
