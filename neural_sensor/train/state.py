"""Checkpointing shared by the training scripts: start or resume, save, one optimiser step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

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


def apply_gradients(model, optimiser, loss: torch.Tensor, clip_norm: float = 1.0) -> None:
    """zero_grad, backward, clip the gradient norm, step."""
    optimiser.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimiser.step()
