//! The protocol core: deterministic, no I/O, no clock, no OS randomness, no `unsafe`, and no
//! allocation after init. Everything here is driven through `on_*`-style calls by a driver
//! (`io` or `sim`) and talks to the disk only through the `storage::Storage` interface.

#![forbid(unsafe_code)]

pub mod accept;
pub mod client;
pub mod client_sessions;
pub mod counters;
pub mod format;
pub mod header;
pub mod journal;
pub mod layout;
pub mod message_pool;
pub mod replica;
pub mod storage;
pub mod superblock;

/// The next number of a xorshift64 sequence (`state` never 0): the jitter the replica and the
/// client core draw from a seed their driver gives them.
pub(crate) fn xorshift_next(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}
