//! Streaming safetensors writing and memory-mapped reading of named f32 tensors.
//!
//! Checkpoints of 3B/7B models hold tens of GB of parameters and AdamW moments; the writer
//! streams one tensor at a time (only the header is prepared up front), and the reader maps the
//! file instead of reading it. Files are standard safetensors (little-endian, header padded to
//! 8 bytes, data in header order) and open with the `safetensors` crate or Python.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Errors of reading or writing a tensor file.
#[derive(Debug, thiserror::Error)]
pub enum TensorIoError {
    /// An I/O failure on `path`.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid safetensors, or not what the caller expected.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

impl TensorIoError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        TensorIoError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn format(path: &Path, message: impl Into<String>) -> Self {
        TensorIoError::Format {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Shape of one f32 tensor announced before streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 4
    }
}

/// Writes an f32 safetensors file tensor by tensor, in the announced order.
pub struct StreamingWriter {
    path: PathBuf,
    out: BufWriter<File>,
    specs: Vec<TensorSpec>,
    next: usize,
}

impl StreamingWriter {
    /// Creates `path` and writes the header for `specs` (names must be unique) and `metadata`.
    pub fn create(
        path: &Path,
        specs: Vec<TensorSpec>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Self, TensorIoError> {
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            header.insert(
                "__metadata__".into(),
                serde_json::to_value(metadata).expect("string map"),
            );
        }
        let mut offset = 0usize;
        for spec in &specs {
            let len = spec.byte_len();
            let entry = serde_json::json!({
                "dtype": "F32",
                "shape": spec.shape,
                "data_offsets": [offset, offset + len],
            });
            if header.insert(spec.name.clone(), entry).is_some() || spec.name == "__metadata__" {
                return Err(TensorIoError::format(
                    path,
                    format!("tensor name `{}` used twice", spec.name),
                ));
            }
            offset += len;
        }
        let mut header_bytes = serde_json::to_vec(&header).expect("json");
        // The data section must start 8-byte aligned; pad the header with spaces.
        while !header_bytes.len().is_multiple_of(8) {
            header_bytes.push(b' ');
        }
        let file = File::create(path).map_err(|e| TensorIoError::io(path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&(header_bytes.len() as u64).to_le_bytes())
            .and_then(|_| out.write_all(&header_bytes))
            .map_err(|e| TensorIoError::io(path, e))?;
        Ok(StreamingWriter {
            path: path.to_path_buf(),
            out,
            specs,
            next: 0,
        })
    }

    /// Writes the next tensor's values (must match the next announced spec).
    pub fn write_next(&mut self, name: &str, values: &[f32]) -> Result<(), TensorIoError> {
        let spec = self.specs.get(self.next).ok_or_else(|| {
            TensorIoError::format(&self.path, format!("unexpected extra tensor `{name}`"))
        })?;
        if spec.name != name || spec.byte_len() != values.len() * 4 {
            return Err(TensorIoError::format(
                &self.path,
                format!(
                    "tensor `{name}` with {} values written where `{}` {:?} was announced",
                    values.len(),
                    spec.name,
                    spec.shape
                ),
            ));
        }
        self.write_le_f32(values)?;
        self.next += 1;
        Ok(())
    }

    /// Writes f32 values little-endian: the memory itself on little-endian machines.
    #[cfg(target_endian = "little")]
    fn write_le_f32(&mut self, values: &[f32]) -> Result<(), TensorIoError> {
        // SAFETY: f32 has no padding or invalid bit patterns as bytes, u8 has alignment 1,
        // and the byte length is exactly that of the slice.
        let bytes = unsafe {
            std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
        };
        self.out
            .write_all(bytes)
            .map_err(|e| TensorIoError::io(&self.path, e))
    }

    /// Writes f32 values little-endian (byte-swapped on big-endian machines).
    #[cfg(not(target_endian = "little"))]
    fn write_le_f32(&mut self, values: &[f32]) -> Result<(), TensorIoError> {
        let mut buf = Vec::with_capacity(values.len().min(1 << 20) * 4);
        for chunk in values.chunks(1 << 20) {
            buf.clear();
            for v in chunk {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            self.out
                .write_all(&buf)
                .map_err(|e| TensorIoError::io(&self.path, e))?;
        }
        Ok(())
    }

    /// Flushes and fsyncs the file; fails if announced tensors were not written.
    pub fn finish(self) -> Result<(), TensorIoError> {
        if self.next != self.specs.len() {
            return Err(TensorIoError::format(
                &self.path,
                format!(
                    "only {} of {} announced tensors were written",
                    self.next,
                    self.specs.len()
                ),
            ));
        }
        let path = self.path;
        let file = self
            .out
            .into_inner()
            .map_err(|e| TensorIoError::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| TensorIoError::io(&path, e))
    }
}

/// A memory-mapped safetensors file of f32 tensors.
pub struct MappedTensors {
    path: PathBuf,
    mmap: memmap2::Mmap,
}

impl MappedTensors {
    /// Maps `path` and checks that it parses as safetensors.
    pub fn open(path: &Path) -> Result<Self, TensorIoError> {
        let file = File::open(path).map_err(|e| TensorIoError::io(path, e))?;
        // SAFETY: checkpoint files are written once (temp dir + rename) and never modified in
        // place while a run reads them.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| TensorIoError::io(path, e))?;
        safetensors::SafeTensors::deserialize(&mmap)
            .map_err(|e| TensorIoError::format(path, format!("not a safetensors file: {e}")))?;
        Ok(MappedTensors {
            path: path.to_path_buf(),
            mmap,
        })
    }

    fn parsed(&self) -> safetensors::SafeTensors<'_> {
        safetensors::SafeTensors::deserialize(&self.mmap).expect("checked in open")
    }

    /// The file's `__metadata__` entry `key`.
    pub fn metadata(&self, key: &str) -> Option<String> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(&self.mmap).ok()?;
        meta.metadata().as_ref()?.get(key).cloned()
    }

    /// Tensor names in the file.
    pub fn names(&self) -> Vec<String> {
        self.parsed()
            .names()
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// Values and shape of the f32 tensor `name`.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), TensorIoError> {
        let st = self.parsed();
        let view = st
            .tensor(name)
            .map_err(|_| TensorIoError::format(&self.path, format!("no tensor `{name}`")))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(TensorIoError::format(
                &self.path,
                format!("tensor `{name}` is {:?}, expected F32", view.dtype()),
            ));
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok((values, view.shape().to_vec()))
    }
}
