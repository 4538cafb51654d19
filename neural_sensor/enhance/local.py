"""A local enhancer server as a subprocess: `--enhancer local` in the CLI, benchmarks and tests.

    with local_server(checkpoint="checkpoints/enhancer-run") as server:
        client = EnhancerClient(server.endpoint)

The server binds a free loopback port (or the given endpoint) and writes a ready file once a worker has
loaded the model; the context waits for it (the server's own errors are shown if it exits instead) and
stops the server on exit (SIGTERM, then SIGKILL after a grace period). The server is told our pid
(`--parent-pid`): should this process die without stopping it (SIGKILL, a crash), the server notices
within a fraction of a second, stops its workers and removes its folder, so nothing is orphaned. The
server's shared-memory blocks live in protocol.shm_folder_for(its folder), which goes with the folder
here too (also after a SIGKILL of the server, when nothing of it could clean up).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from neural_sensor.checkpoints import DEFAULT_ENHANCER, default_checkpoint
from neural_sensor.enhance.precision import check_cpu_precision
from neural_sensor.enhance.protocol import shm_folder_for

DEFAULT_CHECKPOINT = default_checkpoint(DEFAULT_ENHANCER)


@dataclass
class LocalServer:
    endpoint: str
    process: subprocess.Popen
    ready: dict
    folder: Path  # ready file and server.log; removed by stop_server

    def kill(self) -> None:
        """SIGKILL the server (and let its workers notice their parent is gone)."""
        self.process.kill()
        self.process.wait()
        _remove_folders(self.folder)


def _remove_folders(folder: Path) -> None:
    """The server's folder and its shared-memory folder."""
    shutil.rmtree(shm_folder_for(folder), ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)


def start_server(checkpoint: str | Path = DEFAULT_CHECKPOINT, bind: str = "tcp://127.0.0.1:*", workers: int = 1,
                 threads: int = 0, timeout_s: float = 120.0, quiet: bool = True,
                 shared_memory: bool = True, precision: str = "auto", wait: bool = True) -> LocalServer:
    """Start `neural-sensor serve-enhancer` as a subprocess and wait until a worker is ready (`shared_memory`:
    offer same-host clients shared blocks; `precision`: the model's arithmetic on a CPU, as its --precision)."""
    check_cpu_precision(precision, "enhancer precision")  # before anything starts
    folder = Path(tempfile.mkdtemp(prefix="enhancer-local-"))
    ready_file = folder / "ready.json"
    log = folder / "server.log"
    cmd = [sys.executable, "-m", "neural_sensor.enhance.server", "--bind", bind, "--checkpoint", str(checkpoint),
           "--workers", str(workers), "--threads", str(threads), "--ready-file", str(ready_file),
           "--parent-pid", str(os.getpid()), "--owned-folder", str(folder), "--precision", precision]
    if not shared_memory:
        cmd.append("--no-shared-memory")
    t_end = time.monotonic() + timeout_s
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out if quiet else None,
                                    stderr=subprocess.STDOUT if quiet else None, start_new_session=True)
    except BaseException:
        _remove_folders(folder)
        raise
    if not wait:  # (a restart mid-run: the client's hellos find it ready; its ready file is not read)
        return LocalServer(bind, proc, {}, folder)
    try:
        while not ready_file.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"the local enhancer server exited with code {proc.returncode}: "
                                   + (_last_error(log) if quiet else "see its output above"))
            if time.monotonic() > t_end:
                raise RuntimeError(f"the local enhancer server was not ready within {timeout_s:.0f} s"
                                   + (f" (its last line: {_last_error(log)})" if quiet else ""))
            time.sleep(0.05)
        ready = json.loads(ready_file.read_text())
        os.unlink(ready_file)
    except BaseException:  # an error or Ctrl-C while waiting: the server (in its own session) must not outlive us
        stop_server(LocalServer("", proc, {}, folder), grace_s=2.0)
        raise
    return LocalServer(ready["endpoint"], proc, ready, folder)


def _last_error(log: Path) -> str:
    """The server log's last non-empty line (its error: "serve-enhancer: ..."), or a note that it wrote none."""
    lines = [line.strip() for line in (log.read_text(errors="replace") if log.exists() else "").splitlines()]
    lines = [line for line in lines if line]
    return lines[-1] if lines else "it printed nothing"


def stop_server(server: LocalServer, grace_s: float = 10.0) -> None:
    """SIGTERM (the broker stops its workers), SIGKILL after `grace_s`; then remove its folder."""
    try:
        if server.process.poll() is None:
            server.process.terminate()
            try:
                server.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()
    finally:  # (a Ctrl-C or SIGTERM landing in the wait had left the folder behind)
        _remove_folders(server.folder)


@contextmanager
def local_server(**kwargs):
    """start_server(**kwargs) as a context manager that always stops the server."""
    server = start_server(**kwargs)
    try:
        yield server
    finally:
        stop_server(server)
