"""lane_change: the ego leaves the recorded path by 3 m (the off-trajectory case the enhancer is for)."""

from __future__ import annotations

from carla_bridge.embedded import AgentSpec, EgoStart
from neural_sensor.scene.layout import Style, straight_road
from scenarios.base import Scenario, lane_change_route


def make_scenario(seed: int = 0) -> Scenario:
    layout = straight_road(200.0, style=Style(time_of_day="morning", seed=seed))
    ego = EgoStart(lane=1, start_s_m=10.0, speed_mps=10.0)
    agents = [
        AgentSpec(1, "car", "follow_lane", lane=1, start_s_m=70.0, speed_mps=7.0),
        AgentSpec(2, "car", "follow_lane", lane=0, start_s_m=5.0, speed_mps=8.0),
        AgentSpec(3, "truck", "follow_lane", lane=2, start_s_m=160.0, speed_mps=8.0),
    ]
    # lane 1 is the outer right lane (y = -5.25); moving 3 m to the left leaves its recorded path
    route = lane_change_route(layout, 1, 0.0, change_at_s_m=18.0, offset_m=3.0, length_m=190.0)
    return Scenario("lane_change", __doc__.splitlines()[0], layout, ego, agents, route_xy_m=route,
                    target_speed_mps=11.0, route_goal_m=70.0, max_ticks=200, recorded_lane=1)
