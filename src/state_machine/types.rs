//! The event store's wire formats (request and reply bodies) and disk formats (grid blocks and
//! the checkpointed streams table) as flat zerocopy structs: little-endian, every integer
//! explicitly sized, every record a multiple of 8 bytes so that records stay 8-byte aligned.
//! `docs/event-store.md` gives each of them byte by byte.
//!
//! Also here: the result codes, the per-stream checksum chain, and the parsers that walk
//! request bodies. Request bodies come from clients; the parsers never index past the end of
//! them and return a reason instead of panicking.

use static_assertions::const_assert_eq;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::constants::{
    APPEND_BATCHES_MAX, CREATE_STREAMS_MAX, HEADER_SIZE, REPLY_SIZE_MAX, SKIP_LEVELS_MAX,
};
use crate::vsr::header::{Checksum, ChecksumBytes, Operation, checksum, checksum_pieces};

/// The outcome of one create, one append batch or one read, carried in replies as a `u32`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultCode {
    Ok = 0,
    /// create_stream: a stream with this id exists (also a repeat within one request).
    StreamExists = 1,
    /// append, read_stream, stream_info: no stream has this id.
    StreamNotFound = 2,
    /// create_stream, append: the id is 0 or `u64::MAX`, which no stream can have.
    StreamIdInvalid = 3,
    /// append: `expected_offset` is neither the stream's next offset nor "any", or is "no
    /// stream" and the stream exists; the reply's offset is the stream's next offset.
    ExpectedOffsetWrong = 4,
    /// create_stream, or append to "no stream": the table holds `streams_max` streams.
    StreamsFull = 5,
    /// create_stream, append: the grid has no room for it and the next checkpoint.
    StorageFull = 6,
    /// append: an event is larger than the cluster's event size maximum.
    EventTooLarge = 7,
    /// append: an event has no type.
    EventTypeEmpty = 8,
    /// read_stream, read_log, stream_info: the body is not the operation's request struct.
    BodyInvalid = 9,
    /// read_stream, read_log: a grid block failed verification (checksum, address, structure)
    /// or could not be read. Events before it in the reply are good.
    BlockCorrupt = 10,
    /// import: the batch's first position is not the log's next one (the cluster's log is not
    /// the one the export was taken from, up to this batch); the reply's offset is the log's
    /// next position.
    ImportPositionWrong = 11,
    /// import: the chain after the batch's events is not the one the batch carries (the file
    /// was changed, or the stream's earlier events differ); the reply's offset is the stream's
    /// next offset.
    ImportChainWrong = 12,
}

impl ResultCode {
    pub const ALL: [ResultCode; 13] = [
        ResultCode::Ok,
        ResultCode::StreamExists,
        ResultCode::StreamNotFound,
        ResultCode::StreamIdInvalid,
        ResultCode::ExpectedOffsetWrong,
        ResultCode::StreamsFull,
        ResultCode::StorageFull,
        ResultCode::EventTooLarge,
        ResultCode::EventTypeEmpty,
        ResultCode::BodyInvalid,
        ResultCode::BlockCorrupt,
        ResultCode::ImportPositionWrong,
        ResultCode::ImportChainWrong,
    ];

    pub fn from_u32(value: u32) -> Option<ResultCode> {
        ResultCode::ALL.get(usize::try_from(value).ok()?).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            ResultCode::Ok => "ok",
            ResultCode::StreamExists => "stream_exists",
            ResultCode::StreamNotFound => "stream_not_found",
            ResultCode::StreamIdInvalid => "stream_id_invalid",
            ResultCode::ExpectedOffsetWrong => "expected_offset_wrong",
            ResultCode::StreamsFull => "streams_full",
            ResultCode::StorageFull => "storage_full",
            ResultCode::EventTooLarge => "event_too_large",
            ResultCode::EventTypeEmpty => "event_type_empty",
            ResultCode::BodyInvalid => "body_invalid",
            ResultCode::BlockCorrupt => "block_corrupt",
            ResultCode::ImportPositionWrong => "import_position_wrong",
            ResultCode::ImportChainWrong => "import_chain_wrong",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request and reply bodies.

/// One stream to create (create_stream body: one or more of these).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct CreateStream {
    pub stream: u64,
    pub tenant: u64,
}

/// The result of one `CreateStream`, in request order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct CreateStreamResult {
    pub result: u32,
    pub reserved: u32,
}

/// The head of one append batch; `event_count` events follow, `events_size_bytes` in all.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct AppendBatch {
    pub stream: u64,
    /// The offset the first event must get, `EXPECTED_OFFSET_ANY`, or `EXPECTED_NO_STREAM`
    /// (the stream must not exist: the batch creates it, with tenant 0).
    pub expected_offset: u64,
    pub event_count: u32,
    pub events_size_bytes: u32,
}

/// The head of one import batch (`kimberlite import`, from a file `kimberlite export` wrote):
/// events of one stream exactly as the exported log held them, to be appended at the same
/// offsets and positions with the same timestamp, so that they chain to the same checksums.
/// `append` is an append batch's head (`expected_offset`: the offset of the first event); its
/// `event_count` events follow, in the append encoding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct ImportBatch {
    pub append: AppendBatch,
    /// The stream's tenant (its chain's seed): the batch that starts a stream creates it.
    pub tenant: u64,
    /// The log position of the first event.
    pub position: u64,
    /// The timestamp every event of the batch was committed with.
    pub timestamp: u64,
    /// The stream's chain after the batch's last event.
    pub chain: ChecksumBytes,
}

/// The head of one event in an append batch; its payload follows: `type_size` bytes of type,
/// `metadata_size` of metadata and `data_size` of data, zero-padded together to a multiple of 8.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct EventHeader {
    pub data_size: u32,
    pub metadata_size: u16,
    pub type_size: u8,
    pub reserved: u8,
}

impl EventHeader {
    /// The payload's bytes, unpadded (u64: a header from a client may name any data size).
    pub fn payload_size(&self) -> u64 {
        u64::from(self.data_size) + u64::from(self.metadata_size) + u64::from(self.type_size)
    }
}

/// One event's type, metadata and data: what an append carries for it and a read returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// What kind of event it is, 1 to 255 bytes, opaque to the store.
    pub event_type: &'a [u8],
    /// Up to 65,535 bytes, opaque to the store, may be empty.
    pub metadata: &'a [u8],
    pub data: &'a [u8],
}

impl<'a> Event<'a> {
    /// The sizes of this event's parts (its `type_size` fits u8, its metadata u16).
    pub fn header(&self) -> EventHeader {
        EventHeader {
            data_size: u32::try_from(self.data.len()).expect("event data fits u32"),
            metadata_size: u16::try_from(self.metadata.len()).expect("metadata fits u16"),
            type_size: u8::try_from(self.event_type.len()).expect("an event type fits u8"),
            reserved: 0,
        }
    }

    /// Splits a payload of type, metadata and data (unpadded) as `header` sizes it.
    fn split(header: &EventHeader, payload: &'a [u8]) -> Event<'a> {
        assert_eq!(payload.len(), header.payload_size() as usize);
        let (event_type, rest) = payload.split_at(usize::from(header.type_size));
        let (metadata, data) = rest.split_at(usize::from(header.metadata_size));
        Event { event_type, metadata, data }
    }
}

/// The result of one append batch. `offset` is the first offset assigned on `ok`, otherwise
/// the stream's next offset (0 if the stream does not exist). A batch is all or nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct AppendResult {
    pub result: u32,
    pub reserved: u32,
    pub offset: u64,
}

/// The body of an `append_packed` prepare opens with a `PackedHead`, then `count` of these, one
/// per client request the primary packed, in order; then the requests' append bodies, one after
/// another, which together form one append body (the event store executes it as one). The
/// results of request i are its `batch_count` results, after those of the requests before it.
/// A register (request 0) may be packed too: it has no batches and no body, and opens its
/// client's session when the op commits, as a register prepared alone would.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct PackedRequest {
    pub client: u64,
    pub request: u32,
    pub batch_count: u32,
    /// The request header's checksum, which its reply names.
    pub request_checksum: ChecksumBytes,
    pub body_size: u32,
    pub reserved: u32,
    pub reserved_end: u64,
}

/// The head of an `append_packed` body: how many `PackedRequest`s follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct PackedHead {
    pub count: u32,
    pub reserved: u32,
}

/// read_stream body: up to `count_max` events of `stream` from `offset_from` on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct ReadStream {
    pub stream: u64,
    pub offset_from: u64,
    pub count_max: u32,
    /// If no event is there yet (the stream has no event at `offset_from`, or does not exist),
    /// how long the replica may hold the read until one commits, in milliseconds (at most
    /// `READ_WAIT_MS_MAX`; 0 answers at once).
    pub wait_ms: u32,
}

/// read_log body: up to `count_max` events of the whole log from `position_from` on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct ReadLog {
    pub position_from: u64,
    pub count_max: u32,
    /// As `ReadStream::wait_ms`: until an event at `position_from` commits.
    pub wait_ms: u32,
}

/// stream_info body.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct StreamInfo {
    pub stream: u64,
}

/// The head of a read_stream or read_log reply; `event_count` `EventRecord`s follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct ReadReplyHeader {
    pub result: u32,
    pub event_count: u32,
    /// Where to continue: the offset (read_stream) or position (read_log) after the last event
    /// returned, or the one asked for if none was.
    pub next: u64,
    /// The stream's next offset, or the log's next position, when the read started: what was
    /// committed then. `next < end` means the reply was full or `count_max` was reached.
    pub end: u64,
}

/// The stream_info reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct StreamInfoReply {
    pub result: u32,
    pub reserved: u32,
    pub stream: u64,
    pub tenant: u64,
    pub offset_next: u64,
    /// Events in the stream (offsets start at 0, so this equals `offset_next`).
    pub event_count: u64,
    /// The chain checksum after the last event (the seed if the stream has none).
    pub chain: ChecksumBytes,
    /// The grid of the replica that answered (whatever the result): bytes of blocks in use,
    /// and bytes left for events before appends get `storage_full`.
    pub grid_used_bytes: u64,
    pub grid_room_bytes: u64,
}

/// One committed event: in grid blocks, and verbatim in read replies. Its payload follows, as
/// in an append (type, metadata, data, zero-padded together to 8).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct EventRecord {
    pub stream: u64,
    /// The event's index within its stream, from 0.
    pub offset: u64,
    /// The event's index within the whole log, from 0.
    pub position: u64,
    /// The timestamp of the op that committed the event.
    pub timestamp: u64,
    /// The stream's chain checksum after this event (`chain_next`).
    pub chain: ChecksumBytes,
    pub data_size: u32,
    pub metadata_size: u16,
    pub type_size: u8,
    pub reserved: u8,
}

impl EventRecord {
    /// The sizes of the payload after the record, as an append's event header gives them.
    pub fn event_header(&self) -> EventHeader {
        EventHeader {
            data_size: self.data_size,
            metadata_size: self.metadata_size,
            type_size: self.type_size,
            reserved: self.reserved,
        }
    }
}

/// The first event record of `bytes` (a read reply's events, or a block's records), its event,
/// and the bytes after it; or why `bytes` does not start with a whole record.
pub fn record_next(bytes: &[u8]) -> Result<(EventRecord, Event<'_>, &[u8]), &'static str> {
    let Ok((record, rest)) = EventRecord::read_from_prefix(bytes) else {
        return Err("record: header truncated");
    };
    let header = record.event_header();
    let padded = padded_size(header.payload_size());
    if padded > rest.len() as u64 {
        return Err("record: payload overruns the records");
    }
    let (payload, rest) = rest.split_at(padded as usize);
    let event = Event::split(&header, &payload[..header.payload_size() as usize]);
    Ok((record, event, rest))
}

// ---------------------------------------------------------------------------------------------
// Grid blocks.

/// A reference to a grid block, held by whoever points to it: the block's checksum lives here
/// too, so a lost or misdirected write is caught when the block is read.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct BlockPointer {
    /// The key after the block's last: for the log, the block's `position_end`; for a
    /// stream, one past the offset of its last event in the block.
    pub key_end: u64,
    /// The block's index in the grid zone.
    pub address: u32,
    pub reserved: u32,
    pub checksum: ChecksumBytes,
}

impl BlockPointer {
    pub fn new(key_end: u64, address: u32, checksum: Checksum) -> BlockPointer {
        BlockPointer { key_end, address, reserved: 0, checksum: ChecksumBytes::from(checksum) }
    }
}

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    Events = 1,
    StreamsTable = 2,
    /// A checkpoint's copy of the open block: its records and a directory without pointers.
    Tail = 3,
}

impl BlockKind {
    /// The kind a block header's `kind` byte names, if any.
    pub fn from_u8(kind: u8) -> Option<BlockKind> {
        [BlockKind::Events, BlockKind::StreamsTable, BlockKind::Tail]
            .into_iter()
            .find(|known| *known as u8 == kind)
    }
}

/// The first bytes of every grid block. An event block continues with its event records and
/// then its directory; a streams-table block with (in its first block) the `TableRoot` and then
/// `TableEntry`s. Everything after that up to `BLOCK_SIZE` is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct BlockHeader {
    /// The block's checksum (`block_checksum`): over its sectors, without these 16 bytes.
    pub checksum: ChecksumBytes,
    pub kind: u8,
    pub version: u8,
    /// How many of `log_pointers` are used.
    pub log_pointer_count: u16,
    /// Bytes of records (events) or of root and entries (table) after the header.
    pub records_size: u32,
    pub cluster: u64,
    /// The block's own index in the grid zone: a block written or read at the wrong place fails.
    pub address: u64,
    /// Events: the block's 1-based ordinal among event blocks. Table: its index in the table.
    pub ordinal: u64,
    /// Events: the ops whose events the block holds. Table: zero.
    pub op_min: u64,
    pub op_max: u64,
    /// Events: the log positions the block holds, `[position_first, position_end)`. Table: the
    /// log's next position at the checkpoint, twice.
    pub position_first: u64,
    pub position_end: u64,
    /// Events: directory entries (streams in the block). Table: `TableEntry`s in the block.
    pub directory_count: u32,
    /// Events: bytes of directory after the records. Table: zero.
    pub directory_size: u32,
    pub reserved: [u8; 40],
    /// Events: the log's skip pointers, level i to the block with ordinal `ordinal - 2^i`.
    pub log_pointers: [BlockPointer; SKIP_LEVELS_MAX],
}

/// One stream's entry in an event block's directory, followed by `pointer_count`
/// `BlockPointer`s: level i to the stream's block with ordinal `ordinal - 2^i`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct DirectoryEntry {
    pub stream: u64,
    /// This block's 1-based ordinal among the blocks holding events of the stream.
    pub ordinal: u64,
    /// The offset of the stream's first event in the block.
    pub offset_first: u64,
    /// The byte offset, within the block, of the stream's first record.
    pub record_first: u32,
    pub event_count: u32,
    pub pointer_count: u32,
    pub reserved: u32,
}

/// The start of the first streams-table block: the log's state at the checkpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct TableRoot {
    /// The grid block after the table: where appends continue.
    pub grid_head: u64,
    pub position_next: u64,
    /// Event blocks in the log (the ordinal of the newest).
    pub log_blocks: u64,
    pub stream_count: u64,
    /// Level i: the newest event block whose ordinal is a multiple of 2^i.
    pub log_frontier: [BlockPointer; SKIP_LEVELS_MAX],
    /// The checkpoint's other blocks (table blocks, then the tail if there is one), whose
    /// addresses follow the root, in that order.
    pub metadata_count: u32,
    /// Grid blocks free for the next checkpoint's blocks, whose addresses follow those.
    pub free_count: u32,
    /// 1 if the last of the checkpoint's blocks is a tail (the open block's events), else 0.
    pub tail_blocks: u32,
    pub reserved: u32,
}

/// One of a checkpoint's blocks after the root, as the root lists it: where, and the checksum
/// it must have.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct ListedBlock {
    pub address: u32,
    pub reserved: u32,
    pub checksum: ChecksumBytes,
}

/// One stream in a streams-table block, followed by `frontier_count` `BlockPointer`s: level i
/// is the stream's newest block whose ordinal (among the stream's blocks) is a multiple of 2^i.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct TableEntry {
    pub stream: u64,
    pub tenant: u64,
    pub offset_next: u64,
    /// Blocks holding events of the stream (the ordinal of the newest).
    pub blocks: u64,
    pub chain: ChecksumBytes,
    pub frontier_count: u32,
    pub reserved: u32,
}

const_assert_eq!(size_of::<CreateStream>(), 16);
const_assert_eq!(size_of::<CreateStreamResult>(), 8);
const_assert_eq!(size_of::<AppendBatch>(), 24);
const_assert_eq!(size_of::<EventHeader>(), 8);
const_assert_eq!(size_of::<AppendResult>(), 16);
const_assert_eq!(size_of::<PackedRequest>(), 48);
const_assert_eq!(size_of::<PackedHead>(), 8);
const_assert_eq!(size_of::<ReadStream>(), 24);
const_assert_eq!(size_of::<ReadLog>(), 16);
const_assert_eq!(size_of::<StreamInfo>(), 8);
const_assert_eq!(size_of::<ReadReplyHeader>(), 24);
const_assert_eq!(size_of::<StreamInfoReply>(), 72);
const_assert_eq!(size_of::<EventRecord>(), 56);
const_assert_eq!(size_of::<BlockPointer>(), 32);
const_assert_eq!(size_of::<BlockHeader>(), 128 + 32 * SKIP_LEVELS_MAX);
const_assert_eq!(std::mem::offset_of!(BlockHeader, log_pointers), 128);
const_assert_eq!(size_of::<DirectoryEntry>(), 40);
const_assert_eq!(size_of::<TableRoot>(), 48 + 32 * SKIP_LEVELS_MAX);
const_assert_eq!(size_of::<TableEntry>(), 56);
const_assert_eq!(size_of::<ListedBlock>(), 24);
const_assert_eq!(size_of::<BlockHeader>() % 8, 0);

// ---------------------------------------------------------------------------------------------
// Sizes, ids and the chain.

/// Ids 0 and `u64::MAX` are never streams.
pub fn stream_id_valid(stream: u64) -> bool {
    stream != 0 && stream != u64::MAX
}

/// `size` rounded up to a multiple of 8: how much room a payload takes in bodies and blocks.
pub fn padded_size(size: u64) -> u64 {
    size.next_multiple_of(8)
}

/// Bytes one event with a payload of `payload_size` takes as an `EventRecord` (in a block or a
/// reply).
pub fn record_size(payload_size: u64) -> u64 {
    size_of::<EventRecord>() as u64 + padded_size(payload_size)
}

/// The chain checksum of a stream with no events: the checksum of `stream` then `tenant`.
pub fn chain_seed(stream: u64, tenant: u64) -> Checksum {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&stream.to_le_bytes());
    bytes[8..].copy_from_slice(&tenant.to_le_bytes());
    checksum(&bytes)
}

/// The chain checksum after `record` (whose own `chain` field is ignored) with `event`: the
/// checksum of the previous chain (16 bytes), the record's stream, offset, position, timestamp
/// (8 bytes each), data_size (4), metadata_size (2), type_size (1) and reserved (1), then the
/// type, the metadata and the data. Every event's chain depends on all before it, so a lost,
/// changed or reordered event shows.
pub fn chain_next(chain: Checksum, record: &EventRecord, event: &Event<'_>) -> Checksum {
    assert_eq!(record.event_header(), event.header());
    let mut prefix = [0u8; 56];
    prefix[0..16].copy_from_slice(&chain.to_le_bytes());
    prefix[16..24].copy_from_slice(&record.stream.to_le_bytes());
    prefix[24..32].copy_from_slice(&record.offset.to_le_bytes());
    prefix[32..40].copy_from_slice(&record.position.to_le_bytes());
    prefix[40..48].copy_from_slice(&record.timestamp.to_le_bytes());
    prefix[48..56].copy_from_slice(record.event_header().as_bytes());
    let pieces = [&prefix[..], event.event_type, event.metadata, event.data];
    // Small events (the common case) in one pass over a stack copy: the streaming hasher's
    // setup costs more than hashing them. Both give the checksum of the concatenation.
    const ONE_PASS_SIZE: usize = 256;
    let size: usize = pieces.iter().map(|piece| piece.len()).sum();
    if size > ONE_PASS_SIZE {
        return checksum_pieces(&pieces);
    }
    let mut joined = [0u8; ONE_PASS_SIZE];
    let mut at = 0;
    for piece in pieces {
        joined[at..at + piece.len()].copy_from_slice(piece);
        at += piece.len();
    }
    checksum(&joined[..size])
}

// ---------------------------------------------------------------------------------------------
// Request bodies.

/// A write request's body, parsed: `Request::parse` checks every byte once, and what it hands
/// out then reads without failing. What is wrong with a well-formed request (a missing stream,
/// an empty event) is not a parse error but a result code.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    /// root, register, noop: no body to speak of.
    Empty,
    CreateStreams(CreateStreams<'a>),
    Append(AppendBatches<'a>),
    Import(ImportBatches<'a>),
}

impl<'a> Request<'a> {
    /// The body of a request to prepare as `operation`, or why it cannot be prepared.
    pub fn parse(operation: Operation, body: &'a [u8]) -> Result<Request<'a>, &'static str> {
        let invalid = match operation {
            Operation::CreateStream => create_stream_body_invalid(body),
            Operation::Append => append_body_invalid(body),
            Operation::AppendPacked => packed_body_invalid(body),
            Operation::Import => import_body_invalid(body),
            Operation::ReadStream | Operation::ReadLog | Operation::StreamInfo => {
                Some("reads are served from committed state and never prepared")
            }
            Operation::Reserved => Some("operation is reserved"),
            Operation::Root | Operation::Register | Operation::Noop => None,
        };
        if let Some(reason) = invalid {
            return Err(reason);
        }
        Ok(match operation {
            Operation::CreateStream => Request::CreateStreams(CreateStreams { body }),
            Operation::Append => Request::Append(AppendBatches { rest: body }),
            Operation::Import => Request::Import(ImportBatches { rest: body }),
            Operation::AppendPacked => {
                Request::Append(AppendBatches { rest: packed_split(body).expect("parsed").1 })
            }
            _ => Request::Empty,
        })
    }
}

/// The requests of an `append_packed` body and the append body they share, or why the body is
/// malformed. Reads by copy, so the body may lie at any alignment.
pub fn packed_split(body: &[u8]) -> Result<(PackedRequests<'_>, &[u8]), &'static str> {
    let (head, rest) = PackedHead::read_from_prefix(body).map_err(|_| "packed: no head")?;
    if head.count < 2 || head.reserved != 0 {
        return Err("packed: fewer than two requests, or reserved bytes set");
    }
    let size = head.count as usize * size_of::<PackedRequest>();
    if rest.len() < size {
        return Err("packed: the requests do not fit");
    }
    let (requests, appends) = rest.split_at(size);
    Ok((PackedRequests { bytes: requests }, appends))
}

/// The `PackedRequest`s of an `append_packed` body, in order.
#[derive(Clone, Copy, Debug)]
pub struct PackedRequests<'a> {
    bytes: &'a [u8],
}

impl Iterator for PackedRequests<'_> {
    type Item = PackedRequest;

    fn next(&mut self) -> Option<PackedRequest> {
        let (entry, rest) = PackedRequest::read_from_prefix(self.bytes).ok()?;
        self.bytes = rest;
        Some(entry)
    }
}

fn packed_body_invalid(body: &[u8]) -> Option<&'static str> {
    let (requests, mut appends) = match packed_split(body) {
        Ok(split) => split,
        Err(reason) => return Some(reason),
    };
    for request in requests {
        let size = request.body_size as usize;
        if size > appends.len() || request.reserved != 0 || request.reserved_end != 0 {
            return Some("packed: a request overruns the body, or reserved bytes set");
        }
        if request.client == 0 {
            return Some("packed: a request of no client");
        }
        if request.request == 0 {
            if size != 0 || request.batch_count != 0 {
                return Some("packed: a register with a body");
            }
            continue;
        }
        let (own, rest) = appends.split_at(size);
        if let Some(reason) = append_body_invalid(own) {
            return Some(reason);
        }
        let batches = AppendBatches { rest: own }.count();
        if batches != request.batch_count as usize {
            return Some("packed: a request's batch count is wrong");
        }
        appends = rest;
    }
    if !appends.is_empty() {
        return Some("packed: bytes after the last request");
    }
    None
}

/// Writes an `append_packed` body into `body`: `count` requests, each given as (entry with its
/// `body_size` and `batch_count` set, its append body). Returns the body's size.
pub fn packed_encode<'b>(
    body: &mut [u8],
    count: usize,
    requests: impl Iterator<Item = (PackedRequest, &'b [u8])>,
) -> usize {
    assert!(count >= 2);
    let mut written = 0;
    let head = PackedHead { count: count as u32, reserved: 0 };
    body[..size_of::<PackedHead>()].copy_from_slice(head.as_bytes());
    let mut entry_at = size_of::<PackedHead>();
    let mut append_at = entry_at + count * size_of::<PackedRequest>();
    for (entry, append) in requests {
        assert_eq!(entry.body_size as usize, append.len());
        body[entry_at..][..size_of::<PackedRequest>()].copy_from_slice(entry.as_bytes());
        body[append_at..][..append.len()].copy_from_slice(append);
        entry_at += size_of::<PackedRequest>();
        append_at += append.len();
        written += 1;
    }
    assert_eq!(written, count);
    append_at
}

/// The number of batches in a well-formed append body.
pub fn append_batch_count(body: &[u8]) -> usize {
    AppendBatches { rest: body }.count()
}

/// The entries of a parsed create_stream body.
#[derive(Clone, Copy, Debug)]
pub struct CreateStreams<'a> {
    body: &'a [u8],
}

impl CreateStreams<'_> {
    pub fn count(&self) -> usize {
        self.body.len() / size_of::<CreateStream>()
    }
}

impl Iterator for CreateStreams<'_> {
    type Item = CreateStream;

    fn next(&mut self) -> Option<CreateStream> {
        let (entry, rest) = CreateStream::read_from_prefix(self.body).ok()?;
        self.body = rest;
        Some(entry)
    }
}

/// The batches of a parsed append body.
#[derive(Clone, Copy, Debug)]
pub struct AppendBatches<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for AppendBatches<'a> {
    type Item = Batch<'a>;

    fn next(&mut self) -> Option<Batch<'a>> {
        let batch = batch_split(self.rest).expect("parsed")?;
        self.rest = batch.rest;
        Some(batch)
    }
}

/// The batches of a parsed import body, in order.
#[derive(Clone, Copy, Debug)]
pub struct ImportBatches<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for ImportBatches<'a> {
    type Item = (ImportBatch, Batch<'a>);

    fn next(&mut self) -> Option<(ImportBatch, Batch<'a>)> {
        let (head, batch) = import_batch_split(self.rest).expect("parsed")?;
        self.rest = batch.rest;
        Some((head, batch))
    }
}

impl ImportBatches<'_> {
    pub fn count(&self) -> usize {
        (*self).fold(0, |count, _| count + 1)
    }
}

/// Gathers a log's events, in log order, into import batches (`ImportBatch` and its events in
/// the append encoding): consecutive events of one stream committed with one timestamp, each
/// batch at most `batch_size_max` bytes. What `kimberlite export` writes.
pub struct ImportEncoder {
    batch_size_max: usize,
    batch: Option<ImportBatch>,
    events: Vec<u8>,
}

impl ImportEncoder {
    pub fn new(batch_size_max: usize) -> ImportEncoder {
        ImportEncoder { batch_size_max, batch: None, events: Vec::new() }
    }

    /// Adds the event `record` describes (of a stream with `tenant`); returns the batch it
    /// closed first (its bytes), if the event could not join it.
    pub fn push(
        &mut self,
        record: &EventRecord,
        event: &Event<'_>,
        tenant: u64,
    ) -> Option<Vec<u8>> {
        let size = AppendEncoder::event_size(event.header().payload_size());
        assert!(size_of::<ImportBatch>() + size <= self.batch_size_max, "an event fits a batch");
        let budget = self.batch_size_max - size_of::<ImportBatch>();
        let joins = self.batch.is_some_and(|batch| {
            batch.append.stream == record.stream
                && batch.timestamp == record.timestamp
                && batch.append.expected_offset + u64::from(batch.append.event_count)
                    == record.offset
                && self.events.len() + size <= budget
        });
        let closed = if joins { None } else { self.finish() };
        let batch = self.batch.get_or_insert(ImportBatch {
            append: AppendBatch {
                stream: record.stream,
                expected_offset: record.offset,
                event_count: 0,
                events_size_bytes: 0,
            },
            tenant,
            position: record.position,
            timestamp: record.timestamp,
            chain: record.chain,
        });
        batch.append.event_count += 1;
        batch.chain = record.chain;
        let header = event.header();
        self.events.extend_from_slice(header.as_bytes());
        for part in [event.event_type, event.metadata, event.data] {
            self.events.extend_from_slice(part);
        }
        let padding = padded_size(header.payload_size()) - header.payload_size();
        self.events.resize(self.events.len() + padding as usize, 0);
        closed
    }

    /// The batch being gathered, closed (its bytes), if any.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let mut batch = self.batch.take()?;
        batch.append.events_size_bytes = u32::try_from(self.events.len()).expect("in budget");
        let mut bytes = Vec::with_capacity(size_of::<ImportBatch>() + self.events.len());
        bytes.extend_from_slice(batch.as_bytes());
        bytes.append(&mut self.events);
        Some(bytes)
    }
}

/// Cuts the first import batch off `body` (its head, and its events as an append batch);
/// `Ok(None)` when `body` is empty.
pub fn import_batch_split(body: &[u8]) -> Result<Option<(ImportBatch, Batch<'_>)>, &'static str> {
    if body.is_empty() {
        return Ok(None);
    }
    let Ok((head, rest)) = ImportBatch::read_from_prefix(body) else {
        return Err("import: batch header truncated");
    };
    if head.append.event_count == 0 {
        return Err("import: batch has no events");
    }
    let events_size = head.append.events_size_bytes as usize;
    if events_size > rest.len() {
        return Err("import: batch events overrun the body");
    }
    let (events, rest) = rest.split_at(events_size);
    Ok(Some((head, Batch { header: head.append, events, rest })))
}

fn import_body_invalid(body: &[u8]) -> Option<&'static str> {
    if body.is_empty() {
        return Some("import: body is empty");
    }
    let mut rest = body;
    for _ in 0..APPEND_BATCHES_MAX {
        match import_batch_split(rest) {
            Err(reason) => return Some(reason),
            Ok(None) => return None,
            Ok(Some((_, batch))) => {
                if let Err(reason) = events_invalid(&batch) {
                    return Some(reason);
                }
                rest = batch.rest;
            }
        }
    }
    (!rest.is_empty()).then_some("import: more batches than one request may carry")
}

/// Why `body` cannot be prepared as `operation`, or `None` (`Request::parse`). The primary
/// asks before it prepares a request, so `StateMachine::commit` only ever sees well-formed
/// bodies.
pub fn request_invalid(operation: Operation, body: &[u8]) -> Option<&'static str> {
    Request::parse(operation, body).err()
}

// The reply to the largest create_stream or append request fits in a session's reply slot.
static_assertions::const_assert!(
    HEADER_SIZE + CREATE_STREAMS_MAX * size_of::<CreateStreamResult>() <= REPLY_SIZE_MAX
);
static_assertions::const_assert!(
    HEADER_SIZE + APPEND_BATCHES_MAX * size_of::<AppendResult>() <= REPLY_SIZE_MAX
);

fn create_stream_body_invalid(body: &[u8]) -> Option<&'static str> {
    if body.is_empty() {
        return Some("create_stream: body is empty");
    }
    if !body.len().is_multiple_of(size_of::<CreateStream>()) {
        return Some("create_stream: body is not a whole number of 16-byte entries");
    }
    if body.len() / size_of::<CreateStream>() > CREATE_STREAMS_MAX {
        return Some("create_stream: more streams than one request may create");
    }
    None
}

fn append_body_invalid(body: &[u8]) -> Option<&'static str> {
    if body.is_empty() {
        return Some("append: body is empty");
    }
    let mut rest = body;
    let mut batches = 0;
    loop {
        match batch_split(rest) {
            Err(reason) => return Some(reason),
            Ok(None) => return None,
            Ok(Some(batch)) => {
                if let Err(reason) = events_invalid(&batch) {
                    return Some(reason);
                }
                batches += 1;
                if batches > APPEND_BATCHES_MAX {
                    return Some("append: more batches than one request may carry");
                }
                rest = batch.rest;
            }
        }
    }
}

/// Writes an append body in place, batch after batch, in the format `request_invalid` accepts:
/// the one encoder of it, which the benchmark, the CLI, the simulator and the tests share.
pub struct AppendEncoder<'a> {
    body: &'a mut [u8],
    size: usize,
    /// Where the header of the batch being written starts.
    batch: Option<usize>,
}

impl<'a> AppendEncoder<'a> {
    /// Encodes into `body`, which must have room for what is added (`batch_size`).
    pub fn new(body: &'a mut [u8]) -> AppendEncoder<'a> {
        AppendEncoder { body, size: 0, batch: None }
    }

    /// The bytes a batch of events of these payload sizes (type, metadata and data) takes in
    /// a body.
    pub fn batch_size(payload_sizes: impl IntoIterator<Item = u64>) -> usize {
        let events: usize = payload_sizes.into_iter().map(AppendEncoder::event_size).sum();
        size_of::<AppendBatch>() + events
    }

    /// The bytes an event with a payload of `payload_size` bytes takes in a batch.
    pub fn event_size(payload_size: u64) -> usize {
        size_of::<EventHeader>() + padded_size(payload_size) as usize
    }

    /// Starts a batch of events for `stream`, the first at `expected_offset` (or
    /// `EXPECTED_OFFSET_ANY`, or `EXPECTED_NO_STREAM`). The batch before it must have an event.
    pub fn batch_begin(&mut self, stream: u64, expected_offset: u64) {
        assert!(self.batch_open().is_none_or(|batch| batch.event_count > 0));
        let batch = AppendBatch { stream, expected_offset, event_count: 0, events_size_bytes: 0 };
        let start = self.size;
        self.body[start..start + size_of::<AppendBatch>()].copy_from_slice(batch.as_bytes());
        self.batch = Some(start);
        self.size += size_of::<AppendBatch>();
    }

    /// Adds an event of `event_type` with `metadata` and `data_size` bytes of data to the open
    /// batch, and returns its data for the caller to fill (the padding after it is zeroed).
    pub fn event(&mut self, event_type: &[u8], metadata: &[u8], data_size: u32) -> &mut [u8] {
        let mut batch = self.batch_open().expect("a batch is open");
        let header = EventHeader {
            data_size,
            metadata_size: u16::try_from(metadata.len()).expect("metadata fits u16"),
            type_size: u8::try_from(event_type.len()).expect("an event type fits u8"),
            reserved: 0,
        };
        let event_size = AppendEncoder::event_size(header.payload_size());
        let start = self.size;
        let event = &mut self.body[start..start + event_size];
        let (head, payload) = event.split_at_mut(size_of::<EventHeader>());
        head.copy_from_slice(header.as_bytes());
        let (type_bytes, rest) = payload.split_at_mut(event_type.len());
        type_bytes.copy_from_slice(event_type);
        rest[..metadata.len()].copy_from_slice(metadata);
        rest[metadata.len()..].fill(0);
        batch.event_count += 1;
        batch.events_size_bytes += event_size as u32;
        let batch_start = self.batch.expect("a batch is open");
        self.body[batch_start..][..size_of::<AppendBatch>()].copy_from_slice(batch.as_bytes());
        self.size += event_size;
        let data_start = start + size_of::<EventHeader>() + event_type.len() + metadata.len();
        &mut self.body[data_start..data_start + data_size as usize]
    }

    /// Adds `event` to the open batch.
    pub fn event_copy(&mut self, event: &Event<'_>) {
        let data_size = u32::try_from(event.data.len()).expect("event data fits u32");
        self.event(event.event_type, event.metadata, data_size).copy_from_slice(event.data);
    }

    /// The size of the body written; its last batch must have an event.
    pub fn finish(self) -> usize {
        assert!(self.batch_open().is_some_and(|batch| batch.event_count > 0));
        self.size
    }

    fn batch_open(&self) -> Option<AppendBatch> {
        let start = self.batch?;
        let (batch, _) = AppendBatch::read_from_prefix(&self.body[start..]).expect("written");
        Some(batch)
    }
}

/// A body of one append batch: `events` for `stream`, the first at `expected_offset`.
pub fn append_batch_body(stream: u64, expected_offset: u64, events: &[Event<'_>]) -> Vec<u8> {
    let size = AppendEncoder::batch_size(events.iter().map(|event| event.header().payload_size()));
    let mut body = vec![0; size];
    let mut encoder = AppendEncoder::new(&mut body);
    encoder.batch_begin(stream, expected_offset);
    for event in events {
        encoder.event_copy(event);
    }
    assert_eq!(encoder.finish(), size);
    body
}

/// One append batch cut from a body: its header, its events' bytes, and the bytes after it.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    pub header: AppendBatch,
    pub events: &'a [u8],
    pub rest: &'a [u8],
}

impl<'a> Batch<'a> {
    /// The events of a parsed body.
    pub fn events(&self) -> Events<'a> {
        Events::new(self.events)
    }
}

/// Cuts the first batch off `body`; `Ok(None)` when `body` is empty.
fn batch_split(body: &[u8]) -> Result<Option<Batch<'_>>, &'static str> {
    if body.is_empty() {
        return Ok(None);
    }
    let Ok((header, rest)) = AppendBatch::read_from_prefix(body) else {
        return Err("append: batch header truncated");
    };
    if header.event_count == 0 {
        return Err("append: batch has no events");
    }
    let events_size = header.events_size_bytes as usize;
    if events_size > rest.len() {
        return Err("append: batch events overrun the body");
    }
    let (events, rest) = rest.split_at(events_size);
    Ok(Some(Batch { header, events, rest }))
}

fn events_invalid(batch: &Batch<'_>) -> Result<(), &'static str> {
    let mut rest = batch.events;
    for _ in 0..batch.header.event_count {
        let Ok((header, after)) = EventHeader::read_from_prefix(rest) else {
            return Err("append: event header truncated");
        };
        if header.reserved != 0 {
            return Err("append: event reserved is not zero");
        }
        let padded = padded_size(header.payload_size());
        if padded > after.len() as u64 {
            return Err("append: event payload overruns its batch");
        }
        let (payload, after) = after.split_at(padded as usize);
        if payload[header.payload_size() as usize..].iter().any(|byte| *byte != 0) {
            return Err("append: event padding is not zero");
        }
        rest = after;
    }
    if !rest.is_empty() {
        return Err("append: events_size_bytes is larger than the events");
    }
    Ok(())
}

/// The events of a parsed batch (`Request::parse`).
#[derive(Clone, Copy, Debug)]
pub struct Events<'a> {
    rest: &'a [u8],
}

impl<'a> Events<'a> {
    fn new(events: &'a [u8]) -> Events<'a> {
        Events { rest: events }
    }
}

impl<'a> Iterator for Events<'a> {
    type Item = Event<'a>;

    fn next(&mut self) -> Option<Event<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        let (header, after) = EventHeader::read_from_prefix(self.rest).expect("body validated");
        let padded = padded_size(header.payload_size()) as usize;
        assert!(padded <= after.len());
        self.rest = &after[padded..];
        Some(Event::split(&header, &after[..header.payload_size() as usize]))
    }
}
