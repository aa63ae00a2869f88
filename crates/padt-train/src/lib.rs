//! padt-train
