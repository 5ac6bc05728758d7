//! Kimberlite: a Viewstamped Replication replica for an append-only event store.
//!
//! The crate is layered by dependency direction (see `ARCHITECTURE.md`): `vsr` is the
//! deterministic protocol core and does no I/O; `io` is the Linux io_uring driver; `sim` is the
//! in-memory driver used by tests and the simulator; `cli` wires commands to them.

#![forbid(unsafe_op_in_unsafe_fn)]

mod arguments;
pub mod benchmark;
pub mod cli;
mod cli_backup;
mod cli_client;
mod cli_status;
pub mod client;
pub mod constants;
pub mod fuzz_targets;
pub mod inspect;
pub mod io;
pub mod sim;
pub mod state_machine;
pub mod stdx;
#[cfg(test)]
mod tidy;
pub mod vsr;

/// Every allocation goes through the guard, so a test can prove the replica allocates nothing
/// after startup.
#[global_allocator]
static ALLOCATOR: io::allocator::GuardedAllocator = io::allocator::GuardedAllocator;

/// The git commit and build profile this binary was built from (set by `build.rs`).
pub const BUILD_COMMIT: &str = env!("KIMBERLITE_GIT_COMMIT");
pub const BUILD_PROFILE: &str = env!("KIMBERLITE_BUILD_PROFILE");
