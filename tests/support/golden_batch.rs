//! Test support shared by the padt-data, padt-train and padt-cli tests (included with
//! `#[path = "../../../tests/support/golden_batch.rs"] mod golden_batch;`): the padt-tiny golden
//! batch's samples (`batch.json`) as records, and embedded test shards.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use padt_data::manifest::{ImageMode, SourceInfo};
use padt_data::record::{ImageData, Record, RecordObject, RleJson, SourceItem, Task};
use padt_data::shard::{write_dataset, WriteOptions};
use serde_json::Value;

/// The padt-tiny golden directory (`PADT_TINY_GOLDEN_DIR`, default the fixtures copy).
pub fn golden_dir() -> PathBuf {
    std::env::var_os("PADT_TINY_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/padt-tiny")
        })
}

/// `batch.json` of the golden directory.
pub fn batch_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(golden_dir().join("batch.json")).unwrap())
        .unwrap()
}

/// The `u32` values of a JSON array.
pub fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Sample `i` of `batch.json` as a record (sample 0 is the OVD one with two objects, the
/// others referring).
pub fn golden_record(i: usize, sample: &Value) -> Record {
    Record {
        id: i as i64,
        image: sample["image"].as_str().unwrap().to_string(),
        prompt: sample["problem"].as_str().unwrap().to_string(),
        answer_template: sample["answer_template"].as_str().unwrap().to_string(),
        objects: sample["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| RecordObject {
                patches: u32s(&o["patches"]),
                bbox: std::array::from_fn(|k| o["bbox"][k].as_f64().unwrap()),
                iscrowd: o["iscrowd"].as_i64().unwrap(),
                area: o["area"].as_f64().unwrap(),
                area_is_int: false,
                rle: Some(RleJson {
                    size: [
                        o["rle"]["size"][0].as_u64().unwrap() as u32,
                        o["rle"]["size"][1].as_u64().unwrap() as u32,
                    ],
                    counts: o["rle"]["counts"].as_str().unwrap().to_string(),
                }),
                label: o["label"].as_str().unwrap().to_string(),
            })
            .collect(),
        task: if i == 0 { Task::Ovd } else { Task::Refering },
    }
}

/// `record` (made from `sample`) as a shard input, its image read from the golden directory.
pub fn golden_item(sample: &Value, record: Record) -> SourceItem {
    SourceItem {
        image: ImageData::File(golden_dir().join(&record.image)),
        record,
        width: sample["size_wh"][0].as_u64().unwrap() as u32,
        height: sample["size_wh"][1].as_u64().unwrap() as u32,
    }
}

/// Writes `items` as an embedded shard directory of `shard_size` records per shard.
pub fn write_test_shards(dir: &Path, items: &[SourceItem], shard_size: usize, split: &str) {
    let opts = WriteOptions {
        shard_size,
        image_mode: ImageMode::Embedded,
        source: SourceInfo {
            kind: "padt-jsonl".into(),
            options: BTreeMap::new(),
        },
        split: split.into(),
        tool: "padt-rs-tests".into(),
        tool_version: "0".into(),
        check_image_headers: true,
    };
    write_dataset(dir, items, &BTreeMap::new(), &opts, &|_| {}).unwrap();
}
