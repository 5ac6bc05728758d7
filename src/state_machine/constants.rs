//! The event store's format values (the block version, the "any offset" sentinel), and the
//! compile-time checks of how its limits (in `crate::constants`, with every other limit)
//! relate. Sizes that depend on the cluster's `Config` (block buffers, skip levels, the streams
//! table's reserve) are derived from those and the config once, in `Limits::new` (`mod.rs`).

use static_assertions::const_assert;

use crate::constants::{
    BLOCK_SIZE, EVENT_SIZE_MAX, GRID_READS_MAX, GRID_SIZE_MAX, GRID_WRITES_PIPELINE,
    SKIP_LEVELS_MAX,
};

/// The `expected_offset` of an append batch that accepts whatever offset the stream is at.
pub const EXPECTED_OFFSET_ANY: u64 = u64::MAX;

/// The `expected_offset` of an append batch whose stream must not exist yet: the batch creates
/// it (tenant 0) and appends its events from offset 0, atomically.
pub const EXPECTED_NO_STREAM: u64 = u64::MAX - 1;

/// The version of the grid block format, in every block header.
pub const BLOCK_VERSION: u8 = 3;

const_assert!(GRID_SIZE_MAX / BLOCK_SIZE as u64 <= 1 << (SKIP_LEVELS_MAX - 1));
// Block addresses are stored as u32 in skip pointers.
const_assert!(GRID_SIZE_MAX / BLOCK_SIZE as u64 <= u32::MAX as u64);
const_assert!(EVENT_SIZE_MAX.is_multiple_of(8));
const_assert!(EVENT_SIZE_MAX as usize * 8 <= BLOCK_SIZE);
const_assert!(GRID_READS_MAX >= 1);
const_assert!(GRID_WRITES_PIPELINE >= 1);
