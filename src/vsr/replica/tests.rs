//! Scenario tests of a single-node replica on the in-memory disk: requests, dedup, sessions,
//! checkpoints, WAL wrap-around, crashes and restarts.

use super::*;
use crate::constants::SECTOR_SIZE;
use crate::constants::{
    GRID_READS_MAX, MESSAGE_SIZE_SMALL, PIPELINE_PREPARE_QUEUE_MAX, request_queue_max,
};
use crate::sim::storage::MemoryStorage;
use crate::state_machine::constants::EXPECTED_OFFSET_ANY;
use crate::state_machine::types::{AppendEncoder, CreateStream, ReadLog};
use crate::vsr::format;
use crate::vsr::header::ClusterId;
use crate::vsr::header::views;
use crate::vsr::header::{EvictionReason, Operation};
use crate::vsr::layout::Zone;
use crate::vsr::message_pool::replica_pool;
use zerocopy::IntoBytes;

/// Gives `message` to `replica` as a driver does: only once `accept` let it through.
fn replica_deliver(replica: &mut Replica, storage: &mut MemoryStorage, message: Message) {
    let config = *replica.config();
    let message_size_max = config.message_size_max as usize;
    match crate::vsr::accept::accept(message, config.cluster, message_size_max) {
        Ok(accepted) => replica.on_message(storage, accepted),
        Err(reject) => panic!("a test message a replica refuses: {}", reject.reason()),
    }
}

pub(crate) struct Harness {
    pub config: Config,
    pub storage: MemoryStorage,
    pub pool: MessagePool,
    pub replica: Replica,
    completions: Vec<Completion>,
    pub sent: Vec<(Destination, Message)>,
}

pub(crate) fn small_config() -> Config {
    Config {
        message_size_max: 64 * 1024,
        grid_size: 64 * 1024 * 1024,
        streams_max: 64,
        ..Config::small(ClusterId(11), ReplicaIndex(0), 1)
    }
}

impl Harness {
    pub fn new(config: Config) -> Harness {
        let layout = Layout::new(&config);
        let mut storage = MemoryStorage::new(layout.file_size());
        let format_pool = MessagePool::new(
            crate::constants::FORMAT_WRITES_IN_FLIGHT,
            crate::constants::FORMAT_WRITE_SIZE,
        );
        format::format(&mut storage, &format_pool, &config).unwrap();
        let pool = replica_pool(config.message_size_max as usize, config.clients_max as usize);
        let replica = Replica::new(&config, pool.clone(), 1);
        let mut harness = Harness {
            config,
            storage,
            pool,
            replica,
            completions: Vec::with_capacity(64),
            sent: Vec::new(),
        };
        harness.open();
        harness
    }

    fn open(&mut self) {
        self.replica.open(&mut self.storage);
        self.run();
        assert_eq!(self.replica.status(), Status::Normal, "{:?}", self.replica.failure());
    }

    /// Delivers every completion until the disk is idle, collecting what the replica sends.
    pub fn run(&mut self) {
        loop {
            while let Some(sent) = self.replica.poll_send() {
                self.sent.push(sent);
            }
            if self.storage.in_flight() == 0 {
                break;
            }
            self.storage.poll(&mut self.completions, 64);
            for completion in self.completions.drain(..) {
                self.replica.on_storage_completion(&mut self.storage, completion);
            }
        }
    }

    /// A request message as the client library builds it.
    pub fn request(
        &self,
        client: ClientId,
        request: u32,
        operation: Operation,
        body: &[u8],
    ) -> Message {
        let mut message = self.pool.get();
        let size = HEADER_SIZE + body.len();
        message.buffer_mut_unique()[HEADER_SIZE..size].copy_from_slice(body);
        let header = message.header_mut();
        *header = Header::new(Command::Request, self.config.cluster);
        header.size = size as u32;
        header.client = client;
        header.request = request;
        header.operation = operation as u8;
        if operation != Operation::Register && !operation.is_read() {
            // As the client library does: the session's chain after its latest reply.
            let record =
                self.replica.sessions.slot(client).map(|slot| *self.replica.sessions.get(slot));
            let reply_op = record.map_or(Op(0), |record| record.reply_op);
            header.parent = crate::vsr::client_sessions::session_chain(client, reply_op);
        }
        let checksum_body = crate::vsr::header::checksum(body);
        let header = message.header_mut();
        header.checksum_body = checksum_body;
        header.set_checksum();
        assert_eq!(header.invalid(), None);
        message
    }

    /// `request` in a small buffer, as the bus receives a client's small request.
    pub fn small(&self, request: Message) -> Message {
        let mut small = self.pool.get_small();
        small.buffer_mut_unique()[..request.bytes().len()].copy_from_slice(request.bytes());
        small
    }

    /// Sends a request and returns what the replica sent back to that client.
    pub fn call(
        &mut self,
        client: ClientId,
        request: u32,
        operation: Operation,
        body: &[u8],
    ) -> Vec<Message> {
        let message = self.request(client, request, operation, body);
        self.sent.clear();
        replica_deliver(&mut self.replica, &mut self.storage, message);
        self.run();
        self.sent
            .drain(..)
            .filter(|(destination, _)| *destination == Destination::Client(client))
            .map(|(_, message)| message)
            .collect()
    }

    pub fn register(&mut self, client: ClientId) -> Message {
        let replies = self.call(client, 0, Operation::Register, &[]);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].header().command(), Some(Command::Reply));
        replies.into_iter().next().unwrap()
    }

    /// Loses every write in flight and reopens the replica from the disk.
    pub fn crash_and_restart(&mut self) {
        self.storage.crash();
        self.sent.clear();
        self.replica = Replica::new(&self.config, self.pool.clone(), 1);
        self.open();
    }
}

#[test]
fn register_commits_and_replies() {
    // Goal: a register is prepared, made durable, committed, and answered.
    let mut harness = Harness::new(small_config());
    let reply = harness.register(ClientId(7));
    let header = reply.header();
    assert_eq!(header.op, Op(1));
    assert_eq!(header.client, ClientId(7));
    assert_eq!(header.operation, Operation::Register as u8);
    assert_eq!(harness.replica.commit_min(), Op(1));
}

#[test]
fn request_without_a_session_gets_an_eviction() {
    // Goal: a client must register before it writes.
    let mut harness = Harness::new(small_config());
    let replies = harness.call(ClientId(9), 1, Operation::Append, &[]);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].header().command(), Some(Command::Eviction));
    assert_eq!(replies[0].header().context, EvictionReason::NoSession as u128);
}

#[test]
fn retried_register_gets_the_same_reply_and_is_not_applied_twice() {
    // Goal: dedup by request number: the retry is answered from the stored reply.
    let mut harness = Harness::new(small_config());
    let first = harness.register(ClientId(7));
    let second = harness.register(ClientId(7));
    assert_eq!(first.header(), second.header());
    assert_eq!(harness.replica.commit_min(), Op(1));
    assert_eq!(harness.replica.metrics().replies_resent, 1);
}

#[test]
fn a_request_past_an_op_the_primary_has_not_executed_gets_a_pong() {
    // Goal: a primary that holds ops it has not executed yet, one of which may be a client's
    // previous request (a new primary committing its predecessor's last ops again), answers a
    // request numbered past that session's latest with a pong, so that the client asks again
    // soon instead of waiting out a timeout; once every op it holds is executed, such a request
    // is a client bug, dropped.
    let mut harness = Harness::new(small_config());
    harness.register(ClientId(7));
    let register = harness.request(ClientId(8), 0, Operation::Register, &[]);
    replica_deliver(&mut harness.replica, &mut harness.storage, register);
    assert!(harness.replica.op() > harness.replica.commit_min(), "client 8's op is not executed");
    let ahead = harness.request(ClientId(7), 2, Operation::Append, &[]);
    replica_deliver(&mut harness.replica, &mut harness.storage, ahead);
    let mut to_client = Vec::new();
    while let Some((destination, message)) = harness.replica.poll_send() {
        if destination == Destination::Client(ClientId(7)) {
            to_client.push(message.header().command());
        }
    }
    assert_eq!(to_client, [Some(Command::PongClient)]);
    harness.run();
    assert_eq!(harness.replica.op(), harness.replica.commit_min());
    assert!(
        harness.call(ClientId(7), 2, Operation::Append, &[]).is_empty(),
        "a client bug: dropped"
    );
}

#[test]
fn full_session_table_evicts_the_oldest_client() {
    // Goal: a register into a full table evicts the least recently committed session, and that
    // client is told so.
    let mut harness = Harness::new(small_config());
    for client in 1..=4 {
        harness.register(ClientId(client));
    }
    let message = harness.request(ClientId(5), 0, Operation::Register, &[]);
    replica_deliver(&mut harness.replica, &mut harness.storage, message);
    harness.run();
    let evicted: Vec<_> = harness
        .sent
        .iter()
        .filter(|(_, message)| message.header().command() == Some(Command::Eviction))
        .map(|(destination, _)| *destination)
        .collect();
    assert_eq!(evicted, vec![Destination::Client(ClientId(1))]);
    let replies = harness.call(ClientId(1), 1, Operation::Append, &[]);
    assert_eq!(replies[0].header().command(), Some(Command::Eviction));
}

/// What `harness`'s replica sent to `client` since the last call (taken from its send queue).
fn sent_to(harness: &mut Harness, client: ClientId) -> Vec<Message> {
    let mut messages = Vec::new();
    while let Some((destination, message)) = harness.replica.poll_send() {
        if destination == Destination::Client(client) {
            messages.push(message);
        }
    }
    messages
}

#[test]
fn a_request_past_a_full_queue_is_answered_busy_and_taken_when_sent_again() {
    // Goal: with the pipeline and the request queue full (the disk has completed nothing), the
    // next request gets a `busy` answer naming it, in place of silence that would make its
    // client wait out a timeout; the same request sent again once there is room commits.
    let mut harness = Harness::new(small_config());
    let queued =
        PIPELINE_PREPARE_QUEUE_MAX + request_queue_max(harness.config.clients_max as usize);
    for client in 1..=queued as u64 {
        let register =
            harness.small(harness.request(ClientId(client), 0, Operation::Register, &[]));
        replica_deliver(&mut harness.replica, &mut harness.storage, register);
        assert!(sent_to(&mut harness, ClientId(client)).is_empty());
    }
    let last = ClientId(queued as u64 + 1);
    let register = harness.request(last, 0, Operation::Register, &[]);
    let checksum = register.header().checksum;
    replica_deliver(&mut harness.replica, &mut harness.storage, register);
    let answers = sent_to(&mut harness, last);
    assert_eq!(answers.len(), 1);
    let busy = answers[0].header();
    assert_eq!(busy.command(), Some(Command::Busy));
    assert_eq!((busy.client, busy.request), (last, 0));
    assert_eq!(busy.operation, Operation::Register as u8);
    assert_eq!(views::Busy::of(busy).request_checksum(), checksum);
    assert_eq!(harness.replica.metrics().requests_busy, 1);
    harness.run();
    let replies = harness.call(last, 0, Operation::Register, &[]);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].header().command(), Some(Command::Reply));
}

#[test]
fn a_large_append_is_answered_in_a_small_buffer() {
    // Goal: a write's reply is built in a small buffer whatever the size of its request (its
    // 16 bytes a batch fit one); the event store's check of the reply's room follows the reply's
    // size, not the request's (which once asked for half a 24 KiB body).
    let mut harness = Harness::new(small_config());
    harness.register(ClientId(7));
    harness.call(ClientId(7), 1, Operation::CreateStream, &event_store::create_body(1));
    let mut body = vec![0u8; 3 * MESSAGE_SIZE_SMALL];
    let mut encoder = AppendEncoder::new(&mut body);
    encoder.batch_begin(1, EXPECTED_OFFSET_ANY);
    encoder.event(b"t", &[], 2 * MESSAGE_SIZE_SMALL as u32).fill(7);
    let size = encoder.finish();
    let replies = harness.call(ClientId(7), 2, Operation::Append, &body[..size]);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].header().command(), Some(Command::Reply));
    assert_eq!(replies[0].buffer().len(), MESSAGE_SIZE_SMALL);
}

#[test]
fn a_read_past_the_read_slots_is_answered_busy() {
    // Goal: with every read slot waiting on the disk (the events were checkpointed into the
    // grid and the disk has completed nothing since), the next read gets a `busy` answer, and
    // the reads in the slots are answered once the disk completes.
    let mut harness = Harness::new(small_config());
    harness.register(ClientId(7));
    let create = CreateStream { stream: 1, tenant: 1 };
    harness.call(ClientId(7), 1, Operation::CreateStream, create.as_bytes());
    let mut body = vec![0u8; 61_000];
    let checkpoints = harness.replica.metrics().checkpoints;
    let mut request = 2;
    while harness.replica.metrics().checkpoints == checkpoints
        || harness.replica.event_blocks() == 0
    {
        let mut encoder = AppendEncoder::new(&mut body);
        encoder.batch_begin(1, EXPECTED_OFFSET_ANY);
        encoder.event(b"t", &[], 60_000).fill(request as u8);
        let size = encoder.finish();
        harness.call(ClientId(7), request, Operation::Append, &body[..size]);
        request += 1;
    }
    let read = ReadLog { position_from: 0, count_max: 1, wait_ms: 0 };
    let reader = ClientId(8);
    for _ in 0..GRID_READS_MAX {
        let message = harness.request(reader, 1, Operation::ReadLog, read.as_bytes());
        replica_deliver(&mut harness.replica, &mut harness.storage, message);
        assert!(sent_to(&mut harness, reader).is_empty(), "the read waits on the disk");
    }
    let message = harness.request(reader, 1, Operation::ReadLog, read.as_bytes());
    replica_deliver(&mut harness.replica, &mut harness.storage, message);
    let answers = sent_to(&mut harness, reader);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].header().command(), Some(Command::Busy));
    harness.sent.clear();
    harness.run();
    let replies =
        harness.sent.iter().filter(|(destination, _)| *destination == Destination::Client(reader));
    assert_eq!(replies.count(), GRID_READS_MAX);
}

#[test]
fn sessions_and_replies_survive_a_restart() {
    // Goal: dedup survives a restart: the WAL replay rebuilds the session and its reply.
    let mut harness = Harness::new(small_config());
    let first = harness.register(ClientId(7));
    harness.crash_and_restart();
    assert_eq!(harness.replica.commit_min(), Op(1));
    let again = harness.register(ClientId(7));
    assert_eq!(first.header(), again.header());
}

#[test]
fn replies_of_many_sessions_come_back_from_their_sectors_after_a_checkpoint_and_a_restart() {
    // Goal: every session's latest reply, made before a checkpoint, is written to its sector of
    // the client_replies zone (in chunks of sessions, three here) and read back at the next
    // open, where no replay makes it again: a retry of each gets the same reply. A sector that
    // rotted meanwhile, or one that cannot be read (which fails its chunk's read, then is read
    // a sector at a time), loses only its own session's reply: that retry gets an eviction.
    let config = Config { clients_max: 40, ..small_config() };
    let mut harness = Harness::new(config);
    let body = event_store::append_body(1, 0, 1);
    harness.register(ClientId(100));
    let create = event_store::create_body(1);
    harness.call(ClientId(100), 1, Operation::CreateStream, &create);
    let mut replies = Vec::new();
    for client in 1..40 {
        harness.register(ClientId(client));
        let reply = harness.call(ClientId(client), 1, Operation::Append, &body);
        assert_eq!(reply[0].header().command(), Some(Command::Reply));
        replies.push(*reply[0].header());
    }
    let checkpoints = harness.replica.metrics().checkpoints;
    let mut request = 2;
    while harness.replica.metrics().checkpoints == checkpoints {
        harness.call(ClientId(100), request, Operation::Append, &body);
        request += 1;
    }
    let (rotten, unreadable) = (ClientId(20), ClientId(35));
    let layout = Layout::new(&harness.config);
    let sector_of = |harness: &Harness, client| {
        let slot = harness.replica.sessions.slot(client).unwrap();
        layout.offset(Zone::ClientReplies, (slot * SECTOR_SIZE) as u64)
    };
    let at = sector_of(&harness, rotten) as usize;
    harness.storage.bytes_mut()[at + 100] ^= 1;
    let at = sector_of(&harness, unreadable);
    harness.storage.unreadable(at..at + SECTOR_SIZE as u64);
    harness.crash_and_restart();
    assert_eq!(harness.replica.metrics().client_replies_chunks_unreadable, 1);
    let resent = harness.replica.metrics().replies_resent;
    for (client, reply) in (1..40).zip(replies) {
        let answer = harness.call(ClientId(client), 1, Operation::Append, &body);
        assert_eq!(answer.len(), 1);
        if ClientId(client) == rotten || ClientId(client) == unreadable {
            assert_eq!(answer[0].header().command(), Some(Command::Eviction));
        } else {
            assert_eq!(*answer[0].header(), reply, "client {client}");
        }
    }
    assert_eq!(harness.replica.metrics().replies_resent, resent + 37);
}

mod event_store {
    use super::*;
    use crate::state_machine::constants::EXPECTED_OFFSET_ANY;
    use crate::state_machine::types::{
        AppendEncoder, AppendResult, CreateStream, ReadReplyHeader, ReadStream, ResultCode,
        record_next,
    };
    use zerocopy::{FromBytes, IntoBytes};

    pub(crate) fn create_body(stream: u64) -> Vec<u8> {
        CreateStream { stream, tenant: 1 }.as_bytes().to_vec()
    }

    /// An append of `count` 16-byte events numbered from `first`.
    pub(crate) fn append_body(stream: u64, first: u64, count: u64) -> Vec<u8> {
        let size = AppendEncoder::batch_size((0..count).map(|_| 17));
        let mut body = vec![0; size];
        let mut encoder = AppendEncoder::new(&mut body);
        encoder.batch_begin(stream, EXPECTED_OFFSET_ANY);
        for number in first..first + count {
            let data = encoder.event(b"t", &[], 16);
            data[..8].copy_from_slice(&number.to_le_bytes());
            data[8..].copy_from_slice(&stream.to_le_bytes());
        }
        assert_eq!(encoder.finish(), size);
        body
    }

    fn read_body(stream: u64, offset_from: u64) -> Vec<u8> {
        ReadStream { stream, offset_from, count_max: 1000, wait_ms: 0 }.as_bytes().to_vec()
    }

    pub(crate) fn append(
        harness: &mut Harness,
        client: u64,
        request: u32,
        stream: u64,
        first: u64,
    ) -> u64 {
        let body = append_body(stream, first, 3);
        let replies = harness.call(ClientId(client), request, Operation::Append, &body);
        assert_eq!(replies.len(), 1);
        let result = AppendResult::read_from_prefix(replies[0].body()).unwrap().0;
        assert_eq!(result.result, ResultCode::Ok as u32);
        result.offset
    }

    /// Every event of `stream` (its numbers), read through the replica.
    fn read_all(harness: &mut Harness, client: u64, stream: u64) -> Vec<u64> {
        let mut numbers = Vec::new();
        loop {
            let body = read_body(stream, numbers.len() as u64);
            let replies = harness.call(ClientId(client), 1, Operation::ReadStream, &body);
            assert_eq!(replies.len(), 1, "a read gets one reply");
            assert_eq!(replies[0].header().command(), Some(Command::Reply), "{:?}", replies[0]);
            let (head, mut rest) = ReadReplyHeader::read_from_prefix(replies[0].body()).unwrap();
            assert_eq!(head.result, ResultCode::Ok as u32);
            for _ in 0..head.event_count {
                let (record, event, after) = record_next(rest).unwrap();
                assert_eq!(record.offset, numbers.len() as u64);
                numbers.push(u64::from_le_bytes(event.data[..8].try_into().unwrap()));
                rest = after;
            }
            if head.event_count == 0 || head.next >= head.end {
                return numbers;
            }
        }
    }

    #[test]
    fn appends_and_registers_waiting_behind_a_full_pipeline_share_one_op_in_queue_order() {
        // Goal: with the pipeline full, the appends and registers queued at the front become
        // one append_packed op, each answered on its own (an append with its own offset, a
        // register with its session open); a create_stream queued between them is prepared in
        // its turn, alone, not starved by the requests behind it, which share the next op.
        let mut harness = Harness::new(Config { clients_max: 16, ..small_config() });
        for client in 1..=11 {
            harness.register(ClientId(client));
        }
        harness.call(ClientId(1), 1, Operation::CreateStream, &create_body(5));
        let deliver = |harness: &mut Harness, client: u64, operation, body: &[u8]| {
            let request =
                if operation == Operation::Register { 0 } else { 1 + u32::from(client == 1) };
            let message = harness.request(ClientId(client), request, operation, body);
            replica_deliver(&mut harness.replica, &mut harness.storage, message);
        };
        harness.sent.clear();
        // Eight appends fill the pipeline (the disk is not run meanwhile); then the queue holds
        // append 9, register 12, create_stream 11, append 10 and register 13.
        for client in 1..=8 {
            deliver(&mut harness, client, Operation::Append, &append_body(5, client * 10, 1));
        }
        deliver(&mut harness, 9, Operation::Append, &append_body(5, 90, 1));
        deliver(&mut harness, 12, Operation::Register, &[]);
        deliver(&mut harness, 11, Operation::CreateStream, &create_body(6));
        deliver(&mut harness, 10, Operation::Append, &append_body(5, 100, 1));
        deliver(&mut harness, 13, Operation::Register, &[]);
        harness.run();
        let reply = |client: u64| {
            let replies: Vec<&Message> = harness
                .sent
                .iter()
                .filter(|(destination, _)| *destination == Destination::Client(ClientId(client)))
                .map(|(_, message)| message)
                .collect();
            assert_eq!(replies.len(), 1, "client {client}");
            assert_eq!(replies[0].header().command(), Some(Command::Reply));
            *replies[0].header()
        };
        let (op_9, op_12, op_11) = (reply(9).op, reply(12).op, reply(11).op);
        let (op_10, op_13) = (reply(10).op, reply(13).op);
        assert_eq!(op_9, op_12, "append 9 and register 12 share one op");
        assert!(op_12 < op_11 && op_11 < op_10, "{op_12} {op_11} {op_10}");
        assert_eq!(op_10, op_13, "append 10 and register 13 share one op");
        assert_eq!(harness.replica.metrics().requests_packed, 4);
        for client in [12, 13] {
            assert_eq!(reply(client).operation, Operation::Register as u8);
            assert_eq!(reply(client).size as usize, HEADER_SIZE);
        }
        let offsets: Vec<u64> = [9, 10]
            .iter()
            .map(|client| {
                let (_, message) = harness
                    .sent
                    .iter()
                    .find(|(destination, _)| *destination == Destination::Client(ClientId(*client)))
                    .unwrap();
                let result = AppendResult::read_from_prefix(message.body()).unwrap().0;
                assert_eq!(result.result, ResultCode::Ok as u32);
                result.offset
            })
            .collect();
        assert_eq!(offsets, vec![8, 9], "each packed request gets its own result");
        for client in [12, 13] {
            let body = create_body(client);
            let replies = harness.call(ClientId(client), 1, Operation::CreateStream, &body);
            assert_eq!(replies.len(), 1, "the packed register opened client {client}'s session");
            assert_eq!(replies[0].header().command(), Some(Command::Reply));
        }
        assert_eq!(read_all(&mut harness, 14, 5), vec![10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
    }

    #[test]
    fn appended_events_are_read_back_in_order() {
        // Goal: the normal path end to end: create, append, read from committed state.
        let mut harness = Harness::new(small_config());
        harness.register(ClientId(7));
        let replies = harness.call(ClientId(7), 1, Operation::CreateStream, &create_body(5));
        assert_eq!(replies[0].body()[..4], (ResultCode::Ok as u32).to_le_bytes());
        assert_eq!(append(&mut harness, 7, 2, 5, 0), 0);
        assert_eq!(append(&mut harness, 7, 3, 5, 3), 3);
        assert_eq!(read_all(&mut harness, 8, 5), vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn retried_append_is_applied_once() {
        // Goal: a retry of the latest request is answered from the stored reply.
        let mut harness = Harness::new(small_config());
        harness.register(ClientId(7));
        harness.call(ClientId(7), 1, Operation::CreateStream, &create_body(5));
        append(&mut harness, 7, 2, 5, 0);
        assert_eq!(append(&mut harness, 7, 2, 5, 0), 0);
        assert_eq!(read_all(&mut harness, 7, 5), vec![0, 1, 2]);
    }

    #[test]
    fn checkpoints_let_the_wal_wrap_and_a_restart_replays_from_the_last_one() {
        // Goal: more ops than WAL slots (checkpoints every 48 ops), then a crash: the restart
        // replays from the checkpoint and every acknowledged event is still there, once.
        let mut harness = Harness::new(small_config());
        harness.register(ClientId(7));
        harness.call(ClientId(7), 1, Operation::CreateStream, &create_body(5));
        let mut expected = Vec::new();
        for request in 2..200u32 {
            let first = expected.len() as u64;
            append(&mut harness, 7, request, 5, first);
            expected.extend(first..first + 3);
            if request % 67 == 0 {
                harness.crash_and_restart();
            }
        }
        assert!(harness.replica.metrics().checkpoints > 0);
        assert!(harness.replica.checkpoint_op() > Op(64));
        harness.crash_and_restart();
        assert!(harness.replica.metrics().ops_replayed > 0);
        assert_eq!(read_all(&mut harness, 8, 5), expected);
        // The last request is deduplicated across the restart.
        let first = expected.len() as u64 - 3;
        assert_eq!(append(&mut harness, 7, 199, 5, first), first);
    }

    #[test]
    fn a_reply_older_than_the_checkpoint_is_served_again_after_a_restart() {
        // Goal: a session whose latest reply was committed before the checkpoint gets that
        // reply again for a retry after a restart: the replay cannot rebuild it, so it is read
        // back from the client_replies zone and must be recognised there, not dropped (which
        // would evict the session).
        let mut harness = Harness::new(small_config());
        harness.register(ClientId(7));
        harness.register(ClientId(8));
        harness.call(ClientId(8), 1, Operation::CreateStream, &create_body(5));
        let first = harness.call(ClientId(7), 1, Operation::CreateStream, &create_body(6));
        for request in 2..80u32 {
            append(&mut harness, 8, request, 5, 3 * u64::from(request - 2));
        }
        assert!(harness.replica.checkpoint_op() > first[0].header().op);
        harness.crash_and_restart();
        let again = harness.call(ClientId(7), 1, Operation::CreateStream, &create_body(6));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].header().command(), Some(Command::Reply));
        assert_eq!(again[0].header(), first[0].header());
    }

    #[test]
    fn no_allocation_after_startup_over_ten_thousand_requests() {
        // Goal: static allocation, proven: 10,000 requests (appends, reads, registers that
        // evict sessions) through checkpoints and WAL wrap-around allocate nothing once the
        // replica is open.
        let mut harness = Harness::new(small_config());
        harness.sent.reserve(64);
        let clients_max = harness.config.clients_max as u64;
        let append_template = append_body(5, 0, 3);
        let read_template = read_body(5, 0);
        // Warm up the test's own queues, then arm the guard.
        harness.register(ClientId(1));
        harness.call(ClientId(1), 1, Operation::CreateStream, &create_body(5));
        let mut requests = [0u32; 16];
        requests[1] = 1;
        crate::stdx::allocation_guard::arm();
        let mut evictions = 0;
        for index in 0..10_000u64 {
            let client = 1 + (index / 1000) % (clients_max + 2);
            let slot = client as usize;
            let message = if requests[slot] == 0
                && harness.replica.sessions.slot(ClientId(client)).is_none()
            {
                harness.request(ClientId(client), 0, Operation::Register, &[])
            } else if index % 10 == 9 {
                harness.request(
                    ClientId(client),
                    requests[slot] + 1,
                    Operation::ReadStream,
                    &read_template,
                )
            } else {
                requests[slot] += 1;
                harness.request(
                    ClientId(client),
                    requests[slot],
                    Operation::Append,
                    &append_template,
                )
            };
            replica_deliver(&mut harness.replica, &mut harness.storage, message);
            harness.run();
            for (destination, message) in harness.sent.drain(..) {
                if message.header().command() == Some(Command::Eviction) {
                    let Destination::Client(evicted) = destination else { unreachable!() };
                    requests[evicted.get() as usize] = 0;
                    evictions += 1;
                }
            }
        }
        let allocations = crate::stdx::allocation_guard::allocations_since_armed();
        crate::stdx::allocation_guard::disarm();
        assert_eq!(allocations, 0, "the replica allocated after startup");
        assert!(evictions > 0);
        assert!(harness.replica.metrics().checkpoints > 100);
        assert!(harness.replica.op() > Op(2 * harness.config.journal_slot_count as u64));
    }
}

#[test]
fn log_headers_stop_at_a_stale_wal_entry_at_the_checkpoint_op() {
    // Goal: a WAL entry at the checkpoint op that is not the log's (a stale prepare of the same
    // op, as state sync leaves behind) is not listed with the log's headers, so the
    // do_view_change, start_view and headers bodies built from them pass the receivers'
    // hash-chain check instead of being dropped.
    let mut harness = Harness::new(small_config());
    harness.register(ClientId(7));
    harness.call(ClientId(7), 1, Operation::CreateStream, &event_store::create_body(5));
    let mut request = 2;
    while harness.replica.checkpoint_op() == Op(0) || harness.replica.op() < Op(60) {
        event_store::append(&mut harness, 7, request, 5, u64::from(request - 2) * 3);
        request += 1;
    }
    let checkpoint_op = harness.replica.checkpoint_op();
    let held = *harness.replica.journal.header_with_op(checkpoint_op).expect("held");
    let mut stale = Header::new(Command::Prepare, harness.config.cluster);
    stale.op = checkpoint_op;
    stale.parent = held.parent;
    stale.timestamp = held.timestamp + 1;
    stale.op_min = held.op_min; // grid_blocks
    stale.client = ClientId(99);
    stale.operation = Operation::Register as u8;
    let mut buffer = harness.pool.get();
    buffer.buffer_mut_unique()[..SECTOR_SIZE].fill(0);
    let stale_message = message_finish(buffer, stale, 0);
    assert_ne!(stale_message.header().checksum, held.checksum);
    let journal = &mut harness.replica.journal;
    journal.write_prepare(&mut harness.storage, stale_message);
    harness.run();
    let op_high = harness.replica.op();
    let op_low = checkpoint_op - 4;
    let mut message = harness.pool.get();
    let (first, count) =
        harness.replica.log_headers_write(&mut message, op_low, op_high).expect("head held");
    assert_eq!(first, checkpoint_op + 1);
    let mut header = harness.replica.header_new(Command::Headers);
    header.op = op_high;
    header.op_min = first;
    let message = message_finish(message, header, count * HEADER_SIZE);
    assert_eq!(view_change::view_headers_invalid(&message, View::MAX), None);
    assert!(harness.replica.metrics().log_headers_stale > 0);
}

/// Grid repair with no peer to repair from (the multi-replica cases are scenario tests,
/// `sim::scenario`).
mod grid_repair {
    use super::event_store::{append_body, create_body};
    use super::*;
    use crate::constants::BLOCK_SIZE;

    #[test]
    fn single_replica_with_a_rotten_streams_table_block_fails_clearly() {
        // Goal: with one replica there is no peer to repair from: the open stops with a reason
        // rather than serve a state it cannot verify.
        let mut harness = Harness::new(small_config());
        harness.register(ClientId(7));
        harness.call(ClientId(7), 1, Operation::CreateStream, &create_body(5));
        for request in 2..52u32 {
            harness.call(ClientId(7), request, Operation::Append, &append_body(5, 0, 3));
        }
        let table = harness.replica.checkpoint_state().streams_table_address;
        let blocks = harness.replica.checkpoint_state().streams_table_blocks;
        assert!(harness.replica.checkpoint_op() >= Op(48) && blocks > 0);
        harness.storage.crash();
        let layout = Layout::new(&harness.config);
        let offset = layout.offset(Zone::Grid, table * BLOCK_SIZE as u64 + SECTOR_SIZE as u64);
        harness.storage.corrupt_sector(offset);
        harness.replica = Replica::new(&harness.config, harness.pool.clone(), 1);
        harness.replica.open(&mut harness.storage);
        harness.run();
        assert_eq!(harness.replica.status(), Status::Failed);
        assert_eq!(harness.replica.failure(), Some("the event store checkpoint could not be read"));
    }
}
