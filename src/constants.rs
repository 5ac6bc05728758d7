//! Every limit of the replica, in one place, with compile-time checks of how they relate.
//!
//! A value here is either fixed for all builds (the sector and header sizes) or the default and
//! maximum of a per-cluster setting that `kimberlite format` stores in the superblock (the slot
//! count, `message_size_max`, the grid size). Buffers are sized from the maxima here, once, at
//! startup; nothing grows afterwards.

use static_assertions::const_assert;

/// The unit of every disk read and write: buffers, lengths and offsets are multiples of it.
/// `O_DIRECT` here needs only 512 bytes, but the physical block is 4 KiB, and smaller writes risk
/// a read-modify-write below us that can tear neighbouring data.
pub const SECTOR_SIZE: usize = 4096;

/// The size of every message header, on the wire and on disk.
pub const HEADER_SIZE: usize = 128;

/// The largest message (header plus body), and the size of one WAL prepare slot.
pub const MESSAGE_SIZE_MAX: usize = 1024 * 1024;

/// The smallest `message_size_max` a cluster may be formatted with (used by tests to keep
/// simulated disks small).
pub const MESSAGE_SIZE_MAX_MIN: usize = 2 * SECTOR_SIZE;

/// The largest message body.
pub const MESSAGE_BODY_SIZE_MAX: usize = MESSAGE_SIZE_MAX - HEADER_SIZE;

/// Redundant WAL headers packed in one sector of the `wal_headers` zone.
pub const JOURNAL_HEADERS_PER_SECTOR: usize = SECTOR_SIZE / HEADER_SIZE;

/// The default number of WAL slots (slot = op mod slot count).
pub const JOURNAL_SLOT_COUNT: usize = 1024;

/// The fewest WAL slots: two sectors' worth of redundant headers, so that one torn sector can
/// never destroy every redundant header.
pub const JOURNAL_SLOT_COUNT_MIN: usize = 2 * JOURNAL_HEADERS_PER_SECTOR;

/// The most WAL slots a data file may have (bounds the in-memory slot tables).
pub const JOURNAL_SLOT_COUNT_MAX: usize = 8192;

/// Prepares the primary keeps in flight (written, replicated, not yet committed).
pub const PIPELINE_PREPARE_QUEUE_MAX: usize = 8;

/// Concurrent journal writes: a prepare write and its header-sector write per pipelined
/// prepare, plus prepares being repaired.
pub const JOURNAL_IOPS_WRITE_MAX: usize = 32;

/// Concurrent journal reads (recovery and repair).
pub const JOURNAL_IOPS_READ_MAX: usize = 8;

/// Client sessions a replica keeps (and client_replies slots on disk).
pub const CLIENTS_MAX: usize = 64;

/// The most replicas in a cluster (2f + 1 with f = 3).
pub const REPLICAS_MAX: usize = 7;

/// Copies of the superblock, written one after another.
pub const SUPERBLOCK_COPIES: usize = 4;

/// Copies that must read back identical after an update before it counts as written.
pub const SUPERBLOCK_QUORUM_VERIFY: usize = 3;

/// Copies that must agree at open. Write quorum plus open quorum exceed the copy count, so an
/// open always sees the newest completed update.
pub const SUPERBLOCK_QUORUM_OPEN: usize = 2;

/// The size of one superblock copy: a single sector, so that each copy is one write.
pub const SUPERBLOCK_COPY_SIZE: usize = SECTOR_SIZE;

/// Log-suffix headers the superblock keeps for view changes (the pipeline plus the head).
pub const VIEW_HEADERS_MAX: usize = PIPELINE_PREPARE_QUEUE_MAX + 1;

/// Grid chunk reads a replica serves to syncing peers at once, and chunk writes a syncing
/// replica keeps in flight (state sync).
pub const SYNC_READS_MAX: usize = 4;
pub const SYNC_WRITES_MAX: usize = 8;

/// Headers of the log's suffix that a do_view_change or start_view carries: more than the
/// uncommitted ops a log can hold (`PIPELINE_PREPARE_QUEUE_MAX`), so that they always reach
/// back to a committed op, and few enough to fit the smallest message.
pub const VIEW_CHANGE_HEADERS_MAX: usize = 4 * PIPELINE_PREPARE_QUEUE_MAX;

/// The size of a grid block (events and checkpointed tables).
pub const BLOCK_SIZE: usize = 512 * 1024;

/// Grid blocks the background scrubber reads per second, at most: enough to read a default
/// 1 GiB grid (2,048 blocks) about every 9 minutes, little next to the disk's bandwidth (2 MiB/s).
pub const GRID_SCRUB_BLOCKS_PER_SECOND: u64 = 4;

/// Ticks between the starts of two scrubber block reads.
pub const GRID_SCRUB_BLOCK_TICKS: u64 = 1000 / TICK_MS / GRID_SCRUB_BLOCKS_PER_SECOND;

/// Grid blocks found bad (at open, by a read, by the scrubber) that wait to be fetched again
/// from a peer; one is fetched at a time, and a block found bad while the queue is full is
/// found again later.
pub const GRID_REPAIRS_MAX: usize = 8;

/// Chunk reads the scrubber keeps in flight. (Grid repair gathers a fetched block in a
/// block-sized buffer of its own and writes it whole.)
pub const GRID_SCRUB_READS_MAX: usize = 4;

/// The default grid size for `kimberlite format`.
pub const GRID_SIZE_DEFAULT: u64 = 1024 * 1024 * 1024;

/// The largest grid a data file may have (16 TiB).
pub const GRID_SIZE_MAX: u64 = 16 * 1024 * 1024 * 1024 * 1024;

/// The default number of streams a cluster can hold.
pub const STREAMS_MAX: u32 = 65_536;

/// The length of one tick: every protocol timeout counts ticks.
pub const TICK_MS: u64 = 10;

/// The io_uring submission queue size.
pub const IO_ENTRIES: u32 = 256;

/// In-flight io_uring operations of all kinds (disk and network) a replica can have.
pub const IO_OPERATIONS_MAX: usize = 512;

/// Completions drained from the ring in one go before any is dispatched.
pub const IO_COMPLETIONS_BATCH_MAX: usize = 256;

/// Bytes written by one `format` write, and how many such writes are in flight. The disk
/// peaks with 2 to 4 MiB in flight (see the machine measurements in `docs/`).
pub const FORMAT_WRITE_SIZE: usize = 1024 * 1024;
pub const FORMAT_WRITES_IN_FLIGHT: usize = 4;

/// The wire and disk protocol version carried by every header.
pub const PROTOCOL_VERSION: u16 = 1;

/// The data-file format version carried by the superblock.
pub const SUPERBLOCK_VERSION: u16 = 1;

/// Ops between checkpoints for a journal of `slot_count` slots. A checkpoint must be durable
/// before the ring wraps over the ops it covers; the headroom keeps a full pipeline on each side
/// of the checkpoint trigger.
pub const fn checkpoint_interval_ops(slot_count: u64) -> u64 {
    slot_count - 2 * PIPELINE_PREPARE_QUEUE_MAX as u64
}

/// The highest op a replica may prepare while its checkpoint is `checkpoint_op`: any higher op
/// would overwrite a slot whose op the checkpoint does not yet cover.
pub const fn op_prepare_max(checkpoint_op: u64, slot_count: u64) -> u64 {
    checkpoint_op + slot_count
}

const_assert!(SECTOR_SIZE.is_power_of_two());
const_assert!(VIEW_CHANGE_HEADERS_MAX > PIPELINE_PREPARE_QUEUE_MAX + 1);
const_assert!((VIEW_CHANGE_HEADERS_MAX + 1) * HEADER_SIZE <= MESSAGE_SIZE_MAX_MIN);
const_assert!(SECTOR_SIZE.is_multiple_of(HEADER_SIZE));
const_assert!(MESSAGE_SIZE_MAX.is_multiple_of(SECTOR_SIZE));
const_assert!(MESSAGE_SIZE_MAX_MIN.is_multiple_of(SECTOR_SIZE));
const_assert!(MESSAGE_SIZE_MAX_MIN <= MESSAGE_SIZE_MAX);
const_assert!(MESSAGE_SIZE_MAX <= u32::MAX as usize);
const_assert!(JOURNAL_SLOT_COUNT.is_multiple_of(JOURNAL_HEADERS_PER_SECTOR));
const_assert!(JOURNAL_SLOT_COUNT >= JOURNAL_SLOT_COUNT_MIN);
const_assert!(JOURNAL_SLOT_COUNT <= JOURNAL_SLOT_COUNT_MAX);
const_assert!(JOURNAL_SLOT_COUNT_MAX.is_multiple_of(JOURNAL_HEADERS_PER_SECTOR));
const_assert!(JOURNAL_SLOT_COUNT_MIN > 4 * PIPELINE_PREPARE_QUEUE_MAX);
const_assert!(checkpoint_interval_ops(JOURNAL_SLOT_COUNT_MIN as u64) > 0);
const_assert!(JOURNAL_IOPS_WRITE_MAX >= 2 * PIPELINE_PREPARE_QUEUE_MAX);
const_assert!(REPLICAS_MAX <= u8::MAX as usize);
const_assert!(CLIENTS_MAX >= 1);
const_assert!(SUPERBLOCK_QUORUM_VERIFY + SUPERBLOCK_QUORUM_OPEN > SUPERBLOCK_COPIES);
const_assert!(SUPERBLOCK_QUORUM_VERIFY <= SUPERBLOCK_COPIES);
const_assert!(SUPERBLOCK_COPY_SIZE.is_multiple_of(SECTOR_SIZE));
const_assert!(BLOCK_SIZE.is_multiple_of(SECTOR_SIZE));
const_assert!(GRID_SCRUB_BLOCK_TICKS >= 1);
const_assert!(GRID_SCRUB_BLOCKS_PER_SECOND * (BLOCK_SIZE as u64) <= 4 * 1024 * 1024);
const_assert!(GRID_REPAIRS_MAX >= 1);
const_assert!(GRID_SIZE_DEFAULT.is_multiple_of(BLOCK_SIZE as u64));
const_assert!(GRID_SIZE_MAX.is_multiple_of(BLOCK_SIZE as u64));
const_assert!(FORMAT_WRITE_SIZE.is_multiple_of(SECTOR_SIZE));
const_assert!(FORMAT_WRITES_IN_FLIGHT < IO_OPERATIONS_MAX);
const_assert!(IO_COMPLETIONS_BATCH_MAX <= IO_OPERATIONS_MAX);
const_assert!((IO_ENTRIES as usize) <= IO_OPERATIONS_MAX);
