//! `padt-eval run --task ovd|ric` with the padt-tiny checkpoint on small shards made from the
//! padt-tiny images, and `padt-eval score` on hand-made prediction files: the files have the
//! reference's line format, the metrics agree with them, perfect predictions score 1, and shards
//! of another task are refused by name. (padt-tiny is random: its numbers say nothing.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use padt_data::record::{ImageData, Record, RecordObject, SourceItem, Task};
use serde_json::Value;

#[path = "../../../tests/support/golden_batch.rs"]
mod golden_batch;
use golden_batch::{golden_dir, write_test_shards};

const OVD_PROMPT: &str = "Please carefully check the image and detect the following objects: \
                          [\"cat\", \"eye\", \"cup\"].";

fn object(label: &str, bbox: [f64; 4], area: f64) -> RecordObject {
    RecordObject {
        patches: vec![0],
        bbox,
        iscrowd: 0,
        area,
        area_is_int: false,
        rle: None,
        label: label.to_string(),
    }
}

/// (id, image file, width, height) of the two padt-tiny images.
const IMAGES: [(i64, &str, u32, u32); 2] = [
    (1, "images/sample0.png", 140, 84),
    (2, "images/sample1.png", 196, 112),
];

fn item(
    image: usize,
    task: Task,
    prompt: &str,
    answer: &str,
    objects: Vec<RecordObject>,
) -> SourceItem {
    let (id, file, width, height) = IMAGES[image];
    SourceItem {
        record: Record {
            id,
            image: file.to_string(),
            prompt: prompt.to_string(),
            answer_template: answer.to_string(),
            objects,
            task,
        },
        image: ImageData::File(golden_dir().join(file)),
        width,
        height,
    }
}

fn ovd_items() -> Vec<SourceItem> {
    vec![
        item(
            0,
            Task::Ovd,
            OVD_PROMPT,
            "In this image, there are 1 \"cat\" (<|Obj_0|>), 1 \"eye\" (<|Obj_1|>).",
            vec![
                object("cat", [0.0, 0.0, 0.4785714285714286, 1.0], 4000.0),
                object("eye", [0.3, 0.27380952380952384, 0.45, 0.5], 300.0),
            ],
        ),
        item(
            1,
            Task::Ovd,
            OVD_PROMPT,
            "There is 1 \"cup\" (<|Obj_0|>) in this image.",
            vec![object(
                "cup",
                [
                    0.28061224489795916,
                    0.026785714285714284,
                    0.6836734693877551,
                    0.6428571428571429,
                ],
                5000.0,
            )],
        ),
    ]
}

/// Two captions of image 1, one of image 2.
fn ric_items() -> Vec<SourceItem> {
    let prompt = "Please describe this image.";
    let cat = object("", [0.0, 0.0, 0.4785714285714286, 1.0], 4000.0);
    let cup = object("", [0.28, 0.03, 0.68, 0.64], 5000.0);
    vec![
        item(
            0,
            Task::Ric,
            prompt,
            "A cat (<|Obj_0|>) looks at the camera.",
            vec![cat.clone()],
        ),
        item(
            1,
            Task::Ric,
            prompt,
            "A white cup (<|Obj_0|>) stands on a saucer.",
            vec![cup],
        ),
        item(
            0,
            Task::Ric,
            prompt,
            "The orange cat (<|Obj_0|>) sits in front of a wall.",
            vec![cat],
        ),
    ]
}

fn write_shards(dir: &Path, items: &[SourceItem]) {
    write_test_shards(dir, items, 2, "val");
}

fn padt_eval(args: &[&str], paths: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_padt-eval"));
    command.args(args);
    for (flag, path) in paths {
        command.arg(flag).arg(path);
    }
    command.output().expect("padt-eval runs")
}

fn ok_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `padt-eval run` with the padt-tiny checkpoint, short completions.
fn run(task: &str, data: &Path, out: &Path, batch: &str) -> Output {
    let model = golden_dir().join("checkpoint");
    padt_eval(
        &[
            "run",
            "--task",
            task,
            "--batch-size",
            batch,
            "--max-new-tokens",
            "24",
        ],
        &[
            ("--model", &model),
            ("--data", data),
            ("--predictions", &out.join("predictions.jsonl")),
            ("--results", &out.join("results.jsonl")),
            ("--metrics", &out.join("metrics.json")),
        ],
    )
}

const COCO_NUMBERS: [&str; 12] = [
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
];

#[test]
fn run_ovd_writes_reference_lines_and_coco_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ovd");
    write_shards(&data, &ovd_items());
    let summary = ok_json(&run("ovd", &data, tmp.path(), "2"));
    assert_eq!(summary["task"], "ovd");
    assert_eq!(summary["samples"], 2);
    assert_eq!(summary["gt_objects"], 3);
    assert_eq!(summary["categories"], 3);
    for key in COCO_NUMBERS {
        let v = summary[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {summary}"));
        assert!(v == -1.0 || (0.0..=1.0).contains(&v), "{key} = {v}");
    }
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(written, summary);

    // Per record: the reference's pred_comp keys first.
    let records = json_lines(&tmp.path().join("predictions.jsonl"));
    assert_eq!(records.len(), 2);
    for (r, id) in records.iter().zip([1, 2]) {
        let keys: Vec<&String> = r.as_object().unwrap().keys().take(2).collect();
        assert_eq!(keys, ["image_id", "completion"]);
        assert_eq!(r["image_id"], id);
        assert!(!r["completion"].as_str().unwrap().contains("<|im_end|>"));
    }
    // Per object: exactly the reference's pred_results keys, integer boxes, RLE masks.
    let results = json_lines(&tmp.path().join("results.jsonl"));
    let objects: usize = records
        .iter()
        .map(|r| r["predictions"].as_array().unwrap().len())
        .sum();
    // padt-tiny answers `"the cat"<|VRT_9|>.`: objects with a label that is no category.
    assert!(objects > 0);
    assert_eq!(results.len(), objects);
    assert_eq!(
        summary["prediction_lines"].as_u64().unwrap() as usize,
        objects
    );
    let dropped = summary["dropped_unknown_label"].as_u64().unwrap()
        + summary["dropped_no_label"].as_u64().unwrap();
    assert_eq!(
        summary["detections"].as_u64().unwrap() + dropped,
        objects as u64
    );
    let unknown: u64 = summary["unknown_labels"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(unknown, summary["dropped_unknown_label"].as_u64().unwrap());
    for line in &results {
        let keys: Vec<&String> = line.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["image_id", "score", "category", "bbox", "mask"],
            "{line}"
        );
        assert!(
            line["bbox"].as_array().unwrap().iter().all(Value::is_i64),
            "{line}"
        );
        let size = &line["mask"]["size"];
        let id = line["image_id"].as_i64().unwrap();
        let (_, _, w, h) = IMAGES[(id - 1) as usize];
        assert_eq!(size, &serde_json::json!([h, w]));
    }

    // The written results scored again by `padt-eval score` give the same numbers.
    let rescored = ok_json(&padt_eval(
        &["score", "--task", "ovd"],
        &[
            ("--data", &data),
            ("--results", &tmp.path().join("results.jsonl")),
        ],
    ));
    for key in COCO_NUMBERS {
        assert_eq!(rescored[key], summary[key], "{key}");
    }
}

#[test]
fn score_ovd_of_the_ground_truth_is_one_and_counts_unknown_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ovd");
    let items = ovd_items();
    write_shards(&data, &items);
    // The ground truth as the reference's lines (boxes rounded as eval_coco.py), plus a line of
    // a label that is no category and one without a label.
    let mut text = String::new();
    for it in &items {
        for o in &it.record.objects {
            let [x1, y1, x2, y2] = o.bbox;
            let (w, h) = (it.width as f64, it.height as f64);
            let bbox =
                [x1 * w, y1 * h, (x2 - x1) * w, (y2 - y1) * h].map(|v| v.round_ties_even() as i64);
            text += &format!(
                "{{\"image_id\": {}, \"score\": 0.8, \"category\": \"{}\", \"bbox\": {:?}}}\n",
                it.record.id,
                o.label.to_uppercase(),
                bbox
            );
        }
    }
    text +=
        "{\"image_id\": 1, \"score\": 0.99, \"category\": \"teapot\", \"bbox\": [0, 0, 5, 5]}\n";
    text += "{\"image_id\": 2, \"score\": 0.99, \"category\": null, \"bbox\": [0, 0, 5, 5]}\n";
    let results = tmp.path().join("gt.jsonl");
    std::fs::write(&results, text).unwrap();
    let summary = ok_json(&padt_eval(
        &["score", "--task", "ovd"],
        &[
            ("--data", &data),
            ("--results", &results),
            ("--metrics", &tmp.path().join("m.json")),
        ],
    ));
    for key in ["AP", "AP50", "AP75", "AR1", "AR10", "AR100"] {
        // Means of 101 sampled precisions: 1 up to float summation.
        let v = summary[key].as_f64().unwrap();
        assert!((v - 1.0).abs() < 1e-12, "{key}: {summary}");
    }
    assert_eq!(summary["detections"], 3);
    assert_eq!(summary["unknown_labels"], serde_json::json!({"teapot": 1}));
    assert_eq!(summary["dropped_no_label"], 1);
    assert!(tmp.path().join("m.json").is_file());

    // A line on an image that is not in the shards is refused, naming the file.
    std::fs::write(
        &results,
        "{\"image_id\": 9, \"score\": 0.5, \"category\": \"cat\", \"bbox\": [0, 0, 1, 1]}\n",
    )
    .unwrap();
    let out = padt_eval(
        &["score", "--task", "ovd"],
        &[("--data", &data), ("--results", &results)],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gt.jsonl") && stderr.contains('9'),
        "{stderr}"
    );
}

#[test]
fn run_ric_scores_one_caption_per_image_and_perfect_captions_score_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ric");
    write_shards(&data, &ric_items());
    let summary = ok_json(&run("ric", &data, tmp.path(), "1"));
    assert_eq!(summary["task"], "ric");
    assert_eq!(summary["samples"], 2, "one sample per image: {summary}");
    assert_eq!(summary["records"], 3);
    for key in ["BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr-D"] {
        assert!(summary[key].as_f64().unwrap() >= 0.0, "{key}: {summary}");
    }
    let lines = json_lines(&tmp.path().join("predictions.jsonl"));
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["image_id"], 1);
    assert_eq!(
        lines[0]["references"],
        serde_json::json!([
            "A cat looks at the camera.",
            "The orange cat sits in front of a wall."
        ])
    );
    for l in &lines {
        let caption = l["caption"].as_str().unwrap();
        assert!(
            !caption.contains("<|VRT_") && !caption.contains("<|im_end|>"),
            "{caption}"
        );
    }

    // Completions equal to a reference caption (with VRT groups, as a model writes them).
    let perfect = "{\"image_id\": 1, \"completion\": \"A cat (<|VRT_3|><|VRT_4|>) looks at the camera.\"}\n\
                   {\"image_id\": 2, \"completion\": \"A white cup (<|VRT_9|>) stands on a saucer.<|im_end|>\"}\n";
    let path = tmp.path().join("perfect.jsonl");
    std::fs::write(&path, perfect).unwrap();
    let s = ok_json(&padt_eval(
        &["score", "--task", "ric"],
        &[("--data", &data), ("--predictions", &path)],
    ));
    assert!((s["BLEU-4"].as_f64().unwrap() - 1.0).abs() < 1e-6, "{s}");
    assert_eq!(s["ROUGE-L"], 1.0);
    assert_eq!(s["images_without_prediction"], 0);

    // A missing image counts as an empty caption and is reported.
    std::fs::write(&path, perfect.lines().next().unwrap()).unwrap();
    let s = ok_json(&padt_eval(
        &["score", "--task", "ric"],
        &[("--data", &data), ("--predictions", &path)],
    ));
    assert_eq!(s["images_without_prediction"], 1);
    assert!(s["ROUGE-L"].as_f64().unwrap() < 0.75, "{s}");
}

#[test]
fn shards_of_another_task_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    // Referring shards (manifest task "refering").
    let demo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/demo/shards/val");
    let out = run("ovd", &demo, tmp.path(), "1");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("data/demo/shards/val")
            && stderr.contains("refering")
            && stderr.contains("--task ovd"),
        "{stderr}"
    );
    // Mixed shards: the first record of the wrong task is named with its shard file.
    let mixed = tmp.path().join("mixed");
    let mut items = ovd_items();
    items.extend(ric_items());
    write_shards(&mixed, &items);
    let out = run("ovd", &mixed, tmp.path(), "1");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mixed/")
            && stderr.contains("record 2")
            && stderr.contains("ric record")
            && stderr.contains("--task ovd"),
        "{stderr}"
    );
    let out = run("ric", &mixed, tmp.path(), "1");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("record 0") && stderr.contains("ovd record"),
        "{stderr}"
    );
    assert!(
        !tmp.path().join("predictions.jsonl").exists(),
        "no file written on error"
    );
}
