"""EnhancerClient: Lazy-Pirate ZeroMQ client with a per-request deadline; never stalls a tick.

    client = EnhancerClient("tcp://127.0.0.1:5555", deadline_ms=1000)
    client.wait_ready()                     # hello until a worker holds the model (raises if incompatible)
    result = client.enhance(frames)         # frames: [{"camera", "rgb", "depth", "alpha"}, ...]
    result.rgb                              # [H, W, 3] float32 per frame, or None with result.reason

How a request runs (Lazy Pirate, zguide ch. 4): send on a DEALER socket (REQ-style
envelope), poll for the reply until the deadline, and drop replies whose id is not the
request's (late answers to earlier requests). On a missed deadline the socket is
closed with LINGER 0 and a fresh one connects, so nothing stale is left queued;
libzmq then keeps reconnecting in the background (every 100 ms), and IMMEDIATE mode
means a request is only sent over a live connection: while the server is down,
`enhance` returns at once with the reason instead of waiting out its deadline (a
socket opened less than CONNECT_GRACE_S ago may wait, within the deadline, for its
connection to form), and the first tick after the server is back is enhanced again. `hello` and `stats` retry
a bounded number of times. A server speaking another protocol version is an
EnhancerVersionError naming both versions, never a silent fallback.

Same host (shared_memory=True, the default): when a hello offers shared memory, the
endpoint is loopback (ipc://, tcp://127.x, localhost) and the offered folder's nonce
file matches, the client keeps one block there (protocol.py) and sends only headers;
the worker reads the frames and writes the refined rgb into the block. A
SharedMemoryError reply (a restarted server, a removed block) sends the same tick over
bytes within its deadline and hellos again (at most once a second) before the next
ticks; a missed deadline retires the block (a late worker may still write into it).
`transport` says which path the next tick takes. close() removes the block.

Zero copy (`frame_buffers`): a caller that renders straight into the client's block (the
rig: `render(out=)`) hands over float32 rgb / depth / alpha that need no conversion and no copy;
the worker reads them where they lie and writes its float32 reply into the lent "enhanced"
arrays when they are enhance()'s `out`. Everything else is converted into the block as before.

Direct path (direct=True, the default, with shared memory): when the hello lists the workers'
sockets (protocol.py), the client connects to one and sends its shared-memory requests there,
skipping the broker and its two ZeroMQ hops (each costs ~0.3 ms of thread wake-ups each way on an
idle machine). A missed deadline closes that connection (a late reply goes nowhere) and retires the
block, as above (DIRECT_TIMEOUTS_TO_LEAVE in a row leave that worker for the broker); a socket that
is gone or breaks (its worker died) sends the tick over the broker within its deadline, and a hello
(at most one a second) finds the replacement's. While the hello lists fewer sockets than the server
has workers it is asked again each second, so clients spread over all of them. `route` says which
path the next tick takes.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from neural_sensor.enhance import protocol as wire
from neural_sensor.enhance.client_block import SharedBlock
from neural_sensor.enhance.client_block import convert_named  # the byte path converts as the block does


CONNECT_GRACE_S = 1.0  # how long a new socket's first request may wait for the connection (within its deadline)
SHM_HELLO_EVERY_S = 1.0  # how often enhance() may hello to (re)negotiate shared memory
NO_SHM_HELLO_EVERY_S = 30.0  # ... and how often when the server offered none (--no-shared-memory)
SHM_HELLO_MS = 50.0  # the most such a hello may take out of a tick's budget
DIRECT_TIMEOUTS_TO_LEAVE = 3  # direct requests in a row without a reply in time before the client leaves that worker
DIRECT_LEAVE_S = 30.0  # how long a worker left for its timeouts is not taken again from a hello's list


class EnhancerError(RuntimeError):
    """The enhancer answered with an error, or could not be reached for hello / stats."""


class EnhancerVersionError(EnhancerError):
    """Client and server speak different protocol versions."""


@dataclass
class EnhanceResult:
    """What one enhance call gave: refined rgb per frame, or None and the reason."""

    rgb: list[np.ndarray] | None  # per frame [H, W, 3] float32 in [0, 1]
    reason: str  # "" when enhanced
    latency_ms: float  # request send to reply (or to giving up)
    model_ms: float | None = None  # the server's model time for the batch
    worker_ms: float | None = None  # the worker's decode + model + encode time for the batch
    path: str = ""  # how an enhanced tick travelled: "shm/direct", "shm/broker" or "bytes/broker" ("" when not)

    @property
    def enhanced(self) -> bool:
        return self.rgb is not None


class EnhancerClient(SharedBlock):
    """See the module docstring. Not thread-safe: one client per thread."""

    def __init__(self, endpoint: str, deadline_ms: float = 1000.0, retries: int = 3,
                 curve_server_public_key: bytes | None = None, curve_client_certificate: str | None = None,
                 wire_dtype: str = "uint8", shared_memory: bool = True, direct: bool = True):
        wire.check_endpoint(endpoint, "enhancer endpoint")
        if isinstance(deadline_ms, bool) or not (isinstance(deadline_ms, (int, float))
                                                 and 0 < deadline_ms <= wire.MAX_DEADLINE_MS):
            raise ValueError(f"deadline_ms must be in (0, {wire.MAX_DEADLINE_MS:g}], got {deadline_ms!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0 (attempts after the first), got {retries!r}")
        if wire_dtype not in ("uint8", "float32"):
            raise ValueError(f"wire_dtype must be 'uint8' or 'float32', got {wire_dtype!r}")
        self.endpoint = endpoint
        self.deadline_ms = float(deadline_ms)
        self.retries = int(retries)
        self.wire_dtype = wire_dtype
        self._curve = None
        if curve_server_public_key is not None or curve_client_certificate is not None:
            import zmq.auth as zmq_auth

            if curve_server_public_key is None or curve_client_certificate is None:
                raise ValueError("CurveZMQ needs both the server's public key and this client's certificate")
            public, secret = zmq_auth.load_certificate(curve_client_certificate)
            if secret is None:
                raise ValueError(f"{curve_client_certificate} holds no secret key (use the .key_secret file)")
            self._curve = (curve_server_public_key, public, secret)
        self._ctx = zmq.Context.instance()
        self._prefix = uuid.uuid4().hex[:12]
        self._counter = itertools.count()
        self._socket = None
        self.server: dict | None = None  # the last hello reply
        # the model this client serves with: {"model_name", "checkpoint_hash", "server_version", "cpu_precision"} of
        # its first hello that names one (or {"checkpoint_hash"} of its first reply, before any hello);
        # a reply from another checkpoint (the server restarted with another model) is not used (`_bad_reply`)
        self.model: dict | None = None
        self.resets = 0
        self.shared_memory = bool(shared_memory) and wire.is_loopback(endpoint)  # may use it if offered
        self._shm_offer: dict | None = None  # {"folder", "nonce"} of the server, checked
        self._init_block()  # client_block.SharedBlock: the shared block, what it lends, requests laid out in it
        self._next_shm_hello = 0.0  # monotonic time of the next allowed hello from enhance()
        self.direct = bool(direct)  # may send shared-memory requests straight to a worker if offered
        self._direct_path: str | None = None  # the offered worker socket this client uses
        self._direct_sock: socket.socket | None = None
        self._direct_rehello = False  # hello again (at most once a second) for a fuller or newer list of sockets
        self.closed = False  # close() was called
        # the depth goes out as float16 through torch's cast, whose first call imports torch (~1 s): paid here, not
        # by the first tick's deadline
        wire.to_float16_into(np.zeros(1, np.float32), np.empty(1, np.float16))
        self._direct_timeouts = 0  # direct requests in a row that got no reply in time
        self._direct_left: dict[str, float] = {}  # worker socket path -> monotonic time until which it is not taken
        if wire_dtype == "uint8":
            wire.warm_codecs()  # the first tick's request must not wait for numba
        self._open()

    # -------------------------------------------------------------- socket
    def _open(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if wire.is_ipv6(self.endpoint):
            sock.setsockopt(zmq.IPV6, 1)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 100)
        if self._curve is not None:
            server_key, public, secret = self._curve
            sock.curve_serverkey = server_key
            sock.curve_publickey = public
            sock.curve_secretkey = secret
        sock.connect(self.endpoint)
        self._socket = sock
        self._connect_grace_until = time.monotonic() + CONNECT_GRACE_S

    def _reset(self) -> None:
        """Lazy Pirate: drop the socket (and anything queued on it) and connect a fresh one. It gets no connect grace:
        a server that let a request time out is stalled or gone, and a tick that waited the grace on the fresh
        socket for a handshake a stopped server cannot complete lost its whole deadline (a new user's finding)."""
        self._socket.close(0)
        self.resets += 1
        self._open()
        self._connect_grace_until = time.monotonic()
        self._next_shm_hello = min(self._next_shm_hello, time.monotonic())  # the server may have been replaced

    def close(self) -> None:
        """Release the socket and shared block; later calls answer that the client is closed (enhance: a raw tick
        with that reason; hello / stats: EnhancerError) instead of connecting again."""
        self.closed = True
        self._shm_offer = None  # nothing of the server's folder is used after this (frame_buffers: None)
        self._close_direct()
        self._release_block()
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None

    @property
    def transport(self) -> str:
        """"shm" when the next enhance goes through shared memory, else "bytes"."""
        return "shm" if self._shm_offer is not None else "bytes"

    @property
    def route(self) -> str:
        """"direct" when the next enhance goes straight to a worker's socket, else "broker"."""
        return "direct" if self._shm_offer is not None and self._direct_path is not None else "broker"

    # -------------------------------------------------------------- shared memory
    def _accept_shm(self, hello: dict) -> None:
        """Use the hello's shared-memory offer if allowed here and the folder really is the server's."""
        offer = hello.get("shm")
        accepted = None
        if self.shared_memory and isinstance(offer, dict):
            folder, nonce = offer.get("folder"), offer.get("nonce")
            try:
                if isinstance(folder, str) and isinstance(nonce, str) and \
                        (Path(folder) / "nonce").read_text() == nonce:
                    accepted = {"folder": folder, "nonce": nonce}
            except OSError:  # another host's folder (a tunnelled port), or no access: bytes
                pass
        if accepted != self._shm_offer:
            self._release_block()
        self._shm_offer = accepted
        names = offer.get("direct") if accepted is not None and self.direct else None
        names = [n for n in names if isinstance(n, str) and wire.DIRECT_SOCKET_NAME.fullmatch(n)] \
            if isinstance(names, list) else []
        now = time.monotonic()
        self._direct_left = {p: t for p, t in self._direct_left.items() if t > now}
        usable = [n for n in names if os.path.join(accepted["folder"], n) not in self._direct_left] if names else []
        path = os.path.join(accepted["folder"], usable[int(self._prefix, 16) % len(usable)]) if usable else None
        if path != self._direct_path:
            self._close_direct()
            self._direct_timeouts = 0
        self._direct_path = path if path is None or len(path.encode()) <= wire.DIRECT_MAX_PATH_BYTES else None
        # a server with direct sockets, fewer ready than it has workers (starting, restarting): ask again in a
        # second, so that clients spread over all of them and find a replacement
        workers = hello.get("workers")
        self._direct_rehello = bool(self.direct and accepted is not None and isinstance(offer.get("direct"), list)
                                    and (self._direct_path is None
                                         or (isinstance(workers, int) and len(names) < workers)))
        if accepted is None and "shm" not in hello:  # the server offers none: ask again after a reset, or now and
            # then (one restarted with shared memory within a deadline stayed on bytes for good)
            self._next_shm_hello = time.monotonic() + NO_SHM_HELLO_EVERY_S

    def _maybe_hello(self, t_end: float) -> None:
        """Negotiate shared memory again (after a restart of the server, or without an explicit hello) when due."""
        now = time.monotonic()
        due = (self.shared_memory and (self._shm_offer is None or self._direct_rehello)) \
            or self._model_mismatch() is not None  # (another model: hello until the client's own is back)
        if not due or now < self._next_shm_hello:
            return
        self._next_shm_hello = now + SHM_HELLO_EVERY_S
        budget = min(SHM_HELLO_MS, (t_end - now) * 1000.0 / 4)
        if budget < 1.0:
            return
        rid = f"{self._prefix}-{next(self._counter)}"
        reply = self._exchange(wire.make_request("hello", rid), rid, budget, wait_connect=False)
        if isinstance(reply, dict) and reply.get("ok") and reply.get("protocol_version") == wire.PROTOCOL_VERSION:
            self._note_server(reply)
            self._accept_shm(reply)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -------------------------------------------------------------- one exchange
    def _exchange(self, payload: bytes, request_id: str, budget_ms: float, wait_connect: bool,
                  deadline_ms: float | None = None) -> dict | str:
        """Send and wait for the reply with this id; the reply dict, or a reason string on failure."""
        t_end = time.monotonic() + budget_ms / 1000.0
        deadline_ms = budget_ms if deadline_ms is None else deadline_ms  # what a reason cites: the request's own
        try:
            self._socket.send_multipart([b"", payload], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            # a socket opened moments ago may simply not have finished connecting: give it the grace period
            # (within the budget); an older one without a connection means the server is down: answer now
            wait_until = t_end if wait_connect else min(t_end, self._connect_grace_until)
            sent = False
            if self._socket.poll(max(0, int((wait_until - time.monotonic()) * 1000)), zmq.POLLOUT):
                try:  # still non-blocking: the connection may have dropped since the poll
                    self._socket.send_multipart([b"", payload], flags=zmq.NOBLOCK, copy=False)
                    sent = True
                except zmq.Again:
                    pass
            if not sent:
                if not wait_connect:
                    return f"enhancer at {self.endpoint} is not connected (reconnecting in the background)"
                return f"no connection to the enhancer at {self.endpoint} within {_ms(deadline_ms)} ms"
        while True:
            remaining = int((t_end - time.monotonic()) * 1000)
            if remaining <= 0 or not self._socket.poll(remaining, zmq.POLLIN):
                self._reset()
                return f"no reply from the enhancer at {self.endpoint} within {_ms(deadline_ms)} ms"
            parts = self._socket.recv_multipart()
            try:
                reply = wire.parse_reply(parts[-1])
            except Exception as err:  # noqa: BLE001 - whatever is wrong with a reply, the tick goes on
                self._reset()
                return f"malformed reply from the enhancer ({type(err).__name__}: {err})"
            if reply.get("id") == request_id:
                return reply
            if reply.get("id") is None and not reply["ok"]:
                # an error the server could not tie to an id (e.g. the message was too big to read): a socket
                # has one request outstanding (it is reset on every timeout), so it answers this one
                return reply
            # else: a late reply to an earlier request: drop it and keep waiting

    def _check_version(self, reply: dict) -> None:
        error = reply.get("error") or {}
        if error.get("type") == "VersionMismatch":
            raise EnhancerVersionError(f"enhancer at {self.endpoint}: {error.get('message')} "
                                       f"(client protocol version {wire.PROTOCOL_VERSION}, server {reply.get('v')})")

    def _call(self, op: str, timeout_ms: float | None) -> dict:
        if self.closed:
            raise EnhancerError(f"this EnhancerClient of {self.endpoint} is closed")
        timeout_ms = float(timeout_ms if timeout_ms is not None else max(self.deadline_ms, 1000.0))
        reason = ""
        for _ in range(self.retries + 1):
            rid = f"{self._prefix}-{next(self._counter)}"
            reply = self._exchange(wire.make_request(op, rid), rid, timeout_ms, wait_connect=True)
            if isinstance(reply, str):
                reason = reply
                continue
            if not reply["ok"]:
                self._check_version(reply)
                raise EnhancerError(f"enhancer {op}: {reply['error']['type']}: {reply['error'].get('message')}")
            return reply
        raise EnhancerError(f"enhancer {op} failed after {self.retries + 1} attempts: {reason}")

    # -------------------------------------------------------------- ops
    def hello(self, timeout_ms: float | None = None) -> dict:
        """The server's hello (protocol and server versions, model name, checkpoint hash, workers)."""
        reply = self._call("hello", timeout_ms)
        if reply.get("protocol_version") != wire.PROTOCOL_VERSION or reply.get("v") != wire.PROTOCOL_VERSION:
            raise EnhancerVersionError(f"enhancer at {self.endpoint} speaks protocol version "
                                       f"{reply.get('protocol_version')!r}; this client speaks {wire.PROTOCOL_VERSION}")
        self._note_server(reply)
        self._accept_shm(reply)
        return reply

    def _note_server(self, hello: dict) -> None:
        """Keep a hello reply; the first one that names a checkpoint fixes this client's model."""
        self.server = hello
        if self.model is None and isinstance(hello.get("checkpoint_hash"), str):
            self.model = {k: hello.get(k) for k in ("model_name", "checkpoint_hash", "server_version", "cpu_precision")}

    def wait_ready(self, timeout_s: float = 30.0, waiting=None, waiting_after_s: float = 2.0) -> dict:
        """Hello until the server reports a ready worker (raises EnhancerError after timeout_s). `waiting`: called
        once with the seconds left when none is ready after `waiting_after_s` (to tell a person what the wait is:
        to ZeroMQ a closed port or a wrong host is only silence)."""
        if self.closed:
            raise EnhancerError(f"this EnhancerClient of {self.endpoint} is closed")
        t_end = time.monotonic() + timeout_s
        t_waiting = time.monotonic() + waiting_after_s
        last = "no reply"
        stopping = False  # this call's hello said the server is stopping (not an earlier call's: it may be back)
        while time.monotonic() < t_end:
            if waiting is not None and time.monotonic() >= t_waiting:
                waiting(t_end - time.monotonic())
                waiting = None
            try:
                until = t_end if waiting is None else min(t_end, t_waiting)  # a hello tries retries + 1 times
                hello = self.hello(timeout_ms=min(1000.0, max(50.0, (until - time.monotonic()) * 1000
                                                              / (self.retries + 1))))
                if hello.get("workers_ready", 0) >= 1:
                    return hello
                if hello.get("stopping") is True:  # (a server ending: none of its workers will become ready)
                    stopping = True
                    raise EnhancerError(f"enhancer at {self.endpoint} is stopping (it was sent Ctrl-C or SIGTERM)")
                last = "no worker ready yet"
            except EnhancerVersionError:
                raise
            except EnhancerError as err:
                if stopping:
                    raise
                last = str(err)
            time.sleep(0.1)
        raise EnhancerError(f"enhancer at {self.endpoint} not ready within {timeout_s:.0f} s ({last})")

    def stats(self, timeout_ms: float | None = None) -> dict:
        """The server's counters: requests, errors, frames_enhanced, p50_ms, p99_ms, workers, uptime_s."""
        return self._call("stats", timeout_ms)

    def enhance(self, frames: list[dict], deadline_ms: float | None = None,
                out: list[np.ndarray] | None = None) -> EnhanceResult:
        """Enhance every camera of a tick in one request, within the deadline. Never raises for transport
        problems (the result carries the reason); raises EnhancerVersionError on a version mismatch.

        Args:
            frames: per camera {"camera": id, "rgb": [H, W, 3] float in [0, 1] or uint8 in [0, 255],
                    "depth": [H, W] float metres, "alpha": [H, W] float in [0, 1] or uint8 in [0, 255]}
                    (+ optional "reference" [H, W, 3] like rgb, "reference_valid" [H, W]); alpha may also
                    be bool. Floats of any width are taken (float16 / longdouble via float32). uint8 images go
                    on the (default) uint8 wire as they are. ValueError names a frame whose images have
                    another dtype.
            out: optional, per frame a writable C-contiguous float32 [H, W, 3] array that receives the enhanced
                 image (and is returned in result.rgb); it may be the frame's own "rgb", which is read
                 before anything is written. Untouched when the tick is not enhanced. Saves allocating (and
                 the kernel zeroing) fresh memory every tick: the rig passes its render buffers, or, when its
                 render went into this client's block, the lent "enhanced" arrays (`frame_buffers`), where the
                 worker writes the reply itself (those may hold part of a reply after a tick that is not
                 enhanced).
        """
        _check_frames(frames)
        if deadline_ms is not None and (isinstance(deadline_ms, bool) or not isinstance(deadline_ms, (int, float))
                                        or not 0 < deadline_ms <= wire.MAX_DEADLINE_MS):
            raise ValueError(f"enhance: deadline_ms must be in (0, {wire.MAX_DEADLINE_MS:g}] or None (the client's), "
                             f"got {deadline_ms!r}")
        if self.closed:
            return EnhanceResult(None, f"this EnhancerClient of {self.endpoint} is closed", 0.0)
        if out is not None:
            if len(out) != len(frames) or any(
                    not isinstance(o, np.ndarray) or o.dtype != np.float32 or o.shape != np.shape(f["rgb"])
                    or not o.flags.c_contiguous or not o.flags.writeable for o, f in zip(out, frames)):
                raise ValueError("enhance: out must hold one writable C-contiguous float32 array per frame, "
                                 "shaped like that frame's rgb")
        budget = float(deadline_ms if deadline_ms is not None else self.deadline_ms)
        start = time.monotonic()
        t_end = start + budget / 1000.0
        self._maybe_hello(t_end)
        mismatch = self._model_mismatch()  # the last hello named another model: its reply would be refused anyway
        if mismatch is not None:
            return EnhanceResult(None, mismatch, (time.monotonic() - start) * 1000.0)
        if self._shm_offer is not None:
            result = self._enhance_shm(frames, budget, start, out)
            if result is not None:
                return result
        try:
            wire_frames = [self._wire_frame(f, i) for i, f in enumerate(frames)]
        except wire.NaNImageError as err:  # as the server's BadRequest on a float wire: this tick is not enhanced
            return EnhanceResult(None, str(err), (time.monotonic() - start) * 1000.0)
        rid = f"{self._prefix}-{next(self._counter)}"
        payload = wire.make_request("enhance", rid, wire_frames, deadline_ms=budget)
        if len(payload) > wire.MAX_MESSAGE_BYTES:
            return EnhanceResult(None, f"request of {len(payload)} bytes exceeds the protocol's "
                                       f"{wire.MAX_MESSAGE_BYTES}; send fewer or smaller frames",
                                 (time.monotonic() - start) * 1000.0)
        reply = self._exchange(payload, rid, budget - (time.monotonic() - start) * 1000.0, wait_connect=False,
                               deadline_ms=budget)
        latency = (time.monotonic() - start) * 1000.0
        bad = self._bad_reply(reply, frames, latency)
        if bad is not None:
            return bad
        if any(isinstance(o["rgb"], wire.ShmRef) for o in reply["frames"]):
            return EnhanceResult(None, "enhancer reply names a shared block; this request sent bytes", latency)
        return EnhanceResult(_decode([o["rgb"] for o in reply["frames"]], out), "", latency, reply.get("model_ms"),
                             reply.get("worker_ms"), "bytes/broker")

    def _enhance_shm(self, frames: list[dict], budget: float, start: float,
                     out: list[np.ndarray] | None = None) -> EnhanceResult | None:
        """enhance() through the shared block; None when the server refused it (SharedMemoryError: bytes now)."""
        rid = f"{self._prefix}-{next(self._counter)}"
        layout, block_bytes, data_bytes = self._shm_layout(frames, out)
        if data_bytes > wire.MAX_MESSAGE_BYTES:  # the byte path's limit holds here too: same ticks on both paths
            return EnhanceResult(None, f"request of {data_bytes} bytes exceeds the protocol's "
                                       f"{wire.MAX_MESSAGE_BYTES}; send fewer or smaller frames",
                                 (time.monotonic() - start) * 1000.0)
        reply_refs = [refs["reply"] for refs in layout]
        try:
            payload = self._shm_request(frames, layout, block_bytes, rid, budget)
        except wire.NaNImageError as err:
            return EnhanceResult(None, str(err), (time.monotonic() - start) * 1000.0)
        except OSError as err:  # the folder is gone (the server stopped) or full: bytes, and hello again later
            self._say_no_room(err, block_bytes)
            self._shm_offer = None
            self._release_block()
            return None
        remaining = budget - (time.monotonic() - start) * 1000.0
        reply = None
        if self._direct_path is not None and remaining > 0 and len(payload) <= wire.DIRECT_MAX_BYTES:
            reply = self._exchange_direct(payload, rid, remaining, budget)  # None: the socket is gone: the broker
            remaining = budget - (time.monotonic() - start) * 1000.0
        path = "shm/direct" if reply is not None else "shm/broker"
        if reply is None:
            reply = (self._exchange(payload, rid, remaining, wait_connect=False, deadline_ms=budget)
                     if remaining > 0 else f"no reply from the enhancer at {self.endpoint} within {_ms(budget)} ms")
        latency = (time.monotonic() - start) * 1000.0
        if isinstance(reply, str):
            self._release_block()  # a worker may still write into it: the next tick takes a fresh block
            return EnhanceResult(None, reply, latency)
        if not reply["ok"] and reply["error"]["type"] == "SharedMemoryError":
            self._shm_offer = None
            self._release_block()
            return None
        bad = self._bad_reply(reply, frames, latency)
        if bad is not None:
            return bad
        if any(not isinstance(o["rgb"], wire.ShmRef) or o["rgb"] != ref for o, ref in zip(reply["frames"], reply_refs)):
            return EnhanceResult(None, "enhancer reply does not match the request's shared block layout", latency)
        mapping = self._block[2]
        # copies, unless the reply already lies in `out` (the lent "enhanced" arrays): the block is reused next tick
        rgb = _decode([ref.view(mapping) for ref in reply_refs], out)
        return EnhanceResult(rgb, "", (time.monotonic() - start) * 1000.0, reply.get("model_ms"),
                             reply.get("worker_ms"), path)

    def _exchange_direct(self, payload: bytes, request_id: str, budget_ms: float,
                         deadline_ms: float | None = None) -> dict | str | None:
        """One request over the worker's socket: the reply dict, a reason string (no reply within the budget, a
        malformed reply: the connection is closed), or None when the socket is gone or broke before a reply (the
        worker died: the caller sends over the broker; a hello follows)."""
        t_end = time.monotonic() + budget_ms / 1000.0
        if self._direct_sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.settimeout(max(1e-3, budget_ms / 1000.0))
            try:
                sock.connect(self._direct_path)
            except OSError:
                sock.close()
                self._lose_direct()
                return None
            self._direct_sock = sock
        sock = self._direct_sock
        try:
            sock.settimeout(max(1e-3, t_end - time.monotonic()))
            sock.send(payload)
        except OSError:  # a broken connection (the worker died), or a full buffer until the deadline
            self._lose_direct()
            return None
        while True:
            remaining = t_end - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                data = sock.recv(wire.DIRECT_MAX_BYTES + 1)
            except TimeoutError:
                path = self._direct_path
                self._close_direct()  # the worker's late reply finds the connection gone
                self._direct_timeouts += 1
                if self._direct_timeouts >= DIRECT_TIMEOUTS_TO_LEAVE:  # hung or swamped: the broker, then a hello
                    self._direct_left[path] = time.monotonic() + DIRECT_LEAVE_S  # not this one again for a while
                    self._direct_timeouts = 0
                    self._lose_direct()
                cited = budget_ms if deadline_ms is None else deadline_ms
                return f"no reply from the enhancer's worker ({path}) within {_ms(cited)} ms"
            except OSError:
                data = b""
            if not data:  # the worker went away mid-request: it writes nothing more into the block
                self._lose_direct()
                return None
            try:
                reply = wire.parse_reply(data)
            except Exception as err:  # noqa: BLE001 - whatever is wrong with a reply, the tick goes on
                self._close_direct()
                return f"malformed reply from the enhancer's worker ({type(err).__name__}: {err})"
            if reply.get("id") == request_id or (reply.get("id") is None and not reply["ok"]):
                self._direct_timeouts = 0
                return reply

    def _close_direct(self) -> None:
        if self._direct_sock is not None:
            self._direct_sock.close()
            self._direct_sock = None

    def _lose_direct(self) -> None:
        """The worker's socket is gone (or its worker hung): the broker takes the ticks until a hello names
        another (at most one hello a second, SHM_HELLO_EVERY_S)."""
        self._close_direct()
        self._direct_path = None
        self._direct_rehello = True

    def _model_mismatch(self, served: str | None = None) -> str | None:
        """The reason a server serving checkpoint `served` (default: the last hello's) is not used, or None."""
        served = (self.server or {}).get("checkpoint_hash") if served is None else served
        if self.model is None or not isinstance(served, str) or served == self.model["checkpoint_hash"]:
            return None
        name = self.model.get("model_name")
        return (f"the enhancer at {self.endpoint} answered with checkpoint {served}, not "
                f"{self.model['checkpoint_hash']}{f' ({name})' if name else ''} that this "
                f"client started with (a server restarted with another model?)")

    def _bad_reply(self, reply, frames: list[dict], latency: float) -> EnhanceResult | None:
        """The raw-render result for a failed exchange, an error reply or a reply of the wrong cameras / sizes."""
        if isinstance(reply, str):
            return EnhanceResult(None, reply, latency)
        if not reply["ok"]:
            self._check_version(reply)
            error = reply["error"]
            return EnhanceResult(None, f"enhancer error {error['type']}: {error.get('message')}", latency)
        out = reply.get("frames") or []
        if len(out) != len(frames) or any(o["camera"] != f["camera"] or tuple(o["rgb"].shape) != np.shape(f["rgb"])
                                          for o, f in zip(out, frames)):
            return EnhanceResult(None, "enhancer reply does not match the request's cameras / sizes", latency)
        served = reply.get("checkpoint_hash")
        if isinstance(served, str):
            if self.model is None:  # no hello yet: the first reply fixes the model
                self.model = {"checkpoint_hash": served}
            elif self._model_mismatch(served) is not None:
                # known now: the next ticks are not sent (also without shared memory, where no hello would tell),
                # and a hello a second asks whether the client's own model is back
                self.server = {**(self.server or {}), "checkpoint_hash": served}
                return EnhanceResult(None, self._model_mismatch(served), latency)
        return None

    def _wire_dtypes(self, frame: dict) -> dict:
        """The dtype each of a frame's arrays travels as (uint8 rgb / float16 depth / uint8 alpha by default)."""
        u8 = self.wire_dtype == "uint8"
        rgb = np.shape(frame["rgb"])
        h, w = rgb[:2]
        assert rgb == (h, w, 3), rgb
        assert np.shape(frame["depth"]) == (h, w) and np.shape(frame["alpha"]) == (h, w)
        out = {"rgb": "uint8" if u8 else "float32", "depth": "float16" if u8 else "float32",
               "alpha": "uint8" if u8 else "float32"}
        if frame.get("reference") is not None:
            out["reference"] = "uint8" if u8 else "float32"
            out["reference_valid"] = "bool"
        return out

    def _wire_frame(self, frame: dict, index: int) -> dict:
        """A frame's arrays as they travel on the byte path (NaNImageError naming frames[index] and the field)."""
        out = {"camera": str(frame["camera"])}
        for name, dtype in self._wire_dtypes(frame).items():
            out[name] = convert_named(index, name, frame[name], np.empty(np.shape(frame[name]), dtype))
        return out


_IMAGE = "float in [0, 1] or uint8 in [0, 255]"
# per frame field: what it may be, and the non-float dtypes that are taken (any float is)
_FRAME_DTYPES = {"rgb": (_IMAGE, (np.uint8,)), "alpha": (_IMAGE + " or bool", (np.uint8, np.bool_)),
                 "reference": (_IMAGE, (np.uint8,)), "depth": ("float metres", ())}


def _ms(value: float) -> str:
    """A budget in milliseconds as a reason names it: whole milliseconds (949, not 949.312), a short one as it is."""
    return f"{value:.0f}" if value >= 10 else f"{value:g}"


def hello_reference_views(hello: dict | None) -> int:
    """The drive-log views per camera an enhancer takes as its reference, from its hello ({"reference_views": k},
    EnhancerConfig.reference_views): k when a positive integer, else 0 (no hello, an older server, a value of
    another type: send no reference). The runner, the CARLA bridge and the run-regime benchmark all ask this."""
    views = (hello or {}).get("reference_views")
    return views if isinstance(views, int) and not isinstance(views, bool) and views > 0 else 0


def _check_frames(frames: list[dict]) -> None:
    """ValueError naming the first frame that is not a dict with rgb [H, W, 3], depth and alpha [H, W] (and
    reference [H, W, 3] with reference_valid [H, W] if either is given), or whose field has a dtype the wire cannot
    take as meant."""
    for index, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise ValueError(f"enhance: frames[{index}] must be a dict (camera, rgb, depth, alpha), got "
                             f"{type(frame).__name__}")
        missing = [name for name in ("rgb", "depth", "alpha") if frame.get(name) is None]
        if missing:
            raise ValueError(f"enhance: frames[{index}] has no {' / '.join(missing)} (each frame needs rgb, depth and "
                             "alpha)")
        if not isinstance(frame.get("camera"), str) or not frame["camera"]:  # sent as str, replies compared as given
            raise ValueError(f"enhance: frames[{index}] needs a \"camera\" id, a non-empty str, got "
                             f"{frame.get('camera')!r}")
        if (frame.get("reference") is None) != (frame.get("reference_valid") is None):
            raise ValueError(f"enhance: frames[{index}] needs reference and reference_valid together")
        h, w = np.shape(frame["rgb"])[:2]
        expected = {"rgb": (h, w, 3), "depth": (h, w), "alpha": (h, w), "reference": (h, w, 3),
                    "reference_valid": (h, w)}
        for name, shape in expected.items():
            if frame.get(name) is not None and np.shape(frame[name]) != shape:
                raise ValueError(f"enhance: frames[{index}].{name} has shape {np.shape(frame[name])}; it must be "
                                 f"{shape} (rgb's height and width)")
        for name, (allowed, taken) in _FRAME_DTYPES.items():
            if frame.get(name) is None:
                continue
            dtype = np.asarray(frame[name]).dtype
            if dtype.kind != "f" and dtype not in taken:
                raise ValueError(f"enhance: frames[{index}].{name} has dtype {dtype}; it must be {allowed}")


def _decode(arrays: list[np.ndarray], out: list[np.ndarray] | None) -> list[np.ndarray]:
    """`protocol.to_float` of each reply image: into `out` (checked by `enhance`) when given, else fresh arrays."""
    if out is None:
        return [wire.to_float(a) for a in arrays]
    for array, target in zip(arrays, out):
        if array.ctypes.data != target.ctypes.data:  # else the worker wrote it there (frame_buffers' "enhanced")
            wire.float_into(array, target)
    return list(out)
