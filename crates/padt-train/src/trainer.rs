//! The PaDT SFT step loop (ARCHITECTURE.md decision 5): a [`TrainConfig`] → optimizer steps,
//! metrics, checkpoints, exact resume.
//!
//! One optimizer step:
//! 1. the sampler gives the step's samples (PaDT's `RepeatRandomSampler` order: seeded
//!    permutation per epoch, global batch chunks, `chunk[a::GA]` for micro-step `a`), worker
//!    threads decode and prepare them ahead of time ([`padt_data::loader::Loader`]);
//! 2. per micro-batch: [`collate`] → [`compute_loss`] (the full PaDT forward and loss, decoder
//!    warm-up while `epoch < epochs · fraction` and `step < warm-up steps`) → backward of
//!    `loss / GA` (as HF does), gradients summed over the micro-batches;
//! 3. global-norm clipping ([`clip_grad_norm`]), the non-finite guard ([`NonFiniteGuard`]: a
//!    step whose loss or gradient norm is not finite is skipped, the run aborts past the limit);
//! 4. [`GroupedAdamW::step`] with the schedule's learning rate `lr_at(step)`;
//! 5. a metrics line, and a checkpoint every `checkpoint.every_steps` steps and at the end.
//!
//! Everything random is a pure function of the seed and the position: the sampler order of
//! `(seed, epoch)`, the VRT picks of `sample_rng(seed, epoch, global sample index)`, and the
//! model's random init (seeded once, only for [`ModelInit::Random`]). So a checkpoint's
//! parameters, AdamW moments, step and sampler cursor are all a resume needs to reproduce the
//! uninterrupted run's losses exactly.
//!
//! Data parallelism ([`train_data_parallel`]): one worker thread per device, each with its own
//! replica; rank `r` takes micro-batch `r` of each global chunk (the sampler's sharding), the
//! summed micro-batch gradients are averaged over the ranks through an [`AllReduce`] before
//! clipping, and the logged losses, token and FLOP counts are summed over the ranks, so every
//! rank clips, skips and updates identically. Rank 0 writes every file. The transport is the
//! in-process [`LocalGroup`] for `[cpu, cpu, ...]` and NCCL for `[cuda:0, cuda:1, ...]`.

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};
use padt_data::batch::{collate, Batch, BatchError, PreparedSample, SampleEncoder};
use padt_data::image::{DecodeOptions, ImageProcessor, ImageProcessorConfig};
use padt_data::loader::{LoadError, Loader, LoaderConfig};
use padt_data::sampler::{DatasetSpec, SampleRef, Sampler, SamplerConfig, SamplerCursor};
use padt_data::shard::{ShardDataset, ShardError, StoredImage};
use padt_data::targets::PatchSelection;
use padt_data::tokenizer::PadtTokenizer;
use padt_model::decoder::HighResOrder;
use padt_model::padt::{padt_key_renames, PadtConfig, PadtModel};
use padt_model::weights::{load_module, Checkpoint, LoadOptions};
use padt_model::{ModelError, Qwen2_5VlConfig};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{
    load_checkpoint, read_trainer_state, CheckpointError, CheckpointManager, TrainerState,
};
use crate::clip::clip_grad_norm;
use crate::distributed::{
    average_gradients, broadcast_from_rank0, run_workers, Abort, AllReduce, DistributedError,
    LocalGroup,
};
use crate::loss::LossConfig;
use crate::metrics::{
    plot_losses, process_peak_rss_bytes, summary, FlopModel, MetricsError, MetricsLog,
    MicroBatchShape, StepMetrics,
};
use crate::nonfinite::{NonFiniteGuard, StepVerdict, TooManyNonFinite};
use crate::optim::GroupedAdamW;
use crate::params::list_params;
use crate::recipe::{DeviceSpec, HighresTokenOrder, Precision, RecipeError, TrainConfig, VrtPick};
use crate::schedule::LrSchedule;
use crate::step::compute_loss;

/// Prefixes of the modules PaDT adds on top of Qwen2.5-VL (initialised fresh when training
/// starts from a base Qwen2.5-VL checkpoint).
pub const PADT_MODULE_PREFIXES: &[&str] = &["vis_norm", "vis_proj", "vl_decoder"];

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The recipe is inconsistent or names missing files.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// The model could not be built or loaded, or a forward failed.
    #[error("model: {0}")]
    Model(#[from] ModelError),
    /// A dataset could not be opened.
    #[error("dataset {name} ({dir}): {source}")]
    Dataset {
        name: String,
        dir: PathBuf,
        source: ShardError,
    },
    /// The tokenizer or image processor could not be set up.
    #[error("{0}")]
    Setup(String),
    /// A sample could not be loaded or prepared.
    #[error("{0}")]
    Sample(#[from] LoadError<SampleError>),
    /// A micro-batch could not be collated.
    #[error("collating micro-batch of records {records:?}: {source}")]
    Collate {
        records: Vec<i64>,
        source: BatchError,
    },
    /// Checkpoint writing or reading failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The metrics log or plot failed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// Too many non-finite steps.
    #[error(transparent)]
    NonFinite(#[from] TooManyNonFinite),
    /// A checkpoint does not belong to this recipe.
    #[error("cannot resume from {path}: {message}")]
    Resume { path: PathBuf, message: String },
    /// The run's configuration is not supported by this build.
    #[error("{0}")]
    Unsupported(String),
    /// A collective over the data-parallel ranks failed.
    #[error(transparent)]
    Distributed(#[from] DistributedError),
    /// A data-parallel worker failed.
    #[error("rank {rank}: {source}")]
    Rank {
        rank: usize,
        source: Box<TrainError>,
    },
    /// Writing into the output directory failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the initial parameters come from (ignored when resuming from a checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelInit {
    /// `model.path` holds weights: a PaDT checkpoint, or a base Qwen2.5-VL checkpoint whose
    /// missing PaDT modules (`vis_norm`, `vis_proj`, `vl_decoder`) start from their init.
    #[default]
    Pretrained,
    /// Only `model.path/config.json` is read; every parameter is drawn from its init with the
    /// backend seeded by the recipe's `seed` (tiny demos trained from scratch).
    Random,
}

/// Options of [`train`] that are not part of the recipe.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from the newest complete checkpoint of the output directory (start fresh
    /// when there is none).
    pub resume: bool,
    /// Stop after this many optimizer steps of this invocation, as if interrupted: a
    /// checkpoint is written, the schedule stays that of the whole run.
    pub stop_after_steps: Option<u64>,
    /// Initial parameters.
    pub init: ModelInit,
    /// Reads the training device's memory (rank 0's device) at the end of every step, for the
    /// metrics; None on CPU, where the process peak resident set is reported instead.
    pub device_memory: Option<DeviceMemoryProbe>,
}

/// Memory of a device, as its allocator reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Bytes held by live tensors.
    pub in_use_bytes: u64,
    /// Bytes reserved from the device by the allocator's pools.
    pub reserved_bytes: u64,
}

/// A function that reads a device's memory (see [`TrainOptions::device_memory`]).
#[derive(Clone)]
pub struct DeviceMemoryProbe(pub Arc<dyn Fn() -> Option<DeviceMemory> + Send + Sync>);

impl fmt::Debug for DeviceMemoryProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceMemoryProbe")
    }
}

/// What the loop reports while it runs (for progress bars and logs).
#[derive(Debug)]
pub enum TrainEvent<'a> {
    /// Training is about to start at `start_step` of `total_steps`.
    Started {
        start_step: u64,
        total_steps: u64,
        steps_per_epoch: u64,
        samples: usize,
        resumed_from: Option<&'a Path>,
    },
    /// One optimizer step finished.
    Step(&'a StepMetrics),
    /// A checkpoint was written.
    Checkpoint { step: u64, path: &'a Path },
    /// Something the user should know (a warning or a note).
    Note(String),
}

/// The result of [`train`].
pub struct TrainOutcome<B: AutodiffBackend> {
    /// The model after the last step.
    pub model: PadtModel<B>,
    /// Optimizer steps done (over all invocations).
    pub step: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
    /// Whether `stop_after_steps` ended the run before `total_steps`.
    pub stopped_early: bool,
    /// The newest checkpoint written by this invocation.
    pub last_checkpoint: Option<PathBuf>,
    /// Every metrics record of the run (resumed runs include the earlier ones).
    pub records: Vec<StepMetrics>,
    /// The one-screen end summary.
    pub summary: String,
}

/// A sample-loading job: one sample of one micro-batch.
#[derive(Clone, PartialEq, Eq)]
pub struct SampleJob {
    /// Epoch (seeds the VRT picks).
    pub epoch: u64,
    /// The sample.
    pub sample: SampleRef,
    /// Dataset name (for error messages).
    pub dataset_name: Arc<str>,
}

impl fmt::Debug for SampleJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dataset {} record {} (epoch {}, sample {})",
            self.dataset_name, self.sample.record, self.epoch, self.sample.global
        )
    }
}

/// Why a sample could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// Reading the record or its image failed.
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// Image decoding, tokenization or target building failed.
    #[error(transparent)]
    Prepare(#[from] BatchError),
    /// A referenced image under `image_root` could not be read.
    #[error("{path}: {source}")]
    Image {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The sampler cursor and the RNG description stored in `trainer_state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RngState {
    /// How random choices are derived (documentation for humans reading the file).
    pub scheme: String,
    /// The recipe seed every random choice derives from.
    pub seed: u64,
}

impl RngState {
    fn new(seed: u64) -> Self {
        RngState {
            scheme: "sampler: torch randperm(MT19937(seed)) per epoch; VRT picks: \
                     sample_rng(seed, epoch, global sample index)"
                .into(),
            seed,
        }
    }
}

/// The loss switches and weights of the recipe, as [`compute_loss`] takes them.
pub fn loss_config(config: &TrainConfig) -> LossConfig {
    let l = &config.loss;
    LossConfig {
        use_sft_vp_mask: l.use_sft_vp_mask,
        use_bbox_loss: l.use_bbox_loss,
        use_score_loss: l.use_score_loss,
        use_mask_loss: l.use_mask_loss,
        sft_weight: l.token_weight,
        giou_weight: l.bbox_giou_weight,
        l1_weight: l.bbox_l1_weight,
        score_weight: l.score_weight,
        dice_weight: l.mask_dice_weight,
        focal_weight: l.mask_focal_weight,
        focal_alpha: l.focal_alpha,
        focal_gamma: l.focal_gamma,
    }
}

/// The VRT selection of the recipe.
pub fn patch_selection(config: &TrainConfig) -> PatchSelection {
    match config.vrt.pick {
        VrtPick::Random => PatchSelection::Random {
            num: config.vrt.per_object,
        },
        VrtPick::Structured => PatchSelection::Structured,
        VrtPick::Anchored => PatchSelection::Anchored,
        VrtPick::All => PatchSelection::All,
    }
}

/// The metrics key of a [`compute_loss`] component (the reference's logged names).
pub fn metric_name(component: &str) -> String {
    match component {
        "iou" | "giou" => component.to_string(),
        other => format!("{other}_loss"),
    }
}

/// The PaDT config of `model.path/config.json` with the recipe's model switches applied. A
/// config without a `vl_decoder` section is a base Qwen2.5-VL model: the reference decoder is
/// added. Returns the config and whether it came from a base model.
pub fn model_config(config: &TrainConfig) -> Result<(PadtConfig, bool), TrainError> {
    let path = config.model.path.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let base = value.get("vl_decoder").is_none();
    let mut padt = if base {
        PadtConfig::from_qwen(Qwen2_5VlConfig::from_json_str(&text, &path)?)
    } else {
        PadtConfig::from_file(&path)?
    };
    padt.use_visual_prototype_projection = config.model.use_visual_prototype_projection;
    padt.decoder.high_res_order = match config.model.highres_token_order {
        HighresTokenOrder::Faithful => HighResOrder::Reference,
        HighresTokenOrder::Fixed => HighResOrder::Raster,
    };
    Ok((padt, base))
}

/// Builds the model of the recipe on `device` (see [`ModelInit`]); the notes say what was done.
pub fn build_model<B: Backend>(
    config: &TrainConfig,
    init: ModelInit,
    device: &B::Device,
) -> Result<(PadtModel<B>, Vec<String>), TrainError> {
    let (padt, base) = model_config(config)?;
    let mut notes = Vec::new();
    // The CPU backend draws random inits from one process-wide generator, lazily at a
    // parameter's first use. Data-parallel ranks are threads of one process: without the lock
    // and the materialisation below, their draws interleave and rank 0's init (which
    // `broadcast_from_rank0` gives everyone) depends on thread timing. Under the lock each
    // rank reseeds and draws every parameter in module order, so every rank (and every run)
    // gets the single-threaded init.
    static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _init_guard = INIT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let model = match init {
        ModelInit::Random => {
            B::seed(device, config.seed);
            notes.push(format!(
                "model: random init from {} (seed {})",
                config.model.path.join("config.json").display(),
                config.seed
            ));
            PadtModel::new(&padt, device)
        }
        ModelInit::Pretrained => {
            let checkpoint = Checkpoint::open(&config.model.path)?;
            let mut options = LoadOptions {
                allow_missing: base,
                ..LoadOptions::default()
            };
            options.renames.extend(padt_key_renames());
            if padt.qwen.tie_word_embeddings {
                options.extra_prefixes.push("lm_head".into());
            }
            if base {
                // Seed the fresh PaDT modules so a run from a base model is reproducible.
                B::seed(device, config.seed);
            }
            let (model, report) =
                load_module(PadtModel::new(&padt, device), &checkpoint, &options, device)?;
            let foreign: Vec<&String> = report
                .missing
                .iter()
                .filter(|k| !PADT_MODULE_PREFIXES.iter().any(|p| k.starts_with(p)))
                .collect();
            if !foreign.is_empty() {
                return Err(TrainError::Model(ModelError::Checkpoint {
                    path: config.model.path.clone(),
                    message: format!(
                        "base Qwen2.5-VL checkpoint lacks {} tensors outside the PaDT modules, e.g. {:?}",
                        foreign.len(),
                        &foreign[..foreign.len().min(5)]
                    ),
                }));
            }
            notes.push(if base {
                format!(
                    "model: base Qwen2.5-VL from {} ({} tensors); PaDT modules {} ({} tensors) start from their init (seed {})",
                    config.model.path.display(),
                    report.loaded.len(),
                    PADT_MODULE_PREFIXES.join(", "),
                    report.missing.len(),
                    config.seed
                )
            } else {
                format!(
                    "model: PaDT checkpoint {} ({} tensors)",
                    config.model.path.display(),
                    report.loaded.len()
                )
            });
            model
        }
    };
    let mut model = model;
    if config.training.precision == Precision::Bf16 {
        model.qwen.compute_dtype = DType::BF16;
    }
    let model = materialize_params(model);
    Ok((model, notes))
}

/// Reads every parameter once, so lazily initialised ones draw their values now, in module
/// order (see [`build_model`]).
fn materialize_params<B: Backend, M: burn::module::Module<B>>(model: M) -> M {
    struct Touch;
    impl<B: Backend> burn::module::ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    model.visit(&mut Touch);
    model
}

/// The opened datasets of the recipe with the sampler over them.
pub struct TrainData {
    /// One per `data.datasets` entry, in order.
    pub datasets: Vec<ShardDataset>,
    /// The sampler over the (repeated) concatenation.
    pub sampler: Sampler,
}

/// Opens every shard directory and builds the sampler over the recipe's ranks.
pub fn open_data(config: &TrainConfig) -> Result<TrainData, TrainError> {
    let mut datasets = Vec::new();
    let mut specs = Vec::new();
    for ds in &config.data.datasets {
        let opened = ShardDataset::open(&ds.shards).map_err(|source| TrainError::Dataset {
            name: ds.name.clone(),
            dir: ds.shards.clone(),
            source,
        })?;
        specs.push(DatasetSpec {
            name: ds.name.clone(),
            len: opened.len() as usize,
            repeat: ds.repeat,
        });
        datasets.push(opened);
    }
    let sampler = Sampler::new(
        specs,
        SamplerConfig {
            seed: config.seed,
            per_device_batch_size: config.training.per_device_batch_size,
            world_size: config.world_size(),
            gradient_accumulation_steps: config.training.gradient_accumulation_steps,
        },
    )
    .map_err(|e| TrainError::Setup(e.to_string()))?;
    Ok(TrainData { datasets, sampler })
}

/// The sampler position after `step` optimizer steps.
pub fn cursor_at(step: u64, steps_per_epoch: u64, accumulation: usize) -> SamplerCursor {
    SamplerCursor {
        epoch: step / steps_per_epoch,
        batch: (step % steps_per_epoch) * accumulation as u64,
    }
}

/// Owned iterator over the sample jobs of one rank from a cursor on, epoch after epoch.
struct SampleJobs {
    sampler: Arc<Sampler>,
    rank: usize,
    names: Vec<Arc<str>>,
    cursor: SamplerCursor,
    pending: VecDeque<SampleJob>,
}

impl Iterator for SampleJobs {
    type Item = SampleJob;

    fn next(&mut self) -> Option<SampleJob> {
        if self.pending.is_empty() {
            let epoch = self.cursor.epoch;
            let batches = self
                .sampler
                .iter(self.rank, self.cursor, Some(epoch + 1))
                .expect("cursor within the epoch");
            for batch in batches {
                for sample in batch.samples {
                    self.pending.push_back(SampleJob {
                        epoch,
                        sample,
                        dataset_name: self.names[sample.dataset].clone(),
                    });
                }
            }
            self.cursor = SamplerCursor {
                epoch: epoch + 1,
                batch: 0,
            };
        }
        self.pending.pop_front()
    }
}

/// Everything a worker needs to prepare a sample.
struct SamplePreparer {
    datasets: Vec<ShardDataset>,
    image_roots: Vec<Option<PathBuf>>,
    encoder: SampleEncoder,
    processor: ImageProcessor,
    decode: DecodeOptions,
    seed: u64,
}

impl SamplePreparer {
    fn prepare(&self, job: &SampleJob) -> Result<PreparedSample, SampleError> {
        let dataset = &self.datasets[job.sample.dataset];
        let stored = dataset.get(job.sample.record as u64)?;
        let bytes = match (&self.image_roots[job.sample.dataset], &stored.image) {
            (Some(root), StoredImage::Path(_)) => {
                let path = root.join(&stored.record.image);
                std::borrow::Cow::Owned(
                    std::fs::read(&path).map_err(|source| SampleError::Image { path, source })?,
                )
            }
            _ => stored.image_bytes()?,
        };
        Ok(self.encoder.prepare_from_bytes(
            &stored.record,
            &bytes,
            &self.processor,
            &self.decode,
            self.seed,
            job.epoch,
            job.sample.global as u64,
        )?)
    }
}

/// The tokenizer-based sample encoder and the image processor of the recipe.
pub fn sample_encoder(
    config: &TrainConfig,
    vocab_size: usize,
) -> Result<(SampleEncoder, ImageProcessor), TrainError> {
    let tok_dir = config.tokenizer_dir();
    let tokenizer = PadtTokenizer::from_dir(tok_dir, vocab_size as u32, 0)
        .map_err(|e| TrainError::Setup(format!("tokenizer {}: {e}", tok_dir.display())))?;
    let encoder = SampleEncoder::new(tokenizer, patch_selection(config))
        .map_err(|e| TrainError::Setup(format!("chat template of {}: {e}", tok_dir.display())))?;
    let pre = config.model.path.join("preprocessor_config.json");
    let mut image_config = if pre.is_file() {
        ImageProcessorConfig::from_json_file(&pre).map_err(|e| TrainError::Setup(e.to_string()))?
    } else {
        ImageProcessorConfig::default()
    };
    image_config.min_pixels = config.data.min_pixels;
    image_config.max_pixels = config.data.max_pixels;
    let processor =
        ImageProcessor::new(image_config).map_err(|e| TrainError::Setup(e.to_string()))?;
    Ok((encoder, processor))
}

fn scalar<B: Backend>(t: &Tensor<B, 1>) -> f64 {
    t.clone()
        .into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .map(|v| v[0])
        .unwrap_or(f64::NAN)
}

fn check_resume(
    path: &Path,
    state: &TrainerState,
    config: &TrainConfig,
    schedule: &LrSchedule,
    steps_per_epoch: u64,
) -> Result<SamplerCursor, TrainError> {
    let err = |message: String| TrainError::Resume {
        path: path.to_path_buf(),
        message,
    };
    if state.world_size != config.world_size()
        || state.global_batch_size != config.global_batch_size()
    {
        return Err(err(format!(
            "it was written with world size {} and global batch {}, the recipe has {} and {}",
            state.world_size,
            state.global_batch_size,
            config.world_size(),
            config.global_batch_size()
        )));
    }
    if &state.schedule != schedule {
        return Err(err(format!(
            "its learning-rate schedule {:?} differs from the recipe's {:?} (epochs, max_steps, batch or schedule changed)",
            state.schedule, schedule
        )));
    }
    let rng: RngState = serde_json::from_value(state.rng.clone())
        .map_err(|e| err(format!("bad `rng` in trainer_state.json: {e}")))?;
    if rng.seed != config.seed {
        return Err(err(format!(
            "it was written with seed {}, the recipe has seed {}",
            rng.seed, config.seed
        )));
    }
    let cursor: SamplerCursor = serde_json::from_value(state.sampler.clone())
        .map_err(|e| err(format!("bad `sampler` in trainer_state.json: {e}")))?;
    let expected = cursor_at(
        state.step,
        steps_per_epoch,
        config.training.gradient_accumulation_steps,
    );
    if cursor != expected {
        return Err(err(format!(
            "sampler cursor {cursor:?} does not match step {} ({expected:?})",
            state.step
        )));
    }
    Ok(cursor)
}

/// Runs (or resumes) the training of `config` on `device`, reporting to `observer`: one
/// data-parallel rank (`training.devices` must list one device; see [`train_data_parallel`]).
///
/// Writes `config.yaml`, the metrics log, `loss.png` and `checkpoint-<step>/` into
/// `config.output_dir`. A fresh run (no `resume`) refuses an output directory that already
/// holds checkpoints, so an old run is never mixed into a new one.
///
/// `training.gradient_checkpointing` is not read here: the caller picks the autodiff backend
/// (`Autodiff<_, BalancedCheckpointing>` for it, as `padt-train` does).
pub fn train<B: AutodiffBackend>(
    config: &TrainConfig,
    options: &TrainOptions,
    device: &B::Device,
    observer: &mut dyn FnMut(TrainEvent<'_>),
) -> Result<TrainOutcome<B>, TrainError> {
    config.validate()?;
    if config.world_size() != 1 {
        return Err(TrainError::Unsupported(format!(
            "training.devices lists {} devices: several devices train through \
             train_data_parallel (one worker thread per device), not train",
            config.world_size()
        )));
    }
    let group = LocalGroup::new(1, Duration::from_secs(1))
        .pop()
        .expect("a group of one");
    train_rank::<B, _>(config, options, device, &group, observer)
}

/// Data-parallel training: one worker thread per device of `devices` (index = rank), each with
/// its own model replica, gradients averaged through `groups[rank]` (the in-process
/// [`LocalGroup`] on CPU, NCCL on CUDA). Rank 0 reports to `observer` and writes every file;
/// its outcome is returned. A worker that fails aborts the group, and the first real error
/// (not a "peer failed" of a rank that waited on it) is returned.
pub fn train_data_parallel<B, G>(
    config: &TrainConfig,
    options: &TrainOptions,
    devices: &[B::Device],
    groups: &[G],
    observer: &mut (dyn FnMut(TrainEvent<'_>) + Send),
) -> Result<TrainOutcome<B>, TrainError>
where
    B: AutodiffBackend,
    G: AllReduce<B::InnerBackend> + Abort + Sync,
{
    config.validate()?;
    if devices.len() != config.world_size() || groups.len() != config.world_size() {
        return Err(TrainError::Unsupported(format!(
            "training.devices lists {} devices, but {} devices and {} collective handles were given",
            config.world_size(),
            devices.len(),
            groups.len()
        )));
    }
    let observer = std::sync::Mutex::new(observer);
    let results = run_workers(groups, |rank, group: &G| {
        // Subnormal floats cost Intel cores a microcode assist per operation (padt_model::denormals).
        padt_model::denormals::flush_denormals_on_this_thread();
        if rank == 0 {
            let mut observer = observer.lock().unwrap_or_else(|p| p.into_inner());
            train_rank::<B, G>(config, options, &devices[rank], group, &mut **observer)
        } else {
            train_rank::<B, G>(config, options, &devices[rank], group, &mut |_| {})
        }
    });
    let mut first_error = None;
    let mut outcome = None;
    for (rank, result) in results.into_iter().enumerate() {
        match result {
            Ok(o) if rank == 0 => outcome = Some(o),
            Ok(_) => {}
            Err(TrainError::Distributed(DistributedError::PeerFailed { .. })) => {
                if first_error.is_none() {
                    first_error = Some((rank, None));
                }
            }
            Err(e) => {
                if first_error.as_ref().is_none_or(|(_, e)| e.is_none()) {
                    first_error = Some((rank, Some(e)));
                }
            }
        }
    }
    match (first_error, outcome) {
        (Some((rank, Some(e))), _) => Err(TrainError::Rank {
            rank,
            source: Box::new(e),
        }),
        (Some((rank, None)), _) => Err(DistributedError::PeerFailed { rank }.into()),
        (None, Some(o)) => Ok(o),
        (None, None) => unreachable!("rank 0 returns an outcome or an error"),
    }
}

/// One rank of a (data-parallel) run; `comm` reduces over the ranks. With one rank nothing is
/// reduced. Rank 0 writes `config.yaml`, the metrics, the plot and the checkpoints.
pub fn train_rank<B, C>(
    config: &TrainConfig,
    options: &TrainOptions,
    device: &B::Device,
    comm: &C,
    observer: &mut dyn FnMut(TrainEvent<'_>),
) -> Result<TrainOutcome<B>, TrainError>
where
    B: AutodiffBackend,
    C: AllReduce<B::InnerBackend>,
{
    let started = Instant::now();
    config.validate()?;
    let world = comm.world_size();
    let rank = comm.rank();
    let main = rank == 0;
    if config.world_size() != world {
        return Err(TrainError::Unsupported(format!(
            "training.devices lists {} devices, but the collective group has {world} ranks",
            config.world_size()
        )));
    }
    let out_dir = &config.output_dir;
    let manager = CheckpointManager::new(out_dir, config.checkpoint.keep_last);
    let resume_from = if options.resume {
        let latest = manager.latest();
        if latest.is_none() {
            observer(TrainEvent::Note(format!(
                "--resume: no complete checkpoint in {}; starting from step 0",
                out_dir.display()
            )));
        }
        latest
    } else {
        if let Some((step, path)) = manager.latest() {
            return Err(TrainError::Unsupported(format!(
                "{} already holds checkpoint-{step} ({}): pass --resume to continue that run, \
                 or choose another output directory",
                out_dir.display(),
                path.display()
            )));
        }
        None
    };

    // Data.
    let data = open_data(config)?;
    let steps_per_epoch = data.sampler.steps_per_epoch();
    let total_steps = config
        .training
        .max_steps
        .unwrap_or(steps_per_epoch * config.training.epochs as u64);
    let schedule = LrSchedule::from_config(&config.schedule, config.optimizer.lr, total_steps);
    let samples = data.sampler.len();
    if let Some((_, path)) = &resume_from {
        // Refuse a foreign checkpoint before reading its tensors.
        let state = read_trainer_state(path)?;
        check_resume(path, &state, config, &schedule, steps_per_epoch)?;
    }

    // Model and optimizer.
    let init = if resume_from.is_some() {
        // The checkpoint overwrites every parameter: no need to read the original weights.
        ModelInit::Random
    } else {
        options.init
    };
    let (padt_config, base) = model_config(config)?;
    let (mut model, notes) = build_model::<B>(config, init, device)?;
    if resume_from.is_none() {
        for n in notes {
            observer(TrainEvent::Note(n));
        }
        if world > 1 && (init == ModelInit::Random || base) {
            // Random draws may differ between devices: every replica starts from rank 0's.
            model = broadcast_from_rank0::<B, _, _>(model, comm)?;
        }
    }
    let mut optim = GroupedAdamW::<B>::from_config(config);
    let (mut model, frozen) = optim.freeze(model);
    if !frozen.is_empty() {
        observer(TrainEvent::Note(format!(
            "frozen: {} parameter tensors",
            frozen.len()
        )));
    }
    let mut step = 0u64;
    let mut nonfinite_skips = 0usize;
    if let Some((_, path)) = &resume_from {
        let (loaded, state) = load_checkpoint::<B, _>(path, model, &mut optim, device)?;
        model = loaded;
        step = state.step;
        nonfinite_skips = state.nonfinite_skips;
    }
    let (encoder, processor) = sample_encoder(config, model.vocab_size())?;
    let tokenizer = encoder.tokenizer().clone();
    let eos = tokenizer.special_ids().eos as i64;
    let merge_size = encoder.merge_size;
    let flop_model = FlopModel::new(&list_params::<B, _>(&model), &padt_config.qwen);
    let peak_flops = peak_flops_per_device(config);
    if let (Some(peak), Some(DeviceSpec::Cuda(_)), None) = (
        peak_flops,
        config.training.devices.first(),
        config.logging.peak_tflops,
    ) {
        observer(TrainEvent::Note(format!(
            "mfu: against an assumed peak of {:.1} TFLOP/s per device (H100/H200 SXM, {} dense); \
             set logging.peak_tflops for another GPU",
            peak / 1e12,
            if config.training.precision == Precision::Bf16 {
                "bf16"
            } else {
                "TF32"
            }
        )));
    }

    // Output directory (rank 0 writes every file).
    let metrics_path = out_dir.join(&config.logging.metrics_file);
    let mut log = if main {
        std::fs::create_dir_all(out_dir).map_err(|source| TrainError::Io {
            path: out_dir.clone(),
            source,
        })?;
        config.save(&out_dir.join("config.yaml"))?;
        Some(MetricsLog::open(
            &metrics_path,
            resume_from.as_ref().map(|_| step),
        )?)
    } else {
        None
    };
    let mut rank_records: Vec<StepMetrics> = Vec::new();
    let plot_path = out_dir.join("loss.png");

    observer(TrainEvent::Started {
        start_step: step,
        total_steps,
        steps_per_epoch,
        samples,
        resumed_from: resume_from.as_ref().map(|(_, p)| p.as_path()),
    });

    let ga = config.training.gradient_accumulation_steps;
    let per_device = config.training.per_device_batch_size;
    let sampler = Arc::new(data.sampler);
    let jobs = SampleJobs {
        names: sampler
            .datasets()
            .iter()
            .map(|d| Arc::from(d.name.as_str()))
            .collect(),
        sampler: sampler.clone(),
        rank,
        cursor: cursor_at(step, steps_per_epoch.max(1), ga),
        pending: VecDeque::new(),
    };
    let preparer = Arc::new(SamplePreparer {
        datasets: data.datasets,
        image_roots: config
            .data
            .datasets
            .iter()
            .map(|d| d.image_root.clone())
            .collect(),
        encoder,
        processor,
        decode: DecodeOptions::default(),
        seed: config.seed,
    });
    let mut loader = Loader::new(
        jobs,
        move |job: &SampleJob| preparer.prepare(job),
        LoaderConfig {
            num_workers: config.data.num_workers,
            prefetch: config.data.prefetch_batches.max(1) * per_device * ga,
        },
    );

    let loss_cfg = loss_config(config);
    let mut guard = NonFiniteGuard::new(config.training.max_nonfinite_skips, nonfinite_skips);
    let mut last_checkpoint = None;
    let mut steps_this_run = 0u64;
    let mut stopped_early = false;
    let mut device_memory_peak: Option<u64> = None;
    let save = |model: &PadtModel<B>,
                optim: &GroupedAdamW<B>,
                step: u64,
                skips: usize,
                records: &[StepMetrics]|
     -> Result<PathBuf, TrainError> {
        let cursor = cursor_at(step, steps_per_epoch.max(1), ga);
        let state = TrainerState::new(
            step,
            step as f64 / steps_per_epoch.max(1) as f64,
            step * config.global_batch_size() as u64,
            schedule.clone(),
            serde_json::to_value(cursor).expect("serialisable"),
            serde_json::to_value(RngState::new(config.seed)).expect("serialisable"),
            skips,
            config.world_size(),
            config.global_batch_size(),
        );
        let path = manager.save(model, optim, &state)?;
        if config.logging.loss_plot {
            plot_losses(records, &config.run_name, &plot_path)?;
        }
        Ok(path)
    };

    while step < total_steps {
        if options.stop_after_steps == Some(steps_this_run) {
            stopped_early = true;
            break;
        }
        let step_started = Instant::now();
        let epoch = step as f64 / steps_per_epoch.max(1) as f64;
        let warmup = config
            .decoder_warmup
            .is_active(step, epoch, config.training.epochs);
        let lr = schedule.lr_at(step);
        let mut accumulator = GradientsAccumulator::<PadtModel<B>>::new();
        let mut data_wait = Duration::ZERO;
        let mut loss_sum = 0.0;
        // Sum and count per component, in LOGGED_COMPONENTS order.
        let mut component_sums = vec![(0.0f64, 0.0f64); LOGGED_COMPONENTS.len()];
        let mut tokens = 0u64;
        let mut flops = 0.0f64;
        for _ in 0..ga {
            let mut samples = Vec::with_capacity(per_device);
            for _ in 0..per_device {
                let item = loader.next().expect("the sample stream is endless")?;
                data_wait += item.wait;
                samples.push(item.value);
            }
            let batch: Batch = collate(&samples, &tokenizer, merge_size).map_err(|source| {
                TrainError::Collate {
                    records: samples.iter().map(|s| s.record_id).collect(),
                    source,
                }
            })?;
            drop(samples);
            let shape = micro_batch_shape(&batch);
            tokens += shape.sequence_tokens.iter().sum::<usize>() as u64;
            flops += flop_model.micro_batch_flops(&shape);
            let out = compute_loss(&model, &batch, &loss_cfg, warmup, eos)?;
            loss_sum += scalar(&out.loss.total);
            for (name, value) in &out.loss.components {
                let Some(i) = LOGGED_COMPONENTS.iter().position(|n| n == name) else {
                    return Err(TrainError::Setup(format!(
                        "loss component `{name}` is not in the metrics list {LOGGED_COMPONENTS:?}"
                    )));
                };
                component_sums[i].0 += value;
                component_sums[i].1 += 1.0;
            }
            let total = if ga > 1 {
                out.loss.total.div_scalar(ga as f32)
            } else {
                out.loss.total
            };
            drop(out.output);
            let grads = GradientsParams::from_grads(total.backward(), &model);
            accumulator.accumulate(&model, grads);
        }
        let mut grads = accumulator.grads();
        if world > 1 {
            // Host scalars of every rank, then the gradient mean (DDP semantics).
            let mut host = vec![loss_sum, tokens as f64, flops];
            for (sum, count) in &component_sums {
                host.push(*sum);
                host.push(*count);
            }
            let host = comm.all_reduce_sum_host(host)?;
            (loss_sum, tokens, flops) = (host[0], host[1] as u64, host[2]);
            for (i, c) in component_sums.iter_mut().enumerate() {
                *c = (host[3 + 2 * i], host[4 + 2 * i]);
            }
            grads = average_gradients::<B, _, _>(&model, grads, comm)?;
        }
        let loss = loss_sum / (ga * world) as f64;
        let (grads, clip) = clip_grad_norm::<B, _>(&model, grads, config.training.max_grad_norm);
        // Past the limit the step is still logged (as skipped) before the run aborts. Every
        // rank sees the same loss and norm, so every rank takes the same decision.
        let (verdict, fatal) = match guard.check(step + 1, loss, clip.total_norm) {
            Ok(verdict) => (verdict, None),
            Err(e) => (StepVerdict::Skip, Some(e)),
        };
        if verdict == StepVerdict::Apply {
            model = optim.step(lr, model, grads).0;
        } else {
            observer(TrainEvent::Note(format!(
                "step {}: non-finite loss {loss} or gradient norm {}; update skipped ({} skipped so far)",
                step + 1,
                clip.total_norm,
                guard.skipped()
            )));
        }
        step += 1;
        steps_this_run += 1;
        let device_memory = options.device_memory.as_ref().and_then(|p| (p.0)());
        let step_time = step_started.elapsed().as_secs_f64();
        let mut record =
            StepMetrics::new(step, step as f64 / steps_per_epoch.max(1) as f64, loss, lr);
        for (name, (sum, count)) in LOGGED_COMPONENTS.iter().zip(&component_sums) {
            if *count > 0.0 {
                record = record.with_component(&metric_name(name), sum / count);
            }
        }
        record.grad_norm = clip.total_norm.is_finite().then_some(clip.total_norm);
        record.step_time_s = step_time;
        record.data_wait_s = data_wait.as_secs_f64();
        record.samples_per_s = config.global_batch_size() as f64 / step_time.max(1e-12);
        record.tokens_per_s = tokens as f64 / step_time.max(1e-12);
        record.peak_rss_bytes = process_peak_rss_bytes();
        if let Some(mem) = device_memory {
            device_memory_peak = Some(device_memory_peak.unwrap_or(0).max(mem.reserved_bytes));
            record.device_memory_in_use_bytes = Some(mem.in_use_bytes);
            record.peak_memory_bytes = device_memory_peak;
        } else if config.training.devices.first() == Some(&DeviceSpec::Cpu) {
            record.peak_memory_bytes = record.peak_rss_bytes;
        }
        record.model_flops = Some(flops);
        record.mfu = peak_flops.map(|p| flops / step_time.max(1e-12) / (p * world as f64));
        record.skipped = verdict == StepVerdict::Skip;
        if step.is_multiple_of(config.logging.every_steps) || step == total_steps || record.skipped
        {
            match log.as_mut() {
                Some(log) => log.append(record.clone())?,
                None => rank_records.push(record.clone()),
            }
        }
        observer(TrainEvent::Step(&record));
        if let Some(e) = fatal {
            return Err(e.into());
        }
        let at_end = step == total_steps && config.checkpoint.save_final;
        if main && (step.is_multiple_of(config.checkpoint.every_steps) || at_end) {
            let records = log.as_ref().map_or(&[][..], |l| l.records());
            let path = save(&model, &optim, step, guard.skipped(), records)?;
            observer(TrainEvent::Checkpoint { step, path: &path });
            last_checkpoint = Some(path);
        }
    }
    drop(loader);
    if main
        && stopped_early
        && last_checkpoint
            .as_ref()
            .is_none_or(|p| *p != manager.path_for(step))
    {
        let records = log.as_ref().map_or(&[][..], |l| l.records());
        let path = save(&model, &optim, step, guard.skipped(), records)?;
        observer(TrainEvent::Checkpoint { step, path: &path });
        last_checkpoint = Some(path);
    }
    let records = match &log {
        Some(log) => log.records().to_vec(),
        None => rank_records,
    };
    if main && config.logging.loss_plot && !records.is_empty() {
        plot_losses(&records, &config.run_name, &plot_path)?;
    }
    let mut text = summary(
        &config.run_name,
        &records,
        started.elapsed().as_secs_f64(),
        guard.skipped(),
    );
    if world > 1 {
        text += &format!(
            "data parallel over {world} devices ({}); memory, data wait and step time are rank 0's\n",
            config
                .training
                .devices
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if stopped_early {
        text += &format!(
            "stopped after {steps_this_run} steps at step {step} of {total_steps} (--stop-after-steps); continue with --resume\n"
        );
    }
    if let Some(p) = &last_checkpoint {
        text += &format!("last checkpoint: {}\n", p.display());
    }
    Ok(TrainOutcome {
        model,
        step,
        total_steps,
        stopped_early,
        last_checkpoint,
        records,
        summary: text,
    })
}

/// The loss components of [`compute_loss`], in the order they are reduced over ranks.
pub const LOGGED_COMPONENTS: &[&str] = &[
    "sft",
    "bbox",
    "iou",
    "giou",
    "score",
    "mask_dice",
    "mask_focal",
    "mask",
];

/// The token counts and image grids of a collated micro-batch (for the FLOP count).
pub fn micro_batch_shape(batch: &Batch) -> MicroBatchShape {
    let mask = &batch.attention_mask;
    let (rows, cols) = (mask.shape[0], mask.shape[1]);
    let prompt = batch.prompt_length.min(cols);
    let mut sequence_tokens = Vec::with_capacity(rows);
    let mut completion_tokens = 0;
    for r in 0..rows {
        let row = mask.row(r);
        sequence_tokens.push(row.iter().filter(|&&m| m != 0).count());
        completion_tokens += row[prompt..].iter().filter(|&&m| m != 0).count();
    }
    MicroBatchShape {
        sequence_tokens,
        completion_tokens,
        image_grids: batch
            .image_grid_thw
            .data
            .chunks(3)
            .map(|g| [g[0] as usize, g[1] as usize, g[2] as usize])
            .collect(),
    }
}

/// Peak FLOP/s of one device for the MFU: `logging.peak_tflops`, else 989e12 (H100/H200 SXM
/// bf16 dense) for CUDA with bf16, 494.5e12 (TF32 dense) for CUDA with f32, none on CPU.
pub fn peak_flops_per_device(config: &TrainConfig) -> Option<f64> {
    if let Some(t) = config.logging.peak_tflops {
        return Some(t * 1e12);
    }
    match (config.training.devices.first(), config.training.precision) {
        (Some(DeviceSpec::Cuda(_)), Precision::Bf16) => Some(989e12),
        (Some(DeviceSpec::Cuda(_)), Precision::F32) => Some(494.5e12),
        _ => None,
    }
}
