//! The PaDT record (ARCHITECTURE.md decision 3): one training sample exactly as PaDT's JSONL
//! files hold it, plus what the shards add (the image's size and bytes or path).
//!
//! Every source (`sources::*`) produces [`SourceItem`]s; the shard writer (`shard`) stores them;
//! the training pipeline reads [`Record`]s back. `export-jsonl` writes the PaDT layout
//! (`pyjson`), with the key order of the script that made the record (see [`Task`]).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What a record trains. The strings are PaDT's, including the misspelt `"refering"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Task {
    /// Open-vocabulary detection (`process_coco.py`).
    #[serde(rename = "ovd")]
    Ovd,
    /// Referring expression comprehension / segmentation (`process_refcoco.py`).
    #[serde(rename = "refering")]
    Refering,
    /// Referring image captioning (`process_ric.py`).
    #[serde(rename = "ric")]
    Ric,
}

impl Task {
    /// The value of the JSONL `task` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Ovd => "ovd",
            Task::Refering => "refering",
            Task::Ric => "ric",
        }
    }

    /// Parses the JSONL `task` field.
    pub fn parse(s: &str) -> Option<Task> {
        match s {
            "ovd" => Some(Task::Ovd),
            "refering" => Some(Task::Refering),
            "ric" => Some(Task::Ric),
            _ => None,
        }
    }
}

/// A COCO compressed RLE as PaDT stores it: `{"size": [H, W], "counts": "<compressed string>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RleJson {
    /// `[height, width]` of the original image.
    pub size: [u32; 2],
    /// pycocotools' compressed counts string.
    pub counts: String,
}

/// One object of a record (`objects[k]`, referenced as `<|Obj_k|>` in the answer template).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordObject {
    /// Foreground merged-patch indices, raster order over the `round(H/28) x round(W/28)` grid.
    pub patches: Vec<u32>,
    /// `[x1, y1, x2, y2]` normalised by the original width/height (PaDT's formulas, see `sources`).
    pub bbox: [f64; 4],
    /// COCO `iscrowd` (0 or 1).
    pub iscrowd: i64,
    /// COCO `area`, copied from the annotation.
    pub area: f64,
    /// `true` when the source wrote `area` as a JSON integer (COCO crowd annotations do):
    /// Python's `json.dumps` then prints `678`, not `678.0`. Only the PaDT JSONL layout
    /// (`pyjson`) looks at it.
    #[serde(default)]
    pub area_is_int: bool,
    /// The mask at original resolution; `None` when the annotation had no segmentation.
    pub rle: Option<RleJson>,
    /// Category name (OVD), the referring sentence (REC), or `""` (RIC).
    pub label: String,
}

/// One PaDT sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// COCO image id.
    pub id: i64,
    /// Image file name, relative to the dataset's image folder.
    pub image: String,
    /// The user prompt (`conversations[0].value`).
    pub prompt: String,
    /// Target text with `<|Obj_k|>` placeholders.
    pub answer_template: String,
    /// The objects the placeholders refer to.
    pub objects: Vec<RecordObject>,
    /// The task.
    pub task: Task,
}

/// Where the encoded image bytes of a record come from while preprocessing.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageData {
    /// A file on disk (COCO, RefCOCO, RIC, PaDT JSONL imports).
    File(PathBuf),
    /// Encoded bytes already in memory (lmms-lab parquet).
    Bytes(Vec<u8>),
}

/// A record as a source produces it: the record, its image and the image's size in pixels
/// (as the source knows it: COCO `width`/`height`, or read from the image header).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceItem {
    /// The PaDT record.
    pub record: Record,
    /// The encoded image.
    pub image: ImageData,
    /// Original image width in pixels.
    pub width: u32,
    /// Original image height in pixels.
    pub height: u32,
}

/// Counters of what a source dropped or repaired, by reason (e.g. `objects_dropped_no_patch`).
/// Stored in the manifest; every skipped input is counted under a named reason.
pub type DropCounts = BTreeMap<String, u64>;

/// What a source run returns: records in the reference's output order, and the counters.
#[derive(Debug, Clone, Default)]
pub struct SourceOutput {
    /// The records, in output order.
    pub items: Vec<SourceItem>,
    /// Drop / repair counters by reason.
    pub counts: DropCounts,
}

impl SourceOutput {
    /// Adds `n` to the counter `reason`.
    pub fn count(&mut self, reason: &str, n: u64) {
        *self.counts.entry(reason.to_string()).or_insert(0) += n;
    }
}
