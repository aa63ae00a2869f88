//! lmms-lab RefCOCO / RefCOCOplus / RefCOCOg parquet → PaDT referring (REC/RES) records
//! (data-formats.md §1c).
//!
//! Public API: [`LmmsOptions`], [`process_lmms`], [`read_lmms_file`], [`LmmsRow`],
//! [`lmms_parquet_files`].
//!
//! Input: the dataset's `data/<split>-0000k-of-0000n.parquet` files. One row per object:
//! `question_id` (the COCO annotation id as text), `image` struct<bytes, path> (the encoded
//! COCO train2014 image), `answer` list<string> (the referring expressions, `raw` refer
//! sentences), `segmentation` list<float> (the FIRST polygon of the object, pixels), `bbox`
//! list<float> `[x, y, w, h]`, `iscrowd` int8 (optional), `file_name` (refer-style name with a
//! `_N` suffix). Lists may name their child `element` (pyarrow ≥ 13) or `item` (older writers).
//!
//! Output: one record per expression, in file order, in PaDT's REC format:
//! - `id` = the COCO image id from `file_name`, `image` = `file_name` without the `_N` suffix;
//! - prompt / answer template as `process_refcoco.py` (padt-reference.md §5.7), with the
//!   expression as written in `answer` (lmms-lab keeps the `raw` sentence: mixed case and
//!   punctuation, where PaDT's own files use the lower-cased `sent`);
//! - one object: the polygon rasterised with pycocotools' rule (`padt_core`), patches with the
//!   RefCOCO float32 rule ([`PatchRule::RefcocoF32`]), `bbox` = `[x/W, y/H, (x+w)/W, (y+h)/H]`
//!   (the lmms-eval and `process_refcoco.py` formula) with the image size read from the encoded
//!   image's header, `area` = the pixel count of the rasterised polygon (the parquet has no
//!   area), `rle` = the polygon's compressed RLE, `label` = the expression.
//!
//! Filters ([`LmmsOptions`]): lmms-lab's `val` split merges two refer partitions (RefCOCO val =
//! UNC val + Google val, RefCOCOg val = UMD val + Google val). `keep_refs` keeps only the rows
//! whose annotation id is referred to in one split of a refer pickle (e.g. `refs(unc).p`,
//! split `val`), which restores the standard benchmark split; `exclude_image_ids` drops rows of
//! listed COCO images (e.g. images seen in training).

use crate::patches::{foreground_patches, PatchRule};
use crate::record::{ImageData, Record, RecordObject, RleJson, SourceItem, SourceOutput, Task};
use crate::sources::error::SourceError;
use crate::sources::refcoco::{rec_answer, rec_prompt};
use padt_core::Rle;
use polars::prelude::{CompatLevel, DataFrame, ParquetReader, SerReader};
use polars_arrow::array::{
    Array, BinaryViewArray, ListArray, PrimitiveArray, StructArray, Utf8ViewArray,
};
use rayon::prelude::*;
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

/// Keep only rows whose annotation is referred to in one split of a refer pickle.
#[derive(Debug, Clone)]
pub struct RefsSplitFilter {
    /// A refer `refs(<split_by>).p` pickle.
    pub refs: PathBuf,
    /// The split to keep (`val`, `testA`, `test`, ...; compared with the ref's `split` field
    /// exactly).
    pub split: String,
}

/// Options of the lmms-lab parquet source.
#[derive(Debug, Clone)]
pub struct LmmsOptions {
    /// A parquet file, or a folder searched for `*.parquet` (itself and its `data/` child).
    pub parquet: PathBuf,
    /// Only files whose name starts with `<split>-` or `<split>_` (HF naming). `None`: all
    /// files, which must then all belong to one split.
    pub split: Option<String>,
    /// Optional refer-split filter (see the module docs).
    pub keep_refs: Option<RefsSplitFilter>,
    /// Optional file of COCO image ids to drop (one integer per line, `#` comments).
    pub exclude_image_ids: Option<PathBuf>,
}

impl LmmsOptions {
    /// All rows of the parquet file(s) at `parquet`.
    pub fn new(parquet: impl Into<PathBuf>) -> Self {
        LmmsOptions {
            parquet: parquet.into(),
            split: None,
            keep_refs: None,
            exclude_image_ids: None,
        }
    }
}

/// One parquet row, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct LmmsRow {
    /// `question_id` (the COCO annotation id as text).
    pub question_id: String,
    /// `file_name` (refer-style, with the `_N` suffix).
    pub file_name: String,
    /// `answer`: the referring expressions.
    pub answer: Vec<String>,
    /// `bbox` `[x, y, w, h]` in pixels, widened exactly from float32.
    pub bbox_xywh: [f64; 4],
    /// `iscrowd` (0 when the column is absent).
    pub iscrowd: i64,
    /// `segmentation`: one flat polygon, widened exactly from float32.
    pub segmentation: Vec<f64>,
    /// `image.path` (usually null).
    pub image_path: Option<String>,
    /// `image.bytes`: the encoded image.
    pub image_bytes: Vec<u8>,
}

/// The columns a file must have.
const REQUIRED: [&str; 6] = [
    "question_id",
    "image",
    "answer",
    "segmentation",
    "bbox",
    "file_name",
];

/// The parquet files selected by `opts`, sorted by name.
pub fn lmms_parquet_files(opts: &LmmsOptions) -> Result<Vec<PathBuf>, SourceError> {
    let root = &opts.parquet;
    let meta = std::fs::metadata(root).map_err(|e| SourceError::io(root, e))?;
    let mut files: Vec<PathBuf> = Vec::new();
    if meta.is_file() {
        files.push(root.clone());
    } else {
        for dir in [root.clone(), root.join("data")] {
            let Ok(read) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in read {
                let entry = entry.map_err(|e| SourceError::io(&dir, e))?;
                let p = entry.path();
                if p.extension().is_some_and(|e| e == "parquet") && p.is_file() {
                    files.push(p);
                }
            }
        }
        files.sort();
    }
    let split_of = |p: &Path| -> String {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        name.split(['-', '_', '.']).next().unwrap_or("").to_string()
    };
    if let Some(split) = &opts.split {
        if meta.is_dir() {
            files.retain(|p| &split_of(p) == split);
        }
    } else if meta.is_dir() {
        let splits: BTreeSet<String> = files.iter().map(|p| split_of(p)).collect();
        if splits.len() > 1 {
            return Err(SourceError::Option(format!(
                "{} holds parquet files of several splits ({}); choose one with --split",
                root.display(),
                splits.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    if files.is_empty() {
        return Err(SourceError::invalid(
            root,
            match &opts.split {
                Some(s) => format!(
                    "no parquet file of split {s:?} (looked for {s}-*.parquet here and in data/)"
                ),
                None => "no *.parquet file here or in data/".to_string(),
            },
        ));
    }
    Ok(files)
}

fn col_err(path: &Path, column: &str, message: impl Into<String>) -> SourceError {
    SourceError::invalid(path, format!("column {column:?}: {}", message.into()))
}

fn downcast<'a, T: 'static>(
    a: &'a dyn Array,
    path: &Path,
    column: &str,
    expected: &str,
) -> Result<&'a T, SourceError> {
    a.as_any().downcast_ref::<T>().ok_or_else(|| {
        col_err(
            path,
            column,
            format!("expected {expected}, found {:?}", a.dtype()),
        )
    })
}

fn column_array(df: &DataFrame, path: &Path, name: &str) -> Result<Box<dyn Array>, SourceError> {
    let col = df
        .column(name)
        .map_err(|_| col_err(path, name, "missing"))?;
    let s = col.as_materialized_series().rechunk();
    if s.chunks().is_empty() {
        return Err(col_err(path, name, "has no data"));
    }
    Ok(s.to_arrow(0, CompatLevel::newest()))
}

/// A list<float32 | float64> cell as f64 values.
fn float_list(
    list: &ListArray<i64>,
    row: usize,
    path: &Path,
    column: &str,
) -> Result<Vec<f64>, SourceError> {
    let values = list.values().as_ref();
    let (start, end) = list.offsets().start_end(row);
    if let Some(v) = values.as_any().downcast_ref::<PrimitiveArray<f32>>() {
        Ok(v.values()[start..end].iter().map(|&x| x as f64).collect())
    } else if let Some(v) = values.as_any().downcast_ref::<PrimitiveArray<f64>>() {
        Ok(v.values()[start..end].to_vec())
    } else {
        Err(col_err(
            path,
            column,
            format!("expected list<float>, found list<{:?}>", values.dtype()),
        ))
    }
}

/// Reads every row of one lmms-lab parquet file. A missing column, a wrong column type or a
/// null where a value is required is an error naming the file, the column and the row.
pub fn read_lmms_file(path: &Path) -> Result<Vec<LmmsRow>, SourceError> {
    let file = std::fs::File::open(path).map_err(|e| SourceError::io(path, e))?;
    let mut reader = ParquetReader::new(file);
    let schema = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.schema()))
        .map_err(|_| SourceError::invalid(path, "not a readable parquet file"))?
        .map_err(|e| SourceError::invalid(path, format!("not a readable parquet file: {e}")))?;
    let names: Vec<String> = schema.iter_names().map(|n| n.to_string()).collect();
    for required in REQUIRED {
        if !names.iter().any(|n| n == required) {
            return Err(SourceError::invalid(
                path,
                format!(
                    "missing column {required:?} (an lmms-lab RefCOCO parquet needs {}; this file has {})",
                    REQUIRED.join(", "),
                    names.join(", ")
                ),
            ));
        }
    }
    let df = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.finish()))
        .map_err(|_| SourceError::invalid(path, "not a readable parquet file"))?
        .map_err(|e| SourceError::invalid(path, format!("not a readable parquet file: {e}")))?;
    let n = df.height();

    let qid_a = column_array(&df, path, "question_id")?;
    let fname_a = column_array(&df, path, "file_name")?;
    let image_a = column_array(&df, path, "image")?;
    let answer_a = column_array(&df, path, "answer")?;
    let seg_a = column_array(&df, path, "segmentation")?;
    let bbox_a = column_array(&df, path, "bbox")?;
    let iscrowd_a = if names.iter().any(|n| n == "iscrowd") {
        Some(column_array(&df, path, "iscrowd")?)
    } else {
        None
    };

    let qid = downcast::<Utf8ViewArray>(qid_a.as_ref(), path, "question_id", "string")?;
    let fname = downcast::<Utf8ViewArray>(fname_a.as_ref(), path, "file_name", "string")?;
    let image = downcast::<StructArray>(image_a.as_ref(), path, "image", "struct<bytes, path>")?;
    let field = |name: &str| {
        image
            .fields()
            .iter()
            .position(|f| f.name.as_str() == name)
            .map(|i| image.values()[i].as_ref())
            .ok_or_else(|| col_err(path, &format!("image.{name}"), "missing struct field"))
    };
    let img_bytes = downcast::<BinaryViewArray>(field("bytes")?, path, "image.bytes", "binary")?;
    let img_path = match field("path") {
        Ok(a) => Some(downcast::<Utf8ViewArray>(a, path, "image.path", "string")?),
        Err(_) => None,
    };
    let answer = downcast::<ListArray<i64>>(answer_a.as_ref(), path, "answer", "list<string>")?;
    let answer_v =
        downcast::<Utf8ViewArray>(answer.values().as_ref(), path, "answer", "list<string>")?;
    let seg = downcast::<ListArray<i64>>(seg_a.as_ref(), path, "segmentation", "list<float>")?;
    let bbox = downcast::<ListArray<i64>>(bbox_a.as_ref(), path, "bbox", "list<float>")?;
    let iscrowd: Option<Vec<i64>> = match &iscrowd_a {
        None => None,
        Some(a) => {
            let a = a.as_ref();
            let any = a.as_any();
            let v: Vec<i64> = if let Some(p) = any.downcast_ref::<PrimitiveArray<i8>>() {
                p.values().iter().map(|&x| x as i64).collect()
            } else if let Some(p) = any.downcast_ref::<PrimitiveArray<i32>>() {
                p.values().iter().map(|&x| x as i64).collect()
            } else if let Some(p) = any.downcast_ref::<PrimitiveArray<i64>>() {
                p.values().as_slice().to_vec()
            } else {
                return Err(col_err(
                    path,
                    "iscrowd",
                    format!("expected an integer, found {:?}", a.dtype()),
                ));
            };
            Some(v)
        }
    };

    let row_err = |row: usize, msg: String| SourceError::invalid(path, format!("row {row}: {msg}"));
    let mut rows = Vec::with_capacity(n);
    for row in 0..n {
        for (name, arr) in [
            ("question_id", qid as &dyn Array),
            ("file_name", fname),
            ("image", image),
            ("answer", answer),
            ("segmentation", seg),
            ("bbox", bbox),
        ] {
            if arr.is_null(row) {
                return Err(row_err(row, format!("{name} is null")));
            }
        }
        if img_bytes.is_null(row) {
            return Err(row_err(row, "image.bytes is null".into()));
        }
        let (a0, a1) = answer.offsets().start_end(row);
        let mut expressions = Vec::with_capacity(a1 - a0);
        for k in a0..a1 {
            if answer_v.is_null(k) {
                return Err(row_err(row, format!("answer[{}] is null", k - a0)));
            }
            expressions.push(answer_v.value(k).to_string());
        }
        let b = float_list(bbox, row, path, "bbox")?;
        let bbox_xywh: [f64; 4] = b
            .as_slice()
            .try_into()
            .map_err(|_| row_err(row, format!("bbox has {} values, not 4", b.len())))?;
        rows.push(LmmsRow {
            question_id: qid.value(row).to_string(),
            file_name: fname.value(row).to_string(),
            answer: expressions,
            bbox_xywh,
            iscrowd: iscrowd.as_ref().map_or(0, |v| v[row]),
            segmentation: float_list(seg, row, path, "segmentation")?,
            image_path: img_path.and_then(|p| p.get(row).map(str::to_string)),
            image_bytes: img_bytes.value(row).to_vec(),
        });
    }
    Ok(rows)
}

/// `COCO_train2014_000000580957_4.jpg` → (580957, `COCO_train2014_000000580957.jpg`).
/// A name without the `_N` suffix is kept as it is; the id is its last run of digits.
pub fn split_refer_file_name(file_name: &str) -> Option<(i64, String)> {
    let (stem, ext) = match file_name.rfind('.') {
        Some(i) => (&file_name[..i], &file_name[i..]),
        None => (file_name, ""),
    };
    let is_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some((base, suffix)) = stem.rsplit_once('_') {
        if is_digits(suffix) {
            let id_part = base.rsplit('_').next().unwrap_or(base);
            if is_digits(id_part) {
                return Some((id_part.parse().ok()?, format!("{base}{ext}")));
            }
        }
    }
    let digits: String = stem
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if digits.is_empty() {
        return None;
    }
    Some((digits.parse().ok()?, file_name.to_string()))
}

/// What happened to one row.
enum RowOutcome {
    Records(Vec<SourceItem>),
    Skipped(&'static str, u64),
}

fn image_header_size(bytes: &[u8]) -> Option<(u32, u32)> {
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

/// The records of one row; the row is consumed so that its image bytes move into the last
/// expression's record instead of being copied once more.
fn row_records(mut row: LmmsRow) -> RowOutcome {
    let n_expr = row.answer.len() as u64;
    if row.answer.is_empty() {
        return RowOutcome::Skipped("rows_skipped_no_answer", 0);
    }
    let Some((image_id, image_name)) = split_refer_file_name(&row.file_name) else {
        return RowOutcome::Skipped("rows_skipped_unparsable_file_name", n_expr);
    };
    let Some((width, height)) = image_header_size(&row.image_bytes) else {
        return RowOutcome::Skipped("rows_skipped_corrupt_image", n_expr);
    };
    if row.segmentation.len() < 6 || !row.segmentation.len().is_multiple_of(2) {
        return RowOutcome::Skipped("rows_skipped_invalid_segmentation", n_expr);
    }
    let Ok(rle) = Rle::from_polygon(&row.segmentation, height, width) else {
        return RowOutcome::Skipped("rows_skipped_invalid_segmentation", n_expr);
    };
    let patches = foreground_patches(&rle, PatchRule::RefcocoF32);
    if patches.is_empty() {
        return RowOutcome::Skipped("rows_skipped_no_patch", n_expr);
    }
    let (w, h) = (width as f64, height as f64);
    let [x, y, bw, bh] = row.bbox_xywh;
    let object = RecordObject {
        patches,
        bbox: [x / w, y / h, (x + bw) / w, (y + bh) / h],
        iscrowd: row.iscrowd,
        area: rle.area() as f64,
        area_is_int: false,
        rle: Some(RleJson {
            size: [height, width],
            counts: rle.to_string(),
        }),
        label: String::new(),
    };
    let mut image_bytes = Some(std::mem::take(&mut row.image_bytes));
    let n = row.answer.len();
    let items = row
        .answer
        .iter()
        .enumerate()
        .map(|(k, expr)| {
            let bytes = if k + 1 == n {
                image_bytes.take().unwrap_or_default()
            } else {
                image_bytes.clone().unwrap_or_default()
            };
            let mut object = object.clone();
            object.label = expr.clone();
            SourceItem {
                record: Record {
                    id: image_id,
                    image: image_name.clone(),
                    prompt: rec_prompt(expr),
                    answer_template: rec_answer(expr),
                    objects: vec![object],
                    task: Task::Refering,
                },
                image: ImageData::Bytes(bytes),
                width,
                height,
            }
        })
        .collect();
    RowOutcome::Records(items)
}

/// The annotation ids referred to in `filter.split` of a refer pickle.
fn refs_ann_ids(filter: &RefsSplitFilter) -> Result<HashSet<i64>, SourceError> {
    #[derive(serde::Deserialize)]
    struct PickleRef {
        ann_id: i64,
        split: String,
    }
    let bytes = std::fs::read(&filter.refs).map_err(|e| SourceError::io(&filter.refs, e))?;
    let refs: Vec<PickleRef> =
        serde_pickle::from_slice(&bytes, serde_pickle::DeOptions::new().decode_strings()).map_err(
            |source| SourceError::Pickle {
                path: filter.refs.clone(),
                source,
            },
        )?;
    let ids: HashSet<i64> = refs
        .iter()
        .filter(|r| r.split == filter.split)
        .map(|r| r.ann_id)
        .collect();
    if ids.is_empty() {
        let splits: BTreeSet<&str> = refs.iter().map(|r| r.split.as_str()).collect();
        return Err(SourceError::invalid(
            &filter.refs,
            format!(
                "no ref has split {:?} (splits here: {})",
                filter.split,
                splits.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    Ok(ids)
}

/// Reads a list of image ids: one integer per line, blank lines and `#` comments allowed.
fn read_id_list(path: &Path) -> Result<HashSet<i64>, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|e| SourceError::io(path, e))?;
    let mut ids = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let id = line.parse::<i64>().map_err(|_| {
            SourceError::invalid(path, format!("line {}: {line:?} is not an image id", i + 1))
        })?;
        ids.insert(id);
    }
    Ok(ids)
}

/// Reads the selected parquet files and builds the records (module docs). Counters: `files`,
/// `rows`, `records`, `objects`, `rows_filtered_not_in_refs_split`,
/// `rows_excluded_image_id`, and skips by reason (`rows_skipped_no_patch`,
/// `rows_skipped_no_answer`, `rows_skipped_invalid_segmentation`,
/// `rows_skipped_corrupt_image`, `rows_skipped_unparsable_file_name`) with
/// `expressions_skipped` counting the expressions of skipped rows.
pub fn process_lmms(opts: &LmmsOptions) -> Result<SourceOutput, SourceError> {
    let files = lmms_parquet_files(opts)?;
    let keep_ann = opts.keep_refs.as_ref().map(refs_ann_ids).transpose()?;
    let exclude = opts
        .exclude_image_ids
        .as_deref()
        .map(read_id_list)
        .transpose()?;
    let mut out = SourceOutput::default();
    for file in &files {
        let rows = read_lmms_file(file)?;
        out.count("files", 1);
        out.count("rows", rows.len() as u64);
        let rows: Vec<LmmsRow> = rows
            .into_iter()
            .filter(|r| {
                if let Some(keep) = &keep_ann {
                    let in_split = r
                        .question_id
                        .trim()
                        .parse::<i64>()
                        .is_ok_and(|id| keep.contains(&id));
                    if !in_split {
                        *out.counts
                            .entry("rows_filtered_not_in_refs_split".into())
                            .or_insert(0) += 1;
                        return false;
                    }
                }
                if let Some(ex) = &exclude {
                    if split_refer_file_name(&r.file_name).is_some_and(|(id, _)| ex.contains(&id)) {
                        *out.counts
                            .entry("rows_excluded_image_id".into())
                            .or_insert(0) += 1;
                        return false;
                    }
                }
                true
            })
            .collect();
        let outcomes: Vec<RowOutcome> = rows.into_par_iter().map(row_records).collect();
        for outcome in outcomes {
            match outcome {
                RowOutcome::Records(items) => {
                    out.count("records", items.len() as u64);
                    out.count("objects", items.len() as u64);
                    out.items.extend(items);
                }
                RowOutcome::Skipped(reason, n_expr) => {
                    out.count(reason, 1);
                    out.count("expressions_skipped", n_expr);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::split_refer_file_name;

    #[test]
    fn refer_file_names() {
        assert_eq!(
            split_refer_file_name("COCO_train2014_000000580957_4.jpg"),
            Some((580957, "COCO_train2014_000000580957.jpg".to_string()))
        );
        assert_eq!(
            split_refer_file_name("COCO_train2014_000000580957.jpg"),
            Some((580957, "COCO_train2014_000000580957.jpg".to_string()))
        );
        assert_eq!(
            split_refer_file_name("000000391895.jpg"),
            Some((391895, "000000391895.jpg".to_string()))
        );
        assert_eq!(split_refer_file_name("cat.jpg"), None);
    }
}
