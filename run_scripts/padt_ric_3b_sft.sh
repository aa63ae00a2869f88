#!/usr/bin/env bash
# PaDT_RIC_3B supervised fine-tuning: the counterpart of the reference's
# run_scripts/padt_ric_3b_sft.sh (8 GPUs of one node, per-GPU batch 16, lr 2e-5, bf16).
# Every setting lives in configs/padt_ric_3b.yaml; edit it (or pass --set key=value
# arguments to this script) to point at your model and shard directories.
#
#   run_scripts/padt_ric_3b_sft.sh                          # start or resume
#   run_scripts/padt_ric_3b_sft.sh --set training.devices=[cuda:0,cuda:1]
set -euo pipefail

PROJECT_ROOT="$( cd "$( dirname "${BASH_SOURCE[0]}" )/.." && pwd )"
export REPO_HOME="${PROJECT_ROOT}"
echo "REPO_HOME: $REPO_HOME"

CONFIG="${REPO_HOME}/configs/padt_ric_3b.yaml"
export EXP_NAME="PaDT-RIC-3B"
OUTPUT_DIR="${OUTPUT_DIR:-${REPO_HOME}/runs/padt_ric_3b}"
echo "config: $CONFIG"
echo "output: $OUTPUT_DIR"

# The trainer binary: $PADT_TRAIN if set, else the CUDA release build (built on first use;
# the GPU machines have driver 580 / CUDA 13.0, whose API the bindings are pinned to).
PADT_TRAIN="${PADT_TRAIN:-${CARGO_TARGET_DIR:-${REPO_HOME}/target}/release/padt-train}"
if [ ! -x "$PADT_TRAIN" ]; then
  (cd "$REPO_HOME" && CUDARC_CUDA_VERSION=13000 cargo build --release --features cuda -p padt-cli --bin padt-train)
fi

mkdir -p "${OUTPUT_DIR}/log"
LOG_PATH="${OUTPUT_DIR}/log/train.$(date +%Y-%m-%d-%H-%M-%S).txt"

# Relative paths in the recipe (models/, shards/) resolve against the repository root, and
# --resume continues from the newest complete checkpoint (reference: resume_from_checkpoint true).
cd "$REPO_HOME"
"$PADT_TRAIN" --config "$CONFIG" --output-dir "$OUTPUT_DIR" --resume \
  --set run_name="$EXP_NAME" "$@" 2>&1 | tee "$LOG_PATH"

echo "Training completed for ${EXP_NAME}"
