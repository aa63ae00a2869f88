//! Input checking of `coco_eval`: what is refused, what is skipped and counted.

use padt_eval::coco_eval::{detections_from_json, CocoEvalError, CocoGroundTruth, Detection};
use serde_json::json;

fn gt(annotations: serde_json::Value) -> Result<CocoGroundTruth, CocoEvalError> {
    let root = json!({
        "images": [{"id": 1}, {"id": 2}, {"id": 1}],
        "categories": [{"id": 5}, {"id": 3}],
        "annotations": annotations,
    });
    CocoGroundTruth::from_json(&root, "gt.json")
}

fn message(result: Result<CocoGroundTruth, CocoEvalError>) -> String {
    result.expect_err("should be refused").to_string()
}

#[test]
fn ids_are_sorted_and_deduplicated_and_unknown_references_counted() {
    let truth = gt(json!([
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 4, 4], "area": 16},
        {"id": 2, "image_id": 9, "category_id": 5, "bbox": [0, 0, 4, 4], "area": 16},
        {"id": 3, "image_id": 2, "category_id": 7, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 1},
        {"id": 4, "image_id": 2.0, "category_id": 3, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 1}
    ]))
    .unwrap();
    assert_eq!(truth.image_ids, vec![1, 2]);
    assert_eq!(truth.category_ids, vec![3, 5]);
    assert_eq!(truth.annotations.len(), 2);
    assert!(truth.annotations[1].iscrowd);
    assert!(!truth.annotations[0].iscrowd, "iscrowd defaults to 0");
    assert_eq!(truth.skipped_unknown_image, 1);
    assert_eq!(truth.skipped_unknown_category, 1);
}

#[test]
fn bad_annotations_are_refused_with_the_record_named() {
    let a = |extra: serde_json::Value| {
        let mut base =
            json!({"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 4, 4], "area": 16});
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    };
    let dup = message(gt(json!([a(json!({})), a(json!({}))])));
    assert!(
        dup.contains("annotations[1]") && dup.contains("repeats the id 1"),
        "{dup}"
    );
    let no_area = message(gt(
        json!([{"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 4, 4]}]),
    ));
    assert!(
        no_area.contains("annotations[0] has no \"area\""),
        "{no_area}"
    );
    let bad_box = message(gt(json!([a(json!({"bbox": [0, 0, 4]}))])));
    assert!(
        bad_box.contains("\"bbox\" must be [x, y, w, h]"),
        "{bad_box}"
    );
    let bad_crowd = message(gt(json!([a(json!({"iscrowd": 2}))])));
    assert!(
        bad_crowd.contains("\"iscrowd\" must be 0 or 1"),
        "{bad_crowd}"
    );
    let bad_id = message(gt(json!([a(json!({"image_id": "1"}))])));
    assert!(
        bad_id.contains("\"image_id\" must be an integer"),
        "{bad_id}"
    );
    let not_object = CocoGroundTruth::from_json(&json!([1, 2]), "gt.json").unwrap_err();
    assert!(not_object.to_string().contains("JSON object"));
}

#[test]
fn detections_are_checked_against_the_ground_truth() {
    let truth = gt(json!([])).unwrap();
    let dets = detections_from_json(
        &json!([
            {"image_id": 1, "category_id": 5, "bbox": [0, 0, 4, 4], "score": 0.5},
            {"image_id": 2, "category_id": 8, "bbox": [0, 0, 4, 4], "score": 0.5, "extra": true}
        ]),
        "dt.json",
    )
    .unwrap();
    let checked = truth.check_detections(dets.clone(), "dt.json").unwrap();
    assert_eq!(checked.detections, vec![dets[0].clone()]);
    assert_eq!(checked.skipped_unknown_category, 1);
    let unknown = vec![Detection {
        image_id: 3,
        ..dets[0].clone()
    }];
    let err = truth.check_detections(unknown, "dt.json").unwrap_err();
    assert!(matches!(err, CocoEvalError::UnknownImages { count: 1, .. }));
    let nan = detections_from_json(
        &json!([{"image_id": 1, "category_id": 5, "bbox": [0, 0, 4, 4], "score": null}]),
        "dt.json",
    )
    .unwrap_err();
    assert!(
        nan.to_string()
            .contains("\"score\" must be a finite number"),
        "{nan}"
    );
    let not_list = detections_from_json(&json!({"annotations": []}), "dt.json").unwrap_err();
    assert!(not_list.to_string().contains("must be a JSON list"));
}
