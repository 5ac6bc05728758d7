//! The bus's connections to the other replicas: dialing the higher ones with backoff,
//! identifying the lower ones on the connections they open, and sending to either.

use std::net::SocketAddr;
use std::os::fd::IntoRawFd;

use super::{CloseReason, ConnectionState, MessageBus, Peer};
use crate::constants::{RECONNECT_DELAY_TICKS_MAX, RECONNECT_DELAY_TICKS_MIN, REPLICAS_MAX};
use crate::io::log::{Quoted, log};
use crate::io::ring::{ConnectionToken, Io, Operation};
use crate::io::socket::{self, ErrorDisplay};
use crate::stdx::prng::Prng;
use crate::vsr::header::{Command, Header, ReplicaIndex};
use crate::vsr::message_pool::Message;
use crate::vsr::storage::IoError;

impl MessageBus {
    /// Records the cluster's addresses (`addresses[i]` is replica i's, one per replica) and
    /// dials every replica above this one; the lower ones dial this one. Call once, at startup.
    /// Dialing binds to this replica's own address's IP, which is how the peers know it.
    pub fn connect_to_replicas(&mut self, io: &mut Io, addresses: &[SocketAddr]) {
        assert_eq!(addresses.len(), usize::from(self.replica_count));
        assert!(self.addresses.iter().all(Option::is_none), "the addresses are set once");
        for (replica, address) in addresses.iter().enumerate() {
            self.addresses[replica] = Some(*address);
        }
        for replica in (self.replica.get() + 1..self.replica_count).map(ReplicaIndex) {
            self.dial(io, replica);
        }
    }

    /// Queues `message` for `replica`. Returns false, dropping the message, if that replica is
    /// not connected (or not identified yet) or its send queue is full: the protocol retries.
    pub fn send_to_replica(
        &mut self,
        io: &mut Io,
        replica: ReplicaIndex,
        message: Message,
    ) -> bool {
        assert!(replica < ReplicaIndex(self.replica_count), "no replica {replica} in this cluster");
        assert_ne!(replica, self.replica, "a replica does not send to itself through the bus");
        let Some(index) = self.replica_connections[usize::from(replica)] else {
            self.metrics.messages_dropped += 1;
            return false;
        };
        assert_eq!(self.connections[index].state, ConnectionState::Connected);
        assert_eq!(self.connections[index].peer, Peer::Replica(replica));
        self.send(io, index, message)
    }

    /// Whether `replica` has a connection that messages can be sent on.
    pub fn replica_connected(&self, replica: ReplicaIndex) -> bool {
        assert!(replica < ReplicaIndex(self.replica_count));
        self.replica_connections[usize::from(replica)].is_some()
    }
}

/// Dialing.
impl MessageBus {
    /// Connection slots reserved for dialing: one per higher replica.
    pub(super) fn dialed_count(&self) -> usize {
        usize::from(self.replica_count - 1 - self.replica.get())
    }

    /// The replica whose dialed connection slot `index` is, if it is one.
    pub(super) fn dialed_replica(&self, index: usize) -> Option<ReplicaIndex> {
        if index < self.dialed_count() {
            Some(ReplicaIndex(self.replica.get() + 1 + index as u8))
        } else {
            None
        }
    }

    fn dial_index(&self, replica: ReplicaIndex) -> usize {
        assert!(replica > self.replica && replica < ReplicaIndex(self.replica_count));
        let index = usize::from(replica.get() - self.replica.get() - 1);
        assert_eq!(self.dialed_replica(index), Some(replica));
        index
    }

    /// Dials each higher replica whose backoff has passed.
    pub(super) fn dial_due(&mut self, io: &mut Io) {
        for replica in (self.replica.get() + 1..self.replica_count).map(ReplicaIndex) {
            let due = self.dials[usize::from(replica)].tick.is_some_and(|tick| tick <= self.ticks);
            if due {
                self.dial(io, replica);
            }
        }
    }

    fn dial(&mut self, io: &mut Io, replica: ReplicaIndex) {
        let index = self.dial_index(replica);
        let address = self.addresses[usize::from(replica)].expect("dialing needs the addresses");
        let own = self.addresses[usize::from(self.replica)].expect("dialing needs the addresses");
        assert_eq!(self.connections[index].state, ConnectionState::Free);
        self.dials[usize::from(replica)].tick = None;
        let fd = match socket::dial_socket(&address, own.ip(), self.socket_buffer_size_bytes) {
            Ok(fd) => fd.into_raw_fd(),
            Err(error) => {
                self.dial_failed(replica, address, socket::io_error(&error));
                return self.dial_schedule(replica);
            }
        };
        let ticks = self.ticks;
        let connection = &mut self.connections[index];
        assert!(connection.receive_buffer.is_none() && connection.send_queue.is_empty());
        assert!(!connection.receive_in_flight && !connection.send_in_flight);
        connection.opened_tick = ticks;
        connection.state = ConnectionState::Connecting;
        connection.fd = fd;
        connection.address = Some(address);
        connection.peer = Peer::Replica(replica);
        connection.receive_reset();
        let token = connection.token(index);
        let address = socket::socket_address(&address);
        io.submit(Operation::Connect { fd, token, address });
    }

    /// Sets the next dial of `replica`, whose connection slot just became free, after a backoff
    /// that grows with each dial that came to nothing.
    pub(super) fn dial_schedule(&mut self, replica: ReplicaIndex) {
        assert_eq!(self.connections[self.dial_index(replica)].state, ConnectionState::Free);
        let dial = &mut self.dials[usize::from(replica)];
        assert!(dial.tick.is_none());
        let delay = reconnect_delay_ticks(&mut self.prng, dial.attempts);
        dial.attempts = dial.attempts.saturating_add(1);
        dial.tick = Some(self.ticks + delay);
    }

    pub(super) fn connect_complete(
        &mut self,
        io: &mut Io,
        token: ConnectionToken,
        result: Result<usize, IoError>,
    ) {
        let index = self.connection_index(token);
        let replica = self.dialed_replica(index).expect("only dialed connections connect");
        let connection = &mut self.connections[index];
        assert_eq!(connection.state, ConnectionState::Connecting);
        assert_eq!(connection.peer, Peer::Replica(replica));
        let address = connection.address.expect("a dialed connection has its address");
        if let Err(error) = result {
            // Nothing else is in flight on the socket: close it, then back off (`close_complete`).
            connection.state = ConnectionState::Closing;
            self.dial_failed(replica, address, error);
            return self.close_maybe(io, index);
        }
        connection.state = ConnectionState::Connected;
        let dial = &mut self.dials[usize::from(replica)];
        if dial.failing || !dial.connected_once {
            log!(Info, PeerConnected, "peer_replica={replica} address={address}");
            dial.failing = false;
            dial.connected_once = true;
        }
        assert!(self.replica_connections[usize::from(replica)].is_none());
        self.replica_connections[usize::from(replica)] = Some(index);
        self.metrics.connections_dialed += 1;
        self.ping_send(io, index);
        if self.connections[index].state == ConnectionState::Connected {
            self.receive_progress(io, index);
        }
    }

    /// Logs the first failure of a streak.
    fn dial_failed(&mut self, replica: ReplicaIndex, address: SocketAddr, error: IoError) {
        self.metrics.dials_failed += 1;
        let dial = &mut self.dials[usize::from(replica)];
        if !dial.failing {
            dial.failing = true;
            log!(
                Warn,
                PeerConnectFailed,
                "peer_replica={replica} address={address} error={} retry=backoff \
                 logged=once_until_connected",
                Quoted(ErrorDisplay(error))
            );
        }
    }

    /// Queues the ping that tells the accepting replica who dialed it.
    fn ping_send(&mut self, io: &mut Io, index: usize) {
        let Some(mut message) = self.pool.try_get() else {
            return self.close(io, index, CloseReason::Exhausted("no message buffer for a ping"));
        };
        let mut header = Header::new(Command::Ping, self.cluster);
        header.replica = self.replica;
        header.set_checksum_body(&[]);
        header.set_checksum();
        assert_eq!(header.invalid(), None);
        *message.header_mut() = header;
        let queued = self.send(io, index, message);
        assert!(queued, "the ping is the first message of a new connection");
    }
}

/// Identifying.
impl MessageBus {
    /// Makes the accepted connection `index` replica `replica`'s, if it can be: a lower replica
    /// of this cluster, from its configured IP address. A newer connection from a replica
    /// replaces the older: the replica restarted, or lost a connection this side still holds.
    pub(super) fn replica_identify(
        &mut self,
        io: &mut Io,
        index: usize,
        replica: ReplicaIndex,
    ) -> Result<(), CloseReason> {
        assert_eq!(self.connections[index].peer, Peer::Unknown);
        assert!(self.dialed_replica(index).is_none());
        let impostor = |reason| Err(CloseReason::Impostor { replica, reason });
        if replica >= ReplicaIndex(self.replica_count) {
            return impostor("no such replica in this cluster");
        }
        if replica == self.replica {
            return impostor("that is this replica's own index");
        }
        if replica > self.replica {
            return impostor("higher replicas are dialed by this one, not the other way");
        }
        let Some(configured) = self.addresses[usize::from(replica)] else {
            return impostor("the replica addresses are not configured yet");
        };
        let address = self.connections[index].address;
        let expected = configured.ip().to_canonical();
        if address.is_none_or(|address| address.ip().to_canonical() != expected) {
            return impostor("not from the replica's configured IP address");
        }
        if let Some(previous) = self.replica_connections[usize::from(replica)] {
            assert_ne!(previous, index);
            self.close(io, previous, CloseReason::Replaced);
        }
        self.peer_set(index, Peer::Replica(replica));
        self.replica_connections[usize::from(replica)] = Some(index);
        self.metrics.replicas_identified += 1;
        Ok(())
    }

    /// A message arrived from `replica` on connection `index`: if this replica dialed it, the
    /// connection works, and the next reconnect starts from the shortest delay again.
    pub(super) fn replica_heard(&mut self, index: usize, replica: ReplicaIndex) {
        assert!(usize::from(replica) < REPLICAS_MAX);
        if self.dialed_replica(index) == Some(replica) {
            self.dials[usize::from(replica)].attempts = 0;
        }
    }
}

/// The wait before dialing again after `attempts` dials that came to nothing: doubling from
/// `RECONNECT_DELAY_TICKS_MIN` up to `RECONNECT_DELAY_TICKS_MAX`, with a random part between the
/// minimum and that ceiling so that replicas restarted together do not dial in lockstep.
pub(super) fn reconnect_delay_ticks(prng: &mut Prng, attempts: u32) -> u64 {
    // Past 16 doublings the cap applied long ago; the shift stays in range.
    let ceiling = (RECONNECT_DELAY_TICKS_MIN << attempts.min(16)).min(RECONNECT_DELAY_TICKS_MAX);
    let jitter = prng.next_u64() % (ceiling - RECONNECT_DELAY_TICKS_MIN + 1);
    let delay = RECONNECT_DELAY_TICKS_MIN + jitter;
    assert!((RECONNECT_DELAY_TICKS_MIN..=ceiling).contains(&delay));
    delay
}
