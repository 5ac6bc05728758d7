//! Simulated clients: each runs the client core (`crate::vsr::client`), the same session rules
//! as the TCP client, driven by the simulator's ticks instead of sockets and a clock.
//!
//! Each client registers, creates its own stream, then appends batches of events to it and
//! reads (read_stream and stream_info of its stream, read_log of the whole log), one request
//! in flight at a time. The core decides where each copy goes (the primary it believes in,
//! the next replica after a timeout, the primary a `pong_client` names) and which reply
//! answers it. An eviction ends the client's session: it takes a new id from the PRNG and
//! registers again, and whatever it had in flight has an unknown outcome.
//!
//! The workload records every write reply that reaches a client (for the checker: the
//! cluster must never answer one request two ways) and every reply a client accepted as the
//! answer to its request. It keeps a model of each client's stream (`model::StreamModel`) and
//! reports an append, create or read result that contradicts it: a stale reply taken for a
//! later request shows up there.

mod model;

use std::collections::BTreeMap;

use zerocopy::{FromBytes, IntoBytes};

use crate::constants::{HEADER_SIZE, TICK_MS};
use crate::sim::workload::model::event_checksum;
use crate::state_machine::constants::{EXPECTED_NO_STREAM, EXPECTED_OFFSET_ANY};
use crate::state_machine::types::{
    AppendEncoder, AppendResult, CreateStream, CreateStreamResult, Event, ReadLog, ReadStream,
    ResultCode, StreamInfo,
};
use crate::stdx::prng::Prng;
use crate::vsr::client::{ClientCore, ClientMetrics, ClientOptions, Outcome, ReadOptions};
use crate::vsr::header::views;
use crate::vsr::header::{
    Checksum, ClientId, ClusterId, Command, EvictionReason, Header, Op, Operation, ReplicaIndex,
    View,
};
use crate::vsr::message_pool::{Message, MessagePool};
use model::StreamModel;

/// Buffers each client's pool holds: the request in flight, one being delivered, and slack.
const CLIENT_MESSAGES_MAX: usize = 4;
/// The backoff's cap, in request timeouts.
const REQUEST_TIMEOUT_MAX_FACTOR: u64 = 4;
/// Events a simulated read asks for, at most.
const READ_COUNT_MAX: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadOptions {
    pub client_count: usize,
    pub replica_count: u8,
    pub cluster: ClusterId,
    pub message_size_max: usize,
    /// Ticks a request waits for its first reply before it is sent again (then backoff).
    pub request_timeout_ticks: u64,
    /// Ticks a client waits, at most, between a reply and its next request.
    pub think_ticks_max: u64,
    /// The longest a read asks a replica to wait for events (`wait_ms`), in ticks; 0: reads
    /// never wait. Half the reads then wait, from the end of what the client knows.
    pub read_wait_ticks_max: u64,
    /// Half the reads are linearizable; a read_log's reply must then cover every event
    /// acknowledged to any client before it was sent.
    pub read_linearizable: bool,
    pub events_per_append_max: u32,
    pub event_size_max: u32,
    /// The replicas' session table size: while no more client ids than this ever registered,
    /// the table never filled, and no session may be evicted.
    pub clients_max: u32,
}

/// A reply as a client received it: what the checker compares with the committed log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyRecord {
    pub client: ClientId,
    pub request: u32,
    pub op: Op,
    pub operation: u8,
    /// The checksum of the request it answers (the prepare's `context`).
    pub request_checksum: Checksum,
    pub body_checksum: Checksum,
    pub view: View,
    pub replica: ReplicaIndex,
}

/// A reply that contradicts the client's model of its own stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelViolation {
    pub client: ClientId,
    pub request: u32,
    pub op: Op,
    pub reason: &'static str,
}

crate::vsr::counters::counters! {
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadMetrics {
    pub requests_sent: u64,
    pub retries: u64,
    pub replies_accepted: u64,
    pub replies_other: u64,
    pub evictions: u64,
    pub pongs: u64,
    pub appends_ok: u64,
    /// Appends to "no stream" that created their client's stream.
    pub streams_created_by_append: u64,
    /// Appends refused whole for an event without a type, as they must be.
    pub appends_untyped_refused: u64,
    pub events_appended: u64,
    pub storage_full: u64,
    pub rejected: u64,
    /// Read replies accepted and checked against the clients' models.
    pub reads_checked: u64,
    /// Events of the clients' own streams in those replies, each checked.
    pub read_events_checked: u64,
    /// Reads that met a grid block failing verification.
    pub reads_block_corrupt: u64,
    /// Replies the client core dropped as answers to another request (duplicates, late).
    pub client_reply_duplicate_dropped: u64,
    /// Requests sent again by the client core (timeouts, redirects).
    pub client_requests_resent: u64,
    pub client_redirects: u64,
    /// Requests asked again soon of a primary between views.
    pub client_primary_busy: u64,
    /// `busy` answers (no room for the request), each followed by a copy after a backoff.
    pub client_busy: u64,
}
}

/// An append in flight, as its reply is checked.
struct AppendAsked<'a> {
    checksums: &'a [Checksum],
    expected_offset: Option<u64>,
    untyped: bool,
}

/// What the request in flight is, beyond what the core tracks: what the model needs to check
/// its reply.
enum Ask {
    Register,
    CreateStream,
    Append {
        /// The `event_checksum` of each event, in order.
        checksums: Vec<Checksum>,
        /// The append asked for this exact offset (not `EXPECTED_OFFSET_ANY`).
        expected_offset: Option<u64>,
        /// An event has an empty type: the batch must be refused with `event_type_empty`.
        untyped: bool,
    },
    StreamInfo,
    ReadStream {
        offset_from: u64,
    },
    ReadLog {
        position_from: u64,
        /// A linearizable read: the events acknowledged to any client before it was sent, all
        /// of which its reply's `end` must cover (0 for another read).
        end_min: u64,
    },
}

struct InFlight {
    message: Message,
    ask: Ask,
}

struct SimClient {
    core: ClientCore,
    pool: MessagePool,
    in_flight: Option<InFlight>,
    idle_until_tick: u64,
    model: StreamModel,
}

pub struct Workload {
    options: WorkloadOptions,
    prng: Prng,
    clients: Vec<SimClient>,
    /// Every id any client has had, to route a message to its client.
    client_ids: BTreeMap<ClientId, usize>,
    /// Whether clients start new requests (false once the simulation waits for liveness).
    issuing: bool,
    /// Every write reply delivered to a client, in order, until the checker takes them.
    replies_received: Vec<ReplyRecord>,
    /// Write replies accepted by their client as the answer to its request.
    acknowledged: Vec<ReplyRecord>,
    violations: Vec<ModelViolation>,
    /// Client ids that registered or will (one per client, plus one per eviction).
    client_ids_used: u64,
    /// A replica installed a checkpoint by state sync: it holds no cached replies for the
    /// sessions of that checkpoint, and evicts a session whose last request is retried there.
    replies_may_be_lost: bool,
    metrics: WorkloadMetrics,
}

impl Workload {
    pub fn new(options: WorkloadOptions, seed: u64) -> Workload {
        assert!(options.client_count > 0);
        assert!(options.replica_count > 0);
        assert!(options.request_timeout_ticks > 0);
        assert!(options.events_per_append_max > 0 && options.event_size_max > 0);
        let body_size_max = options.message_size_max - HEADER_SIZE;
        let events = (0..options.events_per_append_max).map(|_| u64::from(options.event_size_max));
        assert!(AppendEncoder::batch_size(events) <= body_size_max);
        let mut workload = Workload {
            options,
            prng: Prng::new(seed),
            clients: Vec::with_capacity(options.client_count),
            client_ids: BTreeMap::new(),
            issuing: true,
            replies_received: Vec::new(),
            acknowledged: Vec::new(),
            violations: Vec::new(),
            client_ids_used: options.client_count as u64,
            replies_may_be_lost: false,
            metrics: WorkloadMetrics::default(),
        };
        let core_options = ClientOptions {
            cluster: options.cluster,
            replica_count: options.replica_count,
            request_timeout: options.request_timeout_ticks,
            request_timeout_max: options.request_timeout_ticks * REQUEST_TIMEOUT_MAX_FACTOR,
            redirect_delay: 1,
            primary_busy_delay: 5,
            busy_delay: 2,
        };
        for index in 0..options.client_count {
            let id = workload.client_id_new(index);
            let core = ClientCore::new(core_options, id, workload.prng.next_u64());
            let pool = MessagePool::new(CLIENT_MESSAGES_MAX, options.message_size_max);
            let idle_until_tick = workload.prng.next_u64() % (options.think_ticks_max + 1);
            let model = StreamModel::new(index as u64 + 1);
            let client = SimClient { core, pool, in_flight: None, idle_until_tick, model };
            workload.clients.push(client);
        }
        workload
    }

    /// A fresh, nonzero client id not used before, now belonging to client `index`.
    fn client_id_new(&mut self, index: usize) -> ClientId {
        loop {
            let id = ClientId(self.prng.next_u64());
            if id != ClientId::NONE && !self.client_ids.contains_key(&id) {
                self.client_ids.insert(id, index);
                return id;
            }
        }
    }

    /// The workload's counters, with the client cores' summed in.
    pub fn metrics(&self) -> WorkloadMetrics {
        let mut metrics = self.metrics;
        for client in &self.clients {
            let core: ClientMetrics = client.core.metrics();
            metrics.retries += core.client_requests_resent;
            metrics.client_requests_resent += core.client_requests_resent;
            metrics.client_reply_duplicate_dropped += core.client_reply_duplicate_dropped;
            metrics.client_redirects += core.client_redirects;
            metrics.client_primary_busy += core.client_primary_busy;
            metrics.client_busy += core.client_busy;
        }
        metrics
    }

    /// Which client a message addressed to `client` goes to.
    pub fn client_index(&self, client: ClientId) -> Option<usize> {
        self.client_ids.get(&client).copied()
    }

    pub fn client_pool(&self, index: usize) -> &MessagePool {
        &self.clients[index].pool
    }

    /// Stops starting new requests; requests in flight go on until answered.
    pub fn stop_issuing(&mut self) {
        self.issuing = false;
    }

    /// Every client has its latest request answered.
    pub fn idle(&self) -> bool {
        self.clients.iter().all(|client| client.in_flight.is_none())
    }

    /// Requests still waiting for a reply.
    pub fn in_flight_count(&self) -> usize {
        self.clients.iter().filter(|client| client.in_flight.is_some()).count()
    }

    pub fn acknowledged(&self) -> &[ReplyRecord] {
        &self.acknowledged
    }

    /// The replies received since the last call, for the checker.
    pub fn replies_received_take(&mut self, replies: &mut Vec<ReplyRecord>) {
        replies.append(&mut self.replies_received);
    }

    pub fn violations(&self) -> &[ModelViolation] {
        &self.violations
    }

    /// Advances every client to `tick`: sends the copies its core says are due (first sends
    /// and retries), and starts new requests. What clients send is appended to `sends` as
    /// (client index, replica, message).
    pub fn tick(&mut self, tick: u64, sends: &mut Vec<(usize, ReplicaIndex, Message)>) {
        for index in 0..self.clients.len() {
            let client = &self.clients[index];
            if client.in_flight.is_none() && self.issuing && tick >= client.idle_until_tick {
                self.request_start(index, tick);
            }
            let client = &mut self.clients[index];
            let Some(in_flight) = client.in_flight.as_ref() else {
                continue;
            };
            if let Some(target) = client.core.poll_send(tick) {
                self.metrics.requests_sent += 1;
                sends.push((index, target, in_flight.message.clone()));
            }
        }
    }

    /// Builds client `index`'s next request: register, create its stream, append, or read.
    fn request_start(&mut self, index: usize, tick: u64) {
        let client = &self.clients[index];
        assert!(client.in_flight.is_none());
        let mut message = client.pool.get();
        let mut read = ReadOptions::default();
        let (operation, body_size, ask) = if !client.core.registered() {
            (Operation::Register, 0, Ask::Register)
        } else if !client.model.created && client.model.created_by_append() {
            self.append_body_build(index, &mut message)
        } else if !client.model.created {
            let stream = client.model.stream;
            let create = CreateStream { stream, tenant: stream };
            let body = &mut message.buffer_mut_unique()[HEADER_SIZE..];
            body[..size_of::<CreateStream>()].copy_from_slice(create.as_bytes());
            (Operation::CreateStream, size_of::<CreateStream>(), Ask::CreateStream)
        } else if self.prng.chance(1, 3) {
            read.patience = self.read_wait_draw();
            read.linearizable = self.options.read_linearizable && self.prng.chance(1, 2);
            self.read_body_build(index, &mut message, read)
        } else {
            self.append_body_build(index, &mut message)
        };
        let size = HEADER_SIZE + body_size;
        let client = &mut self.clients[index];
        let body = &message.buffer()[HEADER_SIZE..size];
        let header = client.core.request_start_with(operation, body, tick, read);
        *message.header_mut() = header;
        client.in_flight = Some(InFlight { message, ask });
    }

    /// Ticks the next read asks to wait for events: 0 (no wait) unless the options let reads
    /// wait, then half the time.
    fn read_wait_draw(&mut self) -> u64 {
        let wait_max = self.options.read_wait_ticks_max;
        if wait_max == 0 || self.prng.chance(1, 2) {
            return 0;
        }
        1 + self.prng.next_u64() % wait_max
    }

    /// Writes a read of one of the three kinds into the body of `message`; one that waits
    /// `wait_ticks` starts from the end of what the client knows, so that it is held until
    /// events commit (the log's, appended by other clients) or its wait runs out (its own
    /// stream's, which only it appends to).
    fn read_body_build(
        &mut self,
        index: usize,
        message: &mut Message,
        read: ReadOptions,
    ) -> (Operation, usize, Ask) {
        let wait_ticks = read.patience;
        let model = &self.clients[index].model;
        let stream = model.stream;
        let offset_known = model.offset_next.unwrap_or(0);
        let count_max = 1 + self.prng.index(READ_COUNT_MAX) as u32;
        let wait_ms = (wait_ticks * TICK_MS) as u32;
        let body = &mut message.buffer_mut_unique()[HEADER_SIZE..];
        match self.prng.index(3) {
            0 => {
                let request = StreamInfo { stream };
                body[..size_of::<StreamInfo>()].copy_from_slice(request.as_bytes());
                (Operation::StreamInfo, size_of::<StreamInfo>(), Ask::StreamInfo)
            }
            1 => {
                let offset_from = match wait_ticks {
                    0 => self.prng.next_u64() % (offset_known + 1),
                    _ => offset_known,
                };
                let request = ReadStream { stream, offset_from, count_max, wait_ms };
                body[..size_of::<ReadStream>()].copy_from_slice(request.as_bytes());
                (Operation::ReadStream, size_of::<ReadStream>(), Ask::ReadStream { offset_from })
            }
            _ => {
                let known = self.metrics.events_appended;
                let position_from = match wait_ticks {
                    0 => self.prng.next_u64() % (known + 1),
                    _ => known,
                };
                let request = ReadLog { position_from, count_max, wait_ms };
                body[..size_of::<ReadLog>()].copy_from_slice(request.as_bytes());
                let end_min = if read.linearizable { known } else { 0 };
                (Operation::ReadLog, size_of::<ReadLog>(), Ask::ReadLog { position_from, end_min })
            }
        }
    }

    /// Writes an append of one batch of random events to client `index`'s stream into the
    /// body of `message`.
    fn append_body_build(
        &mut self,
        index: usize,
        message: &mut Message,
    ) -> (Operation, usize, Ask) {
        let event_count = 1 + self.prng.index(self.options.events_per_append_max as usize) as u32;
        let model = &self.clients[index].model;
        // Half the appends that can name the exact offset do, to exercise the check; a stream
        // created by its first append names "no stream".
        let expected_offset = match model.offset_next {
            _ if !model.created => Some(EXPECTED_NO_STREAM),
            Some(offset) if self.prng.chance(1, 2) => Some(offset),
            _ => None,
        };
        let stream = model.stream;
        let mut encoder = AppendEncoder::new(&mut message.buffer_mut_unique()[HEADER_SIZE..]);
        encoder.batch_begin(stream, expected_offset.unwrap_or(EXPECTED_OFFSET_ANY));
        let mut checksums = Vec::with_capacity(event_count as usize);
        // One append in 40 has an event without a type, which the store must refuse whole.
        let untyped_at = self.prng.chance(1, 40).then(|| self.prng.index(event_count as usize));
        for event in 0..event_count as usize {
            let (type_size, metadata_size, data_size) = self.event_sizes();
            let type_size = if untyped_at == Some(event) { 0 } else { type_size };
            let mut event_type = vec![0u8; type_size];
            let mut metadata = vec![0u8; metadata_size];
            self.prng.fill(&mut event_type);
            self.prng.fill(&mut metadata);
            let data = encoder.event(&event_type, &metadata, data_size as u32);
            self.prng.fill(data);
            let event = Event { event_type: &event_type, metadata: &metadata, data: &*data };
            checksums.push(event_checksum(&event));
        }
        let untyped = untyped_at.is_some();
        let size = encoder.finish();
        (Operation::Append, size, Ask::Append { checksums, expected_offset, untyped })
    }

    /// Random sizes of an event's type (1 to 8 bytes), metadata (none half the time, up to 16
    /// bytes mostly, sometimes all the room there is) and data, together at most
    /// `event_size_max`.
    fn event_sizes(&mut self) -> (usize, usize, usize) {
        let size_max = self.options.event_size_max as usize;
        let type_size = 1 + self.prng.index(size_max.min(8));
        let room = size_max - type_size;
        let metadata_size = match self.prng.index(10) {
            0..=4 => 0,
            5 => self.prng.index(room + 1),
            _ => self.prng.index(room.min(16) + 1),
        };
        let data_size = self.prng.index(room - metadata_size + 1);
        (type_size, metadata_size, data_size)
    }

    /// A message from the network for client `index`. Like the real client, it validates the
    /// header and body before trusting any field; the core decides what it answers.
    pub fn on_message(&mut self, index: usize, tick: u64, message: &Message) -> bool {
        let Ok(header) = Header::decode(message.buffer()) else {
            return false;
        };
        let size = header.size as usize;
        let valid = header.cluster == self.options.cluster
            && size <= self.options.message_size_max
            && header.valid_checksum_body(&message.buffer()[HEADER_SIZE..size]);
        if !valid || self.client_index(header.client) != Some(index) {
            return false;
        }
        let reply = header.command() == Some(Command::Reply);
        let read = header.operation().is_some_and(Operation::is_read);
        let record = reply.then(|| reply_record(&header));
        if let Some(record) = record
            && !read
        {
            self.replies_received.push(record);
        }
        let client = &mut self.clients[index];
        match client.core.on_message(&header, tick) {
            Outcome::Reply => {
                let record = record.expect("only a reply is answered as one");
                self.on_reply(index, tick, &record, message.body());
            }
            Outcome::Evicted(reason) => self.on_eviction(index, tick, reason),
            Outcome::Redirect => self.metrics.pongs += 1,
            // Counted by the core (`client_busy`); the copy goes again after its backoff.
            Outcome::Busy => {}
            Outcome::Dropped(_) => self.metrics.replies_other += u64::from(reply),
        }
        true
    }

    /// The reply to client `index`'s request in flight.
    fn on_reply(&mut self, index: usize, tick: u64, record: &ReplyRecord, body: &[u8]) {
        let think = self.prng.next_u64() % (self.options.think_ticks_max + 1);
        let client = &mut self.clients[index];
        let in_flight = client.in_flight.take().expect("the core had a request in flight");
        client.idle_until_tick = tick + think;
        self.metrics.replies_accepted += 1;
        let checked = match in_flight.ask {
            Ask::Register => Ok(None),
            Ask::CreateStream => {
                self.model_create(index, record, body);
                Ok(None)
            }
            Ask::Append { checksums, expected_offset, untyped } => {
                let asked = AppendAsked { checksums: &checksums, expected_offset, untyped };
                self.model_append(index, record, body, &asked);
                Ok(None)
            }
            Ask::StreamInfo => self.clients[index].model.check_stream_info(body).map(Some),
            Ask::ReadStream { offset_from } => {
                self.clients[index].model.check_read_stream(offset_from, body).map(Some)
            }
            Ask::ReadLog { position_from, end_min } => {
                self.clients[index].model.check_read_log(position_from, end_min, body).map(Some)
            }
        };
        if !Operation::from_u8(record.operation).is_some_and(Operation::is_read) {
            self.acknowledged.push(*record);
        }
        match checked {
            Ok(Some(read)) => {
                self.metrics.reads_checked += 1;
                self.metrics.read_events_checked += read.events;
                self.metrics.reads_block_corrupt += u64::from(read.block_corrupt);
            }
            Ok(None) => {}
            Err(reason) => self.violation(record, reason),
        }
    }

    fn violation(&mut self, record: &ReplyRecord, reason: &'static str) {
        let violation = ModelViolation {
            client: record.client,
            request: record.request,
            op: record.op,
            reason,
        };
        self.violations.push(violation);
    }

    fn model_create(&mut self, index: usize, record: &ReplyRecord, body: &[u8]) {
        let Ok((result, _)) = CreateStreamResult::read_from_prefix(body) else {
            return self.violation(record, "create_stream reply body too short");
        };
        match ResultCode::from_u32(result.result) {
            // Exists: an earlier session of this client created it, and its reply was lost
            // with that session.
            Some(ResultCode::Ok | ResultCode::StreamExists) => {
                self.clients[index].model.created = true;
            }
            Some(ResultCode::StreamsFull | ResultCode::StorageFull) => {
                self.metrics.storage_full += 1;
            }
            _ => self.violation(record, "create_stream of a valid new stream failed"),
        }
    }

    fn model_append(
        &mut self,
        index: usize,
        record: &ReplyRecord,
        body: &[u8],
        asked: &AppendAsked<'_>,
    ) {
        let Ok((result, _)) = AppendResult::read_from_prefix(body) else {
            return self.violation(record, "append reply body too short");
        };
        let (checksums, expected_offset) = (asked.checksums, asked.expected_offset);
        let model = &mut self.clients[index].model;
        let event_count = checksums.len() as u64;
        let creating = expected_offset == Some(EXPECTED_NO_STREAM);
        match ResultCode::from_u32(result.result) {
            Some(ResultCode::ExpectedOffsetWrong) if creating => {
                // Only if an earlier creating append of this client committed, its outcome lost
                // with its session (which made the model forget the next offset).
                if model.offset_next.is_some() || result.offset == 0 {
                    let reason = "an append to no stream was refused, the stream never created";
                    return self.violation(record, reason);
                }
                model.created = true;
                model.offset_next = Some(result.offset);
            }
            Some(ResultCode::StreamsFull) if creating => self.metrics.storage_full += 1,
            Some(ResultCode::EventTypeEmpty) if asked.untyped => {
                self.metrics.appends_untyped_refused += 1;
            }
            Some(ResultCode::Ok) if asked.untyped => {
                self.violation(record, "an append with an event without a type was taken");
            }
            Some(ResultCode::Ok) if creating && result.offset != 0 => {
                self.violation(record, "an append that created its stream got an offset past 0");
            }
            Some(ResultCode::Ok) => {
                self.metrics.streams_created_by_append += u64::from(creating);
                model.created = true;
                if model.offset_next.is_some_and(|offset| offset != result.offset) {
                    return self.violation(record, "append got an offset other than the next");
                }
                model.offset_next = Some(result.offset + event_count);
                model.appended(result.offset, checksums);
                self.metrics.appends_ok += 1;
                self.metrics.events_appended += event_count;
            }
            Some(ResultCode::ExpectedOffsetWrong) => {
                // The client names an offset only when it knows the stream's next one, and
                // it is the stream's only writer.
                model.offset_next = Some(result.offset);
                let reason = match expected_offset {
                    Some(_) => "append at the known next offset was refused",
                    None => "append at any offset was refused for its offset",
                };
                self.violation(record, reason);
            }
            Some(ResultCode::StorageFull) => self.metrics.storage_full += 1,
            _ => self.violation(record, "append of valid events to an existing stream failed"),
        }
    }

    /// From now on a session may be evicted for a cached reply a state-synced replica lacks.
    pub fn replies_may_be_lost(&mut self) {
        self.replies_may_be_lost = true;
    }

    /// The core ended client `index`'s session: a new id and a new session.
    fn on_eviction(&mut self, index: usize, tick: u64, reason: u32) {
        self.metrics.evictions += 1;
        let client = &self.clients[index];
        let table_never_full = self.client_ids_used <= u64::from(self.options.clients_max);
        let eviction_impossible = table_never_full && !self.replies_may_be_lost;
        let reason = if reason == EvictionReason::InvalidRequest as u32 {
            Some("a valid request was evicted as invalid")
        } else if eviction_impossible {
            // Sessions are replicated state: only a full table evicts one, and it never
            // filled; nor did any replica state-sync, the one way a replica may lack the cached
            // reply a retry needs. A replica that lost a session or a cached reply across a
            // restart shows here.
            Some("a session was evicted although the session table never filled")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.violations.push(ModelViolation {
                client: client.core.id(),
                request: client.core.request_latest(),
                op: Op(0),
                reason,
            });
        }
        self.client_ids_used += 1;
        let id = self.client_id_new(index);
        let client = &mut self.clients[index];
        if let Some(in_flight) = client.in_flight.take()
            && matches!(in_flight.ask, Ask::Append { .. })
        {
            // Whether the append in flight was applied is unknown.
            client.model.offset_next = None;
        }
        client.core.session_new(id);
        client.idle_until_tick = tick;
    }
}

/// What the checker keeps of a reply.
fn reply_record(header: &Header) -> ReplyRecord {
    ReplyRecord {
        client: header.client,
        request: header.request,
        op: header.op,
        operation: header.operation,
        request_checksum: views::Reply::of(header).request_checksum(),
        body_checksum: header.checksum_body,
        view: header.view,
        replica: header.replica,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> WorkloadOptions {
        WorkloadOptions {
            client_count: 1,
            replica_count: 3,
            cluster: ClusterId(7),
            message_size_max: 16 * 1024,
            request_timeout_ticks: 10,
            think_ticks_max: 0,
            read_wait_ticks_max: 0,
            read_linearizable: false,
            events_per_append_max: 4,
            event_size_max: 100,
            clients_max: 4,
        }
    }

    /// A reply or eviction from `replica`, built as a replica would.
    fn message_from(pool: &MessagePool, command: Command, request: &Header) -> Message {
        let mut message = pool.get();
        let header = message.header_mut();
        *header = Header::new(command, request.cluster);
        header.client = request.client;
        header.replica = ReplicaIndex(1);
        if command == Command::Reply {
            header.op = Op(1);
            header.commit = Op(1);
            header.request = request.request;
            header.operation = request.operation;
            views::Reply::of(&mut *header).set_request_checksum(request.checksum);
        } else {
            views::Eviction::of(&mut *header).set_reason(EvictionReason::SessionEvicted as u32);
        }
        header.set_checksum_body(&[]);
        header.set_checksum();
        assert_eq!(header.invalid(), None);
        message
    }

    #[test]
    fn client_retries_round_robin_and_registers_again_after_eviction() {
        // Goal: the simulated client runs the client core: the first send goes to the
        // primary, each timeout to the next replica with the same request; an eviction makes
        // a new client id that registers afresh (and, with a session table that never filled,
        // is a violation); a reply to the request in flight is acknowledged.
        let pool = MessagePool::new(4, 16 * 1024);
        let mut workload = Workload::new(options(), 1);
        let mut sends = Vec::new();
        let mut targets = Vec::new();
        for tick in 0..100 {
            workload.tick(tick, &mut sends);
            targets.extend(sends.drain(..).map(|(_, replica, message)| (replica, message)));
        }
        let first = *targets[0].1.header();
        assert_eq!(first.operation, Operation::Register as u8);
        let replicas: Vec<ReplicaIndex> = targets.iter().map(|(replica, _)| *replica).collect();
        assert_eq!(replicas[..3], [0, 1, 2].map(ReplicaIndex));
        assert!(targets.iter().all(|(_, message)| message.header() == &first));
        let eviction = message_from(&pool, Command::Eviction, &first);
        assert!(workload.on_message(0, 100, &eviction));
        workload.tick(101, &mut sends);
        let (_, _, register) = sends.pop().unwrap();
        assert_ne!(register.header().client, first.client);
        assert_eq!(workload.client_index(first.client), Some(0));
        let reply = message_from(&pool, Command::Reply, register.header());
        assert!(workload.on_message(0, 102, &reply));
        assert_eq!(workload.acknowledged().len(), 1);
        assert!(workload.idle());
        assert_eq!(workload.metrics().evictions, 1);
        let reasons: Vec<&str> = workload.violations().iter().map(|v| v.reason).collect();
        assert_eq!(reasons, ["a session was evicted although the session table never filled"]);
    }
}
