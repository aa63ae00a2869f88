#!/usr/bin/env python3
"""Per-object mask cost of PaDT's preprocess, Python side, and the input for the Rust side.

Writes /tmp/padt_mask_bench.json (input) and /tmp/padt_mask_bench_expected.json (per-object
RLE strings and patches of both rules, for the Rust example's exactness check): N COCO-like objects (image sizes of COCO, polygons of 8-40
vertices, radius log-uniform 3..300 px, 1-3 parts, 7 consecutive objects per image size), then times, per object, what PaDT's
process_coco.py does with pycocotools + OpenCV + numpy:
  rle = merge(frPyObjects(polys, h, w)); m = decode(rle); patches from cv2.resize(m*255) block
  means >= 255/28; rle['counts'].decode().
Run: python tools/bench_masks.py [N]; then
  cargo run --release -p padt-data --example mask_patches_bench -- /tmp/padt_mask_bench.json
"""
import json
import sys
import time

import cv2
import numpy as np
from pycocotools import mask as mask_utils

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
rng = np.random.default_rng(7)
SIZES = [(480, 640), (427, 640), (640, 480), (375, 500), (333, 500), (640, 427), (612, 612), (424, 640)]
objs = []
for i in range(N):
    h, w = SIZES[(i // 7) % len(SIZES)]  # ~7 objects per image, as in COCO
    parts = []
    for _ in range(int(rng.integers(1, 4)) if rng.uniform() < 0.2 else 1):
        n = int(rng.integers(8, 41))
        r = float(np.exp(rng.uniform(np.log(3), np.log(300))))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        a = np.sort(rng.uniform(0, 2 * np.pi, n))
        rr = r * rng.uniform(0.5, 1.0, n)
        xs = np.clip(cx + rr * np.cos(a), 0, w)
        ys = np.clip(cy + rr * np.sin(a), 0, h)
        parts.append([round(float(v), 2) for xy in zip(xs, ys) for v in xy])
    objs.append({"h": h, "w": w, "parts": parts})
with open("/tmp/padt_mask_bench.json", "w") as f:
    json.dump(objs, f)

cv2.setNumThreads(1)
t0 = time.perf_counter()
kept = 0
total_patches = 0
results = []
for o in objs:
    h, w = o["h"], o["w"]
    rle = mask_utils.merge(mask_utils.frPyObjects(o["parts"], h, w))
    m = mask_utils.decode(rle)
    gh, gw = round(h / 28), round(w / 28)
    r = cv2.resize(m * 255, (gw * 28, gh * 28))
    means = r.reshape(gh, 28, gw, 28).transpose(0, 2, 1, 3).mean(-1).mean(-1)
    patches = np.where(means.flatten() >= 255 / 28)[0].tolist()
    counts = rle["counts"].decode("utf-8")
    kept += bool(patches)
    total_patches += len(patches)
    results.append((counts, patches))
dt = time.perf_counter() - t0
print(f"python: {N} objects in {dt:.3f} s = {N / dt:.0f} objects/s (1 thread); kept {kept}, patches {total_patches}")

# Untimed: per-object reference results (RLE string, COCO patches, RefCOCO float32 patches)
# for the Rust example's exactness check.
expected = []
for o, (counts, patches) in zip(objs, results):
    h, w = o["h"], o["w"]
    m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(o["parts"], h, w)))
    gh, gw = round(h / 28), round(w / 28)
    r = cv2.resize(m.astype(np.float32) * 255, (gw * 28, gh * 28))
    means = r.reshape(gh, 28, gw, 28).transpose(0, 2, 1, 3).mean(-1).mean(-1)
    expected.append({"counts": counts, "u8": patches, "f32": np.where(means.flatten() > 255 / 28)[0].tolist()})
with open("/tmp/padt_mask_bench_expected.json", "w") as f:
    json.dump(expected, f)
