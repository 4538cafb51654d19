"""Warnings about a drive log that reads cleanly but will reconstruct badly.

`read_drive_log` refuses what cannot be used (a missing image, a NaN or non-rigid pose, mismatched sizes). Some logs
pass every one of those checks and still make a poor scene without a word, most often a log written from a real
car's data in a convention a step away from this one's; a new user's trial found each of these (2026-12-05):

- poses in a geodetic frame (UTM, ENU with a far origin): a scene stores positions as float32, whose steps at
  5,400 km are half a metre, so the reconstruction comes out on a coarse grid;
- camera axes in the OpenCV convention written as `transform_matrix` (which takes OpenGL's, as nerfstudio): every
  camera looks the right way but upside down;
- a world whose up axis is not +z (the frame is FLU: x forward, y left, z up);
- every view at one position: nothing to triangulate from;
- intrinsics at the top of transforms.json and different ones in frames: the top-level ones apply to every frame
  (nerfstudio's rule, which the reader follows), so the frames' own are silently ignored.

`drive_log_warnings` (of the cameras read) and `ignored_intrinsics_warnings` (of the transforms.json object) return
one line per problem (empty for a sound log); `read_drive_log` issues them as `DriveLogWarning`s, so a script and the
command line both see them.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from neural_sensor.camera import Camera

FAR_FROM_ORIGIN_M = 20_000.0  # camera centres beyond this: float32 positions step by > 1 mm there
MIN_SPREAD_M = 0.5  # every camera centre within this of the first: the views cannot be triangulated
UPSIDE_DOWN_Z = 0.5  # the median camera's image-down axis points this far UP in the world: upside down
LEVEL_Z = 0.5  # ... and at most this far down (nor up): the world's up axis is not z
MIN_SEEN_AROUND_DEG = 270.0  # the log's cameras see less of the circle around the ego than this: said
MAX_VIEW_GAP_M = 10.0  # a camera's consecutive views farther apart than this (median): said. The network matches
#   each view against its neighbours and was trained on drives recorded every 4 m: the lane_change drive recorded
#   every 8 / 12 / 18 m reconstructed to 231k / 161k / 13k Gaussians (2026-12-07, a new user's trial)


class DriveLogWarning(UserWarning):
    """A drive log that reads but will likely reconstruct badly (see `drive_log_warnings`). str(): the message
    naming the log; `problem`: the problem alone (a cached scene's warnings are said again under the folder the
    log is read from now, not the one it was first built from)."""

    def __init__(self, message: str, problem: str | None = None) -> None:
        super().__init__(message)
        self.problem = message if problem is None else problem


def drive_log_warnings(cameras: list[Camera], sensor_ids=None, poses_ego_to_world=None,
                       frame_indices=None) -> list[str]:
    """One line per likely problem of a log's cameras (OpenCV axes in an FLU world, as `read_drive_log` gives them).

    Args: cameras: the log's V >= 1 cameras; sensor_ids: V camera names (None or None entries: one camera), so that
        a rig's cameras at one station do not count as a drive; poses_ego_to_world: V ego poses [4, 4] (FLU; None
        or None entries where the log gives none), which hint at a z-down world; frame_indices: V station indices
        (None or None entries where unknown): the views of one station are one rig, whose cameras' coverage of
        the circle around the car is checked.
    Returns: the problems found, worded for the user (empty when none).
    """
    assert len(cameras) >= 1 and (sensor_ids is None or len(sensor_ids) == len(cameras)), (len(cameras), sensor_ids)
    assert poses_ego_to_world is None or len(poses_ego_to_world) == len(cameras), len(poses_ego_to_world)
    assert frame_indices is None or len(frame_indices) == len(cameras), len(frame_indices)
    egos = [np.asarray(p, dtype=np.float64) for p in (poses_ego_to_world or []) if p is not None]
    # the ego's up axis (FLU: its z, the pose's third column) in the world: +1 in a z-up world with FLU ego poses
    ego_up_z = float(np.median([p[2, 2] for p in egos])) if egos else None
    ego_down = ego_up_z is not None and ego_up_z < -LEVEL_Z
    poses = np.stack([c.pose_camera_to_world for c in cameras])
    centres = poses[:, :3, 3]
    problems = []
    far = float(np.abs(centres).max())
    if far > FAR_FROM_ORIGIN_M:
        step_m = float(np.spacing(np.float32(far)))
        problems.append(f"camera centres lie up to {far / 1000:.0f} km from the world origin, where the scene's "
                        f"float32 positions step by {step_m * 100:.1f} cm: subtract a local origin (e.g. the first "
                        "pose's position) from every transform_matrix and pose_ego_to_world")
    # OpenCV camera axes: column 1 is the image's down direction; level cameras in a z-up world have it at z = -1
    down_z = float(np.median(poses[:, 2, 1]))
    opencv_axes = ("transform_matrix takes OpenGL camera axes (x right, y up, z backwards, as nerfstudio); poses "
                   "with OpenCV axes (y down, z forwards) need a right-multiplication by diag(1, -1, -1, 1)")
    z_down = ("the world's z points down (a NED frame), which needs the world turned z up: every transform_matrix "
              "and pose_ego_to_world left-multiplied by diag(1, -1, -1, 1)")
    if down_z > UPSIDE_DOWN_Z and ego_down:  # both readings fit: say the likelier first
        problems.append(f"the cameras look upside down (their image-down axis points up, median z {down_z:+.2f}) "
                        f"and the ego's up axis (pose_ego_to_world's third column) points down (median z "
                        f"{ego_up_z:+.2f}): most likely {z_down}; or, if the ego poses use a z-down body frame "
                        f"(FRD; the log takes FLU), {opencv_axes}")
    elif down_z > UPSIDE_DOWN_Z:
        problems.append(f"the cameras look upside down (their image-down axis points up, median z {down_z:+.2f}): "
                        + opencv_axes + ("" if egos else f"; or, if the camera axes are OpenGL's, {z_down}"))
    elif ego_down:  # level cameras: an FRD ego (harmless, nothing else reads it) or a NED world AND OpenCV axes
        problems.append(f"the ego's up axis (pose_ego_to_world's third column) points down (median z "
                        f"{ego_up_z:+.2f}) while the cameras look level: if the ego poses use a z-down body frame "
                        "(FRD), turn them to FLU (right-multiply by diag(1, -1, -1, 1)); if the world is z-down "
                        f"(NED), the camera axes were flipped too: {z_down}, and {opencv_axes}")
    elif abs(down_z) < LEVEL_Z:
        problems.append(f"the cameras' image-down axis is not along the world's -z (median z {down_z:+.2f}): the "
                        "world frame must have z up (x forward, y left, z up); a y-up world needs rotating first")
    seen_deg = _degrees_seen_around(cameras, frame_indices, sensor_ids) if abs(down_z) >= LEVEL_Z else None
    if seen_deg is not None and seen_deg < MIN_SEEN_AROUND_DEG:
        problems.append(f"the log's cameras see {seen_deg:.0f} of the 360 degrees around the car: what none "
                        "of them saw is missing from the scene (a rig camera that looks there sees sky), and "
                        "the reconstructor, trained on six cameras all around (the nuScenes-like rig), draws "
                        "the road just before a front-only log's cameras faint")
    names = [None] * len(cameras) if sensor_ids is None else sensor_ids
    ids = np.array(["" if s is None else str(s) for s in names])
    spread = max(float(np.linalg.norm(centres[ids == i] - centres[ids == i][0], axis=1).max()) for i in np.unique(ids))
    overall = float(np.linalg.norm(centres - centres[0], axis=1).max())
    default_names = len(ids) > 1 and [str(i) for i in ids] == [f"cam{k}" for k in range(len(ids))]
    if spread < MIN_SPREAD_M and default_names and overall >= MIN_SPREAD_M:
        # write_drive_log's default names (cam<i>, a camera per view): this was said as "one station"
        problems.append(f"every view of the log has a camera of its own (cam0 ... cam{len(ids) - 1}, "
                        "write_drive_log's names when it is given no camera_names), so no camera is seen to move, "
                        f"though the views lie up to {overall:.1f} m apart: name each view's sensor (camera_names; "
                        "the frames' \"camera\" key) so that the views of one camera are grouped (if they are one "
                        "rig's cameras at a single position, the log holds one station: nothing to triangulate from)")
    elif spread < MIN_SPREAD_M:
        problems.append(f"no camera of the log moves more than {spread:.2f} m: a reconstruction triangulates "
                        "from views taken at different positions along a drive (this log holds one station)")
    gap_m = _median_view_gap_m(centres, ids, frame_indices)
    if gap_m is not None and gap_m > MAX_VIEW_GAP_M:
        problems.append(f"a camera's consecutive views lie {gap_m:.1f} m apart (the median): the reconstructor "
                        "matches each view against its neighbours and was trained on drives recorded every 4 m; "
                        "views 12 m apart give a thin scene and 18 m apart an almost empty one: keep a view every "
                        f"4-{MAX_VIEW_GAP_M:g} m (`record-drive --step`)")
    return problems


def _median_view_gap_m(centres: np.ndarray, ids: np.ndarray, frame_indices) -> float | None:
    """The median distance (m) between each camera's consecutive views (in station order where frame_indices
    gives it, else in the log's order); None where no camera has two views."""
    order = np.arange(len(ids)) if frame_indices is None else np.array(
        [np.inf if f is None else float(f) for f in frame_indices])
    gaps = []
    for sensor in np.unique(ids):
        views = np.flatnonzero(ids == sensor)
        views = views[np.argsort(order[views], kind="stable")]
        gaps.extend(np.linalg.norm(np.diff(centres[views], axis=0), axis=1))
    return float(np.median(gaps)) if gaps else None


def _degrees_seen_around(cameras: list[Camera], frame_indices, sensor_ids) -> float | None:
    """The median over the log's stations (views of one frame index) of how many of the 360 degrees of yaw about
    the world's z their cameras' horizontal fields of view cover (1 degree bins; no ego pose needed); None where
    stations cannot be told (no frame indices, or several named cameras but never two views at one index)."""
    stations: dict = {}
    for camera, index in zip(cameras, frame_indices or [None] * len(cameras)):
        if index is not None:
            stations.setdefault(index, []).append(camera)
    named = {str(s) for s in (sensor_ids or []) if s is not None}
    if not stations or (max(len(views) for views in stations.values()) < 2 and len(named) > 1):
        return None
    counts = []
    for views in stations.values():
        seen = np.zeros(360, dtype=bool)
        for camera in views:
            axis = camera.pose_camera_to_world[:3, 2]  # OpenCV z: the optical axis
            yaw_deg = math.degrees(math.atan2(axis[1], axis[0]))
            half_deg = math.degrees(math.atan2(0.5 * camera.width, float(camera.K[0, 0])))
            offsets = np.arange(-math.floor(half_deg), math.floor(half_deg) + 1)
            seen[np.round(yaw_deg + offsets).astype(int) % 360] = True
        counts.append(int(seen.sum()))
    return float(np.median(counts)) if counts else None


def ignored_intrinsics_warnings(transforms: dict, keys: Sequence[str]) -> list[str]:
    """One line when frames give intrinsics that differ from the top-level ones, which win (nerfstudio's rule).

    Args: transforms: the transforms.json object as read (its "frames" a list of objects); keys: the intrinsic keys
        (fl_x, fl_y, cx, cy, w, h). A frame's value differs when it is not a number within one part in a million of
        the top-level one (a null one counts as absent).
    Returns: the problem (naming how many frames, and the first frame's first such key and both values), or [].
    """
    top = {key: transforms[key] for key in keys if key in transforms}
    ignored = []  # (frame, key) of each frame's first overridden intrinsic
    for i, frame in enumerate(transforms["frames"]):
        for key, value in top.items():
            if frame.get(key) is not None and not _same_number(frame[key], value):
                ignored.append((i, key))
                break
    if not ignored:
        return []
    (i, key), count = ignored[0], len(ignored)
    return [f"frame {i}'s {key} {transforms['frames'][i][key]!r} is ignored: the top-level {key} {top[key]!r} applies "
            f"to every frame (nerfstudio's rule); {count} of {len(transforms['frames'])} frames give intrinsics that "
            "differ from the top-level ones (remove the top-level ones to use each frame's own)"]


def is_json_number(value, finite: bool = False) -> bool:
    """A JSON number as json.load gives it (an int or a float, not true / false, which Python counts as ints);
    finite: NaN and infinities (json.load reads them) refused too."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and (not finite or math.isfinite(value))


def _same_number(a, b) -> bool:
    return is_json_number(a) and is_json_number(b) and math.isclose(a, b, rel_tol=1e-6)
