#!/usr/bin/env bash
# After the bf16 dtype fix (commit f1414eb): the 3B bf16 recipe of run.sh again, 6 steps, to see
# finite decoder losses and the step time with the optimizer update included.
set -u
OUT=${OUT:-/tmp/padt-gpu-out}
mkdir -p "$OUT/logs"
source bench/gpu/env.sh
nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -lms 200 > "$OUT/logs/nvidia-smi.csv" 2>&1 &
timeout --signal=INT --kill-after=5 ${LIMIT:-120} /tmp/padt-train --config bench/gpu/padt_rec_3b_bench.yaml \
  --random-init --set training.max_steps=6 --output-dir "$OUT/bf16" > "$OUT/logs/bf16.log" 2>&1
echo "rc $?"
kill %1 2>/dev/null
grep -E "^step [0-9]+/|components|s/step" "$OUT/logs/bf16.log"
cp "$OUT/bf16/metrics.jsonl" "$OUT/logs/bf16_metrics.jsonl" 2>/dev/null
echo "peak MiB $(cut -d, -f2 "$OUT/logs/nvidia-smi.csv" | tr -dc '0-9\n' | sort -n | tail -1)"
tar czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs" "$OUT/bf16"
