//! Foreground patches against PaDT's outputs (`PADT_DATA_GOLDEN_DIR`, default
//! `tests/fixtures/data`) and against cv2/numpy on random polygons
//! (`tests/fixtures/core/patch_cases.json`, written by `tools/gen_rle_cases.py`).
//! The golden README's recipe gives 0 flips, so every comparison is exact.

use padt_core::Rle;
use padt_data::patches::{
    block_means, foreground_patches, foreground_patches_row_major, PatchRule,
};
use serde_json::Value;
use std::path::PathBuf;

fn golden_dir() -> PathBuf {
    match std::env::var_os("PADT_DATA_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data"),
    }
}

fn read_jsonl(name: &str) -> Vec<Value> {
    let path = golden_dir().join("expected").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("jsonl"))
        .collect()
}

fn rule_for(file: &str) -> PatchRule {
    if file.starts_with("refcoco") {
        PatchRule::RefcocoF32
    } else {
        PatchRule::CocoU8
    }
}

fn rle_of(obj: &Value) -> Option<Rle> {
    let rle = obj.get("rle")?;
    let size = rle["size"].as_array().unwrap();
    let (h, w) = (
        size[0].as_u64().unwrap() as u32,
        size[1].as_u64().unwrap() as u32,
    );
    Some(Rle::from_string(rle["counts"].as_str().unwrap(), h, w).unwrap())
}

fn as_u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn every_golden_object_has_padt_patches() {
    let mut files: Vec<String> = std::fs::read_dir(golden_dir().join("expected"))
        .expect("expected/")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.ends_with(".jsonl")
                && (n.starts_with("coco_instances")
                    || n.starts_with("refcoco")
                    || n.starts_with("ric_"))
        })
        .collect();
    files.sort();
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for file in &files {
        let rule = rule_for(file);
        for (r, rec) in read_jsonl(file).iter().enumerate() {
            for (o, obj) in rec["objects"].as_array().unwrap().iter().enumerate() {
                let Some(rle) = rle_of(obj) else { continue };
                let expected = as_u32s(&obj["patches"]);
                let got = foreground_patches(&rle, rule);
                if got != expected {
                    mismatches.push(format!(
                        "{file} record {r} object {o}: got {got:?}\n  expected {expected:?}"
                    ));
                }
                // the row-major entry point agrees
                let mask = rle.decode_row_major();
                assert_eq!(
                    foreground_patches_row_major(&mask, rle.width, rle.height, rule).unwrap(),
                    got,
                    "{file} record {r} object {o}: row-major input"
                );
                checked += 1;
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {checked} objects differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(checked >= 70, "only {checked} objects checked");
}

/// `patch_margins.jsonl`: every kept-or-dropped block within 1.0 of the threshold, with
/// PaDT's exact mean. On the u8 path our block mean must be bit-identical (this covers the
/// exact ties). On the f32 path PaDT's cv2 ran Intel IPP, whose float resize differs from
/// OpenCV's own path (which we emulate, see `random_polygons_match_cv2_and_numpy`) in the last
/// bits: there the mean must agree to 1e-4 and the keep decision exactly.
#[test]
fn near_threshold_block_means_are_bit_identical() {
    let mut n = 0;
    for entry in read_jsonl("patch_margins.jsonl") {
        let file = entry["file"].as_str().unwrap();
        let records = read_jsonl(file);
        let rec = &records[entry["record"].as_u64().unwrap() as usize];
        let obj = &rec["objects"][entry["object"].as_u64().unwrap() as usize];
        let rle = rle_of(obj).expect("rle");
        let means = block_means(&rle, rule_for(file));
        for near in entry["near_threshold"].as_array().unwrap() {
            let patch = near["patch"].as_u64().unwrap() as u32;
            let m = means
                .iter()
                .find(|b| b.index == patch)
                .unwrap_or_else(|| panic!("{file}: block {patch}"));
            let reference = near["mean"].as_f64().unwrap();
            match rule_for(file) {
                PatchRule::CocoU8 => assert_eq!(m.mean, reference, "{file}: block {patch} mean"),
                PatchRule::RefcocoF32 => {
                    assert!(
                        (m.mean - reference).abs() <= 1e-4,
                        "{file}: block {patch}: {} vs {reference}",
                        m.mean
                    )
                }
            }
            assert_eq!(
                m.kept,
                near["kept"].as_bool().unwrap(),
                "{file}: block {patch} kept"
            );
            n += 1;
        }
    }
    assert!(n >= 18, "{n}");
}

/// The deliberate exact ties of the golden README, by name.
#[test]
fn exact_ties_land_on_padts_side() {
    let val = read_jsonl("coco_instances_val2017.jsonl");
    let rec = val.iter().find(|r| r["id"] == 87038).expect("image 87038");
    // 9002 (28-px horizontal line, mean exactly 255/28) is kept; 9003/9004 are dropped.
    assert_eq!(rec["objects"].as_array().unwrap().len(), 2);
    let knife = &rec["objects"][1];
    let rle = rle_of(knife).unwrap();
    assert_eq!(
        foreground_patches(&rle, PatchRule::CocoU8),
        as_u32s(&knife["patches"])
    );
    let mean = block_means(&rle, PatchRule::CocoU8)
        .into_iter()
        .find(|b| b.kept)
        .unwrap()
        .mean;
    assert_eq!(mean, 255.0 / 28.0);
    // The same horizontal 28-px line on the f32 path is dropped (9.107142 !> f32(255/28)).
    assert!(foreground_patches(&rle, PatchRule::RefcocoF32).is_empty());
}

#[test]
fn random_polygons_match_cv2_and_numpy() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/core/patch_cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 200);
    let mut mismatches = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (h, w) = (
            case["h"].as_u64().unwrap() as u32,
            case["w"].as_u64().unwrap() as u32,
        );
        let rle = Rle::from_string(case["counts"].as_str().unwrap(), h, w).unwrap();
        for (key, means_key, rule) in [
            ("u8", "u8_means", PatchRule::CocoU8),
            ("f32", "f32_means_no_ipp", PatchRule::RefcocoF32),
        ] {
            let got = foreground_patches(&rle, rule);
            let expected = as_u32s(&case[key]);
            if got != expected {
                mismatches.push(format!(
                    "{name} {key} ({h}x{w}): got {got:?}\n  expected {expected:?}"
                ));
            }
            // Block means, bit for bit (f32: against cv2 with IPP off, i.e. OpenCV's own path).
            let ours = block_means(&rle, rule);
            // The fast path (skips uniform blocks) decides like the exact path.
            let exact_kept: Vec<u32> = ours.iter().filter(|b| b.kept).map(|b| b.index).collect();
            assert_eq!(got, exact_kept, "{name} {key}: fast vs exact path");
            for pair in case[means_key].as_array().unwrap() {
                let (block, reference) =
                    (pair[0].as_u64().unwrap() as u32, pair[1].as_f64().unwrap());
                let mean = ours
                    .iter()
                    .find(|b| b.index == block)
                    .map_or(0.0, |b| b.mean);
                if mean != reference {
                    mismatches.push(format!(
                        "{name} {means_key} block {block}: {mean} vs {reference}"
                    ));
                }
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
