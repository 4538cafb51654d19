"""A neural depth camera saved with CARLA's LogarithmicDepth converter (two lines differ from a stock script).

    python -m carla_bridge.examples.depth_camera --scene scene.ply [--standin] [--out _out]
"""

import queue

import carla

from carla_bridge.examples._common import make_client, parse_args, synchronous
from carla_bridge.sensor import spawn_neural_camera  # changed line 1 of 2
from neural_sensor.gaussians import GaussianScene


def main(argv=None) -> list[str]:
    args = parse_args(__doc__.splitlines()[0], argv, ticks=10)
    scene = GaussianScene.load_ply(args.scene)  # (read first: a bad path leaves the server as it was)
    client = make_client(args)
    world = client.get_world()
    original = synchronous(world)
    actors, written = [], []
    try:
        library = world.get_blueprint_library()
        vehicle = world.spawn_actor(library.find("vehicle.tesla.model3"), world.get_map().get_spawn_points()[0])
        actors.append(vehicle)
        bp = library.find("sensor.camera.depth")
        bp.set_attribute("image_size_x", str(args.width))
        bp.set_attribute("image_size_y", str(args.height))
        camera = spawn_neural_camera(world, bp, carla.Transform(carla.Location(x=1.5, z=1.6)),  # changed line 2
                                     attach_to=vehicle, scene=scene, backend=args.backend)
        actors.append(camera)
        images = queue.Queue()
        camera.listen(images.put)
        for _ in range(args.ticks):
            frame = world.tick()
            image = images.get(timeout=30.0)
            while image.frame < frame:
                image = images.get(timeout=30.0)
            written.append(image.save_to_disk(f"{args.out}/depth/{image.frame:06d}.png",
                                              carla.ColorConverter.LogarithmicDepth))
        print(f"wrote {len(written)} log-depth images to {args.out}/depth")
    finally:
        for actor in actors:
            actor.destroy()
        world.apply_settings(original)
    return written


if __name__ == "__main__":
    main()
