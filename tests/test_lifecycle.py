"""Process lifecycle and first-run behaviour of the CLI, with real processes and signals.

Each case here was found by trying the tool as a new user would: children that outlived their run,
temporary folders left behind, folders deleted, silent acceptance of bad input, tracebacks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from _cli import ROOT, TINY, cli as _cli
from benchmarks.lifecycle_soak import MARKER, processes_with_marker

# runs a signal must catch mid-run: at the rig's full size, so the demo cannot reach the end of its route (~400
# ticks; a second or two at 64x36) while a loaded machine keeps the test from sending the signal
LONG = ["--width", "480", "--height", "270", "--no-video", "--scene", "builder"]


def _start(args, tmp_path, marker):
    """A CLI run in its own TMPDIR, with a marker every child inherits; stderr is read line by line."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    # faulthandler: a crash prints where it happened (a SIGSEGV on SIGTERM seen once, 2026-12-04; 18 retries clean)
    env = dict(os.environ, TMPDIR=str(tmpdir), PYTHONFAULTHANDLER="1", **{MARKER: marker})
    # Ctrl-C as in a terminal: a test suite started in the background by a non-interactive shell (`pytest &`)
    # inherits SIGINT ignored, and so would the run, which then rightly keeps ignoring it
    proc = subprocess.Popen([sys.executable, "-m", "scenarios.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.set_blocking(proc.stderr.fileno(), False)
    return proc, tmpdir


def _read_err(proc) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(proc.stderr.fileno(), 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _wait_for(proc, text, timeout_s=240.0) -> str:
    """stderr up to the first occurrence of `text` (tqdm writes \\r-separated updates)."""
    seen = ""
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        seen += _read_err(proc)
        if text in seen:
            return seen
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared on stderr: {seen[-2000:]}")


def _leftovers(tmpdir: Path, out_parent: Path, marker: str) -> dict:
    deadline = time.monotonic() + 8.0
    alive = processes_with_marker(marker)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = processes_with_marker(marker)
    for pid, _ in alive:
        os.kill(pid, signal.SIGKILL)
    return {"processes": [c for _, c in alive],
            "tmp": sorted(p.name for p in tmpdir.iterdir() if not p.name.startswith("torchinductor_")),
            "hidden": sorted(p.name for p in out_parent.iterdir() if p.name.startswith("."))}


# ------------------------------------------------------------------ signals and children
@pytest.mark.parametrize("enhancer", [False, True], ids=["no-enhancer", "enhancer-local"])
def test_sigterm_mid_run_leaves_nothing(tmp_path, enhancer):
    marker = uuid.uuid4().hex
    out_parent = tmp_path / "records"
    out_parent.mkdir()
    args = ["demo", "--ticks", "100000", *LONG, "-o", str(out_parent / "out")]
    if enhancer:
        args += ["--enhancer", "local"]
    proc, tmpdir = _start(args, tmp_path, marker)
    _wait_for(proc, "cut_in:")  # the tick loop has started (the local server answered hello before it)
    if enhancer:
        assert any(p.name.startswith("enhancer-local-") for p in tmpdir.iterdir())
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    err = _read_err(proc)
    assert code == 143, f"exit {code}; the end of its stderr:\n{err[-4000:]}"
    assert "Traceback" not in err and "terminated" in err
    assert _leftovers(tmpdir, out_parent, marker) == {"processes": [], "tmp": [], "hidden": []}
    assert not (out_parent / "out").exists()


def test_sigterm_inside_an_extension_call_still_leaves_as_143():
    """A SIGTERM whose SystemExit a C extension wraps (numba's dispatcher, loading a kernel when the signal
    lands: "returned a result with an exception set") still unwinds as SystemExit 143, not exit status 1; other
    errors without a SIGTERM pass through unchanged."""
    from scenarios.signals import terminate_as_exception

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a CLI run (another test may have left one)
    try:
        with pytest.raises(SystemExit) as info:
            with terminate_as_exception():
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(5.0)  # the handler runs here
                except SystemExit as err:  # what the extension does with the handler's exception
                    raise SystemError("CPUDispatcher(...) returned a result with an exception set") from err
        assert info.value.code == 143 and isinstance(info.value.__cause__, SystemError)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        with pytest.raises(SystemExit) as info:  # the wrapped exception caught on the way (a tick delivered raw)
            with terminate_as_exception():
                try:
                    try:
                        os.kill(os.getpid(), signal.SIGTERM)
                        time.sleep(5.0)
                    except SystemExit as err:
                        raise SystemError("returned a result with an exception set") from err
                except Exception:  # noqa: BLE001 - what NeuralSensorRig._enhance does with an enhancer's error
                    pass
        assert info.value.code == 143
        with pytest.raises(SystemError, match="no signal"):
            with terminate_as_exception():
                raise SystemError("no signal")
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_ctrl_c_inside_an_extension_call_still_interrupts():
    """Ctrl-C's KeyboardInterrupt, wrapped by a C extension (as numba's dispatcher does with SIGTERM's SystemExit)
    and caught on the way, still leaves the run as KeyboardInterrupt, at the next tick; the default handler is back
    after."""
    from scenarios.signals import terminate_as_exception

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a CLI run
    try:
        with pytest.raises(KeyboardInterrupt):
            with terminate_as_exception():
                try:
                    try:
                        os.kill(os.getpid(), signal.SIGINT)
                        time.sleep(5.0)  # the handler runs here
                    except KeyboardInterrupt as err:
                        raise SystemError("returned a result with an exception set") from err
                except Exception:  # noqa: BLE001 - a caller that swallows the extension's error
                    pass
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt) as info:  # wrapped and not caught: the cause is kept
            with terminate_as_exception():
                try:
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(5.0)
                except KeyboardInterrupt as err:
                    raise SystemError("returned a result with an exception set") from err
        assert isinstance(info.value.__cause__, SystemError)
        from scenarios.signals import raise_if_signalled

        after = []
        with pytest.raises(KeyboardInterrupt):  # the tick loop's check leaves at once, not at the end of the run
            with terminate_as_exception():
                try:
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(5.0)
                except KeyboardInterrupt:
                    pass  # swallowed on the way
                raise_if_signalled()
                after.append("the next tick ran")
        assert after == []
        raise_if_signalled()  # nothing pending once the run is over

        def host(*_):  # a host application's own handler is left alone
            pass

        signal.signal(signal.SIGINT, host)
        with terminate_as_exception():
            assert signal.getsignal(signal.SIGINT) is host
        assert signal.getsignal(signal.SIGINT) is host
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_is_one_line_not_a_traceback(tmp_path):
    marker = uuid.uuid4().hex
    out_parent = tmp_path / "records"
    out_parent.mkdir()
    proc, tmpdir = _start(["demo", "--ticks", "100000", *LONG, "-o", str(out_parent / "out")], tmp_path, marker)
    seen = _wait_for(proc, "cut_in:")
    proc.send_signal(signal.SIGINT)
    code = proc.wait(60)
    err = _read_err(proc)
    assert code == 130, f"exit {code}; stderr before the signal:\n{seen[-1500:]}\nafter:\n{err[-1500:]}"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "interrupted" in err
    assert _leftovers(tmpdir, out_parent, marker) == {"processes": [], "tmp": [], "hidden": []}


def test_sigkilled_run_takes_its_enhancer_server_with_it(tmp_path):
    """No handler runs on SIGKILL: the server's parent watch stops it and removes its folder."""
    marker = uuid.uuid4().hex
    out_parent = tmp_path / "records"
    out_parent.mkdir()
    proc, tmpdir = _start(["demo", "--ticks", "100000", *LONG, "-o", str(out_parent / "out"),
                           "--enhancer", "local"], tmp_path, marker)
    _wait_for(proc, "cut_in:")
    servers = [pid for pid, cmd in processes_with_marker(marker) if "neural_sensor.enhance.server" in cmd]
    assert servers, "the local server should be running"
    proc.kill()
    proc.wait(30)
    left = _leftovers(tmpdir, out_parent, marker)
    assert left["processes"] == [] and left["tmp"] == []
    # the run's own temporary record folder cannot be removed by a SIGKILLed process: it is named for its run
    # (out, the pid), and the next run into the same --out removes it
    assert left["hidden"] and all(name.startswith(f".out.run-{proc.pid}-") for name in left["hidden"])
    again = _cli(["demo", "--ticks", "2", *TINY, "-o", str(out_parent / "out")], tmp_path)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out_parent.iterdir()) == ["out"]


def test_bad_deadline_starts_nothing(tmp_path):
    marker = uuid.uuid4().hex
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    for deadline in ("0", "-1", "nan"):
        result = _cli(["demo", *TINY, "-o", str(tmp_path / "out"), "--enhancer", "local",
                       "--enhancer-deadline-ms", deadline], tmp_path, env={"TMPDIR": str(tmpdir), MARKER: marker})
        assert result.returncode == 2, result.stderr
        assert "deadline" in result.stderr and "Traceback" not in result.stderr
    assert processes_with_marker(marker) == []
    assert list(tmpdir.iterdir()) == []
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ the record folder
def _run(out_dir, **kw):
    from scenarios.runner import RunOptions, run_scenario

    return run_scenario("cut_in", RunOptions(out_dir=out_dir, ticks=2, width=64, height=36, video=False,
                                             progress=False, **kw))


def test_out_replaces_only_the_records_own_files(tmp_path):
    from scenarios.record import MANIFEST

    user = tmp_path / "mine"
    user.mkdir()
    (user / "summary.json").write_text("{}")
    (user / "notes.txt").write_text("my notes")
    with pytest.raises(ValueError, match="holds what no run of this tool wrote there"):
        _run(user)
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt", "summary.json"]
    assert (user / "summary.json").read_text() == "{}"

    out = tmp_path / "out"
    _run(out)
    assert json.loads((out / MANIFEST).read_text())["files"] == ["log.jsonl", "strip.png", "summary.json"]
    _run(out / "bench")  # `bench` after `demo`: a record inside a record
    (out / "notes.txt").write_text("added after the run")
    first_log = (out / "log.jsonl").read_text()
    _run(out, seed=1)  # `demo` again
    assert (out / "bench" / "summary.json").exists() and (out / "notes.txt").read_text() == "added after the run"
    assert (out / "log.jsonl").read_text() != first_log
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_folder_holding_only_records_takes_a_record(tmp_path):
    """`bench` (out/bench), then `demo` (out/): a folder whose only entries are records (or empty folders) is
    not a stranger's; one with a stray file at any depth still is, and the scenario's own error comes first."""
    out = tmp_path / "out"
    _run(out / "bench")
    (out / "empty").mkdir()
    # a `bench` killed outright (SIGKILL: no handler ran) leaves its temporary folder beside out/bench; `demo` into
    # out/ took it for a stranger's and refused
    killed = out / ".bench.run-999999999-abcd1234"
    killed.mkdir()
    (killed / "log.jsonl").write_text("{}\n")
    _run(out)
    assert (out / "summary.json").exists() and (out / "bench" / "summary.json").exists()
    _run(out / "bench")  # the next run into bench removes it
    assert not killed.exists()
    other = tmp_path / "other"
    (other / "sub").mkdir(parents=True)
    (other / "sub" / "photo.jpg").write_bytes(b"\xff")
    with pytest.raises(ValueError, match=r"holds what no run of this tool wrote there \(sub;"):
        _run(other)
    (other / "sub").rename(other / ".sub.run-12-x")  # a run's temporary name holding a stranger's file: refused
    with pytest.raises(ValueError, match=r"holds what no run of this tool wrote there \(.sub.run-12-x;"):
        _run(other)
    (other / ".sub.run-12-x").rename(other / "sub")
    assert (other / "sub" / "photo.jpg").read_bytes() == b"\xff"
    from scenarios.runner import RunOptions, run_scenario

    with pytest.raises(ValueError, match="unknown scenario|no scenario|not a scenario"):
        run_scenario("cut_inn", RunOptions(out_dir=other, ticks=2, width=64, height=36, video=False, progress=False))


def test_a_run_leaves_its_folders_mode_alone(tmp_path):
    """install_record set every --out to 0755 (from when the private temporary folder itself was moved into
    place): a user's 0700 folder became world-readable, a group's setgid 2775 lost its group bits."""
    out = tmp_path / "private"
    out.mkdir()
    out.chmod(0o700)
    _run(out)
    assert (out / "summary.json").exists() and (out.stat().st_mode & 0o7777) == 0o700


def test_records_finishing_into_one_folder_at_once_stay_whole(tmp_path):
    """Three runs in threads finishing into one --out: one failed with FileNotFoundError on the manifest's
    temporary file (every install wrote the same `.manifest.json.tmp`). They now install one after another: the
    last record stays, whole, and nothing is left beside it."""
    import threading

    from scenarios.record import MANIFEST, install_record

    out = tmp_path / "out"
    errors, barrier = [], threading.Barrier(6)

    def finish(i):
        tmp = tmp_path / f".out.run-{i}"
        tmp.mkdir()
        names = ["summary.json", "log.jsonl"] + ([f"extra{i}.txt"] if i % 2 else [])
        for name in names:
            (tmp / name).write_text(str(i))
        barrier.wait()
        try:
            for _ in range(20):  # (each install moves the files out of tmp: put them back for the next)
                for name in names:
                    (tmp / name).write_text(str(i))
                install_record(tmp, out, names)
                tmp.mkdir()
        except Exception as err:  # noqa: BLE001 (the test reports whatever a thread raised)
            errors.append(err)

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    listed = json.loads((out / MANIFEST).read_text())["files"]
    assert sorted(p.name for p in out.iterdir()) == sorted(listed + [MANIFEST])  # one record's files, no leftovers
    assert len({(out / name).read_text() for name in listed}) == 1  # ... all of that one record


def test_damaged_manifest_is_refused(tmp_path):
    out = tmp_path / "out"
    _run(out)
    (out / "manifest.json").write_text('{"files": ["../../etc"]}')
    with pytest.raises(ValueError, match="manifest.json is damaged"):
        _run(out)


_EXITING_AGENTS = '''
import os, signal, sys
from scenarios.agent import BuiltinAgent


class Small(BuiltinAgent):
    def __init__(self, route_xy_m, target_speed_mps):
        super().__init__(route_xy_m, target_speed_mps, 64, 36)


class Signals(Small):  # SIGTERM to itself while its run_step runs
    def run_step(self, input_data, timestamp):
        os.kill(os.getpid(), signal.SIGTERM)
        return super().run_step(input_data, timestamp)


class ExitsInDestroy(Small):
    def destroy(self):
        sys.exit(0)
'''

_HOST = '''
import signal, sys
from scenarios.runner import RunOptions, run_scenario
agent, out, handler = sys.argv[1:]
if handler == "host":  # an application embedding the run with its own SIGTERM handler
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
try:
    run_scenario("cut_in", RunOptions(out_dir=out, ticks=2, width=64, height=36, video=False, progress=False,
                                      agent=agent))
    print("returned")
except SystemExit as exit_:
    print("SystemExit", exit_.code)
except Exception as err:
    print(type(err).__name__, err)
'''


@pytest.mark.parametrize("agent, handler, said", [
    # sys.exit() in destroy() is the agent's error, as in its other calls (it ended a passing run with exit 0)
    ("ExitsInDestroy", "ours", "AgentError the agent exiting_agents:ExitsInDestroy raised SystemExit: 0 in destroy()"),
    # a host application's own SIGTERM handler exiting while the agent's code runs is not taken for the agent's
    ("Signals", "host", "SystemExit 143"),
])
def test_an_exit_in_the_agents_code_is_told_from_a_signal(tmp_path, agent, handler, said):
    (tmp_path / "exiting_agents.py").write_text(_EXITING_AGENTS)
    (tmp_path / "host.py").write_text(_HOST)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    result = subprocess.run([sys.executable, str(tmp_path / "host.py"), f"exiting_agents:{agent}",
                             str(tmp_path / "out"), handler], capture_output=True, text=True, timeout=300, env=env)
    assert result.stdout.strip().splitlines()[-1] == said, (result.stdout, result.stderr[-2000:])


KILLS_ITS_ENHANCER = '''
import os
import signal
import time

from scenarios.agent import BuiltinAgent


class KillsTheEnhancer(BuiltinAgent):
    """At frame 3, SIGKILL this run's local enhancer server (a child of this process); then ticks a tenth of a
    second apart, so that a restarted server has the time to load its model within the run."""

    def run_step(self, input_data, timestamp):
        frame = input_data["world"][0]
        if frame == 3:
            for pid in os.listdir("/proc"):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        command = f.read()
                    with open(f"/proc/{pid}/stat") as f:
                        parent = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if parent == os.getpid() and b"neural_sensor.enhance.server" in command:
                    os.kill(int(pid), signal.SIGKILL)
        elif frame > 3:
            time.sleep(0.1)
        return super().run_step(input_data, timestamp)
'''


def test_a_local_enhancer_server_that_dies_mid_run_is_restarted(tmp_path, identity_checkpoint):
    """A new user's finding: killing the run's own local server (kill -9, the out-of-memory killer) left the rest of
    the run raw (132 of 160 ticks) with exit 0 and "reconnecting in the background ... is it still running?". The
    run restarts it on its endpoint, says so once, and the ticks are enhanced again; nothing is left behind."""
    marker = uuid.uuid4().hex
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    (tmp_path / "killer.py").write_text(KILLS_ITS_ENHANCER)
    result = _cli(["demo", *TINY, "--ticks", "150", "--enhancer", "local", "--enhancer-checkpoint",
                   str(identity_checkpoint), "--agent", f"{tmp_path / 'killer.py'}:KillsTheEnhancer", "-o",
                   str(tmp_path / "out")], tmp_path, env={"TMPDIR": str(tmpdir), MARKER: marker})
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("the local enhancer server exited (killed by signal 9) at frame") == 1, result.stderr
    # the outage said as it starts and as it ends (it was one line at the end of the run)
    assert result.stderr.count("the enhancer has not refined the last 3 ticks") == 1, result.stderr
    assert result.stderr.count("the enhancer refines the cameras again from frame") == 1, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["enhancer"]["local_server_restarts"] == 1
    ticks = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    enhanced = [t["frame"] for t in ticks if t["enhanced"]]
    assert enhanced and enhanced[-1] == ticks[-1]["frame"] and max(enhanced) > 40, enhanced[:5]
    assert processes_with_marker(marker) == [] and list(tmpdir.iterdir()) == []


def test_a_record_is_installed_on_a_filesystem_without_locks(tmp_path, monkeypatch):
    """A new user's finding: an output folder on a filesystem without locks (NFS without lockd) failed the run after
    all its work ("[Errno 37] No locks available"), its record lost. It is installed unguarded there."""
    import errno

    import scenarios.record as record

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(record.fcntl, "flock", no_locks)
    tmp = tmp_path / ".out.run-1"
    tmp.mkdir()
    (tmp / "summary.json").write_text("{}")
    record.install_record(tmp, tmp_path / "out", ["summary.json"])
    assert (tmp_path / "out" / "summary.json").read_text() == "{}" and not tmp.exists()


def test_the_cli_takes_sigterm_from_its_first_moment_and_leaves_signals_as_it_found_them():
    """A new user's finding: as a container's PID 1 (which the kernel gives no default action for SIGTERM), a
    `docker stop` before a run's own handler was dropped and the run went on to its end, exit 0. The CLI takes
    SIGTERM from its start (SystemExit 143); a run's handler takes over and hands it back; main() returns the
    process's handler as it was."""
    from scenarios import signals
    from scenarios.cli import main as cli_main

    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    signals.install_early_sigterm()
    try:
        assert signal.getsignal(signal.SIGTERM) is signals.early_sigterm
        with pytest.raises(SystemExit) as exit_:
            signals.early_sigterm(signal.SIGTERM, None)
        assert exit_.value.code == 143 and not signals.host_handles_signals()
        with signals.terminate_as_exception():
            assert signal.getsignal(signal.SIGTERM) is not signals.early_sigterm
        assert signal.getsignal(signal.SIGTERM) is signals.early_sigterm
    finally:
        signals.remove_early_sigterm()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert cli_main(["cache"]) == 0 and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
