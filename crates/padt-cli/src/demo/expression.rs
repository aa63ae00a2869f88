//! Referring expressions of the demo scenes, and the check that one names exactly one object.
//!
//! An [`Expression`] is a set of attribute constraints (colour, size, shape) plus an optional
//! horizontal position: "the small blue square", "the red object", "the circle on the left",
//! "the rightmost yellow triangle". A position picks, among the objects that satisfy the
//! attributes, the one furthest left (right); it only resolves when that object's centre is at
//! least [`POSITION_MARGIN`] px further out than the next one's, so "left" is never a guess.
//! Sentences are written by [`Expression::sentence`] and read back by [`Expression::parse`].

use super::scene::{Colour, SceneObject, Shape, Size};

/// How much further left (right) than every other candidate a "left" ("right") object's
/// horizontal centre must be, in pixels.
pub const POSITION_MARGIN: f64 = 12.0;

/// Left or right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Left,
    Right,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Left => "left",
            Side::Right => "right",
        }
    }
}

/// A referring expression as constraints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Expression {
    pub size: Option<Size>,
    pub colour: Option<Colour>,
    pub shape: Option<Shape>,
    pub side: Option<Side>,
}

/// The object the attribute constraints (without position) accept.
fn attributes_match(e: &Expression, o: &SceneObject) -> bool {
    e.size.is_none_or(|s| s == o.size)
        && e.colour.is_none_or(|c| c == o.colour)
        && e.shape.is_none_or(|s| s == o.shape)
}

impl Expression {
    /// The indices of the objects of a scene the expression can mean. A unique referent gives
    /// one index; an expression with a position gives none when the position is unclear.
    pub fn resolve(&self, objects: &[SceneObject]) -> Vec<usize> {
        let candidates: Vec<usize> = (0..objects.len())
            .filter(|&i| attributes_match(self, &objects[i]))
            .collect();
        let Some(side) = self.side else {
            return candidates;
        };
        // A position needs something to be left (right) of.
        if candidates.len() < 2 {
            return Vec::new();
        }
        let key = |i: usize| match side {
            Side::Left => objects[i].center_x(),
            Side::Right => -objects[i].center_x(),
        };
        let mut sorted = candidates;
        sorted.sort_by(|&a, &b| key(a).total_cmp(&key(b)));
        if key(sorted[1]) - key(sorted[0]) >= POSITION_MARGIN {
            vec![sorted[0]]
        } else {
            Vec::new()
        }
    }

    /// How many objects the attributes accept (used to word the position).
    fn group_size(&self, objects: &[SceneObject]) -> usize {
        objects.iter().filter(|o| attributes_match(self, o)).count()
    }

    /// The sentence: "the [size] [colour] shape|object", with "on the left" when two objects
    /// share the attributes, or "the leftmost ..." when more do.
    pub fn sentence(&self, objects: &[SceneObject]) -> String {
        self.sentence_for_group(self.group_size(objects))
    }

    /// The sentence when `group` objects share the attributes (only the wording of a position
    /// depends on the scene).
    pub fn sentence_for_group(&self, group: usize) -> String {
        let mut words = vec!["the".to_string()];
        if let Some(side) = self.side {
            if group > 2 {
                words.push(format!("{}most", side.name()));
            }
        }
        if let Some(s) = self.size {
            words.push(s.name().into());
        }
        if let Some(c) = self.colour {
            words.push(c.name().into());
        }
        words.push(self.shape.map_or("object", Shape::name).into());
        if let Some(side) = self.side {
            if group <= 2 {
                words.push(format!("on the {}", side.name()));
            }
        }
        words.join(" ")
    }

    /// Reads a sentence written by [`Expression::sentence`].
    pub fn parse(sentence: &str) -> Option<Expression> {
        let mut e = Expression {
            size: None,
            colour: None,
            shape: None,
            side: None,
        };
        let mut words: Vec<&str> = sentence.split(' ').collect();
        if words.first() != Some(&"the") {
            return None;
        }
        words.remove(0);
        if words.ends_with(&["on", "the", "left"]) || words.ends_with(&["on", "the", "right"]) {
            e.side = Some(if words[words.len() - 1] == "left" {
                Side::Left
            } else {
                Side::Right
            });
            words.truncate(words.len() - 3);
        }
        let mut rest = words.as_slice();
        match rest.first() {
            Some(&"leftmost") | Some(&"rightmost") if e.side.is_none() => {
                e.side = Some(if rest[0] == "leftmost" {
                    Side::Left
                } else {
                    Side::Right
                });
                rest = &rest[1..];
            }
            _ => {}
        }
        let (noun, adjectives) = rest.split_last()?;
        if *noun != "object" {
            e.shape = Some(Shape::parse(noun)?);
        }
        for a in adjectives {
            if let Some(s) = Size::parse(a) {
                if e.size.replace(s).is_some() || e.colour.is_some() {
                    return None;
                }
            } else if let Some(c) = Colour::parse(a) {
                if e.colour.replace(c).is_some() {
                    return None;
                }
            } else {
                return None;
            }
        }
        Some(e)
    }
}

/// Every expression that names object `target` of the scene and no other, in a fixed order.
pub fn unambiguous_expressions(objects: &[SceneObject], target: usize) -> Vec<Expression> {
    let o = &objects[target];
    let mut out = Vec::new();
    for side in [None, Some(Side::Left), Some(Side::Right)] {
        for size in [None, Some(o.size)] {
            for colour in [None, Some(o.colour)] {
                for shape in [None, Some(o.shape)] {
                    let e = Expression {
                        size,
                        colour,
                        shape,
                        side,
                    };
                    // "the object" / "the small object" say too little to read naturally
                    // unless a colour or a position comes with them.
                    if shape.is_none() && colour.is_none() && side.is_none() {
                        continue;
                    }
                    if e.resolve(objects) == [target] {
                        out.push(e);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::scene::{generate_scene, SceneStyle, SplitMix64};
    use super::*;

    #[test]
    fn sentences_parse_back_and_resolve_to_their_object() {
        let mut rng = SplitMix64::new(11);
        let mut seen_positions = 0;
        for _ in 0..300 {
            let s = generate_scene(&mut rng, &SceneStyle::default());
            for t in 0..s.objects.len() {
                for e in unambiguous_expressions(&s.objects, t) {
                    let text = e.sentence(&s.objects);
                    let back = Expression::parse(&text).unwrap_or_else(|| panic!("{text}"));
                    assert_eq!(back, e, "{text}");
                    assert_eq!(back.resolve(&s.objects), vec![t], "{text}");
                    seen_positions += e.side.is_some() as usize;
                }
            }
        }
        assert!(seen_positions > 100);
    }

    #[test]
    fn parse_rejects_other_sentences() {
        for s in [
            "a red circle",
            "the purple circle",
            "the red red circle",
            "the red small circle",
            "the",
            "the circle on the top",
        ] {
            assert_eq!(Expression::parse(s), None, "{s}");
        }
    }
}
