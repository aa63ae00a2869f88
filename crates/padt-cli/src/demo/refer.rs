//! The demo scenes in the refer layout `padt-preprocess refcoco` reads: `instances.json`
//! (COCO images, polygon annotations, the three shape categories) and `refs(unc).p` (a
//! protocol-2 pickle of ref dicts, as the refer toolkit's Python 2 files are), plus the PNG
//! images.
//!
//! The annotations carry two extra keys the refer reader ignores, `colour` and `size`, so a
//! test can check each sentence against the scene without the pixels.

use super::expression::{unambiguous_expressions, Expression};
use super::scene::{generate_scene, Scene, SceneStyle, Shape, SplitMix64};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// First image id (train images come first, then val).
pub const FIRST_IMAGE_ID: i64 = 1;

/// A `images` entry of `instances.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageEntry {
    pub id: i64,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
}

/// An `annotations` entry of `instances.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnnotationEntry {
    pub id: i64,
    pub image_id: i64,
    pub category_id: i64,
    pub segmentation: Vec<Vec<f64>>,
    pub area: f64,
    pub bbox: [f64; 4],
    pub iscrowd: i64,
    /// Demo extra: `red`, `green`, `blue` or `yellow`.
    pub colour: String,
    /// Demo extra: `small` or `large`.
    pub size: String,
}

/// A `categories` entry of `instances.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CategoryEntry {
    pub id: i64,
    pub name: String,
    pub supercategory: String,
}

/// `instances.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instances {
    pub images: Vec<ImageEntry>,
    pub annotations: Vec<AnnotationEntry>,
    pub categories: Vec<CategoryEntry>,
}

/// One sentence of a ref (the refer toolkit's keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefSentence {
    pub tokens: Vec<String>,
    pub raw: String,
    pub sent_id: i64,
    pub sent: String,
}

/// One ref of `refs(unc).p` (the refer toolkit's keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefEntry {
    pub sent_ids: Vec<i64>,
    pub file_name: String,
    pub ann_id: i64,
    pub ref_id: i64,
    pub image_id: i64,
    pub split: String,
    pub sentences: Vec<RefSentence>,
    pub category_id: i64,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct ReferOptions {
    /// Seed of the scene and sentence draws.
    pub seed: u64,
    /// Images of the `train` split.
    pub train_images: usize,
    /// Images of the `val` split.
    pub val_images: usize,
    /// Different sentences per train ref (at most; val refs get one).
    pub train_sentences_per_ref: usize,
    /// Background and object sizes.
    pub style: SceneStyle,
}

/// The generated refer dataset, in memory.
pub struct ReferDataset {
    pub instances: Instances,
    pub refs: Vec<RefEntry>,
    /// `(file_name, png bytes)` per image.
    pub pngs: Vec<(String, Vec<u8>)>,
    /// Objects without any unambiguous expression (no ref written for them).
    pub objects_without_ref: usize,
}

/// Draws `n` distinct indices below `len` (fewer when `len < n`), in draw order.
fn pick_distinct(rng: &mut SplitMix64, len: usize, n: usize) -> Vec<usize> {
    let mut pool: Vec<usize> = (0..len).collect();
    let mut out = Vec::new();
    while out.len() < n && !pool.is_empty() {
        out.push(pool.swap_remove(rng.below(pool.len() as u64) as usize));
    }
    out
}

/// Generates the scenes, annotations and refs.
pub fn generate(opts: &ReferOptions) -> ReferDataset {
    let mut rng = SplitMix64::new(opts.seed);
    let mut instances = Instances {
        images: Vec::new(),
        annotations: Vec::new(),
        categories: Shape::ALL
            .iter()
            .map(|s| CategoryEntry {
                id: s.category_id(),
                name: s.name().into(),
                supercategory: "shape".into(),
            })
            .collect(),
    };
    let mut refs = Vec::new();
    let mut pngs = Vec::new();
    let mut objects_without_ref = 0;
    let (mut next_ref, mut next_sent) = (1i64, 1i64);
    let total = opts.train_images + opts.val_images;
    for n in 0..total {
        let (split, sentences_per_ref) = if n < opts.train_images {
            ("train", opts.train_sentences_per_ref.max(1))
        } else {
            ("val", 1)
        };
        let image_id = FIRST_IMAGE_ID + n as i64;
        let scene: Scene = generate_scene(&mut rng, &opts.style);
        let file_name = format!("demo_{image_id:06}.png");
        instances.images.push(ImageEntry {
            id: image_id,
            file_name: file_name.clone(),
            width: scene.width,
            height: scene.height,
        });
        for (k, o) in scene.objects.iter().enumerate() {
            let ann_id = image_id * 10 + k as i64;
            instances.annotations.push(AnnotationEntry {
                id: ann_id,
                image_id,
                category_id: o.shape.category_id(),
                segmentation: vec![o.polygon.clone()],
                area: o.area as f64,
                bbox: o.bbox,
                iscrowd: 0,
                colour: o.colour.name().into(),
                size: o.size.name().into(),
            });
            let candidates: Vec<Expression> = unambiguous_expressions(&scene.objects, k);
            if candidates.is_empty() {
                objects_without_ref += 1;
                continue;
            }
            let sentences: Vec<RefSentence> =
                pick_distinct(&mut rng, candidates.len(), sentences_per_ref)
                    .into_iter()
                    .map(|i| {
                        let sent = candidates[i].sentence(&scene.objects);
                        let s = RefSentence {
                            tokens: sent.split(' ').map(str::to_string).collect(),
                            raw: sent.clone(),
                            sent_id: next_sent,
                            sent,
                        };
                        next_sent += 1;
                        s
                    })
                    .collect();
            refs.push(RefEntry {
                sent_ids: sentences.iter().map(|s| s.sent_id).collect(),
                file_name: format!("{}_{ann_id}.png", file_name.trim_end_matches(".png")),
                ann_id,
                ref_id: next_ref,
                image_id,
                split: split.into(),
                sentences,
                category_id: o.shape.category_id(),
            });
            next_ref += 1;
        }
        pngs.push((file_name, scene.png()));
    }
    ReferDataset {
        instances,
        refs,
        pngs,
        objects_without_ref,
    }
}

/// Writes `refer_dir/instances.json`, `refer_dir/refs(unc).p` and `images_dir/<file_name>`.
pub fn write(data: &ReferDataset, refer_dir: &Path, images_dir: &Path) -> anyhow::Result<()> {
    for dir in [refer_dir, images_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_vec(&data.instances).expect("instances serialise");
    write_atomic(&refer_dir.join("instances.json"), &json)?;
    let pickle = serde_pickle::to_vec(&data.refs, serde_pickle::SerOptions::new().proto_v2())
        .context("pickling the refs")?;
    write_atomic(&refer_dir.join("refs(unc).p"), &pickle)?;
    // Intermediate files (the shards embed them): plain writes, no fsync per image.
    for (name, png) in &data.pngs {
        let p = images_dir.join(name);
        std::fs::write(&p, png).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// Reads `instances.json` and `refs(unc).p` back (for checks).
pub fn read(refer_dir: &Path) -> anyhow::Result<(Instances, Vec<RefEntry>)> {
    let p = refer_dir.join("instances.json");
    let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    let instances: Instances =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", p.display()))?;
    let p = refer_dir.join("refs(unc).p");
    let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    let refs: Vec<RefEntry> =
        serde_pickle::from_slice(&bytes, serde_pickle::DeOptions::new().decode_strings())
            .with_context(|| format!("unpickling {}", p.display()))?;
    Ok((instances, refs))
}

/// Writes a file through a temporary name in the same folder, so no half-written file is left.
pub fn write_atomic(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    padt_data::shard::write_file_atomic(path, contents)
        .with_context(|| format!("writing {}", path.display()))
}
