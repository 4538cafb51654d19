"""Enhancer benchmark: model time, transport overhead, and resilience to server restarts.

1. model: the checkpoint's ms per frame at 480x270 in this process (a batch of 6 cameras,
   torch threads = cores, the CPU precision a server picks here: bfloat16 with AMX), median over repeats,
   and its ratio to a baseline run alternating with it (the plain torch forward on a contiguous NCHW
   input in float32, as `enhance` ran before 2026-12-01) and, where bfloat16 is picked, to float32.
2. transport: the same 6 x 480x270 batch (with the warped log, as the rig sends it) through
   EnhancerClient -> worker on loopback, decoded into buffers the caller owns
   (`enhance(frames, out=...)`, as the rig calls it); overhead per tick = client round trip -
   the worker's model time (per request, median), i.e. encoding, the hops, the broker and
   decoding. Four paths, alternating request by request against one server: "zero-copy" (the
   rig's way since 2026-12-02: rgb / depth / alpha already lie in the client's block, where the
   renderer wrote them, `frame_buffers`; float32 there and back, only the warped log is copied in),
   "direct" (frames converted into a shared block, headers straight to the worker's socket),
   "shm" (the same through the broker's ZeroMQ sockets: direct=False) and "bytes" (the client
   told shared_memory=False: the frames travel in the messages).
3. restarts: a NeuralSensorRig (6 cameras, small images so the run stays short) ticks
   `--ticks` times at `--tick-hz` against a server that is SIGKILLed and started again
   (in a thread: the rig keeps ticking) every `--restart-every` ticks; counts ticks
   delivered, enhanced and raw (flagged), and the time from each restart's ready signal
   to the first enhanced tick.

    python benchmarks/enhancer.py [--checkpoint checkpoints/enhancer-run] [--ticks 10000] [--restart-every 1000]
                                  [--skip-restarts]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch

from _machine import count, machine_name, positive, run_main, write_result
from neural_sensor.checkpoints import DEFAULT_ENHANCER, default_checkpoint
from neural_sensor.enhance.client import EnhancerClient
from neural_sensor.enhance.local import start_server, stop_server
from neural_sensor.enhance.model import Enhancer, network_input, pixel_shuffle
from neural_sensor.rig import NeuralSensorRig, nuscenes_like_rig
from neural_sensor.testing import make_street_scene
from neural_sensor.world import AgentState, WorldSnapshot, pose_from_xyz_yaw


def _frames(seed: int, n: int = 6, h: int = 270, w: int = 480, reference: bool = False) -> list[dict]:
    """Random frames of the rig's dtypes (with `reference`: the warped log as `warp_log` gives it, uint8 + bool)."""
    rng = np.random.default_rng(seed)
    return [{"camera": f"CAM{i}", "rgb": rng.random((h, w, 3), dtype=np.float32),
             "depth": (rng.random((h, w), dtype=np.float32) * 40).astype(np.float32),
             "alpha": np.ones((h, w), np.float32),
             **({"reference": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                 "reference_valid": rng.random((h, w)) > 0.2} if reference else {})} for i in range(n)]


def _plain_torch_enhance(model: Enhancer, rgb: np.ndarray, depth: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The baseline: `Enhancer.enhance` as it ran before its CPU passes and channels-last memory (the torch
    forward on a contiguous NCHW input, the result copied into NHWC); the same values to float rounding."""
    t = torch.from_numpy
    s, (c, h, w) = model.config.unshuffle, depth.shape
    with torch.no_grad():
        x = network_input(t(rgb).permute(0, 3, 1, 2), t(depth), t(alpha), None, None, model.config.depth_scale_m,
                          model.multiple, s).contiguous()
        residual = model.unet(x, torch.full((c,), model.config.timestep, dtype=torch.long)).sample
        y = t(rgb).permute(0, 3, 1, 2) + pixel_shuffle(residual, s)[..., :h, :w]
        out = np.empty_like(rgb)
        torch.from_numpy(out).copy_(y.clamp_(0, 1).permute(0, 2, 3, 1))
    return out


def bench_model(checkpoint: Path, repeats: int) -> dict:
    """The shipped `enhance` on a CPU at the precision a server picks here (`--precision auto`), its ratio to the
    plain torch baseline and, where that precision is bfloat16, to the same path in float32; alternating in this
    process."""
    torch.set_num_threads(os.cpu_count() or 1)
    model = Enhancer.from_pretrained(checkpoint)
    precision = model.set_cpu_precision("auto")
    exact = Enhancer.from_pretrained(checkpoint)  # float32
    frames = _frames(0)
    rgb = np.stack([f["rgb"] for f in frames])
    depth = np.stack([f["depth"] for f in frames])
    alpha = np.stack([f["alpha"] for f in frames])
    runs = {"shipped": lambda: model.enhance(rgb, depth, alpha),
            "baseline": lambda: _plain_torch_enhance(exact, rgb, depth, alpha)}
    if precision != "float32":
        runs["float32"] = lambda: exact.enhance(rgb, depth, alpha)
    for run in runs.values():  # warm up
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - t0) * 1000.0)
    median = {name: float(np.median(values)) for name, values in times.items()}
    return {"ms_per_tick_6_frames": round(median["shipped"], 2), "ms_per_frame": round(median["shipped"] / 6, 2),
            "cpu_precision": precision, "repeats": repeats,
            "baseline_plain_torch_ms_per_tick": round(median["baseline"], 2),
            "ratio_to_baseline": round(median["shipped"] / median["baseline"], 3),
            "baseline": "the torch forward on a contiguous NCHW input in float32 (enhance before channels-last "
                        "and its compiled passes), alternating with the shipped path",
            **({"float32_ms_per_tick": round(median["float32"], 2),
                "ratio_to_float32": round(median["shipped"] / median["float32"], 3)} if "float32" in median else {}),
            "torch_threads": torch.get_num_threads(), "parameters": sum(p.numel() for p in model.parameters())}


TRANSPORTS = {  # name: EnhancerClient options, and the (transport, route) it must take
    "zero-copy": (dict(shared_memory=True, direct=True), ("shm", "direct")),
    "direct": (dict(shared_memory=True, direct=True), ("shm", "direct")),
    "shm": (dict(shared_memory=True, direct=False), ("shm", "broker")),
    "bytes": (dict(shared_memory=False), ("bytes", "broker")),
}


def bench_transport(checkpoint: Path, repeats: int) -> dict:
    """Overhead per tick of each path (TRANSPORTS), one server, the paths alternating request by request (this
    host's speed drifts within minutes)."""
    server = start_server(checkpoint=checkpoint)
    clients: dict[str, EnhancerClient] = {}
    try:
        for name, (options, expected) in TRANSPORTS.items():
            clients[name] = client = EnhancerClient(server.endpoint, deadline_ms=60_000, **options)
            client.wait_ready()
            if (client.transport, client.route) != expected:
                raise RuntimeError(f"transport benchmark: {name} takes {client.transport} / {client.route}")
        frames = _frames(1, reference=True)
        out = [np.empty_like(f["rgb"]) for f in frames]  # as the rig calls it: into buffers it already owns
        lent = clients["zero-copy"].frame_buffers(len(frames), *frames[0]["depth"].shape)
        if lent is None:
            raise RuntimeError("transport benchmark: the zero-copy client was lent no buffers")
        for i, f in enumerate(frames):  # where the renderer would have written them (outside the timing)
            for key in ("rgb", "depth", "alpha"):
                lent[key][i] = f[key]
        lent_frames = [{**f, **{key: lent[key][i] for key in ("rgb", "depth", "alpha")}} for i, f in enumerate(frames)]
        lent_out = list(lent["enhanced"])  # as the rig calls it: the worker writes its reply there
        times = {name: {"rtt": [], "model": [], "worker": [], "encode": []} for name in clients}
        for name, client in clients.items():
            sent, into = (lent_frames, lent_out) if name == "zero-copy" else (frames, out)
            client.enhance(sent, out=into)  # warm up
        for _ in range(repeats):
            for name, client in clients.items():
                t = times[name]
                sent, into = (lent_frames, lent_out) if name == "zero-copy" else (frames, out)
                t0 = time.perf_counter()  # the encoding share, measured alone: into the block, or into arrays
                if client.transport == "shm":
                    layout, block_bytes, _ = client._shm_layout(sent, into)
                    client._shm_request(sent, layout, block_bytes, "encode-only", 60_000)
                else:
                    del [client._wire_frame(f, i) for i, f in enumerate(sent)][:]
                t["encode"].append((time.perf_counter() - t0) * 1000.0)
                result = client.enhance(sent, out=into)
                if not result.enhanced or (client.transport, client.route) != TRANSPORTS[name][1]:
                    raise RuntimeError(f"transport benchmark ({name}): {result.reason}")
                t["rtt"].append(result.latency_ms)
                t["model"].append(result.model_ms)
                t["worker"].append(result.worker_ms)
        stats = clients["shm"].stats()
    finally:
        for client in clients.values():
            client.close()
        stop_server(server)
    out = {}
    for name, t in times.items():
        rtt, model, worker = (np.array(t[k]) for k in ("rtt", "model", "worker"))
        overhead = rtt - model
        out[name] = {"path": "/".join(TRANSPORTS[name][1]), "round_trip_ms_median": round(float(np.median(rtt)), 2),
                     "worker_model_ms_median": round(float(np.median(model)), 2),
                     "worker_total_ms_median": round(float(np.median(worker)), 2),
                     "worker_codec_ms_median": round(float(np.median(worker - model)), 2),
                     "wire_and_client_ms_median": round(float(np.median(rtt - worker)), 2),
                     "overhead_ms_median": round(float(np.median(overhead)), 2),
                     "overhead_ms_p90": round(float(np.percentile(overhead, 90)), 2),
                     "client_encode_ms_median": round(float(np.median(t["encode"])), 2), "repeats": repeats}
    out["server_p50_ms"], out["server_p99_ms"] = stats["p50_ms"], stats["p99_ms"]
    out["frames"] = ("6 x 480x270 as the rig sends them: float32 rgb / depth / alpha and the warped log (uint8 rgb, "
                     "bool valid); uint8 rgb / float16 depth / uint8 alpha on the wire, except zero-copy: float32 where they lie)")
    out["order"] = "the paths alternate request by request against one server"
    return out


def bench_restarts(checkpoint: Path, ticks: int, restart_every: int, width: int, height: int, tick_hz: float) -> dict:
    scene = make_street_scene(50_000, seed=3)
    servers = [start_server(checkpoint=checkpoint, threads=1)]
    endpoint = servers[0].endpoint
    client = EnhancerClient(endpoint, deadline_ms=500)
    rig = NeuralSensorRig(scene, nuscenes_like_rig(width, height), backend="cpu", enhancer=client)
    counts = {"ticks": 0, "delivered": 0, "enhanced": 0, "raw_flagged": 0, "raw_unflagged": 0, "missing_frames": 0}
    recover_s: list[float] = []
    ready_at: list[float] = []  # when each restarted server reported ready (set by the restart thread)
    restarts: list[threading.Thread] = []

    def restart() -> None:  # SIGKILL, then a new process on the same port; the rig keeps ticking meanwhile
        servers[-1].kill()
        servers.append(start_server(checkpoint=checkpoint, bind=endpoint, threads=1))
        ready_at.append(time.monotonic())

    start = time.perf_counter()
    period = 1.0 / tick_hz
    try:
        client.wait_ready()
        t_next = time.monotonic()
        for tick in range(ticks):
            if tick and tick % restart_every == 0:
                restarts.append(threading.Thread(target=restart))
                restarts[-1].start()
            x = 0.01 * tick
            ego = AgentState(0, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(x % 40, -1.75, 0.0, 0.0), 5.0)
            frames = rig.capture(WorldSnapshot(tick, tick * period, ego, ()))
            counts["ticks"] += 1
            if len(frames) != 6 or any(f.rgb is None or f.rgb.shape != (height, width, 3) for f in frames.values()):
                counts["missing_frames"] += 1
            else:
                counts["delivered"] += 1
                if all(f.meta["enhanced"] for f in frames.values()):
                    counts["enhanced"] += 1
                    if len(ready_at) > len(recover_s):
                        recover_s.append(time.monotonic() - ready_at[len(recover_s)])
                elif all(f.meta["enhancer_reason"] for f in frames.values()):
                    counts["raw_flagged"] += 1
                else:
                    counts["raw_unflagged"] += 1
            t_next += period
            time.sleep(max(0.0, t_next - time.monotonic()))
    finally:
        for thread in restarts:
            thread.join()
        client.close()
        for server in servers:
            stop_server(server)
    return {**counts, "restarts": len(restarts), "wall_s": round(time.perf_counter() - start, 1),
            "tick_hz": tick_hz, "recovered": len(recover_s),
            "recover_after_ready_s_max": round(max(recover_s), 3) if recover_s else None,
            "recover_after_ready_s_median": round(float(np.median(recover_s)), 3) if recover_s else None,
            "image_size": [width, height], "cameras": 6, "deadline_ms": 500,
            "kill": "SIGKILL of the broker, then a new server process on the same port (started in a thread)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=default_checkpoint(DEFAULT_ENHANCER))
    parser.add_argument("--repeats", type=count(1), default=20, help="timed calls of the model and of each transport")
    parser.add_argument("--ticks", type=count(1), default=10_000, help="ticks of the restart run")
    parser.add_argument("--restart-every", type=count(1), default=1000, help="ticks between the server's restarts")
    parser.add_argument("--restart-size", type=count(1), nargs=2, default=(64, 36), metavar=("W", "H"))
    parser.add_argument("--tick-hz", type=positive, default=20.0, help="tick pacing of the restart run (sim time rate)")
    parser.add_argument("--skip-restarts", action="store_true", help="only the model and transport parts")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = {"benchmark": "enhancer", "machine": machine_name(), "checkpoint": str(args.checkpoint),
              "model": bench_model(args.checkpoint, args.repeats),
              "transport": bench_transport(args.checkpoint, args.repeats)}
    if not args.skip_restarts:
        result["restarts"] = bench_restarts(args.checkpoint, args.ticks, args.restart_every, *args.restart_size,
                                            args.tick_hz)
    m, t = result["model"], result["transport"]
    against_float32 = f", {m['ratio_to_float32']} x float32" if "ratio_to_float32" in m else ""
    summary = (f"{result['machine']}: model {m['ms_per_frame']} ms/frame at 480x270 in {m['cpu_precision']} "
               f"({m['ratio_to_baseline']} x the plain torch baseline{against_float32}); transport overhead per tick "
               f"(6 x 480x270, median / p90): " +
               ", ".join(f"{name} {t[name]['overhead_ms_median']} / {t[name]['overhead_ms_p90']} ms" for name in TRANSPORTS))
    if "restarts" in result:
        r = result["restarts"]
        summary += (f"; {r['ticks']} ticks, {r['restarts']} restarts: {r['missing_frames']} without a frame, "
                    f"{r['enhanced']} enhanced, {r['raw_flagged']} raw (flagged), recovery <= "
                    f"{r['recover_after_ready_s_max']} s after ready")
    result["summary"] = summary
    write_result(result, "enhancer", args.json)


if __name__ == "__main__":
    run_main(main)
