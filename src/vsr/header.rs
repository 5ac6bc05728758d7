//! The 256-byte message header: its layout, the commands and operations of the protocol, the
//! checksums, and `invalid()`, the validator every header from a socket or a disk passes before
//! any of its fields is trusted.
//!
//! The header is one flat `#[repr(C)]` struct. Its fields are generic (`op`, `commit`, `parent`,
//! `context`, ...); what each means for each command is named by that command's typed view in
//! `views`, and checked in `invalid()`: a field a command does not use must be zero. Integers
//! are little-endian on the wire and on disk; the build refuses big-endian targets, so the
//! in-memory layout is the wire layout and headers are cast from bytes without copying
//! (zerocopy).

use static_assertions::{assert_eq_size, const_assert_eq};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::constants::{
    GRID_BLOCKS_MAX, HEADER_SIZE, MESSAGE_SIZE_MAX, PROTOCOL_VERSION, REPLICAS_MAX,
};

#[cfg(not(target_endian = "little"))]
compile_error!("headers are cast from little-endian bytes: big-endian targets are not supported");

/// A newtype over an integer, with the derives a header field needs (zerocopy's among them),
/// `get()` and `Display`; with `arithmetic`, also `+`, `+=`, `-` and `-=` by a count of the
/// integer type, checked (an overflow panics, as a debug build's integer arithmetic would).
macro_rules! integer_newtype {
    ($(#[$meta:meta])* pub struct $name:ident(pub $integer:ty);) => {
        $(#[$meta])*
        #[repr(transparent)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
        pub struct $name(pub $integer);

        impl $name {
            pub fn get(self) -> $integer {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
    ($(#[$meta:meta])* pub struct $name:ident(pub $integer:ty); arithmetic) => {
        integer_newtype! { $(#[$meta])* pub struct $name(pub $integer); }

        impl std::ops::Add<$integer> for $name {
            type Output = $name;
            fn add(self, count: $integer) -> $name {
                $name(self.0.checked_add(count).expect(concat!(stringify!($name), " overflow")))
            }
        }

        impl std::ops::AddAssign<$integer> for $name {
            fn add_assign(&mut self, count: $integer) {
                *self = *self + count;
            }
        }

        impl std::ops::Sub<$integer> for $name {
            type Output = $name;
            fn sub(self, count: $integer) -> $name {
                $name(self.0.checked_sub(count).expect(concat!(stringify!($name), " underflow")))
            }
        }

        impl std::ops::SubAssign<$integer> for $name {
            fn sub_assign(&mut self, count: $integer) {
                *self = *self - count;
            }
        }
    };
}

integer_newtype! {
    /// A 128-bit checksum (XXH3-128): the identity of a message, a prepare, a session, a grid
    /// block and a checkpoint.
    pub struct Checksum(pub u128);
}

impl Checksum {
    /// No checksum: the `parent` of a prepare that has none, an unset field.
    pub const ZERO: Checksum = Checksum(0);

    pub fn to_le_bytes(self) -> [u8; 16] {
        self.0.to_le_bytes()
    }

    pub fn from_le_bytes(bytes: [u8; 16]) -> Checksum {
        Checksum(u128::from_le_bytes(bytes))
    }
}

/// Flips bits: how tests and the simulator's faults make a checksum wrong.
impl std::ops::BitXor<u128> for Checksum {
    type Output = Checksum;
    fn bitxor(self, bits: u128) -> Checksum {
        Checksum(self.0 ^ bits)
    }
}

impl std::ops::BitXorAssign<u128> for Checksum {
    fn bitxor_assign(&mut self, bits: u128) {
        self.0 ^= bits;
    }
}

impl std::fmt::LowerHex for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::LowerHex::fmt(&self.0, f)
    }
}
integer_newtype! {
    /// A position in the replicated log (op 0 is the root prepare).
    pub struct Op(pub u64);
    arithmetic
}

impl Op {
    /// The root prepare, the first entry of every log.
    pub const ROOT: Op = Op(0);
    pub const MAX: Op = Op(u64::MAX);

    /// The op after this one.
    pub fn next(self) -> Op {
        self + 1
    }

    /// The slot of a ring of `slot_count` entries (the WAL, a header ring) this op goes in.
    pub fn slot(self, slot_count: u64) -> usize {
        assert!(slot_count > 0);
        usize::try_from(self.0 % slot_count).expect("slot fits in usize")
    }

    /// The ops from this one through `last`, in order (none if `last` is lower).
    pub fn through(self, last: Op) -> impl DoubleEndedIterator<Item = Op> + Clone {
        (self.0..=last.0).map(Op)
    }

    /// `ops` before this op, or the root if there are not that many.
    pub fn saturating_sub(self, ops: u64) -> Op {
        Op(self.0.saturating_sub(ops))
    }

    /// `ops` before this op, if there are that many.
    pub fn checked_sub(self, ops: u64) -> Option<Op> {
        self.0.checked_sub(ops).map(Op)
    }
}

/// The number of ops from `earlier` to `self`.
impl std::ops::Sub<Op> for Op {
    type Output = u64;
    fn sub(self, earlier: Op) -> u64 {
        self.0.checked_sub(earlier.0).expect("op distance below zero")
    }
}

integer_newtype! {
    /// A view number; the primary of view v is replica v mod replica_count.
    pub struct View(pub u32);
    arithmetic
}

impl View {
    /// The primary of this view in a cluster of `replica_count` replicas.
    pub fn primary(self, replica_count: u8) -> ReplicaIndex {
        assert!(replica_count > 0);
        ReplicaIndex((self.0 % u32::from(replica_count)) as u8)
    }

    pub const MAX: View = View(u32::MAX);

    /// The view after this one.
    pub fn next(self) -> View {
        self + 1
    }
}

integer_newtype! {
    /// A replica's index in the cluster configuration.
    pub struct ReplicaIndex(pub u8);
}

impl ReplicaIndex {
    /// This replica's bit in a mask of replicas (votes, acknowledgements).
    pub fn bit(self) -> u8 {
        assert!(usize::from(self.0) < REPLICAS_MAX);
        1 << self.0
    }

    /// The replica after this one in a cluster of `replica_count`, wrapping to replica 0.
    pub fn next(self, replica_count: u8) -> ReplicaIndex {
        assert!(self.0 < replica_count);
        ReplicaIndex((self.0 + 1) % replica_count)
    }
}

impl From<ReplicaIndex> for usize {
    fn from(replica: ReplicaIndex) -> usize {
        usize::from(replica.0)
    }
}

integer_newtype! {
    /// A cluster identifier, fixed at format.
    pub struct ClusterId(pub u64);
}

impl std::str::FromStr for ClusterId {
    type Err = std::num::ParseIntError;
    fn from_str(text: &str) -> Result<ClusterId, Self::Err> {
        text.parse().map(ClusterId)
    }
}

integer_newtype! {
    /// A client identifier, random per client process; never zero (zero in a header means no
    /// client).
    pub struct ClientId(pub u64);
}

impl ClientId {
    /// No client: the field of a header that does not name one.
    pub const NONE: ClientId = ClientId(0);
}

impl std::fmt::LowerHex for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::LowerHex::fmt(&self.0, f)
    }
}

/// The checksum of `bytes`: XXH3-128 (xxHash 0.8, a published and frozen algorithm), seed 0.
pub fn checksum(bytes: &[u8]) -> Checksum {
    Checksum(xxhash_rust::xxh3::xxh3_128(bytes))
}

/// The checksum of the concatenation of `pieces`, without joining them.
pub fn checksum_pieces(pieces: &[&[u8]]) -> Checksum {
    let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
    for piece in pieces {
        hasher.update(piece);
    }
    Checksum(hasher.digest128())
}

/// One link of a hash chain: the checksum of `previous` then `next` (16 little-endian bytes
/// each).
pub fn checksum_chain(previous: Checksum, next: Checksum) -> Checksum {
    checksum_pieces(&[&previous.to_le_bytes(), &next.to_le_bytes()])
}

/// A checksum inside a record that is only 8-byte aligned (grid blocks, reply bodies, session
/// records): the same 16 little-endian bytes as a `Checksum`, with alignment 1.
pub type ChecksumBytes = zerocopy::byteorder::U128<zerocopy::byteorder::LittleEndian>;

impl From<ChecksumBytes> for Checksum {
    fn from(bytes: ChecksumBytes) -> Checksum {
        Checksum(bytes.get())
    }
}

impl From<Checksum> for ChecksumBytes {
    fn from(checksum: Checksum) -> ChecksumBytes {
        ChecksumBytes::new(checksum.0)
    }
}

/// Messages of the protocol. Which generic header fields each command uses, what each means
/// there, and its body: the typed views in `views` (`views::Prepare` and so on), rendered as a
/// table in `docs/data-file.md`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Reserved = 0,
    Ping = 1,
    Pong = 2,
    PingClient = 3,
    PongClient = 4,
    Request = 5,
    Prepare = 6,
    PrepareOk = 7,
    Reply = 8,
    Commit = 9,
    StartViewChange = 10,
    DoViewChange = 11,
    StartView = 12,
    RequestStartView = 13,
    RequestHeaders = 14,
    RequestPrepare = 15,
    Headers = 16,
    NackPrepare = 17,
    RequestReply = 18,
    Eviction = 19,
    RequestBlocks = 20,
    Block = 21,
    RequestSyncCheckpoint = 22,
    SyncCheckpoint = 23,
    Busy = 24,
}

impl Command {
    pub const ALL: [Command; 25] = [
        Command::Reserved,
        Command::Ping,
        Command::Pong,
        Command::PingClient,
        Command::PongClient,
        Command::Request,
        Command::Prepare,
        Command::PrepareOk,
        Command::Reply,
        Command::Commit,
        Command::StartViewChange,
        Command::DoViewChange,
        Command::StartView,
        Command::RequestStartView,
        Command::RequestHeaders,
        Command::RequestPrepare,
        Command::Headers,
        Command::NackPrepare,
        Command::RequestReply,
        Command::Eviction,
        Command::RequestBlocks,
        Command::Block,
        Command::RequestSyncCheckpoint,
        Command::SyncCheckpoint,
        Command::Busy,
    ];

    pub fn from_u8(value: u8) -> Option<Command> {
        Command::ALL.get(usize::from(value)).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::Reserved => "reserved",
            Command::Ping => "ping",
            Command::Pong => "pong",
            Command::PingClient => "ping_client",
            Command::PongClient => "pong_client",
            Command::Request => "request",
            Command::Prepare => "prepare",
            Command::PrepareOk => "prepare_ok",
            Command::Reply => "reply",
            Command::Commit => "commit",
            Command::StartViewChange => "start_view_change",
            Command::DoViewChange => "do_view_change",
            Command::StartView => "start_view",
            Command::RequestStartView => "request_start_view",
            Command::RequestHeaders => "request_headers",
            Command::RequestPrepare => "request_prepare",
            Command::Headers => "headers",
            Command::NackPrepare => "nack_prepare",
            Command::RequestReply => "request_reply",
            Command::Eviction => "eviction",
            Command::RequestBlocks => "request_blocks",
            Command::Block => "block",
            Command::RequestSyncCheckpoint => "request_sync_checkpoint",
            Command::SyncCheckpoint => "sync_checkpoint",
            Command::Busy => "busy",
        }
    }
}

/// What a request or prepare asks the replicated state machine to do. Values below 128 belong
/// to the protocol; values from 128 up to the event store.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Reserved = 0,
    /// The prepare at op 0 that every log starts from.
    Root = 1,
    /// A client opens a session.
    Register = 2,
    /// A prepare with no effect (a new primary fills its pipeline with these).
    Noop = 3,
    CreateStream = 128,
    Append = 129,
    ReadStream = 130,
    ReadLog = 131,
    StreamInfo = 132,
    /// Appends of several client sessions that the primary packed into one prepare (never sent
    /// by a client): one journal write, one flush and one replication round for all of them.
    AppendPacked = 133,
    /// Events of an exported log, appended at their original offsets and positions with their
    /// original timestamps (`kimberlite import`).
    Import = 134,
}

impl Operation {
    pub fn from_u8(value: u8) -> Option<Operation> {
        match value {
            0 => Some(Operation::Reserved),
            1 => Some(Operation::Root),
            2 => Some(Operation::Register),
            3 => Some(Operation::Noop),
            128 => Some(Operation::CreateStream),
            129 => Some(Operation::Append),
            130 => Some(Operation::ReadStream),
            131 => Some(Operation::ReadLog),
            132 => Some(Operation::StreamInfo),
            133 => Some(Operation::AppendPacked),
            134 => Some(Operation::Import),
            _ => None,
        }
    }

    /// Reads are served from committed state and never prepared.
    pub fn is_read(self) -> bool {
        matches!(self, Operation::ReadStream | Operation::ReadLog | Operation::StreamInfo)
    }

    /// Operations a client may put in a request.
    pub fn is_client_request(self) -> bool {
        !matches!(
            self,
            Operation::Reserved | Operation::Root | Operation::Noop | Operation::AppendPacked
        )
    }
}

/// Why a replica evicted a client session (carried in an eviction's `context`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictionReason {
    NoSession = 1,
    SessionEvicted = 2,
    InvalidRequest = 3,
}

/// The 256-byte message header. See `docs/data-file.md` for the byte-by-byte layout.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct Header {
    /// Checksum of header bytes 16..256, so it covers `checksum_body` and thus the whole message.
    pub checksum: Checksum,
    /// Checksum of the body (`size - 256` bytes after the header).
    pub checksum_body: Checksum,
    pub parent: Checksum,
    pub context: u128,
    pub cluster: ClusterId,
    pub op: Op,
    pub commit: Op,
    /// At byte 88 in every protocol version, so a receiver names a peer's version before it
    /// checks anything else.
    pub protocol: u16,
    pub command: u8,
    pub replica: ReplicaIndex,
    /// Header plus body bytes.
    pub size: u32,
    pub timestamp: u64,
    pub client: ClientId,
    pub checkpoint_op: Op,
    pub op_min: Op,
    pub view: View,
    pub request: u32,
    pub log_view: View,
    pub operation: u8,
    pub reserved: [u8; HEADER_RESERVED_SIZE],
}

const HEADER_RESERVED_SIZE: usize = 115;
/// A `pong_client`'s status (`views::PongClient::status`): the sender's status, plus flags.
pub const PONG_STATUS_RECOVERING: u32 = 1;
pub const PONG_STATUS_NORMAL: u32 = 2;
pub const PONG_STATUS_VIEW_CHANGE: u32 = 3;
/// Flags: the sender is state-syncing; its log is not yet the cluster's (it rejoins).
pub const PONG_STATUS_SYNCING: u32 = 1 << 8;
pub const PONG_STATUS_REJOINING: u32 = 1 << 9;
/// Every valid status is below this.
const PONG_STATUS_LIMIT: u32 = 1 << 10;

/// A request's `read_mode` for a linearizable read (`views::Request::read_mode`).
pub const READ_MODE_LINEARIZABLE: u32 = 1;

/// Why a header of another protocol version is refused.
const PROTOCOL_DIFFERS: &str = "protocol version differs (this build speaks version 8)";
const_assert_eq!(PROTOCOL_VERSION, 8);
/// Where `protocol` sits in every version of the header (version 1 had it there too).
pub const HEADER_PROTOCOL_OFFSET: usize = 88;
/// The header checksum covers every byte after the checksum itself.
const HEADER_CHECKSUM_COVERS_FROM: usize = std::mem::size_of::<Checksum>();

assert_eq_size!(Header, [u8; HEADER_SIZE]);
const_assert_eq!(std::mem::align_of::<Header>(), 64);
const_assert_eq!(std::mem::offset_of!(Header, checksum_body), HEADER_CHECKSUM_COVERS_FROM);
const_assert_eq!(std::mem::offset_of!(Header, reserved), HEADER_SIZE - HEADER_RESERVED_SIZE);
const_assert_eq!(std::mem::offset_of!(Header, protocol), HEADER_PROTOCOL_OFFSET);

impl Header {
    /// A header with every field zero (the reserved command).
    pub const fn zeroed() -> Header {
        Header {
            checksum: Checksum(0),
            checksum_body: Checksum(0),
            cluster: ClusterId(0),
            size: 0,
            view: View(0),
            op: Op(0),
            commit: Op(0),
            timestamp: 0,
            client: ClientId(0),
            checkpoint_op: Op(0),
            op_min: Op(0),
            parent: Checksum(0),
            context: 0,
            request: 0,
            log_view: View(0),
            protocol: 0,
            command: 0,
            replica: ReplicaIndex(0),
            operation: 0,
            reserved: [0; HEADER_RESERVED_SIZE],
        }
    }

    /// A header for `command` in `cluster`, with the size of an empty body.
    pub fn new(command: Command, cluster: ClusterId) -> Header {
        Header {
            cluster,
            size: HEADER_SIZE as u32,
            protocol: PROTOCOL_VERSION,
            command: command as u8,
            ..Header::zeroed()
        }
    }

    /// The root prepare every log starts from (op 0), the same on every replica of a cluster.
    pub fn root_prepare(cluster: ClusterId) -> Header {
        let mut header = Header::new(Command::Prepare, cluster);
        header.operation = Operation::Root as u8;
        header.set_checksum_body(&[]);
        header.set_checksum();
        header
    }

    pub fn command(&self) -> Option<Command> {
        Command::from_u8(self.command)
    }

    pub fn operation(&self) -> Option<Operation> {
        Operation::from_u8(self.operation)
    }

    pub fn body_size(&self) -> usize {
        assert!(self.size as usize >= HEADER_SIZE);
        self.size as usize - HEADER_SIZE
    }

    pub fn calculate_checksum(&self) -> Checksum {
        checksum(&self.as_bytes()[HEADER_CHECKSUM_COVERS_FROM..])
    }

    pub fn set_checksum(&mut self) {
        self.checksum = self.calculate_checksum();
    }

    pub fn valid_checksum(&self) -> bool {
        self.checksum == self.calculate_checksum()
    }

    pub fn set_checksum_body(&mut self, body: &[u8]) {
        assert_eq!(body.len(), self.size as usize - HEADER_SIZE);
        self.checksum_body = checksum(body);
    }

    pub fn valid_checksum_body(&self, body: &[u8]) -> bool {
        body.len() + HEADER_SIZE == self.size as usize && self.checksum_body == checksum(body)
    }

    /// Casts the first 256 bytes of `bytes` to a header. Returns `None` if `bytes` is too short
    /// or not 64-byte aligned; the header is not validated.
    pub fn from_prefix(bytes: &[u8]) -> Option<&Header> {
        Header::ref_from_prefix(bytes).ok().map(|(header, _)| header)
    }

    /// Decodes and fully validates a header from untrusted bytes: the protocol version, the
    /// checksum, then `invalid()`. The body is checked separately with `valid_checksum_body`.
    pub fn decode(bytes: &[u8]) -> Result<Header, &'static str> {
        let header = Header::read_from_prefix(bytes).map_err(|_| "header: too short")?.0;
        if header.protocol != PROTOCOL_VERSION {
            // Checked before the checksum, which another version computes differently.
            return Err(PROTOCOL_DIFFERS);
        }
        if !header.valid_checksum() {
            return Err("header: checksum");
        }
        match header.invalid() {
            Some(reason) => Err(reason),
            None => Ok(header),
        }
    }

    /// Why this header cannot be a valid message of the protocol, or `None`. Checks every field:
    /// reserved bytes, size bounds, replica index, and each command's own invariants. It does not
    /// check the checksums (see `decode`), nor anything that needs the receiver's state (the
    /// cluster id, the replica count).
    pub fn invalid(&self) -> Option<&'static str> {
        if self.protocol != PROTOCOL_VERSION {
            return Some(PROTOCOL_DIFFERS);
        }
        if self.reserved != [0; HEADER_RESERVED_SIZE] {
            return Some("reserved bytes not zero");
        }
        if (self.size as usize) < HEADER_SIZE {
            return Some("size smaller than header");
        }
        if self.size as usize > MESSAGE_SIZE_MAX {
            return Some("size larger than message_size_max");
        }
        if usize::from(self.replica) >= REPLICAS_MAX {
            return Some("replica index out of range");
        }
        if self.operation().is_none() {
            return Some("operation unknown");
        }
        let Some(command) = self.command() else {
            return Some("command unknown");
        };
        match command {
            Command::Reserved => Some("command reserved"),
            Command::Ping | Command::Pong => self.invalid_ping(),
            Command::PingClient | Command::PongClient => self.invalid_ping_client(command),
            Command::Request => self.invalid_request(),
            Command::Prepare => self.invalid_prepare(),
            Command::PrepareOk => self.invalid_prepare_ok(),
            Command::Reply => self.invalid_reply(),
            Command::Commit => self.invalid_commit(),
            Command::StartViewChange => self.invalid_start_view_change(),
            Command::DoViewChange => self.invalid_do_view_change(),
            Command::StartView => self.invalid_start_view(),
            Command::RequestStartView => self.invalid_request_start_view(),
            Command::RequestHeaders => self.invalid_request_headers(),
            Command::RequestPrepare | Command::NackPrepare => self.invalid_request_prepare(),
            Command::Headers => self.invalid_headers(),
            Command::RequestReply => self.invalid_request_reply(),
            Command::Eviction => self.invalid_eviction(),
            Command::RequestBlocks => self.invalid_request_blocks(),
            Command::Block => self.invalid_block(),
            Command::RequestSyncCheckpoint => self.invalid_request_sync_checkpoint(),
            Command::SyncCheckpoint => self.invalid_sync_checkpoint(),
            Command::Busy => self.invalid_busy(),
        }
    }

    /// The fields that a command does not use, each of which must be zero.
    fn unused_fields_zero(&self, used: Fields) -> Option<&'static str> {
        let checks: [(Fields, bool, &'static str); 13] = [
            (Fields::VIEW, self.view == View(0), "view must be zero"),
            (Fields::OP, self.op == Op(0), "op must be zero"),
            (Fields::COMMIT, self.commit == Op(0), "commit must be zero"),
            (Fields::TIMESTAMP, self.timestamp == 0, "timestamp must be zero"),
            (Fields::CLIENT, self.client == ClientId(0), "client must be zero"),
            (Fields::CHECKPOINT_OP, self.checkpoint_op == Op(0), "checkpoint_op must be zero"),
            (Fields::OP_MIN, self.op_min == Op(0), "op_min must be zero"),
            (Fields::PARENT, self.parent == Checksum(0), "parent must be zero"),
            (Fields::CONTEXT, self.context == 0, "context must be zero"),
            (Fields::REQUEST, self.request == 0, "request must be zero"),
            (Fields::LOG_VIEW, self.log_view == View(0), "log_view must be zero"),
            (Fields::REPLICA, self.replica == ReplicaIndex(0), "replica must be zero"),
            (Fields::OPERATION, self.operation == 0, "operation must be zero"),
        ];
        for (field, zero, reason) in checks {
            if !used.contains(field) && !zero {
                return Some(reason);
            }
        }
        None
    }

    fn invalid_body_empty(&self) -> Option<&'static str> {
        if self.size as usize != HEADER_SIZE {
            return Some("body must be empty");
        }
        if self.checksum_body != checksum(&[]) {
            return Some("checksum_body of an empty body wrong");
        }
        None
    }

    fn invalid_body_headers(&self) -> Option<&'static str> {
        if self.size as usize == HEADER_SIZE {
            return Some("body must hold at least one header");
        }
        if !(self.size as usize - HEADER_SIZE).is_multiple_of(HEADER_SIZE) {
            return Some("body must be a whole number of headers");
        }
        None
    }

    fn invalid_ping(&self) -> Option<&'static str> {
        // `context`: the nonce of a rejoining replica's view query, echoed by the pong.
        let used = Fields(views::used_fields(Command::Ping));
        self.unused_fields_zero(used).or_else(|| self.invalid_body_empty())
    }

    fn invalid_ping_client(&self, command: Command) -> Option<&'static str> {
        if self.client == ClientId(0) {
            return Some("client must not be zero");
        }
        if command == Command::PongClient
            && views::PongClient::of(self).status() >= PONG_STATUS_LIMIT
        {
            return Some("pong_client status unknown");
        }
        let used = Fields(views::used_fields(command));
        self.unused_fields_zero(used).or_else(|| self.invalid_body_empty())
    }

    fn invalid_request(&self) -> Option<&'static str> {
        let used = Fields(views::used_fields(Command::Request));
        if let Some(reason) = self.unused_fields_zero(used) {
            return Some(reason);
        }
        if self.client == ClientId(0) {
            return Some("client must not be zero");
        }
        let operation = self.operation().unwrap_or(Operation::Reserved);
        if !operation.is_client_request() {
            return Some("operation not allowed in a request");
        }
        let read_mode_max = if operation.is_read() { READ_MODE_LINEARIZABLE } else { 0 };
        if views::Request::of(self).read_mode() > read_mode_max {
            return Some("request read_mode unknown, or set on a write");
        }
        if operation == Operation::Register {
            if self.request != 0 {
                return Some("register must be request 0");
            }
            if self.parent != Checksum(0) {
                return Some("register must have no parent");
            }
            return self.invalid_body_empty();
        }
        if self.request == 0 {
            return Some("request 0 is reserved for register");
        }
        None
    }

    fn invalid_prepare(&self) -> Option<&'static str> {
        let used = Fields(views::used_fields(Command::Prepare));
        if let Some(reason) = self.unused_fields_zero(used) {
            return Some(reason);
        }
        let operation = self.operation().unwrap_or(Operation::Reserved);
        match operation {
            Operation::Reserved => Some("prepare operation reserved"),
            Operation::Root => self.invalid_root_prepare(),
            _ if operation.is_read() => Some("reads are never prepared"),
            _ => {
                if self.op == Op(0) {
                    return Some("op 0 is the root prepare");
                }
                if self.commit >= self.op {
                    return Some("prepare commit must be below its op");
                }
                if self.timestamp == 0 {
                    return Some("prepare timestamp must not be zero");
                }
                if let Some(reason) = self.invalid_prepare_client(operation) {
                    return Some(reason);
                }
                if !(1..=GRID_BLOCKS_MAX).contains(&self.op_min.0) {
                    return Some("prepare grid_blocks out of range");
                }
                if operation == Operation::Noop && self.context != 0 {
                    return Some("noop prepare must have no client");
                }
                if operation == Operation::AppendPacked && self.context != 0 {
                    return Some("packed prepare must have no request checksum");
                }
                if operation == Operation::Register && self.size as usize != HEADER_SIZE {
                    return Some("register prepare must have an empty body");
                }
                None
            }
        }
    }

    /// The client fields of a prepare, or of a prepare_ok that must match it.
    fn invalid_prepare_client(&self, operation: Operation) -> Option<&'static str> {
        if operation == Operation::Noop {
            if self.client != ClientId(0) || self.request != 0 {
                return Some("noop prepare must have no client");
            }
            return None;
        }
        if operation == Operation::AppendPacked {
            if self.client != ClientId(0) || self.request != 0 {
                return Some("packed prepare must have no client in its header");
            }
            return None;
        }
        if self.client == ClientId(0) {
            return Some("client must not be zero");
        }
        if operation == Operation::Register && self.request != 0 {
            return Some("register must be request 0");
        }
        if operation != Operation::Register && self.request == 0 {
            return Some("request 0 is reserved for register");
        }
        None
    }

    fn invalid_root_prepare(&self) -> Option<&'static str> {
        let root = Header::root_prepare(self.cluster);
        if self.size != root.size || self.checksum_body != root.checksum_body {
            return Some("root prepare must have an empty body");
        }
        let zero = self.op == Op(0)
            && self.op_min == Op(0)
            && self.commit == Op(0)
            && self.timestamp == 0
            && self.client == ClientId(0)
            && self.request == 0
            && self.parent == Checksum(0)
            && self.context == 0
            && self.view == View(0)
            && self.replica == ReplicaIndex(0);
        if !zero {
            return Some("root prepare fields must be zero");
        }
        None
    }

    fn invalid_prepare_ok(&self) -> Option<&'static str> {
        let used = Fields(views::used_fields(Command::PrepareOk));
        if let Some(reason) = self.unused_fields_zero(used) {
            return Some(reason);
        }
        if self.op == Op(0) {
            return Some("prepare_ok for the root prepare");
        }
        let operation = self.operation().unwrap_or(Operation::Reserved);
        if matches!(operation, Operation::Reserved | Operation::Root) || operation.is_read() {
            return Some("prepare_ok operation invalid");
        }
        if self.timestamp == 0 {
            return Some("prepare timestamp must not be zero");
        }
        if !(1..=GRID_BLOCKS_MAX).contains(&self.op_min.0) {
            return Some("prepare_ok grid_blocks out of range");
        }
        if let Some(reason) = self.invalid_prepare_client(operation) {
            return Some(reason);
        }
        self.invalid_body_empty()
    }

    fn invalid_reply(&self) -> Option<&'static str> {
        let used = Fields(views::used_fields(Command::Reply));
        if let Some(reason) = self.unused_fields_zero(used) {
            return Some(reason);
        }
        if self.client == ClientId(0) {
            return Some("client must not be zero");
        }
        let operation = self.operation().unwrap_or(Operation::Reserved);
        if !operation.is_client_request() {
            return Some("reply operation invalid");
        }
        if !operation.is_read() {
            if self.op == Op(0) {
                return Some("reply to a write must name its op");
            }
            if self.commit < self.op {
                return Some("reply commit must not be below its op");
            }
        }
        None
    }

    fn invalid_commit(&self) -> Option<&'static str> {
        let used = Fields(views::used_fields(Command::Commit));
        if let Some(reason) = self.unused_fields_zero(used) {
            return Some(reason);
        }
        if self.checkpoint_op > self.commit {
            return Some("checkpoint_op must not exceed commit");
        }
        self.invalid_body_empty()
    }

    /// `context` is 1 if the sender entered the view change (it counted a quorum of votes),
    /// 0 if it only votes for it.
    fn invalid_start_view_change(&self) -> Option<&'static str> {
        let used = Fields(views::used_fields(Command::StartViewChange));
        if let Some(reason) = self.unused_fields_zero(used) {
            return Some(reason);
        }
        if self.view == View(0) {
            return Some("view change to view 0");
        }
        if self.context > 2 {
            return Some("start_view_change context must be 0, 1 or 2");
        }
        self.invalid_body_empty()
    }

    fn invalid_do_view_change(&self) -> Option<&'static str> {
        let used = Fields(views::used_fields(Command::DoViewChange));
        if let Some(reason) = self.unused_fields_zero(used) {
            return Some(reason);
        }
        if self.view == View(0) {
            return Some("view change to view 0");
        }
        if self.log_view >= self.view {
            return Some("log_view must be below the new view");
        }
        if self.commit > self.op {
            return Some("commit must not exceed op");
        }
        if self.checkpoint_op > self.commit {
            return Some("checkpoint_op must not exceed commit");
        }
        if self.op_min <= self.op {
            return Some("do_view_change op_min (the lowest op it can nack) must exceed op");
        }
        self.invalid_body_headers()
    }

    fn invalid_start_view(&self) -> Option<&'static str> {
        let used = Fields(views::used_fields(Command::StartView));
        if let Some(reason) = self.unused_fields_zero(used) {
            return Some(reason);
        }
        if self.commit > self.op {
            return Some("commit must not exceed op");
        }
        if self.checkpoint_op > self.commit {
            return Some("checkpoint_op must not exceed commit");
        }
        self.invalid_body_headers()
    }

    fn invalid_request_start_view(&self) -> Option<&'static str> {
        let used = Fields(views::used_fields(Command::RequestStartView));
        self.unused_fields_zero(used).or_else(|| self.invalid_body_empty())
    }

    fn invalid_request_headers(&self) -> Option<&'static str> {
        let used = Fields(views::used_fields(Command::RequestHeaders));
        if let Some(reason) = self.unused_fields_zero(used) {
            return Some(reason);
        }
        if self.op_min > self.op {
            return Some("op_min must not exceed op");
        }
        self.invalid_body_empty()
    }

    fn invalid_request_prepare(&self) -> Option<&'static str> {
        let used = Fields(views::used_fields(Command::RequestPrepare));
        self.unused_fields_zero(used).or_else(|| self.invalid_body_empty())
    }

    fn invalid_headers(&self) -> Option<&'static str> {
        let used = Fields(views::used_fields(Command::Headers));
        if let Some(reason) = self.unused_fields_zero(used) {
            return Some(reason);
        }
        if self.op_min > self.op {
            return Some("op_min must not exceed op");
        }
        self.invalid_body_headers()
    }

    fn invalid_request_reply(&self) -> Option<&'static str> {
        let used = Fields(views::used_fields(Command::RequestReply));
        if let Some(reason) = self.unused_fields_zero(used) {
            return Some(reason);
        }
        if self.client == ClientId(0) {
            return Some("client must not be zero");
        }
        self.invalid_body_empty()
    }

    fn invalid_eviction(&self) -> Option<&'static str> {
        let used = Fields(views::used_fields(Command::Eviction));
        if let Some(reason) = self.unused_fields_zero(used) {
            return Some(reason);
        }
        if self.client == ClientId(0) {
            return Some("client must not be zero");
        }
        let reasons = [
            EvictionReason::NoSession,
            EvictionReason::SessionEvicted,
            EvictionReason::InvalidRequest,
        ];
        if !reasons.iter().any(|reason| *reason as u128 == self.context) {
            return Some("eviction reason unknown");
        }
        self.invalid_body_empty()
    }

    fn invalid_busy(&self) -> Option<&'static str> {
        let used = Fields(views::used_fields(Command::Busy));
        if let Some(reason) = self.unused_fields_zero(used) {
            return Some(reason);
        }
        if self.client == ClientId(0) {
            return Some("client must not be zero");
        }
        if !self.operation().is_some_and(Operation::is_client_request) {
            return Some("operation not allowed in a request");
        }
        self.invalid_body_empty()
    }

    fn invalid_request_blocks(&self) -> Option<&'static str> {
        let used = Fields(views::used_fields(Command::RequestBlocks));
        if let Some(reason) = self.unused_fields_zero(used) {
            return Some(reason);
        }
        // The body is a list of 16-byte (address, checksum, padding) block references.
        let body_size = self.size as usize - HEADER_SIZE;
        if body_size == 0 {
            return Some("body must list at least one block");
        }
        if !body_size.is_multiple_of(16) {
            return Some("body must be a whole number of block references");
        }
        None
    }

    fn invalid_block(&self) -> Option<&'static str> {
        let used = Fields(views::used_fields(Command::Block));
        if let Some(reason) = self.unused_fields_zero(used) {
            return Some(reason);
        }
        if self.size as usize == HEADER_SIZE {
            return Some("block body must not be empty");
        }
        None
    }

    fn invalid_request_sync_checkpoint(&self) -> Option<&'static str> {
        let used = Fields(views::used_fields(Command::RequestSyncCheckpoint));
        self.unused_fields_zero(used).or_else(|| self.invalid_body_empty())
    }

    fn invalid_sync_checkpoint(&self) -> Option<&'static str> {
        let used = Fields(views::used_fields(Command::SyncCheckpoint));
        if let Some(reason) = self.unused_fields_zero(used) {
            return Some(reason);
        }
        if self.checkpoint_op > self.commit {
            return Some("checkpoint_op must not exceed commit");
        }
        if self.size as usize == HEADER_SIZE {
            return Some("checkpoint state must not be empty");
        }
        None
    }
}

/// A set of header fields (for `unused_fields_zero`).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fields(u16);

impl Fields {
    const VIEW: Fields = Fields(views::field_bit("view"));
    const OP: Fields = Fields(views::field_bit("op"));
    const COMMIT: Fields = Fields(views::field_bit("commit"));
    const TIMESTAMP: Fields = Fields(views::field_bit("timestamp"));
    const CLIENT: Fields = Fields(views::field_bit("client"));
    const CHECKPOINT_OP: Fields = Fields(views::field_bit("checkpoint_op"));
    const OP_MIN: Fields = Fields(views::field_bit("op_min"));
    const PARENT: Fields = Fields(views::field_bit("parent"));
    const CONTEXT: Fields = Fields(views::field_bit("context"));
    const REQUEST: Fields = Fields(views::field_bit("request"));
    const LOG_VIEW: Fields = Fields(views::field_bit("log_view"));
    const REPLICA: Fields = Fields(views::field_bit("replica"));
    const OPERATION: Fields = Fields(views::field_bit("operation"));

    fn contains(self, other: Fields) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Fields {
    type Output = Fields;
    fn bitor(self, other: Fields) -> Fields {
        Fields(self.0 | other.0)
    }
}

pub mod views;

#[cfg(test)]
mod tests;
