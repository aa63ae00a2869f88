#!/usr/bin/env bash
# Device-side check of padt-train's CUDA pieces (NCCL self-test, CUDA memory/MFU metrics,
# gradient checkpointing on CUDA). Run from the repository root, carrying target/gpu.
xz -dc target/gpu/padt-train.xz > /tmp/padt-train && chmod +x /tmp/padt-train
B=/tmp/padt-train
nvidia-smi -L
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
ldconfig -p | grep -i -E "libnccl|libnvrtc" | head -5
echo "== check-nccl cuda:0"
timeout 90 $B --check-nccl cuda:0; echo "check-nccl rc=$?"
common=(--config configs/demo_cpu.yaml --random-init --set "training.devices=[cuda:0]" --set training.per_device_batch_size=16
  --set training.max_steps=10 --set evaluation.shards=null --set logging.progress_bar=false
  --set logging.every_steps=1 --set checkpoint.every_steps=1000 --set checkpoint.save_final=false)
for v in plain ckpt; do
  extra=()
  [ "$v" = ckpt ] && extra=(--set training.gradient_checkpointing=true)
  echo "== demo on cuda:0 ($v)"
  timeout 140 $B "${common[@]}" "${extra[@]}" --output-dir "$OUT/$v" > "$OUT/$v.log" 2>&1
  echo "$v rc=$?"; tail -12 "$OUT/$v.log"
done
