"""A short slug naming the machine a benchmark ran on: CPU model and core count, plus the GPU if any."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path


def machine_name() -> str:
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
