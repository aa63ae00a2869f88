//! The shard format (ARCHITECTURE.md decision 4): records in Parquet files plus a
//! `manifest.json` ([`crate::manifest`]).
//!
//! # Columns of a shard file
//!
//! | column | type | content |
//! |---|---|---|
//! | `id` | i64 | [`Record::id`] |
//! | `image` | string | [`Record::image`] (file name) |
//! | `prompt` | string | [`Record::prompt`] |
//! | `answer_template` | string | [`Record::answer_template`] |
//! | `task` | string | `ovd`, `refering`, `ric` |
//! | `objects` | list<struct> | one struct per [`RecordObject`], fields below |
//! | `width`, `height` | u32 | original image size in pixels |
//! | `image_bytes` | binary | encoded image (embedded mode only) |
//! | `image_path` | string | image path (reference mode only) |
//!
//! `objects` fields: `patches` list<u32>, `bbox` list<f64> (4 values, `[x1, y1, x2, y2]`
//! normalised), `iscrowd` i64, `area` f64, `area_is_int` bool, `rle_size` list<u32>
//! (`[H, W]`, null without a mask), `rle_counts` string (null without a mask), `label` string.
//! Floats are stored as f64, so a record reads back bit for bit.
//!
//! # Writing
//!
//! [`write_dataset`] cuts the source's records into shards deterministically (input records
//! `[k*N, (k+1)*N)` go to shard `k`), writes shards in parallel (as many writer threads as
//! rayon has, one shard in memory per thread; records are borrowed, not copied), each to a
//! temporary file in the output folder that is fsynced and renamed, records each finished
//! shard in `manifest.partial.json`, and writes `manifest.json` last. A rerun keeps every shard whose
//! inputs are unchanged and whose file still has the recorded sha256.

use crate::manifest::{
    ImageMode, Manifest, ManifestError, PartialManifest, ShardEntry, SkippedRecord, SourceInfo,
    FORMAT_NAME, FORMAT_VERSION, MANIFEST_FILE, PARTIAL_MANIFEST_FILE,
};
use crate::record::{DropCounts, ImageData, Record, RecordObject, RleJson, SourceItem, Task};
use polars::prelude::{
    Column, CompatLevel, DataFrame, IntoColumn, ParquetReader, ParquetWriter, SerReader, Series,
};
use polars_arrow::array::{
    Array, BinaryViewArray, BooleanArray, ListArray, PrimitiveArray, StructArray, Utf8ViewArray,
};
use polars_arrow::bitmap::Bitmap;
use polars_arrow::datatypes::{ArrowDataType, Field};
use polars_arrow::offset::OffsetsBuffer;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Default input records per shard. About 160 MB of JPEGs per shard for COCO-sized images in
/// embedded mode: small enough to write a few shards in parallel, large enough to keep the file
/// count low (COCO train: 117 shards).
pub const DEFAULT_SHARD_SIZE: usize = 1024;
/// Rows per Parquet row group in embedded mode: [`ShardDataset::get`] reads one row group.
pub const EMBEDDED_ROW_GROUP: usize = 32;
/// Rows per Parquet row group in reference mode.
pub const REFERENCE_ROW_GROUP: usize = 1024;

/// The image of a stored record.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredImage {
    /// The encoded image (embedded mode).
    Bytes(Vec<u8>),
    /// Where the image file is (reference mode).
    Path(PathBuf),
}

/// One row of a shard: a record, its image and the image size.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    /// The PaDT record.
    pub record: Record,
    /// Original image width in pixels.
    pub width: u32,
    /// Original image height in pixels.
    pub height: u32,
    /// The image.
    pub image: StoredImage,
}

impl StoredRecord {
    /// The encoded image bytes (read from disk in reference mode).
    pub fn image_bytes(&self) -> Result<std::borrow::Cow<'_, [u8]>, ShardError> {
        match &self.image {
            StoredImage::Bytes(b) => Ok(std::borrow::Cow::Borrowed(b)),
            StoredImage::Path(p) => {
                std::fs::read(p)
                    .map(std::borrow::Cow::Owned)
                    .map_err(|source| ShardError::Io {
                        path: p.clone(),
                        source,
                    })
            }
        }
    }
}

/// What can go wrong while writing or reading shards. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The output folder cannot be created or written to.
    #[error("output folder {path} is not writable: {source}")]
    Unwritable {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is missing or invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A shard file's size or sha256 differs from the manifest (truncated or modified file).
    #[error("{path}: {message}")]
    Checksum {
        /// The shard file.
        path: PathBuf,
        /// Expected and found values.
        message: String,
    },
    /// A shard file is not readable Parquet (truncated, corrupt).
    #[error("{path}: not a readable Parquet shard: {message}")]
    Parquet {
        /// The shard file.
        path: PathBuf,
        /// The Parquet reader's message.
        message: String,
    },
    /// A column is missing or has the wrong type.
    #[error("{path}: column {column:?}: {message}")]
    Column {
        /// The shard file.
        path: PathBuf,
        /// The column (`objects.bbox` for a nested field).
        column: String,
        /// What is wrong.
        message: String,
    },
    /// A row holds a value no record can have (row index inside the file).
    #[error("{path}: row {row}: {message}")]
    Row {
        /// The shard file.
        path: PathBuf,
        /// Row index inside the file.
        row: usize,
        /// What is wrong.
        message: String,
    },
    /// A global record index past the end.
    #[error("record index {index} is out of range (the dataset has {len} records)")]
    OutOfRange {
        /// The requested index.
        index: u64,
        /// The number of records.
        len: u64,
    },
    /// A record cannot be stored in the requested mode.
    #[error("record {index} (id {id}, image {image:?}): {message}")]
    Unstorable {
        /// Index in the source's output.
        index: u64,
        /// Record id.
        id: i64,
        /// Record image name.
        image: String,
        /// Why.
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ShardError + '_ {
    move |source| ShardError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The shard file name of shard `k`.
pub fn shard_file_name(k: usize) -> String {
    format!("shard-{k:05}.parquet")
}

// ---------------------------------------------------------------------------------------------
// Records → columns

fn list_dtype(child: ArrowDataType) -> ArrowDataType {
    ArrowDataType::LargeList(Box::new(Field::new("item".into(), child, true)))
}

fn object_fields() -> Vec<Field> {
    vec![
        Field::new("patches".into(), list_dtype(ArrowDataType::UInt32), false),
        Field::new("bbox".into(), list_dtype(ArrowDataType::Float64), false),
        Field::new("iscrowd".into(), ArrowDataType::Int64, false),
        Field::new("area".into(), ArrowDataType::Float64, false),
        Field::new("area_is_int".into(), ArrowDataType::Boolean, false),
        Field::new("rle_size".into(), list_dtype(ArrowDataType::UInt32), true),
        Field::new("rle_counts".into(), ArrowDataType::Utf8View, true),
        Field::new("label".into(), ArrowDataType::Utf8View, false),
    ]
}

fn offsets_from_lengths(lengths: impl Iterator<Item = usize>) -> OffsetsBuffer<i64> {
    let mut offsets = Vec::with_capacity(lengths.size_hint().0 + 1);
    let mut acc = 0i64;
    offsets.push(0);
    for n in lengths {
        acc += n as i64;
        offsets.push(acc);
    }
    // Monotone by construction.
    OffsetsBuffer::try_from(offsets).expect("offsets are monotone")
}

fn list_array<T: polars_arrow::types::NativeType>(
    child: ArrowDataType,
    lists: &[&[T]],
    validity: Option<Bitmap>,
) -> Box<dyn Array> {
    let offsets = offsets_from_lengths(lists.iter().map(|l| l.len()));
    let values: Vec<T> = lists.iter().flat_map(|l| l.iter().copied()).collect();
    let values = PrimitiveArray::<T>::from_vec(values).to(child.clone());
    Box::new(ListArray::<i64>::new(
        list_dtype(child),
        offsets,
        Box::new(values),
        validity,
    ))
}

fn objects_array(records: &[ShardRow]) -> Box<dyn Array> {
    let objects: Vec<&RecordObject> = records
        .iter()
        .flat_map(|r| r.record.objects.iter())
        .collect();
    let patches: Vec<&[u32]> = objects.iter().map(|o| o.patches.as_slice()).collect();
    let bboxes: Vec<&[f64]> = objects.iter().map(|o| o.bbox.as_slice()).collect();
    let rle_sizes: Vec<&[u32]> = objects
        .iter()
        .map(|o| o.rle.as_ref().map_or(&[][..], |r| r.size.as_slice()))
        .collect();
    let rle_valid: Bitmap = objects.iter().map(|o| o.rle.is_some()).collect();
    let rle_counts: Utf8ViewArray = Utf8ViewArray::from_slice(
        objects
            .iter()
            .map(|o| o.rle.as_ref().map(|r| r.counts.as_str()))
            .collect::<Vec<_>>(),
    );
    let fields: Vec<Box<dyn Array>> = vec![
        list_array(ArrowDataType::UInt32, &patches, None),
        list_array(ArrowDataType::Float64, &bboxes, None),
        Box::new(PrimitiveArray::<i64>::from_vec(
            objects.iter().map(|o| o.iscrowd).collect(),
        )),
        Box::new(PrimitiveArray::<f64>::from_vec(
            objects.iter().map(|o| o.area).collect(),
        )),
        Box::new(BooleanArray::from_slice(
            objects.iter().map(|o| o.area_is_int).collect::<Vec<_>>(),
        )),
        list_array(ArrowDataType::UInt32, &rle_sizes, Some(rle_valid)),
        Box::new(rle_counts),
        Box::new(Utf8ViewArray::from_slice_values(
            objects.iter().map(|o| o.label.as_str()).collect::<Vec<_>>(),
        )),
    ];
    let structs = StructArray::new(
        ArrowDataType::Struct(object_fields()),
        objects.len(),
        fields,
        None,
    );
    let offsets = offsets_from_lengths(records.iter().map(|r| r.record.objects.len()));
    Box::new(ListArray::<i64>::new(
        list_dtype(ArrowDataType::Struct(object_fields())),
        offsets,
        Box::new(structs),
        None,
    ))
}

fn column(name: &str, array: Box<dyn Array>) -> Column {
    Series::from_arrow(name.into(), array)
        .expect("shard column arrays are built with valid types")
        .into_column()
}

fn strings(values: Vec<&str>) -> Box<dyn Array> {
    Box::new(Utf8ViewArray::from_slice_values(values))
}

/// One row of a shard as it is written: borrowed, so that writing copies no record.
#[derive(Clone, Copy)]
struct ShardRow<'a> {
    record: &'a Record,
    width: u32,
    height: u32,
    image: ImageRef<'a>,
}

/// The image of a [`ShardRow`].
#[derive(Clone, Copy)]
enum ImageRef<'a> {
    Bytes(&'a [u8]),
    Path(&'a Path),
}

impl<'a> From<&'a StoredRecord> for ShardRow<'a> {
    fn from(r: &'a StoredRecord) -> Self {
        ShardRow {
            record: &r.record,
            width: r.width,
            height: r.height,
            image: match &r.image {
                StoredImage::Bytes(b) => ImageRef::Bytes(b),
                StoredImage::Path(p) => ImageRef::Path(p),
            },
        }
    }
}

/// Builds the shard table of `records`. All records must carry the same image kind.
pub fn records_to_dataframe(records: &[&StoredRecord]) -> DataFrame {
    let rows: Vec<ShardRow> = records.iter().map(|&r| ShardRow::from(r)).collect();
    rows_to_dataframe(&rows)
}

fn rows_to_dataframe(records: &[ShardRow]) -> DataFrame {
    let mut columns = vec![
        column(
            "id",
            Box::new(PrimitiveArray::<i64>::from_vec(
                records.iter().map(|r| r.record.id).collect(),
            )),
        ),
        column(
            "image",
            strings(records.iter().map(|r| r.record.image.as_str()).collect()),
        ),
        column(
            "prompt",
            strings(records.iter().map(|r| r.record.prompt.as_str()).collect()),
        ),
        column(
            "answer_template",
            strings(
                records
                    .iter()
                    .map(|r| r.record.answer_template.as_str())
                    .collect(),
            ),
        ),
        column(
            "task",
            strings(records.iter().map(|r| r.record.task.as_str()).collect()),
        ),
        column("objects", objects_array(records)),
        column(
            "width",
            Box::new(PrimitiveArray::<u32>::from_vec(
                records.iter().map(|r| r.width).collect(),
            )),
        ),
        column(
            "height",
            Box::new(PrimitiveArray::<u32>::from_vec(
                records.iter().map(|r| r.height).collect(),
            )),
        ),
    ];
    let embedded = records
        .first()
        .is_none_or(|r| matches!(r.image, ImageRef::Bytes(_)));
    if embedded {
        let bytes: Vec<&[u8]> = records
            .iter()
            .map(|r| match r.image {
                ImageRef::Bytes(b) => b,
                ImageRef::Path(_) => &[][..],
            })
            .collect();
        columns.push(column(
            "image_bytes",
            Box::new(BinaryViewArray::from_slice_values(bytes)),
        ));
    } else {
        let paths: Vec<String> = records
            .iter()
            .map(|r| match r.image {
                ImageRef::Path(p) => p.to_string_lossy().into_owned(),
                ImageRef::Bytes(_) => String::new(),
            })
            .collect();
        columns.push(column(
            "image_path",
            strings(paths.iter().map(String::as_str).collect()),
        ));
    }
    DataFrame::new(records.len(), columns).expect("shard columns have equal lengths")
}

// ---------------------------------------------------------------------------------------------
// Columns → records

struct ColumnReader<'a> {
    path: &'a Path,
    df: &'a DataFrame,
}

impl<'a> ColumnReader<'a> {
    fn array(&self, name: &str) -> Result<Box<dyn Array>, ShardError> {
        let col = self.df.column(name).map_err(|_| ShardError::Column {
            path: self.path.to_path_buf(),
            column: name.to_string(),
            message: format!(
                "missing (the file has {:?})",
                self.df
                    .get_column_names()
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
            ),
        })?;
        let series = col.as_materialized_series().rechunk();
        if series.chunks().is_empty() {
            return Err(ShardError::Column {
                path: self.path.to_path_buf(),
                column: name.to_string(),
                message: "has no data".into(),
            });
        }
        Ok(series.to_arrow(0, CompatLevel::newest()))
    }
}

fn downcast<'b, T: 'static>(
    array: &'b dyn Array,
    path: &Path,
    column: &str,
    expected: &str,
) -> Result<&'b T, ShardError> {
    array
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| ShardError::Column {
            path: path.to_path_buf(),
            column: column.to_string(),
            message: format!("expected {expected}, found {:?}", array.dtype()),
        })
}

fn struct_field<'b>(
    s: &'b StructArray,
    name: &str,
    path: &Path,
) -> Result<&'b dyn Array, ShardError> {
    s.fields()
        .iter()
        .position(|f| f.name.as_str() == name)
        .map(|i| s.values()[i].as_ref())
        .ok_or_else(|| ShardError::Column {
            path: path.to_path_buf(),
            column: format!("objects.{name}"),
            message: "missing struct field".into(),
        })
}

/// A list<primitive> column as (offsets, values).
fn list_parts<'b, T: polars_arrow::types::NativeType>(
    array: &'b dyn Array,
    path: &Path,
    column: &str,
    expected: &str,
) -> Result<(&'b ListArray<i64>, &'b [T]), ShardError> {
    let list = downcast::<ListArray<i64>>(array, path, column, expected)?;
    let values = downcast::<PrimitiveArray<T>>(list.values().as_ref(), path, column, expected)?;
    Ok((list, values.values().as_slice()))
}

fn list_slice<'b, T>(list: &ListArray<i64>, values: &'b [T], i: usize) -> &'b [T] {
    let (start, end) = list.offsets().start_end(i);
    &values[start..end]
}

/// A stored record without its image (what [`ShardDataset::read_shard_meta`] returns).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordMeta {
    /// The PaDT record.
    pub record: Record,
    /// Original image width in pixels.
    pub width: u32,
    /// Original image height in pixels.
    pub height: u32,
}

/// Reads the records of a shard table; `path` only names the file in errors.
pub fn dataframe_to_records(df: &DataFrame, path: &Path) -> Result<Vec<StoredRecord>, ShardError> {
    let metas = dataframe_to_meta(df, path)?;
    let images = dataframe_images(df, path)?;
    Ok(metas
        .into_iter()
        .zip(images)
        .map(|(m, image)| StoredRecord {
            record: m.record,
            width: m.width,
            height: m.height,
            image,
        })
        .collect())
}

/// The `image_bytes` or `image_path` column of a shard table.
fn dataframe_images(df: &DataFrame, path: &Path) -> Result<Vec<StoredImage>, ShardError> {
    let cols = ColumnReader { path, df };
    let row_err = |row: usize, message: String| ShardError::Row {
        path: path.to_path_buf(),
        row,
        message,
    };
    if df.column("image_bytes").is_ok() {
        let a = cols.array("image_bytes")?;
        let b = downcast::<BinaryViewArray>(a.as_ref(), path, "image_bytes", "binary")?;
        (0..df.height())
            .map(|row| match b.get(row) {
                Some(v) => Ok(StoredImage::Bytes(v.to_vec())),
                None => Err(row_err(row, "image_bytes is null".into())),
            })
            .collect()
    } else if df.column("image_path").is_ok() {
        let a = cols.array("image_path")?;
        let p = downcast::<Utf8ViewArray>(a.as_ref(), path, "image_path", "string")?;
        (0..df.height())
            .map(|row| match p.get(row) {
                Some(v) => Ok(StoredImage::Path(PathBuf::from(v))),
                None => Err(row_err(row, "image_path is null".into())),
            })
            .collect()
    } else {
        Err(ShardError::Column {
            path: path.to_path_buf(),
            column: "image_bytes".into(),
            message: "missing (a shard needs image_bytes or image_path)".into(),
        })
    }
}

/// Reads the records of a shard table without their images.
pub fn dataframe_to_meta(df: &DataFrame, path: &Path) -> Result<Vec<RecordMeta>, ShardError> {
    let cols = ColumnReader { path, df };
    let n = df.height();
    let id_a = cols.array("id")?;
    let id = downcast::<PrimitiveArray<i64>>(id_a.as_ref(), path, "id", "i64")?;
    let image_a = cols.array("image")?;
    let image = downcast::<Utf8ViewArray>(image_a.as_ref(), path, "image", "string")?;
    let prompt_a = cols.array("prompt")?;
    let prompt = downcast::<Utf8ViewArray>(prompt_a.as_ref(), path, "prompt", "string")?;
    let answer_a = cols.array("answer_template")?;
    let answer = downcast::<Utf8ViewArray>(answer_a.as_ref(), path, "answer_template", "string")?;
    let task_a = cols.array("task")?;
    let task = downcast::<Utf8ViewArray>(task_a.as_ref(), path, "task", "string")?;
    let width_a = cols.array("width")?;
    let width = downcast::<PrimitiveArray<u32>>(width_a.as_ref(), path, "width", "u32")?;
    let height_a = cols.array("height")?;
    let height = downcast::<PrimitiveArray<u32>>(height_a.as_ref(), path, "height", "u32")?;

    let objects_a = cols.array("objects")?;
    let objects = downcast::<ListArray<i64>>(objects_a.as_ref(), path, "objects", "list<struct>")?;
    let obj = downcast::<StructArray>(objects.values().as_ref(), path, "objects", "list<struct>")?;
    let (patches_l, patches_v) = list_parts::<u32>(
        struct_field(obj, "patches", path)?,
        path,
        "objects.patches",
        "list<u32>",
    )?;
    let (bbox_l, bbox_v) = list_parts::<f64>(
        struct_field(obj, "bbox", path)?,
        path,
        "objects.bbox",
        "list<f64>",
    )?;
    let iscrowd = downcast::<PrimitiveArray<i64>>(
        struct_field(obj, "iscrowd", path)?,
        path,
        "objects.iscrowd",
        "i64",
    )?;
    let area = downcast::<PrimitiveArray<f64>>(
        struct_field(obj, "area", path)?,
        path,
        "objects.area",
        "f64",
    )?;
    let area_is_int = downcast::<BooleanArray>(
        struct_field(obj, "area_is_int", path)?,
        path,
        "objects.area_is_int",
        "bool",
    )?;
    let (rle_size_l, rle_size_v) = list_parts::<u32>(
        struct_field(obj, "rle_size", path)?,
        path,
        "objects.rle_size",
        "list<u32>",
    )?;
    let rle_counts = downcast::<Utf8ViewArray>(
        struct_field(obj, "rle_counts", path)?,
        path,
        "objects.rle_counts",
        "string",
    )?;
    let label = downcast::<Utf8ViewArray>(
        struct_field(obj, "label", path)?,
        path,
        "objects.label",
        "string",
    )?;

    let row_err = |row: usize, message: String| ShardError::Row {
        path: path.to_path_buf(),
        row,
        message,
    };
    let mut out = Vec::with_capacity(n);
    for row in 0..n {
        for (name, arr) in [
            ("id", id as &dyn Array),
            ("image", image),
            ("prompt", prompt),
            ("answer_template", answer),
            ("task", task),
            ("objects", objects),
            ("width", width),
            ("height", height),
        ] {
            if arr.is_null(row) {
                return Err(row_err(row, format!("{name} is null")));
            }
        }
        let task_s = task.value(row);
        let task_v =
            Task::parse(task_s).ok_or_else(|| row_err(row, format!("unknown task {task_s:?}")))?;
        let (o_start, o_end) = objects.offsets().start_end(row);
        let mut objs = Vec::with_capacity(o_end - o_start);
        for k in o_start..o_end {
            let bbox = list_slice(bbox_l, bbox_v, k);
            let bbox: [f64; 4] = bbox.try_into().map_err(|_| {
                row_err(
                    row,
                    format!(
                        "object {}: bbox has {} values, not 4",
                        k - o_start,
                        bbox.len()
                    ),
                )
            })?;
            let rle = if rle_size_l.is_valid(k) && rle_counts.is_valid(k) {
                let size = list_slice(rle_size_l, rle_size_v, k);
                let size: [u32; 2] = size.try_into().map_err(|_| {
                    row_err(
                        row,
                        format!(
                            "object {}: rle_size has {} values, not 2",
                            k - o_start,
                            size.len()
                        ),
                    )
                })?;
                Some(RleJson {
                    size,
                    counts: rle_counts.value(k).to_string(),
                })
            } else {
                None
            };
            objs.push(RecordObject {
                patches: list_slice(patches_l, patches_v, k).to_vec(),
                bbox,
                iscrowd: iscrowd.value(k),
                area: area.value(k),
                area_is_int: area_is_int.value(k),
                rle,
                label: label.value(k).to_string(),
            });
        }
        out.push(RecordMeta {
            record: Record {
                id: id.value(row),
                image: image.value(row).to_string(),
                prompt: prompt.value(row).to_string(),
                answer_template: answer.value(row).to_string(),
                objects: objs,
                task: task_v,
            },
            width: width.value(row),
            height: height.value(row),
        });
    }
    Ok(out)
}

/// Runs a Parquet read, turning errors and panics of the reader on corrupt input into
/// [`ShardError::Parquet`].
fn parquet_read<F>(path: &Path, read: F) -> Result<DataFrame, ShardError>
where
    F: FnOnce() -> polars::prelude::PolarsResult<DataFrame> + std::panic::UnwindSafe,
{
    match std::panic::catch_unwind(read) {
        Ok(Ok(df)) => Ok(df),
        Ok(Err(e)) => Err(ShardError::Parquet {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
        Err(panic) => Err(ShardError::Parquet {
            path: path.to_path_buf(),
            message: panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the Parquet reader panicked".into()),
        }),
    }
}

/// Parses a whole shard file held in memory.
pub fn read_shard_bytes(bytes: &[u8], path: &Path) -> Result<Vec<StoredRecord>, ShardError> {
    let df = parquet_read(path, || {
        ParquetReader::new(std::io::Cursor::new(bytes)).finish()
    })?;
    dataframe_to_records(&df, path)
}

/// Reads a whole shard file (no checksum check; see [`ShardDataset`]).
pub fn read_shard_file(path: &Path) -> Result<Vec<StoredRecord>, ShardError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    read_shard_bytes(&bytes, path)
}

// ---------------------------------------------------------------------------------------------
// Atomic writes

/// A writer that hashes what passes through it.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `records` to `path` atomically (temp file in the same folder, fsync, rename).
/// Returns (bytes, sha256 hex).
pub fn write_shard_file(
    path: &Path,
    records: &[&StoredRecord],
    row_group: usize,
) -> Result<(u64, String), ShardError> {
    let rows: Vec<ShardRow> = records.iter().map(|&r| ShardRow::from(r)).collect();
    write_rows_file(path, &rows, row_group)
}

fn write_rows_file(
    path: &Path,
    rows: &[ShardRow],
    row_group: usize,
) -> Result<(u64, String), ShardError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".parquet")
        .tempfile_in(dir)
        .map_err(|source| ShardError::Unwritable {
            path: dir.to_path_buf(),
            source,
        })?;
    let mut df = rows_to_dataframe(rows);
    let (bytes, sha) = {
        let mut writer = HashingWriter {
            inner: std::io::BufWriter::with_capacity(1 << 20, tmp.as_file()),
            hasher: Sha256::new(),
            bytes: 0,
        };
        ParquetWriter::new(&mut writer)
            .with_row_group_size(Some(row_group.max(1)))
            .finish(&mut df)
            .map_err(|e| ShardError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })?;
        writer.flush().map_err(io_err(path))?;
        (writer.bytes, hex(&writer.hasher.finalize_reset()))
    };
    tmp.as_file().sync_all().map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| ShardError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    sync_dir(dir);
    Ok((bytes, sha))
}

/// Writes a small file atomically.
pub fn write_file_atomic(path: &Path, contents: &[u8]) -> Result<(), ShardError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|source| ShardError::Unwritable {
            path: dir.to_path_buf(),
            source,
        })?;
    tmp.write_all(contents).map_err(io_err(path))?;
    tmp.as_file().sync_all().map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| ShardError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    sync_dir(dir);
    Ok(())
}

/// fsync of the folder so that the rename is durable (best effort: not every platform can).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// sha256 of a file, streaming.
pub fn sha256_file(path: &Path) -> Result<(u64, String), ShardError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex(&hasher.finalize())))
}

// ---------------------------------------------------------------------------------------------
// Datasets

/// What [`write_dataset`] needs besides the records.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Input records per shard.
    pub shard_size: usize,
    /// Embedded or reference images.
    pub image_mode: ImageMode,
    /// The source and its options (stored in the manifest).
    pub source: SourceInfo,
    /// The split name.
    pub split: String,
    /// The writing program's name.
    pub tool: String,
    /// Its version.
    pub tool_version: String,
    /// In embedded mode, read each image's header and skip records whose image does not
    /// decode (`corrupt_image`) or whose size differs from the record's (`image_size_mismatch`).
    pub check_image_headers: bool,
}

/// Progress of [`write_dataset`].
#[derive(Debug, Clone, Copy)]
pub enum WriteProgress {
    /// The number of shards and input records about to be written.
    Start {
        /// Shards in all.
        shards: usize,
        /// Shards kept from an earlier run.
        resumed: usize,
        /// Input records in all.
        records: u64,
    },
    /// One more shard is finished (written or kept), with its input record count.
    ShardDone {
        /// Input records of that shard.
        records: u64,
    },
}

/// Where a stored row's image comes from: the source item itself (its path in reference mode,
/// its bytes in embedded mode) or the file read for embedded mode.
enum RowImage {
    FromItem,
    Read(Vec<u8>),
}

impl RowImage {
    fn image_ref<'a>(&'a self, item: &'a SourceItem) -> ImageRef<'a> {
        match (self, &item.image) {
            (RowImage::Read(b), _) => ImageRef::Bytes(b),
            (RowImage::FromItem, ImageData::Bytes(b)) => ImageRef::Bytes(b),
            (RowImage::FromItem, ImageData::File(p)) => ImageRef::Path(p),
        }
    }
}

/// Resolves a source item's image for `mode`, or says why the item is skipped.
fn row_image(
    item: &SourceItem,
    index: u64,
    opts: &WriteOptions,
) -> Result<Result<RowImage, SkippedRecord>, ShardError> {
    let skip = |reason: &str, detail: String| SkippedRecord {
        reason: reason.to_string(),
        source_index: index,
        id: item.record.id,
        image: item.record.image.clone(),
        detail,
    };
    let image = match (opts.image_mode, &item.image) {
        (ImageMode::Reference, ImageData::File(_)) => return Ok(Ok(RowImage::FromItem)),
        (ImageMode::Reference, ImageData::Bytes(_)) => {
            return Err(ShardError::Unstorable {
                index,
                id: item.record.id,
                image: item.record.image.clone(),
                message: "the image exists only as bytes inside the source (lmms-lab parquet); \
                          use --images-mode embedded"
                    .into(),
            })
        }
        (ImageMode::Embedded, ImageData::Bytes(_)) => RowImage::FromItem,
        (ImageMode::Embedded, ImageData::File(p)) => match std::fs::read(p) {
            Ok(b) => RowImage::Read(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Err(skip("missing_image", p.display().to_string())))
            }
            Err(e) => {
                return Ok(Err(skip(
                    "unreadable_image",
                    format!("{}: {e}", p.display()),
                )))
            }
        },
    };
    if opts.check_image_headers {
        if let ImageRef::Bytes(b) = image.image_ref(item) {
            match image_dimensions(b) {
                Err(e) => return Ok(Err(skip("corrupt_image", e))),
                Ok((w, h)) if (w, h) != (item.width, item.height) => {
                    return Ok(Err(skip(
                        "image_size_mismatch",
                        format!(
                            "image file is {w}x{h}, the annotation says {}x{}",
                            item.width, item.height
                        ),
                    )))
                }
                Ok(_) => {}
            }
        }
    }
    Ok(Ok(image))
}

/// Width and height from an encoded image's header (no pixel decoding).
pub fn image_dimensions(bytes: &[u8]) -> Result<(u32, u32), String> {
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .into_dimensions()
        .map_err(|e| e.to_string())
}

/// sha256 over everything that determines shard `k`'s content: the format version, the image
/// mode, the file name and every input record with its image source.
fn input_digest(items: &[SourceItem], opts: &WriteOptions, file: &str) -> String {
    let mut h = Sha256::new();
    h.update(FORMAT_VERSION.to_le_bytes());
    h.update(opts.image_mode.as_str().as_bytes());
    h.update([opts.check_image_headers as u8]);
    h.update(file.as_bytes());
    for item in items {
        let json = serde_json::to_vec(&item.record).expect("records serialise");
        h.update((json.len() as u64).to_le_bytes());
        h.update(&json);
        h.update(item.width.to_le_bytes());
        h.update(item.height.to_le_bytes());
        match &item.image {
            ImageData::File(p) => {
                h.update(b"file");
                let s = p.to_string_lossy();
                h.update((s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
            ImageData::Bytes(b) => {
                h.update(b"bytes");
                h.update(Sha256::digest(b));
            }
        }
    }
    hex(&h.finalize())
}

/// An earlier run's entry for this shard is reusable when its inputs and file are unchanged.
fn reusable(dir: &Path, candidate: &ShardEntry, input_sha: &str) -> bool {
    if candidate.input_sha256 != input_sha {
        return false;
    }
    let path = dir.join(&candidate.file);
    match std::fs::metadata(&path) {
        Ok(m) if m.len() == candidate.bytes => {}
        _ => return false,
    }
    matches!(sha256_file(&path), Ok((_, sha)) if sha == candidate.sha256)
}

/// Writes the records of one source run into `dir` (created if needed) and returns the
/// manifest. `counts` are the source's drop counters. See the module docs for the layout and
/// the resume rule.
pub fn write_dataset(
    dir: &Path,
    items: &[SourceItem],
    counts: &DropCounts,
    opts: &WriteOptions,
    progress: &(dyn Fn(WriteProgress) + Sync),
) -> Result<Manifest, ShardError> {
    std::fs::create_dir_all(dir).map_err(|source| ShardError::Unwritable {
        path: dir.to_path_buf(),
        source,
    })?;
    // Fail early, with the folder's name, when it is not writable.
    tempfile::tempfile_in(dir).map_err(|source| ShardError::Unwritable {
        path: dir.to_path_buf(),
        source,
    })?;
    let shard_size = opts.shard_size.max(1);
    let n_shards = items.len().div_ceil(shard_size);

    // Entries of an earlier (possibly interrupted) run in this folder.
    let mut previous: BTreeMap<u64, ShardEntry> = BTreeMap::new();
    if dir.join(MANIFEST_FILE).exists() {
        // Never overwrite a file that is not ours (`--out` pointed at the wrong folder).
        let m = Manifest::read(dir).map_err(|e| ShardError::Unwritable {
            path: dir.to_path_buf(),
            source: std::io::Error::other(format!(
                "it holds a manifest.json that is not a readable shard manifest ({e}); \
                 choose another folder or remove it"
            )),
        })?;
        for (k, e) in m.shards.into_iter().enumerate() {
            previous.insert(k as u64, e);
        }
    }
    if let Some(p) = PartialManifest::read(dir) {
        previous.extend(p.finished);
    }
    // The final manifest is stale as soon as anything changes: remove it first, so that an
    // interrupted rerun never leaves a manifest that lists files of two different runs.
    let manifest_path = dir.join(MANIFEST_FILE);
    if manifest_path.exists() {
        std::fs::remove_file(&manifest_path).map_err(io_err(&manifest_path))?;
    }

    let plans: Vec<(usize, String, String)> = (0..n_shards)
        .into_par_iter()
        .map(|k| {
            let range = k * shard_size..((k + 1) * shard_size).min(items.len());
            let file = shard_file_name(k);
            let digest = input_digest(&items[range], opts, &file);
            (k, file, digest)
        })
        .collect();
    let kept: BTreeMap<usize, ShardEntry> = plans
        .par_iter()
        .filter_map(|(k, _, digest)| {
            let cand = previous.get(&(*k as u64))?;
            reusable(dir, cand, digest).then(|| (*k, cand.clone()))
        })
        .collect();
    progress(WriteProgress::Start {
        shards: n_shards,
        resumed: kept.len(),
        records: items.len() as u64,
    });
    let finished = Mutex::new(PartialManifest {
        finished: kept.iter().map(|(k, e)| (*k as u64, e.clone())).collect(),
    });
    write_partial(dir, &finished.lock().expect("not poisoned"))?;
    for (k, _) in kept.iter() {
        let range = k * shard_size..((k + 1) * shard_size).min(items.len());
        progress(WriteProgress::ShardDone {
            records: range.len() as u64,
        });
    }

    let row_group = match opts.image_mode {
        ImageMode::Embedded => EMBEDDED_ROW_GROUP,
        ImageMode::Reference => REFERENCE_ROW_GROUP,
    };
    let to_write: Vec<&(usize, String, String)> = plans
        .iter()
        .filter(|(k, _, _)| !kept.contains_key(k))
        .collect();
    let write_one = |&&(k, ref file, ref digest): &&(usize, String, String)| {
        let range = k * shard_size..((k + 1) * shard_size).min(items.len());
        let mut images = Vec::with_capacity(range.len());
        let mut skipped = Vec::new();
        for i in range.clone() {
            match row_image(&items[i], i as u64, opts)? {
                Ok(image) => images.push((i, image)),
                Err(s) => skipped.push(s),
            }
        }
        let rows: Vec<ShardRow> = images
            .iter()
            .map(|(i, image)| {
                let item = &items[*i];
                ShardRow {
                    record: &item.record,
                    width: item.width,
                    height: item.height,
                    image: image.image_ref(item),
                }
            })
            .collect();
        let (bytes, sha256) = write_rows_file(&dir.join(file), &rows, row_group)?;
        let entry = ShardEntry {
            file: file.clone(),
            records: rows.len() as u64,
            bytes,
            sha256,
            input_sha256: digest.clone(),
            skipped,
        };
        drop(rows);
        drop(images);
        {
            let mut fin = finished.lock().expect("not poisoned");
            fin.finished.insert(k as u64, entry.clone());
            write_partial(dir, &fin)?;
        }
        progress(WriteProgress::ShardDone {
            records: range.len() as u64,
        });
        Ok((k, entry))
    };
    let written = run_bounded(&to_write, write_one)?;
    let mut entries: BTreeMap<usize, ShardEntry> = kept;
    entries.extend(written);
    let shards: Vec<ShardEntry> = entries.into_values().collect();

    // Remove shard files of an earlier, larger run that are not part of this one.
    if let Ok(read) = std::fs::read_dir(dir) {
        for entry in read.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(num) = name
                .strip_prefix("shard-")
                .and_then(|s| s.strip_suffix(".parquet"))
            {
                if num.parse::<usize>().is_ok_and(|k| k >= n_shards) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    let mut drop_counts = counts.clone();
    let mut skipped_all = Vec::new();
    for s in &shards {
        for sk in &s.skipped {
            *drop_counts.entry(sk.reason.clone()).or_insert(0) += 1;
            skipped_all.push(sk.clone());
        }
    }
    let mut task_counts: BTreeMap<String, u64> = BTreeMap::new();
    let skipped_idx: std::collections::HashSet<u64> =
        skipped_all.iter().map(|s| s.source_index).collect();
    for (i, item) in items.iter().enumerate() {
        if !skipped_idx.contains(&(i as u64)) {
            *task_counts
                .entry(item.record.task.as_str().to_string())
                .or_insert(0) += 1;
        }
    }
    let task = match task_counts.len() {
        1 => task_counts.keys().next().expect("one").clone(),
        0 => "none".to_string(),
        _ => "mixed".to_string(),
    };
    let manifest = Manifest {
        format: FORMAT_NAME.to_string(),
        format_version: FORMAT_VERSION,
        tool: opts.tool.clone(),
        tool_version: opts.tool_version.clone(),
        task,
        task_counts,
        source: opts.source.clone(),
        split: opts.split.clone(),
        image_mode: opts.image_mode,
        shard_size: shard_size as u64,
        source_records: items.len() as u64,
        total_records: shards.iter().map(|s| s.records).sum(),
        shards,
        drop_counts,
        skipped: skipped_all,
    };
    manifest
        .validate()
        .map_err(|message| ManifestError::Invalid {
            path: manifest_path.clone(),
            message,
        })?;
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    write_file_atomic(&manifest_path, &json)?;
    let partial = dir.join(PARTIAL_MANIFEST_FILE);
    if partial.exists() {
        std::fs::remove_file(&partial).map_err(io_err(&partial))?;
    }
    Ok(manifest)
}

/// Runs `job` on every element of `jobs`, in order, on `rayon::current_num_threads()` plain
/// threads, and returns the results in job order, or the error of the first job (in job order)
/// that failed; after a failure no new job starts.
///
/// Plain threads, not a rayon `par_iter`: polars' Parquet writer runs its work on polars' own
/// rayon pool, and a rayon worker that waits for another pool runs more jobs of its own pool
/// meanwhile, so every shard of a run would be built and held at once (bench/preprocess.md).
/// Here a writer thread simply blocks, and at most one shard per thread is in memory.
fn run_bounded<T: Sync, R: Send>(
    jobs: &[T],
    job: impl Fn(&T) -> Result<R, ShardError> + Sync,
) -> Result<Vec<R>, ShardError> {
    let workers = rayon::current_num_threads().clamp(1, jobs.len().max(1));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<R, ShardError>>>> =
        Mutex::new(jobs.iter().map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                // Jobs are taken in order, so every job before a failed one has run.
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(j) = jobs.get(i) else { break };
                    let result = job(j);
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    results.lock().expect("not poisoned")[i] = Some(result);
                }
            });
        }
    });
    results
        .into_inner()
        .expect("not poisoned")
        .into_iter()
        .flatten()
        .collect()
}

fn write_partial(dir: &Path, partial: &PartialManifest) -> Result<(), ShardError> {
    let json = serde_json::to_vec_pretty(partial).expect("partial manifest serialises");
    write_file_atomic(&dir.join(PARTIAL_MANIFEST_FILE), &json)
}

/// A finished shard directory, opened for reading.
///
/// [`ShardDataset::open`] validates the manifest and checks that every shard file exists with
/// the recorded size (a cheap truncation check). Whole-shard reads ([`ShardDataset::read_shard`],
/// [`ShardDataset::iter`]) also check the sha256; [`ShardDataset::get`] reads one block of
/// [`CACHE_BLOCK_ROWS`] rows and keeps recently read blocks decoded (clones share the cache).
#[derive(Debug, Clone)]
pub struct ShardDataset {
    dir: PathBuf,
    manifest: Manifest,
    offsets: Vec<u64>,
    cache: std::sync::Arc<Mutex<BlockCache>>,
}

/// Rows per block that [`ShardDataset::get`] decodes and caches: the row group of embedded
/// shards, so a block is one row group there.
pub const CACHE_BLOCK_ROWS: usize = EMBEDDED_ROW_GROUP;

/// Default budget of [`ShardDataset`]'s block cache: 256 MiB of image bytes (plus 1 KiB per
/// record for the rest). A dataset that fits is decoded once; a larger one keeps the most
/// recently used blocks.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

/// A cached block: its records, the bytes charged for it, its last use.
#[derive(Debug)]
struct CachedBlock {
    records: std::sync::Arc<Vec<StoredRecord>>,
    bytes: u64,
    last_use: u64,
}

/// Decoded blocks of rows by (shard, block index), least recently used evicted first.
#[derive(Debug)]
struct BlockCache {
    budget: u64,
    used: u64,
    clock: u64,
    blocks: std::collections::HashMap<(usize, usize), CachedBlock>,
}

impl BlockCache {
    fn new(budget: u64) -> Self {
        BlockCache {
            budget,
            used: 0,
            clock: 0,
            blocks: Default::default(),
        }
    }

    fn get(&mut self, key: (usize, usize)) -> Option<std::sync::Arc<Vec<StoredRecord>>> {
        self.clock += 1;
        let clock = self.clock;
        self.blocks.get_mut(&key).map(|block| {
            block.last_use = clock;
            block.records.clone()
        })
    }

    /// Keeps `records` unless they alone exceed the budget; evicts the least recently used.
    fn insert(&mut self, key: (usize, usize), records: std::sync::Arc<Vec<StoredRecord>>) {
        let bytes: u64 = records
            .iter()
            .map(|r| match &r.image {
                StoredImage::Bytes(b) => b.len() as u64 + 1024,
                StoredImage::Path(_) => 1024,
            })
            .sum();
        if bytes > self.budget {
            return;
        }
        while self.used + bytes > self.budget {
            let Some(oldest) = self
                .blocks
                .iter()
                .min_by_key(|(_, block)| block.last_use)
                .map(|(key, _)| *key)
            else {
                break;
            };
            if let Some(evicted) = self.blocks.remove(&oldest) {
                self.used -= evicted.bytes;
            }
        }
        self.clock += 1;
        let block = CachedBlock {
            records,
            bytes,
            last_use: self.clock,
        };
        if let Some(old) = self.blocks.insert(key, block) {
            self.used -= old.bytes;
        }
        self.used += bytes;
    }
}

impl ShardDataset {
    /// Opens `dir`.
    pub fn open(dir: &Path) -> Result<ShardDataset, ShardError> {
        let manifest = Manifest::read(dir)?;
        for shard in &manifest.shards {
            let path = dir.join(&shard.file);
            let meta = std::fs::metadata(&path).map_err(io_err(&path))?;
            if meta.len() != shard.bytes {
                return Err(ShardError::Checksum {
                    path,
                    message: format!(
                        "file has {} bytes, the manifest says {} (truncated or modified)",
                        meta.len(),
                        shard.bytes
                    ),
                });
            }
        }
        let offsets = manifest.shard_offsets();
        Ok(ShardDataset {
            dir: dir.to_path_buf(),
            manifest,
            offsets,
            cache: std::sync::Arc::new(Mutex::new(BlockCache::new(DEFAULT_CACHE_BYTES))),
        })
    }

    /// The same dataset with a block cache of `bytes` (0: no cache, every
    /// [`ShardDataset::get`] decodes its block). Clones made afterwards share the new cache.
    pub fn with_cache_bytes(mut self, bytes: u64) -> Self {
        self.cache = std::sync::Arc::new(Mutex::new(BlockCache::new(bytes)));
        self
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of records.
    pub fn len(&self) -> u64 {
        self.manifest.total_records
    }

    /// `true` when the dataset has no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Global index of the first record of each shard, plus the total at the end.
    pub fn shard_offsets(&self) -> &[u64] {
        &self.offsets
    }

    /// The path of shard `k`.
    pub fn shard_path(&self, k: usize) -> PathBuf {
        self.dir.join(&self.manifest.shards[k].file)
    }

    /// (shard, row inside the shard) of a global record index.
    pub fn locate(&self, index: u64) -> Result<(usize, usize), ShardError> {
        if index >= self.len() {
            return Err(ShardError::OutOfRange {
                index,
                len: self.len(),
            });
        }
        // The last offset <= index whose shard is not empty.
        let k = self.offsets.partition_point(|&o| o <= index) - 1;
        Ok((k, (index - self.offsets[k]) as usize))
    }

    /// Checks shard `k`'s sha256 against the manifest.
    pub fn verify_shard(&self, k: usize) -> Result<(), ShardError> {
        let path = self.shard_path(k);
        let (bytes, sha) = sha256_file(&path)?;
        self.check_sum(k, bytes, &sha)
    }

    fn check_sum(&self, k: usize, bytes: u64, sha: &str) -> Result<(), ShardError> {
        let e = &self.manifest.shards[k];
        if bytes != e.bytes || sha != e.sha256 {
            return Err(ShardError::Checksum {
                path: self.shard_path(k),
                message: format!(
                    "sha256 {sha} ({bytes} bytes) differs from the manifest's {} ({} bytes)",
                    e.sha256, e.bytes
                ),
            });
        }
        Ok(())
    }

    /// Reads all records of shard `k`, after checking its sha256.
    pub fn read_shard(&self, k: usize) -> Result<Vec<StoredRecord>, ShardError> {
        let path = self.shard_path(k);
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        self.check_sum(k, bytes.len() as u64, &hex(&Sha256::digest(&bytes)))?;
        let records = read_shard_bytes(&bytes, &path)?;
        let expected = self.manifest.shards[k].records as usize;
        if records.len() != expected {
            return Err(ShardError::Checksum {
                path,
                message: format!(
                    "holds {} records, the manifest says {expected}",
                    records.len()
                ),
            });
        }
        Ok(records)
    }

    /// Reads the records of shard `k` without images (the image column is not read; no
    /// checksum check, see [`ShardDataset::verify_shard`]).
    pub fn read_shard_meta(&self, k: usize) -> Result<Vec<RecordMeta>, ShardError> {
        let path = self.shard_path(k);
        let file = std::fs::File::open(&path).map_err(io_err(&path))?;
        let columns: Vec<String> = [
            "id",
            "image",
            "prompt",
            "answer_template",
            "task",
            "objects",
            "width",
            "height",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let df = parquet_read(&path, move || {
            ParquetReader::new(file)
                .with_columns(Some(columns))
                .finish()
        })?;
        dataframe_to_meta(&df, &path)
    }

    /// Reads the record at a global index: decodes the block of [`CACHE_BLOCK_ROWS`] rows that
    /// holds it, or takes it from the block cache.
    pub fn get(&self, index: u64) -> Result<StoredRecord, ShardError> {
        let (k, row) = self.locate(index)?;
        let key = (k, row / CACHE_BLOCK_ROWS);
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key);
        let block = match cached {
            Some(block) => block,
            None => {
                let block = std::sync::Arc::new(self.read_block(k, key.1)?);
                self.cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, block.clone());
                block
            }
        };
        block
            .get(row % CACHE_BLOCK_ROWS)
            .cloned()
            .ok_or_else(|| ShardError::Row {
                path: self.shard_path(k),
                row,
                message: format!("the shard ends before row {row} (manifest out of date?)"),
            })
    }

    /// Rows `block * CACHE_BLOCK_ROWS ..` (at most [`CACHE_BLOCK_ROWS`]) of shard `k`.
    fn read_block(&self, k: usize, block: usize) -> Result<Vec<StoredRecord>, ShardError> {
        let path = self.shard_path(k);
        let first = block * CACHE_BLOCK_ROWS;
        let rows = (self.manifest.shards[k].records as usize).saturating_sub(first);
        let len = rows.min(CACHE_BLOCK_ROWS);
        let file = std::fs::File::open(&path).map_err(io_err(&path))?;
        let df = parquet_read(&path, move || {
            ParquetReader::new(file)
                .with_slice(Some((first, len)))
                .finish()
        })?;
        let records = dataframe_to_records(&df, &path)?;
        if records.len() != len {
            return Err(ShardError::Row {
                path,
                row: first,
                message: format!(
                    "reading {len} rows from row {first} returned {}",
                    records.len()
                ),
            });
        }
        Ok(records)
    }

    /// Every record in order, shard by shard (each shard's sha256 is checked when it is read).
    pub fn iter(&self) -> impl Iterator<Item = Result<StoredRecord, ShardError>> + '_ {
        (0..self.manifest.shards.len()).flat_map(move |k| match self.read_shard(k) {
            Ok(records) => records.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn fail(k: usize) -> ShardError {
        ShardError::OutOfRange {
            index: k as u64,
            len: 0,
        }
    }

    #[test]
    fn bounded_runner_keeps_job_order() {
        let jobs: Vec<usize> = (0..50).collect();
        let out = run_bounded(&jobs, |&k| Ok(k * 2)).unwrap();
        assert_eq!(out, (0..50).map(|k| k * 2).collect::<Vec<_>>());
        assert!(run_bounded(&[] as &[usize], |&k| Ok(k)).unwrap().is_empty());
    }

    #[test]
    fn bounded_runner_reports_the_first_failure_and_starts_no_new_job() {
        let started = AtomicUsize::new(0);
        let jobs: Vec<usize> = (0..1000).collect();
        let err = run_bounded(&jobs, |&k| {
            started.fetch_add(1, Ordering::Relaxed);
            if k == 7 || k == 9 || k == 500 {
                return Err(fail(k));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            Ok(k)
        })
        .unwrap_err();
        // The first failure in job order, whichever thread saw which failure first.
        assert!(
            matches!(err, ShardError::OutOfRange { index: 7, .. }),
            "{err}"
        );
        // Jobs after a failure are not started (10 s of jobs; the run stops after ~8).
        assert!(started.load(Ordering::Relaxed) < 500);
    }
}
