//! Greedy generation over PaDT's dynamic vocabulary (padt-reference.md §6.1).
//!
//! Per batch, the vocabulary is `[text tokens (V) ; prototypes of every image (ΣNm)]`: a VRT id
//! `V + offset_b + i` is embedded as row `offset_b + i` of the prototype table and scored against
//! that row. Each sample only sees its own image's VRT columns (the per-image logit mask).
//! Prompts are left-padded; finished samples keep being fed the pad token (attention on), as
//! transformers' `generate` does. The last-layer hidden state that produced each generated token
//! is kept: it is the PaDT decoder's input for the VRTs of an object.

use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};
use padt_model::error::ModelError;
use padt_model::padt::PadtModel;
use padt_model::qwen2_5_vl::rope::GridThw;
use padt_model::qwen2_5_vl::vision::VisionOutput;

/// Errors of generation and post-processing.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("invalid generation input: {0}")]
    InvalidInput(String),
    #[error(
        "sample {sample}: the prompt has {prompt_len} tokens; with max_new_tokens \
         {max_new_tokens} that exceeds the model context of {context} positions \
         (max_position_embeddings)"
    )]
    ContextTooLong {
        sample: usize,
        prompt_len: usize,
        max_new_tokens: usize,
        context: usize,
    },
}

pub type Result<T> = std::result::Result<T, InferError>;

/// Settings of greedy generation.
#[derive(Debug, Clone)]
pub struct GenerationConfig {
    /// At most this many tokens per sample (the reference's eval uses 1024).
    pub max_new_tokens: usize,
    /// `<|im_end|>`: a sample is finished once it emits this id.
    pub eos_token_id: i64,
    /// Left padding of prompts, and the token fed to finished samples.
    pub pad_token_id: i64,
    /// Keys/values cached across steps (false = the whole sequence is re-run every step).
    pub use_cache: bool,
    /// Keep every step's masked logits (`[batch, V + ΣNm]` per step; memory grows with steps).
    pub keep_logits: bool,
    /// `max_position_embeddings`: prompt + max_new_tokens must fit (None = unchecked).
    pub max_context: Option<usize>,
}

impl GenerationConfig {
    /// Greedy, KV cache on, logits not kept, Qwen2.5-VL's `<|im_end|>` / `<|endoftext|>`.
    pub fn new(max_new_tokens: usize, eos_token_id: i64, pad_token_id: i64) -> Self {
        Self {
            max_new_tokens,
            eos_token_id,
            pad_token_id,
            use_cache: true,
            keep_logits: false,
            max_context: None,
        }
    }
}

/// A batch of prompts, one image each.
#[derive(Debug, Clone)]
pub struct GenerationRequest<B: Backend> {
    /// Unpadded prompt ids per sample (image pads already expanded; VRT ids, if any, local).
    pub prompts: Vec<Vec<i64>>,
    /// `[Σ patches, 1176]` processor output of the images, in sample order.
    pub pixel_values: Tensor<B, 2>,
    /// `(t, gh, gw)` per sample.
    pub grids: Vec<GridThw>,
}

/// What generation produced.
#[derive(Debug, Clone)]
pub struct Generation<B: Backend> {
    /// Padded prompt length (left padding).
    pub prompt_len: usize,
    /// Left-padded prompts with global VRT ids, `[batch][prompt_len]`.
    pub prompt_ids: Vec<Vec<i64>>,
    /// Generated ids per sample with **local** VRT ids, up to and including the first EOS
    /// (or all `steps` when the sample never emitted it).
    pub generated: Vec<Vec<i64>>,
    /// Whether each sample emitted EOS.
    pub finished: Vec<bool>,
    /// Number of decoding steps run (the longest sample).
    pub steps: usize,
    /// Last-layer hidden state that produced each step's token. `[batch, steps, D]`
    pub step_hidden: Tensor<B, 3>,
    /// Masked f32 logits of each step, `[steps][batch · (V + ΣNm)]` (`keep_logits`).
    pub step_logits: Option<Vec<Vec<f32>>>,
    /// Prototypes of all images `[ΣNm, D]` (`past_image_embeds`).
    pub prototypes: Tensor<B, 2>,
    /// The vision tower's outputs (high-res features and PE feed the decoder).
    pub vision: VisionOutput<B>,
    pub grids: Vec<GridThw>,
    /// Per-sample M-RoPE deltas after prefill (decode position = cache position + delta).
    pub rope_deltas: Vec<i64>,
    /// Last-layer hidden states of the padded prompt. `[batch, prompt_len, D]`
    pub prefill_last_hidden: Tensor<B, 3>,
    /// `V`: the first VRT id.
    pub vocab_size: usize,
    /// First prototype row of each sample's image.
    pub vrt_offsets: Vec<usize>,
    /// Merged tokens (VRTs) of each sample's image.
    pub vrt_counts: Vec<usize>,
}

/// Runs greedy generation (see the module docs).
pub fn generate<B: Backend>(
    model: &PadtModel<B>,
    request: &GenerationRequest<B>,
    config: &GenerationConfig,
) -> Result<Generation<B>> {
    let batch = request.prompts.len();
    if batch == 0 {
        return Err(InferError::InvalidInput("no prompt given".into()));
    }
    if request.grids.len() != batch {
        return Err(InferError::InvalidInput(format!(
            "PaDT needs exactly one image per prompt: {batch} prompts, {} images",
            request.grids.len()
        )));
    }
    if config.max_new_tokens == 0 {
        return Err(InferError::InvalidInput(
            "max_new_tokens must be at least 1".into(),
        ));
    }
    let prompt_len = request.prompts.iter().map(Vec::len).max().unwrap_or(0);
    for (sample, p) in request.prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(InferError::InvalidInput(format!(
                "prompt {sample} is empty"
            )));
        }
        if let Some(context) = config.max_context {
            if p.len() + config.max_new_tokens > context {
                return Err(InferError::ContextTooLong {
                    sample,
                    prompt_len: p.len(),
                    max_new_tokens: config.max_new_tokens,
                    context,
                });
            }
        }
    }
    let device = request.pixel_values.device();
    let v = model.vocab_size();
    let merge = model.qwen.config.vision_config.spatial_merge_size.pow(2);
    let vrt_counts: Vec<usize> = request
        .grids
        .iter()
        .map(|g| g[0] * g[1] * g[2] / merge)
        .collect();
    let vrt_offsets: Vec<usize> = vrt_counts
        .iter()
        .scan(0, |acc, &n| {
            let start = *acc;
            *acc += n;
            Some(start)
        })
        .collect();

    // Left padding; VRT ids of the prompts to global (`assign_to_global_vrt_id`).
    let mut ids: Vec<Vec<i64>> = Vec::with_capacity(batch);
    let mut mask: Vec<Vec<bool>> = Vec::with_capacity(batch);
    for (b, p) in request.prompts.iter().enumerate() {
        let pad = prompt_len - p.len();
        let mut row = vec![config.pad_token_id; pad];
        row.extend(p.iter().map(|&id| {
            if id >= v as i64 {
                id + vrt_offsets[b] as i64
            } else {
                id
            }
        }));
        ids.push(row);
        let mut m = vec![false; pad];
        m.extend(std::iter::repeat_n(true, p.len()));
        mask.push(m);
    }
    let prompt_ids = ids.clone();

    let vision = model.qwen.visual.forward(
        request.pixel_values.clone().cast(model.qwen.compute_dtype),
        &request.grids,
        false,
    )?;
    let prototypes = model.prototypes(vision.merged_embeds.clone());
    let logit_mask = model.logit_mask(&request.grids, &device);
    let width = v + prototypes.dims()[0];

    // Prefill.
    let embeds = model.embed(&ids, prototypes.clone(), vision.merged_embeds.clone())?;
    let positions = model.qwen.rope_index(&ids, &mask, &request.grids)?;
    let rope_deltas = positions.rope_deltas.clone();
    let mut cache = config.use_cache.then(|| model.qwen.new_cache());
    let text = model
        .qwen
        .model
        .forward(embeds, &positions, Some(&mask), cache.as_mut(), false)?;
    let prefill_last_hidden = text.last_hidden;
    let mut last = last_positions(prefill_last_hidden.clone());

    let mut generated_global: Vec<Vec<i64>> = vec![Vec::new(); batch];
    let mut finished = vec![false; batch];
    let mut step_hidden: Vec<Tensor<B, 2>> = Vec::new();
    let mut step_logits = config.keep_logits.then(Vec::new);
    for step in 0..config.max_new_tokens {
        let logits = masked_logits(model, last.clone(), prototypes.clone(), &logit_mask);
        let values = logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| InferError::InvalidInput(format!("logits readback: {e:?}")))?;
        step_hidden.push(last.clone());
        let mut next = Vec::with_capacity(batch);
        for b in 0..batch {
            let token = if finished[b] {
                config.pad_token_id
            } else {
                let id = argmax_first(&values[b * width..(b + 1) * width]) as i64;
                generated_global[b].push(id);
                if id == config.eos_token_id {
                    finished[b] = true;
                }
                id
            };
            next.push(token);
        }
        if let Some(all) = step_logits.as_mut() {
            all.push(values);
        }
        if finished.iter().all(|&f| f) || step + 1 == config.max_new_tokens {
            break;
        }
        for (b, &token) in next.iter().enumerate() {
            ids[b].push(token);
            mask[b].push(true);
        }
        last = match cache.as_mut() {
            Some(cache) => {
                let embeds = embed_step(model, &next, prototypes.clone(), &device);
                let out = model
                    .qwen
                    .decode(embeds, &rope_deltas, Some(&mask), cache)?;
                last_positions(out.last_hidden)
            }
            None => {
                let embeds = model.embed(&ids, prototypes.clone(), vision.merged_embeds.clone())?;
                let positions = model.qwen.rope_index(&ids, &mask, &request.grids)?;
                let out = model
                    .qwen
                    .model
                    .forward(embeds, &positions, Some(&mask), None, false)?;
                last_positions(out.last_hidden)
            }
        };
    }
    let steps = step_hidden.len();
    let step_hidden = Tensor::stack::<3>(step_hidden, 1);
    let generated = generated_global
        .iter()
        .enumerate()
        .map(|(b, row)| {
            row.iter()
                .map(|&id| {
                    if id >= v as i64 {
                        id - vrt_offsets[b] as i64
                    } else {
                        id
                    }
                })
                .collect()
        })
        .collect();
    Ok(Generation {
        prompt_len,
        prompt_ids,
        generated,
        finished,
        steps,
        step_hidden,
        step_logits,
        prototypes,
        vision,
        grids: request.grids.clone(),
        rope_deltas,
        prefill_last_hidden,
        vocab_size: v,
        vrt_offsets,
        vrt_counts,
    })
}

/// The hidden state at the last position of every sample.
///
/// # Shapes
/// - `hidden`: `[batch, len, D]` → `[batch, D]`
fn last_positions<B: Backend>(hidden: Tensor<B, 3>) -> Tensor<B, 2> {
    let [batch, len, dim] = hidden.dims();
    hidden
        .slice([0..batch, len - 1..len, 0..dim])
        .reshape([batch, dim])
}

/// Logits over `[text ; prototypes]` with each sample's logit mask (other images' VRTs −∞),
/// f32. The text and prototype blocks are two products (no `[V + ΣNm, D]` table copy).
///
/// # Shapes
/// - `hidden`: `[batch, D]`; `prototypes`: `[ΣNm, D]`; `mask`: `[batch, V + ΣNm]`
/// - returns `[batch, V + ΣNm]`
fn masked_logits<B: Backend>(
    model: &PadtModel<B>,
    hidden: Tensor<B, 2>,
    prototypes: Tensor<B, 2>,
    mask: &Tensor<B, 2, burn::tensor::Bool>,
) -> Tensor<B, 2> {
    let text = model.qwen.logits(hidden.clone());
    let proto = hidden
        .clone()
        .matmul(prototypes.cast(hidden.dtype()).transpose())
        .cast(DType::F32);
    Tensor::cat(vec![text, proto], 1).mask_fill(mask.clone(), f32::NEG_INFINITY)
}

/// Input embeddings of one new token per sample: text ids from `embed_tokens`, VRT ids
/// (`>= V`, global) from the prototype rows.
///
/// # Shapes
/// - `prototypes`: `[ΣNm, D]` → `[batch, 1, D]`
fn embed_step<B: Backend>(
    model: &PadtModel<B>,
    ids: &[i64],
    prototypes: Tensor<B, 2>,
    device: &B::Device,
) -> Tensor<B, 3> {
    let v = model.vocab_size() as i64;
    let batch = ids.len();
    let index = |f: &dyn Fn(i64) -> i64| {
        let idx: Vec<i64> = ids.iter().map(|&id| f(id)).collect();
        Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [batch]), device)
    };
    let table = model.qwen.model.embed_tokens.weight.val();
    let dim = table.dims()[1];
    let text = table
        .clone()
        .select(0, index(&|id| if id < v { id } else { 0 }));
    let proto = prototypes
        .cast(table.dtype())
        .select(0, index(&|id| if id >= v { id - v } else { 0 }));
    let is_vrt: Vec<bool> = ids.iter().map(|&id| id >= v).collect();
    let is_vrt =
        Tensor::<B, 1, burn::tensor::Bool>::from_data(TensorData::new(is_vrt, [batch]), device)
            .reshape([batch, 1])
            .expand([batch, dim]);
    text.mask_where(is_vrt, proto)
        .reshape([batch, 1, dim])
        .cast(model.qwen.compute_dtype)
}

/// Index of the first maximum (torch's `argmax` tie rule); NaN never wins.
pub fn argmax_first(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in values.iter().enumerate() {
        if x > values[best] || values[best].is_nan() && !x.is_nan() {
            best = i;
        }
    }
    best
}
