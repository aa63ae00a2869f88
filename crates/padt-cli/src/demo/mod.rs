//! `padt-make-demo`: the synthetic referring dataset and tiny model of the CPU demo
//! (docs/demo.md).
//!
//! One run writes, under `--out`:
//! - `raw/refer/instances.json`, `raw/refer/refs(unc).p`, `raw/images/*.png`: the scenes in the
//!   refer layout (kept out of git by the folder's `.gitignore`);
//! - `shards/train`, `shards/val`: the same records `padt-preprocess refcoco` writes (the refer
//!   source of `padt_data::sources::refcoco`, then `padt_data::shard::write_dataset`), with
//!   the images embedded;
//! - `model/`: the tiny PaDT's `config.json`, the tokenizer files and (with `--weights`)
//!   seeded random weights;
//! - `README.md` and `.gitignore`.
//!
//! Everything is a function of the options: the same seed gives the same bytes.

pub mod expression;
pub mod model_dir;
pub mod refer;
pub mod scene;
pub mod tokenizer;

use anyhow::{bail, Context};
use clap::Parser;
use padt_data::manifest::{ImageMode, Manifest, SourceInfo};
use padt_data::record::ImageData;
use padt_data::shard::{write_dataset, WriteOptions};
use padt_data::sources::refcoco::{process_refcoco, RefcocoOptions, SplitBy};
use scene::{Background, SceneStyle};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Command line of `padt-make-demo`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "padt-make-demo",
    version,
    about = "Write the synthetic referring dataset and tiny PaDT model of the CPU demo"
)]
pub struct DemoArgs {
    /// Seed of every random draw (scenes, sentences, weights).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output folder (e.g. data/demo).
    #[arg(long)]
    pub out: PathBuf,
    /// Images of the train split.
    #[arg(long, default_value_t = 2000)]
    pub train_images: usize,
    /// Images of the val split (500: 994 records at seed 42, so that REC Acc@0.5 near 0.8 is
    /// within about ±0.013, one standard error, of the accuracy on unseen scenes; 50 images
    /// gave 94 records and ±0.04).
    #[arg(long, default_value_t = 500)]
    pub val_images: usize,
    /// Different sentences per train ref (val refs get one).
    #[arg(long, default_value_t = 1)]
    pub train_sentences_per_ref: usize,
    /// Records per shard.
    #[arg(long, default_value_t = 2000)]
    pub shard_size: usize,
    /// Scene background: `flat` (one grey) or `ramp` (a grey, plus colour ramps over the whole
    /// picture that tell every patch where it is; see docs/demo.md).
    #[arg(long, value_enum, default_value_t = Background::Ramp)]
    pub background: Background,
    /// Pixel side range `LOW-HIGH` of small shapes.
    #[arg(long, default_value = "26-34", value_parser = parse_side_range)]
    pub small_side: (i64, i64),
    /// Pixel side range `LOW-HIGH` of large shapes.
    #[arg(long, default_value = "42-54", value_parser = parse_side_range)]
    pub large_side: (i64, i64),
    /// Half swing of the `ramp` background's colour ramps, in levels (0-127).
    #[arg(long, default_value_t = scene::DEFAULT_RAMP_SWING)]
    pub ramp_swing: i64,
    /// Also write seeded random weights `model/model.safetensors` (about 7 MB; without them,
    /// train with `padt-train --random-init`, which draws the same initialisation).
    #[arg(long)]
    pub weights: bool,
}

/// Parses `LOW-HIGH` (pixels).
fn parse_side_range(text: &str) -> Result<(i64, i64), String> {
    let parse = |v: &str| {
        v.trim()
            .parse::<i64>()
            .map_err(|_| format!("`{text}`: expected LOW-HIGH in pixels, e.g. 16-22"))
    };
    let (lo, hi) = text
        .split_once('-')
        .ok_or_else(|| format!("`{text}`: expected LOW-HIGH in pixels, e.g. 16-22"))?;
    Ok((parse(lo)?, parse(hi)?))
}

impl DemoArgs {
    /// The scene style the options describe.
    pub fn style(&self) -> SceneStyle {
        SceneStyle {
            background: self.background,
            small_side: self.small_side,
            large_side: self.large_side,
            ramp_swing: self.ramp_swing,
        }
    }
}

/// Counts of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitSummary {
    pub split: String,
    pub images: usize,
    pub refs: usize,
    /// Records in the shards (one per sentence).
    pub records: u64,
    pub shard_bytes: u64,
}

/// What a run wrote.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    pub splits: Vec<SplitSummary>,
    /// Objects that no expression names unambiguously (left without a ref).
    pub objects_without_ref: usize,
    pub model_params: usize,
}

/// The shard folder of a split.
pub fn shard_dir(out: &Path, split: &str) -> PathBuf {
    out.join("shards").join(split)
}

/// Runs the whole generation (see the module docs).
pub fn make_demo(a: &DemoArgs) -> anyhow::Result<DemoSummary> {
    if a.train_images == 0 || a.val_images == 0 {
        bail!("--train-images and --val-images must both be at least 1");
    }
    if a.shard_size == 0 {
        bail!("--shard-size must be at least 1");
    }
    a.style()
        .validate()
        .map_err(|e| anyhow::anyhow!("--small-side / --large-side / --ramp-swing: {e}"))?;
    let out = &a.out;
    let refer_dir = out.join("raw").join("refer");
    let images_dir = out.join("raw").join("images");
    let data = refer::generate(&refer::ReferOptions {
        seed: a.seed,
        train_images: a.train_images,
        val_images: a.val_images,
        train_sentences_per_ref: a.train_sentences_per_ref,
        style: a.style(),
    });
    refer::write(&data, &refer_dir, &images_dir)?;

    let mut opts = RefcocoOptions::new(&refer_dir, SplitBy::Unc, &images_dir);
    opts.splits = vec!["train".into(), "val".into()];
    let outputs = process_refcoco(&opts)
        .with_context(|| format!("reading back the refer files in {}", refer_dir.display()))?;
    let mut splits = Vec::new();
    for (split, mut output) in outputs {
        // Every ref must survive: a skip here means a generator bug, not bad user data.
        let lost: Vec<String> = output
            .counts
            .iter()
            .filter(|(k, n)| k.contains("skipped") && **n > 0)
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        if !lost.is_empty() {
            bail!(
                "the refer source dropped demo records of split {split}: {}",
                lost.join(", ")
            );
        }
        // Embed the image bytes here, so the shards and manifest do not depend on where the
        // raw folder is (the same seed gives the same bytes in any output folder).
        for item in &mut output.items {
            if let ImageData::File(p) = &item.image {
                let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                item.image = ImageData::Bytes(bytes);
            }
        }
        let options = BTreeMap::from([
            ("generator".to_string(), json!("padt-make-demo")),
            ("seed".to_string(), json!(a.seed)),
            ("train_images".to_string(), json!(a.train_images)),
            ("val_images".to_string(), json!(a.val_images)),
            (
                "train_sentences_per_ref".to_string(),
                json!(a.train_sentences_per_ref),
            ),
            (
                "background".to_string(),
                json!(background_name(a.background)),
            ),
            (
                "small_side".to_string(),
                json!([a.small_side.0, a.small_side.1]),
            ),
            (
                "large_side".to_string(),
                json!([a.large_side.0, a.large_side.1]),
            ),
            ("ramp_swing".to_string(), json!(a.ramp_swing)),
            ("refer_dir".to_string(), json!("raw/refer")),
            ("split_by".to_string(), json!("unc")),
            ("images".to_string(), json!("raw/images")),
        ]);
        let write_opts = WriteOptions {
            shard_size: a.shard_size,
            image_mode: ImageMode::Embedded,
            source: SourceInfo {
                kind: "refcoco".into(),
                options,
            },
            split: split.clone(),
            tool: "padt-make-demo".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            check_image_headers: true,
        };
        let dir = shard_dir(out, &split);
        let manifest: Manifest =
            write_dataset(&dir, &output.items, &output.counts, &write_opts, &|_| {})
                .with_context(|| format!("writing shards to {}", dir.display()))?;
        if !manifest.skipped.is_empty() {
            bail!(
                "the shard writer skipped {} demo records of split {split}: {:?}",
                manifest.skipped.len(),
                manifest.skipped.first()
            );
        }
        let images = data
            .instances
            .images
            .iter()
            .filter(|img| {
                let first_val = refer::FIRST_IMAGE_ID + a.train_images as i64;
                (split == "train") == (img.id < first_val)
            })
            .count();
        splits.push(SplitSummary {
            images,
            refs: data.refs.iter().filter(|r| r.split == split).count(),
            records: manifest.total_records,
            shard_bytes: manifest.shards.iter().map(|s| s.bytes).sum(),
            split,
        });
    }

    let weights_seed = a.weights.then_some(a.seed);
    let model_params = model_dir::write_model_dir(&out.join("model"), weights_seed)?;
    let summary = DemoSummary {
        splits,
        objects_without_ref: data.objects_without_ref,
        model_params,
    };
    refer::write_atomic(&out.join("README.md"), readme(a, &summary).as_bytes())?;
    refer::write_atomic(
        &out.join(".gitignore"),
        b"# Intermediate refer files: the shards embed everything training needs.\nraw/\n",
    )?;
    Ok(summary)
}

fn background_name(b: Background) -> &'static str {
    match b {
        Background::Flat => "flat",
        Background::Ramp => "ramp",
    }
}

/// The folder's README.
fn readme(a: &DemoArgs, s: &DemoSummary) -> String {
    let mut text = String::from(
        "# PaDT CPU demo data\n\n\
         Synthetic referring-expression data and a tiny PaDT model for the CPU demo \
         (see docs/demo.md). Written by:\n\n",
    );
    text.push_str(&format!(
        "    padt-make-demo --seed {} --out <this folder> --train-images {} --val-images {} \
         --train-sentences-per-ref {} --shard-size {} --background {} --small-side {}-{} \
         --large-side {}-{} --ramp-swing {}{}\n\n",
        a.seed,
        a.train_images,
        a.val_images,
        a.train_sentences_per_ref,
        a.shard_size,
        background_name(a.background),
        a.small_side.0,
        a.small_side.1,
        a.large_side.0,
        a.large_side.1,
        a.ramp_swing,
        if a.weights { " --weights" } else { "" }
    ));
    text.push_str("| split | images | refs | records | shard bytes |\n|---|---|---|---|---|\n");
    for sp in &s.splits {
        text.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            sp.split, sp.images, sp.refs, sp.records, sp.shard_bytes
        ));
    }
    text.push_str(&format!(
        "\nObjects without an unambiguous expression (no ref): {}.\n\n\
         - `shards/{{train,val}}/`: Parquet shards + `manifest.json` (images embedded), the \
         format of `padt-preprocess` (docs/data.md).\n\
         - `model/`: `config.json` of the tiny PaDT ({} parameters), the demo's byte-level BPE \
         tokenizer (padt-tiny's, merges re-learned on the demo text) and processor files{}.\n\
         - `raw/` (not committed): the refer-format files the shards were made from \
         (`instances.json`, `refs(unc).p`, PNG images).\n",
        s.objects_without_ref,
        s.model_params,
        if a.weights {
            ", seeded random weights `model.safetensors`"
        } else {
            " (no weights: `padt-train --random-init` initialises the model from the seed)"
        }
    ));
    text
}
