//! COCO run-length encoding, bit-compatible with pycocotools (`maskApi.c`).
//!
//! # Conventions
//! - Pixels are numbered column-major: index `x * height + y` (Fortran order, as pycocotools).
//! - `counts` alternate runs of 0s and 1s, starting with a run of 0s (which may be empty).
//! - A canonical RLE has `sum(counts) == height * width`; every constructor here checks that
//!   (pycocotools does not, and then reads past its buffers).
//! - The compressed string is pycocotools' LEB128-like code: counts `i > 2` are stored as the
//!   difference to `counts[i - 2]`, 5 bits per character, `0x20` = "more follows", `+ 48`.
//!
//! # API
//! - [`Rle::from_string`] / [`Rle::to_compressed`] (also `Display`): compressed string ⇄ counts.
//! - [`Rle::from_counts`]: uncompressed counts (checked).
//! - [`Rle::encode_col_major`], [`Rle::encode_row_major`]: from a mask (nonzero = foreground).
//! - [`Rle::decode_col_major`], [`Rle::decode_row_major`], [`Rle::decode_row_major_into`].
//! - [`Rle::merge`] (union, `rleMerge(intersect=0)`), [`Rle::area`], [`Rle::to_bbox`] (`rleToBbox`).
//! - [`Rle::from_polygon`] / [`Rle::from_bbox`] live in [`crate::polygon`].

use crate::error::MaskError;

/// A COCO run-length-encoded binary mask of `height x width` pixels (column-major runs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rle {
    /// Image height `h` (COCO `size[0]`).
    pub height: u32,
    /// Image width `w` (COCO `size[1]`).
    pub width: u32,
    /// Run lengths, alternating 0-runs and 1-runs, starting with a 0-run.
    pub counts: Vec<u32>,
}

fn check_sum(counts: &[u32], height: u32, width: u32) -> Result<(), MaskError> {
    let sum: u64 = counts.iter().map(|&c| c as u64).sum();
    let expected = height as u64 * width as u64;
    if sum != expected {
        return Err(MaskError::RleSumMismatch {
            sum,
            height,
            width,
            expected,
        });
    }
    Ok(())
}

impl Rle {
    /// The all-background mask.
    pub fn empty(height: u32, width: u32) -> Rle {
        let n = height as u64 * width as u64;
        Rle {
            height,
            width,
            counts: vec![n as u32],
        }
    }

    /// Wraps uncompressed counts (COCO `{"counts": [...], "size": [h, w]}`), verbatim.
    /// Errors when they do not sum to `height * width`.
    pub fn from_counts(height: u32, width: u32, counts: Vec<u32>) -> Result<Rle, MaskError> {
        check_sum(&counts, height, width)?;
        Ok(Rle {
            height,
            width,
            counts,
        })
    }

    /// `[height, width]`, the COCO `size` field.
    pub fn size(&self) -> [u32; 2] {
        [self.height, self.width]
    }

    /// Parses a pycocotools compressed counts string (`rleFrString`), then checks the sum.
    pub fn from_string(s: &str, height: u32, width: u32) -> Result<Rle, MaskError> {
        let counts = decode_counts_string(s)?;
        Rle::from_counts(height, width, counts)
    }

    /// The pycocotools compressed counts string (`rleToString`); the same as `to_string()`.
    pub fn to_compressed(&self) -> String {
        encode_counts_string(&self.counts)
    }

    /// Encodes a column-major mask (`mask[x * height + y]`, nonzero = foreground), like `rleEncode`.
    pub fn encode_col_major(mask: &[u8], height: u32, width: u32) -> Result<Rle, MaskError> {
        check_len(mask.len(), height, width)?;
        let mut counts = Vec::new();
        let mut prev = false;
        let mut run: u32 = 0;
        for &p in mask {
            let v = p != 0;
            if v != prev {
                counts.push(run);
                run = 0;
                prev = v;
            }
            run += 1;
        }
        // Like `rleEncode`, an empty (0-pixel) mask has the single count 0.
        counts.push(run);
        Ok(Rle {
            height,
            width,
            counts,
        })
    }

    /// Encodes a row-major mask (`mask[y * width + x]`, nonzero = foreground), as image code holds it.
    pub fn encode_row_major(mask: &[u8], height: u32, width: u32) -> Result<Rle, MaskError> {
        check_len(mask.len(), height, width)?;
        let (h, w) = (height as usize, width as usize);
        let mut counts = Vec::new();
        let mut prev = false;
        let mut run: u32 = 0;
        for x in 0..w {
            for y in 0..h {
                let v = mask[y * w + x] != 0;
                if v != prev {
                    counts.push(run);
                    run = 0;
                    prev = v;
                }
                run += 1;
            }
        }
        counts.push(run);
        Ok(Rle {
            height,
            width,
            counts,
        })
    }

    /// Decodes to a column-major 0/1 mask of `height * width` bytes (`rleDecode`).
    pub fn decode_col_major(&self) -> Vec<u8> {
        let n = self.height as usize * self.width as usize;
        let mut out = vec![0u8; n];
        let mut pos = 0usize;
        for (i, &c) in self.counts.iter().enumerate() {
            let end = (pos + c as usize).min(n);
            if i % 2 == 1 {
                out[pos..end].fill(1);
            }
            pos = end;
        }
        out
    }

    /// Decodes to a row-major 0/1 mask of `height * width` bytes (`mask[y * width + x]`).
    pub fn decode_row_major(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.height as usize * self.width as usize];
        self.decode_row_major_into(&mut out);
        out
    }

    /// Decodes into a caller-owned row-major buffer of exactly `height * width` bytes (zeroed first).
    ///
    /// # Panics
    /// When `out.len() != height * width` (a programming error, not a data error).
    pub fn decode_row_major_into(&self, out: &mut [u8]) {
        let (h, w) = (self.height as usize, self.width as usize);
        assert_eq!(out.len(), h * w, "decode_row_major_into: buffer size");
        out.fill(0);
        self.for_each_run(|x, y0, y1| {
            for y in y0..y1 {
                out[y * w + x] = 1;
            }
        });
    }

    /// Calls `f(x, y_start, y_end)` for every vertical segment of foreground pixels
    /// (1-runs split at column boundaries), in column-major order.
    pub fn for_each_run(&self, mut f: impl FnMut(usize, usize, usize)) {
        let h = self.height as usize;
        if h == 0 {
            return;
        }
        let n = h * self.width as usize;
        let mut pos = 0usize;
        for (i, &c) in self.counts.iter().enumerate() {
            let end = (pos + c as usize).min(n);
            if i % 2 == 1 {
                let mut p = pos;
                while p < end {
                    let x = p / h;
                    let y = p % h;
                    let seg_end = ((x + 1) * h).min(end);
                    f(x, y, y + (seg_end - p));
                    p = seg_end;
                }
            }
            pos = end;
        }
    }

    /// Number of foreground pixels (`rleArea`).
    pub fn area(&self) -> u64 {
        self.counts
            .iter()
            .skip(1)
            .step_by(2)
            .map(|&c| c as u64)
            .sum()
    }

    /// Bounding box `[x, y, w, h]` of the foreground, exactly as pycocotools `rleToBbox`
    /// (all zeros for an empty mask; a 1-run that wraps a column spans the full height).
    pub fn to_bbox(&self) -> [f64; 4] {
        let h = self.height;
        let w = self.width;
        let m = (self.counts.len() / 2) * 2;
        if m == 0 || h == 0 {
            return [0.0; 4];
        }
        let (mut xs, mut ys, mut xe, mut ye) = (w, h, 0u32, 0u32);
        let mut cc: u32 = 0;
        let mut xp: u32 = 0;
        for j in 0..m {
            cc = cc.wrapping_add(self.counts[j]);
            let t = cc.wrapping_sub((j % 2) as u32);
            let y = t % h;
            let x = (t - y) / h;
            if j % 2 == 0 {
                xp = x;
            } else if xp < x {
                ys = 0;
                ye = h - 1;
            }
            xs = xs.min(x);
            xe = xe.max(x);
            ys = ys.min(y);
            ye = ye.max(y);
        }
        [
            xs as f64,
            ys as f64,
            xe.wrapping_sub(xs).wrapping_add(1) as f64,
            ye.wrapping_sub(ys).wrapping_add(1) as f64,
        ]
    }

    /// Union of several masks of one size, run for run as pycocotools `rleMerge(intersect=0)`
    /// (so the result's counts equal pycocotools' `merge(rles)` exactly).
    pub fn merge(rles: &[Rle]) -> Result<Rle, MaskError> {
        let first = rles.first().ok_or(MaskError::Empty("no RLE to merge"))?;
        for r in rles {
            if r.size() != first.size() {
                return Err(MaskError::MergeSizeMismatch {
                    a: first.size(),
                    b: r.size(),
                });
            }
            // The run walk below only terminates when every input covers exactly h*w pixels
            // (the fields are public, so an RLE may have been built unchecked).
            check_sum(&r.counts, r.height, r.width)?;
        }
        let mut acc = first.counts.clone();
        let mut out = Vec::with_capacity(acc.len());
        for b in &rles[1..] {
            merge_union(&acc, &b.counts, &mut out);
            std::mem::swap(&mut acc, &mut out);
        }
        Ok(Rle {
            height: first.height,
            width: first.width,
            counts: acc,
        })
    }
}

/// Formats as the pycocotools compressed counts string, so `rle.to_string()` is that string.
impl std::fmt::Display for Rle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&encode_counts_string(&self.counts))
    }
}

fn check_len(len: usize, height: u32, width: u32) -> Result<(), MaskError> {
    if len as u64 != height as u64 * width as u64 {
        return Err(MaskError::MaskSizeMismatch { len, height, width });
    }
    Ok(())
}

/// One step of `rleMerge` with `intersect = 0`: `out = a ∪ b` (both canonical, same size).
fn merge_union(a: &[u32], b: &[u32], out: &mut Vec<u32>) {
    out.clear();
    // pycocotools reads cnts[0] unconditionally; an RLE with no counts is a 0x0 mask.
    let mut ca = a.first().copied().unwrap_or(0);
    let mut cb = b.first().copied().unwrap_or(0);
    let (mut va, mut vb, mut v) = (false, false, false);
    let (mut ia, mut ib) = (1usize, 1usize);
    let mut cc: u32 = 0;
    let mut ct: u32 = 1;
    while ct > 0 {
        let c = ca.min(cb);
        cc += c;
        ct = 0;
        ca -= c;
        if ca == 0 && ia < a.len() {
            ca = a[ia];
            ia += 1;
            va = !va;
        }
        ct += ca;
        cb -= c;
        if cb == 0 && ib < b.len() {
            cb = b[ib];
            ib += 1;
            vb = !vb;
        }
        ct += cb;
        let vp = v;
        v = va || vb;
        if v != vp || ct == 0 {
            out.push(cc);
            cc = 0;
        }
    }
}

/// Counts → pycocotools compressed string (`rleToString`).
pub fn encode_counts_string(counts: &[u32]) -> String {
    let mut s = Vec::with_capacity(counts.len() * 2);
    for i in 0..counts.len() {
        let mut x = counts[i] as i64;
        if i > 2 {
            x -= counts[i - 2] as i64;
        }
        loop {
            let mut c = (x & 0x1f) as u8;
            x >>= 5;
            let more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                c |= 0x20;
            }
            s.push(c + 48);
            if !more {
                break;
            }
        }
    }
    // Every byte is in 48..=111, i.e. ASCII.
    String::from_utf8(s).expect("ASCII")
}

/// pycocotools compressed string → counts (`rleFrString`), with errors for malformed strings.
pub fn decode_counts_string(s: &str) -> Result<Vec<u32>, MaskError> {
    let bytes = s.as_bytes();
    let mut counts: Vec<u32> = Vec::with_capacity(bytes.len());
    let mut p = 0usize;
    while p < bytes.len() {
        let mut x: i64 = 0;
        let mut k = 0u32;
        loop {
            let Some(&byte) = bytes.get(p) else {
                return Err(MaskError::RleTruncated);
            };
            if !(48..=111).contains(&byte) {
                let ch = s[p..].chars().next().unwrap_or('?');
                return Err(MaskError::RleBadChar { pos: p, ch });
            }
            let c = (byte - 48) as i64;
            if k >= 12 {
                // 12 groups = 60 bits: no u32 count (or delta) needs more.
                return Err(MaskError::RleCountOutOfRange {
                    index: counts.len(),
                    value: x,
                });
            }
            x |= (c & 0x1f) << (5 * k);
            let more = c & 0x20 != 0;
            p += 1;
            k += 1;
            if !more {
                if c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
                break;
            }
        }
        let m = counts.len();
        if m > 2 {
            x += counts[m - 2] as i64;
        }
        if !(0..=u32::MAX as i64).contains(&x) {
            return Err(MaskError::RleCountOutOfRange { index: m, value: x });
        }
        counts.push(x as u32);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_round_trip_small() {
        let r = Rle::from_counts(4, 3, vec![2, 3, 1, 4, 2]).unwrap();
        let s = r.to_string();
        assert_eq!(Rle::from_string(&s, 4, 3).unwrap(), r);
    }

    #[test]
    fn encode_decode_row_and_col_major_agree() {
        let (h, w) = (5u32, 7u32);
        let row: Vec<u8> = (0..35).map(|i| ((i * 7 + i / 3) % 3 == 0) as u8).collect();
        let r = Rle::encode_row_major(&row, h, w).unwrap();
        assert_eq!(r.decode_row_major(), row);
        let col = r.decode_col_major();
        assert_eq!(Rle::encode_col_major(&col, h, w).unwrap(), r);
        assert_eq!(r.area(), row.iter().map(|&v| v as u64).sum::<u64>());
    }

    #[test]
    fn malformed_strings_are_errors() {
        assert!(matches!(
            Rle::from_string("0 1", 1, 1),
            Err(MaskError::RleBadChar { pos: 1, .. })
        ));
        assert_eq!(decode_counts_string("P"), Err(MaskError::RleTruncated)); // 'P' = 0x20 continuation
        assert!(matches!(
            Rle::from_string("1", 2, 2),
            Err(MaskError::RleSumMismatch { .. })
        ));
        // a negative first count
        assert!(matches!(
            decode_counts_string("O"),
            Err(MaskError::RleCountOutOfRange { .. })
        ));
    }

    #[test]
    fn merge_is_a_union_and_rejects_bad_inputs() {
        let a = Rle::from_counts(2, 3, vec![1, 2, 3]).unwrap(); // pixels 1, 2
        let b = Rle::from_counts(2, 3, vec![2, 2, 2]).unwrap(); // pixels 2, 3
        assert_eq!(Rle::merge(&[a.clone(), b]).unwrap().counts, vec![1, 3, 2]);
        assert_eq!(Rle::merge(std::slice::from_ref(&a)).unwrap(), a);
        assert!(matches!(Rle::merge(&[]), Err(MaskError::Empty(_))));
        let other_size = Rle::empty(3, 2);
        assert!(matches!(
            Rle::merge(&[a.clone(), other_size]),
            Err(MaskError::MergeSizeMismatch { .. })
        ));
        let unchecked = Rle {
            height: 2,
            width: 3,
            counts: vec![1, 2],
        };
        assert!(matches!(
            Rle::merge(&[a, unchecked]),
            Err(MaskError::RleSumMismatch { .. })
        ));
    }
}
