//! refer-format RefCOCO / RefCOCO+ / RefCOCOg → PaDT referring records, as
//! `process_refcoco.py` writes them (padt-reference.md §5.4, fixtures README "RefCOCO family").
//!
//! Public API: [`RefcocoOptions`], [`SplitBy`], [`process_refcoco`].
//!
//! Input: a refer dataset folder with `instances.json` and `refs(<split_by>).p` (a Python-2
//! style pickle: a list of ref dicts). For every split (`unc`: train, val, testA, testB;
//! `umd`/`google`: train, val, test), the refs of the split select images
//! (`refer.getImgIds` = `list(set(image_ids))`, replayed in CPython set order), and for each
//! such image **all** refs of the image (any split, as `imgToRefs` returns them) are emitted:
//! one record per sentence (`sent`), with the mask's float32-path patches (`>`), the plain
//! `x / W` bbox, `iscrowd`, `area` and the re-encoded RLE. Refs whose mask keeps no patch are
//! skipped.

use crate::patches::{foreground_patches, PatchRule};
use crate::record::{ImageData, Record, RecordObject, SourceItem, SourceOutput, Task};
use crate::sources::coco::cpython_set::cpython_set_order;
use crate::sources::coco::{annotation_rle, padt_grid, rle_json, SegmentationField};
use crate::sources::error::SourceError;
use rayon::prelude::*;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The refer partition (`refs(<split_by>).p`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitBy {
    /// UNC partition (RefCOCO, RefCOCO+): train, val, testA, testB.
    Unc,
    /// UMD partition (RefCOCOg): train, val, test.
    Umd,
    /// Google partition: train, val, test.
    Google,
}

impl SplitBy {
    /// Parses `unc` / `umd` / `google`.
    pub fn parse(s: &str) -> Option<SplitBy> {
        match s {
            "unc" => Some(SplitBy::Unc),
            "umd" => Some(SplitBy::Umd),
            "google" => Some(SplitBy::Google),
            _ => None,
        }
    }

    /// The name in the pickle file name.
    pub fn as_str(self) -> &'static str {
        match self {
            SplitBy::Unc => "unc",
            SplitBy::Umd => "umd",
            SplitBy::Google => "google",
        }
    }

    /// The splits `process_refcoco.py` writes for this partition.
    pub fn splits(self) -> &'static [&'static str] {
        match self {
            SplitBy::Unc => &["train", "val", "testA", "testB"],
            SplitBy::Umd | SplitBy::Google => &["train", "val", "test"],
        }
    }
}

/// Options of the refer source.
#[derive(Debug, Clone)]
pub struct RefcocoOptions {
    /// Folder holding `instances.json` and `refs(<split_by>).p` (e.g. `refer/refcoco`).
    pub refer_dir: PathBuf,
    /// Which pickle / partition.
    pub split_by: SplitBy,
    /// The COCO train2014 image folder; records point at `images/<file_name>`.
    pub images_dir: PathBuf,
    /// Splits to produce, in order (default: [`SplitBy::splits`]).
    pub splits: Vec<String>,
}

impl RefcocoOptions {
    /// All splits of `split_by`.
    pub fn new(
        refer_dir: impl Into<PathBuf>,
        split_by: SplitBy,
        images_dir: impl Into<PathBuf>,
    ) -> Self {
        RefcocoOptions {
            refer_dir: refer_dir.into(),
            split_by,
            images_dir: images_dir.into(),
            splits: split_by.splits().iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// The REC prompt for a sentence.
pub fn rec_prompt(sentence: &str) -> String {
    format!("Please carefully check the image and detect the object this sentence describes: \"{sentence}\".")
}

/// The REC answer template for a sentence.
pub fn rec_answer(sentence: &str) -> String {
    format!("The \"{sentence}\" refers to <|Obj_0|> in this image.")
}

/// Runs `process_refcoco.py` for one refer dataset folder: one [`SourceOutput`] per split,
/// in [`RefcocoOptions::splits`] order. Records follow the reference order (images in CPython
/// set order, refs in pickle order, sentences in order).
///
/// Counters per split: `refs`, `refs_skipped_no_patch`, `sentences_skipped`, `records`,
/// `objects`, and skips PaDT would crash on: `refs_skipped_unknown_annotation`,
/// `refs_skipped_unknown_image`, `refs_skipped_invalid_segmentation`,
/// `refs_skipped_image_side_lt_14`, `records_skipped_image_missing`.
pub fn process_refcoco(opts: &RefcocoOptions) -> Result<Vec<(String, SourceOutput)>, SourceError> {
    for split in &opts.splits {
        if !matches!(
            split.as_str(),
            "train" | "val" | "test" | "testA" | "testB" | "testC" | "testAB" | "testBC" | "testAC"
        ) {
            return Err(SourceError::Option(format!(
                "unknown refer split {split:?} (expected train, val, test, testA, testB, testC, testAB, testBC or testAC)"
            )));
        }
    }
    let refs_path = opts
        .refer_dir
        .join(format!("refs({}).p", opts.split_by.as_str()));
    let refs = load_refs(&refs_path)?;
    let instances_path = opts.refer_dir.join("instances.json");
    let instances = load_instances(&instances_path)?;
    let index = ReferIndex::new(&refs, &instances);

    // Each (ref, mask outcome) is the same for every split: compute them once, in parallel.
    let outcomes: Vec<RefOutcome> = refs.par_iter().map(|r| ref_object(r, &index)).collect();

    let mut result = Vec::with_capacity(opts.splits.len());
    for split in &opts.splits {
        let mut out = SourceOutput::default();
        let split_image_ids: Vec<i64> = refs
            .iter()
            .filter(|r| split_matches(split, &r.split))
            .map(|r| index.refs_by_id[&r.ref_id].image_id)
            .collect();
        for image_id in cpython_set_order(&split_image_ids) {
            let Some(img) = index.images.get(&image_id) else {
                let n = index.img_to_refs.get(&image_id).map_or(0, Vec::len);
                out.count("refs_skipped_unknown_image", n as u64);
                continue;
            };
            let image_path = opts.images_dir.join(&img.file_name);
            let image_exists = image_path.is_file();
            for &ref_idx in index
                .img_to_refs
                .get(&image_id)
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                let r = &refs[ref_idx];
                out.count("refs", 1);
                let object = match &outcomes[ref_idx] {
                    RefOutcome::Kept(object) => object,
                    RefOutcome::NoPatch => {
                        out.count("refs_skipped_no_patch", 1);
                        out.count("sentences_skipped", r.sentences.len() as u64);
                        continue;
                    }
                    RefOutcome::Skipped(reason) => {
                        out.count(reason, 1);
                        out.count("sentences_skipped", r.sentences.len() as u64);
                        continue;
                    }
                };
                for sentence in &r.sentences {
                    if !image_exists {
                        out.count("records_skipped_image_missing", 1);
                        continue;
                    }
                    let mut object = object.clone();
                    object.label = sentence.sent.clone();
                    out.count("records", 1);
                    out.count("objects", 1);
                    out.items.push(SourceItem {
                        record: Record {
                            id: img.id,
                            image: img.file_name.clone(),
                            prompt: rec_prompt(&sentence.sent),
                            answer_template: rec_answer(&sentence.sent),
                            objects: vec![object],
                            task: Task::Refering,
                        },
                        image: ImageData::File(image_path.clone()),
                        width: img.width,
                        height: img.height,
                    });
                }
            }
        }
        result.push((split.clone(), out));
    }
    Ok(result)
}

/// `refer.getRefIds(split=...)`'s split test.
fn split_matches(split: &str, ref_split: &str) -> bool {
    match split {
        "testA" | "testB" | "testC" => ref_split.contains(&split[split.len() - 1..]),
        "test" => ref_split.contains("test"),
        _ => ref_split == split,
    }
}

enum RefOutcome {
    /// The object (label filled per sentence).
    Kept(RecordObject),
    NoPatch,
    /// Skipped, with the counter name.
    Skipped(&'static str),
}

fn ref_object(r: &PickleRef, index: &ReferIndex) -> RefOutcome {
    // `refToAnn[ref_id]` is the annotation of the last ref with this id.
    let ann_id = index.refs_by_id[&r.ref_id].ann_id;
    let Some(ann) = index.annotations.get(&ann_id) else {
        return RefOutcome::Skipped("refs_skipped_unknown_annotation");
    };
    let Some(img) = index.images.get(&r.image_id) else {
        return RefOutcome::Skipped("refs_skipped_unknown_image");
    };
    if padt_grid(img.height, img.width).is_none() {
        return RefOutcome::Skipped("refs_skipped_image_side_lt_14");
    }
    // `process_refcoco.py` only handles polygon lists (an RLE dict raises there); RLEs are
    // decoded as everywhere else.
    let Some(Ok(rle)) = ann
        .segmentation
        .as_ref()
        .map(|seg| annotation_rle(seg, img.height, img.width))
    else {
        return RefOutcome::Skipped("refs_skipped_invalid_segmentation");
    };
    let patches = foreground_patches(&rle, PatchRule::RefcocoF32);
    if patches.is_empty() {
        return RefOutcome::NoPatch;
    }
    let (w, h) = (img.width as f64, img.height as f64);
    let b = ann.bbox;
    RefOutcome::Kept(RecordObject {
        patches,
        bbox: [b[0] / w, b[1] / h, (b[0] + b[2]) / w, (b[1] + b[3]) / h],
        iscrowd: ann.iscrowd,
        area: ann.area.as_f64().unwrap_or(f64::NAN),
        area_is_int: !ann.area.is_f64(),
        rle: Some(rle_json(&rle)),
        label: String::new(),
    })
}

/// One sentence of a ref (only `sent` is used).
#[derive(Debug, Clone, Deserialize)]
struct PickleSentence {
    sent: String,
}

/// One ref of the pickle (other keys are ignored).
#[derive(Debug, Clone, Deserialize)]
struct PickleRef {
    ref_id: i64,
    ann_id: i64,
    image_id: i64,
    split: String,
    sentences: Vec<PickleSentence>,
}

fn load_refs(path: &Path) -> Result<Vec<PickleRef>, SourceError> {
    let bytes = std::fs::read(path).map_err(|e| SourceError::io(path, e))?;
    serde_pickle::from_slice(&bytes, serde_pickle::DeOptions::new().decode_strings()).map_err(
        |source| SourceError::Pickle {
            path: path.to_path_buf(),
            source,
        },
    )
}

#[derive(Debug, Clone, Deserialize)]
struct ReferImage {
    id: i64,
    file_name: String,
    width: u32,
    height: u32,
}

#[derive(Debug, Clone, Deserialize)]
struct ReferAnnotation {
    id: i64,
    #[serde(default)]
    segmentation: Option<SegmentationField>,
    area: serde_json::Number,
    bbox: [f64; 4],
    #[serde(default)]
    iscrowd: i64,
}

#[derive(Deserialize)]
struct ReferInstances {
    images: Vec<ReferImage>,
    annotations: Vec<ReferAnnotation>,
}

fn load_instances(path: &Path) -> Result<ReferInstances, SourceError> {
    let bytes = std::fs::read(path).map_err(|e| SourceError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| SourceError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// refer's `createIndex` (dicts keep the last value of a repeated id).
struct ReferIndex<'a> {
    images: HashMap<i64, &'a ReferImage>,
    annotations: HashMap<i64, &'a ReferAnnotation>,
    refs_by_id: HashMap<i64, &'a PickleRef>,
    /// Image id → indices into the refs list, in pickle order.
    img_to_refs: HashMap<i64, Vec<usize>>,
}

impl<'a> ReferIndex<'a> {
    fn new(refs: &'a [PickleRef], instances: &'a ReferInstances) -> Self {
        let images = instances.images.iter().map(|i| (i.id, i)).collect();
        let annotations = instances.annotations.iter().map(|a| (a.id, a)).collect();
        let mut refs_by_id = HashMap::new();
        let mut img_to_refs: HashMap<i64, Vec<usize>> = HashMap::new();
        for (i, r) in refs.iter().enumerate() {
            refs_by_id.insert(r.ref_id, r);
            img_to_refs.entry(r.image_id).or_default().push(i);
        }
        ReferIndex {
            images,
            annotations,
            refs_by_id,
            img_to_refs,
        }
    }
}
