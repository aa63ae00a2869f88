//! `Qwen2_5_VLForConditionalGeneration`: vision tower + language model + output head.
//!
//! The high-level [`Qwen2_5Vl::forward`] runs the stock Qwen computation (text embeddings,
//! image embeddings scattered into the `<|image_pad|>` positions, M-RoPE, LLM, logits at the
//! positions asked for). PaDT builds its own input embeddings (prototype rows for VRT ids) and
//! calls the pieces: [`VisionTransformer::forward`], [`Qwen2_5Vl::scatter_image_embeds`],
//! [`get_rope_index`], [`TextModel::forward`], [`Qwen2_5Vl::lm_head_weight`].

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};

use super::config::Qwen2_5VlConfig;
use super::rope::{get_rope_index, GridThw, MropePositions, RopeTokens};
use super::text::{KvCache, TextModel, TextOutput};
use super::vision::{VisionOutput, VisionTransformer};
use crate::error::{ModelError, Result};
use crate::layers::Linear;
use crate::weights::{load_module, Checkpoint, LoadOptions, LoadReport};

/// The whole Qwen2.5-VL model. Field names are the checkpoint prefixes.
#[derive(Module, Debug)]
pub struct Qwen2_5Vl<B: Backend> {
    /// The language model (`model.*`).
    pub model: TextModel<B>,
    /// The vision tower (`visual.*`).
    pub visual: VisionTransformer<B>,
    /// Separate output head (`lm_head.weight`), `None` when `tie_word_embeddings`.
    pub lm_head: Option<Linear<B>>,
    pub config: Qwen2_5VlConfig,
    /// Dtype of the activations (`F32`, or `BF16` for mixed precision: parameters stay f32 and
    /// are cast inside each layer; norm statistics, softmax and logits stay f32).
    pub compute_dtype: DType,
}

/// Inputs of the stock forward pass.
#[derive(Debug, Clone)]
pub struct Qwen2_5VlInput<B: Backend> {
    /// `[batch][len]` token ids (all `< vocab_size`), left or right padded.
    pub input_ids: Vec<Vec<i64>>,
    /// `[batch][len]`, false = padding.
    pub attention_mask: Vec<Vec<bool>>,
    /// `[Σ patches, 1176]` processor output of all images, in batch order.
    pub pixel_values: Option<Tensor<B, 2>>,
    /// `(t, h, w)` per image.
    pub image_grid_thw: Vec<GridThw>,
}

/// Output of the stock forward pass.
#[derive(Debug, Clone)]
pub struct Qwen2_5VlOutput<B: Backend> {
    pub text: TextOutput<B>,
    pub vision: Option<VisionOutput<B>>,
    pub positions: MropePositions,
    /// `[n, vocab]` logits at the `(batch, position)` pairs asked for, in that order.
    pub logits: Option<Tensor<B, 2>>,
}

impl<B: Backend> Qwen2_5Vl<B> {
    /// A lazily initialised model: no parameter memory is allocated until a parameter is used
    /// or loaded, so a 7B model can be built to inspect or count it.
    pub fn new(config: &Qwen2_5VlConfig, device: &B::Device) -> Self {
        Self {
            model: TextModel::new(config, device),
            visual: VisionTransformer::new(&config.vision_config, device),
            lm_head: (!config.tie_word_embeddings).then(|| {
                Linear::new(
                    config.hidden_size,
                    config.vocab_size,
                    false,
                    config.initializer_range,
                    device,
                )
            }),
            config: config.clone(),
            compute_dtype: DType::F32,
        }
    }

    /// Sets the activation dtype of [`Self::forward`], [`Self::decode`] and
    /// [`Self::embed_text`]; parameters stay f32.
    pub fn with_compute_dtype(mut self, dtype: DType) -> Self {
        self.compute_dtype = dtype;
        self
    }

    /// Reads `config.json` and the safetensors weights (one file or sharded) from `dir`.
    /// `options.extra_prefixes` lists checkpoint prefixes that belong to other modules (PaDT:
    /// `vis_norm`, `vis_proj`, `vl_decoder`).
    pub fn from_pretrained(
        dir: impl AsRef<Path>,
        options: &LoadOptions,
        device: &B::Device,
    ) -> Result<(Self, LoadReport)> {
        let dir = dir.as_ref();
        let config = Qwen2_5VlConfig::from_file(dir.join("config.json"))?;
        let checkpoint = Checkpoint::open(dir)?;
        let mut options = options.clone();
        if config.tie_word_embeddings {
            // Some exporters also write the tied head; transformers ignores it.
            options.extra_prefixes.push("lm_head.".into());
        }
        load_module(Self::new(&config, device), &checkpoint, &options, device)
    }

    /// Number of parameters, from the module structure, without allocating them.
    pub fn num_params_lazy(&self) -> usize {
        count_params_lazy::<B, _>(self)
    }

    /// Output classifier rows `[vocab, hidden]` (the embedding table when tied).
    pub fn lm_head_weight(&self) -> Tensor<B, 2> {
        match &self.lm_head {
            Some(head) => head.weight.val(),
            None => self.model.embed_tokens.weight.val(),
        }
    }

    /// Logits of the given hidden states, computed in their dtype and returned as f32.
    ///
    /// # Shapes
    /// - `hidden`: `[n, hidden]` → `[n, vocab]`
    pub fn logits(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        let weight = self.lm_head_weight().cast(hidden.dtype());
        hidden.matmul(weight.transpose()).cast(DType::F32)
    }

    /// Picks the hidden states at `(batch, position)` pairs.
    ///
    /// # Shapes
    /// - `hidden`: `[batch, len, dim]` → `[positions.len(), dim]`
    pub fn gather_positions(hidden: Tensor<B, 3>, positions: &[(usize, usize)]) -> Tensor<B, 2> {
        let [batch, len, dim] = hidden.dims();
        let index: Vec<i64> = positions
            .iter()
            .map(|&(b, l)| (b * len + l) as i64)
            .collect();
        let n = index.len();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [n]), &hidden.device());
        hidden.reshape([batch * len, dim]).select(0, index)
    }

    /// Text embeddings of `input_ids`; every id must be below `vocab_size`.
    ///
    /// # Shapes
    /// - returns `[batch, len, hidden]`
    pub fn embed_text(&self, input_ids: &[Vec<i64>], device: &B::Device) -> Result<Tensor<B, 3>> {
        let batch = input_ids.len();
        let len = input_ids.first().map_or(0, Vec::len);
        let vocab = self.config.vocab_size as i64;
        let mut flat = Vec::with_capacity(batch * len);
        for (b, row) in input_ids.iter().enumerate() {
            if row.len() != len {
                return Err(ModelError::InvalidInput(format!(
                    "input_ids row {b} has length {}, row 0 has {len}",
                    row.len()
                )));
            }
            if let Some(bad) = row.iter().find(|&&id| id < 0 || id >= vocab) {
                return Err(ModelError::InvalidInput(format!(
                    "input_ids row {b}: token id {bad} outside the vocabulary 0..{vocab}"
                )));
            }
            flat.extend_from_slice(row);
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [batch, len]), device);
        Ok(self
            .model
            .embed_tokens
            .forward(ids)
            .cast(self.compute_dtype))
    }

    /// Replaces the rows at `<|image_pad|>` positions (row-major over batch and position) by
    /// the merged image embeddings, in order (transformers' masked scatter).
    ///
    /// # Shapes
    /// - `inputs_embeds`: `[batch, len, hidden]`; `image_embeds`: `[n_image_tokens, hidden]`
    pub fn scatter_image_embeds(
        &self,
        inputs_embeds: Tensor<B, 3>,
        input_ids: &[Vec<i64>],
        image_embeds: Tensor<B, 2>,
    ) -> Result<Tensor<B, 3>> {
        let [batch, len, dim] = inputs_embeds.dims();
        let n_image = image_embeds.dims()[0];
        let image_token = self.config.image_token_id;
        let mut index = Vec::with_capacity(batch * len);
        let mut next = 0usize;
        for (b, row) in input_ids.iter().enumerate() {
            for (l, &id) in row.iter().enumerate() {
                if id == image_token {
                    index.push((batch * len + next) as i64);
                    next += 1;
                } else {
                    index.push((b * len + l) as i64);
                }
            }
        }
        if next != n_image {
            return Err(ModelError::InvalidInput(format!(
                "image features and image tokens do not match: {next} <|image_pad|> tokens, \
                 {n_image} merged image embeddings"
            )));
        }
        let device = inputs_embeds.device();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [batch * len]), &device);
        let rows = Tensor::cat(
            vec![inputs_embeds.reshape([batch * len, dim]), image_embeds],
            0,
        );
        Ok(rows.select(0, index).reshape([batch, len, dim]))
    }

    /// M-RoPE positions of a batch (transformers `get_rope_index`).
    pub fn rope_index(
        &self,
        input_ids: &[Vec<i64>],
        attention_mask: &[Vec<bool>],
        grids: &[GridThw],
    ) -> Result<MropePositions> {
        get_rope_index(
            input_ids,
            attention_mask,
            grids,
            RopeTokens {
                image_token_id: self.config.image_token_id,
                vision_start_token_id: self.config.vision_start_token_id,
                spatial_merge_size: self.config.vision_config.spatial_merge_size,
            },
        )
    }

    /// Stock forward (prefill): vision tower, image scatter, M-RoPE, language model, and the
    /// logits at `logits_at` (`(batch, position)` pairs; empty = no logits). With a `cache`,
    /// keys/values are stored for [`Self::decode`].
    pub fn forward(
        &self,
        input: &Qwen2_5VlInput<B>,
        logits_at: &[(usize, usize)],
        cache: Option<&mut KvCache<B>>,
        output_hidden_states: bool,
        device: &B::Device,
    ) -> Result<Qwen2_5VlOutput<B>> {
        let mut embeds = self.embed_text(&input.input_ids, device)?;
        let vision = match &input.pixel_values {
            Some(pixels) => {
                let out = self.visual.forward(
                    pixels.clone().cast(self.compute_dtype),
                    &input.image_grid_thw,
                    false,
                )?;
                embeds =
                    self.scatter_image_embeds(embeds, &input.input_ids, out.merged_embeds.clone())?;
                Some(out)
            }
            None => None,
        };
        let positions = self.rope_index(
            &input.input_ids,
            &input.attention_mask,
            &input.image_grid_thw,
        )?;
        let text = self.model.forward(
            embeds,
            &positions,
            Some(&input.attention_mask),
            cache,
            output_hidden_states,
        )?;
        let logits = (!logits_at.is_empty())
            .then(|| self.logits(Self::gather_positions(text.last_hidden.clone(), logits_at)));
        Ok(Qwen2_5VlOutput {
            text,
            vision,
            positions,
            logits,
        })
    }

    /// One generation step on given input embeddings (one or more new tokens per sample),
    /// after a prefill that filled `cache`. `attention_mask` covers cached + new positions.
    ///
    /// # Shapes
    /// - `inputs_embeds`: `[batch, new, hidden]` → last hidden `[batch, new, hidden]`
    pub fn decode(
        &self,
        inputs_embeds: Tensor<B, 3>,
        rope_deltas: &[i64],
        attention_mask: Option<&[Vec<bool>]>,
        cache: &mut KvCache<B>,
    ) -> Result<TextOutput<B>> {
        let new = inputs_embeds.dims()[1];
        let inputs_embeds = inputs_embeds.cast(self.compute_dtype);
        let positions = MropePositions::decode(rope_deltas, cache.len(), new);
        self.model.forward(
            inputs_embeds,
            &positions,
            attention_mask,
            Some(cache),
            false,
        )
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.model.layers.len())
    }
}

/// Counts the parameters of any module from their (lazy) shapes, without initialising them.
pub fn count_params_lazy<B: Backend, M: Module<B>>(module: &M) -> usize {
    struct Counter(usize);
    impl<B: Backend> ModuleVisitor<B> for Counter {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0 += param.lazy_shape().num_elements();
        }
    }
    let mut counter = Counter(0);
    module.visit(&mut counter);
    counter.0
}
