//! The Qwen2.5-VL language model (`model.*`): embeddings, decoder layers with grouped-query
//! attention (q/k/v biases) and M-RoPE, final RMSNorm, and a KV cache for generation.

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor, TensorData};

use super::config::Qwen2_5VlConfig;
use super::rope::{mrope_tables, MropePositions, Rotary};
use super::vision::GatedMlp;
use crate::attention::{attention, swap_dims_1_2_contiguous, MASKED};
use crate::error::{ModelError, Result};
use crate::layers::{Embedding, Linear, RmsNorm};

/// `model.layers.{i}.self_attn`.
#[derive(Module, Debug)]
pub struct TextAttention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
}

/// Keys and values of one layer for all positions seen so far.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    /// `[batch, kv_heads, cached_len, head_dim]`
    pub keys: Tensor<B, 4>,
    /// `[batch, kv_heads, cached_len, head_dim]`
    pub values: Tensor<B, 4>,
}

/// KV cache of the whole language model.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub layers: Vec<Option<LayerCache<B>>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |c| c.keys.dims()[2])
    }

    /// True when nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Per-forward inputs every decoder layer shares: rotary tables for the query and key shapes
/// and the attention bias, built once in [`TextModel::forward`].
#[derive(Debug, Clone)]
pub struct LayerContext<B: Backend> {
    /// Rotary for `[batch, heads, len, head_dim]`.
    pub rotary_q: Rotary<B, 4>,
    /// Rotary for `[batch, kv_heads, len, head_dim]`.
    pub rotary_k: Rotary<B, 4>,
    /// `[batch, heads, len, cached + len]`: 0 = visible, [`MASKED`] = masked.
    pub bias: Tensor<B, 4>,
}

impl<B: Backend> TextAttention<B> {
    /// # Shapes
    /// - `x`: `[batch, len, hidden]` → `[batch, len, hidden]`; `context` as built for them
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        context: &LayerContext<B>,
        cache: Option<&mut Option<LayerCache<B>>>,
    ) -> Tensor<B, 3> {
        let [batch, len, hidden] = x.dims();
        let head_dim = hidden / self.num_heads;
        // Heads first as contiguous tensors, then rotary: the products and their backward run
        // on same-shape contiguous operands, and q needs no copy for grouped-query attention.
        let heads = |t: Tensor<B, 3>, n: usize| {
            swap_dims_1_2_contiguous(t.reshape([batch, len, n, head_dim]))
        };
        let q = context
            .rotary_q
            .apply(heads(self.q_proj.forward(x.clone()), self.num_heads));
        let mut k = context
            .rotary_k
            .apply(heads(self.k_proj.forward(x.clone()), self.num_kv_heads));
        let mut v = heads(self.v_proj.forward(x), self.num_kv_heads);
        if let Some(slot) = cache {
            if let Some(prev) = slot.take() {
                k = Tensor::cat(vec![prev.keys, k], 2);
                v = Tensor::cat(vec![prev.values, v], 2);
            }
            *slot = Some(LayerCache {
                keys: k.clone(),
                values: v.clone(),
            });
        }
        let scale = (head_dim as f64).powf(-0.5);
        let out = attention(q, k, v, Some(context.bias.clone()), scale);
        self.o_proj
            .forward(swap_dims_1_2_contiguous(out).reshape([batch, len, hidden]))
    }
}

/// `model.layers.{i}`.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub self_attn: TextAttention<B>,
    pub mlp: GatedMlp<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
}

impl<B: Backend> DecoderLayer<B> {
    fn new(config: &Qwen2_5VlConfig, device: &B::Device) -> Self {
        let d = config.hidden_size;
        let kv = config.num_key_value_heads * config.head_dim();
        let std = config.initializer_range;
        Self {
            self_attn: TextAttention {
                q_proj: Linear::new(d, d, true, std, device),
                k_proj: Linear::new(d, kv, true, std, device),
                v_proj: Linear::new(d, kv, true, std, device),
                o_proj: Linear::new(d, d, false, std, device),
                num_heads: config.num_attention_heads,
                num_kv_heads: config.num_key_value_heads,
            },
            mlp: GatedMlp::new(d, config.intermediate_size, false, std, device),
            input_layernorm: RmsNorm::new(d, config.rms_norm_eps, device),
            post_attention_layernorm: RmsNorm::new(d, config.rms_norm_eps, device),
        }
    }

    /// # Shapes
    /// - `x`: `[batch, len, hidden]` → `[batch, len, hidden]` (other inputs as in
    ///   [`TextAttention::forward`])
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        context: &LayerContext<B>,
        cache: Option<&mut Option<LayerCache<B>>>,
    ) -> Tensor<B, 3> {
        let attn = self
            .self_attn
            .forward(self.input_layernorm.forward(x.clone()), context, cache);
        let x = x + attn;
        x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x))
    }
}

/// Output of the language model.
#[derive(Debug, Clone)]
pub struct TextOutput<B: Backend> {
    /// Last hidden state after the final RMSNorm: `[batch, len, hidden]`.
    pub last_hidden: Tensor<B, 3>,
    /// With `output_hidden_states`: the embeddings, the output of every layer but the last, and
    /// `last_hidden` (transformers' `hidden_states`, `num_layers + 1` entries).
    pub hidden_states: Vec<Tensor<B, 3>>,
}

/// `model`: the language model without the output head.
#[derive(Module, Debug)]
pub struct TextModel<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub mrope_section: Vec<usize>,
}

impl<B: Backend> TextModel<B> {
    /// A lazily initialised language model.
    pub fn new(config: &Qwen2_5VlConfig, device: &B::Device) -> Self {
        Self {
            embed_tokens: Embedding::new(
                config.vocab_size,
                config.hidden_size,
                config.initializer_range,
                device,
            ),
            layers: (0..config.num_hidden_layers)
                .map(|_| DecoderLayer::new(config, device))
                .collect(),
            norm: RmsNorm::new(config.hidden_size, config.rms_norm_eps, device),
            head_dim: config.head_dim(),
            rope_theta: config.rope_theta,
            mrope_section: config.rope_scaling.mrope_section.clone(),
        }
    }

    /// Runs the decoder layers on given input embeddings.
    ///
    /// `attention_mask[b]` covers the cached positions plus the new ones (`false` = padding);
    /// `None` means no padding. Attention is causal over absolute positions (cache included).
    /// With a `cache`, the new keys/values are appended to it.
    ///
    /// # Shapes
    /// - `inputs_embeds`: `[batch, len, hidden]`; `positions`: `[3][batch][len]`
    pub fn forward(
        &self,
        inputs_embeds: Tensor<B, 3>,
        positions: &MropePositions,
        attention_mask: Option<&[Vec<bool>]>,
        mut cache: Option<&mut KvCache<B>>,
        output_hidden_states: bool,
    ) -> Result<TextOutput<B>> {
        let [batch, len, _] = inputs_embeds.dims();
        let device = inputs_embeds.device();
        if positions.dims() != (batch, len) {
            return Err(ModelError::InvalidInput(format!(
                "position ids cover {:?} (batch, len), the embeddings [{batch}, {len}]",
                positions.dims()
            )));
        }
        let past = cache.as_ref().map_or(0, |c| c.len());
        if let Some(c) = cache.as_ref() {
            if c.layers.len() != self.layers.len() {
                return Err(ModelError::InvalidInput(format!(
                    "KV cache has {} layers, the model {}",
                    c.layers.len(),
                    self.layers.len()
                )));
            }
        }
        let total = past + len;
        if let Some(mask) = attention_mask {
            if mask.len() != batch || mask.iter().any(|row| row.len() != total) {
                return Err(ModelError::InvalidInput(format!(
                    "attention_mask must be [{batch}][{total}] (cached {past} + new {len})"
                )));
            }
        }
        let (cos, sin) = mrope_tables::<B>(
            positions,
            self.head_dim,
            self.rope_theta,
            &self.mrope_section,
            &device,
        );
        let (cos, sin) = (cos.unsqueeze_dim::<4>(1), sin.unsqueeze_dim::<4>(1));
        let (heads, kv_heads) = match self.layers.first() {
            Some(layer) => (layer.self_attn.num_heads, layer.self_attn.num_kv_heads),
            None => (1, 1),
        };
        let dtype = inputs_embeds.dtype();
        let shape = |n: usize| [batch, n, len, self.head_dim];
        let context = LayerContext {
            rotary_q: Rotary::new(cos.clone(), sin.clone(), shape(heads), dtype),
            rotary_k: Rotary::new(cos, sin, shape(kv_heads), dtype),
            bias: causal_padding_bias::<B>(batch, heads, len, past, attention_mask, &device),
        };

        let mut hidden_states = Vec::new();
        let mut x = inputs_embeds;
        for (i, layer) in self.layers.iter().enumerate() {
            if output_hidden_states {
                hidden_states.push(x.clone());
            }
            let slot = cache.as_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, &context, slot);
        }
        let last_hidden = self.norm.forward(x);
        if output_hidden_states {
            hidden_states.push(last_hidden.clone());
        }
        Ok(TextOutput {
            last_hidden,
            hidden_states,
        })
    }
}

/// `[batch, heads, len, past + len]` attention bias: [`MASKED`] where query `past + i` must not
/// see key `j` (`j` is in its future or `attention_mask[b][j]` is false), 0 elsewhere. Built on
/// the host at the full score shape (see [`crate::attention`]).
fn causal_padding_bias<B: Backend>(
    batch: usize,
    heads: usize,
    len: usize,
    past: usize,
    attention_mask: Option<&[Vec<bool>]>,
    device: &B::Device,
) -> Tensor<B, 4> {
    let total = past + len;
    let mut data = Vec::with_capacity(batch * heads * len * total);
    for b in 0..batch {
        let start = data.len();
        for i in 0..len {
            for j in 0..total {
                let padded = attention_mask.is_some_and(|m| !m[b][j]);
                data.push(if j > past + i || padded { MASKED } else { 0.0 });
            }
        }
        // The same rows for every head.
        for _ in 1..heads {
            data.extend_from_within(start..start + len * total);
        }
    }
    Tensor::from_data(TensorData::new(data, [batch, heads, len, total]), device)
}
