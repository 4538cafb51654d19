#!/usr/bin/env bash
# One GPU session in one command: gsplat's kernels built and checked against our renderers, gsplat's render
# timings, and the reconstructor trained on CUDA through gsplat's differentiable rasteriser (three settings
# side by side on the one GPU), everything written under $OUT within about SESSION_S seconds.
#
#   OUT=/tmp/gpu-out SESSION_S=545 bash benchmarks/gpu_session.sh
#
# Preparing the carried folders (here, in the repository's root; both are git-ignored):
#   .whl/:   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#              --platform manylinux_2_28_x86_64 -d .whl gsplat==1.5.3 plyfile pyzmq     (7 MiB)
#   .torcs/: the catalogue's 21 photographs copied from /usr/share/games/torcs under their own paths (7.5 MiB;
#            neural_sensor.scene.textures.TORCS_CATALOGUE; the library's hash is the same as the installed one's)
# and the call carries [".whl", ".torcs"].
#
# Made for a lent machine that cannot reach a package index: packages the project needs beyond that machine's
# own (gsplat's wheel, plyfile, pyzmq, msgpack) come as wheels in .whl/, and the street photographs the worlds
# are textured with (Debian's torcs-data, Free Art License; never committed) in .torcs/ (NEURAL_SENSOR_TORCS),
# and, for the enhancer's perceptual term (gpu_pipeline's enhancer stages), the VGG16 weights as float16 in .vgg/
# (`python -m neural_sensor.perceptual --export .vgg/vgg16-hed-f16.npz`, 28 MiB; NEURAL_SENSOR_VGG16_WEIGHTS).
# Writes to $OUT: session.log (every stage, with times), gsplat-tests.log, render-gsplat.json,
# bench-chain-enhancer-{none,local}.json (the closed loop on the reconstruction, "auto" backend) and
# reconstructor-variants.tar.gz (each variant's checkpoint, history, summary and training log).
# Afterwards, measure each variant in the run's regime on the CPU machine, on twelve held-out worlds (six
# overstated how close the 3 m targets are, docs/results.md "2026-12-04 (later)"):
#   python benchmarks/runtime_fidelity.py --worlds 12 --checkpoint VARIANT ...
set -u
START=$(date +%s)
SESSION_S=${SESSION_S:-570}
OUT=${OUT:?set OUT to the folder the results go to}
WORK=${WORK:-/tmp/gpu-session}
WORKERS=${WORKERS:-14}
WORLDS=${WORLDS:-96}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/session.log"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( SESSION_S - $(date +%s) + START )); }
say() { echo "[$(elapsed) s] $*" | tee -a "$LOG"; }

say "session: $(hostname), ${SESSION_S} s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$LOG" 2>&1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl >>"$LOG" 2>&1 && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
[ -d .torcs ] && export NEURAL_SENSOR_TORCS="$PWD/.torcs"
[ -f .vgg/vgg16-hed-f16.npz ] && export NEURAL_SENSOR_VGG16_WEIGHTS="$PWD/.vgg/vgg16-hed-f16.npz"
python3 -c "import torch, numba, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'numba', numba.__version__, 'numpy', numpy.__version__)" >>"$LOG" 2>&1
# made for one GPU: without CUDA every stage would train on the CPU until its timeout and save nothing
if ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >>"$LOG" 2>&1; then
    say "no CUDA device: this script is for a GPU session (the trainings run on a CPU with their own commands)"
    exit 2
fi

# 1. gsplat's kernels (its wheel compiles them on first use) while the reconstructor's data is made
say "gsplat build (background) + reconstructor data for $WORLDS worlds on $WORKERS processes"
( MAX_JOBS=${MAX_JOBS:-14} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} timeout 300 python3 -c "
import time; t = time.perf_counter()
from gsplat.cuda._backend import _C
assert _C is not None, 'gsplat kernels did not build'
print(f'gsplat kernels ready in {time.perf_counter() - t:.0f} s')" >"$WORK/gsplat-build.log" 2>&1
  echo $? >"$WORK/gsplat-build.rc" ) &
BUILD_PID=$!
timeout 260 python3 -m neural_sensor.train.gpu_pipeline --out "$WORK/pipeline" --data "$WORK/data" \
    --stages reconstructor_data --recon-worlds "$WORLDS" --workers "$WORKERS" >"$WORK/data.log" 2>&1
say "reconstructor data: rc $? ($(ls "$WORK"/data/reconstructor/*/ 2>/dev/null | wc -l) files)"
tail -c 600 "$WORK/data.log" | tr '\r' '\n' | tail -3 >>"$LOG"
wait $BUILD_PID
GSPLAT_RC=$(cat "$WORK/gsplat-build.rc" 2>/dev/null || echo 1)
say "gsplat build: rc $GSPLAT_RC"
tail -c 1500 "$WORK/gsplat-build.log" >>"$LOG"
RENDERER=torch
if [ "$GSPLAT_RC" = 0 ]; then
    RENDERER=gsplat
    # 2. parity with our renderers (rgb, depth, alpha, labels, median depth; gradients), then render timings
    timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu -rs tests/test_render_gsplat.py \
        tests/test_render_differentiable.py >"$OUT/gsplat-tests.log" 2>&1
    say "gsplat parity tests: rc $? ($(tail -n 1 "$OUT/gsplat-tests.log"))"
    timeout 100 python3 benchmarks/render.py --backends gsplat --no-reference --frames 10 --warmup 3 \
        --out "$OUT/render-gsplat.json" >"$WORK/render.log" 2>&1
    say "render benchmark: rc $? ($(tail -n 1 "$WORK/render.log"))"
fi

# 3. the reconstructor on CUDA: three settings at once, each to the same deadline, from the shipped stage 6.
# "whole": every view of the drive through the network and the run's fusion in each step, all 24 target views of
# the world rendered from it (the run's own regime: a whole drive fused; stage 6's recipe, here on 96 worlds);
# beside it twice as many depth planes (the far surfaces the side cameras place too near: `--depth-bins 64` rebins
# the shipped net's 32, starting from nearly its own depth) and a heavier depth term on the rendered targets
MINUTES=$(python3 -c "print(round(max(0.5, ($(left) - ${CLOSED_LOOP_S:-110}) / 60), 2))")
say "training three reconstructor variants for $MINUTES min each (renderer $RENDERER)"
COMMON=(--init checkpoints/reconstructor-run --fuse --device auto --renderer "$RENDERER" --worlds "$WORLDS"
        --data "$WORK/data/reconstructor" --minutes "$MINUTES" --steps 1000000)  # the deadline ends them
declare -A VARIANTS=(
    [whole-lr5e-5]="--context-stations 64 --targets-per-step 24 --lr 5e-5 --eval-every 50"
    [whole-lr5e-5-bins64]="--context-stations 64 --targets-per-step 24 --lr 5e-5 --eval-every 50 --depth-bins 64"
    [whole-lr5e-5-rdepth0.3]="--context-stations 64 --targets-per-step 24 --lr 5e-5 --eval-every 50 --render-depth-weight 0.3"
)
if [ "$RENDERER" = torch ]; then  # the torch reference keeps every pixel-Gaussian pair: fewer targets per step
    for name in "${!VARIANTS[@]}"; do
        VARIANTS[$name]=${VARIANTS[$name]/--targets-per-step 24/--targets-per-step 4}
    done
fi
PIDS=()
for name in "${!VARIANTS[@]}"; do
    mkdir -p "$WORK/variants/$name"
    # shellcheck disable=SC2086
    NUMBA_NUM_THREADS=4 OMP_NUM_THREADS=4 timeout $(python3 -c "print(int($MINUTES * 60 + 80))") \
        python3 -m neural_sensor.train.train_reconstructor_run "${COMMON[@]}" ${VARIANTS[$name]} \
        --out "$WORK/variants/$name" >"$WORK/variants/$name/train.log" 2>&1 &
    PIDS+=($!)
done
for pid in "${PIDS[@]}"; do wait "$pid"; done
for name in "${!VARIANTS[@]}"; do
    say "variant $name (${VARIANTS[$name]}): $(python3 -c "
import json, sys
s = json.load(open('$WORK/variants/$name/train_summary.json'))
print(s['steps'], 'steps in', s['wall_s_this_run'], 's; last held-out', s['final'].get('heldout'))" 2>&1 | tail -n 1)"
    tr '\r' '\n' <"$WORK/variants/$name/train.log" | grep -h '^{"step"' | tail -n 20 >>"$LOG"
done
tar -czf "$OUT/reconstructor-variants.tar.gz" -C "$WORK" variants

# 4. the closed loop as a run has it, in the time left after training
if [ "$GSPLAT_RC" = 0 ]; then
    # the closed loop as a run has it: the rig asks for rgb alone, so "auto" renders with gsplat (the demo's
    # reconstruction is built first, into the session's cache); the chain alone, then with the enhancer
    for mode in ${CLOSED_LOOP_MODES:-none}; do
        timeout $(( $(left) > 40 ? $(left) - 15 : 25 )) python3 -m scenarios.cli bench --ticks "${CLOSED_LOOP_TICKS:-60}" \
            --enhancer "$mode" --cache "$WORK/cache" \
            -o "$WORK/bench-$mode" >"$OUT/bench-chain-enhancer-$mode.json" 2>"$WORK/bench-$mode.log"
        say "closed loop, enhancer $mode: rc $? ($(python3 -c "
import json; d = json.load(open('$OUT/bench-chain-enhancer-$mode.json'))
print(d['backend'], d['ticks_per_s'], 'ticks/s', d['stage_ms_median'])" 2>&1 | tail -n 1))"
    done
fi
say "done; $(left) s of the session left"
