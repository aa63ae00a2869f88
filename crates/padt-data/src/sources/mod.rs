//! Raw dataset readers: each turns one source into [`crate::record::SourceOutput`], reproducing
//! what PaDT's `src/preprocess/*.py` writes (padt-reference.md §5).

pub mod coco;
pub mod error;
pub mod lmms;
pub mod padt_jsonl;
pub mod refcoco;
pub mod ric;

pub use error::SourceError;
