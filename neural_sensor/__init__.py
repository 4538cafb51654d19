"""neural_sensor: Gaussian scenes, cameras and rendering for the neural camera sensor.

Imports nothing from carla_bridge or scenarios, and nothing from carla.
"""

from neural_sensor._vector_width import prefer_512_bit_vectors

prefer_512_bit_vectors()  # before any numba kernel is compiled (see _vector_width.py)
