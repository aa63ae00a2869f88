//! The error of the raw dataset readers. Every variant names the file it is about.
//!
//! Problems with single inputs (an annotation on an unknown image, a degenerate polygon, a
//! missing image file) are not errors: the sources count them as skips in
//! [`crate::record::SourceOutput::counts`]. Errors are for inputs that cannot be read at all.

use std::path::PathBuf;
use thiserror::Error;

/// Why a source could not be read.
#[derive(Debug, Error)]
pub enum SourceError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid JSON, or not the expected JSON layout (serde names the field,
    /// line and column).
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// serde_json's error, with line and column.
        source: serde_json::Error,
    },
    /// The pickle could not be decoded, or is not a list of refer `ref` dicts.
    #[error("{path}: not a refer refs pickle (list of ref dicts): {source}")]
    Pickle {
        /// The file.
        path: PathBuf,
        /// serde-pickle's error.
        source: serde_pickle::Error,
    },
    /// One line of a JSONL file is malformed (the message names the line and the field).
    #[error("{path}: {source}")]
    JsonlLine {
        /// The file.
        path: PathBuf,
        /// What is wrong with which line.
        source: crate::pyjson::PyJsonError,
    },
    /// The data is readable but inconsistent in a way no record can be made from.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An option value is unusable.
    #[error("invalid option: {0}")]
    Option(String),
}

impl SourceError {
    /// An [`SourceError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> SourceError {
        SourceError::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`SourceError::Invalid`] for `path`.
    pub fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> SourceError {
        SourceError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}
