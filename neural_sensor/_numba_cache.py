"""Where numba keeps the compiled kernels when it cannot write next to their sources.

numba caches each `cache=True` kernel in a `__pycache__` next to its source, else in the user's cache folder
(~/.cache/numba), else it refuses to decorate the kernel: "RuntimeError: cannot cache function ...: no locator
available", at import. An install that the running user cannot write (a root-owned site-packages under `docker run
--user`, OpenShift, a read-only root filesystem) with a HOME it cannot write either ended every command that way,
`--help` included (a new user's finding). There, before numba is configured, NUMBA_CACHE_DIR is set to a folder of
the user's own under the temporary folder (`fallback_cache_dir`); a NUMBA_CACHE_DIR the user set is theirs.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def fallback_cache_dir(package_dir: Path = PACKAGE_DIR, user_cache_dir: Path | None = None,
                       writable=None) -> Path | None:
    """The folder to give NUMBA_CACHE_DIR, or None where numba has one of its own: the package's folder (its
    kernels' `__pycache__`) or the user's cache folder can be written (`writable(path)`: os.access-like, for
    tests). The fallback is <tempdir>/neural_sensor-numba-<uid>."""
    writable = writable or (lambda path: _can_write(path))
    if writable(package_dir):
        return None
    if user_cache_dir is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        user_cache_dir = Path(base) / "numba"
    if writable(user_cache_dir):
        return None
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"neural_sensor-numba-{uid}"


def _can_write(path: Path) -> bool:
    """Whether `path` (or, where it does not exist yet, its nearest existing parent) can be written."""
    path = Path(path)
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def ensure_numba_cache() -> Path | None:
    """Set NUMBA_CACHE_DIR to `fallback_cache_dir()` where numba has no folder of its own to cache in and the user
    set none; returns the folder set, or None. numba re-reads its configuration if it was imported already."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    folder = fallback_cache_dir()
    if folder is None:
        return None
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None  # (nowhere to cache: numba's own error then says so)
    os.environ["NUMBA_CACHE_DIR"] = str(folder)
    if "numba" in sys.modules:
        from numba.core import config

        config.reload_config()
    return folder


__all__ = ["ensure_numba_cache", "fallback_cache_dir"]
