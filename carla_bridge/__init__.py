"""The simulator side: CARLA frames and types, the Simulator protocol, the neural camera sensor.

Filled by the runtime and CARLA bridge issues; `transforms.py` will be the only place that knows
CARLA's left-handed UE frame. Imports run one way: scenarios -> carla_bridge -> neural_sensor.
"""
