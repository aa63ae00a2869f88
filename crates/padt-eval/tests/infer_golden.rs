//! Greedy generation, parsing and box/score/mask decoding against the padt-tiny inference golden
//! (`infer/`, README §D). Tolerances from the golden README: forward tensors rel 1e-5 of the
//! tensor's max |value|, logits abs 1e-4; generated ids, parsed objects, pixel boxes and RLE
//! masks exact.

use std::path::PathBuf;

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use padt_data::tokenizer::PadtTokenizer;
use padt_eval::generate::{generate, Generation, GenerationConfig, GenerationRequest, InferError};
use padt_eval::parse::{parse_completion, ParseVocab, ParsedCompletion};
use padt_eval::postprocess::decode_objects;
use padt_model::padt::PadtModel;
use padt_model::weights::{Checkpoint, LoadOptions};

type B = Flex;

const REL: f32 = 1e-5;
const LOGITS_ABS: f32 = 1e-4;
const EOS: i64 = 482;
const PAD: i64 = 480;

fn golden_dir() -> PathBuf {
    std::env::var_os("PADT_TINY_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/padt-tiny")
        })
}

struct Golden {
    ckpt: Checkpoint,
    json: serde_json::Value,
}

impl Golden {
    fn open() -> Self {
        let dir = golden_dir().join("infer");
        let json = serde_json::from_str(
            &std::fs::read_to_string(dir.join("infer.json")).expect("infer.json"),
        )
        .expect("infer.json parses");
        Self {
            ckpt: Checkpoint::open(dir.join("infer.safetensors")).expect("infer.safetensors"),
            json,
        }
    }
    fn f32(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
        let shape = self.ckpt.shape(key).expect(key).to_vec();
        (shape, self.ckpt.read_f32(key).expect(key))
    }
    fn u8(&self, key: &str) -> Vec<u8> {
        self.ckpt.raw(key).expect(key).2.to_vec()
    }
    fn i64(&self, key: &str) -> Vec<i64> {
        let (_, _, bytes) = self.ckpt.raw(key).expect(key);
        bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

fn assert_close(name: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "{name}: max abs diff {worst:.3e} (rel {:.3e})",
        worst / scale
    );
    assert!(worst <= rel * scale, "{name}: max abs diff {worst}");
}

fn to_vec<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

fn load() -> PadtModel<B> {
    PadtModel::<B>::from_pretrained(
        golden_dir().join("checkpoint"),
        &LoadOptions::default(),
        &Default::default(),
    )
    .expect("padt-tiny loads")
    .0
}

fn request(g: &Golden) -> GenerationRequest<B> {
    let (shape, pixels) = g.f32("pixel_values");
    let grid = g.i64("image_grid_thw");
    GenerationRequest {
        prompts: vec![g.i64("prompt_input_ids")],
        pixel_values: Tensor::from_data(TensorData::new(pixels, shape), &Default::default()),
        grids: vec![[grid[0] as usize, grid[1] as usize, grid[2] as usize]],
    }
}

fn run(model: &PadtModel<B>, g: &Golden, use_cache: bool) -> Generation<B> {
    let mut config = GenerationConfig::new(12, EOS, PAD);
    config.use_cache = use_cache;
    config.keep_logits = true;
    config.max_context = Some(128_000);
    generate(model, &request(g), &config).expect("generation runs")
}

fn parse(g: &Generation<B>) -> ParsedCompletion {
    let tok = PadtTokenizer::from_dir(&golden_dir().join("checkpoint"), 1024, 0).unwrap();
    parse_completion(
        &g.generated[0],
        ParseVocab {
            vocab_size: g.vocab_size as i64,
            eos_token_id: EOS,
            vrt_count: g.vrt_counts[0] as u32,
        },
        |id| tok.decode(&[id as u32], false).unwrap(),
    )
}

/// Logits with −∞ (masked VRT columns) equal, the rest within `LOGITS_ABS`.
fn assert_logits(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    let mut worst = 0f32;
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        if b.is_infinite() || a.is_infinite() {
            assert_eq!(a, b, "{name}[{i}]");
        } else {
            worst = worst.max((a - b).abs());
        }
    }
    eprintln!("{name}: max abs diff {worst:.3e}");
    assert!(worst <= LOGITS_ABS, "{name}: {worst}");
}

#[test]
fn generation_parsing_and_decoding_match_golden() {
    let g = Golden::open();
    let model = load();
    let out = run(&model, &g, true);

    // Ids, logits, hidden states.
    assert_eq!(out.generated[0], g.i64("completion_ids"));
    assert!(out.finished[0]);
    assert_eq!(out.steps, 12);
    assert_eq!(out.rope_deltas, g.i64("rope_deltas"));
    let logits: Vec<f32> = out.step_logits.clone().unwrap().concat();
    assert_logits("step_logits", &logits, &g.f32("step_logits").1);
    assert_close(
        "step_last_hidden",
        &to_vec(out.step_hidden.clone()),
        &g.f32("step_last_hidden").1,
        REL,
    );
    assert_close(
        "prefill_last_hidden",
        &to_vec(out.prefill_last_hidden.clone()),
        &g.f32("prefill_last_hidden").1,
        REL,
    );
    assert_close(
        "prototypes",
        &to_vec(out.prototypes.clone()),
        &g.f32("prototypes").1,
        REL,
    );
    let mask = g.u8("logit_mask");
    let logits0 = &out.step_logits.as_ref().unwrap()[0];
    for (i, &m) in mask.iter().enumerate() {
        // The golden mask is 1 = allowed.
        assert_eq!(
            m == 0,
            logits0[i] == f32::NEG_INFINITY,
            "logit mask column {i}"
        );
    }

    // Parsing.
    let parsed = parse(&out);
    assert_eq!(parsed.completion, g.json["completion"].as_str().unwrap());
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    assert_eq!(parsed.objects.len(), 1);
    let want_obj = &g.json["objects"][0];
    assert_eq!(
        parsed.objects[0].label.as_deref(),
        want_obj["label"].as_str()
    );
    assert_eq!(parsed.objects[0].vrts, want_obj["vrts"].as_str().unwrap());

    // Decoder outputs and pixel-space results.
    let [w, h] = [168usize, 112];
    let decoded = decode_objects(&model, &out, std::slice::from_ref(&parsed), &[(w, h)]).unwrap();
    let (feats, feats_len) = decoded.feats.clone().unwrap();
    assert_eq!(
        feats_len.iter().map(|&n| n as i64).collect::<Vec<_>>(),
        g.i64("feats_len")
    );
    assert_close("feats", &to_vec(feats), &g.f32("feats").1, REL);
    let dec = decoded.output.clone().unwrap();
    assert_close(
        "pred_boxes",
        &to_vec(dec.pred_boxes.clone()),
        &g.f32("pred_boxes_cxcywh").1,
        REL,
    );
    assert_close(
        "pred_score_logit",
        &to_vec(dec.pred_score.clone()),
        &g.f32("pred_score_logit").1,
        REL,
    );
    let (gh, gw) = dec.mask_valid_hw[0];
    assert_eq!(
        [gh as i64, gw as i64],
        [g.i64("pred_mask_valid_h")[0], g.i64("pred_mask_valid_w")[0]]
    );
    let (mshape, want_mask) = g.f32("pred_mask_logits");
    let got_mask = to_vec(dec.pred_mask.clone().unwrap());
    let mw = dec.pred_mask.as_ref().unwrap().dims()[2];
    let valid: Vec<f32> = (0..mshape[1])
        .flat_map(|r| got_mask[r * mw..r * mw + mshape[2]].to_vec())
        .collect();
    assert_close("pred_mask_logits", &valid, &want_mask, REL);
    assert_close(
        "mask_prob_upsampled",
        decoded.mask_probs[0].as_ref().unwrap(),
        &g.f32("mask_prob_upsampled").1,
        REL,
    );

    let object = &decoded.objects[0][0];
    let want_bbox: Vec<f64> = want_obj["box_xywh_pixels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(object.bbox.to_vec(), want_bbox);
    assert!((object.score - want_obj["score"].as_f64().unwrap() as f32).abs() <= 1e-6);
    let rle = object.mask.as_ref().unwrap();
    assert_eq!(rle.size(), [h as u32, w as u32]);
    assert_eq!(
        rle.to_compressed(),
        want_obj["mask_rle"]["counts"].as_str().unwrap()
    );
    assert_eq!(
        object.mask_area,
        Some(want_obj["mask_area"].as_u64().unwrap())
    );
}

#[test]
fn generation_without_cache_equals_cached_generation() {
    let g = Golden::open();
    let model = load();
    let cached = run(&model, &g, true);
    let full = run(&model, &g, false);
    assert_eq!(cached.generated, full.generated);
    assert_logits(
        "no-cache step logits",
        &full.step_logits.unwrap().concat(),
        &cached.step_logits.unwrap().concat(),
    );
    assert_close(
        "no-cache step hidden",
        &to_vec(full.step_hidden),
        &to_vec(cached.step_hidden),
        REL,
    );
}

#[test]
fn left_padded_batch_generates_each_sample_as_alone() {
    // Sample 1 = the golden prompt; sample 0 = the same with its first 5 tokens dropped (shorter,
    // so it is left-padded). Sample 1's generation must still equal the golden.
    let g = Golden::open();
    let model = load();
    let single = request(&g);
    let prompt = single.prompts[0].clone();
    let req = GenerationRequest {
        prompts: vec![prompt[5..].to_vec(), prompt],
        pixel_values: Tensor::cat(vec![single.pixel_values.clone(), single.pixel_values], 0),
        grids: vec![single.grids[0]; 2],
    };
    let config = GenerationConfig::new(12, EOS, PAD);
    let out = generate(&model, &req, &config).unwrap();
    assert_eq!(out.prompt_len, 79);
    assert_eq!(out.vrt_offsets, vec![0, 24]);
    assert_eq!(out.generated[1], g.i64("completion_ids"));
    assert!(out.generated[1][5..10]
        .iter()
        .all(|&id| (1024..1048).contains(&id)));

    // Objects of both samples decoded together: sample 1's object is the golden one.
    let tok = PadtTokenizer::from_dir(&golden_dir().join("checkpoint"), 1024, 0).unwrap();
    let parsed: Vec<ParsedCompletion> = (0..2)
        .map(|b| {
            parse_completion(
                &out.generated[b],
                ParseVocab {
                    vocab_size: 1024,
                    eos_token_id: EOS,
                    vrt_count: out.vrt_counts[b] as u32,
                },
                |id| tok.decode(&[id as u32], false).unwrap(),
            )
        })
        .collect();
    let decoded = decode_objects(&model, &out, &parsed, &[(168, 112), (168, 112)]).unwrap();
    let want = &g.json["objects"][0];
    let object = &decoded.objects[1][0];
    assert_eq!(object.sample, 1);
    assert_eq!(
        object.bbox.to_vec(),
        serde_json::from_value::<Vec<f64>>(want["box_xywh_pixels"].clone()).unwrap()
    );
    assert_eq!(
        object.mask.as_ref().unwrap().to_compressed(),
        want["mask_rle"]["counts"].as_str().unwrap()
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let g = Golden::open();
    let model = load();
    let mut config = GenerationConfig::new(12, EOS, PAD);
    config.max_context = Some(80);
    let err = generate(&model, &request(&g), &config).unwrap_err();
    assert!(
        matches!(
            err,
            InferError::ContextTooLong {
                prompt_len: 79,
                context: 80,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("79 tokens"), "{err}");

    let mut req = request(&g);
    req.grids.push([1, 2, 2]);
    let err = generate(&model, &req, &GenerationConfig::new(12, EOS, PAD)).unwrap_err();
    assert!(err.to_string().contains("one image per prompt"), "{err}");
}
