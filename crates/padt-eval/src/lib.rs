//! padt-eval: generation, VRT parsing, box/mask decoding and the PaDT metrics.
//!
//! The metric modules are model-free pure functions:
//! - [`coco_eval`]: COCO bbox AP/AR (our implementation of pycocotools' COCOeval);
//! - [`grounding_metrics`]: REC Acc@IoU and RES mean IoU / cumulative IoU;
//! - [`caption_metrics`]: BLEU, ROUGE-L, CIDEr-D (as pycocoevalcap) and caption clean-up.

pub mod caption_metrics;
pub mod coco_eval;
pub mod draw;
pub mod generate;
pub mod grounding_metrics;
pub mod parse;
pub mod postprocess;
