#!/usr/bin/env bash
# Device script: a sweep of the CPU demo recipe (configs/demo_cpu.yaml) on one GPU, several runs
# at once (the tiny model leaves the GPU mostly idle), to learn which initialisation scale,
# learning rate, batch size and number of steps reach REC Acc@0.5 >= 0.8 (issue #7) before
# spending ten CPU minutes per try. Needs .gpu/bin/padt-train.xz (CUDA build) and the model
# directories .gpu/demo_init_<std>/ (data/demo/model with `initializer_range` = std at the top
# level and in vision_config) made by demo_sweep_prepare.sh. Writes $OUT/<variant>/ (metrics,
# eval) and $OUT/summary.txt.
set -u
OUT=${OUT:-/tmp/padt-sweep-out}
LIMIT=${LIMIT:-480}
mkdir -p "$OUT"
source bench/gpu/env.sh > "$OUT/env.txt" 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"

run_variant() {  # run_variant NAME MODEL_DIR EXTRA_SET...: the recipe on cuda:0, in the background
  # KEEP_WEIGHTS=1 also keeps the final checkpoint's model.safetensors and trainer_state.json
  # with the run's config.yaml (what padt-export needs to score the weights elsewhere).
  local name=$1 model=$2; shift 2
  local sets=()
  for s in "$@"; do sets+=(--set "$s"); done
  (
    start=$(date +%s)
    timeout --signal=INT --kill-after=10 "$LIMIT" /tmp/padt-train --config configs/demo_cpu.yaml \
      --random-init --set model.path=$model --set training.devices=[cuda:0] --set training.per_device_batch_size=16 \
      --set logging.progress_bar=false --set checkpoint.every_steps=100000 "${sets[@]}" \
      --output-dir "$OUT/$name/run" > "$OUT/$name.log" 2>&1
    rc=$?
    for f in metrics.jsonl eval_metrics.json eval_predictions.jsonl; do cp "$OUT/$name/run/$f" "$OUT/$name/" 2>/dev/null; done
    if [ "${KEEP_WEIGHTS:-0}" = 1 ]; then
      cp "$OUT/$name/run/config.yaml" "$OUT/$name/" 2>/dev/null
      last=$(ls -d "$OUT/$name/run"/checkpoint-* 2>/dev/null | sort -t- -k2 -n | tail -1)
      [ -n "$last" ] && cp "$last/model.safetensors" "$last/trainer_state.json" "$OUT/$name/"
    fi
    rm -rf "$OUT/$name/run"
    echo "$name rc $rc wall $(( $(date +%s) - start )) s: $(cat "$OUT/$name/eval_metrics.json" 2>/dev/null | tr -d '\n ' | head -c 300)" >> "$OUT/summary.txt"
  ) &
}

variant() {  # variant NAME INIT_STD EXTRA_SET... (sweeps 1 and 2)
  local name=$1 std=$2; shift 2
  run_variant "$name" ".gpu/demo_init_$std" "$@"
}

variant3() {  # variant3 NAME MODEL_DIR EXTRA_SET...: sweep 3, the committed recipe at 5 epochs
  local name=$1 model=$2; shift 2
  KEEP_WEIGHTS=1 run_variant "$name" "$model" training.epochs=5 checkpoint.keep_last=1 "$@"
}

case "${SWEEP:-1}" in
1)  # 2026-11-26 first sweep: initialisation scale, learning rate, batch size, epochs.
    variant i10 0.1
    variant i05 0.05
    variant i20 0.2
    variant i10_lr3 0.1 optimizer.lr=3e-3
    variant i10_b8 0.1 training.per_device_batch_size=8 training.global_batch_size=8
    variant i10_e4 0.1 training.epochs=4
    variant i02_e4 0.02 training.epochs=4
    variant i10_e8 0.1 training.epochs=8
    ;;
2)  # Second sweep: scene styles made by padt-make-demo (.gpu/bin/padt-make-demo.xz, a CPU build) into /tmp/dv/<d>
    # (d1: --background ramp; d2: --small-side 22-30 --large-side 40-52; d3: both), at the
    # 592 steps of the CPU recipe unless stated.
    # The shards are made here (the tree the device tool carries is limited to 64 MiB).
    python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('.gpu/bin/padt-make-demo.xz'), open('/tmp/padt-make-demo', 'wb'))"
    chmod +x /tmp/padt-make-demo
    /tmp/padt-make-demo --out /tmp/dv/d1 --background ramp > "$OUT/make_d1.log" 2>&1
    /tmp/padt-make-demo --out /tmp/dv/d2 --small-side 22-30 --large-side 40-52 > "$OUT/make_d2.log" 2>&1
    /tmp/padt-make-demo --out /tmp/dv/d3 --background ramp --small-side 22-30 --large-side 40-52 \
      > "$OUT/make_d3.log" 2>&1
    data() { echo data.datasets.0.shards=/tmp/dv/$1/shards/train evaluation.shards=/tmp/dv/$1/shards/val; }
    steps=training.epochs=8
    variant d1 0.1 $(data d1) $steps training.max_steps=592
    variant d2 0.1 $(data d2) $steps training.max_steps=592
    variant d3 0.1 $(data d3) $steps training.max_steps=592
    variant d3_l1w5 0.1 $(data d3) $steps training.max_steps=592 loss.bbox_l1_weight=5.0 loss.bbox_giou_weight=2.0
    variant d3_lr2 0.1 $(data d3) $steps training.max_steps=592 optimizer.lr=2e-3
    variant d3_i05 0.05 $(data d3) $steps training.max_steps=592
    variant d3_s1184 0.1 $(data d3) $steps training.max_steps=1184
    variant d1_s1184 0.1 $(data d1) $steps training.max_steps=1184
    ;;
3)  # 2026-11-27 (session 7): what makes the LLM ground faster, two seeds per setting, 5 epochs
    # (1,245 steps of 16) of the committed recipe (3-layer LLM, demo tokenizer, structured picks).
    # Needs .gpu/s7/model_h8 (demo_sweep_prepare.sh 3). Each run's final model.safetensors
    # comes back (tar files of three runs: $OUT carries at most 8 files of 16 MiB) so that the
    # 976 fresh records can be scored on the CPU machine.
    for seed in 42 43; do
      variant3 base_s$seed data/demo/model seed=$seed
      variant3 tw2_s$seed data/demo/model seed=$seed loss.token_weight=2.0
      variant3 llm2_s$seed data/demo/model seed=$seed "param_groups=[{name: llm, prefixes: [model.], lr_scale: 2.0}]"
      variant3 h8_s$seed .gpu/s7/model_h8 seed=$seed
      variant3 nomask_s$seed data/demo/model seed=$seed loss.use_mask_loss=false
    done
    ;;
esac
wait
cat "$OUT/summary.txt"

if [ "${SWEEP:-1}" = 3 ]; then  # pack the runs (at most 8 files come back)
  cd "$OUT" && ls -d */ | tr -d / | xargs -n 3 | { i=0; while read -r names; do
    files="$names $(for n in $names; do echo "$n.log"; done)"
    tar cf "runs_$i.tar" $files && rm -rf $files; i=$((i+1)); done; }
fi
