//! `padt-preprocess verify DIR`: checks a shard folder end to end.
//!
//! - every shard's size and sha256 match the manifest, and its record count;
//! - every image decodes (the training decoder, `padt_data::image::decode_image`) and has the
//!   stored width and height;
//! - every RLE decodes, has the image's `[H, W]`, and the foreground patches recomputed from it
//!   (`padt_data::patches`, the COCO/RIC u8 rule for `ovd`/`ric`, the RefCOCO f32 rule for
//!   `refering`) equal the stored patches;
//! - objects without an RLE (COCO boxes without segmentation) have patches inside the grid, in
//!   ascending order.

use anyhow::bail;
use clap::Args;
use padt_core::Rle;
use padt_data::image::{decode_image, DecodeOptions};
use padt_data::patches::{foreground_patches, grid_for, PatchRule};
use padt_data::record::Task;
use padt_data::shard::{ShardDataset, StoredRecord};
use rayon::prelude::*;
use std::path::PathBuf;

/// Options of `verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// The shard folder.
    pub dir: PathBuf,
    /// Print at most this many problems (all are counted).
    #[arg(long, default_value_t = 20)]
    pub max_problems: usize,
}

/// The patch rule PaDT used for a task's records.
pub fn rule_for(task: Task) -> PatchRule {
    match task {
        Task::Refering => PatchRule::RefcocoF32,
        Task::Ovd | Task::Ric => PatchRule::CocoU8,
    }
}

/// Problems of one record (empty when it is fine).
pub fn check_record(r: &StoredRecord) -> Vec<String> {
    let mut problems = Vec::new();
    match r.image_bytes() {
        Err(e) => problems.push(format!("image: {e}")),
        Ok(bytes) => match decode_image(&bytes, &r.record.image, &DecodeOptions::default()) {
            Err(e) => problems.push(format!("image does not decode: {e}")),
            Ok(img) => {
                if (img.rgb.width, img.rgb.height) != (r.width as usize, r.height as usize) {
                    problems.push(format!(
                        "image is {}x{}, the record says {}x{}",
                        img.rgb.width, img.rgb.height, r.width, r.height
                    ));
                }
            }
        },
    }
    let (gh, gw) = grid_for(r.width, r.height);
    let cells = gh as u64 * gw as u64;
    for (k, o) in r.record.objects.iter().enumerate() {
        if o.patches.windows(2).any(|w| w[0] >= w[1]) {
            problems.push(format!("object {k}: patches are not strictly ascending"));
        }
        if o.patches.iter().any(|&p| p as u64 >= cells) {
            problems.push(format!(
                "object {k}: a patch index is outside the {gh}x{gw} grid"
            ));
        }
        let Some(rle) = &o.rle else { continue };
        if rle.size != [r.height, r.width] {
            problems.push(format!(
                "object {k}: rle size {:?} differs from the image's [{}, {}]",
                rle.size, r.height, r.width
            ));
            continue;
        }
        let decoded = match Rle::from_string(&rle.counts, rle.size[0], rle.size[1]) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("object {k}: rle does not decode: {e}"));
                continue;
            }
        };
        let recomputed = foreground_patches(&decoded, rule_for(r.record.task));
        if recomputed != o.patches {
            let only_stored = o.patches.iter().filter(|p| !recomputed.contains(p)).count();
            let only_new = recomputed.iter().filter(|p| !o.patches.contains(p)).count();
            problems.push(format!(
                "object {k}: stored patches ({}) differ from the ones recomputed from the rle ({}): \
                 {only_stored} only stored, {only_new} only recomputed",
                o.patches.len(),
                recomputed.len()
            ));
        }
    }
    problems
}

/// Runs `verify`.
pub fn run(a: VerifyArgs) -> anyhow::Result<()> {
    let ds = ShardDataset::open(&a.dir)?;
    let m = ds.manifest();
    let mut problems: Vec<String> = Vec::new();
    let mut checked = 0u64;
    for k in 0..m.shards.len() {
        let file = &m.shards[k].file;
        let records = match ds.read_shard(k) {
            Ok(r) => r,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        checked += records.len() as u64;
        let found: Vec<(usize, Vec<String>)> = records
            .par_iter()
            .enumerate()
            .map(|(row, r)| (row, check_record(r)))
            .filter(|(_, p)| !p.is_empty())
            .collect();
        for (row, ps) in found {
            let r = &records[row];
            for p in ps {
                problems.push(format!(
                    "{file} row {row} (id {}, image {}): {p}",
                    r.record.id, r.record.image
                ));
            }
        }
    }
    for p in problems.iter().take(a.max_problems) {
        eprintln!("{p}");
    }
    if problems.len() > a.max_problems {
        eprintln!("... and {} more", problems.len() - a.max_problems);
    }
    if !problems.is_empty() {
        bail!(
            "{}: {} problem(s) in {} checked records",
            a.dir.display(),
            problems.len(),
            checked
        );
    }
    println!(
        "{}: OK ({} records in {} shards: checksums, images, RLEs and patches)",
        a.dir.display(),
        checked,
        m.shards.len()
    );
    Ok(())
}
