//! `padt-make-demo` is deterministic: the same options give the same bytes in every file, in
//! any output folder; another seed gives other data.

use padt_cli::demo::{make_demo, DemoArgs};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn args(out: &Path, seed: u64) -> DemoArgs {
    DemoArgs {
        seed,
        out: out.to_path_buf(),
        train_images: 60,
        val_images: 12,
        train_sentences_per_ref: 2,
        shard_size: 40,
        background: padt_cli::demo::scene::Background::Ramp,
        small_side: (16, 22),
        large_side: (32, 42),
        ramp_swing: 30,
        weights: true,
    }
}

/// Every file under `dir` (relative path → bytes).
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn same_seed_same_bytes_other_seed_other_data() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    // Different folder depths: nothing may depend on the output path.
    let b_out = b.path().join("nested").join("demo");
    make_demo(&args(a.path(), 42)).unwrap();
    make_demo(&args(&b_out, 42)).unwrap();
    let (fa, fb) = (files(a.path()), files(&b_out));
    assert_eq!(
        fa.keys().collect::<Vec<_>>(),
        fb.keys().collect::<Vec<_>>(),
        "same file list"
    );
    for (name, bytes) in &fa {
        assert!(bytes == &fb[name], "{} differs", name.display());
    }
    for expected in [
        "raw/refer/instances.json",
        "raw/refer/refs(unc).p",
        "raw/images/demo_000001.png",
        "shards/train/manifest.json",
        "shards/train/shard-00000.parquet",
        "shards/train/shard-00001.parquet",
        "shards/val/manifest.json",
        "model/config.json",
        "model/tokenizer.json",
        "model/model.safetensors",
        "README.md",
        ".gitignore",
    ] {
        assert!(fa.contains_key(Path::new(expected)), "{expected} missing");
    }

    // A rerun into the same folder rewrites the same bytes (shards kept by the resume rule).
    make_demo(&args(a.path(), 42)).unwrap();
    assert!(files(a.path()) == fa, "rerun changed the folder");

    let c = tempfile::tempdir().unwrap();
    make_demo(&args(c.path(), 43)).unwrap();
    let fc = files(c.path());
    for differs in [
        "raw/refer/instances.json",
        "shards/train/shard-00000.parquet",
        "model/model.safetensors",
    ] {
        assert!(
            fa[Path::new(differs)] != fc[Path::new(differs)],
            "{differs} does not depend on the seed"
        );
    }
    assert_eq!(
        fa[Path::new("model/config.json")],
        fc[Path::new("model/config.json")]
    );
}

#[test]
fn bad_options_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let mut a = args(d.path(), 1);
    a.val_images = 0;
    let e = make_demo(&a).unwrap_err().to_string();
    assert!(e.contains("--val-images"), "{e}");
    let mut a = args(d.path(), 1);
    a.shard_size = 0;
    let e = make_demo(&a).unwrap_err().to_string();
    assert!(e.contains("--shard-size"), "{e}");
}
