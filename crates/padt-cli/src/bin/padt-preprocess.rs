//! `padt-preprocess`: see `padt_cli::preprocess` and docs/data.md.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = padt_cli::preprocess::Cli::parse();
    match padt_cli::preprocess::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("padt-preprocess: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
