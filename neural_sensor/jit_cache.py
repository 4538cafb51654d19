"""Whether numba has already compiled the CPU kernels on this machine (its on-disk cache), so a run can say why
its first time is slow.

Every compiled kernel of the chain is cached by numba next to its source (`cache=True`), per machine: a fresh
checkout, or a kernel whose source changed, compiles on first use. On two cores of an AMD EPYC that made a fresh
clone's first demo reconstruction take 68 s instead of ~31 (2026-12-04); the run says so on the terminal instead of
leaving the user to wonder (`scenarios.runner`).
"""

from __future__ import annotations

import importlib
import sys

# the modules whose kernels the chain compiles, by the part of a run that runs them
RENDER_MODULES = ("neural_sensor.render.cpu",)  # the CPU renderer (a reconstruction's refinements use it too)
RECONSTRUCTION_MODULES = ("neural_sensor.render.cpu", "neural_sensor.render.backproject",
                          "neural_sensor.reconstruct.photometric", "neural_sensor.reconstruct.fuse")
STREET_MODULES = ("neural_sensor.scene.light",)  # building a generated street (its shadows)
LOG_REFERENCE_MODULES = ("neural_sensor.enhance.log_warp",)  # the drive log warped into each camera, per tick
TEMPORAL_MODULES = ("neural_sensor.enhance.temporal",)  # the enhancer's output accumulated over ticks
UPSAMPLE_MODULES = ("neural_sensor.render.upsample",)  # a scene drawn below the cameras' size (render(scale=))
KERNEL_MODULES = tuple(dict.fromkeys(RENDER_MODULES + RECONSTRUCTION_MODULES + STREET_MODULES + LOG_REFERENCE_MODULES
                                     + TEMPORAL_MODULES + UPSAMPLE_MODULES))  # all of them


def uncompiled_modules(modules: tuple[str, ...] = KERNEL_MODULES) -> list[str]:
    """The modules among `modules` whose numba kernels have no current entry in numba's on-disk cache on this
    machine: never compiled here, or compiled from an older version of the file (numba stamps a file's cache with
    its source's modification time and size, so an edit makes all of that file's kernels stale at once). A
    module counts as compiled when any of its cached kernels is (its inlined helpers never get an entry of their
    own). [] when all are compiled, or when numba's cache cannot be inspected (its private layout changed): then
    nothing is claimed."""
    missing = []
    try:
        from numba.core.registry import CPUDispatcher

        for name in modules:
            module = importlib.import_module(name)
            cache_files = [cache_file for value in vars(module).values()
                           if isinstance(value, CPUDispatcher) and value.__module__ == name
                           and (cache_file := getattr(getattr(value, "_cache", None), "_cache_file", None)) is not None]
            if cache_files and not any(f._load_index() for f in cache_files):  # noqa: SLF001 - {}: absent or stale
                missing.append(name)
    except Exception:  # noqa: BLE001 - numba's private cache layout: say nothing rather than something wrong
        return []
    return missing


def compile_notice(modules: tuple[str, ...] | list[str]) -> str | None:
    """The line to print before the work that runs `modules`' kernels when `uncompiled_modules` finds some of them
    uncompiled on this machine, else None. Name only the modules the command will run (a run without an enhancer
    never compiles the warp), so that a machine that has compiled what it uses is told nothing."""
    return _notice(uncompiled_modules(tuple(dict.fromkeys(modules))))


def _notice(missing: list[str], more: bool = False) -> str | None:
    """The notice for these uncompiled modules (None for none); `more`: a second one in the same process."""
    if not missing:
        return None
    count = f"{len(missing)}{' more' if more else ''} module{'s' if len(missing) > 1 else ''}"
    if more:
        return f"neural-sensor: compiling the CPU kernels of {count} (part of the first run's extra time)"
    return (f"neural-sensor: compiling the CPU kernels of {count} for this machine (the first run after an install or "
            "an update; about a minute more on two cores, cached after)")


_ANNOUNCED: set[str] = set()  # the modules this process has already told the user it compiles


def announce_compiling(modules: tuple[str, ...] | list[str]) -> str | None:
    """Print `compile_notice` to stderr for those of `modules` not announced before in this process (a run
    announces its renderer, then its reconstruction's kernels only when the scene is not cached: once each), and
    return the line (None: nothing printed)."""
    fresh = tuple(m for m in dict.fromkeys(modules) if m not in _ANNOUNCED)
    missing = uncompiled_modules(fresh) if fresh else []
    notice = _notice(missing, more=bool(_ANNOUNCED))  # a second notice in one process: the same minute, more of it
    if notice:
        _ANNOUNCED.update(missing)
        print(notice, file=sys.stderr)
    return notice
