//! A prefetching loader: worker threads run a user function over a sequence of jobs (sample
//! references, micro-batches, ...) and the results come back in exactly the job order, whatever
//! the number of workers. At most `prefetch` jobs are queued or in flight beyond the one being
//! consumed, so memory stays bounded. Each item reports how long the caller waited for it
//! (the "data-wait time" of a training step).
//!
//! Dropping the loader stops the workers: queued jobs are skipped, running ones finish, threads
//! are joined. A worker error or panic comes back as an error carrying the job's position and a
//! description of the job.

use std::collections::HashMap;
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Loader settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoaderConfig {
    /// Worker threads; 0 runs the function in the caller's thread (no prefetch).
    pub num_workers: usize,
    /// Jobs queued or in flight ahead of the consumer (at least 1 when there are workers).
    pub prefetch: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            num_workers: 4,
            prefetch: 8,
        }
    }
}

/// Why an item could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum LoadError<E: std::error::Error + 'static> {
    #[error("loading item {position} ({job}) failed: {source}")]
    Failed {
        position: usize,
        job: String,
        #[source]
        source: E,
    },
    #[error("loading item {position} ({job}) panicked: {message}")]
    Panicked {
        position: usize,
        job: String,
        message: String,
    },
}

impl<E: std::error::Error + 'static> LoadError<E> {
    /// Position of the failed job in the job sequence (0-based).
    pub fn position(&self) -> usize {
        match self {
            LoadError::Failed { position, .. } | LoadError::Panicked { position, .. } => *position,
        }
    }
}

/// One produced item.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<T> {
    /// Position in the job sequence (0-based).
    pub position: usize,
    pub value: T,
    /// Time the caller spent blocked waiting for this item.
    pub wait: Duration,
}

type JobFn<J, T, E> = dyn Fn(&J) -> Result<T, E> + Send + Sync;
type Outcome<T, E> = (usize, Result<T, LoadError<E>>);

/// The prefetching loader (see the module docs).
pub struct Loader<J, T, E>
where
    J: Debug + Send + 'static,
    T: Send + 'static,
    E: std::error::Error + Send + 'static,
{
    jobs: Box<dyn Iterator<Item = J> + Send>,
    function: Arc<JobFn<J, T, E>>,
    job_tx: Option<Sender<(usize, J)>>,
    result_rx: Option<Receiver<Outcome<T, E>>>,
    /// Results that arrived before their turn.
    pending: HashMap<usize, Result<T, LoadError<E>>>,
    workers: Vec<JoinHandle<()>>,
    cancel: Arc<AtomicBool>,
    prefetch: usize,
    next_position: usize,
    submitted: usize,
    exhausted: bool,
    total_wait: Duration,
}

impl<J, T, E> Loader<J, T, E>
where
    J: Debug + Send + 'static,
    T: Send + 'static,
    E: std::error::Error + Send + 'static,
{
    /// Starts the workers over `jobs`; `function` turns one job into one item.
    pub fn new<I, F>(jobs: I, function: F, config: LoaderConfig) -> Self
    where
        I: IntoIterator<Item = J>,
        I::IntoIter: Send + 'static,
        F: Fn(&J) -> Result<T, E> + Send + Sync + 'static,
    {
        let function: Arc<JobFn<J, T, E>> = Arc::new(function);
        let cancel = Arc::new(AtomicBool::new(false));
        let mut loader = Self {
            jobs: Box::new(jobs.into_iter()),
            function: function.clone(),
            job_tx: None,
            result_rx: None,
            pending: HashMap::new(),
            workers: Vec::new(),
            cancel: cancel.clone(),
            prefetch: config.prefetch.max(1),
            next_position: 0,
            submitted: 0,
            exhausted: false,
            total_wait: Duration::ZERO,
        };
        if config.num_workers == 0 {
            return loader;
        }
        let (job_tx, job_rx) = channel::<(usize, J)>();
        let (result_tx, result_rx) = channel::<Outcome<T, E>>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        for w in 0..config.num_workers {
            let job_rx = job_rx.clone();
            let result_tx = result_tx.clone();
            let function = function.clone();
            let cancel = cancel.clone();
            let handle = std::thread::Builder::new()
                .name(format!("padt-loader-{w}"))
                .spawn(move || loop {
                    // The lock is held only while taking one job.
                    let next = job_rx.lock().map(|rx| rx.recv());
                    let Ok(Ok((position, job))) = next else {
                        return;
                    };
                    if cancel.load(Ordering::Relaxed) {
                        continue;
                    }
                    let outcome = run_job(&*function, position, &job);
                    if result_tx.send((position, outcome)).is_err() {
                        return;
                    }
                })
                .expect("spawn loader worker");
            loader.workers.push(handle);
        }
        loader.job_tx = Some(job_tx);
        loader.result_rx = Some(result_rx);
        loader
    }

    /// Total time the caller has waited for items so far.
    pub fn total_wait(&self) -> Duration {
        self.total_wait
    }

    /// Queues jobs until `prefetch` are ahead of the consumer.
    fn top_up(&mut self) {
        let Some(job_tx) = &self.job_tx else {
            return;
        };
        while !self.exhausted && self.submitted < self.next_position + self.prefetch {
            match self.jobs.next() {
                Some(job) => {
                    if job_tx.send((self.submitted, job)).is_err() {
                        self.exhausted = true;
                        return;
                    }
                    self.submitted += 1;
                }
                None => self.exhausted = true,
            }
        }
    }
}

fn run_job<J: Debug, T, E: std::error::Error + 'static>(
    function: &JobFn<J, T, E>,
    position: usize,
    job: &J,
) -> Result<T, LoadError<E>> {
    match catch_unwind(AssertUnwindSafe(|| function(job))) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(LoadError::Failed {
            position,
            job: format!("{job:?}"),
            source,
        }),
        Err(panic) => Err(LoadError::Panicked {
            position,
            job: format!("{job:?}"),
            message: panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".to_string()),
        }),
    }
}

impl<J, T, E> Iterator for Loader<J, T, E>
where
    J: Debug + Send + 'static,
    T: Send + 'static,
    E: std::error::Error + Send + 'static,
{
    type Item = Result<Loaded<T>, LoadError<E>>;

    fn next(&mut self) -> Option<Self::Item> {
        let position = self.next_position;
        let started = Instant::now();
        let outcome = if self.job_tx.is_none() {
            // Inline mode: run the job here.
            let job = self.jobs.next()?;
            run_job(&*self.function, position, &job)
        } else {
            self.top_up();
            if position >= self.submitted {
                return None;
            }
            loop {
                if let Some(outcome) = self.pending.remove(&position) {
                    break outcome;
                }
                let received = self.result_rx.as_ref().expect("result channel").recv();
                match received {
                    Ok((p, outcome)) => {
                        self.pending.insert(p, outcome);
                    }
                    // Every worker is gone (they only exit on shutdown): nothing more will come.
                    Err(_) => return None,
                }
            }
        };
        let wait = started.elapsed();
        self.total_wait += wait;
        self.next_position += 1;
        // Keep the workers busy while the caller uses this item.
        self.top_up();
        Some(outcome.map(|value| Loaded {
            position,
            value,
            wait,
        }))
    }
}

impl<J, T, E> Drop for Loader<J, T, E>
where
    J: Debug + Send + 'static,
    T: Send + 'static,
    E: std::error::Error + Send + 'static,
{
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        // Closing the job channel ends every worker's `recv`; queued jobs are skipped.
        self.job_tx = None;
        self.result_rx = None;
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}
