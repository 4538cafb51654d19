"""The enhancer's arithmetic on a CPU: float32 everywhere, or bfloat16 where the CPU multiplies it fast.

A light module (torch is imported only to probe the CPU) so that the server's command line can offer the choices
without loading torch; `Enhancer.set_cpu_precision` applies one.
"""

from __future__ import annotations

CPU_PRECISIONS = ("auto", "float32", "bfloat16")  # the UNet's arithmetic on a CPU (`Enhancer.set_cpu_precision`)


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Sapphire Rapids and later), where oneDNN runs bfloat16 convolutions
    on the tile unit: the enhancer's UNet takes 33 ms instead of 53 for six 480x270 frames on two cores of such a
    Xeon. Without AMX a bfloat16 autocast was slower than float32 (an AVX-512 BF16 Xeon, docs/results.md)."""
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


def check_cpu_precision(precision: str) -> str:
    """`precision` itself when it is one of CPU_PRECISIONS; ValueError naming the choices otherwise."""
    if precision not in CPU_PRECISIONS:
        raise ValueError(f"enhancer CPU precision must be one of {', '.join(CPU_PRECISIONS)}, got {precision!r}")
    return precision


def resolve_cpu_precision(precision: str) -> str:
    """"float32" or "bfloat16" for a `CPU_PRECISIONS` value: "auto" is bfloat16 where the CPU has AMX
    (`cpu_has_amx`), float32 elsewhere. ValueError for anything else (`check_cpu_precision`)."""
    if check_cpu_precision(precision) == "auto":
        return "bfloat16" if cpu_has_amx() else "float32"
    return precision
