"""`parallel_section()`: where numba's parallel kernels may be entered from several threads at once.

numba picks its threading layer at the first parallel kernel: tbb, then omp (where the system has libgomp), then
workqueue. tbb and omp take parallel regions from many threads; workqueue does not, and ends the whole process
(std::terminate, exit 134) when two threads enter one at the same time: a new user's four camera rigs (two egos, a
parked car, a fixed camera), each rendering on its own thread, under NUMBA_THREADING_LAYER=workqueue, as on a
machine with neither TBB nor libgomp. Code that renders on a thread of its own (a rig's capture) runs inside
`parallel_section()`: a process-wide lock until the first kernel has told which layer numba took, and for good
where that is workqueue; nothing where it is thread-safe.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext

THREAD_SAFE_LAYERS = ("tbb", "omp")

_lock = threading.RLock()
_thread_safe: bool | None = None  # None until a parallel kernel has run


def _layer() -> str | None:
    """The threading layer numba took, or None before any parallel kernel ran (or without numba)."""
    try:
        import numba

        return numba.threading_layer()
    except (ImportError, ValueError):
        return None


class _Serialised:
    def __enter__(self):
        _lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        global _thread_safe
        try:
            if _thread_safe is None:
                layer = _layer()
                if layer is not None:
                    _thread_safe = layer in THREAD_SAFE_LAYERS
        finally:
            _lock.release()


def parallel_section():
    """A context manager around code that runs numba parallel kernels (see the module docstring)."""
    return nullcontext() if _thread_safe else _Serialised()


__all__ = ["parallel_section", "THREAD_SAFE_LAYERS"]
