#!/usr/bin/env bash
# Train the bundled land-cover model on a CUDA machine (the lent GPU), results into $OUT.
#   bash scripts/gpu_train.sh DATA_DIR [MINUTES]
# DATA_DIR holds images/ and masks/ of the Dubai aerial set (../shared/data/dubai_aerial).
# The recipe is chosen with tiles 1 and 4 held out (the default, VAL='^tile(1|4)_'); the shipped
# model is then trained on all six tiles with the same recipe and schedule (VAL=none: no
# validation, so checkpoint averaging, when the recipe has it, gives the file).
# EPOCHS x PASSES sets the length of the cosine schedule, so that a longer budget gets a longer
# schedule rather than a cut one: 60 x 2 without validation, 20 x 6 with it (the same windows; on
# an H100 validating tiles 1 and 4 takes 2.6 s, which 60 epochs made 40% of a 4-minute budget,
# and the budget then cut every epoch to a third); INIT=MODEL fine-tunes that model file instead;
# RECIPE adds train.py options, e.g. RECIPE="--rare-fraction 0.25 --class-weight-power 0.25 --average-last 5";
# WORKERS (default 12) loader processes.
set -uo pipefail
DATA=${1:?give the folder with images/ and masks/}
MINUTES=${2:-4.5}
VAL=${VAL:-'^tile(1|4)_'}
if [ "$VAL" = none ]; then EPOCHS=${EPOCHS:-60} PASSES=${PASSES:-2}; else EPOCHS=${EPOCHS:-20} PASSES=${PASSES:-6}; fi
OUT=${OUT:-gpu_output}
WORKERS=${WORKERS:-12}
DEVICE=${DEVICE:-cuda}  # cpu only to try this script where there is no GPU
LOG=$(mktemp -d /tmp/train_log.XXXXXX)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 | tee "$OUT/env.txt"
if [ "$VAL" = none ]; then SPLIT=(--val-fraction 0); else SPLIT=(--val-pattern "$VAL"); fi
# shellcheck disable=SC2086  # RECIPE is a list of options
python3 scripts/train.py "$DATA/images" "$DATA/masks" --out "$OUT/landcover_default.safetensors" \
  --log-dir "$LOG" "${SPLIT[@]}" --epochs "$EPOCHS" --passes "$PASSES" --tile 384 --batch-size 16 \
  --base-width 32 --depth 4 --lr 2e-3 --rare-fraction 0.5 --loss dice --workers "$WORKERS" --half-weights \
  --max-minutes "$MINUTES" ${INIT:+--init "$INIT"} --device "$DEVICE" --name "Dubai aerial land cover U-Net (5 classes)" \
  ${RECIPE:-} 2>&1 | tr '\r' '\n' | grep -v '^epoch .*\] ' | tee "$OUT/train.txt"
cp "$LOG"/epochs.csv "$LOG"/*.png "$OUT/" 2>/dev/null
ls -la "$OUT"
