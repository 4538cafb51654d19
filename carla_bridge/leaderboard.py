"""Run CARLA leaderboard agents unchanged, with their RGB cameras rendered by the neural sensor.

Enable it with one line, anywhere that runs before the agent's sensors are set up
(the top of the agent file is the simplest place):

    import carla_bridge.leaderboard; carla_bridge.leaderboard.enable("path/to/scene.ply")

or set NEURAL_SENSOR_SCENE=path/to/scene.ply (and optionally NEURAL_SENSOR_BACKEND, NEURAL_SENSOR_ENHANCER) and add
`import carla_bridge.leaderboard` to the agent file: importing the module enables it.

How: the leaderboard's AgentWrapper spawns each sensor with
`CarlaDataProvider.get_world().spawn_actor(blueprint, transform, vehicle)` and attaches its
own CallBack. enable() makes get_world() return the real world behind a thin proxy whose
spawn_actor answers `sensor.camera.rgb` blueprints with a NeuralCamera (same attributes,
same mount) and passes everything else through. The agent keeps its sensor type names
(the leaderboard rejects unknown ones) and receives input_data {id: (frame, H x W x 4 BGRA)}
from the leaderboard's own SensorInterface, because a NeuralImage is a carla.Image.
"""

from __future__ import annotations

import os
from pathlib import Path

from carla_bridge.sensor import spawn_neural_camera
from neural_sensor.gaussians import GaussianScene

CAMERA_TYPE = "sensor.camera.rgb"
_state: dict = {}


class NeuralSpawningWorld:
    """A carla.World stand-in that spawns neural cameras for RGB camera blueprints and forwards the rest."""

    def __init__(self, world, scene: GaussianScene, backend: str = "auto", background_rgb=(0.53, 0.71, 0.92),
                 enhancer: str | None = None):
        self._world = world
        self._scene = scene
        self._backend = backend
        self._background = background_rgb
        self._enhancer = enhancer

    def spawn_actor(self, blueprint, transform, attach_to=None, *args, **kwargs):
        if getattr(blueprint, "id", None) == CAMERA_TYPE:
            return spawn_neural_camera(self._world, blueprint, transform, attach_to, self._scene, self._backend,
                                       self._background, enhancer=self._enhancer)
        return self._world.spawn_actor(blueprint, transform, attach_to, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._world, name)


def enable(scene: GaussianScene | str | os.PathLike, backend: str = "auto", enhancer: str | None = None) -> None:
    """Route the leaderboard's RGB cameras to the neural renderer (idempotent; the last scene wins);
    `enhancer`: an enhancer server's endpoint (tcp://HOST:PORT) to refine every camera."""
    if not isinstance(scene, GaussianScene):
        scene = GaussianScene.load_ply(Path(scene))
    try:
        from srunner.scenariomanager.carla_data_provider import CarlaDataProvider
    except ImportError as err:
        raise RuntimeError("carla_bridge.leaderboard.enable needs the CARLA leaderboard and scenario_runner on "
                           f"PYTHONPATH ({err})") from None
    _state.update(scene=scene, backend=backend, enhancer=enhancer)
    if "original_get_world" not in _state:
        _state["original_get_world"] = CarlaDataProvider.get_world

        def get_world():
            world = _state["original_get_world"]()
            if world is None or isinstance(world, NeuralSpawningWorld):
                return world
            return NeuralSpawningWorld(world, _state["scene"], _state["backend"], enhancer=_state["enhancer"])

        CarlaDataProvider.get_world = staticmethod(get_world)


def disable() -> None:
    """Undo enable()."""
    if "original_get_world" in _state:
        from srunner.scenariomanager.carla_data_provider import CarlaDataProvider

        CarlaDataProvider.get_world = staticmethod(_state.pop("original_get_world"))
    _state.clear()


if os.environ.get("NEURAL_SENSOR_SCENE"):
    enable(os.environ["NEURAL_SENSOR_SCENE"], os.environ.get("NEURAL_SENSOR_BACKEND", "auto"),
           os.environ.get("NEURAL_SENSOR_ENHANCER") or None)
