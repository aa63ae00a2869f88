#!/usr/bin/env bash
# Makes the model directories demo_sweep.sh uses: .gpu/demo_init_<std>/, the demo model
# (data/demo/model) with `initializer_range` set to <std> at the top level and in vision_config.
set -euo pipefail
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
