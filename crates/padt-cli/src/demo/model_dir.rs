//! The demo's model folder: `config.json` of a tiny PaDT sized to learn the synthetic task on
//! CPU, the tokenizer and processor files of the padt-tiny fixture with the BPE merges re-learned
//! on the demo's text (`demo/tokenizer.rs`; 1024 embedding rows, encodes any text), and
//! optionally seeded random weights (`model.safetensors`).

use super::refer::write_atomic;
use anyhow::Context;
use padt_model::padt::{padt_key_renames, PadtConfig, PadtModel};
use padt_model::weights::{export_module, ExportOptions};
use serde_json::{json, Value};
use std::path::Path;

/// Tokenizer and processor files copied verbatim from `tests/fixtures/padt-tiny/checkpoint`.
pub const TOKENIZER_FILES: [(&str, &[u8]); 9] = {
    macro_rules! fixture {
        ($name:literal) => {
            (
                $name,
                include_bytes!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../tests/fixtures/padt-tiny/checkpoint/",
                    $name
                )) as &[u8],
            )
        };
    }
    [
        fixture!("added_tokens.json"),
        fixture!("chat_template.json"),
        fixture!("generation_config.json"),
        fixture!("merges.txt"),
        fixture!("preprocessor_config.json"),
        fixture!("special_tokens_map.json"),
        fixture!("tokenizer.json"),
        fixture!("tokenizer_config.json"),
        fixture!("vocab.json"),
    ]
};

/// LLM width.
pub const LLM_HIDDEN: usize = 128;
/// LLM decoder layers.
pub const LLM_LAYERS: usize = 3;
/// ViT width (= the PaDT decoder's width).
pub const VIT_HIDDEN: usize = 64;
/// ViT blocks.
pub const VIT_DEPTH: usize = 2;
/// ViT heads (head dim 16; the PaDT decoder uses the same head dim).
pub const VIT_HEADS: usize = 4;

/// Standard deviation of the demo model's random init (`initializer_range`). The published
/// 0.02 suits widths in the thousands; at width 64–128 it leaves the box head learning so slowly
/// that ten CPU minutes are not enough (docs/demo.md: 0.1 trained the probe decoder twice as
/// fast, and the demo to 0.20 REC Acc@0.5 against 0.04 at 0.02, 0.14 at 0.05, 0 at 0.2).
pub const INIT_STD: f64 = 0.1;

/// `config.json`: a Qwen2.5-VL-shaped model with a `vl_decoder` section. Token ids are those
/// of the padt-tiny tokenizer.
pub fn config_json() -> Value {
    json!({
        "architectures": ["PaDTForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": 480,
        "eos_token_id": 482,
        "hidden_act": "silu",
        "hidden_size": LLM_HIDDEN,
        "image_token_id": 492,
        "initializer_range": INIT_STD,
        "intermediate_size": 2 * LLM_HIDDEN,
        "max_position_embeddings": 128000,
        "max_window_layers": LLM_LAYERS,
        "model_type": "qwen2_5_vl",
        "num_attention_heads": 4,
        "num_hidden_layers": LLM_LAYERS,
        "num_key_value_heads": 2,
        "pad_token_id": 480,
        "rms_norm_eps": 1e-06,
        // head dim 32: 16 rotary frequencies split t/h/w like Qwen's [16, 24, 24] of 64.
        "rope_scaling": {"mrope_section": [4, 6, 6], "rope_type": "default", "type": "default"},
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": true,
        "torch_dtype": "float32",
        "transformers_version": "4.50.0",
        "use_cache": true,
        "use_sliding_window": false,
        "use_visual_prototype_projection": true,
        "video_token_id": 493,
        "vision_config": vision_config(),
        "vision_end_token_id": 490,
        "vision_start_token_id": 489,
        "vision_token_id": 491,
        "vl_decoder": vl_decoder(),
        "vocab_size": 1024
    })
}

/// The `vision_config` section of [`config_json`].
fn vision_config() -> Value {
    json!({
        "depth": VIT_DEPTH,
        "fullatt_block_indexes": [1],
        "hidden_act": "silu",
        "hidden_size": VIT_HIDDEN,
        "in_channels": 3,
        "initializer_range": INIT_STD,
        "intermediate_size": 2 * VIT_HIDDEN,
        "model_type": "qwen2_5_vl",
        "num_heads": VIT_HEADS,
        "out_hidden_size": LLM_HIDDEN,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "tokens_per_second": 2,
        // The whole 112 x 112 demo image is one window.
        "window_size": 112
    })
}

/// The `vl_decoder` section of [`config_json`]: width and head dim of the ViT.
fn vl_decoder() -> Value {
    json!({
        "attn_implementation": "flash_attention_2",
        "hidden_size": VIT_HIDDEN,
        "intermediate_size": 2 * VIT_HIDDEN,
        "llm_hidden_state": LLM_HIDDEN,
        "name": "PaDTDecoder",
        "num_heads": VIT_HEADS,
        "spatial_merge_size": 2,
        "use_mask_loss": true
    })
}

/// Writes `config.json` and the tokenizer files into `dir`, and with `weights_seed` also
/// `model.safetensors` (burn's Flex backend seeded with it, the reference initialisation).
/// Returns the parameter count of the model the config builds.
pub fn write_model_dir(dir: &Path, weights_seed: Option<u64>) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut text = serde_json::to_string_pretty(&config_json()).expect("json serialises");
    text.push('\n');
    let config_path = dir.join("config.json");
    write_atomic(&config_path, text.as_bytes())?;
    let demo_files = super::tokenizer::demo_tokenizer_files()?;
    for (name, bytes) in TOKENIZER_FILES {
        // The BPE files are the demo's own (demo/tokenizer.rs), the rest padt-tiny's.
        match demo_files.iter().find(|(demo_name, _)| *demo_name == name) {
            Some((_, demo_bytes)) => write_atomic(&dir.join(name), demo_bytes)?,
            None => write_atomic(&dir.join(name), bytes)?,
        }
    }
    type B = burn::backend::Flex;
    let device = Default::default();
    let config = PadtConfig::from_file(&config_path)
        .with_context(|| format!("reading back {}", config_path.display()))?;
    if let Some(seed) = weights_seed {
        <B as burn::tensor::backend::Backend>::seed(&device, seed);
    }
    let model = PadtModel::<B>::new(&config, &device);
    let params = burn::module::Module::num_params(&model);
    let weights = dir.join("model.safetensors");
    match weights_seed {
        Some(_) => {
            let mut options = ExportOptions::default();
            options.renames.extend(padt_key_renames());
            export_module(&model, dir, &options)
                .with_context(|| format!("writing {}", weights.display()))?;
        }
        None => {
            // A weights file of an earlier run would not belong to this folder.
            if weights.exists() {
                std::fs::remove_file(&weights)
                    .with_context(|| format!("removing {}", weights.display()))?;
            }
        }
    }
    Ok(params)
}
