//! padt-train tests (one binary: each burn-linked test binary costs a link on 2 cores).

mod checkpoint;
mod clip;
mod common;
mod distributed;
mod docs;
mod metrics;
mod nonfinite;
mod optim;
mod recipe;
mod schedule;
