//! Skipping optimizer steps whose loss or gradient norm is not finite.
//!
//! A NaN/∞ loss or gradient norm would poison the AdamW moments for good. The guard tells the
//! loop to drop the step's gradients (no optimizer update, the learning-rate schedule and the
//! data still advance, as the step is counted), records it, and aborts the run once more than
//! `training.max_nonfinite_skips` steps were skipped. In data-parallel runs the decision is
//! taken on the all-reduced gradient norm, so every rank skips the same steps.

/// What the loop must do with the current step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepVerdict {
    /// Finite: apply the update.
    Apply,
    /// Non-finite: drop the gradients and continue.
    Skip,
}

/// The run has skipped more non-finite steps than allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "aborting: {skipped} optimizer steps had a non-finite loss or gradient norm (limit {limit}, \
     training.max_nonfinite_skips); last at step {last_step} (loss {last_loss}, grad norm {last_grad_norm})"
)]
pub struct TooManyNonFinite {
    /// Steps skipped including this one.
    pub skipped: usize,
    /// The configured limit.
    pub limit: usize,
    /// The step that crossed the limit.
    pub last_step: u64,
    /// Its loss.
    pub last_loss: f64,
    /// Its gradient norm.
    pub last_grad_norm: f64,
}

/// Counts skipped steps against a limit.
#[derive(Debug, Clone, PartialEq)]
pub struct NonFiniteGuard {
    limit: usize,
    skipped: usize,
    skipped_steps: Vec<u64>,
}

impl NonFiniteGuard {
    /// A guard allowing `limit` skipped steps; `already_skipped` comes from a resumed checkpoint.
    pub fn new(limit: usize, already_skipped: usize) -> Self {
        NonFiniteGuard {
            limit,
            skipped: already_skipped,
            skipped_steps: Vec::new(),
        }
    }

    /// Judges step `step` (0-based optimizer step) from its loss and global gradient norm
    /// (pass `f64::NAN`-free values when the norm was not computed, e.g. 0.0).
    pub fn check(
        &mut self,
        step: u64,
        loss: f64,
        grad_norm: f64,
    ) -> Result<StepVerdict, TooManyNonFinite> {
        if loss.is_finite() && grad_norm.is_finite() {
            return Ok(StepVerdict::Apply);
        }
        self.skipped += 1;
        self.skipped_steps.push(step);
        if self.skipped > self.limit {
            return Err(TooManyNonFinite {
                skipped: self.skipped,
                limit: self.limit,
                last_step: step,
                last_loss: loss,
                last_grad_norm: grad_norm,
            });
        }
        Ok(StepVerdict::Skip)
    }

    /// Steps skipped so far (including those before a resume).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The steps skipped in this process, in order (for the log).
    pub fn skipped_steps(&self) -> &[u64] {
        &self.skipped_steps
    }
}
