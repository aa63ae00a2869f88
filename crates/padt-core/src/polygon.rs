//! Polygon and box rasterisation exactly as pycocotools `rleFrPoly` / `rleFrBbox`.
//!
//! pycocotools does not fill pixel centres inside the polygon. It scales the vertices by 5,
//! rounds them to integers, walks every edge on that 5x grid, keeps the points where the
//! walk crosses an x pixel boundary, turns each crossing into "the column starts / stops
//! being foreground at row y" and builds the RLE from the sorted crossings. This module
//! reproduces that arithmetic step by step (same integer truncations, same `f64` formulas),
//! so the result is identical run for run.
//!
//! - [`Rle::from_polygon`]: one polygon `[x0, y0, x1, y1, ...]` (any number of points ≥ 0:
//!   0 or 1 point gives an empty mask, 2 points a thin line, as pycocotools; odd lengths and
//!   NaN/inf coordinates are errors).
//! - [`Rle::from_bbox`]: a filled COCO box `[x, y, w, h]` (`rleFrBbox`, i.e. a 4-point polygon).

use crate::error::MaskError;
use crate::rle::Rle;

/// The vertex upsampling factor of `rleFrPoly`.
const SCALE: f64 = 5.0;

/// Upper bound on the boundary points of one polygon (pycocotools allocates them all; a COCO
/// polygon has at most a few hundred thousand). Beyond it [`MaskError::PolygonTooLarge`].
pub const MAX_BOUNDARY_POINTS: u64 = 1 << 27;

impl Rle {
    /// Rasterises one polygon `[x0, y0, x1, y1, ...]` (pixel coordinates, pixel `(x, y)`
    /// covers `[x, x+1) x [y, y+1)`) into a `height x width` mask, bit-identical to pycocotools
    /// `frPyObjects([poly], h, w)[0]`. Coordinates outside the image are clipped the same way.
    pub fn from_polygon(xy: &[f64], height: u32, width: u32) -> Result<Rle, MaskError> {
        if !xy.len().is_multiple_of(2) {
            return Err(MaskError::OddPolygon {
                index: 0,
                len: xy.len(),
            });
        }
        if xy.iter().any(|v| !v.is_finite()) {
            return Err(MaskError::NonFiniteCoordinate { index: 0 });
        }
        rasterize_polygon(xy, height, width)
    }

    /// A filled COCO box `[x, y, w, h]`, bit-identical to pycocotools `frBbox` (`rleFrBbox`).
    pub fn from_bbox(bbox: [f64; 4], height: u32, width: u32) -> Result<Rle, MaskError> {
        let [x, y, w, h] = bbox;
        let (xe, ye) = (x + w, y + h);
        Rle::from_polygon(&[x, y, x, ye, xe, ye, xe, y], height, width)
    }
}

/// `rleFrPoly` on finite coordinates of even length.
fn rasterize_polygon(xy: &[f64], height: u32, width: u32) -> Result<Rle, MaskError> {
    let k = xy.len() / 2;
    let h = height as i64;
    let w = width as i64;
    if k == 0 {
        // pycocotools reads uninitialised memory here; the only sensible answer is "nothing".
        return Ok(Rle::empty(height, width));
    }
    // Vertices on the 5x grid, C `(int)(v + .5)` = truncation toward zero.
    let mut vx: Vec<i32> = Vec::with_capacity(k + 1);
    let mut vy: Vec<i32> = Vec::with_capacity(k + 1);
    for j in 0..k {
        vx.push((SCALE * xy[2 * j] + 0.5) as i32);
        vy.push((SCALE * xy[2 * j + 1] + 0.5) as i32);
    }
    vx.push(vx[0]);
    vy.push(vy[0]);

    // Dense boundary points (u, v) along every edge, both end points included.
    let total: u64 = (0..k)
        .map(|j| {
            let dx = (vx[j] as i64 - vx[j + 1] as i64).unsigned_abs();
            let dy = (vy[j] as i64 - vy[j + 1] as i64).unsigned_abs();
            dx.max(dy) + 1
        })
        .sum();
    if total > MAX_BOUNDARY_POINTS {
        return Err(MaskError::PolygonTooLarge {
            index: 0,
            points: total,
        });
    }
    let total = total as usize;
    let mut u: Vec<i64> = Vec::with_capacity(total);
    let mut v: Vec<i64> = Vec::with_capacity(total);
    for j in 0..k {
        let (mut xs, mut xe, mut ys, mut ye) = (
            vx[j] as i64,
            vx[j + 1] as i64,
            vy[j] as i64,
            vy[j + 1] as i64,
        );
        let dx = (xe - xs).abs();
        let dy = (ys - ye).abs();
        let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
        if flip {
            std::mem::swap(&mut xs, &mut xe);
            std::mem::swap(&mut ys, &mut ye);
        }
        if dx >= dy {
            // dx == dy == 0 gives 0/0 = NaN in C; that point never matters (its neighbours
            // share its u), and Rust's NaN-to-int cast gives 0 deterministically.
            let s = (ye - ys) as f64 / dx as f64;
            for d in 0..=dx {
                let t = if flip { dx - d } else { d };
                u.push(t + xs);
                v.push((ys as f64 + s * t as f64 + 0.5) as i32 as i64);
            }
        } else {
            let s = (xe - xs) as f64 / dy as f64;
            for d in 0..=dy {
                let t = if flip { dy - d } else { d };
                v.push(t + ys);
                u.push((xs as f64 + s * t as f64 + 0.5) as i32 as i64);
            }
        }
    }

    // Crossings of x pixel boundaries, downsampled to (column, first row) pairs, as run starts.
    let mut starts: Vec<u32> = Vec::with_capacity(u.len() / 4 + 2);
    let w_minus_1 = (width as u64).wrapping_sub(1) as f64; // C: `w-1` in size_t
    for j in 1..u.len() {
        if u[j] == u[j - 1] {
            continue;
        }
        let mut xd = if u[j] < u[j - 1] { u[j] } else { u[j] - 1 } as f64;
        xd = (xd + 0.5) / SCALE - 0.5;
        if xd.floor() != xd || xd < 0.0 || xd > w_minus_1 {
            continue;
        }
        let mut yd = u_min(v[j], v[j - 1]) as f64;
        yd = (yd + 0.5) / SCALE - 0.5;
        if yd < 0.0 {
            yd = 0.0;
        } else if yd > h as f64 {
            yd = h as f64;
        }
        yd = yd.ceil();
        let (x, y) = (xd as i32 as i64, yd as i32 as i64);
        starts.push((x * h + y) as u32);
    }
    starts.push((h * w) as u32);
    starts.sort_unstable();

    // Differences; a zero difference (two crossings at one pixel) cancels the pair.
    let mut prev = 0u32;
    for a in starts.iter_mut() {
        let t = *a;
        *a -= prev;
        prev = t;
    }
    let mut counts: Vec<u32> = Vec::with_capacity(starts.len());
    counts.push(starts[0]);
    let mut j = 1;
    while j < starts.len() {
        if starts[j] > 0 {
            counts.push(starts[j]);
            j += 1;
        } else {
            j += 1;
            if j < starts.len() {
                *counts.last_mut().expect("non-empty") += starts[j];
                j += 1;
            }
        }
    }
    Ok(Rle {
        height,
        width,
        counts,
    })
}

#[inline]
fn u_min(a: i64, b: i64) -> i64 {
    a.min(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_aligned_square_fills_pixels() {
        // square (1,1)-(3,3): pixels x 1..=2, y 1..=2 of a 5x5 image
        let r = Rle::from_polygon(&[1.0, 1.0, 3.0, 1.0, 3.0, 3.0, 1.0, 3.0], 5, 5).unwrap();
        let m = r.decode_row_major();
        let ones: Vec<usize> = (0..25).filter(|&i| m[i] == 1).collect();
        assert_eq!(ones, vec![6, 7, 11, 12]);
    }

    #[test]
    fn degenerate_polygons_do_not_panic() {
        assert_eq!(Rle::from_polygon(&[], 4, 4).unwrap(), Rle::empty(4, 4));
        assert_eq!(Rle::from_polygon(&[1.0, 1.0], 4, 4).unwrap().area(), 0);
        assert!(Rle::from_polygon(&[1.0, 1.0, 2.0], 4, 4).is_err());
        assert!(Rle::from_polygon(&[1.0, f64::NAN, 2.0, 2.0], 4, 4).is_err());
        assert!(matches!(
            Rle::from_polygon(&[0.0, 0.0, 1e12, 0.0, 1e12, 1e12], 10, 10),
            Err(MaskError::PolygonTooLarge { .. })
        ));
        assert_eq!(
            Rle::from_polygon(&[0.0, 0.0, 3.0, 3.0, 0.0, 3.0], 0, 0)
                .unwrap()
                .area(),
            0
        );
    }
}
