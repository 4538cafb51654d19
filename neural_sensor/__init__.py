"""neural_sensor: Gaussian scenes, cameras and rendering for the neural camera sensor.

Imports nothing from carla_bridge or scenarios, and nothing from carla.
"""

from neural_sensor._numba_cache import ensure_numba_cache
from neural_sensor._vector_width import prefer_512_bit_vectors

ensure_numba_cache()  # a read-only install with an unwritable HOME: numba caches in a folder of the user's own
prefer_512_bit_vectors()  # before any numba kernel is compiled (see _vector_width.py)
