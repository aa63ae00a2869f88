//! `padt-preprocess encode-sample`: one image + prompt (+ completion) encoded exactly as the
//! training pipeline encodes it, written as safetensors, with the rendered text printed — what
//! the model will see, for users debugging their data.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use padt_data::batch::{encode_sample, write_encoded_sample};

/// Arguments of `encode-sample`.
#[derive(Debug, Args)]
pub struct EncodeSampleArgs {
    /// Model or tokenizer directory (`tokenizer.json`, `tokenizer_config.json`; `config.json`
    /// gives the embedding rows V).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Image file (JPEG or PNG).
    #[arg(long)]
    pub image: PathBuf,
    /// The user prompt (the text after the image).
    #[arg(long)]
    pub prompt: String,
    /// Optional completion (answer text with `<|VRT_i|>` tokens); `<|im_end|>` is appended.
    #[arg(long)]
    pub completion: Option<String>,
    /// Smallest image area after resizing, in pixels (PaDT: 3136).
    #[arg(long, default_value_t = 3136)]
    pub min_pixels: u64,
    /// Largest image area after resizing, in pixels (PaDT: 12845056).
    #[arg(long, default_value_t = 12_845_056)]
    pub max_pixels: u64,
    /// Output safetensors file: `pixel_values` f32 [N,1176], `image_grid_thw` i64 [1,3],
    /// `input_ids` i64 [L].
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `encode-sample`.
pub fn run(args: EncodeSampleArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.image)
        .with_context(|| format!("reading image {}", args.image.display()))?;
    let sample = encode_sample(
        &args.tokenizer,
        &bytes,
        &args.prompt,
        args.completion.as_deref(),
        args.min_pixels,
        args.max_pixels,
    )
    .with_context(|| format!("encoding {}", args.image.display()))?;
    write_encoded_sample(&sample, &args.out)?;
    let grid = &sample.image_grid_thw.data;
    println!("{}", sample.rendered_text);
    eprintln!(
        "image_grid_thw [{}, {}, {}], pixel_values [{}, {}], {} input ids -> {}",
        grid[0],
        grid[1],
        grid[2],
        sample.pixel_values.shape[0],
        sample.pixel_values.shape[1],
        sample.input_ids.data.len(),
        args.out.display()
    );
    Ok(())
}
