//! The source subcommands: options → `padt_data::sources::*` → `padt_data::shard::write_dataset`.

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use padt_data::manifest::{ImageMode, Manifest, SourceInfo};
use padt_data::record::SourceOutput;
use padt_data::shard::{write_dataset, WriteOptions, WriteProgress, DEFAULT_SHARD_SIZE};
use padt_data::sources::coco::{process_coco, CocoOptions, CocoSplit, DEFAULT_SEED};
use padt_data::sources::lmms::{process_lmms, LmmsOptions, RefsSplitFilter};
use padt_data::sources::padt_jsonl::{process_padt_jsonl, PadtJsonlOptions};
use padt_data::sources::refcoco::{process_refcoco, RefcocoOptions, SplitBy};
use padt_data::sources::ric::{process_ric, RicOptions};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Options every source subcommand shares: where and how to write the shards.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Output folder (created if needed). A rerun into the same folder keeps the shards whose
    /// inputs did not change.
    #[arg(long)]
    pub out: PathBuf,
    /// Input records per shard: shard k holds the records [k*N, (k+1)*N) of the source.
    #[arg(long, default_value_t = DEFAULT_SHARD_SIZE)]
    pub shard_size: usize,
    /// Keep only the first N records of the source (after the source ran, so COCO's random
    /// prompt draws are those of the full run).
    #[arg(long)]
    pub limit: Option<usize>,
    /// `embedded`: image bytes inside the shards (self-contained folder); `reference`: the
    /// image paths only (images are not read).
    #[arg(long, default_value = "embedded")]
    pub images_mode: ImageMode,
    /// Do not read image headers in embedded mode (by default a record whose image does not
    /// decode or whose size differs from the annotation is skipped and counted).
    #[arg(long)]
    pub no_image_check: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `padt-preprocess coco`.
#[derive(Debug, Clone, Args)]
pub struct CocoArgs {
    /// `instances_{train,val}2017.json`.
    #[arg(long)]
    pub annotations: PathBuf,
    /// The image folder (`train2017/` or `val2017/`).
    #[arg(long)]
    pub images: PathBuf,
    /// `train` (shuffled, randomly shortened prompts) or `val` (all 80 categories in id order).
    #[arg(long)]
    pub split: String,
    /// Seed of numpy's legacy generator for the train prompts.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u32,
    /// Output options.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `padt-preprocess refcoco`.
#[derive(Debug, Clone, Args)]
pub struct RefcocoArgs {
    /// The refer dataset folder with `instances.json` and `refs(<split-by>).p`.
    #[arg(long)]
    pub refer_dir: PathBuf,
    /// `unc` (RefCOCO, RefCOCO+), `umd` (RefCOCOg) or `google`.
    #[arg(long)]
    pub split_by: String,
    /// The COCO train2014 image folder.
    #[arg(long)]
    pub images: PathBuf,
    /// The split to write (`train`, `val`, `testA`, `testB`, `test`).
    #[arg(long)]
    pub split: String,
    /// Output options.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `padt-preprocess ric`.
#[derive(Debug, Clone, Args)]
pub struct RicArgs {
    /// `ric_instances_{train,val}2017.json`.
    #[arg(long)]
    pub annotations: PathBuf,
    /// The COCO image folder.
    #[arg(long)]
    pub images: PathBuf,
    /// Split name for the manifest (default: `train` or `val` from the file name).
    #[arg(long)]
    pub split: Option<String>,
    /// Output options.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `padt-preprocess lmms`.
#[derive(Debug, Clone, Args)]
pub struct LmmsArgs {
    /// A parquet file, or the dataset folder (its `*.parquet` and `data/*.parquet`).
    #[arg(long)]
    pub parquet: PathBuf,
    /// Only files named `<split>-*.parquet` (needed when the folder holds several splits).
    #[arg(long)]
    pub split: Option<String>,
    /// Keep only rows whose annotation is a ref of `--keep-refs-split` in this refer pickle
    /// (e.g. `refcoco/refs(unc).p`): lmms-lab's `val` merges the UNC/UMD and Google partitions.
    #[arg(long, requires = "keep_refs_split")]
    pub keep_refs: Option<PathBuf>,
    /// The refer split to keep with `--keep-refs` (e.g. `val`).
    #[arg(long, requires = "keep_refs")]
    pub keep_refs_split: Option<String>,
    /// Drop rows of the COCO image ids listed in this file (one per line, `#` comments).
    #[arg(long)]
    pub exclude_image_ids: Option<PathBuf>,
    /// Output options.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `padt-preprocess padt-jsonl`.
#[derive(Debug, Clone, Args)]
pub struct PadtJsonlArgs {
    /// A PaDT JSONL file (e.g. `refcoco_val.json` of `PaDT-MLLM/RefCOCO`).
    #[arg(long)]
    pub jsonl: PathBuf,
    /// The image folder the records' `image` names are relative to.
    #[arg(long)]
    pub images: PathBuf,
    /// Split name for the manifest (default: `train`, `val`, `testA`, ... from the file name).
    #[arg(long)]
    pub split: Option<String>,
    /// Output options.
    #[command(flatten)]
    pub output: OutputArgs,
}

fn path_value(p: &Path) -> Value {
    Value::String(p.display().to_string())
}

/// A split name guessed from a file name (`refcoco+_testA.json` → `testA`).
fn split_from_file_name(p: &Path) -> String {
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    for split in ["testA", "testB", "testC", "train", "val", "test"] {
        if stem.contains(split) {
            return split.to_string();
        }
    }
    "unknown".to_string()
}

/// Writes a source's output as shards and prints a summary.
fn write(
    kind: &str,
    options: BTreeMap<String, Value>,
    split: String,
    mut out: SourceOutput,
    args: &OutputArgs,
) -> anyhow::Result<Manifest> {
    if args.shard_size == 0 {
        bail!("--shard-size must be at least 1");
    }
    if let Some(limit) = args.limit {
        if out.items.len() > limit {
            let cut = (out.items.len() - limit) as u64;
            out.items.truncate(limit);
            out.count("records_cut_by_limit", cut);
        }
    }
    if out.items.is_empty() {
        bail!(
            "the {kind} source produced no records (counters: {}); nothing written to {}",
            serde_json::to_string(&out.counts).unwrap_or_default(),
            args.out.display()
        );
    }
    let mut options = options;
    if let Some(limit) = args.limit {
        options.insert("limit".into(), json!(limit));
    }
    let opts = WriteOptions {
        shard_size: args.shard_size,
        image_mode: args.images_mode,
        source: SourceInfo {
            kind: kind.to_string(),
            options,
        },
        split,
        tool: "padt-preprocess".to_string(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        check_image_headers: !args.no_image_check,
    };
    let bar = Mutex::new(None::<ProgressBar>);
    let progress = |p: WriteProgress| {
        if args.quiet {
            return;
        }
        let mut bar = bar.lock().expect("not poisoned");
        match p {
            WriteProgress::Start {
                shards,
                resumed,
                records,
            } => {
                if resumed > 0 {
                    eprintln!("resuming: {resumed} of {shards} shards are already written");
                }
                let pb = ProgressBar::new(records);
                pb.set_style(
                    ProgressStyle::with_template(
                        "{elapsed_precise} [{bar:40}] {pos}/{len} records ({per_sec}, eta {eta})",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                *bar = Some(pb);
            }
            WriteProgress::ShardDone { records } => {
                if let Some(pb) = bar.as_ref() {
                    pb.inc(records);
                }
            }
        }
    };
    let manifest = write_dataset(&args.out, &out.items, &out.counts, &opts, &progress)
        .with_context(|| format!("writing shards to {}", args.out.display()))?;
    if let Some(pb) = bar.lock().expect("not poisoned").take() {
        pb.finish_and_clear();
    }
    if !args.quiet {
        eprintln!(
            "wrote {} records in {} shards to {} ({} skipped)",
            manifest.total_records,
            manifest.shards.len(),
            args.out.display(),
            manifest.skipped.len()
        );
        for (reason, n) in &manifest.drop_counts {
            eprintln!("  {reason}: {n}");
        }
    }
    Ok(manifest)
}

/// `padt-preprocess coco`.
pub fn run_coco(a: CocoArgs) -> anyhow::Result<()> {
    let split = CocoSplit::parse(&a.split)
        .with_context(|| format!("--split {:?}: expected train or val", a.split))?;
    let mut opts = CocoOptions::new(&a.annotations, &a.images, split);
    opts.seed = a.seed;
    let out = process_coco(&opts)?;
    let options = BTreeMap::from([
        ("annotations".to_string(), path_value(&a.annotations)),
        ("images".to_string(), path_value(&a.images)),
        ("seed".to_string(), json!(opts.seed)),
        ("max_per_class".to_string(), json!(opts.max_per_class)),
        ("max_side".to_string(), json!(opts.max_side)),
        ("drop_rate".to_string(), json!(opts.drop_rate)),
        (
            "max_class_in_prompt".to_string(),
            json!(opts.max_class_in_prompt),
        ),
    ]);
    write("coco", options, a.split, out, &a.output)?;
    Ok(())
}

/// `padt-preprocess refcoco`.
pub fn run_refcoco(a: RefcocoArgs) -> anyhow::Result<()> {
    let split_by = SplitBy::parse(&a.split_by)
        .with_context(|| format!("--split-by {:?}: expected unc, umd or google", a.split_by))?;
    let mut opts = RefcocoOptions::new(&a.refer_dir, split_by, &a.images);
    opts.splits = vec![a.split.clone()];
    let mut outs = process_refcoco(&opts)?;
    let (_, out) = outs.pop().context("the refer source returned no split")?;
    let options = BTreeMap::from([
        ("refer_dir".to_string(), path_value(&a.refer_dir)),
        ("split_by".to_string(), json!(a.split_by)),
        ("images".to_string(), path_value(&a.images)),
    ]);
    write("refcoco", options, a.split, out, &a.output)?;
    Ok(())
}

/// `padt-preprocess ric`.
pub fn run_ric(a: RicArgs) -> anyhow::Result<()> {
    let opts = RicOptions {
        annotations: a.annotations.clone(),
        images_dir: a.images.clone(),
    };
    let out = process_ric(&opts)?;
    let split = a
        .split
        .unwrap_or_else(|| split_from_file_name(&a.annotations));
    let options = BTreeMap::from([
        ("annotations".to_string(), path_value(&a.annotations)),
        ("images".to_string(), path_value(&a.images)),
    ]);
    write("ric", options, split, out, &a.output)?;
    Ok(())
}

/// `padt-preprocess lmms`.
pub fn run_lmms(a: LmmsArgs) -> anyhow::Result<()> {
    if a.output.images_mode == ImageMode::Reference {
        bail!("lmms-lab images exist only inside the parquet files: use --images-mode embedded");
    }
    let mut opts = LmmsOptions::new(&a.parquet);
    opts.split = a.split.clone();
    opts.keep_refs = match (&a.keep_refs, &a.keep_refs_split) {
        (Some(refs), Some(split)) => Some(RefsSplitFilter {
            refs: refs.clone(),
            split: split.clone(),
        }),
        _ => None,
    };
    opts.exclude_image_ids = a.exclude_image_ids.clone();
    let out = process_lmms(&opts)?;
    let mut options = BTreeMap::from([("parquet".to_string(), path_value(&a.parquet))]);
    if let Some(s) = &a.split {
        options.insert("split".into(), json!(s));
    }
    if let (Some(r), Some(s)) = (&a.keep_refs, &a.keep_refs_split) {
        options.insert("keep_refs".into(), path_value(r));
        options.insert("keep_refs_split".into(), json!(s));
    }
    if let Some(p) = &a.exclude_image_ids {
        options.insert("exclude_image_ids".into(), path_value(p));
    }
    let split = a
        .split
        .clone()
        .unwrap_or_else(|| split_from_file_name(&a.parquet));
    write("lmms", options, split, out, &a.output)?;
    Ok(())
}

/// `padt-preprocess padt-jsonl`.
pub fn run_padt_jsonl(a: PadtJsonlArgs) -> anyhow::Result<()> {
    let opts = PadtJsonlOptions {
        jsonl: a.jsonl.clone(),
        images_dir: a.images.clone(),
    };
    let out = process_padt_jsonl(&opts)?;
    let split = a.split.unwrap_or_else(|| split_from_file_name(&a.jsonl));
    let options = BTreeMap::from([
        ("jsonl".to_string(), path_value(&a.jsonl)),
        ("images".to_string(), path_value(&a.images)),
    ]);
    write("padt-jsonl", options, split, out, &a.output)?;
    Ok(())
}
