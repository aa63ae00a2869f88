//! `padt-eval`: evaluation commands.
//!
//! `padt-eval coco-map --gt instances.json --pred detections.json` scores COCO-format detections
//! with the COCO bbox protocol (our implementation of pycocotools' COCOeval) and prints the 12
//! standard numbers as one JSON object.
//!
//! `padt-eval run --model DIR --data SHARDS --task rec|res|ovd|ric` generates with a checkpoint
//! on shard records and scores the task; `padt-eval score --task ovd|ric` scores prediction files
//! (ours or the reference's) against shard records. See docs/evaluation.md.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use padt_eval::coco_eval::{self, CocoGroundTruth};

use padt_cli::referring_eval as grounding;

#[derive(Parser)]
#[command(name = "padt-eval", about = "Evaluate PaDT predictions", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// COCO bbox AP/AR of a detections file against a COCO instances file (12 numbers, JSON).
    CocoMap(CocoMapArgs),
    /// Run a PaDT checkpoint on the records of a shard dataset and score REC / RES / OVD / RIC.
    Run(grounding::RunArgs),
    /// Score OVD results or RIC captions files against the records of a shard dataset.
    Score(grounding::ScoreArgs),
}

#[derive(Args)]
struct CocoMapArgs {
    /// COCO instances JSON (images, categories, annotations with id, image_id, category_id,
    /// bbox [x,y,w,h], area, iscrowd).
    #[arg(long)]
    gt: PathBuf,
    /// COCO results JSON: a list of {image_id, category_id, bbox [x,y,w,h], score}.
    #[arg(long)]
    pred: PathBuf,
    /// Score an empty detections list (all numbers 0, or -1 where there is no ground truth)
    /// instead of refusing it.
    #[arg(long)]
    allow_empty: bool,
}

fn coco_map(args: &CocoMapArgs) -> Result<()> {
    let truth = CocoGroundTruth::from_path(&args.gt)
        .with_context(|| format!("reading the ground truth {}", args.gt.display()))?;
    let detections = coco_eval::load_detections(&args.pred)
        .with_context(|| format!("reading the detections {}", args.pred.display()))?;
    if detections.is_empty() && !args.allow_empty {
        bail!(
            "{} holds no detections; pass --allow-empty to score it anyway (every AP/AR is then 0, \
             or -1 where there is no ground truth)",
            args.pred.display()
        );
    }
    if truth.skipped_unknown_image > 0 || truth.skipped_unknown_category > 0 {
        eprintln!(
            "warning: {}: {} annotation(s) on images not in \"images\" and {} of categories not in \
             \"categories\" are left out (as pycocotools does)",
            args.gt.display(),
            truth.skipped_unknown_image,
            truth.skipped_unknown_category
        );
    }
    let checked = truth.check_detections(detections, &args.pred.display().to_string())?;
    if checked.skipped_unknown_category > 0 {
        eprintln!(
            "warning: {}: {} detection(s) of categories not in the ground truth are left out (as \
             pycocotools does)",
            args.pred.display(),
            checked.skipped_unknown_category
        );
    }
    let evaluation = coco_eval::evaluate(&truth, &checked.detections);
    println!("{}", serde_json::to_string(&evaluation.summary)?);
    Ok(())
}

fn main() -> Result<()> {
    if let Some(warning) = padt_cli::compute::init_compute_threads() {
        eprintln!("padt-eval: warning: {warning}");
    }
    let cli = Cli::parse();
    match &cli.command {
        Command::CocoMap(args) => coco_map(args),
        Command::Run(args) => grounding::run(args),
        Command::Score(args) => grounding::score(args),
    }
}
