//! `sources::coco` against the outputs of PaDT's `process_coco.py` (fixtures `raw/coco`,
//! `expected/coco_*.jsonl`, `expected/coco_train_draws.jsonl`, `expected/summary.json`),
//! plus the numpy RNG, the CPython set order and the error / skip paths.

use padt_data::pyjson::{parse_jsonl_line, record_to_jsonl_line};
use padt_data::record::{ImageData, Record, SourceOutput};
use padt_data::sources::coco::cpython_set::cpython_set_order;
use padt_data::sources::coco::numpy_rng::LegacyRandomState;
use padt_data::sources::coco::{
    filled_box_mask, ovd_answer, process_coco, CocoOptions, CocoSplit, NO_OBJECTS_ANSWER,
};
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

fn expected_lines(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(golden_dir().join("expected").join(name)).unwrap();
    text.lines().map(str::to_string).collect()
}

/// Field-by-field comparison (clear messages), then the whole record, then the JSONL bytes.
fn assert_records_match(file: &str, got: &[Record], expected_lines: &[String]) {
    assert_eq!(got.len(), expected_lines.len(), "{file}: record count");
    for (i, (g, line)) in got.iter().zip(expected_lines).enumerate() {
        let e = parse_jsonl_line(line, i + 1).unwrap();
        let at = format!("{file} record {i} (image {})", e.id);
        assert_eq!(g.id, e.id, "{at}: id");
        assert_eq!(g.image, e.image, "{at}: image");
        assert_eq!(g.task, e.task, "{at}: task");
        assert_eq!(g.prompt, e.prompt, "{at}: prompt");
        assert_eq!(
            g.answer_template, e.answer_template,
            "{at}: answer_template"
        );
        assert_eq!(g.objects.len(), e.objects.len(), "{at}: object count");
        for (k, (go, eo)) in g.objects.iter().zip(&e.objects).enumerate() {
            assert_eq!(go.patches, eo.patches, "{at} object {k}: patches");
            assert_eq!(go.bbox, eo.bbox, "{at} object {k}: bbox");
            assert_eq!(go.iscrowd, eo.iscrowd, "{at} object {k}: iscrowd");
            assert_eq!(go.area, eo.area, "{at} object {k}: area");
            assert_eq!(
                go.area_is_int, eo.area_is_int,
                "{at} object {k}: area int/float"
            );
            assert_eq!(go.rle, eo.rle, "{at} object {k}: rle");
            assert_eq!(go.label, eo.label, "{at} object {k}: label");
        }
        assert_eq!(g, &e, "{at}");
        assert_eq!(&record_to_jsonl_line(g), line, "{at}: JSONL bytes");
    }
}

fn assert_counts(file: &str, out: &SourceOutput, expected: &Value) {
    for (reason, n) in expected.as_object().unwrap() {
        assert_eq!(
            out.counts.get(reason).copied().unwrap_or(0),
            n.as_u64().unwrap(),
            "{file}: counter {reason} (all counters: {:?})",
            out.counts
        );
    }
}

fn coco_options(split: CocoSplit) -> CocoOptions {
    let raw = golden_dir().join("raw/coco");
    let name = match split {
        CocoSplit::Train => "train2017",
        CocoSplit::Val => "val2017",
    };
    let mut opts = CocoOptions::new(
        raw.join(format!("annotations/instances_{name}.json")),
        raw.join("images").join(name),
        split,
    );
    opts.seed = summary()["seed_process_coco_train"].as_u64().unwrap() as u32;
    opts
}

#[test]
fn coco_val_matches_process_coco() {
    let out = process_coco(&coco_options(CocoSplit::Val)).unwrap();
    let records: Vec<Record> = out.items.iter().map(|i| i.record.clone()).collect();
    assert_records_match(
        "coco_instances_val2017.jsonl",
        &records,
        &expected_lines("coco_instances_val2017.jsonl"),
    );
    assert_counts("coco val", &out, &summary()["coco_instances_val2017.jsonl"]);
    for item in &out.items {
        let ImageData::File(path) = &item.image else {
            panic!("COCO images are files")
        };
        assert!(path.ends_with(Path::new("val2017").join(&item.record.image)));
    }
}

#[test]
fn coco_train_matches_process_coco_with_the_seeded_draws() {
    let out = process_coco(&coco_options(CocoSplit::Train)).unwrap();
    let records: Vec<Record> = out.items.iter().map(|i| i.record.clone()).collect();
    assert_records_match(
        "coco_instances_train2017.jsonl",
        &records,
        &expected_lines("coco_instances_train2017.jsonl"),
    );
    assert_counts(
        "coco train",
        &out,
        &summary()["coco_instances_train2017.jsonl"],
    );
}

/// The numpy legacy generator replays `coco_train_draws.jsonl`: the cumulative in-place
/// shuffle of the category ids and the `rand()` drop draw, per processed image.
#[test]
fn numpy_legacy_draws_replay_the_reference() {
    let ann_path = golden_dir().join("raw/coco/annotations/instances_train2017.json");
    let coco: Value = serde_json::from_str(&std::fs::read_to_string(ann_path).unwrap()).unwrap();
    let cat_ids: Vec<i64> = coco["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    let mut order = cpython_set_order(&cat_ids);
    let seed = summary()["seed_process_coco_train"].as_u64().unwrap() as u32;
    let mut rng = LegacyRandomState::new(seed);
    let lines = expected_lines("coco_train_draws.jsonl");
    assert!(!lines.is_empty());
    for line in &lines {
        let draw: Value = serde_json::from_str(line).unwrap();
        rng.shuffle(&mut order);
        let expected: Vec<i64> = draw["shuffled_category_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(order, expected, "image {}: shuffled ids", draw["id"]);
        let u = rng.random_sample();
        assert_eq!(
            u,
            draw["rand"].as_f64().unwrap(),
            "image {}: rand",
            draw["id"]
        );
        assert_eq!(
            u < 0.5,
            draw["drop_first_40"].as_bool().unwrap(),
            "image {}: drop",
            draw["id"]
        );
    }
}

/// Well-known MT19937 / numpy values: the first outputs of `init_genrand(0)` and
/// `init_genrand(5489)` (mt19937ar.c) and `np.random.RandomState(0).rand()`.
#[test]
fn mt19937_reference_streams() {
    let mut rng = LegacyRandomState::new(0);
    // First outputs of the reference `init_genrand(0)` MT19937 (mt19937ar.c).
    assert_eq!(rng.next_u32(), 2_357_136_044);
    assert_eq!(rng.next_u32(), 2_546_248_239);
    let mut rng = LegacyRandomState::new(5489);
    assert_eq!(rng.next_u32(), 3_499_211_612);
    let mut rng = LegacyRandomState::new(0);
    // np.random.RandomState(0).rand() == 0.5488135039273248
    assert_eq!(rng.random_sample(), 0.548_813_503_927_324_8);
}

/// `list(set(keys))` from CPython 3.11.7 (small ints, ascending; ids above the table size;
/// hash collisions; negative and large ints).
#[test]
fn cpython_set_order_matches_python() {
    let cases: &[(&[i64], &[i64])] = &[
        (&[1000, 8, 16, 24, 3, 11, 19], &[3, 1000, 8, 11, 16, 19, 24]),
        (&[5, 3, 1, 3, 5], &[1, 3, 5]),
        // hash(-1) == hash(-2) == hash(-(2**62)) == -2 in CPython.
        (
            &[-1, -2, 0, 1 << 62, -(1 << 62)],
            &[0, 4611686018427387904, -1, -2, -4611686018427387904],
        ),
    ];
    for (keys, expected) in cases {
        assert_eq!(&cpython_set_order(keys), expected, "keys {keys:?}");
    }
    let keys: Vec<i64> = (0..40).map(|i| 581_857 + (i * 7919) % 100).collect();
    let expected: &[i64] = &[
        581889, 581890, 581894, 581895, 581898, 581899, 581903, 581904, 581908, 581909, 581913,
        581914,
    ];
    assert_eq!(&cpython_set_order(&keys)[..12], expected);
    // 300 ids up to 600000 (several resizes, collisions): first 40 of `list(set(keys))`.
    let keys: Vec<i64> = (0..300).map(|i| (i * 7919) % 600_000).collect();
    let expected: &[i64] = &[
        0, 118785, 237570, 356355, 475140, 593925, 25601, 144386, 263171, 381956, 500741, 51202,
        169987, 288772, 407557, 526342, 425239, 393563, 409401, 322292, 330211, 179750, 235183,
        102947, 221732, 340517, 459302, 578087, 9763, 128548, 247333, 366118, 484903, 35364,
        154149, 272934, 391719, 510504, 60965, 536105,
    ];
    assert_eq!(&cpython_set_order(&keys)[..40], expected);
    // Large negative and positive ids.
    let keys: Vec<i64> = (0..100i128)
        .map(|i| ((i * 2_654_435_761 * 97) % 1_000_000_000_000 - 500_000_000_000) as i64)
        .collect();
    let order = cpython_set_order(&keys);
    assert_eq!(order.len(), 100);
    assert_eq!(
        &order[..10],
        &[
            -500000000000,
            -69295537653,
            206296397837,
            481888333327,
            -242519731183,
            188184731164,
            463776666654,
            -260631397856,
            14960537634,
            445664999981
        ]
    );
    assert_eq!(
        &order[95..],
        &[
            -308664139797,
            -33072204307,
            -326775806470,
            -51183870980,
            224408064510
        ]
    );
}

#[test]
fn answer_templates_have_the_three_forms() {
    assert_eq!(ovd_answer(&[]), NO_OBJECTS_ANSWER);
    assert_eq!(
        ovd_answer(&[("dog", 1)]),
        "There is 1 \"dog\" (<|Obj_0|>) in this image."
    );
    assert_eq!(
        ovd_answer(&[("dog", 2)]),
        "There are 2 \"dog\" (<|Obj_0|>, <|Obj_1|>) in this image."
    );
    assert_eq!(
        ovd_answer(&[("motorcycle", 1), ("person", 2)]),
        "In this image, there are 1 \"motorcycle\" (<|Obj_0|>), 2 \"person\" (<|Obj_1|>, <|Obj_2|>)."
    );
}

#[test]
fn filled_box_uses_round_half_even_and_numpy_slices() {
    // x 0.5..2.5 → round 0..2 (ties to even); y 1.5..2.5 → 2..2 (empty).
    let m = filled_box_mask([0.5, 0.5, 2.0, 2.0], 4, 4);
    assert_eq!(m.iter().filter(|&&v| v == 1).count(), 4);
    assert_eq!(&m[..4], &[1, 1, 0, 0]);
    assert_eq!(&m[4..8], &[1, 1, 0, 0]);
    let m = filled_box_mask([1.0, 1.5, 1.0, 1.0], 4, 4);
    assert!(
        m.iter().all(|&v| v == 0),
        "rows round(1.5)=2 .. round(2.5)=2 are empty"
    );
    // A negative start counts from the end, like numpy: x -1..2 → 3..2 → empty.
    let m = filled_box_mask([-1.0, 0.0, 3.0, 1.0], 2, 4);
    assert!(m.iter().all(|&v| v == 0));
    // Stops beyond the image are clamped.
    let m = filled_box_mask([2.0, 0.0, 10.0, 10.0], 2, 4);
    assert_eq!(m, vec![0, 0, 1, 1, 0, 0, 1, 1]);
}

// ---- error and skip paths, on small inline datasets ----

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A 56x56 image file (the source only checks that it exists).
fn touch_image(dir: &Path, name: &str) {
    std::fs::write(dir.join(name), b"not decoded by the source").unwrap();
}

const CATS: &str = r#"[{"id": 1, "name": "person", "supercategory": "p"}, {"id": 3, "name": "car", "supercategory": "v"}]"#;

#[test]
fn truncated_json_names_the_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.json",
        r#"{"images": [{"id": 1, "file_name": "a.jpg", "#,
    );
    let err = process_coco(&CocoOptions::new(&path, dir.path(), CocoSplit::Val)).unwrap_err();
    assert!(matches!(err, SourceError::Json { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("bad.json") && msg.contains("line 1"), "{msg}");
    let path = write(
        dir.path(),
        "shape.json",
        r#"{"images": [{"id": 1, "file_name": "a.jpg"}]}"#,
    );
    let msg = process_coco(&CocoOptions::new(&path, dir.path(), CocoSplit::Val))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("shape.json") && msg.contains("width"), "{msg}");
    let missing = dir.path().join("missing.json");
    let err = process_coco(&CocoOptions::new(&missing, dir.path(), CocoSplit::Val)).unwrap_err();
    assert!(matches!(err, SourceError::Io { .. }) && err.to_string().contains("missing.json"));
}

#[test]
fn empty_dataset_gives_zero_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "empty.json",
        &format!(r#"{{"images": [], "annotations": [], "categories": {CATS}}}"#),
    );
    let out = process_coco(&CocoOptions::new(&path, dir.path(), CocoSplit::Train)).unwrap();
    assert!(out.items.is_empty());
    assert_eq!(out.counts.get("images_total"), Some(&0));
}

#[test]
fn bad_annotations_are_counted_skips() {
    let dir = tempfile::tempdir().unwrap();
    touch_image(dir.path(), "a.jpg");
    let json = format!(
        r#"{{"images": [{{"id": 1, "file_name": "a.jpg", "width": 56, "height": 56}},
                       {{"id": 2, "file_name": "gone.jpg", "width": 56, "height": 56}},
                       {{"id": 3, "file_name": "tiny.jpg", "width": 10, "height": 56}}],
            "annotations": [
              {{"id": 10, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 28, 0, 28, 28, 0, 28]], "area": 784.0, "bbox": [0, 0, 28, 28], "iscrowd": 0}},
              {{"id": 11, "image_id": 99, "category_id": 1, "segmentation": [[0, 0, 28, 0, 28, 28]], "area": 1.0, "bbox": [0, 0, 1, 1], "iscrowd": 0}},
              {{"id": 12, "image_id": 1, "category_id": 7, "segmentation": [[0, 0, 28, 0, 28, 28]], "area": 1.0, "bbox": [0, 0, 1, 1], "iscrowd": 0}},
              {{"id": 13, "image_id": 1, "category_id": 3, "segmentation": [[0, 0, 28]], "area": 1.0, "bbox": [0, 0, 1, 1], "iscrowd": 0}},
              {{"id": 14, "image_id": 1, "category_id": 3, "segmentation": [], "area": 1.0, "bbox": [0, 0, 1, 1], "iscrowd": 0}},
              {{"id": 16, "image_id": 1, "category_id": 3, "segmentation": "abc", "area": 1.0, "bbox": [0, 0, 1, 1], "iscrowd": 0}},
              {{"id": 17, "image_id": 1, "category_id": 3, "segmentation": [[0, 0, 28, "x", 28, 28]], "area": 1.0, "bbox": [0, 0, 1, 1], "iscrowd": 0}},
              {{"id": 18, "image_id": 1, "category_id": 3, "segmentation": {{"counts": 5, "size": [56, 56]}}, "area": 1.0, "bbox": [0, 0, 1, 1], "iscrowd": 0}},
              {{"id": 15, "image_id": 2, "category_id": 3, "segmentation": [[0, 0, 28, 0, 28, 28]], "area": 1.0, "bbox": [0, 0, 1, 1], "iscrowd": 0}}
            ],
            "categories": {CATS}}}"#
    );
    let path = write(dir.path(), "anns.json", &json);
    let out = process_coco(&CocoOptions::new(&path, dir.path(), CocoSplit::Val)).unwrap();
    let c = |k: &str| out.counts.get(k).copied().unwrap_or(0);
    assert_eq!(c("annotations_skipped_unknown_image"), 1);
    assert_eq!(c("annotations_skipped_unknown_category"), 1);
    // Odd polygon, empty list, string, non-number coordinate, RLE with bad counts.
    assert_eq!(
        c("objects_skipped_invalid_segmentation"),
        5,
        "{:?}",
        out.counts
    );
    assert_eq!(c("records_skipped_image_missing"), 1);
    assert_eq!(c("images_skipped_side_lt_14"), 1);
    assert_eq!(out.items.len(), 1);
    let r = &out.items[0].record;
    assert_eq!(
        r.answer_template,
        "There is 1 \"person\" (<|Obj_0|>) in this image."
    );
    assert_eq!(r.objects[0].patches, vec![0]);
    assert!(r.prompt.ends_with(r#"["person", "car"]."#), "{}", r.prompt);
}
