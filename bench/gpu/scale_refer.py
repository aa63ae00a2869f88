"""Scales a refer-layout dataset written by `padt-make-demo` (raw/refer + raw/images) by an integer
factor: images resized (bilinear, saved as JPEG q90), polygons, boxes and areas scaled.

    python3 bench/gpu/scale_refer.py SRC_RAW DST_RAW [FACTOR]
"""
import json, os, shutil, sys
from PIL import Image
# 5: 112 px -> 560 px, 40 x 40 patches, 400 merged tokens (a COCO 640 x 480 image gives 391)
src, dst = sys.argv[1], sys.argv[2]
S = int(sys.argv[3]) if len(sys.argv) > 3 else 5
os.makedirs(dst + '/refer', exist_ok=True); os.makedirs(dst + '/images', exist_ok=True)
d = json.load(open(src + '/refer/instances.json'))
for im in d['images']:
    Image.open(f"{src}/images/{im['file_name']}").convert('RGB').resize((im['width']*S, im['height']*S), Image.BILINEAR).save(f"{dst}/images/{im['file_name'][:-4]}.jpg", quality=90)
    im['file_name'] = im['file_name'][:-4] + '.jpg'; im['width'] *= S; im['height'] *= S
for a in d['annotations']:
    a['segmentation'] = [[v*S for v in p] for p in a['segmentation']]
    a['bbox'] = [v*S for v in a['bbox']]; a['area'] *= S*S
json.dump(d, open(dst + '/refer/instances.json', 'w'))
shutil.copy(src + '/refer/refs(unc).p', dst + '/refer/refs(unc).p')
