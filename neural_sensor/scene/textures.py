"""Texture library: photographs of street surfaces for the scene builder's appearance.

Source, in order of preference:

1. Debian's `torcs-data` package (`apt-get install torcs-data`), read in place from
   /usr/share/games/torcs (or $NEURAL_SENSOR_TORCS). Photographs of asphalt, concrete
   slabs, kerb stones, grass, facades, roof tiles and trees. Licences: the files under
   tracks/road/street-1, tracks/road/e-track-2 and tracks/road/alpine-2 are under the
   Free Art License; tracks/road/corkscrew and data/textures under the GPL-2+
   (/usr/share/doc/torcs-data/copyright). They are never copied into this repository.
2. scikit-image's CC0 sample textures (brick, grass, gravel) where scikit-image is
   installed, with procedural images for the classes it lacks.
3. Procedural images (noise, slabs, window grids), with a one-line notice on stderr.

Per class the library holds a few textures, each with the metres one tile covers; a
surface picks one with a seeded choice per instance and gets a per-instance hue and
brightness jitter. `Texture.sample` returns area-averaged colours: the footprint of
the Gaussian that takes the colour selects a box-filtered level of the image, so
colours never alias. `TextureLibrary.hash` hashes the texture files (or the fallback
generator) and goes into the scene cache key.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TORCS_ROOT_DEFAULT = Path("/usr/share/games/torcs")
FREE_ART = "Free Art License 1.3 (torcs-data)"
GPL2 = "GPL-2+ (torcs-data)"
CLASSES = ("asphalt", "sidewalk", "kerb", "grass", "facade", "roof", "tree")
NOTICE = ("neural-sensor: no texture photographs found under {root} (apt-get install torcs-data, or set "
          "NEURAL_SENSOR_TORCS to the folder that holds its data); using procedural colours")


@dataclass(frozen=True)
class TextureSpec:
    """One photograph: path under the torcs root, metres per tile (u, v), crop (left, top, right, bottom) as
    fractions of the image, the fraction of the tile height that is a ground floor (facades: repeated
    storeys go above it), and its licence."""

    path: str
    tile_m: tuple[float, float]
    licence: str
    crop: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    base_frac: float = 0.0
    family: str = ""  # facades: office | apartment | old_town | house (Style.building_style)


_S1, _E2 = "tracks/road/street-1/", "tracks/road/e-track-2/"  # like g-track-1 and alpine-2: Free Art License
TORCS_CATALOGUE: dict[str, tuple[TextureSpec, ...]] = {
    "asphalt": (TextureSpec(_S1 + "tr-asphalt-2-aa-r_n.png", (4.0, 4.0), FREE_ART),
                TextureSpec(_S1 + "tr-road1_n.rgb", (6.0, 6.0), FREE_ART, crop=(0.05, 0.05, 0.95, 0.95))),
    "sidewalk": (TextureSpec(_S1 + "concdal.rgb", (2.4, 2.4), FREE_ART),
                 TextureSpec(_E2 + "house24brick.png", (1.6, 1.6), FREE_ART)),
    "kerb": (TextureSpec(_S1 + "tr-curb-bw-aa-r.rgb", (1.0, 0.3), FREE_ART, crop=(0.0, 0.0, 0.45, 1.0)),),
    "grass": (TextureSpec(_S1 + "grass-aa.rgb", (3.0, 3.0), FREE_ART),),
    "facade": (TextureSpec(_E2 + "house17facade.png", (30.0, 15.0), FREE_ART, family="apartment"),
               TextureSpec(_E2 + "house23facade.png", (28.0, 15.0), FREE_ART, base_frac=0.2, family="office"),
               TextureSpec(_E2 + "house24facade.png", (22.0, 11.0), FREE_ART, base_frac=0.35, family="old_town"),
               TextureSpec(_E2 + "house33facade.png", (4.5, 10.5), FREE_ART, family="old_town"),
               TextureSpec(_E2 + "house34facade.png", (24.0, 6.5), FREE_ART, base_frac=0.5, family="apartment"),
               TextureSpec(_E2 + "house35facade.png", (16.0, 8.0), FREE_ART, base_frac=0.5, family="old_town"),
               TextureSpec(_E2 + "house22facade.png", (7.0, 14.0), FREE_ART, family="office"),
               TextureSpec(_S1 + "tr-building7.rgb", (10.0, 10.0), FREE_ART, family="apartment"),
               TextureSpec("tracks/road/g-track-1/facade1-512.rgb", (10.0, 6.0), FREE_ART, crop=(0, 0.37, 1, 0.97),
                           family="house"),
               TextureSpec("tracks/road/g-track-1/facade6-512.rgb", (10.0, 6.0), FREE_ART, crop=(0, 0.37, 1, 0.97),
                           family="house")),
    "roof": (TextureSpec(_S1 + "roof1.rgb", (3.0, 3.0), FREE_ART),
             TextureSpec("tracks/road/corkscrew/tileroof.png", (2.0, 2.0), GPL2)),
    "tree": (TextureSpec(_S1 + "tree-new_n.rgb", (4.0, 8.0), FREE_ART, crop=(0.0, 0.0, 0.5, 1.0)),
             TextureSpec(_S1 + "treeg10_n.rgb", (5.0, 5.0), FREE_ART),
             TextureSpec(_E2 + "tree18side1_n.png", (5.0, 10.0), FREE_ART)),
}


@dataclass
class Texture:
    """An RGB(A) image tiled over a surface: image [H, W, 3] float32 in [0, 1] (row 0 = top), optional alpha
    [H, W], the metres (u, v) one tile covers. u runs along the image's columns, v up its rows."""

    name: str
    image: np.ndarray
    tile_m: tuple[float, float]
    licence: str
    alpha: np.ndarray | None = None
    base_frac: float = 0.0
    family: str = ""
    _levels: dict = field(default_factory=dict, repr=False)

    @property
    def mean_rgb(self) -> np.ndarray:
        """[3] the mean colour (alpha-weighted where the image has alpha), cached."""
        if "mean" not in self._levels:
            if self.alpha is None:
                self._levels["mean"] = self.image.reshape(-1, 3).mean(axis=0)
            else:
                weight = self.alpha.reshape(-1, 1)
                self._levels["mean"] = (self.image.reshape(-1, 3) * weight).sum(axis=0) / max(float(weight.sum()), 1e-6)
        return self._levels["mean"]

    def _level(self, factor: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The image box-filtered by `factor` pixels (area average), cached."""
        if factor not in self._levels:
            h, w = self.image.shape[:2]
            fh, fw = max(1, h // factor), max(1, w // factor)
            crop_h, crop_w = fh * factor if h >= factor else h, fw * factor if w >= factor else w
            img = self.image[:crop_h, :crop_w].reshape(fh, crop_h // fh, fw, crop_w // fw, 3).mean(axis=(1, 3))
            alpha = None
            if self.alpha is not None:
                alpha = self.alpha[:crop_h, :crop_w].reshape(fh, crop_h // fh, fw, crop_w // fw).mean(axis=(1, 3))
            self._levels[factor] = (img.astype(np.float32), alpha)
        return self._levels[factor]

    def detail(self, u_m: np.ndarray, v_m: np.ndarray, footprint_m: float) -> np.ndarray:
        """[M] standard deviation of the luminance inside a footprint_m square around each point: how much a
        single Gaussian of that size would smear (0 on a flat wall, high across a window edge)."""
        key = ("detail", float(footprint_m))
        if key not in self._levels:
            h, w = self.image.shape[:2]
            factor = max(1, int(round(footprint_m * w / self.tile_m[0])))
            lum = self.image @ np.array([0.299, 0.587, 0.114], np.float32)
            pad = np.pad(lum, ((0, factor), (0, factor)), mode="wrap")
            c1 = np.cumsum(np.cumsum(np.pad(pad, ((1, 0), (1, 0))), 0), 1)
            c2 = np.cumsum(np.cumsum(np.pad(pad * pad, ((1, 0), (1, 0))), 0), 1)

            def box(c):
                return (c[factor:factor + h, factor:factor + w] - c[:h, factor:factor + w]
                        - c[factor:factor + h, :w] + c[:h, :w]) / factor**2

            self._levels[key] = np.sqrt(np.clip(box(c2) - box(c1) ** 2, 0, None)).astype(np.float32)
        std = self._levels[key]
        h, w = std.shape
        # the box above starts at each pixel: shift by half a footprint so it is centred
        half = 0.5 * footprint_m
        tu, tv = self.tex_coords(np.asarray(u_m) - half, np.asarray(v_m) + half)
        return std[np.clip(((1 - tv) * h).astype(int), 0, h - 1), np.clip((tu * w).astype(int), 0, w - 1)]

    def tex_coords(self, u_m: np.ndarray, v_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tile coordinates in [0, 1) for surface coordinates in metres; v repeats above the ground floor."""
        tu = np.mod(np.asarray(u_m) / self.tile_m[0], 1.0)
        tv = np.asarray(v_m) / self.tile_m[1]
        if self.base_frac > 0:
            upper = 1.0 - self.base_frac
            tv = np.where(tv < 1.0, tv, self.base_frac + np.mod(tv - 1.0, upper))
        return tu, np.mod(tv, 1.0)

    def sample(self, u_m: np.ndarray, v_m: np.ndarray, footprint_m: float | np.ndarray,
               with_alpha: bool = False):
        """Area-averaged colours [M, 3] (and alpha [M]) at surface coordinates (metres) for Gaussians whose
        footprint (the side of the surface patch each one stands for) is footprint_m."""
        h, w = self.image.shape[:2]
        px_per_m = w / self.tile_m[0]
        footprint = np.broadcast_to(np.asarray(footprint_m, np.float64), np.shape(u_m))
        levels = np.clip(np.floor(np.log2(np.maximum(footprint * px_per_m, 1.0))), 0, 6).astype(int)
        tu, tv = self.tex_coords(u_m, v_m)
        rgb = np.empty(np.shape(u_m) + (3,), np.float32)
        alpha = np.ones(np.shape(u_m), np.float32)
        for level in np.unique(levels):
            sel = levels == level
            img, alp = self._level(2 ** int(level))
            lh, lw = img.shape[:2]
            # bilinear, wrapping; v = 0 is the bottom row of the image
            x = tu[sel] * lw - 0.5
            y = (1.0 - tv[sel]) * lh - 0.5
            x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
            fx, fy = (x - x0)[:, None], (y - y0)[:, None]
            xa, xb, ya, yb = x0 % lw, (x0 + 1) % lw, y0 % lh, (y0 + 1) % lh
            rgb[sel] = ((img[ya, xa] * (1 - fx) + img[ya, xb] * fx) * (1 - fy)
                        + (img[yb, xa] * (1 - fx) + img[yb, xb] * fx) * fy)
            if alp is not None:
                fx, fy = fx[:, 0], fy[:, 0]
                alpha[sel] = ((alp[ya, xa] * (1 - fx) + alp[ya, xb] * fx) * (1 - fy)
                              + (alp[yb, xa] * (1 - fx) + alp[yb, xb] * fx) * fy)
        return (rgb, alpha) if with_alpha else rgb

    def window_mask(self) -> np.ndarray:
        """[H, W] bool: the dark, glassy parts of a facade photograph (windows and doors), for recessing."""
        lum = self.image @ np.array([0.299, 0.587, 0.114], np.float32)
        k = 5
        pad = np.pad(lum, k // 2, mode="wrap")
        smooth = sum(pad[i:i + lum.shape[0], j:j + lum.shape[1]] for i in range(k) for j in range(k)) / k**2
        return smooth < 0.72 * float(np.median(lum))


@dataclass
class TextureLibrary:
    """Textures per class (see CLASSES), where they came from, and a hash of the files used."""

    textures: dict[str, list[Texture]]
    source: str  # "torcs" | "skimage" | "procedural"
    hash: str
    licences: tuple[str, ...]

    def choose(self, cls: str, key: int, seed: int, family: str = "mixed") -> Texture:
        """A texture of class `cls` for instance `key`, by a seeded choice; family (facades: office | apartment |
        old_town | house) narrows the choice where the library has textures of that family."""
        options = [t for t in self.textures[cls] if t.family == family] or self.textures[cls]
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(key) & 0xFFFFFFFF, CLASSES.index(cls)])
        return options[int(rng.integers(len(options)))]

    def jitter(self, cls: str, key: int, seed: int, hue: float = 0.03, brightness: float = 0.1) -> np.ndarray:
        """A [3, 3] colour matrix for instance `key`: a hue rotation of up to +-hue turns about the grey axis
        and a brightness scale within 1 +- brightness."""
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(key) & 0xFFFFFFFF, 97 + CLASSES.index(cls)])
        angle = 2 * math.pi * rng.uniform(-hue, hue)
        scale = 1.0 + rng.uniform(-brightness, brightness)
        axis = np.ones(3) / math.sqrt(3)
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rot = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
        return (scale * rot).astype(np.float32)


def _read_image(path: Path, spec: TextureSpec) -> tuple[np.ndarray, np.ndarray | None]:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        has_alpha = im.mode in ("RGBA", "LA") or "transparency" in im.info
        rgba = np.asarray(im.convert("RGBA"), np.float32) / 255.0
    h, w = rgba.shape[:2]
    l, t, r, b = spec.crop
    rgba = rgba[int(round(t * h)):int(round(b * h)), int(round(l * w)):int(round(r * w))]
    alpha = rgba[..., 3].copy() if has_alpha and rgba[..., 3].min() < 0.99 else None
    return np.ascontiguousarray(rgba[..., :3]), alpha


def _from_torcs(root: Path) -> TextureLibrary | None:
    digest = hashlib.sha256(b"torcs-catalogue-v1")
    textures: dict[str, list[Texture]] = {}
    licences = set()
    for cls, specs in TORCS_CATALOGUE.items():
        for spec in specs:
            path = root / spec.path
            if not path.is_file():
                return None
            data = path.read_bytes()
            digest.update(spec.path.encode() + repr((spec.tile_m, spec.crop, spec.base_frac, spec.family)).encode())
            digest.update(hashlib.sha256(data).digest())
            image, alpha = _read_image(path, spec)
            textures.setdefault(cls, []).append(Texture(Path(spec.path).stem, image, spec.tile_m, spec.licence,
                                                        alpha, spec.base_frac, spec.family))
            licences.add(spec.licence)
    return TextureLibrary(textures, "torcs", digest.hexdigest()[:16], tuple(sorted(licences)))


def _noise(rng: np.random.Generator, size: int, octaves: int = 4) -> np.ndarray:
    """Tileable value noise in [0, 1], [size, size]."""
    out = np.zeros((size, size), np.float32)
    for o in range(octaves):
        cells = 4 * 2**o
        grid = rng.random((cells, cells)).astype(np.float32)
        coords = np.arange(size) * cells / size
        i0 = np.floor(coords).astype(int)
        f = (coords - i0)[:, None]
        rows = grid[i0 % cells] * (1 - f) + grid[(i0 + 1) % cells] * f
        f = (coords - i0)[None, :]
        out += (rows[:, i0 % cells] * (1 - f) + rows[:, (i0 + 1) % cells] * f) / 2**o
    out -= out.min()
    return out / max(float(out.max()), 1e-6)


def _procedural(rng: np.random.Generator) -> dict[str, list[Texture]]:
    """Procedural stand-ins for every class (the last resort)."""
    n = 128

    def tinted(base, amount, noise):
        return np.clip(np.asarray(base, np.float32) * (1 + amount * (noise[..., None] - 0.5)), 0, 1)

    slabs = _noise(rng, n)
    joint = (np.arange(n) % 64 < 2)
    slab = tinted((0.6, 0.59, 0.56), 0.3, slabs)
    slab[joint] *= 0.7
    slab[:, joint] *= 0.7
    facade = []
    for base in ((0.72, 0.62, 0.5), (0.6, 0.6, 0.62), (0.65, 0.45, 0.35)):
        img = tinted(base, 0.2, _noise(rng, n))
        yy, xx = np.mgrid[0:n, 0:n]
        window = ((xx % 43) > 12) & ((xx % 43) < 34) & ((yy % 43) > 10) & ((yy % 43) < 32)
        img[window] = (0.15, 0.18, 0.22)
        facade.append(Texture("procedural-facade", img, (9.0, 9.0), "procedural"))
    tree_alpha = np.clip(1.2 - 2.2 * np.hypot(*(np.mgrid[0:n, 0:n] / n - 0.5)), 0, 1).astype(np.float32)
    return {
        "asphalt": [Texture("procedural-asphalt", tinted((0.3, 0.3, 0.31), 0.35, _noise(rng, n, 6)), (3.0, 3.0),
                            "procedural")],
        "sidewalk": [Texture("procedural-slabs", slab, (2.4, 2.4), "procedural")],
        "kerb": [Texture("procedural-kerb", tinted((0.7, 0.7, 0.68), 0.2, _noise(rng, n)), (1.0, 0.3), "procedural")],
        "grass": [Texture("procedural-grass", tinted((0.3, 0.42, 0.18), 0.5, _noise(rng, n, 6)), (3.0, 3.0),
                          "procedural")],
        "facade": facade,
        "roof": [Texture("procedural-roof", tinted((0.45, 0.25, 0.2), 0.4, _noise(rng, n)), (3.0, 3.0), "procedural")],
        "tree": [Texture("procedural-tree", tinted((0.22, 0.38, 0.15), 0.6, _noise(rng, n, 6)), (4.0, 4.0),
                         "procedural", alpha=tree_alpha)],
    }


def _from_skimage(rng: np.random.Generator) -> TextureLibrary | None:
    try:
        from skimage import data  # optional; CC0 sample images
    except ImportError:
        return None
    textures = _procedural(rng)
    digest = hashlib.sha256(b"skimage-v1")
    for cls, name, tile in (("sidewalk", "brick", (2.0, 2.0)), ("grass", "grass", (2.0, 2.0)),
                            ("asphalt", "gravel", (2.0, 2.0))):
        image = np.asarray(getattr(data, name)(), np.float32) / 255.0
        if image.ndim == 2:
            tint = (0.62, 0.6, 0.56) if cls == "sidewalk" else (0.35, 0.5, 0.22) if cls == "grass" else (0.4, 0.4, 0.41)
            image = image[..., None] * np.asarray(tint, np.float32) / max(float(image.mean()), 1e-3)
        textures[cls] = [Texture(f"skimage-{name}", np.clip(image[..., :3], 0, 1), tile, "CC0 (scikit-image)")]
        digest.update(image.tobytes()[:4096])
    return TextureLibrary(textures, "skimage", digest.hexdigest()[:16], ("CC0 (scikit-image)", "procedural"))


def torcs_root() -> Path:
    return Path(os.environ.get("NEURAL_SENSOR_TORCS", TORCS_ROOT_DEFAULT))


@functools.lru_cache(maxsize=4)
def load_library(root: str | None = None, allow_skimage: bool = True) -> TextureLibrary:
    """The texture library: torcs-data photographs if installed under root (default $NEURAL_SENSOR_TORCS or
    /usr/share/games/torcs), else scikit-image's CC0 textures, else procedural images (with a notice)."""
    searched = Path(root) if root is not None else torcs_root()
    library = _from_torcs(searched)
    if library is not None:
        return library
    rng = np.random.default_rng(12345)
    library = _from_skimage(rng) if allow_skimage else None
    if library is None:
        print(NOTICE.format(root=searched), file=sys.stderr)
        library = TextureLibrary(_procedural(rng), "procedural", hashlib.sha256(b"procedural-v1").hexdigest()[:16],
                                 ("procedural",))
    return library
