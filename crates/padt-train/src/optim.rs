//! AdamW with parameter groups, matching `torch.optim.AdamW` step for step.
//!
//! burn 0.21 has no parameter groups and keys optimizer state by the process-local `ParamId`,
//! which cannot be resumed into a freshly loaded model. This optimizer keys state by the
//! parameter's dotted path (see [`crate::params`]), assigns every parameter to a group by name
//! (per-group learning-rate multiplier and weight decay, optional no-decay for norms/biases,
//! frozen prefixes), and saves its state as safetensors for an exact resume.
//!
//! The update per parameter, in f32 like torch's (single-tensor and foreach are the same math):
//! ```text
//! step += 1
//! p  ← p · (1 − lr·wd)                                  (skipped when wd = 0)
//! m  ← m + (g − m)·(1 − β1)                             (torch lerp)
//! v  ← v·β2 + g²·(1 − β2)
//! p  ← p − lr/(1 − β1^step) · m / (√v / √(1 − β2^step) + ε)
//! ```
//! Bias corrections are computed in f64 as Python does, then used as f32 scalars.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use burn::module::{AutodiffModule, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::Device;
use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::params::{list_params, PathStack};
use crate::recipe::TrainConfig;
use crate::tensor_io::{MappedTensors, StreamingWriter, TensorIoError, TensorSpec};

/// Errors of the optimizer state.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// Reading or writing the state file failed.
    #[error(transparent)]
    Io(#[from] TensorIoError),
    /// The saved state does not fit this optimizer or model.
    #[error("optimizer state {path}: {message}")]
    Mismatch { path: String, message: String },
}

/// One parameter group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSpec {
    /// Name (`default` for parameters no group claims).
    pub name: String,
    /// Name prefixes claiming a parameter (empty for the default group).
    pub prefixes: Vec<String>,
    /// Learning-rate multiplier.
    pub lr_scale: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

/// How parameters are assigned to groups, decay and freezing, by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamRules {
    /// Groups; index 0 is the default group.
    pub groups: Vec<GroupSpec>,
    /// Exempt rank-≤1 tensors and `bias`/`beta`/`gamma`/`*norm*` names from weight decay.
    pub no_decay_norms_and_biases: bool,
    /// Freeze names containing `visual` (reference `freeze_vision_modules`).
    pub freeze_vision_tower: bool,
    /// Freeze names starting with these prefixes.
    pub frozen_prefixes: Vec<String>,
}

/// Where one parameter goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// Index into [`ParamRules::groups`].
    pub group: usize,
    /// Effective weight decay.
    pub weight_decay: f64,
    /// Frozen (never updated).
    pub frozen: bool,
}

impl ParamRules {
    /// The rules of a recipe (`optimizer`, `param_groups`, `freeze`).
    pub fn from_config(config: &TrainConfig) -> Self {
        let mut groups = vec![GroupSpec {
            name: "default".into(),
            prefixes: Vec::new(),
            lr_scale: 1.0,
            weight_decay: config.optimizer.weight_decay,
        }];
        groups.extend(config.param_groups.iter().map(|g| GroupSpec {
            name: g.name.clone(),
            prefixes: g.prefixes.clone(),
            lr_scale: g.lr_scale,
            weight_decay: g.weight_decay.unwrap_or(config.optimizer.weight_decay),
        }));
        ParamRules {
            groups,
            no_decay_norms_and_biases: config.optimizer.no_decay_norms_and_biases,
            freeze_vision_tower: config.freeze.vision_tower,
            frozen_prefixes: config.freeze.prefixes.clone(),
        }
    }

    /// Whether the parameter `name` is frozen.
    pub fn is_frozen(&self, name: &str) -> bool {
        (self.freeze_vision_tower && name.contains("visual"))
            || self.frozen_prefixes.iter().any(|p| name.starts_with(p))
    }

    /// Group, weight decay and freezing of the parameter `name` of rank `rank`.
    pub fn assign(&self, name: &str, rank: usize) -> Assignment {
        let group = self
            .groups
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, g)| g.prefixes.iter().any(|p| name.starts_with(p)))
            .map_or(0, |(i, _)| i);
        let mut weight_decay = self.groups[group].weight_decay;
        if self.no_decay_norms_and_biases && is_norm_or_bias(name, rank) {
            weight_decay = 0.0;
        }
        Assignment {
            group,
            weight_decay,
            frozen: self.is_frozen(name),
        }
    }
}

/// Biases and normalisation weights: rank ≤ 1, or named like one.
fn is_norm_or_bias(name: &str, rank: usize) -> bool {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    rank <= 1
        || matches!(leaf, "bias" | "beta" | "gamma")
        || name
            .split('.')
            .any(|s| s.to_ascii_lowercase().contains("norm"))
}

/// AdamW hyper-parameters shared by every group.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWHyper {
    /// β1, β2.
    pub betas: [f64; 2],
    /// ε.
    pub eps: f64,
}

/// Moments of one parameter, flattened to rank 1.
#[derive(Debug, Clone)]
pub struct ParamState<B: Backend> {
    /// Updates applied to this parameter.
    pub step: u64,
    /// First moment (torch `exp_avg`).
    pub exp_avg: Tensor<B, 1>,
    /// Second moment (torch `exp_avg_sq`).
    pub exp_avg_sq: Tensor<B, 1>,
}

/// Per-group numbers of the last step, for logging.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupStepInfo {
    /// Group name.
    pub name: String,
    /// Learning rate used.
    pub lr: f64,
    /// Parameters updated.
    pub params_updated: usize,
}

/// AdamW over named parameter groups. `B` is the autodiff backend of the model; the state
/// lives on its inner backend.
pub struct GroupedAdamW<B: AutodiffBackend> {
    hyper: AdamWHyper,
    rules: ParamRules,
    state: BTreeMap<String, ParamState<B::InnerBackend>>,
}

/// Metadata stored next to the moments in the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateMeta {
    format: u32,
    hyper: AdamWHyper,
    rules: ParamRules,
    steps: BTreeMap<String, u64>,
}

const STATE_FORMAT: u32 = 1;
const META_KEY: &str = "padt_optimizer";

impl<B: AutodiffBackend> GroupedAdamW<B> {
    /// A fresh optimizer.
    pub fn new(hyper: AdamWHyper, rules: ParamRules) -> Self {
        GroupedAdamW {
            hyper,
            rules,
            state: BTreeMap::new(),
        }
    }

    /// The optimizer of a recipe.
    pub fn from_config(config: &TrainConfig) -> Self {
        Self::new(
            AdamWHyper {
                betas: config.optimizer.betas,
                eps: config.optimizer.eps,
            },
            ParamRules::from_config(config),
        )
    }

    /// The assignment rules.
    pub fn rules(&self) -> &ParamRules {
        &self.rules
    }

    /// State of parameter `name`, if it was updated at least once.
    pub fn state(&self, name: &str) -> Option<&ParamState<B::InnerBackend>> {
        self.state.get(name)
    }

    /// Freezes the parameters the rules freeze (no gradient is computed for them); returns the
    /// module and the frozen names.
    pub fn freeze<M: AutodiffModule<B>>(&self, module: M) -> (M, Vec<String>) {
        crate::params::freeze_params::<B, M, _>(module, |name| self.rules.is_frozen(name))
    }

    /// Every parameter of `module` with its assignment (for the run log).
    pub fn plan<M: AutodiffModule<B>>(&self, module: &M) -> Vec<(String, usize, Assignment)> {
        list_params::<B, M>(module)
            .into_iter()
            .map(|p| {
                let a = self.rules.assign(&p.name, p.shape.len());
                let numel = p.numel();
                (p.name, numel, a)
            })
            .collect()
    }

    /// One AdamW step with default-group learning rate `lr` (each group uses `lr × lr_scale`).
    /// Parameters without a gradient, or frozen, are left unchanged.
    pub fn step<M: AutodiffModule<B>>(
        &mut self,
        lr: f64,
        module: M,
        mut grads: GradientsParams,
    ) -> (M, Vec<GroupStepInfo>) {
        let mut mapper = StepMapper {
            optim: self,
            lr,
            grads: &mut grads,
            path: PathStack::default(),
            seen: HashSet::new(),
            updated: Vec::new(),
        };
        let module = module.map(&mut mapper);
        let updated = mapper.updated;
        let info = self
            .rules
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| GroupStepInfo {
                name: g.name.clone(),
                lr: lr * g.lr_scale,
                params_updated: updated.iter().filter(|&&u| u == i).count(),
            })
            .collect();
        (module, info)
    }

    fn update<const D: usize>(
        &mut self,
        name: &str,
        lr: f64,
        weight_decay: f64,
        param: Tensor<B::InnerBackend, D>,
        grad: Tensor<B::InnerBackend, D>,
    ) -> Tensor<B::InnerBackend, D> {
        let dims = param.dims();
        let numel: usize = dims.iter().product();
        let param_dtype = param.dtype();
        let p = to_f32(param).reshape([numel]);
        let g = to_f32(grad).reshape([numel]);
        let [beta1, beta2] = self.hyper.betas;

        let state = self.state.remove(name);
        let (step, m, v) = match state {
            Some(s) => (s.step + 1, s.exp_avg, s.exp_avg_sq),
            None => (1, p.zeros_like(), p.zeros_like()),
        };
        let p = if weight_decay != 0.0 {
            p.mul_scalar((1.0 - lr * weight_decay) as f32)
        } else {
            p
        };
        let m = m.clone() + (g.clone() - m).mul_scalar((1.0 - beta1) as f32);
        let v = v.mul_scalar(beta2 as f32) + g.square().mul_scalar((1.0 - beta2) as f32);
        let bias_correction1 = 1.0 - beta1.powf(step as f64);
        let bias_correction2 = 1.0 - beta2.powf(step as f64);
        let step_size = lr / bias_correction1;
        let denom = v
            .clone()
            .sqrt()
            .div_scalar(bias_correction2.sqrt() as f32)
            .add_scalar(self.hyper.eps as f32);
        let p = p - (m.clone() / denom).mul_scalar(step_size as f32);
        self.state.insert(
            name.to_string(),
            ParamState {
                step,
                exp_avg: m,
                exp_avg_sq: v,
            },
        );
        let p = p.reshape(dims);
        if p.dtype() == param_dtype {
            p
        } else {
            p.cast(param_dtype)
        }
    }

    /// Writes the state (moments as f32 safetensors, steps and rules as metadata).
    pub fn save(&self, path: &Path) -> Result<(), OptimError> {
        let mut specs = Vec::with_capacity(self.state.len() * 2);
        for (name, s) in &self.state {
            let shape = s.exp_avg.dims().to_vec();
            specs.push(TensorSpec {
                name: format!("{name}.exp_avg"),
                shape: shape.clone(),
            });
            specs.push(TensorSpec {
                name: format!("{name}.exp_avg_sq"),
                shape,
            });
        }
        let meta = StateMeta {
            format: STATE_FORMAT,
            hyper: self.hyper,
            rules: self.rules.clone(),
            steps: self
                .state
                .iter()
                .map(|(k, s)| (k.clone(), s.step))
                .collect(),
        };
        let metadata = BTreeMap::from([(
            META_KEY.to_string(),
            serde_json::to_string(&meta).expect("json"),
        )]);
        let mut writer = StreamingWriter::create(path, specs, &metadata)?;
        for (name, s) in &self.state {
            writer.write_next(&format!("{name}.exp_avg"), &tensor_values(&s.exp_avg))?;
            writer.write_next(&format!("{name}.exp_avg_sq"), &tensor_values(&s.exp_avg_sq))?;
        }
        writer.finish()?;
        Ok(())
    }

    /// Replaces the state by the one saved at `path`. The hyper-parameters and group rules
    /// must be those of this optimizer (a resumed run must not silently change them).
    pub fn load(
        &mut self,
        path: &Path,
        device: &Device<B::InnerBackend>,
    ) -> Result<(), OptimError> {
        let file = MappedTensors::open(path)?;
        let mismatch = |message: String| OptimError::Mismatch {
            path: path.display().to_string(),
            message,
        };
        let meta: StateMeta = file
            .metadata(META_KEY)
            .ok_or_else(|| mismatch(format!("no `{META_KEY}` metadata")))
            .and_then(|s| {
                serde_json::from_str(&s).map_err(|e| mismatch(format!("bad metadata: {e}")))
            })?;
        if meta.format != STATE_FORMAT {
            return Err(mismatch(format!(
                "format {} (this build reads {STATE_FORMAT})",
                meta.format
            )));
        }
        if meta.hyper != self.hyper || meta.rules != self.rules {
            return Err(mismatch(format!(
                "saved with different optimizer settings (saved {:?} {:?}, now {:?} {:?})",
                meta.hyper, meta.rules, self.hyper, self.rules
            )));
        }
        let mut state = BTreeMap::new();
        for (name, step) in meta.steps {
            let read = |suffix: &str| -> Result<Tensor<B::InnerBackend, 1>, OptimError> {
                let (values, shape) = file.read_f32(&format!("{name}.{suffix}"))?;
                if shape.len() != 1 {
                    return Err(mismatch(format!("`{name}.{suffix}` is not rank 1")));
                }
                Ok(Tensor::from_data(TensorData::new(values, shape), device))
            };
            let exp_avg = read("exp_avg")?;
            let exp_avg_sq = read("exp_avg_sq")?;
            state.insert(
                name,
                ParamState {
                    step,
                    exp_avg,
                    exp_avg_sq,
                },
            );
        }
        self.state = state;
        Ok(())
    }
}

fn to_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    if t.dtype() == DType::F32 {
        t
    } else {
        t.cast(FloatDType::F32)
    }
}

/// Host copy of a tensor's values as f32.
pub(crate) fn tensor_values<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Vec<f32> {
    to_f32(t.clone())
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 data")
}

struct StepMapper<'a, B: AutodiffBackend> {
    optim: &'a mut GroupedAdamW<B>,
    lr: f64,
    grads: &'a mut GradientsParams,
    path: PathStack,
    seen: HashSet<burn::module::ParamId>,
    updated: Vec<usize>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for StepMapper<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let name = self.path.current();
        let assignment = self.optim.rules.assign(&name, D);
        // A shared parameter is updated once; frozen ones never.
        let grad = if assignment.frozen || !self.seen.insert(id) {
            None
        } else {
            self.grads.remove::<B::InnerBackend, D>(id)
        };
        let Some(grad) = grad else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        #[cfg(feature = "cuda")]
        let distributed = tensor.is_distributed();
        let group = &self.optim.rules.groups[assignment.group];
        let lr = self.lr * group.lr_scale;
        let updated = self
            .optim
            .update(&name, lr, assignment.weight_decay, tensor.inner(), grad);
        self.updated.push(assignment.group);
        let mut tensor = Tensor::from_inner(updated);
        if require_grad {
            tensor = tensor.require_grad();
        }
        #[cfg(feature = "cuda")]
        if distributed {
            tensor = tensor.set_distributed(
                burn::tensor::backend::distributed::DistributedParamId::from(id.val()),
            );
        }
        Param::from_mapped_value(id, tensor, mapper)
    }
}
