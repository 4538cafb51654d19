"""neural_sensor: Gaussian scenes, cameras and rendering for the neural camera sensor.

Imports nothing from carla_bridge or scenarios, and nothing from carla.
"""
