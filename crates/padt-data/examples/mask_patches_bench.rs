//! Per-object mask cost of `padt-preprocess`: polygons → RLE (union) → compressed string →
//! foreground patches (COCO rule), single thread. Input from `tools/bench_masks.py`, which also
//! times PaDT's Python (pycocotools + cv2 + numpy) on the same objects.
//!
//! `cargo run --release -p padt-data --example mask_patches_bench -- /tmp/padt_mask_bench.json
//! [/tmp/padt_mask_bench_expected.json]`: with the second file, every object's RLE string and
//! patches (both rules) are also compared with the Python results (untimed).

use padt_core::segmentation::polygons_to_rle;
use padt_data::patches::{foreground_patches, PatchRule};
use std::time::Instant;

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/padt_mask_bench.json".into());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let objs: Vec<serde_json::Value> = serde_json::from_str(&text).expect("bench json");
    let objs: Vec<(u32, u32, Vec<Vec<f64>>)> = objs
        .iter()
        .map(|o| {
            let parts = o["parts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    p.as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap())
                        .collect()
                })
                .collect();
            (
                o["h"].as_u64().unwrap() as u32,
                o["w"].as_u64().unwrap() as u32,
                parts,
            )
        })
        .collect();
    // Stage timings (COCO rule).
    let t0 = Instant::now();
    let rles: Vec<_> = objs
        .iter()
        .map(|(h, w, parts)| polygons_to_rle(parts, *h, *w).expect("polygon"))
        .collect();
    let t_poly = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let chars: usize = rles.iter().map(|r| r.to_compressed().len()).sum();
    let t_str = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let total: usize = rles
        .iter()
        .map(|r| foreground_patches(r, PatchRule::CocoU8).len())
        .sum();
    let t_patch = t0.elapsed().as_secs_f64();
    println!("stages: polygons->rle {t_poly:.3} s, rle->string {t_str:.3} s ({chars} chars), patches {t_patch:.3} s ({total})");
    for rule in [PatchRule::CocoU8, PatchRule::RefcocoF32] {
        let t0 = Instant::now();
        let (mut kept, mut total, mut chars) = (0usize, 0usize, 0usize);
        for (h, w, parts) in &objs {
            let rle = polygons_to_rle(parts, *h, *w).expect("polygon");
            chars += rle.to_compressed().len();
            let patches = foreground_patches(&rle, rule);
            kept += usize::from(!patches.is_empty());
            total += patches.len();
        }
        let dt = t0.elapsed().as_secs_f64();
        println!(
            "rust {rule:?}: {} objects in {dt:.3} s = {:.0} objects/s (1 thread); kept {kept}, patches {total}, rle chars {chars}",
            objs.len(),
            objs.len() as f64 / dt
        );
    }

    if let Some(expected_path) = std::env::args().nth(2) {
        let text = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{expected_path}: {e}"));
        let expected: Vec<serde_json::Value> = serde_json::from_str(&text).expect("expected json");
        assert_eq!(expected.len(), objs.len(), "object count");
        let ids = |v: &serde_json::Value| -> Vec<u32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_u64().unwrap() as u32)
                .collect()
        };
        let (mut bad_rle, mut bad_u8, mut bad_f32) = (0usize, 0usize, 0usize);
        for ((h, w, parts), e) in objs.iter().zip(&expected) {
            let rle = polygons_to_rle(parts, *h, *w).expect("polygon");
            bad_rle += usize::from(rle.to_compressed() != e["counts"].as_str().unwrap());
            bad_u8 += usize::from(foreground_patches(&rle, PatchRule::CocoU8) != ids(&e["u8"]));
            bad_f32 +=
                usize::from(foreground_patches(&rle, PatchRule::RefcocoF32) != ids(&e["f32"]));
        }
        println!(
            "exactness vs Python: {} objects, RLE string mismatches {bad_rle}, COCO patch mismatches {bad_u8}, RefCOCO patch mismatches {bad_f32}",
            objs.len()
        );
    }
}
