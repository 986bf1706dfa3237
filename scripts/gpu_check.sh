#!/usr/bin/env bash
# The GPU check (about 5 minutes on a CUDA machine): mixed precision and DDP on every visible GPU.
#   - trains a teacher (float16 AMP) and a student (bfloat16 AMP, stopped and resumed) with
#     torchrun --nproc_per_node=<GPUs>, and distils with every registered method in one recipe (float16 AMP);
#   - checks that a one-process evaluation of the distilled checkpoint gives the scores the run reported;
#   - runs the CUDA-only tests (tests/test_amp.py: a step of every method under CUDA float16 / bfloat16).
# Prints one verdict line, "gpu_check: PASS ..." or "gpu_check: FAIL ...", and exits 0 only on PASS.
# Run from anywhere after `make setup`: bash scripts/gpu_check.sh  (logs: the directory named in the verdict).
# GPU_CHECK_ON_CPU=1 runs the same steps on 2 CPU processes (gloo), to test the script without a GPU.
set -u
cd "$(dirname "$0")/.." || exit 2
PY=.venv/bin/python
TORCHRUN=.venv/bin/torchrun
START=$SECONDS

verdict() {  # verdict PASS|FAIL "what"; exit status 0 for PASS, 1 for FAIL
    echo "gpu_check: $1 $2 ($((SECONDS - START)) s)"
    [ "$1" = PASS ]
    exit $?
}

[ -x "$PY" ] && [ -x "$TORCHRUN" ] || verdict FAIL "no virtual environment at .venv (run make setup first)"
if [ "${GPU_CHECK_ON_CPU:-0}" = 1 ]; then  # the script itself tested without a GPU: 2 CPU processes (gloo)
    GPUS=2 DEVICE=cpu SIZE=64
else
    GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    [ "${GPUS:-0}" -gt 0 ] || verdict FAIL "no CUDA GPU found (nvidia-smi -L lists none): nothing was checked"
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() and torch.cuda.device_count() > 0 else 1)" \
        || verdict FAIL "nvidia-smi lists $GPUS GPU(s) but torch.cuda.is_available() is False (CPU-only torch wheel?)"
    DEVICE=cuda SIZE=128
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
FAILED=()
step() {  # step NAME SECONDS CMD...: run CMD with a time limit, its output in $WORK/NAME.log
    local name=$1 limit=$2
    shift 2
    if timeout "$limit" "$@" >"$WORK/$name.log" 2>&1; then
        echo "gpu_check: ok   $name"
    else
        echo "gpu_check: FAIL $name (see $WORK/$name.log)"
        tail -n 5 "$WORK/$name.log" | sed 's/^/    /'
        FAILED+=("$name")
    fi
}

BATCH=$((2 * GPUS))  # the global batch: 2 images per GPU
DATA=(data.root="$WORK/data" data.image_size=$SIZE data.crop_size=$SIZE data.num_train=$((4 * BATCH)) data.num_val=16)
COMMON=("${DATA[@]}" out_dir="$WORK/runs" train.iterations=10 train.batch_size=$BATCH train.eval_interval=5
        train.checkpoint_interval=5 train.log_interval=1 eval.batch_size=4 train.device=$DEVICE)
DDP=("$TORCHRUN" --standalone --nproc_per_node="$GPUS" -m kdlab)

# Every registered method in one recipe (one launch instead of one per method).
"$PY" - "$WORK/all_methods.yaml" <<'PYEOF' || verdict FAIL "could not list kdlab.losses.REGISTRY"
import sys
from kdlab.losses import REGISTRY
lines = ["description: every registered method (gpu_check)", "methods:"]
lines += [f"  - method: {name}\n    name: {name}\n    weight: 0.1" for name in sorted(REGISTRY)]
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PYEOF

step data 120 "$PY" -m kdlab data generate "${DATA[@]}"
step teacher-ddp-fp16 120 "${DDP[@]}" train -c configs/teacher.yaml name=teacher "${COMMON[@]}" \
    model.encoder=resnet18 train.amp_dtype=float16
step student-ddp-bf16-until5 90 "${DDP[@]}" train -c configs/student.yaml name=student "${COMMON[@]}" \
    train.amp_dtype=bfloat16 --until 5
step student-ddp-bf16-resume 90 "${DDP[@]}" train --resume "$WORK/runs/student"
step distill-all-methods-ddp-fp16 150 "${DDP[@]}" distill -c configs/student.yaml name=distill "${COMMON[@]}" \
    --recipe "$WORK/all_methods.yaml" --teacher "$WORK/runs/teacher" train.amp_dtype=float16
step one-process-eval-matches 90 "$PY" - "$WORK/runs/distill" <<'PYEOF'
import json, sys
from pathlib import Path
from kdlab.engine import evaluate_checkpoint, run_config

run = Path(sys.argv[1])
reported = json.loads((run / "results.json").read_text())
scores = evaluate_checkpoint(run, run_config(run), progress=False)
print({k: (reported[k], scores[k]) for k in ("mIoU", "mAcc", "aAcc")})
# One process scores every image with the same weights; cuDNN may pick other kernels for other batch
# compositions, so allow a few flipped pixels.
bad = [k for k in ("mIoU", "mAcc", "aAcc", "trimap_mIoU") if abs(reported[k] - scores[k]) > 2e-3]
sys.exit(f"DDP and one-process scores differ in {bad}" if bad else 0)
PYEOF
step cuda-tests 150 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_amp.py
if [ "$DEVICE" = cuda ] && grep -q "needs a CUDA device" "$WORK/cuda-tests.log"; then
    echo "gpu_check: FAIL cuda-tests (CUDA tests were skipped)"
    FAILED+=("cuda-tests-skipped")
fi

if [ ${#FAILED[@]} -eq 0 ]; then
    verdict PASS "$GPUS $DEVICE process(es): AMP float16/bfloat16 + DDP train, resume and distill (every method), CUDA tests; logs in $WORK"
else
    verdict FAIL "$GPUS $DEVICE process(es): ${FAILED[*]} failed; logs in $WORK"
fi
