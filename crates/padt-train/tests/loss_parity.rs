//! Parity of the PaDT losses with the padt-tiny goldens (PyTorch `PaDTSFTTrainer.compute_loss`,
//! fp32), fed with the golden logits, decoder outputs and mask targets. Tolerances from the
//! golden README: loss scalars abs 1e-5, forward tensors rel 1e-5 of the tensor's max |value|.
//! The golden directory is `PADT_TINY_GOLDEN_DIR` (default: the fixtures copy).

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use padt_train::loss::{
    box_losses, combine, mask_losses, token_loss, GtBoxes, LossConfig, TokenTargets,
};
use safetensors::{Dtype, SafeTensors};

type B = Flex;
const SCALAR_ABS: f64 = 1e-5;
const REL: f32 = 1e-5;

/// Embedding rows V of the golden model (`<|VRT_i|>` = V + i), from its `config.json`.
fn vocab() -> usize {
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden_dir().join("checkpoint/config.json")).unwrap(),
    )
    .unwrap();
    config["vocab_size"].as_u64().unwrap() as usize
}

fn golden_dir() -> PathBuf {
    std::env::var_os("PADT_TINY_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/padt-tiny")
        })
}

struct Golden {
    shape: Vec<usize>,
    f32: Vec<f32>,
    i64: Vec<i64>,
}

fn read(file: &str, key: &str) -> Golden {
    let bytes = std::fs::read(golden_dir().join(file)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st
        .tensor(key)
        .unwrap_or_else(|_| panic!("{file}: no {key}"));
    let data = t.data();
    let shape = t.shape().to_vec();
    match t.dtype() {
        Dtype::F32 => Golden {
            shape,
            f32: data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            i64: vec![],
        },
        Dtype::I64 => Golden {
            shape,
            f32: vec![],
            i64: data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        },
        Dtype::U8 => Golden {
            shape,
            f32: vec![],
            i64: data.iter().map(|&b| b as i64).collect(),
        },
        other => panic!("{key}: unexpected dtype {other:?}"),
    }
}

fn tensor<const D: usize>(g: &Golden) -> Tensor<B, D> {
    Tensor::from_data(
        TensorData::new(g.f32.clone(), g.shape.clone()),
        &Default::default(),
    )
}

fn values<const D: usize, BK: burn::tensor::backend::Backend>(t: Tensor<BK, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn scalar<BK: burn::tensor::backend::Backend>(t: &Tensor<BK, 1>) -> f64 {
    values(t.clone())[0] as f64
}

fn golden_scalar(key: &str) -> f64 {
    read("outputs.safetensors", key).f32[0] as f64
}

fn assert_scalar(name: &str, got: f64, key: &str) {
    let want = golden_scalar(key);
    eprintln!("{name}: {got} vs {want} (diff {:.2e})", (got - want).abs());
    assert!(
        (got - want).abs() <= SCALAR_ABS,
        "{name}: {got} vs golden {want}"
    );
}

fn assert_close(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let scale = want
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(1e-6);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if w.is_infinite() {
            assert_eq!(g, w, "{name}[{i}]");
        } else {
            assert!((g - w).abs() <= REL * scale, "{name}[{i}]: {g} vs {w}");
        }
    }
}

/// Robust-CE targets from `batch.json` (objects, picks) and `batch.safetensors` (ids, masks),
/// built as the reference builds them: one exclusion row per VRT target in row-major order,
/// each object's foreground patches minus the pick of that row, offset by the earlier images'
/// merged-token counts.
fn token_targets() -> TokenTargets {
    let batch: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("batch.json")).unwrap())
            .unwrap();
    let targets = read("batch.safetensors", "completion_ids");
    let mask = read("batch.safetensors", "completion_mask");
    let grids = read("batch.safetensors", "image_grid_thw").i64;
    let (b, len) = (targets.shape[0], targets.shape[1]);
    let mut exclusions = Vec::new();
    let mut offset = 0usize;
    for (s, sample) in batch["samples"].as_array().unwrap().iter().enumerate() {
        // (patches, pick) per VRT of the sample, in text order.
        let mut rows = Vec::new();
        for obj in sample["objects"].as_array().unwrap() {
            let patches: Vec<usize> = obj["patches"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_u64().unwrap() as usize)
                .collect();
            for pick in obj["picked"].as_array().unwrap() {
                rows.push((patches.clone(), pick.as_u64().unwrap() as usize));
            }
        }
        let vrt_positions: Vec<usize> = (0..len)
            .filter(|&t| targets.i64[s * len + t] >= vocab() as i64)
            .collect();
        assert_eq!(
            vrt_positions.len(),
            rows.len(),
            "sample {s}: VRT targets vs picks"
        );
        for (t, (patches, pick)) in vrt_positions.into_iter().zip(rows) {
            let cols = patches
                .iter()
                .filter(|&&p| p != pick)
                .map(|&p| vocab() + offset + p)
                .collect();
            exclusions.push((s * len + t, cols));
        }
        let g = &grids[s * 3..s * 3 + 3];
        offset += (g[0] * g[1] * g[2] / 4) as usize;
    }
    TokenTargets {
        batch: b,
        len,
        targets: targets.i64.clone(),
        completion_mask: mask.i64.iter().map(|&m| m != 0).collect(),
        vrt_exclusions: exclusions,
    }
}

#[test]
fn robust_token_loss_matches_golden() {
    let targets = token_targets();
    // The exclusion rows equal the golden robust-CE mask.
    let golden_mask = read("outputs.safetensors", "loss.vrt_loss_mask");
    let width = golden_mask.shape[1];
    assert_eq!(targets.vrt_exclusions.len(), golden_mask.shape[0]);
    for (r, (_, cols)) in targets.vrt_exclusions.iter().enumerate() {
        let want: Vec<usize> = (0..width)
            .filter(|&c| golden_mask.i64[r * width + c] == 1)
            .collect();
        let mut got = cols.clone();
        got.sort();
        assert_eq!(got, want, "robust-CE mask row {r}");
    }

    let logits = tensor::<3>(&read("outputs.safetensors", "loss.logits_masked"));
    let loss = token_loss(logits, &targets, vocab(), true);
    assert_close(
        "per_token_nll",
        &values(loss.per_token_nll.clone()),
        &read("outputs.safetensors", "loss.per_token_nll").f32,
    );
    assert_close(
        "sft_per_sample",
        &values(loss.per_sample.clone()),
        &read("outputs.safetensors", "loss.sft_per_sample").f32,
    );
    assert_scalar("sft", scalar(&loss.loss), "off.loss.sft");
}

#[test]
fn plain_cross_entropy_differs_when_the_vrt_mask_is_off() {
    let targets = token_targets();
    let logits = tensor::<3>(&read("outputs.safetensors", "loss.logits_masked"));
    let robust = scalar(&token_loss(logits.clone(), &targets, vocab(), true).loss);
    let plain = scalar(&token_loss(logits, &targets, vocab(), false).loss);
    // Removing competitors can only raise the target's probability.
    assert!(plain > robust + 1e-3, "plain {plain} vs robust {robust}");
}

fn gt_boxes() -> GtBoxes {
    let batch: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("batch.json")).unwrap())
            .unwrap();
    let boxes: Vec<[f64; 4]> = batch["samples"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["objects"].as_array().unwrap().clone())
        .map(|o| {
            let b = o["bbox"].as_array().unwrap();
            [0, 1, 2, 3].map(|i| b[i].as_f64().unwrap())
        })
        .collect();
    GtBoxes::from_xyxy(&boxes)
}

#[test]
fn ground_truth_boxes_are_rounded_like_the_reference() {
    let gt = gt_boxes();
    let flat = |v: &[[f32; 4]]| v.iter().flatten().copied().collect::<Vec<f32>>();
    assert_eq!(
        flat(&gt.xyxy),
        read("outputs.safetensors", "loss.gt_bboxes_bf16").f32
    );
    assert_eq!(
        flat(&gt.cxcywh),
        read("outputs.safetensors", "loss.gt_cxcywh_bf16").f32
    );
}

fn decoder_losses_match(prefix: &str) {
    let o = "outputs.safetensors";
    let boxes = box_losses(
        tensor::<2>(&read(o, &format!("{prefix}.dec.pred_boxes"))),
        tensor::<2>(&read(o, &format!("{prefix}.dec.pred_score"))),
        &gt_boxes(),
    );
    assert_close(
        "giou",
        &values(boxes.giou.clone()),
        &read(o, &format!("{prefix}.loss.giou")).f32,
    );
    assert_close(
        "iou",
        &values(boxes.iou.clone()),
        &read(o, &format!("{prefix}.loss.iou")).f32,
    );
    let bbox = scalar(&boxes.giou_term) + scalar(&boxes.l1_term);
    assert_scalar("bbox", bbox, &format!("{prefix}.loss.bbox"));
    assert_scalar(
        "score",
        scalar(&boxes.score),
        &format!("{prefix}.loss.score"),
    );

    let masks = mask_losses(
        tensor::<3>(&read(o, &format!("{prefix}.dec.pred_mask"))),
        tensor::<3>(&read(o, "loss.gt_mask")),
        tensor::<3>(&read(o, "loss.mask_valid")),
        0.25,
        2.0,
    );
    assert_scalar(
        "mask_dice",
        scalar(&masks.dice),
        &format!("{prefix}.loss.mask_dice"),
    );
    assert_scalar(
        "mask_focal",
        scalar(&masks.focal),
        &format!("{prefix}.loss.mask_focal"),
    );

    let token = token_loss(
        tensor::<3>(&read(o, "loss.logits_masked")),
        &token_targets(),
        vocab(),
        true,
    );
    let step = combine(
        &LossConfig::default(),
        &token,
        Some(&boxes),
        Some(&masks),
        1.0,
    );
    assert_scalar(
        "total",
        scalar(&step.total),
        &format!("{prefix}.loss.total"),
    );
    let metric = |name: &str| step.components.iter().find(|(n, _)| *n == name).unwrap().1;
    assert!(
        (metric("iou") - golden_scalar(&format!("{prefix}.loss.iou_mean_metric"))).abs()
            <= SCALAR_ABS
    );
    assert!(
        (metric("giou") - golden_scalar(&format!("{prefix}.loss.giou_mean_metric"))).abs()
            <= SCALAR_ABS
    );
}

#[test]
fn box_score_mask_losses_match_golden_warmup_off() {
    decoder_losses_match("off");
}

#[test]
fn box_score_mask_losses_match_golden_warmup_on() {
    decoder_losses_match("on");
}

#[test]
fn objects_without_masks_get_no_mask_supervision() {
    // Object 2 has no valid pixel: its prediction must not move the loss.
    let device = Default::default();
    let pred = |fill: f32| {
        let mut v = vec![0.3f32; 3 * 4 * 4];
        v[32..].iter_mut().for_each(|x| *x = fill);
        Tensor::<B, 3>::from_data(TensorData::new(v, [3, 4, 4]), &device)
    };
    let gt = Tensor::<B, 3>::from_data(
        TensorData::new(
            (0..48)
                .map(|i| (i % 3 == 0) as u8 as f32)
                .collect::<Vec<_>>(),
            [3, 4, 4],
        ),
        &device,
    );
    let mut valid = vec![1f32; 48];
    valid[32..].iter_mut().for_each(|x| *x = 0.0);
    let valid = Tensor::<B, 3>::from_data(TensorData::new(valid, [3, 4, 4]), &device);
    let a = mask_losses(pred(5.0), gt.clone(), valid.clone(), 0.25, 2.0);
    let b = mask_losses(pred(-9.0), gt, valid, 0.25, 2.0);
    assert_eq!(scalar(&a.dice), scalar(&b.dice));
    assert_eq!(scalar(&a.focal), scalar(&b.focal));
    // Two supervised objects: the denominator is 2 + 3e-5, not 3.
    assert!(scalar(&a.dice) > 0.0);
}

#[test]
fn decoder_terms_with_zero_weight_keep_the_graph_but_not_the_value() {
    type A = Autodiff<Flex>;
    let device = Default::default();
    let boxes = Tensor::<A, 2>::from_data(
        TensorData::new(vec![0.5f32, 0.5, 0.2, 0.2], [1, 4]),
        &device,
    )
    .require_grad();
    let score =
        Tensor::<A, 2>::from_data(TensorData::new(vec![0.1f32], [1, 1]), &device).require_grad();
    let logits =
        Tensor::<A, 3>::from_data(TensorData::new(vec![0.0f32, 1.0, 2.0], [1, 1, 3]), &device);
    let targets = TokenTargets {
        batch: 1,
        len: 1,
        targets: vec![2],
        completion_mask: vec![true],
        vrt_exclusions: vec![],
    };
    let token = token_loss(logits, &targets, 3, true);
    let gt = GtBoxes::from_xyxy(&[[0.0, 0.0, 1.0, 1.0]]);
    let b = box_losses(boxes.clone(), score, &gt);
    let step = combine(&LossConfig::default(), &token, Some(&b), None, 0.0);
    assert!((scalar(&step.total) - scalar(&token.loss)).abs() < 1e-7);
    let grads = step.total.backward();
    let g = boxes
        .grad(&grads)
        .expect("the dummy object is part of the graph");
    assert!(values(g).iter().all(|v| *v == 0.0));
}
