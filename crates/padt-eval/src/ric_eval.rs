//! RIC evaluation glue: captions from completions and records, then BLEU-1..4, ROUGE-L and
//! CIDEr-D of [`crate::caption_metrics`] (docs/evaluation.md, "RIC").
//!
//! The reference releases no RIC evaluation code, so the choices here are ours:
//! - the generated caption is the completion without `<|endoftext|>` / `<|im_end|>`, with its
//!   grounding markup removed by [`strip_vrt_markers`] (`(<|VRT_3|>…<|VRT_9|>)` groups and stray
//!   markers); a reference caption is a RIC record's `answer_template` stripped the same way
//!   (`(<|Obj_0|>)` groups);
//! - one sample per image: the caption generated for the image (every RIC record of an image
//!   has the same prompt) against the captions of all its records, as COCO caption evaluation
//!   scores one candidate against several references;
//! - both sides go through [`ptb_tokenize`] before scoring.

use std::collections::HashMap;

use padt_data::record::{Record, Task};
use serde::Serialize;

use crate::caption_metrics::{
    bleu, cider_d, ptb_tokenize, rouge_l, strip_vrt_markers, CaptionMetricError, CaptionPair,
};
use crate::prediction_lines::reference_completion;

/// Errors in RIC evaluation input.
#[derive(Debug, thiserror::Error)]
pub enum RicEvalError {
    #[error("record {index} (image {image_id}): task {task}, not ric")]
    NotRic {
        index: usize,
        image_id: i64,
        task: &'static str,
    },
    #[error(transparent)]
    Metric(#[from] CaptionMetricError),
}

/// The caption of a completion: end tokens removed, grounding markup stripped.
pub fn generated_caption(completion: &str) -> String {
    strip_vrt_markers(&reference_completion(completion))
        .trim()
        .to_string()
}

/// One image of a RIC evaluation: its references (stripped answer templates of its records, in
/// record order) and the index of its first record (the one generated for).
#[derive(Debug, Clone, PartialEq)]
pub struct RicImage {
    pub image_id: i64,
    pub first_record: usize,
    pub references: Vec<String>,
}

/// Groups RIC records by image id, in order of first appearance.
pub fn group_by_image<'a>(
    records: impl IntoIterator<Item = &'a Record>,
) -> Result<Vec<RicImage>, RicEvalError> {
    let mut images: Vec<RicImage> = Vec::new();
    let mut position: HashMap<i64, usize> = HashMap::new();
    for (index, record) in records.into_iter().enumerate() {
        if record.task != Task::Ric {
            return Err(RicEvalError::NotRic {
                index,
                image_id: record.id,
                task: record.task.as_str(),
            });
        }
        let reference = strip_vrt_markers(&record.answer_template)
            .trim()
            .to_string();
        match position.get(&record.id) {
            Some(&p) => images[p].references.push(reference),
            None => {
                position.insert(record.id, images.len());
                images.push(RicImage {
                    image_id: record.id,
                    first_record: index,
                    references: vec![reference],
                });
            }
        }
    }
    Ok(images)
}

/// Caption metrics of a RIC evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RicScores {
    /// Images scored.
    pub samples: usize,
    #[serde(rename = "BLEU-1")]
    pub bleu1: f64,
    #[serde(rename = "BLEU-2")]
    pub bleu2: f64,
    #[serde(rename = "BLEU-3")]
    pub bleu3: f64,
    #[serde(rename = "BLEU-4")]
    pub bleu4: f64,
    #[serde(rename = "ROUGE-L")]
    pub rouge_l: f64,
    #[serde(rename = "CIDEr-D")]
    pub cider_d: f64,
}

/// Scores `(generated caption, reference captions)` pairs (already stripped of markup, not yet
/// tokenised).
pub fn score_captions(samples: &[(String, Vec<String>)]) -> Result<RicScores, RicEvalError> {
    let pairs: Vec<CaptionPair> = samples
        .iter()
        .map(|(candidate, references)| CaptionPair {
            candidate: ptb_tokenize(candidate),
            references: references.iter().map(|r| ptb_tokenize(r)).collect(),
        })
        .collect();
    let [bleu1, bleu2, bleu3, bleu4] = bleu(&pairs)?;
    Ok(RicScores {
        samples: pairs.len(),
        bleu1,
        bleu2,
        bleu3,
        bleu4,
        rouge_l: rouge_l(&pairs)?,
        cider_d: cider_d(&pairs)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_caption_drops_end_tokens_and_vrt_groups() {
        assert_eq!(
            generated_caption("A cup (<|VRT_3|><|VRT_4|>) on a table.<|im_end|>"),
            "A cup on a table."
        );
    }
}
