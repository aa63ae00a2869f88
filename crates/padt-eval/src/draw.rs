//! Visualisation of detected objects: masks blended in, box outlines, and `label score` tags in
//! a built-in 5×7 bitmap font (upper-case letters, digits, `.`, `-`; other characters show as a
//! hollow box), so no system font is needed.

use image::{Rgb, RgbImage};
use padt_core::rle::Rle;

use crate::postprocess::DetectedObject;

/// Distinct colours, cycled per object.
const PALETTE: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
];

/// Mask opacity.
const MASK_ALPHA: f32 = 0.45;

/// Draws `objects` on a copy of `image`. Masks must be in `image`'s size (they are skipped
/// otherwise); boxes are clipped to the image.
pub fn draw_objects(image: &RgbImage, objects: &[DetectedObject]) -> RgbImage {
    let mut canvas = image.clone();
    let (w, h) = canvas.dimensions();
    for (i, object) in objects.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        if let Some(rle) = &object.mask {
            if rle.size() == [h, w] {
                blend_mask(&mut canvas, rle, color);
            }
        }
    }
    for (i, object) in objects.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let [x, y, bw, bh] = object.bbox;
        let x0 = x.max(0.0) as i64;
        let y0 = y.max(0.0) as i64;
        let x1 = (x + bw).round() as i64 - 1;
        let y1 = (y + bh).round() as i64 - 1;
        draw_rect(&mut canvas, x0, y0, x1, y1, 2, color);
        let tag = format!(
            "{} {:.2}",
            object.label.as_deref().unwrap_or("?"),
            object.score
        );
        draw_tag(&mut canvas, x0, y0, &tag, color);
    }
    canvas
}

/// [`draw_objects`] on raw `[height, width, 3]` RGB bytes, encoded as PNG.
pub fn draw_png(
    rgb: &[u8],
    width: u32,
    height: u32,
    objects: &[DetectedObject],
) -> Result<Vec<u8>, image::ImageError> {
    let image = RgbImage::from_raw(width, height, rgb.to_vec()).ok_or_else(|| {
        image::ImageError::Parameter(image::error::ParameterError::from_kind(
            image::error::ParameterErrorKind::DimensionMismatch,
        ))
    })?;
    let canvas = draw_objects(&image, objects);
    let mut png = Vec::new();
    canvas.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    Ok(png)
}

fn blend_mask(canvas: &mut RgbImage, rle: &Rle, color: [u8; 3]) {
    let w = canvas.width() as usize;
    // Row-major 0/1 mask of the canvas size.
    let bits = rle.decode_row_major();
    for (i, &b) in bits.iter().enumerate() {
        if b == 0 {
            continue;
        }
        let p = canvas.get_pixel_mut((i % w) as u32, (i / w) as u32);
        for (channel, &tint) in p.0.iter_mut().zip(&color) {
            *channel =
                (*channel as f32 * (1.0 - MASK_ALPHA) + tint as f32 * MASK_ALPHA).round() as u8;
        }
    }
}

fn put(canvas: &mut RgbImage, x: i64, y: i64, color: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as u32) < canvas.width() && (y as u32) < canvas.height() {
        canvas.put_pixel(x as u32, y as u32, Rgb(color));
    }
}

/// Rectangle outline of `thickness` px inside `[x0, x1] × [y0, y1]`.
fn draw_rect(
    canvas: &mut RgbImage,
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
    thickness: i64,
    color: [u8; 3],
) {
    for t in 0..thickness {
        for x in x0..=x1 {
            put(canvas, x, y0 + t, color);
            put(canvas, x, y1 - t, color);
        }
        for y in y0..=y1 {
            put(canvas, x0 + t, y, color);
            put(canvas, x1 - t, y, color);
        }
    }
}

/// A filled tag with white text, at the box's top-left corner (inside the image).
fn draw_tag(canvas: &mut RgbImage, x: i64, y: i64, text: &str, color: [u8; 3]) {
    let (cw, ch) = (6i64, 9i64);
    let width = cw * text.chars().count() as i64 + 1;
    let x = x.min(canvas.width() as i64 - width).max(0);
    let y = y.min(canvas.height() as i64 - ch).max(0);
    for dy in 0..ch {
        for dx in 0..width {
            put(canvas, x + dx, y + dy, color);
        }
    }
    for (k, c) in text.chars().enumerate() {
        let rows = glyph(c);
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..5 {
                if bits & (0b10000 >> col) != 0 {
                    put(
                        canvas,
                        x + 1 + cw * k as i64 + col,
                        y + 1 + r as i64,
                        [255, 255, 255],
                    );
                }
            }
        }
    }
}

/// 5×7 glyph rows, top to bottom, bit 4 = leftmost column.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        ' ' => [0; 7],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_mask_box_and_tag() {
        let image = RgbImage::from_pixel(40, 30, Rgb([0, 0, 0]));
        let mut bits = vec![0u8; 40 * 30];
        for y in 20..30 {
            for x in 20..40 {
                bits[y * 40 + x] = 1;
            }
        }
        let object = DetectedObject {
            sample: 0,
            label: Some("cat".into()),
            vrts: String::new(),
            patches: vec![],
            score: 0.5,
            score_logit: 0.0,
            box_cxcywh: [0.5; 4],
            box_xywh_norm: [0.0; 4],
            bbox: [10.0, 12.0, 20.0, 10.0],
            mask: Some(Rle::encode_row_major(&bits, 30, 40).unwrap()),
            mask_area: Some(200),
        };
        let out = draw_objects(&image, &[object]);
        let red = PALETTE[0];
        // Mask blended (not on the box outline, below the tag).
        let p = out.get_pixel(35, 25).0;
        assert_eq!(p, [(red[0] as f32 * MASK_ALPHA).round() as u8, 11, 34]);
        // Box outline: bottom-right corner (29, 21) is drawn.
        assert_eq!(out.get_pixel(29, 21).0, red);
        // The tag's background at its top-left corner, white text inside it.
        assert_eq!(out.get_pixel(10, 12).0, red);
        let tag_has_text =
            (12..21).any(|y| (10..50).any(|x| out.get_pixel(x.min(39), y).0 == [255; 3]));
        assert!(tag_has_text);
        // Untouched background.
        assert_eq!(out.get_pixel(2, 2).0, [0, 0, 0]);
    }
}
