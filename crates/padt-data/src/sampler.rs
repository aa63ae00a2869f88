//! The training sampler with PaDT's semantics (its `RepeatRandomSampler` under the HF Trainer and
//! accelerate), reproducing the reference order exactly, plus a resumable cursor.
//!
//! Reference behaviour (`padt-reference.md` §4, `padt_sft_trainer.py`):
//! - the datasets of `data_paths` are concatenated in order (a dataset listed twice, as COCO in
//!   the Pro recipe, appears twice: `repeat: 2` here);
//! - one `torch.Generator` seeded with `seed` (42) lives for the whole run; each epoch draws
//!   `torch.randperm(N)` from it (epoch `e` uses the `e+1`-th permutation; the Trainer replays
//!   earlier epochs on resume, so this holds for resumed runs too);
//! - the permutation is cut into chunks of the global batch
//!   `per_device_batch_size · world_size · gradient_accumulation_steps`; the remainder is dropped;
//! - chunk = one optimizer step; micro-step `a` takes `chunk[a::GA]`, and accelerate's
//!   `BatchSamplerShard` gives rank `r` its `r`-th run of `per_device_batch_size` indices.
//!
//! `torch.randperm` on CPU (n < 2³²/20) is a Fisher–Yates over MT19937:
//! `for i in 0..n-1: z = mt.next_u32() % (n - i); swap(r[i], r[i + z])`. With seed 42,
//! `randperm(10)` is `[2, 6, 1, 8, 4, 5, 0, 9, 3, 7]` (tested).

use serde::{Deserialize, Serialize};

/// Errors of sampler construction and use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SamplerError {
    #[error("sampler: no samples (the datasets {names:?} are all empty)")]
    Empty { names: Vec<String> },
    #[error("sampler: dataset {name:?} has repeat 0; leave it out instead")]
    ZeroRepeat { name: String },
    #[error(
        "sampler: per_device_batch_size {per_device}, world_size {world_size} and \
         gradient_accumulation_steps {grad_accum} must all be positive"
    )]
    BadBatch {
        per_device: usize,
        world_size: usize,
        grad_accum: usize,
    },
    #[error(
        "sampler: the global batch {global_batch} is larger than the {samples} samples, so an \
         epoch has no step (the remainder is dropped)"
    )]
    NoStep { global_batch: usize, samples: usize },
    #[error("sampler: rank {rank} is outside world_size {world_size}")]
    BadRank { rank: usize, world_size: usize },
    #[error(
        "sampler: cursor (epoch {epoch}, batch {batch}) is past the {batches} micro-batches of an epoch"
    )]
    BadCursor {
        epoch: u64,
        batch: u64,
        batches: u64,
    },
    #[error("sampler: {samples} samples is too many for torch.randperm's 32-bit path")]
    TooMany { samples: usize },
}

/// One dataset in the training mix, in `data_paths` order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetSpec {
    pub name: String,
    /// Number of records.
    pub len: usize,
    /// How many times the dataset is listed (the Pro recipe lists COCO twice → 2).
    #[serde(default = "one")]
    pub repeat: usize,
}

fn one() -> usize {
    1
}

/// Batch geometry and seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerConfig {
    /// Generator seed (PaDT: `seed`, 42; `data_seed` is ignored by the reference).
    pub seed: u64,
    pub per_device_batch_size: usize,
    pub world_size: usize,
    pub gradient_accumulation_steps: usize,
}

impl SamplerConfig {
    /// Samples per optimizer step over all ranks.
    pub fn global_batch(&self) -> usize {
        self.per_device_batch_size * self.world_size * self.gradient_accumulation_steps
    }
}

/// Where a sample comes from: dataset `dataset` (index into the specs), its copy `copy`
/// (0-based, for repeated datasets), record `record`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SampleRef {
    /// Index into the concatenation of all datasets (with repeats expanded).
    pub global: usize,
    pub dataset: usize,
    pub copy: usize,
    pub record: usize,
}

/// Resumable position: the next micro-batch is `batch` of epoch `epoch` (micro-batches are
/// counted per rank; all ranks advance together). Serialise it into checkpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SamplerCursor {
    pub epoch: u64,
    pub batch: u64,
}

/// One micro-batch for one rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampledBatch {
    /// Position of this batch.
    pub cursor: SamplerCursor,
    /// Position after it (store this in a checkpoint written after the batch is consumed).
    pub next: SamplerCursor,
    /// Optimizer step within the epoch and micro-step within that step.
    pub step: u64,
    pub micro_step: usize,
    pub samples: Vec<SampleRef>,
}

/// PaDT's sampler over a mix of datasets.
#[derive(Debug, Clone)]
pub struct Sampler {
    datasets: Vec<DatasetSpec>,
    /// `(start, dataset, copy)` of each expanded segment of the concatenation.
    segments: Vec<(usize, usize, usize)>,
    len: usize,
    config: SamplerConfig,
}

impl Sampler {
    pub fn new(datasets: Vec<DatasetSpec>, config: SamplerConfig) -> Result<Self, SamplerError> {
        if config.per_device_batch_size == 0
            || config.world_size == 0
            || config.gradient_accumulation_steps == 0
        {
            return Err(SamplerError::BadBatch {
                per_device: config.per_device_batch_size,
                world_size: config.world_size,
                grad_accum: config.gradient_accumulation_steps,
            });
        }
        let mut segments = Vec::new();
        let mut len = 0usize;
        for (d, spec) in datasets.iter().enumerate() {
            if spec.repeat == 0 {
                return Err(SamplerError::ZeroRepeat {
                    name: spec.name.clone(),
                });
            }
            for copy in 0..spec.repeat {
                if spec.len > 0 {
                    segments.push((len, d, copy));
                }
                len += spec.len;
            }
        }
        if len == 0 {
            return Err(SamplerError::Empty {
                names: datasets.iter().map(|d| d.name.clone()).collect(),
            });
        }
        if len as u64 >= u32::MAX as u64 / 20 {
            return Err(SamplerError::TooMany { samples: len });
        }
        if config.global_batch() > len {
            return Err(SamplerError::NoStep {
                global_batch: config.global_batch(),
                samples: len,
            });
        }
        Ok(Self {
            datasets,
            segments,
            len,
            config,
        })
    }

    /// Samples in one pass over the mix (repeats counted).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: construction refuses an empty mix.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    pub fn datasets(&self) -> &[DatasetSpec] {
        &self.datasets
    }

    /// Optimizer steps per epoch (`len / global_batch`, remainder dropped).
    pub fn steps_per_epoch(&self) -> u64 {
        (self.len / self.config.global_batch()) as u64
    }

    /// Micro-batches each rank sees per epoch.
    pub fn micro_batches_per_epoch(&self) -> u64 {
        self.steps_per_epoch() * self.config.gradient_accumulation_steps as u64
    }

    /// Samples dropped at the end of every epoch.
    pub fn dropped_per_epoch(&self) -> usize {
        self.len % self.config.global_batch()
    }

    /// Resolves a global index of the concatenation.
    pub fn locate(&self, global: usize) -> SampleRef {
        assert!(global < self.len, "sample {global} outside {}", self.len);
        let seg = self
            .segments
            .partition_point(|&(start, _, _)| start <= global)
            - 1;
        let (start, dataset, copy) = self.segments[seg];
        SampleRef {
            global,
            dataset,
            copy,
            record: global - start,
        }
    }

    /// The reference's permutation of epoch `epoch`: the `epoch+1`-th `torch.randperm(len)` of a
    /// generator seeded with `seed`.
    pub fn epoch_permutation(&self, epoch: u64) -> Vec<usize> {
        let mut mt = Mt19937::new(self.config.seed as u32);
        // Each randperm(n) draws exactly n - 1 numbers.
        mt.discard(epoch * (self.len as u64 - 1));
        torch_randperm(self.len, &mut mt)
    }

    /// Indices (into the concatenation) of micro-batch `batch` for `rank`, given the epoch's
    /// permutation.
    fn batch_from_permutation(&self, perm: &[usize], batch: u64, rank: usize) -> Vec<usize> {
        let c = &self.config;
        let ga = c.gradient_accumulation_steps;
        let step = (batch / ga as u64) as usize;
        let micro = (batch % ga as u64) as usize;
        let chunk = &perm[step * c.global_batch()..(step + 1) * c.global_batch()];
        // Micro-step `micro` takes chunk[micro::ga]; rank r its r-th run of per_device.
        chunk
            .iter()
            .skip(micro)
            .step_by(ga)
            .skip(rank * c.per_device_batch_size)
            .take(c.per_device_batch_size)
            .copied()
            .collect()
    }

    /// Iterates `rank`'s micro-batches from `cursor` on, across epochs, until epoch
    /// `num_epochs` (exclusive) or forever with `None`.
    pub fn iter(
        &self,
        rank: usize,
        cursor: SamplerCursor,
        num_epochs: Option<u64>,
    ) -> Result<RankBatches<'_>, SamplerError> {
        if rank >= self.config.world_size {
            return Err(SamplerError::BadRank {
                rank,
                world_size: self.config.world_size,
            });
        }
        if cursor.batch >= self.micro_batches_per_epoch() {
            return Err(SamplerError::BadCursor {
                epoch: cursor.epoch,
                batch: cursor.batch,
                batches: self.micro_batches_per_epoch(),
            });
        }
        Ok(RankBatches {
            sampler: self,
            rank,
            cursor,
            num_epochs,
            perm: None,
        })
    }
}

/// Iterator over one rank's micro-batches (see [`Sampler::iter`]).
#[derive(Debug)]
pub struct RankBatches<'a> {
    sampler: &'a Sampler,
    rank: usize,
    cursor: SamplerCursor,
    num_epochs: Option<u64>,
    /// The current epoch's permutation, generated on first use.
    perm: Option<(u64, Vec<usize>)>,
}

impl RankBatches<'_> {
    /// The position of the next batch.
    pub fn cursor(&self) -> SamplerCursor {
        self.cursor
    }
}

impl Iterator for RankBatches<'_> {
    type Item = SampledBatch;

    fn next(&mut self) -> Option<SampledBatch> {
        let cursor = self.cursor;
        if self.num_epochs.is_some_and(|n| cursor.epoch >= n) {
            return None;
        }
        if self.perm.as_ref().map(|(e, _)| *e) != Some(cursor.epoch) {
            self.perm = Some((cursor.epoch, self.sampler.epoch_permutation(cursor.epoch)));
        }
        let perm = &self.perm.as_ref().expect("permutation").1;
        let indices = self
            .sampler
            .batch_from_permutation(perm, cursor.batch, self.rank);
        let per_epoch = self.sampler.micro_batches_per_epoch();
        let next = if cursor.batch + 1 == per_epoch {
            SamplerCursor {
                epoch: cursor.epoch + 1,
                batch: 0,
            }
        } else {
            SamplerCursor {
                epoch: cursor.epoch,
                batch: cursor.batch + 1,
            }
        };
        self.cursor = next;
        let ga = self.sampler.config.gradient_accumulation_steps as u64;
        Some(SampledBatch {
            cursor,
            next,
            step: cursor.batch / ga,
            micro_step: (cursor.batch % ga) as usize,
            samples: indices
                .into_iter()
                .map(|g| self.sampler.locate(g))
                .collect(),
        })
    }
}

/// `torch.randperm(n, generator)` on CPU for `n < 2³²/20`.
pub fn torch_randperm(n: usize, mt: &mut Mt19937) -> Vec<usize> {
    let mut r: Vec<usize> = (0..n).collect();
    for i in 0..n.saturating_sub(1) {
        let z = mt.next_u32() as usize % (n - i);
        r.swap(i, i + z);
    }
    r
}

/// The 32-bit Mersenne Twister (MT19937) as in `std::mt19937` / PyTorch's CPU generator.
#[derive(Debug, Clone)]
pub struct Mt19937 {
    state: Box<[u32; 624]>,
    index: usize,
}

impl Mt19937 {
    pub fn new(seed: u32) -> Self {
        let mut state = Box::new([0u32; 624]);
        state[0] = seed;
        for i in 1..624 {
            state[i] = 1_812_433_253u32
                .wrapping_mul(state[i - 1] ^ (state[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, index: 624 }
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        for i in 0..624 {
            let y = (self.state[i] & UPPER) | (self.state[(i + 1) % 624] & LOWER);
            let mut v = self.state[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            self.state[i] = v;
        }
        self.index = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Skips `count` outputs.
    pub fn discard(&mut self, mut count: u64) {
        while count > 0 {
            if self.index >= 624 {
                self.twist();
            }
            let step = count.min((624 - self.index) as u64);
            self.index += step as usize;
            count -= step;
        }
    }
}
