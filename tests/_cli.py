"""What the CLI tests share: the repository root, a tiny builder run's options, `cli` (the CLI in a child
process, as a user runs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--width", "64", "--height", "36", "--no-video", "--scene", "builder"]  # the chain is tested on its own


def cli(args, tmp_path, *, env=None, cwd=None, timeout=300):
    """`python -m scenarios.cli ARGS` from the repository root (or cwd): the CompletedProcess, text captured."""
    env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "scenarios.cli", *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
