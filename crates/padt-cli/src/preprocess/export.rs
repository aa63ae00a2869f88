//! `padt-preprocess export-jsonl DIR --out FILE`: the records of a shard folder as PaDT's
//! JSONL, byte for byte as `json.dumps(record)` + `"\n"` in PaDT's scripts (`padt_data::pyjson`).

use anyhow::Context;
use clap::Args;
use padt_data::pyjson::record_to_jsonl_line;
use padt_data::shard::ShardDataset;
use std::io::Write;
use std::path::PathBuf;

/// Options of `export-jsonl`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// The shard folder.
    pub dir: PathBuf,
    /// The JSONL file to write (written to a temporary file first, then renamed).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `export-jsonl`.
pub fn run(a: ExportArgs) -> anyhow::Result<()> {
    let ds = ShardDataset::open(&a.dir)?;
    let parent = match a.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-export-")
        .tempfile_in(&parent)
        .with_context(|| format!("output folder {} is not writable", parent.display()))?;
    let mut w = std::io::BufWriter::new(tmp.as_file());
    let mut n = 0u64;
    for k in 0..ds.manifest().shards.len() {
        for meta in ds.read_shard_meta(k)? {
            w.write_all(record_to_jsonl_line(&meta.record).as_bytes())
                .and_then(|_| w.write_all(b"\n"))
                .with_context(|| format!("writing {}", a.out.display()))?;
            n += 1;
        }
    }
    w.flush()
        .with_context(|| format!("writing {}", a.out.display()))?;
    drop(w);
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", a.out.display()))?;
    tmp.persist(&a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!("wrote {n} records to {}", a.out.display());
    Ok(())
}
