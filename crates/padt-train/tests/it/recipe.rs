use std::path::Path;

use padt_train::recipe::{
    nearest_key, valid_keys, DeviceSpec, Precision, RecipeError, ScheduleKind, TrainConfig, VrtPick,
};

use crate::common::repo_root;

fn config_files() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("configs"))
        .expect("configs/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_config_parses_and_is_consistent() {
    let files = config_files();
    assert!(
        files.len() >= 9,
        "8 reference recipes + tiny_test, got {files:?}"
    );
    for file in files {
        let config = TrainConfig::load(&file, &[]).unwrap_or_else(|e| panic!("{e}"));
        config
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // The resolved config round-trips through YAML unchanged.
        let again = TrainConfig::from_yaml_str(&config.to_yaml(), "round trip", &[]).unwrap();
        assert_eq!(again, config, "{}", file.display());
    }
}

#[test]
fn reference_recipes_have_the_reference_settings() {
    let tasks: [(&str, &[(&str, usize)]); 4] = [
        ("ovd", &[("coco_train", 1)]),
        (
            "rec",
            &[
                ("refcoco_train", 1),
                ("refcoco+_train", 1),
                ("refcocog_train", 1),
            ],
        ),
        ("ric", &[("ric_train", 1)]),
        (
            "pro",
            &[
                ("ric_train", 1),
                ("coco_train", 2),
                ("refcoco_train", 1),
                ("refcoco+_train", 1),
                ("refcocog_train", 1),
            ],
        ),
    ];
    for (task, datasets) in tasks {
        for (size, epochs) in [("3b", 4), ("7b", 6)] {
            let path = repo_root().join(format!("configs/padt_{task}_{size}.yaml"));
            let c = TrainConfig::load(&path, &[]).unwrap();
            let name = path.display().to_string();
            let got: Vec<(&str, usize)> = c
                .data
                .datasets
                .iter()
                .map(|d| (d.name.as_str(), d.repeat))
                .collect();
            assert_eq!(got, datasets, "{name}");
            assert_eq!(c.training.epochs, epochs, "{name}");
            assert_eq!(c.training.per_device_batch_size, 16, "{name}");
            assert_eq!(c.training.gradient_accumulation_steps, 1, "{name}");
            assert_eq!(c.global_batch_size(), 128, "{name}");
            assert_eq!(
                c.training.devices,
                (0..8).map(DeviceSpec::Cuda).collect::<Vec<_>>(),
                "{name}"
            );
            assert_eq!(c.training.precision, Precision::Bf16, "{name}");
            assert_eq!(c.training.max_grad_norm, Some(1.0), "{name}");
            assert!(c.training.gradient_checkpointing, "{name}");
            assert_eq!(c.optimizer.lr, 2e-5, "{name}");
            assert_eq!(c.optimizer.betas, [0.9, 0.999], "{name}");
            assert_eq!(c.optimizer.eps, 1e-8, "{name}");
            assert_eq!(c.optimizer.weight_decay, 0.0, "{name}");
            assert_eq!(c.schedule.kind, ScheduleKind::Linear, "{name}");
            assert_eq!(c.schedule.warmup_steps, 0, "{name}");
            assert_eq!(c.schedule.warmup_ratio, 0.0, "{name}");
            assert_eq!(c.vrt.pick, VrtPick::Random, "{name}");
            assert_eq!(c.vrt.per_object, 5, "{name}");
            assert!(c.decoder_warmup.enabled, "{name}");
            assert_eq!(c.decoder_warmup.steps, 300, "{name}");
            let l = &c.loss;
            assert!(l.use_bbox_loss && l.use_score_loss && l.use_mask_loss && l.use_sft_vp_mask);
            assert!(c.model.use_visual_prototype_projection, "{name}");
            assert!(
                !c.freeze.vision_tower && c.param_groups.is_empty(),
                "{name}"
            );
            assert_eq!(c.seed, 42, "{name}");
            assert_eq!(c.checkpoint.every_steps, 100, "{name}");
            assert_eq!(c.logging.every_steps, 1, "{name}");
            let size_dir = if size == "3b" { "3B" } else { "7B" };
            assert!(
                c.model.path.to_string_lossy().contains(size_dir),
                "{name}: {}",
                c.model.path.display()
            );
            // Every field is written out in the recipe file: parsing it without the serde
            // defaults must give the same config (no setting silently comes from a default).
            let text = std::fs::read_to_string(&path).unwrap();
            for key in valid_keys().iter().filter(|k| !k.contains(".N.")) {
                let leaf = key.rsplit('.').next().unwrap();
                assert!(
                    text.contains(&format!("{leaf}:")),
                    "{name} does not spell out `{key}`"
                );
            }
        }
    }
}

#[test]
fn defaults_are_the_reference_values() {
    let c = TrainConfig::default();
    assert_eq!(c.seed, 42);
    assert_eq!(c.optimizer.lr, 2e-5);
    assert_eq!(c.training.max_grad_norm, Some(1.0));
    assert_eq!(c.vrt.per_object, 5);
    assert_eq!(c.decoder_warmup.steps, 300);
    assert_eq!(c.data.min_pixels, 3136);
    assert_eq!(c.data.max_pixels, 12_845_056);
    // A minimal file fills everything else from the defaults.
    let minimal = "model: {path: m}\ndata: {datasets: [{name: a, shards: s}]}\n";
    let c = TrainConfig::from_yaml_str(minimal, "minimal", &[]).unwrap();
    assert_eq!(c.data.datasets[0].repeat, 1);
    c.validate().unwrap();
}

#[test]
fn overrides_apply_to_nested_keys_lists_and_values() {
    let base = TrainConfig::load(&repo_root().join("configs/padt_pro_3b.yaml"), &[]).unwrap();
    let sets: Vec<String> = [
        "optimizer.lr=1e-5",
        "training.devices=[cpu]",
        "training.global_batch_size=null",
        "data.datasets.1.repeat=3",
        "optimizer.betas.1=0.95",
        "schedule.kind=cosine",
        "checkpoint.keep_last=2",
        "run_name=my run",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let c = base.with_overrides(&sets).unwrap();
    assert_eq!(c.optimizer.lr, 1e-5);
    assert_eq!(c.training.devices, vec![DeviceSpec::Cpu]);
    assert_eq!(c.training.global_batch_size, None);
    assert_eq!(c.data.datasets[1].repeat, 3);
    assert_eq!(c.optimizer.betas, [0.9, 0.95]);
    assert_eq!(c.schedule.kind, ScheduleKind::Cosine);
    assert_eq!(c.checkpoint.keep_last, Some(2));
    assert_eq!(c.run_name, "my run");
    // Everything else is untouched.
    assert_eq!(c.data.datasets[0], base.data.datasets[0]);
    assert_eq!(c.loss, base.loss);
    // The same through load().
    let loaded = TrainConfig::load(&repo_root().join("configs/padt_pro_3b.yaml"), &sets).unwrap();
    assert_eq!(loaded, c);
}

#[test]
fn every_vrt_pick_maps_to_its_patch_selection() {
    use padt_data::targets::PatchSelection;
    use padt_train::trainer::patch_selection;
    let base = TrainConfig::load(&repo_root().join("configs/demo_cpu.yaml"), &[]).unwrap();
    let pick = |name: &str| {
        let c = base
            .with_overrides(&[format!("vrt.pick={name}"), "vrt.per_object=3".into()])
            .unwrap();
        patch_selection(&c)
    };
    assert_eq!(pick("random"), PatchSelection::Random { num: 3 });
    assert_eq!(pick("structured"), PatchSelection::Structured);
    assert_eq!(pick("anchored"), PatchSelection::Anchored);
    assert_eq!(pick("all"), PatchSelection::All);
    assert!(base.with_overrides(&["vrt.pick=centre".into()]).is_err());
}

#[test]
fn evaluation_task_takes_every_padt_eval_task() {
    use padt_train::recipe::EvaluationTask;
    let base = TrainConfig::load(&repo_root().join("configs/padt_pro_3b.yaml"), &[]).unwrap();
    for (name, task) in [
        ("rec", EvaluationTask::Rec),
        ("res", EvaluationTask::Res),
        ("ovd", EvaluationTask::Ovd),
        ("ric", EvaluationTask::Ric),
    ] {
        let c = base
            .with_overrides(&[format!("evaluation.task={name}")])
            .unwrap();
        assert_eq!(c.evaluation.task, task);
    }
    assert!(base
        .with_overrides(&["evaluation.task=caption".to_string()])
        .is_err());
}

#[test]
fn unknown_override_keys_name_the_nearest_valid_key() {
    let base = TrainConfig::default();
    for (arg, expect) in [
        ("optimizer.lrr=1", "optimizer.lr"),
        ("trainig.epochs=3", "training.epochs"),
        ("lr=1e-5", "optimizer.lr"),
        ("loss.use_box_loss=false", "loss.use_bbox_loss"),
        ("data.datasets.0.repeats=2", "data.datasets.N.repeat"),
    ] {
        let err = base.with_overrides(&[arg.to_string()]).unwrap_err();
        assert!(
            matches!(err, RecipeError::UnknownKey { .. }),
            "{arg}: {err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("did you mean `{expect}`")),
            "{arg}: {msg}"
        );
    }
    let err = base.with_overrides(&["no_equals_sign".into()]).unwrap_err();
    assert!(matches!(err, RecipeError::OverrideSyntax(_)), "{err:?}");
    let err = base
        .with_overrides(&["training.epochs=many".into()])
        .unwrap_err();
    assert!(err.to_string().contains("training"), "{err}");
    let err = base
        .with_overrides(&["data.datasets.4.repeat=2".into()])
        .unwrap_err();
    assert!(
        matches!(err, RecipeError::IndexOutOfRange { .. }),
        "{err:?}"
    );
    assert_eq!(nearest_key("zzzzzzzzzzzzzzzzzzzzzz", &valid_keys()), None);
}

#[test]
fn unknown_fields_in_a_file_are_rejected_with_their_name() {
    let text = "optimizer:\n  lr: 1.0e-5\n  momentum: 0.9\n";
    let err = TrainConfig::from_yaml_str(text, "bad.yaml", &[]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("bad.yaml") && msg.contains("momentum"),
        "{msg}"
    );
    let err = TrainConfig::from_yaml_str("training: {devices: [gpu0]}", "d.yaml", &[]).unwrap_err();
    assert!(err.to_string().contains("gpu0"), "{err}");
}

fn invalid_messages(c: &TrainConfig) -> Vec<String> {
    match c.validate() {
        Err(RecipeError::Invalid(msgs)) => msgs,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn validation_reports_every_inconsistency() {
    let mut c = TrainConfig::load(&repo_root().join("configs/padt_ovd_3b.yaml"), &[]).unwrap();
    c.training.global_batch_size = Some(100); // 8 devices × 16 does not divide 100
    c.loss.use_bbox_loss = false; // the score loss needs it
    c.training.devices = vec![DeviceSpec::Cuda(0), DeviceSpec::Cuda(0), DeviceSpec::Cpu];
    c.param_groups = vec![padt_train::recipe::ParamGroupConfig {
        name: "default".into(),
        prefixes: vec![],
        lr_scale: -1.0,
        weight_decay: None,
    }];
    c.checkpoint.keep_last = Some(0);
    let msgs = invalid_messages(&c);
    let all = msgs.join("\n");
    for needle in [
        "global_batch_size 100 is not divisible by world size 3 × per-device batch 16",
        "use_score_loss needs loss.use_bbox_loss",
        "mixes cpu and cuda",
        "cuda device twice",
        "reserved `default`",
        "needs non-empty prefixes",
        "lr_scale must be >= 0",
        "keep_last must be at least 1",
    ] {
        assert!(all.contains(needle), "missing `{needle}` in:\n{all}");
    }
    // Divisible, but the accumulation does not match.
    let mut c = TrainConfig::load(&repo_root().join("configs/padt_ovd_3b.yaml"), &[]).unwrap();
    c.training.global_batch_size = Some(256);
    let all = invalid_messages(&c).join("\n");
    assert!(all.contains("needs gradient_accumulation_steps 2"), "{all}");
}

fn write_manifest(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("manifest.json"), r#"{"format_version": 1}"#).unwrap();
}

#[test]
fn path_validation_checks_model_tokenizer_and_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write_manifest(&shards);
    let tiny = repo_root().join("configs/tiny_test.yaml");
    let model = repo_root().join("tests/fixtures/padt-tiny/checkpoint");
    let sets = vec![
        format!("data.datasets.0.shards={}", shards.display()),
        format!("model.path={}", model.display()),
    ];
    let c = TrainConfig::load(&tiny, &sets).unwrap();
    c.validate().unwrap();
    c.validate_paths().unwrap();

    // Everything missing at once: every problem is listed.
    let empty_model = tmp.path().join("empty_model");
    std::fs::create_dir_all(&empty_model).unwrap();
    let bad_json = tmp.path().join("bad_json");
    std::fs::create_dir_all(&bad_json).unwrap();
    std::fs::write(bad_json.join("manifest.json"), "{not json").unwrap();
    let mut bad = c.clone();
    bad.model.path = empty_model.clone();
    bad.data.datasets[0].shards = tmp.path().join("nowhere");
    bad.data.datasets.push(padt_train::recipe::DatasetConfig {
        name: "broken".into(),
        shards: bad_json.clone(),
        repeat: 1,
        image_root: Some(tmp.path().join("no_images")),
    });
    let msg = bad.validate_paths().unwrap_err().to_string();
    for needle in [
        "has no config.json",
        "has no model.safetensors or model.safetensors.index.json",
        "has no tokenizer.json",
        "nowhere does not exist",
        "manifest.json is not valid JSON",
        "image_root",
    ] {
        assert!(msg.contains(needle), "missing `{needle}` in:\n{msg}");
    }

    // A sharded model whose index names a missing file.
    std::fs::write(empty_model.join("config.json"), "{}").unwrap();
    std::fs::write(
        empty_model.join("model.safetensors.index.json"),
        r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    std::fs::write(empty_model.join("model-00001-of-00002.safetensors"), b"x").unwrap();
    let mut sharded = c.clone();
    sharded.model.path = empty_model;
    sharded.model.tokenizer = Some(model);
    let msg = sharded.validate_paths().unwrap_err().to_string();
    assert!(
        msg.contains("names missing shard files: model-00002-of-00002.safetensors")
            && !msg.contains("model-00001"),
        "{msg}"
    );
}

#[test]
fn resolved_config_saves_and_reloads() {
    let tmp = tempfile::tempdir().unwrap();
    let c = TrainConfig::load(
        &repo_root().join("configs/padt_rec_7b.yaml"),
        &["optimizer.lr=3e-5".into()],
    )
    .unwrap();
    let out = tmp.path().join("run/config.yaml");
    c.save(&out).unwrap();
    let back = TrainConfig::load(&out, &[]).unwrap();
    assert_eq!(back, c);
    assert_eq!(back.optimizer.lr, 3e-5);
}

#[test]
fn decoder_warmup_condition_is_the_reference_one() {
    let w = TrainConfig::default().decoder_warmup;
    // epoch < epochs/4 and step < 300
    assert!(w.is_active(0, 0.0, 4));
    assert!(w.is_active(299, 0.5, 4));
    assert!(!w.is_active(300, 0.5, 4));
    assert!(!w.is_active(10, 1.0, 4));
    assert!(w.is_active(10, 1.4, 6));
    assert!(!w.is_active(10, 1.5, 6));
    let off = padt_train::recipe::DecoderWarmupConfig {
        enabled: false,
        ..w
    };
    assert!(!off.is_active(0, 0.0, 4));
}

#[test]
fn run_scripts_launch_their_recipe() {
    for task in ["ovd", "rec", "ric", "pro"] {
        for size in ["3b", "7b"] {
            let script = repo_root().join(format!("run_scripts/padt_{task}_{size}_sft.sh"));
            let text = std::fs::read_to_string(&script)
                .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
            let config = format!("configs/padt_{task}_{size}.yaml");
            assert!(
                text.contains(&config),
                "{} does not use {config}",
                script.display()
            );
            let recipe = TrainConfig::load(&repo_root().join(&config), &[]).unwrap();
            assert!(
                text.contains(&format!("EXP_NAME=\"{}\"", recipe.run_name)),
                "{}: EXP_NAME differs from run_name {}",
                script.display(),
                recipe.run_name
            );
            assert!(text.contains("--resume"), "{}", script.display());
        }
    }
}
