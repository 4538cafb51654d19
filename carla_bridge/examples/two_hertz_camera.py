"""A 2 Hz neural camera (sensor_tick 0.5 s) next to a per-tick one, in a 20 Hz synchronous world.

    python -m carla_bridge.examples.two_hertz_camera --scene scene.ply [--standin]
"""

import queue

import carla

from carla_bridge.examples._common import make_client, parse_args, synchronous
from carla_bridge.sensor import spawn_neural_camera  # changed line 1 of 2
from neural_sensor.gaussians import GaussianScene


def main(argv=None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv, ticks=40)
    scene = GaussianScene.load_ply(args.scene)  # (read first: a bad path leaves the server as it was)
    client = make_client(args)
    world = client.get_world()
    original = synchronous(world, 0.05)
    actors, frames = [], {"every_tick": [], "two_hertz": []}
    try:
        library = world.get_blueprint_library()
        vehicle = world.spawn_actor(library.find("vehicle.tesla.model3"), world.get_map().get_spawn_points()[0])
        actors.append(vehicle)
        queues = {}
        for name, tick in (("every_tick", "0.0"), ("two_hertz", "0.5")):
            bp = library.find("sensor.camera.rgb")
            bp.set_attribute("image_size_x", str(args.width))
            bp.set_attribute("image_size_y", str(args.height))
            bp.set_attribute("sensor_tick", tick)
            camera = spawn_neural_camera(world, bp, carla.Transform(carla.Location(x=1.5, z=1.6)),  # changed line 2
                                         attach_to=vehicle, scene=scene, backend=args.backend)
            actors.append(camera)
            queues[name] = queue.Queue()
            camera.listen(queues[name].put)
        for _ in range(args.ticks):
            frame = world.tick()
            image = queues["every_tick"].get(timeout=30.0)  # the per-tick camera paces the loop
            while image.frame < frame:
                image = queues["every_tick"].get(timeout=30.0)
            frames["every_tick"].append(image.frame)
        camera.rig.wait_idle()  # the 2 Hz images of the last ticks are delivered by now
        while not queues["two_hertz"].empty():
            frames["two_hertz"].append(queues["two_hertz"].get().frame)
        print(f"{len(frames['every_tick'])} ticks: {len(frames['two_hertz'])} images at 2 Hz, "
              f"frames {frames['two_hertz']}")
    finally:
        for actor in actors:
            actor.destroy()
        world.apply_settings(original)
    return frames


if __name__ == "__main__":
    main()
