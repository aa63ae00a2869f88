//! `PaDTForConditionalGeneration` (padt-reference.md §1.3–§1.6): Qwen2.5-VL plus
//!
//! - the visual prototypes `f_vp`: `vis_norm` (LayerNorm, zero-initialised) and the rank-64
//!   residual `vis_proj`, switchable off (`use_visual_prototype_projection`);
//! - the dynamic vocabulary: per batch, the embedding table and the classifier are extended with
//!   the prototypes of every image (`<|VRT_i|>` of sample b = global id `V + offset_b + i`), the
//!   `<|image_pad|>` positions take the raw merger output, and a per-image logit mask lets a
//!   sample emit only its own image's VRTs;
//! - the PaDT decoder ([`crate::decoder`]) fed with the last-layer hidden state at the position
//!   that predicts each VRT (or, during the decoder warm-up, the VRTs' prototypes).
//!
//! Module paths are the checkpoint keys: the Qwen2.5-VL part sits in the field `qwen`, whose
//! name is dropped by [`PADT_KEY_RENAMES`].

use std::path::Path;

use burn::module::{Initializer, Module, Param};
use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

use crate::decoder::{
    decoder_config_from_model_config, DecoderInput, DecoderOutput, HighResOrder, PadtDecoder,
    PadtDecoderConfig, DECODER_KEY_RENAMES,
};
use crate::error::{ModelError, Result};
use crate::layers::Linear;
use crate::qwen2_5_vl::config::Qwen2_5VlConfig;
use crate::qwen2_5_vl::rope::GridThw;
use crate::qwen2_5_vl::vision::VisionOutput;
use crate::weights::{load_module, Checkpoint, LoadOptions, LoadReport};
use crate::Qwen2_5Vl;

/// Rank of `vis_proj` (`lora_r` in the reference).
pub const VIS_PROJ_RANK: usize = 64;

/// Module fragment → checkpoint fragment renames of the PaDT model (the decoder's `Sequential`s
/// and `vis_proj`, and the `qwen` wrapper field, which has no checkpoint prefix).
pub fn padt_key_renames() -> Vec<(String, String)> {
    let mut renames: Vec<(String, String)> = DECODER_KEY_RENAMES
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    renames.extend(
        PADT_KEY_RENAMES
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string())),
    );
    renames
}

/// Renames of the PaDT-specific modules (see [`padt_key_renames`] for the full list).
pub const PADT_KEY_RENAMES: &[(&str, &str)] = &[
    ("vis_proj.down", "vis_proj.0"),
    ("vis_proj.up", "vis_proj.1"),
    ("qwen", ""),
];

/// `vis_norm`: `nn.LayerNorm(D)`, eps 1e-5, with PaDT's zero initialisation of weight and bias.
#[derive(Module, Debug)]
pub struct VisNorm<B: Backend> {
    /// `[D]`
    pub weight: Param<Tensor<B, 1>>,
    /// `[D]`
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> VisNorm<B> {
    const EPS: f64 = 1e-5;

    fn new(dim: usize, device: &B::Device) -> Self {
        Self {
            weight: Initializer::Zeros.init([dim], device),
            bias: Initializer::Zeros.init([dim], device),
        }
    }

    /// # Shapes
    /// - `x`: `[n, D]` → `[n, D]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let dtype = x.dtype();
        let x = x.cast(burn::tensor::DType::F32);
        let mean = x.clone().mean_dim(1);
        let centered = x - mean;
        let var = centered.clone().square().mean_dim(1);
        let normed = centered / (var + Self::EPS).sqrt();
        (normed * self.weight.val().unsqueeze::<2>() + self.bias.val().unsqueeze::<2>()).cast(dtype)
    }
}

/// `vis_proj`: `Linear(D→64) → Linear(64→D)`, no biases, no activation.
#[derive(Module, Debug)]
pub struct VisProj<B: Backend> {
    pub down: Linear<B>,
    pub up: Linear<B>,
}

/// The PaDT model.
#[derive(Module, Debug)]
pub struct PadtModel<B: Backend> {
    /// Qwen2.5-VL (`model.*`, `visual.*`, `lm_head`).
    pub qwen: Qwen2_5Vl<B>,
    pub vis_norm: VisNorm<B>,
    pub vis_proj: VisProj<B>,
    pub vl_decoder: PadtDecoder<B>,
    /// `use_visual_prototype_projection`: false = prototypes are the raw merger output.
    pub use_visual_prototype_projection: bool,
}

/// A PaDT `config.json`: the Qwen2.5-VL config plus `vl_decoder` and the prototype switch.
#[derive(Debug, Clone)]
pub struct PadtConfig {
    pub qwen: Qwen2_5VlConfig,
    pub decoder: PadtDecoderConfig,
    pub use_visual_prototype_projection: bool,
}

impl PadtConfig {
    /// Reads a PaDT `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let qwen = Qwen2_5VlConfig::from_json_str(&text, path)?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Config {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let decoder = decoder_config_from_model_config(&value, path)?;
        check_decoder_fits_vision(&decoder, &qwen, path)?;
        let use_visual_prototype_projection = value
            .get("use_visual_prototype_projection")
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        Ok(Self {
            qwen,
            decoder,
            use_visual_prototype_projection,
        })
    }

    /// A new PaDT model on top of a Qwen2.5-VL config, as the reference's trainer builds it
    /// (real-size decoder, prototypes on). The reference injects a 1280-wide, 16-head decoder
    /// with a 3420 MLP, which is the ViT's width, heads and MLP width of every published
    /// Qwen2.5-VL; the decoder is sized from `vision_config` here, so the same holds for
    /// smaller test configs (the decoder must share the ViT's width and head dim).
    pub fn from_qwen(qwen: Qwen2_5VlConfig) -> Self {
        let mut decoder = PadtDecoderConfig::reference(qwen.hidden_size);
        decoder.hidden_size = qwen.vision_config.hidden_size;
        decoder.num_heads = qwen.vision_config.num_heads;
        decoder.intermediate_size = qwen.vision_config.intermediate_size;
        decoder.spatial_merge_size = qwen.vision_config.spatial_merge_size;
        Self {
            qwen,
            decoder,
            use_visual_prototype_projection: true,
        }
    }
}

/// The decoder takes the raw high-res ViT features (no projection) and reuses the ViT rotary PE,
/// so its width and head dim must be the ViT's, and `llm_hidden_state` the LLM width.
fn check_decoder_fits_vision(
    decoder: &PadtDecoderConfig,
    qwen: &Qwen2_5VlConfig,
    path: &Path,
) -> Result<()> {
    let vision = &qwen.vision_config;
    let mismatch = |message: String| ModelError::Config {
        path: path.to_path_buf(),
        message,
    };
    if decoder.num_heads == 0 || !decoder.hidden_size.is_multiple_of(decoder.num_heads) {
        return Err(mismatch(format!(
            "vl_decoder.hidden_size {} is not a multiple of vl_decoder.num_heads {}",
            decoder.hidden_size, decoder.num_heads
        )));
    }
    if decoder.hidden_size != vision.hidden_size
        || decoder.hidden_size / decoder.num_heads != vision.hidden_size / vision.num_heads
    {
        return Err(mismatch(format!(
            "vl_decoder (hidden_size {}, num_heads {}) must have the vision tower's width and head \
             dim (vision_config.hidden_size {}, num_heads {}): the decoder reads the high-res ViT \
             features and reuses the ViT rotary embedding; add or fix the `vl_decoder` section",
            decoder.hidden_size, decoder.num_heads, vision.hidden_size, vision.num_heads
        )));
    }
    if decoder.llm_hidden_state != qwen.hidden_size {
        return Err(mismatch(format!(
            "vl_decoder.llm_hidden_state {} differs from the LLM hidden_size {}",
            decoder.llm_hidden_state, qwen.hidden_size
        )));
    }
    Ok(())
}

/// Inputs of a training forward (teacher forcing).
#[derive(Debug, Clone)]
pub struct PadtTrainInput<B: Backend> {
    /// `[batch][prompt_len + completion_len]`: left-padded prompt ++ right-padded completion,
    /// VRT ids global.
    pub input_ids: Vec<Vec<i64>>,
    /// Same shape; false = padding (can sit in the middle of a row).
    pub attention_mask: Vec<Vec<bool>>,
    /// Padded prompt length `P`: logits at `P-1 .. L-1` predict the completion.
    pub prompt_len: usize,
    /// `[Σ patches, 1176]` processor output of the images, one image per sample.
    pub pixel_values: Tensor<B, 2>,
    /// `(t, h, w)` per image.
    pub image_grid_thw: Vec<GridThw>,
    /// Feed the decoder the VRTs' prototypes instead of the hidden states (warm-up).
    pub warmup: bool,
}

/// Outputs of a training forward.
#[derive(Debug, Clone)]
pub struct PadtTrainOutput<B: Backend> {
    /// Completion logits with the per-image logit mask applied (−∞).
    /// `[batch, completion_len, V + ΣNm]`
    pub logits: Tensor<B, 3>,
    /// Decoder outputs for the objects parsed from the completions (teacher forcing), or for the
    /// dummy object when the batch has none (`has_objects` false).
    pub decoder: DecoderOutput<B>,
    /// False when the batch had no object and `decoder` is the dummy object.
    pub has_objects: bool,
    /// Prototypes `[ΣNm, D]` (`past_image_embeds`).
    pub prototypes: Tensor<B, 2>,
    /// The vision tower's outputs (`merged_embeds`, high-res features, PE).
    pub vision: VisionOutput<B>,
    /// The decoder's VRT features `[Σk, D]` and their per-object counts.
    pub decoder_feats: Option<(Tensor<B, 2>, Vec<usize>)>,
}

/// A maximal run of consecutive VRT tokens in a completion: one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrtRun {
    /// Sample index.
    pub sample: usize,
    /// Completion positions of the run's tokens.
    pub positions: Vec<usize>,
    /// Their global VRT ids minus `V` (rows of the prototype table).
    pub prototype_rows: Vec<usize>,
}

/// Objects of teacher-forced completions: maximal runs of ids `>= vocab_size`, stopping at the
/// first `eos` of each sample (as `parseVRTintoCompletion` does on ground-truth completions).
pub fn vrt_runs(completions: &[&[i64]], vocab_size: usize, eos: i64) -> Vec<VrtRun> {
    let mut runs = Vec::new();
    for (sample, ids) in completions.iter().enumerate() {
        let mut current: Option<VrtRun> = None;
        for (j, &id) in ids.iter().enumerate() {
            if id == eos {
                break;
            }
            if id >= vocab_size as i64 {
                let run = current.get_or_insert_with(|| VrtRun {
                    sample,
                    positions: Vec::new(),
                    prototype_rows: Vec::new(),
                });
                run.positions.push(j);
                run.prototype_rows.push(id as usize - vocab_size);
            } else if let Some(run) = current.take() {
                runs.push(run);
            }
        }
        if let Some(run) = current.take() {
            runs.push(run);
        }
    }
    runs
}

impl<B: Backend> PadtModel<B> {
    /// A lazily initialised PaDT model (the reference's init for the new modules).
    pub fn new(config: &PadtConfig, device: &B::Device) -> Self {
        let d = config.qwen.hidden_size;
        let std = config.qwen.initializer_range;
        Self {
            qwen: Qwen2_5Vl::new(&config.qwen, device),
            vis_norm: VisNorm::new(d, device),
            vis_proj: VisProj {
                down: Linear::new(d, VIS_PROJ_RANK, false, std, device),
                up: Linear::new(VIS_PROJ_RANK, d, false, std, device),
            },
            vl_decoder: PadtDecoder::new(&config.decoder, std, device),
            use_visual_prototype_projection: config.use_visual_prototype_projection,
        }
    }

    /// Loads a PaDT checkpoint directory (`config.json` + safetensors). Missing or unused
    /// tensors are errors unless `options` allows them (a base Qwen2.5-VL checkpoint lacks the
    /// PaDT modules: pass `allow_missing` to start from it).
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        options: &LoadOptions,
        device: &B::Device,
    ) -> Result<(Self, LoadReport)> {
        let dir = dir.as_ref();
        let config = PadtConfig::from_file(dir.join("config.json"))?;
        let checkpoint = Checkpoint::open(dir)?;
        let mut options = options.clone();
        options.renames.extend(padt_key_renames());
        if config.qwen.tie_word_embeddings {
            options.extra_prefixes.push("lm_head".into());
        }
        load_module(Self::new(&config, device), &checkpoint, &options, device)
    }

    /// The LLM's embedding rows `V` (`config.vocab_size`): global VRT ids start here.
    pub fn vocab_size(&self) -> usize {
        self.qwen.config.vocab_size
    }

    /// Visual prototypes of merged image tokens.
    ///
    /// # Shapes
    /// - `merged`: `[ΣNm, D]` → `[ΣNm, D]`
    pub fn prototypes(&self, merged: Tensor<B, 2>) -> Tensor<B, 2> {
        if !self.use_visual_prototype_projection {
            return merged;
        }
        let normed = self.vis_norm.forward(merged);
        normed.clone() + self.vis_proj.up.forward(self.vis_proj.down.forward(normed))
    }

    /// Input embeddings of ids over the extended table `[embed_tokens ; prototypes]`, then the
    /// `<|image_pad|>` positions overwritten by the raw merger output.
    ///
    /// # Shapes
    /// - `prototypes`, `merged`: `[ΣNm, D]` → `[batch, len, D]`
    pub fn embed(
        &self,
        input_ids: &[Vec<i64>],
        prototypes: Tensor<B, 2>,
        merged: Tensor<B, 2>,
    ) -> Result<Tensor<B, 3>> {
        let device = prototypes.device();
        let batch = input_ids.len();
        let len = input_ids.first().map_or(0, Vec::len);
        let n_proto = prototypes.dims()[0] as i64;
        let v = self.vocab_size() as i64;
        let mut flat = Vec::with_capacity(batch * len);
        for (b, row) in input_ids.iter().enumerate() {
            if row.len() != len {
                return Err(ModelError::InvalidInput(format!(
                    "input_ids row {b} has length {}, row 0 has {len}",
                    row.len()
                )));
            }
            if let Some(bad) = row.iter().find(|&&id| id < 0 || id >= v + n_proto) {
                return Err(ModelError::InvalidInput(format!(
                    "input_ids row {b}: id {bad} is neither a token (< {v}) nor a VRT of this \
                     batch (< {})",
                    v + n_proto
                )));
            }
            flat.extend_from_slice(row);
        }
        let table = Tensor::cat(
            vec![
                self.qwen.model.embed_tokens.weight.val(),
                prototypes.cast(self.qwen.model.embed_tokens.weight.val().dtype()),
            ],
            0,
        );
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [batch * len]), &device);
        let dim = table.dims()[1];
        let embeds = table
            .select(0, ids)
            .reshape([batch, len, dim])
            .cast(self.qwen.compute_dtype);
        self.qwen
            .scatter_image_embeds(embeds, input_ids, merged.cast(self.qwen.compute_dtype))
    }

    /// Classifier rows `[V + ΣNm, D]`: `[embed_tokens ; prototypes]` when tied, else
    /// `[lm_head ; prototypes]`.
    /// The rows take the head's dtype (f32 parameters; the bf16 path makes bf16 prototypes).
    pub fn classifier(&self, prototypes: Tensor<B, 2>) -> Tensor<B, 2> {
        let head = self.qwen.lm_head_weight();
        let dtype = head.dtype();
        Tensor::cat(vec![head, prototypes.cast(dtype)], 0)
    }

    /// Per-image logit mask over the extended vocabulary, `true` = forbidden: the VRT columns of
    /// every other image.
    ///
    /// # Shapes
    /// - returns `[n_images, V + ΣNm]`
    pub fn logit_mask(&self, grids: &[GridThw], device: &B::Device) -> Tensor<B, 2, Bool> {
        let (mask, width) = self.logit_mask_rows(grids);
        Tensor::from_data(TensorData::new(mask, [grids.len(), width]), device)
    }

    /// [`Self::logit_mask`] as an additive bias (`-inf` = forbidden), each image's row repeated
    /// for `rows` positions: built on the host at the logits' full shape, so masking is a
    /// contiguous add with a free backward.
    ///
    /// # Shapes
    /// - returns `[n_images, rows, V + ΣNm]`
    pub fn logit_bias(&self, grids: &[GridThw], rows: usize, device: &B::Device) -> Tensor<B, 3> {
        let (mask, width) = self.logit_mask_rows(grids);
        let mut bias = Vec::with_capacity(grids.len() * rows * width);
        for row in mask.chunks(width.max(1)) {
            for _ in 0..rows {
                bias.extend(row.iter().map(|&m| if m { f32::NEG_INFINITY } else { 0.0 }));
            }
        }
        Tensor::from_data(TensorData::new(bias, [grids.len(), rows, width]), device)
    }

    /// The rows of [`Self::logit_mask`], flat, and their width `V + ΣNm`.
    fn logit_mask_rows(&self, grids: &[GridThw]) -> (Vec<bool>, usize) {
        let merge = self.qwen.config.vision_config.spatial_merge_size.pow(2);
        let counts: Vec<usize> = grids.iter().map(|g| g[0] * g[1] * g[2] / merge).collect();
        let total: usize = counts.iter().sum();
        let v = self.vocab_size();
        let width = v + total;
        let mut mask = vec![false; grids.len() * width];
        let mut start = 0;
        for (i, &n) in counts.iter().enumerate() {
            for c in 0..total {
                mask[i * width + v + c] = c < start || c >= start + n;
            }
            start += n;
        }
        (mask, width)
    }

    /// The decoder's high-res features and rotary `(cos, sin)`, in the order its
    /// [`HighResOrder`] expects (the ViT's window order for the reference behaviour, processor
    /// order for the corrected one).
    ///
    /// # Shapes
    /// - returns `([ΣNh, hidden], [ΣNh, head_dim], [ΣNh, head_dim])`
    pub fn decoder_image_inputs(
        &self,
        vision: &VisionOutput<B>,
    ) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
        match self.vl_decoder.high_res_order() {
            HighResOrder::Reference => (
                vision.high_res.clone(),
                vision.rotary_cos.clone(),
                vision.rotary_sin.clone(),
            ),
            HighResOrder::Raster => (
                vision.to_processor_order(vision.high_res.clone()),
                vision.to_processor_order(vision.rotary_cos.clone()),
                vision.to_processor_order(vision.rotary_sin.clone()),
            ),
        }
    }

    /// The training forward of `compute_loss`: vision tower, prototypes, extended embeddings,
    /// LLM, masked completion logits, and the decoder on the objects of the (ground-truth)
    /// completions.
    pub fn forward_train(
        &self,
        input: &PadtTrainInput<B>,
        eos_token_id: i64,
    ) -> Result<PadtTrainOutput<B>> {
        let device = input.pixel_values.device();
        let batch = input.input_ids.len();
        if input.image_grid_thw.len() != batch {
            return Err(ModelError::InvalidInput(format!(
                "PaDT needs exactly one image per sample: {batch} samples, {} images",
                input.image_grid_thw.len()
            )));
        }
        let len = input.input_ids.first().map_or(0, Vec::len);
        if input.prompt_len == 0 || input.prompt_len >= len {
            return Err(ModelError::InvalidInput(format!(
                "prompt length {} does not leave a completion in sequences of length {len}",
                input.prompt_len
            )));
        }
        let completion_len = len - input.prompt_len;

        let vision = self.qwen.visual.forward(
            input.pixel_values.clone().cast(self.qwen.compute_dtype),
            &input.image_grid_thw,
            false,
        )?;
        let prototypes = self.prototypes(vision.merged_embeds.clone());
        let embeds = self.embed(
            &input.input_ids,
            prototypes.clone(),
            vision.merged_embeds.clone(),
        )?;
        let positions = self.qwen.rope_index(
            &input.input_ids,
            &input.attention_mask,
            &input.image_grid_thw,
        )?;
        let text = self.qwen.model.forward(
            embeds,
            &positions,
            Some(&input.attention_mask),
            None,
            false,
        )?;
        let last = text.last_hidden;

        // Logits at P-1 .. L-2, which predict the completion tokens.
        let rows: Vec<(usize, usize)> = (0..batch)
            .flat_map(|b| (0..completion_len).map(move |j| (b, input.prompt_len - 1 + j)))
            .collect();
        let hidden = Qwen2_5Vl::gather_positions(last, &rows);
        let dim = hidden.dims()[1];
        let classifier = self.classifier(prototypes.clone());
        let width = classifier.dims()[0];
        let logits = hidden
            .clone()
            .matmul(classifier.cast(hidden.dtype()).transpose())
            .cast(burn::tensor::DType::F32)
            .reshape([batch, completion_len, width]);
        let logits = logits + self.logit_bias(&input.image_grid_thw, completion_len, &device);

        // Objects: runs of VRTs in the completions; features = hidden state predicting each VRT
        // (the row of `hidden` at the VRT's completion position), or its prototype (warm-up).
        let completions: Vec<&[i64]> = input
            .input_ids
            .iter()
            .map(|row| &row[input.prompt_len..])
            .collect();
        let runs = vrt_runs(&completions, self.vocab_size(), eos_token_id);
        let index = |idx: Vec<i64>| {
            let n = idx.len();
            Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [n]), &device)
        };
        let (decoder, has_objects, decoder_feats) = if runs.is_empty() {
            let out = self.vl_decoder.forward_dummy(dim, &device);
            (out, false, None)
        } else {
            let feats = if input.warmup {
                let proto_rows = runs
                    .iter()
                    .flat_map(|r| r.prototype_rows.iter().map(|&p| p as i64))
                    .collect();
                prototypes.clone().select(0, index(proto_rows))
            } else {
                let hidden_rows = runs
                    .iter()
                    .flat_map(|r| {
                        r.positions
                            .iter()
                            .map(move |&j| (r.sample * completion_len + j) as i64)
                    })
                    .collect();
                hidden.select(0, index(hidden_rows))
            };
            let feats_len: Vec<usize> = runs.iter().map(|r| r.positions.len()).collect();
            let (high_res, pe_cos, pe_sin) = self.decoder_image_inputs(&vision);
            let decoder = self.vl_decoder.forward(DecoderInput {
                object_feats: feats.clone(),
                feats_len: feats_len.clone(),
                object_image: runs.iter().map(|r| r.sample).collect(),
                prototypes: prototypes.clone(),
                high_res,
                pe_cos,
                pe_sin,
                grids: input.image_grid_thw.clone(),
            })?;
            (decoder, true, Some((feats, feats_len)))
        };
        // Losses are computed in f32, whatever the compute dtype.
        let f32 = burn::tensor::DType::F32;
        let decoder = DecoderOutput {
            pred_boxes: decoder.pred_boxes.cast(f32),
            pred_score: decoder.pred_score.cast(f32),
            pred_mask: decoder.pred_mask.map(|m| m.cast(f32)),
            ..decoder
        };
        Ok(PadtTrainOutput {
            logits,
            decoder,
            has_objects,
            prototypes,
            vision,
            decoder_feats,
        })
    }
}
