#!/usr/bin/env bash
# Benchmark: `padt-preprocess coco` against PaDT's own src/preprocess/process_coco.py on the same
# generated COCO-scale file (see bench/preprocess.md).
#
# Usage: tools/bench_preprocess/run.sh WORK_DIR PROCESS_COCO_PY PYTHON
#   WORK_DIR         scratch folder outside the repository (data, outputs, timings)
#   PROCESS_COCO_PY  a copy of PaDT's src/preprocess/process_coco.py (not part of this repository)
#   PYTHON           a Python with pycocotools, opencv-python-headless, numpy, tqdm
# Env: PADT_PREPROCESS = the binary (default $CARGO_TARGET_DIR/release/padt-preprocess).
set -euo pipefail
WORK=$1; PADT_PY=$2; PY=$3
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${PADT_PREPROCESS:-${CARGO_TARGET_DIR:-target}/release/padt-preprocess}
mkdir -p "$WORK"
[ -f "$WORK/data/instances_train2017.json" ] || python3 "$HERE/make_coco.py" "$WORK/data"
ANN=$WORK/data/instances_train2017.json
IMG=$WORK/data/train2017

echo "== machine"; date -u; nproc; lscpu | grep -E 'Model name|^CPU\(s\)'; uptime

run_rs() {  # $1 = label, rest = env assignments
  local label=$1; shift
  rm -rf "$WORK/out_rs_$label"
  env "$@" /usr/bin/time -v "$BIN" coco --annotations "$ANN" --images "$IMG" --split train --seed 1 \
      --out "$WORK/out_rs_$label" --images-mode reference -q 2> "$WORK/time_rs_$label.txt"
  grep -E 'Elapsed|User time|System time|Maximum resident' "$WORK/time_rs_$label.txt" | sed "s/^/[rs $label] /"
}
echo "== padt-preprocess, all cores"; run_rs all
echo "== padt-preprocess, 1 thread"; run_rs 1thread RAYON_NUM_THREADS=1

echo "== PaDT process_coco.py (1 process)"
mkdir -p "$WORK/padt_scratch" "$WORK/out_py"
cp "$PADT_PY" "$WORK/padt_scratch/process_coco.py"
( cd "$WORK/padt_scratch" && /usr/bin/time -v "$PY" -c "
import numpy as np
np.random.seed(1)
import process_coco as p
p.filter_coco_annotations_with_api('$ANN', '$WORK/out_py/instances_train2017.json', max_bboxes_per_class_per_image=50, is_train=True)
" > "$WORK/py_stdout.txt" 2> "$WORK/time_py.txt" )
grep -E 'Elapsed|User time|System time|Maximum resident' "$WORK/time_py.txt" | sed 's/^/[py] /'

echo "== same output?"
"$BIN" export-jsonl "$WORK/out_rs_all" --out "$WORK/out_rs_all.jsonl"
wc -l "$WORK/out_rs_all.jsonl" "$WORK/out_py/instances_train2017.json"
if cmp "$WORK/out_rs_all.jsonl" "$WORK/out_py/instances_train2017.json"; then echo "byte-identical"; else echo "DIFFERENT"; fi
