//! `padt-preprocess inspect DIR`: what a shard folder holds (counts per task / source / split,
//! objects and patches per record, image sizes, estimated tokens per record). Images are not
//! read: the statistics come from the record columns.
//!
//! # Token estimate (per training sample)
//!
//! `image + prompt + completion` where
//! - image tokens = `(h/28) * (w/28)` for `(h, w)` = Qwen2.5-VL `smart_resize(H, W, 28,
//!   min_pixels 3136, max_pixels 12845056)` (PaDT's processor settings) after PaDT's upscale of
//!   images with a side under 28 px; exact;
//! - prompt tokens = 21 (the chat template around one image and the prompt: system turn, role
//!   tags, vision start/end; counted on the fixture tokenizer) + `ceil(bytes(prompt) / 4)`;
//! - completion tokens = `ceil(bytes(answer_template without the <|Obj_k|> markers) / 4)` + 5
//!   VRTs per object marker (PaDT's default `random_select_patch_num`) + 1 (`<|im_end|>`).
//!
//! The `bytes / 4` text estimate is the usual rule of thumb for English BPE; it is not a
//! tokenizer count (Qwen's tokenizer gives 5 tokens for the 27-byte RIC prompt, the estimate 7).

use anyhow::Context;
use clap::Args;
use padt_data::image::{padt_upscale_size, smart_resize};
use padt_data::shard::ShardDataset;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Options of `inspect`.
#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// The shard folder.
    pub dir: PathBuf,
    /// Print the statistics as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Chat-template tokens around one image and the prompt (fixture tokenizer: 114 ids for the
/// RIC prompt case = 88 image pads + 5 prompt tokens + 21).
pub const TEMPLATE_TOKENS: u64 = 21;
/// VRTs per `<|Obj_k|>` in a training target.
pub const VRTS_PER_OBJECT: u64 = 5;
/// PaDT's processor `min_pixels`.
pub const MIN_PIXELS: u64 = 3136;
/// PaDT's processor `max_pixels`.
pub const MAX_PIXELS: u64 = 12_845_056;

/// Merged image tokens of an image of `width x height` as PaDT feeds it to Qwen2.5-VL; `None`
/// when smart_resize refuses the size (aspect ratio over 200).
pub fn image_tokens(width: u32, height: u32) -> Option<u64> {
    let (w, h) = padt_upscale_size(width as usize, height as usize)
        .unwrap_or((width as usize, height as usize));
    let (rh, rw) = smart_resize(h, w, 28, MIN_PIXELS, MAX_PIXELS).ok()?;
    Some((rh / 28) as u64 * (rw / 28) as u64)
}

/// Estimated text tokens of a record (module docs).
pub fn text_tokens(prompt: &str, answer_template: &str, n_objects: usize) -> u64 {
    let mut answer = answer_template.to_string();
    let mut markers = 0u64;
    for k in 0..n_objects {
        let marker = format!("<|Obj_{k}|>");
        let n = answer.matches(&marker).count() as u64;
        markers += n;
        answer = answer.replace(&marker, "");
    }
    TEMPLATE_TOKENS
        + (prompt.len() as u64).div_ceil(4)
        + (answer.len() as u64).div_ceil(4)
        + VRTS_PER_OBJECT * markers
        + 1
}

/// min / mean / max of a series.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stat {
    /// Smallest value.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Largest value.
    pub max: f64,
    /// Number of values.
    pub n: u64,
    #[serde(skip)]
    sum: f64,
}

impl Stat {
    fn add(&mut self, v: f64) {
        if self.n == 0 {
            self.min = v;
            self.max = v;
        }
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.n += 1;
        self.sum += v;
        self.mean = self.sum / self.n as f64;
    }
}

impl std::fmt::Display for Stat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.n == 0 {
            return write!(f, "-");
        }
        write!(
            f,
            "min {} / mean {:.2} / max {}",
            self.min, self.mean, self.max
        )
    }
}

/// What `inspect` reports.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Inspection {
    /// Source kind.
    pub source: String,
    /// Split.
    pub split: String,
    /// Image mode.
    pub image_mode: String,
    /// Shards.
    pub shards: usize,
    /// Records.
    pub records: u64,
    /// Records per task (counted from the records).
    pub records_per_task: BTreeMap<String, u64>,
    /// Records per `(source, split, task)`.
    pub records_per_source_split_task: BTreeMap<String, u64>,
    /// Distinct images (by file name).
    pub distinct_images: u64,
    /// Objects per record.
    pub objects_per_record: Stat,
    /// Patches per object.
    pub patches_per_object: Stat,
    /// Patches per record (all objects).
    pub patches_per_record: Stat,
    /// Objects without an RLE mask.
    pub objects_without_rle: u64,
    /// Image width in pixels.
    pub image_width: Stat,
    /// Image height in pixels.
    pub image_height: Stat,
    /// The most frequent image sizes `WxH` and their record counts (top 5).
    pub common_image_sizes: Vec<(String, u64)>,
    /// Image tokens per record (exact).
    pub image_tokens_per_record: Stat,
    /// Estimated total tokens per training sample (module docs).
    pub estimated_tokens_per_record: Stat,
    /// Records whose size smart_resize refuses.
    pub records_with_unusable_image_size: u64,
    /// The manifest's drop counters.
    pub drop_counts: BTreeMap<String, u64>,
}

/// Computes the inspection of a shard folder.
pub fn inspect(ds: &ShardDataset) -> anyhow::Result<Inspection> {
    let m = ds.manifest();
    let mut ins = Inspection {
        source: m.source.kind.clone(),
        split: m.split.clone(),
        image_mode: m.image_mode.as_str().to_string(),
        shards: m.shards.len(),
        records: m.total_records,
        drop_counts: m.drop_counts.clone(),
        ..Default::default()
    };
    let mut images = std::collections::HashSet::new();
    let mut sizes: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    for k in 0..m.shards.len() {
        let metas = ds
            .read_shard_meta(k)
            .with_context(|| format!("reading shard {}", m.shards[k].file))?;
        for meta in metas {
            let r = &meta.record;
            *ins.records_per_task
                .entry(r.task.as_str().to_string())
                .or_insert(0) += 1;
            *ins.records_per_source_split_task
                .entry(format!("{}/{}/{}", m.source.kind, m.split, r.task.as_str()))
                .or_insert(0) += 1;
            images.insert(r.image.clone());
            ins.objects_per_record.add(r.objects.len() as f64);
            let mut patches = 0usize;
            for o in &r.objects {
                ins.patches_per_object.add(o.patches.len() as f64);
                patches += o.patches.len();
                if o.rle.is_none() {
                    ins.objects_without_rle += 1;
                }
            }
            ins.patches_per_record.add(patches as f64);
            ins.image_width.add(meta.width as f64);
            ins.image_height.add(meta.height as f64);
            *sizes.entry((meta.width, meta.height)).or_insert(0) += 1;
            match image_tokens(meta.width, meta.height) {
                Some(img) => {
                    ins.image_tokens_per_record.add(img as f64);
                    let text = text_tokens(&r.prompt, &r.answer_template, r.objects.len());
                    ins.estimated_tokens_per_record.add((img + text) as f64);
                }
                None => ins.records_with_unusable_image_size += 1,
            }
        }
    }
    ins.distinct_images = images.len() as u64;
    let mut sizes: Vec<((u32, u32), u64)> = sizes.into_iter().collect();
    sizes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ins.common_image_sizes = sizes
        .into_iter()
        .take(5)
        .map(|((w, h), n)| (format!("{w}x{h}"), n))
        .collect();
    Ok(ins)
}

/// Runs `inspect`.
pub fn run(a: InspectArgs) -> anyhow::Result<()> {
    let ds = ShardDataset::open(&a.dir)?;
    let ins = inspect(&ds)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&ins)?);
        return Ok(());
    }
    let m = ds.manifest();
    println!("folder:            {}", a.dir.display());
    println!(
        "format:            {} v{} (written by {} {})",
        m.format, m.format_version, m.tool, m.tool_version
    );
    println!(
        "source:            {} {}",
        m.source.kind,
        serde_json::to_string(&m.source.options)?
    );
    println!("split:             {}", ins.split);
    println!("image mode:        {}", ins.image_mode);
    println!(
        "records:           {} in {} shards (source records {}, skipped {})",
        ins.records,
        ins.shards,
        m.source_records,
        m.skipped.len()
    );
    for (k, n) in &ins.records_per_source_split_task {
        println!("  {k}: {n}");
    }
    println!("distinct images:   {}", ins.distinct_images);
    println!("objects/record:    {}", ins.objects_per_record);
    println!("patches/object:    {}", ins.patches_per_object);
    println!("patches/record:    {}", ins.patches_per_record);
    println!("objects w/o rle:   {}", ins.objects_without_rle);
    println!("image width:       {}", ins.image_width);
    println!("image height:      {}", ins.image_height);
    println!(
        "common sizes:      {}",
        ins.common_image_sizes
            .iter()
            .map(|(s, n)| format!("{s} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("image tokens:      {}", ins.image_tokens_per_record);
    println!(
        "tokens/sample:     {} (estimate: exact image tokens + ~bytes/4 text + 5 VRTs per object)",
        ins.estimated_tokens_per_record
    );
    if ins.records_with_unusable_image_size > 0 {
        println!(
            "unusable sizes:    {} records (aspect ratio over 200)",
            ins.records_with_unusable_image_size
        );
    }
    if !ins.drop_counts.is_empty() {
        println!("counters:");
        for (k, n) in &ins.drop_counts {
            println!("  {k}: {n}");
        }
    }
    Ok(())
}
