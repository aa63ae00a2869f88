//! Evaluation of a model on the records of a shard dataset: generation, then REC Acc@0.5, RES
//! mask IoU (`padt_eval::grounding_metrics`), OVD COCO AP/AR (`padt_eval::ovd_eval`) or RIC
//! caption metrics (`padt_eval::ric_eval`); predictions in the reference's line formats
//! (docs/evaluation.md). Used by `padt-eval run` (a checkpoint directory) and by `padt-train`
//! after training (the model in memory, `evaluation.*` in the recipe).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use clap::{Args, ValueEnum};
use padt_core::rle::Rle;
use padt_data::chat::{expand_image_pad_ids, ChatTemplate};
use padt_data::image::{decode_image, DecodeOptions, ImageProcessor, ImageProcessorConfig};
use padt_data::record::Task;
use padt_data::shard::{ShardDataset, StoredRecord};
use padt_data::tokenizer::PadtTokenizer;
use padt_eval::generate::{generate, GenerationConfig, GenerationRequest};
use padt_eval::grounding_metrics::{
    mask_overlap, rec_accuracy, res_scores, BoxPrediction, MaskPrediction, RecSample, ResSample,
};
use padt_eval::ovd_eval::{evaluate_ovd, record_box_pixels, OvdImage};
use padt_eval::parse::{parse_completion, ParseVocab};
use padt_eval::postprocess::{decode_objects, DetectedObject};
use padt_eval::prediction_lines::{reference_completion, ObjectLine};
use padt_eval::ric_eval::{generated_caption, group_by_image, score_captions, RicImage};
use padt_model::padt::PadtModel;
use padt_model::weights::LoadOptions;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EvalTask {
    /// Acc@0.5 of the box of the prediction labelled with the sentence.
    Rec,
    /// Mean (and cumulative) mask IoU of the prediction labelled with the sentence.
    Res,
    /// COCO bbox AP/AR of the detections, categories by label.
    Ovd,
    /// BLEU-4, ROUGE-L, CIDEr-D of the captions (markers stripped).
    Ric,
}

impl EvalTask {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            EvalTask::Rec => "rec",
            EvalTask::Res => "res",
            EvalTask::Ovd => "ovd",
            EvalTask::Ric => "ric",
        }
    }

    /// The record task the evaluation needs.
    pub fn record_task(self) -> Task {
        match self {
            EvalTask::Rec | EvalTask::Res => Task::Refering,
            EvalTask::Ovd => Task::Ovd,
            EvalTask::Ric => Task::Ric,
        }
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// PaDT checkpoint directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Shard dataset folder (manifest.json + shards, docs/data.md) of the task's records.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_enum)]
    pub task: EvalTask,
    /// Prompts generated together (left-padded).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Only the first N records.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 1024)]
    pub max_new_tokens: usize,
    /// Write one JSON line per evaluated record here (the reference's `pred_comp` keys
    /// `image_id`, `completion`, plus details).
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// Write one JSON line per predicted object here, in the reference's `pred_results` format
    /// (`image_id`, `score`, `category`, `bbox`, `mask`), readable by its eval scripts.
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Write the metrics JSON here (it is printed on stdout too).
    #[arg(long)]
    pub metrics: Option<PathBuf>,
}

/// What to evaluate, for [`evaluate`].
#[derive(Debug, Clone)]
pub struct EvalSettings {
    /// Shard dataset folder of the task's records.
    pub data: PathBuf,
    pub task: EvalTask,
    /// Prompts generated together (left-padded).
    pub batch_size: usize,
    /// Only the first N records.
    pub limit: Option<usize>,
    /// Longest completion generated.
    pub max_new_tokens: usize,
}

/// The result of [`evaluate`].
#[derive(Debug, Clone)]
pub struct EvalReport {
    /// The metrics (`task`, `samples`, `acc@0.5`, ... as `padt-eval run` prints them).
    pub summary: serde_json::Value,
    /// One JSON line per evaluated record: `image_id`, `completion` (the reference's
    /// `pred_comp` line), then `record`, `warnings`, `predictions` and task details.
    pub predictions_jsonl: String,
    /// One JSON line per predicted object in the reference's `pred_results` format
    /// ([`ObjectLine`]).
    pub results_jsonl: String,
}

/// One evaluated record.
struct Evaluated {
    /// Index of the record in the dataset.
    index: usize,
    record: StoredRecord,
    completion: String,
    warnings: Vec<String>,
    objects: Vec<DetectedObject>,
}

/// `padt-eval run`: loads the checkpoint directory (weights, tokenizer, processor config) on the
/// CPU, evaluates, prints the summary and writes the predictions if asked.
pub fn run(args: &RunArgs) -> Result<()> {
    let device = Default::default();
    let (model, _) =
        PadtModel::<Flex>::from_pretrained(&args.model, &LoadOptions::default(), &device)
            .with_context(|| {
                format!("{}: cannot load the PaDT checkpoint", args.model.display())
            })?;
    let settings = EvalSettings {
        data: args.data.clone(),
        task: args.task,
        batch_size: args.batch_size,
        limit: args.limit,
        max_new_tokens: args.max_new_tokens,
    };
    let report = evaluate(&model, &args.model, &args.model, &settings)?;
    let outputs = [
        (
            &args.predictions,
            report.predictions_jsonl.clone(),
            "predictions",
        ),
        (&args.results, report.results_jsonl.clone(), "results"),
        (
            &args.metrics,
            serde_json::to_string_pretty(&report.summary)? + "\n",
            "metrics",
        ),
    ];
    for (path, text, what) in outputs {
        if let Some(path) = path {
            padt_data::shard::write_file_atomic(path, text.as_bytes())
                .with_context(|| format!("{}: writing the {what}", path.display()))?;
        }
    }
    println!("{}", serde_json::to_string(&report.summary)?);
    Ok(())
}

/// Evaluates `model` on a shard dataset of the task's records. `tokenizer_dir` holds the tokenizer files,
/// `processor_dir` may hold `preprocessor_config.json` (else PaDT's defaults).
pub fn evaluate<B: Backend>(
    model: &PadtModel<B>,
    tokenizer_dir: &Path,
    processor_dir: &Path,
    args: &EvalSettings,
) -> Result<EvalReport> {
    if args.batch_size == 0 || args.max_new_tokens == 0 {
        bail!("the evaluation batch size and max_new_tokens must be at least 1");
    }
    let dataset = ShardDataset::open(&args.data)
        .with_context(|| format!("{}: cannot open the shard dataset", args.data.display()))?;
    let device = model.vis_norm.weight.device();
    let vocab = model.vocab_size();
    let tokenizer = PadtTokenizer::from_dir(tokenizer_dir, vocab as u32, 0)
        .with_context(|| format!("{}: cannot load the tokenizer", tokenizer_dir.display()))?;
    let template = ChatTemplate::for_tokenizer(&tokenizer)?;
    let pre_path = processor_dir.join("preprocessor_config.json");
    let processor = ImageProcessor::new(if pre_path.is_file() {
        ImageProcessorConfig::from_json_file(&pre_path)?
    } else {
        ImageProcessorConfig::default()
    })?;
    let merge = model.qwen.config.vision_config.spatial_merge_size;
    let eos = tokenizer.special_ids().eos as i64;
    let pad = model
        .qwen
        .config
        .pad_token_id
        .unwrap_or(tokenizer.special_ids().pad as i64);

    let records = read_records(&dataset, &args.data, args.task, args.limit)?;
    // RIC: one generation per image (its records share the prompt), scored against the
    // captions of all its records.
    let ric_images = match args.task {
        EvalTask::Ric => Some(group_by_image(records.iter().map(|(_, r)| &r.record))?),
        _ => None,
    };
    let to_generate: Vec<&(usize, StoredRecord)> = match &ric_images {
        Some(images) => images.iter().map(|i| &records[i.first_record]).collect(),
        None => records.iter().collect(),
    };

    let mut evaluated: Vec<Evaluated> = Vec::with_capacity(to_generate.len());
    for chunk in to_generate.chunks(args.batch_size) {
        let mut prompts = Vec::new();
        let mut pixels = Vec::new();
        let mut grids = Vec::new();
        let mut sizes = Vec::new();
        for (_, item) in chunk.iter().copied() {
            let id = item.record.id;
            let bytes = item.image_bytes()?;
            let decoded = decode_image(&bytes, &item.record.image, &DecodeOptions::default())
                .with_context(|| format!("record {id}: image {}", item.record.image))?;
            let processed = processor
                .preprocess(&decoded.rgb)
                .with_context(|| format!("record {id}: image {}", item.record.image))?;
            let rendered = template.render_padt_prompt(&item.record.prompt)?;
            let ids = tokenizer.encode(&rendered)?;
            let ids = expand_image_pad_ids(
                &ids,
                tokenizer.special_ids().image_pad,
                &[processed.num_merged_tokens(merge)],
            )
            .with_context(|| format!("record {id}: prompt"))?;
            prompts.push(ids.iter().map(|&t| t as i64).collect());
            pixels.push(Tensor::<B, 2>::from_data(
                TensorData::new(
                    processed.pixel_values.clone(),
                    [processed.num_patches, processed.patch_dim],
                ),
                &device,
            ));
            grids.push(processed.grid_thw);
            sizes.push((decoded.rgb.width, decoded.rgb.height));
        }
        let request = GenerationRequest {
            prompts,
            pixel_values: Tensor::cat(pixels, 0),
            grids,
        };
        let generation = generate(
            model,
            &request,
            &GenerationConfig::new(args.max_new_tokens, eos, pad),
        )?;
        let parsed: Vec<_> = (0..chunk.len())
            .map(|b| {
                parse_completion(
                    &generation.generated[b],
                    ParseVocab {
                        vocab_size: vocab as i64,
                        eos_token_id: eos,
                        vrt_count: generation.vrt_counts[b] as u32,
                    },
                    |id| tokenizer.decode(&[id as u32], false).unwrap_or_default(),
                )
            })
            .collect();
        let decoded = decode_objects(model, &generation, &parsed, &sizes)?;
        for ((item, p), objects) in chunk.iter().zip(&parsed).zip(decoded.objects) {
            evaluated.push(Evaluated {
                index: item.0,
                record: item.1.clone(),
                completion: p.completion.clone(),
                warnings: p.warnings.iter().map(ToString::to_string).collect(),
                objects,
            });
        }
        eprintln!(
            "{} / {} {}",
            evaluated.len(),
            to_generate.len(),
            if ric_images.is_some() {
                "images"
            } else {
                "records"
            }
        );
    }

    let object_lines: Vec<ObjectLine> = evaluated
        .iter()
        .flat_map(|e| {
            e.objects
                .iter()
                .map(|o| ObjectLine::from_detected(e.record.record.id, o))
        })
        .collect();
    let results: String = object_lines
        .iter()
        .map(|l| l.to_json_line() + "\n")
        .collect();
    let mut lines = String::new();
    let summary = match args.task {
        EvalTask::Rec => {
            let samples: Vec<RecSample> = evaluated.iter().map(rec_sample).collect();
            for (e, s) in evaluated.iter().zip(&samples) {
                lines +=
                    &(sample_line(e, json!({"sentence": s.sentence, "gt_bbox": s.gt_bbox})) + "\n");
            }
            let acc = rec_accuracy(&samples, 0.5);
            json!({"task": "rec", "samples": acc.num_samples, "acc@0.5": acc.label_matched,
                   "acc@0.5_any_label": acc.any_label})
        }
        EvalTask::Res => {
            let mut samples = Vec::with_capacity(evaluated.len());
            for e in &evaluated {
                let s = res_sample(e)?;
                let ious: Vec<f64> = s.predictions.iter().map(|p| p.overlap.iou()).collect();
                lines +=
                    &(sample_line(e, json!({"sentence": s.sentence, "mask_ious": ious})) + "\n");
                samples.push(s);
            }
            let r = res_scores(&samples);
            json!({"task": "res", "samples": r.num_samples,
                   "mean_iou": r.mean_iou_label_matched, "mean_iou_any_label": r.mean_iou_any_label,
                   "cumulative_iou": r.cumulative_iou_label_matched,
                   "cumulative_iou_any_label": r.cumulative_iou_any_label})
        }
        EvalTask::Ovd => {
            let images: Vec<OvdImage> = evaluated
                .iter()
                .map(|e| OvdImage {
                    record: &e.record.record,
                    width: e.record.width,
                    height: e.record.height,
                })
                .collect();
            let report = evaluate_ovd(&images, &object_lines, "the generated predictions")
                .with_context(|| format!("{}: OVD evaluation", args.data.display()))?;
            for e in &evaluated {
                let gt = e.record.record.objects.len();
                lines += &(sample_line(e, json!({"gt_objects": gt})) + "\n");
            }
            report.to_json()
        }
        EvalTask::Ric => {
            let images: &[RicImage] = ric_images.as_deref().unwrap_or_default();
            let mut pairs = Vec::with_capacity(images.len());
            for (e, image) in evaluated.iter().zip(images) {
                let caption = generated_caption(&e.completion);
                lines += &(sample_line(
                    e,
                    json!({"caption": caption, "references": image.references}),
                ) + "\n");
                pairs.push((caption, image.references.clone()));
            }
            ric_summary(&pairs, &args.data, records.len(), None)?
        }
    };
    Ok(EvalReport {
        summary,
        predictions_jsonl: lines,
        results_jsonl: results,
    })
}

/// The first `--limit` records of the dataset with their indices, checked against the task:
/// every record must be of the task's kind (the error names the shard file and the record), a
/// referring record has exactly one object, RES needs a ground-truth mask.
/// The RIC metrics JSON: `task`, the caption scores of `(caption, references)` pairs, the
/// record count and, when scoring a prediction file, the images it had no caption for.
fn ric_summary(
    pairs: &[(String, Vec<String>)],
    data: &Path,
    records: usize,
    images_without_prediction: Option<usize>,
) -> Result<serde_json::Value> {
    let scores =
        score_captions(pairs).with_context(|| format!("{}: RIC evaluation", data.display()))?;
    let mut summary = json!({"task": "ric"});
    if let (Some(map), serde_json::Value::Object(numbers)) =
        (summary.as_object_mut(), serde_json::to_value(scores)?)
    {
        map.extend(numbers);
        map.insert("records".into(), records.into());
        if let Some(missing) = images_without_prediction {
            map.insert("images_without_prediction".into(), missing.into());
        }
    }
    Ok(summary)
}

fn read_records(
    dataset: &ShardDataset,
    data: &Path,
    task: EvalTask,
    limit: Option<usize>,
) -> Result<Vec<(usize, StoredRecord)>> {
    let want = task.record_task();
    let manifest_task = &dataset.manifest().task;
    if manifest_task != "mixed" && manifest_task != want.as_str() {
        bail!(
            "{}: the shards hold {manifest_task} records (manifest.json); --task {} needs {} \
             records",
            data.display(),
            task.name(),
            want.as_str()
        );
    }
    let limit = limit.unwrap_or(usize::MAX);
    let mut records = Vec::new();
    for (index, item) in dataset.iter().take(limit).enumerate() {
        let item = item.with_context(|| format!("{}: reading a shard", data.display()))?;
        let id = item.record.id;
        if item.record.task != want {
            let shard = dataset
                .locate(index as u64)
                .map(|(k, _)| dataset.shard_path(k).display().to_string())
                .unwrap_or_else(|_| data.display().to_string());
            bail!(
                "{shard}: record {index} (image {id}) is a {} record; --task {} needs {} records",
                item.record.task.as_str(),
                task.name(),
                want.as_str()
            );
        }
        if want == Task::Refering && item.record.objects.len() != 1 {
            bail!(
                "record {id}: a referring record has exactly one object, this one has {}",
                item.record.objects.len()
            );
        }
        if task == EvalTask::Res && item.record.objects[0].rle.is_none() {
            bail!("record {id}: --task res needs a ground-truth mask");
        }
        records.push((index, item));
    }
    if records.is_empty() {
        bail!("{}: no record to evaluate", data.display());
    }
    Ok(records)
}

/// Ground truth `[x1, y1, x2, y2]` (normalised) → `[x, y, w, h]` whole pixels of the original
/// image, rounded as `eval_refcoco.py` does.
fn gt_xywh(item: &StoredRecord) -> [f64; 4] {
    record_box_pixels(item.record.objects[0].bbox, item.width, item.height)
}

fn rec_sample(e: &Evaluated) -> RecSample {
    RecSample {
        sentence: e.record.record.objects[0].label.clone(),
        gt_bbox: gt_xywh(&e.record),
        predictions: e
            .objects
            .iter()
            .map(|o| BoxPrediction {
                label: o.label.clone().unwrap_or_default(),
                bbox: o.bbox,
            })
            .collect(),
    }
}

fn res_sample(e: &Evaluated) -> Result<ResSample> {
    let id = e.record.record.id;
    let gt = e.record.record.objects[0]
        .rle
        .as_ref()
        .context("ground-truth mask")?;
    let gt = Rle::from_string(&gt.counts, gt.size[0], gt.size[1])
        .map_err(|err| anyhow::anyhow!("record {id}: ground-truth mask: {err}"))?;
    let gt_bits: Vec<bool> = gt.decode_row_major().into_iter().map(|b| b != 0).collect();
    let mut predictions = Vec::new();
    for o in &e.objects {
        let Some(mask) = &o.mask else {
            bail!("record {id}: the checkpoint has no mask head (use --task rec)");
        };
        let bits: Vec<bool> = mask
            .decode_row_major()
            .into_iter()
            .map(|b| b != 0)
            .collect();
        let overlap =
            mask_overlap(&bits, &gt_bits).map_err(|err| anyhow::anyhow!("record {id}: {err}"))?;
        predictions.push(MaskPrediction {
            label: o.label.clone().unwrap_or_default(),
            overlap,
        });
    }
    Ok(ResSample {
        sentence: e.record.record.objects[0].label.clone(),
        gt_pixels: gt.area(),
        predictions,
    })
}

fn sample_line(e: &Evaluated, extra: serde_json::Value) -> String {
    let mut v = json!({
        "image_id": e.record.record.id,
        "completion": reference_completion(&e.completion),
        "record": e.index,
        "warnings": e.warnings,
        "predictions": e.objects.iter().map(|o| json!({
            "label": o.label, "score": o.score, "bbox": o.bbox,
        })).collect::<Vec<_>>(),
    });
    if let (Some(map), serde_json::Value::Object(extra)) = (v.as_object_mut(), extra) {
        map.extend(extra);
    }
    v.to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScoreTask {
    /// COCO bbox AP/AR of a results file (per-object lines).
    Ovd,
    /// Caption metrics of a predictions file (per-record lines with `completion`).
    Ric,
}

#[derive(Args)]
pub struct ScoreArgs {
    /// Shard dataset folder (the ground truth).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_enum)]
    pub task: ScoreTask,
    /// OVD: per-object lines `{image_id, score, category, bbox, …}` (`padt-eval run --results`
    /// or the reference's `*_pred_results_*.json`).
    #[arg(long, required_if_eq("task", "ovd"))]
    pub results: Option<PathBuf>,
    /// RIC: per-record lines `{image_id, completion, …}` (`padt-eval run --predictions` or the
    /// reference's `*_pred_comp_*.json`).
    #[arg(long, required_if_eq("task", "ric"))]
    pub predictions: Option<PathBuf>,
    /// Write the metrics JSON here (it is printed on stdout too).
    #[arg(long)]
    pub metrics: Option<PathBuf>,
}

/// `padt-eval score`: scores prediction files (ours or the reference's) against shard records,
/// no model involved.
pub fn score(args: &ScoreArgs) -> Result<()> {
    let dataset = ShardDataset::open(&args.data)
        .with_context(|| format!("{}: cannot open the shard dataset", args.data.display()))?;
    let summary = match args.task {
        ScoreTask::Ovd => {
            let records = read_records(&dataset, &args.data, EvalTask::Ovd, None)?;
            let path = args
                .results
                .as_ref()
                .context("--task ovd needs --results")?;
            let lines = padt_eval::prediction_lines::read_object_lines(path)?;
            let images: Vec<OvdImage> = records
                .iter()
                .map(|(_, r)| OvdImage {
                    record: &r.record,
                    width: r.width,
                    height: r.height,
                })
                .collect();
            evaluate_ovd(&images, &lines, &path.display().to_string())
                .with_context(|| format!("{}: OVD evaluation", args.data.display()))?
                .to_json()
        }
        ScoreTask::Ric => {
            let records = read_records(&dataset, &args.data, EvalTask::Ric, None)?;
            let path = args
                .predictions
                .as_ref()
                .context("--task ric needs --predictions")?;
            let completions = read_completions(path)?;
            let images = group_by_image(records.iter().map(|(_, r)| &r.record))?;
            let mut missing = 0usize;
            let pairs: Vec<(String, Vec<String>)> = images
                .iter()
                .map(|image| {
                    let caption = match completions.get(&image.image_id) {
                        Some(c) => generated_caption(c),
                        None => {
                            missing += 1;
                            String::new()
                        }
                    };
                    (caption, image.references.clone())
                })
                .collect();
            ric_summary(&pairs, &args.data, records.len(), Some(missing))?
        }
    };
    if let Some(path) = &args.metrics {
        let text = serde_json::to_string_pretty(&summary)? + "\n";
        padt_data::shard::write_file_atomic(path, text.as_bytes())
            .with_context(|| format!("{}: writing the metrics", path.display()))?;
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// Per-record lines → the first completion of each image id.
fn read_completions(path: &Path) -> Result<std::collections::HashMap<i64, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the predictions", path.display()))?;
    let mut completions = std::collections::HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON line", path.display(), i + 1))?;
        let (Some(image_id), Some(completion)) = (
            value.get("image_id").and_then(serde_json::Value::as_i64),
            value.get("completion").and_then(serde_json::Value::as_str),
        ) else {
            bail!(
                "{}:{}: a prediction line needs an integer \"image_id\" and a string \
                 \"completion\"",
                path.display(),
                i + 1
            );
        };
        completions
            .entry(image_id)
            .or_insert_with(|| completion.to_string());
    }
    Ok(completions)
}
