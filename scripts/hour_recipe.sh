#!/usr/bin/env bash
# The best hour on the 2-core CPU (issue 7), end to end: the commands of BENCHMARKS.md section 7 in one call.
#
#   SEED=6 OUT=runs/hour_seed6 scripts/hour_recipe.sh
#
# 1. the data set from the raw LPC layers (SHEETS -> DATA) and its colour-paired motion-mixed training copy
#    (MIXED; no labels), each only when its file is missing;
# 2. the field judge (JUDGE, 6 epochs), only when the file is missing (~10 minutes on 2 cores);
# 3. cdsvae `cpu-best` at batch 16, cheaper views, no mirrored views, TRAIN_MINUTES wall-clock minutes
#    (default 50; its cosine decay spans them), into OUT/train;
# 4. the decoder polished for POLISH_MINUTES (default 10) from colour neighbours' static codes, every decoder
#    layer refit, batch 16, initial rate POLISH_LR (default 2e-3; seeds 4-11 of BENCHMARKS.md ran at 1e-3),
#    into OUT/polished (OUT/train keeps the unpolished weights);
# 5. a 64-component static prior fitted to the training codes (~45 s; the static and swap tests do not draw
#    from it), into OUT/final;
# 6. `dsvae eval` of OUT/final on the test split (REPEATS, default 3) -> OUT/RESULTS.json, and the table of
#    the issue's targets -> OUT/TARGETS.md. OUT/times.txt records each stage's wall-clock seconds and the
#    machine.
#
# Any further arguments go to `dsvae train` after the recipe's (argparse keeps the last), e.g. --max-steps 2.
# POLISH_STEPS caps the polish's steps as well (tests), EVAL_LIMIT the test videos judged (default: all).
# Run from anywhere; the project (`pip install -e .`, README) must be installed for PYTHON.
set -euo pipefail

SEED=${SEED:-0}
OUT=${OUT:-runs/hour_seed$SEED}
SHEETS=${SHEETS:-../shared/sprites-lpc}
DATA=${DATA:-data/sprites.h5}
MIXED=${MIXED:-data/sprites_mixed.h5}
JUDGE=${JUDGE:-runs/judge_lpc.pt}
PRESET=${PRESET:-cpu-best}
TRAIN_MINUTES=${TRAIN_MINUTES:-50}
POLISH_MINUTES=${POLISH_MINUTES:-10}
POLISH_LR=${POLISH_LR:-2e-3}
REPEATS=${REPEATS:-3}
AMP=${AMP:-bf16}
PYTHON=${PYTHON:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)

if [ -e "$OUT" ]; then
    echo "hour_recipe: $OUT exists; choose another OUT (nothing was run)" >&2
    exit 2
fi
dsvae() { "$PYTHON" -m dsvae "$@"; }
stage() {  # stage NAME COMMAND...: run it, then append its seconds to OUT/times.txt
    local name=$1 start
    shift
    start=$(date +%s)
    echo "== $name" >&2
    "$@"
    echo "$name $(( $(date +%s) - start )) s" >> "$OUT/times.txt"
}

mkdir -p "$OUT"
{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    echo "cpu $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //') x $(nproc)"
    echo "git $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "seed $SEED; train $TRAIN_MINUTES min; polish $POLISH_MINUTES min at lr $POLISH_LR; extra train arguments: $*"
} > "$OUT/times.txt"

if [ ! -f "$DATA" ]; then
    stage data dsvae data build --source lpc --sheets "$SHEETS" --out "$DATA"
fi
if [ ! -f "$MIXED" ]; then
    stage mix dsvae data mix "$DATA" --out "$MIXED"
fi
if [ ! -f "$JUDGE" ]; then
    stage judge dsvae judge train --data "$DATA" --out "$JUDGE" --epochs 6 --amp "$AMP"
fi
stage train dsvae train --model cdsvae --preset "$PRESET" --data "$MIXED" --out "$OUT/train" --amp "$AMP" \
    --channels-last --max-minutes "$TRAIN_MINUTES" --batch-size 16 --set motion_flip=0 --set view_grad=false \
    --seed "$SEED" --checkpoint-every 1000 --quiet "$@"
stage polish dsvae polish --run "$OUT/train" --out "$OUT/polished" --data "$MIXED" --minutes "$POLISH_MINUTES" \
    ${POLISH_STEPS:+--steps "$POLISH_STEPS"} --lr "$POLISH_LR" --amp "$AMP" --pair-share 1 --neighbours 8 --all-layers \
    --batch-size 16 --quiet
stage prior dsvae fit-prior --run "$OUT/polished" --out "$OUT/final" --data "$MIXED" --amp "$AMP" --quiet
stage eval dsvae eval --run "$OUT/final" --judge "$JUDGE" --data "$DATA" --out "$OUT/RESULTS.json" --amp "$AMP" \
    --repeats "$REPEATS" ${EVAL_LIMIT:+--limit "$EVAL_LIMIT"} --quiet
"$PYTHON" "$here/scripts/targets_table.py" "$OUT/RESULTS.json" --labels "seed $SEED" --out "$OUT/TARGETS.md"
