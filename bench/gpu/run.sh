#!/usr/bin/env bash
# One-call GPU check and benchmark of padt-train (bench/gpu/README.md says how to prepare it).
#
# Runs from the repository root on the GPU machine, with the stripped, xz-packed CUDA build of
# padt-train in .gpu/bin/ and the prepared inputs in .gpu/ (model configs, tokenizer, synthetic 560-px shards,
# the demo weights and their 20-step CPU trajectory). Writes logs and metrics under $OUT.
#   1. the demo recipe from fixed weights, 20 steps, f32: losses against the CPU run;
#   2. the full CPU demo recipe on the GPU (train + REC evaluation), timed;
#   3. the PaDT_REC_3B recipe with random weights, bf16, batch 4, 8 steps: step time and memory;
#   4. the same Qwen2.5-VL 3B step in PyTorch + transformers (tools/bench_gpu_reference.py).
# Every stage has its own time limit; a failing stage does not stop the others.
set -u
OUT=${OUT:-/tmp/padt-gpu-out}
mkdir -p "$OUT/logs"
LOG="$OUT/logs"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

source bench/gpu/env.sh >> "$SUMMARY"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee -a "$SUMMARY"
BIN=/tmp

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local start=$(date +%s%N)
  timeout --signal=INT --kill-after=10 "$limit" "$@" > "$LOG/$name.log" 2>&1
  local rc=$?
  local wall_ms=$(( ($(date +%s%N) - start) / 1000000 ))
  say "stage $name: rc $rc, wall ${wall_ms} ms"
  tail -n 12 "$LOG/$name.log" | sed 's/^/    /' | tee -a "$SUMMARY" > /dev/null
}

# GPU memory in use, sampled every 200 ms for the whole call.
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader -lms 200 \
  > "$LOG/nvidia-smi.csv" 2>&1 &
SMI=$!

# 1. Same weights and data as the CPU run in .gpu/demo_cpu20_metrics.jsonl.
stage demo20 60 $BIN/padt-train --config configs/demo_cpu.yaml --set model.path=.gpu/demo_model \
  --set data.datasets.0.shards=.gpu/demo_shards \
  --set training.devices=[cuda:0] --set training.per_device_batch_size=16 --set training.max_steps=20 --set logging.every_steps=1 \
  --set logging.progress_bar=false --set evaluation.shards=null --output-dir "$OUT/demo20"
cp "$OUT/demo20/metrics.jsonl" "$LOG/demo20_metrics.jsonl" 2>/dev/null

# 2. The README demo command, on the GPU.
stage demo_full 120 $BIN/padt-train --config configs/demo_cpu.yaml --random-init \
  --set training.devices=[cuda:0] --set training.per_device_batch_size=16 --set logging.progress_bar=false --output-dir "$OUT/demo_full"
cp "$OUT/demo_full/metrics.jsonl" "$LOG/demo_full_metrics.jsonl" 2>/dev/null
cp "$OUT/demo_full/eval_metrics.json" "$LOG/demo_full_eval_metrics.json" 2>/dev/null

# 3. 3B, ours.
stage ours_3b 200 $BIN/padt-train --config bench/gpu/padt_rec_3b_bench.yaml --random-init \
  --output-dir "$OUT/ours_3b"
cp "$OUT/ours_3b/metrics.jsonl" "$LOG/ours_3b_metrics.jsonl" 2>/dev/null

# 4. 3B, PyTorch reference (same config, batch, sequence and image size).
stage torch_3b 100 python3 tools/bench_gpu_reference.py --config .gpu/model3b/config.json \
  --batch 4 --grid-h 40 --grid-w 40 --seq-len 467 --completion-len 25 --steps 6 \
  --json "$LOG/torch_3b.json"

kill $SMI 2>/dev/null
say "peak GPU memory used (MiB, nvidia-smi): $(cut -d, -f2 "$LOG/nvidia-smi.csv" | tr -dc '0-9\n' | sort -n | tail -1)"
tar czf "$OUT/logs.tar.gz" -C "$OUT" logs
rm -rf "$OUT/logs" "$OUT/demo20" "$OUT/demo_full" "$OUT/ours_3b"
cat "$SUMMARY"
