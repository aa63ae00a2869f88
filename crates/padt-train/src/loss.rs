//! The PaDT SFT losses (padt-reference.md §3, `PaDTSFTTrainer.compute_loss`):
//!
//! - [`token_loss`]: robust per-token cross-entropy. At a VRT target of object o, every other
//!   foreground patch of o is removed from the softmax; log-softmax in f32; per-sample mean over
//!   the completion tokens (`Σ nll·mask / (Σ mask + 1e-4)`), then the batch mean.
//! - [`box_losses`]: `1 − Σ GIoU/(N+1e-4)` plus L1 over `(cx, cy, w, h)` summed over the four
//!   coordinates, `/(N+1e-4)`; the score loss `Σ (2σ(s) − 1 − GIoU.detach())² / (N+1e-4)`.
//!   Ground-truth boxes are rounded to bfloat16 and converted to cxcywh in bfloat16 arithmetic,
//!   exactly as the reference does.
//! - [`mask_losses`]: dice + sigmoid focal (α 0.25, γ 2) over the valid pixels of the objects
//!   with a mask, both divided by `#objects with a valid pixel + 1e-5·N`.
//!
//! Every switch and weight is in [`LossConfig`]; [`combine`] makes the total and the logged
//! metrics.

use burn::tensor::activation::{log_sigmoid, log_softmax, sigmoid};
use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};
use half::bf16;
use serde::{Deserialize, Serialize};

/// The loss switches and weights of the reference (`PaDTSFTConfig`), all on with weight 1 by
/// default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Robust per-token CE: mask the object's other foreground patches at VRT targets.
    pub use_sft_vp_mask: bool,
    /// Box loss (GIoU + L1).
    pub use_bbox_loss: bool,
    /// Score loss (needs the box loss, as in the reference).
    pub use_score_loss: bool,
    /// Mask loss (dice + focal).
    pub use_mask_loss: bool,
    /// Weight of the token loss.
    pub sft_weight: f64,
    /// Weight of the GIoU term of the box loss.
    pub giou_weight: f64,
    /// Weight of the L1 term of the box loss.
    pub l1_weight: f64,
    /// Weight of the score loss.
    pub score_weight: f64,
    /// Weight of the dice term of the mask loss.
    pub dice_weight: f64,
    /// Weight of the focal term of the mask loss.
    pub focal_weight: f64,
    /// Focal loss α.
    pub focal_alpha: f64,
    /// Focal loss γ.
    pub focal_gamma: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            use_sft_vp_mask: true,
            use_bbox_loss: true,
            use_score_loss: true,
            use_mask_loss: true,
            sft_weight: 1.0,
            giou_weight: 1.0,
            l1_weight: 1.0,
            score_weight: 1.0,
            dice_weight: 1.0,
            focal_weight: 1.0,
            focal_alpha: 0.25,
            focal_gamma: 2.0,
        }
    }
}

/// Token-loss targets of a batch of completions.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenTargets {
    /// Batch size.
    pub batch: usize,
    /// Completion length (the logits are those of positions `P-1 .. P+len-1`).
    pub len: usize,
    /// Target ids `[batch * len]`, row-major, VRTs as global ids (`V + offset + patch`).
    pub targets: Vec<i64>,
    /// 1 for supervised tokens (incl. the final `<|im_end|>`), 0 for padding `[batch * len]`.
    pub completion_mask: Vec<bool>,
    /// Robust-CE exclusions: `(row, columns)` with `row = b * len + t` a VRT target position and
    /// `columns` the global ids to remove from its softmax (the object's other foreground
    /// patches). Empty when `use_sft_vp_mask` is off.
    pub vrt_exclusions: Vec<(usize, Vec<usize>)>,
}

/// Output of [`token_loss`].
#[derive(Debug, Clone)]
pub struct TokenLoss<B: Backend> {
    /// `−log p(target)` with padding positions set to 0. `[batch, len]`
    pub per_token_nll: Tensor<B, 2>,
    /// Per-sample mean over the completion tokens. `[batch]`
    pub per_sample: Tensor<B, 1>,
    /// Batch mean (the reference's `sft_loss.mean()`). `[1]`
    pub loss: Tensor<B, 1>,
}

/// Robust per-token cross-entropy.
///
/// `logits` already carry the per-image logit mask (−∞ on other images' VRT columns). The
/// exclusions only touch VRT columns (≥ `vocab_size`), so the mask is built over that block
/// alone (`[batch·len, ΣNm]`), never over the whole extended vocabulary.
///
/// # Shapes
/// - `logits`: `[batch, len, V + ΣNm]` (any float dtype; the softmax runs in f32)
pub fn token_loss<B: Backend>(
    logits: Tensor<B, 3>,
    targets: &TokenTargets,
    vocab_size: usize,
    use_sft_vp_mask: bool,
) -> TokenLoss<B> {
    let [batch, len, width] = logits.dims();
    assert_eq!(
        (batch, len),
        (targets.batch, targets.len),
        "token targets do not fit the logits"
    );
    let device = logits.device();
    let rows = batch * len;
    let logits = logits.cast(burn::tensor::DType::F32).reshape([rows, width]);
    let logits = if use_sft_vp_mask && !targets.vrt_exclusions.is_empty() && width > vocab_size {
        let vrt_cols = width - vocab_size;
        let mut mask = vec![false; rows * vrt_cols];
        for (row, cols) in &targets.vrt_exclusions {
            for &col in cols {
                assert!(
                    col >= vocab_size && col < width && *row < rows,
                    "robust-CE exclusion ({row}, {col}) outside [{rows}, {vocab_size}..{width}]"
                );
                mask[row * vrt_cols + (col - vocab_size)] = true;
            }
        }
        let mask =
            Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, [rows, vrt_cols]), &device);
        let text = logits.clone().narrow(1, 0, vocab_size);
        let vrt = logits
            .narrow(1, vocab_size, vrt_cols)
            .mask_fill(mask, f32::NEG_INFINITY);
        Tensor::cat(vec![text, vrt], 1)
    } else {
        logits
    };
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(targets.targets.clone(), [rows, 1]),
        &device,
    );
    let nll = log_softmax(logits, 1)
        .gather(1, ids)
        .neg()
        .reshape([batch, len]);
    let keep = Tensor::<B, 2, Bool>::from_data(
        TensorData::new(targets.completion_mask.clone(), [batch, len]),
        &device,
    );
    // Padding positions are set to 0 (not multiplied: an infinite NLL there must not give NaN).
    let per_token_nll = nll.mask_fill(keep.clone().bool_not(), 0.0);
    let counts = keep.float().sum_dim(1).reshape([batch]);
    let per_sample = per_token_nll.clone().sum_dim(1).reshape([batch]) / (counts + 1e-4);
    let loss = per_sample.clone().mean();
    TokenLoss {
        per_token_nll,
        per_sample,
        loss,
    }
}

/// Ground-truth boxes as the reference feeds them to the box losses: `[x1, y1, x2, y2]`
/// rounded to bfloat16, and their cxcywh conversion computed in bfloat16 arithmetic.
#[derive(Debug, Clone, PartialEq)]
pub struct GtBoxes {
    /// bf16-rounded xyxy, one per object.
    pub xyxy: Vec<[f32; 4]>,
    /// `((x1+x2)/2, (y1+y2)/2, x2−x1, y2−y1)` with every operation rounded to bf16.
    pub cxcywh: Vec<[f32; 4]>,
}

impl GtBoxes {
    /// Rounds normalised xyxy boxes as the reference does.
    pub fn from_xyxy(boxes: &[[f64; 4]]) -> Self {
        let b = |v: f64| bf16::from_f64(v);
        let xyxy: Vec<[bf16; 4]> = boxes
            .iter()
            .map(|x| [b(x[0]), b(x[1]), b(x[2]), b(x[3])])
            .collect();
        let two = bf16::from_f32(2.0);
        let cxcywh = xyxy
            .iter()
            .map(|&[x0, y0, x1, y1]| {
                [
                    ((x0 + x1) / two).to_f32(),
                    ((y0 + y1) / two).to_f32(),
                    (x1 - x0).to_f32(),
                    (y1 - y0).to_f32(),
                ]
            })
            .collect();
        Self {
            xyxy: xyxy.iter().map(|v| v.map(bf16::to_f32)).collect(),
            cxcywh,
        }
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.xyxy.len()
    }

    /// Whether there are no objects.
    pub fn is_empty(&self) -> bool {
        self.xyxy.is_empty()
    }
}

/// Output of [`box_losses`].
#[derive(Debug, Clone)]
pub struct BoxLoss<B: Backend> {
    /// `1 − Σ GIoU/(N+1e-4)` `[1]`
    pub giou_term: Tensor<B, 1>,
    /// `Σ |pred − gt|₁/(N+1e-4)` over cxcywh `[1]`
    pub l1_term: Tensor<B, 1>,
    /// Per-object GIoU of the predicted vs the ground-truth box `[N]`
    pub giou: Tensor<B, 1>,
    /// Per-object IoU `[N]`
    pub iou: Tensor<B, 1>,
    /// Score loss `Σ (2σ(s) − 1 − GIoU.detach())²/(N+1e-4)` `[1]`
    pub score: Tensor<B, 1>,
}

/// Box and score losses, one predicted box per ground-truth object (teacher forcing: no
/// matching).
///
/// # Shapes
/// - `pred_boxes`: `[N, 4]` (cx, cy, w, h) in `[0, 1]`; `pred_score`: `[N, 1]` logits
pub fn box_losses<B: Backend>(
    pred_boxes: Tensor<B, 2>,
    pred_score: Tensor<B, 2>,
    gt: &GtBoxes,
) -> BoxLoss<B> {
    let n = gt.len();
    assert_eq!(
        pred_boxes.dims()[0],
        n,
        "one predicted box per ground-truth object"
    );
    let device = pred_boxes.device();
    let denom = n as f64 + 1e-4;
    let flat = |rows: &[[f32; 4]]| -> Tensor<B, 2> {
        let data: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(data, [n, 4]), &device)
    };
    let gt_xyxy = flat(&gt.xyxy);
    let gt_cxcywh = flat(&gt.cxcywh);

    let col = |t: &Tensor<B, 2>, i: usize| t.clone().narrow(1, i, 1).reshape([n]);
    let (cx, cy, w, h) = (
        col(&pred_boxes, 0),
        col(&pred_boxes, 1),
        col(&pred_boxes, 2),
        col(&pred_boxes, 3),
    );
    let px0 = cx.clone() - w.clone() * 0.5;
    let py0 = cy.clone() - h.clone() * 0.5;
    let px1 = cx + w * 0.5;
    let py1 = cy + h * 0.5;
    let (gx0, gy0, gx1, gy1) = (
        col(&gt_xyxy, 0),
        col(&gt_xyxy, 1),
        col(&gt_xyxy, 2),
        col(&gt_xyxy, 3),
    );

    let area_p = (px1.clone() - px0.clone()) * (py1.clone() - py0.clone());
    let area_g = (gx1.clone() - gx0.clone()) * (gy1.clone() - gy0.clone());
    let iw = (px1.clone().min_pair(gx1.clone()) - px0.clone().max_pair(gx0.clone())).clamp_min(0.0);
    let ih = (py1.clone().min_pair(gy1.clone()) - py0.clone().max_pair(gy0.clone())).clamp_min(0.0);
    let inter = iw * ih;
    let union = area_p + area_g - inter.clone();
    let iou = inter / union.clone();
    let ew = (px1.max_pair(gx1) - px0.min_pair(gx0)).clamp_min(0.0);
    let eh = (py1.max_pair(gy1) - py0.min_pair(gy0)).clamp_min(0.0);
    let enclosing = ew * eh;
    let giou = iou.clone() - (enclosing.clone() - union) / enclosing;

    let giou_term = (giou.clone().sum() / denom).neg() + 1.0;
    let l1_term = (pred_boxes - gt_cxcywh).abs().sum() / denom;
    let score = (sigmoid(pred_score.reshape([n])) * 2.0 - 1.0 - giou.clone().detach())
        .square()
        .sum()
        / denom;
    BoxLoss {
        giou_term,
        l1_term,
        giou,
        iou,
        score,
    }
}

/// Output of [`mask_losses`].
#[derive(Debug, Clone)]
pub struct MaskLoss<B: Backend> {
    /// Dice term `[1]`
    pub dice: Tensor<B, 1>,
    /// Sigmoid focal term `[1]`
    pub focal: Tensor<B, 1>,
}

/// Dice + sigmoid focal loss over the valid pixels.
///
/// # Shapes
/// - `pred_mask`: `[N, H, W]` logits; `gt_mask`, `valid`: `[N, H, W]` in {0, 1}
pub fn mask_losses<B: Backend>(
    pred_mask: Tensor<B, 3>,
    gt_mask: Tensor<B, 3>,
    valid: Tensor<B, 3>,
    alpha: f64,
    gamma: f64,
) -> MaskLoss<B> {
    let [n, h, w] = pred_mask.dims();
    let flat = |t: Tensor<B, 3>| t.reshape([n, h * w]);
    let (logits, target, valid) = (flat(pred_mask), flat(gt_mask), flat(valid));
    let valid_pixels = valid.clone().sum_dim(1).reshape([n]);
    // Σ over objects of (object has a valid pixel), plus 1e-5 per object, as the reference.
    let denom = valid_pixels.clone().greater_elem(0.0).float().sum() + 1e-5 * n as f64;

    let prob = sigmoid(logits.clone());
    let numerator = (prob.clone() * target.clone() * valid.clone())
        .sum_dim(1)
        .reshape([n])
        * 2.0;
    let denominator = (prob.clone() * valid.clone()).sum_dim(1).reshape([n])
        + (target.clone() * valid.clone()).sum_dim(1).reshape([n]);
    let dice_per_obj = ((numerator + 1.0) / (denominator + 1.0)).neg() + 1.0;
    let dice = dice_per_obj.sum() / denom.clone();

    // BCE with logits, stable: −t·logσ(x) − (1−t)·logσ(−x).
    let ce = (target.clone() * log_sigmoid(logits.clone())
        + (target.clone().neg() + 1.0) * log_sigmoid(logits.neg()))
    .neg();
    let p_t = prob.clone() * target.clone() + (prob.neg() + 1.0) * (target.clone().neg() + 1.0);
    let alpha_t = target.clone() * alpha + (target.neg() + 1.0) * (1.0 - alpha);
    let focal = ce * (p_t.neg() + 1.0).powf_scalar(gamma) * alpha_t;
    let focal_per_obj = (focal * valid).sum_dim(1).reshape([n]) / (valid_pixels + 1e-5);
    let focal = focal_per_obj.sum() / denom;
    MaskLoss { dice, focal }
}

/// The total loss and the logged metrics of one step.
#[derive(Debug, Clone)]
pub struct StepLoss<B: Backend> {
    /// The differentiable total.
    pub total: Tensor<B, 1>,
    /// `sft`, `bbox`, `score`, `mask_dice`, `mask_focal`, `mask`, `iou`, `giou` as host values
    /// (missing switches are reported as 0, as the reference logs nothing for them).
    pub components: Vec<(&'static str, f64)>,
}

/// Adds the enabled terms with their weights: `L = sft + bbox + score + mask` by default.
/// `decoder_weight` multiplies every decoder term (0 for a batch whose only object is the dummy
/// object, so the decoder still runs on every rank without changing the loss).
pub fn combine<B: Backend>(
    config: &LossConfig,
    token: &TokenLoss<B>,
    boxes: Option<&BoxLoss<B>>,
    masks: Option<&MaskLoss<B>>,
    decoder_weight: f64,
) -> StepLoss<B> {
    let scalar = |t: &Tensor<B, 1>| t.clone().into_scalar_f64();
    let mut total = token.loss.clone() * config.sft_weight;
    let mut components = vec![("sft", scalar(&token.loss))];
    if let (true, Some(b)) = (config.use_bbox_loss, boxes) {
        let bbox = b.giou_term.clone() * config.giou_weight + b.l1_term.clone() * config.l1_weight;
        components.push(("bbox", scalar(&bbox)));
        total = total + bbox * decoder_weight;
        let n = b.giou.dims()[0] as f64;
        components.push(("iou", scalar(&(b.iou.clone().sum() / (n + 1e-4)))));
        components.push(("giou", scalar(&(b.giou.clone().sum() / (n + 1e-4)))));
        if config.use_score_loss {
            components.push(("score", scalar(&b.score)));
            total = total + b.score.clone() * (config.score_weight * decoder_weight);
        }
    }
    if let (true, Some(m)) = (config.use_mask_loss, masks) {
        components.push(("mask_dice", scalar(&m.dice)));
        components.push(("mask_focal", scalar(&m.focal)));
        let mask = m.dice.clone() * config.dice_weight + m.focal.clone() * config.focal_weight;
        components.push(("mask", scalar(&mask)));
        total = total + mask * decoder_weight;
    }
    StepLoss { total, components }
}

trait IntoScalarF64 {
    fn into_scalar_f64(self) -> f64;
}

impl<B: Backend> IntoScalarF64 for Tensor<B, 1> {
    fn into_scalar_f64(self) -> f64 {
        self.into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .map(|v| v[0])
            .unwrap_or(f64::NAN)
    }
}
