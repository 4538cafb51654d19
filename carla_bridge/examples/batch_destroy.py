"""Neural cameras and vehicles spawned and destroyed in batches, as CARLA's tutorial / generate_traffic scripts do.

The client is wrapped once in NeuralClient: its world spawns the camera blueprints as neural
cameras, and its apply_batch(_sync) destroys them with everything else.

    python -m carla_bridge.examples.batch_destroy --scene scene.ply [--standin]
"""

import carla

from carla_bridge.client import NeuralClient
from carla_bridge.examples._common import make_client, parse_args, synchronous
from neural_sensor.gaussians import GaussianScene


def main(argv=None) -> list:
    args = parse_args(__doc__.splitlines()[0], argv, ticks=3)
    scene = GaussianScene.load_ply(args.scene)
    client = NeuralClient(make_client(args), scene=scene, backend=args.backend)
    world = client.get_world()
    original = synchronous(world)
    actors, responses = [], None
    try:
        library = world.get_blueprint_library()
        spawn_points = world.get_map().get_spawn_points()
        for i in range(3):
            vehicle = world.try_spawn_actor(library.find("vehicle.audi.a2"), spawn_points[i])
            if vehicle is None:
                continue
            actors.append(vehicle)
            for kind in ("rgb", "depth", "semantic_segmentation"):
                bp = library.find(f"sensor.camera.{kind}")
                bp.set_attribute("image_size_x", str(args.width))
                bp.set_attribute("image_size_y", str(args.height))
                actors.append(world.spawn_actor(bp, carla.Transform(carla.Location(x=1.5, z=1.6)), attach_to=vehicle))
        for camera in actors:
            if camera.type_id.startswith("sensor."):
                camera.listen(lambda image: None)
        for _ in range(args.ticks):
            world.tick()
        responses = client.apply_batch_sync([carla.command.DestroyActor(actor.id) for actor in actors], True)
        errors = [r.error for r in responses if r.has_error()]
        print(f"destroyed {len(responses) - len(errors)} of {len(actors)} actors in one batch"
              + (f"; errors: {errors}" if errors else ""))
    finally:
        if responses is None and actors:  # (failed on the way: what was spawned goes, as the tutorials' scripts do)
            client.apply_batch([carla.command.DestroyActor(actor.id) for actor in actors])
        world.apply_settings(original)
    return responses


if __name__ == "__main__":
    main()
