//! `padt-train`: supervised fine-tuning of a PaDT model from a YAML recipe.
//!
//! ```text
//! padt-train --config FILE [--set key=value ...] [--output-dir DIR] [--resume]
//!            [--stop-after-steps N] [--random-init]
//! ```
//!
//! Writes `config.yaml`, `metrics.jsonl`, `loss.png` and `checkpoint-<step>/` into the output
//! directory (see `docs/training.md`). `training.devices: [cpu]` runs on burn's Flex backend;
//! `cuda:N` needs a build with the `cuda` feature.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use padt_cli::referring_eval::{evaluate, EvalSettings, EvalTask};
use padt_train::recipe::{DeviceSpec, EvaluationTask, TrainConfig};
use padt_train::trainer::{train, ModelInit, TrainEvent, TrainOptions};

/// Supervised fine-tuning of a PaDT model.
#[derive(Debug, Parser)]
#[command(name = "padt-train", version, about)]
struct Args {
    /// The recipe (YAML), e.g. configs/padt_pro_3b.yaml.
    #[arg(long)]
    config: PathBuf,
    /// Override one recipe key (dotted; list elements by index), e.g. `--set optimizer.lr=1e-5`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Output directory (overrides the recipe's `output_dir`).
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Continue from the newest complete checkpoint of the output directory (starts from step
    /// 0 when there is none).
    #[arg(long)]
    resume: bool,
    /// Stop after this many optimizer steps of this invocation, as if interrupted (a checkpoint
    /// is written; the learning-rate schedule stays that of the whole run).
    #[arg(long, value_name = "N")]
    stop_after_steps: Option<u64>,
    /// Initialise every parameter randomly from `model.path/config.json` (seeded by `seed`)
    /// instead of loading weights: for tiny models trained from scratch.
    #[arg(long)]
    random_init: bool,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("padt-train: error: {e:#}");
        std::process::exit(1);
    }
}

fn load_config(args: &Args) -> Result<TrainConfig> {
    let mut overrides = args.set.clone();
    if let Some(dir) = &args.output_dir {
        let dir = dir
            .to_str()
            .context("--output-dir must be valid UTF-8")?
            .to_string();
        overrides.push(format!(
            "output_dir={}",
            serde_json::to_string(&dir).expect("a string serialises")
        ));
    }
    let config = TrainConfig::load(&args.config, &overrides)?;
    config.validate()?;
    if args.random_init {
        // Weights are not needed: check everything else, then the model's config.json.
        if let Err(e) = config.validate_paths() {
            let text = e.to_string();
            let only_weights = text
                .lines()
                .skip(1)
                .all(|l| l.contains("has no model.safetensors"));
            if !only_weights {
                return Err(e.into());
            }
        }
        let cfg = config.model.path.join("config.json");
        if !cfg.is_file() {
            bail!("--random-init: {} does not exist", cfg.display());
        }
    } else {
        config.validate_paths()?;
    }
    Ok(config)
}

fn run() -> Result<()> {
    let args = Args::parse();
    let config = load_config(&args)?;
    let options = TrainOptions {
        resume: args.resume,
        stop_after_steps: args.stop_after_steps,
        init: if args.random_init {
            ModelInit::Random
        } else {
            ModelInit::Pretrained
        },
    };
    match config.training.devices.as_slice() {
        [DeviceSpec::Cpu] => run_cpu(&config, &options),
        [DeviceSpec::Cuda(index)] => run_cuda(&config, &options, *index),
        devices => bail!(
            "training.devices {:?}: several devices need data-parallel training over NCCL, \
             which this build does not have yet; use one device",
            devices.iter().map(|d| d.to_string()).collect::<Vec<_>>()
        ),
    }
}

#[cfg(not(feature = "cuda"))]
fn run_cpu(config: &TrainConfig, options: &TrainOptions) -> Result<()> {
    run_on::<Autodiff<burn::backend::Flex>>(config, options, &Default::default())
}

#[cfg(feature = "cuda")]
fn run_cpu(_config: &TrainConfig, _options: &TrainOptions) -> Result<()> {
    // burn 0.21's `distributed` feature (part of our `cuda` feature) makes `Autodiff<Flex>`
    // unusable (ARCHITECTURE.md decision 1).
    bail!(
        "training.devices is [cpu], but this padt-train was built with the `cuda` feature, which \
         rules out the CPU backend: use `--set training.devices=[cuda:0]`, or a default build \
         for CPU training"
    )
}

#[cfg(feature = "cuda")]
fn run_cuda(config: &TrainConfig, options: &TrainOptions, index: usize) -> Result<()> {
    use burn::backend::cuda::{Cuda, CudaDevice};
    run_on::<Autodiff<Cuda>>(config, options, &CudaDevice::new(index))
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(_config: &TrainConfig, _options: &TrainOptions, index: usize) -> Result<()> {
    bail!(
        "training.devices names cuda:{index}, but this padt-train was built without CUDA: \
         rebuild with `CUDARC_CUDA_VERSION=13000 cargo build --release --features cuda -p padt-cli \
         --bin padt-train`, or use `--set training.devices=[cpu]`"
    )
}

fn run_on<B: burn::tensor::backend::AutodiffBackend>(
    config: &TrainConfig,
    options: &TrainOptions,
    device: &B::Device,
) -> Result<()> {
    let bar = ProgressBar::hidden();
    let show_bar = config.logging.progress_bar;
    let mut observer = |event: TrainEvent<'_>| match event {
        TrainEvent::Started {
            start_step,
            total_steps,
            steps_per_epoch,
            samples,
            resumed_from,
        } => {
            if let Some(p) = resumed_from {
                say(
                    &bar,
                    format!("resumed from {} (step {start_step})", p.display()),
                );
            }
            say(&bar, format!(
                "{}: {samples} samples, {steps_per_epoch} steps per epoch, {total_steps} steps, output {}",
                config.run_name,
                config.output_dir.display()
            ));
            if show_bar {
                bar.set_draw_target(ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{bar:30} step {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
                    )
                    .expect("valid template"),
                );
                bar.enable_steady_tick(Duration::from_millis(500));
            }
            bar.set_length(total_steps);
            bar.set_position(start_step);
            bar.reset_eta();
        }
        TrainEvent::Step(m) => {
            bar.set_position(m.step);
            let loss = m.loss.map_or("nan".to_string(), |l| format!("{l:.4}"));
            bar.set_message(format!(
                "loss {loss} lr {:.2e} {:.2} samples/s",
                m.lr, m.samples_per_s
            ));
            if !show_bar {
                eprintln!(
                    "step {}/{} loss {loss} lr {:.3e} grad_norm {} {:.2} samples/s",
                    m.step,
                    bar.length().unwrap_or(0),
                    m.lr,
                    m.grad_norm.map_or("nan".into(), |g| format!("{g:.4}")),
                    m.samples_per_s
                );
            }
        }
        TrainEvent::Checkpoint { step, path } => {
            say(&bar, format!("step {step}: checkpoint {}", path.display()));
        }
        TrainEvent::Note(text) => say(&bar, text),
    };
    let outcome = train::<B>(config, options, device, &mut observer)?;
    bar.finish_and_clear();
    print!("{}", outcome.summary);
    if let (Some(shards), false) = (&config.evaluation.shards, outcome.stopped_early) {
        evaluate_final(config, &outcome.model.valid(), shards)?;
    }
    Ok(())
}

/// Evaluates the final model on `evaluation.shards` and writes `eval_metrics.json` (with
/// `rec_acc@0.5` for REC) and `eval_predictions.jsonl` into the output directory.
fn evaluate_final<B: burn::tensor::backend::Backend>(
    config: &TrainConfig,
    model: &padt_model::padt::PadtModel<B>,
    shards: &std::path::Path,
) -> Result<()> {
    let e = &config.evaluation;
    let task = match e.task {
        EvaluationTask::Rec => EvalTask::Rec,
        EvaluationTask::Res => EvalTask::Res,
    };
    eprintln!("evaluating the final model on {}", shards.display());
    let report = evaluate(
        model,
        config.tokenizer_dir(),
        &config.model.path,
        &EvalSettings {
            data: shards.to_path_buf(),
            task,
            batch_size: e.batch_size,
            limit: e.limit,
            max_new_tokens: e.max_new_tokens,
        },
    )
    .context("final evaluation")?;
    // Metric names prefixed by the task, as the run-directory interface documents them.
    let mut metrics = serde_json::Map::new();
    if let serde_json::Value::Object(summary) = &report.summary {
        for (k, v) in summary {
            let key = match k.as_str() {
                "task" | "samples" => k.clone(),
                _ => format!("{}_{k}", summary["task"].as_str().unwrap_or("eval")),
            };
            metrics.insert(key, v.clone());
        }
    }
    metrics.insert("data".into(), shards.display().to_string().into());
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(metrics.clone()))? + "\n";
    let out = &config.output_dir;
    padt_data::shard::write_file_atomic(&out.join("eval_metrics.json"), text.as_bytes())
        .with_context(|| format!("{}: writing eval_metrics.json", out.display()))?;
    padt_data::shard::write_file_atomic(
        &out.join("eval_predictions.jsonl"),
        report.predictions_jsonl.as_bytes(),
    )
    .with_context(|| format!("{}: writing eval_predictions.jsonl", out.display()))?;
    println!("evaluation: {}", serde_json::Value::Object(metrics));
    Ok(())
}

/// Prints a line above the progress bar, or to stderr when no bar is drawn.
fn say(bar: &ProgressBar, text: impl AsRef<str>) {
    if bar.is_hidden() {
        eprintln!("{}", text.as_ref());
    } else {
        bar.println(text);
    }
}
