"""The simulator side: CARLA frames and types, the Simulator protocol, the neural camera sensor.

    transforms.py   the only place that knows CARLA's left-handed UE frame
    simulator.py    the Simulator protocol; embedded.py the kinematic world; carla_world.py CarlaSimulator
    sensor.py       NeuralCamera (rgb / depth / semantic / instance, the actor and sensor faces), NeuralImage
    camera_rig.py   CameraRig / join_rig: the cameras of one parent share one on_tick callback and one
                    batched render per tick; a worker thread delivers in frame order
    encodings.py    CARLA's image encodings and ColorConverters; attributes.py camera attributes and
                    post-processing; commands.py DestroyActor / SpawnActor that take neural cameras
    client.py       NeuralClient / NeuralWorld proxies; leaderboard.py the leaderboard drop-in
    standin.py      a stand-in server and carla.Client with libcarla's threading, for tests and examples

Imports run one way: scenarios -> carla_bridge -> neural_sensor.
"""

import neural_sensor  # noqa: F401 - first: numba's cache folder and vector width are set before _kernels compiles
