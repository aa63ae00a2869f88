#!/usr/bin/env bash
# Makes the model directories demo_sweep.sh uses: .gpu/demo_init_<std>/, the demo model
# (data/demo/model) with `initializer_range` set to <std> at the top level and in vision_config.
# With the argument 3 (sweep 3): only .gpu/s7/model_h8, the demo model with 8 attention heads
# of 16 (4 KV heads, M-RoPE sections 2/3/3) instead of 4 of 32.
set -euo pipefail
if [ "${1:-}" = 3 ]; then
  rm -rf .gpu/s7/model_h8 && mkdir -p .gpu/s7 && cp -r data/demo/model .gpu/s7/model_h8
  python3 - <<'PY'
import json
path = ".gpu/s7/model_h8/config.json"
config = json.load(open(path))
config["num_attention_heads"] = 8
config["num_key_value_heads"] = 4
config["rope_scaling"]["mrope_section"] = [2, 3, 3]
json.dump(config, open(path, "w"), indent=2)
PY
  exit 0
fi
for std in 0.02 0.05 0.1 0.2; do
  d=.gpu/demo_init_$std
  rm -rf "$d" && mkdir -p "$d"
  cp data/demo/model/* "$d/"
  python3 - "$d/config.json" "$std" <<'PY'
import json, sys
path, std = sys.argv[1], float(sys.argv[2])
config = json.load(open(path))
config["initializer_range"] = std
config["vision_config"]["initializer_range"] = std
json.dump(config, open(path, "w"), indent=2)
PY
done
