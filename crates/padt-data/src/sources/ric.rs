//! RIC (referring image captioning) COCO JSON with `<box_id: N/>` caption markup → PaDT
//! records, as `process_ric.py` writes them (padt-reference.md §5.5, fixtures README "RIC").
//!
//! Public API: [`RicOptions`], [`process_ric`], [`repair_caption_tags`].
//!
//! For each image (JSON order) and each of its `captions`:
//! - a caption not ending in `.` or `"` is dropped;
//! - the markup is repaired in four `str.replace` passes ([`repair_caption_tags`]), quirks
//!   included: `str.replace` replaces every occurrence, so an unterminated tag whose id also
//!   has a correct tag turns that tag into `<box_id: N/>>`;
//! - the caption is split at `<box_id:\s*\d+/?>`; each tag whose annotation exists, belongs to
//!   the image, has a segmentation and keeps a patch (uint8 path, `>=`) becomes `<|Obj_k|>`;
//!   any other tag is deleted with its `, ` or ` (…)` context (PaDT's exact string surgery);
//! - leftover `(box_id: …)` groups are removed by PaDT's final regex;
//! - prompt `Please describe this image.`, objects with `label: ""`, task `ric`.

use crate::patches::{foreground_patches, PatchRule};
use crate::record::{ImageData, Record, RecordObject, SourceItem, SourceOutput, Task};
use crate::sources::coco::{annotation_rle, padt_bbox, padt_grid, rle_json, CocoDataset};
use crate::sources::error::SourceError;
use rayon::prelude::*;
use regex::Regex;
use std::path::PathBuf;
use std::sync::LazyLock;

/// The RIC prompt.
pub const RIC_PROMPT: &str = "Please describe this image.";

/// Options of the RIC source.
#[derive(Debug, Clone)]
pub struct RicOptions {
    /// `ric_instances_{train,val}2017.json`.
    pub annotations: PathBuf,
    /// The COCO image folder; records point at `images/<file_name>`.
    pub images_dir: PathBuf,
}

static BARE_GROUP: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(\(\d+(,\s*\d+)*\))").unwrap());
static DIGITS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(\d+)").unwrap());
static JUNK_BEFORE_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(<box_id:\s*[^>\d]+(\d+)/?>)").unwrap());
static MULTI_ID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(<box_id:\s*[^>\d]*\d+/?(,\s*\d+/?)+>)").unwrap());
/// PaDT's `(<box_id:\s*[^>\d]*(\d+)/(?!>))` without the lookahead, which is checked by hand.
static UNTERMINATED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(<box_id:\s*[^>\d]*(\d+)/)").unwrap());
static TAG: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(<box_id:\s*(\d+)/?>)").unwrap());
static LEFTOVER_GROUP: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\s*\(<?box_id:[^>\),<]+>?(, <?box_id:[^>\),<]+>?)*\)").unwrap());

/// The four repair passes of `process_ric.py` on one caption. `image_ann_ids` are the
/// annotation ids of the image (`coco.getAnnIds(imgIds=[img_id])`), used by the first pass:
/// bare `(N, M)` groups get a tag for each number that is an ann id of the image.
pub fn repair_caption_tags(caption: &str, image_ann_ids: &[i64]) -> String {
    let mut caption = caption.to_string();
    // 1. `(123, 456)` → `(<box_id: 123/>, <box_id: 456/>)` for ann ids of this image.
    let groups: Vec<String> = BARE_GROUP
        .find_iter(&caption)
        .map(|m| m.as_str().to_string())
        .collect();
    for group in groups {
        let mut replaced = group.clone();
        for number in DIGITS.find_iter(&group) {
            let number = number.as_str();
            if number
                .parse::<i64>()
                .is_ok_and(|id| image_ann_ids.contains(&id))
            {
                replaced = replaced.replace(number, &format!("<box_id: {number}/>"));
            }
        }
        caption = caption.replace(&group, &replaced);
    }
    // 2. `<box_id: cup 2001/>` → `<box_id: 2001/>`.
    let junk: Vec<(String, String)> = JUNK_BEFORE_ID
        .captures_iter(&caption)
        .map(|c| (c[1].to_string(), c[2].to_string()))
        .collect();
    for (whole, id) in junk {
        caption = caption.replace(&whole, &format!("<box_id: {id}/>"));
    }
    // 3. `<box_id: 1/, 2/>` / `<box_id: 1,2>` → `<box_id: 1/>, <box_id: 2/>`.
    let multi: Vec<String> = MULTI_ID
        .find_iter(&caption)
        .map(|m| m.as_str().to_string())
        .collect();
    for whole in multi {
        let tags: Vec<String> = DIGITS
            .find_iter(&whole)
            .map(|d| format!("<box_id: {}/>", d.as_str()))
            .collect();
        caption = caption.replace(&whole, &tags.join(", "));
    }
    // 4. `<box_id: 5/` not followed by `>` → `<box_id: 5/>` (every occurrence, see module docs).
    // A candidate whose lookahead fails ends where any overlapping candidate would end, so
    // filtering the leftmost-first matches equals Python's scan.
    let unterminated: Vec<(String, String)> = UNTERMINATED
        .captures_iter(&caption)
        .filter(|c| !caption[c.get(0).unwrap().end()..].starts_with('>'))
        .map(|c| (c[1].to_string(), c[2].to_string()))
        .collect();
    for (whole, id) in unterminated {
        caption = caption.replace(&whole, &format!("<box_id: {id}/>"));
    }
    caption
}

/// `process_ric.py`'s deletion of a tag from the caption built so far: drops a preceding
/// `", "`, or a ` (` together with the following `)`. (With neither, the text after the tag
/// is lost, as in PaDT.)
fn delete_tag(new_caption: &mut String, part: &str) {
    if new_caption.ends_with(", ") {
        new_caption.truncate(new_caption.len() - 2);
        new_caption.push_str(part);
    } else if new_caption.ends_with('(') {
        if let Some(rest) = part.strip_prefix(')') {
            // `new_caption[:-2] + caption_part[1:]`: drop the `(` and the character before it.
            drop_last_chars(new_caption, 2);
            new_caption.push_str(rest);
        } else {
            new_caption.push_str(skip_chars(part, 2));
        }
    }
}

fn drop_last_chars(s: &mut String, n: usize) {
    for _ in 0..n {
        s.pop();
    }
}

fn skip_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[i..],
        None => "",
    }
}

/// Runs `process_ric.py`'s `prepare_ric_annotations_with_api` on one RIC file.
///
/// Counters: `images_total`, `captions_total`, `captions_dropped_no_final_period_or_quote`,
/// `box_tags_removed_no_patch`, `box_tags_removed_unknown_annotation`,
/// `box_tags_removed_other_image`, `box_tags_removed_no_segmentation`,
/// `box_tags_removed_invalid_segmentation` (the last four are PaDT's exception path),
/// `captions_autofixed_leftover_groups`, `records`, `objects_kept`, plus
/// `images_skipped_no_captions`, `images_skipped_side_lt_14`, `records_skipped_image_missing`.
pub fn process_ric(opts: &RicOptions) -> Result<SourceOutput, SourceError> {
    let dataset = CocoDataset::load(&opts.annotations, false)?;
    let per_image: Vec<SourceOutput> = dataset
        .images
        .par_iter()
        .enumerate()
        .map(|(img_idx, _)| process_image(&dataset, img_idx, opts))
        .collect();
    let mut out = SourceOutput::default();
    out.count("images_total", dataset.images.len() as u64);
    for part in per_image {
        out.items.extend(part.items);
        for (reason, n) in part.counts {
            out.count(&reason, n);
        }
    }
    Ok(out)
}

fn process_image(dataset: &CocoDataset, img_idx: usize, opts: &RicOptions) -> SourceOutput {
    let mut out = SourceOutput::default();
    let img = &dataset.images[img_idx];
    let Some(captions) = &img.captions else {
        out.count("images_skipped_no_captions", 1);
        return out;
    };
    let grid = padt_grid(img.height, img.width);
    if grid.is_none() {
        out.count("images_skipped_side_lt_14", 1);
        return out;
    }
    let image_path = opts.images_dir.join(&img.file_name);
    let image_exists = image_path.is_file();
    let image_ann_ids: Vec<i64> = dataset.img_to_anns[img_idx]
        .iter()
        .map(|&a| dataset.annotations[a].id)
        .collect();
    for caption in captions {
        out.count("captions_total", 1);
        if !(caption.ends_with('.') || caption.ends_with('"')) {
            out.count("captions_dropped_no_final_period_or_quote", 1);
            continue;
        }
        let caption = repair_caption_tags(caption, &image_ann_ids);
        let ids: Vec<&str> = TAG
            .captures_iter(&caption)
            .map(|c| c.get(2).unwrap().as_str())
            .collect();
        let parts: Vec<&str> = TAG.split(&caption).collect();
        let mut new_caption = parts[0].to_string();
        let mut objects: Vec<RecordObject> = Vec::new();
        for (id, part) in ids.iter().zip(&parts[1..]) {
            match tag_object(dataset, img_idx, id) {
                Ok(object) => {
                    new_caption.push_str(&format!("<|Obj_{}|>", objects.len()));
                    new_caption.push_str(part);
                    objects.push(object);
                    out.count("objects_kept", 1);
                }
                Err(reason) => {
                    out.count(reason, 1);
                    delete_tag(&mut new_caption, part);
                }
            }
        }
        let fixed = LEFTOVER_GROUP.replace_all(&new_caption, "").into_owned();
        if fixed.len() != new_caption.len() {
            out.count("captions_autofixed_leftover_groups", 1);
        }
        if !image_exists {
            out.count("records_skipped_image_missing", 1);
            continue;
        }
        out.count("records", 1);
        out.items.push(SourceItem {
            record: Record {
                id: img.id,
                image: img.file_name.clone(),
                prompt: RIC_PROMPT.to_string(),
                answer_template: fixed,
                objects,
                task: Task::Ric,
            },
            image: ImageData::File(image_path.clone()),
            width: img.width,
            height: img.height,
        });
    }
    out
}

/// The object of one tag, or the counter name of why PaDT deletes the tag.
fn tag_object(
    dataset: &CocoDataset,
    img_idx: usize,
    id: &str,
) -> Result<RecordObject, &'static str> {
    let img = &dataset.images[img_idx];
    let ann = id
        .parse::<i64>()
        .ok()
        .and_then(|id| dataset.ann_index.get(&id))
        .map(|&a| &dataset.annotations[a])
        .ok_or("box_tags_removed_unknown_annotation")?;
    if ann.image_id != img.id {
        return Err("box_tags_removed_other_image");
    }
    let seg = ann
        .segmentation
        .as_ref()
        .ok_or("box_tags_removed_no_segmentation")?;
    let (gh, gw) = padt_grid(img.height, img.width).ok_or("box_tags_removed_no_patch")?;
    let rle = annotation_rle(seg, img.height, img.width)
        .map_err(|_| "box_tags_removed_invalid_segmentation")?;
    let patches = foreground_patches(&rle, PatchRule::CocoU8);
    if patches.is_empty() {
        return Err("box_tags_removed_no_patch");
    }
    Ok(RecordObject {
        patches,
        bbox: padt_bbox(ann.bbox, img.width, img.height, gw, gh),
        iscrowd: ann.iscrowd,
        area: ann.area.as_f64().unwrap_or(f64::NAN),
        area_is_int: !ann.area.is_f64(),
        rle: Some(rle_json(&rle)),
        label: String::new(),
    })
}
