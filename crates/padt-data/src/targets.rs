//! Target sequences: `<|Obj_k|>` placeholders → VRTs picked from the object's foreground
//! patches, then `<|im_end|>` (padt-reference.md §3.1).
//!
//! Selection modes ([`PatchSelection`]), as `PaDTSFTTrainer.compute_loss` has them:
//! - `Random { num }` (default, 5): `np.random.choice(patches, num, replace=len(patches) < num)`;
//! - `All` (`random_select_patch_num < 0`): every foreground patch, in stored order;
//! - `Structured` (`random_select_patch=False`): a random centre patch (not in an extreme
//!   row/column; any patch when none is), then random patches of the leftmost column, topmost
//!   row, rightmost column and bottommost row.
//!
//! and one of padt-rs (not in the reference):
//! - `Anchored`: the five patches of `Structured`, each fixed by the object's box instead of
//!   drawn: the foreground patch nearest the box centre, then in the leftmost column, topmost
//!   row, rightmost column and bottommost row the patch nearest the box centre. The same
//!   object always gets the same VRTs, and the first one is the patch that shows most of it
//!   (for an object of 2 x 2 patches `Structured` draws any of the four, even one that holds
//!   a few of its pixels).
//!
//! Draws use numpy's legacy `RandomState` (MT19937) reproduced draw for draw
//! ([`crate::sources::coco::numpy_rng::LegacyRandomState`]), so a run seeded like the
//! reference picks the same patches. In training each sample gets its own generator from
//! `(seed, epoch, sample index)` ([`sample_rng`]): a resumed run picks the same patches, and
//! the picks do not depend on batch composition or worker threads.
//!
//! Checks (each error names the record): no literal `<|VRT_n|>` in the template (it would be a
//! VRT tied to no object and shift the object ↔ VRT-run alignment of the decoder targets), no
//! empty template, every placeholder names an existing object with at least one patch, and
//! every patch lies inside the image's merged grid.

use regex::Regex;
use std::sync::OnceLock;

use crate::record::{Record, RecordObject};
use crate::sources::coco::numpy_rng::LegacyRandomState;
use crate::vrt::vrt_string;

/// How VRT patches are chosen for one object placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchSelection {
    /// `num` uniform picks, without replacement (with replacement below `num` patches).
    Random {
        /// Picks per object (PaDT: 5).
        num: usize,
    },
    /// All foreground patches (the "All VRTs" ablation).
    All,
    /// Centre, left, top, right, bottom (one random patch each).
    Structured,
    /// Centre, left, top, right, bottom, each the patch nearest the object's box centre
    /// (no draws).
    Anchored,
}

impl Default for PatchSelection {
    fn default() -> Self {
        PatchSelection::Random { num: 5 }
    }
}

/// Errors building a target; each names the record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TargetError {
    /// The answer template is empty.
    #[error("record {record}: empty answer_template")]
    EmptyAnswer {
        /// Record id.
        record: i64,
    },
    /// The template (or prompt) holds a literal VRT token.
    #[error(
        "record {record}: {field} contains the literal VRT token {token:?}; VRTs must come from \
         <|Obj_k|> placeholders"
    )]
    LiteralVrt {
        /// Record id.
        record: i64,
        /// `answer_template` or `prompt`.
        field: &'static str,
        /// The token text.
        token: String,
    },
    /// `<|Obj_k|>` names no object.
    #[error("record {record}: <|Obj_{index}|> but the record has {objects} object(s)")]
    MissingObject {
        /// Record id.
        record: i64,
        /// The placeholder index.
        index: usize,
        /// Objects in the record.
        objects: usize,
    },
    /// The object has no foreground patch to pick from.
    #[error("record {record}: object {index} has no foreground patches")]
    NoPatches {
        /// Record id.
        record: i64,
        /// Object index.
        index: usize,
    },
    /// A patch index lies outside the image's merged grid.
    #[error(
        "record {record}: object {index} has patch {patch}, outside the image's {merged} merged \
         patches"
    )]
    PatchOutOfGrid {
        /// Record id.
        record: i64,
        /// Object index.
        index: usize,
        /// The patch.
        patch: u32,
        /// Merged patches of the image.
        merged: usize,
    },
    /// Given picks do not match the placeholders.
    #[error("record {record}: {reason}")]
    BadPicks {
        /// Record id.
        record: i64,
        /// What was wrong.
        reason: String,
    },
}

fn obj_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"<\|Obj_(\d+)\|>").expect("valid regex"))
}

fn vrt_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"<\|VRT_\d+\|>").expect("valid regex"))
}

/// The first literal `<|VRT_n|>` in `text`, if any.
pub fn find_literal_vrt(text: &str) -> Option<&str> {
    vrt_regex().find(text).map(|m| m.as_str())
}

/// An answer template split at its placeholders: `texts.len() == objects.len() + 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitTemplate {
    /// Text before, between and after the placeholders.
    pub texts: Vec<String>,
    /// Object index of each placeholder, in text order (an object may appear twice).
    pub objects: Vec<usize>,
}

/// Splits `answer_template` on `<|Obj_k|>` (PaDT's `re.split` / `re.findall`).
pub fn split_template(template: &str) -> SplitTemplate {
    let mut texts = Vec::new();
    let mut objects = Vec::new();
    let mut last = 0;
    for cap in obj_regex().captures_iter(template) {
        let m = cap.get(0).expect("group 0");
        texts.push(template[last..m.start()].to_string());
        // Digits only; an absurdly long index cannot name an object.
        objects.push(cap[1].parse::<usize>().unwrap_or(usize::MAX));
        last = m.end();
    }
    texts.push(template[last..].to_string());
    SplitTemplate { texts, objects }
}

/// numpy legacy `RandomState.choice(population, size, replace)` with `p=None`.
/// Without replacement: the first `size` entries of `permutation(len)`; with replacement:
/// `randint(0, len, size)` (masked rejection). Panics when `population` is empty or
/// `size > len` without replacement (callers check).
pub fn numpy_choice(
    rng: &mut LegacyRandomState,
    population: &[u32],
    size: usize,
    replace: bool,
) -> Vec<u32> {
    let n = population.len();
    assert!(n > 0, "choice from an empty population");
    if replace {
        (0..size)
            .map(|_| population[rng.random_interval(n as u64 - 1) as usize])
            .collect()
    } else {
        assert!(size <= n, "choice without replacement of {size} from {n}");
        let mut perm: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut perm);
        perm[..size].iter().map(|&i| population[i]).collect()
    }
}

/// numpy legacy `RandomState.choice(population)` (one element).
pub fn numpy_choice_one(rng: &mut LegacyRandomState, population: &[u32]) -> u32 {
    numpy_choice(rng, population, 1, true)[0]
}

/// Picks the VRT patches of one object.
///
/// `patch_w` is PaDT's `round(W/28)` of the (upscaled) image, used by `Structured` and
/// `Anchored`; `box_centre` is the centre of the object's box in patch units (`x = 1.5` is
/// the middle of the second column), used by `Anchored`.
pub fn pick_patches(
    rng: &mut LegacyRandomState,
    patches: &[u32],
    selection: PatchSelection,
    patch_w: u32,
    box_centre: (f64, f64),
) -> Vec<u32> {
    match selection {
        PatchSelection::Anchored => anchored_picks(patches, patch_w, box_centre),
        PatchSelection::All => patches.to_vec(),
        PatchSelection::Random { num } => numpy_choice(rng, patches, num, patches.len() < num),
        PatchSelection::Structured => {
            let pw = patch_w.max(1);
            let (xmin, xmax, ymin, ymax) = extent(patches, pw);
            let mut centre: Vec<u32> = patches
                .iter()
                .copied()
                .filter(|&p| {
                    let (x, y) = (p % pw, p / pw);
                    x != xmin && x != xmax && y != ymin && y != ymax
                })
                .collect();
            if centre.is_empty() {
                centre = patches.to_vec();
            }
            // Python evaluates the list left to right: centre, left, top, right, bottom.
            let mut picks = vec![numpy_choice_one(rng, &centre)];
            for side in side_sets(patches, pw, (xmin, xmax, ymin, ymax)) {
                picks.push(numpy_choice_one(rng, &side));
            }
            picks
        }
    }
}

/// The column and row range `(xmin, xmax, ymin, ymax)` of a non-empty patch set on a grid
/// `pw` patches wide.
fn extent(patches: &[u32], pw: u32) -> (u32, u32, u32, u32) {
    patches
        .iter()
        .fold((u32::MAX, 0, u32::MAX, 0), |(x0, x1, y0, y1), &p| {
            let (x, y) = (p % pw, p / pw);
            (x0.min(x), x1.max(x), y0.min(y), y1.max(y))
        })
}

/// The patches of the leftmost column, topmost row, rightmost column and bottommost row of a
/// non-empty patch set with [`extent`] `(xmin, xmax, ymin, ymax)` (in that order; each in
/// stored order), as `Structured` and `Anchored` pick from them.
fn side_sets(
    patches: &[u32],
    pw: u32,
    (xmin, xmax, ymin, ymax): (u32, u32, u32, u32),
) -> [Vec<u32>; 4] {
    let select = |keep: &dyn Fn(u32, u32) -> bool| -> Vec<u32> {
        patches
            .iter()
            .copied()
            .filter(|&p| keep(p % pw, p / pw))
            .collect()
    };
    [
        select(&|x, _| x == xmin),
        select(&|_, y| y == ymin),
        select(&|x, _| x == xmax),
        select(&|_, y| y == ymax),
    ]
}

/// `PatchSelection::Anchored`: centre, left, top, right, bottom, each the patch of its set
/// (all patches, then [`side_sets`]) nearest `box_centre` (squared distance between patch
/// centres and the box centre; the first in stored order on ties). `patches` must not be
/// empty.
fn anchored_picks(patches: &[u32], patch_w: u32, box_centre: (f64, f64)) -> Vec<u32> {
    let pw = patch_w.max(1);
    let (cx, cy) = box_centre;
    let distance = |p: u32| {
        let dx = (p % pw) as f64 + 0.5 - cx;
        let dy = (p / pw) as f64 + 0.5 - cy;
        dx * dx + dy * dy
    };
    let nearest = |set: &[u32]| -> u32 {
        set.iter()
            .copied()
            .min_by(|&a, &b| distance(a).total_cmp(&distance(b)))
            .expect("every set holds at least one patch")
    };
    let mut picks = vec![nearest(patches)];
    for side in side_sets(patches, pw, extent(patches, pw)) {
        picks.push(nearest(&side));
    }
    picks
}

/// The generator of one sample's picks: MT19937 seeded from `(seed, epoch, sample_index)`
/// through SplitMix64 (so neighbouring samples get unrelated streams).
pub fn sample_rng(seed: u64, epoch: u64, sample_index: u64) -> LegacyRandomState {
    let mut x = seed
        ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ sample_index.wrapping_mul(0xD1B5_4A32_D192_ED03);
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    LegacyRandomState::new((x ^ (x >> 32)) as u32)
}

/// One placeholder's object and the patches picked for it (text order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPick {
    /// Index into `record.objects`.
    pub object: usize,
    /// Picked patches (local indices), in VRT order.
    pub picks: Vec<u32>,
}

/// The completion of one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionTarget {
    /// The answer with VRT strings and the eos token (what PaDT tokenizes).
    pub text: String,
    /// The template's text pieces (`objects.len() + 1` of them; the last one ends with eos).
    pub texts: Vec<String>,
    /// Placeholders in text order with their picks.
    pub objects: Vec<ObjectPick>,
}

fn check_object(
    record: &Record,
    index: usize,
    merged: usize,
) -> Result<&RecordObject, TargetError> {
    let obj = record
        .objects
        .get(index)
        .ok_or(TargetError::MissingObject {
            record: record.id,
            index,
            objects: record.objects.len(),
        })?;
    if obj.patches.is_empty() {
        return Err(TargetError::NoPatches {
            record: record.id,
            index,
        });
    }
    if let Some(&patch) = obj.patches.iter().find(|&&p| p as usize >= merged) {
        return Err(TargetError::PatchOutOfGrid {
            record: record.id,
            index,
            patch,
            merged,
        });
    }
    Ok(obj)
}

fn checked_split(record: &Record) -> Result<SplitTemplate, TargetError> {
    if record.answer_template.is_empty() {
        return Err(TargetError::EmptyAnswer { record: record.id });
    }
    for (field, text) in [
        ("answer_template", &record.answer_template),
        ("prompt", &record.prompt),
    ] {
        if let Some(tok) = find_literal_vrt(text) {
            return Err(TargetError::LiteralVrt {
                record: record.id,
                field,
                token: tok.to_string(),
            });
        }
    }
    Ok(split_template(&record.answer_template))
}

/// Draws the picks of every placeholder of `record`, in text order.
///
/// `merged` = merged patches of the image (`t·gh·gw/4`), `patch_w` = `round(W/28)`; the grid
/// is `merged / patch_w` rows high.
pub fn draw_picks(
    record: &Record,
    rng: &mut LegacyRandomState,
    selection: PatchSelection,
    merged: usize,
    patch_w: u32,
) -> Result<Vec<ObjectPick>, TargetError> {
    let split = checked_split(record)?;
    let rows = (merged as u32 / patch_w.max(1)).max(1);
    split
        .objects
        .iter()
        .map(|&object| {
            let obj = check_object(record, object, merged)?;
            let [x1, y1, x2, y2] = obj.bbox;
            let box_centre = (
                (x1 + x2) / 2.0 * patch_w as f64,
                (y1 + y2) / 2.0 * rows as f64,
            );
            Ok(ObjectPick {
                object,
                picks: pick_patches(rng, &obj.patches, selection, patch_w, box_centre),
            })
        })
        .collect()
}

impl CompletionTarget {
    /// Builds the completion from given picks (one entry per placeholder, text order).
    /// Checks the template and that every pick is a patch inside the grid.
    pub fn from_picks(
        record: &Record,
        picks: Vec<ObjectPick>,
        merged: usize,
        eos_token: &str,
    ) -> Result<Self, TargetError> {
        let split = checked_split(record)?;
        if split.objects.len() != picks.len() {
            return Err(TargetError::BadPicks {
                record: record.id,
                reason: format!(
                    "{} placeholders but {} pick lists",
                    split.objects.len(),
                    picks.len()
                ),
            });
        }
        for (&object, pick) in split.objects.iter().zip(&picks) {
            check_object(record, object, merged)?;
            if pick.object != object {
                return Err(TargetError::BadPicks {
                    record: record.id,
                    reason: format!(
                        "picks for object {} where the text has {object}",
                        pick.object
                    ),
                });
            }
            if let Some(&p) = pick.picks.iter().find(|&&p| p as usize >= merged) {
                return Err(TargetError::PatchOutOfGrid {
                    record: record.id,
                    index: object,
                    patch: p,
                    merged,
                });
            }
        }
        let mut texts = split.texts;
        texts.last_mut().expect("n+1 pieces").push_str(eos_token);
        let mut text = texts[0].clone();
        for (pick, piece) in picks.iter().zip(&texts[1..]) {
            text.push_str(&vrt_string(&pick.picks));
            text.push_str(piece);
        }
        Ok(CompletionTarget {
            text,
            texts,
            objects: picks,
        })
    }

    /// Draws the picks and builds the completion.
    pub fn draw(
        record: &Record,
        rng: &mut LegacyRandomState,
        selection: PatchSelection,
        merged: usize,
        patch_w: u32,
        eos_token: &str,
    ) -> Result<Self, TargetError> {
        let picks = draw_picks(record, rng, selection, merged, patch_w)?;
        Self::from_picks(record, picks, merged, eos_token)
    }

    /// Token ids with local VRT ids (`V + p`): each text piece is tokenized on its own and the
    /// VRT ids are put in between. Equal to tokenizing [`Self::text`] with the VRT tokens
    /// added (added tokens are split out before BPE), without needing them in the tokenizer.
    pub fn token_ids(
        &self,
        tokenizer: &crate::tokenizer::PadtTokenizer,
    ) -> Result<Vec<u32>, crate::tokenizer::TokenizerError> {
        let v = tokenizer.embed_size();
        let mut ids = tokenizer.encode(&self.texts[0])?;
        for (pick, piece) in self.objects.iter().zip(&self.texts[1..]) {
            ids.extend(pick.picks.iter().map(|&p| v + p));
            ids.extend(tokenizer.encode(piece)?);
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Task;

    fn record(template: &str, patches: Vec<Vec<u32>>) -> Record {
        Record {
            id: 42,
            image: "x.jpg".into(),
            prompt: "p".into(),
            answer_template: template.into(),
            objects: patches
                .into_iter()
                .map(|p| RecordObject {
                    patches: p,
                    bbox: [0.0, 0.0, 1.0, 1.0],
                    iscrowd: 0,
                    area: 1.0,
                    area_is_int: false,
                    rle: None,
                    label: "a".into(),
                })
                .collect(),
            task: Task::Ovd,
        }
    }

    #[test]
    fn numpy_choice_matches_known_draws() {
        // From tokenize.jsonl: RandomState(5), first two completion objects.
        let mut rng = LegacyRandomState::new(5);
        let a = [
            3, 4, 5, 11, 12, 13, 14, 15, 20, 21, 22, 23, 24, 29, 30, 31, 32, 33, 39, 40, 41,
        ];
        assert_eq!(
            numpy_choice(&mut rng, &a, 5, false),
            vec![5, 33, 40, 41, 39]
        );
        assert_eq!(numpy_choice(&mut rng, &[46], 5, true), vec![46; 5]);
    }

    #[test]
    fn split_and_build() {
        let r = record("A (<|Obj_1|>, <|Obj_0|>).", vec![vec![1, 2], vec![3]]);
        let s = split_template(&r.answer_template);
        assert_eq!(s.objects, vec![1, 0]);
        assert_eq!(s.texts, vec!["A (", ", ", ")."]);
        let picks = vec![
            ObjectPick {
                object: 1,
                picks: vec![3, 3],
            },
            ObjectPick {
                object: 0,
                picks: vec![2],
            },
        ];
        let t = CompletionTarget::from_picks(&r, picks, 4, "<|im_end|>").unwrap();
        assert_eq!(t.text, "A (<|VRT_3|><|VRT_3|>, <|VRT_2|>).<|im_end|>");
    }

    #[test]
    fn structured_and_all_modes() {
        // 3x3 block in a grid of width 5: centre is 6; extremes are unique rows/cols.
        let patches = [0, 1, 2, 5, 6, 7, 10, 11, 12];
        let mut rng = LegacyRandomState::new(1);
        let p = pick_patches(
            &mut rng,
            &patches,
            PatchSelection::Structured,
            5,
            (0.0, 0.0),
        );
        assert_eq!(p[0], 6);
        assert!([0, 5, 10].contains(&p[1]));
        assert!([0, 1, 2].contains(&p[2]));
        assert!([2, 7, 12].contains(&p[3]));
        assert!([10, 11, 12].contains(&p[4]));
        // A single row: no centre, the centre falls back to any patch.
        let p = pick_patches(&mut rng, &[3, 4], PatchSelection::Structured, 5, (0.0, 0.0));
        assert_eq!(p.len(), 5);
        assert_eq!(
            pick_patches(&mut rng, &patches, PatchSelection::All, 5, (0.0, 0.0)),
            patches.to_vec()
        );
    }

    #[test]
    fn anchored_picks_follow_the_box_centre() {
        let mut rng = LegacyRandomState::new(1);
        let before = rng.clone().next_u32();
        // 2 x 2 patches (1, 2, 6, 7) of a grid 5 wide, box centre in patch 6's lower left.
        let p = pick_patches(
            &mut rng,
            &[1, 2, 6, 7],
            PatchSelection::Anchored,
            5,
            (1.3, 1.8),
        );
        assert_eq!(p, vec![6, 6, 1, 7, 6]);
        // No draws: the generator is untouched.
        assert_eq!(rng.next_u32(), before);
        // 3 x 3 block with the centre in the middle: the middle of every side.
        let block = [0, 1, 2, 5, 6, 7, 10, 11, 12];
        let p = pick_patches(&mut rng, &block, PatchSelection::Anchored, 5, (1.5, 1.5));
        assert_eq!(p, vec![6, 5, 1, 7, 11]);
        // A centre outside the object (an L shape missing patch 6): the nearest patch, the
        // first in raster order on a tie (1, 5, 7 and 11 are all one patch away).
        let l_shape = [0, 1, 2, 5, 7, 10, 11, 12];
        let p = pick_patches(&mut rng, &l_shape, PatchSelection::Anchored, 5, (1.5, 1.5));
        assert_eq!(p, vec![1, 5, 1, 7, 11]);
    }

    #[test]
    fn anchored_draw_uses_the_record_box() {
        // One object on a 4 x 4 grid covering patches 5, 6, 9, 10; its box centre
        // (0.45, 0.55) of the image lies in patch 9 (column 1, row 2).
        let mut r = record("<|Obj_0|>", vec![vec![5, 6, 9, 10]]);
        r.objects[0].bbox = [0.3, 0.4, 0.6, 0.7];
        let mut rng = LegacyRandomState::new(0);
        let picks = draw_picks(&r, &mut rng, PatchSelection::Anchored, 16, 4).unwrap();
        assert_eq!(picks[0].picks, vec![9, 9, 5, 10, 9]);
    }

    #[test]
    fn sample_rng_is_deterministic_and_varies() {
        let draw = |s, e, i| sample_rng(s, e, i).next_u32();
        assert_eq!(draw(1, 2, 3), draw(1, 2, 3));
        assert_ne!(draw(1, 2, 3), draw(1, 2, 4));
        assert_ne!(draw(1, 2, 3), draw(1, 3, 3));
        assert_ne!(draw(1, 2, 3), draw(2, 2, 3));
    }

    #[test]
    fn bad_records_are_named_errors() {
        let mut rng = LegacyRandomState::new(0);
        let sel = PatchSelection::default();
        let e =
            |r: &Record, rng: &mut LegacyRandomState| draw_picks(r, rng, sel, 10, 5).unwrap_err();
        assert_eq!(
            e(&record("", vec![]), &mut rng),
            TargetError::EmptyAnswer { record: 42 }
        );
        let err = e(&record("x <|VRT_9999|>", vec![]), &mut rng);
        assert!(matches!(
            err,
            TargetError::LiteralVrt {
                field: "answer_template",
                ..
            }
        ));
        assert!(err.to_string().contains("record 42"));
        assert!(matches!(
            e(&record("<|Obj_2|>", vec![vec![1]]), &mut rng),
            TargetError::MissingObject {
                index: 2,
                objects: 1,
                ..
            }
        ));
        assert!(matches!(
            e(&record("<|Obj_0|>", vec![vec![]]), &mut rng),
            TargetError::NoPatches { index: 0, .. }
        ));
        let err = e(&record("<|Obj_0|>", vec![vec![3, 10]]), &mut rng);
        assert_eq!(
            err,
            TargetError::PatchOutOfGrid {
                record: 42,
                index: 0,
                patch: 10,
                merged: 10
            }
        );
        // A template without placeholders is fine ("No objects ...").
        assert!(draw_picks(&record("None.", vec![]), &mut rng, sel, 10, 5)
            .unwrap()
            .is_empty());
    }
}
