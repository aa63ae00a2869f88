//! `padt-preprocess encode-sample` end to end on the padt-tiny checkpoint's tokenizer and a
//! training image (`PADT_TINY_GOLDEN_DIR`, default the fixtures copy): the written ids equal the
//! unpadded prompt row of the golden batch; a missing image is a clear error.

use std::path::PathBuf;
use std::process::Command;

use safetensors::SafeTensors;

fn golden_dir() -> PathBuf {
    std::env::var_os("PADT_TINY_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/padt-tiny")
        })
}

fn i64s(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<i64>) {
    let t = st.tensor(name).unwrap();
    (
        t.shape().to_vec(),
        t.data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
    )
}

#[test]
fn encode_sample_writes_the_prompt_ids_of_the_training_batch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sample.safetensors");
    let batch: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("batch.json")).unwrap())
            .unwrap();
    let sample = &batch["samples"][1];
    let output = Command::new(env!("CARGO_BIN_EXE_padt-preprocess"))
        .arg("encode-sample")
        .arg("--tokenizer")
        .arg(golden_dir().join("checkpoint"))
        .arg("--image")
        .arg(golden_dir().join(sample["image"].as_str().unwrap()))
        .arg("--prompt")
        .arg(sample["problem"].as_str().unwrap())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.starts_with(sample["prompt_text"].as_str().unwrap()),
        "{stdout}"
    );

    let bytes = std::fs::read(&out).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (shape, ids) = i64s(&st, "input_ids");
    let golden = std::fs::read(golden_dir().join("batch.safetensors")).unwrap();
    let golden = SafeTensors::deserialize(&golden).unwrap();
    let (gshape, prompt_ids) = i64s(&golden, "prompt_ids");
    let (_, prompt_mask) = i64s(&golden, "prompt_mask");
    let row: Vec<i64> = (0..gshape[1])
        .filter(|&j| prompt_mask[gshape[1] + j] == 1)
        .map(|j| prompt_ids[gshape[1] + j])
        .collect();
    assert_eq!(shape, vec![row.len()]);
    assert_eq!(ids, row);
    assert_eq!(i64s(&st, "image_grid_thw").1, vec![1, 8, 14]);
    assert_eq!(st.tensor("pixel_values").unwrap().shape(), &[112, 1176]);
}

#[test]
fn a_missing_image_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_padt-preprocess"))
        .args(["encode-sample", "--prompt", "hi", "--out"])
        .arg(dir.path().join("x.safetensors"))
        .arg("--tokenizer")
        .arg(golden_dir().join("checkpoint"))
        .arg("--image")
        .arg(dir.path().join("nope.png"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nope.png"), "{stderr}");
    assert!(!dir.path().join("x.safetensors").exists());
}
