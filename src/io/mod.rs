//! The Linux driver: a single-threaded io_uring loop and direct-I/O storage. The only module
//! with `unsafe` code, in a few places, each with a `// SAFETY:` comment.
//!
//! - `ring`: the event loop (`Io`): one ring, a fixed table of operation slots, completions
//!   drained into a fixed array and handed back to their owners.
//! - `storage`: `IoStorage`, the `vsr::storage::Storage` implementation over `Io` for one data
//!   file; it owns the process's one ring and lends it to the bus.
//! - `message_bus`: `MessageBus`, TCP connections to clients and peer replicas over the same
//!   ring: dialing peers with backoff, identifying them, framing and validation of received
//!   messages, bounded send queues, back-pressure.
//! - `socket`: the socket system calls made outside the ring, and address conversions.
//! - `server`: `kimberlite start`, the replica's event loop over one ring.
//! - `metrics`: the Prometheus endpoint (`start --metrics`), served over the same ring.
//! - `data_file`: creating and opening data files (`O_DIRECT`, `flock`, fsync at open).
//! - `log`: the replica's log lines: RFC 3339 time, level, event, `key=value` fields,
//!   rate-limited per event.
//! - `allocator`: the global allocator guard that proves no allocation after startup.
//! - `format`: `kimberlite format`, writing every byte of a new data file.
//! - `signal`: SIGINT and SIGTERM as a flag (the load generator cleans up on Ctrl-C).
//! - `epoll`: readiness of many sockets, for the load generator's client sessions.

pub mod allocator;
pub mod data_file;
pub mod epoll;
pub mod format;
pub mod log;
pub mod message_bus;
pub mod metrics;
pub mod ring;
pub mod server;
pub mod signal;
pub mod socket;
pub mod storage;

#[cfg(test)]
pub(crate) mod scratch;

pub use data_file::{DataFile, DataFileError};
pub use format::{FormatReport, format_file};
pub use message_bus::MessageBus;
pub use ring::{Io, Wait};
pub use server::start;
pub use storage::IoStorage;
