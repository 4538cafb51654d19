"""neural_sensor.jit_cache: a machine that has not compiled the chain's kernels is told so, one that has is not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json
import numpy as np
from neural_sensor.jit_cache import KERNEL_MODULES, compile_notice, uncompiled_modules
from neural_sensor.reconstruct.fuse import cross_view_counts

before = uncompiled_modules()
notice = compile_notice(KERNEL_MODULES)
# compile one module's kernel (two views that see each other) into the empty cache
cross_view_counts(np.zeros((2, 3, 3), np.float32) + [0.0, 0.0, 5.0], np.tile(np.eye(4)[:3], (2, 1, 1)),
                  np.tile([10.0, 10.0, 4.0, 4.0], (2, 1)), np.full((2, 8, 8), 5.0, np.float32),
                  np.array([[1], [0]]), 0.1, 0.05)
after = uncompiled_modules()
# announced once per module per process: the renderer first, then a reconstruction's other kernels, then nothing
import contextlib, io
from neural_sensor.jit_cache import RECONSTRUCTION_MODULES, RENDER_MODULES, announce_compiling
said = []
for modules in (RENDER_MODULES, RECONSTRUCTION_MODULES, RECONSTRUCTION_MODULES):
    with contextlib.redirect_stderr(io.StringIO()) as err:
        announce_compiling(modules)
    said.append(err.getvalue())
print(json.dumps({"modules": list(KERNEL_MODULES), "before": before, "notice": notice, "after": after,
                  "said": said}))
"""


def test_an_empty_kernel_cache_is_announced_and_a_compiled_module_is_not(tmp_path):
    """In a process whose numba cache is an empty folder every module of the chain is uncompiled and the run's
    notice says it is compiling; once a module's kernel has run (and so been cached) that module drops out."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["before"] == out["modules"]
    assert "compiling the CPU kernels of 8 modules" in out["notice"] and "cached after" in out["notice"]
    assert out["after"] == [m for m in out["modules"] if m != "neural_sensor.reconstruct.fuse"]
    # render.cpu (1 module), then backproject and photometric (fuse is compiled by now; cpu was announced)
    assert "compiling the CPU kernels of 1 module for" in out["said"][0]
    assert "compiling the CPU kernels of 2 more modules (part of" in out["said"][1] and out["said"][2] == ""


def test_a_run_names_only_the_kernels_it_will_use():
    """The notice's modules follow the run: the renderer on the CPU, the enhancer client's warp and accumulation
    only when they run (a reconstruction's own kernels are announced by its build: only a scene not cached)."""
    from pathlib import Path as P

    from neural_sensor.jit_cache import compile_notice
    from scenarios.runner import RunOptions, _kernel_modules

    out = P("unused")
    builder = _kernel_modules(RunOptions(out_dir=out, backend="cpu"), "builder")
    assert builder == ["neural_sensor.render.cpu"]
    assert _kernel_modules(RunOptions(out_dir=out, backend="torch"), "builder") == []
    # a reconstruction's own kernels are announced by its build, only when the scene is not cached
    chain = set(_kernel_modules(RunOptions(out_dir=out, backend="cpu", enhancer="local"), "reconstruction"))
    assert chain == {"neural_sensor.render.cpu", "neural_sensor.render.upsample", "neural_sensor.enhance.log_warp",
                     "neural_sensor.enhance.temporal"}  # a reconstruction is drawn at half size and upsampled
    assert "neural_sensor.render.upsample" not in _kernel_modules(
        RunOptions(out_dir=out, backend="cpu", enhancer="local", render_scale=1.0), "reconstruction")
    bare = set(_kernel_modules(RunOptions(out_dir=out, backend="cpu", enhancer="local", log_reference=False,
                                          temporal_blend=0.0), "log"))
    assert bare == chain - {"neural_sensor.enhance.log_warp", "neural_sensor.enhance.temporal"}
    assert compile_notice([]) is None


def test_numba_caches_in_a_folder_of_the_users_own_where_it_has_none(tmp_path, monkeypatch):
    """A new user's finding: an install the running user cannot write (root-owned site-packages under `docker run
    --user`) with a HOME it cannot write either ended every command at import ("cannot cache function ...: no
    locator available"). There NUMBA_CACHE_DIR is set to a folder of the user's own; a NUMBA_CACHE_DIR the user set
    is kept, and where numba has a folder of its own nothing is set."""
    import os

    from neural_sensor import _numba_cache

    package, home_cache = tmp_path / "site-packages" / "neural_sensor", tmp_path / "home" / ".cache" / "numba"
    nothing_writable = lambda path: False  # noqa: E731
    assert _numba_cache.fallback_cache_dir(package, home_cache, writable=lambda path: True) is None
    assert _numba_cache.fallback_cache_dir(package, home_cache, writable=lambda p: p == home_cache) is None
    fallback = _numba_cache.fallback_cache_dir(package, home_cache, writable=nothing_writable)
    assert fallback is not None and fallback.name.startswith("neural_sensor-numba-")
    monkeypatch.setattr(_numba_cache.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    monkeypatch.setattr(_numba_cache, "fallback_cache_dir",
                        lambda: _numba_cache.Path(tmp_path / "tmp" / "neural_sensor-numba-0"))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    from numba.core import config

    try:
        folder = _numba_cache.ensure_numba_cache()
        assert folder == tmp_path / "tmp" / "neural_sensor-numba-0" and folder.is_dir()
        assert os.environ["NUMBA_CACHE_DIR"] == str(folder) and config.CACHE_DIR == str(folder)
        monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
        assert _numba_cache.ensure_numba_cache() is None and os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "mine")
    finally:
        monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
        config.reload_config()
