"""Writes COCO-size benchmark JPEGs (640x480 and 480x640, baseline q90 4:2:0 like COCO) from the
fixture photos, upscaled with Pillow LANCZOS. Usage: python make_images.py FIXTURES_DATA_DIR OUT_DIR"""
import pathlib
import sys

from PIL import Image

src = pathlib.Path(sys.argv[1])
out = pathlib.Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
photos = sorted(src.glob("raw/coco/images/*/*.jpg")) + sorted(src.glob("preprocess/inputs/*"))
n = 0
for i, path in enumerate(photos):
    im = Image.open(path).convert("RGB")
    if min(im.size) < 28:
        continue
    size = (640, 480) if i % 3 else (480, 640)
    im.resize(size, Image.Resampling.LANCZOS).save(out / f"bench_{n:02d}.jpg", quality=90, subsampling="4:2:0")
    n += 1
print(f"wrote {n} JPEGs to {out}")
