//! `sources::padt_jsonl`: importing PaDT's released JSONL files as they are.

use padt_data::pyjson::{parse_jsonl_line, record_to_jsonl_line};
use padt_data::record::ImageData;
use padt_data::sources::padt_jsonl::{process_padt_jsonl, PadtJsonlOptions};
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

/// The imported records are the file's lines; sizes come from the image headers and agree
/// with the COCO JSON.
#[test]
fn imports_padt_coco_val_with_header_sizes() {
    let dir = golden_dir();
    let jsonl = dir.join("expected/coco_instances_val2017.jsonl");
    let opts = PadtJsonlOptions {
        jsonl: jsonl.clone(),
        images_dir: dir.join("raw/coco/images/val2017"),
    };
    let out = process_padt_jsonl(&opts).unwrap();
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(out.items.len(), lines.len());
    let coco: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("raw/coco/annotations/instances_val2017.json")).unwrap(),
    )
    .unwrap();
    for (item, line) in out.items.iter().zip(&lines) {
        assert_eq!(&record_to_jsonl_line(&item.record), line);
        let img = coco["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == item.record.id)
            .unwrap();
        assert_eq!(item.width as u64, img["width"].as_u64().unwrap());
        assert_eq!(item.height as u64, img["height"].as_u64().unwrap());
        let ImageData::File(path) = &item.image else {
            panic!("file images")
        };
        assert!(path.is_file());
    }
    assert_eq!(out.counts.get("records"), Some(&(lines.len() as u64)));
}

#[test]
fn missing_images_and_size_mismatches_are_counted_skips() {
    let dir = golden_dir();
    let text = std::fs::read_to_string(dir.join("expected/coco_instances_val2017.jsonl")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let n = lines.len() as u64;
    let records: Vec<_> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| parse_jsonl_line(l, i + 1).unwrap())
        .collect();
    // A record whose image file does not exist.
    let mut gone = records[0].clone();
    gone.image = "gone.jpg".into();
    lines.push(record_to_jsonl_line(&gone));
    // A record with an rle whose size is not the image's.
    let mut swapped = records
        .iter()
        .find(|r| r.objects.iter().any(|o| o.rle.is_some()))
        .unwrap()
        .clone();
    let rle = swapped
        .objects
        .iter_mut()
        .find_map(|o| o.rle.as_mut())
        .unwrap();
    rle.size = [rle.size[0] + 1, rle.size[1]];
    lines.push(record_to_jsonl_line(&swapped));
    lines.push(String::new()); // blank lines are ignored
    let jsonl = tmp.path().join("padt.json");
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let out = process_padt_jsonl(&PadtJsonlOptions {
        jsonl,
        images_dir: dir.join("raw/coco/images/val2017"),
    })
    .unwrap();
    assert_eq!(out.items.len() as u64, n);
    assert_eq!(out.counts.get("records_skipped_image_missing"), Some(&1));
    assert_eq!(
        out.counts.get("records_skipped_rle_size_mismatch"),
        Some(&1)
    );
    assert_eq!(out.counts.get("lines_total"), Some(&(n + 2)));
}

#[test]
fn unreadable_image_is_a_counted_skip() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("a.jpg"), b"not an image").unwrap();
    let line = r#"{"id": 1, "image": "a.jpg", "conversations": [{"from": "human", "value": "Please describe this image."}], "answer_template": "x.", "objects": [], "task": "ric"}"#;
    let jsonl = tmp.path().join("x.jsonl");
    std::fs::write(&jsonl, line).unwrap();
    let out = process_padt_jsonl(&PadtJsonlOptions {
        jsonl,
        images_dir: tmp.path().into(),
    })
    .unwrap();
    assert!(out.items.is_empty());
    assert_eq!(out.counts.get("records_skipped_image_unreadable"), Some(&1));
}

#[test]
fn malformed_line_names_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let good = r#"{"id": 1, "image": "a.jpg", "conversations": [{"from": "human", "value": "p"}], "answer_template": "x.", "objects": [], "task": "ric"}"#;
    let bad_field = good.replace("\"objects\": []", "\"objects\": [{\"patches\": [1], \"bbox\": [0, 0, 1, 1], \"iscrowd\": 0, \"area\": \"big\", \"label\": \"\"}]");
    let jsonl = tmp.path().join("x.jsonl");
    std::fs::write(&jsonl, format!("{good}\n\n{bad_field}\n")).unwrap();
    let opts = PadtJsonlOptions {
        jsonl,
        images_dir: tmp.path().into(),
    };
    let err = process_padt_jsonl(&opts).unwrap_err();
    assert!(matches!(err, SourceError::JsonlLine { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("x.jsonl") && msg.contains("line 3") && msg.contains("objects[0].area"),
        "{msg}"
    );
    std::fs::write(&opts.jsonl, format!("{good}\n{}", &good[..30])).unwrap();
    let msg = process_padt_jsonl(&opts).unwrap_err().to_string();
    assert!(msg.contains("line 2: malformed JSON"), "{msg}");
}

#[test]
fn empty_file_gives_zero_records() {
    let tmp = tempfile::tempdir().unwrap();
    let jsonl = tmp.path().join("empty.jsonl");
    std::fs::write(&jsonl, "").unwrap();
    let out = process_padt_jsonl(&PadtJsonlOptions {
        jsonl,
        images_dir: tmp.path().into(),
    })
    .unwrap();
    assert!(out.items.is_empty());
}
