//! The PaDT decoder (`vl_decoder.*`, padt-reference.md §2): turns the VRT features of each
//! object into a box `(cx, cy, w, h)`, a score logit and a mask logit map, attending to a
//! private copy of the object's image features.
//!
//! Structure, per object o with k_o VRT features:
//! 1. queries `[box, score, mask tokens, input_projection(F_o) + vp_embedding]` (3 + k_o rows);
//! 2. low-res memory `input_projection(prototypes of o's image)` with the rotary PE of sub-patch 0
//!    of each group of 4 high-res tokens; one [`DecoderBlock`];
//! 3. high-res memory `high_res_norm(repeat_interleave(low, 4) + high_res_feats)` with the full
//!    PE; two more blocks;
//! 4. heads on the three special tokens; mask embeddings from the final high-res memory, 4×4
//!    mask pixels per 14-px token, token j placed at cell `(j / gw, j % gw)`.
//!
//! Every object is its own attention sequence (flash-attention varlen semantics), computed by
//! [`crate::attention::attention`] on padded per-object batches with key-padding masks.
//!
//! The high-res features and PE are taken in whatever order the caller passes them. PaDT passes
//! the ViT's window-permuted order (padt-reference.md §8.1) and pairs merged token i with
//! high-res group i regardless; the caller chooses that order (the faithful default) or raster
//! order (the corrected option).

use burn::module::Module;
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::attention::varlen_cross_attention;
use crate::error::{ModelError, Result};
use crate::layers::{Embedding, Linear, RmsNorm};
use crate::qwen2_5_vl::rope::Rotary;

/// Number of special query tokens per object: box, score, mask.
pub const NUM_SPECIAL_TOKENS: usize = 3;
/// RMSNorm epsilon of every decoder norm.
const NORM_EPS: f64 = 1e-6;

/// `config.vl_decoder` as PaDT writes it into `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PadtDecoderConfig {
    /// Decoder width (= ViT width: 1280 at real size).
    pub hidden_size: usize,
    /// MLP width (3420 at real size).
    pub intermediate_size: usize,
    /// Attention heads; the head dim equals the ViT head dim so the ViT rotary PE applies.
    pub num_heads: usize,
    /// Width of the LLM hidden states and prototypes fed to `input_projection`.
    pub llm_hidden_state: usize,
    /// ViT patches per merged token along one side (2).
    #[serde(default = "default_merge")]
    pub spatial_merge_size: usize,
    /// Whether the mask branch exists (`use_mask_loss`).
    #[serde(default = "default_true")]
    pub use_mask_loss: bool,
    /// Order of the high-res features and PE the decoder receives (padt-reference.md §8.1).
    /// Not a PaDT key: it is never written to `config.json` while it has its default.
    #[serde(default, skip_serializing_if = "HighResOrder::is_reference")]
    pub high_res_order: HighResOrder,
    /// Kept for round-tripping PaDT's config (`flash_attention_2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_implementation: Option<String>,
    /// Kept for round-tripping PaDT's config (`PaDTDecoder`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// How high-res tokens are ordered, paired with merged tokens and placed in the mask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HighResOrder {
    /// PaDT's behaviour (bit-compatible with released checkpoints): the ViT's window-permuted
    /// order; merged token i is paired with high-res group i and high-res token j is placed at
    /// cell `(j / gw, j % gw)`, whatever the window layout.
    #[default]
    Reference,
    /// The corrected behaviour: features and PE in processor order (merged tokens raster, each
    /// followed by its 2×2 sub-patches), so the pairing is right, and sub-patch `s` of merged
    /// token `m` is placed at its true cell `(2·(m / (gw/2)) + s/2, 2·(m % (gw/2)) + s%2)`.
    Raster,
}

impl HighResOrder {
    fn is_reference(&self) -> bool {
        *self == HighResOrder::Reference
    }
}

fn default_merge() -> usize {
    2
}
fn default_true() -> bool {
    true
}

impl PadtDecoderConfig {
    /// The decoder PaDT's trainer injects for a model whose LLM width is `llm_hidden`
    /// (2048 for 3B, 3584 for 7B).
    pub fn reference(llm_hidden: usize) -> Self {
        Self {
            hidden_size: 1280,
            intermediate_size: 3420,
            num_heads: 16,
            llm_hidden_state: llm_hidden,
            spatial_merge_size: 2,
            use_mask_loss: true,
            high_res_order: HighResOrder::Reference,
            attn_implementation: Some("flash_attention_2".into()),
            name: Some("PaDTDecoder".into()),
        }
    }

    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Builds the decoder with the reference's initialisation (N(0, 0.02) linears and
    /// embeddings, zero biases, unit RMSNorm weights), lazily.
    pub fn init<B: Backend>(&self, device: &B::Device) -> PadtDecoder<B> {
        PadtDecoder::new(self, crate::layers::INIT_STD, device)
    }
}

/// Module fragment → checkpoint fragment renames of the decoder's torch `Sequential`s
/// (numeric children cannot be Rust field names). Pass them to
/// [`crate::weights::LoadOptions::renames`] / the exporter.
pub const DECODER_KEY_RENAMES: &[(&str, &str)] = &[
    ("input_projection.norm", "input_projection.0"),
    ("input_projection.fc1", "input_projection.1"),
    ("input_projection.fc2", "input_projection.3"),
    ("mlp.fc1", "mlp.0"),
    ("mlp.fc2", "mlp.2"),
    ("bbox_prediction.fc1", "bbox_prediction.0"),
    ("bbox_prediction.fc2", "bbox_prediction.2"),
    ("bbox_prediction.fc3", "bbox_prediction.4"),
    ("mask_output_mlp.fc1", "mask_output_mlp.0"),
    ("mask_output_mlp.fc2", "mask_output_mlp.2"),
    ("mask_output_mlp.fc3", "mask_output_mlp.4"),
    ("mask_output_upscaling1.fc", "mask_output_upscaling1.0"),
    ("mask_output_upscaling1.norm", "mask_output_upscaling1.1"),
    ("mask_output_upscaling2.fc", "mask_output_upscaling2.0"),
];

/// `input_projection`: `RMSNorm → Linear → GELU → Linear`, shared by VRT features and
/// prototypes.
#[derive(Module, Debug)]
pub struct InputProjection<B: Backend> {
    pub norm: RmsNorm<B>,
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

impl<B: Backend> InputProjection<B> {
    /// # Shapes
    /// - `x`: `[n, llm_hidden]` → `[n, hidden]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.fc2
            .forward(gelu(self.fc1.forward(self.norm.forward(x))))
    }
}

/// `Linear → GELU → Linear`.
#[derive(Module, Debug)]
pub struct Mlp2<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

impl<B: Backend> Mlp2<B> {
    /// # Shapes
    /// - `x`: `[n, d_in]` → `[n, d_out]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.fc2.forward(gelu(self.fc1.forward(x)))
    }
}

/// `Linear → GELU → Linear → GELU → Linear` (the box head adds a sigmoid).
#[derive(Module, Debug)]
pub struct Mlp3<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
    pub fc3: Linear<B>,
}

impl<B: Backend> Mlp3<B> {
    fn new(d: usize, d_out: usize, init_std: f64, device: &B::Device) -> Self {
        Self {
            fc1: Linear::new(d, d, true, init_std, device),
            fc2: Linear::new(d, d, true, init_std, device),
            fc3: Linear::new(d, d_out, true, init_std, device),
        }
    }

    /// # Shapes
    /// - `x`: `[n, d]` → `[n, d_out]`
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.fc3
            .forward(gelu(self.fc2.forward(gelu(self.fc1.forward(x)))))
    }
}

/// `mask_output_upscaling1`: `Linear → RMSNorm → GELU`.
#[derive(Module, Debug)]
pub struct Upscaling1<B: Backend> {
    pub fc: Linear<B>,
    pub norm: RmsNorm<B>,
}

/// `mask_output_upscaling2`: `Linear → GELU`.
#[derive(Module, Debug)]
pub struct Upscaling2<B: Backend> {
    pub fc: Linear<B>,
}

/// How a stream's position encoding enters an attention projection.
#[derive(Debug, Clone)]
pub enum PositionEncoding<B: Backend> {
    /// Added to the input before the projection (`W(x + pos)`).
    Additive(Tensor<B, 2>),
    /// Rotary (rotate-half) on the projected heads, from the ViT's `(cos, sin)` tables, built
    /// once per stream by [`PositionEncoding::rotary`] and applied in every block.
    Rotary(Rotary<B, 3>),
}

impl<B: Backend> PositionEncoding<B> {
    /// flash-attn's `apply_rotary_emb` as PaDT calls it: the first half of the `(cos, sin)`
    /// tables, duplicated, rotates the whole head (rotate-half convention).
    ///
    /// # Shapes
    /// - `cos`, `sin`: `[tokens, head_dim]`; the tables rotate `[tokens, heads, head_dim]`
    pub fn rotary(cos: Tensor<B, 2>, sin: Tensor<B, 2>, heads: usize, dtype: DType) -> Self {
        let [tokens, head_dim] = cos.dims();
        let half = head_dim / 2;
        let dup = |t: Tensor<B, 2>| {
            let first = t.narrow(1, 0, half);
            Tensor::cat(vec![first.clone(), first], 1).unsqueeze_dim::<3>(1)
        };
        PositionEncoding::Rotary(Rotary::new(
            dup(cos),
            dup(sin),
            [tokens, heads, head_dim],
            dtype,
        ))
    }
}

/// One attention of a decoder block (`q_proj`, `k_proj`, `v_proj`, `proj`, all with bias).
#[derive(Module, Debug)]
pub struct DecoderAttention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub proj: Linear<B>,
    pub num_heads: usize,
}

impl<B: Backend> DecoderAttention<B> {
    fn new(d: usize, num_heads: usize, init_std: f64, device: &B::Device) -> Self {
        Self {
            q_proj: Linear::new(d, d, true, init_std, device),
            k_proj: Linear::new(d, d, true, init_std, device),
            v_proj: Linear::new(d, d, true, init_std, device),
            proj: Linear::new(d, d, true, init_std, device),
            num_heads,
        }
    }

    /// Per-sequence attention of the query stream `x` over the key stream `y`: rows
    /// `cu_x[i]..cu_x[i+1]` of `x` attend to rows `cu_y[i]..cu_y[i+1]` of `y`.
    ///
    /// # Shapes
    /// - `x`: `[tx, d]`, `y`: `[ty, d]`; additive PEs have the stream's shape, rotary tables
    ///   `[t, head_dim]`
    /// - returns `[tx, d]`
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        y: Tensor<B, 2>,
        cu_x: &[usize],
        cu_y: &[usize],
        x_pos: &PositionEncoding<B>,
        y_pos: &PositionEncoding<B>,
    ) -> Tensor<B, 2> {
        let [tx, d] = x.dims();
        let ty = y.dims()[0];
        let heads = self.num_heads;
        let head_dim = d / heads;
        let v = self
            .v_proj
            .forward(y.clone())
            .reshape([ty, heads, head_dim]);
        let project = |proj: &Linear<B>, input: Tensor<B, 2>, pos: &PositionEncoding<B>| {
            let t = input.dims()[0];
            match pos {
                PositionEncoding::Additive(p) => proj
                    .forward(input + p.clone())
                    .reshape([t, heads, head_dim]),
                PositionEncoding::Rotary(rotary) => {
                    rotary.apply(proj.forward(input).reshape([t, heads, head_dim]))
                }
            }
        };
        let q = project(&self.q_proj, x, x_pos);
        let k = project(&self.k_proj, y, y_pos);
        let out = varlen_cross_attention(q, k, v, cu_x, cu_y, (head_dim as f64).powf(-0.5));
        self.proj.forward(out.reshape([tx, d]))
    }
}

/// `PaDTDecoderBlock` with memory update (pre-norm residual, SAM style: `query_pos` is always the
/// initial query sequence).
#[derive(Module, Debug)]
pub struct DecoderBlock<B: Backend> {
    pub norm1: RmsNorm<B>,
    pub norm2: RmsNorm<B>,
    pub norm3: RmsNorm<B>,
    pub norm4: RmsNorm<B>,
    pub norm5: RmsNorm<B>,
    pub norm6: RmsNorm<B>,
    pub self_attn: DecoderAttention<B>,
    pub cross_attn_query_to_image: DecoderAttention<B>,
    pub cross_attn_image_to_query: DecoderAttention<B>,
    pub mlp: Mlp2<B>,
}

impl<B: Backend> DecoderBlock<B> {
    fn new(config: &PadtDecoderConfig, init_std: f64, device: &B::Device) -> Self {
        let d = config.hidden_size;
        let norm = || RmsNorm::new(d, NORM_EPS, device);
        let attn = || DecoderAttention::new(d, config.num_heads, init_std, device);
        Self {
            norm1: norm(),
            norm2: norm(),
            norm3: norm(),
            norm4: norm(),
            norm5: norm(),
            norm6: norm(),
            self_attn: attn(),
            cross_attn_query_to_image: attn(),
            cross_attn_image_to_query: attn(),
            mlp: Mlp2 {
                fc1: Linear::new(d, config.intermediate_size, true, init_std, device),
                fc2: Linear::new(config.intermediate_size, d, true, init_std, device),
            },
        }
    }

    /// # Shapes
    /// - `query`, `query_pos`: `[tq, hidden]`; `memory`: `[tm, hidden]`;
    ///   `memory_cos`, `memory_sin`: `[tm, head_dim]`
    /// - returns `(query [tq, hidden], memory [tm, hidden])`
    pub fn forward(
        &self,
        query: Tensor<B, 2>,
        memory: Tensor<B, 2>,
        cu_query: &[usize],
        cu_memory: &[usize],
        query_pos: &PositionEncoding<B>,
        memory_pos: &PositionEncoding<B>,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let q_norm = self.norm1.forward(query.clone());
        let query = query
            + self.self_attn.forward(
                q_norm.clone(),
                q_norm,
                cu_query,
                cu_query,
                query_pos,
                query_pos,
            );
        let q_norm = self.norm2.forward(query.clone());
        let m_norm = self.norm3.forward(memory.clone());
        let query = query
            + self
                .cross_attn_query_to_image
                .forward(q_norm, m_norm, cu_query, cu_memory, query_pos, memory_pos);
        let query = query.clone() + self.mlp.forward(self.norm4.forward(query));
        let q_norm = self.norm5.forward(query.clone());
        let m_norm = self.norm6.forward(memory.clone());
        let memory = memory
            + self
                .cross_attn_image_to_query
                .forward(m_norm, q_norm, cu_memory, cu_query, memory_pos, query_pos);
        (query, memory)
    }
}

/// The PaDT decoder. Field names are the checkpoint keys under `vl_decoder.` (with
/// [`DECODER_KEY_RENAMES`] for the `Sequential` children).
#[derive(Module, Debug)]
pub struct PadtDecoder<B: Backend> {
    pub vp_embedding: Embedding<B>,
    pub bbox_score_mask_tokens: Embedding<B>,
    pub input_projection: InputProjection<B>,
    pub low_res_transformer: DecoderBlock<B>,
    pub high_res_transformer1: DecoderBlock<B>,
    pub high_res_transformer2: DecoderBlock<B>,
    pub high_res_norm: RmsNorm<B>,
    pub bbox_prediction: Mlp3<B>,
    pub score_prediction: Linear<B>,
    /// Absent when `use_mask_loss` is false.
    pub mask_output_upscaling1: Option<Upscaling1<B>>,
    pub mask_output_upscaling2: Option<Upscaling2<B>>,
    pub mask_output_mlp: Option<Mlp3<B>>,
    pub spatial_merge_size: usize,
    /// [`HighResOrder::Raster`] placement of the mask blocks.
    pub raster_high_res: bool,
}

/// Decoder inputs for a batch, objects flattened over the samples.
#[derive(Debug, Clone)]
pub struct DecoderInput<B: Backend> {
    /// VRT features of all objects, concatenated in object order. `[Σk, llm_hidden]`
    pub object_feats: Tensor<B, 2>,
    /// Number of VRT features of each object (k_o ≥ 1).
    pub feats_len: Vec<usize>,
    /// Image (= sample) index of each object.
    pub object_image: Vec<usize>,
    /// Prototypes of all images, concatenated (raster order inside each). `[ΣNm, llm_hidden]`
    pub prototypes: Tensor<B, 2>,
    /// Pre-merger ViT features of all images. `[ΣNh, hidden]`
    pub high_res: Tensor<B, 2>,
    /// ViT rotary cos of every high-res token. `[ΣNh, head_dim]`
    pub pe_cos: Tensor<B, 2>,
    /// ViT rotary sin of every high-res token. `[ΣNh, head_dim]`
    pub pe_sin: Tensor<B, 2>,
    /// `(t, gh, gw)` of each image, in 14-px patches.
    pub grids: Vec<[usize; 3]>,
}

/// Decoder outputs, one row per object.
#[derive(Debug, Clone)]
pub struct DecoderOutput<B: Backend> {
    /// `(cx, cy, w, h)` in `[0, 1]`. `[n_obj, 4]`
    pub pred_boxes: Tensor<B, 2>,
    /// Score logits. `[n_obj, 1]`
    pub pred_score: Tensor<B, 2>,
    /// Mask logits, zero-padded to the largest grid. `[n_obj, 4·max gh, 4·max gw]`
    pub pred_mask: Option<Tensor<B, 3>>,
    /// Valid `(gh, gw)` of each object's mask: logits `[.., :4gh, :4gw]`.
    pub mask_valid_hw: Vec<(usize, usize)>,
    /// Object → sample index.
    pub sample_idx: Vec<usize>,
}

impl<B: Backend> PadtDecoder<B> {
    /// A lazily initialised decoder: linears and embeddings N(0, `init_std`) (the model's
    /// `initializer_range`), zero biases, unit norms.
    pub fn new(config: &PadtDecoderConfig, init_std: f64, device: &B::Device) -> Self {
        let d = config.hidden_size;
        let block = || DecoderBlock::new(config, init_std, device);
        let mask = config.use_mask_loss;
        Self {
            vp_embedding: Embedding::new(1, d, init_std, device),
            bbox_score_mask_tokens: Embedding::new(NUM_SPECIAL_TOKENS, d, init_std, device),
            input_projection: InputProjection {
                norm: RmsNorm::new(config.llm_hidden_state, NORM_EPS, device),
                fc1: Linear::new(config.llm_hidden_state, d, true, init_std, device),
                fc2: Linear::new(d, d, true, init_std, device),
            },
            low_res_transformer: block(),
            high_res_transformer1: block(),
            high_res_transformer2: block(),
            high_res_norm: RmsNorm::new(d, NORM_EPS, device),
            bbox_prediction: Mlp3::new(d, 4, init_std, device),
            score_prediction: Linear::new(d, 1, true, init_std, device),
            mask_output_upscaling1: mask.then(|| Upscaling1 {
                fc: Linear::new(d, d / 4 * 4, true, init_std, device),
                norm: RmsNorm::new(d / 4 * 4, NORM_EPS, device),
            }),
            mask_output_upscaling2: mask.then(|| Upscaling2 {
                fc: Linear::new(d / 4, d / 16 * 4, true, init_std, device),
            }),
            mask_output_mlp: mask.then(|| Mlp3::new(d, d / 16, init_std, device)),
            spatial_merge_size: config.spatial_merge_size,
            raster_high_res: config.high_res_order == HighResOrder::Raster,
        }
    }

    /// The order in which [`Self::forward`] expects the high-res features and PE.
    pub fn high_res_order(&self) -> HighResOrder {
        if self.raster_high_res {
            HighResOrder::Raster
        } else {
            HighResOrder::Reference
        }
    }

    /// Runs the decoder on every object of a batch (`vl_decode`).
    ///
    /// # Shapes
    /// See [`DecoderInput`] and [`DecoderOutput`].
    pub fn forward(&self, input: DecoderInput<B>) -> Result<DecoderOutput<B>> {
        let merge = self.spatial_merge_size * self.spatial_merge_size;
        let n_obj = input.feats_len.len();
        let images = input.grids.len();
        // Per image: offsets of its high-res rows (low-res offset = high-res offset / 4).
        let mut hi_start = Vec::with_capacity(images);
        let mut hi_total = 0;
        for (image, grid) in input.grids.iter().enumerate() {
            let n = grid[0] * grid[1] * grid[2];
            if grid[0] != 1
                || grid[1] % self.spatial_merge_size != 0
                || grid[2] % self.spatial_merge_size != 0
            {
                return Err(ModelError::InvalidInput(format!(
                    "decoder: image {image} has grid {grid:?}, not one frame of whole merged tokens"
                )));
            }
            hi_start.push(hi_total);
            hi_total += n;
        }
        check_rows("high_res", &input.high_res, hi_total)?;
        check_rows("pe_cos", &input.pe_cos, hi_total)?;
        check_rows("pe_sin", &input.pe_sin, hi_total)?;
        check_rows("prototypes", &input.prototypes, hi_total / merge)?;
        let total_feats: usize = input.feats_len.iter().sum();
        check_rows("object_feats", &input.object_feats, total_feats)?;
        for (object, (&k, &image)) in input.feats_len.iter().zip(&input.object_image).enumerate() {
            if k == 0 {
                return Err(ModelError::InvalidInput(format!(
                    "decoder: object {object} has no VRT feature"
                )));
            }
            if image >= images {
                return Err(ModelError::InvalidInput(format!(
                    "decoder: object {object} refers to image {image}, but the batch has {images}"
                )));
            }
        }

        let device = input.object_feats.device();
        let index = |idx: Vec<i64>| {
            let n = idx.len();
            Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [n]), &device)
        };

        // Per-object copies of the image features (rows of the object's image, repeated).
        let mut hi_rows = Vec::new();
        let mut lo_rows = Vec::new();
        let mut lo_pe_rows = Vec::new();
        let mut cu_hi = vec![0usize];
        let mut cu_lo = vec![0usize];
        let mut cu_q = vec![0usize];
        for (&k, &image) in input.feats_len.iter().zip(&input.object_image) {
            let grid = input.grids[image];
            let n_hi = grid[0] * grid[1] * grid[2];
            let start = hi_start[image];
            hi_rows.extend((start..start + n_hi).map(|r| r as i64));
            lo_rows.extend((start / merge..(start + n_hi) / merge).map(|r| r as i64));
            // Low-res PE: sub-patch 0 of each consecutive group of `merge` high-res tokens.
            lo_pe_rows.extend((start..start + n_hi).step_by(merge).map(|r| r as i64));
            cu_hi.push(cu_hi.last().unwrap() + n_hi);
            cu_lo.push(cu_lo.last().unwrap() + n_hi / merge);
            cu_q.push(cu_q.last().unwrap() + NUM_SPECIAL_TOKENS + k);
        }
        let hi_rows = index(hi_rows);
        let lo_pe_rows = index(lo_pe_rows);

        // Query sequences: [box, score, mask tokens, projected VRT features + vp_embedding].
        // The learned rows take the features' dtype (bf16 on the mixed-precision path).
        let projected = self.input_projection.forward(input.object_feats);
        let dtype = projected.dtype();
        let special = self.bbox_score_mask_tokens.weight.val().cast(dtype);
        let vp = self.vp_embedding.weight.val().cast(dtype);
        let projected = projected + vp;
        let mut parts = Vec::with_capacity(2 * n_obj);
        let mut offset = 0;
        for &k in &input.feats_len {
            parts.push(special.clone());
            parts.push(projected.clone().narrow(0, offset, k));
            offset += k;
        }
        let initial_query = Tensor::cat(parts, 0);
        let query_pos = PositionEncoding::Additive(initial_query.clone());

        // Low-res memory: projected prototypes of the object's image.
        let low_memory = self
            .input_projection
            .forward(input.prototypes.select(0, index(lo_rows)));
        let heads = self.low_res_transformer.self_attn.num_heads;
        let dtype = initial_query.dtype();
        let low_pos = PositionEncoding::rotary(
            input.pe_cos.clone().select(0, lo_pe_rows.clone()),
            input.pe_sin.clone().select(0, lo_pe_rows),
            heads,
            dtype,
        );
        let (query, low_memory) = self.low_res_transformer.forward(
            initial_query,
            low_memory,
            &cu_q,
            &cu_lo,
            &query_pos,
            &low_pos,
        );

        // High-res memory: each low-res token repeated over its `merge` sub-patches.
        let [n_lo, d] = low_memory.dims();
        let repeated = low_memory
            .unsqueeze_dim::<3>(1)
            .expand([n_lo, merge, d])
            .reshape([n_lo * merge, d]);
        let high_memory = self
            .high_res_norm
            .forward(repeated + input.high_res.select(0, hi_rows.clone()));
        let high_pos = PositionEncoding::rotary(
            input.pe_cos.select(0, hi_rows.clone()),
            input.pe_sin.select(0, hi_rows),
            heads,
            dtype,
        );
        let (query, high_memory) = self.high_res_transformer1.forward(
            query,
            high_memory,
            &cu_q,
            &cu_hi,
            &query_pos,
            &high_pos,
        );
        let (query, high_memory) = self.high_res_transformer2.forward(
            query,
            high_memory,
            &cu_q,
            &cu_hi,
            &query_pos,
            &high_pos,
        );

        let special_rows =
            |which: usize| index(cu_q[..n_obj].iter().map(|&s| (s + which) as i64).collect());
        let pred_boxes = sigmoid(
            self.bbox_prediction
                .forward(query.clone().select(0, special_rows(0))),
        );
        let pred_score = self
            .score_prediction
            .forward(query.clone().select(0, special_rows(1)));
        let mask_valid_hw: Vec<(usize, usize)> = input
            .object_image
            .iter()
            .map(|&i| (input.grids[i][1], input.grids[i][2]))
            .collect();
        let pred_mask = match (
            &self.mask_output_upscaling1,
            &self.mask_output_upscaling2,
            &self.mask_output_mlp,
        ) {
            (Some(up1), Some(up2), Some(mlp)) => {
                let mask_vec = mlp.forward(query.select(0, special_rows(2)));
                Some(mask_logits(
                    up1,
                    up2,
                    high_memory,
                    mask_vec,
                    &cu_hi,
                    &mask_valid_hw,
                    self.raster_high_res.then_some(self.spatial_merge_size),
                ))
            }
            _ => None,
        };
        Ok(DecoderOutput {
            pred_boxes,
            pred_score,
            pred_mask,
            mask_valid_hw,
            sample_idx: input.object_image,
        })
    }

    /// Runs the decoder on the reference's dummy object (one zero VRT feature, a zero 1×2×2
    /// image), as `vl_decode` does for a batch without objects. The outputs are meant to be
    /// multiplied by zero into the loss so that every data-parallel rank runs the same graph.
    ///
    /// # Shapes
    /// - returns one dummy object (`pred_boxes [1, 4]`, ...)
    pub fn forward_dummy(&self, llm_hidden: usize, device: &B::Device) -> DecoderOutput<B> {
        let d = self.high_res_norm.weight.dims()[0];
        let head_dim = d / self.low_res_transformer.self_attn.num_heads;
        let merge = self.spatial_merge_size * self.spatial_merge_size;
        let s = self.spatial_merge_size;
        let input = DecoderInput {
            object_feats: Tensor::zeros([1, llm_hidden], device),
            feats_len: vec![1],
            object_image: vec![0],
            prototypes: Tensor::zeros([1, llm_hidden], device),
            high_res: Tensor::zeros([merge, d], device),
            pe_cos: Tensor::zeros([merge, head_dim], device),
            pe_sin: Tensor::zeros([merge, head_dim], device),
            grids: vec![[1, s, s]],
        };
        self.forward(input)
            .expect("the dummy decoder input is consistent by construction")
    }
}

fn check_rows<B: Backend>(what: &str, t: &Tensor<B, 2>, expected: usize) -> Result<()> {
    let found = t.dims()[0];
    if found != expected {
        return Err(ModelError::InvalidInput(format!(
            "decoder: `{what}` has {found} rows, the image grids need {expected}"
        )));
    }
    Ok(())
}

/// Mask logits: each high-res token yields a 4×4 block of 80-d (D/16) embeddings, dotted with
/// its object's mask vector; token j of an object goes to block `(j / gw, j % gw)`, or, with
/// `grouped = Some(merge)` (processor order), sub-patch `s` of merged token `m` goes to its true
/// cell.
///
/// # Shapes
/// - `high_memory`: `[Σ_o Nh_o, d]`; `mask_vec`: `[n_obj, d/16]`
/// - returns `[n_obj, 4·max gh, 4·max gw]`, zero outside each object's valid region
fn mask_logits<B: Backend>(
    up1: &Upscaling1<B>,
    up2: &Upscaling2<B>,
    high_memory: Tensor<B, 2>,
    mask_vec: Tensor<B, 2>,
    cu_hi: &[usize],
    valid_hw: &[(usize, usize)],
    grouped: Option<usize>,
) -> Tensor<B, 3> {
    let [n, d] = high_memory.dims();
    let e = d / 16;
    // upscaling1: channels viewed as [2 (a), 2 (b), d/4]; upscaling2: d/4 viewed as
    // [2 (c), 2 (d), d/16]; block row = 2a + c, block column = 2b + d.
    let up = gelu(up1.norm.forward(up1.fc.forward(high_memory))).reshape([n * 4, d / 4]);
    let up = gelu(up2.fc.forward(up)).reshape([n, 2, 2, 2, 2, e]); // [n, a, b, c, d, e]
    let emb = up.permute([0, 1, 3, 2, 4, 5]).reshape([n, 4, 4, e]); // [n, 2a+c, 2b+d, e]

    let max_h = valid_hw.iter().map(|&(h, _)| h).max().unwrap_or(0);
    let max_w = valid_hw.iter().map(|&(_, w)| w).max().unwrap_or(0);
    let device = emb.device();
    let mut maps = Vec::with_capacity(valid_hw.len());
    for (o, &(gh, gw)) in valid_hw.iter().enumerate() {
        let rows = cu_hi[o + 1] - cu_hi[o];
        let obj_emb = emb.clone().narrow(0, cu_hi[o], rows); // [gh*gw, 4, 4, e]
        let vec = mask_vec.clone().narrow(0, o, 1).reshape([1, 1, 1, e]);
        let logits = (obj_emb * vec).sum_dim(3).reshape([rows, 4, 4]);
        let map = place_mask_blocks(logits, gh, gw, grouped);
        let map = if gh == max_h && gw == max_w {
            map
        } else {
            Tensor::<B, 2>::zeros([4 * max_h, 4 * max_w], &device)
                .cast(map.dtype())
                .slice_assign([0..4 * gh, 0..4 * gw], map)
        };
        maps.push(map.unsqueeze_dim::<3>(0));
    }
    Tensor::cat(maps, 0)
}

/// Places the 4×4 mask-logit block of each high-res token of one object on its
/// `(4·gh) × (4·gw)` map: token j at block `(j / gw, j % gw)` (PaDT), or, with
/// `grouped = Some(merge)` (tokens in processor order), sub-patch `s` of merged token `m` at
/// block `(merge·(m / (gw/merge)) + s / merge, merge·(m % (gw/merge)) + s % merge)`.
///
/// # Shapes
/// - `blocks`: `[gh·gw, 4, 4]` → `[4·gh, 4·gw]`
pub fn place_mask_blocks<B: Backend>(
    blocks: Tensor<B, 3>,
    gh: usize,
    gw: usize,
    grouped: Option<usize>,
) -> Tensor<B, 2> {
    match grouped {
        None => blocks
            .reshape([gh, gw, 4, 4])
            .permute([0, 2, 1, 3])
            .reshape([4 * gh, 4 * gw]),
        // [merged row, merged col, sub row, sub col, pixel row, pixel col]
        Some(m) => blocks
            .reshape([gh / m, gw / m, m, m, 4, 4])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([4 * gh, 4 * gw]),
    }
}

/// Reads `vl_decoder` from a PaDT `config.json` value, filling `llm_hidden_state` from the
/// model's `hidden_size` as PaDT's model constructor does.
pub fn decoder_config_from_model_config(
    config: &serde_json::Value,
    path: &std::path::Path,
) -> Result<PadtDecoderConfig> {
    let error = |message: String| ModelError::Config {
        path: path.to_path_buf(),
        message,
    };
    let section = config
        .get("vl_decoder")
        .ok_or_else(|| error("no `vl_decoder` section (not a PaDT checkpoint?)".into()))?;
    let mut decoder: PadtDecoderConfig =
        serde_json::from_value(section.clone()).map_err(|e| error(format!("`vl_decoder`: {e}")))?;
    if let Some(h) = config.get("hidden_size").and_then(|h| h.as_u64()) {
        decoder.llm_hidden_state = h as usize;
    }
    Ok(decoder)
}
