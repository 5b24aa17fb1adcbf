#!/usr/bin/env bash
# Prove the GPU path in one prepared run (docs/gpu_check.md): bf16-mixed training clips/s of the four
# experiments against their inference and loader clips/s, the same under DDP (and 2-process DDP with 2 GPUs),
# the re-clustering share of an epoch (faiss on GPU when the package has it), bf16 vs fp32 embeddings, and a
# resume after SIGTERM. Every step runs under its own timeout and appends its rows to the results as it
# goes; a failed or timed-out step is recorded and the next one runs. Nothing is installed or downloaded:
# the synthetic corpus is generated, GE2E's weights come with the resemblyzer package.
#
#   python3 -m venv .venv && . .venv/bin/activate && pip install -c requirements.lock -e .
#   bash scripts/gpu_check.sh --out "$OUT"            # one GPU (or more), an 8-minute budget
#   bash scripts/gpu_check.sh --cpu                    # the same steps on CPU, tiny budgets (tests/test_gpu_check.py)
#
# Options:
#   --out DIR        results folder: results.md, results.jsonl, logs/<step>.log
#                    (default logs/gpu_check/<date_time>)
#   --work DIR       corpus, runs and caches (default logs/gpu_check/work; the corpus is reused across runs)
#   --cpu            trainer=cpu / trainer=ddp_sim (2 processes) at 32-true, tiny corpus, crops, models and
#                    budgets, one thread per process: rehearses every step in a few minutes on 2 cores
#   --cpu-full       CPU trainers at 32-true but the experiments' own sizes and the GPU budgets (CPU ratios)
#   --budget-s N     stop starting steps after N seconds in all (default 480; --cpu: 1200; --cpu-full: 7200);
#                    the rest are recorded as skipped
#   --steps N        timed training steps per run (default 30; --cpu: 1)
#   --fail-step S    make step S fail (as GPU_CHECK_FAIL_STEP=S does): checks the recording
#   --only A,B       run only these steps (names as in the results)
set -u -o pipefail

usage() { sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CMDLINE="bash scripts/gpu_check.sh $*"
MODE=gpu OUT="" WORK="" BUDGET="" STEPS=0 ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) MODE=cpu ;;
        --cpu-full) MODE=cpu-full ;;
        --out) OUT="$2"; shift ;;
        --work) WORK="$2"; shift ;;
        --budget-s) BUDGET="$2"; shift ;;
        --steps) STEPS="$2"; shift ;;
        --fail-step) export GPU_CHECK_FAIL_STEP="$2"; shift ;;
        --only) ONLY=",$2," ; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
OUT="${OUT:-logs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}"
WORK="${WORK:-logs/gpu_check/work}"
mkdir -p "$OUT/logs" "$WORK" || exit 2
OUT="$(cd "$OUT" && pwd)" WORK="$(cd "$WORK" && pwd)"
PY="${PYTHON:-python}"
# nothing here may reach the network
export PROJECT_ROOT="$ROOT" WANDB_MODE=offline HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
unset SER_RUN_DIR

START=$(date +%s)
case "$MODE" in
    # one thread per process: tiny kernels, and on a shared box 2-thread OpenMP waits made steps 5x slower
    cpu) BUDGET="${BUDGET:-1200}"; SCALE=4; FLAGS=(--cpu --tiny); export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" ;;
    cpu-full) BUDGET="${BUDGET:-7200}"; SCALE=20; FLAGS=(--cpu) ;;
    *) BUDGET="${BUDGET:-480}"; SCALE=1; FLAGS=() ;;
esac
DEADLINE=$((START + BUDGET))

# ----- results: python appends the rows of a step that worked; a failed or skipped step is recorded here -----
clean() { tr -d '\000-\037"\\|' | cut -c1-400; }
record() {  # step status note
    local note; note="$(printf '%s' "$3" | clean)"
    printf '{"step": "%s", "status": "%s", "metric": "step", "value": null, "goal": "", "note": "%s", "time": "%s"}\n' \
        "$1" "$2" "$note" "$(date +%Y-%m-%dT%H:%M:%S)" >> "$OUT/results.jsonl"
    printf '| %s | %s | step | – |  | %s |\n' "$1" "$2" "$note" >> "$OUT/results.md"
    echo "[$1] $2: $note"
}

if ! "$PY" -c "import torch, lightning, hydra, faiss, resemblyzer" 2>"$OUT/logs/preflight.log"; then
    echo "gpu_check.sh: the project's packages do not import with $PY ($(tail -n 1 "$OUT/logs/preflight.log"))." >&2
    echo "  Create the environment first: python3 -m venv .venv && . .venv/bin/activate && pip install -c requirements.lock -e ." >&2
    exit 2
fi
if [ "$MODE" = gpu ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: torch.cuda.is_available() is False ($("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)')): no usable GPU or a CPU-only torch build." >&2
    echo "  Run on a machine with a GPU, or use --cpu for the CPU rehearsal." >&2
    record preflight failed "torch.cuda.is_available() is False"
    exit 2
fi

N_GPUS=0
if [ "$MODE" = gpu ]; then
    if command -v nvidia-smi >/dev/null; then N_GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
    else N_GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())"); fi
fi
GIT="not a git checkout"
if git rev-parse --short HEAD >/dev/null 2>&1; then
    GIT="git $(git rev-parse --short HEAD)$(git diff --quiet HEAD 2>/dev/null || echo ', uncommitted changes')"
fi
{
    echo "# GPU check, $(date '+%Y-%m-%d %H:%M:%S')"
    echo
    echo "Command: \`$CMDLINE\` (mode $MODE, budget $BUDGET s) in $ROOT ($GIT)"
    echo
    case "$MODE" in
        gpu) echo "nvidia-smi -L: $(nvidia-smi -L 2>/dev/null | tr '\n' ';')" ;;
        cpu) echo "--cpu: trainer=cpu / trainer=ddp_sim (2 processes) at 32-true, tiny corpus, crops, models and budgets: proves the script, not the GPU; its rates are not benchmarks." ;;
        cpu-full) echo "--cpu-full: trainer=cpu / trainer=ddp_sim (2 processes) at 32-true, the experiments' own sizes and the GPU budgets." ;;
    esac
    echo
    echo "| step | status | metric | value | goal | note |"
    echo "|---|---|---|---:|---|---|"
} >> "$OUT/results.md"

rows_of() {  # result rows of a step so far
    local n; n=$(grep -c "\"step\": \"$1\"" "$OUT/results.jsonl" 2>/dev/null); echo "${n:-0}"
}
N_OK=0 N_FAILED=0 N_SKIPPED=0
run_step() {  # name timeout_s gpu_check.py-arguments...
    local name="$1" limit=$(($2 * SCALE)); shift 2
    if [ -n "$ONLY" ] && [[ "$ONLY" != *",$name,"* ]]; then return; fi
    local left=$((DEADLINE - $(date +%s)))
    if [ "$left" -lt 20 ]; then
        record "$name" skipped "out of the time budget (--budget-s $BUDGET)"; N_SKIPPED=$((N_SKIPPED + 1)); return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local log="$OUT/logs/$name.log" before t0 rc
    before=$(rows_of "$name"); t0=$(date +%s)
    echo "== $name (timeout ${limit}s)"
    timeout --kill-after=15 "$limit" "$PY" scripts/gpu_check.py "$@" --step "$name" --out "$OUT" --work "$WORK" \
        "${FLAGS[@]}" --timeout "$limit" > "$log" 2>&1
    rc=$?
    local took=$(($(date +%s) - t0))
    if [ $rc -eq 0 ] && [ "$(rows_of "$name")" -gt "$before" ]; then
        N_OK=$((N_OK + 1)); echo "   ok in ${took}s"
    elif [ $rc -eq 124 ] || { [ $rc -eq 137 ] && [ "$took" -ge "$limit" ]; }; then
        record "$name" failed "timed out after ${limit}s (log: logs/$name.log)"; N_FAILED=$((N_FAILED + 1))
    elif [ $rc -eq 137 ]; then  # SIGKILL before the limit: the kernel's out-of-memory killer, most likely
        record "$name" failed "killed (SIGKILL) after ${took}s of ${limit}s: out of memory? (log: logs/$name.log)"
        N_FAILED=$((N_FAILED + 1))
    else
        local why
        why="$(grep -E '^[A-Za-z_.]*(Error|Exception|Interrupt)\b|^SystemExit|Error: ' "$log" | tail -n 1)"
        [ -z "$why" ] && why="$(tail -n 1 "$log")"
        [ $rc -eq 0 ] && why="exit 0 but no result rows"
        record "$name" failed "rc $rc after ${took}s: $why (log: logs/$name.log)"; N_FAILED=$((N_FAILED + 1))
    fi
}

STEP_ARGS=()
[ "$STEPS" -gt 0 ] && STEP_ARGS=(--steps "$STEPS")
EXPERIMENTS=(triplet_speaker contrastive_mtl distill_base ser_finetune)

run_step env 60 env
run_step data 120 data
for e in "${EXPERIMENTS[@]}"; do run_step "train-single-$e" 90 train --experiment "$e" --trainer single "${STEP_ARGS[@]}"; done
run_step clustering 120 clustering
run_step cosine 90 cosine
run_step resume 150 resume
for e in "${EXPERIMENTS[@]}"; do run_step "train-ddp-$e" 90 train --experiment "$e" --trainer ddp "${STEP_ARGS[@]}"; done
if [ "$MODE" = gpu ]; then
    if [ "$N_GPUS" -ge 2 ]; then
        run_step train-ddp2-contrastive_mtl 150 train --experiment contrastive_mtl --trainer ddp2 "${STEP_ARGS[@]}"
    else
        record train-ddp2-contrastive_mtl skipped "nvidia-smi -L shows $N_GPUS GPU(s): the 2-process DDP run needs 2"
    fi
fi

TOTAL=$(($(date +%s) - START))
{
    echo
    echo "$N_OK steps ok, $N_FAILED failed, $N_SKIPPED skipped for the time budget, in ${TOTAL} s. Per-step logs: logs/<step>.log; rows also in results.jsonl."
} >> "$OUT/results.md"
echo
cat "$OUT/results.md"
echo
echo "results: $OUT/results.md"
# exit 0 only when every step that could run here ran and worked
[ "$N_FAILED" -eq 0 ] && [ "$N_SKIPPED" -eq 0 ]
