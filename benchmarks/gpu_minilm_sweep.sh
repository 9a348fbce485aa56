#!/usr/bin/env bash
# MiniLM distillation variants side by side on one GPU lease (issue 19's recipe search): each
# variant is its own benchmarks/train_minilm.py process on the english-mix bundle, all started
# together (the model is small: the GPU and the host's cores have room for several), each with
# the same time limit; every result lands in OUT/<variant>/results.jsonl and its log.
# Usage: benchmarks/gpu_minilm_sweep.sh OUT_DIR BUNDLE_DIR SECONDS VARIANT...
#   VARIANT = name:experiment:steps:lr:batch[:ste_clip], e.g. base:attn:4500:2e-4:16
set -u -o pipefail
out=${1:?usage: gpu_minilm_sweep.sh OUT_DIR BUNDLE_DIR SECONDS VARIANT...}
bundle=${2:?bundle folder (train_minilm.py --pack)}
seconds=${3:?time limit of every variant}
shift 3
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi -L
for variant in "$@"; do
  IFS=: read -r name experiment steps lr batch clip <<< "$variant"
  timeout "$seconds" python3 benchmarks/train_minilm.py --bundle "$bundle" --device cuda \
    --experiments "$experiment" --steps "$steps" --lr "$lr" --batch "$batch" \
    ${clip:+--ste-clip "$clip"} \
    --autocast bfloat16 --length-buckets 50 --out "$out/$name" > "$out/$name.log" 2>&1 &
done
wait
for variant in "$@"; do
  name=${variant%%:*}
  echo "== $name ($variant)"; grep -E "^\[minilm\]|^    [a-z]+ +cos" "$out/$name.log" \
    || tail -5 "$out/$name.log"
done
