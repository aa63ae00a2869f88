//! Learning-rate schedules with linear warm-up, as Hugging Face transformers defines them
//! (`get_linear_schedule_with_warmup`, `get_cosine_schedule_with_warmup`,
//! `get_constant_schedule_with_warmup`).
//!
//! The schedule is a pure function of the optimizer step, so its checkpointed state is the
//! [`LrSchedule`] itself (resuming recomputes the same learning rates). Step `s` is the number of
//! optimizer steps already taken: the first update uses `lr_at(0)`, exactly as torch's
//! `LambdaLR` feeds the optimizer before its first `scheduler.step()`.

use serde::{Deserialize, Serialize};

use crate::recipe::{ScheduleConfig, ScheduleKind};

/// A resolved learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Shape after the warm-up.
    pub kind: ScheduleKind,
    /// Peak learning rate (reached at the end of the warm-up).
    pub base_lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// Total optimizer steps of the run.
    pub total_steps: u64,
    /// Cosine waves over the decay phase (0.5 = half a cosine down to 0).
    pub num_cycles: f64,
}

impl LrSchedule {
    /// Resolves a recipe schedule for a run of `total_steps` optimizer steps.
    ///
    /// `warmup_steps` wins when positive; otherwise the warm-up is
    /// `ceil(total_steps × warmup_ratio)` (HF `TrainingArguments.get_warmup_steps`).
    pub fn from_config(config: &ScheduleConfig, base_lr: f64, total_steps: u64) -> Self {
        let warmup_steps = if config.warmup_steps > 0 {
            config.warmup_steps
        } else {
            (total_steps as f64 * config.warmup_ratio).ceil() as u64
        };
        LrSchedule {
            kind: config.kind,
            base_lr,
            warmup_steps,
            total_steps,
            num_cycles: config.num_cycles,
        }
    }

    /// The multiplier of the peak learning rate at `step`.
    pub fn factor(&self, step: u64) -> f64 {
        let s = step as f64;
        let w = self.warmup_steps;
        if step < w {
            return s / (w.max(1) as f64);
        }
        let decay_len = self.total_steps.saturating_sub(w).max(1) as f64;
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => {
                // HF: max(0, (T - s) / max(1, T - w)), computed in integers then floats.
                let remaining = self.total_steps as f64 - s;
                (remaining / decay_len).max(0.0)
            }
            ScheduleKind::Cosine => {
                let progress = (s - w as f64) / decay_len;
                let cos = (std::f64::consts::PI * self.num_cycles * 2.0 * progress).cos();
                (0.5 * (1.0 + cos)).max(0.0)
            }
        }
    }

    /// The learning rate of the default group at `step`.
    pub fn lr_at(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step)
    }
}
