"""Helpers of the CARLA camera tests (test_carla_sensors.py, test_carla_camera_rig.py): import after
`pytest.importorskip("carla")`."""

import carla
import numpy as np

W, H = 48, 32
MOUNT = carla.Transform(carla.Location(x=1.5, z=1.6))


def camera_blueprint(library, kind: str, size: tuple[int, int] = (W, H), **attributes):
    """sensor.camera.<kind> of `size` (width, height) pixels with the given attributes."""
    bp = library.find(f"sensor.camera.{kind}")
    bp.set_attribute("image_size_x", str(size[0]))
    bp.set_attribute("image_size_y", str(size[1]))
    for key, value in attributes.items():
        bp.set_attribute(key, str(value))
    return bp


def image_array(image) -> np.ndarray:
    """[H, W, 4] uint8 BGRA view of a carla.Image's raw_data."""
    return np.frombuffer(image.raw_data, np.uint8).reshape(image.height, image.width, 4)


def settle(world, *cameras):
    """Wait until the world's on_tick callbacks ran and every camera's rig delivered what they queued."""
    world.wait_for_callbacks()
    for camera in cameras:
        assert camera.rig.wait_idle()
