//! Referring evaluation: generation on the records of a shard dataset, then REC Acc@0.5 or RES
//! mask IoU with the metric functions of `padt_eval::grounding_metrics` (docs/inference.md).
//! Used by `padt-eval run` (a checkpoint directory) and by `padt-train` after training (the
//! model in memory, `evaluation.*` in the recipe).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use clap::{Args, ValueEnum};
use padt_core::rle::Rle;
use padt_data::chat::{expand_image_pad_ids, ChatTemplate};
use padt_data::image::{decode_image, DecodeOptions, ImageProcessor, ImageProcessorConfig};
use padt_data::shard::{ShardDataset, StoredRecord};
use padt_data::tokenizer::PadtTokenizer;
use padt_eval::generate::{generate, GenerationConfig, GenerationRequest};
use padt_eval::grounding_metrics::{
    mask_overlap, rec_accuracy, res_scores, BoxPrediction, MaskPrediction, RecSample, ResSample,
};
use padt_eval::parse::{parse_completion, ParseVocab};
use padt_eval::postprocess::{decode_objects, DetectedObject};
use padt_model::padt::PadtModel;
use padt_model::weights::LoadOptions;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EvalTask {
    /// Acc@0.5 of the box of the prediction labelled with the sentence.
    Rec,
    /// Mean (and cumulative) mask IoU of the prediction labelled with the sentence.
    Res,
}

#[derive(Args)]
pub struct RunArgs {
    /// PaDT checkpoint directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Shard dataset folder (manifest.json + shards, docs/data.md) of referring records.
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
    /// Write per-sample results (JSON lines) here.
    #[arg(long)]
    pub predictions: Option<PathBuf>,
}

/// What to evaluate, for [`evaluate`].
#[derive(Debug, Clone)]
pub struct EvalSettings {
    /// Shard dataset folder of referring records.
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
    /// One JSON line per evaluated record (completion, warnings, predictions, ground truth).
    pub predictions_jsonl: String,
}

/// One evaluated record.
struct Evaluated {
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
    if let Some(path) = &args.predictions {
        padt_data::shard::write_file_atomic(path, report.predictions_jsonl.as_bytes())
            .with_context(|| format!("{}: writing predictions", path.display()))?;
    }
    println!("{}", serde_json::to_string(&report.summary)?);
    Ok(())
}

/// Evaluates `model` on a referring shard dataset. `tokenizer_dir` holds the tokenizer files,
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

    let limit = args.limit.unwrap_or(usize::MAX);
    let mut records = Vec::new();
    for item in dataset.iter().take(limit) {
        let item = item.with_context(|| format!("{}: reading a shard", args.data.display()))?;
        if item.record.objects.len() != 1 {
            bail!(
                "record {}: a referring record has exactly one object, this one has {}",
                item.record.id,
                item.record.objects.len()
            );
        }
        if args.task == EvalTask::Res && item.record.objects[0].rle.is_none() {
            bail!(
                "record {}: --task res needs a ground-truth mask",
                item.record.id
            );
        }
        records.push(item);
    }
    if records.is_empty() {
        bail!("{}: no record to evaluate", args.data.display());
    }

    let mut evaluated: Vec<Evaluated> = Vec::with_capacity(records.len());
    for chunk in records.chunks(args.batch_size) {
        let mut prompts = Vec::new();
        let mut pixels = Vec::new();
        let mut grids = Vec::new();
        let mut sizes = Vec::new();
        for item in chunk {
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
                record: item.clone(),
                completion: p.completion.clone(),
                warnings: p.warnings.iter().map(ToString::to_string).collect(),
                objects,
            });
        }
        eprintln!("{} / {} records", evaluated.len(), records.len());
    }

    let mut lines = String::new();
    let summary = match args.task {
        EvalTask::Rec => {
            let samples: Vec<RecSample> = evaluated.iter().map(rec_sample).collect();
            for (e, s) in evaluated.iter().zip(&samples) {
                lines += &(sample_line(e, json!({"gt_bbox": s.gt_bbox})) + "\n");
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
                lines += &(sample_line(e, json!({"mask_ious": ious})) + "\n");
                samples.push(s);
            }
            let r = res_scores(&samples);
            json!({"task": "res", "samples": r.num_samples,
                   "mean_iou": r.mean_iou_label_matched, "mean_iou_any_label": r.mean_iou_any_label,
                   "cumulative_iou": r.cumulative_iou_label_matched,
                   "cumulative_iou_any_label": r.cumulative_iou_any_label})
        }
    };
    Ok(EvalReport {
        summary,
        predictions_jsonl: lines,
    })
}

/// Ground truth `[x1, y1, x2, y2]` (normalised) → `[x, y, w, h]` pixels of the original image.
fn gt_xywh(item: &StoredRecord) -> [f64; 4] {
    let [x1, y1, x2, y2] = item.record.objects[0].bbox;
    let (w, h) = (item.width as f64, item.height as f64);
    [x1 * w, y1 * h, (x2 - x1) * w, (y2 - y1) * h]
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
        "id": e.record.record.id,
        "sentence": e.record.record.objects[0].label,
        "completion": e.completion,
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
