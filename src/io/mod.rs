//! The Linux driver: a single-threaded io_uring loop and direct-I/O storage. The only module
//! with `unsafe` code, in a few places, each with a `// SAFETY:` comment.
