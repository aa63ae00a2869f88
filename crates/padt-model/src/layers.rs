//! Basic layers with Hugging Face parameter names and layouts (`weight` [out, in], `bias`),
//! so module paths are checkpoint keys. Parameters are initialised lazily: building a 7B model
//! allocates nothing until a parameter is read or loaded.

use burn::module::{Initializer, Module, Param};
use burn::tensor::{backend::Backend, DType, Int, Tensor};

/// Standard deviation of the random init of the published configs (transformers
/// `initializer_range`); a config may set another.
pub const INIT_STD: f64 = 0.02;

/// `y = x Wᵀ + b` with `weight` stored as in PyTorch, `[out_features, in_features]`.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[out_features, in_features]`
    pub weight: Param<Tensor<B, 2>>,
    /// `[out_features]`
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// A lazily initialised layer (normal(0, `init_std`) weight, zero bias).
    pub fn new(d_in: usize, d_out: usize, bias: bool, init_std: f64, device: &B::Device) -> Self {
        let weight = Initializer::Normal {
            mean: 0.0,
            std: init_std,
        }
        .init([d_out, d_in], device);
        let bias = bias.then(|| Initializer::Zeros.init([d_out], device));
        Self { weight, bias }
    }

    /// Runs in the dtype of `x`: f32 parameters are cast to it (differentiably, so their
    /// gradients stay f32).
    ///
    /// # Shapes
    /// - `x`: `[..., in_features]` → `[..., out_features]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let mut shape = x.dims();
        let d_in = shape[D - 1];
        let rows = x.shape().num_elements() / d_in.max(1);
        // One `[rows, in] x [in, out]` product instead of a batch of `[seq, in]` ones against a
        // broadcast weight: burn's linear backward otherwise computes the weight gradient as
        // one product per batch entry and then sums them (twice the time on CPU).
        let y = burn::tensor::module::linear(
            x.reshape([rows, d_in]),
            self.weight.val().cast(dtype).transpose(),
            self.bias.as_ref().map(|b| b.val().cast(dtype)),
        );
        shape[D - 1] = y.dims()[1];
        y.reshape(shape)
    }
}

/// Qwen2 RMSNorm: `weight * x / sqrt(mean(x²) + eps)`, statistics in f32.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// `[dim]`
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// A norm with weight 1.
    pub fn new(dim: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: Initializer::Ones.init([dim], device),
            eps,
        }
    }

    /// # Shapes
    /// - `x`: `[..., dim]` → `[..., dim]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let variance = x.clone().square().mean_dim(D - 1);
        let normed = x * (variance + self.eps).sqrt().recip();
        let weight = self.weight.val().cast(dtype).unsqueeze::<D>();
        // Full tensor on the left: the CPU backend's shared-row broadcast fast path wants it so.
        normed.cast(dtype) * weight
    }
}

/// Token embedding table `weight` `[num_embeddings, dim]`.
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    /// `[num_embeddings, dim]`
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Embedding<B> {
    /// A lazily initialised table (normal(0, `init_std`)).
    pub fn new(num_embeddings: usize, dim: usize, init_std: f64, device: &B::Device) -> Self {
        Self {
            weight: Initializer::Normal {
                mean: 0.0,
                std: init_std,
            }
            .init([num_embeddings, dim], device),
        }
    }

    /// # Shapes
    /// - `ids`: `[batch, seq]` (every id < num_embeddings) → `[batch, seq, dim]`
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, seq] = ids.dims();
        let rows = self.weight.val().select(0, ids.reshape([batch * seq]));
        let dim = rows.dims()[1];
        rows.reshape([batch, seq, dim])
    }
}
