//! The Qwen2.5-VL vision tower (`visual.*`): patch embedding, 2-D RoPE, window reordering,
//! window / full attention blocks, patch merger, inverse reordering.
//!
//! Besides the merged image embeddings it returns what PaDT needs (padt-reference.md §1.2):
//! the pre-merger features of the last block and their rotary cos/sin, in the ViT's internal
//! window-permuted order (and, on request, in processor order).

use burn::module::{Initializer, Module, Param};
use burn::tensor::activation::{gelu, silu};
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use super::config::VisionConfig;
use super::rope::{vision_rotary_tables, window_layout, GridThw, Rotary, WindowLayout};
use crate::attention::varlen_attention;
use crate::error::{ModelError, Result};
use crate::layers::{Linear, RmsNorm};

/// RMSNorm epsilon of the vision tower (fixed in transformers).
const VISION_NORM_EPS: f64 = 1e-6;

/// The Conv3d of `visual.patch_embed.proj` (kernel = stride, no bias), kept in the checkpoint
/// shape `[out, channels, temporal, patch, patch]` and applied as one matmul per patch row.
#[derive(Module, Debug)]
pub struct PatchConv<B: Backend> {
    /// `[hidden, in_channels, temporal_patch, patch, patch]`
    pub weight: Param<Tensor<B, 5>>,
}

/// `visual.patch_embed`.
#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    pub proj: PatchConv<B>,
}

impl<B: Backend> PatchEmbed<B> {
    fn new(config: &VisionConfig, device: &B::Device) -> Self {
        let weight = Initializer::Normal {
            mean: 0.0,
            std: config.initializer_range,
        }
        .init(
            [
                config.hidden_size,
                config.in_channels,
                config.temporal_patch_size,
                config.patch_size,
                config.patch_size,
            ],
            device,
        );
        Self {
            proj: PatchConv { weight },
        }
    }

    /// # Shapes
    /// - `pixels`: `[patches, channels * temporal * patch * patch]` → `[patches, hidden]`
    pub fn forward(&self, pixels: Tensor<B, 2>) -> Tensor<B, 2> {
        let weight = self.proj.weight.val().cast(pixels.dtype());
        let [out, c, t, p, q] = weight.dims();
        burn::tensor::module::linear(
            pixels,
            weight.reshape([out, c * t * p * q]).transpose(),
            None,
        )
    }
}

/// `visual.blocks.{i}.attn`: fused qkv projection, 2-D RoPE, attention per window or image.
#[derive(Module, Debug)]
pub struct VisionAttention<B: Backend> {
    pub qkv: Linear<B>,
    pub proj: Linear<B>,
    pub num_heads: usize,
}

impl<B: Backend> VisionAttention<B> {
    /// # Shapes
    /// - `x`: `[patches, hidden]` → `[patches, hidden]`; `rotary` built for
    ///   `[patches, heads, head_dim]`
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        rotary: &Rotary<B, 3>,
        cu_seqlens: &[usize],
    ) -> Tensor<B, 2> {
        let [patches, hidden] = x.dims();
        let head_dim = hidden / self.num_heads;
        let qkv = self
            .qkv
            .forward(x)
            .reshape([patches, 3, self.num_heads, head_dim]);
        let part = |i: usize| -> Tensor<B, 3> {
            qkv.clone()
                .narrow(1, i, 1)
                .reshape([patches, self.num_heads, head_dim])
        };
        let q = rotary.apply(part(0));
        let k = rotary.apply(part(1));
        let scale = (head_dim as f64).powf(-0.5);
        let out = varlen_attention(q, k, part(2), cu_seqlens, scale);
        self.proj.forward(out.reshape([patches, hidden]))
    }
}

/// Gated SiLU MLP (`gate_proj`, `up_proj`, `down_proj`); the ViT's has biases, the LLM's not.
#[derive(Module, Debug)]
pub struct GatedMlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

impl<B: Backend> GatedMlp<B> {
    /// A lazily initialised MLP.
    pub fn new(
        hidden: usize,
        intermediate: usize,
        bias: bool,
        init_std: f64,
        device: &B::Device,
    ) -> Self {
        Self {
            gate_proj: Linear::new(hidden, intermediate, bias, init_std, device),
            up_proj: Linear::new(hidden, intermediate, bias, init_std, device),
            down_proj: Linear::new(intermediate, hidden, bias, init_std, device),
        }
    }

    /// # Shapes
    /// - `x`: `[..., hidden]` → `[..., hidden]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let gate = silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}

/// `visual.blocks.{i}`: pre-norm attention and MLP with residuals.
#[derive(Module, Debug)]
pub struct VisionBlock<B: Backend> {
    pub norm1: RmsNorm<B>,
    pub norm2: RmsNorm<B>,
    pub attn: VisionAttention<B>,
    pub mlp: GatedMlp<B>,
}

impl<B: Backend> VisionBlock<B> {
    fn new(config: &VisionConfig, device: &B::Device) -> Self {
        let d = config.hidden_size;
        Self {
            norm1: RmsNorm::new(d, VISION_NORM_EPS, device),
            norm2: RmsNorm::new(d, VISION_NORM_EPS, device),
            attn: VisionAttention {
                qkv: Linear::new(d, 3 * d, true, config.initializer_range, device),
                proj: Linear::new(d, d, true, config.initializer_range, device),
                num_heads: config.num_heads,
            },
            mlp: GatedMlp::new(
                d,
                config.intermediate_size,
                true,
                config.initializer_range,
                device,
            ),
        }
    }

    /// # Shapes
    /// - `x`: `[patches, hidden]` → `[patches, hidden]`; `rotary` as in
    ///   [`VisionAttention::forward`]
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        rotary: &Rotary<B, 3>,
        cu_seqlens: &[usize],
    ) -> Tensor<B, 2> {
        let x = x.clone() + self.attn.forward(self.norm1.forward(x), rotary, cu_seqlens);
        x.clone() + self.mlp.forward(self.norm2.forward(x))
    }
}

/// `visual.merger.mlp`: `Linear → GELU → Linear`. Its checkpoint keys are `mlp.0` / `mlp.2`
/// (a torch `Sequential`), mapped from `fc1` / `fc2` by `weights::KEY_EXCEPTIONS`.
#[derive(Module, Debug)]
pub struct MergerMlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

/// `visual.merger`: RMSNorm, concatenation of each 2×2 group, MLP.
#[derive(Module, Debug)]
pub struct PatchMerger<B: Backend> {
    pub ln_q: RmsNorm<B>,
    pub mlp: MergerMlp<B>,
}

impl<B: Backend> PatchMerger<B> {
    /// # Shapes
    /// - `x`: `[patches, hidden]` (groups of merge² consecutive rows) → `[patches / merge², out]`
    pub fn forward(&self, x: Tensor<B, 2>, group: usize) -> Tensor<B, 2> {
        let [patches, hidden] = x.dims();
        let x = self
            .ln_q
            .forward(x)
            .reshape([patches / group, hidden * group]);
        self.mlp.fc2.forward(gelu(self.mlp.fc1.forward(x)))
    }
}

/// Everything the vision tower returns for a batch of images.
#[derive(Debug, Clone)]
pub struct VisionOutput<B: Backend> {
    /// Merger output in processor (raster) order of the merged grid: `[Σ merged, out_hidden]`.
    pub merged_embeds: Tensor<B, 2>,
    /// Merger output in window order: `[Σ merged, out_hidden]`.
    pub merged_window_order: Tensor<B, 2>,
    /// Last block output before the merger, window order, groups of merge² sub-patches:
    /// `[Σ patches, hidden]` (PaDT's `high_res_image_embeds`).
    pub high_res: Tensor<B, 2>,
    /// 2-D rotary cos/sin per patch in the same window order: `[Σ patches, head_dim]`.
    pub rotary_cos: Tensor<B, 2>,
    pub rotary_sin: Tensor<B, 2>,
    /// Window permutation of the merged tokens and the attention segments.
    pub layout: WindowLayout,
    /// Patches per merged token (merge²).
    pub group: usize,
    /// With `trace`: patch embedding (processor order) and every block output (window order).
    pub trace: Option<VisionTrace<B>>,
}

/// Intermediate tensors kept for debugging and parity tests.
#[derive(Debug, Clone)]
pub struct VisionTrace<B: Backend> {
    /// `[Σ patches, hidden]`, processor order.
    pub patch_embeds: Tensor<B, 2>,
    /// `[Σ patches, hidden]` per block, window order.
    pub blocks: Vec<Tensor<B, 2>>,
}

impl<B: Backend> VisionOutput<B> {
    /// Indices that put window-ordered patch rows back into processor order.
    fn patch_inverse(&self) -> Vec<i64> {
        let mut inverse = vec![0i64; self.layout.window_index.len() * self.group];
        for (pos, &raster) in self.layout.window_index.iter().enumerate() {
            for j in 0..self.group {
                inverse[raster * self.group + j] = (pos * self.group + j) as i64;
            }
        }
        inverse
    }

    /// Reorders a window-ordered per-patch tensor into processor order (merged tokens in
    /// raster order, each followed by its merge² sub-patches row-major).
    ///
    /// # Shapes
    /// - `x`: `[Σ patches, dim]` → `[Σ patches, dim]`
    pub fn to_processor_order(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let inverse = self.patch_inverse();
        let n = inverse.len();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(inverse, [n]), &x.device());
        x.select(0, index)
    }
}

/// `visual`: the whole vision tower.
#[derive(Module, Debug)]
pub struct VisionTransformer<B: Backend> {
    pub patch_embed: PatchEmbed<B>,
    pub blocks: Vec<VisionBlock<B>>,
    pub merger: PatchMerger<B>,
    pub config: VisionConfig,
}

impl<B: Backend> VisionTransformer<B> {
    /// A lazily initialised tower.
    pub fn new(config: &VisionConfig, device: &B::Device) -> Self {
        let context = config.hidden_size * config.spatial_merge_size * config.spatial_merge_size;
        Self {
            patch_embed: PatchEmbed::new(config, device),
            blocks: (0..config.depth)
                .map(|_| VisionBlock::new(config, device))
                .collect(),
            merger: PatchMerger {
                ln_q: RmsNorm::new(config.hidden_size, VISION_NORM_EPS, device),
                mlp: MergerMlp {
                    fc1: Linear::new(context, context, true, config.initializer_range, device),
                    fc2: Linear::new(
                        context,
                        config.out_hidden_size,
                        true,
                        config.initializer_range,
                        device,
                    ),
                },
            },
            config: config.clone(),
        }
    }

    /// Runs the tower on the patches of several images.
    ///
    /// # Shapes
    /// - `pixels`: `[Σ t·h·w, channels·temporal·patch²]` in processor order
    /// - `grids`: `(t, h, w)` per image, `h` and `w` multiples of `spatial_merge_size`
    pub fn forward(
        &self,
        pixels: Tensor<B, 2>,
        grids: &[GridThw],
        trace: bool,
    ) -> Result<VisionOutput<B>> {
        let c = &self.config;
        let merge = c.spatial_merge_size;
        let group = merge * merge;
        let [patches, width] = pixels.dims();
        let expected_width = c.in_channels * c.temporal_patch_size * c.patch_size * c.patch_size;
        let expected: usize = grids.iter().map(|[t, h, w]| t * h * w).sum();
        if width != expected_width || patches != expected {
            return Err(ModelError::InvalidInput(format!(
                "pixel_values [{patches}, {width}] do not match image grids {grids:?} \
                 (expected [{expected}, {expected_width}])"
            )));
        }
        if let Some(g) = grids
            .iter()
            .find(|g| g[1] % merge != 0 || g[2] % merge != 0)
        {
            return Err(ModelError::InvalidInput(format!(
                "image grid {g:?}: h and w must be multiples of spatial_merge_size {merge}"
            )));
        }
        let device = pixels.device();
        let head_dim = c.hidden_size / c.num_heads;
        let window_merged = c.window_size / merge / c.patch_size;
        let layout = window_layout(grids, merge, window_merged);

        // Window order of the patch rows: each merged token moves with its merge² sub-patches.
        let order: Vec<i64> = layout
            .window_index
            .iter()
            .flat_map(|&m| (0..group).map(move |j| (m * group + j) as i64))
            .collect();
        let order = Tensor::<B, 1, Int>::from_data(TensorData::new(order, [patches]), &device);
        let (cos, sin) = vision_rotary_tables(grids, merge, head_dim);
        let table = |v: Vec<f32>| {
            Tensor::<B, 2>::from_data(TensorData::new(v, [patches, head_dim]), &device)
                .select(0, order.clone())
        };
        let (cos, sin) = (table(cos), table(sin));

        let embeds = self.patch_embed.forward(pixels);
        let mut x = embeds.clone().select(0, order);
        // One set of expanded tables for q and k of every block.
        let heads = self.blocks.first().map_or(1, |b| b.attn.num_heads);
        let rotary = Rotary::new(
            cos.clone().unsqueeze_dim::<3>(1),
            sin.clone().unsqueeze_dim::<3>(1),
            [patches, heads, head_dim],
            x.dtype(),
        );
        let mut blocks = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            let cu = if c.fullatt_block_indexes.contains(&i) {
                &layout.cu_seqlens
            } else {
                &layout.cu_window_seqlens
            };
            x = block.forward(x, &rotary, cu);
            if trace {
                blocks.push(x.clone());
            }
        }
        let merged_window_order = self.merger.forward(x.clone(), group);
        let merged_tokens = layout.window_index.len();
        let mut reverse = vec![0i64; merged_tokens];
        for (pos, &raster) in layout.window_index.iter().enumerate() {
            reverse[raster] = pos as i64;
        }
        let reverse =
            Tensor::<B, 1, Int>::from_data(TensorData::new(reverse, [merged_tokens]), &device);
        let merged_embeds = merged_window_order.clone().select(0, reverse);
        Ok(VisionOutput {
            merged_embeds,
            merged_window_order,
            high_res: x,
            rotary_cos: cos,
            rotary_sin: sin,
            layout,
            group,
            trace: trace.then_some(VisionTrace {
                patch_embeds: embeds,
                blocks,
            }),
        })
    }
}
