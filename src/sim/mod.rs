//! The simulator: an in-memory disk with faults, a simulated network, simulated
//! clients, a cluster that drives real replicas through them, the checker that judges every
//! step, and the VOPR command that runs it all from one seed. Tests and `kimberlite vopr` drive
//! the same core code through these that the io_uring driver runs in production.

#![forbid(unsafe_code)]

pub mod checker;
pub mod cluster;
pub mod mutation;
pub mod network;
#[cfg(test)]
pub(crate) mod scenario;
pub mod storage;
pub mod trace;
pub mod vopr;
pub mod workload;
