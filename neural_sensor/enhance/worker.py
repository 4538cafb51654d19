"""The enhancer's worker process: it loads the model, takes batched jobs from the broker (server.py) and direct
requests from same-host clients (direct.py), and answers each, reading shared-memory requests in place.

The broker spawns `worker_main` per worker; every request reaches it already validated, and every job is
answered (a bad block or a model error becomes an error reply; the worker keeps serving). `_run_jobs` runs the
frames of one size (and reference use) across the jobs it holds as one model batch.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import zmq

from neural_sensor.enhance import protocol as wire
from neural_sensor.enhance.direct import DirectSockets, batches


def worker_main(backend: str, checkpoint: str, index: int, threads: int, shm_folder: str | None = None,
                 nonce: str = "", max_batch_frames: int = wire.MAX_FRAMES, precision: str = "float32",
                 broker_folder: str | None = None) -> None:
    """A worker: load the model (its CPU arithmetic `precision`, as `Enhancer.set_cpu_precision` takes it), say
    READY, then answer JOBs (and direct requests) until the broker goes away. broker_folder: the broker's own
    temporary folder (its workers' socket), removed when the broker dies without doing it (a SIGKILL)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the broker stops us; first, so that a Ctrl-C at the terminal
    #   while torch imports (~1.5 s) does not print this worker's traceback
    import torch

    from neural_sensor.enhance.model import Enhancer, checkpoint_hash

    torch.set_num_threads(max(1, threads))
    model = Enhancer.from_pretrained(checkpoint)
    model.set_cpu_precision(precision)
    served = checkpoint_hash(checkpoint)  # in every reply: a client tells a model swapped in under it (a restart)
    try:
        model.warm_up()
    except Exception as err:  # noqa: BLE001 - only a warm-up (a user's model may not take its tiniest frame)
        print(f"enhancer worker {index}: warm-up failed ({type(err).__name__}: {err}); serving anyway", flush=True)
    wire.warm_codecs()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, f"w{index}-{os.getpid()}".encode())
    sock.connect(backend)
    direct = DirectSockets(shm_folder, index)
    sock.send_multipart([b"READY", (direct.name or "").encode()])
    blocks = _BlockCache(shm_folder, nonce)
    parent = os.getppid()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    direct.register(poller)
    next_parent_check = time.monotonic() + 1.0
    while True:
        events = dict(poller.poll(1000))
        now = time.monotonic()
        if now >= next_parent_check:  # on a timer: a worker busy with direct clients must notice too
            next_parent_check = now + 1.0
            if os.getppid() != parent:  # the broker died: do not linger as an orphan, nor leave its blocks
                blocks.close()
                direct.close()
                for folder in (shm_folder, broker_folder):
                    if folder:
                        shutil.rmtree(folder, ignore_errors=True)
                return
        if sock in events:
            parts = sock.recv_multipart(copy=False)
            if parts[0].bytes == b"JOB":
                jobs = [(parts[i].bytes, parts[i + 1].buffer) for i in range(1, len(parts) - 1, 2)]
                out = [b"DONE"]
                for key, ok, reply in _run_jobs(model, jobs, blocks, served):
                    out += [key, b"1" if ok else b"0", reply]
                sock.send_multipart(out)
        # the direct requests that arrived together run as batches of at most max_batch_frames, as the broker's
        for batch in batches(direct.receive(events), max_batch_frames):
            start = time.perf_counter()
            replies = _run_jobs(model, [(key, payload) for key, payload, _ in batch], blocks, served)
            for key, _, reply in replies:
                direct.send(key, reply)
            report = {"requests": len(replies), "errors": sum(not ok for _, ok, _ in replies),
                      "frames": sum(n for _, _, n in batch),
                      "ms": round((time.perf_counter() - start) * 1000.0, 3)}
            _report(sock, report)
        if direct.refused:
            _report(sock, {"requests": direct.refused, "errors": direct.refused, "frames": 0, "ms": None})
            direct.refused = 0


def _report(sock, report: dict) -> None:
    """Tell the broker what the direct path served (its stats); dropped rather than block if the broker is gone."""
    try:
        sock.send_multipart([b"DIRECT", json.dumps(report).encode()], flags=zmq.NOBLOCK)
    except zmq.Again:
        pass


class _BlockCache:
    """A worker's mappings of client blocks, by name; a block replaced or removed since is mapped afresh."""

    MAX_BLOCKS = 16

    def __init__(self, folder: str | None, nonce: str):
        self.folder = Path(folder) if folder else None
        self.nonce = nonce
        self._maps: dict[str, tuple[int, mmap.mmap]] = {}  # name -> (inode, mapping)

    def get(self, shm: dict, request_id) -> mmap.mmap:
        """The mapped block a request's "shm" header names, checked (wire.check_shm_block); SharedMemoryError for
        a server without shared memory and for a missing, too small or foreign block."""
        name = shm["block"]
        if self.folder is None or shm["nonce"] != self.nonce:
            raise wire.ProtocolError("SharedMemoryError", "this server offers no shared memory to that nonce",
                                     request_id)
        try:
            inode = os.stat(self.folder / name).st_ino
        except OSError:
            self._drop(name)
            raise wire.ProtocolError("SharedMemoryError", f"shm block {name} does not exist (removed?)",
                                     request_id) from None
        cached = self._maps.get(name)
        if cached is None or cached[0] != inode or len(cached[1]) < shm["bytes"]:
            self._drop(name)
            try:
                fd = os.open(self.folder / name, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
            except OSError as err:
                raise wire.ProtocolError("SharedMemoryError", f"shm block {name} cannot be opened ({err.strerror})",
                                         request_id) from None
            try:
                size = os.fstat(fd).st_size
                if size < shm["bytes"]:
                    raise wire.ProtocolError("SharedMemoryError", f"shm block {name} is {size} bytes; the request "
                                                                  f"says {shm['bytes']}", request_id)
                mapping = mmap.mmap(fd, size)
            finally:
                os.close(fd)
            if len(self._maps) >= self.MAX_BLOCKS:
                self._drop(next(iter(self._maps)))
            self._maps[name] = (inode, mapping)
        mapping = self._maps[name][1]
        try:
            wire.check_shm_block(mapping, name, self.nonce, shm["bytes"], request_id)
        except wire.ProtocolError:
            self._drop(name)
            raise
        return mapping

    def sweep(self) -> None:
        """Unmap blocks whose file is gone or was replaced (their clients closed)."""
        for name, (inode, _) in list(self._maps.items()):
            try:
                if os.stat(self.folder / name).st_ino == inode:
                    continue
            except OSError:
                pass
            self._drop(name)

    def _drop(self, name: str) -> None:
        entry = self._maps.pop(name, None)
        if entry is not None:
            try:
                entry[1].close()
            except BufferError:  # a view of it is still alive: the mapping goes with it
                pass

    def close(self) -> None:
        for name in list(self._maps):
            self._drop(name)


def _run_jobs(model, jobs: list[tuple[bytes, object]], blocks: _BlockCache | None = None,
              served_hash: str | None = None) -> list[tuple[bytes, bool, bytes]]:
    """(key, ok, reply) per job; frames of one size (and reference use) across jobs run as one batch. Requests
    with a "shm" header are read from and answered into their client's block (`blocks`). served_hash: the
    checkpoint's hash, put in every enhance reply ("checkpoint_hash")."""
    t_job = time.perf_counter()
    requests, replies, mapped = {}, [], {}
    if blocks is not None:
        blocks.sweep()
    targets: dict[tuple[bytes, int], np.ndarray] = {}
    for key, payload in jobs:
        try:
            req = wire.parse_request(payload)
            in_place = False
            if req.shm is not None:
                if blocks is None:
                    raise wire.ProtocolError("SharedMemoryError", "this worker has no shared memory", req.request_id)
                mapped[key] = blocks.get(req.shm, req.request_id)
                in_place = _apart(req.frames)
                req.frames = wire.read_shm_frames(req, mapped[key])
            for i, f in enumerate(req.frames):
                targets[(key, i)] = _reply_target(f, mapped.get(key) if in_place else None)
            requests[key] = req
        except wire.ProtocolError as err:  # a bad block, or (for bytes) a broker bug: the broker validated it
            replies.append((key, False, wire.error_reply(err.request_id, err.error_type, err.message)))
        except Exception as err:  # noqa: BLE001 - never lose a request: answer it
            replies.append((key, False, wire.error_reply(None, "BadRequest", f"{type(err).__name__}: {err}")))
    groups: dict[tuple, list[tuple[bytes, int]]] = {}
    for key, req in requests.items():
        for i, f in enumerate(req.frames):
            groups.setdefault((f["rgb"].shape, "reference" in f), []).append((key, i))
    failed: dict[bytes, str] = {}
    start = time.perf_counter()
    for (_, with_ref), members in groups.items():
        frames = [requests[k].frames[i] for k, i in members]
        try:  # the frames as they arrived (views into the block for shm): uint8 is decoded inside the model's pass
            model.enhance([f["rgb"] for f in frames], [f["depth"] for f in frames], [f["alpha"] for f in frames],
                          [f["reference"] for f in frames] if with_ref else None,
                          [f["reference_valid"] for f in frames] if with_ref else None,
                          out=[targets[m] for m in members])
        except Exception as err:  # noqa: BLE001 - reported to the client, the worker keeps serving
            for k, _ in members:
                failed[k] = f"{type(err).__name__}: {err}"
            continue
        for k, i in members:  # a float frame far outside [0, 1] (1e30) came back all NaN, answered as a success
            if targets[(k, i)].dtype != np.uint8 and not wire.all_finite(targets[(k, i)]):
                failed.setdefault(k, f"frames[{i}]: the model's output is not finite: an input far outside its range "
                                     "(rgb, alpha and reference are floats in [0, 1], depth in metres)")
    model_ms = (time.perf_counter() - start) * 1000.0
    encoded = {}
    for key, req in requests.items():
        if key in failed:
            continue
        try:
            encoded[key] = [_encode_result(targets[(key, i)], f, mapped.get(key)) for i, f in enumerate(req.frames)]
        except Exception as err:  # noqa: BLE001 - e.g. the block went away mid-request: answer, keep serving
            failed[key] = f"{type(err).__name__}: {err}"
        for f in req.frames:  # drop the views into the block before it may be unmapped
            f.clear()
    targets.clear()
    worker_ms = (time.perf_counter() - t_job) * 1000.0  # decode + model + encode, before packing
    extra = {} if served_hash is None else {"checkpoint_hash": served_hash}
    for key, req in requests.items():
        if key in failed:
            replies.append((key, False, wire.error_reply(req.request_id, "WorkerError", failed[key])))
            continue
        replies.append((key, True, wire.ok_reply(req.request_id, frames=encoded[key], model_ms=round(model_ms, 3),
                                                 worker_ms=round(worker_ms, 3), **extra)))
    return replies


def _apart(frames: list) -> bool:
    """True when no two arrays of a shared-memory request (its frames' inputs and reply slots, ShmRefs) overlap in
    the block: then the model may write a reply into its slot while it still reads other frames' inputs. Our
    client lays them out apart; a request that overlaps them is answered from copies, as before."""
    spans = sorted((ref.offset, ref.offset + ref.nbytes) for f in frames
                   for ref in [f[name] for name in wire.FRAME_FIELDS if name in f] + [f["reply_offset"]])
    return all(start >= end for (_, end), (start, _) in zip(spans, spans[1:]))


def _reply_target(frame: dict, block) -> np.ndarray:
    """Where the model writes a frame's refined rgb [H, W, 3]: its reply slot in the client's block (block: None
    unless the request's arrays lie apart, `_apart`) when the request's rgb dtype is uint8 or float32 (the model
    writes those directly), else an array of its own (uint8, or float32 for float16 requests)."""
    dtype = frame["rgb"].dtype
    if block is not None and dtype in (np.uint8, np.float32):
        return frame["reply_offset"].view(block)
    return np.empty(frame["rgb"].shape, dtype if dtype == np.uint8 else np.float32)


def _encode_result(rgb: np.ndarray, frame: dict, block) -> dict:
    """A reply frame: the refined rgb [H, W, 3] (`_reply_target`) in the request's rgb dtype, as bytes or in the
    block (already there unless the request's rgb was float16)."""
    dtype = frame["rgb"].dtype
    if block is None:
        return {"camera": frame["camera"], "rgb": wire.encode_array(rgb if rgb.dtype == dtype else rgb.astype(dtype))}
    ref = frame["reply_offset"]
    target = ref.view(block)
    if not np.may_share_memory(target, rgb):  # the reply slot itself, or a separate float32 array
        np.copyto(target, rgb, casting="same_kind")
    return {"camera": frame["camera"], "rgb": ref.encode()}
