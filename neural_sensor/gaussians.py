"""GaussianScene: a set of 3D Gaussians in the world frame, and its PLY file.

Fields, dtypes and shapes follow DESIGN.md ("GaussianScene"):

    means      [N, 3] float32   world frame (FLU, metres)
    quats      [N, 4] float32   (w, x, y, z), unit norm
    scales     [N, 3] float32   linear, > 0
    opacities  [N]    float32   in [0, 1]
    sh         [N, K, 3] float32  SH coefficients, K = (degree+1)^2, degree 0..3
    labels     [N]    uint8     semantic class (CARLA CityObjectLabel ids)
    instance   [N]    int32     0 = background, else the agent / object id

The PLY is the INRIA 3DGS layout that gsplat, nerfstudio and the INRIA trainer
write: binary little-endian float32 `x y z nx ny nz f_dc_0..2 f_rest_* opacity
scale_0..2 rot_0..3`, f_rest channel-major, opacity as a logit, scales as logs,
rotation (w, x, y, z); plus optional `semantic` (uint8) and `instance` (int32).

Storing logits and logs in float32 means scales and opacities round-trip to
float32 rounding of exp/log (relative error below 2e-6), everything else
bit-exact.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from neural_sensor.poses import check_pose
from neural_sensor.sh import SH_C0, num_sh_bases, sh_degree_from_bases, sh_rotation_matrices

_FLOAT_FIELDS = ("means", "quats", "scales", "opacities", "sh")
class _PlyProblem(ValueError):
    """A PLY that reads but is not a whole 3DGS PLY (said as it is, not as "not a readable 3DGS PLY")."""


_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)
MAX_PLY_SCALE_M = 1.0e4  # a PLY's Gaussians larger than this are refused: the CPU and torch renderers agree exactly up
#   to 10 km, not from 1,000 km (float32 EWA projection; one of 4.9e8 m above a street hid its buildings in the
#   CPU render only), and no street scene needs one
_ARRAY_FIELDS = _FLOAT_FIELDS + ("labels", "instance")
_OPACITY_EPS = 1e-7  # opacities are clipped to [eps, 1-eps] before the logit so the file holds finite values


def _fail(name: str, problem: str, bad: np.ndarray) -> None:
    """Raise a ValueError naming the field, how many Gaussians are bad and the first one."""
    rows = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1)) if bad.ndim else np.array([0])
    raise ValueError(
        f"GaussianScene.{name}: {rows.size} of {bad.shape[0]} Gaussians {problem} (first at index {rows[0]})"
    )


@dataclass(eq=False)
class GaussianScene:
    """3D Gaussians in the world frame. See the module docstring for the fields.

    Construction validates shapes, dtypes and values and raises ValueError
    naming the field and the number of offending Gaussians. Quaternions are
    normalised on construction (a zero quaternion is an error).

    A scene is a value: construction copies the arrays and makes them read-only,
    so data derived from them (covariances, for the renderers) can be cached on
    the scene. Use `replace(field=array)` for a modified copy.
    """

    means: np.ndarray  # [N, 3] float32, world frame, metres
    quats: np.ndarray  # [N, 4] float32, (w, x, y, z)
    scales: np.ndarray  # [N, 3] float32, linear standard deviations, metres
    opacities: np.ndarray  # [N] float32 in [0, 1]
    sh: np.ndarray  # [N, K, 3] float32 SH coefficients
    labels: np.ndarray = field(default=None)  # [N] uint8 semantic class; zeros if omitted
    instance: np.ndarray = field(default=None)  # [N] int32 instance id; zeros if omitted
    _derived: dict = field(default_factory=dict, init=False, repr=False)  # cache of data computed from the fields

    def __post_init__(self) -> None:
        if not isinstance(self.means, np.ndarray) or self.means.ndim != 2 or self.means.shape[1] != 3:
            raise ValueError(f"GaussianScene.means must be an [N, 3] array, got shape {np.shape(self.means)}")
        n = self.means.shape[0]
        if self.labels is None:
            self.labels = np.zeros(n, np.uint8)
        if self.instance is None:
            self.instance = np.zeros(n, np.int32)
        expected = {
            "means": ((n, 3), np.float32),
            "quats": ((n, 4), np.float32),
            "scales": ((n, 3), np.float32),
            "opacities": ((n,), np.float32),
            "labels": ((n,), np.uint8),
            "instance": ((n,), np.int32),
        }
        for name, (shape, dtype) in expected.items():
            value = getattr(self, name)
            if not isinstance(value, np.ndarray):
                raise ValueError(f"GaussianScene.{name} must be a numpy array, got {type(value).__name__}")
            if value.shape != shape:
                raise ValueError(f"GaussianScene.{name} must have shape {shape} for N={n}, got {value.shape}")
            if value.dtype != dtype:
                raise ValueError(
                    f"GaussianScene.{name} must be {np.dtype(dtype).name}, got {value.dtype} "
                    f"(cast with .astype(np.{np.dtype(dtype).name}))"
                )
        if not isinstance(self.sh, np.ndarray) or self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise ValueError(f"GaussianScene.sh must have shape [N={n}, K, 3], got {np.shape(self.sh)}")
        if self.sh.dtype != np.float32:
            raise ValueError(f"GaussianScene.sh must be float32, got {self.sh.dtype}")
        try:
            sh_degree_from_bases(self.sh.shape[1])
        except ValueError as err:
            raise ValueError(f"GaussianScene.sh: {err}") from None
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            bad = ~np.isfinite(value)
            if bad.any():
                _fail(name, "are NaN or infinite", bad)
        if (self.scales <= 0).any():
            _fail("scales", "have a non-positive scale", self.scales <= 0)
        outside = (self.opacities < 0) | (self.opacities > 1)
        if outside.any():
            _fail("opacities", "are outside [0, 1]", outside)
        norms = np.linalg.norm(self.quats.astype(np.float64), axis=1)
        if (norms < 1e-12).any():
            _fail("quats", "are zero quaternions", norms < 1e-12)
        for name in _ARRAY_FIELDS:
            value = np.array(getattr(self, name), order="C", copy=True)
            if name == "quats":
                # already-unit quaternions are kept bit-for-bit so a save / load round trip is exact
                off_unit = np.abs(norms - 1.0) > 1e-6
                value[off_unit] = (value[off_unit] / norms[off_unit, None]).astype(np.float32)
            value.setflags(write=False)
            setattr(self, name, value)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return self.means.shape[0]

    def replace(self, **changes: np.ndarray) -> "GaussianScene":
        """A validated copy with some fields replaced, e.g. scene.replace(opacities=new_opacities)."""
        unknown = set(changes) - set(_ARRAY_FIELDS)
        if unknown:
            raise ValueError(f"GaussianScene.replace: unknown fields {sorted(unknown)}")
        return GaussianScene(**{name: changes.get(name, getattr(self, name)) for name in _ARRAY_FIELDS})

    def derived(self, key: str, compute: Callable[["GaussianScene"], object]) -> object:
        """compute(self), cached on the scene under `key` (the fields are read-only, so it stays valid)."""
        if key not in self._derived:
            self._derived[key] = compute(self)
        return self._derived[key]

    @property
    def sh_degree(self) -> int:
        """SH degree 0..3 of the colour coefficients."""
        return sh_degree_from_bases(self.sh.shape[1])

    @property
    def colors_dc(self) -> np.ndarray:
        """[N, 3] float32 view-independent RGB (the degree-0 term plus 0.5, clamped at 0)."""
        return np.maximum(self.sh[:, 0, :] * np.float32(SH_C0) + np.float32(0.5), 0.0).astype(np.float32)

    @classmethod
    def from_colors(
        cls,
        means: np.ndarray,
        quats: np.ndarray,
        scales: np.ndarray,
        opacities: np.ndarray,
        colors_rgb: np.ndarray,
        labels: np.ndarray | None = None,
        instance: np.ndarray | None = None,
    ) -> "GaussianScene":
        """Build a degree-0 scene from RGB colours in [0, 1].

        Args:
            colors_rgb: [N, 3] float32, the view-independent colour.
        Other arguments as the fields.
        """
        colors_rgb = np.asarray(colors_rgb)
        if colors_rgb.ndim != 2 or colors_rgb.shape[1] != 3:
            raise ValueError(f"GaussianScene.from_colors: colors_rgb must be [N, 3], got shape {colors_rgb.shape}")
        sh = ((colors_rgb.astype(np.float32) - np.float32(0.5)) / np.float32(SH_C0))[:, None, :]
        return cls(means, quats, scales, opacities, sh.astype(np.float32), labels, instance)

    def with_sh_degree(self, degree: int) -> "GaussianScene":
        """Return a copy whose SH has `degree`: higher bands zero-padded (exact) or dropped."""
        k_new = num_sh_bases(degree)
        k_old = self.sh.shape[1]
        sh = np.zeros((len(self), k_new, 3), np.float32)
        sh[:, : min(k_new, k_old)] = self.sh[:, : min(k_new, k_old)]
        return GaussianScene(self.means, self.quats, self.scales, self.opacities, sh, self.labels, self.instance)

    # ------------------------------------------------------------- operations
    @staticmethod
    def concat(scenes: Sequence["GaussianScene"]) -> "GaussianScene":
        """Concatenate scenes in order. Lower SH degrees are zero-padded to the highest (exact)."""
        if len(scenes) == 0:
            raise ValueError("GaussianScene.concat needs at least one scene")
        if not all(isinstance(scene, GaussianScene) for scene in scenes):
            raise ValueError("GaussianScene.concat takes GaussianScene objects only")
        degree = max(s.sh_degree for s in scenes)
        parts = [s if s.sh_degree == degree else s.with_sh_degree(degree) for s in scenes]
        return GaussianScene(**{name: np.concatenate([getattr(p, name) for p in parts], axis=0) for name in _ARRAY_FIELDS})

    def subset(self, mask_or_index: np.ndarray) -> "GaussianScene":
        """Gaussians selected by a boolean mask [N] or an integer index array [M]."""
        sel = np.asarray(mask_or_index)
        if sel.dtype == bool and sel.shape != (len(self),):
            raise ValueError(f"GaussianScene.subset: boolean mask must have shape ({len(self)},), got {sel.shape}")
        if sel.dtype != bool and not np.issubdtype(sel.dtype, np.integer):
            raise ValueError(f"GaussianScene.subset: expected a bool mask or integer indices, got {sel.dtype}")
        if sel.dtype != bool and sel.size and (sel.min() < -len(self) or sel.max() >= len(self)):
            raise ValueError(f"GaussianScene.subset: indices must be in [-{len(self)}, {len(self)}), "
                             f"got {sel.min()}..{sel.max()}")
        return GaussianScene(**{name: getattr(self, name)[sel] for name in _ARRAY_FIELDS})

    def transformed(self, pose_4x4: np.ndarray) -> "GaussianScene":
        """Apply a rigid transform (e.g. `pose_local_to_world`) to every Gaussian.

        Means are moved, orientations rotated, and SH bands 1..3 rotated with
        the same rotation so view-dependent colour turns with the object.

        Args:
            pose_4x4: [4, 4] rigid transform (rotation with det +1, translation).
        """
        pose = check_pose(pose_4x4, "transformed: pose", atol=1e-5)
        rot = pose[:3, :3]
        means = (self.means.astype(np.float64) @ rot.T + pose[:3, 3]).astype(np.float32)
        quats = _quat_multiply(rotmat_to_quat(rot)[None, :], self.quats.astype(np.float64)).astype(np.float32)
        sh = self.sh.copy()
        for band, band_map in enumerate(sh_rotation_matrices(self.sh_degree, rot), start=1):
            lo, hi = band * band, (band + 1) * (band + 1)
            sh[:, lo:hi, :] = np.einsum("ij,njc->nic", band_map, self.sh[:, lo:hi, :].astype(np.float64))
        return GaussianScene(means, quats, self.scales, self.opacities, sh, self.labels, self.instance)

    def scaled(self, factor: float) -> "GaussianScene":
        """Every Gaussian's position and size times `factor` (> 0), about the origin: a scene trained at another
        scale (a COLMAP reconstruction's units are arbitrary) brought to metres. Orientations, opacities and colours
        are kept (`transformed` takes the rigid part)."""
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (math.isfinite(factor)
                                                                                  and factor > 0):
            raise ValueError(f"scaled: factor must be a finite number > 0, got {factor!r}")
        return self.replace(means=(self.means.astype(np.float64) * factor).astype(np.float32),
                            scales=(self.scales.astype(np.float64) * factor).astype(np.float32))

    # -------------------------------------------------------------------- PLY
    def save_ply(self, path: str | os.PathLike) -> None:
        """Write the INRIA 3DGS PLY (binary little-endian) with `semantic` and `instance`; ValueError for a scene
        `load_ply` would refuse (a scale above MAX_PLY_SCALE_M), before anything is written."""
        from plyfile import PlyData, PlyElement

        huge = np.flatnonzero((self.scales > MAX_PLY_SCALE_M).any(axis=1))
        if huge.size:  # (it was written, and then refused by load_ply)
            raise ValueError(f"save_ply: {huge.size} of {len(self)} Gaussians have a scale above "
                             f"{MAX_PLY_SCALE_M:g} m (first at {huge[0]}: {self.scales[huge[0]].max():.3g} m), which "
                             f"load_ply refuses (the renderers' float32 projection cannot draw one that large)")
        n, k = len(self), self.sh.shape[1]
        names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        names += [f"f_rest_{i}" for i in range(3 * (k - 1))]
        names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
        dtype = [(name, "<f4") for name in names] + [("semantic", "u1"), ("instance", "<i4")]
        rest = self.sh[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * (k - 1))  # channel-major, as INRIA writes it
        opac = np.clip(self.opacities.astype(np.float64), _OPACITY_EPS, 1.0 - _OPACITY_EPS)
        columns = [
            self.means,
            np.zeros((n, 3), np.float32),
            self.sh[:, 0, :],
            rest,
            np.log(opac / (1.0 - opac))[:, None],
            np.log(self.scales.astype(np.float64)),
            self.quats,
        ]
        floats = np.concatenate([np.asarray(c, np.float32) for c in columns], axis=1)
        record = np.empty(n, dtype=dtype)
        for i, name in enumerate(names):
            record[name] = floats[:, i]
        record["semantic"] = self.labels
        record["instance"] = self.instance
        PlyData([PlyElement.describe(record, "vertex")], text=False, byte_order="<").write(os.fspath(path))

    @classmethod
    def load_ply(cls, path: str | os.PathLike) -> "GaussianScene":
        """Read an INRIA-layout 3DGS PLY (any SH degree 0-3; ascii or binary).

        Raises ValueError naming the file and the problem for a file that is
        not a PLY, is truncated, lacks a property, or holds invalid values.
        """
        from plyfile import PlyData

        path = os.fspath(path)
        try:
            with open(path, "rb") as fh:
                ply = PlyData.read(fh)
                # (binary only: plyfile reads a text body through a wrapper that closes the file)
                trailing = 0 if ply.text else os.fstat(fh.fileno()).st_size - fh.tell()
            elements = [element.name for element in ply.elements]
            if trailing > 0:  # (a header counting fewer vertices than its body holds loaded the count without a word)
                raise _PlyProblem(f"{path}: {trailing} bytes follow the elements its header counts (vertex: "
                                  f"{ply['vertex'].count if 'vertex' in elements else 0}); a header written before "
                                  "all Gaussians were, or a damaged file")
            if "vertex" not in elements:
                raise _PlyProblem(f"{path}: the PLY has no vertex element (elements: {elements}); a 3DGS PLY holds "
                                  "its Gaussians as vertices")
            vertex = ply["vertex"]
            data = vertex.data
        except _PlyProblem:
            raise
        except ValueError as err:
            raise ValueError(f"{path}: not a readable 3DGS PLY ({type(err).__name__}: {err})") from None
        except (KeyError, IndexError, EOFError, OSError, TypeError) as err:
            raise ValueError(f"{path}: not a readable 3DGS PLY ({type(err).__name__}: {err})") from None
        except Exception as err:  # plyfile's own parse errors (PlyHeaderParseError, PlyElementParseError)
            raise ValueError(f"{path}: not a readable 3DGS PLY ({type(err).__name__}: {err})") from None
        props = set(data.dtype.names or ())
        required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
        required += ["scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
        missing = [p for p in required if p not in props]
        if missing:
            raise ValueError(f"{path}: PLY vertex element lacks the 3DGS properties {missing}")
        n = len(data)
        n_rest = len([p for p in props if p.startswith("f_rest_")])
        if n_rest % 3 != 0:
            raise ValueError(f"{path}: {n_rest} f_rest_* properties is not a multiple of 3")
        try:
            k = 1 + n_rest // 3
            sh_degree_from_bases(k)
        except ValueError:
            raise ValueError(f"{path}: {n_rest} f_rest_* properties make {k} SH coefficients per colour channel "
                             f"(1 + {n_rest} / 3); a 3DGS PLY has 0, 9, 24 or 45 of them (SH degree 0-3)") from None
        missing_rest = [f"f_rest_{i}" for i in range(n_rest) if f"f_rest_{i}" not in props]
        if missing_rest:
            raise ValueError(f"{path}: f_rest properties are not numbered 0..{n_rest - 1}: missing {missing_rest[:3]}")

        def col(name: str) -> np.ndarray:
            return np.asarray(data[name], dtype=np.float64)

        means = np.stack([col("x"), col("y"), col("z")], axis=1)
        sh = np.zeros((n, k, 3), np.float64)
        sh[:, 0, :] = np.stack([col(f"f_dc_{c}") for c in range(3)], axis=1)
        if k > 1:
            rest = np.stack([col(f"f_rest_{i}") for i in range(n_rest)], axis=1)
            sh[:, 1:, :] = rest.reshape(n, 3, k - 1).transpose(0, 2, 1)
        logit = col("opacity")
        log_scales = np.stack([col(f"scale_{i}") for i in range(3)], axis=1)
        quats = np.stack([col(f"rot_{i}") for i in range(4)], axis=1)
        for name, raw in (("opacity", logit), ("scale", log_scales), ("rot", quats), ("xyz", means), ("f_*", sh)):
            bad = ~np.isfinite(raw)
            if bad.any():
                rows = np.flatnonzero(bad.reshape(n, -1).any(axis=1))
                raise ValueError(f"{path}: {rows.size} of {n} Gaussians have NaN/inf in '{name}' (first at {rows[0]})")
        with np.errstate(over="ignore"):
            opacities = 1.0 / (1.0 + np.exp(-logit))
            scales = np.exp(log_scales)
        beyond = np.flatnonzero((np.abs(np.concatenate([means, sh.reshape(n, -1)], axis=1)) > _FLOAT32_MAX).any(axis=1))
        if beyond.size:  # (a double's 1e39 became inf in float32, said as "NaN or infinite")
            raise ValueError(f"{path}: {beyond.size} of {n} Gaussians have a position or colour beyond float32's range "
                             f"(first at {beyond[0]}); the scene is stored as float32")
        tiny = np.flatnonzero((scales < _FLOAT32_TINY).any(axis=1))
        if tiny.size:  # (a log-scale of -120 underflowed to 0, said as "a non-positive scale")
            raise ValueError(f"{path}: {tiny.size} of {n} Gaussians have a scale below float32's smallest normal "
                             f"number (first at {tiny[0]}: log-scale {log_scales[tiny[0]].min():.4g}); drop or "
                             f"enlarge them")
        huge = scales > MAX_PLY_SCALE_M
        if huge.any():
            rows = np.flatnonzero(huge.any(axis=1))
            raise ValueError(f"{path}: {rows.size} of {n} Gaussians have a scale above {MAX_PLY_SCALE_M:g} m (first at "
                             f"{rows[0]}: {scales[rows[0]].max():.3g} m); the renderers' float32 projection cannot draw "
                             f"one that large (drop or shrink them)")
        labels = _integer_column(data, "semantic", np.uint8, path) if "semantic" in props else None
        instance = _integer_column(data, "instance", np.int32, path) if "instance" in props else None
        try:
            return cls(
                means.astype(np.float32),
                quats.astype(np.float32),
                scales.astype(np.float32),
                opacities.astype(np.float32),
                sh.astype(np.float32),
                labels,
                instance,
            )
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


@dataclass(frozen=True, eq=False)
class PlacedScene:
    """A scene in its local frame and the rigid pose that places it in the world (an agent at this tick).

    Renderers that can (the CPU backend) fold the pose into the view transform, so
    nothing is copied per tick; others call `materialize()`.
    """

    scene: GaussianScene
    pose_local_to_world: np.ndarray  # [4, 4] rigid

    def __post_init__(self) -> None:
        if not isinstance(self.scene, GaussianScene):
            raise ValueError(f"PlacedScene.scene must be a GaussianScene, got {type(self.scene).__name__}")
        pose = check_pose(self.pose_local_to_world, "PlacedScene.pose_local_to_world", atol=1e-5)
        object.__setattr__(self, "pose_local_to_world", pose)

    def __len__(self) -> int:
        return len(self.scene)

    def materialize(self) -> GaussianScene:
        """The scene moved into the world frame (a copy)."""
        return self.scene.transformed(self.pose_local_to_world)


def _integer_column(data, name: str, dtype, path: str) -> np.ndarray:
    """An integer PLY property cast to dtype, refusing values it cannot hold exactly."""
    raw = np.asarray(data[name], dtype=np.float64)
    info = np.iinfo(dtype)
    bad = ~np.isfinite(raw) | (raw != np.round(raw)) | (raw < info.min) | (raw > info.max)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(f"{path}: {rows.size} of {raw.size} Gaussians have a '{name}' value that is not an "
                         f"integer in [{info.min}, {info.max}] (first at {rows[0]}: {raw[rows[0]]})")
    return raw.astype(dtype)


def rotmat_to_quat(rot: np.ndarray) -> np.ndarray:
    """[3, 3] rotation -> [4] unit quaternion (w, x, y, z), w >= 0."""
    m = rot
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q, np.float64)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def rotmats_to_quats(m: np.ndarray) -> np.ndarray:
    """[M, 3, 3] rotations -> [M, 4] unit quaternions (w, x, y, z), w >= 0: rotmat_to_quat for many, vectorised."""
    assert m.ndim == 3 and m.shape[1:] == (3, 3), m.shape
    d0, d1, d2 = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]

    def root(x: np.ndarray) -> np.ndarray:
        return np.sqrt(np.clip(x, 0, None)) / 2

    q = np.stack([root(1.0 + d0 + d1 + d2),
                  np.copysign(root(1.0 + d0 - d1 - d2), m[:, 2, 1] - m[:, 1, 2]),
                  np.copysign(root(1.0 - d0 + d1 - d2), m[:, 0, 2] - m[:, 2, 0]),
                  np.copysign(root(1.0 - d0 - d1 + d2), m[:, 1, 0] - m[:, 0, 1])], axis=1)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of [.., 4] (w, x, y, z) quaternions (broadcasting)."""
    aw, ax, ay, az = (a[..., i] for i in range(4))
    bw, bx, by, bz = (b[..., i] for i in range(4))
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def quats_to_rotmats(quats: np.ndarray) -> np.ndarray:
    """[N, 4] (w, x, y, z) quaternions (any norm > 0) -> [N, 3, 3] rotation matrices (float64)."""
    assert quats.ndim == 2 and quats.shape[1] == 4, quats.shape
    q = quats.astype(np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    return np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        axis=1,
    ).reshape(-1, 3, 3)
