//! padt-model: Qwen2.5-VL (and, later, the PaDT heads) as burn modules.
//!
//! Module paths equal the Hugging Face checkpoint keys (`model.layers.0.self_attn.q_proj.weight`,
//! `visual.blocks.0.attn.qkv.bias`, ...), so loading and export are a direct map; the few
//! exceptions live in [`weights::KEY_EXCEPTIONS`].
//!
//! Everything is generic over `B: Backend`; tests run on `Flex` / `Autodiff<Flex>`.

pub mod attention;
pub mod decoder;
pub mod denormals;
pub mod error;
pub mod layers;
pub mod padt;
pub mod qwen2_5_vl;
pub mod weights;

pub use error::ModelError;
pub use qwen2_5_vl::config::{Qwen2_5VlConfig, RopeScaling, VisionConfig};
pub use qwen2_5_vl::model::Qwen2_5Vl;
