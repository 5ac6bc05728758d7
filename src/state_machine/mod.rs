//! The replicated state machine: an append-only event store. Every replica applies the same
//! committed ops in the same order, and this module turns them into the same bytes: the
//! streams table in memory, and grid blocks on disk written in commit order from `grid_head`,
//! so that the grid is a deterministic function of the committed log.
//!
//! Sans-IO like the rest of the core: it submits grid reads and writes to a `Storage` and is
//! handed their completions later. `docs/event-store.md` describes the formats and the index.
//!
//! # Call order
//!
//! 1. `new(config)` allocates everything the state machine will ever use.
//! 2. `open(storage, checkpoint)` with the superblock's checkpoint (all zero after format).
//!    Pass every completion whose token names `IoOwner::Grid` to `on_completion`; the open is
//!    over when `poll_open` returns `Some`.
//! 3. For each committed op, in op order: wait until `commit_ready()` (back-pressure while
//!    sealed blocks are still being written), then `commit`, which applies create_stream and
//!    append at once and writes the reply body. Ops the state machine has no part in (register,
//!    noop) may be passed too; they change nothing. Bodies must parse (`Request::parse`).
//! 4. At a checkpoint op, right after committing it: `checkpoint(storage)`, then keep passing
//!    completions until `poll_checkpoint` returns the state to put in the superblock. No commit
//!    runs in between (`commit_ready` is false).
//! 5. Any time after the open: `read_start` (read_stream, read_log, stream_info), served from
//!    what is committed so far; the reply comes out of `poll_read`, which the caller drains
//!    after `read_start` and after every completion it delivers.
//!
//! After a restart, `open` from the last checkpoint and re-`commit` the ops after it: that
//! rewrites the same blocks with the same bytes.

#![forbid(unsafe_code)]

pub mod block;
mod checkpoint;
pub mod constants;
mod read;
mod streams;
pub mod types;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::constants::{
    BLOCK_SIZE, EVENT_SIZE_MAX, GRID_BLOCKS_MAX, GRID_READS_MAX, GRID_WRITES_PIPELINE, HEADER_SIZE,
    SKIP_LEVELS_MAX,
};
use crate::state_machine::block::{
    BLOCK_HEADER_SIZE, block_checksum, block_fits, block_header, directory_entry_size,
    frontier_advance, frontier_count, skip_pointer_count,
};
use crate::state_machine::checkpoint::{Checkpointing, Opening};
use crate::state_machine::constants::{BLOCK_VERSION, EXPECTED_NO_STREAM, EXPECTED_OFFSET_ANY};
use crate::state_machine::read::ReadSlot;
use crate::state_machine::streams::{Stream, Streams};
use crate::state_machine::types::{
    AppendBatches, AppendResult, Batch, BlockHeader, BlockKind, BlockPointer, CreateStream,
    CreateStreamResult, CreateStreams, DirectoryEntry, Event, EventHeader, EventRecord, Events,
    ImportBatch, ReadReplyHeader, Request, ResultCode, TableEntry, chain_next, chain_seed,
    record_size, stream_id_valid,
};
use crate::vsr::header::{Checksum, ChecksumBytes, ClusterId, Op, Operation};
use crate::vsr::layout::{Config, Layout, Zone};
use crate::vsr::message_pool::{Message, MessagePool};
use crate::vsr::storage::{Completion, IoKind, IoOwner, IoRequest, IoToken, Storage};

pub use crate::state_machine::checkpoint::root_lists_read;
pub use crate::state_machine::types::request_invalid;

/// What a checkpoint leaves in the superblock (the state machine's part of the superblock's
/// `VsrState`, which copies it in and out).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointState {
    /// The next grid block to append to.
    pub grid_head: u64,
    pub streams_table_address: u64,
    /// 0 until the first checkpoint that follows a change; then every field is set.
    pub streams_table_blocks: u32,
    /// The hash chain over the table blocks' checksums, in order (`checksum_chain` from 0).
    pub streams_table_checksum: Checksum,
    /// `checksum_chain` of the checksum of the `TableRoot` and `streams_table_checksum`: names
    /// the whole state.
    pub checkpoint_state_checksum: Checksum,
    /// The cluster's grid in blocks (`StateMachine::grid_blocks_limit`): kept here, not in the
    /// grid, so that a checkpoint whose only change is a raise writes no block.
    pub grid_blocks_limit: u64,
}

/// A grid block found bad, for the replica to fetch again from a peer: its address, and the
/// checksum the pointer that led to it holds (a checkpoint's blocks are named by the
/// superblock and the root; `None` if nothing names the block, as for the scrubber's finds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockFault {
    pub address: u64,
    pub checksum: Option<Checksum>,
}

/// Why `block`, read from grid `address`, fails its own checks (checksum of its bytes,
/// address, kind, version, cluster), or `None`: what `kimberlite inspect` can verify of a
/// block without the pointer that leads to it.
pub fn grid_block_invalid(block: &[u8], cluster: ClusterId, address: u64) -> Option<&'static str> {
    let Ok((header, _)) = BlockHeader::read_from_prefix(block) else {
        return Some("block: shorter than its header");
    };
    let Some(kind) = BlockKind::from_u8(header.kind) else {
        return Some("block: wrong kind");
    };
    block::block_invalid(block, cluster, address, Checksum::from(header.checksum), kind)
}

/// Names one read from `read_start` to `poll_read`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadId(pub u64);

/// Every read slot is busy; the reply message is handed back unused.
#[derive(Debug)]
pub struct ReadBusy {
    pub reply: Message,
}

/// A finished read: the reply body is in `message` from byte `HEADER_SIZE` on, `body_size`
/// bytes long. The caller fills the header.
#[derive(Debug)]
pub struct ReadReply {
    pub id: ReadId,
    pub message: Message,
    pub body_size: usize,
}

/// Why this replica cannot take the cluster's state: the cluster's grid (what the committed log
/// may use) is larger than this replica's data file holds.
pub const GRID_TOO_SMALL: &str = "the cluster's grid is larger than this data file's: format a \
     data file at least as large as the peers' (--grid-size) and rejoin with it";

/// Sizes derived once from the cluster's `Config`.
///
/// Two of them are this replica's own: `grid_blocks` and `levels` come from its data file's
/// grid, which may be larger than its peers' (a grid grows by replacing replicas with larger
/// files). What the committed log may use is the cluster's grid limit, part of the replicated
/// state (`StateMachine::grid_blocks_limit`). Everything that shapes a block (the root's lists)
/// is sized for the largest grid there can be, so every replica writes the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Blocks in this replica's grid.
    pub grid_blocks: u64,
    /// Skip-list levels a chain in this replica's grid can use (ordinals never exceed
    /// `grid_blocks`): what the streams table in memory holds per stream.
    pub levels: usize,
    pub streams_max: u32,
    pub event_size_max: u32,
    pub reply_body_size_max: usize,
    /// The most blocks one commit can seal (see `seals_per_commit_max`).
    pub seals_per_commit_max: usize,
    /// Grid blocks a full streams table takes in the largest grid (the root holding none of
    /// its entries).
    pub table_blocks_max: u64,
    /// Blocks the largest checkpoint takes in the largest grid: a full table and a tail. The
    /// root has a slot for each; the reserve kept for the next checkpoint is smaller, sized for
    /// the cluster's grid (`checkpoint_blocks_max`). A grid too small for that reserve (as in
    /// some protocol tests) is valid: every create gets `storage_full`.
    pub metadata_blocks_max: usize,
    /// The most blocks the free list holds: the blocks of the two checkpoints before.
    pub free_blocks_max: usize,
    /// Block buffers for the open block and for writes.
    pub write_buffers: usize,
}

/// Skip levels of the largest grid there can be.
const GRID_LEVELS_MAX: usize = frontier_count(GRID_BLOCKS_MAX) as usize;

impl Limits {
    pub fn new(config: &Config) -> Limits {
        assert!(config.invalid().is_none());
        let grid_blocks = config.grid_size / BLOCK_SIZE as u64;
        let levels = frontier_count(grid_blocks) as usize;
        assert!((1..=GRID_LEVELS_MAX).contains(&levels));
        let reply_body_size_max = config.message_size_max as usize - HEADER_SIZE;
        let reply_room = reply_body_size_max - size_of::<ReadReplyHeader>();
        let event_room = reply_room - size_of::<EventRecord>();
        let event_size_max = EVENT_SIZE_MAX.min(event_room as u32);
        let seals_per_commit_max =
            seals_per_commit_max(reply_body_size_max as u64, levels, event_size_max);
        let table_blocks_max = table_blocks_max(config.streams_max, GRID_LEVELS_MAX);
        let metadata_blocks_max = table_blocks_max as usize + 1;
        assert!(checkpoint::root_fits(metadata_blocks_max), "Config::invalid checks it");
        let limits = Limits {
            grid_blocks,
            levels,
            streams_max: config.streams_max,
            event_size_max,
            reply_body_size_max,
            seals_per_commit_max,
            table_blocks_max,
            metadata_blocks_max,
            free_blocks_max: 2 * metadata_blocks_max,
            write_buffers: seals_per_commit_max + 1 + GRID_WRITES_PIPELINE,
        };
        assert!(record_size(u64::from(event_size_max)) <= reply_room as u64);
        limits
    }
}

/// The most blocks one commit of a `body_size`-byte request can seal. An event of `d` padded
/// bytes takes `8 + d` bytes of request and `56 + d` of block (`d >= 8`: at most `expansion`,
/// 4, times as many); a batch takes at least 40 bytes of request and adds at most one
/// directory entry per block it touches. A sealed block other than the first is more than full
/// minus one record and one entry, so
/// `seals * (fill - entry) <= fill + expansion * body + batches * entry`.
fn seals_per_commit_max(body_size: u64, levels: usize, event_size_max: u32) -> usize {
    let expansion = record_size(8).div_ceil(size_of::<EventHeader>() as u64 + 8);
    let entry = directory_entry_size(levels as u32);
    let fill =
        (BLOCK_SIZE - BLOCK_HEADER_SIZE) as u64 - record_size(u64::from(event_size_max)) - entry;
    let batches = body_size / 40;
    let content = expansion * body_size + batches * entry;
    assert!(fill > entry);
    (fill + content).div_ceil(fill - entry) as usize
}

/// True if a grid of `blocks` can hold a stream's events for a cluster of `streams_max`
/// streams: room for the checkpoint's reserve (a full streams table, which grows through the
/// skip levels with the grid, and a tail), the open block and one more. `format` refuses a
/// grid that cannot, on which every create or every append would answer `storage_full`.
pub fn grid_holds_a_stream(streams_max: u32, blocks: u64) -> bool {
    checkpoint_blocks_max(streams_max, blocks) < blocks
}

/// The fewest grid blocks from which every grid can hold a stream (`grid_holds_a_stream`):
/// the reserve grows by a skip level at each power of two, so a grid just past one can fail
/// where a smaller one holds. Grids of one level (from `2^(level-1)` to `2^level - 1`
/// blocks) hold from their reserve up; the answer is where the highest level that fails at its
/// start begins to hold.
pub fn grid_blocks_min(streams_max: u32) -> u64 {
    let failing = (1..=GRID_LEVELS_MAX as u32)
        .rev()
        .find(|level| !grid_holds_a_stream(streams_max, 1 << (level - 1)))
        .expect("a grid of one block holds nothing");
    let start: u64 = 1 << (failing - 1);
    let needed = checkpoint_blocks_max(streams_max, start) + 1;
    let blocks = needed.min(1 << failing).max(start);
    assert!(grid_holds_a_stream(streams_max, blocks));
    blocks
}

/// Why a checkpoint of the largest streams table of `config_streams_max` streams could not be
/// written, or `None`: its root must list the blocks of the largest checkpoint in the largest
/// grid, and the free ones (the root's layout is the same whatever a replica's grid size).
pub fn config_invalid(config_streams_max: u32) -> Option<&'static str> {
    let metadata_blocks_max = table_blocks_max(config_streams_max, GRID_LEVELS_MAX) as usize + 1;
    if !checkpoint::root_fits(metadata_blocks_max) {
        return Some("streams_max too large: a checkpoint could not list its blocks");
    }
    None
}

/// The most blocks a checkpoint takes in a grid of `grid_limit` blocks (a full streams table,
/// whose entries grow by a skip pointer at each power of two of the grid, and a tail): what
/// the grid keeps for the next checkpoint (`checkpoint_reserve`) and what `format` names.
pub fn checkpoint_blocks_max(streams_max: u32, grid_limit: u64) -> u64 {
    table_blocks_max(streams_max, frontier_count(grid_limit) as usize) + 1
}

/// Blocks left for events before `storage_full`, in a cluster whose grid is `grid_limit`
/// blocks, with the grid used up to `grid_head` and `free` blocks on the free list: beyond
/// them, the open block's and the next checkpoint's.
pub fn grid_room_blocks(limits: &Limits, grid_limit: u64, grid_head: u64, free: usize) -> u64 {
    let reserve = checkpoint_reserve(limits, grid_limit, free);
    grid_limit.saturating_sub(grid_head + 1 + reserve)
}

/// Blocks kept at `grid_head` for the next checkpoint: what the largest takes in the cluster's
/// grid beyond the `free` blocks of the free list.
fn checkpoint_reserve(limits: &Limits, grid_limit: u64, free: usize) -> u64 {
    checkpoint_blocks_max(limits.streams_max, grid_limit).saturating_sub(free as u64)
}

/// The directory entry of `stream`'s events in the open block, with `pointer_count` pointers
/// to follow (none in a tail).
fn open_directory_entry(stream: &Stream, pointer_count: u32) -> DirectoryEntry {
    DirectoryEntry {
        stream: stream.id,
        ordinal: stream.blocks + 1,
        offset_first: stream.sealed_end(),
        record_first: stream.open_record_first,
        event_count: stream.open_event_count,
        pointer_count,
        reserved: 0,
    }
}

/// Writes `header` into a built block's `bytes`, then the block's checksum into it; returns
/// the checksum.
fn block_finish(bytes: &mut [u8], header: &BlockHeader) -> Checksum {
    bytes[..BLOCK_HEADER_SIZE].copy_from_slice(header.as_bytes());
    let checksum = block_checksum(bytes);
    bytes[..size_of::<Checksum>()].copy_from_slice(&checksum.to_le_bytes());
    checksum
}

/// Grid blocks the streams table takes when every stream exists with a full frontier, counting
/// none in the root (which holds the root's lists first).
fn table_blocks_max(streams_max: u32, levels: usize) -> u64 {
    let entry = (size_of::<TableEntry>() + levels * size_of::<BlockPointer>()) as u64;
    let others = (BLOCK_SIZE - BLOCK_HEADER_SIZE) as u64 / entry;
    1 + u64::from(streams_max).div_ceil(others)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    New,
    Opening,
    Open,
    Failed,
}

/// The log's chain of event blocks.
#[derive(Clone, Copy, Debug)]
struct Log {
    grid_head: u64,
    /// The cluster's grid, in blocks (`StateMachine::grid_blocks_limit`).
    grid_limit: u64,
    position_next: u64,
    /// Sealed event blocks: the ordinal of the newest.
    blocks: u64,
    frontier: [BlockPointer; SKIP_LEVELS_MAX],
}

impl Log {
    fn new() -> Log {
        Log {
            grid_head: 0,
            grid_limit: 0,
            position_next: 0,
            blocks: 0,
            frontier: [BlockPointer::default(); _],
        }
    }
}

/// The block events are appended to. It holds a buffer only while it holds events.
struct OpenBlock {
    buffer: Option<Message>,
    records_size: u32,
    directory_size: u32,
    event_count: u32,
    /// Stream entries with events in the block, in order of their first event.
    streams: Vec<u32>,
    op_min: Op,
    op_max: Op,
    position_first: u64,
}

impl OpenBlock {
    /// True if `size` more bytes of records and directory fit.
    fn fits(&self, size: u64) -> bool {
        block_fits(u64::from(self.records_size), u64::from(self.directory_size), size)
    }

    /// Writes `record` and its event's zero-padded payload after the records; returns where.
    fn record_write(&mut self, record: &EventRecord, event: &Event<'_>) -> usize {
        assert_eq!(record.event_header(), event.header());
        let size = record_size(record.event_header().payload_size()) as usize;
        assert!(self.fits(size as u64));
        let at = BLOCK_HEADER_SIZE + self.records_size as usize;
        let bytes = self.buffer.as_mut().expect("a buffer to write to").buffer_mut_unique();
        let (head, mut tail) = bytes[at..at + size].split_at_mut(size_of::<EventRecord>());
        head.copy_from_slice(record.as_bytes());
        for piece in [event.event_type, event.metadata, event.data] {
            let (into, rest) = tail.split_at_mut(piece.len());
            into.copy_from_slice(piece);
            tail = rest;
        }
        tail.fill(0);
        self.records_size += size as u32;
        at
    }

    fn reset(&mut self, position_first: u64) {
        assert!(self.buffer.is_none());
        self.records_size = 0;
        self.directory_size = 0;
        self.event_count = 0;
        self.streams.clear();
        self.op_min = Op(0);
        self.op_max = Op(0);
        self.position_first = position_first;
    }
}

/// A block being written, kept so that reads can be served from it meanwhile.
struct Write {
    address: u64,
    buffer: Message,
}

/// Which of our requests a completion answers: the token index is `kind << 24 | slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenKind {
    Write = 0,
    Read = 1,
    Open = 2,
}

impl TokenKind {
    fn from_u32(value: u32) -> TokenKind {
        match value {
            0 => TokenKind::Write,
            1 => TokenKind::Read,
            2 => TokenKind::Open,
            _ => unreachable!("a token of ours"),
        }
    }
}

const TOKEN_SLOT_BITS: u32 = 24;

fn token(kind: TokenKind, slot: usize) -> IoToken {
    assert!(slot < 1 << TOKEN_SLOT_BITS);
    IoToken { owner: IoOwner::Grid, index: (kind as u32) << TOKEN_SLOT_BITS | slot as u32 }
}

pub struct StateMachine {
    config: Config,
    layout: Layout,
    limits: Limits,
    status: Status,
    /// Block buffers: `limits.write_buffers` shared by the open block and writes, plus one
    /// owned by each read slot for good.
    pool: MessagePool,
    streams: Streams,
    log: Log,
    open_block: OpenBlock,
    /// Something was committed since the last checkpoint.
    dirty: bool,
    op_last: Op,
    checkpoint_last: CheckpointState,
    /// The blocks of the last checkpoint (root first), and of the one being written.
    metadata_last: Vec<u32>,
    metadata_next: Vec<u32>,
    /// The checksums of `metadata_next` as a checkpoint builds them, or of `metadata_last` as
    /// an open reads them (the root's from the superblock, the others' from the root).
    metadata_checksums: Vec<Checksum>,
    /// Blocks the next checkpoint may write, lowest first (`checkpoint.rs`).
    free: Vec<u32>,
    blocks_reused: u64,
    tails_written: u64,
    checkpointing: Option<Checkpointing>,
    opening: Option<Opening>,
    open_result: Option<Result<(), &'static str>>,
    writes: Vec<Option<Write>>,
    reads: Vec<ReadSlot>,
    reads_done: VecDeque<usize>,
    read_id_next: u64,
    /// The last grid block a read found corrupt (for repair).
    block_faulty_last: Option<u64>,
    /// The last grid block a read or the open found bad, until the replica takes it.
    block_fault: Option<BlockFault>,
}

impl StateMachine {
    /// Allocates every table and buffer the state machine will use.
    pub fn new(config: &Config) -> StateMachine {
        let limits = Limits::new(config);
        let pool = MessagePool::new(limits.write_buffers + GRID_READS_MAX, BLOCK_SIZE);
        let reads = (0..GRID_READS_MAX).map(|_| ReadSlot::new(pool.get())).collect();
        let open_streams_max = (config.streams_max as usize).min(BLOCK_SIZE / 88);
        StateMachine {
            config: *config,
            layout: Layout::new(config),
            limits,
            status: Status::New,
            pool,
            streams: Streams::new(config.streams_max, limits.levels),
            log: Log::new(),
            open_block: OpenBlock {
                buffer: None,
                records_size: 0,
                directory_size: 0,
                event_count: 0,
                streams: Vec::with_capacity(open_streams_max),
                op_min: Op(0),
                op_max: Op(0),
                position_first: 0,
            },
            dirty: false,
            op_last: Op(0),
            checkpoint_last: CheckpointState::default(),
            metadata_last: Vec::with_capacity(limits.metadata_blocks_max),
            metadata_next: Vec::with_capacity(limits.metadata_blocks_max),
            metadata_checksums: Vec::with_capacity(limits.metadata_blocks_max),
            // The most it holds after a checkpoint and, before it, the blocks released then.
            free: Vec::with_capacity(limits.free_blocks_max + limits.metadata_blocks_max),
            blocks_reused: 0,
            tails_written: 0,
            checkpointing: None,
            opening: None,
            open_result: None,
            writes: (0..limits.write_buffers).map(|_| None).collect(),
            reads,
            reads_done: VecDeque::with_capacity(GRID_READS_MAX),
            read_id_next: 1,
            block_faulty_last: None,
            block_fault: None,
        }
    }

    /// What `new` allocates for `config`: the streams table, and the block buffers.
    pub fn memory_bytes(config: &Config) -> (usize, usize) {
        let limits = Limits::new(config);
        let table = Streams::memory_bytes(config.streams_max, limits.levels);
        (table, (limits.write_buffers + GRID_READS_MAX) * BLOCK_SIZE)
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn stream_count(&self) -> u32 {
        self.streams.count()
    }

    /// The log position the next committed event gets (= events committed so far).
    pub fn position_next(&self) -> u64 {
        self.log.position_next
    }

    /// The blocks of the last checkpoint (the root first), unless an open or a checkpoint is in
    /// progress.
    pub fn checkpoint_blocks(&self) -> Option<&[u32]> {
        let settled = self.status == Status::Open && self.checkpointing.is_none();
        settled.then_some(&self.metadata_last[..])
    }

    /// The free list: blocks of older checkpoints that the next checkpoint may write over.
    pub fn free_blocks(&self) -> &[u32] {
        &self.free
    }

    /// Since `new`: blocks checkpoints took from the free list, and tails they wrote.
    pub fn checkpoint_counts(&self) -> (u64, u64) {
        (self.blocks_reused, self.tails_written)
    }

    /// False for a block of the free list or of a checkpoint while one is written: the
    /// scrubber leaves those alone (a free block may hold anything, one being written is in
    /// flight, and the checksums of the last checkpoint's are not at hand then).
    pub fn block_settled(&self, address: u64) -> bool {
        let Ok(address) = u32::try_from(address) else { return true };
        let checkpoint_block =
            self.metadata_next.contains(&address) || self.metadata_last.contains(&address);
        let writing = self.checkpointing.is_some() && checkpoint_block;
        !writing && self.free.binary_search(&address).is_err()
    }

    /// The checksum of the last checkpoint's block at `address`, if it is one (and no
    /// checkpoint is being written): a repair must fetch exactly that block, for a peer may
    /// hold a newer checkpoint's there. Event blocks never change, so any sound copy is theirs.
    pub fn checkpoint_block_checksum(&self, address: u64) -> Option<Checksum> {
        let address = u32::try_from(address).ok()?;
        if self.status != Status::Open || self.checkpointing.is_some() {
            return None;
        }
        let index = self.metadata_last.iter().position(|block| *block == address)?;
        Some(self.metadata_checksums[index])
    }

    /// Event blocks sealed so far (the ordinal of the newest).
    pub fn event_blocks(&self) -> u64 {
        self.log.blocks
    }

    pub fn grid_head(&self) -> u64 {
        self.log.grid_head
    }

    /// The address of the last grid block a read found corrupt, lost or misdirected. Reads
    /// whose skip-list descent passes through it fail with `block_corrupt` until it is
    /// repaired (by block address and the checksum its pointers hold).
    pub fn block_faulty_last(&self) -> Option<u64> {
        self.block_faulty_last
    }

    /// The last grid block a read or the open found bad, once: the replica fetches it again
    /// from a peer (by address, checked against the checksum) and then retries.
    pub fn block_fault_take(&mut self) -> Option<BlockFault> {
        self.block_fault.take()
    }

    /// True when `commit` may run: the state machine is open, no checkpoint is in progress, and
    /// enough block buffers are free for the most blocks one commit can seal.
    pub fn commit_ready(&self) -> bool {
        if self.status != Status::Open || self.checkpointing.is_some() {
            return false;
        }
        let needed =
            self.limits.seals_per_commit_max + usize::from(self.open_block.buffer.is_none());
        self.pool.free_count() >= needed
    }

    /// Applies committed `op` and writes its reply into `reply_body`; returns the reply size:
    /// 8 bytes per stream created, 16 per batch appended (`reply_body` must hold that much:
    /// `REPLY_SIZE_MAX` does for a client's request, a packed op's takes more).
    pub fn commit<S: Storage>(
        &mut self,
        storage: &mut S,
        op: Op,
        timestamp: u64,
        operation: Operation,
        body: &[u8],
        reply_body: &mut [u8],
    ) -> usize {
        assert!(self.commit_ready());
        assert!(op > self.op_last, "ops commit in order");
        assert!(!operation.is_read());
        let request = Request::parse(operation, body).expect("the primary parsed the request");
        let reply_size = match request {
            Request::CreateStreams(entries) => {
                CreateStreams::count(&entries) * size_of::<CreateStreamResult>()
            }
            Request::Append(batches) => batches.count() * size_of::<AppendResult>(),
            Request::Import(batches) => batches.count() * size_of::<AppendResult>(),
            Request::Empty => 0,
        };
        assert!(reply_body.len() >= reply_size);
        self.op_last = op;
        let size = match request {
            Request::CreateStreams(entries) => self.create_streams(entries, reply_body),
            Request::Append(batches) => {
                self.append_batches(storage, op, timestamp, batches, reply_body)
            }
            Request::Import(batches) => {
                let mut count = 0;
                for (head, batch) in batches {
                    let result = self.import_batch(storage, op, &head, &batch);
                    let size = size_of::<AppendResult>();
                    reply_body[count * size..][..size].copy_from_slice(result.as_bytes());
                    count += 1;
                }
                count * size_of::<AppendResult>()
            }
            Request::Empty => 0,
        };
        assert_eq!(size, reply_size);
        size
    }

    /// Routes a completion of an `IoOwner::Grid` request.
    pub fn on_completion<S: Storage>(&mut self, storage: &mut S, completion: Completion) {
        assert_eq!(completion.request.token.owner, IoOwner::Grid);
        let index = completion.request.token.index;
        let slot = (index & ((1 << TOKEN_SLOT_BITS) - 1)) as usize;
        match TokenKind::from_u32(index >> TOKEN_SLOT_BITS) {
            TokenKind::Write => self.block_write_complete(storage, slot, completion),
            TokenKind::Read => self.read_block_complete(storage, slot, completion),
            TokenKind::Open => self.open_read_complete(storage, completion),
        }
    }

    fn create_streams(&mut self, entries: CreateStreams<'_>, reply_body: &mut [u8]) -> usize {
        let result_size = size_of::<CreateStreamResult>();
        let count = entries.count();
        assert!(reply_body.len() >= count * result_size);
        for (index, request) in entries.enumerate() {
            let result =
                CreateStreamResult { result: self.create_stream(&request) as u32, reserved: 0 };
            reply_body[index * result_size..][..result_size].copy_from_slice(result.as_bytes());
        }
        count * result_size
    }

    fn create_stream(&mut self, request: &CreateStream) -> ResultCode {
        if !stream_id_valid(request.stream) {
            return ResultCode::StreamIdInvalid;
        }
        if self.streams.lookup(request.stream).is_some() {
            return ResultCode::StreamExists;
        }
        if self.streams.is_full() {
            return ResultCode::StreamsFull;
        }
        if !self.grid_room(0, self.open_block.event_count > 0) {
            return ResultCode::StorageFull;
        }
        let chain = chain_seed(request.stream, request.tenant);
        self.streams.insert(request.stream, request.tenant, chain);
        self.dirty = true;
        ResultCode::Ok
    }

    /// True if sealing `seals` more blocks (and the open block, if `open_after`) still leaves
    /// room for the largest checkpoint next, beyond the free list.
    fn grid_room(&self, seals: u64, open_after: bool) -> bool {
        let reserve = checkpoint_reserve(&self.limits, self.log.grid_limit, self.free.len());
        let needed = self.log.grid_head + seals + u64::from(open_after) + reserve;
        needed <= self.log.grid_limit
    }

    /// Bytes of grid blocks in use (event blocks, checkpoints, not the free list), and bytes
    /// of blocks left for events before `storage_full`: what `stream_info` reports.
    pub fn grid_use(&self) -> (u64, u64) {
        let block = BLOCK_SIZE as u64;
        let used = self.log.grid_head - self.free.len() as u64;
        let room = grid_room_blocks(
            &self.limits,
            self.log.grid_limit,
            self.log.grid_head,
            self.free.len(),
        );
        (used * block, room * block)
    }

    /// The cluster's grid, in blocks: what the committed log may use (see `Limits`). Zero until
    /// the first op is committed.
    pub fn grid_blocks_limit(&self) -> u64 {
        self.log.grid_limit
    }

    /// Applies the grid size a committed prepare carries (`views::Prepare::grid_blocks`), before
    /// the prepare itself: the cluster's grid only grows. The caller checks that this replica's
    /// grid holds it (`GRID_TOO_SMALL`). The next checkpoint records it (`CheckpointState`),
    /// without writing a block for it.
    pub fn grid_limit_raise(&mut self, grid_blocks: u64) {
        assert_eq!(self.status, Status::Open);
        assert!(grid_blocks <= self.limits.grid_blocks, "{GRID_TOO_SMALL}");
        self.log.grid_limit = self.log.grid_limit.max(grid_blocks);
    }

    fn append_batches<S: Storage>(
        &mut self,
        storage: &mut S,
        op: Op,
        timestamp: u64,
        batches: AppendBatches<'_>,
        reply_body: &mut [u8],
    ) -> usize {
        let result_size = size_of::<AppendResult>();
        let mut count = 0;
        for batch in batches {
            let result = self.append_batch(storage, op, timestamp, &batch);
            reply_body[count * result_size..][..result_size].copy_from_slice(result.as_bytes());
            count += 1;
        }
        count * result_size
    }

    fn append_batch<S: Storage>(
        &mut self,
        storage: &mut S,
        op: Op,
        timestamp: u64,
        batch: &Batch<'_>,
    ) -> AppendResult {
        let (events, batch) = (batch.events(), batch.header);
        let reject = |result: ResultCode, offset: u64| AppendResult {
            result: result as u32,
            reserved: 0,
            offset,
        };
        if !stream_id_valid(batch.stream) {
            return reject(ResultCode::StreamIdInvalid, 0);
        }
        let entry = self.streams.lookup(batch.stream);
        let offset_first = entry.map_or(0, |entry| self.streams.get(entry).offset_next);
        match (entry, batch.expected_offset) {
            (None, EXPECTED_NO_STREAM) if self.streams.is_full() => {
                return reject(ResultCode::StreamsFull, 0);
            }
            (None, EXPECTED_NO_STREAM) => {}
            (None, _) => return reject(ResultCode::StreamNotFound, 0),
            (Some(_), EXPECTED_OFFSET_ANY) => {}
            (Some(_), expected) if expected == offset_first => {}
            (Some(_), _) => return reject(ResultCode::ExpectedOffsetWrong, offset_first),
        }
        if let Some(result) = self.events_refused(events) {
            return reject(result, offset_first);
        }
        let seals = self.append_seals_needed(entry, events);
        if !self.grid_room(seals, true) {
            return reject(ResultCode::StorageFull, offset_first);
        }
        let entry = entry.unwrap_or_else(|| {
            // "No stream": created here, once every check passed, so the batch is atomic.
            self.streams.insert(batch.stream, 0, chain_seed(batch.stream, 0))
        });
        let mut sealed = 0;
        for event in events {
            sealed += u64::from(self.append_event(storage, op, timestamp, entry, &event));
        }
        assert_eq!(sealed, seals);
        assert_eq!(
            self.streams.get(entry).offset_next,
            offset_first + u64::from(batch.event_count)
        );
        self.dirty = true;
        reject(ResultCode::Ok, offset_first)
    }

    /// Why an append or import of `events` is refused whatever the stream: an event without a
    /// type, or larger than the cluster's maximum.
    fn events_refused(&self, events: Events<'_>) -> Option<ResultCode> {
        for event in events {
            if event.event_type.is_empty() {
                return Some(ResultCode::EventTypeEmpty);
            }
            if event.header().payload_size() > u64::from(self.limits.event_size_max) {
                return Some(ResultCode::EventTooLarge);
            }
        }
        None
    }

    /// Appends an import batch (`ImportBatch`): only at the log's next position and the
    /// stream's next offset, with the tenant the stream has (creating it at offset 0), and only
    /// if its events chain to the checksum it carries; then as an append, with the batch's
    /// timestamp. All of the batch or none of it.
    fn import_batch<S: Storage>(
        &mut self,
        storage: &mut S,
        op: Op,
        head: &ImportBatch,
        batch: &Batch<'_>,
    ) -> AppendResult {
        let (stream_id, events) = (head.append.stream, batch.events());
        let reject = |result: ResultCode, offset: u64| AppendResult {
            result: result as u32,
            reserved: 0,
            offset,
        };
        if !stream_id_valid(stream_id) {
            return reject(ResultCode::StreamIdInvalid, 0);
        }
        if head.position != self.log.position_next {
            return reject(ResultCode::ImportPositionWrong, self.log.position_next);
        }
        let entry = self.streams.lookup(stream_id);
        let (offset_first, tenant, chain) = match entry {
            Some(entry) => {
                let stream = self.streams.get(entry);
                (stream.offset_next, stream.tenant, stream.chain)
            }
            None if self.streams.is_full() => return reject(ResultCode::StreamsFull, 0),
            None => (0, head.tenant, chain_seed(stream_id, head.tenant)),
        };
        if head.append.expected_offset != offset_first || head.tenant != tenant {
            return reject(ResultCode::ExpectedOffsetWrong, offset_first);
        }
        if let Some(result) = self.events_refused(events) {
            return reject(result, offset_first);
        }
        let records = (0..).map(|index| EventRecord {
            stream: stream_id,
            offset: offset_first + index,
            position: head.position + index,
            timestamp: head.timestamp,
            chain: ChecksumBytes::ZERO,
            data_size: 0,
            metadata_size: 0,
            type_size: 0,
            reserved: 0,
        });
        let chain_last = events.zip(records).fold(chain, |chain, (event, record)| {
            let header = event.header();
            let record = EventRecord {
                data_size: header.data_size,
                metadata_size: header.metadata_size,
                type_size: header.type_size,
                ..record
            };
            chain_next(chain, &record, &event)
        });
        if chain_last != Checksum::from(head.chain) {
            return reject(ResultCode::ImportChainWrong, offset_first);
        }
        let seals = self.append_seals_needed(entry, events);
        if !self.grid_room(seals, true) {
            return reject(ResultCode::StorageFull, offset_first);
        }
        let entry = entry.unwrap_or_else(|| self.streams.insert(stream_id, tenant, chain));
        for event in events {
            self.append_event(storage, op, head.timestamp, entry, &event);
        }
        assert_eq!(self.streams.get(entry).chain, chain_last);
        self.dirty = true;
        reject(ResultCode::Ok, offset_first)
    }

    /// The bytes a new directory entry for stream `entry` takes in the open block, or 0 if the
    /// stream already has events there.
    fn entry_size_new(&self, entry: u32) -> u64 {
        let stream = self.streams.get(entry);
        if stream.open_event_count > 0 {
            0
        } else {
            directory_entry_size(skip_pointer_count(stream.blocks + 1))
        }
    }

    /// How many blocks appending `events` to stream `entry` (a new stream if `None`) will seal:
    /// the placement of `append_event`, run without changing anything.
    fn append_seals_needed(&self, entry: Option<u32>, events: Events<'_>) -> u64 {
        let stream = entry.map_or(Stream::default(), |entry| *self.streams.get(entry));
        let mut records_size = u64::from(self.open_block.records_size);
        let mut directory_size = u64::from(self.open_block.directory_size);
        let mut in_block = stream.open_event_count > 0;
        let mut blocks = stream.blocks;
        let mut seals = 0;
        for event in events {
            let record = record_size(event.header().payload_size());
            let mut entry_size =
                if in_block { 0 } else { directory_entry_size(skip_pointer_count(blocks + 1)) };
            if !block_fits(records_size, directory_size, record + entry_size) {
                assert!(records_size > 0, "an event always fits an empty block");
                seals += 1;
                blocks += u64::from(in_block);
                records_size = 0;
                directory_size = 0;
                entry_size = directory_entry_size(skip_pointer_count(blocks + 1));
            }
            records_size += record;
            directory_size += entry_size;
            in_block = true;
        }
        seals
    }

    /// Appends one event to the open block, sealing it first if the event does not fit.
    /// Returns true if it sealed.
    fn append_event<S: Storage>(
        &mut self,
        storage: &mut S,
        op: Op,
        timestamp: u64,
        entry: u32,
        event: &Event<'_>,
    ) -> bool {
        let header = event.header();
        let size = record_size(header.payload_size());
        let sealed = !self.open_block.fits(size + self.entry_size_new(entry));
        if sealed {
            self.seal(storage);
        }
        if self.open_block.buffer.is_none() {
            self.open_block.buffer = Some(self.pool.get());
        }
        let entry_size = self.entry_size_new(entry);
        assert!(self.open_block.fits(size + entry_size));
        let stream = self.streams.get_mut(entry);
        let mut record = EventRecord {
            stream: stream.id,
            offset: stream.offset_next,
            position: self.log.position_next,
            timestamp,
            chain: ChecksumBytes::ZERO,
            data_size: header.data_size,
            metadata_size: header.metadata_size,
            type_size: header.type_size,
            reserved: 0,
        };
        record.chain = ChecksumBytes::from(chain_next(stream.chain, &record, event));
        let open = &mut self.open_block;
        let at = open.record_write(&record, event);
        if stream.open_event_count == 0 {
            stream.open_record_first = at as u32;
            assert!(open.streams.len() < open.streams.capacity());
            open.streams.push(entry);
            open.directory_size += entry_size as u32;
        }
        stream.open_event_count += 1;
        stream.offset_next += 1;
        stream.chain = Checksum::from(record.chain);
        if open.event_count == 0 {
            assert_eq!(open.position_first, self.log.position_next);
            open.op_min = op;
        }
        open.op_max = op;
        open.event_count += 1;
        self.log.position_next += 1;
        sealed
    }

    /// Seals the open block at `grid_head`: writes its directory and header, moves every
    /// frontier it joins forward, and submits its write.
    fn seal<S: Storage>(&mut self, storage: &mut S) {
        assert!(self.open_block.event_count > 0);
        let address = self.log.grid_head;
        assert!(address < self.limits.grid_blocks);
        let mut buffer = self.open_block.buffer.take().expect("an open block with events");
        let bytes = buffer.buffer_mut_unique();
        let directory_end = self.seal_directory(bytes);
        bytes[directory_end..].fill(0);
        let ordinal = self.log.blocks + 1;
        let header = self.seal_header(address, ordinal);
        let checksum = block_finish(bytes, &header);
        let address_u32 = u32::try_from(address).expect("grid addresses fit u32");
        for &entry in &self.open_block.streams {
            let stream = self.streams.get_mut(entry);
            let stream_ordinal = stream.blocks + 1;
            stream.blocks = stream_ordinal;
            stream.open_event_count = 0;
            stream.open_record_first = 0;
            let key_end = stream.offset_next;
            let pointer = BlockPointer::new(key_end, address_u32, checksum);
            frontier_advance(self.streams.frontier_mut(entry), stream_ordinal, pointer);
        }
        let pointer = BlockPointer::new(self.log.position_next, address_u32, checksum);
        frontier_advance(&mut self.log.frontier, ordinal, pointer);
        self.log.blocks = ordinal;
        self.log.grid_head += 1;
        self.open_block.reset(self.log.position_next);
        self.block_write(storage, address, buffer);
    }

    /// Writes the open block's directory after its records; returns where it ends.
    fn seal_directory(&self, bytes: &mut [u8]) -> usize {
        let mut at = BLOCK_HEADER_SIZE + self.open_block.records_size as usize;
        for &entry in &self.open_block.streams {
            let stream = self.streams.get(entry);
            let pointer_count = skip_pointer_count(stream.blocks + 1);
            let directory_entry = open_directory_entry(stream, pointer_count);
            bytes[at..at + size_of::<DirectoryEntry>()].copy_from_slice(directory_entry.as_bytes());
            at += size_of::<DirectoryEntry>();
            let frontier = self.streams.frontier(entry);
            for pointer in &frontier[..pointer_count as usize] {
                assert!(pointer.key_end > 0 && pointer.key_end <= stream.sealed_end());
                bytes[at..at + size_of::<BlockPointer>()].copy_from_slice(pointer.as_bytes());
                at += size_of::<BlockPointer>();
            }
        }
        let directory_size = at - BLOCK_HEADER_SIZE - self.open_block.records_size as usize;
        assert_eq!(directory_size, self.open_block.directory_size as usize);
        at
    }

    fn seal_header(&self, address: u64, ordinal: u64) -> BlockHeader {
        let open = &self.open_block;
        let mut header = BlockHeader::new_zeroed();
        header.kind = BlockKind::Events as u8;
        header.version = BLOCK_VERSION;
        header.cluster = self.config.cluster.get();
        header.address = address;
        header.ordinal = ordinal;
        header.op_min = open.op_min.get();
        header.op_max = open.op_max.get();
        header.position_first = open.position_first;
        header.position_end = self.log.position_next;
        header.records_size = open.records_size;
        header.directory_count = open.streams.len() as u32;
        header.directory_size = open.directory_size;
        let pointer_count = skip_pointer_count(ordinal) as usize;
        header.log_pointer_count = pointer_count as u16;
        header.log_pointers[..pointer_count].copy_from_slice(&self.log.frontier[..pointer_count]);
        assert_eq!(header.position_end - header.position_first, u64::from(open.event_count));
        header
    }

    fn block_offset(&self, address: u64) -> u64 {
        assert!(address < self.limits.grid_blocks);
        self.layout.offset(Zone::Grid, address * BLOCK_SIZE as u64)
    }

    /// Submits the write of a sealed block, keeping a handle to serve reads until it lands.
    fn block_write<S: Storage>(&mut self, storage: &mut S, address: u64, buffer: Message) {
        assert_eq!(
            block_checksum(buffer.buffer()),
            Checksum(block_header(buffer.buffer()).checksum.get())
        );
        let slot = self.writes.iter().position(Option::is_none).expect("a write slot per buffer");
        let request = IoRequest {
            token: token(TokenKind::Write, slot),
            // Only a checkpoint makes the block reachable after a restart, and the superblock
            // update that records it syncs first; lost before that, replay writes it again.
            kind: IoKind::WriteCached,
            zone: Zone::Grid,
            offset: self.block_offset(address),
            length: BLOCK_SIZE,
            buffer_offset: 0,
        };
        self.writes[slot] = Some(Write { address, buffer: buffer.clone() });
        storage.submit(request, buffer);
    }

    fn block_write_complete<S: Storage>(
        &mut self,
        storage: &mut S,
        slot: usize,
        completion: Completion,
    ) {
        let write = self.writes[slot].take().expect("a write in flight");
        assert_eq!(completion.request.offset, self.block_offset(write.address));
        if let Err(error) = completion.result {
            panic!("grid write of block {} failed: {error}", write.address);
        }
        drop(write);
        drop(completion);
        self.checkpoint_continue(storage);
    }

    fn writes_in_flight(&self) -> usize {
        self.writes.iter().filter(|write| write.is_some()).count()
    }

    /// A block still being written, served from memory.
    fn block_in_memory(&self, address: u64) -> Option<Message> {
        self.writes
            .iter()
            .flatten()
            .find(|write| write.address == address)
            .map(|write| write.buffer.clone())
    }
}
