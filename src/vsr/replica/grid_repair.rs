//! Grid repair and the scrubber. The grid is a deterministic function of the committed log
//! (`docs/event-store.md`), so a peer holds the same bytes at a block's address as long as it
//! holds the same block there: event blocks forever, a checkpoint's blocks until the peer reuses
//! them two checkpoints later (`state_machine::checkpoint`). A block found bad is fetched again
//! from a peer, by address, with the state-sync messages (`request_blocks` → `block`, in
//! chunks, `sync.rs`), and written in place; a checkpoint's block is asked for by its checksum
//! too, and a peer's other block at that address is refused. Grid repair asks with checkpoint
//! op 0, which is how a `block` answer finds its way here rather than to state sync; a peer
//! serves only blocks below its own durable grid head.
//!
//! A block is found bad in three ways, each a cause counted in `Metrics`:
//!
//! - **Open**: a block of the checkpoint (root, table, tail) fails its own checks or is not the
//!   one named. The replica stays in `Recovering` (or in state sync's reopen), fetches it, and
//!   opens the event store again. With one replica there is no peer and the open fails, as it
//!   must. If no peer holds the block any more, the open is given up for state sync
//!   (`checkpoint_open_abandon`).
//! - **Read**: a read met a block that fails its pointer's checksum. The client got
//!   `block_corrupt` with the events before the block (retryable: never a wrong event); the
//!   block is fetched and checked against that checksum, and the retry finds it sound.
//! - **Scrub**: the scrubber reads every block below the durable grid head, one block every
//!   `GRID_SCRUB_BLOCK_TICKS`, from a random one, in chunks (`GRID_SCRUB_READS_MAX` at a time,
//!   into message buffers), and checks each against its own checksum, address, cluster, kind
//!   and version.
//!
//! A fetched block is gathered whole in a buffer of its own before anything reaches the disk,
//! and written in one write only once it passes every check a block can make on itself
//! (`grid_block_invalid`: its checksum, address, cluster, kind, version) and, when the pointer's
//! checksum is known, names that checksum; otherwise it is fetched again, from the next peer.
//! Writing chunks as they came would let a peer's rotten copy overwrite a local copy that was
//! sound after all (a block queued by a scrub that raced a write, or found twice), and with
//! the peer's copy rotten too no sound copy would be left anywhere. The repair is over once
//! the write has landed. Faults wait in a fixed queue (`GRID_REPAIRS_MAX`).

use super::sync::ChunkFetch;
use super::{OpenPhase, Replica, Status};
use crate::constants::{
    BLOCK_SIZE, GRID_REPAIRS_MAX, GRID_REPAIRS_OPEN_MAX, GRID_SCRUB_READS_MAX,
    checkpoint_interval_ops,
};
use crate::state_machine::block::SectorChecksums;
use crate::state_machine::constants::BLOCK_VERSION;
use crate::state_machine::types::{BlockHeader, BlockKind};
use crate::state_machine::{BlockFault, grid_block_invalid};
use crate::vsr::header::Op;
use crate::vsr::header::views;
use crate::vsr::header::{Checksum, ClusterId, ReplicaIndex};
use crate::vsr::layout::Zone;
use crate::vsr::message_pool::{Message, MessagePool};
use crate::vsr::storage::{Completion, IoKind, IoOwner, IoRequest, IoToken, Storage};
use crate::vsr::timeout::TimeoutKind;
use zerocopy::FromBytes;

/// `IoOwner::Sync` token indexes from here on are grid repair's: the scrubber's reads, then the
/// repair's write (state sync uses the indexes below).
pub(super) const GRID_REPAIR_TOKEN_FIRST: u32 = 1 << 16;
const SCRUB_TOKEN: u32 = GRID_REPAIR_TOKEN_FIRST;
const REPAIR_WRITE_TOKEN: u32 = GRID_REPAIR_TOKEN_FIRST + 1;

/// Why a block is being repaired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RepairCause {
    Open,
    Read,
    Scrub,
}

#[derive(Clone, Copy, Debug)]
struct Fault {
    block: BlockFault,
    cause: RepairCause,
}

/// The scrubber's read of one block, up to `GRID_SCRUB_READS_MAX` chunks at a time.
#[derive(Clone, Copy, Debug)]
struct Scrub {
    /// The first block was chosen (at random).
    started: bool,
    address: u64,
    /// The next chunk to read, the chunks read, and the reads in flight.
    chunk_next: usize,
    chunks_done: usize,
    reads: usize,
    sectors: SectorChecksums,
    /// From the first chunk: the checksum the block names, and whether its header is sound.
    named: Checksum,
    header_sound: bool,
    /// A chunk could not be read.
    unreadable: bool,
}

pub(super) struct GridRepair {
    faults: [Option<Fault>; GRID_REPAIRS_MAX],
    /// The index in `faults` of the block being fetched.
    fetching: Option<usize>,
    /// Chunks of the block received into `block`, and asked for.
    chunks: ChunkFetch,
    /// The one block-sized buffer the fetched block is gathered in, allocated at startup; it is
    /// in `block` from the start of a fetch until its write is submitted.
    block_pool: MessagePool,
    block: Option<Message>,
    /// The block checked and its write is in flight: done once it lands.
    writing: bool,
    /// Blocks fetched for the open in progress.
    pub open_repairs: u64,
    /// Peers the block was asked from in turn (a peer is asked until it stops answering or
    /// sends a block that does not check).
    sources: u64,
    /// `sources` when a peer first answered the open's fetch with a sound block that is not
    /// the one named: it reused the block (`checkpoint_open_abandon`).
    superseded_at: Option<u64>,
    /// The durable checkpoint of the peer whose first chunk of the block is in.
    source_checkpoint: Op,
    scrub: Scrub,
}

impl GridRepair {
    pub fn new() -> GridRepair {
        GridRepair {
            faults: [None; GRID_REPAIRS_MAX],
            fetching: None,
            chunks: ChunkFetch::new(),
            block_pool: MessagePool::new(1, BLOCK_SIZE),
            block: None,
            writing: false,
            open_repairs: 0,
            sources: 0,
            superseded_at: None,
            source_checkpoint: Op(0),
            scrub: Scrub {
                started: false,
                address: 0,
                chunk_next: 0,
                chunks_done: 0,
                reads: 0,
                sectors: SectorChecksums::new(),
                named: Checksum(0),
                header_sound: false,
                unreadable: false,
            },
        }
    }

    /// Grid I/O of repair or scrub is in flight.
    pub fn busy(&self) -> bool {
        self.writing || self.scrub.reads > 0
    }

    /// Blocks found bad and not yet repaired.
    pub fn pending_count(&self) -> usize {
        self.faults.iter().flatten().count()
    }
}

/// Why the first chunk of a block fails the header checks a scrub or a fetch can make on a
/// chunk alone, or `None`.
fn block_header_invalid(chunk: &[u8], cluster: ClusterId, address: u64) -> Option<&'static str> {
    let Ok((header, _)) = BlockHeader::read_from_prefix(chunk) else {
        return Some("block: first chunk shorter than the header");
    };
    if header.address != address {
        return Some("block: address does not match where it was read (misdirected write)");
    }
    if BlockKind::from_u8(header.kind).is_none() {
        return Some("block: wrong kind");
    }
    if header.version != BLOCK_VERSION {
        return Some("block: unknown version");
    }
    if header.cluster != cluster.get() {
        return Some("block: belongs to another cluster");
    }
    None
}

impl Replica {
    /// Queues `block` for repair from a peer, unless it is queued already, there is no peer,
    /// or the queue is full (a block found bad again later is queued then). Returns whether it
    /// is queued.
    pub(super) fn grid_fault_queue(&mut self, block: BlockFault, cause: RepairCause) -> bool {
        if self.config.replica_count == 1 {
            return false;
        }
        let faults = &mut self.grid_repair.faults;
        if let Some(index) =
            faults.iter().position(|f| f.is_some_and(|f| f.block.address == block.address))
        {
            let queued = faults[index].as_mut().expect("found");
            if cause == RepairCause::Open && queued.cause != RepairCause::Open {
                // The open resumes once an open fault is done, and fetches the block it names
                // (a scrub may have asked for an older checkpoint's block there).
                let other = queued.block.checksum != block.checksum;
                *queued = Fault { block, cause };
                let fetching = self.grid_repair.fetching == Some(index);
                if fetching && other && !self.grid_repair.writing {
                    self.grid_repair_fetch_cancel();
                }
            }
            return true;
        }
        let fetching = self.grid_repair.fetching;
        let evictable = |index: usize, fault: &Option<Fault>| {
            fault.is_some_and(|fault| fault.cause != RepairCause::Open) && fetching != Some(index)
        };
        let free = faults.iter().position(Option::is_none).or_else(|| {
            // The open cannot go on without its block; a scrub or a read finds theirs again.
            let evict =
                faults.iter().enumerate().position(|(index, fault)| evictable(index, fault));
            evict.filter(|_| cause == RepairCause::Open)
        });
        let Some(free) = free else {
            return false;
        };
        faults[free] = Some(Fault { block, cause });
        // Paired with `grid_repair_done`: a block is queued once.
        let queued = faults.iter().flatten().filter(|fault| fault.block.address == block.address);
        assert_eq!(queued.count(), 1);
        true
    }

    /// Takes the block a read last found bad and queues it (the open's faults are taken by
    /// `grid_repair_open`).
    pub(super) fn grid_fault_take(&mut self) {
        if !self.status.is_open() || self.sync.reopening() {
            return;
        }
        if let Some(block) = self.state_machine.block_fault_take() {
            self.grid_fault_queue(block, RepairCause::Read);
        }
    }

    /// The open (at startup, or of a checkpoint state sync installed) found a bad block of
    /// the checkpoint: fetch it and open again, or fail.
    pub(super) fn grid_repair_open(&mut self) -> bool {
        assert!(self.state_machine_opening());
        let Some(block) = self.state_machine.block_fault_take() else {
            return false;
        };
        // Each of the checkpoint's blocks may need a fetch (state sync installs a checkpoint
        // whose blocks below this replica's old grid head it did not copy), and a few again.
        let blocks = self.state_machine.limits().metadata_blocks_max as u64;
        if self.grid_repair.open_repairs >= blocks + GRID_REPAIRS_OPEN_MAX {
            return false;
        }
        self.grid_repair.open_repairs += 1;
        self.grid_fault_queue(block, RepairCause::Open)
    }

    /// Once per tick, while open or while the open waits for a repair.
    pub(super) fn grid_repair_tick<S: Storage>(&mut self, storage: &mut S) {
        if self.status.is_open() {
            self.scrub_tick(storage);
        }
        // Faults are queued only where a peer can answer (`grid_fault_queue`).
        assert!(self.config.replica_count > 1 || self.grid_repair.pending_count() == 0);
        self.grid_faults_drop_obsolete();
        if self.grid_repair.fetching.is_none() {
            let Some(next) = self.grid_repair.faults.iter().position(Option::is_some) else {
                return;
            };
            let repair = &mut self.grid_repair;
            assert!(!repair.writing && repair.block.is_none());
            repair.fetching = Some(next);
            repair.sources = 0;
            repair.superseded_at = None;
            repair.chunks.reset();
            self.timeouts[TimeoutKind::GridRepair].stop();
            repair.block = Some(repair.block_pool.get());
        }
        let timeout = &self.timeouts[TimeoutKind::GridRepair];
        if self.grid_repair.writing || timeout.counting_down() {
            return;
        }
        let repair = &self.grid_repair;
        let fault = self.grid_repair_fault();
        // Every peer asked twice since one showed it reused the block.
        let asked_all = 2 * u64::from(self.config.replica_count - 1);
        if fault.cause == RepairCause::Open
            && repair.superseded_at.is_some_and(|at| repair.sources >= at + asked_all)
        {
            return self.checkpoint_open_abandon(storage);
        }
        let all = self.chunks_all();
        assert!(!repair.chunks.complete(all), "a whole block is checked as its last chunk lands");
        self.grid_repair.chunks.source_drop_silent();
        let source = match self.grid_repair.chunks.source() {
            Some(source) => source,
            None => self.grid_repair_source_next(),
        };
        let repair = &mut self.grid_repair;
        let skip = repair.chunks.skip(all);
        self.timeouts[TimeoutKind::GridRepair].start();
        let asked = self.blocks_request_send(source, Op(0), fault.block.address, skip);
        self.grid_repair.chunks.asked(asked);
    }

    /// The event store is being opened: at startup, or after state sync installed a
    /// checkpoint.
    fn state_machine_opening(&self) -> bool {
        let startup =
            self.status == Status::Recovering && self.open_phase == OpenPhase::StateMachine;
        startup || self.sync.reopening()
    }

    /// Drops the scrubber's faults of checkpoint blocks that no checkpoint needs any more (the
    /// checkpoint moved on and freed them, or state sync will replace it): their peers' copies
    /// may be gone too. Event blocks never change, and the open's faults are the open's.
    fn grid_faults_drop_obsolete(&mut self) {
        for index in 0..GRID_REPAIRS_MAX {
            let Some(fault) = self.grid_repair.faults[index] else { continue };
            let Some(checksum) = fault.block.checksum.filter(|_| fault.cause == RepairCause::Scrub)
            else {
                continue;
            };
            let named = self.state_machine.checkpoint_block_checksum(fault.block.address);
            if !self.sync.state_lost() && named == Some(checksum) {
                continue;
            }
            if self.grid_repair.fetching == Some(index) {
                if self.grid_repair.writing {
                    continue;
                }
                self.grid_repair_fetch_cancel();
            }
            self.grid_repair.faults[index] = None;
        }
    }

    /// Stops fetching the block being fetched (its fault is dropped or given up).
    fn grid_repair_fetch_cancel(&mut self) {
        assert!(!self.grid_repair.writing);
        self.grid_repair.fetching = None;
        self.grid_repair.block = None;
        self.grid_repair.chunks.reset();
        self.timeouts[TimeoutKind::GridRepair].stop();
    }

    /// Gives up opening the checkpoint: a block it names is not on any peer that answered,
    /// and one answered with another sound block in its place. Peers reuse a checkpoint's
    /// blocks only once a replication quorum holds a checkpoint two newer
    /// (`state_machine::checkpoint`), and that replica cannot have the ops between the two in
    /// its WAL any more, so state sync was its way back anyway: it goes on without an event
    /// store (`SyncState::state_lost`, which keeps it from executing, preparing and reading)
    /// and fetches a newer checkpoint.
    fn checkpoint_open_abandon<S: Storage>(&mut self, storage: &mut S) {
        assert!(self.state_machine_opening());
        assert!(!self.grid_repair.writing);
        for fault in &mut self.grid_repair.faults {
            if fault.is_some_and(|fault| fault.cause == RepairCause::Open) {
                *fault = None;
            }
        }
        self.grid_repair_fetch_cancel();
        if self.sync.reopening() {
            self.metrics.sync_opens_abandoned += 1;
            self.sync.restart_without_state();
            return;
        }
        self.metrics.checkpoint_opens_abandoned += 1;
        self.sync.lose_state();
        self.open_phase = OpenPhase::ClientReplies;
        self.client_replies_read_progress(storage);
    }

    fn grid_repair_fault(&self) -> Fault {
        let index = self.grid_repair.fetching.expect("a block being fetched");
        self.grid_repair.faults[index].expect("the fault being fetched")
    }

    /// Whether the peer that sent the block being repaired is two checkpoints or more past
    /// the one being opened, so that it may have reused that one's blocks (one behind holds
    /// other blocks at their addresses too, but will write these there).
    fn source_reused(&self) -> bool {
        let opening = self.superblock.working().vsr_state.checkpoint_op;
        let interval = checkpoint_interval_ops(self.layout.journal_slot_count);
        self.grid_repair.source_checkpoint >= opening + 2 * interval
    }

    /// The next peer in turn.
    fn grid_repair_source_next(&mut self) -> ReplicaIndex {
        self.grid_repair.sources += 1;
        self.peer_rotation(self.config.replica, 2 * self.grid_repair.sources)
    }

    /// Bit i set for every chunk i of a block.
    pub(super) fn chunks_all(&self) -> u128 {
        let count = self.sync_chunk_count();
        assert!(count > 0 && count <= 128);
        if count == 128 { u128::MAX } else { (1u128 << count) - 1 }
    }

    /// A chunk of the block being repaired: gathered, and once the block is whole, checked.
    pub(super) fn grid_repair_on_block<S: Storage>(&mut self, storage: &mut S, message: &Message) {
        let header = *message.header();
        // Paired with `blocks_request_send`: grid repair asks with checkpoint op 0.
        assert_eq!(header.checkpoint_op, Op(0));
        let Some(_) = self.grid_repair.fetching else { return };
        let fault = self.grid_repair_fault();
        let block = views::Block::of(&header);
        let taken = self.grid_repair.chunks.accepts(header.replica);
        if block.address() != fault.block.address || self.grid_repair.writing || !taken {
            return;
        }
        let Some(chunk) = self.block_chunk_index(message) else {
            return;
        };
        let offset = chunk * self.sync_chunk_size();
        let body = message.body();
        if self.grid_repair.chunks.has(chunk) {
            return;
        }
        if chunk == 0
            && block_header_invalid(body, self.config.cluster, fault.block.address).is_some()
        {
            // The peer's copy is bad too (or not yet written): ask the next one.
            self.metrics.grid_repair_blocks_refused += 1;
            self.timeouts[TimeoutKind::GridRepair].stop();
            self.grid_repair.chunks.retry();
            return;
        }
        assert!(offset + body.len() <= BLOCK_SIZE);
        if chunk == 0 {
            self.grid_repair.source_checkpoint = views::Block::of(&header).checkpoint_durable();
        }
        let block = self.grid_repair.block.as_mut().expect("a buffer while fetching");
        block.buffer_mut_unique()[offset..offset + body.len()].copy_from_slice(body);
        self.grid_repair.chunks.receive(chunk, header.replica);
        if self.grid_repair.chunks.complete(self.chunks_all()) {
            self.grid_repair_check(storage, fault);
        }
    }

    /// Every chunk is in: the block is written if it checks, else fetched again.
    fn grid_repair_check<S: Storage>(&mut self, storage: &mut S, fault: Fault) {
        assert!(self.grid_repair.chunks.complete(self.chunks_all()));
        assert!(!self.grid_repair.writing);
        let address = fault.block.address;
        let block = self.grid_repair.block.as_ref().expect("a buffer while fetching");
        let bytes = &block.buffer()[..BLOCK_SIZE];
        let invalid = grid_block_invalid(bytes, self.config.cluster, address);
        let named = BlockHeader::read_from_prefix(bytes).map(|(header, _)| header.checksum.get());
        let expected = fault.block.checksum.is_none_or(|expected| named == Ok(expected.get()));
        if invalid.is_some() || !expected {
            // Torn in transit or rotten at the source, or not the block the pointer names.
            self.metrics.grid_repair_blocks_refused += 1;
            if invalid.is_none() && fault.cause == RepairCause::Open && self.source_reused() {
                // Sound, but another: that peer reused the block (`checkpoint_open_abandon`).
                let sources = self.grid_repair.sources;
                self.grid_repair.superseded_at.get_or_insert(sources);
            }
            self.grid_repair.chunks.retry();
            self.timeouts[TimeoutKind::GridRepair].stop();
            return;
        }
        let block = self.grid_repair.block.take().expect("a buffer while fetching");
        self.grid_repair.writing = true;
        let request = IoRequest {
            token: IoToken { owner: IoOwner::Sync, index: REPAIR_WRITE_TOKEN },
            // Durable: the block counts as repaired once this completes (a peer, or the
            // simulator's bookkeeping, may rely on it), and repairs are rare.
            kind: IoKind::Write,
            zone: Zone::Grid,
            offset: self.grid_offset(address, 0),
            length: BLOCK_SIZE,
            buffer_offset: 0,
        };
        storage.submit(request, block);
    }

    /// The repair's write or a scrub read completed.
    pub(super) fn grid_repair_storage_complete<S: Storage>(
        &mut self,
        storage: &mut S,
        completion: Completion,
    ) {
        let index = completion.request.token.index;
        if index == SCRUB_TOKEN {
            return self.scrub_read_complete(storage, completion);
        }
        assert_eq!(index, REPAIR_WRITE_TOKEN);
        assert_eq!(completion.request.kind, IoKind::Write);
        assert!(self.grid_repair.writing);
        if completion.result.is_err() {
            return self.fail("a grid write of grid repair failed");
        }
        self.grid_repair.writing = false;
        drop(completion);
        self.grid_repair_done(storage);
    }

    /// The block is sound and durable again.
    fn grid_repair_done<S: Storage>(&mut self, storage: &mut S) {
        let fault = self.grid_repair_fault();
        let index = self.grid_repair.fetching.take().expect("a block being fetched");
        self.grid_repair.faults[index] = None;
        assert!(!self.grid_repair.writing && self.grid_repair.block.is_none());
        let address = fault.block.address;
        assert!(
            self.grid_repair.faults.iter().flatten().all(|queued| queued.block.address != address)
        );
        let metrics = &mut self.metrics;
        match fault.cause {
            RepairCause::Open if self.sync.reopening() => {
                metrics.grid_blocks_repaired_sync_open += 1
            }
            RepairCause::Open => metrics.grid_blocks_repaired_open += 1,
            RepairCause::Read => metrics.grid_blocks_repaired_read += 1,
            RepairCause::Scrub => metrics.grid_blocks_repaired_scrub += 1,
        }
        if fault.cause == RepairCause::Open && self.state_machine_opening() {
            let checkpoint = self.checkpoint_state();
            self.state_machine.open(storage, &checkpoint);
            self.state_machine_progress(storage);
        }
    }
}

/// The scrubber.
impl Replica {
    fn scrub_tick<S: Storage>(&mut self, storage: &mut S) {
        assert!(self.status.is_open());
        let timeout = &self.timeouts[TimeoutKind::GridScrub];
        let waiting = timeout.counting_down();
        if self.grid_repair.scrub.reads > 0 || waiting || self.sync.active() {
            // State sync installs only once no grid I/O is in flight.
            return;
        }
        let grid_head = self.superblock.working().vsr_state.grid_head;
        if grid_head == 0 {
            return;
        }
        if !self.grid_repair.scrub.started {
            // From a random block, so that a replica that restarts often still covers its
            // whole grid over its lives.
            self.grid_repair.scrub.started = true;
            self.grid_repair.scrub.address = self.prng_next() % grid_head;
        }
        let scrub = &mut self.grid_repair.scrub;
        if scrub.address >= grid_head {
            scrub.address = 0;
        }
        if !self.state_machine.block_settled(scrub.address) {
            // Free, or being written by a checkpoint: whatever it holds is no one's.
            scrub.address += 1;
            return;
        }
        let scrub = &mut self.grid_repair.scrub;
        scrub.chunk_next = 0;
        scrub.chunks_done = 0;
        scrub.unreadable = false;
        scrub.header_sound = false;
        self.timeouts[TimeoutKind::GridScrub].start();
        while self.grid_repair.scrub.reads < GRID_SCRUB_READS_MAX
            && self.grid_repair.scrub.chunk_next < self.sync_chunk_count()
        {
            self.scrub_read(storage);
        }
        assert!(self.grid_repair.scrub.reads > 0, "a scrub round reads at least one chunk");
    }

    /// Submits the read of the next chunk of the block being scrubbed.
    fn scrub_read<S: Storage>(&mut self, storage: &mut S) {
        let chunk_size = self.sync_chunk_size();
        let scrub = &mut self.grid_repair.scrub;
        let offset = scrub.chunk_next * chunk_size;
        assert!(offset < BLOCK_SIZE);
        let address = scrub.address;
        scrub.chunk_next += 1;
        scrub.reads += 1;
        assert!(scrub.reads <= GRID_SCRUB_READS_MAX);
        let request = IoRequest {
            token: IoToken { owner: IoOwner::Sync, index: SCRUB_TOKEN },
            kind: IoKind::Read,
            zone: Zone::Grid,
            offset: self.grid_offset(address, offset),
            length: chunk_size.min(BLOCK_SIZE - offset),
            buffer_offset: 0,
        };
        storage.submit(request, self.pool.get());
    }

    fn scrub_read_complete<S: Storage>(&mut self, storage: &mut S, completion: Completion) {
        let cluster = self.config.cluster;
        let chunk_size = self.sync_chunk_size() as u64;
        let chunk_count = self.sync_chunk_count();
        assert_eq!(completion.request.kind, IoKind::Read);
        let scrub = &mut self.grid_repair.scrub;
        assert!(scrub.reads > 0);
        scrub.reads -= 1;
        let block_offset = self.layout.offset(Zone::Grid, scrub.address * BLOCK_SIZE as u64);
        let chunk = ((completion.request.offset - block_offset) / chunk_size) as usize;
        assert!(chunk < chunk_count, "the read is of the block being scrubbed");
        let bytes = &completion.buffer.buffer()[..completion.request.length];
        if completion.result.is_err() {
            scrub.unreadable = true;
        } else {
            if chunk == 0 {
                scrub.header_sound = block_header_invalid(bytes, cluster, scrub.address).is_none();
                let named = bytes.get(..size_of::<Checksum>()).expect("a chunk is whole sectors");
                scrub.named = Checksum::from_le_bytes(named.try_into().expect("16 bytes"));
            }
            scrub.sectors.chunk(chunk * chunk_size as usize, bytes);
        }
        scrub.chunks_done += 1;
        drop(completion);
        let count = self.sync_chunk_count();
        if self.grid_repair.scrub.chunk_next < count {
            return self.scrub_read(storage);
        }
        if self.grid_repair.scrub.chunks_done == count {
            self.scrub_block_done();
        }
    }

    /// Every chunk of the block was read: it is sound, or it is queued for repair.
    fn scrub_block_done(&mut self) {
        let scrub = &self.grid_repair.scrub;
        assert_eq!(scrub.reads, 0);
        assert_eq!(scrub.chunks_done, self.sync_chunk_count());
        let checksum = scrub.sectors.block_checksum();
        let sound = !scrub.unreadable && scrub.header_sound && checksum == scrub.named;
        self.metrics.grid_blocks_scrubbed += 1;
        // A checkpoint may have started, or freed the block, while it was read.
        if !sound && self.state_machine.block_settled(scrub.address) {
            self.metrics.grid_blocks_scrub_faulty += 1;
            let checksum = self.state_machine.checkpoint_block_checksum(scrub.address);
            let block = BlockFault { address: scrub.address, checksum };
            self.grid_fault_queue(block, RepairCause::Scrub);
        }
        self.grid_repair.scrub.address += 1;
    }
}
