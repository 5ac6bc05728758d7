//! The interface through which the journal, the superblock and (later) the grid read and write
//! the data file. The core only *records* requests here; the io_uring driver (`io::IoStorage`)
//! and the simulator (`sim::storage::MemoryStorage`) carry them out and hand back a `Completion`
//! later, which the driver routes to the owner named in its `IoToken`.
//!
//! Buffers move with the request: the storage holds a `Message` handle until the operation
//! completes, so the memory stays alive and, for a read, unshared while the disk fills it. No
//! request allocates.

use crate::constants::SECTOR_SIZE;
use crate::vsr::layout::Zone;
use crate::vsr::message_pool::Message;

/// Which component an I/O belongs to, so the driver can route its completion.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOwner {
    Superblock = 1,
    JournalPrepare = 2,
    JournalHeaders = 3,
    JournalRead = 4,
    ClientReplies = 5,
    Grid = 6,
    Format = 7,
    Benchmark = 8,
    /// State sync: grid blocks read for a peer, or written as they arrive from one.
    Sync = 9,
}

/// Identifies one I/O to its owner: the owner, and an index the owner chose (a slot, a copy, an
/// IOP). Opaque to storage, returned unchanged in the completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoToken {
    pub owner: IoOwner,
    pub index: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    Read,
    /// A durable write: once it completes, its own bytes are on stable media (`RWF_DSYNC`). It
    /// says nothing of other writes: on a disk with FUA it flushes no cache.
    Write,
    /// A write whose completion says only that the disk has the bytes, perhaps in its volatile
    /// cache: a crash may lose it (its sectors keep what they held) until a `Sync` submitted
    /// after it completed has completed. For what only a later superblock makes reachable:
    /// grid blocks and client replies, which the superblock update's `Sync` covers.
    WriteCached,
    /// Makes every write that completed before it was submitted durable (`fdatasync`). Its
    /// zone, offset and length name nothing (zero length); its buffer comes back untouched.
    Sync,
}

impl IoKind {
    pub fn is_write(self) -> bool {
        matches!(self, IoKind::Write | IoKind::WriteCached)
    }
}

/// One disk operation. `offset` is absolute within the data file; `offset` and `length` are
/// whole sectors and the range lies inside `zone`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoRequest {
    pub token: IoToken,
    pub kind: IoKind,
    pub zone: Zone,
    pub offset: u64,
    pub length: usize,
    /// Where in the buffer the data starts (a sector multiple).
    pub buffer_offset: usize,
}

impl IoRequest {
    pub fn assert_valid(&self, buffer: &Message) {
        if self.kind == IoKind::Sync {
            assert_eq!(self.length, 0);
            assert_eq!(self.buffer_offset, 0);
            return;
        }
        assert!(self.length > 0);
        assert_eq!(self.length % SECTOR_SIZE, 0);
        assert_eq!(self.offset % SECTOR_SIZE as u64, 0);
        assert_eq!(self.buffer_offset % SECTOR_SIZE, 0);
        assert!(self.buffer_offset + self.length <= buffer.buffer().len());
        if self.kind == IoKind::Read {
            assert_eq!(buffer.references(), 1, "a read needs its buffer unshared");
        }
    }
}

/// A disk error, surfaced to the owner. Reads that fail are treated by the protocol like
/// corrupt sectors (repaired); a failed write stops the replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoError {
    /// The operating system returned this errno.
    Errno(i32),
    /// The file ended before the range did (the data file was truncated).
    EndOfFile,
}

impl std::fmt::Display for IoError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IoError::Errno(errno) => {
                write!(formatter, "{}", std::io::Error::from_raw_os_error(*errno))
            }
            IoError::EndOfFile => write!(formatter, "unexpected end of file"),
        }
    }
}

/// A finished operation, with its buffer handed back.
#[derive(Debug)]
pub struct Completion {
    pub request: IoRequest,
    pub buffer: Message,
    pub result: Result<(), IoError>,
}

/// A data file that takes requests now and completes them later.
pub trait Storage {
    /// Records `request`. The storage keeps `buffer` until the completion.
    fn submit(&mut self, request: IoRequest, buffer: Message);

    /// Waits until at least one submitted request has completed (if any is in flight) and
    /// appends finished requests to `completions`, at most `completions_max` of them.
    fn poll(&mut self, completions: &mut Vec<Completion>, completions_max: usize);

    /// Requests submitted and not yet returned by `poll`.
    fn in_flight(&self) -> usize;

    /// The data file's size in bytes.
    fn size(&self) -> u64;
}
