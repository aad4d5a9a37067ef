#!/usr/bin/env bash
# Every pass, no data, on models the defaults were not chosen on: one line per run with
# the exit code, wall time, peak RSS and the first error or warning line.
# Usage: scripts/pass_sweep.sh MODEL.onnx[=INPUT:DIMS] ... > sweep.txt
#   e.g. scripts/pass_sweep.sh common_det.onnx=images:1x3x416x416 silero_vad.onnx
# Exit codes: 0 compressed, 2 refused in one line (a model graphcomp cannot take), any
# other code is a bug of graphcomp's. Outputs go to a temporary folder and are deleted.
set -uo pipefail
cd "$(dirname "$0")/.."
PASSES=(dfq qdq "prune(macs=0.9)" "svd(macs=0.8)" cleanup "prune(macs=0.9),svd(macs=0.8),dfq")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for spec in "$@"; do
  model=${spec%%=*}
  shape=()
  [[ $spec == *=* ]] && shape=(--input-shape "${spec#*=}")
  for passes in "${PASSES[@]}"; do
    start=$(date +%s.%N)
    /usr/bin/time -f "%M" -o "$work/mem" \
      python -m graphcomp run "$model" --passes "$passes" "${shape[@]}" -o "$work/out.onnx" \
      > "$work/log" 2>&1
    rc=$?
    secs=$(echo "$(date +%s.%N) - $start" | bc)
    first=$(grep -m1 -E '^error|warning' "$work/log" | cut -c1-160)
    printf '%s | %s | rc=%s | %.1f s | %s MB | %s\n' "$(basename "$model")" "$passes" "$rc" \
      "$secs" "$(( $(tail -1 "$work/mem") / 1024 ))" "$first"
    rm -f "$work/out.onnx" "$work/out.onnx.data"
  done
done
