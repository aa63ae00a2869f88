//! padt-cli: the command-line tools. The binaries in `src/bin/` are thin wrappers over these
//! modules.

pub mod compute;
pub mod demo;
pub mod preprocess;
pub mod referring_eval;
