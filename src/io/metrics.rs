//! `kimberlite start --metrics=ADDRESS`: the Prometheus text format over HTTP, served by the
//! replica's own event loop through its one ring.
//!
//! At most `METRICS_CONNECTIONS_MAX` scrapes are served at once, each with a buffer of
//! `METRICS_BUFFER_SIZE` from a pool allocated at startup: the request is received into it,
//! and once its headers have arrived the response is rendered over it (`Exposition`, a
//! `fmt::Write` into the buffer) and sent, and the connection closed (`Connection: close`).
//! Nothing allocates after startup. `GET /metrics` (or `/`) gets the metrics; another path gets
//! 404, another method 405, a request larger than the buffer 431; a connection that has not
//! sent its request within `METRICS_REQUEST_TICKS_MAX` is closed.
//!
//! The endpoint's operations share the ring with the message bus and the data file:
//! `MetricsServer::owns` tells the server loop which completions are its.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use zerocopy::FromBytes;

use crate::constants::{
    LATENCY_BUCKETS_US, METRICS_BUFFER_SIZE, METRICS_CONNECTIONS_MAX, METRICS_REQUEST_TICKS_MAX,
    METRICS_RESPONSE_TICKS_MAX,
};
use crate::io::log::{Quoted, log};
use crate::io::ring::{Completed, ConnectionToken, Io, Operation};
use crate::io::socket::{self, ErrorDisplay};
use crate::state_machine::types::{ReadLog, ReadStream};
use crate::stdx::id_index::IdIndex;
use crate::vsr::header::{Header, Operation as VsrOperation};
use crate::vsr::message_pool::{Message, MessagePool};

/// Connection tokens of the endpoint start here: the message bus's are its connection indices,
/// far below.
const TOKEN_BASE: u32 = u32::MAX - METRICS_CONNECTIONS_MAX as u32;

/// Bytes kept in front of a rendered body for the response's status line and headers.
const RESPONSE_HEAD_SIZE: usize = 160;

/// A latency histogram with fixed buckets (`LATENCY_BUCKETS_US`), cumulative when rendered.
#[derive(Clone, Copy, Debug)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last counts those above every bound.
    buckets: [u64; LATENCY_BUCKETS_US.len() + 1],
    count: u64,
    sum_us: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram { buckets: [0; LATENCY_BUCKETS_US.len() + 1], count: 0, sum_us: 0 }
    }
}

impl Histogram {
    pub fn observe(&mut self, duration: Duration) {
        let us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US.partition_point(|bound| *bound < us);
        self.buckets[bucket] += 1;
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

/// A response body being rendered into a buffer, in the Prometheus text format (0.0.4).
/// Writing past the buffer sets `overflowed` (the endpoint then answers 500).
pub struct Exposition<'a> {
    buffer: &'a mut [u8],
    length: usize,
    overflowed: bool,
}

impl fmt::Write for Exposition<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let end = self.length + text.len();
        if end > self.buffer.len() {
            self.overflowed = true;
            return Err(fmt::Error);
        }
        self.buffer[self.length..end].copy_from_slice(text.as_bytes());
        self.length = end;
        Ok(())
    }
}

impl Exposition<'_> {
    pub fn new(buffer: &mut [u8]) -> Exposition<'_> {
        Exposition { buffer, length: 0, overflowed: false }
    }

    /// The `# HELP` and `# TYPE` lines of a metric family (`kind`: gauge, counter, histogram).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    /// One sample; `labels` is empty or `key="value",...` without braces.
    pub fn sample(&mut self, name: &str, labels: &str, value: u64) {
        match labels {
            "" => drop(writeln!(self, "{name} {value}")),
            labels => drop(writeln!(self, "{name}{{{labels}}} {value}")),
        }
    }

    /// A family of one unlabeled sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "gauge", help);
        self.sample(name, "", value);
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, "", value);
    }

    /// The samples of one histogram (`name` without `_bucket`), in seconds; `labels` as for
    /// `sample`.
    pub fn histogram(&mut self, name: &str, labels: &str, histogram: &Histogram) {
        let comma = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in LATENCY_BUCKETS_US.iter().zip(histogram.buckets) {
            cumulative += count;
            let le = Seconds(*bound);
            let _ = writeln!(self, "{name}_bucket{{{labels}{comma}le=\"{le}\"}} {cumulative}");
        }
        let count = histogram.count;
        let _ = writeln!(self, "{name}_bucket{{{labels}{comma}le=\"+Inf\"}} {count}");
        let (sum, braces) = (Seconds(histogram.sum_us), !labels.is_empty());
        let (open, close) = if braces { ("{", "}") } else { ("", "") };
        let _ = writeln!(self, "{name}_sum{open}{labels}{close} {sum}");
        let _ = writeln!(self, "{name}_count{open}{labels}{close} {count}");
    }

    pub fn len(&self) -> usize {
        self.length
    }

    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed
    }
}

/// Microseconds as seconds, with no trailing zeros: `2500` is `0.0025`.
struct Seconds(u64);

impl fmt::Display for Seconds {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, mut fraction) = (self.0 / 1_000_000, self.0 % 1_000_000);
        write!(formatter, "{whole}")?;
        if fraction == 0 {
            return Ok(());
        }
        let mut digits = 6;
        while fraction % 10 == 0 {
            fraction /= 10;
            digits -= 1;
        }
        write!(formatter, ".{fraction:0digits$}")
    }
}

/// Times the requests this replica answers, from their arrival to their reply leaving, per
/// client (a client has one request in flight): writes and reads apart, reads that ask to wait
/// for events (subscriptions) not at all. A table of `clients_max` entries allocated at startup;
/// a request arriving with the table full is not timed (`untimed`), and an entry whose reply
/// never left (the request was dropped, or the client moved to another replica) is expired.
pub struct RequestTimer {
    entries: Vec<TimedRequest>,
    free: Vec<u32>,
    index: IdIndex,
    pub writes: Histogram,
    pub reads: Histogram,
    pub untimed: u64,
}

#[derive(Clone, Copy)]
struct TimedRequest {
    /// 0 when free.
    client: u64,
    /// The request's checksum: a copy sent again is the same request, whereas a read and the
    /// write after it may share a request number.
    checksum: u128,
    read: bool,
    arrived: Instant,
}

impl RequestTimer {
    pub fn new(clients_max: usize) -> RequestTimer {
        let free = TimedRequest { client: 0, checksum: 0, read: false, arrived: Instant::now() };
        RequestTimer {
            entries: vec![free; clients_max],
            free: (0..clients_max as u32).rev().collect(),
            index: IdIndex::new(clients_max),
            writes: Histogram::default(),
            reads: Histogram::default(),
            untimed: 0,
        }
    }

    /// A request arrived (`body` is its body). A copy of the request already timed keeps the
    /// first arrival: the client waited since then.
    pub fn arrived(&mut self, header: &Header, body: &[u8], now: Instant) {
        let Some(operation) = header.operation() else { return };
        let (client, checksum) = (header.client.get(), header.checksum.0);
        if client == 0 || read_waits(operation, body) {
            return;
        }
        let entries = &self.entries;
        if let Some(at) = self.index.find(client, |at| entries[at].client) {
            let entry = &mut self.entries[at];
            if entry.checksum != checksum {
                (entry.checksum, entry.read, entry.arrived) = (checksum, operation.is_read(), now);
            }
            return;
        }
        let Some(at) = self.free.pop() else {
            self.untimed += 1;
            return;
        };
        let at = at as usize;
        self.entries[at] =
            TimedRequest { client, checksum, read: operation.is_read(), arrived: now };
        let entries = &self.entries;
        assert!(self.index.insert(client, at, |at| entries[at].client));
    }

    /// A reply left for `header.client`: if it answers the timed request (its `context` is
    /// the request's checksum), that one is done.
    pub fn replied(&mut self, header: &Header, now: Instant) {
        let client = header.client.get();
        let entries = &self.entries;
        let Some(at) = self.index.find(client, |at| entries[at].client) else { return };
        let entry = self.entries[at];
        if entry.checksum != header.context {
            return;
        }
        let histogram = if entry.read { &mut self.reads } else { &mut self.writes };
        histogram.observe(now.saturating_duration_since(entry.arrived));
        self.remove(at);
    }

    /// Forgets requests that arrived more than `age` ago and were never answered here.
    pub fn expire(&mut self, now: Instant, age: Duration) {
        for at in 0..self.entries.len() {
            let entry = self.entries[at];
            if entry.client != 0 && now.saturating_duration_since(entry.arrived) > age {
                self.remove(at);
            }
        }
    }

    fn remove(&mut self, at: usize) {
        let entries = &self.entries;
        self.index.remove(entries[at].client, |at| entries[at].client);
        self.entries[at].client = 0;
        self.free.push(at as u32);
    }
}

/// Whether a read asks to wait for events (its latency is the wait, not the replica's).
fn read_waits(operation: VsrOperation, body: &[u8]) -> bool {
    match operation {
        VsrOperation::ReadStream => ReadStream::read_from_bytes(body).is_ok_and(|r| r.wait_ms > 0),
        VsrOperation::ReadLog => ReadLog::read_from_bytes(body).is_ok_and(|r| r.wait_ms > 0),
        _ => false,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    /// A receive is in flight.
    Receiving,
    /// The response's send is in flight.
    Sending,
    /// The close is in flight.
    Closing,
}

struct Connection {
    state: State,
    fd: RawFd,
    generation: u32,
    opened_tick: u64,
    /// `shutdown` was called (on a timeout): the receive or send in flight ends with 0 or an
    /// error.
    shut: bool,
    received: usize,
    buffer: Option<Message>,
}

/// What a request asks for, once its headers have arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Metrics,
    NotFound,
    MethodNotAllowed,
    TooLarge,
}

crate::vsr::counters::counters! {
/// The endpoint's own counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointMetrics {
    pub scrapes: u64,
    /// Requests answered 404, 405 or 431, and connections closed before their request came.
    pub requests_refused: u64,
    pub connections_timed_out: u64,
    /// Connections closed at once because every connection of the endpoint was in use.
    pub connections_over_limit: u64,
    /// Responses larger than the buffer, answered 500: a bug in `METRICS_BUFFER_SIZE`.
    pub responses_overflowed: u64,
}
}

/// The endpoint. See the module documentation.
pub struct MetricsServer {
    listener: OwnedFd,
    address: SocketAddr,
    accepting: bool,
    accept_paused: bool,
    connections: [Connection; METRICS_CONNECTIONS_MAX],
    pool: MessagePool,
    ticks: u64,
    pub metrics: EndpointMetrics,
}

impl MetricsServer {
    /// Listens on `address` and allocates the endpoint's buffers; the first accept goes into
    /// the ring.
    pub fn listen(io: &mut Io, address: SocketAddr) -> std::io::Result<MetricsServer> {
        let listener = socket::listen(address, METRICS_CONNECTIONS_MAX as i32)?;
        let bound = socket::local_address(listener.as_raw_fd())?;
        let connections = std::array::from_fn(|_| Connection {
            state: State::Free,
            fd: -1,
            generation: 0,
            opened_tick: 0,
            shut: false,
            received: 0,
            buffer: None,
        });
        let mut server = MetricsServer {
            listener,
            address: bound,
            accepting: false,
            accept_paused: false,
            connections,
            pool: MessagePool::new(METRICS_CONNECTIONS_MAX, METRICS_BUFFER_SIZE),
            ticks: 0,
            metrics: EndpointMetrics::default(),
        };
        server.accept_submit(io);
        Ok(server)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Whether `operation` is one of the endpoint's.
    pub fn owns(&self, operation: &Operation) -> bool {
        match operation {
            Operation::Accept { fd } => *fd == self.listener.as_raw_fd(),
            Operation::Connect { token, .. }
            | Operation::Receive { token, .. }
            | Operation::Send { token, .. }
            | Operation::Close { token, .. } => token.index >= TOKEN_BASE,
            _ => false,
        }
    }

    fn accept_submit(&mut self, io: &mut Io) {
        if !self.accepting && !self.accept_paused {
            self.accepting = true;
            io.submit(Operation::Accept { fd: self.listener.as_raw_fd() });
        }
    }

    /// Closes connections whose request is late, and resumes accepting after a failure.
    pub fn on_tick(&mut self, io: &mut Io) {
        self.ticks += 1;
        self.accept_paused = false;
        self.accept_submit(io);
        for connection in &mut self.connections {
            // A request late to arrive, or a response the peer does not read: the operation
            // in flight then ends with an error or 0, and the connection closes.
            let deadline = match connection.state {
                State::Receiving => METRICS_REQUEST_TICKS_MAX,
                State::Sending => METRICS_RESPONSE_TICKS_MAX,
                State::Free | State::Closing => continue,
            };
            if self.ticks > connection.opened_tick + deadline && !connection.shut {
                connection.shut = true;
                self.metrics.connections_timed_out += 1;
                socket::shutdown(connection.fd);
            }
        }
    }

    /// Takes one of the endpoint's completions. Returns the connection whose request has
    /// arrived and what it asks for: the caller renders the response (`render`) and sends it
    /// (`respond`).
    pub fn on_completion(&mut self, io: &mut Io, completed: Completed) -> Option<(usize, Request)> {
        match completed.operation {
            Operation::Accept { .. } => {
                self.accepting = false;
                self.accept_complete(io, completed.result);
                None
            }
            Operation::Receive { token, buffer, .. } => {
                let index = self.connection_of(token);
                self.receive_complete(io, index, buffer, completed.result)
            }
            Operation::Send { token, .. } => {
                let index = self.connection_of(token);
                self.close(io, index);
                None
            }
            Operation::Close { token, .. } => {
                let index = self.connection_of(token);
                let connection = &mut self.connections[index];
                assert_eq!(connection.state, State::Closing);
                connection.state = State::Free;
                connection.buffer = None;
                None
            }
            operation => panic!("not a metrics endpoint operation: {operation:?}"),
        }
    }

    fn connection_of(&self, token: ConnectionToken) -> usize {
        let index = (token.index - TOKEN_BASE) as usize;
        assert_eq!(self.connections[index].generation, token.generation);
        index
    }

    fn token(&self, index: usize) -> ConnectionToken {
        let generation = self.connections[index].generation;
        ConnectionToken { index: TOKEN_BASE + index as u32, generation }
    }

    fn accept_complete(
        &mut self,
        io: &mut Io,
        result: Result<usize, crate::vsr::storage::IoError>,
    ) {
        let fd = match result {
            Ok(fd) => fd as RawFd,
            Err(error) => {
                log!(Error, AcceptFailed, "endpoint=metrics error={}", Quoted(ErrorDisplay(error)));
                self.accept_paused = true;
                return;
            }
        };
        let Some(index) = self.connections.iter().position(|c| c.state == State::Free) else {
            self.metrics.connections_over_limit += 1;
            socket::close(fd);
            return self.accept_submit(io);
        };
        let connection = &mut self.connections[index];
        connection.generation = connection.generation.wrapping_add(1);
        connection.state = State::Receiving;
        connection.fd = fd;
        connection.opened_tick = self.ticks;
        connection.shut = false;
        connection.received = 0;
        connection.buffer = Some(self.pool.get());
        self.receive_submit(io, index);
        self.accept_submit(io);
    }

    fn receive_submit(&mut self, io: &mut Io, index: usize) {
        let token = self.token(index);
        let connection = &mut self.connections[index];
        let buffer = connection.buffer.take().expect("a receiving connection holds its buffer");
        io.submit(Operation::Receive {
            fd: connection.fd,
            token,
            buffer,
            offset: connection.received,
            length: METRICS_BUFFER_SIZE - connection.received,
        });
    }

    fn receive_complete(
        &mut self,
        io: &mut Io,
        index: usize,
        buffer: Message,
        result: Result<usize, crate::vsr::storage::IoError>,
    ) -> Option<(usize, Request)> {
        let connection = &mut self.connections[index];
        assert_eq!(connection.state, State::Receiving);
        connection.buffer = Some(buffer);
        match result {
            Ok(0) | Err(_) => {
                self.metrics.requests_refused += 1;
                self.close(io, index);
                return None;
            }
            Ok(length) => connection.received += length,
        }
        let received =
            &connection.buffer.as_ref().expect("just put back").buffer()[..connection.received];
        match request_parse(received) {
            Some(request) => Some((index, request)),
            None if connection.received == METRICS_BUFFER_SIZE => Some((index, Request::TooLarge)),
            None => {
                self.receive_submit(io, index);
                None
            }
        }
    }

    /// Renders the response to connection `index`'s request: `body` writes the metrics (for
    /// `Request::Metrics`). Then `respond` sends it.
    pub fn render(
        &mut self,
        index: usize,
        request: Request,
        body: impl FnOnce(&mut Exposition),
    ) -> (usize, usize) {
        let connection = &mut self.connections[index];
        assert_eq!(connection.state, State::Receiving);
        let buffer = connection.buffer.as_mut().expect("held while receiving").buffer_mut_unique();
        let (head, rest) = buffer.split_at_mut(RESPONSE_HEAD_SIZE);
        let mut exposition = Exposition::new(rest);
        let status = match request {
            Request::Metrics => {
                body(&mut exposition);
                if exposition.overflowed() {
                    self.metrics.responses_overflowed += 1;
                    (exposition.length, exposition.overflowed) = (0, false);
                    let _ = exposition.write_str("metrics larger than the response buffer\n");
                    "500 Internal Server Error"
                } else {
                    self.metrics.scrapes += 1;
                    "200 OK"
                }
            }
            refused => {
                self.metrics.requests_refused += 1;
                log!(Info, MetricsRequestInvalid, "answer={refused:?}");
                let (status, text) = match refused {
                    Request::NotFound => ("404 Not Found", "not found: GET /metrics\n"),
                    Request::MethodNotAllowed => ("405 Method Not Allowed", "GET /metrics\n"),
                    _ => ("431 Request Header Fields Too Large", "request too large\n"),
                };
                let _ = exposition.write_str(text);
                status
            }
        };
        let body_length = exposition.len();
        let mut line = [0u8; RESPONSE_HEAD_SIZE];
        let mut head_text = Exposition::new(&mut line);
        let _ = write!(
            head_text,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: {body_length}\r\nConnection: close\r\n\r\n"
        );
        assert!(!head_text.overflowed());
        let head_length = head_text.len();
        let start = RESPONSE_HEAD_SIZE - head_length;
        head[start..].copy_from_slice(&line[..head_length]);
        (start, head_length + body_length)
    }

    /// Sends the response `render` placed at `offset..offset + length` of the buffer.
    pub fn respond(&mut self, io: &mut Io, index: usize, (offset, length): (usize, usize)) {
        let token = self.token(index);
        let connection = &mut self.connections[index];
        assert_eq!(connection.state, State::Receiving);
        connection.state = State::Sending;
        let buffer = connection.buffer.take().expect("held until sent");
        io.submit(Operation::Send { fd: connection.fd, token, buffer, offset, length });
    }

    fn close(&mut self, io: &mut Io, index: usize) {
        let token = self.token(index);
        let connection = &mut self.connections[index];
        assert!(matches!(connection.state, State::Receiving | State::Sending));
        connection.state = State::Closing;
        io.submit(Operation::Close { fd: connection.fd, token });
    }
}

/// What the request in `bytes` asks for, once its headers have all arrived (None before).
fn request_parse(bytes: &[u8]) -> Option<Request> {
    bytes.windows(4).position(|window| window == b"\r\n\r\n")?;
    let line_end = bytes.iter().position(|byte| *byte == b'\r').unwrap_or(bytes.len());
    let mut words = bytes[..line_end].split(|byte| *byte == b' ');
    let (method, target) = (words.next().unwrap_or(b""), words.next().unwrap_or(b""));
    if method != b"GET" {
        return Some(Request::MethodNotAllowed);
    }
    let path = target.split(|byte| *byte == b'?').next().unwrap_or(b"");
    Some(if path == b"/metrics" || path == b"/" { Request::Metrics } else { Request::NotFound })
}

impl Drop for MetricsServer {
    /// Closes the sockets still open; operations in the ring complete when the ring drops.
    fn drop(&mut self) {
        for connection in &self.connections {
            if matches!(connection.state, State::Receiving | State::Sending) {
                socket::shutdown(connection.fd);
                socket::close(connection.fd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_written_without_trailing_zeros() {
        // Goal: bucket bounds in microseconds print as Prometheus `le` values in seconds.
        let text = |us| Seconds(us).to_string();
        assert_eq!(
            (text(25), text(2_500), text(1_000_000)),
            ("0.000025".into(), "0.0025".into(), "1".into())
        );
        assert_eq!((text(0), text(5_000_001)), ("0".into(), "5.000001".into()));
    }

    #[test]
    fn histograms_render_cumulative_buckets() {
        // Goal: observations land in the first bucket whose bound holds them (bounds are
        // inclusive), buckets render cumulatively, and `+Inf`, `_sum` and `_count` follow.
        let mut histogram = Histogram::default();
        for us in [25, 26, 1_000, 10_000_000] {
            histogram.observe(Duration::from_micros(us));
        }
        let mut buffer = [0u8; 4096];
        let mut exposition = Exposition::new(&mut buffer);
        exposition.histogram("h", "kind=\"write\"", &histogram);
        let length = exposition.len();
        let text = std::str::from_utf8(&buffer[..length]).unwrap();
        assert!(text.contains("h_bucket{kind=\"write\",le=\"0.000025\"} 1\n"), "{text}");
        assert!(text.contains("h_bucket{kind=\"write\",le=\"0.00005\"} 2\n"), "{text}");
        assert!(text.contains("h_bucket{kind=\"write\",le=\"0.001\"} 3\n"), "{text}");
        assert!(text.contains("h_bucket{kind=\"write\",le=\"5\"} 3\n"), "{text}");
        assert!(text.contains("h_bucket{kind=\"write\",le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("h_sum{kind=\"write\"} 10.001051\nh_count{kind=\"write\"} 4\n"));
    }

    #[test]
    fn requests_parse_once_their_headers_arrived() {
        // Goal: nothing is decided before the blank line; then GET /metrics (with or without a
        // query) and GET / are served, another path is 404 and another method 405.
        assert_eq!(request_parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        let parse = |text: &str| request_parse(text.as_bytes());
        assert_eq!(parse("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Some(Request::Metrics));
        assert_eq!(parse("GET /metrics?a=b HTTP/1.1\r\n\r\n"), Some(Request::Metrics));
        assert_eq!(parse("GET / HTTP/1.0\r\n\r\n"), Some(Request::Metrics));
        assert_eq!(parse("GET /other HTTP/1.1\r\n\r\n"), Some(Request::NotFound));
        assert_eq!(parse("POST /metrics HTTP/1.1\r\n\r\n"), Some(Request::MethodNotAllowed));
        assert_eq!(parse("\r\n\r\n"), Some(Request::MethodNotAllowed));
    }

    #[test]
    fn requests_are_timed_from_first_arrival_to_their_reply() {
        // Goal: a write is timed from its first copy's arrival to the reply to that request; a
        // reply to an older request, or to a read with the same number, does not end it; a
        // read lands in the read histogram, a waiting read in none; a full table leaves
        // requests untimed; expiry frees entries.
        use crate::vsr::header::{ClientId, ClusterId, Command, Operation};
        let mut timer = RequestTimer::new(2);
        let request = |client: u64, number: u32, operation: Operation| {
            let mut header = Header::new(Command::Request, ClusterId(1));
            (header.client, header.request, header.operation) =
                (ClientId(client), number, operation as u8);
            header.set_checksum_body(&[]);
            header.set_checksum();
            header
        };
        // The reply to `request(..)`: it names the request's checksum.
        let reply = |client: u64, number: u32, operation: Operation| {
            let mut header = Header::new(Command::Reply, ClusterId(1));
            header.client = ClientId(client);
            header.context = request(client, number, operation).checksum.0;
            header
        };
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        timer.arrived(&request(7, 3, Operation::Append), &[], at(0));
        timer.arrived(&request(7, 3, Operation::Append), &[], at(5));
        timer.replied(&reply(7, 2, Operation::Append), at(6));
        // A read that shares the write's number is another request: not this one's reply.
        timer.replied(&reply(7, 3, Operation::ReadLog), at(7));
        assert_eq!(timer.writes.count(), 0);
        timer.replied(&reply(7, 3, Operation::Append), at(10));
        assert_eq!((timer.writes.count(), timer.writes.sum_us), (1, 10_000));
        let wait = ReadLog { position_from: 0, count_max: 1, wait_ms: 100 };
        timer.arrived(
            &request(8, 1, Operation::ReadLog),
            zerocopy::IntoBytes::as_bytes(&wait),
            at(0),
        );
        timer.replied(&reply(8, 1, Operation::ReadLog), at(100));
        assert_eq!(timer.reads.count(), 0);
        timer.arrived(&request(8, 2, Operation::StreamInfo), &[], at(100));
        timer.arrived(&request(9, 1, Operation::Append), &[], at(100));
        timer.arrived(&request(10, 1, Operation::Append), &[], at(100));
        assert_eq!(timer.untimed, 1);
        timer.replied(&reply(8, 2, Operation::StreamInfo), at(101));
        assert_eq!(timer.reads.count(), 1);
        timer.expire(at(200), Duration::from_millis(50));
        timer.arrived(&request(10, 1, Operation::Append), &[], at(200));
        timer.arrived(&request(11, 1, Operation::Append), &[], at(200));
        assert_eq!(timer.untimed, 1);
    }

    #[test]
    fn an_overflowing_exposition_says_so() {
        // Goal: rendering past the buffer stops and is flagged, not cut silently.
        let mut buffer = [0u8; 16];
        let mut exposition = Exposition::new(&mut buffer);
        exposition.counter("a_long_metric_name", "help", 1);
        assert!(exposition.overflowed());
    }
}
