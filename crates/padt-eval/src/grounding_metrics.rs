//! REC and RES metrics: box accuracy at an IoU threshold and mask IoU, each in the reference's
//! label-matched protocol and in a lenient any-label variant (docs/evaluation.md).
//!
//! The reference (`eval/evaluation_scripts/eval_refcoco.py`) scores a prediction for a sample only
//! when its parsed label equals the referring sentence exactly; the per-sample score is the best IoU
//! over those predictions, 0 when there is none. We score each sample from its own predictions.

use std::fmt;

/// One predicted object of a REC sample: its parsed label and its box `[x, y, w, h]` in pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct BoxPrediction {
    pub label: String,
    pub bbox: [f64; 4],
}

/// One REC sample: the referring sentence, the ground-truth box `[x, y, w, h]` in pixels and every
/// object the model predicted for it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecSample {
    pub sentence: String,
    pub gt_bbox: [f64; 4],
    pub predictions: Vec<BoxPrediction>,
}

/// REC accuracy at one IoU threshold, in both protocols.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecAccuracy {
    pub num_samples: usize,
    /// IoU threshold (0.5 for the paper's Acc@0.5).
    pub threshold: f64,
    /// The reference's protocol: only predictions labelled with the exact sentence count.
    pub label_matched: f64,
    /// Lenient: the best box of the sample whatever its label.
    pub any_label: f64,
}

/// Box IoU of two `[x, y, w, h]` boxes as the reference computes it (`calculate_iou`): the
/// intersection is clamped at 0 and an empty union gives 0.
pub fn box_iou_xywh(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let inter_w = ((a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0])).max(0.0);
    let inter_h = ((a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1])).max(0.0);
    let intersection = inter_w * inter_h;
    let union = a[2] * a[3] + b[2] * b[3] - intersection;
    if union == 0.0 {
        0.0
    } else {
        intersection / union
    }
}

fn best_iou<'a>(gt: &[f64; 4], boxes: impl Iterator<Item = &'a [f64; 4]>) -> f64 {
    boxes.map(|b| box_iou_xywh(gt, b)).fold(0.0, f64::max)
}

/// Best box IoU of a REC sample: `(label_matched, any_label)`.
pub fn rec_sample_ious(sample: &RecSample) -> (f64, f64) {
    let matched = best_iou(
        &sample.gt_bbox,
        sample
            .predictions
            .iter()
            .filter(|p| p.label == sample.sentence)
            .map(|p| &p.bbox),
    );
    let any = best_iou(&sample.gt_bbox, sample.predictions.iter().map(|p| &p.bbox));
    (matched, any)
}

/// Acc@`threshold`: the fraction of samples whose best IoU is ≥ `threshold`. Empty input gives 0.
pub fn rec_accuracy(samples: &[RecSample], threshold: f64) -> RecAccuracy {
    let (mut matched_hits, mut any_hits) = (0usize, 0usize);
    for sample in samples {
        let (matched, any) = rec_sample_ious(sample);
        matched_hits += usize::from(matched >= threshold);
        any_hits += usize::from(any >= threshold);
    }
    let fraction = |hits: usize| {
        if samples.is_empty() {
            0.0
        } else {
            hits as f64 / samples.len() as f64
        }
    };
    RecAccuracy {
        num_samples: samples.len(),
        threshold,
        label_matched: fraction(matched_hits),
        any_label: fraction(any_hits),
    }
}

/// Pixel counts of a predicted mask against a ground-truth mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MaskOverlap {
    pub intersection: u64,
    pub union: u64,
}

impl MaskOverlap {
    /// Intersection over union; 0 for two empty masks (as the reference).
    pub fn iou(&self) -> f64 {
        if self.union == 0 {
            0.0
        } else {
            self.intersection as f64 / self.union as f64
        }
    }
}

/// Two masks of different sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskSizeMismatch {
    pub predicted: usize,
    pub ground_truth: usize,
}

impl fmt::Display for MaskSizeMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "predicted mask has {} pixels but the ground-truth mask has {}",
            self.predicted, self.ground_truth
        )
    }
}

impl std::error::Error for MaskSizeMismatch {}

/// Overlap of two binary masks of the same size (row-major, any layout as long as both agree).
pub fn mask_overlap(
    predicted: &[bool],
    ground_truth: &[bool],
) -> Result<MaskOverlap, MaskSizeMismatch> {
    if predicted.len() != ground_truth.len() {
        return Err(MaskSizeMismatch {
            predicted: predicted.len(),
            ground_truth: ground_truth.len(),
        });
    }
    let mut overlap = MaskOverlap::default();
    for (&p, &g) in predicted.iter().zip(ground_truth) {
        overlap.intersection += u64::from(p && g);
        overlap.union += u64::from(p || g);
    }
    Ok(overlap)
}

/// One predicted mask of a RES sample, already compared with the sample's ground-truth mask.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskPrediction {
    pub label: String,
    pub overlap: MaskOverlap,
}

/// One RES sample: the sentence, the ground-truth mask's pixel count, and the predicted masks.
#[derive(Debug, Clone, PartialEq)]
pub struct ResSample {
    pub sentence: String,
    pub gt_pixels: u64,
    pub predictions: Vec<MaskPrediction>,
}

/// RES scores, each in the label-matched (reference) and any-label protocol.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResScores {
    pub num_samples: usize,
    /// Mean over samples of the best mask IoU (0 without prediction). This is what
    /// `eval_refcoco.py` prints as "RES CIoU" and the paper's Table 2 reports as "cIoU".
    pub mean_iou_label_matched: f64,
    pub mean_iou_any_label: f64,
    /// Cumulative IoU: Σ intersections / Σ unions over samples, each sample contributing its
    /// best-IoU prediction (or no pixels predicted: I = 0, U = its ground-truth pixels). This is the
    /// cIoU of LAVT/LISA-style tables.
    pub cumulative_iou_label_matched: f64,
    pub cumulative_iou_any_label: f64,
}

/// The best-IoU prediction's overlap, or "nothing predicted" (I = 0, U = gt pixels).
fn best_overlap<'a>(
    gt_pixels: u64,
    predictions: impl Iterator<Item = &'a MaskPrediction>,
) -> MaskOverlap {
    let mut best: Option<MaskOverlap> = None;
    for p in predictions {
        // Strictly greater keeps the first of equal IoUs.
        if best.is_none_or(|b| p.overlap.iou() > b.iou()) {
            best = Some(p.overlap);
        }
    }
    best.unwrap_or(MaskOverlap {
        intersection: 0,
        union: gt_pixels,
    })
}

/// Mean IoU and cumulative IoU of RES samples. Empty input gives zeros.
pub fn res_scores(samples: &[ResSample]) -> ResScores {
    let (mut mean_matched, mut mean_any) = (0.0, 0.0);
    let (mut matched_total, mut any_total) = (MaskOverlap::default(), MaskOverlap::default());
    for s in samples {
        let matched = best_overlap(
            s.gt_pixels,
            s.predictions.iter().filter(|p| p.label == s.sentence),
        );
        let any = best_overlap(s.gt_pixels, s.predictions.iter());
        mean_matched += matched.iou();
        mean_any += any.iou();
        for (total, o) in [(&mut matched_total, matched), (&mut any_total, any)] {
            total.intersection += o.intersection;
            total.union += o.union;
        }
    }
    let n = samples.len().max(1) as f64;
    ResScores {
        num_samples: samples.len(),
        mean_iou_label_matched: mean_matched / n,
        mean_iou_any_label: mean_any / n,
        cumulative_iou_label_matched: matched_total.iou(),
        cumulative_iou_any_label: any_total.iou(),
    }
}
