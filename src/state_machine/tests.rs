//! Tests of the event store on an in-memory disk: every result code, reads checked against a
//! plain reference model (a `Vec` of events per stream and one for the log) under seeded random
//! workloads with shuffled completions, checkpoint and restart, byte-identical grids across
//! replicas, corruption detection, storage full, and the number of block reads a read costs.

use std::collections::BTreeSet;

use zerocopy::{FromBytes, IntoBytes};

use super::*;
use crate::constants::{APPEND_BATCHES_MAX, CREATE_STREAMS_MAX, EVENT_SIZE_MAX, GRID_READS_MAX};
use crate::sim::storage::MemoryStorage;
use crate::state_machine::types::{
    AppendEncoder, BlockHeader, Event, ImportEncoder, ReadLog, ReadStream, StreamInfo,
    StreamInfoReply, append_batch_body, import_batch_split, record_next,
};
use crate::stdx::prng::Prng;
use crate::vsr::header::ReplicaIndex;

const MIB: u64 = 1024 * 1024;

fn small_config() -> Config {
    Config {
        message_size_max: 65536,
        grid_size: 64 * MIB,
        streams_max: 64,
        ..Config::small(ClusterId(1), ReplicaIndex(0), 1)
    }
}

/// A `MemoryStorage` that counts the reads submitted to it.
struct CountingStorage {
    inner: MemoryStorage,
    reads: u64,
}

impl Storage for CountingStorage {
    fn submit(&mut self, request: IoRequest, buffer: Message) {
        if request.kind == IoKind::Read {
            self.reads += 1;
        }
        self.inner.submit(request, buffer);
    }

    fn poll(&mut self, completions: &mut Vec<Completion>, completions_max: usize) {
        self.inner.poll(completions, completions_max);
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }
}

/// One state machine on one disk, driven the way a replica drives it.
struct Harness {
    config: Config,
    storage: CountingStorage,
    machine: StateMachine,
    replies: MessagePool,
    completions: Vec<Completion>,
    op: Op,
    /// Every op committed, for replaying after a restart: (op, timestamp, operation, body).
    ops: Vec<(Op, u64, Operation, Vec<u8>)>,
}

impl Harness {
    fn new(config: Config, shuffle_seed: Option<u64>) -> Harness {
        let storage = MemoryStorage::new(Layout::new(&config).file_size());
        let harness = Harness::open(config, storage, shuffle_seed, &CheckpointState::default());
        harness.expect("a new data file opens")
    }

    fn open(
        config: Config,
        mut storage: MemoryStorage,
        shuffle_seed: Option<u64>,
        checkpoint: &CheckpointState,
    ) -> Result<Harness, &'static str> {
        if let Some(seed) = shuffle_seed {
            storage.shuffle_completions(seed);
        }
        let mut harness = Harness {
            config,
            storage: CountingStorage { inner: storage, reads: 0 },
            machine: StateMachine::new(&config),
            replies: MessagePool::new(GRID_READS_MAX + 2, config.message_size_max as usize),
            completions: Vec::new(),
            op: Op(0),
            ops: Vec::new(),
        };
        harness.machine.open(&mut harness.storage, checkpoint);
        loop {
            if let Some(result) = harness.machine.poll_open() {
                return result.map(|()| harness);
            }
            assert!(harness.storage.in_flight() > 0);
            harness.deliver(1);
        }
    }

    fn deliver(&mut self, count: usize) {
        let mut completions = std::mem::take(&mut self.completions);
        self.storage.poll(&mut completions, count);
        for completion in completions.drain(..) {
            self.machine.on_completion(&mut self.storage, completion);
        }
        self.completions = completions;
    }

    fn run_until_idle(&mut self) {
        while self.storage.in_flight() > 0 {
            self.deliver(1);
        }
    }

    fn commit(&mut self, operation: Operation, body: &[u8]) -> Vec<u8> {
        let op = self.op + 1;
        self.commit_op(op, op.get() * 1000 + 7, operation, body)
    }

    fn commit_op(&mut self, op: Op, timestamp: u64, operation: Operation, body: &[u8]) -> Vec<u8> {
        assert_eq!(request_invalid(operation, body), None);
        while !self.machine.commit_ready() {
            assert!(self.storage.in_flight() > 0, "back-pressure without writes in flight");
            self.deliver(1);
        }
        let mut reply = vec![0u8; body.len()];
        // As a replica does for every prepare: the cluster's grid is this one.
        self.machine.grid_limit_raise(self.machine.limits().grid_blocks);
        let size =
            self.machine.commit(&mut self.storage, op, timestamp, operation, body, &mut reply);
        reply.truncate(size);
        self.op = op;
        self.ops.push((op, timestamp, operation, body.to_vec()));
        reply
    }

    fn checkpoint(&mut self) -> CheckpointState {
        self.machine.checkpoint(&mut self.storage);
        loop {
            if let Some(state) = self.machine.poll_checkpoint() {
                assert_eq!(self.storage.in_flight(), 0);
                return state;
            }
            assert!(self.storage.in_flight() > 0);
            self.deliver(1);
        }
    }

    fn read(&mut self, operation: Operation, body: &[u8]) -> Vec<u8> {
        let reply = self.replies.get();
        let id = self.machine.read_start(&mut self.storage, operation, body, reply).unwrap();
        loop {
            if let Some(reply) = self.machine.poll_read() {
                assert_eq!(reply.id, id);
                return reply.message.buffer()[HEADER_SIZE..][..reply.body_size].to_vec();
            }
            assert!(self.storage.in_flight() > 0, "a read waits only on the disk");
            self.deliver(1);
        }
    }

    fn read_stream(&mut self, stream: u64, offset_from: u64, count_max: u32) -> ReadParsed {
        let request = ReadStream { stream, offset_from, count_max, wait_ms: 0 };
        read_parse(&self.read(Operation::ReadStream, request.as_bytes()))
    }

    fn read_log(&mut self, position_from: u64, count_max: u32) -> ReadParsed {
        let request = ReadLog { position_from, count_max, wait_ms: 0 };
        read_parse(&self.read(Operation::ReadLog, request.as_bytes()))
    }

    fn grid(&self) -> &[u8] {
        let start = Layout::new(&self.config).zone_offset(Zone::Grid) as usize;
        &self.storage.inner.bytes()[start..][..self.config.grid_size as usize]
    }

    fn block_offset(&self, address: u64) -> u64 {
        Layout::new(&self.config).offset(Zone::Grid, address * BLOCK_SIZE as u64)
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies.

/// An event as the tests write it and read it back.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TestEvent {
    event_type: Vec<u8>,
    metadata: Vec<u8>,
    data: Vec<u8>,
}

impl TestEvent {
    fn as_event(&self) -> Event<'_> {
        Event { event_type: &self.event_type, metadata: &self.metadata, data: &self.data }
    }

    fn payload_size(&self) -> usize {
        self.event_type.len() + self.metadata.len() + self.data.len()
    }
}

/// Events of type "t" without metadata, with these data: payloads one byte longer.
fn typed(datas: Vec<Vec<u8>>) -> Vec<TestEvent> {
    datas
        .into_iter()
        .map(|data| TestEvent { event_type: b"t".to_vec(), metadata: Vec::new(), data })
        .collect()
}

#[derive(Clone, Debug)]
struct BatchSpec {
    stream: u64,
    expected_offset: u64,
    events: Vec<TestEvent>,
}

fn create_body(streams: &[(u64, u64)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (stream, tenant) in streams {
        body.extend_from_slice(CreateStream { stream: *stream, tenant: *tenant }.as_bytes());
    }
    body
}

fn batch_size(batch: &BatchSpec) -> usize {
    AppendEncoder::batch_size(batch.events.iter().map(|event| event.payload_size() as u64))
}

fn append_body(batches: &[BatchSpec]) -> Vec<u8> {
    let mut body = Vec::new();
    for batch in batches {
        let events: Vec<Event<'_>> = batch.events.iter().map(TestEvent::as_event).collect();
        body.extend(append_batch_body(batch.stream, batch.expected_offset, &events));
    }
    body
}

/// One batch of events of type "t" with these data.
fn one_batch(stream: u64, expected_offset: u64, datas: Vec<Vec<u8>>) -> Vec<u8> {
    append_body(&[BatchSpec { stream, expected_offset, events: typed(datas) }])
}

fn create_results(reply: &[u8]) -> Vec<ResultCode> {
    reply
        .chunks_exact(size_of::<CreateStreamResult>())
        .map(|chunk| CreateStreamResult::read_from_bytes(chunk).unwrap())
        .map(|result| ResultCode::from_u32(result.result).unwrap())
        .collect()
}

fn append_results(reply: &[u8]) -> Vec<(ResultCode, u64)> {
    reply
        .chunks_exact(size_of::<AppendResult>())
        .map(|chunk| AppendResult::read_from_bytes(chunk).unwrap())
        .map(|result| (ResultCode::from_u32(result.result).unwrap(), result.offset))
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ReadParsed {
    result: ResultCode,
    next: u64,
    end: u64,
    events: Vec<(EventRecord, TestEvent)>,
    body_size: usize,
}

fn read_parse(body: &[u8]) -> ReadParsed {
    let (header, mut rest) = ReadReplyHeader::read_from_prefix(body).unwrap();
    let mut events = Vec::new();
    for _ in 0..header.event_count {
        let (record, event, after) = record_next(rest).unwrap();
        let event = TestEvent {
            event_type: event.event_type.to_vec(),
            metadata: event.metadata.to_vec(),
            data: event.data.to_vec(),
        };
        events.push((record, event));
        rest = after;
    }
    assert!(rest.is_empty());
    let result = ResultCode::from_u32(header.result).unwrap();
    ReadParsed { result, next: header.next, end: header.end, events, body_size: body.len() }
}

fn event_data(prng: &mut Prng, size: usize) -> Vec<u8> {
    let mut data = vec![0u8; size];
    prng.fill(&mut data);
    data
}

// ---------------------------------------------------------------------------------------------
// The reference model.

/// The chain, computed from the documented definition independently of `types::chain_next`.
fn model_chain(previous: u128, event: &ModelEvent, position: u64) -> u128 {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&previous.to_le_bytes());
    bytes.extend_from_slice(&event.stream.to_le_bytes());
    bytes.extend_from_slice(&event.offset.to_le_bytes());
    bytes.extend_from_slice(&position.to_le_bytes());
    bytes.extend_from_slice(&event.timestamp.to_le_bytes());
    let event = &event.event;
    bytes.extend_from_slice(&(event.data.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(event.metadata.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&[event.event_type.len() as u8, 0]);
    bytes.extend_from_slice(&event.event_type);
    bytes.extend_from_slice(&event.metadata);
    bytes.extend_from_slice(&event.data);
    xxhash_rust::xxh3::xxh3_128(&bytes)
}

#[derive(Clone, Debug)]
struct ModelEvent {
    stream: u64,
    offset: u64,
    timestamp: u64,
    chain: u128,
    event: TestEvent,
}

#[derive(Clone, Debug)]
struct ModelStream {
    id: u64,
    tenant: u64,
    chain: u128,
    positions: Vec<u64>,
}

#[derive(Clone, Debug)]
struct Model {
    streams: Vec<ModelStream>,
    log: Vec<ModelEvent>,
    streams_max: usize,
    event_size_max: usize,
    reply_body_size_max: usize,
}

impl Model {
    fn new(limits: &Limits, config: &Config) -> Model {
        Model {
            streams: Vec::new(),
            log: Vec::new(),
            streams_max: config.streams_max as usize,
            event_size_max: limits.event_size_max as usize,
            reply_body_size_max: limits.reply_body_size_max,
        }
    }

    fn stream(&self, id: u64) -> Option<&ModelStream> {
        self.streams.iter().find(|stream| stream.id == id)
    }

    fn chain_seed(stream: u64, tenant: u64) -> u128 {
        let mut seed = stream.to_le_bytes().to_vec();
        seed.extend_from_slice(&tenant.to_le_bytes());
        xxhash_rust::xxh3::xxh3_128(&seed)
    }

    fn create(&mut self, stream: u64, tenant: u64) -> ResultCode {
        if stream == 0 || stream == u64::MAX {
            return ResultCode::StreamIdInvalid;
        }
        if self.stream(stream).is_some() {
            return ResultCode::StreamExists;
        }
        if self.streams.len() == self.streams_max {
            return ResultCode::StreamsFull;
        }
        let chain = Model::chain_seed(stream, tenant);
        self.streams.push(ModelStream { id: stream, tenant, chain, positions: Vec::new() });
        ResultCode::Ok
    }

    /// The result the batch must get, leaving storage_full to the caller.
    fn append_result(&self, batch: &BatchSpec) -> (ResultCode, u64) {
        if batch.stream == 0 || batch.stream == u64::MAX {
            return (ResultCode::StreamIdInvalid, 0);
        }
        let offset = match (self.stream(batch.stream), batch.expected_offset) {
            (None, EXPECTED_NO_STREAM) if self.streams.len() == self.streams_max => {
                return (ResultCode::StreamsFull, 0);
            }
            (None, EXPECTED_NO_STREAM) => 0,
            (None, _) => return (ResultCode::StreamNotFound, 0),
            (Some(stream), expected) => {
                let offset = stream.positions.len() as u64;
                if expected != EXPECTED_OFFSET_ANY && expected != offset {
                    return (ResultCode::ExpectedOffsetWrong, offset);
                }
                offset
            }
        };
        for event in &batch.events {
            if event.event_type.is_empty() {
                return (ResultCode::EventTypeEmpty, offset);
            }
            if event.payload_size() > self.event_size_max {
                return (ResultCode::EventTooLarge, offset);
            }
        }
        (ResultCode::Ok, offset)
    }

    fn append_apply(&mut self, batch: &BatchSpec, timestamp: u64) {
        if batch.expected_offset == EXPECTED_NO_STREAM {
            assert_eq!(self.create(batch.stream, 0), ResultCode::Ok);
        }
        let index = self.streams.iter().position(|stream| stream.id == batch.stream).unwrap();
        for event in &batch.events {
            let stream = &mut self.streams[index];
            let position = self.log.len() as u64;
            let mut event = ModelEvent {
                stream: stream.id,
                offset: stream.positions.len() as u64,
                timestamp,
                chain: 0,
                event: event.clone(),
            };
            event.chain = model_chain(stream.chain, &event, position);
            stream.chain = event.chain;
            stream.positions.push(position);
            self.log.push(event);
        }
    }

    /// Checks a read reply against the events `wanted` (positions), given what was committed.
    fn check_read(&self, reply: &ReadParsed, wanted: &[u64], from: u64, end: u64) {
        assert_eq!(reply.result, ResultCode::Ok);
        assert_eq!(reply.end, end);
        assert!(reply.events.len() <= wanted.len());
        assert_eq!(reply.next, from + reply.events.len() as u64);
        for ((record, read), position) in reply.events.iter().zip(wanted) {
            let event = &self.log[*position as usize];
            assert_eq!(record.stream, event.stream);
            assert_eq!(record.offset, event.offset);
            assert_eq!(record.position, *position);
            assert_eq!(record.timestamp, event.timestamp);
            assert_eq!(record.chain.get(), event.chain);
            assert_eq!(read, &event.event);
        }
        if let Some(position) = wanted.get(reply.events.len()) {
            let payload_size = self.log[*position as usize].event.payload_size();
            let next_size = record_size(payload_size as u64) as usize;
            assert!(reply.body_size + next_size > self.reply_body_size_max, "a read stops early");
        }
    }

    fn check_read_stream(&self, reply: &ReadParsed, stream: u64, from: u64, count_max: u32) {
        let Some(model) = self.stream(stream) else {
            return assert_eq!(reply.result, ResultCode::StreamNotFound);
        };
        let end = model.positions.len() as u64;
        let last = end.min(from.saturating_add(u64::from(count_max)));
        let wanted = if from < last { &model.positions[from as usize..last as usize] } else { &[] };
        self.check_read(reply, wanted, from, end);
    }

    fn check_read_log(&self, reply: &ReadParsed, from: u64, count_max: u32) {
        let end = self.log.len() as u64;
        let last = end.min(from.saturating_add(u64::from(count_max)));
        let wanted: Vec<u64> = (from.min(last)..last).collect();
        self.check_read(reply, &wanted, from, end);
    }
}

/// Reads every stream from every `stride`-th offset and the log from every `stride`-th
/// position, with count maxima from `prng`, and checks each reply against the model.
fn check_all_reads(harness: &mut Harness, model: &Model, prng: &mut Prng, stride: usize) {
    for stream in &model.streams {
        let info = harness.read(Operation::StreamInfo, stream.id.as_bytes());
        let info = StreamInfoReply::read_from_bytes(&info).unwrap();
        assert_eq!((info.result, info.stream, info.tenant), (0, stream.id, stream.tenant));
        assert_eq!(
            (info.offset_next, info.chain.get()),
            (stream.positions.len() as u64, stream.chain)
        );
        for from in (0..=stream.positions.len()).step_by(stride) {
            let count_max = [1, 3, 50, u32::MAX][prng.index(4)];
            let reply = harness.read_stream(stream.id, from as u64, count_max);
            model.check_read_stream(&reply, stream.id, from as u64, count_max);
        }
    }
    for from in (0..=model.log.len()).step_by(stride) {
        let count_max = [1, 7, 200, u32::MAX][prng.index(4)];
        let reply = harness.read_log(from as u64, count_max);
        model.check_read_log(&reply, from as u64, count_max);
    }
}

// ---------------------------------------------------------------------------------------------
// A seeded random workload.

/// A workload that keeps a model in step with one or more harnesses fed the same ops.
struct Workload {
    prng: Prng,
    model: Model,
    body_size_max: usize,
}

impl Workload {
    fn new(seed: u64, harness: &Harness) -> Workload {
        let model = Model::new(harness.machine.limits(), &harness.config);
        let body_size_max = harness.machine.limits().reply_body_size_max;
        Workload { prng: Prng::new(seed), model, body_size_max }
    }

    fn stream_id(&mut self) -> u64 {
        if self.prng.chance(1, 30) {
            return [0, u64::MAX][self.prng.index(2)];
        }
        let known = self.model.streams.len();
        if known > 0 && self.prng.chance(9, 10) {
            return self.model.streams[self.prng.index(known)].id;
        }
        1 + self.prng.next_u64() % 100
    }

    fn create_op(&mut self) -> Vec<u8> {
        let count = 1 + self.prng.index(3);
        let streams: Vec<(u64, u64)> = (0..count)
            .map(|_| {
                let stream =
                    if self.prng.chance(1, 10) { 0 } else { 1 + self.prng.next_u64() % 100 };
                (stream, self.prng.next_u64() % 4)
            })
            .collect();
        create_body(&streams)
    }

    fn event_size(&mut self) -> usize {
        match self.prng.index(40) {
            0 => 0,
            1 => self.model.event_size_max + 1 + self.prng.index(8),
            2..=5 => 2_000 + self.prng.index(40_000),
            _ => 1 + self.prng.index(300),
        }
    }

    /// A random event: a type of 1 to 12 bytes (empty one time in 50), no metadata half the
    /// time, and data of `event_size` bytes.
    fn event(&mut self) -> TestEvent {
        let type_size = if self.prng.chance(1, 50) { 0 } else { 1 + self.prng.index(12) };
        let metadata_size = if self.prng.chance(1, 2) { 0 } else { self.prng.index(64) };
        let data_size = self.event_size();
        TestEvent {
            event_type: event_data(&mut self.prng, type_size),
            metadata: event_data(&mut self.prng, metadata_size),
            data: event_data(&mut self.prng, data_size),
        }
    }

    fn append_batches(&mut self) -> Vec<BatchSpec> {
        let mut batches: Vec<BatchSpec> = Vec::new();
        let mut size = 0;
        for _ in 0..1 + self.prng.index(4) {
            let stream = self.stream_id();
            let offset =
                self.model.stream(stream).map_or(0, |stream| stream.positions.len() as u64);
            let expected_offset = match self.prng.index(5) {
                0 => offset,
                1 => offset + 1 + self.prng.next_u64() % 3,
                2 => EXPECTED_NO_STREAM,
                _ => EXPECTED_OFFSET_ANY,
            };
            let mut batch = BatchSpec { stream, expected_offset, events: Vec::new() };
            for _ in 0..1 + self.prng.index(8) {
                let event = self.event();
                batch.events.push(event);
                if size + batch_size(&batch) > self.body_size_max {
                    batch.events.pop();
                    break;
                }
            }
            if batch.events.is_empty() {
                break;
            }
            size += batch_size(&batch);
            batches.push(batch);
        }
        batches
    }

    /// Checks create results against the model and applies them.
    fn create_results_check(&mut self, body: &[u8], reply: &[u8]) {
        let results = create_results(reply);
        for (request, result) in body.chunks_exact(16).zip(results) {
            let request = CreateStream::read_from_bytes(request).unwrap();
            let expected = self.model.create(request.stream, request.tenant);
            if result == ResultCode::StorageFull {
                assert_eq!(expected, ResultCode::Ok);
                self.model.streams.pop();
            } else {
                assert_eq!(result, expected);
            }
        }
    }

    /// Checks append results against the model and applies them.
    fn append_results_check(&mut self, batches: &[BatchSpec], reply: &[u8], timestamp: u64) {
        let results = append_results(reply);
        assert_eq!(results.len(), batches.len());
        for (batch, (result, offset)) in batches.iter().zip(results) {
            let (expected, expected_offset) = self.model.append_result(batch);
            assert_eq!(offset, expected_offset);
            if result == ResultCode::StorageFull {
                assert_eq!(expected, ResultCode::Ok);
                continue;
            }
            assert_eq!(result, expected, "batch {batch:?}");
            if result == ResultCode::Ok {
                self.model.append_apply(batch, timestamp);
            }
        }
    }

    /// Commits one random create or append to every harness, checking replies.
    fn commit_random(&mut self, harnesses: &mut [&mut Harness]) {
        let create = self.model.streams.is_empty() || self.prng.chance(1, 6);
        let (operation, body, batches) = if create {
            (Operation::CreateStream, self.create_op(), Vec::new())
        } else {
            let batches = self.append_batches();
            if batches.is_empty() {
                return;
            }
            (Operation::Append, append_body(&batches), batches)
        };
        let mut reply_first: Option<Vec<u8>> = None;
        let op = harnesses[0].op + 1;
        let timestamp = op.get() * 1000 + 7;
        for harness in harnesses.iter_mut() {
            let reply = harness.commit_op(op, timestamp, operation, &body);
            assert_eq!(reply_first.get_or_insert_with(|| reply.clone()), &reply);
        }
        let reply = reply_first.unwrap();
        match operation {
            Operation::CreateStream => self.create_results_check(&body, &reply),
            _ => self.append_results_check(&batches, &reply, timestamp),
        }
    }

    fn read_random(&mut self, harness: &mut Harness) {
        let count_max = [1, 2, 10, 1000, u32::MAX][self.prng.index(5)];
        if self.prng.chance(1, 2) {
            let stream = self.stream_id();
            let length = self.model.stream(stream).map_or(0, |stream| stream.positions.len());
            let from = self.prng.index(length + 2) as u64;
            let reply = harness.read_stream(stream, from, count_max);
            self.model.check_read_stream(&reply, stream, from, count_max);
        } else {
            let from = self.prng.index(self.model.log.len() + 2) as u64;
            let reply = harness.read_log(from, count_max);
            self.model.check_read_log(&reply, from, count_max);
        }
    }
}

impl Workload {
    /// Starts a read on `harness`, commits an op to both harnesses before it finishes, and
    /// checks the reply against what was committed when the read started.
    fn read_across_commit(&mut self, harness: &mut Harness, twin: &mut Harness) {
        let stream = self.stream_id();
        let model_stream = self.model.stream(stream);
        let length = model_stream.map_or(0, |stream| stream.positions.len());
        let from = self.prng.index(length + 1) as u64;
        let count_max = [1, 5, u32::MAX][self.prng.index(3)];
        let request = ReadStream { stream, offset_from: from, count_max, wait_ms: 0 };
        let reply = harness.replies.get();
        let operation = Operation::ReadStream;
        let id =
            harness.machine.read_start(&mut harness.storage, operation, request.as_bytes(), reply);
        let id = id.unwrap();
        let model_before = self.model.clone();
        self.commit_random(&mut [harness, twin]);
        let reply = loop {
            if let Some(reply) = harness.machine.poll_read() {
                break reply;
            }
            harness.deliver(1);
        };
        assert_eq!(reply.id, id);
        let reply = read_parse(&reply.message.buffer()[HEADER_SIZE..][..reply.body_size]);
        model_before.check_read_stream(&reply, stream, from, count_max);
    }
}

/// A disk holding `harness`'s bytes as they are now: writes still in flight are lost.
fn disk_copy(harness: &Harness) -> MemoryStorage {
    let mut storage = MemoryStorage::new(harness.storage.inner.size());
    storage.bytes_mut().copy_from_slice(harness.storage.inner.bytes());
    storage
}

/// Restarts from `checkpoint` on `storage` and re-commits the ops after `checkpoint_op`.
fn restart(
    harness: &Harness,
    storage: MemoryStorage,
    shuffle_seed: u64,
    checkpoint: &CheckpointState,
    checkpoint_op: Op,
) -> Harness {
    let mut restarted = Harness::open(harness.config, storage, Some(shuffle_seed), checkpoint)
        .expect("the checkpoint opens");
    restarted.op = checkpoint_op;
    for (op, timestamp, operation, body) in &harness.ops {
        if *op > checkpoint_op {
            restarted.commit_op(*op, *timestamp, *operation, body);
        }
    }
    restarted.ops = harness.ops.clone();
    restarted
}

/// The seed of a randomized test: `KIMBERLITE_SEED` if set, else `default`.
fn seeds(default: std::ops::Range<u64>) -> std::ops::Range<u64> {
    match std::env::var("KIMBERLITE_SEED").ok().and_then(|seed| seed.parse::<u64>().ok()) {
        Some(seed) => seed..seed + 1,
        None => default,
    }
}

/// Runs `steps` random steps on `main` (which restarts now and then) and `twin` (which never
/// does), with reads against the model, and checks they end with identical grids.
fn random_run(seed: u64, steps: usize, config: Config) {
    let mut main = Harness::new(config, Some(seed));
    let mut twin = Harness::new(config, Some(seed ^ 0xA5A5));
    let mut workload = Workload::new(seed, &main);
    let mut checkpoint = (CheckpointState::default(), 0, 0);
    let mut restarts = 0;
    for _ in 0..steps {
        match workload.prng.index(20) {
            0..=10 => workload.commit_random(&mut [&mut main, &mut twin]),
            11..=14 => workload.read_random(&mut main),
            15..=16 => {
                let count = workload.prng.index(4);
                main.deliver(count);
            }
            17 => {
                let state = main.checkpoint();
                assert_eq!(twin.checkpoint(), state);
                // Until the superblock records this checkpoint, a crash opens the one before:
                // its blocks must be whole, whatever this one reused.
                let before = Harness::open(config, disk_copy(&main), None, &checkpoint.0);
                let before = before.expect("the checkpoint before opens");
                assert_eq!(before.machine.position_next(), checkpoint.2);
                checkpoint = (state, main.op.get(), main.machine.position_next());
            }
            18 => {
                restarts += 1;
                let storage = disk_copy(&main);
                let seed_restart = workload.prng.next_u64();
                main = restart(&main, storage, seed_restart, &checkpoint.0, Op(checkpoint.1));
            }
            _ => workload.read_across_commit(&mut main, &mut twin),
        }
    }
    assert_eq!(main.checkpoint(), twin.checkpoint());
    assert!(main.grid() == twin.grid(), "grids differ");
    println!(
        "grid_head={} events={} streams={} restarts={restarts} reads={}",
        main.machine.grid_head(),
        workload.model.log.len(),
        workload.model.streams.len(),
        main.storage.reads
    );
    check_all_reads(&mut twin, &workload.model, &mut workload.prng, 7);
}

// ---------------------------------------------------------------------------------------------
// Result codes and request validation.

#[test]
fn create_stream_reports_each_result_code() {
    // Goal: ok, stream_exists (also within one request), stream_id_invalid and streams_full.
    let config = Config { streams_max: 3, ..small_config() };
    let mut harness = Harness::new(config, None);
    let body = create_body(&[(1, 10), (1, 11), (0, 1), (u64::MAX, 1), (2, 20), (3, 30), (4, 40)]);
    let reply = harness.commit(Operation::CreateStream, &body);
    let expected = [
        ResultCode::Ok,
        ResultCode::StreamExists,
        ResultCode::StreamIdInvalid,
        ResultCode::StreamIdInvalid,
        ResultCode::Ok,
        ResultCode::Ok,
        ResultCode::StreamsFull,
    ];
    assert_eq!(create_results(&reply), expected);
    let reply = harness.commit(Operation::CreateStream, &create_body(&[(2, 99)]));
    assert_eq!(create_results(&reply), [ResultCode::StreamExists]);
    assert_eq!(harness.machine.stream_count(), 3);
}

#[test]
fn append_reports_each_result_code_and_is_all_or_nothing_per_batch() {
    // Goal: every append result code with its offset, and a rejected batch appends nothing.
    let mut harness = Harness::new(small_config(), None);
    harness.commit(Operation::CreateStream, &create_body(&[(5, 1)]));
    let event_size_max = harness.machine.limits().event_size_max as usize;
    let untyped = TestEvent { event_type: Vec::new(), metadata: Vec::new(), data: vec![7] };
    let batches = [
        BatchSpec { stream: 5, expected_offset: 0, events: typed(vec![vec![1; 3], vec![2; 9]]) },
        BatchSpec { stream: 5, expected_offset: EXPECTED_OFFSET_ANY, events: typed(vec![vec![]]) },
        BatchSpec { stream: 6, expected_offset: EXPECTED_OFFSET_ANY, events: typed(vec![vec![4]]) },
        BatchSpec { stream: 0, expected_offset: 0, events: typed(vec![vec![4]]) },
        BatchSpec { stream: 5, expected_offset: 7, events: typed(vec![vec![5]]) },
        BatchSpec {
            stream: 5,
            expected_offset: 3,
            events: vec![typed(vec![vec![6]]).remove(0), untyped],
        },
        BatchSpec { stream: 5, expected_offset: EXPECTED_NO_STREAM, events: typed(vec![vec![6]]) },
    ];
    let reply = harness.commit(Operation::Append, &append_body(&batches));
    let expected = [
        (ResultCode::Ok, 0),
        (ResultCode::Ok, 2),
        (ResultCode::StreamNotFound, 0),
        (ResultCode::StreamIdInvalid, 0),
        (ResultCode::ExpectedOffsetWrong, 3),
        (ResultCode::EventTypeEmpty, 3),
        (ResultCode::ExpectedOffsetWrong, 3),
    ];
    assert_eq!(append_results(&reply), expected);
    let too_large = one_batch(5, 3, vec![vec![7], vec![8; event_size_max]]);
    let reply = harness.commit(Operation::Append, &too_large);
    assert_eq!(append_results(&reply), [(ResultCode::EventTooLarge, 3)]);
    let largest = one_batch(5, 3, vec![vec![9; event_size_max - 1]]);
    let reply = harness.commit(Operation::Append, &largest);
    assert_eq!(append_results(&reply), [(ResultCode::Ok, 3)]);
    let read = harness.read_stream(5, 0, u32::MAX);
    let sizes: Vec<usize> = read.events.iter().map(|(_, event)| event.data.len()).collect();
    assert_eq!(sizes, [3, 9, 0], "the largest event needs a reply of its own");
    assert_eq!((read.next, read.end), (3, 4));
    assert_eq!(harness.read_stream(5, 3, u32::MAX).events[0].1.data, vec![9; event_size_max - 1]);
    assert_eq!(harness.machine.position_next(), 4);
}

#[test]
fn reads_report_body_invalid_and_stream_not_found() {
    // Goal: malformed read bodies and unknown streams are result codes in the reply.
    let mut harness = Harness::new(small_config(), None);
    harness.commit(Operation::CreateStream, &create_body(&[(5, 1)]));
    let wait_too_long = ReadStream { stream: 5, offset_from: 0, count_max: 1, wait_ms: 60_001 };
    let cases: [(Operation, &[u8], ResultCode); 5] = [
        (Operation::ReadStream, &[0; 23], ResultCode::BodyInvalid),
        (Operation::ReadStream, wait_too_long.as_bytes(), ResultCode::BodyInvalid),
        (Operation::ReadLog, &[0; 17], ResultCode::BodyInvalid),
        (
            Operation::ReadLog,
            ReadLog { position_from: 0, count_max: 1, wait_ms: u32::MAX }.as_bytes(),
            ResultCode::BodyInvalid,
        ),
        (
            Operation::ReadStream,
            ReadStream { stream: 6, offset_from: 0, count_max: 1, wait_ms: 0 }.as_bytes(),
            ResultCode::StreamNotFound,
        ),
    ];
    for (operation, body, expected) in cases {
        let reply = read_parse(&harness.read(operation, body));
        assert_eq!(reply.result, expected);
        assert!(reply.events.is_empty());
    }
    for (body, expected) in
        [(&[0u8; 9][..], ResultCode::BodyInvalid), (6u64.as_bytes(), ResultCode::StreamNotFound)]
    {
        let reply = harness.read(Operation::StreamInfo, body);
        let info = StreamInfoReply::read_from_bytes(&reply).unwrap();
        assert_eq!(info.result, expected as u32);
    }
}

#[test]
fn append_encoder_writes_what_the_decoder_accepts() {
    // Goal: batches written by the one encoder pass `request_invalid` and split back into the
    // same streams, offsets and event bytes (odd sizes, so the padding is exercised), and the
    // size it predicts is the size it writes.
    let events = [
        Event { event_type: b"a", metadata: b"", data: b"a" },
        Event { event_type: b"OrderPlaced", metadata: b"{\"by\":1}", data: b"0123456789" },
        Event { event_type: b"t", metadata: b"m", data: b"" },
    ];
    let size =
        2 * AppendEncoder::batch_size(events.iter().map(|event| event.header().payload_size()));
    let mut body = vec![0xff; size + 16];
    let mut encoder = AppendEncoder::new(&mut body);
    for (stream, expected_offset) in [(3, EXPECTED_OFFSET_ANY), (4, 7)] {
        encoder.batch_begin(stream, expected_offset);
        for event in &events {
            encoder.event_copy(event);
        }
    }
    assert_eq!(encoder.finish(), size);
    let body = &body[..size];
    let Ok(Request::Append(batches)) = Request::parse(Operation::Append, body) else {
        panic!("the encoder's body does not parse");
    };
    let expected = [(3, EXPECTED_OFFSET_ANY), (4, 7)];
    assert_eq!(batches.count(), expected.len());
    for (batch, (stream, expected_offset)) in batches.zip(expected) {
        assert_eq!((batch.header.stream, batch.header.expected_offset), (stream, expected_offset));
        assert_eq!(batch.header.event_count, 3);
        assert!(batch.events().eq(events.iter().copied()));
    }
    let one = append_batch_body(3, EXPECTED_OFFSET_ANY, &events);
    assert_eq!(one, body[..size / 2]);
}

#[test]
fn request_invalid_names_each_malformed_body() {
    // Goal: every structural fault of a body is caught before prepare, with its reason.
    let good = one_batch(5, EXPECTED_OFFSET_ANY, vec![vec![1, 2, 3]]);
    let mut bad_reserved = good.clone();
    bad_reserved[31] = 1;
    let mut bad_padding = good.clone();
    bad_padding[39] = 1;
    let mut no_events = good.clone();
    no_events[16] = 0;
    let mut overrun = good.clone();
    overrun[20] = 64;
    let mut short_size = good.clone();
    short_size[20] = 8;
    let mut long_size = good.clone();
    long_size.extend_from_slice(&[0; 8]);
    long_size[20] = 24;
    let cases: [(Operation, &[u8], Option<&str>); 14] = [
        (Operation::Append, &good, None),
        (Operation::CreateStream, &create_body(&[(1, 1)]), None),
        (Operation::Noop, &[], None),
        (Operation::CreateStream, &[], Some("create_stream: body is empty")),
        (
            Operation::CreateStream,
            &[0; 24],
            Some("create_stream: body is not a whole number of 16-byte entries"),
        ),
        (Operation::Append, &[], Some("append: body is empty")),
        (Operation::Append, &good[..20], Some("append: batch header truncated")),
        (Operation::Append, &no_events, Some("append: batch has no events")),
        (Operation::Append, &overrun, Some("append: batch events overrun the body")),
        (Operation::Append, &bad_reserved, Some("append: event reserved is not zero")),
        (Operation::Append, &bad_padding, Some("append: event padding is not zero")),
        (Operation::Append, &short_size, Some("append: event payload overruns its batch")),
        (
            Operation::Append,
            &long_size,
            Some("append: events_size_bytes is larger than the events"),
        ),
        (
            Operation::ReadLog,
            &[0; 16],
            Some("reads are served from committed state and never prepared"),
        ),
    ];
    for (operation, body, reason) in cases {
        assert_eq!(request_invalid(operation, body), reason, "{operation:?} {body:?}");
    }
    assert_eq!(request_invalid(Operation::Reserved, &[]), Some("operation is reserved"));
}

#[test]
fn requests_whose_reply_would_not_fit_a_reply_slot_are_invalid() {
    // Goal: a create_stream of more than `CREATE_STREAMS_MAX` streams, or an append of more than
    // `APPEND_BATCHES_MAX` batches, is refused before prepare (its reply, one result each, would
    // not fit the session's one-sector reply slot); one fewer is taken.
    let streams: Vec<(u64, u64)> = (1..=CREATE_STREAMS_MAX as u64 + 1).map(|s| (s, 1)).collect();
    let fits = create_body(&streams[..CREATE_STREAMS_MAX]);
    assert_eq!(request_invalid(Operation::CreateStream, &fits), None);
    let over = create_body(&streams);
    let reason = Some("create_stream: more streams than one request may create");
    assert_eq!(request_invalid(Operation::CreateStream, &over), reason);
    let batch = one_batch(5, EXPECTED_OFFSET_ANY, vec![vec![1, 2, 3]]);
    let fits = batch.repeat(APPEND_BATCHES_MAX);
    assert_eq!(request_invalid(Operation::Append, &fits), None);
    let over = batch.repeat(APPEND_BATCHES_MAX + 1);
    let reason = Some("append: more batches than one request may carry");
    assert_eq!(request_invalid(Operation::Append, &over), reason);
}

#[test]
fn every_result_code_is_produced_by_some_scenario() {
    // Goal: no result code is dead: a scripted run produces each one at least once.
    let config = Config { streams_max: 2, grid_size: 6 * BLOCK_SIZE as u64, ..small_config() };
    let mut harness = Harness::new(config, None);
    let mut seen = BTreeSet::new();
    let body = create_body(&[(1, 1), (1, 1), (0, 1), (2, 2), (3, 3)]);
    seen.extend(
        create_results(&harness.commit(Operation::CreateStream, &body))
            .iter()
            .map(|code| *code as u32),
    );
    let event_size_max = harness.machine.limits().event_size_max as usize;
    let batches = [
        BatchSpec { stream: 9, expected_offset: 0, events: typed(vec![vec![1]]) },
        BatchSpec { stream: 1, expected_offset: 4, events: typed(vec![vec![1]]) },
        BatchSpec {
            stream: 1,
            expected_offset: 0,
            events: vec![TestEvent { event_type: Vec::new(), metadata: Vec::new(), data: vec![1] }],
        },
        BatchSpec { stream: 1, expected_offset: 0, events: typed(vec![vec![1; event_size_max]]) },
    ];
    let reply = harness.commit(Operation::Append, &append_body(&batches));
    seen.extend(append_results(&reply).iter().map(|(code, _)| *code as u32));
    for _ in 0..64 {
        let body = one_batch(2, EXPECTED_OFFSET_ANY, vec![vec![7; event_size_max - 1]]);
        let reply = harness.commit(Operation::Append, &body);
        seen.extend(append_results(&reply).iter().map(|(code, _)| *code as u32));
    }
    seen.insert(harness.read_stream(9, 0, 1).result as u32);
    seen.insert(read_parse(&harness.read(Operation::ReadLog, &[1])).result as u32);
    // The log's first event imported again: at a position the log holds, then moved to the
    // log's next position and its stream's next offset, where it does not chain.
    let events = log_with_tenants(&mut harness);
    assert!(events.iter().all(|(record, _, _)| record.stream == 2));
    let mut body = import_bodies(&events[..1], 2 * EVENT_SIZE_MAX as usize).remove(0);
    let import = |harness: &mut Harness, body: &[u8]| {
        append_results(&harness.commit(Operation::Import, body))[0].0 as u32
    };
    seen.insert(import(&mut harness, &body));
    let (mut head, _) = ImportBatch::read_from_prefix(&body).unwrap();
    (head.position, head.append.expected_offset) = (events.len() as u64, events.len() as u64);
    body[..size_of::<ImportBatch>()].copy_from_slice(head.as_bytes());
    seen.insert(import(&mut harness, &body));
    harness.run_until_idle();
    let block = harness.block_offset(0);
    harness.storage.inner.corrupt_sector(block + 8192);
    seen.insert(harness.read_log(0, 1).result as u32);
    let all: BTreeSet<u32> = ResultCode::ALL.iter().map(|code| *code as u32).collect();
    assert_eq!(seen, all);
}

// ---------------------------------------------------------------------------------------------
// Reads against the model, restart, determinism.

#[test]
fn reads_from_every_offset_and_position_match_the_model() {
    // Goal: under a random workload with shuffled completions, read_stream from every offset
    // and read_log from every position return exactly the model's events, as many as fit.
    for seed in seeds(1000..1003) {
        println!("seed={seed} (replay: KIMBERLITE_SEED={seed} cargo test state_machine)");
        let config = small_config();
        let mut harness = Harness::new(config, Some(seed));
        let mut workload = Workload::new(seed, &harness);
        for step in 0..400 {
            workload.commit_random(&mut [&mut harness]);
            if step % 3 == 0 {
                workload.read_random(&mut harness);
            }
            let count = workload.prng.index(3);
            harness.deliver(count);
        }
        assert!(harness.machine.grid_head() >= 4, "the workload spans several blocks");
        check_all_reads(&mut harness, &workload.model, &mut workload.prng, 1);
    }
}

#[test]
fn restart_from_checkpoint_recommits_to_identical_grid_and_reads() {
    // Goal: a replica that restarts from a checkpoint (losing the writes after it) and
    // re-commits the ops after it ends with the grid bytes, checkpoint and reads of one that
    // never restarted.
    let seed = 7;
    println!("seed={seed}");
    let config = small_config();
    let mut original = Harness::new(config, Some(seed));
    let mut workload = Workload::new(seed, &original);
    for _ in 0..60 {
        workload.commit_random(&mut [&mut original]);
    }
    let checkpoint = original.checkpoint();
    let checkpoint_op = original.op;
    assert!(checkpoint.streams_table_blocks > 0);
    for _ in 0..80 {
        workload.commit_random(&mut [&mut original]);
    }
    original.deliver(2);
    let mut crashed = disk_copy(&original);
    crashed.bytes_mut()[original.block_offset(checkpoint.grid_head) as usize..][..4096].fill(0xEE);
    let mut restarted = restart(&original, crashed, seed + 1, &checkpoint, checkpoint_op);
    assert_eq!(restarted.machine.position_next(), original.machine.position_next());
    let state = original.checkpoint();
    assert_eq!(restarted.checkpoint(), state);
    assert!(original.grid() == restarted.grid(), "grids differ after re-commit");
    let mut prng = Prng::new(seed);
    check_all_reads(&mut restarted, &workload.model, &mut prng, 3);
    let mut prng = Prng::new(seed);
    check_all_reads(&mut original, &workload.model, &mut prng, 3);
}

#[test]
fn same_ops_give_byte_identical_grids() {
    // Goal: two state machines fed the same ops, with completions in different orders, hold
    // the same grid bytes and the same checkpoint state.
    println!("seeds=1,2,3");
    let config = small_config();
    let mut first = Harness::new(config, Some(1));
    let mut second = Harness::new(config, Some(2));
    let mut workload = Workload::new(3, &first);
    for step in 0..120 {
        workload.commit_random(&mut [&mut first, &mut second]);
        if step % 40 == 39 {
            assert_eq!(first.checkpoint(), second.checkpoint());
        }
        first.deliver(step % 3);
    }
    let state = first.checkpoint();
    assert_eq!(second.checkpoint(), state);
    assert!(state.grid_head > 4);
    assert!(first.grid() == second.grid());
}

#[test]
fn randomized_event_store_matches_model_over_many_seeds() {
    // Goal: random creates, appends, reads, partial completions, checkpoints and restarts keep
    // every read equal to the model and the grid equal to a replica that never restarted.
    let config = Config { grid_size: 32 * MIB, ..small_config() };
    for seed in seeds(0..24) {
        println!("seed={seed} (replay: KIMBERLITE_SEED={seed} cargo test state_machine)");
        random_run(seed, 150, config);
    }
}

#[test]
fn checkpoint_without_changes_writes_nothing() {
    // Goal: a checkpoint after no state change keeps the previous table and grid_head, and an
    // open of the all-zero checkpoint is the empty store. The first op records the cluster's
    // grid, which costs no block: it is kept with the superblock's part of the state.
    let mut harness = Harness::new(small_config(), None);
    assert_eq!(harness.checkpoint(), CheckpointState::default());
    harness.commit(Operation::Noop, &[]);
    let grid_blocks_limit = harness.machine.limits().grid_blocks;
    let empty = CheckpointState { grid_blocks_limit, ..CheckpointState::default() };
    assert_eq!(harness.checkpoint(), empty);
    harness.commit(Operation::CreateStream, &create_body(&[(1, 1)]));
    let state = harness.checkpoint();
    assert_eq!(state.grid_head, 1);
    assert_eq!(state.streams_table_blocks, 1);
    harness.commit(Operation::Append, &one_batch(9, 0, vec![vec![1]]));
    assert_eq!(harness.checkpoint(), state);
}

// ---------------------------------------------------------------------------------------------
// Faults and limits.

/// A harness with stream 1 holding `blocks` full blocks of 8 events (60,000 bytes each).
fn long_stream(config: Config, blocks: u64) -> Harness {
    let mut harness = Harness::new(config, None);
    harness.commit(Operation::CreateStream, &create_body(&[(1, 1)]));
    let mut prng = Prng::new(blocks);
    for _ in 0..blocks * 8 {
        let data = event_data(&mut prng, 60_000);
        let reply =
            harness.commit(Operation::Append, &one_batch(1, EXPECTED_OFFSET_ANY, vec![data]));
        assert_eq!(append_results(&reply)[0].0, ResultCode::Ok);
    }
    harness.checkpoint();
    harness
}

#[test]
fn corrupted_misdirected_or_lost_block_is_reported_not_returned() {
    // Goal: a flipped bit, a misdirected write and a lost write in a grid block give
    // block_corrupt (after the good events before it), never a panic or wrong data, and the
    // block is named for repair.
    let mut harness = Harness::new(small_config(), None);
    harness.commit(Operation::CreateStream, &create_body(&[(1, 1)]));
    let mut prng = Prng::new(1);
    while harness.machine.grid_head() < 4 {
        let events = (0..60).map(|_| event_data(&mut prng, 1000)).collect();
        harness.commit(Operation::Append, &one_batch(1, EXPECTED_OFFSET_ANY, events));
    }
    harness.run_until_idle();
    let first = |harness: &Harness, address: u64| {
        let at = address as usize * BLOCK_SIZE;
        BlockHeader::read_from_prefix(&harness.grid()[at..]).unwrap().0.position_first
    };
    // Stream 1's blocks are ordinals 1..=4 at addresses 0..=3; reads descend from ordinal 4.
    let third = first(&harness, 2);
    harness.storage.inner.corrupt_sector(harness.block_offset(2) + 4096 * 5);
    let reply = harness.read_stream(1, third - 10, 100);
    assert_eq!(
        (reply.result, reply.events.len(), reply.next),
        (ResultCode::BlockCorrupt, 10, third)
    );
    assert_eq!(harness.machine.block_faulty_last(), Some(2));
    assert_eq!(harness.read_log(third, 1).result, ResultCode::BlockCorrupt);
    let second = first(&harness, 1);
    assert_eq!(harness.read_stream(1, second, 5).result, ResultCode::Ok);
    let first_block = harness.block_offset(0) as usize;
    harness.storage.inner.bytes_mut()[first_block..first_block + BLOCK_SIZE].fill(0);
    assert_eq!(harness.read_log(0, 1).result, ResultCode::BlockCorrupt);
    assert_eq!(harness.machine.block_faulty_last(), Some(0));
    let second_block = harness.block_offset(1) as usize;
    let fourth_block = harness.block_offset(3) as usize;
    harness
        .storage
        .inner
        .bytes_mut()
        .copy_within(fourth_block..fourth_block + BLOCK_SIZE, second_block);
    assert_eq!(harness.read_stream(1, second, 1).result, ResultCode::BlockCorrupt);
    assert_eq!(harness.machine.block_faulty_last(), Some(1));
    let fourth = first(&harness, 3);
    assert_eq!(harness.read_stream(1, fourth, 100).result, ResultCode::Ok);
}

#[test]
fn open_rejects_a_corrupt_streams_table() {
    // Goal: a flipped bit in the checkpointed table, or a superblock checkpoint that does not
    // match it, fails the open with a reason.
    let mut harness = long_stream(small_config(), 2);
    let state = harness.checkpoint();
    let reopened = Harness::open(harness.config, disk_copy(&harness), None, &state);
    assert!(reopened.is_ok());
    let wrong =
        CheckpointState { checkpoint_state_checksum: state.checkpoint_state_checksum ^ 1, ..state };
    let reopened = Harness::open(harness.config, disk_copy(&harness), None, &wrong);
    assert_eq!(reopened.err(), Some("streams table: state checksum does not match"));
    let shifted = CheckpointState { grid_head: state.grid_head + 1, ..state };
    let reopened = Harness::open(harness.config, disk_copy(&harness), None, &shifted);
    assert_eq!(reopened.err(), Some("streams table: root grid_head does not match the checkpoint"));
    let table = harness.block_offset(state.streams_table_address);
    harness.storage.inner.corrupt_sector(table);
    let reopened = Harness::open(harness.config, disk_copy(&harness), None, &state);
    assert_eq!(reopened.err(), Some("block: checksum does not match its bytes"));
}

#[test]
fn storage_full_when_the_grid_is_exhausted_keeps_room_for_the_checkpoint() {
    // Goal: appends and creates that would eat into the streams table's reserve get
    // storage_full, smaller appends that fit still succeed, and checkpoints still work.
    let config = Config { grid_size: 6 * BLOCK_SIZE as u64, ..small_config() };
    let mut harness = Harness::new(config, None);
    harness.commit(Operation::CreateStream, &create_body(&[(1, 1)]));
    let mut accepted = 0;
    loop {
        let body = one_batch(1, EXPECTED_OFFSET_ANY, vec![vec![5; 60_000]]);
        let (result, _) = append_results(&harness.commit(Operation::Append, &body))[0];
        if result == ResultCode::StorageFull {
            break;
        }
        assert_eq!(result, ResultCode::Ok);
        accepted += 1;
    }
    assert_eq!(accepted, 3 * 8, "two sealed blocks, a full open one, three kept for a checkpoint");
    assert_eq!(harness.machine.grid_use(), (2 * BLOCK_SIZE as u64, 0), "no room left");
    let reply =
        harness.commit(Operation::Append, &one_batch(1, EXPECTED_OFFSET_ANY, vec![vec![6; 100]]));
    assert_eq!(append_results(&reply)[0].0, ResultCode::Ok);
    let state = harness.checkpoint();
    assert_eq!(state.grid_head, 4);
    let reply = harness.commit(Operation::CreateStream, &create_body(&[(2, 2)]));
    assert_eq!(create_results(&reply), [ResultCode::StorageFull]);
    let reply =
        harness.commit(Operation::Append, &one_batch(1, EXPECTED_OFFSET_ANY, vec![vec![1]]));
    assert_eq!(append_results(&reply)[0].0, ResultCode::StorageFull);
    assert_eq!(harness.checkpoint(), state);
    assert_eq!(harness.read_stream(1, 0, u32::MAX).end, 25);
    let reopened = Harness::open(config, disk_copy(&harness), None, &state).unwrap();
    assert_eq!(reopened.machine.position_next(), 25);
}

#[test]
fn read_stream_block_reads_grow_logarithmically() {
    // Goal: reading one event at any offset of a stream of n sealed blocks costs at most
    // floor(log2(n)) + 1 block reads (the skip-list descent), and so does read_log: the count
    // of storage reads grows with log n, not n.
    let mut harness = Harness::new(small_config(), None);
    harness.commit(Operation::CreateStream, &create_body(&[(1, 1)]));
    let mut prng = Prng::new(1);
    let mut events = 0;
    for blocks in [4u64, 8, 16, 32, 64, 120] {
        // 8 events of 60,000 bytes fill a block; the next one seals it.
        while events < blocks * 8 + 1 {
            let data = event_data(&mut prng, 60_000);
            let body = one_batch(1, EXPECTED_OFFSET_ANY, vec![data]);
            assert_eq!(
                append_results(&harness.commit(Operation::Append, &body))[0].0,
                ResultCode::Ok
            );
            events += 1;
        }
        harness.run_until_idle();
        assert_eq!(harness.machine.grid_head(), blocks);
        let mut reads_max = 0;
        for block in 0..blocks {
            let reads_before = harness.storage.reads;
            assert_eq!(harness.read_stream(1, block * 8 + block % 8, 1).events.len(), 1);
            let reads_stream = harness.storage.reads - reads_before;
            assert_eq!(harness.read_log(block * 8 + 7 - block % 8, 1).events.len(), 1);
            let reads_log = harness.storage.reads - reads_before - reads_stream;
            reads_max = reads_max.max(reads_stream).max(reads_log);
        }
        println!("blocks={blocks} block_reads_max={reads_max}");
        let bound = u64::from(blocks.ilog2()) + 1;
        assert_eq!(reads_max, bound, "{blocks} blocks");
    }
}

#[test]
fn reads_of_blocks_being_written_are_served_from_memory() {
    // Goal: events in sealed blocks whose writes are still in flight, and in the open block,
    // are read from memory, and commits wait (commit_ready) only on the buffers.
    let mut harness = Harness::new(small_config(), None);
    harness.commit(Operation::CreateStream, &create_body(&[(1, 1)]));
    let mut prng = Prng::new(1);
    for _ in 0..20 {
        let body = one_batch(1, EXPECTED_OFFSET_ANY, vec![event_data(&mut prng, 60_000)]);
        harness.commit(Operation::Append, &body);
    }
    assert_eq!(harness.storage.in_flight(), 2);
    let reply = harness.read_stream(1, 0, u32::MAX);
    assert_eq!((reply.events.len(), reply.result), (1, ResultCode::Ok));
    for offset in 0..20 {
        assert_eq!(harness.read_stream(1, offset, 1).events[0].0.offset, offset);
        assert_eq!(harness.read_log(offset, 1).events[0].0.position, offset);
    }
    assert_eq!(harness.storage.reads, 0);
    harness.run_until_idle();
    assert_eq!(harness.read_stream(1, 3, 1).events[0].0.offset, 3);
    assert_eq!(harness.storage.reads, 2);
}

#[test]
fn read_slots_busy_hands_back_the_reply() {
    // Goal: with every read slot waiting on the disk, read_start returns ReadBusy with the
    // reply message, and the reads finish once completions arrive.
    let mut harness = long_stream(small_config(), 2);
    let request = ReadLog { position_from: 0, count_max: 1, wait_ms: 0 };
    let mut ids = Vec::new();
    for _ in 0..GRID_READS_MAX {
        let reply = harness.replies.get();
        let started = harness.machine.read_start(
            &mut harness.storage,
            Operation::ReadLog,
            request.as_bytes(),
            reply,
        );
        ids.push(started.unwrap());
    }
    let reply = harness.replies.get();
    let busy = harness.machine.read_start(
        &mut harness.storage,
        Operation::ReadLog,
        request.as_bytes(),
        reply,
    );
    assert!(busy.is_err());
    drop(busy);
    harness.run_until_idle();
    let mut finished = Vec::new();
    while let Some(reply) = harness.machine.poll_read() {
        assert_eq!(
            read_parse(&reply.message.buffer()[HEADER_SIZE..][..reply.body_size]).events.len(),
            1
        );
        finished.push(reply.id);
    }
    finished.sort_by_key(|id| id.0);
    assert_eq!(finished, ids);
}

#[test]
fn stream_info_reports_tenant_offset_and_chain() {
    // Goal: stream_info gives the tenant, next offset, event count and the chain head, which
    // equals the chain of the last event read back.
    let mut harness = Harness::new(small_config(), None);
    harness.commit(Operation::CreateStream, &create_body(&[(4, 44)]));
    let info = StreamInfoReply::read_from_bytes(
        &harness.read(Operation::StreamInfo, StreamInfo { stream: 4 }.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        (info.result, info.tenant, info.offset_next, Checksum::from(info.chain)),
        (0, 44, 0, chain_seed(4, 44))
    );
    harness.commit(Operation::Append, &one_batch(4, 0, vec![vec![1; 10], vec![2; 20]]));
    let info =
        StreamInfoReply::read_from_bytes(&harness.read(Operation::StreamInfo, 4u64.as_bytes()))
            .unwrap();
    let last = harness.read_stream(4, 1, 1);
    assert_eq!((info.offset_next, info.event_count, info.stream), (2, 2, 4));
    assert_eq!(info.chain, last.events[0].0.chain);
    // Nothing sealed or checkpointed yet: nothing in use; room for the grid but the reserve
    // of a checkpoint and the open block's seal.
    let limits = *harness.machine.limits();
    let room = limits.grid_blocks - limits.metadata_blocks_max as u64 - 1;
    let block = BLOCK_SIZE as u64;
    assert_eq!((info.grid_used_bytes, info.grid_room_bytes), (0, room * block));
    let state = harness.checkpoint();
    let info =
        StreamInfoReply::read_from_bytes(&harness.read(Operation::StreamInfo, 9u64.as_bytes()))
            .unwrap();
    assert_eq!(info.result, ResultCode::StreamNotFound as u32);
    assert_eq!(info.grid_used_bytes, u64::from(state.streams_table_blocks) * block);
}

#[test]
fn limits_bound_buffers_for_the_worst_commit() {
    // Goal: the buffer and reserve arithmetic gives sane numbers for the test and default
    // configurations.
    let small = Limits::new(&small_config());
    assert_eq!((small.grid_blocks, small.levels, small.table_blocks_max), (128, 8, 2));
    assert_eq!((small.metadata_blocks_max, small.free_blocks_max), (3, 6));
    assert_eq!(small.event_size_max, 65536 - 256 - 24 - 56);
    assert_eq!(small.seals_per_commit_max, 3);
    let default = Limits::new(&Config::new(ClusterId(1), ReplicaIndex(0), 3));
    assert_eq!(
        (default.grid_blocks, default.levels, default.event_size_max),
        (2048, 12, EVENT_SIZE_MAX)
    );
    assert_eq!(default.seals_per_commit_max, 35);
    // The root has slots for the largest grid's table; the reserve is the cluster's grid's.
    assert_eq!((default.table_blocks_max, default.metadata_blocks_max), (113, 114));
    assert_eq!(checkpoint_blocks_max(default.streams_max, default.grid_blocks), 58);
    // The root lists the blocks of the largest checkpoint in the largest grid: STREAMS_MAX fits
    // (a larger streams_max would not), and any accepted configuration builds its limits.
    let largest = Config {
        streams_max: crate::constants::STREAMS_MAX,
        grid_size: crate::constants::GRID_SIZE_MAX,
        ..Config::new(ClusterId(1), ReplicaIndex(0), 3)
    };
    assert_eq!(largest.invalid(), None);
    assert!(config_invalid(9_700_000).is_some_and(|reason| reason.contains("list its blocks")));
    let large = Config { streams_max: 8_000_000, ..largest };
    assert_eq!(large.invalid(), None);
    assert!(Limits::new(&large).metadata_blocks_max > 10_000);
}

#[test]
fn commits_reads_and_checkpoints_allocate_nothing_after_new() {
    // Goal: once the state machine exists, committing (with seals), reading (from memory and
    // from the grid) and checkpointing make no heap allocation.
    let mut harness = Harness::new(small_config(), None);
    let streams: Vec<(u64, u64)> = (1..=8).map(|stream| (stream, stream)).collect();
    harness.commit(Operation::CreateStream, &create_body(&streams));
    let mut prng = Prng::new(5);
    let bodies: Vec<Vec<u8>> = (0..48)
        .map(|index| {
            let events = (0..5).map(|_| event_data(&mut prng, 10_000)).collect();
            one_batch(1 + index % 8, EXPECTED_OFFSET_ANY, events)
        })
        .collect();
    let reads: Vec<(Operation, Vec<u8>)> = (0..16u64)
        .map(|index| match index % 2 {
            0 => (
                Operation::ReadLog,
                ReadLog { position_from: index * 7, count_max: 20, wait_ms: 0 }.as_bytes().to_vec(),
            ),
            _ => (
                Operation::ReadStream,
                ReadStream { stream: 1 + index % 8, offset_from: index, count_max: 9, wait_ms: 0 }
                    .as_bytes()
                    .to_vec(),
            ),
        })
        .collect();
    let mut reply_body = vec![0u8; 65536];
    harness.completions.reserve(64);
    let mut allocations = Vec::with_capacity(2);
    for round in 0..2 {
        if round == 1 {
            crate::stdx::allocation_guard::arm();
        }
        for body in &bodies {
            while !harness.machine.commit_ready() {
                harness.deliver(1);
            }
            harness.op += 1;
            let (op, storage) = (harness.op, &mut harness.storage);
            harness.machine.grid_limit_raise(harness.machine.limits().grid_blocks);
            harness.machine.commit(storage, op, op.get(), Operation::Append, body, &mut reply_body);
        }
        for (operation, body) in &reads {
            let reply = harness.replies.get();
            harness.machine.read_start(&mut harness.storage, *operation, body, reply).unwrap();
            while harness.machine.poll_read().is_none() {
                harness.deliver(1);
            }
        }
        harness.machine.checkpoint(&mut harness.storage);
        while harness.machine.poll_checkpoint().is_none() {
            harness.deliver(1);
        }
        allocations.push(crate::stdx::allocation_guard::allocations_since_armed());
        crate::stdx::allocation_guard::disarm();
    }
    assert_eq!(allocations[1], 0);
    assert!(harness.storage.reads > 0);
}

#[test]
fn grid_too_small_for_the_table_refuses_every_change() {
    // Goal: a grid smaller than the streams table's reserve is valid; creates get
    // storage_full and checkpoints write nothing (they record the cluster's grid only).
    let config = Config { grid_size: 2 * BLOCK_SIZE as u64, streams_max: 65_536, ..small_config() };
    let mut harness = Harness::new(config, None);
    assert!(checkpoint_blocks_max(65_536, 2) > 2);
    let reply = harness.commit(Operation::CreateStream, &create_body(&[(1, 1)]));
    assert_eq!(create_results(&reply), [ResultCode::StorageFull]);
    let reply = harness.commit(Operation::Append, &one_batch(1, 0, vec![vec![1]]));
    assert_eq!(append_results(&reply), [(ResultCode::StreamNotFound, 0)]);
    let state = harness.checkpoint();
    assert_eq!(state, CheckpointState { grid_blocks_limit: 2, ..CheckpointState::default() });
    assert_eq!(harness.read_log(0, 10).end, 0);
}

#[test]
fn the_smallest_grid_format_allows_holds_a_stream_and_one_block_less_does_not() {
    // Goal: `grid_blocks_min`, which `format` names, is where grids start to hold a stream's
    // events for good: every larger grid holds one (the reserve grows a skip level at each
    // power of two, so a grid just past one could fail where a smaller one holds), at it a
    // create and an append succeed, and one block less refuses the append.
    for streams_max in [1, 2, 64, 5_000, 65_536, 1_000_000] {
        let blocks_min = grid_blocks_min(streams_max);
        for blocks in blocks_min..blocks_min * 4 + 64 {
            assert!(grid_holds_a_stream(streams_max, blocks), "{streams_max} {blocks}");
        }
    }
    assert!(grid_holds_a_stream(65_536, 31) && !grid_holds_a_stream(65_536, 32));
    assert_eq!(grid_blocks_min(65_536), 35);
    for streams_max in [1, 64, 5_000] {
        let blocks = grid_blocks_min(streams_max);
        let config =
            Config { grid_size: blocks * BLOCK_SIZE as u64, streams_max, ..small_config() };
        let mut harness = Harness::new(config, None);
        let reply = harness.commit(Operation::CreateStream, &create_body(&[(1, 1)]));
        assert_eq!(create_results(&reply), [ResultCode::Ok], "{streams_max}");
        let reply = harness.commit(Operation::Append, &one_batch(1, 0, vec![vec![1]]));
        assert_eq!(append_results(&reply), [(ResultCode::Ok, 0)], "{streams_max}");
        harness.checkpoint();
        if blocks > 1 {
            let smaller = Config { grid_size: (blocks - 1) * BLOCK_SIZE as u64, ..config };
            let mut harness = Harness::new(smaller, None);
            let reply = harness.commit(Operation::CreateStream, &create_body(&[(1, 1)]));
            let created = create_results(&reply)[0] == ResultCode::Ok;
            let reply = harness.commit(Operation::Append, &one_batch(1, 0, vec![vec![1]]));
            assert!(!created || append_results(&reply)[0].0 == ResultCode::StorageFull);
        }
    }
}

/// Appends event `index` (its data: `index`'s bytes) at offset `index` of stream 1.
fn append_numbered(harness: &mut Harness, index: u64) {
    let body = one_batch(1, index, vec![index.to_le_bytes().to_vec()]);
    assert_eq!(append_results(&harness.commit(Operation::Append, &body))[0].0, ResultCode::Ok);
}

#[test]
fn checkpoints_reuse_the_blocks_of_the_one_before_last_and_never_seal_a_partial_block() {
    // Goal: the grid grows with the events, not with the checkpoints: a checkpoint copies the
    // open block into a tail instead of sealing it partly empty, and writes its blocks into
    // those of the checkpoint before the last. 300 checkpoints of one small event each used
    // 600 blocks before (a sealed block and a table block each); now the events share one
    // block and the checkpoints cycle through a few.
    let mut harness = Harness::new(small_config(), None);
    harness.commit(Operation::CreateStream, &create_body(&[(1, 1)]));
    let mut state = CheckpointState::default();
    for index in 0..300u64 {
        append_numbered(&mut harness, index);
        state = harness.checkpoint();
    }
    let limits = *harness.machine.limits();
    assert_eq!(harness.machine.log.blocks, 0, "no block was sealed");
    assert!(state.grid_head <= 3 * limits.metadata_blocks_max as u64, "{state:?}");
    let reopened = Harness::open(harness.config, disk_copy(&harness), None, &state);
    let mut reopened = reopened.expect("the last checkpoint opens, tail and all");
    let read = reopened.read_stream(1, 0, u32::MAX);
    assert_eq!(read.events.len(), 300);
    for (index, (record, event)) in read.events.iter().enumerate() {
        assert_eq!(
            (record.offset, &event.data),
            (index as u64, &(index as u64).to_le_bytes().to_vec())
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Import: an exported log replayed.

/// Every event of `harness`'s log with its stream's tenant, in log order.
fn log_with_tenants(harness: &mut Harness) -> Vec<(EventRecord, TestEvent, u64)> {
    let mut events = Vec::new();
    loop {
        let read = harness.read_log(events.len() as u64, u32::MAX);
        assert_eq!(read.result, ResultCode::Ok);
        for (record, event) in read.events {
            let info = harness.read(Operation::StreamInfo, record.stream.as_bytes());
            let tenant = StreamInfoReply::read_from_bytes(&info).unwrap().tenant;
            events.push((record, event, tenant));
        }
        if read.next >= read.end {
            return events;
        }
    }
}

/// Import request bodies for `events`: batches of at most `batch_size_max` bytes, at most
/// `APPEND_BATCHES_MAX` per body.
fn import_bodies(events: &[(EventRecord, TestEvent, u64)], batch_size_max: usize) -> Vec<Vec<u8>> {
    let mut encoder = ImportEncoder::new(batch_size_max);
    let mut batches = Vec::new();
    for (record, event, tenant) in events {
        batches.extend(encoder.push(record, &event.as_event(), *tenant));
    }
    batches.extend(encoder.finish());
    batches.chunks(APPEND_BATCHES_MAX).map(|chunk| chunk.concat()).collect()
}

#[test]
fn import_replays_an_exported_log_to_identical_records_and_chains() {
    // Goal: a random log (creates, appends of many streams over many ops), read back with its
    // tenants and encoded as import batches (of one stream and one op each), imports
    // into an empty store with every batch ok and every record identical: offsets, positions,
    // timestamps, payloads and chains; each stream's stream_info is the source's; a second
    // store fed the same imports with its completions in another order holds the same grid.
    let config = Config { grid_size: 32 * MIB, ..small_config() };
    let mut source = Harness::new(config, Some(11));
    let mut workload = Workload::new(11, &source);
    for _ in 0..120 {
        workload.commit_random(&mut [&mut source]);
    }
    let events = log_with_tenants(&mut source);
    assert!(events.len() > 200, "{}", events.len());
    let mut target = Harness::new(config, Some(12));
    let mut twin = Harness::new(config, Some(13));
    let batch_size_max = config.message_size_max as usize - HEADER_SIZE;
    for (index, body) in import_bodies(&events, batch_size_max).iter().enumerate() {
        let reply = target.commit(Operation::Import, body);
        let results = append_results(&reply);
        assert!(results.iter().all(|(code, _)| *code == ResultCode::Ok), "{results:?}");
        assert_eq!(twin.commit(Operation::Import, body), reply);
        twin.deliver(index % 3);
    }
    let imported = log_with_tenants(&mut target);
    assert_eq!(imported, events);
    // Replicas that import the same ops hold the same grid, as for any op.
    assert_eq!(target.checkpoint(), twin.checkpoint());
    assert!(target.grid() == twin.grid());
    for (record, _, _) in &events {
        // The stream's fields; the grid figures after them follow each store's checkpoints.
        let info = |harness: &mut Harness| {
            harness.read(Operation::StreamInfo, record.stream.as_bytes())[..56].to_vec()
        };
        assert_eq!(info(&mut target), info(&mut source));
    }
}

#[test]
fn import_refuses_each_batch_that_does_not_continue_the_log_exactly() {
    // Goal: against a store holding the first events of an export, a batch is refused, with
    // nothing of it appended, when its position is not the log's next (the offset in the
    // reply is that position), its offset or tenant is not the stream's, its events do not
    // chain to its checksum, or its stream id is invalid; the right next batch then succeeds.
    let mut source = Harness::new(small_config(), None);
    source.commit(Operation::CreateStream, &create_body(&[(4, 44)]));
    source.commit(Operation::Append, &one_batch(4, 0, vec![vec![1; 10], vec![2; 20]]));
    source.commit(Operation::Append, &one_batch(4, 2, vec![vec![3; 30]]));
    let events = log_with_tenants(&mut source);
    let bodies = import_bodies(&events, 4096);
    assert_eq!(bodies.len(), 1);
    let (first, second) = import_batch_split(&bodies[0]).unwrap().unwrap();
    let second_bytes = second.rest;
    let first_bytes = &bodies[0][..bodies[0].len() - second_bytes.len()];
    let mut target = Harness::new(small_config(), None);
    let result =
        |target: &mut Harness, body: &[u8]| append_results(&target.commit(Operation::Import, body));
    assert_eq!(result(&mut target, second_bytes), [(ResultCode::ImportPositionWrong, 0)]);
    assert_eq!(result(&mut target, first_bytes), [(ResultCode::Ok, 0)]);
    assert_eq!(result(&mut target, first_bytes), [(ResultCode::ImportPositionWrong, 2)]);
    let altered = |change: &dyn Fn(&mut ImportBatch)| {
        let mut bytes = second_bytes.to_vec();
        let (mut head, _) = ImportBatch::read_from_prefix(&bytes).unwrap();
        change(&mut head);
        bytes[..size_of::<ImportBatch>()].copy_from_slice(head.as_bytes());
        bytes
    };
    let offset = altered(&|head| head.append.expected_offset = 3);
    assert_eq!(result(&mut target, &offset), [(ResultCode::ExpectedOffsetWrong, 2)]);
    let tenant = altered(&|head| head.tenant = 45);
    assert_eq!(result(&mut target, &tenant), [(ResultCode::ExpectedOffsetWrong, 2)]);
    let timestamp = altered(&|head| head.timestamp += 1);
    assert_eq!(result(&mut target, &timestamp), [(ResultCode::ImportChainWrong, 2)]);
    // The last event: 8 bytes of header, type "t", 30 bytes of data, one byte of padding.
    let mut data = second_bytes.to_vec();
    let at = data.len() - 2;
    data[at] ^= 1;
    assert_eq!(result(&mut target, &data), [(ResultCode::ImportChainWrong, 2)]);
    let stream = altered(&|head| head.append.stream = u64::MAX);
    assert_eq!(result(&mut target, &stream), [(ResultCode::StreamIdInvalid, 0)]);
    assert_eq!(result(&mut target, second_bytes), [(ResultCode::Ok, 2)]);
    assert_eq!(log_with_tenants(&mut target), events);
    assert_eq!(first.append.event_count, 2);
}
