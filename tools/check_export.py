#!/usr/bin/env python3
"""Checks a padt-export directory against the PyTorch reference.

Loads the export with the reference `PaDTForConditionalGeneration.from_pretrained` (PaDT's own
`padt.py` / `padt_decoder.py`, taken from the git mirror at run time into a temporary
directory, never copied into this repository), runs the training forward on one batch and
compares with what padt-rs computed from the same export (`padt-export ... --dump-forward
BATCH --dump-forward-to RUST.safetensors`, which loads the export as padt-infer does):

- loading: no missing, unexpected or mismatched keys;
- completion logits `logits[:, P-1:-1]` (per-image VRT mask applied) at supervised positions
  (completion_mask = 1): the same -inf pattern, finite values within LOGITS_ABS;
- decoder outputs (boxes, score logits, mask logits) for the VRT runs of the completions, fed
  with the last hidden state that predicts each VRT (warm-up off), within DECODER_REL of the
  tensor's max |value|.

The tolerances are those the padt-tiny golden README suggests for forward tensors (fp32, CPU).

Stand-ins (the reference imports things a CPU machine does not have):
- `deepspeed` is an import stub (PaDT only imports it at module level; the forward paths used
  here do not call it);
- flash-attn: PaDT's decoder only implements `flash_attention_2` and imports
  `flash_attn_varlen_func` / `apply_rotary_emb` through transformers (None without flash-attn).
  They are replaced by pure-torch equivalents: per-sequence softmax attention over `cu_seqlens`
  (non-causal, scale 1/sqrt(head_dim)) and the non-interleaved rotary on the first 2*len(cos)
  dims, both in fp32;
- the LLM and ViT run with `attn_implementation="eager"` (so PaDT's ViT flash-attention
  monkey patch from utils/qwen2_5vl_monkey_patch.py does not apply).

Usage (venv with torch + transformers 4.50 + safetensors):
  python tools/check_export.py --export HF_DIR --rust-dump RUST.safetensors \
      [--batch tests/fixtures/padt-tiny/batch.safetensors] [--mirror DIR] [--rev HEAD]
Exit status 0 when every check holds; prints a JSON report either way.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import types

import torch
from safetensors.torch import load_file

LOGITS_ABS = 1e-4
DECODER_REL = 1e-5

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BATCH = os.path.join(REPO, "tests/fixtures/padt-tiny/batch.safetensors")
DEFAULT_MIRROR = "/work/.mirror/Gorilla-Lab-SCUT+PaDT/repo"
REFERENCE_FILES = ["src/PaDT/models/padt.py", "src/PaDT/models/padt_decoder.py"]


def varlen_attention(q, k, v, cu_q, cu_k, max_q=None, max_k=None, *args, **kwargs):
    """`flash_attn_varlen_func` stand-in: q [Tq, H, d], k/v [Tk, H, d] -> [Tq, H, d]."""
    assert not kwargs.get("causal", False)
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = torch.empty_like(q)
    for i in range(len(cu_q) - 1):
        a, b = int(cu_q[i]), int(cu_q[i + 1])
        c, d = int(cu_k[i]), int(cu_k[i + 1])
        qi = q[a:b].transpose(0, 1).float()  # [H, Lq, d]
        ki = k[c:d].transpose(0, 1).float()
        vi = v[c:d].transpose(0, 1).float()
        p = torch.softmax(qi @ ki.transpose(1, 2) * scale, dim=-1)
        out[a:b] = (p @ vi).transpose(0, 1).to(q.dtype)
    return out


def rotary(x, cos, sin, *args, **kwargs):
    """`flash_attn.layers.rotary.apply_rotary_emb` stand-in (non-interleaved).

    x [batch, seq, heads, d], cos/sin [seq, r/2]: rotates the first r dims."""
    assert not kwargs.get("interleaved", False)
    half = cos.shape[-1]
    cos = cos[None, :, None, :].to(x.dtype)
    sin = sin[None, :, None, :].to(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


def import_reference(mirror, rev, into):
    """Writes PaDT's model files from the mirror into a package `padt_reference` and imports it."""
    pkg = os.path.join(into, "padt_reference")
    os.makedirs(pkg)
    for path in REFERENCE_FILES:
        text = subprocess.run(
            ["git", "-C", mirror, "show", f"{rev}:{path}"],
            check=True,
            capture_output=True,
        ).stdout
        with open(os.path.join(pkg, os.path.basename(path)), "wb") as f:
            f.write(text)
    open(os.path.join(pkg, "__init__.py"), "w").close()

    deepspeed = types.ModuleType("deepspeed")
    deepspeed.zero = types.SimpleNamespace()
    sys.modules.setdefault("deepspeed", deepspeed)
    import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl as qwen

    if qwen.flash_attn_varlen_func is None:
        qwen.flash_attn_varlen_func = varlen_attention
    if qwen.apply_rotary_emb is None:
        qwen.apply_rotary_emb = rotary
    sys.path.insert(0, into)
    from padt_reference.padt import PaDTForConditionalGeneration

    return PaDTForConditionalGeneration


def vrt_runs(completion, vocab, eos):
    """Maximal runs of ids >= vocab (completion positions), stopping at the first eos."""
    runs, cur = [], []
    for j, t in enumerate(completion):
        if t == eos:
            break
        if t >= vocab:
            cur.append(j)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def max_abs(a, b):
    return float((a - b).abs().max()) if a.numel() else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--export", required=True)
    ap.add_argument("--rust-dump", required=True)
    ap.add_argument("--batch", default=DEFAULT_BATCH)
    ap.add_argument("--mirror", default=DEFAULT_MIRROR)
    ap.add_argument("--rev", default="HEAD")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    report = {"export": args.export, "tolerances": {"logits_abs": LOGITS_ABS, "decoder_rel": DECODER_REL}}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        PaDT = import_reference(args.mirror, args.rev, tmp)
        model, info = PaDT.from_pretrained(
            args.export,
            torch_dtype=torch.float32,
            attn_implementation="eager",
            output_loading_info=True,
        )
    model.eval()
    loading = {k: list(info.get(k, [])) for k in ["missing_keys", "unexpected_keys", "mismatched_keys"]}
    report["loading"] = loading
    ok &= not any(loading.values())

    batch = load_file(args.batch)
    rust = load_file(args.rust_dump)
    config = model.config
    vocab, eos = config.vocab_size, config.eos_token_id
    ids, P = batch["input_ids"], int(batch["prompt_length"])
    with torch.no_grad():
        out = model(
            input_ids=ids,
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"],
            output_hidden_states=True,
            use_cache=False,
            return_dict=True,
        )
        logits = out.logits[:, P - 1 : -1].float()
        want = rust["logits"]
        assert logits.shape == want.shape, (logits.shape, want.shape)
        rows = batch["completion_mask"].bool()
        ref, got = logits[rows], want[rows]
        same_inf = bool(torch.equal(torch.isinf(ref), torch.isinf(got)))
        finite = torch.isfinite(ref)
        d_logits = max_abs(ref[finite], got[finite])
        report["logits"] = {
            "shape": list(logits.shape),
            "rows_compared": int(rows.sum()),
            "same_inf_pattern": same_inf,
            "max_abs_diff": d_logits,
            "max_abs_value": float(ref[finite].abs().max()),
        }
        ok &= same_inf and d_logits <= LOGITS_ABS

        hidden = out.hidden_states[-1]
        feats = []
        for b in range(ids.shape[0]):
            runs = vrt_runs(ids[b, P:].tolist(), vocab, eos)
            feats.append([hidden[b, [P - 1 + j for j in run]] for run in runs])
        dec = model(
            feats,
            out.past_image_embeds,
            out.past_high_res_image_embeds,
            batch["image_grid_thw"],
            out.past_visual_pe,
            is_main=False,
        )
        report["decoder"] = {"objects": sum(len(f) for f in feats)}
        for name in ["pred_boxes", "pred_score", "pred_mask"]:
            if name not in rust:
                continue
            ref, got = dec[name].float(), rust[name]
            if ref.shape != got.shape:
                report["decoder"][name] = {"shape_ref": list(ref.shape), "shape_rust": list(got.shape)}
                ok = False
                continue
            d = max_abs(ref, got)
            scale = float(ref.abs().max())
            report["decoder"][name] = {"max_abs_diff": d, "max_abs_value": scale, "rel": d / max(scale, 1e-30)}
            ok &= d <= DECODER_REL * scale
    report["ok"] = bool(ok)
    print(json.dumps(report, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
