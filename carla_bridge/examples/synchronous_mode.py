"""CARLA's synchronous-mode pattern with a neural camera: two lines differ from the stock example.

    python -m carla_bridge.examples.synchronous_mode --scene scene.ply [--host localhost --port 2000] [--standin]
"""

import queue

import carla

from carla_bridge.examples._common import make_client, parse_args
from carla_bridge.sensor import spawn_neural_camera  # changed line 1 of 2
from neural_sensor.gaussians import GaussianScene


def main(argv=None) -> list[int]:
    args = parse_args(__doc__.splitlines()[0], argv, ticks=100)
    scene = GaussianScene.load_ply(args.scene)  # (read first: a bad path leaves the server as it was)
    client = make_client(args)
    world = client.get_world()
    original = world.get_settings()
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    actors = []
    try:
        library = world.get_blueprint_library()
        vehicle = world.spawn_actor(library.find("vehicle.tesla.model3"), world.get_map().get_spawn_points()[0])
        actors.append(vehicle)
        vehicle.set_autopilot(False)
        bp = library.find("sensor.camera.rgb")
        bp.set_attribute("image_size_x", str(args.width))
        bp.set_attribute("image_size_y", str(args.height))
        camera = spawn_neural_camera(world, bp, carla.Transform(carla.Location(x=1.5, z=1.6)),  # changed line 2
                                     attach_to=vehicle, scene=scene, backend=args.backend)
        actors.append(camera)
        images = queue.Queue()
        camera.listen(images.put)
        delivered = []
        for _ in range(args.ticks):
            vehicle.apply_control(carla.VehicleControl(throttle=0.4))
            frame = world.tick()
            image = images.get(timeout=10.0)
            while image.frame < frame:  # the examples' way to align sensor data with the tick
                image = images.get(timeout=10.0)
            print(f"frame {frame}: {image.width}x{image.height} neural image")
            delivered.append(image.frame)
    finally:
        for actor in actors:
            actor.destroy()
        world.apply_settings(original)
    return delivered


if __name__ == "__main__":
    main()
