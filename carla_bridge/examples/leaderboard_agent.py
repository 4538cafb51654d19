"""A CARLA leaderboard agent whose front camera is neural: the one added line is the `enable` call.

Run it with the leaderboard as any agent (TEAM_AGENT=.../leaderboard_agent.py); set NEURAL_SENSOR_SCENE
to a scene PLY built for the town (e.g. `neural-sensor build-scene` from the town's OpenDRIVE), and optionally
NEURAL_SENSOR_BACKEND, NEURAL_SENSOR_ENHANCER and NEURAL_SENSOR_REFERENCE (the module docstring).
"""

import carla
from leaderboard.autoagents.autonomous_agent import AutonomousAgent, Track

import carla_bridge.leaderboard

carla_bridge.leaderboard.enable_from_environment("scene.ply")  # the one added line (the variables, else scene.ply)


def get_entry_point():
    return "NeuralCameraAgent"


class NeuralCameraAgent(AutonomousAgent):
    def setup(self, path_to_conf_file):
        self.track = Track.SENSORS

    def sensors(self):
        return [{"type": "sensor.camera.rgb", "id": "Center", "x": 1.5, "y": 0.0, "z": 1.6, "roll": 0.0,
                 "pitch": 0.0, "yaw": 0.0, "width": 800, "height": 600, "fov": 90}]

    def run_step(self, input_data, timestamp):
        frame, bgra = input_data["Center"]  # (frame, 600 x 800 x 4 BGRA uint8), rendered by the neural sensor
        return carla.VehicleControl(throttle=0.3, steer=0.0, brake=0.0)
