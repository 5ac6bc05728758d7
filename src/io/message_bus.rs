//! The message bus: TCP connections to clients and to the cluster's other replicas over the
//! shared io_uring ring, turning byte streams into validated `Message`s and `Message`s back into
//! bytes. Everything it uses is allocated in `MessageBus::new`: the connection table, each
//! connection's send queue, and the inbox; message buffers come from the replica's pool.
//!
//! # Receiving
//!
//! Each connection has one receive in flight, straight into a pool buffer, asking for as many
//! bytes as the buffer holds. Once 256 bytes are in, the header is decoded (checksum, then
//! `Header::invalid`) and checked against this cluster, `message_size_max` and the commands a
//! replica accepts; once `size` bytes are in, the body checksum, then whether the command suits
//! who is on the other end (see "Peers"). The whole message (a handle nobody else holds) goes to
//! the inbox, and whatever arrived after its end (pipelined messages) is copied to the start of a
//! fresh buffer, which becomes the connection's receive buffer. The bytes are untrusted: any
//! failed check logs one line and closes the connection.
//!
//! # Peers
//!
//! There is exactly one connection per pair of replicas: replica i dials each replica j > i
//! (`replicas`), and accepts connections from each j < i on the listener it shares with
//! clients. A dialed connection starts with a `ping` naming the dialer. An accepted connection
//! is a client's once it sends a request or a `ping_client`, and replica j's once it sends a
//! replica command with `replica = j`, if j is a lower replica of this cluster and the
//! connection comes from j's configured IP address; a newer connection from j replaces the
//! older. A client that sends a replica command, or a replica that sends a client's, is closed.
//! Both kinds of message go to the one inbox: the replica tells them apart by command.
//!
//! # Unidentified connections
//!
//! Anyone can open a TCP connection, so an accepted connection that has said nothing must not
//! keep anyone else out. It has `IDENTIFY_TICKS_MAX` ticks to deliver a valid message, or it is
//! closed. When every slot is taken, the oldest unidentified connection gives way to the new
//! one (which waits, unreceived, until the slot is free). Identified clients may hold at most
//! `connections_max(clients_max) - replica_count` slots, which leaves one slot for each lower
//! replica and one for a newcomer: a replica's connection never competes with clients, and
//! competes with unidentified ones only for the moment before its first message. Closures for
//! these reasons are counted, and logged together at most once every `SHED_LOG_TICKS`.
//!
//! # Back-pressure
//!
//! Nothing waits on a peer and nothing grows. The inbox is fixed (`inbox_max`): when it is
//! full, or when taking a buffer would eat into the pool's reserve (`BUS_POOL_RESERVE`), the
//! connection keeps its finished message and stops receiving; `flush` resumes it once the
//! driver has drained the inbox. Sending, each connection has a queue of
//! `CONNECTION_SEND_QUEUE_MAX` messages (`REPLICA_SEND_QUEUE_MAX` to a replica) and one send in
//! flight (the ring resubmits the rest of a short send). A message for a full queue is dropped
//! (clients retry, and so does the protocol), and a send that a peer leaves undrained for
//! `SEND_STALL_TICKS_MAX` ticks closes its connection.
//!
//! # Teardown
//!
//! Closing `shutdown`s the socket, which ends the receive and send parked in the ring; once
//! both have completed, the descriptor is closed through the ring and the slot is free again
//! (under a new generation, so that a completion can never reach the wrong connection). A dialed
//! connection's slot, once free, is dialed again after a backoff.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use static_assertions::const_assert;

use crate::constants::{
    ACCEPTS_IN_FLIGHT_MAX, BUS_POOL_RESERVE, CLIENT_RECEIVES_LARGE_MAX, CLIENT_SENDS_LARGE_MAX,
    CLIENTS_MAX, CONNECTION_SEND_QUEUE_MAX, HEADER_SIZE, IDENTIFY_TICKS_MAX, INBOX_LARGE_MAX,
    RECEIVE_LARGE_TICKS_MAX, RECONNECT_DELAY_TICKS_MAX, RECONNECT_DELAY_TICKS_MIN,
    REPLICA_SEND_QUEUE_MAX, REPLICAS_MAX, SEND_STALL_TICKS_MAX, SHED_LOG_TICKS,
    SOCKET_BUFFER_SIZE_MAX, TICK_MS, connections_max, inbox_max, listen_backlog,
};
use crate::io::log::{Event, Level, Quoted, line, log};
use crate::io::ring::{Completed, ConnectionToken, Io, Operation};
use crate::io::socket::{self, ErrorDisplay};
use crate::stdx::id_index::IdIndex;
use crate::stdx::prng::Prng;
use crate::vsr::accept::{
    Accepted, Reject, Sender, accept_bytes, accept_framed, accept_header, command_sender,
};
use crate::vsr::header::{ClientId, ClusterId, Header, ReplicaIndex};
use crate::vsr::message_pool::{Message, MessagePool};
use crate::vsr::storage::IoError;

mod replicas;

// The ring has room for the bus's operations besides the disk's (`io_operations_max_replica`).
const_assert!(CONNECTION_SEND_QUEUE_MAX >= 1);
const_assert!(REPLICA_SEND_QUEUE_MAX >= CONNECTION_SEND_QUEUE_MAX);
// Every peer replica has a connection slot even with the clients' all taken.
const_assert!(connections_max(1) >= REPLICAS_MAX - 1);
const_assert!(RECONNECT_DELAY_TICKS_MIN >= 1);
const_assert!(RECONNECT_DELAY_TICKS_MIN < RECONNECT_DELAY_TICKS_MAX);
// Clients leave a slot for every peer replica and one for a newcomer.
const_assert!(connections_max(CLIENTS_MAX) - REPLICAS_MAX >= CLIENTS_MAX);
const_assert!(IDENTIFY_TICKS_MAX >= 1 && IDENTIFY_TICKS_MAX < SEND_STALL_TICKS_MAX);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnectionState {
    /// No socket.
    Free,
    /// Dialed: the connect is in the ring.
    Connecting,
    /// Receiving and sending.
    Connected,
    /// Shut down, waiting for its receive and send in flight to complete.
    Closing,
    /// The close is in the ring.
    CloseSubmitted,
}

/// Who is on the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    /// Accepted, and nothing received yet says who.
    Unknown,
    /// A client, with the id of its latest request or ping (0 once a newer connection of the
    /// same client took the id over: still a client's connection).
    Client(ClientId),
    /// A peer replica: dialed by this one, or accepted and identified by its first message.
    Replica(ReplicaIndex),
}

/// The id of a client peer, or 0 (not a client's, or superseded).
fn peer_client(peer: Peer) -> u64 {
    match peer {
        Peer::Client(client) => client.get(),
        Peer::Unknown | Peer::Replica(_) => 0,
    }
}

/// Why a connection ends.
#[derive(Clone, Copy, Debug)]
enum CloseReason {
    /// The peer closed its side: nothing to log.
    PeerClosed,
    /// The peer sent bytes that are not a valid message for us.
    Invalid(&'static str),
    /// An accepted connection claimed to be `replica`, which it cannot be.
    Impostor { replica: ReplicaIndex, reason: &'static str },
    /// A newer connection from the same replica took over.
    Replaced,
    /// The operating system reported an error.
    Failed(&'static str, IoError),
    /// This side lacks something the connection needs.
    Exhausted(&'static str),
    /// The peer did not drain a send for `SEND_STALL_TICKS_MAX` ticks.
    Stalled,
    /// A client held a full-size receive buffer for `RECEIVE_LARGE_TICKS_MAX` ticks without
    /// finishing its message.
    ReceiveStalled,
    /// No valid message within `IDENTIFY_TICKS_MAX` ticks of the accept.
    Unidentified,
    /// Unidentified, and the oldest such when a new connection found every slot taken.
    Evicted,
    /// A client's connection superseded by a newer one of the same client, closed to make room
    /// for another client.
    Superseded,
    /// A client beyond the limit of client connections.
    ClientsFull,
}

/// What the bytes received so far hold.
enum Frame {
    /// Not a whole message yet.
    Incomplete,
    /// A whole message with a valid header starts the buffer.
    Message,
    Invalid(Reject),
}

struct Connection {
    state: ConnectionState,
    generation: u32,
    fd: RawFd,
    /// The address of the other end: the peer's for an accepted connection, the dialed one's
    /// for a dialed connection.
    address: Option<SocketAddr>,
    peer: Peer,
    /// The buffer being filled; `None` while the receive in flight holds it, or while the pool
    /// has none to spare.
    receive_buffer: Option<Message>,
    /// The receive buffer (here or in the ring) is full size, not small: a peer replica's, or
    /// a client's receiving a large request (`receive_room`). Cleared once the slot is free.
    receive_large: bool,
    /// The tick at which the receive buffer became full size.
    receive_large_tick: u64,
    receive_in_flight: bool,
    /// Bytes of `receive_buffer` filled, counted from the start of the current message.
    received_bytes: usize,
    /// The current message's header, once it arrived and passed validation.
    header: Option<Header>,
    /// The current message is whole and its body checksum verified.
    message_ready: bool,
    send_queue: VecDeque<Message>,
    send_in_flight: bool,
    /// The send in flight is of a full-size buffer.
    send_large_in_flight: bool,
    /// The tick at which the send in flight was submitted.
    send_submitted_tick: u64,
    /// The tick at which the connection was accepted or dialed.
    opened_tick: u64,
}

impl Connection {
    fn token(&self, index: usize) -> ConnectionToken {
        ConnectionToken { index: index as u32, generation: self.generation }
    }

    fn receive_reset(&mut self) {
        self.received_bytes = 0;
        self.header = None;
        self.message_ready = false;
    }

    fn send_queue_max(&self) -> usize {
        match self.peer {
            Peer::Replica(_) => REPLICA_SEND_QUEUE_MAX,
            Peer::Unknown | Peer::Client(_) => CONNECTION_SEND_QUEUE_MAX,
        }
    }
}

/// Counters for operators and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BusMetrics {
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub connections_closed: u64,
    /// Connections to higher replicas established (connects that succeeded).
    pub connections_dialed: u64,
    /// Connects to higher replicas that failed.
    pub dials_failed: u64,
    /// Accepted connections identified as a lower replica's.
    pub replicas_identified: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    /// Messages for a client or replica that is not connected, or whose send queue was full.
    pub messages_dropped: u64,
    /// Accepted connections closed for sending no valid message within `IDENTIFY_TICKS_MAX`.
    pub connections_unidentified_timed_out: u64,
    /// Unidentified connections closed to make room for a newer connection.
    pub connections_unidentified_evicted: u64,
    /// Superseded client connections closed to make room for another client.
    pub connections_superseded_evicted: u64,
    /// Connections closed when they identified as a client with every client slot taken.
    pub connections_clients_over_limit: u64,
    /// Client messages larger than a small buffer, moved to a full-size one to be received.
    pub receives_moved_to_large: u64,
    /// Passes of the receive loop in which such a message found no full-size buffer free
    /// (`CLIENT_RECEIVES_LARGE_MAX`), and waited.
    pub receives_waiting_for_large: u64,
    /// Client connections closed for holding a full-size receive buffer without finishing
    /// their message (`RECEIVE_LARGE_TICKS_MAX`).
    pub receives_large_stalled: u64,
    /// Full-size messages for clients dropped because `CLIENT_SENDS_LARGE_MAX` were queued.
    pub client_sends_large_dropped: u64,
    /// Messages refused by `accept` (the connection is closed), by `Reject::index`.
    pub messages_rejected: [u64; Reject::COUNT],
}

/// The dialing state of one higher replica.
#[derive(Clone, Copy, Debug)]
struct Dial {
    /// The tick of the next dial; `None` while its connection slot is in use (or before
    /// `connect_to_replicas`).
    tick: Option<u64>,
    /// Dials since the replica last sent a message: the backoff's exponent.
    attempts: u32,
    /// The last connect failed and was logged: later failures of the streak are not.
    failing: bool,
    /// A connect succeeded once: the first is logged (so that an operator, or the benchmark,
    /// sees the cluster come together), later ones only after a logged failure.
    connected_once: bool,
}

/// See the module documentation.
pub struct MessageBus {
    pool: MessagePool,
    cluster: ClusterId,
    /// This replica's index, and the cluster's size.
    replica: ReplicaIndex,
    replica_count: u8,
    message_size_max: usize,
    socket_buffer_size_bytes: usize,
    listener: Option<OwnedFd>,
    /// Accepts in the ring (at most `ACCEPTS_IN_FLIGHT_MAX`).
    accepts_in_flight: usize,
    /// An accept failed: submit the next one at the next tick rather than spin on the error.
    accept_paused: bool,
    /// The last accept failed (its error was logged; the next ones of the streak are not).
    accept_failing: bool,
    /// "Connection limit reached" was logged and no connection has closed since.
    refused_logged: bool,
    /// An accepted connection waiting for the slot of the connection it evicted.
    accept_pending: Option<RawFd>,
    /// The metrics when connections shed were last logged, and the tick of that line.
    shed_logged: (BusMetrics, Option<u64>),
    /// Slot `k` below the count of higher replicas is the dialed connection of replica
    /// `replica + 1 + k`; accepted connections take the slots after them, so that dialing
    /// always finds its slot.
    connections: Box<[Connection]>,
    /// The connection of each identified client (`Peer::Client` with a nonzero id).
    clients: IdIndex,
    /// A connection stopped receiving for want of room in the inbox or the pool: `flush`
    /// looks for it (and otherwise scans nothing).
    receives_paused: bool,
    clients_max: usize,
    inbox_max: usize,
    /// `addresses[i]` is replica i's, once `connect_to_replicas` set them.
    addresses: [Option<SocketAddr>; REPLICAS_MAX],
    /// The connected (and, if accepted, identified) connection of each peer replica.
    replica_connections: [Option<usize>; REPLICAS_MAX],
    /// Indexed by replica; used for the higher replicas only.
    dials: [Dial; REPLICAS_MAX],
    /// The jitter of the reconnect backoff, seeded from the cluster and the replica index.
    prng: Prng,
    inbox: VecDeque<Accepted>,
    /// Messages in `inbox` in full-size buffers (at most `INBOX_LARGE_MAX`).
    inbox_large: usize,
    ticks: u64,
    metrics: BusMetrics,
}

impl MessageBus {
    /// Allocates the connection table, the send queues and the inbox: every allocation the bus
    /// makes. The bus belongs to `replica` of a cluster of `replica_count`. Messages bigger than
    /// `message_size_max` (from the data file's config) are refused; `pool`'s buffers, shared
    /// with the replica, must hold one. `clients_max` (the data file's too) sizes the
    /// connection table.
    pub fn new(
        pool: MessagePool,
        cluster: ClusterId,
        replica: ReplicaIndex,
        replica_count: u8,
        message_size_max: usize,
        clients_max: usize,
    ) -> MessageBus {
        assert!((1..=CLIENTS_MAX).contains(&clients_max));
        assert!(replica_count >= 1 && usize::from(replica_count) <= REPLICAS_MAX);
        assert!(replica < ReplicaIndex(replica_count));
        assert!(message_size_max >= HEADER_SIZE);
        assert!(pool.buffer_size() >= message_size_max);
        let socket_buffer_size_bytes =
            (REPLICA_SEND_QUEUE_MAX * message_size_max).min(SOCKET_BUFFER_SIZE_MAX);
        let connections_max = connections_max(clients_max);
        let connections: Box<[Connection]> = (0..connections_max)
            .map(|_| Connection {
                state: ConnectionState::Free,
                generation: 0,
                fd: -1,
                address: None,
                peer: Peer::Unknown,
                receive_buffer: None,
                receive_large: false,
                receive_large_tick: 0,
                receive_in_flight: false,
                received_bytes: 0,
                header: None,
                message_ready: false,
                // Any accepted connection may turn out to be a replica's.
                send_queue: VecDeque::with_capacity(REPLICA_SEND_QUEUE_MAX),
                send_in_flight: false,
                send_large_in_flight: false,
                send_submitted_tick: 0,
                opened_tick: 0,
            })
            .collect();
        let dial = Dial { tick: None, attempts: 0, failing: false, connected_once: false };
        MessageBus {
            pool,
            cluster,
            replica,
            replica_count,
            message_size_max,
            socket_buffer_size_bytes,
            listener: None,
            accepts_in_flight: 0,
            accept_paused: false,
            accept_failing: false,
            refused_logged: false,
            accept_pending: None,
            shed_logged: (BusMetrics::default(), None),
            connections,
            clients: IdIndex::new(connections_max),
            receives_paused: false,
            clients_max,
            inbox_max: inbox_max(clients_max),
            addresses: [None; REPLICAS_MAX],
            replica_connections: [None; REPLICAS_MAX],
            dials: [dial; REPLICAS_MAX],
            prng: Prng::new(cluster.get() ^ (u64::from(replica.get()) << 56)),
            inbox: VecDeque::with_capacity(inbox_max(clients_max)),
            inbox_large: 0,
            ticks: 0,
            metrics: BusMetrics::default(),
        }
    }

    /// Binds `address`, listens and starts accepting. Returns the bound address (with the
    /// port the kernel chose, for port 0).
    pub fn listen(&mut self, io: &mut Io, address: SocketAddr) -> std::io::Result<SocketAddr> {
        assert!(self.listener.is_none(), "the bus listens on one address");
        let listener = socket::listen(address, listen_backlog(self.clients_max))?;
        let bound = socket::local_address(listener.as_raw_fd())?;
        self.listener = Some(listener);
        self.accept_submit(io);
        Ok(bound)
    }

    /// The next message received, whole and validated, as a handle nobody else holds.
    pub fn receive(&mut self) -> Option<Accepted> {
        let accepted = self.inbox.pop_front()?;
        if self.pool.is_large(accepted.message()) {
            self.inbox_large -= 1;
        }
        assert_eq!(accepted.message().references(), 1);
        Some(accepted)
    }

    /// Queues `message` for the connection of `client`. Returns false, dropping the message, if
    /// the client is not connected or its send queue is full.
    pub fn send_to_client(&mut self, io: &mut Io, client: ClientId, message: Message) -> bool {
        assert_ne!(client, ClientId::NONE);
        let found = self.client_connection(client);
        let large = self.pool.is_large(&message);
        if large && self.client_sends_large() >= CLIENT_SENDS_LARGE_MAX {
            // Read replies to clients that do not drain them: the clients read again.
            self.metrics.client_sends_large_dropped += 1;
            self.metrics.messages_dropped += 1;
            return false;
        }
        match found {
            Some(index) => self.send(io, index, message),
            None => {
                self.metrics.messages_dropped += 1;
                false
            }
        }
    }

    /// Full-size messages queued to clients (read replies), and those still in the ring's
    /// hands on a connection being closed (whose queue is already cleared).
    fn client_sends_large(&self) -> usize {
        let not_replicas = self.connections.iter().filter(|c| !matches!(c.peer, Peer::Replica(_)));
        not_replicas
            .map(|connection| match connection.state {
                ConnectionState::Connected => {
                    let queued = connection.send_queue.iter();
                    queued.filter(|message| self.pool.is_large(message)).count()
                }
                _ => usize::from(connection.send_in_flight && connection.send_large_in_flight),
            })
            .sum()
    }

    /// Advances the bus's clock: closes connections whose peer stopped draining and accepted
    /// ones that did not say who they are in time, retries a failed accept, and dials the
    /// replicas whose backoff has passed. Call every `TICK_MS`.
    pub fn on_tick(&mut self, io: &mut Io) {
        self.ticks += 1;
        if self.accept_paused {
            self.accept_paused = false;
            self.accept_submit(io);
        }
        for index in 0..self.connections.len() {
            let connection = &self.connections[index];
            if connection.state != ConnectionState::Connected {
                continue;
            }
            let stalled = connection.send_in_flight
                && self.ticks - connection.send_submitted_tick > SEND_STALL_TICKS_MAX;
            let unidentified = connection.peer == Peer::Unknown
                && self.ticks - connection.opened_tick > IDENTIFY_TICKS_MAX;
            let receive_stalled = connection.receive_large
                && !matches!(connection.peer, Peer::Replica(_))
                && self.ticks - connection.receive_large_tick > RECEIVE_LARGE_TICKS_MAX;
            if stalled {
                self.close(io, index, CloseReason::Stalled);
            } else if receive_stalled {
                self.metrics.receives_large_stalled += 1;
                self.close(io, index, CloseReason::ReceiveStalled);
            } else if unidentified {
                self.metrics.connections_unidentified_timed_out += 1;
                self.close(io, index, CloseReason::Unidentified);
            }
        }
        self.dial_due(io);
        self.shed_log();
    }

    /// Logs the connections closed for the bus's own room (not for what they sent) since the
    /// last such line, at most once every `SHED_LOG_TICKS`: a flood makes one line, not one
    /// per socket.
    fn shed_log(&mut self) {
        let (logged, logged_tick) = self.shed_logged;
        let metrics = self.metrics;
        let timed_out =
            metrics.connections_unidentified_timed_out - logged.connections_unidentified_timed_out;
        let evicted =
            metrics.connections_unidentified_evicted - logged.connections_unidentified_evicted;
        let superseded =
            metrics.connections_superseded_evicted - logged.connections_superseded_evicted;
        let over_limit =
            metrics.connections_clients_over_limit - logged.connections_clients_over_limit;
        if timed_out + evicted + superseded + over_limit == 0 {
            return;
        }
        if logged_tick.is_some_and(|tick| self.ticks < tick + SHED_LOG_TICKS) {
            return;
        }
        log!(
            Info,
            ConnectionsShed,
            "unidentified_timed_out={timed_out} identify_ms={} unidentified_evicted={evicted} \
             clients_superseded={superseded} clients_over_limit={over_limit} clients_max={} \
             interval_s={}",
            IDENTIFY_TICKS_MAX * TICK_MS,
            self.client_connections_max(),
            SHED_LOG_TICKS * TICK_MS / 1_000,
        );
        self.shed_logged = (metrics, Some(self.ticks));
    }

    /// Resumes the connections that stopped receiving for want of room in the inbox or the
    /// pool. Call after draining the inbox.
    pub fn flush(&mut self, io: &mut Io) {
        if !self.receives_paused {
            return;
        }
        self.receives_paused = false;
        for index in 0..self.connections.len() {
            let connection = &self.connections[index];
            if connection.state == ConnectionState::Connected && !connection.receive_in_flight {
                self.receive_progress(io, index);
            }
        }
    }

    /// Takes back a finished network operation from the shared ring.
    pub fn on_completion(&mut self, io: &mut Io, completed: Completed) {
        match completed.operation {
            Operation::Accept { .. } => self.accept_complete(io, completed.result),
            Operation::Connect { token, .. } => self.connect_complete(io, token, completed.result),
            Operation::Receive { token, buffer, .. } => {
                self.receive_complete(io, token, buffer, completed.result)
            }
            Operation::Send { token, length, .. } => {
                self.send_complete(io, token, length, completed.result)
            }
            Operation::Close { token, .. } => self.close_complete(io, token),
            operation => panic!("the bus received a completion it did not submit: {operation:?}"),
        }
    }

    /// Connections open (not connecting, not closing).
    pub fn connection_count(&self) -> usize {
        let connected = |connection: &&Connection| connection.state == ConnectionState::Connected;
        self.connections.iter().filter(connected).count()
    }

    /// Connections open, by peer: unidentified, clients, replicas.
    pub fn connections_by_peer(&self) -> [usize; 3] {
        let mut counts = [0; 3];
        for connection in self.connections.iter() {
            if connection.state == ConnectionState::Connected {
                counts[match connection.peer {
                    Peer::Unknown => 0,
                    Peer::Client(_) => 1,
                    Peer::Replica(_) => 2,
                }] += 1;
            }
        }
        counts
    }

    /// Connections holding a socket, connecting and closing ones included.
    pub fn socket_count(&self) -> usize {
        let used = |connection: &&Connection| connection.state != ConnectionState::Free;
        self.connections.iter().filter(used).count()
    }

    pub fn metrics(&self) -> BusMetrics {
        self.metrics
    }
}

/// Accepting.
impl MessageBus {
    fn accept_submit(&mut self, io: &mut Io) {
        let Some(listener) = &self.listener else { return };
        if self.accept_pending.is_some() {
            // The connection accepted last still waits for its slot.
            return;
        }
        // Several at once: one accept a turn of the event loop, a turn that commits and answers
        // a thousand requests under load, left clients that connected together waiting in the
        // kernel's queue for seconds (their requests timed out before they were read). No more
        // than there are free slots (one with none: it makes room, or waits, or is refused),
        // so that a connection the table cannot take stays in the kernel's queue.
        let dialed_count = self.dialed_count();
        let free = self.connections[dialed_count..]
            .iter()
            .filter(|connection| connection.state == ConnectionState::Free)
            .count();
        while self.accepts_in_flight < free.clamp(1, ACCEPTS_IN_FLIGHT_MAX) {
            io.submit(Operation::Accept { fd: listener.as_raw_fd() });
            self.accepts_in_flight += 1;
        }
    }

    fn accept_complete(&mut self, io: &mut Io, result: Result<usize, IoError>) {
        assert!(self.accepts_in_flight > 0);
        self.accepts_in_flight -= 1;
        match result {
            Ok(fd) => {
                let fd = RawFd::try_from(fd).expect("accept returns a descriptor");
                self.accept_failing = false;
                if self.accept_pending.is_some() {
                    // One connection already waits for a slot (the accepts in flight
                    // outnumbered the free slots): refused, as it would be with no slot to
                    // wait for.
                    self.metrics.connections_refused += 1;
                    socket::close(fd);
                    return;
                }
                self.connection_open(io, fd);
                self.accept_submit(io); // Unless `fd` waits for a slot.
            }
            Err(error) => {
                // Out of descriptors or memory, or a connection reset before we took it: try
                // again next tick rather than spin, and log the first failure of a streak.
                if !self.accept_failing {
                    log!(
                        Error,
                        AcceptFailed,
                        "error={} retry=every_tick",
                        Quoted(ErrorDisplay(error))
                    );
                }
                self.accept_failing = true;
                self.accept_paused = true;
            }
        }
    }

    /// Gives the accepted `fd` a free slot. With none free, `fd` waits (`close_complete`) for
    /// the slot of a connection already closing, or else of the oldest unidentified connection,
    /// which it evicts; with neither, `fd` is refused.
    fn connection_open(&mut self, io: &mut Io, fd: RawFd) {
        assert!(self.accept_pending.is_none());
        let dialed_count = self.dialed_count();
        let free = self.connections[dialed_count..]
            .iter()
            .position(|connection| connection.state == ConnectionState::Free)
            .map(|position| dialed_count + position);
        if let Some(index) = free {
            return self.connection_setup(io, index, fd);
        }
        let closing = self.connections[dialed_count..].iter().any(|connection| {
            matches!(connection.state, ConnectionState::Closing | ConnectionState::CloseSubmitted)
        });
        if closing {
            self.accept_pending = Some(fd);
            return;
        }
        if let Some(oldest) = self.accepted_oldest(|peer| peer == Peer::Unknown) {
            self.metrics.connections_unidentified_evicted += 1;
            self.close(io, oldest, CloseReason::Evicted);
            self.accept_pending = Some(fd);
            return;
        }
        self.metrics.connections_refused += 1;
        if !self.refused_logged {
            self.refused_logged = true;
            let address = socket::peer_address(fd);
            log!(
                Warn,
                ConnectionRefused,
                "address={} connections_max={} reason=\"every connection slot for clients and \
                 lower replicas in use and identified\" logged=once_until_one_closes",
                AddressDisplay(address),
                self.connections.len() - dialed_count,
            );
        }
        socket::close(fd);
    }

    /// The oldest open accepted connection whose peer `matches`.
    fn accepted_oldest(&self, matches: impl Fn(Peer) -> bool) -> Option<usize> {
        let dialed_count = self.dialed_count();
        (dialed_count..self.connections.len())
            .filter(|index| {
                let connection = &self.connections[*index];
                connection.state == ConnectionState::Connected && matches(connection.peer)
            })
            .min_by_key(|index| (self.connections[*index].opened_tick, *index))
    }

    /// Starts receiving on the accepted `fd` in the free slot `index`.
    fn connection_setup(&mut self, io: &mut Io, index: usize, fd: RawFd) {
        assert!(self.dialed_replica(index).is_none());
        let address = socket::peer_address(fd);
        if let Err(error) = socket::connection_configure(fd, self.socket_buffer_size_bytes) {
            log!(
                Warn,
                ConnectionSetupFailed,
                "address={} error={}",
                AddressDisplay(address),
                Quoted(ErrorDisplay(socket::io_error(&error))),
            );
            socket::close(fd);
            return;
        }
        let connection = &mut self.connections[index];
        assert_eq!(connection.state, ConnectionState::Free);
        assert!(connection.receive_buffer.is_none() && connection.send_queue.is_empty());
        assert!(!connection.receive_in_flight && !connection.send_in_flight);
        connection.state = ConnectionState::Connected;
        connection.fd = fd;
        connection.address = address;
        connection.peer = Peer::Unknown;
        connection.opened_tick = self.ticks;
        connection.receive_reset();
        self.metrics.connections_accepted += 1;
        self.receive_progress(io, index);
    }
}

/// Receiving.
impl MessageBus {
    fn receive_complete(
        &mut self,
        io: &mut Io,
        token: ConnectionToken,
        buffer: Message,
        result: Result<usize, IoError>,
    ) {
        let index = self.connection_index(token);
        let connection = &mut self.connections[index];
        assert!(connection.receive_in_flight);
        assert!(connection.receive_buffer.is_none());
        connection.receive_in_flight = false;
        if connection.state != ConnectionState::Connected {
            drop(buffer);
            return self.close_maybe(io, index);
        }
        connection.receive_buffer = Some(buffer);
        match result {
            Ok(0) => self.close(io, index, CloseReason::PeerClosed),
            Ok(count) => {
                connection.received_bytes += count;
                let capacity =
                    connection.receive_buffer.as_ref().map_or(0, |buffer| buffer.buffer().len());
                assert!(connection.received_bytes <= capacity);
                self.receive_progress(io, index);
            }
            Err(error) => self.close(io, index, CloseReason::Failed("receive failed", error)),
        }
    }

    /// Hands over every whole message received, then receives more, unless the connection
    /// must wait for room or was closed.
    fn receive_progress(&mut self, io: &mut Io, index: usize) {
        assert_eq!(self.connections[index].state, ConnectionState::Connected);
        assert!(!self.connections[index].receive_in_flight);
        if self.connections[index].receive_buffer.is_none() {
            match self.buffer_take(index, 0) {
                Some(buffer) => self.receive_buffer_set(index, buffer),
                None => return self.receive_pause(),
            }
        }
        loop {
            match self.frame(index) {
                Frame::Incomplete => {
                    if !self.receive_room(index) {
                        return self.receive_pause();
                    }
                    break;
                }
                Frame::Invalid(reject) => return self.reject(io, index, reject),
                Frame::Message => {
                    if let Err(reason) = self.peer_admit(io, index) {
                        return self.close(io, index, reason);
                    }
                    match self.deliver(index) {
                        Ok(true) => {}
                        Ok(false) => return self.receive_pause(),
                        Err(reject) => return self.reject(io, index, reject),
                    }
                }
            }
        }
        self.receive_submit(io, index);
    }

    /// A connection stops receiving until `flush` finds room for it.
    fn receive_pause(&mut self) {
        self.receives_paused = true;
    }

    /// Validates what the receive buffer holds, as far as it goes.
    fn frame(&mut self, index: usize) -> Frame {
        let cluster = self.cluster;
        let message_size_max = self.message_size_max;
        let connection = &mut self.connections[index];
        if connection.message_ready {
            return Frame::Message;
        }
        let received_bytes = connection.received_bytes;
        let buffer = connection.receive_buffer.as_ref().expect("receive buffer present");
        let header = match connection.header {
            Some(header) => header,
            None => {
                if received_bytes < HEADER_SIZE {
                    return Frame::Incomplete;
                }
                match accept_header(&buffer.buffer()[..HEADER_SIZE], cluster, message_size_max) {
                    Ok(header) => *connection.header.insert(header),
                    Err(reject) => return Frame::Invalid(reject),
                }
            }
        };
        let size = header.size as usize;
        if received_bytes < size {
            return Frame::Incomplete;
        }
        // The whole message, body included, before the peer is admitted or learned from it
        // (`deliver` turns it into an `Accepted` once it stands alone, without hashing the
        // body again).
        if let Err(reject) = accept_bytes(&buffer.buffer()[..size], cluster, message_size_max) {
            return Frame::Invalid(reject);
        }
        connection.message_ready = true;
        Frame::Message
    }

    /// Checks that the whole message on connection `index` suits who sent it, learning who that
    /// is from the first one. Idempotent: a message waiting for room in the inbox is checked
    /// again when `flush` retries it.
    fn peer_admit(&mut self, io: &mut Io, index: usize) -> Result<(), CloseReason> {
        let connection = &self.connections[index];
        assert!(connection.message_ready);
        let header = connection.header.expect("a ready message has a header");
        let command = header.command().expect("framing checked the command");
        match (command_sender(command), connection.peer) {
            (None, _) => unreachable!("framing refuses commands nobody may send"),
            (Some(Sender::Client), Peer::Replica(_)) => {
                Err(CloseReason::Invalid("a replica sent a client's command"))
            }
            (Some(Sender::Client), Peer::Unknown) => self.client_admit(io, index, header.client),
            (Some(Sender::Client), Peer::Client(_)) => {
                self.client_learn(index, header.client);
                Ok(())
            }
            (Some(Sender::Replica), Peer::Client(_)) => {
                Err(CloseReason::Invalid("a client sent a replica's command"))
            }
            (Some(Sender::Replica), Peer::Replica(replica)) => {
                self.replica_heard(index, replica);
                Ok(())
            }
            (Some(Sender::Replica), Peer::Unknown) => {
                self.replica_identify(io, index, header.replica)
            }
        }
    }

    /// Counts the refusal and closes the connection that sent it.
    fn reject(&mut self, io: &mut Io, index: usize, reject: Reject) {
        self.metrics.messages_rejected[reject.index()] += 1;
        self.close(io, index, CloseReason::Invalid(reject.reason()));
    }

    /// Moves the whole message at the start of the receive buffer to the inbox, once `accept`
    /// let it through, carrying the bytes after it into a fresh buffer. Returns false if there
    /// is no room for either.
    fn deliver(&mut self, index: usize) -> Result<bool, Reject> {
        if self.inbox.len() >= self.inbox_max {
            return Ok(false);
        }
        let connection = &self.connections[index];
        let large = connection.receive_large;
        if large && self.inbox_large >= INBOX_LARGE_MAX {
            return Ok(false);
        }
        assert!(connection.message_ready);
        let header = connection.header.expect("a ready message has a header");
        let size = header.size as usize;
        let carried_bytes = connection.received_bytes - size;
        let Some(mut next) = self.buffer_take(index, carried_bytes) else { return Ok(false) };
        let (cluster, message_size_max) = (self.cluster, self.message_size_max);
        let connection = &mut self.connections[index];
        let message = connection.receive_buffer.take().expect("receive buffer present");
        next.buffer_mut_unique()[..carried_bytes]
            .copy_from_slice(&message.buffer()[size..connection.received_bytes]);
        self.receive_buffer_set(index, next);
        let connection = &mut self.connections[index];
        connection.receive_reset();
        connection.received_bytes = carried_bytes;
        assert_eq!(message.references(), 1);
        let accepted = accept_framed(message, &header, cluster, message_size_max)?;
        self.inbox.push_back(accepted);
        self.inbox_large += usize::from(large);
        self.metrics.messages_received += 1;
        Ok(true)
    }

    fn receive_submit(&mut self, io: &mut Io, index: usize) {
        let connection = &mut self.connections[index];
        assert_eq!(connection.state, ConnectionState::Connected);
        assert!(!connection.receive_in_flight);
        let buffer = connection.receive_buffer.take().expect("receive buffer present");
        let offset = connection.received_bytes;
        let length = buffer.buffer().len() - offset;
        assert!(length > 0, "a buffer holding a partial message has room for the rest");
        let token = connection.token(index);
        connection.receive_in_flight = true;
        io.submit(Operation::Receive { fd: connection.fd, token, buffer, offset, length });
    }

    /// A receive buffer for connection `index` that holds at least `carried` bytes: full size
    /// for a peer replica (unless that would leave the replica less than its reserve), small
    /// for a client or a connection that has not said who it is.
    fn buffer_take(&mut self, index: usize, carried: usize) -> Option<Message> {
        let replica = matches!(self.connections[index].peer, Peer::Replica(_));
        let large = replica || carried > self.pool.small_size();
        let full_set = large || !self.pool.has_small();
        if full_set && self.pool.free_count() <= BUS_POOL_RESERVE {
            return None;
        }
        let buffer = if large { self.pool.try_get()? } else { self.pool.try_get_small()? };
        assert_eq!(buffer.references(), 1);
        Some(buffer)
    }

    fn receive_buffer_set(&mut self, index: usize, buffer: Message) {
        let large = self.pool.is_large(&buffer);
        let ticks = self.ticks;
        let connection = &mut self.connections[index];
        assert!(connection.receive_buffer.is_none());
        connection.receive_buffer = Some(buffer);
        if large {
            connection.receive_large_tick = ticks;
        }
        connection.receive_large = large;
    }

    /// Makes room in connection `index`'s receive buffer for the message it is receiving: a
    /// small buffer gives way to a full-size one (what arrived is copied over) once the
    /// header says the message is larger, if the pool has one to spare and fewer than
    /// `CLIENT_RECEIVES_LARGE_MAX` clients hold one. Returns false if it must wait for that.
    fn receive_room(&mut self, index: usize) -> bool {
        let connection = &self.connections[index];
        let buffer = connection.receive_buffer.as_ref().expect("receive buffer present");
        let Some(header) = connection.header else {
            return true; // A header fits any buffer.
        };
        if header.size as usize <= buffer.buffer().len() {
            return true;
        }
        let clients_large = self
            .connections
            .iter()
            .filter(|other| other.receive_large && !matches!(other.peer, Peer::Replica(_)))
            .count();
        if clients_large >= CLIENT_RECEIVES_LARGE_MAX || self.pool.free_count() <= BUS_POOL_RESERVE
        {
            self.metrics.receives_waiting_for_large += 1;
            return false;
        }
        let Some(mut large) = self.pool.try_get() else { return false };
        let connection = &mut self.connections[index];
        let small = connection.receive_buffer.take().expect("receive buffer present");
        let received = connection.received_bytes;
        large.buffer_mut_unique()[..received].copy_from_slice(&small.buffer()[..received]);
        self.receive_buffer_set(index, large);
        self.metrics.receives_moved_to_large += 1;
        true
    }

    /// Makes the unidentified connection `index` a client's, unless every client slot is taken
    /// by connections of other clients: a superseded connection (or this client's older one)
    /// gives way, and without one the new connection is refused, so that clients never take
    /// the slots kept for replicas.
    fn client_admit(
        &mut self,
        io: &mut Io,
        index: usize,
        client: ClientId,
    ) -> Result<(), CloseReason> {
        assert_eq!(self.connections[index].peer, Peer::Unknown);
        let is_client = |connection: &&Connection| {
            connection.state == ConnectionState::Connected
                && matches!(connection.peer, Peer::Client(_))
        };
        let client_count = self.connections.iter().filter(is_client).count();
        assert!(client_count <= self.client_connections_max());
        if client_count == self.client_connections_max() {
            let superseded =
                |peer| peer == Peer::Client(ClientId(0)) || peer == Peer::Client(client);
            let Some(oldest) = self.accepted_oldest(superseded) else {
                self.metrics.connections_clients_over_limit += 1;
                return Err(CloseReason::ClientsFull);
            };
            self.metrics.connections_superseded_evicted += 1;
            self.close(io, oldest, CloseReason::Superseded);
        }
        self.client_learn(index, client);
        Ok(())
    }

    /// Connections that clients may hold: all but one per peer replica and one for a newcomer.
    fn client_connections_max(&self) -> usize {
        self.connections.len() - usize::from(self.replica_count)
    }

    /// The connection of `client`, if it has one (connected: closing forgets the peer).
    fn client_connection(&self, client: ClientId) -> Option<usize> {
        assert_ne!(client, ClientId::NONE);
        let index = self.clients.find(client.get(), |at| self.connection_client(at))?;
        assert_eq!(self.connections[index].state, ConnectionState::Connected);
        Some(index)
    }

    /// The id of the client on connection `index`, or 0.
    fn connection_client(&self, index: usize) -> u64 {
        peer_client(self.connections[index].peer)
    }

    /// Changes the peer of connection `index`, keeping `clients` in step.
    fn peer_set(&mut self, index: usize, peer: Peer) {
        let old = self.connection_client(index);
        if old != 0 {
            let connections = &self.connections;
            self.clients.remove(old, |at| peer_client(connections[at].peer));
        }
        self.connections[index].peer = peer;
        let new = self.connection_client(index);
        if new != 0 {
            let connections = &self.connections;
            let inserted = self.clients.insert(new, index, |at| peer_client(connections[at].peer));
            assert!(inserted, "one connection per client id");
        }
    }

    /// Records that `client` lives on connection `index`. A client that reconnects supersedes
    /// its older connection.
    fn client_learn(&mut self, index: usize, client: ClientId) {
        assert_ne!(client, ClientId::NONE, "validated headers of requests and pings name a client");
        assert!(matches!(self.connections[index].peer, Peer::Unknown | Peer::Client(_)));
        if self.connections[index].peer == Peer::Client(client) {
            return;
        }
        if let Some(older) = self.client_connection(client) {
            self.peer_set(older, Peer::Client(ClientId(0)));
        }
        self.peer_set(index, Peer::Client(client));
    }
}

/// Sending.
impl MessageBus {
    fn send(&mut self, io: &mut Io, index: usize, message: Message) -> bool {
        let connection = &mut self.connections[index];
        assert_eq!(connection.state, ConnectionState::Connected);
        let size = message.header().size as usize;
        assert!(size >= HEADER_SIZE && size <= self.message_size_max);
        if connection.send_queue.len() >= connection.send_queue_max() {
            // The peer is slow or stuck: dropping keeps memory bounded and the loop moving;
            // `on_tick` closes the connection if the send in flight makes no progress.
            self.metrics.messages_dropped += 1;
            return false;
        }
        assert!(connection.send_queue.len() < connection.send_queue.capacity());
        connection.send_queue.push_back(message);
        self.send_submit(io, index);
        true
    }

    fn send_submit(&mut self, io: &mut Io, index: usize) {
        let ticks = self.ticks;
        let connection = &mut self.connections[index];
        if connection.send_in_flight {
            return;
        }
        let Some(message) = connection.send_queue.front() else { return };
        let length = message.header().size as usize;
        let buffer = message.clone();
        let token = connection.token(index);
        connection.send_large_in_flight = self.pool.is_large(&buffer);
        connection.send_in_flight = true;
        connection.send_submitted_tick = ticks;
        io.submit(Operation::Send { fd: connection.fd, token, buffer, offset: 0, length });
    }

    fn send_complete(
        &mut self,
        io: &mut Io,
        token: ConnectionToken,
        length: usize,
        result: Result<usize, IoError>,
    ) {
        let index = self.connection_index(token);
        let connection = &mut self.connections[index];
        assert!(connection.send_in_flight);
        connection.send_in_flight = false;
        if connection.state != ConnectionState::Connected {
            return self.close_maybe(io, index);
        }
        match result {
            Ok(sent) => {
                assert_eq!(sent, length, "the ring completes a send whole");
                let message = connection.send_queue.pop_front().expect("the sent message");
                assert_eq!(message.header().size as usize, length);
                self.metrics.messages_sent += 1;
                self.send_submit(io, index);
            }
            Err(error) => self.close(io, index, CloseReason::Failed("send failed", error)),
        }
    }
}

/// Closing.
impl MessageBus {
    fn close(&mut self, io: &mut Io, index: usize, reason: CloseReason) {
        assert_eq!(self.connections[index].state, ConnectionState::Connected);
        self.close_log(index, reason);
        if let Peer::Replica(replica) = self.connections[index].peer {
            let replica_connection = &mut self.replica_connections[usize::from(replica)];
            if *replica_connection == Some(index) {
                *replica_connection = None;
            }
        }
        self.peer_set(index, Peer::Unknown);
        let connection = &mut self.connections[index];
        connection.state = ConnectionState::Closing;
        connection.send_queue.clear();
        connection.receive_buffer = None;
        connection.receive_reset();
        socket::shutdown(connection.fd);
        self.metrics.connections_closed += 1;
        self.close_maybe(io, index);
    }

    fn close_log(&mut self, index: usize, reason: CloseReason) {
        let quiet = matches!(
            reason,
            CloseReason::PeerClosed
                | CloseReason::Unidentified
                | CloseReason::Evicted
                | CloseReason::Superseded
                | CloseReason::ClientsFull
        );
        if quiet {
            return;
        }
        // A client or unknown peer may close in a loop (another cluster's, retrying): its
        // closures are rate-limited apart from a peer replica's, which a flood of those does
        // not hide.
        let event = match self.connections[index].peer {
            Peer::Replica(_) => Event::ReplicaConnectionClosed,
            Peer::Unknown | Peer::Client(_) => Event::ConnectionClosed,
        };
        let connection = self.describe(index);
        let fields = |reason: std::fmt::Arguments| {
            line(Level::Warn, event, format_args!("{connection} reason={}", Quoted(reason)))
        };
        match reason {
            CloseReason::Invalid(reason) => fields(format_args!("invalid message: {reason}")),
            CloseReason::Impostor { replica, reason } => {
                fields(format_args!("claims to be replica {replica}: {reason}"))
            }
            CloseReason::Replaced => {
                fields(format_args!("replaced by a newer connection from the same replica"))
            }
            CloseReason::Failed(operation, error) => {
                fields(format_args!("{operation}: {}", ErrorDisplay(error)))
            }
            CloseReason::Exhausted(reason) => fields(format_args!("{reason}")),
            CloseReason::ReceiveStalled => fields(format_args!(
                "sent part of a large message and nothing more for {RECEIVE_LARGE_TICKS_MAX} \
                 ticks"
            )),
            CloseReason::Stalled => {
                fields(format_args!("peer drained nothing for {SEND_STALL_TICKS_MAX} ticks"))
            }
            // Counted, and logged together by `shed_log`: a flood must not flood the log.
            CloseReason::PeerClosed
            | CloseReason::Unidentified
            | CloseReason::Evicted
            | CloseReason::Superseded
            | CloseReason::ClientsFull => unreachable!("quiet closures are not logged"),
        }
    }

    /// Closes the descriptor once no operation in the ring uses it.
    fn close_maybe(&mut self, io: &mut Io, index: usize) {
        let connection = &mut self.connections[index];
        assert_eq!(connection.state, ConnectionState::Closing);
        if connection.receive_in_flight || connection.send_in_flight {
            return;
        }
        assert!(connection.receive_buffer.is_none() && connection.send_queue.is_empty());
        connection.state = ConnectionState::CloseSubmitted;
        io.submit(Operation::Close { fd: connection.fd, token: connection.token(index) });
    }

    fn close_complete(&mut self, io: &mut Io, token: ConnectionToken) {
        let index = self.connection_index(token);
        let connection = &mut self.connections[index];
        assert_eq!(connection.state, ConnectionState::CloseSubmitted);
        connection.state = ConnectionState::Free;
        connection.receive_large = false;
        connection.generation = connection.generation.wrapping_add(1);
        connection.fd = -1;
        connection.address = None;
        connection.peer = Peer::Unknown;
        self.refused_logged = false;
        if let Some(replica) = self.dialed_replica(index) {
            self.dial_schedule(replica);
        } else if let Some(fd) = self.accept_pending.take() {
            self.connection_setup(io, index, fd);
            self.accept_submit(io);
        }
    }

    fn connection_index(&self, token: ConnectionToken) -> usize {
        let index = token.index as usize;
        assert!(index < self.connections.len());
        assert_eq!(self.connections[index].generation, token.generation);
        assert_ne!(self.connections[index].state, ConnectionState::Free);
        index
    }

    /// Connection `index` for log lines.
    fn describe(&self, index: usize) -> ConnectionDisplay {
        let connection = &self.connections[index];
        ConnectionDisplay {
            address: connection.address,
            peer: connection.peer,
            dialed: self.dialed_replica(index).is_some(),
        }
    }
}

impl Drop for MessageBus {
    /// Ends every socket still open. Operations still in the ring complete (or are cancelled)
    /// when the ring drops; a descriptor whose close is in the ring is the ring's to close.
    fn drop(&mut self) {
        for connection in self.connections.iter() {
            let open = matches!(
                connection.state,
                ConnectionState::Connecting | ConnectionState::Connected | ConnectionState::Closing
            );
            if open {
                socket::shutdown(connection.fd);
                socket::close(connection.fd);
            }
        }
        if let Some(fd) = self.accept_pending {
            socket::close(fd);
        }
        if let Some(listener) = &self.listener {
            socket::shutdown(listener.as_raw_fd());
        }
    }
}

/// A peer address for log lines, which may be unknown.
struct AddressDisplay(Option<SocketAddr>);

impl std::fmt::Display for AddressDisplay {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(address) => write!(formatter, "{address}"),
            None => write!(formatter, "unknown"),
        }
    }
}

/// A connection for log lines: which way it was made, and to whom, as `key=value` fields.
struct ConnectionDisplay {
    address: Option<SocketAddr>,
    peer: Peer,
    dialed: bool,
}

impl std::fmt::Display for ConnectionDisplay {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let address = AddressDisplay(self.address);
        let direction = if self.dialed { "dialed" } else { "accepted" };
        write!(formatter, "direction={direction} address={address} ")?;
        match self.peer {
            Peer::Replica(replica) => write!(formatter, "peer=replica peer_replica={replica}"),
            Peer::Client(client) => write!(formatter, "peer=client client={client}"),
            Peer::Unknown => write!(formatter, "peer=unknown"),
        }
    }
}

#[cfg(test)]
mod tests;
