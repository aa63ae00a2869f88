#!/usr/bin/env bash
# Prepares .gpu/ (ignored by git; add `/.gpu/` to .git/info/exclude) for bench/gpu/run.sh:
# the stripped, xz-packed CUDA padt-train, the 3B config, synthetic 560-px
# RefCOCO-format shards, the demo weights and their 20-step CPU trajectory.
# Needs python3 with Pillow (PYTHON=...), and a CPU build of padt-cli in $CARGO_TARGET_DIR.
set -euo pipefail
T=${CARGO_TARGET_DIR:-target}
PYTHON=${PYTHON:-python3}
TMP=$(mktemp -d)
rm -rf .gpu && mkdir -p .gpu/bin .gpu/model3b .gpu/demo_model

CUDARC_CUDA_VERSION=13000 CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-$T-cuda} \
  cargo build --release -p padt-cli --features cuda --bin padt-train
# xz: the tree the device tool carries is limited to 64 MiB; run.sh unpacks it.
strip -o "$TMP/padt-train" "${CUDA_TARGET_DIR:-$T-cuda}/release/padt-train"
xz -T2 -6 -c "$TMP/padt-train" > .gpu/bin/padt-train.xz

# The published Qwen2.5-VL-3B-Instruct config (built into padt-model) + the real tokenizer.
sed -n '/^pub const QWEN2_5_VL_3B_CONFIG: &str = r#"/,/^}"#;/p' crates/padt-model/src/qwen2_5_vl/config.rs \
  | sed '1s/.*r#"//; $s/"#;//' > .gpu/model3b/config.json
cp data/demo/model/preprocessor_config.json .gpu/model3b/  # the recipe takes the fixtures' tokenizer

# 300 demo scenes scaled to 560 px, through padt-preprocess refcoco.
"$T/release/padt-make-demo" --out "$TMP/demo" --train-images 300 --val-images 10
"$T/release/padt-make-demo" --out "$TMP/small" --train-images 10 --val-images 2 --weights
"$PYTHON" bench/gpu/scale_refer.py "$TMP/demo/raw" "$TMP/big/raw" 5
rm -rf .gpu/shards
"$T/release/padt-preprocess" refcoco --refer-dir "$TMP/big/raw/refer" --split-by unc \
  --images "$TMP/big/raw/images" --split train --out .gpu/shards/train -q

# The demo model with seeded weights, a 25-record demo train set (the run's tree must stay under
# the 64 MiB the device tool carries), and the CPU trajectory of run.sh's first stage on them.
cp "$TMP/small/model/"* .gpu/demo_model/
cp -r "$TMP/small/shards/train" .gpu/demo_shards
"$T/release/padt-train" --config configs/demo_cpu.yaml --set model.path=.gpu/demo_model \
  --set data.datasets.0.shards=.gpu/demo_shards \
  --set "training.devices=[cpu]" --set training.per_device_batch_size=16 \
  --set training.max_steps=20 --set logging.every_steps=1 --set logging.progress_bar=false \
  --set evaluation.shards=null --output-dir "$TMP/cpu20"
cp "$TMP/cpu20/metrics.jsonl" .gpu/demo_cpu20_metrics.jsonl
rm -rf "$TMP"
du -sh .gpu
