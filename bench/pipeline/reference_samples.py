"""Reference full sample path, one process, one thread: what PaDT's `PaDTSFTTrainer.compute_loss`
does per sample before the model runs, for a batch of one, on the records and JPEGs of
make_samples.py (bytes preloaded, like the Rust bench):

  1. `apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)`;
  2. `PIL.Image.open` + PaDT's tiny-image upscale block (a no-op on COCO sizes);
  3. the completion: `re.findall` / `re.split` on `<|Obj_k|>`, `np.random.choice(patches, 5,
     replace=len < 5)`, `pid2vrt`, `+ eos_token`;
  4. the processor on text + image (`Qwen2_5_VLProcessor`, transformers 4.50: the slow
     `Qwen2VLImageProcessor`, min/max pixels 3136 / 12845056, `<|image_pad|>` expansion,
     tokenisation, left padding, no special tokens), then `set_image_grid_thw` (adds the VRT
     tokens; a no-op after the first sample);
  5. the completion through the processor (tokenizer, right padding);
  6. each object's mask target: `pycocotools.mask.decode(rle)` → `cv2.resize(float32, (4gw,
     4gh))` (bilinear) `> 0.5`; the GT box list.

Left out on both sides: reading the record (JSONL / Parquet), batch collation (padding to the
batch, global VRT ids, the robust-CE mask tensor), moving tensors to the GPU. Tensors come back
as numpy (`return_tensors="np"`): this venv has no torch; PaDT asks for "pt", which converts the
same arrays.

PaDT's `set_image_grid_thw` counts the tokens with `len(tokenizer.get_vocab())`, which builds the
152k-entry vocabulary dict on every processor call with images (once per batch). The main rate
replaces it with a running count (the same number; `len(tokenizer)` would build the dict too),
the cheapest reference; the second rate pays it once every 16 samples, PaDT's per-GPU batch.

Rates are samples per CPU-second of this process (`time.process_time`, all threads; the
tokenizer's thread pool is off, `TOKENIZERS_PARALLELISM=false`, BLAS/OMP one thread).

With `--check`, first rebuilds every sample with the picks of the Rust run
(`DIR/rust_outputs.jsonl`, written by `cargo bench -p padt-data --bench pipeline -- samples DIR`)
and requires the prompt ids, completion ids, grid and mask targets to be equal.

Usage: python reference_samples.py DIR SECONDS TOKENIZER_DIR [--check]"""
import io
import json
import os
import pathlib
import re
import sys
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402
from transformers import AutoTokenizer, Qwen2_5_VLProcessor, Qwen2VLImageProcessor  # noqa: E402
from transformers.tokenization_utils import AddedToken  # noqa: E402

cv2.setNumThreads(1)
directory = pathlib.Path(sys.argv[1])
seconds = float(sys.argv[2])
tokenizer_dir = sys.argv[3]
check = "--check" in sys.argv[4:]

records = [json.loads(line) for line in open(directory / "records.jsonl")]
blobs = [(directory / r["image"]).read_bytes() for r in records]
# PaDT's dataset row: prompt = one user turn [image, text]; solution = {text, objects}.
rows = [
    {
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r["prompt"]}]}],
        "solution": {"text": r["answer_template"], "objects": r["objects"]},
    }
    for r in records
]

tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
processor = Qwen2_5_VLProcessor(
    image_processor=Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056),
    tokenizer=tokenizer,
    chat_template=tokenizer.chat_template,
)
EMBED = 151936  # Qwen2.5-VL-3B embedding rows (VisonTextProcessingClass.prepare)
tokenizer.add_tokens(
    [AddedToken("<|empty_token_%d|>" % i, lstrip=False, rstrip=False, special=True, normalized=False)
     for i in range(EMBED - len(tokenizer.get_vocab()))]
)
np.random.seed(42)


vocab_len = len(tokenizer.get_vocab())


def set_image_grid_thw(grid, padt_vocab_len):
    global vocab_len
    need = int(np.prod(grid, axis=-1).max()) // 4
    # PaDT takes len(tokenizer.get_vocab()), which builds the whole vocabulary dict (0.1-0.3 s
    # here; len(tokenizer) costs the same in tokenizers 0.21). The cheap variant keeps count.
    have = (len(tokenizer.get_vocab()) if padt_vocab_len else vocab_len) - EMBED
    if have < need:
        vocab_len += tokenizer.add_tokens(
            [AddedToken("<|VRT_%d|>" % i, lstrip=False, rstrip=False, special=False, normalized=False)
             for i in range(have, need)]
        )


def sample(row, blob, forced_picks=None, padt_vocab_len=False):
    prompt_text = processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    image = PIL.Image.open(io.BytesIO(blob))
    try:  # PaDT's upscale block, scoping bug included (raises, swallowed, for sizes >= 28)
        w, h = image.size
        if w < 28 or h < 28:
            if w < h:
                new_w, new_h = 28, int(h * (28 / w))
            else:
                new_h, new_w = 28, int(w * (28 / h))
        image = image.resize((new_w, new_h), PIL.Image.Resampling.LANCZOS)  # noqa: F821
    except Exception:
        pass
    im_w, im_h = image.size
    patch_w = round(im_w / 28)  # used by the structured selection only
    del patch_w
    solution = row["solution"]
    completion = solution["text"]
    found = re.findall(r"(<\|Obj_(\d+)\|>)", completion)
    objs = [solution["objects"][int(k)] for _, k in found]
    parts = re.split(r"<\|Obj_\d+\|>", completion)
    text = parts[0]
    picked_objs = []
    for n, (part, obj) in enumerate(zip(parts[1:], objs)):
        patches = np.array(obj["patches"])
        if forced_picks is not None:
            pick = np.array(forced_picks[n])
        elif patches.shape[0] < 5:
            pick = np.random.choice(patches, 5, replace=True)
        else:
            pick = np.random.choice(patches, 5, replace=False)
        picked_objs.append(dict(obj, picked=pick))
        text += "".join("<|VRT_%d|>" % int(i) for i in pick) + part
    completions = [text + tokenizer.eos_token]
    prompt_inputs = processor(text=[prompt_text], images=[image], return_tensors="np", padding=True,
                              padding_side="left", add_special_tokens=False)
    set_image_grid_thw(prompt_inputs["image_grid_thw"], padt_vocab_len)
    completion_inputs = processor(text=completions, return_tensors="np", padding=True, padding_side="right",
                                  add_special_tokens=False)
    grid = prompt_inputs["image_grid_thw"][0]
    masks, boxes = [], []
    for obj in picked_objs:
        if "rle" in obj and obj["rle"] is not None:
            gt = mask_utils.decode(obj["rle"])
            masks.append(cv2.resize(gt.astype(np.float32), (int(grid[2]) * 4, int(grid[1]) * 4)) > 0.5)
        else:
            masks.append(None)
        boxes.append(obj["bbox"])
    return prompt_inputs, completion_inputs, masks, boxes


if check:
    rust = [json.loads(line) for line in open(directory / "rust_outputs.jsonl")]
    assert len(rust) == len(rows), "rust_outputs.jsonl is from another sample set"
    for row, blob, want in zip(rows, blobs, rust):
        p, c, masks, _ = sample(row, blob, [o["picks"] for o in want["objects"]])
        assert p["image_grid_thw"][0].tolist() == want["grid_thw"], want["id"]
        assert p["input_ids"][0].tolist() == want["prompt_ids"], want["id"]
        assert c["input_ids"][0].tolist() == want["completion_ids"], want["id"]
        for m, o in zip(masks, want["objects"]):
            assert m.astype(np.uint8).reshape(-1).tolist() == o["mask"], want["id"]
    print(f"check: {len(rows)} samples equal to the Rust loader's (grid, prompt ids, completion ids, masks)")


def rate(fn):
    fn(0)  # warm-up
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        fn(n)
        n += 1
    return n / (time.process_time() - c0)


def loadavg():
    return " ".join(open("/proc/loadavg").read().split()[:3])


print(f"load average before: {loadavg()}")
print(f"records {len(rows)}")
full = rate(lambda i: sample(rows[i % len(rows)], blobs[i % len(rows)]))
print(f"full sample path, vocabulary size kept as a count (no get_vocab()): {full:.1f} samples/CPU-s")
# PaDT calls the processor (and so get_vocab) once per per-GPU batch of 16.
batched = rate(lambda i: sample(rows[i % len(rows)], blobs[i % len(rows)], padt_vocab_len=i % 16 == 0))
print(f"full sample path, get_vocab() once per 16 samples (PaDT's per-GPU batch): {batched:.1f} samples/CPU-s")


def image_only(i):
    out = processor.image_processor(images=[PIL.Image.open(io.BytesIO(blobs[i % len(blobs)]))], return_tensors="np")
    assert out["pixel_values"].shape[1] == 1176


image = rate(image_only)
print(f"  image part alone (PIL + Qwen2VLImageProcessor): {image:.1f} images/CPU-s")
print(f"  the rest (template, picks, tokenizer, masks): {1e3 / full - 1e3 / image:.3f} ms/sample by difference")
print(f"load average after: {loadavg()}")
