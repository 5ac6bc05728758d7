//! Scenario tests of a single-node replica on the in-memory disk: requests, dedup, sessions,
//! checkpoints, WAL wrap-around, crashes and restarts.

use super::*;
use crate::constants::SECTOR_SIZE;
use crate::sim::storage::MemoryStorage;
use crate::vsr::format;
use crate::vsr::header::ClusterId;
use crate::vsr::header::{EvictionReason, Operation};
use crate::vsr::layout::Zone;
use crate::vsr::message_pool::messages_max_replica;

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
        let pool = MessagePool::new(messages_max_replica(), config.message_size_max as usize);
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

mod event_store {
    use super::*;
    use crate::state_machine::constants::EXPECTED_OFFSET_ANY;
    use crate::state_machine::types::{
        AppendEncoder, AppendResult, CreateStream, EventRecord, ReadReplyHeader, ReadStream,
        ResultCode,
    };
    use zerocopy::{FromBytes, IntoBytes};

    pub(crate) fn create_body(stream: u64) -> Vec<u8> {
        CreateStream { stream, tenant: 1 }.as_bytes().to_vec()
    }

    /// An append of `count` 16-byte events numbered from `first`.
    pub(crate) fn append_body(stream: u64, first: u64, count: u64) -> Vec<u8> {
        let size = AppendEncoder::batch_size((0..count).map(|_| 16));
        let mut body = vec![0; size];
        let mut encoder = AppendEncoder::new(&mut body);
        encoder.batch_begin(stream, EXPECTED_OFFSET_ANY);
        for number in first..first + count {
            let data = encoder.event(16);
            data[..8].copy_from_slice(&number.to_le_bytes());
            data[8..].copy_from_slice(&stream.to_le_bytes());
        }
        assert_eq!(encoder.finish(), size);
        body
    }

    fn read_body(stream: u64, offset_from: u64) -> Vec<u8> {
        ReadStream { stream, offset_from, count_max: 1000, reserved: 0 }.as_bytes().to_vec()
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
                let (record, data) = EventRecord::read_from_prefix(rest).unwrap();
                assert_eq!(record.offset, numbers.len() as u64);
                numbers.push(u64::from_le_bytes(data[..8].try_into().unwrap()));
                rest = &data[16..];
            }
            if head.event_count == 0 || head.next >= head.end {
                return numbers;
            }
        }
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

/// Scenario tests of a replicated cluster on an in-process, loss-free network.
mod cluster {
    use super::event_store::{append_body, create_body};
    use super::*;
    use crate::state_machine::types::{AppendResult, ResultCode};
    use zerocopy::FromBytes;

    pub(super) struct Node {
        pub harness: Harness,
        pub up: bool,
    }

    pub(super) struct Cluster {
        pub nodes: Vec<Node>,
        /// Messages to clients, in the order sent.
        to_clients: Vec<(ReplicaIndex, ClientId, Message)>,
        realtime_ns: u64,
    }

    fn config(replica: u8, replica_count: u8) -> Config {
        Config { replica: ReplicaIndex(replica), replica_count, ..small_config() }
    }

    impl Cluster {
        pub(super) fn new(replica_count: u8) -> Cluster {
            let nodes = (0..replica_count)
                .map(|replica| Node {
                    harness: Harness::new(config(replica, replica_count)),
                    up: true,
                })
                .collect();
            Cluster { nodes, to_clients: Vec::new(), realtime_ns: 1 }
        }

        /// Delivers messages and completions until nothing moves.
        pub(super) fn run(&mut self) {
            loop {
                let mut moved = false;
                for index in 0..self.nodes.len() {
                    if !self.nodes[index].up {
                        continue;
                    }
                    let node = &mut self.nodes[index].harness;
                    node.run();
                    let sent: Vec<_> = node.sent.drain(..).collect();
                    for (destination, message) in sent {
                        moved = true;
                        self.deliver(index as u8, destination, message);
                    }
                }
                if !moved {
                    return;
                }
            }
        }

        fn deliver(&mut self, from: u8, destination: Destination, message: Message) {
            match destination {
                Destination::Client(client) => {
                    self.to_clients.push((ReplicaIndex(from), client, message))
                }
                Destination::Replica(replica) => {
                    let node = &mut self.nodes[usize::from(replica)];
                    if !node.up {
                        return;
                    }
                    let mut copy = node.harness.pool.get();
                    let size = message.bytes().len();
                    copy.buffer_mut_unique()[..size].copy_from_slice(message.bytes());
                    let storage = &mut node.harness.storage;
                    replica_deliver(&mut node.harness.replica, storage, copy);
                }
            }
        }

        pub(super) fn tick(&mut self, count: usize) {
            for _ in 0..count {
                self.realtime_ns += 10_000_000;
                for node in self.nodes.iter_mut().filter(|node| node.up) {
                    let harness = &mut node.harness;
                    harness.replica.on_tick(&mut harness.storage, self.realtime_ns);
                }
                self.run();
            }
        }

        /// Sends a request to `replica` and returns what came back to that client.
        pub(super) fn call(
            &mut self,
            replica: u8,
            client: ClientId,
            request: u32,
            operation: Operation,
            body: &[u8],
        ) -> Vec<Message> {
            let node = &mut self.nodes[replica as usize].harness;
            let message = node.request(client, request, operation, body);
            replica_deliver(&mut node.replica, &mut node.storage, message);
            self.run();
            let replies = self
                .to_clients
                .iter()
                .filter(|(_, to, _)| *to == client)
                .map(|(_, _, message)| message.clone())
                .collect();
            self.to_clients.clear();
            replies
        }
    }

    fn append_ok(cluster: &mut Cluster, client: ClientId, request: u32, first: u64) -> u64 {
        let replies =
            cluster.call(0, client, request, Operation::Append, &append_body(5, first, 3));
        assert_eq!(replies.len(), 1);
        let result = AppendResult::read_from_prefix(replies[0].body()).unwrap().0;
        assert_eq!(result.result, ResultCode::Ok as u32);
        result.offset
    }

    #[test]
    fn backup_redirects_a_write_to_the_primary() {
        // Goal: a client that writes to a backup is told the view, hence the primary.
        let mut cluster = Cluster::new(3);
        let replies = cluster.call(1, ClientId(7), 0, Operation::Register, &[]);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].header().command(), Some(Command::PongClient));
        assert_eq!(replies[0].header().view, View(0));
    }

    #[test]
    fn backup_serves_reads_once_it_has_the_clients_commit() {
        // Goal: reads go to any replica; a read carrying a commit number the backup has not
        // executed yet is not answered from stale state, and is once the backup caught up.
        use crate::state_machine::types::{ReadReplyHeader, ReadStream};
        use zerocopy::IntoBytes;
        let mut cluster = Cluster::new(3);
        cluster.call(0, ClientId(7), 0, Operation::Register, &[]);
        cluster.call(0, ClientId(7), 1, Operation::CreateStream, &create_body(5));
        append_ok(&mut cluster, ClientId(7), 2, 0);
        let commit = cluster.nodes[0].harness.replica.commit_min();
        let body = ReadStream { stream: 5, offset_from: 0, count_max: 10, reserved: 0 };
        let read = |cluster: &mut Cluster| {
            let node = &mut cluster.nodes[1].harness;
            let mut message = node.request(ClientId(8), 1, Operation::ReadStream, body.as_bytes());
            let header = message.header_mut();
            header.commit = commit;
            header.set_checksum();
            replica_deliver(&mut node.replica, &mut node.storage, message);
            cluster.run();
            let replies: Vec<Message> = cluster.to_clients.drain(..).map(|(_, _, m)| m).collect();
            replies
        };
        if cluster.nodes[1].harness.replica.commit_min() < commit {
            assert!(read(&mut cluster).is_empty());
        }
        cluster.tick(2);
        assert!(cluster.nodes[1].harness.replica.commit_min() >= commit);
        let replies = read(&mut cluster);
        assert_eq!(replies.len(), 1);
        let head = ReadReplyHeader::read_from_prefix(replies[0].body()).unwrap().0;
        assert_eq!(head.event_count, 3);
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

/// Scenario tests of grid repair: a grid block that rots on one replica is fetched again from
/// a peer, by address and checksum, at open, on a read, and by the scrubber.
mod grid_repair {
    use super::cluster::Cluster;
    use super::event_store::{append_body, create_body};
    use super::*;
    use crate::constants::BLOCK_SIZE;
    use crate::state_machine::types::{
        AppendResult, EventRecord, ReadReplyHeader, ReadStream, ResultCode,
    };
    use zerocopy::{FromBytes, IntoBytes};

    /// A 3-replica cluster past its first checkpoint: stream 5 holds 150 events in a sealed
    /// event block (grid address 0), and the streams table follows it.
    fn cluster_checkpointed() -> Cluster {
        let mut cluster = Cluster::new(3);
        cluster.call(0, ClientId(7), 0, Operation::Register, &[]);
        cluster.call(0, ClientId(7), 1, Operation::CreateStream, &create_body(5));
        for request in 2..52u32 {
            let body = append_body(5, u64::from(request - 2) * 3, 3);
            let replies = cluster.call(0, ClientId(7), request, Operation::Append, &body);
            let result = AppendResult::read_from_prefix(replies[0].body()).unwrap().0;
            assert_eq!(result.result, ResultCode::Ok as u32);
        }
        cluster.tick(3);
        for node in &cluster.nodes {
            let state = node.harness.replica.checkpoint_state();
            assert!(node.harness.replica.checkpoint_op() >= Op(48));
            assert!(state.streams_table_blocks > 0 && state.streams_table_address > 0);
        }
        cluster
    }

    /// Flips a bit in the second sector of grid block `address` of replica `replica`.
    fn grid_block_rot(cluster: &mut Cluster, replica: usize, address: u64) {
        let harness = &mut cluster.nodes[replica].harness;
        let layout = Layout::new(&harness.config);
        let offset = layout.offset(Zone::Grid, address * BLOCK_SIZE as u64 + SECTOR_SIZE as u64);
        harness.storage.corrupt_sector(offset);
    }

    /// The bytes of grid blocks `[0, blocks)` of replica `replica`.
    fn grid_bytes(cluster: &Cluster, replica: usize, blocks: u64) -> Vec<u8> {
        let harness = &cluster.nodes[replica].harness;
        let start = Layout::new(&harness.config).zone_offset(Zone::Grid) as usize;
        harness.storage.bytes()[start..start + blocks as usize * BLOCK_SIZE].to_vec()
    }

    /// Reads stream 5 from `replica`: the result code and the events' offsets.
    fn read_stream(cluster: &mut Cluster, replica: u8, request: u32) -> (u32, Vec<u64>) {
        let body = ReadStream { stream: 5, offset_from: 0, count_max: 1000, reserved: 0 };
        let replies =
            cluster.call(replica, ClientId(8), request, Operation::ReadStream, body.as_bytes());
        assert_eq!(replies.len(), 1, "a read gets one reply");
        let (head, mut rest) = ReadReplyHeader::read_from_prefix(replies[0].body()).unwrap();
        let mut offsets = Vec::new();
        for _ in 0..head.event_count {
            let (record, data) = EventRecord::read_from_prefix(rest).unwrap();
            offsets.push(record.offset);
            rest = &data[(record.size_bytes as usize).next_multiple_of(8)..];
        }
        (head.result, offsets)
    }

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
        assert!(harness.replica.checkpoint_op() >= Op(48) && table > 0);
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

    #[test]
    fn rotten_event_block_is_repaired_from_a_peer_after_a_read_finds_it() {
        // Goal: a read that meets a rotten event block answers block_corrupt (never wrong
        // events, and retryable), and the replica fetches the block from a peer: the retry
        // returns every event.
        let mut cluster = cluster_checkpointed();
        grid_block_rot(&mut cluster, 1, 0);
        let (result, offsets) = read_stream(&mut cluster, 1, 1);
        assert_eq!(result, ResultCode::BlockCorrupt as u32);
        assert!(offsets.is_empty());
        cluster.tick(20);
        let (result, offsets) = read_stream(&mut cluster, 1, 2);
        assert_eq!(result, ResultCode::Ok as u32);
        assert_eq!(offsets, (0..150).collect::<Vec<u64>>());
        let replica = &cluster.nodes[1].harness.replica;
        assert_eq!(replica.metrics().grid_blocks_repaired_read, 1);
    }

    #[test]
    fn repairing_a_sound_block_from_a_rotten_peer_copy_never_damages_it() {
        // Goal: a block queued for repair although its own copy is sound (a scrub that raced a
        // repair write, a fault found twice) is never overwritten with a peer's rotten copy:
        // a fetched block is written only once the whole of it checks. R2 is down and R1's copy
        // of block 0 has rotted, so if R0 took R1's chunks as they came, no sound copy would be
        // left to repair either from.
        let mut cluster = cluster_checkpointed();
        let table = cluster.nodes[0].harness.replica.checkpoint_state().streams_table_address;
        let blocks = table + 1;
        let sound = grid_bytes(&cluster, 0, blocks);
        cluster.nodes[2].up = false;
        grid_block_rot(&mut cluster, 1, 0);
        let block = crate::state_machine::BlockFault { address: 0, checksum: None };
        let replica = &mut cluster.nodes[0].harness.replica;
        assert!(
            replica.grid_fault_queue(block, crate::vsr::replica::grid_repair::RepairCause::Scrub)
        );
        let ticks = 4 * blocks * crate::constants::GRID_SCRUB_BLOCK_TICKS;
        cluster.tick(ticks as usize);
        assert!(grid_bytes(&cluster, 0, blocks) == sound, "R0's sound block was overwritten");
        assert!(grid_bytes(&cluster, 1, blocks) == sound, "R1's rotten block was not repaired");
        for replica in 0..2 {
            let replica = &cluster.nodes[replica].harness.replica;
            assert_eq!(replica.grid_faults_pending(), 0);
        }
        let refused = cluster.nodes[0].harness.replica.metrics().grid_repair_blocks_refused;
        assert!(refused > 0, "R0 never met R1's rotten copy");
    }
}

/// A WAL with faulty entries meeting view changes, restarts and stale messages, on the
/// in-process cluster (scenarios a review of the faulty-WAL vote found).
mod faulty_wal {
    use super::cluster::Cluster;
    use super::event_store::{append_body, create_body};
    use super::*;

    fn restart(harness: &mut Harness) {
        harness.storage.crash();
        harness.sent.clear();
        harness.replica = Replica::new(&harness.config, harness.pool.clone(), 1);
        harness.replica.open(&mut harness.storage);
        harness.run();
        assert!(harness.replica.status().is_open(), "{:?}", harness.replica.failure());
    }

    fn prepare_rot(harness: &mut Harness, op: Op) {
        let layout = Layout::new(&harness.config);
        let slot = op.get() % u64::from(harness.config.journal_slot_count);
        let offset = layout.zone_offset(Zone::WalPrepares) + slot * layout.message_size_max;
        harness.storage.corrupt_sector(offset);
    }

    /// Rots every header in the sector of the WAL's header ring that holds `op`'s header.
    fn header_sector_rot(harness: &mut Harness, op: Op) {
        let layout = Layout::new(&harness.config);
        let slot = op.get() % u64::from(harness.config.journal_slot_count);
        let sector = slot as usize * HEADER_SIZE / SECTOR_SIZE;
        let start = layout.zone_offset(Zone::WalHeaders) as usize + sector * SECTOR_SIZE;
        for header in harness.storage.bytes_mut()[start..][..SECTOR_SIZE].chunks_mut(HEADER_SIZE) {
            header[17] ^= 0x40;
        }
    }

    /// Hands `message` to replica `index` (a copy, as the network would).
    fn deliver(cluster: &mut Cluster, index: usize, message: &Message) {
        let node = &mut cluster.nodes[index].harness;
        let mut copy = node.pool.get();
        let size = message.bytes().len();
        copy.buffer_mut_unique()[..size].copy_from_slice(message.bytes());
        replica_deliver(&mut node.replica, &mut node.storage, copy);
        node.run();
    }

    /// Client 7 registers, creates stream 5 and appends `appends` times, through R0.
    fn cluster_loaded(appends: u32) -> Cluster {
        let mut cluster = Cluster::new(3);
        cluster.call(0, ClientId(7), 0, Operation::Register, &[]);
        cluster.call(0, ClientId(7), 1, Operation::CreateStream, &create_body(5));
        for request in 2..2 + appends {
            let body = append_body(5, u64::from(request - 2) * 3, 3);
            cluster.call(0, ClientId(7), request, Operation::Append, &body);
        }
        cluster.tick(3);
        cluster
    }

    /// R0, primary of view 0, prepares client 7's request `request`; only R1 receives the
    /// prepare (its prepare_ok is lost), and R0 crashes before its own write lands.
    fn prepare_only_r1_holds(cluster: &mut Cluster, request: u32, operation: Operation) {
        let body = if operation == Operation::Append { append_body(5, 12, 3) } else { vec![] };
        let message = cluster.nodes[0].harness.request(ClientId(7), request, operation, &body);
        let node = &mut cluster.nodes[0].harness;
        replica_deliver(&mut node.replica, &mut node.storage, message);
        let mut prepares = Vec::new();
        while let Some((destination, message)) = cluster.nodes[0].harness.replica.poll_send() {
            let prepare = message.header().command() == Some(Command::Prepare);
            if destination == Destination::Replica(ReplicaIndex(1)) && prepare {
                prepares.push(message);
            }
        }
        assert_eq!(prepares.len(), 1);
        deliver(cluster, 1, &prepares[0]);
        cluster.nodes[1].harness.sent.clear();
        restart(&mut cluster.nodes[0].harness);
    }

    #[test]
    fn a_restarted_primary_never_prepares_again_an_op_a_backup_acknowledged() {
        // Goal: R0, primary of view 0, prepares op 1 (a register); R1 acknowledges it, and R0
        // crashes before its own write lands. Back with op 0, R0 must not lead view 0 again:
        // it would prepare another op 1 and commit it with R2, while R1's acknowledged op 1
        // may win the next view change. It goes through a view change instead.
        let mut cluster = Cluster::new(3);
        prepare_only_r1_holds(&mut cluster, 0, Operation::Register);
        assert!(cluster.nodes[1].harness.replica.prepare_header(Op(1)).is_some());
        assert_ne!(cluster.nodes[0].harness.replica.status(), Status::Normal);
        cluster.call(0, ClientId(8), 0, Operation::Register, &[]);
        for _ in 0..100 {
            cluster.tick(10);
            let primary = cluster.nodes.iter().find(|node| {
                let replica = &node.harness.replica;
                replica.view() > View(0)
                    && replica.status() == Status::Normal
                    && replica.is_primary()
            });
            if primary.is_some() {
                break;
            }
        }
        let view = cluster.nodes[1].harness.replica.view();
        assert!(view > View(0), "no view change");
        let primary = view.primary(3);
        cluster.call(primary.get(), ClientId(8), 0, Operation::Register, &[]);
        cluster.tick(5);
        // Every replica agrees on op 1, whichever it is (R1's, never committed, may be cut).
        let committed = cluster.nodes[usize::from(primary)].harness.replica.prepare_header(Op(1));
        assert!(committed.is_some());
        for node in &cluster.nodes {
            let replica = &node.harness.replica;
            assert_eq!(replica.failure(), None);
            assert!(replica.commit_min() >= Op(1), "{}", replica.debug_state());
            assert_eq!(replica.prepare_header(Op(1)), committed);
        }
    }

    #[test]
    fn faulty_backup_that_acknowledged_an_uncommitted_op_does_not_stall_the_view_change() {
        // Goal: R1 acknowledged op N+1, which only it holds (R0 crashed before its own write
        // landed, R2 never got it), and comes back with op N's prepare rotten, so it may have
        // acknowledged up to N+1. R0 and R2 both lack N+1: a nack quorum, so it never
        // committed, and the view change must start from their log rather than wait forever.
        let mut cluster = cluster_loaded(4);
        let n = cluster.nodes[0].harness.replica.op();
        prepare_only_r1_holds(&mut cluster, 6, Operation::Append);
        assert_eq!(cluster.nodes[1].harness.replica.op(), n + 1);
        prepare_rot(&mut cluster.nodes[1].harness, n);
        restart(&mut cluster.nodes[1].harness);
        assert!(cluster.nodes[1].harness.replica.op_acknowledged_max() > n);
        cluster.tick(3_000);
        let started = cluster.nodes.iter().any(|node| {
            let replica = &node.harness.replica;
            replica.status() == Status::Normal && replica.is_primary() && replica.view() > View(0)
        });
        assert!(started, "no view started");
    }

    #[test]
    fn after_state_sync_a_stale_entry_below_the_checkpoint_is_not_the_replicas_log() {
        // Goal: R1 holds op N+1, which only it received (R0 crashed before its own write
        // landed), and comes back with N's prepare rotten, so it keeps N+1 above the fault.
        // While R1 is away, R0 and R2 start a new view without it, commit far past R1's WAL
        // window, and R1 catches up by state sync to a checkpoint above N+1. The prepare still
        // in R1's WAL at N+1 is another log's: R1 must not report or serve it as its log's
        // (VOPR seed 11001452347455478131 saw it as an agreement violation; here the view's
        // log install removes the entry before the sync, so this guards the outcome only).
        let mut cluster = cluster_loaded(4);
        let n = cluster.nodes[0].harness.replica.op();
        prepare_only_r1_holds(&mut cluster, 6, Operation::Append);
        prepare_rot(&mut cluster.nodes[1].harness, n);
        restart(&mut cluster.nodes[1].harness);
        let stale = cluster.nodes[1].harness.replica.prepare_header(n + 1).expect("kept");
        cluster.nodes[1].up = false;
        let mut primary = None;
        for _ in 0..200 {
            cluster.tick(10);
            primary = (0..3u8).find(|&index| {
                let replica = &cluster.nodes[usize::from(index)].harness.replica;
                replica.view() > View(0)
                    && replica.status() == Status::Normal
                    && replica.is_primary()
            });
            if primary.is_some() {
                break;
            }
        }
        let primary = primary.expect("R0 and R2 start a view");
        cluster.call(primary, ClientId(8), 0, Operation::Register, &[]);
        cluster.call(primary, ClientId(8), 1, Operation::CreateStream, &create_body(6));
        let slot_count = u64::from(cluster.nodes[0].harness.config.journal_slot_count);
        for request in 2..2 + 3 * slot_count as u32 {
            let body = append_body(6, u64::from(request - 2), 1);
            assert_eq!(
                cluster.call(primary, ClientId(8), request, Operation::Append, &body).len(),
                1
            );
        }
        cluster.nodes[1].up = true;
        for _ in 0..300 {
            cluster.tick(10);
            if cluster.nodes[1].harness.replica.metrics().state_syncs > 0 {
                break;
            }
        }
        let r1 = &cluster.nodes[1].harness.replica;
        assert!(r1.metrics().state_syncs > 0, "{}", r1.debug_state());
        assert!(r1.checkpoint_op() > n + 1, "{}", r1.debug_state());
        assert_ne!(r1.prepare_header(n + 1), Some(stale), "{}", r1.debug_state());
    }

    #[test]
    fn a_faulty_backup_in_a_quiet_cluster_repairs_its_log_below_a_loose_bound() {
        // Goal: R1 comes back with the header sector of its head rotten: the sector hides up
        // to 31 more ops it may have acknowledged, so its bound lies above the cluster's head,
        // which no client pushes further. It must still repair its log from the start_view
        // that answers its own request_start_view (VOPR seeds 15394890388178592913 and
        // 14952920115053208388 stalled here); that log holds all it acknowledged, so the
        // bound goes.
        let mut cluster = cluster_loaded(4);
        let n = cluster.nodes[0].harness.replica.op();
        header_sector_rot(&mut cluster.nodes[1].harness, n);
        restart(&mut cluster.nodes[1].harness);
        let bound = cluster.nodes[1].harness.replica.op_acknowledged_max();
        assert!(cluster.nodes[1].harness.replica.log_faulty());
        let state = cluster.nodes[1].harness.replica.debug_state();
        assert!(bound > n, "the rotten sector hides ops above the head: {bound} {n} {state}");
        cluster.tick(1_000);
        let r1 = &cluster.nodes[1].harness.replica;
        assert!(!r1.log_faulty(), "{}", r1.debug_state());
        assert_eq!((r1.op(), r1.commit_min()), (n, n), "{}", r1.debug_state());
        assert_eq!(r1.op_acknowledged_max(), n);
        assert_eq!(r1.metrics().start_views_below_acknowledged, 1);
        for op in Op(1).through(n) {
            let primary = cluster.nodes[0].harness.replica.prepare_header(op);
            assert_eq!(r1.prepare_header(op), primary, "op {op}");
        }
    }

    #[test]
    fn an_old_start_view_never_makes_a_faulty_backup_sound_below_what_it_acknowledged() {
        // Goal: a start_view of view 0 with head N, delayed in the network, reaches R1 after
        // R1 acknowledged N+1..N+3 (committed with R0; R2 missed them) and came back with
        // N+2's prepare rotten. Taken, its truncation would erase N+1 and N+3, and with them
        // the evidence of R1's bound at its next open, and the next view (R0 dead) would lose
        // the committed ops. R1 must ignore it, across a restart too.
        let mut cluster = cluster_loaded(4);
        let n = cluster.nodes[0].harness.replica.op();
        let old_start_view = {
            let replica = &mut cluster.nodes[0].harness.replica;
            replica.send_start_view(ReplicaIndex(1), 0);
            let mut found = None;
            while let Some((_, message)) = replica.poll_send() {
                if message.header().command() == Some(Command::StartView) {
                    found = Some(message);
                }
            }
            found.expect("a start_view")
        };
        cluster.nodes[2].up = false;
        for request in 6..9u32 {
            let body = append_body(5, u64::from(request - 2) * 3, 3);
            let replies = cluster.call(0, ClientId(7), request, Operation::Append, &body);
            assert_eq!(replies.len(), 1, "acknowledged to the client");
        }
        assert_eq!(cluster.nodes[0].harness.replica.commit_min(), n + 3);
        let committed = cluster.nodes[0].harness.replica.prepare_header(n + 3).unwrap();
        prepare_rot(&mut cluster.nodes[1].harness, n + 2);
        restart(&mut cluster.nodes[1].harness);
        assert!(cluster.nodes[1].harness.replica.log_faulty());
        assert!(cluster.nodes[1].harness.replica.op_acknowledged_max() >= n + 3);
        cluster.nodes[0].up = false;
        deliver(&mut cluster, 1, &old_start_view);
        cluster.run();
        let r1 = &cluster.nodes[1].harness.replica;
        assert!(r1.log_faulty() && r1.op_acknowledged_max() >= n + 3, "{}", r1.debug_state());
        assert_eq!(r1.metrics().start_views_below_acknowledged, 0);
        restart(&mut cluster.nodes[1].harness);
        let r1 = &cluster.nodes[1].harness.replica;
        assert!(r1.log_faulty() && r1.op_acknowledged_max() >= n + 3, "{}", r1.debug_state());
        // Only R1 (rotten at N+2) and R0 (down) hold N+1..N+3: no view may start without them.
        cluster.nodes[2].up = true;
        for _ in 0..150 {
            cluster.tick(10);
            for index in [1, 2] {
                let replica = &cluster.nodes[index].harness.replica;
                if replica.view() > View(0) && replica.status() == Status::Normal {
                    assert_eq!(replica.prepare_header(n + 3), Some(committed), "R{index}");
                }
            }
        }
        let waits = |index: usize| {
            cluster.nodes[index].harness.replica.metrics().view_change_waits_for_faulty
        };
        assert!(waits(1) + waits(2) > 0, "a new primary must have waited for a sound log");
        cluster.nodes[0].up = true;
        cluster.tick(1_500);
        for index in 0..3 {
            let held = cluster.nodes[index].harness.replica.prepare_header(n + 3);
            assert_eq!(held, Some(committed), "R{index} lost the committed op N+3");
        }
    }
}
