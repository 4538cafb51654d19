"""A leaderboard agent's GNSS, IMU, speedometer and map, computed from the run's world snapshots.

A CARLA leaderboard agent's `sensors()` usually lists, besides its cameras, a
`sensor.other.gnss`, a `sensor.other.imu` and the leaderboard's own
`sensor.speedometer` (a map track's agent also a `sensor.opendrive_map`). The
neural sensor renders the cameras; these are computed here from the ego's pose
in each tick's WorldSnapshot, the way the CARLA server computes them (the GNSS
as CARLA up to 0.9.15 by default: see below), and handed to `run_step` in the
leaderboard's SensorInterface format (`input_data[id] = (frame, data)`):

- gnss: float64 [latitude deg, longitude deg, altitude m] of the sensor's mount, through the map's
  geoReference: by default as CARLA up to 0.9.15 and the leaderboard's route GPS project it (`geo_projection`
  "leaderboard"), or, asked for, as the 0.9.16 server does ("carla-0.9.16": libcarla's GeoProjection through the
  `carla` package, CARLA's +y to the north, against the route and the compass: carla-simulator/carla#9389).
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


GNSS_PROJECTIONS = ("leaderboard", "carla-0.9.16")  # a GNSS's latitude / longitude (see geo_projection)
# the leaderboard reads these keys of each pseudo sensor's dict (leaderboard_evaluator's setup_sensors): a KeyError
REQUIRED_KEYS = {"sensor.other.gnss": ("x", "y", "z"), "sensor.other.imu": ("x", "y", "z", "roll", "pitch", "yaw"),
                 "sensor.speedometer": ("reading_frequency",), "sensor.opendrive_map": ("reading_frequency",)}


def leaderboard_latlon_ref(opendrive: str) -> tuple[float, float]:
    """A map's reference latitude and longitude as the leaderboard reads them (route_manipulation._get_latlon_ref,
    and libcarla up to 0.9.15): +lat_0 and +lon_0 of its geoReference, 42 and 2 where absent."""
    import xml.etree.ElementTree as ET

    lat_ref, lon_ref = 42.0, 2.0
    header = ET.fromstring(opendrive).find("header")
    reference = header.find("geoReference") if header is not None else None
    for item in ((reference.text or "") if reference is not None else "").split(" "):
        if "+lat_0" in item:
            lat_ref = float(item.split("=")[1])
        if "+lon_0" in item:
            lon_ref = float(item.split("=")[1])
    return lat_ref, lon_ref


def leaderboard_gps(lat_ref: float, lon_ref: float, x_m: float, y_m: float, z_m: float) -> dict:
    """A CARLA location (UE axes, metres) as the leaderboard's route GPS {"lat", "lon", "z"}
    (route_manipulation._location_to_gps; libcarla's GeoLocation::Transform up to 0.9.15 is the same Mercator about
    lat_ref, CARLA's -y to the north)."""
    radius_m = 6378137.0
    scale = math.cos(math.radians(lat_ref))
    mx = scale * lon_ref * math.pi * radius_m / 180.0 + x_m
    my = scale * radius_m * math.log(math.tan((90.0 + lat_ref) * math.pi / 360.0)) - y_m
    lon = mx * 180.0 / (math.pi * radius_m * scale)
    lat = 360.0 * math.atan(math.exp(my / (radius_m * scale))) / math.pi - 90.0
    return {"lat": lat, "lon": lon, "z": z_m}


def geo_projection(opendrive: str, projection: str = "leaderboard"):
    """The geolocation function (CARLA x, y, z m -> latitude deg, longitude deg, altitude m) of a GNSS on an OpenDRIVE
    map. "leaderboard": CARLA up to 0.9.15's, which is the leaderboard's route GPS (`leaderboard_gps`): route, GNSS
    and compass agree, as the leaderboard 2.x agents were built for. "carla-0.9.16": libcarla 0.9.16's GeoProjection,
    through the `carla` package's `carla.Map.transform_to_geolocation` (the 0.9.16 server's GNSS code path), which
    puts CARLA's +y to the north (carla-simulator/carla#9389): against the route and the compass, mirrored.
    ValueError for another name, or for "carla-0.9.16" where the package is missing."""
    if projection not in GNSS_PROJECTIONS:
        raise ValueError(f"gnss projection must be one of {GNSS_PROJECTIONS}, got {projection!r}")
    if projection == "leaderboard":
        lat_ref, lon_ref = leaderboard_latlon_ref(opendrive)

        def mercator(x_m: float, y_m: float, z_m: float) -> tuple[float, float, float]:
            gps = leaderboard_gps(lat_ref, lon_ref, float(x_m), float(y_m), float(z_m))
            return gps["lat"], gps["lon"], gps["z"]
        return mercator
    try:
        import carla
    except ImportError:
        raise ValueError("the carla-0.9.16 GNSS projection is libcarla's own, through the CARLA client package, "
                         "which is not installed: pip install carla==0.9.16") from None
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

    sensors: leaderboard dicts of the PSEUDO_SENSOR_TYPES (id, type, and the keys the leaderboard reads,
    REQUIRED_KEYS: x, y, z (and an IMU's roll, pitch, yaw) in UE metres and degrees, a GNSS's rotation 0 as the
    leaderboard spawns it). opendrive: the world's map (for the GNSS and the map). gnss_projection: one of
    GNSS_PROJECTIONS (`geo_projection`)."""

    def __init__(self, sensors: Sequence[Mapping], opendrive: str | None = None,
                 gnss_projection: str = "leaderboard"):
        self.sensors = []
        for sensor in sensors:
            if "id" not in sensor:  # (the leaderboard reads sensor["id"])
                raise ValueError(f"a {sensor['type']} sensor: missing key 'id'")
            name = sensor["id"]
            missing = [k for k in REQUIRED_KEYS[sensor["type"]] if k not in sensor]
            if missing:  # (the leaderboard: a KeyError; a default of 0 would put the sensor somewhere else)
                raise ValueError(f"sensor {name!r} ({sensor['type']}): missing keys {missing}")
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
            self._geolocation = geo_projection(opendrive, gnss_projection)
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
