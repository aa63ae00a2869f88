//! Export of a training checkpoint as a Hugging Face / PaDT model directory (`padt-export`).
//!
//! A training checkpoint (`checkpoint-<step>/model.safetensors`) stores f32 parameters under
//! burn module paths (`qwen.model.layers.0.self_attn.q_proj.weight`, `vis_proj.down.weight`).
//! The export writes what `PaDTForConditionalGeneration.from_pretrained` reads:
//!
//! | file | content |
//! |---|---|
//! | `config.json` | the model directory's config with the run's switches (`vl_decoder`, `use_visual_prototype_projection`, `torch_dtype`) |
//! | `model.safetensors`, or `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json` | every parameter under its HF/PaDT key (`model.layers.0...`, `vis_proj.0.weight`, `vl_decoder.input_projection.1.weight`), bf16/f16/f32 |
//! | tokenizer and processor files | copied from the model (or tokenizer) directory: [`PROCESSOR_FILES`] |
//!
//! Everything is written into a temporary directory beside the output, fsynced, and renamed
//! into place, so the output is either the complete export or absent (or, with `force`, the
//! previous content).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{backend::Backend, Tensor};
use padt_model::error::ModelError;
use padt_model::padt::{padt_key_renames, PadtConfig, PadtModel};
use padt_model::weights::{
    apply_renames, export_module, Checkpoint, ExportDtype, ExportOptions, ExportReport,
    KEY_EXCEPTIONS,
};

use crate::checkpoint::{
    load_model_params, read_trainer_state, CheckpointError, CheckpointManager, MODEL_FILE,
};
use crate::recipe::{RecipeError, TrainConfig};
use crate::trainer::{model_config, TrainError};

/// The model configuration file of an HF directory.
pub const CONFIG_FILE: &str = "config.json";
/// The resolved recipe a run directory holds.
pub const RUN_CONFIG_FILE: &str = "config.yaml";
/// Tokenizer and processor files copied when present (looked up in the tokenizer directory,
/// then in the model directory).
pub const PROCESSOR_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "chat_template.json",
    "generation_config.json",
];
/// transformers' default `max_shard_size` ("5GB").
pub const DEFAULT_MAX_SHARD_BYTES: usize = 5_000_000_000;

/// Errors of an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The path is neither a checkpoint nor a run directory with a complete checkpoint.
    #[error("{path}: no complete checkpoint here{detail}")]
    NoCheckpoint { path: PathBuf, detail: String },
    /// A checkpoint directory lacks a file or holds an unreadable one.
    #[error("checkpoint {path} is incomplete: {message}")]
    IncompleteCheckpoint { path: PathBuf, message: String },
    /// A configuration file the export needs does not exist.
    #[error("{path} not found: {what}")]
    MissingConfig { path: PathBuf, what: String },
    /// A checkpoint tensor does not have the shape the model config gives it.
    #[error(
        "{file}: tensor `{key}` has shape {found:?}, but the model of {config} expects {expected:?}"
    )]
    ShapeMismatch {
        file: PathBuf,
        key: String,
        found: Vec<usize>,
        expected: Vec<usize>,
        config: PathBuf,
    },
    /// The checkpoint's tensors and the model's parameters are different sets.
    #[error("{file} does not fit the model of {config}: {message}")]
    TensorSet {
        file: PathBuf,
        config: PathBuf,
        message: String,
    },
    /// The output directory exists and is not empty.
    #[error("{path} exists and is not empty (pass --force to replace it)")]
    OutputExists { path: PathBuf },
    /// Replacing the output would delete an input (the checkpoint or the model directory).
    #[error("--out {out} is or contains the input {input}; choose another output directory")]
    OutputHoldsInput { out: PathBuf, input: PathBuf },
    /// The output path exists and is not a directory.
    #[error("{path} exists and is not a directory")]
    OutputNotDir { path: PathBuf },
    /// A `max_shard_size` that does not parse.
    #[error("bad shard size {0:?}: expected bytes or a number with KB, MB, GB, KiB, MiB or GiB (e.g. 5GB)")]
    BadShardSize(String),
    /// A `dtype` that does not parse.
    #[error("bad dtype {0:?}: expected bf16, f16 or f32")]
    BadDtype(String),
    /// The run's `config.yaml` does not parse.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// Building the model or writing the weights failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Reading the checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The model config of the run could not be read.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// A JSON file does not parse.
    #[error("{path}: {message}")]
    Json { path: PathBuf, message: String },
    /// File-system failure.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to export and how.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// A `checkpoint-<step>/` directory, or a run directory (its newest complete checkpoint).
    pub checkpoint: PathBuf,
    /// The HF directory to write.
    pub out: PathBuf,
    /// The run's resolved recipe; default `config.yaml` of the run directory.
    pub run_config: Option<PathBuf>,
    /// The model directory (`config.json`, tokenizer and processor files); default the
    /// recipe's `model.path` (relative paths resolve against the working directory, as in
    /// `padt-train`).
    pub model_dir: Option<PathBuf>,
    /// On-disk float type.
    pub dtype: ExportDtype,
    /// Largest shard in bytes of tensor data.
    pub max_shard_bytes: usize,
    /// Replace a non-empty `out`.
    pub force: bool,
}

impl ExportRequest {
    /// A request with the defaults: bf16, 5 GB shards, no overwrite.
    pub fn new(checkpoint: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            checkpoint: checkpoint.into(),
            out: out.into(),
            run_config: None,
            model_dir: None,
            dtype: ExportDtype::BF16,
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
            force: false,
        }
    }
}

/// What an export did.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// The checkpoint directory exported.
    pub checkpoint: PathBuf,
    /// Its optimizer step.
    pub step: u64,
    /// The model directory `config.json` and the processor files came from.
    pub model_dir: PathBuf,
    /// Weight files (final paths), tensor count and bytes.
    pub weights: ExportReport,
    /// Processor files copied.
    pub copied: Vec<String>,
    /// Processor files of [`PROCESSOR_FILES`] found in neither directory.
    pub missing: Vec<String>,
    /// Things the user should know (e.g. settings PyTorch PaDT cannot reproduce).
    pub notes: Vec<String>,
}

/// A checkpoint found from the user's path.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedCheckpoint {
    /// The `checkpoint-<step>` directory.
    pub dir: PathBuf,
    /// Its step (from `trainer_state.json`).
    pub step: u64,
    /// The run directory holding it.
    pub run_dir: PathBuf,
}

/// Finds the checkpoint `path` names: itself when it holds `model.safetensors` or is named
/// `checkpoint-*`, else the newest complete `checkpoint-<step>/` inside it (the one
/// `padt-train --resume` would continue from).
pub fn resolve_checkpoint(path: &Path) -> Result<ResolvedCheckpoint, ExportError> {
    if !path.is_dir() {
        return Err(ExportError::NoCheckpoint {
            path: path.to_path_buf(),
            detail: " (not a directory)".into(),
        });
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let is_checkpoint = path.join(MODEL_FILE).exists() || name.starts_with("checkpoint-");
    let dir = if is_checkpoint {
        path.to_path_buf()
    } else {
        match CheckpointManager::new(path, None).latest() {
            Some((_, dir)) => dir,
            None => {
                let mut partial: Vec<String> = fs::read_dir(path)
                    .map_err(io_err(path))?
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("checkpoint-"))
                    .collect();
                partial.sort();
                let detail = if partial.is_empty() {
                    " (no checkpoint-<step>/ directory)".to_string()
                } else {
                    format!(" (incomplete: {})", partial.join(", "))
                };
                return Err(ExportError::NoCheckpoint {
                    path: path.to_path_buf(),
                    detail,
                });
            }
        }
    };
    let incomplete = |message: String| ExportError::IncompleteCheckpoint {
        path: dir.clone(),
        message,
    };
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if dir_name.ends_with(".tmp") || dir_name.ends_with(".old") {
        return Err(incomplete(
            "a checkpoint still being written or being replaced (`.tmp`/`.old`)".into(),
        ));
    }
    if !dir.join(MODEL_FILE).is_file() {
        return Err(incomplete(format!("no {MODEL_FILE}")));
    }
    let state = read_trainer_state(&dir).map_err(|e| incomplete(e.to_string()))?;
    let run_dir = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    Ok(ResolvedCheckpoint {
        dir,
        step: state.step,
        run_dir,
    })
}

/// Parses a shard size the way transformers' `max_shard_size` reads it: plain bytes, or a
/// number with `KB`/`MB`/`GB`/`TB` (powers of 1000) or `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024).
pub fn parse_shard_size(text: &str) -> Result<usize, ExportError> {
    let bad = || ExportError::BadShardSize(text.to_string());
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        _ => return Err(bad()),
    };
    let bytes = (number * scale).round();
    if !(bytes >= 1.0 && bytes < usize::MAX as f64) {
        return Err(bad());
    }
    Ok(bytes as usize)
}

/// Parses `bf16`, `f16` or `f32` (also `bfloat16`, `float16`, `float32`).
pub fn parse_dtype(text: &str) -> Result<ExportDtype, ExportError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "bf16" | "bfloat16" => Ok(ExportDtype::BF16),
        "f16" | "fp16" | "float16" => Ok(ExportDtype::F16),
        "f32" | "fp32" | "float32" => Ok(ExportDtype::F32),
        _ => Err(ExportError::BadDtype(text.to_string())),
    }
}

fn torch_dtype_name(dtype: ExportDtype) -> &'static str {
    match dtype {
        ExportDtype::BF16 => "bfloat16",
        ExportDtype::F16 => "float16",
        ExportDtype::F32 => "float32",
    }
}

/// The `config.json` of the export: the model directory's `source` config with the run's
/// PaDT settings. `vl_decoder` gets the decoder config (PaDT's keys; `high_res_order` only when
/// it is not the reference order, which PyTorch PaDT ignores), `use_visual_prototype_projection`
/// the run's switch, `architectures` PaDT's class and `torch_dtype` the export dtype. Other keys
/// (also unknown ones inside `vl_decoder`) are kept as they are.
pub fn export_config_json(
    source: &serde_json::Value,
    padt: &PadtConfig,
    dtype: ExportDtype,
) -> serde_json::Value {
    let mut config = source.clone();
    let Some(map) = config.as_object_mut() else {
        return config;
    };
    let mut decoder = match map.get("vl_decoder") {
        Some(serde_json::Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    };
    if let serde_json::Value::Object(ours) =
        serde_json::to_value(&padt.decoder).expect("the decoder config serialises")
    {
        decoder.remove("high_res_order");
        decoder.extend(ours);
    }
    map.insert("vl_decoder".into(), serde_json::Value::Object(decoder));
    map.insert(
        "use_visual_prototype_projection".into(),
        padt.use_visual_prototype_projection.into(),
    );
    map.insert(
        "architectures".into(),
        serde_json::json!(["PaDTForConditionalGeneration"]),
    );
    map.insert("torch_dtype".into(), torch_dtype_name(dtype).into());
    config
}

/// Lists `(burn path, shape)` of every float parameter without materialising lazy ones.
struct ShapeLister {
    path: Vec<String>,
    shapes: Vec<(String, Vec<usize>)>,
}

impl<B: Backend> ModuleVisitor<B> for ShapeLister {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.shapes
            .push((self.path.join("."), param.lazy_shape().to_vec()));
    }
}

/// Checks that the training checkpoint file holds exactly the model's parameters with the
/// model's shapes (naming the first mismatch), before anything is loaded.
pub fn check_checkpoint_fits<B: Backend>(
    model: &PadtModel<B>,
    file: &Path,
    config_path: &Path,
) -> Result<(), ExportError> {
    let checkpoint = Checkpoint::open(file).map_err(|e| ExportError::IncompleteCheckpoint {
        path: file.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut lister = ShapeLister {
        path: Vec::new(),
        shapes: Vec::new(),
    };
    model.visit(&mut lister);
    let mut expected: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (key, shape) in lister.shapes {
        expected.entry(key).or_insert(shape);
    }
    for (key, shape) in &expected {
        if let Some(found) = checkpoint.shape(key) {
            if found != shape.as_slice() {
                return Err(ExportError::ShapeMismatch {
                    file: file.to_path_buf(),
                    key: key.clone(),
                    found: found.to_vec(),
                    expected: shape.clone(),
                    config: config_path.to_path_buf(),
                });
            }
        }
    }
    let present: BTreeSet<&str> = checkpoint.keys().collect();
    let missing: Vec<&str> = expected
        .keys()
        .map(String::as_str)
        .filter(|k| !present.contains(k))
        .collect();
    let unexpected: Vec<&str> = present
        .iter()
        .copied()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    if missing.is_empty() && unexpected.is_empty() {
        return Ok(());
    }
    let list = |keys: &[&str]| {
        let shown = keys[..keys.len().min(5)].join(", ");
        if keys.len() > 5 {
            format!("{shown}, ... ({} in all)", keys.len())
        } else {
            shown
        }
    };
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "parameters not in the checkpoint: {}",
            list(&missing)
        ));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "checkpoint tensors the model lacks: {}",
            list(&unexpected)
        ));
    }
    Err(ExportError::TensorSet {
        file: file.to_path_buf(),
        config: config_path.to_path_buf(),
        message: parts.join("; "),
    })
}

/// The HF/PaDT key of a module path of [`PadtModel`] (what the export and `from_pretrained`
/// use).
pub fn hf_key(module_path: &str) -> String {
    let renames = padt_key_renames();
    apply_renames(
        module_path,
        KEY_EXCEPTIONS
            .iter()
            .copied()
            .chain(renames.iter().map(|(a, b)| (a.as_str(), b.as_str()))),
    )
}

/// The run's recipe with `model.path` replaced by `model_dir` when given.
fn run_recipe(
    request: &ExportRequest,
    resolved: &ResolvedCheckpoint,
) -> Result<(TrainConfig, PathBuf), ExportError> {
    let recipe_path = request
        .run_config
        .clone()
        .unwrap_or_else(|| resolved.run_dir.join(RUN_CONFIG_FILE));
    if !recipe_path.is_file() {
        return Err(ExportError::MissingConfig {
            path: recipe_path,
            what: "the run's resolved recipe (written by padt-train beside its checkpoints; \
                   pass --config to name it)"
                .into(),
        });
    }
    let mut recipe = TrainConfig::load(&recipe_path, &[])?;
    if let Some(dir) = &request.model_dir {
        recipe.model.path = dir.clone();
    }
    let model_config = recipe.model.path.join(CONFIG_FILE);
    if !model_config.is_file() {
        return Err(ExportError::MissingConfig {
            path: model_config,
            what: format!(
                "the model config of `model.path` in {} (relative paths resolve against the \
                 working directory; pass --model-dir to name the model directory)",
                recipe_path.display()
            ),
        });
    }
    Ok((recipe, recipe_path))
}

/// Loads the parameters of a training checkpoint into the model its run describes.
pub fn load_trained_model<B: Backend>(
    request: &ExportRequest,
    device: &B::Device,
) -> Result<(PadtModel<B>, PadtConfig, TrainConfig, ResolvedCheckpoint), ExportError> {
    let resolved = resolve_checkpoint(&request.checkpoint)?;
    let (recipe, _) = run_recipe(request, &resolved)?;
    let (padt, _base) = model_config(&recipe)?;
    let model = PadtModel::<B>::new(&padt, device);
    let file = resolved.dir.join(MODEL_FILE);
    check_checkpoint_fits(&model, &file, &recipe.model.path.join(CONFIG_FILE))?;
    let model = load_model_params::<B, _>(model, &file)?;
    Ok((model, padt, recipe, resolved))
}

/// Refuses an output that exists and is not an empty directory (unless `force`).
fn check_output(out: &Path, force: bool) -> Result<(), ExportError> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(ExportError::OutputNotDir {
            path: out.to_path_buf(),
        });
    }
    let empty = fs::read_dir(out).map_err(io_err(out))?.next().is_none();
    if !empty && !force {
        return Err(ExportError::OutputExists {
            path: out.to_path_buf(),
        });
    }
    Ok(())
}

/// Refuses an existing `out` that is one of `inputs` or a parent of one (with `force` it would
/// be deleted).
fn check_output_apart(out: &Path, inputs: &[&Path]) -> Result<(), ExportError> {
    let Ok(out_abs) = out.canonicalize() else {
        return Ok(()); // does not exist yet
    };
    for input in inputs {
        if let Ok(input_abs) = input.canonicalize() {
            if input_abs.starts_with(&out_abs) {
                return Err(ExportError::OutputHoldsInput {
                    out: out.to_path_buf(),
                    input: input.to_path_buf(),
                });
            }
        }
    }
    Ok(())
}

fn fsync_file(path: &Path) -> Result<(), ExportError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

/// Exports a training checkpoint as an HF / PaDT model directory (see the module docs).
pub fn export_checkpoint<B: Backend>(
    request: &ExportRequest,
    device: &B::Device,
) -> Result<ExportSummary, ExportError> {
    check_output(&request.out, request.force)?;
    let (model, padt, recipe, resolved) = load_trained_model::<B>(request, device)?;
    let model_dir = recipe.model.path.clone();
    check_output_apart(
        &request.out,
        &[&resolved.dir, &model_dir, recipe.tokenizer_dir()],
    )?;
    let source_path = model_dir.join(CONFIG_FILE);
    let source_text = fs::read_to_string(&source_path).map_err(io_err(&source_path))?;
    let source: serde_json::Value =
        serde_json::from_str(&source_text).map_err(|e| ExportError::Json {
            path: source_path.clone(),
            message: e.to_string(),
        })?;
    let config = export_config_json(&source, &padt, request.dtype);

    let mut notes = Vec::new();
    if !padt.use_visual_prototype_projection {
        notes.push(
            "use_visual_prototype_projection is false: vis_norm/vis_proj are exported (padt-rs \
             loads them) but PyTorch PaDT has no such modules and reports them as unexpected keys"
                .into(),
        );
    }
    if config["vl_decoder"].get("high_res_order").is_some() {
        notes.push(
            "the run used model.highres_token_order: fixed (vl_decoder.high_res_order = raster); \
             PyTorch PaDT only has the faithful order, so its decoder outputs will differ from \
             padt-rs's for this model"
                .into(),
        );
    }

    let out = &request.out;
    let out_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{out_name}.export-"))
        .tempdir_in(&parent)
        .map_err(io_err(&parent))?;
    let tmp_dir = tmp.path().to_path_buf();

    // Weights (the shared exporter: key renames, dtype, shards + index).
    let options = ExportOptions {
        dtype: request.dtype,
        max_shard_bytes: request.max_shard_bytes,
        renames: padt_key_renames(),
    };
    let mut weights = export_module(&model, &tmp_dir, &options)?;
    drop(model);

    // config.json
    let config_path = tmp_dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&config).expect("JSON values serialise") + "\n";
    fs::write(&config_path, text).map_err(io_err(&config_path))?;

    // Tokenizer and processor files.
    let tokenizer_dir = recipe.tokenizer_dir().to_path_buf();
    let mut copied = Vec::new();
    let mut missing = Vec::new();
    for name in PROCESSOR_FILES {
        let found = [tokenizer_dir.join(name), model_dir.join(name)]
            .into_iter()
            .find(|p| p.is_file());
        match found {
            Some(src) => {
                let dst = tmp_dir.join(name);
                fs::copy(&src, &dst).map_err(io_err(&src))?;
                copied.push(name.to_string());
            }
            None => missing.push(name.to_string()),
        }
    }

    // The safetensors writer creates owner-only files; give the weights the permissions of
    // config.json (the user's umask), like every other file of the export.
    let permissions = fs::metadata(&config_path)
        .map_err(io_err(&config_path))?
        .permissions();
    for file in &weights.files {
        fs::set_permissions(file, permissions.clone()).map_err(io_err(file))?;
    }
    for entry in fs::read_dir(&tmp_dir).map_err(io_err(&tmp_dir))? {
        let path = entry.map_err(io_err(&tmp_dir))?.path();
        fsync_file(&path)?;
    }
    fsync_file(&tmp_dir)?;

    // Commit: move a replaced output aside, rename the new one in, then delete the old one.
    let kept = tmp.keep();
    let old = parent.join(format!(".{out_name}.old-{}", std::process::id()));
    let commit = || -> Result<(), ExportError> {
        if out.exists() {
            fs::rename(out, &old).map_err(io_err(out))?;
        }
        fs::rename(&kept, out).map_err(io_err(out))?;
        fsync_file(&parent)
    };
    if let Err(e) = commit() {
        let _ = fs::remove_dir_all(&kept);
        if old.exists() && !out.exists() {
            let _ = fs::rename(&old, out);
        }
        return Err(e);
    }
    if old.exists() {
        fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    weights.files = weights
        .files
        .iter()
        .map(|f| out.join(f.file_name().expect("a weight file has a name")))
        .collect();
    Ok(ExportSummary {
        checkpoint: resolved.dir,
        step: resolved.step,
        model_dir,
        weights,
        copied,
        missing,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_sizes_parse_like_transformers() {
        assert_eq!(parse_shard_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_shard_size("5gb").unwrap(), 5_000_000_000);
        assert_eq!(parse_shard_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_shard_size("100KB").unwrap(), 100_000);
        assert_eq!(parse_shard_size("1.5MB").unwrap(), 1_500_000);
        assert_eq!(parse_shard_size("4096").unwrap(), 4096);
        for bad in ["", "GB", "5XB", "-1GB", "0", "1e3"] {
            assert!(parse_shard_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dtypes_parse() {
        assert_eq!(parse_dtype("bf16").unwrap(), ExportDtype::BF16);
        assert_eq!(parse_dtype("float32").unwrap(), ExportDtype::F32);
        assert!(parse_dtype("int8").is_err());
    }

    #[test]
    fn hf_keys_of_module_paths() {
        assert_eq!(
            hf_key("qwen.model.layers.0.self_attn.q_proj.weight"),
            "model.layers.0.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_key("qwen.visual.merger.mlp.fc1.weight"),
            "visual.merger.mlp.0.weight"
        );
        assert_eq!(hf_key("vis_proj.down.weight"), "vis_proj.0.weight");
        assert_eq!(hf_key("vis_norm.bias"), "vis_norm.bias");
    }

    #[test]
    fn config_json_gets_the_run_switches() {
        let source = serde_json::json!({
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "hidden_size": 96,
            "torch_dtype": "float32",
            "vl_decoder": {"hidden_size": 1, "extra": 7, "high_res_order": "raster"},
        });
        let tiny_config = fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/padt-tiny/checkpoint/config.json"),
        )
        .unwrap();
        let mut padt = PadtConfig {
            qwen: padt_model::Qwen2_5VlConfig::from_json_str(
                &tiny_config,
                Path::new("config.json"),
            )
            .unwrap(),
            decoder: padt_model::decoder::PadtDecoderConfig::reference(96),
            use_visual_prototype_projection: false,
        };
        let config = export_config_json(&source, &padt, ExportDtype::BF16);
        assert_eq!(config["torch_dtype"], "bfloat16");
        assert_eq!(config["architectures"][0], "PaDTForConditionalGeneration");
        assert_eq!(config["use_visual_prototype_projection"], false);
        assert_eq!(config["vl_decoder"]["hidden_size"], 1280);
        assert_eq!(config["vl_decoder"]["extra"], 7);
        assert_eq!(
            config["vl_decoder"]["attn_implementation"],
            "flash_attention_2"
        );
        assert!(config["vl_decoder"].get("high_res_order").is_none());
        padt.decoder.high_res_order = padt_model::decoder::HighResOrder::Raster;
        let config = export_config_json(&source, &padt, ExportDtype::F32);
        assert_eq!(config["vl_decoder"]["high_res_order"], "raster");
        assert_eq!(config["torch_dtype"], "float32");
    }
}
