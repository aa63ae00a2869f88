//! padt-core
