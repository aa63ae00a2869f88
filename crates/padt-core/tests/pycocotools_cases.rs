//! Random and hand-written polygons / boxes rasterised by pycocotools 2.0.11
//! (`tests/fixtures/core/rle_cases.json`, written by `tools/gen_rle_cases.py`):
//! our RLE must be identical (compressed string, area, `toBbox`).

use padt_core::segmentation::polygons_to_rle;
use padt_core::Rle;
use serde_json::Value;
use std::path::PathBuf;

fn cases() -> Vec<Value> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/core/rle_cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).expect("rle_cases.json");
    v["cases"].as_array().expect("cases").clone()
}

fn parts(case: &Value) -> Vec<Vec<f64>> {
    case["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p.as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_f64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn every_pycocotools_case_matches_bit_for_bit() {
    let cases = cases();
    assert!(cases.len() >= 400, "fixture too small: {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let h = case["h"].as_u64().unwrap() as u32;
        let w = case["w"].as_u64().unwrap() as u32;
        let parts = parts(case);
        let rle = match case["kind"].as_str().unwrap() {
            "boxes" => {
                let rles: Vec<Rle> = parts
                    .iter()
                    .map(|b| Rle::from_bbox([b[0], b[1], b[2], b[3]], h, w).unwrap())
                    .collect();
                Rle::merge(&rles).unwrap()
            }
            _ => polygons_to_rle(&parts, h, w).unwrap(),
        };
        let expected = case["counts"].as_str().unwrap();
        if rle.to_string() != expected {
            failures.push(format!("{name}: got {rle} expected {expected}"));
            continue;
        }
        assert_eq!(rle.area(), case["area"].as_u64().unwrap(), "{name}: area");
        let bbox: Vec<f64> = case["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(rle.to_bbox().to_vec(), bbox, "{name}: toBbox");
        // the string parses back to the same counts, and decode/encode round-trips
        let parsed = Rle::from_string(expected, h, w).unwrap();
        assert_eq!(parsed, rle, "{name}: from_string");
        let col = parsed.decode_col_major();
        assert_eq!(
            Rle::encode_col_major(&col, h, w).unwrap().to_string(),
            expected,
            "{name}"
        );
        let row = parsed.decode_row_major();
        assert_eq!(
            Rle::encode_row_major(&row, h, w).unwrap().to_string(),
            expected,
            "{name}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
