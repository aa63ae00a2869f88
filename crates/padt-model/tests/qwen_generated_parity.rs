//! Parity of the whole Qwen2.5-VL (vision tower, M-RoPE, language model, output head, loss and
//! backward pass) with transformers 4.50 on tiny random models written by
//! `tools/gen_qwen_golden.py` (fp32, eager attention), one with a tied and one with an untied
//! output head.
//!
//! The golden parent directory comes from `PADT_QWEN_GOLDEN_DIR` (holding `qwen-tiny-tied/`
//! and `qwen-tiny-untied/`), default `tests/fixtures`. Tolerances (relative to the max |value|
//! of each golden tensor over the compared rows): forward tensors and the loss 1e-4, every
//! parameter gradient 1e-3; position ids, `rope_deltas` and the window index exactly.
//! Padded positions (left padding) are skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use padt_model::qwen2_5_vl::model::Qwen2_5VlInput;
use padt_model::qwen2_5_vl::rope::GridThw;
use padt_model::weights::{apply_renames, Checkpoint, LoadOptions, KEY_EXCEPTIONS};
use padt_model::Qwen2_5Vl;

type AD = Autodiff<Flex>;

const FORWARD_REL: f32 = 1e-4;
const GRAD_REL: f32 = 1e-3;

/// `PADT_QWEN_GOLDEN_DIR`/`qwen-tiny-{variant}`, default the fixtures copy.
fn golden_dir(variant: &str) -> PathBuf {
    std::env::var_os("PADT_QWEN_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures"))
        .join(format!("qwen-tiny-{variant}"))
}

/// One tensor of `golden.safetensors`: f32 values, or i64 values for integer tensors.
struct Golden {
    shape: Vec<usize>,
    f32: Vec<f32>,
    i64: Vec<i64>,
}

fn read(ckpt: &Checkpoint, key: &str) -> Golden {
    let (dtype, shape, bytes) = ckpt
        .raw(key)
        .unwrap_or_else(|| panic!("golden.safetensors: no `{key}`"));
    let shape = shape.to_vec();
    if dtype == safetensors::Dtype::I64 {
        let i64 = bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Golden {
            shape,
            f32: vec![],
            i64,
        }
    } else {
        Golden {
            shape,
            f32: ckpt.read_f32(key).unwrap(),
            i64: vec![],
        }
    }
}

fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> (Vec<usize>, Vec<f32>) {
    let data = t.into_data().convert::<f32>();
    (data.shape.to_vec(), data.to_vec::<f32>().unwrap())
}

/// Asserts `max |got - want| <= rel * max |want|` over the rows (`row_len` values each) for
/// which `keep(row)` holds; the scale is taken over the same rows.
fn assert_rel(
    name: &str,
    got: &[f32],
    want: &[f32],
    row_len: usize,
    keep: impl Fn(usize) -> bool,
    rel: f32,
) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let (mut scale, mut worst, mut at) = (0f32, 0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if !keep(i / row_len) {
            continue;
        }
        assert!(g.is_finite(), "{name}: non-finite value {g} at {i}");
        scale = scale.max(w.abs());
        let d = (g - w).abs();
        if d > worst {
            worst = d;
            at = i;
        }
    }
    let scale = scale.max(1e-12);
    eprintln!(
        "{name}: max abs diff {worst:.3e} (rel {:.3e}, scale {scale:.3e})",
        worst / scale
    );
    assert!(
        worst <= rel * scale,
        "{name}: max abs diff {worst} at {at} ({} vs {}) exceeds {rel} x {scale}",
        got[at],
        want[at]
    );
}

/// Gradient of every float parameter, under its checkpoint key.
struct GradCollector<'a> {
    grads: &'a <AD as AutodiffBackend>::Gradients,
    path: Vec<String>,
    found: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    without_grad: Vec<String>,
}

impl ModuleVisitor<AD> for GradCollector<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
        let key = apply_renames(&self.path.join("."), KEY_EXCEPTIONS.iter().copied());
        match param.val().grad(self.grads) {
            Some(grad) => {
                self.found.insert(key, values(grad));
            }
            None => self.without_grad.push(key),
        }
    }
}

fn check_variant(variant: &str) {
    let dir = golden_dir(variant);
    let device = Default::default();
    let golden = Checkpoint::open(dir.join("golden.safetensors")).expect("golden file opens");
    let g = |key: &str| read(&golden, key);

    let (model, report) = Qwen2_5Vl::<AD>::from_pretrained(&dir, &LoadOptions::default(), &device)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert!(report.missing.is_empty() && report.unused.is_empty());
    assert_eq!(model.config.tie_word_embeddings, variant == "tied");
    assert_eq!(model.lm_head.is_none(), variant == "tied");

    // Inputs.
    let ids = g("input_ids");
    let (batch, len) = (ids.shape[0], ids.shape[1]);
    let input_ids: Vec<Vec<i64>> = ids.i64.chunks(len).map(<[i64]>::to_vec).collect();
    let attention_mask: Vec<Vec<bool>> = g("attention_mask")
        .i64
        .chunks(len)
        .map(|r| r.iter().map(|&m| m == 1).collect())
        .collect();
    assert!(
        !attention_mask[0][0] && attention_mask[1][0],
        "the batch is left padded"
    );
    let grids: Vec<GridThw> = g("image_grid_thw")
        .i64
        .chunks(3)
        .map(|t| [t[0] as usize, t[1] as usize, t[2] as usize])
        .collect();
    let pixels = g("pixel_values");
    let input = Qwen2_5VlInput::<AD> {
        input_ids: input_ids.clone(),
        attention_mask: attention_mask.clone(),
        pixel_values: Some(Tensor::from_data(
            TensorData::new(pixels.f32.clone(), pixels.shape.clone()),
            &device,
        )),
        image_grid_thw: grids,
    };

    // Forward with logits at every position.
    let every: Vec<(usize, usize)> = (0..batch)
        .flat_map(|b| (0..len).map(move |l| (b, l)))
        .collect();
    let out = model.forward(&input, &every, None, true, &device).unwrap();
    let keep = |row: usize| attention_mask[row / len][row % len];

    let vision = out.vision.as_ref().expect("vision output");
    let window_index: Vec<usize> = g("vision.window_index")
        .i64
        .iter()
        .map(|&i| i as usize)
        .collect();
    assert_eq!(vision.layout.window_index, window_index, "window index");
    for (name, tensor) in [
        ("vision.last_block", vision.high_res.clone()),
        ("vision.merged_embeds", vision.merged_embeds.clone()),
    ] {
        let want = g(name);
        let (shape, got) = values(tensor);
        assert_eq!(shape, want.shape, "{name}: shape");
        assert_rel(name, &got, &want.f32, 1, |_| true, FORWARD_REL);
    }

    let position_ids: Vec<i64> = out
        .positions
        .position_ids
        .iter()
        .flatten()
        .flatten()
        .copied()
        .collect();
    assert_eq!(position_ids, g("position_ids").i64, "position_ids");
    assert_eq!(
        out.positions.rope_deltas,
        g("rope_deltas").i64,
        "rope_deltas"
    );

    let hidden = g("hidden_states");
    let hidden_size = model.config.hidden_size;
    assert_eq!(out.text.hidden_states.len(), hidden.shape[0]);
    let per_layer = batch * len * hidden_size;
    for (i, h) in out.text.hidden_states.iter().enumerate() {
        let (_, got) = values(h.clone());
        assert_rel(
            &format!("hidden_states[{i}]"),
            &got,
            &hidden.f32[i * per_layer..(i + 1) * per_layer],
            hidden_size,
            keep,
            FORWARD_REL,
        );
    }

    let logits = out.logits.expect("logits");
    let vocab = model.config.vocab_size;
    let want_logits = g("logits");
    assert_eq!(want_logits.shape, vec![batch, len, vocab]);
    let (_, got) = values(logits.clone());
    assert_rel("logits", &got, &want_logits.f32, vocab, keep, FORWARD_REL);

    // Loss: mean cross entropy of the last K next-token predictions of each sample.
    let k = g("loss_k").i64[0] as usize;
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    for (b, row) in input_ids.iter().enumerate() {
        // The prediction at `pos - 1` is scored against the token at `pos`.
        for (pos, &target) in row.iter().enumerate().skip(len - k) {
            rows.push((b * len + pos - 1) as i64);
            targets.push(target);
        }
    }
    let n = rows.len();
    let rows = Tensor::<AD, 1, Int>::from_data(TensorData::new(rows, [n]), &device);
    let targets = Tensor::<AD, 2, Int>::from_data(TensorData::new(targets, [n, 1]), &device);
    let loss = log_softmax(logits.select(0, rows), 1)
        .gather(1, targets)
        .mean()
        .neg();
    let (_, got) = values(loss.clone());
    assert_rel("loss", &got, &g("loss").f32, 1, |_| true, FORWARD_REL);

    // Backward: every parameter's gradient.
    let grads = loss.backward();
    let mut collector = GradCollector {
        grads: &grads,
        path: Vec::new(),
        found: BTreeMap::new(),
        without_grad: Vec::new(),
    };
    model.visit(&mut collector);
    assert!(
        collector.without_grad.is_empty(),
        "parameters without gradient: {:?}",
        collector.without_grad
    );
    let golden_keys: Vec<String> = golden
        .keys()
        .filter_map(|k| k.strip_prefix("grad.").map(str::to_string))
        .collect();
    let ours: Vec<String> = collector.found.keys().cloned().collect();
    assert_eq!(ours, golden_keys, "parameter names (sorted)");
    for (key, (shape, got)) in &collector.found {
        let want = g(&format!("grad.{key}"));
        assert_eq!(shape, &want.shape, "grad.{key}: shape");
        assert!(
            want.f32.iter().any(|&v| v != 0.0),
            "grad.{key}: golden gradient is all zero"
        );
        assert_rel(
            &format!("grad.{key}"),
            got,
            &want.f32,
            1,
            |_| true,
            GRAD_REL,
        );
    }
    eprintln!("{variant}: {} parameter gradients match", ours.len());
}

/// Golden directory layout check, so a missing fixture is a clear failure.
fn assert_fixture(variant: &str) {
    let dir = golden_dir(variant);
    for file in ["config.json", "model.safetensors", "golden.safetensors"] {
        assert!(
            Path::new(&dir.join(file)).is_file(),
            "{}: missing {file} (run tools/gen_qwen_golden.py)",
            dir.display()
        );
    }
}

#[test]
fn tied_head_matches_transformers_forward_loss_and_gradients() {
    assert_fixture("tied");
    check_variant("tied");
}

#[test]
fn untied_head_matches_transformers_forward_loss_and_gradients() {
    assert_fixture("untied");
    check_variant("untied");
}
