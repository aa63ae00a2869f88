//! Checkpoint loading and export: round trips (sharded, f32 and bf16) and bad inputs, each
//! failing with an error that names the offending key or file.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use padt_model::weights::{
    export_module, Checkpoint, ExportDtype, ExportOptions, LoadOptions, INDEX_FILE,
};
use padt_model::{ModelError, Qwen2_5Vl, Qwen2_5VlConfig};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// Copies the tiny checkpoint's tensors into `dir` after `edit` (which may drop or replace
/// entries), together with config.json.
fn write_variant(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) {
    let src = golden_dir().join("checkpoint");
    let ckpt = Checkpoint::open(&src).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = ckpt
        .keys()
        .map(|k| {
            let (dtype, shape, bytes) = ckpt.raw(k).unwrap();
            (k.to_string(), dtype, shape.to_vec(), bytes.to_vec())
        })
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(k, d, s, b)| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
}

fn load(dir: &Path) -> Result<Qwen2_5Vl<B>, ModelError> {
    Qwen2_5Vl::<B>::from_pretrained(dir, &padt_options(), &Default::default()).map(|(m, _)| m)
}

#[test]
fn sharded_f32_export_round_trips_bit_exactly() {
    let model = load_tiny();
    let tmp = tempfile::tempdir().unwrap();
    let report = export_module(
        &model,
        tmp.path(),
        &ExportOptions {
            max_shard_bytes: 600_000,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        report.files.len() > 2,
        "several shards and an index: {:?}",
        report.files
    );
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join(INDEX_FILE)).unwrap())
            .unwrap();
    assert_eq!(index["metadata"]["total_size"], report.total_size);

    let original = Checkpoint::open(golden_dir().join("checkpoint")).unwrap();
    let exported = Checkpoint::open(tmp.path()).unwrap();
    let qwen_keys: Vec<&str> = original
        .keys()
        .filter(|k| !(k.starts_with("vis_") || k.starts_with("vl_decoder")))
        .collect();
    assert_eq!(exported.keys().collect::<Vec<_>>(), qwen_keys);
    for key in qwen_keys {
        assert_eq!(exported.raw(key), original.raw(key), "{key}");
    }
    // The export loads strictly (no extra prefixes needed) into the same parameters.
    std::fs::copy(
        golden_dir().join("checkpoint/config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let (reloaded, report) =
        Qwen2_5Vl::<B>::from_pretrained(tmp.path(), &LoadOptions::default(), &Default::default())
            .unwrap();
    assert!(report.extra.is_empty() && report.unused.is_empty());
    let (_, a) = to_vec(reloaded.model.layers[1].mlp.down_proj.weight.val());
    let (_, b) = to_vec(model.model.layers[1].mlp.down_proj.weight.val());
    assert_eq!(a, b);
}

#[test]
fn bf16_checkpoint_loads_as_f32_and_exports_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("bf16");
    write_variant(&src, |tensors| {
        for (_, dtype, _, bytes) in tensors.iter_mut() {
            let values: Vec<u8> = bytes
                .chunks_exact(4)
                .flat_map(|c| {
                    half::bf16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes()
                })
                .collect();
            *dtype = Dtype::BF16;
            *bytes = values;
        }
    });
    let model = load(&src).unwrap();
    let out = tmp.path().join("out");
    export_module(
        &model,
        &out,
        &ExportOptions {
            dtype: ExportDtype::BF16,
            ..Default::default()
        },
    )
    .unwrap();
    let a = Checkpoint::open(&src).unwrap();
    let b = Checkpoint::open(&out).unwrap();
    let mut n = 0;
    for key in b.keys() {
        assert_eq!(a.raw(key), b.raw(key), "{key}");
        n += 1;
    }
    assert_eq!(
        n,
        a.keys()
            .filter(|k| k.starts_with("model.") || k.starts_with("visual."))
            .count()
    );
}

fn expect_err(result: Result<Qwen2_5Vl<B>, ModelError>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_variant(tmp.path(), |t| t.retain(|(k, ..)| k != "model.norm.weight"));
    let msg = expect_err(load(tmp.path()));
    assert!(
        msg.contains("lacks 1 tensor") && msg.contains("`model.norm.weight`"),
        "{msg}"
    );
}

#[test]
fn wrong_shape_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_variant(tmp.path(), |t| {
        let e = t
            .iter_mut()
            .find(|(k, ..)| k == "visual.merger.mlp.2.bias")
            .unwrap();
        e.2 = vec![95];
        e.3.truncate(95 * 4);
    });
    let msg = expect_err(load(tmp.path()));
    assert!(
        msg.contains("`visual.merger.mlp.2.bias`") && msg.contains("[95]") && msg.contains("[96]"),
        "{msg}"
    );
}

#[test]
fn unsupported_dtype_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_variant(tmp.path(), |t| {
        let e = t
            .iter_mut()
            .find(|(k, ..)| k == "model.norm.weight")
            .unwrap();
        e.1 = Dtype::I64;
        e.3 = vec![0u8; 96 * 8];
    });
    let msg = expect_err(load(tmp.path()));
    assert!(
        msg.contains("`model.norm.weight`") && msg.contains("I64"),
        "{msg}"
    );
}

#[test]
fn unused_tensors_are_an_error_unless_allowed() {
    let dir = golden_dir().join("checkpoint");
    let err = Qwen2_5Vl::<B>::from_pretrained(&dir, &LoadOptions::default(), &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("does not use") && err.contains("`vis_norm.bias`"),
        "{err}"
    );
}

#[test]
fn unknown_architecture_is_rejected() {
    let text = std::fs::read_to_string(golden_dir().join("checkpoint/config.json")).unwrap();
    let text = text.replace(
        "PaDTForConditionalGeneration",
        "LlavaForConditionalGeneration",
    );
    let err = Qwen2_5VlConfig::from_json_str(&text, "x/config.json").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::UnknownArchitecture { .. }));
    assert!(
        msg.contains("LlavaForConditionalGeneration") && msg.contains("x/config.json"),
        "{msg}"
    );
}

#[test]
fn index_pointing_to_wrong_shard_is_named() {
    let model = load_tiny();
    let tmp = tempfile::tempdir().unwrap();
    export_module(
        &model,
        tmp.path(),
        &ExportOptions {
            max_shard_bytes: 600_000,
            ..Default::default()
        },
    )
    .unwrap();
    let path = tmp.path().join(INDEX_FILE);
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let map = index["weight_map"].as_object_mut().unwrap();
    let files: HashMap<String, String> = map
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let other = files
        .values()
        .find(|f| **f != files["model.norm.weight"])
        .unwrap()
        .clone();
    map.insert("model.norm.weight".into(), other.clone().into());
    std::fs::write(&path, index.to_string()).unwrap();
    let err = Checkpoint::open(tmp.path()).err().unwrap().to_string();
    assert!(
        err.contains("`model.norm.weight`") && err.contains(&other),
        "{err}"
    );
}

/// An untied variant (`tie_word_embeddings: false`, `lm_head.weight` = a scaled copy of the
/// embeddings) loads the separate head and uses it for the logits.
#[test]
fn untied_lm_head_is_loaded_and_used() {
    let tmp = tempfile::tempdir().unwrap();
    write_variant(tmp.path(), |t| {
        let embed = t
            .iter()
            .find(|(k, ..)| k == "model.embed_tokens.weight")
            .unwrap();
        let doubled: Vec<u8> = embed
            .3
            .chunks_exact(4)
            .flat_map(|c| (2.0 * f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
            .collect();
        let entry = (
            "lm_head.weight".to_string(),
            embed.1,
            embed.2.clone(),
            doubled,
        );
        t.push(entry);
    });
    let config = std::fs::read_to_string(tmp.path().join("config.json")).unwrap();
    let config = config.replace(
        "\"tie_word_embeddings\": true",
        "\"tie_word_embeddings\": false",
    );
    std::fs::write(tmp.path().join("config.json"), config).unwrap();
    let untied = load(tmp.path()).unwrap();
    assert!(untied.lm_head.is_some());
    let tied = load_tiny();
    let device = Default::default();
    let hidden = tied
        .embed_text(&[vec![3, 7, 11]], &device)
        .unwrap()
        .reshape([3, 96]);
    let (_, a) = to_vec(untied.logits(hidden.clone()));
    let (_, b) = to_vec(tied.logits(hidden));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(*x, 2.0 * y);
    }
    // Without the head in the checkpoint, the untied model reports it missing.
    let ckpt = tmp.path().join("model.safetensors");
    std::fs::remove_file(&ckpt).unwrap();
    write_variant(tmp.path(), |_| {});
    std::fs::write(
        tmp.path().join("config.json"),
        std::fs::read_to_string(golden_dir().join("checkpoint/config.json"))
            .unwrap()
            .replace(
                "\"tie_word_embeddings\": true",
                "\"tie_word_embeddings\": false",
            ),
    )
    .unwrap();
    let msg = expect_err(load(tmp.path()));
    assert!(msg.contains("`lm_head.weight`"), "{msg}");
}
