"""pedestrian_crossing: a pedestrian steps onto the road ahead; the ego must stop or slow for them."""

from __future__ import annotations

import math

from carla_bridge.embedded import AgentSpec, EgoStart
from neural_sensor.scene.layout import Style, straight_road
from scenarios.base import Scenario, lane_route


def make_scenario(seed: int = 0) -> Scenario:
    layout = straight_road(200.0, style=Style(time_of_day="evening", seed=seed))
    ego = EgoStart(lane=0, start_s_m=10.0, speed_mps=9.0)
    crossing_x = layout.crosswalks[0].centre_m[0] if layout.crosswalks else 60.0
    agents = [
        AgentSpec(1, "pedestrian", "cross", start_xy_m=(crossing_x, -9.0), heading_rad=math.pi / 2,
                  speed_mps=1.4, trigger_m=55.0, distance_m=18.0),
        AgentSpec(2, "cyclist", "follow_lane", lane=1, start_s_m=20.0, speed_mps=5.0),
        AgentSpec(3, "car", "follow_lane", lane=3, start_s_m=170.0, speed_mps=9.0),
    ]
    return Scenario("pedestrian_crossing", __doc__.splitlines()[0], layout, ego, agents,
                    route_xy_m=lane_route(layout, 0, 0.0, 190.0), target_speed_mps=10.0, route_goal_m=60.0,
                    max_ticks=240)
