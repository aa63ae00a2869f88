#!/usr/bin/env bash
# PaDT_Pro_7B supervised fine-tuning: the counterpart of the reference's
# run_scripts/padt_pro_7b_sft.sh (8 GPUs of one node, per-GPU batch 16, lr 2e-5, bf16).
# Every setting lives in configs/padt_pro_7b.yaml; edit it (or pass --set key=value
# arguments to this script) to point at your model and shard directories.
#
#   run_scripts/padt_pro_7b_sft.sh                          # start or resume
#   run_scripts/padt_pro_7b_sft.sh --set training.devices=[cuda:0,cuda:1]
set -euo pipefail

CONFIG="configs/padt_pro_7b.yaml"
EXP_NAME="PaDT-Pro-7B"
DEFAULT_OUTPUT_DIR="runs/padt_pro_7b"
# Builds padt-train if needed, then runs it with --resume into $OUTPUT_DIR (default above).
source "$( dirname "${BASH_SOURCE[0]}" )/launch.sh" "$@"
