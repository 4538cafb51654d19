"""SIGTERM soak: interrupt `neural-sensor demo --scene builder` at random moments; look for anything left behind.

    python benchmarks/lifecycle_soak.py [--runs 20] [--seed 0] [--json benchmarks/results/lifecycle-soak.json]

Each run (every other one with `--enhancer local`, the others `--enhancer none`; the builder's scene, built
in the run: a reconstruction would take most of a run's length to build) gets its own TMPDIR and output
folder and a marker in its environment that every child process inherits (the enhancer server and its
workers too). A SIGTERM is sent at a uniformly random moment between 0.2 s and the run's usual length;
afterwards (5 s grace) the script checks:
- no process carrying the run's marker is alive (an orphaned server or worker);
- TMPDIR is empty (no `enhancer-local-*` folder, no broker socket folder; torch's own compile cache,
  `torchinductor_<user>`, is not ours and is ignored);
- the run's own scene cache (`--cache`, empty at the start, so the scene is built in the run) holds no
  half-built entry;
- the output folder's parent holds nothing but a complete record or nothing at all (no hidden
  `.out.XXXX` temporary folder, no half-written record);
- no shared-memory folder of its enhancer server is left in /dev/shm (`neural-sensor-enhancer-local-*`, where the
  rig's frames are rendered since the zero-copy transport);
- a run that got the SIGTERM exited 143 (the runner's unwinding) or -15 (killed before the runner took the
  signal, during its imports).
Prints one line per run and writes a JSON summary; exits 1 if any run left something behind.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # (the tests import this as benchmarks.lifecycle_soak)
from _machine import count, positive, run_main  # noqa: E402

MARKER = "NEURAL_SENSOR_SOAK_ID"


def processes_with_marker(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of live processes whose environment holds MARKER=marker."""
    found = []
    needle = f"{MARKER}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, IndexError):
            continue
    return found


def _shm_folders() -> set[str]:
    """The enhancer servers' shared-memory folders now in /dev/shm (empty where there is none)."""
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob("neural-sensor-enhancer-local-*")} if shm.is_dir() else set()


def one_run(index: int, enhancer: bool, kill_after_s: float, root: Path, ticks: int) -> dict:
    marker = uuid.uuid4().hex
    run_root = root / f"run{index:02d}"
    tmpdir, out_parent = run_root / "tmp", run_root / "records"
    tmpdir.mkdir(parents=True)
    out_parent.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir), **{MARKER: marker})
    cmd = [sys.executable, "-m", "scenarios.cli", "demo", "--ticks", str(ticks), "--width", "160", "--height", "96",
           "-o", str(out_parent / "out"), "--cache", str(run_root / "cache"), "--scene", "builder",
           "--enhancer", "local" if enhancer else "none"]
    shm_before = _shm_folders()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(kill_after_s)
        signalled = False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        signalled = True
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    exit_s = time.monotonic() - t0
    deadline = time.monotonic() + 5.0
    alive = processes_with_marker(marker)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = processes_with_marker(marker)
    # torch keeps its compile cache in TMPDIR/torchinductor_<user> (a cache shared by all runs, like numba's)
    leftover_tmp = sorted(str(p.relative_to(tmpdir)) for p in tmpdir.rglob("*")
                          if not p.relative_to(tmpdir).parts[0].startswith("torchinductor_"))
    entries = sorted(p.name for p in out_parent.iterdir())
    out = out_parent / "out"
    record_ok = entries == [] or (entries == ["out"] and (out / "manifest.json").exists()
                                  and (out / "summary.json").exists())
    for pid, _ in alive:  # leave the machine clean whatever the verdict
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    cache = run_root / "cache"
    half_built = sorted(p.name for p in cache.iterdir() if p.name.startswith(".")) if cache.exists() else []
    leftover_shm = sorted(_shm_folders() - shm_before)
    exit_ok = proc.returncode in ((143, -signal.SIGTERM) if signalled else (0, 1))
    clean = not alive and not leftover_tmp and record_ok and not half_built and not leftover_shm and exit_ok
    return {"run": index, "enhancer": enhancer, "sigterm_after_s": round(kill_after_s, 2), "signalled": signalled,
            "exit_code": proc.returncode, "exit_code_ok": exit_ok, "exit_after_s": round(exit_s, 2),
            "orphans": [c for _, c in alive], "leftover_tmp": leftover_tmp, "leftover_shm": leftover_shm,
            "half_built_cache_entries": half_built, "out_parent": entries, "record_complete_or_absent": record_ok,
            "clean": clean, "stderr_tail": err.decode(errors="replace")[-300:] if not clean else ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=count(1), default=20, help="runs sent SIGTERM ('--runs 0' had written a record "
                        "of nothing that read as a passing soak)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ticks", type=count(1), default=40, help="ticks per demo run (160x96 cameras)")
    parser.add_argument("--max-s", type=positive, default=None,
                        help="latest SIGTERM moment (default: the measured length of one unkilled run of each kind)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "lifecycle-soak.json",
                        help="output (default benchmarks/results/lifecycle-soak.json, wherever it is run from)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="soak-"))
    results = []
    try:
        # one unkilled run of each kind first: how long a run lasts, so the SIGTERMs cover all of it
        lengths = {}
        for enhancer in (False, True):
            ref = one_run(-1 - int(enhancer), enhancer, 600.0, root, args.ticks)
            if not ref["clean"] or ref["exit_code"] not in (0, 1):
                print(f"reference run failed: {ref}", file=sys.stderr)
                return 1
            lengths[enhancer] = ref["exit_after_s"]
        for index in range(args.runs):
            enhancer = index % 2 == 1
            latest = args.max_s or lengths[enhancer]
            result = one_run(index, enhancer, rng.uniform(0.2, latest), root, args.ticks)
            results.append(result)
            print(f"run {index:2d} enhancer={'local' if enhancer else 'none':5s} SIGTERM at "
                  f"{result['sigterm_after_s']:5.2f} s -> exit {result['exit_code']} after {result['exit_after_s']:.2f} s"
                  f"  {'clean' if result['clean'] else 'LEFT SOMETHING: ' + json.dumps(result)}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = {"runs": len(results), "clean": sum(r["clean"] for r in results),
               "signalled": sum(r["signalled"] for r in results), "run_length_s": lengths, "ticks": args.ticks,
               "orphaned_processes": sum(len(r["orphans"]) for r in results),
               "leftover_tmp_entries": sum(len(r["leftover_tmp"]) for r in results),
               "incomplete_records": sum(not r["record_complete_or_absent"] for r in results),
               "leftover_shm_folders": sum(len(r["leftover_shm"]) for r in results),
               "unexpected_exit_codes": sum(not r["exit_code_ok"] for r in results), "results": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
    return 0 if summary["clean"] == summary["runs"] else 1


if __name__ == "__main__":
    run_main(main)
