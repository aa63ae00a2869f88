//! padt-core: boxes and COCO masks, bit-compatible with pycocotools.
//!
//! - [`Rle`] ([`rle`]): COCO run-length encoding. Column-major (pixel index `x * h + y`), runs
//!   alternate 0s and 1s starting with a (possibly empty) run of 0s. Compressed-string codec
//!   identical to pycocotools `rleToString` / `rleFrString`, encode / decode, union, area, bbox.
//! - [`polygon`]: pycocotools' own polygon rasterisation (`rleFrPoly`) and filled boxes (`rleFrBbox`).
//! - [`Segmentation`] ([`segmentation`]): a COCO `segmentation` JSON value (polygons, uncompressed
//!   or compressed RLE) turned into one [`Rle`] the way PaDT does it with `frPyObjects` + `merge`.
//! - [`boxes`]: xywh / xyxy / cxcywh conversions, area, IoU, GIoU for `f32` and `f64`.
//!
//! The conventions (and what happens with degenerate input) are documented in `docs/masks.md`.

pub mod boxes;
pub mod error;
pub mod polygon;
pub mod rle;
pub mod segmentation;

pub use error::MaskError;
pub use rle::Rle;
pub use segmentation::Segmentation;
