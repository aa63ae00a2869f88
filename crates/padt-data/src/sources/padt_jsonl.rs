//! Import of PaDT's released JSONL files (`PaDT-MLLM/COCO`, `PaDT-MLLM/RefCOCO`,
//! `PaDT-MLLM/ReferringImageCaptioning`; the files are named `.json` but hold one record per
//! line) as they are, without reprocessing.
//!
//! Public API: [`PadtJsonlOptions`], [`process_padt_jsonl`].
//!
//! Each line is parsed with [`crate::pyjson::parse_jsonl_line`] (a malformed line is an
//! error naming the file, the line and the field). The image size comes from the image
//! file's header; records whose image file is missing or unreadable are counted skips.

use crate::pyjson::parse_jsonl_line;
use crate::record::{ImageData, SourceItem, SourceOutput};
use crate::sources::error::SourceError;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;

/// Options of the PaDT JSONL import.
#[derive(Debug, Clone)]
pub struct PadtJsonlOptions {
    /// The JSONL file (e.g. `instances_train2017.json` of `PaDT-MLLM/COCO`).
    pub jsonl: PathBuf,
    /// The image folder the records' `image` names are relative to.
    pub images_dir: PathBuf,
}

/// Reads every record of a PaDT JSONL file, in file order. Blank lines are ignored.
///
/// Counters: `lines_total`, `records`, `objects`, `records_skipped_image_missing`,
/// `records_skipped_image_unreadable`, `records_skipped_rle_size_mismatch` (an object's
/// `rle.size` differs from the image's `[height, width]`).
pub fn process_padt_jsonl(opts: &PadtJsonlOptions) -> Result<SourceOutput, SourceError> {
    let file = std::fs::File::open(&opts.jsonl).map_err(|e| SourceError::io(&opts.jsonl, e))?;
    let reader = std::io::BufReader::new(file);
    let mut out = SourceOutput::default();
    // Image name → (width, height), or the skip reason.
    let mut sizes: HashMap<String, Result<(u32, u32), &'static str>> = HashMap::new();
    for (i, line) in reader.lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|e| SourceError::io(&opts.jsonl, e))?;
        if line.trim().is_empty() {
            continue;
        }
        out.count("lines_total", 1);
        let record = parse_jsonl_line(&line, line_no).map_err(|source| SourceError::JsonlLine {
            path: opts.jsonl.clone(),
            source,
        })?;
        let path = opts.images_dir.join(&record.image);
        let size = *sizes
            .entry(record.image.clone())
            .or_insert_with(|| image_size(&path));
        let (width, height) = match size {
            Ok(s) => s,
            Err(reason) => {
                out.count(reason, 1);
                continue;
            }
        };
        let rle_mismatch = record
            .objects
            .iter()
            .filter_map(|o| o.rle.as_ref())
            .any(|r| r.size != [height, width]);
        if rle_mismatch {
            out.count("records_skipped_rle_size_mismatch", 1);
            continue;
        }
        out.count("records", 1);
        out.count("objects", record.objects.len() as u64);
        out.items.push(SourceItem {
            record,
            image: ImageData::File(path),
            width,
            height,
        });
    }
    Ok(out)
}

/// `(width, height)` from the image header, or the counter name of why not.
fn image_size(path: &std::path::Path) -> Result<(u32, u32), &'static str> {
    if !path.is_file() {
        return Err("records_skipped_image_missing");
    }
    image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|_| "records_skipped_image_unreadable")?
        .into_dimensions()
        .map_err(|_| "records_skipped_image_unreadable")
}
