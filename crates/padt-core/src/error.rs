//! Errors of the mask code. Every malformed input is an error value, never a panic.

use thiserror::Error;

/// What was wrong with a mask, an RLE or a segmentation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MaskError {
    /// A compressed RLE string holds a character outside pycocotools' alphabet (`'0'..='o'`).
    #[error("compressed RLE string: invalid character {ch:?} at byte {pos}")]
    RleBadChar { pos: usize, ch: char },
    /// A compressed RLE string ends in the middle of a value (last character has the continuation bit).
    #[error("compressed RLE string: truncated value at the end of the string")]
    RleTruncated,
    /// A decoded count is negative or does not fit in `u32`.
    #[error("compressed RLE string: count #{index} is out of range ({value})")]
    RleCountOutOfRange { index: usize, value: i64 },
    /// The run lengths do not add up to `height * width`.
    #[error("RLE counts sum to {sum}, expected height*width = {height}*{width} = {expected}")]
    RleSumMismatch {
        sum: u64,
        height: u32,
        width: u32,
        expected: u64,
    },
    /// A mask buffer does not have `height * width` pixels.
    #[error("mask buffer has {len} pixels, expected height*width = {height}*{width}")]
    MaskSizeMismatch { len: usize, height: u32, width: u32 },
    /// RLEs of different sizes cannot be merged.
    #[error("cannot merge RLEs of different sizes: {a:?} vs {b:?} ([height, width])")]
    MergeSizeMismatch { a: [u32; 2], b: [u32; 2] },
    /// Nothing to merge / an empty polygon list.
    #[error("empty segmentation: {0}")]
    Empty(&'static str),
    /// A polygon with an odd number of coordinates.
    #[error("polygon #{index} has an odd number of coordinates ({len})")]
    OddPolygon { index: usize, len: usize },
    /// A polygon with fewer than 3 points where pycocotools would raise.
    #[error("polygon #{index} has {len} coordinates; at least 6 (3 points) are needed")]
    DegeneratePolygon { index: usize, len: usize },
    /// A coordinate is NaN or infinite.
    #[error("polygon #{index} has a non-finite coordinate")]
    NonFiniteCoordinate { index: usize },
    /// A polygon so large (coordinates far outside any image) that pycocotools' boundary walk
    /// would need more than [`crate::polygon::MAX_BOUNDARY_POINTS`] points.
    #[error("polygon #{index} is too large to rasterise ({points} boundary points; coordinates far outside the image?)")]
    PolygonTooLarge { index: usize, points: u64 },
    /// A segmentation JSON value of a shape pycocotools does not accept.
    #[error("unsupported segmentation: {0}")]
    Unsupported(String),
}
