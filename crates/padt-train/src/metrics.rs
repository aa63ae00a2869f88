//! Run observability: the JSONL metrics log, the loss-curve PNG and the end-of-run summary.
//!
//! `metrics.jsonl` holds one JSON object per logged optimizer step ([`StepMetrics`]; loss
//! components are top-level keys next to `loss`). Non-finite numbers are written as `null`.
//! On resume the log is cut back to the checkpoint's step ([`MetricsLog::open`]), so a resumed
//! run's log reads like an uninterrupted one.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

/// Errors of the metrics log and plot.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// File-system failure.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line of an existing log is not a metrics object.
    #[error("{path}:{line}: not a metrics record: {message}")]
    BadLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// Drawing the plot failed.
    #[error("plotting {path}: {message}")]
    Plot { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MetricsError + '_ {
    move |source| MetricsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Metrics of one optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer steps completed including this one.
    pub step: u64,
    /// Fractional epochs completed.
    pub epoch: f64,
    /// Total loss (mean over the micro-batches and ranks of the step).
    pub loss: Option<f64>,
    /// Loss components and diagnostics (`sft_loss`, `bbox_loss`, `score_loss`, `mask_loss`,
    /// `iou`, `giou`), as top-level keys.
    #[serde(flatten)]
    pub components: BTreeMap<String, Option<f64>>,
    /// Learning rate of the default group used for this step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: Option<f64>,
    /// Input tokens (prompt + completion, without padding) per second, all ranks.
    pub tokens_per_s: f64,
    /// Samples per second, all ranks.
    pub samples_per_s: f64,
    /// Seconds the step waited for data.
    pub data_wait_s: f64,
    /// Wall-clock seconds of the step.
    pub step_time_s: f64,
    /// Peak memory of the training device in bytes so far: on `cpu` the process peak resident
    /// set (`VmHWM`), on `cuda` the largest CubeCL memory-pool reservation seen at a step end.
    pub peak_memory_bytes: Option<u64>,
    /// Peak resident set of the process in bytes so far (Linux `VmHWM`; null elsewhere).
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
    /// Device memory held by live tensors at the end of the step (`cuda` only).
    #[serde(default)]
    pub device_memory_in_use_bytes: Option<u64>,
    /// Model FLOPs of the step over all ranks (see [`FlopModel`]).
    #[serde(default)]
    pub model_flops: Option<f64>,
    /// Model FLOPs utilisation estimate: `model_flops / step time / (ranks × peak FLOP/s)`,
    /// where a peak is known (`logging.peak_tflops`).
    pub mfu: Option<f64>,
    /// The step was skipped because of a non-finite loss or gradient norm.
    pub skipped: bool,
}

impl StepMetrics {
    /// A record with the given step, epoch, loss and lr; everything else empty.
    pub fn new(step: u64, epoch: f64, loss: f64, lr: f64) -> Self {
        StepMetrics {
            step,
            epoch,
            loss: finite(loss),
            components: BTreeMap::new(),
            lr,
            grad_norm: None,
            tokens_per_s: 0.0,
            samples_per_s: 0.0,
            data_wait_s: 0.0,
            step_time_s: 0.0,
            peak_memory_bytes: None,
            peak_rss_bytes: None,
            device_memory_in_use_bytes: None,
            model_flops: None,
            mfu: None,
            skipped: false,
        }
    }

    /// Adds a loss component (non-finite values are recorded as null).
    pub fn with_component(mut self, name: &str, value: f64) -> Self {
        self.components.insert(name.to_string(), finite(value));
        self
    }
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// MFU estimate: `achieved_flops_per_s / peak_flops_per_s` (None when the peak is unknown).
///
/// `flops_per_token` is the model's training FLOPs per token (≈ 6 × parameters for a dense
/// transformer, forward + backward).
pub fn mfu_estimate(
    tokens_per_s: f64,
    flops_per_token: f64,
    peak_flops_per_s: Option<f64>,
) -> Option<f64> {
    let peak = peak_flops_per_s.filter(|p| *p > 0.0)?;
    Some(tokens_per_s * flops_per_token / peak)
}

/// The peak resident set size of this process in bytes (`VmHWM` of `/proc/self/status`);
/// None where that file does not exist (non-Linux) or cannot be parsed.
pub fn process_peak_rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&text)
}

/// The `VmHWM:` line of a `/proc/<pid>/status` text, in bytes.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut parts = line["VmHWM:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => Some(value * 1024),
        _ => None,
    }
}

/// The shape of one collated micro-batch, as the FLOP count needs it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MicroBatchShape {
    /// Non-padding tokens (prompt + completion) of each sample.
    pub sequence_tokens: Vec<usize>,
    /// Non-padding completion tokens of the batch (the positions the LM head scores).
    pub completion_tokens: usize,
    /// `(t, h, w)` patch grid of every image.
    pub image_grids: Vec<[usize; 3]>,
}

/// Training FLOPs of one micro-batch of Qwen2.5-VL (docs/training.md, "MFU").
///
/// Every parameter costs 2 FLOPs per token it is applied to in the forward pass and 4 more in
/// the backward pass when it is trained (6 in all), 2 when it is frozen. Token counts:
/// - LLM layers: every non-padding token; the LM head: every completion token (logits are only
///   computed there); the embedding lookup costs nothing;
/// - ViT patch embedding and blocks: every patch (`t·h·w` per image); the merger: every
///   `spatial_merge_size²` patches;
/// - attention scores and weighted sums (no parameters): `12·d·n²` per layer and sequence of
///   `n` tokens (forward `4·d·n²`, backward twice that; the causal mask is not halved, as in the
///   PaLM MFU convention); the ViT's window blocks use the exact window sizes of the grid.
///
/// The PaDT box/score/mask decoder (about 2.6 % of the 3B parameters, run on a few object
/// tokens) and `vis_norm`/`vis_proj` are left out.
#[derive(Debug, Clone, PartialEq)]
pub struct FlopModel {
    /// FLOPs per token of the LLM layers (factor × parameters).
    pub llm_per_token: f64,
    /// FLOPs per completion token of the LM head.
    pub lm_head_per_token: f64,
    /// `12 · hidden · layers`: attention FLOPs per squared sequence length.
    pub llm_attention_per_token_pair: f64,
    /// FLOPs per patch of the patch embedding and the ViT blocks.
    pub vision_per_patch: f64,
    /// FLOPs per merged token of the merger.
    pub merger_per_token: f64,
    /// `12 · vision hidden` times the number of full-attention blocks.
    pub vision_full_attention_per_pair: f64,
    /// `12 · vision hidden` times the number of window-attention blocks.
    pub vision_window_attention_per_pair: f64,
    /// `spatial_merge_size`.
    pub merge: usize,
    /// Window side in merged tokens (`window_size / patch_size / spatial_merge_size`).
    pub window: usize,
    /// Parameters left out of the count (decoder, `vis_norm`, `vis_proj`).
    pub uncounted_params: usize,
}

impl FlopModel {
    /// The model of `params` (names as [`crate::params::list_params`] gives them, after
    /// freezing) with the architecture of `qwen`.
    pub fn new(params: &[crate::params::ParamInfo], qwen: &padt_model::Qwen2_5VlConfig) -> Self {
        let factor = |p: &crate::params::ParamInfo| if p.requires_grad { 6.0 } else { 2.0 };
        let (mut llm, mut lm_head, mut embed_head, mut vision, mut merger) =
            (0.0, None, 0.0, 0.0, 0.0);
        let mut uncounted = 0usize;
        for p in params {
            let n = p.numel() as f64;
            let name = p.name.as_str();
            let top = name.split('.').next().unwrap_or("");
            if matches!(top, "vl_decoder" | "vis_norm" | "vis_proj") {
                uncounted += p.numel();
            } else if name.contains("lm_head") {
                lm_head = Some(factor(p) * n);
            } else if name.contains("embed_tokens") {
                embed_head = factor(p) * n;
            } else if name.contains("visual.merger") {
                merger += factor(p) * n;
            } else if name.contains("visual.") {
                vision += factor(p) * n;
            } else {
                llm += factor(p) * n;
            }
        }
        let v = &qwen.vision_config;
        let full = v
            .fullatt_block_indexes
            .iter()
            .filter(|&&i| i < v.depth)
            .count();
        let merge = v.spatial_merge_size.max(1);
        FlopModel {
            llm_per_token: llm,
            // A tied head multiplies by the embedding matrix.
            lm_head_per_token: lm_head.unwrap_or(embed_head),
            llm_attention_per_token_pair: 12.0
                * qwen.hidden_size as f64
                * qwen.num_hidden_layers as f64,
            vision_per_patch: vision,
            merger_per_token: merger,
            vision_full_attention_per_pair: 12.0 * v.hidden_size as f64 * full as f64,
            vision_window_attention_per_pair: 12.0 * v.hidden_size as f64 * (v.depth - full) as f64,
            merge,
            window: (v.window_size / merge / v.patch_size.max(1)).max(1),
            uncounted_params: uncounted,
        }
    }

    /// Training FLOPs of one micro-batch.
    pub fn micro_batch_flops(&self, shape: &MicroBatchShape) -> f64 {
        let mut flops = 0.0;
        for &n in &shape.sequence_tokens {
            let n = n as f64;
            flops += self.llm_per_token * n + self.llm_attention_per_token_pair * n * n;
        }
        flops += self.lm_head_per_token * shape.completion_tokens as f64;
        let m = self.merge;
        for &[t, h, w] in &shape.image_grids {
            let patches = (t * h * w) as f64;
            flops +=
                self.vision_per_patch * patches + self.merger_per_token * patches / (m * m) as f64;
            // Full attention: one sequence per frame; windows: squares of ≤ window merged
            // tokens per side (the last row/column of windows is cut by the grid).
            let frame = (h * w) as f64;
            let sum_sq = |len: usize| -> f64 {
                let (full, rest) = (len / self.window, len % self.window);
                (full * self.window * self.window + rest * rest) as f64
            };
            let window_pairs = sum_sq(h / m) * sum_sq(w / m) * (m * m) as f64 * (m * m) as f64;
            flops += t as f64
                * (self.vision_full_attention_per_pair * frame * frame
                    + self.vision_window_attention_per_pair * window_pairs);
        }
        flops
    }
}

/// The append-only metrics log of a run.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
    records: Vec<StepMetrics>,
}

impl MetricsLog {
    /// Opens (creating) the log. With `resume_step`, lines of steps after it (written by an
    /// interrupted run after its last checkpoint) are dropped, atomically; without it, an
    /// existing log is started afresh.
    pub fn open(path: &Path, resume_step: Option<u64>) -> Result<Self, MetricsError> {
        let records = match resume_step {
            Some(step) if path.exists() => {
                let kept: Vec<StepMetrics> = read_metrics(path)?
                    .into_iter()
                    .filter(|r| r.step <= step)
                    .collect();
                rewrite(path, &kept)?;
                kept
            }
            _ => {
                rewrite(path, &[])?;
                Vec::new()
            }
        };
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
            records,
        })
    }

    /// Appends one record (one line, flushed).
    pub fn append(&mut self, record: StepMetrics) -> Result<(), MetricsError> {
        let mut line = serde_json::to_string(&record).expect("serialisable");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(io_err(&self.path))?;
        self.records.push(record);
        Ok(())
    }

    /// Everything logged so far (including the lines kept from before a resume).
    pub fn records(&self) -> &[StepMetrics] {
        &self.records
    }
}

/// Reads a metrics log (blank lines ignored; a malformed line is an error naming it).
pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>, MetricsError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_err(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line).map_err(|e| MetricsError::BadLine {
            path: path.to_path_buf(),
            line: i + 1,
            message: e.to_string(),
        })?;
        out.push(record);
    }
    Ok(out)
}

fn rewrite(path: &Path, records: &[StepMetrics]) -> Result<(), MetricsError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    for r in records {
        let line = serde_json::to_string(r).expect("serialisable");
        writeln!(tmp, "{line}").map_err(io_err(path))?;
    }
    tmp.as_file().sync_all().map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    Ok(())
}

/// Registers a sans-serif system font for plot text once; false when none is found (plots
/// are then drawn without text). `PADT_PLOT_FONT` names a TTF/OTF file to use instead.
fn plot_font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(p) = std::env::var_os("PADT_PLOT_FONT") {
            candidates.push(PathBuf::from(p));
        }
        candidates.extend(
            [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
                "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
                "/System/Library/Fonts/Supplemental/Arial.ttf",
                "/Library/Fonts/Arial.ttf",
            ]
            .map(PathBuf::from),
        );
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

const PLOT_COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Loss series of a log: `loss` first, then every `*loss*` component, over the steps where
/// the value is finite.
pub fn loss_series(records: &[StepMetrics]) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut names: Vec<String> = vec!["loss".into()];
    for r in records {
        for k in r.components.keys() {
            if k.contains("loss") && !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    names
        .into_iter()
        .map(|name| {
            let points = records
                .iter()
                .filter_map(|r| {
                    let v = if name == "loss" {
                        r.loss
                    } else {
                        r.components.get(&name).copied().flatten()
                    };
                    v.map(|v| (r.step as f64, v))
                })
                .collect();
            (name, points)
        })
        .filter(|(_, pts): &(String, Vec<(f64, f64)>)| !pts.is_empty())
        .collect()
}

/// Draws the loss curves of `records` into a PNG at `path` (written atomically).
pub fn plot_losses(records: &[StepMetrics], title: &str, path: &Path) -> Result<(), MetricsError> {
    const W: u32 = 1000;
    const H: u32 = 600;
    let plot_err = |message: String| MetricsError::Plot {
        path: path.to_path_buf(),
        message,
    };
    let series = loss_series(records);
    let mut buffer = vec![255u8; (W * H * 3) as usize];
    {
        let text = plot_font_available();
        let root = BitMapBackend::with_buffer(&mut buffer, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(e.to_string()))?;
        let (x_max, y_min, y_max) = bounds(&series);
        let mut builder = ChartBuilder::on(&root);
        builder.margin(20);
        if text {
            builder
                .caption(title, ("sans-serif", 24))
                .x_label_area_size(40)
                .y_label_area_size(60);
        }
        let mut chart = builder
            .build_cartesian_2d(0.0..x_max, y_min..y_max)
            .map_err(|e| plot_err(e.to_string()))?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("optimizer step").y_desc("loss");
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(|e| plot_err(e.to_string()))?;
        for (i, (name, points)) in series.iter().enumerate() {
            let color = PLOT_COLORS[i % PLOT_COLORS.len()];
            let width = if name == "loss" { 3 } else { 1 };
            let drawn = chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(width),
                ))
                .map_err(|e| plot_err(e.to_string()))?;
            if text {
                let label = name.clone();
                drawn.label(label).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            }
        }
        if text && !series.is_empty() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| plot_err(e.to_string()))?;
        }
        root.present().map_err(|e| plot_err(e.to_string()))?;
    }
    let image = image::RgbImage::from_raw(W, H, buffer).expect("buffer size matches");
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .suffix(".png")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    image
        .save_with_format(tmp.path(), image::ImageFormat::Png)
        .map_err(|e| plot_err(e.to_string()))?;
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    Ok(())
}

fn bounds(series: &[(String, Vec<(f64, f64)>)]) -> (f64, f64, f64) {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if !y_min.is_finite() {
        return (x_max, 0.0, 1.0);
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-6);
    (x_max, y_min - pad, y_max + pad)
}

/// The end-of-run summary (a few lines for the terminal).
pub fn summary(run_name: &str, records: &[StepMetrics], wall_s: f64, skipped: usize) -> String {
    let mut out = format!("== {run_name}: training finished ==\n");
    let steps = records.last().map_or(0, |r| r.step);
    let epoch = records.last().map_or(0.0, |r| r.epoch);
    out += &format!(
        "steps {steps} (epoch {epoch:.2}), wall time {}, skipped non-finite steps {skipped}\n",
        fmt_duration(wall_s)
    );
    let losses: Vec<f64> = records.iter().filter_map(|r| r.loss).collect();
    if let (Some(first), Some(last)) = (losses.first(), losses.last()) {
        let k = losses.len().min(10);
        let tail_mean = losses[losses.len() - k..].iter().sum::<f64>() / k as f64;
        let min = losses.iter().copied().fold(f64::INFINITY, f64::min);
        out += &format!(
            "loss first {first:.4} → last {last:.4} (mean of last {k}: {tail_mean:.4}, min {min:.4})\n"
        );
    }
    if let Some(last) = records.last() {
        let comps: Vec<String> = last
            .components
            .iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k} {v:.4}")))
            .collect();
        if !comps.is_empty() {
            out += &format!("last components: {}\n", comps.join(", "));
        }
    }
    let timed: Vec<&StepMetrics> = records.iter().filter(|r| r.step_time_s > 0.0).collect();
    if !timed.is_empty() {
        let n = timed.len() as f64;
        let mean = |f: fn(&StepMetrics) -> f64| timed.iter().map(|r| f(r)).sum::<f64>() / n;
        out += &format!(
            "throughput {:.1} samples/s, {:.0} tokens/s, {:.3} s/step, data wait {:.1}%\n",
            mean(|r| r.samples_per_s),
            mean(|r| r.tokens_per_s),
            mean(|r| r.step_time_s),
            100.0 * mean(|r| r.data_wait_s) / mean(|r| r.step_time_s).max(1e-12),
        );
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let peak = records.iter().filter_map(|r| r.peak_memory_bytes).max();
    let rss = records.iter().filter_map(|r| r.peak_rss_bytes).max();
    match (peak, rss) {
        (Some(p), Some(r)) if p != r => {
            out += &format!(
                "peak memory {:.2} GiB on the device, {:.2} GiB process resident\n",
                gib(p),
                gib(r)
            )
        }
        (Some(p), _) | (None, Some(p)) => out += &format!("peak memory {:.2} GiB\n", gib(p)),
        (None, None) => {}
    }
    let mfus: Vec<f64> = timed.iter().filter_map(|r| r.mfu).collect();
    let flops: Vec<f64> = timed
        .iter()
        .filter_map(|r| r.model_flops.map(|f| f / r.step_time_s))
        .collect();
    if !flops.is_empty() {
        let mean_tflops = flops.iter().sum::<f64>() / flops.len() as f64 / 1e12;
        out += &format!("model FLOP/s {mean_tflops:.3} TFLOP/s");
        if !mfus.is_empty() {
            let mean = mfus.iter().sum::<f64>() / mfus.len() as f64;
            out += &format!(", MFU {:.1}%", 100.0 * mean);
        } else {
            out += " (MFU: no device peak; set logging.peak_tflops)";
        }
        out += "\n";
    }
    out
}

fn fmt_duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    format!("{}h{:02}m{:02}s", s / 3600, (s / 60) % 60, s % 60)
}
