#!/usr/bin/env bash
# One GPU session for the path around the kernel (H100/H200): the layout, NaN-policy and
# no-host-sync tests, the kernel and whole-model GPU tests, the op's host-cost profile, then the
# end-to-end table (benchmarks/e2e.py). Each stage has its own time limit so that one lease
# returns every stage's log. Usage: benchmarks/gpu_model_path.sh OUT_DIR [tests|bench|e2e_all|all]
# e2e_all: every model of the e2e table (binattn/bench/models.py), full size, one process and
# one time limit each (9¼ minutes at most); each writes $out/e2e_MODEL/e2e.json (and
# e2e_rows.jsonl, row by row) and $out/e2e_MODEL.log (which path a time-out stopped at).
set -u -o pipefail
out=${1:?usage: gpu_model_path.sh OUT_DIR [tests|bench|e2e_all|all]}
what=${2:-all}
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi -L
if [[ $what == e2e_all ]]; then
  timeout 40 python3 -c "import json, binattn.bench.e2e as e
print(json.dumps(e.op_call_cost(100)))" > "$out/op_call.log" 2>&1
  tail -1 "$out/op_call.log"
  # model:seconds (12-layer ViT-B and BERT, and HunyuanVideo, compile longest; a model's rows
  # come when all its paths are built and timed, and its log says which path it reached)
  for entry in vit_b:100 dit_xl:55 flux:55 video:150 bert:100 llama:55; do
    model=${entry%%:*}
    timeout "${entry##*:}" python3 benchmarks/e2e.py --device cuda --no-op --reps 100 \
      --out "$out/e2e_$model" --models "$model" > "$out/e2e_$model.log" 2>&1
    echo "$model: exit $?"
    grep -v -e USDT -e Warning "$out/e2e_$model.log" | tail -22
  done
  exit 0
fi
if [[ $what != bench ]]; then
  timeout 200 python3 -m pytest -q -p no:cacheprovider --maxfail=20 tests/test_gpu_layouts.py \
    tests/test_model_path.py tests/test_gpu_models.py tests/test_gpu_kernels.py 2>&1 \
    | tail -30 > "$out/gpu_tests.log"
  tail -12 "$out/gpu_tests.log"
fi
if [[ $what != tests ]]; then
  timeout 40 python3 benchmarks/op_host_profile.py --calls 300 2>&1 | tail -40 > "$out/host_profile.log"
  tail -3 "$out/host_profile.log"
  for model in vit_b vit_b_1024; do
    timeout 175 python3 benchmarks/e2e.py --out "$out/$model" --models "$model" 2>&1 \
      | tail -20 > "$out/e2e_$model.log"
    cat "$out/e2e_$model.log"
  done
fi
