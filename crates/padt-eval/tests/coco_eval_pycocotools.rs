//! `coco_eval` against real pycocotools numbers on the fixtures written by
//! `tools/coco_map_reference.py fixtures` (crowds, all area ranges, duplicates, empty images,
//! categories without gt, images without detections, score ties, the maxDets caps).

use std::path::{Path, PathBuf};

use padt_eval::coco_eval::{self, CocoGroundTruth, CocoSummary};

const TOLERANCE: f64 = 1e-4;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/coco_eval")
}

fn evaluate_case(case: &Path) -> CocoSummary {
    let truth = CocoGroundTruth::from_path(&case.join("instances.json")).expect("ground truth");
    let detections = coco_eval::load_detections(&case.join("detections.json")).expect("detections");
    let checked = truth
        .check_detections(detections, "detections.json")
        .expect("checked");
    coco_eval::evaluate(&truth, &checked.detections).summary
}

fn expected_stats(case: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(case.join("expected.json")).expect("expected.json");
    let value: serde_json::Value = serde_json::from_str(&text).expect("expected json");
    CocoSummary::NAMES
        .iter()
        .map(|name| value["stats"][name].as_f64().expect("stat"))
        .collect()
}

#[test]
fn every_fixture_matches_pycocotools() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("expected.json").exists())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 7,
        "expected the 7 generated fixtures, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let ours = evaluate_case(case).to_array();
        let expected = expected_stats(case);
        for ((name, o), e) in CocoSummary::NAMES.iter().zip(ours).zip(expected) {
            if (o - e).abs() > TOLERANCE {
                failures.push(format!(
                    "{}: {name} ours {o} pycocotools {e}",
                    case.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}

#[test]
fn shuffling_images_in_the_file_changes_nothing_but_detection_order_does_on_ties() {
    // The ties fixture: all scores equal, so the merged order (image id, then file order) decides.
    let case = fixtures_dir().join("ties_across_images");
    let truth = CocoGroundTruth::from_path(&case.join("instances.json")).unwrap();
    let mut detections = coco_eval::load_detections(&case.join("detections.json")).unwrap();
    let base = coco_eval::evaluate(&truth, &detections).summary;
    // Reversing the file order flips ties inside an image: AR1 changes (the first detection of each
    // image is a different one) while AR10 does not.
    detections.reverse();
    let reversed = coco_eval::evaluate(&truth, &detections).summary;
    assert_ne!(base.ar1, reversed.ar1);
    assert_eq!(base.ar10, reversed.ar10);
}

#[test]
fn empty_detections_give_zero_where_gt_exists_and_minus_one_elsewhere() {
    let case = fixtures_dir().join("perfect");
    let truth = CocoGroundTruth::from_path(&case.join("instances.json")).unwrap();
    let summary = coco_eval::evaluate(&truth, &[]).summary;
    assert_eq!(summary.ap, 0.0);
    assert_eq!(summary.ar100, 0.0);
    assert_eq!(summary.ap_large, -1.0);
}
