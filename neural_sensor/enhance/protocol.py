"""Enhancer wire protocol: msgpack messages over ZeroMQ, versioned, validated, no pickle.

Every message is ONE msgpack map (one ZeroMQ frame after the envelope).

Request:  {"v": PROTOCOL_VERSION, "id": <str or int>, "op": "hello" | "enhance" | "stats", ...}
  enhance: "frames": [frame, ...] (1..MAX_FRAMES, every camera of a tick in one request),
           optional "deadline_ms": the client's budget (the server drops requests older than it)
  frame:   {"camera": str, "rgb": [H,W,3], "depth": [H,W], "alpha": [H,W],
            optional "reference": [H,W,3] + "reference_valid": [H,W]}
Reply:    {"v": PROTOCOL_VERSION, "id": <the request's id>, "ok": true, ...}
          {"v": PROTOCOL_VERSION, "id": <id or null>, "ok": false, "error": {"type": str, "message": str}}
  hello:   protocol_version, server_version, model_name, checkpoint_hash, workers, workers_ready,
           max_frames, max_message_bytes
  enhance: "frames": [{"camera": str, "rgb": [H,W,3] in the request's rgb dtype}], "model_ms" (the model
           alone), "worker_ms" (the worker's decode + model + encode) for the batch the request ran in
  stats:   requests, errors, enhance_requests, jobs (worker dispatches; < enhance_requests when batched),
           frames_enhanced, worker_restarts, p50_ms, p99_ms, workers, workers_ready, queued, uptime_s

Arrays are maps {"__ndarray__": true, "dtype": str, "shape": [int, ...], "data": bytes (C order,
little endian)}. Allowed per field (anything else is refused with a named error):
  rgb, reference   [H,W,3]  uint8 (0..255) | float16 | float32 (0..1)
  depth            [H,W]    float16 | float32 (metres, 0 = nothing hit)
  alpha            [H,W]    uint8 (0..255) | float16 | float32 (0..1)
  reference_valid  [H,W]    bool | uint8
with 1 <= H, W <= MAX_SIDE. Messages over MAX_MESSAGE_BYTES are refused before parsing.
Error types: BadMessage, VersionMismatch, BadRequest, LimitExceeded, WorkerError, DeadlineExceeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 << 20
MAX_FRAMES = 16
MAX_SIDE = 4096
OPS = ("hello", "enhance", "stats")

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
    if not isinstance(obj, dict) or obj.get("__ndarray__") is not True:
        raise ProtocolError("BadRequest", f"{field}: expected an ndarray map, got {type(obj).__name__}")
    extra = set(obj) - {"__ndarray__", "dtype", "shape", "data"}
    if extra:
        raise ProtocolError("BadRequest", f"{field}: unknown ndarray keys {sorted(map(str, extra))}")
    dtype, shape, data = obj.get("dtype"), obj.get("shape"), obj.get("data")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise ProtocolError("BadRequest", f"{field}: dtype {dtype!r} is not allowed (allowed: {sorted(_DTYPES)})")
    if (not isinstance(shape, list) or len(shape) > 4
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)):
        raise ProtocolError("BadRequest", f"{field}: shape must be a list of at most 4 positive ints, got {shape!r}")
    if max(shape, default=0) > MAX_SIDE:
        raise ProtocolError("LimitExceeded", f"{field}: shape {shape} has a side over {MAX_SIDE}")
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


def parse_request(data: bytes) -> Request:
    """Validate a request message; raises ProtocolError naming the problem (with the id when it was readable)."""
    message = unpack(data)
    rid = _request_id(message)
    version = message.get("v")
    if version != PROTOCOL_VERSION:
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
    return Request(rid, op, [_parse_frame(f, i, rid) for i, f in enumerate(frames)], deadline)


def _parse_frame(frame, index: int, rid) -> dict:
    where = f"frames[{index}]"
    if not isinstance(frame, dict):
        raise ProtocolError("BadRequest", f"{where} must be a map, got {type(frame).__name__}", rid)
    unknown = set(frame) - set(FRAME_FIELDS) - {"camera"}
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
            array = decode_array(frame[name], f"{where}.{name}")
        except ProtocolError as err:
            raise ProtocolError(err.error_type, err.message, rid) from None
        if array.dtype.name not in dtypes:
            raise ProtocolError("BadRequest", f"{where}.{name}: dtype {array.dtype.name} not allowed here "
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
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ProtocolError("BadRequest", f"{where}.{name}: contains NaN or inf", rid)
        out[name] = array
    if ("reference" in out) != ("reference_valid" in out):
        raise ProtocolError("BadRequest", f"{where}: reference and reference_valid come together", rid)
    return out


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
        message["frames"] = [{"camera": f.get("camera"), "rgb": decode_array(f.get("rgb"), "reply rgb")}
                             if isinstance(f, dict) else None for f in frames]
        if any(f is None or f["rgb"].ndim != 3 for f in message["frames"]):
            raise ProtocolError("BadMessage", "reply frames must be maps with rgb [H, W, 3]")
    return message


# ------------------------------------------------------------------ image codecs
def to_float(array: np.ndarray) -> np.ndarray:
    """float32 image: uint8 / 255, floats as they are, bool as 0/1."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return array.astype(np.float32)


def like(rgb: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float rgb in [0, 1] to `dtype` (uint8 rounds)."""
    if dtype == np.uint8:
        scaled = np.multiply(rgb, np.float32(255.0), dtype=np.float32)  # one temporary, then in place
        np.clip(scaled, 0.0, 255.0, out=scaled)
        scaled += np.float32(0.5)  # round half up, then truncate
        return scaled.astype(np.uint8)
    return rgb.astype(dtype)
