#!/usr/bin/env bash
# One GPU session for the path around the kernel (H100/H200): the layout, NaN-policy and
# no-host-sync tests, the kernel and whole-model GPU tests, the op's host-cost profile, then the
# end-to-end table (benchmarks/e2e.py). Each stage has its own time limit so that one lease
# returns every stage's log. Usage: benchmarks/gpu_model_path.sh OUT_DIR [tests|bench|all]
set -u -o pipefail
out=${1:?usage: gpu_model_path.sh OUT_DIR [tests|bench|all]}
what=${2:-all}
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi -L
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
