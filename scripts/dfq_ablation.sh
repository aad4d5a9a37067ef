#!/usr/bin/env bash
# The dfq ablation tables of docs/dfq_ablation.md, made by graphcomp bench.
# Every dfq row runs data-free (stats=data-free: BatchNorm statistics where the model
# has them, else synthetic inputs); only the onnxruntime baselines use the calibration
# samples. Usage: scripts/dfq_ablation.sh > ablation.md   (~4 minutes on 2 cores), then
# replace the tables of docs/dfq_ablation.md (everything below its introduction) with it.
set -euo pipefail
cd "$(dirname "$0")/.."
for model in mobilenetv2_s resnet_s vgg_s densecat_s; do
  for twin in "${model}_bn" "${model}"; do
    cmd="graphcomp bench models/${twin}.onnx --passes none \
--passes dfq(per_channel=false,equalize=false,correct=false,stats=data-free) \
--passes dfq(per_channel=false,correct=false,stats=data-free) \
--passes dfq(per_channel=false,absorb=true,correct=false,stats=data-free) \
--passes dfq(per_channel=false,absorb=true,stats=data-free) \
--passes dfq(per_channel=false,stats=data-free) \
--passes dfq(per_channel=true,equalize=false,correct=false,stats=data-free) \
--baseline ort-static-pt --baseline ort-static-pc \
--calibration-data models/data/glyphs_calib.npz --eval models/data/glyphs_eval.npz \
--batch 1 --runs 10 --markdown"
    printf '\n```sh\n%s\n```\n\n' "$cmd"
    read -ra args <<< "$cmd"
    PYTHONPATH=. python -m graphcomp "${args[@]:1}"
  done
done
