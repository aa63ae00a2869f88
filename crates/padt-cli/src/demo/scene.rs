//! Synthetic scenes for the CPU demo: 1–4 coloured shapes (circle, square, triangle) that do
//! not touch, on a background of a random grey (plain, or with colour ramps that encode the
//! position: [`Background`]), with one polygon per shape.
//!
//! Every pixel of a shape is painted from the mask the polygon rasterises to
//! ([`Rle::from_polygon`], the COCO rule), so the picture and the instance masks agree exactly.

use padt_core::Rle;

/// Side of the square demo images in pixels (4 × 4 merged 28-px patches).
pub const IMAGE_SIDE: u32 = 112;
/// Vertices of a circle's polygon.
const CIRCLE_VERTICES: usize = 32;
/// Free pixels kept between two shapes' boxes and between a shape and the border.
const GAP: f64 = 4.0;

/// A small deterministic generator (SplitMix64): the same seed gives the same scenes on every
/// platform.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        // 128-bit multiply: no modulo bias worth speaking of for the small n used here.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range_i64(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The shape of an object; its COCO `category_id` is its position here plus one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
}

impl Shape {
    /// Every shape, in category order.
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    /// The word used in expressions and as the category name.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    /// The COCO category id (1, 2, 3).
    pub fn category_id(self) -> i64 {
        Shape::ALL.iter().position(|&s| s == self).expect("listed") as i64 + 1
    }

    /// The shape of a name.
    pub fn parse(s: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// The colour of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
}

impl Colour {
    /// Every colour.
    pub const ALL: [Colour; 4] = [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow];

    /// The word used in expressions.
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
        }
    }

    /// The colour of a name.
    pub fn parse(s: &str) -> Option<Colour> {
        Colour::ALL.into_iter().find(|x| x.name() == s)
    }

    /// The base RGB value (each object jitters it by up to ±15 per channel). Red and blue, the
    /// channels the [`Background::Ramp`] ramps shift, stay within 60..=195: with the jitter and
    /// ramps of up to ±45 levels they never clip, so a shape keeps both its colour and the
    /// position cue anywhere in the picture.
    fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [195, 40, 60],
            Colour::Green => [60, 180, 70],
            Colour::Blue => [60, 80, 195],
            Colour::Yellow => [195, 185, 60],
        }
    }
}

/// How scenes look: the background and the pixel sides of the two size classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SceneStyle {
    pub background: Background,
    /// Inclusive range of a small shape's box side in pixels.
    pub small_side: (i64, i64),
    /// Inclusive range of a large shape's box side in pixels.
    pub large_side: (i64, i64),
    /// Half the swing of the [`Background::Ramp`] ramps, in levels (red runs from `-swing` at
    /// the left edge to `+swing` at the right, blue likewise top to bottom).
    pub ramp_swing: i64,
}

impl Default for SceneStyle {
    /// The style of the committed demo data (`padt-make-demo`'s defaults).
    fn default() -> Self {
        Self {
            background: Background::Ramp,
            small_side: (26, 34),
            large_side: (42, 54),
            ramp_swing: DEFAULT_RAMP_SWING,
        }
    }
}

impl SceneStyle {
    /// Checks that both size classes fit the image with the border gap and do not overlap.
    pub fn validate(&self) -> Result<(), String> {
        let max = IMAGE_SIDE as i64 - 2 * GAP as i64;
        for (name, (lo, hi)) in [("small", self.small_side), ("large", self.large_side)] {
            if lo < 4 || lo > hi || hi > max {
                return Err(format!(
                    "{name} side range {lo}-{hi}: needs 4 <= low <= high <= {max} px"
                ));
            }
        }
        if !(0..=127).contains(&self.ramp_swing) {
            return Err(format!(
                "ramp swing {}: needs 0..=127 levels",
                self.ramp_swing
            ));
        }
        if self.small_side.1 >= self.large_side.0 {
            return Err(format!(
                "small sides (up to {}) must stay below large sides (from {})",
                self.small_side.1, self.large_side.0
            ));
        }
        Ok(())
    }

    fn side_range(&self, size: Size) -> (i64, i64) {
        match size {
            Size::Small => self.small_side,
            Size::Large => self.large_side,
        }
    }
}

/// The background of a scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Background {
    /// One random grey.
    Flat,
    /// A random grey, and over the whole picture (shapes included) red rising left to right
    /// and blue top to bottom (± [`SceneStyle::ramp_swing`] levels): every patch's pixels say
    /// where it is, which a
    /// from-scratch ViT (rotary, relative positions only) cannot otherwise tell.
    Ramp,
}

/// Inclusive range of the background grey: with ramps of up to ±45 levels the background never
/// clips either (see [`Colour`]'s base values).
const GREY_LEVELS: (i64, i64) = (100, 200);

/// Default half swing of the ramps, in levels.
pub const DEFAULT_RAMP_SWING: i64 = 45;

/// The size class of an object (pixel sides in [`SceneStyle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Size {
    Small,
    Large,
}

impl Size {
    /// Both sizes.
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];

    /// The word used in expressions.
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    /// The size of a name.
    pub fn parse(s: &str) -> Option<Size> {
        Size::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// One shape of a scene.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneObject {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    /// The polygon `[x0, y0, x1, y1, ...]` in pixels (COCO segmentation order).
    pub polygon: Vec<f64>,
    /// The rasterised instance mask.
    pub mask: Rle,
    /// The mask's tight box `[x, y, w, h]` (COCO `bbox`).
    pub bbox: [f64; 4],
    /// Mask pixels (COCO `area`).
    pub area: u64,
}

impl SceneObject {
    /// Horizontal centre of the box in pixels.
    pub fn center_x(&self) -> f64 {
        self.bbox[0] + self.bbox[2] / 2.0
    }
}

/// A generated scene: its picture and its objects.
#[derive(Debug, Clone)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    /// Row-major RGB pixels.
    pub rgb: Vec<u8>,
    pub objects: Vec<SceneObject>,
}

impl Scene {
    /// The picture as PNG bytes (deterministic: same pixels, same bytes).
    pub fn png(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let encoder = image::codecs::png::PngEncoder::new(&mut out);
        image::ImageEncoder::write_image(
            encoder,
            &self.rgb,
            self.width,
            self.height,
            image::ExtendedColorType::Rgb8,
        )
        .expect("an RGB buffer of the stated size encodes");
        out
    }
}

/// Rounds to two decimals, as COCO polygons are written.
fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The polygon of `shape` inside the box `(x0, y0)`–`(x0 + side, y0 + side)`.
fn polygon(shape: Shape, x0: f64, y0: f64, side: f64) -> Vec<f64> {
    match shape {
        Shape::Square => vec![x0, y0, x0 + side, y0, x0 + side, y0 + side, x0, y0 + side],
        Shape::Triangle => vec![x0 + side / 2.0, y0, x0 + side, y0 + side, x0, y0 + side],
        Shape::Circle => {
            let (cx, cy, r) = (x0 + side / 2.0, y0 + side / 2.0, side / 2.0);
            (0..CIRCLE_VERTICES)
                .flat_map(|i| {
                    let t = i as f64 * std::f64::consts::TAU / CIRCLE_VERTICES as f64;
                    [round2(cx + r * t.cos()), round2(cy + r * t.sin())]
                })
                .collect()
        }
    }
}

fn boxes_overlap(a: [f64; 4], b: [f64; 4]) -> bool {
    // [x0, y0, x1, y1] grown by GAP.
    a[0] < b[2] + GAP && b[0] < a[2] + GAP && a[1] < b[3] + GAP && b[1] < a[3] + GAP
}

/// Draws a scene of 1–4 objects.
pub fn generate_scene(rng: &mut SplitMix64, style: &SceneStyle) -> Scene {
    let (w, h) = (IMAGE_SIDE, IMAGE_SIDE);
    let wanted = rng.range_i64(1, 4) as usize;
    let grey = rng.range_i64(GREY_LEVELS.0, GREY_LEVELS.1) as u8;
    let mut rgb = vec![grey; (w * h * 3) as usize];
    let mut placed: Vec<[f64; 4]> = Vec::new();
    let mut objects = Vec::new();
    for _ in 0..wanted {
        let shape = Shape::ALL[rng.below(3) as usize];
        let colour = Colour::ALL[rng.below(4) as usize];
        let size = Size::ALL[rng.below(2) as usize];
        let (lo, hi) = style.side_range(size);
        let side = rng.range_i64(lo, hi) as f64;
        let jitter: [i64; 3] = [
            rng.range_i64(-15, 15),
            rng.range_i64(-15, 15),
            rng.range_i64(-15, 15),
        ];
        // A free spot; a shape that finds none in 200 tries is left out of the scene.
        let mut spot = None;
        for _ in 0..200 {
            let max = w as f64 - side - GAP;
            let x0 = GAP + (rng.unit() * (max - GAP) * 2.0).floor() / 2.0;
            let y0 = GAP + (rng.unit() * (max - GAP) * 2.0).floor() / 2.0;
            let b = [x0, y0, x0 + side, y0 + side];
            if placed.iter().all(|p| !boxes_overlap(*p, b)) {
                spot = Some(b);
                break;
            }
        }
        let Some(b) = spot else { continue };
        placed.push(b);
        let poly = polygon(shape, b[0], b[1], side);
        let mask = Rle::from_polygon(&poly, h, w).expect("a polygon inside the image");
        let base = colour.rgb();
        let colour_rgb: [u8; 3] =
            std::array::from_fn(|c| (base[c] as i64 + jitter[c]).clamp(0, 255) as u8);
        for (i, &m) in mask.decode_row_major().iter().enumerate() {
            if m != 0 {
                rgb[i * 3..i * 3 + 3].copy_from_slice(&colour_rgb);
            }
        }
        objects.push(SceneObject {
            shape,
            colour,
            size,
            polygon: poly,
            bbox: mask.to_bbox(),
            area: mask.area(),
            mask,
        });
    }
    if style.background == Background::Ramp {
        // Over the whole picture, shapes included, so that every patch says where it is.
        let swing = style.ramp_swing as f64;
        let ramp =
            |i: u32, n: u32| (swing * (2.0 * i as f64 / (n - 1) as f64 - 1.0)).round() as i64;
        for y in 0..h {
            for x in 0..w {
                let px = ((y * w + x) * 3) as usize;
                rgb[px] = (rgb[px] as i64 + ramp(x, w)).clamp(0, 255) as u8;
                rgb[px + 2] = (rgb[px + 2] as i64 + ramp(y, h)).clamp(0, 255) as u8;
            }
        }
    }
    Scene {
        width: w,
        height: h,
        rgb,
        objects,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_have_separate_nonempty_objects() {
        let mut rng = SplitMix64::new(7);
        for _ in 0..200 {
            let s = generate_scene(&mut rng, &SceneStyle::default());
            assert!(!s.objects.is_empty() && s.objects.len() <= 4);
            for (i, a) in s.objects.iter().enumerate() {
                assert!(a.area > 100, "{a:?}");
                for b in &s.objects[i + 1..] {
                    let (ba, bb) = (a.bbox, b.bbox);
                    let apart = ba[0] + ba[2] <= bb[0]
                        || bb[0] + bb[2] <= ba[0]
                        || ba[1] + ba[3] <= bb[1]
                        || bb[1] + bb[3] <= ba[1];
                    assert!(apart, "{ba:?} {bb:?}");
                }
            }
        }
    }

    #[test]
    fn picture_matches_masks() {
        let mut rng = SplitMix64::new(3);
        let flat = SceneStyle {
            background: Background::Flat,
            ..SceneStyle::default()
        };
        let s = generate_scene(&mut rng, &flat);
        let bg = &s.rgb[0..3];
        let mut union = vec![0u8; (s.width * s.height) as usize];
        for o in &s.objects {
            for (u, m) in union.iter_mut().zip(o.mask.decode_row_major()) {
                *u |= m;
            }
        }
        for (i, &u) in union.iter().enumerate() {
            let px = &s.rgb[i * 3..i * 3 + 3];
            assert_eq!(u == 0, px == bg, "pixel {i}");
        }
    }

    /// With the ramps, red - green of the background says the column and blue - green the row,
    /// and a shape's red and blue rise as the background's do: nowhere, in 40 scenes, does a
    /// grey, a colour or its jitter clip the ramps.
    #[test]
    fn ramp_background_encodes_the_position() {
        let style = SceneStyle {
            background: Background::Ramp,
            ramp_swing: 45,
            ..SceneStyle::default()
        };
        let swing = style.ramp_swing as f64;
        let ramp = |t: usize| (swing * (2.0 * t as f64 / (IMAGE_SIDE - 1) as f64 - 1.0)).round();
        let side = IMAGE_SIDE as usize;
        let mut rng = SplitMix64::new(11);
        for _ in 0..40 {
            let s = generate_scene(&mut rng, &style);
            let channel = |i: usize, c: usize| s.rgb[i * 3 + c] as f64;
            let mut covered = vec![false; side * side];
            for o in &s.objects {
                let inside = o.mask.decode_row_major();
                let pixels: Vec<usize> = (0..side * side).filter(|&i| inside[i] != 0).collect();
                // Inside a shape: its colour plus the ramps.
                let first = pixels[0];
                let (x0, y0) = (first % side, first / side);
                for &i in &pixels {
                    covered[i] = true;
                    let (x, y) = (i % side, i / side);
                    let red = channel(i, 0) - channel(first, 0);
                    let blue = channel(i, 2) - channel(first, 2);
                    assert_eq!(red, ramp(x) - ramp(x0), "red at ({x}, {y})");
                    assert_eq!(channel(i, 1), channel(first, 1), "green at ({x}, {y})");
                    assert_eq!(blue, ramp(y) - ramp(y0), "blue at ({x}, {y})");
                }
            }
            let mut background = 0;
            for i in (0..side * side).filter(|&i| !covered[i]) {
                let (x, y) = (i % side, i / side);
                let [r, g, b] = [0, 1, 2].map(|c| channel(i, c));
                assert_eq!((r - g, b - g), (ramp(x), ramp(y)), "pixel ({x}, {y})");
                background += 1;
            }
            assert!(background > side * side / 2, "{background}");
        }
    }

    #[test]
    fn styles_with_impossible_sizes_are_rejected() {
        assert!(SceneStyle::default().validate().is_ok());
        let too_big = SceneStyle {
            large_side: (40, 120),
            ..SceneStyle::default()
        };
        assert!(too_big.validate().unwrap_err().contains("large"));
        let overlapping = SceneStyle {
            small_side: (16, 44),
            ..SceneStyle::default()
        };
        assert!(overlapping.validate().unwrap_err().contains("below"));
        let wild_ramp = SceneStyle {
            ramp_swing: 200,
            ..SceneStyle::default()
        };
        assert!(wild_ramp.validate().unwrap_err().contains("ramp swing"));
    }

    /// Larger size classes give larger shapes.
    #[test]
    fn size_ranges_are_honoured() {
        let style = SceneStyle {
            small_side: (24, 30),
            large_side: (44, 52),
            ..SceneStyle::default()
        };
        let mut rng = SplitMix64::new(5);
        for _ in 0..50 {
            for o in generate_scene(&mut rng, &style).objects {
                let (lo, hi) = style.side_range(o.size);
                let side = o.bbox[2].max(o.bbox[3]);
                assert!(side >= lo as f64 - 1.0 && side <= hi as f64 + 1.0, "{o:?}");
            }
        }
    }
}
