//! Hugging Face safetensors in and out.
//!
//! - [`Checkpoint`] memory-maps one `model.safetensors` or the shards listed in
//!   `model.safetensors.index.json`, and converts F32/F16/BF16 tensors to f32 on read.
//! - [`load_module`] walks any burn module, derives each parameter's checkpoint key from its
//!   module path (plus [`KEY_EXCEPTIONS`] and caller renames), checks shapes and reports missing
//!   and unused keys. Prefixes that belong to other modules (PaDT's `vis_norm`, `vis_proj`,
//!   `vl_decoder`) can be allowed with [`LoadOptions::extra_prefixes`].
//! - [`export_module`] writes the same layout back (F32, F16 or BF16; sharded with an index
//!   when larger than the shard size), each file atomically.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, TensorInfo, View};

use crate::error::{ModelError, Result};

/// Module paths whose checkpoint key differs (module fragment → checkpoint fragment). A torch
/// `Sequential` has numeric children (`mlp.0`, `mlp.2`) that cannot be Rust field names.
pub const KEY_EXCEPTIONS: &[(&str, &str)] = &[
    ("visual.merger.mlp.fc1", "visual.merger.mlp.0"),
    ("visual.merger.mlp.fc2", "visual.merger.mlp.2"),
];

/// Name of the shard index file.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

/// Rewrites `path` with `(from, to)` fragment rules, matched on whole dot-separated segments.
/// An empty `to` drops the fragment (e.g. `("padt.", "")` strips a wrapper prefix).
pub fn apply_renames<'a>(
    path: &str,
    rules: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut key = format!(".{path}.");
    for (from, to) in rules {
        let from = format!(".{}.", from.trim_matches('.'));
        let to = match to.trim_matches('.') {
            "" => ".".to_string(),
            t => format!(".{t}."),
        };
        key = key.replace(&from, &to);
    }
    key.trim_matches('.').to_string()
}

fn has_prefix(key: &str, prefix: &str) -> bool {
    let p = prefix.trim_end_matches('.');
    key == p || key.starts_with(&format!("{p}."))
}

struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
}

/// A memory-mapped safetensors checkpoint (one file or shards + index).
pub struct Checkpoint {
    root: PathBuf,
    files: Vec<MappedFile>,
    tensors: BTreeMap<String, (usize, TensorInfo)>,
}

impl Checkpoint {
    /// Opens a checkpoint directory (`model.safetensors.index.json` or `model.safetensors`)
    /// or a single `.safetensors` file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_file() {
            let mut ckpt = Self {
                root: path.to_path_buf(),
                files: Vec::new(),
                tensors: BTreeMap::new(),
            };
            ckpt.add_file(path, None)?;
            return Ok(ckpt);
        }
        let index = path.join(INDEX_FILE);
        let single = path.join(SINGLE_FILE);
        let mut ckpt = Self {
            root: path.to_path_buf(),
            files: Vec::new(),
            tensors: BTreeMap::new(),
        };
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io {
                path: index.clone(),
                source,
            })?;
            let bad = |message: String| ModelError::Checkpoint {
                path: index.clone(),
                message,
            };
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
            let mut by_file: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (key, file) in map {
                let file = file
                    .as_str()
                    .ok_or_else(|| bad(format!("weight_map entry `{key}` is not a file name")))?;
                if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                    return Err(bad(format!(
                        "weight_map entry `{key}`: bad shard name {file:?}"
                    )));
                }
                by_file
                    .entry(file.to_string())
                    .or_default()
                    .insert(key.clone());
            }
            for (file, keys) in &by_file {
                ckpt.add_file(&path.join(file), Some(keys))?;
            }
            Ok(ckpt)
        } else if single.is_file() {
            ckpt.add_file(&single, None)?;
            Ok(ckpt)
        } else {
            Err(ModelError::Checkpoint {
                path: path.to_path_buf(),
                message: format!("neither {INDEX_FILE} nor {SINGLE_FILE} found"),
            })
        }
    }

    /// Maps one file; with `expected`, checks it holds exactly the keys the index assigns it.
    fn add_file(&mut self, path: &Path, expected: Option<&BTreeSet<String>>) -> Result<()> {
        let file = File::open(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the file is only read; checkpoints are not modified while a model loads.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |message: String| ModelError::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        let (header_len, metadata) =
            safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| bad(format!("{e:?}")))?;
        let data_start = 8 + header_len;
        let file_index = self.files.len();
        let infos = metadata.tensors();
        if let Some(expected) = expected {
            if let Some(missing) = expected.iter().find(|k| !infos.contains_key(*k)) {
                return Err(bad(format!(
                    "the index maps tensor `{missing}` to this shard, which does not hold it"
                )));
            }
        }
        for (key, info) in infos {
            if expected.is_some_and(|e| !e.contains(&key)) {
                continue; // not assigned to this shard by the index
            }
            if self.tensors.contains_key(&key) {
                return Err(bad(format!("tensor `{key}` appears in two shards")));
            }
            self.tensors.insert(key, (file_index, info.clone()));
        }
        self.files.push(MappedFile {
            path: path.to_path_buf(),
            mmap,
            data_start,
        });
        Ok(())
    }

    /// The directory or file this checkpoint was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// All tensor keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Shape of a tensor.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.tensors.get(key).map(|(_, info)| info.shape.as_slice())
    }

    /// File holding a tensor.
    pub fn file_of(&self, key: &str) -> Option<&Path> {
        self.tensors
            .get(key)
            .map(|(f, _)| self.files[*f].path.as_path())
    }

    /// Raw little-endian bytes, dtype and shape of a tensor, as stored.
    pub fn raw(&self, key: &str) -> Option<(Dtype, &[usize], &[u8])> {
        let (f, info) = self.tensors.get(key)?;
        let file = &self.files[*f];
        let (start, end) = info.data_offsets;
        let bytes = &file.mmap[file.data_start + start..file.data_start + end];
        Some((info.dtype, info.shape.as_slice(), bytes))
    }

    /// Reads a float tensor as f32 (F32, F16 and BF16 are accepted).
    pub fn read_f32(&self, key: &str) -> Result<Vec<f32>> {
        let (dtype, _, bytes) = self.raw(key).ok_or_else(|| ModelError::MissingTensors {
            path: self.root.clone(),
            keys: vec![key.to_string()],
        })?;
        let pairs = || {
            bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
        };
        Ok(match dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::BF16 => pairs().map(|b| half::bf16::from_bits(b).to_f32()).collect(),
            Dtype::F16 => pairs().map(|b| half::f16::from_bits(b).to_f32()).collect(),
            other => {
                return Err(ModelError::UnsupportedDtype {
                    key: key.to_string(),
                    path: self.file_of(key).unwrap_or(&self.root).to_path_buf(),
                    dtype: format!("{other:?}"),
                })
            }
        })
    }
}

/// What [`load_module`] accepts besides an exact match.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Checkpoint key prefixes owned by other modules; listed in [`LoadReport::extra`], never
    /// an error (PaDT: `vis_norm`, `vis_proj`, `vl_decoder`).
    pub extra_prefixes: Vec<String>,
    /// Extra `(module fragment, checkpoint fragment)` renames, applied after [`KEY_EXCEPTIONS`].
    pub renames: Vec<(String, String)>,
    /// Keep the random init of parameters the checkpoint lacks instead of failing.
    pub allow_missing: bool,
    /// Ignore checkpoint tensors no parameter uses instead of failing.
    pub allow_unused: bool,
}

/// What a load did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Checkpoint keys loaded into parameters.
    pub loaded: Vec<String>,
    /// Parameter keys the checkpoint lacks (only with `allow_missing`).
    pub missing: Vec<String>,
    /// Checkpoint keys nothing used (only with `allow_unused`).
    pub unused: Vec<String>,
    /// Checkpoint keys under `extra_prefixes`.
    pub extra: Vec<String>,
}

struct Loader<'a, B: Backend> {
    checkpoint: &'a Checkpoint,
    renames: Vec<(&'a str, &'a str)>,
    path: Vec<String>,
    device: B::Device,
    loaded: Vec<String>,
    missing: Vec<String>,
    error: Option<ModelError>,
}

impl<B: Backend> ModuleMapper<B> for Loader<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if self.error.is_some() {
            return param;
        }
        let key = apply_renames(&self.path.join("."), self.renames.iter().copied());
        let Some(shape) = self.checkpoint.shape(&key) else {
            self.missing.push(key);
            return param;
        };
        let expected = param.lazy_shape().to_vec();
        if shape != expected.as_slice() {
            self.error = Some(ModelError::ShapeMismatch {
                path: self.checkpoint.file_of(&key).unwrap().to_path_buf(),
                found: shape.to_vec(),
                key,
                expected,
            });
            return param;
        }
        let values = match self.checkpoint.read_f32(&key) {
            Ok(v) => v,
            Err(e) => {
                self.error = Some(e);
                return param;
            }
        };
        let tensor = Tensor::<B, D>::from_data(TensorData::new(values, expected), &self.device);
        self.loaded.push(key);
        let id = param.id;
        param.transform_for_load(tensor, id)
    }
}

/// Loads checkpoint tensors into `module` (whose module paths are checkpoint keys). Fails on a
/// wrong shape or dtype (naming the key), on missing keys (unless `allow_missing`) and on
/// unused keys outside `extra_prefixes` (unless `allow_unused`).
pub fn load_module<B: Backend, M: Module<B>>(
    module: M,
    checkpoint: &Checkpoint,
    options: &LoadOptions,
    device: &B::Device,
) -> Result<(M, LoadReport)> {
    let renames: Vec<(&str, &str)> = KEY_EXCEPTIONS
        .iter()
        .copied()
        .chain(
            options
                .renames
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str())),
        )
        .collect();
    let mut loader = Loader::<B> {
        checkpoint,
        renames,
        path: Vec::new(),
        device: device.clone(),
        loaded: Vec::new(),
        missing: Vec::new(),
        error: None,
    };
    let module = module.map(&mut loader);
    if let Some(e) = loader.error {
        return Err(e);
    }
    if !loader.missing.is_empty() && !options.allow_missing {
        return Err(ModelError::MissingTensors {
            path: checkpoint.root().to_path_buf(),
            keys: loader.missing,
        });
    }
    let used: BTreeSet<&str> = loader.loaded.iter().map(String::as_str).collect();
    let (extra, unused): (Vec<String>, Vec<String>) = checkpoint
        .keys()
        .filter(|k| !used.contains(k))
        .map(str::to_string)
        .partition(|k| options.extra_prefixes.iter().any(|p| has_prefix(k, p)));
    if !unused.is_empty() && !options.allow_unused {
        return Err(ModelError::UnusedTensors {
            path: checkpoint.root().to_path_buf(),
            keys: unused,
        });
    }
    Ok((
        module,
        LoadReport {
            loaded: loader.loaded,
            missing: loader.missing,
            unused,
            extra,
        },
    ))
}

/// On-disk float type of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportDtype {
    F32,
    F16,
    /// Round-to-nearest-even from the f32 parameters (what the published checkpoints use).
    BF16,
}

impl ExportDtype {
    fn safetensors(self) -> Dtype {
        match self {
            Self::F32 => Dtype::F32,
            Self::F16 => Dtype::F16,
            Self::BF16 => Dtype::BF16,
        }
    }

    fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }

    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Self::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Self::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            Self::BF16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        }
    }
}

/// How [`export_module`] writes.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub dtype: ExportDtype,
    /// Largest shard in bytes of tensor data (transformers' default is 5 GB); a single tensor
    /// larger than this gets a shard of its own.
    pub max_shard_bytes: usize,
    /// Extra `(module fragment, checkpoint fragment)` renames, applied after [`KEY_EXCEPTIONS`].
    pub renames: Vec<(String, String)>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            dtype: ExportDtype::F32,
            max_shard_bytes: 5_000_000_000,
            renames: Vec::new(),
        }
    }
}

/// Files an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportReport {
    pub files: Vec<PathBuf>,
    pub tensors: usize,
    /// Bytes of tensor data (the index's `metadata.total_size`).
    pub total_size: usize,
}

struct Lister<'a> {
    renames: &'a [(&'a str, &'a str)],
    path: Vec<String>,
    shapes: Vec<(String, Vec<usize>)>,
}

impl<B: Backend> ModuleVisitor<B> for Lister<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let key = apply_renames(&self.path.join("."), self.renames.iter().copied());
        self.shapes.push((key, param.lazy_shape().to_vec()));
    }
}

struct Collector<'a> {
    renames: &'a [(&'a str, &'a str)],
    path: Vec<String>,
    wanted: &'a BTreeSet<String>,
    dtype: ExportDtype,
    out: HashMap<String, OwnedTensor>,
}

impl<B: Backend> ModuleVisitor<B> for Collector<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let key = apply_renames(&self.path.join("."), self.renames.iter().copied());
        if !self.wanted.contains(&key) {
            return;
        }
        let data = param.val().into_data().convert::<f32>();
        let shape = data.shape.to_vec();
        let values = data.to_vec::<f32>().expect("converted to f32");
        self.out.insert(
            key,
            OwnedTensor {
                dtype: self.dtype.safetensors(),
                shape,
                data: self.dtype.encode(&values),
            },
        );
    }
}

struct OwnedTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &OwnedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes every float parameter of `module` under its checkpoint key into `out_dir`: one
/// `model.safetensors`, or `model-0000i-of-0000n.safetensors` shards plus
/// `model.safetensors.index.json` when the data exceeds `max_shard_bytes`. Keys are sorted;
/// shards are filled in key order. Files are written to a temporary name and renamed.
pub fn export_module<B: Backend, M: Module<B>>(
    module: &M,
    out_dir: impl AsRef<Path>,
    options: &ExportOptions,
) -> Result<ExportReport> {
    let out_dir = out_dir.as_ref();
    std::fs::create_dir_all(out_dir).map_err(|source| ModelError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let renames: Vec<(&str, &str)> = KEY_EXCEPTIONS
        .iter()
        .copied()
        .chain(
            options
                .renames
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str())),
        )
        .collect();
    let mut lister = Lister {
        renames: &renames,
        path: Vec::new(),
        shapes: Vec::new(),
    };
    module.visit(&mut lister);
    let mut shapes = lister.shapes;
    shapes.sort();
    if let Some(w) = shapes.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(ModelError::InvalidInput(format!(
            "two parameters map to the checkpoint key `{}`",
            w[0].0
        )));
    }

    // Plan shards in key order.
    let mut shards: Vec<BTreeSet<String>> = vec![BTreeSet::new()];
    let mut shard_bytes = 0usize;
    let mut total_size = 0usize;
    for (key, shape) in &shapes {
        let bytes = shape.iter().product::<usize>() * options.dtype.size();
        if shard_bytes > 0 && shard_bytes + bytes > options.max_shard_bytes {
            shards.push(BTreeSet::new());
            shard_bytes = 0;
        }
        shards.last_mut().unwrap().insert(key.clone());
        shard_bytes += bytes;
        total_size += bytes;
    }
    let n = shards.len();
    let names: Vec<String> = if n == 1 {
        vec![SINGLE_FILE.to_string()]
    } else {
        (1..=n)
            .map(|i| format!("model-{i:05}-of-{n:05}.safetensors"))
            .collect()
    };
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let mut files = Vec::new();
    let mut weight_map = serde_json::Map::new();
    for (keys, name) in shards.iter().zip(&names) {
        let mut collector = Collector {
            renames: &renames,
            path: Vec::new(),
            wanted: keys,
            dtype: options.dtype,
            out: HashMap::new(),
        };
        module.visit(&mut collector);
        let path = out_dir.join(name);
        let tensors: Vec<(&String, &OwnedTensor)> = collector.out.iter().collect();
        safetensors::serialize_to_file(tensors, Some(metadata.clone()), &path).map_err(|e| {
            ModelError::Checkpoint {
                path: path.clone(),
                message: format!("cannot write: {e:?}"),
            }
        })?;
        for key in keys {
            weight_map.insert(key.clone(), serde_json::Value::String(name.clone()));
        }
        files.push(path);
    }
    if n > 1 {
        let index = serde_json::json!({
            "metadata": {"total_size": total_size},
            "weight_map": weight_map,
        });
        let path = out_dir.join(INDEX_FILE);
        let tmp = out_dir.join(format!(".{INDEX_FILE}.tmp"));
        let text = serde_json::to_string_pretty(&index).expect("JSON of strings and numbers");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|source| ModelError::Io {
                path: path.clone(),
                source,
            })?;
        files.push(path);
    }
    Ok(ExportReport {
        files,
        tensors: shapes.len(),
        total_size,
    })
}
