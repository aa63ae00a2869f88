//! Foreground patches of an object mask, exactly as PaDT's preprocess scripts select them.
//!
//! PaDT resizes `mask * 255` with OpenCV's bilinear `cv2.resize` to `(28*gw, 28*gh)`, where
//! `(gh, gw) = (round(H/28), round(W/28))` (Python `round`, ties to even), averages every 28x28
//! block with numpy and keeps the block when its mean reaches 255/28 (≈ 3.6 % coverage).
//! Two variants exist ([`PatchRule`]):
//! - [`PatchRule::CocoU8`] (`process_coco.py`, `process_ric.py`): uint8 mask, OpenCV's CV_8U
//!   fixed-point bilinear (11-bit coefficients, the SIMD vertical rounding), float64 numpy
//!   means, keep when `mean >= 255/28`;
//! - [`PatchRule::RefcocoF32`] (`process_refcoco.py`): float32 mask, OpenCV's float bilinear,
//!   float32 numpy means (pairwise row sums), keep when `mean > f32(255/28)`.
//!
//! The arithmetic (coefficient rounding, clamping, summation order) reproduces the recipe in
//! `tests/fixtures/data/README.md` ("Patch selection: the bit-exact recipe") so that even exact
//! ties land on the same side as PaDT.
//!
//! # API
//! - [`grid_for`]`(width, height) -> (gh, gw)`;
//! - [`foreground_patches`]`(&Rle, rule) -> Vec<u32>`: kept block indices `row * gw + col`,
//!   ascending (raster order);
//! - [`foreground_patches_row_major`]: the same from a row-major `H x W` mask (nonzero = in);
//! - [`block_means`]: the means of the blocks the mask touches, for inspection / `verify`.
//!
//! Only the blocks near the mask's bounding box are computed (the others are exactly 0), so
//! small objects in large images cost little. Images with `round(H/28) == 0` or
//! `round(W/28) == 0` (a side under 14 px; cv2 raises there, so PaDT crashes) have no grid:
//! every object gets an empty patch list (the caller drops it as "no patch").

use padt_core::{MaskError, Rle};

/// Side of one merged patch in pixels (Qwen2.5-VL: 14-px patches merged 2x2).
pub const PATCH_SIDE: u32 = 28;

/// Which of PaDT's two patch computations to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatchRule {
    /// `process_coco.py` and `process_ric.py`: uint8 resize, float64 means, `>= 255/28`.
    CocoU8,
    /// `process_refcoco.py`: float32 resize and means, `> f32(255/28)`.
    RefcocoF32,
}

/// PaDT's merged-patch grid `(gh, gw) = (round(H/28), round(W/28))`, ties to even.
pub fn grid_for(width: u32, height: u32) -> (u32, u32) {
    let r = |v: u32| (v as f64 / PATCH_SIDE as f64).round_ties_even() as u32;
    (r(height), r(width))
}

/// Foreground patches of a mask given as an [`Rle`] (its `height x width` is the image size).
pub fn foreground_patches(rle: &Rle, rule: PatchRule) -> Vec<u32> {
    let source = RleSource(rle);
    let mut kept = Vec::new();
    compute_blocks(&source, rle.width, rle.height, rule, |idx, _mean, keep| {
        if keep {
            kept.push(idx);
        }
    });
    kept
}

/// Foreground patches of a row-major mask (`mask[y * width + x]`, nonzero = foreground).
pub fn foreground_patches_row_major(
    mask: &[u8],
    width: u32,
    height: u32,
    rule: PatchRule,
) -> Result<Vec<u32>, MaskError> {
    if mask.len() as u64 != width as u64 * height as u64 {
        return Err(MaskError::MaskSizeMismatch {
            len: mask.len(),
            height,
            width,
        });
    }
    let source = RowMajorSource {
        mask,
        width: width as usize,
    };
    let mut kept = Vec::new();
    compute_blocks(&source, width, height, rule, |idx, _mean, keep| {
        if keep {
            kept.push(idx);
        }
    });
    Ok(kept)
}

/// One evaluated block: its raster index, its mean (the f32 mean widened for
/// [`PatchRule::RefcocoF32`]) and whether it is kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockMean {
    /// `row * gw + col`.
    pub index: u32,
    /// Block mean of the resized `mask * 255`, as numpy computes it.
    pub mean: f64,
    /// Whether the rule keeps the block.
    pub kept: bool,
}

/// Means of every block in the rectangle of blocks the mask can touch (blocks outside it
/// have mean 0), in raster order.
pub fn block_means(rle: &Rle, rule: PatchRule) -> Vec<BlockMean> {
    let mut out = Vec::new();
    compute_blocks(
        &RleSource(rle),
        rle.width,
        rle.height,
        rule,
        |index, mean, kept| out.push(BlockMean { index, mean, kept }),
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Mask sources: bounding box and 0/1 crop extraction.

trait MaskSource {
    /// Inclusive bounding box `(x0, x1, y0, y1)` of the foreground, `None` when empty.
    fn bbox(&self) -> Option<(usize, usize, usize, usize)>;
    /// Writes the 0/1 pixels of rows `r0..=r1`, columns `c0..=c1` into `crop`
    /// (row-major, `(c1 - c0 + 1)` wide, zeroed by the caller).
    fn fill_crop(&self, r0: usize, r1: usize, c0: usize, c1: usize, crop: &mut [u8]);
}

struct RleSource<'a>(&'a Rle);

impl MaskSource for RleSource<'_> {
    fn bbox(&self) -> Option<(usize, usize, usize, usize)> {
        let mut b: Option<(usize, usize, usize, usize)> = None;
        self.0.for_each_run(|x, y0, y1| {
            let y1 = y1 - 1;
            b = Some(match b {
                None => (x, x, y0, y1),
                Some((a0, a1, b0, b1)) => (a0.min(x), a1.max(x), b0.min(y0), b1.max(y1)),
            });
        });
        b
    }

    fn fill_crop(&self, r0: usize, r1: usize, c0: usize, c1: usize, crop: &mut [u8]) {
        let cw = c1 - c0 + 1;
        self.0.for_each_run(|x, y0, y1| {
            if x < c0 || x > c1 {
                return;
            }
            for y in y0.max(r0)..y1.min(r1 + 1) {
                crop[(y - r0) * cw + (x - c0)] = 1;
            }
        });
    }
}

struct RowMajorSource<'a> {
    mask: &'a [u8],
    width: usize,
}

impl MaskSource for RowMajorSource<'_> {
    fn bbox(&self) -> Option<(usize, usize, usize, usize)> {
        if self.width == 0 {
            return None;
        }
        let mut b: Option<(usize, usize, usize, usize)> = None;
        for (y, row) in self.mask.chunks_exact(self.width).enumerate() {
            let first = row.iter().position(|&v| v != 0);
            if let Some(first) = first {
                let last = row.iter().rposition(|&v| v != 0).unwrap_or(first);
                b = Some(match b {
                    None => (first, last, y, y),
                    Some((a0, a1, b0, _)) => (a0.min(first), a1.max(last), b0, y),
                });
            }
        }
        b
    }

    fn fill_crop(&self, r0: usize, r1: usize, c0: usize, c1: usize, crop: &mut [u8]) {
        let cw = c1 - c0 + 1;
        for y in r0..=r1 {
            let src = &self.mask[y * self.width + c0..y * self.width + c1 + 1];
            for (d, &s) in crop[(y - r0) * cw..(y - r0 + 1) * cw].iter_mut().zip(src) {
                *d = (s != 0) as u8;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// OpenCV INTER_LINEAR geometry.

/// Source taps of one output coordinate: sources `i0`, `i1` (already clipped) and the
/// coefficients for both paths.
#[derive(Clone, Copy)]
struct Tap {
    i0: usize,
    i1: usize,
    /// `saturate_cast<short>(w * 2048)` of `(1 - f, f)`, the CV_8U fixed-point coefficients.
    fixed: (i32, i32),
    /// `(1 - f, f)` in f32, the CV_32F coefficients.
    float: (f32, f32),
}

/// `cv::resize` INTER_LINEAR taps for one axis. `clamp_fraction` is true for x: OpenCV zeroes
/// the fraction where the tap leaves the image; along y only the row indices are clipped.
fn axis_taps(src: usize, dst: usize, clamp_fraction: bool) -> Vec<Tap> {
    let scale = 1.0 / (dst as f64 / src as f64);
    let last = src as i64 - 1;
    (0..dst)
        .map(|d| {
            let mut f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as i64;
            f -= s as f32;
            if clamp_fraction {
                if s < 0 {
                    f = 0.0;
                    s = 0;
                }
                if s >= last {
                    f = 0.0;
                    s = last;
                }
            }
            let w0 = 1.0f32 - f;
            Tap {
                i0: s.clamp(0, last) as usize,
                i1: (s + 1).clamp(0, last) as usize,
                fixed: (fixed_coef(w0), fixed_coef(f)),
                float: (w0, f),
            }
        })
        .collect()
}

/// `saturate_cast<short>(w * INTER_RESIZE_COEF_SCALE)`: float product, round half to even.
fn fixed_coef(w: f32) -> i32 {
    (w * 2048.0f32)
        .round_ties_even()
        .clamp(i16::MIN as f32, i16::MAX as f32) as i32
}

/// The contiguous range of outputs whose taps can touch sources `lo..=hi`.
fn active_range(taps: &[Tap], lo: usize, hi: usize) -> Option<(usize, usize)> {
    let first = taps.iter().position(|t| t.i0 <= hi && t.i1 >= lo)?;
    let last = taps.iter().rposition(|t| t.i0 <= hi && t.i1 >= lo)?;
    Some((first, last))
}

// ---------------------------------------------------------------------------------------------
// numpy summation orders.

/// numpy's pairwise sum of exactly 28 values (8 accumulators, then the 4 leftovers in order).
#[inline]
fn pairwise28<T: Copy + std::ops::Add<Output = T>>(a: &[T; 28]) -> T {
    let mut r = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
    for i in (8..24).step_by(8) {
        for j in 0..8 {
            r[j] = r[j] + a[i + j];
        }
    }
    let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for &v in &a[24..28] {
        res = res + v;
    }
    res
}

/// numpy's sum over the block rows of the (gh, gw, 28) row-mean array: sequential when
/// `gw > 1` (strided axis), pairwise when `gw == 1` (contiguous axis).
#[inline]
fn block_sum<T: Copy + std::ops::Add<Output = T>>(m: &[T; 28], gw: u32) -> T {
    if gw == 1 {
        pairwise28(m)
    } else {
        let mut s = m[0];
        for &v in &m[1..] {
            s = s + v;
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// The computation.

/// Runs the resize + block means over the blocks the mask can touch and calls
/// `visit(index, mean, kept)` for each, in raster order.
fn compute_blocks(
    source: &dyn MaskSource,
    width: u32,
    height: u32,
    rule: PatchRule,
    mut visit: impl FnMut(u32, f64, bool),
) {
    let (gh, gw) = grid_for(width, height);
    if gh == 0 || gw == 0 {
        return;
    }
    let Some((x0, x1, y0, y1)) = source.bbox() else {
        return;
    };
    let side = PATCH_SIDE as usize;
    let (rw, rh) = (gw as usize * side, gh as usize * side);
    let xt = axis_taps(width as usize, rw, true);
    let yt = axis_taps(height as usize, rh, false);
    let (Some((dx_a, dx_b)), Some((dy_a, dy_b))) =
        (active_range(&xt, x0, x1), active_range(&yt, y0, y1))
    else {
        return;
    };
    // Whole blocks around the active outputs.
    let (bc0, bc1) = (dx_a / side, dx_b / side);
    let (br0, br1) = (dy_a / side, dy_b / side);
    let (dx0, dx1) = (bc0 * side, (bc1 + 1) * side); // [dx0, dx1)
    let (dy0, dy1) = (br0 * side, (br1 + 1) * side);
    // Source crop those outputs read.
    let (c0, c1) = (xt[dx0].i0, xt[dx1 - 1].i1);
    let (r0, r1) = (yt[dy0].i0, yt[dy1 - 1].i1);
    let cw = c1 - c0 + 1;
    let mut crop = vec![0u8; (r1 - r0 + 1) * cw];
    source.fill_crop(r0, r1, c0, c1, &mut crop);

    let ncols = dx1 - dx0;
    let nblocks = bc1 - bc0 + 1;
    match rule {
        PatchRule::CocoU8 => {
            // Horizontal pass: exact ints `src[i0]*a0 + src[i1]*a1` with src in {0, 255}.
            let mut hbuf = vec![0i32; (r1 - r0 + 1) * ncols];
            for (row, hrow) in crop.chunks_exact(cw).zip(hbuf.chunks_exact_mut(ncols)) {
                for (h, t) in hrow.iter_mut().zip(&xt[dx0..dx1]) {
                    let s0 = 255 * row[t.i0 - c0] as i32;
                    let s1 = 255 * row[t.i1 - c0] as i32;
                    *h = s0 * t.fixed.0 + s1 * t.fixed.1;
                }
            }
            let mut row_means = vec![[0f64; 28]; nblocks];
            let threshold = 255.0f64 / 28.0;
            for br in br0..=br1 {
                for (k, t) in yt[br * side..(br + 1) * side].iter().enumerate() {
                    let h0 = &hbuf[(t.i0 - r0) * ncols..(t.i0 - r0 + 1) * ncols];
                    let h1 = &hbuf[(t.i1 - r0) * ncols..(t.i1 - r0 + 1) * ncols];
                    let (b0, b1) = t.fixed;
                    for (bi, means) in row_means.iter_mut().enumerate() {
                        let mut sum = 0i32;
                        for x in bi * side..(bi + 1) * side {
                            // OpenCV's SIMD vertical pass (VResizeLinearVec_32s8u).
                            let v = ((((h0[x] >> 4) * b0) >> 16) + (((h1[x] >> 4) * b1) >> 16) + 2)
                                >> 2;
                            sum += v.clamp(0, 255);
                        }
                        means[k] = sum as f64 / 28.0;
                    }
                }
                for (bi, means) in row_means.iter().enumerate() {
                    let mean = block_sum(means, gw) / 28.0;
                    let index = br as u32 * gw + (bc0 + bi) as u32;
                    visit(index, mean, mean >= threshold);
                }
            }
        }
        PatchRule::RefcocoF32 => {
            // Horizontal pass in f32: `S[i0]*a0 + S[i1]*a1`, S in {0, 255}.
            let mut hbuf = vec![0f32; (r1 - r0 + 1) * ncols];
            for (row, hrow) in crop.chunks_exact(cw).zip(hbuf.chunks_exact_mut(ncols)) {
                for (h, t) in hrow.iter_mut().zip(&xt[dx0..dx1]) {
                    let s0 = 255.0f32 * row[t.i0 - c0] as f32;
                    let s1 = 255.0f32 * row[t.i1 - c0] as f32;
                    *h = s0 * t.float.0 + s1 * t.float.1;
                }
            }
            let mut row_means = vec![[0f32; 28]; nblocks];
            let mut vals = [0f32; 28];
            let threshold = (255.0f64 / 28.0) as f32;
            for br in br0..=br1 {
                for (k, t) in yt[br * side..(br + 1) * side].iter().enumerate() {
                    let h0 = &hbuf[(t.i0 - r0) * ncols..(t.i0 - r0 + 1) * ncols];
                    let h1 = &hbuf[(t.i1 - r0) * ncols..(t.i1 - r0 + 1) * ncols];
                    let (b0, b1) = t.float;
                    for (bi, means) in row_means.iter_mut().enumerate() {
                        for (j, v) in vals.iter_mut().enumerate() {
                            let x = bi * side + j;
                            *v = h0[x] * b0 + h1[x] * b1;
                        }
                        means[k] = pairwise28(&vals) / 28.0f32;
                    }
                }
                for (bi, means) in row_means.iter().enumerate() {
                    let mean = block_sum(means, gw) / 28.0f32;
                    let index = br as u32 * gw + (bc0 + bi) as u32;
                    visit(index, mean as f64, mean > threshold);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_rounds_half_to_even() {
        assert_eq!(grid_for(434, 462), (16, 16));
        assert_eq!(grid_for(252, 168), (6, 9));
        assert_eq!(grid_for(29, 300), (11, 1));
        assert_eq!(grid_for(13, 100), (4, 0));
        assert_eq!(grid_for(14, 42), (2, 0)); // 0.5 -> 0, 1.5 -> 2
    }

    #[test]
    fn tiny_images_have_no_patches() {
        let rle = Rle::from_counts(10, 10, vec![0, 100]).unwrap();
        assert!(foreground_patches(&rle, PatchRule::CocoU8).is_empty());
        assert!(foreground_patches(&rle, PatchRule::RefcocoF32).is_empty());
    }

    #[test]
    fn full_mask_keeps_every_patch_and_sources_agree() {
        let (w, h) = (60u32, 45u32);
        let full = vec![1u8; (w * h) as usize];
        let (gh, gw) = grid_for(w, h);
        let all: Vec<u32> = (0..gh * gw).collect();
        for rule in [PatchRule::CocoU8, PatchRule::RefcocoF32] {
            assert_eq!(
                foreground_patches_row_major(&full, w, h, rule).unwrap(),
                all
            );
        }
        // A diagonal band: RLE and row-major inputs must agree.
        let band: Vec<u8> = (0..(w * h) as usize)
            .map(|i| ((i % w as usize) as i64 - (i / w as usize) as i64).abs() < 4)
            .map(u8::from)
            .collect();
        let rle = Rle::encode_row_major(&band, h, w).unwrap();
        for rule in [PatchRule::CocoU8, PatchRule::RefcocoF32] {
            assert_eq!(
                foreground_patches(&rle, rule),
                foreground_patches_row_major(&band, w, h, rule).unwrap()
            );
        }
        assert!(foreground_patches_row_major(&band, w, h + 1, PatchRule::CocoU8).is_err());
    }
}
