//! `padt-make-demo`: see `padt_cli::demo` and docs/demo.md.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = padt_cli::demo::DemoArgs::parse();
    let started = std::time::Instant::now();
    match padt_cli::demo::make_demo(&args) {
        Ok(summary) => {
            for s in &summary.splits {
                eprintln!(
                    "{}: {} images, {} refs, {} records, {} bytes of shards in {}",
                    s.split,
                    s.images,
                    s.refs,
                    s.records,
                    s.shard_bytes,
                    padt_cli::demo::shard_dir(&args.out, &s.split).display()
                );
            }
            eprintln!(
                "objects without an unambiguous expression: {}; model: {} parameters in {}; {:.1} s",
                summary.objects_without_ref,
                summary.model_params,
                args.out.join("model").display(),
                started.elapsed().as_secs_f64()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("padt-make-demo: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
