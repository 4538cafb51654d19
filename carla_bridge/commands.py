"""carla.command.SpawnActor / DestroyActor subclasses that work with neural cameras (isinstance holds).

libcarla's DestroyActor takes a C++ actor or an id, so `DestroyActor(camera)` of a NeuralCamera
(a Python object) raises Boost.Python's ArgumentError; CARLA's tutorial.py does exactly that in
its clean-up batch. libcarla's SpawnActor keeps its blueprint in C++, out of Python's reach, so a
batch cannot tell a camera blueprint from any other. The subclasses here:

    DestroyActor(actor)   a C++ actor or an id as before; any other object with an `id` (a
                          NeuralCamera, a stand-in actor) by its id
    SpawnActor(bp, transform[, parent[, attachment_type, socket_name]])
                          as before, and the request stays readable (`neural_spawn_request`), so
                          NeuralClient (carla_bridge/client.py) and the stand-in can act on it;
                          a blueprint that is not a carla.ActorBlueprint (the stand-in's) leaves
                          the C++ command empty

Importing carla_bridge.sensor installs DestroyActor as carla.command.DestroyActor (every former
use behaves the same; one more kind of argument is accepted), so scripts changed only by the two
documented lines keep their clean-up batches. carla_bridge.leaderboard.enable() also installs
SpawnActor while it is enabled. install() / uninstall() do it by hand.
"""

from __future__ import annotations

import carla

LIBCARLA_SPAWN_ACTOR = getattr(carla.command.SpawnActor, "_libcarla", carla.command.SpawnActor)
LIBCARLA_DESTROY_ACTOR = getattr(carla.command.DestroyActor, "_libcarla", carla.command.DestroyActor)


class DestroyActor(LIBCARLA_DESTROY_ACTOR):
    """carla.command.DestroyActor that also takes any actor object with an id (a NeuralCamera)."""

    _libcarla = LIBCARLA_DESTROY_ACTOR

    def __init__(self, actor):
        if isinstance(actor, carla.Actor):
            super().__init__(actor)
        else:
            super().__init__(int(actor if isinstance(actor, int) else actor.id))


class SpawnActor(LIBCARLA_SPAWN_ACTOR):
    """carla.command.SpawnActor that keeps its request readable (`neural_spawn_request`)."""

    _libcarla = LIBCARLA_SPAWN_ACTOR

    def __init__(self, blueprint, transform, parent=None, attachment_type=None, socket_name: str = ""):
        parent_id = parent if isinstance(parent, int) else (parent.id if parent is not None else 0)
        self.neural_spawn_request = (blueprint, transform, parent_id)
        self.neural_parent = None if isinstance(parent, int) else parent
        self.neural_attachment = (attachment_type, socket_name)
        server_parent = parent is None or isinstance(parent, (int, carla.Actor))
        if isinstance(blueprint, carla.ActorBlueprint) and server_parent:
            if parent is None:
                super().__init__(blueprint, transform)
            elif attachment_type is not None:
                super().__init__(blueprint, transform, parent, attachment_type, socket_name)
            else:
                super().__init__(blueprint, transform, parent)
        else:  # a stand-in blueprint or a neural parent: the C++ command stays empty, the request lives here
            super().__init__()


def install(spawn: bool = False) -> None:
    """Make carla.command.DestroyActor (and SpawnActor if `spawn`) the subclasses here."""
    carla.command.DestroyActor = DestroyActor
    if spawn:
        carla.command.SpawnActor = SpawnActor


def uninstall(spawn: bool = True) -> None:
    """Put libcarla's SpawnActor (if `spawn`) and DestroyActor back."""
    carla.command.DestroyActor = LIBCARLA_DESTROY_ACTOR
    if spawn:
        carla.command.SpawnActor = LIBCARLA_SPAWN_ACTOR
