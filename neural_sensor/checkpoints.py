"""Where the shipped checkpoints are, whatever the way the package was installed.

    checkpoint_path("enhancer-small")  ->  .../checkpoints/enhancer-small

An editable install (`pip install -e .`) or a checkout reads them from the repository's `checkpoints/`
folder; a regular install (`pip install .`, a wheel) carries them as data files under
`<prefix>/share/neural-sensor/checkpoints/` (setup.cfg `[options.data_files]`: config.json,
model.safetensors and CARD.md of each; the training states stay in the repository).
"""

from __future__ import annotations

import functools
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
    roots = [_REPO_CHECKPOINTS, *_installed_roots()]
    for prefix in (sysconfig.get_path("data"), sys.prefix, getattr(site, "USER_BASE", None)):
        if prefix:
            roots.append(Path(prefix) / "share" / "neural-sensor" / "checkpoints")
    return [root / name for root in roots]


@functools.lru_cache(maxsize=1)
def _installed_roots() -> tuple[Path, ...]:
    """Where the installed distribution's own record puts its checkpoints' data files (`pip install --target DIR`
    or `--prefix` put them under DIR/share/..., which no interpreter prefix names), [] where it is not installed."""
    from importlib import metadata

    try:
        distribution = metadata.distribution("neural-sensor")
    except metadata.PackageNotFoundError:
        return ()
    site_dir = Path(distribution.locate_file(""))
    roots = []
    for file in distribution.files or []:
        parts = file.parts
        if len(parts) >= 4 and parts[-1] == "config.json" and parts[-3] == "checkpoints" \
                and parts[-4] == "neural-sensor":
            # as recorded (relative to site-packages), and under the install folder itself: --target records
            # ../../share/... but puts the files in DIR/share/...
            inside = Path(*[part for part in parts if part != ".."])
            for found in (Path(file.locate()), site_dir / inside):
                roots.append(found.resolve().parents[1])
    return tuple(dict.fromkeys(roots))


def resolve_checkpoint(folder: Path | str) -> Path:
    """A checkpoint option's folder: as given where it exists, else the shipped checkpoint its name ends with
    (`checkpoints/enhancer-run`, as the README writes it, from any working folder and from an installed package),
    else as given (the check then says it is missing)."""
    path = Path(folder)
    if not path.exists() and path.name in SHIPPED and path.parent in (Path("."), Path("checkpoints")):
        try:
            return checkpoint_path(path.name)
        except ValueError:
            return path
    return path


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
DIFFUSERS_WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"  # a diffusers UNet2DModel folder's


def _weights_problem(folder: Path) -> str | None:
    """Why a checkpoint's weights file cannot be read (missing, truncated: its header does not cover the file, no
    tensors), or None. Ours are model.safetensors; a diffusers folder (config.json with "_class_name") may keep
    diffusers' name instead. Only the header is read (milliseconds, no torch): a training run named such a folder
    after it had made all its data (minutes to hours)."""
    try:
        ours = "class" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        ours = False
    names = [WEIGHTS_FILE] if ours else [n for n in (WEIGHTS_FILE, DIFFUSERS_WEIGHTS_FILE) if (folder / n).is_file()]
    if not names or not (folder / names[0]).is_file():
        return (f"its weights are missing (no {WEIGHTS_FILE}" + ("" if ours else f" or {DIFFUSERS_WEIGHTS_FILE}")
                + ": a half-written or damaged checkpoint)")
    try:
        from safetensors import safe_open

        with safe_open(str(folder / names[0]), framework="numpy") as handle:
            if not list(handle.keys()):
                return f"its weights do not read ({names[0]} holds no tensors)"
    except Exception as err:  # noqa: BLE001 -- safetensors raises its own SafetensorError
        return f"its weights do not read ({names[0]}: {err})"
    return None
