#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one run: the CUDA tests and the engine's GPU figures.
# Run from the repository root on a machine with an NVIDIA GPU; results go to $OUT (default ./gpu_output).
# Python packages the GPU image lacks may be passed as wheels in .whl/ (see the README). The lent image (Python
# 3.12) has no rasterio, which the whole-path figures need; its wheel with GDAL inside, small enough to travel
# beside the repository (64 MiB in all, so leave .gpu/ out of that call):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl rasterio==1.4.3 affine cligj click-plugins
set -uo pipefail
OUT=${OUT:-gpu_output}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, numpy, rasterio; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__, 'rasterio', rasterio.__version__, rasterio.__gdal_version__)"
  nproc
} 2>&1 | tee "$OUT/env.txt"

timeout 150 python3 -m pytest -q -p no:cacheprovider tests/unit/test_segment.py tests/unit/test_unet.py \
  tests/unit/test_windows.py tests/unit/test_blend.py tests/unit/test_model_file.py tests/unit/test_multidevice.py -rs 2>&1 | tee "$OUT/tests.txt" | tail -15

nvidia-smi dmon -s u -d 1 > "$OUT/dmon.txt" 2>&1 &
DMON=$!
{
  # the bundled model needs no rasterio (the GPU image has none; carry its wheels in .whl/ for the rest)
  for b in 8 32; do python3 scripts/bench.py model --model landcover_default --device cuda --tile 512 --batch-size $b \
    --seconds 4 --compile reduce-overhead; done
  # the whole path per stage (polygons need GDAL's bindings, absent there): bundled model, then base-32 U-Nets
  for size in 4096 16384; do  # no GDAL bindings there
    python3 scripts/bench.py --size $size --device cuda --skip-vectorize --json --workdir /tmp
  done
  # fp16 (auto's choice on a GPU) and bf16 against fp32 on the committed crop and its mask
  for p in fp16 bf16; do
    python3 scripts/bench.py precision tests/data --device cuda --precision $p --workdir /tmp
  done
  # several processes on the GPUs: two on the one GPU check that parts give the one-process outputs on CUDA
  python3 scripts/bench.py parts --devices cuda:0,cuda:0 --single cuda --size 4096 --workdir /tmp
  if [ "$(nvidia-smi -L | wc -l)" -gt 1 ]; then
    python3 scripts/bench.py parts --devices cuda:all --single cuda --size 16384 --workdir /tmp
  fi
  for tb in "512 8" "512 32" "1024 8"; do
    set -- $tb
    python3 scripts/bench.py --size 4096 --base-channels 32 --device cuda --tile $1 --batch $2 --skip-vectorize \
      --json --workdir /tmp
  done
  python3 scripts/bench.py memory --device cuda --sizes 2048 16384 --workdir /tmp
} 2>&1 | tee "$OUT/bench.txt"
kill $DMON 2>/dev/null
echo done
