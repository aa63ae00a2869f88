//! Optimizer, clipping and checkpoint throughput on a synthetic model (CPU, `Autodiff<Flex>`).
//!
//! `cargo bench -p padt-train --bench optim_checkpoint [-- N_MATRICES DIM]` (default 8 × 2048²,
//! 33.6 M parameters). Prints one line per measured operation (median of 3 runs).

use std::time::Instant;

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use padt_train::checkpoint::{load_model_params, save_model_params};
use padt_train::clip::clip_grad_norm;
use padt_train::optim::GroupedAdamW;
use padt_train::recipe::TrainConfig;

type A = burn::backend::Autodiff<burn::backend::Flex>;

#[derive(Module, Debug)]
struct Stack<B: Backend> {
    layers: Vec<Param<Tensor<B, 2>>>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let n: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(8);
    let dim: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2048);
    let device = Default::default();
    let mut model = Stack::<A> {
        layers: (0..n)
            .map(|_| {
                Param::from_tensor(Tensor::random(
                    [dim, dim],
                    Distribution::Normal(0.0, 0.02),
                    &device,
                ))
            })
            .collect(),
    };
    let params = (n * dim * dim) as f64;
    println!(
        "model: {n} × {dim}² = {:.1} M parameters (f32)",
        params / 1e6
    );
    let mut optim = GroupedAdamW::<A>::from_config(&TrainConfig::default());
    let grads_of = |m: &Stack<A>| {
        let loss = m
            .layers
            .iter()
            .map(|p| p.val().sum())
            .reduce(|a, b| a + b)
            .unwrap();
        GradientsParams::from_grads::<A, _>(loss.backward(), m)
    };
    let (mut t_clip, mut t_step) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let grads = grads_of(&model);
        let t = Instant::now();
        let (grads, outcome) = clip_grad_norm::<A, _>(&model, grads, Some(1.0));
        t_clip.push(t.elapsed().as_secs_f64());
        assert!(outcome.total_norm > 0.0);
        let t = Instant::now();
        model = optim.step(1e-4, model, grads).0;
        // Force the lazy update to run before stopping the clock.
        let _ = model.layers[n - 1].val().slice([0..1, 0..1]).into_data();
        t_step.push(t.elapsed().as_secs_f64());
    }
    let gb = params * 4.0 / 1e9;
    println!(
        "clip_grad_norm (global norm + scale): {:.3} s",
        median(t_clip)
    );
    let step = median(t_step);
    println!(
        "GroupedAdamW step: {step:.3} s ({:.0} M params/s)",
        params / step / 1e6
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut t_save, mut t_osave, mut t_load) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = Instant::now();
        save_model_params::<A, _>(&model, &dir.path().join("model.safetensors")).unwrap();
        t_save.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        optim
            .save(&dir.path().join("optimizer.safetensors"))
            .unwrap();
        t_osave.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        model = load_model_params::<A, _>(model, &dir.path().join("model.safetensors")).unwrap();
        t_load.push(t.elapsed().as_secs_f64());
    }
    let (s, o, l) = (median(t_save), median(t_osave), median(t_load));
    println!(
        "save model.safetensors (fsync): {s:.3} s ({:.2} GB/s)",
        gb / s
    );
    println!(
        "save optimizer.safetensors (2 moments, fsync): {o:.3} s ({:.2} GB/s)",
        2.0 * gb / o
    );
    println!(
        "load model.safetensors (mmap): {l:.3} s ({:.2} GB/s)",
        gb / l
    );
}
