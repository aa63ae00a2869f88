//! `padt-train` end to end on the padt-tiny checkpoint (CPU): outputs, `--stop-after-steps` and
//! `--resume`, `--random-init`, and the errors users see for bad invocations.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use padt_data::record::SourceItem;
use serde_json::Value;

#[path = "../../../tests/support/golden_batch.rs"]
mod golden_batch;
use golden_batch::{batch_json, golden_dir, golden_item, golden_record, write_test_shards};

fn recipe_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/tiny_test.yaml")
}

/// The golden batch's two records as an embedded shard directory.
fn write_shards(dir: &Path) {
    write_shards_where(dir, |_| true)
}

/// The golden batch's records `i` with `keep(i)` as an embedded shard directory.
fn write_shards_where(dir: &Path, keep: impl Fn(usize) -> bool) {
    let json = batch_json();
    let items: Vec<SourceItem> = json["samples"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(i, s)| golden_item(s, golden_record(i, s)))
        .collect();
    write_test_shards(dir, &items, 2, "train");
}

fn padt_train(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_padt-train"))
        .args(args)
        .output()
        .expect("padt-train runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `--config tiny_test.yaml` pointed at `model` and `shards`, writing into `out`.
fn base_args(model: &Path, shards: &Path, out: &Path) -> Vec<String> {
    vec![
        "--config".into(),
        recipe_file().display().to_string(),
        "--set".into(),
        format!("model.path={}", model.display()),
        "--set".into(),
        format!("data.datasets.0.shards={}", shards.display()),
        "--output-dir".into(),
        out.display().to_string(),
    ]
}

fn metrics_lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

#[test]
fn stop_resume_and_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write_shards(&shards);
    let out = tmp.path().join("run");
    let model = golden_dir().join("checkpoint");
    let mut args = base_args(&model, &shards, &out);
    args.extend(["--set".into(), "training.max_steps=4".into()]);

    let mut first = args.clone();
    first.extend(["--stop-after-steps".into(), "2".into()]);
    let o = padt_train(&first);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("training finished"), "{stdout}");
    assert!(stdout.contains("stopped after 2 steps"), "{stdout}");
    for f in [
        "config.yaml",
        "metrics.jsonl",
        "loss.png",
        "checkpoint-2/model.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing: {}", text(&o));
    }
    assert_eq!(metrics_lines(&out), 2);
    let saved = std::fs::read_to_string(out.join("config.yaml")).unwrap();
    assert!(saved.contains("max_steps: 4"), "{saved}");

    // A fresh run into the same directory is refused.
    let o = padt_train(&args);
    assert!(!o.status.success());
    assert!(text(&o).contains("--resume"), "{}", text(&o));

    let mut resumed = args.clone();
    resumed.push("--resume".into());
    let o = padt_train(&resumed);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("resumed from"), "{}", text(&o));
    assert_eq!(metrics_lines(&out), 4);
    assert!(out.join("checkpoint-4/trainer_state.json").is_file());
}

#[test]
fn random_init_needs_only_config_json() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write_shards(&shards);
    // The checkpoint directory without its weights.
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(golden_dir().join("checkpoint")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "model.safetensors" {
            std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
        }
    }
    let out = tmp.path().join("run");
    let mut args = base_args(&model, &shards, &out);
    args.extend(["--set".into(), "training.max_steps=1".into()]);

    let o = padt_train(&args);
    assert!(
        !o.status.success(),
        "weights are required without --random-init"
    );
    assert!(text(&o).contains("model.safetensors"), "{}", text(&o));

    args.push("--random-init".into());
    let o = padt_train(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("random init"), "{}", text(&o));
    assert!(out.join("checkpoint-1/model.safetensors").is_file());
}

#[test]
fn bad_invocations_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write_shards(&shards);
    let model = golden_dir().join("checkpoint");
    let out = tmp.path().join("run");

    let mut args = base_args(&model, &shards, &out);
    args.extend(["--set".into(), "optimizer.lrr=1".into()]);
    let o = padt_train(&args);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("did you mean `optimizer.lr`"),
        "{}",
        text(&o)
    );

    let mut args = base_args(&model, &tmp.path().join("nowhere"), &out);
    args.extend(["--set".into(), "training.max_steps=1".into()]);
    let o = padt_train(&args);
    assert!(!o.status.success());
    assert!(text(&o).contains("nowhere"), "{}", text(&o));

    if !cfg!(feature = "cuda") {
        let mut args = base_args(&model, &shards, &out);
        args.extend(["--set".into(), "training.devices=[cuda:0]".into()]);
        let o = padt_train(&args);
        assert!(!o.status.success());
        assert!(text(&o).contains("without CUDA"), "{}", text(&o));
        // Several GPUs: data parallel over NCCL, which only the cuda build has.
        let mut args = base_args(&model, &shards, &out);
        args.extend([
            "--set".into(),
            "training.devices=[cuda:0, cuda:1]".into(),
            "--set".into(),
            "training.global_batch_size=null".into(),
        ]);
        let o = padt_train(&args);
        assert!(!o.status.success());
        let t = text(&o);
        assert!(
            t.contains("cuda:0, cuda:1") && t.contains("without CUDA") && t.contains("NCCL"),
            "{t}"
        );
        let o = padt_train(&["--check-nccl".into(), "cuda:0".into()]);
        assert!(!o.status.success());
        assert!(text(&o).contains("`cuda` feature"), "{}", text(&o));
    }
    assert!(!out.join("metrics.jsonl").exists(), "nothing was trained");
}

#[test]
fn evaluation_after_training_writes_eval_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write_shards(&shards);
    // The referring record alone (REC evaluation needs one object per record).
    let val = tmp.path().join("val");
    write_shards_where(&val, |i| i == 1);
    let out = tmp.path().join("run");
    let model = golden_dir().join("checkpoint");
    let mut args = base_args(&model, &shards, &out);
    args.extend([
        "--set".into(),
        "training.max_steps=1".into(),
        "--set".into(),
        format!("evaluation.shards={}", val.display()),
        "--set".into(),
        "evaluation.max_new_tokens=12".into(),
    ]);
    let o = padt_train(&args);
    assert!(o.status.success(), "{}", text(&o));
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval_metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["task"], "rec");
    assert_eq!(metrics["samples"], 1);
    let acc = metrics["rec_acc@0.5"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{metrics}");
    let predictions = std::fs::read_to_string(out.join("eval_predictions.jsonl")).unwrap();
    assert_eq!(predictions.lines().count(), 1);

    // A missing evaluation folder is found before training starts.
    let mut args = base_args(&model, &shards, &tmp.path().join("run2"));
    args.extend([
        "--set".into(),
        format!("evaluation.shards={}", tmp.path().join("nowhere").display()),
    ]);
    let o = padt_train(&args);
    assert!(!o.status.success());
    assert!(text(&o).contains("evaluation.shards"), "{}", text(&o));
}
