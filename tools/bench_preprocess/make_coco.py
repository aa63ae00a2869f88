#!/usr/bin/env python3
"""Deterministic COCO-scale instances file for benchmarking `padt-preprocess coco`.

Usage: make_coco.py OUT_DIR [--images N] [--seed S]

Writes OUT_DIR/instances_train2017.json (COCO layout, the real 80 categories taken from the
fixture file) and OUT_DIR/train2017/<file_name> as EMPTY files: neither PaDT's process_coco.py
nor `padt-preprocess coco --images-mode reference` reads pixels (padt-preprocess only checks that
each image file exists). Annotations: star-shaped polygons with 6..30 vertices (1..3 polygons
per object), about 1% crowd annotations with an uncompressed RLE box, COCO-like image sizes.
Only the Python standard library is used; the same seed gives the same bytes.
"""
import argparse
import json
import math
import os
import random

FIXTURE = os.path.join(os.path.dirname(__file__), "../../tests/fixtures/data/raw/coco/annotations/instances_val2017.json")
SIZES = [(640, 480), (480, 640), (640, 427), (427, 640), (500, 375), (640, 360), (612, 612), (640, 512), (375, 500), (640, 640)]


def polygon(rng, w, h):
    cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
    r = math.exp(rng.uniform(math.log(4), math.log(0.35 * min(w, h))))
    n = rng.randint(3, 15)
    pts = []
    for k in range(n):
        a = 2 * math.pi * (k + rng.uniform(0.1, 0.9)) / n
        rr = r * rng.uniform(0.4, 1.0)
        x = min(max(cx + rr * math.cos(a), 0.0), w - 0.01)
        y = min(max(cy + rr * math.sin(a), 0.0), h - 0.01)
        pts += [round(x, 2), round(y, 2)]
    return pts


def shoelace(p):
    xs, ys = p[0::2], p[1::2]
    return abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2


def crowd_rle(rng, w, h):
    x0, y0 = rng.randrange(0, w // 2), rng.randrange(0, h // 2)
    x1, y1 = rng.randrange(x0 + 1, w), rng.randrange(y0 + 1, h)
    counts, run, cur = [], 0, 0  # column-major runs, starting with zeros
    for x in range(w):
        for val, length in ((0, y0), (1, y1 - y0), (0, h - y1)) if x0 <= x < x1 else ((0, h),):
            if length == 0:
                continue
            if val == cur:
                run += length
            else:
                counts.append(run)
                run, cur = length, val
    counts.append(run)
    area = (x1 - x0) * (y1 - y0)
    return {"counts": counts, "size": [h, w]}, [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], area


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--images", type=int, default=17000)
    ap.add_argument("--seed", type=int, default=20251126)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    with open(FIXTURE) as f:
        categories = json.load(f)["categories"]
    cat_ids = [c["id"] for c in categories]
    os.makedirs(os.path.join(a.out, "train2017"), exist_ok=True)
    images, annotations = [], []
    ann_id = 1
    for i in range(a.images):
        img_id = 100000 + i
        w, h = SIZES[rng.randrange(len(SIZES))]
        name = "%012d.jpg" % img_id
        images.append({"id": img_id, "file_name": name, "width": w, "height": h, "license": 1,
                       "coco_url": "", "flickr_url": "", "date_captured": ""})
        open(os.path.join(a.out, "train2017", name), "wb").close()
        for _ in range(rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15])):
            cat = cat_ids[rng.randrange(len(cat_ids))]
            if rng.random() < 0.01:
                seg, bbox, area = crowd_rle(rng, w, h)
                ann = {"segmentation": seg, "area": area, "iscrowd": 1, "image_id": img_id,
                       "bbox": bbox, "category_id": cat, "id": ann_id}
            else:
                polys = [polygon(rng, w, h) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
                xs = [v for p in polys for v in p[0::2]]
                ys = [v for p in polys for v in p[1::2]]
                bbox = [min(xs), min(ys), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]
                ann = {"segmentation": polys, "area": round(sum(shoelace(p) for p in polys), 4),
                       "iscrowd": 0, "image_id": img_id, "bbox": bbox, "category_id": cat, "id": ann_id}
            annotations.append(ann)
            ann_id += 1
    doc = {"info": {"description": "synthetic COCO-scale benchmark file", "version": "1.0"},
           "licenses": [{"id": 1, "name": "none", "url": ""}],
           "images": images, "annotations": annotations, "categories": categories}
    with open(os.path.join(a.out, "instances_train2017.json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    print(f"{len(images)} images, {len(annotations)} annotations -> {a.out}")


if __name__ == "__main__":
    main()
