//! The Qwen2.5-VL image pipeline exactly as PaDT feeds its model: decode, PaDT's upscale of tiny
//! images, `smart_resize`, Pillow ≤ 12 fixed-point BICUBIC resize, rescale, normalise, temporal
//! duplication and patchify to `pixel_values [N, 1176]` + `image_grid_thw`.
//!
//! Reference: transformers 4.50 slow `Qwen2VLImageProcessor` on a PIL image (what PaDT runs),
//! Pillow 12.3. See `docs/pipeline.md` and `shared/spec/data-formats.md` §4.
//!
//! Parity: bit-exact for PNG and JPEG inputs. JPEGs are decoded by default with libjpeg-turbo's
//! decoder (vendored C, [`libjpeg_turbo`]), the library Pillow decodes with; the pure-Rust
//! `jpeg-decoder` (at most 3 levels from Pillow, measured in
//! `tests/fixtures/data/preprocess/jpeg_decoder_comparison.json`) and zune-jpeg (through `image`,
//! at most 8) remain as options.

use std::cell::RefCell;
use std::io::Cursor;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;

#[path = "libjpeg_turbo.rs"]
mod libjpeg_turbo;

use serde::{Deserialize, Serialize};

/// Pillow's `Image.MAX_IMAGE_PIXELS`; Pillow raises `DecompressionBombError` above twice this.
pub const PIL_MAX_IMAGE_PIXELS: u64 = 89_478_485;

/// PaDT's trainer upscales images with a side shorter than this (LANCZOS) before the processor.
pub const PADT_MIN_SIDE: usize = 28;

/// Largest allowed `max(h, w) / min(h, w)` (the processor's `smart_resize` raises above it).
pub const MAX_ASPECT_RATIO: f64 = 200.0;

/// Errors of the image pipeline. `name` is whatever identifies the image to the user (a path, a
/// record id); it is part of every message.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{name}: not a JPEG or PNG image (first bytes {magic})")]
    UnsupportedFormat { name: String, magic: String },
    #[error("{name}: cannot decode {format} image: {reason}")]
    Decode {
        name: String,
        format: &'static str,
        reason: String,
    },
    #[error("{name}: image has zero size ({width}x{height}, WxH)")]
    ZeroSize {
        name: String,
        width: usize,
        height: usize,
    },
    #[error(
        "{name}: image is {width}x{height} (WxH) = {pixels} pixels, above the decode limit of \
         {limit} pixels (Pillow refuses such images as decompression bombs)"
    )]
    TooLarge {
        name: String,
        width: usize,
        height: usize,
        pixels: u64,
        limit: u64,
    },
    #[error(
        "image of {width}x{height} (WxH) has aspect ratio {ratio:.1}, the processor accepts at most {max}"
    )]
    AspectRatio {
        width: usize,
        height: usize,
        ratio: f64,
        max: f64,
    },
    #[error("image processor config {origin}: {reason}")]
    Config { origin: String, reason: String },
}

/// A decoded 8-bit RGB image, row-major `[height, width, 3]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    /// Wraps `[height, width, 3]` bytes; `None` when the length does not match.
    pub fn from_raw(width: usize, height: usize, data: Vec<u8>) -> Option<Self> {
        (data.len() == width * height * 3).then_some(Self {
            width,
            height,
            data,
        })
    }
}

/// The pixel layout of the file before `convert("RGB")` (Pillow's "mode"); it decides how PaDT's
/// upscale of tiny images resamples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceMode {
    Rgb,
    /// Grayscale (`L`); RGB replicates the channel.
    Gray,
    /// Grayscale with alpha (`LA`).
    GrayAlpha,
    /// `RGBA`; RGB drops alpha without compositing (transformers 4.50 `convert("RGB")`).
    Rgba,
    /// Palette PNG (`P`); RGB is the palette lookup.
    Palette,
    /// CMYK / YCCK JPEG; RGB uses Pillow's `cmyk2rgb`.
    Cmyk,
}

/// A decoded image: its RGB pixels plus what PaDT's tiny-image upscale needs of the source mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedImage {
    pub rgb: RgbImage,
    /// `[height, width]` alpha for `Rgba` / `GrayAlpha` sources.
    pub alpha: Option<Vec<u8>>,
    pub mode: SourceMode,
}

/// Which JPEG decoder to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JpegDecoderKind {
    /// libjpeg-turbo's decoder (MozJPEG 4 fork, compiled from vendored C by `mozjpeg-sys`), set up
    /// as Pillow sets it up: Pillow's pixels bit for bit. CMYK / YCCK files go to `jpeg-decoder`.
    #[default]
    LibjpegTurbo,
    /// `jpeg-decoder` 0.3.2 (pure Rust): max 3 levels from libjpeg-turbo on the fixtures.
    JpegDecoder,
    /// zune-jpeg 0.5 through `image`: faster, max 8 levels from libjpeg-turbo.
    ZuneJpeg,
}

/// Decoding options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DecodeOptions {
    pub jpeg_decoder: JpegDecoderKind,
    /// Refuse images with more pixels than this, before decoding them (default: Pillow's
    /// decompression-bomb error threshold, `2 * MAX_IMAGE_PIXELS`).
    pub max_decoded_pixels: u64,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            jpeg_decoder: JpegDecoderKind::default(),
            max_decoded_pixels: 2 * PIL_MAX_IMAGE_PIXELS,
        }
    }
}

const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.len() >= 3 && bytes[..3] == [0xff, 0xd8, 0xff]
}

fn is_png(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..8] == PNG_MAGIC
}

fn check_dimensions(
    name: &str,
    width: usize,
    height: usize,
    options: &DecodeOptions,
) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSize {
            name: name.to_string(),
            width,
            height,
        });
    }
    let pixels = width as u64 * height as u64;
    if pixels > options.max_decoded_pixels {
        return Err(ImageError::TooLarge {
            name: name.to_string(),
            width,
            height,
            pixels,
            limit: options.max_decoded_pixels,
        });
    }
    Ok(())
}

/// Decodes a JPEG or PNG file as `Image.open(f).convert("RGB")` would (EXIF orientation is not
/// applied, alpha is dropped without compositing, grayscale and palettes are expanded).
pub fn decode_image(
    bytes: &[u8],
    name: &str,
    options: &DecodeOptions,
) -> Result<DecodedImage, ImageError> {
    if is_jpeg(bytes) {
        match options.jpeg_decoder {
            JpegDecoderKind::LibjpegTurbo => decode_jpeg_libjpeg_turbo(bytes, name, options),
            JpegDecoderKind::JpegDecoder => decode_jpeg_jpeg_decoder(bytes, name, options),
            JpegDecoderKind::ZuneJpeg => decode_with_image_crate(
                bytes,
                name,
                image::ImageFormat::Jpeg,
                "JPEG",
                false,
                options,
            ),
        }
    } else if is_png(bytes) {
        let palette = png_color_type(bytes) == Some(3);
        decode_with_image_crate(
            bytes,
            name,
            image::ImageFormat::Png,
            "PNG",
            palette,
            options,
        )
    } else {
        let magic = bytes
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        Err(ImageError::UnsupportedFormat {
            name: name.to_string(),
            magic: if magic.is_empty() {
                "none: empty file".to_string()
            } else {
                magic
            },
        })
    }
}

/// Reads and decodes an image file.
pub fn decode_image_file(path: &Path, options: &DecodeOptions) -> Result<DecodedImage, ImageError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| ImageError::Decode {
        name: name.clone(),
        format: "image",
        reason: format!("cannot read file: {e}"),
    })?;
    decode_image(&bytes, &name, options)
}

/// PNG colour type from the IHDR chunk (3 = palette).
fn png_color_type(bytes: &[u8]) -> Option<u8> {
    (bytes.len() > 25 && &bytes[12..16] == b"IHDR").then(|| bytes[25])
}

fn png_dimensions(bytes: &[u8]) -> Option<(usize, usize)> {
    if bytes.len() < 24 || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(bytes[16..20].try_into().ok()?) as usize;
    let h = u32::from_be_bytes(bytes[20..24].try_into().ok()?) as usize;
    Some((w, h))
}

/// Builds the [`ImageError::Decode`] of image `name` in `format` from a reason.
fn decode_error<'a>(name: &'a str, format: &'static str) -> impl Fn(String) -> ImageError + 'a {
    move |reason| ImageError::Decode {
        name: name.to_string(),
        format,
        reason,
    }
}

impl DecodedImage {
    /// An image of `width × height` RGB bytes decoded from a `mode` source.
    fn new(
        width: usize,
        height: usize,
        data: Vec<u8>,
        alpha: Option<Vec<u8>>,
        mode: SourceMode,
    ) -> Self {
        Self {
            rgb: RgbImage {
                width,
                height,
                data,
            },
            alpha,
            mode,
        }
    }
}

fn decode_jpeg_libjpeg_turbo(
    bytes: &[u8],
    name: &str,
    options: &DecodeOptions,
) -> Result<DecodedImage, ImageError> {
    let decoded = libjpeg_turbo::decode(
        bytes,
        |width, height| check_dimensions(name, width, height, options),
        decode_error(name, "JPEG"),
    )?;
    let (width, height, data, mode) = match decoded {
        libjpeg_turbo::Decoded::Rgb {
            width,
            height,
            data,
        } => (width, height, data, SourceMode::Rgb),
        libjpeg_turbo::Decoded::Gray {
            width,
            height,
            data,
        } => (width, height, gray_to_rgb(&data), SourceMode::Gray),
        // Pillow's CMYK path (inverted Adobe CMYK, `cmyk2rgb`) is what `jpeg-decoder` + our
        // conversion already reproduce; these files are rare.
        libjpeg_turbo::Decoded::Cmyk => return decode_jpeg_jpeg_decoder(bytes, name, options),
    };
    Ok(DecodedImage::new(width, height, data, None, mode))
}

fn decode_jpeg_jpeg_decoder(
    bytes: &[u8],
    name: &str,
    options: &DecodeOptions,
) -> Result<DecodedImage, ImageError> {
    let decode_err = decode_error(name, "JPEG");
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.read_info().map_err(|e| decode_err(e.to_string()))?;
    let info = decoder
        .info()
        .ok_or_else(|| decode_err("no frame header".to_string()))?;
    let (width, height) = (info.width as usize, info.height as usize);
    check_dimensions(name, width, height, options)?;
    let raw = decoder.decode().map_err(|e| decode_err(e.to_string()))?;
    let pixels = width * height;
    let expected = pixels * info.pixel_format.pixel_bytes();
    if raw.len() < expected {
        return Err(decode_err(format!(
            "decoder returned {} bytes, expected {expected}",
            raw.len()
        )));
    }
    let (data, mode) = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => (raw, SourceMode::Rgb),
        jpeg_decoder::PixelFormat::L8 => (gray_to_rgb(&raw[..pixels]), SourceMode::Gray),
        // jpeg-decoder already undoes the Adobe inversion, so this is plain CMYK (0 = no ink).
        jpeg_decoder::PixelFormat::CMYK32 => (cmyk_to_rgb(&raw[..expected]), SourceMode::Cmyk),
        jpeg_decoder::PixelFormat::L16 => {
            return Err(decode_err(
                "16-bit (lossless) JPEG is not supported (Pillow cannot open it either)".into(),
            ))
        }
    };
    Ok(DecodedImage::new(width, height, data, None, mode))
}

fn decode_with_image_crate(
    bytes: &[u8],
    name: &str,
    format: image::ImageFormat,
    format_name: &'static str,
    palette: bool,
    options: &DecodeOptions,
) -> Result<DecodedImage, ImageError> {
    let decode_err = decode_error(name, format_name);
    // Refuse oversized images before spending memory on them.
    let (w, h) = if format == image::ImageFormat::Png {
        png_dimensions(bytes).ok_or_else(|| decode_err("missing IHDR chunk".to_string()))?
    } else {
        let mut header = jpeg_decoder::Decoder::new(bytes);
        header.read_info().map_err(|e| decode_err(e.to_string()))?;
        let info = header
            .info()
            .ok_or_else(|| decode_err("no frame header".to_string()))?;
        (info.width as usize, info.height as usize)
    };
    check_dimensions(name, w, h, options)?;
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    // Our own pixel limit is checked above (PNG) or right below (JPEG).
    reader.no_limits();
    let dynamic = reader.decode().map_err(|e| decode_err(e.to_string()))?;
    let (width, height) = (dynamic.width() as usize, dynamic.height() as usize);
    check_dimensions(name, width, height, options)?;
    use image::DynamicImage as D;
    let (data, alpha, mode) = match dynamic {
        D::ImageRgb8(img) => (img.into_raw(), None, SourceMode::Rgb),
        D::ImageLuma8(img) => (gray_to_rgb(img.as_raw()), None, SourceMode::Gray),
        D::ImageRgba8(img) => {
            let (rgb, alpha) = split_alpha::<4>(img.as_raw());
            (rgb, Some(alpha), SourceMode::Rgba)
        }
        D::ImageLumaA8(img) => {
            let (gray, alpha) = split_alpha::<2>(img.as_raw());
            (gray, Some(alpha), SourceMode::GrayAlpha)
        }
        // 16-bit PNGs: Pillow unpacks RGB(A) 16-bit with the high byte ("RGB;16B") and clips
        // 16-bit grayscale ("I;16") to 255 on conversion to RGB.
        D::ImageRgb16(img) => (
            img.as_raw().iter().map(|&v| (v >> 8) as u8).collect(),
            None,
            SourceMode::Rgb,
        ),
        D::ImageRgba16(img) => {
            let high: Vec<u8> = img.as_raw().iter().map(|&v| (v >> 8) as u8).collect();
            let (rgb, alpha) = split_alpha::<4>(&high);
            (rgb, Some(alpha), SourceMode::Rgba)
        }
        D::ImageLuma16(img) => {
            let clipped: Vec<u8> = img.as_raw().iter().map(|&v| v.min(255) as u8).collect();
            (gray_to_rgb(&clipped), None, SourceMode::Gray)
        }
        D::ImageLumaA16(img) => {
            let high: Vec<u8> = img.as_raw().iter().map(|&v| (v >> 8) as u8).collect();
            let (gray, alpha) = split_alpha::<2>(&high);
            (gray, Some(alpha), SourceMode::GrayAlpha)
        }
        other => (other.to_rgb8().into_raw(), None, SourceMode::Rgb),
    };
    // A palette PNG comes back expanded (RGB, or RGBA with tRNS); remember it was a palette.
    let (alpha, mode) = if palette {
        (None, SourceMode::Palette)
    } else {
        (alpha, mode)
    };
    Ok(DecodedImage::new(width, height, data, alpha, mode))
}

fn gray_to_rgb(gray: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(gray.len() * 3);
    for &v in gray {
        out.extend_from_slice(&[v, v, v]);
    }
    out
}

/// Splits interleaved `[.., alpha]` pixels of `N` channels into RGB (gray replicated) and alpha.
fn split_alpha<const N: usize>(pixels: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let count = pixels.len() / N;
    let mut rgb = Vec::with_capacity(count * 3);
    let mut alpha = Vec::with_capacity(count);
    for px in pixels.chunks_exact(N) {
        if N == 4 {
            rgb.extend_from_slice(&px[..3]);
        } else {
            rgb.extend_from_slice(&[px[0], px[0], px[0]]);
        }
        alpha.push(px[N - 1]);
    }
    (rgb, alpha)
}

/// Pillow's `MULDIV255`: `a * b / 255` rounded, in integers.
fn muldiv255(a: u32, b: u32) -> u32 {
    let tmp = a * b + 128;
    ((tmp >> 8) + tmp) >> 8
}

/// Pillow's `cmyk2rgb`.
fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let nk = 255 - px[3] as i32;
        for &c in &px[..3] {
            let v = nk - muldiv255(c as u32, nk as u32) as i32;
            out.push(v.clamp(0, 255) as u8);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Pillow's resampler (Resample.c of Pillow <= 12), 8-bit path.
// ---------------------------------------------------------------------------------------------

/// Pillow `PRECISION_BITS` for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Resampling filters of Pillow's convolution resampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResampleFilter {
    /// `Image.BICUBIC`, a = -0.5, support 2.
    Bicubic,
    /// `Image.LANCZOS`, support 3.
    Lanczos,
}

impl ResampleFilter {
    fn support(self) -> f64 {
        match self {
            ResampleFilter::Bicubic => 2.0,
            ResampleFilter::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            ResampleFilter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            ResampleFilter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

/// Fixed-point weights of one pass: for output pixel `i`, input pixels
/// `first[i] .. first[i] + count[i]` weighted by `weights[i * ksize ..][.. count[i]]`.
struct Coefficients {
    ksize: usize,
    first: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`, same operation order.
fn precompute_coefficients(
    in_size: usize,
    out_size: usize,
    filter: ResampleFilter,
) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut first = Vec::with_capacity(out_size);
    let mut count = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    let ss = 1.0 / filterscale;
    for i in 0..out_size {
        let center = (i as f64 + 0.5) * scale;
        // C casts truncate toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut total = 0.0f64;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            *wx = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            total += *wx;
        }
        for (x, wx) in w.iter().enumerate().take(n) {
            let v = if total != 0.0 { wx / total } else { *wx };
            let scaled = v * (1u32 << PRECISION_BITS) as f64;
            weights[i * ksize + x] = if v < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        first.push(xmin);
        count.push(n);
    }
    Coefficients {
        ksize,
        first,
        count,
        weights,
    }
}

/// Coefficient tables kept per thread (most recently used first); a few image sizes make up
/// most of a dataset (COCO: 640×480, 480×640, 640×427, ...), and each table costs a few µs of
/// `f64` filter evaluations.
const COEFFICIENT_CACHE_LEN: usize = 16;

/// [`precompute_coefficients`] through a small per-thread cache of the last
/// [`COEFFICIENT_CACHE_LEN`] `(in_size, out_size, filter)` triples (same tables: a pure function).
fn cached_coefficients(
    in_size: usize,
    out_size: usize,
    filter: ResampleFilter,
) -> Rc<Coefficients> {
    type Cache = Vec<((usize, usize, ResampleFilter), Rc<Coefficients>)>;
    thread_local! {
        static CACHE: RefCell<Cache> = const { RefCell::new(Vec::new()) };
    }
    let key = (in_size, out_size, filter);
    CACHE.with_borrow_mut(|cache| {
        let entry = match cache.iter().position(|(k, _)| *k == key) {
            Some(i) => cache.remove(i),
            None => (
                key,
                Rc::new(precompute_coefficients(in_size, out_size, filter)),
            ),
        };
        let coefficients = Rc::clone(&entry.1);
        cache.insert(0, entry);
        cache.truncate(COEFFICIENT_CACHE_LEN);
        coefficients
    })
}

#[inline(always)]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Horizontal pass over source rows `rows`, `C` interleaved channels (plain version): writes
/// every byte of `out`, `rows.len()` rows of `coeffs.first.len() · C` bytes.
fn resample_horizontal<const C: usize>(
    src: &[u8],
    src_width: usize,
    rows: Range<usize>,
    coeffs: &Coefficients,
    out: &mut [MaybeUninit<u8>],
) {
    let out_width = coeffs.first.len();
    assert_eq!(out.len(), rows.len() * out_width * C);
    let half = 1i32 << (PRECISION_BITS - 1);
    for (out_row, y) in out.chunks_exact_mut(out_width * C).zip(rows) {
        let row = &src[y * src_width * C..(y + 1) * src_width * C];
        for (x, out_px) in out_row.chunks_exact_mut(C).enumerate() {
            let start = coeffs.first[x];
            let n = coeffs.count[x];
            let k = &coeffs.weights[x * coeffs.ksize..x * coeffs.ksize + n];
            let input = &row[start * C..(start + n) * C];
            let mut acc = [half; C];
            for (px, &kx) in input.chunks_exact(C).zip(k) {
                for c in 0..C {
                    acc[c] += px[c] as i32 * kx;
                }
            }
            for c in 0..C {
                out_px[c].write(clip8(acc[c]));
            }
        }
    }
}

/// Vertical pass (plain version) of output rows `ys`: writes every byte of `out`, `ys.len()`
/// rows of `row_len` bytes. `row_offset` is the first source row held in `src`.
fn resample_vertical(
    src: &[u8],
    row_len: usize,
    row_offset: usize,
    coeffs: &Coefficients,
    ys: Range<usize>,
    out: &mut [MaybeUninit<u8>],
) {
    assert_eq!(out.len(), ys.len() * row_len);
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut acc = vec![0i32; row_len];
    for (y, out_row) in ys.zip(out.chunks_exact_mut(row_len)) {
        let start = coeffs.first[y] - row_offset;
        let n = coeffs.count[y];
        let k = &coeffs.weights[y * coeffs.ksize..y * coeffs.ksize + n];
        acc.fill(half);
        for (t, &ky) in k.iter().enumerate() {
            let row = &src[(start + t) * row_len..(start + t + 1) * row_len];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += p as i32 * ky;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            o.write(clip8(a));
        }
    }
}

/// Whether this x86-64 CPU has AVX2 (the resize and patchify kernels' requirement).
#[cfg(target_arch = "x86_64")]
fn cpu_has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// Which code the two resize passes run: the plain loops above, or the AVX2 kernels of
/// [`avx2`] (x86-64 CPUs that have AVX2, chosen at run time). Both compute the same integer
/// sums, so they give the same bytes (unit test `avx2_resize_equals_plain_resize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResizeKernels {
    Plain,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl ResizeKernels {
    /// The fastest kernels this CPU runs.
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if cpu_has_avx2() {
            return Self::Avx2;
        }
        Self::Plain
    }

    /// The horizontal pass of source rows `rows` into `out` (every byte written).
    fn horizontal<const C: usize>(
        self,
        src: &[u8],
        src_width: usize,
        rows: Range<usize>,
        coeffs: &Coefficients,
        out: &mut [MaybeUninit<u8>],
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 if avx2::horizontal_fits::<C>(src_width, coeffs.first.len(), rows.len()) => {
                // SAFETY: `Avx2` is only chosen when the CPU has AVX2 (`detect`).
                unsafe { avx2::resample_horizontal::<C>(src, src_width, rows, coeffs, out) }
            }
            _ => resample_horizontal::<C>(src, src_width, rows, coeffs, out),
        }
    }

    /// The vertical pass of output rows `ys` into `out` (every byte written).
    fn vertical(
        self,
        src: &[u8],
        row_len: usize,
        row_offset: usize,
        coeffs: &Coefficients,
        ys: Range<usize>,
        out: &mut [MaybeUninit<u8>],
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 if avx2::vertical_fits(row_len) => {
                // SAFETY: `Avx2` is only chosen when the CPU has AVX2 (`detect`).
                unsafe { avx2::resample_vertical(src, row_len, row_offset, coeffs, ys, out) }
            }
            _ => resample_vertical(src, row_len, row_offset, coeffs, ys, out),
        }
    }
}

/// The two passes with AVX2, in Pillow's integer arithmetic: every output byte is
/// `clip8(2²¹ + Σ pixel · weight)` with the same i32 weights, summed in i32 lanes
/// (`vpmulld` + `vpaddd`, wrapping like Pillow's C `int`; the sums fit in i32 anyway since
/// Pillow's do), so the output is Pillow's bit for bit. i16 `vpmaddwd` with weights split into
/// high and low parts was considered: it needs two products per pixel and tap instead of one
/// and an interleave, so it does not beat one 8-lane `vpmulld` per tap.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Coefficients, PRECISION_BITS};
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;
    use std::ops::Range;

    /// Rows per block of the horizontal pass (one i32 lane per row) and the side of the byte
    /// transposes.
    const LANES: usize = 8;

    /// Whether [`resample_horizontal`] handles this shape: 1 to 4 channels, at least one
    /// 8-byte tile in a source row, one group of 8 pixels in an output row, one block of 8
    /// rows.
    pub(super) fn horizontal_fits<const C: usize>(
        src_width: usize,
        out_width: usize,
        rows: usize,
    ) -> bool {
        (1..=4).contains(&C) && src_width * C >= LANES && out_width >= LANES && rows >= LANES
    }

    /// Whether [`resample_vertical`] handles rows of `row_len` bytes (one 32-byte chunk).
    pub(super) fn vertical_fits(row_len: usize) -> bool {
        row_len >= 32
    }

    /// Starts of the `width`-byte tiles that cover `0..len` (`len ≥ width`): every `width`
    /// bytes, the last one moved back to end at `len` (it overlaps the one before; overlapping
    /// bytes are computed twice with the same result).
    fn tiles(len: usize, width: usize) -> impl Iterator<Item = usize> {
        debug_assert!(len >= width);
        (0..len.div_ceil(width)).map(move |i| (i * width).min(len - width))
    }

    /// An 8×8 byte transpose from rows to columns: `dst[8 · j + r] = src[r · src_stride + j]`
    /// for `r, j < 8` (the 64 bytes at `dst` are 8 columns of 8 rows). SSE2 unpacks only
    /// (baseline x86-64), inlined into the AVX2 callers.
    ///
    /// # Safety
    /// The 8 bytes at `src + r · src_stride` must be readable for every `r < 8`, and the 64
    /// bytes at `dst` writable.
    #[inline(always)]
    unsafe fn rows_to_columns(src: *const u8, src_stride: usize, dst: *mut u8) {
        // SAFETY: the caller guarantees the eight 8-byte loads and the 64 bytes of stores are in
        // bounds; unaligned loads/stores have no alignment requirement; SSE2 is baseline.
        unsafe {
            let row = |r: usize| _mm_loadl_epi64(src.add(r * src_stride).cast());
            // Byte pairs of rows (0,1), (2,3), (4,5), (6,7), column by column.
            let p01 = _mm_unpacklo_epi8(row(0), row(1));
            let p23 = _mm_unpacklo_epi8(row(2), row(3));
            let p45 = _mm_unpacklo_epi8(row(4), row(5));
            let p67 = _mm_unpacklo_epi8(row(6), row(7));
            // Rows 0-3 (q0123*) and 4-7 (q4567*) of columns 0-3 (lo) and 4-7 (hi).
            let q0123lo = _mm_unpacklo_epi16(p01, p23);
            let q0123hi = _mm_unpackhi_epi16(p01, p23);
            let q4567lo = _mm_unpacklo_epi16(p45, p67);
            let q4567hi = _mm_unpackhi_epi16(p45, p67);
            // Two whole columns (8 rows each) per register.
            let dst = dst.cast::<__m128i>();
            _mm_storeu_si128(dst, _mm_unpacklo_epi32(q0123lo, q4567lo));
            _mm_storeu_si128(dst.add(1), _mm_unpackhi_epi32(q0123lo, q4567lo));
            _mm_storeu_si128(dst.add(2), _mm_unpacklo_epi32(q0123hi, q4567hi));
            _mm_storeu_si128(dst.add(3), _mm_unpackhi_epi32(q0123hi, q4567hi));
        }
    }

    /// The inverse of [`rows_to_columns`]: `dst[r · dst_stride + j] = src[8 · j + r]` for
    /// `r, j < 8`.
    ///
    /// # Safety
    /// The 64 bytes at `src` must be readable, and the 8 bytes at `dst + r · dst_stride`
    /// writable for every `r < 8`.
    #[inline(always)]
    unsafe fn columns_to_rows(src: *const u8, dst: *mut u8, dst_stride: usize) {
        // SAFETY: as in `rows_to_columns`, with the caller's bounds.
        unsafe {
            let src = src.cast::<__m128i>();
            // Columns (0,1), (2,3), (4,5), (6,7), 8 rows each.
            let c01 = _mm_loadu_si128(src);
            let c23 = _mm_loadu_si128(src.add(1));
            let c45 = _mm_loadu_si128(src.add(2));
            let c67 = _mm_loadu_si128(src.add(3));
            // Per row r: (c0, c2) / (c1, c3) / (c4, c6) / (c5, c7) byte pairs.
            let a = _mm_unpacklo_epi8(c01, c23);
            let b = _mm_unpackhi_epi8(c01, c23);
            let c = _mm_unpacklo_epi8(c45, c67);
            let d = _mm_unpackhi_epi8(c45, c67);
            // Columns 0-3 (ab*) and 4-7 (cd*) of rows 0-3 (lo) and 4-7 (hi).
            let ab_lo = _mm_unpacklo_epi8(a, b);
            let ab_hi = _mm_unpackhi_epi8(a, b);
            let cd_lo = _mm_unpacklo_epi8(c, d);
            let cd_hi = _mm_unpackhi_epi8(c, d);
            // Two whole rows (8 columns each) per register.
            let rows = [
                _mm_unpacklo_epi32(ab_lo, cd_lo),
                _mm_unpackhi_epi32(ab_lo, cd_lo),
                _mm_unpacklo_epi32(ab_hi, cd_hi),
                _mm_unpackhi_epi32(ab_hi, cd_hi),
            ];
            for (i, pair) in rows.into_iter().enumerate() {
                _mm_storel_epi64(dst.add(2 * i * dst_stride).cast(), pair);
                _mm_storeh_pd(
                    dst.add((2 * i + 1) * dst_stride).cast(),
                    _mm_castsi128_pd(pair),
                );
            }
        }
    }

    /// `acc + Σ_t weights[t] · pixel t` for the `C` channels of 8 rows: `pixels` holds
    /// `weights.len()` pixels of `C` columns of 8 bytes. `N` is `weights.len()` when it is known
    /// at compile time (the tap loop is unrolled), 0 otherwise.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn horizontal_taps<const C: usize, const N: usize>(
        pixels: &[u8],
        weights: &[i32],
        mut acc: [__m256i; 4],
    ) -> [__m256i; 4] {
        let n = if N > 0 { N } else { weights.len() };
        assert!(weights.len() == n && pixels.len() == n * C * LANES && C <= 4);
        for (t, &w) in weights.iter().enumerate().take(n) {
            let w = _mm256_set1_epi32(w);
            for (c, acc) in acc.iter_mut().enumerate().take(C) {
                // SAFETY: `(t · C + c + 1) · 8 ≤ n · C · 8 = pixels.len()` (asserted above).
                let lanes =
                    unsafe { _mm_loadl_epi64(pixels.as_ptr().add((t * C + c) * LANES).cast()) };
                let v = _mm256_cvtepu8_epi32(lanes);
                *acc = _mm256_add_epi32(*acc, _mm256_mullo_epi32(v, w));
            }
        }
        acc
    }

    /// Pillow's `clip8` of four accumulators of 8 lanes, as 32 bytes: bytes `8i .. 8i + 8` are
    /// the lanes of `acc[i]`. After `>> PRECISION_BITS` a lane is within ±2⁹, so the signed
    /// i32 → i16 pack is exact and the unsigned i16 → u8 pack is the clamp to 0..=255.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn clip8_pack(acc: [__m256i; 4]) -> __m256i {
        let shift = |a| _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(a);
        // 128-bit halves: [a0 lanes 0-3, a1 lanes 0-3 | a0 lanes 4-7, a1 lanes 4-7] as i16.
        let low = _mm256_packs_epi32(shift(acc[0]), shift(acc[1]));
        let high = _mm256_packs_epi32(shift(acc[2]), shift(acc[3]));
        // [a0 0-3, a1 0-3, a2 0-3, a3 0-3 | a0 4-7, a1 4-7, a2 4-7, a3 4-7] as u8.
        let bytes = _mm256_packus_epi16(low, high);
        _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }

    /// The horizontal pass on blocks of 8 source rows: a block is transposed into column-major
    /// bytes (`columns[j · 8 + r]` = byte `j` of block row `r`), so that one tap of one channel
    /// is a single 8-lane multiply-add over the 8 rows; the clipped results of 8 output pixels,
    /// column-major too (`8 · C` columns, in L1), are transposed back into the output rows. A
    /// last partial block of rows (group of pixels) is replaced by the last 8 rows (pixels):
    /// computed twice, same bytes.
    ///
    /// # Shapes
    /// - `src`: `[H, src_width, C]` u8, of which rows `rows` are read
    /// - `out`: `[rows.len(), out_width, C]` u8, `out_width = coeffs.first.len()`, every byte
    ///   written
    #[target_feature(enable = "avx2")]
    pub(super) fn resample_horizontal<const C: usize>(
        src: &[u8],
        src_width: usize,
        rows: Range<usize>,
        coeffs: &Coefficients,
        out: &mut [MaybeUninit<u8>],
    ) {
        let out_width = coeffs.first.len();
        let row_count = rows.len();
        assert!(horizontal_fits::<C>(src_width, out_width, row_count));
        let (in_len, out_len) = (src_width * C, out_width * C);
        assert_eq!(out.len(), row_count * out_len);
        let src = &src[rows.start * in_len..rows.end * in_len];
        let mut columns = vec![0u8; in_len * LANES];
        // One group of 8 output pixels; 32 spare bytes: each pixel's store writes 4 channels.
        let mut group = [0u8; LANES * 4 * LANES + 32];
        let half = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));
        for block in 0..row_count.div_ceil(LANES) {
            let y0 = (block * LANES).min(row_count - LANES);
            let block_src = &src[y0 * in_len..(y0 + LANES) * in_len];
            for j in tiles(in_len, LANES) {
                // SAFETY: `j + 8 ≤ in_len`, so rows `r < 8` of `block_src` (stride `in_len`)
                // have 8 bytes at `j`, and `columns` has `8 · in_len ≥ 8 · (j + 8)` bytes.
                unsafe {
                    rows_to_columns(
                        block_src.as_ptr().add(j),
                        in_len,
                        columns.as_mut_ptr().add(j * LANES),
                    )
                };
            }
            let block_out = out[y0 * out_len..(y0 + LANES) * out_len]
                .as_mut_ptr()
                .cast::<u8>();
            for x0 in tiles(out_width, LANES) {
                for (p, x) in (x0..x0 + LANES).enumerate() {
                    let (start, n) = (coeffs.first[x], coeffs.count[x]);
                    let weights = &coeffs.weights[x * coeffs.ksize..][..n];
                    let taps = &columns[start * C * LANES..(start + n) * C * LANES];
                    // Bicubic near scale 1 has 4 or 5 taps: unrolled.
                    let acc = match n {
                        4 => horizontal_taps::<C, 4>(taps, weights, [half; 4]),
                        5 => horizontal_taps::<C, 5>(taps, weights, [half; 4]),
                        _ => horizontal_taps::<C, 0>(taps, weights, [half; 4]),
                    };
                    let dst = &mut group[p * C * LANES..][..32];
                    // SAFETY: `dst` is 32 bytes long.
                    unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), clip8_pack(acc)) };
                }
                for tile in 0..C {
                    // SAFETY: the group holds `8 · C` columns of 8 bytes, `tile < C`; the 8
                    // rows (stride `out_len`) of `block_out` have the `8 · C` bytes from
                    // `x0 · C` since `x0 + 8 ≤ out_width` (writing initialises `MaybeUninit`
                    // bytes).
                    unsafe {
                        columns_to_rows(
                            group.as_ptr().add(tile * LANES * LANES),
                            block_out.add(x0 * C + tile * LANES),
                            out_len,
                        )
                    };
                }
            }
        }
        // The blocks cover rows `0..row_count` and the groups pixels `0..out_width` of each:
        // every byte of `out` is written.
    }

    /// The vertical pass, 32 bytes of an output row at a time, the 4 accumulators of the
    /// chunk kept in registers over the taps (a partial last chunk is replaced by the row's
    /// last 32 bytes). `row_offset` is the first source row held in `src`.
    ///
    /// # Shapes
    /// - `src`: `[rows, row_len]` u8 → `out`: output rows `ys`, `[ys.len(), row_len]` u8, every
    ///   byte written
    #[target_feature(enable = "avx2")]
    pub(super) fn resample_vertical(
        src: &[u8],
        row_len: usize,
        row_offset: usize,
        coeffs: &Coefficients,
        ys: Range<usize>,
        out: &mut [MaybeUninit<u8>],
    ) {
        assert!(vertical_fits(row_len));
        assert_eq!(out.len(), ys.len() * row_len);
        let half = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));
        for (y, out_row) in ys.zip(out.chunks_exact_mut(row_len)) {
            let (start, n) = (coeffs.first[y] - row_offset, coeffs.count[y]);
            let weights = &coeffs.weights[y * coeffs.ksize..][..n];
            let taps = &src[start * row_len..(start + n) * row_len];
            for x in tiles(row_len, 32) {
                let mut acc = [half; 4];
                for (row, &w) in taps.chunks_exact(row_len).zip(weights) {
                    let w = _mm256_set1_epi32(w);
                    let chunk = &row[x..x + 32];
                    for (i, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: `chunk` holds 32 bytes, read 8 at `8 · i < 32`.
                        let lanes = unsafe { _mm_loadl_epi64(chunk.as_ptr().add(8 * i).cast()) };
                        let v = _mm256_cvtepu8_epi32(lanes);
                        *acc = _mm256_add_epi32(*acc, _mm256_mullo_epi32(v, w));
                    }
                }
                let dst = &mut out_row[x..x + 32];
                // SAFETY: `dst` is 32 bytes long (writing initialises `MaybeUninit` bytes).
                unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), clip8_pack(acc)) };
            }
            // The tiles cover bytes `0..row_len` of the row: all of it is written.
        }
    }
}

/// `Image.resize((out_width, out_height), filter)` of Pillow <= 12 on an 8-bit image with
/// `C` interleaved channels: horizontal pass first (over the source rows the vertical pass
/// needs), then vertical; a pass is skipped when its dimension is unchanged.
pub fn pillow_resize<const C: usize>(
    src: &[u8],
    width: usize,
    height: usize,
    out_width: usize,
    out_height: usize,
    filter: ResampleFilter,
) -> Vec<u8> {
    pillow_resize_with::<C>(
        ResizeKernels::detect(),
        src,
        (width, height),
        (out_width, out_height),
        filter,
    )
}

/// Output rows per strip when both passes run: the horizontal pass produces the source rows a
/// strip needs into a small window (L2-resident) that the vertical pass reads right away,
/// instead of a whole intermediate image.
const STRIP_ROWS: usize = 32;

/// A vector of `len` bytes filled by `write`.
///
/// # Safety
/// `write` must write every byte of the slice it is given.
unsafe fn filled_vec(len: usize, write: impl FnOnce(&mut [MaybeUninit<u8>])) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    write(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: the caller's `write` initialised all `len` bytes.
    unsafe { out.set_len(len) };
    out
}

/// [`pillow_resize`] with the given kernels.
fn pillow_resize_with<const C: usize>(
    kernels: ResizeKernels,
    src: &[u8],
    (width, height): (usize, usize),
    (out_width, out_height): (usize, usize),
    filter: ResampleFilter,
) -> Vec<u8> {
    assert_eq!(src.len(), width * height * C, "pillow_resize: buffer size");
    if (out_width, out_height) == (width, height) {
        return src.to_vec();
    }
    let row_len = out_width * C;
    if out_width == width {
        let vertical = cached_coefficients(height, out_height, filter);
        // SAFETY: the vertical pass writes every byte of its output rows.
        return unsafe {
            filled_vec(out_height * row_len, |out| {
                kernels.vertical(src, row_len, 0, &vertical, 0..out_height, out)
            })
        };
    }
    let horizontal = cached_coefficients(width, out_width, filter);
    if out_height == height {
        // SAFETY: the horizontal pass writes every byte of its output rows.
        return unsafe {
            filled_vec(height * row_len, |out| {
                kernels.horizontal::<C>(src, width, 0..height, &horizontal, out)
            })
        };
    }
    let vertical = cached_coefficients(height, out_height, filter);
    let end_row = vertical.first[out_height - 1] + vertical.count[out_height - 1];
    // Horizontal-pass rows `start..end` of the source are held in `window` (row `start` first).
    let mut window: Vec<MaybeUninit<u8>> = Vec::new();
    let (mut start, mut end) = (vertical.first[0], vertical.first[0]);
    let mut strip = |out: &mut [MaybeUninit<u8>], ys: Range<usize>| {
        // `first` and `first + count` never decrease with the output row.
        let needed = vertical.first[ys.start]
            ..ys.clone()
                .map(|y| vertical.first[y] + vertical.count[y])
                .max()
                .expect("non-empty strip");
        // Drop the rows no later output row needs, keep the rest at the front.
        if needed.start >= end {
            (start, end) = (needed.start, needed.start);
        } else if needed.start > start {
            window.copy_within((needed.start - start) * row_len..(end - start) * row_len, 0);
            start = needed.start;
        }
        if needed.end > end {
            // New rows in whole blocks of 8 (the AVX2 pass's block) up to the last needed row;
            // fewer than 8 only at the end, then re-computing up to 8 held rows instead (same
            // bytes).
            let to = (end + (needed.end - end).next_multiple_of(8)).min(end_row);
            let from = if to - end < 8 {
                to.saturating_sub(8).max(start)
            } else {
                end
            };
            let held = (to - start) * row_len;
            if window.len() < held {
                window.resize(held, MaybeUninit::uninit());
            }
            let new_rows = &mut window[(from - start) * row_len..held];
            kernels.horizontal::<C>(src, width, from..to, &horizontal, new_rows);
            end = to;
        }
        // SAFETY: rows `start..end` of the window were written by the horizontal pass (held
        // from earlier strips or written just above).
        let rows = unsafe {
            std::slice::from_raw_parts(window.as_ptr().cast::<u8>(), (end - start) * row_len)
        };
        kernels.vertical(rows, row_len, start, &vertical, ys, out);
    };
    // SAFETY: the strips cover output rows `0..out_height` and the vertical pass writes every
    // byte of its rows.
    unsafe {
        filled_vec(out_height * row_len, |out| {
            for (i, rows) in out.chunks_mut(STRIP_ROWS * row_len).enumerate() {
                let y0 = i * STRIP_ROWS;
                strip(rows, y0..y0 + rows.len() / row_len);
            }
        })
    }
}

/// Pillow's NEAREST resize (used for palette images whatever filter is asked).
fn nearest_resize(rgb: &RgbImage, out_width: usize, out_height: usize) -> RgbImage {
    let sx = rgb.width as f64 / out_width as f64;
    let sy = rgb.height as f64 / out_height as f64;
    let mut data = Vec::with_capacity(out_width * out_height * 3);
    for y in 0..out_height {
        let yi = (((y as f64 + 0.5) * sy) as usize).min(rgb.height - 1);
        for x in 0..out_width {
            let xi = (((x as f64 + 0.5) * sx) as usize).min(rgb.width - 1);
            let p = (yi * rgb.width + xi) * 3;
            data.extend_from_slice(&rgb.data[p..p + 3]);
        }
    }
    RgbImage {
        width: out_width,
        height: out_height,
        data,
    }
}

/// The size PaDT's trainer upscales an image to when a side is below 28 px, as `(w, h)`:
/// the short side becomes 28 and the other `int(other * (28 / short))` (Python float, truncated:
/// `45 * (28 / 20)` = 62.99999999999999 → 62). `None` when no side is below 28.
pub fn padt_upscale_size(width: usize, height: usize) -> Option<(usize, usize)> {
    if width >= PADT_MIN_SIDE && height >= PADT_MIN_SIDE {
        return None;
    }
    let side = PADT_MIN_SIDE as f64;
    Some(if width < height {
        (
            PADT_MIN_SIDE,
            (height as f64 * (side / width as f64)) as usize,
        )
    } else {
        (
            (width as f64 * (side / height as f64)) as usize,
            PADT_MIN_SIDE,
        )
    })
}

/// PaDT's trainer upscale (`image.resize(new, LANCZOS)` on the image in its file mode, before the
/// processor converts it to RGB). Images with both sides ≥ 28 are returned unchanged.
///
/// Per source mode, as Pillow does it: RGB / gray resample each channel; RGBA and gray+alpha are
/// resampled premultiplied (Pillow's `RGBa`) and un-premultiplied; palette images use NEAREST.
/// Only the RGB path is covered by a golden; CMYK is resampled after conversion to RGB (Pillow
/// resamples CMYK, then converts: may differ by a level).
pub fn padt_upscale(image: DecodedImage) -> DecodedImage {
    let (w, h) = (image.rgb.width, image.rgb.height);
    let Some((nw, nh)) = padt_upscale_size(w, h) else {
        return image;
    };
    let rgb = match (image.mode, &image.alpha) {
        (SourceMode::Palette, _) => nearest_resize(&image.rgb, nw, nh),
        (SourceMode::Rgba | SourceMode::GrayAlpha, Some(alpha)) => {
            let mut rgba = Vec::with_capacity(w * h * 4);
            for (px, &a) in image.rgb.data.chunks_exact(3).zip(alpha) {
                for &c in px {
                    rgba.push(muldiv255(c as u32, a as u32) as u8);
                }
                rgba.push(a);
            }
            let resized = pillow_resize::<4>(&rgba, w, h, nw, nh, ResampleFilter::Lanczos);
            let mut data = Vec::with_capacity(nw * nh * 3);
            for px in resized.chunks_exact(4) {
                let a = px[3] as u32;
                for &c in &px[..3] {
                    data.push(if a == 0 || a == 255 {
                        c
                    } else {
                        (255 * c as u32 / a).min(255) as u8
                    });
                }
            }
            RgbImage {
                width: nw,
                height: nh,
                data,
            }
        }
        _ => RgbImage {
            width: nw,
            height: nh,
            data: pillow_resize::<3>(&image.rgb.data, w, h, nw, nh, ResampleFilter::Lanczos),
        },
    };
    DecodedImage {
        rgb,
        alpha: None,
        mode: SourceMode::Rgb,
    }
}

// ---------------------------------------------------------------------------------------------
// smart_resize and the processor
// ---------------------------------------------------------------------------------------------

/// Qwen2-VL `smart_resize`: the `(height, width)` the image is resized to, multiples of `factor`,
/// with `min_pixels ≤ h·w ≤ max_pixels` where possible. Python `round` is ties-to-even. The
/// `max(factor, ·)` guard of transformers 5.x is applied in the max-pixels branch (4.50 has none;
/// identical for every size where 4.50 does not fail).
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(usize, usize), ImageError> {
    if height == 0 || width == 0 {
        return Err(ImageError::ZeroSize {
            name: "smart_resize".to_string(),
            width,
            height,
        });
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > MAX_ASPECT_RATIO {
        return Err(ImageError::AspectRatio {
            width,
            height,
            ratio,
            max: MAX_ASPECT_RATIO,
        });
    }
    let mut h_bar = (h / f).round_ties_even() as u64 * factor as u64;
    let mut w_bar = (w / f).round_ties_even() as u64 * factor as u64;
    if h_bar * w_bar > max_pixels {
        let beta = ((h * w) / max_pixels as f64).sqrt();
        h_bar = (factor as u64).max((h / beta / f).floor() as u64 * factor as u64);
        w_bar = (factor as u64).max((w / beta / f).floor() as u64 * factor as u64);
    } else if h_bar * w_bar < min_pixels {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() as u64 * factor as u64;
        w_bar = (w * beta / f).ceil() as u64 * factor as u64;
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// OpenAI CLIP mean, used by Qwen2.5-VL.
pub const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP std, used by Qwen2.5-VL (digits as in `preprocessor_config.json`).
#[allow(clippy::excessive_precision)]
pub const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Settings of the Qwen2-VL image processor. Deserialises a Hugging Face
/// `preprocessor_config.json` (unknown keys are ignored; missing keys take PaDT's values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageProcessorConfig {
    pub min_pixels: u64,
    pub max_pixels: u64,
    pub patch_size: usize,
    pub merge_size: usize,
    pub temporal_patch_size: usize,
    #[serde(rename = "image_mean")]
    pub mean: [f32; 3],
    #[serde(rename = "image_std")]
    pub std: [f32; 3],
    pub rescale_factor: f64,
}

impl Default for ImageProcessorConfig {
    /// PaDT's values: min 3136 (4·28²), max 12845056 (16384·28²), patch 14, merge 2, temporal 2.
    fn default() -> Self {
        Self {
            min_pixels: 3136,
            max_pixels: 12_845_056,
            patch_size: 14,
            merge_size: 2,
            temporal_patch_size: 2,
            mean: OPENAI_CLIP_MEAN,
            std: OPENAI_CLIP_STD,
            rescale_factor: 1.0 / 255.0,
        }
    }
}

impl ImageProcessorConfig {
    /// Parses a `preprocessor_config.json` text; `origin` names it in errors.
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self, ImageError> {
        let config: Self = serde_json::from_str(text).map_err(|e| ImageError::Config {
            origin: origin.to_string(),
            reason: e.to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Reads a `preprocessor_config.json` file.
    pub fn from_json_file(path: &Path) -> Result<Self, ImageError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ImageError::Config {
            origin: origin.clone(),
            reason: e.to_string(),
        })?;
        Self::from_json_str(&text, &origin)
    }

    /// Checks the values make sense; `origin` names the config in errors.
    pub fn validate(&self, origin: &str) -> Result<(), ImageError> {
        let fail = |reason: String| {
            Err(ImageError::Config {
                origin: origin.to_string(),
                reason,
            })
        };
        if self.patch_size == 0 || self.merge_size == 0 || self.temporal_patch_size == 0 {
            return fail(format!(
                "patch_size {}, merge_size {} and temporal_patch_size {} must be positive",
                self.patch_size, self.merge_size, self.temporal_patch_size
            ));
        }
        if self.min_pixels > self.max_pixels {
            return fail(format!(
                "min_pixels {} is larger than max_pixels {}",
                self.min_pixels, self.max_pixels
            ));
        }
        if self.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return fail(format!(
                "image_std {:?} must be finite and non-zero",
                self.std
            ));
        }
        Ok(())
    }

    /// `patch_size * merge_size` (28 for Qwen2.5-VL).
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }

    /// Values per `pixel_values` row: `3 · temporal_patch_size · patch_size²` (1176).
    pub fn patch_dim(&self) -> usize {
        3 * self.temporal_patch_size * self.patch_size * self.patch_size
    }
}

/// Rescales + normalises one band of `m·p` image rows (one row of merge blocks) into planar
/// `[3][rows][W]` f32 through the per-channel LUT: the image is read row by row, in order.
fn normalise_band(
    band: &mut [f32],
    rows: &[u8],
    width: usize,
    band_rows: usize,
    lut: &[[f32; 256]; 3],
) {
    let plane = band_rows * width;
    let (red, rest) = band.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    normalise_pixels([red, green, blue], rows, lut);
}

/// `planes[c][i] = lut[c][rgb[3·i + c]]` for every pixel `i` of `rgb` (plain loop).
fn normalise_pixels([red, green, blue]: [&mut [f32]; 3], rgb: &[u8], lut: &[[f32; 256]; 3]) {
    for (((r, g), b), px) in red
        .iter_mut()
        .zip(green.iter_mut())
        .zip(blue.iter_mut())
        .zip(rgb.chunks_exact(3))
    {
        *r = lut[0][px[0] as usize];
        *g = lut[1][px[1] as usize];
        *b = lut[2][px[2] as usize];
    }
}

/// Copies one patch out of a normalised band into a `pixel_values` row `[c][t][py][px]`:
/// the `P × P` frame at band row `y0`, column `x0` of each channel, repeated `t` times.
/// `P` is the patch size when it is known at compile time (fixed-size copies), 0 otherwise.
#[inline(always)]
fn copy_patch<const P: usize>(
    patch: &mut [f32],
    band: &[f32],
    width: usize,
    band_rows: usize,
    (y0, x0): (usize, usize),
    (p, t): (usize, usize),
) {
    let p = if P > 0 { P } else { p };
    let plane = p * p;
    for (c, channel) in patch.chunks_exact_mut(t * plane).enumerate() {
        let source = &band[c * band_rows * width..(c + 1) * band_rows * width];
        for frame in channel.chunks_exact_mut(plane) {
            for (py, dst) in frame.chunks_exact_mut(p).enumerate() {
                let src = &source[(y0 + py) * width + x0..][..p];
                if P > 0 {
                    // Fixed-size: a few vector moves instead of a `memcpy` call.
                    let dst: &mut [f32; P] = dst.try_into().expect("patch row");
                    let src: &[f32; P] = src.try_into().expect("band row");
                    *dst = *src;
                } else {
                    dst.copy_from_slice(src);
                }
            }
        }
    }
}

/// Appends the patches of one normalised band to `pixel_values` in row order (merge blocks
/// left to right, then raster inside a block), each gathered into `patch` (one row, L1) and
/// appended with [`append_streaming`] (plain version).
fn append_band_patches(
    pixel_values: &mut Vec<f32>,
    patch: &mut [f32],
    band: &[f32],
    width: usize,
    (p, m, t): (usize, usize, usize),
) {
    let band_rows = m * p;
    for bw in 0..width / (p * m) {
        for i in 0..m {
            for j in 0..m {
                let at = (i * p, (bw * m + j) * p);
                if p == 14 {
                    copy_patch::<14>(patch, band, width, band_rows, at, (p, t));
                } else {
                    copy_patch::<0>(patch, band, width, band_rows, at, (p, t));
                }
                append_streaming(pixel_values, patch);
            }
        }
    }
}

/// Which code normalise + patchify run: the plain loops above, or on x86-64 CPUs with AVX2 the
/// kernels of [`patch_avx2`] (8-lane arithmetic with the LUT's operations, which
/// [`ImageProcessor::new`] checks against every LUT entry before choosing it; patches streamed
/// from the band straight into `pixel_values`, no row buffer). The f32 values are identical
/// (unit tests `normalise_kernels_equal_the_lut`, `fast_patchify_equals_plain_patchify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchKernels {
    Plain,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl PatchKernels {
    /// The fastest kernels this CPU runs.
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if cpu_has_avx2() {
            return Self::Avx2;
        }
        Self::Plain
    }

    /// [`normalise_band`] with these kernels.
    fn normalise_band(
        self,
        band: &mut [f32],
        rows: &[u8],
        width: usize,
        band_rows: usize,
        normalisation: &Normalisation,
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => {
                let plane = band_rows * width;
                let (red, rest) = band.split_at_mut(plane);
                let (green, blue) = rest.split_at_mut(plane);
                // SAFETY: `Avx2` is only chosen when the CPU has AVX2 (`detect`).
                unsafe { patch_avx2::normalise_pixels([red, green, blue], rows, normalisation) }
            }
            Self::Plain => normalise_band(band, rows, width, band_rows, &normalisation.lut),
        }
    }

    /// Whether [`Self::normalise_band`] gives `normalisation`'s LUT entries for every byte
    /// value of every channel (the whole input domain).
    fn reproduces_lut(self, normalisation: &Normalisation) -> bool {
        let rgb: Vec<u8> = (0..=255u8).flat_map(|v| [v; 3]).collect();
        let mut band = vec![0f32; 3 * 256];
        self.normalise_band(&mut band, &rgb, 256, 1, normalisation);
        band.chunks_exact(256)
            .zip(&normalisation.lut)
            .all(|(plane, table)| {
                plane
                    .iter()
                    .zip(table)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            })
    }

    /// [`append_band_patches`] with these kernels (`patch` is only used by the plain path).
    fn append_band_patches(
        self,
        pixel_values: &mut Vec<f32>,
        patch: &mut [f32],
        band: &[f32],
        width: usize,
        (p, m, t): (usize, usize, usize),
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 if patch_avx2::streaming_fits(pixel_values, p) => {
                // SAFETY: `streaming_fits` checked the patch size and the alignment; SSE2 is
                // part of x86-64.
                unsafe { patch_avx2::append_band_patches_p14(pixel_values, band, width, (m, t)) }
            }
            _ => append_band_patches(pixel_values, patch, band, width, (p, m, t)),
        }
    }
}

/// Normalise + patchify kernels for x86-64: AVX2 arithmetic that gives the LUT's values, and the
/// patches of 14 × 14 written from the band to `pixel_values` with 16-byte streaming stores.
#[cfg(target_arch = "x86_64")]
mod patch_avx2 {
    use super::Normalisation;
    use std::arch::x86_64::*;

    /// `pshufb` masks that pick channel `c` out of 16 interleaved RGB pixels (48 bytes in three
    /// 16-byte registers): `MASKS[c][j][k]` is the byte of register `j` that holds channel `c`
    /// of pixel `k`, or −128 (zero) when it lies in another register.
    const MASKS: [[[i8; 16]; 3]; 3] = {
        let mut masks = [[[-128i8; 16]; 3]; 3];
        let mut c = 0;
        while c < 3 {
            let mut k = 0;
            while k < 16 {
                let byte = 3 * k + c;
                masks[c][byte / 16][k] = (byte % 16) as i8;
                k += 1;
            }
            c += 1;
        }
        masks
    };

    /// [`super::normalise_pixels`] with AVX2 arithmetic: 16 pixels at a time are split into
    /// channels with `pshufb`, widened and normalised 8 lanes at a time by [`normalise8`]; the
    /// last `< 16` pixels go through the plain loop (the LUT).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn normalise_pixels(
        planes: [&mut [f32]; 3],
        rgb: &[u8],
        normalisation: &Normalisation,
    ) {
        let pixels = rgb.len() / 3;
        assert!(
            planes.iter().all(|p| p.len() >= pixels),
            "normalise: planes"
        );
        let blocks = pixels / 16;
        // SAFETY: the mask arrays are 16 bytes each (unaligned loads).
        let masks = MASKS.map(|m| m.map(|r| unsafe { _mm_loadu_si128(r.as_ptr().cast()) }));
        let rescale = _mm256_set1_pd(normalisation.rescale);
        let mean = normalisation.mean.map(|x| _mm256_set1_ps(x));
        let std = normalisation.std.map(|x| _mm256_set1_ps(x));
        for k in 0..blocks {
            // SAFETY: block `k` covers bytes `48k .. 48k + 48 ≤ 3 · pixels` of `rgb` and
            // floats `16k .. 16k + 16 ≤ pixels` of each plane (asserted above).
            unsafe {
                let src = rgb.as_ptr().add(48 * k);
                let regs = [
                    _mm_loadu_si128(src.cast()),
                    _mm_loadu_si128(src.add(16).cast()),
                    _mm_loadu_si128(src.add(32).cast()),
                ];
                for c in 0..3 {
                    let bytes = _mm_or_si128(
                        _mm_or_si128(
                            _mm_shuffle_epi8(regs[0], masks[c][0]),
                            _mm_shuffle_epi8(regs[1], masks[c][1]),
                        ),
                        _mm_shuffle_epi8(regs[2], masks[c][2]),
                    );
                    let dst = planes[c].as_mut_ptr().add(16 * k);
                    let (low, high) = (bytes, _mm_srli_si128::<8>(bytes));
                    _mm256_storeu_ps(dst, normalise8(low, rescale, mean[c], std[c]));
                    _mm256_storeu_ps(dst.add(8), normalise8(high, rescale, mean[c], std[c]));
                }
            }
        }
        let [red, green, blue] = planes;
        let done = 16 * blocks;
        super::normalise_pixels(
            [&mut red[done..], &mut green[done..], &mut blue[done..]],
            &rgb[3 * done..],
            &normalisation.lut,
        );
    }

    /// The LUT's formula on the low 8 bytes of `bytes`, the same IEEE operations in the same
    /// order: `(f32(f64(v) · rescale) − mean) / std` (f64 multiply, round to f32, f32 subtract
    /// and divide), so each lane is the LUT entry of its byte.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn normalise8(bytes: __m128i, rescale: __m256d, mean: __m256, std: __m256) -> __m256 {
        let rescaled = |four: __m128i| {
            _mm256_cvtpd_ps(_mm256_mul_pd(
                _mm256_cvtepi32_pd(_mm_cvtepu8_epi32(four)),
                rescale,
            ))
        };
        let low = rescaled(bytes);
        let high = rescaled(_mm_srli_si128::<4>(bytes));
        _mm256_div_ps(_mm256_sub_ps(_mm256_set_m128(high, low), mean), std)
    }

    /// Whether [`append_band_patches_p14`] can write the next rows of `pixel_values`: patches
    /// of 14 (rows of `3·t·196` floats, so every 14 × 14 frame and every pair of its rows
    /// starts on 16 bytes when the first row does) and a 16-byte aligned end of the vector.
    pub(super) fn streaming_fits(pixel_values: &mut Vec<f32>, patch_size: usize) -> bool {
        patch_size == 14 && (pixel_values.spare_capacity_mut().as_ptr() as usize).is_multiple_of(16)
    }

    /// Appends the patches of one normalised band of `m · 14` rows (planar `[3][m·14][W]`) to
    /// `pixel_values` in row order, each row `[c][t][py][px]` written straight from the band:
    /// per pair of patch rows, 28 floats as 7 streaming 16-byte stores (the 7th register joins
    /// the end of one row and the start of the next), repeated for the `t` frames. Call
    /// [`super::streaming_done`] after the last band.
    ///
    /// # Safety
    /// [`streaming_fits`] must hold; `pixel_values` must have room for the band's patches.
    pub(super) unsafe fn append_band_patches_p14(
        pixel_values: &mut Vec<f32>,
        band: &[f32],
        width: usize,
        (m, t): (usize, usize),
    ) {
        const P: usize = 14;
        let band_rows = m * P;
        let plane = band_rows * width;
        let values = (width / P) * m * 3 * t * P * P;
        assert!(band.len() >= 3 * plane, "patchify: band");
        let spare = pixel_values.spare_capacity_mut();
        assert!(spare.len() >= values, "patchify: pixel_values capacity");
        let mut dst = spare.as_mut_ptr().cast::<f32>();
        for bw in 0..width / (P * m) {
            for i in 0..m {
                for j in 0..m {
                    let origin = i * P * width + (bw * m + j) * P;
                    for c in 0..3 {
                        for _ in 0..t {
                            // SAFETY: the frame's rows `i·14 .. i·14 + 14` and columns
                            // `x0 .. x0 + 14` (x0 + 14 ≤ W) lie inside plane `c` of the band
                            // (asserted); `dst` advances by 196 floats per frame, `values` in
                            // all, inside the spare capacity (asserted) and 16-byte aligned
                            // (`streaming_fits`, 196 · 4 = 49 · 16).
                            unsafe {
                                stream_frame(band.as_ptr().add(c * plane + origin), width, dst);
                                dst = dst.add(P * P);
                            }
                        }
                    }
                }
            }
        }
        // SAFETY: `values` floats after the old end were written above.
        unsafe { pixel_values.set_len(pixel_values.len() + values) };
    }

    /// Streams the 14 × 14 frame at `src` (rows `width` floats apart) to the 196 floats at
    /// `dst`, row after row.
    ///
    /// # Safety
    /// The 14 rows of 14 floats at `src` must be readable; `dst` 16-byte aligned with 196
    /// writable floats.
    #[inline(always)]
    unsafe fn stream_frame(src: *const f32, width: usize, dst: *mut f32) {
        for pair in 0..7 {
            // SAFETY: rows `2·pair` and `2·pair + 1` of the frame, floats 0..14 of each, are
            // readable; the 28 destination floats start on 16 bytes (112 = 7 · 16 per pair).
            unsafe {
                let r0 = src.add(2 * pair * width);
                let r1 = r0.add(width);
                let d = dst.add(28 * pair);
                // Floats 12, 13 of the first row and 0, 1 of the second.
                let seam = _mm_castpd_ps(_mm_loadh_pd(_mm_load_sd(r0.add(12).cast()), r1.cast()));
                _mm_stream_ps(d, _mm_loadu_ps(r0));
                _mm_stream_ps(d.add(4), _mm_loadu_ps(r0.add(4)));
                _mm_stream_ps(d.add(8), _mm_loadu_ps(r0.add(8)));
                _mm_stream_ps(d.add(12), seam);
                _mm_stream_ps(d.add(16), _mm_loadu_ps(r1.add(2)));
                _mm_stream_ps(d.add(20), _mm_loadu_ps(r1.add(6)));
                _mm_stream_ps(d.add(24), _mm_loadu_ps(r1.add(10)));
            }
        }
    }
}

/// Appends `values` to `out` (which has the capacity) with non-temporal stores where the
/// alignment allows, else with a plain copy. Call [`streaming_done`] after the last append.
#[inline]
fn append_streaming(out: &mut Vec<f32>, values: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
        let spare = out.spare_capacity_mut();
        let dst = spare.as_mut_ptr().cast::<f32>();
        if spare.len() >= values.len()
            && values.len().is_multiple_of(4)
            && (dst as usize).is_multiple_of(16)
        {
            // SAFETY: `dst` is 16-byte aligned with room for `values.len()` floats (checked
            // above); SSE is part of x86-64; every one of those floats is written before
            // `set_len` makes them part of the vector.
            unsafe {
                for k in (0..values.len()).step_by(4) {
                    _mm_stream_ps(dst.add(k), _mm_loadu_ps(values.as_ptr().add(k)));
                }
                out.set_len(out.len() + values.len());
            }
            return;
        }
    }
    out.extend_from_slice(values);
}

/// Orders the streaming stores of [`append_streaming`] before any later store (`sfence`).
#[inline]
fn streaming_done() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// The processor output for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedImage {
    /// `[num_patches, patch_dim]` row-major.
    pub pixel_values: Vec<f32>,
    pub num_patches: usize,
    pub patch_dim: usize,
    /// `[t, gh, gw]` = `[1, h/14, w/14]`.
    pub grid_thw: [usize; 3],
    /// `(height, width)` after `smart_resize`.
    pub resized_hw: (usize, usize),
}

impl ProcessedImage {
    /// Tokens the LLM sees for this image (`<|image_pad|>` count): `t·gh·gw / merge²`.
    pub fn num_merged_tokens(&self, merge_size: usize) -> usize {
        self.num_patches / (merge_size * merge_size)
    }
}

/// Rescale + normalise of the processor: the settings and their per-channel lookup tables.
#[derive(Debug, Clone)]
struct Normalisation {
    rescale: f64,
    mean: [f32; 3],
    std: [f32; 3],
    /// `lut[c][v]` = `(f32(f64(v) · rescale) − mean_c) / std_c` in f32.
    lut: [[f32; 256]; 3],
}

impl Normalisation {
    fn new(config: &ImageProcessorConfig) -> Self {
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                let rescaled = (v as f64 * config.rescale_factor) as f32;
                *out = (rescaled - config.mean[c]) / config.std[c];
            }
        }
        Self {
            rescale: config.rescale_factor,
            mean: config.mean,
            std: config.std,
            lut,
        }
    }
}

/// The Qwen2-VL image processor (transformers 4.50 slow path) with precomputed per-channel
/// lookup tables for rescale + normalise.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    config: ImageProcessorConfig,
    normalisation: Normalisation,
    /// The fastest [`PatchKernels`] of this CPU whose values are the LUT's.
    kernels: PatchKernels,
}

impl ImageProcessor {
    pub fn new(config: ImageProcessorConfig) -> Result<Self, ImageError> {
        config.validate("ImageProcessor::new")?;
        let normalisation = Normalisation::new(&config);
        // IEEE arithmetic makes the vector kernels equal to the LUT; checked anyway on all 768
        // inputs (microseconds), so a difference could only cost speed, never exactness.
        let kernels = match PatchKernels::detect() {
            fast if fast.reproduces_lut(&normalisation) => fast,
            _ => PatchKernels::Plain,
        };
        Ok(Self {
            config,
            normalisation,
            kernels,
        })
    }

    pub fn config(&self) -> &ImageProcessorConfig {
        &self.config
    }

    /// `(height, width)` the processor resizes an image of this size to.
    pub fn target_size(&self, height: usize, width: usize) -> Result<(usize, usize), ImageError> {
        smart_resize(
            height,
            width,
            self.config.factor(),
            self.config.min_pixels,
            self.config.max_pixels,
        )
    }

    /// Pillow BICUBIC resize to the `smart_resize` size (a copy when the size already fits).
    pub fn resize(&self, image: &RgbImage) -> Result<RgbImage, ImageError> {
        let (h, w) = self.target_size(image.height, image.width)?;
        Ok(RgbImage {
            width: w,
            height: h,
            data: pillow_resize::<3>(
                &image.data,
                image.width,
                image.height,
                w,
                h,
                ResampleFilter::Bicubic,
            ),
        })
    }

    /// Rescale, normalise, duplicate over time and patchify an image whose sides are multiples of
    /// `patch_size · merge_size`.
    ///
    /// # Shapes
    /// - `resized`: `[H, W, 3]` u8
    /// - output `pixel_values`: `[(H/p)·(W/p), 3·t·p·p]`, rows ordered by merge block (raster),
    ///   then inside the block (raster); each row `[c][t][py][px]`.
    pub fn patchify(&self, resized: &RgbImage) -> ProcessedImage {
        self.patchify_with(self.kernels, resized)
    }

    /// [`Self::patchify`] with the given kernels.
    fn patchify_with(&self, kernels: PatchKernels, resized: &RgbImage) -> ProcessedImage {
        let p = self.config.patch_size;
        let m = self.config.merge_size;
        let t = self.config.temporal_patch_size;
        let factor = p * m;
        assert!(
            resized.height.is_multiple_of(factor) && resized.width.is_multiple_of(factor),
            "patchify: {}x{} is not a multiple of {factor}",
            resized.width,
            resized.height
        );
        let (gh, gw) = (resized.height / p, resized.width / p);
        let patch_dim = self.config.patch_dim();
        let num_patches = gh * gw;
        // Allocated once, not zero-filled: the bands' appends write every value.
        let mut pixel_values = Vec::with_capacity(num_patches * patch_dim);
        // One row of merge blocks at a time: its `m·p` image rows are normalised into a planar
        // band (L2-resident, read in order), then its patches are written to the output with
        // streaming stores: the 7.4 MB output is written once, without first being read into
        // the cache.
        let width = resized.width;
        let band_rows = m * p;
        let mut band = vec![0f32; 3 * band_rows * width];
        let mut patch = vec![0f32; patch_dim];
        for rows in resized.data.chunks_exact(band_rows * width * 3) {
            kernels.normalise_band(&mut band, rows, width, band_rows, &self.normalisation);
            kernels.append_band_patches(&mut pixel_values, &mut patch, &band, width, (p, m, t));
        }
        streaming_done();
        assert_eq!(pixel_values.len(), num_patches * patch_dim);
        ProcessedImage {
            pixel_values,
            num_patches,
            patch_dim,
            grid_thw: [1, gh, gw],
            resized_hw: (resized.height, resized.width),
        }
    }

    /// Resize + rescale + normalise + patchify a decoded RGB image (the processor part).
    ///
    /// # Shapes
    /// - `image`: `[H, W, 3]` u8 → `pixel_values` `[gh·gw, 1176]`, `grid_thw` `[1, gh, gw]`
    pub fn preprocess(&self, image: &RgbImage) -> Result<ProcessedImage, ImageError> {
        let resized = self.resize(image)?;
        Ok(self.patchify(&resized))
    }

    /// The whole path of one training image: decode, PaDT's tiny-image upscale, processor.
    pub fn process_encoded(
        &self,
        bytes: &[u8],
        name: &str,
        options: &DecodeOptions,
    ) -> Result<ProcessedImage, ImageError> {
        let decoded = padt_upscale(decode_image(bytes, name, options)?);
        self.preprocess(&decoded.rgb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_ties_to_even_and_branches() {
        // 434/28 = 15.5 -> 16, 462/28 = 16.5 -> 16.
        assert_eq!(
            smart_resize(462, 434, 28, 3136, 12_845_056).unwrap(),
            (448, 448)
        );
        // min branch: 60x40 -> 84x56.
        assert_eq!(
            smart_resize(60, 40, 28, 3136, 12_845_056).unwrap(),
            (84, 56)
        );
        // max branch.
        assert_eq!(smart_resize(174, 200, 28, 3136, 12544).unwrap(), (84, 112));
        assert!(matches!(
            smart_resize(28, 28 * 201, 28, 3136, 12_845_056),
            Err(ImageError::AspectRatio { .. })
        ));
        assert!(matches!(
            smart_resize(0, 5, 28, 3136, 12_845_056),
            Err(ImageError::ZeroSize { .. })
        ));
    }

    #[test]
    fn padt_upscale_size_truncates_like_python() {
        assert_eq!(padt_upscale_size(20, 45), Some((28, 62)));
        assert_eq!(padt_upscale_size(20, 85), Some((28, 118)));
        // Python: int(45 * (28 / 10)) = int(125.99999999999999) = 125.
        assert_eq!(padt_upscale_size(45, 10), Some((125, 28)));
        assert_eq!(padt_upscale_size(28, 28), None);
    }

    /// The plain kernels and, where the CPU has them, the AVX2 ones.
    fn all_kernels() -> Vec<ResizeKernels> {
        let mut kernels = vec![ResizeKernels::Plain];
        if ResizeKernels::detect() != ResizeKernels::Plain {
            kernels.push(ResizeKernels::detect());
        } else {
            eprintln!("this CPU has no AVX2: only the plain resize kernels are tested");
        }
        kernels
    }

    /// splitmix64: a small seeded generator for the random-image tests.
    struct SplitMix(u64);

    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform in `lo..=hi` (slightly biased; fine for test sizes).
        fn between(&mut self, lo: usize, hi: usize) -> usize {
            lo + (self.next() % (hi - lo + 1) as u64) as usize
        }

        /// Random bytes; every third image is a photo-like gradient with noise instead, so the
        /// sums also land near the clipping edges and in the middle.
        fn image(&mut self, len: usize) -> Vec<u8> {
            if self.next().is_multiple_of(3) {
                (0..len)
                    .map(|i| ((i / 5) as u64 * 3 + self.next() % 24) as u8)
                    .collect()
            } else {
                (0..len).map(|_| self.next() as u8).collect()
            }
        }
    }

    /// Sizes where the kernels change behaviour: below one 8-byte tile or one 8-row block,
    /// widths and heights that are not multiples of 8 or 32 bytes, up- and down-scales.
    fn resize_cases(rng: &mut SplitMix) -> Vec<((usize, usize), (usize, usize))> {
        let mut cases = vec![
            ((640, 480), (644, 476)),
            ((427, 640), (420, 644)),
            ((612, 612), (616, 616)),
            ((500, 375), (504, 364)),
            ((1, 1), (9, 9)),
            ((2, 9), (3, 8)),
            ((8, 8), (7, 7)),
            ((37, 50), (13, 200)),
            ((200, 17), (11, 90)),
            ((33, 31), (33, 64)),
            ((33, 31), (90, 31)),
        ];
        for _ in 0..150 {
            let small = rng.next().is_multiple_of(4);
            let max = if small { 12 } else { 120 };
            let (w, h) = (rng.between(1, max), rng.between(1, max));
            let (ow, oh) = (rng.between(1, 2 * max), rng.between(1, 2 * max));
            cases.push(((w, h), (ow, oh)));
        }
        cases
    }

    fn check_kernels_agree<const C: usize>(seed: u64) {
        let mut rng = SplitMix(seed);
        for ((w, h), (ow, oh)) in resize_cases(&mut rng) {
            let src = rng.image(w * h * C);
            for filter in [ResampleFilter::Bicubic, ResampleFilter::Lanczos] {
                let plain =
                    pillow_resize_with::<C>(ResizeKernels::Plain, &src, (w, h), (ow, oh), filter);
                assert_eq!(plain.len(), ow * oh * C);
                for kernels in all_kernels() {
                    let out = pillow_resize_with::<C>(kernels, &src, (w, h), (ow, oh), filter);
                    assert!(
                        out == plain,
                        "{kernels:?} C {C} {w}x{h} -> {ow}x{oh} {filter:?}: {} bytes differ",
                        out.iter().zip(&plain).filter(|(a, b)| a != b).count()
                    );
                }
            }
        }
    }

    #[test]
    fn avx2_resize_equals_plain_resize() {
        check_kernels_agree::<1>(1);
        check_kernels_agree::<3>(3);
        check_kernels_agree::<4>(4);
    }

    fn horizontal_vec<const C: usize>(
        kernels: ResizeKernels,
        src: &[u8],
        src_width: usize,
        rows: Range<usize>,
        coeffs: &Coefficients,
    ) -> Vec<u8> {
        let len = rows.len() * coeffs.first.len() * C;
        // SAFETY: the horizontal pass writes every byte of its output.
        unsafe {
            filled_vec(len, |out| {
                kernels.horizontal::<C>(src, src_width, rows, coeffs, out)
            })
        }
    }

    fn vertical_vec(
        kernels: ResizeKernels,
        src: &[u8],
        (row_len, row_offset): (usize, usize),
        coeffs: &Coefficients,
        ys: Range<usize>,
    ) -> Vec<u8> {
        // SAFETY: the vertical pass writes every byte of its output.
        unsafe {
            filled_vec(ys.len() * row_len, |out| {
                kernels.vertical(src, row_len, row_offset, coeffs, ys, out)
            })
        }
    }

    #[test]
    fn resize_passes_agree_on_row_ranges_and_offsets() {
        let mut rng = SplitMix(7);
        let plain = ResizeKernels::Plain;
        for (w, ow, filter) in [
            (37usize, 50usize, ResampleFilter::Bicubic),
            (50, 37, ResampleFilter::Bicubic),
            (640, 644, ResampleFilter::Bicubic),
            (30, 90, ResampleFilter::Lanczos),
        ] {
            let coeffs = precompute_coefficients(w, ow, filter);
            let h = 21;
            let src3 = rng.image(w * h * 3);
            let src4 = rng.image(w * h * 4);
            let plain3 = horizontal_vec::<3>(plain, &src3, w, 2..h, &coeffs);
            let plain4 = horizontal_vec::<4>(plain, &src4, w, 0..h - 3, &coeffs);
            // Vertical: `src` holds source rows 3 .. h + 3 (as after a horizontal pass that
            // started at row 3); the weights address rows from 3 on; output rows 1 .. ow - 2.
            let mut vcoeffs = precompute_coefficients(h, ow, filter);
            vcoeffs.first.iter_mut().for_each(|f| *f += 3);
            let tall = rng.image(h * w * 3);
            let ys = 1..ow - 2;
            let plain_v = vertical_vec(plain, &tall, (w * 3, 3), &vcoeffs, ys.clone());
            for kernels in all_kernels() {
                assert_eq!(
                    horizontal_vec::<3>(kernels, &src3, w, 2..h, &coeffs),
                    plain3
                );
                assert_eq!(
                    horizontal_vec::<4>(kernels, &src4, w, 0..h - 3, &coeffs),
                    plain4
                );
                let v = vertical_vec(kernels, &tall, (w * 3, 3), &vcoeffs, ys.clone());
                assert_eq!(v, plain_v);
            }
        }
    }

    /// The strip-by-strip driver gives the same bytes as one horizontal pass over all rows
    /// followed by one vertical pass (the two-pass order Pillow runs), whatever the kernels.
    #[test]
    fn strips_equal_two_whole_passes() {
        let mut rng = SplitMix(11);
        for ((w, h), (ow, oh)) in [
            ((640, 480), (644, 476)),
            ((480, 640), (476, 644)),
            ((300, 200), (90, 500)),
            ((90, 500), (300, 37)),
            ((50, 9), (61, 200)),
        ] {
            let src = rng.image(w * h * 3);
            let filter = ResampleFilter::Bicubic;
            let hc = precompute_coefficients(w, ow, filter);
            let vc = precompute_coefficients(h, oh, filter);
            let rows = vc.first[0]..vc.first[oh - 1] + vc.count[oh - 1];
            for kernels in all_kernels() {
                let mid = horizontal_vec::<3>(kernels, &src, w, rows.clone(), &hc);
                let whole = vertical_vec(kernels, &mid, (ow * 3, rows.start), &vc, 0..oh);
                let strips = pillow_resize_with::<3>(kernels, &src, (w, h), (ow, oh), filter);
                assert!(whole == strips, "{kernels:?} {w}x{h} -> {ow}x{oh}");
            }
        }
    }

    /// The per-thread cache gives the tables [`precompute_coefficients`] computes, for more
    /// size pairs than it holds, each asked for several times (hits, misses and evictions).
    #[test]
    fn cached_coefficients_equal_fresh_ones() {
        let mut rng = SplitMix(17);
        for _ in 0..200 {
            let (n, m) = (rng.between(1, 6), rng.between(1, 6));
            let filter = if rng.next().is_multiple_of(2) {
                ResampleFilter::Bicubic
            } else {
                ResampleFilter::Lanczos
            };
            let cached = cached_coefficients(n, m, filter);
            let fresh = precompute_coefficients(n, m, filter);
            assert_eq!(
                (cached.ksize, &cached.first, &cached.count, &cached.weights),
                (fresh.ksize, &fresh.first, &fresh.count, &fresh.weights),
                "{n} -> {m} {filter:?}"
            );
        }
    }

    fn fixture_jpeg() -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/data/preprocess/inputs/rocket_213x142_q90_420_jpg.jpg");
        std::fs::read(path).unwrap()
    }

    #[test]
    fn libjpeg_turbo_refuses_truncated_corrupt_and_oversized_files() {
        let options = DecodeOptions::default();
        let jpeg = fixture_jpeg();
        assert!(decode_image(&jpeg, "ok.jpg", &options).is_ok());
        // Cut inside the entropy-coded data: Pillow says "image file is truncated".
        let err = decode_image(&jpeg[..jpeg.len() / 2], "cut.jpg", &options).unwrap_err();
        assert!(
            matches!(err, ImageError::Decode { format: "JPEG", .. })
                && err.to_string().contains("cut.jpg")
                && err.to_string().contains("truncated"),
            "{err}"
        );
        // Cut inside the headers.
        let err = decode_image(&jpeg[..300], "head.jpg", &options).unwrap_err();
        assert!(matches!(err, ImageError::Decode { .. }), "{err}");
        // A JPEG signature followed by garbage: libjpeg's own message, no panic, no exit.
        let mut garbage = vec![0xff, 0xd8, 0xff, 0x01];
        garbage.extend(std::iter::repeat_n(0x5a, 64));
        let err = decode_image(&garbage, "bad.jpg", &options).unwrap_err();
        assert!(
            matches!(err, ImageError::Decode { format: "JPEG", .. })
                && err.to_string().contains("bad.jpg"),
            "{err}"
        );
        // The pixel limit applies before any pixel is decoded.
        let small = DecodeOptions {
            max_decoded_pixels: 1000,
            ..options
        };
        let err = decode_image(&jpeg, "big.jpg", &small).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::TooLarge {
                    width: 213,
                    height: 142,
                    ..
                }
            ),
            "{err}"
        );
        // The decoder is reusable after errors (no state leaks between calls).
        assert!(decode_image(&jpeg, "again.jpg", &options).is_ok());
    }

    /// The processor's patchify written as the plain index formula.
    fn patchify_by_formula(config: &ImageProcessorConfig, image: &RgbImage) -> Vec<f32> {
        let lut = ImageProcessor::new(config.clone())
            .unwrap()
            .normalisation
            .lut;
        let (p, m, t) = (
            config.patch_size,
            config.merge_size,
            config.temporal_patch_size,
        );
        let (gh, gw) = (image.height / p, image.width / p);
        let mut out = Vec::new();
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for i in 0..m {
                    for j in 0..m {
                        for (c, lut) in lut.iter().enumerate() {
                            for _ in 0..t {
                                for py in 0..p {
                                    for px in 0..p {
                                        let y = (bh * m + i) * p + py;
                                        let x = (bw * m + j) * p + px;
                                        out.push(
                                            lut[image.data[(y * image.width + x) * 3 + c] as usize],
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn banded_patchify_equals_the_index_formula() {
        for (p, m, t) in [(14usize, 2usize, 2usize), (8, 1, 1), (9, 2, 3), (14, 1, 2)] {
            let config = ImageProcessorConfig {
                patch_size: p,
                merge_size: m,
                temporal_patch_size: t,
                ..ImageProcessorConfig::default()
            };
            let (w, h) = (p * m * 3, p * m * 2);
            let image = RgbImage {
                width: w,
                height: h,
                data: (0..w * h * 3).map(|i| (i * 7919 % 251) as u8).collect(),
            };
            let out = ImageProcessor::new(config.clone())
                .unwrap()
                .patchify(&image);
            assert_eq!(out.num_patches * out.patch_dim, out.pixel_values.len());
            assert_eq!(
                out.pixel_values,
                patchify_by_formula(&config, &image),
                "p {p} m {m} t {t}"
            );
        }
    }

    /// The plain patch kernels and, where the CPU has them, the AVX2 ones.
    fn all_patch_kernels() -> Vec<PatchKernels> {
        let mut kernels = vec![PatchKernels::Plain];
        if PatchKernels::detect() != PatchKernels::Plain {
            kernels.push(PatchKernels::detect());
        } else {
            eprintln!("this CPU has no AVX2: only the plain patch kernels are tested");
        }
        kernels
    }

    /// Every pixel count from 0 to 70 (whole 16-pixel blocks and every tail), every byte value
    /// in every channel, several settings: the kernels' planes are the LUT's entries, and the
    /// processor picks the fastest kernels.
    #[test]
    fn normalise_kernels_equal_the_lut() {
        let mut rng = SplitMix(5);
        let mut configs = vec![ImageProcessorConfig::default()];
        for rescale in [1.0 / 127.5, 0.5, 1.0 / 255.0] {
            configs.push(ImageProcessorConfig {
                mean: [0.0; 3].map(|_| rng.between(0, 1000) as f32 / 997.0),
                std: [0.0; 3].map(|_| rng.between(1, 1000) as f32 / 1009.0),
                rescale_factor: rescale,
                ..ImageProcessorConfig::default()
            });
        }
        for config in configs {
            let processor = ImageProcessor::new(config).unwrap();
            assert_eq!(processor.kernels, PatchKernels::detect());
            let normalisation = &processor.normalisation;
            for pixels in (0..=70).chain([256, 1000]) {
                let rgb: Vec<u8> = if pixels == 1000 {
                    rng.image(3 * pixels)
                } else {
                    (0..3 * pixels).map(|i| (i * 7 + i / 3) as u8).collect()
                };
                let expected: Vec<f32> = (0..3)
                    .flat_map(|c| (0..pixels).map(move |i| (c, i)))
                    .map(|(c, i)| normalisation.lut[c][rgb[3 * i + c] as usize])
                    .collect();
                for kernels in all_patch_kernels() {
                    assert!(kernels.reproduces_lut(normalisation));
                    let mut band = vec![f32::NAN; 3 * pixels];
                    kernels.normalise_band(&mut band, &rgb, pixels, 1, normalisation);
                    let same = band
                        .iter()
                        .zip(&expected)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{kernels:?}, {pixels} pixels");
                }
            }
        }
    }

    /// Random images, grids and processor settings (per-channel means and stds that differ, so
    /// a channel mix-up shows): the fast kernels give the plain path's `pixel_values` bit for
    /// bit, and the plain path gives the index formula's.
    #[test]
    fn fast_patchify_equals_plain_patchify() {
        let mut rng = SplitMix(13);
        for case in 0..60 {
            let (p, m, t) = [
                (14, 2, 2),
                (14, 1, 2),
                (14, 3, 1),
                (14, 2, 3),
                (8, 1, 1),
                (9, 2, 3),
            ][case % 6];
            let config = ImageProcessorConfig {
                patch_size: p,
                merge_size: m,
                temporal_patch_size: t,
                mean: [0.1, 0.5, 0.9].map(|x| x + rng.between(0, 100) as f32 / 1000.0),
                std: [0.2, 0.3, 0.4].map(|x| x + rng.between(0, 100) as f32 / 1000.0),
                ..ImageProcessorConfig::default()
            };
            let processor = ImageProcessor::new(config.clone()).unwrap();
            let factor = p * m;
            let (w, h) = (factor * rng.between(1, 12), factor * rng.between(1, 5));
            let image = RgbImage {
                width: w,
                height: h,
                data: rng.image(w * h * 3),
            };
            let plain = processor.patchify_with(PatchKernels::Plain, &image);
            if case < 12 {
                assert_eq!(plain.pixel_values, patchify_by_formula(&config, &image));
            }
            for kernels in all_patch_kernels() {
                let out = processor.patchify_with(kernels, &image);
                assert_eq!(
                    (out.num_patches, out.patch_dim, out.grid_thw),
                    (plain.num_patches, plain.patch_dim, plain.grid_thw)
                );
                let same = out
                    .pixel_values
                    .iter()
                    .zip(&plain.pixel_values)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same && out.pixel_values.len() == plain.pixel_values.len(),
                    "{kernels:?} p {p} m {m} t {t} {w}x{h}"
                );
            }
        }
    }

    #[test]
    fn cmyk_conversion_matches_pillow_formula() {
        assert_eq!(cmyk_to_rgb(&[0, 0, 0, 0]), vec![255, 255, 255]);
        assert_eq!(cmyk_to_rgb(&[255, 255, 255, 0]), vec![0, 0, 0]);
        assert_eq!(cmyk_to_rgb(&[0, 128, 255, 255]), vec![0, 0, 0]);
        // nk = 155; 155 - round(100*155/255) = 155 - 61 = 94
        assert_eq!(cmyk_to_rgb(&[100, 0, 0, 100])[0], 94);
    }
}
