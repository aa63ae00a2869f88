//! Shared helpers of the padt-model tests: golden directory, safetensors reading, comparisons.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::backend::Flex;
use burn::tensor::Tensor;
use padt_model::weights::{Checkpoint, LoadOptions};
use padt_model::Qwen2_5Vl;

pub type B = Flex;

/// The padt-tiny golden directory (`PADT_TINY_GOLDEN_DIR`, default the fixtures copy).
pub fn golden_dir() -> PathBuf {
    std::env::var_os("PADT_TINY_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/padt-tiny")
        })
}

/// Checkpoint prefixes of the PaDT heads (not part of Qwen2.5-VL).
pub fn padt_options() -> LoadOptions {
    LoadOptions {
        extra_prefixes: vec!["vis_norm".into(), "vis_proj".into(), "vl_decoder".into()],
        ..Default::default()
    }
}

pub fn load_tiny() -> Qwen2_5Vl<B> {
    let device = Default::default();
    let (model, report) =
        Qwen2_5Vl::<B>::from_pretrained(golden_dir().join("checkpoint"), &padt_options(), &device)
            .expect("padt-tiny checkpoint loads");
    assert!(report.missing.is_empty() && report.unused.is_empty());
    assert!(!report.extra.is_empty(), "PaDT keys are reported as extra");
    model
}

/// A tensor of a golden safetensors file.
pub struct Golden {
    pub shape: Vec<usize>,
    pub f32: Vec<f32>,
    pub i64: Vec<i64>,
}

pub fn read(file: &str, key: &str) -> Golden {
    let ckpt = Checkpoint::open(golden_dir().join(file)).expect("golden file opens");
    let (dtype, shape, bytes) = ckpt
        .raw(key)
        .unwrap_or_else(|| panic!("{file}: no `{key}`"));
    let shape = shape.to_vec();
    match dtype {
        safetensors::Dtype::I64 => Golden {
            shape,
            f32: vec![],
            i64: bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        },
        safetensors::Dtype::U8 => Golden {
            shape,
            f32: vec![],
            i64: bytes.iter().map(|&b| b as i64).collect(),
        },
        _ => Golden {
            shape,
            f32: ckpt.read_f32(key).unwrap(),
            i64: vec![],
        },
    }
}

pub fn to_vec<const D: usize>(t: Tensor<B, D>) -> (Vec<usize>, Vec<f32>) {
    let data = t.into_data().convert::<f32>();
    (data.shape.to_vec(), data.to_vec::<f32>().unwrap())
}

pub fn tensor<const D: usize>(g: &Golden) -> Tensor<B, D> {
    let device = Default::default();
    Tensor::<B, D>::from_data(
        burn::tensor::TensorData::new(g.f32.clone(), g.shape.clone()),
        &device,
    )
}

/// Asserts `max |a - b| <= rel * max |b|` (plus a tiny absolute floor), over the rows of the
/// leading dims for which `keep(row)` is true (`row_len` values per row).
pub fn assert_close_rows(
    name: &str,
    got: &[f32],
    want: &[f32],
    row_len: usize,
    keep: impl Fn(usize) -> bool,
    rel: f32,
) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let mut worst = 0f32;
    let mut at = 0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if !keep(i / row_len) {
            continue;
        }
        let d = (g - w).abs();
        assert!(
            d.is_finite() || (g == w),
            "{name}: non-finite at {i}: {g} vs {w}"
        );
        if d > worst {
            worst = d;
            at = i;
        }
    }
    eprintln!(
        "{name}: max abs diff {worst:.3e} (rel {:.3e}) at {at}",
        worst / scale
    );
    assert!(
        worst <= rel * scale,
        "{name}: max abs diff {worst} at {at} ({} vs {}) exceeds {rel} x {scale}",
        got[at],
        want[at]
    );
}

pub fn assert_close(name: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_close_rows(name, got, want, 1, |_| true, rel);
}

/// `eos_token_id` of the padt-tiny checkpoint's `config.json` (`<|im_end|>`).
pub fn eos() -> i64 {
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden_dir().join("checkpoint/config.json")).unwrap(),
    )
    .unwrap();
    config["eos_token_id"].as_i64().unwrap()
}

/// The padt-tiny golden batch as a PaDT training input on any backend.
pub fn padt_train_input<Bk: burn::tensor::backend::Backend>(
    warmup: bool,
) -> padt_model::padt::PadtTrainInput<Bk> {
    let b = "batch.safetensors";
    let rows =
        |g: Golden| -> Vec<Vec<i64>> { g.i64.chunks(g.shape[1]).map(<[i64]>::to_vec).collect() };
    let pixels = read(b, "pixel_values");
    padt_model::padt::PadtTrainInput {
        input_ids: rows(read(b, "input_ids")),
        attention_mask: rows(read(b, "attention_mask"))
            .into_iter()
            .map(|r| r.into_iter().map(|m| m != 0).collect())
            .collect(),
        prompt_len: read(b, "prompt_length").i64[0] as usize,
        pixel_values: Tensor::from_data(
            burn::tensor::TensorData::new(pixels.f32, pixels.shape),
            &Default::default(),
        ),
        image_grid_thw: read(b, "image_grid_thw")
            .i64
            .chunks(3)
            .map(|g| [g[0] as usize, g[1] as usize, g[2] as usize])
            .collect(),
        warmup,
    }
}
