//! Parity of the PaDT decoder (`vl_decoder`) with the padt-tiny goldens (PyTorch PaDT, fp32),
//! fed with the golden decoder inputs (VRT features, prototypes, high-res ViT features and PE).
//! Tolerance from the golden README: forward tensors rel 1e-5 of the tensor's max |value|.
//! Also: the real-size parameter counts (98,013,353 for 3B, 99,980,969 for 7B), the dummy
//! object path and input validation.

mod common;

use burn::module::Module;
use common::*;
use padt_model::decoder::{
    decoder_config_from_model_config, DecoderInput, PadtDecoder, PadtDecoderConfig,
    DECODER_KEY_RENAMES,
};
use padt_model::qwen2_5_vl::model::count_params_lazy;
use padt_model::weights::{load_module, Checkpoint, LoadOptions};

const REL: f32 = 1e-5;

#[derive(Module, Debug)]
struct Root<B: burn::tensor::backend::Backend> {
    vl_decoder: PadtDecoder<B>,
}

fn tiny_config() -> PadtDecoderConfig {
    let path = golden_dir().join("checkpoint/config.json");
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    decoder_config_from_model_config(&value, &path).unwrap()
}

fn load_decoder() -> PadtDecoder<B> {
    let device = Default::default();
    let checkpoint = Checkpoint::open(golden_dir().join("checkpoint")).unwrap();
    let options = LoadOptions {
        extra_prefixes: vec![
            "model".into(),
            "visual".into(),
            "vis_norm".into(),
            "vis_proj".into(),
            "lm_head".into(),
        ],
        renames: DECODER_KEY_RENAMES
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        ..Default::default()
    };
    let root = Root {
        vl_decoder: tiny_config().init::<B>(&device),
    };
    let (root, report) = load_module(root, &checkpoint, &options, &device).expect("decoder loads");
    assert!(report.missing.is_empty(), "missing: {:?}", report.missing);
    assert!(report.loaded.iter().all(|k| k.starts_with("vl_decoder.")));
    root.vl_decoder
}

fn golden_input(prefix: &str) -> DecoderInput<B> {
    let o = "outputs.safetensors";
    let grids = read("batch.safetensors", "image_grid_thw")
        .i64
        .chunks(3)
        .map(|g| [g[0] as usize, g[1] as usize, g[2] as usize])
        .collect();
    DecoderInput {
        object_feats: tensor::<2>(&read(o, &format!("{prefix}.dec.feats"))),
        feats_len: read(o, &format!("{prefix}.dec.feats_len"))
            .i64
            .iter()
            .map(|&k| k as usize)
            .collect(),
        object_image: read(o, &format!("{prefix}.dec.sample_idx"))
            .i64
            .iter()
            .map(|&k| k as usize)
            .collect(),
        prototypes: tensor::<2>(&read(o, "proto.prototypes")),
        high_res: tensor::<2>(&read(o, "vit.high_res_embeds")),
        pe_cos: tensor::<2>(&read(o, "vit.visual_pe_cos")),
        pe_sin: tensor::<2>(&read(o, "vit.visual_pe_sin")),
        grids,
    }
}

fn check(name: &str, got: Vec<f32>, key: &str) {
    let want = read("outputs.safetensors", key);
    assert_close_rows(name, &got, &want.f32, 1, |_| true, REL);
}

fn decoder_matches(prefix: &str) {
    let decoder = load_decoder();
    let input = golden_input(prefix);
    let n_obj = input.feats_len.len();
    let sample_idx = input.object_image.clone();
    let out = decoder.forward(input).unwrap();
    assert_eq!(out.sample_idx, sample_idx);
    let (shape, boxes) = to_vec(out.pred_boxes);
    assert_eq!(shape, vec![n_obj, 4]);
    check(
        &format!("{prefix} pred_boxes"),
        boxes,
        &format!("{prefix}.dec.pred_boxes"),
    );
    check(
        &format!("{prefix} pred_score"),
        to_vec(out.pred_score).1,
        &format!("{prefix}.dec.pred_score"),
    );
    let (shape, mask) = to_vec(out.pred_mask.unwrap());
    assert_eq!(shape, vec![3, 32, 56]);
    check(
        &format!("{prefix} pred_mask"),
        mask,
        &format!("{prefix}.dec.pred_mask"),
    );
    let valid_h = read(
        "outputs.safetensors",
        &format!("{prefix}.dec.pred_mask_valid_h"),
    )
    .i64;
    let valid_w = read(
        "outputs.safetensors",
        &format!("{prefix}.dec.pred_mask_valid_w"),
    )
    .i64;
    let want: Vec<(usize, usize)> = valid_h
        .iter()
        .zip(&valid_w)
        .map(|(&h, &w)| (h as usize, w as usize))
        .collect();
    assert_eq!(out.mask_valid_hw, want);
}

#[test]
fn decoder_matches_golden_warmup_off() {
    decoder_matches("off");
}

#[test]
fn decoder_matches_golden_warmup_on() {
    decoder_matches("on");
}

#[test]
fn decoder_parameter_counts_match_reference() {
    let device = Default::default();
    let count = |llm: usize| {
        count_params_lazy::<B, _>(&PadtDecoderConfig::reference(llm).init::<B>(&device))
    };
    assert_eq!(count(2048), 98_013_353, "3B decoder");
    assert_eq!(count(3584), 99_980_969, "7B decoder");
}

#[test]
fn dummy_object_runs_and_gives_finite_outputs() {
    let decoder = load_decoder();
    let llm_hidden = tiny_config().llm_hidden_state;
    let out = decoder.forward_dummy(llm_hidden, &Default::default());
    let (shape, boxes) = to_vec(out.pred_boxes);
    assert_eq!(shape, vec![1, 4]);
    assert!(boxes.iter().all(|v| v.is_finite()));
    let (shape, mask) = to_vec(out.pred_mask.unwrap());
    assert_eq!(shape, vec![1, 8, 8]);
    assert!(mask.iter().all(|v| v.is_finite()));
}

#[test]
fn inconsistent_inputs_are_clear_errors() {
    let decoder = load_decoder();
    let mut input = golden_input("off");
    let last = input.object_image.len() - 1;
    let images = input.grids.len();
    input.object_image[last] = images + 5;
    let err = decoder.forward(input).unwrap_err().to_string();
    assert!(
        err.contains(&format!("object {last} refers to image {}", images + 5)),
        "{err}"
    );

    let mut input = golden_input("off");
    *input.feats_len.last_mut().unwrap() += 1;
    let err = decoder.forward(input).unwrap_err().to_string();
    assert!(err.contains("object_feats"), "{err}");

    let mut input = golden_input("off");
    let last_image = input.grids.len() - 1;
    input.grids[last_image] = [1, 7, 14];
    let err = decoder.forward(input).unwrap_err().to_string();
    assert!(err.contains(&format!("image {last_image}")), "{err}");
}

#[test]
fn mask_branch_can_be_switched_off() {
    let device = Default::default();
    let mut config = tiny_config();
    config.use_mask_loss = false;
    let decoder = config.init::<B>(&device);
    let input = golden_input("off");
    let n_obj = input.feats_len.len();
    let out = decoder.forward(input).unwrap();
    assert!(out.pred_mask.is_none());
    assert_eq!(out.pred_boxes.dims(), [n_obj, 4]);
}

/// Where the block of high-res token j lands, for both placements: PaDT's raster-over-tokens
/// and the corrected grouped placement (tokens in processor order).
#[test]
fn mask_blocks_are_placed_per_token_or_per_sub_patch() {
    use burn::tensor::{Tensor, TensorData};
    use padt_model::decoder::place_mask_blocks;
    let (gh, gw) = (4usize, 6usize);
    let n = gh * gw;
    // Every value of token j's block is j.
    let values: Vec<f32> = (0..n)
        .flat_map(|j| std::iter::repeat_n(j as f32, 16))
        .collect();
    let blocks = Tensor::<B, 3>::from_data(TensorData::new(values, [n, 4, 4]), &Default::default());
    let cell = |map: &[f32], r: usize, c: usize| map[(4 * r) * (4 * gw) + 4 * c] as usize;
    let reference = to_vec(place_mask_blocks(blocks.clone(), gh, gw, None)).1;
    let grouped = to_vec(place_mask_blocks(blocks, gh, gw, Some(2))).1;
    for r in 0..gh {
        for c in 0..gw {
            assert_eq!(cell(&reference, r, c), r * gw + c);
            // Merged token (r/2, c/2) in raster order over the 3-wide merged grid, sub-patch
            // (r%2, c%2) row-major.
            let m = (r / 2) * (gw / 2) + c / 2;
            assert_eq!(cell(&grouped, r, c), 4 * m + 2 * (r % 2) + c % 2);
        }
    }
}
