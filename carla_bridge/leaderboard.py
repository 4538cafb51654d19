"""Run CARLA leaderboard agents unchanged, with their cameras rendered by the neural sensor.

Enable it with one line, anywhere that runs before the agent's sensors are set up
(the top of the agent file is the simplest place):

    import carla_bridge.leaderboard; carla_bridge.leaderboard.enable("path/to/scene.ply")

or set NEURAL_SENSOR_SCENE=path/to/scene.ply (and optionally NEURAL_SENSOR_BACKEND, NEURAL_SENSOR_ENHANCER,
NEURAL_SENSOR_REFERENCE) and add `import carla_bridge.leaderboard` to the agent file: importing the module
enables it (`enable_from_environment(default_scene)` does the same with a scene for when the variable is unset).
enable() loads the renderer's kernels at once (on a fresh install it compiles them, ~20 s on two cores): the
leaderboard's SensorInterface waits only 10 s for a camera's first frame. NEURAL_SENSOR_REFERENCE / `reference=`:
a reconstruction's drive log (the `reference.npz` beside its cached scene, or a LogReference), which the enhancer
trained to take it gains most of its decibels from.

How: the leaderboard's AgentWrapper spawns each sensor with
`CarlaDataProvider.get_world().spawn_actor(blueprint, transform, vehicle)` and attaches its
own CallBack. enable() makes get_world() return the real world behind a NeuralWorld proxy
(carla_bridge/client.py) whose spawn_actor and try_spawn_actor answer the camera blueprints
(sensor.camera.rgb, .depth, .semantic_segmentation, .instance_segmentation) with NeuralCameras
(same attributes, same mount) and pass everything else through; every camera of one vehicle
renders in one batched call per tick. CarlaDataProvider's client (set_client / get_client, and
the one it batches with) becomes a NeuralClient, so batch SpawnActor of a camera blueprint and
DestroyActor of a neural camera reach the cameras; while enabled, carla.command.SpawnActor and
DestroyActor are carla_bridge.client's subclasses (isinstance holds) so that a batch's camera
blueprint stays readable and DestroyActor takes a camera. The agent keeps its sensor type names
(the leaderboard rejects unknown ones) and receives input_data {id: (frame, H x W x 4 BGRA)}
from the leaderboard's own SensorInterface, because a NeuralImage is a carla.Image.
"""

from __future__ import annotations

import os
from pathlib import Path

from carla_bridge.camera_rig import warm_up
from carla_bridge.client import NeuralClient, NeuralWorld
from neural_sensor.gaussians import GaussianScene

CAMERA_TYPE = "sensor.camera.rgb"
_state: dict = {}


def NeuralSpawningWorld(world, scene: GaussianScene, backend: str = "auto", background_rgb=(0.53, 0.71, 0.92),
                        enhancer: str | None = None, reference=None) -> NeuralWorld:
    """The proxy enable() puts behind CarlaDataProvider.get_world() (kept under its former name)."""
    return NeuralWorld(world, scene, backend, background_rgb, enhancer, reference=reference)


def _options() -> dict:
    return dict(scene=_state["scene"], backend=_state["backend"], enhancer=_state["enhancer"],
                reference=_state.get("reference"))


def enable(scene: GaussianScene | str | os.PathLike, backend: str = "auto", enhancer: str | None = None,
           reference=None) -> None:
    """Route the leaderboard's cameras to the neural renderer (idempotent; the last scene wins);
    `enhancer`: an enhancer server's endpoint (tcp://HOST:PORT) to refine every camera; `reference`: the scene's
    drive log for it (a LogReference or the path of its reference.npz; see the module docstring)."""
    import carla

    from carla_bridge import commands as neural_commands
    from neural_sensor.reconstruct.reference import LogReference

    if not isinstance(scene, GaussianScene):
        path = Path(scene).resolve()
        if _state.get("scene_path") == path and "scene" in _state:  # (the module's own enable, then the agent's)
            scene = _state["scene"]
        else:
            scene = GaussianScene.load_ply(path)
            _state["scene_path"] = path
    if reference is not None and not isinstance(reference, LogReference):
        reference = LogReference.load(Path(reference))
    try:
        from srunner.scenariomanager.carla_data_provider import CarlaDataProvider
    except ImportError as err:
        raise RuntimeError("carla_bridge.leaderboard.enable needs the CARLA leaderboard and scenario_runner on "
                           f"PYTHONPATH ({err})") from None
    _state.update(scene=scene, backend=backend, enhancer=enhancer, reference=reference)
    warm_up(scene, backend)
    if "original_get_world" in _state:  # enabled before: the batch client takes this call's scene and options too
        client = getattr(CarlaDataProvider, "_client", None)
        if isinstance(client, NeuralClient):
            CarlaDataProvider._client = NeuralClient(client.client, **_options())
        return
    _state["original_get_world"] = CarlaDataProvider.get_world
    _state["original_commands"] = (carla.command.SpawnActor, carla.command.DestroyActor)
    neural_commands.install(spawn=True)

    def get_world():
        world = _state["original_get_world"]()
        if world is None or isinstance(world, NeuralWorld):
            return world
        return NeuralWorld(world, **_options())

    CarlaDataProvider.get_world = staticmethod(get_world)

    def wrap(client):
        if client is None or isinstance(client, NeuralClient):
            return client
        return NeuralClient(client, **_options())

    for name in ("set_client", "get_client"):
        _state[f"original_{name}"] = CarlaDataProvider.__dict__.get(name)
    if _state["original_set_client"] is not None:
        original_set = _state["original_set_client"].__func__

        def set_client(client):
            original_set(wrap(client))

        CarlaDataProvider.set_client = staticmethod(set_client)
    if getattr(CarlaDataProvider, "_client", None) is not None:
        CarlaDataProvider._client = wrap(CarlaDataProvider._client)


def enable_from_environment(default_scene: GaussianScene | str | os.PathLike | None = None) -> bool:
    """enable() with NEURAL_SENSOR_SCENE (else `default_scene`), NEURAL_SENSOR_BACKEND, NEURAL_SENSOR_ENHANCER and
    NEURAL_SENSOR_REFERENCE; False (nothing done) when neither names a scene. (The shipped example had called
    enable(scene) after the import had, which reset the backend, enhancer and reference the variables set.)"""
    scene = os.environ.get("NEURAL_SENSOR_SCENE") or default_scene
    if not scene:
        return False
    enable(scene, os.environ.get("NEURAL_SENSOR_BACKEND", "auto"), os.environ.get("NEURAL_SENSOR_ENHANCER") or None,
           os.environ.get("NEURAL_SENSOR_REFERENCE") or None)
    return True


def disable() -> None:
    """Undo enable()."""
    if "original_get_world" in _state:
        import carla

        from srunner.scenariomanager.carla_data_provider import CarlaDataProvider

        CarlaDataProvider.get_world = staticmethod(_state.pop("original_get_world"))
        if _state.get("original_set_client") is not None:
            CarlaDataProvider.set_client = _state["original_set_client"]
        client = getattr(CarlaDataProvider, "_client", None)
        if isinstance(client, NeuralClient):
            CarlaDataProvider._client = client.client
        carla.command.SpawnActor, carla.command.DestroyActor = _state["original_commands"]
    _state.clear()


enable_from_environment()
