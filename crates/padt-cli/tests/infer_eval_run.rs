//! `padt-eval run` on the committed demo shards (`data/demo/shards/val`) with the padt-tiny
//! checkpoint: batching does not change the predictions, the summary agrees with the per-sample
//! file, and bad input is a clear error. (padt-tiny was not trained on these images: the numbers
//! themselves say nothing about quality.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden_checkpoint() -> PathBuf {
    std::env::var_os("PADT_TINY_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tests/fixtures/padt-tiny"))
        .join("checkpoint")
}

/// Runs `padt-eval run`, returns (summary JSON, per-sample lines).
fn run(task: &str, batch: &str, preds: &Path) -> (serde_json::Value, Vec<serde_json::Value>) {
    let out = Command::new(env!("CARGO_BIN_EXE_padt-eval"))
        .args(["run", "--model"])
        .arg(golden_checkpoint())
        .arg("--data")
        .arg(repo().join("data/demo/shards/val"))
        .args([
            "--task",
            task,
            "--limit",
            "4",
            "--batch-size",
            batch,
            "--max-new-tokens",
            "16",
            "--predictions",
        ])
        .arg(preds)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = serde_json::from_slice(&out.stdout).unwrap();
    let lines = std::fs::read_to_string(preds)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (summary, lines)
}

#[test]
fn rec_predictions_do_not_depend_on_the_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let (s1, l1) = run("rec", "1", &dir.path().join("b1.jsonl"));
    let (s3, l3) = run("rec", "3", &dir.path().join("b3.jsonl"));
    assert_eq!(s1["samples"], 4);
    assert_eq!(l1.len(), 4);
    for (a, b) in l1.iter().zip(&l3) {
        assert_eq!(a["completion"], b["completion"]);
        assert_eq!(
            a["predictions"].as_array().unwrap().len(),
            b["predictions"].as_array().unwrap().len()
        );
        for (p, q) in a["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["predictions"].as_array().unwrap())
        {
            assert_eq!(p["bbox"], q["bbox"]);
            assert_eq!(p["label"], q["label"]);
        }
    }
    assert_eq!(s1, s3);
}

#[test]
fn res_summary_agrees_with_the_per_sample_ious() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, lines) = run("res", "2", &dir.path().join("res.jsonl"));
    let best: Vec<f64> = lines
        .iter()
        .map(|l| {
            l["mask_ious"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .fold(0.0, f64::max)
        })
        .collect();
    let mean = best.iter().sum::<f64>() / best.len() as f64;
    let got = summary["mean_iou_any_label"].as_f64().unwrap();
    assert!((got - mean).abs() < 1e-12, "{got} vs {mean}");
}

#[test]
fn missing_dataset_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_padt-eval"))
        .args(["run", "--model"])
        .arg(golden_checkpoint())
        .args(["--data", "/nonexistent/shards", "--task", "rec"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/shards") && stderr.contains("cannot open the shard dataset"),
        "{stderr}"
    );
}
