//! Can the PaDT decoder learn to regress boxes on its own? A diagnostic for the CPU demo.
//!
//! Synthetic inputs at the demo's sizes (112-px images: 8 × 8 ViT patches, 4 × 4 merged
//! tokens): every merged cell has a fixed random "prototype" vector, an object is a rectangle of
//! cells, its 5 VRT features are the prototypes of 5 of its cells, and its target box is the
//! rectangle. If the decoder can read positions from the prototypes it sees, the box IoU rises.
//!
//! `cargo run --release -p padt-train --example decoder_probe -- [steps] [lr] [objects] [noise|zero] [init_std]`

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use padt_model::decoder::{DecoderInput, PadtDecoder, PadtDecoderConfig};
use padt_model::qwen2_5_vl::rope::vision_rotary_tables;
use padt_train::loss::{box_losses, GtBoxes};

type B = Autodiff<Flex>;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        ((self.next() as u128 * n as u128) >> 64) as usize
    }
    fn normal(&mut self) -> f32 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64 + 1e-12;
        let v = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let steps: usize = args.get(1).map_or(300, |s| s.parse().unwrap());
    let lr: f64 = args.get(2).map_or(1e-3, |s| s.parse().unwrap());
    let objects: usize = args.get(3).map_or(16, |s| s.parse().unwrap());
    let noise = args.get(4).is_some_and(|s| s == "noise");
    let init_std: f64 = args.get(5).map_or(0.02, |s| s.parse().unwrap());
    let device = Default::default();
    let (llm, grid, merged) = (128usize, 8usize, 4usize);
    let config = PadtDecoderConfig {
        hidden_size: 64,
        intermediate_size: 128,
        num_heads: 4,
        llm_hidden_state: llm,
        ..PadtDecoderConfig::reference(llm)
    };
    let mut decoder = PadtDecoder::<B>::new(&config, init_std, &device);
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let mut rng = Rng(7);
    // Fixed prototypes per merged cell (the "position code" a ViT would have to provide).
    let cell_code: Vec<Vec<f32>> = (0..merged * merged)
        .map(|_| (0..llm).map(|_| rng.normal()).collect())
        .collect();
    let (cos, sin) = vision_rotary_tables(&[[1, grid, grid]], 2, 16);
    for step in 1..=steps {
        let mut feats = Vec::new();
        let mut protos = Vec::new();
        let mut high = Vec::new();
        let mut cos_all = Vec::new();
        let mut sin_all = Vec::new();
        let mut boxes = Vec::new();
        for _ in 0..objects {
            // A rectangle of merged cells.
            let (r0, c0) = (rng.below(merged), rng.below(merged));
            let (r1, c1) = (r0 + rng.below(merged - r0), c0 + rng.below(merged - c0));
            let cells: Vec<usize> = (r0..=r1)
                .flat_map(|r| (c0..=c1).map(move |c| r * merged + c))
                .collect();
            for _ in 0..5 {
                feats.extend(&cell_code[cells[rng.below(cells.len())]]);
            }
            for code in &cell_code {
                protos.extend(code);
            }
            high.extend((0..grid * grid * 64).map(|_| if noise { rng.normal() } else { 0.0 }));
            cos_all.extend(&cos);
            sin_all.extend(&sin);
            let m = merged as f64;
            boxes.push([
                c0 as f64 / m,
                r0 as f64 / m,
                (c1 + 1) as f64 / m,
                (r1 + 1) as f64 / m,
            ]);
        }
        let t = |v: Vec<f32>, cols: usize| -> Tensor<B, 2> {
            let rows = v.len() / cols;
            Tensor::from_data(TensorData::new(v, [rows, cols]), &device)
        };
        let out = decoder
            .forward(DecoderInput {
                object_feats: t(feats, llm),
                feats_len: vec![5; objects],
                object_image: (0..objects).collect(),
                prototypes: t(protos, llm),
                high_res: t(high, 64),
                pe_cos: t(cos_all, 16),
                pe_sin: t(sin_all, 16),
                grids: vec![[1, grid, grid]; objects],
            })
            .unwrap();
        let gt = GtBoxes::from_xyxy(&boxes);
        let loss = box_losses(out.pred_boxes, out.pred_score, &gt);
        let total = loss.giou_term.clone() + loss.l1_term.clone();
        if step % 20 == 0 || step == 1 {
            let iou: f32 = loss.iou.clone().mean().into_scalar();
            let l1: f32 = loss.l1_term.clone().into_scalar();
            println!("step {step:4} l1 {l1:.4} iou {iou:.3}");
        }
        let grads = GradientsParams::from_grads(total.backward(), &decoder);
        decoder = optim.step(lr, decoder, grads);
    }
    let _ = decoder.valid();
    let _ = <B as Backend>::name(&device);
}
