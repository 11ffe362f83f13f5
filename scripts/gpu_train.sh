#!/usr/bin/env bash
# Train the bundled land-cover model on a CUDA machine (the lent GPU), results into $OUT.
#   bash scripts/gpu_train.sh DATA_DIR [MINUTES]
# DATA_DIR holds images/ and masks/ of the Dubai aerial set (../shared/data/dubai_aerial).
# The recipe is chosen with tiles 1 and 4 held out (the default, VAL='^tile(1|4)_'); the shipped
# model is then trained on all six tiles with the same recipe and schedule (VAL=none: no
# validation, so checkpoint averaging, when the recipe has it, gives the file).
# EPOCHS (default 60) sets the length of the cosine schedule, so that a longer budget gets a
# longer schedule rather than a cut one; INIT=MODEL fine-tunes that model file instead;
# RECIPE adds train.py options, e.g. RECIPE="--rare-fraction 0.25 --class-weight-power 0.25 --average-last 5";
# WORKERS (default 12) loader processes, fewer when several runs share the machine (scripts/gpu_recipes.sh).
set -uo pipefail
DATA=${1:?give the folder with images/ and masks/}
MINUTES=${2:-4.5}
EPOCHS=${EPOCHS:-60}
VAL=${VAL:-'^tile(1|4)_'}
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
  --log-dir "$LOG" "${SPLIT[@]}" --epochs "$EPOCHS" --passes 2 --tile 384 --batch-size 16 \
  --base-width 32 --depth 4 --lr 2e-3 --rare-fraction 0.5 --loss dice --workers "$WORKERS" --half-weights \
  --max-minutes "$MINUTES" ${INIT:+--init "$INIT"} --device "$DEVICE" --name "Dubai aerial land cover U-Net (5 classes)" \
  ${RECIPE:-} 2>&1 | tr '\r' '\n' | grep -v '^epoch .*\] ' | tee "$OUT/train.txt"
cp "$LOG"/epochs.csv "$LOG"/*.png "$OUT/" 2>/dev/null
ls -la "$OUT"
