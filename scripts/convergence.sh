#!/usr/bin/env bash
# Issue 15's convergence study on the embedded benchmark: learning curves of the default student at three
# learning rates (2400 iterations) and at 4800 and 9600, of the teacher (4000 and 8000), and of the METHODS.md section 0
# student (PSPNet-R18, encoder_depth 5, output stride 8), then the figure and table
# (python -m kdlab.plots.learning_curves); last, PPD's DeepLabV3+ student at 9600 iterations, in its own
# figure and table (FIGURES_DIR/deeplabv3plus), and three smaller DeepLabV3+ students (FIGURES_DIR/deeplabv3plus_candidates*).
#   bash scripts/convergence.sh [RUNS_DIR] [FIGURES_DIR]     (default: runs/convergence, figures/convergence)
# Runs are resumed where an earlier call stopped; finished runs are kept. About 4.5 h on 2 quiet CPU cores for the
# PSPNet curves, and about an hour more for each DeepLabV3+ student (on an AVX-512 VM; twice that on an AVX2 one).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-runs/convergence}")
FIGURES=$(realpath -m "${2:-figures/convergence}")
KDLAB="${PYTHON:-.venv/bin/python} -m kdlab"
STUDENT=(train.iterations=2400 train.eval_interval=200 train.checkpoint_interval=400)

run() {  # run NAME CONFIG OVERRIDES...: train, resume or skip
  local name=$1 config=$2
  shift 2
  if [[ -f $OUT/$name/results.json ]]; then
    echo "$name: finished"
  elif [[ -f $OUT/$name/config.yaml ]]; then
    $KDLAB train --resume "$OUT/$name"
  else
    $KDLAB train -c "$config" "name=$name" "out_dir=$OUT" "$@"
  fi
}

for lr in 0.01 0.02 0.005; do
  run "curve-lr$lr" configs/student.yaml "${STUDENT[@]}" "train.lr=$lr"
done
run curve-lr0.01-4800 configs/student.yaml train.iterations=4800 train.eval_interval=400 train.checkpoint_interval=400
run teacher-curve configs/teacher.yaml train.iterations=4000 train.eval_interval=500 train.checkpoint_interval=500
run curve-d8-lr0.01 configs/student.yaml "${STUDENT[@]}" model.encoder_depth=5 model.output_stride=8
# Twice as long again: does the student plateau, and how far above it does a longer-trained teacher stay?
run curve-lr0.01-9600 configs/student.yaml train.iterations=9600 train.eval_interval=800 train.checkpoint_interval=400
run teacher-curve-8000 configs/teacher.yaml train.iterations=8000 train.eval_interval=1000 train.checkpoint_interval=500
${PYTHON:-.venv/bin/python} -m kdlab.plots.learning_curves "$FIGURES" "$OUT"/curve-lr0.01 "$OUT"/curve-lr0.02 \
  "$OUT"/curve-lr0.005 "$OUT"/curve-lr0.01-4800 "$OUT"/teacher-curve "$OUT"/curve-d8-lr0.01 \
  "$OUT"/curve-lr0.01-9600 "$OUT"/teacher-curve-8000
# PPD's rows train configs/student_deeplabv3plus.yaml on the same schedule as the PSPNet student: does it plateau too?
run curve-dlv3p-lr0.01-9600 configs/student_deeplabv3plus.yaml train.iterations=9600 train.eval_interval=800 \
  train.checkpoint_interval=400
${PYTHON:-.venv/bin/python} -m kdlab.plots.learning_curves "$FIGURES/deeplabv3plus" "$OUT"/curve-dlv3p-lr0.01-9600
# Candidates for a PPD student >= 8 points below the teacher (README: Convergence): the ResNet-18 encoder cut
# after layer2 (as the PSPNet student's), and PPD's second student, MobileNetV2.
run curve-dlv3p-d3-lr0.01-9600 configs/student_deeplabv3plus.yaml model.encoder_depth=3 train.iterations=9600 \
  train.eval_interval=800 train.checkpoint_interval=400
run curve-dlv3p-mnv2-lr0.01-9600 configs/student_deeplabv3plus.yaml model.encoder=mobilenet_v2 train.iterations=9600 \
  train.eval_interval=800 train.checkpoint_interval=400
${PYTHON:-.venv/bin/python} -m kdlab.plots.learning_curves "$FIGURES/deeplabv3plus_candidates" \
  "$OUT"/curve-dlv3p-d3-lr0.01-9600 "$OUT"/curve-dlv3p-mnv2-lr0.01-9600
# A third: the cut encoder with a decoder of 64 channels instead of 256 (smp's decoder_channels).
run curve-dlv3p-d3-dec64-lr0.01-9600 configs/student_deeplabv3plus.yaml model.encoder_depth=3 \
  'model.extra={decoder_channels: 64}' train.iterations=9600 train.eval_interval=800 train.checkpoint_interval=400
${PYTHON:-.venv/bin/python} -m kdlab.plots.learning_curves "$FIGURES/deeplabv3plus_candidates_dec64" \
  "$OUT"/curve-dlv3p-d3-dec64-lr0.01-9600
