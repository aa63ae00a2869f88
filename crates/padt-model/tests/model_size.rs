//! Published Qwen2.5-VL sizes: the configs parse, the module tree builds lazily (no parameter
//! memory) and its parameter count equals the published models'.

use burn::backend::Flex;
use padt_model::qwen2_5_vl::config::Qwen2_5VlConfig;
use padt_model::Qwen2_5Vl;

/// Parameters from the config alone (independent of the module code).
fn analytic(c: &Qwen2_5VlConfig) -> usize {
    let v = &c.vision_config;
    let w = v.hidden_size;
    let patch = v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size;
    let block = 2 * w
        + (w * 3 * w + 3 * w)
        + (w * w + w)
        + 2 * (w * v.intermediate_size + v.intermediate_size)
        + (v.intermediate_size * w + w);
    let ctx = w * v.spatial_merge_size * v.spatial_merge_size;
    let vision = w * patch
        + v.depth * block
        + w
        + (ctx * ctx + ctx)
        + (ctx * v.out_hidden_size + v.out_hidden_size);
    let h = c.hidden_size;
    let kv = c.num_key_value_heads * c.head_dim();
    let layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * c.intermediate_size + 2 * h;
    let heads = if c.tie_word_embeddings { 1 } else { 2 };
    vision + heads * c.vocab_size * h + c.num_hidden_layers * layer + h
}

#[test]
fn qwen2_5_vl_3b_has_the_published_parameter_count() {
    let config = Qwen2_5VlConfig::qwen2_5_vl_3b();
    let model = Qwen2_5Vl::<Flex>::new(&config, &Default::default());
    assert!(model.lm_head.is_none());
    assert_eq!(analytic(&config), 3_754_622_976);
    assert_eq!(model.num_params_lazy(), 3_754_622_976);
}

#[test]
fn qwen2_5_vl_7b_has_the_published_parameter_count() {
    let config = Qwen2_5VlConfig::qwen2_5_vl_7b();
    let model = Qwen2_5Vl::<Flex>::new(&config, &Default::default());
    assert!(model.lm_head.is_some());
    assert_eq!(analytic(&config), 8_292_166_656);
    assert_eq!(model.num_params_lazy(), 8_292_166_656);
}
