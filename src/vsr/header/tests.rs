//! Unit tests for header validation: one per rejection reason.
//!
//! Every rejection test starts from a valid, checksummed header, changes one thing, and asserts
//! the exact reason from both `invalid()` and `decode()` (see `rejects`). `REASONS` lists every
//! reason header.rs can return; `the_reason_list_matches_the_reasons_returned_in_header_rs`
//! keeps it in step with the source, and `every_rejection_reason_has_a_test_that_produces_it`
//! runs the test named for each reason in `REJECTION_TESTS` and checks that it produced it.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::mem::{align_of, offset_of, size_of};

use zerocopy::{FromBytes, IntoBytes};

use super::{
    Command, EvictionReason, Header, Operation, checksum, checksum_chain, checksum_pieces, views,
};
use crate::constants::{
    GRID_BLOCKS_MAX, HEADER_SIZE, MESSAGE_SIZE_MAX, PROTOCOL_VERSION, REPLICAS_MAX,
};
use crate::stdx::prng::Prng;
use crate::vsr::header::Checksum;
use crate::vsr::header::ClientId;
use crate::vsr::header::ClusterId;
use crate::vsr::header::Op;
use crate::vsr::header::ReplicaIndex;
use crate::vsr::header::View;

const CLUSTER: ClusterId = ClusterId(0xC1A5_7E20_0000_0001);
const CLIENT: ClientId = ClientId(0x0123_4567_89AB_CDEF);
const VIEW: View = View(4);
const LOG_VIEW: View = View(3);
const OP: Op = Op(12);
const OP_MIN: Op = Op(5);
const COMMIT: Op = Op(10);
const CHECKPOINT: Op = Op(8);
const TIMESTAMP: u64 = 1_700_000_000_000_000_000;
const REQUEST: u32 = 7;
const PARENT: Checksum = Checksum(0x9A2E_0001_0000_0000_0000_0000_0000_0001);
const CONTEXT: u128 = 0xC0DE_0001_0000_0000_0000_0000_0000_0001;

/// Every reason `invalid()` and `decode()` can return, as written in header.rs.
/// Why a header of another protocol version is refused (`Header::decode`, `invalid`).
const PROTOCOL_DIFFERS: &str = "protocol version differs (this build speaks version 8)";

const REASONS: [&str; 64] = [
    // decode
    "header: too short",
    "header: checksum",
    // every header
    PROTOCOL_DIFFERS,
    "reserved bytes not zero",
    "size smaller than header",
    "size larger than message_size_max",
    "replica index out of range",
    "operation unknown",
    "command unknown",
    "command reserved",
    // fields a command does not use
    "view must be zero",
    "op must be zero",
    "commit must be zero",
    "timestamp must be zero",
    "client must be zero",
    "checkpoint_op must be zero",
    "op_min must be zero",
    "request read_mode unknown, or set on a write",
    "pong_client status unknown",
    "prepare grid_blocks out of range",
    "prepare_ok grid_blocks out of range",
    "parent must be zero",
    "context must be zero",
    "request must be zero",
    "log_view must be zero",
    "replica must be zero",
    "operation must be zero",
    // bodies
    "body must be empty",
    "checksum_body of an empty body wrong",
    "body must hold at least one header",
    "body must be a whole number of headers",
    // per command
    "client must not be zero",
    "operation not allowed in a request",
    "register must be request 0",
    "register must have no parent",
    "request 0 is reserved for register",
    "prepare operation reserved",
    "reads are never prepared",
    "op 0 is the root prepare",
    "prepare commit must be below its op",
    "prepare timestamp must not be zero",
    "noop prepare must have no client",
    "packed prepare must have no client in its header",
    "packed prepare must have no request checksum",
    "root prepare must have an empty body",
    "root prepare fields must be zero",
    "prepare_ok for the root prepare",
    "prepare_ok operation invalid",
    "reply operation invalid",
    "reply to a write must name its op",
    "reply commit must not be below its op",
    "checkpoint_op must not exceed commit",
    "view change to view 0",
    "start_view_change context must be 0, 1 or 2",
    "log_view must be below the new view",
    "commit must not exceed op",
    "do_view_change op_min (the lowest op it can nack) must exceed op",
    "op_min must not exceed op",
    "eviction reason unknown",
    "body must list at least one block",
    "body must be a whole number of block references",
    "register prepare must have an empty body",
    "block body must not be empty",
    "checkpoint state must not be empty",
];

/// For each reason, a test that produces it (checked by
/// `every_rejection_reason_has_a_test_that_produces_it`).
const REJECTION_TESTS: [(&str, fn()); 64] = [
    ("header: too short", decode_of_input_shorter_than_a_header_fails),
    ("header: checksum", decode_of_a_header_with_a_flipped_byte_fails_the_checksum),
    (PROTOCOL_DIFFERS, header_with_unknown_protocol_version_is_rejected),
    ("reserved bytes not zero", header_with_a_nonzero_reserved_byte_is_rejected),
    ("size smaller than header", header_with_size_below_header_size_is_rejected),
    ("size larger than message_size_max", header_with_size_above_message_size_max_is_rejected),
    ("replica index out of range", header_with_replica_index_out_of_range_is_rejected),
    ("operation unknown", header_with_unknown_operation_is_rejected),
    ("command unknown", header_with_unknown_command_is_rejected),
    ("command reserved", header_with_reserved_command_is_rejected),
    ("view must be zero", ping_client_with_a_view_is_rejected),
    ("op must be zero", ping_with_an_op_is_rejected),
    ("commit must be zero", start_view_change_with_a_commit_is_rejected),
    ("timestamp must be zero", request_with_a_timestamp_is_rejected),
    ("client must be zero", ping_with_a_client_is_rejected),
    ("checkpoint_op must be zero", start_view_change_with_a_checkpoint_op_is_rejected),
    ("op_min must be zero", reply_with_an_op_min_is_rejected),
    ("pong_client status unknown", pong_client_with_an_unknown_status_is_rejected),
    (
        "request read_mode unknown, or set on a write",
        request_with_an_unknown_read_mode_or_one_on_a_write_is_rejected,
    ),
    (
        "prepare grid_blocks out of range",
        prepare_with_no_grid_or_one_beyond_the_largest_is_rejected,
    ),
    ("prepare_ok grid_blocks out of range", prepare_ok_with_no_grid_is_rejected),
    ("parent must be zero", reply_with_a_parent_is_rejected),
    ("context must be zero", ping_client_with_a_context_is_rejected),
    ("request must be zero", commit_with_a_request_number_is_rejected),
    ("log_view must be zero", start_view_with_a_log_view_is_rejected),
    ("replica must be zero", request_with_a_replica_is_rejected),
    ("operation must be zero", ping_with_an_operation_is_rejected),
    ("body must be empty", every_command_without_a_body_rejects_one),
    ("checksum_body of an empty body wrong", empty_body_with_a_wrong_checksum_is_rejected),
    ("body must hold at least one header", headers_without_a_header_in_the_body_is_rejected),
    ("body must be a whole number of headers", body_of_partial_headers_is_rejected),
    ("client must not be zero", request_with_zero_client_is_rejected),
    ("operation not allowed in a request", request_with_a_non_client_operation_is_rejected),
    ("register must be request 0", register_request_with_a_request_number_is_rejected),
    ("register must have no parent", register_request_with_a_parent_is_rejected),
    ("request 0 is reserved for register", request_with_request_number_zero_is_rejected),
    ("prepare operation reserved", prepare_with_reserved_operation_is_rejected),
    ("reads are never prepared", prepare_of_a_read_is_rejected),
    ("op 0 is the root prepare", prepare_at_op_zero_is_rejected),
    ("prepare commit must be below its op", prepare_with_commit_not_below_its_op_is_rejected),
    ("prepare timestamp must not be zero", prepare_with_zero_timestamp_is_rejected),
    ("noop prepare must have no client", noop_prepare_with_a_client_is_rejected),
    (
        "packed prepare must have no client in its header",
        packed_prepare_naming_a_client_is_rejected,
    ),
    ("packed prepare must have no request checksum", packed_prepare_naming_a_client_is_rejected),
    ("root prepare must have an empty body", root_prepare_with_a_body_is_rejected),
    ("root prepare fields must be zero", root_prepare_with_any_field_set_is_rejected),
    ("prepare_ok for the root prepare", prepare_ok_for_op_zero_is_rejected),
    ("prepare_ok operation invalid", prepare_ok_for_an_operation_never_prepared_is_rejected),
    ("reply operation invalid", reply_with_a_non_client_operation_is_rejected),
    ("reply to a write must name its op", reply_to_a_write_at_op_zero_is_rejected),
    ("reply commit must not be below its op", reply_with_commit_below_its_op_is_rejected),
    ("checkpoint_op must not exceed commit", checkpoint_op_above_commit_is_rejected),
    ("view change to view 0", view_change_to_view_zero_is_rejected),
    (
        "start_view_change context must be 0, 1 or 2",
        start_view_change_with_a_context_other_than_a_flag_is_rejected,
    ),
    (
        "log_view must be below the new view",
        do_view_change_with_log_view_not_below_view_is_rejected,
    ),
    ("commit must not exceed op", view_change_with_commit_above_op_is_rejected),
    (
        "do_view_change op_min (the lowest op it can nack) must exceed op",
        do_view_change_with_op_min_not_above_op_is_rejected,
    ),
    ("op_min must not exceed op", op_min_above_op_is_rejected),
    ("eviction reason unknown", eviction_with_an_unknown_reason_is_rejected),
    (
        "body must be a whole number of block references",
        request_blocks_with_partial_refs_is_rejected,
    ),
    ("body must list at least one block", request_blocks_without_a_reference_is_rejected),
    ("register prepare must have an empty body", register_prepare_with_a_body_is_rejected),
    ("block body must not be empty", block_without_a_body_is_rejected),
    ("checkpoint state must not be empty", sync_checkpoint_without_state_is_rejected),
];

thread_local! {
    /// The reasons asserted by `rejects` (and the decode tests) on this thread.
    static ASSERTED: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
}

fn record(reason: &'static str) {
    ASSERTED.with(|asserted| asserted.borrow_mut().push(reason));
}

/// Checks that `header` is valid, then that `mutate` makes it invalid for exactly `reason`, both
/// through `invalid()` and through `decode()` once re-checksummed.
#[track_caller]
fn rejects(header: Header, mutate: impl FnOnce(&mut Header), reason: &'static str) {
    let name = Command::from_u8(header.command).map_or("?", Command::name);
    assert_eq!(header.invalid(), None, "{name}: the starting header must be valid");
    assert!(header.valid_checksum(), "{name}: the starting header must be checksummed");
    let mut mutant = header;
    mutate(&mut mutant);
    assert_ne!(mutant, header, "{name}: the mutation must change the header");
    assert_eq!(mutant.invalid(), Some(reason), "{name}: {mutant:?}");
    mutant.set_checksum();
    assert_eq!(Header::decode(mutant.as_bytes()), Err(reason), "{name}: decode");
    record(reason);
}

/// Sets `size` and both checksums for `body`.
fn seal(mut header: Header, body: Vec<u8>) -> (Header, Vec<u8>) {
    header.size = u32::try_from(HEADER_SIZE + body.len()).unwrap();
    header.set_checksum_body(&body);
    header.set_checksum();
    (header, body)
}

/// A body of `count` headers, as do_view_change, start_view and headers carry.
fn headers_body(count: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for index in 0..count {
        let mut header = valid(Command::Prepare);
        header.op = OP - index as u64;
        header.commit = header.op - 1;
        header.set_checksum();
        body.extend_from_slice(header.as_bytes());
    }
    body
}

/// A valid message of `command` (and its body) that sets every field the command uses, as
/// listed in `used_fields`, to a nonzero value.
fn valid_message(command: Command) -> (Header, Vec<u8>) {
    let mut h = Header::new(command, CLUSTER);
    let body = match command {
        Command::Reserved => panic!("the reserved command has no valid header"),
        Command::Ping | Command::Pong => {
            (h.timestamp, h.checkpoint_op, h.view, h.replica) =
                (TIMESTAMP, CHECKPOINT, VIEW, ReplicaIndex(1));
            (h.commit, h.context) = (COMMIT, CONTEXT);
            vec![]
        }
        Command::PingClient => {
            (h.client, h.timestamp) = (CLIENT, TIMESTAMP);
            vec![]
        }
        Command::PongClient => {
            (h.client, h.timestamp, h.view, h.replica) = (CLIENT, TIMESTAMP, VIEW, ReplicaIndex(1));
            (h.op, h.commit, h.checkpoint_op, h.context) = (OP, COMMIT, CHECKPOINT, 2);
            vec![]
        }
        Command::Request => {
            // A linearizable read, so that every field a request may use is set.
            (h.client, h.request, h.operation) = (CLIENT, REQUEST, Operation::ReadStream as u8);
            (h.view, h.commit, h.parent, h.context) = (VIEW, COMMIT, PARENT, 1);
            b"read_stream body".to_vec()
        }
        Command::Prepare => {
            (h.op, h.commit, h.timestamp, h.view, h.replica) =
                (OP, OP - 1, TIMESTAMP, VIEW, ReplicaIndex(1));
            (h.client, h.request, h.operation) = (CLIENT, REQUEST, Operation::Append as u8);
            (h.parent, h.context, h.op_min) = (PARENT, CONTEXT, OP_MIN);
            b"append: one event".to_vec()
        }
        Command::PrepareOk => {
            (h.op, h.commit, h.timestamp, h.view, h.replica) =
                (OP, COMMIT, TIMESTAMP, VIEW, ReplicaIndex(2));
            (h.client, h.request, h.operation) = (CLIENT, REQUEST, Operation::Append as u8);
            (h.parent, h.context, h.op_min) = (PARENT, CONTEXT, OP_MIN);
            vec![]
        }
        Command::Reply => {
            (h.op, h.commit, h.timestamp, h.view, h.replica) =
                (OP, OP, TIMESTAMP, VIEW, ReplicaIndex(1));
            (h.client, h.request, h.operation) = (CLIENT, REQUEST, Operation::Append as u8);
            h.context = CONTEXT;
            b"appended".to_vec()
        }
        Command::Commit => {
            (h.commit, h.context, h.checkpoint_op) = (COMMIT, CONTEXT, CHECKPOINT);
            (h.timestamp, h.view, h.replica) = (TIMESTAMP, VIEW, ReplicaIndex(1));
            vec![]
        }
        Command::StartViewChange => {
            (h.view, h.replica, h.context) = (VIEW, ReplicaIndex(2), 1);
            vec![]
        }
        Command::DoViewChange => {
            (h.op, h.op_min, h.commit, h.checkpoint_op) = (OP, OP + 1, COMMIT, CHECKPOINT);
            (h.log_view, h.view, h.replica) = (LOG_VIEW, VIEW, ReplicaIndex(2));
            headers_body(2)
        }
        Command::StartView => {
            (h.op, h.commit, h.checkpoint_op) = (OP, COMMIT, CHECKPOINT);
            (h.context, h.view, h.replica) = (CONTEXT, VIEW, ReplicaIndex(1));
            headers_body(2)
        }
        Command::RequestStartView => {
            (h.context, h.view, h.replica) = (CONTEXT, VIEW, ReplicaIndex(2));
            vec![]
        }
        Command::RequestHeaders => {
            (h.op_min, h.op, h.view, h.replica) = (OP_MIN, OP, VIEW, ReplicaIndex(2));
            vec![]
        }
        Command::RequestPrepare | Command::NackPrepare => {
            (h.op, h.context, h.view, h.replica) = (OP, CONTEXT, VIEW, ReplicaIndex(2));
            vec![]
        }
        Command::Headers => {
            (h.op_min, h.op, h.view, h.replica) = (OP_MIN, OP, VIEW, ReplicaIndex(1));
            headers_body(1)
        }
        Command::RequestReply => {
            (h.op, h.client, h.context, h.view, h.replica) =
                (OP, CLIENT, CONTEXT, VIEW, ReplicaIndex(2));
            vec![]
        }
        Command::Eviction => {
            (h.client, h.view, h.replica) = (CLIENT, VIEW, ReplicaIndex(1));
            h.context = u128::from(EvictionReason::SessionEvicted as u32);
            vec![]
        }
        Command::Busy => {
            (h.client, h.request, h.operation) = (CLIENT, REQUEST, Operation::Append as u8);
            (h.context, h.view, h.replica) = (CONTEXT, VIEW, ReplicaIndex(1));
            vec![]
        }
        Command::RequestBlocks => {
            (h.checkpoint_op, h.view, h.replica) = (CHECKPOINT, VIEW, ReplicaIndex(2));
            vec![0xB1; 2 * 16]
        }
        Command::Block => {
            (h.op, h.context, h.checkpoint_op, h.replica) =
                (Op(4096), CONTEXT, CHECKPOINT, ReplicaIndex(1));
            h.commit = COMMIT;
            vec![0xB7; 512]
        }
        Command::RequestSyncCheckpoint => {
            (h.checkpoint_op, h.view, h.replica) = (CHECKPOINT, VIEW, ReplicaIndex(2));
            vec![]
        }
        Command::SyncCheckpoint => {
            (h.checkpoint_op, h.commit, h.context) = (CHECKPOINT, COMMIT, CONTEXT);
            (h.view, h.replica) = (VIEW, ReplicaIndex(1));
            vec![0x5C; 64]
        }
    };
    seal(h, body)
}

fn valid(command: Command) -> Header {
    valid_message(command).0
}

/// A request that opens a session: request 0, no parent, empty body.
fn register_request() -> Header {
    let mut h = valid(Command::Request);
    (h.operation, h.request, h.parent) = (Operation::Register as u8, 0, Checksum::ZERO);
    h.context = 0;
    seal(h, vec![]).0
}

/// The prepare of a register request.
fn register_prepare() -> Header {
    let mut h = valid(Command::Prepare);
    (h.operation, h.request) = (Operation::Register as u8, 0);
    seal(h, vec![]).0
}

/// A prepare a new primary fills its pipeline with: no client, request or context.
fn noop_prepare() -> Header {
    let mut h = valid(Command::Prepare);
    (h.operation, h.client, h.request, h.context) = (Operation::Noop as u8, ClientId::NONE, 0, 0);
    seal(h, vec![]).0
}

/// A reply to a read, which names no op.
fn read_reply() -> Header {
    let mut h = valid(Command::Reply);
    (h.operation, h.op) = (Operation::ReadStream as u8, Op(0));
    seal(h, b"events".to_vec()).0
}

/// The commands that can be valid (all but `reserved`).
fn commands() -> Vec<Command> {
    Command::ALL.into_iter().filter(|command| *command != Command::Reserved).collect()
}

/// The generic header fields that `invalid()` requires to be zero when a command does not use
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    View,
    Op,
    Commit,
    Timestamp,
    Client,
    CheckpointOp,
    OpMin,
    Parent,
    Context,
    Request,
    LogView,
    Replica,
    Operation,
}

impl Field {
    const ALL: [Field; 13] = [
        Field::View,
        Field::Op,
        Field::Commit,
        Field::Timestamp,
        Field::Client,
        Field::CheckpointOp,
        Field::OpMin,
        Field::Parent,
        Field::Context,
        Field::Request,
        Field::LogView,
        Field::Replica,
        Field::Operation,
    ];

    fn zero_reason(self) -> &'static str {
        match self {
            Field::View => "view must be zero",
            Field::Op => "op must be zero",
            Field::Commit => "commit must be zero",
            Field::Timestamp => "timestamp must be zero",
            Field::Client => "client must be zero",
            Field::CheckpointOp => "checkpoint_op must be zero",
            Field::OpMin => "op_min must be zero",
            Field::Parent => "parent must be zero",
            Field::Context => "context must be zero",
            Field::Request => "request must be zero",
            Field::LogView => "log_view must be zero",
            Field::Replica => "replica must be zero",
            Field::Operation => "operation must be zero",
        }
    }

    fn get(self, h: &Header) -> u128 {
        match self {
            Field::View => u128::from(h.view.get()),
            Field::Op => u128::from(h.op.get()),
            Field::Commit => u128::from(h.commit.get()),
            Field::Timestamp => u128::from(h.timestamp),
            Field::Client => u128::from(h.client.get()),
            Field::CheckpointOp => u128::from(h.checkpoint_op.get()),
            Field::OpMin => u128::from(h.op_min.get()),
            Field::Parent => h.parent.get(),
            Field::Context => h.context,
            Field::Request => u128::from(h.request),
            Field::LogView => u128::from(h.log_view.get()),
            Field::Replica => u128::from(h.replica.get()),
            Field::Operation => u128::from(h.operation),
        }
    }

    /// Sets the field to `value`, truncated to the field's width.
    fn set(self, h: &mut Header, value: u64) {
        match self {
            Field::View => h.view = View(value as u32),
            Field::Op => h.op = Op(value),
            Field::Commit => h.commit = Op(value),
            Field::Timestamp => h.timestamp = value,
            Field::Client => h.client = ClientId(value),
            Field::CheckpointOp => h.checkpoint_op = Op(value),
            Field::OpMin => h.op_min = Op(value),
            Field::Parent => h.parent = Checksum(u128::from(value)),
            Field::Context => h.context = u128::from(value),
            Field::Request => h.request = value as u32,
            Field::LogView => h.log_view = View(value as u32),
            Field::Replica => h.replica = ReplicaIndex(value as u8),
            Field::Operation => h.operation = value as u8,
        }
    }
}

/// The fields each command uses, from the table on `Command` in header.rs.
fn used_fields(command: Command) -> &'static [Field] {
    use Field as F;
    match command {
        Command::Reserved => &[],
        Command::Request => {
            &[F::Client, F::Request, F::Operation, F::View, F::Commit, F::Parent, F::Context]
        }
        // The table on `Command` omits `replica` for prepare, but `invalid()` accepts it (it is
        // the primary's index; the root prepare requires it to be zero).
        Command::Prepare | Command::PrepareOk => &[
            F::Op,
            F::OpMin,
            F::Commit,
            F::Timestamp,
            F::Client,
            F::Request,
            F::Operation,
            F::Parent,
            F::Context,
            F::View,
            F::Replica,
        ],
        Command::Reply => &[
            F::Op,
            F::Commit,
            F::Timestamp,
            F::Client,
            F::Request,
            F::Operation,
            F::Context,
            F::View,
            F::Replica,
        ],
        Command::Commit => {
            &[F::Commit, F::Context, F::CheckpointOp, F::Timestamp, F::View, F::Replica]
        }
        Command::Ping | Command::Pong => {
            &[F::Timestamp, F::Commit, F::CheckpointOp, F::Context, F::View, F::Replica]
        }
        Command::PingClient => &[F::Client, F::Timestamp],
        Command::PongClient => &[
            F::Client,
            F::Timestamp,
            F::View,
            F::Replica,
            F::Op,
            F::Commit,
            F::CheckpointOp,
            F::Context,
        ],
        Command::StartViewChange => &[F::View, F::Replica, F::Context],
        Command::DoViewChange => {
            &[F::Op, F::OpMin, F::Commit, F::CheckpointOp, F::LogView, F::View, F::Replica]
        }
        Command::StartView => &[F::Op, F::Commit, F::CheckpointOp, F::Context, F::View, F::Replica],
        Command::RequestStartView => &[F::Context, F::View, F::Replica],
        Command::RequestHeaders | Command::Headers => &[F::OpMin, F::Op, F::View, F::Replica],
        Command::RequestPrepare | Command::NackPrepare => &[F::Op, F::Context, F::View, F::Replica],
        Command::RequestReply => &[F::Op, F::Client, F::Context, F::View, F::Replica],
        Command::Eviction => &[F::Client, F::Context, F::View, F::Replica],
        Command::Busy => &[F::Client, F::Request, F::Operation, F::Context, F::View, F::Replica],
        Command::RequestBlocks => &[F::CheckpointOp, F::View, F::Replica],
        Command::Block => &[F::Op, F::Context, F::CheckpointOp, F::Commit, F::Replica],
        Command::RequestSyncCheckpoint => &[F::CheckpointOp, F::View, F::Replica],
        Command::SyncCheckpoint => &[F::CheckpointOp, F::Commit, F::Context, F::View, F::Replica],
    }
}

/// The commands whose body must be empty.
const BODILESS: [Command; 15] = [
    Command::Ping,
    Command::Pong,
    Command::PingClient,
    Command::PongClient,
    Command::PrepareOk,
    Command::Commit,
    Command::StartViewChange,
    Command::RequestStartView,
    Command::RequestHeaders,
    Command::RequestPrepare,
    Command::NackPrepare,
    Command::RequestReply,
    Command::Eviction,
    Command::RequestSyncCheckpoint,
    Command::Busy,
];

/// The commands whose body is a list of headers.
const CARRYING_HEADERS: [Command; 3] =
    [Command::DoViewChange, Command::StartView, Command::Headers];

fn size_with_body(body_size: usize) -> u32 {
    u32::try_from(HEADER_SIZE + body_size).unwrap()
}

// ---- Valid headers ----

#[test]
fn every_command_has_a_valid_header_that_round_trips_through_decode() {
    // Goal: each of the 24 commands has a valid, checksummed header that decode returns as is.
    let commands = commands();
    assert_eq!(commands.len(), 24);
    for command in commands {
        let name = command.name();
        let (header, body) = valid_message(command);
        assert_eq!(header.invalid(), None, "{name}");
        assert_eq!(header.command(), Some(command), "{name}");
        assert_eq!(header.cluster, CLUSTER, "{name}");
        assert_eq!(header.protocol, PROTOCOL_VERSION, "{name}");
        assert!(header.valid_checksum(), "{name}");
        assert!(header.valid_checksum_body(&body), "{name}");
        assert_eq!(header.body_size(), body.len(), "{name}");
        assert_eq!(Header::decode(header.as_bytes()), Ok(header), "{name}");
        let mut message = header.as_bytes().to_vec();
        message.extend_from_slice(&body);
        assert_eq!(Header::decode(&message), Ok(header), "{name}: followed by its body");
    }
}

#[test]
fn valid_headers_set_every_field_their_command_uses() {
    // Goal: the rejection tests start from headers that exercise every used field, so a field
    // that a command wrongly requires to be zero fails here.
    for command in commands() {
        let header = valid(command);
        for field in used_fields(command) {
            assert_ne!(field.get(&header), 0, "{}: {field:?}", command.name());
        }
    }
}

#[test]
fn special_forms_of_request_prepare_and_reply_are_valid() {
    // Goal: register requests and prepares, noop prepares, read replies and the root prepare are
    // valid and round-trip through decode.
    let root = Header::root_prepare(CLUSTER);
    assert_eq!(root.operation(), Some(Operation::Root));
    assert_eq!(root.op, Op(0));
    let headers = [register_request(), register_prepare(), noop_prepare(), read_reply(), root];
    for header in headers {
        assert_eq!(header.invalid(), None, "{header:?}");
        assert!(header.valid_checksum());
        assert_eq!(Header::decode(header.as_bytes()), Ok(header));
    }
}

#[test]
fn values_at_each_boundary_are_accepted() {
    // Goal: every ordering check is strict exactly where documented (no off-by-one rejects).
    let mut accepted: Vec<(&str, Header)> = Vec::new();
    let mut case = |name, command, mutate: fn(&mut Header)| {
        let mut header = valid(command);
        mutate(&mut header);
        accepted.push((name, header));
    };
    case("block of message_size_max", Command::Block, |h| h.size = MESSAGE_SIZE_MAX as u32);
    case("last replica index", Command::Ping, |h| {
        h.replica = ReplicaIndex((REPLICAS_MAX - 1) as u8)
    });
    case("prepare commit one below op", Command::Prepare, |h| h.commit = h.op - 1);
    case("prepare commit zero", Command::Prepare, |h| h.commit = Op(0));
    case("reply commit above op", Command::Reply, |h| h.commit = h.op + 1);
    case("commit checkpoint at commit", Command::Commit, |h| h.checkpoint_op = h.commit);
    case("dvc log_view one below view", Command::DoViewChange, |h| h.log_view = h.view - 1);
    case("dvc commit at op", Command::DoViewChange, |h| h.commit = h.op);
    case("dvc of a faulty WAL", Command::DoViewChange, |h| h.op_min = h.op + 100);
    case("sv commit at op", Command::StartView, |h| h.commit = h.op);
    case("sv checkpoint at commit", Command::StartView, |h| h.checkpoint_op = h.commit);
    case("sv in view 0", Command::StartView, |h| h.view = View(0));
    case("request_headers op_min at op", Command::RequestHeaders, |h| h.op_min = h.op);
    case("headers op_min at op", Command::Headers, |h| h.op_min = h.op);
    case("sync checkpoint at commit", Command::SyncCheckpoint, |h| h.checkpoint_op = h.commit);
    case("request in view 0", Command::Request, |h| h.view = View(0));
    case("request without parent", Command::Request, |h| h.parent = Checksum(0));
    case("read request", Command::Request, |h| h.operation = Operation::ReadLog as u8);
    case("no_session eviction", Command::Eviction, |h| h.context = 1);
    case("invalid_request eviction", Command::Eviction, |h| h.context = 3);
    case("one block reference", Command::RequestBlocks, |h| h.size = size_with_body(16));
    case("one-byte block", Command::Block, |h| h.size = size_with_body(1));
    case("one-byte checkpoint state", Command::SyncCheckpoint, |h| h.size = size_with_body(1));
    case("noop prepare_ok", Command::PrepareOk, |h| {
        h.operation = Operation::Noop as u8;
        h.client = ClientId(0);
        h.request = 0;
    });
    for (name, header) in accepted {
        assert_eq!(header.invalid(), None, "{name}");
    }
}

// ---- Checks on every header ----

#[test]
fn header_with_unknown_protocol_version_is_rejected() {
    // Goal: a header of another protocol version is refused before any field is read.
    for protocol in [0, PROTOCOL_VERSION + 1, u16::MAX] {
        rejects(valid(Command::Ping), |h| h.protocol = protocol, PROTOCOL_DIFFERS);
    }
}

#[test]
fn header_with_a_nonzero_reserved_byte_is_rejected() {
    // Goal: each of the 35 reserved bytes must be zero, so that they can be given a meaning
    // later.
    for index in 0..35 {
        let reason = "reserved bytes not zero";
        rejects(valid(Command::Prepare), |h| h.reserved[index] = 1, reason);
    }
}

#[test]
fn header_with_size_below_header_size_is_rejected() {
    // Goal: a size that does not even cover the header is refused (body_size would underflow).
    for size in [0, 1, HEADER_SIZE as u32 - 1] {
        rejects(valid(Command::Ping), |h| h.size = size, "size smaller than header");
    }
}

#[test]
fn header_with_size_above_message_size_max_is_rejected() {
    // Goal: no message is larger than message_size_max, whatever its command.
    for size in [MESSAGE_SIZE_MAX as u32 + 1, u32::MAX] {
        let reason = "size larger than message_size_max";
        rejects(valid(Command::Block), |h| h.size = size, reason);
        rejects(valid(Command::Request), |h| h.size = size, reason);
    }
}

#[test]
fn header_with_replica_index_out_of_range_is_rejected() {
    // Goal: a replica index is below REPLICAS_MAX for every command.
    for replica in [REPLICAS_MAX as u8, u8::MAX] {
        rejects(
            valid(Command::Ping),
            |h| h.replica = ReplicaIndex(replica),
            "replica index out of range",
        );
        let reason = "replica index out of range";
        rejects(valid(Command::PingClient), |h| h.replica = ReplicaIndex(replica), reason);
    }
}

#[test]
fn header_with_unknown_operation_is_rejected() {
    // Goal: operations between the protocol's and the event store's ranges, and above them,
    // are refused.
    for operation in [4, 127, 135, u8::MAX] {
        rejects(valid(Command::Request), |h| h.operation = operation, "operation unknown");
    }
}

#[test]
fn header_with_unknown_command_is_rejected() {
    // Goal: command bytes past the last command are refused.
    for command in [Command::ALL.len() as u8, u8::MAX] {
        rejects(valid(Command::Ping), |h| h.command = command, "command unknown");
    }
}

#[test]
fn header_with_reserved_command_is_rejected() {
    // Goal: command 0 (a zeroed header's command) is never a message.
    rejects(valid(Command::Ping), |h| h.command = Command::Reserved as u8, "command reserved");
}

// ---- Fields a command does not use must be zero ----

#[test]
fn ping_client_with_a_view_is_rejected() {
    // Goal: a client's ping carries no view.
    rejects(valid(Command::PingClient), |h| h.view = VIEW, "view must be zero");
}

#[test]
fn ping_with_an_op_is_rejected() {
    // Goal: a ping carries no op.
    rejects(valid(Command::Ping), |h| h.op = OP, "op must be zero");
}

#[test]
fn start_view_change_with_a_commit_is_rejected() {
    // Goal: a start_view_change carries no commit.
    rejects(valid(Command::StartViewChange), |h| h.commit = COMMIT, "commit must be zero");
}

#[test]
fn request_with_a_timestamp_is_rejected() {
    // Goal: a request carries no timestamp; the primary assigns it at prepare.
    rejects(valid(Command::Request), |h| h.timestamp = TIMESTAMP, "timestamp must be zero");
}

#[test]
fn ping_with_a_client_is_rejected() {
    // Goal: a replica's ping names no client.
    rejects(valid(Command::Ping), |h| h.client = CLIENT, "client must be zero");
}

#[test]
fn start_view_change_with_a_context_other_than_a_flag_is_rejected() {
    // Goal: a start_view_change's context only says whether its sender entered the view, and
    // whether it is rejoining.
    let reason = "start_view_change context must be 0, 1 or 2";
    rejects(valid(Command::StartViewChange), |h| h.context = 3, reason);
}

#[test]
fn start_view_change_with_a_checkpoint_op_is_rejected() {
    // Goal: a start_view_change carries only view and replica.
    let reason = "checkpoint_op must be zero";
    rejects(valid(Command::StartViewChange), |h| h.checkpoint_op = CHECKPOINT, reason);
}

#[test]
fn reply_with_an_op_min_is_rejected() {
    // Goal: a reply carries no op_min (prepares use it for the grid size).
    rejects(valid(Command::Reply), |h| h.op_min = OP_MIN, "op_min must be zero");
}

#[test]
fn prepare_with_no_grid_or_one_beyond_the_largest_is_rejected() {
    // Goal: every prepare but the root names the cluster's grid, 1 to `GRID_BLOCKS_MAX` blocks.
    let reason = "prepare grid_blocks out of range";
    rejects(valid(Command::Prepare), |h| h.op_min = Op(0), reason);
    rejects(valid(Command::Prepare), |h| h.op_min = Op(GRID_BLOCKS_MAX + 1), reason);
}

#[test]
fn prepare_ok_with_no_grid_is_rejected() {
    // Goal: a prepare_ok announces its sender's grid, which is never empty.
    let reason = "prepare_ok grid_blocks out of range";
    rejects(valid(Command::PrepareOk), |h| h.op_min = Op(0), reason);
}

#[test]
fn reply_with_a_parent_is_rejected() {
    // Goal: a reply carries no parent checksum.
    rejects(valid(Command::Reply), |h| h.parent = PARENT, "parent must be zero");
}

#[test]
fn ping_client_with_a_context_is_rejected() {
    // Goal: a client's ping carries no context.
    rejects(valid(Command::PingClient), |h| h.context = CONTEXT, "context must be zero");
}

#[test]
fn commit_with_a_request_number_is_rejected() {
    // Goal: a commit message carries no request number.
    rejects(valid(Command::Commit), |h| h.request = REQUEST, "request must be zero");
}

#[test]
fn start_view_with_a_log_view_is_rejected() {
    // Goal: log_view belongs to do_view_change only.
    rejects(valid(Command::StartView), |h| h.log_view = LOG_VIEW, "log_view must be zero");
}

#[test]
fn request_with_a_replica_is_rejected() {
    // Goal: a client's request names no replica.
    rejects(valid(Command::Request), |h| h.replica = ReplicaIndex(1), "replica must be zero");
}

#[test]
fn ping_with_an_operation_is_rejected() {
    // Goal: a known operation on a command that carries none is still refused.
    let operation = Operation::Append as u8;
    rejects(valid(Command::Ping), |h| h.operation = operation, "operation must be zero");
}

#[test]
fn every_field_a_command_does_not_use_must_be_zero() {
    // Goal: for every command and every field it does not use (per the table on `Command`),
    // a nonzero value is refused with that field's reason.
    let mut count = 0;
    for command in commands() {
        let used = used_fields(command);
        for field in Field::ALL.into_iter().filter(|field| !used.contains(field)) {
            rejects(valid(command), |h| field.set(h, 1), field.zero_reason());
            count += 1;
        }
    }
    assert!(count > 13 * 10, "{count} cases");
}

// ---- Bodies ----

#[test]
fn every_command_without_a_body_rejects_one() {
    // Goal: each command documented with no body refuses any body size, as does a register
    // request.
    let mut headers: Vec<Header> = BODILESS.into_iter().map(valid).collect();
    headers.push(register_request());
    for header in headers {
        for body_size in [1, 16, HEADER_SIZE] {
            let size = size_with_body(body_size);
            rejects(header, |h| h.size = size, "body must be empty");
        }
    }
}

#[test]
fn empty_body_with_a_wrong_checksum_is_rejected() {
    // Goal: a command without a body must carry the checksum of the empty body.
    let mut headers: Vec<Header> = BODILESS.into_iter().map(valid).collect();
    headers.push(register_request());
    for header in headers {
        let wrong = checksum(&[]) ^ 1;
        rejects(header, |h| h.checksum_body = wrong, "checksum_body of an empty body wrong");
    }
}

#[test]
fn headers_without_a_header_in_the_body_is_rejected() {
    // Goal: do_view_change, start_view and headers carry at least one header.
    for command in CARRYING_HEADERS {
        let size = size_with_body(0);
        rejects(valid(command), |h| h.size = size, "body must hold at least one header");
    }
}

#[test]
fn body_of_partial_headers_is_rejected() {
    // Goal: a body of headers is a whole number of 256-byte headers.
    for command in CARRYING_HEADERS {
        for body_size in [1, HEADER_SIZE - 1, HEADER_SIZE + 1, 3 * HEADER_SIZE - 64] {
            let size = size_with_body(body_size);
            let reason = "body must be a whole number of headers";
            rejects(valid(command), |h| h.size = size, reason);
        }
    }
}

// ---- Clients ----

#[test]
fn request_with_zero_client_is_rejected() {
    // Goal: a request names the client session it belongs to.
    rejects(valid(Command::Request), |h| h.client = ClientId(0), "client must not be zero");
}

#[test]
fn every_command_naming_a_client_rejects_zero() {
    // Goal: no command that carries a client accepts client 0 (except a noop prepare, which
    // has none).
    let commands = [
        Command::PingClient,
        Command::PongClient,
        Command::Request,
        Command::Prepare,
        Command::Reply,
        Command::RequestReply,
        Command::Eviction,
        Command::Busy,
    ];
    let mut headers: Vec<Header> = commands.into_iter().map(valid).collect();
    headers.extend([register_request(), register_prepare(), read_reply()]);
    for header in headers {
        rejects(header, |h| h.client = ClientId(0), "client must not be zero");
    }
}

// ---- Requests ----

#[test]
fn request_with_a_non_client_operation_is_rejected() {
    // Goal: clients cannot ask for reserved, root, noop or packed operations.
    for operation in
        [Operation::Reserved, Operation::Root, Operation::Noop, Operation::AppendPacked]
    {
        let operation = operation as u8;
        let reason = "operation not allowed in a request";
        rejects(valid(Command::Request), |h| h.operation = operation, reason);
    }
}

#[test]
fn register_request_with_a_request_number_is_rejected() {
    // Goal: a session is opened by request 0.
    rejects(register_request(), |h| h.request = 1, "register must be request 0");
}

#[test]
fn register_request_with_a_parent_is_rejected() {
    // Goal: the first request of a session follows no reply.
    rejects(register_request(), |h| h.parent = PARENT, "register must have no parent");
}

#[test]
fn pong_client_with_an_unknown_status_is_rejected() {
    // Goal: a pong_client's status is a status code and two flags, below 1024.
    let reason = "pong_client status unknown";
    rejects(valid(Command::PongClient), |h| h.context = 1024, reason);
}

#[test]
fn request_with_an_unknown_read_mode_or_one_on_a_write_is_rejected() {
    // Goal: read_mode is 0 or 1 (linearizable) on a read, and 0 on a write or a register.
    let reason = "request read_mode unknown, or set on a write";
    rejects(valid(Command::Request), |h| h.context = 2, reason);
    rejects(valid(Command::Request), |h| h.operation = Operation::Append as u8, reason);
    rejects(register_request(), |h| h.context = 1, reason);
}

#[test]
fn request_with_request_number_zero_is_rejected() {
    // Goal: request 0 is the register; any other operation needs a later number.
    rejects(valid(Command::Request), |h| h.request = 0, "request 0 is reserved for register");
    let reason = "request 0 is reserved for register";
    let mut read_request = valid(Command::Request);
    read_request.operation = Operation::StreamInfo as u8;
    read_request.set_checksum();
    rejects(read_request, |h| h.request = 0, reason);
}

// ---- Prepares ----

#[test]
fn prepare_with_reserved_operation_is_rejected() {
    // Goal: a prepare always names its operation.
    let reason = "prepare operation reserved";
    rejects(valid(Command::Prepare), |h| h.operation = Operation::Reserved as u8, reason);
}

#[test]
fn prepare_of_a_read_is_rejected() {
    // Goal: reads are served from committed state and never enter the log.
    for operation in [Operation::ReadStream, Operation::ReadLog, Operation::StreamInfo] {
        let operation = operation as u8;
        let reason = "reads are never prepared";
        rejects(valid(Command::Prepare), |h| h.operation = operation, reason);
    }
}

#[test]
fn prepare_at_op_zero_is_rejected() {
    // Goal: op 0 holds only the root prepare, for writes, registers and noops alike.
    for header in [valid(Command::Prepare), register_prepare(), noop_prepare()] {
        rejects(header, |h| h.op = Op(0), "op 0 is the root prepare");
    }
}

#[test]
fn prepare_with_commit_not_below_its_op_is_rejected() {
    // Goal: a prepare cannot be committed before it is prepared.
    for header in [valid(Command::Prepare), register_prepare(), noop_prepare()] {
        for delta in [0, 1] {
            let reason = "prepare commit must be below its op";
            rejects(header, |h| h.commit = h.op + delta, reason);
        }
    }
}

#[test]
fn prepare_with_zero_timestamp_is_rejected() {
    // Goal: every prepare (write, register or noop) carries the primary's timestamp.
    for header in [valid(Command::Prepare), register_prepare(), noop_prepare()] {
        rejects(header, |h| h.timestamp = 0, "prepare timestamp must not be zero");
    }
}

#[test]
fn prepare_ok_with_zero_timestamp_is_rejected() {
    // Goal: a prepare_ok echoes its prepare's timestamp, which is never zero.
    let reason = "prepare timestamp must not be zero";
    rejects(valid(Command::PrepareOk), |h| h.timestamp = 0, reason);
}

#[test]
fn noop_prepare_with_a_client_is_rejected() {
    // Goal: a noop belongs to no client: no client, request number or request checksum.
    let reason = "noop prepare must have no client";
    rejects(noop_prepare(), |h| h.client = CLIENT, reason);
    rejects(noop_prepare(), |h| h.request = REQUEST, reason);
    rejects(noop_prepare(), |h| h.context = CONTEXT, reason);
}

#[test]
fn packed_prepare_naming_a_client_is_rejected() {
    // Goal: a packed prepare's clients are in its body; its header names none.
    let mut packed = noop_prepare();
    packed.operation = Operation::AppendPacked as u8;
    let packed = seal(packed, vec![]).0;
    assert_eq!(packed.invalid(), None);
    let reason = "packed prepare must have no client in its header";
    rejects(packed, |h| h.client = CLIENT, reason);
    rejects(packed, |h| h.request = REQUEST, reason);
    rejects(packed, |h| h.context = CONTEXT, "packed prepare must have no request checksum");
}

#[test]
fn register_prepare_with_a_request_number_is_rejected() {
    // Goal: a register stays request 0 once prepared.
    rejects(register_prepare(), |h| h.request = 1, "register must be request 0");
}

#[test]
fn prepare_with_request_number_zero_is_rejected() {
    // Goal: a prepared write carries the request number of its request.
    let reason = "request 0 is reserved for register";
    rejects(valid(Command::Prepare), |h| h.request = 0, reason);
}

#[test]
fn root_prepare_with_a_body_is_rejected() {
    // Goal: the root prepare is identical on every replica: no body, by size or by checksum.
    let reason = "root prepare must have an empty body";
    rejects(Header::root_prepare(CLUSTER), |h| h.size = size_with_body(1), reason);
    rejects(Header::root_prepare(CLUSTER), |h| h.size = size_with_body(HEADER_SIZE), reason);
    rejects(Header::root_prepare(CLUSTER), |h| h.checksum_body ^= 1, reason);
}

#[test]
fn root_prepare_with_any_field_set_is_rejected() {
    // Goal: every field a prepare uses, bar the operation, is zero in the root prepare.
    let prepare_fields = used_fields(Command::Prepare).iter();
    for field in prepare_fields.filter(|field| **field != Field::Operation) {
        let reason = "root prepare fields must be zero";
        rejects(Header::root_prepare(CLUSTER), |h| field.set(h, 1), reason);
    }
}

// ---- Prepare_oks ----

#[test]
fn prepare_ok_for_op_zero_is_rejected() {
    // Goal: the root prepare is never acknowledged.
    rejects(valid(Command::PrepareOk), |h| h.op = Op(0), "prepare_ok for the root prepare");
}

#[test]
fn prepare_ok_for_an_operation_never_prepared_is_rejected() {
    // Goal: a prepare_ok names an operation a prepare may carry.
    let operations = [
        Operation::Reserved,
        Operation::Root,
        Operation::ReadStream,
        Operation::ReadLog,
        Operation::StreamInfo,
    ];
    for operation in operations {
        let operation = operation as u8;
        let reason = "prepare_ok operation invalid";
        rejects(valid(Command::PrepareOk), |h| h.operation = operation, reason);
    }
}

// ---- Replies ----

#[test]
fn reply_with_a_non_client_operation_is_rejected() {
    // Goal: a reply answers an operation a client may request.
    for operation in [Operation::Reserved, Operation::Root, Operation::Noop] {
        let operation = operation as u8;
        rejects(valid(Command::Reply), |h| h.operation = operation, "reply operation invalid");
    }
}

#[test]
fn reply_to_a_write_at_op_zero_is_rejected() {
    // Goal: a reply to a write (or a register) names the op it was committed at.
    rejects(valid(Command::Reply), |h| h.op = Op(0), "reply to a write must name its op");
    let mut register_reply = valid(Command::Reply);
    (register_reply.operation, register_reply.request) = (Operation::Register as u8, 0);
    register_reply.set_checksum();
    rejects(register_reply, |h| h.op = Op(0), "reply to a write must name its op");
}

#[test]
fn reply_with_commit_below_its_op_is_rejected() {
    // Goal: a write is replied to only once committed.
    let reason = "reply commit must not be below its op";
    rejects(valid(Command::Reply), |h| h.commit = h.op - 1, reason);
}

// ---- View change, checkpoints, repair ----

#[test]
fn checkpoint_op_above_commit_is_rejected() {
    // Goal: no replica checkpoints past what it committed, in any message that carries both.
    let commands =
        [Command::Commit, Command::DoViewChange, Command::StartView, Command::SyncCheckpoint];
    for command in commands {
        let reason = "checkpoint_op must not exceed commit";
        rejects(valid(command), |h| h.checkpoint_op = h.commit + 1, reason);
    }
}

#[test]
fn view_change_to_view_zero_is_rejected() {
    // Goal: view 0 is where a cluster starts; no view change leads to it.
    for command in [Command::StartViewChange, Command::DoViewChange] {
        rejects(valid(command), |h| h.view = View(0), "view change to view 0");
    }
}

#[test]
fn do_view_change_with_log_view_not_below_view_is_rejected() {
    // Goal: a do_view_change carries a log from an earlier view than the one it starts.
    for delta in [0, 1] {
        let reason = "log_view must be below the new view";
        rejects(valid(Command::DoViewChange), |h| h.log_view = h.view + delta, reason);
    }
}

#[test]
fn view_change_with_commit_above_op_is_rejected() {
    // Goal: a head op is never below the commit it carries.
    for command in [Command::DoViewChange, Command::StartView] {
        rejects(valid(command), |h| h.commit = h.op + 1, "commit must not exceed op");
    }
}

#[test]
fn do_view_change_with_op_min_not_above_op_is_rejected() {
    // Goal: a do_view_change can deny holding only ops above its log's head.
    for op_min in [Op(0), OP - 1, OP] {
        rejects(
            valid(Command::DoViewChange),
            |h| h.op_min = op_min,
            "do_view_change op_min (the lowest op it can nack) must exceed op",
        );
    }
}

#[test]
fn op_min_above_op_is_rejected() {
    // Goal: a range of headers, asked for or sent, is not empty or reversed.
    for command in [Command::RequestHeaders, Command::Headers] {
        rejects(valid(command), |h| h.op_min = h.op + 1, "op_min must not exceed op");
    }
}

#[test]
fn eviction_with_an_unknown_reason_is_rejected() {
    // Goal: an eviction carries one of the known reasons in its context.
    for context in [0, EvictionReason::InvalidRequest as u128 + 1, u128::from(u32::MAX), u128::MAX]
    {
        rejects(valid(Command::Eviction), |h| h.context = context, "eviction reason unknown");
    }
}

#[test]
fn request_blocks_with_partial_refs_is_rejected() {
    // Goal: request_blocks carries at least one 16-byte block reference, and whole ones.
    for body_size in [1, 15, 17, 24] {
        let size = size_with_body(body_size);
        let reason = "body must be a whole number of block references";
        rejects(valid(Command::RequestBlocks), |h| h.size = size, reason);
    }
}

#[test]
fn request_blocks_without_a_reference_is_rejected() {
    // Goal: a request for blocks names at least one block.
    let size = size_with_body(0);
    rejects(valid(Command::RequestBlocks), |h| h.size = size, "body must list at least one block");
}

#[test]
fn register_prepare_with_a_body_is_rejected() {
    // Goal: a register prepare carries nothing, like the register request it came from.
    let register = |h: &mut Header| {
        h.operation = Operation::Register as u8;
        h.request = 0;
        h.size = size_with_body(128);
    };
    rejects(valid(Command::Prepare), register, "register prepare must have an empty body");
}

#[test]
fn block_without_a_body_is_rejected() {
    // Goal: a block message carries the block.
    let size = size_with_body(0);
    rejects(valid(Command::Block), |h| h.size = size, "block body must not be empty");
}

#[test]
fn sync_checkpoint_without_state_is_rejected() {
    // Goal: a sync_checkpoint carries the checkpoint state.
    let size = size_with_body(0);
    let reason = "checkpoint state must not be empty";
    rejects(valid(Command::SyncCheckpoint), |h| h.size = size, reason);
}

// ---- Decode ----

#[test]
fn decode_of_input_shorter_than_a_header_fails() {
    // Goal: decode refuses fewer than 256 bytes, and never reads past them.
    let header = valid(Command::Ping);
    for length in [0, 1, 4, 64, HEADER_SIZE - 1] {
        let reason = "header: too short";
        assert_eq!(Header::decode(&header.as_bytes()[..length]), Err(reason), "{length}");
        record(reason);
    }
    assert_eq!(Header::decode(header.as_bytes()), Ok(header));
}

#[test]
fn decode_of_a_header_with_a_flipped_byte_fails_the_checksum() {
    // Goal: a change to any byte, in the checksum or in what it covers, fails decode first.
    for command in commands() {
        let header = valid(command);
        for index in [0, 4, 64, 127] {
            for flip in [0x01, 0x80, 0xFF] {
                let mut bytes = header.as_bytes().to_vec();
                bytes[index] ^= flip;
                let reason = "header: checksum";
                assert_eq!(Header::decode(&bytes), Err(reason), "{}: {index}", command.name());
                record(reason);
            }
        }
        for index in 0..HEADER_SIZE {
            let mut bytes = header.as_bytes().to_vec();
            bytes[index] ^= 0x10;
            // A flip in `protocol` names another version first.
            let reason = match index {
                88 | 89 => PROTOCOL_DIFFERS,
                _ => "header: checksum",
            };
            assert_eq!(Header::decode(&bytes), Err(reason), "{index}");
        }
    }
}

#[test]
fn decode_names_another_protocol_version_first_then_checks_the_checksum() {
    // Goal: a header of another protocol version (version 1's 128-byte header kept `protocol`
    // at byte 88 too) is named as such before its checksum, which that version computes
    // differently; of this version, an invalid header with a bad checksum is reported as a
    // checksum failure.
    let mut header = valid(Command::Ping);
    header.protocol = 1;
    let differs = Err(PROTOCOL_DIFFERS);
    assert_eq!(Header::decode(header.as_bytes()), differs);
    let mut version_1 = [0u8; HEADER_SIZE];
    version_1[..4].copy_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
    version_1[88..90].copy_from_slice(&1u16.to_le_bytes());
    version_1[90] = Command::Ping as u8;
    assert_eq!(Header::decode(&version_1), differs);
    let mut header = valid(Command::Ping);
    header.command = Command::ALL.len() as u8;
    assert_eq!(header.invalid(), Some("command unknown"));
    assert_eq!(Header::decode(header.as_bytes()), Err("header: checksum"));
}

// ---- Layout ----

#[test]
fn header_is_256_bytes_aligned_to_64() {
    // Goal: a header fills one 256-byte slot and starts on a cache line.
    assert_eq!(size_of::<Header>(), 256);
    assert_eq!(size_of::<Header>(), HEADER_SIZE);
    assert_eq!(align_of::<Header>(), 64);
    assert_eq!(Header::zeroed().as_bytes(), &[0; HEADER_SIZE]);
}

#[test]
fn fields_sit_at_their_documented_offsets() {
    // Goal: the wire layout is the documented one, field by field; `protocol` and `command`
    // are where version 1 had them.
    assert_eq!(offset_of!(Header, checksum), 0);
    assert_eq!(offset_of!(Header, checksum_body), 16);
    assert_eq!(offset_of!(Header, parent), 32);
    assert_eq!(offset_of!(Header, context), 48);
    assert_eq!(offset_of!(Header, cluster), 64);
    assert_eq!(offset_of!(Header, op), 72);
    assert_eq!(offset_of!(Header, commit), 80);
    assert_eq!(offset_of!(Header, protocol), 88);
    assert_eq!(offset_of!(Header, command), 90);
    assert_eq!(offset_of!(Header, replica), 91);
    assert_eq!(offset_of!(Header, size), 92);
    assert_eq!(offset_of!(Header, timestamp), 96);
    assert_eq!(offset_of!(Header, client), 104);
    assert_eq!(offset_of!(Header, checkpoint_op), 112);
    assert_eq!(offset_of!(Header, op_min), 120);
    assert_eq!(offset_of!(Header, view), 128);
    assert_eq!(offset_of!(Header, request), 132);
    assert_eq!(offset_of!(Header, log_view), 136);
    assert_eq!(offset_of!(Header, operation), 140);
    assert_eq!(offset_of!(Header, reserved), 141);
    assert_eq!(offset_of!(Header, reserved) + 115, HEADER_SIZE);
}

#[test]
fn fields_are_little_endian_at_their_offsets() {
    // Goal: each field's bytes land, least significant first, at its offset and nowhere else.
    type Setter = fn(&mut Header, u128);
    let layout: [(&str, usize, usize, Setter); 19] = [
        ("checksum", 0, 16, |h, v| h.checksum = Checksum(v)),
        ("checksum_body", 16, 16, |h, v| h.checksum_body = Checksum(v)),
        ("parent", 32, 16, |h, v| h.parent = Checksum(v)),
        ("context", 48, 16, |h, v| h.context = v),
        ("cluster", 64, 8, |h, v| h.cluster = ClusterId(v as u64)),
        ("op", 72, 8, |h, v| h.op = Op(v as u64)),
        ("commit", 80, 8, |h, v| h.commit = Op(v as u64)),
        ("protocol", 88, 2, |h, v| h.protocol = v as u16),
        ("command", 90, 1, |h, v| h.command = v as u8),
        ("replica", 91, 1, |h, v| h.replica = ReplicaIndex(v as u8)),
        ("size", 92, 4, |h, v| h.size = v as u32),
        ("timestamp", 96, 8, |h, v| h.timestamp = v as u64),
        ("client", 104, 8, |h, v| h.client = ClientId(v as u64)),
        ("checkpoint_op", 112, 8, |h, v| h.checkpoint_op = Op(v as u64)),
        ("op_min", 120, 8, |h, v| h.op_min = Op(v as u64)),
        ("view", 128, 4, |h, v| h.view = View(v as u32)),
        ("request", 132, 4, |h, v| h.request = v as u32),
        ("log_view", 136, 4, |h, v| h.log_view = View(v as u32)),
        ("operation", 140, 1, |h, v| h.operation = v as u8),
    ];
    let value: u128 = 0x100F_0E0D_0C0B_0A09_0807_0605_0403_0201;
    for (name, offset, width, set) in layout {
        let mut header = Header::zeroed();
        set(&mut header, value);
        let mut expected = [0u8; HEADER_SIZE];
        expected[offset..offset + width].copy_from_slice(&value.to_le_bytes()[..width]);
        assert_eq!(header.as_bytes(), &expected, "{name}");
    }
    let mut header = Header::zeroed();
    (header.reserved[0], header.reserved[114]) = (0xAA, 0xBB);
    let mut expected = [0u8; HEADER_SIZE];
    (expected[141], expected[255]) = (0xAA, 0xBB);
    assert_eq!(header.as_bytes(), &expected, "reserved");
}

#[test]
fn size_is_little_endian_at_offset_92() {
    // Goal: the documented example: size 0x01020304 is stored as 04 03 02 01 at offset 92.
    let mut header = Header::zeroed();
    header.size = 0x0102_0304;
    assert_eq!(header.as_bytes()[92..96], [0x04, 0x03, 0x02, 0x01]);
    let decoded = Header::read_from_bytes(header.as_bytes()).unwrap();
    assert_eq!(decoded.size, 0x0102_0304);
}

#[test]
fn checksum_covers_bytes_16_to_256() {
    // Goal: the checksum is the checksum of bytes 16..256: it covers checksum_body (and so the
    // body), every other field and the reserved bytes, but not itself.
    let header = valid(Command::Prepare);
    assert_eq!(header.checksum, checksum(&header.as_bytes()[16..]));
    let mut changed = header;
    changed.checksum_body ^= 1;
    assert_ne!(changed.calculate_checksum(), header.checksum);
    for index in 0..HEADER_SIZE {
        let mut bytes = header.as_bytes().to_vec();
        bytes[index] ^= 1;
        let changed = Header::read_from_bytes(&bytes).unwrap();
        if index < 16 {
            assert_eq!(changed.calculate_checksum(), header.checksum, "{index}");
        } else {
            assert_ne!(changed.calculate_checksum(), header.checksum, "{index}");
        }
    }
}

#[test]
fn command_from_u8_round_trips_every_byte() {
    // Goal: from_u8 is the inverse of `as u8` on the commands, and None on every other byte.
    for value in 0..=u8::MAX {
        match Command::from_u8(value) {
            Some(command) => assert_eq!(command as u8, value),
            None => assert!(usize::from(value) >= Command::ALL.len(), "{value}"),
        }
    }
    for (index, command) in Command::ALL.into_iter().enumerate() {
        assert_eq!(command as usize, index);
        assert_eq!(Command::from_u8(command as u8), Some(command));
    }
    let names: BTreeSet<&str> = Command::ALL.into_iter().map(Command::name).collect();
    assert_eq!(names.len(), Command::ALL.len());
}

#[test]
fn operation_from_u8_round_trips_every_byte() {
    // Goal: from_u8 is the inverse of `as u8` on the operations, and None on every other byte.
    let known: Vec<u8> = (0..=3).chain(128..=134).collect();
    for value in 0..=u8::MAX {
        match Operation::from_u8(value) {
            Some(operation) => assert_eq!(operation as u8, value),
            None => assert!(!known.contains(&value), "{value}"),
        }
    }
    let decoded = known.iter().filter(|value| Operation::from_u8(**value).is_some()).count();
    assert_eq!(decoded, known.len());
}

#[test]
fn from_prefix_requires_an_aligned_buffer_of_header_size() {
    // Goal: from_prefix casts without copying, so it refuses short or misaligned buffers.
    #[repr(C, align(64))]
    struct Aligned([u8; 2 * HEADER_SIZE]);
    let header = valid(Command::Ping);
    let mut buffer = Aligned([0; 2 * HEADER_SIZE]);
    buffer.0[..HEADER_SIZE].copy_from_slice(header.as_bytes());
    assert_eq!(Header::from_prefix(&buffer.0), Some(&header));
    assert_eq!(Header::from_prefix(&buffer.0[..HEADER_SIZE]), Some(&header));
    assert_eq!(Header::from_prefix(&buffer.0[..HEADER_SIZE - 1]), None);
    assert_eq!(Header::from_prefix(&buffer.0[1..]), None);
}

// ---- Random input ----

/// The seed for randomized tests: `KIMBERLITE_SEED` if set, else a fixed one (the core and its
/// tests read no clock; a campaign over many seeds sets the variable).
fn seed() -> u64 {
    match std::env::var("KIMBERLITE_SEED") {
        Ok(value) => value.parse().expect("KIMBERLITE_SEED must be a u64"),
        Err(_) => 0x6b69_6d62_6572_6c69,
    }
}

#[test]
fn decode_and_invalid_never_panic_on_random_bytes() {
    // Goal: on 100k random inputs, decode and invalid() never panic, return only known reasons,
    // and decode is exactly "checksum, then invalid()".
    let seed = seed();
    println!("seed={seed} (rerun with KIMBERLITE_SEED={seed})");
    let mut prng = Prng::new(seed);
    let commands = commands();
    let mut reached = BTreeSet::new();
    let mut bytes = [0u8; 2 * HEADER_SIZE];
    for _ in 0..100_000 {
        let length = match prng.index(8) {
            0 => prng.index(HEADER_SIZE),
            _ => HEADER_SIZE + prng.index(HEADER_SIZE + 1),
        };
        prng.fill(&mut bytes);
        if prng.chance(3, 4) {
            // Disturb a valid header, so that the checks past protocol and reserved are reached.
            let mut header = valid(commands[prng.index(commands.len())]);
            for _ in 0..1 + prng.index(3) {
                let value = if prng.chance(1, 2) { prng.next_u64() % 16 } else { prng.next_u64() };
                match prng.index(4) {
                    0 | 1 => Field::ALL[prng.index(Field::ALL.len())].set(&mut header, value),
                    2 => header.size = (HEADER_SIZE + prng.index(4 * HEADER_SIZE)) as u32,
                    _ => header.as_mut_bytes()[16 + prng.index(HEADER_SIZE - 16)] = value as u8,
                }
            }
            if prng.chance(9, 10) {
                header.set_checksum();
            }
            bytes[..HEADER_SIZE].copy_from_slice(header.as_bytes());
        }
        let input = &bytes[..length];
        let decoded = Header::decode(input);
        if length < HEADER_SIZE {
            assert_eq!(decoded, Err("header: too short"));
            continue;
        }
        let header = Header::read_from_bytes(&input[..HEADER_SIZE]).unwrap();
        let invalid = header.invalid();
        if let Some(reason) = invalid {
            assert!(REASONS.contains(&reason), "unlisted reason {reason:?}");
        }
        let expected = match (header.valid_checksum(), invalid) {
            _ if header.protocol != PROTOCOL_VERSION => Err(PROTOCOL_DIFFERS),
            (false, _) => Err("header: checksum"),
            (true, Some(reason)) => Err(reason),
            (true, None) => Ok(header),
        };
        assert_eq!(decoded, expected);
        if let Ok(header) = decoded {
            assert!(header.body_size() <= MESSAGE_SIZE_MAX - HEADER_SIZE);
        }
        reached.insert(decoded.err().unwrap_or("valid"));
    }
    println!("outcomes reached: {} of {}", reached.len(), REASONS.len() + 1);
}

// ---- Coverage of the reasons ----

/// The reason literals in header.rs: returned as `Some("...")` or `Err("...")`, mapped to as
/// `|_| "..."`, or listed as `"... must be zero"`.
fn reasons_in_source() -> BTreeSet<&'static str> {
    let source = include_str!("../header.rs");
    let mut reasons = BTreeSet::new();
    for prefix in ["Some(\"", "Err(\"", "|_| \"", ": &str = \""] {
        for (start, _) in source.match_indices(prefix) {
            let rest = &source[start + prefix.len()..];
            reasons.insert(&rest[..rest.find('"').unwrap()]);
        }
    }
    let suffix = " must be zero\"";
    for (end, _) in source.match_indices(suffix) {
        let start = source[..end].rfind('"').unwrap() + 1;
        reasons.insert(&source[start..end + suffix.len() - 1]);
    }
    reasons
}

#[test]
fn the_reason_list_matches_the_reasons_returned_in_header_rs() {
    // Goal: REASONS is exactly the set of reason literals in header.rs, so a new reason must be
    // added to it (and then needs a test, below).
    let listed: BTreeSet<&str> = REASONS.into_iter().collect();
    assert_eq!(listed.len(), REASONS.len(), "REASONS has duplicates");
    let source = reasons_in_source();
    let missing: Vec<_> = source.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&source).collect();
    assert!(missing.is_empty(), "reasons in header.rs missing from REASONS: {missing:?}");
    assert!(stale.is_empty(), "reasons in REASONS not in header.rs: {stale:?}");
}

#[test]
fn every_rejection_reason_has_a_test_that_produces_it() {
    // Goal: each reason has a row in REJECTION_TESTS whose test, run here, asserts that exact
    // reason from a valid header changed once.
    let tested: BTreeSet<&str> = REJECTION_TESTS.iter().map(|(reason, _)| *reason).collect();
    for reason in REASONS {
        assert!(tested.contains(reason), "no test for {reason:?}");
    }
    for (reason, test) in REJECTION_TESTS {
        assert!(REASONS.contains(&reason), "{reason:?} is not a reason");
        ASSERTED.with(|asserted| asserted.borrow_mut().clear());
        test();
        let asserted = ASSERTED.with(|asserted| asserted.borrow().clone());
        assert!(asserted.contains(&reason), "{reason:?}: its test asserted {asserted:?}");
    }
}

#[test]
fn checksum_is_xxh3_128_and_pieces_hash_as_their_concatenation() {
    // Goal: the checksum is XXH3-128 with seed 0 (the published test vector of the empty
    // input), and `checksum_pieces` equals the checksum of the pieces joined, wherever the
    // seams fall; `checksum_chain` is the checksum of both links' 32 bytes.
    assert_eq!(checksum(&[]), Checksum(0x99aa_06d3_0147_98d8_6001_c324_468d_497f));
    let mut bytes = vec![0u8; 3 * 4096 + 1000];
    Prng::new(1).fill(&mut bytes);
    for seam in [0, 1, 7, 240, 4096, 12288, bytes.len()] {
        let (first, second) = bytes.split_at(seam);
        assert_eq!(checksum_pieces(&[first, second]), checksum(&bytes), "{seam}");
    }
    let (a, b) = (checksum(b"a"), checksum(b"b"));
    let mut joined = a.to_le_bytes().to_vec();
    joined.extend_from_slice(&b.to_le_bytes());
    assert_eq!(checksum_chain(a, b), checksum(&joined));
    assert_ne!(checksum_chain(a, b), checksum_chain(b, a));
}

#[test]
fn the_views_use_the_fields_the_command_table_lists() {
    // Goal: the typed views (the source `invalid()` takes its used fields from) name exactly the
    // fields this file's table lists per command, and each view's command is its own.
    for command in commands() {
        let expected = used_fields(command).iter().fold(0u16, |mask, field| {
            let debug = format!("{field:?}");
            let mut name = String::new();
            for (index, character) in debug.chars().enumerate() {
                if character.is_uppercase() && index > 0 {
                    name.push('_');
                }
                name.push(character.to_ascii_lowercase());
            }
            mask | views::field_bit(&name)
        });
        assert_eq!(views::used_fields(command), expected, "{}", command.name());
    }
    for (view, command) in views::VIEWS.iter().zip(Command::ALL.iter().skip(1)) {
        assert_eq!(view.command, *command);
    }
    assert_eq!(views::VIEWS.len(), Command::ALL.len() - 1);
}

#[test]
fn a_view_reads_and_writes_its_fields_under_their_meaning() {
    // Goal: a view's setters write the generic field it names, its getters read it back, and a
    // context too large for the view's type reads as the type's maximum, not as its low bits.
    let mut header = Header::new(Command::Block, CLUSTER);
    let mut block = views::Block::of(&mut header);
    block.set_address(77);
    block.set_offset(4096);
    assert_eq!((header.op, header.context), (Op(77), 4096));
    header.context = 1 << 64;
    assert_eq!(views::Block::of(&header).offset(), u64::MAX);
    let mut eviction = Header::new(Command::Eviction, CLUSTER);
    views::Eviction::of(&mut eviction).set_reason(EvictionReason::NoSession as u32);
    assert_eq!(views::Eviction::of(&eviction).reason(), EvictionReason::NoSession as u32);
    let mut prepare = Header::new(Command::Prepare, CLUSTER);
    views::Prepare::of(&mut prepare).set_request_checksum(PARENT);
    assert_eq!(prepare.context, PARENT.get());
}

#[test]
#[should_panic(expected = "assertion `left == right` failed")]
fn a_view_of_another_command_is_refused() {
    // Goal: a view checks its command when it is made.
    let header = Header::new(Command::Ping, CLUSTER);
    views::Prepare::of(&header);
}
