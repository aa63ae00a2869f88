//! The committed demo folder (`data/demo`): it is exactly what `padt-make-demo --seed 42`
//! writes, its shards read back with the shard reader and hold the refs of the refer files,
//! and its model folder loads (config, model, tokenizer).

use clap::Parser;
use padt_cli::demo::refer::read;
use padt_cli::demo::{make_demo, DemoArgs};
use padt_data::shard::{ShardDataset, StoredImage};
use padt_data::sources::refcoco::{rec_answer, rec_prompt};
use padt_data::tokenizer::PadtTokenizer;
use padt_model::padt::{PadtConfig, PadtModel};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn committed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo")
}

/// The committed files (everything but the ignored `raw/`).
const COMMITTED: [&str; 14] = [
    "README.md",
    ".gitignore",
    "shards/train/manifest.json",
    "shards/train/shard-00000.parquet",
    "shards/train/shard-00001.parquet",
    "shards/val/manifest.json",
    "shards/val/shard-00000.parquet",
    "model/config.json",
    "model/tokenizer.json",
    "model/tokenizer_config.json",
    "model/chat_template.json",
    "model/preprocessor_config.json",
    "model/vocab.json",
    "model/merges.txt",
];

/// The command line the committed folder was written with (its README says so too).
fn default_args(out: &Path) -> DemoArgs {
    DemoArgs::parse_from([
        "padt-make-demo",
        "--seed",
        "42",
        "--out",
        out.to_str().unwrap(),
    ])
}

#[test]
fn committed_folder_is_what_the_generator_writes() {
    let d = tempfile::tempdir().unwrap();
    make_demo(&default_args(d.path())).unwrap();
    // No more shards than listed either.
    let extra = d.path().join("shards/train/shard-00002.parquet");
    assert!(
        !extra.exists(),
        "the generator writes a third train shard: list it"
    );
    for f in COMMITTED {
        let fresh = d.path().join(f);
        let have = committed().join(f);
        if !fresh.exists() {
            // Fewer shards than listed: the list must match the generator.
            panic!("the generator no longer writes {f}");
        }
        let (a, b) = (std::fs::read(&fresh).unwrap(), std::fs::read(&have));
        assert!(
            b.as_ref().is_ok_and(|b| *b == a),
            "data/demo/{f} differs from a fresh `padt-make-demo --seed 42` (regenerate it: \
             cargo run --release -p padt-cli --bin padt-make-demo -- --seed 42 --out data/demo)"
        );
    }
    assert!(!d.path().join("model/model.safetensors").exists());
}

#[test]
fn shards_read_back_and_hold_the_refs() {
    let d = tempfile::tempdir().unwrap();
    // The refer files are not committed: regenerate them to compare.
    make_demo(&default_args(d.path())).unwrap();
    let (instances, refs) = read(&d.path().join("raw/refer")).unwrap();
    let anns: BTreeMap<i64, _> = instances.annotations.iter().map(|a| (a.id, a)).collect();
    for split in ["train", "val"] {
        let ds = ShardDataset::open(&committed().join("shards").join(split)).unwrap();
        assert_eq!(ds.manifest().split, split);
        assert_eq!(ds.manifest().task, "refering");
        assert!(ds.manifest().skipped.is_empty());
        // One record per sentence of the split's refs, in the sentence order of each image.
        let mut expected: BTreeMap<i64, Vec<(String, i64)>> = BTreeMap::new();
        for r in refs.iter().filter(|r| r.split == split) {
            for s in &r.sentences {
                expected
                    .entry(r.image_id)
                    .or_default()
                    .push((s.sent.clone(), r.ann_id));
            }
        }
        let n_expected: usize = expected.values().map(Vec::len).sum();
        assert_eq!(ds.len() as usize, n_expected, "{split}");
        let mut got: BTreeMap<i64, Vec<(String, i64)>> = BTreeMap::new();
        for rec in ds.iter() {
            let rec = rec.unwrap();
            assert_eq!((rec.width, rec.height), (112, 112));
            let StoredImage::Bytes(png) = &rec.image else {
                panic!("image not embedded")
            };
            let img = image::load_from_memory(png).unwrap();
            assert_eq!((img.width(), img.height()), (112, 112));
            let r = &rec.record;
            assert_eq!(r.objects.len(), 1);
            let o = &r.objects[0];
            assert!(!o.patches.is_empty() && o.patches.iter().all(|&p| p < 16));
            assert_eq!(r.prompt, rec_prompt(&o.label));
            assert_eq!(r.answer_template, rec_answer(&o.label));
            // The object is the annotation the sentence belongs to.
            let (_, ann_id) = expected[&r.id]
                .iter()
                .find(|(s, _)| *s == o.label)
                .unwrap_or_else(|| panic!("{:?} is no sentence of image {}", o.label, r.id));
            let a = anns[ann_id];
            let b = a.bbox;
            let want = [
                b[0] / 112.0,
                b[1] / 112.0,
                (b[0] + b[2]) / 112.0,
                (b[1] + b[3]) / 112.0,
            ];
            assert_eq!(o.bbox, want);
            got.entry(r.id)
                .or_default()
                .push((o.label.clone(), *ann_id));
        }
        assert_eq!(got, expected, "{split}");
    }
}

#[test]
fn model_folder_loads_and_builds() {
    let dir = committed().join("model");
    let config = PadtConfig::from_file(dir.join("config.json")).unwrap();
    assert_eq!(config.qwen.hidden_size, 128);
    let vision = &config.qwen.vision_config;
    assert_eq!(config.decoder.hidden_size, vision.hidden_size);
    assert_eq!(
        config.decoder.hidden_size / config.decoder.num_heads,
        vision.hidden_size / vision.num_heads,
        "decoder head dim = ViT head dim"
    );
    type B = burn::backend::Flex;
    let model = PadtModel::<B>::new(&config, &Default::default());
    let params = burn::module::Module::num_params(&model);
    assert!((500_000..3_000_000).contains(&params), "{params}");

    let tok = PadtTokenizer::from_dir(&dir, config.qwen.vocab_size as u32, 0).unwrap();
    for sentence in [
        "the small blue square",
        "the leftmost yellow object",
        "the triangle on the right",
    ] {
        for text in [rec_prompt(sentence), rec_answer(sentence)] {
            let ids = tok.encode(&text).unwrap();
            assert!(
                !ids.is_empty() && ids.len() < 120,
                "{text}: {} tokens",
                ids.len()
            );
            assert!(ids.iter().all(|&i| i < config.qwen.vocab_size as u32));
            assert_eq!(tok.decode(&ids, false).unwrap(), text);
        }
    }
}
