#!/usr/bin/env bash
# Follow-up of run.sh (2026-11-26, H200): the 3B bf16 recipe gave NaN decoder losses from step 1
# while the token loss was finite. Three 3-step variants to find the part that breaks.
set -u
OUT=${OUT:-/tmp/padt-gpu-out}
mkdir -p "$OUT/logs"
source bench/gpu/env.sh
run() {  # run NAME SECONDS --set ...
  local name=$1 limit=$2; shift 2
  timeout --signal=INT --kill-after=10 "$limit" /tmp/padt-train --config bench/gpu/padt_rec_3b_bench.yaml \
    --random-init --set training.max_steps=3 --output-dir "$OUT/$name" "$@" > "$OUT/logs/$name.log" 2>&1
  echo "== $name rc $?"; grep -E "^step [0-9]+/|components|s/step" "$OUT/logs/$name.log"
  cp "$OUT/$name/metrics.jsonl" "$OUT/logs/${name}_metrics.jsonl" 2>/dev/null; rm -rf "$OUT/$name"
}
run bf16_no_warmup 100 --set decoder_warmup.enabled=false
run bf16_no_mask 100 --set loss.use_mask_loss=false
run f32_batch2 110 --set training.precision=f32 --set training.per_device_batch_size=2 --set training.global_batch_size=2
tar czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
