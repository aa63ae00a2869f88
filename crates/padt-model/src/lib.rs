//! padt-model
