//! `sources::ric` against the outputs of PaDT's `process_ric.py` (fixtures `raw/ric`,
//! `expected/ric_*.jsonl`, `expected/summary.json`), the caption repairs (expected strings
//! produced by PaDT's own repair code under CPython 3.11.7), and the error paths.

use padt_data::pyjson::{parse_jsonl_line, record_to_jsonl_line};
use padt_data::sources::ric::{process_ric, repair_caption_tags, RicOptions, RIC_PROMPT};
use padt_data::sources::SourceError;
use serde_json::Value;
use std::path::PathBuf;

fn golden_dir() -> PathBuf {
    std::env::var_os("PADT_DATA_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data")
        })
}

fn summary() -> Value {
    let text = std::fs::read_to_string(golden_dir().join("expected/summary.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn check_split(name: &str, log_run: &str) -> padt_data::record::SourceOutput {
    let raw = golden_dir().join("raw");
    let opts = RicOptions {
        annotations: raw.join(format!("ric/annotations/ric_instances_{name}2017.json")),
        images_dir: raw.join(format!("coco/images/{name}2017")),
    };
    let out = process_ric(&opts).unwrap();
    let file = format!("ric_instances_{name}2017.jsonl");
    let text = std::fs::read_to_string(golden_dir().join("expected").join(&file)).unwrap();
    let expected: Vec<&str> = text.lines().collect();
    assert_eq!(out.items.len(), expected.len(), "{file}: record count");
    for (i, (item, line)) in out.items.iter().zip(&expected).enumerate() {
        let e = parse_jsonl_line(line, i + 1).unwrap();
        let g = &item.record;
        let at = format!("{file} record {i} (image {})", e.id);
        assert_eq!(
            g.answer_template, e.answer_template,
            "{at}: answer_template"
        );
        assert_eq!(g.objects.len(), e.objects.len(), "{at}: object count");
        for (k, (go, eo)) in g.objects.iter().zip(&e.objects).enumerate() {
            assert_eq!(go.patches, eo.patches, "{at} object {k}: patches");
            assert_eq!(go.bbox, eo.bbox, "{at} object {k}: bbox");
            assert_eq!(go.rle, eo.rle, "{at} object {k}: rle");
        }
        assert_eq!(g, &e, "{at}");
        assert_eq!(&record_to_jsonl_line(g), line, "{at}: JSONL bytes");
    }
    let summary = summary();
    for (reason, n) in summary[&file].as_object().unwrap() {
        let got = match reason.as_str() {
            "objects" => out.counts.get("objects_kept"),
            r => out.counts.get(r),
        };
        assert_eq!(
            got.copied().unwrap_or(0),
            n.as_u64().unwrap(),
            "{file}: {reason} ({:?})",
            out.counts
        );
    }
    let log = &summary["ric_log_counters"][log_run];
    for (reason, n) in log.as_object().unwrap() {
        assert_eq!(
            out.counts.get(reason).copied().unwrap_or(0),
            n.as_u64().unwrap(),
            "{file}: {reason}"
        );
    }
    out
}

#[test]
fn ric_val_matches_process_ric() {
    check_split("val", "val_run");
}

#[test]
fn ric_train_matches_process_ric() {
    let train = check_split("train", "train_run");
    let val = check_split("val", "val_run");
    // The log counters of both runs together.
    let log = &summary()["ric_log_counters"];
    let both = |k: &str| {
        train.counts.get(k).copied().unwrap_or(0) + val.counts.get(k).copied().unwrap_or(0)
    };
    assert_eq!(
        both("captions_dropped_no_final_period_or_quote"),
        log["captions_dropped_no_final_period_or_quote"]
            .as_u64()
            .unwrap()
    );
    let exception_path = both("box_tags_removed_unknown_annotation")
        + both("box_tags_removed_other_image")
        + both("box_tags_removed_no_segmentation")
        + both("box_tags_removed_invalid_segmentation");
    assert_eq!(
        exception_path,
        log["box_tags_removed_by_exception_detail"]
            .as_array()
            .unwrap()
            .len() as u64
    );
    assert_eq!(
        both("captions_autofixed_leftover_groups"),
        log["captions_autofixed_leftover_groups"].as_u64().unwrap()
    );
}

/// Expected strings from PaDT's four repair passes run under CPython 3.11.7.
#[test]
fn caption_repairs_match_python_including_the_replace_quirk() {
    let cases: &[(&str, &[i64], &str)] = &[
        (
            "A cup (<box_id: 5/) and again a cup (<box_id: 5/>).",
            &[5],
            "A cup (<box_id: 5/>) and again a cup (<box_id: 5/>>).",
        ),
        (
            "Ids (12, 1) and (3) here.",
            &[12, 1],
            "Ids (<box_id: 1/>2/>, <box_id: 1/>) and (3) here.",
        ),
        (
            "Two (7, 8) and (8) and (70).",
            &[7, 8],
            "Two (<box_id: 7/>, <box_id: 8/>) and (<box_id: 8/>) and (70).",
        ),
        (
            "A <box_id: foo <box_id: 12/> thing.",
            &[12],
            "A <box_id: 12/> thing.",
        ),
        ("End <box_id: 9/", &[9], "End <box_id: 9/>"),
        (
            "Multi (<box_id: a 1/, 2/>) and (<box_id:3,4>).",
            &[],
            "Multi (<box_id: 1/>, <box_id: 2/>) and (<box_id: 3/>, <box_id: 4/>).",
        ),
        (
            "Person (<box_id: person_ann_id/2016798, 2153731, 184066>).",
            &[],
            "Person (<box_id: 2016798/>, <box_id: 2153731/>, <box_id: 184066/>).",
        ),
        ("Plain (<box_id:42>) ok.", &[], "Plain (<box_id:42>) ok."),
    ];
    for (caption, ids, expected) in cases {
        assert_eq!(
            &repair_caption_tags(caption, ids),
            expected,
            "caption {caption:?}"
        );
    }
}

/// Tag deletion paths on an inline dataset. Image 1 (112x112) has ann 10 and 11 (large
/// squares), 12 (too small for a patch) and 13 (no segmentation); ann 20 is on image 2;
/// ann 99 does not exist. Expected answers from PaDT's caption code under CPython 3.11.7.
#[test]
fn tag_deletion_paths_match_python() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["a.jpg", "b.jpg"] {
        std::fs::write(dir.path().join(f), b"x").unwrap();
    }
    let captions = [
        "A dog (<box_id: 10/>) and a cat (<box_id: 12/>) sit.",
        "A dog (<box_id: 10/>, <box_id: 13/>) and (<box_id: 20/>, <box_id: 11/>) done.",
        "Lost text <box_id: 99/> vanishes here.",
        "Pair (10, 11) and bare (12) and junk (<box_id: dog 11/>).",
        "Broken (<box_id: 10/) and fine (<box_id: 10/>) \u{e9}t\u{e9}.",
        "Leftover (box_id: table) and (<box_id: x>, box_id: y) gone.",
        "No final period (<box_id: 10/>)",
        "Quote \"end\" (<box_id:11>) said \"ok\"",
    ];
    let expected: &[(&str, usize)] = &[
        ("A dog (<|Obj_0|>) and a cat sit.", 1),
        ("A dog (<|Obj_0|>) and (<|Obj_1|>) done.", 2),
        ("Lost text ", 0),
        (
            "Pair (<|Obj_0|>, <|Obj_1|>) and bare and junk (<|Obj_2|>).",
            3,
        ),
        ("Broken (<|Obj_0|>) and fine (<|Obj_1|>>) \u{e9}t\u{e9}.", 2),
        ("Leftover and gone.", 0),
        ("Quote \"end\" (<|Obj_0|>) said \"ok\"", 1),
    ];
    let square = |x: u32| format!("[[{x}, 0, {}, 0, {}, 56, {x}, 56]]", x + 56, x + 56);
    let json = serde_json::json!({
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 112, "height": 112, "captions": captions},
            {"id": 2, "file_name": "b.jpg", "width": 56, "height": 56, "captions": []},
            {"id": 3, "file_name": "c.jpg", "width": 56, "height": 56}
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": serde_json::from_str::<Value>(&square(0)).unwrap(), "area": 3136.0, "bbox": [0, 0, 56, 56], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 1, "segmentation": serde_json::from_str::<Value>(&square(56)).unwrap(), "area": 3136, "bbox": [56, 0, 56, 56], "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 1, 0, 1, 1]], "area": 0.5, "bbox": [0, 0, 1, 1], "iscrowd": 0},
            {"id": 13, "image_id": 1, "category_id": 1, "area": 4.0, "bbox": [0, 0, 2, 2], "iscrowd": 0},
            {"id": 20, "image_id": 2, "category_id": 1, "segmentation": [[0, 0, 56, 0, 56, 56]], "area": 1.0, "bbox": [0, 0, 56, 56], "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "thing"}]
    });
    let path = dir.path().join("ric.json");
    std::fs::write(&path, json.to_string()).unwrap();
    let out = process_ric(&RicOptions {
        annotations: path,
        images_dir: dir.path().to_path_buf(),
    })
    .unwrap();
    let got: Vec<(&str, usize)> = out
        .items
        .iter()
        .map(|i| (i.record.answer_template.as_str(), i.record.objects.len()))
        .collect();
    assert_eq!(got, expected);
    for item in &out.items {
        assert_eq!(item.record.prompt, RIC_PROMPT);
        assert!(item
            .record
            .objects
            .iter()
            .all(|o| o.label.is_empty() && o.rle.is_some()));
    }
    let c = |k: &str| out.counts.get(k).copied().unwrap_or(0);
    assert_eq!(c("captions_total"), 8);
    assert_eq!(c("captions_dropped_no_final_period_or_quote"), 1);
    assert_eq!(c("box_tags_removed_no_patch"), 2);
    assert_eq!(c("box_tags_removed_no_segmentation"), 1);
    assert_eq!(c("box_tags_removed_other_image"), 1);
    assert_eq!(c("box_tags_removed_unknown_annotation"), 1);
    assert_eq!(c("images_skipped_no_captions"), 1);
    assert_eq!(c("captions_autofixed_leftover_groups"), 1);
    // Ann 11 has an integer area in the JSON: it stays an integer in the output.
    let obj11 = &out.items[1].record.objects[1];
    assert!(obj11.area_is_int && obj11.area == 3136.0);
    assert_eq!(obj11.patches, vec![2, 3, 6, 7]);
}

#[test]
fn malformed_ric_json_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ric.json");
    std::fs::write(&path, r#"{"images": [{"id": 1, "file_name": "a.jpg", "width": 5, "height": 5, "captions": ["x."]}], "annotations": [{"id": 1}]}"#).unwrap();
    let err = process_ric(&RicOptions {
        annotations: path,
        images_dir: dir.path().into(),
    })
    .unwrap_err();
    assert!(matches!(err, SourceError::Json { .. }), "{err:?}");
    assert!(err.to_string().contains("ric.json"), "{err}");
}

#[test]
fn empty_dataset_gives_zero_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ric.json");
    std::fs::write(
        &path,
        r#"{"images": [], "annotations": [], "categories": []}"#,
    )
    .unwrap();
    let out = process_ric(&RicOptions {
        annotations: path,
        images_dir: dir.path().into(),
    })
    .unwrap();
    assert!(out.items.is_empty());
    assert_eq!(out.counts.get("images_total"), Some(&0));
}
