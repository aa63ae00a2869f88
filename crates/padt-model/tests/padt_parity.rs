//! Parity of the whole PaDT training forward (prototypes, extended embeddings, masked logits,
//! decoder features and outputs) with the padt-tiny goldens, warm-up off and on. Tolerances from
//! the golden README: forward tensors rel 1e-5 of the tensor's max |value|, logits abs 1e-4.
//! Rows at padded positions are not compared (they influence nothing, as the README says).

mod common;

use common::*;
use padt_model::padt::{vrt_runs, PadtModel, PadtTrainOutput};
use padt_model::weights::LoadOptions;

const REL: f32 = 1e-5;
const LOGITS_ABS: f32 = 1e-4;

fn load() -> PadtModel<B> {
    let (model, report) = PadtModel::<B>::from_pretrained(
        golden_dir().join("checkpoint"),
        &LoadOptions::default(),
        &Default::default(),
    )
    .expect("padt-tiny loads as a PaDT model");
    assert!(report.missing.is_empty() && report.unused.is_empty());
    model
}

fn run(warmup: bool) -> PadtTrainOutput<B> {
    load()
        .forward_train(&padt_train_input(warmup), eos())
        .unwrap()
}

fn check(name: &str, got: Vec<f32>, key: &str) {
    let want = read("outputs.safetensors", key);
    assert_close_rows(name, &got, &want.f32, 1, |_| true, REL);
}

#[test]
fn prototypes_and_masked_logits_match_golden() {
    let out = run(false);
    check("prototypes", to_vec(out.prototypes).1, "proto.prototypes");
    let (shape, logits) = to_vec(out.logits);
    let want = read("outputs.safetensors", "loss.logits_masked");
    assert_eq!(shape, want.shape);
    let mask = read("batch.safetensors", "completion_mask").i64;
    let width = shape[2];
    let mut worst = 0f32;
    for (i, (g, w)) in logits.iter().zip(&want.f32).enumerate() {
        if mask[i / width] == 0 {
            continue;
        }
        if w.is_infinite() {
            assert_eq!(g, w, "logit {i}: the per-image mask must give -inf");
        } else {
            worst = worst.max((g - w).abs());
        }
    }
    eprintln!("logits: max abs diff {worst:.3e}");
    assert!(worst <= LOGITS_ABS, "logits differ by {worst}");
}

fn decoder_matches(prefix: &str, warmup: bool) {
    let out = run(warmup);
    assert!(out.has_objects);
    let (feats, lens) = out.decoder_feats.unwrap();
    let want_lens: Vec<usize> = read("outputs.safetensors", &format!("{prefix}.dec.feats_len"))
        .i64
        .iter()
        .map(|&k| k as usize)
        .collect();
    assert_eq!(lens, want_lens);
    check(
        &format!("{prefix} feats"),
        to_vec(feats).1,
        &format!("{prefix}.dec.feats"),
    );
    check(
        &format!("{prefix} pred_boxes"),
        to_vec(out.decoder.pred_boxes).1,
        &format!("{prefix}.dec.pred_boxes"),
    );
    check(
        &format!("{prefix} pred_score"),
        to_vec(out.decoder.pred_score).1,
        &format!("{prefix}.dec.pred_score"),
    );
    check(
        &format!("{prefix} pred_mask"),
        to_vec(out.decoder.pred_mask.unwrap()).1,
        &format!("{prefix}.dec.pred_mask"),
    );
}

#[test]
fn decoder_path_matches_golden_warmup_off() {
    decoder_matches("off", false);
}

#[test]
fn decoder_path_matches_golden_warmup_on() {
    decoder_matches("on", true);
}

#[test]
fn vrt_runs_split_objects_and_stop_at_eos() {
    let (v, eos) = (100, 99);
    let a: &[i64] = &[5, 101, 102, 7, 103, 103, 8, eos, 104];
    let b: &[i64] = &[110, 111];
    let runs = vrt_runs(&[a, b], v, eos);
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[0].positions, vec![1, 2]);
    assert_eq!(runs[1].prototype_rows, vec![3, 3]);
    assert_eq!((runs[2].sample, runs[2].positions.clone()), (1, vec![0, 1]));
}

#[test]
fn batch_without_objects_runs_the_dummy_decoder() {
    let model = load();
    let mut input = padt_train_input(false);
    let v = model.vocab_size() as i64;
    // Replace every VRT of the completions by a plain text token.
    for row in &mut input.input_ids {
        for id in row.iter_mut() {
            if *id >= v {
                *id = 13;
            }
        }
    }
    let out = model.forward_train(&input, eos()).unwrap();
    assert!(!out.has_objects);
    assert_eq!(out.decoder.pred_boxes.dims(), [1, 4]);
}

#[test]
fn ids_outside_the_extended_vocabulary_are_clear_errors() {
    let model = load();
    let mut input = padt_train_input(false);
    let merged: usize = input
        .image_grid_thw
        .iter()
        .map(|g| g[0] * g[1] * g[2] / 4)
        .sum();
    let width = (model.vocab_size() + merged) as i64;
    let last = input.input_ids[0].len() - 2;
    input.input_ids[0][last] = width;
    let err = model.forward_train(&input, eos()).unwrap_err().to_string();
    assert!(err.contains(&format!("id {width} ")), "{err}");
    let mut input = padt_train_input(false);
    input.image_grid_thw.pop();
    let err = model.forward_train(&input, eos()).unwrap_err().to_string();
    assert!(err.contains("one image per sample"), "{err}");
}

/// The new modules are initialised as the reference: N(0, 0.02) linears and embeddings, zero
/// biases, unit RMSNorm weights, zero LayerNorm (`vis_norm`) weight and bias.
#[test]
fn new_modules_are_initialised_like_the_reference() {
    use padt_model::padt::PadtConfig;
    let config = PadtConfig::from_file(golden_dir().join("checkpoint/config.json")).unwrap();
    let model = PadtModel::<B>::new(&config, &Default::default());
    let vals = |t: burn::tensor::Tensor<B, 1>| to_vec(t).1;
    assert!(vals(model.vis_norm.weight.val()).iter().all(|&v| v == 0.0));
    assert!(vals(model.vis_norm.bias.val()).iter().all(|&v| v == 0.0));
    let d = &model.vl_decoder;
    assert!(vals(d.high_res_norm.weight.val()).iter().all(|&v| v == 1.0));
    assert!(vals(d.score_prediction.bias.as_ref().unwrap().val())
        .iter()
        .all(|&v| v == 0.0));
    let std = |v: Vec<f32>| {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
    };
    for (name, w) in [
        (
            "low_res_transformer.mlp.fc1",
            to_vec(d.low_res_transformer.mlp.fc1.weight.val()).1,
        ),
        (
            "bbox_score_mask_tokens",
            to_vec(d.bbox_score_mask_tokens.weight.val()).1,
        ),
        ("vis_proj.down", to_vec(model.vis_proj.down.weight.val()).1),
    ] {
        let s = std(w);
        assert!((s - 0.02).abs() < 0.004, "{name}: std {s}");
    }
    // Zero vis_norm: every prototype is exactly 0 at the start of training.
    let merged = tensor::<2>(&read("outputs.safetensors", "vit.merged_embeds"));
    assert!(to_vec(model.prototypes(merged)).1.iter().all(|&v| v == 0.0));
}

/// `initializer_range` of config.json (top level: LLM and PaDT modules; `vision_config`: the
/// ViT) sets the std of the random init, as transformers' `_init_weights` does.
#[test]
fn initializer_range_of_the_config_sets_the_init_std() {
    use padt_model::padt::PadtConfig;
    let mut config = PadtConfig::from_file(golden_dir().join("checkpoint/config.json")).unwrap();
    assert_eq!(config.qwen.initializer_range, 0.02);
    config.qwen.initializer_range = 0.1;
    config.qwen.vision_config.initializer_range = 0.05;
    let model = PadtModel::<B>::new(&config, &Default::default());
    let std = |v: Vec<f32>| {
        let n = v.len() as f64;
        (v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / n).sqrt()
    };
    let d = &model.vl_decoder;
    let llm = &model.qwen.model;
    let vit = &model.qwen.visual;
    for (name, w, want) in [
        ("embed_tokens", to_vec(llm.embed_tokens.weight.val()).1, 0.1),
        (
            "layers.0.mlp.up_proj",
            to_vec(llm.layers[0].mlp.up_proj.weight.val()).1,
            0.1,
        ),
        (
            "vl_decoder.bbox_prediction.fc1",
            to_vec(d.bbox_prediction.fc1.weight.val()).1,
            0.1,
        ),
        ("vis_proj.up", to_vec(model.vis_proj.up.weight.val()).1, 0.1),
        (
            "visual.blocks.0.attn.qkv",
            to_vec(vit.blocks[0].attn.qkv.weight.val()).1,
            0.05,
        ),
        (
            "visual.patch_embed",
            to_vec(vit.patch_embed.proj.weight.val().flatten::<1>(0, 4)).1,
            0.05,
        ),
    ] {
        let s = std(w);
        assert!(
            (s / want - 1.0).abs() < 0.15,
            "{name}: std {s}, want {want}"
        );
    }
}

#[test]
fn a_decoder_that_does_not_fit_the_vision_tower_is_a_config_error() {
    use padt_model::padt::PadtConfig;
    let text = std::fs::read_to_string(golden_dir().join("checkpoint/config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    let dir = std::env::temp_dir().join(format!("padt-config-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.json");

    // The unchanged padt-tiny config is fine.
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    PadtConfig::from_file(&path).expect("padt-tiny config fits");

    // A decoder head dim other than the ViT's (64 / 4 = 16 there) cannot reuse its rotary PE.
    config["vl_decoder"]["num_heads"] = 8.into();
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    let message = PadtConfig::from_file(&path).unwrap_err().to_string();
    assert!(
        message.contains("head") && message.contains("vl_decoder"),
        "{message}"
    );

    // A Qwen config without `vl_decoder` gets a decoder sized from its vision tower.
    let qwen = padt_model::Qwen2_5VlConfig::from_json_str(&text, &path).unwrap();
    let padt = PadtConfig::from_qwen(qwen);
    assert_eq!(padt.decoder.hidden_size, 64);
    assert_eq!(padt.decoder.head_dim(), 16);
    assert_eq!(padt.decoder.llm_hidden_state, 96);
    let real = PadtConfig::from_qwen(padt_model::Qwen2_5VlConfig::qwen2_5_vl_3b());
    assert_eq!(
        (
            real.decoder.hidden_size,
            real.decoder.num_heads,
            real.decoder.intermediate_size
        ),
        (1280, 16, 3420)
    );
    std::fs::remove_dir_all(&dir).ok();
}
