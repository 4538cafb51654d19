"""The benchmark scripts refuse bad options by name before any work (a new user's findings, 2026-12-07: zero ticks,
repeats or worlds had ended in tracebacks after minutes of work, fusion.py's default --variants was refused, and
Ctrl-C printed a traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("args, message", [
    (["bridge.py", "--ticks", "0"], "argument --ticks: must be at least 1, got 0"),
    (["bridge.py", "--cameras", ","], "--cameras: no camera named"),
    (["render.py", "--quick", "--frames", "0"], "argument --frames: must be at least 1"),
    (["render.py", "--quick", "--backends", "bogus"], "--backends: of cpu, gsplat"),
    (["enhancer.py", "--repeats", "0"], "argument --repeats: must be at least 1"),
    (["enhancer.py", "--tick-hz", "0"], "argument --tick-hz: must be a number > 0"),
    (["log_reference.py", "--worlds", "0"], "argument --worlds: must be at least 1"),
    (["fidelity.py", "--seeds", "1000011:1000010"], "--seeds A:B needs 0 <= A < B"),
    (["runtime.py", "--ticks", "0"], "argument --ticks: must be at least 1"),
    (["fusion.py", "--refine", "-1"], "argument --refine: must be at least 0"),
    (["lifecycle_soak.py", "--runs", "0"], "argument --runs: must be at least 1"),
    (["route_commands.py", "--agents-path", "."], "CARLA's agents package not importable there"),
    (["route_commands.py", "--agents-path", ".", "--routes", "0"], "argument --routes: must be at least 1"),
])
def test_benchmarks_refuse_bad_options_by_name(args, message, tmp_path):
    result = subprocess.run([sys.executable, str(BENCHMARKS / args[0]), *args[1:]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_fusion_variants_split_at_spaces_or_commas_before_a_name():
    sys.path.insert(0, str(BENCHMARKS))
    import fusion

    split = fusion.split_variants("merge,carve:carve_tol=0.3,carve_views=2 carve")
    assert split == ["merge", "carve:carve_tol=0.3,carve_views=2", "carve"]
    assert fusion.split_variants("merge,carve") == fusion.split_variants("merge carve") == ["merge", "carve"]
    assert [fusion.parse_variant(v)[0] for v in split] == ["merge", "carve:carve_tol=0.3,carve_views=2", "carve"]
