//! End-to-end tests of `padt-eval coco-map`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NAMES: [&str; 12] = [
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
];

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/coco_eval")
        .join(case)
}

fn coco_map(gt: &Path, pred: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "coco-map",
        "--gt",
        gt.to_str().unwrap(),
        "--pred",
        pred.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_padt-eval"))
        .args(&args)
        .output()
        .expect("run padt-eval")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn prints_the_twelve_numbers_in_order_equal_to_pycocotools() {
    let case = fixture("hand_made");
    let out = coco_map(
        &case.join("instances.json"),
        &case.join("detections.json"),
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "stderr: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let printed: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let keys: Vec<&str> = printed
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, NAMES);
    let expected_text = std::fs::read_to_string(case.join("expected.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&expected_text).unwrap();
    for name in NAMES {
        let ours = printed[name].as_f64().unwrap();
        let theirs = expected["stats"][name].as_f64().unwrap();
        assert!(
            (ours - theirs).abs() <= 1e-4,
            "{name}: {ours} vs pycocotools {theirs}"
        );
    }
    // Detections of category 3 (no ground truth) are scored, not dropped: nothing to warn about.
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn malformed_json_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "detections.json", "[{\"image_id\": 1,");
    let out = coco_map(&fixture("hand_made").join("instances.json"), &bad, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("detections.json") && stderr.contains("not valid JSON"),
        "{stderr}"
    );
}

#[test]
fn a_detection_without_score_names_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "detections.json",
        r#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5},
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}]"#,
    );
    let out = coco_map(&fixture("hand_made").join("instances.json"), &bad, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("detection [1]") && stderr.contains("score"),
        "{stderr}"
    );
}

#[test]
fn detections_on_unknown_images_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "detections.json",
        r#"[{"image_id": 999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]"#,
    );
    let out = coco_map(&fixture("hand_made").join("instances.json"), &bad, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("999") && stderr.contains("not in the ground truth"),
        "{stderr}"
    );
}

#[test]
fn detections_of_unknown_categories_are_counted_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let preds = write(
        dir.path(),
        "detections.json",
        r#"[{"image_id": 7, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.5},
            {"image_id": 7, "category_id": 42, "bbox": [0, 0, 5, 5], "score": 0.9}]"#,
    );
    let out = coco_map(&fixture("perfect").join("instances.json"), &preds, &[]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 detection(s) of categories"), "{stderr}");
}

#[test]
fn empty_predictions_need_allow_empty() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "detections.json", "[]");
    let gt = fixture("perfect").join("instances.json");
    let refused = coco_map(&gt, &empty, &[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--allow-empty"));
    let allowed = coco_map(&gt, &empty, &["--allow-empty"]);
    assert!(allowed.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&allowed.stdout).unwrap();
    assert_eq!(printed["AP"].as_f64(), Some(0.0));
    assert_eq!(printed["APl"].as_f64(), Some(-1.0));
}

#[test]
fn ground_truth_with_annotation_id_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gt = write(
        dir.path(),
        "instances.json",
        r#"{"images": [{"id": 1}], "categories": [{"id": 1}],
            "annotations": [{"id": 0, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25}]}"#,
    );
    let out = coco_map(&gt, &fixture("perfect").join("detections.json"), &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("id 0"), "{stderr}");
}
