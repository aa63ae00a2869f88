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
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use padt_train::recipe::{DeviceSpec, TrainConfig};
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
