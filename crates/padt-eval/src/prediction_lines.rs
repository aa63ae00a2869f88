//! The per-object prediction line of the reference's evaluation scripts
//! (`eval/evaluation_scripts/utils.py: infer_dataset`), read by `eval_coco.py` and
//! `eval_refcoco.py` (docs/evaluation.md, "Prediction files").
//!
//! One JSON object per detected object, keys in the reference's order:
//! `{"image_id": 87038, "score": 0.93, "category": "cup", "bbox": [12, 30, 40, 50],
//!   "mask": {"size": [H, W], "counts": "…"}}`
//! - `image_id`: the record's `id` (the COCO image id);
//! - `score`: `sigmoid(score logit)`;
//! - `category`: the parsed label (the quoted text in force at the VRT run), `null` when none;
//! - `bbox`: `[x, y, w, h]` in whole pixels of the original image (written as integers);
//! - `mask`: COCO compressed RLE (column-major) over the original image; absent when the
//!   checkpoint has no mask head (the reference always has one).

use std::path::Path;

use padt_data::record::RleJson;
use serde::{Deserialize, Serialize, Serializer};

use crate::postprocess::DetectedObject;

/// One line of a reference `*_pred_results_*.json` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectLine {
    pub image_id: i64,
    pub score: f64,
    pub category: Option<String>,
    /// `[x, y, w, h]` pixels.
    #[serde(serialize_with = "whole_numbers")]
    pub bbox: [f64; 4],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<RleJson>,
}

/// Writes integral values as JSON integers (`12`, as Python's `round` gives), others as floats.
fn whole_numbers<S: Serializer>(values: &[f64; 4], serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeTuple;
    let mut tuple = serializer.serialize_tuple(4)?;
    for &v in values {
        if v.fract() == 0.0 && v.abs() < 9.0e15 {
            tuple.serialize_element(&(v as i64))?;
        } else {
            tuple.serialize_element(&v)?;
        }
    }
    tuple.end()
}

impl ObjectLine {
    /// The line of one decoded object of the record with image id `image_id`.
    pub fn from_detected(image_id: i64, object: &DetectedObject) -> ObjectLine {
        ObjectLine {
            image_id,
            score: object.score as f64,
            category: object.label.clone(),
            bbox: object.bbox,
            mask: object.mask.as_ref().map(|m| RleJson {
                size: m.size(),
                counts: m.to_compressed(),
            }),
        }
    }

    /// The line as one line of JSON (no newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("an ObjectLine always serialises")
    }
}

/// Errors while reading a prediction file.
#[derive(Debug, thiserror::Error)]
pub enum PredictionFileError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a prediction line ({source})")]
    Line {
        path: String,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

/// Parses JSON lines of [`ObjectLine`]s (blank lines skipped); `path` names the source in errors.
pub fn parse_object_lines(text: &str, path: &str) -> Result<Vec<ObjectLine>, PredictionFileError> {
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str(line).map_err(|source| PredictionFileError::Line {
            path: path.to_string(),
            line: i + 1,
            source,
        })?;
        lines.push(parsed);
    }
    Ok(lines)
}

/// Reads a prediction file of [`ObjectLine`]s (ours or the reference's).
pub fn read_object_lines(path: &Path) -> Result<Vec<ObjectLine>, PredictionFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PredictionFileError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_object_lines(&text, &path.display().to_string())
}

/// The completion as the reference writes it in `*_pred_comp_*.json`: the generated text with
/// every `<|endoftext|>` and `<|im_end|>` removed.
pub fn reference_completion(completion: &str) -> String {
    completion
        .replace("<|endoftext|>", "")
        .replace("<|im_end|>", "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_has_the_reference_keys_in_order_with_integer_boxes() {
        let line = ObjectLine {
            image_id: 7,
            score: 0.5,
            category: Some("cup".into()),
            bbox: [12.0, 30.0, 40.0, 50.0],
            mask: Some(RleJson {
                size: [2, 3],
                counts: "06".into(),
            }),
        };
        assert_eq!(
            line.to_json_line(),
            r#"{"image_id":7,"score":0.5,"category":"cup","bbox":[12,30,40,50],"mask":{"size":[2,3],"counts":"06"}}"#
        );
        let back = parse_object_lines(&line.to_json_line(), "x").unwrap();
        assert_eq!(back, vec![line]);
    }

    #[test]
    fn reads_reference_lines_and_names_bad_ones() {
        // A line as the reference's json.dumps writes it (spaces, null label, no extra keys).
        let text =
            "{\"image_id\": 3, \"score\": 0.25, \"category\": null, \"bbox\": [0, 1, 2, 3], \
                    \"mask\": {\"size\": [4, 4], \"counts\": \"0@0\"}}\n\n{\"image_id\": 3}\n";
        let err = parse_object_lines(text, "preds.json")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("preds.json:3:"), "{err}");
        let first = parse_object_lines(text.lines().next().unwrap(), "p").unwrap();
        assert_eq!(first[0].category, None);
        assert_eq!(first[0].bbox, [0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn completion_loses_the_end_tokens() {
        assert_eq!(
            reference_completion("a \"cat\" (<|VRT_1|>).<|im_end|><|endoftext|>"),
            "a \"cat\" (<|VRT_1|>)."
        );
    }
}
