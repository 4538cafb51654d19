"""SceneCache: hit, miss, corruption and concurrent builders."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from neural_sensor.reconstruct.cache import SceneCache, cache_key
from neural_sensor.testing import make_street_scene


def _builder(seed: int, calls: list | None = None, delay_s: float = 0.0):
    def build():
        if calls is not None:
            calls.append(seed)
        time.sleep(delay_s)
        return make_street_scene(2000, seed=seed), {"source": "street", "seed": seed,
                                                    "layout_name": f"street_{seed}"}, None
    return build


def test_miss_then_hit(tmp_path):
    cache = SceneCache(tmp_path)
    calls = []
    scene, meta = cache.get_or_build({"street": 1}, _builder(1, calls))
    assert meta["cached"] is False and meta["key"] == cache_key({"street": 1}) and calls == [1]
    again, meta2 = cache.get_or_build({"street": 1}, _builder(1, calls))
    assert meta2["cached"] is True and calls == [1]  # not built again
    np.testing.assert_array_equal(again.means, scene.means)
    _, other = cache.get_or_build({"street": 2}, _builder(2, calls))
    assert other["key"] != meta["key"] and calls == [1, 2]


def test_a_fresh_build_is_returned_as_later_runs_load_it(tmp_path):
    """The PLY stores log-scales, and exp(log(s)) is not always s in float32: the first run must get the scene
    every later run loads, bit for bit, not the one in memory."""
    built = make_street_scene(2000, seed=3)
    cache = SceneCache(tmp_path)
    first, meta = cache.get_or_build({"street": 3}, lambda: (built, {"source": "street"}, None))
    later, meta2 = cache.get_or_build({"street": 3}, lambda: (built, {"source": "street"}, None))
    assert meta["cached"] is False and meta2["cached"] is True
    assert not np.array_equal(built.scales, later.scales)  # the round trip does move some scales
    for field in ("means", "quats", "scales", "opacities", "sh", "labels", "instance"):
        np.testing.assert_array_equal(getattr(first, field), getattr(later, field), err_msg=field)


def test_a_build_can_add_files_to_its_entry(tmp_path):
    """build() may return a fourth item, name -> writer: each writer writes that file inside the entry (before
    the entry appears), and the file is there when the entry is served from the cache."""
    def build():
        return make_street_scene(1000, seed=5), {"source": "street"}, None, {"extra.txt": lambda p: p.write_text("hi")}

    _, meta = SceneCache(tmp_path).get_or_build({"street": 5}, build)
    _, again = SceneCache(tmp_path).get_or_build({"street": 5}, build)
    assert again["cached"] is True and again["path"] == meta["path"]
    assert (tmp_path / meta["key"] / "extra.txt").read_text() == "hi"


def test_damaged_entries_are_rebuilt_not_loaded(tmp_path, capsys):
    cache = SceneCache(tmp_path)
    _, meta = cache.get_or_build({"street": 3}, _builder(3))
    folder = tmp_path / meta["key"]
    damages = [
        lambda: (folder / "scene.ply").write_bytes((folder / "scene.ply").read_bytes()[:300]),  # truncated
        lambda: (folder / "meta.json").write_text("{not json"),
        lambda: (folder / "meta.json").write_text(json.dumps({**meta, "key": "someone-else"})),
        lambda: (folder / "meta.json").write_text(json.dumps({**meta, "n_gaussians": 7})),
        lambda: (folder / "meta.json").write_text("null"),  # JSON, not an object: AttributeError tracebacks
    ]
    for damage in damages:
        damage()
        calls = []
        scene, again = cache.get_or_build({"street": 3}, _builder(3, calls))
        assert again["cached"] is False and calls == [3] and len(scene) == 2000
        assert "unreadable" in capsys.readouterr().err
    (folder / "meta.json").write_text("[1]")
    assert SceneCache(tmp_path).entries()[0]["source"] is None  # `neural-sensor cache` lists it, no traceback

    def with_reference():  # a file the build adds (a reconstruction's reference.npz), damaged or gone: a
        # truncated one raised BadZipFile at every run, a deleted one ran without the enhancer's reference
        return (make_street_scene(1000, seed=4), {"source": "street"}, None,
                {"reference.npz": lambda p: np.savez(p, a=np.arange(5000))})

    _, meta = cache.get_or_build({"street": 4}, with_reference)
    folder = tmp_path / meta["key"]
    def same_size_other_bytes(name):  # a bad block in the middle: the size as stored, the contents not (the
        # reference is read only by the run, which failed with BadZipFile at every run of that scene)
        data = bytearray((folder / name).read_bytes())
        data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
        (folder / name).write_bytes(bytes(data))

    for damage in (lambda: (folder / "reference.npz").write_bytes((folder / "reference.npz").read_bytes()[:900]),
                   lambda: (folder / "reference.npz").unlink(), lambda: same_size_other_bytes("reference.npz")):
        damage()
        calls = []
        scene, again = cache.get_or_build({"street": 4}, lambda: (calls.append(4), with_reference())[1])
        assert again["cached"] is False and calls == [4] and len(scene) == 1000
        assert "reference.npz" in capsys.readouterr().err and (folder / "reference.npz").stat().st_size > 900


def test_a_killed_store_leaves_nothing_for_good_and_prune_says_only_what_it_removed(tmp_path, monkeypatch, capsys):
    """A new user's findings: a build killed mid-store (SIGKILL, a CI timeout) left its hidden temporary folder
    forever (not listed, not pruned, not counted): the next store removes those of processes that are gone; and
    `cache --prune-gb` said entries were removed that it could not remove."""
    import shutil
    import subprocess
    import sys

    cache = SceneCache(tmp_path, max_bytes=None)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = tmp_path / f".{'a' * 20}-{int(dead.stdout)}-x1y2z3"
    abandoned.mkdir()
    (abandoned / "scene.ply").write_bytes(b"half")
    hour_ago = time.time() - 3700
    for path in (abandoned / "scene.ply", abandoned):
        os.utime(path, (hour_ago, hour_ago))
    # the same dead pid, written a moment ago: a store in another container or machine sharing the cache, whose
    # pids mean nothing here (a reviewer saw a live store there removed): kept
    shared = tmp_path / f".{'c' * 20}-{int(dead.stdout)}-r5t6y7"
    shared.mkdir()
    running = tmp_path / f".{'b' * 20}-{os.getpid()}-q9w8e7"  # this process's own store in progress: kept
    running.mkdir()
    _, meta = cache.get_or_build({"street": 6}, _builder(6))
    assert not abandoned.exists() and running.exists() and shared.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([meta["key"], running.name, shared.name])
    real_rmtree = shutil.rmtree
    monkeypatch.setattr(shutil, "rmtree", lambda path, ignore_errors=False: None)  # as on a read-only folder
    assert cache.prune(0) == []
    from scenarios.cli import main

    assert main(["cache", "--cache", str(tmp_path), "--prune-gb", "0"]) == 0  # said nothing: `"removed": []`
    assert "over --prune-gb 0: what is left could not be removed" in capsys.readouterr().err
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert cache.prune(0) == [meta["key"]]


def test_stopping_a_local_server_always_removes_its_folder(tmp_path, monkeypatch):
    """A Ctrl-C landing while a run waited for its local enhancer to stop left /tmp/enhancer-local-XXXX behind."""
    from types import SimpleNamespace

    from neural_sensor.enhance import local

    folder = tmp_path / "enhancer-local-x"
    folder.mkdir()

    def interrupted(timeout=None):
        raise KeyboardInterrupt

    server = SimpleNamespace(process=SimpleNamespace(poll=lambda: None, terminate=lambda: None, wait=interrupted,
                                                     kill=lambda: None), folder=folder)
    with pytest.raises(KeyboardInterrupt):
        local.stop_server(server)
    assert not folder.exists()


def _build_in_process(root, seed, queue):
    scene, meta = SceneCache(root).get_or_build({"street": seed}, _builder(seed, delay_s=0.5))
    queue.put((meta["key"], len(scene), meta["cached"]))


def test_two_processes_building_the_same_scene(tmp_path):
    queue = multiprocessing.get_context("fork").Queue()
    procs = [multiprocessing.get_context("fork").Process(target=_build_in_process, args=(tmp_path, 4, queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    results = [queue.get(timeout=5) for _ in procs]
    assert all(p.exitcode == 0 for p in procs) and results[0][:2] == results[1][:2]
    # one built it, the other waited and read it (both had built it, sharing the cores: a new user's finding)
    assert sorted(cached for _, _, cached in results) == [False, True]
    assert [p.name for p in tmp_path.iterdir()] == [results[0][0]]  # one entry, no temporary folders or locks
    scene, meta = SceneCache(tmp_path).get_or_build({"street": 4}, _builder(4))
    assert meta["cached"] is True and len(scene) == 2000


def test_the_cache_keeps_its_bound_removing_what_was_used_least_recently(tmp_path, monkeypatch):
    """After each store, least recently used entries go until the cache fits its bound (a load counts as a use);
    the entry just stored stays even when it alone is over the bound; a bad bound in the environment is named."""
    import os

    from neural_sensor.reconstruct.cache import default_max_bytes

    free = SceneCache(tmp_path, max_bytes=None)
    for seed in (1, 2, 3):
        free.get_or_build({"street": seed}, _builder(seed))
    keys = [cache_key({"street": s}) for s in (1, 2, 3)]
    for age, key in zip((300, 200, 100), keys):  # used 300, 200 and 100 s ago
        os.utime(free.path(key), (time.time() - age, time.time() - age))
    sizes = {e["key"]: e["bytes"] for e in free.entries()}
    assert [e["key"] for e in free.entries()] == keys and min(sizes.values()) > 0
    # what tells two entries of one name apart (a new user could not): when each was stored, how many Gaussians
    assert all(e["made"] is not None and e["gaussians"] == len(_builder(1)()[0]) for e in free.entries())
    assert free.load(keys[0]) is not None  # a use: now the most recent
    assert [e["key"] for e in free.entries()] == [keys[1], keys[2], keys[0]]
    # a bound that holds three entries but not four: storing a fourth removes the least recently used (street 2)
    bounded = SceneCache(tmp_path, max_bytes=sum(sizes.values()) + sizes[keys[0]] // 2)
    _, meta = bounded.get_or_build({"street": 4}, _builder(4))
    assert sorted(e["key"] for e in bounded.entries()) == sorted([keys[2], keys[0], meta["key"]])
    # a bound below one entry keeps only the one just stored
    _, meta5 = SceneCache(tmp_path, max_bytes=1).get_or_build({"street": 5}, _builder(5))
    assert [e["key"] for e in bounded.entries()] == [meta5["key"]]
    assert SceneCache(tmp_path, max_bytes=None).prune(0) == [meta5["key"]] and bounded.entries() == []
    # a cache pointed at a folder holding other things lists and prunes only its own entries (named as keys)
    (tmp_path / "my_photos").mkdir()
    (tmp_path / "my_photos" / "a.jpg").write_bytes(b"x" * 1000)
    (tmp_path / "0123456789abcdef0123").mkdir()  # a damaged entry of its own: listed, pruned
    (tmp_path / "0123456789abcdef0123" / "scene.ply").write_bytes(b"y" * 10)
    assert [e["key"] for e in bounded.entries()] == ["0123456789abcdef0123"]
    assert SceneCache(tmp_path, max_bytes=None).prune(0) == ["0123456789abcdef0123"]
    assert (tmp_path / "my_photos" / "a.jpg").is_file()
    monkeypatch.setenv("NEURAL_SENSOR_CACHE_MAX_GB", "2.5")
    assert default_max_bytes() == 2_500_000_000 and SceneCache(tmp_path).max_bytes == 2_500_000_000
    monkeypatch.setenv("NEURAL_SENSOR_CACHE_MAX_GB", "1e300")  # beyond any disk (it was an OverflowError)
    assert default_max_bytes() == 10**18
    for unbounded in ("0", "none"):
        monkeypatch.setenv("NEURAL_SENSOR_CACHE_MAX_GB", unbounded)
        assert default_max_bytes() is None
    for bad in ("lots", "-1", "inf"):
        monkeypatch.setenv("NEURAL_SENSOR_CACHE_MAX_GB", bad)
        with pytest.raises(ValueError, match="NEURAL_SENSOR_CACHE_MAX_GB"):
            default_max_bytes()


def test_cli_cache_lists_and_prunes(tmp_path, capsys):
    """`neural-sensor cache` lists the entries least recently used first; --prune-gb trims; a bad size is named."""
    import os

    from scenarios.cli import main

    cache = SceneCache(tmp_path, max_bytes=None)
    for seed in (1, 2):
        cache.get_or_build({"street": seed}, _builder(seed))
    old = cache_key({"street": 2})
    os.utime(cache.path(old), (time.time() - 60, time.time() - 60))
    assert main(["cache", "--cache", str(tmp_path)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["entries"] == 2 and listed["removed"] == [] and listed["list"][0]["key"] == old
    assert [e["name"] for e in listed["list"]] == ["street_2", "street_1"]  # what each is a scene of
    total = sum(e["bytes"] for e in cache.entries())
    assert listed["total_gb"] == round(total / 1e9, 3) and all(e["mb"] > 0 for e in listed["list"])
    assert main(["cache", "--cache", str(tmp_path), "--prune-gb", str((total - 1) / 1e9)]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert pruned["removed"] == [old] and pruned["entries"] == 1
    assert main(["cache", "--cache", str(tmp_path), "--prune-gb", "1e300"]) == 0  # beyond any disk: an
    assert json.loads(capsys.readouterr().out)["removed"] == []  # OverflowError traceback and exit 1 before
    assert main(["cache", "--cache", str(tmp_path), "--prune-gb", "-1"]) == 2
    assert "--prune-gb" in capsys.readouterr().err
    (tmp_path / "scene.ply").write_bytes(b"ply")
    assert main(["cache", "--cache", str(tmp_path / "scene.ply")]) == 2
    assert "is a file, not a scene cache folder" in capsys.readouterr().err
    parent = tmp_path / "root"  # `--cache $NEURAL_SENSOR_CACHE` (the scenes folder's parent) listed 0 without a word
    SceneCache(parent / "scenes", max_bytes=None).get_or_build({"street": 3}, _builder(3))
    assert main(["cache", "--cache", str(parent)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["entries"] == 0
    assert f"its scenes/ folder does: --cache names the scene cache folder itself ({parent / 'scenes'})" in captured.err


def test_an_empty_cache_variable_counts_as_unset(monkeypatch, tmp_path):
    """NEURAL_SENSOR_CACHE= (set, empty) put the scene cache in ./scenes, wherever a run was started; training data
    (`train.state.default_data_root`) already took an empty one as unset."""
    from neural_sensor.reconstruct.cache import default_cache_root
    from neural_sensor.train.state import default_data_root

    monkeypatch.setenv("NEURAL_SENSOR_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cache = tmp_path / "home" / ".cache" / "neural_sensor"
    assert default_cache_root() == cache / "scenes"
    assert default_data_root("enhancer-run-data") == cache / "enhancer-run-data"  # one folder for both
    monkeypatch.setenv("NEURAL_SENSOR_CACHE", str(tmp_path))
    assert default_cache_root() == tmp_path / "scenes"


def test_a_cache_that_cannot_be_written_is_named(tmp_path, capsys, monkeypatch):
    """A read-only cache built the whole scene and then failed with a bare "[Errno 30] Read-only file system:
    '.../.key-xxx'": the command warns first, and the store names the cache and how to choose another, and keeps
    the scene for the process (it had failed after the whole build: a new user's finding)."""
    from scenarios.cli import _check_cache_folder

    (tmp_path / "a_file").write_text("x")
    cache = SceneCache(tmp_path / "a_file" / "scenes")
    scene, meta = cache.get_or_build({"street": 7}, _builder(7))
    assert len(scene) == 2000 and meta["cached"] is False and Path(meta["path"]).name == meta["key"]
    assert Path(meta["path"]).parent.name.startswith("neural_sensor-uncached-")
    err = capsys.readouterr().err
    assert re.search(r"the scene cache .*a_file/scenes cannot take the scene just built .*give --cache \(or "
                     r"\$NEURAL_SENSOR_CACHE\) a folder you can write; this run keeps it in ", err), err
    for command in ("run", "cache"):  # a file on the way: refused before any build (a run warned, built the
        # whole scene, then failed to keep it; `cache` listed nothing without a word)
        with pytest.raises(ValueError, match=f"--cache {tmp_path}/a_file/scenes: {tmp_path}/a_file is a file"):
            _check_cache_folder(tmp_path / "a_file" / "scenes", command)
    monkeypatch.setenv("NEURAL_SENSOR_CACHE", str(tmp_path / "a_file"))
    with pytest.raises(ValueError, match=f"NEURAL_SENSOR_CACHE {tmp_path}/a_file: {tmp_path}/a_file is a file"):
        _check_cache_folder(None, "cache")
    monkeypatch.delenv("NEURAL_SENSOR_CACHE")
    home = tmp_path / "home"  # ~/.cache a file: said for a command that uses the cache, by its default place, and
    home.mkdir()  # not for one that does not (serve-enhancer had failed on it, naming "$NEURAL_SENSOR_CACHE None")
    (home / ".cache").write_text("x")
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(ValueError, match=f"the scene cache's default place: {home}/.cache is a file"):
        _check_cache_folder(None, "run")
    _check_cache_folder(None, "serve-enhancer")
    monkeypatch.delenv("HOME")  # (and no home at all: Path.home() raises RuntimeError for an unknown uid)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: (_ for _ in ()).throw(RuntimeError("no home"))))
    _check_cache_folder(None, "run")
    _check_cache_folder(Path("/proc/scenes"), "cache")  # nothing can be written there (root included): listing
    assert capsys.readouterr().err == ""  # needs no write, a run is warned first (a cache holding its scene serves)
    _check_cache_folder(Path("/proc/scenes"), "run")
    assert "warning: the scene cache /proc/scenes cannot be written" in capsys.readouterr().err
    _check_cache_folder(tmp_path / "fine", "run")
    assert capsys.readouterr().err == "" and not (tmp_path / "fine").exists()


def _build_slowly(root, tag, queue):
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)  # (a forked child of pytest: Ctrl-C as a user's)

    def build():
        queue.put((tag, "building"))
        time.sleep(2.0)
        return make_street_scene(2000, seed=1), {"source": "street"}, None
    try:
        _, meta = SceneCache(root, max_bytes=None).get_or_build({"street": "slow"}, build)
        queue.put((tag, "cached" if meta["cached"] else "built"))
    except KeyboardInterrupt:
        queue.put((tag, "interrupted"))


def test_a_waiter_interrupted_leaves_the_builders_lock(tmp_path):
    """A reviewer's finding: a process waiting for another's build, then interrupted (Ctrl-C, once it said it
    waits), removed the builder's lock file, and the next process built the same scene alongside it."""
    import signal

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    a = context.Process(target=_build_slowly, args=(tmp_path, "A", queue))
    a.start()
    assert queue.get(timeout=60) == ("A", "building")
    b = context.Process(target=_build_slowly, args=(tmp_path, "B", queue))
    b.start()
    time.sleep(0.5)  # B waits on A's lock
    os.kill(b.pid, signal.SIGINT)
    b.join(30)
    c = context.Process(target=_build_slowly, args=(tmp_path, "C", queue))
    c.start()
    a.join(60)
    c.join(60)
    said = [queue.get(timeout=5) for _ in range(3)]
    assert ("B", "interrupted") in said and ("A", "built") in said and ("C", "cached") in said, said
    assert [p.name for p in tmp_path.iterdir()] == [cache_key({"street": "slow"})]  # no lock file left


def test_a_lock_file_left_by_a_killed_build_is_swept_and_a_held_one_is_not(tmp_path):
    """Lock files of builds killed mid-build (SIGKILL: nothing removed them) are swept once untouched for an hour
    and held by nobody; a held or a recent one stays."""
    import fcntl

    old = time.time() - 7200
    stale, held, fresh = (tmp_path / f".{c * 20}.lock" for c in "abc")
    for path in (stale, held, fresh):
        path.write_text("")
    for path in (stale, held):
        os.utime(path, (old, old))
    with open(held, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        SceneCache(tmp_path).sweep_abandoned_stores()
    assert sorted(p.name for p in tmp_path.iterdir()) == [held.name, fresh.name]


def test_another_users_private_entry_is_named_not_rebuilt(tmp_path, monkeypatch):
    """A new user's finding: in a shared cache, an entry another user made with umask 077 was "unreadable;
    rebuilding it" twice (minutes each for a reconstruction), then failed all the same (PermissionError). It is
    named at once, with its owner and the fix."""
    cache = SceneCache(tmp_path)
    _, meta = cache.get_or_build({"street": 7}, _builder(7))
    original = Path.read_text

    def private(self, *args, **kwargs):
        if self.parent == Path(meta["path"]):
            raise PermissionError(13, "Permission denied")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", private)
    with pytest.raises(ValueError, match=r"cannot be read by this user \(Permission denied: uid \d+ made it.*"
                                         r"chmod -R a\+rX .*NEURAL_SENSOR_CACHE"):
        cache.get_or_build({"street": 7}, _builder(7))
    monkeypatch.undo()
    assert cache.load(meta["key"]) is not None  # left as it was
