//! Checkpoint and open: the streams table, and the open block's events, written to and read
//! back from the grid.
//!
//! A checkpoint writes the table (the `TableRoot`, the lists of the checkpoint's blocks and of
//! free blocks, then the streams' `TableEntry`s in creation order, as many per block as fit)
//! and, if the open block holds events, a tail: a copy of it (`BlockKind::Tail`), so that it
//! goes on filling after the checkpoint instead of being sealed partly empty. The blocks go to
//! the free list first (lowest address first), then at `grid_head`. It is over when every grid
//! write, earlier event blocks included, has landed. A checkpoint after which nothing was
//! committed writes nothing and keeps the previous one.
//!
//! Free blocks: the blocks of the checkpoint before are free once this one is durable, so the
//! next checkpoint may reuse them; never earlier, for a crash before the superblock records
//! this checkpoint opens that one. The rule is the same for a replica alone and among peers,
//! and a function of the committed log, so every replica's grid stays the same bytes (state
//! sync copies blocks). Among peers it also keeps a sound copy of a checkpoint where a peer
//! needs it: checkpoint `c + 1` (the first to overwrite the blocks `c` superseded) runs only
//! once op `c + 1` committed, and a replica prepares no op beyond its durable checkpoint plus
//! the WAL's slots, so a replication quorum holds `c` durable by then. A replica still at
//! `c - 1` is past the peers' WAL window and must state sync anyway; if its own copy of a
//! block is bad and no peer holds it any more, it does so without opening its checkpoint
//! (`vsr::replica::sync`). The grid always keeps free, beyond the free list, what the largest
//! checkpoint needs in the cluster's grid (`checkpoint_blocks_max`): appends and creates that
//! would eat into it fail with `storage_full`.
//!
//! Open reads the root, then the blocks it lists, checks each block's own checksum, address
//! and structure, loads entries and the tail, and at the end checks the checksum of the blocks'
//! checksums and the state checksum against the superblock's. Entries are inserted in creation
//! order, so the table (and every block built after it) is exactly the one that was
//! checkpointed.

use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::constants::BLOCK_SIZE;
use crate::state_machine::block::{
    BLOCK_HEADER_SIZE, block_header, block_invalid, directory_entry_size, frontier_count,
    skip_pointer_count,
};
use crate::state_machine::constants::BLOCK_VERSION;
use crate::state_machine::types::{
    BlockHeader, BlockKind, BlockPointer, DirectoryEntry, ListedBlock, TableEntry, TableRoot,
    stream_id_valid,
};
use crate::state_machine::{
    BlockFault, CheckpointState, GRID_TOO_SMALL, Limits, Log, StateMachine, Status, TokenKind,
    block_finish, open_directory_entry, token,
};
use crate::vsr::header::Op;
use crate::vsr::header::{Checksum, ChecksumBytes, checksum, checksum_chain};
use crate::vsr::layout::Zone;
use crate::vsr::storage::{Completion, IoKind, IoRequest, Storage};

/// A checkpoint in progress. Its blocks' addresses are in `StateMachine::metadata_next`, and
/// their checksums, as they are built, in `metadata_checksums`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Checkpointing {
    /// Table blocks (the root first); the tail, if any, comes after them.
    table_blocks: u32,
    /// Blocks built so far: the table blocks after the root in order, then the root, which
    /// lists their checksums.
    built: u32,
    /// The entry the next table block after the root starts with.
    entry_next: u32,
    /// Entries in the root.
    root_entries: u32,
    /// The tail is still to be built and written (as soon as a buffer is free).
    tail_pending: bool,
    root: TableRoot,
    result: Option<CheckpointState>,
}

/// An open in progress. The checkpoint's blocks' addresses are in `metadata_last` and their
/// checksums in `metadata_checksums` once the root is read.
#[derive(Clone, Copy, Debug)]
pub(super) struct Opening {
    checkpoint: CheckpointState,
    block_next: u32,
    root: TableRoot,
}

/// The state checksum: the checksum of the root's `TableRoot`, chained with the root block's.
fn state_checksum(root: &TableRoot, root_checksum: Checksum) -> Checksum {
    checksum_chain(checksum(root.as_bytes()), root_checksum)
}

fn table_entry_size(blocks: u64) -> usize {
    size_of::<TableEntry>() + frontier_count(blocks) as usize * size_of::<BlockPointer>()
}

/// Bytes of the root's lists, as many slots as there can be: the checkpoint's other blocks
/// (`ListedBlock`s), then the free blocks (u32 each), padded to 8.
pub(super) fn root_lists_size(limits: &Limits) -> usize {
    lists_size(limits.metadata_blocks_max, limits.free_blocks_max)
}

fn lists_size(metadata_blocks_max: usize, free_blocks_max: usize) -> usize {
    let listed = (metadata_blocks_max - 1) * size_of::<ListedBlock>();
    (listed + free_blocks_max * size_of::<u32>()).next_multiple_of(8)
}

/// True if the root of the largest checkpoint of `metadata_blocks_max` blocks can list them
/// and the free blocks (`Config::invalid` refuses a `streams_max` too large for it).
pub fn root_fits(metadata_blocks_max: usize) -> bool {
    let lists = lists_size(metadata_blocks_max, 2 * metadata_blocks_max);
    BLOCK_HEADER_SIZE + size_of::<TableRoot>() + lists <= BLOCK_SIZE
}

/// Reads the root of a checkpoint's first block (which its header's checks passed): the
/// `TableRoot`, then its lists: the checkpoint's other blocks into `metadata` and their
/// checksums into `checksums` (after the root's own, already there), the free blocks into
/// `free`. Returns the root and where the entries start. `kimberlite inspect` reads a data
/// file's checkpoint with it too.
pub fn root_lists_read(
    bytes: &[u8],
    limits: &Limits,
    (metadata, checksums): (&mut Vec<u32>, &mut Vec<Checksum>),
    free: &mut Vec<u32>,
) -> Result<(TableRoot, usize), &'static str> {
    let records_end = BLOCK_HEADER_SIZE + block_header(bytes).records_size as usize;
    let start = BLOCK_HEADER_SIZE + size_of::<TableRoot>();
    let end = start + root_lists_size(limits);
    let Some(Ok((root, _))) = bytes.get(BLOCK_HEADER_SIZE..).map(TableRoot::read_from_prefix)
    else {
        return Err("streams table: root truncated");
    };
    if end > records_end.min(bytes.len()) {
        return Err("streams table: root lists truncated");
    }
    let lists_valid = (root.metadata_count as usize) < limits.metadata_blocks_max
        && root.free_count as usize <= limits.free_blocks_max
        && root.tail_blocks <= root.metadata_count.min(1)
        && root.reserved == 0;
    if !lists_valid {
        return Err("streams table: root lists malformed");
    }
    let (listed, frees) =
        bytes[start..end].split_at((limits.metadata_blocks_max - 1) * size_of::<ListedBlock>());
    for (index, slot) in listed.chunks_exact(size_of::<ListedBlock>()).enumerate() {
        let block = ListedBlock::read_from_bytes(slot).expect("a slot");
        if index >= root.metadata_count as usize {
            if block != ListedBlock::new_zeroed() {
                return Err("streams table: root list slots past their counts are not zero");
            }
            continue;
        }
        if u64::from(block.address) >= root.grid_head || block.reserved != 0 {
            return Err("streams table: a listed block is not below grid_head");
        }
        metadata.push(block.address);
        checksums.push(Checksum::from(block.checksum));
    }
    let mut addresses = frees
        .chunks_exact(size_of::<u32>())
        .map(|bytes| u32::from_le_bytes(bytes.try_into().expect("four bytes")));
    for _ in 0..root.free_count {
        let address = addresses.next().expect("the lists hold every slot");
        if u64::from(address) >= root.grid_head {
            return Err("streams table: a free block is not below grid_head");
        }
        free.push(address);
    }
    if addresses.any(|address| address != 0) {
        return Err("streams table: root list slots past their counts are not zero");
    }
    let in_use = |address: &u32| free.binary_search(address).is_ok();
    if !free.is_sorted_by(|a, b| a < b) || metadata.iter().any(in_use) {
        return Err("streams table: free blocks unsorted or in use");
    }
    Ok((root, end))
}

impl StateMachine {
    /// Bytes for entries in table block `index` (the first also holds the root and its lists).
    fn table_space(&self, index: u32) -> usize {
        let root =
            if index == 0 { size_of::<TableRoot>() + root_lists_size(&self.limits) } else { 0 };
        BLOCK_SIZE - BLOCK_HEADER_SIZE - root
    }

    /// Makes the committed state durable in the grid (see the module docs). Call right after
    /// committing the checkpoint op, once the checkpoint before it is durable; the result comes
    /// from `poll_checkpoint`. That checkpoint's blocks join the free list for the next
    /// checkpoint to reuse.
    pub fn checkpoint<S: Storage>(&mut self, storage: &mut S) {
        assert_eq!(self.status, Status::Open);
        assert!(self.checkpointing.is_none());
        if !self.dirty {
            assert_eq!(self.writes_in_flight(), 0);
            self.checkpointing = Some(Checkpointing {
                table_blocks: 0,
                built: 0,
                entry_next: 0,
                root_entries: 0,
                tail_pending: false,
                root: TableRoot::new_zeroed(),
                // The cluster's grid is in the superblock's part of the state: a raise costs
                // no block.
                result: Some(CheckpointState {
                    grid_blocks_limit: self.log.grid_limit,
                    ..self.checkpoint_last
                }),
            });
            self.checkpoint_last.grid_blocks_limit = self.log.grid_limit;
            return;
        }
        let table_blocks = self.table_block_count();
        let tail_blocks = u32::from(self.open_block.event_count > 0);
        self.metadata_allocate(table_blocks + tail_blocks);
        let root = TableRoot {
            grid_head: self.log.grid_head,
            position_next: self.log.position_next,
            log_blocks: self.log.blocks,
            stream_count: u64::from(self.streams.count()),
            log_frontier: self.log.frontier,
            metadata_count: table_blocks + tail_blocks - 1,
            free_count: self.free.len() as u32,
            tail_blocks,
            reserved: 0,
        };
        let root_entries = self.table_entries_fitting(0, self.table_space(0));
        let progress = Checkpointing {
            table_blocks,
            built: 0,
            entry_next: root_entries,
            root_entries,
            tail_pending: tail_blocks == 1,
            root,
            result: None,
        };
        self.metadata_checksums.clear();
        self.metadata_checksums.resize(self.metadata_next.len(), Checksum(0));
        self.checkpointing = Some(progress);
        self.checkpoint_continue(storage);
    }

    /// Picks the addresses of a checkpoint of `count` blocks into `metadata_next`: free blocks
    /// first, lowest first, then blocks at `grid_head`; then updates the free list: what was
    /// not taken, and the blocks of the checkpoint before, which are free once this one is
    /// durable.
    fn metadata_allocate(&mut self, count: u32) {
        assert!(count as usize <= self.limits.metadata_blocks_max);
        self.metadata_next.clear();
        let from_free = (count as usize).min(self.free.len());
        self.metadata_next.extend(self.free.drain(..from_free));
        self.blocks_reused += from_free as u64;
        while self.metadata_next.len() < count as usize {
            assert!(self.log.grid_head < self.log.grid_limit, "the reserve holds a checkpoint");
            let address = u32::try_from(self.log.grid_head).expect("grid addresses fit u32");
            self.metadata_next.push(address);
            self.log.grid_head += 1;
        }
        self.free.extend_from_slice(&self.metadata_last);
        self.free.sort_unstable();
        assert!(self.free.len() <= self.limits.free_blocks_max);
    }

    /// Builds the tail at `address` in `bytes`: the open block's records, a directory of its
    /// streams without pointers, a header of kind `Tail`; returns its checksum.
    fn tail_fill(&self, bytes: &mut [u8], address: u64) -> Checksum {
        let open = &self.open_block;
        let records_end = BLOCK_HEADER_SIZE + open.records_size as usize;
        let source = open.buffer.as_ref().expect("an open block with events").buffer();
        bytes[BLOCK_HEADER_SIZE..records_end]
            .copy_from_slice(&source[BLOCK_HEADER_SIZE..records_end]);
        let mut at = records_end;
        for &entry in &open.streams {
            let directory_entry = open_directory_entry(self.streams.get(entry), 0);
            bytes[at..at + size_of::<DirectoryEntry>()].copy_from_slice(directory_entry.as_bytes());
            at += size_of::<DirectoryEntry>();
        }
        bytes[at..].fill(0);
        let mut header = self.seal_header(address, self.log.blocks + 1);
        header.kind = BlockKind::Tail as u8;
        header.directory_size = (at - records_end) as u32;
        header.log_pointer_count = 0;
        header.log_pointers = [BlockPointer::default(); _];
        block_finish(bytes, &header)
    }

    /// The checkpoint's state once every write has landed; commits may continue after.
    pub fn poll_checkpoint(&mut self) -> Option<CheckpointState> {
        let result = self.checkpointing.as_ref()?.result?;
        self.checkpointing = None;
        Some(result)
    }

    /// Fills and writes table blocks while buffers are free; finishes once all have landed.
    pub(super) fn checkpoint_continue<S: Storage>(&mut self, storage: &mut S) {
        let Some(mut progress) = self.checkpointing else { return };
        if progress.result.is_some() {
            return;
        }
        if progress.tail_pending && self.pool.free_count() > 0 {
            let address = u64::from(*self.metadata_next.last().expect("the tail's address"));
            self.tails_written += 1;
            let mut buffer = self.pool.get();
            let tail = self.tail_fill(buffer.buffer_mut_unique(), address);
            *self.metadata_checksums.last_mut().expect("the tail's checksum") = tail;
            progress.tail_pending = false;
            self.block_write(storage, address, buffer);
        }
        while !progress.tail_pending
            && progress.built < progress.table_blocks
            && self.pool.free_count() > 0
        {
            // The tail and the table blocks after the root first: the root lists their
            // checksums.
            let index = (progress.built + 1) % progress.table_blocks;
            let entry_from = if index == 0 { 0 } else { progress.entry_next };
            let mut buffer = self.pool.get();
            let address = u64::from(self.metadata_next[index as usize]);
            let bytes = buffer.buffer_mut_unique();
            let (entry_end, block_checksum) =
                self.table_block_fill(bytes, address, (index, entry_from), &progress.root);
            if index == 0 {
                assert_eq!(entry_end, progress.root_entries);
            } else {
                progress.entry_next = entry_end;
            }
            self.metadata_checksums[index as usize] = block_checksum;
            progress.built += 1;
            self.block_write(storage, address, buffer);
        }
        let built = !progress.tail_pending && progress.built == progress.table_blocks;
        if built && self.writes_in_flight() == 0 {
            assert_eq!(progress.entry_next, self.streams.count());
            let root_checksum = self.metadata_checksums[0];
            let state = CheckpointState {
                grid_head: progress.root.grid_head,
                streams_table_address: u64::from(self.metadata_next[0]),
                streams_table_blocks: self.metadata_next.len() as u32,
                streams_table_checksum: root_checksum,
                checkpoint_state_checksum: state_checksum(&progress.root, root_checksum),
                grid_blocks_limit: self.log.grid_limit,
            };
            assert_eq!(state.grid_head, self.log.grid_head);
            progress.result = Some(state);
            self.checkpoint_last = state;
            std::mem::swap(&mut self.metadata_last, &mut self.metadata_next);
            self.dirty = false;
        }
        self.checkpointing = Some(progress);
    }

    /// How many streams from `entry_from` fit in `space` bytes.
    fn table_entries_fitting(&self, entry_from: u32, space: usize) -> u32 {
        let mut used = 0;
        let mut entry = entry_from;
        while entry < self.streams.count() {
            let size = table_entry_size(self.streams.get(entry).blocks);
            if used + size > space {
                break;
            }
            used += size;
            entry += 1;
        }
        entry - entry_from
    }

    fn table_block_count(&self) -> u32 {
        let mut blocks = 0;
        let mut entry = 0;
        loop {
            let space = self.table_space(blocks);
            let fitting = self.table_entries_fitting(entry, space);
            entry += fitting;
            blocks += 1;
            if entry == self.streams.count() {
                return blocks;
            }
            assert!(fitting > 0 || blocks == 1, "a block after the root holds an entry");
        }
    }

    /// Writes the root and its lists (the checkpoint's other blocks, the free blocks) at `at`;
    /// returns where entries start.
    fn root_fill(&self, bytes: &mut [u8], root: &TableRoot) -> usize {
        let mut at = BLOCK_HEADER_SIZE;
        bytes[at..at + size_of::<TableRoot>()].copy_from_slice(root.as_bytes());
        at += size_of::<TableRoot>();
        let lists_end = at + root_lists_size(&self.limits);
        bytes[at..lists_end].fill(0);
        let listed = self.metadata_next.iter().zip(&self.metadata_checksums).skip(1);
        for (address, checksum) in listed {
            let block = ListedBlock {
                address: *address,
                reserved: 0,
                checksum: ChecksumBytes::from(*checksum),
            };
            bytes[at..at + size_of::<ListedBlock>()].copy_from_slice(block.as_bytes());
            at += size_of::<ListedBlock>();
        }
        at = BLOCK_HEADER_SIZE
            + size_of::<TableRoot>()
            + (self.limits.metadata_blocks_max - 1) * size_of::<ListedBlock>();
        for address in &self.free {
            bytes[at..at + size_of::<u32>()].copy_from_slice(&address.to_le_bytes());
            at += size_of::<u32>();
        }
        lists_end
    }

    /// Builds table block `index` at `address` in `bytes`, with the entries that fit from
    /// `entry_from` (and `root` first if it is the root); returns the entry after its last, and
    /// its checksum.
    fn table_block_fill(
        &self,
        bytes: &mut [u8],
        address: u64,
        (index, entry_from): (u32, u32),
        root: &TableRoot,
    ) -> (u32, Checksum) {
        let mut at = BLOCK_HEADER_SIZE;
        if index == 0 {
            at = self.root_fill(bytes, root);
        }
        let count = self.table_entries_fitting(entry_from, self.table_space(index));
        for entry in entry_from..entry_from + count {
            let stream = self.streams.get(entry);
            let frontier_count = frontier_count(stream.blocks);
            let table_entry = TableEntry {
                stream: stream.id,
                tenant: stream.tenant,
                offset_next: stream.offset_next,
                blocks: stream.blocks,
                chain: ChecksumBytes::from(stream.chain),
                frontier_count,
                reserved: 0,
            };
            bytes[at..at + size_of::<TableEntry>()].copy_from_slice(table_entry.as_bytes());
            at += size_of::<TableEntry>();
            let frontier = &self.streams.frontier(entry)[..frontier_count as usize];
            let frontier_bytes = frontier.as_bytes();
            bytes[at..at + frontier_bytes.len()].copy_from_slice(frontier_bytes);
            at += frontier_bytes.len();
        }
        bytes[at..].fill(0);
        let mut header = BlockHeader::new_zeroed();
        header.kind = BlockKind::StreamsTable as u8;
        header.version = BLOCK_VERSION;
        header.cluster = self.config.cluster.get();
        header.address = address;
        header.ordinal = u64::from(index);
        header.position_first = root.position_next;
        header.position_end = root.position_next;
        header.records_size = (at - BLOCK_HEADER_SIZE) as u32;
        header.directory_count = count;
        let checksum = block_finish(bytes, &header);
        (entry_from + count, checksum)
    }

    /// Nothing in flight: no write, read, open or checkpoint (state sync waits for this).
    pub fn quiescent(&self) -> bool {
        self.writes_in_flight() == 0
            && self.checkpointing.is_none()
            && self.opening.is_none()
            && self.reads_idle()
    }

    /// Drops the committed state held in memory, so that `open` can load a newer checkpoint
    /// whose blocks state sync wrote into the grid. The grid is left as it is.
    pub fn close(&mut self) {
        assert!(self.quiescent());
        assert_eq!(self.status, Status::Open);
        self.open_block.buffer = None;
        self.status = Status::New;
    }

    /// Loads the state `checkpoint` describes (all zero: the empty state of a new data file).
    /// The result comes from `poll_open`. After a failure only `open` may follow.
    pub fn open<S: Storage>(&mut self, storage: &mut S, checkpoint: &CheckpointState) {
        assert!(self.status == Status::New || self.status == Status::Failed);
        assert_eq!(self.writes_in_flight(), 0);
        self.open_block.buffer = None;
        self.streams.reset();
        self.log = Log::new();
        self.open_block.reset(0);
        self.dirty = false;
        self.op_last = Op(0);
        self.open_result = None;
        self.free.clear();
        self.metadata_last.clear();
        if let Some(reason) = self.checkpoint_invalid(checkpoint) {
            return self.open_done(Err(reason));
        }
        self.checkpoint_last = *checkpoint;
        self.log.grid_limit = checkpoint.grid_blocks_limit;
        if checkpoint.streams_table_blocks == 0 {
            return self.open_done(Ok(()));
        }
        self.status = Status::Opening;
        self.opening =
            Some(Opening { checkpoint: *checkpoint, block_next: 0, root: TableRoot::new_zeroed() });
        let root = u32::try_from(checkpoint.streams_table_address).expect("checked in range");
        self.metadata_last.push(root);
        self.metadata_checksums.clear();
        self.metadata_checksums.push(checkpoint.streams_table_checksum);
        self.open_read(storage);
    }

    /// The open's result, once.
    pub fn poll_open(&mut self) -> Option<Result<(), &'static str>> {
        self.open_result.take()
    }

    fn checkpoint_invalid(&self, checkpoint: &CheckpointState) -> Option<&'static str> {
        if checkpoint.grid_blocks_limit > self.limits.grid_blocks {
            return Some(GRID_TOO_SMALL);
        }
        if checkpoint.streams_table_blocks == 0 {
            let limit = checkpoint.grid_blocks_limit;
            if *checkpoint != (CheckpointState { grid_blocks_limit: limit, ..Default::default() }) {
                return Some("checkpoint: fields set without a streams table");
            }
            return None;
        }
        if checkpoint.grid_head > checkpoint.grid_blocks_limit {
            return Some("checkpoint: grid_head is beyond the cluster's grid");
        }
        if checkpoint.streams_table_address >= checkpoint.grid_head {
            return Some("checkpoint: the streams table is not below grid_head");
        }
        if checkpoint.streams_table_blocks as usize > self.limits.metadata_blocks_max {
            return Some("checkpoint: more blocks than the largest checkpoint has");
        }
        None
    }

    fn open_read<S: Storage>(&mut self, storage: &mut S) {
        let opening = self.opening.expect("an open in progress");
        let address = u64::from(self.metadata_last[opening.block_next as usize]);
        let buffer = self.reads[0].buffer.take().expect("reads wait for the open");
        let request = IoRequest {
            token: token(TokenKind::Open, 0),
            kind: IoKind::Read,
            zone: Zone::Grid,
            offset: self.block_offset(address),
            length: BLOCK_SIZE,
            buffer_offset: 0,
        };
        storage.submit(request, buffer);
    }

    /// The kind block `index` of the checkpoint being opened has: the root and the table
    /// blocks, then the tail if the root names one.
    fn open_block_kind(&self, opening: &Opening, index: u32) -> BlockKind {
        let last = opening.checkpoint.streams_table_blocks - 1;
        if index > 0 && index == last && opening.root.tail_blocks == 1 {
            BlockKind::Tail
        } else {
            BlockKind::StreamsTable
        }
    }

    pub(super) fn open_read_complete<S: Storage>(
        &mut self,
        storage: &mut S,
        completion: Completion,
    ) {
        assert_eq!(self.status, Status::Opening);
        let buffer = completion.buffer;
        assert!(self.reads[0].buffer.is_none());
        self.reads[0].buffer = Some(buffer.clone());
        let opening = self.opening.expect("an open in progress");
        let address = u64::from(self.metadata_last[opening.block_next as usize]);
        let expected = self.metadata_checksums[opening.block_next as usize];
        let kind = self.open_block_kind(&opening, opening.block_next);
        let cluster = self.config.cluster;
        let invalid = match completion.result {
            Err(_) => Some("checkpoint: block unreadable"),
            Ok(()) => block_invalid(buffer.buffer(), cluster, address, expected, kind),
        };
        if let Some(reason) = invalid {
            // Rot, a torn, lost or misdirected write: a peer holds the block that checksum
            // names.
            self.block_fault = Some(BlockFault { address, checksum: Some(expected) });
            return self.open_done(Err(reason));
        }
        let loaded = match kind {
            BlockKind::Tail => self.open_tail_load(buffer.buffer()),
            _ => self.open_block_load(buffer.buffer()),
        };
        drop(buffer);
        if let Err(reason) = loaded {
            return self.open_done(Err(reason));
        }
        let mut opening = self.opening.expect("an open in progress");
        opening.block_next += 1;
        self.opening = Some(opening);
        if opening.block_next < opening.checkpoint.streams_table_blocks {
            return self.open_read(storage);
        }
        let result = self.open_verify(&opening);
        self.open_done(result);
    }

    /// Checks one table block and loads its root (and lists) and entries.
    fn open_block_load(&mut self, bytes: &[u8]) -> Result<(), &'static str> {
        let mut opening = self.opening.expect("an open in progress");
        let header = block_header(bytes);
        if header.ordinal != u64::from(opening.block_next) || header.directory_size != 0 {
            return Err("streams table: block out of order or malformed");
        }
        let records_end = BLOCK_HEADER_SIZE + header.records_size as usize;
        let mut at = BLOCK_HEADER_SIZE;
        if opening.block_next == 0 {
            let lists = (&mut self.metadata_last, &mut self.metadata_checksums);
            let (root, entries) = root_lists_read(bytes, &self.limits, lists, &mut self.free)?;
            self.open_root_load(&root, &opening.checkpoint)?;
            opening.root = root;
            self.opening = Some(opening);
            at = entries;
        }
        for _ in 0..header.directory_count {
            at = self.open_entry_load(bytes, at, records_end)?;
        }
        if at != records_end {
            return Err("streams table: records_size does not match the entries");
        }
        Ok(())
    }

    fn open_root_load(
        &mut self,
        root: &TableRoot,
        checkpoint: &CheckpointState,
    ) -> Result<(), &'static str> {
        if root.grid_head != checkpoint.grid_head {
            return Err("streams table: root grid_head does not match the checkpoint");
        }
        if root.log_blocks > self.limits.grid_blocks || root.position_next < root.log_blocks {
            return Err("streams table: root log size out of range");
        }
        if root.stream_count > u64::from(self.config.streams_max) {
            return Err("streams table: more streams than streams_max");
        }
        if root.metadata_count + 1 != checkpoint.streams_table_blocks {
            return Err("streams table: root lists another number of blocks");
        }
        self.log = Log {
            grid_head: root.grid_head,
            grid_limit: checkpoint.grid_blocks_limit,
            position_next: root.position_next,
            blocks: root.log_blocks,
            frontier: root.log_frontier,
        };
        self.open_block.reset(root.position_next);
        Ok(())
    }

    /// Loads the entry at byte `at`; returns where the next starts.
    fn open_entry_load(
        &mut self,
        bytes: &[u8],
        at: usize,
        records_end: usize,
    ) -> Result<usize, &'static str> {
        let Some(Ok((entry, _))) = bytes.get(at..records_end).map(TableEntry::read_from_prefix)
        else {
            return Err("streams table: entry truncated");
        };
        let size = table_entry_size(entry.blocks);
        if entry.blocks > self.limits.grid_blocks
            || entry.frontier_count != frontier_count(entry.blocks)
            || entry.frontier_count as usize > self.limits.levels
            || at + size > records_end
        {
            return Err("streams table: entry frontier malformed");
        }
        if !stream_id_valid(entry.stream) || self.streams.lookup(entry.stream).is_some() {
            return Err("streams table: stream id invalid or repeated");
        }
        if self.streams.is_full() {
            return Err("streams table: more streams than streams_max");
        }
        if entry.offset_next < entry.blocks || (entry.blocks > 0 && entry.offset_next == 0) {
            return Err("streams table: offset and blocks disagree");
        }
        let index = self.streams.insert(entry.stream, entry.tenant, Checksum::from(entry.chain));
        let stream = self.streams.get_mut(index);
        stream.offset_next = entry.offset_next;
        stream.blocks = entry.blocks;
        let pointers = &bytes[at + size_of::<TableEntry>()..at + size];
        let frontier = self.streams.frontier_mut(index);
        for (level, pointer_bytes) in pointers.chunks_exact(size_of::<BlockPointer>()).enumerate() {
            frontier[level] = BlockPointer::read_from_bytes(pointer_bytes).expect("pointer size");
        }
        Ok(at + size)
    }

    /// Loads the tail into the open block: its records, and from its directory where each
    /// stream's events in it start.
    fn open_tail_load(&mut self, bytes: &[u8]) -> Result<(), &'static str> {
        let header = block_header(bytes);
        let event_count = header.position_end.checked_sub(header.position_first);
        let records_end = BLOCK_HEADER_SIZE + header.records_size as usize;
        let directory_size = header.directory_count as usize * size_of::<DirectoryEntry>();
        let consistent = header.ordinal == self.log.blocks + 1
            && header.position_end == self.log.position_next
            && event_count.is_some_and(|count| count > 0 && count <= u64::from(u32::MAX))
            && header.directory_size as usize == directory_size
            && header.op_min <= header.op_max;
        if !consistent {
            return Err("tail: header does not continue the log");
        }
        let mut events: u64 = 0;
        for index in 0..header.directory_count as usize {
            let at = records_end + index * size_of::<DirectoryEntry>();
            let entry = DirectoryEntry::read_from_prefix(&bytes[at..]).expect("in the block").0;
            events += u64::from(self.open_tail_entry_load(&entry, records_end)?);
        }
        let event_count = event_count.expect("checked");
        if events != event_count {
            return Err("tail: directory does not hold the block's events");
        }
        let events = u32::try_from(events).expect("checked against event_count");
        let mut buffer = self.pool.get();
        buffer.buffer_mut_unique()[..records_end].copy_from_slice(&bytes[..records_end]);
        let open = &mut self.open_block;
        open.buffer = Some(buffer);
        open.records_size = header.records_size;
        open.event_count = events;
        open.op_min = Op(header.op_min);
        open.op_max = Op(header.op_max);
        open.position_first = header.position_first;
        Ok(())
    }

    /// One directory entry of the tail: the stream's events in the open block. Returns how
    /// many.
    fn open_tail_entry_load(
        &mut self,
        entry: &DirectoryEntry,
        records_end: usize,
    ) -> Result<u32, &'static str> {
        let Some(index) = self.streams.lookup(entry.stream) else {
            return Err("tail: a stream not in the table");
        };
        let stream = *self.streams.get(index);
        if self.open_block.streams.len() == self.open_block.streams.capacity() {
            return Err("tail: more streams than an open block holds");
        }
        let valid = stream.open_event_count == 0
            && entry.pointer_count == 0
            && entry.reserved == 0
            && entry.event_count > 0
            && entry.ordinal == stream.blocks + 1
            && entry.offset_first.checked_add(u64::from(entry.event_count))
                == Some(stream.offset_next)
            && (BLOCK_HEADER_SIZE..records_end).contains(&(entry.record_first as usize));
        if !valid {
            return Err("tail: a directory entry does not match its stream");
        }
        let stream = self.streams.get_mut(index);
        stream.open_record_first = entry.record_first;
        stream.open_event_count = entry.event_count;
        let open = &mut self.open_block;
        open.streams.push(index);
        open.directory_size += directory_entry_size(skip_pointer_count(stream.blocks + 1)) as u32;
        Ok(entry.event_count)
    }

    fn open_verify(&self, opening: &Opening) -> Result<(), &'static str> {
        if state_checksum(&opening.root, opening.checkpoint.streams_table_checksum)
            != opening.checkpoint.checkpoint_state_checksum
        {
            return Err("streams table: state checksum does not match");
        }
        if opening.root.stream_count != u64::from(self.streams.count()) {
            return Err("streams table: stream count does not match the entries");
        }
        Ok(())
    }

    fn open_done(&mut self, result: Result<(), &'static str>) {
        self.opening = None;
        if result.is_err() {
            self.open_block.buffer = None;
        }
        self.status = if result.is_ok() { Status::Open } else { Status::Failed };
        self.open_result = Some(result);
    }
}
