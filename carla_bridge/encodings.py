"""CARLA 0.9.16's camera image encodings and its client-side ColorConverters, on BGRA arrays.

What each camera blueprint puts in `raw_data` (BGRA uint8, alpha 255):
    sensor.camera.rgb                    the picture
    sensor.camera.depth                  depth normalised to DEPTH_FAR_M in 24 bits: R low byte, G middle, B high;
                                         metres = 1000 * (R + 256 G + 65536 B) / (256^3 - 1); sky = 1000 m
    sensor.camera.semantic_segmentation  the CityObjectLabel id in R (G = B = 0)
    sensor.camera.instance_segmentation  the CityObjectLabel id in R, the object id in G (low byte) and B (high)

and what `carla.Image.convert(cc)` / `save_to_disk(path, cc)` make of them (LibCarla's
image/ColorConverter.h, image/ImageView.h, read for this module):
    Raw                no change
    Depth              gray = normalised depth (24-bit value / (256^3 - 1)), written as uint8(gray * 255 + 0.5)
    LogarithmicDepth   gray = clamp(1 + ln(normalised) / 5.70378, 0.005, 1), same uint8 rounding (so at least 1)
    CityScapesPalette  R (the label) looked up in the palette, label % 29
The gray converters fill B, G and R with the gray value (alpha 255) in place; save_to_disk
writes them as a one-channel image.
"""

from __future__ import annotations

import numpy as np

DEPTH_FAR_M = 1000.0  # CARLA's far plane: the 24-bit depth code 0xFFFFFF
_DEPTH_CODES = 256 * 256 * 256 - 1
SKY_LABEL = 11  # CityObjectLabel.Sky
LOG_DEPTH_DIVISOR = 5.70378  # LibCarla's LogarithmicLinear constant
LOG_DEPTH_FLOOR = 0.005  # ... and its lower clamp

# CARLA 0.9.16's CityScapesPalette (LibCarla image/CityScapesPalette.h), index = CityObjectLabel id, RGB
CITYSCAPES_PALETTE_RGB = np.array([
    (0, 0, 0), (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32), (110, 190, 160),
    (170, 120, 50), (55, 90, 80), (45, 60, 150), (157, 234, 50), (81, 0, 81), (150, 100, 100), (230, 150, 140),
    (180, 165, 180),
], dtype=np.uint8)
# label % 29 as LibCarla does, precomputed for every uint8 value: [256, 4] BGRA
_PALETTE_BGRA = np.concatenate([CITYSCAPES_PALETTE_RGB[np.arange(256) % len(CITYSCAPES_PALETTE_RGB)][:, ::-1],
                                np.full((256, 1), 255, np.uint8)], axis=1)

_LITTLE_ENDIAN = np.little_endian
# per label: the packed BGRA of a semantic pixel (R = label, uncovered 0 -> Sky, alpha 255)
_SEMANTIC_PACKED = ((np.where(np.arange(256) == 0, SKY_LABEL, np.arange(256)).astype(np.uint32) << 16)
                    | np.uint32(0xFF000000)).astype(np.uint32)

CAMERA_TYPES = ("sensor.camera.rgb", "sensor.camera.depth", "sensor.camera.semantic_segmentation",
                "sensor.camera.instance_segmentation")


def _bgra(height: int, width: int) -> np.ndarray:
    out = np.empty((height, width, 4), np.uint8)
    out[..., 3] = 255
    return out


def sky_mask(semantic: np.ndarray) -> np.ndarray:
    """[H, W] bool: the pixels no Gaussian covers. The renderer labels them 0 (alpha < 0.5); CARLA's sky dome is
    tagged Sky at the far plane. (A Gaussian labelled 0, Unlabeled, would read as sky too; our scenes have none.)"""
    return semantic == 0


def _as_bgra(packed: np.ndarray) -> np.ndarray:
    """[H, W] uint32 B | G << 8 | R << 16 | A << 24 -> [H, W, 4] uint8 BGRA (a view; little-endian byte order)."""
    if not _LITTLE_ENDIAN:  # pragma: no cover - every platform CARLA runs on is little-endian
        packed = packed.byteswap()
    return packed.view(np.uint8).reshape(packed.shape + (4,))


def depth_to_bgra_fast(depth_m: np.ndarray, semantic: np.ndarray) -> np.ndarray:
    """depth_to_bgra(depth_m, sky_mask(semantic)) in one pass (numba): the per-tick path."""
    from carla_bridge._kernels import depth_to_bgra_kernel

    assert depth_m.ndim == 2 and semantic.shape == depth_m.shape, (depth_m.shape, semantic.shape)
    out = np.empty(depth_m.shape + (4,), np.uint8)
    depth_to_bgra_kernel(np.ascontiguousarray(depth_m, np.float32), np.ascontiguousarray(semantic, np.uint8),
                         np.float32(_DEPTH_CODES / DEPTH_FAR_M), np.uint32(_DEPTH_CODES), out)
    return out


def depth_to_bgra(depth_m: np.ndarray, sky: np.ndarray) -> np.ndarray:
    """[H, W] metres (camera z) + [H, W] sky mask -> [H, W, 4] BGRA in CARLA's 24-bit depth code; sky = 1000 m."""
    assert depth_m.ndim == 2 and sky.shape == depth_m.shape, (depth_m.shape, sky.shape)
    # float32 (it runs every tick): the code is exact to within one step (60 micrometres)
    scaled = depth_m * np.float32(_DEPTH_CODES / DEPTH_FAR_M)
    scaled += np.float32(0.5)  # rounded to the nearest code by the truncating cast below
    np.clip(scaled, np.float32(0.0), np.float32(_DEPTH_CODES), out=scaled)  # clipped after: 2^24 - 0.5 rounds up
    code = scaled.astype(np.uint32)
    code[sky] = _DEPTH_CODES
    # code has R in its low byte; BGRA packs B low: swap the outer bytes, alpha 255
    packed = (code >> 16) | (code & np.uint32(0xFF00)) | ((code & np.uint32(0xFF)) << 16)
    packed |= np.uint32(0xFF000000)
    return _as_bgra(packed)


def depth_from_bgra(bgra: np.ndarray) -> np.ndarray:
    """[H, W, 4] BGRA depth code -> [H, W] float64 metres (the decoding CARLA's docs give)."""
    b, g, r = (bgra[..., i].astype(np.float64) for i in range(3))
    return DEPTH_FAR_M * (r + g * 256.0 + b * 65536.0) / _DEPTH_CODES


def semantic_labels(semantic: np.ndarray) -> np.ndarray:
    """[H, W] uint8 labels with the uncovered pixels tagged Sky, as CARLA tags its sky dome."""
    labels = semantic.astype(np.uint8, copy=True)
    labels[sky_mask(semantic)] = SKY_LABEL
    return labels


def semantic_to_bgra(semantic: np.ndarray) -> np.ndarray:
    """[H, W] uint8 CityObjectLabel ids -> [H, W, 4] BGRA with the id in R (uncovered pixels: Sky)."""
    return _as_bgra(np.take(_SEMANTIC_PACKED, semantic))


def instance_to_bgra(semantic: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """Labels [H, W] uint8 + object ids [H, W] int -> [H, W, 4] BGRA: R label, G id low byte, B id high byte."""
    assert instance.shape == semantic.shape, (instance.shape, semantic.shape)
    ids = instance.astype(np.uint32) & np.uint32(0xFFFF)
    packed = np.take(_SEMANTIC_PACKED, semantic)
    packed |= ((ids & np.uint32(0xFF)) << 8) | (ids >> 8)
    return _as_bgra(packed)


def _gray_to_bgra(gray: np.ndarray) -> np.ndarray:
    code = (gray * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)  # boost::gil's float -> uint8
    out = _bgra(*gray.shape)
    out[..., 0] = out[..., 1] = out[..., 2] = code
    return out


def normalised_depth(bgra: np.ndarray) -> np.ndarray:
    """[H, W] float32: LibCarla's Depth converter before quantisation, (R + 256 G + 65536 B) / (256^3 - 1)."""
    b, g, r = (bgra[..., i].astype(np.float32) for i in range(3))
    return (r + g * np.float32(256.0) + b * np.float32(65536.0)) / np.float32(_DEPTH_CODES)


def convert_bgra(bgra: np.ndarray, converter: str) -> np.ndarray:
    """A new [H, W, 4] BGRA: `converter` ("Raw", "Depth", "LogarithmicDepth", "CityScapesPalette") applied."""
    if converter == "Raw":
        return bgra.copy()
    if converter == "Depth":
        return _gray_to_bgra(normalised_depth(bgra))
    if converter == "LogarithmicDepth":
        with np.errstate(divide="ignore"):
            value = np.float32(1.0) + np.log(normalised_depth(bgra)) / np.float32(LOG_DEPTH_DIVISOR)
        return _gray_to_bgra(np.clip(value, np.float32(LOG_DEPTH_FLOOR), np.float32(1.0)))  # (0 had come out where
        # CARLA writes 1: every pixel nearer than ~3.4 m)
    if converter == "CityScapesPalette":
        return _PALETTE_BGRA[bgra[..., 2]]
    raise ValueError(f"invalid color converter {converter!r} (Raw, Depth, LogarithmicDepth, CityScapesPalette)")
