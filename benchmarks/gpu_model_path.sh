#!/usr/bin/env bash
# The path around the kernel on one GPU lease (H100/H200), as named sets of the stages of
# benchmarks/gpu_session.sh (which has the commands and their time limits):
#   tests    the layout, NaN-policy and no-host-sync tests, the kernel and whole-model GPU tests
#   bench    the op's host-cost profile, then the e2e rows of ViT-B at 224² and at 1024²
#   e2e_all  the op-call cost, then every model of the e2e table (binattn/bench/models.py), full
#            size, one process and one time limit each (9¼ minutes at most)
#   all      tests, then bench
#   training the GPU tests, the forward+backward table of the CUDA training path, the
#            training-step table, the dispatch probe (≈ 5 minutes)
# Usage: benchmarks/gpu_model_path.sh OUT_DIR [tests|bench|e2e_all|all|training]
set -u -o pipefail
out=${1:?usage: gpu_model_path.sh OUT_DIR [tests|bench|e2e_all|all|training]}
bench=(host vit_b:175 vit_b_1024:175)
case ${2:-all} in
  tests) stages=(tests) ;;
  bench) stages=("${bench[@]}") ;;
  e2e_all) stages=(opcall vit_b:100 dit_xl:55 flux:55 video:150 bert:100 llama:55) ;;
  all) stages=(tests "${bench[@]}") ;;
  training) stages=(tests backward train probe) ;;
  *) echo "unknown set '$2': tests, bench, e2e_all, all or training" >&2; exit 2 ;;
esac
exec "$(dirname "$0")/gpu_session.sh" "$out" "${stages[@]}"
