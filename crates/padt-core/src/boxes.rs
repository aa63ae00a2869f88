//! Axis-aligned boxes: format conversions, area, IoU and GIoU, for `f32` and `f64`.
//!
//! Formats (all `[T; 4]`):
//! - `xywh`: COCO `[x, y, width, height]` (top-left corner and size);
//! - `xyxy`: `[x1, y1, x2, y2]` (top-left and bottom-right corners);
//! - `cxcywh`: `[cx, cy, width, height]` (centre and size; PaDT's box decoder output).
//!
//! IoU / GIoU take `xyxy` boxes and follow the DETR / torchvision formulas
//! (`iou = inter / union`, `giou = iou - (enclosing - union) / enclosing`), with one
//! difference: where torchvision divides 0 by 0 (two empty boxes) these return 0 for IoU and
//! `iou` for the GIoU penalty term instead of NaN. Inverted boxes (`x2 < x1`) have area
//! `(x2 - x1) * (y2 - y1)` as in torchvision; validate boxes before relying on the result.

use std::ops::{Add, Div, Mul, Sub};

/// The float types boxes are computed in (`f32` and `f64`).
pub trait BoxFloat:
    Copy
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
{
    /// 0.
    const ZERO: Self;
    /// 2.
    const TWO: Self;
    /// The larger of two values.
    fn max_of(self, other: Self) -> Self {
        if other > self {
            other
        } else {
            self
        }
    }
    /// The smaller of two values.
    fn min_of(self, other: Self) -> Self {
        if other < self {
            other
        } else {
            self
        }
    }
}

impl BoxFloat for f32 {
    const ZERO: f32 = 0.0;
    const TWO: f32 = 2.0;
}

impl BoxFloat for f64 {
    const ZERO: f64 = 0.0;
    const TWO: f64 = 2.0;
}

/// `[x, y, w, h]` → `[x1, y1, x2, y2]`.
pub fn xywh_to_xyxy<T: BoxFloat>(b: [T; 4]) -> [T; 4] {
    [b[0], b[1], b[0] + b[2], b[1] + b[3]]
}

/// `[x1, y1, x2, y2]` → `[x, y, w, h]`.
pub fn xyxy_to_xywh<T: BoxFloat>(b: [T; 4]) -> [T; 4] {
    [b[0], b[1], b[2] - b[0], b[3] - b[1]]
}

/// `[cx, cy, w, h]` → `[x1, y1, x2, y2]` (DETR `box_cxcywh_to_xyxy`: `cx - w/2`, ...).
pub fn cxcywh_to_xyxy<T: BoxFloat>(b: [T; 4]) -> [T; 4] {
    let (hw, hh) = (b[2] / T::TWO, b[3] / T::TWO);
    [b[0] - hw, b[1] - hh, b[0] + hw, b[1] + hh]
}

/// `[x1, y1, x2, y2]` → `[cx, cy, w, h]` (DETR `box_xyxy_to_cxcywh`: `(x1 + x2) / 2`, ...).
pub fn xyxy_to_cxcywh<T: BoxFloat>(b: [T; 4]) -> [T; 4] {
    [
        (b[0] + b[2]) / T::TWO,
        (b[1] + b[3]) / T::TWO,
        b[2] - b[0],
        b[3] - b[1],
    ]
}

/// `[cx, cy, w, h]` → `[x, y, w, h]`.
pub fn cxcywh_to_xywh<T: BoxFloat>(b: [T; 4]) -> [T; 4] {
    xyxy_to_xywh(cxcywh_to_xyxy(b))
}

/// `[x, y, w, h]` → `[cx, cy, w, h]`.
pub fn xywh_to_cxcywh<T: BoxFloat>(b: [T; 4]) -> [T; 4] {
    xyxy_to_cxcywh(xywh_to_xyxy(b))
}

/// Area of an `xyxy` box: `(x2 - x1) * (y2 - y1)` (negative for inverted boxes, as torchvision).
pub fn area_xyxy<T: BoxFloat>(b: [T; 4]) -> T {
    (b[2] - b[0]) * (b[3] - b[1])
}

/// Intersection area and union area of two `xyxy` boxes.
pub fn inter_union_xyxy<T: BoxFloat>(a: [T; 4], b: [T; 4]) -> (T, T) {
    let w = (a[2].min_of(b[2]) - a[0].max_of(b[0])).max_of(T::ZERO);
    let h = (a[3].min_of(b[3]) - a[1].max_of(b[1])).max_of(T::ZERO);
    let inter = w * h;
    (inter, area_xyxy(a) + area_xyxy(b) - inter)
}

/// IoU of two `xyxy` boxes (0 when the union is not positive).
pub fn iou_xyxy<T: BoxFloat>(a: [T; 4], b: [T; 4]) -> T {
    let (inter, union) = inter_union_xyxy(a, b);
    if union > T::ZERO {
        inter / union
    } else {
        T::ZERO
    }
}

/// Generalised IoU of two `xyxy` boxes, in `[-1, 1]` for valid boxes.
pub fn giou_xyxy<T: BoxFloat>(a: [T; 4], b: [T; 4]) -> T {
    let (inter, union) = inter_union_xyxy(a, b);
    let iou = if union > T::ZERO {
        inter / union
    } else {
        T::ZERO
    };
    let ew = (a[2].max_of(b[2]) - a[0].min_of(b[0])).max_of(T::ZERO);
    let eh = (a[3].max_of(b[3]) - a[1].min_of(b[1])).max_of(T::ZERO);
    let enclosing = ew * eh;
    if enclosing > T::ZERO {
        iou - (enclosing - union) / enclosing
    } else {
        iou
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip() {
        let b = [10.0f64, 20.0, 30.0, 40.0];
        assert_eq!(xywh_to_xyxy(b), [10.0, 20.0, 40.0, 60.0]);
        assert_eq!(xyxy_to_xywh(xywh_to_xyxy(b)), b);
        assert_eq!(xywh_to_cxcywh(b), [25.0, 40.0, 30.0, 40.0]);
        assert_eq!(cxcywh_to_xywh(xywh_to_cxcywh(b)), b);
        let c = [0.5f32, 0.5, 0.2, 0.4];
        let back = xyxy_to_cxcywh(cxcywh_to_xyxy(c));
        for i in 0..4 {
            assert!((back[i] - c[i]).abs() < 1e-7);
        }
    }

    #[test]
    fn iou_and_giou_values() {
        let a = [0.0f64, 0.0, 2.0, 2.0];
        let b = [1.0f64, 1.0, 3.0, 3.0];
        assert!((iou_xyxy(a, b) - 1.0 / 7.0).abs() < 1e-15);
        // enclosing 9, union 7: giou = 1/7 - 2/9
        assert!((giou_xyxy(a, b) - (1.0 / 7.0 - 2.0 / 9.0)).abs() < 1e-15);
        assert_eq!(iou_xyxy(a, a), 1.0);
        assert_eq!(giou_xyxy(a, a), 1.0);
        let far = [10.0f32, 10.0, 11.0, 11.0];
        let a32 = [0.0f32, 0.0, 1.0, 1.0];
        assert_eq!(iou_xyxy(a32, far), 0.0);
        assert!((giou_xyxy(a32, far) - (0.0 - (121.0 - 2.0) / 121.0)).abs() < 1e-6);
        let empty = [1.0f64, 1.0, 1.0, 1.0];
        assert_eq!(iou_xyxy(empty, empty), 0.0);
        assert_eq!(giou_xyxy(empty, empty), 0.0);
    }
}
