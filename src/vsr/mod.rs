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
pub mod timeout;
