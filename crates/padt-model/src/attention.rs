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
    let device = q.device();
    let lens: Vec<usize> = cu_seqlens
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|&l| l > 0)
        .collect();
    let starts: Vec<usize> = cu_seqlens
        .windows(2)
        .filter(|w| w[1] > w[0])
        .map(|w| w[0])
        .collect();
    assert_eq!(
        lens.iter().sum::<usize>(),
        tokens,
        "cu_seqlens must cover every token exactly once"
    );
    let n_seq = lens.len();
    let max_len = lens.iter().copied().max().unwrap_or(0);
    let to_batch = |x: Tensor<B, 3>| -> Tensor<B, 4> { x.swap_dims(0, 1).unsqueeze_dim(0) };

    if lens.iter().all(|&l| l == max_len) {
        // Equal lengths: a reshape, no gather and no mask.
        let split = |x: Tensor<B, 3>| x.reshape([n_seq, max_len, heads, head_dim]).swap_dims(1, 2);
        let out = attention(split(q), split(k), split(v), None, scale);
        return out.swap_dims(1, 2).reshape([tokens, heads, head_dim]);
    }
    if n_seq == 1 {
        let out = attention(to_batch(q), to_batch(k), to_batch(v), None, scale);
        return out.squeeze_dim::<3>(0).swap_dims(0, 1);
    }

    // Padded slot (i, j) reads token starts[i] + j, or starts[i] (any valid row) when j >= len.
    let mut gather = Vec::with_capacity(n_seq * max_len);
    let mut pad = Vec::with_capacity(n_seq * max_len);
    let mut keep = Vec::with_capacity(tokens);
    for (i, (&start, &len)) in starts.iter().zip(&lens).enumerate() {
        for j in 0..max_len {
            gather.push((start + j.min(len - 1)) as i64);
            pad.push(j >= len);
        }
        keep.extend((0..len).map(|j| (i * max_len + j) as i64));
    }
    let gather =
        Tensor::<B, 1, Int>::from_data(TensorData::new(gather, [n_seq * max_len]), &device);
    let keep = Tensor::<B, 1, Int>::from_data(TensorData::new(keep, [tokens]), &device);
    let key_pad =
        Tensor::<B, 4, Bool>::from_data(TensorData::new(pad, [n_seq, 1, 1, max_len]), &device)
            .expand([n_seq, 1, max_len, max_len]);
    let split = |x: Tensor<B, 3>| {
        x.select(0, gather.clone())
            .reshape([n_seq, max_len, heads, head_dim])
            .swap_dims(1, 2)
    };
    let out = attention(split(q), split(k), split(v), Some(key_pad), scale);
    out.swap_dims(1, 2)
        .reshape([n_seq * max_len, heads, head_dim])
        .select(0, keep)
}
