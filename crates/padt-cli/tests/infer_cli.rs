//! `padt-infer` end to end on the padt-tiny checkpoint: the inference golden (README §D) from the
//! image file and the REC query (prompt template, tokenizer, image processor, generation,
//! parsing, decoding, JSON and PNG output), and the clear errors on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn golden_dir() -> PathBuf {
    std::env::var_os("PADT_TINY_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/padt-tiny")
        })
}

fn infer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_padt-infer"))
        .args(args)
        .output()
        .expect("padt-infer runs")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A copy of the padt-tiny checkpoint with `edit` applied to its config.json.
fn checkpoint_with(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let src = golden_dir().join("checkpoint");
    let dst = dir.join("checkpoint");
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dst.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dst.join("config.json"), config.to_string()).unwrap();
    dst
}

#[test]
fn rec_query_reproduces_the_inference_golden() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden_dir().join("infer/infer.json")).unwrap(),
    )
    .unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let model = golden_dir().join("checkpoint");
    let image = golden_dir().join("infer/image.png");
    let output = infer(&[
        "--model",
        path(&model),
        "--image",
        path(&image),
        "--task",
        "rec",
        "--prompt",
        "the cat",
        "--max-new-tokens",
        "12",
        "--out",
        path(out_dir.path()),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(golden["completion"].as_str().unwrap()),
        "{stdout}"
    );
    assert!(stdout.contains("bbox xywh [0, 10, 132, 111]"), "{stdout}");

    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.path().join("result.json")).unwrap())
            .unwrap();
    assert_eq!(result["prompt"], golden["prompt"]);
    assert_eq!(result["prompt_tokens"], golden["prompt_length"]);
    assert_eq!(result["completion"], golden["completion"]);
    assert_eq!(result["generated_ids"], golden["generated_ids_local"]);
    assert_eq!(result["finished"], true);
    assert_eq!(result["warnings"].as_array().unwrap().len(), 0);
    let objects = result["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 1);
    let (got, want) = (&objects[0], &golden["objects"][0]);
    assert_eq!(got["label"], want["label"]);
    assert_eq!(got["vrts"], want["vrts"]);
    let bbox: Vec<f64> = serde_json::from_value(got["bbox"].clone()).unwrap();
    let want_bbox: Vec<f64> = serde_json::from_value(want["box_xywh_pixels"].clone()).unwrap();
    assert_eq!(bbox, want_bbox);
    assert_eq!(got["mask_rle"]["counts"], want["mask_rle"]["counts"]);
    assert_eq!(got["mask_rle"]["size"], want["mask_rle"]["size"]);
    assert_eq!(got["mask_area"], want["mask_area"]);
    let score = got["score"].as_f64().unwrap();
    assert!((score - want["score"].as_f64().unwrap()).abs() < 1e-6);

    // The drawing: a PNG of the original size (IHDR width/height, big-endian).
    let png = std::fs::read(out_dir.path().join("result.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((w, h), (168, 112));
}

#[test]
fn undecodable_image_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"not an image at all").unwrap();
    let model = golden_dir().join("checkpoint");
    let output = infer(&[
        "--model",
        path(&model),
        "--image",
        path(&bad),
        "--prompt",
        "hello",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("broken.png") && stderr.contains("cannot read the image"),
        "{stderr}"
    );
    assert!(!dir.path().join("result.json").exists());
}

#[test]
fn prompt_longer_than_the_context_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = checkpoint_with(dir.path(), |c| c["max_position_embeddings"] = 90.into());
    let image = golden_dir().join("infer/image.png");
    let out = dir.path().join("out");
    let output = infer(&[
        "--model",
        path(&model),
        "--image",
        path(&image),
        "--task",
        "rec",
        "--prompt",
        "the cat",
        "--max-new-tokens",
        "12",
        "--out",
        path(&out),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("79 tokens") && stderr.contains("context of 90"),
        "{stderr}"
    );
    assert!(!out.join("result.json").exists());
}

#[test]
fn checkpoint_of_another_architecture_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = checkpoint_with(dir.path(), |c| {
        c["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
        c["model_type"] = "llama".into();
    });
    let image = golden_dir().join("infer/image.png");
    let output = infer(&[
        "--model",
        path(&model),
        "--image",
        path(&image),
        "--prompt",
        "hello",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("LlamaForCausalLM") && stderr.contains("not a PaDT model"),
        "{stderr}"
    );
}
