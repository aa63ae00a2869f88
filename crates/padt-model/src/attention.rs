//! The one attention function of the crate. The ViT (per window / per image), the LLM (causal +
//! padding, grouped-query) and the PaDT decoder all call [`attention`] (directly or through
//! [`varlen_attention`]), so a fused kernel can replace it in this one place.
//!
//! Softmax statistics are computed in f32 whatever the compute dtype. Masked scores are set to
//! the most negative finite f32 (as transformers' eager attention does), so a fully masked row
//! (a padding query) gives a uniform distribution instead of NaN.

use burn::tensor::activation::softmax;
use burn::tensor::{backend::Backend, Bool, DType, Int, Tensor, TensorData};

/// Scaled dot-product attention with grouped-query heads.
///
/// # Shapes
/// - `q`: `[batch, heads, q_len, head_dim]`
/// - `k`, `v`: `[batch, kv_heads, k_len, head_dim]`, `heads % kv_heads == 0` (GQA: each kv head
///   serves `heads / kv_heads` consecutive query heads)
/// - `mask`: `[batch, 1 | heads, q_len, k_len]`, `true` = masked out
/// - returns `[batch, heads, q_len, head_dim]`
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    scale: f64,
) -> Tensor<B, 4> {
    let [batch, heads, q_len, _] = q.dims();
    let kv_heads = k.dims()[1];
    let k_len = k.dims()[2];
    let k = repeat_kv(k, heads / kv_heads);
    let v = repeat_kv(v, heads / kv_heads);
    let dtype = q.dtype();
    let scores = q.matmul(k.swap_dims(2, 3)).cast(DType::F32) * scale;
    let scores = match mask {
        Some(mask) => scores.mask_fill(mask.expand([batch, heads, q_len, k_len]), f32::MIN),
        None => scores,
    };
    let probs = softmax(scores, 3).cast(dtype);
    probs.matmul(v)
}

/// Repeats each kv head `times` times along the head axis.
///
/// # Shapes
/// - `x`: `[batch, kv_heads, len, dim]` → `[batch, kv_heads * times, len, dim]`
fn repeat_kv<B: Backend>(x: Tensor<B, 4>, times: usize) -> Tensor<B, 4> {
    if times == 1 {
        return x;
    }
    let [batch, kv_heads, len, dim] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([batch, kv_heads, times, len, dim])
        .reshape([batch, kv_heads * times, len, dim])
}

/// Non-causal attention over packed sequences: token rows `cu_seqlens[i]..cu_seqlens[i+1]`
/// attend only to each other (flash-attention `cu_seqlens` semantics). The sequences are
/// gathered into one padded batch `[n_seq, heads, max_len, head_dim]` (never one S×S mask over
/// all tokens); shorter sequences get a key-padding mask.
///
/// # Shapes
/// - `q`, `k`, `v`: `[tokens, heads, head_dim]` → `[tokens, heads, head_dim]`
pub fn varlen_attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    cu_seqlens: &[usize],
    scale: f64,
) -> Tensor<B, 3> {
    let [tokens, heads, head_dim] = q.dims();
    let lens: Vec<usize> = cu_seqlens
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|&l| l > 0)
        .collect();
    assert_eq!(
        lens.iter().sum::<usize>(),
        tokens,
        "cu_seqlens must cover every token exactly once"
    );
    let n_seq = lens.len();
    let max_len = lens.iter().copied().max().unwrap_or(0);

    if lens.iter().all(|&l| l == max_len) {
        // Equal lengths (one sequence included): a reshape, no gather and no mask.
        let split = |x: Tensor<B, 3>| x.reshape([n_seq, max_len, heads, head_dim]).swap_dims(1, 2);
        let out = attention(split(q), split(k), split(v), None, scale);
        return out.swap_dims(1, 2).reshape([tokens, heads, head_dim]);
    }
    // Unequal lengths: the per-sequence padded batch (empty sequences removed).
    let mut cu: Vec<usize> = cu_seqlens.to_vec();
    cu.dedup();
    varlen_cross_attention(q, k, v, &cu, &cu, scale)
}

/// Non-causal attention where query rows `cu_q[i]..cu_q[i+1]` attend to key rows
/// `cu_k[i]..cu_k[i+1]` (flash-attention `varlen` with separate query/key lengths). Sequences
/// are gathered into one padded batch with a key-padding mask and passed to the crate's one
/// [`attention`] function.
///
/// # Shapes
/// - `q`: `[tq, heads, head_dim]`, `k`, `v`: `[tk, heads, head_dim]` → `[tq, heads, head_dim]`
pub fn varlen_cross_attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    cu_q: &[usize],
    cu_k: &[usize],
    scale: f64,
) -> Tensor<B, 3> {
    let [tq, heads, head_dim] = q.dims();
    let device = q.device();
    let n_seq = cu_q.len() - 1;
    debug_assert_eq!(cu_k.len(), cu_q.len());
    let q_lens: Vec<usize> = cu_q.windows(2).map(|w| w[1] - w[0]).collect();
    let k_lens: Vec<usize> = cu_k.windows(2).map(|w| w[1] - w[0]).collect();
    let max_q = q_lens.iter().copied().max().unwrap_or(0);
    let max_k = k_lens.iter().copied().max().unwrap_or(0);

    // Padded slot j of sequence i reads row start + min(j, len - 1); padded keys are masked and
    // padded queries dropped afterwards.
    let gather = |cu: &[usize], lens: &[usize], max_len: usize| -> Vec<i64> {
        let mut idx = Vec::with_capacity(n_seq * max_len);
        for (i, &len) in lens.iter().enumerate() {
            for j in 0..max_len {
                idx.push((cu[i] + j.min(len.saturating_sub(1))) as i64);
            }
        }
        idx
    };
    let to_tensor = |idx: Vec<i64>| {
        let n = idx.len();
        Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [n]), &device)
    };
    let q_idx = to_tensor(gather(cu_q, &q_lens, max_q));
    let k_idx = to_tensor(gather(cu_k, &k_lens, max_k));
    let mut pad = Vec::with_capacity(n_seq * max_k);
    for &len in &k_lens {
        pad.extend((0..max_k).map(|j| j >= len));
    }
    let key_pad =
        Tensor::<B, 4, Bool>::from_data(TensorData::new(pad, [n_seq, 1, 1, max_k]), &device)
            .expand([n_seq, 1, max_q, max_k]);
    let batch = |x: Tensor<B, 3>, idx: Tensor<B, 1, Int>, len: usize| {
        x.select(0, idx)
            .reshape([n_seq, len, heads, head_dim])
            .swap_dims(1, 2)
    };
    let out = attention(
        batch(q, q_idx, max_q),
        batch(k, k_idx.clone(), max_k),
        batch(v, k_idx, max_k),
        Some(key_pad),
        scale,
    );
    let mut keep = Vec::with_capacity(tq);
    for (i, &len) in q_lens.iter().enumerate() {
        keep.extend((0..len).map(|j| (i * max_q + j) as i64));
    }
    out.swap_dims(1, 2)
        .reshape([n_seq * max_q, heads, head_dim])
        .select(0, to_tensor(keep))
}
