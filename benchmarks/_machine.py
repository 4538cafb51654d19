"""Shared by the benchmarks: the machine's name, and writing a result as JSON with its summary line."""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path


def machine_name() -> str:
    """CPU model and core count, plus the GPU if any, as a file-name slug."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1]
                break
    except OSError:
        pass
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-") + f"-{os.cpu_count()}c"
    try:
        import torch

        if torch.cuda.is_available():
            slug += "-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")
    except ImportError:
        pass
    return slug


def write_result(result: dict, name: str, out: Path | None, save: bool = True) -> None:
    """Write results/<name>-<machine>.json (or `out`), then print the JSON and the one-line summary."""
    path = out or Path(__file__).parent / "results" / f"{name}-{result['machine']}.json"
    if save or out is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    print(result["summary"])
