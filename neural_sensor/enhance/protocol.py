"""Enhancer wire protocol: msgpack messages over ZeroMQ, versioned, validated, no pickle.

Every message is ONE msgpack map (one ZeroMQ frame after the envelope).

Request:  {"v": PROTOCOL_VERSION, "id": <str or int>, "op": "hello" | "enhance" | "stats", ...}
  enhance: "frames": [frame, ...] (1..MAX_FRAMES, every camera of a tick in one request),
           optional "deadline_ms": the client's budget (the server drops requests older than it)
  frame:   {"camera": str, "rgb": [H,W,3], "depth": [H,W], "alpha": [H,W],
            optional "reference": [H,W,3] + "reference_valid": [H,W]}
Reply:    {"v": PROTOCOL_VERSION, "id": <the request's id>, "ok": true, ...}
          {"v": PROTOCOL_VERSION, "id": <id or null>, "ok": false, "error": {"type": str, "message": str}}
  hello:   protocol_version, server_version, model_name, checkpoint_hash, reference_views (the log views per
           camera the model takes), cpu_precision, workers, workers_ready (0 once the server is stopping),
           stopping (true from a Ctrl-C / SIGTERM on: enhance requests are answered "Stopping"), max_frames (the
           most frames the server runs through the model at once, its --max-batch-frames; a request may hold up
           to MAX_FRAMES, run in parts), max_request_frames (MAX_FRAMES), max_message_bytes, and "shm" {folder,
           nonce} when it offers shared memory (with "direct", the ready workers' socket names, while it is not
           stopping)
  enhance: "frames": [{"camera": str, "rgb": [H,W,3] in the request's rgb dtype}], "model_ms" (the model
           alone), "worker_ms" (the worker's decode + model + encode) for the batch the request ran in, and
           "checkpoint_hash" (the model that answered: a client refuses a reply from another model than its
           first hello's, as after a restart of the server with another checkpoint)
  stats:   requests, errors, enhance_requests, jobs (worker dispatches; < enhance_requests when batched),
           frames_enhanced, worker_restarts, p50_ms, p99_ms (the broker's round trips), workers, workers_ready,
           queued, uptime_s, direct_requests (the requests workers took over the direct path, counted when they
           report it, in requests / errors too), direct_worker_p50_ms (the workers' time per direct batch)

Arrays are maps {"__ndarray__": true, "dtype": str, "shape": [int, ...], "data": bytes (C order,
little endian)}. Allowed per field (anything else is refused with a named error):
  rgb, reference   [H,W,3]  uint8 (0..255) | float16 | float32 (0..1)
  depth            [H,W]    float16 | float32 (metres, 0 = nothing hit)
  alpha            [H,W]    uint8 (0..255) | float16 | float32 (0..1)
  reference_valid  [H,W]    bool | uint8
with 1 <= H, W <= MAX_SIDE. Messages over MAX_MESSAGE_BYTES are refused before parsing (LimitExceeded) up to twice
that size; beyond it libzmq drops the connection unread (no reply: the client's deadline applies, and it
reconnects).
Error types: BadMessage, VersionMismatch, BadRequest, LimitExceeded, WorkerError, DeadlineExceeded,
SharedMemoryError, NotReady (a request with a deadline while no worker holds the model: the server starting, or
every worker restarting), Stopping (the server was asked to stop: what it had queued or given to a worker, and what
arrives while its workers end, is answered so at once).

Shared memory (same host only, negotiated at hello): a server that offers it says so in its hello,
"shm": {"folder": str, "nonce": str}; a client proves it sees the same files by reading FOLDER/nonce.
It then keeps ONE block per client, a file FOLDER/blk-<pid>-<hex> whose first SHM_HEADER_BYTES hold
SHM_MAGIC + the nonce, and sends only headers:
  enhance: "shm": {"block": name, "bytes": the block's size, "nonce": str}; in each frame the arrays are
           {"__shm__": true, "dtype", "shape", "offset"} (same dtypes and shapes as above, offset a byte
           offset into the block) and "reply_offset": where the worker writes the refined rgb (the rgb's
           dtype and shape).
  reply:   "frames": [{"camera", "rgb": {"__shm__": true, "dtype", "shape", "offset"}}]: written in place.
A missing, too-small or foreign block, or a nonce of another server, is a SharedMemoryError reply.

Direct path (same host, shared memory only): the hello's "shm" also lists "direct": the names of the ready
workers' sockets in FOLDER (w<index>-<pid>.sock, AF_UNIX SOCK_SEQPACKET). A client may connect to one and send
its shared-memory enhance requests there, one per packet (at most DIRECT_MAX_BYTES), each answered by one reply
packet, skipping the broker's two ZeroMQ hops. The worker checks them as the broker would (anything else gets
an error reply), batches those that arrive together up to the server's max_batch_frames, and reports what it
served to the broker's stats; it does not see deadlines (it serves a request when it comes; a client that
gives up closes its connection). A worker that dies takes its socket with it: the client sends over the
broker and hellos again.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 << 20
MAX_FRAMES = 16
MAX_SIDE = 4096
FLOAT16_MAX = 65504.0  # the wire's float16 depth: finite values beyond it are held there
MAX_DEADLINE_MS = 3_600_000.0  # an hour: the longest deadline a client gives a request
OPS = ("hello", "enhance", "stats")
SHM_MAGIC = b"NSENHSHM"
SHM_HEADER_BYTES = 64  # magic (8) + nonce (32 hex chars), padded; arrays start after it
SHM_ALIGN = 64
MAX_SHM_BYTES = 1 << 33
SHM_BLOCK_NAME = re.compile(r"blk-[0-9]{1,10}-[0-9a-f]{8,32}")
DIRECT_SOCKET_NAME = re.compile(r"w[0-9]{1,4}-[0-9]{1,10}\.sock")
DIRECT_MAX_BYTES = 1 << 16  # one direct packet: a shared-memory request or reply is a header of a few kB
DIRECT_MAX_PATH_BYTES = 100  # an AF_UNIX address holds 108 bytes

_IMAGE_DTYPES = ("uint8", "float16", "float32")
FRAME_FIELDS = {  # name: (trailing shape after [H, W], allowed dtypes, required)
    "rgb": ((3,), _IMAGE_DTYPES, True),
    "depth": ((), ("float16", "float32"), True),
    "alpha": ((), _IMAGE_DTYPES, True),
    "reference": ((3,), _IMAGE_DTYPES, False),
    "reference_valid": ((), ("bool", "uint8"), False),
}
_DTYPES = {name: np.dtype(name).newbyteorder("<") if name != "bool" else np.dtype(bool)
           for name in ("uint8", "float16", "float32", "bool")}


class ProtocolError(ValueError):
    """A message that breaks the protocol; `error_type` is the reply's error type, `request_id` the id if known."""

    def __init__(self, error_type: str, message: str, request_id=None):
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.request_id = request_id


def check_endpoint(endpoint, what: str, bind: bool = False) -> str:
    """endpoint if it is tcp://HOST:PORT (PORT 1-65535, or * for a bind) or ipc://PATH, else a ValueError naming
    `what` and the endpoint (zmq's own error would come later, as a traceback; an inproc:// server had "listened"
    where no other process can reach it)."""
    form = "tcp://HOST:PORT or ipc://PATH"
    if not isinstance(endpoint, str) or not endpoint.startswith(("tcp://", "ipc://")):
        raise ValueError(f"{what} must be {form}, got {endpoint!r}")
    scheme, rest = endpoint.split("://", 1)
    if scheme != "tcp":
        if not rest:
            raise ValueError(f"{what} {endpoint!r}: no path after {scheme}://")
        return endpoint
    host, colon, port = rest.rpartition(":")
    if not colon or not host or not (port == "*" and bind or port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{what} {endpoint!r}: expected tcp://HOST:PORT with a port 1-65535"
                         + (" (or *)" if bind else ""))
    return endpoint


def is_loopback(endpoint: str) -> bool:
    """True for ipc:// endpoints and tcp:// ones on the loopback interface: an address in 127.0.0.0/8 or ::1, or
    the name localhost (a name that only starts like one, "127.evil.net" or "localhost.example.com", is not)."""
    if endpoint.startswith("ipc://"):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name (or "*"): not known to be loopback
        return False


def is_ipv6(endpoint: str) -> bool:
    """True for a tcp:// endpoint on an IPv6 address (tcp://[::1]:PORT): its ZeroMQ socket needs the IPV6 option,
    which an IPv4 one must not get (its bind would then name itself tcp://[::ffff:127.0.0.1]:PORT)."""
    return endpoint.startswith("tcp://[")


def shm_folder_for(server_folder: str | Path) -> Path:
    """Where a server whose own folder is `server_folder` keeps its shared blocks: /dev/shm/neural-sensor-<name>
    (memory, not disk) when /dev/shm is there, else `server_folder`/shm. Whoever removes the server's folder
    removes this one too (local.stop_server, the server's own close, its workers when the broker was killed)."""
    dev_shm = Path("/dev/shm")
    if dev_shm.is_dir() and os.access(dev_shm, os.W_OK | os.X_OK):
        return dev_shm / f"neural-sensor-{Path(server_folder).name}"
    return Path(server_folder) / "shm"


@dataclass(frozen=True)
class ShmRef:
    """An array inside a shared block: its dtype name, shape and byte offset."""

    dtype: str
    shape: tuple
    offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _DTYPES[self.dtype].itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def encode(self) -> dict:
        return {"__shm__": True, "dtype": self.dtype, "shape": list(self.shape), "offset": self.offset}

    def view(self, buffer) -> np.ndarray:
        """The array this names in `buffer` (a writable view, no copy)."""
        return np.frombuffer(buffer, dtype=_DTYPES[self.dtype], count=math.prod(self.shape),
                             offset=self.offset).reshape(self.shape)


def _check_header(obj, field: str, marker: str, keys: set):
    """(dtype, shape) of an {marker: true, dtype, shape, ...} map, checked against the allowed dtypes and sizes."""
    if not isinstance(obj, dict) or obj.get(marker) is not True:
        kind = "an ndarray map" if marker == "__ndarray__" else "a shared-memory array map"
        raise ProtocolError("BadRequest", f"{field}: expected {kind}, got {type(obj).__name__}")
    extra = set(obj) - keys
    if extra:
        raise ProtocolError("BadRequest", f"{field}: unknown array keys {sorted(map(str, extra))}")
    dtype, shape = obj.get("dtype"), obj.get("shape")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise ProtocolError("BadRequest", f"{field}: dtype {dtype!r} is not allowed (allowed: {sorted(_DTYPES)})")
    if (not isinstance(shape, list) or len(shape) > 4
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)):
        raise ProtocolError("BadRequest", f"{field}: shape must be a list of at most 4 positive ints, got {shape!r}")
    if max(shape, default=0) > MAX_SIDE:
        raise ProtocolError("LimitExceeded", f"{field}: shape {shape} has a side over {MAX_SIDE}")
    return dtype, shape


def decode_shm_ref(obj, field: str, block_bytes: int) -> ShmRef:
    """The ShmRef a {"__shm__": ...} map names; BadRequest unless it lies inside a block of `block_bytes`."""
    dtype, shape = _check_header(obj, field, "__shm__", {"__shm__", "dtype", "shape", "offset"})
    return _ref_in_block(dtype, shape, obj.get("offset"), field, block_bytes)


def _ref_in_block(dtype: str, shape, offset, field: str, block_bytes: int) -> ShmRef:
    ref = ShmRef(dtype, tuple(shape), offset)
    if (isinstance(offset, bool) or not isinstance(offset, int) or offset < SHM_HEADER_BYTES
            or offset % _DTYPES[dtype].itemsize or offset + ref.nbytes > block_bytes):
        raise ProtocolError("BadRequest", f"{field}: offset {offset!r} with {ref.nbytes} bytes is out of range "
                                          f"(the block's arrays lie in [{SHM_HEADER_BYTES}, {block_bytes}), "
                                          f"aligned to the dtype)")
    return ref


# ------------------------------------------------------------------ arrays
def encode_array(array: np.ndarray) -> dict:
    """{"__ndarray__", dtype, shape, data} of a numpy array of an allowed dtype."""
    array = np.asarray(array)
    name = "bool" if array.dtype == bool else array.dtype.name
    if name not in _DTYPES:
        raise ProtocolError("BadRequest", f"dtype {array.dtype} cannot be sent (allowed: {sorted(_DTYPES)})")
    contiguous = np.ascontiguousarray(array, dtype=_DTYPES[name])
    # a byte view, not a copy: msgpack copies it once into the message
    return {"__ndarray__": True, "dtype": name, "shape": list(array.shape),
            "data": memoryview(contiguous).cast("B") if contiguous.size else b""}


def decode_array(obj, field: str) -> np.ndarray:
    """The array a {"__ndarray__": ...} map encodes (read-only view of the message bytes)."""
    dtype, shape = _check_header(obj, field, "__ndarray__", {"__ndarray__", "dtype", "shape", "data"})
    data = obj.get("data")
    if not isinstance(data, bytes):
        raise ProtocolError("BadRequest", f"{field}: data must be bytes, got {type(data).__name__}")
    expected = math.prod(shape) * _DTYPES[dtype].itemsize
    if expected != len(data):
        raise ProtocolError("BadRequest", f"{field}: shape {shape} of {dtype} needs {expected} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=_DTYPES[dtype]).reshape(shape)


# ------------------------------------------------------------------ messages
def _refuse_ext(code, data):
    raise ProtocolError("BadMessage", f"msgpack extension type {code} is not allowed")


def pack(message: dict) -> bytes:
    """msgpack bytes of a message (numpy arrays must already be encoded with encode_array)."""
    return msgpack.packb(message, use_bin_type=True)


def unpack(data: bytes) -> dict:
    """The map a message encodes; ProtocolError("BadMessage" / "LimitExceeded") for anything else."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("BadMessage", f"message must be bytes, got {type(data).__name__}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError("LimitExceeded", f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_refuse_ext,
                                  max_array_len=10_000, max_map_len=10_000,
                                  max_str_len=1 << 20, max_bin_len=MAX_MESSAGE_BYTES)
    except ProtocolError:
        raise
    except Exception as err:  # msgpack raises many types (ExtraData, FormatError, ValueError, ...)
        raise ProtocolError("BadMessage", f"not a msgpack message ({type(err).__name__}: {err})") from None
    if not isinstance(message, dict):
        raise ProtocolError("BadMessage", f"a message must be a msgpack map, got {type(message).__name__}")
    return message


def _request_id(message: dict):
    rid = message.get("id")
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or (isinstance(rid, str) and len(rid) > 128):
        return None
    if isinstance(rid, int) and not -(2**63) <= rid < 2**64:
        return None
    return rid


@dataclass
class Request:
    """A validated request: header fields and, for "enhance", the decoded frames."""

    request_id: object
    op: str
    frames: list  # of dicts: camera str, rgb, depth, alpha, (reference, reference_valid) as numpy arrays
    deadline_ms: float | None = None
    shm: dict | None = None  # {"block", "bytes", "nonce"}: the frames' arrays are ShmRefs, plus "reply_offset"


def parse_request(data: bytes) -> Request:
    """Validate a request message; raises ProtocolError naming the problem (with the id when it was readable)."""
    message = unpack(data)
    rid = _request_id(message)
    version = message.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # (True and 1.0 equal 1 in Python)
        raise ProtocolError("VersionMismatch", f"client speaks protocol version {version!r}, this server speaks "
                                               f"{PROTOCOL_VERSION}", rid)
    if rid is None:
        raise ProtocolError("BadRequest", f"request id must be a str (<= 128 chars) or an int, got "
                                          f"{type(message.get('id')).__name__}")
    op = message.get("op")
    if op not in OPS:
        raise ProtocolError("BadRequest", f"unknown op {op!r} (ops: {', '.join(OPS)})", rid)
    deadline = message.get("deadline_ms")
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float))
                                 or not 0 < deadline <= 3_600_000):
        raise ProtocolError("BadRequest", f"deadline_ms must be a number in (0, 3600000], got {deadline!r}", rid)
    if op != "enhance":
        return Request(rid, op, [], deadline)
    frames = message.get("frames")
    if not isinstance(frames, list) or not frames:
        raise ProtocolError("BadRequest", "enhance needs a non-empty list 'frames'", rid)
    if len(frames) > MAX_FRAMES:
        raise ProtocolError("LimitExceeded", f"{len(frames)} frames in one request; at most {MAX_FRAMES}", rid)
    shm = _parse_shm_header(message["shm"], rid) if "shm" in message else None
    block_bytes = None if shm is None else shm["bytes"]
    return Request(rid, op, [_parse_frame(f, i, rid, block_bytes) for i, f in enumerate(frames)], deadline, shm)


def _parse_shm_header(shm, rid) -> dict:
    if not isinstance(shm, dict) or set(shm) != {"block", "bytes", "nonce"}:
        raise ProtocolError("BadRequest", "shm must be a map {block, bytes, nonce}", rid)
    block, size, nonce = shm["block"], shm["bytes"], shm["nonce"]
    if not isinstance(block, str) or not SHM_BLOCK_NAME.fullmatch(block):
        raise ProtocolError("SharedMemoryError", f"shm block name {block!r} is not a block name "
                                                 f"(blk-<pid>-<hex>)", rid)
    if isinstance(size, bool) or not isinstance(size, int) or not SHM_HEADER_BYTES < size <= MAX_SHM_BYTES:
        raise ProtocolError("BadRequest", f"shm bytes must be an int in ({SHM_HEADER_BYTES}, {MAX_SHM_BYTES}], "
                                          f"got {size!r}", rid)
    if not isinstance(nonce, str) or not 0 < len(nonce) <= 64:
        raise ProtocolError("BadRequest", "shm nonce must be a non-empty string", rid)
    return {"block": block, "bytes": size, "nonce": nonce}


def _parse_frame(frame, index: int, rid, block_bytes: int | None = None) -> dict:
    """A frame's camera and arrays (numpy arrays, or ShmRefs when `block_bytes` is the shared block's size)."""
    where = f"frames[{index}]"
    if not isinstance(frame, dict):
        raise ProtocolError("BadRequest", f"{where} must be a map, got {type(frame).__name__}", rid)
    unknown = set(frame) - set(FRAME_FIELDS) - {"camera"} - ({"reply_offset"} if block_bytes is not None else set())
    if unknown:
        raise ProtocolError("BadRequest", f"{where}: unknown fields {sorted(map(str, unknown))}", rid)
    camera = frame.get("camera")
    if not isinstance(camera, str) or not 0 < len(camera) <= 128:
        raise ProtocolError("BadRequest", f"{where}: camera must be a non-empty string (<= 128 chars)", rid)
    out = {"camera": camera}
    size = None
    for name, (trailing, dtypes, required) in FRAME_FIELDS.items():
        if name not in frame:
            if required:
                raise ProtocolError("BadRequest", f"{where} ({camera}): missing {name}", rid)
            continue
        try:
            if block_bytes is None:
                array = decode_array(frame[name], f"{where}.{name}")
            else:
                array = decode_shm_ref(frame[name], f"{where}.{name}", block_bytes)
        except ProtocolError as err:
            raise ProtocolError(err.error_type, err.message, rid) from None
        dtype_name = array.dtype if isinstance(array, ShmRef) else array.dtype.name
        if dtype_name not in dtypes:
            raise ProtocolError("BadRequest", f"{where}.{name}: dtype {dtype_name} not allowed here "
                                              f"(allowed: {', '.join(dtypes)})", rid)
        if array.ndim != 2 + len(trailing) or tuple(array.shape[2:]) != trailing:
            raise ProtocolError("BadRequest", f"{where}.{name}: shape {list(array.shape)} is not [H, W"
                                              f"{''.join(f', {t}' for t in trailing)}]", rid)
        h, w = array.shape[:2]
        if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
            raise ProtocolError("LimitExceeded", f"{where}.{name}: {h}x{w} pixels; sides must be 1..{MAX_SIDE}", rid)
        if size is None:
            size = (h, w)
        elif (h, w) != size:
            raise ProtocolError("BadRequest", f"{where}.{name}: {h}x{w} differs from rgb's {size[0]}x{size[1]}", rid)
        if not isinstance(array, ShmRef) and not _all_finite_reference(array):  # the broker: no numba here
            raise ProtocolError("BadRequest", f"{where}.{name}: contains NaN or inf", rid)
        out[name] = array
    if ("reference" in out) != ("reference_valid" in out):
        raise ProtocolError("BadRequest", f"{where}: reference and reference_valid come together", rid)
    if block_bytes is not None:
        rgb = out["rgb"]
        try:
            out["reply_offset"] = _ref_in_block(rgb.dtype, rgb.shape, frame.get("reply_offset"),
                                                f"{where}.reply_offset", block_bytes)
        except ProtocolError as err:
            raise ProtocolError(err.error_type, err.message, rid) from None
    return out


def all_finite(array: np.ndarray) -> bool:
    """No NaN or inf in a float array (by the exponent bits: one pass, no boolean temporary); True for ints.
    float32 (the zero-copy frames of `EnhancerClient.frame_buffers`) goes through a compiled pass, for a worker
    reading a shared block; the numpy twin `_all_finite_reference` serves the broker, which never imports numba."""
    if array.dtype.kind != "f":
        return True
    if array.dtype == np.float32 and array.size and array.flags.c_contiguous:
        from neural_sensor.enhance._codec_kernels import largest_magnitude_bits

        return int(largest_magnitude_bits(array.reshape(-1).view(np.uint32))) < 0x7F80_0000
    return _all_finite_reference(array)


def _all_finite_reference(array: np.ndarray) -> bool:
    """The numpy twin of `all_finite` (any float width): what the broker checks with, and the tests' reference."""
    if array.dtype.kind != "f":
        return True
    bits = {2: (np.uint16, 0x7FFF, 0x7C00), 4: (np.uint32, 0x7FFF_FFFF, 0x7F80_0000)}.get(array.dtype.itemsize)
    if bits is None or not array.size:
        return bool(np.isfinite(array).all())
    kind, mask, exponent = bits
    flat = np.ascontiguousarray(array).view(kind)
    return int(np.bitwise_and(flat, kind(mask)).max()) < exponent


def read_shm_frames(request: Request, buffer) -> list[dict]:
    """The request's frames with their ShmRefs resolved to views into `buffer` (the mapped block, already checked
    by check_shm_block); BadRequest on NaN / inf, as for bytes."""
    frames = []
    for index, frame in enumerate(request.frames):
        out = {"camera": frame["camera"], "reply_offset": frame["reply_offset"]}
        for name in FRAME_FIELDS:
            if name in frame:
                array = frame[name].view(buffer)
                if not all_finite(array):
                    raise ProtocolError("BadRequest", f"frames[{index}].{name}: contains NaN or inf",
                                        request.request_id)
                out[name] = array
        frames.append(out)
    return frames


def shm_block_header(nonce: str) -> bytes:
    """The SHM_HEADER_BYTES a block of the server with this nonce starts with."""
    head = SHM_MAGIC + nonce.encode("ascii")
    assert len(head) <= SHM_HEADER_BYTES, len(head)
    return head.ljust(SHM_HEADER_BYTES, b"\0")


def check_shm_block(buffer, block: str, nonce: str, block_bytes: int, request_id=None) -> None:
    """SharedMemoryError unless `buffer` (the mapped block) is at least `block_bytes` long and was made for the
    server with this nonce."""
    if len(buffer) < block_bytes:
        raise ProtocolError("SharedMemoryError", f"shm block {block} is {len(buffer)} bytes; the request says "
                                                 f"{block_bytes}", request_id)
    if bytes(buffer[:SHM_HEADER_BYTES]) != shm_block_header(nonce):
        raise ProtocolError("SharedMemoryError", f"shm block {block} is not a block of this server (foreign "
                                                 f"header)", request_id)


_WIRE_BYTES_PER_PIXEL = {  # (without, with) a reference: rgb + depth + alpha (+ reference + its mask)
    "uint8": (3 + 2 + 1, 3 + 2 + 1 + 3 + 1), "float32": (12 + 4 + 4, 12 + 4 + 4 + 12 + 1)}


class RequestTooLarge(ValueError):
    """`check_request_size`'s error: a tick's request would be over the protocol's size."""


def check_request_size(sizes_wh, reference: bool, wire_dtype: str = "uint8", what: str = "the rig") -> None:
    """RequestTooLarge (a ValueError) where one enhance request with a frame of each (width, height) in `sizes_wh` would hold more
    than MAX_FRAMES frames or more array bytes than MAX_MESSAGE_BYTES (every tick of such a rig went raw, the run passing without a word): said
    with the largest size of that aspect that fits. `reference`: the frames carry the drive log's reference."""
    assert wire_dtype in _WIRE_BYTES_PER_PIXEL, wire_dtype
    per_px = _WIRE_BYTES_PER_PIXEL[wire_dtype][bool(reference)]
    sizes = [(int(w), int(h)) for w, h in sizes_wh]
    if len(sizes) > MAX_FRAMES:  # (the bridge took a 17th camera, then failed every tick of all of them)
        raise RequestTooLarge(f"{what}: {len(sizes)} cameras; an enhancer request carries at most {MAX_FRAMES} (every "
                              "camera of a tick goes in one request): fewer cameras, or no enhancer")
    total = per_px * sum(w * h for w, h in sizes)
    room = MAX_MESSAGE_BYTES - (64 << 10)  # (the message's header and msgpack's framing: a few kB)
    if total <= room:
        return
    w, h = max(sizes, key=lambda s: s[0] * s[1])
    scale = math.sqrt(room / total)
    fit_w, fit_h = int(w * scale), int(h * scale)
    raise RequestTooLarge(f"{what}: {len(sizes)} camera(s) up to {w}x{h} make an enhancer request of {total / 1e6:.0f} MB "
                     f"a tick ({per_px} bytes a pixel{' with the drive log reference' if reference else ''}), over the "
                     f"protocol's {MAX_MESSAGE_BYTES / 1e6:.0f} MB: every tick would go unrefined. Smaller cameras "
                     f"(about {fit_w}x{fit_h} at most), fewer of them, or no enhancer")


def make_request(op: str, request_id, frames: list[dict] | None = None, deadline_ms: float | None = None) -> bytes:
    """A request message; `frames` are dicts of camera + numpy arrays (encoded here)."""
    message = {"v": PROTOCOL_VERSION, "id": request_id, "op": op}
    if deadline_ms is not None:
        message["deadline_ms"] = float(deadline_ms)
    if frames is not None:
        message["frames"] = [{k: (v if k == "camera" else encode_array(v)) for k, v in f.items()} for f in frames]
    return pack(message)


def ok_reply(request_id, **fields) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "id": request_id, "ok": True, **fields})


def error_reply(request_id, error_type: str, message: str) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "id": request_id, "ok": False,
                 "error": {"type": error_type, "message": message}})


def parse_reply(data: bytes) -> dict:
    """A reply map with "ok"; enhance replies get their frames' rgb decoded. ProtocolError if malformed."""
    message = unpack(data)
    if not isinstance(message.get("ok"), bool):
        raise ProtocolError("BadMessage", "reply has no boolean 'ok'")
    if not message["ok"]:
        error = message.get("error")
        if not isinstance(error, dict) or not isinstance(error.get("type"), str):
            raise ProtocolError("BadMessage", "error reply without {type, message}")
        return message
    if "frames" in message:
        frames = message["frames"]
        if not isinstance(frames, list):
            raise ProtocolError("BadMessage", "reply frames must be a list")
        message["frames"] = [{"camera": f.get("camera"), "rgb": _decode_reply_rgb(f.get("rgb"))}
                             if isinstance(f, dict) else None for f in frames]
        if any(f is None or f["rgb"].ndim != 3 for f in message["frames"]):
            raise ProtocolError("BadMessage", "reply frames must be maps with rgb [H, W, 3]")
    return message


def _decode_reply_rgb(obj):
    """A reply's rgb: an array from its bytes, or a ShmRef (where in the client's block the worker wrote it)."""
    if isinstance(obj, dict) and obj.get("__shm__") is True:
        dtype, shape = _check_header(obj, "reply rgb", "__shm__", {"__shm__", "dtype", "shape", "offset"})
        offset = obj.get("offset")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < SHM_HEADER_BYTES:
            raise ProtocolError("BadMessage", f"reply rgb: bad shm offset {offset!r}")
        return ShmRef(dtype, tuple(shape), offset)
    return decode_array(obj, "reply rgb")


# ------------------------------------------------------------------ image codecs
_CHUNK = 1 << 16  # elements per pass of the uint8 conversion: the float temporary (256 KiB) stays in the cache
_TORCH_GRAIN = 1 << 15  # torch runs a copy of fewer elements on one thread


def warm_codecs() -> None:
    """Compile (or load from numba's cache) the compiled codecs now, so a process's first request does not pay
    for it against its deadline (a worker before it says READY, a client when it is made)."""
    to_uint8_into(np.zeros(4, np.float32), np.empty(4, np.uint8))
    to_float(np.zeros(4, np.uint8))
    all_finite(np.zeros(4, np.float32))
    readonly = np.zeros(4, np.float32)
    readonly.flags.writeable = False
    all_finite(readonly)  # numba compiles read-only arrays (a block mapped read-only, bytes) as another signature


def to_float(array: np.ndarray) -> np.ndarray:
    """float32 image: uint8 / 255, floats as they are, bool as 0/1."""
    if array.dtype == np.uint8:
        return _float_into(array, np.empty(array.shape, np.float32))
    return array.astype(np.float32)


def float_into(array: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`to_float(array)` written into `out` (float32, C-contiguous, array's shape); returns out."""
    assert out.dtype == np.float32 and out.shape == array.shape and out.flags.c_contiguous, (out.dtype, out.shape)
    if array.dtype == np.uint8:
        return _float_into(array, out)
    np.copyto(out, array, casting="unsafe")
    return out


def _float_into(array: np.ndarray, out: np.ndarray) -> np.ndarray:
    from neural_sensor.enhance._codec_kernels import float_from_uint8

    float_from_uint8(np.ascontiguousarray(array).reshape(-1), out.reshape(-1))
    return out


def _to_float_reference(array: np.ndarray) -> np.ndarray:
    """The numpy twin of `to_float` for uint8 (tests)."""
    return np.divide(array, np.float32(255.0), dtype=np.float32)


def _to_float16_reference(array: np.ndarray) -> np.ndarray:
    """The numpy twin of `to_float16_into` (tests)."""
    array = np.asarray(array, dtype=np.float32)
    return np.where(np.isfinite(array), np.clip(array, -FLOAT16_MAX, FLOAT16_MAX), array).astype(np.float16)


class NaNImageError(ValueError):
    """A float image with NaN sent on the uint8 wire, which cannot carry it (the float wire's server refuses NaN as
    a BadRequest; this says the same on the client before anything is sent)."""


def to_uint8_into(image: np.ndarray, out: np.ndarray, allow_nan: bool = False) -> np.ndarray:
    """`out` (uint8, the shape of `image`) = clip(image * 255, 0, 255) rounded half up; image in [0, 1]. A NaN
    becomes 0, and raises NaNImageError (after `out` is written) unless allow_nan (a picture for a person)."""
    assert out.dtype == np.uint8 and out.shape == image.shape, (out.dtype, out.shape, image.shape)
    if image.dtype.kind != "f":
        return _to_uint8_reference(image, out)
    from neural_sensor.enhance._codec_kernels import uint8_from_float

    if uint8_from_float(np.ascontiguousarray(image).reshape(-1), out.reshape(-1)) and not allow_nan:
        raise NaNImageError("contains NaN (the uint8 wire cannot carry it)")  # (out.reshape: a view)
    return out


def _to_uint8_reference(image: np.ndarray, out: np.ndarray, allow_nan: bool = False) -> np.ndarray:
    """The numpy twin of `to_uint8_into` (chunked so the float temporary stays in the cache)."""
    flat_in = np.ascontiguousarray(image).reshape(-1)
    flat_out = out.reshape(-1)
    scratch = np.empty(min(_CHUNK, flat_in.size), np.float32)
    nan = False
    for start in range(0, flat_in.size, _CHUNK):
        stop = min(flat_in.size, start + _CHUNK)
        part = scratch[:stop - start]
        np.multiply(flat_in[start:stop], np.float32(255.0), out=part, dtype=np.float32)
        if image.dtype.kind == "f" and np.isnan(part).any():
            nan = True
            np.nan_to_num(part, copy=False, nan=0.0)
        np.clip(part, 0.0, 255.0, out=part)
        part += np.float32(0.5)  # round half up, then truncate
        flat_out[start:stop] = part
    if nan and not allow_nan:
        raise NaNImageError("contains NaN (the uint8 wire cannot carry it)")
    return out


def to_float16_into(array: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`out` (float16, the shape of `array`) = array rounded to float16 (IEEE round to nearest even, as numpy's
    astype; torch's vectorised cast is about 20x faster than numpy's), finite values beyond float16's range held at
    +-FLOAT16_MAX (a depth of 65520 m or more had become inf, and the server refused the whole tick as "NaN or
    inf"); an inf or NaN stays one (the server names it)."""
    assert out.dtype == np.float16 and out.shape == np.shape(array), (out.dtype, out.shape, np.shape(array))
    array = np.ascontiguousarray(array, dtype=np.float32)
    _torch_copy(array, out)
    inf = out.view(np.uint16) & 0x7FFF == 0x7C00  # (~0.1 ms a tick)
    if inf.any():  # only those values fixed (a whole-frame clamp on torch's threads cost ~9 ms a tick on 2 cores)
        given = array[inf]
        out[inf] = np.where(np.isinf(given), given, np.sign(given) * np.float32(FLOAT16_MAX))
    return out


def _torch_copy(array: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`out` = array cast to out's dtype by torch (float32 <-> float16), in pieces that each run on one thread."""
    import torch

    source = torch.from_numpy(np.ascontiguousarray(array).reshape(-1))
    target = torch.from_numpy(out.reshape(-1))
    # pieces under torch's parallel grain (32768): one thread each, no waiting on cores busy with other work
    for start in range(0, source.numel(), _TORCH_GRAIN):
        target[start:start + _TORCH_GRAIN].copy_(source[start:start + _TORCH_GRAIN])
    return out


def like(rgb: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float rgb in [0, 1] to `dtype` (uint8 rounds)."""
    if dtype == np.uint8:
        return to_uint8_into(rgb, np.empty(np.shape(rgb), np.uint8))
    return rgb.astype(dtype)
