"""The client's side of the enhancer's shared memory: its block, what it lends, and how a request lies in it.

`SharedBlock` is a part of `EnhancerClient` (client.py, which describes the protocol side): one block per
client, a file in the server's shared-memory folder mapped here (`_block_for`, removed by `_release_block`);
`frame_buffers` lends float32 arrays inside it for the renderer (zero copy); `_shm_layout` places a tick's
frames in it, naming lent arrays where they lie and laying the rest out after them, and `_shm_request` writes
what is not there yet in the wire's dtypes (`convert`) and makes the header-only request.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import sys
import uuid
import weakref

import numpy as np

from neural_sensor.enhance import protocol as wire


def _remove_block(path: str, mapping: mmap.mmap) -> None:
    try:
        mapping.close()
    except BufferError:  # a view still holds it; the file goes anyway
        pass
    try:
        os.unlink(path)
    except OSError:
        pass


class SharedBlock:
    """The block half of EnhancerClient (a mixin: it reads the client's `_shm_offer` and `_wire_dtypes`)."""

    _shm_offer: dict | None

    def _init_block(self) -> None:
        self._block = None  # (path, size, mapping, finalizer) of this client's block
        self._block_address = 0  # where the block is mapped in this process
        self._lent_bytes = 0  # the block's bytes after its header that frame_buffers lent out (arrays lie after)
        self._lent_replies = (0, 0)  # [start, end) offsets of the lent "enhanced" arrays: reply slots as they lie
        self._said_no_room = False  # a shared folder without room for the block was said (`_say_no_room`)

    def _say_no_room(self, err: OSError, size: int) -> None:
        """Say once on stderr that the shared folder had no room for a block of `size` bytes (the ticks go over
        ZeroMQ's bytes then, ~3x slower: a container's 64 MB /dev/shm made this silent, a new user's finding)."""
        if self._said_no_room or getattr(err, "errno", None) != errno.ENOSPC:
            return
        self._said_no_room = True
        folder = os.path.dirname(self._shm_offer["folder"]) if self._shm_offer else "the shared folder"
        print(f"enhancer client: {folder} has no room for a {size / 1e6:.0f} MB shared block ({err.strerror}): "
              "the frames go over ZeroMQ instead, slower (a container's /dev/shm is 64 MB by default: docker run "
              "--shm-size=1g)", file=sys.stderr, flush=True)

    def _release_block(self) -> None:
        if self._block is not None:
            self._block[3]()  # the finalizer: unmap (unless a caller still holds a view) and remove the file
            self._block = None
            self._block_address = self._lent_bytes = 0
            self._lent_replies = (0, 0)

    def frame_buffers(self, count: int, height: int, width: int) -> dict[str, np.ndarray] | None:
        """Render targets inside this client's shared block, so that a tick's images reach the worker without a
        copy: {"rgb": [C, H, W, 3], "depth": [C, H, W], "alpha": [C, H, W]}, float32, uninitialised
        (`render(out=)` takes them), and "enhanced" [C, H, W, 3] float32 for enhance()'s `out`. Frames whose
        arrays are views of these travel as they lie, in float32 whatever wire_dtype says, their reply is float32,
        and an `out` in "enhanced" is where the worker writes it (no decode); other arrays are converted into the
        block as usual.

        None when the next tick would not go through shared memory (no hello yet, the bytes path): render into
        memory of your own then. The arrays are rewritten by the next call's tick and may be unmapped after a
        failed tick or close(): copy what you keep. After a failed tick "enhanced" may hold part of a reply (a
        model error, or a worker answering after the deadline): use it only when the tick is enhanced. The block
        is sized for a whole request of C such frames with a reference on the uint8 wire (uint8 rgb, bool mask);
        a larger request gets a new block with everything copied into it.
        """
        for name, value in (("count", count), ("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"frame_buffers: {name} must be a positive int, got {value!r}")
        if self.closed or self._shm_offer is None or count > wire.MAX_FRAMES:  # (closed: a block made now
            return None                                                          # would never be removed)
        pixels = height * width
        shapes = {"rgb": (count, height, width, 3), "depth": (count, height, width), "alpha": (count, height, width),
                  "enhanced": (count, height, width, 3)}
        lent = sum(_aligned(math.prod(shape) * 4) for shape in shapes.values())
        rest = count * (_aligned(pixels * 3) + _aligned(pixels))  # the reference and its mask (uint8, bool)
        self._lent_bytes, self._lent_replies = 0, (0, 0)  # the old loan ends here: a new block may replace it
        try:
            _, mapping = self._block_for(wire.SHM_HEADER_BYTES + lent + rest)
        except OSError as err:  # the folder is gone (the server stopped) or full: the tick renders into its own
            self._say_no_room(err, wire.SHM_HEADER_BYTES + lent + rest)  # memory
            return None
        buffers, offset = {}, wire.SHM_HEADER_BYTES
        for name, shape in shapes.items():
            buffers[name] = wire.ShmRef("float32", shape, offset).view(mapping)
            offset += _aligned(buffers[name].nbytes)
        self._lent_bytes = lent
        self._lent_replies = (offset - _aligned(buffers["enhanced"].nbytes), offset)
        return buffers

    def _block_for(self, size: int) -> tuple[str, mmap.mmap]:
        """(name, mapping) of this client's block, at least `size` bytes (a new block when it must grow)."""
        if self._block is not None and self._block[1] >= size:
            return os.path.basename(self._block[0]), self._block[2]
        self._release_block()
        size = max(size, 1 << 20)
        path = os.path.join(self._shm_offer["folder"], f"blk-{os.getpid()}-{uuid.uuid4().hex[:16]}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            if hasattr(os, "posix_fallocate"):  # a full /dev/shm is an OSError (the bytes path) here, not a SIGBUS later
                os.posix_fallocate(fd, 0, size)
            mapping = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        mapping[:wire.SHM_HEADER_BYTES] = wire.shm_block_header(self._shm_offer["nonce"])
        self._block = (path, size, mapping, weakref.finalize(self, _remove_block, path, mapping))
        probe = np.frombuffer(mapping, np.uint8, count=1)  # no lasting view: the mapping stays closable
        self._block_address = probe.ctypes.data
        del probe
        return os.path.basename(path), mapping

    def _shm_layout(self, frames: list[dict], out: list[np.ndarray] | None = None,
                    zero_copy: bool = True) -> tuple[list[dict], int, int]:
        """Per frame {field: ShmRef, "reply": ShmRef}, the block bytes they need, and the request's array bytes (in
        the wire's dtypes, as the byte path would send them).
        A float32 rgb / depth / alpha that already lies in the part of the block frame_buffers lent out is named
        where it lies (zero copy, `_lent_ref`), and so is a float32 rgb's reply when its `out` lies in the lent
        "enhanced" arrays; the rest is laid out after that part (or, when that would outgrow the block, the whole
        request after the header: the block is replaced and everything copied)."""
        layout, offset, data_bytes = [], wire.SHM_HEADER_BYTES + self._lent_bytes, 0
        for index, frame in enumerate(frames):
            refs = {}
            for name, dtype in self._wire_dtypes(frame).items():
                lent = self._lent_ref(frame[name], (wire.SHM_HEADER_BYTES, self._lent_replies[0])) \
                    if zero_copy and name in _LENDABLE else None
                wired = wire.ShmRef(dtype, tuple(np.shape(frame[name])), offset)
                data_bytes += wired.nbytes  # as on the byte path (its limit holds on every path)
                if lent is not None:
                    refs[name] = lent
                else:
                    refs[name] = wired
                    offset += _aligned(wired.nbytes)
            reply = self._lent_ref(out[index], self._lent_replies) \
                if zero_copy and out is not None and refs["rgb"].dtype == "float32" else None
            if reply is None:
                reply = wire.ShmRef(refs["rgb"].dtype, refs["rgb"].shape, offset)
                offset += _aligned(reply.nbytes)
            refs["reply"] = reply
            layout.append(refs)
        if self._lent_bytes and offset > self._block[1]:
            # a fresh block for a copy of everything: laid out in this one, the copies could land on lent arrays
            # before they are read (the lent views keep the old mapping alive until they go)
            self._release_block()
            return self._shm_layout(frames, out, zero_copy=False)
        return layout, offset, data_bytes

    def _lent_ref(self, array, span: tuple[int, int]) -> wire.ShmRef | None:
        """The ShmRef of `array` when it is a C-contiguous float32 array lying inside the lent part of the block
        at offsets [span[0], span[1])."""
        if not self._lent_bytes or not isinstance(array, np.ndarray) or array.dtype != np.float32 \
                or not array.flags.c_contiguous or not array.size:
            return None
        offset = array.ctypes.data - self._block_address
        if offset < span[0] or offset + array.nbytes > span[1]:
            return None
        return wire.ShmRef("float32", array.shape, offset)

    def _shm_request(self, frames: list[dict], layout: list[dict], block_bytes: int, request_id: str,
                     budget: float) -> bytes:
        """The header-only request for `frames`, whose arrays are written into the block here at `layout`."""
        name, mapping = self._block_for(block_bytes)
        header_frames = []
        for index, (frame, refs) in enumerate(zip(frames, layout)):
            for field, ref in refs.items():
                if field != "reply" and not _lies_at(frame[field], ref, self._block_address):
                    convert_named(index, field, frame[field], ref.view(mapping))
            header_frames.append({"camera": str(frame["camera"]), "reply_offset": refs["reply"].offset,
                                  **{k: r.encode() for k, r in refs.items() if k != "reply"}})
        message = {"v": wire.PROTOCOL_VERSION, "id": request_id, "op": "enhance", "deadline_ms": float(budget),
                   "shm": {"block": name, "bytes": self._block[1], "nonce": self._shm_offer["nonce"]},
                   "frames": header_frames}
        return wire.pack(message)


_LENDABLE = ("rgb", "depth", "alpha")  # the fields frame_buffers lends space for


def _aligned(nbytes: int) -> int:
    """nbytes rounded up to the block's alignment."""
    return -(-nbytes // wire.SHM_ALIGN) * wire.SHM_ALIGN


def _lies_at(array, ref: wire.ShmRef, block_address: int) -> bool:
    """Is `array` the very array `ref` names in the block mapped at block_address (nothing to write)?"""
    return (isinstance(array, np.ndarray) and array.dtype.name == ref.dtype and array.shape == ref.shape
            and array.flags.c_contiguous and array.ctypes.data == block_address + ref.offset)


def convert_named(index: int, name: str, array, out: np.ndarray) -> np.ndarray:
    """`convert(array, out)`, its NaNImageError naming frames[index].name as the server's BadRequest names a field."""
    try:
        return convert(array, out)
    except wire.NaNImageError as err:
        raise wire.NaNImageError(f"frames[{index}].{name}: {err}") from None


def convert(array, out: np.ndarray) -> np.ndarray:
    """`array` written into `out` in out's wire dtype: uint8 rounds [0, 1] images (a uint8 image is copied as
    it is), float16 rounds to nearest, float32 takes a uint8 image as u8 / 255, bool is array != 0 (the same
    values on both paths)."""
    array = np.asarray(array)
    if array.dtype.kind == "f" and array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float32)  # float16 / longdouble: the codecs take float32 and float64
    if array.dtype == np.uint8 and out.dtype == np.uint8:  # an 8-bit image on the uint8 wire
        np.copyto(out, array)
        return out
    if array.dtype == np.uint8 and out.dtype == np.float32:  # ... on the float32 wire
        return wire.float_into(array, out)
    if out.dtype == np.uint8:
        return wire.to_uint8_into(array, out)
    if out.dtype == np.float16:
        return wire.to_float16_into(array, out)
    np.copyto(out, array, casting="unsafe")
    return out
