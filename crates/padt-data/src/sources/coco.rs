//! COCO instances JSON → PaDT open-vocabulary detection records, as `process_coco.py` writes
//! them (padt-reference.md §5.3, `tests/fixtures/data/README.md` "COCO").
//!
//! Public API: [`CocoOptions`], [`CocoSplit`], [`process_coco`].
//!
//! Per image, in the JSON image order:
//! - images whose longer side exceeds `max_side` (1288) are skipped before any random draw;
//! - train only: the category order (CPython `set` order of the category ids) is shuffled in
//!   place, cumulatively across images, with numpy's legacy MT19937 (`np.random.seed(seed)`),
//!   then one `rand()` decides whether the first `int(drop_rate * min(n, 100))` shuffled
//!   categories leave the prompt. Categories present in the image always stay;
//! - a category with more than `max_per_class` (50) annotations in the image leaves the prompt
//!   and the answer (counted before any object is dropped);
//! - every annotation of a kept category becomes an object (crowd ones too) when its mask keeps
//!   at least one 28x28 patch (uint8 path, `>=`); an annotation without `segmentation` is a
//!   filled box (`round()` ties to even, numpy slice rules) and gets no `rle`;
//! - objects are numbered across categories in prompt order, within a category in JSON order;
//! - `bbox` = `x * (rw / W) / rw` with `rw = round(W / 28) * 28` (PaDT's formula, which differs
//!   from `x / W` in the last bit for many values).
//!
//! The random draws run sequentially first; masks, patches and RLEs then run per image in
//! parallel (rayon), and the records keep the JSON image order.

pub mod cpython_set;
pub mod numpy_rng;

use crate::patches::{foreground_patches, grid_for, PatchRule};
use crate::record::{ImageData, Record, RecordObject, RleJson, SourceItem, SourceOutput, Task};
use crate::sources::error::SourceError;
use numpy_rng::LegacyRandomState;
use padt_core::segmentation::polygons_to_rle;
use padt_core::{MaskError, Rle, Segmentation};
use rayon::prelude::*;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The seed the fixtures were made with (`np.random.seed(20251001)` before the train run).
pub const DEFAULT_SEED: u32 = 20_251_001;

/// Which `process_coco.py` call to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CocoSplit {
    /// `is_train=True`: shuffled category order and the random prompt drop.
    Train,
    /// `is_train=False`: all categories in id (set) order.
    Val,
}

impl CocoSplit {
    /// Parses `train` / `val`.
    pub fn parse(s: &str) -> Option<CocoSplit> {
        match s {
            "train" => Some(CocoSplit::Train),
            "val" => Some(CocoSplit::Val),
            _ => None,
        }
    }
}

/// Options of the COCO source (the `__main__` call of `process_coco.py` by default).
#[derive(Debug, Clone)]
pub struct CocoOptions {
    /// `instances_{train,val}2017.json`.
    pub annotations: PathBuf,
    /// The image folder (`train2017/` or `val2017/`); records point at `images/<file_name>`.
    pub images_dir: PathBuf,
    /// Train (random prompts) or val (fixed prompts).
    pub split: CocoSplit,
    /// Seed of numpy's legacy global generator for the train prompts.
    pub seed: u32,
    /// `max_bboxes_per_class_per_image` (50).
    pub max_per_class: usize,
    /// Images with a longer side above this are skipped (1288).
    pub max_side: u32,
    /// Probability of dropping the first categories of the shuffled prompt list (0.5).
    pub drop_rate: f64,
    /// `max_class_in_prompt` (100).
    pub max_class_in_prompt: usize,
}

impl CocoOptions {
    /// PaDT's settings for `split`, with [`DEFAULT_SEED`].
    pub fn new(
        annotations: impl Into<PathBuf>,
        images_dir: impl Into<PathBuf>,
        split: CocoSplit,
    ) -> Self {
        CocoOptions {
            annotations: annotations.into(),
            images_dir: images_dir.into(),
            split,
            seed: DEFAULT_SEED,
            max_per_class: 50,
            max_side: 1288,
            drop_rate: 0.5,
            max_class_in_prompt: 100,
        }
    }
}

/// The no-object answer (`process_coco.py` adds the final period).
pub const NO_OBJECTS_ANSWER: &str = "No objects from the list are present in the image.";

/// The OVD prompt for a list of category names (`json.dumps` of the list).
pub fn ovd_prompt(names: &[&str]) -> String {
    let mut s =
        String::from("Please carefully check the image and detect the following objects: [");
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        crate::pyjson::write_py_str(&mut s, name);
    }
    s.push_str("].");
    s
}

/// The OVD answer template for `(category name, object count)` groups in prompt order
/// (groups with zero objects are not passed).
pub fn ovd_answer(groups: &[(&str, usize)]) -> String {
    if groups.is_empty() {
        return NO_OBJECTS_ANSWER.to_string();
    }
    let mut s = if groups.len() > 1 {
        String::from("In this image, there are ")
    } else if groups[0].1 == 1 {
        String::from("There is ")
    } else {
        String::from("There are ")
    };
    let mut k = 0usize;
    for (g, (name, n)) in groups.iter().enumerate() {
        s.push_str(&format!("{n} \"{name}\" ("));
        for i in 0..*n {
            s.push_str(&format!("<|Obj_{k}|>"));
            k += 1;
            s.push_str(if i + 1 < *n { ", " } else { ")" });
        }
        if g + 1 < groups.len() {
            s.push_str(", ");
        }
    }
    s.push_str(if groups.len() == 1 {
        " in this image."
    } else {
        "."
    });
    s
}

/// Runs `process_coco.py`'s `filter_coco_annotations_with_api` on one instances file.
///
/// Counters (`SourceOutput::counts`): `images_total`, `annotations_total`, `records`,
/// `records_without_objects`, `objects_kept`, `objects_dropped_no_patch`,
/// `objects_without_segmentation_box_filled`, `images_skipped_max_side_gt_<max_side>`,
/// `annotations_in_skipped_images`, `categories_removed_gt_<max_per_class>_instances`,
/// `objects_dropped_category_gt_<max_per_class>`, and skips PaDT would crash on:
/// `annotations_skipped_unknown_image`, `annotations_skipped_unknown_category`,
/// `objects_skipped_invalid_segmentation`, `images_skipped_side_lt_14`,
/// `records_skipped_image_missing`.
pub fn process_coco(opts: &CocoOptions) -> Result<SourceOutput, SourceError> {
    if !(0.0..=1.0).contains(&opts.drop_rate) {
        return Err(SourceError::Option(format!(
            "drop rate {} is not in [0, 1]",
            opts.drop_rate
        )));
    }
    let dataset = CocoDataset::load(&opts.annotations, true)?;
    let mut out = SourceOutput::default();
    dataset.count_basics(&mut out);
    let CocoDataset {
        images,
        mut annotations,
        categories,
        img_to_anns,
        ..
    } = dataset;

    // Category order: `np.array(list(set(coco.getCatIds())))`.
    let cat_ids: Vec<i64> = categories.iter().map(|c| c.id).collect();
    let mut category_index = cpython_set::cpython_set_order(&cat_ids);
    let cat_names: HashMap<i64, &str> =
        categories.iter().map(|c| (c.id, c.name.as_str())).collect();
    let mut rng = match opts.split {
        CocoSplit::Train => Some(LegacyRandomState::new(opts.seed)),
        CocoSplit::Val => None,
    };

    // Sequential pass: skips, random draws, prompt and answer categories. Each planned object
    // takes its annotation's segmentation along, so that an image's polygons are freed as soon
    // as its record is built (bench/preprocess.md).
    let mut plans = Vec::new();
    for (img_idx, img) in images.iter().enumerate() {
        let anns = &img_to_anns[img_idx];
        if img.width.max(img.height) > opts.max_side {
            out.count(&format!("images_skipped_max_side_gt_{}", opts.max_side), 1);
            out.count("annotations_in_skipped_images", anns.len() as u64);
            continue;
        }
        let mut counts: Vec<(i64, usize)> = Vec::new();
        for &a in anns {
            let cat = annotations[a].category_id;
            match counts.iter_mut().find(|(c, _)| *c == cat) {
                Some((_, n)) => *n += 1,
                None => counts.push((cat, 1)),
            }
        }
        let mut removed: HashSet<i64> = HashSet::new();
        if let Some(rng) = rng.as_mut() {
            rng.shuffle(&mut category_index);
            removed.extend(category_index.iter().skip(opts.max_class_in_prompt));
            if rng.random_sample() < opts.drop_rate {
                let n_drop = (opts.drop_rate
                    * category_index.len().min(opts.max_class_in_prompt) as f64)
                    as usize;
                removed.extend(&category_index[..n_drop]);
            }
        }
        let position: HashMap<i64, usize> = category_index
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, i))
            .collect();
        counts.sort_by_key(|(c, _)| position[c]);
        let mut answer_categories = Vec::with_capacity(counts.len());
        for &(cat, n) in &counts {
            removed.remove(&cat);
            if n > opts.max_per_class {
                removed.insert(cat);
                out.count(
                    &format!("categories_removed_gt_{}_instances", opts.max_per_class),
                    1,
                );
                out.count(
                    &format!("objects_dropped_category_gt_{}", opts.max_per_class),
                    n as u64,
                );
                continue;
            }
            let mut cat_anns = Vec::with_capacity(n);
            for &a in anns {
                if annotations[a].category_id == cat {
                    cat_anns.push(PlannedObject {
                        annotation: a,
                        segmentation: annotations[a].segmentation.take(),
                    });
                }
            }
            answer_categories.push((cat, cat_anns));
        }
        let prompt_names: Vec<&str> = category_index
            .iter()
            .filter(|c| !removed.contains(c))
            .map(|c| cat_names[c])
            .collect();
        let mut prompt = ovd_prompt(&prompt_names);
        prompt.shrink_to_fit();
        plans.push(ImagePlan {
            img_idx,
            prompt,
            answer_categories,
        });
    }

    // Parallel pass: masks, patches, RLEs and the record of each image, in image order. Each
    // plan (with its segmentations) is dropped once its record is built.
    let built: Vec<(Option<SourceItem>, ImageCounts)> = plans
        .into_par_iter()
        .map(|plan| build_record(plan, &images, &annotations, &cat_names, &opts.images_dir))
        .collect();
    for (item, counts) in built {
        counts.add_to(&mut out);
        out.items.extend(item);
    }
    Ok(out)
}

struct ImagePlan {
    img_idx: usize,
    prompt: String,
    /// Categories of the answer in prompt order, with their annotations (JSON order).
    answer_categories: Vec<(i64, Vec<PlannedObject>)>,
}

/// An annotation of a planned image, with the segmentation taken out of it.
struct PlannedObject {
    /// Index into the annotations.
    annotation: usize,
    segmentation: Option<SegmentationField>,
}

/// The counters one image's record adds (all start at zero).
#[derive(Default)]
struct ImageCounts {
    images_skipped_side_lt_14: u64,
    objects_kept: u64,
    objects_without_segmentation_box_filled: u64,
    objects_dropped_no_patch: u64,
    objects_skipped_invalid_segmentation: u64,
    records_skipped_image_missing: u64,
    records_without_objects: u64,
    records: u64,
}

impl ImageCounts {
    /// Adds the non-zero counters (a counter that never fired stays absent, as it would with
    /// `SourceOutput::count` per event).
    fn add_to(&self, out: &mut SourceOutput) {
        for (reason, n) in [
            ("images_skipped_side_lt_14", self.images_skipped_side_lt_14),
            ("objects_kept", self.objects_kept),
            (
                "objects_without_segmentation_box_filled",
                self.objects_without_segmentation_box_filled,
            ),
            ("objects_dropped_no_patch", self.objects_dropped_no_patch),
            (
                "objects_skipped_invalid_segmentation",
                self.objects_skipped_invalid_segmentation,
            ),
            (
                "records_skipped_image_missing",
                self.records_skipped_image_missing,
            ),
            ("records_without_objects", self.records_without_objects),
            ("records", self.records),
        ] {
            if n > 0 {
                out.count(reason, n);
            }
        }
    }
}

/// The record of one planned image (or `None` when it is skipped), and its counters.
fn build_record(
    plan: ImagePlan,
    images: &[CocoImage],
    annotations: &[CocoAnnotation],
    cat_names: &HashMap<i64, &str>,
    images_dir: &Path,
) -> (Option<SourceItem>, ImageCounts) {
    let mut counts = ImageCounts::default();
    let img = &images[plan.img_idx];
    if padt_grid(img.height, img.width).is_none() {
        counts.images_skipped_side_lt_14 = 1;
        return (None, counts);
    }
    let mut objects: Vec<RecordObject> = Vec::new();
    let mut groups: Vec<(&str, usize)> = Vec::new();
    for (cat, anns) in &plan.answer_categories {
        let name = cat_names[cat];
        let mut kept = 0usize;
        for planned in anns {
            let ann = &annotations[planned.annotation];
            match build_object(ann, planned.segmentation.as_ref(), img) {
                ObjectOutcome::Kept {
                    mut object,
                    box_filled,
                } => {
                    object.label = name.to_string();
                    objects.push(object);
                    kept += 1;
                    counts.objects_kept += 1;
                    if box_filled {
                        counts.objects_without_segmentation_box_filled += 1;
                    }
                }
                ObjectOutcome::NoPatch => counts.objects_dropped_no_patch += 1,
                ObjectOutcome::Invalid => counts.objects_skipped_invalid_segmentation += 1,
            }
        }
        if kept > 0 {
            groups.push((name, kept));
        }
    }
    let answer_template = ovd_answer(&groups);
    drop(plan.answer_categories);
    let image_path = images_dir.join(&img.file_name);
    if !image_path.is_file() {
        counts.records_skipped_image_missing = 1;
        return (None, counts);
    }
    if objects.is_empty() {
        counts.records_without_objects = 1;
    }
    counts.records = 1;
    objects.shrink_to_fit();
    let item = SourceItem {
        record: Record {
            id: img.id,
            image: img.file_name.clone(),
            prompt: plan.prompt,
            answer_template,
            objects,
            task: Task::Ovd,
        },
        image: ImageData::File(image_path),
        width: img.width,
        height: img.height,
    };
    (Some(item), counts)
}

enum ObjectOutcome {
    Kept {
        object: RecordObject,
        box_filled: bool,
    },
    NoPatch,
    Invalid,
}

/// The object of `ann` (whose segmentation is passed separately).
fn build_object(
    ann: &CocoAnnotation,
    segmentation: Option<&SegmentationField>,
    img: &CocoImage,
) -> ObjectOutcome {
    let Some((gh, gw)) = padt_grid(img.height, img.width) else {
        return ObjectOutcome::NoPatch;
    };
    let (mask, keep_rle) = match segmentation {
        Some(seg) => match annotation_rle(seg, img.height, img.width) {
            Ok(rle) => (rle, true),
            Err(_) => return ObjectOutcome::Invalid,
        },
        None => {
            let dense = filled_box_mask(ann.bbox, img.height, img.width);
            match Rle::encode_row_major(&dense, img.height, img.width) {
                Ok(rle) => (rle, false),
                Err(_) => return ObjectOutcome::Invalid,
            }
        }
    };
    let mut patches = foreground_patches(&mask, PatchRule::CocoU8);
    if patches.is_empty() {
        return ObjectOutcome::NoPatch;
    }
    // Records stay in memory until their shard is written: no spare capacity.
    patches.shrink_to_fit();
    ObjectOutcome::Kept {
        object: RecordObject {
            patches,
            bbox: padt_bbox(ann.bbox, img.width, img.height, gw, gh),
            iscrowd: ann.iscrowd,
            area: ann.area.as_f64().unwrap_or(f64::NAN),
            area_is_int: !ann.area.is_f64(),
            rle: keep_rle.then(|| rle_json(&mask)),
            label: String::new(),
        },
        box_filled: !keep_rle,
    }
}

/// The PaDT patch grid `(round(H/28), round(W/28))` (ties to even); `None` when a side is
/// 14 px or less (PaDT's `cv2.resize` to a zero size would raise).
pub fn padt_grid(height: u32, width: u32) -> Option<(u32, u32)> {
    let (gh, gw) = grid_for(width, height);
    (gh > 0 && gw > 0).then_some((gh, gw))
}

/// `process_coco.py` / `process_ric.py` bbox: `[x, y, x+w, y+h]` each scaled as
/// `v * (r / S) / r` with `r` the resized side (`28 * grid`) and `S` the original side.
pub fn padt_bbox(b: [f64; 4], width: u32, height: u32, gw: u32, gh: u32) -> [f64; 4] {
    let (w, h) = (width as f64, height as f64);
    let (rw, rh) = ((gw * 28) as f64, (gh * 28) as f64);
    [
        b[0] * (rw / w) / rw,
        b[1] * (rh / h) / rh,
        (b[0] + b[2]) * (rw / w) / rw,
        (b[1] + b[3]) * (rh / h) / rh,
    ]
}

/// `annToRLE` of a COCO segmentation at `height x width`, in the canonical form
/// `cocomask.encode(annToMask(ann))` has (no empty runs except the leading 0-run).
pub(crate) fn annotation_rle(
    segmentation: &SegmentationField,
    height: u32,
    width: u32,
) -> Result<Rle, MaskError> {
    let rle = match segmentation {
        SegmentationField::Polygons(polys) => polygons_to_rle(polys, height, width)?,
        SegmentationField::Other(value) => Segmentation::from_json(value)?.to_rle(height, width)?,
        SegmentationField::Invalid(what) => return Err(MaskError::Unsupported(what.clone())),
    };
    Ok(canonical_rle(rle))
}

/// A COCO `segmentation` as read from the file. Polygon lists (nearly every annotation) are
/// stored as numbers, not as `serde_json::Value`s (a tenth of the memory on COCO train); RLE
/// dicts keep their JSON; a value of any other shape is kept as an error message, so that one
/// bad annotation is a counted skip rather than a file error.
#[derive(Debug, Clone)]
pub(crate) enum SegmentationField {
    /// `[[x0, y0, x1, y1, ...], ...]`.
    Polygons(Vec<Vec<f64>>),
    /// An RLE dict (or anything else `padt_core::Segmentation::from_json` judges).
    Other(serde_json::Value),
    /// Not a segmentation pycocotools accepts.
    Invalid(String),
}

impl<'de> Deserialize<'de> for SegmentationField {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl<'de> serde::de::Visitor<'de> for FieldVisitor {
            type Value = SegmentationField;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a COCO segmentation (list of polygons or RLE dict)")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut polys = Vec::new();
                let mut invalid = None;
                // Straight into numbers, one polygon at a time.
                while let Some(PolygonField(coords)) = seq.next_element()? {
                    match coords {
                        Some(coords) => polys.push(coords),
                        None => {
                            invalid.get_or_insert_with(|| {
                                format!("polygon #{} is not a list of numbers", polys.len())
                            });
                        }
                    }
                }
                polys.shrink_to_fit();
                Ok(match invalid {
                    Some(what) => SegmentationField::Invalid(what),
                    None => SegmentationField::Polygons(polys),
                })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let value = serde_json::Value::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(SegmentationField::Other(value))
            }

            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(SegmentationField::Invalid(
                    "segmentation is a boolean".into(),
                ))
            }

            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(SegmentationField::Invalid(
                    "segmentation is a number".into(),
                ))
            }

            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(SegmentationField::Invalid(
                    "segmentation is a number".into(),
                ))
            }

            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(SegmentationField::Invalid(
                    "segmentation is a number".into(),
                ))
            }

            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(SegmentationField::Invalid(
                    "segmentation is a string".into(),
                ))
            }
        }
        deserializer.deserialize_any(FieldVisitor)
    }
}

/// One polygon of a segmentation list: its coordinates, or `None` when the value is not a list
/// of numbers (read without building a `serde_json::Value`).
struct PolygonField(Option<Vec<f64>>);

impl<'de> Deserialize<'de> for PolygonField {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PolygonVisitor;
        impl<'de> serde::de::Visitor<'de> for PolygonVisitor {
            type Value = PolygonField;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a polygon (list of numbers)")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut coords = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                let mut all_numbers = true;
                while let Some(value) = seq.next_element::<JsonNumber>()? {
                    match value.0 {
                        Some(v) if all_numbers => coords.push(v),
                        Some(_) => {}
                        None => all_numbers = false,
                    }
                }
                coords.shrink_to_fit();
                Ok(PolygonField(all_numbers.then_some(coords)))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(PolygonField(None))
            }

            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(PolygonField(None))
            }

            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(PolygonField(None))
            }

            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(PolygonField(None))
            }

            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(PolygonField(None))
            }

            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(PolygonField(None))
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(PolygonField(None))
            }
        }
        deserializer.deserialize_any(PolygonVisitor)
    }
}

/// A JSON value that is a number (as `serde_json::Value::as_f64` reads it), or `None` for
/// any other value (skipped).
struct JsonNumber(Option<f64>);

impl<'de> Deserialize<'de> for JsonNumber {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NumberVisitor;
        impl<'de> serde::de::Visitor<'de> for NumberVisitor {
            type Value = JsonNumber;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number")
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(JsonNumber(Some(v as f64)))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(JsonNumber(Some(v as f64)))
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(JsonNumber(Some(v)))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(JsonNumber(None))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(JsonNumber(None))
            }

            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(JsonNumber(None))
            }

            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(JsonNumber(None))
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(JsonNumber(None))
            }
        }
        deserializer.deserialize_any(NumberVisitor)
    }
}

/// `encode(decode(rle))` without the dense mask: drops empty runs (uncompressed crowd RLEs and
/// unions may hold them) by joining their neighbours. An empty mask keeps its single count.
pub(crate) fn canonical_rle(rle: Rle) -> Rle {
    if rle.counts.iter().skip(1).all(|&c| c != 0) {
        return rle;
    }
    let mut counts: Vec<u32> = Vec::with_capacity(rle.counts.len());
    for (i, &c) in rle.counts.iter().enumerate() {
        let is_one = i % 2 == 1;
        if c == 0 && i > 0 {
            continue;
        }
        // `counts` alternates 0-runs and 1-runs, starting with a 0-run.
        let last_is_one = counts.len().is_multiple_of(2);
        if !counts.is_empty() && last_is_one == is_one {
            *counts.last_mut().expect("non-empty") += c;
        } else {
            counts.push(c);
        }
    }
    Rle {
        height: rle.height,
        width: rle.width,
        counts,
    }
}

/// The `rle` field of a record object.
pub(crate) fn rle_json(rle: &Rle) -> RleJson {
    let mut counts = rle.to_string();
    counts.shrink_to_fit();
    RleJson {
        size: rle.size(),
        counts,
    }
}

/// `mask[round(y1):round(y1+h), round(x1):round(x1+w)] = 1` on a zero `height x width` mask,
/// with Python's `round` (ties to even) and numpy's slice rules (negative bounds count from
/// the end, bounds are clamped).
pub fn filled_box_mask(bbox: [f64; 4], height: u32, width: u32) -> Vec<u8> {
    let [x, y, w, h] = bbox;
    let (x0, x1) = numpy_slice(x.round_ties_even(), (x + w).round_ties_even(), width as i64);
    let (y0, y1) = numpy_slice(
        y.round_ties_even(),
        (y + h).round_ties_even(),
        height as i64,
    );
    let mut mask = vec![0u8; height as usize * width as usize];
    for row in y0..y1 {
        let start = row * width as usize;
        mask[start + x0..start + x1].fill(1);
    }
    mask
}

/// numpy's `a[start:stop]` bounds for an axis of length `len` (step 1).
fn numpy_slice(start: f64, stop: f64, len: i64) -> (usize, usize) {
    let norm = |v: f64| {
        let v = if v.is_finite() {
            v.clamp(-9e15, 9e15) as i64
        } else if v > 0.0 {
            len
        } else {
            0
        };
        let v = if v < 0 { v + len } else { v };
        v.clamp(0, len) as usize
    };
    let (a, b) = (norm(start), norm(stop));
    (a, b.max(a))
}

/// A COCO image entry (the fields PaDT reads).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CocoImage {
    pub id: i64,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
    /// RIC only: captions with `<box_id: N/>` markup.
    #[serde(default)]
    pub captions: Option<Vec<String>>,
}

/// A COCO annotation (the fields PaDT reads). `segmentation: null` counts as absent.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CocoAnnotation {
    pub id: i64,
    pub image_id: i64,
    pub category_id: i64,
    #[serde(default)]
    pub segmentation: Option<SegmentationField>,
    pub area: serde_json::Number,
    pub bbox: [f64; 4],
    pub iscrowd: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CocoCategory {
    pub id: i64,
    pub name: String,
}

#[derive(Deserialize)]
struct CocoFile {
    #[serde(default)]
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnnotation>,
    #[serde(default)]
    categories: Vec<CocoCategory>,
}

/// A loaded instances file indexed like pycocotools' `COCO` (dict semantics: a repeated id
/// keeps its first position and its last value).
pub(crate) struct CocoDataset {
    pub images: Vec<CocoImage>,
    /// Annotations whose image and category exist (JSON order).
    pub annotations: Vec<CocoAnnotation>,
    pub categories: Vec<CocoCategory>,
    /// Per image (index into `images`): its annotation indices in JSON order.
    pub img_to_anns: Vec<Vec<usize>>,
    /// Annotation id → index into `annotations`.
    pub ann_index: HashMap<i64, usize>,
    annotations_total: usize,
    skipped_unknown_image: usize,
    skipped_unknown_category: usize,
}

impl CocoDataset {
    /// Reads and indexes `path`. Malformed JSON is an error naming the file and position.
    /// Annotations on unknown images are dropped (counted); with `require_category` also
    /// those of unknown categories (the OVD prompt needs the name).
    pub fn load(path: &Path, require_category: bool) -> Result<CocoDataset, SourceError> {
        let bytes = std::fs::read(path).map_err(|e| SourceError::io(path, e))?;
        let file: CocoFile =
            serde_json::from_slice(&bytes).map_err(|source| SourceError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        // The text is not needed past parsing: free it before indexing.
        drop(bytes);
        Ok(Self::index(file, require_category))
    }

    fn index(file: CocoFile, require_category: bool) -> CocoDataset {
        let mut images: Vec<CocoImage> = Vec::with_capacity(file.images.len());
        let mut img_index: HashMap<i64, usize> = HashMap::with_capacity(file.images.len());
        for img in file.images {
            match img_index.get(&img.id) {
                Some(&i) => images[i] = img,
                None => {
                    img_index.insert(img.id, images.len());
                    images.push(img);
                }
            }
        }
        let mut categories: Vec<CocoCategory> = Vec::with_capacity(file.categories.len());
        let mut cat_index: HashMap<i64, usize> = HashMap::new();
        for cat in file.categories {
            match cat_index.get(&cat.id) {
                Some(&i) => categories[i] = cat,
                None => {
                    cat_index.insert(cat.id, categories.len());
                    categories.push(cat);
                }
            }
        }
        let annotations_total = file.annotations.len();
        let mut annotations = Vec::with_capacity(annotations_total);
        let mut img_to_anns = vec![Vec::new(); images.len()];
        let mut ann_index = HashMap::with_capacity(annotations_total);
        let (mut skipped_unknown_image, mut skipped_unknown_category) = (0, 0);
        for ann in file.annotations {
            let Some(&img) = img_index.get(&ann.image_id) else {
                skipped_unknown_image += 1;
                continue;
            };
            if require_category && !cat_index.contains_key(&ann.category_id) {
                skipped_unknown_category += 1;
                continue;
            }
            ann_index.insert(ann.id, annotations.len());
            img_to_anns[img].push(annotations.len());
            annotations.push(ann);
        }
        CocoDataset {
            images,
            annotations,
            categories,
            img_to_anns,
            ann_index,
            annotations_total,
            skipped_unknown_image,
            skipped_unknown_category,
        }
    }

    /// Adds `images_total`, `annotations_total` and the unknown-image/category skips.
    pub fn count_basics(&self, out: &mut SourceOutput) {
        out.count("images_total", self.images.len() as u64);
        out.count("annotations_total", self.annotations_total as u64);
        if self.skipped_unknown_image > 0 {
            out.count(
                "annotations_skipped_unknown_image",
                self.skipped_unknown_image as u64,
            );
        }
        if self.skipped_unknown_category > 0 {
            out.count(
                "annotations_skipped_unknown_category",
                self.skipped_unknown_category as u64,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> SegmentationField {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn polygons_read_like_json_values() {
        // Integers, floats, exponents, negative numbers and a u64 past i64 read as
        // `serde_json::Value::as_f64` reads them.
        let json = "[[0, 1.5, -2, 3e2, 18446744073709551615, 0.1], [7, 8, 9, 10, 11, 12]]";
        let SegmentationField::Polygons(polys) = parse(json) else {
            panic!("not polygons")
        };
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        let expected: Vec<Vec<f64>> = value
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                p.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect()
            })
            .collect();
        assert_eq!(polys, expected);
        assert!(matches!(parse("[]"), SegmentationField::Polygons(p) if p.is_empty()));
    }

    #[test]
    fn polygons_with_non_numbers_are_invalid_not_errors() {
        for (json, bad) in [
            ("[[0, 0, 28, \"x\", 28, 28]]", 0),
            ("[[0, 0, 28, 0, 28, 28], [1, [2], 3, 4, 5, 6]]", 1),
            ("[[0, 0, 28, 0, 28, 28], 5]", 1),
            ("[null, [0, 0, 28, 0, 28, 28]]", 0),
            ("[[0, 0, 28, 0, 28, 28], {\"a\": [1]}, [true]]", 1),
            ("[[0, 0, 28, {\"x\": 1}, 28, 28]]", 0),
        ] {
            match parse(json) {
                SegmentationField::Invalid(what) => {
                    assert_eq!(
                        what,
                        format!("polygon #{bad} is not a list of numbers"),
                        "{json}"
                    )
                }
                other => panic!("{json}: {other:?}"),
            }
        }
        assert!(matches!(parse("\"abc\""), SegmentationField::Invalid(_)));
        assert!(matches!(
            parse("{\"counts\": [1, 2], \"size\": [1, 3]}"),
            SegmentationField::Other(_)
        ));
    }
}
