"""What every example shares: its command line and the client (a CARLA server, or the stand-in with --standin)."""

from __future__ import annotations

import argparse

import carla


def parse_args(description: str, argv=None, ticks: int = 40) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scene", required=True, help="Gaussian scene PLY for this map")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=2000)
    parser.add_argument("--ticks", type=int, default=ticks)
    parser.add_argument("--width", type=int, default=800)
    parser.add_argument("--height", type=int, default=600)
    parser.add_argument("--backend", default="auto", help="renderer backend: auto | gsplat | cpu | torch")
    parser.add_argument("--out", default="_out", help="folder for the saved images")
    parser.add_argument("--standin", action="store_true",
                        help="run against carla_bridge's stand-in server instead of a CARLA server")
    return parser.parse_args(argv)


def make_client(args):
    """carla.Client(host, port), or the stand-in (same face) with --standin."""
    if args.standin:
        from carla_bridge.standin import StandInClient

        client = StandInClient(args.host, args.port)
    else:
        client = carla.Client(args.host, args.port)
    client.set_timeout(10.0)
    return client


def synchronous(world, delta_s: float = 0.05):
    """Switch the world to synchronous mode; returns the settings to restore."""
    original = world.get_settings()
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, delta_s
    world.apply_settings(settings)
    return original
