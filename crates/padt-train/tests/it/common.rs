//! A small module for the optimizer, clipping and data-parallel tests.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

pub type B = burn::backend::Autodiff<burn::backend::Flex>;
pub type Inner = burn::backend::Flex;

/// Two parameters: `w` [3, 2] and `b` [2].
#[derive(Module, Debug)]
pub struct Tiny<B: Backend> {
    pub w: Param<Tensor<B, 2>>,
    pub b: Param<Tensor<B, 1>>,
}

/// A nested module: names `head.w`, `head.b`, `layers.0.w`, ..., `norm_gamma`.
#[derive(Module, Debug)]
pub struct Nested<B: Backend> {
    pub head: Tiny<B>,
    pub layers: Vec<Tiny<B>>,
    pub norm_gamma: Param<Tensor<B, 1>>,
}

pub fn device() -> burn::tensor::ops::Device<Inner> {
    Default::default()
}

pub fn param1(values: &[f32]) -> Param<Tensor<B, 1>> {
    Param::from_tensor(Tensor::from_data(
        TensorData::new(values.to_vec(), [values.len()]),
        &device(),
    ))
}

pub fn param2(values: &[f32], rows: usize, cols: usize) -> Param<Tensor<B, 2>> {
    Param::from_tensor(Tensor::from_data(
        TensorData::new(values.to_vec(), [rows, cols]),
        &device(),
    ))
}

pub fn tiny(seed: f32) -> Tiny<B> {
    let w: Vec<f32> = (0..6).map(|i| seed + 0.1 * i as f32 - 0.2).collect();
    Tiny {
        w: param2(&w, 3, 2),
        b: param1(&[seed * 0.5, -seed]),
    }
}

pub fn nested() -> Nested<B> {
    Nested {
        head: tiny(0.3),
        layers: vec![tiny(-0.1), tiny(0.7)],
        norm_gamma: param1(&[1.0, 0.9]),
    }
}

pub fn values1<Bk: Backend>(t: Tensor<Bk, 1>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

pub fn values2<Bk: Backend>(t: Tensor<Bk, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

/// Tensor of given values and shape on the autodiff backend (no grad).
pub fn tensor2(values: &[f32], rows: usize, cols: usize) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(values.to_vec(), [rows, cols]), &device())
}

pub fn tensor1(values: &[f32]) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), &device())
}

/// Loss whose gradients are exactly `cw` for `w` and `cb` for `b`: Σ w·cw + Σ b·cb.
pub fn linear_loss(m: &Tiny<B>, cw: &[f32], cb: &[f32]) -> Tensor<B, 1> {
    (m.w.val() * tensor2(cw, 3, 2)).sum() + (m.b.val() * tensor1(cb)).sum()
}

/// Mean squared error of `x W + b` against `y` over the rows of `x` ([n, 3] → [n, 2]).
pub fn mse_loss(m: &Tiny<B>, x: &[f32], y: &[f32]) -> Tensor<B, 1> {
    let n = x.len() / 3;
    let pred = tensor2(x, n, 3).matmul(m.w.val()) + m.b.val().unsqueeze::<2>();
    (pred - tensor2(y, n, 2))
        .square()
        .sum()
        .div_scalar(n as f32)
}

/// Root of the repository.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
