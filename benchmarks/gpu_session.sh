#!/usr/bin/env bash
# One GPU lease, in stages with their own time limits (each logs under OUT): the GPU tests, the
# forward+backward table (benchmarks/gpu_attention.py --backward), the training-step table
# (benchmarks/train_step.py), the dispatch probe, the op's host-cost profile,
# the op-call cost table, and e2e rows of the given models (binattn/bench/models.py names with
# their time limits, e.g. vit_b:100 bert:100; each writes OUT/e2e_MODEL/e2e.json and its log).
# Usage: benchmarks/gpu_session.sh OUT_DIR [tests] [backward] [train] [probe] [host] [opcall]
#        [MODEL:SEC ...]
set -u -o pipefail
out=${1:?usage: gpu_session.sh OUT_DIR [STAGE ...] (see the header)}
shift
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi -L
for stage in "$@"; do
  case $stage in
    tests)
      timeout 170 python3 -m pytest -q -p no:cacheprovider --maxfail=20 tests/test_gpu_layouts.py \
        tests/test_model_path.py tests/test_gpu_models.py tests/test_gpu_kernels.py \
        tests/test_ops_sdpa.py \
        > "$out/gpu_tests.log" 2>&1
      echo "tests: exit $?"; grep -E "passed|failed|Error|FAILED" "$out/gpu_tests.log" | tail -25 ;;
    backward)
      timeout 200 python3 benchmarks/gpu_attention.py --backward --out "$out/backward" \
        > "$out/backward.log" 2>&1
      echo "backward: exit $?"; tail -16 "$out/backward.log" ;;
    train)
      timeout 170 python3 benchmarks/train_step.py --out "$out/train" > "$out/train.log" 2>&1
      echo "train: exit $?"; grep -v -e USDT -e Warning "$out/train.log" | tail -14 ;;
    probe)
      timeout 45 python3 benchmarks/op_dispatch_probe.py > "$out/probe.log" 2>&1
      echo "probe: exit $?"; head -6 "$out/probe.log" ;;
    host)
      timeout 40 python3 benchmarks/op_host_profile.py --calls 300 > "$out/host_profile.log" 2>&1
      echo "host: exit $?"; tail -3 "$out/host_profile.log" ;;
    opcall)
      timeout 40 python3 -c "import json, binattn.bench.e2e as e
print(json.dumps(e.op_call_cost(100)))" > "$out/op_call.log" 2>&1
      echo "opcall: exit $?"; tail -1 "$out/op_call.log" ;;
    *:*)
      model=${stage%%:*}
      timeout "${stage##*:}" python3 benchmarks/e2e.py --device cuda --no-op --reps 100 \
        --out "$out/e2e_$model" --models "$model" > "$out/e2e_$model.log" 2>&1
      echo "$model: exit $?"; grep -v -e USDT -e Warning "$out/e2e_$model.log" | tail -22 ;;
  esac
done
