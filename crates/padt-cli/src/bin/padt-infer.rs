//! `padt-infer`: run a PaDT checkpoint on one image and one prompt.
//!
//! Greedy generation with KV cache, VRT parsing, and the decoder's boxes, scores and masks in
//! pixels of the original image. Prints the completion and the objects; with `--out DIR` writes
//! `DIR/result.json` and `DIR/result.png` (masks, boxes and `label score` tags drawn).
//! See docs/inference.md.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use clap::{Parser, ValueEnum};
use padt_data::chat::{expand_image_pad_ids, ChatTemplate};
use padt_data::image::{decode_image_file, DecodeOptions, ImageProcessor, ImageProcessorConfig};
use padt_data::tokenizer::PadtTokenizer;
use padt_eval::draw::draw_png;
use padt_eval::generate::{generate, GenerationConfig, GenerationRequest};
use padt_eval::parse::{parse_completion, ParseVocab};
use padt_eval::postprocess::{decode_objects, DetectedObject};
use padt_model::padt::PadtModel;
use padt_model::weights::LoadOptions;
use serde_json::json;

type B = Flex;

#[derive(Clone, Copy, ValueEnum)]
enum Task {
    /// Referring expression: the prompt is the expression ("the cat").
    Rec,
    /// Open-vocabulary detection: the prompt is a comma-separated class list ("cat, dog").
    Ovd,
    /// Referring image captioning: no prompt needed ("Please describe this image.").
    Ric,
}

#[derive(Parser)]
#[command(name = "padt-infer", about = "Run a PaDT model on one image", version)]
struct Cli {
    /// PaDT checkpoint directory (config.json, safetensors, tokenizer files).
    #[arg(long)]
    model: PathBuf,
    /// Image file (PNG/JPEG). It is not resized beyond the processor's own smart resize.
    #[arg(long)]
    image: PathBuf,
    /// The user prompt, used verbatim unless --task builds the reference prompt from it.
    #[arg(long)]
    prompt: Option<String>,
    /// Build the reference training prompt of a task from --prompt (see docs/inference.md).
    #[arg(long, value_enum)]
    task: Option<Task>,
    /// Generation stops after this many tokens if `<|im_end|>` has not come.
    #[arg(long, default_value_t = 1024)]
    max_new_tokens: usize,
    /// Write result.json and result.png here (created if missing).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// JSON string literal as Python's `json.dumps` writes it (`ensure_ascii`: non-ASCII as
/// `\uXXXX`, surrogate pairs above the BMP).
fn py_json_string(s: &str) -> String {
    let escaped = serde_json::to_string(s).expect("strings serialise");
    let mut out = String::with_capacity(escaped.len());
    for c in escaped.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// The user prompt: verbatim, or the reference template of `task` filled with `query`.
fn build_prompt(task: Option<Task>, query: Option<&str>) -> Result<String> {
    if let (None, Some(q)) = (task, query) {
        if !q.trim().is_empty() {
            return Ok(q.to_string());
        }
    }
    let query = query.map(str::trim);
    match (task, query) {
        (None, _) => bail!("--prompt is required (or --task ric)"),
        (Some(Task::Ric), None) | (Some(Task::Ric), Some("")) => {
            Ok("Please describe this image.".into())
        }
        (Some(Task::Ric), Some(_)) => {
            bail!("--task ric takes no --prompt (its prompt is \"Please describe this image.\")")
        }
        (Some(_), None) | (Some(_), Some("")) => bail!("--task rec/ovd need a --prompt query"),
        (Some(Task::Rec), Some(q)) => Ok(format!(
            "Please carefully check the image and detect the object this sentence describes: \
             \"{q}\"."
        )),
        (Some(Task::Ovd), Some(q)) => {
            let names: Vec<String> = q
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(py_json_string)
                .collect();
            if names.is_empty() {
                bail!("--task ovd: no class name in {q:?}");
            }
            Ok(format!(
                "Please carefully check the image and detect the following objects: [{}].",
                names.join(", ")
            ))
        }
    }
}

/// Reads what `padt-infer` needs from `config.json` before loading weights, with a clear error
/// for a directory that is not a Qwen2.5-VL / PaDT checkpoint.
fn read_model_config(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read the model config", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let archs: Vec<&str> = value
        .get("architectures")
        .and_then(|a| a.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let known = [
        "PaDTForConditionalGeneration",
        "Qwen2_5_VLForConditionalGeneration",
    ];
    if !archs.iter().any(|a| known.contains(a)) {
        bail!(
            "{}: architectures {:?} is not a PaDT model (expected one of {:?})",
            path.display(),
            archs,
            known
        );
    }
    Ok(value)
}

/// Writes `bytes` to `path` through a temporary file in the same folder (no half-written file).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("{}: cannot create a temporary file", dir.display()))?;
    std::io::Write::write_all(&mut tmp, bytes)
        .with_context(|| format!("{}: write failed", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("{}: cannot move the result into place", path.display()))?;
    Ok(())
}

fn object_json(o: &DetectedObject) -> serde_json::Value {
    json!({
        "label": o.label,
        "vrts": o.vrts,
        "patches": o.patches,
        "score": o.score,
        "score_logit": o.score_logit,
        "box_cxcywh_norm": o.box_cxcywh,
        "box_xywh_norm_clipped": o.box_xywh_norm,
        "bbox": o.bbox,
        "mask_rle": o.mask.as_ref().map(|m| json!({"size": m.size(), "counts": m.to_compressed()})),
        "mask_area": o.mask_area,
    })
}

fn main() -> Result<()> {
    if let Some(warning) = padt_cli::compute::init_compute_threads() {
        eprintln!("padt-infer: warning: {warning}");
    }
    let cli = Cli::parse();
    let prompt = build_prompt(cli.task, cli.prompt.as_deref())?;
    if cli.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    let config = read_model_config(&cli.model)?;
    let device = Default::default();

    // Image first: a bad image should not cost a model load.
    let decoded = decode_image_file(&cli.image, &DecodeOptions::default())
        .with_context(|| format!("{}: cannot read the image", cli.image.display()))?;
    let (width, height) = (decoded.rgb.width, decoded.rgb.height);
    let pre_path = cli.model.join("preprocessor_config.json");
    let pre = if pre_path.is_file() {
        ImageProcessorConfig::from_json_file(&pre_path)?
    } else {
        ImageProcessorConfig::default()
    };
    let processed = ImageProcessor::new(pre)?
        .preprocess(&decoded.rgb)
        .with_context(|| format!("{}: the image processor refused it", cli.image.display()))?;

    let (model, _) = PadtModel::<B>::from_pretrained(&cli.model, &LoadOptions::default(), &device)
        .with_context(|| format!("{}: cannot load the PaDT checkpoint", cli.model.display()))?;
    let vocab = model.vocab_size();
    let tokenizer = PadtTokenizer::from_dir(&cli.model, vocab as u32, 0)
        .with_context(|| format!("{}: cannot load the tokenizer", cli.model.display()))?;
    let template = ChatTemplate::for_tokenizer(&tokenizer)?;
    let rendered = template.render_padt_prompt(&prompt)?;
    let merge = model.qwen.config.vision_config.spatial_merge_size;
    let merged = processed.num_merged_tokens(merge);
    let ids = tokenizer.encode(&rendered)?;
    let ids = expand_image_pad_ids(&ids, tokenizer.special_ids().image_pad, &[merged])
        .context("the prompt must not contain <|image_pad|> itself")?;
    let eos = tokenizer.special_ids().eos as i64;
    let pad = config
        .get("pad_token_id")
        .and_then(|v| v.as_i64())
        .unwrap_or(tokenizer.special_ids().pad as i64);

    let mut gen_config = GenerationConfig::new(cli.max_new_tokens, eos, pad);
    gen_config.max_context = config
        .get("max_position_embeddings")
        .and_then(|v| v.as_u64())
        .map(|n| n as usize);
    let pixel_values = Tensor::<B, 2>::from_data(
        TensorData::new(
            processed.pixel_values.clone(),
            [processed.num_patches, processed.patch_dim],
        ),
        &device,
    );
    let request = GenerationRequest {
        prompts: vec![ids.iter().map(|&id| id as i64).collect()],
        pixel_values,
        grids: vec![processed.grid_thw],
    };
    let generation = generate(&model, &request, &gen_config)?;
    let parsed = parse_completion(
        &generation.generated[0],
        ParseVocab {
            vocab_size: vocab as i64,
            eos_token_id: eos,
            vrt_count: generation.vrt_counts[0] as u32,
        },
        |id| tokenizer.decode(&[id as u32], false).unwrap_or_default(),
    );
    let decoded_objects = decode_objects(
        &model,
        &generation,
        std::slice::from_ref(&parsed),
        &[(width, height)],
    )?;
    let objects = &decoded_objects.objects[0];

    println!("completion: {}", parsed.completion);
    for w in &parsed.warnings {
        eprintln!("warning: {w}");
    }
    for (i, o) in objects.iter().enumerate() {
        println!(
            "object {i}: label {:?} score {:.4} bbox xywh [{}, {}, {}, {}] mask area {}",
            o.label.as_deref().unwrap_or(""),
            o.score,
            o.bbox[0],
            o.bbox[1],
            o.bbox[2],
            o.bbox[3],
            o.mask_area.map_or("-".to_string(), |a| a.to_string()),
        );
    }

    if let Some(out) = &cli.out {
        std::fs::create_dir_all(out)
            .with_context(|| format!("{}: cannot create the output folder", out.display()))?;
        let result = json!({
            "model": cli.model,
            "image": cli.image,
            "image_size_wh": [width, height],
            "processed_size_wh": [processed.resized_hw.1, processed.resized_hw.0],
            "prompt": prompt,
            "prompt_tokens": ids.len(),
            "completion": parsed.completion,
            "generated_ids": generation.generated[0],
            "finished": generation.finished[0],
            "warnings": parsed.warnings.iter().map(|w| json!({"warning": w, "message": w.to_string()})).collect::<Vec<_>>(),
            "objects": objects.iter().map(object_json).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&result)? + "\n";
        let png = draw_png(&decoded.rgb.data, width as u32, height as u32, objects)
            .context("drawing the result image")?;
        write_atomic(&out.join("result.json"), text.as_bytes())?;
        write_atomic(&out.join("result.png"), &png)?;
        println!("wrote {}/result.json and result.png", out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_prompts_match_the_reference_templates() {
        assert_eq!(
            build_prompt(Some(Task::Rec), Some("the cat")).unwrap(),
            "Please carefully check the image and detect the object this sentence describes: \
             \"the cat\"."
        );
        assert_eq!(
            build_prompt(Some(Task::Ovd), Some("person, bicycle ,café")).unwrap(),
            "Please carefully check the image and detect the following objects: [\"person\", \
             \"bicycle\", \"caf\\u00e9\"]."
        );
        assert_eq!(
            build_prompt(Some(Task::Ric), None).unwrap(),
            "Please describe this image."
        );
        assert!(build_prompt(Some(Task::Ric), Some("x")).is_err());
        assert!(build_prompt(None, None).is_err());
        // A verbatim prompt is kept as is (whitespace changes the tokens).
        assert_eq!(build_prompt(None, Some(" hi ")).unwrap(), " hi ");
    }
}
