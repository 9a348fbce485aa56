#!/usr/bin/env bash
# One GPU session (H100/H200, no TVM there): GPU correctness tests, then optionally the timing of
# tuning candidates built here (`binattn tune --target cuda` /
# tvm_kernels.cuda.tune.build_candidates), then
# the benchmark table. Usage: benchmarks/gpu_check.sh OUT_DIR [CANDIDATE_DIR]
# Needs torch + apache-tvm-ffi (the cp312 wheel in .whl/ is installed when present).
set -u -o pipefail
out=${1:?usage: gpu_check.sh OUT_DIR [CANDIDATE_DIR]}
cands=${2:-}
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi -L
python3 -m pytest -q -p no:cacheprovider --maxfail=20 tests/test_gpu_kernels.py tests/test_gpu_models.py 2>&1 | tail -40 | tee "$out/gpu_tests.log"
# the sm_80 library (A100) through its PTX, JIT-compiled by the driver for this GPU: the same
# tests on the code sm_80 gets (mma.sync only, its default schedules), from a directory whose
# manifest lists only that library
sm80=$(mktemp -d)
python3 - "$sm80" <<'PY'
import json, sys
from pathlib import Path
src, dst = Path("binattn/kernels"), Path(sys.argv[1])
manifest = json.loads((src / "manifest.json").read_text())
entry = manifest["libraries"]["sm_80"]
(dst / entry["file"]).symlink_to((src / entry["file"]).resolve())
manifest["libraries"] = {"sm_80": entry}
(dst / "manifest.json").write_text(json.dumps(manifest))
PY
BINATTN_CUDA_KERNELS=$sm80 python3 -c "import torch; from binattn.tvm_kernels.cuda import dispatch as cd; print('library used:', cd.find_library(torch.cuda.get_device_capability())[2])" | tee "$out/gpu_tests_sm80.log"
BINATTN_CUDA_KERNELS=$sm80 python3 -m pytest -q -p no:cacheprovider --maxfail=20 tests/test_gpu_kernels.py tests/test_gpu_models.py 2>&1 | tail -40 | tee -a "$out/gpu_tests_sm80.log"
if [[ -n "$cands" ]]; then
  python3 -m binattn.tvm_kernels.cuda.tune time "$cands" 2>&1 | tee "$out/tune.log"
  cp "$cands/timings.json" "$out/tune_timings.json"
fi
python3 benchmarks/gpu_attention.py --out "$out" 2>&1 | tee "$out/bench.log"
