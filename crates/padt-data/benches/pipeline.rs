//! Input-pipeline throughput, one thread, bytes preloaded (like the reference scripts).
//! Report: `bench/pipeline.md`.
//!
//! - `samples DIR [SECONDS] [TOKENIZER_DIR]`: the full training sample path on the
//!   `records.jsonl` + JPEGs of `bench/pipeline/make_samples.py`, through exactly the call the
//!   training loader makes per sample ([`SampleEncoder::prepare_from_bytes`]: decode → PaDT
//!   upscale → smart_resize → bicubic → normalise → patchify → VRT picks → chat template +
//!   prompt ids → completion ids → mask target), then its parts alone. Writes
//!   `DIR/rust_outputs.jsonl` (picks, ids, mask of every record) for the reference script's
//!   equivalence check.
//! - `loader DIR [SECONDS] [TOKENIZER_DIR]`: only the loader's call (for `perf record`).
//! - `images DIR [SECONDS]` (or just `DIR`): the image path alone on every `*.jpg`, per decoder
//!   and per stage.
//! - `resize DIR [SECONDS]`: only the Pillow-exact bicubic resize of every decoded `*.jpg` to
//!   its `smart_resize` size, then each pass alone (for A/B runs of the resize kernels).
//! - `patchify DIR [SECONDS]`: only normalise + patchify of every resized `*.jpg` (for A/B runs
//!   of the patchify kernels), then the same on 2 images (cache-warm input).
//!
//! `cargo bench -p padt-data --bench pipeline -- samples /tmp/padt-bench-samples 4`

use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use padt_data::batch::{mask_target, process_image, SampleEncoder};
use padt_data::image::{
    decode_image, padt_upscale, pillow_resize, DecodeOptions, ImageProcessor, ImageProcessorConfig,
    JpegDecoderKind, ProcessedImage, ResampleFilter,
};
use padt_data::record::Record;
use padt_data::targets::{sample_rng, CompletionTarget, PatchSelection};
use padt_data::tokenizer::PadtTokenizer;
use padt_data::vrt::merged_tokens;

/// CPU time of this process: the sum over its threads of `/proc/self/task/*/schedstat`
/// (nanoseconds on a CPU), so that the rate is per busy core even on a loaded machine, and work
/// a library might hand to another thread would still count.
fn process_cpu_seconds() -> f64 {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.unwrap().path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path) {
            ns += text
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap();
        }
    }
    ns as f64 * 1e-9
}

/// Calls per CPU-second of `f(i)` (`i` = 0, 1, ...), run for about `seconds` of wall time.
fn rate(seconds: f64, mut f: impl FnMut(usize)) -> f64 {
    f(0);
    let t0 = Instant::now();
    let c0 = process_cpu_seconds();
    let mut n = 0usize;
    while t0.elapsed() < Duration::from_secs_f64(seconds) {
        f(n);
        n += 1;
    }
    n as f64 / (process_cpu_seconds() - c0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let usage =
        "usage: pipeline samples|loader DIR [SECONDS] [TOKENIZER_DIR] | images|resize|patchify DIR \
         [SECONDS]";
    let (mode, rest) = match args.first().map(String::as_str) {
        Some("samples") | Some("images") | Some("loader") | Some("resize") | Some("patchify") => {
            (args[0].as_str(), &args[1..])
        }
        Some(_) => ("images", &args[..]),
        None => panic!("{usage}"),
    };
    let dir = PathBuf::from(rest.first().expect(usage));
    let seconds: f64 = rest.get(1).map(|s| s.parse().unwrap()).unwrap_or(5.0);
    println!("load average before: {}", load_average());
    if mode == "samples" || mode == "loader" {
        let tokenizer_dir = rest.get(2).map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/qwen2_5_vl_tokenizer")
        });
        samples(&dir, &tokenizer_dir, seconds, mode == "loader");
    } else if mode == "resize" {
        resize(&dir, seconds);
    } else if mode == "patchify" {
        patchify(&dir, seconds);
    } else {
        images(&dir, seconds);
    }
    println!("load average after: {}", load_average());
}

/// The full sample path, as the training loader runs it, and its parts.
fn samples(dir: &Path, tokenizer_dir: &Path, seconds: f64, loader_only: bool) {
    let records: Vec<Record> = std::fs::read_to_string(dir.join("records.jsonl"))
        .expect("records.jsonl (bench/pipeline/make_samples.py)")
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    let blobs: Vec<Vec<u8>> = records
        .iter()
        .map(|r| std::fs::read(dir.join(&r.image)).unwrap())
        .collect();
    // Qwen2.5-VL-3B's embedding rows, as the trainer loads it (no VRT tokens needed).
    let tokenizer = PadtTokenizer::from_dir(tokenizer_dir, 151_936, 0).unwrap();
    let encoder = SampleEncoder::new(tokenizer, PatchSelection::default()).unwrap();
    let processor = ImageProcessor::new(ImageProcessorConfig::default()).unwrap();
    let decode = DecodeOptions::default();
    let seed = 42;
    let n = records.len();
    println!("records {n}");

    // Outputs of the loader's call, for the reference script's equivalence check.
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(dir.join("rust_outputs.jsonl")).expect("rust_outputs.jsonl"),
    );
    for (i, (r, b)) in records.iter().zip(&blobs).enumerate() {
        let s = encoder
            .prepare_from_bytes(r, b, &processor, &decode, seed, 0, i as u64)
            .unwrap();
        let objects: Vec<_> = s
            .objects
            .iter()
            .map(|o| serde_json::json!({"object": o.object, "picks": o.picks, "mask": o.mask}))
            .collect();
        let line = serde_json::json!({
            "id": r.id,
            "grid_thw": s.image.grid_thw,
            "prompt_ids": s.prompt_ids,
            "completion_ids": s.completion_ids,
            "objects": objects,
        });
        writeln!(out, "{line}").unwrap();
    }
    out.flush().unwrap();

    let full = rate(seconds, |i| {
        let k = i % n;
        black_box(
            encoder
                .prepare_from_bytes(
                    &records[k],
                    &blobs[k],
                    &processor,
                    &decode,
                    seed,
                    0,
                    i as u64,
                )
                .unwrap(),
        );
    });
    println!("full sample path (prepare_from_bytes): {full:.1} samples/CPU-s");
    if loader_only {
        return;
    }
    // The same with the pure-Rust decoders instead of the default libjpeg-turbo (not
    // bit-identical to Pillow in every pixel; see bench/pipeline.md), for the decoder's share.
    for kind in ALL_DECODERS.into_iter().skip(1) {
        let other = decoder_options(kind);
        let full_other = rate(seconds, |i| {
            let k = i % n;
            black_box(
                encoder
                    .prepare_from_bytes(
                        &records[k],
                        &blobs[k],
                        &processor,
                        &other,
                        seed,
                        0,
                        i as u64,
                    )
                    .unwrap(),
            );
        });
        println!("  same with {kind:?}: {full_other:.1} samples/CPU-s");
    }
    image_stages(&blobs, &processor, seconds);

    let image = rate(seconds, |i| {
        black_box(process_image(&blobs[i % n], "bench", &processor, &decode).unwrap());
    });
    println!("  image part alone (decode+upscale+processor): {image:.1} images/CPU-s");

    // The per-sample text and target part on the same images' grids (pixels left out, so the
    // number is not a 7.4 MB copy).
    let grids: Vec<(ProcessedImage, u32)> = blobs
        .iter()
        .map(|b| {
            let (img, patch_w) = process_image(b, "bench", &processor, &decode).unwrap();
            (
                ProcessedImage {
                    pixel_values: Vec::new(),
                    ..img
                },
                patch_w,
            )
        })
        .collect();
    let prepare = rate(seconds, |i| {
        let k = i % n;
        let (img, patch_w) = &grids[k];
        let mut rng = sample_rng(seed, 0, i as u64);
        let picks = encoder
            .draw_picks(&records[k], img, *patch_w, &mut rng)
            .unwrap();
        black_box(encoder.prepare(&records[k], img.clone(), picks).unwrap());
    });
    println!(
        "  prepare part alone (picks, prompt, completion, mask): {prepare:.1} samples/CPU-s \
         ({:.3} ms)",
        1e3 / prepare
    );
    let prompt = rate(seconds, |i| {
        let k = i % n;
        let merged = merged_tokens(grids[k].0.grid_thw, 2);
        black_box(
            encoder
                .encode_prompt(records[k].id, &records[k].prompt, merged)
                .unwrap(),
        );
    });
    println!(
        "    chat template + prompt ids: {prompt:.1}/CPU-s ({:.3} ms)",
        1e3 / prompt
    );
    let completion = rate(seconds, |i| {
        let k = i % n;
        let (img, patch_w) = &grids[k];
        let merged = merged_tokens(img.grid_thw, 2);
        let mut rng = sample_rng(seed, 0, i as u64);
        let picks = encoder
            .draw_picks(&records[k], img, *patch_w, &mut rng)
            .unwrap();
        let t = CompletionTarget::from_picks(
            &records[k],
            picks,
            merged,
            encoder.tokenizer().eos_token(),
        )
        .unwrap();
        black_box(t.token_ids(encoder.tokenizer()).unwrap());
    });
    println!(
        "    picks + completion text + ids: {completion:.1}/CPU-s ({:.3} ms)",
        1e3 / completion
    );
    let rles: Vec<_> = records
        .iter()
        .map(|r| {
            let rle = r.objects[0].rle.as_ref().unwrap();
            padt_core::Rle::from_string(&rle.counts, rle.size[0], rle.size[1]).unwrap()
        })
        .collect();
    let mask = rate(seconds, |i| {
        let k = i % n;
        let g = grids[k].0.grid_thw;
        black_box(mask_target(&rles[k], 4 * g[1], 4 * g[2]));
    });
    println!(
        "    mask target (RLE decode + cv2 bilinear + threshold): {mask:.1}/CPU-s ({:.3} ms)",
        1e3 / mask
    );
}

/// The image path alone, per decoder and per stage.
fn images(dir: &Path, seconds: f64) {
    let blobs = jpeg_files(dir);
    let n = blobs.len();
    let processor = ImageProcessor::new(ImageProcessorConfig::default()).unwrap();
    println!("files {n}");
    for kind in ALL_DECODERS {
        let options = decoder_options(kind);
        let full = rate(seconds, |i| {
            black_box(
                processor
                    .process_encoded(&blobs[i % n], "bench", &options)
                    .unwrap(),
            );
        });
        println!("{kind:?}: full image path {full:.1} samples/CPU-s");
    }
    image_stages(&blobs, &processor, seconds);
    let decoded: Vec<_> = blobs
        .iter()
        .map(|b| padt_upscale(decode_image(b, "bench", &DecodeOptions::default()).unwrap()).rgb)
        .collect();
    // The two resize passes separately, on the first image.
    let d = &decoded[0];
    let (h, w) = processor.target_size(d.height, d.width).unwrap();
    for (name, ow, oh) in [("horizontal", w, d.height), ("vertical", d.width, h)] {
        let r = rate(seconds / 2.0, |_| {
            black_box(pillow_resize::<3>(
                &d.data,
                d.width,
                d.height,
                ow,
                oh,
                ResampleFilter::Bicubic,
            ));
        });
        println!(
            "{name} pass only ({}x{} -> {ow}x{oh}): {r:.1} images/CPU-s",
            d.width, d.height
        );
    }
}

/// The `*.jpg` files of `dir`, sorted, as bytes.
fn jpeg_files(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// The bicubic resize alone on every decoded image, then its horizontal and vertical passes
/// alone (each image resized in one dimension only).
fn resize(dir: &Path, seconds: f64) {
    let processor = ImageProcessor::new(ImageProcessorConfig::default()).unwrap();
    let decoded: Vec<_> = jpeg_files(dir)
        .iter()
        .map(|b| padt_upscale(decode_image(b, "bench", &DecodeOptions::default()).unwrap()).rgb)
        .collect();
    let n = decoded.len();
    println!("files {n}");
    let resize = rate(seconds, |i| {
        black_box(processor.resize(&decoded[i % n]).unwrap());
    });
    println!(
        "bicubic resize only {resize:.1} images/CPU-s ({:.3} ms)",
        1e3 / resize
    );
    let targets: Vec<_> = decoded
        .iter()
        .map(|d| processor.target_size(d.height, d.width).unwrap())
        .collect();
    for pass in ["horizontal", "vertical"] {
        let r = rate(seconds, |i| {
            let (d, (h, w)) = (&decoded[i % n], targets[i % n]);
            let (ow, oh) = if pass == "horizontal" {
                (w, d.height)
            } else {
                (d.width, h)
            };
            black_box(pillow_resize::<3>(
                &d.data,
                d.width,
                d.height,
                ow,
                oh,
                ResampleFilter::Bicubic,
            ));
        });
        println!("{pass} pass only: {r:.1} images/CPU-s ({:.3} ms)", 1e3 / r);
    }
}

/// Normalise + patchify alone on every resized image, then on 2 of them (cache-warm input).
fn patchify(dir: &Path, seconds: f64) {
    let processor = ImageProcessor::new(ImageProcessorConfig::default()).unwrap();
    let resized: Vec<_> = jpeg_files(dir)
        .iter()
        .map(|b| {
            let decoded =
                padt_upscale(decode_image(b, "bench", &DecodeOptions::default()).unwrap());
            processor.resize(&decoded.rgb).unwrap()
        })
        .collect();
    let n = resized.len();
    println!("files {n}");
    for (name, images) in [("all images", n), ("2 images (cache-warm input)", 2)] {
        let r = rate(seconds, |i| {
            black_box(processor.patchify(&resized[i % images]));
        });
        println!(
            "normalise+patchify only, {name}: {r:.1} images/CPU-s ({:.3} ms)",
            1e3 / r
        );
    }
}

/// Every JPEG decoder, the default (libjpeg-turbo) first.
const ALL_DECODERS: [JpegDecoderKind; 3] = [
    JpegDecoderKind::LibjpegTurbo,
    JpegDecoderKind::JpegDecoder,
    JpegDecoderKind::ZuneJpeg,
];

/// The default decode options with JPEG decoder `kind`.
fn decoder_options(kind: JpegDecoderKind) -> DecodeOptions {
    DecodeOptions {
        jpeg_decoder: kind,
        ..DecodeOptions::default()
    }
}

/// Each image stage alone: decode per decoder, bicubic resize, normalise + patchify.
fn image_stages(blobs: &[Vec<u8>], processor: &ImageProcessor, seconds: f64) {
    let n = blobs.len();
    for kind in ALL_DECODERS {
        let options = decoder_options(kind);
        let decode = rate(seconds, |i| {
            black_box(decode_image(&blobs[i % n], "bench", &options).unwrap());
        });
        println!(
            "    decode only, {kind:?}: {decode:.1} images/CPU-s ({:.3} ms)",
            1e3 / decode
        );
    }
    let decoded: Vec<_> = blobs
        .iter()
        .map(|b| padt_upscale(decode_image(b, "bench", &DecodeOptions::default()).unwrap()).rgb)
        .collect();
    let resize = rate(seconds, |i| {
        black_box(processor.resize(&decoded[i % n]).unwrap());
    });
    let resized: Vec<_> = decoded
        .iter()
        .map(|d| processor.resize(d).unwrap())
        .collect();
    let patchify = rate(seconds, |i| {
        black_box(processor.patchify(&resized[i % n]));
    });
    let hot = rate(seconds, |i| {
        black_box(processor.patchify(&resized[i % 2]));
    });
    println!(
        "    normalise+patchify on 2 images (cache-warm input) {hot:.1}/CPU-s ({:.3} ms)",
        1e3 / hot
    );
    println!(
        "    bicubic resize only {resize:.1} images/CPU-s ({:.3} ms); normalise+patchify only \
         {patchify:.1} images/CPU-s ({:.3} ms)",
        1e3 / resize,
        1e3 / patchify
    );
}
