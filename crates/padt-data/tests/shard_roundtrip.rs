//! Shard format: exact round trip, manifest, random access, resume, and the errors for
//! truncated / modified / incomplete shards and unusable output folders.

use padt_data::manifest::{ImageMode, Manifest, SourceInfo, MANIFEST_FILE};
use padt_data::record::{DropCounts, ImageData, Record, RecordObject, RleJson, SourceItem, Task};
use padt_data::shard::{
    read_shard_file, write_dataset, ShardDataset, ShardError, StoredImage, WriteOptions,
    WriteProgress,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

fn fixtures() -> PathBuf {
    std::env::var_os("PADT_DATA_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data"))
}

fn options(mode: ImageMode, shard_size: usize) -> WriteOptions {
    WriteOptions {
        shard_size,
        image_mode: mode,
        source: SourceInfo {
            kind: "test".into(),
            options: Default::default(),
        },
        split: "val".into(),
        tool: "shard_roundtrip".into(),
        tool_version: "0".into(),
        check_image_headers: false,
    }
}

/// Records with awkward values: floats whose last bits matter, -0.0, huge and tiny numbers,
/// empty object lists, objects without RLE, non-ASCII and quote characters.
fn items(image: impl Fn(usize) -> ImageData) -> Vec<SourceItem> {
    let tricky = [
        0.1 + 0.2,
        -0.0,
        f64::MIN_POSITIVE / 3.0,
        1.0 - f64::EPSILON,
        0.7799999999999999,
        1e300,
    ];
    (0..7)
        .map(|i| {
            let objects = (0..i % 3)
                .map(|k| RecordObject {
                    patches: (0..(i * 7 + k) as u32).map(|p| p * 3 + 1).collect(),
                    bbox: [tricky[i % 6], tricky[(i + 1) % 6], tricky[(i + 2) % 6], 0.5],
                    iscrowd: (k % 2) as i64,
                    area: 105850.60639999999 + i as f64,
                    area_is_int: k == 1,
                    rle: (k != 1).then(|| RleJson {
                        size: [462, 434 + i as u32],
                        counts: format!("Xk0`0ON0O1{i}\\\"é"),
                    }),
                    label: format!("label \"{i}\" é ✓ {k}"),
                })
                .collect();
            SourceItem {
                record: Record {
                    id: 581859 + i as i64,
                    image: format!("COCO_train2014_{:012}.jpg", i),
                    prompt: format!("Please ... \"thé {i}\"."),
                    answer_template: if i % 3 == 0 {
                        "No objects from the list are present in the image.".into()
                    } else {
                        "The \"x\" refers to <|Obj_0|> in this image.".into()
                    },
                    objects,
                    task: [Task::Ovd, Task::Refering, Task::Ric][i % 3],
                },
                image: image(i),
                width: 434 + i as u32,
                height: 462,
            }
        })
        .collect()
}

fn bytes_items() -> Vec<SourceItem> {
    items(|i| ImageData::Bytes(vec![i as u8; 10 + i]))
}

fn no_progress(_: WriteProgress) {}

fn assert_bits_equal(a: &Record, b: &Record) {
    assert_eq!(a, b);
    for (oa, ob) in a.objects.iter().zip(&b.objects) {
        for (x, y) in oa.bbox.iter().zip(&ob.bbox) {
            assert_eq!(x.to_bits(), y.to_bits());
        }
        assert_eq!(oa.area.to_bits(), ob.area.to_bits());
    }
}

#[test]
fn embedded_round_trip_is_exact_and_random_access_works() {
    let dir = tempfile::tempdir().unwrap();
    let items = bytes_items();
    let mut counts = DropCounts::new();
    counts.insert("objects_dropped_no_patch".into(), 3);
    let m = write_dataset(
        dir.path(),
        &items,
        &counts,
        &options(ImageMode::Embedded, 3),
        &no_progress,
    )
    .unwrap();
    assert_eq!(m.shards.len(), 3);
    assert_eq!(m.total_records, 7);
    assert_eq!(m.source_records, 7);
    assert_eq!(m.task, "mixed");
    assert_eq!(m.drop_counts["objects_dropped_no_patch"], 3);
    assert_eq!(
        m.shards.iter().map(|s| s.records).collect::<Vec<_>>(),
        vec![3, 3, 1]
    );
    assert!(!dir.path().join("manifest.partial.json").exists());
    assert_eq!(Manifest::read(dir.path()).unwrap(), m);

    let ds = ShardDataset::open(dir.path()).unwrap();
    assert_eq!(ds.len(), 7);
    let all: Vec<_> = ds.iter().collect::<Result<_, _>>().unwrap();
    for (i, (stored, item)) in all.iter().zip(&items).enumerate() {
        assert_bits_equal(&stored.record, &item.record);
        assert_eq!((stored.width, stored.height), (item.width, item.height));
        assert_eq!(stored.image, StoredImage::Bytes(vec![i as u8; 10 + i]));
        let got = ds.get(i as u64).unwrap();
        assert_eq!(&got, stored);
    }
    assert!(matches!(
        ds.get(7),
        Err(ShardError::OutOfRange { index: 7, len: 7 })
    ));
    assert_eq!(ds.locate(4).unwrap(), (1, 1));
}

#[test]
fn reference_mode_stores_paths() {
    let dir = tempfile::tempdir().unwrap();
    let items = items(|i| ImageData::File(PathBuf::from(format!("/data/coco/img{i}.jpg"))));
    write_dataset(
        dir.path(),
        &items,
        &DropCounts::new(),
        &options(ImageMode::Reference, 4),
        &no_progress,
    )
    .unwrap();
    let ds = ShardDataset::open(dir.path()).unwrap();
    assert_eq!(ds.manifest().image_mode, ImageMode::Reference);
    for (i, stored) in ds.iter().enumerate() {
        let stored = stored.unwrap();
        assert_eq!(
            stored.image,
            StoredImage::Path(format!("/data/coco/img{i}.jpg").into())
        );
        assert_bits_equal(&stored.record, &items[i].record);
    }
}

#[test]
fn embedded_mode_reads_files_and_counts_missing_images() {
    let fx = fixtures().join("raw/coco/images/train2017");
    let files = ["000000037777.jpg", "does_not_exist.jpg", "000000391895.jpg"];
    let mut items = items(|i| ImageData::File(fx.join(files[i % 3])));
    // Real sizes, so that the header check passes for the existing files.
    for (i, it) in items.iter_mut().enumerate() {
        let (w, h) = if i % 3 == 0 { (200, 200) } else { (640, 480) };
        it.width = w;
        it.height = h;
    }
    let real = image::image_dimensions(fx.join(files[2])).unwrap();
    for it in items.iter_mut().skip(2).step_by(3) {
        (it.width, it.height) = real;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(ImageMode::Embedded, 2);
    opts.check_image_headers = true;
    let m = write_dataset(dir.path(), &items, &DropCounts::new(), &opts, &no_progress).unwrap();
    // Records 1 and 4 point at the missing file.
    assert_eq!(m.drop_counts["missing_image"], 2);
    assert_eq!(m.total_records, 5);
    assert_eq!(m.source_records, 7);
    let skipped: Vec<u64> = m.skipped.iter().map(|s| s.source_index).collect();
    assert_eq!(skipped, vec![1, 4]);
    assert!(m.skipped[0].detail.contains("does_not_exist.jpg"));
    let ds = ShardDataset::open(dir.path()).unwrap();
    let stored: Vec<_> = ds.iter().collect::<Result<_, _>>().unwrap();
    let want = std::fs::read(fx.join(files[0])).unwrap();
    assert_eq!(stored[0].image, StoredImage::Bytes(want));
    assert_eq!(stored[1].record, items[2].record);
}

#[test]
fn header_check_skips_corrupt_and_mismatched_images() {
    let dir = tempfile::tempdir().unwrap();
    let jpeg =
        std::fs::read(fixtures().join("raw/coco/images/train2017/000000037777.jpg")).unwrap();
    let mut items = bytes_items();
    items.truncate(3);
    items[0].image = ImageData::Bytes(jpeg.clone());
    (items[0].width, items[0].height) = (200, 200);
    items[1].image = ImageData::Bytes(b"not an image".to_vec());
    items[2].image = ImageData::Bytes(jpeg);
    (items[2].width, items[2].height) = (201, 200);
    let mut opts = options(ImageMode::Embedded, 8);
    opts.check_image_headers = true;
    let m = write_dataset(dir.path(), &items, &DropCounts::new(), &opts, &no_progress).unwrap();
    assert_eq!(m.total_records, 1);
    assert_eq!(m.drop_counts["corrupt_image"], 1);
    assert_eq!(m.drop_counts["image_size_mismatch"], 1);
}

#[test]
fn rerun_keeps_finished_shards_and_rewrites_changed_or_damaged_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut items = bytes_items();
    let opts = options(ImageMode::Embedded, 2);
    let resumed = AtomicUsize::new(usize::MAX);
    let progress = |p: WriteProgress| {
        if let WriteProgress::Start { resumed: r, .. } = p {
            resumed.store(r, Ordering::SeqCst);
        }
    };
    let first = write_dataset(dir.path(), &items, &DropCounts::new(), &opts, &progress).unwrap();
    assert_eq!(resumed.load(Ordering::SeqCst), 0);

    // Same inputs: every shard is kept, the manifest is identical.
    let again = write_dataset(dir.path(), &items, &DropCounts::new(), &opts, &progress).unwrap();
    assert_eq!(resumed.load(Ordering::SeqCst), 4);
    assert_eq!(again, first);

    // An interrupted run: no final manifest, one shard missing, one truncated.
    std::fs::remove_file(dir.path().join(MANIFEST_FILE)).unwrap();
    std::fs::remove_file(dir.path().join("shard-00001.parquet")).unwrap();
    let p2 = dir.path().join("shard-00002.parquet");
    let len = std::fs::metadata(&p2).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p2)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let partial = serde_json::json!({
        "finished": first.shards.iter().enumerate().map(|(k, s)| (k.to_string(), serde_json::to_value(s).unwrap())).collect::<serde_json::Map<_, _>>()
    });
    std::fs::write(
        dir.path().join("manifest.partial.json"),
        partial.to_string(),
    )
    .unwrap();
    let resumed_run =
        write_dataset(dir.path(), &items, &DropCounts::new(), &opts, &progress).unwrap();
    assert_eq!(resumed.load(Ordering::SeqCst), 2);
    assert_eq!(resumed_run, first);

    // A changed record only rewrites its shard.
    items[5].record.prompt.push('!');
    let changed = write_dataset(dir.path(), &items, &DropCounts::new(), &opts, &progress).unwrap();
    assert_eq!(resumed.load(Ordering::SeqCst), 3);
    assert_ne!(changed.shards[2].sha256, first.shards[2].sha256);
    assert_eq!(changed.shards[1], first.shards[1]);

    // Fewer records: stale shard files of the larger run are removed.
    items.truncate(3);
    write_dataset(dir.path(), &items, &DropCounts::new(), &opts, &progress).unwrap();
    assert!(!dir.path().join("shard-00002.parquet").exists());
    assert_eq!(ShardDataset::open(dir.path()).unwrap().len(), 3);
}

#[test]
fn damaged_shards_give_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(
        dir.path(),
        &bytes_items(),
        &DropCounts::new(),
        &options(ImageMode::Embedded, 4),
        &no_progress,
    )
    .unwrap();
    let p0 = dir.path().join("shard-00000.parquet");
    let original = std::fs::read(&p0).unwrap();

    // Truncated: caught when opening (size) and when parsing without a manifest.
    std::fs::write(&p0, &original[..original.len() / 2]).unwrap();
    let err = ShardDataset::open(dir.path()).unwrap_err();
    assert!(matches!(err, ShardError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("shard-00000.parquet"), "{err}");
    let err = read_shard_file(&p0).unwrap_err();
    assert!(matches!(err, ShardError::Parquet { .. }), "{err}");
    assert!(err.to_string().contains("shard-00000.parquet"), "{err}");

    // Same size, one byte changed: the sha256 check on read.
    let mut modified = original.clone();
    modified[original.len() / 2] ^= 0xff;
    std::fs::write(&p0, &modified).unwrap();
    let ds = ShardDataset::open(dir.path()).unwrap();
    let err = ds.read_shard(0).unwrap_err();
    assert!(matches!(err, ShardError::Checksum { .. }), "{err}");
    assert!(ds.iter().next().unwrap().is_err());
    assert!(ds.verify_shard(0).is_err());
    assert!(ds.verify_shard(1).is_ok());

    // Missing manifest.
    std::fs::remove_file(dir.path().join(MANIFEST_FILE)).unwrap();
    let err = ShardDataset::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("manifest.json"), "{err}");
}

#[test]
fn missing_column_is_named() {
    use polars::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let items = bytes_items();
    let stored: Vec<_> = items
        .iter()
        .map(|it| padt_data::shard::StoredRecord {
            record: it.record.clone(),
            width: it.width,
            height: it.height,
            image: StoredImage::Bytes(vec![1]),
        })
        .collect();
    let refs: Vec<_> = stored.iter().collect();
    let mut df = padt_data::shard::records_to_dataframe(&refs);
    let _ = df.drop_in_place("prompt").unwrap();
    let path = dir.path().join("bad.parquet");
    ParquetWriter::new(std::fs::File::create(&path).unwrap())
        .finish(&mut df)
        .unwrap();
    let err = read_shard_file(&path).unwrap_err();
    assert!(
        matches!(&err, ShardError::Column { column, .. } if column == "prompt"),
        "{err}"
    );
    assert!(err.to_string().contains("bad.parquet"), "{err}");
}

#[test]
fn unwritable_output_folder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a_file");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("out");
    let err = write_dataset(
        &out,
        &bytes_items(),
        &DropCounts::new(),
        &options(ImageMode::Embedded, 4),
        &no_progress,
    )
    .unwrap_err();
    assert!(matches!(err, ShardError::Unwritable { .. }), "{err}");
    assert!(err.to_string().contains("a_file/out"), "{err}");
}

#[test]
fn foreign_manifest_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(MANIFEST_FILE),
        b"{\"name\": \"my project\"}",
    )
    .unwrap();
    let err = write_dataset(
        dir.path(),
        &bytes_items(),
        &DropCounts::new(),
        &options(ImageMode::Embedded, 4),
        &no_progress,
    )
    .unwrap_err();
    assert!(matches!(err, ShardError::Unwritable { .. }), "{err}");
    assert!(
        err.to_string().contains("not a readable shard manifest"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.path().join(MANIFEST_FILE)).unwrap(),
        b"{\"name\": \"my project\"}"
    );
}

#[test]
fn empty_source_gives_an_empty_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_dataset(
        dir.path(),
        &[],
        &DropCounts::new(),
        &options(ImageMode::Embedded, 4),
        &no_progress,
    )
    .unwrap();
    assert_eq!(m.total_records, 0);
    assert!(m.shards.is_empty());
    let ds = ShardDataset::open(dir.path()).unwrap();
    assert!(ds.is_empty());
    assert_eq!(ds.iter().count(), 0);
}

#[test]
fn random_access_is_the_same_with_any_block_cache() {
    let dir = tempfile::tempdir().unwrap();
    // 100 records over shards of 70 and 30: blocks of 32 rows end inside shards, and the
    // last block of each shard is partial.
    let template = bytes_items();
    let items: Vec<SourceItem> = (0..100)
        .map(|i| {
            let mut item = template[i % template.len()].clone();
            item.record.id = i as i64;
            item.image = ImageData::Bytes(vec![(i * 7) as u8; 100 + i]);
            item
        })
        .collect();
    write_dataset(
        dir.path(),
        &items,
        &DropCounts::new(),
        &options(ImageMode::Embedded, 70),
        &no_progress,
    )
    .unwrap();
    let open = || ShardDataset::open(dir.path()).unwrap();
    let all: Vec<_> = open().iter().collect::<Result<_, _>>().unwrap();
    // A permutation that jumps between shards and blocks, visited twice (second pass: hits).
    let order: Vec<u64> = (0..200u64).map(|i| (i * 37) % 100).collect();
    // Default cache (everything fits), a budget of about one block (evictions on every
    // miss), and no cache.
    for ds in [
        open(),
        open().with_cache_bytes(40 * 1024),
        open().with_cache_bytes(0),
    ] {
        let shared = ds.clone();
        for &i in &order {
            assert_eq!(shared.get(i).unwrap(), all[i as usize], "record {i}");
            assert_eq!(ds.get(i).unwrap().record.id, i as i64);
        }
    }
}
