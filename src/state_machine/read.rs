//! Reads: read_stream, read_log and stream_info, served from committed state without consensus.
//!
//! A read walks towards its cursor (a stream offset or a log position) one step at a time.
//! Events in the open block are copied from memory. Events in sealed blocks are found by a
//! descent of the chain's skip list: start at the highest frontier level whose block still ends
//! after the cursor, then in each block follow the highest skip pointer whose block still ends
//! after the cursor, until the block holds the cursor. Blocks still being written are read from
//! memory; others are read from the grid into the read's own block buffer and verified (checksum
//! against the pointer, address, kind, structure) before anything in them is used. Every step
//! re-reads the current state, so a read that spans commits (or a seal) stays correct: committed
//! events never change, only where they are kept.
//!
//! The descent from frontier level `i` takes at most `i + 1` block reads (each jump removes the
//! top bit of the remaining ordinal distance), so at most `floor(log2(blocks)) + 1` per block of
//! events returned.

use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::constants::{BLOCK_SIZE, HEADER_SIZE, READ_WAIT_MS_MAX, SKIP_LEVELS_MAX};
use crate::state_machine::block::{
    BLOCK_HEADER_SIZE, block_header, block_invalid, directory_find, frontier_count,
    frontier_ordinal, record_at, skip_level,
};
use crate::state_machine::types::{
    BlockKind, BlockPointer, ReadLog, ReadReplyHeader, ReadStream, ResultCode, StreamInfo,
    StreamInfoReply,
};
use crate::state_machine::{
    BlockFault, ReadBusy, ReadId, ReadReply, StateMachine, Status, TokenKind, token,
};
use crate::vsr::header::Checksum;
use crate::vsr::header::{ChecksumBytes, Operation};
use crate::vsr::layout::Zone;
use crate::vsr::message_pool::Message;
use crate::vsr::storage::{Completion, IoKind, IoRequest, Storage};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReadStatus {
    Free,
    Active,
    Done,
}

/// One read in progress. It owns a block buffer for good (`buffer`, absent while the grid
/// fills it) and the caller's reply message until `poll_read`.
pub(super) struct ReadSlot {
    pub(super) status: ReadStatus,
    id: ReadId,
    operation: Operation,
    stream: u64,
    entry: u32,
    /// The next offset (read_stream) or position (read_log) to return.
    cursor: u64,
    /// What was committed when the read started: it returns nothing at or after this.
    end: u64,
    count_remaining: u32,
    reply: Option<Message>,
    /// Body bytes so far, including the room for the reply header.
    reply_size: usize,
    event_count: u32,
    pub(super) buffer: Option<Message>,
    /// The block being fetched, and its ordinal in the chain (checked against the block).
    target: BlockPointer,
    target_ordinal: u64,
    /// Blocks visited by the current descent (bounded, against a cycle in crafted bytes).
    descent_steps: u32,
}

impl ReadSlot {
    pub(super) fn new(buffer: Message) -> ReadSlot {
        ReadSlot {
            status: ReadStatus::Free,
            id: ReadId(0),
            operation: Operation::Reserved,
            stream: 0,
            entry: 0,
            cursor: 0,
            end: 0,
            count_remaining: 0,
            reply: None,
            reply_size: 0,
            event_count: 0,
            buffer: Some(buffer),
            target: BlockPointer::default(),
            target_ordinal: 0,
            descent_steps: 0,
        }
    }
}

/// A chain as a read sees it: its events in the open block, and its frontier.
struct Chain<'a> {
    open_key_first: u64,
    open_key_end: u64,
    open_records_first: usize,
    blocks: u64,
    frontier: &'a [BlockPointer],
}

/// What a read does next.
enum Step {
    Continue,
    Wait,
    Finish(ResultCode),
}

/// What a read did with a block.
enum BlockStep {
    /// Copied what it wanted from the block.
    Copied,
    /// The reply has no room for the next event.
    Full,
    /// Set the next target, further down the skip list.
    Descend,
    Corrupt,
}

impl StateMachine {
    /// Starts a read of `operation` (read_stream, read_log or stream_info) with the client's
    /// `body`, replying into `reply` (an unshared message of `message_size_max` bytes). A body
    /// that is not the operation's request gives a `body_invalid` reply, not an error.
    /// No read is in progress or waiting to be polled.
    pub(super) fn reads_idle(&self) -> bool {
        self.reads.iter().all(|slot| slot.status == ReadStatus::Free) && self.reads_done.is_empty()
    }

    pub fn read_start<S: Storage>(
        &mut self,
        storage: &mut S,
        operation: Operation,
        body: &[u8],
        reply: Message,
    ) -> Result<ReadId, ReadBusy> {
        assert_eq!(self.status, Status::Open);
        assert!(operation.is_read());
        assert!(reply.buffer().len() >= self.config.message_size_max as usize);
        let Some(slot) = self.reads.iter().position(|read| read.status == ReadStatus::Free) else {
            return Err(ReadBusy { reply });
        };
        let id = ReadId(self.read_id_next);
        self.read_id_next += 1;
        let read = &mut self.reads[slot];
        read.status = ReadStatus::Active;
        read.id = id;
        read.operation = operation;
        read.stream = 0;
        read.cursor = 0;
        read.end = 0;
        read.count_remaining = 0;
        read.reply = Some(reply);
        read.reply_size = size_of::<ReadReplyHeader>();
        read.event_count = 0;
        match operation {
            Operation::StreamInfo => self.stream_info(slot, body),
            Operation::ReadStream => self.read_stream_start(storage, slot, body),
            Operation::ReadLog => self.read_log_start(storage, slot, body),
            _ => unreachable!("asserted a read"),
        }
        Ok(id)
    }

    /// How long a read may wait for its first event (`wait_ms`), if it asks to and there is
    /// none at its start yet (its stream does not exist or has no event at `offset_from`; the
    /// log has none at `position_from`); `None` if it is to be answered now.
    pub fn read_wait(&self, operation: Operation, body: &[u8]) -> Option<u32> {
        assert_eq!(self.status, Status::Open);
        let (wait_ms, ready) = match operation {
            Operation::ReadStream => {
                let request = ReadStream::read_from_bytes(body).ok()?;
                let entry = self.streams.lookup(request.stream);
                let ready = entry
                    .is_some_and(|entry| request.offset_from < self.streams.get(entry).offset_next);
                (request.wait_ms, ready)
            }
            Operation::ReadLog => {
                let request = ReadLog::read_from_bytes(body).ok()?;
                (request.wait_ms, request.position_from < self.log.position_next)
            }
            _ => return None,
        };
        let waits = !ready && (1..=READ_WAIT_MS_MAX).contains(&wait_ms);
        waits.then_some(wait_ms)
    }

    /// The next finished read, in the order they finished.
    pub fn poll_read(&mut self) -> Option<ReadReply> {
        let slot = self.reads_done.pop_front()?;
        let read = &mut self.reads[slot];
        assert_eq!(read.status, ReadStatus::Done);
        read.status = ReadStatus::Free;
        let message = read.reply.take().expect("a finished read holds its reply");
        Some(ReadReply { id: read.id, message, body_size: read.reply_size })
    }

    fn stream_info(&mut self, slot: usize, body: &[u8]) {
        let mut info = StreamInfoReply::new_zeroed();
        (info.grid_used_bytes, info.grid_room_bytes) = self.grid_use();
        info.result = match StreamInfo::read_from_bytes(body) {
            Err(_) => ResultCode::BodyInvalid,
            Ok(request) => match self.streams.lookup(request.stream) {
                None => ResultCode::StreamNotFound,
                Some(entry) => {
                    let stream = self.streams.get(entry);
                    info.stream = stream.id;
                    info.tenant = stream.tenant;
                    info.offset_next = stream.offset_next;
                    info.event_count = stream.offset_next;
                    info.chain = ChecksumBytes::from(stream.chain);
                    ResultCode::Ok
                }
            },
        } as u32;
        let read = &mut self.reads[slot];
        let bytes = read.reply.as_mut().expect("an active read").buffer_mut_unique();
        bytes[HEADER_SIZE..][..size_of::<StreamInfoReply>()].copy_from_slice(info.as_bytes());
        read.reply_size = size_of::<StreamInfoReply>();
        self.read_done(slot);
    }

    fn read_stream_start<S: Storage>(&mut self, storage: &mut S, slot: usize, body: &[u8]) {
        let request = match ReadStream::read_from_bytes(body) {
            Ok(request) if request.wait_ms <= READ_WAIT_MS_MAX => request,
            _ => return self.read_finish(slot, ResultCode::BodyInvalid),
        };
        let Some(entry) = self.streams.lookup(request.stream) else {
            return self.read_finish(slot, ResultCode::StreamNotFound);
        };
        let read = &mut self.reads[slot];
        read.stream = request.stream;
        read.entry = entry;
        read.cursor = request.offset_from;
        read.end = self.streams.get(entry).offset_next;
        read.count_remaining = request.count_max;
        self.read_advance(storage, slot);
    }

    fn read_log_start<S: Storage>(&mut self, storage: &mut S, slot: usize, body: &[u8]) {
        let request = match ReadLog::read_from_bytes(body) {
            Ok(request) if request.wait_ms <= READ_WAIT_MS_MAX => request,
            _ => return self.read_finish(slot, ResultCode::BodyInvalid),
        };
        let read = &mut self.reads[slot];
        read.cursor = request.position_from;
        read.end = self.log.position_next;
        read.count_remaining = request.count_max;
        self.read_advance(storage, slot);
    }

    fn read_advance<S: Storage>(&mut self, storage: &mut S, slot: usize) {
        loop {
            match self.read_step(storage, slot) {
                Step::Continue => {}
                Step::Wait => return,
                Step::Finish(result) => return self.read_finish(slot, result),
            }
        }
    }

    /// Where the read's chain (its stream, or the log) keeps its events now.
    fn read_chain(&self, read: &ReadSlot) -> Chain<'_> {
        match read.operation {
            Operation::ReadStream => {
                let stream = self.streams.get(read.entry);
                Chain {
                    open_key_first: stream.sealed_end(),
                    open_key_end: stream.offset_next,
                    open_records_first: stream.open_record_first as usize,
                    blocks: stream.blocks,
                    frontier: self.streams.frontier(read.entry),
                }
            }
            Operation::ReadLog => Chain {
                open_key_first: self.open_block.position_first,
                open_key_end: self.log.position_next,
                open_records_first: BLOCK_HEADER_SIZE,
                blocks: self.log.blocks,
                frontier: &self.log.frontier,
            },
            _ => unreachable!("a read of events"),
        }
    }

    /// One step: copy from the open block, or start a descent towards the cursor.
    fn read_step<S: Storage>(&mut self, storage: &mut S, slot: usize) -> Step {
        let read = &self.reads[slot];
        assert_eq!(read.status, ReadStatus::Active);
        if read.count_remaining == 0 || read.cursor >= read.end {
            return Step::Finish(ResultCode::Ok);
        }
        let chain = self.read_chain(read);
        if read.cursor >= chain.open_key_first {
            let (records_first, key_end) = (chain.open_records_first, chain.open_key_end);
            let buffer = self.open_block.buffer.clone().expect("the open block holds the cursor");
            let records_end = BLOCK_HEADER_SIZE + self.open_block.records_size as usize;
            let block = buffer.buffer();
            return match self.read_copy(slot, block, records_first, records_end, key_end) {
                BlockStep::Copied => Step::Continue,
                BlockStep::Full => Step::Finish(ResultCode::Ok),
                BlockStep::Descend | BlockStep::Corrupt => unreachable!("our own open block"),
            };
        }
        let levels = frontier_count(chain.blocks) as usize;
        let level = skip_level(|level| chain.frontier[level], levels, read.cursor)
            .expect("the newest sealed block ends after the cursor");
        let target = chain.frontier[level];
        let target_ordinal = frontier_ordinal(chain.blocks, level);
        let read = &mut self.reads[slot];
        read.target = target;
        read.target_ordinal = target_ordinal;
        read.descent_steps = 0;
        self.read_fetch(storage, slot)
    }

    /// Processes the target block if it is in memory (following the descent), or submits its
    /// read.
    fn read_fetch<S: Storage>(&mut self, storage: &mut S, slot: usize) -> Step {
        loop {
            let address = u64::from(self.reads[slot].target.address);
            let Some(buffer) = self.block_in_memory(address) else {
                self.read_submit(storage, slot, address);
                return Step::Wait;
            };
            match self.read_block(slot, buffer.buffer()) {
                BlockStep::Descend => continue,
                BlockStep::Copied => return Step::Continue,
                BlockStep::Full => return Step::Finish(ResultCode::Ok),
                BlockStep::Corrupt => unreachable!("our own block in memory is sound"),
            }
        }
    }

    fn read_submit<S: Storage>(&mut self, storage: &mut S, slot: usize, address: u64) {
        let buffer = self.reads[slot].buffer.take().expect("a read's buffer is home");
        let request = IoRequest {
            token: token(TokenKind::Read, slot),
            kind: IoKind::Read,
            zone: Zone::Grid,
            offset: self.block_offset(address),
            length: BLOCK_SIZE,
            buffer_offset: 0,
        };
        storage.submit(request, buffer);
    }

    pub(super) fn read_block_complete<S: Storage>(
        &mut self,
        storage: &mut S,
        slot: usize,
        completion: Completion,
    ) {
        let buffer = completion.buffer;
        let read = &mut self.reads[slot];
        assert_eq!(read.status, ReadStatus::Active);
        assert!(read.buffer.is_none());
        read.buffer = Some(buffer.clone());
        let target = read.target;
        let cluster = self.config.cluster;
        let address = u64::from(target.address);
        let sound = completion.result.is_ok()
            && block_invalid(
                buffer.buffer(),
                cluster,
                address,
                Checksum::from(target.checksum),
                BlockKind::Events,
            )
            .is_none();
        let block_step =
            if sound { self.read_block(slot, buffer.buffer()) } else { BlockStep::Corrupt };
        if let BlockStep::Corrupt = block_step {
            self.block_faulty_last = Some(address);
            self.block_fault =
                Some(BlockFault { address, checksum: Some(Checksum::from(target.checksum)) });
        }
        // The read's buffer must be unshared again before the next fetch submits it.
        drop(buffer);
        let step = match block_step {
            BlockStep::Descend => self.read_fetch(storage, slot),
            BlockStep::Copied => Step::Continue,
            BlockStep::Full => Step::Finish(ResultCode::Ok),
            BlockStep::Corrupt => Step::Finish(ResultCode::BlockCorrupt),
        };
        match step {
            Step::Continue => self.read_advance(storage, slot),
            Step::Wait => {}
            Step::Finish(result) => self.read_finish(slot, result),
        }
    }

    /// Uses a sound block of the target's chain: copies from it if it holds the cursor,
    /// otherwise sets the next target from its skip pointers. Its bytes are still untrusted.
    fn read_block(&mut self, slot: usize, block: &[u8]) -> BlockStep {
        let read = &self.reads[slot];
        let header = block_header(block);
        if read.descent_steps as usize > 2 * SKIP_LEVELS_MAX {
            return BlockStep::Corrupt;
        }
        let (key_first, records_first, pointer_count, ordinal, found) = match read.operation {
            Operation::ReadStream => {
                let Ok(Some(found)) = directory_find(block, read.stream) else {
                    return BlockStep::Corrupt;
                };
                let entry = found.entry;
                if entry.offset_first.checked_add(u64::from(entry.event_count))
                    != Some(read.target.key_end)
                {
                    return BlockStep::Corrupt;
                }
                let records_first = entry.record_first as usize;
                (entry.offset_first, records_first, entry.pointer_count, entry.ordinal, Some(found))
            }
            Operation::ReadLog => {
                if header.position_end != read.target.key_end {
                    return BlockStep::Corrupt;
                }
                let pointers = u32::from(header.log_pointer_count);
                (header.position_first, BLOCK_HEADER_SIZE, pointers, header.ordinal, None)
            }
            _ => unreachable!("a read of events"),
        };
        if ordinal != read.target_ordinal || key_first >= read.target.key_end {
            return BlockStep::Corrupt;
        }
        if read.cursor >= key_first {
            let records_end = BLOCK_HEADER_SIZE + header.records_size as usize;
            let key_end = read.target.key_end;
            return self.read_copy(slot, block, records_first, records_end, key_end);
        }
        let pointer = |level: usize| match found {
            Some(found) => found.pointer(block, level),
            None => header.log_pointers[level],
        };
        let Some(level) = skip_level(pointer, pointer_count as usize, read.cursor) else {
            return BlockStep::Corrupt;
        };
        let Some(ordinal_next) = ordinal.checked_sub(1 << level).filter(|next| *next >= 1) else {
            return BlockStep::Corrupt;
        };
        let read = &mut self.reads[slot];
        read.target = pointer(level);
        read.target_ordinal = ordinal_next;
        read.descent_steps += 1;
        BlockStep::Descend
    }

    /// Copies, in order, the records of `block` from byte `records_first` that the read wants:
    /// its stream's (or all, for the log) from the cursor up to `key_end`, the read's end and
    /// its count, while they fit in the reply.
    fn read_copy(
        &mut self,
        slot: usize,
        block: &[u8],
        records_first: usize,
        records_end: usize,
        key_end: u64,
    ) -> BlockStep {
        let body_size_max = self.limits.reply_body_size_max;
        let read = &mut self.reads[slot];
        let limit = key_end.min(read.end);
        let mut at = records_first;
        while read.cursor < limit && read.count_remaining > 0 {
            let Ok((record, size)) = record_at(block, at, records_end) else {
                return BlockStep::Corrupt;
            };
            let record_bytes = &block[at..at + size];
            at += size;
            let key = match read.operation {
                Operation::ReadStream if record.stream != read.stream => continue,
                Operation::ReadStream => record.offset,
                _ => record.position,
            };
            if key < read.cursor {
                continue;
            }
            if key > read.cursor {
                return BlockStep::Corrupt;
            }
            if read.reply_size + size > body_size_max {
                return BlockStep::Full;
            }
            let reply = read.reply.as_mut().expect("an active read").buffer_mut_unique();
            reply[HEADER_SIZE + read.reply_size..][..size].copy_from_slice(record_bytes);
            read.reply_size += size;
            read.event_count += 1;
            read.cursor += 1;
            read.count_remaining -= 1;
        }
        BlockStep::Copied
    }

    /// Writes the reply header of a read_stream or read_log and queues the reply.
    fn read_finish(&mut self, slot: usize, result: ResultCode) {
        let read = &mut self.reads[slot];
        assert!(read.operation == Operation::ReadStream || read.operation == Operation::ReadLog);
        let header = ReadReplyHeader {
            result: result as u32,
            event_count: read.event_count,
            next: read.cursor,
            end: read.end,
        };
        let reply = read.reply.as_mut().expect("an active read").buffer_mut_unique();
        reply[HEADER_SIZE..][..size_of::<ReadReplyHeader>()].copy_from_slice(header.as_bytes());
        self.read_done(slot);
    }

    fn read_done(&mut self, slot: usize) {
        let read = &mut self.reads[slot];
        assert_eq!(read.status, ReadStatus::Active);
        assert!(read.reply_size <= self.limits.reply_body_size_max);
        read.status = ReadStatus::Done;
        assert!(self.reads_done.len() < self.reads_done.capacity());
        self.reads_done.push_back(slot);
    }
}
