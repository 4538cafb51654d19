"""The enhancer's direct path on the worker's side (protocol.py, "Direct path"): a worker's AF_UNIX
SOCK_SEQPACKET listener in the server's shared-memory folder, the connections of same-host clients that took
it, and the cutting of the requests that arrive together into model batches. The worker loop that serves them
is `worker.worker_main`; the client's side is `EnhancerClient._exchange_direct`.
"""

from __future__ import annotations

import os
import socket
import time

import zmq

from neural_sensor.enhance import protocol as wire


def batches(jobs: list[tuple[bytes, bytes, int]], max_frames: int) -> list[list[tuple[bytes, bytes, int]]]:
    """`jobs` (key, payload, frames) in arrival order, cut into batches of at most max_frames frames (a job
    larger than that alone)."""
    batches, frames = [], 0
    for job in jobs:
        if not batches or frames + job[2] > max_frames:
            batches.append([])
            frames = 0
        batches[-1].append(job)
        frames += job[2]
    return batches


class DirectSockets:
    """A worker's broker-less local path (protocol.py, "Direct path"): a SOCK_SEQPACKET listener named
    w<index>-<pid>.sock in the shared-memory folder (mode 0700: this user only) and the connections of the
    clients that took it. Each packet is one shared-memory enhance request, answered with one packet. No listener
    without a shared-memory folder, or when its path is too long for a socket address."""

    def __init__(self, folder: str | None, index: int):
        self.listener: socket.socket | None = None
        self.name: str | None = None
        self.path: str | None = None
        self.refused = 0  # requests answered with an error here (not by _run_jobs), for the broker's counters
        self._conns: dict[int, socket.socket] = {}
        self._poller = None
        if folder is None:
            return
        name = direct_socket_name(index, os.getpid())
        path = os.path.join(folder, name)
        if len(path.encode()) > wire.DIRECT_MAX_PATH_BYTES:
            print(f"enhancer worker {index}: no direct path ({path} is too long for a socket address)", flush=True)
            return
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            try:
                os.unlink(path)  # a file left by an earlier process of this pid (the folder is private)
            except FileNotFoundError:
                pass
            listener.bind(path)
            listener.listen(64)
            listener.setblocking(False)
        except OSError as err:
            listener.close()
            print(f"enhancer worker {index}: no direct path ({path}: {err})", flush=True)
            return
        self.listener, self.name, self.path = listener, name, path

    def register(self, poller: zmq.Poller) -> None:
        if self.listener is not None:
            self._poller = poller
            poller.register(self.listener.fileno(), zmq.POLLIN)

    def receive(self, events: dict) -> list[tuple[bytes, bytes, int]]:
        """Accept new clients; (key, payload, frames) of each connection that sent a shared-memory enhance request
        (one per connection: the poll is level-triggered, so a second waits for the next round). Anything else is
        answered here with a named error; a closed connection is dropped."""
        if self.listener is None:
            return []
        if self.listener.fileno() in events:
            while True:
                try:
                    conn, _ = self.listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # e.g. out of file descriptors: the client times out and takes the broker; the
                    time.sleep(0.01)  # listener stays readable, so do not spin on it
                    break
                conn.setblocking(False)
                self._conns[conn.fileno()] = conn
                self._poller.register(conn.fileno(), zmq.POLLIN)
        jobs = []
        for fd, conn in list(self._conns.items()):
            if fd not in events:
                continue
            try:
                payload = conn.recv(wire.DIRECT_MAX_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                payload = b""
            if not payload:
                self._drop(fd)
                continue
            key = str(fd).encode()
            if len(payload) > wire.DIRECT_MAX_BYTES:
                self._refuse(key, "LimitExceeded", f"a direct request must be at most {wire.DIRECT_MAX_BYTES} bytes "
                                                   f"(the broker takes more)")
                continue
            frames = self._shm_enhance_frames(payload)
            if frames is None:  # _run_jobs would take a hello for an empty enhance; the broker answers those
                self._refuse(key, "BadRequest", "the direct path takes shared-memory enhance requests only (hello, "
                                                "stats and bytes go to the broker)")
            else:
                jobs.append((key, payload, frames))
        return jobs

    @staticmethod
    def _shm_enhance_frames(payload: bytes) -> int | None:
        """The frames of a shared-memory enhance request; None for another op or a request without "shm"; 0 for
        one that does not parse (`_run_jobs` names what is wrong with it)."""
        try:
            message = wire.unpack(payload)
        except Exception:  # noqa: BLE001 - answered by _run_jobs with the parser's own error
            return 0
        if not isinstance(message, dict):
            return 0
        if message.get("op") != "enhance" or "shm" not in message:
            return None
        frames = message.get("frames")
        return len(frames) if isinstance(frames, list) else 0

    def _refuse(self, key: bytes, error_type: str, message: str) -> None:
        self.refused += 1
        self.send(key, wire.error_reply(None, error_type, message))

    def send(self, key: bytes, reply: bytes) -> None:
        """The reply packet to the connection `key`; a client that left (timed out, died) or does not read is
        dropped."""
        fd = int(key)
        conn = self._conns.get(fd)
        if conn is None:
            return
        try:
            conn.send(reply)
        except OSError:  # BrokenPipe / ConnectionReset (it gave up on this request), or a full buffer
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        conn = self._conns.pop(fd, None)
        if conn is not None:
            try:
                self._poller.unregister(fd)
            except KeyError:
                pass
            conn.close()

    def close(self) -> None:
        for fd in list(self._conns):
            self._drop(fd)
        if self.listener is not None:
            self.listener.close()
            try:
                os.unlink(self.path)
            except OSError:
                pass


def direct_socket_name(index: int, pid: int) -> str:
    """The file name of worker `index`'s direct socket (process `pid`) in the shared-memory folder."""
    return f"w{index}-{pid}.sock"
