#!/usr/bin/env bash
# Issue 16 ("Mask2Former at GPU speed"), the GPU measurements in ONE device call (~8 minutes on
# one H100 / H200): host-sync counts, a per-phase / per-op profile, train_step figures and the
# engine end to end at Severstal's size -- each "after" (this checkout) and, where time allows,
# "before" (the Mask2Former port of an older revision, everything else identical).
#
# 1. Here, on the CPU machine, once: lay out the "before" package (no git state is changed:
#    `git archive` reads the object store). It is the current raybench with only
#    raybench/models/mask2former taken from REF (default cd4d109, the last commit before the
#    batching work), under runs/ (git-ignored):
#        bash benchmarks/gpu_mask2former.sh --prepare-baseline [REF]
# 2. On the device, one call (the run tool), carrying that folder:
#        command: bash benchmarks/gpu_mask2former.sh     carry: ["runs/gpu_baseline"]   timeout_s: 600
#    Without runs/gpu_baseline only the "after" figures are taken.
#
# Results under $OUT (default ./gpu_m2f_out): gpu_m2f.log (all output), results.jsonl (the JSON
# line of every measurement, tagged), profile_after.txt / profile_before.txt (phase and op tables).
# Every step has its own time limit and the whole script stops starting new steps after
# $BUDGET_S seconds (default 530), so the call ends inside the device's 10-minute limit.

set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)
BASELINE=${BASELINE:-$REPO/runs/gpu_baseline}

if [ "${1:-}" = "--prepare-baseline" ]; then
    REF=${2:-cd4d109}
    rm -rf "$BASELINE"
    mkdir -p "$BASELINE"
    cp -r raybench "$BASELINE/"
    find "$BASELINE" -name __pycache__ -prune -exec rm -rf {} +
    rm -rf "$BASELINE/raybench/models/mask2former"
    git archive "$REF" raybench/models/mask2former | tar -x -C "$BASELINE"
    INIT="$BASELINE/raybench/models/mask2former/__init__.py"
    if ! grep -q semantic_to_targets_batch "$INIT"; then
        # The old port had no batched target builder: the same per-image calls under the new name.
        cat >>"$INIT" <<'EOF'


def semantic_to_targets_batch(sem_seg, num_classes, ignore_index=255):  # baseline shim
    return [semantic_to_targets(s, num_classes, ignore_index) for s in sem_seg]
EOF
    fi
    echo "baseline: $BASELINE (raybench with raybench/models/mask2former from $REF)"
    exit 0
fi

OUT=${OUT:-$REPO/gpu_m2f_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-530}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
LOG="$OUT/gpu_m2f.log"
RESULTS="$OUT/results.jsonl"
: >"$LOG"
: >"$RESULTS"

have_baseline=0
[ -d "$BASELINE/raybench/models/mask2former" ] && have_baseline=1

# step TAG LIMIT_S CMD...: run if the budget allows, log everything, keep the last JSON line.
step() {
    local tag=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - SECONDS))
    if [ "$left" -lt 20 ]; then
        echo "== $tag: skipped (budget spent)" | tee -a "$LOG"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $tag (limit ${limit}s, t=${SECONDS}s): $*" | tee -a "$LOG"
    local tmp
    tmp=$(mktemp)
    timeout "$limit" "$@" 2>&1 | tee "$tmp" >>"$LOG"
    local line
    line=$(grep '^{' "$tmp" | tail -n 1)
    if [ -n "$line" ]; then
        echo "{\"tag\": \"$tag\", \"result\": $line}" >>"$RESULTS"
        echo "   -> $(echo "$line" | cut -c1-300)" | tee -a "$LOG"
    else
        echo "   -> no result (timeout or error; see the log)" | tee -a "$LOG"
        tail -n 5 "$tmp" | tee -a "$LOG"
    fi
    rm -f "$tmp"
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    $PY -c "import torch, timm, scipy; print('torch', torch.__version__, 'timm', timm.__version__, 'scipy', scipy.__version__)"
    echo "baseline present: $have_baseline"
} 2>&1 | tee -a "$LOG"

# 1. Host synchronisations of one head step (batch 16 @ 384, paper head), CUDA's own count.
step syncs_after 60 $PY benchmarks/mask2former_syncs.py
[ $have_baseline = 1 ] && step syncs_before 60 $PY benchmarks/mask2former_syncs.py --src "$BASELINE"

# 2. train_step, Mask2Former ConvNeXt-T full (batch 16 @ 384, bf16): the issue's 28.5 img/s figure.
M2F="--decoders mask2former --backbones convnext_t --regimes full --steps 8"
step train_step_m2f_after 120 $PY benchmarks/train_step.py $M2F
[ $have_baseline = 1 ] && step train_step_m2f_before 120 $PY benchmarks/train_step.py $M2F --src "$BASELINE"

# 3. Where one step's time goes (phases synchronised, torch.profiler op tables, syncs per phase).
step profile_after 100 $PY benchmarks/mask2former_profile.py --tag after --out "$OUT"
[ $have_baseline = 1 ] && step profile_before 100 $PY benchmarks/mask2former_profile.py --tag before --src "$BASELINE" --out "$OUT"

# 4. Mask R-CNN ConvNeXt-T full (batch 8 @ 800, bf16): the reference figure (48 img/s on an H100).
step train_step_maskrcnn 120 $PY benchmarks/train_step.py --decoders mask_rcnn --backbones convnext_t --regimes full --steps 8

# 5. The engine end to end at Severstal's size (1600x256 images, paper recipe, 8 loader workers).
DATA=/tmp/raybench_severstal_synth
step engine_after 150 $PY benchmarks/engine_severstal.py --iterations 60 --workers 8 --data "$DATA"
[ $have_baseline = 1 ] && step engine_before 120 $PY benchmarks/engine_severstal.py --iterations 60 --workers 8 --data "$DATA" --src "$BASELINE"

echo "== done in ${SECONDS}s; results: $RESULTS" | tee -a "$LOG"
