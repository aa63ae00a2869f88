#!/usr/bin/env python3
"""Generate tests/fixtures/core/rle_cases.json and patch_cases.json with pycocotools and OpenCV.

The Rust tests in crates/padt-core/tests/pycocotools_cases.rs and
crates/padt-data/tests/patches_golden.rs must reproduce every case exactly.

    python -m venv /tmp/venv && /tmp/venv/bin/pip install pycocotools==2.0.11 numpy \
        opencv-python-headless==4.11.0.86
    /tmp/venv/bin/python tools/gen_rle_cases.py

rle_cases.json: {"cases": [{"name", "h", "w", "kind": "polygons"|"boxes", "parts": [[...]],
                            "counts": compressed string of merge(frPyObjects(parts, h, w)),
                            "area", "bbox" (toBbox)}]}
patch_cases.json: {"cases": [{"name", "h", "w", "counts", "u8": [...], "f32": [...]}]}
  u8  = PaDT COCO/RIC rule: cv2.resize(mask*255 as uint8) INTER_LINEAR, mean of row means >= 255/28
  f32 = PaDT RefCOCO rule: same on float32, > 255/28
  u8_means / f32_means_no_ipp = [[block, mean], ...] near 255/28 and a sample of other blocks
"""
import json
import os

import cv2
import numpy as np
from pycocotools import mask as mask_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "core")
rng = np.random.default_rng(20261126)


def rle_of(parts, h, w, kind):
    if kind == "boxes":
        rles = mask_utils.frPyObjects(np.array(parts, dtype=np.float64), h, w)
    else:
        rles = mask_utils.frPyObjects([list(map(float, p)) for p in parts], h, w)
    return mask_utils.merge(rles) if isinstance(rles, list) else rles


def coord(kind, lo, hi):
    """One coordinate in [lo, hi] of a given flavour."""
    v = rng.uniform(lo, hi)
    if kind == "int":
        return float(np.floor(v))
    if kind == "half":
        return float(np.floor(v) + 0.5)
    if kind == "fifth":  # exactly on the 5x upsampling grid
        return float(np.round(v * 5) / 5)
    if kind == "tenth":  # on the grid's rounding ties (x*5 + .5 integral)
        return float(np.round(v * 5) / 5 + 0.1)
    if kind == "round2":
        return float(np.round(v, 2))  # COCO-like two decimals
    return float(v)


def random_polygon(h, w, flavour, size_kind):
    n = int(rng.integers(3, 13))
    if size_kind == "tiny":
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 1.5)
    elif size_kind == "outside":  # spills over the borders, negative coords
        cx, cy, r = rng.uniform(-0.3 * w, 1.3 * w), rng.uniform(-0.3 * h, 1.3 * h), rng.uniform(0.2, 0.9) * max(h, w)
    else:
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.02, 0.5) * max(h, w)
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    if rng.uniform() < 0.3:  # self-intersecting order
        rng.shuffle(angles)
    poly = []
    for a in angles:
        rr = r * rng.uniform(0.3, 1.0)
        poly.append(coord(flavour, cx + rr * np.cos(a) - 0.5, cx + rr * np.cos(a) + 0.5))
        poly.append(coord(flavour, cy + rr * np.sin(a) - 0.5, cy + rr * np.sin(a) + 0.5))
    if rng.uniform() < 0.15 and len(poly) >= 6:  # duplicate a vertex
        i = 2 * int(rng.integers(0, len(poly) // 2))
        poly[i + 2:i + 2] = poly[i:i + 2]
    return poly


SIZES = [(1, 1), (2, 3), (5, 7), (17, 13), (28, 28), (64, 48), (100, 80), (213, 320), (480, 640), (427, 640)]
FLAVOURS = ["float", "int", "half", "fifth", "tenth", "round2"]


def rle_cases():
    cases = []
    for i in range(400):
        h, w = SIZES[int(rng.integers(0, len(SIZES)))]
        flavour = FLAVOURS[i % len(FLAVOURS)]
        size_kind = ["normal", "tiny", "outside"][i % 3]
        nparts = 1 if rng.uniform() < 0.6 else int(rng.integers(2, 5))
        parts = [random_polygon(h, w, flavour, size_kind) for _ in range(nparts)]
        if nparts > 1 and rng.uniform() < 0.3:  # a 2-point "polygon" among the parts
            parts[-1] = parts[-1][:4]
        cases.append(("poly_%03d_%s_%s" % (i, flavour, size_kind), h, w, "polygons", parts))
    for i in range(80):
        h, w = SIZES[int(rng.integers(0, len(SIZES)))]
        flavour = FLAVOURS[i % len(FLAVOURS)]
        parts = []
        for _ in range(int(rng.integers(1, 3))):
            x, y = coord(flavour, -0.2 * w, w), coord(flavour, -0.2 * h, h)
            bw, bh = coord(flavour, 0, 0.8 * w + 1), coord(flavour, 0, 0.8 * h + 1)
            parts.append([x, y, bw, bh])
        cases.append(("box_%03d_%s" % (i, flavour), h, w, "boxes", parts))
    # hand-written edge cases
    cases += [
        ("square_on_pixel_edges", 5, 5, "polygons", [[1, 1, 3, 1, 3, 3, 1, 3]]),
        ("square_on_pixel_centres", 5, 5, "polygons", [[1.5, 1.5, 3.5, 1.5, 3.5, 3.5, 1.5, 3.5]]),
        ("whole_image", 6, 4, "polygons", [[0, 0, 4, 0, 4, 6, 0, 6]]),
        ("beyond_image", 6, 4, "polygons", [[-10, -10, 20, -10, 20, 20, -10, 20]]),
        ("negative_only", 6, 4, "polygons", [[-5, -5, -1, -5, -1, -1]]),
        ("thin_horizontal", 8, 8, "polygons", [[0, 3, 8, 3, 8, 3.2, 0, 3.2]]),
        ("thin_vertical", 8, 8, "polygons", [[3, 0, 3.2, 0, 3.2, 8, 3, 8]]),
        ("triangle_degenerate_collinear", 8, 8, "polygons", [[1, 1, 4, 4, 7, 7]]),
        ("all_same_point", 8, 8, "polygons", [[2, 2, 2, 2, 2, 2]]),
        ("overlapping_parts", 20, 20, "polygons", [[2, 2, 12, 2, 12, 12, 2, 12], [8, 8, 18, 8, 18, 18, 8, 18]]),
        ("two_boxes", 20, 20, "boxes", [[2, 3, 5, 6], [10, 10, 4, 4]]),
        ("later_part_with_2_points", 20, 20, "polygons", [[2, 2, 12, 2, 12, 12], [1, 15, 18, 17]]),
        ("later_part_with_1_point", 20, 20, "polygons", [[2, 2, 12, 2, 12, 12], [5, 15]]),
        ("box_fractional", 10, 10, "boxes", [[1.3, 2.7, 4.4, 3.1]]),
        ("box_zero_size", 10, 10, "boxes", [[3, 3, 0, 0]]),
    ]
    out = []
    for name, h, w, kind, parts in cases:
        r = rle_of(parts, h, w, kind)
        out.append({
            "name": name, "h": h, "w": w, "kind": kind,
            "parts": [[float(v) for v in p] for p in parts],
            "counts": r["counts"].decode("ascii"),
            "area": int(mask_utils.area(r)),
            "bbox": [float(v) for v in mask_utils.toBbox(r)],
        })
    return out


def block_means(mask, h, w, rule):
    gh, gw = round(h / 28), round(w / 28)
    src = mask * 255 if rule == "u8" else mask.astype(np.float32) * 255
    r = cv2.resize(src, (gw * 28, gh * 28))
    return r.reshape(gh, 28, gw, 28).transpose(0, 2, 1, 3).mean(-1).mean(-1).flatten()


def padt_patches(mask, h, w, rule):
    means = block_means(mask, h, w, rule)
    keep = means >= 255 / 28 if rule == "u8" else means > 255 / 28
    return [int(i) for i in np.nonzero(keep)[0]]


def checked_means(mask, h, w, rule):
    """[block, mean] of every block within 1.0 of 255/28 plus up to 8 other non-zero blocks.
    The f32 means are computed with IPP off: OpenCV's own float path, which we emulate exactly
    (IPP's float resize differs in the last bits)."""
    if rule == "f32":
        cv2.ipp.setUseIPP(False)
    means = block_means(mask, h, w, rule)
    cv2.ipp.setUseIPP(True)
    near = [i for i in range(len(means)) if abs(float(means[i]) - 255 / 28) < 1.0]
    other = [i for i in np.nonzero(means)[0].tolist() if i not in near]
    if len(other) > 8:
        other = sorted(rng.choice(other, 8, replace=False).tolist())
    return [[int(i), float(means[i])] for i in sorted(near + other)]


PATCH_SIZES = [(480, 640), (427, 640), (640, 480), (333, 500), (375, 500), (168, 252), (300, 29), (45, 20),
               (200, 300), (100, 100), (15, 90), (28, 28), (15, 42), (57, 43)]


def patch_cases():
    out = []
    for i in range(240):
        if i < 2 * len(PATCH_SIZES):
            h, w = PATCH_SIZES[i % len(PATCH_SIZES)]
        else:
            h, w = int(rng.integers(15, 700)), int(rng.integers(15, 700))
        flavour = FLAVOURS[i % len(FLAVOURS)]
        size_kind = ["normal", "tiny", "outside", "normal"][i % 4]
        if size_kind == "tiny":  # small but patch-sized objects
            parts = [random_polygon(h, w, flavour, "normal")]
            parts = [[v * 0.1 + (0.5 * (w if j % 2 == 0 else h)) for j, v in enumerate(parts[0])]]
        else:
            parts = [random_polygon(h, w, flavour, size_kind) for _ in range(int(rng.integers(1, 3)))]
        r = rle_of(parts, h, w, "polygons")
        mask = mask_utils.decode(r)
        out.append({
            "name": "patch_%03d_%s_%s" % (i, flavour, size_kind), "h": h, "w": w,
            "counts": r["counts"].decode("ascii"),
            "u8": padt_patches(mask, h, w, "u8"),
            "f32": padt_patches(mask, h, w, "f32"),
            "u8_means": checked_means(mask, h, w, "u8"),
            "f32_means_no_ipp": checked_means(mask, h, w, "f32"),
        })
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    meta = {"generator": "tools/gen_rle_cases.py", "pycocotools": "2.0.11", "opencv": cv2.__version__,
            "numpy": np.__version__, "seed": 20261126}
    with open(os.path.join(OUT, "rle_cases.json"), "w") as f:
        json.dump({"meta": meta, "cases": rle_cases()}, f, separators=(",", ":"))
        f.write("\n")
    with open(os.path.join(OUT, "patch_cases.json"), "w") as f:
        json.dump({"meta": meta, "cases": patch_cases()}, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
