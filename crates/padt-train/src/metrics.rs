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
    /// Peak device memory in bytes, where the backend reports it.
    pub peak_memory_bytes: Option<u64>,
    /// Model FLOPs utilisation estimate (achieved / peak FLOP/s), where a peak is known.
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
    if let Some(peak) = records.iter().filter_map(|r| r.peak_memory_bytes).max() {
        out += &format!("peak memory {:.2} GiB\n", peak as f64 / (1u64 << 30) as f64);
    }
    out
}

fn fmt_duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    format!("{}h{:02}m{:02}s", s / 3600, (s / 60) % 60, s % 60)
}
