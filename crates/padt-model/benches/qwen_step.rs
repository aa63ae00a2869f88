//! CPU timings of the Qwen2.5-VL modules on Flex (forward) and `Autodiff<Flex>` (forward +
//! backward): the padt-tiny model on its golden batch, one 3B-shaped decoder layer, and a
//! 3B-shaped two-block vision tower (one window block, one full-attention block).
//!
//! `cargo bench -p padt-model --bench qwen_step` (release). Reports go to `bench/model/`.

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{backend::Backend, Distribution, Tensor, TensorData};
use padt_model::qwen2_5_vl::model::Qwen2_5VlInput;
use padt_model::qwen2_5_vl::rope::MropePositions;
use padt_model::qwen2_5_vl::text::TextModel;
use padt_model::qwen2_5_vl::vision::VisionTransformer;
use padt_model::weights::{Checkpoint, LoadOptions};
use padt_model::{Qwen2_5Vl, Qwen2_5VlConfig};

type AD = Autodiff<Flex>;

/// Runs `f` once to warm up, then `reps` times; returns (min, mean) milliseconds.
fn time(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut all = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        f();
        all.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let min = all.iter().copied().fold(f64::INFINITY, f64::min);
    (min, all.iter().sum::<f64>() / reps as f64)
}

fn report(name: &str, (min, mean): (f64, f64)) {
    println!("| {name} | {min:.1} | {mean:.1} |");
}

fn golden_dir() -> PathBuf {
    std::env::var_os("PADT_TINY_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/padt-tiny")
        })
}

fn tiny_input<B: Backend>() -> (Qwen2_5VlInput<B>, Vec<(usize, usize)>) {
    let batch = Checkpoint::open(golden_dir().join("batch.safetensors")).unwrap();
    let ints = |key: &str| -> (Vec<usize>, Vec<i64>) {
        let (_, shape, bytes) = batch.raw(key).unwrap();
        let values = bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (shape.to_vec(), values)
    };
    let (shape, ids) = ints("input_ids");
    let len = shape[1];
    let input_ids: Vec<Vec<i64>> = ids
        .chunks(len)
        .map(|r| r.iter().map(|&i| if i >= 1024 { 480 } else { i }).collect())
        .collect();
    let attention_mask = ints("attention_mask")
        .1
        .chunks(len)
        .map(|r| r.iter().map(|&m| m == 1).collect())
        .collect();
    let grids = ints("image_grid_thw")
        .1
        .chunks(3)
        .map(|g| [g[0] as usize, g[1] as usize, g[2] as usize])
        .collect();
    let pixels = batch.read_f32("pixel_values").unwrap();
    let n = pixels.len() / 1176;
    let device = Default::default();
    let at = (0..2)
        .flat_map(|b| (85..len - 1).map(move |l| (b, l)))
        .collect();
    (
        Qwen2_5VlInput {
            input_ids,
            attention_mask,
            pixel_values: Some(Tensor::from_data(
                TensorData::new(pixels, [n, 1176]),
                &device,
            )),
            image_grid_thw: grids,
        },
        at,
    )
}

fn main() {
    let device = Default::default();
    let extra = LoadOptions {
        extra_prefixes: vec!["vis_norm".into(), "vis_proj".into(), "vl_decoder".into()],
        ..Default::default()
    };
    println!("| what | min ms | mean ms |");
    println!("| --- | --- | --- |");

    // padt-tiny on its golden batch (2 images, 172 patches, 2 x 122 tokens).
    let ckpt = golden_dir().join("checkpoint");
    let (tiny, _) = Qwen2_5Vl::<Flex>::from_pretrained(&ckpt, &extra, &device).unwrap();
    let (input, at) = tiny_input::<Flex>();
    report(
        "padt-tiny forward (ViT + LLM + logits), Flex",
        time(10, || {
            let out = tiny.forward(&input, &at, None, false, &device).unwrap();
            let _ = out.logits.unwrap().into_data();
        }),
    );
    let (tiny_ad, _) = Qwen2_5Vl::<AD>::from_pretrained(&ckpt, &extra, &device).unwrap();
    let (input_ad, at) = tiny_input::<AD>();
    report(
        "padt-tiny forward + backward, Autodiff<Flex>",
        time(10, || {
            let out = tiny_ad
                .forward(&input_ad, &at, None, false, &device)
                .unwrap();
            out.logits.unwrap().mean().backward();
        }),
    );

    // One 3B-shaped decoder layer (hidden 2048, 16/2 heads, MLP 11008), batch 1 x 512 tokens.
    let mut config = Qwen2_5VlConfig::qwen2_5_vl_3b();
    config.num_hidden_layers = 1;
    let seq = 512;
    let positions = MropePositions::text(1, seq, &[0]);
    let layer = TextModel::<AD>::new(&config, &device);
    let x = Tensor::<AD, 3>::random([1, seq, 2048], Distribution::Normal(0.0, 1.0), &device);
    // Parameters are initialised lazily, during the warm-up run that `time` excludes.
    let layer_flex = TextModel::<Flex>::new(&config, &device);
    let x_flex = Tensor::<Flex, 3>::random([1, seq, 2048], Distribution::Normal(0.0, 1.0), &device);
    report(
        "3B decoder layer forward, 1 x 512 tokens, Flex",
        time(3, || {
            let out = layer_flex
                .forward(x_flex.clone(), &positions, None, None, false)
                .unwrap();
            let _ = out.last_hidden.into_data();
        }),
    );
    report(
        "3B decoder layer forward + backward, 1 x 512 tokens, Autodiff<Flex>",
        time(3, || {
            let out = layer
                .forward(x.clone(), &positions, None, None, false)
                .unwrap();
            out.last_hidden.mean().backward();
        }),
    );

    // 3B-shaped vision tower with two blocks (window + full), a 448 x 448 image (1024 patches).
    let mut vision = config.vision_config.clone();
    vision.depth = 2;
    vision.fullatt_block_indexes = vec![1];
    let tower = VisionTransformer::<AD>::new(&vision, &device);
    let pixels = Tensor::<AD, 2>::random([1024, 1176], Distribution::Normal(0.0, 1.0), &device);
    report(
        "3B ViT, 2 blocks (window + full), 1024 patches, forward + backward, Autodiff<Flex>",
        time(3, || {
            let out = tower
                .forward(pixels.clone(), &[[1, 32, 32]], false)
                .unwrap();
            out.merged_embeds.mean().backward();
        }),
    );
}
