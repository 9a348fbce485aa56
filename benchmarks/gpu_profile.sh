#!/usr/bin/env bash
# Profile binattn's fused CUDA attention kernel with Nsight Compute (on the GPU machine):
# SASS instruction mix of the shipped library, ncu's pipe/stall/memory sections for one launch
# and the warp stall breakdown by reason (stalls.txt).
# Usage: benchmarks/gpu_profile.sh OUT_DIR [B,H,N,D]   (default 2,16,4096,64, bf16, non-causal)
set -u -o pipefail
out=${1:?usage: gpu_profile.sh OUT_DIR [B,H,N,D]}
shape=${2:-2,16,4096,64}
mkdir -p "$out"
if ! python3 -c "import tvm_ffi" 2>/dev/null && ls .whl/apache_tvm_ffi-*cp312*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/apache_tvm_ffi-*cp312*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
dv=$(python3 -c "from binattn.schedules.cuda.attention import dv_bucket; print(dv_bucket(int('$shape'.split(',')[3])))")
kernel="binattn_attention_bfloat16_dv${dv}_kernel"
cuobjdump -sass -fun "$kernel" binattn/kernels/binattn_cuda_sm_90a.so > "$out/sass.txt" 2>&1
echo "SASS instruction mix of $kernel:"
grep -oE '^\s+/\*[0-9a-f]{4}\*/\s+(@!?U?P[0-9T] )?[A-Z][A-Z0-9_]*' "$out/sass.txt" | awk '{print $NF}' \
  | sort | uniq -c | sort -rn | head -30 | tee "$out/sass_mix.txt"
cat > /tmp/launch.py <<PY
import torch, binattn
B, H, N, D = map(int, "$shape".split(","))
q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
for _ in range(3):
    binattn.ops.binary_attention(q, k, v)
torch.cuda.synchronize()
PY
ncu -k "regex:binattn_attention" -s 1 -c 1 \
  --section SpeedOfLight --section ComputeWorkloadAnalysis --section InstructionStats \
  --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats \
  --section MemoryWorkloadAnalysis_Tables --page details python3 /tmp/launch.py 2>&1 | tee "$out/ncu.txt" | tail -150
# warp stall breakdown (cycles per issued instruction by reason) and exp-unit / tensor-pipe use
stalls=""
for r in wait short_scoreboard long_scoreboard math_pipe_throttle mio_throttle barrier drain \
         not_selected selected dispatch_stall no_instruction branch_resolving lg_throttle imc_miss; do
  stalls="$stalls,smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio"
done
ncu -k "regex:binattn_attention" -s 1 -c 1 --metrics "${stalls#,},smsp__inst_executed.sum,\
smsp__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,\
smsp__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active" python3 /tmp/launch.py 2>&1 \
  | grep -E "stalled|inst_executed|pipe" | sed 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' \
  | tee "$out/stalls.txt"
