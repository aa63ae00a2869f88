//! The GPU-specific pieces of training (feature `cuda`): the NCCL transport of the
//! data-parallel [`AllReduce`], a one-call NCCL self-test, and the CUDA memory probe.
//!
//! NCCL comes from burn 0.21's `distributed` feature: `DistributedBackend::all_reduce` of the
//! CubeCL backend (`burn-cubecl 0.21.0: src/ops/distributed.rs`) calls the compute client's
//! `all_reduce` (`cubecl-runtime 0.10.0: src/client.rs`), whose CUDA server initialises one
//! NCCL communicator per device set on first use (`ncclCommInitRank` with a unique id shared
//! in-process, rank = position of the device in the sorted id list) and runs `ncclAllReduce`
//! on a communication stream (`cubecl-cuda 0.10.0: src/compute/server.rs`); `libnccl.so.2` is
//! loaded at run time by cudarc. All ranks are threads of one process (burn 0.21 has no
//! multi-process or multi-node NCCL bootstrap).
//!
//! Device tensors travel through NCCL; host scalars (losses, counts, presence flags) through
//! the in-process [`LocalGroup`], which also gives every collective a host rendezvous first:
//! a rank that failed is noticed there (with a timeout) rather than as a hang inside NCCL, and
//! buffers of different lengths are refused before NCCL sees them.

use std::time::Duration;

use burn::backend::cuda::CudaDevice;
use burn::backend::Cuda;
use burn::cubecl::cuda::CudaRuntime;
use burn::cubecl::Runtime;
use burn::tensor::backend::distributed::{DistributedBackend, ReduceOperation};
use burn::tensor::backend::{DeviceId, DeviceOps};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

use crate::distributed::{run_workers, Abort, AllReduce, DistributedError, LocalGroup};
use crate::trainer::{DeviceMemory, DeviceMemoryProbe};

/// One rank's handle of an NCCL data-parallel group over the GPUs of this process.
pub struct NcclGroup {
    host: LocalGroup,
    device_ids: Vec<DeviceId>,
}

impl NcclGroup {
    /// Handles for one worker per device (index = rank). A host rendezvous waits at most
    /// `timeout` for the peers.
    pub fn new<D: DeviceOps>(devices: &[D], timeout: Duration) -> Vec<NcclGroup> {
        let device_ids: Vec<DeviceId> = devices.iter().map(|d| d.id()).collect();
        LocalGroup::new(devices.len(), timeout)
            .into_iter()
            .map(|host| NcclGroup {
                host,
                device_ids: device_ids.clone(),
            })
            .collect()
    }

    /// Checks on the host that every rank reduces a buffer of `len` values.
    fn rendezvous(&self, len: usize) -> Result<(), DistributedError> {
        let world = self.device_ids.len();
        let rank = self.host.abort_rank();
        let mut lengths = vec![0.0; world];
        lengths[rank] = len as f64;
        let lengths = AllReduce::<Cuda>::all_reduce_sum_host(&self.host, lengths)?;
        match lengths.iter().position(|&l| l != len as f64) {
            Some(other) if rank != 0 || other != 0 => Err(DistributedError::LengthMismatch {
                rank,
                len,
                expected: lengths[0] as usize,
            }),
            _ => Ok(()),
        }
    }
}

impl Abort for NcclGroup {
    fn abort_rank(&self) -> usize {
        self.host.abort_rank()
    }

    fn abort(&self) {
        self.host.abort()
    }
}

impl<B: DistributedBackend> AllReduce<B> for NcclGroup {
    fn rank(&self) -> usize {
        self.host.abort_rank()
    }

    fn world_size(&self) -> usize {
        self.device_ids.len()
    }

    fn all_reduce_sum(&self, tensor: Tensor<B, 1>) -> Result<Tensor<B, 1>, DistributedError> {
        self.rendezvous(tensor.dims()[0])?;
        let primitive = tensor.into_primitive().tensor();
        let summed =
            B::all_reduce(primitive, ReduceOperation::Sum, self.device_ids.clone()).resolve();
        Ok(Tensor::from_primitive(TensorPrimitive::Float(summed)))
    }

    fn all_reduce_sum_host(&self, values: Vec<f64>) -> Result<Vec<f64>, DistributedError> {
        AllReduce::<B>::all_reduce_sum_host(&self.host, values)
    }
}

/// The NCCL self-test of `padt-train --check-nccl`: one worker thread per device all-reduces
/// `[rank + 1, 2·(rank + 1), ..., n·(rank + 1)]` (n = 1024) and checks the sum
/// `k · w(w + 1)/2` exactly; returns one line per rank. With one device it initialises a
/// one-rank communicator and runs one `ncclAllReduce`, which already proves that libnccl loads
/// and the collective path of the backend works.
pub fn self_test(devices: &[CudaDevice]) -> Result<Vec<String>, String> {
    const N: usize = 1024;
    let groups = NcclGroup::new(devices, Duration::from_secs(120));
    let world = devices.len();
    let results = run_workers(&groups, |rank, group| -> Result<String, DistributedError> {
        let device = &devices[rank];
        let values: Vec<f32> = (1..=N).map(|k| (k * (rank + 1)) as f32).collect();
        let tensor = Tensor::<Cuda, 1>::from_data(TensorData::new(values, [N]), device);
        let started = std::time::Instant::now();
        let summed = AllReduce::<Cuda>::all_reduce_sum(group, tensor)?;
        let got: Vec<f32> = summed
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 data");
        let ranks_sum = (world * (world + 1) / 2) as f32;
        let bad = got
            .iter()
            .enumerate()
            .find(|(k, v)| **v != (*k + 1) as f32 * ranks_sum);
        Ok(match bad {
            None => format!(
                "rank {rank} ({device:?}): all-reduce of {N} f32 over {world} rank(s) correct in {:.3} s",
                started.elapsed().as_secs_f64()
            ),
            Some((k, v)) => format!(
                "rank {rank} ({device:?}): WRONG sum at {k}: {v}, expected {}",
                (k + 1) as f32 * ranks_sum
            ),
        })
    });
    let mut lines = Vec::new();
    for (rank, r) in results.into_iter().enumerate() {
        match r {
            Ok(line) if line.contains("WRONG") => return Err(line),
            Ok(line) => lines.push(line),
            Err(e) => return Err(format!("rank {rank}: {e}")),
        }
    }
    Ok(lines)
}

/// Reads the memory of the CubeCL pools of `device` as seen from the calling thread's stream
/// (bytes in use by tensors, bytes reserved from the driver). Call it from the training thread.
pub fn cuda_memory_probe(device: CudaDevice) -> DeviceMemoryProbe {
    DeviceMemoryProbe(std::sync::Arc::new(move || {
        let usage = CudaRuntime::client(&device).memory_usage().ok()?;
        Some(DeviceMemory {
            in_use_bytes: usage.bytes_in_use,
            reserved_bytes: usage.bytes_reserved,
        })
    }))
}
