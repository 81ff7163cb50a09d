#!/usr/bin/env bash
# The GPU checks and measurements of docs/benchmarks.md, for a CUDA machine with torch, timm,
# pytest and nvidia-ml-py installed (and the project's own dependencies, Ray among them, for
# bench.gpu_search). Benches run as modules of this checkout; logs go to ${OUT:-runs/gpu}.
#   bash bench/gpu_session.sh            # both parts
#   bash bench/gpu_session.sh 1          # part 1: GPU tests, trials per GPU, short vs-timm runs
#   bash bench/gpu_session.sh 2          # part 2: longer vs-timm runs, formats, A/A, units
#   bash bench/gpu_session.sh ray        # search vs standalone over 3 alternating rounds; Ray
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu}
mkdir -p "$out"
py=${PYTHON:-python3}
part=${1:-all}
timm_bench() { $py -m bench.bench_vs_timm --device cuda --amp --batch-size 64 --image-size 224 "$@"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$out/gpu.txt"
$py -c "import torch, timm, platform; print('torch', torch.__version__, 'timm', timm.__version__, 'python', platform.python_version(), 'cpus', __import__('os').cpu_count())" | tee -a "$out/gpu.txt"
if [ "$part" = ray ]; then  # search trials against standalone: medians over alternating rounds
  trap 'cp "${SCRATCH:-$out}/gpu-search/gpu_search.json" "$out/gpu_search_rounds.json"' EXIT
  $py -m bench.gpu_search --concurrency 1 4 --trials 4 --epochs 6 --rounds 3 \
    --out "${SCRATCH:-$out}/gpu-search" 2>&1 | tee "$out/gpu_search_rounds.txt"
  exit 0
fi
if [ "$part" != 2 ]; then
  $py -m pytest -m gpu tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.txt"
  $py -m bench.gpu_trials --device cuda --epochs 10 --formats 3 --output "$out/gpu_trials.json" 2>&1 | tee "$out/gpu_trials.txt"
  if $py -c "import ray.tune" 2>/dev/null; then  # real searches through Ray Tune, 1/2/4 per GPU
    $py -m bench.gpu_search --rounds 2 --out "$out/gpu-search" 2>&1 | tee "$out/gpu_search.txt"
  else
    echo "Ray is not installed here: skipping bench.gpu_search" | tee "$out/gpu_search.txt"
  fi
  for fmt in "" "--channels-last"; do
    timm_bench $fmt --rounds 10 --steps-per-round 5 --warmup 3 2>&1 | tee -a "$out/vs_timm.txt"
  done
fi
[ "$part" = 1 ] && exit 0
long=(--repeats 2 --rounds 16 --steps-per-round 5 --warmup 3)
timm_bench --channels-last "${long[@]}" 2>&1 | tee "$out/vs_timm_long.txt"
timm_bench --channels-last --aa --models resnest50d "${long[@]}" 2>&1 | tee "$out/aa.txt"
timm_bench --formats "${long[@]}" 2>&1 | tee "$out/formats.txt"
for fmt in "--channels-last" ""; do
  timm_bench --unit split-attention $fmt --rounds 10 --steps-per-round 10 --warmup 3 2>&1 | tee -a "$out/units.txt"
done
