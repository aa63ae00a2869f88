//! padt-eval
