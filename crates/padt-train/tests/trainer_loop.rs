//! The step loop end to end on the padt-tiny checkpoint (CPU, `Autodiff<Flex>`), over shard
//! sets written in the test from the golden batch's records (`tests/fixtures/padt-tiny`,
//! `PADT_TINY_GOLDEN_DIR`): the loss falls, gradient accumulation equals the bigger batch, a
//! stopped and resumed run reproduces the uninterrupted one exactly, checkpoints round-trip,
//! two data-parallel CPU ranks equal gradient accumulation, the gradient-checkpointing backend
//! gives the same losses, and the metrics carry peak memory, model FLOPs and MFU.

use std::path::{Path, PathBuf};
use std::time::Duration;

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::{Autodiff, Flex};
use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use padt_data::record::SourceItem;
use padt_model::padt::PadtModel;
use padt_train::checkpoint::{load_model_params, read_trainer_state, CheckpointManager};
use padt_train::distributed::{run_local_workers, LocalGroup};
use padt_train::metrics::{read_metrics, StepMetrics};
use padt_train::optim::GroupedAdamW;
use padt_train::params::list_params;
use padt_train::recipe::TrainConfig;
use padt_train::trainer::{
    build_model, train, train_data_parallel, train_rank, ModelInit, TrainError, TrainOptions,
    TrainOutcome,
};
use serde_json::Value;

#[path = "../../../tests/support/golden_batch.rs"]
mod golden_batch;
use golden_batch::{batch_json, golden_dir, golden_item, golden_record, write_test_shards};

type A = Autodiff<Flex>;

fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The golden batch's two records (sample 0: OVD with two objects, sample 1: REC with one).
/// `single_object`: sample 0 keeps only its first object, so every sample has one object and
/// the box/mask normalisers (`/ #objects`) of a batch of 2 equal those of two batches of 1.
fn golden_items(single_object: bool) -> Vec<SourceItem> {
    batch_json()["samples"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut record = golden_record(i, s);
            if single_object && record.objects.len() > 1 {
                record.objects.truncate(1);
                record.answer_template = format!(
                    "In this image, there are 1 \"{}\" (<|Obj_0|>).",
                    record.objects[0].label
                );
            }
            golden_item(s, record)
        })
        .collect()
}

fn write_shards(dir: &Path, items: &[SourceItem]) {
    write_test_shards(dir, items, 1, "train");
}

/// The tiny test recipe on the padt-tiny checkpoint, writing into `out`, with `overrides`.
fn recipe(shards: &Path, out: &Path, overrides: &[&str]) -> TrainConfig {
    let model = golden_dir().join("checkpoint");
    let mut all = vec![
        format!("model.path={}", model.display()),
        format!("data.datasets.0.shards={}", shards.display()),
        format!("output_dir={}", out.display()),
        "training.global_batch_size=null".to_string(),
        "data.num_workers=2".to_string(),
    ];
    all.extend(overrides.iter().map(|s| s.to_string()));
    TrainConfig::load(&repo_dir().join("configs/tiny_test.yaml"), &all).unwrap()
}

fn run(config: &TrainConfig, options: TrainOptions) -> TrainOutcome<A> {
    train::<A>(config, &options, &Default::default(), &mut |_| {}).unwrap()
}

fn params<B: AutodiffBackend>(model: &PadtModel<B>) -> Vec<(String, Vec<f32>)> {
    struct Values(Vec<Vec<f32>>);
    impl<B: burn::tensor::backend::Backend> burn::module::ModuleVisitor<B> for Values {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<B, D>>,
        ) {
            self.0
                .push(param.val().into_data().convert::<f32>().to_vec().unwrap());
        }
    }
    let names = list_params::<B, _>(model);
    let mut values = Values(Vec::new());
    model.visit(&mut values);
    // The visitor sees a shared parameter twice; list_params once: match by order of names.
    assert_eq!(
        names.len(),
        values.0.len(),
        "no shared parameters in padt-tiny"
    );
    names.into_iter().map(|p| p.name).zip(values.0).collect()
}

fn losses(records: &[StepMetrics]) -> Vec<(u64, Option<f64>)> {
    records.iter().map(|r| (r.step, r.loss)).collect()
}

#[test]
fn loss_falls_over_ten_steps_and_outputs_are_written() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write_shards(&shards, &golden_items(false));
    let out = tmp.path().join("run");
    // 2 records × repeat 2 = 4 samples per epoch, batch 2: 2 steps per epoch, 5 epochs.
    let config = recipe(
        &shards,
        &out,
        &[
            "data.datasets.0.repeat=2",
            "training.epochs=5",
            "training.max_steps=null",
            "checkpoint.every_steps=4",
            "checkpoint.keep_last=2",
        ],
    );
    let outcome = run(&config, TrainOptions::default());
    assert_eq!((outcome.step, outcome.total_steps), (10, 10));
    assert!(!outcome.stopped_early);
    let records = read_metrics(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(records.len(), 10);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.step, i as u64 + 1);
        assert!((r.epoch - (i + 1) as f64 / 2.0).abs() < 1e-12);
        assert_eq!(r.lr, 1e-3, "constant schedule");
        for key in [
            "sft_loss",
            "bbox_loss",
            "score_loss",
            "mask_loss",
            "iou",
            "giou",
        ] {
            assert!(r.components.get(key).copied().flatten().is_some(), "{key}");
        }
        assert!(r.grad_norm.unwrap() > 0.0);
        assert!(r.samples_per_s > 0.0 && r.tokens_per_s > 0.0);
        assert!(!r.skipped);
    }
    let l: Vec<f64> = records.iter().map(|r| r.loss.unwrap()).collect();
    eprintln!("losses {l:?}");
    let first = (l[0] + l[1]) / 2.0;
    let last = (l[8] + l[9]) / 2.0;
    assert!(
        last < 0.8 * first,
        "loss does not fall: first two {first}, last two {last}"
    );
    // Checkpoints at 4, 8 and the final 10; keep_last 2 pruned checkpoint-4.
    let manager = CheckpointManager::new(&out, Some(2));
    let steps: Vec<u64> = manager.list().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![8, 10]);
    assert!(out.join("config.yaml").is_file());
    assert!(out.join("loss.png").is_file());
    let saved = TrainConfig::load(&out.join("config.yaml"), &[]).unwrap();
    assert_eq!(saved, config);
    assert!(outcome.summary.contains("steps 10"), "{}", outcome.summary);
    // A fresh run must not mix into an existing one.
    let err = train::<A>(
        &config,
        &TrainOptions::default(),
        &Default::default(),
        &mut |_| {},
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("--resume"), "{err}");
}

#[test]
fn two_micro_batches_of_one_equal_one_batch_of_two() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write_shards(&shards, &golden_items(true));
    let whole = recipe(
        &shards,
        &tmp.path().join("whole"),
        &["training.max_steps=2", "data.datasets.0.repeat=2"],
    );
    let accumulated = recipe(
        &shards,
        &tmp.path().join("accum"),
        &[
            "training.max_steps=2",
            "data.datasets.0.repeat=2",
            "training.per_device_batch_size=1",
            "training.gradient_accumulation_steps=2",
        ],
    );
    let a = run(&whole, TrainOptions::default());
    let b = run(&accumulated, TrainOptions::default());
    for (x, y) in a.records.iter().zip(&b.records) {
        eprintln!(
            "step {}: loss {:?} vs {:?}, grad norm {:?} vs {:?}",
            x.step, x.loss, y.loss, x.grad_norm, y.grad_norm
        );
    }
    // Same samples, same picks: the first step's loss and gradient are the same up to float
    // rounding and the 1e-4 / 1e-5·N terms of the box and mask normalisers
    // (relative 5e-5 for N = 2 vs 1 objects), hence rel 1e-4.
    let close = |v: f64, w: f64| (v - w).abs() <= 1e-4 * v.abs().max(1.0);
    let (x, y) = (&a.records[0], &b.records[0]);
    assert!(
        close(x.loss.unwrap(), y.loss.unwrap()),
        "{:?} vs {:?}",
        x.loss,
        y.loss
    );
    for (k, v) in &x.components {
        let w = y.components[k];
        assert!(close(v.unwrap(), w.unwrap()), "{k}: {v:?} vs {w:?}");
    }
    let (gx, gy) = (x.grad_norm.unwrap(), y.grad_norm.unwrap());
    assert!((gx - gy).abs() <= 1e-3 * gx, "grad norm {gx} vs {gy}");
    // After one identical update the second step's loss still agrees closely.
    let (x, y) = (&a.records[1], &b.records[1]);
    assert!(
        (x.loss.unwrap() - y.loss.unwrap()).abs() < 1e-3,
        "step 2: {:?} vs {:?}",
        x.loss,
        y.loss
    );
}

#[test]
fn stopped_and_resumed_run_reproduces_the_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write_shards(&shards, &golden_items(false));
    // Linear decay and the decoder warm-up (first 2 steps) make the step number matter; 3
    // epochs of 2 steps, resumed mid-epoch.
    let overrides = [
        "training.epochs=3",
        "training.max_steps=null",
        "data.datasets.0.repeat=2",
        "schedule.kind=linear",
        "decoder_warmup.enabled=true",
        "decoder_warmup.steps=2",
        "decoder_warmup.epoch_fraction=1.0",
        "checkpoint.every_steps=100",
        "checkpoint.keep_last=null",
    ];
    let straight = recipe(&shards, &tmp.path().join("straight"), &overrides);
    let a = run(&straight, TrainOptions::default());
    assert_eq!(a.step, 6);

    let interrupted = recipe(&shards, &tmp.path().join("resumed"), &overrides);
    let stop = run(
        &interrupted,
        TrainOptions {
            stop_after_steps: Some(3),
            ..Default::default()
        },
    );
    assert!(stop.stopped_early);
    assert_eq!(stop.step, 3);
    assert_eq!(
        stop.last_checkpoint.as_deref(),
        Some(tmp.path().join("resumed/checkpoint-3").as_path())
    );
    let state = read_trainer_state(&tmp.path().join("resumed/checkpoint-3")).unwrap();
    assert_eq!(state.step, 3);
    assert_eq!(state.sampler["epoch"], 1);
    assert_eq!(state.sampler["batch"], 1);
    assert_eq!(state.schedule.total_steps, 6, "schedule of the whole run");

    let b = run(
        &interrupted,
        TrainOptions {
            resume: true,
            ..Default::default()
        },
    );
    assert!(!b.stopped_early);
    assert_eq!(b.step, 6);
    let want = read_metrics(&tmp.path().join("straight/metrics.jsonl")).unwrap();
    let got = read_metrics(&tmp.path().join("resumed/metrics.jsonl")).unwrap();
    eprintln!("straight {:?}\nresumed  {:?}", losses(&want), losses(&got));
    assert_eq!(losses(&got), losses(&want), "identical losses");
    for (x, y) in want.iter().zip(&got) {
        assert_eq!(x.components, y.components, "step {}", x.step);
        assert_eq!(x.grad_norm, y.grad_norm, "step {}", x.step);
        assert_eq!(x.lr, y.lr, "step {}", x.step);
    }
    assert_eq!(
        params(&a.model),
        params(&b.model),
        "identical final parameters"
    );
}

#[test]
fn checkpoint_round_trips_model_optimizer_and_state() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write_shards(&shards, &golden_items(false));
    let out = tmp.path().join("run");
    let config = recipe(&shards, &out, &["training.max_steps=2"]);
    let outcome = run(&config, TrainOptions::default());
    let dir = out.join("checkpoint-2");
    assert_eq!(outcome.last_checkpoint.as_deref(), Some(dir.as_path()));

    // Parameters: a freshly built model loads them back bit for bit.
    let (fresh, _) = build_model::<A>(&config, ModelInit::Random, &Default::default()).unwrap();
    let loaded = load_model_params::<A, _>(fresh, &dir.join("model.safetensors")).unwrap();
    assert_eq!(params(&loaded), params(&outcome.model));

    // Optimizer: moments for every parameter, each updated twice.
    let mut optim = GroupedAdamW::<A>::from_config(&config);
    optim
        .load(&dir.join("optimizer.safetensors"), &Default::default())
        .unwrap();
    for (name, _) in params(&outcome.model) {
        let s = optim
            .state(&name)
            .unwrap_or_else(|| panic!("no state for {name}"));
        assert_eq!(s.step, 2, "{name}");
    }

    // Trainer state.
    let state = read_trainer_state(&dir).unwrap();
    assert_eq!(state.step, 2);
    assert_eq!(state.samples_seen, 4);
    assert_eq!(state.world_size, 1);
    assert_eq!(state.global_batch_size, 2);
    assert_eq!(state.rng["seed"], 42);
    assert_eq!(
        state.sampler["epoch"], 2,
        "2 samples, batch 2: one step per epoch"
    );

    // A resume with nothing left to do keeps the model as saved.
    let again = run(
        &config,
        TrainOptions {
            resume: true,
            ..Default::default()
        },
    );
    assert_eq!(again.step, 2);
    assert_eq!(params(&again.model), params(&outcome.model));
    assert_eq!(again.records.len(), 2);

    // A recipe that would not continue the same run is refused, naming the difference.
    for (change, words) in [
        ("training.max_steps=3", "schedule"),
        ("seed=7", "seed"),
        ("training.per_device_batch_size=1", "global batch"),
    ] {
        let changed = recipe(&shards, &out, &["training.max_steps=2", change]);
        let resume = TrainOptions {
            resume: true,
            ..Default::default()
        };
        let err = train::<A>(&changed, &resume, &Default::default(), &mut |_| {})
            .err()
            .unwrap_or_else(|| panic!("{change}: resumed"));
        assert!(err.to_string().contains(words), "{change}: {err}");
    }
}

#[test]
fn non_finite_steps_are_skipped_then_abort() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write_shards(&shards, &golden_items(false));
    let out = tmp.path().join("run");
    // An absurd learning rate blows the parameters up after the first update.
    let config = recipe(
        &shards,
        &out,
        &[
            "optimizer.lr=1e30",
            "training.max_steps=6",
            "training.max_nonfinite_skips=2",
        ],
    );
    let err = train::<A>(
        &config,
        &TrainOptions::default(),
        &Default::default(),
        &mut |_| {},
    )
    .err()
    .expect("aborts");
    assert!(
        err.to_string().contains("max_nonfinite_skips"),
        "unexpected error: {err}"
    );
    let records = read_metrics(&out.join("metrics.jsonl")).unwrap();
    let skipped: Vec<u64> = records
        .iter()
        .filter(|r| r.skipped)
        .map(|r| r.step)
        .collect();
    eprintln!("records {:?}", losses(&records));
    assert!(!records[0].skipped, "the first step is finite");
    assert_eq!(
        skipped,
        vec![2, 3, 4],
        "two skips allowed, the third aborts (logged)"
    );
}

#[test]
fn a_bad_record_stops_the_run_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    let mut items = golden_items(false);
    // Record 1's template names an object it does not have.
    items[1].record.answer_template = "The cup is <|Obj_3|>.".into();
    write_shards(&shards, &items);
    let out = tmp.path().join("run");
    let config = recipe(&shards, &out, &["training.max_steps=1"]);
    let err = train::<A>(
        &config,
        &TrainOptions::default(),
        &Default::default(),
        &mut |_| {},
    )
    .err()
    .expect("fails");
    let text = err.to_string();
    eprintln!("{text}");
    assert!(
        text.contains("dataset tiny_batch record 1"),
        "the error names the record: {text}"
    );
    assert!(
        !out.join("checkpoint-1").exists(),
        "no checkpoint of a failed step"
    );
}

/// Two CPU ranks of one sample each (in-process all-reduce) are the same run as one rank
/// accumulating two micro-batches of one sample: same samples, same losses, same gradient
/// mean; and every rank ends with the same parameters.
#[test]
fn two_data_parallel_ranks_equal_two_accumulated_micro_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write_shards(&shards, &golden_items(false));
    let common = [
        "training.max_steps=3",
        "data.datasets.0.repeat=2",
        "training.per_device_batch_size=1",
        "checkpoint.every_steps=100",
    ];
    let mut dp_overrides = common.to_vec();
    dp_overrides.push("training.devices=[cpu, cpu]");
    let dp = recipe(&shards, &tmp.path().join("dp"), &dp_overrides);
    let mut ga_overrides = common.to_vec();
    ga_overrides.push("training.gradient_accumulation_steps=2");
    let ga = recipe(&shards, &tmp.path().join("ga"), &ga_overrides);
    assert_eq!(dp.global_batch_size(), ga.global_batch_size());

    let accumulated = run(&ga, TrainOptions::default());
    let options = TrainOptions::default();
    let ranks = run_local_workers(2, Duration::from_secs(600), |rank, group| {
        train_rank::<A, _>(&dp, &options, &Default::default(), group, &mut |_| {})
            .inspect(|o| assert_eq!(o.step, 3, "rank {rank}"))
    });
    let ranks: Vec<TrainOutcome<A>> = ranks
        .into_iter()
        .map(|r| r.unwrap_or_else(|e: TrainError| panic!("{e}")))
        .collect();
    assert_eq!(
        params(&ranks[0].model),
        params(&ranks[1].model),
        "replicas stay identical"
    );
    // Only rank 0 writes files.
    assert!(tmp.path().join("dp/metrics.jsonl").is_file());
    assert!(tmp.path().join("dp/checkpoint-3").is_dir());
    let logged = read_metrics(&tmp.path().join("dp/metrics.jsonl")).unwrap();
    assert_eq!(logged.len(), 3);
    // Same arithmetic but the gradient sum (f32 per micro-batch vs f64 over ranks) and its
    // order: float rounding only.
    assert_same_steps(&accumulated.records, &logged, 1e-5);
    for (x, y) in accumulated.records.iter().zip(&logged) {
        for (k, v) in &x.components {
            let close =
                (v.unwrap() - y.components[k].unwrap()).abs() <= 1e-5 * v.unwrap().abs().max(1.0);
            assert!(close, "{k}");
        }
        assert_eq!(x.model_flops, y.model_flops, "FLOPs are summed over ranks");
    }

    // The same through train_data_parallel (what padt-train runs for [cpu, cpu]), resumed
    // from the data-parallel checkpoint with nothing left to do.
    let groups = LocalGroup::new(2, Duration::from_secs(600));
    let again = train_data_parallel::<A, _>(
        &dp,
        &TrainOptions {
            resume: true,
            ..Default::default()
        },
        &[Default::default(), Default::default()],
        &groups,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(again.step, 3);
    assert_eq!(params(&again.model), params(&ranks[0].model));
}

/// `train` refuses several devices; `train_data_parallel` refuses a group of the wrong size.
#[test]
fn data_parallel_needs_matching_devices_and_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write_shards(&shards, &golden_items(false));
    let config = recipe(
        &shards,
        &tmp.path().join("run"),
        &[
            "training.devices=[cpu, cpu]",
            "training.per_device_batch_size=1",
        ],
    );
    let err = train::<A>(
        &config,
        &TrainOptions::default(),
        &Default::default(),
        &mut |_| {},
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("train_data_parallel"), "{err}");
    let groups = LocalGroup::new(3, Duration::from_secs(5));
    let err = train_data_parallel::<A, _>(
        &config,
        &TrainOptions::default(),
        &[Default::default(), Default::default()],
        &groups,
        &mut |_| {},
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("3 collective handles"), "{err}");
}

/// `Autodiff<_, BalancedCheckpointing>` recomputes memory-bound ops in backward instead of
/// keeping their outputs: the same arithmetic, so the same losses and gradient norms.
#[test]
fn gradient_checkpointing_backend_gives_the_same_losses() {
    type Checkpointed = Autodiff<Flex, BalancedCheckpointing>;
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write_shards(&shards, &golden_items(false));
    let plain = recipe(
        &shards,
        &tmp.path().join("plain"),
        &["training.max_steps=3"],
    );
    let checkpointed = recipe(
        &shards,
        &tmp.path().join("ckpt"),
        &[
            "training.max_steps=3",
            "training.gradient_checkpointing=true",
        ],
    );
    let a = run(&plain, TrainOptions::default());
    let b = train::<Checkpointed>(
        &checkpointed,
        &TrainOptions::default(),
        &Default::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(a.records.len(), 3);
    assert_same_steps(&a.records, &b.records, 1e-5);
}

/// Asserts two runs logged the same losses and gradient norms, step by step, within `rel`
/// (relative, floor 1).
fn assert_same_steps(a: &[StepMetrics], b: &[StepMetrics], rel: f64) {
    assert_eq!(a.len(), b.len(), "step counts");
    for (x, y) in a.iter().zip(b) {
        eprintln!(
            "step {}: loss {:?} vs {:?}, grad norm {:?} vs {:?}",
            x.step, x.loss, y.loss, x.grad_norm, y.grad_norm
        );
        let close = |v: f64, w: f64| (v - w).abs() <= rel * v.abs().max(1.0);
        assert!(close(x.loss.unwrap(), y.loss.unwrap()), "step {}", x.step);
        assert!(
            close(x.grad_norm.unwrap(), y.grad_norm.unwrap()),
            "step {}",
            x.step
        );
    }
}

/// Every metrics line has the peak memory (CPU: the process peak resident set), the model
/// FLOPs and, once a peak is configured, the MFU; the summary shows them.
#[test]
fn metrics_have_peak_memory_flops_and_mfu() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write_shards(&shards, &golden_items(false));
    let no_peak = run(
        &recipe(&shards, &tmp.path().join("a"), &["training.max_steps=1"]),
        TrainOptions::default(),
    );
    let r = &no_peak.records[0];
    assert_eq!(r.mfu, None, "no default peak on cpu");
    let flops = r.model_flops.unwrap();
    assert!(flops > 0.0);
    if cfg!(target_os = "linux") {
        let rss = r.peak_rss_bytes.unwrap();
        assert!(rss > 1 << 20, "peak RSS {rss}");
        assert_eq!(
            r.peak_memory_bytes,
            Some(rss),
            "cpu: the device is the host"
        );
        assert!(
            no_peak.summary.contains("peak memory"),
            "{}",
            no_peak.summary
        );
    }
    assert_eq!(r.device_memory_in_use_bytes, None);
    assert!(
        no_peak.summary.contains("model FLOP/s") && no_peak.summary.contains("peak_tflops"),
        "{}",
        no_peak.summary
    );

    let with_peak = run(
        &recipe(
            &shards,
            &tmp.path().join("b"),
            &["training.max_steps=1", "logging.peak_tflops=0.5"],
        ),
        TrainOptions::default(),
    );
    let r = &with_peak.records[0];
    assert_eq!(r.model_flops, Some(flops), "same batch, same FLOPs");
    let mfu = r.mfu.unwrap();
    let expected = flops / r.step_time_s / 0.5e12;
    assert!(
        (mfu - expected).abs() <= 1e-9 * expected,
        "{mfu} vs {expected}"
    );
    assert!(with_peak.summary.contains("MFU"), "{}", with_peak.summary);
    // The line in the file carries the new keys.
    let line = std::fs::read_to_string(tmp.path().join("b/metrics.jsonl")).unwrap();
    let json: Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    for key in ["peak_memory_bytes", "peak_rss_bytes", "model_flops", "mfu"] {
        assert!(json.get(key).is_some(), "{key} in {line}");
    }
}

#[test]
fn random_init_is_the_same_on_concurrent_ranks() {
    // Ranks are threads sharing the CPU backend's one random generator: each must still get
    // the init a lone thread gets (rank 0's is broadcast, so a race would make runs differ).
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write_shards(&shards, &golden_items(false));
    let config = recipe(&shards, &tmp.path().join("run"), &[]);
    let build = || {
        let (model, _) = build_model::<A>(&config, ModelInit::Random, &Default::default()).unwrap();
        params(&model)
    };
    let alone = build();
    for _ in 0..3 {
        let concurrent: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3).map(|_| s.spawn(build)).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for p in concurrent {
            assert!(p == alone, "a concurrently built random init differs");
        }
    }
}
