//! Fuzz target bodies, shared by the cargo-fuzz crate in `fuzz/` and by the corpus replay test
//! that runs under `cargo test`. (Being written.)
