#!/usr/bin/env python3
"""pycocotools reference numbers for `padt-eval coco-map`, and the generator of its test fixtures.

Setup (once):  python3 -m venv /tmp/cocoenv && /tmp/cocoenv/bin/pip install pycocotools numpy

  # the 12 COCO bbox numbers of a ground truth / detections pair, as `padt-eval coco-map` prints them
  python tools/coco_map_reference.py score --gt instances.json --pred detections.json

  # (re)write tests/fixtures/coco_eval/<case>/{instances,detections,expected}.json
  python tools/coco_map_reference.py fixtures [--out tests/fixtures/coco_eval]

  # (re)write crates/padt-eval/tests/fixtures/captions.json: BLEU/ROUGE-L/CIDEr-D of pycocoevalcap
  # (pip install pycocoevalcap; its PTB tokenizer runs `java`)
  python tools/coco_map_reference.py captions

The fixtures are built from fixed data and a seeded RNG, so rerunning gives the same files. The
expected numbers come from the real pycocotools (the version is recorded in each expected.json).
"""

import argparse
import contextlib
import io
import json
import os
import random

NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def pycocotools_stats(gt, preds):
    """Runs COCOeval(bbox) quietly on in-memory gt dict and detection list; returns the 12 stats."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        # loadRes mutates its input; give it a copy.
        coco_dt = coco_gt.loadRes(json.loads(json.dumps(preds)))
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(NAMES, evaluator.stats)}


# --------------------------------------------------------------------------------------------
# Fixture cases
# --------------------------------------------------------------------------------------------


def ann(ann_id, image_id, category_id, bbox, iscrowd=0, area=None):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "area": bbox[2] * bbox[3] if area is None else area,
        "iscrowd": iscrowd,
    }


def det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def gt_file(image_ids, category_ids, annotations):
    return {
        "images": [{"id": i, "width": 640, "height": 480, "file_name": f"{i:012d}.jpg"} for i in image_ids],
        "categories": [{"id": c, "name": f"class_{c}"} for c in category_ids],
        "annotations": annotations,
    }


def case_hand_made():
    """Every rule once: crowd, sizes, duplicates, empty image, category without gt, ties."""
    annotations = [
        # image 1: a large and a medium object of category 1, a small one of category 2
        ann(1, 1, 1, [10, 10, 200, 150]),
        ann(2, 1, 1, [300, 50, 60, 40]),
        ann(3, 1, 2, [400, 300, 20, 20]),
        # image 2: a crowd region of category 1 and one person inside it
        ann(4, 2, 1, [0, 0, 400, 300], iscrowd=1),
        ann(5, 2, 1, [50, 50, 80, 120]),
        # image 3: gt but no detections at all
        ann(6, 3, 2, [100, 100, 50, 50]),
        ann(7, 3, 1, [0, 0, 30, 20]),
        # image 5: area field differs from the box area (segmentation area decides the range)
        ann(8, 5, 2, [200, 200, 120, 110], area=900.0),
    ]
    detections = [
        det(1, 1, [12, 11, 198, 150], 0.9),
        det(1, 1, [12, 11, 198, 150], 0.9),  # exact duplicate, same score
        det(1, 1, [302, 52, 58, 40], 0.75),
        det(1, 1, [500, 400, 30, 30], 0.75),  # false positive, tie with a true positive
        det(1, 2, [401, 301, 19, 19], 0.6),
        det(1, 2, [395, 295, 30, 30], 0.6),
        det(2, 1, [52, 49, 80, 118], 0.8),
        det(2, 1, [200, 150, 100, 100], 0.7),  # inside the crowd: ignored
        det(2, 1, [10, 10, 50, 50], 0.5),  # inside the crowd: ignored
        det(2, 1, [390, 290, 50, 50], 0.4),  # half outside the crowd
        det(2, 3, [10, 10, 50, 50], 0.95),  # category 3 has no gt anywhere
        det(5, 2, [205, 198, 118, 112], 0.33),
        det(5, 2, [0, 0, 10, 10], 0.33),
        # image 4 is listed but has neither gt nor detections
    ]
    return gt_file([1, 2, 3, 4, 5], [1, 2, 3], annotations), detections


def jitter(rng, bbox, amount):
    x, y, w, h = bbox
    return [
        round(x + rng.uniform(-amount, amount) * w, 2),
        round(y + rng.uniform(-amount, amount) * h, 2),
        round(max(1.0, w * (1 + rng.uniform(-amount, amount))), 2),
        round(max(1.0, h * (1 + rng.uniform(-amount, amount))), 2),
    ]


def random_box(rng, size_class):
    side = {"small": (4, 30), "medium": (33, 95), "large": (97, 300)}[size_class]
    w = rng.uniform(*side)
    h = rng.uniform(*side)
    return [round(rng.uniform(0, 640 - w), 1), round(rng.uniform(0, 480 - h), 1), round(w, 1), round(h, 1)]


def case_random(seed, num_images, num_categories, crowd_rate, tie_step, dense_image=False):
    """Seeded random scene: mixed sizes, crowds, jittered true positives, duplicates, false positives,
    images without gt, images without detections, scores rounded to `tie_step` (ties)."""
    rng = random.Random(seed)
    image_ids = sorted(rng.sample(range(1, 10_000), num_images))
    category_ids = sorted(rng.sample(range(1, 91), num_categories))
    annotations, detections = [], []
    next_id = 1
    for image_id in image_ids:
        kind = rng.random()
        if kind < 0.1:
            continue  # empty image
        no_detections = kind < 0.2
        for _ in range(rng.randint(1, 8)):
            category_id = rng.choice(category_ids[:-1])  # the last category never has gt
            bbox = random_box(rng, rng.choice(["small", "medium", "large"]))
            crowd = 1 if rng.random() < crowd_rate else 0
            area = round(bbox[2] * bbox[3] * rng.uniform(0.5, 1.0), 2)
            annotations.append(ann(next_id, image_id, category_id, bbox, iscrowd=crowd, area=area))
            next_id += 1
            if no_detections:
                continue
            for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):  # missed, found, duplicated
                score = round(rng.uniform(0.05, 1.0) / tie_step) * tie_step
                detections.append(det(image_id, category_id, jitter(rng, bbox, 0.25), round(score, 4)))
        if no_detections:
            continue
        for _ in range(rng.randint(0, 4)):  # false positives, some in the gt-less category
            score = round(rng.uniform(0.05, 0.9) / tie_step) * tie_step
            bbox = random_box(rng, rng.choice(["small", "medium", "large"]))
            detections.append(det(image_id, rng.choice(category_ids), bbox, round(score, 4)))
    if dense_image:
        # One image with more than 100 detections of one category: the maxDets caps matter.
        image_id, category_id = image_ids[0], category_ids[0]
        for _ in range(30):
            bbox = random_box(rng, rng.choice(["small", "medium", "large"]))
            annotations.append(ann(next_id, image_id, category_id, bbox, area=round(bbox[2] * bbox[3], 2)))
            next_id += 1
            for _ in range(4):
                score = round(rng.uniform(0.0, 1.0) / tie_step) * tie_step
                detections.append(det(image_id, category_id, jitter(rng, bbox, 0.3), round(score, 4)))
    rng.shuffle(detections)
    return gt_file(image_ids, category_ids, annotations), detections


def case_perfect():
    """Detections equal to the gt: every defined number is 1; no large objects, so APl/ARl are -1."""
    annotations = [
        ann(1, 7, 1, [10, 10, 20, 20]),
        ann(2, 7, 2, [100, 100, 50, 40]),
        ann(3, 8, 1, [5, 5, 60, 60]),
    ]
    detections = [det(a["image_id"], a["category_id"], a["bbox"], 1.0) for a in annotations]
    return gt_file([7, 8], [1, 2], annotations), detections


def case_only_crowds():
    """Category 1 has only crowd gt (it is left out: -1); category 2 is detected twice in one crowd
    and once next to its only real object."""
    annotations = [
        ann(1, 1, 1, [0, 0, 300, 300], iscrowd=1),
        ann(2, 2, 2, [0, 0, 300, 300], iscrowd=1),
        ann(3, 2, 2, [400, 50, 100, 100]),
    ]
    detections = [
        det(1, 1, [10, 10, 100, 100], 0.9),
        det(2, 2, [10, 10, 100, 100], 0.9),
        det(2, 2, [20, 20, 100, 100], 0.8),
        det(2, 2, [405, 55, 100, 100], 0.7),
        det(2, 2, [250, 250, 100, 100], 0.6),
    ]
    return gt_file([1, 2], [1, 2], annotations), detections


def case_ties_across_images():
    """All scores equal: the merged order is image id order, then file order within an image."""
    annotations, detections = [], []
    for n, image_id in enumerate([30, 10, 20]):
        annotations.append(ann(n + 1, image_id, 1, [10, 10, 50, 50]))
    detections += [
        det(20, 1, [200, 200, 50, 50], 0.5),
        det(20, 1, [10, 10, 50, 50], 0.5),
        det(10, 1, [12, 12, 50, 50], 0.5),
        det(30, 1, [300, 10, 50, 50], 0.5),
        det(30, 1, [11, 9, 50, 52], 0.5),
        det(10, 1, [100, 100, 10, 10], 0.5),
    ]
    return gt_file([30, 10, 20], [1], annotations), detections


CASES = {
    "hand_made": case_hand_made,
    "random_mixed": lambda: case_random(seed=1, num_images=40, num_categories=6, crowd_rate=0.08, tie_step=0.05),
    "random_dense": lambda: case_random(seed=2, num_images=12, num_categories=3, crowd_rate=0.15, tie_step=0.1, dense_image=True),
    "random_fine_scores": lambda: case_random(seed=3, num_images=25, num_categories=4, crowd_rate=0.0, tie_step=0.0001),
    "perfect": case_perfect,
    "only_crowds": case_only_crowds,
    "ties_across_images": case_ties_across_images,
}


# --------------------------------------------------------------------------------------------
# Caption metrics (pycocoevalcap) for crates/padt-eval/tests/fixtures/captions.json
# --------------------------------------------------------------------------------------------

SUBJECTS = ["a man", "a woman", "two dogs", "the child", "a red car", "an old bus", "three birds",
            "a black-and-white cat", "the player", "a small boat"]
VERBS = ["is standing near", "rides past", "sits on", "looks at", "is parked beside", "waits by",
         "walks toward", "jumps over"]
PLACES = ["a wooden bench", "the busy street", "a grassy field", "the river bank", "a tall building",
          "the kitchen table", "a snowy hill", "the old bridge"]
EXTRAS = ["", " in the morning", ", while it's raining", " (on the left)", "; the sky is clear",
          " -- it looks calm", ": a quiet scene", " and doesn't move", ", e.g. near a U.S. flag",
          " with \"Stop\" written on it", " [blurred]", "..."]


def vrt_group(rng, objects):
    groups = []
    for _ in range(objects):
        groups.append("".join(f"<|VRT_{rng.randrange(0, 1500)}|>" for _ in range(5)))
    return "(" + ", ".join(groups) + ")"


def caption_cases(seed=7, num_images=30):
    rng = random.Random(seed)
    cases = []
    for image in range(num_images):
        refs = []
        for _ in range(rng.randint(3, 5)):
            refs.append(f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(PLACES)}{rng.choice(EXTRAS)}.")
        subject = rng.choice(SUBJECTS)
        place = rng.choice(PLACES)
        # The candidate: like a PaDT RIC completion, VRT groups after grounded phrases.
        if image % 5 == 0:
            candidate = refs[0].replace(".", "") + "."  # a near copy of a reference
            plain = candidate
            with_markers = candidate
        else:
            extra = rng.choice(EXTRAS)
            plain = f"{subject.capitalize()} {rng.choice(VERBS)} {place}{extra}."
            with_markers = (f"{subject.capitalize()} {vrt_group(rng, rng.randint(1, 2))} "
                            f"{rng.choice(VERBS)} {place} {vrt_group(rng, 1)}{extra}.")
            verb = with_markers.split(") ", 1)[1].split(f" {place}")[0]
            plain = f"{subject.capitalize()} {verb} {place}{extra}."
        if image == 3:
            plain = with_markers = "."  # nothing left after tokenisation
        cases.append({"image_id": image + 1, "candidate_with_markers": with_markers,
                      "candidate": plain, "references": refs})
    return cases


def write_caption_fixture(path):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    cases = caption_cases()
    gts = {c["image_id"]: [{"caption": r} for r in c["references"]] for c in cases}
    res = {c["image_id"]: [{"caption": c["candidate"]}] for c in cases}
    tokenizer = PTBTokenizer()
    gts_tok = tokenizer.tokenize(gts)
    res_tok = tokenizer.tokenize(res)
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts_tok, res_tok)
    rouge, _ = Rouge().compute_score(gts_tok, res_tok)
    cider, _ = Cider().compute_score(gts_tok, res_tok)
    for c in cases:
        c["candidate_tokenized"] = res_tok[c["image_id"]][0]
        c["references_tokenized"] = gts_tok[c["image_id"]]
    from importlib.metadata import version as dist_version

    write_json(path, {
        "source": f"pycocoevalcap {dist_version('pycocoevalcap')}: PTBTokenizer, Bleu(4), Rouge(), Cider()",
        "expected": {"bleu": [float(b) for b in bleu], "rouge_l": float(rouge), "cider_d": float(cider)},
        "samples": cases,
    })
    print("captions", json.dumps({"bleu": bleu, "rouge_l": float(rouge), "cider_d": float(cider)}))


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=1)
        f.write("\n")


def write_fixtures(out_dir):
    import pycocotools

    version = getattr(pycocotools, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("pycocotools")
    for name, build in CASES.items():
        gt, preds = build()
        case_dir = os.path.join(out_dir, name)
        os.makedirs(case_dir, exist_ok=True)
        write_json(os.path.join(case_dir, "instances.json"), gt)
        write_json(os.path.join(case_dir, "detections.json"), preds)
        stats = pycocotools_stats(gt, preds)
        write_json(
            os.path.join(case_dir, "expected.json"),
            {"source": f"pycocotools {version} COCOeval(iouType='bbox').stats", "stats": stats},
        )
        print(name, json.dumps(stats))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="print the pycocotools numbers of a gt/pred pair as JSON")
    score.add_argument("--gt", required=True)
    score.add_argument("--pred", required=True)
    fixtures = sub.add_parser("fixtures", help="write the test fixtures with their expected numbers")
    fixtures.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "coco_eval"))
    captions = sub.add_parser("captions", help="write the caption-metric fixture (needs pycocoevalcap and java)")
    captions.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "crates", "padt-eval", "tests", "fixtures", "captions.json"))
    args = parser.parse_args()
    if args.command == "score":
        with open(args.gt) as f:
            gt = json.load(f)
        with open(args.pred) as f:
            preds = json.load(f)
        print(json.dumps(pycocotools_stats(gt, preds)))
    elif args.command == "captions":
        write_caption_fixture(args.out)
    else:
        write_fixtures(args.out)


if __name__ == "__main__":
    main()
