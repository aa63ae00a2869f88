//! padt-train: the pieces of the PaDT SFT step loop.
//!
//! - [`recipe`]: the YAML training config, `--set` overrides, validation.
//! - [`schedule`]: learning-rate schedules (HF semantics).
//! - [`clip`]: global-norm gradient clipping (torch `clip_grad_norm_`).
//! - [`optim`]: AdamW with named parameter groups, saveable state.
//! - [`checkpoint`]: atomic `checkpoint-<step>/` directories, keep-last-K, resume.
//! - [`metrics`]: JSONL metrics log, loss-curve PNG, end summary.
//! - [`nonfinite`]: skipping steps with a non-finite loss or gradient norm.
//! - [`distributed`]: data-parallel sharding and gradient averaging; `nccl` (feature `cuda`):
//!   the NCCL transport, its self-test and the CUDA memory probe.
//! - [`loss`], [`step`]: the PaDT SFT losses and the loss of one collated batch.
//! - [`trainer`]: the step loop (data → micro-batches → loss → accumulation → clip → AdamW →
//!   metrics → checkpoints, exact resume).
//! - [`params`], [`tensor_io`], [`keydoc`]: parameter paths, safetensors streaming, the key reference.

pub mod checkpoint;
pub mod clip;
pub mod distributed;
pub mod export;
pub mod keydoc;
pub mod loss;
pub mod metrics;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod nonfinite;
pub mod optim;
pub mod params;
pub mod recipe;
pub mod schedule;
pub mod step;
pub mod tensor_io;
pub mod trainer;
