//! padt-eval: generation, VRT parsing, box/mask decoding and the PaDT metrics.
//!
//! The metric modules are model-free pure functions:
//! - [`coco_eval`]: COCO bbox AP/AR (our implementation of pycocotools' COCOeval);
//! - [`grounding_metrics`]: REC Acc@IoU and RES mean IoU / cumulative IoU;
//! - [`caption_metrics`]: BLEU, ROUGE-L, CIDEr-D (as pycocoevalcap) and caption clean-up.
//!
//! Evaluation glue between records, predictions and metrics:
//! - [`prediction_lines`]: the reference's per-object prediction line (`pred_results`);
//! - [`ovd_eval`]: COCO ground truth and detections from OVD records and prediction lines;
//! - [`ric_eval`]: captions from completions and RIC records, caption scores.

pub mod caption_metrics;
pub mod coco_eval;
pub mod draw;
pub mod generate;
pub mod grounding_metrics;
pub mod ovd_eval;
pub mod parse;
pub mod postprocess;
pub mod prediction_lines;
pub mod ric_eval;
