//! End-to-end tests of the `padt-preprocess` binary on the fixture raw data: every source →
//! shards → `export-jsonl` equals PaDT's own JSONL byte for byte; `verify` and `inspect` on the
//! results; resume; and bad inputs (truncated JSON, parquet without the needed columns, a
//! corrupt image, an unwritable output folder, an empty dataset).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    std::env::var_os("PADT_DATA_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data"))
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_padt-preprocess"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "padt-preprocess {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        !out.status.success(),
        "padt-preprocess {args:?} should fail"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Shards → export-jsonl → compare with a PaDT file, byte for byte; also runs `verify`.
fn export_equals(dir: &Path, expected: &str) {
    let out = dir.with_extension("jsonl");
    ok(&["export-jsonl", s(dir), "--out", s(&out)]);
    let got = std::fs::read_to_string(&out).unwrap();
    let want = std::fs::read_to_string(fixtures().join("expected").join(expected)).unwrap();
    assert!(
        got == want,
        "{expected}: export differs\n--- got\n{got}\n--- want\n{want}"
    );
    ok(&["verify", s(dir)]);
}

#[test]
fn coco_train_and_val_reproduce_padt_files() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    for (split, expected) in [
        ("val", "coco_instances_val2017.jsonl"),
        ("train", "coco_instances_train2017.jsonl"),
    ] {
        let dir = tmp.path().join(format!("coco_{split}"));
        let ann = fx.join(format!("raw/coco/annotations/instances_{split}2017.json"));
        let images = fx.join(format!("raw/coco/images/{split}2017"));
        ok(&[
            "coco",
            "--annotations",
            s(&ann),
            "--images",
            s(&images),
            "--split",
            split,
            "--out",
            s(&dir),
            "--shard-size",
            "3",
            "-q",
        ]);
        export_equals(&dir, expected);
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["source"]["kind"], "coco");
        assert_eq!(manifest["split"], split);
        assert_eq!(manifest["image_mode"], "embedded");
        if split == "train" {
            assert_eq!(
                manifest["drop_counts"]["images_skipped_max_side_gt_1288"],
                1
            );
        }
    }
}

#[test]
fn refcoco_family_reproduces_padt_files() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let images = fx.join("raw/refer/images/train2014");
    for (ds, split_by, splits) in [
        ("refcoco", "unc", &["train", "val", "testA", "testB"][..]),
        ("refcoco+", "unc", &["train", "val", "testA", "testB"][..]),
        ("refcocog", "umd", &["train", "val", "test"][..]),
    ] {
        for split in splits {
            let dir = tmp.path().join(format!("{ds}_{split}"));
            let refer = fx.join("raw/refer").join(ds);
            ok(&[
                "refcoco",
                "--refer-dir",
                s(&refer),
                "--split-by",
                split_by,
                "--images",
                s(&images),
                "--split",
                split,
                "--out",
                s(&dir),
                "-q",
            ]);
            export_equals(&dir, &format!("{ds}_{split}.jsonl"));
        }
    }
}

#[test]
fn ric_reproduces_padt_files_in_reference_mode() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    for split in ["train", "val"] {
        let dir = tmp.path().join(format!("ric_{split}"));
        let ann = fx.join(format!(
            "raw/ric/annotations/ric_instances_{split}2017.json"
        ));
        let images = fx.join(format!("raw/coco/images/{split}2017"));
        ok(&[
            "ric",
            "--annotations",
            s(&ann),
            "--images",
            s(&images),
            "--out",
            s(&dir),
            "--images-mode",
            "reference",
            "-q",
        ]);
        export_equals(&dir, &format!("ric_instances_{split}2017.jsonl"));
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["image_mode"], "reference");
        assert_eq!(manifest["split"], split);
    }
}

#[test]
fn padt_jsonl_import_round_trips() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    for (file, images) in [
        ("refcoco_val.jsonl", "raw/refer/images/train2014"),
        (
            "coco_instances_train2017.jsonl",
            "raw/coco/images/train2017",
        ),
        ("ric_instances_val2017.jsonl", "raw/coco/images/val2017"),
    ] {
        let dir = tmp.path().join(file.replace('.', "_"));
        let jsonl = fx.join("expected").join(file);
        ok(&[
            "padt-jsonl",
            "--jsonl",
            s(&jsonl),
            "--images",
            s(&fx.join(images)),
            "--out",
            s(&dir),
            "--shard-size",
            "2",
            "-q",
        ]);
        export_equals(&dir, file);
    }
}

#[test]
fn lmms_shards_verify_and_inspect() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lmms_val");
    let parquet = fx.join("raw/lmms_refcoco");
    let msg = fails(&["lmms", "--parquet", s(&parquet), "--out", s(&dir)]);
    assert!(msg.contains("--split"), "{msg}");
    ok(&[
        "lmms",
        "--parquet",
        s(&parquet),
        "--split",
        "val",
        "--out",
        s(&dir),
        "--shard-size",
        "2",
        "-q",
    ]);
    ok(&["verify", s(&dir)]);
    let out = ok(&["inspect", s(&dir), "--json"]);
    let ins: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 5 rows, 6 expressions, the "thin line" row has no foreground patch.
    assert_eq!(ins["records"], 5);
    assert_eq!(ins["records_per_task"]["refering"], 5);
    assert_eq!(ins["distinct_images"], 2);
    assert_eq!(ins["drop_counts"]["rows_skipped_no_patch"], 1);
    // 434x462 → 448x448 (16x16 tokens); 252x168 → 9x6.
    assert_eq!(ins["image_tokens_per_record"]["max"], 256.0);
    assert_eq!(ins["image_tokens_per_record"]["min"], 54.0);
    let text = String::from_utf8(ok(&["inspect", s(&dir)]).stdout).unwrap();
    assert!(text.contains("lmms/val/refering: 5"), "{text}");

    // The exported boxes are lmms-eval's normalised boxes.
    let jsonl = tmp.path().join("lmms_val.jsonl");
    ok(&["export-jsonl", s(&dir), "--out", s(&jsonl)]);
    let rows = std::fs::read_to_string(fx.join("expected/lmms_refcoco_rows.jsonl")).unwrap();
    let want: Vec<(String, Vec<f64>)> = rows
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["file"].as_str().unwrap().contains("/val-") && r["question_id"] != "1700041")
        .flat_map(|r| {
            r["lmms_eval_rec_rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["expression"].as_str().unwrap().to_string(),
                        e["bbox_xyxy_normalised"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|v| v.as_f64().unwrap())
                            .collect(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let got: Vec<(String, Vec<f64>)> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = &v["objects"][0];
            (
                o["label"].as_str().unwrap().to_string(),
                o["bbox"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(got, want);

    // Reference mode makes no sense for images that live inside parquet files.
    let msg = fails(&[
        "lmms",
        "--parquet",
        s(&parquet),
        "--split",
        "val",
        "--out",
        s(&tmp.path().join("r")),
        "--images-mode",
        "reference",
    ]);
    assert!(msg.contains("--images-mode embedded"), "{msg}");
}

#[test]
fn rerun_resumes_and_limit_cuts() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("coco");
    let ann = fx.join("raw/coco/annotations/instances_train2017.json");
    let images = fx.join("raw/coco/images/train2017");
    let args = [
        "coco",
        "--annotations",
        s(&ann),
        "--images",
        s(&images),
        "--split",
        "train",
        "--out",
        s(&dir),
        "--shard-size",
        "2",
    ];
    ok(&args);
    let first = std::fs::read(dir.join("manifest.json")).unwrap();
    let again = ok(&args);
    assert!(String::from_utf8_lossy(&again.stderr).contains("resuming: 4 of 4 shards"));
    assert_eq!(std::fs::read(dir.join("manifest.json")).unwrap(), first);

    let limited = tmp.path().join("limited");
    ok(&[
        "coco",
        "--annotations",
        s(&ann),
        "--images",
        s(&images),
        "--split",
        "train",
        "--out",
        s(&limited),
        "--limit",
        "3",
        "-q",
    ]);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(limited.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["total_records"], 3);
    assert_eq!(m["drop_counts"]["records_cut_by_limit"], 4);
}

#[test]
fn bad_inputs_give_clear_errors_or_counted_skips() {
    let fx = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let images = fx.join("raw/coco/images/val2017");

    // Truncated annotation JSON: the error names the file.
    let full = std::fs::read(fx.join("raw/coco/annotations/instances_val2017.json")).unwrap();
    let truncated = tmp.path().join("truncated.json");
    std::fs::write(&truncated, &full[..full.len() / 2]).unwrap();
    let msg = fails(&[
        "coco",
        "--annotations",
        s(&truncated),
        "--images",
        s(&images),
        "--split",
        "val",
        "--out",
        s(&tmp.path().join("t")),
    ]);
    assert!(msg.contains("truncated.json"), "{msg}");
    assert!(!tmp.path().join("t/manifest.json").exists());

    // A parquet file without lmms-lab's columns (a shard file is valid parquet).
    let shard_dir = tmp.path().join("shards");
    ok(&[
        "coco",
        "--annotations",
        s(&fx.join("raw/coco/annotations/instances_val2017.json")),
        "--images",
        s(&images),
        "--split",
        "val",
        "--out",
        s(&shard_dir),
        "-q",
    ]);
    let msg = fails(&[
        "lmms",
        "--parquet",
        s(&shard_dir.join("shard-00000.parquet")),
        "--out",
        s(&tmp.path().join("l")),
    ]);
    assert!(
        msg.contains("shard-00000.parquet") && msg.contains("missing column \"question_id\""),
        "{msg}"
    );

    // A corrupt image: embedded mode skips and counts the record; verify of a reference-mode
    // folder names the record.
    let bad_images = tmp.path().join("val2017");
    std::fs::create_dir(&bad_images).unwrap();
    for e in std::fs::read_dir(&images).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), bad_images.join(e.file_name())).unwrap();
    }
    std::fs::write(bad_images.join("000000087038.jpg"), b"\xff\xd8\xff garbage").unwrap();
    let ann = fx.join("raw/coco/annotations/instances_val2017.json");
    let emb = tmp.path().join("emb");
    let out = ok(&[
        "coco",
        "--annotations",
        s(&ann),
        "--images",
        s(&bad_images),
        "--split",
        "val",
        "--out",
        s(&emb),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt_image: 1"));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(emb.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["total_records"], 3);
    assert_eq!(m["skipped"][0]["image"], "000000087038.jpg");
    let reference = tmp.path().join("ref");
    ok(&[
        "coco",
        "--annotations",
        s(&ann),
        "--images",
        s(&bad_images),
        "--split",
        "val",
        "--out",
        s(&reference),
        "--images-mode",
        "reference",
        "-q",
    ]);
    let msg = fails(&["verify", s(&reference)]);
    assert!(
        msg.contains("000000087038.jpg") && msg.contains("does not decode"),
        "{msg}"
    );

    // Missing image file: a counted skip in the manifest (the COCO source checks the files;
    // the shard writer counts `missing_image` for files that vanish later).
    std::fs::remove_file(bad_images.join("000000403385.jpg")).unwrap();
    let missing = tmp.path().join("missing");
    ok(&[
        "coco",
        "--annotations",
        s(&ann),
        "--images",
        s(&bad_images),
        "--split",
        "val",
        "--out",
        s(&missing),
        "--no-image-check",
        "-q",
    ]);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(missing.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["drop_counts"]["records_skipped_image_missing"], 1);
    assert_eq!(m["total_records"], 3);

    // An output folder that cannot be created.
    let file = tmp.path().join("plain_file");
    std::fs::write(&file, b"x").unwrap();
    let msg = fails(&[
        "coco",
        "--annotations",
        s(&ann),
        "--images",
        s(&images),
        "--split",
        "val",
        "--out",
        s(&file.join("out")),
    ]);
    assert!(
        msg.contains("plain_file/out") && msg.contains("not writable"),
        "{msg}"
    );

    // An empty dataset: an error, nothing written.
    let empty = tmp.path().join("empty.json");
    std::fs::write(
        &empty,
        r#"{"images": [], "annotations": [], "categories": []}"#,
    )
    .unwrap();
    let msg = fails(&[
        "coco",
        "--annotations",
        s(&empty),
        "--images",
        s(&images),
        "--split",
        "val",
        "--out",
        s(&tmp.path().join("e")),
    ]);
    assert!(msg.contains("no records"), "{msg}");
    assert!(!tmp.path().join("e/manifest.json").exists());

    // A damaged shard: verify and export name the file.
    let p = shard_dir.join("shard-00000.parquet");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
    let msg = fails(&["verify", s(&shard_dir)]);
    assert!(msg.contains("shard-00000.parquet"), "{msg}");
    let msg = fails(&[
        "export-jsonl",
        s(&shard_dir),
        "--out",
        s(&tmp.path().join("x.jsonl")),
    ]);
    assert!(msg.contains("shard-00000.parquet"), "{msg}");
}
