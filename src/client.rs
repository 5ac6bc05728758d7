//! The client library: a session with a cluster over TCP, one request in flight at a time.
//!
//! The session rules (register, request numbers, the parent chain, matching a reply to its
//! request by checksum and operation, finding the primary, retries to the next replica with
//! backoff, eviction) are the sans-IO client core's (`crate::vsr::client`), which the
//! simulator's clients run too; this module only moves its bytes over blocking sockets and
//! gives it the time (milliseconds since the client was made).
//!
//! A call returns when its reply comes, or fails with `Timeout` at its deadline. A read that
//! timed out is abandoned; a write that timed out is in doubt (it may still commit), so the
//! next call first sends it again until it is answered, and only then sends its own request:
//! no later write ever reuses its number (see the core's module doc for why). After an
//! eviction the client takes a new random id, and its next write registers a new session.
//!
//! This runs in client programs (the CLI, the benchmark), not in the replica: it uses blocking
//! sockets and allocates its buffers once per client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use zerocopy::{FromBytes, IntoBytes};

use crate::constants::{HEADER_SIZE, READ_WAIT_MS_MAX};
use crate::state_machine::types::{ReadLog, ReadReplyHeader, ReadStream, ResultCode};
use crate::vsr::client::{ClientCore, ClientMetrics, ClientOptions, Outcome, ReadOptions};
#[cfg(test)]
use crate::vsr::client_sessions::session_chain;
use crate::vsr::header::{ClientId, ClusterId, Command, EvictionReason, Header, Op, Operation};

/// How long a request waits for its reply before it is sent again (to the next replica);
/// doubled for each copy that timed out, up to `REQUEST_TIMEOUT_MAX`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
pub const REQUEST_TIMEOUT_MAX: Duration = Duration::from_millis(2_000);
/// How soon a request goes again after a backup named the primary or a replica was unreachable.
pub const REDIRECT_DELAY: Duration = Duration::from_millis(10);
/// How soon a request goes again to a primary that answered it is between views.
pub const PRIMARY_BUSY_DELAY: Duration = Duration::from_millis(50);
/// How soon a request goes again after a replica answered that it had no room for it (doubled
/// with each such answer in a row).
pub const BUSY_DELAY: Duration = Duration::from_millis(2);
/// The least time the replicas must have been closing every connection without answering
/// before a call fails with `ClosedUnanswered` rather than go on trying.
pub const CLOSED_UNANSWERED_MIN: Duration = Duration::from_secs(1);
/// How long a request keeps retrying before the call fails.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub enum ClientError {
    /// No replica answered before the deadline.
    Timeout,
    /// The cluster dropped this client's session; the next write registers a new one.
    Evicted(&'static str),
    /// The request body does not fit in one message.
    RequestTooLarge { size: usize, size_max: usize },
    /// A reply failed validation.
    InvalidReply(&'static str),
    /// Every replica, in turn, closed the connection without a word for a while: a replica
    /// closes the connection of a client whose messages name another cluster, or when every
    /// one of its client slots is taken. A write is then in doubt, as after `Timeout`: the next
    /// call sends it again first.
    ClosedUnanswered { closes: u32 },
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Timeout => write!(formatter, "no replica answered in time"),
            ClientError::Evicted(reason) => write!(formatter, "session evicted: {reason}"),
            ClientError::RequestTooLarge { size, size_max } => {
                write!(formatter, "request of {size} bytes exceeds the {size_max}-byte limit")
            }
            ClientError::InvalidReply(reason) => write!(formatter, "invalid reply: {reason}"),
            ClientError::ClosedUnanswered { closes } => write!(
                formatter,
                "the replicas closed the connection {closes} times in a row without answering; \
                 a replica does that to a client that names another cluster (check --cluster), \
                 or when all its client slots are taken"
            ),
        }
    }
}

impl std::error::Error for ClientError {}

/// Where a subscription stands: the offset of the next event of one stream, or the position
/// of the next event of the whole log (`Client::subscription_next`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subscription {
    Stream { stream: u64, offset: u64 },
    Log { position: u64 },
}

/// A reply: its header and body.
pub struct Reply<'a> {
    pub header: Header,
    pub body: &'a [u8],
}

pub struct Client {
    core: ClientCore,
    addresses: Vec<SocketAddr>,
    /// The connection, and the index into `addresses` of the replica it goes to.
    stream: Option<(usize, TcpStream)>,
    message_size_max: usize,
    /// The request in flight (header and body), kept until it is answered.
    send_buffer: Vec<u8>,
    send_size: usize,
    receive_buffer: Vec<u8>,
    receive_length: usize,
    /// The size of the reply last returned, still at the front of the receive buffer.
    reply_size_held: usize,
    request_deadline: Duration,
    /// Time zero of the core's clock.
    epoch: Instant,
    /// Connections the replicas closed since a message last arrived, and when the first of
    /// them was.
    closes_unanswered: (u32, Option<Instant>),
}

impl Client {
    pub fn new(cluster: ClusterId, addresses: &[SocketAddr], message_size_max: usize) -> Client {
        assert!(!addresses.is_empty());
        assert!(addresses.len() <= usize::from(u8::MAX));
        assert!(message_size_max > HEADER_SIZE);
        let id = random_client_id();
        Client {
            core: ClientCore::new(
                client_options(cluster, addresses.len()),
                id,
                id.get().rotate_left(17),
            ),
            addresses: addresses.to_vec(),
            stream: None,
            message_size_max,
            send_buffer: vec![0; message_size_max],
            send_size: 0,
            receive_buffer: vec![0; 2 * message_size_max],
            receive_length: 0,
            reply_size_held: 0,
            request_deadline: REQUEST_DEADLINE,
            epoch: Instant::now(),
            closes_unanswered: (0, None),
        }
    }

    /// How long a call keeps retrying before it fails with `Timeout` (`REQUEST_DEADLINE`
    /// unless set).
    pub fn set_request_deadline(&mut self, deadline: Duration) {
        self.request_deadline = deadline;
    }

    pub fn id(&self) -> ClientId {
        self.core.id()
    }

    /// The largest request body.
    pub fn body_size_max(&self) -> usize {
        self.message_size_max - HEADER_SIZE
    }

    pub fn commit_latest(&self) -> Op {
        self.core.commit_latest()
    }

    /// Counters of the session rules' paths (retries, duplicate replies dropped, ...).
    pub fn metrics(&self) -> ClientMetrics {
        self.core.metrics()
    }

    /// Reads will be served only by a replica that has executed at least `commit` (for
    /// example the commit of a write another client saw acknowledged).
    pub fn observe_commit(&mut self, commit: Op) {
        self.core.observe_commit(commit);
    }

    /// Opens the session (idempotent).
    pub fn register(&mut self) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.request_deadline;
        self.in_doubt_resolve(deadline)?;
        if !self.core.registered() {
            self.call(Operation::Register, &[], deadline, ReadOptions::default())?;
        }
        Ok(())
    }

    /// Sends a write (`create_stream`, `append`) and waits for its reply.
    pub fn write(&mut self, operation: Operation, body: &[u8]) -> Result<Reply<'_>, ClientError> {
        assert!(!operation.is_read());
        assert_ne!(operation, Operation::Register);
        let deadline = Instant::now() + self.request_deadline;
        self.in_doubt_resolve(deadline)?;
        if !self.core.registered() {
            self.call(Operation::Register, &[], deadline, ReadOptions::default())?;
        }
        self.call(operation, body, deadline, ReadOptions::default())
    }

    /// Sends a read and waits for its reply, served by whichever replica it reaches from that
    /// replica's commit (at least the highest this client has seen), without consensus.
    pub fn read(&mut self, operation: Operation, body: &[u8]) -> Result<Reply<'_>, ClientError> {
        self.read_as(operation, body, ReadOptions::default())
    }

    /// Sends a linearizable read: served by the primary only once an op it prepared after the
    /// read arrived has committed, so it reflects every write acknowledged before it was sent
    /// (a read of a deposed primary, or of a new one that has not committed what it inherited,
    /// is never answered). Costs a replication round, and an op of its own when nothing else
    /// is being written.
    pub fn read_linearizable(
        &mut self,
        operation: Operation,
        body: &[u8],
    ) -> Result<Reply<'_>, ClientError> {
        let read = ReadOptions { linearizable: true, ..ReadOptions::default() };
        self.read_as(operation, body, read)
    }

    /// Sends a read_stream or read_log whose body asks the replica to hold it up to `wait`
    /// (its `wait_ms`) until an event commits, and waits for the reply that much longer.
    pub fn read_waiting(
        &mut self,
        operation: Operation,
        body: &[u8],
        wait: Duration,
    ) -> Result<Reply<'_>, ClientError> {
        assert!(matches!(operation, Operation::ReadStream | Operation::ReadLog));
        let read = ReadOptions { patience: wait.as_millis() as u64, ..ReadOptions::default() };
        self.read_as(operation, body, read)
    }

    fn read_as(
        &mut self,
        operation: Operation,
        body: &[u8],
        read: ReadOptions,
    ) -> Result<Reply<'_>, ClientError> {
        assert!(operation.is_read());
        let patience = Duration::from_millis(read.patience);
        let deadline = Instant::now() + self.request_deadline + patience;
        self.in_doubt_resolve(deadline)?;
        self.call(operation, body, deadline, read)
    }

    /// The next events of `subscription`, as they commit: a read from where it stands that
    /// the replica holds up to `wait` (at most `READ_WAIT_MS_MAX` ms) until one commits. On an
    /// `ok` reply the subscription moves past the events returned (none if the wait ran out),
    /// so that it sees every event once, in order, whichever replica answers: a replica that
    /// executed less than this client has seen does not answer (the read goes to another).
    pub fn subscription_next(
        &mut self,
        subscription: &mut Subscription,
        count_max: u32,
        wait: Duration,
    ) -> Result<Reply<'_>, ClientError> {
        let wait_ms = wait.as_millis().min(u128::from(READ_WAIT_MS_MAX)) as u32;
        let wait = Duration::from_millis(u64::from(wait_ms));
        let (operation, body) = match *subscription {
            Subscription::Stream { stream, offset } => {
                let read = ReadStream { stream, offset_from: offset, count_max, wait_ms };
                (Operation::ReadStream, read.as_bytes().to_vec())
            }
            Subscription::Log { position } => {
                let read = ReadLog { position_from: position, count_max, wait_ms };
                (Operation::ReadLog, read.as_bytes().to_vec())
            }
        };
        let reply = self.read_waiting(operation, &body, wait)?;
        if let Ok((head, _)) = ReadReplyHeader::read_from_prefix(reply.body)
            && head.result == ResultCode::Ok as u32
        {
            match subscription {
                Subscription::Stream { offset, .. } => *offset = head.next,
                Subscription::Log { position } => *position = head.next,
            }
        }
        Ok(reply)
    }

    /// A write an earlier call gave up on is still in flight: sends it again until it is
    /// answered (its reply is dropped: that call already reported `Timeout`).
    fn in_doubt_resolve(&mut self, deadline: Instant) -> Result<(), ClientError> {
        self.reply_release();
        if self.core.in_flight().is_none() {
            return Ok(());
        }
        self.reply_wait(deadline)?;
        self.reply_release();
        Ok(())
    }

    fn reply_release(&mut self) {
        if self.reply_size_held > 0 {
            self.consume(self.reply_size_held);
            self.reply_size_held = 0;
        }
    }

    /// Sends `operation` and waits for its reply until `deadline`; a read is served as `read`
    /// says (default for a write).
    fn call(
        &mut self,
        operation: Operation,
        body: &[u8],
        deadline: Instant,
        read: ReadOptions,
    ) -> Result<Reply<'_>, ClientError> {
        let size = HEADER_SIZE + body.len();
        if size > self.message_size_max {
            let size_max = self.message_size_max - HEADER_SIZE;
            return Err(ClientError::RequestTooLarge { size: body.len(), size_max });
        }
        self.reply_release();
        let header = self.core.request_start_with(operation, body, self.now(), read);
        self.send_buffer[..HEADER_SIZE].copy_from_slice(header.as_bytes());
        self.send_buffer[HEADER_SIZE..size].copy_from_slice(body);
        self.send_size = size;
        let header = self.reply_wait(deadline)?;
        let body = &self.receive_buffer[HEADER_SIZE..header.size as usize];
        Ok(Reply { header, body })
    }

    /// Sends the request in flight as the core says (and again, where it says, on timeouts)
    /// until its reply arrives (held at the front of the receive buffer), an eviction, or the
    /// deadline.
    fn reply_wait(&mut self, deadline: Instant) -> Result<Header, ClientError> {
        // A streak of closes counts within one call (a timeout may have cut the last one short).
        self.closes_unanswered = (0, None);
        loop {
            let in_flight = *self.core.in_flight().expect("a request in flight");
            if Instant::now() >= deadline {
                if in_flight.operation.is_read() {
                    self.core.read_abandon();
                }
                return Err(ClientError::Timeout);
            }
            let now = self.now();
            if let Some(target) = self.core.poll_send(now)
                && self.send_to(usize::from(target)).is_err()
            {
                self.disconnect();
                self.core.on_unreachable(now);
            }
            let due = self.epoch + Duration::from_millis(self.core.send_due().expect("in flight"));
            let wait_until = deadline.min(due);
            if self.stream.is_none() {
                std::thread::sleep(wait_until.saturating_duration_since(Instant::now()));
                continue;
            }
            let header = match self.receive_message(wait_until) {
                Ok(Some(header)) => header,
                Ok(None) => continue,
                Err(error) => {
                    self.disconnect();
                    self.core.on_unreachable(self.now());
                    let closed = matches!(
                        error.kind(),
                        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                    );
                    if let Some(closes) = self.closed_unanswered(closed) {
                        if in_flight.operation.is_read() {
                            self.core.read_abandon();
                        }
                        return Err(ClientError::ClosedUnanswered { closes });
                    }
                    continue;
                }
            };
            self.closes_unanswered = (0, None);
            match self.core.on_message(&header, self.now()) {
                Outcome::Reply => {
                    self.reply_size_held = header.size as usize;
                    return Ok(header);
                }
                Outcome::Evicted(reason) => {
                    self.consume(header.size as usize);
                    self.core.session_new(random_client_id_other(self.core.id()));
                    return Err(ClientError::Evicted(eviction_reason(reason)));
                }
                Outcome::Redirect | Outcome::Busy | Outcome::Dropped(_) => {
                    self.consume(header.size as usize);
                }
            }
        }
    }

    /// Counts a connection that failed (`closed`: the replica closed it); returns the count once
    /// every replica closed it twice in a row without a message, over `CLOSED_UNANSWERED_MIN`
    /// at least: not a restart or a failover, which answer in between, nor a replica that is
    /// briefly out of client slots.
    fn closed_unanswered(&mut self, closed: bool) -> Option<u32> {
        let (closes, first) = &mut self.closes_unanswered;
        if !closed {
            self.closes_unanswered = (0, None);
            return None;
        }
        *closes += 1;
        let first = *first.get_or_insert_with(Instant::now);
        let count = *closes;
        if count < 2 * self.addresses.len() as u32 || first.elapsed() < CLOSED_UNANSWERED_MIN {
            return None;
        }
        self.closes_unanswered = (0, None);
        Some(count)
    }

    /// The core's clock: milliseconds since this client was made.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Sends the request in flight to replica `index`, connecting first if needed.
    fn send_to(&mut self, index: usize) -> std::io::Result<()> {
        if self.stream.as_ref().is_some_and(|(connected, _)| *connected != index) {
            self.disconnect();
        }
        if self.stream.is_none() {
            let stream = TcpStream::connect_timeout(&self.addresses[index], REQUEST_TIMEOUT)?;
            stream.set_nodelay(true)?;
            self.stream = Some((index, stream));
            self.receive_length = 0;
        }
        let (_, stream) = self.stream.as_mut().expect("connected");
        stream.write_all(&self.send_buffer[..self.send_size])
    }

    /// Reads until a complete, valid message arrives (`Some`, left at the front of the receive
    /// buffer), `deadline` passes (`None`), or the connection fails.
    fn receive_message(&mut self, deadline: Instant) -> std::io::Result<Option<Header>> {
        loop {
            if let Some(header) = self.take_message()? {
                return Ok(Some(header));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let (_, stream) = self.stream.as_mut().expect("connected");
            stream.set_read_timeout(Some(deadline - now))?;
            match stream.read(&mut self.receive_buffer[self.receive_length..]) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(count) => self.receive_length += count,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(error) if error.kind() == std::io::ErrorKind::TimedOut => return Ok(None),
                Err(error) => return Err(error),
            }
        }
    }

    /// The header of the complete message at the front of the receive buffer, validated, if
    /// one has arrived. The message stays in the buffer until `consume`.
    fn take_message(&mut self) -> std::io::Result<Option<Header>> {
        let received = &self.receive_buffer[..self.receive_length];
        message_parse(received, self.core.options().cluster, self.message_size_max)
    }

    /// Drops the first `size` bytes of the receive buffer (a message already handled).
    fn consume(&mut self, size: usize) {
        self.receive_buffer.copy_within(size..self.receive_length, 0);
        self.receive_length -= size;
    }

    fn disconnect(&mut self) {
        self.stream = None;
        self.receive_length = 0;
        self.reply_size_held = 0;
    }
}

/// The core's options for a cluster of `replica_count` replicas, in milliseconds.
pub(crate) fn client_options(cluster: ClusterId, replica_count: usize) -> ClientOptions {
    assert!(replica_count > 0 && replica_count <= usize::from(u8::MAX));
    ClientOptions {
        cluster,
        replica_count: replica_count as u8,
        request_timeout: REQUEST_TIMEOUT.as_millis() as u64,
        request_timeout_max: REQUEST_TIMEOUT_MAX.as_millis() as u64,
        redirect_delay: REDIRECT_DELAY.as_millis() as u64,
        primary_busy_delay: PRIMARY_BUSY_DELAY.as_millis() as u64,
        busy_delay: BUSY_DELAY.as_millis() as u64,
    }
}

/// The header of the complete message at the front of `received` (the bytes a connection
/// received so far), validated as a message for a client of `cluster`, if all of it arrived.
/// An error means the connection carries garbage and must be closed.
pub(crate) fn message_parse(
    received: &[u8],
    cluster: ClusterId,
    message_size_max: usize,
) -> std::io::Result<Option<Header>> {
    if received.len() < HEADER_SIZE {
        return Ok(None);
    }
    let header = Header::decode(&received[..HEADER_SIZE])
        .map_err(|reason| std::io::Error::new(std::io::ErrorKind::InvalidData, reason))?;
    let size = header.size as usize;
    if header.cluster != cluster || size > message_size_max {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "wrong cluster"));
    }
    if received.len() < size {
        return Ok(None);
    }
    if !header.valid_checksum_body(&received[HEADER_SIZE..size]) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "body checksum"));
    }
    let for_client = [Command::Reply, Command::Eviction, Command::PongClient, Command::Busy];
    if !header.command().is_some_and(|command| for_client.contains(&command)) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not for a client"));
    }
    Ok(Some(header))
}

pub(crate) fn eviction_reason(context: u32) -> &'static str {
    match context {
        value if value == EvictionReason::NoSession as u32 => "no session",
        value if value == EvictionReason::SessionEvicted as u32 => "the session table was full",
        value if value == EvictionReason::InvalidRequest as u32 => "invalid request",
        _ => "unknown reason",
    }
}

/// A random nonzero client id from the OS.
pub(crate) fn random_client_id() -> ClientId {
    let mut bytes = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut file| file.read_exact(&mut bytes));
    let mut id = u64::from_le_bytes(bytes);
    if read.is_err() || id == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|duration| duration.as_nanos() as u64)
            .unwrap_or(1);
        id = nanos ^ u64::from(std::process::id()).rotate_left(32) | 1;
    }
    ClientId(id)
}

/// A random client id other than `id` (for the new session after an eviction).
pub(crate) fn random_client_id_other(id: ClientId) -> ClientId {
    loop {
        let other = random_client_id();
        if other != id {
            return other;
        }
    }
}

#[cfg(test)]
mod tests;
