"""The networks' arithmetic on a CPU: float32 everywhere, or bfloat16 where the CPU multiplies it fast.

A light module (torch is imported only to probe the CPU) so that the server's command line can offer the choices
without loading torch; `Enhancer.set_cpu_precision` applies one to the enhancer, and the reconstruction's network
takes one too (`neural_sensor.reconstruct.drive.network_precision_inputs`, `reconstruct.model.predict_views`).

"auto" takes bfloat16 where the CPU has AMX tiles, and elsewhere where it runs bfloat16 convolutions natively
(AVX-512 BF16) AND a short timed probe finds them clearly faster than float32 (`bfloat16_speedup`): the same flag
ran the enhancer 1.5x faster on an AMD EPYC (Zen 4) and slower on an earlier Xeon (docs/results.md), so the
flags alone cannot decide. Once the probe finds bfloat16 faster on a host, that answer is kept
(`probed_bfloat16_faster`: a small JSON file beside the scene cache), so that the machine answers "auto" the same
way from then on: a probe timed while another process held a core answered float32 on a CPU where bfloat16 is
1.5x faster, and a reconstruction's network precision is part of its scene and its cache key.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

CPU_PRECISIONS = ("auto", "float32", "bfloat16")  # the UNet's arithmetic on a CPU (`Enhancer.set_cpu_precision`)


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Sapphire Rapids and later), where oneDNN runs bfloat16 convolutions
    on the tile unit: the enhancer's UNet takes 33 ms instead of 53 for six 480x270 frames on two cores of such a
    Xeon. Without AMX the speed of bfloat16 depends on the CPU (slower than float32 on an AVX-512 BF16 Xeon, 1.5x
    faster on an AMD EPYC Zen 4, docs/results.md): `bfloat16_speedup` measures it there."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        try:
            return bool(probe())
        except Exception:  # noqa: BLE001 - a private probe: fall back to the kernel's flags
            pass
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in f)
    except OSError:
        return False


BF16_MIN_SPEEDUP = 1.15  # "auto" takes bfloat16 without AMX only where the probe finds it at least this much faster


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX-512 BF16 or AMX; torch's own check)."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - a private probe: without it, no bfloat16 by default
        return False


@functools.lru_cache(maxsize=1)
def bfloat16_speedup(repeats: int = 5, rounds: int = 3) -> float:
    """float32 time / bfloat16-autocast time of a small stack of 3x3 convolutions like the enhancer UNet's
    (channels-last, 1 x 144 x 68 x 120 in, the unshuffled size of one 480x270 frame; 16, 32 and 64 channels):
    the medians over `repeats` alternating timed passes after one warm-up each, on the threads torch uses now,
    and the best of up to `rounds` such rounds (stopping at the first that clears BF16_MIN_SPEEDUP): another
    process busy on the same cores for a moment (a run compiling its kernels as its server starts) can take
    one round under 1 on a CPU where bfloat16 is 1.5x faster. ~50 ms a round on two cores of an AMD EPYC;
    measured once per process (cached)."""
    import torch
    from torch import nn

    with torch.no_grad():
        net = nn.Sequential(nn.Conv2d(144, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 32, 3, padding=1,
                            stride=2), nn.SiLU(), nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.SiLU(),
                            nn.Conv2d(64, 64, 3, padding=1)).to(memory_format=torch.channels_last).eval()
        x = torch.randn(1, 144, 68, 120).contiguous(memory_format=torch.channels_last)

        def seconds(bf16: bool) -> float:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                net(x)
            return time.perf_counter() - start

        best = 0.0
        for _ in range(max(1, rounds)):
            seconds(False), seconds(True)
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(repeats):
                for bf16 in (False, True):
                    times[bf16].append(seconds(bf16))
            median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
            best = max(best, median[False] / max(median[True], 1e-9))
            if best >= BF16_MIN_SPEEDUP:
                break
    return best


DECISION_FILE = "cpu-precision.json"  # beside the scene cache's folder: {host key: the probe's answer}
KEEP_MIN_SPEEDUP = 1.3  # a bfloat16 answer is kept only with this margin (the probe, best of rounds, leans up)


def decision_path() -> Path:
    """Where the probe's answers are kept: beside the default scene cache (`reconstruct.cache.default_cache_root`),
    $NEURAL_SENSOR_CACHE/cpu-precision.json, else ~/.cache/neural_sensor/cpu-precision.json."""
    from neural_sensor.reconstruct.cache import default_cache_root

    return default_cache_root().parent / DECISION_FILE


def host_key() -> str:
    """What the probe's answer depends on: the CPU's model and flags, torch's version and its thread count (16 hex
    digits)."""
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))]
        cpu = "".join(sorted(set(lines)))
    except OSError:
        pass
    text = json.dumps([cpu, platform.machine(), torch.__version__, torch.get_num_threads()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def probed_bfloat16_faster() -> bool:
    """Whether bfloat16 is at least BF16_MIN_SPEEDUP times faster here: True when that answer is kept for this host
    (`decision_path`, `host_key`), else `bfloat16_speedup` timed now. A True is kept only where the probe found at
    least KEEP_MIN_SPEEDUP (1.4-1.6x on a Zen 4 EPYC): a CPU near the bar, or a probe slowed by another process on
    the same cores, answers per process as before, and a False is never kept (an AVX-512 BF16 Xeon, ~0.8x, times
    it in every process). A file that cannot be read or written only means the probe runs again. Delete the file
    to probe again; --network-precision / --enhancer-precision choose explicitly."""
    path, key = decision_path(), host_key()
    try:
        kept = json.loads(path.read_text()).get(key) if path.is_file() else None
    except (OSError, ValueError, AttributeError):
        kept = None
    if isinstance(kept, dict) and kept.get("bfloat16_faster") is True:
        return True
    speedup = bfloat16_speedup()
    faster = speedup >= BF16_MIN_SPEEDUP
    if speedup < KEEP_MIN_SPEEDUP:
        return faster
    try:
        answers = json.loads(path.read_text()) if path.is_file() else {}
        answers = answers if isinstance(answers, dict) else {}
    except (OSError, ValueError):
        answers = {}
    answers[key] = {"bfloat16_faster": faster, "speedup": round(speedup, 3), "min_speedup": BF16_MIN_SPEEDUP,
                    "timed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(answers, f, indent=1)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass
    return faster


def check_cpu_precision(precision: str, name: str = "CPU precision") -> str:
    """`precision` itself when it is one of CPU_PRECISIONS; ValueError naming the option (`name`) and the choices
    otherwise."""
    if precision not in CPU_PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(CPU_PRECISIONS)}, got {precision!r}")
    return precision


def resolve_cpu_precision(precision: str, name: str = "CPU precision") -> str:
    """"float32" or "bfloat16" for a `CPU_PRECISIONS` value: "auto" is bfloat16 where the CPU has AMX
    (`cpu_has_amx`), or native bfloat16 (`cpu_has_bf16`) that the timed probe finds at least BF16_MIN_SPEEDUP
    times faster (`probed_bfloat16_faster`: timed once per host, then kept), float32 elsewhere. ValueError for
    anything else (`check_cpu_precision`)."""
    if check_cpu_precision(precision, name) == "auto":
        if cpu_has_amx():
            return "bfloat16"
        return "bfloat16" if cpu_has_bf16() and probed_bfloat16_faster() else "float32"
    return precision
