//! The simulator's parts: a seeded PRNG and an in-memory disk with faults. Tests drive the
//! same core code through these that the io_uring driver runs in production.

#![forbid(unsafe_code)]

pub mod prng;
pub mod storage;
