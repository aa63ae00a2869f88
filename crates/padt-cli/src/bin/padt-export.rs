//! `padt-export`: a training checkpoint → a Hugging Face / PaDT model directory.
//!
//! ```text
//! padt-export --checkpoint RUN_OR_CHECKPOINT_DIR --out HF_DIR [--dtype bf16|f16|f32]
//!             [--max-shard-size 5GB] [--force] [--config RUN/config.yaml] [--model-dir DIR]
//! ```
//!
//! Writes `config.json`, `model.safetensors` (or `model-0000i-of-0000n.safetensors` shards and
//! `model.safetensors.index.json`) with the HF/PaDT key names, and the tokenizer and processor
//! files of the model directory; `PaDTForConditionalGeneration.from_pretrained` and `padt-infer`
//! load the result. See docs/training.md ("Export").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use clap::Parser;
use padt_model::padt::{PadtModel, PadtTrainInput};
use padt_model::weights::{Checkpoint, LoadOptions};
use padt_train::export::{
    export_checkpoint, parse_dtype, parse_shard_size, ExportRequest, CONFIG_FILE,
};
use padt_train::tensor_io::{StreamingWriter, TensorSpec};
use safetensors::tensor::Dtype;

type B = Flex;

/// Export a padt-train checkpoint as a Hugging Face / PaDT model directory.
#[derive(Debug, Parser)]
#[command(name = "padt-export", version, about)]
struct Args {
    /// A `checkpoint-<step>/` directory, or a run directory (its newest complete checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The directory to write (created; must not exist or be empty unless --force).
    #[arg(long)]
    out: PathBuf,
    /// Float type of the weight files: bf16 (as the released PaDT checkpoints), f16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Largest weight file (tensor bytes), as transformers' max_shard_size: 5GB, 500MB, 2GiB.
    #[arg(long, default_value = "5GB")]
    max_shard_size: String,
    /// Replace a non-empty --out.
    #[arg(long)]
    force: bool,
    /// The run's resolved recipe (default: config.yaml of the run directory).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The model directory with config.json and the tokenizer/processor files (default: the
    /// recipe's model.path, relative to the working directory).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Verification only (tools/check_export.py): after exporting, load --out as padt-infer
    /// does, run the training forward on this batch file (padt-tiny batch.safetensors layout)
    /// and write the completion logits and decoder outputs to --dump-forward-to.
    #[arg(long, hide = true, requires = "dump_forward_to")]
    dump_forward: Option<PathBuf>,
    /// Output safetensors of --dump-forward.
    #[arg(long, hide = true, requires = "dump_forward")]
    dump_forward_to: Option<PathBuf>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("padt-export: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    let request = ExportRequest {
        checkpoint: args.checkpoint.clone(),
        out: args.out.clone(),
        run_config: args.config.clone(),
        model_dir: args.model_dir.clone(),
        dtype: parse_dtype(&args.dtype)?,
        max_shard_bytes: parse_shard_size(&args.max_shard_size)?,
        force: args.force,
    };
    let device = Default::default();
    // A full-size export reads and writes gigabytes: show that it is working (stderr, only on
    // a terminal).
    let spinner = indicatif::ProgressBar::new_spinner().with_message(format!(
        "exporting {} to {}",
        args.checkpoint.display(),
        args.out.display()
    ));
    spinner.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .expect("a valid template"),
    );
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let summary = export_checkpoint::<B>(&request, &device);
    spinner.finish_and_clear();
    let summary = summary?;
    let shards = summary
        .weights
        .files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "safetensors"))
        .count();
    println!(
        "exported {} (step {}) to {}: {} tensors, {:.1} MB of {}, {} safetensors file(s){}",
        summary.checkpoint.display(),
        summary.step,
        args.out.display(),
        summary.weights.tensors,
        summary.weights.total_size as f64 / 1e6,
        args.dtype,
        shards,
        if shards > 1 { " + index" } else { "" }
    );
    println!(
        "copied from {}: {}",
        summary.model_dir.display(),
        if summary.copied.is_empty() {
            "nothing".to_string()
        } else {
            summary.copied.join(", ")
        }
    );
    if !summary.missing.is_empty() {
        println!("not found (not copied): {}", summary.missing.join(", "));
    }
    for note in &summary.notes {
        eprintln!("note: {note}");
    }
    if let (Some(batch), Some(to)) = (&args.dump_forward, &args.dump_forward_to) {
        dump_forward(&args.out, batch, to).context("--dump-forward")?;
        println!("forward on {} written to {}", batch.display(), to.display());
    }
    Ok(())
}

/// An I64 tensor of a safetensors file: shape and values.
fn read_i64(file: &Checkpoint, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
    let (dtype, shape, bytes) = file
        .raw(name)
        .with_context(|| format!("{}: no tensor `{name}`", file.root().display()))?;
    ensure!(
        dtype == Dtype::I64,
        "{}: `{name}` is {dtype:?}, expected I64",
        file.root().display()
    );
    let values = bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    Ok((shape.to_vec(), values))
}

fn rows(shape: &[usize], values: Vec<i64>) -> Vec<Vec<i64>> {
    values.chunks(shape[1]).map(<[i64]>::to_vec).collect()
}

/// Loads the export with the HF loader path and writes its training-forward outputs on `batch`.
fn dump_forward(export: &Path, batch: &Path, to: &Path) -> Result<()> {
    let device = Default::default();
    let (model, report) = PadtModel::<B>::from_pretrained(export, &LoadOptions::default(), &device)
        .with_context(|| format!("loading {}", export.display()))?;
    ensure!(report.missing.is_empty() && report.unused.is_empty());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(export.join(CONFIG_FILE))?)?;
    let Some(eos) = config["eos_token_id"].as_i64() else {
        bail!("{}: no integer eos_token_id", export.display());
    };

    let file = Checkpoint::open(batch)?;
    let (ids_shape, ids) = read_i64(&file, "input_ids")?;
    let (mask_shape, mask) = read_i64(&file, "attention_mask")?;
    let (_, prompt_len) = read_i64(&file, "prompt_length")?;
    let (_, grids) = read_i64(&file, "image_grid_thw")?;
    let pixels = file.read_f32("pixel_values")?;
    let pixel_shape = file.shape("pixel_values").context("pixel_values")?.to_vec();
    let input = PadtTrainInput {
        input_ids: rows(&ids_shape, ids),
        attention_mask: rows(&mask_shape, mask)
            .into_iter()
            .map(|r| r.into_iter().map(|m| m != 0).collect())
            .collect(),
        prompt_len: prompt_len[0] as usize,
        pixel_values: Tensor::<B, 2>::from_data(TensorData::new(pixels, pixel_shape), &device),
        image_grid_thw: grids
            .chunks(3)
            .map(|g| [g[0] as usize, g[1] as usize, g[2] as usize])
            .collect(),
        warmup: false,
    };
    let out = model.forward_train(&input, eos)?;
    ensure!(
        out.has_objects,
        "the batch's completions hold no VRT run: nothing for the decoder"
    );
    let mut tensors: Vec<(&str, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut push = |name, data: TensorData| {
        let shape = data.shape.to_vec();
        tensors.push((name, shape, data.convert::<f32>().to_vec::<f32>().unwrap()));
    };
    push("logits", out.logits.into_data());
    push("pred_boxes", out.decoder.pred_boxes.into_data());
    push("pred_score", out.decoder.pred_score.into_data());
    if let Some(mask) = out.decoder.pred_mask {
        push("pred_mask", mask.into_data());
    }
    let specs = tensors
        .iter()
        .map(|(name, shape, _)| TensorSpec {
            name: name.to_string(),
            shape: shape.clone(),
        })
        .collect();
    let mut writer = StreamingWriter::create(to, specs, &BTreeMap::new())?;
    for (name, _, values) in &tensors {
        writer.write_next(name, values)?;
    }
    writer.finish()?;
    Ok(())
}
