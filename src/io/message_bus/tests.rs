//! Message bus tests over real sockets on 127.0.0.1: framing, validation of untrusted bytes,
//! the connection limit, replies, back-pressure from a stuck peer, connections between replicas
//! (several buses, each on its own ring, stepped in turn by one thread), and no allocation
//! after startup.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::*;
use crate::constants::{
    BUS_POOL_RESERVE, CLIENT_RECEIVES_LARGE_MAX, CONNECTION_SEND_QUEUE_MAX,
    RECONNECT_DELAY_TICKS_MAX, RECONNECT_DELAY_TICKS_MIN, SEND_STALL_TICKS_MAX,
};
use crate::io::ring::Wait;
use crate::stdx::allocation_guard;
use crate::stdx::prng::Prng;
use crate::vsr::header::Command;
use crate::vsr::header::Operation as RequestOperation;

const CLUSTER: ClusterId = ClusterId(7);
const MESSAGE_SIZE_MAX: usize = 64 * 1024;
/// The client sessions the tests' buses are sized for, and what follows from it.
const CLIENTS: usize = 64;
const CONNECTIONS_MAX: usize = crate::constants::connections_max(CLIENTS);
const INBOX_MAX: usize = crate::constants::inbox_max(CLIENTS);
const POOL_COUNT: usize = 2 * CONNECTIONS_MAX + 16;
const SMALL_SIZE: usize = 8 * 1024;

struct Harness {
    // Dropped before `io`: the bus shuts its sockets down, so the ring's drop finds its
    // operations completing.
    bus: MessageBus,
    io: Io,
    pool: MessagePool,
    address: SocketAddr,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_pool(POOL_COUNT)
    }

    fn with_pool(pool_count: usize) -> Harness {
        Harness::build(pool_count, ReplicaIndex(0), 1, "127.0.0.1:0".parse().unwrap())
    }

    /// Replica `replica` of a cluster of `replica_count`, listening on `address`.
    fn replica(replica: ReplicaIndex, replica_count: u8, address: SocketAddr) -> Harness {
        Harness::build(POOL_COUNT, replica, replica_count, address)
    }

    /// A bus whose pool has small buffers too, as a replica's does.
    fn with_small_buffers() -> Harness {
        let pool = MessagePool::with_small(POOL_COUNT, MESSAGE_SIZE_MAX, POOL_COUNT, SMALL_SIZE);
        Harness::build_on(pool, ReplicaIndex(0), 1, "127.0.0.1:0".parse().unwrap())
    }

    fn build(
        pool_count: usize,
        replica: ReplicaIndex,
        replica_count: u8,
        address: SocketAddr,
    ) -> Harness {
        let pool = MessagePool::new(pool_count, MESSAGE_SIZE_MAX);
        Harness::build_on(pool, replica, replica_count, address)
    }

    fn build_on(
        pool: MessagePool,
        replica: ReplicaIndex,
        replica_count: u8,
        address: SocketAddr,
    ) -> Harness {
        let mut io = Io::new().unwrap();
        let mut bus = MessageBus::new(
            pool.clone(),
            CLUSTER,
            replica,
            replica_count,
            MESSAGE_SIZE_MAX,
            CLIENTS,
        );
        let address = bus.listen(&mut io, address).unwrap();
        Harness { bus, io, pool, address }
    }

    /// A connected client, accepted by the bus.
    fn connect(&mut self) -> TcpStream {
        let count = self.bus.metrics().connections_accepted;
        let client = TcpStream::connect(self.address).unwrap();
        client.set_nodelay(true).unwrap();
        self.pump_until(|harness| harness.bus.metrics().connections_accepted > count);
        client
    }

    /// One turn of the driver loop, waiting at most a millisecond.
    fn pump(&mut self) {
        self.io.run(Wait::Timeout { timeout_ns: 1_000_000 });
        while let Some(completed) = self.io.pop_completed() {
            assert!(completed.operation.is_network());
            self.bus.on_completion(&mut self.io, completed);
        }
        self.bus.flush(&mut self.io);
    }

    fn pump_until(&mut self, mut condition: impl FnMut(&mut Harness) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition(self) {
            assert!(Instant::now() < deadline, "timed out");
            self.pump();
        }
    }

    /// The next `count` messages from the inbox.
    fn receive(&mut self, count: usize) -> Vec<Message> {
        let mut messages = Vec::with_capacity(count);
        self.pump_until(|harness| {
            while let Some(accepted) = harness.bus.receive() {
                messages.push(accepted.into_message());
            }
            messages.len() >= count
        });
        assert_eq!(messages.len(), count);
        messages
    }

    /// Waits until the bus has closed the client's connection, then checks the client reads
    /// the end of the stream.
    fn expect_closed(&mut self, client: &mut TcpStream, sockets_left: usize) {
        self.pump_until(|harness| harness.bus.socket_count() == sockets_left);
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(client.read(&mut byte).unwrap(), 0, "the client sees the end of the stream");
    }

    /// Waits until the bus has closed `closed` connections in all, then checks the client
    /// reads the end of the stream.
    fn expect_closed_count(&mut self, client: &mut TcpStream, closed: u64) {
        self.pump_until(|harness| harness.bus.metrics().connections_closed == closed);
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(client.read(&mut byte).unwrap(), 0, "the client sees the end of the stream");
    }
}

/// The bytes of a valid request from `client` with `body`.
fn request(client: ClientId, number: u32, body: &[u8]) -> Vec<u8> {
    let mut header = Header::new(Command::Request, CLUSTER);
    header.client = client;
    header.request = number;
    header.operation = RequestOperation::Append as u8;
    header.size = (HEADER_SIZE + body.len()) as u32;
    header.set_checksum_body(body);
    header.set_checksum();
    assert_eq!(header.invalid(), None);
    let mut bytes = zerocopy::IntoBytes::as_bytes(&header).to_vec();
    bytes.extend_from_slice(body);
    bytes
}

fn ping_client(client: ClientId) -> Vec<u8> {
    let mut header = Header::new(Command::PingClient, CLUSTER);
    header.client = client;
    header.timestamp = 1;
    header.set_checksum_body(&[]);
    header.set_checksum();
    assert_eq!(header.invalid(), None);
    zerocopy::IntoBytes::as_bytes(&header).to_vec()
}

fn body(seed: u8, size: usize) -> Vec<u8> {
    (0..size).map(|position| (position as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// A message from the pool holding `bytes` (a reply to send).
fn message(pool: &MessagePool, bytes: &[u8]) -> Message {
    let mut message = pool.get();
    message.buffer_mut_unique()[..bytes.len()].copy_from_slice(bytes);
    message
}

fn reply(client: ClientId, body: &[u8]) -> Vec<u8> {
    let mut header = Header::new(Command::Reply, CLUSTER);
    header.client = client;
    header.size = (HEADER_SIZE + body.len()) as u32;
    header.set_checksum_body(body);
    header.set_checksum();
    let mut bytes = zerocopy::IntoBytes::as_bytes(&header).to_vec();
    bytes.extend_from_slice(body);
    bytes
}

/// Re-seals a header after a test edits it, so that only the intended defect remains.
fn header_edit(bytes: &mut [u8], edit: impl FnOnce(&mut Header)) {
    let mut header = Header::read_from_prefix(bytes).unwrap().0;
    edit(&mut header);
    header.set_checksum();
    bytes[..HEADER_SIZE].copy_from_slice(zerocopy::IntoBytes::as_bytes(&header));
}

use crate::vsr::header::Op;
use zerocopy::FromBytes;

#[test]
fn request_is_delivered_intact() {
    // Goal: a request written by a client arrives in the inbox byte for byte, as a handle
    // nobody else holds, and the connection is tied to the request's client.
    let mut harness = Harness::new();
    let mut client = harness.connect();
    let bytes = request(ClientId(41), 1, &body(1, 1000));
    client.write_all(&bytes).unwrap();
    let messages = harness.receive(1);
    assert_eq!(messages[0].bytes(), &bytes[..]);
    assert_eq!(messages[0].references(), 1);
    assert_eq!(harness.bus.metrics().messages_received, 1);
    drop(messages);
    let reply = message(&harness.pool, &reply(ClientId(41), &[]));
    assert!(harness.bus.send_to_client(&mut harness.io, ClientId(41), reply));
}

#[test]
fn client_messages_arrive_in_small_buffers_and_a_large_one_moves_to_a_full_buffer() {
    // Goal: with a pool of small and full-size buffers, a client's small requests are received
    // into small buffers; one larger than a small buffer, pipelined between two small ones, is
    // moved to a full-size buffer once its header arrives, with what had arrived of it, and
    // all three are delivered intact and in order; the connection then goes back to small
    // buffers. A large reply to the client is sent too.
    let mut harness = Harness::with_small_buffers();
    let mut client = harness.connect();
    let first = request(ClientId(44), 1, &body(5, 300));
    let large = request(ClientId(44), 2, &body(6, 3 * SMALL_SIZE));
    let last = request(ClientId(44), 3, &body(7, 100));
    client.write_all(&[first.clone(), large.clone(), last.clone()].concat()).unwrap();
    let messages = harness.receive(3);
    assert_eq!(messages[0].bytes(), &first[..]);
    assert_eq!(messages[1].bytes(), &large[..]);
    assert_eq!(messages[2].bytes(), &last[..]);
    assert_eq!(messages[0].buffer().len(), SMALL_SIZE);
    assert_eq!(messages[1].buffer().len(), MESSAGE_SIZE_MAX);
    assert_eq!(messages[2].buffer().len(), SMALL_SIZE);
    assert_eq!(harness.bus.metrics().receives_moved_to_large, 1);
    drop(messages);
    let reply = message(&harness.pool, &reply(ClientId(44), &body(8, 2 * SMALL_SIZE)));
    assert!(harness.bus.send_to_client(&mut harness.io, ClientId(44), reply));
    harness.pump_until(|harness| harness.bus.metrics().messages_sent == 1);
    let mut header = [0u8; HEADER_SIZE];
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    client.read_exact(&mut header).unwrap();
}

#[test]
fn at_most_client_receives_large_max_clients_hold_a_full_buffer_at_once() {
    // Goal: clients that each started a large request hold at most CLIENT_RECEIVES_LARGE_MAX
    // full-size buffers between them; the next one waits (counted) until one of those
    // requests is delivered, then gets its buffer, and every request arrives intact.
    let mut harness = Harness::with_small_buffers();
    let count = CLIENT_RECEIVES_LARGE_MAX + 1;
    let requests: Vec<Vec<u8>> = (0..count)
        .map(|index| request(ClientId(60 + index as u64), 1, &body(index as u8, 2 * SMALL_SIZE)))
        .collect();
    let mut clients: Vec<TcpStream> = (0..count).map(|_| harness.connect()).collect();
    for (client, bytes) in clients.iter_mut().zip(&requests) {
        client.write_all(&bytes[..SMALL_SIZE]).unwrap();
    }
    harness.pump_until(|harness| {
        harness.bus.metrics().receives_moved_to_large == CLIENT_RECEIVES_LARGE_MAX as u64
            && harness.bus.metrics().receives_waiting_for_large > 0
    });
    for (client, bytes) in clients.iter_mut().zip(&requests) {
        client.write_all(&bytes[SMALL_SIZE..]).unwrap();
    }
    let mut messages = harness.receive(count);
    messages.sort_by_key(|message| message.header().client);
    for (message, bytes) in messages.iter().zip(&requests) {
        assert_eq!(message.bytes(), &bytes[..]);
    }
    assert_eq!(harness.bus.metrics().receives_moved_to_large, count as u64);
}

#[test]
fn two_messages_in_one_write_are_both_delivered() {
    // Goal: bytes past the end of one message (a pipelined second message, and a third cut
    // mid-header) are carried into the next buffer and framed in order.
    let mut harness = Harness::new();
    let mut client = harness.connect();
    let first = request(ClientId(42), 1, &body(2, 300));
    let second = request(ClientId(42), 2, &body(3, MESSAGE_SIZE_MAX - HEADER_SIZE));
    let third = request(ClientId(42), 3, &[]);
    let mut bytes = first.clone();
    bytes.extend_from_slice(&second);
    bytes.extend_from_slice(&third[..50]);
    client.write_all(&bytes).unwrap();
    let messages = harness.receive(2);
    assert_eq!(messages[0].bytes(), &first[..]);
    assert_eq!(messages[1].bytes(), &second[..]);
    client.write_all(&third[50..]).unwrap();
    let messages = harness.receive(1);
    assert_eq!(messages[0].bytes(), &third[..]);
}

#[test]
fn message_split_into_single_bytes_is_delivered() {
    // Goal: a message that arrives one byte per receive (header included) is still framed and
    // delivered intact, once.
    let mut harness = Harness::new();
    let mut client = harness.connect();
    let bytes = request(ClientId(43), 1, &body(4, 200));
    for byte in &bytes {
        client.write_all(std::slice::from_ref(byte)).unwrap();
        harness.pump();
        assert!(harness.bus.inbox.is_empty() || harness.bus.inbox.len() == 1);
    }
    let messages = harness.receive(1);
    assert_eq!(messages[0].bytes(), &bytes[..]);
    harness.pump();
    assert!(harness.bus.receive().is_none());
}

#[test]
fn receiving_waits_for_room_in_the_inbox_and_the_pool() {
    // Goal: a burst of pipelined messages larger than the inbox stops at INBOX_MAX until the
    // driver drains it; with the pool down to its reserve, the connection waits for a buffer
    // instead of taking the replica's; after each wait, `flush` resumes and every message
    // arrives once, in order.
    let mut harness = Harness::new();
    let mut client = harness.connect();
    let burst: Vec<Vec<u8>> = (0..INBOX_MAX + 10)
        .map(|index| request(ClientId(51), index as u32 + 1, &body(1, 16)))
        .collect();
    client.write_all(&burst.concat()).unwrap();
    harness.pump_until(|harness| harness.bus.inbox.len() == INBOX_MAX);
    for _ in 0..10 {
        harness.pump();
    }
    assert_eq!(harness.bus.inbox.len(), INBOX_MAX);
    let messages = harness.receive(burst.len());
    for (message, bytes) in messages.iter().zip(&burst) {
        assert_eq!(message.bytes(), &bytes[..]);
    }
    drop(messages);

    let mut harness = Harness::with_pool(BUS_POOL_RESERVE + 2);
    let mut client = harness.connect();
    client.write_all(&burst[..3].concat()).unwrap();
    // One buffer receives, one more carries past the first message; then only the reserve
    // is left, and the second message waits.
    harness.pump_until(|harness| harness.bus.inbox.len() == 1);
    for _ in 0..10 {
        harness.pump();
    }
    assert_eq!(harness.bus.inbox.len(), 1);
    assert_eq!(harness.pool.free_count(), BUS_POOL_RESERVE);
    for bytes in &burst[..3] {
        let message = harness.receive(1);
        assert_eq!(message[0].bytes(), &bytes[..]);
    }
}

#[test]
fn invalid_messages_close_only_their_connection() {
    // Goal: a bad header checksum, a bad body checksum, the wrong cluster, a size above the
    // cluster's message_size_max, an unknown command and a command meant for clients each close
    // the sender's connection (it reads the end of the stream), while another connection keeps
    // being served.
    let mut harness = Harness::new();
    let mut good = harness.connect();
    let valid = request(ClientId(44), 1, &body(5, 100));
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut bytes = valid.clone();
    bytes[20] ^= 1;
    cases.push(("header checksum", bytes));
    let mut bytes = valid.clone();
    bytes[HEADER_SIZE + 3] ^= 1;
    cases.push(("body checksum", bytes));
    let mut bytes = valid.clone();
    header_edit(&mut bytes, |header| header.cluster = ClusterId(CLUSTER.get() + 1));
    cases.push(("wrong cluster", bytes));
    let mut bytes = valid.clone();
    header_edit(&mut bytes, |header| header.size = MESSAGE_SIZE_MAX as u32 + 1);
    cases.push(("oversize", bytes));
    let mut bytes = valid.clone();
    header_edit(&mut bytes, |header| header.command = 200);
    cases.push(("unknown command", bytes));
    cases.push(("reply from a client", reply(ClientId(44), &[])));
    for (round, (name, bytes)) in cases.into_iter().enumerate() {
        let mut bad = harness.connect();
        bad.write_all(&bytes).unwrap();
        harness.expect_closed(&mut bad, 1);
        assert_eq!(harness.bus.metrics().connections_closed, round as u64 + 1, "{name}");
        let bytes = request(ClientId(44), round as u32 + 1, &body(round as u8, 10));
        good.write_all(&bytes).unwrap();
        let messages = harness.receive(1);
        assert_eq!(messages[0].bytes(), &bytes[..], "{name}");
    }
    assert_eq!(harness.bus.connection_count(), 1);
}

#[test]
fn connections_beyond_the_limit_give_way_oldest_unidentified_first() {
    // Goal: clients take every slot but the one kept for a newcomer; a further client is
    // accepted there and closed once it identifies; an idle connection in that slot gives way
    // to a newer connection; a client reconnecting at the limit replaces its own older
    // connection; nothing is refused, and the client slots keep working throughout.
    let mut harness = Harness::new();
    let client_max = CONNECTIONS_MAX - 1;
    let mut clients: Vec<TcpStream> = (0..client_max).map(|_| harness.connect()).collect();
    for (index, client) in clients.iter_mut().enumerate() {
        client.write_all(&ping_client(ClientId(100 + index as u64))).unwrap();
    }
    drop(harness.receive(client_max));
    let mut over_limit = harness.connect();
    over_limit.write_all(&ping_client(ClientId(99))).unwrap();
    harness.pump_until(|harness| harness.bus.metrics().connections_clients_over_limit == 1);
    harness.expect_closed_count(&mut over_limit, 1);
    let mut idle = harness.connect();
    let mut newcomer = TcpStream::connect(harness.address).unwrap();
    harness.expect_closed_count(&mut idle, 2);
    harness.pump_until(|harness| harness.bus.socket_count() == CONNECTIONS_MAX);
    assert_eq!(harness.bus.metrics().connections_unidentified_evicted, 1);
    // The newcomer is client 100 again: its older connection gives way.
    newcomer.write_all(&ping_client(ClientId(100))).unwrap();
    drop(harness.receive(1));
    harness.expect_closed_count(&mut clients[0], 3);
    assert_eq!(harness.bus.metrics().connections_superseded_evicted, 1);
    let bytes = reply(ClientId(100), &[]);
    assert!(harness.bus.send_to_client(
        &mut harness.io,
        ClientId(100),
        message(&harness.pool, &bytes)
    ));
    let mut received = vec![0u8; bytes.len()];
    newcomer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    harness.pump_until(|harness| harness.bus.metrics().messages_sent == 1);
    newcomer.read_exact(&mut received).unwrap();
    assert_eq!(received, bytes);
    let last = request(ClientId(100 + client_max as u64 - 1), 1, &[]);
    clients[client_max - 1].write_all(&last).unwrap();
    assert_eq!(harness.receive(1)[0].bytes(), &last[..]);
    assert_eq!(harness.bus.connection_count(), client_max);
    assert_eq!(harness.bus.metrics().connections_refused, 0);
}

#[test]
fn send_to_client_delivers_the_message() {
    // Goal: once a client has pinged, a message sent to its id arrives on its socket intact;
    // a message for an unknown client is dropped and reported.
    let mut harness = Harness::new();
    let mut client = harness.connect();
    client.write_all(&ping_client(ClientId(46))).unwrap();
    drop(harness.receive(1));
    let bytes = reply(ClientId(46), &body(6, 5000));
    let reply = message(&harness.pool, &bytes);
    assert!(harness.bus.send_to_client(&mut harness.io, ClientId(46), reply.clone()));
    assert!(!harness.bus.send_to_client(&mut harness.io, ClientId(47), reply));
    harness.pump_until(|harness| harness.bus.metrics().messages_sent == 1);
    let mut received = vec![0u8; bytes.len()];
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    client.read_exact(&mut received).unwrap();
    assert_eq!(received, bytes);
    assert_eq!(harness.bus.metrics().messages_dropped, 1);
}

#[test]
fn peer_that_never_reads_cannot_block_the_bus() {
    // Goal: a client that never reads fills its socket buffers; the bus drops what no longer
    // fits its send queue, keeps serving another client meanwhile, closes the stuck connection
    // after SEND_STALL_TICKS_MAX ticks, and gives back every buffer it held.
    let mut harness = Harness::new();
    let mut active = harness.connect();
    let mut stuck = harness.connect();
    stuck.write_all(&ping_client(ClientId(48))).unwrap();
    active.write_all(&ping_client(ClientId(49))).unwrap();
    drop(harness.receive(2));
    let free_before = harness.pool.free_count();
    let big = reply(ClientId(48), &body(7, MESSAGE_SIZE_MAX - HEADER_SIZE));
    let mut accepted = 0;
    while harness.bus.send_to_client(&mut harness.io, ClientId(48), message(&harness.pool, &big)) {
        accepted += 1;
        assert!(accepted < 1000, "the stuck peer's queue never filled");
        harness.pump();
    }
    assert!(accepted > CONNECTION_SEND_QUEUE_MAX);
    assert_eq!(harness.pool.free_count(), free_before - CONNECTION_SEND_QUEUE_MAX);
    assert_eq!(harness.bus.metrics().messages_dropped, 1);
    // The other client is served, both ways, while the stuck one holds its queue.
    let bytes = request(ClientId(49), 1, &body(8, 64));
    active.write_all(&bytes).unwrap();
    assert_eq!(harness.receive(1)[0].bytes(), &bytes[..]);
    let pong = reply(ClientId(49), &[]);
    assert!(harness.bus.send_to_client(
        &mut harness.io,
        ClientId(49),
        message(&harness.pool, &pong)
    ));
    harness.pump();
    let mut received = vec![0u8; pong.len()];
    active.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    active.read_exact(&mut received).unwrap();
    assert_eq!(received, pong);
    for _ in 0..=SEND_STALL_TICKS_MAX {
        harness.bus.on_tick(&mut harness.io);
    }
    harness.pump_until(|harness| harness.bus.socket_count() == 1);
    // Its send queue and its receive buffer went back to the pool.
    assert_eq!(harness.pool.free_count(), free_before + 1);
    assert_eq!(harness.bus.connection_count(), 1);
    assert!(!harness.bus.send_to_client(
        &mut harness.io,
        ClientId(48),
        message(&harness.pool, &big)
    ));
}

#[test]
fn bus_does_not_allocate_after_startup() {
    // Goal: accepting connections, receiving requests (pipelined and whole) and sending
    // replies allocate nothing once the bus is set up.
    let mut harness = Harness::new();
    let mut clients: Vec<TcpStream> =
        (0..2).map(|_| TcpStream::connect(harness.address).unwrap()).collect();
    // Requests 0 and 2 come from client 50 on the first connection, 1 and 3 from client 51 on
    // the second.
    let requests: Vec<Vec<u8>> = (0..4)
        .map(|index| {
            request(ClientId(50 + index as u64 % 2), 1 + index as u32 / 2, &body(index, 3000))
        })
        .collect();
    let replies: Vec<Vec<u8>> =
        (0..2).map(|index| reply(ClientId(50 + index), &body(9, 700))).collect();
    let mut pipelined = [requests[2].clone(), requests[3].clone()];
    pipelined[0].extend_from_slice(&requests[0]);
    pipelined[1].extend_from_slice(&requests[1]);
    let mut received = vec![0u8; replies[0].len()];
    let mut inbox: Vec<Message> = Vec::with_capacity(8);
    allocation_guard::arm();
    for round in 0..3 {
        clients[round % 2].write_all(&requests[round % 2]).unwrap();
        clients[0].write_all(&pipelined[0]).unwrap();
        clients[1].write_all(&pipelined[1]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while inbox.len() < 5 && Instant::now() < deadline {
            harness.pump();
            while let Some(accepted) = harness.bus.receive() {
                inbox.push(accepted.into_message());
            }
        }
        assert_eq!(inbox.len(), 5);
        inbox.clear();
        for (index, client) in clients.iter_mut().enumerate() {
            let reply = message(&harness.pool, &replies[index]);
            assert!(harness.bus.send_to_client(
                &mut harness.io,
                ClientId(50 + index as u64),
                reply
            ));
            harness.pump();
            client.read_exact(&mut received).unwrap();
            assert!(received == replies[index]);
        }
    }
    let allocations = allocation_guard::allocations_since_armed();
    allocation_guard::disarm();
    assert_eq!(allocations, 0);
    assert_eq!(harness.bus.metrics().messages_received, 15);
    assert_eq!(harness.bus.metrics().messages_sent, 6);
}

// Replicas.

/// Replicas `0..ips.len()` of one cluster, replica i listening on `ips[i]` (port 0). Each is
/// told the cluster's addresses, as `addresses_edit` leaves them for that replica, and starts
/// dialing.
fn cluster_with(
    ips: &[&str],
    mut addresses_edit: impl FnMut(ReplicaIndex, &mut [SocketAddr]),
) -> Vec<Harness> {
    let replica_count = ips.len() as u8;
    let mut harnesses: Vec<Harness> = ips
        .iter()
        .enumerate()
        .map(|(replica, ip)| {
            let address = SocketAddr::new(ip.parse().unwrap(), 0);
            Harness::replica(ReplicaIndex(replica as u8), replica_count, address)
        })
        .collect();
    let addresses: Vec<SocketAddr> = harnesses.iter().map(|harness| harness.address).collect();
    for (replica, harness) in harnesses.iter_mut().enumerate() {
        let mut addresses = addresses.clone();
        addresses_edit(ReplicaIndex(replica as u8), &mut addresses);
        harness.bus.connect_to_replicas(&mut harness.io, &addresses);
    }
    harnesses
}

fn cluster(replica_count: usize) -> Vec<Harness> {
    cluster_with(&vec!["127.0.0.1"; replica_count], |_, _| {})
}

/// Steps every bus in turn, each ticking once per round, until `condition` holds.
fn run_until(harnesses: &mut [Harness], mut condition: impl FnMut(&mut [Harness]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition(harnesses) {
        assert!(Instant::now() < deadline, "timed out");
        for harness in harnesses.iter_mut() {
            harness.pump();
            harness.bus.on_tick(&mut harness.io);
        }
    }
}

/// Every replica has a connection to every other.
fn mesh_connected(harnesses: &[Harness]) -> bool {
    let replica_count = harnesses.len() as u8;
    harnesses.iter().enumerate().all(|(replica, harness)| {
        (0..replica_count)
            .filter(|peer| usize::from(*peer) != replica)
            .all(|peer| harness.bus.replica_connected(ReplicaIndex(peer)))
    })
}

/// Moves the messages in replica `replica`'s inbox to `messages`, except the pings that
/// identify dialers. Allocates nothing if `messages` has room.
fn inbox_drain(harnesses: &mut [Harness], replica: usize, messages: &mut Vec<Message>) {
    while let Some(accepted) = harnesses[replica].bus.receive() {
        if accepted.header().command() != Some(Command::Ping) {
            messages.push(accepted.into_message());
        }
    }
}

/// A `headers` message from `replica` carrying `marker` in `op` and a body of `header_count`
/// headers' worth of bytes (the bus does not look inside), built in place: no allocation.
fn headers(pool: &MessagePool, replica: ReplicaIndex, marker: u64, header_count: usize) -> Message {
    let size = HEADER_SIZE + header_count * HEADER_SIZE;
    let mut message = pool.get();
    let body = &mut message.buffer_mut_unique()[HEADER_SIZE..size];
    for (position, byte) in body.iter_mut().enumerate() {
        *byte = (position as u8).wrapping_mul(31).wrapping_add(marker as u8);
    }
    let mut header = Header::new(Command::Headers, CLUSTER);
    header.replica = replica;
    header.op = Op(marker);
    header.size = size as u32;
    header.set_checksum_body(body);
    header.set_checksum();
    assert_eq!(header.invalid(), None);
    *message.header_mut() = header;
    message
}

fn ping(replica: ReplicaIndex) -> Vec<u8> {
    let mut header = Header::new(Command::Ping, CLUSTER);
    header.replica = replica;
    header.set_checksum_body(&[]);
    header.set_checksum();
    assert_eq!(header.invalid(), None);
    zerocopy::IntoBytes::as_bytes(&header).to_vec()
}

#[test]
fn two_replicas_connect_once_and_exchange_messages_both_ways() {
    // Goal: replica 0 dials replica 1 (never the other way), replica 1 learns from the opening
    // ping that the connection is replica 0's, and messages flow both ways intact (a large one
    // included); more ticks open no second connection.
    let mut harnesses = cluster(2);
    run_until(&mut harnesses, |harnesses| mesh_connected(harnesses));
    let ping = harnesses[1].receive(1);
    assert_eq!(ping[0].header().command(), Some(Command::Ping));
    assert_eq!(ping[0].header().replica, ReplicaIndex(0));
    drop(ping);
    let small = headers(&harnesses[0].pool, ReplicaIndex(0), 1, 2);
    let large_count = (MESSAGE_SIZE_MAX - HEADER_SIZE) / HEADER_SIZE;
    let large = headers(&harnesses[1].pool, ReplicaIndex(1), 2, large_count);
    let [first, second] = &mut harnesses[..] else { unreachable!() };
    assert!(first.bus.send_to_replica(&mut first.io, ReplicaIndex(1), small.clone()));
    assert!(second.bus.send_to_replica(&mut second.io, ReplicaIndex(0), large.clone()));
    let mut received = [Vec::new(), Vec::new()];
    run_until(&mut harnesses, |harnesses| {
        inbox_drain(harnesses, 0, &mut received[0]);
        inbox_drain(harnesses, 1, &mut received[1]);
        received[0].len() == 1 && received[1].len() == 1
    });
    assert_eq!(received[1][0].bytes(), small.bytes());
    assert_eq!(received[0][0].bytes(), large.bytes());
    for _ in 0..2 * RECONNECT_DELAY_TICKS_MAX {
        for harness in harnesses.iter_mut() {
            harness.pump();
            harness.bus.on_tick(&mut harness.io);
        }
    }
    let metrics = [harnesses[0].bus.metrics(), harnesses[1].bus.metrics()];
    assert_eq!((metrics[0].connections_dialed, metrics[0].connections_accepted), (1, 0));
    assert_eq!((metrics[1].connections_dialed, metrics[1].connections_accepted), (0, 1));
    assert_eq!(metrics[1].replicas_identified, 1);
    assert_eq!(metrics[0].connections_closed + metrics[1].connections_closed, 0);
    for harness in &harnesses {
        assert_eq!((harness.bus.connection_count(), harness.bus.socket_count()), (1, 1));
    }
}

#[test]
fn three_replicas_form_a_full_mesh() {
    // Goal: in a cluster of three every pair ends up with exactly one connection, dialed by
    // the lower replica, and a message sent to each replica reaches that replica only.
    let mut harnesses = cluster(3);
    run_until(&mut harnesses, |harnesses| mesh_connected(harnesses));
    for (replica, harness) in harnesses.iter().enumerate() {
        let metrics = harness.bus.metrics();
        assert_eq!(metrics.connections_dialed, 2 - replica as u64);
        assert_eq!(metrics.connections_accepted, replica as u64);
        assert_eq!(metrics.replicas_identified, replica as u64);
        assert_eq!(metrics.connections_closed, 0);
        assert_eq!((harness.bus.connection_count(), harness.bus.socket_count()), (2, 2));
    }
    for harness in harnesses.iter_mut() {
        let from = harness.bus.replica;
        for to in (0..3).filter(|to| *to != from.get()) {
            let message =
                headers(&harness.pool, from, 10 * u64::from(from.get()) + u64::from(to), 1);
            assert!(harness.bus.send_to_replica(&mut harness.io, ReplicaIndex(to), message));
        }
    }
    let mut received = [Vec::new(), Vec::new(), Vec::new()];
    run_until(&mut harnesses, |harnesses| {
        for (replica, messages) in received.iter_mut().enumerate() {
            inbox_drain(harnesses, replica, messages);
        }
        received.iter().all(|messages| messages.len() >= 2)
    });
    for (to, messages) in received.iter().enumerate() {
        let mut senders: Vec<(u8, u64)> = messages
            .iter()
            .map(|message| (message.header().replica.get(), message.header().op.get()))
            .collect();
        senders.sort();
        let expected: Vec<(u8, u64)> = (0..3u8)
            .filter(|from| usize::from(*from) != to)
            .map(|from| (from, 10 * u64::from(from) + to as u64))
            .collect();
        assert_eq!(senders, expected, "replica {to}");
    }
}

#[test]
fn dialer_reconnects_with_backoff_after_the_peer_restarts() {
    // Goal: when replica 1 goes away, replica 0 waits RECONNECT_DELAY_TICKS_MIN ticks (it had
    // heard from replica 1), then dials again after each refused connect, each wait within
    // its doubling ceiling and never above RECONNECT_DELAY_TICKS_MAX; once replica 1 is back
    // on its address, the next dial connects and replica 1 identifies it.
    let mut harnesses = cluster(2);
    run_until(&mut harnesses, |harnesses| mesh_connected(harnesses));
    let address = harnesses[1].address;
    let hello = headers(&harnesses[1].pool, ReplicaIndex(1), 1, 1);
    let [_, second] = &mut harnesses[..] else { unreachable!() };
    assert!(second.bus.send_to_replica(&mut second.io, ReplicaIndex(0), hello));
    let mut received = Vec::new();
    run_until(&mut harnesses, |harnesses| {
        inbox_drain(harnesses, 0, &mut received);
        received.len() == 1
    });
    drop(harnesses.pop());
    let mut dialer = harnesses.pop().unwrap();
    dialer.pump_until(|harness| harness.bus.socket_count() == 0);
    assert!(!dialer.bus.replica_connected(ReplicaIndex(1)));
    let mut delays = Vec::new();
    for attempt in 0..7u32 {
        let tick = dialer.bus.dials[1].tick.expect("a dial is scheduled");
        let delay = tick - dialer.bus.ticks;
        delays.push(delay);
        let ceiling = (RECONNECT_DELAY_TICKS_MIN << attempt).min(RECONNECT_DELAY_TICKS_MAX);
        assert!((RECONNECT_DELAY_TICKS_MIN..=ceiling).contains(&delay), "{delays:?}");
        for _ in 0..delay - 1 {
            dialer.bus.on_tick(&mut dialer.io);
            assert_eq!(dialer.bus.socket_count(), 0, "dialed before the backoff passed");
        }
        let failed = dialer.bus.metrics().dials_failed;
        dialer.bus.on_tick(&mut dialer.io);
        assert_eq!(dialer.bus.socket_count(), 1, "dialed once the backoff passed");
        dialer.pump_until(|harness| {
            harness.bus.metrics().dials_failed > failed && harness.bus.socket_count() == 0
        });
    }
    assert_eq!(delays[0], RECONNECT_DELAY_TICKS_MIN);
    let restarted = Harness::replica(ReplicaIndex(1), 2, address);
    let mut harnesses = vec![dialer, restarted];
    let addresses = [harnesses[0].address, address];
    let [_, restarted] = &mut harnesses[..] else { unreachable!() };
    restarted.bus.connect_to_replicas(&mut restarted.io, &addresses);
    run_until(&mut harnesses, |harnesses| mesh_connected(harnesses));
    assert_eq!(harnesses[0].bus.metrics().connections_dialed, 2);
    assert_eq!(harnesses[1].bus.metrics().replicas_identified, 1);
}

#[test]
fn connections_claiming_an_impossible_replica_are_closed() {
    // Goal: replica 1 of 3 closes an accepted connection that claims to be replica 3 (out of
    // range), 1 (itself) or 2 (a higher replica, which it dials itself); it closes a client that
    // sends a replica command and a replica that sends a client request; a connection from
    // replica 0's IP claiming 0 is identified, and a second one replaces it.
    let higher = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut harness = Harness::replica(ReplicaIndex(1), 3, "127.0.0.1:0".parse().unwrap());
    let lower: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let addresses = [lower, harness.address, higher.local_addr().unwrap()];
    harness.bus.connect_to_replicas(&mut harness.io, &addresses);
    harness.pump_until(|harness| harness.bus.replica_connected(ReplicaIndex(2)));
    let mut closed = 0;
    for claimed in [3, 1, 2] {
        let mut stream = harness.connect();
        stream.write_all(&ping(ReplicaIndex(claimed))).unwrap();
        closed += 1;
        harness.expect_closed_count(&mut stream, closed);
    }
    let mut client = harness.connect();
    client.write_all(&request(ClientId(60), 1, &[])).unwrap();
    drop(harness.receive(1));
    client.write_all(&ping(ReplicaIndex(0))).unwrap();
    closed += 1;
    harness.expect_closed_count(&mut client, closed);
    let mut first = harness.connect();
    first.write_all(&ping(ReplicaIndex(0))).unwrap();
    drop(harness.receive(1));
    assert!(harness.bus.replica_connected(ReplicaIndex(0)));
    let mut second = harness.connect();
    second.write_all(&ping(ReplicaIndex(0))).unwrap();
    drop(harness.receive(1));
    closed += 1;
    harness.expect_closed_count(&mut first, closed);
    assert!(harness.bus.replica_connected(ReplicaIndex(0)));
    let message = headers(&harness.pool, ReplicaIndex(1), 5, 1);
    let bytes = message.bytes().to_vec();
    assert!(harness.bus.send_to_replica(&mut harness.io, ReplicaIndex(0), message));
    harness.pump_until(|harness| harness.bus.metrics().messages_sent >= 2);
    let mut received = vec![0u8; bytes.len()];
    second.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    second.read_exact(&mut received).unwrap();
    assert_eq!(received, bytes);
    second.write_all(&request(ClientId(61), 1, &[])).unwrap();
    closed += 1;
    harness.expect_closed_count(&mut second, closed);
    assert!(!harness.bus.replica_connected(ReplicaIndex(0)));
    assert_eq!(harness.bus.metrics().replicas_identified, 2);
    assert!(harness.bus.replica_connected(ReplicaIndex(2)), "the dialed connection is untouched");
}

#[test]
fn replica_dialing_from_an_unexpected_ip_is_refused() {
    // Goal: replica 0 listens on 127.0.0.2 and dials from that IP. A replica 1 configured
    // with 127.0.0.2 for it identifies it; one configured with 127.0.0.1 closes every
    // connection it makes (while replica 0 keeps redialing with backoff) and never takes it
    // for replica 0.
    let mut harnesses = cluster_with(&["127.0.0.2", "127.0.0.1"], |_, _| {});
    run_until(&mut harnesses, |harnesses| mesh_connected(harnesses));
    assert_eq!(harnesses[1].bus.metrics().replicas_identified, 1);
    drop(harnesses);
    let mut harnesses = cluster_with(&["127.0.0.2", "127.0.0.1"], |replica, addresses| {
        if replica == ReplicaIndex(1) {
            addresses[0].set_ip("127.0.0.1".parse().unwrap());
        }
    });
    run_until(&mut harnesses, |harnesses| harnesses[1].bus.metrics().connections_closed >= 3);
    let metrics = harnesses[1].bus.metrics();
    assert_eq!(metrics.replicas_identified, 0);
    assert!(metrics.connections_accepted >= 3);
    assert!(!harnesses[1].bus.replica_connected(ReplicaIndex(0)));
    assert!(harnesses[0].bus.metrics().connections_dialed >= 3);
    assert!(harnesses[0].bus.dials[1].attempts >= 2, "never heard from: the backoff grows");
}

#[test]
fn replicas_exchange_and_reconnect_without_allocating() {
    // Goal: once two replicas are set up, exchanging messages both ways, a dropped connection,
    // the redial after backoff, the identifying ping and further exchanges allocate nothing.
    let mut harnesses = cluster(2);
    run_until(&mut harnesses, |harnesses| mesh_connected(harnesses));
    let mut received = [Vec::with_capacity(16), Vec::with_capacity(16)];
    allocation_guard::arm();
    for round in 0..4u64 {
        for (from, harness) in harnesses.iter_mut().enumerate() {
            let to = ReplicaIndex(1 - from as u8);
            let message =
                headers(&harness.pool, ReplicaIndex(from as u8), round, 1 + round as usize);
            assert!(harness.bus.send_to_replica(&mut harness.io, to, message));
        }
        run_until(&mut harnesses, |harnesses| {
            inbox_drain(harnesses, 0, &mut received[0]);
            inbox_drain(harnesses, 1, &mut received[1]);
            received[0].len() == 1 && received[1].len() == 1
        });
        assert_eq!(
            (received[0][0].header().replica, received[0][0].header().op),
            (ReplicaIndex(1), Op(round))
        );
        assert_eq!(
            (received[1][0].header().replica, received[1][0].header().op),
            (ReplicaIndex(0), Op(round))
        );
        received[0].clear();
        received[1].clear();
        if round == 1 {
            // Replica 1 drops the connection (without a log line, which the test's captured
            // output would allocate for).
            let acceptor = &mut harnesses[1];
            let index = acceptor.bus.replica_connections[0].unwrap();
            acceptor.bus.close(&mut acceptor.io, index, CloseReason::PeerClosed);
            run_until(&mut harnesses, |harnesses| mesh_connected(harnesses));
        }
    }
    let allocations = allocation_guard::allocations_since_armed();
    allocation_guard::disarm();
    assert_eq!(allocations, 0);
    assert_eq!(harnesses[0].bus.metrics().connections_dialed, 2);
    assert_eq!(harnesses[1].bus.metrics().replicas_identified, 2);
}

#[test]
fn reconnect_delay_doubles_up_to_the_maximum_with_jitter() {
    // Goal: the first retry waits the minimum; later ones stay between the minimum and a
    // ceiling that doubles per attempt up to the maximum (never past it, even after many
    // attempts), and the jitter spreads the waits; one seed gives one sequence.
    let mut prng = Prng::new(7);
    assert_eq!(replicas::reconnect_delay_ticks(&mut prng, 0), RECONNECT_DELAY_TICKS_MIN);
    for attempts in [1u32, 2, 3, 4, 5, 10, 40, u32::MAX] {
        let ceiling =
            (RECONNECT_DELAY_TICKS_MIN << attempts.min(16)).min(RECONNECT_DELAY_TICKS_MAX);
        let delays: Vec<u64> =
            (0..200).map(|_| replicas::reconnect_delay_ticks(&mut prng, attempts)).collect();
        assert!(delays.iter().all(|delay| (RECONNECT_DELAY_TICKS_MIN..=ceiling).contains(delay)));
        assert!(delays.iter().any(|delay| *delay > RECONNECT_DELAY_TICKS_MIN), "{attempts}");
        if attempts >= 5 {
            assert!(delays.iter().any(|delay| *delay > RECONNECT_DELAY_TICKS_MAX / 2));
        }
    }
    let sequence = |seed| {
        let mut prng = Prng::new(seed);
        (0..16).map(|_| replicas::reconnect_delay_ticks(&mut prng, 6)).collect::<Vec<_>>()
    };
    assert_eq!(sequence(3), sequence(3));
}

/// Steps every bus in turn, without ticking, until `condition` holds.
fn pump_until_all(harnesses: &mut [Harness], mut condition: impl FnMut(&mut [Harness]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition(harnesses) {
        assert!(Instant::now() < deadline, "timed out");
        harnesses.iter_mut().for_each(Harness::pump);
    }
}

/// Opens connections to replica `replica` that never send a byte until `streams` is full,
/// waiting after each until the bus has taken it from the kernel's backlog (accepted, or
/// refused), so that none waits in `connect` for a full backlog. No bus ticks meanwhile.
fn idle_connections(harnesses: &mut [Harness], replica: usize, streams: &mut Vec<TcpStream>) {
    let taken = |harness: &Harness| {
        let metrics = harness.bus.metrics();
        metrics.connections_accepted + metrics.connections_refused
    };
    while streams.len() < streams.capacity() {
        let before = taken(&harnesses[replica]);
        streams.push(TcpStream::connect(harnesses[replica].address).unwrap());
        pump_until_all(harnesses, |harnesses| taken(&harnesses[replica]) > before);
    }
}

#[test]
fn idle_connections_lock_out_neither_clients_nor_replicas() {
    // Goal: while a flood of connections that never send a byte holds more sockets than the
    // table has slots, a client that connects is still served, and a lower replica that lost
    // its connection gets back in; every idle connection is closed within the identification
    // deadline, and none waits in the kernel's backlog meanwhile. Evicting allocates nothing.
    let mut harnesses = cluster(2);
    run_until(&mut harnesses, |harnesses| mesh_connected(harnesses));
    let bytes = request(ClientId(62), 1, &[]);
    let mut received = Vec::with_capacity(4);
    let mut idle = Vec::with_capacity(CONNECTIONS_MAX + 30);
    allocation_guard::arm();
    idle_connections(&mut harnesses, 1, &mut idle);
    let mut client = TcpStream::connect(harnesses[1].address).unwrap();
    client.write_all(&bytes).unwrap();
    pump_until_all(&mut harnesses, |harnesses| {
        inbox_drain(harnesses, 1, &mut received);
        !received.is_empty()
    });
    let allocations = allocation_guard::allocations_since_armed();
    allocation_guard::disarm();
    assert_eq!(allocations, 0);
    assert_eq!(received[0].bytes(), &bytes[..]);
    drop(received);
    let acceptor = &mut harnesses[1];
    let index = acceptor.bus.replica_connections[0].expect("replica 0 is connected");
    acceptor.bus.close(&mut acceptor.io, index, CloseReason::PeerClosed);
    run_until(&mut harnesses, |harnesses| !harnesses[1].bus.replica_connected(ReplicaIndex(0)));
    run_until(&mut harnesses, |harnesses| mesh_connected(harnesses));
    assert_eq!(harnesses[1].bus.metrics().replicas_identified, 2);
    // Past the deadline the flood is gone: each idle connection was evicted for a newer one or
    // timed out, none was refused, and each idle socket reads the end of the stream.
    let idle_count = idle.len() as u64;
    run_until(&mut harnesses, |harnesses| {
        let metrics = harnesses[1].bus.metrics();
        metrics.connections_unidentified_timed_out + metrics.connections_unidentified_evicted
            == idle_count
    });
    let metrics = harnesses[1].bus.metrics();
    let evicted_count = idle_count + 1 - (CONNECTIONS_MAX - 1) as u64;
    assert!(metrics.connections_unidentified_evicted >= evicted_count, "{metrics:?}");
    assert!(metrics.connections_unidentified_timed_out >= 1, "{metrics:?}");
    assert_eq!(metrics.connections_refused, 0);
    for stream in idle.iter_mut() {
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(stream.read(&mut [0u8; 1]).unwrap(), 0);
    }
    assert_eq!(harnesses[1].bus.connection_count(), 2, "the client and replica 0 stay");
    assert!(
        harnesses[1].bus.replica_connected(ReplicaIndex(0))
            && harnesses[0].bus.replica_connected(ReplicaIndex(1))
    );
}

#[test]
fn a_crowd_of_clients_connecting_together_is_accepted_in_a_few_turns() {
    // Goal: the bus keeps several accepts in the ring, so that clients that connect together
    // are taken from the kernel's queue in a few turns of the event loop. With one accept a
    // turn, and a turn that commits and answers a thousand requests under load, 4,096 clients
    // starting together waited seconds in that queue and their first requests timed out.
    const CROWD: usize = 48;
    static_assertions::const_assert!(CROWD < CONNECTIONS_MAX - 1);
    static_assertions::const_assert!(CROWD <= crate::constants::ACCEPTS_IN_FLIGHT_MAX);
    let mut harness = Harness::new();
    let crowd = CROWD;
    let mut clients: Vec<TcpStream> =
        (0..crowd).map(|_| TcpStream::connect(harness.address).unwrap()).collect();
    for (index, client) in clients.iter_mut().enumerate() {
        client.write_all(&ping_client(ClientId(500 + index as u64))).unwrap();
    }
    let mut turns = 0;
    while harness.bus.metrics().connections_accepted < crowd as u64 {
        assert!(
            turns < 8,
            "{} accepted after {turns} turns",
            harness.bus.metrics().connections_accepted
        );
        harness.pump();
        turns += 1;
    }
    assert_eq!(harness.receive(crowd).len(), crowd);
}
