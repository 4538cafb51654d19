"""Shared by the training scripts: start or resume, one optimiser step, record / save, the summary, cached data."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

STATE_FILE = "train_state.pt"  # optimiser state + step (torch.load(weights_only=True): no pickle of code)
HISTORY_FILE = "history.json"  # one record per step


def start_or_resume(out: Path, resume: bool, new_model: Callable, load_model: Callable, make_optimiser: Callable):
    """(model, optimiser, step, history): from `out` when resuming and a state is there, else fresh."""
    out = Path(out)
    if resume and (out / STATE_FILE).exists():
        model = load_model(out)
        optimiser = make_optimiser(model)
        state = torch.load(out / STATE_FILE, weights_only=True)
        optimiser.load_state_dict(state["optimiser"])
        history = json.loads((out / HISTORY_FILE).read_text()) if (out / HISTORY_FILE).exists() else []
        return model, optimiser, int(state["step"]), history
    model = new_model()
    return model, make_optimiser(model), 0, []


def save_checkpoint(out: Path, model, optimiser, step: int, history: list) -> None:
    """The model (save_pretrained), the optimiser state and step, and the history."""
    out = Path(out)
    model.save_pretrained(out)
    torch.save({"optimiser": optimiser.state_dict(), "step": step}, out / STATE_FILE)
    (out / HISTORY_FILE).write_text(json.dumps(history))


def set_cosine_lr(optimiser, base_lr: float, step: int, steps: int, floor: float = 0.05) -> float:
    """Set every group's learning rate to base_lr on a cosine from 1 down to `floor` over `steps`; returns it."""
    lr = base_lr * (floor + (1.0 - floor) * 0.5 * (1 + math.cos(math.pi * step / steps)))
    for group in optimiser.param_groups:
        group["lr"] = lr
    return lr


def apply_gradients(model, optimiser, loss: torch.Tensor, clip_norm: float = 1.0) -> None:
    """zero_grad, backward, clip the gradient norm, step."""
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


def write_summary(out: Path, step: int, start_s: float, history: list, config, **extra) -> dict:
    """Write and return out/train_summary.json: steps, this run's wall time, the last record, the config, extras."""
    summary = {"steps": step, "wall_s_this_run": round(time.perf_counter() - start_s, 1),
               "final": history[-1] if history else {}, "config": asdict(config), **extra}
    (Path(out) / "train_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def load_or_make_npz(path: Path, make: Callable[[], dict]) -> dict:
    """The arrays stored at `path` (an .npz) when written before, else make()'s, written atomically first; a file
    damaged by an interrupted run is made again."""
    path = Path(path)
    if path.exists():
        try:
            with np.load(path) as data:
                return dict(data)
        except (OSError, ValueError, EOFError):
            path.unlink()
    arrays = make()
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return arrays
