"""A carla.Client / carla.World proxy that spawns neural cameras and routes batch commands to them.

    client = NeuralClient(carla.Client(host, port), scene=scene)   # or a StandInClient
    world = client.get_world()                                     # a NeuralWorld
    camera = world.spawn_actor(depth_bp, transform, attach_to=vehicle)         # a NeuralCamera
    client.apply_batch([carla.command.DestroyActor(camera.id), ...])           # destroys it client-side

NeuralClient's get_world, load_world, reload_world and generate_opendrive_world answer a NeuralWorld
(load_world_if_different answers None in libcarla 0.9.16: take get_world() after it). An actor's own `get_world()` is
libcarla's and answers the server's world, whose spawn_actor makes the server's camera: spawn cameras through the
NeuralWorld (a script that takes `vehicle.get_world()`, as manual_control.py's CameraManager does, is handed the
NeuralWorld instead).

NeuralWorld answers spawn_actor / try_spawn_actor of the four camera blueprints
(carla_bridge.encodings.CAMERA_TYPES, or the `camera_types` given) with a NeuralCamera and passes
everything else to the real world; get_actor / get_actors know the neural cameras by id.

NeuralClient.apply_batch / apply_batch_sync run, in order: DestroyActor of a neural camera id
(the camera is destroyed here; a server would answer "actor not found"); SpawnActor built with
this module's `SpawnActor` (whose blueprint stays readable; libcarla's own command keeps it in
C++) of a camera blueprint, as spawn_neural_camera; everything else goes to the real client in
ONE batch. Responses come back in command order: the server's, or ours (`NeuralResponse`, with
the carla.command.Response face) for the commands handled here.

`SpawnActor` and `DestroyActor` (carla_bridge/commands.py, re-exported here) are subclasses of
carla.command's (isinstance holds): SpawnActor keeps its blueprint, transform and parent
readable; DestroyActor also takes a NeuralCamera object (libcarla's accepts a C++ actor or an id).
"""

from __future__ import annotations

import warnings

import carla

from carla_bridge.commands import LIBCARLA_DESTROY_ACTOR, DestroyActor, SpawnActor  # noqa: F401 (re-exported)
from carla_bridge.encodings import CAMERA_TYPES
from carla_bridge.sensor import is_neural_id, neural_camera, neural_cameras_of, spawn_neural_camera
from neural_sensor.gaussians import GaussianScene
from neural_sensor.render import LOD_PX

_LibcarlaDestroyActor = LIBCARLA_DESTROY_ACTOR


class NeuralResponse:
    """carla.command.Response's face for a command handled client-side: actor_id, error, has_error()."""

    def __init__(self, actor_id: int = 0, error: str = ""):
        self.actor_id, self.error = int(actor_id), str(error)

    def has_error(self) -> bool:
        return bool(self.error)

    def __repr__(self) -> str:
        return f"NeuralResponse(actor_id={self.actor_id}, error={self.error!r})"


class _ActorList(list):
    """carla.ActorList's face over server actors and neural cameras: filter(wildcard), find(id)."""

    def filter(self, pattern: str) -> "_ActorList":
        import fnmatch

        return _ActorList(a for a in self if fnmatch.fnmatchcase(a.type_id, pattern))

    def find(self, actor_id: int):
        return next((a for a in self if a.id == actor_id), None)


def _attachment(attachment_type, bone: str) -> tuple:
    """The attachment arguments for the server's spawn_actor: none by default; a bone needs its attachment type
    (libcarla's default, Rigid, where none was given: the bone had been dropped)."""
    if attachment_type is None and not bone:
        return ()
    return (carla.AttachmentType.Rigid if attachment_type is None else attachment_type, bone)


class NeuralWorld:
    """carla.World proxy: camera blueprints spawn NeuralCameras; see the module docstring."""

    def __init__(self, world, scene: GaussianScene, backend: str = "auto", background_rgb=(0.53, 0.71, 0.92),
                 enhancer: str | None = None, camera_types=CAMERA_TYPES, lod_px: float = LOD_PX, reference=None,
                 render_scale: float = 1.0):
        if not isinstance(scene, GaussianScene):
            raise ValueError(f"NeuralWorld: scene must be a GaussianScene, got {type(scene).__name__}")
        self._world = world
        self._scene = scene
        self._backend = backend
        self._background = tuple(background_rgb)
        self._enhancer = enhancer
        self._camera_types = tuple(camera_types)
        self._lod_px = lod_px  # the CPU renderer's level of detail for every camera it spawns (0: exact)
        self._reference = reference  # a reconstruction's drive log for the enhancer (carla_bridge.sensor docstring)
        self._render_scale = render_scale  # the fraction of each camera's size drawn (render(scale=))

    @property
    def world(self):
        """The real world behind the proxy."""
        return self._world

    def _is_neural(self, blueprint) -> bool:
        return getattr(blueprint, "id", None) in self._camera_types

    def spawn_actor(self, blueprint, transform, attach_to=None, attachment_type=None, bone: str = "",
                    *args, **kwargs):
        if self._is_neural(blueprint):
            if args or kwargs:  # (libcarla refuses an unknown argument; `socket_name=` had been dropped here)
                raise TypeError(f"spawn_actor: unexpected arguments {list(args) + sorted(kwargs)} (libcarla's are "
                                "blueprint, transform, attach_to, attachment_type, bone)")
            return spawn_neural_camera(self._world, blueprint, transform, attach_to, self._scene, self._backend,
                                       self._background, enhancer=self._enhancer, attachment_type=attachment_type,
                                       socket_name=bone, lod_px=self._lod_px, reference=self._reference,
                                       render_scale=self._render_scale)
        extra = _attachment(attachment_type, bone)
        return self._world.spawn_actor(blueprint, transform, attach_to, *extra, *args, **kwargs)

    def try_spawn_actor(self, blueprint, transform, attach_to=None, attachment_type=None, bone: str = "",
                        *args, **kwargs):
        if self._is_neural(blueprint):  # a camera never collides: try_spawn_actor is spawn_actor for it
            return self.spawn_actor(blueprint, transform, attach_to, attachment_type, bone, *args, **kwargs)
        extra = _attachment(attachment_type, bone)
        return self._world.try_spawn_actor(blueprint, transform, attach_to, *extra, *args, **kwargs)

    def get_actor(self, actor_id: int):
        if is_neural_id(actor_id):
            return neural_camera(actor_id)
        return self._world.get_actor(actor_id)

    def get_actors(self, actor_ids=None):
        if actor_ids is None:  # the server's actors, then the neural cameras (they live client-side), so that
            # world.get_actors().filter("sensor.*") finds them for a cleanup
            return _ActorList(list(self._world.get_actors()) + neural_cameras_of(self._world))
        actor_ids = list(actor_ids)
        server_ids = [i for i in actor_ids if not is_neural_id(i)]
        found = {a.id: a for a in self._world.get_actors(server_ids)} if server_ids else {}
        for i in actor_ids:
            if is_neural_id(i) and neural_camera(i) is not None:
                found[i] = neural_camera(i)
        return _ActorList(found[i] for i in actor_ids if i in found)

    def __getattr__(self, name):
        return getattr(self._world, name)


class NeuralClient:
    """carla.Client proxy: get_world() is a NeuralWorld, batches reach neural cameras; see the module docstring."""

    def __init__(self, client, scene: GaussianScene, backend: str = "auto", background_rgb=(0.53, 0.71, 0.92),
                 enhancer: str | None = None, camera_types=CAMERA_TYPES, lod_px: float = LOD_PX, reference=None,
                 render_scale: float = 1.0):
        self._client = client
        self._options = dict(scene=scene, backend=backend, background_rgb=background_rgb, enhancer=enhancer,
                             camera_types=camera_types, lod_px=lod_px, reference=reference, render_scale=render_scale)

    @property
    def client(self):
        """The real client behind the proxy."""
        return self._client

    def get_world(self) -> NeuralWorld:
        return NeuralWorld(self._client.get_world(), **self._options)

    # the client's calls that answer a world answer a NeuralWorld too (a new user's generate_opendrive_world world
    # spawned the server's own cameras, which the stand-in never delivers)
    def load_world(self, *args, **kwargs) -> NeuralWorld:
        return self._new_episode(self._client.load_world, *args, **kwargs)

    def reload_world(self, *args, **kwargs) -> NeuralWorld:
        return self._new_episode(self._client.reload_world, *args, **kwargs)

    def generate_opendrive_world(self, *args, **kwargs) -> NeuralWorld:
        return self._new_episode(self._client.generate_opendrive_world, *args, **kwargs)

    def load_world_if_different(self, *args, **kwargs) -> NeuralWorld | None:
        """libcarla's: None where the map is the one loaded (nothing changes), else a new world, as load_world."""
        return self._new_episode(self._client.load_world_if_different, *args, **kwargs)

    def _new_episode(self, call, *args, **kwargs) -> NeuralWorld | None:
        """A new world as the server makes one destroys every actor of the old, its cameras too: the old world's
        neural cameras are destroyed once the call succeeds (a refused map leaves them running), each on its own
        (the old episode has expired: libcarla refuses its world's calls)."""
        old = neural_cameras_of(self._client.get_world())
        raw = call(*args, **kwargs)
        if raw is None:  # (load_world_if_different on the same map)
            return None
        world = NeuralWorld(raw, **self._options)
        for camera in old:
            try:
                camera.destroy()
            except Exception as err:  # noqa: BLE001 -- one camera's failure must not keep the others alive
                warnings.warn(f"neural camera {camera.id}: destroying it with its old world failed ({err})",
                              RuntimeWarning, stacklevel=3)
        return world


    def _world_for(self, world) -> NeuralWorld:
        return world if isinstance(world, NeuralWorld) else NeuralWorld(world, **self._options)

    def apply_batch(self, commands, do_tick: bool = False) -> None:
        self._run(commands, do_tick, sync=False)

    def apply_batch_sync(self, commands, do_tick: bool = False) -> list:
        return self._run(commands, do_tick, sync=True)

    def _local(self, command, world: NeuralWorld):
        """A response when this command is ours to run, else None."""
        if isinstance(command, _LibcarlaDestroyActor) and is_neural_id(command.actor_id):
            camera = neural_camera(command.actor_id)
            if camera is None:
                return NeuralResponse(command.actor_id, "unable to destroy actor: not found")
            camera.destroy()
            return NeuralResponse(command.actor_id)
        request = getattr(command, "neural_spawn_request", None)
        if request is not None and world._is_neural(request[0]):
            blueprint, transform, parent_id = request
            parent = getattr(command, "neural_parent", None) or (world.get_actor(parent_id) if parent_id else None)
            if parent_id and parent is None:  # (it had become a world-fixed camera, answered as a success)
                return NeuralResponse(0, "neural camera: unable to attach actor: parent actor not found")
            attachment_type, socket_name = getattr(command, "neural_attachment", (None, ""))
            try:
                camera = world.spawn_actor(blueprint, transform, parent, attachment_type, socket_name)
            except (ValueError, TypeError, RuntimeError) as err:  # (the batch goes on, as a server's does)
                return NeuralResponse(0, f"neural camera: {err}")
            return NeuralResponse(camera.id)
        return None

    def _run(self, commands, do_tick: bool, sync: bool):
        commands = list(commands)
        world = self.get_world()
        responses: list = [self._local(command, world) for command in commands]
        forwarded = [c for c, r in zip(commands, responses) if r is None]
        if sync:
            server = iter(self._client.apply_batch_sync(forwarded, do_tick) if forwarded or do_tick else [])
            return [r if r is not None else next(server) for r in responses]
        if forwarded or do_tick:
            self._client.apply_batch(forwarded, do_tick)
        return None

    def __getattr__(self, name):
        return getattr(self._client, name)
