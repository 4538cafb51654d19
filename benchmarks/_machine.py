"""Shared by the benchmarks: the machine's name, and writing a result as JSON with its summary line."""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import sys
from pathlib import Path


def machine_name() -> str:
    """CPU model and core count, plus the GPU if any, as a file-name slug. A virtual machine's CPU that calls itself
    only "AMD EPYC" gets "zen4" where it has AVX-512 with bfloat16 (Zen 4 or later), so its results do not overwrite
    an AVX2 EPYC's (amd-epyc-2c)."""
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first core's lines
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1]
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")
    if slug == "amd-epyc" and "avx512_bf16" in flags:
        slug += "-zen4"
    slug += f"-{os.cpu_count()}c"
    try:
        import torch

        if torch.cuda.is_available():
            slug += "-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")
    except ImportError:
        pass
    return slug


def write_result(result: dict, name: str, out: Path | None, save: bool = True) -> None:
    """Write results/<name>-<machine>.json (or `out`), then print the JSON and the one-line summary. The result
    records the command that made it (`command`, unless the benchmark set its own)."""
    result.setdefault("command", "python " + " ".join(shlex.quote(a) for a in sys.argv))
    path = out or Path(__file__).parent / "results" / f"{name}-{result['machine']}.json"
    if save or out is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    print(result["summary"])
