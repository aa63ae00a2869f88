//! Errors of the model crate: bad configs, bad checkpoints, inconsistent inputs.

use std::path::PathBuf;

/// Everything that can go wrong while building, loading, running or exporting a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `config.json` is not valid JSON or misses a required field.
    #[error("{path}: invalid model config: {message}")]
    Config { path: PathBuf, message: String },
    /// `config.json` names an architecture this crate does not implement.
    #[error(
        "{path}: unsupported architecture {found:?} (model_type {model_type:?}); supported: {supported:?}"
    )]
    UnknownArchitecture {
        path: PathBuf,
        found: Vec<String>,
        model_type: Option<String>,
        supported: Vec<&'static str>,
    },
    /// A safetensors file or index is malformed.
    #[error("{path}: invalid safetensors checkpoint: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// A checkpoint tensor has a shape other than the model parameter it maps to.
    #[error(
        "checkpoint tensor `{key}` in {path}: shape {found:?}, the model expects {expected:?}"
    )]
    ShapeMismatch {
        key: String,
        path: PathBuf,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    /// A checkpoint tensor is stored in a dtype that cannot become an f32 parameter.
    #[error(
        "checkpoint tensor `{key}` in {path}: unsupported dtype {dtype} (supported: F32, F16, BF16)"
    )]
    UnsupportedDtype {
        key: String,
        path: PathBuf,
        dtype: String,
    },
    /// Parameters of the model that the checkpoint does not provide.
    #[error("checkpoint {path} lacks {} tensor(s) the model needs: {}", keys.len(), preview(keys))]
    MissingTensors { path: PathBuf, keys: Vec<String> },
    /// Checkpoint tensors that no parameter of the model uses.
    #[error("checkpoint {path} has {} tensor(s) the model does not use: {}", keys.len(), preview(keys))]
    UnusedTensors { path: PathBuf, keys: Vec<String> },
    /// Model inputs that do not fit together (token counts, grids, shapes).
    #[error("invalid model input: {0}")]
    InvalidInput(String),
}

fn preview(keys: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = keys
        .iter()
        .take(SHOWN)
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > SHOWN {
        s.push_str(&format!(", ... ({} more)", keys.len() - SHOWN));
    }
    s
}

/// Result with [`ModelError`].
pub type Result<T> = std::result::Result<T, ModelError>;
