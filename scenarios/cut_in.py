"""cut_in: a car in the neighbouring lane pulls in front of the ego at short range."""

from __future__ import annotations

from carla_bridge.embedded import AgentSpec, EgoStart
from neural_sensor.scene.layout import Style, straight_road
from scenarios.base import Scenario, lane_route


def make_scenario(seed: int = 0) -> Scenario:
    layout = straight_road(200.0, style=Style(time_of_day="noon", seed=seed))
    ego = EgoStart(lane=0, start_s_m=10.0, speed_mps=10.0)
    agents = [
        AgentSpec(1, "car", "cut_in", lane=1, start_s_m=30.0, speed_mps=8.0, target_lane=0, trigger_m=14.0,
                  duration_s=2.5),
        AgentSpec(2, "car", "follow_lane", lane=2, start_s_m=150.0, speed_mps=9.0),
        AgentSpec(3, "truck", "follow_lane", lane=3, start_s_m=120.0, speed_mps=7.0),
        AgentSpec(4, "pedestrian", "parked", start_xy_m=(45.0, -8.5), heading_rad=1.2),
    ]
    return Scenario("cut_in", __doc__.splitlines()[0], layout, ego, agents,
                    route_xy_m=lane_route(layout, 0, 0.0, 190.0), target_speed_mps=11.0, route_goal_m=60.0,
                    max_ticks=200)
