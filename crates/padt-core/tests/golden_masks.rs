//! The masks of the data goldens (`PADT_DATA_GOLDEN_DIR`, default `tests/fixtures/data`):
//! every `objects[].rle` string of PaDT's JSONL outputs decodes and re-encodes to itself, and is
//! exactly the RLE we compute from the raw annotation it came from (union of polygons,
//! uncompressed crowd RLE).

use padt_core::{Rle, Segmentation};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

fn golden_dir() -> PathBuf {
    match std::env::var_os("PADT_DATA_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data"),
    }
}

fn read_json(path: &PathBuf) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_jsonl(name: &str) -> Vec<Value> {
    let path = golden_dir().join("expected").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("jsonl"))
        .collect()
}

fn expected_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(golden_dir().join("expected"))
        .expect("expected/")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.ends_with(".jsonl")
                && (n.starts_with("coco_instances")
                    || n.starts_with("refcoco")
                    || n.starts_with("ric_"))
        })
        .collect();
    names.sort();
    names
}

/// (size, counts string) of every object of a file.
fn object_rles(records: &[Value]) -> Vec<(i64, [u32; 2], String)> {
    let mut out = Vec::new();
    for rec in records {
        for obj in rec["objects"].as_array().unwrap() {
            if let Some(rle) = obj.get("rle") {
                let size = rle["size"].as_array().unwrap();
                out.push((
                    rec["id"].as_i64().unwrap(),
                    [
                        size[0].as_u64().unwrap() as u32,
                        size[1].as_u64().unwrap() as u32,
                    ],
                    rle["counts"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    out
}

#[test]
fn golden_rle_strings_round_trip() {
    let mut n = 0;
    for name in expected_files() {
        for (_, [h, w], counts) in object_rles(&read_jsonl(&name)) {
            let rle = Rle::from_string(&counts, h, w).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(rle.to_string(), counts, "{name}");
            let mask = rle.decode_row_major();
            assert_eq!(Rle::encode_row_major(&mask, h, w).unwrap(), rle, "{name}");
            n += 1;
        }
    }
    assert!(n >= 60, "only {n} golden RLEs found");
}

/// image id -> (height, width, RLE strings of its annotations that have a segmentation)
fn annotation_rles(path: &PathBuf) -> HashMap<i64, HashSet<String>> {
    let v = read_json(path);
    let mut sizes = HashMap::new();
    for img in v["images"].as_array().unwrap() {
        sizes.insert(
            img["id"].as_i64().unwrap(),
            (
                img["height"].as_u64().unwrap() as u32,
                img["width"].as_u64().unwrap() as u32,
            ),
        );
    }
    let mut out: HashMap<i64, HashSet<String>> = HashMap::new();
    for ann in v["annotations"].as_array().unwrap() {
        let Some(seg) = ann.get("segmentation") else {
            continue;
        };
        let image_id = ann["image_id"].as_i64().unwrap();
        let (h, w) = sizes[&image_id];
        let seg = Segmentation::from_json(seg).unwrap();
        // A few fixture annotations are deliberately broken; PaDT never outputs those.
        if let Ok(rle) = seg.to_rle(h, w) {
            out.entry(image_id).or_default().insert(rle.to_string());
        }
    }
    out
}

fn check_against(raw: &str, files: &[&str]) -> usize {
    let anns = annotation_rles(&golden_dir().join("raw").join(raw));
    let mut n = 0;
    for name in files {
        for (image_id, _, counts) in object_rles(&read_jsonl(name)) {
            let set = anns
                .get(&image_id)
                .unwrap_or_else(|| panic!("{name}: image {image_id} has no annotations"));
            assert!(
                set.contains(&counts),
                "{name}: image {image_id}: golden rle {counts} matches no annotation"
            );
            n += 1;
        }
    }
    n
}

#[test]
fn coco_polygons_and_crowd_rles_match_golden() {
    let n = check_against(
        "coco/annotations/instances_val2017.json",
        &["coco_instances_val2017.jsonl"],
    ) + check_against(
        "coco/annotations/instances_train2017.json",
        &["coco_instances_train2017.jsonl"],
    );
    assert!(n >= 18, "{n}");
}

#[test]
fn refcoco_polygons_match_golden() {
    let files: Vec<String> = expected_files()
        .into_iter()
        .filter(|n| n.starts_with("refcoco"))
        .collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let n = check_against("refer/refcoco/instances.json", &files);
    assert!(n >= 20, "{n}");
}

#[test]
fn ric_polygons_match_golden() {
    let n = check_against(
        "ric/annotations/ric_instances_val2017.json",
        &["ric_instances_val2017.jsonl"],
    ) + check_against(
        "ric/annotations/ric_instances_train2017.json",
        &["ric_instances_train2017.jsonl"],
    );
    assert!(n >= 30, "{n}");
}
