"""NeuralSensorRig: a WorldSnapshot in, one SensorFrame per camera out.

Per capture: place each agent's Gaussian asset at its pose (`compose`, the
background is not copied), render every camera (cameras of one size in one
call), and hand back rgb, depth, semantic and instance (those the rig's `outputs`
name: a rig of RGB cameras renders no median depth or labels, only rgb and the
expected depth and alpha the enhancer takes) with the snapshot's frame id and
timestamp. With an enhancer (an EnhancerClient: ZeroMQ, a deadline) every
camera of the tick goes to it in ONE request and rgb is its refined image; when it
has no answer in time (or no server is up) the raw render is delivered, and meta
says so: enhanced False and enhancer_reason. A tick is never dropped or stalled
beyond the client's deadline. Given the drive log its scene was reconstructed from
(`reference`, a `reconstruct.reference.LogReference`), each camera's request also
carries the log's nearest images of that camera warped in through the render's median
depth (the enhancer's reference input; the median depth is then rendered even for a
rig of RGB cameras). With `temporal_blend` > 0 each camera's enhanced image is blended
with its previous one reprojected through the render's depth (the median depth when the
rig renders it, else the expected depth, so the filter alone never asks the renderer for
more: gsplat keeps a rig of RGB cameras), clamped to the new image's neighbourhood
(`enhance.temporal.TemporalFilter`: temporal accumulation, as a game engine's TAA), which
steadies what the enhancer adds from tick to tick.

Sensors are `SensorSpec`s in the ego frame (FLU, metres, radians, OpenCV camera
axes). carla_bridge.transforms turns leaderboard-style sensor dicts (CARLA's UE
frame, degrees) into them: only that module knows CARLA's frame.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from neural_sensor.assets import compose, make_asset
from neural_sensor.camera import MAX_SIDE_PX, Camera
from neural_sensor.gaussians import GaussianScene
from neural_sensor.render import LOD_PX, render, resolve_backend
from neural_sensor.render._common import check_lod_px
from neural_sensor.render.upsample import check_scale
from neural_sensor.parallel import parallel_section
from neural_sensor.poses import check_pose
from neural_sensor.world import WorldSnapshot

FRAME_FIELDS = ("rgb", "depth", "semantic", "instance")  # what a SensorFrame can carry (NeuralSensorRig(outputs=))
RIG_OUTPUTS = ("rgb", "depth", "alpha", "semantic", "instance", "median_depth")  # render() outputs for all of them


def frame_fields(outputs: Sequence[str], who: str = "frame_fields") -> tuple[str, ...]:
    """The SensorFrame fields a rig fills, in FRAME_FIELDS order; "rgb" must be one, unknown names are a ValueError."""
    if isinstance(outputs, str):
        outputs = (outputs,)
    names = tuple(outputs)
    unknown = [n for n in names if n not in FRAME_FIELDS]
    if unknown or "rgb" not in names:
        raise ValueError(f"{who}: outputs must include 'rgb' and be among {FRAME_FIELDS}, got {names}")
    return tuple(n for n in FRAME_FIELDS if n in names)


def render_outputs(fields: Sequence[str]) -> tuple[str, ...]:
    """The render() outputs that fill these SensorFrame fields: rgb, expected depth and alpha always (the
    enhancer's inputs), the median depth for "depth", the labels for "semantic" / "instance"."""
    extra = {"depth": ("median_depth",), "semantic": ("semantic",), "instance": ("instance",)}
    wanted = {"rgb", "depth", "alpha"}.union(*(extra.get(f, ()) for f in fields))
    return tuple(n for n in RIG_OUTPUTS if n in wanted)


_CAMERA_FROM_FLU = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # FLU axes -> OpenCV axes


def rotation_flu(roll_rad: float, pitch_rad: float, yaw_rad: float) -> np.ndarray:
    """[3, 3] R = Rz(yaw) Ry(pitch) Rx(roll), right-handed about FLU axes (yaw left, pitch nose down)."""
    cr, sr = math.cos(roll_rad), math.sin(roll_rad)
    cp, sp = math.cos(pitch_rad), math.sin(pitch_rad)
    cy, sy = math.cos(yaw_rad), math.sin(yaw_rad)
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class SensorSpec:
    """A camera on the ego: id, image size, horizontal fov, pose (OpenCV camera -> ego FLU)."""

    sensor_id: str
    width: int
    height: int
    fov_deg: float
    pose_camera_to_ego: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.sensor_id, str) or not self.sensor_id:
            raise ValueError(f"sensor id must be a non-empty string, got {self.sensor_id!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"sensor {self.sensor_id!r}: {name} must be a positive integer, got {value!r}")
            if value > MAX_SIDE_PX:
                raise ValueError(f"sensor {self.sensor_id!r}: {name} {value} pixels is over the largest side this "
                                 f"tool renders ({MAX_SIDE_PX})")
        if isinstance(self.fov_deg, bool) or not isinstance(self.fov_deg, (int, float, np.integer, np.floating)):
            raise ValueError(f"sensor {self.sensor_id!r}: fov must be a number of degrees, got {self.fov_deg!r}")
        if not 0 < self.fov_deg < 180:  # (a numpy float is a number: np.float32(90) was refused as out of range)
            raise ValueError(f"sensor {self.sensor_id!r}: fov must be in (0, 180) degrees, got {self.fov_deg!r}")
        object.__setattr__(self, "fov_deg", float(self.fov_deg))  # a numpy number as a Python float from here on
        object.__setattr__(self, "pose_camera_to_ego",
                           check_pose(self.pose_camera_to_ego, f"sensor {self.sensor_id!r} pose_camera_to_ego"))

    @classmethod
    def mounted(cls, sensor_id: str, width: int, height: int, fov_deg: float, position_ego_m: Sequence[float],
                roll_rad: float = 0.0, pitch_rad: float = 0.0, yaw_rad: float = 0.0) -> "SensorSpec":
        """A camera at `position_ego_m` (FLU, 3 metres) looking along the ego x axis turned by roll / pitch / yaw
        (FLU, radians, each within a full turn: degrees given as radians are refused). Sizes are taken as SensorSpec
        takes them (whole numbers: 64.7 had become 64 without a word)."""
        position = np.asarray(position_ego_m, dtype=np.float64)
        if position.shape != (3,):
            raise ValueError(f"sensor {sensor_id!r}: position_ego_m must be 3 numbers (x, y, z metres), got "
                             f"{position_ego_m!r}")
        for name, angle in (("roll_rad", roll_rad), ("pitch_rad", pitch_rad), ("yaw_rad", yaw_rad)):
            if not (isinstance(angle, (int, float, np.floating)) and math.isfinite(angle)
                    and abs(angle) <= 2.0 * math.pi + 1e-9):
                raise ValueError(f"sensor {sensor_id!r}: {name} must be a finite angle within a full turn (radians), "
                                 f"got {angle!r} (degrees? math.radians converts)")
        pose = np.eye(4)
        pose[:3, :3] = rotation_flu(roll_rad, pitch_rad, yaw_rad) @ _CAMERA_FROM_FLU.T
        pose[:3, 3] = position
        return cls(sensor_id, width, height, float(fov_deg), pose)


# nuScenes-like roof rig: (id, x, y, z in the ego frame FLU metres, yaw left-positive degrees, horizontal fov degrees)
NUSCENES_LIKE_RIG = (
    ("CAM_FRONT", 1.5, 0.0, 1.6, 0.0, 70.0),
    ("CAM_FRONT_LEFT", 1.3, 0.5, 1.6, 55.0, 70.0),
    ("CAM_FRONT_RIGHT", 1.3, -0.5, 1.6, -55.0, 70.0),
    ("CAM_BACK", -1.0, 0.0, 1.6, 180.0, 110.0),
    ("CAM_BACK_LEFT", -0.8, 0.5, 1.6, 110.0, 70.0),
    ("CAM_BACK_RIGHT", -0.8, -0.5, 1.6, -110.0, 70.0),
)


def nuscenes_like_rig(width: int = 480, height: int = 270) -> list[SensorSpec]:
    """The six cameras of NUSCENES_LIKE_RIG as SensorSpecs."""
    return [SensorSpec.mounted(name, width, height, fov, (x, y, z), yaw_rad=math.radians(yaw))
            for name, x, y, z, yaw, fov in NUSCENES_LIKE_RIG]


def rig_cameras_on_path(specs: Sequence["SensorSpec"], path, s_m: float, left_m: float = 0.0) -> list[Camera]:
    """The rig's Cameras with the ego at arc length s_m of `path` (a scene.path.Path, world FLU metres, ego at
    z = 0 heading along it), moved left_m to its left: how a recorded drive and its off-path checks pose the rig."""
    from neural_sensor.world import pose_from_xyz_yaw

    xy, heading = path.at(float(s_m))
    xy = np.asarray(xy, dtype=np.float64) + left_m * np.array([-math.sin(heading), math.cos(heading)])
    ego = pose_from_xyz_yaw(xy[0], xy[1], 0.0, heading)
    return [Camera.from_fov(spec.width, spec.height, spec.fov_deg, ego @ spec.pose_camera_to_ego) for spec in specs]


@dataclass
class SensorFrame:
    """One camera's output for one tick."""

    frame: int  # the simulator's frame id, unchanged
    timestamp_s: float  # simulation time, unchanged
    sensor_id: str
    rgb: np.ndarray  # [H, W, 3] float32 >= 0, <= 1 where the scene's colours are (README, Colours)
    depth: np.ndarray | None  # [H, W] float32 camera z of the surface, metres: the median depth (where the
    #                           transmittance reaches 0.5, as a depth camera's z-buffer); the expected depth where
    #                           alpha < 0.5. None when the rig's outputs leave it out (likewise below)
    semantic: np.ndarray | None  # [H, W] uint8 CARLA labels
    instance: np.ndarray | None  # [H, W] int32 agent / object ids
    meta: dict = field(default_factory=dict)  # render_ms, compose_ms, backend, enhanced, enhancer_reason, enhance_ms


ASSET_SLACK = 16  # agents' assets kept beyond twice the agents of a tick before those of absent agents are dropped


class NeuralSensorRig:
    """Renders a rig of cameras on the ego from a Gaussian scene plus the snapshot's agents."""

    def __init__(self, scene: GaussianScene, sensors: Sequence[SensorSpec], backend: str = "auto",
                 enhancer=None, background_rgb: Sequence[float] = (0.53, 0.71, 0.92), asset_seed: int = 0,
                 lod_px: float = LOD_PX, outputs: Sequence[str] = FRAME_FIELDS, reference=None,
                 reference_views: int = 2, temporal_blend: float = 0.0, render_scale: float = 1.0,
                 assets: dict | None = None):
        """outputs: the SensorFrame fields to fill (FRAME_FIELDS; "rgb" always); the others are None and not
        rendered (a rig of RGB cameras skips the median depth and the labels: `render_outputs`).
        render_scale: in (0, 1], the fraction of the cameras' size the scene is drawn at, then upsampled
        (render(scale=); a run draws a reconstruction at RECONSTRUCTION_SCALE).
        reference: the scene's LogReference (`reconstruct.drive.scene_reference`), sent to the enhancer as each
        camera's reference (its `reference_views` nearest log images of that camera, warped in); None: none.
        temporal_blend: the weight in [0, 1) of each camera's previous enhanced image, reprojected (0: none; see the
        module docstring); only with an enhancer.
        assets: a dict the agents' Gaussian assets are kept in, to share them with other rigs (a camera rig whose
        mounts move makes a rig per mount; each making every agent's asset again cost ~20x a tick); None: the rig's
        own."""
        if not isinstance(scene, GaussianScene):
            raise ValueError(f"NeuralSensorRig: scene must be a GaussianScene, got {type(scene).__name__}")
        sensors = list(sensors)
        if not sensors:
            raise ValueError("NeuralSensorRig: no sensors")
        for sensor in sensors:
            if not isinstance(sensor, SensorSpec):
                hint = (" (a leaderboard sensor dict: carla_bridge.transforms.sensor_spec_from_leaderboard "
                        "reads one)" if isinstance(sensor, dict) else "")
                raise ValueError(f"NeuralSensorRig: sensors must be SensorSpec, got {type(sensor).__name__}{hint}")
        ids = [s.sensor_id for s in sensors]
        if len(set(ids)) != len(ids):
            raise ValueError(f"NeuralSensorRig: duplicate sensor ids in {ids}")
        if enhancer is not None and not callable(getattr(enhancer, "enhance", None)):
            raise ValueError(f"NeuralSensorRig: enhancer must have an enhance(frames) method (an EnhancerClient), "
                             f"got {type(enhancer).__name__}")
        if enhancer is not None:
            from neural_sensor.enhance.protocol import check_request_size

            check_request_size([(s.width, s.height) for s in sensors], reference is not None,
                               getattr(enhancer, "wire_dtype", "uint8"), "NeuralSensorRig")
        if reference is not None and not callable(getattr(reference, "warp", None)):
            raise ValueError(f"NeuralSensorRig: reference must be a LogReference, got {type(reference).__name__}")
        if isinstance(reference_views, bool) or not isinstance(reference_views, int) or reference_views < 1:
            raise ValueError(f"NeuralSensorRig: reference_views must be an integer >= 1, got {reference_views!r}")
        self.scene = scene
        self.sensors = sensors
        self.outputs = frame_fields(outputs, "NeuralSensorRig")
        self.reference = reference if enhancer is not None else None  # only the enhancer reads it
        self.reference_views = reference_views
        from neural_sensor.enhance.temporal import TemporalFilter

        temporal = TemporalFilter(temporal_blend)  # checks the value even when unused
        self.temporal = temporal if enhancer is not None and temporal.blend > 0.0 else None
        self.render_outputs = render_outputs(self.outputs + (("depth",) if self.reference is not None else ()))
        self.backend = resolve_backend(backend, self.render_outputs)
        if self.backend == "gsplat":  # (it failed only at the first capture)
            from neural_sensor.render import cuda_available

            if not cuda_available():
                raise ValueError("NeuralSensorRig: backend 'gsplat' needs a CUDA device and gsplat's kernels "
                                 "(pip install .[gpu]); use backend='cpu' (or 'auto') on this machine")
        self.enhancer = enhancer
        from neural_sensor.render._common import check_background

        try:  # (a bad one failed at the first capture, or as "could not convert string to float: 'r'")
            check_background(background_rgb)
        except ValueError:
            raise ValueError(f"NeuralSensorRig: background_rgb must be 3 floats in [0, 1], got {background_rgb!r}") \
                from None
        self.background_rgb = tuple(float(v) for v in background_rgb)
        self.asset_seed = asset_seed
        self.lod_px = check_lod_px(lod_px, "NeuralSensorRig")  # level of detail of the cpu backend (render(lod_px=)); 0 = exact
        self.render_scale = check_scale(render_scale, "NeuralSensorRig")  # render(scale=)
        self._assets: dict[tuple[int, int, str, tuple], GaussianScene] = {} if assets is None else assets

    def prepare(self) -> float:
        """Do now the one-off work of a first `capture`: derive what the renderer keeps per scene (its
        level-of-detail groups, covariances, chunks: `scene.derived`) by drawing the scene into one tiny camera,
        and, with an enhancer, send it one request of blank frames of the rig's sizes (the model's first call at a
        size, the shared block), and run the log's warp and the temporal accumulation once on an 8 x 8 camera,
        which loads their compiled kernels (numba's on-disk cache) or, on a fresh install, compiles them: ~4 s and
        ~2.5 s of a fresh clone's first two ticks before (2026-12-05). The run calls it while it loads: on the demo
        ~0.3 s out of its first tick when compiled. An enhancer that fails here is not an error (the first tick
        reports it). Seconds taken. Its kernels are entered as numba's threading layer allows (`parallel_section`:
        a camera spawned while another rig renders)."""
        with parallel_section():
            return self._prepare()

    def _prepare(self) -> float:
        start = time.perf_counter()
        camera = Camera.from_fov(8, 8, 90.0, np.eye(4))
        render([self.scene], [camera], backend=self.backend, background=self.background_rgb,
               outputs=self.render_outputs, lod_px=self.lod_px, scale=self.render_scale)
        depth, alpha = np.full((1, 8, 8), 10.0, np.float32), np.ones((1, 8, 8), np.float32)
        if self.reference is not None:  # a camera at the log's first view: that view is warped in
            at_view = Camera.from_fov(8, 8, 90.0, self.reference.pose_camera_to_world[0])
            self.reference.warp([str(self.reference.sensor_ids[0])], [at_view], depth, alpha, self.reference_views)
        if self.temporal is not None:  # a scratch filter: the second call blends a history in
            from neural_sensor.enhance.temporal import TemporalFilter

            scratch = TemporalFilter(self.temporal.blend)
            for _ in range(2):
                scratch.apply("prepare", camera, depth[0], alpha[0], np.full((8, 8, 3), 0.5, np.float32))
        if self.enhancer is not None:
            groups: dict[tuple[int, int], list[SensorSpec]] = {}
            for spec in self.sensors:
                groups.setdefault((spec.width, spec.height), []).append(spec)
            for (width, height), specs in groups.items():
                n = len(specs)
                lent = (self.enhancer.frame_buffers(n, height, width)
                        if len(groups) == 1 and _takes_out(self.enhancer) else None)
                rgb, depth, alpha, out = ((lent["rgb"], lent["depth"], lent["alpha"], list(lent["enhanced"]))
                                          if lent is not None else (np.empty((n, height, width, 3), np.float32),
                                                                    np.empty((n, height, width), np.float32),
                                                                    np.empty((n, height, width), np.float32), None))
                rgb.fill(0.5)
                depth.fill(10.0)
                alpha.fill(1.0)
                requests = [{"camera": s.sensor_id, "rgb": rgb[i], "depth": depth[i], "alpha": alpha[i]}
                            for i, s in enumerate(specs)]
                if self.reference is not None:  # the model's input with a reference is another size
                    for request in requests:
                        request["reference"] = np.zeros((height, width, 3), np.float32)
                        request["reference_valid"] = np.zeros((height, width), bool)
                try:
                    if _takes_out(self.enhancer):
                        self.enhancer.enhance(requests, out=out)
                    else:
                        self.enhancer.enhance(requests)
                except Exception:  # noqa: BLE001 - only a warm-up: the first tick's own request says what fails
                    pass
        return time.perf_counter() - start

    def _asset(self, agent) -> GaussianScene:
        key = (self.asset_seed, agent.agent_id, agent.kind, tuple(round(v, 3) for v in agent.size_m))
        if key not in self._assets:
            self._assets[key] = make_asset(agent.kind, instance_id=agent.agent_id, size_m=agent.size_m,
                                           seed=self.asset_seed * 7919 + agent.agent_id)
        return self._assets[key]

    def capture(self, snapshot: WorldSnapshot) -> dict[str, SensorFrame]:
        """Render every sensor for this snapshot; returns {sensor_id: SensorFrame}. Rigs capture on threads of their
        own (the CARLA bridge's); numba's kernels are entered as its threading layer allows (`parallel_section`)."""
        if not isinstance(snapshot, WorldSnapshot):
            raise TypeError(f"NeuralSensorRig.capture: expected a WorldSnapshot, got {type(snapshot).__name__}")
        with parallel_section():
            return self._capture(snapshot)

    def _capture(self, snapshot: WorldSnapshot) -> dict[str, SensorFrame]:
        start = time.perf_counter()
        parts = compose(self.scene, [(self._asset(a), a.pose_agent_to_world) for a in snapshot.agents])
        if len(self._assets) > 2 * len(snapshot.agents) + ASSET_SLACK:  # agents gone (traffic that respawns with new
            present = {a.agent_id for a in snapshot.agents}  # ids): their assets go, or each cost ~0.4 MB for good
            for key in [k for k in self._assets if k[1] not in present]:
                del self._assets[key]
        compose_ms = (time.perf_counter() - start) * 1000.0
        pose_ego = snapshot.ego.pose_agent_to_world
        frames: dict[str, SensorFrame] = {}
        groups: dict[tuple[int, int], list[SensorSpec]] = {}
        alphas: dict[str, np.ndarray] = {}
        expected_depths: dict[str, np.ndarray] = {}  # the enhancer's depth input (it was trained on the expected depth)
        references: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # the warped log, per camera
        views: dict[str, tuple[Camera, np.ndarray]] = {}  # camera and depth, for the temporal filter
        for spec in self.sensors:
            groups.setdefault((spec.width, spec.height), []).append(spec)
        lent = None  # the render's rgb / depth / alpha in the enhancer client's shared block (no copy to its worker)
        if len(groups) == 1 and _takes_out(self.enhancer):
            (width, height), = groups
            lent = self.enhancer.frame_buffers(len(self.sensors), height, width)
        for (width, height), specs in groups.items():
            cameras = [Camera.from_fov(width, height, s.fov_deg, pose_ego @ s.pose_camera_to_ego) for s in specs]
            start = time.perf_counter()
            out = render(parts, cameras, backend=self.backend, background=self.background_rgb,
                         outputs=self.render_outputs, lod_px=self.lod_px, scale=self.render_scale,
                         out=None if lent is None else {k: lent[k] for k in ("rgb", "depth", "alpha")})
            render_ms = (time.perf_counter() - start) * 1000.0
            reference_ms = 0.0
            if self.reference is not None:
                start = time.perf_counter()
                warped, valid = self.reference.warp([s.sensor_id for s in specs], cameras, out.median_depth, out.alpha,
                                                    self.reference_views)
                reference_ms = (time.perf_counter() - start) * 1000.0
                references.update((s.sensor_id, (warped[i], valid[i])) for i, s in enumerate(specs))
            for i, spec in enumerate(specs):
                frames[spec.sensor_id] = SensorFrame(
                    snapshot.frame, snapshot.timestamp_s, spec.sensor_id, out.rgb[i],
                    None if out.median_depth is None or "depth" not in self.outputs else out.median_depth[i],
                    None if out.semantic is None else out.semantic[i],
                    None if out.instance is None else out.instance[i],
                    {"render_ms": render_ms / len(specs), "compose_ms": compose_ms, "backend": out.backend,
                     "enhanced": False, "enhancer_reason": "no enhancer configured",
                     **({"reference_ms": reference_ms / len(specs)} if self.reference is not None else {})},
                )
                alphas[spec.sensor_id] = out.alpha[i]
                expected_depths[spec.sensor_id] = out.depth[i]
                if self.temporal is not None:  # the surface depth when rendered (the reference needs it)
                    views[spec.sensor_id] = (cameras[i], out.depth[i] if out.median_depth is None
                                             else out.median_depth[i])
        ordered = {spec.sensor_id: frames[spec.sensor_id] for spec in self.sensors}
        if self.enhancer is not None:
            self._enhance(ordered, alphas, expected_depths, references,
                          None if lent is None else list(lent["enhanced"]))
            if self.temporal is not None:
                start = time.perf_counter()
                for sid, frame in ordered.items():
                    if frame.meta["enhanced"]:
                        frame.rgb = self.temporal.apply(sid, views[sid][0], views[sid][1], alphas[sid], frame.rgb)
                    else:  # a raw tick between enhanced ones: the next enhanced one starts afresh
                        self.temporal.reset(sid)
                    frame.meta["temporal_ticks"] = self.temporal.history_ticks(sid)
                temporal_ms = (time.perf_counter() - start) * 1000.0
                for frame in ordered.values():
                    frame.meta["temporal_ms"] = temporal_ms / len(ordered)
        if lent is not None:  # the block is the next tick's: a frame keeps its own copy (the accumulation made one)
            for frame in ordered.values():
                if np.may_share_memory(frame.rgb, lent["rgb"]) or np.may_share_memory(frame.rgb, lent["enhanced"]):
                    frame.rgb = frame.rgb.copy()
        return ordered

    def _enhance(self, frames: dict[str, SensorFrame], alphas: dict[str, np.ndarray],
                 depths: dict[str, np.ndarray], references: dict[str, tuple[np.ndarray, np.ndarray]],
                 out: list[np.ndarray] | None = None) -> None:
        """One request with every camera (rgb, expected depth, alpha, and the warped log when there is one); the
        refined rgb into `out` (the client's lent "enhanced" arrays) or else over the render's own, or the raw
        render flagged with the reason."""
        try:
            requests = [{"camera": sid, "rgb": f.rgb, "depth": depths[sid], "alpha": alphas[sid]}
                        for sid, f in frames.items()]
            for request in requests:
                if request["camera"] in references:
                    request["reference"], request["reference_valid"] = references[request["camera"]]
            # the refined images go straight into the render's own buffers (no fresh memory each tick)
            result = (self.enhancer.enhance(requests, out=out or [f.rgb for f in frames.values()])
                      if _takes_out(self.enhancer) else self.enhancer.enhance(requests))
        except Exception as err:  # noqa: BLE001 - the tick is delivered raw whatever the enhancer did
            from neural_sensor.enhance.client import EnhancerVersionError

            if isinstance(err, EnhancerVersionError):  # a misconfiguration, not a hiccup: say it loudly
                raise
            for frame in frames.values():
                frame.meta["enhancer_reason"] = f"enhancer failed: {type(err).__name__}: {err}"
            return
        for i, frame in enumerate(frames.values()):
            frame.meta["enhance_ms"] = result.latency_ms
            if result.rgb is not None:
                frame.rgb = result.rgb[i]
                frame.meta.update(enhanced=True, enhancer_reason="", enhancer_model_ms=result.model_ms,
                                  enhancer_path=getattr(result, "path", ""))
            else:
                frame.meta["enhancer_reason"] = result.reason


def _takes_out(enhancer) -> bool:
    """Is the enhancer an EnhancerClient, whose enhance(out=) writes the buffers only for an enhanced tick? (A user's
    enhancer may have a parameter of that name that means something else: it gets the plain call.)"""
    from neural_sensor.enhance.client import EnhancerClient

    return isinstance(enhancer, EnhancerClient)
