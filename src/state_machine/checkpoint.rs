//! Checkpoint and open: the streams table written to, and read back from, the grid.
//!
//! A checkpoint seals the open block (if it holds events), then writes the table to new blocks
//! at `grid_head`: the first starts with the `TableRoot` (the log's position, block count and
//! frontier), then come the streams' `TableEntry`s in creation order, as many per block as fit.
//! It is over when every grid write, earlier event blocks included, has landed. A checkpoint
//! after which nothing was committed writes nothing and keeps the previous table. The grid
//! always keeps `table_blocks_max` blocks free for it (appends and creates that would eat into
//! them fail with `storage_full`).
//!
//! Open reads the table blocks one after another, checks each block's own checksum, address and
//! structure, loads its entries, and at the end checks the checksum of the blocks' checksums and
//! the state checksum against the superblock's. Entries are inserted in creation order, so the
//! table (and every block built after it) is exactly the one that was checkpointed.

use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::constants::BLOCK_SIZE;
use crate::state_machine::block::{
    BLOCK_HEADER_SIZE, block_checksum, block_header, block_invalid, frontier_count,
};
use crate::state_machine::constants::BLOCK_VERSION;
use crate::state_machine::types::{
    BlockHeader, BlockKind, BlockPointer, TableEntry, TableRoot, stream_id_valid,
};
use crate::state_machine::{
    BlockFault, CheckpointState, Log, StateMachine, Status, TokenKind, token,
};
use crate::vsr::header::Op;
use crate::vsr::header::{Checksum, ChecksumBytes, ClusterId, checksum, checksum_chain};
use crate::vsr::layout::Zone;
use crate::vsr::storage::{Completion, IoKind, IoRequest, Storage};

/// A checkpoint in progress.
#[derive(Clone, Copy, Debug)]
pub(super) struct Checkpointing {
    address: u64,
    blocks: u32,
    block_next: u32,
    entry_next: u32,
    table_checksum: Checksum,
    root: TableRoot,
    result: Option<CheckpointState>,
}

/// An open in progress.
#[derive(Clone, Copy, Debug)]
pub(super) struct Opening {
    checkpoint: CheckpointState,
    block_next: u32,
    table_checksum: Checksum,
    root: TableRoot,
}

/// The state checksum: the checksum of the root, chained with the table checksum.
fn state_checksum(root: &TableRoot, table_checksum: Checksum) -> Checksum {
    checksum_chain(checksum(root.as_bytes()), table_checksum)
}

/// Why `block`, read from `address` as a block of the streams table, fails its own checksum,
/// address, kind, version or cluster, or `None`. Its checksum is only known from its own
/// header here: the superblock's checksum of the table's block checksums covers it at the end.
fn table_block_invalid(block: &[u8], cluster: ClusterId, address: u64) -> Option<&'static str> {
    let checksum_own = block_header(block).checksum.get();
    block_invalid(block, cluster, address, Checksum(checksum_own), BlockKind::StreamsTable)
}

fn table_entry_size(blocks: u64) -> usize {
    size_of::<TableEntry>() + frontier_count(blocks) as usize * size_of::<BlockPointer>()
}

/// Bytes for entries in table block `index` (the first also holds the root).
fn table_space(index: u32) -> usize {
    let root = if index == 0 { size_of::<TableRoot>() } else { 0 };
    BLOCK_SIZE - BLOCK_HEADER_SIZE - root
}

impl StateMachine {
    /// Makes the committed state durable in the grid (see the module docs). Call right after
    /// committing the checkpoint op; the result comes from `poll_checkpoint`.
    pub fn checkpoint<S: Storage>(&mut self, storage: &mut S) {
        assert_eq!(self.status, Status::Open);
        assert!(self.checkpointing.is_none());
        if !self.dirty {
            assert_eq!(self.writes_in_flight(), 0);
            assert_eq!(self.open_block.event_count, 0);
            let root = TableRoot::new_zeroed();
            self.checkpointing = Some(Checkpointing {
                address: 0,
                blocks: 0,
                block_next: 0,
                entry_next: 0,
                table_checksum: Checksum(0),
                root,
                result: Some(self.checkpoint_last),
            });
            return;
        }
        if self.open_block.event_count > 0 {
            self.seal(storage);
        }
        let blocks = self.table_block_count();
        assert!(u64::from(blocks) <= self.limits.table_blocks_max);
        let address = self.log.grid_head;
        assert!(address + u64::from(blocks) <= self.limits.grid_blocks);
        self.log.grid_head += u64::from(blocks);
        let root = TableRoot {
            grid_head: self.log.grid_head,
            position_next: self.log.position_next,
            log_blocks: self.log.blocks,
            stream_count: u64::from(self.streams.count()),
            log_frontier: self.log.frontier,
        };
        self.checkpointing = Some(Checkpointing {
            address,
            blocks,
            block_next: 0,
            entry_next: 0,
            table_checksum: Checksum(0),
            root,
            result: None,
        });
        self.checkpoint_continue(storage);
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
        while progress.block_next < progress.blocks && self.pool.free_count() > 0 {
            let mut buffer = self.pool.get();
            let (entry_end, block_checksum) =
                self.table_block_fill(buffer.buffer_mut_unique(), &progress);
            progress.entry_next = entry_end;
            progress.table_checksum = checksum_chain(progress.table_checksum, block_checksum);
            let address = progress.address + u64::from(progress.block_next);
            progress.block_next += 1;
            self.block_write(storage, address, buffer);
        }
        if progress.block_next == progress.blocks && self.writes_in_flight() == 0 {
            assert_eq!(progress.entry_next, self.streams.count());
            let state = CheckpointState {
                grid_head: progress.root.grid_head,
                streams_table_address: progress.address,
                streams_table_blocks: progress.blocks,
                streams_table_checksum: progress.table_checksum,
                checkpoint_state_checksum: state_checksum(&progress.root, progress.table_checksum),
            };
            assert_eq!(state.grid_head, self.log.grid_head);
            progress.result = Some(state);
            self.checkpoint_last = state;
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
            let fitting = self.table_entries_fitting(entry, table_space(blocks));
            entry += fitting;
            blocks += 1;
            if entry == self.streams.count() {
                return blocks;
            }
            assert!(fitting > 0);
        }
    }

    /// Builds table block `progress.block_next` in `bytes`; returns the entry after its last,
    /// and its checksum.
    fn table_block_fill(&self, bytes: &mut [u8], progress: &Checkpointing) -> (u32, Checksum) {
        let index = progress.block_next;
        let mut at = BLOCK_HEADER_SIZE;
        if index == 0 {
            bytes[at..at + size_of::<TableRoot>()].copy_from_slice(progress.root.as_bytes());
            at += size_of::<TableRoot>();
        }
        let count = self.table_entries_fitting(progress.entry_next, table_space(index));
        for entry in progress.entry_next..progress.entry_next + count {
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
            assert_eq!(stream.open_event_count, 0);
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
        header.address = progress.address + u64::from(index);
        header.ordinal = u64::from(index);
        header.position_first = progress.root.position_next;
        header.position_end = progress.root.position_next;
        header.records_size = (at - BLOCK_HEADER_SIZE) as u32;
        header.directory_count = count;
        bytes[..BLOCK_HEADER_SIZE].copy_from_slice(header.as_bytes());
        let checksum = block_checksum(bytes);
        bytes[..size_of::<Checksum>()].copy_from_slice(&checksum.to_le_bytes());
        (progress.entry_next + count, checksum)
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
        assert!(self.open_block.buffer.is_none());
        self.streams.reset();
        self.log = Log::new();
        self.open_block.reset(0);
        self.dirty = false;
        self.op_last = Op(0);
        self.open_result = None;
        if let Some(reason) = self.checkpoint_invalid(checkpoint) {
            return self.open_done(Err(reason));
        }
        self.checkpoint_last = *checkpoint;
        if checkpoint.streams_table_blocks == 0 {
            return self.open_done(Ok(()));
        }
        self.status = Status::Opening;
        self.opening = Some(Opening {
            checkpoint: *checkpoint,
            block_next: 0,
            table_checksum: Checksum(0),
            root: TableRoot::new_zeroed(),
        });
        self.open_read(storage);
    }

    /// The open's result, once.
    pub fn poll_open(&mut self) -> Option<Result<(), &'static str>> {
        self.open_result.take()
    }

    fn checkpoint_invalid(&self, checkpoint: &CheckpointState) -> Option<&'static str> {
        if checkpoint.streams_table_blocks == 0 {
            if *checkpoint != CheckpointState::default() {
                return Some("checkpoint: fields set without a streams table");
            }
            return None;
        }
        let table_end = checkpoint
            .streams_table_address
            .checked_add(u64::from(checkpoint.streams_table_blocks));
        if table_end != Some(checkpoint.grid_head) {
            return Some("checkpoint: the streams table does not end at grid_head");
        }
        if checkpoint.grid_head > self.limits.grid_blocks {
            return Some("checkpoint: grid_head is beyond the grid");
        }
        None
    }

    fn open_read<S: Storage>(&mut self, storage: &mut S) {
        let opening = self.opening.expect("an open in progress");
        let address = opening.checkpoint.streams_table_address + u64::from(opening.block_next);
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
        let address = opening.checkpoint.streams_table_address + u64::from(opening.block_next);
        let cluster = self.config.cluster;
        let invalid = match completion.result {
            Err(_) => Some("streams table: block unreadable"),
            Ok(()) => table_block_invalid(buffer.buffer(), cluster, address),
        };
        if let Some(reason) = invalid {
            // The block itself is bad (rot, a torn or misdirected write): a peer holds it.
            self.block_fault = Some(BlockFault { address, checksum: None });
            return self.open_done(Err(reason));
        }
        let loaded = self.open_block_load(buffer.buffer());
        drop(buffer);
        if let Err(reason) = loaded {
            return self.open_done(Err(reason));
        }
        let opening = self.opening.expect("an open in progress");
        if opening.block_next < opening.checkpoint.streams_table_blocks {
            return self.open_read(storage);
        }
        let result = self.open_verify(&opening);
        self.open_done(result);
    }

    /// Checks one table block and loads its root and entries.
    fn open_block_load(&mut self, bytes: &[u8]) -> Result<(), &'static str> {
        let mut opening = self.opening.expect("an open in progress");
        let address = opening.checkpoint.streams_table_address + u64::from(opening.block_next);
        let header = block_header(bytes);
        let kind = BlockKind::StreamsTable;
        if let Some(reason) = block_invalid(
            bytes,
            self.config.cluster,
            address,
            Checksum::from(header.checksum),
            kind,
        ) {
            return Err(reason);
        }
        if header.ordinal != u64::from(opening.block_next) || header.directory_size != 0 {
            return Err("streams table: block out of order or malformed");
        }
        let records_end = BLOCK_HEADER_SIZE + header.records_size as usize;
        let mut at = BLOCK_HEADER_SIZE;
        if opening.block_next == 0 {
            let Some(Ok((root, _))) = bytes.get(at..records_end).map(TableRoot::read_from_prefix)
            else {
                return Err("streams table: root truncated");
            };
            self.open_root_load(&root, &opening.checkpoint)?;
            opening.root = root;
            at += size_of::<TableRoot>();
        }
        for _ in 0..header.directory_count {
            at = self.open_entry_load(bytes, at, records_end)?;
        }
        if at != records_end {
            return Err("streams table: records_size does not match the entries");
        }
        opening.table_checksum =
            checksum_chain(opening.table_checksum, Checksum::from(header.checksum));
        opening.block_next += 1;
        self.opening = Some(opening);
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
        self.log = Log {
            grid_head: root.grid_head,
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
        if entry.offset_next < entry.blocks || (entry.blocks == 0) != (entry.offset_next == 0) {
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

    fn open_verify(&self, opening: &Opening) -> Result<(), &'static str> {
        if opening.table_checksum != opening.checkpoint.streams_table_checksum {
            return Err("streams table: checksum of block checksums does not match");
        }
        if state_checksum(&opening.root, opening.table_checksum)
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
        self.status = if result.is_ok() { Status::Open } else { Status::Failed };
        self.open_result = Some(result);
    }
}
