//! A typed, thread-safe client for a Kimberlite cluster.
//!
//! ```no_run
//! use kimberlite_client::{Client, EventData, Expected, Options};
//!
//! let client = Client::connect(Options::new(7, vec!["127.0.0.1:3001".parse().unwrap()]))?;
//! let offset = client.append(5, Expected::NoStream, &[EventData::new("Greeted", "hello")])?;
//! for event in client.read_stream(5, 0) {
//!     let event = event?;
//!     println!("{} {}", event.offset, String::from_utf8_lossy(&event.data));
//! }
//! # Ok::<(), kimberlite_client::Error>(())
//! ```
//!
//! One `Client` holds one session with the cluster and one thread that drives it; clone it
//! freely (clones share the session) and call it from any number of threads. **Appends are
//! batched automatically**: while a request is in flight, the appends of other threads queue,
//! and the next request carries as many of them as fit (each remains all or nothing, with its
//! own result), as TigerBeetle's clients batch. Reads and other calls go through the same
//! session one at a time. A subscription (`subscribe`) holds a session of its own, since its
//! reads wait at the replica for events to commit.
//!
//! The session rules (register, request numbers, finding the primary, retries with backoff,
//! eviction) are the client core's in the `kimberlite` crate, which the simulator's clients
//! run too; this crate depends on it without the replica (no io_uring, no global allocator).
//! `docs/client-protocol.md` describes them byte by byte.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kimberlite::client::{Client as Session, ClientError, Subscription as Position};
use kimberlite::constants::{APPEND_BATCHES_MAX, MESSAGE_SIZE_MAX};
use kimberlite::state_machine::constants::{EXPECTED_NO_STREAM, EXPECTED_OFFSET_ANY};
use kimberlite::state_machine::types::{
    AppendResult, CreateStream, CreateStreamResult, Event, ReadLog, ReadReplyHeader, ReadStream,
    StreamInfo as StreamInfoRequest, StreamInfoReply, append_batch_body, record_next,
};
use kimberlite::vsr::header::{ClusterId, Operation};

pub use kimberlite::state_machine::types::ResultCode;
use zerocopy::{FromBytes, IntoBytes};

/// How to reach a cluster.
#[derive(Clone, Debug)]
pub struct Options {
    /// The cluster's id (`kimberlite format --cluster`).
    pub cluster: u64,
    /// Every replica's address, in replica order.
    pub addresses: Vec<SocketAddr>,
    /// How long a call keeps retrying (other replicas, with backoff) before it fails with
    /// `Error::Timeout`.
    pub request_deadline: Duration,
    /// How long one read of a subscription may wait at the replica for events (at most 60 s).
    pub subscription_wait: Duration,
    /// Events one read asks for at most.
    pub read_count_max: u32,
}

impl Options {
    pub fn new(cluster: u64, addresses: Vec<SocketAddr>) -> Options {
        Options {
            cluster,
            addresses,
            request_deadline: Duration::from_secs(30),
            subscription_wait: Duration::from_secs(10),
            read_count_max: 1_000,
        }
    }
}

/// What went wrong, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// No replica answered before the deadline. A write's outcome is unknown: it may still
    /// commit (the session sends it again before anything else); read the stream to know.
    Timeout,
    /// The replicas close the connection without answering: they belong to another cluster
    /// (check `Options::cluster`), or every client slot of theirs is taken.
    WrongClusterOrFull { closes: u32 },
    /// The cluster ended the session (more clients than its `--clients-max`); the next call
    /// opens a new one. What was in flight has an unknown outcome.
    Evicted(String),
    /// The request is larger than a message: append fewer or smaller events.
    TooLarge { size: usize, size_max: usize },
    /// The call's arguments cannot be sent (an event type over 255 bytes, an empty append, an
    /// expected offset the protocol reserves, a deadline too long): fix the call.
    InvalidArgument(String),
    /// The cluster refused the operation: `code` says why (`stream_not_found`,
    /// `expected_offset_wrong`, `storage_full`, ...); `offset` is the stream's next offset
    /// where the code gives one.
    Refused { code: ResultCode, offset: u64 },
    /// A reply that does not parse: a bug, or a replica of another version.
    InvalidReply(String),
    /// The client's worker thread is gone.
    Closed,
}

impl std::fmt::Display for Error {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Timeout => write!(formatter, "no replica answered in time (outcome unknown)"),
            Error::WrongClusterOrFull { closes } => write!(
                formatter,
                "the replicas closed the connection {closes} times without answering: wrong \
                 cluster id, or every client slot taken"
            ),
            Error::Evicted(reason) => write!(formatter, "session evicted: {reason}"),
            Error::TooLarge { size, size_max } => {
                write!(formatter, "request of {size} bytes is larger than {size_max}")
            }
            Error::Refused { code, offset } => {
                write!(formatter, "refused: {} (stream's next offset {offset})", code.name())
            }
            Error::InvalidReply(reason) => write!(formatter, "invalid reply: {reason}"),
            Error::InvalidArgument(reason) => write!(formatter, "invalid argument: {reason}"),
            Error::Closed => write!(formatter, "the client is closed"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ClientError> for Error {
    fn from(error: ClientError) -> Error {
        match error {
            ClientError::Timeout => Error::Timeout,
            ClientError::Evicted(reason) => Error::Evicted(reason.to_string()),
            ClientError::RequestTooLarge { size, size_max } => Error::TooLarge { size, size_max },
            ClientError::InvalidReply(reason) => Error::InvalidReply(reason.to_string()),
            ClientError::ClosedUnanswered { closes } => Error::WrongClusterOrFull { closes },
        }
    }
}

/// What an append expects of its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Whatever the stream holds (it must exist).
    Any,
    /// The stream must not exist: the append creates it (tenant 0), atomically.
    NoStream,
    /// The first event must get this offset (the stream holds exactly this many events).
    Offset(u64),
}

/// An event to append: its type (1 to 255 bytes), optional metadata, and data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventData {
    pub event_type: Vec<u8>,
    pub metadata: Vec<u8>,
    pub data: Vec<u8>,
}

impl EventData {
    pub fn new(event_type: impl Into<Vec<u8>>, data: impl Into<Vec<u8>>) -> EventData {
        EventData { event_type: event_type.into(), metadata: Vec::new(), data: data.into() }
    }

    pub fn with_metadata(self, metadata: impl Into<Vec<u8>>) -> EventData {
        EventData { metadata: metadata.into(), ..self }
    }

    fn as_event(&self) -> Event<'_> {
        Event { event_type: &self.event_type, metadata: &self.metadata, data: &self.data }
    }
}

/// An event as the cluster holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    pub stream: u64,
    /// Its index in its stream, from 0.
    pub offset: u64,
    /// Its index in the whole log, from 0.
    pub position: u64,
    /// When the op that committed it was prepared (ns since the epoch, primary's clock).
    pub timestamp: u64,
    /// The stream's chain checksum after this event.
    pub chain: u128,
    pub event_type: Vec<u8>,
    pub metadata: Vec<u8>,
    pub data: Vec<u8>,
}

/// A stream's state (`Client::stream_info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    pub stream: u64,
    pub tenant: u64,
    /// The offset the next event will get: the number of events.
    pub offset_next: u64,
    /// The chain checksum after the last event.
    pub chain: u128,
    /// The answering replica's grid: bytes in use, and left before `storage_full`.
    pub grid_used_bytes: u64,
    pub grid_room_bytes: u64,
}

/// Where a subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// One stream, from this offset.
    Stream { stream: u64, offset: u64 },
    /// The whole log, from this position.
    Log { position: u64 },
}

/// A handle on a session with a cluster. See the crate documentation.
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle>,
}

/// The worker's queue and the options; the last `Client` dropped closes it.
struct Handle {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    options: Options,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Append requests sent, and the appends they carried.
    requests: AtomicU64,
    appends: AtomicU64,
}

/// How well appends were batched: requests sent, and the appends they carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    pub requests: u64,
    pub appends: u64,
}

struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// A call waiting for the worker, and where its answer goes.
enum Job {
    /// An append batch, encoded by the caller.
    Append {
        batch: Vec<u8>,
        answer: Answer<u64>,
    },
    Call {
        operation: Operation,
        body: Vec<u8>,
        linearizable: bool,
        answer: Answer<Vec<u8>>,
    },
}

/// A one-shot slot a caller waits on.
struct AnswerSlot<T> {
    value: Mutex<Option<Result<T, Error>>>,
    ready: Condvar,
}

/// The worker's end of an answer slot. Answering wakes the caller; dropped unanswered (the
/// worker exiting or panicking with the call in hand), it answers `Closed`: no caller is left
/// waiting forever.
struct Answer<T>(Option<Arc<AnswerSlot<T>>>);

impl<T> Answer<T> {
    fn answer(mut self, value: Result<T, Error>) {
        if let Some(slot) = self.0.take() {
            slot.set(value);
        }
    }
}

impl<T> Drop for Answer<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            slot.set(Err(Error::Closed));
        }
    }
}

/// A slot for a call's answer: the caller's end, and the worker's.
fn answer_new<T>() -> (Arc<AnswerSlot<T>>, Answer<T>) {
    let slot = Arc::new(AnswerSlot { value: Mutex::new(None), ready: Condvar::new() });
    (slot.clone(), Answer(Some(slot)))
}

impl<T> AnswerSlot<T> {
    fn set(&self, value: Result<T, Error>) {
        *self.value.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(value);
        self.ready.notify_all();
    }

    fn wait(&self) -> Result<T, Error> {
        let mut value = self.value.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            if let Some(value) = value.take() {
                return value;
            }
            value = self.ready.wait(value).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

impl Client {
    /// A client of the cluster `options` names. Connects lazily: the first call opens the
    /// session, and fails with `Error::Timeout` if no replica answers by its deadline.
    pub fn connect(options: Options) -> Result<Client, Error> {
        let invalid = |reason: &str| Err(Error::InvalidArgument(reason.to_string()));
        if options.addresses.is_empty() || options.addresses.len() > 7 {
            return invalid("Options::addresses must list 1 to 7 replicas");
        }
        let day = Duration::from_secs(86_400);
        if options.request_deadline > day || options.subscription_wait > day {
            return invalid("Options::request_deadline and subscription_wait: at most a day");
        }
        let shared = Arc::new(Shared {
            options,
            queue: Mutex::new(Queue { jobs: VecDeque::new(), closed: false }),
            wake: Condvar::new(),
            requests: AtomicU64::new(0),
            appends: AtomicU64::new(0),
        });
        let worker = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("kimberlite-client".into())
                .spawn(move || worker_run(&shared))
                .map_err(|_| Error::Closed)?
        };
        let handle = Handle { shared, worker: Mutex::new(Some(worker)) };
        Ok(Client { handle: Arc::new(handle) })
    }

    fn submit(&self, job: Job) -> Result<(), Error> {
        let shared = &self.handle.shared;
        let mut queue = shared.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if queue.closed {
            return Err(Error::Closed);
        }
        queue.jobs.push_back(job);
        shared.wake.notify_one();
        Ok(())
    }

    fn call(
        &self,
        operation: Operation,
        body: Vec<u8>,
        linearizable: bool,
    ) -> Result<Vec<u8>, Error> {
        let (slot, answer) = answer_new();
        self.submit(Job::Call { operation, body, linearizable, answer })?;
        slot.wait()
    }

    /// Creates stream `stream` (any id but 0 and `u64::MAX`) of `tenant`.
    pub fn create_stream(&self, stream: u64, tenant: u64) -> Result<(), Error> {
        let body = CreateStream { stream, tenant }.as_bytes().to_vec();
        let reply = self.call(Operation::CreateStream, body, false)?;
        let (result, _) = CreateStreamResult::read_from_prefix(&reply)
            .map_err(|_| Error::InvalidReply("short create_stream reply".into()))?;
        result_check(result.result, 0)
    }

    /// Appends `events` to `stream` as `expected` says, all or none; returns the offset of the
    /// first. Concurrent appends from other threads share requests with this one.
    pub fn append(
        &self,
        stream: u64,
        expected: Expected,
        events: &[EventData],
    ) -> Result<u64, Error> {
        let batch = batch_encode(stream, expected, events)?;
        let (slot, answer) = answer_new();
        self.submit(Job::Append { batch, answer })?;
        slot.wait()
    }

    /// The append requests sent so far, and the appends they carried (more than one each when
    /// threads append concurrently).
    pub fn batching(&self) -> Batching {
        let shared = &self.handle.shared;
        Batching {
            requests: shared.requests.load(Ordering::Relaxed),
            appends: shared.appends.load(Ordering::Relaxed),
        }
    }

    /// The stream's tenant, length and chain.
    pub fn stream_info(&self, stream: u64) -> Result<StreamInfo, Error> {
        self.stream_info_as(stream, false)
    }

    fn stream_info_as(&self, stream: u64, linearizable: bool) -> Result<StreamInfo, Error> {
        let body = StreamInfoRequest { stream }.as_bytes().to_vec();
        let reply = self.call(Operation::StreamInfo, body, linearizable)?;
        let (info, _) = StreamInfoReply::read_from_prefix(&reply)
            .map_err(|_| Error::InvalidReply("short stream_info reply".into()))?;
        result_check(info.result, 0)?;
        Ok(StreamInfo {
            stream: info.stream,
            tenant: info.tenant,
            offset_next: info.offset_next,
            chain: u128::from_le_bytes(info.chain.as_bytes().try_into().expect("16 bytes")),
            grid_used_bytes: info.grid_used_bytes,
            grid_room_bytes: info.grid_room_bytes,
        })
    }

    /// The events of `stream` from `offset` on, as committed when each read is served (an
    /// iterator: it reads `Options::read_count_max` at a time, and ends at the stream's end).
    pub fn read_stream(&self, stream: u64, offset: u64) -> Events {
        Events::new(self.clone(), Start::Stream { stream, offset })
    }

    /// The events of the whole log from `position` on, in log order.
    pub fn read_log(&self, position: u64) -> Events {
        Events::new(self.clone(), Start::Log { position })
    }

    /// Every event from `from` on, as it commits, until dropped: a blocking iterator that never
    /// ends by itself. It sees each event once, in order, through replica failures (its reads
    /// resume where the last reply left off, on whichever replica answers).
    pub fn subscribe(&self, from: Start) -> Subscription {
        let options = &self.handle.shared.options;
        let session = session_new(options);
        let position = match from {
            Start::Stream { stream, offset } => Position::Stream { stream, offset },
            Start::Log { position } => Position::Log { position },
        };
        Subscription {
            session,
            position,
            buffered: VecDeque::new(),
            wait: options.subscription_wait,
            count_max: options.read_count_max,
        }
    }

    /// A read served by the primary once it has confirmed with a quorum that it is current:
    /// it reflects every write acknowledged before it was sent.
    pub fn stream_info_linearizable(&self, stream: u64) -> Result<u64, Error> {
        Ok(self.stream_info_as(stream, true)?.offset_next)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).closed = true;
        shared.wake.notify_all();
        let worker = self.worker.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(worker) = worker {
            let _ = worker.join();
        }
    }
}

fn result_check(result: u32, offset: u64) -> Result<(), Error> {
    match ResultCode::from_u32(result) {
        Some(ResultCode::Ok) => Ok(()),
        Some(code) => Err(Error::Refused { code, offset }),
        None => Err(Error::InvalidReply(format!("unknown result code {result}"))),
    }
}

/// The worker: takes jobs in order; an append takes the appends queued behind it into the same
/// request, as many as fit.
fn worker_run(shared: &Shared) {
    let _closing = WorkerExit { shared };
    let mut session = session_new(&shared.options);
    loop {
        let jobs = {
            let mut queue = shared.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            while queue.jobs.is_empty() && !queue.closed {
                queue = shared.wake.wait(queue).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if queue.jobs.is_empty() {
                return;
            }
            jobs_take(&mut queue.jobs, session.body_size_max())
        };
        match jobs {
            Taken::Appends(appends) => {
                shared.requests.fetch_add(u64::from(!appends.is_empty()), Ordering::Relaxed);
                shared.appends.fetch_add(appends.len() as u64, Ordering::Relaxed);
                appends_send(&mut session, appends);
            }
            Taken::Call(operation, body, linearizable, answer) => {
                let reply = if operation.is_read() && linearizable {
                    session.read_linearizable(operation, &body)
                } else if operation.is_read() {
                    session.read(operation, &body)
                } else {
                    session.write(operation, &body)
                };
                answer.answer(reply.map(|reply| reply.body.to_vec()).map_err(Error::from));
            }
        }
    }
}

/// A session with the cluster `options` names (the worker's, or a subscription's own).
fn session_new(options: &Options) -> Session {
    let mut session =
        Session::new(ClusterId(options.cluster), &options.addresses, MESSAGE_SIZE_MAX);
    session.set_request_deadline(options.request_deadline);
    session
}

/// An append's batch, encoded, and where its result goes.
struct Append {
    batch: Vec<u8>,
    answer: Answer<u64>,
}

enum Taken {
    Appends(Vec<Append>),
    Call(Operation, Vec<u8>, bool, Answer<Vec<u8>>),
}

/// The first job, and if it is an append, every append right behind it that fits in the same
/// request (at most `APPEND_BATCHES_MAX` batches, `body_size_max` bytes).
fn jobs_take(jobs: &mut VecDeque<Job>, body_size_max: usize) -> Taken {
    let mut appends: Vec<Append> = Vec::new();
    let mut size = 0;
    while appends.len() < APPEND_BATCHES_MAX {
        match jobs.front() {
            Some(Job::Append { .. }) => {}
            Some(Job::Call { .. }) if appends.is_empty() => {
                let Some(Job::Call { operation, body, linearizable, answer }) = jobs.pop_front()
                else {
                    unreachable!("just seen")
                };
                return Taken::Call(operation, body, linearizable, answer);
            }
            _ => break,
        }
        let Some(Job::Append { batch, answer }) = jobs.pop_front() else {
            unreachable!("just seen")
        };
        if batch.len() > body_size_max {
            answer.answer(Err(Error::TooLarge { size: batch.len(), size_max: body_size_max }));
            continue;
        }
        if size + batch.len() > body_size_max {
            // The next request's first append.
            jobs.push_front(Job::Append { batch, answer });
            break;
        }
        size += batch.len();
        appends.push(Append { batch, answer });
    }
    Taken::Appends(appends)
}

/// The append batch of `events`, or why it cannot be sent. Runs on the caller's thread.
fn batch_encode(stream: u64, expected: Expected, events: &[EventData]) -> Result<Vec<u8>, Error> {
    let invalid = |reason: String| Err(Error::InvalidArgument(reason));
    let expected_offset = match expected {
        Expected::Any => EXPECTED_OFFSET_ANY,
        Expected::NoStream => EXPECTED_NO_STREAM,
        Expected::Offset(offset) if offset >= EXPECTED_NO_STREAM => {
            return invalid(format!("expected offset {offset} is reserved by the protocol"));
        }
        Expected::Offset(offset) => offset,
    };
    if events.is_empty() {
        return invalid("an append takes at least one event".to_string());
    }
    for event in events {
        let sizes = (event.event_type.len(), event.metadata.len(), event.data.len());
        let fits = sizes.0 <= usize::from(u8::MAX)
            && sizes.1 <= usize::from(u16::MAX)
            && u32::try_from(sizes.2).is_ok();
        if !fits {
            return invalid(format!(
                "an event's type, metadata and data are at most 255, 65535 and 2^32 - 1 bytes \
                 (this one: {}, {}, {})",
                sizes.0, sizes.1, sizes.2
            ));
        }
    }
    let events: Vec<Event<'_>> = events.iter().map(EventData::as_event).collect();
    Ok(append_batch_body(stream, expected_offset, &events))
}

/// Whatever ends the worker (the last `Client` dropped, or a panic): the queue closes, and
/// every call still in it is answered `Closed` (as its `Answer` drops).
struct WorkerExit<'a> {
    shared: &'a Shared,
}

impl Drop for WorkerExit<'_> {
    fn drop(&mut self) {
        let mut queue = self.shared.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        queue.closed = true;
        queue.jobs.clear();
    }
}

/// Sends the appends as one request and hands each its own result.
fn appends_send(session: &mut Session, appends: Vec<Append>) {
    if appends.is_empty() {
        return;
    }
    let body: Vec<u8> = appends.iter().flat_map(|append| append.batch.iter().copied()).collect();
    let reply = session.write(Operation::Append, &body).map(|reply| reply.body.to_vec());
    let results = match reply {
        Ok(reply) if reply.len() == appends.len() * size_of::<AppendResult>() => reply,
        Ok(_) => {
            let error = Error::InvalidReply("not one result per append".into());
            return appends.into_iter().for_each(|append| append.answer.answer(Err(error.clone())));
        }
        Err(error) => {
            let error = Error::from(error);
            return appends.into_iter().for_each(|append| append.answer.answer(Err(error.clone())));
        }
    };
    for (append, bytes) in appends.into_iter().zip(results.chunks_exact(size_of::<AppendResult>()))
    {
        let result = AppendResult::read_from_bytes(bytes).expect("sized");
        append.answer.answer(result_check(result.result, result.offset).map(|()| result.offset));
    }
}

/// Parses a read reply: its header, and its events.
fn events_parse(body: &[u8]) -> Result<(ReadReplyHeader, Vec<RecordedEvent>), Error> {
    let invalid = |reason: &str| Error::InvalidReply(reason.to_string());
    let (head, mut records) =
        ReadReplyHeader::read_from_prefix(body).map_err(|_| invalid("short read reply"))?;
    result_check(head.result, head.next)?;
    let mut events = Vec::with_capacity(head.event_count as usize);
    for _ in 0..head.event_count {
        let (record, event, rest) = record_next(records).map_err(invalid)?;
        events.push(RecordedEvent {
            stream: record.stream,
            offset: record.offset,
            position: record.position,
            timestamp: record.timestamp,
            chain: u128::from_le_bytes(record.chain.as_bytes().try_into().expect("16 bytes")),
            event_type: event.event_type.to_vec(),
            metadata: event.metadata.to_vec(),
            data: event.data.to_vec(),
        });
        records = rest;
    }
    Ok((head, events))
}

/// The events of a stream or of the log (`Client::read_stream`, `Client::read_log`).
pub struct Events {
    client: Client,
    from: Start,
    buffered: VecDeque<RecordedEvent>,
    done: bool,
}

impl Events {
    fn new(client: Client, from: Start) -> Events {
        Events { client, from, buffered: VecDeque::new(), done: false }
    }

    fn fill(&mut self) -> Result<(), Error> {
        let count_max = self.client.handle.shared.options.read_count_max;
        let (operation, body) = match self.from {
            Start::Stream { stream, offset } => {
                let read = ReadStream { stream, offset_from: offset, count_max, wait_ms: 0 };
                (Operation::ReadStream, read.as_bytes().to_vec())
            }
            Start::Log { position } => {
                let read = ReadLog { position_from: position, count_max, wait_ms: 0 };
                (Operation::ReadLog, read.as_bytes().to_vec())
            }
        };
        let reply = self.client.call(operation, body, false)?;
        let (head, events) = events_parse(&reply)?;
        match &mut self.from {
            Start::Stream { offset, .. } => *offset = head.next,
            Start::Log { position } => *position = head.next,
        }
        self.done = head.next >= head.end || events.is_empty();
        self.buffered.extend(events);
        Ok(())
    }
}

impl Iterator for Events {
    type Item = Result<RecordedEvent, Error>;

    fn next(&mut self) -> Option<Result<RecordedEvent, Error>> {
        if self.buffered.is_empty()
            && !self.done
            && let Err(error) = self.fill()
        {
            self.done = true;
            return Some(Err(error));
        }
        self.buffered.pop_front().map(Ok)
    }
}

/// Events as they commit (`Client::subscribe`): `next` blocks until one comes.
pub struct Subscription {
    session: Session,
    position: Position,
    buffered: VecDeque<RecordedEvent>,
    wait: Duration,
    count_max: u32,
}

impl Subscription {
    /// Where the subscription continues: the next offset of its stream, or position of the log.
    pub fn position(&self) -> u64 {
        match self.position {
            Position::Stream { offset, .. } => offset - self.buffered.len() as u64,
            Position::Log { position } => position - self.buffered.len() as u64,
        }
    }

    /// The next event, waiting at most about `timeout` for one (None if none came).
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<RecordedEvent, Error>> {
        if self.buffered.is_empty() {
            let wait = timeout.min(self.wait);
            let reply = self.session.subscription_next(&mut self.position, self.count_max, wait);
            match reply.map_err(Error::from).and_then(|reply| events_parse(reply.body)) {
                Ok((_, events)) => self.buffered.extend(events),
                // The stream does not exist yet: it is waited for like an event.
                Err(Error::Refused { code: ResultCode::StreamNotFound, .. }) => {}
                Err(error) => return Some(Err(error)),
            }
        }
        self.buffered.pop_front().map(Ok)
    }
}

impl Iterator for Subscription {
    type Item = Result<RecordedEvent, Error>;

    fn next(&mut self) -> Option<Result<RecordedEvent, Error>> {
        loop {
            if let Some(event) = self.next_timeout(self.wait) {
                return Some(event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_that_cannot_be_sent_fail_at_once_and_leave_the_client_usable() {
        // Goal: an event type over 255 bytes, metadata over 65,535, an empty append and a
        // reserved expected offset are refused on the caller's thread with InvalidArgument
        // (the worker never sees them, so nothing hangs), as are deadlines over a day; a
        // client dropped with nothing in flight ends its worker.
        let address = "127.0.0.1:9".parse().unwrap();
        let mut options = Options::new(1, vec![address]);
        options.request_deadline = Duration::from_secs(100_000);
        assert!(matches!(Client::connect(options), Err(Error::InvalidArgument(_))));
        let client = Client::connect(Options::new(1, vec![address])).unwrap();
        let invalid = |result: Result<u64, Error>| matches!(result, Err(Error::InvalidArgument(_)));
        assert!(invalid(client.append(1, Expected::Any, &[EventData::new(vec![b't'; 256], "")])));
        let metadata = EventData::new("t", "").with_metadata(vec![0; 65_536]);
        assert!(invalid(client.append(1, Expected::Any, &[metadata])));
        assert!(invalid(client.append(1, Expected::Any, &[])));
        let event = EventData::new("t", "d");
        let reserved = Expected::Offset(EXPECTED_NO_STREAM);
        assert!(invalid(client.append(1, reserved, std::slice::from_ref(&event))));
        assert_eq!(client.batching(), Batching { requests: 0, appends: 0 });
        drop(client);
    }

    #[test]
    fn an_answer_dropped_unanswered_answers_closed() {
        // Goal: the worker's end of a call dropped without an answer (the worker exiting or
        // panicking with the call in hand) wakes the caller with Closed.
        let (slot, answer) = answer_new::<u64>();
        let waiter = std::thread::spawn(move || slot.wait());
        drop(answer);
        assert_eq!(waiter.join().unwrap(), Err(Error::Closed));
    }
}
