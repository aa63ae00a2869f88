//! Bad images and configs give clear errors naming the image; the HF config deserialises.

use std::path::PathBuf;

use padt_data::image::{
    decode_image, DecodeOptions, ImageError, ImageProcessor, ImageProcessorConfig, JpegDecoderKind,
    SourceMode,
};

fn input(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("PADT_DATA_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data")
        });
    std::fs::read(dir.join("preprocess/inputs").join(name)).unwrap()
}

#[test]
fn unsupported_and_truncated_files_name_the_image() {
    let err = decode_image(b"GIF89a....", "a.gif", &DecodeOptions::default()).unwrap_err();
    assert!(matches!(err, ImageError::UnsupportedFormat { .. }));
    assert!(err.to_string().contains("a.gif") && err.to_string().contains("47 49 46"));
    let empty = decode_image(b"", "empty.jpg", &DecodeOptions::default()).unwrap_err();
    assert!(empty.to_string().contains("empty file"), "{empty}");

    let jpeg = input("rocket_213x142_q90_420_jpg.jpg");
    for kind in [JpegDecoderKind::JpegDecoder, JpegDecoderKind::ZuneJpeg] {
        let options = DecodeOptions {
            jpeg_decoder: kind,
            ..DecodeOptions::default()
        };
        let err = decode_image(&jpeg[..300], "cut.jpg", &options).unwrap_err();
        assert!(
            matches!(err, ImageError::Decode { format: "JPEG", .. }),
            "{kind:?}: {err}"
        );
        assert!(err.to_string().contains("cut.jpg"));
    }
    let png = input("camera_120x100_gray_png.png");
    let err = decode_image(&png[..100], "cut.png", &DecodeOptions::default()).unwrap_err();
    assert!(
        matches!(err, ImageError::Decode { format: "PNG", .. }),
        "{err}"
    );
}

#[test]
fn zero_size_and_oversized_images_are_refused_before_decoding() {
    // A PNG header claiming 0x5 pixels.
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13];
    png.extend_from_slice(b"IHDR");
    png.extend_from_slice(&0u32.to_be_bytes());
    png.extend_from_slice(&5u32.to_be_bytes());
    png.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    let err = decode_image(&png, "zero.png", &DecodeOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::ZeroSize {
                width: 0,
                height: 5,
                ..
            }
        ),
        "{err}"
    );

    let small_limit = DecodeOptions {
        max_decoded_pixels: 1000,
        ..DecodeOptions::default()
    };
    let err = decode_image(
        &input("hubble_200x174_q90_jpg.jpg"),
        "big.jpg",
        &small_limit,
    )
    .unwrap_err();
    match &err {
        ImageError::TooLarge {
            width,
            height,
            pixels,
            limit,
            ..
        } => {
            assert_eq!((*width, *height, *pixels, *limit), (200, 174, 34800, 1000));
        }
        other => panic!("expected TooLarge, got {other}"),
    }
    assert!(err.to_string().contains("200x174") && err.to_string().contains("big.jpg"));
    let err = decode_image(
        &input("astronaut_160x160_rgb_png.png"),
        "big.png",
        &small_limit,
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::TooLarge { pixels: 25600, .. }));
}

#[test]
fn source_modes_are_reported() {
    let o = DecodeOptions::default();
    let mode = |f: &str| decode_image(&input(f), f, &o).unwrap().mode;
    assert_eq!(mode("camera_120x100_gray_png.png"), SourceMode::Gray);
    assert_eq!(mode("coffee_150x100_rgba_png.png"), SourceMode::Rgba);
    assert_eq!(mode("camera_40x60_gray_jpg.jpg"), SourceMode::Gray);
    assert_eq!(mode("rocket_213x142_q90_420_jpg.jpg"), SourceMode::Rgb);
}

#[test]
fn extreme_aspect_ratio_is_an_error() {
    let p = ImageProcessor::new(ImageProcessorConfig::default()).unwrap();
    let err = p.target_size(28, 28 * 250).unwrap_err();
    assert!(matches!(err, ImageError::AspectRatio { .. }));
    assert!(err.to_string().contains("250.0"), "{err}");
}

#[test]
fn hf_preprocessor_config_deserialises() {
    // Qwen2.5-VL-3B-Instruct's preprocessor_config.json.
    let text = r#"{
      "min_pixels": 3136,
      "max_pixels": 12845056,
      "patch_size": 14,
      "temporal_patch_size": 2,
      "merge_size": 2,
      "image_mean": [0.48145466, 0.4578275, 0.40821073],
      "image_std": [0.26862954, 0.26130258, 0.27577711],
      "image_processor_type": "Qwen2VLImageProcessor",
      "processor_class": "Qwen2_5_VLProcessor"
    }"#;
    let config = ImageProcessorConfig::from_json_str(text, "preprocessor_config.json").unwrap();
    assert_eq!(config, ImageProcessorConfig::default());
    assert_eq!(config.factor(), 28);
    assert_eq!(config.patch_dim(), 1176);
    // Missing keys take PaDT's values (not the transformers class default max 1003520).
    let partial = ImageProcessorConfig::from_json_str(r#"{"min_pixels": 1000}"#, "x").unwrap();
    assert_eq!(partial.max_pixels, 12_845_056);
    assert_eq!(partial.min_pixels, 1000);
    let bad = ImageProcessorConfig::from_json_str(
        r#"{"min_pixels": 5000, "max_pixels": 100}"#,
        "bad.json",
    )
    .unwrap_err();
    assert!(bad.to_string().contains("bad.json") && bad.to_string().contains("5000"));
    let broken = ImageProcessorConfig::from_json_str("{", "broken.json").unwrap_err();
    assert!(matches!(broken, ImageError::Config { .. }));
}
