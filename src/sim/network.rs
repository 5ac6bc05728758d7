//! A simulated network between the nodes of a simulation (replicas first, then clients):
//! per-message latency, loss, duplication, reordering and directional partitions, all drawn
//! from one seeded PRNG.
//!
//! A sent message is copied into the network at once, as a socket would copy it, so the
//! sender's buffer goes back to its pool. Packets wait in a priority queue ordered by delivery
//! tick, then by a sequence number, so that the order is total and the same for every run of a
//! seed. At delivery the bytes are copied into a buffer of the receiver's own pool; a receiver
//! whose pool is exhausted loses the message, as a replica whose bus has no free receive buffer
//! would. Partitions cut one direction of one link until a tick; a packet is dropped if its link
//! is cut when it is sent or when it is due.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::sim::storage::Latency;
use crate::sim::trace::{Event, Trace};
use crate::stdx::prng::Prng;
use zerocopy::FromBytes;

use crate::vsr::header::Header;
use crate::vsr::message_pool::{Message, MessagePool};

/// A replica (`0..replica_count`) or a client (`replica_count + client index`).
pub type NodeIndex = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkOptions {
    pub node_count: usize,
    pub latency: Latency,
    /// Messages lost, per thousand sent.
    pub loss_per_mille: u64,
    /// Messages delivered twice (each copy with its own latency), per thousand sent.
    pub duplicate_per_mille: u64,
    /// Packets the network holds at once; beyond this, sends are dropped (a congested link).
    pub packets_max: usize,
}

/// Why a packet never reached its receiver (traced, and counted in `NetworkMetrics`).
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    Loss = 1,
    Partition = 2,
    Capacity = 3,
    PoolExhausted = 4,
    /// The receiver rejected it: it failed validation, or no node has that address.
    Rejected = 5,
    /// The receiver was down (crashed) when it arrived.
    ReceiverDown = 6,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkMetrics {
    pub sent: u64,
    pub delivered: u64,
    pub duplicated: u64,
    /// Extra copies held back for long (`send_late`).
    pub late: u64,
    pub lost: u64,
    pub dropped_partition: u64,
    pub dropped_capacity: u64,
    pub dropped_pool_exhausted: u64,
    pub dropped_rejected: u64,
    pub dropped_receiver_down: u64,
}

impl NetworkMetrics {
    pub fn dropped(&self) -> u64 {
        self.lost
            + self.dropped_partition
            + self.dropped_capacity
            + self.dropped_pool_exhausted
            + self.dropped_rejected
            + self.dropped_receiver_down
    }
}

/// A message on the wire.
pub struct Packet {
    pub deliver_tick: u64,
    sequence: u64,
    pub from: NodeIndex,
    pub to: NodeIndex,
    pub bytes: Vec<u8>,
}

impl Packet {
    /// The header's checksum (what the trace records to name a message). Read by copy: the
    /// bytes of a `Vec<u8>` have no alignment a cast could rely on.
    pub fn checksum(&self) -> u64 {
        let header = Header::read_from_prefix(&self.bytes).ok();
        // The trace keeps the low 64 bits.
        header.map_or(0, |(header, _)| header.checksum.get() as u64)
    }
}

impl PartialEq for Packet {
    fn eq(&self, other: &Packet) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Packet {}

impl PartialOrd for Packet {
    fn partial_cmp(&self, other: &Packet) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Packet {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest packet first.
    fn cmp(&self, other: &Packet) -> Ordering {
        (other.deliver_tick, other.sequence).cmp(&(self.deliver_tick, self.sequence))
    }
}

pub struct Network {
    options: NetworkOptions,
    prng: Prng,
    sequence: u64,
    queue: BinaryHeap<Packet>,
    /// `links[from * node_count + to]`: the link is cut until this tick (exclusive).
    links_cut_until: Vec<u64>,
    /// Byte buffers of delivered packets, reused for new ones.
    buffers_free: Vec<Vec<u8>>,
    metrics: NetworkMetrics,
}

impl Network {
    pub fn new(options: NetworkOptions, seed: u64) -> Network {
        assert!(options.node_count > 0);
        assert!(options.loss_per_mille <= 1000);
        assert!(options.duplicate_per_mille <= 1000);
        assert!(options.packets_max > 0);
        Network {
            options,
            prng: Prng::new(seed),
            sequence: 0,
            queue: BinaryHeap::with_capacity(options.packets_max),
            links_cut_until: vec![0; options.node_count * options.node_count],
            buffers_free: Vec::new(),
            metrics: NetworkMetrics::default(),
        }
    }

    pub fn options(&self) -> &NetworkOptions {
        &self.options
    }

    pub fn metrics(&self) -> NetworkMetrics {
        self.metrics
    }

    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Puts a copy of `message` (header and body) on the wire from `from` to `to`.
    pub fn send(
        &mut self,
        trace: &mut Trace,
        tick: u64,
        from: NodeIndex,
        to: NodeIndex,
        message: &Message,
    ) {
        assert_ne!(from, to);
        self.metrics.sent += 1;
        let checksum = message.header().checksum.get() as u64;
        trace.record(Event::Send, &[tick, from as u64, to as u64, checksum]);
        if !self.link_up(from, to, tick) {
            return self.drop_traced(trace, tick, to, checksum, DropReason::Partition);
        }
        if self.prng.chance(self.options.loss_per_mille, 1000) {
            return self.drop_traced(trace, tick, to, checksum, DropReason::Loss);
        }
        let copies = if self.prng.chance(self.options.duplicate_per_mille, 1000) { 2 } else { 1 };
        for copy in 0..copies {
            if self.queue.len() >= self.options.packets_max {
                return self.drop_traced(trace, tick, to, checksum, DropReason::Capacity);
            }
            if copy > 0 {
                self.metrics.duplicated += 1;
            }
            let deliver_tick = tick + 1 + self.options.latency.sample(&mut self.prng);
            let mut bytes = self.buffers_free.pop().unwrap_or_default();
            bytes.clear();
            bytes.extend_from_slice(message.bytes());
            self.sequence += 1;
            let sequence = self.sequence;
            self.queue.push(Packet { deliver_tick, sequence, from, to, bytes });
        }
    }

    /// Puts one more copy of `message` on the wire from `from` to `to`, delivered
    /// `delay_ticks` later than a normal copy would be: a late duplicate, as a retransmission
    /// stuck in a slow path delivers it, after its sender may have given up on it.
    pub fn send_late(
        &mut self,
        trace: &mut Trace,
        tick: u64,
        from: NodeIndex,
        to: NodeIndex,
        message: &Message,
        delay_ticks: u64,
    ) {
        assert_ne!(from, to);
        let checksum = message.header().checksum.get() as u64;
        trace.record(Event::Send, &[tick, from as u64, to as u64, checksum]);
        if !self.link_up(from, to, tick) {
            return self.drop_traced(trace, tick, to, checksum, DropReason::Partition);
        }
        if self.queue.len() >= self.options.packets_max {
            return self.drop_traced(trace, tick, to, checksum, DropReason::Capacity);
        }
        self.metrics.late += 1;
        let deliver_tick = tick + 1 + self.options.latency.sample(&mut self.prng) + delay_ticks;
        let mut bytes = self.buffers_free.pop().unwrap_or_default();
        bytes.clear();
        bytes.extend_from_slice(message.bytes());
        self.sequence += 1;
        let sequence = self.sequence;
        self.queue.push(Packet { deliver_tick, sequence, from, to, bytes });
    }

    /// The next packet due at `tick`, if any. Packets whose link was cut while they were in
    /// flight are dropped on the way.
    pub fn poll_delivery(&mut self, trace: &mut Trace, tick: u64) -> Option<Packet> {
        loop {
            let due = self.queue.peek().is_some_and(|packet| packet.deliver_tick <= tick);
            if !due {
                return None;
            }
            let packet = self.queue.pop().expect("peeked");
            if self.link_up(packet.from, packet.to, tick) {
                return Some(packet);
            }
            let checksum = packet.checksum();
            let to = packet.to;
            self.packet_release(packet);
            self.drop_traced(trace, tick, to, checksum, DropReason::Partition);
        }
    }

    /// Copies `packet` into a buffer of the receiver's `pool` (a small one if `small` and it
    /// fits, as a replica's bus receives a client's messages), or drops it if the pool has none
    /// free.
    pub fn packet_into_message(
        &mut self,
        trace: &mut Trace,
        tick: u64,
        packet: Packet,
        pool: &MessagePool,
        small: bool,
    ) -> Option<Message> {
        assert!(packet.bytes.len() <= pool.buffer_size());
        let small = small && packet.bytes.len() <= pool.small_size();
        let message = if small { pool.try_get_small() } else { pool.try_get() };
        let Some(mut message) = message else {
            let (to, checksum) = (packet.to, packet.checksum());
            self.packet_release(packet);
            self.drop_traced(trace, tick, to, checksum, DropReason::PoolExhausted);
            return None;
        };
        message.buffer_mut_unique()[..packet.bytes.len()].copy_from_slice(&packet.bytes);
        self.metrics.delivered += 1;
        let fields = [tick, packet.from as u64, packet.to as u64, packet.checksum()];
        trace.record(Event::Deliver, &fields);
        self.packet_release(packet);
        Some(message)
    }

    /// Drops a delivered packet that its receiver cannot take.
    pub fn packet_drop(
        &mut self,
        trace: &mut Trace,
        tick: u64,
        packet: Packet,
        reason: DropReason,
    ) {
        let (to, checksum) = (packet.to, packet.checksum());
        self.packet_release(packet);
        self.drop_traced(trace, tick, to, checksum, reason);
    }

    fn packet_release(&mut self, packet: Packet) {
        self.buffers_free.push(packet.bytes);
    }

    fn drop_traced(
        &mut self,
        trace: &mut Trace,
        tick: u64,
        to: NodeIndex,
        checksum: u64,
        reason: DropReason,
    ) {
        let counter = match reason {
            DropReason::Loss => &mut self.metrics.lost,
            DropReason::Partition => &mut self.metrics.dropped_partition,
            DropReason::Capacity => &mut self.metrics.dropped_capacity,
            DropReason::PoolExhausted => &mut self.metrics.dropped_pool_exhausted,
            DropReason::Rejected => &mut self.metrics.dropped_rejected,
            DropReason::ReceiverDown => &mut self.metrics.dropped_receiver_down,
        };
        *counter += 1;
        trace.record(Event::Drop, &[tick, to as u64, checksum, reason as u64]);
    }

    /// Cuts the direction `from` → `to` until `until_tick` (it heals by itself then).
    pub fn link_cut(&mut self, from: NodeIndex, to: NodeIndex, until_tick: u64) {
        assert_ne!(from, to);
        let index = self.link_index(from, to);
        self.links_cut_until[index] = self.links_cut_until[index].max(until_tick);
    }

    pub fn link_up(&self, from: NodeIndex, to: NodeIndex, tick: u64) -> bool {
        self.links_cut_until[self.link_index(from, to)] <= tick
    }

    /// Heals the direction `from` → `to` now.
    #[cfg(test)]
    pub(crate) fn link_heal(&mut self, from: NodeIndex, to: NodeIndex) {
        let index = self.link_index(from, to);
        self.links_cut_until[index] = 0;
    }

    /// Heals every link now.
    pub fn heal_all(&mut self) {
        self.links_cut_until.fill(0);
    }

    /// Links cut at `tick`.
    pub fn links_cut_count(&self, tick: u64) -> usize {
        self.links_cut_until.iter().filter(|until| **until > tick).count()
    }

    fn link_index(&self, from: NodeIndex, to: NodeIndex) -> usize {
        let node_count = self.options.node_count;
        assert!(from < node_count && to < node_count);
        from * node_count + to
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::SECTOR_SIZE;
    use crate::vsr::header::ClientId;
    use crate::vsr::header::ClusterId;
    use crate::vsr::header::Command;

    fn options(latency: Latency) -> NetworkOptions {
        NetworkOptions {
            node_count: 3,
            latency,
            loss_per_mille: 0,
            duplicate_per_mille: 0,
            packets_max: 1024,
        }
    }

    /// A ping-client message whose timestamp names it.
    fn message(pool: &MessagePool, name: u64) -> Message {
        let mut message = pool.get();
        let header = message.header_mut();
        *header = Header::new(Command::PingClient, ClusterId(1));
        header.client = ClientId(1);
        header.timestamp = name;
        header.set_checksum_body(&[]);
        header.set_checksum();
        message
    }

    /// Runs the network until it is empty; returns (tick, name) of each delivery.
    fn deliver_all(network: &mut Network, pool: &MessagePool) -> Vec<(u64, u64)> {
        let mut trace = Trace::new();
        let mut delivered = Vec::new();
        for tick in 0..1000 {
            while let Some(packet) = network.poll_delivery(&mut trace, tick) {
                let message = network.packet_into_message(&mut trace, tick, packet, pool, false);
                delivered.push((tick, message.unwrap().header().timestamp));
            }
        }
        assert_eq!(network.in_flight(), 0);
        delivered
    }

    #[test]
    fn latency_reorders_deterministically() {
        // Goal: messages arrive within the latency bounds, some out of order, and a seed
        // always gives the same order.
        let pool = MessagePool::new(4, SECTOR_SIZE);
        let latency = Latency { min_ticks: 1, mean_ticks: 10 };
        let run = |seed: u64| {
            let mut network = Network::new(options(latency), seed);
            let mut trace = Trace::new();
            for name in 0..100 {
                network.send(&mut trace, 0, 0, 1, &message(&pool, name));
            }
            deliver_all(&mut network, &pool)
        };
        let first = run(5);
        assert_eq!(first, run(5));
        assert_ne!(first, run(6));
        assert_eq!(first.len(), 100);
        assert!(first.iter().all(|(tick, _)| (2..=20).contains(tick)));
        assert!(first.windows(2).any(|pair| pair[0].1 > pair[1].1), "no reordering");
    }

    #[test]
    fn loss_and_duplication_follow_their_rates() {
        // Goal: loss drops about its share of messages, duplication adds about its share.
        let pool = MessagePool::new(4, SECTOR_SIZE);
        let mut network = Network::new(
            NetworkOptions {
                loss_per_mille: 200,
                duplicate_per_mille: 100,
                packets_max: 4096,
                ..options(Latency::ZERO)
            },
            9,
        );
        let mut trace = Trace::new();
        for name in 0..2000 {
            network.send(&mut trace, 0, 0, 1, &message(&pool, name));
        }
        let delivered = deliver_all(&mut network, &pool).len() as u64;
        let metrics = network.metrics();
        assert!((300..500).contains(&metrics.lost), "{metrics:?}");
        assert!((100..220).contains(&metrics.duplicated), "{metrics:?}");
        assert_eq!(delivered, 2000 - metrics.lost + metrics.duplicated);
    }

    #[test]
    fn partition_cuts_one_direction_until_it_heals() {
        // Goal: a cut link drops in one direction only, including packets already in flight,
        // and carries messages again after its heal tick.
        let pool = MessagePool::new(4, SECTOR_SIZE);
        let mut network = Network::new(options(Latency { min_ticks: 5, mean_ticks: 5 }), 1);
        let mut trace = Trace::new();
        network.send(&mut trace, 0, 0, 1, &message(&pool, 1));
        network.link_cut(0, 1, 10);
        network.send(&mut trace, 0, 0, 1, &message(&pool, 2));
        network.send(&mut trace, 0, 1, 0, &message(&pool, 3));
        network.send(&mut trace, 10, 0, 1, &message(&pool, 4));
        let delivered: Vec<u64> =
            deliver_all(&mut network, &pool).into_iter().map(|(_, name)| name).collect();
        assert_eq!(delivered, vec![3, 4]);
        assert_eq!(network.metrics().dropped_partition, 2);
    }

    #[test]
    fn exhausted_receiver_pool_drops_the_message() {
        // Goal: delivery takes a buffer from the receiver's pool, and drops (counted) when
        // there is none.
        let sender = MessagePool::new(1, SECTOR_SIZE);
        let receiver = MessagePool::new(1, SECTOR_SIZE);
        let mut network = Network::new(options(Latency::ZERO), 1);
        let mut trace = Trace::new();
        network.send(&mut trace, 0, 0, 1, &message(&sender, 1));
        network.send(&mut trace, 0, 0, 1, &message(&sender, 2));
        let held = receiver.get();
        let packet = network.poll_delivery(&mut trace, 1).unwrap();
        assert!(network.packet_into_message(&mut trace, 1, packet, &receiver, false).is_none());
        drop(held);
        let packet = network.poll_delivery(&mut trace, 1).unwrap();
        let message = network.packet_into_message(&mut trace, 1, packet, &receiver, false).unwrap();
        assert_eq!(message.header().timestamp, 2);
        assert_eq!(network.metrics().dropped_pool_exhausted, 1);
        assert_eq!(sender.free_count(), 1);
    }
}
