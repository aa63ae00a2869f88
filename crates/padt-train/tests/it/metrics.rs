use std::fs;

use burn::module::ParamId;
use padt_model::Qwen2_5VlConfig;
use padt_train::metrics::{
    loss_series, mfu_estimate, parse_vm_hwm, plot_losses, process_peak_rss_bytes, read_metrics,
    summary, FlopModel, MetricsLog, MicroBatchShape, StepMetrics,
};
use padt_train::params::ParamInfo;

fn record(step: u64) -> StepMetrics {
    let loss = 3.0 / (1.0 + step as f64);
    let mut r = StepMetrics::new(
        step,
        step as f64 / 10.0,
        loss,
        2e-5 * (1.0 - step as f64 / 20.0),
    )
    .with_component("sft_loss", loss * 0.6)
    .with_component("bbox_loss", loss * 0.3)
    .with_component("score_loss", loss * 0.05)
    .with_component("mask_loss", loss * 0.05)
    .with_component("iou", 0.1 * step as f64);
    r.grad_norm = Some(1.5);
    r.tokens_per_s = 1000.0;
    r.samples_per_s = 4.0;
    r.data_wait_s = 0.01;
    r.step_time_s = 0.5;
    r.peak_memory_bytes = Some(3 << 30);
    r
}

#[test]
fn one_json_object_per_step_with_flat_components() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("metrics.jsonl");
    let mut log = MetricsLog::open(&path, None).unwrap();
    for step in 1..=3 {
        log.append(record(step)).unwrap();
    }
    let mut nan =
        StepMetrics::new(4, 0.4, f64::NAN, 1e-5).with_component("sft_loss", f64::INFINITY);
    nan.skipped = true;
    log.append(nan.clone()).unwrap();

    let text = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    for key in [
        "step",
        "epoch",
        "loss",
        "sft_loss",
        "bbox_loss",
        "score_loss",
        "mask_loss",
        "iou",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "samples_per_s",
        "data_wait_s",
        "step_time_s",
        "peak_memory_bytes",
        "mfu",
        "skipped",
    ] {
        assert!(first.get(key).is_some(), "missing `{key}` in {}", lines[0]);
    }
    assert_eq!(first["step"], 1);
    assert!((first["sft_loss"].as_f64().unwrap() - 0.9).abs() < 1e-12);
    let last: serde_json::Value = serde_json::from_str(lines[3]).unwrap();
    assert!(last["loss"].is_null() && last["sft_loss"].is_null());
    assert_eq!(last["skipped"], true);
    // Reading back gives the same records.
    let back = read_metrics(&path).unwrap();
    assert_eq!(back[0], record(1));
    assert_eq!(back[3], nan);
}

#[test]
fn resuming_cuts_the_log_back_to_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("metrics.jsonl");
    let mut log = MetricsLog::open(&path, None).unwrap();
    for step in 1..=5 {
        log.append(record(step)).unwrap();
    }
    drop(log);
    // The run crashed after step 5; the newest checkpoint is step 3.
    let mut log = MetricsLog::open(&path, Some(3)).unwrap();
    assert_eq!(log.records().len(), 3);
    log.append(record(4)).unwrap();
    let steps: Vec<u64> = read_metrics(&path)
        .unwrap()
        .iter()
        .map(|r| r.step)
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4]);
    // A fresh (non-resumed) run starts a new log.
    let log = MetricsLog::open(&path, None).unwrap();
    assert!(log.records().is_empty());
    assert_eq!(fs::read_to_string(&path).unwrap(), "");
}

#[test]
fn malformed_log_lines_are_reported_with_their_line_number() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("metrics.jsonl");
    let good = serde_json::to_string(&record(1)).unwrap();
    fs::write(&path, format!("{good}\n{{\"step\": \"x\"}}\n")).unwrap();
    let err = read_metrics(&path).unwrap_err().to_string();
    assert!(err.contains("metrics.jsonl:2"), "{err}");
    assert!(MetricsLog::open(&path, Some(1)).is_err());
}

#[test]
fn loss_plot_is_a_png_with_the_curves() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("loss.png");
    let records: Vec<StepMetrics> = (1..=50).map(record).collect();
    let series = loss_series(&records);
    let names: Vec<&str> = series.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["loss", "bbox_loss", "mask_loss", "score_loss", "sft_loss"]
    );
    assert_eq!(series[0].1.len(), 50);
    plot_losses(&records, "test run", &path).unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (1000, 600));
    // The total-loss colour (tab:blue) is drawn.
    let blue = img.pixels().filter(|p| p.0 == [31, 119, 180]).count();
    assert!(blue > 200, "only {blue} blue pixels");
    // An empty log still gives a (blank) chart rather than an error.
    plot_losses(&[], "empty", &path).unwrap();
}

#[test]
fn summary_and_mfu() {
    let records: Vec<StepMetrics> = (1..=20).map(record).collect();
    let text = summary("tiny", &records, 3725.0, 1);
    assert!(text.contains("steps 20"), "{text}");
    assert!(text.contains("1h02m05s"), "{text}");
    assert!(text.contains("loss first 1.5000 → last 0.1429"), "{text}");
    assert!(text.contains("skipped non-finite steps 1"), "{text}");
    assert!(text.contains("4.0 samples/s"), "{text}");
    assert!(text.contains("peak memory 3.00 GiB"), "{text}");
    assert!(text.lines().count() <= 8, "one screen: {text}");
    assert_eq!(mfu_estimate(1000.0, 6.0e9, Some(1.0e15)), Some(6.0e-3));
    assert_eq!(mfu_estimate(1000.0, 6.0e9, None), None);
}

#[test]
fn vm_hwm_is_read_in_bytes() {
    let status = "Name:\tpadt-train\nVmPeak:\t  999 kB\nVmHWM:\t  123456 kB\nVmRSS:\t 1000 kB\n";
    assert_eq!(parse_vm_hwm(status), Some(123_456 * 1024));
    assert_eq!(parse_vm_hwm("VmRSS:\t1 kB\n"), None);
    assert_eq!(parse_vm_hwm("VmHWM:\tlots\n"), None);
    if cfg!(target_os = "linux") {
        assert!(process_peak_rss_bytes().unwrap() > 1 << 20);
    }
}

fn param(name: &str, shape: &[usize], requires_grad: bool) -> ParamInfo {
    ParamInfo {
        name: name.into(),
        id: ParamId::new(),
        shape: shape.to_vec(),
        requires_grad,
    }
}

/// The FLOP count by hand on the padt-tiny architecture with a made-up parameter list:
/// 6 per trained, 2 per frozen parameter and token; attention 12·d·n² per layer; exact ViT
/// windows, including a cut last row of windows.
#[test]
fn flop_model_counts_parameters_tokens_and_attention() {
    let path = crate::common::repo_root().join("tests/fixtures/padt-tiny/checkpoint/config.json");
    let text = fs::read_to_string(&path).unwrap();
    let qwen = Qwen2_5VlConfig::from_json_str(&text, &path).unwrap();
    let v = &qwen.vision_config;
    assert_eq!(
        (v.window_size, v.patch_size, v.spatial_merge_size),
        (56, 14, 2)
    );
    let params = [
        param("model.embed_tokens.weight", &[10, 4], true),
        param("model.layers.0.mlp.weight", &[4, 4], true),
        param("model.layers.0.frozen.weight", &[4, 4], false),
        param("visual.blocks.0.w", &[8, 8], true),
        param("visual.patch_embed.proj.weight", &[3], false),
        param("visual.merger.mlp.0.weight", &[2, 2], true),
        param("vl_decoder.x", &[5], true),
        param("vis_proj.0.weight", &[7], true),
    ];
    let model = FlopModel::new(&params, &qwen);
    assert_eq!(model.llm_per_token, 6.0 * 16.0 + 2.0 * 16.0);
    assert_eq!(model.lm_head_per_token, 6.0 * 40.0, "tied head = embedding");
    assert_eq!(model.vision_per_patch, 6.0 * 64.0 + 2.0 * 3.0);
    assert_eq!(model.merger_per_token, 6.0 * 4.0);
    assert_eq!(model.uncounted_params, 12);
    assert_eq!(model.window, 2);

    let shape = MicroBatchShape {
        sequence_tokens: vec![10, 6],
        completion_tokens: 5,
        // 10×12 patches = 5×6 merged tokens: windows of 2×2 merged (16 patches), the last
        // row of windows 1×2 merged (8 patches): 6·16² + 3·8² = 1728 attention pairs.
        image_grids: vec![[1, 10, 12]],
    };
    let (h, l) = (qwen.hidden_size as f64, qwen.num_hidden_layers as f64);
    let hv = v.hidden_size as f64;
    let full = v.fullatt_block_indexes.len() as f64;
    let window = v.depth as f64 - full;
    let expected = 128.0 * 16.0
        + 12.0 * h * l * (100.0 + 36.0)
        + 240.0 * 5.0
        + 390.0 * 120.0
        + 24.0 * 30.0
        + 12.0 * hv * full * 120.0 * 120.0
        + 12.0 * hv * window * 1728.0;
    assert_eq!(model.micro_batch_flops(&shape), expected);
    // An untied head counts itself, not the embedding.
    let mut untied = params.to_vec();
    untied.push(param("lm_head.weight", &[10, 4], false));
    assert_eq!(FlopModel::new(&untied, &qwen).lm_head_per_token, 2.0 * 40.0);
}
