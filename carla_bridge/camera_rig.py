"""The rig behind neural cameras: one on_tick callback, one snapshot conversion and one batched render per tick.

Every neural camera (carla_bridge/sensor.py) on one parent (or every world-fixed camera) of one world, scene
and renderer setup belongs to one `CameraRig` (`join_rig` finds or makes it). How a tick flows (libcarla's
threading, which the stand-in server reproduces): the server's world snapshot reaches the rig's `world.on_tick`
callback on a client thread after `world.tick()` has returned; the rig converts the snapshot once (the parent
is the ego, every vehicle and walker an agent), picks the cameras due this tick and queues the frame for its
worker thread, which renders every due camera in one batched call per image size (cameras with the same view
share one rendered view), lets each camera make its carla.Image (`NeuralCamera.image`) and hands it to the
camera's own delivery thread, which calls its listener, lowest frame first (as libcarla's sensor streams, each
with its own: a slow listener, one saving every image, holds up only its own camera; it had held up every camera
of the vehicle, and their next renders). A render error is logged at once (logger "carla_bridge") and kept as a
NeuralCameraError for the next call on any camera of the rig.

Drive-log reference: given the reconstruction's log, the rig asks the enhancer's hello once how many log
views it takes per camera (again after a failed hello, at most every RETRY_HELLO_S seconds) and sends them;
the enhanced images are accumulated over ticks as a run does (TEMPORAL_BLEND).
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import logging
import math
import threading
import time
import traceback
from typing import TYPE_CHECKING

import numpy as np

from carla_bridge.transforms import flu_poses_from_ue, pose_from_transform
from neural_sensor.enhance.temporal import TEMPORAL_BLEND
from neural_sensor.gaussians import GaussianScene
from neural_sensor.render import LOD_PX, backend_impl, resolve_backend
from neural_sensor.rig import FRAME_FIELDS, NeuralSensorRig, SensorSpec, frame_fields
from neural_sensor.world import AgentState, WorldSnapshot

if TYPE_CHECKING:  # the camera module imports this one
    from carla_bridge.sensor import NeuralCamera

_log = logging.getLogger("carla_bridge")
BACKLOG_WARN_FRAMES = 20  # frames queued for the worker before a warning that the cameras fall behind the ticks
PARENT_CLEARANCE_M = 0.5  # a camera this far outside its vehicle's box (on some axis) draws that vehicle
CLOSE_JOIN_S = 30.0  # close() waits this long at most for the frame in flight (a torch render cut off aborts)
RETRY_HELLO_S = 5.0  # after a failed hello, the enhancer is asked for its reference_views again after this long
HELLO_TIMEOUT_MS = 500.0
_rigs: dict[tuple, "CameraRig"] = {}
_live_rigs: set = set()  # rigs whose worker thread runs (a closed rig's may still render its last frame)
_rigs_lock = threading.Lock()
_live_lock = threading.Lock()
MAX_ASSETS = 512  # agents' assets a camera rig keeps (ids only grow where traffic respawns: cleared past this)


class NeuralCameraError(RuntimeError):
    """A neural camera could not render a frame (raised by the next call on a camera of its rig)."""


class _Delivery:
    """One camera's listener calls, on a thread of its own, in the order the images were put (started with the
    first). A listener's exception is printed and swallowed, as libcarla does; a stopped or destroyed camera's
    images are dropped. `pending` counts the images put and not yet through the listener. The camera's
    last_render_ms / last_meta are its image's while its listener runs. The thread ends once its camera is
    destroyed, or its rig closed, and its queue is through (at interpreter exit the rig joins it)."""

    def __init__(self, camera: "NeuralCamera", rig: "CameraRig"):
        self.camera = camera
        self.rig = rig
        self._cond = rig._cond  # flush() and wait_idle() wait on it
        self._queue: list = []
        self.pending = 0
        self._said_backlog = False
        self.thread: threading.Thread | None = None

    def drop(self) -> None:
        """Forget the images not yet handed to the listener (interpreter exit)."""
        with self._cond:
            self.pending -= len(self._queue)
            self._queue.clear()
            self._cond.notify_all()

    def put(self, image, meta: tuple) -> None:
        with self._cond:
            self._queue.append((image, meta))
            self.pending += 1
            backlog = len(self._queue)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, daemon=True,
                                               name=f"neural-camera-{self.camera.id}-listener")
                self.thread.neural_delivery = True
                self.thread.start()
            self._cond.notify_all()
        if backlog > BACKLOG_WARN_FRAMES and not self._said_backlog:
            self._said_backlog = True
            _log.warning("neural camera: %s %d's listener takes longer than the ticks: %d images wait for it (the "
                         "queue, and its memory, grows)", self.camera.type_id, self.camera.id, backlog)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    if not self.camera._alive or self.rig._closed:
                        self.thread = None  # (the thread ends; `put` would start another)
                        return
                    self._cond.wait(1.0)
                image, (render_ms, meta) = self._queue.pop(0)
            try:
                callback = self.camera._callback
                if callback is not None and self.camera._alive:
                    self.camera.last_render_ms, self.camera.last_meta = render_ms, meta
                    try:
                        callback(image)
                    except Exception:  # noqa: BLE001 - libcarla prints a sensor callback's exception and goes on
                        traceback.print_exc()
            finally:
                with self._cond:
                    self.pending -= 1
                    if not self._queue:
                        self._said_backlog = False
                    self._cond.notify_all()


def _on_delivery_thread() -> bool:
    """Is this thread a camera's listener thread (`_Delivery`)? What a listener would wait for runs after it."""
    return getattr(threading.current_thread(), "neural_delivery", False)


_WARMED: set = set()  # (rgb backend, all-fields backend, scale below 1) that `warm_up` has loaded in this process
_WARM_LOCK = threading.Lock()


def warm_up(scene: GaussianScene, backend: str = "auto", render_scale: float = 1.0) -> None:
    """Draw the scene into two 8 x 8 cameras (an rgb camera's outputs, and a depth and label camera's), which loads
    the renderer's compiled kernels from numba's cache or, on a fresh install, compiles them (~20 s on two cores,
    said on stderr), once per process and backend. Called at a neural camera's spawn: the first image of a fresh
    install came 5-20 s after `world.tick()` (CARLA's queue pattern, `q.get(timeout=2)`, raised queue.Empty), and a
    leaderboard run's first route failed with SensorReceivedNoData, its 10 s wait spent compiling."""
    from neural_sensor.jit_cache import RENDER_MODULES, UPSAMPLE_MODULES, announce_compiling

    scaled = render_scale < 1.0
    key = (resolve_backend(backend, ("rgb",)), resolve_backend(backend, FRAME_FIELDS), scaled)
    with _WARM_LOCK:  # (two threads spawning at once compile once)
        if key in _WARMED:
            return
        if "cpu" in key[:2]:
            announce_compiling(RENDER_MODULES + (UPSAMPLE_MODULES if scaled else ()))
        spec = SensorSpec.mounted("warm-up", 8, 8, 90.0, (0.0, 0.0, 1.6))
        for outputs in (("rgb",), FRAME_FIELDS):
            NeuralSensorRig(scene, [spec], backend=backend, outputs=outputs, render_scale=render_scale).prepare()
        _WARMED.add(key)


def join_rig(camera, world, parent, scene: GaussianScene, backend: str, background_rgb, enhancer: str | None,
             enhancer_deadline_ms: float, lod_px: float = LOD_PX, reference=None, render_scale: float = 1.0
             ) -> "CameraRig":
    """The rig `camera` (a NeuralCamera) belongs to, made on first use; the camera is added to it."""
    key = _rig_key(world, parent, scene, backend, background_rgb, enhancer, enhancer_deadline_ms, lod_px, reference,
                   render_scale)
    warm_up(scene, backend, render_scale)  # on the spawning thread, outside the lock below
    for name in {resolve_backend(backend, ("rgb",)), resolve_backend(backend, FRAME_FIELDS)}:
        backend_impl(name)  # imported on the spawning thread, not first by a worker (see backend_impl), nor under
    with _rigs_lock:  # the lock (torch's import or gsplat's load would hold up every other spawn and destroy)
        rig = _rigs.get(key)
        if enhancer is not None:  # every distinct view of the rig's cameras goes in one request a tick: one over the
            # protocol's size went raw every tick without a word (six 1920x1080 cameras)
            from neural_sensor.enhance.protocol import check_request_size

            views = {c._view_key() for c in (rig.cameras if rig is not None else []) + [camera]}
            check_request_size([view[:2] for view in views], reference is not None,
                               what=f"spawn_neural_camera ({len(views)} distinct camera view(s) on one parent with "
                                    "an enhancer)")
        if rig is None:
            rig = _rigs[key] = CameraRig(key, world, parent, scene, backend, background_rgb, enhancer,
                                         enhancer_deadline_ms, lod_px, reference, render_scale)
        rig.add(camera)
    return rig


def _kind_of(actor) -> str:
    type_id = actor.type_id
    if type_id.startswith("walker."):
        return "pedestrian"
    wheels = actor.attributes.get("number_of_wheels", "4") if hasattr(actor, "attributes") else "4"
    if str(wheels) == "2":
        return "cyclist"
    return "truck" if 2.0 * actor.bounding_box.extent.x > 6.5 else "car"


_EGO_SIZE_M = (4.5, 1.9, 1.5)


def _agent_state(agent_id: int, kind: str, size_m: tuple, pose: np.ndarray, speed_mps: float) -> AgentState:
    """An AgentState without its per-instance check: the conversion builds every pose from CARLA's angles (a
    rotation by construction), checks all of them for finiteness at once, and bounding-box sizes come from the
    server (positive). AgentState's own check costs ~7 us per agent, a third of the 2 ms tick budget at 100 actors."""
    state = object.__new__(AgentState)
    for name, value in (("agent_id", agent_id), ("kind", kind), ("size_m", size_m), ("pose_agent_to_world", pose),
                        ("speed_mps", speed_mps)):
        object.__setattr__(state, name, value)
    return state


class CameraRig:
    """Every neural camera on one parent (or every world-fixed one) of one world, scene and renderer setup:
    one on_tick callback, one snapshot conversion and one batched render per tick, a worker thread that
    delivers in frame order. Made by `join_rig` (for a NeuralCamera); see the module docstring."""

    def __init__(self, key: tuple, world, parent, scene: GaussianScene, backend: str, background_rgb,
                 enhancer: str | None, enhancer_deadline_ms: float, lod_px: float = LOD_PX, reference=None,
                 render_scale: float = 1.0):
        self.key = key
        self.reference = reference  # the drive log (LogReference) sent to an enhancer trained to take it
        self._reference_views: int | None = None  # from the enhancer's hello; None: not asked yet (or it failed)
        self._hello_failed_at = -math.inf
        self.world = world
        self.parent = parent
        self.scene = scene
        self.backend = backend
        self.lod_px = float(lod_px)
        self.render_scale = float(render_scale)  # render(scale=): the fraction of the cameras' size drawn
        self.background_rgb = tuple(background_rgb)
        self.enhancer_client = None
        self._said_raw = False  # the enhancer has not refined since the last warning
        self._said_too_large = False  # a rig of views over the enhancer's request size was said (`_rig_for`)
        if enhancer is not None:  # one client per rig: every camera of a tick goes in one request
            from neural_sensor.enhance.client import EnhancerClient

            self.enhancer_client = EnhancerClient(enhancer, deadline_ms=enhancer_deadline_ms)
        self.cameras: list["NeuralCamera"] = []
        self._actors: dict[int, tuple] = {}  # id -> (kind, size_m, box-bottom offset FLU); kind "" = not drawn
        self._rigs: dict[tuple, NeuralSensorRig] = {}
        self._assets: dict = {}  # the agents' Gaussian assets, shared by every rig made here (mounts that move)
        self._jobs: list = []  # heap of (frame, sequence, snapshot, cameras, the parent as an agent or None,
        #                            {camera: its (view key, mount FLU) at the tick})
        self._sequence = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False
        self._current: tuple = ()  # the cameras of the frame being rendered
        self._deliveries: dict = {}  # camera -> _Delivery (its listener's thread)
        self._said_backlog = False
        self.error: NeuralCameraError | None = None
        self.renders = 0  # batched render calls made (one per tick with a due, listening camera)
        self._seen_frame = _current_frame(world)  # the newest frame whose on_tick this rig has taken (or was
        #                                           made after): `catch_up` waits for a ticked frame's to run
        with _live_lock:  # (join_rig holds _rigs_lock here)
            _live_rigs.add(self)  # until its worker ends: joined at interpreter exit (`_close_rigs_at_exit`)
        self._worker = threading.Thread(target=self._run, name=f"neural-camera-rig-{id(self):x}", daemon=True)
        self._worker.start()
        self._tick_id = world.on_tick(self._on_tick)

    # ---------------------------------------------------------------- membership
    def add(self, camera: "NeuralCamera") -> None:
        with self._cond:
            self.cameras = self.cameras + [camera]

    def remove(self, camera: "NeuralCamera") -> None:
        with _rigs_lock:  # a camera joining this rig meanwhile either finds it open or makes a new one
            with self._cond:
                self.cameras = [c for c in self.cameras if c is not camera]
                self._deliveries.pop(camera, None)
                empty = not self.cameras
                self._cond.notify_all()  # (its listener thread ends once its queue is through)
            if empty and _rigs.get(self.key) is self:
                del _rigs[self.key]
        if empty:
            self.close()

    def close(self, drop_queued: bool = False) -> None:
        """Stop taking ticks and let the worker end after the frames queued (of cameras still alive); with
        drop_queued (at interpreter exit), after the one in flight, waited for (at most CLOSE_JOIN_S) even on a
        rig closed before."""
        with _rigs_lock:
            if _rigs.get(self.key) is self:
                del _rigs[self.key]
        with self._cond:
            if drop_queued:
                self._jobs.clear()
            closed_before, self._closed = self._closed, True
            self._cond.notify_all()
        if drop_queued and threading.current_thread() is not self._worker:
            deadline = time.monotonic() + CLOSE_JOIN_S
            self._worker.join(CLOSE_JOIN_S)
            with self._cond:
                deliveries = list(self._deliveries.values())
            for delivery in deliveries:  # a listener's call in progress ends (a script's end cut it off mid-call)
                delivery.drop()
                thread = delivery.thread
                if thread is not None and thread is not threading.current_thread():
                    thread.join(max(0.0, deadline - time.monotonic()))
        if closed_before:
            return
        if self._tick_id is not None:
            try:
                self.world.remove_on_tick(self._tick_id)
            except RuntimeError:  # libcarla: "trying to access an expired episode" (a new world was loaded: the
                pass  # callback went with the old one)
            self._tick_id = None
        if self.enhancer_client is not None:
            self.enhancer_client.close()
            self.enhancer_client = None

    def raise_if_failed(self) -> None:
        with self._cond:
            error, self.error = self.error, None
        if error is not None:
            raise error

    # ---------------------------------------------------------------- per tick (client stream thread)
    def _on_tick(self, world_snapshot) -> None:
        _stream.delivering = True  # (this thread is one the world's stream calls on_tick on: for `catch_up`)
        try:
            self._take_tick(world_snapshot)
        finally:  # (after the frame is queued: a camera's destroy() then flushes it)
            with self._cond:
                self._seen_frame = max(self._seen_frame, int(world_snapshot.frame))
                self._cond.notify_all()

    def catch_up(self, timeout_s: float) -> bool:
        """Wait until this rig's on_tick has taken the world's newest frame (libcarla calls it on its stream thread
        after world.tick() has returned: a destroy() or wait_idle() right after a tick came before it, and dropped
        or missed that frame); False after timeout_s, or at once when the world cannot say its frame."""
        if _on_stream_thread() or threading.current_thread() is self._worker or _on_delivery_thread():
            return True  # (a listener, or an on_tick callback, destroying a camera: what it would wait for runs on
            #             this thread, after it)
        target = _current_frame(self.world)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._seen_frame < target and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    _log.warning("neural camera: the world's frame %d did not reach the camera rig within %.0f s "
                                 "(is its stream stalled?); going on without it", target, timeout_s)
                    return False
                self._cond.wait(left)
        return True

    def _take_tick(self, world_snapshot) -> None:
        timestamp_s = float(world_snapshot.timestamp.elapsed_seconds)
        due = [camera for camera in self.cameras if camera._due(timestamp_s)]
        due = [camera for camera in due if camera._callback is not None and not camera._closing]
        if not due:
            return
        try:
            snapshot, parent = self._convert(world_snapshot)
        except Exception as err:  # noqa: BLE001 - logged now, raised by the camera at the next call
            self._fail(int(world_snapshot.frame), due, err)
            return
        with self._cond:
            placements = {camera: camera._placement for camera in due}  # each camera's mount at this tick
            heapq.heappush(self._jobs, (snapshot.frame, next(self._sequence), snapshot, due, parent, placements))
            self._cond.notify_all()
            backlog = len(self._jobs)
        if backlog > BACKLOG_WARN_FRAMES and not self._said_backlog:
            self._said_backlog = True
            _log.warning("neural camera: %d frames are queued to render: the cameras render slower than the world "
                         "ticks (the queue, and its memory, grows); wait for each tick's image before the next "
                         "world.tick() (e.g. a queue.Queue filled by the listener, get() per tick)", backlog)

    def flush(self, camera, timeout_s: float) -> int:
        """Wait until no queued, rendering or undelivered frame is for `camera` (at most timeout_s); returns the
        frames still waiting then (0 when flushed), after a warning naming them. Called from the worker or from a
        listener (destroying a camera) it waits for nothing, as when every listener ran on the worker."""
        if threading.current_thread() is self._worker or _on_delivery_thread():
            return 0  # (a listener destroying its own camera or another: what it would wait for may wait on it, as
            #          two listeners destroying each other's cameras would, each for the other)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                delivery = self._deliveries.get(camera)  # (made with its first image)
                left = (sum(camera in job[3] for job in self._jobs) + (camera in self._current)
                        + (delivery.pending if delivery is not None else 0))
                wait_s = deadline - time.monotonic()
                if not left or self._closed or wait_s <= 0:
                    break
                self._cond.wait(wait_s)
        if left:
            _log.warning("neural camera: %s %d destroyed with %d frame(s) of past ticks still to render or deliver "
                         "after %.0f s: they are dropped", camera.type_id, camera.id, left, timeout_s)
        return left

    def _refresh_actors(self, ids) -> None:
        missing = [i for i in ids if i not in self._actors]
        if not missing:
            return
        for actor in self.world.get_actors(missing):
            if actor.type_id.startswith(("vehicle.", "walker.")):
                ext, loc = actor.bounding_box.extent, actor.bounding_box.location
                size = (2.0 * float(ext.x), 2.0 * float(ext.y), 2.0 * float(ext.z))
                # the box-bottom centre in the actor frame, FLU (agent_box's offset)
                offset = (float(loc.x), -float(loc.y), float(loc.z) - float(ext.z))
                if not all(math.isfinite(v) and v > 0 for v in size):
                    _log.warning("neural camera: actor %d (%s) has bounding box %s; it is not drawn", actor.id,
                                 actor.type_id, size)
                    self._actors[actor.id] = ("", None, None)
                    continue
                self._actors[actor.id] = (_kind_of(actor), size, offset)
            else:
                self._actors[actor.id] = ("", None, None)

    def snapshot_from_carla(self, world_snapshot) -> WorldSnapshot:
        """Our WorldSnapshot from a carla.WorldSnapshot: the parent (if any) is the ego, vehicles and walkers the
        agents; a world-fixed rig has an ego at the origin that draws nothing. Vectorised over the actors (it
        runs every tick for every actor): the same poses as transforms.agent_box, checked in bulk."""
        return self._convert(world_snapshot)[0]

    def _convert(self, world_snapshot) -> tuple[WorldSnapshot, AgentState | None]:
        """`snapshot_from_carla`'s snapshot, and the parent as an agent (None for a world-fixed rig, or a parent
        that is not drawn): cameras mounted clear of it see it (`_sees_parent`)."""
        parent_id = self.parent.id if self.parent is not None else None
        if parent_id is not None:
            parent_snap = world_snapshot.find(parent_id)
            if parent_snap is None:
                raise NeuralCameraError(f"neural camera: parent actor {parent_id} is not in frame "
                                        f"{world_snapshot.frame} (destroyed?)")
            ego_pose = pose_from_transform(parent_snap.get_transform())
        else:
            ego_pose = np.eye(4)
        actor_snaps = list(world_snapshot)
        if len(self._actors) > 2 * len(actor_snaps) + 64:  # actors destroyed since (traffic that respawns with new
            present = {a.id for a in actor_snaps}  # ids): forgotten, or the table grew by one entry per actor
            self._actors = {i: entry for i, entry in self._actors.items() if i in present}
        self._refresh_actors([a.id for a in actor_snaps])
        known = self._actors
        drawn, rows = [], []
        for actor_snap in actor_snaps:
            entry = known.get(actor_snap.id)
            if entry is None or not entry[0]:
                continue
            transform = actor_snap.get_transform()
            location, rotation, velocity = transform.location, transform.rotation, actor_snap.get_velocity()
            drawn.append((actor_snap.id, entry))
            rows.append((location.x, location.y, location.z, rotation.roll, rotation.pitch, rotation.yaw,
                         velocity.x, velocity.y, velocity.z))
        agents: tuple = ()
        if drawn:
            values = np.array(rows, dtype=np.float64)
            poses = flu_poses_from_ue(values[:, :6])
            offsets = np.array([entry[2] for _, entry in drawn])
            poses[:, :3, 3] += np.einsum("nij,nj->ni", poses[:, :3, :3], offsets)
            speeds = np.sqrt(np.einsum("ni,ni->n", values[:, 6:9], values[:, 6:9]))
            if not (np.isfinite(poses).all() and np.isfinite(speeds).all()):
                bad = [i for (i, _), row in zip(drawn, rows) if not all(map(math.isfinite, row))]
                raise NeuralCameraError(f"neural camera: frame {world_snapshot.frame}: actors {bad} have "
                                        "non-finite transforms or velocities")
            agents = tuple(_agent_state(actor_id, entry[0], entry[1], pose, speed)
                           for (actor_id, entry), pose, speed in zip(drawn, poses, speeds.tolist()))
        parent = next((a for a in agents if a.agent_id == parent_id), None)
        agents = tuple(a for a in agents if a.agent_id != parent_id)
        ego = AgentState(0, "car", _EGO_SIZE_M, ego_pose, 0.0)
        return (WorldSnapshot(int(world_snapshot.frame), float(world_snapshot.timestamp.elapsed_seconds), ego, agents),
                parent)

    def _sees_parent(self, mount_flu: np.ndarray) -> bool:
        """Whether a camera mounted at `mount_flu` ([4, 4], in the parent's frame) draws the vehicle it is mounted
        on: only from PARENT_CLEARANCE_M or more outside its bounding box along some axis: a chase or a top-down
        camera sees it, as in CARLA; a roof or bumper camera at or inside the box would look into the Gaussians of
        a box-shaped asset, not the car's mesh."""
        entry = self._actors.get(getattr(self.parent, "id", None))
        if entry is None or not entry[0]:
            return False
        size, offset = np.asarray(entry[1]), np.asarray(entry[2])
        centre = offset + np.array([0.0, 0.0, 0.5 * size[2]])  # the box's centre in the parent's frame, FLU
        return bool((np.abs(mount_flu[:3, 3] - centre) > 0.5 * size + PARENT_CLEARANCE_M).any())

    # ---------------------------------------------------------------- render + delivery (worker thread)
    def _reference_views_now(self) -> int | None:
        """The log views the enhancer takes per camera (0: none; None: unknown, its hello failed lately)."""
        client = self.enhancer_client  # read once: close() may clear it from another thread
        if self.reference is None or client is None:
            return 0
        if self._reference_views is None:
            if time.monotonic() - self._hello_failed_at < RETRY_HELLO_S:
                return None
            from neural_sensor.enhance.client import EnhancerError, hello_reference_views

            try:  # the client retries a call: the attempts together stay within HELLO_TIMEOUT_MS
                hello = client.server or client.hello(
                    timeout_ms=HELLO_TIMEOUT_MS / (1 + max(0, int(getattr(client, "retries", 0)))))
            except EnhancerError as err:
                self._hello_failed_at = time.monotonic()
                _log.warning("neural camera: the enhancer's hello failed (%s); no drive-log reference until it "
                             "answers", err)
                return None
            self._reference_views = hello_reference_views(hello)
        return self._reference_views

    def _rig_for(self, views: tuple, fields: tuple) -> NeuralSensorRig:
        reference_views = self._reference_views_now()
        if reference_views is not None:  # answered: the rig made while it was unknown is done with
            for key in [k for k in self._rigs if k[2] is None]:
                del self._rigs[key]
        rig = self._rigs.get((views, fields, reference_views))
        if rig is None:
            specs = [SensorSpec(f"view{i}", w, h, fov, np.array(pose, dtype=np.float64).reshape(4, 4))
                     for i, (w, h, fov, pose) in enumerate(views)]
            if len(self._rigs) > 8:  # mounts or sizes changing all the time: keep the cache small
                self._rigs.clear()
            if len(self._assets) > MAX_ASSETS:  # (kept across rigs; ids only grow where traffic respawns)
                self._assets.clear()
            from neural_sensor.enhance.protocol import RequestTooLarge

            options = dict(backend=self.backend, background_rgb=self.background_rgb, lod_px=self.lod_px,
                           outputs=fields, render_scale=self.render_scale,
                           reference=self.reference if reference_views else None,
                           reference_views=max(1, reference_views or 0), temporal_blend=TEMPORAL_BLEND,
                           assets=self._assets)
            try:
                rig = NeuralSensorRig(self.scene, specs, enhancer=self.enhancer_client, **options)
            except RequestTooLarge as err:  # views the spawn did not see (a set_transform parted two cameras):
                # these ticks unrefined, said once, rather than every frame failing
                if not self._said_too_large:
                    self._said_too_large = True
                    _log.warning("neural camera: %s; these views are delivered unrefined", err)
                rig = NeuralSensorRig(self.scene, specs, enhancer=None, **options)
            self._rigs[(views, fields, reference_views)] = rig
        return rig

    def capture(self, snapshot: WorldSnapshot, cameras, parent: AgentState | None = None,
                placements: dict | None = None, metas: dict | None = None) -> dict:
        """{camera: NeuralImage} for every camera, from one batched render of their distinct views; `parent` (the
        vehicle they are mounted on, as an agent) is drawn for the cameras clear of its box, in a render of their
        own. placements: {camera: (view key, mount FLU)} at the frame's tick (None: now). metas: where given,
        {camera: (render ms, frame meta)} is filled in instead of setting the cameras' last_render_ms / last_meta
        (the worker: those are set as each image reaches its listener)."""
        placements = placements or {camera: camera._placement for camera in cameras}
        if parent is not None:
            seeing = [c for c in cameras if self._sees_parent(placements[c][1])]
            if seeing:
                rest = [c for c in cameras if c not in seeing]
                with_parent = WorldSnapshot(snapshot.frame, snapshot.timestamp_s, snapshot.ego,
                                            snapshot.agents + (parent,), snapshot.collisions)
                images = {**(self.capture(snapshot, rest, None, placements, metas) if rest else {}),
                          **self.capture(with_parent, seeing, None, placements, metas)}
                return {camera: images[camera] for camera in cameras}  # delivered in the cameras' order
        views, index = [], {}
        for camera in cameras:
            view = placements[camera][0]
            if view not in index:
                index[view] = len(views)
                views.append(view)
        # only what these cameras' types encode is rendered (RGB cameras alone: no median depth, no labels)
        fields = frame_fields([f for camera in cameras for f in camera.frame_fields])
        rig = self._rig_for(tuple(views), fields)
        start = time.perf_counter()
        frames = rig.capture(snapshot)
        render_ms = (time.perf_counter() - start) * 1000.0
        self.renders += 1
        self._say_raw_frames(snapshot.frame, next(iter(frames.values())).meta)
        out = {}
        for camera in cameras:
            frame = frames[f"view{index[placements[camera][0]]}"]
            if metas is None:
                camera.last_render_ms, camera.last_meta = render_ms, frame.meta
            else:
                metas[camera] = (render_ms, frame.meta)
            out[camera] = camera.image(snapshot, frame, placements[camera][1])
        return out

    def _say_raw_frames(self, frame: int, meta: dict) -> None:
        """A warning when the enhancer stops refining (the first raw frame, and the first after it recovers), so an
        unreachable server or a wrong port is not silent; each frame's meta says it too (`camera.last_meta`)."""
        if self.enhancer_client is None:
            return
        if meta.get("enhanced"):
            self._said_raw = False
        elif not self._said_raw:
            self._said_raw = True
            _log.warning("neural camera: the enhancer did not refine frame %d (%s): the cameras deliver the raw "
                         "render until it answers again (camera.last_meta['enhancer_reason'] has each frame's reason)",
                         frame, meta.get("enhancer_reason"))

    def _fail(self, frame: int, cameras, err: Exception) -> None:
        """Log a failed frame at once and keep it for the next call on a camera of this rig (the first one kept)."""
        names = ", ".join(f"{c.type_id} {c.id}" for c in cameras)
        with self._cond:
            pending = self.error is not None
        # the first failure is logged at once; further ones while it waits to be raised only at debug level
        # (a destroyed parent fails every tick)
        _log.log(logging.DEBUG if pending else logging.ERROR, "neural camera: rendering frame %d failed for %s: %s: %s",
                 frame, names, type(err).__name__, err, exc_info=err)
        with self._cond:
            if self.error is None:
                self.error = NeuralCameraError(f"neural camera ({names}): rendering frame {frame} failed: "
                                               f"{type(err).__name__}: {err}")
                self.error.__cause__ = err

    def _next_job(self):
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            if not self._jobs:
                return None
            self._busy = True
            job = heapq.heappop(self._jobs)
            self._current = tuple(job[3])
            return job

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._current = ()
                if not self._jobs:
                    self._said_backlog = False
                self._cond.notify_all()
            job = self._next_job()
            if job is None:
                with _live_lock:
                    _live_rigs.discard(self)
                return
            frame, _, snapshot, cameras, parent, placements = job
            cameras = [c for c in cameras if c._alive]
            if not cameras:
                continue
            metas: dict = {}
            try:
                images = self.capture(snapshot, cameras, parent, placements, metas)
            except Exception as err:  # noqa: BLE001 - logged now, raised by the camera at the next call
                self._fail(frame, cameras, err)
                continue
            for camera, image in images.items():
                with self._cond:  # (a camera destroyed meanwhile has left the rig: no delivery made for it again)
                    if camera._callback is None or not camera._alive or camera not in self.cameras:
                        continue
                    delivery = self._deliveries.get(camera)
                    if delivery is None:
                        delivery = self._deliveries[camera] = _Delivery(camera, self)
                delivery.put(image, metas[camera])  # (its own thread calls the listener: the next frame renders)

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Block until the world's newest tick has been taken (`catch_up`) and every queued frame rendered and
        delivered; False on timeout (tests, benchmarks)."""
        deadline = time.monotonic() + timeout_s
        if not self.catch_up(timeout_s):
            return False
        with self._cond:
            while self._jobs or self._busy or any(d.pending for d in self._deliveries.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True


_stream = threading.local()  # .delivering: this thread has delivered a world's on_tick to a rig (dies with the thread)


def _on_stream_thread() -> bool:
    """Is this thread one the world's stream calls on_tick on? libcarla's stream threads are made in C++ (Python sees
    them as dummy threads); the stand-in marks its own; a thread that has delivered an on_tick to a rig counts (a
    world that calls on_tick inside tick() marks the caller: the frames are then delivered before tick returns, so
    there is nothing to wait for)."""
    thread = threading.current_thread()
    return (isinstance(thread, threading._DummyThread) or getattr(thread, "carla_stream", False)
            or getattr(_stream, "delivering", False))


def _current_frame(world) -> int:
    """The world's newest frame (its snapshot's: world.tick() returns once the client holds it), -1 if unknown."""
    try:
        return int(world.get_snapshot().frame)
    except Exception:  # noqa: BLE001 - a world that cannot say (a server gone): nothing to wait for
        return -1


@atexit.register
def _close_rigs_at_exit() -> None:
    """At interpreter exit, every rig ends after the frame in flight (its queue dropped): a worker thread cut off
    inside a torch render aborted the process ("terminate called without an active exception")."""
    with _live_lock:
        rigs = list(_live_rigs)  # closed rigs too: a destroyed camera's last frame may still be rendering
    for rig in rigs:
        rig.close(drop_queued=True)


def _rig_key(world, parent, scene, backend, background_rgb, enhancer, deadline_ms, lod_px=LOD_PX,
             reference=None, render_scale=1.0) -> tuple:
    world_key = getattr(world, "id", None)
    if not isinstance(world_key, int):
        world_key = id(world)
    return (world_key, None if parent is None else parent.id, id(scene), backend,
            tuple(float(v) for v in background_rgb), enhancer, float(deadline_ms), float(lod_px),
            None if reference is None else id(reference), float(render_scale))
