#!/usr/bin/env bash
# Time to quality on one GPU (issue 7: >= 99% dynamic accuracy in <= 10 minutes of training on an H100).
#
# One prepared command for a CUDA machine, run from the repository root:
#
#   SHEETS=path/to/sprites-lpc JUDGE=runs/judge_lpc.pt MINUTES=4 OUT=gpu_out scripts/gpu_time_to_quality.sh
#
# It records the GPU and library versions, then runs scripts/sota_pipeline.py: builds the data set from
# the raw LPC layers in SHEETS, the colour-paired motion-mixed training split (no labels), trains the
# cdsvae `cpu-best` recipe for MINUTES wall-clock minutes on the GPU (its cosine decay spans them), and
# judges all test videos (3 repeats) with JUDGE (trained there first when JUDGE is not a file), and along
# the run up to 8 of its checkpoints (one each 1,000 steps) on 900 test videos: the time-to-quality curve
# (RESULTS.md "Along the run"; scripts/sota_pipeline.py --curve). The
# pipeline's folder stays in WORK; OUT gets RESULTS.md, RESULTS.json, the run's metrics.jsonl, env.txt
# and smoke.log (at most 5 files, for machines that send back only a few).
#
# Any further arguments go to the pipeline after these, so they override them (argparse keeps the last):
#   scripts/gpu_time_to_quality.sh --batch-size 128 --lr 4e-3
# First (SMOKE=1, the default) the same pipeline runs 20 training steps, without the motion mix, judged on
# 45 test videos, into WORK/smoke (its log: OUT/smoke.log): a CUDA-path failure then costs a minute of the
# lease, not the whole run. A judge it trains (JUDGE not a file) is written to JUDGE and used by the main run.
# SMOKE=0 skips it.
# REQUIRE_CUDA=0 lets it run without a GPU (the test suite's smoke test does, at tiny scale).
#
# Sizing for a device lease (one command at most 10 minutes; 15 device minutes in all), as measured on an H200
# (BENCHMARKS.md section 7): smoke 25 s, data build 3 s, motion mix 6 s, evaluation 2 s, curve ~1 s a point;
# the whole call took MINUTES plus ~60 s (298 s for MINUTES=4). A judge trained there: not measured yet. So
# MINUTES=4 leaves room for a second call in the same lease. Send it at once when a lease is there: a lease
# can close while waiting.
set -euo pipefail

SHEETS=${SHEETS:-../shared/sprites-lpc}
JUDGE=${JUDGE:-runs/judge_lpc.pt}
MINUTES=${MINUTES:-4}
OUT=${OUT:-gpu_out}
WORK=${WORK:-${TMPDIR:-/tmp}/dsvae_gpu_time_to_quality}
PYTHON=${PYTHON:-python3}
REQUIRE_CUDA=${REQUIRE_CUDA:-1}
SMOKE=${SMOKE:-1}

here=$(cd "$(dirname "$0")/.." && pwd)
# this checkout's dsvae, installed or not (a bare GPU machine with PyTorch, h5py, einops, ...). Not a test of
# `python -c "import dsvae"`: run from the repository root that finds ./dsvae, while the pipeline script
# (sys.path[0] = scripts/) would not (seen on the first GPU lease)
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if [ "$REQUIRE_CUDA" = 1 ] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_time_to_quality: no CUDA GPU visible to $PYTHON (REQUIRE_CUDA=0 runs it on the CPU anyway)" >&2
    exit 2
fi

mkdir -p "$OUT"
{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); print('gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null || true
    echo "cpus $(nproc)"
    echo "git $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "minutes $MINUTES; extra arguments: $*"
} | tee "$OUT/env.txt"

pipeline=("$PYTHON" "$here/scripts/sota_pipeline.py" --data lpc --sheets "$SHEETS" --judge "$JUDGE" --judge-size 64
          --judge-widths field --judge-epochs 6 --preset cpu-best --variants all --mix colours --minutes "$MINUTES"
          --repeats 3 --curve 900 --curve-every 1000 --overwrite --quiet)
start=$(date +%s)
if [ "$SMOKE" = 1 ]; then
    # the same pipeline and arguments, tiny: 20 steps, no motion mix, 45 test videos, one repeat
    if ! "${pipeline[@]}" --out "$WORK/smoke" "$@" --mix none --max-steps 20 --eval-limit 45 --repeats 1 \
        > "$OUT/smoke.log" 2>&1; then
        tail -n 40 "$OUT/smoke.log" >&2
        echo "smoke run failed after $(( $(date +%s) - start )) s (log: $OUT/smoke.log)" | tee -a "$OUT/env.txt" >&2
        exit 3
    fi
    echo "smoke run passed in $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
fi
status=0
"${pipeline[@]}" --out "$WORK" "$@" || status=$?
echo "pipeline exit status $status after $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"

for f in RESULTS.md RESULTS.json; do
    if [ -f "$WORK/$f" ]; then cp "$WORK/$f" "$OUT/"; fi
done
if [ -f "$WORK/runs/all/metrics.jsonl" ]; then cp "$WORK/runs/all/metrics.jsonl" "$OUT/"; fi
exit "$status"
