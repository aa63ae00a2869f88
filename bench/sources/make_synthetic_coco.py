"""Synthetic COCO instances file for timing `padt-preprocess` COCO (bench/sources/*.md).

5000 images (COCO sizes), 7 random star-shaped polygons each (8-40 vertices, radius 3-150 px),
the 80 COCO category ids; empty placeholder image files (the source only checks they exist).
Usage: python3 make_synthetic_coco.py OUT_DIR
"""
import json
import math
import os
import random
import sys

out = sys.argv[1]
random.seed(1)
ids = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
cats = [{"id": i, "name": "c%d" % i, "supercategory": "x"} for i in ids]
images, anns, aid = [], [], 1
os.makedirs(os.path.join(out, "img"), exist_ok=True)
for i in range(5000):
    W, H = random.choice([(640, 480), (480, 640), (640, 427), (500, 375)])
    name = "%012d.jpg" % (i + 1)
    images.append({"id": i + 1, "file_name": name, "width": W, "height": H})
    open(os.path.join(out, "img", name), "w").close()
    for _ in range(7):
        cx, cy, r = random.uniform(0, W), random.uniform(0, H), random.uniform(3, 150)
        n = random.randint(8, 40)
        poly = []
        for j in range(n):
            a = 2 * math.pi * j / n
            rr = r * random.uniform(0.6, 1.0)
            poly += [round(min(max(cx + rr * math.cos(a), 0), W - 1), 2),
                     round(min(max(cy + rr * math.sin(a), 0), H - 1), 2)]
        anns.append({"id": aid, "image_id": i + 1, "category_id": random.choice(ids),
                     "segmentation": [poly], "area": 1.0, "bbox": [cx - r, cy - r, 2 * r, 2 * r],
                     "iscrowd": 0})
        aid += 1
json.dump({"images": images, "annotations": anns, "categories": cats},
          open(os.path.join(out, "inst.json"), "w"))
