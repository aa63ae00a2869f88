//! `padt-train`: supervised fine-tuning of a PaDT model from a YAML recipe.
//!
//! ```text
//! padt-train --config FILE [--set key=value ...] [--output-dir DIR] [--resume]
//!            [--stop-after-steps N] [--random-init]
//! ```
//!
//! Writes `config.yaml`, `metrics.jsonl`, `loss.png` and `checkpoint-<step>/` into the output
//! directory (see `docs/training.md`). `training.devices: [cpu]` runs on burn's Flex backend
//! (`[cpu, cpu, ...]`: data parallel over worker threads with an in-process all-reduce);
//! `[cuda:0, ...]` needs a build with the `cuda` feature (several GPUs: NCCL all-reduce).
//! `training.gradient_checkpointing: true` selects `Autodiff<_, BalancedCheckpointing>`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use padt_cli::referring_eval::{evaluate, EvalSettings, EvalTask};
#[cfg(not(feature = "cuda"))]
use padt_train::distributed::LocalGroup;
use padt_train::recipe::{DeviceSpec, EvaluationTask, TrainConfig};
use padt_train::trainer::{
    train, train_data_parallel, ModelInit, TrainError, TrainEvent, TrainOptions, TrainOutcome,
};

/// Supervised fine-tuning of a PaDT model.
#[derive(Debug, Parser)]
#[command(name = "padt-train", version, about)]
struct Args {
    /// The recipe (YAML), e.g. configs/padt_pro_3b.yaml.
    #[arg(long, required_unless_present = "check_nccl")]
    config: Option<PathBuf>,
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
    /// Diagnostic: all-reduce a known tensor over NCCL on these devices (comma-separated,
    /// e.g. `cuda:0` or `cuda:0,cuda:1`), check the sum, and exit (needs the `cuda` build).
    #[arg(long, value_name = "DEVICES", value_delimiter = ',', hide = true)]
    check_nccl: Option<Vec<DeviceSpec>>,
}

fn main() {
    if let Some(warning) = padt_cli::compute::init_compute_threads() {
        eprintln!("padt-train: warning: {warning}");
    }
    if let Err(e) = run() {
        eprintln!("padt-train: error: {e:#}");
        std::process::exit(1);
    }
}

fn load_config(args: &Args, config_path: &std::path::Path) -> Result<TrainConfig> {
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
    let config = TrainConfig::load(config_path, &overrides)?;
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
    if let Some(devices) = &args.check_nccl {
        return check_nccl(devices);
    }
    let Some(config_path) = &args.config else {
        bail!("--config FILE is required (the training recipe)");
    };
    let config = load_config(&args, config_path)?;
    let options = TrainOptions {
        resume: args.resume,
        stop_after_steps: args.stop_after_steps,
        init: if args.random_init {
            ModelInit::Random
        } else {
            ModelInit::Pretrained
        },
        device_memory: None,
    };
    let devices = &config.training.devices;
    if devices.iter().all(|d| *d == DeviceSpec::Cpu) {
        run_cpu(&config, &options)
    } else {
        let indices: Vec<usize> = devices
            .iter()
            .map(|d| match d {
                DeviceSpec::Cuda(i) => *i,
                DeviceSpec::Cpu => unreachable!("validate refuses mixing cpu and cuda"),
            })
            .collect();
        run_cuda(&config, &options, &indices)
    }
}

/// How long a rank waits in a host rendezvous for its peers (a checkpoint written by rank 0
/// or a slow data worker may hold the others back this long).
const PEER_TIMEOUT: Duration = Duration::from_secs(3600);

#[cfg(not(feature = "cuda"))]
fn run_cpu(config: &TrainConfig, options: &TrainOptions) -> Result<()> {
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    use burn::backend::Flex;
    if config.training.gradient_checkpointing {
        run_on::<Autodiff<Flex, BalancedCheckpointing>>(config, options, &[Default::default()])
    } else {
        run_on::<Autodiff<Flex>>(config, options, &[Default::default()])
    }
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
fn run_cuda(config: &TrainConfig, options: &TrainOptions, indices: &[usize]) -> Result<()> {
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    use burn::backend::cuda::{Cuda, CudaDevice};
    let devices: Vec<CudaDevice> = indices.iter().map(|&i| CudaDevice::new(i)).collect();
    let mut options = options.clone();
    options.device_memory = Some(padt_train::nccl::cuda_memory_probe(devices[0].clone()));
    if config.training.gradient_checkpointing {
        run_on::<Autodiff<Cuda, BalancedCheckpointing>>(config, &options, &devices)
    } else {
        run_on::<Autodiff<Cuda>>(config, &options, &devices)
    }
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(_config: &TrainConfig, _options: &TrainOptions, indices: &[usize]) -> Result<()> {
    let names: Vec<String> = indices.iter().map(|i| format!("cuda:{i}")).collect();
    bail!(
        "training.devices is [{}], but this padt-train was built without CUDA (and so without \
         NCCL data parallelism): rebuild with `CUDARC_CUDA_VERSION=13000 cargo build --release \
         --features cuda -p padt-cli --bin padt-train`, or use `--set training.devices=[cpu]`",
        names.join(", ")
    )
}

/// The data-parallel transport of a backend: in-process sums over host memory on CPU, NCCL
/// on CUDA.
trait Transport: burn::tensor::backend::AutodiffBackend {
    fn train_parallel(
        config: &TrainConfig,
        options: &TrainOptions,
        devices: &[Self::Device],
        observer: &mut (dyn FnMut(TrainEvent<'_>) + Send),
    ) -> Result<TrainOutcome<Self>, TrainError>;
}

#[cfg(not(feature = "cuda"))]
impl<C: burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy> Transport
    for Autodiff<burn::backend::Flex, C>
{
    fn train_parallel(
        config: &TrainConfig,
        options: &TrainOptions,
        _devices: &[Self::Device],
        observer: &mut (dyn FnMut(TrainEvent<'_>) + Send),
    ) -> Result<TrainOutcome<Self>, TrainError> {
        // Flex has one device: every rank is a worker thread on the CPU.
        let world = config.world_size();
        let devices = vec![Default::default(); world];
        let groups = LocalGroup::new(world, PEER_TIMEOUT);
        train_data_parallel::<Self, _>(config, options, &devices, &groups, observer)
    }
}

#[cfg(feature = "cuda")]
impl<C: burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy> Transport
    for Autodiff<burn::backend::Cuda, C>
{
    fn train_parallel(
        config: &TrainConfig,
        options: &TrainOptions,
        devices: &[Self::Device],
        observer: &mut (dyn FnMut(TrainEvent<'_>) + Send),
    ) -> Result<TrainOutcome<Self>, TrainError> {
        let groups = padt_train::nccl::NcclGroup::new(devices, PEER_TIMEOUT);
        train_data_parallel::<Self, _>(config, options, devices, &groups, observer)
    }
}

/// `--check-nccl cuda:0,cuda:1`: the NCCL self-test.
#[cfg(feature = "cuda")]
fn check_nccl(devices: &[DeviceSpec]) -> Result<()> {
    use burn::backend::cuda::CudaDevice;
    let cuda: Vec<CudaDevice> = devices
        .iter()
        .map(|d| match d {
            DeviceSpec::Cuda(i) => Ok(CudaDevice::new(*i)),
            DeviceSpec::Cpu => bail!("--check-nccl takes cuda devices, not cpu"),
        })
        .collect::<Result<_>>()?;
    let lines = padt_train::nccl::self_test(&cuda).map_err(anyhow::Error::msg)?;
    for line in lines {
        println!("{line}");
    }
    println!("nccl: ok");
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn check_nccl(_devices: &[DeviceSpec]) -> Result<()> {
    bail!("--check-nccl needs a padt-train built with the `cuda` feature")
}

fn run_on<B: Transport>(
    config: &TrainConfig,
    options: &TrainOptions,
    devices: &[B::Device],
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
    let outcome = if devices.len() == 1 && config.world_size() == 1 {
        train::<B>(config, options, &devices[0], &mut observer)?
    } else {
        B::train_parallel(config, options, devices, &mut observer)?
    };
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
        EvaluationTask::Ovd => EvalTask::Ovd,
        EvaluationTask::Ric => EvalTask::Ric,
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
