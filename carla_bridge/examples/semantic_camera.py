"""A neural semantic segmentation camera converted with CARLA's CityScapesPalette (two lines differ).

    python -m carla_bridge.examples.semantic_camera --scene scene.ply [--standin] [--out _out]
"""

import queue

import carla
import numpy as np

from carla_bridge.examples._common import make_client, parse_args, synchronous
from carla_bridge.sensor import spawn_neural_camera  # changed line 1 of 2
from neural_sensor.gaussians import GaussianScene


def main(argv=None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv, ticks=10)
    scene = GaussianScene.load_ply(args.scene)  # (read first: a bad path leaves the server as it was)
    client = make_client(args)
    world = client.get_world()
    original = synchronous(world)
    actors, label_counts = [], {}
    try:
        library = world.get_blueprint_library()
        spawn_points = world.get_map().get_spawn_points()
        vehicle = world.spawn_actor(library.find("vehicle.tesla.model3"), spawn_points[0])
        actors.append(vehicle)
        bp = library.find("sensor.camera.semantic_segmentation")
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
            labels = np.frombuffer(image.raw_data, np.uint8).reshape(image.height, image.width, 4)[..., 2]
            for label, count in zip(*np.unique(labels, return_counts=True)):
                label_counts[int(label)] = label_counts.get(int(label), 0) + int(count)
            image.convert(carla.ColorConverter.CityScapesPalette)  # in place, as carla.Image.convert
            image.save_to_disk(f"{args.out}/semantic/{image.frame:06d}.png")
        names = {int(v): k for k, v in carla.CityObjectLabel.names.items()}
        print("pixels per label:", {names.get(k, k): v for k, v in sorted(label_counts.items())})
    finally:
        for actor in actors:
            actor.destroy()
        world.apply_settings(original)
    return label_counts


if __name__ == "__main__":
    main()
