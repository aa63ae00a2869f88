//! lmms-lab RefCOCO parquet reader: parity with `expected/lmms_refcoco_rows.jsonl` (row
//! contents and lmms-eval's REC rows), patches against PaDT's own RefCOCO files, filters, and
//! errors for unusable files.

use padt_data::record::Task;
use padt_data::sources::lmms::{process_lmms, read_lmms_file, LmmsOptions, RefsSplitFilter};
use padt_data::sources::refcoco::{rec_answer, rec_prompt};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    std::env::var_os("PADT_DATA_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data"))
}

fn expected_rows() -> Vec<Value> {
    let text =
        std::fs::read_to_string(fixtures().join("expected/lmms_refcoco_rows.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn rows_match_the_expected_contents() {
    let expected = expected_rows();
    assert_eq!(expected.len(), 7);
    for e in &expected {
        let path = fixtures().join(e["file"].as_str().unwrap());
        let rows = read_lmms_file(&path).unwrap();
        let row = &rows[e["row"].as_u64().unwrap() as usize];
        assert_eq!(row.question_id, e["question_id"].as_str().unwrap());
        assert_eq!(row.file_name, e["file_name"].as_str().unwrap());
        let answers: Vec<&str> = e["answer"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(row.answer, answers);
        // float32 values widened exactly: bit-equal to Python's float(np.float32).
        let bbox = f64s(&e["bbox_xywh"]);
        for (a, b) in row.bbox_xywh.iter().zip(&bbox) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
        assert_eq!(row.iscrowd, e["iscrowd"].as_i64().unwrap());
        assert_eq!(
            row.segmentation.len() as u64,
            e["segmentation_len"].as_u64().unwrap()
        );
        for (a, b) in row.segmentation.iter().zip(f64s(&e["segmentation_first4"])) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
        assert_eq!(row.image_path.is_none(), e["image_path"].is_null());
        assert_eq!(
            hex(&row.image_bytes),
            e["image_bytes_sha256"].as_str().unwrap()
        );
        let wh = image::ImageReader::new(std::io::Cursor::new(&row.image_bytes))
            .with_guessed_format()
            .unwrap()
            .into_dimensions()
            .unwrap();
        assert_eq!(
            [wh.0 as u64, wh.1 as u64].to_vec(),
            e["image_wh"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect::<Vec<_>>()
        );
    }
}

/// PaDT's own RefCOCO records (from the refer pickles) for an image, by split.
fn padt_refcoco(split: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join(format!("expected/refcoco_{split}.jsonl")))
        .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn records_follow_lmms_eval_boxes_and_padt_patches() {
    let dir = fixtures().join("raw/lmms_refcoco");
    let expected = expected_rows();
    for split in ["val", "testA", "testB"] {
        let mut opts = LmmsOptions::new(&dir);
        opts.split = Some(split.into());
        let out = process_lmms(&opts).unwrap();
        let file = format!("raw/lmms_refcoco/data/{split}-00000-of-00001.parquet");
        let rows: Vec<&Value> = expected
            .iter()
            .filter(|e| e["file"] == file.as_str())
            .collect();
        // One record per expression, in file order, except rows without a foreground patch.
        let want: Vec<(&Value, &Value)> = rows
            .iter()
            .flat_map(|e| {
                e["lmms_eval_rec_rows"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(move |r| (*e, r))
            })
            .filter(|(e, _)| e["question_id"] != "1700041")
            .collect();
        assert_eq!(out.items.len(), want.len(), "{split}");
        assert_eq!(out.counts["rows"], rows.len() as u64);
        if split == "val" {
            // 28 px in one row of one block: mean exactly 255/28, dropped by the RefCOCO `>` rule.
            assert_eq!(out.counts["rows_skipped_no_patch"], 1);
            assert_eq!(out.counts["expressions_skipped"], 1);
        }
        let padt = padt_refcoco(split);
        for (item, (e, rec)) in out.items.iter().zip(&want) {
            let expr = rec["expression"].as_str().unwrap();
            let r = &item.record;
            let wh = e["image_wh"].as_array().unwrap();
            assert_eq!(
                (item.width as u64, item.height as u64),
                (wh[0].as_u64().unwrap(), wh[1].as_u64().unwrap())
            );
            let fname = e["file_name"].as_str().unwrap();
            let image_id: i64 = fname[15..27].parse().unwrap();
            assert_eq!(r.id, image_id);
            assert_eq!(r.image, format!("COCO_train2014_{image_id:012}.jpg"));
            assert_eq!(r.task, Task::Refering);
            assert_eq!(r.prompt, rec_prompt(expr));
            assert_eq!(r.answer_template, rec_answer(expr));
            assert_eq!(r.objects.len(), 1);
            let o = &r.objects[0];
            assert_eq!(o.label, expr);
            for (a, b) in o.bbox.iter().zip(f64s(&rec["bbox_xyxy_normalised"])) {
                assert_eq!(a.to_bits(), b.to_bits(), "{expr}");
            }
            let rle = o.rle.as_ref().unwrap();
            assert_eq!(rle.size, [item.height, item.width]);
            let decoded =
                padt_core::Rle::from_string(&rle.counts, item.height, item.width).unwrap();
            assert_eq!(decoded.area() as f64, o.area);

            // PaDT's record for the same object (same image, box within float32 rounding).
            let twin = padt
                .iter()
                .find(|p| {
                    p["id"].as_i64() == Some(image_id)
                        && f64s(&p["objects"][0]["bbox"])
                            .iter()
                            .zip(&o.bbox)
                            .all(|(a, b)| (a - b).abs() < 1e-6)
                })
                .unwrap_or_else(|| panic!("no PaDT refcoco_{split} record for {expr}"));
            let theirs: Vec<u32> = twin["objects"][0]["patches"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            if e["question_id"] == "1700021" {
                // Two polygons in instances.json, only the first in the parquet: a subset.
                assert!(o.patches.iter().all(|p| theirs.contains(p)));
                assert!(o.patches.len() < theirs.len());
            } else {
                assert_eq!(o.patches, theirs, "{expr}");
                assert_eq!(
                    rle.counts,
                    twin["objects"][0]["rle"]["counts"].as_str().unwrap(),
                    "{expr}"
                );
            }
        }
    }
}

#[test]
fn folder_with_several_splits_needs_a_split() {
    let err = process_lmms(&LmmsOptions::new(fixtures().join("raw/lmms_refcoco"))).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("testA") && msg.contains("val") && msg.contains("--split"),
        "{msg}"
    );
    let mut opts = LmmsOptions::new(fixtures().join("raw/lmms_refcoco"));
    opts.split = Some("test".into());
    let msg = process_lmms(&opts).unwrap_err().to_string();
    assert!(msg.contains("no parquet file of split \"test\""), "{msg}");
}

#[test]
fn refs_split_and_image_id_filters() {
    let dir = fixtures().join("raw/lmms_refcoco");
    let refs = fixtures().join("raw/refer/refcoco/refs(unc).p");
    // testA parquet rows are refs of the unc testA split; keeping `val` removes them.
    let mut opts = LmmsOptions::new(&dir);
    opts.split = Some("testA".into());
    opts.keep_refs = Some(RefsSplitFilter {
        refs: refs.clone(),
        split: "val".into(),
    });
    let out = process_lmms(&opts).unwrap();
    assert_eq!(out.items.len(), 0);
    assert_eq!(out.counts["rows_filtered_not_in_refs_split"], 1);
    opts.keep_refs = Some(RefsSplitFilter {
        refs: refs.clone(),
        split: "testA".into(),
    });
    assert_eq!(process_lmms(&opts).unwrap().items.len(), 2);
    opts.keep_refs = Some(RefsSplitFilter {
        refs,
        split: "nope".into(),
    });
    let msg = process_lmms(&opts).unwrap_err().to_string();
    assert!(msg.contains("no ref has split \"nope\""), "{msg}");

    let tmp = tempfile::tempdir().unwrap();
    let ids = tmp.path().join("ids.txt");
    std::fs::write(&ids, "# seen in training\n581862\n\n").unwrap();
    let mut opts = LmmsOptions::new(&dir);
    opts.split = Some("val".into());
    opts.exclude_image_ids = Some(ids.clone());
    let out = process_lmms(&opts).unwrap();
    assert_eq!(out.counts["rows_excluded_image_id"], 3);
    assert!(out.items.iter().all(|i| i.record.id == 581859));
    std::fs::write(&ids, "581862\nabc\n").unwrap();
    let msg = process_lmms(&opts).unwrap_err().to_string();
    assert!(msg.contains("line 2") && msg.contains("ids.txt"), "{msg}");
}

#[test]
fn rewritten_file_with_item_lists_reads_the_same_and_missing_columns_are_named() {
    use polars::prelude::*;
    let src = fixtures().join("raw/lmms_refcoco/data/val-00000-of-00001.parquet");
    let mut df = ParquetReader::new(std::fs::File::open(&src).unwrap())
        .finish()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // polars writes list children as `item` (the older writers' name).
    let same = tmp.path().join("val-item.parquet");
    ParquetWriter::new(std::fs::File::create(&same).unwrap())
        .finish(&mut df)
        .unwrap();
    assert_eq!(
        read_lmms_file(&same).unwrap(),
        read_lmms_file(&src).unwrap()
    );

    let _ = df.drop_in_place("segmentation").unwrap();
    let bad = tmp.path().join("val-bad.parquet");
    ParquetWriter::new(std::fs::File::create(&bad).unwrap())
        .finish(&mut df)
        .unwrap();
    let msg = read_lmms_file(&bad).unwrap_err().to_string();
    assert!(
        msg.contains("val-bad.parquet") && msg.contains("missing column \"segmentation\""),
        "{msg}"
    );

    let not_parquet = tmp.path().join("val-junk.parquet");
    std::fs::write(&not_parquet, b"PAR1 this is not parquet").unwrap();
    let msg = read_lmms_file(&not_parquet).unwrap_err().to_string();
    assert!(
        msg.contains("val-junk.parquet") && msg.contains("not a readable parquet"),
        "{msg}"
    );
}
