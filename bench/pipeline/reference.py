"""Reference image path, single thread: PIL decode (Image.open + the processor's convert) and the
transformers 4.50 slow Qwen2VLImageProcessor (PaDT's settings), on the same files as the Rust
bench, from bytes in memory. Usage: python reference.py IMAGE_DIR SECONDS"""
import io
import os
import pathlib
import sys
import time

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

from PIL import Image  # noqa: E402
from transformers import Qwen2VLImageProcessor  # noqa: E402

files = sorted(pathlib.Path(sys.argv[1]).glob("*.jpg"))
seconds = float(sys.argv[2])
blobs = [f.read_bytes() for f in files]
proc = Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056)

def run(fn):
    fn(blobs[0])  # warm-up
    # Rate per CPU-second of this thread (per busy core, robust to a loaded machine).
    n, t0, c0 = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - t0 < seconds:
        fn(blobs[n % len(blobs)])
        n += 1
    return n / (time.thread_time() - c0)

def decode(b):
    im = Image.open(io.BytesIO(b))
    im.load()
    return im

def full(b):
    out = proc(images=[decode(b)], return_tensors="np")
    assert out["pixel_values"].shape[1] == 1176

print(f"files {len(files)}; decode only: {run(decode):.1f} images/CPU-s; full path: {run(full):.1f} samples/CPU-s")
