//! COCO bounding-box evaluation: our own implementation of pycocotools' `COCOeval` with
//! `iouType="bbox"` and the default parameters, producing the 12 standard summary numbers.
//!
//! The protocol, step by step (docs/evaluation.md has the full definition):
//! 1. Images and categories are the sorted, de-duplicated ids of the ground truth's `images` and
//!    `categories`. Annotations and detections are grouped per (image, category) in file order.
//! 2. Per group, detections are sorted by descending score with a *stable* sort (ties keep file
//!    order, as numpy's mergesort on `-score`) and cut to the 100 best. IoU is box IoU, except
//!    against a crowd ground truth, where the union is the detection's own area.
//! 3. Per area range, a ground truth is ignored when it is a crowd or its `area` field lies outside
//!    the range (bounds inclusive). Per IoU threshold, each detection in score order takes the
//!    unmatched (or crowd) ground truth with the highest IoU ≥ the threshold, preferring
//!    non-ignored ground truths; a detection matched to an ignored ground truth is ignored, and an
//!    unmatched detection whose `w*h` lies outside the area range is ignored too.
//! 4. Per category, area range and max-detections cap, the capped detections of all images are
//!    merged (stable sort by descending score, images in id order), precision/recall curves are
//!    built from the cumulative true/false positives, precision is made monotone from the right
//!    and sampled at the 101 recall thresholds 0, 0.01, …, 1 (0 past the last recall reached).
//!    Categories without any non-ignored ground truth get -1 and are left out of every mean.
//! 5. AP is the mean of the sampled precision over IoU thresholds .50:.05:.95, recall thresholds and
//!    categories; AR the mean of the final recall over IoU thresholds and categories.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

/// Area ranges (all, small, medium, large), bounds inclusive, in pixels².
pub const AREA_RANGES: [(f64, f64); 4] = [
    (0.0, 1e10),
    (0.0, 32.0 * 32.0),
    (32.0 * 32.0, 96.0 * 96.0),
    (96.0 * 96.0, 1e10),
];
/// Maximum detections per image and category, ascending.
pub const MAX_DETECTIONS: [usize; 3] = [1, 10, 100];
/// Number of IoU thresholds (.50:.05:.95).
pub const NUM_IOU_THRESHOLDS: usize = 10;
/// Number of recall thresholds (0:.01:1).
pub const NUM_RECALL_THRESHOLDS: usize = 101;

/// Errors while reading or checking COCO ground truth and detections.
#[derive(Debug, thiserror::Error)]
pub enum CocoEvalError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {what}")]
    Format { path: String, what: String },
    #[error(
        "{path}: {count} detection(s) refer to image ids that are not in the ground truth \
         (first: {examples}); pycocotools refuses such a file too"
    )]
    UnknownImages {
        path: String,
        count: usize,
        examples: String,
    },
}

/// One ground-truth annotation, as the bbox protocol sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundTruthBox {
    /// Annotation id (unique, never 0).
    pub id: i64,
    pub image_id: i64,
    pub category_id: i64,
    /// `[x, y, w, h]` in pixels.
    pub bbox: [f64; 4],
    /// The annotation's `area` field (segmentation area in COCO), used for the area ranges.
    pub area: f64,
    pub iscrowd: bool,
}

/// One detection (a line of a COCO results file).
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub image_id: i64,
    pub category_id: i64,
    /// `[x, y, w, h]` in pixels.
    pub bbox: [f64; 4],
    pub score: f64,
}

/// A COCO ground truth reduced to what the bbox protocol needs.
#[derive(Debug, Clone, Default)]
pub struct CocoGroundTruth {
    /// Sorted, unique image ids (from `images`).
    pub image_ids: Vec<i64>,
    /// Sorted, unique category ids (from `categories`).
    pub category_ids: Vec<i64>,
    /// Annotations whose image and category are both listed, in file order.
    pub annotations: Vec<GroundTruthBox>,
    /// Annotations dropped because their `image_id` is not in `images` (pycocotools ignores them).
    pub skipped_unknown_image: usize,
    /// Annotations dropped because their `category_id` is not in `categories`.
    pub skipped_unknown_category: usize,
}

/// Detections after checking them against a ground truth.
#[derive(Debug, Clone, Default)]
pub struct CheckedDetections {
    /// Detections kept, in file order.
    pub detections: Vec<Detection>,
    /// Detections dropped because their category is not in the ground truth (pycocotools drops
    /// them silently; we count them).
    pub skipped_unknown_category: usize,
}

/// The 12 standard COCO numbers, serialised with pycocotools' usual names in `stats` order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CocoSummary {
    #[serde(rename = "AP")]
    pub ap: f64,
    #[serde(rename = "AP50")]
    pub ap50: f64,
    #[serde(rename = "AP75")]
    pub ap75: f64,
    #[serde(rename = "APs")]
    pub ap_small: f64,
    #[serde(rename = "APm")]
    pub ap_medium: f64,
    #[serde(rename = "APl")]
    pub ap_large: f64,
    #[serde(rename = "AR1")]
    pub ar1: f64,
    #[serde(rename = "AR10")]
    pub ar10: f64,
    #[serde(rename = "AR100")]
    pub ar100: f64,
    #[serde(rename = "ARs")]
    pub ar_small: f64,
    #[serde(rename = "ARm")]
    pub ar_medium: f64,
    #[serde(rename = "ARl")]
    pub ar_large: f64,
}

impl CocoSummary {
    /// The numbers in pycocotools' `stats` order.
    pub fn to_array(&self) -> [f64; 12] {
        [
            self.ap,
            self.ap50,
            self.ap75,
            self.ap_small,
            self.ap_medium,
            self.ap_large,
            self.ar1,
            self.ar10,
            self.ar100,
            self.ar_small,
            self.ar_medium,
            self.ar_large,
        ]
    }

    /// Names in `stats` order, as used in the JSON output.
    pub const NAMES: [&'static str; 12] = [
        "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
    ];
}

/// Full accumulated result: precision `[T, R, K, A, M]` and recall `[T, K, A, M]`, row-major, with
/// -1 where a category has no non-ignored ground truth.
#[derive(Debug, Clone)]
pub struct CocoEvaluation {
    pub category_ids: Vec<i64>,
    pub precision: Vec<f64>,
    pub recall: Vec<f64>,
    pub summary: CocoSummary,
}

impl CocoEvaluation {
    fn precision_index(&self, t: usize, r: usize, k: usize, a: usize, m: usize) -> usize {
        let (nk, na, nm) = (
            self.category_ids.len(),
            AREA_RANGES.len(),
            MAX_DETECTIONS.len(),
        );
        (((t * NUM_RECALL_THRESHOLDS + r) * nk + k) * na + a) * nm + m
    }

    fn recall_index(&self, t: usize, k: usize, a: usize, m: usize) -> usize {
        let (nk, na, nm) = (
            self.category_ids.len(),
            AREA_RANGES.len(),
            MAX_DETECTIONS.len(),
        );
        ((t * nk + k) * na + a) * nm + m
    }

    /// AP@[.50:.95] (all areas, 100 detections) of one category, or -1 without ground truth.
    pub fn category_ap(&self, category_index: usize) -> f64 {
        let values = (0..NUM_IOU_THRESHOLDS).flat_map(|t| {
            (0..NUM_RECALL_THRESHOLDS)
                .map(move |r| self.precision[self.precision_index(t, r, category_index, 0, 2)])
        });
        mean_of_valid(values)
    }
}

/// IoU thresholds exactly as numpy's `linspace(.5, .95, 10)` computes them.
pub fn iou_thresholds() -> [f64; NUM_IOU_THRESHOLDS] {
    let step = (0.95 - 0.5) / 9.0;
    let mut thresholds = [0.0; NUM_IOU_THRESHOLDS];
    for (i, t) in thresholds.iter_mut().enumerate() {
        *t = i as f64 * step + 0.5;
    }
    thresholds[NUM_IOU_THRESHOLDS - 1] = 0.95;
    thresholds
}

/// Recall thresholds exactly as numpy's `linspace(0, 1, 101)` computes them.
pub fn recall_thresholds() -> [f64; NUM_RECALL_THRESHOLDS] {
    let step = 1.0 / 100.0;
    let mut thresholds = [0.0; NUM_RECALL_THRESHOLDS];
    for (i, r) in thresholds.iter_mut().enumerate() {
        *r = i as f64 * step;
    }
    thresholds[NUM_RECALL_THRESHOLDS - 1] = 1.0;
    thresholds
}

/// Box IoU of a detection and a ground truth (`[x, y, w, h]`); for a crowd ground truth the union
/// is the detection's area (the fraction of the detection covered by the crowd region).
pub fn bbox_iou(detection: &[f64; 4], ground_truth: &[f64; 4], crowd: bool) -> f64 {
    let [dx, dy, dw, dh] = *detection;
    let [gx, gy, gw, gh] = *ground_truth;
    let w = (dw + dx).min(gw + gx) - dx.max(gx);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (dh + dy).min(gh + gy) - dy.max(gy);
    if h <= 0.0 {
        return 0.0;
    }
    let intersection = w * h;
    let detection_area = dw * dh;
    let union = if crowd {
        detection_area
    } else {
        detection_area + gw * gh - intersection
    };
    intersection / union
}

// ---------------------------------------------------------------------------------------------
// Reading files
// ---------------------------------------------------------------------------------------------

fn read_json(path: &Path) -> Result<Value, CocoEvalError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CocoEvalError::Io {
        path: display.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| CocoEvalError::Json {
        path: display,
        source,
    })
}

fn format_error(path: &str, what: impl Into<String>) -> CocoEvalError {
    CocoEvalError::Format {
        path: path.to_string(),
        what: what.into(),
    }
}

/// An integer id; integral floats (`3.0`) are accepted because Python treats them as equal.
fn integer_field(
    object: &Value,
    key: &str,
    path: &str,
    record: &str,
) -> Result<i64, CocoEvalError> {
    let value = object
        .get(key)
        .ok_or_else(|| format_error(path, format!("{record} has no \"{key}\"")))?;
    if let Some(i) = value.as_i64() {
        return Ok(i);
    }
    match value.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        _ => Err(format_error(
            path,
            format!("{record}: \"{key}\" must be an integer, found {value}"),
        )),
    }
}

fn number_field(object: &Value, key: &str, path: &str, record: &str) -> Result<f64, CocoEvalError> {
    let value = object
        .get(key)
        .ok_or_else(|| format_error(path, format!("{record} has no \"{key}\"")))?;
    match value.as_f64() {
        Some(f) if f.is_finite() => Ok(f),
        _ => Err(format_error(
            path,
            format!("{record}: \"{key}\" must be a finite number, found {value}"),
        )),
    }
}

fn bbox_field(object: &Value, path: &str, record: &str) -> Result<[f64; 4], CocoEvalError> {
    let value = object
        .get("bbox")
        .ok_or_else(|| format_error(path, format!("{record} has no \"bbox\"")))?;
    let bad = || {
        format_error(
            path,
            format!("{record}: \"bbox\" must be [x, y, w, h] of 4 finite numbers, found {value}"),
        )
    };
    let list = value.as_array().ok_or_else(bad)?;
    if list.len() != 4 {
        return Err(bad());
    }
    let mut bbox = [0.0; 4];
    for (slot, v) in bbox.iter_mut().zip(list) {
        *slot = v.as_f64().filter(|f| f.is_finite()).ok_or_else(bad)?;
    }
    Ok(bbox)
}

fn id_list(root: &Value, key: &str, path: &str) -> Result<Vec<i64>, CocoEvalError> {
    let list = root.get(key).and_then(Value::as_array).ok_or_else(|| {
        format_error(
            path,
            format!("no \"{key}\" list (not a COCO instances file?)"),
        )
    })?;
    let mut ids = BTreeSet::new();
    for (i, entry) in list.iter().enumerate() {
        ids.insert(integer_field(entry, "id", path, &format!("{key}[{i}]"))?);
    }
    Ok(ids.into_iter().collect())
}

impl CocoGroundTruth {
    /// Reads a COCO instances JSON (`images`, `categories`, `annotations`).
    ///
    /// Every annotation needs `id`, `image_id`, `category_id`, `bbox` and `area`; `iscrowd` defaults
    /// to 0. Annotation ids must be unique and non-zero (pycocotools would silently mis-score
    /// duplicates and id 0).
    pub fn from_path(path: &Path) -> Result<Self, CocoEvalError> {
        let root = read_json(path)?;
        Self::from_json(&root, &path.display().to_string())
    }

    /// As [`Self::from_path`], from parsed JSON; `path` only names the source in errors.
    pub fn from_json(root: &Value, path: &str) -> Result<Self, CocoEvalError> {
        if !root.is_object() {
            return Err(format_error(path, "the ground truth must be a JSON object"));
        }
        let image_ids = id_list(root, "images", path)?;
        let category_ids = id_list(root, "categories", path)?;
        let list = root
            .get("annotations")
            .and_then(Value::as_array)
            .ok_or_else(|| format_error(path, "no \"annotations\" list"))?;
        let images: HashSet<i64> = image_ids.iter().copied().collect();
        let categories: HashSet<i64> = category_ids.iter().copied().collect();
        let mut seen_ids = HashMap::new();
        let mut truth = CocoGroundTruth {
            image_ids,
            category_ids,
            ..Default::default()
        };
        for (i, entry) in list.iter().enumerate() {
            let record = format!("annotations[{i}]");
            let id = integer_field(entry, "id", path, &record)?;
            if id == 0 {
                return Err(format_error(
                    path,
                    format!(
                        "{record} has id 0; COCOeval uses 0 for \"unmatched\", so renumber \
                         annotation ids from 1"
                    ),
                ));
            }
            if let Some(first) = seen_ids.insert(id, i) {
                return Err(format_error(
                    path,
                    format!(
                        "{record} repeats the id {id} of annotations[{first}]; ids must be unique"
                    ),
                ));
            }
            let image_id = integer_field(entry, "image_id", path, &record)?;
            let category_id = integer_field(entry, "category_id", path, &record)?;
            let bbox = bbox_field(entry, path, &record)?;
            let area = number_field(entry, "area", path, &record)?;
            let iscrowd = match entry.get("iscrowd") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(v) => match v.as_i64() {
                    Some(0) => false,
                    Some(1) => true,
                    _ => {
                        return Err(format_error(
                            path,
                            format!("{record}: \"iscrowd\" must be 0 or 1, found {v}"),
                        ))
                    }
                },
            };
            if !images.contains(&image_id) {
                truth.skipped_unknown_image += 1;
                continue;
            }
            if !categories.contains(&category_id) {
                truth.skipped_unknown_category += 1;
                continue;
            }
            truth.annotations.push(GroundTruthBox {
                id,
                image_id,
                category_id,
                bbox,
                area,
                iscrowd,
            });
        }
        Ok(truth)
    }

    /// Checks detections against this ground truth: unknown image ids are an error (as the
    /// pycocotools assertion), unknown categories are dropped and counted.
    pub fn check_detections(
        &self,
        detections: Vec<Detection>,
        path: &str,
    ) -> Result<CheckedDetections, CocoEvalError> {
        let images: HashSet<i64> = self.image_ids.iter().copied().collect();
        let categories: HashSet<i64> = self.category_ids.iter().copied().collect();
        let unknown: Vec<i64> = detections
            .iter()
            .map(|d| d.image_id)
            .filter(|id| !images.contains(id))
            .collect();
        if !unknown.is_empty() {
            let distinct: BTreeSet<i64> = unknown.iter().copied().collect();
            let examples: Vec<String> = distinct.iter().take(5).map(i64::to_string).collect();
            return Err(CocoEvalError::UnknownImages {
                path: path.to_string(),
                count: unknown.len(),
                examples: examples.join(", "),
            });
        }
        let before = detections.len();
        let kept: Vec<Detection> = detections
            .into_iter()
            .filter(|d| categories.contains(&d.category_id))
            .collect();
        Ok(CheckedDetections {
            skipped_unknown_category: before - kept.len(),
            detections: kept,
        })
    }
}

/// Reads a COCO results file: a JSON list of `{image_id, category_id, bbox, score}`.
pub fn load_detections(path: &Path) -> Result<Vec<Detection>, CocoEvalError> {
    let root = read_json(path)?;
    detections_from_json(&root, &path.display().to_string())
}

/// As [`load_detections`], from parsed JSON; `path` only names the source in errors.
pub fn detections_from_json(root: &Value, path: &str) -> Result<Vec<Detection>, CocoEvalError> {
    let list = root.as_array().ok_or_else(|| {
        format_error(
            path,
            "detections must be a JSON list of {image_id, category_id, bbox, score}",
        )
    })?;
    list.iter()
        .enumerate()
        .map(|(i, entry)| {
            let record = format!("detection [{i}]");
            if !entry.is_object() {
                return Err(format_error(path, format!("{record} is not an object")));
            }
            Ok(Detection {
                image_id: integer_field(entry, "image_id", path, &record)?,
                category_id: integer_field(entry, "category_id", path, &record)?,
                bbox: bbox_field(entry, path, &record)?,
                score: number_field(entry, "score", path, &record)?,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

/// What a detection counts as at one IoU threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    TruePositive,
    FalsePositive,
    /// Matched to an ignored ground truth, or unmatched and outside the area range.
    Ignored,
}

/// Matching result of one (category, area range, image) cell with at least one gt or detection.
struct ImageResult {
    /// Scores of the (≤ 100) detections, descending.
    scores: Vec<f64>,
    /// `[T * D]` (threshold-major): what each detection is at each IoU threshold.
    outcomes: Vec<Outcome>,
    /// Number of non-ignored ground truths.
    num_counted_gt: usize,
}

/// Descending order of finite scores; -0.0 and 0.0 compare equal, as in numpy.
fn descending(a: f64, b: f64) -> std::cmp::Ordering {
    b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal)
}

fn sort_by_score_descending(detections: &mut [&Detection]) {
    // Stable: ties keep their order, like numpy's argsort(-score, kind="mergesort").
    detections.sort_by(|a, b| descending(a.score, b.score));
}

fn evaluate_image(
    gts: &[&GroundTruthBox],
    dts: &[&Detection],
    ious: &[Vec<f64>],
    area_range: (f64, f64),
    thresholds: &[f64; NUM_IOU_THRESHOLDS],
) -> ImageResult {
    let outside = |area: f64| area < area_range.0 || area > area_range.1;
    let gt_ignore_unsorted: Vec<bool> = gts.iter().map(|g| g.iscrowd || outside(g.area)).collect();
    // Non-ignored ground truths first, order otherwise kept (stable).
    let mut gt_order: Vec<usize> = (0..gts.len()).collect();
    gt_order.sort_by_key(|&g| gt_ignore_unsorted[g]);
    let gt_ignore: Vec<bool> = gt_order.iter().map(|&g| gt_ignore_unsorted[g]).collect();
    let crowd: Vec<bool> = gt_order.iter().map(|&g| gts[g].iscrowd).collect();

    let num_dt = dts.len();
    let mut outcomes = vec![Outcome::FalsePositive; NUM_IOU_THRESHOLDS * num_dt];
    if !gts.is_empty() {
        for (t, &threshold) in thresholds.iter().enumerate() {
            let mut gt_taken = vec![false; gts.len()];
            for d in 0..num_dt {
                let mut best_iou = threshold.min(1.0 - 1e-10);
                let mut best: Option<usize> = None;
                for g in 0..gt_order.len() {
                    if gt_taken[g] && !crowd[g] {
                        continue;
                    }
                    // Already matched a counted gt and only ignored ones remain: stop.
                    if let Some(m) = best {
                        if !gt_ignore[m] && gt_ignore[g] {
                            break;
                        }
                    }
                    let iou = ious[d][gt_order[g]];
                    if iou < best_iou {
                        continue;
                    }
                    best_iou = iou;
                    best = Some(g);
                }
                if let Some(m) = best {
                    outcomes[t * num_dt + d] = if gt_ignore[m] {
                        Outcome::Ignored
                    } else {
                        Outcome::TruePositive
                    };
                    gt_taken[m] = true;
                }
            }
        }
    }
    // Unmatched detections outside the area range are ignored.
    for (d, dt) in dts.iter().enumerate() {
        if outside(dt.bbox[2] * dt.bbox[3]) {
            for t in 0..NUM_IOU_THRESHOLDS {
                if outcomes[t * num_dt + d] == Outcome::FalsePositive {
                    outcomes[t * num_dt + d] = Outcome::Ignored;
                }
            }
        }
    }
    ImageResult {
        scores: dts.iter().map(|d| d.score).collect(),
        outcomes,
        num_counted_gt: gt_ignore.iter().filter(|&&i| !i).count(),
    }
}

fn mean_of_valid(values: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut count) = (0.0, 0usize);
    for v in values.filter(|&v| v > -1.0) {
        sum += v;
        count += 1;
    }
    if count == 0 {
        -1.0
    } else {
        sum / count as f64
    }
}

/// Runs the COCO bbox protocol over `detections` (already checked against `truth`).
pub fn evaluate(truth: &CocoGroundTruth, detections: &[Detection]) -> CocoEvaluation {
    let iou_thrs = iou_thresholds();
    let rec_thrs = recall_thresholds();
    let num_images = truth.image_ids.len();
    let num_cats = truth.category_ids.len();
    let image_index: HashMap<i64, usize> = truth
        .image_ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i))
        .collect();
    let category_index: HashMap<i64, usize> = truth
        .category_ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i))
        .collect();

    // Group per (category, image), file order.
    let cell = |k: usize, i: usize| k * num_images + i;
    let mut gt_cells: HashMap<usize, Vec<&GroundTruthBox>> = HashMap::new();
    for g in &truth.annotations {
        if let (Some(&k), Some(&i)) = (
            category_index.get(&g.category_id),
            image_index.get(&g.image_id),
        ) {
            gt_cells.entry(cell(k, i)).or_default().push(g);
        }
    }
    let mut dt_cells: HashMap<usize, Vec<&Detection>> = HashMap::new();
    for d in detections {
        if let (Some(&k), Some(&i)) = (
            category_index.get(&d.category_id),
            image_index.get(&d.image_id),
        ) {
            dt_cells.entry(cell(k, i)).or_default().push(d);
        }
    }
    let max_det = MAX_DETECTIONS[MAX_DETECTIONS.len() - 1];
    for dts in dt_cells.values_mut() {
        sort_by_score_descending(dts);
        dts.truncate(max_det);
    }

    // Per-image matching: results[k][a] is the list of (image index order) non-empty cells.
    let mut occupied: Vec<usize> = gt_cells.keys().chain(dt_cells.keys()).copied().collect();
    occupied.sort_unstable();
    occupied.dedup();
    let num_areas = AREA_RANGES.len();
    let mut results: Vec<Vec<Vec<ImageResult>>> = (0..num_cats)
        .map(|_| (0..num_areas).map(|_| Vec::new()).collect())
        .collect();
    let empty_gt: Vec<&GroundTruthBox> = Vec::new();
    let empty_dt: Vec<&Detection> = Vec::new();
    for &c in &occupied {
        let k = c / num_images;
        let gts = gt_cells.get(&c).unwrap_or(&empty_gt);
        let dts = dt_cells.get(&c).unwrap_or(&empty_dt);
        let ious: Vec<Vec<f64>> = dts
            .iter()
            .map(|d| {
                gts.iter()
                    .map(|g| bbox_iou(&d.bbox, &g.bbox, g.iscrowd))
                    .collect()
            })
            .collect();
        for (a, &range) in AREA_RANGES.iter().enumerate() {
            results[k][a].push(evaluate_image(gts, dts, &ious, range, &iou_thrs));
        }
    }

    // Accumulate.
    let num_max = MAX_DETECTIONS.len();
    let mut evaluation = CocoEvaluation {
        category_ids: truth.category_ids.clone(),
        precision: vec![
            -1.0;
            NUM_IOU_THRESHOLDS * NUM_RECALL_THRESHOLDS * num_cats * num_areas * num_max
        ],
        recall: vec![-1.0; NUM_IOU_THRESHOLDS * num_cats * num_areas * num_max],
        summary: CocoSummary {
            ap: -1.0,
            ap50: -1.0,
            ap75: -1.0,
            ap_small: -1.0,
            ap_medium: -1.0,
            ap_large: -1.0,
            ar1: -1.0,
            ar10: -1.0,
            ar100: -1.0,
            ar_small: -1.0,
            ar_medium: -1.0,
            ar_large: -1.0,
        },
    };
    for (k, per_area) in results.iter().enumerate() {
        for (a, cells) in per_area.iter().enumerate() {
            if cells.is_empty() {
                continue;
            }
            let num_counted_gt: usize = cells.iter().map(|e| e.num_counted_gt).sum();
            if num_counted_gt == 0 {
                continue;
            }
            for (m, &cap) in MAX_DETECTIONS.iter().enumerate() {
                // (score, cell, detection) of the capped detections, images in id order.
                let mut pooled: Vec<(f64, usize, usize)> = Vec::new();
                for (e, result) in cells.iter().enumerate() {
                    for (d, &score) in result.scores.iter().take(cap).enumerate() {
                        pooled.push((score, e, d));
                    }
                }
                pooled.sort_by(|x, y| descending(x.0, y.0));
                for t in 0..NUM_IOU_THRESHOLDS {
                    let (mut tp, mut fp) = (0.0f64, 0.0f64);
                    let mut recall_curve = Vec::with_capacity(pooled.len());
                    let mut precision_curve = Vec::with_capacity(pooled.len());
                    for &(_, e, d) in &pooled {
                        let cell = &cells[e];
                        match cell.outcomes[t * cell.scores.len() + d] {
                            Outcome::TruePositive => tp += 1.0,
                            Outcome::FalsePositive => fp += 1.0,
                            Outcome::Ignored => {}
                        }
                        recall_curve.push(tp / num_counted_gt as f64);
                        precision_curve.push(tp / (fp + tp + f64::EPSILON));
                    }
                    let recall_index = evaluation.recall_index(t, k, a, m);
                    evaluation.recall[recall_index] = recall_curve.last().copied().unwrap_or(0.0);
                    // Monotone precision envelope from the right.
                    for i in (1..precision_curve.len()).rev() {
                        if precision_curve[i] > precision_curve[i - 1] {
                            precision_curve[i - 1] = precision_curve[i];
                        }
                    }
                    let mut position = 0usize;
                    for (r, &threshold) in rec_thrs.iter().enumerate() {
                        // First index with recall ≥ threshold (searchsorted, side="left").
                        while position < recall_curve.len() && recall_curve[position] < threshold {
                            position += 1;
                        }
                        let value = precision_curve.get(position).copied().unwrap_or(0.0);
                        if position >= precision_curve.len() {
                            // Past the last recall reached: this and every higher threshold stay 0.
                            for r2 in r..NUM_RECALL_THRESHOLDS {
                                let index = evaluation.precision_index(t, r2, k, a, m);
                                evaluation.precision[index] = 0.0;
                            }
                            break;
                        }
                        let index = evaluation.precision_index(t, r, k, a, m);
                        evaluation.precision[index] = value;
                    }
                }
            }
        }
    }
    evaluation.summary = summarize(&evaluation);
    evaluation
}

fn summarize(e: &CocoEvaluation) -> CocoSummary {
    let num_cats = e.category_ids.len();
    let all_t: Vec<usize> = (0..NUM_IOU_THRESHOLDS).collect();
    // IoU threshold indices of .50 and .75 in .50:.05:.95.
    let t50 = [0usize];
    let t75 = [5usize];
    let ap = |ts: &[usize], a: usize, m: usize| {
        mean_of_valid(ts.iter().flat_map(|&t| {
            (0..NUM_RECALL_THRESHOLDS).flat_map(move |r| {
                (0..num_cats).map(move |k| e.precision[e.precision_index(t, r, k, a, m)])
            })
        }))
    };
    let ar = |a: usize, m: usize| {
        mean_of_valid(
            all_t
                .iter()
                .flat_map(|&t| (0..num_cats).map(move |k| e.recall[e.recall_index(t, k, a, m)])),
        )
    };
    CocoSummary {
        ap: ap(&all_t, 0, 2),
        ap50: ap(&t50, 0, 2),
        ap75: ap(&t75, 0, 2),
        ap_small: ap(&all_t, 1, 2),
        ap_medium: ap(&all_t, 2, 2),
        ap_large: ap(&all_t, 3, 2),
        ar1: ar(0, 0),
        ar10: ar(0, 1),
        ar100: ar(0, 2),
        ar_small: ar(1, 2),
        ar_medium: ar(2, 2),
        ar_large: ar(3, 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_match_numpy_linspace() {
        let t = iou_thresholds();
        assert_eq!(t[0], 0.5);
        assert_eq!(t[5], 0.75);
        assert_eq!(t[9], 0.95);
        let r = recall_thresholds();
        assert_eq!(r[57], 57.0 * 0.01);
        assert_eq!(r[100], 1.0);
    }

    #[test]
    fn crowd_iou_uses_detection_area() {
        let d = [0.0, 0.0, 10.0, 10.0];
        let g = [5.0, 0.0, 100.0, 100.0];
        assert_eq!(bbox_iou(&d, &g, true), 0.5);
        assert!((bbox_iou(&d, &g, false) - 50.0 / 10050.0).abs() < 1e-15);
        assert_eq!(bbox_iou(&d, &[10.0, 0.0, 5.0, 5.0], false), 0.0);
    }
}
