//! OVD and RIC evaluation glue on hand-computable cases: ground truth and detections built from
//! records and prediction lines as `eval_coco.py` builds them, label → category mapping with
//! unknown labels counted, and caption scores of perfect captions.

use padt_data::record::{Record, RecordObject, Task};
use padt_eval::ovd_eval::{
    evaluate_ovd, ground_truth, map_detections, prompt_category_names, record_box_pixels,
    OvdCategories, OvdEvalError, OvdImage,
};
use padt_eval::prediction_lines::ObjectLine;
use padt_eval::ric_eval::{generated_caption, group_by_image, score_captions};

const PROMPT: &str = "Please carefully check the image and detect the following objects: \
                      [\"cat\", \"dog\", \"traffic light\"].";

fn object(label: &str, bbox: [f64; 4], area: f64, iscrowd: i64) -> RecordObject {
    RecordObject {
        patches: vec![0],
        bbox,
        iscrowd,
        area,
        area_is_int: false,
        rle: None,
        label: label.to_string(),
    }
}

fn record(id: i64, task: Task, objects: Vec<RecordObject>, answer: &str) -> Record {
    Record {
        id,
        image: format!("{id}.png"),
        prompt: PROMPT.to_string(),
        answer_template: answer.to_string(),
        objects,
        task,
    }
}

/// Two images (200×100 and 100×100): two cats and a dog, one crowd dog.
fn ovd_records() -> Vec<Record> {
    vec![
        record(
            10,
            Task::Ovd,
            vec![
                object("cat", [0.1, 0.1, 0.5, 0.9], 5000.0, 0),
                object("dog", [0.5, 0.2, 0.9, 0.6], 1500.0, 0),
                object("dog", [0.0, 0.0, 0.2, 0.2], 300.0, 1),
            ],
            "",
        ),
        record(
            20,
            Task::Ovd,
            vec![object("cat", [0.25, 0.25, 0.75, 0.75], 2000.0, 0)],
            "",
        ),
    ]
}

fn images(records: &[Record]) -> Vec<OvdImage<'_>> {
    records
        .iter()
        .map(|r| OvdImage {
            record: r,
            width: if r.id == 10 { 200 } else { 100 },
            height: 100,
        })
        .collect()
}

/// The ground truth of every non-crowd object as a prediction line.
fn perfect_lines(records: &[Record]) -> Vec<ObjectLine> {
    let mut lines = Vec::new();
    for image in images(records) {
        for o in image.record.objects.iter().filter(|o| o.iscrowd == 0) {
            lines.push(ObjectLine {
                image_id: image.record.id,
                score: 0.9,
                // Upper case: the reference looks labels up lower-cased.
                category: Some(o.label.to_uppercase()),
                bbox: record_box_pixels(o.bbox, image.width, image.height),
                mask: None,
            });
        }
    }
    lines
}

#[test]
fn categories_come_from_prompts_then_labels_and_labels_map_lower_cased() {
    assert_eq!(
        prompt_category_names(PROMPT).unwrap(),
        ["cat", "dog", "traffic light"]
    );
    assert_eq!(prompt_category_names("Please describe this image."), None);
    let mut records = ovd_records();
    records[1]
        .objects
        .push(object("zebra", [0.0, 0.0, 0.1, 0.1], 10.0, 0));
    let categories = OvdCategories::from_records(&records);
    assert_eq!(categories.names, ["cat", "dog", "traffic light", "zebra"]);
    assert_eq!(categories.id_of_label("Traffic Light"), Some(3));
    assert_eq!(categories.id_of_label("ZEBRA"), Some(4));
    assert_eq!(categories.id_of_label("cats"), None);
    // The ground-truth side is exact, as `name_to_cat_id[obj["label"]]`.
    assert_eq!(categories.id("Cat"), None);
}

#[test]
fn ground_truth_is_rebuilt_as_eval_coco_py_does() {
    let records = ovd_records();
    let categories = OvdCategories::from_records(&records);
    let truth = ground_truth(&images(&records), &categories).unwrap();
    assert_eq!(truth.image_ids, [10, 20]);
    assert_eq!(truth.category_ids, [1, 2, 3]);
    let ids: Vec<i64> = truth.annotations.iter().map(|a| a.id).collect();
    assert_eq!(ids, [1, 2, 3, 4]);
    let a = &truth.annotations[1];
    assert_eq!((a.image_id, a.category_id), (10, 2));
    assert_eq!(a.bbox, [100.0, 20.0, 80.0, 40.0]);
    assert_eq!(a.area, 1500.0, "the record's area, not the box area");
    assert!(truth.annotations[2].iscrowd);
    // Python round: ties to even (0.125 · 20 = 2.5 → 2, 0.375 · 20 = 7.5 → 8).
    assert_eq!(
        record_box_pixels([0.125, 0.375, 0.5, 1.0], 20, 20),
        [2.0, 8.0, 8.0, 12.0]
    );
}

#[test]
fn predictions_equal_to_the_ground_truth_score_one() {
    let records = ovd_records();
    let mut lines = perfect_lines(&records);
    lines.push(ObjectLine {
        category: Some("Unicorn".into()),
        ..lines[0].clone()
    });
    lines.push(ObjectLine {
        category: Some("unicorn".into()),
        ..lines[0].clone()
    });
    lines.push(ObjectLine {
        category: None,
        ..lines[0].clone()
    });
    let report = evaluate_ovd(&images(&records), &lines, "lines").unwrap();
    let s = report.summary;
    for (name, value) in [
        ("AP", s.ap),
        ("AP50", s.ap50),
        ("AP75", s.ap75),
        ("AR1", s.ar1),
        ("AR10", s.ar10),
        ("AR100", s.ar100),
    ] {
        assert!((value - 1.0).abs() < 1e-12, "{name} = {value}");
    }
    // Object areas 300 (crowd, ignored), 1500, 2000, 5000: no small non-crowd object.
    assert_eq!(s.ap_small, -1.0);
    assert_eq!(s.ar_small, -1.0);
    assert_eq!((s.ap_medium, s.ap_large), (1.0, -1.0));
    assert_eq!(report.detections, 3);
    assert_eq!(report.prediction_lines, 6);
    assert_eq!(report.unknown_labels.get("unicorn"), Some(&2));
    assert_eq!(report.unlabelled, 1);
    let json = report.to_json();
    assert_eq!(json["dropped_unknown_label"], 2);
    assert_eq!(json["dropped_no_label"], 1);
    assert_eq!(json["gt_objects"], 4);
    let keys: Vec<&String> = json.as_object().unwrap().keys().take(14).collect();
    assert_eq!(
        keys,
        [
            "task", "samples", "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100",
            "ARs", "ARm", "ARl"
        ]
    );
}

#[test]
fn a_higher_scored_false_positive_halves_ap_and_zeroes_ar1() {
    // One image, one cat; a wrong box scored 0.9 and the right box scored 0.5. Sorted by score:
    // FP then TP → precision 1/2 at recall 1, so AP = 0.5 at every IoU threshold; with one
    // detection per image only the FP counts (AR1 = 0); with 10, recall is 1.
    let records = [record(
        1,
        Task::Ovd,
        vec![object("cat", [0.1, 0.1, 0.6, 0.6], 2500.0, 0)],
        "",
    )];
    let images = vec![OvdImage {
        record: &records[0],
        width: 100,
        height: 100,
    }];
    let right = ObjectLine {
        image_id: 1,
        score: 0.5,
        category: Some("cat".into()),
        bbox: [10.0, 10.0, 50.0, 50.0],
        mask: None,
    };
    let wrong = ObjectLine {
        score: 0.9,
        bbox: [70.0, 70.0, 20.0, 20.0],
        ..right.clone()
    };
    let s = evaluate_ovd(&images, &[right, wrong], "x").unwrap().summary;
    assert!((s.ap - 0.5).abs() < 1e-12, "{s:?}");
    assert!((s.ap50 - 0.5).abs() < 1e-12);
    assert_eq!(s.ar1, 0.0);
    assert_eq!(s.ar10, 1.0);
}

#[test]
fn mapping_counts_unknown_and_missing_labels() {
    let records = ovd_records();
    let categories = OvdCategories::from_records(&records);
    let mut lines = perfect_lines(&records);
    lines[0].category = Some("Horse".into());
    lines[1].category = None;
    let mapped = map_detections(&lines, &categories);
    assert_eq!(mapped.detections.len(), 1);
    assert_eq!(mapped.unknown_labels.get("horse"), Some(&1));
    assert_eq!(mapped.unlabelled, 1);
    assert_eq!(mapped.dropped(), 2);
}

#[test]
fn bad_ovd_input_is_a_clear_error() {
    let mut records = ovd_records();
    records[1].id = 10;
    let err = evaluate_ovd(&images(&records), &[], "x").unwrap_err();
    assert!(
        matches!(
            err,
            OvdEvalError::DuplicateImage {
                index: 1,
                image_id: 10,
                first: 0
            }
        ),
        "{err}"
    );
    let mut records = ovd_records();
    records[0].task = Task::Ric;
    let err = evaluate_ovd(&images(&records), &[], "x").unwrap_err();
    assert!(err.to_string().contains("task ric, not ovd"), "{err}");
    let records = ovd_records();
    let mut lines = perfect_lines(&records);
    lines[0].image_id = 99;
    let err = evaluate_ovd(&images(&records), &lines, "preds.jsonl")
        .unwrap_err()
        .to_string();
    assert!(err.contains("preds.jsonl") && err.contains("99"), "{err}");
    assert!(matches!(
        evaluate_ovd(&[], &[], "x"),
        Err(OvdEvalError::NoRecords)
    ));
}

#[test]
fn ric_groups_captions_per_image_and_perfect_captions_score_one() {
    let records = vec![
        record(
            5,
            Task::Ric,
            vec![],
            "A cup (<|Obj_0|>) with a knife (<|Obj_1|>) and a fork nearby.",
        ),
        record(
            7,
            Task::Ric,
            vec![],
            "Two dogs (<|Obj_0|>, <|Obj_1|>) run on wet grass.",
        ),
        record(
            5,
            Task::Ric,
            vec![],
            "Cutlery lies next to a white cup (<|Obj_0|>).",
        ),
    ];
    let images = group_by_image(&records).unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!((images[0].image_id, images[0].first_record), (5, 0));
    assert_eq!(
        images[0].references,
        [
            "A cup with a knife and a fork nearby.",
            "Cutlery lies next to a white cup."
        ]
    );
    assert_eq!(images[1].references, ["Two dogs run on wet grass."]);

    // Generated captions equal to the first reference, with VRT groups and the end token.
    let generated = [
        "A cup (<|VRT_1|><|VRT_2|>) with a knife (<|VRT_7|>) and a fork nearby.<|im_end|>",
        "Two dogs (<|VRT_3|>, <|VRT_9|><|VRT_10|>) run on wet grass.<|im_end|>",
    ];
    let pairs: Vec<(String, Vec<String>)> = images
        .iter()
        .zip(generated)
        .map(|(i, g)| (generated_caption(g), i.references.clone()))
        .collect();
    assert_eq!(pairs[0].0, images[0].references[0]);
    let s = score_captions(&pairs).unwrap();
    assert_eq!(s.samples, 2);
    assert!((s.bleu4 - 1.0).abs() < 1e-6, "{s:?}");
    assert!((s.bleu1 - 1.0).abs() < 1e-6, "{s:?}");
    // ROUGE-L takes the best precision and the best recall over references separately.
    assert!((s.rouge_l - 1.0).abs() < 1e-12, "{s:?}");

    // CIDEr-D of a candidate equal to its only reference (≥ 4 words, so every n-gram order
    // exists), no n-gram shared across the two images: every order's cosine is 1, the length
    // penalty 1, so 10 per image. With 3 words the 4-gram order would count 0 (7.5).
    let disjoint = vec![
        (
            "a red cup stands".to_string(),
            vec!["a red cup stands".to_string()],
        ),
        (
            "two dogs run fast".to_string(),
            vec!["two dogs run fast".to_string()],
        ),
    ];
    let s = score_captions(&disjoint).unwrap();
    assert!((s.cider_d - 10.0).abs() < 1e-9, "{s:?}");

    let mut wrong_task = records.clone();
    wrong_task[2].task = Task::Ovd;
    let err = group_by_image(&wrong_task).unwrap_err().to_string();
    assert!(err.contains("record 2") && err.contains("not ric"), "{err}");
}
