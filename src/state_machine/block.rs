//! Grid blocks: their layout arithmetic, the skip-list arithmetic shared by the log and the
//! streams, and the validators and parsers that read a block's bytes. Bytes read from the grid
//! are untrusted: every function here that takes them bounds-checks before it indexes and
//! returns a reason instead of panicking.
//!
//! Skip lists: the blocks of one chain (the log, or one stream) are numbered by ordinal from 1.
//! The block with ordinal `k` points to `k - 2^i` for every `i` up to `k`'s trailing zeros (as
//! long as that block exists). The "frontier" of a chain after `n` blocks holds, per level `i`,
//! the newest block whose ordinal is a multiple of `2^i`: exactly the blocks the next block
//! will point to, so building a block never needs to read an older one.

use zerocopy::{FromBytes, IntoBytes};

use crate::constants::{BLOCK_SIZE, SECTOR_SIZE, SKIP_LEVELS_MAX};
use crate::state_machine::constants::BLOCK_VERSION;
use crate::state_machine::types::{
    BlockHeader, BlockKind, BlockPointer, DirectoryEntry, EventRecord, padded_size,
};
use crate::vsr::header::{Checksum, ClusterId, checksum};

/// Bytes of the block header; records start here.
pub const BLOCK_HEADER_SIZE: usize = size_of::<BlockHeader>();

/// Sectors in a block. A block's checksum is the checksum of its sectors' checksums (a hash
/// list), so a block fetched or read in sector-aligned chunks is checked chunk by chunk as they
/// come, in any order, without holding it whole.
pub const BLOCK_SECTORS: usize = BLOCK_SIZE / SECTOR_SIZE;

/// The checksum a block's header carries and its pointers repeat: over its sectors' checksums,
/// sector 0 without the checksum field itself.
pub fn block_checksum(block: &[u8]) -> Checksum {
    assert_eq!(block.len(), BLOCK_SIZE);
    let mut sectors = SectorChecksums::new();
    sectors.chunk(0, block);
    sectors.block_checksum()
}

/// The checksums of one block's sectors, filled chunk by chunk.
#[derive(Clone, Copy, Debug)]
pub struct SectorChecksums {
    sectors: [Checksum; BLOCK_SECTORS],
}

impl SectorChecksums {
    pub fn new() -> SectorChecksums {
        SectorChecksums { sectors: [Checksum(0); BLOCK_SECTORS] }
    }

    /// Records the sectors of `bytes`, which start at byte `offset` of the block.
    pub fn chunk(&mut self, offset: usize, bytes: &[u8]) {
        assert!(offset.is_multiple_of(SECTOR_SIZE));
        assert!(bytes.len().is_multiple_of(SECTOR_SIZE));
        assert!(offset + bytes.len() <= BLOCK_SIZE);
        for (index, sector) in bytes.chunks_exact(SECTOR_SIZE).enumerate() {
            let sector_index = offset / SECTOR_SIZE + index;
            let covered = if sector_index == 0 { &sector[size_of::<Checksum>()..] } else { sector };
            self.sectors[sector_index] = checksum(covered);
        }
    }

    /// The block's checksum, once every sector was recorded.
    pub fn block_checksum(&self) -> Checksum {
        checksum(self.sectors.as_bytes())
    }
}

impl Default for SectorChecksums {
    fn default() -> SectorChecksums {
        SectorChecksums::new()
    }
}

/// Skip pointers of the block with `ordinal`: to `ordinal - 2^i` for `i` up to its trailing
/// zeros, leaving out ordinal 0 (which does not exist).
pub fn skip_pointer_count(ordinal: u64) -> u32 {
    assert!(ordinal >= 1);
    let zeros = ordinal.trailing_zeros();
    if ordinal.is_power_of_two() { zeros } else { zeros + 1 }
}

/// Frontier levels in use after `blocks` blocks: those with `2^level <= blocks`.
pub const fn frontier_count(blocks: u64) -> u32 {
    u64::BITS - blocks.leading_zeros()
}

/// The ordinal of the frontier's block at `level` after `blocks` blocks.
pub fn frontier_ordinal(blocks: u64, level: usize) -> u64 {
    assert!(level < frontier_count(blocks) as usize);
    (blocks >> level) << level
}

/// Puts the block with `ordinal` into a chain's frontier (levels up to its trailing zeros).
pub fn frontier_advance(frontier: &mut [BlockPointer], ordinal: u64, pointer: BlockPointer) {
    let levels = ordinal.trailing_zeros() as usize + 1;
    assert!(levels <= frontier.len());
    frontier[..levels].fill(pointer);
}

/// The level to follow from a block (or the frontier) towards `key`: the highest whose block
/// still ends after `key`, so that a jump never skips the block holding `key`.
pub fn skip_level(
    pointers: impl Fn(usize) -> BlockPointer,
    count: usize,
    key: u64,
) -> Option<usize> {
    (0..count).rev().find(|level| pointers(*level).key_end > key)
}

/// Bytes of a directory entry with `pointer_count` pointers.
pub fn directory_entry_size(pointer_count: u32) -> u64 {
    size_of::<DirectoryEntry>() as u64 + u64::from(pointer_count) * size_of::<BlockPointer>() as u64
}

/// True if a block holding `records_size` bytes of records and `directory_size` bytes of
/// directory has room for `size` more.
pub fn block_fits(records_size: u64, directory_size: u64, size: u64) -> bool {
    BLOCK_HEADER_SIZE as u64 + records_size + directory_size + size <= BLOCK_SIZE as u64
}

/// The header of a block that `block_invalid` accepted (or that we built).
pub fn block_header(block: &[u8]) -> BlockHeader {
    BlockHeader::read_from_prefix(block).expect("blocks are larger than their header").0
}

/// Why `block`, read from grid `address` through a pointer carrying `checksum_expected`, is not
/// a sound block of `kind`, or `None`.
pub fn block_invalid(
    block: &[u8],
    cluster: ClusterId,
    address: u64,
    checksum_expected: Checksum,
    kind: BlockKind,
) -> Option<&'static str> {
    if block.len() != BLOCK_SIZE {
        return Some("block: wrong size");
    }
    let header = block_header(block);
    if Checksum::from(header.checksum) != block_checksum(block) {
        return Some("block: checksum does not match its bytes");
    }
    if Checksum::from(header.checksum) != checksum_expected {
        return Some("block: checksum does not match its pointer (lost or misdirected write)");
    }
    if header.address != address {
        return Some("block: address does not match where it was read (misdirected write)");
    }
    if header.kind != kind as u8 {
        return Some("block: wrong kind");
    }
    if header.version != BLOCK_VERSION {
        return Some("block: unknown version");
    }
    if header.cluster != cluster.get() {
        return Some("block: belongs to another cluster");
    }
    let used = BLOCK_HEADER_SIZE as u64
        + u64::from(header.records_size)
        + u64::from(header.directory_size);
    if used > BLOCK_SIZE as u64 {
        return Some("block: records and directory overrun the block");
    }
    if usize::from(header.log_pointer_count) > SKIP_LEVELS_MAX {
        return Some("block: too many log pointers");
    }
    None
}

/// A stream's directory entry in a valid event block, and where its pointers start.
#[derive(Clone, Copy, Debug)]
pub struct DirectoryFound {
    pub entry: DirectoryEntry,
    pub pointers_offset: usize,
}

impl DirectoryFound {
    /// The pointer at `level`; `directory_find` checked it lies inside the block.
    pub fn pointer(&self, block: &[u8], level: usize) -> BlockPointer {
        assert!(level < self.entry.pointer_count as usize);
        let at = self.pointers_offset + level * size_of::<BlockPointer>();
        BlockPointer::read_from_bytes(&block[at..at + size_of::<BlockPointer>()])
            .expect("pointer size")
    }
}

/// Finds `stream`'s entry in the directory of an event block that `block_invalid` accepted.
pub fn directory_find(block: &[u8], stream: u64) -> Result<Option<DirectoryFound>, &'static str> {
    let header = block_header(block);
    let mut at = BLOCK_HEADER_SIZE + header.records_size as usize;
    let end = at + header.directory_size as usize;
    for _ in 0..header.directory_count {
        let Some(bytes) = block.get(at..end) else {
            return Err("directory: entry out of bounds");
        };
        let Ok((entry, _)) = DirectoryEntry::read_from_prefix(bytes) else {
            return Err("directory: entry truncated");
        };
        if entry.pointer_count as usize > SKIP_LEVELS_MAX {
            return Err("directory: too many pointers");
        }
        let size = directory_entry_size(entry.pointer_count) as usize;
        if size > bytes.len() {
            return Err("directory: pointers overrun the directory");
        }
        if entry.stream == stream {
            let pointers_offset = at + size_of::<DirectoryEntry>();
            return Ok(Some(DirectoryFound { entry, pointers_offset }));
        }
        at += size;
    }
    Ok(None)
}

/// The record at byte `at` of a records region ending at `records_end`, and its size.
pub fn record_at(
    block: &[u8],
    at: usize,
    records_end: usize,
) -> Result<(EventRecord, usize), &'static str> {
    let Some(bytes) = block.get(at..records_end) else {
        return Err("record: out of bounds");
    };
    let Ok((record, _)) = EventRecord::read_from_prefix(bytes) else {
        return Err("record: header truncated");
    };
    let size = size_of::<EventRecord>() as u64 + padded_size(record.event_header().payload_size());
    if size > bytes.len() as u64 {
        return Err("record: data overruns the records");
    }
    Ok((record, size as usize))
}
