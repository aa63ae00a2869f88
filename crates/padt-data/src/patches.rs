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
//! - [`foreground_patches_row_major`]: the same from a row-major `H x W` mask (nonzero = in;
//!   encoded to an RLE first);
//! - [`block_means`]: the means of the blocks the mask touches, for inspection / `verify`.
//!
//! Cost: O(runs + boundary blocks), memory O(object bounding box). Only blocks near the
//! mask's bounding box are considered (the others are exactly 0); among them, blocks whose
//! source pixels are all background or all foreground are decided from the RLE runs, and only
//! boundary blocks are resized and averaged. The resize taps are cached per thread for the
//! last image size (objects of one image come together). Images with `round(H/28) == 0` or
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
    let mut kept = Vec::new();
    compute_blocks(rle, rule, false, |idx, _mean, keep| {
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
    let rle = Rle::encode_row_major(mask, height, width)?;
    Ok(foreground_patches(&rle, rule))
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
/// have mean 0), in raster order, each computed in full (no shortcut).
pub fn block_means(rle: &Rle, rule: PatchRule) -> Vec<BlockMean> {
    let mut out = Vec::new();
    compute_blocks(rle, rule, true, |index, mean, kept| {
        out.push(BlockMean { index, mean, kept })
    });
    out
}

// ---------------------------------------------------------------------------------------------
// OpenCV INTER_LINEAR geometry.

/// Source taps of one output coordinate: sources `i0`, `i1` (already clipped) and the
/// coefficients for both paths.
#[derive(Clone, Copy)]
pub(crate) struct Tap {
    pub(crate) i0: usize,
    pub(crate) i1: usize,
    /// `saturate_cast<short>(w * 2048)` of `(1 - f, f)`, the CV_8U fixed-point coefficients.
    pub(crate) fixed: (i32, i32),
    /// `(1 - f, f)` in f32, the CV_32F coefficients.
    pub(crate) float: (f32, f32),
}

/// `cv::resize` INTER_LINEAR taps for one axis. `clamp_fraction` is true for x: OpenCV zeroes
/// the fraction where the tap leaves the image; along y only the row indices are clipped.
pub(crate) fn axis_taps(src: usize, dst: usize, clamp_fraction: bool) -> Vec<Tap> {
    let scale = 1.0 / (dst as f64 / src as f64);
    let last = src as i64 - 1;
    (0..dst)
        .map(|d| {
            let mut f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            // cvFloor: truncate, then step down for negative non-integers.
            let mut s = f as i64;
            if (s as f32) > f {
                s -= 1;
            }
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
/// `w` is in `[0, 1]`, so the product is in `[0, 2048]`: adding and removing 2^23 rounds it to
/// the nearest integer, ties to even (exactly `roundf`-to-even, without a libm call).
fn fixed_coef(w: f32) -> i32 {
    let p = w * 2048.0f32;
    debug_assert!((0.0..=2048.0).contains(&p));
    const MAGIC: f32 = 8_388_608.0; // 2^23
    ((p + MAGIC) - MAGIC) as i32
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

/// Resize taps of the last image size seen by this thread (objects come image by image).
struct TapCache {
    size: (u32, u32),
    x: Vec<Tap>,
    y: Vec<Tap>,
}

thread_local! {
    static TAPS: std::cell::RefCell<Option<TapCache>> = const { std::cell::RefCell::new(None) };
}

/// Inclusive bounding box `(x0, x1, y0, y1)` of the foreground, `None` when empty.
fn rle_bbox(rle: &Rle) -> Option<(usize, usize, usize, usize)> {
    let mut b: Option<(usize, usize, usize, usize)> = None;
    rle.for_each_run(|x, y0, y1| {
        let y1 = y1 - 1;
        b = Some(match b {
            None => (x, x, y0, y1),
            Some((a0, a1, b0, b1)) => (a0.min(x), a1.max(x), b0.min(y0), b1.max(y1)),
        });
    });
    b
}

/// The source pixel band `[lo, hi]` each block of `first..=last` reads along one axis.
fn bands(taps: &[Tap], first: usize, last: usize) -> Vec<(usize, usize)> {
    const SIDE: usize = PATCH_SIDE as usize;
    (first..=last)
        .map(|b| (taps[b * SIDE].i0, taps[(b + 1) * SIDE - 1].i1))
        .collect()
}

/// For each source coordinate `lo..=hi`, the first band (relative index) whose end reaches it.
fn first_band_of(bands: &[(usize, usize)], lo: usize, hi: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(hi - lo + 1);
    let mut b = 0;
    for v in lo..=hi {
        while b + 1 < bands.len() && bands[b].1 < v {
            b += 1;
        }
        out.push(b);
    }
    out
}

/// Runs the resize + block means over the blocks the mask can touch and calls
/// `visit(index, mean, kept)` for each, in raster order.
///
/// With `exact_means == false` (patch selection), the foreground count of each block's source
/// rectangle is taken from the runs first: a block reading only background is skipped (every
/// output pixel is exactly 0), a block reading only foreground is kept without resizing (every
/// output pixel is 255, up to the last f32 bit: far above the threshold), and only blocks on
/// the mask's boundary are resized. With `exact_means == true` every block in the active
/// rectangle is resized, for [`block_means`].
fn compute_blocks(
    rle: &Rle,
    rule: PatchRule,
    exact_means: bool,
    visit: impl FnMut(u32, f64, bool),
) {
    let (width, height) = (rle.width, rle.height);
    let (gh, gw) = grid_for(width, height);
    if gh == 0 || gw == 0 {
        return;
    }
    let Some(bbox) = rle_bbox(rle) else {
        return;
    };
    let mut cache = TAPS.with(|c| c.borrow_mut().take());
    if cache.as_ref().is_none_or(|c| c.size != (width, height)) {
        let side = PATCH_SIDE as usize;
        cache = Some(TapCache {
            size: (width, height),
            x: axis_taps(width as usize, gw as usize * side, true),
            y: axis_taps(height as usize, gh as usize * side, false),
        });
    }
    let taps = cache.expect("just filled");
    compute_with_taps(rle, gw, &taps.x, &taps.y, bbox, rule, exact_means, visit);
    TAPS.with(|c| *c.borrow_mut() = Some(taps));
}

#[allow(clippy::too_many_arguments)]
fn compute_with_taps(
    rle: &Rle,
    gw: u32,
    xt: &[Tap],
    yt: &[Tap],
    (x0, x1, y0, y1): (usize, usize, usize, usize),
    rule: PatchRule,
    exact_means: bool,
    mut visit: impl FnMut(u32, f64, bool),
) {
    let side = PATCH_SIDE as usize;
    let (Some((dx_a, dx_b)), Some((dy_a, dy_b))) =
        (active_range(xt, x0, x1), active_range(yt, y0, y1))
    else {
        return;
    };
    // Whole blocks around the active outputs, the source bands they read, and the crop.
    let (bc0, bc1) = (dx_a / side, dx_b / side);
    let (br0, br1) = (dy_a / side, dy_b / side);
    let col_bands = bands(xt, bc0, bc1);
    let row_bands = bands(yt, br0, br1);
    let (c0, c1) = (col_bands[0].0, col_bands[col_bands.len() - 1].1);
    let (r0, r1) = (row_bands[0].0, row_bands[row_bands.len() - 1].1);
    let ch = r1 - r0 + 1;
    let (nbc, nbr) = (col_bands.len(), row_bands.len());

    // Column-major 0/1 crop (runs become memsets) and per-block foreground counts.
    let mut crop = vec![0u8; (c1 - c0 + 1) * ch];
    let mut counts = vec![0u32; nbr * nbc];
    let first_col_band = first_band_of(&col_bands, c0, c1);
    let first_row_band = first_band_of(&row_bands, r0, r1);
    rle.for_each_run(|x, ya, yb| {
        if x < c0 || x > c1 || yb <= r0 || ya > r1 {
            return;
        }
        let (ya, yb) = (ya.max(r0), yb.min(r1 + 1)); // [ya, yb)
        let col = &mut crop[(x - c0) * ch..(x - c0 + 1) * ch];
        col[ya - r0..yb - r0].fill(1);
        if exact_means {
            return;
        }
        let mut bc = first_col_band[x - c0];
        while bc < nbc && col_bands[bc].0 <= x {
            let mut br = first_row_band[ya - r0];
            while br < nbr && row_bands[br].0 < yb {
                let (lo, hi) = row_bands[br];
                let overlap = (yb - 1).min(hi) as isize - ya.max(lo) as isize + 1;
                if overlap > 0 {
                    counts[br * nbc + bc] += overlap as u32;
                }
                br += 1;
            }
            bc += 1;
        }
    });

    let mut block = BlockScratch::default();
    for (bri, &(sy_lo, sy_hi)) in row_bands.iter().enumerate() {
        let br = br0 + bri;
        let ytaps = &yt[br * side..(br + 1) * side];
        for (bci, &(sx_lo, sx_hi)) in col_bands.iter().enumerate() {
            let bc = bc0 + bci;
            let index = br as u32 * gw + bc as u32;
            if !exact_means {
                let n = counts[bri * nbc + bci] as usize;
                if n == 0 {
                    continue;
                }
                if n == (sy_hi - sy_lo + 1) * (sx_hi - sx_lo + 1) {
                    visit(index, 255.0, true);
                    continue;
                }
            }
            let xtaps = &xt[bc * side..(bc + 1) * side];
            let (mean, kept) = block.mean(&crop, ch, r0, c0, xtaps, ytaps, gw, rule);
            visit(index, mean, kept);
        }
    }
}

/// Reusable buffers for one 28x28 output block.
#[derive(Default)]
struct BlockScratch {
    /// Horizontal pass of the block's source rows: `(row - first_row) * 28 + j`.
    h_fixed: Vec<i32>,
    h_float: Vec<f32>,
}

impl BlockScratch {
    /// Exact numpy block mean of the resized `mask * 255` over one block, and the keep
    /// decision. `crop` is column-major with `ch` rows, starting at source `(c0, r0)`.
    #[allow(clippy::too_many_arguments)]
    fn mean(
        &mut self,
        crop: &[u8],
        ch: usize,
        r0: usize,
        c0: usize,
        xtaps: &[Tap],
        ytaps: &[Tap],
        gw: u32,
        rule: PatchRule,
    ) -> (f64, bool) {
        const SIDE: usize = PATCH_SIDE as usize;
        let (sy_lo, sy_hi) = (ytaps[0].i0, ytaps[SIDE - 1].i1);
        let nrows = sy_hi - sy_lo + 1;
        let px = |x: usize, y: usize| crop[(x - c0) * ch + (y - r0)];
        match rule {
            PatchRule::CocoU8 => {
                // Horizontal pass: exact ints `src[i0]*a0 + src[i1]*a1` with src in {0, 255}.
                self.h_fixed.clear();
                self.h_fixed.resize(nrows * SIDE, 0);
                for (j, t) in xtaps.iter().enumerate() {
                    for sy in sy_lo..=sy_hi {
                        let v = px(t.i0, sy) as i32 * t.fixed.0 + px(t.i1, sy) as i32 * t.fixed.1;
                        self.h_fixed[(sy - sy_lo) * SIDE + j] = 255 * v;
                    }
                }
                let mut row_means = [0f64; SIDE];
                for (k, t) in ytaps.iter().enumerate() {
                    let h0 = &self.h_fixed[(t.i0 - sy_lo) * SIDE..(t.i0 - sy_lo + 1) * SIDE];
                    let h1 = &self.h_fixed[(t.i1 - sy_lo) * SIDE..(t.i1 - sy_lo + 1) * SIDE];
                    let (b0, b1) = t.fixed;
                    let mut sum = 0i32;
                    for (&v0, &v1) in h0.iter().zip(h1) {
                        // OpenCV's SIMD vertical pass (VResizeLinearVec_32s8u).
                        let v = ((((v0 >> 4) * b0) >> 16) + (((v1 >> 4) * b1) >> 16) + 2) >> 2;
                        sum += v.clamp(0, 255);
                    }
                    row_means[k] = sum as f64 / 28.0;
                }
                let mean = block_sum(&row_means, gw) / 28.0;
                (mean, mean >= 255.0f64 / 28.0)
            }
            PatchRule::RefcocoF32 => {
                // Horizontal pass in f32: `S[i0]*a0 + S[i1]*a1`, S in {0, 255}.
                self.h_float.clear();
                self.h_float.resize(nrows * SIDE, 0.0);
                for (j, t) in xtaps.iter().enumerate() {
                    for sy in sy_lo..=sy_hi {
                        let s0 = 255.0f32 * px(t.i0, sy) as f32;
                        let s1 = 255.0f32 * px(t.i1, sy) as f32;
                        self.h_float[(sy - sy_lo) * SIDE + j] = s0 * t.float.0 + s1 * t.float.1;
                    }
                }
                let mut row_means = [0f32; SIDE];
                let mut vals = [0f32; SIDE];
                for (k, t) in ytaps.iter().enumerate() {
                    let h0 = &self.h_float[(t.i0 - sy_lo) * SIDE..(t.i0 - sy_lo + 1) * SIDE];
                    let h1 = &self.h_float[(t.i1 - sy_lo) * SIDE..(t.i1 - sy_lo + 1) * SIDE];
                    let (b0, b1) = t.float;
                    for ((v, &v0), &v1) in vals.iter_mut().zip(h0).zip(h1) {
                        *v = v0 * b0 + v1 * b1;
                    }
                    row_means[k] = pairwise28(&vals) / 28.0f32;
                }
                let mean = block_sum(&row_means, gw) / 28.0f32;
                (mean as f64, mean > (255.0f64 / 28.0) as f32)
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
