//! Kimberlite: a Viewstamped Replication replica for an append-only event store.
//!
//! The crate is layered by dependency direction (see `ARCHITECTURE.md`): `vsr` is the
//! deterministic protocol core and does no I/O; `io` is the Linux io_uring driver; `sim` is the
//! in-memory driver used by tests and the simulator; `cli` wires commands to them.

#![forbid(unsafe_op_in_unsafe_fn)]

// The protocol, the event store, the client core and the blocking client: always built.
pub mod client;
pub mod constants;
pub mod state_machine;
pub mod stdx;
pub mod vsr;

// The replica and everything around it (feature `replica`, on by default): the clients under
// `src/clients` build without it, so they bring no io_uring and no global allocator.
#[cfg(feature = "replica")]
mod arguments;
#[cfg(feature = "replica")]
pub mod benchmark;
#[cfg(feature = "replica")]
pub mod cli;
#[cfg(feature = "replica")]
mod cli_backup;
#[cfg(feature = "replica")]
mod cli_client;
#[cfg(feature = "replica")]
mod cli_status;
#[cfg(feature = "replica")]
pub mod fuzz_targets;
#[cfg(feature = "replica")]
pub mod inspect;
#[cfg(feature = "replica")]
pub mod io;
#[cfg(feature = "replica")]
pub mod sim;
#[cfg(test)]
mod tidy;

/// Every allocation goes through the guard, so a test can prove the replica allocates nothing
/// after startup.
#[cfg(feature = "replica")]
#[global_allocator]
static ALLOCATOR: io::allocator::GuardedAllocator = io::allocator::GuardedAllocator;

/// The git commit and build profile this binary was built from (set by `build.rs`).
pub const BUILD_COMMIT: &str = env!("KIMBERLITE_GIT_COMMIT");
pub const BUILD_PROFILE: &str = env!("KIMBERLITE_BUILD_PROFILE");
