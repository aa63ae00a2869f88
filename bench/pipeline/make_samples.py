"""Writes a deterministic full-sample-path benchmark set: N photo-like COCO-size JPEGs and one
RefCOCO-style referring record per image (`records.jsonl`, the padt-rs `Record` layout).

Images: a random crop (>= 45 % of the area) of one of the fixture photos, random horizontal
flip, brightness/contrast jitter, Pillow LANCZOS to a COCO size (640x480, 480x640, 640x427,
427x640, 500x375, 375x500, 612x612, 640x360, 640x512), Gaussian grain (sigma 8-16) so the
JPEG carries photo-like high-frequency detail (the fixture photos are small; a plain upscale is
smoother than a real COCO photo), then baseline 4:2:0 JPEG at quality 85-95. Mean size is
printed; COCO train2017 averages about 160 KB.

Records: task "refering", prompt and answer template verbatim PaDT's REC strings
(padt-reference.md §5.7) around a generated referring sentence; one object: a star-shaped
polygon (log-uniform radius 12 px .. 45 % of the short side, 1-2 parts) rasterised and
RLE-compressed with pycocotools, `patches` by process_refcoco's rule (cv2 bilinear of mask*255
to the 28-px grid, block mean > 255/28), `bbox` = normalised xyxy of the polygon box.

Usage: python make_samples.py FIXTURES_DATA_DIR OUT_DIR [N] (default 200; seed fixed)."""
import io
import json
import math
import pathlib
import sys

import cv2
import numpy as np
from PIL import Image, ImageEnhance
from pycocotools import mask as mask_utils

src = pathlib.Path(sys.argv[1])
out = pathlib.Path(sys.argv[2])
count = int(sys.argv[3]) if len(sys.argv) > 3 else 200
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(20251126)

photos = [
    p
    for p in sorted(src.glob("raw/coco/images/*/*.jpg")) + sorted(src.glob("preprocess/inputs/*"))
    if min(Image.open(p).size) >= 90
]
SIZES = [(640, 480), (480, 640), (640, 427), (427, 640), (500, 375), (375, 500), (612, 612), (640, 360), (640, 512)]
COLOURS = ["red", "white", "black", "blue", "green", "yellow", "brown", "gray", "orange", "pink"]
NOUNS = ["man", "woman", "dog", "cat", "car", "chair", "kid", "horse", "bus", "umbrella", "bowl", "giraffe"]
PLACES = ["on the left", "on the right", "in the middle", "in front", "in the back", "closest to us", "far right", "top left"]
EXTRAS = ["wearing a hat", "holding a cup", "next to the table", "with a striped shirt", "behind the fence", "sitting down"]


def sentence():
    words = []
    if rng.random() < 0.6:
        words.append(COLOURS[rng.integers(len(COLOURS))])
    words.append(NOUNS[rng.integers(len(NOUNS))])
    if rng.random() < 0.7:
        words.append(PLACES[rng.integers(len(PLACES))])
    if rng.random() < 0.35:  # RefCOCOg-length sentences
        words.append(EXTRAS[rng.integers(len(EXTRAS))])
    return " ".join(words)


def polygon(w, h):
    r = math.exp(rng.uniform(math.log(12), math.log(0.45 * min(w, h))))
    cx, cy = rng.uniform(r * 0.5, w - r * 0.5), rng.uniform(r * 0.5, h - r * 0.5)
    n = int(rng.integers(6, 24))
    pts = []
    for k in range(n):
        a = 2 * math.pi * (k + rng.uniform(0.1, 0.9)) / n
        rr = r * rng.uniform(0.5, 1.0)
        pts += [min(max(cx + rr * math.cos(a), 0.0), w - 0.01), min(max(cy + rr * math.sin(a), 0.0), h - 0.01)]
    return pts


def refcoco_patches(m, w, h):
    pw, ph = round(w / 28), round(h / 28)
    big = cv2.resize(m.astype(np.uint8) * 255, (pw * 28, ph * 28)).astype(np.float64)
    means = big.reshape(ph, 28, pw, 28).mean(axis=(1, 3)).reshape(-1)
    return [int(i) for i in np.nonzero(means > 255 / 28)[0]]


sizes_bytes = []
with open(out / "records.jsonl", "w") as records:
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        im = Image.open(photos[int(rng.integers(len(photos)))]).convert("RGB")
        sw, sh = im.size
        frac = rng.uniform(0.45, 1.0) ** 0.5
        cw, ch = max(16, int(sw * frac)), max(16, int(sh * frac))
        x0, y0 = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
        im = im.crop((x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.8, 1.2))
        im = ImageEnhance.Contrast(im).enhance(rng.uniform(0.8, 1.2))
        px = np.asarray(im.resize((w, h), Image.Resampling.LANCZOS), dtype=np.float32)
        px += rng.normal(0.0, rng.uniform(8.0, 16.0), size=px.shape).astype(np.float32)
        buf = io.BytesIO()
        Image.fromarray(np.clip(px + 0.5, 0, 255).astype(np.uint8)).save(
            buf, "JPEG", quality=int(rng.integers(85, 96)), subsampling="4:2:0"
        )
        name = f"sample_{i:04d}.jpg"
        (out / name).write_bytes(buf.getvalue())
        sizes_bytes.append(len(buf.getvalue()))
        while True:
            polys = [polygon(w, h) for _ in range(1 if rng.random() < 0.8 else 2)]
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
            m = mask_utils.decode(rle)
            patches = refcoco_patches(m, w, h)
            if patches:
                break
        x, y, bw, bh = mask_utils.toBbox(rle).tolist()
        text = sentence()
        record = {
            "id": 700000 + i,
            "image": name,
            "prompt": f'Please carefully check the image and detect the object this sentence describes: "{text}".',
            "answer_template": f'The "{text}" refers to <|Obj_0|> in this image.',
            "objects": [{
                "patches": patches,
                "bbox": [x / w, y / h, (x + bw) / w, (y + bh) / h],
                "iscrowd": 0,
                "area": float(mask_utils.area(rle)),
                "area_is_int": False,
                "rle": {"size": [h, w], "counts": rle["counts"].decode()},
                "label": text,
            }],
            "task": "refering",
        }
        records.write(json.dumps(record) + "\n")
print(f"wrote {count} JPEGs (mean {np.mean(sizes_bytes) / 1000:.0f} KB) and records.jsonl to {out}")
