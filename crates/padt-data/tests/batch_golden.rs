//! The padt-tiny training batch (`PADT_TINY_GOLDEN_DIR`, default the fixtures copy) rebuilt
//! from `batch.json` (records, recorded picks) and `images/`: every tensor of
//! `batch.safetensors` exact, and the batch-side inputs of the loss in `outputs.safetensors`
//! (targets, VRT positions, robust-CE mask, GT boxes after the bf16 cast, GT masks, mask
//! validity, object → sample) exact.

use padt_data::batch::{collate, encode_sample, write_encoded_sample, Batch, SampleEncoder};
use padt_data::image::{ImageProcessor, ImageProcessorConfig};
use padt_data::record::Record;
use padt_data::targets::{ObjectPick, PatchSelection};
use padt_data::tokenizer::PadtTokenizer;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde_json::Value;
use std::sync::OnceLock;

#[path = "../../../tests/support/golden_batch.rs"]
mod golden_batch;
use golden_batch::{batch_json, golden_dir, golden_record, u32s};

fn records(json: &Value) -> Vec<(Record, Vec<ObjectPick>)> {
    json["samples"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            // Each sample's template names its objects once, in order.
            let picks = s["objects"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(k, o)| ObjectPick {
                    object: k,
                    picks: u32s(&o["picked"]),
                })
                .collect();
            (golden_record(i, s), picks)
        })
        .collect()
}

fn encoder() -> &'static SampleEncoder {
    static ENC: OnceLock<SampleEncoder> = OnceLock::new();
    ENC.get_or_init(|| {
        let json = batch_json();
        let v = json["vocab_size_V"].as_u64().unwrap() as u32;
        let tok = PadtTokenizer::from_dir(&golden_dir().join("checkpoint"), v, 0).unwrap();
        assert_eq!(
            tok.base_len() as u64,
            json["tokenizer_len_before_prepare"].as_u64().unwrap()
        );
        SampleEncoder::new(tok, PatchSelection::default()).unwrap()
    })
}

fn build_batch() -> Batch {
    let json = batch_json();
    let cfg = ImageProcessorConfig::from_json_file(
        &golden_dir().join("checkpoint/preprocessor_config.json"),
    )
    .unwrap();
    let processor = ImageProcessor::new(cfg).unwrap();
    let enc = encoder();
    let samples: Vec<_> = records(&json)
        .into_iter()
        .map(|(record, picks)| {
            let bytes = std::fs::read(golden_dir().join(&record.image)).unwrap();
            let (image, _) = padt_data::batch::process_image(
                &bytes,
                &record.image,
                &processor,
                &Default::default(),
            )
            .unwrap();
            enc.prepare(&record, image, picks).unwrap()
        })
        .collect();
    for (s, want) in samples.iter().zip(json["samples"].as_array().unwrap()) {
        assert_eq!(s.prompt_text, want["prompt_text"].as_str().unwrap());
        assert_eq!(s.completion_text, want["completion_text"].as_str().unwrap());
    }
    collate(&samples, enc.tokenizer(), 2).unwrap()
}

fn load(name: &str) -> Vec<u8> {
    std::fs::read(golden_dir().join(name)).unwrap()
}

fn i64s(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<i64>) {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::I64, "{name}");
    let data = t
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), data)
}

fn f32s(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    let data = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), data)
}

fn u8s(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<u8>) {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::U8, "{name}");
    (t.shape().to_vec(), t.data().to_vec())
}

#[test]
fn padt_tiny_batch_is_reproduced() {
    let batch = build_batch();
    let bytes = load("batch.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let int_tensors = [
        ("attention_mask", &batch.attention_mask),
        ("completion_ids", &batch.completion_ids),
        ("completion_ids_local_vrt", &batch.completion_ids_local_vrt),
        ("completion_mask", &batch.completion_mask),
        ("image_grid_thw", &batch.image_grid_thw),
        ("input_ids", &batch.input_ids),
        ("input_ids_local_vrt", &batch.input_ids_local_vrt),
        ("prompt_ids", &batch.prompt_ids),
        ("prompt_mask", &batch.prompt_mask),
    ];
    for (name, got) in int_tensors {
        let (shape, want) = i64s(&st, name);
        assert_eq!(got.shape, shape, "{name} shape");
        assert_eq!(got.data, want, "{name}");
    }
    let (_, p) = i64s(&st, "prompt_length");
    assert_eq!(batch.prompt_length as i64, p[0]);
    let (shape, want) = f32s(&st, "pixel_values");
    assert_eq!(batch.pixel_values.shape, shape);
    let same_bits = batch
        .pixel_values
        .data
        .iter()
        .zip(&want)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same_bits, "pixel_values differ");
    let json = batch_json();
    assert_eq!(batch.vrt.offsets, u32s(&json["global_vrt_offsets"]));
    assert_eq!(batch.vrt.counts, u32s(&json["merged_tokens_per_image"]));
}

#[test]
fn padt_tiny_loss_inputs_are_reproduced() {
    let batch = build_batch();
    let bytes = load("outputs.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();

    let (_, targets) = i64s(&st, "loss.targets");
    assert_eq!(batch.completion_ids.data, targets);

    let (_, positions) = u8s(&st, "loss.vrt_positions");
    let c = batch.completion_length();
    let mut got_positions = vec![0u8; positions.len()];
    for (b, j) in batch.vrt_target_positions() {
        got_positions[b * c + j] = 1;
    }
    assert_eq!(got_positions, positions);

    let (shape, mask) = u8s(&st, "loss.vrt_loss_mask");
    let got = batch.vrt_loss_mask();
    assert_eq!(got.shape, shape);
    assert_eq!(got.data, mask, "robust-CE mask");

    let (_, sample_idx) = i64s(&st, "off.dec.sample_idx");
    assert_eq!(batch.object_sample.data, sample_idx);

    let (_, boxes) = f32s(&st, "loss.gt_bboxes_bf16");
    let got: Vec<f32> = batch
        .gt_boxes_xyxy
        .data
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect();
    assert_eq!(got, boxes, "GT boxes after the bf16 cast");

    for (name, got) in [
        ("loss.gt_mask", &batch.gt_masks),
        ("loss.mask_valid", &batch.mask_valid),
    ] {
        let (shape, want) = f32s(&st, name);
        assert_eq!(got.shape, shape, "{name} shape");
        let diff = got.data.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{name}: {diff} pixels differ");
    }
}

#[test]
fn encode_sample_matches_the_batch_row_and_writes_safetensors() {
    let json = batch_json();
    let s1 = &json["samples"][1];
    let image = load(s1["image"].as_str().unwrap());
    let enc = encode_sample(
        &golden_dir().join("checkpoint"),
        &image,
        s1["problem"].as_str().unwrap(),
        Some(s1["completion_text"].as_str().unwrap()),
        3136,
        12_845_056,
    )
    .unwrap();
    // Sample 1 has the longest prompt, so its batch row is unpadded on the prompt side;
    // a single image means local = global VRT ids.
    let batch = build_batch();
    let row = batch.input_ids_local_vrt.row(1);
    let n = batch.prompt_length + 26; // sample 1's completion has 26 tokens
    assert_eq!(enc.input_ids.data, row[..n].to_vec());
    assert_eq!(enc.image_grid_thw.data, vec![1, 8, 14]);
    assert_eq!(
        enc.rendered_text,
        format!(
            "{}{}",
            s1["prompt_text"].as_str().unwrap(),
            s1["completion_text"].as_str().unwrap()
        )
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sample.safetensors");
    write_encoded_sample(&enc, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(i64s(&st, "input_ids").1, enc.input_ids.data);
    assert_eq!(i64s(&st, "image_grid_thw").0, vec![1, 3]);
    assert_eq!(f32s(&st, "pixel_values").0, vec![112, 1176]);
}

#[test]
fn bad_samples_are_named_errors() {
    let json = batch_json();
    let enc = encoder();
    let cfg = ImageProcessorConfig::default();
    let processor = ImageProcessor::new(cfg).unwrap();
    let (mut record, _) = records(&json).remove(0);
    let bytes = load(&record.image);
    let (image, _) =
        padt_data::batch::process_image(&bytes, "s0", &processor, &Default::default()).unwrap();
    // A patch outside the 3x5 merged grid.
    record.id = 77;
    record.objects[1].patches.push(15);
    let picks = vec![
        ObjectPick {
            object: 0,
            picks: vec![0; 5],
        },
        ObjectPick {
            object: 1,
            picks: vec![1; 5],
        },
    ];
    let err = enc
        .prepare(&record, image.clone(), picks)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("record 77") && err.contains("patch 15"),
        "{err}"
    );
    // A broken RLE.
    let (mut record, picks) = records(&json).remove(0);
    record.id = 78;
    record.objects[0].rle.as_mut().unwrap().counts = "@@@".into();
    let err = enc
        .prepare(&record, image.clone(), picks)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("record 78") && err.contains("object 0"),
        "{err}"
    );
    // A stray VRT in the prompt of a training record.
    let (mut record, picks) = records(&json).remove(0);
    record.id = 79;
    record.prompt.push_str(" <|VRT_9999|>");
    let err = enc
        .prepare(&record, image.clone(), picks)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("record 79") && err.contains("<|VRT_9999|>"),
        "{err}"
    );
    // A literal image placeholder in the prompt would add a second image slot.
    let (mut record, picks) = records(&json).remove(0);
    record.id = 80;
    record.prompt.push_str("<|image_pad|>");
    let err = enc
        .prepare(&record, image.clone(), picks)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("record 80") && err.contains("image_pad"),
        "{err}"
    );
    // A corrupt image names the record.
    let (record, _) = records(&json).remove(0);
    let err = enc
        .prepare_from_bytes(
            &record,
            b"not an image",
            &processor,
            &Default::default(),
            1,
            0,
            0,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("record 0"), "{err}");
    // An empty batch.
    assert!(collate(&[], enc.tokenizer(), 2).is_err());
}

#[test]
fn drawn_picks_are_reproducible_per_sample() {
    let json = batch_json();
    let enc = encoder();
    let processor = ImageProcessor::new(ImageProcessorConfig::default()).unwrap();
    let (record, _) = records(&json).remove(0);
    let bytes = load(&record.image);
    let draw = |epoch, index| {
        enc.prepare_from_bytes(
            &record,
            &bytes,
            &processor,
            &Default::default(),
            42,
            epoch,
            index,
        )
        .unwrap()
    };
    let a = draw(0, 3);
    assert_eq!(a, draw(0, 3));
    let picks: Vec<_> = a.objects.iter().map(|o| o.picks.clone()).collect();
    // "cat" has 9 patches: 5 distinct picks; "eye" has 3: 5 picks with repeats.
    let mut cat = picks[0].clone();
    cat.sort();
    cat.dedup();
    assert_eq!(cat.len(), 5);
    assert_eq!(picks[1].len(), 5);
    assert!(picks[1].iter().all(|p| [1, 6, 7].contains(p)));
    let other: Vec<_> = (0..8).map(|e| draw(e, 3).completion_ids).collect();
    assert!(
        other.iter().any(|ids| *ids != a.completion_ids),
        "epochs must vary the picks"
    );
}

#[test]
fn encoder_and_batches_can_cross_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SampleEncoder>();
    assert_send_sync::<Batch>();
    assert_send_sync::<padt_data::batch::PreparedSample>();
}
