//! Data parallelism independent of the transport: which samples each rank gets, gradient
//! averaging through an [`AllReduce`], identical step counts, and rank-0-only side effects.
//!
//! The reference runs 8 ranks under DeepSpeed; the global batch of a step (128 samples) is
//! dealt to the ranks as accelerate does: the step's sample list is cut into per-device
//! micro-batches, and micro-batch `k` goes to rank `k mod world` (so with one micro-batch per
//! rank and step, rank `r` gets samples `[r·b, (r+1)·b)`). Every rank runs the same number of
//! micro-batches and calls the all-reduce with buffers of the same layout, so no rank can wait
//! forever on another (PaDT issues #16, #21).
//!
//! [`LocalGroup`] is the in-process transport (one thread per worker, host memory); the NCCL
//! transport (`crate::nccl`, feature `cuda`) implements the same [`AllReduce`] trait, so the
//! trainer's data-parallel logic is the same for both and is tested on CPU.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

/// Failures of a collective.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DistributedError {
    /// Another rank failed (panicked or returned an error) while this one waited.
    #[error("rank {rank}: a peer rank failed during a collective; aborting")]
    PeerFailed { rank: usize },
    /// Ranks passed buffers of different lengths: their graphs differ.
    #[error("rank {rank}: all-reduce buffer of {len} values, but rank 0 has {expected}; every rank must reduce the same tensors in the same order")]
    LengthMismatch {
        rank: usize,
        len: usize,
        expected: usize,
    },
    /// Ranks joined different collectives at once (host scalars on one, tensor values on
    /// another): their step loops diverged.
    #[error("rank {rank}: joined a different collective than rank 0 (host scalars vs tensor values); every rank must run the same collectives in the same order")]
    CollectiveMismatch { rank: usize },
    /// A collective did not complete in time.
    #[error("rank {rank}: all-reduce timed out after {seconds} s waiting for peers")]
    Timeout { rank: usize, seconds: u64 },
}

/// A collective over the ranks of a data-parallel group.
pub trait AllReduce<B: Backend> {
    /// This worker's rank.
    fn rank(&self) -> usize;
    /// Number of workers.
    fn world_size(&self) -> usize;
    /// Element-wise sum over ranks; every rank receives the same result (bit-identical).
    fn all_reduce_sum(&self, tensor: Tensor<B, 1>) -> Result<Tensor<B, 1>, DistributedError>;
    /// Element-wise sum of host scalars (losses, token counts, flags) over ranks.
    fn all_reduce_sum_host(&self, values: Vec<f64>) -> Result<Vec<f64>, DistributedError>;
}

/// A rank's handle that can wake its peers when this rank fails, so they return
/// [`DistributedError::PeerFailed`] instead of waiting in a collective.
pub trait Abort {
    /// This worker's rank.
    fn abort_rank(&self) -> usize;
    /// Marks the group failed and wakes every waiting rank.
    fn abort(&self);
}

/// Makes every rank's `module` equal to rank 0's: each parameter is summed over the ranks
/// with the other ranks contributing zeros (one collective per parameter, in module order).
/// Used once before training so that replicas start identical however they were built.
pub fn broadcast_from_rank0<B, M, C>(module: M, comm: &C) -> Result<M, DistributedError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    C: AllReduce<B::InnerBackend>,
{
    if comm.world_size() == 1 {
        return Ok(module);
    }
    let mut mapper = Broadcaster::<B, C> {
        comm,
        error: None,
        _b: std::marker::PhantomData,
    };
    let module = module.map(&mut mapper);
    match mapper.error {
        Some(e) => Err(e),
        None => Ok(module),
    }
}

struct Broadcaster<'a, B: AutodiffBackend, C> {
    comm: &'a C,
    error: Option<DistributedError>,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend, C: AllReduce<B::InnerBackend>> burn::module::ModuleMapper<B>
    for Broadcaster<'_, B, C>
{
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        if self.error.is_some() {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let requires_grad = tensor.is_require_grad();
        let dims = tensor.dims();
        let numel: usize = dims.iter().product();
        let inner = tensor.inner();
        let contribution = if self.comm.rank() == 0 {
            inner.clone().reshape([numel])
        } else {
            Tensor::zeros([numel], &inner.device())
        };
        match self.comm.all_reduce_sum(contribution) {
            Ok(sum) => {
                let mut value = Tensor::<B, D>::from_inner(sum.reshape(dims));
                if requires_grad {
                    value = value.require_grad();
                }
                Param::from_mapped_value(id, value, mapper)
            }
            Err(e) => {
                self.error = Some(e);
                Param::from_mapped_value(id, Tensor::from_inner(inner), mapper)
            }
        }
    }
}

/// The data-parallel position of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankInfo {
    /// Rank in `0..world_size`.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
}

impl RankInfo {
    /// Rank 0 writes checkpoints, metrics and plots.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Runs `f` on rank 0 only.
    pub fn main_only<T>(&self, f: impl FnOnce() -> T) -> Option<T> {
        self.is_main().then(f)
    }
}

/// The micro-batches of `rank` for one optimizer step.
///
/// `step_samples` holds the step's `world × per_device × accumulation` samples in sampler
/// order; micro-batch `j` of `rank` is the `(j·world + rank)`-th chunk of `per_device`.
pub fn rank_micro_batches<T: Clone>(
    step_samples: &[T],
    world_size: usize,
    rank: usize,
    per_device: usize,
    accumulation: usize,
) -> Vec<Vec<T>> {
    assert_eq!(
        step_samples.len(),
        world_size * per_device * accumulation,
        "a step holds world × per-device × accumulation samples"
    );
    (0..accumulation)
        .map(|j| {
            let chunk = j * world_size + rank;
            step_samples[chunk * per_device..(chunk + 1) * per_device].to_vec()
        })
        .collect()
}

/// Optimizer steps of a run, the same on every rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPlan {
    /// Optimizer steps per epoch (`samples / global batch`; the remainder is dropped, like
    /// the reference's `RepeatRandomSampler`).
    pub steps_per_epoch: u64,
    /// Steps of the whole run (`max_steps` if set, else epochs × steps per epoch).
    pub total_steps: u64,
}

impl StepPlan {
    /// The plan for `samples_per_epoch` samples (after repeats).
    pub fn new(
        samples_per_epoch: u64,
        global_batch: usize,
        epochs: usize,
        max_steps: Option<u64>,
    ) -> Self {
        let steps_per_epoch = samples_per_epoch / global_batch.max(1) as u64;
        StepPlan {
            steps_per_epoch,
            total_steps: max_steps.unwrap_or(steps_per_epoch * epochs as u64),
        }
    }

    /// Fractional epochs completed after `step` optimizer steps (HF `state.epoch`).
    pub fn epoch_at(&self, step: u64) -> f64 {
        if self.steps_per_epoch == 0 {
            0.0
        } else {
            step as f64 / self.steps_per_epoch as f64
        }
    }
}

/// Averages the gradients of `module` over the ranks of `comm`: every rank ends with the mean
/// of all ranks' gradients (sum / world size, as DDP). All gradients travel in one flat f32
/// buffer, in module order. A parameter with a gradient on some ranks only counts as zero on
/// the others; one without a gradient on every rank stays without.
pub fn average_gradients<B, M, C>(
    module: &M,
    grads: GradientsParams,
    comm: &C,
) -> Result<GradientsParams, DistributedError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    C: AllReduce<B::InnerBackend>,
{
    // 1. Which parameters have a gradient anywhere.
    let mut lister = GradLister::<B> {
        grads: &grads,
        entries: Vec::new(),
        _b: std::marker::PhantomData,
    };
    module.visit(&mut lister);
    let entries = lister.entries;
    let present: Vec<f64> = entries
        .iter()
        .map(|e| f64::from(u8::from(e.has_grad)))
        .collect();
    let present = comm.all_reduce_sum_host(present)?;

    // 2. One flat buffer with the gradients (zeros where this rank has none).
    let mut pack = Packer::<B> {
        grads,
        wanted: entries
            .iter()
            .zip(&present)
            .filter(|(_, &n)| n > 0.0)
            .map(|(e, _)| e.id)
            .collect(),
        parts: Vec::new(),
        device: None,
    };
    module.visit(&mut pack);
    let Packer {
        mut grads,
        parts,
        device,
        ..
    } = pack;
    if device.is_none() {
        return Ok(grads);
    }
    let flat = Tensor::cat(parts.into_iter().map(|(_, t)| t).collect(), 0);
    let summed = comm.all_reduce_sum(flat)?;
    let mean = summed.div_scalar(comm.world_size() as f32);

    // 3. Unpack into gradients of the parameters' shapes.
    let mut unpack = Unpacker::<B> {
        grads: &mut grads,
        flat: mean,
        offset: 0,
        wanted: entries
            .iter()
            .zip(&present)
            .filter(|(_, &n)| n > 0.0)
            .map(|(e, _)| e.id)
            .collect(),
    };
    module.visit(&mut unpack);
    Ok(grads)
}

struct GradEntry {
    id: ParamId,
    has_grad: bool,
}

struct GradLister<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    entries: Vec<GradEntry>,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradLister<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.entries.iter().any(|e| e.id == param.id) {
            return;
        }
        let has_grad = self.grads.get::<B::InnerBackend, D>(param.id).is_some();
        self.entries.push(GradEntry {
            id: param.id,
            has_grad,
        });
    }
}

struct Packer<B: AutodiffBackend> {
    grads: GradientsParams,
    wanted: Vec<ParamId>,
    parts: Vec<(ParamId, Tensor<B::InnerBackend, 1>)>,
    device: Option<burn::tensor::ops::Device<B::InnerBackend>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Packer<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !self.wanted.contains(&param.id) || self.parts.iter().any(|(id, _)| *id == param.id) {
            return;
        }
        let value = param.val().inner();
        let numel: usize = value.dims().iter().product();
        let flat = match self.grads.remove::<B::InnerBackend, D>(param.id) {
            // Weight gradients of `x · Wᵀ` arrive as transposed views; the reshape copies them
            // row-major (the CPU backend tiles 2-D transposes at about memcpy speed; never an
            // identity matmul here: that costs `out · in²` per weight, teraflops on a 3B model).
            Some(g) => g.reshape([numel]),
            None => Tensor::zeros([numel], &value.device()),
        };
        self.device.get_or_insert_with(|| value.device());
        self.parts.push((param.id, flat));
    }
}

struct Unpacker<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    flat: Tensor<B::InnerBackend, 1>,
    offset: usize,
    wanted: Vec<ParamId>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Unpacker<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(pos) = self.wanted.iter().position(|id| *id == param.id) else {
            return;
        };
        // Each wanted id is unpacked once (shared parameters are visited twice).
        self.wanted.remove(pos);
        let dims = param.val().dims();
        let numel: usize = dims.iter().product();
        let part = self
            .flat
            .clone()
            .narrow(0, self.offset, numel)
            .reshape(dims);
        self.offset += numel;
        self.grads.register::<B::InnerBackend, D>(param.id, part);
    }
}

/// Shared state of an in-process group.
struct GroupState {
    generation: u64,
    arrived: usize,
    /// Contributions of the current round, by rank.
    slots: Vec<Option<Payload>>,
    /// The last completed round's result.
    result: Arc<Payload>,
    result_generation: u64,
    failed: bool,
}

/// One rank's contribution to an in-process collective.
#[derive(Debug, Clone)]
enum Payload {
    /// Host scalars (losses, counts, flags).
    F64(Vec<f64>),
    /// Tensor values (gradients, parameters).
    F32(Vec<f32>),
}

impl Payload {
    fn len(&self) -> usize {
        match self {
            Payload::F64(v) => v.len(),
            Payload::F32(v) => v.len(),
        }
    }

    /// The element-wise sum of the ranks' contributions (`slots[r]` = rank `r`'s), in rank
    /// order; f32 values are added in f64 and rounded once. Rank 0's buffer holds the result
    /// (no zeroed allocation of the gradient size).
    fn sum(slots: Vec<Payload>) -> Result<Payload, DistributedError> {
        if let Some(first) = slots.first() {
            let kind = std::mem::discriminant(first);
            if let Some(rank) = slots.iter().position(|s| std::mem::discriminant(s) != kind) {
                return Err(DistributedError::CollectiveMismatch { rank });
            }
            let expected = first.len();
            if let Some((rank, s)) = slots.iter().enumerate().find(|(_, s)| s.len() != expected) {
                return Err(DistributedError::LengthMismatch {
                    rank,
                    len: s.len(),
                    expected,
                });
            }
        }
        let mut slots = slots.into_iter();
        match slots.next() {
            None => Ok(Payload::F64(Vec::new())),
            Some(Payload::F64(mut sum)) => {
                for s in slots {
                    if let Payload::F64(s) = s {
                        sum.iter_mut().zip(&s).for_each(|(acc, v)| *acc += v);
                    }
                }
                Ok(Payload::F64(sum))
            }
            Some(Payload::F32(mut sum)) => {
                let rest: Vec<Vec<f32>> = slots
                    .filter_map(|s| match s {
                        Payload::F32(v) => Some(v),
                        Payload::F64(_) => None,
                    })
                    .collect();
                match rest.as_slice() {
                    [] => {}
                    // Two addends: the f32 sum is the correctly rounded exact sum, as f64 gives.
                    [other] => sum.iter_mut().zip(other).for_each(|(acc, v)| *acc += v),
                    _ => {
                        for (i, acc) in sum.iter_mut().enumerate() {
                            let total: f64 = rest
                                .iter()
                                .fold(f64::from(*acc), |t, s| t + f64::from(s[i]));
                            *acc = total as f32;
                        }
                    }
                }
                Ok(Payload::F32(sum))
            }
        }
    }
}

/// An in-process data-parallel group: one handle per worker thread, collectives over host
/// memory. Sums are taken in rank order, so every rank gets bit-identical results.
pub struct LocalGroup {
    rank: usize,
    world_size: usize,
    timeout: Duration,
    shared: Arc<(Mutex<GroupState>, Condvar)>,
}

impl LocalGroup {
    /// Handles for `world_size` workers (index = rank). A collective waits at most `timeout`.
    pub fn new(world_size: usize, timeout: Duration) -> Vec<LocalGroup> {
        assert!(world_size >= 1, "a group has at least one rank");
        let shared = Arc::new((
            Mutex::new(GroupState {
                generation: 0,
                arrived: 0,
                slots: vec![None; world_size],
                result: Arc::new(Payload::F64(Vec::new())),
                result_generation: u64::MAX,
                failed: false,
            }),
            Condvar::new(),
        ));
        (0..world_size)
            .map(|rank| LocalGroup {
                rank,
                world_size,
                timeout,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Marks the group failed and wakes every waiting rank (they return
    /// [`DistributedError::PeerFailed`]). Called when a worker errs or panics.
    pub fn abort(&self) {
        let (lock, cvar) = &*self.shared;
        let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
        state.failed = true;
        cvar.notify_all();
    }

    /// Sums `values` element-wise over all ranks (in f64, in rank order; f32 buffers are
    /// rounded once at the end), so every rank gets the same bits.
    fn exchange(&self, values: Payload) -> Result<Arc<Payload>, DistributedError> {
        let (lock, cvar) = &*self.shared;
        let mut state = lock.lock().unwrap_or_else(|p| p.into_inner());
        if state.failed {
            return Err(DistributedError::PeerFailed { rank: self.rank });
        }
        let generation = state.generation;
        state.slots[self.rank] = Some(values);
        state.arrived += 1;
        if state.arrived == self.world_size {
            let slots: Vec<Payload> = state.slots.iter_mut().map(|s| s.take().unwrap()).collect();
            let sum = match Payload::sum(slots) {
                Ok(sum) => sum,
                Err(e) => {
                    state.failed = true;
                    cvar.notify_all();
                    return Err(e);
                }
            };
            state.result = Arc::new(sum);
            state.result_generation = generation;
            state.arrived = 0;
            state.generation += 1;
            cvar.notify_all();
            return Ok(state.result.clone());
        }
        loop {
            let (next, timeout) = cvar
                .wait_timeout(state, self.timeout)
                .unwrap_or_else(|p| p.into_inner());
            state = next;
            if state.failed {
                return Err(DistributedError::PeerFailed { rank: self.rank });
            }
            if state.result_generation == generation && state.generation > generation {
                return Ok(state.result.clone());
            }
            if timeout.timed_out() {
                state.failed = true;
                cvar.notify_all();
                return Err(DistributedError::Timeout {
                    rank: self.rank,
                    seconds: self.timeout.as_secs(),
                });
            }
        }
    }
}

impl Abort for LocalGroup {
    fn abort_rank(&self) -> usize {
        self.rank
    }

    fn abort(&self) {
        LocalGroup::abort(self)
    }
}

impl<B: Backend> AllReduce<B> for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&self, tensor: Tensor<B, 1>) -> Result<Tensor<B, 1>, DistributedError> {
        let device = tensor.device();
        let values = crate::optim::tensor_values(&tensor);
        let len = values.len();
        let sum = self.exchange(Payload::F32(values))?;
        match &*sum {
            Payload::F32(sum) if sum.len() == len => Ok(Tensor::from_data(
                TensorData::new(sum.clone(), [len]),
                &device,
            )),
            other => Err(DistributedError::LengthMismatch {
                rank: self.rank,
                len,
                expected: other.len(),
            }),
        }
    }

    fn all_reduce_sum_host(&self, values: Vec<f64>) -> Result<Vec<f64>, DistributedError> {
        let len = values.len();
        let sum = self.exchange(Payload::F64(values))?;
        match &*sum {
            Payload::F64(sum) if sum.len() == len => Ok(sum.clone()),
            other => Err(DistributedError::LengthMismatch {
                rank: self.rank,
                len,
                expected: other.len(),
            }),
        }
    }
}

/// Runs `worker(rank, group)` on `world_size` threads with an in-process group and returns
/// their results in rank order. A worker that returns an error or panics aborts the group, so
/// the others fail fast instead of waiting.
pub fn run_local_workers<T, E, F>(
    world_size: usize,
    timeout: Duration,
    worker: F,
) -> Vec<Result<T, E>>
where
    T: Send,
    E: Send + From<DistributedError>,
    F: Fn(usize, &LocalGroup) -> Result<T, E> + Sync,
{
    run_workers(&LocalGroup::new(world_size, timeout), worker)
}

/// Runs `worker(rank, handle)` on one thread per handle of `groups` (index = rank) and returns
/// their results in rank order. A worker that returns an error or panics aborts its group, so
/// the others fail fast instead of waiting.
pub fn run_workers<G, T, E, F>(groups: &[G], worker: F) -> Vec<Result<T, E>>
where
    G: Abort + Sync,
    T: Send,
    E: Send + From<DistributedError>,
    F: Fn(usize, &G) -> Result<T, E> + Sync,
{
    std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .iter()
            .map(|group| {
                let worker = &worker;
                scope.spawn(move || {
                    struct AbortOnPanic<'a, G: Abort>(&'a G);
                    impl<G: Abort> Drop for AbortOnPanic<'_, G> {
                        fn drop(&mut self) {
                            if std::thread::panicking() {
                                self.0.abort();
                            }
                        }
                    }
                    let _guard = AbortOnPanic(group);
                    let result = worker(group.abort_rank(), group);
                    if result.is_err() {
                        group.abort();
                    }
                    result
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, h)| {
                h.join()
                    .unwrap_or_else(|_| Err(DistributedError::PeerFailed { rank }.into()))
            })
            .collect()
    })
}
