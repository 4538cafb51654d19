"""`parallel_section()`: where numba's parallel kernels may be entered from several threads at once.

numba picks its threading layer at the first parallel kernel: tbb, then omp (where the system has libgomp), then
workqueue. tbb and omp take parallel regions from many threads; workqueue does not, and ends the whole process
(std::terminate, exit 134) when two threads enter one at the same time: a new user's four camera rigs (two egos, a
parked car, a fixed camera), each rendering on its own thread, under NUMBA_THREADING_LAYER=workqueue, as on a
machine with neither TBB nor libgomp. Code that may run numba's parallel kernels on a thread of its own (a rig's
capture and prepare, `render`, a scene cache build) runs inside `parallel_section()`: a process-wide (re-entrant)
lock where the layer numba takes, or will take, is workqueue; nothing where it is thread-safe. The layer is decided
once, before any kernel runs (`layer_is_thread_safe`), as numba decides it.
"""

from __future__ import annotations

import importlib
import threading
from contextlib import nullcontext

THREAD_SAFE_LAYERS = ("tbb", "omp")

_lock = threading.RLock()
_thread_safe: bool | None = None


def layer_is_thread_safe() -> bool:
    """Whether numba's threading layer in this process takes parallel regions from several threads: the layer it
    launched, else the one it will launch (NUMBA_THREADING_LAYER; "default" / "forksafe": tbb, then omp, where
    their libraries load; "safe" / "threadsafe" name thread-safe ones). No numba: True (nothing to guard)."""
    try:
        import numba
    except ImportError:
        return True
    try:
        return numba.threading_layer() in THREAD_SAFE_LAYERS  # (launched: ValueError before the first kernel)
    except ValueError:
        pass
    choice = str(numba.config.THREADING_LAYER).lower()
    if choice in ("tbb", "omp", "safe", "threadsafe"):
        return True
    if choice == "workqueue":
        return False
    pools = ("tbbpool", "omppool") if choice == "default" else ("tbbpool",)  # (forksafe: GNU OpenMP is not)
    for pool in pools:
        try:
            importlib.import_module(f"numba.np.ufunc.{pool}")
            return True
        except (ImportError, OSError):
            continue
    return False


def parallel_section():
    """A context manager around code that may run numba parallel kernels (see the module docstring)."""
    global _thread_safe
    if _thread_safe is None:
        _thread_safe = layer_is_thread_safe()
    return nullcontext() if _thread_safe else _lock


__all__ = ["parallel_section", "layer_is_thread_safe", "THREAD_SAFE_LAYERS"]
