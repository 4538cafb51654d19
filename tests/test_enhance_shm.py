"""The enhancer's shared-memory path: same results as bytes, named errors for bad headers, no leaked blocks."""

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from neural_sensor.enhance import protocol as wire
from neural_sensor.enhance.client import EnhancerClient
from neural_sensor.enhance.local import local_server, start_server, stop_server


@pytest.fixture(scope="module")
def server(identity_checkpoint):
    with local_server(checkpoint=identity_checkpoint, workers=1, threads=1) as srv:
        yield srv


def _frames(seed, n=3, h=24, w=40, reference=False):
    rng = np.random.default_rng(seed)
    frames = [{"camera": f"cam{i}", "rgb": rng.random((h, w, 3)).astype(np.float32),
               "depth": rng.random((h, w)).astype(np.float32) * 30, "alpha": rng.random((h, w)).astype(np.float32)}
              for i in range(n)]
    if reference:
        for f in frames:
            f["reference"] = rng.random((h, w, 3)).astype(np.float32)
            f["reference_valid"] = rng.random((h, w)) > 0.5
    return frames


def _blocks(folder) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("blk-"))


def _raw_request(endpoint: str, message: dict) -> dict:
    """Send one hand-made request on a bare DEALER (REQ envelope) and return the parsed reply."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart([b"", wire.pack(message)])
        assert sock.poll(20_000), "no reply"
        return wire.unpack(sock.recv_multipart()[-1])
    finally:
        sock.close(0)


@pytest.mark.parametrize("reference", [False, True], ids=["render", "with-reference"])
def test_shared_memory_round_trip_equals_the_byte_path(server, reference):
    frames = _frames(1, reference=reference)
    with EnhancerClient(server.endpoint, deadline_ms=10_000) as shm, \
            EnhancerClient(server.endpoint, deadline_ms=10_000, shared_memory=False) as plain:
        assert shm.hello()["shm"]["folder"] and plain.hello()
        assert (shm.transport, plain.transport) == ("shm", "bytes")
        for _ in range(2):  # the second tick reuses the block
            via_shm, via_bytes = shm.enhance(frames), plain.enhance(frames)
            assert via_shm.enhanced and via_bytes.enhanced, (via_shm.reason, via_bytes.reason)
            assert shm.transport == "shm"
            for a, b, sent in zip(via_shm.rgb, via_bytes.rgb, frames):
                assert a.dtype == np.float32 and a.shape == sent["rgb"].shape
                np.testing.assert_array_equal(a, b)
                np.testing.assert_array_equal(a, np.floor(np.clip(sent["rgb"] * np.float32(255), 0, 255)
                                                          + np.float32(0.5)).astype(np.float32) / np.float32(255))



@pytest.mark.parametrize("shared_memory", [True, False], ids=["shm", "bytes"])
def test_a_nan_image_on_the_uint8_wire_is_named_not_sent(server, shared_memory):
    """NaN has no uint8: an rgb / alpha / reference with NaN used to go out as whatever the cast made of it (the
    float wire's server refuses it as a BadRequest). Now the tick is not enhanced, its reason naming the frame
    and the field, as the server names a depth with NaN; the next good tick is enhanced."""
    with EnhancerClient(server.endpoint, deadline_ms=10_000, shared_memory=shared_memory) as client:
        for field in ("rgb", "alpha", "reference"):
            frames = _frames(4, reference=True)
            frames[2][field][5, 6] = np.nan
            bad = client.enhance(frames)
            assert not bad.enhanced and bad.reason == (f"frames[2].{field}: contains NaN (the uint8 wire cannot "
                                                       "carry it)"), bad.reason
        assert client.enhance(_frames(4, reference=True)).enhanced
        assert client.transport == ("shm" if shared_memory else "bytes")


@pytest.mark.parametrize("shared_memory", [True, False], ids=["shm", "bytes"])
def test_enhance_into_callers_buffers(server, shared_memory):
    """enhance(frames, out=...): the same values as fresh arrays, written into (and returned as) the caller's
    buffers, which may be the frames' own rgb; bad buffers are a named ValueError before anything is sent."""
    frames = _frames(5)
    with EnhancerClient(server.endpoint, deadline_ms=10_000, shared_memory=shared_memory) as client:
        client.hello()
        fresh = client.enhance(frames)
        own = [f["rgb"].copy() for f in frames]
        into = client.enhance([{**f, "rgb": o} for f, o in zip(frames, own)], out=own)
        assert fresh.enhanced and into.enhanced, (fresh.reason, into.reason)
        for a, b, o in zip(fresh.rgb, into.rgb, own):
            assert b is o
            np.testing.assert_array_equal(a, b)
        for bad in ([np.zeros((24, 40, 3), np.float64)] * 3, [np.zeros((24, 40, 3), np.float32)] * 2,
                    [np.zeros((40, 24, 3), np.float32)] * 3, [np.zeros((24, 40, 3), np.float32)[:, ::-1]] * 3):
            with pytest.raises(ValueError, match="out must hold one writable C-contiguous float32 array"):
                client.enhance(frames, out=bad)


@pytest.mark.parametrize("shared_memory", [True, False], ids=["shm", "bytes"])
@pytest.mark.parametrize("wire_dtype", ["uint8", "float32"])
def test_uint8_images_are_taken_as_0_to_255_and_other_dtypes_are_refused(server, shared_memory, wire_dtype):
    """An 8-bit rgb / alpha / reference (0-255, as cameras give them) is enhanced exactly like the float image
    u8 / 255 on either path and wire (and goes on the wire as the same bytes); a bool alpha and float16 images
    are taken; an integer image of another dtype, a bool rgb or an integer depth is a ValueError that names the
    frame and field (a uint8 image used to go through as if it were a [0, 1] float: a white image)."""
    as_float = _frames(7, reference=True)
    rng = np.random.default_rng(8)
    as_u8 = []
    for f in as_float:
        u8 = {k: rng.integers(0, 256, np.shape(f[k])).astype(np.uint8) for k in ("rgb", "alpha", "reference")}
        f.update({k: v.astype(np.float32) / np.float32(255) for k, v in u8.items()})
        as_u8.append({**f, **u8})
    with EnhancerClient(server.endpoint, deadline_ms=10_000, shared_memory=shared_memory,
                        wire_dtype=wire_dtype) as client:
        client.hello()
        want, got = client.enhance(as_float), client.enhance(as_u8)
        assert want.enhanced and got.enhanced, (want.reason, got.reason)
        for a, b in zip(want.rgb, got.rgb):
            np.testing.assert_array_equal(a, b)
        # alpha and reference do not reach an identity model's output: check what goes on the wire directly
        from neural_sensor.enhance.client_block import convert as _convert

        wire_type = np.uint8 if wire_dtype == "uint8" else np.float32
        for name in ("alpha", "reference"):
            want_wire = _convert(as_float[0][name], np.empty(np.shape(as_float[0][name]), wire_type))
            got_wire = _convert(as_u8[0][name], np.empty(np.shape(as_u8[0][name]), wire_type))
            np.testing.assert_array_equal(want_wire, got_wire, err_msg=name)
        # a bool alpha (a mask) is 0 / 1; float16 images are taken like their float32 values
        mask = as_u8[0]["alpha"] > 127
        np.testing.assert_array_equal(_convert(mask, np.empty(mask.shape, wire_type)),
                                      _convert(mask.astype(np.float32), np.empty(mask.shape, wire_type)))
        half = as_float[0]["rgb"].astype(np.float16)
        np.testing.assert_array_equal(_convert(half, np.empty(half.shape, wire_type)),
                                      _convert(half.astype(np.float32), np.empty(half.shape, wire_type)))
        assert client.enhance([{**as_float[0], "rgb": half, "alpha": mask}]).enhanced
        for field, dtype in (("rgb", np.int32), ("alpha", np.uint16), ("reference", np.int64), ("depth", np.uint8),
                             ("rgb", np.bool_)):
            bad = [dict(f) for f in as_float]
            bad[1][field] = bad[1][field].astype(dtype)
            with pytest.raises(ValueError, match=rf"frames\[1\]\.{field} has dtype"):
                client.enhance(bad)
        # a frame without a field, or with one of another size, is named too (a KeyError / a bare assert before)
        for change, said in (({"depth": None}, r"frames\[1\] has no depth"),
                             ({"depth": as_float[1]["depth"][:-6]}, r"frames\[1\]\.depth has shape \("),
                             ({"reference_valid": None}, r"frames\[1\] needs reference and reference_valid")):
            bad = [dict(f) for f in as_float]
            bad[1].update(change)
            with pytest.raises(ValueError, match=said):
                client.enhance(bad)


def test_malformed_shared_memory_headers_get_named_errors_and_the_worker_keeps_serving(server):
    with EnhancerClient(server.endpoint, deadline_ms=10_000) as client:
        hello = client.hello()
        folder, nonce = Path(hello["shm"]["folder"]), hello["shm"]["nonce"]
        assert client.enhance(_frames(2)).enhanced  # makes the client's block
        (block,) = _blocks(folder)
        size = (folder / block).stat().st_size
        h, w = 24, 40

        def request(block_name=block, block_bytes=size, offset=wire.SHM_HEADER_BYTES, reply_offset=None,
                    nonce_=nonce):
            ref = lambda dtype, shape, off: {"__shm__": True, "dtype": dtype, "shape": list(shape), "offset": off}
            frame = {"camera": "cam0", "rgb": ref("uint8", (h, w, 3), offset),
                     "depth": ref("float16", (h, w), 8192), "alpha": ref("uint8", (h, w), 12288),
                     "reply_offset": 16384 if reply_offset is None else reply_offset}
            return {"v": wire.PROTOCOL_VERSION, "id": "bad", "op": "enhance",
                    "shm": {"block": block_name, "bytes": block_bytes, "nonce": nonce_}, "frames": [frame]}

        foreign = folder / f"blk-{os.getpid()}-0123456789abcdef"
        foreign.write_bytes(b"\1" * size)  # the right size, not a block of this server
        small = folder / f"blk-{os.getpid()}-fedcba9876543210"
        small.write_bytes(wire.shm_block_header(nonce) + b"\0" * 100)
        cases = {
            "missing": (request(block_name=f"blk-{os.getpid()}-00000000"), "SharedMemoryError", "does not exist"),
            "too small": (request(block_name=small.name), "SharedMemoryError", "bytes; the request says"),
            "foreign": (request(block_name=foreign.name), "SharedMemoryError", "foreign"),
            "not a block name": (request(block_name="../../etc/passwd"), "SharedMemoryError", "not a block name"),
            "other server": (request(nonce_="0" * 32), "SharedMemoryError", "no shared memory to that nonce"),
            "offset past the end": (request(offset=size - 10), "BadRequest", "out of range"),
            "offset into the header": (request(offset=0), "BadRequest", "out of range"),
            "reply past the end": (request(reply_offset=size), "BadRequest", "out of range"),
            "negative size": (request(block_bytes=-1), "BadRequest", "shm bytes"),
        }
        for name, (message, error_type, words) in cases.items():
            reply = _raw_request(server.endpoint, message)
            assert reply["ok"] is False, name
            assert reply["error"]["type"] == error_type and words in reply["error"]["message"], (name, reply)
        foreign.unlink()
        small.unlink()

        # a block removed between ticks: the tick still arrives (over bytes), then shared memory is negotiated again
        os.unlink(folder / block)
        result = client.enhance(_frames(3))
        assert result.enhanced, result.reason
        client.hello()
        assert client.transport == "shm" and client.enhance(_frames(3)).enhanced

        # a block removed while its request is in flight: the worker either wrote into the unlinked file or answered
        # SharedMemoryError and the client sent the tick over bytes; enhanced either way, and no worker died
        frames = _frames(4, n=6, h=96, w=160)
        outcome = []
        thread = threading.Thread(target=lambda: outcome.append(client.enhance(frames)))
        thread.start()
        for path in folder.glob("blk-*"):
            path.unlink(missing_ok=True)
        thread.join()
        assert outcome[0].enhanced, outcome[0].reason
        assert client.stats()["worker_restarts"] == 0
        client.hello()
        after = client.enhance(_frames(5))
        assert after.enhanced and client.transport == "shm", after.reason


def test_no_block_is_left_after_close_stop_or_a_killed_server(identity_checkpoint):
    srv = start_server(checkpoint=identity_checkpoint, threads=1)
    try:
        folder = wire.shm_folder_for(srv.folder)
        with EnhancerClient(srv.endpoint, deadline_ms=10_000) as client:
            client.hello()
            assert client.enhance(_frames(6)).enhanced and client.transport == "shm"
            assert len(_blocks(folder)) == 1
        assert _blocks(folder) == []  # close() removed it
        client = EnhancerClient(srv.endpoint, deadline_ms=10_000)
        client.hello()
        assert client.enhance(_frames(7)).enhanced and len(_blocks(folder)) == 1
    finally:
        stop_server(srv)
    assert not folder.exists()  # the server's stop removed the folder with the block the client still held
    client.close()

    # SIGKILL of the broker with nobody to clean up after it: its workers remove the folder when they notice
    srv = start_server(checkpoint=identity_checkpoint, threads=1)
    folder = wire.shm_folder_for(srv.folder)
    try:
        with EnhancerClient(srv.endpoint, deadline_ms=10_000) as client:
            client.hello()
            assert client.enhance(_frames(8)).enhanced and len(_blocks(folder)) == 1
            srv.process.kill()
            srv.process.wait()
            t_end = time.monotonic() + 30
            while folder.exists() and time.monotonic() < t_end:
                time.sleep(0.1)
            assert not folder.exists()
    finally:
        stop_server(srv)


def test_a_killed_standalone_server_leaves_no_temporary_folder(tmp_path, identity_checkpoint):
    """`serve-enhancer` on its own keeps its workers' socket in a temporary folder of its own; SIGKILLed, it cannot
    remove it, so its workers do when they notice (as they do its shared-memory folder)."""
    import subprocess
    import sys

    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen([sys.executable, "-m", "neural_sensor.enhance.server", "--bind", "tcp://127.0.0.1:*",
                             "--checkpoint", str(identity_checkpoint), "--threads", "1", "--ready-file", str(ready)],
                            env={**os.environ, "TMPDIR": str(tmpdir)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        t_end = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < t_end:
            time.sleep(0.1)
        folders = list(tmpdir.glob("enhancer-*"))
        assert ready.exists() and len(folders) == 1, folders
        proc.kill()
        proc.wait()
        t_end = time.monotonic() + 30
        while folders[0].exists() and time.monotonic() < t_end:
            time.sleep(0.1)
        assert not folders[0].exists()
    finally:
        proc.kill()
        proc.wait()


def test_local_kill_removes_the_shared_memory_folder(identity_checkpoint):
    srv = start_server(checkpoint=identity_checkpoint, threads=1)
    folder = wire.shm_folder_for(srv.folder)
    try:
        with EnhancerClient(srv.endpoint, deadline_ms=10_000) as client:
            client.hello()
            assert client.enhance(_frames(9)).enhanced and len(_blocks(folder)) == 1
            srv.kill()
            assert not folder.exists() and not srv.folder.exists()
    finally:
        stop_server(srv)


def test_a_servers_shared_memory_folder_names_its_broker(server):
    """What `sweep_abandoned_server_folders` reads to tell a killed server's folder from a live one's."""
    from neural_sensor.enhance.folders import OWNER_FILE

    for owner in (wire.shm_folder_for(server.folder) / OWNER_FILE, server.folder / OWNER_FILE):  # (and the local
        # server's own folder in TMPDIR: it had none, so a server killed with its workers left it for good)
        assert owner.read_text() == str(server.process.pid) and time.time() - owner.stat().st_mtime < 60


def test_client_uses_bytes_when_the_server_offers_no_shared_memory(identity_checkpoint):
    frames = _frames(10)
    with local_server(checkpoint=identity_checkpoint, threads=1, shared_memory=False) as srv:
        assert not wire.shm_folder_for(srv.folder).exists()
        with EnhancerClient(srv.endpoint, deadline_ms=10_000) as client:
            assert "shm" not in client.hello()
            result = client.enhance(frames)
            assert result.enhanced and client.transport == "bytes" and result.path == "bytes/broker", result.reason
            np.testing.assert_array_equal(result.rgb[0], wire.to_float(wire.like(frames[0]["rgb"], np.uint8)))


def test_a_server_restarted_with_shared_memory_is_found_by_a_client_that_met_one_without(identity_checkpoint,
                                                                                        monkeypatch):
    """A client whose first server had --no-shared-memory stayed on bytes for good after that server was replaced
    by one with shared memory (no reset when the restart fell between ticks): it asks again now and then."""
    from neural_sensor.enhance import client as client_module

    monkeypatch.setattr(client_module, "NO_SHM_HELLO_EVERY_S", 0.5)
    first = start_server(checkpoint=identity_checkpoint, threads=1, shared_memory=False)
    servers = [first]
    try:
        with EnhancerClient(first.endpoint, deadline_ms=5_000) as client:
            assert "shm" not in client.hello() and client.enhance(_frames(13)).enhanced
            stop_server(first)
            servers.append(start_server(checkpoint=identity_checkpoint, bind=first.endpoint, threads=1))
            t_end = time.monotonic() + 30
            while client.transport != "shm" and time.monotonic() < t_end:
                client.enhance(_frames(14))
                time.sleep(0.1)
            assert client.transport == "shm" and client.enhance(_frames(15)).path.startswith("shm/")
    finally:
        for srv in servers:
            stop_server(srv)


def test_a_restarted_server_is_served_over_bytes_then_shared_memory_again(identity_checkpoint):
    first = start_server(checkpoint=identity_checkpoint, threads=1)
    servers = [first]
    try:
        with EnhancerClient(first.endpoint, deadline_ms=5_000) as client:
            client.hello()
            assert client.enhance(_frames(11)).enhanced and client.transport == "shm"
            first.kill()
            servers.append(start_server(checkpoint=identity_checkpoint, bind=first.endpoint, threads=1))
            results = []
            t_end = time.monotonic() + 30
            while (not results or not results[-1].enhanced or client.transport != "shm") and time.monotonic() < t_end:
                results.append(client.enhance(_frames(12)))
                time.sleep(0.05)
            assert results[-1].enhanced and client.transport == "shm", [r.reason for r in results]
            assert all(r.enhanced or r.reason for r in results)  # every tick: enhanced, or raw with its reason
    finally:
        for srv in servers:
            stop_server(srv)


def test_replies_are_written_in_place_only_when_the_requests_arrays_lie_apart():
    """The worker writes a reply into its slot while the model still reads other frames' inputs only when no two
    arrays of the request overlap in the block (our client lays them apart); otherwise it answers from copies."""
    from neural_sensor.enhance.worker import _apart

    def frame(offset, reply):
        return {"rgb": wire.ShmRef("uint8", (4, 4, 3), offset), "depth": wire.ShmRef("float16", (4, 4), offset + 64),
                "alpha": wire.ShmRef("uint8", (4, 4), offset + 128), "reply_offset": wire.ShmRef("uint8", (4, 4, 3), reply)}

    assert _apart([frame(64, 256), frame(320, 512)])
    assert not _apart([frame(64, 64)])  # the reply slot is the frame's own rgb
    assert not _apart([frame(64, 256), frame(320, 200)])  # a reply slot over the first frame's alpha / reply
    assert not _apart([frame(64, 256), frame(100, 512)])  # two frames' inputs overlap


# ------------------------------------------------------------------ the direct path (no broker)
def _direct_socket(client: EnhancerClient) -> Path:
    assert client.route == "direct", client.route
    return Path(client._direct_path)


def test_direct_path_equals_the_broker_path_and_is_counted(server):
    frames = _frames(21, reference=True)
    with EnhancerClient(server.endpoint, deadline_ms=10_000) as direct, \
            EnhancerClient(server.endpoint, deadline_ms=10_000, direct=False) as brokered:
        hello = direct.hello()
        brokered.hello()
        assert hello["shm"]["direct"] and (direct.route, brokered.route) == ("direct", "broker")
        assert _direct_socket(direct).parent == Path(hello["shm"]["folder"])
        before = direct.stats()["direct_requests"]
        for _ in range(3):
            a, b = direct.enhance(frames), brokered.enhance(frames)
            assert a.enhanced and b.enhanced, (a.reason, b.reason)
            assert direct.route == "direct" and a.model_ms is not None
            assert (a.path, b.path) == ("shm/direct", "shm/broker")  # the path each tick took, as the run counts it
            for x, y in zip(a.rgb, b.rgb):
                np.testing.assert_array_equal(x, y)
        t_end = time.monotonic() + 10  # the worker reports to the broker after it answers: soon, not at once
        while direct.stats()["direct_requests"] < before + 3 and time.monotonic() < t_end:
            time.sleep(0.02)
        assert direct.stats()["direct_requests"] == before + 3


def test_direct_path_answers_anything_but_a_shared_memory_enhance_with_a_named_error(server):
    import socket

    with EnhancerClient(server.endpoint, deadline_ms=10_000) as client:
        client.hello()
        path = str(_direct_socket(client))
        before = client.stats()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(20)
        sock.connect(path)
        try:
            cases = [(wire.make_request("hello", "h1"), "BadRequest"),
                     (wire.make_request("enhance", "b1", [{k: v for k, v in f.items()} for f in _frames(2, n=1)]),
                      "BadRequest"),  # bytes go to the broker
                     (b"\xc1 not msgpack", "BadMessage"),
                     (b"x" * (wire.DIRECT_MAX_BYTES + 10), "LimitExceeded")]
            for payload, error in cases:
                sock.send(payload)
                reply = wire.parse_reply(sock.recv(wire.DIRECT_MAX_BYTES))
                assert not reply["ok"] and reply["error"]["type"] == error, (error, reply)
        finally:
            sock.close()
        assert client.enhance(_frames(3)).enhanced and client.route == "direct"  # the worker still serves
        t_end = time.monotonic() + 10  # the refusals are counted as requests and errors once the worker reports
        while client.stats()["direct_requests"] < before["direct_requests"] + 5 and time.monotonic() < t_end:
            time.sleep(0.02)
        after = client.stats()
        assert after["direct_requests"] == before["direct_requests"] + 5
        assert after["errors"] == before["errors"] + 4


def test_a_missed_deadline_on_the_direct_path_leaves_no_stale_reply(identity_checkpoint):
    import signal

    with local_server(checkpoint=identity_checkpoint, workers=1, threads=1) as srv, \
            EnhancerClient(srv.endpoint, deadline_ms=10_000) as client:
        client.hello()
        pid = int(_direct_socket(client).name.split("-")[1].split(".")[0])
        first = _frames(31)
        os.kill(pid, signal.SIGSTOP)  # the worker takes the request but cannot answer it in time
        try:
            late = client.enhance(first, deadline_ms=300)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert not late.enhanced and "no reply from the enhancer's worker" in late.reason, late.reason
        second = _frames(32)
        result = client.enhance(second)  # a fresh connection: the late reply to `first` cannot be taken for it
        assert result.enhanced and client.route == "direct", result.reason
        for got, sent in zip(result.rgb, second):
            np.testing.assert_array_equal(got, wire.to_float(wire.like(sent["rgb"], np.uint8)))
        assert client.stats()["worker_restarts"] == 0


def test_a_killed_worker_sends_ticks_over_the_broker_then_direct_to_its_replacement(identity_checkpoint):
    with local_server(checkpoint=identity_checkpoint, workers=2, threads=1) as srv, \
            EnhancerClient(srv.endpoint, deadline_ms=5_000) as client:
        t_end = time.monotonic() + 60  # both workers listed: the client stays on one of them
        while len(client.hello()["shm"]["direct"]) < 2 and time.monotonic() < t_end:
            time.sleep(0.1)
        assert client.enhance(_frames(41)).enhanced and client.route == "direct"
        old = _direct_socket(client)
        pid = int(old.name.split("-")[1].split(".")[0])  # w<index>-<pid>.sock
        os.kill(pid, 9)
        while client.stats()["worker_restarts"] < 1 and time.monotonic() < t_end:  # the broker noticed (a job it
            time.sleep(0.05)  # gave the dead worker before would be answered WorkerError)
        via_broker = client.enhance(_frames(42))  # its socket is gone: this tick goes to the other worker
        assert via_broker.enhanced and client.route == "broker", via_broker.reason
        results = []
        while (not results or not results[-1].enhanced or client.route != "direct") and time.monotonic() < t_end:
            results.append(client.enhance(_frames(43)))
            time.sleep(0.05)
        assert results[-1].enhanced and client.route == "direct", [r.reason for r in results]
        assert _direct_socket(client) != old
        assert client.stats()["worker_restarts"] == 1 and not old.exists()


def test_direct_requests_are_batched_up_to_the_servers_limit():
    from neural_sensor.enhance.direct import batches as _batches

    jobs = [(b"a", b"", 6), (b"b", b"", 6), (b"c", b"", 6), (b"d", b"", 20), (b"e", b"", 1)]
    assert [[k for k, _, _ in batch] for batch in _batches(jobs, 12)] == [[b"a", b"b"], [b"c"], [b"d"], [b"e"]]
    assert _batches([], 16) == []


def test_lent_frame_buffers_travel_without_a_copy_and_the_reply_lands_in_place(server):
    """frame_buffers: arrays rendered into the client's block are named where they lie (float32, no conversion),
    the reply is written straight into the lent "enhanced" arrays (the identity model: exactly the float rgb, no
    8-bit rounding), a NaN there is still a named refusal, and other arrays beside them are converted as usual."""
    frames = _frames(7, reference=True)
    with EnhancerClient(server.endpoint, deadline_ms=10_000) as client, \
            EnhancerClient(server.endpoint, deadline_ms=10_000, shared_memory=False) as plain:
        assert client.frame_buffers(3, 24, 40) is None  # nothing negotiated yet: the caller renders on its own
        client.hello()
        assert plain.hello() and plain.frame_buffers(3, 24, 40) is None
        with pytest.raises(ValueError, match="height must be a positive int"):
            client.frame_buffers(3, 0, 40)
        lent = client.frame_buffers(3, 24, 40)
        block = client._block[0]
        assert {k: (v.dtype, v.shape) for k, v in lent.items()} == {
            "rgb": (np.float32, (3, 24, 40, 3)), "depth": (np.float32, (3, 24, 40)),
            "alpha": (np.float32, (3, 24, 40)), "enhanced": (np.float32, (3, 24, 40, 3))}
        for tick in range(2):
            for i, f in enumerate(frames):  # what the renderer does: write into the lent arrays
                for key in ("rgb", "depth", "alpha"):
                    lent[key][i] = f[key] if tick == 0 else 1.0 - f[key] if key == "rgb" else f[key]
            sent = [{**f, "rgb": lent["rgb"][i], "depth": lent["depth"][i], "alpha": lent["alpha"][i]}
                    for i, f in enumerate(frames)]
            out = list(lent["enhanced"])
            layout, _, _ = client._shm_layout(sent, out)
            base = client._block_address
            for refs, f, o in zip(layout, sent, out):
                for key in ("rgb", "depth", "alpha"):
                    assert (refs[key].dtype, base + refs[key].offset) == ("float32", f[key].ctypes.data), key
                assert base + refs["reply"].offset == o.ctypes.data
                assert refs["reference"].dtype == "uint8"  # not lent: converted into the block
            result = client.enhance(sent, out=out)
            assert result.enhanced, result.reason
            for got, o, f in zip(result.rgb, out, sent):
                assert got is o
                np.testing.assert_array_equal(got, f["rgb"])  # float32 both ways: not rounded to 8 bits
            assert client._block[0] == block  # the same block every tick
        lent["depth"][1, 3, 4] = np.nan
        bad = client.enhance(sent, out=out)
        assert not bad.enhanced and "frames[1].depth: contains NaN or inf" in bad.reason


@pytest.mark.parametrize("big_first", [False, True], ids=["lent-first", "big-first"])
def test_lent_frame_buffers_outgrown_by_a_request_fall_back_to_copies(server, big_first):
    """A request that does not fit the block beside what frame_buffers lent gets a new block with everything
    copied into it (the lent arrays are read while they still lie in the old one): the same results. Also when
    the copies alone would fit the old block (a frame before the lent one: laid out there, its copy would land on
    the lent arrays before they are read)."""
    with EnhancerClient(server.endpoint, deadline_ms=10_000) as client:
        client.hello()
        lent = client.frame_buffers(1, 8, 8)
        assert client._block[1] == 1 << 20  # the smallest block: what the sizes below are chosen against
        lent["rgb"][0], lent["depth"][0], lent["alpha"][0] = 0.25, 5.0, 1.0
        # big-first: a 64-row frame takes 9 bytes a pixel on the uint8 wire with its reply (rgb 3, depth 2,
        # alpha 1, reply 3); copied, the small frame takes 576 bytes after it, lent 2,048 before it and 768 after
        width = ((1 << 20) - wire.SHM_HEADER_BYTES - 576) // (9 * 64)
        assert wire.SHM_HEADER_BYTES + 2048 + 9 * 64 * width + 768 > 1 << 20  # lent: it does not fit
        big = _frames(8, n=1, h=64, w=width) if big_first else _frames(8, n=4, h=300, w=400)
        small = {"camera": "lent", "rgb": lent["rgb"][0], "depth": lent["depth"][0], "alpha": lent["alpha"][0]}
        first_block = client._block[0]
        frames = big + [small] if big_first else [small] + big
        result = client.enhance(frames)
        assert result.enhanced, result.reason
        assert client._block[0] != first_block and client._lent_bytes == 0
        got = result.rgb[-1 if big_first else 0]
        np.testing.assert_array_equal(got, np.full((8, 8, 3), 64 / 255, np.float32))  # uint8 wire now
        assert client.frame_buffers(1, 8, 8) is not None  # lent again from the new block


def test_a_hung_worker_is_left_for_the_other_one(identity_checkpoint):
    """A new user's finding: with two workers and one stopped (SIGSTOP: a long pause, a debugger, swapping), the
    client left it after three timeouts, and its next hello (a second later) chose the same worker again and
    counted afresh: ten of twelve calls were lost at the full deadline while the other worker sat idle. A worker
    left is not taken again for DIRECT_LEAVE_S."""
    import signal

    from neural_sensor.enhance.client import DIRECT_TIMEOUTS_TO_LEAVE

    with local_server(checkpoint=identity_checkpoint, workers=2, threads=1) as srv, \
            EnhancerClient(srv.endpoint, deadline_ms=5_000) as client:
        t_end = time.monotonic() + 60
        while len(client.hello()["shm"]["direct"]) < 2 and time.monotonic() < t_end:
            time.sleep(0.1)
        assert client.enhance(_frames(51)).enhanced and client.route == "direct"
        hung = _direct_socket(client)
        pid = int(hung.name.split("-")[1].split(".")[0])
        os.kill(pid, signal.SIGSTOP)
        try:
            results = []
            for i in range(12):
                results.append(client.enhance(_frames(52 + i), deadline_ms=300))
                time.sleep(0.1)
        finally:
            os.kill(pid, signal.SIGCONT)
        lost = [r.reason for r in results if not r.enhanced]
        # the three timeouts, and at most one more: a call through the broker before the next hello, which the
        # broker may hand to the stopped worker
        assert len(lost) <= DIRECT_TIMEOUTS_TO_LEAVE + 1, lost
        assert all(r.enhanced for r in results[-6:]), [r.reason for r in results]
        assert client.route == "direct" and _direct_socket(client) != hung


@pytest.mark.parametrize("shared_memory", [True, False], ids=["shm", "bytes"])
def test_a_server_restarted_with_another_model_is_sent_no_ticks(identity_checkpoint, tmp_path, shared_memory):
    """A new user's finding: after a restart with another checkpoint the client sent every tick, the server ran the
    model on it, and the client threw the reply away (374 ms a tick for a raw render). The hello that names the other
    model now stops the ticks at the client, and the client takes the server again when its own model is back."""
    import socket

    from neural_sensor.enhance.model import Enhancer, EnhancerConfig

    other = tmp_path / "other"
    Enhancer(EnhancerConfig(model_name="other", block_out_channels=(8, 16), norm_num_groups=4)).save_pretrained(other)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        bind = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    first = start_server(checkpoint=identity_checkpoint, bind=bind, threads=1)
    client = EnhancerClient(bind, deadline_ms=5_000, shared_memory=shared_memory)  # (bytes: as a remote server's)
    try:
        client.wait_ready()
        assert client.enhance(_frames(61)).enhanced
        first.kill()
        second = start_server(checkpoint=other, bind=bind, threads=1)
        try:
            t_end = time.monotonic() + 30
            result = client.enhance(_frames(62))
            while "answered with checkpoint" not in result.reason and time.monotonic() < t_end:
                time.sleep(0.1)
                result = client.enhance(_frames(62))
            assert "answered with checkpoint" in result.reason and "(identity)" in result.reason, result.reason
            served = client.stats()["frames_enhanced"]
            results = [client.enhance(_frames(63)) for _ in range(10)]
            assert all("answered with checkpoint" in r.reason for r in results)
            assert client.stats()["frames_enhanced"] == served  # nothing computed to be thrown away
        finally:
            stop_server(second)
        third = start_server(checkpoint=identity_checkpoint, bind=bind, threads=1)
        try:
            t_end = time.monotonic() + 30
            result = client.enhance(_frames(64))
            while not result.enhanced and time.monotonic() < t_end:
                time.sleep(0.2)
                result = client.enhance(_frames(64))
            assert result.enhanced, result.reason  # its own model back: enhanced again
        finally:
            stop_server(third)
    finally:
        client.close()


def test_wait_ready_on_a_closed_client_raises_at_once():
    client = EnhancerClient("tcp://127.0.0.1:9", deadline_ms=100)
    client.close()
    start = time.monotonic()
    with pytest.raises(Exception, match="is closed"):
        client.wait_ready(timeout_s=20)
    assert time.monotonic() - start < 5  # (it slept out its whole timeout)


def test_a_killed_runs_folder_is_swept_though_its_pid_lives_again(tmp_path, monkeypatch):
    """A new user's finding: pids repeat in every container (a restarted pod's processes, the host's kernel
    threads), and a folder whose pid was alive again was kept for good (a 64 MB /dev/shm filled up after three
    kills). A quiet folder is the writer's only while a process of its pid started before it was made."""
    import os
    import time

    from neural_sensor import host

    folder = tmp_path / "left"
    folder.mkdir()
    (folder / "block").write_bytes(b"x")
    old = time.time() - 7200
    for path in (folder / "block", folder):
        os.utime(path, (old, old))
    me = os.getpid()
    assert not host.abandoned(folder, me)  # (ours)
    child = os.fork()
    if child == 0:  # a process alive now, started long after the folder was last written: not its writer
        time.sleep(30)
        os._exit(0)
    try:
        assert host.abandoned(folder, child)
        assert host.abandoned(folder, 2) or not os.path.exists("/proc/2/cmdline")  # a kernel thread (kthreadd)
        monkeypatch.setattr(host, "process_start_time", lambda pid: old - 60.0)  # started before: its writer
        assert not host.abandoned(folder, child)
        assert not host.abandoned(folder, child, quiet_s=1e9)  # (written too recently for that quiet time)
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
    assert host.abandoned(folder, child)  # gone
