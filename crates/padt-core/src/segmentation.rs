//! A COCO `segmentation` value turned into one mask, as PaDT does it with pycocotools
//! (`frPyObjects(segm, h, w)` then `merge` for polygon lists).
//!
//! Accepted JSON shapes (pycocotools `frPyObjects` dispatch):
//! - `[[x0, y0, x1, y1, ...], ...]`: polygons, rasterised with `rleFrPoly` and united
//!   (see [`polygons_to_rle`] for degenerate polygons and `docs/masks.md`).
//! - `{"counts": [c0, c1, ...], "size": [h, w]}`: uncompressed RLE (crowd), counts verbatim.
//! - `{"counts": "<compressed>", "size": [h, w]}`: compressed RLE, used as is.
//!
//! The RLE dicts carry their own size; [`Segmentation::to_rle`] checks it against the image.

use crate::error::MaskError;
use crate::rle::Rle;
use serde_json::Value;

/// A parsed COCO `segmentation`.
#[derive(Debug, Clone, PartialEq)]
pub enum Segmentation {
    /// A list of polygons `[x0, y0, x1, y1, ...]` (union of parts).
    Polygons(Vec<Vec<f64>>),
    /// Uncompressed RLE `{"counts": [...], "size": [h, w]}`.
    Uncompressed { size: [u32; 2], counts: Vec<u32> },
    /// Compressed RLE `{"counts": "...", "size": [h, w]}`.
    Compressed { size: [u32; 2], counts: String },
}

fn parse_size(obj: &serde_json::Map<String, Value>) -> Result<[u32; 2], MaskError> {
    let bad = || MaskError::Unsupported("RLE `size` must be [height, width] of integers".into());
    let arr = obj.get("size").and_then(Value::as_array).ok_or_else(bad)?;
    if arr.len() != 2 {
        return Err(bad());
    }
    let h = arr[0]
        .as_u64()
        .filter(|&v| v <= u32::MAX as u64)
        .ok_or_else(bad)?;
    let w = arr[1]
        .as_u64()
        .filter(|&v| v <= u32::MAX as u64)
        .ok_or_else(bad)?;
    Ok([h as u32, w as u32])
}

impl Segmentation {
    /// Reads a COCO `segmentation` JSON value. Shape errors are [`MaskError::Unsupported`].
    pub fn from_json(value: &Value) -> Result<Segmentation, MaskError> {
        match value {
            Value::Array(parts) => {
                let mut polys = Vec::with_capacity(parts.len());
                for (i, p) in parts.iter().enumerate() {
                    let arr = p.as_array().ok_or_else(|| {
                        MaskError::Unsupported(format!("polygon #{i} is not a list of numbers"))
                    })?;
                    let mut poly = Vec::with_capacity(arr.len());
                    for c in arr {
                        poly.push(c.as_f64().ok_or_else(|| {
                            MaskError::Unsupported(format!("polygon #{i} holds a non-number"))
                        })?);
                    }
                    polys.push(poly);
                }
                Ok(Segmentation::Polygons(polys))
            }
            Value::Object(obj) => {
                let size = parse_size(obj)?;
                match obj.get("counts") {
                    Some(Value::String(s)) => Ok(Segmentation::Compressed {
                        size,
                        counts: s.clone(),
                    }),
                    Some(Value::Array(arr)) => {
                        let mut counts = Vec::with_capacity(arr.len());
                        for c in arr {
                            let v =
                                c.as_u64()
                                    .filter(|&v| v <= u32::MAX as u64)
                                    .ok_or_else(|| {
                                        MaskError::Unsupported(
                                            "uncompressed RLE counts must be non-negative integers"
                                                .into(),
                                        )
                                    })?;
                            counts.push(v as u32);
                        }
                        Ok(Segmentation::Uncompressed { size, counts })
                    }
                    _ => Err(MaskError::Unsupported(
                        "RLE `counts` must be a string or a list of integers".into(),
                    )),
                }
            }
            _ => Err(MaskError::Unsupported(
                "segmentation must be a list of polygons or an RLE object".into(),
            )),
        }
    }

    /// The mask at image size `height x width`, identical to PaDT's pycocotools result.
    pub fn to_rle(&self, height: u32, width: u32) -> Result<Rle, MaskError> {
        match self {
            Segmentation::Polygons(polys) => polygons_to_rle(polys, height, width),
            Segmentation::Uncompressed { size, counts } => {
                check_size(*size, height, width)?;
                Rle::from_counts(size[0], size[1], counts.clone())
            }
            Segmentation::Compressed { size, counts } => {
                check_size(*size, height, width)?;
                Rle::from_string(counts, size[0], size[1])
            }
        }
    }
}

fn check_size(size: [u32; 2], height: u32, width: u32) -> Result<(), MaskError> {
    if size != [height, width] {
        return Err(MaskError::Unsupported(format!(
            "RLE size {size:?} differs from the image size [{height}, {width}]"
        )));
    }
    Ok(())
}

/// `merge(frPyObjects(polys, h, w))` for a polygon list.
///
/// pycocotools 2.0.x raises when the first entry has 4 or fewer numbers (4 numbers are routed
/// to `frBbox`, which rejects a list); that is [`MaskError::DegeneratePolygon`] here. Later
/// entries with 2 or 4 numbers are rasterised like pycocotools does (a point draws nothing,
/// 2 points draw a thin line). Errors instead of pycocotools' silent behaviour: an entry of
/// odd length ([`MaskError::OddPolygon`]; pycocotools drops the last number), an empty later
/// entry (pycocotools reads uninitialised memory), a NaN / infinite coordinate.
pub fn polygons_to_rle(polys: &[Vec<f64>], height: u32, width: u32) -> Result<Rle, MaskError> {
    let first = polys
        .first()
        .ok_or(MaskError::Empty("empty polygon list"))?;
    if first.len() <= 4 {
        return Err(MaskError::DegeneratePolygon {
            index: 0,
            len: first.len(),
        });
    }
    let mut parts = Vec::with_capacity(polys.len());
    for (i, p) in polys.iter().enumerate() {
        if p.iter().any(|v| !v.is_finite()) {
            return Err(MaskError::NonFiniteCoordinate { index: i });
        }
        if !p.len().is_multiple_of(2) {
            return Err(MaskError::OddPolygon {
                index: i,
                len: p.len(),
            });
        }
        if p.is_empty() {
            return Err(MaskError::DegeneratePolygon { index: i, len: 0 });
        }
        parts.push(Rle::from_polygon(p, height, width).map_err(|e| match e {
            MaskError::PolygonTooLarge { points, .. } => {
                MaskError::PolygonTooLarge { index: i, points }
            }
            other => other,
        })?);
    }
    Rle::merge(&parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dispatch_and_errors() {
        let poly = json!([[1.0, 1.0, 4.0, 1.0, 4.0, 4.0, 1.0, 4.0]]);
        let r = Segmentation::from_json(&poly)
            .unwrap()
            .to_rle(6, 6)
            .unwrap();
        assert_eq!(r.area(), 9);
        let unc = json!({"counts": [3, 2, 31], "size": [6, 6]});
        let ru = Segmentation::from_json(&unc).unwrap().to_rle(6, 6).unwrap();
        assert_eq!(ru.counts, vec![3, 2, 31]);
        let comp = json!({"counts": ru.to_string(), "size": [6, 6]});
        assert_eq!(
            Segmentation::from_json(&comp)
                .unwrap()
                .to_rle(6, 6)
                .unwrap(),
            ru
        );
        // errors, never panics
        let seg = |v: serde_json::Value| Segmentation::from_json(&v).and_then(|s| s.to_rle(6, 6));
        assert_eq!(seg(json!([])), Err(MaskError::Empty("empty polygon list")));
        assert!(matches!(
            seg(json!([[1, 1, 2, 2]])),
            Err(MaskError::DegeneratePolygon { .. })
        ));
        assert!(matches!(
            seg(json!([[1, 1]])),
            Err(MaskError::DegeneratePolygon { .. })
        ));
        assert!(matches!(
            seg(json!([[1, 1, 2, 2, 3]])),
            Err(MaskError::OddPolygon { .. })
        ));
        assert!(matches!(
            seg(json!([[1, 1, 2, 2, 3, 1], []])),
            Err(MaskError::DegeneratePolygon { index: 1, .. })
        ));
        assert!(seg(json!([[1, 1, 2, 2, 3, 1], [0, 0]])).is_ok());
        assert!(matches!(
            seg(json!({"counts": [3, 2], "size": [6, 6]})),
            Err(MaskError::RleSumMismatch { .. })
        ));
        assert!(matches!(
            seg(json!({"counts": [36], "size": [6, 5]})),
            Err(MaskError::Unsupported(_))
        ));
        assert!(matches!(
            seg(json!({"counts": "0", "size": [6]})),
            Err(MaskError::Unsupported(_))
        ));
        assert!(matches!(
            seg(json!({"size": [6, 6]})),
            Err(MaskError::Unsupported(_))
        ));
        assert!(matches!(seg(json!("x")), Err(MaskError::Unsupported(_))));
        assert!(matches!(
            seg(json!([["a"]])),
            Err(MaskError::Unsupported(_))
        ));
    }
}
