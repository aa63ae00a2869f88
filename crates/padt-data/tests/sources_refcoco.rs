//! `sources::refcoco` against the outputs of PaDT's `process_refcoco.py` (fixtures
//! `raw/refer`, `expected/refcoco*.jsonl`, `expected/summary.json`), and the error paths.

use padt_data::pyjson::{parse_jsonl_line, record_to_jsonl_line};
use padt_data::record::Record;
use padt_data::sources::refcoco::{process_refcoco, RefcocoOptions, SplitBy};
use padt_data::sources::SourceError;
use serde_json::Value;
use std::path::{Path, PathBuf};

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

fn run(dataset: &str, split_by: SplitBy) -> Vec<(String, padt_data::record::SourceOutput)> {
    let raw = golden_dir().join("raw/refer");
    process_refcoco(&RefcocoOptions::new(
        raw.join(dataset),
        split_by,
        raw.join("images/train2014"),
    ))
    .unwrap()
}

/// Records compared as a multiset keyed by (image id, sentence) — the reference order is
/// CPython's set order, which the source replays, so the plain order is checked too.
fn check_dataset(dataset: &str, split_by: SplitBy) {
    let summary = summary();
    let outputs = run(dataset, split_by);
    let splits: Vec<&str> = outputs.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(splits, split_by.splits());
    for (split, out) in &outputs {
        let file = format!("{dataset}_{split}.jsonl");
        let text = std::fs::read_to_string(golden_dir().join("expected").join(&file)).unwrap();
        let expected: Vec<&str> = text.lines().collect();
        let got: Vec<String> = out
            .items
            .iter()
            .map(|i| record_to_jsonl_line(&i.record))
            .collect();
        assert_eq!(got.len(), expected.len(), "{file}: record count");
        // Multiset comparison by (image id, sentence) with parsed values.
        let key = |r: &Record| (r.id, r.objects[0].label.clone());
        let mut got_records: Vec<Record> = out.items.iter().map(|i| i.record.clone()).collect();
        let mut exp_records: Vec<Record> = expected
            .iter()
            .enumerate()
            .map(|(i, l)| parse_jsonl_line(l, i + 1).unwrap())
            .collect();
        got_records.sort_by_key(key);
        exp_records.sort_by_key(key);
        for (g, e) in got_records.iter().zip(&exp_records) {
            let at = format!("{file} image {} {:?}", e.id, e.objects[0].label);
            assert_eq!(g.prompt, e.prompt, "{at}: prompt");
            assert_eq!(g.answer_template, e.answer_template, "{at}: answer");
            assert_eq!(g.objects.len(), 1, "{at}");
            let (go, eo) = (&g.objects[0], &e.objects[0]);
            assert_eq!(go.patches, eo.patches, "{at}: patches");
            assert_eq!(go.bbox, eo.bbox, "{at}: bbox");
            assert_eq!(go.rle, eo.rle, "{at}: rle");
            assert_eq!(
                (go.iscrowd, go.area, go.area_is_int),
                (eo.iscrowd, eo.area, eo.area_is_int),
                "{at}"
            );
            assert_eq!(g, e, "{at}");
        }
        // Byte comparison after sorting, then in order (CPython set order replayed).
        let mut got_sorted = got.clone();
        let mut exp_sorted: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        got_sorted.sort();
        exp_sorted.sort();
        assert_eq!(got_sorted, exp_sorted, "{file}: sorted lines");
        assert_eq!(got, expected, "{file}: line order");
        let counts = &summary[format!("{dataset}_{split}")];
        for (reason, n) in counts.as_object().unwrap() {
            assert_eq!(
                out.counts.get(reason).copied().unwrap_or(0),
                n.as_u64().unwrap(),
                "{file}: counter {reason} ({:?})",
                out.counts
            );
        }
    }
}

#[test]
fn refcoco_unc_matches_process_refcoco() {
    check_dataset("refcoco", SplitBy::Unc);
}

#[test]
fn refcoco_plus_unc_matches_process_refcoco() {
    check_dataset("refcoco+", SplitBy::Unc);
}

#[test]
fn refcocog_umd_matches_process_refcoco() {
    check_dataset("refcocog", SplitBy::Umd);
}

#[test]
fn missing_pickle_and_wrong_pickle_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let raw = golden_dir().join("raw/refer/refcoco");
    std::fs::copy(
        raw.join("instances.json"),
        dir.path().join("instances.json"),
    )
    .unwrap();
    let opts = RefcocoOptions::new(dir.path(), SplitBy::Unc, dir.path());
    let err = process_refcoco(&opts).unwrap_err();
    assert!(
        matches!(err, SourceError::Io { .. }) && err.to_string().contains("refs(unc).p"),
        "{err}"
    );
    // A pickle of the wrong shape: a dict instead of a list of refs (protocol 2: {"a": 1}).
    let dict_pickle: &[u8] = b"\x80\x02}q\x00U\x01aq\x01K\x01s.";
    std::fs::write(dir.path().join("refs(unc).p"), dict_pickle).unwrap();
    let err = process_refcoco(&opts).unwrap_err();
    assert!(matches!(err, SourceError::Pickle { .. }), "{err:?}");
    assert!(err.to_string().contains("refs(unc).p"), "{err}");
    // A list whose items lack `sentences`: protocol 2 [{"ref_id": 1}].
    let list_pickle: &[u8] = b"\x80\x02]q\x00}q\x01U\x06ref_idq\x02K\x01sa.";
    std::fs::write(dir.path().join("refs(unc).p"), list_pickle).unwrap();
    let err = process_refcoco(&opts).unwrap_err();
    assert!(matches!(err, SourceError::Pickle { .. }), "{err:?}");
    // Truncated pickle.
    let good = std::fs::read(raw.join("refs(unc).p")).unwrap();
    std::fs::write(dir.path().join("refs(unc).p"), &good[..good.len() / 2]).unwrap();
    assert!(matches!(
        process_refcoco(&opts).unwrap_err(),
        SourceError::Pickle { .. }
    ));
}

#[test]
fn truncated_instances_json_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let raw = golden_dir().join("raw/refer/refcoco");
    std::fs::copy(raw.join("refs(unc).p"), dir.path().join("refs(unc).p")).unwrap();
    let text = std::fs::read_to_string(raw.join("instances.json")).unwrap();
    std::fs::write(dir.path().join("instances.json"), &text[..text.len() - 10]).unwrap();
    let err =
        process_refcoco(&RefcocoOptions::new(dir.path(), SplitBy::Unc, dir.path())).unwrap_err();
    assert!(matches!(err, SourceError::Json { .. }), "{err:?}");
    assert!(err.to_string().contains("instances.json"), "{err}");
}

#[test]
fn unknown_split_is_an_option_error() {
    let mut opts = RefcocoOptions::new(Path::new("x"), SplitBy::Unc, Path::new("y"));
    opts.splits = vec!["training".into()];
    assert!(matches!(
        process_refcoco(&opts).unwrap_err(),
        SourceError::Option(_)
    ));
}

/// Missing images and refs on unknown annotations are counted, not fatal.
#[test]
fn missing_images_and_unknown_annotations_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let raw = golden_dir().join("raw/refer/refcoco");
    // Keep every image but drop the annotations of the first ref's object.
    let refs = std::fs::read(raw.join("refs(unc).p")).unwrap();
    std::fs::write(dir.path().join("refs(unc).p"), refs).unwrap();
    let mut inst: Value =
        serde_json::from_str(&std::fs::read_to_string(raw.join("instances.json")).unwrap())
            .unwrap();
    let full = run("refcoco", SplitBy::Unc);
    let (_, train) = &full[0];
    let first = &train.items[0].record;
    let dropped_area = first.objects[0].area;
    let anns = inst["annotations"].as_array_mut().unwrap();
    let before = anns.len();
    anns.retain(|a| {
        !(a["image_id"].as_i64() == Some(first.id) && a["area"].as_f64() == Some(dropped_area))
    });
    assert_eq!(anns.len(), before - 1);
    std::fs::write(dir.path().join("instances.json"), inst.to_string()).unwrap();
    let images = tempfile::tempdir().unwrap(); // no image files at all
    let out = process_refcoco(&RefcocoOptions::new(
        dir.path(),
        SplitBy::Unc,
        images.path(),
    ))
    .unwrap();
    let (_, train) = &out[0];
    assert!(train.items.is_empty());
    assert_eq!(
        train.counts.get("refs_skipped_unknown_annotation"),
        Some(&1),
        "{:?}",
        train.counts
    );
    assert!(
        train
            .counts
            .get("records_skipped_image_missing")
            .copied()
            .unwrap_or(0)
            > 0
    );
}

#[test]
fn empty_dataset_gives_empty_splits() {
    let dir = tempfile::tempdir().unwrap();
    // Protocol-2 pickle of an empty list.
    std::fs::write(dir.path().join("refs(umd).p"), b"\x80\x02]q\x00.").unwrap();
    std::fs::write(
        dir.path().join("instances.json"),
        r#"{"images": [], "annotations": [], "categories": []}"#,
    )
    .unwrap();
    let out = process_refcoco(&RefcocoOptions::new(dir.path(), SplitBy::Umd, dir.path())).unwrap();
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|(_, o)| o.items.is_empty()));
}
