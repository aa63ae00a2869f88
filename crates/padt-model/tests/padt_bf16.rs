//! The bf16 compute path of the whole PaDT training forward (ARCHITECTURE decision 6: f32
//! parameters, bf16 activations, f32 norms/softmax/logits/losses) on the padt-tiny golden batch:
//! it runs, stays finite, stays close to the f32 path, and its backward gives finite gradients.
//!
//! Regression test for the 2026-11-26 H200 run (bench/gpu/2026-11-26-h200.md): the classifier
//! concatenated f32 head rows with bf16 prototypes and the decoder added f32 learned rows to bf16
//! features; Flex refuses mixed-dtype `cat`, CUDA gave NaN decoder losses.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{backend::Backend, DType, Tensor};
use common::*;
use padt_model::padt::{PadtModel, PadtTrainOutput};
use padt_model::weights::LoadOptions;

type AD = Autodiff<Flex>;

/// bf16 keeps 8 significant bits: outputs within a few percent of the tensor's largest value.
const BF16_REL: f32 = 5e-2;

fn load<Bk: Backend>(dtype: DType) -> PadtModel<Bk> {
    let (mut model, _) = PadtModel::<Bk>::from_pretrained(
        golden_dir().join("checkpoint"),
        &LoadOptions::default(),
        &Default::default(),
    )
    .expect("padt-tiny loads");
    model.qwen.compute_dtype = dtype;
    model
}

fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.cast(DType::F32).into_data().to_vec::<f32>().unwrap()
}

/// `max |a − b| ≤ rel · max |b|` over the entries finite in `b`; `a` must be finite there too.
fn assert_close(name: &str, a: &[f32], b: &[f32], rel: f32) {
    assert_eq!(a.len(), b.len(), "{name}: lengths");
    let scale = b
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f32, |m, v| m.max(v.abs()));
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(b) {
        if y.is_finite() {
            assert!(
                x.is_finite(),
                "{name}: non-finite bf16 value where f32 gives {y}"
            );
            worst = worst.max((x - y).abs());
        } else {
            assert_eq!(x.is_finite(), y.is_finite(), "{name}: mask pattern differs");
        }
    }
    assert!(
        worst <= rel * scale.max(1e-6),
        "{name}: max abs diff {worst} > {rel} x {scale}"
    );
}

fn compare(warmup: bool) {
    let full: PadtTrainOutput<Flex> = load::<Flex>(DType::F32)
        .forward_train(&padt_train_input(warmup), eos())
        .unwrap();
    let half: PadtTrainOutput<Flex> = load::<Flex>(DType::BF16)
        .forward_train(&padt_train_input(warmup), eos())
        .unwrap();
    assert_eq!(half.logits.dtype(), DType::F32, "logits stay f32");
    assert_eq!(
        half.decoder.pred_boxes.dtype(),
        DType::F32,
        "decoder outputs for the losses are f32"
    );
    assert_close(
        "logits",
        &values(half.logits),
        &values(full.logits),
        BF16_REL,
    );
    assert_close(
        "pred_boxes",
        &values(half.decoder.pred_boxes),
        &values(full.decoder.pred_boxes),
        BF16_REL,
    );
    assert_close(
        "pred_score",
        &values(half.decoder.pred_score),
        &values(full.decoder.pred_score),
        BF16_REL,
    );
    assert_close(
        "pred_mask",
        &values(half.decoder.pred_mask.unwrap()),
        &values(full.decoder.pred_mask.unwrap()),
        BF16_REL,
    );
}

#[test]
fn bf16_forward_is_finite_and_close_to_f32_warmup_off() {
    compare(false);
}

#[test]
fn bf16_forward_is_finite_and_close_to_f32_warmup_on() {
    compare(true);
}

#[test]
fn bf16_backward_gives_finite_gradients_everywhere() {
    let model = load::<AD>(DType::BF16);
    let out = model
        .forward_train(&padt_train_input(false), eos())
        .unwrap();
    let logits = out.logits;
    let finite = logits.clone().is_finite();
    let loss = logits.mask_fill(finite.bool_not(), 0.0).sum()
        + out.decoder.pred_boxes.sum()
        + out.decoder.pred_score.sum()
        + out.decoder.pred_mask.unwrap().sum();
    let grads = loss.backward();
    let mut check = FiniteGrads {
        grads: &grads,
        path: Vec::new(),
        checked: 0,
    };
    model.visit(&mut check);
    assert!(
        check.checked > 50,
        "only {} parameters had gradients",
        check.checked
    );
}

/// Asserts every parameter gradient that exists is finite.
struct FiniteGrads<'a> {
    grads: &'a <AD as AutodiffBackend>::Gradients,
    path: Vec<String>,
    checked: usize,
}

impl ModuleVisitor<AD> for FiniteGrads<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
        if let Some(grad) = param.val().grad(self.grads) {
            let g = values(grad);
            assert!(
                g.iter().all(|v| v.is_finite()),
                "{}: non-finite gradient",
                self.path.join(".")
            );
            self.checked += 1;
        }
    }
}
