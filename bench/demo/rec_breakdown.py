#!/usr/bin/env python3
"""Where a demo checkpoint's REC answers go wrong (the tables of the session reports).

Usage:
    python3 bench/demo/rec_breakdown.py RAW_DIR PREDICTIONS.jsonl [PREDICTIONS.jsonl ...]

RAW_DIR is the `raw/` folder `padt-make-demo` wrote for the scored split (its
`refer/instances.json` gives every image's objects); each PREDICTIONS file is what
`padt-eval run --task rec --predictions FILE` wrote for that split. The 976-record set of the
reports: `padt-make-demo --seed 1234 --train-images 1 --val-images 500 --out DIR`, scored on
`DIR/shards/val` with `--max-new-tokens 48`, RAW_DIR = `DIR/raw`.

For every file it prints: accuracy (IoU >= 0.5 of the first prediction's box); how often the
first generated VRT's 28-px cell (the demo's 4 x 4 merged grid of a 112-px image) overlaps the
referred box, and how often every VRT does; the box accuracy among the latter; the wrong
answers by where the first VRT lies; and accuracy in scenes with 2-4 objects by what the
sentence uses (colour, shape, size, position), with the accuracy of a random choice among the
scene's objects for comparison, and by the referred object's size class (small / large).
"""
import collections
import json
import re
import sys

GRID, CELL = 4, 28
SHAPES = {"circle", "square", "triangle"}
SIZES = {"small", "large"}
POSITIONS = {"left", "right", "leftmost", "rightmost"}
GROUPS = ["colour only", "shape only", "size+shape", "size+colour", "shape+colour",
          "size+shape+colour", "with a position"]


def cells(box):
    """Merged-grid cells a COCO `[x, y, w, h]` box overlaps."""
    x, y, w, h = box
    return {r * GRID + c for r in range(GRID) for c in range(GRID)
            if not (c * CELL + CELL <= x or c * CELL >= x + w or r * CELL + CELL <= y or r * CELL >= y + h)}


def iou(a, b):
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def expression_group(sentence):
    words = sentence.split()
    vocabulary = set(words)
    if POSITIONS & vocabulary:
        return "with a position"
    size, shape = bool(SIZES & vocabulary), bool(SHAPES & vocabulary)
    # "the <size?> <colour?> <shape|object>": a colour is whatever word is left over.
    colour = len(words) - 1 - size - shape > (0 if shape else 1) or "object" in words
    parts = [name for name, used in (("size", size), ("shape", shape), ("colour", colour)) if used]
    return {"colour": "colour only", "shape": "shape only"}.get("+".join(parts), "+".join(parts))


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    instances = json.load(open(f"{sys.argv[1]}/refer/instances.json"))
    objects = collections.defaultdict(list)
    sizes = collections.defaultdict(list)
    for ann in instances["annotations"]:
        objects[ann["image_id"]].append(ann["bbox"])
        sizes[ann["image_id"]].append(ann["size"])
    for path in sys.argv[2:]:
        count = collections.Counter()
        total, right, chance = collections.Counter(), collections.Counter(), collections.Counter()
        by_size, by_size_right = collections.Counter(), collections.Counter()
        for line in open(path):
            rec = json.loads(line)
            gt = rec["gt_bbox"]
            vrts = [int(v) for v in re.findall(r"VRT_(\d+)", rec["completion"])]
            hit = bool(rec["predictions"]) and iou(rec["predictions"][0]["bbox"], gt) >= 0.5
            target = cells(gt)
            count["records"] += 1
            count["right"] += hit
            count["first on the object"] += bool(vrts) and vrts[0] in target
            all_on = bool(vrts) and all(v in target for v in vrts)
            count["all on the object"] += all_on
            count["right | all on"] += hit and all_on
            if not hit:
                if not vrts:
                    count["wrong: no VRT"] += 1
                elif vrts[0] in target:
                    count["wrong: a later VRT off" if not all_on else "wrong: all on, box off"] += 1
                elif any(vrts[0] in cells(b) for b in objects[rec["image_id"]] if iou(b, gt) < 0.99):
                    count["wrong: first VRT on another object"] += 1
                else:
                    count["wrong: first VRT on background"] += 1
            n = len(objects[rec["image_id"]])
            if n >= 2:
                group = expression_group(rec["sentence"])
                total[group] += 1
                right[group] += hit
                chance[group] += 1 / n
                size = max(zip(objects[rec["image_id"]], sizes[rec["image_id"]]),
                           key=lambda box_size: iou(box_size[0], gt))[1]
                by_size[size] += 1
                by_size_right[size] += hit
        n = count["records"]
        print(f"== {path}: {n} records, accuracy {count['right'] / n:.3f}")
        print(f"first VRT on the object {count['first on the object'] / n:.3f}, "
              f"all VRTs on it {count['all on the object'] / n:.3f}, "
              f"box right among those {count['right | all on'] / max(1, count['all on the object']):.3f}")
        print("wrong answers: " + ", ".join(f"{k[7:]} {v}" for k, v in sorted(count.items()) if k.startswith("wrong")))
        print("scenes with 2-4 objects, by expression: accuracy (random choice among the objects)")
        for group in GROUPS:
            if total[group]:
                print(f"  {group:18s} {total[group]:4d} records  {right[group] / total[group]:.2f}  "
                      f"({chance[group] / total[group]:.2f})")
        print("scenes with 2-4 objects, by the referred object's size: " + ", ".join(
            f"{size} {by_size[size]} records {by_size_right[size] / by_size[size]:.2f}"
            for size in sorted(by_size)))


if __name__ == "__main__":
    main()
