//! `padt-export` end to end: a padt-tiny run trained 2 steps by `padt-train` (CPU, the demo
//! shards) is exported; the export must load with the HF loader path (`PadtModel::from_pretrained`,
//! as padt-infer does) into exactly the trained parameters (f32: bit-exact; bf16: the trained
//! values rounded to nearest-even bf16), carry exactly the key set of the padt-tiny HF checkpoint
//! (written by PaDT's `save_pretrained`), a correct shard index, PaDT's `config.json` and the
//! processor files. Bad invocations give errors naming the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::backend::Flex;
use padt_model::padt::PadtModel;
use padt_model::weights::{Checkpoint, LoadOptions};
use padt_train::checkpoint::save_model_params;
use padt_train::export::{hf_key, PROCESSOR_FILES};
use safetensors::tensor::Dtype;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden_dir() -> PathBuf {
    std::env::var_os("PADT_TINY_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tests/fixtures/padt-tiny"))
}

fn run(bin: &str, args: &[String], cwd: &Path) -> Output {
    Command::new(bin)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("the binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn export(args: &[&str], cwd: &Path) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    run(env!("CARGO_BIN_EXE_padt-export"), &args, cwd)
}

/// Trains padt-tiny for 2 steps (checkpoint every 2 steps) into `<dir>/run`.
fn train_tiny(dir: &Path) -> PathBuf {
    let out = dir.join("run");
    let args: Vec<String> = [
        "--config".to_string(),
        repo().join("configs/tiny_test.yaml").display().to_string(),
        "--set".into(),
        format!("model.path={}", golden_dir().join("checkpoint").display()),
        "--set".into(),
        format!(
            "data.datasets.0.shards={}",
            repo().join("data/demo/shards/train").display()
        ),
        "--set".into(),
        "training.max_steps=2".into(),
        "--output-dir".into(),
        out.display().to_string(),
    ]
    .into();
    let o = run(env!("CARGO_BIN_EXE_padt-train"), &args, dir);
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("checkpoint-2/model.safetensors").is_file());
    out
}

/// Every tensor of a safetensors file (or checkpoint directory) as f32, by key.
fn tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let ckpt = Checkpoint::open(path).unwrap();
    ckpt.keys()
        .map(|k| {
            (
                k.to_string(),
                (ckpt.shape(k).unwrap().to_vec(), ckpt.read_f32(k).unwrap()),
            )
        })
        .collect()
}

/// The parameters `PadtModel::from_pretrained` loads from `export`, keyed by module path.
fn reload(export: &Path, scratch: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let (model, report) =
        PadtModel::<Flex>::from_pretrained(export, &LoadOptions::default(), &Default::default())
            .unwrap();
    assert!(report.missing.is_empty() && report.unused.is_empty());
    let file = scratch.join("reloaded.safetensors");
    save_model_params::<Flex, _>(&model, &file).unwrap();
    tensors(&file)
}

/// Round-to-nearest-even f32 → bf16 → f32 (parameters are finite).
fn bf16_round(x: f32) -> f32 {
    let bits = x.to_bits();
    let rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF_0000;
    f32::from_bits(rounded)
}

fn fixture_keys() -> BTreeSet<String> {
    Checkpoint::open(golden_dir().join("checkpoint"))
        .unwrap()
        .keys()
        .map(str::to_string)
        .collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn export_round_trips_f32_bf16_and_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = train_tiny(tmp.path());
    let trained = tensors(&run_dir.join("checkpoint-2/model.safetensors"));
    let fixture = fixture_keys();
    let trained_hf: BTreeSet<String> = trained.keys().map(|k| hf_key(k)).collect();
    assert_eq!(trained_hf, fixture, "HF keys of the trained parameters");
    // The fixture's own values differ from the trained ones (the run really trained).
    let fixture_values = tensors(&golden_dir().join("checkpoint"));
    let changed = trained
        .iter()
        .filter(|(k, (_, v))| fixture_values[&hf_key(k)].1 != *v)
        .count();
    assert!(changed > 100, "only {changed} tensors changed in training");

    // f32, sharded: bit-exact round trip, index consistent with the shards.
    let f32_dir = tmp.path().join("hf_f32");
    let o = export(
        &[
            "--checkpoint",
            run_dir.to_str().unwrap(),
            "--out",
            f32_dir.to_str().unwrap(),
            "--dtype",
            "f32",
            "--max-shard-size",
            "500KB",
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("(step 2)"), "{}", text(&o));
    let index = read_json(&f32_dir.join("model.safetensors.index.json"));
    let weight_map = index["weight_map"].as_object().unwrap();
    let files: BTreeSet<&str> = weight_map.values().map(|v| v.as_str().unwrap()).collect();
    let n = files.len();
    assert!(n > 2, "500KB shards of a 3.4 MB model: {n} files");
    let expected_files: BTreeSet<String> = (1..=n)
        .map(|i| format!("model-{i:05}-of-{n:05}.safetensors"))
        .collect();
    assert_eq!(
        files.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
        expected_files
    );
    let mut total = 0usize;
    for file in &files {
        let shard = Checkpoint::open(f32_dir.join(file)).unwrap();
        let keys: BTreeSet<&str> = shard.keys().collect();
        let indexed: BTreeSet<&str> = weight_map
            .iter()
            .filter(|(_, f)| f.as_str() == Some(file))
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, indexed, "{file}");
        for key in keys {
            let (dtype, _, bytes) = shard.raw(key).unwrap();
            assert_eq!(dtype, Dtype::F32, "{key}");
            total += bytes.len();
        }
    }
    assert_eq!(
        index["metadata"]["total_size"].as_u64().unwrap() as usize,
        total
    );
    assert_eq!(
        weight_map.keys().cloned().collect::<BTreeSet<_>>(),
        fixture,
        "exported key set = padt-tiny (PaDT save_pretrained) key set"
    );
    let reloaded = reload(&f32_dir, tmp.path());
    assert_eq!(reloaded.len(), trained.len());
    for (key, (shape, values)) in &trained {
        let (rshape, rvalues) = &reloaded[key];
        assert_eq!(rshape, shape, "{key}");
        let same = values
            .iter()
            .zip(rvalues)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{key} differs after the f32 round trip");
    }

    // bf16 (the default), one file: the trained values rounded to nearest-even bf16.
    let bf16_dir = tmp.path().join("hf_bf16");
    let o = export(
        &[
            "--checkpoint",
            run_dir.join("checkpoint-2").to_str().unwrap(),
            "--out",
            bf16_dir.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(!bf16_dir.join("model.safetensors.index.json").exists());
    let single = Checkpoint::open(bf16_dir.join("model.safetensors")).unwrap();
    assert_eq!(
        single.keys().map(str::to_string).collect::<BTreeSet<_>>(),
        fixture
    );
    assert!(single
        .keys()
        .all(|k| single.raw(k).unwrap().0 == Dtype::BF16));
    let reloaded = reload(&bf16_dir, tmp.path());
    for (key, (_, values)) in &trained {
        let rvalues = &reloaded[key].1;
        let same = values
            .iter()
            .zip(rvalues)
            .all(|(a, b)| bf16_round(*a).to_bits() == b.to_bits());
        assert!(same, "{key} is not the bf16 rounding of the trained values");
    }

    // config.json: the model's config with PaDT's vl_decoder; the processor files copied.
    let source = read_json(&golden_dir().join("checkpoint/config.json"));
    for (dir, dtype) in [(&f32_dir, "float32"), (&bf16_dir, "bfloat16")] {
        let config = read_json(&dir.join("config.json"));
        assert_eq!(config["torch_dtype"], dtype);
        let mut a = config.as_object().unwrap().clone();
        let mut b = source.as_object().unwrap().clone();
        a.remove("torch_dtype");
        b.remove("torch_dtype");
        assert_eq!(
            a, b,
            "config.json differs from the model's beyond torch_dtype"
        );
        for name in PROCESSOR_FILES {
            let want = std::fs::read(golden_dir().join("checkpoint").join(name)).unwrap();
            assert_eq!(std::fs::read(dir.join(name)).unwrap(), want, "{name}");
        }
    }
    // Nothing left beside the outputs but what the test wrote.
    let mut names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["hf_bf16", "hf_f32", "reloaded.safetensors", "run"],
        "temporary export directories left behind"
    );
}

#[test]
fn export_refuses_overwrite_and_names_bad_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = train_tiny(tmp.path());
    let run_s = run_dir.to_str().unwrap().to_string();

    // A non-empty output is refused, replaced with --force.
    let out = tmp.path().join("hf");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("stale.txt"), "old").unwrap();
    let o = export(
        &["--checkpoint", &run_s, "--out", out.to_str().unwrap()],
        tmp.path(),
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("--force"), "{}", text(&o));
    assert!(out.join("stale.txt").is_file(), "refused output untouched");
    let o = export(
        &[
            "--checkpoint",
            &run_s,
            "--out",
            out.to_str().unwrap(),
            "--force",
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(!out.join("stale.txt").exists());
    assert!(out.join("model.safetensors").is_file());
    // --force never deletes an input: the run directory as output is refused.
    let o = export(
        &["--checkpoint", &run_s, "--out", &run_s, "--force"],
        tmp.path(),
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("is or contains the input"),
        "{}",
        text(&o)
    );
    assert!(run_dir.join("checkpoint-2/model.safetensors").is_file());
    // An existing empty directory is fine without --force.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = export(
        &["--checkpoint", &run_s, "--out", empty.to_str().unwrap()],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", text(&o));

    let fail = |args: &[&str], needle: &str| {
        let o = export(args, tmp.path());
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(
            text(&o).contains(needle),
            "{args:?}: expected {needle:?} in: {}",
            text(&o)
        );
    };
    let new_out = tmp.path().join("never");
    let new_out_s = new_out.to_str().unwrap();

    // No checkpoint at all.
    let nothing = tmp.path().join("nothing");
    std::fs::create_dir(&nothing).unwrap();
    fail(
        &[
            "--checkpoint",
            nothing.to_str().unwrap(),
            "--out",
            new_out_s,
        ],
        "no complete checkpoint",
    );
    // An incomplete checkpoint: no model.safetensors.
    let ckpt = run_dir.join("checkpoint-2");
    let broken = run_dir.join("checkpoint-3");
    std::fs::create_dir(&broken).unwrap();
    std::fs::copy(
        ckpt.join("trainer_state.json"),
        broken.join("trainer_state.json"),
    )
    .unwrap();
    fail(
        &["--checkpoint", broken.to_str().unwrap(), "--out", new_out_s],
        "is incomplete: no model.safetensors",
    );
    // ... which a run directory skips (its newest complete checkpoint is step 2).
    let o = export(&["--checkpoint", &run_s, "--out", new_out_s], tmp.path());
    assert!(
        o.status.success() && text(&o).contains("(step 2)"),
        "{}",
        text(&o)
    );
    std::fs::remove_dir_all(&new_out).unwrap();
    // A run without config.yaml.
    let lonely = tmp.path().join("lonely");
    std::fs::create_dir(&lonely).unwrap();
    let copy = lonely.join("checkpoint-2");
    std::fs::create_dir(&copy).unwrap();
    for f in [
        "model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
    ] {
        std::fs::copy(ckpt.join(f), copy.join(f)).unwrap();
    }
    fail(
        &["--checkpoint", lonely.to_str().unwrap(), "--out", new_out_s],
        &format!("{} not found", lonely.join("config.yaml").display()),
    );
    // ... unless --config names the recipe.
    let o = export(
        &[
            "--checkpoint",
            lonely.to_str().unwrap(),
            "--config",
            run_dir.join("config.yaml").to_str().unwrap(),
            "--out",
            new_out_s,
        ],
        tmp.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    std::fs::remove_dir_all(&new_out).unwrap();
    // A model directory whose config does not fit the checkpoint.
    let wider = tmp.path().join("wider");
    std::fs::create_dir(&wider).unwrap();
    let mut config = read_json(&golden_dir().join("checkpoint/config.json"));
    config["intermediate_size"] = 200.into();
    std::fs::write(wider.join("config.json"), config.to_string()).unwrap();
    fail(
        &[
            "--checkpoint",
            &run_s,
            "--model-dir",
            wider.to_str().unwrap(),
            "--out",
            new_out_s,
        ],
        "mlp.down_proj.weight` has shape [96, 192], but the model of",
    );
    // No config.json in the model directory.
    fail(
        &[
            "--checkpoint",
            &run_s,
            "--model-dir",
            nothing.to_str().unwrap(),
            "--out",
            new_out_s,
        ],
        &format!("{} not found", nothing.join("config.json").display()),
    );
    fail(
        &[
            "--checkpoint",
            &run_s,
            "--out",
            new_out_s,
            "--max-shard-size",
            "5XB",
        ],
        "bad shard size",
    );
    fail(
        &[
            "--checkpoint",
            &run_s,
            "--out",
            new_out_s,
            "--dtype",
            "int8",
        ],
        "bad dtype",
    );
    assert!(!new_out.exists(), "failed exports write nothing");
    let leftovers: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary directories left: {leftovers:?}"
    );
}
