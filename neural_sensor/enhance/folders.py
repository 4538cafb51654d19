"""The enhancer server's own folders (its shared-memory folder in /dev/shm, its temporary folder, a local
server's folder): each carries the broker's pid in an owner file, refreshed while the broker lives, so that the
folders of a server killed together with its workers (a SIGKILL of the process group: `docker stop` past its
timeout, an out-of-memory kill), which nobody removed, are removed by the next server's start."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from neural_sensor.host import abandoned

OWNER_FILE = ".neural-sensor-enhancer-pid"  # in a server's own folders: the broker's pid, touched every 5 s
ABANDONED_SERVER_S = 600.0  # a folder whose broker is gone and that nothing wrote for this long is removed at a start


def mark_owner(folder, touch_only: bool = False) -> None:
    """Write (or, touch_only, refresh the time of) the owner file of one of this broker's folders (None: none)."""
    if folder is None:
        return
    path = Path(folder) / OWNER_FILE
    try:
        if touch_only:
            os.utime(path)
        else:
            path.write_text(str(os.getpid()))
    except OSError:  # removed meanwhile (a stop under way)
        pass


def sweep_abandoned_server_folders(quiet_s: float = ABANDONED_SERVER_S) -> list[str]:
    """Remove the shared-memory folders (/dev/shm/neural-sensor-*) and temporary folders (TMPDIR/enhancer-*) of
    killed servers: those whose owner file names a broker that is gone and in which nothing was written for quiet_s
    (`host.abandoned`: a live broker refreshes its owner file every 5 s; a pid means nothing to another container
    sharing /dev/shm, the time does). Folders without an owner file are not a server's of ours. Returns what was
    removed."""
    removed = []
    for parent, pattern in ((Path("/dev/shm"), "neural-sensor-*"), (Path(tempfile.gettempdir()), "enhancer-*")):
        try:
            folders = list(parent.glob(pattern))
        except OSError:
            continue
        for folder in folders:
            try:
                pid = int((folder / OWNER_FILE).read_text())
            except (OSError, ValueError):  # not a server's folder of this version, or not ours to read
                continue
            if not abandoned(folder, pid, quiet_s):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(str(folder))
    return removed
