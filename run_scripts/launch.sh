#!/usr/bin/env bash
# Shared body of the run_scripts/padt_*_sft.sh launchers. The caller sets CONFIG (a recipe under
# configs/), EXP_NAME (the run name) and DEFAULT_OUTPUT_DIR, then sources this file with its own
# arguments, which are passed on to padt-train (e.g. --set key=value).
set -euo pipefail

PROJECT_ROOT="$( cd "$( dirname "${BASH_SOURCE[0]}" )/.." && pwd )"
export REPO_HOME="${PROJECT_ROOT}"
export EXP_NAME
echo "REPO_HOME: $REPO_HOME"

CONFIG_PATH="${REPO_HOME}/${CONFIG}"
OUTPUT_DIR="${OUTPUT_DIR:-${REPO_HOME}/${DEFAULT_OUTPUT_DIR}}"
echo "config: $CONFIG_PATH"
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
"$PADT_TRAIN" --config "$CONFIG_PATH" --output-dir "$OUTPUT_DIR" --resume \
  --set run_name="$EXP_NAME" "$@" 2>&1 | tee "$LOG_PATH"

echo "Training completed for ${EXP_NAME}"
