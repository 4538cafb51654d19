"""Enhancer server: a ZeroMQ load-balancing broker in front of N model worker processes.

    neural-sensor serve-enhancer --bind tcp://127.0.0.1:5555 --workers 2 --checkpoint checkpoints/enhancer-run

Clients (REQ or DEALER) talk to the broker's ROUTER socket (`--bind`). The broker
validates every request (protocol.parse_request): a malformed one gets an error reply
at once and never reaches a worker. "hello" and "stats" are answered by the broker;
"enhance" requests queue until a worker is free, and the requests waiting at that
moment go to it together (up to `max_batch_frames` frames), so frames of one size
from several clients run as one model batch. Requests that waited longer than their
own deadline_ms are answered DeadlineExceeded instead of computed; while no worker holds the model (the server
starting, or every worker restarting) an enhance with a deadline is answered NotReady at once (one without waits).
Workers are
processes (worker.py; spawned, each loads the checkpoint) on a ROUTER over ipc://; a worker that
dies is restarted and the requests it held get WorkerError replies. `--precision` sets the model's
arithmetic on a CPU (precision.py): auto, the default, is bfloat16 where the CPU has AMX (an Intel Xeon of the
Sapphire Rapids generation or later: the UNet ~40 % faster there) or native bfloat16 that a short timed probe
finds faster (an AMD EPYC of the Zen 4 generation: ~1.5x), and float32 elsewhere; hello says which.

Security: the default bind is loopback. Binding anything else (tcp://0.0.0.0, a LAN
address, a host name other than localhost) is refused unless CurveZMQ is configured:
`--curve-secret-key` (a zmq certificate file with the server's secret key, from
zmq.auth.create_certificates) and `--curve-clients` (a folder of the allowed clients'
public certificates).

Shared memory (protocol.py): unless `--no-shared-memory`, hello offers clients on this
host a folder of shared blocks (protocol.shm_folder_for the server's own folder, mode
0700, removed when the server stops, by its workers when the broker is killed, and by
local.stop_server). The broker checks only the header (block name, nonce, offsets);
the worker maps the client's block, reads the frames in place and writes the refined
rgb back, so the pixels never pass through the broker. Blocks of clients that died
(their pid in the name is gone) are removed every few seconds. A block another process of
the same user truncates while a worker has it mapped would kill that worker (SIGBUS; it is
restarted and its requests answered WorkerError): the folder is private to the user, who
could stop the worker anyway.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from neural_sensor.checkpoints import DEFAULT_ENHANCER, default_checkpoint
from neural_sensor.enhance import protocol as wire
from neural_sensor.enhance.direct import direct_socket_name
from neural_sensor.enhance.folders import mark_owner, sweep_abandoned_server_folders
from neural_sensor.enhance.precision import CPU_PRECISIONS, resolve_cpu_precision
from neural_sensor.enhance.worker import worker_main
from neural_sensor.host import process_alive, usable_cores

SERVER_VERSION = "0.1.0"
# A worker's OpenMP threads (torch's and numba's, libgomp) spin this many iterations for more work before they
# sleep (libgomp's default 300,000 is several ms). On a host the client shares, a worker's threads spinning after
# its reply take the cores from the client's next stage: on two cores of a Zen 4 EPYC the demo's temporal
# accumulation 19.2 -> 15.5 ms a tick, the worker's own UNet no slower (`docs/results.md`, 2026-12-05, later).
WORKER_ENV = {"GOMP_SPINCOUNT": "30000"}
MAX_QUEUED_REQUESTS = 32  # enhance requests waiting for a worker; more are answered Busy at once (each holds up to
#   64 MiB: a client sending without deadlines had grown the broker by 700 MB and held up the others)
_SPAWN_LOCK = threading.Lock()
is_loopback = wire.is_loopback  # where it always lived; the client needs it too


@dataclass
class ServerConfig:
    """What `serve` runs."""

    bind: str = "tcp://127.0.0.1:5555"
    checkpoint: str = str(default_checkpoint(DEFAULT_ENHANCER))
    workers: int = 1
    threads_per_worker: int = 0  # torch threads per worker; 0 = cores / workers
    max_batch_frames: int = wire.MAX_FRAMES
    curve_secret_key: str | None = None  # zmq certificate file holding the server's secret key
    curve_clients: str | None = None  # folder of allowed client public certificates
    ready_file: str | None = None  # JSON {endpoint, pid, model_name, checkpoint_hash} written once the first worker
    #   is ready; an old one is removed at start and ours when the server stops (a waiting script never takes a
    #   stale one for this server)
    parent_pid: int | None = None  # stop when this process (the run that started us) is gone
    owned_folder: str | None = None  # removed when we stop because the parent is gone (its ready-file folder)
    shared_memory: bool = True  # offer same-host clients shared blocks at hello (else bytes only)
    precision: str = "auto"  # the UNet's arithmetic on a CPU: auto (bfloat16 where faster) | float32 | bfloat16


def check_bind(config: ServerConfig) -> None:
    """Refuse a non-loopback bind without CurveZMQ keys (ValueError naming the endpoint)."""
    wire.check_endpoint(config.bind, "bind", bind=True)
    curve = config.curve_secret_key is not None or config.curve_clients is not None
    if curve and not (config.curve_secret_key and config.curve_clients):
        raise ValueError("CurveZMQ needs both --curve-secret-key and --curve-clients")
    if not is_loopback(config.bind) and not curve:
        raise ValueError(f"refusing to bind {config.bind}: not a loopback address. Serving beyond this machine "
                         f"needs CurveZMQ: --curve-secret-key SERVER.key_secret --curve-clients CLIENT_CERT_DIR")
    if curve and not zmq.has("curve"):
        raise ValueError("this libzmq has no CURVE support")


# ------------------------------------------------------------------ worker process
def remove_stale_ready_file(path: Path | str) -> None:
    """Remove a ready file left by a server that is gone (a killed one's would tell a waiting script to go on at
    once); one whose pid is a live process other than this one is a running server's, and stays."""
    path = Path(path)
    try:
        pid = json.loads(path.read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        pid = None
    if isinstance(pid, int) and pid > 0 and pid != os.getpid() and _is_server_process(pid):
        return  # a running server's (a server started beside it that fails to bind must not take it away)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        pass


def _is_server_process(pid: int) -> bool:
    """Whether pid is a live enhancer server (its command line names serve-enhancer or this module, where /proc
    tells; elsewhere any live process counts): a reused pid, or pid 1 in another container's file, is not."""
    if not process_alive(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"serve-enhancer" in command or b"neural_sensor.enhance.server" in command


def _ipc_in_use(path: str) -> bool:
    """True where a process accepts connections on the unix socket file `path` (a stale file refuses them)."""
    import socket

    if not path or not Path(path).is_socket():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


# ------------------------------------------------------------------ broker
class Broker:
    """The load-balancing broker (see the module docstring). `run()` blocks until `stop()`."""

    def __init__(self, config: ServerConfig):
        check_bind(config)
        from neural_sensor.checkpoints import checkpoint_problem
        from neural_sensor.enhance.model import checkpoint_hash

        self.config = config
        self._parent_is_direct = config.parent_pid is not None and os.getppid() == config.parent_pid  # `_orphaned`
        self._ready_written = False  # (close() reads it, even when __init__ fails)
        ckpt = Path(config.checkpoint)
        try:
            meta = json.loads((ckpt / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"enhancer checkpoint {ckpt}: config.json unreadable ({err})") from None
        if not isinstance(meta, dict):
            raise ValueError(f"enhancer checkpoint {ckpt}: config.json is not an object")
        problem = checkpoint_problem(ckpt, "Enhancer")  # before any worker starts
        if problem:
            raise ValueError(f"enhancer checkpoint {ckpt}: {problem} (a diffusers UNet2DModel folder loads too)")
        self.model_name = str(meta.get("model_name") or ckpt.name)
        views = meta.get("reference_views", 0)  # what the rig should send it (EnhancerConfig.reference_views)
        self.reference_views = views if isinstance(views, int) and not isinstance(views, bool) and views > 0 else 0
        self.checkpoint_hash = checkpoint_hash(ckpt)
        most = max(4, 2 * usable_cores())  # (1000 model processes spawned on two cores: none ready in 25 s)
        if not 1 <= config.workers <= most:
            raise ValueError(f"workers must be in 1..{most} (two per CPU core, or 4), got {config.workers}")
        if config.threads_per_worker < 0:
            raise ValueError(f"threads must be >= 0 (0: cores / workers), got {config.threads_per_worker}")
        if not 1 <= config.max_batch_frames <= wire.MAX_FRAMES:
            raise ValueError(f"max-batch-frames must be in [1, {wire.MAX_FRAMES}], got {config.max_batch_frames}")
        self.precision = resolve_cpu_precision(config.precision)  # resolved here: the workers run on this host
        if config.ready_file:  # a file left by an earlier server would tell a waiting script we are ready
            ready = Path(config.ready_file)
            if ready.is_dir():
                raise ValueError(f"ready file {ready} is a folder; name a file")
            if not ready.parent.is_dir():
                raise ValueError(f"ready file {ready}: its folder {ready.parent} does not exist")
            remove_stale_ready_file(ready)
        self._stop = threading.Event()
        self._stopping = False  # set by close(): enhance requests are answered with Stopping from then on
        self._ctx = zmq.Context()
        self.frontend = self._ctx.socket(zmq.ROUTER)
        self.frontend.setsockopt(zmq.LINGER, 0)
        if wire.is_ipv6(config.bind):
            self.frontend.setsockopt(zmq.IPV6, 1)
        self.frontend.setsockopt(zmq.ROUTER_MANDATORY, 0)
        # up to twice the protocol limit still gets a LimitExceeded reply; beyond, libzmq drops the connection
        self.frontend.setsockopt(zmq.MAXMSGSIZE, 2 * wire.MAX_MESSAGE_BYTES)
        self._auth = None
        self.backend = None
        self._tmp = self._owned = None
        self.shm_folder: Path | None = None
        self.nonce = secrets.token_hex(16)
        self._procs: dict[int, mp.Process] = {}
        try:
            self._open_sockets(config)
        except BaseException:
            self.close()
            raise
        threads = config.threads_per_worker or max(1, (os.cpu_count() or 1) // config.workers)
        self._threads = threads
        self._mp = mp.get_context("spawn")
        self._ready: deque[bytes] = deque()
        self._identity_of: dict[int, bytes] = {}
        self._inflight: dict[bytes, list[tuple[list, object, float]]] = {}  # worker -> [(envelope, id, t0)]
        self._queue: deque = deque()  # (envelope, request id, payload, arrival, deadline_ms, n_frames)
        self.started = time.monotonic()
        self.counters = {"requests": 0, "errors": 0, "enhance_requests": 0, "direct_requests": 0, "jobs": 0,
                         "frames_enhanced": 0, "worker_restarts": 0}
        self._direct: dict[int, str] = {}  # worker index -> its direct socket's name in the shm folder
        self._direct_ms: deque[float] = deque(maxlen=4096)  # the workers' time per direct batch (not a round trip)
        self._latencies_ms: deque[float] = deque(maxlen=4096)
        self.parent_gone = False
        self._start_failures = 0
        try:
            for index in range(config.workers):
                self._spawn(index)
        except BaseException:
            self.close()
            raise

    def _open_sockets(self, config: ServerConfig) -> None:
        if config.curve_secret_key:
            self._setup_curve()
        if config.bind.startswith("ipc://") and _ipc_in_use(config.bind[len("ipc://"):]):
            # (ZeroMQ binds over a live ipc socket file: the running server would go on unreachable)
            raise ValueError(f"enhancer: cannot bind {config.bind}: Address already in use (a server listens there)")
        try:
            self.frontend.bind(config.bind)
        except zmq.ZMQError as err:
            raise ValueError(f"enhancer: cannot bind {config.bind}: {err}") from None
        self.endpoint = self.frontend.getsockopt_string(zmq.LAST_ENDPOINT)
        self._ipc_inode = None  # an ipc:// bind's socket file, removed at close unless another server took the path
        if self.endpoint.startswith("ipc://"):
            try:
                self._ipc_inode = Path(self.endpoint[len("ipc://"):]).stat().st_ino
            except OSError:
                pass
        # the workers' socket goes inside the owned folder when there is one (and the path fits an ipc address),
        # so whoever removes that folder (stop_server, even after a SIGKILL of this process) removes it too
        owned = config.owned_folder if config.owned_folder and Path(config.owned_folder).is_dir() else None
        sweep_abandoned_server_folders()  # those of servers killed with their workers (a process group's SIGKILL)
        self._owned = owned
        mark_owner(owned)  # (a local server's folder: its run removes it, unless killed with it)
        if owned and len(f"{owned}/backend") <= 100:
            self.backend_endpoint = f"ipc://{owned}/backend"
        else:
            self._tmp = tempfile.mkdtemp(prefix="enhancer-")
            mark_owner(Path(self._tmp))
            self.backend_endpoint = f"ipc://{self._tmp}/backend"
        self.backend = self._ctx.socket(zmq.ROUTER)
        self.backend.setsockopt(zmq.LINGER, 0)
        try:
            self.backend.bind(self.backend_endpoint)
        except zmq.ZMQError as err:
            raise ValueError(f"enhancer: cannot bind the workers' socket {self.backend_endpoint} ({err}); "
                             f"a shorter TMPDIR helps if the path is too long") from None
        if config.shared_memory:
            self._open_shm_folder(owned or self._tmp)

    def _open_shm_folder(self, server_folder: str) -> None:
        """The folder of client blocks (mode 0700) and its nonce file, which proves to a client it is on our host.
        Where /dev/shm is full (a container's is 64 MB by default; a new user's server ended with a bare "[Errno
        28] No space left on device"), the server's own folder holds them instead, said on stderr."""
        folder = wire.shm_folder_for(server_folder)
        try:
            self._make_shm_folder(folder)
        except OSError as err:
            fallback = Path(server_folder) / "shm"
            if folder == fallback:
                raise
            shutil.rmtree(folder, ignore_errors=True)
            print(f"enhancer: cannot keep shared blocks in {folder.parent} ({err.strerror or err}); they go in "
                  f"{fallback} instead (a container's /dev/shm is 64 MB by default: docker run --shm-size=1g)",
                  file=sys.stderr, flush=True)
            self._make_shm_folder(fallback)

    def _make_shm_folder(self, folder: Path) -> None:
        folder.mkdir(mode=0o700, exist_ok=False)
        self.shm_folder = folder
        (folder / "nonce").write_text(self.nonce)
        mark_owner(folder)

    def _sweep_dead_clients(self) -> None:
        """Remove blocks whose client process (the pid in blk-<pid>-<hex>) is gone: a SIGKILLed client's block."""
        for path in self.shm_folder.glob("blk-*"):
            try:
                os.kill(int(path.name.split("-")[1]), 0)
            except ProcessLookupError:
                path.unlink(missing_ok=True)
            except (ValueError, IndexError, PermissionError, OSError):
                continue

    def _setup_curve(self) -> None:
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator

        try:
            public, secret = zmq.auth.load_certificate(self.config.curve_secret_key)
        except (OSError, ValueError) as err:
            raise ValueError(f"CurveZMQ: cannot read the server certificate {self.config.curve_secret_key} ({err})")
        if secret is None:
            raise ValueError(f"CurveZMQ: {self.config.curve_secret_key} holds no secret key (use the .key_secret file)")
        if not Path(self.config.curve_clients).is_dir():
            raise ValueError(f"CurveZMQ: client certificate folder {self.config.curve_clients} does not exist")
        self._auth = ThreadAuthenticator(self._ctx)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(self.config.curve_clients))
        self.frontend.curve_secretkey = secret
        self.frontend.curve_publickey = public
        self.frontend.curve_server = True

    def _spawn(self, index: int) -> None:
        proc = self._mp.Process(target=worker_main, name=f"enhancer-worker-{index}",
                                args=(self.backend_endpoint, str(self.config.checkpoint), index, self._threads,
                                      None if self.shm_folder is None else str(self.shm_folder), self.nonce,
                                      self.config.max_batch_frames, self.precision, self._tmp),
                                daemon=True)
        with _SPAWN_LOCK:  # the worker starts with WORKER_ENV (a spawned process copies os.environ as it starts)
            saved = {name: os.environ.get(name) for name in WORKER_ENV}
            for name, value in WORKER_ENV.items():
                os.environ.setdefault(name, value)  # the user's own setting wins
            try:
                proc.start()
            finally:
                for name, value in saved.items():
                    if value is None:
                        os.environ.pop(name, None)
        self._procs[index] = proc

    # -------------------------------------------------------------- replies
    def _reply(self, envelope: list, payload: bytes, ok: bool, latency_ms: float | None = None) -> None:
        self.frontend.send_multipart(envelope + [payload])
        if not ok:
            self.counters["errors"] += 1
        if latency_ms is not None:
            self._latencies_ms.append(latency_ms)

    def _hello(self) -> dict:
        return {"protocol_version": wire.PROTOCOL_VERSION, "server_version": SERVER_VERSION,
                "model_name": self.model_name, "checkpoint_hash": self.checkpoint_hash,
                "reference_views": self.reference_views, "cpu_precision": self.precision,
                "workers": self.config.workers, "workers_ready": self.workers_ready, "stopping": self._stopping,
                "max_frames": min(wire.MAX_FRAMES, self.config.max_batch_frames),
                "max_request_frames": wire.MAX_FRAMES,
                "max_message_bytes": wire.MAX_MESSAGE_BYTES,
                **({"shm": {"folder": str(self.shm_folder), "nonce": self.nonce, **self._direct_offer()}}
                   if self.shm_folder else {})}

    def _direct_offer(self) -> dict:
        """{"direct": the ready workers' socket names} when the folder can hold worker sockets, else nothing."""
        longest = self.shm_folder / f"w{9999}-{9999999999}.sock"
        if len(str(longest).encode()) > wire.DIRECT_MAX_PATH_BYTES or self._stopping:
            return {}  # (stopping: a worker's socket is about to go; the client takes the broker, which answers)
        return {"direct": [self._direct[i] for i in sorted(self._direct) if i in self._identity_of]}

    def stats(self) -> dict:
        lat = np.array(self._latencies_ms) if self._latencies_ms else None
        direct = np.array(self._direct_ms) if self._direct_ms else None
        return {**self.counters, "p50_ms": None if lat is None else round(float(np.percentile(lat, 50)), 3),
                "p99_ms": None if lat is None else round(float(np.percentile(lat, 99)), 3),
                "direct_worker_p50_ms": None if direct is None else round(float(np.percentile(direct, 50)), 3),
                "workers": self.config.workers, "workers_ready": self.workers_ready,
                "queued": len(self._queue), "uptime_s": round(time.monotonic() - self.started, 3)}

    @property
    def workers_ready(self) -> int:
        """Workers that take requests: none once the server is stopping (they are being ended)."""
        return 0 if self._stopping else len(self._identity_of)

    # -------------------------------------------------------------- loop
    def _on_frontend(self) -> None:
        parts = self.frontend.recv_multipart(copy=False)
        self.counters["requests"] += 1
        # REQ / DEALER-with-delimiter: [identity, b"", payload]; bare DEALER: [identity, payload]
        envelope = [p.bytes for p in parts[:-1]]
        if len(parts) < 2 or len(parts) > 3 or (len(parts) == 3 and parts[1].bytes != b""):
            delimiter = [b""] if len(parts) > 2 and parts[1].bytes == b"" else []
            given = len(parts) - 1 - len(delimiter)  # the frames after the identity and the empty delimiter
            self._reply(envelope[:1] + delimiter,
                        wire.error_reply(None, "BadMessage", f"expected one message frame, got {given}"), False)
            return
        payload = parts[-1].buffer
        try:
            req = wire.parse_request(payload)
        except wire.ProtocolError as err:
            self._reply(envelope, wire.error_reply(err.request_id, err.error_type, err.message), False)
            return
        except Exception as err:  # noqa: BLE001 - a parser gap must cost one error reply, never the server
            self._reply(envelope, wire.error_reply(None, "BadRequest", f"{type(err).__name__}: {err}"), False)
            return
        if req.op == "hello":
            self._reply(envelope, wire.ok_reply(req.request_id, **self._hello()), True)
        elif req.op == "stats":
            self._reply(envelope, wire.ok_reply(req.request_id, **self.stats()), True)
        elif req.shm is not None and (self.shm_folder is None or req.shm["nonce"] != self.nonce):
            # a client of an earlier server on this endpoint (or one that skipped hello): it falls back to bytes
            self._reply(envelope, wire.error_reply(req.request_id, "SharedMemoryError",
                                                   "this server offers no shared memory to that nonce (hello "
                                                   "again)"), False)
        elif self._stopping:  # (closing: what would wait for a worker is answered now, not at the deadline)
            self._reply(envelope, self._stopping_reply(req.request_id), False)
        elif not self._identity_of and req.deadline_ms is not None:  # no worker holds the model: say so now
            self._reply(envelope, self._not_ready(req.request_id), False)
        elif len(self._queue) >= MAX_QUEUED_REQUESTS and not self._drop_expired():  # (one client's 60 requests
            # without a deadline held 700 MB and kept another's tick waiting past its deadline)
            self._reply(envelope, wire.error_reply(req.request_id, "Busy", f"the enhancer server has "
                                                   f"{len(self._queue)} requests waiting; try again"), False)
        else:
            self.counters["enhance_requests"] += 1
            self._queue.append((envelope, req.request_id, parts[-1], time.monotonic(), req.deadline_ms,
                                len(req.frames)))

    def _drop_expired(self) -> bool:
        """Answer and drop the queued requests past their deadline (a full queue of those refused a fresh one as
        Busy while the worker was busy); whether that made room."""
        now = time.monotonic()
        self._queue = deque(item for item in self._queue if not self._expired(item, now))
        return len(self._queue) < MAX_QUEUED_REQUESTS

    def _stopping_reply(self, request_id) -> bytes:
        return wire.error_reply(request_id, "Stopping", "the enhancer server is stopping (Ctrl-C or SIGTERM)")

    def _answer_waiting_requests(self) -> None:
        """Answer every queued request and every request a worker holds with Stopping (a client waited out its whole
        deadline for a server that had stopped)."""
        for envelope, rid, *_ in getattr(self, "_queue", ()):
            self._reply(envelope, self._stopping_reply(rid), False)
        self._queue = deque()
        for held in getattr(self, "_inflight", {}).values():
            for envelope, rid, _ in held:
                self._reply(envelope, self._stopping_reply(rid), False)
        self._inflight = {}

    def _not_ready(self, request_id) -> bytes:
        return wire.error_reply(request_id, "NotReady", f"the server's workers are still loading the checkpoint "
                                                        f"(0 of {self.config.workers} ready)")

    def _on_backend(self) -> None:
        parts = self.backend.recv_multipart()
        identity, kind = parts[0], parts[1]
        try:
            index, pid = (int(x) for x in identity.decode()[1:].split("-"))
        except ValueError:
            return
        proc = self._procs.get(index)
        if proc is None or proc.pid != pid or not proc.is_alive():
            return  # a message from a worker already replaced (its requests were answered WorkerError)
        if kind == b"READY":
            if len(parts) > 2 and parts[2] == direct_socket_name(index, pid).encode():
                self._direct[index] = direct_socket_name(index, pid)
            self._identity_of[index] = identity
            self._ready.append(identity)
            self._start_failures = 0
            if not self._ready_written:
                self._write_ready_file()
            return
        if kind == b"DIRECT":  # what the worker served over its direct path, for the counters
            try:
                report = json.loads(parts[2])
                requests, errors, frames, ms = (report[k] for k in ("requests", "errors", "frames", "ms"))
                requests, errors, frames = int(requests), int(errors), int(frames)
            except (IndexError, ValueError, KeyError, TypeError):
                return
            self.counters["requests"] += requests
            self.counters["direct_requests"] += requests
            self.counters["errors"] += errors
            if frames:  # a batch the model ran (refusals report no frames)
                self.counters["enhance_requests"] += requests
                self.counters["jobs"] += 1
                self.counters["frames_enhanced"] += frames
                if isinstance(ms, (int, float)):
                    self._direct_ms.append(float(ms))
            return
        if kind != b"DONE":
            return
        held = {i: item for i, item in enumerate(self._inflight.pop(identity, []))}
        now = time.monotonic()
        for i in range(2, len(parts) - 2, 3):
            item = held.get(int(parts[i]))
            if item is None:
                continue
            envelope, _, t0 = item
            ok = parts[i + 1] == b"1"
            self._reply(envelope, parts[i + 2], ok, (now - t0) * 1000.0 if ok else None)
        if identity in self._identity_of.values():
            self._ready.append(identity)

    def _expired(self, item, now: float) -> bool:
        """Answer a queued request DeadlineExceeded if it waited past its deadline; whether it did."""
        envelope, rid, _, t0, deadline, _ = item
        if deadline is None or (now - t0) * 1000.0 <= deadline:
            return False
        self._reply(envelope, wire.error_reply(rid, "DeadlineExceeded", f"waited {(now - t0) * 1000.0:.0f} ms > "
                                                                        f"{deadline} ms"), False)
        return True

    def _dispatch(self) -> None:
        now = time.monotonic()
        while self._ready and self._queue:
            job, frames = [], 0
            while self._queue:
                envelope, rid, payload, t0, deadline, n = self._queue[0]
                if self._expired(self._queue[0], now):
                    self._queue.popleft()
                    continue
                if job and frames + n > self.config.max_batch_frames:
                    break
                self._queue.popleft()
                job.append((envelope, rid, payload, t0))
                frames += n
            if not job:
                return
            worker = self._ready.popleft()
            self._inflight[worker] = [(e, r, t0) for e, r, _, t0 in job]
            message = [worker, b"JOB"]
            for i, (_, _, payload, _) in enumerate(job):
                message += [str(i).encode(), payload]
            self.backend.send_multipart(message, copy=False)
            self.counters["frames_enhanced"] += frames
            self.counters["jobs"] += 1

    def _check_workers(self) -> None:
        for index, proc in list(self._procs.items()):
            if proc.is_alive():
                continue
            identity = self._identity_of.pop(index, None)
            self._direct.pop(index, None)
            if self.shm_folder is not None and proc.pid is not None:  # clients connecting to it find it gone
                (self.shm_folder / direct_socket_name(index, proc.pid)).unlink(missing_ok=True)
            if identity is None:
                self._start_failures += 1
                if self._start_failures >= 3:
                    raise RuntimeError(f"enhancer workers die before they are ready ({self._start_failures} times, "
                                       f"last exit code {proc.exitcode}); see the worker's error above")
            else:
                self._start_failures = 0
                if identity in self._ready:
                    self._ready.remove(identity)
                for envelope, rid, _ in self._inflight.pop(identity, []):
                    self._reply(envelope, wire.error_reply(rid, "WorkerError",
                                                           f"worker {index} died (exit code {proc.exitcode})"), False)
            if not self._identity_of:  # the last worker that held the model: what waits for one with a deadline
                kept = deque()         # is answered now, as a request arriving meanwhile will be
                for item in self._queue:
                    if item[4] is None:
                        kept.append(item)
                    else:
                        self._reply(item[0], self._not_ready(item[1]), False)
                self._queue = kept
            if self._stop.is_set():
                continue
            self.counters["worker_restarts"] += 1
            self._spawn(index)

    def _write_ready_file(self) -> None:
        self._ready_written = True
        if self.config.ready_file:
            path = Path(self.config.ready_file)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps({"endpoint": self.endpoint, "pid": os.getpid(), "model_name": self.model_name,
                                       "checkpoint_hash": self.checkpoint_hash}))
            tmp.replace(path)

    def _remove_ipc_socket(self) -> None:
        """Remove the socket file of an ipc:// bind (ZeroMQ leaves it behind), once our context is closed."""
        inode = getattr(self, "_ipc_inode", None)  # unset when the bind itself failed
        if inode is None:
            return
        path = Path(self.endpoint[len("ipc://"):])
        try:
            if path.is_socket() and path.stat().st_ino == inode:
                path.unlink()
        except OSError:
            pass

    def _remove_ready_file(self) -> None:
        """Remove the ready file this server wrote (not one another server has written over it since)."""
        if not (self.config.ready_file and self._ready_written):
            return
        path = Path(self.config.ready_file)
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError, AttributeError):
            pass

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.backend, zmq.POLLIN)
        last_check = last_sweep = 0.0
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(50))
                if self.backend in events:
                    self._on_backend()
                if self.frontend in events:
                    self._on_frontend()
                self._dispatch()
                if time.monotonic() - last_check > 0.2:
                    self._check_workers()
                    last_check = time.monotonic()
                    if last_check - last_sweep > 5.0:
                        if self.shm_folder is not None:
                            self._sweep_dead_clients()
                        for folder in (self.shm_folder, self._tmp, self._owned):  # alive: never abandoned
                            mark_owner(folder, touch_only=True)
                        last_sweep = last_check
                    if self._orphaned():
                        print("enhancer: the process that started this server is gone; stopping", flush=True)
                        self.parent_gone = True
                        break
        finally:
            self.close()

    def _orphaned(self) -> bool:
        """True when config.parent_pid is set and that process is gone: where it is our parent, when it no longer
        is (a pid reused meanwhile cannot fool that); else (a wrapper between: `timeout`, `bash -c`, a supervisor)
        when no process has that pid (the server had stopped at once there, its parent being the wrapper)."""
        pid = self.config.parent_pid
        if pid is None:
            return False
        return os.getppid() != pid if self._parent_is_direct else not process_alive(pid)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Stop: the ready file first, then every waiting request answered (Stopping), the workers ended (5 s each,
        then killed) while requests arriving meanwhile are answered too, then the sockets and folders."""
        self._stop.set()
        if self._ctx.closed:
            return
        self._remove_ready_file()
        self._stopping = True
        answering = getattr(self, "_queue", None) is not None  # (the sockets and queues exist: not a failed start)
        try:
            if answering:
                self._answer_waiting_requests()
            for proc in self._procs.values():
                if proc.is_alive():
                    proc.terminate()
            give_up = time.monotonic() + 5.0
            while any(proc.is_alive() for proc in self._procs.values()) and time.monotonic() < give_up:
                if answering and self.frontend.poll(50):
                    self._on_frontend()
                else:
                    time.sleep(0.05)
            drain_until = time.monotonic() + 1.0  # (bounded: a client that floods it cannot hold the stop)
            while answering and time.monotonic() < drain_until and self.frontend.poll(0):
                self._on_frontend()
        except zmq.ZMQError:
            pass
        for proc in self._procs.values():
            proc.join(timeout=0.1)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        if self._auth is not None:
            self._auth.stop()
        self.frontend.close(0)
        if self.backend is not None:
            self.backend.close(0)
        self._ctx.term()
        self._remove_ipc_socket()
        if self.shm_folder is not None:
            shutil.rmtree(self.shm_folder, ignore_errors=True)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


def serve(config: ServerConfig) -> None:
    """Run a broker in this process until SIGINT / SIGTERM (or until config.parent_pid is gone); the process's
    own SIGINT / SIGTERM handlers are back in place when it returns or raises (a bad config included)."""
    broker = None

    def _stop(signum, _frame):
        if broker is None:  # still starting: unwind (a partial Broker start closes what it opened)
            raise SystemExit(128 + signum)
        broker.stop()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        broker = Broker(config)
        print(f"enhancer: listening on {broker.endpoint} ({config.workers} worker(s), model {broker.model_name}, "
              f"checkpoint {broker.checkpoint_hash}, {broker.precision} on CPUs)", flush=True)
        broker.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: one installed from C
    if broker.parent_gone and config.owned_folder:
        shutil.rmtree(config.owned_folder, ignore_errors=True)
    print("enhancer: stopped", flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", default="tcp://127.0.0.1:5555",
                        help="ZeroMQ endpoint: tcp://HOST:PORT (loopback, 127.0.0.1 or [::1], unless CurveZMQ; "
                             "PORT * takes a free one, printed at start) or ipc://PATH")
    parser.add_argument("--workers", type=int, default=1, help="model worker processes")
    parser.add_argument("--checkpoint", default=str(default_checkpoint(DEFAULT_ENHANCER)),
                        help=f"enhancer checkpoint folder (default: the shipped {DEFAULT_ENHANCER})")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: cores / workers)")
    parser.add_argument("--max-batch-frames", type=int, default=wire.MAX_FRAMES,
                        help=f"most frames one worker job batches together (1-{wire.MAX_FRAMES})")
    parser.add_argument("--curve-secret-key", default=None, help="server certificate with secret key (CurveZMQ)")
    parser.add_argument("--curve-clients", default=None, help="folder of allowed client certificates (CurveZMQ)")
    parser.add_argument("--ready-file", default=None,
                        help="write {endpoint, pid, model_name, checkpoint_hash} here once a worker is ready (an old "
                             "file there is removed at start unless its pid is a running server's, this one when "
                             "the server stops)")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="stop when this process exits (set by --enhancer local: the server dies with its run)")
    parser.add_argument("--owned-folder", default=None,
                        help="folder to remove when stopping because the --parent-pid process is gone")
    parser.add_argument("--no-shared-memory", dest="shared_memory", action="store_false",
                        help="do not offer same-host clients shared-memory blocks (bytes over ZeroMQ only)")
    parser.add_argument("--precision", choices=CPU_PRECISIONS, default="auto",
                        help="the model's arithmetic on a CPU: auto = bfloat16 where the CPU has AMX, or native "
                             "bfloat16 that a short timed probe finds faster; float32 elsewhere")


def config_from_args(args) -> ServerConfig:
    return ServerConfig(bind=args.bind, checkpoint=args.checkpoint, workers=args.workers,
                        threads_per_worker=args.threads, max_batch_frames=args.max_batch_frames,
                        curve_secret_key=args.curve_secret_key, curve_clients=args.curve_clients,
                        ready_file=args.ready_file, parent_pid=args.parent_pid, owned_folder=args.owned_folder,
                        shared_memory=args.shared_memory, precision=args.precision)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neural-sensor serve-enhancer", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        serve(config_from_args(args))
    except (ValueError, RuntimeError, zmq.ZMQError) as err:
        print(f"serve-enhancer: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
