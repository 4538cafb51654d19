"""What this machine allows: whether a folder takes a file (a real write probe: `os.access` says yes to root
everywhere, /proc included), how much memory is free for a job that holds all its images, and whether a process
(or the temporary folder it left) is still there."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def write_problem(folder: Path) -> str | None:
    """Why no file can be written in `folder`, or None if one can: a temporary file is made there and removed
    (missing folders are made for the probe and removed again)."""
    folder = Path(folder)
    made = []
    try:
        for parent in reversed([folder, *folder.parents]):
            if not parent.exists():
                parent.mkdir()
                made.append(parent)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    finally:
        for parent in reversed(made):
            try:
                parent.rmdir()
            except OSError:
                pass
    return None


def check_writable_parent(option: str, path: Path) -> None:
    """Raise ValueError naming the command line's `option` when a file stands where `path`'s folders would be or
    nothing can be written where they start; missing folders are fine (the command creates them)."""
    for ancestor in Path(path).parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise ValueError(f"{option} {path}: {ancestor} is a file, not a folder")
            problem = write_problem(ancestor)  # a real probe: os.access says yes to root, even in /proc
            if problem:
                raise ValueError(f"{option} {path}: nothing can be written in {ancestor} ({problem})")
            return


def _stat_bytes(path: Path, key: str) -> int:
    """One counter of a cgroup's memory.stat, 0 where absent."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_headroom(limit_file: Path, usage_file: Path, stat_file: Path, inactive_key: str) -> int | None:
    """A cgroup's limit less what it uses, page cache the kernel can drop (its inactive files) not counted as
    used, as docker's `stats` counts it; None where the cgroup sets no limit or says nothing."""
    try:
        limit = limit_file.read_text().strip()
        if limit == "max" or int(limit) >= 2**60:  # v2 "max"; v1 writes no limit as a page-rounded 2**63 - 1
            return None
        used = int(usage_file.read_text().strip()) - _stat_bytes(stat_file, inactive_key)
        return max(0, int(limit) - max(0, used))
    except (OSError, ValueError):
        return None


def available_memory_bytes(cgroup: Path = Path("/sys/fs/cgroup"), meminfo: Path = Path("/proc/meminfo")
                           ) -> int | None:
    """The memory a new job can take in bytes: MemAvailable of `meminfo`, or less where this process's cgroup
    leaves less (a container's limit: v2 memory.max, v1 memory/memory.limit_in_bytes, less what the cgroup uses);
    None where neither says (not Linux)."""
    found = []
    try:
        with open(meminfo) as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    for headroom in (_cgroup_headroom(cgroup / "memory.max", cgroup / "memory.current", cgroup / "memory.stat",
                                      "inactive_file"),
                     _cgroup_headroom(cgroup / "memory" / "memory.limit_in_bytes",
                                      cgroup / "memory" / "memory.usage_in_bytes", cgroup / "memory" / "memory.stat",
                                      "total_inactive_file")):
        if headroom is not None:
            found.append(headroom)
    return min(found) if found else None


def process_alive(pid: int) -> bool:
    """Whether a process of this pid exists here (another user's counts) and has not exited: a zombie (exited,
    its parent not yet waiting for it) is not alive (`serve-enhancer --parent-pid` kept serving a dead one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:  # the state after the command's closing parenthesis (the command may hold one itself)
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except IndexError:
        return True
    except OSError:  # gone meanwhile (where there is a /proc), or not Linux
        return not Path("/proc/self/stat").exists()


ABANDONED_AFTER_S = 3600.0  # a temporary folder unwritten this long, its process gone: abandoned


def abandoned(folder: Path, pid: int, quiet_s: float = ABANDONED_AFTER_S) -> bool:
    """Whether a temporary folder that process `pid` was writing was left by a killed process: nothing in it was
    written for quiet_s, the pid is not ours, and no process of that pid here can be its writer: none is alive, or
    the one alive is not it (`_not_the_writer`: started after the folder was made, or a kernel thread). Pids repeat
    in every container: a restarted pod's new processes, or the host's kernel threads, had kept a killed run's
    folders (a 64 MB /dev/shm filled up) for good (a new user's finding)."""
    if pid == os.getpid():
        return False
    try:
        stamps = [folder.stat().st_mtime] + [f.stat().st_mtime for f in folder.iterdir()]
    except OSError:  # removed meanwhile
        return False
    if time.time() - max(stamps) < quiet_s:
        return False
    return not process_alive(pid) or _not_the_writer(pid, min(stamps))


def process_start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch, from /proc), or None where that cannot be read."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _not_the_writer(pid: int, made_s: float) -> bool:
    """Whether the live process `pid` cannot be the writer of a folder made at `made_s`: it started after that
    (the pid was used again), or it is a kernel thread (no command line). False where that cannot be read."""
    try:
        if not Path(f"/proc/{pid}/cmdline").read_bytes():
            return True
    except OSError:
        return False
    started = process_start_time(pid)
    return started is not None and started > made_s + 2.0  # (the clock tick and the mtimes' own rounding)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, as a container's cpuset sets it), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def check_memory(need_bytes: float, what: str, fraction: float = 0.8) -> None:
    """MemoryError naming `what` when it needs more than `fraction` of the memory available now (the kernel's
    out-of-memory killer would end the process without a word, exit 137); nothing where that is unknown."""
    available = available_memory_bytes()
    if available is not None and need_bytes > fraction * available:
        raise MemoryError(f"{what} needs about {need_bytes / 2**30:.1f} GiB and {available / 2**30:.1f} GiB is "
                          "available")
