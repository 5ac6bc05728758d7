//! State sync: how a replica that fell behind its peers' WAL window (the ops it lacks were
//! overwritten there after a checkpoint) catches up. It fetches a peer's latest durable
//! checkpoint instead of the ops:
//!
//! 1. **Checkpoint.** `request_sync_checkpoint` → `sync_checkpoint`: the checkpoint op and the
//!    checksum of its prepare, the event store's checkpoint state (grid head, streams table
//!    location and checksums) and the client session table, from the peer's superblock.
//! 2. **Blocks.** The grid is a deterministic function of the committed log, and event
//!    blocks are never overwritten, so the event blocks this replica already wrote are the
//!    peer's too: it fetches only `[its grid head, the checkpoint's grid head)`, each in chunks
//!    (`request_blocks` → `block`) that fit a message, in any order. A block is taken once the
//!    checksum of its chunks, combined, equals the checksum its header names; otherwise it is
//!    fetched again (from another peer on alternate attempts). The checkpoint's own blocks
//!    (root, table, tail) may lie below this replica's head, in blocks its peers reused (the
//!    free list, `state_machine::checkpoint`): the open after the install checks each against
//!    the checksum that names it (the root's, from the superblock) and fetches a bad one again
//!    by that checksum (grid repair). Every event block is checked against the checksum in the
//!    pointer that leads to it when it is read.
//! 3. **Install.** Once nothing else is in flight: the superblock takes the checkpoint, the
//!    event store and the session table are opened from it, and the log starts at the
//!    checkpoint op. The log target then repairs the tail after it (`repair.rs`), hash-chained
//!    from the checkpoint's prepare, so a checkpoint that is not the canonical log's is never
//!    built on.
//!
//! Grid repair (`grid_repair.rs`) fetches single bad blocks with the same `request_blocks` and
//! `block` messages, marked by checkpoint op 0.
//!
//! Client replies stored before the sync are dropped: a retry of one gets an eviction (the
//! client registers again), never a wrong answer.

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use super::checkpoint::SessionsWritten;
use super::grid_repair::GRID_REPAIR_TOKEN_FIRST;
use super::{CheckpointPhase, Destination, Replica, Status, message_finish};
use crate::constants::{
    BLOCK_SIZE, BLOCK_SOURCE_UNANSWERED_MAX, GRID_BLOCKS_MAX, HEADER_SIZE, SECTOR_SIZE,
    SYNC_CHUNKS_PER_REQUEST_MAX, SYNC_READS_MAX, SYNC_WRITES_MAX,
};
use crate::state_machine::block::SectorChecksums;
use crate::state_machine::types::BlockHeader;
use crate::state_machine::{CheckpointState, GRID_TOO_SMALL};
use crate::vsr::client_sessions::ClientSessionRecord;
use crate::vsr::header::views;
use crate::vsr::header::{Checksum, Command, Header, Op, ReplicaIndex};
use crate::vsr::layout::{Config, Zone};
use crate::vsr::message_pool::Message;
use crate::vsr::storage::{Completion, IoKind, IoOwner, IoRequest, IoToken, Storage};
use crate::vsr::timeout::TimeoutKind;

/// The body of `sync_checkpoint`, followed by the checkpoint's client session table
/// (`clients_max` `ClientSessionRecord`s).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct SyncCheckpointBody {
    /// The header of the prepare at the checkpoint op: the head of the log the syncing replica
    /// will have, which it must be able to show in a view change.
    pub checkpoint_header: Header,
    pub streams_table_checksum: Checksum,
    pub checkpoint_state_checksum: Checksum,
    pub grid_head: u64,
    pub streams_table_address: u64,
    pub streams_table_blocks: u32,
    /// The cluster's grid in blocks, as of the checkpoint.
    pub grid_blocks_limit: u32,
    /// Zero: pads the body to the header's 64-byte alignment.
    pub reserved_end: [u8; 8],
}

impl SyncCheckpointBody {
    /// The event store's part of the checkpoint.
    fn checkpoint_state(&self) -> CheckpointState {
        CheckpointState {
            grid_head: self.grid_head,
            streams_table_address: self.streams_table_address,
            streams_table_blocks: self.streams_table_blocks,
            streams_table_checksum: self.streams_table_checksum,
            checkpoint_state_checksum: self.checkpoint_state_checksum,
            grid_blocks_limit: u64::from(self.grid_blocks_limit),
        }
    }
}

/// One chunk asked for in `request_blocks`: 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
struct ChunkReference {
    address: u64,
    offset: u32,
    length: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Asking for a checkpoint.
    Checkpoint,
    /// Fetching blocks `block_next..block_end`.
    Blocks,
    /// Waiting for everything else to stop, then for the superblock update.
    Install,
    Superblock,
    /// The event store opens the checkpoint.
    Reopen,
}

#[derive(Clone, Copy)]
struct Serving {
    replica: ReplicaIndex,
    checkpoint_op: Op,
    address: u64,
    offset: u32,
}

pub(super) struct SyncState {
    phase: Phase,
    source: ReplicaIndex,
    attempts: u64,
    checkpoint_op: Op,
    checkpoint_checksum: Checksum,
    commit: Op,
    body: SyncCheckpointBody,
    /// The client session table that came with `body`.
    sessions: Vec<ClientSessionRecord>,
    block_next: u64,
    /// Chunks of `block_next` received and asked for, the checksums of their sectors, and the
    /// checksum its header names.
    chunks: ChunkFetch,
    sectors: SectorChecksums,
    block_checksum: Checksum,
    /// Whether the block's header names `block_next` as its address, and this cluster: a
    /// misdirected block at the source (another block's bytes, whole and self-consistent)
    /// passes its own checksum.
    block_placed: bool,
    writes: usize,
    /// `block_next` failed its check and is fetched again (or the fetch started over, at a
    /// newer checkpoint): its new chunks are taken only once the writes of the earlier attempt
    /// have landed, for two writes in flight to one place may complete in either order, and
    /// the rotten one must not land last.
    refetch_after_writes: bool,
    serving: [Option<Serving>; SYNC_READS_MAX],
    /// The event store is not open: the checkpoint it was opening names a block no peer holds
    /// any more (`Replica::checkpoint_open_abandon`). Until a newer checkpoint is installed,
    /// state sync counts as active, so nothing executes, prepares or reads.
    state_lost: bool,
}

impl SyncState {
    pub fn new(clients_max: usize) -> SyncState {
        SyncState {
            phase: Phase::Idle,
            source: ReplicaIndex(0),
            attempts: 0,
            checkpoint_op: Op(0),
            checkpoint_checksum: Checksum(0),
            commit: Op(0),
            body: SyncCheckpointBody::new_zeroed(),
            sessions: Vec::with_capacity(clients_max),
            block_next: 0,
            chunks: ChunkFetch::new(),
            sectors: SectorChecksums::new(),
            block_checksum: Checksum(0),
            block_placed: false,
            writes: 0,
            refetch_after_writes: false,
            serving: [None; SYNC_READS_MAX],
            state_lost: false,
        }
    }

    /// The block fetched next and the grid head fetching ends at, while blocks are fetched;
    /// (0, 0) otherwise.
    pub fn progress(&self) -> (u64, u64) {
        match self.phase {
            Phase::Blocks => (self.block_next, self.body.grid_head),
            _ => (0, 0),
        }
    }

    pub fn active(&self) -> bool {
        self.phase != Phase::Idle || self.state_lost
    }

    pub fn state_lost(&self) -> bool {
        self.state_lost
    }

    /// The checkpoint being opened at startup cannot be.
    pub fn lose_state(&mut self) {
        assert_eq!(self.phase, Phase::Idle);
        self.state_lost = true;
    }

    /// The checkpoint this sync installed cannot be opened: fetch a newer one.
    pub fn restart_without_state(&mut self) {
        assert_eq!(self.phase, Phase::Reopen);
        self.phase = Phase::Idle;
        self.state_lost = true;
    }

    /// The client session table that came with the checkpoint being fetched.
    pub fn sessions(&self) -> &[ClientSessionRecord] {
        &self.sessions
    }

    pub fn superblock_writing(&self) -> bool {
        self.phase == Phase::Superblock
    }

    pub fn reopening(&self) -> bool {
        self.phase == Phase::Reopen
    }
}

/// The chunks of the block being fetched (by state sync or grid repair) that arrived, and
/// those asked for in this round (bit i: chunk i). They are taken from any peer, whichever
/// answers first; but peers may hold different blocks at one address (a checkpoint's blocks
/// are reused two checkpoints later), and a block gathered from two of them matches neither,
/// so once a gathered block fails its check it is fetched again from one peer only: the first
/// that answers, for as long as it answers.
#[derive(Clone, Copy)]
pub(super) struct ChunkFetch {
    received: u128,
    requested: u128,
    /// The block is taken from one peer (`source`, once one answered).
    single: bool,
    source: Option<ReplicaIndex>,
    /// Requests since a chunk last arrived.
    unanswered: u32,
}

impl ChunkFetch {
    pub(super) fn new() -> ChunkFetch {
        ChunkFetch { received: 0, requested: 0, single: false, source: None, unanswered: 0 }
    }

    /// The block gathered failed its check: fetch it again, from one peer.
    pub(super) fn retry(&mut self) {
        *self = ChunkFetch { single: true, ..ChunkFetch::new() };
    }

    /// The peer to ask, when the block is taken from one that answers (else any, in turn).
    pub(super) fn source(&self) -> Option<ReplicaIndex> {
        self.source.filter(|_| self.single)
    }

    /// Drops the chunks of a single source that stopped answering, so that another's are
    /// taken; returns whether any were dropped.
    pub(super) fn source_drop_silent(&mut self) -> bool {
        if self.source().is_none() || self.unanswered < BLOCK_SOURCE_UNANSWERED_MAX {
            return false;
        }
        let dropped = self.received != 0;
        self.retry();
        dropped
    }

    /// Whether a chunk from `peer` is taken.
    pub(super) fn accepts(&self, peer: ReplicaIndex) -> bool {
        self.source().is_none_or(|source| source == peer)
    }

    /// A new block, or the same one again from scratch.
    pub(super) fn reset(&mut self) {
        *self = ChunkFetch::new();
    }

    /// The chunks the next request skips: those received, and those asked for in this round.
    /// Once every missing chunk has been asked for, a new round begins: their requests or
    /// answers were lost, or a busy peer dropped them. A replica that asked for the first
    /// missing chunks every time would get the same few chunks back per round trip.
    pub(super) fn skip(&mut self, all: u128) -> u128 {
        assert_eq!(self.received & !all, 0, "only chunks of the block are received");
        if self.received | self.requested == all {
            self.requested = self.received;
        }
        self.received | self.requested
    }

    pub(super) fn asked(&mut self, chunks: u128) {
        assert_eq!(chunks & self.received, 0, "a chunk received is not asked for again");
        self.requested |= chunks;
        self.unanswered += 1;
    }

    pub(super) fn has(&self, chunk: usize) -> bool {
        assert!(chunk < 128);
        self.received & (1 << chunk) != 0
    }

    pub(super) fn receive(&mut self, chunk: usize, peer: ReplicaIndex) {
        assert!(!self.has(chunk), "a chunk is taken once");
        assert!(self.accepts(peer));
        self.source = Some(peer);
        self.received |= 1 << chunk;
        self.unanswered = 0;
    }

    pub(super) fn complete(&self, all: u128) -> bool {
        assert_eq!(self.received & !all, 0);
        self.received == all
    }
}

/// Bytes of a block one `block` message carries.
fn chunk_size(config: &Config) -> usize {
    let room = config.message_size_max as usize - SECTOR_SIZE;
    let size = (room / SECTOR_SIZE * SECTOR_SIZE).min(BLOCK_SIZE);
    assert!(size > 0 && size.is_multiple_of(SECTOR_SIZE));
    size
}

impl Replica {
    /// The header of the prepare at this replica's durable checkpoint: from the WAL, or from
    /// the superblock if state sync installed that checkpoint.
    pub(super) fn checkpoint_header(&self) -> Option<Header> {
        let working = self.superblock.working();
        let (op, checksum) =
            (working.vsr_state.checkpoint_op, working.vsr_state.checkpoint_checksum);
        if op == Op(0) {
            return Some(Header::root_prepare(self.config.cluster));
        }
        let matches = |header: &Header| header.op == op && header.checksum == checksum;
        if let Some(header) = self.journal.header_with_op(op).filter(|header| matches(header)) {
            return Some(*header);
        }
        let count = (working.vsr_state.view_headers_count as usize)
            .min(working.vsr_state.view_headers.len());
        working.vsr_state.view_headers[..count].iter().find(|header| matches(header)).copied()
    }

    /// The checkpoint the superblock holds: this replica's durable one, or one state sync
    /// installed and is opening (or could not open, `SyncState::state_lost`).
    fn checkpoint_installed(&self) -> Op {
        self.superblock.working().vsr_state.checkpoint_op
    }

    /// Bytes of a block one `block` message carries.
    pub(super) fn sync_chunk_size(&self) -> usize {
        chunk_size(&self.config)
    }

    pub(super) fn sync_chunk_count(&self) -> usize {
        let count = BLOCK_SIZE.div_ceil(self.sync_chunk_size());
        // A block's chunks are tracked in a `u128` mask.
        assert!(count > 0 && count <= 128);
        count
    }

    /// Called by the log target when it reaches further back than any peer's WAL.
    pub(super) fn sync_progress<S: Storage>(&mut self, storage: &mut S) {
        assert!(self.config.replica_count > 1, "state sync fetches from a peer");
        match self.sync.phase {
            Phase::Idle => {
                self.sync.phase = Phase::Checkpoint;
                self.sync.source = if self.target.active() {
                    self.target.source()
                } else {
                    assert!(self.sync.state_lost, "a sync starts from a target or a lost state");
                    self.peer_rotation(self.config.replica, 0)
                };
                self.sync.attempts = 0;
                self.timeouts[TimeoutKind::Sync].stop();
                self.sync_progress(storage)
            }
            Phase::Checkpoint => self.sync_request_checkpoint(),
            Phase::Blocks => self.sync_request_blocks(storage),
            Phase::Install => self.sync_install(storage),
            Phase::Superblock | Phase::Reopen => {}
        }
    }

    /// The replica to ask: the target's source, and another on alternate attempts.
    fn sync_source(&mut self) -> ReplicaIndex {
        self.sync.attempts += 1;
        self.peer_rotation(self.sync.source, self.sync.attempts / 4)
    }

    fn sync_request_due(&mut self) -> bool {
        self.timeouts[TimeoutKind::Sync].due_restart()
    }

    fn sync_request_checkpoint(&mut self) {
        assert_eq!(self.sync.phase, Phase::Checkpoint);
        if !self.sync_request_due() {
            return;
        }
        let source = self.sync_source();
        let mut header = self.header_new(Command::RequestSyncCheckpoint);
        // Not the one this replica holds, nor one it installed and could not open.
        header.checkpoint_op = self.checkpoint_installed();
        self.send_header(Destination::Replica(source), header);
    }

    /// Serves the latest durable checkpoint, if it is newer than the one the peer has.
    pub(super) fn on_request_sync_checkpoint(&mut self, header: &Header) {
        if !self.status.is_open() || self.sync.state_lost {
            // A replica whose checkpoint cannot be opened does not hand it out.
            return;
        }
        let working = *self.superblock.working();
        if working.vsr_state.checkpoint_op <= header.checkpoint_op {
            return;
        }
        let Some(checkpoint_header) = self.checkpoint_header() else {
            // Its WAL slot was overwritten already: another peer answers.
            return;
        };
        // Paired with `on_sync_checkpoint`, which takes only the prepare the superblock names.
        assert_eq!(checkpoint_header.op, working.vsr_state.checkpoint_op);
        assert_eq!(checkpoint_header.checksum, working.vsr_state.checkpoint_checksum);
        let body = SyncCheckpointBody {
            checkpoint_header,
            grid_head: working.vsr_state.grid_head,
            streams_table_address: working.vsr_state.streams_table_address,
            streams_table_blocks: working.vsr_state.streams_table_blocks,
            streams_table_checksum: working.vsr_state.streams_table_checksum,
            checkpoint_state_checksum: working.vsr_state.checkpoint_state_checksum,
            grid_blocks_limit: working.vsr_state.grid_blocks_limit as u32,
            reserved_end: [0; 8],
        };
        let sessions = self.superblock.working_sessions().as_bytes();
        let mut message = self.pool.get();
        let bytes = message.buffer_mut_unique();
        let body_end = HEADER_SIZE + size_of::<SyncCheckpointBody>();
        let size = body_end + sessions.len();
        bytes[HEADER_SIZE..body_end].copy_from_slice(body.as_bytes());
        bytes[body_end..size].copy_from_slice(sessions);
        let mut reply = self.header_new(Command::SyncCheckpoint);
        reply.checkpoint_op = working.vsr_state.checkpoint_op;
        reply.commit = working.vsr_state.commit_max.max(working.vsr_state.checkpoint_op);
        views::SyncCheckpoint::of(&mut reply)
            .set_checkpoint_checksum(working.vsr_state.checkpoint_checksum);
        let message = message_finish(message, reply, size - HEADER_SIZE);
        self.send(Destination::Replica(header.replica), message);
    }

    pub(super) fn on_sync_checkpoint<S: Storage>(&mut self, storage: &mut S, message: &Message) {
        let header = *message.header();
        assert_eq!(header.command(), Some(Command::SyncCheckpoint));
        if self.sync.phase != Phase::Checkpoint {
            return;
        }
        assert_eq!(self.sync.writes, 0, "no block is written before a checkpoint is chosen");
        let Ok((body, sessions)) = SyncCheckpointBody::read_from_prefix(message.body()) else {
            return self.message_invalid(&header, "sync_checkpoint body too short");
        };
        let Ok(sessions) = <[ClientSessionRecord]>::ref_from_bytes(sessions) else {
            return self.message_invalid(&header, "sync_checkpoint sessions misaligned");
        };
        if sessions.len() != self.config.clients_max as usize {
            return self.message_invalid(&header, "sync_checkpoint session table of another size");
        }
        let consistent = body.reserved_end == [0; 8]
            && body.grid_head <= u64::from(body.grid_blocks_limit)
            && u64::from(body.grid_blocks_limit) <= GRID_BLOCKS_MAX
            && (body.streams_table_blocks == 0 || body.streams_table_address < body.grid_head);
        if !consistent {
            return self.message_invalid(&header, "sync_checkpoint state inconsistent");
        }
        if u64::from(body.grid_blocks_limit) > self.state_machine.limits().grid_blocks {
            // The cluster's grid grew past this replica's (which the operator formatted
            // smaller than its peers'): it cannot take the state.
            return self.fail(GRID_TOO_SMALL);
        }
        if header.checkpoint_op <= self.commit_min.max(self.checkpoint_installed()) {
            // Not newer than what this replica executed or installed: of no use.
            return;
        }
        let prepare = body.checkpoint_header;
        let prepare_valid = prepare.valid_checksum()
            && prepare.invalid().is_none()
            && prepare.command() == Some(Command::Prepare)
            && prepare.cluster == self.config.cluster
            && prepare.op == header.checkpoint_op
            && prepare.checksum == views::SyncCheckpoint::of(&header).checkpoint_checksum();
        if !prepare_valid {
            return self.message_invalid(&header, "sync_checkpoint prepare header mismatch");
        }
        self.sync.checkpoint_op = header.checkpoint_op;
        self.sync.checkpoint_checksum = views::SyncCheckpoint::of(&header).checkpoint_checksum();
        self.sync.commit = header.commit;
        self.sync.body = body;
        self.sync.sessions.clear();
        self.sync.sessions.extend_from_slice(sessions);
        self.sync.source = header.replica;
        // Without an open event store, the blocks below the durable checkpoint's grid head are
        // the ones it has (the event blocks of that checkpoint are sound or repaired on a read).
        let grid_head = if self.sync.state_lost {
            self.superblock.working().vsr_state.grid_head
        } else {
            self.state_machine.grid_head()
        };
        self.sync.block_next = grid_head.min(body.grid_head);
        self.sync.chunks.reset();
        self.sync.refetch_after_writes = true;
        self.sync.phase = Phase::Blocks;
        self.sync_request_blocks(storage);
    }

    fn sync_request_blocks<S: Storage>(&mut self, storage: &mut S) {
        assert_eq!(self.sync.phase, Phase::Blocks);
        if self.sync.block_next >= self.sync.body.grid_head {
            self.sync.phase = Phase::Install;
            return self.sync_install(storage);
        }
        if !self.sync_request_due() {
            return;
        }
        if self.sync.chunks.source_drop_silent() {
            // Those chunks' writes must land before the next peer's (`refetch_after_writes`).
            self.sync.refetch_after_writes = true;
            self.metrics.sync_sources_silent += 1;
        }
        let source = match self.sync.chunks.source() {
            Some(source) => source,
            None => self.sync_source(),
        };
        let all = self.chunks_all();
        let skip = self.sync.chunks.skip(all);
        let (checkpoint_op, address) = (self.sync.checkpoint_op, self.sync.block_next);
        let asked = self.blocks_request_send(source, checkpoint_op, address, skip);
        self.sync.chunks.asked(asked);
    }

    /// Asks `replica` for the chunks of block `address` not in `chunks_skip` (bit i: chunk i),
    /// as many as one request names, and returns those it named. State sync names its
    /// checkpoint op; grid repair 0.
    pub(super) fn blocks_request_send(
        &mut self,
        replica: ReplicaIndex,
        checkpoint_op: Op,
        address: u64,
        chunks_skip: u128,
    ) -> u128 {
        let chunk_size = self.sync_chunk_size();
        let mut message = self.pool.get();
        let mut count = 0;
        let mut named = 0;
        for chunk in 0..self.sync_chunk_count() {
            if chunks_skip & (1 << chunk) != 0 || count == SYNC_CHUNKS_PER_REQUEST_MAX {
                continue;
            }
            named |= 1 << chunk;
            let offset = chunk * chunk_size;
            let reference = ChunkReference {
                address,
                offset: offset as u32,
                length: chunk_size.min(BLOCK_SIZE - offset) as u32,
            };
            let at = HEADER_SIZE + count * size_of::<ChunkReference>();
            message.buffer_mut_unique()[at..at + size_of::<ChunkReference>()]
                .copy_from_slice(reference.as_bytes());
            count += 1;
        }
        assert!(count > 0);
        assert_ne!(replica, self.config.replica);
        let mut header = self.header_new(Command::RequestBlocks);
        header.checkpoint_op = checkpoint_op;
        let message = message_finish(message, header, count * size_of::<ChunkReference>());
        self.send(Destination::Replica(replica), message);
        named
    }

    /// Reads the chunks a syncing or repairing peer asks for, as far as the read budget
    /// allows; only blocks below this replica's durable checkpoint's grid head. A free block
    /// there may be rewritten meanwhile: the peer checks what it gets.
    pub(super) fn on_request_blocks<S: Storage>(&mut self, storage: &mut S, message: &Message) {
        let header = *message.header();
        assert_eq!(header.command(), Some(Command::RequestBlocks));
        assert_ne!(header.replica, self.config.replica);
        if !self.status.is_open() {
            return;
        }
        let grid_head = self.superblock.working().vsr_state.grid_head;
        let chunk_size = self.sync_chunk_size();
        for bytes in message.body().chunks_exact(size_of::<ChunkReference>()) {
            let reference = ChunkReference::read_from_bytes(bytes).expect("16 bytes");
            let offset = reference.offset as usize;
            let length = reference.length as usize;
            let valid = reference.address < grid_head
                && offset.is_multiple_of(SECTOR_SIZE)
                && length > 0
                && length.is_multiple_of(SECTOR_SIZE)
                && length <= chunk_size
                && offset + length <= BLOCK_SIZE;
            if !valid {
                return self.message_invalid(&header, "request_blocks names a chunk out of range");
            }
            let Some(slot) = self.sync.serving.iter().position(Option::is_none) else {
                return;
            };
            if self.pool.free_count() < 2 * SYNC_READS_MAX + super::REPLICAS_MAX {
                return;
            }
            self.sync.serving[slot] = Some(Serving {
                replica: header.replica,
                checkpoint_op: header.checkpoint_op,
                address: reference.address,
                offset: reference.offset,
            });
            let request = IoRequest {
                token: IoToken { owner: IoOwner::Sync, index: slot as u32 },
                kind: IoKind::Read,
                zone: Zone::Grid,
                offset: self.grid_offset(reference.address, offset),
                length,
                buffer_offset: SECTOR_SIZE,
            };
            storage.submit(request, self.pool.get());
        }
    }

    pub(super) fn grid_offset(&self, address: u64, offset: usize) -> u64 {
        assert!(address < self.config.grid_size / BLOCK_SIZE as u64, "a block of the grid");
        assert!(offset < BLOCK_SIZE);
        self.layout.offset(Zone::Grid, address * BLOCK_SIZE as u64 + offset as u64)
    }

    pub(super) fn sync_storage_complete<S: Storage>(
        &mut self,
        storage: &mut S,
        completion: Completion,
    ) {
        let index = completion.request.token.index;
        assert_eq!(completion.request.token.owner, IoOwner::Sync);
        if index >= GRID_REPAIR_TOKEN_FIRST {
            return self.grid_repair_storage_complete(storage, completion);
        }
        match completion.request.kind {
            IoKind::Read => self.sync_read_complete(completion),
            IoKind::Write | IoKind::Sync => unreachable!("state sync writes the grid cached"),
            IoKind::WriteCached => {
                if completion.result.is_err() {
                    return self.fail("a grid write of state sync failed");
                }
                assert!(self.sync.writes > 0);
                self.sync.writes -= 1;
                self.sync_progress(storage);
            }
        }
    }

    /// A chunk read for a peer: moved to just after the header and sent.
    fn sync_read_complete(&mut self, completion: Completion) {
        let slot = completion.request.token.index as usize;
        let serving = self.sync.serving[slot].take().expect("a read in flight");
        assert_eq!(completion.request.kind, IoKind::Read);
        // Paired with `on_request_blocks`, which reads only whole chunks.
        assert!(completion.request.length <= self.sync_chunk_size());
        if completion.result.is_err() {
            return;
        }
        let mut message = completion.buffer;
        let length = completion.request.length;
        let buffer = message.buffer_mut_unique();
        buffer.copy_within(SECTOR_SIZE..SECTOR_SIZE + length, HEADER_SIZE);
        let mut header = Header::new(Command::Block, self.config.cluster);
        header.replica = self.config.replica;
        let mut block = views::Block::of(&mut header);
        block.set_address(serving.address);
        block.set_offset(u64::from(serving.offset));
        block.set_checkpoint_durable(self.checkpoint_op);
        header.checkpoint_op = serving.checkpoint_op;
        let message = message_finish(message, header, length);
        self.send(Destination::Replica(serving.replica), message);
    }

    /// A chunk of the block being fetched: checksummed, then written in place.
    pub(super) fn on_block<S: Storage>(&mut self, storage: &mut S, message: &Message) {
        let header = *message.header();
        if header.checkpoint_op == Op(0) {
            // An answer to grid repair, which asks with checkpoint op 0 (state sync never does:
            // it fetches a checkpoint newer than what this replica executed).
            return self.grid_repair_on_block(storage, message);
        }
        let fetching = self.sync.phase == Phase::Blocks
            && header.checkpoint_op == self.sync.checkpoint_op
            && views::Block::of(&header).address() == self.sync.block_next
            && self.sync.chunks.accepts(header.replica);
        if !fetching || self.sync.writes >= SYNC_WRITES_MAX {
            return;
        }
        if self.sync.refetch_after_writes {
            if self.sync.writes > 0 {
                // Asked again by the sync timeout once they have.
                self.metrics.sync_chunks_deferred_behind_writes += 1;
                return;
            }
            self.sync.refetch_after_writes = false;
        }
        let Some(chunk) = self.block_chunk_index(message) else {
            return;
        };
        let address = views::Block::of(&header).address();
        assert!(address < self.sync.body.grid_head, "only blocks below the checkpoint's head");
        let offset = chunk * self.sync_chunk_size();
        let body = message.body();
        if self.sync.chunks.has(chunk) {
            return;
        }
        if chunk == 0 {
            let named = body.get(..size_of::<Checksum>()).expect("a chunk is whole sectors");
            self.sync.block_checksum = Checksum::from_le_bytes(named.try_into().expect("16 bytes"));
            self.sync.block_placed = BlockHeader::read_from_prefix(body).is_ok_and(|(block, _)| {
                block.address == address && block.cluster == self.config.cluster.get()
            });
        }
        self.sync.sectors.chunk(offset, body);
        self.sync.chunks.receive(chunk, header.replica);
        let mut buffer = self.pool.get();
        buffer.buffer_mut_unique()[..body.len()].copy_from_slice(body);
        let request = IoRequest {
            token: IoToken { owner: IoOwner::Sync, index: 0 },
            // The superblock update that installs the checkpoint syncs it first.
            kind: IoKind::WriteCached,
            zone: Zone::Grid,
            offset: self.grid_offset(address, offset),
            length: body.len(),
            buffer_offset: 0,
        };
        self.sync.writes += 1;
        storage.submit(request, buffer);
        self.sync_block_check(storage);
    }

    /// Once every chunk of the block is in: the combined checksum must be the block's.
    fn sync_block_check<S: Storage>(&mut self, storage: &mut S) {
        assert_eq!(self.sync.phase, Phase::Blocks);
        if !self.sync.chunks.complete(self.chunks_all()) {
            return;
        }
        let checksum = self.sync.sectors.block_checksum();
        if checksum != self.sync.block_checksum || !self.sync.block_placed {
            // A chunk was torn or rotten at its source, the source's block is another's (a
            // misdirected write), or the chunks came from peers holding different blocks there:
            // fetch the block again, from one peer, over writes that landed first.
            self.metrics.messages_invalid += 1;
            self.sync.chunks.retry();
            self.sync.refetch_after_writes = true;
            return;
        }
        self.sync.chunks.reset();
        self.sync.block_next += 1;
        assert!(self.sync.block_next <= self.sync.body.grid_head);
        self.timeouts[TimeoutKind::Sync].stop();
        self.sync_request_blocks(storage);
    }

    /// Installs the checkpoint once every block is durable and nothing else is in flight.
    fn sync_install<S: Storage>(&mut self, storage: &mut S) {
        assert_eq!(self.sync.phase, Phase::Install);
        let busy = self.sync.writes > 0
            || self.grid_repair.busy()
            || self.journal.writing()
            || self.journal.truncating()
            || !self.journal_reads.is_empty()
            || !self.state_machine.quiescent()
            || self.checkpoint != CheckpointPhase::Idle
            || self.superblock_writing.is_some()
            || self.replies.ios > 0
            || self.reads.iter().any(Option::is_some);
        if busy {
            return;
        }
        assert!(self.sync.block_next >= self.sync.body.grid_head, "every block is in");
        // Commits are frozen while state sync runs, so the checkpoint is still ahead.
        assert!(self.sync.checkpoint_op > self.commit_min);
        assert!(self.sync.checkpoint_op > self.checkpoint_op);
        let body = self.sync.body;
        let mut state = self.vsr_state_next();
        state.commit_max = state.commit_max.max(self.sync.commit);
        state.checkpoint_op = self.sync.checkpoint_op;
        state.checkpoint_checksum = self.sync.checkpoint_checksum;
        state.checkpoint_state_set(&body.checkpoint_state());
        // The checkpoint's prepare is not in this replica's WAL: the superblock keeps its header.
        state.view_headers[0] = body.checkpoint_header;
        state.view_headers_count = 1;
        self.sync.phase = Phase::Superblock;
        self.superblock_write(storage, &state, SessionsWritten::Synced);
    }

    /// The superblock holds the checkpoint: the event store opens it.
    pub(super) fn sync_superblock_done<S: Storage>(&mut self, storage: &mut S) {
        assert_eq!(self.sync.phase, Phase::Superblock);
        // Paired with `sync_install`: the superblock holds the checkpoint fetched.
        let working = self.superblock.working().vsr_state;
        assert_eq!(working.checkpoint_op, self.sync.checkpoint_op);
        assert_eq!(working.checkpoint_checksum, self.sync.checkpoint_checksum);
        self.sync.phase = Phase::Reopen;
        self.grid_repair.open_repairs = 0;
        let checkpoint = self.superblock.working().vsr_state().checkpoint_state();
        if !self.sync.state_lost {
            self.state_machine.close();
        }
        self.state_machine.open(storage, &checkpoint);
    }

    pub(super) fn sync_reopened(&mut self, result: Result<(), &'static str>) {
        assert_eq!(self.sync.phase, Phase::Reopen);
        if let Err(reason) = result {
            if reason == GRID_TOO_SMALL {
                return self.fail(GRID_TOO_SMALL);
            }
            if self.grid_repair_open() {
                // A block of the checkpoint (one reused below this replica's old grid head) is
                // not the one named: the open resumes once a peer's copy is in place.
                return;
            }
            return self.fail("the checkpoint fetched by state sync could not be opened");
        }
        let working = *self.superblock.working();
        if self.sessions.restore(self.superblock.working_sessions()).is_err() {
            return self.fail("the client session table fetched by state sync is invalid");
        }
        self.replies.forget_all();
        self.pipeline.clear();
        assert!(working.vsr_state.checkpoint_op > self.checkpoint_op);
        assert!(working.vsr_state.checkpoint_op > self.commit_min);
        assert_eq!(working.vsr_state.checkpoint_op, self.sync.checkpoint_op);
        self.checkpoint_op = working.vsr_state.checkpoint_op;
        self.commit_min = working.vsr_state.checkpoint_op;
        self.commit_checksum = working.vsr_state.checkpoint_checksum;
        self.commit_max = self.commit_max.max(working.vsr_state.commit_max);
        self.head.reset(working.vsr_state.checkpoint_op, working.vsr_state.checkpoint_checksum);
        let checkpoint = self.sync.body.checkpoint_header;
        self.timestamp_observe(&checkpoint);
        self.log_chained_from = self.log_chained_from_find();
        self.sync.phase = Phase::Idle;
        self.sync.state_lost = false;
        self.metrics.state_syncs += 1;
        self.target.sync_done();
        self.timeouts[TimeoutKind::RepairTarget].stop();
        assert!(matches!(self.status, Status::Normal | Status::ViewChange));
        if !self.target.active() || self.head.op() >= self.target.head() {
            // The checkpoint is newer than the log this replica was installing: ask for the
            // view's log as it is now.
            self.target.clear();
            self.send_request_start_view();
        }
    }
}

impl Replica {
    /// The index of the chunk a `block` message carries, if its offset and length are those of
    /// a chunk of a grid block (else it is counted invalid). State sync and grid repair both
    /// take blocks in these chunks.
    pub(super) fn block_chunk_index(&mut self, message: &Message) -> Option<usize> {
        let header = *message.header();
        let chunk_size = self.sync_chunk_size();
        // The view reads an offset beyond u64 as u64::MAX, which no chunk has.
        let offset = usize::try_from(views::Block::of(&header).offset()).unwrap_or(usize::MAX);
        if !offset.is_multiple_of(chunk_size) || offset >= BLOCK_SIZE {
            self.message_invalid(&header, "block chunk offset invalid");
            return None;
        }
        if message.body().len() != chunk_size.min(BLOCK_SIZE - offset) {
            self.message_invalid(&header, "block chunk of the wrong length");
            return None;
        }
        assert!(offset / chunk_size < self.sync_chunk_count());
        Some(offset / chunk_size)
    }
}
