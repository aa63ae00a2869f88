//! The one attention function of the crate. The ViT (per window / per image), the LLM (causal +
//! padding, grouped-query) and the PaDT decoder all call [`attention`] (directly or through
//! [`varlen_attention`]), so a fused kernel can replace it in this one place.
//!
//! Softmax statistics are computed in f32 whatever the compute dtype. Masking is an additive
//! f32 bias: 0 where a key is visible, the most negative finite f32 where it is masked (the
//! value transformers' eager attention fills in), so a fully masked row (a padding query) gives
//! a uniform distribution instead of NaN. Callers build the bias once per forward at the full
//! score shape: adding a same-shape contiguous tensor is the CPU backend's fast elementwise path
//! and has a free backward, where a `mask_fill` with a head-broadcast mask walked every element
//! one by one, forward and backward.

use burn::tensor::activation::softmax;
use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};

/// The bias value of a masked key (added to its score).
pub const MASKED: f32 = f32::MIN;

/// `x` as a new row-major contiguous tensor, made by multiplying it with the identity (exact:
/// every output is `1·x + 0·…`). The CPU backend's matmul reads strided and broadcast operands
/// at full speed, where its copy of a permuted or expanded view walks element by element; and
/// the matmul's backward hands a contiguous gradient to whatever produced `x`, whatever layout
/// the gradient arrives in. Placed right after a `reshape`, that keeps the reshape's backward
/// a free relabelling instead of an element-by-element copy of a permuted gradient.
///
/// # Shapes
/// - `x`: `[..., dim]` → `[..., dim]`
pub fn identity_matmul<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let dim = x.dims()[D - 1];
    let eye = Tensor::<B, 2>::eye(dim, &x.device()).cast(x.dtype());
    x.matmul(eye.unsqueeze::<D>())
}

/// `x.swap_dims(1, 2)` as a new contiguous tensor whose backward also returns a contiguous
/// gradient for `x` ([`identity_matmul`] on both sides of the swap). Heads-first attention
/// operands are made with it from `[batch, len, heads, head_dim]` reshapes, and the attention
/// output goes back through it.
///
/// # Shapes
/// - `x`: `[a, b, c, dim]` → `[a, c, b, dim]`
pub fn swap_dims_1_2_contiguous<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    // The first product stays a `[a, b]` batch of `[c, dim]` matrices (a·b small gemms): it is
    // the op whose backward receives the swapped, strided gradient. Done as one `[a·b·c, dim]`
    // matrix, a reshape sits between the swap and the product, and the reshape's backward
    // copies that gradient element by element (measured in the tenth session: no faster).
    identity_matmul(identity_matmul(x).swap_dims(1, 2))
}

/// Scaled dot-product attention with grouped-query heads.
///
/// Grouped-query attention folds each group of query heads into the query axis (`[batch,
/// kv_heads, group * q_len, head_dim]`) instead of copying every kv head `group` times, so the
/// kv heads are used where they are.
///
/// # Shapes
/// - `q`: `[batch, heads, q_len, head_dim]`
/// - `k`, `v`: `[batch, kv_heads, k_len, head_dim]`, `heads % kv_heads == 0` (GQA: each kv head
///   serves `heads / kv_heads` consecutive query heads)
/// - `bias`: `[batch, heads, q_len, k_len]` additive ([`MASKED`] = masked out)
/// - returns `[batch, heads, q_len, head_dim]`
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Option<Tensor<B, 4>>,
    scale: f64,
) -> Tensor<B, 4> {
    let [batch, heads, q_len, head_dim] = q.dims();
    let [_, kv_heads, k_len, _] = k.dims();
    let group = heads / kv_heads;
    let dtype = q.dtype();
    let q = if group == 1 {
        q
    } else {
        q.reshape([batch, kv_heads, group * q_len, head_dim])
    };
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .reshape([batch, heads, q_len, k_len])
        .cast(DType::F32)
        * scale;
    let probs = match bias {
        Some(bias) => masked_softmax(scores + bias),
        None => softmax(scores, 3),
    }
    .cast(dtype);
    let probs = if group == 1 {
        probs
    } else {
        probs.reshape([batch, kv_heads, group * q_len, k_len])
    };
    probs.matmul(v).reshape([batch, heads, q_len, head_dim])
}

/// Lowest shifted score passed to `exp` in [`masked_softmax`]: `exp(-87)` ≈ 1.6e-38 is still a
/// normal f32, and `exp` of anything below about -104 takes libm's underflow path (a call that
/// sets `errno`), several times slower than a normal `exp`.
const SHIFTED_SCORE_FLOOR: f64 = -87.0;

/// Softmax over the last axis of scores that carry [`MASKED`] biases: burn's decomposition
/// (detached row max, shift, `exp`, sum, divide) with the shifted scores clamped at
/// [`SHIFTED_SCORE_FLOOR`]. A masked key gets weight ≈ 1e-38 instead of exactly 0 (below f32
/// resolution next to the row's largest weight, 1), and half of a causal score matrix no longer
/// goes through the slow underflow path of `exp`.
///
/// # Shapes
/// - `scores`: `[batch, heads, q_len, k_len]` → `[batch, heads, q_len, k_len]`
fn masked_softmax<B: Backend>(scores: Tensor<B, 4>) -> Tensor<B, 4> {
    let max = scores.clone().detach().max_dim(3);
    let exp = (scores - max).clamp_min(SHIFTED_SCORE_FLOOR).exp();
    let sum = exp.clone().sum_dim(3);
    exp / sum
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
        let split = |x: Tensor<B, 3>| {
            swap_dims_1_2_contiguous(x.reshape([n_seq, max_len, heads, head_dim]))
        };
        let out = attention(split(q), split(k), split(v), None, scale);
        return swap_dims_1_2_contiguous(out).reshape([tokens, heads, head_dim]);
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
    // Key padding as an additive bias at the full score shape (see the module docs).
    let mut pad = Vec::with_capacity(n_seq * heads * max_q * max_k);
    for &len in &k_lens {
        for _ in 0..heads * max_q {
            pad.extend((0..max_k).map(|j| if j >= len { MASKED } else { 0.0 }));
        }
    }
    let key_pad =
        Tensor::<B, 4>::from_data(TensorData::new(pad, [n_seq, heads, max_q, max_k]), &device);
    let batch = |x: Tensor<B, 3>, idx: Tensor<B, 1, Int>, len: usize| {
        swap_dims_1_2_contiguous(x.select(0, idx).reshape([n_seq, len, heads, head_dim]))
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
    swap_dims_1_2_contiguous(out)
        .reshape([n_seq * max_q, heads, head_dim])
        .select(0, to_tensor(keep))
}
