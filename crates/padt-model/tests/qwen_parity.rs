//! Parity of the Qwen2.5-VL vision tower and language model with the padt-tiny goldens
//! (PyTorch PaDT on transformers 4.50, fp32). Tolerances from the golden README: forward
//! tensors rel 1e-5 of the tensor max, logits abs 1e-4.

mod common;

use burn::tensor::{Tensor, TensorData};
use common::*;
use padt_model::qwen2_5_vl::model::Qwen2_5VlInput;
use padt_model::qwen2_5_vl::rope::GridThw;
use padt_model::Qwen2_5Vl;

const REL: f32 = 1e-5;
const LOGITS_ABS: f32 = 1e-4;

fn grids(file: &str) -> Vec<GridThw> {
    read(file, "image_grid_thw")
        .i64
        .chunks(3)
        .map(|g| [g[0] as usize, g[1] as usize, g[2] as usize])
        .collect()
}

fn rows(g: &Golden) -> Vec<Vec<i64>> {
    g.i64.chunks(g.shape[1]).map(<[i64]>::to_vec).collect()
}

#[test]
fn vision_tower_matches_golden() {
    let model = load_tiny();
    let pixels = tensor::<2>(&read("batch.safetensors", "pixel_values"));
    let out = model
        .visual
        .forward(pixels, &grids("batch.safetensors"), true)
        .unwrap();
    let o = "outputs.safetensors";
    let window_index: Vec<usize> = read(o, "vit.window_index")
        .i64
        .iter()
        .map(|&i| i as usize)
        .collect();
    assert_eq!(out.layout.window_index, window_index);

    let trace = out.trace.clone().unwrap();
    let check = |name: &str, t: Tensor<B, 2>| {
        let g = read(o, name);
        let (shape, got) = to_vec(t);
        assert_eq!(shape, g.shape, "{name}: shape");
        assert_close(name, &got, &g.f32, REL);
    };
    check("vit.patch_embed", trace.patch_embeds);
    for (i, block) in trace.blocks.into_iter().enumerate() {
        check(&format!("vit.block{i}"), block);
    }
    check("vit.high_res_embeds", out.high_res.clone());
    check("vit.visual_pe_cos", out.rotary_cos.clone());
    check("vit.visual_pe_sin", out.rotary_sin.clone());
    check(
        "vit.merger_out_window_order",
        out.merged_window_order.clone(),
    );
    check("vit.merged_embeds", out.merged_embeds.clone());

    // Processor order undoes the window permutation: back to the patch embedding order means
    // re-permuting gives the same rows.
    let back = out.to_processor_order(out.high_res.clone());
    let (_, back) = to_vec(back);
    let (_, high) = to_vec(out.high_res.clone());
    let group = 4;
    let hidden = 64;
    for (pos, &raster) in window_index.iter().enumerate() {
        for j in 0..group {
            let a = &high[(pos * group + j) * hidden..][..hidden];
            let b = &back[(raster * group + j) * hidden..][..hidden];
            assert_eq!(a, b);
        }
    }
}

#[test]
fn language_model_matches_golden() {
    let model = load_tiny();
    let device = Default::default();
    let b = "batch.safetensors";
    let o = "outputs.safetensors";
    let input_ids = rows(&read(b, "input_ids"));
    let mask: Vec<Vec<bool>> = rows(&read(b, "attention_mask"))
        .iter()
        .map(|r| r.iter().map(|&m| m == 1).collect())
        .collect();
    let (batch, len) = (input_ids.len(), input_ids[0].len());

    // M-RoPE positions (VRT ids >= V are plain text positions).
    let positions = model.rope_index(&input_ids, &mask, &grids(b)).unwrap();
    let want = read(o, "llm.position_ids").i64;
    let got: Vec<i64> = positions
        .position_ids
        .iter()
        .flatten()
        .flatten()
        .copied()
        .collect();
    assert_eq!(got, want, "llm.position_ids");
    assert_eq!(positions.rope_deltas, read(o, "llm.rope_deltas").i64);

    // Input embeddings: text rows from embed_tokens, image-pad rows from the ViT (VRT rows are
    // PaDT prototypes, not checked here).
    let vocab = model.config.vocab_size as i64;
    let text_ids: Vec<Vec<i64>> = input_ids
        .iter()
        .map(|r| {
            r.iter()
                .map(|&id| if id >= vocab { 0 } else { id })
                .collect()
        })
        .collect();
    let vision = model
        .visual
        .forward(tensor::<2>(&read(b, "pixel_values")), &grids(b), false)
        .unwrap();
    let embeds = model.embed_text(&text_ids, &device).unwrap();
    let embeds = model
        .scatter_image_embeds(embeds, &input_ids, vision.merged_embeds)
        .unwrap();
    let golden_embeds = read(o, "llm.inputs_embeds");
    let (_, got) = to_vec(embeds);
    let flat_ids: Vec<i64> = input_ids.iter().flatten().copied().collect();
    assert_close_rows(
        "llm.inputs_embeds",
        &got,
        &golden_embeds.f32,
        96,
        |r| flat_ids[r] < vocab,
        REL,
    );

    // The LLM on the golden input embeddings.
    let out = model
        .model
        .forward(
            tensor::<3>(&golden_embeds),
            &positions,
            Some(&mask),
            None,
            true,
        )
        .unwrap();
    let flat_mask: Vec<bool> = mask.iter().flatten().copied().collect();
    let hs = read(o, "llm.hidden_states");
    assert_eq!(out.hidden_states.len(), hs.shape[0]);
    let per = batch * len * 96;
    for (i, h) in out.hidden_states.iter().enumerate() {
        let (_, got) = to_vec(h.clone());
        assert_close_rows(
            &format!("llm.hidden_states[{i}]"),
            &got,
            &hs.f32[i * per..(i + 1) * per],
            96,
            |r| flat_mask[r],
            REL,
        );
    }
    let (_, got) = to_vec(out.last_hidden.clone());
    assert_close_rows(
        "llm.final_hidden",
        &got,
        &read(o, "llm.final_hidden").f32,
        96,
        |r| flat_mask[r],
        REL,
    );

    // Logits at the completion-predicting positions, text columns only.
    let p = read(b, "prompt_length").i64[0] as usize;
    let lc = len - p;
    let at: Vec<(usize, usize)> = (0..batch)
        .flat_map(|s| (0..lc).map(move |j| (s, p - 1 + j)))
        .collect();
    let logits = model.logits(Qwen2_5Vl::gather_positions(out.last_hidden, &at));
    let (shape, got) = to_vec(logits);
    assert_eq!(shape, vec![batch * lc, 1024]);
    let golden = read(o, "loss.logits_masked");
    let width = golden.shape[2];
    let mut worst = 0f32;
    for (row, &(s, pos)) in at.iter().enumerate() {
        if !mask[s][pos] {
            continue;
        }
        for c in 0..1024 {
            let d = (got[row * 1024 + c] - golden.f32[row * width + c]).abs();
            worst = worst.max(d);
        }
    }
    eprintln!("logits max abs diff {worst:.3e}");
    assert!(worst <= LOGITS_ABS, "logits max abs diff {worst}");
}

/// End to end: processor pixels + prompt ids → ViT → scatter → LLM prefill with KV cache, then
/// 12 cached decode steps feeding back the golden tokens (VRT ids use the golden prototypes).
#[test]
fn prefill_and_cached_decode_match_inference_golden() {
    let model = load_tiny();
    let device = Default::default();
    let f = "infer/infer.safetensors";
    let prompt = rows(&read(f, "prompt_input_ids"));
    let len = prompt[0].len();
    let input = Qwen2_5VlInput::<B> {
        input_ids: prompt.clone(),
        attention_mask: vec![vec![true; len]],
        pixel_values: Some(tensor::<2>(&read(f, "pixel_values"))),
        image_grid_thw: grids(f),
    };
    let mut cache = model.new_cache();
    let out = model
        .forward(&input, &[(0, len - 1)], Some(&mut cache), false, &device)
        .unwrap();
    assert_eq!(out.positions.rope_deltas, read(f, "rope_deltas").i64);
    let (_, got) = to_vec(out.text.last_hidden.clone());
    assert_close(
        "prefill_last_hidden",
        &got,
        &read(f, "prefill_last_hidden").f32,
        REL,
    );
    let vision = out.vision.as_ref().unwrap();
    let (_, got) = to_vec(vision.high_res.clone());
    assert_close(
        "high_res_embeds",
        &got,
        &read(f, "high_res_embeds").f32,
        REL,
    );

    // Extended classifier [embed_tokens ; prototypes], as PaDT builds it.
    let prototypes = tensor::<2>(&read(f, "prototypes"));
    let table = Tensor::cat(vec![model.lm_head_weight(), prototypes.clone()], 0);
    let step_logits = read(f, "step_logits");
    let step_hidden = read(f, "step_last_hidden");
    let width = step_logits.shape[1];
    let completion = read(f, "completion_ids").i64;
    let vocab = model.config.vocab_size as i64;
    let mut hidden = Qwen2_5Vl::gather_positions(out.text.last_hidden, &[(0, len - 1)]);
    let mut mask = vec![vec![true; len]];
    for (step, &token) in completion.iter().enumerate() {
        let (_, h) = to_vec(hidden.clone());
        assert_close(
            &format!("step {step} hidden"),
            &h,
            &step_hidden.f32[step * 96..(step + 1) * 96],
            REL,
        );
        let (_, logits) = to_vec(hidden.clone().matmul(table.clone().transpose()));
        let want = &step_logits.f32[step * width..(step + 1) * width];
        let worst = logits
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= LOGITS_ABS,
            "step {step}: logits max abs diff {worst}"
        );
        let argmax = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as i64;
        assert_eq!(argmax, token, "step {step}: greedy token");
        // Feed the token back: text ids embed, VRT ids take their prototype.
        let embed = if token < vocab {
            model.embed_text(&[vec![token]], &device).unwrap()
        } else {
            let idx = Tensor::from_data(TensorData::new(vec![token - vocab], [1]), &device);
            prototypes.clone().select(0, idx).unsqueeze::<3>()
        };
        mask[0].push(true);
        let step_out = model
            .decode(embed, &out.positions.rope_deltas, Some(&mask), &mut cache)
            .unwrap();
        hidden = step_out.last_hidden.reshape([1, 96]);
    }
    assert_eq!(cache.len(), len + completion.len());
}
