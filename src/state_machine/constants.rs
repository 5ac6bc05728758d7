//! The event store's own limits, fixed for all builds, with compile-time checks of how they
//! relate to the replica's (`crate::constants`). Sizes that depend on the cluster's `Config`
//! (block buffers, skip levels, the streams table's reserve) are derived from these and the
//! config once, in `Limits::new` (`mod.rs`).

use static_assertions::const_assert;

use crate::constants::{BLOCK_SIZE, GRID_SIZE_MAX};

/// The largest event payload. It bounds the space a block leaves unused when the next event
/// does not fit (at most 1/8 of a block), and with it the blocks one commit can seal. A cluster
/// with a small `message_size_max` has a lower effective maximum: an event must fit in one
/// read reply (see `Limits::event_size_max`).
pub const EVENT_SIZE_MAX: u32 = 64 * 1024;

/// Skip-list levels. A block's ordinal (in the log, or among one stream's blocks) never exceeds
/// the number of blocks in the largest grid, 2^25, so an ordinal has at most 26 significant bits
/// and a block at most 26 skip pointers.
pub const SKIP_LEVELS_MAX: usize = 26;

/// Reads in progress at once. Each owns one block buffer for its whole life.
pub const GRID_READS_MAX: usize = 8;

/// Block buffers beyond the worst case of one commit, so that a commit may start while the
/// blocks sealed by earlier commits are still being written.
pub const GRID_WRITES_PIPELINE: usize = 4;

/// The `expected_offset` of an append batch that accepts whatever offset the stream is at.
pub const EXPECTED_OFFSET_ANY: u64 = u64::MAX;

/// The version of the grid block format, in every block header.
pub const BLOCK_VERSION: u8 = 1;

const_assert!(GRID_SIZE_MAX / BLOCK_SIZE as u64 <= 1 << (SKIP_LEVELS_MAX - 1));
// Block addresses are stored as u32 in skip pointers.
const_assert!(GRID_SIZE_MAX / BLOCK_SIZE as u64 <= u32::MAX as u64);
const_assert!(EVENT_SIZE_MAX.is_multiple_of(8));
const_assert!(EVENT_SIZE_MAX as usize * 8 <= BLOCK_SIZE);
const_assert!(GRID_READS_MAX >= 1);
const_assert!(GRID_WRITES_PIPELINE >= 1);
