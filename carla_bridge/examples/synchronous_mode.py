"""CARLA's synchronous-mode pattern with a neural camera: two lines differ from the stock example.

    python -m carla_bridge.examples.synchronous_mode --scene scene.ply [--host localhost --port 2000]
"""

import argparse
import queue

import carla

from carla_bridge.sensor import spawn_neural_camera  # changed line 1 of 2
from neural_sensor.gaussians import GaussianScene


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", required=True, help="Gaussian scene PLY for this map")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=2000)
    parser.add_argument("--ticks", type=int, default=100)
    args = parser.parse_args()
    client = carla.Client(args.host, args.port)
    client.set_timeout(10.0)
    world = client.get_world()
    original = world.get_settings()
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    scene = GaussianScene.load_ply(args.scene)
    actors = []
    try:
        library = world.get_blueprint_library()
        vehicle = world.spawn_actor(library.find("vehicle.tesla.model3"), world.get_map().get_spawn_points()[0])
        actors.append(vehicle)
        vehicle.set_autopilot(False)
        bp = library.find("sensor.camera.rgb")
        bp.set_attribute("image_size_x", "800")
        bp.set_attribute("image_size_y", "600")
        camera = spawn_neural_camera(world, bp, carla.Transform(carla.Location(x=1.5, z=1.6)),  # changed line 2
                                     attach_to=vehicle, scene=scene)
        actors.append(camera)
        images = queue.Queue()
        camera.listen(images.put)
        for _ in range(args.ticks):
            vehicle.apply_control(carla.VehicleControl(throttle=0.4))
            frame = world.tick()
            image = images.get(timeout=10.0)
            while image.frame < frame:  # the examples' way to align sensor data with the tick
                image = images.get(timeout=10.0)
            print(f"frame {frame}: {image.width}x{image.height} neural image")
    finally:
        for actor in actors:
            actor.destroy()
        world.apply_settings(original)


if __name__ == "__main__":
    main()
