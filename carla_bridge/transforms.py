"""The only place that knows CARLA's frame: left-handed Unreal axes (x forward, y right, z up), degrees.

A CARLA transform (x, y, z, roll, pitch, yaw) has the matrix that
`carla.Transform.get_matrix()` returns, M_ue = [R | t] with
R = Rz(yaw) Ry(-pitch) Rx(-roll) in CARLA's convention. The right-handed FLU
world of this project is S M_ue S with S = diag(1, -1, 1, 1). A camera's UE
axes (x forward, y right, z up) map to OpenCV axes (x right, y down, z forward)
as (x, y, z) -> (y, -z, x).
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Mapping, Sequence

import numpy as np

from neural_sensor.rig import SensorSpec

_S = np.diag([1.0, -1.0, 1.0, 1.0])
_OPENCV_FROM_UE = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])  # UE axes -> OpenCV axes
LEADERBOARD_SENSOR_KEYS = ("id", "x", "y", "z", "roll", "pitch", "yaw", "width", "height", "fov")


def ue_matrix(x: float, y: float, z: float, roll_deg: float, pitch_deg: float, yaw_deg: float) -> np.ndarray:
    """[4, 4] as carla.Transform(Location(x, y, z), Rotation(pitch, yaw, roll)).get_matrix() gives it."""
    cy, sy = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    cr, sr = math.cos(math.radians(roll_deg)), math.sin(math.radians(roll_deg))
    cp, sp = math.cos(math.radians(pitch_deg)), math.sin(math.radians(pitch_deg))
    return np.array([
        [cp * cy, cy * sp * sr - sy * cr, -cy * sp * cr - sy * sr, x],
        [cp * sy, sy * sp * sr + cy * cr, -sy * sp * cr + cy * sr, y],
        [sp, -cp * sr, cp * cr, z],
        [0.0, 0.0, 0.0, 1.0],
    ])


def flu_poses_from_ue(values: np.ndarray) -> np.ndarray:
    """[N, 6] (x, y, z, roll, pitch, yaw) CARLA transforms (UE, degrees) -> [N, 4, 4] FLU poses, vectorised:
    for each row, ue_to_flu(ue_matrix(...)) (tested against carla.Transform.get_matrix())."""
    values = np.asarray(values, dtype=np.float64).reshape(-1, 6)
    roll, pitch, yaw = (np.radians(values[:, i]) for i in (3, 4, 5))
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    out = np.zeros((len(values), 4, 4))
    # S M S with S = diag(1, -1, 1, 1): row 1 and column 1 of the UE matrix change sign
    out[:, 0, 0], out[:, 0, 1], out[:, 0, 2] = cp * cy, -(cy * sp * sr - sy * cr), -cy * sp * cr - sy * sr
    out[:, 1, 0], out[:, 1, 1], out[:, 1, 2] = -(cp * sy), sy * sp * sr + cy * cr, -(-sy * sp * cr + cy * sr)
    out[:, 2, 0], out[:, 2, 1], out[:, 2, 2] = sp, cp * sr, cp * cr
    out[:, 0, 3], out[:, 1, 3], out[:, 2, 3] = values[:, 0], -values[:, 1], values[:, 2]
    out[:, 3, 3] = 1.0
    return out


def ue_to_flu(matrix_ue: np.ndarray) -> np.ndarray:
    """A UE-frame pose [4, 4] as a right-handed FLU pose: S M S (row 1 and column 1 change sign)."""
    out = np.array(matrix_ue, dtype=np.float64)
    out[1, :] *= -1.0
    out[:, 1] *= -1.0
    return out


def flu_to_ue(matrix_flu: np.ndarray) -> np.ndarray:
    """Inverse of ue_to_flu (S is its own inverse)."""
    return ue_to_flu(matrix_flu)


def camera_pose_from_ue(matrix_ue: np.ndarray) -> np.ndarray:
    """pose_camera_to_<parent> (OpenCV camera axes, FLU parent) from a UE camera transform matrix."""
    pose = ue_to_flu(matrix_ue)
    out = np.eye(4)
    # FLU camera-body axes -> OpenCV: the body's x is forward, -y (FLU) is right, -z is down
    body_to_opencv = _OPENCV_FROM_UE @ _S[:3, :3]
    out[:3, :3] = pose[:3, :3] @ body_to_opencv.T
    out[:3, 3] = pose[:3, 3]
    return out


def sensor_spec_from_leaderboard(sensor: Mapping) -> SensorSpec:
    """A leaderboard sensor dict (id, x, y, z, roll, pitch, yaw, width, height, fov; UE, degrees) as a SensorSpec.
    width, height and fov may also be numeric strings, and width / height whole floats: the leaderboard sends them
    to CARLA as str(value), which CARLA parses.

    Raises ValueError naming the sensor and the missing or bad value.
    """
    if not isinstance(sensor, Mapping):
        raise ValueError(f"sensor must be a dict, got {type(sensor).__name__}")
    name = sensor.get("id", "<no id>")
    if "type" not in sensor:  # the leaderboard reads sensor["type"] (a KeyError there), so it is not assumed here
        raise ValueError(f"sensor {name!r}: missing key 'type' (an RGB camera is 'sensor.camera.rgb', as the "
                         "leaderboard requires)")
    kind = sensor["type"]
    if kind != "sensor.camera.rgb":
        raise ValueError(f"sensor {name!r}: type {kind!r} is not an RGB camera (the neural sensor renders "
                         "sensor.camera.rgb; a run also computes sensor.other.gnss, sensor.other.imu, "
                         "sensor.speedometer and sensor.opendrive_map)")
    missing = [k for k in LEADERBOARD_SENSOR_KEYS if k not in sensor]
    if missing:
        raise ValueError(f"sensor {name!r}: missing keys {missing}")
    values = {}
    for key in ("x", "y", "z", "roll", "pitch", "yaw", "fov"):
        value = sensor[key]
        if key == "fov":  # the leaderboard sends it as str(fov): CARLA parses it
            value = _number_text(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"sensor {name!r}: {key} must be a finite number, got {sensor[key]!r}")
        values[key] = float(value)
    sizes = {}
    for key in ("width", "height"):  # also as str(width) or 800.0, as the leaderboard's str() passes them on
        value = _number_text(sensor[key])
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"sensor {name!r}: {key} must be a positive integer, got {sensor[key]!r}")
        sizes[key] = int(value)
    if not 0.0 < values["fov"] < 180.0:
        raise ValueError(f"sensor {name!r}: fov must be in (0, 180) degrees, got {values['fov']}")
    matrix = ue_matrix(values["x"], values["y"], values["z"], values["roll"], values["pitch"], values["yaw"])
    return SensorSpec(str(sensor["id"]), sizes["width"], sizes["height"], values["fov"], camera_pose_from_ue(matrix))


def _number_text(value):
    """The int or float a numeric string spells ("800" -> 800, "90.0" -> 90.0); anything else as it is."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def sensor_specs_from_leaderboard(sensors: Sequence[Mapping]) -> list[SensorSpec]:
    """All cameras of an agent's `sensors()` list, in order. ValueError where it is not a list of dicts (one dict
    was read as its keys: "sensor must be a dict, got str")."""
    if isinstance(sensors, (Mapping, str, bytes)) or not isinstance(sensors, Iterable):
        raise ValueError(f"sensors() must return a list of sensor dicts (the leaderboard's), got "
                         f"{type(sensors).__name__}" + (" (one sensor: put it in a list)"
                                                         if isinstance(sensors, Mapping) else ""))
    return [sensor_spec_from_leaderboard(s) for s in sensors]


def rgb_to_bgra(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] float RGB in [0, 1] -> [H, W, 4] uint8 BGRA, alpha 255 (carla.Image raw_data layout)."""
    assert rgb.ndim == 3 and rgb.shape[2] == 3, rgb.shape
    if rgb.dtype == np.float32:  # the per-tick path: one pass in numba (same rounding as below)
        from carla_bridge._kernels import rgb_to_bgra_kernel

        out = np.empty(rgb.shape[:2] + (4,), np.uint8)
        rgb_to_bgra_kernel(np.ascontiguousarray(rgb), out)
        return out
    scaled = rgb * np.float32(255.0)  # one temporary, clipped and rounded in place (it runs every tick)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    scaled += np.float32(0.5)
    out = np.empty(rgb.shape[:2] + (4,), np.uint8)
    out[..., 0], out[..., 1], out[..., 2] = scaled[..., 2], scaled[..., 1], scaled[..., 0]
    out[..., 3] = 255
    return out


# ------------------------------------------------------- carla objects <-> poses
def pose_from_transform(transform) -> np.ndarray:
    """[4, 4] FLU pose of a carla.Transform (via its own get_matrix())."""
    return ue_to_flu(np.array(transform.get_matrix(), dtype=np.float64))


def transform_from_pose(pose_flu: np.ndarray):
    """The carla.Transform of a FLU pose [4, 4] (inverse of pose_from_transform)."""
    import carla

    m = flu_to_ue(pose_flu)
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, m[2, 0]))))
    yaw = math.degrees(math.atan2(m[1, 0], m[0, 0]))
    roll = math.degrees(math.atan2(-m[2, 1], m[2, 2]))
    return carla.Transform(carla.Location(float(m[0, 3]), float(m[1, 3]), float(m[2, 3])),
                           carla.Rotation(pitch=pitch, yaw=yaw, roll=roll))


def agent_box(bounding_box, actor_transform) -> tuple[tuple[float, float, float], np.ndarray]:
    """Our agent box from a CARLA actor: (size_m (l, w, h), pose_agent_to_world).

    CARLA's bounding box has half-size extents and a location relative to the actor (its centre);
    our agent frame sits at the centre of the box's bottom face.
    """
    ext, loc = bounding_box.extent, bounding_box.location
    size = (2.0 * float(ext.x), 2.0 * float(ext.y), 2.0 * float(ext.z))
    pose = pose_from_transform(actor_transform)
    offset = np.array([float(loc.x), -float(loc.y), float(loc.z) - float(ext.z)])  # UE -> FLU: y flips
    pose[:3, 3] += pose[:3, :3] @ offset
    return size, pose


def actor_origin_pose(bounding_box, pose_agent_to_world: np.ndarray) -> np.ndarray:
    """The actor origin pose (FLU) that puts the actor's box bottom at pose_agent_to_world (inverse of agent_box)."""
    ext, loc = bounding_box.extent, bounding_box.location
    pose = np.array(pose_agent_to_world, dtype=np.float64)
    offset = np.array([float(loc.x), -float(loc.y), float(loc.z) - float(ext.z)])
    pose[:3, 3] -= pose[:3, :3] @ offset
    return pose
