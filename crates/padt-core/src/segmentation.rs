//! A COCO `segmentation` value turned into one mask, as PaDT does it with pycocotools
//! (`frPyObjects(segm, h, w)` then `merge` for polygon lists).
//!
//! Accepted JSON shapes (pycocotools `frPyObjects` dispatch):
//! - `[[x0, y0, x1, y1, ...], ...]`: polygons, rasterised with `rleFrPoly` and united.
//!   Quirk kept from pycocotools: when the FIRST entry has exactly 4 numbers, every entry is
//!   read as a box `[x, y, w, h]` (`frBbox`). Errors (pycocotools raises or reads garbage):
//!   an empty list, a first entry with fewer than 4 numbers, an entry of odd length,
//!   a later entry with fewer than 2 numbers... see `docs/masks.md`.
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

/// `merge(frPyObjects(polys, h, w))`, including pycocotools' "first entry of 4 numbers = boxes" rule.
pub fn polygons_to_rle(polys: &[Vec<f64>], height: u32, width: u32) -> Result<Rle, MaskError> {
    let first = polys
        .first()
        .ok_or(MaskError::Empty("empty polygon list"))?;
    let as_boxes = first.len() == 4;
    if first.len() < 4 {
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
        let part = if as_boxes {
            if p.len() != 4 {
                return Err(MaskError::Unsupported(format!(
                    "segmentation read as boxes (first entry has 4 numbers) but entry #{i} has {}",
                    p.len()
                )));
            }
            Rle::from_bbox([p[0], p[1], p[2], p[3]], height, width)
        } else {
            if p.len() % 2 != 0 {
                return Err(MaskError::OddPolygon {
                    index: i,
                    len: p.len(),
                });
            }
            if p.len() < 2 {
                return Err(MaskError::DegeneratePolygon {
                    index: i,
                    len: p.len(),
                });
            }
            Rle::from_polygon(p, height, width)
        };
        parts.push(part?);
    }
    Rle::merge(&parts)
}
