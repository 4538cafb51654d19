"""Where the shipped checkpoints are, whatever the way the package was installed.

    checkpoint_path("enhancer-small")  ->  .../checkpoints/enhancer-small

An editable install (`pip install -e .`) or a checkout reads them from the repository's `checkpoints/`
folder; a regular install (`pip install .`, a wheel) carries them as data files under
`<prefix>/share/neural-sensor/checkpoints/` (setup.cfg `[options.data_files]`: config.json,
model.safetensors and CARD.md of each; the training states stay in the repository).
"""

from __future__ import annotations

import json
import site
import sys
import sysconfig
from pathlib import Path

SHIPPED = ("reconstructor-small", "enhancer-small", "reconstructor-run", "enhancer-run")
# what a run uses unless told otherwise: the pair trained in the run's regime (their CARDs; README "Results", docs/results.md)
DEFAULT_RECONSTRUCTOR = "reconstructor-run"
DEFAULT_ENHANCER = "enhancer-run"
_REPO_CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


def _candidates(name: str) -> list[Path]:
    roots = [_REPO_CHECKPOINTS]
    for prefix in (sysconfig.get_path("data"), sys.prefix, getattr(site, "USER_BASE", None)):
        if prefix:
            roots.append(Path(prefix) / "share" / "neural-sensor" / "checkpoints")
    return [root / name for root in roots]


def checkpoint_path(name: str) -> Path:
    """The folder of the shipped checkpoint `name` (one of SHIPPED); ValueError naming where it looked."""
    if name not in SHIPPED:
        raise ValueError(f"unknown shipped checkpoint {name!r}; shipped: {', '.join(SHIPPED)}")
    candidates = _candidates(name)
    for folder in candidates:
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            return folder
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise ValueError(f"shipped checkpoint {name!r} not found (looked in {looked}); reinstall neural-sensor "
                     "or pass a checkpoint folder explicitly")


def default_checkpoint(name: str) -> Path:
    """checkpoint_path(name) when it exists, else the repository path (so the error names a real place later)."""
    try:
        return checkpoint_path(name)
    except ValueError:
        return _REPO_CHECKPOINTS / name


_CLASS_NAMES = {"UNet2DModel": "Enhancer"}  # a diffusers UNet's config loads as an enhancer (Enhancer.from_pretrained)


def checkpoint_class(folder: Path | str) -> str | None:
    """The model class a checkpoint folder's config.json names ("ReconNet", "Enhancer"), None without one."""
    try:
        data = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = data.get("class", data.get("_class_name")) if isinstance(data, dict) else None
    return _CLASS_NAMES.get(name, name) if isinstance(name, str) else None


def checkpoint_problem(folder: Path | str, wanted: str | None) -> str | None:
    """Why `folder` is not a checkpoint of class `wanted` (any class when None), or None when it is one."""
    if not Path(folder).is_dir():
        return "no such folder"
    found = checkpoint_class(folder)
    if found is None:
        return "not a checkpoint folder (no readable config.json naming its model class)"
    if wanted is not None and found != wanted:
        return f"a checkpoint of class {found}, not {wanted}"
    return _weights_problem(Path(folder))


WEIGHTS_FILE = "model.safetensors"  # our checkpoints' weights (save_pretrained)


def _weights_problem(folder: Path) -> str | None:
    """Why our checkpoint's weights file cannot be read (missing, truncated: its header does not cover the file),
    or None; a diffusers folder (config.json with "_class_name") keeps its weights under diffusers' names and is
    read as they are. Only the header is read (milliseconds): a training run named such a folder after it had made
    all its data (minutes to hours), a server after it had started."""
    try:
        ours = "class" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        ours = False
    if not ours:
        return None
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        return f"its weights are missing (no {WEIGHTS_FILE}: a half-written or damaged checkpoint)"
    try:
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as handle:
            handle.keys()
    except Exception as err:  # noqa: BLE001 -- safetensors raises its own SafetensorError
        return f"its weights do not read ({WEIGHTS_FILE}: {err})"
    return None
