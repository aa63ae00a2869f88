//! Parity of the image pipeline with the transformers 4.50 / Pillow 12.3 goldens in
//! `$PADT_DATA_GOLDEN_DIR/preprocess/` (default: the fixtures copy).
//!
//! Exact: PNG decode, PaDT's LANCZOS upscale, `resized_rgb` given `decoded_rgb`, `pixel_values`
//! given `resized_rgb`, grid and smart_resize size, and the whole path from PNG bytes.
//! Exact too with the default JPEG decoder (libjpeg-turbo, as Pillow): decoded RGB and
//! `pixel_values` from JPEG bytes.
//! Tolerance for the pure-Rust JPEG decoders (measured on these fixtures with `jpeg-decoder`
//! 0.3.2): decoded RGB max |Δ| ≤ 3 levels, mean |Δ| ≤ 0.1; `pixel_values` from JPEG bytes
//! max |Δ| ≤ 0.06, mean |Δ| ≤ 0.002 (the README allows 0.15 for any decoder).

use std::path::PathBuf;

use padt_data::image::{
    decode_image, padt_upscale, DecodeOptions, ImageProcessor, ImageProcessorConfig,
    JpegDecoderKind, RgbImage,
};
use safetensors::{Dtype, SafeTensors};

fn golden_dir() -> PathBuf {
    std::env::var_os("PADT_DATA_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data")
        })
        .join("preprocess")
}

struct Case {
    name: String,
    input: PathBuf,
    format: String,
    min_pixels: u64,
    max_pixels: u64,
    smart_resize_hw: (usize, usize),
    tensors: Vec<u8>,
}

fn cases() -> Vec<Case> {
    let dir = golden_dir();
    let text = std::fs::read_to_string(dir.join("cases.json")).expect("cases.json");
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases: Vec<Case> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let name = c["case"].as_str().unwrap().to_string();
            let hw = c["smart_resize_hw"].as_array().unwrap();
            Case {
                input: dir.join(c["input"].as_str().unwrap()),
                format: c["input_format"].as_str().unwrap().to_string(),
                min_pixels: c["processor"]["min_pixels"].as_u64().unwrap(),
                max_pixels: c["processor"]["max_pixels"].as_u64().unwrap(),
                smart_resize_hw: (
                    hw[0].as_u64().unwrap() as usize,
                    hw[1].as_u64().unwrap() as usize,
                ),
                tensors: std::fs::read(dir.join(format!("{name}.safetensors"))).unwrap(),
                name,
            }
        })
        .collect();
    assert!(cases.len() >= 11, "expected the 11 fixture cases");
    cases
}

fn rgb(st: &SafeTensors, name: &str) -> RgbImage {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::U8);
    let shape = t.shape();
    assert_eq!(shape[2], 3);
    RgbImage::from_raw(shape[1], shape[0], t.data().to_vec()).unwrap()
}

fn f32s(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::F32);
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (t.shape().to_vec(), v)
}

fn grid(st: &SafeTensors) -> [usize; 3] {
    let t = st.tensor("image_grid_thw").unwrap();
    assert_eq!(t.dtype(), Dtype::I64);
    let v: Vec<usize> = t
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize)
        .collect();
    [v[0], v[1], v[2]]
}

fn processor(case: &Case) -> ImageProcessor {
    ImageProcessor::new(ImageProcessorConfig {
        min_pixels: case.min_pixels,
        max_pixels: case.max_pixels,
        ..ImageProcessorConfig::default()
    })
    .unwrap()
}

fn bits_equal(a: &[f32], b: &[f32]) -> usize {
    a.iter()
        .zip(b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count()
}

#[test]
fn resize_is_bit_exact_given_decoded_rgb() {
    for case in cases() {
        let st = SafeTensors::deserialize(&case.tensors).unwrap();
        let decoded = rgb(&st, "decoded_rgb");
        let expected = rgb(&st, "resized_rgb");
        let p = processor(&case);
        assert_eq!(
            p.target_size(decoded.height, decoded.width).unwrap(),
            case.smart_resize_hw,
            "{}: smart_resize",
            case.name
        );
        let resized = p.resize(&decoded).unwrap();
        assert_eq!(
            (resized.width, resized.height),
            (expected.width, expected.height)
        );
        let diff = resized
            .data
            .iter()
            .zip(&expected.data)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(diff, 0, "{}: {diff} resized bytes differ", case.name);
    }
}

#[test]
fn pixel_values_are_bit_exact_given_resized_rgb() {
    for case in cases() {
        let st = SafeTensors::deserialize(&case.tensors).unwrap();
        let resized = rgb(&st, "resized_rgb");
        let (shape, expected) = f32s(&st, "pixel_values");
        let out = processor(&case).patchify(&resized);
        assert_eq!(vec![out.num_patches, out.patch_dim], shape, "{}", case.name);
        assert_eq!(out.grid_thw, grid(&st), "{}: grid_thw", case.name);
        assert_eq!(out.num_merged_tokens(2) * 4, out.num_patches);
        assert_eq!(bits_equal(&out.pixel_values, &expected), 0, "{}", case.name);
    }
}

#[test]
fn png_cases_are_bit_exact_from_the_file() {
    let mut seen = 0;
    for case in cases().into_iter().filter(|c| c.format == "PNG") {
        seen += 1;
        let st = SafeTensors::deserialize(&case.tensors).unwrap();
        let bytes = std::fs::read(&case.input).unwrap();
        let decoded =
            padt_upscale(decode_image(&bytes, &case.name, &DecodeOptions::default()).unwrap());
        assert_eq!(
            decoded.rgb,
            rgb(&st, "decoded_rgb"),
            "{}: decoded",
            case.name
        );
        let out = processor(&case)
            .process_encoded(&bytes, &case.name, &DecodeOptions::default())
            .unwrap();
        let (_, expected) = f32s(&st, "pixel_values");
        assert_eq!(out.grid_thw, grid(&st), "{}", case.name);
        assert_eq!(bits_equal(&out.pixel_values, &expected), 0, "{}", case.name);
    }
    assert!(seen >= 6, "PNG cases: {seen}");
}

#[test]
fn padt_tiny_upscale_is_pillow_lanczos_exact() {
    let case = cases()
        .into_iter()
        .find(|c| c.name.starts_with("padt_tiny"))
        .expect("padt_tiny case");
    let st = SafeTensors::deserialize(&case.tensors).unwrap();
    let bytes = std::fs::read(&case.input).unwrap();
    let raw = decode_image(&bytes, &case.name, &DecodeOptions::default()).unwrap();
    assert_eq!((raw.rgb.width, raw.rgb.height), (20, 45));
    let up = padt_upscale(raw);
    let expected = rgb(&st, "padt_upscaled_native");
    assert_eq!((up.rgb.width, up.rgb.height), (28, 62));
    assert_eq!(up.rgb, expected);
}

/// How far one JPEG case decoded with one decoder is from Pillow's.
struct JpegStats {
    name: String,
    /// Max / mean |Δ| of the decoded RGB bytes.
    max_px: u8,
    mean_px: f64,
    /// Decoded RGB bytes that differ.
    px_differ: usize,
    /// Max / mean |Δ| of `pixel_values`.
    max_pv: f32,
    mean_pv: f64,
    /// `pixel_values` entries whose f32 bits differ.
    pv_bits_differ: usize,
}

fn jpeg_stats(kind: JpegDecoderKind) -> Vec<JpegStats> {
    let options = DecodeOptions {
        jpeg_decoder: kind,
        ..DecodeOptions::default()
    };
    let mut stats = Vec::new();
    for case in cases().into_iter().filter(|c| c.format == "JPEG") {
        let st = SafeTensors::deserialize(&case.tensors).unwrap();
        let bytes = std::fs::read(&case.input).unwrap();
        let decoded = decode_image(&bytes, &case.name, &options).unwrap();
        let expected = rgb(&st, "decoded_rgb");
        assert_eq!(
            (decoded.rgb.width, decoded.rgb.height),
            (expected.width, expected.height),
            "{}",
            case.name
        );
        let diffs: Vec<u8> = decoded
            .rgb
            .data
            .iter()
            .zip(&expected.data)
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let max_px = *diffs.iter().max().unwrap();
        let mean_px = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
        let px_differ = diffs.iter().filter(|&&d| d != 0).count();
        let out = processor(&case)
            .process_encoded(&bytes, &case.name, &options)
            .unwrap();
        let (_, pv) = f32s(&st, "pixel_values");
        assert_eq!(out.grid_thw, grid(&st), "{}", case.name);
        let d: Vec<f32> = out
            .pixel_values
            .iter()
            .zip(&pv)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let max_pv = d.iter().cloned().fold(0f32, f32::max);
        let mean_pv = d.iter().map(|&x| x as f64).sum::<f64>() / d.len() as f64;
        eprintln!(
            "{kind:?} {}: rgb max {max_px} mean {mean_px:.4}; pixel_values max {max_pv:.4} mean {mean_pv:.5}",
            case.name
        );
        stats.push(JpegStats {
            name: case.name,
            max_px,
            mean_px,
            px_differ,
            max_pv,
            mean_pv,
            pv_bits_differ: bits_equal(&out.pixel_values, &pv),
        });
    }
    assert!(stats.len() >= 5, "JPEG cases: {}", stats.len());
    stats
}

#[test]
fn libjpeg_turbo_jpeg_cases_are_bit_exact() {
    assert_eq!(
        DecodeOptions::default().jpeg_decoder,
        JpegDecoderKind::LibjpegTurbo
    );
    for case in jpeg_stats(JpegDecoderKind::LibjpegTurbo) {
        let name = &case.name;
        let differ = case.px_differ;
        assert_eq!(differ, 0, "{name}: {differ} decoded bytes differ");
        assert_eq!(case.pv_bits_differ, 0, "{name}");
    }
}

#[test]
fn jpeg_cases_within_measured_tolerance() {
    for JpegStats {
        name,
        max_px,
        mean_px,
        max_pv,
        mean_pv,
        ..
    } in jpeg_stats(JpegDecoderKind::JpegDecoder)
    {
        assert!(max_px <= 3, "{name}: decoded max |Δ| {max_px} > 3");
        assert!(mean_px <= 0.1, "{name}: decoded mean |Δ| {mean_px} > 0.1");
        assert!(
            max_pv <= 0.06,
            "{name}: pixel_values max |Δ| {max_pv} > 0.06"
        );
        assert!(
            mean_pv <= 0.002,
            "{name}: pixel_values mean |Δ| {mean_pv} > 0.002"
        );
    }
}

#[test]
fn zune_jpeg_within_readme_tolerance() {
    for JpegStats {
        name,
        max_px,
        max_pv,
        mean_pv,
        ..
    } in jpeg_stats(JpegDecoderKind::ZuneJpeg)
    {
        assert!(max_px <= 8, "{name}: decoded max |Δ| {max_px} > 8");
        assert!(
            max_pv <= 0.15,
            "{name}: pixel_values max |Δ| {max_pv} > 0.15"
        );
        assert!(mean_pv <= 0.0035, "{name}: pixel_values mean |Δ| {mean_pv}");
    }
}
