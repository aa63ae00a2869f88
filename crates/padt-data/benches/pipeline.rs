//! Image-path throughput, one thread: decode → PaDT upscale → smart_resize → Pillow bicubic →
//! normalise → patchify, on every `*.jpg` of a directory (bytes preloaded, like the reference
//! script). Report: `bench/pipeline.md`.
//!
//! `cargo bench -p padt-data --bench pipeline -- IMAGE_DIR [SECONDS]`

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use padt_data::image::{
    decode_image, padt_upscale, pillow_resize, DecodeOptions, ImageProcessor, ImageProcessorConfig,
    JpegDecoderKind, ResampleFilter,
};

/// CPU time of the calling thread (`/proc/thread-self/schedstat`, nanoseconds on a CPU), so that
/// the rate is per busy core even on a loaded machine.
fn thread_cpu_seconds() -> f64 {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    let ns: u64 = text.split_whitespace().next().unwrap().parse().unwrap();
    ns as f64 * 1e-9
}

/// Items per CPU-second of `f`, run for about `seconds` of wall time.
fn rate(seconds: f64, blobs: &[Vec<u8>], mut f: impl FnMut(&[u8])) -> f64 {
    f(&blobs[0]);
    let t0 = Instant::now();
    let c0 = thread_cpu_seconds();
    let mut n = 0usize;
    while t0.elapsed() < Duration::from_secs_f64(seconds) {
        f(&blobs[n % blobs.len()]);
        n += 1;
    }
    n as f64 / (thread_cpu_seconds() - c0)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let dir = PathBuf::from(args.first().expect("usage: pipeline IMAGE_DIR [SECONDS]"));
    let seconds: f64 = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(5.0);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    let blobs: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let processor = ImageProcessor::new(ImageProcessorConfig::default()).unwrap();
    println!("files {}", blobs.len());
    for kind in [JpegDecoderKind::JpegDecoder, JpegDecoderKind::ZuneJpeg] {
        let options = DecodeOptions {
            jpeg_decoder: kind,
            ..DecodeOptions::default()
        };
        let decode = rate(seconds, &blobs, |b| {
            black_box(decode_image(b, "bench", &options).unwrap());
        });
        let full = rate(seconds, &blobs, |b| {
            black_box(processor.process_encoded(b, "bench", &options).unwrap());
        });
        println!(
            "{kind:?}: decode only {decode:.1} images/CPU-s; full path {full:.1} samples/CPU-s"
        );
    }
    // Stages on decoded images (decoder-independent).
    let decoded: Vec<_> = blobs
        .iter()
        .map(|b| padt_upscale(decode_image(b, "bench", &DecodeOptions::default()).unwrap()).rgb)
        .collect();
    let mut i = 0;
    let resize = rate(seconds, &blobs, |_| {
        black_box(processor.resize(&decoded[i % decoded.len()]).unwrap());
        i += 1;
    });
    let resized: Vec<_> = decoded
        .iter()
        .map(|d| processor.resize(d).unwrap())
        .collect();
    let mut j = 0;
    let patchify = rate(seconds, &blobs, |_| {
        black_box(processor.patchify(&resized[j % resized.len()]));
        j += 1;
    });
    println!(
        "bicubic resize only {resize:.1} images/CPU-s; normalise+patchify only {patchify:.1} images/CPU-s"
    );
    // The two resize passes separately, on the first image.
    let d = &decoded[0];
    let (h, w) = processor.target_size(d.height, d.width).unwrap();
    for (name, ow, oh) in [("horizontal", w, d.height), ("vertical", d.width, h)] {
        let r = rate(seconds / 2.0, &blobs, |_| {
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
