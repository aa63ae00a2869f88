//! Boxes, scores and masks of parsed objects (padt-reference.md §6.3).
//!
//! Each object's features are the last-layer hidden states that produced its VRTs; the PaDT
//! decoder turns them into a `(cx, cy, w, h)` box in `[0, 1]`, a score logit and mask logits on
//! the `(4 gh) × (4 gw)` grid. Conventions of the reference's eval utilities:
//! - box: `x = max(cx − w/2, 0)`, `y = max(cy − h/2, 0)`, `w = min(w, 1)`, `h = min(h, 1)`, times
//!   the original image's W / H, each rounded half to even (Python `round`);
//! - score: `sigmoid(logit)`;
//! - mask: the valid logits bilinearly upsampled (`align_corners=False`) to H × W, sigmoid,
//!   `> 0.5`, COCO RLE.

use burn::tensor::{activation::sigmoid, backend::Backend, Int, Tensor, TensorData};
use padt_core::rle::Rle;
use padt_model::decoder::{DecoderInput, DecoderOutput};
use padt_model::padt::PadtModel;
use serde::Serialize;

use crate::generate::{Generation, InferError, Result};
use crate::parse::ParsedCompletion;

/// One detected object in original-image pixels.
#[derive(Debug, Clone, Serialize)]
pub struct DetectedObject {
    /// Sample index.
    pub sample: usize,
    pub label: Option<String>,
    /// The VRT run (`<|VRT_i|>…`) and its local patch indices.
    pub vrts: String,
    pub patches: Vec<u32>,
    /// `sigmoid(score logit)`.
    pub score: f32,
    pub score_logit: f32,
    /// Decoder box `(cx, cy, w, h)` in `[0, 1]`.
    pub box_cxcywh: [f32; 4],
    /// `[x, y, w, h]` clipped, in `[0, 1]`.
    pub box_xywh_norm: [f32; 4],
    /// `[x, y, w, h]` in pixels of the original image, rounded.
    pub bbox: [f64; 4],
    /// The mask in COCO RLE over the original image (None when the decoder has no mask head).
    #[serde(skip)]
    pub mask: Option<Rle>,
    /// Mask pixels.
    pub mask_area: Option<u64>,
}

/// Decoder inputs and outputs of a batch's objects, and the objects in pixels.
#[derive(Debug, Clone)]
pub struct DecodedObjects<B: Backend> {
    /// VRT features `[Σk, D]` and the count per object (None: no object in the batch).
    pub feats: Option<(Tensor<B, 2>, Vec<usize>)>,
    pub output: Option<DecoderOutput<B>>,
    /// Per sample.
    pub objects: Vec<Vec<DetectedObject>>,
    /// Per object (batch order): `sigmoid(upsampled logits)` `[H · W]` row-major.
    pub mask_probs: Vec<Option<Vec<f32>>>,
}

/// Runs the decoder on every parsed object of the batch and converts the outputs.
/// `image_sizes[b]` = `(width, height)` of sample `b`'s original image.
pub fn decode_objects<B: Backend>(
    model: &PadtModel<B>,
    generation: &Generation<B>,
    parsed: &[ParsedCompletion],
    image_sizes: &[(usize, usize)],
) -> Result<DecodedObjects<B>> {
    let batch = parsed.len();
    if generation.generated.len() != batch || image_sizes.len() != batch {
        return Err(InferError::InvalidInput(format!(
            "{} generated samples, {batch} parsed completions, {} image sizes",
            generation.generated.len(),
            image_sizes.len()
        )));
    }
    let steps = generation.steps;
    let mut rows = Vec::new();
    let mut feats_len = Vec::new();
    let mut object_image = Vec::new();
    let mut refs = Vec::new();
    for (b, p) in parsed.iter().enumerate() {
        for (o, object) in p.objects.iter().enumerate() {
            if let Some(&bad) = object.steps.iter().find(|&&s| s >= steps) {
                return Err(InferError::InvalidInput(format!(
                    "sample {b} object {o}: step {bad} beyond the {steps} generated steps"
                )));
            }
            rows.extend(object.steps.iter().map(|&s| (b * steps + s) as i64));
            feats_len.push(object.steps.len());
            object_image.push(b);
            refs.push((b, o));
        }
    }
    let mut objects: Vec<Vec<DetectedObject>> = vec![Vec::new(); batch];
    if refs.is_empty() {
        return Ok(DecodedObjects {
            feats: None,
            output: None,
            objects,
            mask_probs: Vec::new(),
        });
    }
    let device = generation.prototypes.device();
    let [_, _, dim] = generation.step_hidden.dims();
    let n = rows.len();
    let index = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n]), &device);
    let feats = generation
        .step_hidden
        .clone()
        .reshape([batch * steps, dim])
        .select(0, index);
    let output = model.vl_decoder.forward(DecoderInput {
        object_feats: feats.clone(),
        feats_len: feats_len.clone(),
        object_image,
        prototypes: generation.prototypes.clone(),
        high_res: generation.vision.high_res.clone(),
        pe_cos: generation.vision.rotary_cos.clone(),
        pe_sin: generation.vision.rotary_sin.clone(),
        grids: generation.grids.clone(),
    })?;
    let boxes = to_f32(output.pred_boxes.clone())?;
    let logits = to_f32(output.pred_score.clone())?;
    let scores = to_f32(sigmoid(output.pred_score.clone()))?;
    let masks = match &output.pred_mask {
        Some(m) => Some((m.dims(), to_f32(m.clone())?)),
        None => None,
    };
    let mut mask_probs = Vec::with_capacity(refs.len());
    for (i, &(b, o)) in refs.iter().enumerate() {
        let object = &parsed[b].objects[o];
        let (w_img, h_img) = image_sizes[b];
        let cxcywh = [
            boxes[4 * i],
            boxes[4 * i + 1],
            boxes[4 * i + 2],
            boxes[4 * i + 3],
        ];
        let norm = clip_xywh(cxcywh);
        let bbox = pixel_box(norm, w_img, h_img);
        let (mask, prob) = match &masks {
            Some((dims, values)) => {
                let [_, mh, mw] = *dims;
                let (gh, gw) = output.mask_valid_hw[i];
                let (vh, vw) = (4 * gh, 4 * gw);
                let plane = &values[i * mh * mw..(i + 1) * mh * mw];
                let valid: Vec<f32> = (0..vh)
                    .flat_map(|r| plane[r * mw..r * mw + vw].iter().copied())
                    .collect();
                let up = upsample_bilinear(&valid, vh, vw, h_img, w_img);
                let prob: Vec<f32> = up.iter().map(|&x| sigmoid_f32(x)).collect();
                let bits: Vec<u8> = prob.iter().map(|&p| u8::from(p > 0.5)).collect();
                let rle = Rle::encode_row_major(&bits, h_img as u32, w_img as u32)
                    .map_err(|e| InferError::InvalidInput(format!("mask RLE: {e}")))?;
                (Some(rle), Some(prob))
            }
            None => (None, None),
        };
        mask_probs.push(prob);
        objects[b].push(DetectedObject {
            sample: b,
            label: object.label.clone(),
            vrts: object.vrts.clone(),
            patches: object.patches.clone(),
            score: scores[i],
            score_logit: logits[i],
            box_cxcywh: cxcywh,
            box_xywh_norm: norm,
            bbox,
            mask_area: mask.as_ref().map(Rle::area),
            mask,
        });
    }
    Ok(DecodedObjects {
        feats: Some((feats, feats_len)),
        output: Some(output),
        objects,
        mask_probs,
    })
}

fn to_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| InferError::InvalidInput(format!("tensor readback: {e:?}")))
}

/// `sigmoid` in f32 as torch computes it on CPU (`1 / (1 + exp(−x))`).
pub fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `(cx, cy, w, h)` → clipped `[x, y, w, h]` in `[0, 1]` units (f32, as the reference's tensor
/// arithmetic).
pub fn clip_xywh(b: [f32; 4]) -> [f32; 4] {
    let [cx, cy, w, h] = b;
    [
        (cx - w / 2.0).max(0.0),
        (cy - h / 2.0).max(0.0),
        w.min(1.0),
        h.min(1.0),
    ]
}

/// Clipped normalised `[x, y, w, h]` times the image size, each rounded half to even.
pub fn pixel_box(norm: [f32; 4], width: usize, height: usize) -> [f64; 4] {
    let (w, h) = (width as f64, height as f64);
    [
        (norm[0] as f64 * w).round_ties_even(),
        (norm[1] as f64 * h).round_ties_even(),
        (norm[2] as f64 * w).round_ties_even(),
        (norm[3] as f64 * h).round_ties_even(),
    ]
}

/// torch `F.interpolate(mode="bilinear", align_corners=False)` of one plane, f32 arithmetic:
/// source coordinate `(d + 0.5) · in/out − 0.5` clamped at 0, neighbour `+1` unless at the last
/// row/column.
///
/// # Shapes
/// - `src`: `[h, w]` row-major → `[out_h, out_w]`
pub fn upsample_bilinear(src: &[f32], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    struct Tap {
        i0: usize,
        i1: usize,
        l0: f32,
        l1: f32,
    }
    let taps = |inp: usize, out: usize| -> Vec<Tap> {
        let scale = inp as f32 / out as f32;
        (0..out)
            .map(|d| {
                let real = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (real as usize).min(inp - 1);
                let i1 = if i0 < inp - 1 { i0 + 1 } else { i0 };
                let l1 = real - i0 as f32;
                Tap {
                    i0,
                    i1,
                    l0: 1.0 - l1,
                    l1,
                }
            })
            .collect()
    };
    let ys = taps(h, out_h);
    let xs = taps(w, out_w);
    let mut out = Vec::with_capacity(out_h * out_w);
    for y in &ys {
        let (r0, r1) = (
            &src[y.i0 * w..(y.i0 + 1) * w],
            &src[y.i1 * w..(y.i1 + 1) * w],
        );
        for x in &xs {
            out.push(
                y.l0 * (x.l0 * r0[x.i0] + x.l1 * r0[x.i1])
                    + y.l1 * (x.l0 * r1[x.i0] + x.l1 * r1[x.i1]),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsample_matches_torch_small_case() {
        // torch: F.interpolate(torch.tensor([[[[0.,1.],[2.,3.]]]]), size=(4,4), mode="bilinear")
        let up = upsample_bilinear(&[0.0, 1.0, 2.0, 3.0], 2, 2, 4, 4);
        let want = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        for (g, w) in up.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{up:?}");
        }
    }

    #[test]
    fn boxes_clip_and_round_half_even() {
        let norm = clip_xywh([0.1, 0.5, 0.4, 1.2]);
        assert_eq!(norm[0], 0.0);
        assert_eq!(norm[3], 1.0);
        // 0.5 px ties go to even: 2.5 → 2, 3.5 → 4.
        assert_eq!(
            pixel_box([0.25, 0.125, 0.5, 1.0], 10, 28),
            [2.0, 4.0, 5.0, 28.0]
        );
    }
}
