#!/usr/bin/env bash
# Choose a training recipe and train the shipped land-cover model with it, in one run on a lent GPU.
#   bash scripts/gpu_recipes.sh DATA_DIR RECIPES_FILE [SELECT_MINUTES] [SHIP_MINUTES]
# RECIPES_FILE: one recipe a line, "name: train.py options" (lines starting with # are skipped).
# 1. Each recipe trains in turn with tiles 1 and 4 held out (scripts/gpu_train.sh's default VAL),
#    for SELECT_MINUTES each, alone on the machine: side by side on one H100 two runs shared it
#    unevenly (one timed 0.11 s a step, the other 0.04 s, and planned half the steps), which no
#    comparison survives.
# 2. The recipe with the best held-out mean IoU (the validation column of its epochs.csv) trains
#    the shipped model on all six tiles (VAL=none) for SHIP_MINUTES, alone on the machine.
# Into $OUT: selection.txt (each recipe's best held-out mean IoU, the one chosen),
# heldout.safetensors (the chosen recipe's held-out model, for scripts/evaluate.py),
# landcover_default.safetensors (the shipped candidate) and logs.tar.gz (every run's log and
# epochs.csv), so that what comes back stays within a few files.
set -uo pipefail
DATA=${1:?give the folder with images/ and masks/}
RECIPES=${2:?give the recipes file}
SELECT_MINUTES=${3:-3}
SHIP_MINUTES=${4:-4}
OUT=${OUT:-gpu_output}
RUNS=$(mktemp -d /tmp/recipes.XXXXXX)
mkdir -p "$OUT"
here=$(cd "$(dirname "$0")" && pwd)

mapfile -t lines < <(grep -v '^[[:space:]]*\(#\|$\)' "$RECIPES")
[ "${#lines[@]}" -gt 0 ] || { echo "no recipes in $RECIPES" >&2; exit 2; }
for line in "${lines[@]}"; do
  name=${line%%:*}; opts=${line#*:}
  OUT="$RUNS/$name" RECIPE="$opts" bash "$here/gpu_train.sh" "$DATA" "$SELECT_MINUTES" > "$RUNS/$name.out" 2>&1
done

best=""; best_miou=-1
for line in "${lines[@]}"; do
  name=${line%%:*}
  miou=$(python3 - "$RUNS/$name/epochs.csv" <<'EOF'
import csv, sys
try:
    rows = list(csv.DictReader(open(sys.argv[1])))
    print(max(float(r["val_miou"]) for r in rows if r.get("val_miou")))
except (OSError, ValueError, KeyError):
    print(-1)
EOF
)
  echo "$name held-out mean IoU $miou (${line#*:})" | tee -a "$OUT/selection.txt"
  if python3 -c "import sys; sys.exit(not float('$miou') > float('$best_miou'))"; then best=$name; best_miou=$miou; fi
done
if [ -z "$best" ]; then echo "no recipe finished; see the logs" | tee -a "$OUT/selection.txt"
else
  echo "chosen: $best ($best_miou)" | tee -a "$OUT/selection.txt"
  cp "$RUNS/$best/landcover_default.safetensors" "$OUT/heldout.safetensors"
  opts=$(printf '%s\n' "${lines[@]}" | grep "^$best:" | head -1); opts=${opts#*:}
  OUT="$RUNS/ship" RECIPE="$opts" VAL=none bash "$here/gpu_train.sh" "$DATA" "$SHIP_MINUTES" \
    > "$RUNS/ship.out" 2>&1
  cp "$RUNS/ship/landcover_default.safetensors" "$OUT/" 2>/dev/null || echo "the shipped run wrote no model" | tee -a "$OUT/selection.txt"
fi
find "$RUNS" -name '*.safetensors' -delete
tar -czf "$OUT/logs.tar.gz" -C "$RUNS" .
ls -la "$OUT"
