#!/usr/bin/env python3
"""Golden files for the Rust Qwen2.5-VL (crates/padt-model) from transformers' own model.

Builds `Qwen2_5_VLForConditionalGeneration` (transformers==4.50.0, torch CPU, float32, eager
attention) from a tiny config with seeded random weights, runs one batch of two samples
(left padding, one image each, images of different sizes whose merged grids are not multiples
of the attention window), a next-token cross-entropy loss on the last K positions of each sample,
and its backward pass. Writes into --out:

  config.json, model.safetensors   the model (save_pretrained; a tied head is not stored)
  golden.safetensors               inputs, vision outputs, M-RoPE positions, hidden states,
                                   logits, loss, and `grad.<name>` for every parameter
  README.md                        what each tensor is, and the tolerances of the Rust test

Environment (outside the repository):
  python3 -m venv /root/.cache/qwen-golden-venv
  /root/.cache/qwen-golden-venv/bin/pip install "transformers==4.50.0" "pillow<13" torch \
      safetensors numpy
Usage:
  /root/.cache/qwen-golden-venv/bin/python tools/gen_qwen_golden.py \
      --out tests/fixtures/qwen-tiny-tied --variant tied --seed 1
"""

import argparse
import json
import os
import shutil
import tempfile

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessor,
)

# Token ids of the tiny vocabulary (all inside it).
VOCAB = 576
PAD_ID = 0
VISION_START_ID = 572
VISION_END_ID = 573
IMAGE_PAD_ID = 574
VIDEO_PAD_ID = 575
TEXT_IDS = (1, 570)  # ordinary text tokens are drawn from [1, 570)

PATCH = 7  # smaller than the published 14 to keep the fixture small; same code paths
MERGE = 2
TEMPORAL = 2
# Image sizes in patches (h, w): merged grids 4x5 and 3x7, neither a multiple of the 4x4 window.
IMAGE_PATCHES = [(8, 10), (6, 14)]
# Text tokens before the image and after it, per sample; sample 0 is shorter (left padded).
TEXT_BEFORE = [3, 4]
TEXT_AFTER = [8, 12]
LOSS_K = 6  # loss over the last K next-token predictions of each sample


def tiny_config(tied: bool) -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},  # head_dim 16
        tie_word_embeddings=tied,
        use_sliding_window=False,
        attention_dropout=0.0,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=PAD_ID,
        image_token_id=IMAGE_PAD_ID,
        video_token_id=VIDEO_PAD_ID,
        vision_start_token_id=VISION_START_ID,
        vision_end_token_id=VISION_END_ID,
        vision_config={
            "depth": 2,  # block 0 windowed, block 1 full attention
            "hidden_size": 32,
            "intermediate_size": 32,
            "num_heads": 2,
            "in_channels": 3,
            "out_hidden_size": 64,
            "patch_size": PATCH,
            "spatial_merge_size": MERGE,
            "temporal_patch_size": TEMPORAL,
            "window_size": 4 * MERGE * PATCH,  # windows of 4x4 merged tokens
            "fullatt_block_indexes": [1],
            "hidden_act": "silu",
            "tokens_per_second": 2,
        },
        architectures=["Qwen2_5_VLForConditionalGeneration"],
    )


def randomize(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Seeded weights well away from transformers' tiny init, so every term matters:
    norm weights 1 + N(0, 0.2), biases N(0, 0.2), embeddings N(0, 0.04), other weights N(0, 1/fan_in)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            if "norm" in name or "ln_q" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.2 * noise)
            elif "embed_tokens" in name:
                p.copy_(0.2 * noise)
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(noise / np.sqrt(fan_in))


def make_pixels(rng: np.random.Generator):
    processor = Qwen2VLImageProcessor(
        patch_size=PATCH,
        merge_size=MERGE,
        temporal_patch_size=TEMPORAL,
        min_pixels=PATCH * PATCH * MERGE * MERGE,
        max_pixels=10_000_000,
    )
    images = [
        rng.integers(0, 256, size=(h * PATCH, w * PATCH, 3), dtype=np.uint8)
        for h, w in IMAGE_PATCHES
    ]
    out = processor(images=images, return_tensors="pt")
    grid = out["image_grid_thw"]
    expected = torch.tensor([[1, h, w] for h, w in IMAGE_PATCHES])
    assert torch.equal(grid, expected), (grid, expected)
    return out["pixel_values"].to(torch.float32), grid.to(torch.int64)


def make_ids(rng: np.random.Generator):
    rows = []
    for s, (h, w) in enumerate(IMAGE_PATCHES):
        n_image = (h // MERGE) * (w // MERGE)
        before = rng.integers(*TEXT_IDS, size=TEXT_BEFORE[s]).tolist()
        after = rng.integers(*TEXT_IDS, size=TEXT_AFTER[s]).tolist()
        rows.append(before + [VISION_START_ID] + [IMAGE_PAD_ID] * n_image + [VISION_END_ID] + after)
    length = max(len(r) for r in rows)
    assert len(rows[0]) < length, "sample 0 must be the padded one"
    ids = torch.full((len(rows), length), PAD_ID, dtype=torch.int64)
    mask = torch.zeros((len(rows), length), dtype=torch.int64)
    for s, r in enumerate(rows):
        ids[s, length - len(r):] = torch.tensor(r)
        mask[s, length - len(r):] = 1
    return ids, mask


DESCRIPTIONS = {
    "input_ids": "[B, L] i64, left padded with pad id 0 (sample 0 is shorter); each sample: text, "
    "vision_start (572), image_pad (574) x merged tokens of its image, vision_end (573), text",
    "attention_mask": "[B, L] i64, 0 = padding",
    "pixel_values": "[patches, 3*2*7*7] f32, Qwen2VLImageProcessor output of two random RGB images "
    "(8x10 and 6x14 patches: merged grids 4x5 and 3x7, not multiples of the 4x4 window)",
    "image_grid_thw": "[2, 3] i64 (t, h, w) per image",
    "vision.window_index": "[merged tokens] i64, window order of the merged tokens (get_window_index)",
    "vision.last_block": "[patches, vit hidden] f32, last ViT block output, window order",
    "vision.merged_embeds": "[merged tokens, 64] f32, merger output in processor (raster) order",
    "position_ids": "[3, B, L] i64, M-RoPE positions (t, h, w); padded positions are 1",
    "rope_deltas": "[B] i64",
    "hidden_states": "[layers + 1, B, L, 64] f32: input embeddings, every layer output but the "
    "last, final RMSNorm output",
    "logits": "[B, L, V] f32",
    "loss_k": "[1] i64, K",
    "loss": "[1] f32, mean cross entropy of logits[b, L-1-K+j] against input_ids[b, L-K+j], "
    "j < K, over both samples",
    "grad.<name>": "d loss / d parameter, for every parameter (names as in model.safetensors; "
    "a tied head has no lm_head entry, its gradient is part of model.embed_tokens.weight)",
}


def write_readme(args, golden, loss: float) -> None:
    shapes = {k: list(v.shape) for k, v in golden.items()}
    lines = [
        f"# Qwen2.5-VL tiny golden, {args.variant} output head (seed {args.seed})",
        "",
        "Generated by `tools/gen_qwen_golden.py --out <this dir> --variant "
        f"{args.variant} --seed {args.seed}` with transformers {transformers.__version__}, "
        f"torch {torch.__version__} (CPU, float32, eager attention). Do not edit by hand; "
        "rerun the script (it is deterministic).",
        "",
        "- `config.json`, `model.safetensors`: `Qwen2_5_VLForConditionalGeneration.save_pretrained` "
        "of a tiny random model (LLM hidden 64, 2 layers, 4 heads, 2 KV heads, vocab "
        f"{VOCAB}; ViT hidden 32, depth 2, 2 heads, patch 7, window 56 px = 4x4 merged tokens, "
        "full attention in block 1). Weights: norms 1 + N(0, 0.2^2), biases N(0, 0.2^2), "
        "embeddings N(0, 0.2^2), other weights N(0, 1/fan_in).",
        "- `golden.safetensors`: one batch of B = 2 samples, one image each:",
        "",
        "| tensor | shape | what |",
        "| --- | --- | --- |",
    ]
    for key, what in DESCRIPTIONS.items():
        shape = "per parameter" if key == "grad.<name>" else str(shapes[key])
        lines.append(f"| `{key}` | {shape} | {what} |")
    lines += [
        "",
        f"Loss of this batch: {loss:.6f}.",
        "",
        "Checked by `crates/padt-model/tests/qwen_generated_parity.rs` (on `Autodiff<Flex>`): "
        "window index, position ids and rope_deltas exactly; vision outputs, hidden states, "
        "logits and loss within 1e-4 x the max |value| of each golden tensor; every parameter "
        "gradient within 1e-3 x its max |value|. Padded positions are not compared.",
        "",
    ]
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--variant", choices=["tied", "untied"], required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    assert transformers.__version__ == "4.50.0", transformers.__version__

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    generator = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    config = tiny_config(args.variant == "tied")
    model = Qwen2_5_VLForConditionalGeneration._from_config(
        config, attn_implementation="eager", torch_dtype=torch.float32
    )
    randomize(model, generator)
    model.train(False)  # no dropout (all zero anyway); gradients still flow

    pixel_values, grid_thw = make_pixels(rng)
    input_ids, attention_mask = make_ids(rng)

    captured = {}
    model.visual.register_forward_hook(lambda m, i, o: captured.__setitem__("merged", o))
    model.visual.blocks[-1].register_forward_hook(
        lambda m, i, o: captured.__setitem__("last_block", o)
    )

    position_ids, rope_deltas = model.get_rope_index(
        input_ids, image_grid_thw=grid_thw, attention_mask=attention_mask
    )
    window_index, _ = model.visual.get_window_index(grid_thw)

    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values=pixel_values,
        image_grid_thw=grid_thw,
        output_hidden_states=True,
        return_dict=True,
    )
    logits = out.logits  # [B, L, V]
    length = input_ids.shape[1]
    # Predictions at positions L-1-K .. L-2 of the targets at L-K .. L-1.
    pred = logits[:, length - 1 - LOSS_K: length - 1, :]
    labels = input_ids[:, length - LOSS_K:]
    loss = torch.nn.functional.cross_entropy(pred.reshape(-1, VOCAB), labels.reshape(-1))
    loss.backward()

    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copyfile(os.path.join(tmp, name), os.path.join(args.out, name))

    golden = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": pixel_values,
        "image_grid_thw": grid_thw,
        "vision.window_index": window_index.to(torch.int64),
        "vision.last_block": captured["last_block"],
        "vision.merged_embeds": captured["merged"],
        "position_ids": position_ids.to(torch.int64),
        "rope_deltas": rope_deltas.reshape(-1).to(torch.int64),
        "hidden_states": torch.stack(out.hidden_states),
        "logits": logits,
        "loss_k": torch.tensor([LOSS_K], dtype=torch.int64),
        "loss": loss.reshape(1),
    }
    names = set()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient"
        golden[f"grad.{name}"] = p.grad
        names.add(name)
    golden = {k: v.detach().contiguous().clone() for k, v in golden.items()}
    save_file(golden, os.path.join(args.out, "golden.safetensors"))

    write_readme(args, golden, float(loss.detach()))

    meta = {
        "variant": args.variant,
        "seed": args.seed,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "loss": float(loss.detach()),
        "parameters": len(names),
    }
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
