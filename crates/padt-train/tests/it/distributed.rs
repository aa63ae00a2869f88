use std::time::Duration;

use burn::optim::GradientsParams;

use padt_train::distributed::{
    average_gradients, rank_micro_batches, run_local_workers, AllReduce, DistributedError,
    LocalGroup, RankInfo, StepPlan,
};

use crate::common::{mse_loss, tiny, values1, values2, Inner, B};

#[test]
fn micro_batches_are_dealt_like_accelerate() {
    let samples: Vec<u32> = (0..8).collect();
    assert_eq!(
        rank_micro_batches(&samples, 2, 0, 2, 2),
        vec![vec![0, 1], vec![4, 5]]
    );
    assert_eq!(
        rank_micro_batches(&samples, 2, 1, 2, 2),
        vec![vec![2, 3], vec![6, 7]]
    );
    // The reference: 8 ranks × 16, one micro-batch: rank r gets [16r, 16r + 16).
    let step: Vec<u32> = (0..128).collect();
    let r3 = rank_micro_batches(&step, 8, 3, 16, 1);
    assert_eq!(r3, vec![(48..64).collect::<Vec<u32>>()]);
    // Every sample goes to exactly one rank.
    let mut all: Vec<u32> = (0..8)
        .flat_map(|r| rank_micro_batches(&step, 8, r, 16, 1).concat())
        .collect();
    all.sort();
    assert_eq!(all, step);
}

#[test]
fn step_plan_drops_the_remainder_and_is_rank_independent() {
    let plan = StepPlan::new(1000, 128, 4, None);
    assert_eq!(plan.steps_per_epoch, 7);
    assert_eq!(plan.total_steps, 28);
    assert_eq!(plan.epoch_at(14), 2.0);
    assert_eq!(StepPlan::new(1000, 128, 4, Some(5)).total_steps, 5);
    let main = RankInfo {
        rank: 0,
        world_size: 4,
    };
    let other = RankInfo {
        rank: 2,
        world_size: 4,
    };
    assert_eq!(main.main_only(|| "saved"), Some("saved"));
    assert_eq!(other.main_only(|| "saved"), None);
}

/// 6 samples of 3 features → 2 targets.
fn data() -> (Vec<f32>, Vec<f32>) {
    let x: Vec<f32> = (0..18).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.2).collect();
    let y: Vec<f32> = (0..12).map(|i| ((i * 5 % 7) as f32 - 3.0) * 0.3).collect();
    (x, y)
}

#[test]
fn n_workers_average_to_the_gradient_of_the_whole_batch() {
    let (x, y) = data();
    let world = 3;
    let per_rank = 2;
    // One worker, the whole batch of 6.
    let m = tiny(0.3);
    let full = GradientsParams::from_grads::<B, _>(mse_loss(&m, &x, &y).backward(), &m);
    let full_w = values2(full.get::<Inner, 2>(m.w.id).unwrap());
    let full_b = values1(full.get::<Inner, 1>(m.b.id).unwrap());

    // Three workers with 2 samples each, gradients averaged in-process.
    let results = run_local_workers(world, Duration::from_secs(30), |rank, group| {
        let m = tiny(0.3);
        let xs = &x[rank * per_rank * 3..(rank + 1) * per_rank * 3];
        let ys = &y[rank * per_rank * 2..(rank + 1) * per_rank * 2];
        let grads = GradientsParams::from_grads::<B, _>(mse_loss(&m, xs, ys).backward(), &m);
        let grads = average_gradients::<B, _, _>(&m, grads, group)?;
        Ok::<_, DistributedError>((
            values2(grads.get::<Inner, 2>(m.w.id).unwrap()),
            values1(grads.get::<Inner, 1>(m.b.id).unwrap()),
        ))
    });
    let results: Vec<_> = results.into_iter().map(|r| r.unwrap()).collect();
    for (w, b) in &results {
        for (a, e) in w.iter().zip(&full_w).chain(b.iter().zip(&full_b)) {
            assert!((a - e).abs() < 1e-5, "{a} vs {e}");
        }
        // Every rank holds bit-identical gradients (so identical parameters after the step).
        assert_eq!((w, b), (&results[0].0, &results[0].1));
    }
}

#[test]
fn a_gradient_present_on_some_ranks_only_counts_as_zero_elsewhere() {
    let results = run_local_workers(2, Duration::from_secs(30), |rank, group| {
        let m = tiny(0.3);
        // Rank 0 uses `b`, rank 1 does not (like a batch without objects skipping a head).
        let loss = if rank == 0 {
            (m.w.val().sum() + m.b.val().sum()).mul_scalar(2.0)
        } else {
            m.w.val().sum().mul_scalar(4.0)
        };
        let grads = GradientsParams::from_grads::<B, _>(loss.backward(), &m);
        let grads = average_gradients::<B, _, _>(&m, grads, group)?;
        Ok::<_, DistributedError>((
            values2(grads.get::<Inner, 2>(m.w.id).unwrap()),
            values1(grads.get::<Inner, 1>(m.b.id).unwrap()),
        ))
    });
    for r in results {
        let (w, b) = r.unwrap();
        assert_eq!(w, vec![3.0; 6]); // (2 + 4) / 2
        assert_eq!(b, vec![1.0; 2]); // (2 + 0) / 2
    }
}

#[test]
fn a_failing_worker_releases_the_others() {
    let results = run_local_workers(3, Duration::from_secs(30), |rank, group| {
        if rank == 1 {
            return Err(DistributedError::PeerFailed { rank: 99 });
        }
        // The other ranks wait in a collective that rank 1 never joins.
        AllReduce::<Inner>::all_reduce_sum_host(group, vec![1.0]).map(|_| ())
    });
    for (rank, r) in results.iter().enumerate() {
        let err = r.as_ref().unwrap_err();
        if rank != 1 {
            assert_eq!(*err, DistributedError::PeerFailed { rank });
        }
    }
    // A panicking worker does the same.
    let results = run_local_workers(2, Duration::from_secs(30), |rank, group| {
        if rank == 0 {
            panic!("worker 0 exploded");
        }
        AllReduce::<Inner>::all_reduce_sum_host(group, vec![1.0]).map(|_| ())
    });
    assert!(results.iter().all(|r| r.is_err()));
}

#[test]
fn collectives_check_lengths_and_time_out() {
    let results = run_local_workers(2, Duration::from_secs(30), |rank, group| {
        AllReduce::<Inner>::all_reduce_sum_host(group, vec![1.0; rank + 1])
    });
    assert!(results.iter().all(|r| r.is_err()));
    assert!(results
        .iter()
        .any(|r| matches!(r, Err(DistributedError::LengthMismatch { .. }))));
    // A rank alone in a group of two times out instead of hanging.
    let groups = LocalGroup::new(2, Duration::from_millis(200));
    let err = AllReduce::<Inner>::all_reduce_sum_host(&groups[0], vec![1.0]).unwrap_err();
    assert!(
        matches!(err, DistributedError::Timeout { rank: 0, .. }),
        "{err:?}"
    );
    // Many rounds in a row stay in lockstep.
    let results = run_local_workers(4, Duration::from_secs(30), |rank, group| {
        let mut acc = 0.0;
        for round in 0..200 {
            let v = AllReduce::<Inner>::all_reduce_sum_host(group, vec![(rank * round) as f64])?;
            acc += v[0];
        }
        Ok::<_, DistributedError>(acc)
    });
    let expect: f64 = (0..200).map(|r| (6 * r) as f64).sum();
    for r in results {
        assert_eq!(r.unwrap(), expect);
    }
}

#[test]
fn tensor_sums_are_rounded_once_and_identical_on_every_rank() {
    use burn::tensor::{Tensor, TensorData};
    // 1 + 2⁻²⁴ + 2⁻²⁴: adding in f32 left to right gives 1 (each addend is half an ulp and
    // rounds away); the f64 sum rounded once gives 1 + 2⁻²³.
    let tiny_bit = 2f32.powi(-24);
    let results = run_local_workers(3, Duration::from_secs(30), |rank, group| {
        let value = if rank == 0 { 1.0 } else { tiny_bit };
        let device = Default::default();
        let t =
            Tensor::<Inner, 1>::from_data(TensorData::new(vec![value, rank as f32], [2]), &device);
        let sum = AllReduce::<Inner>::all_reduce_sum(group, t)?;
        Ok::<_, DistributedError>(sum.into_data().into_vec::<f32>().unwrap())
    });
    for r in results {
        assert_eq!(r.unwrap(), vec![1.0 + 2f32.powi(-23), 3.0]);
    }
}

#[test]
fn ranks_in_different_collectives_fail_instead_of_mixing_buffers() {
    use burn::tensor::{Tensor, TensorData};
    let results = run_local_workers(2, Duration::from_secs(30), |rank, group| {
        if rank == 0 {
            AllReduce::<Inner>::all_reduce_sum_host(group, vec![1.0]).map(|_| ())
        } else {
            let t = Tensor::<Inner, 1>::from_data(
                TensorData::new(vec![1.0f32], [1]),
                &Default::default(),
            );
            AllReduce::<Inner>::all_reduce_sum(group, t).map(|_| ())
        }
    });
    assert!(results.iter().all(|r| r.is_err()));
    assert!(results
        .iter()
        .any(|r| matches!(r, Err(DistributedError::CollectiveMismatch { rank: 1 }))));
}
