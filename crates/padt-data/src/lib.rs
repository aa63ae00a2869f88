//! PaDT data: raw dataset readers, foreground-patch selection, the record and shard format,
//! the Qwen2.5-VL image pipeline, the tokenizer with visual reference tokens, and batches.

pub mod batch;
pub mod chat;
pub mod image;
pub mod loader;
pub mod manifest;
pub mod patches;
pub mod pyjson;
pub mod record;
pub mod sampler;
pub mod shard;
pub mod sources;
pub mod targets;
pub mod tokenizer;
pub mod vrt;
