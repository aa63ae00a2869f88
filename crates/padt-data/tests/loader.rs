//! The prefetching loader: job order whatever the worker count, errors with their position,
//! no hang when dropped early, bounded prefetch.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use padt_data::loader::{LoadError, Loader, LoaderConfig};

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("bad job {0}")]
struct JobError(u64);

/// Deterministic work whose duration varies per job, so workers finish out of order.
fn work(job: &u64) -> Result<Vec<u64>, JobError> {
    std::thread::sleep(Duration::from_micros((job * 7919) % 3000));
    Ok((0..*job % 17).map(|k| job * 31 + k).collect())
}

fn run(num_workers: usize, prefetch: usize) -> Vec<(usize, Vec<u64>)> {
    let jobs: Vec<u64> = (0..200).map(|i| (i * 37) % 101).collect();
    Loader::new(
        jobs,
        work,
        LoaderConfig {
            num_workers,
            prefetch,
        },
    )
    .map(|r| {
        let item = r.unwrap();
        (item.position, item.value)
    })
    .collect()
}

#[test]
fn output_is_identical_for_any_worker_count() {
    let inline = run(0, 1);
    assert_eq!(inline.len(), 200);
    assert!(inline.iter().enumerate().all(|(i, (p, _))| *p == i));
    assert_eq!(run(1, 4), inline);
    assert_eq!(run(4, 8), inline);
    assert_eq!(run(4, 1), inline);
}

#[test]
fn errors_carry_the_position_and_job() {
    let loader = Loader::new(
        0u64..10,
        |j: &u64| if *j == 6 { Err(JobError(*j)) } else { Ok(*j) },
        LoaderConfig {
            num_workers: 3,
            prefetch: 4,
        },
    );
    let results: Vec<_> = loader.collect();
    assert_eq!(results.len(), 10);
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(item) => assert_eq!(item.value, i as u64),
            Err(e) => {
                assert_eq!(i, 6);
                assert_eq!(e.position(), 6);
                let text = e.to_string();
                assert!(
                    text.contains("item 6") && text.contains("bad job 6"),
                    "{text}"
                );
                assert!(matches!(
                    e,
                    LoadError::Failed {
                        source: JobError(6),
                        ..
                    }
                ));
            }
        }
    }
    assert!(results[6].is_err());
}

#[test]
fn a_panicking_job_is_an_error_not_a_hang() {
    let loader = Loader::new(
        0u64..5,
        |j: &u64| -> Result<u64, JobError> {
            if *j == 2 {
                panic!("boom at {j}");
            }
            Ok(*j)
        },
        LoaderConfig {
            num_workers: 2,
            prefetch: 2,
        },
    );
    let results: Vec<_> = loader.collect();
    assert_eq!(results.len(), 5);
    match &results[2] {
        Err(LoadError::Panicked {
            position, message, ..
        }) => {
            assert_eq!(*position, 2);
            assert!(message.contains("boom at 2"));
        }
        other => panic!("expected a panic error, got {other:?}"),
    }
    assert_eq!(results[4].as_ref().unwrap().value, 4);
}

#[test]
fn early_drop_stops_workers_without_running_the_rest() {
    let started = Arc::new(AtomicUsize::new(0));
    let counter = started.clone();
    let t0 = Instant::now();
    {
        let mut loader = Loader::new(
            0u64..1_000_000,
            move |j: &u64| -> Result<u64, JobError> {
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
                Ok(*j)
            },
            LoaderConfig {
                num_workers: 4,
                prefetch: 8,
            },
        );
        for expected in 0..3 {
            assert_eq!(loader.next().unwrap().unwrap().value, expected);
        }
    }
    // Dropped: at most the queued prefetch window ran, and the drop returned promptly.
    assert!(started.load(Ordering::SeqCst) <= 3 + 8 + 4);
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn prefetch_is_bounded_and_wait_is_reported() {
    let started = Arc::new(AtomicUsize::new(0));
    let counter = started.clone();
    let mut loader = Loader::new(
        0u64..100,
        move |j: &u64| -> Result<u64, JobError> {
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            Ok(*j)
        },
        LoaderConfig {
            num_workers: 2,
            prefetch: 3,
        },
    );
    let first = loader.next().unwrap().unwrap();
    // The first item had to be produced while we waited.
    assert!(first.wait >= Duration::from_millis(15), "{:?}", first.wait);
    std::thread::sleep(Duration::from_millis(300));
    // Never more than the consumed item plus the prefetch window.
    assert!(started.load(Ordering::SeqCst) <= 1 + 3);
    // The window was filled while we slept: the next item is ready at once.
    let second = loader.next().unwrap().unwrap();
    assert_eq!(second.value, 1);
    assert!(second.wait < Duration::from_millis(15), "{:?}", second.wait);
    assert!(loader.total_wait() >= first.wait + second.wait);
}
