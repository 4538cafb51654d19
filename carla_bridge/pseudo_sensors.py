"""A leaderboard agent's GNSS, IMU, speedometer and map, computed from the run's world snapshots.

A CARLA leaderboard agent's `sensors()` usually lists, besides its cameras, a
`sensor.other.gnss`, a `sensor.other.imu` and the leaderboard's own
`sensor.speedometer` (a map track's agent also a `sensor.opendrive_map`). The
neural sensor renders the cameras; these are computed here from the ego's pose
in each tick's WorldSnapshot, the way the CARLA 0.9.16 server computes them
(carla-simulator/carla#9389: its GNSS puts CARLA's +y to the north), and handed
to `run_step` in the leaderboard's SensorInterface format (`input_data[id] =
(frame, data)`):

- gnss: float64 [latitude deg, longitude deg, altitude m] of the sensor's mount, through the map's
  geoReference by libcarla's own projection (`carla.Map.transform_to_geolocation` of the `carla` package,
  which a GNSS therefore needs; the server's sensor projects with the same code).
- imu: float64 [accelerometer x, y, z m/s^2, gyroscope x, y, z rad/s, compass rad], in the sensor's
  UE axes (x forward, y right, z up) as the server's InertialMeasurementUnit: the acceleration is the
  second derivative of the mount's location over the last three ticks (the server's quadratic
  interpolation) plus 9.81 m/s^2 up; the gyroscope is the vehicle's angular velocity in its own axes
  (left-handed, as UE's: a right turn is +z), turned by the mount's rotation; the compass is the angle of
  the sensor's forward direction from north (CARLA's north is -y), clockwise, in [0, 2 pi).
- speedometer: {"speed": m/s} along the vehicle's heading (negative when reversing), as the
  leaderboard's SpeedometerReader.
- opendrive_map: {"opendrive": the world's OpenDRIVE text}, as the leaderboard's OpenDriveMapReader (every
  tick: its reading_frequency is not applied).

Differences from a server, said plainly: the readings are exact (the leaderboard's noise settings are
not applied); the angular velocity is the rotation between two ticks over their time, not the physics
engine's instantaneous one; the accelerometer's first two readings are gravity alone (a server's first
two after a sensor's spawn are start-up artefacts of its three-point formula).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from carla_bridge.transforms import flu_to_ue, ue_matrix

PSEUDO_SENSOR_TYPES = ("sensor.other.gnss", "sensor.other.imu", "sensor.speedometer", "sensor.opendrive_map")
GRAVITY_MPS2 = 9.81  # as the server's InertialMeasurementUnit


def geo_projection(opendrive: str):
    """The geolocation function (CARLA x, y, z m -> latitude deg, longitude deg, altitude m) of an OpenDRIVE map:
    libcarla's own, through the `carla` package's `carla.Map.transform_to_geolocation` (the server's GNSS sensor
    projects its location with the same GeoProjection of the same map). ValueError where the package is missing."""
    try:
        import carla
    except ImportError:
        raise ValueError("a sensor.other.gnss is computed through the CARLA client package's map projection, which "
                         "is not installed: pip install carla==0.9.16") from None
    carla_map = carla.Map("gnss", opendrive)

    def geolocation(x_m: float, y_m: float, z_m: float) -> tuple[float, float, float]:
        g = carla_map.transform_to_geolocation(carla.Location(float(x_m), float(y_m), float(z_m)))
        return g.latitude, g.longitude, g.altitude
    return geolocation


def split_sensors(sensors: Sequence[Mapping]) -> tuple[list[Mapping], list[Mapping]]:
    """An agent's sensor dicts as (cameras and anything else, the pseudo sensors this module computes), in order."""
    others = [s for s in sensors if isinstance(s, Mapping) and s.get("type") in PSEUDO_SENSOR_TYPES]
    return [s for s in sensors if not (isinstance(s, Mapping) and s.get("type") in PSEUDO_SENSOR_TYPES)], others


class PseudoSensors:
    """The GNSS / IMU / speedometer readings of an agent's pseudo-sensor dicts, tick by tick (see the module).

    sensors: leaderboard dicts of the PSEUDO_SENSOR_TYPES (id, type; x, y, z, roll, pitch, yaw in UE metres and
    degrees, 0 where absent, as the leaderboard's defaults). opendrive: the world's map (for the GNSS)."""

    def __init__(self, sensors: Sequence[Mapping], opendrive: str | None = None):
        self.sensors = []
        for sensor in sensors:
            if "id" not in sensor:  # (the leaderboard reads sensor["id"])
                raise ValueError(f"a {sensor['type']} sensor: missing key 'id'")
            name = sensor["id"]
            values = []
            for key in ("x", "y", "z", "roll", "pitch", "yaw"):
                value = sensor.get(key, 0.0)
                if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                        or not math.isfinite(value):
                    raise ValueError(f"sensor {name!r}: {key} must be a finite number, got {value!r}")
                values.append(float(value))
            self.sensors.append((str(name), sensor["type"], ue_matrix(*values)))
        self._geolocation, self._opendrive = None, opendrive
        kinds = {kind for _, kind, _ in self.sensors}
        if opendrive is None and kinds & {"sensor.other.gnss", "sensor.opendrive_map"}:
            raise ValueError("a sensor.other.gnss or sensor.opendrive_map needs the world's OpenDRIVE map")
        if "sensor.other.gnss" in kinds:
            self._geolocation = geo_projection(opendrive)
        self._history: dict[str, list] = {name: [] for name, _, _ in self.sensors}  # (time s, location UE m)
        self._last_rotation = None  # (time s, the ego's FLU rotation) of the last tick
        self._last_xy = None  # the ego's FLU position at the last tick

    def readings(self, snapshot) -> dict[str, tuple[int, object]]:
        """{sensor id: (frame, data)} for this tick's snapshot (ticks in order; the IMU keeps the last two)."""
        ego_ue = flu_to_ue(snapshot.ego.pose_agent_to_world)
        omega_lh = self._angular_velocity_lh(snapshot)
        speed = self._forward_speed(snapshot)
        out = {}
        for name, kind, mount_ue in self.sensors:
            pose = ego_ue @ mount_ue  # the sensor's CARLA (UE) world matrix
            if kind == "sensor.speedometer":
                data = {"speed": speed}
            elif kind == "sensor.opendrive_map":
                data = {"opendrive": self._opendrive}
            elif kind == "sensor.other.gnss":
                data = np.array(self._geolocation(*pose[:3, 3]), dtype=np.float64)
            else:
                accel = self._acceleration(name, snapshot.timestamp_s, pose[:3, 3]) + np.array([0, 0, GRAVITY_MPS2])
                accel_sensor = pose[:3, :3].T @ accel  # UE's UnrotateVector
                gyro = mount_ue[:3, :3] @ omega_lh  # the server turns the vehicle's rate by the mount (RotateVector)
                forward = pose[:3, 0].copy()
                forward[2] = 0.0
                norm = float(np.linalg.norm(forward))
                compass = 0.0
                if norm > 1e-9:
                    forward /= norm
                    dot = float(-forward[1])  # CARLA's north is (0, -1, 0)
                    if dot < 1.0:
                        compass = math.acos(max(-1.0, dot))
                        if forward[0] < 0.0:  # the cross product's z: (0, -1, 0) x forward = forward.x
                            compass = 2.0 * math.pi - compass
                data = np.array([*accel_sensor, *gyro, compass], dtype=np.float64)
            out[name] = (int(snapshot.frame), data)
        return out

    def _forward_speed(self, snapshot) -> float:
        """The ego's speed along its heading: the snapshot's (signed by the embedded simulator), negative where a
        simulator that reports the magnitude (a CARLA server's velocity) moved the ego backwards since the last
        tick."""
        pose = snapshot.ego.pose_agent_to_world
        speed = float(snapshot.ego.speed_mps)
        last, self._last_xy = self._last_xy, pose[:2, 3].copy()
        if speed > 0.0 and last is not None and float(np.dot(pose[:2, 3] - last, pose[:2, 0])) < -1e-6:
            speed = -speed
        return speed

    def _acceleration(self, name: str, time_s: float, location: np.ndarray) -> np.ndarray:
        history = self._history[name]
        history.append((float(time_s), np.array(location, dtype=np.float64)))
        del history[:-3]
        if len(history) < 3:
            return np.zeros(3)
        (t2, y2), (t1, y1), (t0, y0) = history  # oldest first: the server's PrevLocation[0], [1], current
        h1, h2 = t0 - t1, t1 - t2
        if h1 <= 0.0 or h2 <= 0.0:
            return np.zeros(3)
        return -2.0 * (y1 / (h1 * h2) - y2 / (h2 * (h1 + h2)) - y0 / (h1 * (h1 + h2)))

    def _angular_velocity_lh(self, snapshot) -> np.ndarray:
        """The ego's angular velocity in its own axes, left-handed as UE's (rad/s), from the last two ticks."""
        rotation = snapshot.ego.pose_agent_to_world[:3, :3]
        last, self._last_rotation = self._last_rotation, (float(snapshot.timestamp_s), rotation.copy())
        if last is None or snapshot.timestamp_s <= last[0]:
            return np.zeros(3)
        from scipy.spatial.transform import Rotation

        relative = rotation.T @ last[1]  # body-frame rotation from now back to the last tick
        omega_rh = -Rotation.from_matrix(relative).as_rotvec() / (snapshot.timestamp_s - last[0])
        return np.array([-omega_rh[0], omega_rh[1], -omega_rh[2]])  # an axial vector across the y flip
