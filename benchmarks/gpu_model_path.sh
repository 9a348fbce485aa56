#!/usr/bin/env bash
# One GPU session for the path around the kernel (H100/H200): the layout, NaN-policy and
# no-host-sync tests, the kernel and whole-model GPU tests, the op's host-cost profile, then the
# end-to-end table (benchmarks/e2e.py). Usage: benchmarks/gpu_model_path.sh OUT_DIR [tests|bench|all]
set -u -o pipefail
out=${1:?usage: gpu_model_path.sh OUT_DIR [tests|bench|all]}
what=${2:-all}
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi -L
if [[ $what != bench ]]; then
  python3 -m pytest -q -p no:cacheprovider --maxfail=20 tests/test_gpu_layouts.py \
    tests/test_model_path.py tests/test_gpu_kernels.py tests/test_gpu_models.py 2>&1 \
    | tail -40 | tee "$out/gpu_tests.log"
fi
if [[ $what != tests ]]; then
  python3 benchmarks/op_host_profile.py 2>&1 | tail -45 | tee "$out/host_profile.log"
  python3 benchmarks/e2e.py --out "$out" 2>&1 | tail -40 | tee "$out/e2e.log"
fi
