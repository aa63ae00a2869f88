//! padt-cli
