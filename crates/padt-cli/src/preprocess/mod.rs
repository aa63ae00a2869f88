//! `padt-preprocess`: raw datasets → Parquet shards + `manifest.json`, and tools to look inside
//! a shard folder (docs/data.md).
//!
//! Subcommands: `coco`, `refcoco`, `ric`, `lmms`, `padt-jsonl` (thin: parse options, run the
//! source from `padt_data::sources`, write shards with `padt_data::shard`), `inspect`,
//! `export-jsonl`, `verify`.

pub mod alloc;
pub mod encode;
pub mod export;
pub mod inspect;
pub mod sources;
pub mod verify;

use clap::{Parser, Subcommand};

/// Command line of `padt-preprocess`.
#[derive(Debug, Parser)]
#[command(
    name = "padt-preprocess",
    version,
    about = "Turn COCO / RefCOCO / RIC / lmms-lab / PaDT JSONL data into PaDT training shards"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// COCO instances JSON → open-vocabulary detection records (process_coco.py).
    Coco(sources::CocoArgs),
    /// refer-format RefCOCO / RefCOCO+ / RefCOCOg → referring records (process_refcoco.py).
    Refcoco(sources::RefcocoArgs),
    /// RIC caption JSON → referring image captioning records (process_ric.py).
    Ric(sources::RicArgs),
    /// lmms-lab RefCOCO / RefCOCOplus / RefCOCOg parquet → referring records.
    Lmms(sources::LmmsArgs),
    /// PaDT's released JSONL files (PaDT-MLLM/*) → shards.
    PadtJsonl(sources::PadtJsonlArgs),
    /// Counts and size statistics of a shard folder.
    Inspect(inspect::InspectArgs),
    /// Write a shard folder as PaDT's JSONL, byte for byte as PaDT's scripts write it.
    ExportJsonl(export::ExportArgs),
    /// Check a shard folder: checksums, images, RLEs and patches.
    Verify(verify::VerifyArgs),
    /// Encode one image + prompt (+ completion) as the model sees it: safetensors + rendered text.
    EncodeSample(encode::EncodeSampleArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    alloc::use_one_malloc_arena();
    match cli.command {
        Command::Coco(a) => sources::run_coco(a),
        Command::Refcoco(a) => sources::run_refcoco(a),
        Command::Ric(a) => sources::run_ric(a),
        Command::Lmms(a) => sources::run_lmms(a),
        Command::PadtJsonl(a) => sources::run_padt_jsonl(a),
        Command::Inspect(a) => inspect::run(a),
        Command::ExportJsonl(a) => export::run(a),
        Command::Verify(a) => verify::run(a),
        Command::EncodeSample(a) => encode::run(a),
    }
}
