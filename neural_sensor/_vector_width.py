"""Let numba's LLVM use 512-bit vectors on CPUs with AVX-512.

LLVM's tuning for recent Intel server cores prefers 256-bit vectors, so a loop over the rasteriser's 16
float32 lanes becomes two AVX2 operations instead of one AVX-512 operation. Dropping that preference
(`-prefer-256-bit` in the target features) made the CPU renderer's rasterising 21 % faster on this project's
Xeon (Emerald Rapids; 65.9 -> 51.8 ms per six-camera tick of the demo street, three alternating runs each).
Applied once, before numba builds its code generator, only where the host has AVX-512F and the user has not
set NUMBA_CPU_NAME / NUMBA_CPU_FEATURES (theirs win). numba keys its on-disk cache by the target features, so
kernels compiled either way never mix. NEURAL_SENSOR_PREFER_256_BIT=1 keeps LLVM's default.
"""

from __future__ import annotations

import os
import sys


OURS = "NEURAL_SENSOR_NUMBA_CPU_FEATURES"  # the value we set, so a child process can tell it from a user's


def prefer_512_bit_vectors() -> str | None:
    """Set numba's CPU features to the host's minus LLVM's 256-bit preference, if it applies; returns the
    feature string set, or None (no AVX-512, a user setting, or numba's code generator already built).

    A user setting is NUMBA_CPU_NAME, NUMBA_CPU_FEATURES (unless it is the value this function set in a parent
    process, which child processes inherit), NUMBA_ENABLE_AVX=0 or a .numba_config.yaml in the working folder.
    """
    inherited = os.environ.get("NUMBA_CPU_FEATURES")
    if inherited is not None and inherited == os.environ.get(OURS):
        del os.environ["NUMBA_CPU_FEATURES"]  # a parent's choice, not the user's: decide again here
        del os.environ[OURS]
    if (os.environ.get("NUMBA_CPU_NAME") or os.environ.get("NUMBA_CPU_FEATURES")
            or os.environ.get("NUMBA_ENABLE_AVX", "").strip() == "0" or os.path.exists(".numba_config.yaml")):
        return None
    if os.environ.get("NEURAL_SENSOR_PREFER_256_BIT", "") not in ("", "0"):
        return None
    try:
        import llvmlite.binding as llvm

        features = llvm.get_host_cpu_features().flatten()
    except Exception:  # noqa: BLE001 - an llvmlite without host feature detection: keep numba's defaults
        return None
    if "+avx512f" not in features.split(","):
        return None
    features += ",-prefer-256-bit"
    if "numba" not in sys.modules:
        os.environ["NUMBA_CPU_FEATURES"] = features  # numba reads it when it is imported
        os.environ[OURS] = features
        return features
    from numba.core import config, registry

    if "_toplevel_target_context" in vars(registry.cpu_target):  # pragma: no cover - its codegen exists: too late
        return None
    config.CPU_FEATURES = features
    return features
