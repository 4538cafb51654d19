"""Enhancer server and client over real loopback sockets with real processes."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from _enhancer import frames as _frames
from neural_sensor.enhance import protocol as wire
from neural_sensor.enhance.client import EnhancerClient, EnhancerError, EnhancerVersionError
from neural_sensor.enhance.local import local_server, start_server, stop_server
from neural_sensor.enhance.model import Enhancer, checkpoint_hash
from neural_sensor.enhance.server import ServerConfig, check_bind, is_loopback
from neural_sensor.rig import NeuralSensorRig, SensorSpec
from neural_sensor.testing import make_street_scene
from neural_sensor.world import AgentState, WorldSnapshot, pose_from_xyz_yaw

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "enhancer-small"


@pytest.fixture(scope="module")
def server(identity_checkpoint):
    with local_server(checkpoint=identity_checkpoint, workers=2, threads=1) as srv:
        yield srv


def test_hello_stats_and_an_identity_round_trip(server, identity_checkpoint):
    # through the broker, whose round trips p50_ms / p99_ms time (test_enhance_shm.py covers the direct path)
    with EnhancerClient(server.endpoint, deadline_ms=5000, direct=False) as client:
        hello = client.hello()
        assert hello["protocol_version"] == wire.PROTOCOL_VERSION and hello["model_name"] == "identity"
        assert hello["checkpoint_hash"] == checkpoint_hash(identity_checkpoint) and hello["workers"] == 2
        frames = _frames(0)
        result = client.enhance(frames)
        assert result.enhanced, result.reason
        for got, sent in zip(result.rgb, frames):
            np.testing.assert_array_equal(got, sent["rgb"])  # uint8 on the wire, exact for uint8-valued input
        stats = client.stats()
        assert stats["requests"] >= 3 and stats["frames_enhanced"] >= 3 and stats["p50_ms"] > 0


def test_fuzz_of_a_thousand_malformed_messages_all_get_error_replies(server):
    rng = np.random.default_rng(123)
    good_frame = {k: (v if k == "camera" else wire.encode_array(v)) for k, v in _frames(1, 1)[0].items()}

    def malformed(i):
        kind = i % 10
        if kind == 0:
            return rng.bytes(int(rng.integers(0, 300)))
        if kind == 1:
            return msgpack.packb([[i, "x"], None, 2.5, "hello", True][i % 5])  # not a map
        if kind == 2:
            return msgpack.packb({"v": int(rng.integers(2, 1000)), "id": i, "op": "enhance"})
        if kind == 3:
            return msgpack.packb({"v": 1, "id": i, "op": rng.choice(["", "run", "exec", "HELLO"]).item()})
        if kind == 4:
            shape = [int(s) for s in rng.integers(10**5, 10**7, size=int(rng.integers(2, 5)))]
            return msgpack.packb({"v": 1, "id": i, "op": "enhance", "frames": [
                {**good_frame, "rgb": {"__ndarray__": True, "dtype": "uint8", "shape": shape, "data": b"\0" * 8}}]})
        if kind == 5:
            field = rng.choice(["rgb", "depth", "alpha"]).item()
            bad = [None, 3, "x", [1, 2], {"__ndarray__": False}][i % 5]
            return msgpack.packb({"v": 1, "id": i, "op": "enhance", "frames": [{**good_frame, field: bad}]})
        if kind == 6:
            return msgpack.packb({"v": 1, "id": i, "op": "enhance", "frames": good_frame})
        if kind == 7:
            data = bytearray(wire.make_request("enhance", i, _frames(i, 1)))  # a real request, truncated
            return bytes(data[: int(rng.integers(1, len(data)))])
        if kind == 8:  # an unhashable dtype
            return msgpack.packb({"v": 1, "id": i, "op": "enhance", "frames": [
                {**good_frame, "depth": {**good_frame["depth"], "dtype": [["float32"], {"a": 1}][i % 2]}}]})
        # kind 9: zero-sized axes whose product still matches empty data
        return msgpack.packb({"v": 1, "id": i, "op": "enhance", "frames": [
            {**good_frame, "alpha": {"__ndarray__": True, "dtype": "uint8", "shape": [0, 2**26, 2**26], "data": b""}}]})

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    n = 1200
    try:
        for i in range(n):
            sock.send_multipart([b"", malformed(i)])
        replies = []
        while len(replies) < n and sock.poll(10_000):
            replies.append(msgpack.unpackb(sock.recv_multipart()[-1], raw=False))
        assert len(replies) == n
        assert all(r["ok"] is False and r["error"]["type"] in ("BadMessage", "VersionMismatch", "BadRequest",
                                                               "LimitExceeded") for r in replies)
        # replies that could name their request do (ids 2-6, 8, 9 mod 10 are readable ints)
        assert all(r["id"] == i for i, r in enumerate(replies) if i % 10 in (2, 3, 4, 5, 6, 8, 9))
    finally:
        sock.close(0)
    with EnhancerClient(server.endpoint, deadline_ms=5000) as client:  # still serving good requests
        assert client.enhance(_frames(5)).enhanced
        assert client.stats()["errors"] >= n


def test_two_clients_on_one_server_get_their_own_replies(server):
    results, errors = {}, []

    def run(name, seed):
        try:
            with EnhancerClient(server.endpoint, deadline_ms=10_000) as client:
                for k in range(10):
                    frames = _frames(seed * 100 + k, n=2)
                    result = client.enhance(frames)
                    assert result.enhanced, result.reason
                    for got, sent in zip(result.rgb, frames):
                        np.testing.assert_array_equal(got, sent["rgb"])
                results[name] = True
        except Exception as err:  # noqa: BLE001 - surfaced below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in (("a", 1), ("b", 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results == {"a": True, "b": True}


def test_requests_that_arrive_together_run_as_one_batch(identity_checkpoint):
    with local_server(checkpoint=identity_checkpoint, workers=1, threads=1) as srv:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(srv.endpoint)
        try:
            # a big request keeps the only worker busy while eight small ones queue up behind it
            sock.send_multipart([b"", wire.make_request("enhance", "big", _frames(0, n=2, h=720, w=1280))])
            for i in range(8):
                sock.send_multipart([b"", wire.make_request("enhance", f"small{i}", _frames(i, n=1))])
            ids = set()
            while len(ids) < 9 and sock.poll(30_000):
                reply = wire.parse_reply(sock.recv_multipart()[-1])
                assert reply["ok"], reply
                ids.add(reply["id"])
            assert ids == {"big"} | {f"small{i}" for i in range(8)}
            with EnhancerClient(srv.endpoint) as client:
                stats = client.stats()
            assert stats["enhance_requests"] == 9 and stats["jobs"] < 9, stats
        finally:
            sock.close(0)


def test_requests_beyond_the_queues_bound_are_answered_busy_at_once(identity_checkpoint):
    """One client's 60 requests without a deadline queued without bound (the broker grew by 700 MB) and held up
    another's tick past its deadline: past MAX_QUEUED_REQUESTS waiting, a request is answered Busy at once."""
    from neural_sensor.enhance.server import MAX_QUEUED_REQUESTS

    with local_server(checkpoint=identity_checkpoint, workers=1, threads=1) as srv:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(srv.endpoint)
        try:  # a big request keeps the only worker busy while the small ones arrive
            sock.send_multipart([b"", wire.make_request("enhance", "big", _frames(0, n=2, h=720, w=1280))])
            extra = 8
            for i in range(MAX_QUEUED_REQUESTS + extra):
                sock.send_multipart([b"", wire.make_request("enhance", f"small{i}", _frames(i, n=1))])
            replies = []
            while len(replies) < MAX_QUEUED_REQUESTS + extra + 1 and sock.poll(30_000):
                replies.append(wire.parse_reply(sock.recv_multipart()[-1]))
            busy = [r for r in replies if not r["ok"]]
            assert len(replies) == MAX_QUEUED_REQUESTS + extra + 1 and 0 < len(busy) <= extra + 1, replies
            assert all(r["error"]["type"] == "Busy" and "requests waiting; try again" in r["error"]["message"]
                       for r in busy)
            # a queue full of requests past their deadline makes room for a fresh one (it had been refused Busy)
            sock.send_multipart([b"", wire.make_request("enhance", "big2", _frames(0, n=2, h=720, w=1280))])
            for i in range(MAX_QUEUED_REQUESTS):
                sock.send_multipart([b"", wire.make_request("enhance", f"late{i}", _frames(i, n=1), deadline_ms=1)])
            time.sleep(0.05)
            sock.send_multipart([b"", wire.make_request("enhance", "fresh", _frames(0, n=1), deadline_ms=60_000)])
            answered = {}
            while "fresh" not in answered and sock.poll(30_000):
                reply = wire.parse_reply(sock.recv_multipart()[-1])
                answered[reply["id"]] = reply
            assert answered["fresh"]["ok"], answered["fresh"]
            assert all(not answered[f"late{i}"]["ok"] and answered[f"late{i}"]["error"]["type"] == "DeadlineExceeded"
                       for i in range(MAX_QUEUED_REQUESTS) if f"late{i}" in answered)
        finally:
            sock.close(0)


def test_an_oversized_tick_is_refused_at_once_not_after_the_deadline(server, monkeypatch):
    with EnhancerClient(server.endpoint, deadline_ms=5000) as client:
        client.hello()
        monkeypatch.setattr(wire, "MAX_MESSAGE_BYTES", 10_000)  # this process only: the server keeps 64 MiB
        result = client.enhance(_frames(0))
        assert not result.enhanced and "exceeds" in result.reason and result.latency_ms < 1000


def test_the_rig_delivers_raw_frames_whatever_the_enhancer_raises():
    scene, sensors, snapshots = _rig_and_snapshots()

    class Broken:
        def enhance(self, frames):
            raise RuntimeError("socket exploded")

    frames = NeuralSensorRig(scene, sensors, backend="cpu", enhancer=Broken()).capture(next(snapshots))
    assert all(not f.meta["enhanced"] and "socket exploded" in f.meta["enhancer_reason"] for f in frames.values())

    class WrongVersion:
        def enhance(self, frames):
            raise EnhancerVersionError("server speaks protocol version 2; this client speaks 1")

    with pytest.raises(EnhancerVersionError):
        NeuralSensorRig(scene, sensors, backend="cpu", enhancer=WrongVersion()).capture(next(snapshots))


def test_a_missed_deadline_gives_the_raw_render_with_a_reason(server):
    with EnhancerClient(server.endpoint, deadline_ms=5000) as client:
        client.hello()
        result = client.enhance(_frames(3, n=6, h=270, w=480), deadline_ms=0.5)
        # the reason cites the request's deadline (it cited what was left of it: -948 ms, 999 ms, 996 ms ...)
        assert not result.enhanced and result.reason.endswith("within 0.5 ms"), result.reason
        assert client.enhance(_frames(4)).enhanced  # the late reply to the first request is not taken for this one
    # a closed client says so (it connected again before, and reported a missed deadline)
    closed = client.enhance(_frames(5))
    assert not closed.enhanced and closed.reason == f"this EnhancerClient of {server.endpoint} is closed"
    with pytest.raises(EnhancerError, match="is closed"):
        client.hello()


def test_version_mismatch_at_hello_names_both_versions():
    ctx = zmq.Context.instance()
    fake = ctx.socket(zmq.ROUTER)
    fake.setsockopt(zmq.LINGER, 0)
    port = fake.bind_to_random_port("tcp://127.0.0.1")

    def answer():
        if fake.poll(5000):
            ident, empty, payload = fake.recv_multipart()
            rid = msgpack.unpackb(payload, raw=False)["id"]
            fake.send_multipart([ident, empty, msgpack.packb({"v": 7, "id": rid, "ok": True, "protocol_version": 7})])

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        with EnhancerClient(f"tcp://127.0.0.1:{port}", deadline_ms=3000) as client:
            with pytest.raises(EnhancerVersionError, match=r"version 7.*speaks 1"):
                client.hello()
    finally:
        thread.join()
        fake.close(0)


def test_non_loopback_binds_need_curve_keys(tmp_path):
    assert is_loopback("tcp://127.0.0.1:5555") and is_loopback("tcp://localhost:1") and is_loopback("ipc:///tmp/x")
    assert not is_loopback("tcp://0.0.0.0:5555") and not is_loopback("tcp://*:5555")
    assert is_loopback("tcp://[::1]:5555") and is_loopback("tcp://127.1.2.3:5555") and is_loopback("tcp://LOCALHOST:1")
    # names that only start like loopback ones were taken for loopback: a public bind without CurveZMQ
    for name in ("tcp://127.attacker.net:5555", "tcp://localhost.example.com:5555", "tcp://[::1ab]:5555"):
        assert not is_loopback(name), name
    with pytest.raises(ValueError, match="must be tcp://HOST:PORT or ipc://PATH, got 'inproc://x'"):
        check_bind(ServerConfig(bind="inproc://x", checkpoint="x"))  # "listened" where no process can reach it
    assert not is_loopback("tcp://192.168.1.4:5555")
    for bind in ("tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://10.0.0.2:5555"):
        with pytest.raises(ValueError, match="not a loopback address.*CurveZMQ"):
            check_bind(ServerConfig(bind=bind))
    with pytest.raises(ValueError, match="both"):
        check_bind(ServerConfig(bind="tcp://0.0.0.0:5555", curve_secret_key=str(tmp_path / "k")))


@pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq has no CURVE support")
def test_curve_server_answers_only_clients_with_allowed_keys(tmp_path, identity_checkpoint):
    import zmq.auth

    server_public, server_secret = zmq.auth.create_certificates(tmp_path, "server")
    (tmp_path / "clients").mkdir()
    allowed_public, allowed_secret = zmq.auth.create_certificates(tmp_path / "clients", "allowed")
    (tmp_path / "other").mkdir()
    _, other_secret = zmq.auth.create_certificates(tmp_path / "other", "intruder")
    from neural_sensor.enhance.server import Broker

    broker = Broker(ServerConfig(bind="tcp://127.0.0.1:*", checkpoint=str(identity_checkpoint), workers=1,
                                 threads_per_worker=1, curve_secret_key=server_secret,
                                 curve_clients=str(tmp_path / "clients")))
    thread = threading.Thread(target=broker.run)
    thread.start()
    try:
        public_key, _ = zmq.auth.load_certificate(server_public)
        with EnhancerClient(broker.endpoint, curve_server_public_key=public_key,
                            curve_client_certificate=allowed_secret, retries=0) as client:
            assert client.hello(timeout_ms=5000)["model_name"] == "identity"
        with EnhancerClient(broker.endpoint, curve_server_public_key=public_key,
                            curve_client_certificate=other_secret, retries=0) as intruder:
            with pytest.raises(Exception, match="failed after 1 attempts"):
                intruder.hello(timeout_ms=1000)
    finally:
        broker.stop()
        thread.join()


def _rig_and_snapshots():
    scene = make_street_scene(20_000, seed=1)
    sensors = [SensorSpec.mounted(f"cam{i}", 64, 40, 70.0, (1.5, 0.0, 1.6), yaw_rad=i * 1.0) for i in range(3)]
    ego = AgentState(0, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(0.0, -1.75, 0.0, 0.0), 0.0)
    return scene, sensors, (WorldSnapshot(i, i * 0.05, ego, ()) for i in range(10**9))


def test_kill_9_mid_run_rig_keeps_delivering_and_recovers_within_2_s(identity_checkpoint):
    scene, sensors, snapshots = _rig_and_snapshots()
    server = start_server(checkpoint=identity_checkpoint, threads=1)
    port_endpoint = server.endpoint
    client = EnhancerClient(port_endpoint, deadline_ms=3000)
    rig = NeuralSensorRig(scene, sensors, backend="cpu", enhancer=client)
    try:
        client.wait_ready()
        for _ in range(5):
            frames = rig.capture(next(snapshots))
            assert all(f.meta["enhanced"] for f in frames.values()), [f.meta for f in frames.values()]
        server.kill()  # SIGKILL: no goodbye
        raw_ticks = 0
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end:  # ticks keep coming, raw and flagged
            frames = rig.capture(next(snapshots))
            assert len(frames) == 3 and all(f.rgb.shape == (40, 64, 3) for f in frames.values())
            assert not any(f.meta["enhanced"] for f in frames.values())
            assert all(f.meta["enhancer_reason"] for f in frames.values())
            raw_ticks += 1
        assert raw_ticks >= 3
        server = start_server(checkpoint=identity_checkpoint, bind=port_endpoint, threads=1)
        t_ready = time.monotonic()
        while True:
            frames = rig.capture(next(snapshots))
            if all(f.meta["enhanced"] for f in frames.values()):
                break
            assert time.monotonic() - t_ready < 2.0, "not enhanced again within 2 s of the restart"
    finally:
        client.close()
        stop_server(server)


def test_scenario_runs_with_a_local_enhancer(tmp_path, identity_checkpoint):
    from scenarios.runner import RunOptions, run_scenario

    summary = run_scenario("cut_in", RunOptions(out_dir=tmp_path / "rec", ticks=4, width=64, height=36, video=False,
                                                cache_dir=tmp_path / "cache", progress=False, enhancer="local",
                                                enhancer_deadline_ms=10_000,
                                                enhancer_checkpoint=identity_checkpoint))
    assert summary["enhancer"]["ticks_enhanced"] == 4 and summary["enhancer"]["model_name"] == "identity"
    # the paths the enhanced ticks took (not the one planned for a tick after the last)
    assert summary["enhancer"]["transport_ticks"] == {"shm/direct": 4}
    assert summary["enhancer"]["transport"] == "shm/direct"
    assert summary["stage_ms_median"]["enhance"] > 0


def test_hello_says_how_many_log_views_the_checkpoint_takes(tmp_path, identity_checkpoint):
    """The rig sends the drive-log reference only to a checkpoint trained with it: the hello passes on its
    config's reference_views (0 when absent or not a positive integer)."""
    import shutil

    from neural_sensor.enhance.server import Broker

    for value, expected in ((2, 2), (None, 0), (True, 0), (-1, 0)):
        folder = tmp_path / f"views-{value}"
        shutil.copytree(identity_checkpoint, folder)
        config = json.loads((folder / "config.json").read_text())
        config.pop("reference_views", None)
        if value is not None:
            config["reference_views"] = value
        (folder / "config.json").write_text(json.dumps(config))
        broker = Broker(ServerConfig(bind="tcp://127.0.0.1:*", checkpoint=str(folder), workers=1))
        try:
            assert broker._hello()["reference_views"] == expected
        finally:
            broker.close()


def test_the_cpu_precision_is_chosen_checked_and_said_at_hello(identity_checkpoint):
    """A server resolves --precision on its host (auto: bfloat16 with AMX) and says it at hello; an unknown one
    is refused before anything starts, by the broker, `start_server` and a run's options."""
    from neural_sensor.enhance.precision import resolve_cpu_precision
    from neural_sensor.enhance.server import Broker
    from scenarios.enhancer_link import check_enhancer_options
    from scenarios.runner import RunOptions

    for precision in ("auto", "float32", "bfloat16"):
        broker = Broker(ServerConfig(bind="tcp://127.0.0.1:*", checkpoint=str(identity_checkpoint), workers=1,
                                     precision=precision))
        try:
            assert broker._hello()["cpu_precision"] == resolve_cpu_precision(precision)
        finally:
            broker.close()
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16, got 'half'"):
        Broker(ServerConfig(bind="tcp://127.0.0.1:*", checkpoint=str(identity_checkpoint), precision="half"))
    with pytest.raises(ValueError, match="precision must be one of"):
        start_server(checkpoint=identity_checkpoint, precision="half")
    with pytest.raises(ValueError, match="precision must be one of"):
        check_enhancer_options(RunOptions(enhancer="local", enhancer_precision="half"))
    with pytest.raises(ValueError, match="--enhancer-precision is for --enhancer local"):
        check_enhancer_options(RunOptions(enhancer="tcp://127.0.0.1:5555", enhancer_precision="float32"))
    check_enhancer_options(RunOptions(enhancer="local", enhancer_precision="bfloat16"))


def test_workers_start_with_a_short_openmp_spin_unless_the_user_set_one(identity_checkpoint, monkeypatch):
    """A worker is spawned with WORKER_ENV (GOMP_SPINCOUNT=30000: its threads sleep soon after a reply, leaving
    the cores to a client on the same host); a value the user set wins; the broker's own environment is left as
    it was."""
    import multiprocessing.context

    from neural_sensor.enhance.server import WORKER_ENV, Broker

    seen = []  # the environment each worker was started with (a spawned process copies it as it starts)
    start = multiprocessing.context.SpawnProcess.start

    def recording_start(self):
        seen.append(os.environ.get("GOMP_SPINCOUNT"))
        start(self)

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", recording_start)
    for user in (None, "7"):
        if user is None:
            monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
        else:
            monkeypatch.setenv("GOMP_SPINCOUNT", user)
        broker = Broker(ServerConfig(bind="tcp://127.0.0.1:*", checkpoint=str(identity_checkpoint), workers=1))
        broker.close()
        assert seen.pop() == (user or WORKER_ENV["GOMP_SPINCOUNT"])
        assert os.environ.get("GOMP_SPINCOUNT") == user


def test_missing_or_damaged_checkpoints_are_refused_at_start(tmp_path, identity_checkpoint):
    from neural_sensor.enhance.server import Broker

    with pytest.raises(ValueError, match="config.json unreadable"):
        Broker(ServerConfig(bind="tcp://127.0.0.1:*", checkpoint=str(tmp_path / "missing")))
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text((identity_checkpoint / "config.json").read_text())
    (damaged / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match=r"its weights do not read \(model.safetensors: "):
        Broker(ServerConfig(bind="tcp://127.0.0.1:*", checkpoint=str(damaged)))
    with pytest.raises(RuntimeError, match="exited with code 2.*damaged"):
        start_server(checkpoint=damaged)
    # a reconstructor's folder started three workers that each crashed with a traceback, and the run quoted the
    # log's last 2000 characters from mid-word (a new user's finding): refused by the broker, quoted in one line
    from neural_sensor.checkpoints import DEFAULT_RECONSTRUCTOR, default_checkpoint

    with pytest.raises(RuntimeError) as error:
        start_server(checkpoint=default_checkpoint(DEFAULT_RECONSTRUCTOR))
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith("the local enhancer server exited with code 2: serve-enhancer: enhancer checkpoint ")
    assert message.endswith("a checkpoint of class ReconNet, not Enhancer (a diffusers UNet2DModel folder loads too)")


def test_cli_refuses_a_bad_enhancer_endpoint_and_a_public_bind(tmp_path, capsys):
    from scenarios.cli import main
    from scenarios.enhancer_link import check_enhancer_options
    from scenarios.runner import RunOptions

    for endpoint in ("http://x", "tcp://nowhere", "tcp://127.0.0.1:99999"):  # argparse's exit 2 naming the option
        with pytest.raises(SystemExit) as exit_:
            main(["demo", "--ticks", "1", "--enhancer", endpoint, "-o", str(tmp_path / "o"),
                  "--cache", str(tmp_path / "c")])
        assert exit_.value.code == 2 and "argument --enhancer: local, none or a server's endpoint" in (
            capsys.readouterr().err)
    with pytest.raises(ValueError, match=r"endpoint \(or 'local'\) 'tcp://nowhere': expected tcp://HOST:PORT"):
        check_enhancer_options(RunOptions(enhancer="tcp://nowhere"))  # the API says it before anything starts
    with pytest.raises(ValueError, match="enhancer endpoint 'ipc://': no path"):
        EnhancerClient("ipc://")
    assert main(["serve-enhancer", "--bind", "tcp://127.0.0.1"]) == 2
    assert "bind 'tcp://127.0.0.1': expected tcp://HOST:PORT with a port 1-65535 (or *)" in capsys.readouterr().err
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert main(["serve-enhancer", "--bind", "tcp://0.0.0.0:5599"]) == 2
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # nothing left installed
    assert "not a loopback address" in capsys.readouterr().err


@pytest.mark.skipif(not (SHIPPED / "config.json").exists(), reason="checkpoints/enhancer-small is not trained yet")
def test_shipped_checkpoint_improves_a_fixed_heldout_render():
    from neural_sensor.metrics import psnr
    from neural_sensor.reconstruct.model import ReconNet
    from neural_sensor.train.synthetic import make_world
    from neural_sensor.train.train_enhancer import WORLD_CONFIG, world_pairs

    recon = ReconNet.from_pretrained(SHIPPED.parent / "reconstructor-small")
    pairs = world_pairs(make_world(1_000_003, "heldout", WORLD_CONFIG), recon, with_masks=True)
    off = pairs["kind"] > 0  # every target kind but "interpolated"
    out = Enhancer.from_pretrained(SHIPPED).enhance(pairs["rgb"][off], pairs["depth"][off], pairs["alpha"][off])
    raw = psnr(pairs["rgb"][off], pairs["target"][off])
    enhanced = psnr(out, pairs["target"][off])
    assert enhanced > raw + 0.3, (raw, enhanced)


def test_neural_camera_with_an_enhancer_endpoint_delivers_refined_images(server):
    carla = pytest.importorskip("carla")
    import queue

    from carla_bridge.sensor import NeuralCamera
    from carla_bridge.standin import StandInBlueprint, StandInWorld

    world = StandInWorld()
    ego = world.spawn_actor(StandInBlueprint("vehicle.tesla.model3"), carla.Transform(carla.Location(0.0, 1.75, 0.0)))
    scene = make_street_scene(20_000, seed=0)
    images = {}
    for name, endpoint in (("raw", None), ("enhanced", server.endpoint)):
        camera = NeuralCamera(world, {"image_size_x": 64, "image_size_y": 48, "fov": 90},
                              carla.Transform(carla.Location(1.5, 0, 1.6)), ego, scene, backend="cpu",
                              enhancer=endpoint, enhancer_deadline_ms=10_000)
        got = queue.Queue()
        camera.listen(got.put)
        world.tick()
        images[name] = np.frombuffer(got.get(timeout=20).raw_data, np.uint8).reshape(48, 64, 4).astype(int)
        assert camera.last_meta["enhanced"] is (endpoint is not None), camera.last_meta
        camera.destroy()
    # the identity enhancer hands back the render (uint8 on the wire): equal to within one grey level
    assert np.abs(images["raw"] - images["enhanced"]).max() <= 1


@pytest.mark.parametrize("temporal_blend", [0.0, 0.6], ids=["plain", "accumulated"])
def test_rig_renders_into_the_clients_block_and_delivers_frames_of_its_own(server, temporal_blend):
    """With an EnhancerClient, the rig renders straight into the client's shared block (frame_buffers) and the
    worker's reply lands there too; every delivered image is the frame's own memory: the next tick (written into
    the same block) leaves it as it was. The identity enhancer hands back the render exactly (float32 both ways)."""
    scene = make_street_scene(20_000, seed=0)
    specs = [SensorSpec.mounted(name, 40, 24, 90.0, (1.5, 0.0, 1.6), yaw_rad=yaw)
             for name, yaw in (("front", 0.0), ("left", 1.0))]
    raw_rig = NeuralSensorRig(scene, specs, backend="cpu", lod_px=0.0)
    with EnhancerClient(server.endpoint, deadline_ms=10_000) as client:
        client.hello()
        rig = NeuralSensorRig(scene, specs, backend="cpu", lod_px=0.0, enhancer=client, temporal_blend=temporal_blend)
        ticks = []
        for t in range(3):
            ego = AgentState(0, "car", (4.5, 1.9, 1.5), pose_from_xyz_yaw(2.0 * t, -1.75, 0.0, 0.0))
            snapshot = WorldSnapshot(t, 0.05 * t, ego, ())
            frames = rig.capture(snapshot)
            assert all(f.meta["enhanced"] for f in frames.values()), [f.meta["enhancer_reason"] for f in frames.values()]
            assert client._lent_bytes > 0  # the render's arrays were lent from the block
            start, size = client._block_address, client._block[1]
            for f in frames.values():
                assert not start <= f.rgb.ctypes.data < start + size, "a delivered image lies in the block"
            ticks.append({sid: f.rgb.copy() for sid, f in frames.items()} | {"frames": frames})
            if temporal_blend == 0.0:
                raw = raw_rig.capture(snapshot)
                for sid, f in frames.items():
                    np.testing.assert_array_equal(f.rgb, raw[sid].rgb)
        for kept in ticks:  # later ticks rewrote the block: what was delivered stays
            for sid, f in kept["frames"].items():
                np.testing.assert_array_equal(f.rgb, kept[sid])
        assert not np.array_equal(ticks[0]["front"], ticks[2]["front"])  # the car moved


def test_wait_ready_says_once_what_it_waits_for_then_names_the_endpoint():
    """A closed port is only silence to ZeroMQ: a run waiting for a remote enhancer tells the person so once,
    then fails naming the endpoint."""
    from neural_sensor.enhance.client import EnhancerError

    with zmq.Context.instance().socket(zmq.ROUTER) as probe:  # a port nobody listens on after this block
        port = probe.bind_to_random_port("tcp://127.0.0.1")
    told = []
    client = EnhancerClient(f"tcp://127.0.0.1:{port}", deadline_ms=100.0)
    try:
        with pytest.raises(EnhancerError, match=f"enhancer at tcp://127.0.0.1:{port} not ready within 1 s"):
            client.wait_ready(timeout_s=0.8, waiting=told.append, waiting_after_s=0.2)
    finally:
        client.close()
    assert len(told) == 1 and 0.3 < told[0] < 0.7, told


def test_an_ipv6_loopback_endpoint_serves(identity_checkpoint):
    """tcp://[::1]:PORT passes the endpoint checks as a loopback address; the server binds it and a client reaches
    it (both sockets have ZeroMQ's IPv6 option on)."""
    import socket

    from neural_sensor.enhance.server import Broker

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as err:
        pytest.skip(f"this host has no IPv6 loopback ({err})")
    broker = Broker(ServerConfig(bind="tcp://[::1]:*", checkpoint=str(identity_checkpoint), workers=1,
                                 threads_per_worker=1))
    thread = threading.Thread(target=broker.run)
    thread.start()
    try:
        assert broker.endpoint.startswith("tcp://[::1]:")
        with EnhancerClient(broker.endpoint, deadline_ms=20_000, retries=0) as client:
            assert client.wait_ready(timeout_s=60)["model_name"] == "identity"
            assert client.enhance(_frames(4, n=1)).enhanced
    finally:
        broker.stop()
        thread.join()


def test_the_clients_own_mistakes_are_named_at_the_call(tmp_path):
    """A new user's findings: a camera id that is not a str cost a server round trip and came back as "reply does
    not match the request's cameras"; a frame without one raised KeyError; enhance(deadline_ms=0 / -5 / nan /
    True) were taken; retries=-1 failed "after 0 attempts"; frame_buffers() after close() made a shared block
    nobody removed; a header's "v": true passed as version 1; a two-frame message was said to have three."""
    frames = [{"camera": 5, "rgb": np.zeros((4, 4, 3), np.float32), "depth": np.ones((4, 4), np.float32),
               "alpha": np.ones((4, 4), np.float32)}]
    client = EnhancerClient("tcp://127.0.0.1:1", deadline_ms=50.0, retries=0)
    try:
        with pytest.raises(ValueError, match=r'frames\[0\] needs a "camera" id, a non-empty str, got 5'):
            client.enhance(frames)
        del frames[0]["camera"]
        with pytest.raises(ValueError, match="needs a \"camera\" id"):
            client.enhance(frames)
        frames[0]["camera"] = "CAM_FRONT"
        for bad in (0, -5, float("nan"), True, 1e12):
            with pytest.raises(ValueError, match="enhance: deadline_ms must be in"):
                client.enhance(frames, deadline_ms=bad)
        client._shm_offer = {"folder": str(tmp_path), "nonce": "x"}  # as a hello that offered shared memory
    finally:
        client.close()
    assert client.frame_buffers(6, 27, 48) is None and list(tmp_path.iterdir()) == []
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="retries must be an int >= 0"):
            EnhancerClient("tcp://127.0.0.1:1", retries=bad)
    with pytest.raises(ValueError, match="deadline_ms must be in"):
        EnhancerClient("tcp://127.0.0.1:1", deadline_ms=True)
    for version in (True, 1.0):
        with pytest.raises(wire.ProtocolError, match="client speaks protocol version"):
            wire.parse_request(wire.pack({"v": version, "id": "a", "op": "hello"}))


def test_a_message_of_two_frames_is_said_to_have_two(identity_checkpoint, monkeypatch):
    from neural_sensor.enhance import server as server_module

    monkeypatch.setattr(server_module.Broker, "_spawn", lambda self, index: None)
    broker = server_module.Broker(ServerConfig(bind="tcp://127.0.0.1:*", checkpoint=str(identity_checkpoint)))
    try:
        with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as raw:
            raw.setsockopt(zmq.LINGER, 0)
            raw.connect(broker.endpoint)
            raw.send_multipart([b"", wire.make_request("hello", "a"), wire.make_request("hello", "b")])
            assert broker.frontend.poll(5000)
            broker._on_frontend()
            assert raw.poll(5000)
            reply = msgpack.unpackb(raw.recv_multipart()[-1])
            assert reply["error"]["message"] == "expected one message frame, got 2", reply
    finally:
        broker.close()


def test_a_frame_whose_output_is_not_finite_is_an_error_not_a_success():
    """Float rgb of 1e30 (finite, far outside [0, 1]) on the float32 wire came back all NaN, answered ok=True and
    delivered as enhanced. The worker now answers such a frame's request with a WorkerError naming it."""
    from neural_sensor.enhance.worker import _run_jobs

    class Overflowing:  # as a real network does with inputs of 1e30: NaN out
        def enhance(self, rgb, depth, alpha, reference=None, valid=None, out=None):
            for target, image in zip(out, rgb):
                target[...] = np.nan if float(np.max(image)) > 1e6 else image

    sane, wild = _frames(0, n=2), _frames(1, n=2)
    wild[1]["rgb"] = np.full_like(wild[1]["rgb"], 1e30)
    jobs = [(b"a", wire.make_request("enhance", "r1", sane)), (b"b", wire.make_request("enhance", "r2", wild))]
    replies = {key: (ok, wire.parse_reply(reply)) for key, ok, reply in _run_jobs(Overflowing(), jobs)}
    assert replies[b"a"][0] and replies[b"a"][1]["ok"]
    ok, reply = replies[b"b"]
    assert not ok and reply["error"]["type"] == "WorkerError"
    assert "frames[1]: the model's output is not finite" in reply["error"]["message"]
