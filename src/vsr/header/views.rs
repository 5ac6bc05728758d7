//! One typed view per command over the same 256 header bytes (TigerBeetle's
//! `Header.into(command)`): each field a command uses, under the name of what it means there.
//! The generic fields are shared storage: `context` is a request checksum in a prepare, a nonce
//! in a start_view and a byte offset in a block; `op` is a grid address in a block. Code that
//! reads or writes such a field goes through the view, so the meaning is named where it is used.
//!
//! The views are the single source of which fields a command uses: `Header::invalid()` requires
//! every other field to be zero (`used_fields`), and `docs/data-file.md` carries the table that
//! `views_doc()` renders (`src/tidy.rs` compares the two).
//!
//! A view borrows the header (`Prepare::of(&header)`) or borrows it mutably
//! (`Prepare::of(&mut header)`, then `set_*`), and checks the command once, when it is made.

use std::borrow::{Borrow, BorrowMut};

use super::{Checksum, ClientId, Command, Header, Op, ReplicaIndex, View};

/// A generic header field read as the type a view gives it, and written back.
pub trait HeaderField<T>: Copy {
    fn read(self) -> T;
    fn write(value: T) -> Self;
}

impl<T: Copy> HeaderField<T> for T {
    fn read(self) -> T {
        self
    }

    fn write(value: T) -> T {
        value
    }
}

/// `context` as a checksum (of a request, a prepare, a reply).
impl HeaderField<Checksum> for u128 {
    fn read(self) -> Checksum {
        Checksum(self)
    }

    fn write(value: Checksum) -> u128 {
        value.0
    }
}

/// `context` as a number (a byte offset): a value beyond `u64` reads as `u64::MAX`, which no
/// bound accepts, rather than as its low bits.
impl HeaderField<u64> for u128 {
    fn read(self) -> u64 {
        u64::try_from(self).unwrap_or(u64::MAX)
    }

    fn write(value: u64) -> u128 {
        u128::from(value)
    }
}

/// `context` as a small code (an eviction reason, a flag): out of range reads as `u32::MAX`.
impl HeaderField<u32> for u128 {
    fn read(self) -> u32 {
        u32::try_from(self).unwrap_or(u32::MAX)
    }

    fn write(value: u32) -> u128 {
        u128::from(value)
    }
}

/// `op` as a grid block address.
impl HeaderField<u64> for Op {
    fn read(self) -> u64 {
        self.0
    }

    fn write(value: u64) -> Op {
        Op(value)
    }
}

/// What the doc table says of one view: its command, its fields and its body.
pub struct ViewDoc {
    pub command: Command,
    /// (name in the view, generic field, what it means).
    pub fields: &'static [(&'static str, &'static str, &'static str)],
    pub body: &'static str,
}

/// The generic fields a command may use, in `Fields` bit order.
pub(super) const FIELD_NAMES: [&str; 13] = [
    "view",
    "op",
    "commit",
    "timestamp",
    "client",
    "checkpoint_op",
    "op_min",
    "parent",
    "context",
    "request",
    "log_view",
    "replica",
    "operation",
];

/// The bit of generic field `name` in a `Fields` mask.
pub(super) const fn field_bit(name: &str) -> u16 {
    let mut index = 0;
    while index < FIELD_NAMES.len() {
        if str_equal(FIELD_NAMES[index], name) {
            return 1 << index;
        }
        index += 1;
    }
    panic!("not a generic header field");
}

const fn str_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut index = 0;
    while index < a.len() {
        if a[index] != b[index] {
            return false;
        }
        index += 1;
    }
    true
}

macro_rules! header_views {
    ($(
        $(#[$meta:meta])*
        $view:ident = $command:ident, body: $body:literal {
            $($name:ident / $setter:ident: $ty:ty = $field:ident, $doc:literal;)*
        }
    )*) => {
        $(
            $(#[$meta])*
            #[derive(Clone, Copy, Debug)]
            pub struct $view<H>(H);

            impl<H: Borrow<Header>> $view<H> {
                pub const COMMAND: Command = Command::$command;
                /// The generic fields this command uses (every other one must be zero).
                pub(crate) const FIELDS: u16 = 0 $(| field_bit(stringify!($field)))*;

                /// The view of `header`, which must be a `$command`.
                pub fn of(header: H) -> $view<H> {
                    assert_eq!(header.borrow().command(), Some(Command::$command));
                    $view(header)
                }

                pub fn header(&self) -> &Header {
                    self.0.borrow()
                }

                $(
                    #[doc = $doc]
                    pub fn $name(&self) -> $ty {
                        HeaderField::read(self.0.borrow().$field)
                    }
                )*
            }

            impl<H: BorrowMut<Header>> $view<H> {
                $(
                    #[doc = $doc]
                    pub fn $setter(&mut self, value: $ty) {
                        self.0.borrow_mut().$field = HeaderField::write(value);
                    }
                )*
            }
        )*

        /// Every view, in command order, for the doc table.
        pub const VIEWS: &[ViewDoc] = &[$(ViewDoc {
            command: Command::$command,
            fields: &[$((stringify!($name), stringify!($field), $doc)),*],
            body: $body,
        }),*];

        /// The generic fields `command` uses.
        pub(super) fn used_fields(command: Command) -> u16 {
            match command {
                Command::Reserved => 0,
                $(Command::$command => $view::<&Header>::FIELDS,)*
            }
        }
    };
}

header_views! {
    /// A replica's heartbeat to its peers.
    Ping = Ping, body: "empty" {
        view / set_view: View = view, "the sender's view (0 from a rejoining replica)";
        replica / set_replica: ReplicaIndex = replica, "the sender";
        timestamp / set_timestamp: u64 = timestamp,
            "the sender's monotonic time, echoed by the pong";
        commit_min / set_commit_min: Op = commit, "the sender's commit_min";
        checkpoint_op / set_checkpoint_op: Op = checkpoint_op, "the sender's checkpoint";
        nonce / set_nonce: u128 = context, "0, or the nonce of a rejoining replica's view query";
    }

    /// The answer to a ping.
    Pong = Pong, body: "empty" {
        view / set_view: View = view, "the sender's view";
        replica / set_replica: ReplicaIndex = replica, "the sender";
        timestamp / set_timestamp: u64 = timestamp, "the ping's timestamp";
        commit_min / set_commit_min: Op = commit, "the sender's commit_min";
        checkpoint_op / set_checkpoint_op: Op = checkpoint_op, "the sender's checkpoint";
        nonce / set_nonce: u128 = context, "the nonce of the view query it answers, or 0";
    }

    /// A client's keepalive, which also asks for the primary.
    PingClient = PingClient, body: "empty" {
        client / set_client: ClientId = client, "the client";
        timestamp / set_timestamp: u64 = timestamp, "the client's time, echoed";
    }

    /// The answer to a client's ping: where the primary is.
    PongClient = PongClient, body: "empty" {
        client / set_client: ClientId = client, "the client";
        timestamp / set_timestamp: u64 = timestamp, "the ping's timestamp";
        view / set_view: View = view, "the sender's view (its primary is view mod replica_count)";
        replica / set_replica: ReplicaIndex = replica, "the sender";
        op / set_op: Op = op, "the sender's head op";
        commit_min / set_commit_min: Op = commit, "the sender's commit_min";
        checkpoint_op / set_checkpoint_op: Op = checkpoint_op, "the sender's checkpoint";
        status / set_status: u32 = context,
            "the sender's status: 1 recovering, 2 normal, 3 view_change; plus 256 while it \
            state-syncs, 512 while it rejoins (its log is not yet the cluster's)";
    }

    /// A client's request.
    Request = Request, body: "the operation's input" {
        client / set_client: ClientId = client, "the client (never 0)";
        request / set_request: u32 = request, "the request number (0 is the register)";
        operation / set_operation: u8 = operation, "the operation";
        view / set_view: View = view, "the client's guess of the view";
        commit_min / set_commit_min: Op = commit, "a read: the lowest commit to read at";
        parent / set_parent: Checksum = parent,
            "a write: the session chain after the previous reply (0 for a register); a read: a \
            nonce, so no two reads share a checksum";
        read_mode / set_read_mode: u32 = context,
            "a read: 1 for a linearizable read (answered by the primary once an op it prepared \
            after the read arrived has committed), 0 for one at the serving replica's commit; \
            0 for a write";
    }

    /// A primary's prepare of one op.
    Prepare = Prepare, body: "the request's body" {
        op / set_op: Op = op, "the op";
        commit / set_commit: Op = commit, "the primary's commit_max";
        timestamp / set_timestamp: u64 = timestamp, "the op's timestamp";
        client / set_client: ClientId = client, "the requesting client";
        request / set_request: u32 = request, "the client's request number";
        operation / set_operation: u8 = operation, "the operation";
        parent / set_parent: Checksum = parent, "the previous prepare's checksum: the hash chain";
        request_checksum / set_request_checksum: Checksum = context,
            "the checksum of the client's request";
        view / set_view: View = view, "the view it was prepared in";
        replica / set_replica: ReplicaIndex = replica, "the primary";
        grid_blocks / set_grid_blocks: u64 = op_min,
            "the cluster's grid in blocks, as the primary knows it: executing the prepare raises \
            the committed limit to it";
    }

    /// A backup's acknowledgement that a prepare is durable.
    PrepareOk = PrepareOk, body: "empty" {
        op / set_op: Op = op, "the prepare's op";
        commit_min / set_commit_min: Op = commit, "the sender's commit_min";
        timestamp / set_timestamp: u64 = timestamp, "the prepare's timestamp";
        client / set_client: ClientId = client, "the prepare's client";
        request / set_request: u32 = request, "the prepare's request number";
        operation / set_operation: u8 = operation, "the prepare's operation";
        parent / set_parent: Checksum = parent, "the prepare's parent";
        prepare_checksum / set_prepare_checksum: Checksum = context,
            "the checksum of the prepare acknowledged";
        view / set_view: View = view, "the sender's view";
        replica / set_replica: ReplicaIndex = replica, "the sender";
        grid_blocks / set_grid_blocks: u64 = op_min, "the sender's own grid in blocks";
    }

    /// The primary's answer to a client.
    Reply = Reply, body: "the operation's result" {
        op / set_op: Op = op, "the op that executed the request (0 for a read)";
        commit / set_commit: Op = commit,
            "the sender's commit_min when it executed the request or read";
        timestamp / set_timestamp: u64 = timestamp, "the op's timestamp";
        client / set_client: ClientId = client, "the client";
        request / set_request: u32 = request, "the request number";
        operation / set_operation: u8 = operation, "the operation";
        request_checksum / set_request_checksum: Checksum = context,
            "the checksum of the request answered";
        view / set_view: View = view, "the sender's view";
        replica / set_replica: ReplicaIndex = replica, "the sender";
    }

    /// The primary's commit heartbeat.
    Commit = Commit, body: "empty" {
        commit / set_commit: Op = commit, "the primary's commit_max";
        commit_checksum / set_commit_checksum: Checksum = context,
            "the checksum of the prepare at commit";
        checkpoint_op / set_checkpoint_op: Op = checkpoint_op, "the primary's checkpoint";
        timestamp / set_timestamp: u64 = timestamp, "the primary's monotonic time";
        view / set_view: View = view, "the view";
        replica / set_replica: ReplicaIndex = replica, "the primary";
    }

    /// A vote to leave the sender's view for `view`.
    StartViewChange = StartViewChange, body: "empty" {
        view / set_view: View = view, "the view voted for";
        replica / set_replica: ReplicaIndex = replica, "the voter";
        entered / set_entered: u32 = context,
            "1 if the sender entered that view (it counted a quorum of votes), 2 if it entered it \
            to rejoin after losing its data file, else 0";
    }

    /// A replica's log, sent to the new view's primary.
    DoViewChange = DoViewChange, body: "\
        up to 32 headers of the log's suffix, ascending and hash-chained, ending at op" {
        head / set_head: Op = op, "the log's head";
        nack_op_min / set_nack_op_min: Op = op_min,
            "the lowest op above the head the sender can deny having acknowledged: head + 1, or \
            higher when its WAL has faulty entries";
        commit_min / set_commit_min: Op = commit, "the sender's commit_min (at most the head)";
        checkpoint_op / set_checkpoint_op: Op = checkpoint_op, "the sender's checkpoint";
        log_view / set_log_view: View = log_view, "the last view in which the sender was normal";
        view / set_view: View = view, "the new view";
        replica / set_replica: ReplicaIndex = replica, "the sender";
    }

    /// The new primary's log, which starts its view.
    StartView = StartView, body: "the suffix of the primary's log, as in do_view_change" {
        head / set_head: Op = op, "the log's head";
        commit_max / set_commit_max: Op = commit, "the primary's commit_max";
        checkpoint_op / set_checkpoint_op: Op = checkpoint_op, "the primary's checkpoint";
        nonce / set_nonce: u128 = context, "the nonce of the request_start_view it answers, or 0";
        view / set_view: View = view, "the view";
        replica / set_replica: ReplicaIndex = replica, "the primary";
    }

    /// A backup's request for its view's log.
    RequestStartView = RequestStartView, body: "empty" {
        nonce / set_nonce: u128 = context, "echoed by the start_view that answers";
        view / set_view: View = view, "the sender's view";
        replica / set_replica: ReplicaIndex = replica, "the sender";
    }

    /// A request for a range of headers.
    RequestHeaders = RequestHeaders, body: "empty" {
        op_min / set_op_min: Op = op_min, "the lowest op wanted";
        op_max / set_op_max: Op = op, "the highest op wanted";
        view / set_view: View = view, "the sender's view";
        replica / set_replica: ReplicaIndex = replica, "the sender";
    }

    /// A request for one prepare.
    RequestPrepare = RequestPrepare, body: "empty" {
        op / set_op: Op = op, "the op wanted";
        prepare_checksum / set_prepare_checksum: Checksum = context,
            "the prepare's checksum (0: whatever the receiver's log holds at op)";
        view / set_view: View = view, "the sender's view";
        replica / set_replica: ReplicaIndex = replica, "the sender";
    }

    /// Headers of a range, answering request_headers.
    Headers = Headers, body: "\
        the sender's headers for op_min..=op_max it holds (the top of the range), ascending and \
        hash-chained" {
        op_min / set_op_min: Op = op_min, "the lowest op asked for";
        op_max / set_op_max: Op = op, "the highest op asked for";
        view / set_view: View = view, "the sender's view";
        replica / set_replica: ReplicaIndex = replica, "the sender";
    }

    /// A denial of having a prepare, during a view change.
    NackPrepare = NackPrepare, body: "empty" {
        op / set_op: Op = op, "the op denied";
        prepare_checksum / set_prepare_checksum: Checksum = context,
            "the checksum of the prepare denied";
        view / set_view: View = view, "the sender's view";
        replica / set_replica: ReplicaIndex = replica, "the sender";
    }

    /// A request for a client's stored reply.
    RequestReply = RequestReply, body: "empty" {
        op / set_op: Op = op, "the reply's op";
        client / set_client: ClientId = client, "the client";
        reply_checksum / set_reply_checksum: Checksum = context, "the reply's checksum";
        view / set_view: View = view, "the sender's view";
        replica / set_replica: ReplicaIndex = replica, "the sender";
    }

    /// The end of a client's session.
    Eviction = Eviction, body: "empty" {
        client / set_client: ClientId = client, "the client evicted";
        reason / set_reason: u32 = context, "why (`EvictionReason`)";
        view / set_view: View = view, "the sender's view";
        replica / set_replica: ReplicaIndex = replica, "the sender";
    }

    /// A request for chunks of grid blocks, during state sync or grid repair.
    RequestBlocks = RequestBlocks, body: "\
        chunk references of 16 bytes: address u64, offset u32, length u32 (sector multiples, \
        within the block)" {
        checkpoint_op / set_checkpoint_op: Op = checkpoint_op,
            "the checkpoint the blocks belong to";
        view / set_view: View = view, "the sender's view";
        replica / set_replica: ReplicaIndex = replica, "the sender";
    }

    /// A chunk of a grid block.
    Block = Block, body: "the chunk's bytes" {
        address / set_address: u64 = op, "the block's grid address";
        offset / set_offset: u64 = context, "the chunk's byte offset in the block";
        checkpoint_op / set_checkpoint_op: Op = checkpoint_op,
            "the checkpoint the block belongs to";
        checkpoint_durable / set_checkpoint_durable: Op = commit,
            "the sender's durable checkpoint (a checkpoint's blocks are reused two later)";
        replica / set_replica: ReplicaIndex = replica, "the sender";
    }

    /// A request for a peer's checkpoint, to sync to it.
    RequestSyncCheckpoint = RequestSyncCheckpoint, body: "empty" {
        checkpoint_op / set_checkpoint_op: Op = checkpoint_op, "the requester's checkpoint";
        view / set_view: View = view, "the sender's view";
        replica / set_replica: ReplicaIndex = replica, "the sender";
    }

    /// A checkpoint's state, for state sync.
    SyncCheckpoint = SyncCheckpoint, body: "\
        the header of the prepare at checkpoint_op (256 bytes), streams_table_checksum u128, \
        checkpoint_state_checksum u128, grid_head u64, streams_table_address u64, \
        streams_table_blocks u32, grid_blocks_limit u32 (the cluster's grid), 8 zero bytes, \
        then the `clients_max` client-session records (48 bytes each, as in the superblock's \
        trailer)" {
        checkpoint_op / set_checkpoint_op: Op = checkpoint_op, "the checkpoint";
        commit_max / set_commit_max: Op = commit, "the sender's commit_max";
        checkpoint_checksum / set_checkpoint_checksum: Checksum = context,
            "the checksum of the prepare at checkpoint_op";
        view / set_view: View = view, "the sender's view";
        replica / set_replica: ReplicaIndex = replica, "the sender";
    }

    /// The answer to a request a replica has no room for now (the primary's request queue, or
    /// the replica's table of reads in flight, is full): the client sends the same request to
    /// the same replica again after a short backoff, instead of waiting out its timeout.
    Busy = Busy, body: "empty" {
        client / set_client: ClientId = client, "the client";
        request / set_request: u32 = request, "the request number";
        operation / set_operation: u8 = operation, "the request's operation";
        request_checksum / set_request_checksum: Checksum = context,
            "the checksum of the request it answers";
        view / set_view: View = view, "the sender's view";
        replica / set_replica: ReplicaIndex = replica, "the sender";
    }
}

/// The command tables of `docs/data-file.md`, rendered from the views: one row per command,
/// its fields (view name = generic field: meaning) and its body.
pub fn views_doc() -> String {
    let mut text =
        String::from("| command | fields (name = header field: meaning) | body |\n|---|---|---|\n");
    for view in VIEWS {
        let fields: Vec<String> = view
            .fields
            .iter()
            .map(|(name, field, doc)| {
                if name == field {
                    format!("{name}: {doc}")
                } else {
                    format!("{name} = {field}: {doc}")
                }
            })
            .collect();
        text.push_str(&format!(
            "| {} | {} | {} |\n",
            view.command.name(),
            fields.join("; "),
            view.body
        ));
    }
    text
}
