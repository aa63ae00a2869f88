//! Qwen2.5-VL (transformers 4.50 `Qwen2_5_VLForConditionalGeneration`).

pub mod config;
pub mod model;
pub mod rope;
pub mod text;
pub mod vision;
