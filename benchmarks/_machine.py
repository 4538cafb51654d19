"""Shared by the benchmarks: the machine's name, and writing a result as JSON with its summary line."""

from __future__ import annotations

import argparse
import json
import math
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


def count(low: int = 1):
    """An argparse type: an integer >= low, refused by name otherwise (0 ticks or repeats had ended in a traceback
    after minutes of work: an empty median, an empty percentile). The CLI's `int_at_least`."""
    from neural_sensor.cli import int_at_least

    return lambda text: int_at_least(text, low, f"at least {low}")


def positive(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0.0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def run_main(main) -> None:
    """Run a benchmark's main() and exit with its code (an int it returns, else 0). Ctrl-C ends it with one line and
    exit 130, SIGTERM with 143, no traceback: also inside a compiled kernel, where numba raises a SystemError over
    the KeyboardInterrupt (`scenarios.signals.terminate_as_exception`, as the CLI's runs). What a benchmark writes as
    it goes (runtime_fidelity's .partial.json) stays."""
    from scenarios.signals import terminate_as_exception

    try:
        with terminate_as_exception():
            code = main()
    except KeyboardInterrupt:
        print(f"{Path(sys.argv[0]).name}: interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit as stop:
        if stop.code == 143:
            print(f"{Path(sys.argv[0]).name}: terminated", file=sys.stderr)
        raise
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)
