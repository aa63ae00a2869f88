//! Parameter names: walking a burn module with the dotted path of every float parameter.
//!
//! Module fields mirror the Hugging Face checkpoint keys (ARCHITECTURE decision 2), so the path
//! of a parameter (`model.layers.0.self_attn.q_proj.weight`) is what freeze rules, parameter
//! groups, optimizer state and checkpoints are keyed by. Paths are stable across processes,
//! unlike burn's random `ParamId`s.

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

/// One float parameter of a module.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    /// Dotted path, e.g. `visual.blocks.0.attn.qkv.weight`.
    pub name: String,
    /// burn's id of the parameter in this process.
    pub id: ParamId,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Whether autodiff tracks it (false for frozen parameters and non-autodiff backends).
    pub requires_grad: bool,
}

impl ParamInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The dotted path of the module being walked.
#[derive(Debug, Default, Clone)]
pub(crate) struct PathStack {
    segments: Vec<String>,
}

impl PathStack {
    pub(crate) fn enter(&mut self, name: &str) {
        self.segments.push(name.to_string());
    }
    pub(crate) fn exit(&mut self) {
        self.segments.pop();
    }
    pub(crate) fn current(&self) -> String {
        self.segments.join(".")
    }
}

/// Every float parameter of `module`, in visiting (declaration) order. A parameter reachable
/// twice (shared) is listed once.
pub fn list_params<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamInfo> {
    let mut visitor = ListVisitor {
        path: PathStack::default(),
        out: Vec::new(),
    };
    module.visit(&mut visitor);
    visitor.out
}

struct ListVisitor {
    path: PathStack,
    out: Vec<ParamInfo>,
}

impl<B: Backend> ModuleVisitor<B> for ListVisitor {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.out.iter().any(|p| p.id == param.id) {
            return;
        }
        let value = param.val();
        self.out.push(ParamInfo {
            name: self.path.current(),
            id: param.id,
            shape: value.dims().to_vec(),
            requires_grad: value.is_require_grad(),
        });
    }
}

/// Stops gradient tracking for every parameter whose path satisfies `frozen`; returns the
/// module and the names it froze.
pub fn freeze_params<B, M, F>(module: M, frozen: F) -> (M, Vec<String>)
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    F: Fn(&str) -> bool,
{
    let mut mapper = FreezeMapper {
        path: PathStack::default(),
        frozen,
        names: Vec::new(),
    };
    let module = module.map(&mut mapper);
    (module, mapper.names)
}

struct FreezeMapper<F> {
    path: PathStack,
    frozen: F,
    names: Vec<String>,
}

impl<B: Backend, F: Fn(&str) -> bool> ModuleMapper<B> for FreezeMapper<F> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let name = self.path.current();
        if (self.frozen)(&name) {
            self.names.push(name);
            param.set_require_grad(false)
        } else {
            param
        }
    }
}
