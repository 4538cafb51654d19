"""SceneCache: content-addressed folders of built Gaussian scenes.

An entry is `root/<key>/{scene.ply, meta.json, layout.json}` (plus any files the build
adds, such as a reconstruction's `reference.npz`) where the key hashes
everything the scene depends on (the inputs and, for reconstructions, the
checkpoint's hash). `get_or_build(inputs, build)` returns the cached scene or
builds, stores and returns it:

- writes go to a temporary folder in `root` that is renamed into place, so a
  reader never sees a torn entry, and two processes building the same key both
  succeed (the first rename wins, the other's copy is discarded);
- an entry that fails to load (truncated PLY, bad JSON, meta for another key, a file of another size
  than meta.json's `file_bytes` says it was stored at, or missing: a truncated log reference, or of other
  contents than its `file_crc32` says: a damaged log reference read only later, by the run)
  is reported on stderr, removed and rebuilt, never returned;
- a store's temporary folder is named .<key>-<pid>-<random>: one whose process is gone (a SIGKILL or a CI
  timeout mid-store) and that nobody has written for an hour is removed by the next store;
- a scene just built is returned as read back from its entry, not as built: the PLY stores log-scales, and
  exp(log(s)) is not always s in float32, so the first run of a scene would otherwise render (and record a
  drive in) a scene one float step away from what every later run loads (measured: the demo street's
  scales differed by up to 1.5e-5, and the reconstruction of a drive recorded in it had 331,637 Gaussians
  against 331,640 from the cached street).
- the cache is bounded: after each store, entries used least recently (a load or a store marks an entry used)
  are removed until the cache holds at most `max_bytes` ($NEURAL_SENSOR_CACHE_MAX_GB, default 10 GB; 0: no
  bound), never the entry just stored. Every code change that enters a key leaves its old entries behind (a
  reconstruction of the demo drive is about 120 MB with its log reference), so without a bound the cache only
  grows. `neural-sensor cache` lists the entries and prunes on request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable

from neural_sensor.gaussians import GaussianScene
from neural_sensor.host import abandoned
from neural_sensor.parallel import parallel_section


def default_cache_root() -> Path:
    """$NEURAL_SENSOR_CACHE/scenes, else ~/.cache/neural_sensor/scenes (an empty variable counts as unset: it put
    the cache in ./scenes, wherever the run was started)."""
    root = os.environ.get("NEURAL_SENSOR_CACHE")
    return Path(root if root else Path.home() / ".cache" / "neural_sensor") / "scenes"


DEFAULT_MAX_GB = 10.0


def default_max_bytes() -> int | None:
    """$NEURAL_SENSOR_CACHE_MAX_GB in bytes (default DEFAULT_MAX_GB; 0 or "none": no bound)."""
    raw = os.environ.get("NEURAL_SENSOR_CACHE_MAX_GB", "").strip()
    if not raw:
        return int(DEFAULT_MAX_GB * 1e9)
    if raw.lower() == "none":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"NEURAL_SENSOR_CACHE_MAX_GB must be a number of gigabytes (0 or 'none': no bound), "
                         f"got {raw!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"NEURAL_SENSOR_CACHE_MAX_GB must be a finite number >= 0, got {raw!r}")
    return None if value == 0 else bytes_from_gb(value)


def bytes_from_gb(gb: float) -> int:
    """Gigabytes (finite, >= 0) as bytes; a bound beyond any disk (1e9 GB) is taken as 1e9 GB (1e300 overflowed)."""
    assert math.isfinite(gb) and gb >= 0, gb
    return int(min(gb, 1e9) * 1e9)


KEY_PATTERN = re.compile(r"[0-9a-f]{20}")  # an entry's folder name, as cache_key makes it
STORE_PATTERN = re.compile(r"\.[0-9a-f]{20}-(\d+)-\w+")  # a store in progress: .<key>-<pid>-<random>
LOCK_PATTERN = re.compile(r"\.[0-9a-f]{20}\.lock")  # a build in progress (SceneCache._building)


def cache_key(inputs: dict) -> str:
    """The entry name for a JSON-serialisable description of everything a scene depends on."""
    payload = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _entry_name(folder: Path, meta: dict) -> str | None:
    """What an entry is a scene of, for a person: its layout's name (a builder scene, or a generated drive's
    reconstruction, whose layout.json names it) or its drive log's folder; None when neither says."""
    if meta.get("layout_name"):
        return str(meta["layout_name"])
    if meta.get("log"):
        return f"log {Path(meta['log']).name}"
    try:
        return json.loads((folder / "layout.json").read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return None


class SceneCache:
    """See the module docstring."""

    def __init__(self, root: Path | str | None = None, max_bytes: int | None | str = "env"):
        """root: None = default_cache_root(); max_bytes: the bound kept after each store (None: no bound;
        "env": default_max_bytes())."""
        self.root = Path(root) if root is not None else default_cache_root()
        self.max_bytes = default_max_bytes() if max_bytes == "env" else max_bytes

    def path(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str) -> tuple[GaussianScene, dict] | None:
        """The entry for key, or None if absent; a damaged entry is removed (and None returned)."""
        folder = self.path(key)
        if not folder.exists():
            return None
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if not isinstance(meta, dict):
                raise ValueError(f"meta.json holds {type(meta).__name__}, not an object")
            if meta.get("key") != key:
                raise ValueError(f"meta.json belongs to key {meta.get('key')!r}")
            if not isinstance(meta.get("file_bytes", {}), dict):
                raise ValueError("meta.json's file_bytes is not an object")
            for name, size in (meta.get("file_bytes") or {}).items():  # each file as stored: a truncated or
                if (folder / name).stat().st_size != size:  # deleted one (the log reference) is damage too
                    raise ValueError(f"{name} is {(folder / name).stat().st_size} bytes, {size} when stored")
            if not isinstance(meta.get("file_crc32", {}), dict):
                raise ValueError("meta.json's file_crc32 is not an object")
            for name, crc in (meta.get("file_crc32") or {}).items():  # (entries stored before it: sizes only)
                if file_crc32(folder / name) != crc:  # ~20 ms for a reconstruction's 55 MB
                    raise ValueError(f"{name} holds other bytes than when stored (its CRC-32 differs)")
            scene = GaussianScene.load_ply(folder / "scene.ply")
            if len(scene) != meta.get("n_gaussians"):
                raise ValueError(f"scene.ply holds {len(scene)} Gaussians, meta.json says {meta.get('n_gaussians')}")
        except PermissionError as err:  # another user's entry, kept private by their umask: not damage, not ours
            try:  # to remove (it had been "rebuilt" twice, minutes each, then failed all the same: a new user's
                owner = f"uid {folder.stat().st_uid}"  # finding)
            except OSError:
                owner = "another user"
            raise ValueError(f"scene cache entry {folder} cannot be read by this user ({err.strerror}: {owner} made "
                             f"it, with a umask that keeps it private): ask them to run `chmod -R a+rX {folder}` "
                             "(and set umask 022 or 002 for a shared cache), or use a cache of your own "
                             "(NEURAL_SENSOR_CACHE=DIR, or --cache DIR)") from None
        except (ValueError, OSError) as err:
            print(f"neural-sensor: scene cache entry {folder} is unreadable ({err}); rebuilding it", file=sys.stderr)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        _mark_used(folder)
        return scene, {**meta, "cached": True, "path": str(folder)}

    def entries(self) -> list[dict]:
        """Every complete entry, least recently used first: {"key", "bytes", "last_used" and "made" (unix s; made:
        when stored, None if unknown), "gaussians", "source" (the meta's: "reconstruction", "builder" for a generated
        world's scene, None if unreadable), "name" (the layout's name or the drive log's folder, `_entry_name`)}.
        Only folders named as `cache_key` names them count: a cache pointed at a folder that holds other things never
        lists (nor prunes) those."""
        out = []
        if not self.root.is_dir():
            return out
        for folder in self.root.iterdir():
            # a store in progress starts with "."; anything not named like a key is not the cache's
            if not KEY_PATTERN.fullmatch(folder.name) or not folder.is_dir():
                continue
            try:
                size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
                used = folder.stat().st_mtime
            except OSError:  # removed meanwhile by another process
                continue
            try:
                meta = json.loads((folder / "meta.json").read_text())
                if not isinstance(meta, dict):
                    raise ValueError("meta.json is not an object")
                source = meta.get("source") or ("builder" if "builder_version" in meta else None)
            except (OSError, ValueError):  # damaged: listed (and pruned first among equals) all the same
                meta, source = {}, None
            try:
                made = (folder / "meta.json").stat().st_mtime
            except OSError:
                made = None
            out.append({"key": folder.name, "bytes": size, "last_used": used, "source": source,
                        "name": _entry_name(folder, meta), "made": made, "gaussians": meta.get("n_gaussians")})
        return sorted(out, key=lambda e: (e["last_used"], e["key"]))

    def prune(self, max_bytes: int, keep: tuple[str, ...] = ()) -> list[str]:
        """Remove least recently used entries (not those in keep) until the cache holds at most max_bytes;
        returns the removed keys."""
        assert max_bytes >= 0, max_bytes
        entries = self.entries()
        total = sum(e["bytes"] for e in entries)
        removed = []
        for entry in entries:
            if total <= max_bytes:
                break
            if entry["key"] in keep:
                continue
            shutil.rmtree(self.path(entry["key"]), ignore_errors=True)
            if self.path(entry["key"]).exists():  # not ours to remove (another user's, a read-only folder)
                continue
            total -= entry["bytes"]
            removed.append(entry["key"])
        return removed

    def sweep_abandoned_stores(self) -> list[str]:
        """Remove the temporary folders of stores whose process is gone (killed mid-store: SIGKILL, a CI timeout)
        and that nobody has written for an hour (`host.abandoned`: a pid means nothing in a cache shared with another
        machine or container: a live store there is written to); returns their names. A store's folder is named
        .<key>-<pid>-<random>; older ones (no pid) are left."""
        gone = []
        if not self.root.is_dir():
            return gone
        for folder in self.root.iterdir():
            if LOCK_PATTERN.fullmatch(folder.name):
                _remove_stale_lock(folder)
                continue
            match = STORE_PATTERN.fullmatch(folder.name)
            if match is None or not abandoned(folder, int(match.group(1))):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                gone.append(folder.name)
        return gone

    def store(self, key: str, scene: GaussianScene, meta: dict, layout_json: str | None = None,
              files: dict[str, Callable[[Path], None]] | None = None) -> dict:
        """Write an entry atomically (temporary folder + rename); returns its meta. `files`: name -> a writer
        that writes that file of the entry, given its path."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.sweep_abandoned_stores()
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}-{os.getpid()}-", dir=self.root))
        except OSError as err:  # (it was a bare "[Errno 30] Read-only file system: '.../.key-xxx'")
            raise CacheNotWritable(f"the scene cache {self.root} cannot take the scene just built "
                                   f"({err.strerror or err}): give --cache (or $NEURAL_SENSOR_CACHE) a folder you "
                                   "can write") from None
        meta = {**meta, "key": key, "n_gaussians": len(scene)}
        try:
            scene.save_ply(tmp / "scene.ply")
            if layout_json is not None:
                (tmp / "layout.json").write_text(layout_json)
            for name, write in (files or {}).items():
                write(tmp / name)
            stored = [f for f in sorted(tmp.iterdir()) if f.is_file()]
            meta["file_bytes"] = {f.name: f.stat().st_size for f in stored}
            meta["file_crc32"] = {f.name: file_crc32(f) for f in stored}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            tmp.chmod(0o755)
            try:
                tmp.rename(self.path(key))
            except OSError:  # another process stored the same key first: theirs is as good as ours
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _mark_used(self.path(key))
        if self.max_bytes is not None:
            removed = self.prune(self.max_bytes, keep=(key,))
            if removed:
                print(f"neural-sensor: scene cache {self.root} over {self.max_bytes / 1e9:g} GB: removed {len(removed)} "
                      f"least recently used entries ($NEURAL_SENSOR_CACHE_MAX_GB sets the bound)", file=sys.stderr)
        return {**meta, "cached": False, "path": str(self.path(key))}

    def get_or_build(self, inputs: dict, build: Callable[[], tuple]) -> tuple[GaussianScene, dict]:
        """The scene for `inputs`: from the cache, or build() -> (scene, meta, layout_json) or (scene, meta,
        layout_json, files) stored first (files: name -> a writer of that file of the entry; see `store`)."""
        key = cache_key(inputs)
        hit = self.load(key)
        if hit is not None:
            return hit
        with self._building(key):  # another process building the same key is waited for, then read
            hit = self.load(key)
            if hit is not None:
                return hit
            start = time.perf_counter()
            with parallel_section():  # (a build runs numba's kernels, maybe while rigs render: neural_sensor.parallel)
                scene, meta, layout_json, *files = build()
            meta = {**meta, "build_s": round(time.perf_counter() - start, 2)}
            try:
                meta = self.store(key, scene, meta, layout_json, files[0] if files else None)
            except CacheNotWritable as err:  # kept for this process only, as the run's warning said (it failed
                fallback = SceneCache(_process_scratch(), max_bytes=None)  # after the whole build: a new user's
                print(f"neural-sensor: {err}; this run keeps it in {fallback.root} until it ends",  # finding)
                      file=sys.stderr)
                meta = fallback.store(key, scene, meta, layout_json, files[0] if files else None)
        return GaussianScene.load_ply(Path(meta["path"]) / "scene.ply"), meta  # what later runs load (above)

    @contextlib.contextmanager
    def _building(self, key: str):
        """Hold the build of `key` across processes (an flock on root/.<key>.lock): two runs started at once on an
        empty cache had both built the same scene, sharing the cores, each about 6x slower than one alone (a new
        user's finding). The waiting one says so on stderr. The holder removes the file when done; a lock taken on
        a file removed or replaced meanwhile is taken again on the path's file (the lock-file protocol). Where no
        lock can be taken (a read-only root, a filesystem without locks) the build goes on unguarded, as before:
        two copies, the first stored wins."""
        try:
            import fcntl

            self.root.mkdir(parents=True, exist_ok=True)
        except (ImportError, OSError):
            yield
            return
        lock_path = self.root / f".{key}.lock"
        handle, said, held = None, False, False
        try:
            while True:
                try:
                    handle = open(lock_path, "a+")
                except OSError:
                    break  # (unguarded)
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not said:
                        said = True
                        print(f"neural-sensor: another process is building scene {key} in {self.root}; waiting for it",
                              file=sys.stderr, flush=True)
                    fcntl.flock(handle, fcntl.LOCK_EX)
                except OSError:  # (no locks on this filesystem)
                    handle.close()
                    handle = None
                    break
                try:
                    same = os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino
                except OSError:
                    same = False
                if same:
                    held = True
                    break
                handle.close()  # (its holder removed it as we waited: lock the path's file)
                handle = None
            yield
        finally:
            if held:  # removed, then released (a waiter on it locks the path's new file); a process interrupted
                try:  # while it waited removes nothing (the holder's file stays the lock)
                    lock_path.unlink()
                except OSError:
                    pass
            if handle is not None:
                handle.close()


class CacheNotWritable(OSError):
    """The scene cache's folder cannot take a new entry (read-only, another user's, full)."""


_scratch: list[Path] = []


def _process_scratch() -> Path:
    """A temporary folder of this process's own for the scenes an unwritable cache cannot keep (removed at exit)."""
    if not _scratch:
        import atexit

        _scratch.append(Path(tempfile.mkdtemp(prefix="neural_sensor-uncached-")))
        atexit.register(shutil.rmtree, _scratch[0], True)
    return _scratch[0]


STALE_LOCK_S = 3600.0  # a build lock file untouched this long that nobody holds was left by a killed process


def _remove_stale_lock(path: Path) -> None:
    """Remove a build lock file (`SceneCache._building`) left by a process killed while it built (SIGKILL: nothing
    removed it): untouched for STALE_LOCK_S and not held by anyone (a non-blocking lock succeeds)."""
    try:
        import fcntl

        if time.time() - path.stat().st_mtime < STALE_LOCK_S:
            return
        with open(path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink()
    except (ImportError, OSError):  # (held, gone, or not ours to remove)
        pass


def file_crc32(path: Path, chunk_bytes: int = 1 << 24) -> int:
    """zlib's CRC-32 of a file's bytes, read in chunks."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            crc = zlib.crc32(chunk, crc)
    return crc


def _mark_used(folder: Path) -> None:
    """Record a use of an entry (its folder's modification time: what `SceneCache.prune` orders by)."""
    try:
        os.utime(folder)
    except OSError:  # removed meanwhile by another process's prune: nothing to mark
        pass
