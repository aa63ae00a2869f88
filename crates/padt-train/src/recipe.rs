//! The training recipe: every setting of a PaDT SFT run, read from YAML.
//!
//! A recipe file (`configs/*.yaml`) deserialises into [`TrainConfig`]. Every struct denies
//! unknown fields and fills missing ones with the defaults below (the PaDT reference values,
//! `padt-reference.md` §4). `--set a.b.c=value` overrides are applied to the YAML value tree of
//! the fully resolved config and the result is deserialised again, so an override goes through
//! exactly the same checks as the file. [`TrainConfig::validate`] checks internal consistency
//! without touching the disk; [`TrainConfig::validate_paths`] checks that the model, tokenizer
//! and shard directories exist. [`TrainConfig::to_yaml`] writes the resolved config that every
//! run saves as `config.yaml`.
//!
//! The field documentation below is also the key reference of `docs/training.md`
//! (see [`crate::keydoc`]): keep one `///` paragraph per field.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

/// Errors of reading, overriding and validating a recipe.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The recipe file could not be read.
    #[error("cannot read recipe {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The YAML is malformed or does not match the recipe structure.
    #[error("invalid recipe {origin}: {message}")]
    Parse { origin: String, message: String },
    /// A `--set` argument is not of the form `key=value`.
    #[error("invalid override `{0}`: expected key=value, e.g. optimizer.lr=1e-5")]
    OverrideSyntax(String),
    /// A `--set` key names no setting.
    #[error("unknown key `{key}` in override `{arg}`{hint}")]
    UnknownKey {
        key: String,
        arg: String,
        hint: String,
    },
    /// A `--set` index is past the end of a list.
    #[error("override `{arg}`: index {index} is out of range for `{list}` ({len} entries)")]
    IndexOutOfRange {
        arg: String,
        list: String,
        index: usize,
        len: usize,
    },
    /// The recipe is internally inconsistent (one line per problem).
    #[error("invalid recipe:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
    /// Files or directories the recipe names are missing (one line per problem).
    #[error("recipe names missing files:\n  - {}", .0.join("\n  - "))]
    MissingPaths(Vec<String>),
    /// The resolved config could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A PaDT supervised fine-tuning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Name of the run, shown in logs and the end summary (the reference's `EXP_NAME`).
    pub run_name: String,
    /// Directory receiving `config.yaml`, `metrics.jsonl`, `loss.png` and the `checkpoint-<step>/` folders.
    pub output_dir: PathBuf,
    /// Seed of every random choice: sampler order, VRT picks, dummy objects (reference 42).
    pub seed: u64,
    /// The model to fine-tune.
    pub model: ModelConfig,
    /// The training data.
    pub data: DataConfig,
    /// Epochs, batch sizes, devices, precision.
    pub training: TrainingConfig,
    /// AdamW settings.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// Visual Reference Tokens chosen per object in the target sequence.
    pub vrt: VrtConfig,
    /// Decoder warm-up: feed the decoder prototype features instead of LLM hidden states early on.
    pub decoder_warmup: DecoderWarmupConfig,
    /// Loss switches and weights.
    pub loss: LossConfig,
    /// Parameters excluded from training.
    pub freeze: FreezeConfig,
    /// Parameter groups with their own learning-rate multiplier or weight decay; a parameter belongs to the first group with a matching prefix, else to the default group (`optimizer.*`).
    pub param_groups: Vec<ParamGroupConfig>,
    /// Checkpointing.
    pub checkpoint: CheckpointConfig,
    /// Metrics log, plot and progress display.
    pub logging: LoggingConfig,
    /// Evaluation of the final model on referring records, written to `eval_metrics.json`.
    pub evaluation: EvaluationConfig,
}

/// The model to fine-tune.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Hugging Face–layout model directory: `config.json` plus `model.safetensors` or `model.safetensors.index.json` with its shards.
    pub path: PathBuf,
    /// Directory with `tokenizer.json`; null means the model directory.
    pub tokenizer: Option<PathBuf>,
    /// Project LLM-side prototypes through `vis_norm`/`vis_proj` (reference `use_visual_prototype_projection`, true).
    pub use_visual_prototype_projection: bool,
    /// Order of the high-resolution ViT features fed to the decoder: `faithful` (the reference's window-permuted order, matches released weights) or `fixed` (raster order; reference §8.1).
    pub highres_token_order: HighresTokenOrder,
}

/// Order of the high-resolution ViT features given to the PaDT decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HighresTokenOrder {
    /// As the reference code does (window-permuted, 2×2-grouped).
    Faithful,
    /// Un-permuted raster order.
    Fixed,
}

/// The training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Shard directories (each with `manifest.json`), concatenated in this order before shuffling.
    pub datasets: Vec<DatasetConfig>,
    /// Minimum image area in pixels before `smart_resize` (reference 3136 = 4·28²).
    pub min_pixels: u64,
    /// Maximum image area in pixels before `smart_resize` (reference 12845056 = 16384·28²).
    pub max_pixels: u64,
    /// Host threads decoding and batching samples.
    pub num_workers: usize,
    /// Ready batches kept ahead of the training step.
    pub prefetch_batches: usize,
}

/// One dataset of the mixture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetConfig {
    /// Short name used in logs (e.g. `coco_train`).
    pub name: String,
    /// Shard directory written by `padt-preprocess` (holds `manifest.json`).
    pub shards: PathBuf,
    /// How many times the dataset is listed in a row (the Pro recipe lists COCO twice: `repeat: 2`).
    pub repeat: usize,
    /// Image root for shards that reference images by path; null when images are embedded.
    pub image_root: Option<PathBuf>,
}

/// Epochs, batch sizes, devices, precision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingConfig {
    /// Passes over the (repeated) dataset mixture (reference 4 for 3B, 6 for 7B).
    pub epochs: usize,
    /// Stop after this many optimizer steps (also the schedule length); null means epochs × steps per epoch.
    pub max_steps: Option<u64>,
    /// Samples per device per micro-batch (reference 16).
    pub per_device_batch_size: usize,
    /// Micro-batches accumulated per optimizer step (reference 1).
    pub gradient_accumulation_steps: usize,
    /// Samples per optimizer step over all devices; if set it must equal devices × per-device batch × accumulation (reference 128).
    pub global_batch_size: Option<usize>,
    /// Devices, one data-parallel worker each: `[cpu]` or `[cuda:0, ..., cuda:7]`.
    pub devices: Vec<DeviceSpec>,
    /// Compute precision: `f32`, or `bf16` (bf16 compute, f32 master weights and AdamW state; GPU).
    pub precision: Precision,
    /// Recompute activations in backward to save memory (reference: on for the LLM and the ViT).
    pub gradient_checkpointing: bool,
    /// Global gradient-norm clipping threshold (torch `clip_grad_norm_`); null disables clipping (reference 1.0).
    pub max_grad_norm: Option<f64>,
    /// Steps with a non-finite loss or gradient norm that are skipped before the run aborts.
    pub max_nonfinite_skips: usize,
}

/// A device of the data-parallel group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceSpec {
    /// The CPU (burn `Flex`).
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid device `{s}`: expected `cpu` or `cuda:N`");
        match s.trim() {
            "cpu" => Ok(DeviceSpec::Cpu),
            other => other
                .strip_prefix("cuda:")
                .ok_or_else(bad)?
                .parse::<usize>()
                .map(DeviceSpec::Cuda)
                .map_err(|_| bad()),
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Compute precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    F32,
    /// bf16 compute with f32 master weights, AdamW state, norms, softmax statistics and losses.
    Bf16,
}

/// AdamW settings (torch `AdamW` semantics: decoupled weight decay, bias-corrected moments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Peak learning rate of the default group (reference 2e-5).
    pub lr: f64,
    /// Exponential decay rates of the first and second moments (reference [0.9, 0.999]).
    pub betas: [f64; 2],
    /// Term added to the denominator (reference 1e-8).
    pub eps: f64,
    /// Decoupled weight decay of the default group (reference 0).
    pub weight_decay: f64,
    /// Exempt biases and normalisation weights (every parameter of rank 1, or named `bias`/`beta`/`gamma`/`*norm*`) from weight decay.
    pub no_decay_norms_and_biases: bool,
}

/// Learning-rate schedule (Hugging Face `get_*_schedule_with_warmup` semantics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// `linear` (decay to 0; reference), `cosine` (half-cosine to 0) or `constant`.
    pub kind: ScheduleKind,
    /// Linear warm-up steps from 0 to the peak; when 0, `warmup_ratio` decides (reference 0).
    pub warmup_steps: u64,
    /// Warm-up as a fraction of the total steps (rounded up), used when `warmup_steps` is 0.
    pub warmup_ratio: f64,
    /// Number of cosine waves over the decay phase (0.5 = one half-cosine to 0); cosine only.
    pub num_cycles: f64,
}

/// Learning-rate schedule kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Linear decay to zero after the warm-up.
    Linear,
    /// Cosine decay to zero after the warm-up.
    Cosine,
    /// Constant after the warm-up.
    Constant,
}

/// Visual Reference Tokens per object (reference `random_select_patch*`, §3.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VrtConfig {
    /// `random` (uniform picks, without replacement unless the object has fewer patches), `structured` (centre + leftmost/topmost/rightmost/bottommost patch: always 5), `anchored` (the same five, each the patch nearest the object's box centre instead of a random one: the same VRTs every time an object is seen; padt-rs only, not in the reference) or `all` (every foreground patch).
    pub pick: VrtPick,
    /// VRTs per object for `random` picks (reference 5).
    pub per_object: usize,
}

/// How VRT patches are picked per object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VrtPick {
    /// Fresh uniform picks every time a sample is seen.
    Random,
    /// Centre, leftmost, topmost, rightmost, bottommost patch.
    Structured,
    /// The structured five, each the patch nearest the object's box centre (not in the
    /// reference: deterministic targets).
    Anchored,
    /// Every foreground patch.
    All,
}

/// Decoder warm-up (reference `use_warm_up`, §3.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecoderWarmupConfig {
    /// Enable the warm-up (reference true).
    pub enabled: bool,
    /// Warm-up lasts while the optimizer step is below this (reference 300).
    pub steps: u64,
    /// ... and while the fractional epoch is below this fraction of the epochs (reference 0.25).
    pub epoch_fraction: f64,
}

impl DecoderWarmupConfig {
    /// Whether the decoder gets prototype features at this point of training.
    ///
    /// `global_step` = optimizer steps done so far, `epoch` = fractional epochs done so far
    /// (as HF's `state.epoch`), `num_epochs` = the recipe's epochs.
    pub fn is_active(&self, global_step: u64, epoch: f64, num_epochs: usize) -> bool {
        self.enabled && global_step < self.steps && epoch < num_epochs as f64 * self.epoch_fraction
    }
}

/// Loss switches and weights (reference §3; every weight is 1 there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// Weight of the per-token cross-entropy over the completion.
    pub token_weight: f64,
    /// Mask the other foreground patches of the same object in VRT logits (reference `use_sft_vp_mask`, true).
    pub use_sft_vp_mask: bool,
    /// Box loss: GIoU + L1 on (cx, cy, w, h) (reference `use_bbox_loss`, true).
    pub use_bbox_loss: bool,
    /// Weight of the GIoU term of the box loss.
    pub bbox_giou_weight: f64,
    /// Weight of the L1 term of the box loss.
    pub bbox_l1_weight: f64,
    /// Score loss: (2σ(s)−1 − GIoU)² (reference `use_score_loss`, true; needs the box loss).
    pub use_score_loss: bool,
    /// Weight of the score loss.
    pub score_weight: f64,
    /// Mask loss: dice + sigmoid focal (reference `use_mask_loss`, true).
    pub use_mask_loss: bool,
    /// Weight of the dice term of the mask loss.
    pub mask_dice_weight: f64,
    /// Weight of the focal term of the mask loss.
    pub mask_focal_weight: f64,
    /// α of the sigmoid focal loss (reference 0.25).
    pub focal_alpha: f64,
    /// γ of the sigmoid focal loss (reference 2).
    pub focal_gamma: f64,
}

/// Parameters excluded from training.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FreezeConfig {
    /// Freeze every parameter whose name contains `visual` (reference `freeze_vision_modules`, false).
    pub vision_tower: bool,
    /// Freeze every parameter whose dotted name starts with one of these prefixes.
    pub prefixes: Vec<String>,
}

/// A parameter group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParamGroupConfig {
    /// Group name used in logs.
    pub name: String,
    /// Dotted parameter-name prefixes belonging to the group (e.g. `vl_decoder.`).
    pub prefixes: Vec<String>,
    /// The group's learning rate is `optimizer.lr × lr_scale` at every step of the schedule.
    pub lr_scale: f64,
    /// Weight decay of the group; null means `optimizer.weight_decay`.
    pub weight_decay: Option<f64>,
}

/// Checkpointing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Write `checkpoint-<step>/` every this many optimizer steps (reference 100).
    pub every_steps: u64,
    /// Keep only the newest K checkpoints; null keeps all (reference).
    pub keep_last: Option<usize>,
    /// Also write a checkpoint after the last step.
    pub save_final: bool,
}

/// Metrics log, plot and progress display.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// Append a metrics line every this many optimizer steps (reference 1).
    pub every_steps: u64,
    /// Metrics file name inside the output directory (JSON Lines, one object per logged step).
    pub metrics_file: String,
    /// Draw `loss.png` (loss curves) at every checkpoint and at the end.
    pub loss_plot: bool,
    /// Show a progress bar on the terminal.
    pub progress_bar: bool,
    /// Peak dense TFLOP/s of one device for the `mfu` metric; null: 989 (H100/H200 bf16) for `cuda` with `precision: bf16`, 494.5 (TF32) for `cuda` with `f32`, no MFU on `cpu`.
    pub peak_tflops: Option<f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            run_name: "padt".into(),
            output_dir: PathBuf::from("runs/padt"),
            seed: 42,
            model: ModelConfig::default(),
            data: DataConfig::default(),
            training: TrainingConfig::default(),
            optimizer: OptimizerConfig::default(),
            schedule: ScheduleConfig::default(),
            vrt: VrtConfig::default(),
            decoder_warmup: DecoderWarmupConfig::default(),
            loss: LossConfig::default(),
            freeze: FreezeConfig::default(),
            param_groups: Vec::new(),
            checkpoint: CheckpointConfig::default(),
            logging: LoggingConfig::default(),
            evaluation: EvaluationConfig::default(),
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            path: PathBuf::new(),
            tokenizer: None,
            use_visual_prototype_projection: true,
            highres_token_order: HighresTokenOrder::Faithful,
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            datasets: Vec::new(),
            min_pixels: 3136,
            max_pixels: 12_845_056,
            num_workers: 4,
            prefetch_batches: 4,
        }
    }
}

impl Default for DatasetConfig {
    fn default() -> Self {
        DatasetConfig {
            name: String::new(),
            shards: PathBuf::new(),
            repeat: 1,
            image_root: None,
        }
    }
}

impl Default for TrainingConfig {
    fn default() -> Self {
        TrainingConfig {
            epochs: 4,
            max_steps: None,
            per_device_batch_size: 16,
            gradient_accumulation_steps: 1,
            global_batch_size: None,
            devices: vec![DeviceSpec::Cpu],
            precision: Precision::F32,
            gradient_checkpointing: false,
            max_grad_norm: Some(1.0),
            max_nonfinite_skips: 10,
        }
    }
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            lr: 2e-5,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
            no_decay_norms_and_biases: false,
        }
    }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            kind: ScheduleKind::Linear,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            num_cycles: 0.5,
        }
    }
}

impl Default for VrtConfig {
    fn default() -> Self {
        VrtConfig {
            pick: VrtPick::Random,
            per_object: 5,
        }
    }
}

impl Default for DecoderWarmupConfig {
    fn default() -> Self {
        DecoderWarmupConfig {
            enabled: true,
            steps: 300,
            epoch_fraction: 0.25,
        }
    }
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            token_weight: 1.0,
            use_sft_vp_mask: true,
            use_bbox_loss: true,
            bbox_giou_weight: 1.0,
            bbox_l1_weight: 1.0,
            use_score_loss: true,
            score_weight: 1.0,
            use_mask_loss: true,
            mask_dice_weight: 1.0,
            mask_focal_weight: 1.0,
            focal_alpha: 0.25,
            focal_gamma: 2.0,
        }
    }
}

impl Default for ParamGroupConfig {
    fn default() -> Self {
        ParamGroupConfig {
            name: String::new(),
            prefixes: Vec::new(),
            lr_scale: 1.0,
            weight_decay: None,
        }
    }
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            every_steps: 100,
            keep_last: None,
            save_final: true,
        }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            every_steps: 1,
            metrics_file: "metrics.jsonl".into(),
            loss_plot: true,
            progress_bar: true,
            peak_tflops: None,
        }
    }
}

/// Evaluation of the final model (`padt-eval run`'s protocol for the task, docs/evaluation.md),
/// run when training completes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluationConfig {
    /// Shard folder evaluated after the last step (null: no evaluation).
    pub shards: Option<PathBuf>,
    /// `rec` (box Acc@0.5, written as `rec_acc@0.5`), `res` (mask IoU), `ovd` (COCO AP/AR over
    /// category names) or `ric` (caption metrics); the shards must hold records of that task.
    pub task: EvaluationTask,
    /// Prompts generated together (left-padded).
    pub batch_size: usize,
    /// Evaluate only the first N records (null: all).
    pub limit: Option<usize>,
    /// Longest completion generated per record.
    pub max_new_tokens: usize,
}

/// The metric family of [`EvaluationConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvaluationTask {
    /// Referring expression comprehension: box Acc@0.5.
    Rec,
    /// Referring expression segmentation: mask IoU.
    Res,
    /// Open-vocabulary detection: COCO AP/AR.
    Ovd,
    /// Referring image captioning: BLEU, ROUGE-L, CIDEr-D.
    Ric,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        EvaluationConfig {
            shards: None,
            task: EvaluationTask::Rec,
            batch_size: 8,
            limit: None,
            max_new_tokens: 64,
        }
    }
}

/// A path segment in a dotted key that stands for any list index.
pub const INDEX_SEGMENT: &str = "N";

impl TrainConfig {
    /// Reads a recipe file and applies `--set` overrides; relative paths stay as written
    /// (they are resolved against the working directory, like the reference scripts).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml_str(&text, &path.display().to_string(), overrides)
    }

    /// Parses recipe text (`origin` names it in errors) and applies `--set` overrides.
    pub fn from_yaml_str(
        text: &str,
        origin: &str,
        overrides: &[String],
    ) -> Result<Self, RecipeError> {
        let parse_err = |e: serde_yaml_ng::Error| RecipeError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        };
        let config: TrainConfig = serde_yaml_ng::from_str(text).map_err(parse_err)?;
        if overrides.is_empty() {
            return Ok(config);
        }
        config.with_overrides(overrides)
    }

    /// Returns a copy with `key=value` overrides applied (value parsed as YAML: `1e-5`,
    /// `true`, `[cuda:0, cuda:1]`, `null`). Unknown keys name the closest valid key.
    pub fn with_overrides(&self, overrides: &[String]) -> Result<Self, RecipeError> {
        let mut tree = serde_yaml_ng::to_value(self).expect("a TrainConfig always serialises");
        let valid = valid_keys();
        for arg in overrides {
            let (key, raw) = arg
                .split_once('=')
                .ok_or_else(|| RecipeError::OverrideSyntax(arg.clone()))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(RecipeError::OverrideSyntax(arg.clone()));
            }
            let value: Value = serde_yaml_ng::from_str(raw).map_err(|e| RecipeError::Parse {
                origin: format!("override `{arg}`"),
                message: e.to_string(),
            })?;
            let pattern = key_pattern(key);
            // A key is valid if it is a setting, or a prefix of settings (a whole section or list).
            let list_item = pattern.trim_end_matches(".N");
            let known = valid.contains(&pattern)
                || (list_item != pattern && valid.iter().any(|v| v == list_item))
                || valid
                    .iter()
                    .any(|v| v.starts_with(&pattern) && v[pattern.len()..].starts_with('.'));
            if !known {
                let hint = nearest_key(&pattern, &valid)
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default();
                return Err(RecipeError::UnknownKey {
                    key: key.to_string(),
                    arg: arg.clone(),
                    hint,
                });
            }
            set_path(&mut tree, key, value, arg)?;
        }
        serde_yaml_ng::from_value(tree).map_err(|e| RecipeError::Parse {
            origin: format!("overrides {overrides:?}"),
            message: e.to_string(),
        })
    }

    /// The resolved config as YAML (what `config.yaml` of a run holds).
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("a TrainConfig always serialises")
    }

    /// Writes the resolved config to `path` atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<(), RecipeError> {
        let write_err = |source| RecipeError::Write {
            path: path.to_path_buf(),
            source,
        };
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(write_err)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(write_err)?;
        std::io::Write::write_all(&mut tmp, self.to_yaml().as_bytes()).map_err(write_err)?;
        tmp.as_file().sync_all().map_err(write_err)?;
        tmp.persist(path).map_err(|e| write_err(e.error))?;
        Ok(())
    }

    /// Number of data-parallel workers.
    pub fn world_size(&self) -> usize {
        self.training.devices.len()
    }

    /// Samples per optimizer step over all workers.
    pub fn global_batch_size(&self) -> usize {
        self.world_size()
            * self.training.per_device_batch_size
            * self.training.gradient_accumulation_steps
    }

    /// The tokenizer directory (the model directory unless set).
    pub fn tokenizer_dir(&self) -> &Path {
        self.model.tokenizer.as_deref().unwrap_or(&self.model.path)
    }

    /// Checks internal consistency (no file-system access); lists every problem at once.
    pub fn validate(&self) -> Result<(), RecipeError> {
        let mut errs = Vec::new();
        let mut check = |ok: bool, msg: String| {
            if !ok {
                errs.push(msg)
            }
        };
        let t = &self.training;
        check(!self.run_name.trim().is_empty(), "run_name is empty".into());
        check(
            self.evaluation.batch_size >= 1 && self.evaluation.max_new_tokens >= 1,
            "evaluation.batch_size and evaluation.max_new_tokens must be at least 1".into(),
        );
        check(
            !self.output_dir.as_os_str().is_empty(),
            "output_dir is empty".into(),
        );
        check(
            !self.model.path.as_os_str().is_empty(),
            "model.path is empty: set the model directory".into(),
        );
        check(t.epochs >= 1, "training.epochs must be at least 1".into());
        check(
            t.max_steps != Some(0),
            "training.max_steps must be at least 1 (or null)".into(),
        );
        check(
            t.per_device_batch_size >= 1,
            "training.per_device_batch_size must be at least 1".into(),
        );
        check(
            t.gradient_accumulation_steps >= 1,
            "training.gradient_accumulation_steps must be at least 1".into(),
        );
        check(
            !t.devices.is_empty(),
            "training.devices is empty: use [cpu] or [cuda:0, ...]".into(),
        );
        let cpus = t.devices.iter().filter(|d| **d == DeviceSpec::Cpu).count();
        check(
            cpus == 0 || cpus == t.devices.len(),
            format!(
                "training.devices mixes cpu and cuda ({:?}); use one kind",
                t.devices.iter().map(|d| d.to_string()).collect::<Vec<_>>()
            ),
        );
        let unique: BTreeSet<_> = t
            .devices
            .iter()
            .filter(|d| **d != DeviceSpec::Cpu)
            .collect();
        check(
            unique.len() == t.devices.len() - cpus,
            "training.devices lists a cuda device twice".into(),
        );
        if let Some(global) = t.global_batch_size {
            let per_step = self.world_size() * t.per_device_batch_size;
            check(
                per_step > 0 && global % per_step == 0,
                format!(
                    "training.global_batch_size {global} is not divisible by world size {} × per-device batch {}",
                    self.world_size(),
                    t.per_device_batch_size
                ),
            );
            check(
                per_step == 0
                    || global % per_step != 0
                    || global / per_step == t.gradient_accumulation_steps,
                format!(
                    "training.global_batch_size {global} needs gradient_accumulation_steps {} (world size {} × per-device batch {}), but it is {}",
                    global / per_step.max(1),
                    self.world_size(),
                    t.per_device_batch_size,
                    t.gradient_accumulation_steps
                ),
            );
        }
        if let Some(clip) = t.max_grad_norm {
            check(
                clip.is_finite() && clip > 0.0,
                format!("training.max_grad_norm must be positive (or null), got {clip}"),
            );
        }
        let o = &self.optimizer;
        check(
            o.lr.is_finite() && o.lr >= 0.0,
            format!(
                "optimizer.lr must be a finite non-negative number, got {}",
                o.lr
            ),
        );
        for (i, b) in o.betas.iter().enumerate() {
            check(
                (0.0..1.0).contains(b),
                format!("optimizer.betas[{i}] must be in [0, 1), got {b}"),
            );
        }
        check(
            o.eps.is_finite() && o.eps > 0.0,
            format!("optimizer.eps must be positive, got {}", o.eps),
        );
        check(
            o.weight_decay.is_finite() && o.weight_decay >= 0.0,
            format!(
                "optimizer.weight_decay must be >= 0, got {}",
                o.weight_decay
            ),
        );
        let s = &self.schedule;
        check(
            (0.0..=1.0).contains(&s.warmup_ratio),
            format!(
                "schedule.warmup_ratio must be in [0, 1], got {}",
                s.warmup_ratio
            ),
        );
        check(
            s.num_cycles.is_finite() && s.num_cycles > 0.0,
            format!("schedule.num_cycles must be positive, got {}", s.num_cycles),
        );
        check(
            self.vrt.pick != VrtPick::Random || self.vrt.per_object >= 1,
            "vrt.per_object must be at least 1 for random picks".into(),
        );
        check(
            (0.0..=1.0).contains(&self.decoder_warmup.epoch_fraction),
            format!(
                "decoder_warmup.epoch_fraction must be in [0, 1], got {}",
                self.decoder_warmup.epoch_fraction
            ),
        );
        let l = &self.loss;
        check(
            !l.use_score_loss || l.use_bbox_loss,
            "loss.use_score_loss needs loss.use_bbox_loss (the score target is the box GIoU)"
                .into(),
        );
        for (name, w) in [
            ("token_weight", l.token_weight),
            ("bbox_giou_weight", l.bbox_giou_weight),
            ("bbox_l1_weight", l.bbox_l1_weight),
            ("score_weight", l.score_weight),
            ("mask_dice_weight", l.mask_dice_weight),
            ("mask_focal_weight", l.mask_focal_weight),
            ("focal_gamma", l.focal_gamma),
        ] {
            check(
                w.is_finite() && w >= 0.0,
                format!("loss.{name} must be a finite non-negative number, got {w}"),
            );
        }
        check(
            (0.0..=1.0).contains(&l.focal_alpha),
            format!("loss.focal_alpha must be in [0, 1], got {}", l.focal_alpha),
        );
        let d = &self.data;
        check(
            !d.datasets.is_empty(),
            "data.datasets is empty: list at least one shard directory".into(),
        );
        for (i, ds) in d.datasets.iter().enumerate() {
            check(
                !ds.shards.as_os_str().is_empty(),
                format!(
                    "data.datasets[{i}] ({}) has an empty `shards` path",
                    ds.name
                ),
            );
            check(
                ds.repeat >= 1,
                format!(
                    "data.datasets[{i}] ({}): repeat must be at least 1",
                    ds.name
                ),
            );
        }
        check(
            d.min_pixels >= 1 && d.min_pixels <= d.max_pixels,
            format!(
                "data.min_pixels ({}) must be between 1 and data.max_pixels ({})",
                d.min_pixels, d.max_pixels
            ),
        );
        let mut names = BTreeSet::new();
        for (i, g) in self.param_groups.iter().enumerate() {
            check(
                !g.name.trim().is_empty(),
                format!("param_groups[{i}] has no name"),
            );
            check(
                g.name.is_empty() || g.name != "default" && names.insert(g.name.clone()),
                format!(
                    "param_groups[{i}]: name `{}` is used twice or is the reserved `default`",
                    g.name
                ),
            );
            check(
                !g.prefixes.is_empty() && g.prefixes.iter().all(|p| !p.is_empty()),
                format!("param_groups[{i}] ({}) needs non-empty prefixes", g.name),
            );
            check(
                g.lr_scale.is_finite() && g.lr_scale >= 0.0,
                format!(
                    "param_groups[{i}] ({}): lr_scale must be >= 0, got {}",
                    g.name, g.lr_scale
                ),
            );
            if let Some(wd) = g.weight_decay {
                check(
                    wd.is_finite() && wd >= 0.0,
                    format!(
                        "param_groups[{i}] ({}): weight_decay must be >= 0, got {wd}",
                        g.name
                    ),
                );
            }
        }
        check(
            self.freeze.prefixes.iter().all(|p| !p.is_empty()),
            "freeze.prefixes contains an empty prefix (it would freeze everything)".into(),
        );
        check(
            self.checkpoint.every_steps >= 1,
            "checkpoint.every_steps must be at least 1".into(),
        );
        check(
            self.checkpoint.keep_last != Some(0),
            "checkpoint.keep_last must be at least 1 (or null to keep all)".into(),
        );
        check(
            self.logging.every_steps >= 1,
            "logging.every_steps must be at least 1".into(),
        );
        check(
            self.logging
                .peak_tflops
                .is_none_or(|p| p.is_finite() && p > 0.0),
            format!(
                "logging.peak_tflops must be a positive number of TFLOP/s (or null), not {:?}",
                self.logging.peak_tflops
            ),
        );
        let mf = &self.logging.metrics_file;
        check(
            !mf.is_empty() && !mf.contains('/') && !mf.contains('\\'),
            format!("logging.metrics_file must be a plain file name, got `{mf}`"),
        );
        if errs.is_empty() {
            Ok(())
        } else {
            Err(RecipeError::Invalid(errs))
        }
    }

    /// Checks that the model directory has `config.json` and weights, the tokenizer directory
    /// has `tokenizer.json`, and every dataset directory has a readable `manifest.json`.
    /// Lists every problem at once.
    pub fn validate_paths(&self) -> Result<(), RecipeError> {
        let mut errs = Vec::new();
        let model = &self.model.path;
        if !model.is_dir() {
            errs.push(format!("model.path {} is not a directory", model.display()));
        } else {
            if !model.join("config.json").is_file() {
                errs.push(format!("model.path {} has no config.json", model.display()));
            }
            if let Err(e) = check_weights(model) {
                errs.push(e);
            }
        }
        let tok = self.tokenizer_dir();
        if !tok.join("tokenizer.json").is_file() {
            errs.push(format!(
                "tokenizer directory {} has no tokenizer.json",
                tok.display()
            ));
        }
        for (i, ds) in self.data.datasets.iter().enumerate() {
            let manifest = ds.shards.join("manifest.json");
            if !ds.shards.is_dir() {
                errs.push(format!(
                    "data.datasets[{i}] ({}): shard directory {} does not exist",
                    ds.name,
                    ds.shards.display()
                ));
            } else {
                match std::fs::read(&manifest) {
                    Err(e) => errs.push(format!(
                        "data.datasets[{i}] ({}): cannot read {}: {e}",
                        ds.name,
                        manifest.display()
                    )),
                    Ok(bytes) => {
                        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                            errs.push(format!(
                                "data.datasets[{i}] ({}): {} is not valid JSON: {e}",
                                ds.name,
                                manifest.display()
                            ));
                        }
                    }
                }
            }
            if let Some(root) = &ds.image_root {
                if !root.is_dir() {
                    errs.push(format!(
                        "data.datasets[{i}] ({}): image_root {} is not a directory",
                        ds.name,
                        root.display()
                    ));
                }
            }
        }
        if let Some(shards) = &self.evaluation.shards {
            if !shards.join("manifest.json").is_file() {
                errs.push(format!(
                    "evaluation.shards {} has no manifest.json",
                    shards.display()
                ));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(RecipeError::MissingPaths(errs))
        }
    }

    /// A config whose lists hold one default element each: its serialisation names every
    /// valid key (list elements as `N`).
    fn key_schema() -> TrainConfig {
        let mut c = TrainConfig::default();
        c.data.datasets = vec![DatasetConfig::default()];
        c.param_groups = vec![ParamGroupConfig::default()];
        c
    }
}

/// Checks that a model directory holds weights: `model.safetensors`, or an index whose shard
/// files all exist.
fn check_weights(model: &Path) -> Result<(), String> {
    if model.join("model.safetensors").is_file() {
        return Ok(());
    }
    let index = model.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|_| {
        format!(
            "model.path {} has no model.safetensors or model.safetensors.index.json",
            model.display()
        )
    })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not valid JSON: {e}", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| format!("{} has no `weight_map` object", index.display()))?;
    let files: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    if files.is_empty() {
        return Err(format!("{} lists no weight files", index.display()));
    }
    let missing: Vec<&str> = files
        .into_iter()
        .filter(|f| !model.join(f).is_file())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} names missing shard files: {}",
            index.display(),
            missing.join(", ")
        ))
    }
}

/// Every valid dotted key of a recipe (leaf settings; list elements written as `N`), sorted
/// in the order they appear in the struct.
pub fn valid_keys() -> Vec<String> {
    let tree = serde_yaml_ng::to_value(TrainConfig::key_schema()).expect("serialisable");
    let mut keys = Vec::new();
    collect_keys(&tree, "", &mut keys);
    keys
}

fn collect_keys(value: &Value, prefix: &str, out: &mut Vec<String>) {
    let join = |seg: &str| {
        if prefix.is_empty() {
            seg.to_string()
        } else {
            format!("{prefix}.{seg}")
        }
    };
    match value {
        Value::Mapping(map) => {
            for (k, v) in map {
                let k = k.as_str().expect("recipe keys are strings");
                collect_keys(v, &join(k), out);
            }
        }
        // Lists of sections (datasets, param groups) are walked through their sample element;
        // lists of scalars (devices, betas, prefixes) are settings themselves.
        Value::Sequence(seq) if seq.first().is_some_and(Value::is_mapping) => {
            collect_keys(&seq[0], &join(INDEX_SEGMENT), out);
        }
        _ => out.push(prefix.to_string()),
    }
}

/// Replaces numeric segments of a user key by [`INDEX_SEGMENT`].
fn key_pattern(key: &str) -> String {
    key.split('.')
        .map(|s| {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                INDEX_SEGMENT
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The valid key with the smallest edit distance to `key` (None if nothing is close).
pub fn nearest_key<'a>(key: &str, valid: &'a [String]) -> Option<&'a str> {
    let (best, dist) = valid
        .iter()
        .map(|v| (v.as_str(), edit_distance(key, v)))
        .min_by_key(|&(_, d)| d)?;
    // Also compare the last segment alone (`--set lr=..` should suggest `optimizer.lr`).
    let last = key.rsplit('.').next().unwrap_or(key);
    let by_leaf = valid
        .iter()
        .map(|v| {
            (
                v.as_str(),
                edit_distance(last, v.rsplit('.').next().unwrap_or(v)),
            )
        })
        .min_by_key(|&(_, d)| d);
    match by_leaf {
        Some((leaf_best, leaf_dist)) if leaf_dist < dist && leaf_dist <= last.len() / 2 => {
            Some(leaf_best)
        }
        _ if dist <= key.len().max(4) / 2 + 2 => Some(best),
        _ => None,
    }
}

/// Levenshtein distance over chars.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Sets `key` (dotted, numeric segments index lists) in the YAML tree.
fn set_path(tree: &mut Value, key: &str, value: Value, arg: &str) -> Result<(), RecipeError> {
    let segments: Vec<&str> = key.split('.').collect();
    let mut node = tree;
    for (depth, seg) in segments.iter().enumerate() {
        let here = segments[..depth].join(".");
        let unknown = || RecipeError::UnknownKey {
            key: key.to_string(),
            arg: arg.to_string(),
            hint: format!(" (`{here}` is not a section)"),
        };
        node = match node {
            Value::Mapping(map) => map
                .get_mut(Value::String(seg.to_string()))
                .ok_or_else(unknown)?,
            Value::Sequence(seq) => {
                let index: usize = seg.parse().map_err(|_| unknown())?;
                let len = seq.len();
                seq.get_mut(index).ok_or(RecipeError::IndexOutOfRange {
                    arg: arg.to_string(),
                    list: here.clone(),
                    index,
                    len,
                })?
            }
            _ => return Err(unknown()),
        };
    }
    *node = value;
    Ok(())
}
