use std::fs;

use burn::optim::GradientsParams;
use serde_json::json;

use padt_train::checkpoint::{
    is_complete, load_checkpoint, load_model_params, read_trainer_state, save_model_params,
    CheckpointError, CheckpointManager, TrainerState, MODEL_FILE, STATE_FILE,
};
use padt_train::optim::GroupedAdamW;
use padt_train::recipe::{ScheduleConfig, TrainConfig};
use padt_train::schedule::LrSchedule;

use crate::common::{device, linear_loss, param1, tiny, values1, values2, Tiny, B};

fn state(step: u64) -> TrainerState {
    TrainerState::new(
        step,
        step as f64 / 10.0,
        step * 4,
        LrSchedule::from_config(&ScheduleConfig::default(), 2e-5, 100),
        json!({"epoch": 0, "cursor": step * 4, "permutation_seed": 42}),
        json!({"seed": 42, "draws": step}),
        0,
        1,
        4,
    )
}

fn trained() -> (Tiny<B>, GroupedAdamW<B>) {
    let mut optim = GroupedAdamW::<B>::from_config(&TrainConfig::default());
    let m = tiny(0.4);
    let grads = GradientsParams::from_grads::<B, _>(
        linear_loss(&m, &[1.0, -1.0, 0.5, 0.2, 0.0, 3.0], &[0.1, -0.2]).backward(),
        &m,
    );
    let (m, _) = optim.step(1e-2, m, grads);
    (m, optim)
}

#[test]
fn save_list_and_load_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = CheckpointManager::new(tmp.path(), None);
    assert!(manager.latest().is_none());
    let (m, optim) = trained();
    let dir = manager.save(&m, &optim, &state(7)).unwrap();
    assert_eq!(dir, tmp.path().join("checkpoint-7"));
    assert!(is_complete(&dir));
    assert_eq!(manager.latest(), Some((7, dir.clone())));
    assert!(!tmp.path().join("checkpoint-7.tmp").exists());

    let mut optim2 = GroupedAdamW::<B>::from_config(&TrainConfig::default());
    let (m2, st) = load_checkpoint::<B, _>(&dir, tiny(-3.0), &mut optim2, &device()).unwrap();
    assert_eq!(st, state(7));
    assert_eq!(values2(m2.w.val()), values2(m.w.val()));
    assert_eq!(values1(m2.b.val()), values1(m.b.val()));
    let s1 = optim.state("w").unwrap();
    let s2 = optim2.state("w").unwrap();
    assert_eq!(s1.step, s2.step);
    assert_eq!(
        values1(s1.exp_avg_sq.clone()),
        values1(s2.exp_avg_sq.clone())
    );
    // Loaded parameters are still trainable.
    assert!(m2.w.val().is_require_grad());
}

#[test]
fn keeps_only_the_last_k() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = CheckpointManager::new(tmp.path(), Some(2));
    let (m, optim) = trained();
    for step in [100, 200, 300, 400] {
        manager.save(&m, &optim, &state(step)).unwrap();
    }
    let steps: Vec<u64> = manager.list().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![300, 400]);
    assert!(!tmp.path().join("checkpoint-100").exists());
    // Numeric, not lexicographic, order: 1000 is newer than 400.
    manager.save(&m, &optim, &state(1000)).unwrap();
    assert_eq!(manager.latest().unwrap().0, 1000);
}

#[test]
fn an_interrupted_write_leaves_the_previous_checkpoint_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = CheckpointManager::new(tmp.path(), Some(1));
    let (m, optim) = trained();
    let good = manager.save(&m, &optim, &state(10)).unwrap();
    let model_before = fs::read(good.join(MODEL_FILE)).unwrap();

    // 1. The write fails half-way (disk full, I/O error): no checkpoint-20, nothing pruned.
    let err = manager
        .save_with(20, |tmp_dir| {
            fs::write(tmp_dir.join(MODEL_FILE), b"partial").unwrap();
            Err(CheckpointError::Invalid {
                path: tmp_dir.to_path_buf(),
                message: "simulated failure".into(),
            })
        })
        .unwrap_err();
    assert!(err.to_string().contains("simulated failure"));
    assert!(!tmp.path().join("checkpoint-20").exists());
    assert!(!tmp.path().join("checkpoint-20.tmp").exists());
    assert_eq!(manager.latest(), Some((10, good.clone())));

    // 2. The process dies mid-write: a half-filled .tmp directory stays behind, plus a
    //    directory that has the final name but no trainer state. Neither counts.
    let crashed = tmp.path().join("checkpoint-30.tmp");
    fs::create_dir_all(&crashed).unwrap();
    fs::write(crashed.join(MODEL_FILE), b"half a file").unwrap();
    let no_state = tmp.path().join("checkpoint-40");
    fs::create_dir_all(&no_state).unwrap();
    fs::write(no_state.join(MODEL_FILE), b"x").unwrap();
    let corrupt = tmp.path().join("checkpoint-50");
    fs::create_dir_all(&corrupt).unwrap();
    for f in fs::read_dir(&good).unwrap() {
        let f = f.unwrap();
        fs::copy(f.path(), corrupt.join(f.file_name())).unwrap();
    }
    fs::write(corrupt.join(STATE_FILE), "{\"step\": 5").unwrap();
    assert!(!is_complete(&corrupt));
    assert_eq!(manager.latest(), Some((10, good.clone())));
    assert_eq!(fs::read(good.join(MODEL_FILE)).unwrap(), model_before);
    assert!(read_trainer_state(&corrupt).is_err());

    // 3. The next save cleans the stale temporary directory up and supersedes step 10.
    manager.save(&m, &optim, &state(60)).unwrap();
    assert!(!crashed.exists());
    assert_eq!(manager.latest().unwrap().0, 60);
    assert!(!good.exists(), "keep_last 1 prunes step 10");
}

#[test]
fn re_saving_the_same_step_replaces_it() {
    let tmp = tempfile::tempdir().unwrap();
    let manager = CheckpointManager::new(tmp.path(), None);
    let (m, optim) = trained();
    manager.save(&m, &optim, &state(5)).unwrap();
    let mut st = state(5);
    st.nonfinite_skips = 3;
    manager.save(&m, &optim, &st).unwrap();
    let dir = manager.latest().unwrap().1;
    assert_eq!(read_trainer_state(&dir).unwrap().nonfinite_skips, 3);
    assert_eq!(manager.list().len(), 1);
    assert!(!tmp.path().join("checkpoint-5.old").exists());
}

#[test]
fn loading_parameters_that_do_not_fit_is_an_error_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("model.safetensors");
    save_model_params::<B, _>(&tiny(0.1), &file).unwrap();
    // Wrong shape for `b`.
    let mut wrong = tiny(0.1);
    wrong.b = param1(&[1.0, 2.0, 3.0]);
    let err = load_model_params::<B, _>(wrong, &file)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`b` has shape [2]") && err.contains("[3]"),
        "{err}"
    );
    // A file from another model: missing and unused tensors are both reported.
    let other = tmp.path().join("other.safetensors");
    save_model_params::<B, _>(&crate::common::nested(), &other).unwrap();
    let err = load_model_params::<B, _>(tiny(0.1), &other)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no tensor `w`"), "{err}");
    assert!(
        err.contains("tensors not in the model") && err.contains("head.w"),
        "{err}"
    );
    // Not a safetensors file at all.
    fs::write(&other, b"garbage").unwrap();
    let err = load_model_params::<B, _>(tiny(0.1), &other)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a safetensors file"), "{err}");
}

#[test]
fn model_file_is_standard_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("model.safetensors");
    let m = crate::common::nested();
    save_model_params::<B, _>(&m, &file).unwrap();
    let bytes = fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(
        names,
        vec![
            "head.b",
            "head.w",
            "layers.0.b",
            "layers.0.w",
            "layers.1.b",
            "layers.1.w",
            "norm_gamma"
        ]
    );
    let w = st.tensor("layers.1.w").unwrap();
    assert_eq!(w.shape(), &[3, 2]);
    let values: Vec<f32> = w
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(values, values2(m.layers[1].w.val()));
}
