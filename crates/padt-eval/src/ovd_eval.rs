//! OVD evaluation glue: COCO ground truth from OVD records and COCO detections from prediction
//! lines, as the reference's `eval_coco.py` builds them, then [`crate::coco_eval`]
//! (docs/evaluation.md, "OVD").
//!
//! - Categories: the names listed in the records' prompts (the val prompt lists every category)
//!   and the records' object labels, numbered 1, 2, … in order of first appearance. The reference
//!   uses the COCO category ids; the numbering does not change any number (the mean over
//!   categories does not depend on their ids).
//! - Ground truth (as `eval_coco.py`, which rebuilds it from the processed val file, not from
//!   `instances_val2017.json`): one image per record, one annotation per record object with
//!   `bbox = [round(x1·W), round(y1·H), round((x2−x1)·W), round((y2−y1)·H)]` (ties to even),
//!   the object's `area` and `iscrowd`, annotation ids from 1 in record order.
//! - Detections: a line's category is looked up lower-cased among the exact category names;
//!   lines whose label is unknown or missing are dropped (the reference drops them silently,
//!   here they are counted per label).

use std::collections::{BTreeMap, HashMap};

use padt_data::record::{Record, Task};

use crate::coco_eval::{self, CocoGroundTruth, CocoSummary, Detection, GroundTruthBox};
use crate::prediction_lines::ObjectLine;

/// Errors in OVD evaluation input.
#[derive(Debug, thiserror::Error)]
pub enum OvdEvalError {
    #[error("record {index} (image {image_id}): task {task}, not ovd")]
    NotOvd {
        index: usize,
        image_id: i64,
        task: &'static str,
    },
    #[error(
        "record {index}: image id {image_id} is also the image of record {first}; OVD \
         evaluation needs one record per image"
    )]
    DuplicateImage {
        index: usize,
        image_id: i64,
        first: usize,
    },
    #[error("record {index} (image {image_id}): object {object} has an empty label")]
    EmptyLabel {
        index: usize,
        image_id: i64,
        object: usize,
    },
    #[error("no OVD record to evaluate")]
    NoRecords,
    #[error(transparent)]
    Coco(#[from] coco_eval::CocoEvalError),
}

/// An OVD record with its original image size.
#[derive(Debug, Clone, Copy)]
pub struct OvdImage<'a> {
    pub record: &'a Record,
    /// Original width and height in pixels.
    pub width: u32,
    pub height: u32,
}

/// The category names of an OVD evaluation and their ids.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OvdCategories {
    /// Names in id order (id = index + 1).
    pub names: Vec<String>,
    ids: HashMap<String, i64>,
}

impl OvdCategories {
    /// The names listed in the prompts, then the object labels, in order of first appearance.
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a Record>) -> OvdCategories {
        let mut categories = OvdCategories::default();
        for record in records {
            for name in prompt_category_names(&record.prompt).unwrap_or_default() {
                categories.insert(&name);
            }
            for object in record.objects.iter().filter(|o| !o.label.is_empty()) {
                categories.insert(&object.label);
            }
        }
        categories
    }

    fn insert(&mut self, name: &str) {
        if !self.ids.contains_key(name) {
            self.names.push(name.to_string());
            self.ids.insert(name.to_string(), self.names.len() as i64);
        }
    }

    /// The id of an exact category name.
    pub fn id(&self, name: &str) -> Option<i64> {
        self.ids.get(name).copied()
    }

    /// The id of a predicted label, as `eval_coco.py` maps it: `name_to_cat_id[label.lower()]`.
    pub fn id_of_label(&self, label: &str) -> Option<i64> {
        self.id(&label.to_lowercase())
    }
}

/// The category list of an OVD prompt (`… the following objects: ["person", "cup"].`): the JSON
/// list between the first `[` and the last `]`; None when the prompt holds no such list.
pub fn prompt_category_names(prompt: &str) -> Option<Vec<String>> {
    let start = prompt.find('[')?;
    let end = prompt.rfind(']')?;
    if end < start {
        return None;
    }
    serde_json::from_str(&prompt[start..=end]).ok()
}

/// Record `[x1, y1, x2, y2]` (normalised) → `[x, y, w, h]` whole pixels, as `eval_coco.py` and
/// `eval_refcoco.py` (Python `round`, ties to even).
pub fn record_box_pixels(bbox: [f64; 4], width: u32, height: u32) -> [f64; 4] {
    let (w, h) = (width as f64, height as f64);
    [
        (bbox[0] * w).round_ties_even(),
        (bbox[1] * h).round_ties_even(),
        ((bbox[2] - bbox[0]) * w).round_ties_even(),
        ((bbox[3] - bbox[1]) * h).round_ties_even(),
    ]
}

/// The COCO ground truth of OVD records (every record must be OVD, one per image).
pub fn ground_truth(
    images: &[OvdImage<'_>],
    categories: &OvdCategories,
) -> Result<CocoGroundTruth, OvdEvalError> {
    if images.is_empty() {
        return Err(OvdEvalError::NoRecords);
    }
    let mut first_of_image: HashMap<i64, usize> = HashMap::new();
    let mut truth = CocoGroundTruth {
        category_ids: (1..=categories.names.len() as i64).collect(),
        ..Default::default()
    };
    for (index, image) in images.iter().enumerate() {
        let record = image.record;
        if record.task != Task::Ovd {
            return Err(OvdEvalError::NotOvd {
                index,
                image_id: record.id,
                task: record.task.as_str(),
            });
        }
        if let Some(&first) = first_of_image.get(&record.id) {
            return Err(OvdEvalError::DuplicateImage {
                index,
                image_id: record.id,
                first,
            });
        }
        first_of_image.insert(record.id, index);
        truth.image_ids.push(record.id);
        for (o, object) in record.objects.iter().enumerate() {
            let category_id = categories
                .id(&object.label)
                .filter(|_| !object.label.is_empty())
                .ok_or(OvdEvalError::EmptyLabel {
                    index,
                    image_id: record.id,
                    object: o,
                })?;
            truth.annotations.push(GroundTruthBox {
                id: truth.annotations.len() as i64 + 1,
                image_id: record.id,
                category_id,
                bbox: record_box_pixels(object.bbox, image.width, image.height),
                area: object.area,
                iscrowd: object.iscrowd != 0,
            });
        }
    }
    truth.image_ids.sort_unstable();
    Ok(truth)
}

/// Prediction lines turned into COCO detections.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MappedDetections {
    /// Detections with a known category, in line order.
    pub detections: Vec<Detection>,
    /// Dropped lines per (lower-cased) label that names no category.
    pub unknown_labels: BTreeMap<String, usize>,
    /// Dropped lines without a label.
    pub unlabelled: usize,
}

impl MappedDetections {
    /// All dropped lines.
    pub fn dropped(&self) -> usize {
        self.unlabelled + self.unknown_labels.values().sum::<usize>()
    }
}

/// Maps each line's label to a category id (lower-cased, as `eval_coco.py`); unknown and missing
/// labels are counted and dropped.
pub fn map_detections(lines: &[ObjectLine], categories: &OvdCategories) -> MappedDetections {
    let mut mapped = MappedDetections::default();
    for line in lines {
        let Some(label) = &line.category else {
            mapped.unlabelled += 1;
            continue;
        };
        match categories.id_of_label(label) {
            Some(category_id) => mapped.detections.push(Detection {
                image_id: line.image_id,
                category_id,
                bbox: line.bbox,
                score: line.score,
            }),
            None => {
                *mapped
                    .unknown_labels
                    .entry(label.to_lowercase())
                    .or_insert(0) += 1
            }
        }
    }
    mapped
}

/// The result of [`evaluate_ovd`].
#[derive(Debug, Clone)]
pub struct OvdReport {
    /// The 12 COCO numbers.
    pub summary: CocoSummary,
    pub images: usize,
    pub categories: usize,
    /// Ground-truth objects.
    pub gt_objects: usize,
    /// Prediction lines read.
    pub prediction_lines: usize,
    /// Detections scored (lines with a known category).
    pub detections: usize,
    pub unknown_labels: BTreeMap<String, usize>,
    pub unlabelled: usize,
}

impl OvdReport {
    /// The metrics JSON: the 12 numbers (pycocotools' `stats` order) and the counts.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        map.insert("task".into(), "ovd".into());
        map.insert("samples".into(), self.images.into());
        if let serde_json::Value::Object(numbers) =
            serde_json::to_value(self.summary).expect("numbers serialise")
        {
            map.extend(numbers);
        }
        map.insert("categories".into(), self.categories.into());
        map.insert("gt_objects".into(), self.gt_objects.into());
        map.insert("prediction_lines".into(), self.prediction_lines.into());
        map.insert("detections".into(), self.detections.into());
        map.insert(
            "dropped_unknown_label".into(),
            self.unknown_labels.values().sum::<usize>().into(),
        );
        map.insert("dropped_no_label".into(), self.unlabelled.into());
        map.insert(
            "unknown_labels".into(),
            serde_json::to_value(&self.unknown_labels).expect("counts serialise"),
        );
        serde_json::Value::Object(map)
    }
}

/// Scores prediction lines against OVD records: categories from the records, ground truth and
/// detections as `eval_coco.py`, COCO bbox AP/AR. Lines on images that are not among the
/// records are an error (pycocotools' `loadRes` refuses them too).
pub fn evaluate_ovd(
    images: &[OvdImage<'_>],
    lines: &[ObjectLine],
    source: &str,
) -> Result<OvdReport, OvdEvalError> {
    let categories = OvdCategories::from_records(images.iter().map(|i| i.record));
    let truth = ground_truth(images, &categories)?;
    let mapped = map_detections(lines, &categories);
    // Every mapped category is in the truth, so nothing is dropped here; unknown images fail.
    let checked = truth.check_detections(mapped.detections.clone(), source)?;
    let evaluation = coco_eval::evaluate(&truth, &checked.detections);
    Ok(OvdReport {
        summary: evaluation.summary,
        images: images.len(),
        categories: categories.names.len(),
        gt_objects: truth.annotations.len(),
        prediction_lines: lines.len(),
        detections: checked.detections.len(),
        unknown_labels: mapped.unknown_labels,
        unlabelled: mapped.unlabelled,
    })
}
