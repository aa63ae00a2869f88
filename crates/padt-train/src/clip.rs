//! Global-norm gradient clipping, as torch's `clip_grad_norm_`.
//!
//! burn's `GradientClipping::Norm` clips each tensor by its own norm; the reference (HF Trainer,
//! `max_grad_norm = 1.0`) clips all gradients together:
//! `total = ‖(‖g_1‖, …, ‖g_n‖)‖₂`, `coef = max_norm / (total + 1e-6)`, and every gradient is
//! multiplied by `min(coef, 1)`. The norms are computed in f32 whatever the gradient dtype.
//! In data-parallel training call this after the gradient all-reduce, so that every rank clips
//! the same averaged gradients by the same factor.

use std::collections::HashSet;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, ElementConversion, FloatDType, Tensor};

/// What clipping measured and did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipOutcome {
    /// Global L2 norm of all gradients before clipping (NaN or ∞ if any gradient is non-finite).
    pub total_norm: f64,
    /// The factor every gradient was multiplied by (1 when nothing was clipped).
    pub scale: f64,
}

impl ClipOutcome {
    /// Whether the norm is finite (a non-finite norm means the step must be skipped).
    pub fn is_finite(&self) -> bool {
        self.total_norm.is_finite()
    }
}

/// Global L2 norm of the gradients of `module`'s parameters, torch-style: the norm of the
/// per-tensor norms, in f32. Parameters without a gradient (frozen) do not count.
pub fn global_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut visitor = NormVisitor::<B> {
        grads,
        sum_sq: None,
        seen: HashSet::new(),
    };
    module.visit(&mut visitor);
    match visitor.sum_sq {
        None => 0.0,
        Some(sum_sq) => sum_sq.sqrt().into_scalar().elem::<f32>() as f64,
    }
}

/// Clips the gradients of `module`'s parameters to a global L2 norm of at most `max_norm`
/// (`None`: only measure). With a non-finite norm the gradients are left unchanged: the caller
/// skips the step (see [`crate::nonfinite`]).
pub fn clip_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    mut grads: GradientsParams,
    max_norm: Option<f64>,
) -> (GradientsParams, ClipOutcome) {
    let total = global_grad_norm::<B, M>(module, &grads);
    let mut outcome = ClipOutcome {
        total_norm: total,
        scale: 1.0,
    };
    let Some(max_norm) = max_norm else {
        return (grads, outcome);
    };
    if !total.is_finite() {
        return (grads, outcome);
    }
    // torch does this arithmetic on f32 tensors.
    let coef = max_norm as f32 / (total as f32 + 1e-6_f32);
    if coef < 1.0 {
        let mut scaler = ScaleVisitor::<B> {
            grads: &mut grads,
            scale: coef,
            seen: HashSet::new(),
            _b: std::marker::PhantomData,
        };
        module.visit(&mut scaler);
        outcome.scale = coef as f64;
    }
    (grads, outcome)
}

/// Accumulates the squared per-tensor norms on the device (one host sync at the end).
struct NormVisitor<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum_sq: Option<Tensor<B::InnerBackend, 1>>,
    /// A parameter reachable twice (shared) counts once.
    seen: HashSet<ParamId>,
}

fn to_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    if t.dtype() == DType::F32 {
        t
    } else {
        t.cast(FloatDType::F32)
    }
}

impl<B: AutodiffBackend> ModuleVisitor<B> for NormVisitor<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !self.seen.insert(param.id) {
            return;
        }
        let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) else {
            return;
        };
        // ‖g‖², then sqrt and square again like torch's stack-of-norms (same rounding path).
        let norm = to_f32(grad).square().sum().sqrt();
        let sq = norm.square();
        self.sum_sq = Some(match self.sum_sq.take() {
            None => sq,
            Some(acc) => acc + sq,
        });
    }
}

struct ScaleVisitor<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    scale: f32,
    seen: HashSet<ParamId>,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ScaleVisitor<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !self.seen.insert(param.id) {
            return;
        }
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads
                .register::<B::InnerBackend, D>(param.id, grad.mul_scalar(self.scale));
        }
    }
}
