//! Rotary position embeddings: the ViT's 2-D RoPE with its window reordering, and the LLM's
//! M-RoPE (t/h/w positions from `get_rope_index`). Positions, windows and cos/sin tables are
//! computed on the host (they depend only on token ids and image grids) and uploaded once.

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};

use crate::attention::identity_matmul;
use crate::error::{ModelError, Result};

/// Image grid `(t, h, w)` in patch units (`image_grid_thw`).
pub type GridThw = [usize; 3];

/// Rotary position embedding `x * cos + rotate_half(x) * sin`, with `rotate_half(x) = [-x₂,
/// x₁]` (HF convention): the tables expanded to one tensor shape, contiguous and in the compute
/// dtype, with the rotate-half matrix, built once and applied to every tensor of that shape
/// (the q and k of every layer).
///
/// Every elementwise product runs on contiguous tensors of one shape: the CPU backend's fast
/// paths take only those (a broadcast or permuted operand falls back to a per-element strided
/// walk, which dominated the demo's step time), and `rotate_half` is one small matmul instead
/// of slices and a concatenation.
#[derive(Debug, Clone)]
pub struct Rotary<B: Backend, const D: usize> {
    cos: Tensor<B, D>,
    sin: Tensor<B, D>,
    rotate_half: Tensor<B, 2>,
}

impl<B: Backend, const D: usize> Rotary<B, D> {
    /// # Shapes
    /// - `cos`, `sin`: broadcastable to `shape` (`[..., dim]`)
    pub fn new(cos: Tensor<B, D>, sin: Tensor<B, D>, shape: [usize; D], dtype: DType) -> Self {
        let device = cos.device();
        Self {
            cos: identity_matmul(cos.cast(dtype).expand(shape)),
            sin: identity_matmul(sin.cast(dtype).expand(shape)),
            rotate_half: rotate_half_matrix::<B>(shape[D - 1], &device).cast(dtype),
        }
    }

    /// `x * cos + rotate_half(x) * sin`; `x` should be contiguous (a permuted view is walked
    /// element by element in the products and their backward).
    ///
    /// # Shapes
    /// - `x`: the shape the tables were built for
    pub fn apply(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let shape = x.dims();
        let dim = shape[D - 1];
        let rows = x.shape().num_elements() / dim.max(1);
        let rotated = x
            .clone()
            .reshape([rows, dim])
            .matmul(self.rotate_half.clone())
            .reshape(shape);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}

/// The `[dim, dim]` matrix `R` with `x · R = rotate_half(x) = [-x₂, x₁]`.
fn rotate_half_matrix<B: Backend>(dim: usize, device: &B::Device) -> Tensor<B, 2> {
    let half = dim / 2;
    let mut r = vec![0f32; dim * dim];
    for j in 0..half {
        // output column j takes -x[j + half]; column j + half takes x[j]
        r[(j + half) * dim + j] = -1.0;
        r[j * dim + j + half] = 1.0;
    }
    Tensor::from_data(TensorData::new(r, [dim, dim]), device)
}

/// Inverse frequencies `1 / theta^(2i/dim)` for `i < dim/2`, computed in f32 as torch does.
pub fn inv_freq(dim: usize, theta: f64) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / dim as f32))
        .collect()
}

/// Window reordering of the merged tokens (transformers `get_window_index`).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowLayout {
    /// For each merged token in window order, its index in processor (raster) order,
    /// over all images of the batch.
    pub window_index: Vec<usize>,
    /// Cumulative patch (not merged-token) counts of the windows, starting with 0.
    pub cu_window_seqlens: Vec<usize>,
    /// Cumulative patch counts of the frames (full-attention blocks attend per frame).
    pub cu_seqlens: Vec<usize>,
}

/// Computes the window permutation for a batch of images.
///
/// `window_merged` = window side in merged tokens (`window_size / merge / patch`).
pub fn window_layout(grids: &[GridThw], merge: usize, window_merged: usize) -> WindowLayout {
    let unit = merge * merge;
    let mut window_index = Vec::new();
    let mut cu_window_seqlens = vec![0usize];
    let mut cu_seqlens = vec![0usize];
    let mut offset = 0usize;
    for &[t, h, w] in grids {
        let (gh, gw) = (h / merge, w / merge);
        let windows_h = gh.div_ceil(window_merged);
        let windows_w = gw.div_ceil(window_merged);
        for frame in 0..t {
            for wy in 0..windows_h {
                for wx in 0..windows_w {
                    let mut count = 0;
                    for y in wy * window_merged..((wy + 1) * window_merged).min(gh) {
                        for x in wx * window_merged..((wx + 1) * window_merged).min(gw) {
                            window_index.push(offset + frame * gh * gw + y * gw + x);
                            count += 1;
                        }
                    }
                    let last = *cu_window_seqlens.last().unwrap();
                    cu_window_seqlens.push(last + count * unit);
                }
            }
            let last = *cu_seqlens.last().unwrap();
            cu_seqlens.push(last + h * w);
        }
        offset += t * gh * gw;
    }
    WindowLayout {
        window_index,
        cu_window_seqlens,
        cu_seqlens,
    }
}

/// `(row, col)` of every patch in processor order: per image and frame, merged rows, merged
/// columns, then the `merge × merge` sub-patches row-major (transformers `rot_pos_emb`).
pub fn vision_patch_positions(grids: &[GridThw], merge: usize) -> Vec<(usize, usize)> {
    let mut positions = Vec::new();
    for &[t, h, w] in grids {
        for _ in 0..t {
            for my in 0..h / merge {
                for mx in 0..w / merge {
                    for sy in 0..merge {
                        for sx in 0..merge {
                            positions.push((my * merge + sy, mx * merge + sx));
                        }
                    }
                }
            }
        }
    }
    positions
}

/// ViT rotary tables: `cos`/`sin` `[patches, head_dim]` in processor order, each row
/// `[f(row) ++ f(col)]` duplicated (`head_dim/4` row and column frequencies, theta 10000).
pub fn vision_rotary_tables(
    grids: &[GridThw],
    merge: usize,
    head_dim: usize,
) -> (Vec<f32>, Vec<f32>) {
    let freqs = inv_freq(head_dim / 2, 10_000.0);
    let quarter = freqs.len();
    let positions = vision_patch_positions(grids, merge);
    let mut cos = Vec::with_capacity(positions.len() * head_dim);
    let mut sin = Vec::with_capacity(positions.len() * head_dim);
    let mut row = vec![0f32; head_dim];
    for (r, c) in positions {
        for (i, f) in freqs.iter().enumerate() {
            row[i] = r as f32 * f;
            row[quarter + i] = c as f32 * f;
        }
        let (first, second) = row.split_at_mut(head_dim / 2);
        second.copy_from_slice(first);
        cos.extend(row.iter().map(|a| a.cos()));
        sin.extend(row.iter().map(|a| a.sin()));
    }
    (cos, sin)
}

/// M-RoPE position ids and deltas of a batch (transformers 4.50 `get_rope_index`, images only).
#[derive(Debug, Clone, PartialEq)]
pub struct MropePositions {
    /// `[3][batch][len]` (t, h, w); positions where the attention mask is 0 hold 1.
    pub position_ids: [Vec<Vec<i64>>; 3],
    /// Per sample `max(position) + 1 - len`, used to place generated tokens.
    pub rope_deltas: Vec<i64>,
}

impl MropePositions {
    /// Plain text positions `start..start+len` on all three axes for every sample.
    pub fn text(batch: usize, len: usize, starts: &[i64]) -> Self {
        let rows: Vec<Vec<i64>> = (0..batch)
            .map(|b| (0..len as i64).map(|i| starts[b] + i).collect())
            .collect();
        Self {
            position_ids: [rows.clone(), rows.clone(), rows],
            rope_deltas: vec![0; batch],
        }
    }

    /// Positions of `len` tokens decoded after `cache_len` cached ones (`cache_len + i + delta`).
    pub fn decode(rope_deltas: &[i64], cache_len: usize, len: usize) -> Self {
        let starts: Vec<i64> = rope_deltas.iter().map(|d| cache_len as i64 + d).collect();
        let mut out = Self::text(rope_deltas.len(), len, &starts);
        out.rope_deltas = rope_deltas.to_vec();
        out
    }

    /// Batch size and sequence length.
    pub fn dims(&self) -> (usize, usize) {
        let batch = self.position_ids[0].len();
        (batch, self.position_ids[0].first().map_or(0, Vec::len))
    }
}

/// Token ids that `get_rope_index` needs.
#[derive(Debug, Clone, Copy)]
pub struct RopeTokens {
    pub image_token_id: i64,
    pub vision_start_token_id: i64,
    pub spatial_merge_size: usize,
}

/// transformers `get_rope_index` for image inputs: text tokens advance all three axes together;
/// the `t·h·w/merge²` image tokens that follow `<|vision_start|>` get (t, h, w) grid positions
/// offset by the text before them; text after an image continues at `max + 1`. Only tokens with
/// `attention_mask = 1` are counted; images are consumed from `grids` in batch order.
pub fn get_rope_index(
    input_ids: &[Vec<i64>],
    attention_mask: &[Vec<bool>],
    grids: &[GridThw],
    tokens: RopeTokens,
) -> Result<MropePositions> {
    let batch = input_ids.len();
    let len = input_ids.first().map_or(0, Vec::len);
    let mut position_ids = [
        vec![vec![1i64; len]; batch],
        vec![vec![1i64; len]; batch],
        vec![vec![1i64; len]; batch],
    ];
    let mut rope_deltas = Vec::with_capacity(batch);
    let mut next_image = 0usize;
    let merge = tokens.spatial_merge_size;
    for b in 0..batch {
        if input_ids[b].len() != len || attention_mask[b].len() != len {
            return Err(ModelError::InvalidInput(format!(
                "sample {b}: input_ids / attention_mask rows must all have length {len}"
            )));
        }
        let kept: Vec<usize> = (0..len).filter(|&i| attention_mask[b][i]).collect();
        let ids: Vec<i64> = kept.iter().map(|&i| input_ids[b][i]).collect();
        let n_images = ids
            .windows(2)
            .filter(|w| w[0] == tokens.vision_start_token_id && w[1] == tokens.image_token_id)
            .count();
        let mut pos: [Vec<i64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        let mut next_start = 0i64;
        let mut st = 0usize;
        for _ in 0..n_images {
            let ed = (st..ids.len())
                .find(|&i| ids[i] == tokens.image_token_id)
                .ok_or_else(|| {
                    ModelError::InvalidInput(format!("sample {b}: image token missing"))
                })?;
            let [t, h, w] = *grids.get(next_image).ok_or_else(|| {
                ModelError::InvalidInput(format!(
                    "sample {b}: more images in input_ids than image grids ({})",
                    grids.len()
                ))
            })?;
            next_image += 1;
            let text_len = ed - st;
            for i in 0..text_len as i64 {
                for axis in &mut pos {
                    axis.push(next_start + i);
                }
            }
            let base = next_start + text_len as i64;
            let (gh, gw) = (h / merge, w / merge);
            let mut max = base - 1;
            for _ in 0..t {
                // Images: the temporal index is always 0 (second_per_grid_t = 0).
                for y in 0..gh {
                    for x in 0..gw {
                        pos[0].push(base);
                        pos[1].push(base + y as i64);
                        pos[2].push(base + x as i64);
                        max = max.max(base + y.max(x) as i64);
                    }
                }
            }
            next_start = max + 1;
            st = ed + t * gh * gw;
            if st > ids.len() {
                return Err(ModelError::InvalidInput(format!(
                    "sample {b}: image {} needs {} image tokens, the sequence ends first",
                    next_image - 1,
                    t * gh * gw
                )));
            }
        }
        for i in 0..(ids.len() - st) as i64 {
            for axis in &mut pos {
                axis.push(next_start + i);
            }
        }
        let max = pos.iter().flatten().copied().max().unwrap_or(-1);
        for (axis, values) in pos.iter().enumerate() {
            for (&i, &p) in kept.iter().zip(values) {
                position_ids[axis][b][i] = p;
            }
        }
        rope_deltas.push(max + 1 - len as i64);
    }
    Ok(MropePositions {
        position_ids,
        rope_deltas,
    })
}

/// LLM rotary tables for M-RoPE: `cos`/`sin` `[batch, len, head_dim]`. Frequency `i` of each
/// half uses the axis whose `mrope_section` chunk contains `i`.
pub fn mrope_tables<B: Backend>(
    positions: &MropePositions,
    head_dim: usize,
    theta: f64,
    mrope_section: &[usize],
    device: &B::Device,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let freqs = inv_freq(head_dim, theta);
    let half = head_dim / 2;
    let axis_of: Vec<usize> = mrope_section
        .iter()
        .enumerate()
        .flat_map(|(axis, &n)| std::iter::repeat_n(axis, n))
        .collect();
    let (batch, len) = positions.dims();
    let mut cos = Vec::with_capacity(batch * len * head_dim);
    let mut sin = Vec::with_capacity(batch * len * head_dim);
    let mut angle = vec![0f32; head_dim];
    for b in 0..batch {
        for l in 0..len {
            for i in 0..half {
                let p = positions.position_ids[axis_of[i]][b][l] as f32;
                angle[i] = p * freqs[i];
                angle[half + i] = angle[i];
            }
            cos.extend(angle.iter().map(|a| a.cos()));
            sin.extend(angle.iter().map(|a| a.sin()));
        }
    }
    let shape = [batch, len, head_dim];
    (
        Tensor::from_data(TensorData::new(cos, shape), device),
        Tensor::from_data(TensorData::new(sin, shape), device),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKENS: RopeTokens = RopeTokens {
        image_token_id: 9,
        vision_start_token_id: 8,
        spatial_merge_size: 2,
    };

    #[test]
    fn border_windows_are_smaller() {
        // 5x3 merged tokens, windows of 2x2 merged tokens.
        let layout = window_layout(&[[1, 10, 6]], 2, 2);
        assert_eq!(
            layout.window_index,
            vec![0, 1, 3, 4, 2, 5, 6, 7, 9, 10, 8, 11, 12, 13, 14]
        );
        assert_eq!(layout.cu_window_seqlens, vec![0, 16, 24, 40, 48, 56, 60]);
        assert_eq!(layout.cu_seqlens, vec![0, 60]);
        // A second image continues the indices.
        let two = window_layout(&[[1, 4, 4], [1, 10, 6]], 2, 2);
        assert_eq!(two.window_index[..4], [0, 1, 2, 3]);
        assert_eq!(two.window_index[4..8], [4, 5, 7, 8]);
        assert_eq!(two.cu_seqlens, vec![0, 16, 76]);
    }

    #[test]
    fn rope_index_with_left_padding_and_text_after_the_image() {
        // pad pad | a b <vs> 6 image tokens (2x3 merged) <ve> c d
        let ids = vec![0, 0, 1, 2, 8, 9, 9, 9, 9, 9, 9, 3, 4, 5];
        let mask: Vec<bool> = (0..14).map(|i| i >= 2).collect();
        let out = get_rope_index(&[ids], &[mask], &[[1, 4, 6]], TOKENS).unwrap();
        let [t, h, w] = &out.position_ids;
        assert_eq!(t[0], vec![1, 1, 0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7, 8]);
        assert_eq!(h[0], vec![1, 1, 0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7, 8]);
        assert_eq!(w[0], vec![1, 1, 0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8]);
        assert_eq!(out.rope_deltas, vec![9 - 14]);
    }

    #[test]
    fn rope_index_consumes_grids_in_order_across_samples() {
        // sample 0: two images (1 and 4 merged tokens), sample 1: text only.
        let s0 = vec![8, 9, 1, 8, 9, 9, 9, 9, 2];
        let s1 = vec![1, 2, 3, 4, 5, 6, 7, 1, 1];
        let mask = vec![vec![true; 9]; 2];
        let out = get_rope_index(&[s0, s1], &mask, &[[1, 2, 2], [1, 4, 4]], TOKENS).unwrap();
        let [t, h, w] = &out.position_ids;
        assert_eq!(t[0], vec![0, 1, 2, 3, 4, 4, 4, 4, 6]);
        assert_eq!(h[0], vec![0, 1, 2, 3, 4, 4, 5, 5, 6]);
        assert_eq!(w[0], vec![0, 1, 2, 3, 4, 5, 4, 5, 6]);
        assert_eq!(t[1], (0..9).collect::<Vec<i64>>());
        assert_eq!(out.rope_deltas, vec![7 - 9, 0]);
        // Too few grids is an error, not a panic.
        let err = get_rope_index(&[vec![8, 9]], &[vec![true; 2]], &[], TOKENS).unwrap_err();
        assert!(err.to_string().contains("more images"), "{err}");
    }
}
