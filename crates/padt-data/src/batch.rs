//! Training batches, built as `PaDTSFTTrainer.compute_loss` builds them (padt-reference.md
//! §3.1–3.6, `tests/fixtures/padt-tiny/README.md` section B).
//!
//! Two stages, so the expensive part runs on worker threads:
//! 1. [`SampleEncoder::prepare`] (per sample): chat-template the prompt, expand the image pads,
//!    pick the VRTs (`<|Obj_k|>` → 5 `<|VRT_p|>`), tokenize the completion (+ `<|im_end|>`), and
//!    build each object's mask target (RLE → cv2 float bilinear to `4·gh × 4·gw` → `> 0.5`).
//! 2. [`collate`] (per batch): left-pad prompts and right-pad completions with the pad token,
//!    concatenate (padding can sit in the middle of a row), make the VRT ids global, stack
//!    pixels, grids, boxes and masks.
//!
//! Arrays are plain row-major [`Array`]s (no tensor library): the model crate turns them into
//! tensors. [`encode_sample`] is the single-image path behind `padt-preprocess encode-sample`.

use padt_core::Rle;
use std::path::Path;

use crate::chat::{expand_image_pad_ids, expand_image_pads, ChatError, ChatTemplate, PromptFrame};
use crate::image::{
    decode_image, padt_upscale, DecodeOptions, ImageError, ImageProcessor, ImageProcessorConfig,
    ProcessedImage,
};
use crate::patches::axis_taps;
use crate::record::Record;
use crate::sources::coco::numpy_rng::LegacyRandomState;
use crate::targets::{
    draw_picks, find_literal_vrt, sample_rng, CompletionTarget, ObjectPick, PatchSelection,
    TargetError,
};
use crate::tokenizer::{model_embed_size, PadtTokenizer, TokenizerError};
use crate::vrt::{merged_tokens, VrtLayout};

/// A dense row-major array with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Array<T> {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values, row-major.
    pub data: Vec<T>,
}

impl<T: Clone> Array<T> {
    /// An array of `shape` filled with `value`.
    pub fn full(shape: Vec<usize>, value: T) -> Self {
        let n = shape.iter().product();
        Array {
            shape,
            data: vec![value; n],
        }
    }

    /// Row `i` of a 2-D array.
    pub fn row(&self, i: usize) -> &[T] {
        let w = self.shape[1];
        &self.data[i * w..(i + 1) * w]
    }
}

/// Errors while preparing a sample or encoding one; each names the record or input.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The completion could not be built.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// Tokenizer failure.
    #[error("record {record}: {source}")]
    Tokenizer {
        /// Record id (or -1 for `encode_sample`).
        record: i64,
        /// The error.
        source: TokenizerError,
    },
    /// Chat template failure.
    #[error("record {record}: {source}")]
    Chat {
        /// Record id.
        record: i64,
        /// The error.
        source: ChatError,
    },
    /// Image failure.
    #[error("record {record}: {source}")]
    Image {
        /// Record id.
        record: i64,
        /// The error.
        source: ImageError,
    },
    /// An object's RLE does not decode.
    #[error("record {record}: object {object}: bad rle: {reason}")]
    Mask {
        /// Record id.
        record: i64,
        /// Object index.
        object: usize,
        /// What was wrong.
        reason: String,
    },
    /// Anything else about the input (empty batch, bad completion text, write failure).
    #[error("{0}")]
    Invalid(String),
}

/// One object of one sample, in text order (an object named twice appears twice).
#[derive(Debug, Clone, PartialEq)]
pub struct SampleObject {
    /// Index into the record's `objects`.
    pub object: usize,
    /// Picked patches (local), in VRT order.
    pub picks: Vec<u32>,
    /// All foreground patches (local) of the object.
    pub patches: Vec<u32>,
    /// `[x1, y1, x2, y2]` normalised.
    pub bbox_xyxy: [f64; 4],
    /// The mask target `4·gh × 4·gw` (0/1), `None` without an RLE.
    pub mask: Option<Vec<u8>>,
}

/// A sample ready for collation.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedSample {
    /// Record id.
    pub record_id: i64,
    /// Processor output of the image.
    pub image: ProcessedImage,
    /// Prompt text after the chat template and pad expansion.
    pub prompt_text: String,
    /// Prompt ids (image pads expanded).
    pub prompt_ids: Vec<u32>,
    /// Completion with VRT strings and the eos token.
    pub completion_text: String,
    /// Completion ids, local VRT ids (`V + p`), ending with eos.
    pub completion_ids: Vec<u32>,
    /// Objects in text order.
    pub objects: Vec<SampleObject>,
}

/// The chat template's fixed text around the prompt with its ids, tokenized once.
#[derive(Debug)]
struct CachedFrame {
    frame: PromptFrame,
    prefix_ids: Vec<u32>,
    suffix_ids: Vec<u32>,
}

/// Turns records into [`PreparedSample`]s: tokenizer, chat template, VRT selection.
#[derive(Debug, Clone)]
pub struct SampleEncoder {
    tokenizer: PadtTokenizer,
    template: std::sync::Arc<ChatTemplate>,
    /// Set when the template frames every prompt with fixed text and the tokenizer splits at
    /// both seams ([`PadtTokenizer::splits_at_added_tokens`]): only the prompt is tokenized
    /// per sample, with the same ids as tokenizing the whole rendered text.
    frame: Option<std::sync::Arc<CachedFrame>>,
    /// How VRT patches are chosen.
    pub selection: PatchSelection,
    /// Spatial merge size (2).
    pub merge_size: usize,
}

impl SampleEncoder {
    /// An encoder using the tokenizer's chat template (built-in Qwen2.5-VL when it has none).
    pub fn new(tokenizer: PadtTokenizer, selection: PatchSelection) -> Result<Self, ChatError> {
        let template = ChatTemplate::for_tokenizer(&tokenizer)?;
        let frame = template
            .padt_prompt_frame()
            .filter(|f| tokenizer.splits_at_added_tokens(&f.prefix, &f.suffix))
            .and_then(|frame| {
                Some(std::sync::Arc::new(CachedFrame {
                    prefix_ids: tokenizer.encode(&frame.prefix).ok()?,
                    suffix_ids: tokenizer.encode(&frame.suffix).ok()?,
                    frame,
                }))
            });
        Ok(SampleEncoder {
            tokenizer,
            template: std::sync::Arc::new(template),
            frame,
            selection,
            merge_size: 2,
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &PadtTokenizer {
        &self.tokenizer
    }

    /// The chat template.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Prompt text (pads expanded) and ids of `prompt` for an image of `merged` tokens.
    pub fn encode_prompt(
        &self,
        record: i64,
        prompt: &str,
        merged: usize,
    ) -> Result<(String, Vec<u32>), BatchError> {
        let chat = |source| BatchError::Chat { record, source };
        let encode = |text: &str| {
            self.tokenizer
                .encode(text)
                .map_err(|source| BatchError::Tokenizer { record, source })
        };
        let (rendered, ids) = match &self.frame {
            Some(cached) => {
                let rendered = if cached.frame.verbatim {
                    cached.frame.text(prompt)
                } else {
                    self.template.render_padt_prompt(prompt).map_err(chat)?
                };
                if cached.frame.holds(prompt, &rendered) {
                    let mut ids = cached.prefix_ids.clone();
                    ids.extend(encode(prompt)?);
                    ids.extend_from_slice(&cached.suffix_ids);
                    (rendered, ids)
                } else {
                    let ids = encode(&rendered)?;
                    (rendered, ids)
                }
            }
            None => {
                let rendered = self.template.render_padt_prompt(prompt).map_err(chat)?;
                let ids = encode(&rendered)?;
                (rendered, ids)
            }
        };
        let ids = expand_image_pad_ids(&ids, self.tokenizer.special_ids().image_pad, &[merged])
            .map_err(chat)?;
        let text = expand_image_pads(&rendered, &[merged]).map_err(chat)?;
        Ok((text, ids))
    }

    /// Draws the VRT picks of `record` for a processed image (`patch_w` = `round(W/28)` of the
    /// image PaDT sees, used by the structured selection).
    pub fn draw_picks(
        &self,
        record: &Record,
        image: &ProcessedImage,
        patch_w: u32,
        rng: &mut LegacyRandomState,
    ) -> Result<Vec<ObjectPick>, BatchError> {
        let merged = merged_tokens(image.grid_thw, self.merge_size);
        Ok(draw_picks(record, rng, self.selection, merged, patch_w)?)
    }

    /// Prepares one sample from its processed image and the picks (one per placeholder).
    pub fn prepare(
        &self,
        record: &Record,
        image: ProcessedImage,
        picks: Vec<ObjectPick>,
    ) -> Result<PreparedSample, BatchError> {
        let merged = merged_tokens(image.grid_thw, self.merge_size);
        let completion =
            CompletionTarget::from_picks(record, picks, merged, self.tokenizer.eos_token())?;
        let (prompt_text, prompt_ids) = self.encode_prompt(record.id, &record.prompt, merged)?;
        let completion_ids =
            completion
                .token_ids(&self.tokenizer)
                .map_err(|source| BatchError::Tokenizer {
                    record: record.id,
                    source,
                })?;
        let (gh, gw) = (image.grid_thw[1], image.grid_thw[2]);
        let objects = completion
            .objects
            .iter()
            .map(|pick| {
                let obj = &record.objects[pick.object];
                let mask = match &obj.rle {
                    None => None,
                    Some(rle) => {
                        let [h, w] = rle.size;
                        let rle =
                            Rle::from_string(&rle.counts, h, w).map_err(|e| BatchError::Mask {
                                record: record.id,
                                object: pick.object,
                                reason: e.to_string(),
                            })?;
                        Some(mask_target(&rle, 4 * gh, 4 * gw))
                    }
                };
                Ok(SampleObject {
                    object: pick.object,
                    picks: pick.picks.clone(),
                    patches: obj.patches.clone(),
                    bbox_xyxy: obj.bbox,
                    mask,
                })
            })
            .collect::<Result<Vec<_>, BatchError>>()?;
        Ok(PreparedSample {
            record_id: record.id,
            image,
            prompt_text,
            prompt_ids,
            completion_text: completion.text,
            completion_ids,
            objects,
        })
    }

    /// The whole per-sample path: decode the image bytes, PaDT's tiny-image upscale, the
    /// processor, picks drawn from `sample_rng(seed, epoch, sample_index)`, then [`Self::prepare`].
    #[allow(clippy::too_many_arguments)]
    pub fn prepare_from_bytes(
        &self,
        record: &Record,
        image_bytes: &[u8],
        processor: &ImageProcessor,
        decode: &DecodeOptions,
        seed: u64,
        epoch: u64,
        sample_index: u64,
    ) -> Result<PreparedSample, BatchError> {
        let (image, patch_w) = process_image(image_bytes, &record.image, processor, decode)
            .map_err(|source| BatchError::Image {
                record: record.id,
                source,
            })?;
        let mut rng = sample_rng(seed, epoch, sample_index);
        let picks = self.draw_picks(record, &image, patch_w, &mut rng)?;
        self.prepare(record, image, picks)
    }
}

/// Decode, PaDT upscale, processor; also returns PaDT's `patch_w = round(W/28)`.
pub fn process_image(
    bytes: &[u8],
    name: &str,
    processor: &ImageProcessor,
    decode: &DecodeOptions,
) -> Result<(ProcessedImage, u32), ImageError> {
    let decoded = padt_upscale(decode_image(bytes, name, decode)?);
    let patch_w = (decoded.rgb.width as f64 / 28.0).round_ties_even() as u32;
    Ok((processor.preprocess(&decoded.rgb)?, patch_w))
}

/// `cv::resize(src_f32, (dw, dh), INTER_LINEAR)` with OpenCV's own float path
/// ([`axis_taps`]'s float coefficients): `h = S[x0]·a0 + S[x1]·a1` per row, then `out = h0·b0 + h1·b1`, all
/// in f32. The plain form [`mask_target`] is checked against.
///
/// # Shapes
/// - `src`: `[h, w]` row-major → `[dh, dw]`
#[cfg(test)]
fn cv2_resize_linear_f32(src: &[f32], h: usize, w: usize, dh: usize, dw: usize) -> Vec<f32> {
    let xt = axis_taps(w, dw, true);
    let yt = axis_taps(h, dh, false);
    let hrow = |y: usize| -> Vec<f32> {
        let row = &src[y * w..(y + 1) * w];
        xt.iter()
            .map(|t| row[t.i0] * t.float.0 + row[t.i1] * t.float.1)
            .collect()
    };
    let hrows: Vec<Vec<f32>> = (0..h).map(hrow).collect();
    let mut out = Vec::with_capacity(dh * dw);
    for t in &yt {
        let (h0, h1) = (&hrows[t.i0], &hrows[t.i1]);
        out.extend(
            h0.iter()
                .zip(h1)
                .map(|(a, b)| a * t.float.0 + b * t.float.1),
        );
    }
    out
}

/// PaDT's mask target: the full-resolution mask as f32, cv2 bilinear to `(dw, dh)`, `> 0.5`.
///
/// Computed straight from the column-major decode: for each output column the two source
/// columns are contiguous, and only the source rows the vertical taps use are touched. Every
/// value goes through the same f32 operations, in the same order, as the row-major two-pass
/// form (`h = S[y][x0]·a0 + S[y][x1]·a1`, `out = h(y0)·b0 + h(y1)·b1`), so the result is
/// identical to it.
///
/// # Shapes
/// - output: `[dh, dw]` row-major 0/1
pub fn mask_target(rle: &Rle, dh: usize, dw: usize) -> Vec<u8> {
    let (h, w) = (rle.height as usize, rle.width as usize);
    let mut out = vec![0u8; dh * dw];
    if h == 0 || w == 0 {
        return out;
    }
    // `cols[x * h + y]`, 0/1.
    let cols = rle.decode_col_major();
    let xt = axis_taps(w, dw, true);
    let yt = axis_taps(h, dh, false);
    for (xo, tx) in xt.iter().enumerate() {
        let c0 = &cols[tx.i0 * h..(tx.i0 + 1) * h];
        let c1 = &cols[tx.i1 * h..(tx.i1 + 1) * h];
        let hval = |y: usize| f32::from(c0[y]) * tx.float.0 + f32::from(c1[y]) * tx.float.1;
        for (yo, ty) in yt.iter().enumerate() {
            let v = hval(ty.i0) * ty.float.0 + hval(ty.i1) * ty.float.1;
            out[yo * dw + xo] = u8::from(v > 0.5);
        }
    }
    out
}

/// One object of the batch (text order within a sample, samples in order).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchObject {
    /// Sample index in the batch.
    pub sample: usize,
    /// Index into that record's `objects`.
    pub object: usize,
    /// Picked patches (local).
    pub picks: Vec<u32>,
    /// Foreground patches (local).
    pub patches: Vec<u32>,
    /// `[x1, y1, x2, y2]` normalised (the loss casts to bf16).
    pub bbox_xyxy: [f64; 4],
    /// Whether the object has a mask target.
    pub has_mask: bool,
    /// Its image's `(gh, gw)` in 14-px units (the valid mask region is `4gh × 4gw`).
    pub grid_hw: (usize, usize),
}

/// A collated training batch: everything the forward and the losses need.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Record ids, sample order.
    pub record_ids: Vec<i64>,
    /// `V`, the first VRT id.
    pub embed_size: u32,
    /// VRT offsets and counts per image.
    pub vrt: VrtLayout,
    /// `P`, the padded prompt length: logits `[:, P-1:-1]` line up with `input_ids[:, P:]`.
    pub prompt_length: usize,
    /// `[B, P]` left-padded with the pad id.
    pub prompt_ids: Array<i64>,
    /// `[B, P]`.
    pub prompt_mask: Array<i64>,
    /// `[B, C]` right-padded, global VRT ids.
    pub completion_ids: Array<i64>,
    /// `[B, C]` right-padded, local VRT ids.
    pub completion_ids_local_vrt: Array<i64>,
    /// `[B, C]` 1 = supervised (incl. the final eos).
    pub completion_mask: Array<i64>,
    /// `[B, P + C]` prompt ++ completion, global VRT ids (the training forward's input).
    pub input_ids: Array<i64>,
    /// `[B, P + C]` with local VRT ids.
    pub input_ids_local_vrt: Array<i64>,
    /// `[B, P + C]` prompt_mask ++ completion_mask.
    pub attention_mask: Array<i64>,
    /// `[ΣN, 1176]` processor rows of all images, sample order.
    pub pixel_values: Array<f32>,
    /// `[B, 3]` `(t, gh, gw)` per image (14-px units).
    pub image_grid_thw: Array<i64>,
    /// Objects, samples in order, text order inside a sample.
    pub objects: Vec<BatchObject>,
    /// `[N]` object → sample.
    pub object_sample: Array<i64>,
    /// `[N, 4]` GT boxes `[x1, y1, x2, y2]` normalised (f32 of the record's f64).
    pub gt_boxes_xyxy: Array<f32>,
    /// `[N, 4·max gh, 4·max gw]` mask targets, zero-padded (top-left aligned).
    pub gt_masks: Array<f32>,
    /// `[N, 4·max gh, 4·max gw]` 1 on the valid `4gh × 4gw` region of objects with an RLE.
    pub mask_valid: Array<f32>,
}

impl Batch {
    /// Number of samples.
    pub fn batch_size(&self) -> usize {
        self.record_ids.len()
    }

    /// Completion length `C`.
    pub fn completion_length(&self) -> usize {
        self.completion_ids.shape[1]
    }

    /// The VRT target positions `(sample, completion position)` in row-major order, with the
    /// batch object and pick each belongs to. Lines up with the robust-CE rows.
    pub fn vrt_target_positions(&self) -> Vec<(usize, usize)> {
        let c = self.completion_length();
        let v = self.embed_size as i64;
        (0..self.batch_size())
            .flat_map(|b| (0..c).map(move |j| (b, j)))
            .filter(|&(b, j)| self.completion_ids.data[b * c + j] >= v)
            .collect()
    }

    /// Robust per-token CE columns to mask (padt-reference.md §3.2): one row per VRT target
    /// (objects in order, picks in order), holding the global ids of every foreground patch of
    /// that object except the pick of that row.
    pub fn vrt_masked_columns(&self) -> Vec<Vec<u32>> {
        let mut rows = Vec::new();
        for o in &self.objects {
            for &pick in &o.picks {
                let mut cols: Vec<u32> = o
                    .patches
                    .iter()
                    .filter(|&&p| p != pick)
                    .map(|&p| self.vrt.global_id(o.sample, p))
                    .collect();
                cols.sort_unstable();
                cols.dedup();
                rows.push(cols);
            }
        }
        rows
    }

    /// The same as a dense `[num VRT targets, V + ΣNm]` 0/1 array (1 = set to −inf).
    pub fn vrt_loss_mask(&self) -> Array<u8> {
        let width = (self.embed_size + self.vrt.total()) as usize;
        let rows = self.vrt_masked_columns();
        let mut out = Array::full(vec![rows.len(), width], 0u8);
        for (r, cols) in rows.iter().enumerate() {
            for &c in cols {
                out.data[r * width + c as usize] = 1;
            }
        }
        out
    }
}

/// Collates prepared samples (one image each) into a [`Batch`].
pub fn collate(
    samples: &[PreparedSample],
    tokenizer: &PadtTokenizer,
    merge_size: usize,
) -> Result<Batch, BatchError> {
    if samples.is_empty() {
        return Err(BatchError::Invalid("cannot collate an empty batch".into()));
    }
    let pad = tokenizer.special_ids().pad as i64;
    let v = tokenizer.embed_size();
    let b = samples.len();
    let grids: Vec<[usize; 3]> = samples.iter().map(|s| s.image.grid_thw).collect();
    let vrt = VrtLayout::from_grids(v, &grids, merge_size);
    let p = samples
        .iter()
        .map(|s| s.prompt_ids.len())
        .max()
        .unwrap_or(0);
    let c = samples
        .iter()
        .map(|s| s.completion_ids.len())
        .max()
        .unwrap_or(0);
    let mut prompt_ids = Array::full(vec![b, p], pad);
    let mut prompt_mask = Array::full(vec![b, p], 0i64);
    let mut completion_ids = Array::full(vec![b, c], pad);
    let mut completion_local = Array::full(vec![b, c], pad);
    let mut completion_mask = Array::full(vec![b, c], 0i64);
    for (i, s) in samples.iter().enumerate() {
        let start = p - s.prompt_ids.len();
        for (k, &id) in s.prompt_ids.iter().enumerate() {
            prompt_ids.data[i * p + start + k] = id as i64;
            prompt_mask.data[i * p + start + k] = 1;
        }
        for (k, &id) in s.completion_ids.iter().enumerate() {
            completion_local.data[i * c + k] = id as i64;
            completion_ids.data[i * c + k] = vrt.to_global(i, id) as i64;
            completion_mask.data[i * c + k] = 1;
        }
    }
    let l = p + c;
    let concat = |a: &Array<i64>, bb: &Array<i64>| {
        let mut out = Vec::with_capacity(b * l);
        for i in 0..b {
            out.extend_from_slice(a.row(i));
            out.extend_from_slice(bb.row(i));
        }
        Array {
            shape: vec![b, l],
            data: out,
        }
    };
    let input_ids = concat(&prompt_ids, &completion_ids);
    let input_ids_local_vrt = concat(&prompt_ids, &completion_local);
    let attention_mask = concat(&prompt_mask, &completion_mask);

    let patch_dim = samples[0].image.patch_dim;
    let rows: usize = samples.iter().map(|s| s.image.num_patches).sum();
    let mut pixel_values = Vec::with_capacity(rows * patch_dim);
    for s in samples {
        if s.image.patch_dim != patch_dim {
            return Err(BatchError::Invalid(format!(
                "record {}: pixel rows of {} values, the batch has {patch_dim}",
                s.record_id, s.image.patch_dim
            )));
        }
        pixel_values.extend_from_slice(&s.image.pixel_values);
    }
    let image_grid_thw = Array {
        shape: vec![b, 3],
        data: grids.iter().flat_map(|g| g.map(|x| x as i64)).collect(),
    };

    let mut objects = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        for o in &s.objects {
            objects.push(BatchObject {
                sample: i,
                object: o.object,
                picks: o.picks.clone(),
                patches: o.patches.clone(),
                bbox_xyxy: o.bbox_xyxy,
                has_mask: o.mask.is_some(),
                grid_hw: (s.image.grid_thw[1], s.image.grid_thw[2]),
            });
        }
    }
    let n = objects.len();
    let mh = 4 * grids.iter().map(|g| g[1]).max().unwrap_or(0);
    let mw = 4 * grids.iter().map(|g| g[2]).max().unwrap_or(0);
    let mut gt_masks = Array::full(vec![n, mh, mw], 0f32);
    let mut mask_valid = Array::full(vec![n, mh, mw], 0f32);
    let masks = samples
        .iter()
        .flat_map(|s| s.objects.iter().map(|o| o.mask.as_ref()));
    for (k, (obj, mask)) in objects.iter().zip(masks).enumerate() {
        let Some(mask) = mask else { continue };
        let (h, w) = (4 * obj.grid_hw.0, 4 * obj.grid_hw.1);
        for y in 0..h {
            for x in 0..w {
                let at = (k * mh + y) * mw + x;
                gt_masks.data[at] = mask[y * w + x] as f32;
                mask_valid.data[at] = 1.0;
            }
        }
    }
    Ok(Batch {
        record_ids: samples.iter().map(|s| s.record_id).collect(),
        embed_size: v,
        vrt,
        prompt_length: p,
        prompt_ids,
        prompt_mask,
        completion_ids,
        completion_ids_local_vrt: completion_local,
        completion_mask,
        input_ids,
        input_ids_local_vrt,
        attention_mask,
        pixel_values: Array {
            shape: vec![rows, patch_dim],
            data: pixel_values,
        },
        image_grid_thw,
        object_sample: Array {
            shape: vec![n],
            data: objects.iter().map(|o| o.sample as i64).collect(),
        },
        gt_boxes_xyxy: Array {
            shape: vec![n, 4],
            data: objects
                .iter()
                .flat_map(|o| o.bbox_xyxy.map(|x| x as f32))
                .collect(),
        },
        objects,
        gt_masks,
        mask_valid,
    })
}

/// One image + prompt (+ completion) encoded as the model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedSample {
    /// `[N, 1176]` processor rows.
    pub pixel_values: Array<f32>,
    /// `[1, 3]`.
    pub image_grid_thw: Array<i64>,
    /// `[L]` prompt ids (pads expanded) ++ completion ids.
    pub input_ids: Array<i64>,
    /// The full text (prompt with pads expanded, then the completion).
    pub rendered_text: String,
}

/// Encodes one image and prompt like PaDT's processor call, optionally followed by a
/// completion (tokenized with this image's VRTs; `<|im_end|>` appended unless it already ends
/// the text). `tokenizer_dir` is a model or tokenizer directory; `V` is its `config.json`
/// `vocab_size`, or the tokenizer length when it has no `config.json`.
pub fn encode_sample(
    tokenizer_dir: &Path,
    image_bytes: &[u8],
    prompt: &str,
    completion: Option<&str>,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<EncodedSample, BatchError> {
    const NO_RECORD: i64 = -1;
    let tok_err = |source| BatchError::Tokenizer {
        record: NO_RECORD,
        source,
    };
    let embed_size = match model_embed_size(tokenizer_dir).map_err(tok_err)? {
        Some(v) => v,
        None => {
            let t = tokenizers::Tokenizer::from_file(tokenizer_dir.join("tokenizer.json"))
                .map_err(|e| {
                    tok_err(TokenizerError::Load {
                        path: tokenizer_dir.join("tokenizer.json"),
                        reason: e.to_string(),
                    })
                })?;
            // No padding (or already padded): V is the tokenizer length.
            t.get_vocab_size(true) as u32
        }
    };
    let config = ImageProcessorConfig {
        min_pixels,
        max_pixels,
        ..ImageProcessorConfig::default()
    };
    let image_err = |source| BatchError::Image {
        record: NO_RECORD,
        source,
    };
    let processor = ImageProcessor::new(config).map_err(image_err)?;
    let (image, _) = process_image(image_bytes, "image", &processor, &DecodeOptions::default())
        .map_err(image_err)?;
    let merged = merged_tokens(image.grid_thw, 2);
    let mut tokenizer = PadtTokenizer::from_dir(tokenizer_dir, embed_size, 0).map_err(tok_err)?;
    tokenizer.ensure_vrt_count(merged as u32).map_err(tok_err)?;
    if let Some(tok) = find_literal_vrt(prompt) {
        return Err(BatchError::Invalid(format!(
            "the prompt contains the VRT token {tok}; prompts hold no VRTs"
        )));
    }
    let encoder = SampleEncoder::new(tokenizer, PatchSelection::default()).map_err(|source| {
        BatchError::Chat {
            record: NO_RECORD,
            source,
        }
    })?;
    let (mut text, mut ids) = encoder.encode_prompt(NO_RECORD, prompt, merged)?;
    if let Some(completion) = completion {
        let eos = encoder.tokenizer().eos_token();
        let mut full = completion.to_string();
        if !full.ends_with(eos) {
            full.push_str(eos);
        }
        ids.extend(encoder.tokenizer().encode(&full).map_err(tok_err)?);
        text.push_str(&full);
    }
    Ok(EncodedSample {
        pixel_values: Array {
            shape: vec![image.num_patches, image.patch_dim],
            data: image.pixel_values,
        },
        image_grid_thw: Array {
            shape: vec![1, 3],
            data: image.grid_thw.map(|x| x as i64).to_vec(),
        },
        input_ids: Array {
            shape: vec![ids.len()],
            data: ids.into_iter().map(i64::from).collect(),
        },
        rendered_text: text,
    })
}

/// Writes an [`EncodedSample`] as safetensors (`pixel_values` f32 `[N, 1176]`,
/// `image_grid_thw` i64 `[1, 3]`, `input_ids` i64 `[L]`; the text in the metadata key
/// `rendered_text`), atomically (temporary file, then rename).
pub fn write_encoded_sample(sample: &EncodedSample, path: &Path) -> Result<(), BatchError> {
    use safetensors::tensor::{Dtype, TensorView};
    let io = |e: String| BatchError::Invalid(format!("writing {}: {e}", path.display()));
    let f32_bytes: Vec<u8> = sample
        .pixel_values
        .data
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let i64_bytes =
        |a: &Array<i64>| -> Vec<u8> { a.data.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let grid = i64_bytes(&sample.image_grid_thw);
    let ids = i64_bytes(&sample.input_ids);
    let views = vec![
        (
            "pixel_values",
            TensorView::new(Dtype::F32, sample.pixel_values.shape.clone(), &f32_bytes)
                .map_err(|e| io(e.to_string()))?,
        ),
        (
            "image_grid_thw",
            TensorView::new(Dtype::I64, sample.image_grid_thw.shape.clone(), &grid)
                .map_err(|e| io(e.to_string()))?,
        ),
        (
            "input_ids",
            TensorView::new(Dtype::I64, sample.input_ids.shape.clone(), &ids)
                .map_err(|e| io(e.to_string()))?,
        ),
    ];
    let metadata = std::collections::HashMap::from([(
        "rendered_text".to_string(),
        sample.rendered_text.clone(),
    )]);
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| io(e.to_string()))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| io(e.to_string()))?;
    std::io::Write::write_all(&mut tmp, &bytes).map_err(|e| io(e.to_string()))?;
    tmp.persist(path).map_err(|e| io(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_identity_and_upscale() {
        let src = [0.0f32, 1.0, 1.0, 0.0];
        assert_eq!(cv2_resize_linear_f32(&src, 2, 2, 2, 2), src.to_vec());
        // 1x2 -> 1x4: x taps at -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
        let up = cv2_resize_linear_f32(&[0.0, 1.0], 1, 2, 1, 4);
        assert_eq!(up, vec![0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn mask_target_equals_the_plain_two_pass_resize() {
        // Pseudo-random blobs, down- and upscaled, odd sizes, a 1-pixel image, an empty mask.
        let mut ones = 0;
        for (h, w, dh, dw, seed) in [
            (480usize, 640usize, 136usize, 184usize, 1u64),
            (427, 640, 120, 184, 2),
            (37, 23, 64, 48, 3),
            (1, 1, 8, 8, 4),
            (5, 9, 5, 9, 5),
            (64, 64, 16, 16, 0),
        ] {
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let (cy, cx) = ((next() % h as u64) as f64, (next() % w as u64) as f64);
            let r = 1.0 + (next() % (h.max(w) as u64)) as f64 / 2.0;
            let mask: Vec<u8> = (0..h * w)
                .map(|i| {
                    let (y, x) = ((i / w) as f64, (i % w) as f64);
                    let wobble = (next() % 3) as f64;
                    u8::from(seed != 0 && (y - cy).hypot(x - cx) + wobble < r)
                })
                .collect();
            let rle = Rle::encode_row_major(&mask, h as u32, w as u32).unwrap();
            let src: Vec<f32> = mask.iter().map(|&v| f32::from(v)).collect();
            let plain: Vec<u8> = cv2_resize_linear_f32(&src, h, w, dh, dw)
                .into_iter()
                .map(|v| u8::from(v > 0.5))
                .collect();
            assert_eq!(mask_target(&rle, dh, dw), plain, "{h}x{w} -> {dh}x{dw}");
            ones += plain.iter().filter(|&&v| v == 1).count();
        }
        assert!(ones > 1000, "the blobs must cover pixels ({ones})");
    }

    /// The prompt ids through the cached template frame equal tokenizing the whole rendered
    /// prompt, for prompts that push on the seams (the real Qwen2.5-VL tokenizer).
    #[test]
    fn framed_prompt_ids_equal_whole_text_ids() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/qwen2_5_vl_tokenizer");
        let mut tok = PadtTokenizer::from_dir(&dir, 151_936, 0).unwrap();
        tok.ensure_vrt_count(40).unwrap();
        let enc = SampleEncoder::new(tok, PatchSelection::default()).unwrap();
        assert!(enc.frame.as_ref().is_some_and(|f| f.frame.verbatim));
        let prompts = [
            "Please carefully check the image and detect the object this sentence describes: \"man on the left\".",
            "",
            " ",
            "  leading and trailing  \n",
            "\n\nnewlines\n",
            "<|im_end|>inside<|im_start|>",
            "ends with <|im_",
            "|>starts with a tail",
            "<|VRT_3|> and <|VRT_39|> and <|VRT_40|>",
            "e\u{301}\u{338}> combining marks, \u{4f60}\u{597d}, emoji \u{1f600}",
            "'s 're 123456 tokens",
        ];
        let merged = 391;
        for p in prompts {
            let (text, ids) = enc.encode_prompt(7, p, merged).unwrap();
            let rendered = enc.template().render_padt_prompt(p).unwrap();
            let whole = enc.tokenizer().encode(&rendered).unwrap();
            let image_pad = enc.tokenizer().special_ids().image_pad;
            assert_eq!(
                ids,
                expand_image_pad_ids(&whole, image_pad, &[merged]).unwrap(),
                "{p:?}"
            );
            assert_eq!(
                text,
                expand_image_pads(&rendered, &[merged]).unwrap(),
                "{p:?}"
            );
        }
        // A prompt holding an image pad fails the same way as the whole-text path.
        assert!(matches!(
            enc.encode_prompt(7, "<|image_pad|>", merged),
            Err(BatchError::Chat { record: 7, .. })
        ));
    }

    #[test]
    fn array_rows() {
        let a = Array {
            shape: vec![2, 3],
            data: vec![1, 2, 3, 4, 5, 6],
        };
        assert_eq!(a.row(1), &[4, 5, 6]);
    }
}
