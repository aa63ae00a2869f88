#!/usr/bin/env python3
"""Reference-side GPU timing of one Qwen2.5-VL training step (PyTorch + transformers).

The other side of `bench/gpu/`: the same model config, batch shape and optimizer step as
`padt-train` runs with `bench/gpu/padt_rec_3b_bench.yaml`, done the way the PaDT reference does it
(transformers' Qwen2_5_VLForConditionalGeneration, fp32 master weights with bf16 autocast, AdamW,
optional HF gradient checkpointing). The PaDT decoder (98 M parameters, ~2.6 % of the 3B model)
and the robust-CE masking are not included: this times the Qwen2.5-VL body, which is where the
reference spends its step.

Random weights, random token ids and pixel values (never zeros); every sample is one image of
`--grid-h` x `--grid-w` 14-px patches followed by text, `--seq-len` tokens in all, the last
`--completion-len` supervised.

    python3 tools/bench_gpu_reference.py --config DIR/config.json --batch 4 --steps 6 \
        [--grad-ckpt] [--attn sdpa|eager] [--device cuda] [--json OUT.json]

Prints one JSON line: median/min step seconds, samples/s, tokens/s, peak allocated GiB.
"""

import argparse
import json
import statistics
import time

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="HF config.json of a Qwen2.5-VL model")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--grid-h", type=int, default=40)
    ap.add_argument("--grid-w", type=int, default=40)
    ap.add_argument("--seq-len", type=int, default=467)
    ap.add_argument("--completion-len", type=int, default=25)
    ap.add_argument("--steps", type=int, default=6, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--grad-ckpt", action="store_true")
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    raw = json.load(open(args.config))
    config = Qwen2_5_VLConfig(**raw)
    config._attn_implementation = args.attn
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.to(device=device, dtype=torch.float32)
    model.train()
    if args.grad_ckpt:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    params = sum(p.numel() for p in model.parameters())
    optim = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                              weight_decay=0.0)

    merge = raw["vision_config"].get("spatial_merge_size", 2)
    patches = args.grid_h * args.grid_w
    image_tokens = patches // (merge * merge)
    text_len = args.seq_len - image_tokens - 2
    assert text_len > args.completion_len, "seq-len too short for the image"
    # plain text ids, below every special token
    vocab_text = min(150000, raw["vision_start_token_id"] - 10)
    ids = []
    for _ in range(args.batch):
        text = torch.randint(0, vocab_text, (text_len,))
        row = torch.cat([
            text[:8],
            torch.tensor([raw["vision_start_token_id"]]),
            torch.full((image_tokens,), raw["image_token_id"]),
            torch.tensor([raw["vision_end_token_id"]]),
            text[8:],
        ])
        ids.append(row)
    input_ids = torch.stack(ids).to(device)
    labels = input_ids.clone()
    labels[:, : args.seq_len - args.completion_len] = -100
    attention_mask = torch.ones_like(input_ids)
    channels = 3 * 2 * 14 * 14
    pixel_values = torch.randn(args.batch * patches, channels, device=device)
    grid = torch.tensor([[1, args.grid_h, args.grid_w]] * args.batch, device=device)

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                        pixel_values=pixel_values, image_grid_thw=grid)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        return out.loss.detach()

    times = []
    for i in range(args.steps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if i >= 2:
            times.append(elapsed)
        print(f"step {i} loss {loss.item():.4f} {elapsed:.3f}s", flush=True)
    median = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    result = {
        "side": "pytorch-transformers",
        "torch": torch.__version__,
        "attn": args.attn,
        "grad_ckpt": args.grad_ckpt,
        "params": params,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "patches_per_image": patches,
        "step_s_median": median,
        "step_s_min": min(times),
        "samples_per_s": args.batch / median,
        "tokens_per_s": args.batch * args.seq_len / median,
        "peak_alloc_gib": peak,
    }
    print(json.dumps(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
