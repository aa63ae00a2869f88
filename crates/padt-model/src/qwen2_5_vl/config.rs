//! Qwen2.5-VL configuration, deserialised from Hugging Face `config.json` as published.
//!
//! Field names and defaults follow transformers 4.50 (`Qwen2_5_VLConfig`,
//! `Qwen2_5_VLVisionConfig`); unknown fields are ignored. PaDT checkpoints use the same file with
//! `architectures = ["PaDTForConditionalGeneration"]` and extra keys (`vl_decoder`, ...).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// `architectures` values this crate can build the Qwen2.5-VL part of.
pub const SUPPORTED_ARCHITECTURES: [&str; 2] = [
    "Qwen2_5_VLForConditionalGeneration",
    "PaDTForConditionalGeneration",
];

/// The vision tower (`vision_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "defaults::vision_depth")]
    pub depth: usize,
    #[serde(default = "defaults::vision_hidden")]
    pub hidden_size: usize,
    #[serde(default = "defaults::vision_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "defaults::vision_heads")]
    pub num_heads: usize,
    /// Published configs call it `in_chans`, transformers `in_channels`.
    #[serde(default = "defaults::three", alias = "in_chans")]
    pub in_channels: usize,
    /// Width of the merger output (= LLM hidden size).
    #[serde(default = "defaults::vision_out")]
    pub out_hidden_size: usize,
    #[serde(default = "defaults::fourteen")]
    pub patch_size: usize,
    #[serde(default = "defaults::two")]
    pub spatial_merge_size: usize,
    #[serde(default = "defaults::two")]
    pub temporal_patch_size: usize,
    /// Window side in pixels (112 = 4x4 merged tokens).
    #[serde(default = "defaults::window")]
    pub window_size: usize,
    /// Blocks that attend over the whole image instead of windows.
    #[serde(default = "defaults::fullatt")]
    pub fullatt_block_indexes: Vec<usize>,
    #[serde(default = "defaults::silu")]
    pub hidden_act: String,
    #[serde(default = "defaults::tokens_per_second")]
    pub tokens_per_second: f64,
    /// Standard deviation of the tower's random init (0.02 in the published configs).
    #[serde(default = "defaults::initializer_range")]
    pub initializer_range: f64,
}

/// `rope_scaling` of the language model (M-RoPE).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// Rotary frequencies per axis (t, h, w); sums to head_dim / 2.
    pub mrope_section: Vec<usize>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_type: Option<String>,
}

/// The whole model (`config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Qwen2_5VlConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub vocab_size: usize,
    #[serde(default = "defaults::rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "defaults::rope_theta")]
    pub rope_theta: f64,
    /// Standard deviation of the random init of the language model's linears and embeddings,
    /// and of the PaDT modules (transformers' `_init_weights`); 0.02 in the published configs.
    #[serde(default = "defaults::initializer_range")]
    pub initializer_range: f64,
    pub rope_scaling: RopeScaling,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "defaults::silu")]
    pub hidden_act: String,
    #[serde(default = "defaults::image_token")]
    pub image_token_id: i64,
    #[serde(default = "defaults::video_token")]
    pub video_token_id: i64,
    #[serde(default = "defaults::vision_start")]
    pub vision_start_token_id: i64,
    #[serde(default = "defaults::vision_end")]
    pub vision_end_token_id: i64,
    #[serde(default)]
    pub bos_token_id: Option<i64>,
    #[serde(default)]
    pub eos_token_id: Option<i64>,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    pub vision_config: VisionConfig,
}

mod defaults {
    pub fn vision_depth() -> usize {
        32
    }
    pub fn vision_hidden() -> usize {
        3584
    }
    pub fn vision_intermediate() -> usize {
        3420
    }
    pub fn vision_heads() -> usize {
        16
    }
    pub fn vision_out() -> usize {
        3584
    }
    pub fn three() -> usize {
        3
    }
    pub fn two() -> usize {
        2
    }
    pub fn fourteen() -> usize {
        14
    }
    pub fn window() -> usize {
        112
    }
    pub fn fullatt() -> Vec<usize> {
        vec![7, 15, 23, 31]
    }
    pub fn silu() -> String {
        "silu".into()
    }
    pub fn initializer_range() -> f64 {
        crate::layers::INIT_STD
    }
    pub fn tokens_per_second() -> f64 {
        4.0
    }
    pub fn rms_eps() -> f64 {
        1e-6
    }
    pub fn rope_theta() -> f64 {
        1_000_000.0
    }
    pub fn image_token() -> i64 {
        151_655
    }
    pub fn video_token() -> i64 {
        151_656
    }
    pub fn vision_start() -> i64 {
        151_652
    }
    pub fn vision_end() -> i64 {
        151_653
    }
}

impl Qwen2_5VlConfig {
    /// Reads and validates a Hugging Face `config.json` (or the directory holding it).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join("config.json");
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_json_str(&text, &path)
    }

    /// Parses and validates config JSON; `origin` names the source in errors.
    pub fn from_json_str(text: &str, origin: impl AsRef<Path>) -> Result<Self> {
        let origin = origin.as_ref();
        // Check the architecture before the fields, so another model's config gets the clear error.
        let raw: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ModelError::Config {
                path: origin.to_path_buf(),
                message: e.to_string(),
            })?;
        let architectures: Vec<String> = raw
            .get("architectures")
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let model_type = raw
            .get("model_type")
            .and_then(|m| m.as_str())
            .map(str::to_string);
        let arch_ok = architectures
            .iter()
            .any(|a| SUPPORTED_ARCHITECTURES.contains(&a.as_str()));
        let type_ok = model_type.as_deref().is_none_or(|t| t == "qwen2_5_vl");
        if !arch_ok || !type_ok {
            return Err(ModelError::UnknownArchitecture {
                path: origin.to_path_buf(),
                found: architectures,
                model_type,
                supported: SUPPORTED_ARCHITECTURES.to_vec(),
            });
        }
        let config: Self = serde_json::from_value(raw).map_err(|e| ModelError::Config {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| ModelError::Config {
            path: origin.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Published `Qwen/Qwen2.5-VL-3B-Instruct` config.
    pub fn qwen2_5_vl_3b() -> Self {
        Self::from_json_str(QWEN2_5_VL_3B_CONFIG, "<built-in Qwen2.5-VL-3B-Instruct>")
            .expect("built-in config is valid")
    }

    /// Published `Qwen/Qwen2.5-VL-7B-Instruct` config.
    pub fn qwen2_5_vl_7b() -> Self {
        Self::from_json_str(QWEN2_5_VL_7B_CONFIG, "<built-in Qwen2.5-VL-7B-Instruct>")
            .expect("built-in config is valid")
    }

    /// Head dimension of the language model.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let v = &self.vision_config;
        if self.hidden_act != "silu" || v.hidden_act != "silu" {
            return Err(format!(
                "hidden_act must be \"silu\" (got {:?} / vision {:?})",
                self.hidden_act, v.hidden_act
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
            || !self.head_dim().is_multiple_of(2)
        {
            return Err(format!(
                "hidden_size {} must split into num_attention_heads {} of even size",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "num_attention_heads {} must be a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        let sections: usize = self.rope_scaling.mrope_section.iter().sum();
        if self.rope_scaling.mrope_section.len() != 3 || sections * 2 != self.head_dim() {
            return Err(format!(
                "rope_scaling.mrope_section {:?} must have 3 entries summing to head_dim/2 = {}",
                self.rope_scaling.mrope_section,
                self.head_dim() / 2
            ));
        }
        if v.num_heads == 0
            || !v.hidden_size.is_multiple_of(v.num_heads)
            || !(v.hidden_size / v.num_heads).is_multiple_of(4)
        {
            return Err(format!(
                "vision hidden_size {} must split into num_heads {} of a size divisible by 4",
                v.hidden_size, v.num_heads
            ));
        }
        let unit = v.spatial_merge_size * v.patch_size;
        if v.spatial_merge_size == 0
            || v.patch_size == 0
            || !v.window_size.is_multiple_of(unit)
            || v.window_size == 0
        {
            return Err(format!(
                "vision window_size {} must be a positive multiple of spatial_merge_size*patch_size = {unit}",
                v.window_size
            ));
        }
        if let Some(&bad) = v.fullatt_block_indexes.iter().find(|&&i| i >= v.depth) {
            return Err(format!(
                "vision fullatt_block_indexes entry {bad} is not below depth {}",
                v.depth
            ));
        }
        Ok(())
    }
}

/// `config.json` of `Qwen/Qwen2.5-VL-3B-Instruct` (as published on the Hugging Face hub).
pub const QWEN2_5_VL_3B_CONFIG: &str = r#"{
  "architectures": ["Qwen2_5_VLForConditionalGeneration"],
  "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
  "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
  "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 2048,
  "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 128000,
  "max_window_layers": 70, "model_type": "qwen2_5_vl", "num_attention_heads": 16,
  "num_hidden_layers": 36, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": true,
  "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": true,
  "use_sliding_window": false,
  "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280,
    "intermediate_size": 3420, "num_heads": 16, "in_chans": 3, "out_hidden_size": 2048,
    "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
  "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
  "vocab_size": 151936
}"#;

/// `config.json` of `Qwen/Qwen2.5-VL-7B-Instruct` (as published on the Hugging Face hub).
pub const QWEN2_5_VL_7B_CONFIG: &str = r#"{
  "architectures": ["Qwen2_5_VLForConditionalGeneration"],
  "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
  "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
  "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 3584,
  "initializer_range": 0.02, "intermediate_size": 18944, "max_position_embeddings": 128000,
  "max_window_layers": 28, "model_type": "qwen2_5_vl", "num_attention_heads": 28,
  "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": true,
  "use_sliding_window": false,
  "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280,
    "intermediate_size": 3420, "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584,
    "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
  "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
  "vocab_size": 152064
}"#;
