//! Simulated clients: a small sans-IO model of the client library's rules (`crate::client`),
//! driven by the simulator's ticks instead of sockets and a clock.
//!
//! Each client registers, creates its own stream, then appends batches of events to it, one
//! request in flight at a time, numbered 1, 2, 3, ... after the register. A request goes to the
//! replica the client believes is primary (`view % replica_count`); on a timeout it is sent
//! again, unchanged, to the next replica in turn, and a `pong_client` from a backup points it
//! back at the primary. An eviction ends the client's session: it takes a new id from the PRNG
//! and registers again, and whatever it had in flight has an unknown outcome.
//!
//! The workload records every reply that reaches a client (for the checker: the cluster must
//! never answer one request two ways) and every reply a client accepted as the answer to its
//! request. It also keeps a model of each client's stream (its next offset, when known) and
//! reports an append or create result that contradicts it.

use std::collections::BTreeMap;

use zerocopy::{FromBytes, IntoBytes};

use crate::constants::HEADER_SIZE;
use crate::sim::prng::Prng;
use crate::state_machine::constants::EXPECTED_OFFSET_ANY;
use crate::state_machine::types::{
    AppendBatch, AppendResult, CreateStream, CreateStreamResult, EventHeader, ResultCode,
    padded_size,
};
use crate::vsr::client_sessions::session_chain;
use crate::vsr::header::{
    self, Checksum, ClientId, ClusterId, Command, EvictionReason, Header, Op, Operation,
    ReplicaIndex, View,
};
use crate::vsr::message_pool::{Message, MessagePool};

/// Buffers each client's pool holds: the request in flight, one being delivered, and slack.
const CLIENT_MESSAGES_MAX: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadOptions {
    pub client_count: usize,
    pub replica_count: u8,
    pub cluster: ClusterId,
    pub message_size_max: usize,
    /// Ticks a request waits for its reply before it is sent again (plus up to as much jitter).
    pub request_timeout_ticks: u64,
    /// Ticks a client waits, at most, between a reply and its next request.
    pub think_ticks_max: u64,
    pub events_per_append_max: u32,
    pub event_size_max: u32,
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
    pub events_appended: u64,
    pub storage_full: u64,
    pub rejected: u64,
}
}

struct InFlight {
    message: Message,
    request: u32,
    operation: Operation,
    event_count: u32,
    /// The append asked for this exact offset (not `EXPECTED_OFFSET_ANY`).
    expected_offset: Option<u64>,
    timeout_tick: u64,
    /// The replica the latest copy went to.
    target: ReplicaIndex,
    /// Where the next retry goes, if not to the replica after `target`.
    retry_target: Option<ReplicaIndex>,
}

struct SimClient {
    id: ClientId,
    pool: MessagePool,
    registered: bool,
    /// The number of the latest write whose reply was accepted (0 = the register).
    request_latest: u32,
    /// `parent` of the next write: the session chain after that reply.
    parent: Checksum,
    in_flight: Option<InFlight>,
    idle_until_tick: u64,
    /// The newest view seen in a reply or pong.
    view: View,
    stream: u64,
    stream_created: bool,
    /// The stream's next offset, if known (an eviction with a request in flight forgets it).
    offset_next: Option<u64>,
}

pub struct Workload {
    options: WorkloadOptions,
    prng: Prng,
    clients: Vec<SimClient>,
    /// Every id any client has had, to route a message to its client.
    client_ids: BTreeMap<ClientId, usize>,
    /// Whether clients start new requests (false once the simulation waits for liveness).
    issuing: bool,
    /// Every reply delivered to a client, in order, until the checker takes them.
    replies_received: Vec<ReplyRecord>,
    /// Replies accepted by their client as the answer to its request.
    acknowledged: Vec<ReplyRecord>,
    violations: Vec<ModelViolation>,
    metrics: WorkloadMetrics,
}

impl Workload {
    pub fn new(options: WorkloadOptions, seed: u64) -> Workload {
        assert!(options.client_count > 0);
        assert!(options.replica_count > 0);
        assert!(options.request_timeout_ticks > 0);
        assert!(options.events_per_append_max > 0 && options.event_size_max > 0);
        let body_size_max = options.message_size_max - HEADER_SIZE;
        let batch_size_max = size_of::<AppendBatch>() as u64
            + u64::from(options.events_per_append_max)
                * (size_of::<EventHeader>() as u64 + padded_size(options.event_size_max));
        assert!(batch_size_max <= body_size_max as u64);
        let mut workload = Workload {
            options,
            prng: Prng::new(seed),
            clients: Vec::with_capacity(options.client_count),
            client_ids: BTreeMap::new(),
            issuing: true,
            replies_received: Vec::new(),
            acknowledged: Vec::new(),
            violations: Vec::new(),
            metrics: WorkloadMetrics::default(),
        };
        for index in 0..options.client_count {
            let id = workload.client_id_new(index);
            let pool = MessagePool::new(CLIENT_MESSAGES_MAX, options.message_size_max);
            let idle_until_tick = workload.prng.next_u64() % (options.think_ticks_max + 1);
            workload.clients.push(SimClient {
                id,
                pool,
                registered: false,
                request_latest: 0,
                parent: 0,
                in_flight: None,
                idle_until_tick,
                view: 0,
                stream: index as u64 + 1,
                stream_created: false,
                offset_next: Some(0),
            });
        }
        workload
    }

    /// A fresh, nonzero client id not used before, now belonging to client `index`.
    fn client_id_new(&mut self, index: usize) -> ClientId {
        loop {
            let id = self.prng.next_u64();
            if id != 0 && !self.client_ids.contains_key(&id) {
                self.client_ids.insert(id, index);
                return id;
            }
        }
    }

    pub fn metrics(&self) -> WorkloadMetrics {
        self.metrics
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

    /// Advances every client to `tick`: retries requests whose timeout passed, and starts new
    /// ones. What clients send is appended to `sends` as (client index, replica, message).
    pub fn tick(&mut self, tick: u64, sends: &mut Vec<(usize, ReplicaIndex, Message)>) {
        for index in 0..self.clients.len() {
            let client = &self.clients[index];
            match &client.in_flight {
                Some(in_flight) if tick >= in_flight.timeout_tick => {
                    let next = (in_flight.target + 1) % self.options.replica_count;
                    let target = in_flight.retry_target.unwrap_or(next);
                    self.metrics.retries += 1;
                    self.send(index, tick, target, sends);
                }
                Some(_) => {}
                None if self.issuing && tick >= client.idle_until_tick => {
                    self.request_start(index, tick);
                    let target = self.primary_guess(index);
                    self.send(index, tick, target, sends);
                }
                None => {}
            }
        }
    }

    fn primary_guess(&self, index: usize) -> ReplicaIndex {
        (self.clients[index].view % u32::from(self.options.replica_count)) as ReplicaIndex
    }

    /// (Re)sends client `index`'s request in flight to `target`.
    fn send(
        &mut self,
        index: usize,
        tick: u64,
        target: ReplicaIndex,
        sends: &mut Vec<(usize, ReplicaIndex, Message)>,
    ) {
        let jitter = self.prng.next_u64() % (self.options.request_timeout_ticks + 1);
        let timeout_tick = tick + self.options.request_timeout_ticks + jitter;
        let in_flight = self.clients[index].in_flight.as_mut().expect("a request in flight");
        in_flight.target = target;
        in_flight.retry_target = None;
        in_flight.timeout_tick = timeout_tick;
        self.metrics.requests_sent += 1;
        sends.push((index, target, in_flight.message.clone()));
    }

    /// Builds client `index`'s next request: register, create its stream, or append.
    fn request_start(&mut self, index: usize, tick: u64) {
        let client = &self.clients[index];
        assert!(client.in_flight.is_none());
        let (id, view, parent) = (client.id, client.view, client.parent);
        let mut message = client.pool.get();
        let (operation, request) = if !client.registered {
            (Operation::Register, 0)
        } else if !client.stream_created {
            (Operation::CreateStream, client.request_latest + 1)
        } else {
            (Operation::Append, client.request_latest + 1)
        };
        let (body_size, event_count, expected_offset) = match operation {
            Operation::Register => (0, 0, None),
            Operation::CreateStream => {
                let create = CreateStream { stream: client.stream, tenant: client.stream };
                let body = &mut message.buffer_mut_unique()[HEADER_SIZE..];
                body[..size_of::<CreateStream>()].copy_from_slice(create.as_bytes());
                (size_of::<CreateStream>(), 0, None)
            }
            _ => self.append_body_build(index, &mut message),
        };
        let size = HEADER_SIZE + body_size;
        let checksum_body = header::checksum(&message.buffer()[HEADER_SIZE..size]);
        let header = message.header_mut();
        *header = Header::new(Command::Request, self.options.cluster);
        header.size = size as u32;
        header.client = id;
        header.request = request;
        header.operation = operation as u8;
        header.view = view;
        if operation != Operation::Register {
            header.parent = parent;
        }
        header.checksum_body = checksum_body;
        header.set_checksum();
        assert_eq!(header.invalid(), None);
        self.clients[index].in_flight = Some(InFlight {
            message,
            request,
            operation,
            event_count,
            expected_offset,
            timeout_tick: tick,
            target: 0,
            retry_target: None,
        });
    }

    /// Writes an append of one batch of random events to client `index`'s stream into the
    /// body of `message`; returns (body size, event count, expected offset).
    fn append_body_build(
        &mut self,
        index: usize,
        message: &mut Message,
    ) -> (usize, u32, Option<u64>) {
        let event_count = 1 + self.prng.index(self.options.events_per_append_max as usize) as u32;
        // Half the appends that can name the exact offset do, to exercise the check.
        let expected_offset = match self.clients[index].offset_next {
            Some(offset) if self.prng.chance(1, 2) => Some(offset),
            _ => None,
        };
        let stream = self.clients[index].stream;
        let body = &mut message.buffer_mut_unique()[HEADER_SIZE..];
        let mut size = size_of::<AppendBatch>();
        for _ in 0..event_count {
            let data_size = 1 + self.prng.index(self.options.event_size_max as usize) as u32;
            let event = EventHeader { size_bytes: data_size, reserved: 0 };
            body[size..size + size_of::<EventHeader>()].copy_from_slice(event.as_bytes());
            size += size_of::<EventHeader>();
            let padded = padded_size(data_size) as usize;
            let data = &mut body[size..size + padded];
            self.prng.fill(&mut data[..data_size as usize]);
            data[data_size as usize..].fill(0);
            size += padded;
        }
        let batch = AppendBatch {
            stream,
            expected_offset: expected_offset.unwrap_or(EXPECTED_OFFSET_ANY),
            event_count,
            events_size_bytes: (size - size_of::<AppendBatch>()) as u32,
        };
        body[..size_of::<AppendBatch>()].copy_from_slice(batch.as_bytes());
        (size, event_count, expected_offset)
    }

    /// A message from the network for client `index`. Like the real client, it validates the
    /// header and body before trusting any field.
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
        match header.command() {
            Some(Command::Reply) => self.on_reply(index, tick, &header, message.body()),
            Some(Command::Eviction) => self.on_eviction(index, tick, &header),
            Some(Command::PongClient) => self.on_pong(index, tick, &header),
            _ => return false,
        }
        true
    }

    fn on_reply(&mut self, index: usize, tick: u64, header: &Header, body: &[u8]) {
        let record = ReplyRecord {
            client: header.client,
            request: header.request,
            op: header.op,
            operation: header.operation,
            request_checksum: header.context,
            body_checksum: header.checksum_body,
            view: header.view,
            replica: header.replica,
        };
        self.replies_received.push(record);
        let client = &mut self.clients[index];
        client.view = client.view.max(header.view);
        let answers = client.id == header.client
            && client.in_flight.as_ref().is_some_and(|in_flight| {
                in_flight.request == header.request
                    && in_flight.operation as u8 == header.operation
                    && in_flight.message.header().checksum == header.context
            });
        if !answers {
            self.metrics.replies_other += 1;
            return;
        }
        let in_flight = client.in_flight.take().expect("answered request");
        client.request_latest = in_flight.request;
        client.parent = session_chain(client.id, header.op);
        client.registered = true;
        client.idle_until_tick = tick + self.prng.next_u64() % (self.options.think_ticks_max + 1);
        self.metrics.replies_accepted += 1;
        self.acknowledged.push(record);
        match in_flight.operation {
            Operation::CreateStream => self.model_create(index, &record, body),
            Operation::Append => self.model_append(index, &record, body, &in_flight),
            _ => {}
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
                self.clients[index].stream_created = true;
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
        in_flight: &InFlight,
    ) {
        let Ok((result, _)) = AppendResult::read_from_prefix(body) else {
            return self.violation(record, "append reply body too short");
        };
        let client = &mut self.clients[index];
        match ResultCode::from_u32(result.result) {
            Some(ResultCode::Ok) => {
                if client.offset_next.is_some_and(|offset| offset != result.offset) {
                    return self.violation(record, "append got an offset other than the next");
                }
                client.offset_next = Some(result.offset + u64::from(in_flight.event_count));
                self.metrics.appends_ok += 1;
                self.metrics.events_appended += u64::from(in_flight.event_count);
            }
            Some(ResultCode::ExpectedOffsetWrong) => {
                // The client names an offset only when it knows the stream's next one, and
                // it is the stream's only writer.
                client.offset_next = Some(result.offset);
                let reason = match in_flight.expected_offset {
                    Some(_) => "append at the known next offset was refused",
                    None => "append at any offset was refused for its offset",
                };
                self.violation(record, reason);
            }
            Some(ResultCode::StorageFull) => self.metrics.storage_full += 1,
            _ => self.violation(record, "append of valid events to an existing stream failed"),
        }
    }

    fn on_eviction(&mut self, index: usize, tick: u64, header: &Header) {
        if self.clients[index].id != header.client {
            // An eviction of an id this client already left behind.
            return;
        }
        self.metrics.evictions += 1;
        if header.context == EvictionReason::InvalidRequest as u32 {
            self.violations.push(ModelViolation {
                client: header.client,
                request: self.clients[index].request_latest,
                op: 0,
                reason: "a valid request was evicted as invalid",
            });
        }
        let id = self.client_id_new(index);
        let client = &mut self.clients[index];
        if client.in_flight.take().is_some() {
            // Whether the request in flight was applied is unknown.
            client.offset_next = None;
        }
        client.id = id;
        client.registered = false;
        client.request_latest = 0;
        client.parent = 0;
        client.idle_until_tick = tick;
    }

    fn on_pong(&mut self, index: usize, tick: u64, header: &Header) {
        self.metrics.pongs += 1;
        let replica_count = u32::from(self.options.replica_count);
        let client = &mut self.clients[index];
        client.view = client.view.max(header.view);
        let primary = (client.view % replica_count) as ReplicaIndex;
        if let Some(in_flight) = &mut client.in_flight
            && in_flight.target != primary
        {
            // A backup answered: try the primary it names at the next tick.
            in_flight.retry_target = Some(primary);
            in_flight.timeout_tick = in_flight.timeout_tick.min(tick + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> WorkloadOptions {
        WorkloadOptions {
            client_count: 1,
            replica_count: 3,
            cluster: 7,
            message_size_max: 16 * 1024,
            request_timeout_ticks: 10,
            think_ticks_max: 0,
            events_per_append_max: 4,
            event_size_max: 100,
        }
    }

    /// A reply or eviction from `replica`, built as a replica would.
    fn message_from(pool: &MessagePool, command: Command, request: &Header) -> Message {
        let mut message = pool.get();
        let header = message.header_mut();
        *header = Header::new(command, request.cluster);
        header.client = request.client;
        header.replica = 1;
        if command == Command::Reply {
            header.op = 1;
            header.commit = 1;
            header.request = request.request;
            header.operation = request.operation;
            header.context = request.checksum;
        } else {
            header.context = EvictionReason::SessionEvicted as u32;
        }
        header.set_checksum_body(&[]);
        header.set_checksum();
        assert_eq!(header.invalid(), None);
        message
    }

    #[test]
    fn client_retries_round_robin_and_registers_again_after_eviction() {
        // Goal: the client model's rules: the first send goes to the primary, each timeout
        // to the next replica with the same request; an eviction makes a new client id that
        // registers afresh; a reply to the request in flight is acknowledged.
        let pool = MessagePool::new(4, 16 * 1024);
        let mut workload = Workload::new(options(), 1);
        let mut sends = Vec::new();
        let mut targets = Vec::new();
        for tick in 0..40 {
            workload.tick(tick, &mut sends);
            targets.extend(sends.drain(..).map(|(_, replica, message)| (replica, message)));
        }
        let first = *targets[0].1.header();
        assert_eq!(first.operation, Operation::Register as u8);
        let replicas: Vec<ReplicaIndex> = targets.iter().map(|(replica, _)| *replica).collect();
        assert_eq!(replicas[..3], [0, 1, 2]);
        assert!(targets.iter().all(|(_, message)| message.header() == &first));
        let eviction = message_from(&pool, Command::Eviction, &first);
        assert!(workload.on_message(0, 40, &eviction));
        workload.tick(41, &mut sends);
        let (_, _, register) = sends.pop().unwrap();
        assert_ne!(register.header().client, first.client);
        assert_eq!(workload.client_index(first.client), Some(0));
        let reply = message_from(&pool, Command::Reply, register.header());
        assert!(workload.on_message(0, 42, &reply));
        assert_eq!(workload.acknowledged().len(), 1);
        assert!(workload.idle());
        assert_eq!(workload.metrics().evictions, 1);
    }
}
