//! `manifest.json`: the table of contents of a shard directory (ARCHITECTURE.md decision 4).
//!
//! A shard directory holds `shard-00000.parquet`, `shard-00001.parquet`, ... and one
//! `manifest.json`, written last, that lists every shard with its record count, byte size and
//! sha256, the source and its options, the split, the image mode, the drop counters of the source
//! and every record the writer skipped. While a run is in progress, `manifest.partial.json` lists
//! the shards finished so far; a rerun with the same inputs keeps them (see `shard::write_dataset`).

use crate::record::DropCounts;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The value of [`Manifest::format`].
pub const FORMAT_NAME: &str = "padt-shards";
/// The shard format version this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// The final manifest's file name.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The progress file of an unfinished run.
pub const PARTIAL_MANIFEST_FILE: &str = "manifest.partial.json";

/// How a shard stores images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ImageMode {
    /// Encoded image bytes in the `image_bytes` column: the shard directory is self-contained.
    Embedded,
    /// The image's path in the `image_path` column; the files must stay where they are.
    Reference,
}

impl ImageMode {
    /// `"embedded"` or `"reference"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageMode::Embedded => "embedded",
            ImageMode::Reference => "reference",
        }
    }
}

impl std::str::FromStr for ImageMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "embedded" => Ok(ImageMode::Embedded),
            "reference" => Ok(ImageMode::Reference),
            other => Err(format!(
                "unknown image mode {other:?} (expected \"embedded\" or \"reference\")"
            )),
        }
    }
}

/// Where the records came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `coco`, `refcoco`, `ric`, `lmms` or `padt-jsonl`.
    pub kind: String,
    /// The options the source ran with (paths, dataset, split-by, seed, filters, ...).
    pub options: BTreeMap<String, serde_json::Value>,
}

/// A record the shard writer did not store, and why (`missing_image`, `corrupt_image`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedRecord {
    /// The reason, also counted in [`Manifest::drop_counts`].
    pub reason: String,
    /// Index of the record in the source's output order (before skips).
    pub source_index: u64,
    /// The record's `id`.
    pub id: i64,
    /// The record's `image` file name.
    pub image: String,
    /// What exactly was wrong (the path that is missing, the decoder's message, ...).
    pub detail: String,
}

/// One shard file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name inside the shard directory.
    pub file: String,
    /// Records stored in the file.
    pub records: u64,
    /// File size in bytes (a cheap truncation check).
    pub bytes: u64,
    /// sha256 of the file, lowercase hex.
    pub sha256: String,
    /// sha256 of the shard's input records (resume key: the same inputs give the same shard).
    pub input_sha256: String,
    /// Records of this shard's input range that were skipped.
    pub skipped: Vec<SkippedRecord>,
}

/// The content of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// The program that wrote the directory.
    pub tool: String,
    /// Its version.
    pub tool_version: String,
    /// The task of the records (`ovd`, `refering`, `ric`), or `mixed`.
    pub task: String,
    /// Records per task.
    pub task_counts: BTreeMap<String, u64>,
    /// The source and its options.
    pub source: SourceInfo,
    /// The split name (`train`, `val`, `testA`, ...).
    pub split: String,
    /// How images are stored.
    pub image_mode: ImageMode,
    /// Input records per shard: shard `k` holds the kept records of inputs `[k*N, (k+1)*N)`.
    pub shard_size: u64,
    /// Records the source produced (after `--limit`), before the writer's skips.
    pub source_records: u64,
    /// Records stored in all shards.
    pub total_records: u64,
    /// The shards, in order.
    pub shards: Vec<ShardEntry>,
    /// Drop / repair counters: the source's, plus the writer's skips by reason.
    pub drop_counts: DropCounts,
    /// Every record the writer skipped.
    pub skipped: Vec<SkippedRecord>,
}

/// What can go wrong with a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid manifest.
    #[error("{path}: not a valid shard manifest: {message}")]
    Invalid {
        /// The manifest path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Manifest {
    /// Reads and validates `dir/manifest.json`: the format name and version, that every shard
    /// is listed once, and that the record counts add up.
    pub fn read(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| ManifestError::Invalid {
                path: path.clone(),
                message: e.to_string(),
            })?;
        manifest
            .validate()
            .map_err(|message| ManifestError::Invalid {
                path: path.clone(),
                message,
            })?;
        Ok(manifest)
    }

    /// Checks the manifest's internal consistency.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT_NAME {
            return Err(format!(
                "format is {:?}, expected {FORMAT_NAME:?}",
                self.format
            ));
        }
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "format_version {} is not supported (this build reads version {FORMAT_VERSION})",
                self.format_version
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for shard in &self.shards {
            if !seen.insert(shard.file.as_str()) {
                return Err(format!("shard {} is listed twice", shard.file));
            }
            if shard.file.contains('/') || shard.file.contains('\\') || shard.file == ".." {
                return Err(format!(
                    "shard file name {:?} must be a plain file name",
                    shard.file
                ));
            }
        }
        let sum: u64 = self.shards.iter().map(|s| s.records).sum();
        if sum != self.total_records {
            return Err(format!(
                "total_records is {} but the shards hold {sum}",
                self.total_records
            ));
        }
        let skipped: u64 = self.shards.iter().map(|s| s.skipped.len() as u64).sum();
        if self.total_records + skipped != self.source_records {
            return Err(format!(
                "source_records {} != stored {} + skipped {skipped}",
                self.source_records, self.total_records
            ));
        }
        Ok(())
    }

    /// Global index of the first record of each shard, plus the total at the end.
    pub fn shard_offsets(&self) -> Vec<u64> {
        let mut offsets = Vec::with_capacity(self.shards.len() + 1);
        let mut acc = 0;
        offsets.push(0);
        for shard in &self.shards {
            acc += shard.records;
            offsets.push(acc);
        }
        offsets
    }
}

/// The progress file of a run: the shards finished so far. Each entry carries the sha256 of
/// its input records ([`ShardEntry::input_sha256`]), so a rerun with other inputs or settings
/// reuses nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialManifest {
    /// Finished shards by index.
    pub finished: BTreeMap<u64, ShardEntry>,
}

impl PartialManifest {
    /// Reads `dir/manifest.partial.json`; `None` when it does not exist or cannot be parsed
    /// (a broken progress file only means that nothing is resumed).
    pub fn read(dir: &Path) -> Option<PartialManifest> {
        let text = std::fs::read_to_string(dir.join(PARTIAL_MANIFEST_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }
}
