//! The benchmark's clients: `--clients` independent sessions, driven by a few threads. Each
//! thread is an event loop over nonblocking sockets and epoll; each session runs the client
//! core (`crate::vsr::client`), as the TCP client does, with its own connection, client id and
//! request numbers, exactly as many separate application processes would.
//!
//! A thread owns a share of the sessions and of the events. Closed loop (the default): every
//! session with nothing in flight takes the thread's next request at once, and a request's
//! latency runs from when it was sent. Open loop (`--rate`): the thread's requests fall due at
//! evenly spaced instants; a due request goes to a session with nothing in flight (or waits for
//! one), and its latency runs from the instant it fell due, so that a stall shows in the
//! latencies of every request it held back rather than only in the one it delayed.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use zerocopy::{FromBytes, IntoBytes};

use super::{EVENT_TYPE, Options};
use crate::client::{
    REQUEST_TIMEOUT, client_options, eviction_reason, message_parse, random_client_id,
};
use crate::constants::{HEADER_SIZE, MESSAGE_SIZE_MAX};
use crate::io::epoll::Epoll;
use crate::state_machine::constants::EXPECTED_OFFSET_ANY;
use crate::state_machine::types::{AppendEncoder, AppendResult, ResultCode};
use crate::vsr::client::{ClientCore, ClientMetrics, Outcome};
use crate::vsr::header::{ClusterId, Operation};

/// What one thread drives: clients `clients` (global indexes), `events` events in all, at
/// `rate` requests a second (open loop) or as fast as replies come (closed loop).
pub(super) struct Share {
    pub clients: std::ops::Range<usize>,
    pub events: u64,
    pub rate: Option<f64>,
}

/// The run's settings and the counters every thread shares.
pub(super) struct Load<'a> {
    pub options: &'a Options,
    pub addresses: &'a [SocketAddr],
    pub cluster: ClusterId,
    pub batch: u32,
    /// Events acknowledged so far, over every thread.
    pub done: &'a AtomicU64,
    /// Set by the first thread that fails (or on Ctrl-C): the others stop.
    pub failed: &'a AtomicBool,
}

/// What one thread measured.
pub(super) struct ShareResults {
    /// Request latencies, in microseconds.
    pub latencies_us: Vec<u64>,
    /// When its last reply came.
    pub last_reply: Instant,
    /// Its sessions' client core counters, summed.
    pub client: ClientMetrics,
}

/// A thread's measurements, or why it stopped.
pub(super) type ShareResult = Result<ShareResults, String>;

/// The most events one epoll wait reports.
const EVENTS_PER_WAIT: usize = 256;
/// Sessions that start (connect and register) between two looks at the replies.
const REGISTERS_PER_POLL: usize = 64;
/// The longest an event loop sleeps before it checks whether another thread failed.
const WAIT_MAX_MS: u64 = 100;

/// Drives `share` to its end; returns its latencies and the time of its last reply.
pub(super) fn run(load: &Load, share: Share) -> ShareResult {
    let result = Driver::new(load, share).and_then(|mut driver| driver.run());
    if result.is_err() {
        load.failed.store(true, Ordering::Relaxed);
    }
    result
}

struct Driver<'a> {
    load: &'a Load<'a>,
    epoll: Epoll,
    sessions: Vec<Session>,
    /// Sessions registered and with nothing in flight.
    idle: Vec<usize>,
    /// Events not yet handed to a request.
    events_left: u64,
    /// Requests in flight (registers included).
    in_flight: usize,
    rate: Option<f64>,
    /// Open loop: requests that fell due and wait for an idle session (their due instants).
    due: VecDeque<Instant>,
    /// Open loop: requests that fell due so far.
    due_count: u64,
    /// Time zero of the cores' clock (milliseconds) and of the open-loop schedule.
    epoch: Instant,
    /// The earliest instant (core clock) at which some session may have a copy to send again.
    timer_due: u64,
    latencies_us: Vec<u64>,
    last_reply: Instant,
}

impl<'a> Driver<'a> {
    fn new(load: &'a Load<'a>, share: Share) -> Result<Driver<'a>, String> {
        assert!(!share.clients.is_empty());
        let request_size = HEADER_SIZE
            + AppendEncoder::batch_size(
                (0..load.batch).map(|_| u64::from(load.options.event_size)),
            );
        assert!(request_size <= MESSAGE_SIZE_MAX);
        let epoch = Instant::now();
        let mut sessions = Vec::with_capacity(share.clients.len());
        for client in share.clients.clone() {
            let options = client_options(load.cluster, load.addresses.len());
            let id = random_client_id();
            sessions.push(Session {
                client,
                core: ClientCore::new(options, id, id.get().rotate_left(17)),
                socket: None,
                send: vec![0; request_size],
                send_size: 0,
                sent: 0,
                receive: vec![0; HEADER_SIZE + 4096],
                received: 0,
                started: epoch,
                events: 0,
                events_sent: 0,
                requests: 0,
            });
        }
        let requests = share.events.div_ceil(u64::from(load.batch));
        Ok(Driver {
            load,
            epoll: Epoll::new().map_err(|error| format!("epoll_create1: {error}"))?,
            sessions,
            idle: Vec::new(),
            events_left: share.events,
            in_flight: 0,
            rate: share.rate,
            due: VecDeque::new(),
            due_count: 0,
            epoch,
            timer_due: 0,
            latencies_us: Vec::with_capacity(requests as usize),
            last_reply: epoch,
        })
    }

    fn run(&mut self) -> ShareResult {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        for index in 0..self.sessions.len() {
            self.request_start(index, Operation::Register, 0, Instant::now())?;
            // Each session connects (blocking, if briefly) before it registers: thousands of
            // them in a row kept the replies of the first waiting past their timeout.
            if index % REGISTERS_PER_POLL == REGISTERS_PER_POLL - 1 {
                self.poll(&mut events, 0)?;
            }
        }
        loop {
            if self.load.failed.load(Ordering::Relaxed) {
                return Err("another client thread failed".to_string());
            }
            self.schedule();
            self.requests_assign()?;
            if self.events_left == 0 && self.in_flight == 0 {
                return Ok(self.results());
            }
            if self.now() >= self.timer_due {
                self.timers();
            }
            self.poll(&mut events, self.wait_ms())?;
        }
    }

    /// Waits up to `wait_ms` for sockets to be ready, and handles those that are.
    fn poll(&mut self, events: &mut [libc::epoll_event], wait_ms: i32) -> Result<(), String> {
        let count =
            self.epoll.wait(events, wait_ms).map_err(|error| format!("epoll_wait: {error}"))?;
        for event in &events[..count] {
            self.on_ready(event.u64 as usize, event.events)?;
        }
        Ok(())
    }

    fn results(&mut self) -> ShareResults {
        let mut client = ClientMetrics::default();
        for session in &self.sessions {
            client.add(&session.core.metrics());
        }
        let latencies_us = std::mem::take(&mut self.latencies_us);
        ShareResults { latencies_us, last_reply: self.last_reply, client }
    }

    /// The core's clock: milliseconds since the driver started.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Open loop: queues the requests that fell due since the last call.
    fn schedule(&mut self) {
        let Some(rate) = self.rate else { return };
        let requests_left = self.events_left.div_ceil(u64::from(self.load.batch));
        let due_total = (self.epoch.elapsed().as_secs_f64() * rate) as u64 + 1;
        while self.due_count < due_total && (self.due.len() as u64) < requests_left {
            let at = self.epoch + Duration::from_secs_f64(self.due_count as f64 / rate);
            self.due.push_back(at);
            self.due_count += 1;
        }
    }

    /// Hands the next requests to idle sessions: any that is due (open loop), or one per idle
    /// session (closed loop).
    fn requests_assign(&mut self) -> Result<(), String> {
        while self.events_left > 0 {
            let started = match self.rate {
                Some(_) => match self.due.front() {
                    Some(&at) if !self.idle.is_empty() => at,
                    _ => return Ok(()),
                },
                None => Instant::now(),
            };
            let Some(index) = self.idle.pop() else { return Ok(()) };
            if self.rate.is_some() {
                self.due.pop_front();
            }
            let count = self.events_left.min(u64::from(self.load.batch)) as u32;
            self.events_left -= u64::from(count);
            self.request_start(index, Operation::Append, count, started)?;
        }
        Ok(())
    }

    /// Starts a request of `count` events (a register if `operation` says so) on session
    /// `index`, and sends its first copy.
    fn request_start(
        &mut self,
        index: usize,
        operation: Operation,
        count: u32,
        started: Instant,
    ) -> Result<(), String> {
        let now = self.now();
        let options = self.load.options;
        let session = &mut self.sessions[index];
        let body_size = if operation == Operation::Append {
            let stream = 1
                + (session.client as u64 + session.requests * options.clients as u64)
                    % options.streams;
            let body = &mut session.send[HEADER_SIZE..];
            batch_fill(body, options.event_size, session.client, stream, count, session.events_sent)
        } else {
            0
        };
        let body = &session.send[HEADER_SIZE..HEADER_SIZE + body_size];
        let header = session.core.request_start(operation, body, now);
        session.send[..HEADER_SIZE].copy_from_slice(header.as_bytes());
        session.send_size = HEADER_SIZE + body_size;
        session.sent = session.send_size;
        session.started = started;
        session.events = count;
        self.in_flight += 1;
        self.session_poll_send(index, now);
        Ok(())
    }

    /// Sends session `index`'s request again where its core says a copy is due.
    fn session_poll_send(&mut self, index: usize, now: u64) {
        let session = &mut self.sessions[index];
        if let Some(target) = session.core.poll_send(now)
            && session
                .send_to(&self.epoll, self.load.addresses, usize::from(target), index)
                .is_err()
        {
            session.disconnect();
            session.core.on_unreachable(now);
        }
        if let Some(due) = session.core.send_due() {
            self.timer_due = self.timer_due.min(due);
        }
    }

    /// Sends every copy that fell due (timeouts, redirects) and finds the next such instant.
    fn timers(&mut self) {
        let now = self.now();
        self.timer_due = u64::MAX;
        for index in 0..self.sessions.len() {
            if self.sessions[index].core.in_flight().is_some() {
                self.session_poll_send(index, now);
            }
        }
    }

    /// How long the event loop may sleep: until a copy or an open-loop request falls due.
    fn wait_ms(&self) -> i32 {
        let now = self.now();
        let mut wait = self.timer_due.saturating_sub(now).min(WAIT_MAX_MS);
        let requests_left = self.events_left.div_ceil(u64::from(self.load.batch));
        // Once every request left is due (and waits for a session), no instant of the schedule
        // is worth waking for: only replies are.
        if let Some(rate) = self.rate
            && (self.due.len() as u64) < requests_left
        {
            let next = self.epoch + Duration::from_secs_f64(self.due_count as f64 / rate);
            let until = next.saturating_duration_since(Instant::now()).as_millis() as u64;
            wait = wait.min(until);
        }
        wait as i32
    }

    fn on_ready(&mut self, index: usize, events: u32) -> Result<(), String> {
        let now = self.now();
        let session = &mut self.sessions[index];
        if events & libc::EPOLLOUT as u32 != 0 && session.flush(&self.epoll, index).is_err() {
            session.disconnect();
            session.core.on_unreachable(now);
            self.session_poll_send(index, now);
            return Ok(());
        }
        if events & (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP) as u32 == 0 {
            return Ok(());
        }
        if session.receive_ready().is_err() {
            session.disconnect();
            session.core.on_unreachable(now);
            self.session_poll_send(index, now);
            return Ok(());
        }
        loop {
            let session = &mut self.sessions[index];
            let received = &session.receive[..session.received];
            let header = match message_parse(received, self.load.cluster, MESSAGE_SIZE_MAX) {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(_) => {
                    session.disconnect();
                    session.core.on_unreachable(now);
                    break;
                }
            };
            let size = header.size as usize;
            match session.core.on_message(&header, now) {
                Outcome::Reply => {
                    let body = &session.receive[HEADER_SIZE..size];
                    let result = reply_check(body, session.events);
                    session.consume(size);
                    result.map_err(|error| format!("client {}: {error}", session.client))?;
                    self.on_reply(index);
                }
                Outcome::Evicted(reason) => {
                    let reason = eviction_reason(reason);
                    return Err(format!("client {}: session evicted: {reason}", session.client));
                }
                Outcome::Redirect | Outcome::Busy | Outcome::Dropped(_) => session.consume(size),
            }
        }
        self.session_poll_send(index, now);
        Ok(())
    }

    fn on_reply(&mut self, index: usize) {
        let session = &mut self.sessions[index];
        if session.sent < session.send_size {
            // A later copy is still half in the socket: the next request's bytes must not
            // finish it, so this connection ends and the next request opens another.
            session.disconnect();
        }
        let replied = Instant::now();
        if session.events > 0 {
            let latency = replied.saturating_duration_since(session.started);
            self.latencies_us.push(latency.as_micros() as u64);
            self.load.done.fetch_add(u64::from(session.events), Ordering::Relaxed);
            session.events_sent += u64::from(session.events);
            session.requests += 1;
            self.last_reply = replied;
        }
        session.events = 0;
        self.in_flight -= 1;
        self.idle.push(index);
    }
}

/// An append reply must say every batch was appended.
fn reply_check(body: &[u8], events: u32) -> Result<(), String> {
    if events == 0 {
        return Ok(()); // A register's reply.
    }
    let result = AppendResult::read_from_prefix(body).map_err(|_| "short reply")?.0;
    if result.result != ResultCode::Ok as u32 {
        let code = ResultCode::from_u32(result.result).map(ResultCode::name);
        return Err(format!("append failed: {}", code.unwrap_or("unknown result")));
    }
    Ok(())
}

/// Writes one append batch of `count` events to `stream` into `body`; returns its size. The
/// event bytes are a pattern of the client and the event's number (not compressible to
/// nothing, different in every event).
pub(super) fn batch_fill(
    body: &mut [u8],
    event_size: u32,
    client: usize,
    stream: u64,
    count: u32,
    sent: u64,
) -> usize {
    let mut encoder = AppendEncoder::new(body);
    encoder.batch_begin(stream, EXPECTED_OFFSET_ANY);
    for event in 0..count {
        let data_size = event_size - EVENT_TYPE.len() as u32;
        let data = encoder.event(EVENT_TYPE, &[], data_size);
        let stamp = (sent + u64::from(event)) ^ ((client as u64) << 48);
        for (index, byte) in data.iter_mut().enumerate() {
            *byte = (stamp >> ((index % 8) * 8)) as u8 ^ index as u8;
        }
    }
    encoder.finish()
}

/// One client session: its core, its connection and the bytes in flight each way.
struct Session {
    /// The client's index over the whole run (its streams and event bytes derive from it).
    client: usize,
    core: ClientCore,
    /// The connection, and the index of the replica it goes to.
    socket: Option<(usize, TcpStream)>,
    /// The request in flight: header and body.
    send: Vec<u8>,
    send_size: usize,
    /// How much of the latest copy the socket took (`send_size` once all of it).
    sent: usize,
    receive: Vec<u8>,
    received: usize,
    /// When the request in flight started (open loop: fell due), for its latency.
    started: Instant,
    /// Events in the request in flight (0 for a register).
    events: u32,
    /// Events acknowledged, and append requests acknowledged.
    events_sent: u64,
    requests: u64,
}

impl Session {
    /// Sends a copy of the request in flight to replica `replica`, connecting first if needed.
    /// A copy still half in the socket's buffer is left to finish: starting another would
    /// interleave the two.
    fn send_to(
        &mut self,
        epoll: &Epoll,
        addresses: &[SocketAddr],
        replica: usize,
        token: usize,
    ) -> std::io::Result<()> {
        if self.socket.as_ref().is_some_and(|(connected, _)| *connected != replica) {
            self.disconnect();
        }
        if self.socket.is_none() {
            let stream = TcpStream::connect_timeout(&addresses[replica], REQUEST_TIMEOUT)?;
            stream.set_nodelay(true)?;
            stream.set_nonblocking(true)?;
            epoll.control(libc::EPOLL_CTL_ADD, stream.as_raw_fd(), libc::EPOLLIN as u32, token)?;
            self.socket = Some((replica, stream));
            self.received = 0;
            self.sent = self.send_size;
        }
        if self.sent < self.send_size {
            return Ok(());
        }
        self.sent = 0;
        self.flush(epoll, token)
    }

    /// Writes what the socket takes of the copy in flight; asks epoll for room if some is left.
    fn flush(&mut self, epoll: &Epoll, token: usize) -> std::io::Result<()> {
        let Some((_, stream)) = self.socket.as_mut() else { return Ok(()) };
        let waiting = self.sent < self.send_size;
        while self.sent < self.send_size {
            match stream.write(&self.send[self.sent..self.send_size]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(count) => self.sent += count,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(error),
            }
        }
        let blocked = self.sent < self.send_size;
        if blocked != waiting || blocked {
            let interest = if blocked { libc::EPOLLIN | libc::EPOLLOUT } else { libc::EPOLLIN };
            epoll.control(libc::EPOLL_CTL_MOD, stream.as_raw_fd(), interest as u32, token)?;
        }
        Ok(())
    }

    /// Reads what the socket holds. An error (or the peer's close) ends the connection.
    fn receive_ready(&mut self) -> std::io::Result<()> {
        let Some((_, stream)) = self.socket.as_mut() else { return Ok(()) };
        loop {
            if self.received == self.receive.len() {
                // A message larger than the buffer: grow it (replies are small; the cap is
                // the largest message and one more that may follow it).
                if self.receive.len() >= 2 * MESSAGE_SIZE_MAX {
                    return Err(std::io::ErrorKind::InvalidData.into());
                }
                self.receive.resize(self.receive.len() * 2, 0);
            }
            match stream.read(&mut self.receive[self.received..]) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(count) => self.received += count,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) => return Err(error),
            }
        }
    }

    /// Drops the first `size` received bytes (a message handled).
    fn consume(&mut self, size: usize) {
        self.receive.copy_within(size..self.received, 0);
        self.received -= size;
    }

    /// Closes the connection (which also takes it out of the epoll set).
    fn disconnect(&mut self) {
        self.socket = None;
        self.received = 0;
        self.sent = self.send_size;
    }
}
