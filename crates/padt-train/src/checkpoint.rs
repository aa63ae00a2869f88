//! Training checkpoints: `checkpoint-<step>/` directories written atomically.
//!
//! A checkpoint holds everything an exact resume needs:
//!
//! | file | content |
//! |---|---|
//! | `model.safetensors` | every float parameter, f32, keyed by its dotted module path |
//! | `optimizer.safetensors` | AdamW moments per parameter + steps and group rules (metadata) |
//! | `trainer_state.json` | [`TrainerState`]: step, epoch, LR schedule, sampler cursor, RNG state, counters |
//!
//! Writing goes to `checkpoint-<step>.tmp/`; every file and the directory are fsynced, then the
//! directory is renamed to `checkpoint-<step>` and the parent fsynced. A crash at any point
//! leaves either the new complete checkpoint or none, and the previous ones untouched; leftover
//! `.tmp` directories are ignored by [`CheckpointManager::latest`] and removed on the next save.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::optim::{tensor_values, GroupedAdamW, OptimError};
use crate::params::{list_params, PathStack};
use crate::schedule::LrSchedule;
use crate::tensor_io::{MappedTensors, StreamingWriter, TensorIoError, TensorSpec};

/// File names inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// Optimizer state file.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Trainer state file.
pub const STATE_FILE: &str = "trainer_state.json";
const TMP_SUFFIX: &str = ".tmp";
const STATE_FORMAT: u32 = 1;

/// Errors of writing or reading checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// File-system failure.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Tensor file failure.
    #[error(transparent)]
    Tensors(#[from] TensorIoError),
    /// Optimizer state failure.
    #[error(transparent)]
    Optimizer(#[from] OptimError),
    /// The checkpoint's content does not fit the model or is malformed.
    #[error("checkpoint {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The loop's state at a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Format version of this file.
    pub format: u32,
    /// Optimizer steps completed.
    pub step: u64,
    /// Fractional epochs completed (HF `state.epoch`: the decoder warm-up reads it).
    pub epoch: f64,
    /// Samples consumed over all ranks.
    pub samples_seen: u64,
    /// The learning-rate schedule (a pure function of `step`).
    pub schedule: LrSchedule,
    /// Sampler position (opaque: the sampler's own serialisation).
    pub sampler: serde_json::Value,
    /// Random-number-generator state (opaque).
    pub rng: serde_json::Value,
    /// Non-finite steps skipped so far.
    pub nonfinite_skips: usize,
    /// Data-parallel world size the state was written with.
    pub world_size: usize,
    /// Samples per optimizer step the state was written with.
    pub global_batch_size: usize,
}

impl TrainerState {
    /// A state at `step` (the format version filled in).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        step: u64,
        epoch: f64,
        samples_seen: u64,
        schedule: LrSchedule,
        sampler: serde_json::Value,
        rng: serde_json::Value,
        nonfinite_skips: usize,
        world_size: usize,
        global_batch_size: usize,
    ) -> Self {
        TrainerState {
            format: STATE_FORMAT,
            step,
            epoch,
            samples_seen,
            schedule,
            sampler,
            rng,
            nonfinite_skips,
            world_size,
            global_batch_size,
        }
    }
}

/// Creates, lists and prunes the checkpoints of a run directory.
#[derive(Debug, Clone)]
pub struct CheckpointManager {
    dir: PathBuf,
    keep_last: Option<usize>,
}

impl CheckpointManager {
    /// Checkpoints live directly under `output_dir`; only the newest `keep_last` are kept.
    pub fn new(output_dir: impl Into<PathBuf>, keep_last: Option<usize>) -> Self {
        CheckpointManager {
            dir: output_dir.into(),
            keep_last,
        }
    }

    /// The directory of the checkpoint at `step`.
    pub fn path_for(&self, step: u64) -> PathBuf {
        self.dir.join(format!("checkpoint-{step}"))
    }

    /// Writes model, optimizer and trainer state as `checkpoint-<step>` (atomically), then
    /// prunes old checkpoints. Call it on rank 0 only.
    pub fn save<B: AutodiffBackend, M: Module<B>>(
        &self,
        model: &M,
        optim: &GroupedAdamW<B>,
        state: &TrainerState,
    ) -> Result<PathBuf, CheckpointError> {
        self.save_with(state.step, |tmp| {
            save_model_params::<B, M>(model, &tmp.join(MODEL_FILE))?;
            optim.save(&tmp.join(OPTIMIZER_FILE))?;
            write_json_synced(&tmp.join(STATE_FILE), state)
        })
    }

    /// The atomic-write protocol around `write_files`, which fills the temporary directory
    /// it is given (each file fsynced). On error the temporary directory is removed and no
    /// existing checkpoint is touched.
    pub fn save_with<F>(&self, step: u64, write_files: F) -> Result<PathBuf, CheckpointError>
    where
        F: FnOnce(&Path) -> Result<(), CheckpointError>,
    {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        self.remove_stale_tmp();
        let final_dir = self.path_for(step);
        let tmp = self.dir.join(format!("checkpoint-{step}{TMP_SUFFIX}"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        if let Err(e) = write_files(&tmp).and_then(|_| fsync_dir(&tmp)) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        // Re-saving a step (e.g. the final checkpoint after a resume at that step): move the
        // old one aside first, so that a crash leaves one of the two intact.
        let old = self.dir.join(format!("checkpoint-{step}.old"));
        if final_dir.exists() {
            if old.exists() {
                fs::remove_dir_all(&old).map_err(io_err(&old))?;
            }
            fs::rename(&final_dir, &old).map_err(io_err(&final_dir))?;
        }
        fs::rename(&tmp, &final_dir).map_err(io_err(&final_dir))?;
        fsync_dir(&self.dir)?;
        if old.exists() {
            fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
        self.prune()?;
        Ok(final_dir)
    }

    /// Complete checkpoints, oldest first.
    pub fn list(&self) -> Vec<(u64, PathBuf)> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found: Vec<(u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let step = name.strip_prefix("checkpoint-")?.parse::<u64>().ok()?;
                let path = e.path();
                is_complete(&path).then_some((step, path))
            })
            .collect();
        found.sort();
        found
    }

    /// The newest complete checkpoint (what `--resume` continues from).
    pub fn latest(&self) -> Option<(u64, PathBuf)> {
        self.list().pop()
    }

    /// Removes all but the newest `keep_last` complete checkpoints.
    pub fn prune(&self) -> Result<(), CheckpointError> {
        let Some(keep) = self.keep_last else {
            return Ok(());
        };
        let all = self.list();
        let excess = all.len().saturating_sub(keep.max(1));
        for (_, path) in &all[..excess] {
            fs::remove_dir_all(path).map_err(io_err(path))?;
        }
        Ok(())
    }

    fn remove_stale_tmp(&self) {
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("checkpoint-") && name.ends_with(TMP_SUFFIX) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// Whether `dir` holds the three files of a checkpoint with a readable trainer state.
pub fn is_complete(dir: &Path) -> bool {
    dir.join(MODEL_FILE).is_file()
        && dir.join(OPTIMIZER_FILE).is_file()
        && read_trainer_state(dir).is_ok()
}

/// Reads `trainer_state.json` of a checkpoint.
pub fn read_trainer_state(dir: &Path) -> Result<TrainerState, CheckpointError> {
    let path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    let state: TrainerState =
        serde_json::from_str(&text).map_err(|e| CheckpointError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
    if state.format != STATE_FORMAT {
        return Err(CheckpointError::Invalid {
            path,
            message: format!("format {} (this build reads {STATE_FORMAT})", state.format),
        });
    }
    Ok(state)
}

/// Loads model parameters and optimizer state of a checkpoint; returns the model and the
/// trainer state.
pub fn load_checkpoint<B: AutodiffBackend, M: Module<B>>(
    dir: &Path,
    model: M,
    optim: &mut GroupedAdamW<B>,
    device: &burn::tensor::ops::Device<B::InnerBackend>,
) -> Result<(M, TrainerState), CheckpointError> {
    let state = read_trainer_state(dir)?;
    let model = load_model_params::<B, M>(model, &dir.join(MODEL_FILE))?;
    optim.load(&dir.join(OPTIMIZER_FILE), device)?;
    Ok((model, state))
}

/// Writes every float parameter of `model` as f32 safetensors keyed by dotted path,
/// streaming one tensor at a time, and fsyncs the file.
pub fn save_model_params<B: Backend, M: Module<B>>(
    model: &M,
    path: &Path,
) -> Result<(), CheckpointError> {
    let params = list_params::<B, M>(model);
    let specs = params
        .iter()
        .map(|p| TensorSpec {
            name: p.name.clone(),
            shape: p.shape.clone(),
        })
        .collect();
    let writer = StreamingWriter::create(path, specs, &Default::default())?;
    let mut visitor = WriteVisitor {
        writer,
        seen: Vec::new(),
        error: None,
        path: PathStack::default(),
    };
    model.visit(&mut visitor);
    if let Some(e) = visitor.error {
        return Err(e.into());
    }
    visitor.writer.finish()?;
    Ok(())
}

struct WriteVisitor {
    writer: StreamingWriter,
    seen: Vec<burn::module::ParamId>,
    error: Option<TensorIoError>,
    path: PathStack,
}

impl<B: Backend> ModuleVisitor<B> for WriteVisitor {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.error.is_some() || self.seen.contains(&param.id) {
            return;
        }
        self.seen.push(param.id);
        let values = tensor_values(&param.val());
        if let Err(e) = self.writer.write_next(&self.path.current(), &values) {
            self.error = Some(e);
        }
    }
}

/// Replaces every float parameter of `model` by the tensor of the same dotted path in `path`
/// (same shape required; every parameter must be present and every tensor used).
pub fn load_model_params<B: Backend, M: Module<B>>(
    model: M,
    path: &Path,
) -> Result<M, CheckpointError> {
    let file = MappedTensors::open(path)?;
    let mut mapper = LoadMapper {
        file: &file,
        path: PathStack::default(),
        used: Vec::new(),
        errors: Vec::new(),
    };
    let model = model.map(&mut mapper);
    let mut errors = mapper.errors;
    let used = mapper.used;
    let unused: Vec<String> = file
        .names()
        .into_iter()
        .filter(|n| !used.contains(n))
        .collect();
    if !unused.is_empty() {
        errors.push(format!("tensors not in the model: {}", unused.join(", ")));
    }
    if errors.is_empty() {
        Ok(model)
    } else {
        Err(CheckpointError::Invalid {
            path: path.to_path_buf(),
            message: errors.join("; "),
        })
    }
}

struct LoadMapper<'a> {
    file: &'a MappedTensors,
    path: PathStack,
    used: Vec<String>,
    errors: Vec<String>,
}

impl<B: Backend> ModuleMapper<B> for LoadMapper<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let name = self.path.current();
        if self.used.contains(&name) {
            return param;
        }
        let (values, shape) = match self.file.read_f32(&name) {
            Ok(v) => v,
            Err(e) => {
                self.errors.push(e.to_string());
                return param;
            }
        };
        let (id, tensor, mapper) = param.consume();
        if shape != tensor.dims() {
            self.errors.push(format!(
                "`{name}` has shape {shape:?} in the checkpoint but {:?} in the model",
                tensor.dims()
            ));
            return Param::from_mapped_value(id, tensor, mapper);
        }
        self.used.push(name);
        let device = tensor.device();
        let dtype = tensor.dtype();
        let require_grad = tensor.is_require_grad();
        let mut loaded = Tensor::<B, D>::from_data(TensorData::new(values, shape), &device);
        if loaded.dtype() != dtype {
            loaded = loaded.cast(dtype);
        }
        if require_grad {
            loaded = loaded.require_grad();
        }
        Param::from_mapped_value(id, loaded, mapper)
    }
}

/// Writes `value` as pretty JSON and fsyncs the file.
pub fn write_json_synced<T: Serialize>(path: &Path, value: &T) -> Result<(), CheckpointError> {
    let text = serde_json::to_string_pretty(value).expect("serialisable");
    let mut file = File::create(path).map_err(io_err(path))?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

fn fsync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))
}
