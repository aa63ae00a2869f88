//! Backward pass on `Autodiff<Flex>`: a next-token loss over the padt-tiny batch (text targets
//! only, vision + LLM in the graph) gives finite, non-zero gradients to ViT and LLM
//! parameters, and directional derivatives agree with central finite differences.
//!
//! (The golden `grads.safetensors` are gradients of the full PaDT loss, which also runs through
//! the PaDT prototypes and decoder; they cannot be reproduced with the Qwen part alone.)

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::Param;
use burn::tensor::activation::log_softmax;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use common::*;
use padt_model::qwen2_5_vl::model::Qwen2_5VlInput;
use padt_model::Qwen2_5Vl;

type AD = Autodiff<Flex>;

struct Batch {
    input: Qwen2_5VlInput<Flex>,
    at: Vec<(usize, usize)>,
    targets: Vec<i64>,
}

/// The golden batch with VRT ids (>= V, PaDT's business) replaced by `<|endoftext|>`; the
/// loss targets are the supervised completion tokens.
fn batch() -> Batch {
    let b = "batch.safetensors";
    let ids = read(b, "input_ids");
    let len = ids.shape[1];
    let input_ids: Vec<Vec<i64>> = ids
        .i64
        .chunks(len)
        .map(|r| r.iter().map(|&i| if i >= 1024 { 480 } else { i }).collect())
        .collect();
    let attention_mask: Vec<Vec<bool>> = read(b, "attention_mask")
        .i64
        .chunks(len)
        .map(|r| r.iter().map(|&m| m == 1).collect())
        .collect();
    let grids = read(b, "image_grid_thw")
        .i64
        .chunks(3)
        .map(|g| [g[0] as usize, g[1] as usize, g[2] as usize])
        .collect();
    let p = read(b, "prompt_length").i64[0] as usize;
    let (mut at, mut targets) = (Vec::new(), Vec::new());
    for (s, row) in input_ids.iter().enumerate() {
        for pos in p..len {
            if attention_mask[s][pos] {
                at.push((s, pos - 1));
                targets.push(row[pos]);
            }
        }
    }
    Batch {
        input: Qwen2_5VlInput {
            input_ids,
            attention_mask,
            pixel_values: Some(tensor::<2>(&read(b, "pixel_values"))),
            image_grid_thw: grids,
        },
        at,
        targets,
    }
}

/// Mean next-token cross-entropy.
fn loss<Bk: Backend>(model: &Qwen2_5Vl<Bk>, batch: &Batch) -> Tensor<Bk, 1> {
    let device = Default::default();
    let pixels = batch.input.pixel_values.clone().unwrap();
    let input = Qwen2_5VlInput::<Bk> {
        input_ids: batch.input.input_ids.clone(),
        attention_mask: batch.input.attention_mask.clone(),
        pixel_values: Some(Tensor::from_data(pixels.into_data(), &device)),
        image_grid_thw: batch.input.image_grid_thw.clone(),
    };
    let out = model
        .forward(&input, &batch.at, None, false, &device)
        .unwrap();
    let logp = log_softmax(out.logits.unwrap(), 1);
    let n = batch.targets.len();
    let targets =
        Tensor::<Bk, 2, Int>::from_data(TensorData::new(batch.targets.clone(), [n, 1]), &device);
    logp.gather(1, targets).mean().neg()
}

fn scalar<Bk: Backend>(t: Tensor<Bk, 1>) -> f64 {
    t.into_data().convert::<f64>().to_vec::<f64>().unwrap()[0]
}

/// `L(θ + εu) - L(θ - εu)) / 2ε` for the unit direction `u` along one parameter's gradient.
fn finite_difference(
    batch: &Batch,
    grad: &Tensor<Flex, 1>,
    perturb: impl Fn(&mut Qwen2_5Vl<Flex>, Tensor<Flex, 1>),
    eps: f64,
) -> (f64, f64) {
    let norm = scalar(grad.clone().square().sum()).sqrt();
    let unit = grad.clone() / norm;
    let eval = |sign: f64| {
        let mut model = load_flex();
        perturb(&mut model, unit.clone() * (sign * eps));
        scalar(loss(&model, batch))
    };
    ((eval(1.0) - eval(-1.0)) / (2.0 * eps), norm)
}

fn load_flex() -> Qwen2_5Vl<Flex> {
    Qwen2_5Vl::<Flex>::from_pretrained(
        golden_dir().join("checkpoint"),
        &padt_options(),
        &Default::default(),
    )
    .unwrap()
    .0
}

fn add<const D: usize>(param: &mut Param<Tensor<Flex, D>>, delta: Tensor<Flex, 1>) {
    let value = param.val();
    let shape = value.shape();
    *param = Param::initialized(param.id, value + delta.reshape(shape));
}

#[test]
fn gradients_reach_vision_and_language_parameters_and_match_finite_differences() {
    let device = Default::default();
    let (model, _) =
        Qwen2_5Vl::<AD>::from_pretrained(golden_dir().join("checkpoint"), &padt_options(), &device)
            .unwrap();
    let batch = batch();
    let value = loss(&model, &batch);
    let grads = value.backward();

    let flat = |t: Option<Tensor<Flex, 2>>| t.map(|t| t.reshape([-1]));
    let checks: Vec<(&str, Option<Tensor<Flex, 1>>)> = vec![
        (
            "visual.patch_embed.proj.weight",
            model
                .visual
                .patch_embed
                .proj
                .weight
                .val()
                .grad(&grads)
                .map(|t| t.reshape([-1])),
        ),
        (
            "visual.blocks.0.attn.qkv.bias",
            model.visual.blocks[0]
                .attn
                .qkv
                .bias
                .as_ref()
                .unwrap()
                .val()
                .grad(&grads),
        ),
        (
            "visual.merger.mlp.0.weight",
            flat(model.visual.merger.mlp.fc1.weight.val().grad(&grads)),
        ),
        (
            "model.embed_tokens.weight",
            flat(model.model.embed_tokens.weight.val().grad(&grads)),
        ),
        (
            "model.layers.0.self_attn.k_proj.weight",
            flat(
                model.model.layers[0]
                    .self_attn
                    .k_proj
                    .weight
                    .val()
                    .grad(&grads),
            ),
        ),
        (
            "model.norm.weight",
            model.model.norm.weight.val().grad(&grads),
        ),
    ];
    for (name, grad) in &checks {
        let grad = grad
            .clone()
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let (_, values) = to_vec(grad);
        assert!(
            values.iter().all(|v| v.is_finite()),
            "{name}: non-finite gradient"
        );
        assert!(values.iter().any(|&v| v != 0.0), "{name}: zero gradient");
    }

    let eps = 1e-2;
    let g_norm = checks[5].1.clone().unwrap();
    let (fd, analytic) = finite_difference(
        &batch,
        &g_norm,
        |m, d| add(&mut m.model.norm.weight, d),
        eps,
    );
    eprintln!("model.norm.weight: finite difference {fd:.6}, autodiff {analytic:.6}");
    assert!(
        (fd - analytic).abs() <= 1e-2 * analytic,
        "{fd} vs {analytic}"
    );

    let g_qkv = checks[1].1.clone().unwrap();
    let (fd, analytic) = finite_difference(
        &batch,
        &g_qkv,
        |m, d| add(m.visual.blocks[0].attn.qkv.bias.as_mut().unwrap(), d),
        eps,
    );
    eprintln!("visual.blocks.0.attn.qkv.bias: finite difference {fd:.6}, autodiff {analytic:.6}");
    assert!(
        (fd - analytic).abs() <= 1e-2 * analytic,
        "{fd} vs {analytic}"
    );
}

/// Mixed precision on Flex: bf16 activations with f32 parameters stay close to the f32
/// golden, and the parameter gradients come back in f32.
#[test]
fn bf16_compute_keeps_f32_parameters_and_gradients() {
    use burn::tensor::DType;
    let device = Default::default();
    let (model, _) =
        Qwen2_5Vl::<AD>::from_pretrained(golden_dir().join("checkpoint"), &padt_options(), &device)
            .unwrap();
    let model = model.with_compute_dtype(DType::BF16);
    let batch = batch();
    let pixels = batch.input.pixel_values.clone().unwrap();
    let vision = model
        .visual
        .forward(
            Tensor::<AD, 2>::from_data(pixels.into_data(), &device).cast(DType::BF16),
            &batch.input.image_grid_thw,
            false,
        )
        .unwrap();
    assert_eq!(vision.merged_embeds.dtype(), DType::BF16);
    let merged = vision
        .merged_embeds
        .cast(DType::F32)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let golden = read("outputs.safetensors", "vit.merged_embeds").f32;
    let scale = golden.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = merged
        .iter()
        .zip(&golden)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "bf16 merged_embeds: max abs diff {worst:.3e} (rel {:.3e})",
        worst / scale
    );
    assert!(
        worst <= 5e-2 * scale,
        "bf16 ViT drifted: {worst} vs scale {scale}"
    );

    let value = loss(&model, &batch);
    let f32_value = scalar(loss(&load_flex(), &batch));
    let bf16_value = scalar(value.clone());
    eprintln!("loss f32 {f32_value:.5}, bf16 compute {bf16_value:.5}");
    assert!((bf16_value - f32_value).abs() <= 2e-2 * f32_value.abs());
    let grads = value.backward();
    let grad = model.model.layers[0]
        .self_attn
        .q_proj
        .weight
        .val()
        .grad(&grads)
        .unwrap();
    assert_eq!(grad.dtype(), DType::F32);
    let (_, values) = to_vec(grad);
    assert!(values.iter().all(|v| v.is_finite()) && values.iter().any(|&v| v != 0.0));
    assert_eq!(model.model.norm.weight.val().dtype(), DType::F32);
}
