use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use padt_train::checkpoint::{load_model_params, save_model_params};
use padt_train::optim::{GroupedAdamW, OptimError};
use padt_train::params::list_params;
use padt_train::recipe::{ParamGroupConfig, TrainConfig};

use crate::common::{device, nested, tensor1, tensor2, values1, values2, Nested, B};

/// Names, coefficient slot and initial values of the nested module's parameters.
const NAMES: [&str; 7] = [
    "head.w",
    "head.b",
    "layers.0.w",
    "layers.0.b",
    "layers.1.w",
    "layers.1.b",
    "norm_gamma",
];

fn coeff(step: usize, k: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((step * 7 + k * 3 + i) % 5) as f32 * 0.3 - 0.6 + 0.05 * step as f32)
        .collect()
}

/// Σ p · c(step) over all parameters: the gradient of parameter k at `step` is `coeff(step, k)`.
fn loss(m: &Nested<B>, step: usize) -> Tensor<B, 1> {
    let mut total = (m.head.w.val() * tensor2(&coeff(step, 0, 6), 3, 2)).sum()
        + (m.head.b.val() * tensor1(&coeff(step, 1, 2))).sum();
    for (j, l) in m.layers.iter().enumerate() {
        total = total
            + (l.w.val() * tensor2(&coeff(step, 2 + 2 * j, 6), 3, 2)).sum()
            + (l.b.val() * tensor1(&coeff(step, 3 + 2 * j, 2))).sum();
    }
    total + (m.norm_gamma.val() * tensor1(&coeff(step, 6, 2))).sum()
}

fn all_values(m: &Nested<B>) -> Vec<Vec<f32>> {
    vec![
        values2(m.head.w.val()),
        values1(m.head.b.val()),
        values2(m.layers[0].w.val()),
        values1(m.layers[0].b.val()),
        values2(m.layers[1].w.val()),
        values1(m.layers[1].b.val()),
        values1(m.norm_gamma.val()),
    ]
}

fn config() -> TrainConfig {
    let mut c = TrainConfig::default();
    c.optimizer.weight_decay = 0.1;
    c.optimizer.no_decay_norms_and_biases = true;
    c.param_groups = vec![ParamGroupConfig {
        name: "layers1".into(),
        prefixes: vec!["layers.1.".into()],
        lr_scale: 0.5,
        weight_decay: Some(0.2),
    }];
    c.freeze.prefixes = vec!["layers.0.".into()];
    c
}

const LRS: [f64; 4] = [1e-2, 5e-3, 1e-3, 2e-3];

fn run_steps(
    mut m: Nested<B>,
    optim: &mut GroupedAdamW<B>,
    steps: std::ops::Range<usize>,
) -> Nested<B> {
    for step in steps {
        let grads = GradientsParams::from_grads::<B, _>(loss(&m, step).backward(), &m);
        m = optim.step(LRS[step], m, grads).0;
    }
    m
}

/// torch.optim.AdamW on one tensor, in f64.
struct TorchAdamW {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    step: i32,
}

impl TorchAdamW {
    fn new(p: &[f32]) -> Self {
        TorchAdamW {
            p: p.iter().map(|&x| x as f64).collect(),
            m: vec![0.0; p.len()],
            v: vec![0.0; p.len()],
            step: 0,
        }
    }
    fn step(&mut self, g: &[f32], lr: f64, wd: f64) {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        self.step += 1;
        let bc1 = 1.0 - b1.powi(self.step);
        let bc2 = 1.0 - b2.powi(self.step);
        for i in 0..self.p.len() {
            let g = g[i] as f64;
            self.p[i] *= 1.0 - lr * wd;
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g;
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g;
            let denom = self.v[i].sqrt() / bc2.sqrt() + eps;
            self.p[i] -= lr / bc1 * self.m[i] / denom;
        }
    }
}

#[test]
fn groups_decay_and_freezing_are_assigned_by_name() {
    let optim = GroupedAdamW::<B>::from_config(&config());
    let (m, frozen) = optim.freeze(nested());
    assert_eq!(frozen, vec!["layers.0.w", "layers.0.b"]);
    let names: Vec<String> = list_params::<B, _>(&m)
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, NAMES);
    let plan = optim.plan(&m);
    let summary: Vec<(&str, usize, f64, bool)> = plan
        .iter()
        .map(|(n, _, a)| (n.as_str(), a.group, a.weight_decay, a.frozen))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("head.w", 0, 0.1, false),
            ("head.b", 0, 0.0, false),
            ("layers.0.w", 0, 0.1, true),
            ("layers.0.b", 0, 0.0, true),
            ("layers.1.w", 1, 0.2, false),
            ("layers.1.b", 1, 0.0, false),
            ("norm_gamma", 0, 0.0, false),
        ]
    );
    // The reference's freeze_vision_modules: every name containing "visual".
    let mut c = TrainConfig::default();
    c.freeze.vision_tower = true;
    let rules = padt_train::optim::ParamRules::from_config(&c);
    assert!(rules.is_frozen("visual.blocks.0.attn.qkv.weight"));
    assert!(rules.is_frozen("model.visual_proj.weight"));
    assert!(!rules.is_frozen("model.layers.0.mlp.up_proj.weight"));
}

#[test]
fn three_steps_match_torch_adamw_per_group() {
    let mut optim = GroupedAdamW::<B>::from_config(&config());
    let (m, _) = optim.freeze(nested());
    let initial = all_values(&m);
    let m = run_steps(m, &mut optim, 0..3);
    let after = all_values(&m);
    // (lr scale, weight decay, frozen) per parameter, as assigned above.
    let setup = [
        (1.0, 0.1, false),
        (1.0, 0.0, false),
        (1.0, 0.1, true),
        (1.0, 0.0, true),
        (0.5, 0.2, false),
        (0.5, 0.0, false),
        (1.0, 0.0, false),
    ];
    for (k, (lr_scale, wd, frozen)) in setup.into_iter().enumerate() {
        if frozen {
            assert_eq!(after[k], initial[k], "{} must not change", NAMES[k]);
            assert!(optim.state(NAMES[k]).is_none());
            continue;
        }
        let mut reference = TorchAdamW::new(&initial[k]);
        for (step, lr) in LRS.iter().enumerate().take(3) {
            reference.step(&coeff(step, k, initial[k].len()), lr * lr_scale, wd);
        }
        for (i, (got, want)) in after[k].iter().zip(&reference.p).enumerate() {
            assert!(
                (*got as f64 - want).abs() < 2e-6,
                "{}[{i}]: {got} vs torch {want}",
                NAMES[k]
            );
        }
        assert_ne!(after[k], initial[k], "{} must move", NAMES[k]);
        let state = optim.state(NAMES[k]).unwrap();
        assert_eq!(state.step, 3);
        for (got, want) in values1(state.exp_avg.clone()).iter().zip(&reference.m) {
            assert!((*got as f64 - want).abs() < 1e-6);
        }
        for (got, want) in values1(state.exp_avg_sq.clone()).iter().zip(&reference.v) {
            assert!((*got as f64 - want).abs() < 1e-7);
        }
    }
}

#[test]
fn saved_state_resumes_bit_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    // Uninterrupted: 4 steps, saving after 2.
    let mut optim = GroupedAdamW::<B>::from_config(&config());
    let (m, _) = optim.freeze(nested());
    let m = run_steps(m, &mut optim, 0..2);
    save_model_params::<B, _>(&m, &tmp.path().join("model.safetensors")).unwrap();
    optim
        .save(&tmp.path().join("optimizer.safetensors"))
        .unwrap();
    let m = run_steps(m, &mut optim, 2..4);
    let uninterrupted = all_values(&m);

    // Resumed: a fresh process has new ParamIds; state is matched by name.
    let mut resumed_optim = GroupedAdamW::<B>::from_config(&config());
    let fresh = nested();
    let (fresh, _) = resumed_optim.freeze(fresh);
    let fresh = load_model_params::<B, _>(fresh, &tmp.path().join("model.safetensors")).unwrap();
    resumed_optim
        .load(&tmp.path().join("optimizer.safetensors"), &device())
        .unwrap();
    let fresh = run_steps(fresh, &mut resumed_optim, 2..4);
    assert_eq!(all_values(&fresh), uninterrupted);
    assert_eq!(resumed_optim.state("head.w").unwrap().step, 4);

    // Different optimizer settings refuse the saved state.
    let mut c = config();
    c.param_groups[0].lr_scale = 0.25;
    let mut other = GroupedAdamW::<B>::from_config(&c);
    let err = other
        .load(&tmp.path().join("optimizer.safetensors"), &device())
        .unwrap_err();
    assert!(matches!(err, OptimError::Mismatch { .. }), "{err}");
}
