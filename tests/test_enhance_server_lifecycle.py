"""The enhancer server's lifecycle over real sockets: its ready file, a restart with another model, its ipc socket,
workers that are not ready or die, a stop that answers what waits, a second server beside a running one, and a run
waiting for a server that loads or stops."""

import json
import os
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from _enhancer import frames as _frames
from neural_sensor.enhance import protocol as wire
from neural_sensor.enhance.client import EnhancerClient
from neural_sensor.enhance.model import checkpoint_hash
from neural_sensor.enhance.server import ServerConfig


def test_the_ready_file_is_never_stale(tmp_path, identity_checkpoint):
    """An old ready file is removed at start (a waiting script must not take it for this server), ours is written
    once a worker is ready and removed when the server stops; a folder in its place is refused."""
    from neural_sensor.enhance.server import Broker

    import subprocess
    import sys

    ready = tmp_path / "ready.json"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ready.write_text(json.dumps({"endpoint": "tcp://127.0.0.1:1", "pid": int(gone.stdout)}))  # a killed server's
    broker = Broker(ServerConfig(bind="tcp://127.0.0.1:*", checkpoint=str(identity_checkpoint), workers=1,
                                 threads_per_worker=1, ready_file=str(ready)))
    assert not ready.exists()  # gone before any worker is ready
    thread = threading.Thread(target=broker.run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        written = json.loads(ready.read_text())
        assert written["pid"] == os.getpid() and written["endpoint"] == broker.endpoint
        assert written["model_name"] == "identity"
    finally:
        broker.stop()
        thread.join()
    assert not ready.exists()
    with pytest.raises(ValueError, match="is a folder"):
        Broker(ServerConfig(bind="tcp://127.0.0.1:*", checkpoint=str(identity_checkpoint), ready_file=str(tmp_path)))


def test_a_server_restarted_with_another_model_is_not_used(tmp_path, identity_checkpoint):
    """A run's client keeps the model of its first hello: after the server on its endpoint restarts with another
    checkpoint, its replies are refused (the raw render, with a reason naming both checkpoints), and the client
    still says which model it served with; the same model back again is used."""
    import shutil

    from neural_sensor.enhance.server import Broker

    other = tmp_path / "other"
    shutil.copytree(identity_checkpoint, other)
    config = json.loads((other / "config.json").read_text())
    config["model_name"] = "identity-b"
    (other / "config.json").write_text(json.dumps(config))

    def started(checkpoint, bind):
        broker = Broker(ServerConfig(bind=bind, checkpoint=str(checkpoint), workers=1, threads_per_worker=1))
        thread = threading.Thread(target=broker.run)
        thread.start()
        return broker, thread

    broker, thread = started(identity_checkpoint, "tcp://127.0.0.1:*")
    endpoint = broker.endpoint
    frames = _frames(3, n=2)
    try:
        with EnhancerClient(endpoint, deadline_ms=20_000, retries=0) as client:
            first = client.wait_ready(timeout_s=60)
            assert client.enhance(frames).enhanced
            broker.stop()
            thread.join()
            for checkpoint, used in ((other, False), (identity_checkpoint, True)):
                broker, thread = started(checkpoint, endpoint)
                try:
                    client.wait_ready(timeout_s=60)
                    result = client.enhance(frames)
                    assert result.enhanced is used, result.reason
                    if not used:
                        assert checkpoint_hash(other) in result.reason and first["checkpoint_hash"] in result.reason
                finally:
                    broker.stop()
                    thread.join()
            assert client.model["model_name"] == "identity"
            assert client.model["checkpoint_hash"] == first["checkpoint_hash"] == checkpoint_hash(identity_checkpoint)
    finally:
        broker.stop()
        if thread.is_alive():
            thread.join()


def test_an_ipc_server_removes_its_socket_file_when_it_stops(tmp_path, identity_checkpoint):
    from neural_sensor.enhance.server import Broker

    path = tmp_path / "enhancer.sock"
    broker = Broker(ServerConfig(bind=f"ipc://{path}", checkpoint=str(identity_checkpoint), workers=1,
                                 threads_per_worker=1))
    thread = threading.Thread(target=broker.run)
    thread.start()
    try:
        assert path.is_socket()
        with EnhancerClient(broker.endpoint, deadline_ms=20_000, retries=0) as client:
            assert client.wait_ready(timeout_s=60)["model_name"] == "identity"
    finally:
        broker.stop()
        thread.join()
    assert not path.exists()


def test_an_enhance_while_no_worker_holds_the_model_is_answered_not_ready_at_once(identity_checkpoint, monkeypatch):
    """A server starting (or restarting every worker) answers an enhance NotReady instead of letting it wait out the
    client's deadline, so a run's raw ticks say why (the CLI's line names a (re)starting server, not the deadline)."""
    from neural_sensor.enhance import server as server_module
    from scenarios.cli import _raw_ticks_line

    monkeypatch.setattr(server_module.Broker, "_spawn", lambda self, index: None)  # workers that never load
    broker = server_module.Broker(ServerConfig(bind="tcp://127.0.0.1:*", checkpoint=str(identity_checkpoint)))
    thread = threading.Thread(target=broker.run, daemon=True)
    thread.start()
    try:
        with EnhancerClient(broker.endpoint, deadline_ms=60_000) as client:
            assert client.hello()["workers_ready"] == 0
            result = client.enhance(_frames(31))
            assert not result.enhanced and "NotReady" in result.reason and "0 of 1 ready" in result.reason
            assert "no reply" not in result.reason  # answered, not timed out
        with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as raw:  # a request without a deadline waits for a worker
            raw.setsockopt(zmq.LINGER, 0)
            raw.connect(broker.endpoint)
            raw.send_multipart([b"", wire.make_request("enhance", "patient", _frames(32, n=1))])
            assert raw.poll(500) == 0
            with EnhancerClient(broker.endpoint, deadline_ms=60_000) as client:
                assert client.stats()["queued"] == 1
    finally:
        broker.stop()
        thread.join(10)
    line = _raw_ticks_line({"ticks_raw": 1, "deadline_ms": 1000.0, "raw_reasons": {result.reason: 1}}, 1)
    assert "starting or restarting" in line and "deadline" not in line


def test_requests_waiting_when_the_last_worker_dies_are_answered_not_ready(identity_checkpoint, monkeypatch):
    """The queue is answered as new requests are: NotReady for a request with a deadline, the one without waits."""
    from types import SimpleNamespace

    from neural_sensor.enhance import server as server_module

    monkeypatch.setattr(server_module.Broker, "_spawn", lambda self, index: None)
    broker = server_module.Broker(ServerConfig(bind="tcp://127.0.0.1:*", checkpoint=str(identity_checkpoint)))
    try:
        broker._identity_of[0] = b"w0-123"  # a worker that holds the model (and is busy: none is free)
        with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as raw:
            raw.setsockopt(zmq.LINGER, 0)
            raw.connect(broker.endpoint)
            raw.send_multipart([b"", wire.make_request("enhance", "hurried", _frames(33, n=1), deadline_ms=60_000)])
            raw.send_multipart([b"", wire.make_request("enhance", "patient", _frames(34, n=1))])
            while len(broker._queue) < 2:
                assert broker.frontend.poll(5000)
                broker._on_frontend()
            broker._procs[0] = SimpleNamespace(is_alive=lambda: False, pid=123, exitcode=-9)
            broker._check_workers()
            assert raw.poll(5000)
            reply = msgpack.unpackb(raw.recv_multipart()[-1])
            assert reply["id"] == "hurried" and reply["error"]["type"] == "NotReady", reply
            assert [item[1] for item in broker._queue] == ["patient"] and raw.poll(200) == 0
    finally:
        broker._procs.clear()  # the stand-in has no process to join
        broker.close()


def test_a_stopping_server_answers_what_waits_instead_of_leaving_it_to_the_deadline(identity_checkpoint, monkeypatch):
    """A new user's finding: Ctrl-C on a server left a waiting client hanging for its whole 20 s deadline (the
    workers were joined first, the front socket closed last, nothing queued or in flight was answered). Now the
    queue, what a worker holds and what arrives while the workers end are answered Stopping at once."""
    from types import SimpleNamespace

    from neural_sensor.enhance import server as server_module

    monkeypatch.setattr(server_module.Broker, "_spawn", lambda self, index: None)
    broker = server_module.Broker(ServerConfig(bind="tcp://127.0.0.1:*", checkpoint=str(identity_checkpoint)))
    broker._identity_of[0] = b"w0-123"  # a worker that holds the model and is busy with "held"
    broker._inflight[b"w0-123"] = []
    ending = {"polls": 0}

    def alive():  # the worker takes a few polls to end: a request sent meanwhile must be answered too
        ending["polls"] += 1
        return ending["polls"] < 6

    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as raw:
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(broker.endpoint)
        raw.send_multipart([b"", wire.make_request("enhance", "held", _frames(35, n=1), deadline_ms=60_000)])
        raw.send_multipart([b"", wire.make_request("enhance", "queued", _frames(36, n=1), deadline_ms=60_000)])
        while len(broker._queue) < 2:
            assert broker.frontend.poll(5000)
            broker._on_frontend()
        envelope, rid, *_ = broker._queue.popleft()
        broker._inflight[b"w0-123"] = [(envelope, rid, time.monotonic())]
        broker._procs[0] = SimpleNamespace(is_alive=alive, pid=123, exitcode=None, terminate=lambda: None,
                                           join=lambda timeout=None: None, kill=lambda: None)
        real_poll = broker.frontend.poll
        sent = {"late": False}

        def poll_and_send_late(timeout=None, flags=zmq.POLLIN):
            if not sent["late"]:
                sent["late"] = True
                raw.send_multipart([b"", wire.make_request("enhance", "late", _frames(37, n=1), deadline_ms=60_000)])
                time.sleep(0.05)
            return real_poll(timeout, flags)

        monkeypatch.setattr(broker.frontend, "poll", poll_and_send_late, raising=False)
        t0 = time.monotonic()
        broker.close()
        replies = {}
        while raw.poll(1000):
            reply = msgpack.unpackb(raw.recv_multipart()[-1])
            replies[reply["id"]] = reply["error"]["type"]
        assert replies == {"held": "Stopping", "queued": "Stopping", "late": "Stopping"}, replies
        assert time.monotonic() - t0 < 10.0


def test_a_stopping_servers_hello_offers_no_worker(identity_checkpoint, monkeypatch):
    """Noticed in review: during its shutdown a server's hello still counted its workers as ready and offered their
    direct sockets (a new client connected to a worker being ended). From close() on it says stopping, no worker
    ready and no direct socket; stats too."""
    from neural_sensor.enhance import server as server_module

    monkeypatch.setattr(server_module.Broker, "_spawn", lambda self, index: None)
    broker = server_module.Broker(ServerConfig(bind="tcp://127.0.0.1:*", checkpoint=str(identity_checkpoint)))
    try:
        broker._identity_of[0] = b"w0-123"
        broker._direct[0] = "w0-123.sock"
        hello = broker._hello()
        assert hello["workers_ready"] == 1 and hello["stopping"] is False, hello
        assert hello["shm"]["direct"] == ["w0-123.sock"], hello
        broker._stopping = True  # what close() sets first
        hello = broker._hello()
        assert hello["workers_ready"] == 0 and hello["stopping"] is True, hello
        assert "direct" not in hello["shm"], hello
        assert broker.stats()["workers_ready"] == 0
    finally:
        broker._identity_of.clear()
        broker.close()


def test_a_second_server_leaves_a_running_ones_endpoint_and_ready_file(tmp_path, identity_checkpoint):
    """A new user's findings: a second server on a running one's ipc:// path took it over without a word (the first
    went on, unreachable), and a second server that failed to bind deleted the running one's ready file."""
    import subprocess
    import sys

    from neural_sensor.enhance.server import Broker, remove_stale_ready_file

    path = tmp_path / "enhancer.sock"
    first = Broker(ServerConfig(bind=f"ipc://{path}", checkpoint=str(identity_checkpoint), workers=1,
                                threads_per_worker=1))
    try:
        with pytest.raises(ValueError, match=f"cannot bind ipc://{path}: Address already in use"):
            Broker(ServerConfig(bind=f"ipc://{path}", checkpoint=str(identity_checkpoint), workers=1))
    finally:
        first.close()
    assert not path.exists()
    import socket

    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a killed server's socket file: nobody listens
    left.bind(str(path))
    left.close()
    assert path.is_socket()
    Broker(ServerConfig(bind=f"ipc://{path}", checkpoint=str(identity_checkpoint), workers=1)).close()  # taken
    ready = tmp_path / "ready.json"
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:  # a reused pid
        try:
            ready.write_text(json.dumps({"endpoint": "tcp://127.0.0.1:5", "pid": other.pid}))
            remove_stale_ready_file(ready)
            assert not ready.exists()  # alive, but no server: the file is stale
        finally:
            other.kill()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "serve-enhancer"]) as running:
        try:
            deadline = time.monotonic() + 10  # (until the child has exec'd, its command line is ours)
            while b"serve-enhancer" not in Path(f"/proc/{running.pid}/cmdline").read_bytes():
                assert time.monotonic() < deadline
                time.sleep(0.01)
            ready.write_text(json.dumps({"endpoint": "tcp://127.0.0.1:5", "pid": running.pid}))
            remove_stale_ready_file(ready)
            assert ready.exists()  # a live server's
        finally:
            running.kill()
    running.wait()
    remove_stale_ready_file(ready)
    assert not ready.exists()  # its process gone: stale


def test_a_run_waits_longer_for_a_server_whose_workers_are_loading_and_says_so(identity_checkpoint, monkeypatch,
                                                                                capsys):
    """A new user's finding: a run started while a remote server was still loading its model was told "no answer
    ... yet" and then "is a server running there?", though the server had answered hello with 0 workers ready.
    It now says the server answers, waits longer for its workers, and names that in the error."""
    from neural_sensor.enhance import server as server_module
    from neural_sensor.enhance.client import EnhancerError
    from scenarios import enhancer_link
    from scenarios.runner import RunOptions

    monkeypatch.setattr(server_module.Broker, "_spawn", lambda self, index: None)  # workers that never load
    monkeypatch.setattr(enhancer_link, "REMOTE_WAIT_S", 2.5)
    monkeypatch.setattr(enhancer_link, "WORKERS_LOADING_S", 1.0)
    broker = server_module.Broker(ServerConfig(bind="tcp://127.0.0.1:*", checkpoint=str(identity_checkpoint)))
    thread = threading.Thread(target=broker.run, daemon=True)
    thread.start()
    try:
        with pytest.raises(EnhancerError, match="the server answers, but none of its workers became ready") as err:
            enhancer_link.connect_enhancer(RunOptions(enhancer=broker.endpoint, progress=True))
        assert "is a server running there" not in str(err.value)
        said = capsys.readouterr().err
        assert f"the enhancer at {broker.endpoint} answers, but none of its workers is ready yet" in said
        assert "no answer from the enhancer" not in said and "waiting up to 1 s more" in said
    finally:
        broker.stop()
        thread.join(10)


def test_a_run_does_not_wait_for_a_server_that_is_stopping(identity_checkpoint, monkeypatch):
    """Noticed in review: a server answering hello while it stops had a run wait for its workers (up to 70 s),
    then blamed their loading. A hello that says stopping ends the wait at once and says why."""
    from neural_sensor.enhance import server as server_module
    from neural_sensor.enhance.client import EnhancerError
    from scenarios import enhancer_link
    from scenarios.runner import RunOptions

    monkeypatch.setattr(server_module.Broker, "_spawn", lambda self, index: None)
    monkeypatch.setattr(enhancer_link, "REMOTE_WAIT_S", 20.0)
    broker = server_module.Broker(ServerConfig(bind="tcp://127.0.0.1:*", checkpoint=str(identity_checkpoint)))
    broker._stopping = True  # as close() sets it, while the sockets still answer
    thread = threading.Thread(target=broker.run, daemon=True)
    thread.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(EnhancerError, match="is stopping") as err:
            enhancer_link.connect_enhancer(RunOptions(enhancer=broker.endpoint, progress=False))
        assert time.monotonic() - t0 < 10.0
        assert "loading" not in str(err.value) and "--enhancer local" in str(err.value), err.value
    finally:
        broker.stop()
        thread.join(10)


def test_parent_pid_may_name_a_process_that_is_not_the_direct_parent(identity_checkpoint, tmp_path):
    """`serve-enhancer --parent-pid $$` under `timeout` (or `bash -c`, a supervisor) stopped at once: the broker took
    'no longer our parent' for 'gone'. A pid that is not the parent is now watched for being alive, a zombie (exited,
    not yet waited for) counting as gone."""
    import subprocess
    import sys

    from neural_sensor.host import process_alive

    watched = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    ready = tmp_path / "ready.json"
    server = subprocess.Popen(["timeout", "120", sys.executable, "-m", "neural_sensor.enhance.server", "--bind",
                               "tcp://127.0.0.1:*", "--checkpoint", str(identity_checkpoint), "--threads", "1",
                               "--parent-pid", str(watched.pid), "--ready-file", str(ready)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        t_end = time.monotonic() + 60
        while not ready.exists() and server.poll() is None and time.monotonic() < t_end:
            time.sleep(0.1)
        assert ready.exists(), server.communicate(timeout=30)[0] if server.poll() is not None else "no ready file"
        time.sleep(1.0)  # the broker checks every 0.2 s: it had stopped by now
        assert server.poll() is None
        watched.kill()  # not waited for: a zombie
        time.sleep(0.3)
        assert not process_alive(watched.pid)
        out, _ = server.communicate(timeout=30)
        assert server.returncode == 0 and "the process that started this server is gone; stopping" in out, out
    finally:
        watched.kill()
        watched.wait()
        if server.poll() is None:
            server.kill()
            server.wait()


def test_folders_of_a_server_killed_with_its_workers_are_swept_at_the_next_start(tmp_path, monkeypatch):
    """`kill -9 -- -<pgid>` (a server killed together with its workers: `docker stop` past its timeout, an
    out-of-memory kill) left /dev/shm/neural-sensor-enhancer-* (client blocks held in memory) and TMPDIR/enhancer-*
    for good. A server's folders now carry its broker's pid, refreshed every 5 s; a start removes those whose broker
    is gone and that were not refreshed for ten minutes, and nothing else."""
    import subprocess
    import sys
    import tempfile
    import uuid

    from neural_sensor.enhance.folders import OWNER_FILE, sweep_abandoned_server_folders

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    old = time.time() - 3600

    def folder(parent: Path, name: str, pid: int | None, refreshed: float) -> Path:
        path = parent / name
        path.mkdir()
        (path / "blk-1-abcdef12").write_bytes(b"x" * 100)
        if pid is not None:
            (path / OWNER_FILE).write_text(str(pid))
        for written in [*path.iterdir(), path]:  # nothing in it written since
            os.utime(written, (refreshed, refreshed))
        return path

    tag = uuid.uuid4().hex[:8]
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    made = []
    try:
        gone = [folder(tmp_path, f"enhancer-{tag}a", dead_pid, old)]
        kept = [folder(tmp_path, f"enhancer-{tag}b", os.getpid(), old),  # a live broker's (this process)
                folder(tmp_path, f"enhancer-{tag}c", dead_pid, time.time()),  # refreshed just now
                folder(tmp_path, f"enhancer-{tag}d", None, old),  # no owner file: not a server's of ours
                folder(tmp_path, f"other-{tag}", dead_pid, old)]  # another name
        if shm is not None:
            made = [folder(shm, f"neural-sensor-test-{tag}", dead_pid, old)]
            gone += made
        removed = sweep_abandoned_server_folders()
        assert set(removed) >= {str(p) for p in gone} and not any(p.exists() for p in gone)
        assert all(p.exists() for p in kept)
    finally:
        import shutil

        for path in made:
            shutil.rmtree(path, ignore_errors=True)


def test_what_listens_where_no_enhancer_answered_is_named(tmp_path):
    """A new user's endpoint pointed at another service (a web server, an ssh port) read as "is a server running
    there?", as a closed port does: to ZeroMQ both are silence. The run's error now says which it is."""
    import socket
    import threading

    import zmq

    from neural_sensor.enhance.listener import describe_listener

    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    closed_port = free.getsockname()[1]
    free.close()
    assert describe_listener(f"tcp://127.0.0.1:{closed_port}") == (f"nothing listens at 127.0.0.1:{closed_port} "
                                                                 "(connection refused)")
    assert describe_listener(f"ipc://{tmp_path / 'none.sock'}").startswith("nothing listens at ipc://")
    banner = socket.socket()
    banner.bind(("127.0.0.1", 0))
    banner.listen(8)

    def greet() -> None:  # an ssh server's first line to every connection
        while True:
            try:
                conn, _ = banner.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    threading.Thread(target=greet, daemon=True).start()
    silent = socket.socket()  # a web server: it waits for the client to speak first
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    try:
        port = banner.getsockname()[1]
        assert describe_listener(f"tcp://127.0.0.1:{port}") == (
            f"something at 127.0.0.1:{port} answers, but not as a ZeroMQ server (it sent b'SSH-2.0-Op'; another "
            "service on that port?)")
        port = silent.getsockname()[1]
        assert describe_listener(f"tcp://127.0.0.1:{port}", timeout_s=0.3).endswith("(it sent nothing; another "
                                                                                      "service on that port?)")
        port = router.bind_to_random_port("tcp://127.0.0.1")
        assert describe_listener(f"tcp://127.0.0.1:{port}") is None  # a ZeroMQ peer greets: the hello says more
    finally:
        banner.close()
        silent.close()
        router.close(linger=0)
        context.term()


def test_a_full_dev_shm_puts_the_shared_blocks_in_the_servers_folder(tmp_path, monkeypatch, capsys):
    """A new user's finding: with a container's /dev/shm full, `run --enhancer local` and `serve-enhancer` ended
    with a bare "[Errno 28] No space left on device" (writing the shared folder's nonce). The server's own folder
    holds the blocks then, said on stderr."""
    import errno
    from pathlib import Path

    from neural_sensor.enhance import protocol as wire
    from neural_sensor.enhance.server import Broker

    full = tmp_path / "dev_shm" / "neural-sensor-x"
    full.parent.mkdir()
    monkeypatch.setattr(wire, "shm_folder_for", lambda server_folder: full)
    original = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.parent == full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    broker = object.__new__(Broker)
    broker.nonce = "abc"
    server_folder = tmp_path / "server"
    server_folder.mkdir()
    broker._open_shm_folder(str(server_folder))
    assert broker.shm_folder == server_folder / "shm" and (server_folder / "shm" / "nonce").read_text() == "abc"
    assert not full.exists()
    err = capsys.readouterr().err
    assert "cannot keep shared blocks in" in err and "No space left on device" in err and "--shm-size" in err


def test_a_shared_folder_without_room_for_the_block_is_said_once(tmp_path, monkeypatch, capsys):
    """A new user's finding: with a container's 64 MB /dev/shm too small for the block, the ticks went over ZeroMQ's
    bytes (~3x slower) and only summary.json said so. The client says it once on stderr."""
    import errno
    import os

    from neural_sensor.enhance.client import EnhancerClient

    def no_room(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    client = EnhancerClient("tcp://127.0.0.1:9")
    try:
        client._shm_offer = {"folder": str(tmp_path / "neural-sensor-x"), "nonce": "n"}
        (tmp_path / "neural-sensor-x").mkdir()
        assert client.frame_buffers(6, 270, 480) is None and client.frame_buffers(6, 270, 480) is None
        err = capsys.readouterr().err
        assert err.count("has no room for a") == 1 and "--shm-size" in err and str(tmp_path) in err, err
        assert not list((tmp_path / "neural-sensor-x").iterdir())  # no half-made block left
    finally:
        client._shm_offer = None
        client.close()
