//! A whole cluster in one thread: N replicas, each with its own in-memory data file and message
//! pool, M simulated clients, and the simulated network between them, all driven through
//! exactly the calls the io_uring driver makes (`open`, `on_storage_completion`, `on_message`,
//! `on_tick`, `poll_send`).
//!
//! One step advances time by one tick: deliver the messages due, complete the disk I/O due,
//! tick every replica, let the clients send, inject faults, then run the checker. Every random
//! choice comes from PRNGs seeded from the run's seed, so a seed replays the same run.
//!
//! The faults: network loss, delay, duplication and reordering (always on), and late
//! duplicates of messages to clients (after the client moved on to its next request); directional
//! partitions of replica and client links that heal by themselves; and crashes: a replica (the
//! primary too, when the run draws primary crashes) loses or tears its writes in flight and
//! restarts from its disk after a while (1 in 16 backups only after 2,000 to 6,000 ticks, long
//! enough for its peers to checkpoint twice past it and reuse its checkpoint's blocks), in a
//! replicated cluster possibly with a rotten or misdirected WAL sector, and possibly with a grid
//! block (below its durable grid head; half the time one of its checkpoint's) rotten or
//! misdirected, never on two replicas for the same block at once; half the crashes go to a
//! replica in the middle of a view change when there is one.
//! Partitions also isolate the primary. At most `f` replicas are failed at once (at least one,
//! so a cluster of one or two still crashes): down, still opening, or holding WAL entries found
//! faulty that a peer's log has not replaced yet. The run's fault phase is followed by a
//! liveness phase: every link heals, every replica restarts, clients start no new requests, and the
//! cluster must converge within a tick budget: every damaged grid block that a checkpoint
//! still uses repaired, and replicas that checkpointed the same op holding the same free list
//! and the same grid bytes below it (but in free blocks).

use crate::constants::{
    BLOCK_SIZE, HEADER_SIZE, SECTOR_SIZE, SUPERBLOCK_COPIES, SUPERBLOCK_COPY_SIZE,
    SUPERBLOCK_HEADER_SIZE, TICK_MS,
};
use crate::sim::checker::{Checker, PackedMember, Violation};
use crate::sim::mutation::{Mutation, mutate, mutate_client};
use crate::sim::network::{DropReason, Network, NetworkOptions, NodeIndex, Packet};
use crate::sim::storage::{CacheMetrics, Latency, MemoryStorage};
use crate::sim::trace::{Event, Trace};
use crate::sim::workload::{ReplyRecord, Workload, WorkloadMetrics, WorkloadOptions};
use crate::state_machine::block::block_checksum;
use crate::state_machine::grid_block_invalid;
use crate::state_machine::types::{PackedRequest, packed_split};
use crate::stdx::allocation_guard;
use crate::stdx::prng::Prng;
use crate::vsr::accept::{accept, accept_bytes};
use crate::vsr::format::fill_range;
use crate::vsr::header::{Checksum, ClientId, ClusterId, Header};
use crate::vsr::header::{Command, Op, ReplicaIndex, View};
use crate::vsr::layout::{Config, Layout, Zone};
use crate::vsr::message_pool::{Message, MessagePool, replica_pool};
use crate::vsr::replica::{Destination, Metrics, Replica, Status};
use crate::vsr::storage::{Completion, Storage};
use crate::vsr::superblock::SuperBlockHeader;
use zerocopy::{FromBytes, IntoBytes};

/// The simulated wall clock at tick 0 (prepare timestamps count from here).
const REALTIME_START_NS: u64 = 1_700_000_000_000_000_000;
/// Messages between replicas kept for replays (`Mutation::Replay`).
const REPLAYABLE_MAX: usize = 64;
/// Storage completions a replica handles in one tick before time must move on: a bound on
/// chains of zero-latency I/O.
const COMPLETION_ROUNDS_MAX: usize = 64;
const COMPLETIONS_MAX: usize = 256;
/// Ticks between checks of which damaged grid blocks were repaired.
const GRID_FAULTS_PRUNE_TICKS: u64 = 64;

/// The volatile write cache of each simulated disk: a few grid blocks' worth.
const DISK_CACHE_SIZE: usize = 8 * BLOCK_SIZE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultOptions {
    /// Mean ticks between replica crashes (0: none).
    pub crash_interval_mean_ticks: u64,
    pub crash_down_ticks_min: u64,
    pub crash_down_ticks_max: u64,
    /// Whether a crash tears the writes in flight (else it loses them whole).
    pub crash_torn_writes: bool,
    /// Whether the primary of the newest view may crash too (else only backups do).
    pub crash_primary: bool,
    /// Mean ticks between new partitions (0: none).
    pub partition_interval_mean_ticks: u64,
    pub partition_ticks_min: u64,
    pub partition_ticks_max: u64,
    /// Mean ticks between slow-disk spells (0: none): one replica's disk completes nothing
    /// for up to `slow_disk_ticks_max` ticks, long enough for a view change to land inside
    /// its superblock update or state sync. A replica in one of those is chosen when there is.
    pub slow_disk_interval_mean_ticks: u64,
    pub slow_disk_ticks_max: u64,
    /// Mean ticks between pauses (0: none): one running replica processes nothing (no
    /// message, disk completion or tick) for up to `pause_ticks_max` ticks, as a process the
    /// machine does not schedule for a while, then meets everything that arrived meanwhile at
    /// once. Under load, a backup must come back into the log without state sync.
    pub pause_interval_mean_ticks: u64,
    pub pause_ticks_max: u64,
    /// Whether a crash may leave a sector of the client_replies zone unreadable (EIO until it
    /// is written again): the replica opens without the replies it held. Set only in some
    /// seeds, for it turns off the workload's check that no session is ever evicted while the
    /// table never filled.
    pub replies_unreadable: bool,
    /// A grid larger than the cluster's (0: none): a replica that loses its data file is then
    /// formatted with it, and crashed replicas lose theirs more often, so that the replicas
    /// are replaced one by one with larger files, as operators grow a grid
    /// (`docs/operating.md`), and the cluster's grid grows once all are.
    pub grid_grow_size: u64,
}

impl FaultOptions {
    pub const NONE: FaultOptions = FaultOptions {
        crash_interval_mean_ticks: 0,
        crash_down_ticks_min: 0,
        crash_down_ticks_max: 0,
        crash_torn_writes: false,
        crash_primary: false,
        partition_interval_mean_ticks: 0,
        partition_ticks_min: 0,
        partition_ticks_max: 0,
        slow_disk_interval_mean_ticks: 0,
        slow_disk_ticks_max: 0,
        pause_interval_mean_ticks: 0,
        pause_ticks_max: 0,
        replies_unreadable: false,
        grid_grow_size: 0,
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterOptions {
    pub seed: u64,
    /// Every replica's configuration but its index (`config.replica` is ignored).
    pub config: Config,
    pub client_count: usize,
    pub storage_latency: Latency,
    pub network_latency: Latency,
    pub loss_per_mille: u64,
    pub duplicate_per_mille: u64,
    /// Messages between replicas turned into ones a correct replica must reject
    /// (`sim::mutation`).
    pub mutation_per_mille: u64,
    /// Messages to clients that also arrive once more, late (one to three request timeouts
    /// after the first copy): the client has moved on to a later request by then.
    pub reply_late_per_mille: u64,
    pub request_timeout_ticks: u64,
    /// Ticks a client waits, at most, between a reply and its next request.
    pub think_ticks_max: u64,
    /// The longest a client's read asks a replica to hold it for events (0: never).
    pub read_wait_ticks_max: u64,
    /// Half the clients' reads are linearizable (and checked to be).
    pub read_linearizable: bool,
    pub events_per_append_max: u32,
    pub event_size_max: u32,
    pub faults: FaultOptions,
    /// Ticks with faults, then at most `ticks_convergence_max` for the cluster to converge.
    pub ticks_faults: u64,
    pub ticks_convergence_max: u64,
}

impl ClusterOptions {
    /// A small configuration that keeps data files and pools small: 16 KiB messages, a 16 MiB
    /// grid, and 64 WAL slots (a checkpoint every 48 ops) for a single replica. A replicated
    /// cluster gets 512 slots, so that most catch-ups go through log repair and some, after
    /// long crashes or partitions, through state sync.
    pub fn config_small(replica_count: u8, clients_max: u32) -> Config {
        let journal_slot_count = if replica_count == 1 { 64 } else { 512 };
        Config {
            journal_slot_count,
            message_size_max: 16 * 1024,
            clients_max,
            grid_size: 16 * 1024 * 1024,
            streams_max: 64,
            ..Config::small(ClusterId(7), ReplicaIndex(0), replica_count)
        }
    }
}

/// A fault the run injected, for the log a failure prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Crash {
        tick: u64,
        replica: usize,
        torn: bool,
        restart_tick: u64,
    },
    Restart {
        tick: u64,
        replica: usize,
    },
    /// The crashed replica's data file is lost and formatted again with `--rejoin`.
    Rejoin {
        tick: u64,
        replica: usize,
    },
    /// Replica `replica`'s disk completes nothing until `until_tick`.
    SlowDisk {
        tick: u64,
        replica: usize,
        until_tick: u64,
    },
    /// Replica `replica` processes nothing until `until_tick`.
    Pause {
        tick: u64,
        replica: usize,
        until_tick: u64,
    },
    /// The links between `node` and `peer` (every other replica if `None`) cut until
    /// `until_tick`.
    Partition {
        tick: u64,
        node: Node,
        peer: Option<Node>,
        direction: LinkDirection,
        until_tick: u64,
    },
}

impl std::fmt::Display for Fault {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Fault::Crash { tick, replica, torn, restart_tick } => {
                let writes = if torn { "torn" } else { "lost" };
                write!(
                    formatter,
                    "tick {tick}: replica {replica} crashes (writes in flight {writes}), \
                     restarts at tick {restart_tick}"
                )
            }
            Fault::Restart { tick, replica } => {
                write!(formatter, "tick {tick}: replica {replica} restarts from its disk")
            }
            Fault::Rejoin { tick, replica } => {
                write!(formatter, "tick {tick}: replica {replica} loses its data file (rejoin)")
            }
            Fault::SlowDisk { tick, replica, until_tick } => write!(
                formatter,
                "tick {tick}: replica {replica}'s disk stalls until tick {until_tick}"
            ),
            Fault::Pause { tick, replica, until_tick } => write!(
                formatter,
                "tick {tick}: replica {replica} pauses (processes nothing) until tick {until_tick}"
            ),
            Fault::Partition { tick, node, peer, direction, until_tick } => {
                let arrow = match direction {
                    LinkDirection::Both => "<->",
                    LinkDirection::Outgoing => "->",
                    LinkDirection::Incoming => "<-",
                };
                write!(formatter, "tick {tick}: partition {node} {arrow} ")?;
                match peer {
                    Some(peer) => write!(formatter, "{peer}")?,
                    None => write!(formatter, "every other replica")?,
                }
                write!(formatter, " until tick {until_tick}")
            }
        }
    }
}

/// Which way a partition cuts the links of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkDirection {
    Both,
    /// What the node sends is lost; it still hears the others.
    Outgoing,
    /// What is sent to the node is lost.
    Incoming,
}

/// A node of the network, named for the fault log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    Replica(usize),
    Client(usize),
}

impl std::fmt::Display for Node {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Replica(index) => write!(formatter, "replica {index}"),
            Node::Client(index) => write!(formatter, "client {index}"),
        }
    }
}

crate::vsr::counters::counters! {
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterMetrics {
    pub crashes: u64,
    pub restarts: u64,
    pub partitions: u64,
    pub sectors_torn_landed: u64,
    /// WAL sectors rotted on crashed replicas.
    pub sectors_corrupted: u64,
    /// Sectors of client_replies zones left unreadable by a crash (`replies_unreadable`).
    pub sectors_unreadable: u64,
    /// WAL sectors overwritten with another sector's bytes, as a misdirected write leaves them.
    pub sectors_misdirected: u64,
    /// Messages mutated on their way between replicas.
    pub mutations: u64,
    /// Crashed replicas whose data file was lost and formatted again with `--rejoin`.
    pub rejoins: u64,
    pub slow_disk_spells: u64,
    /// Pauses of a running replica, and the messages held for it meanwhile.
    pub pauses: u64,
    pub messages_held_by_pauses: u64,
    /// Spells that began while the replica was in a superblock update or a state sync.
    pub slow_disk_spells_during_superblock_update: u64,
    /// Grid blocks of crashed replicas rotted (a flipped bit in one sector) or overwritten with
    /// another block's bytes (a misdirected write), below their durable grid head.
    pub grid_blocks_corrupted: u64,
    pub grid_blocks_misdirected: u64,
    /// Crashes of the primary whose process came back within 20 ticks, inside its view.
    pub primary_quick_restarts: u64,
    /// Backups kept down long enough for their peers to checkpoint past them twice (and reuse
    /// the blocks of their checkpoint).
    pub crash_long_outages: u64,
    /// Rotten or misdirected blocks that were one of the crashed replica's checkpoint's.
    pub grid_checkpoint_blocks_damaged: u64,
    /// Rejoins with a data file larger than the replica's before (`grid_grow_size`).
    pub grid_grows: u64,
    /// Clients' reads whose body was replaced with random bytes (`Mutation::ClientReadGarbled`).
    pub client_reads_garbled: u64,
}
}

struct ReplicaNode {
    config: Config,
    storage: MemoryStorage,
    pool: MessagePool,
    /// `None` while crashed.
    replica: Option<Replica>,
    restart_tick: u64,
    /// Paused (see `FaultOptions::pause_interval_mean_ticks`) while the tick is below this.
    paused_until: u64,
    /// A WAL sector was damaged while it was down (until it restarts, when its journal says).
    wal_damaged: bool,
    /// While it is down or opening: its superblock says it lost its log (its data file was
    /// lost, or it went down before its superblock said it held the cluster's log again).
    log_lost_down: bool,
    /// Heap allocations the replica made in calls after it opened (static allocation says 0).
    allocations: u64,
    /// The blocks of its durable checkpoint and their checksums, as they were when it became
    /// durable: none may change until the next one is (`check_checkpoint_blocks`).
    checkpoint_blocks: (Op, Vec<(u64, Checksum)>),
    /// State sync installed (or began to install) a checkpoint since `checkpoint_blocks` was
    /// recorded, in this run of the replica or one before a crash.
    sync_installed: bool,
}

impl ReplicaNode {
    /// Its WAL has (or may have) faulty entries not yet replaced by a primary's log.
    fn wal_faulty(&self) -> bool {
        self.wal_damaged
            || self.replica.as_ref().is_some_and(|replica| {
                replica.journal_faulty() || (replica.log_faulty() && !replica.log_lost_pending())
            })
    }

    fn log_lost_pending(&self) -> bool {
        match &self.replica {
            None => self.log_lost_down,
            Some(replica) => {
                replica.log_lost_pending()
                    || (replica.status() == Status::Recovering && self.log_lost_down)
            }
        }
    }
}

pub struct Cluster {
    options: ClusterOptions,
    tick: u64,
    prng: Prng,
    replicas: Vec<ReplicaNode>,
    network: Network,
    workload: Workload,
    checker: Checker,
    trace: Trace,
    faulting: bool,
    completions: Vec<Completion>,
    client_sends: Vec<(usize, ReplicaIndex, Message)>,
    replies: Vec<ReplyRecord>,
    acknowledged_checked: usize,
    faults: Vec<Fault>,
    /// Each replica's clock: a fixed offset and a drift per tick (nanoseconds, signed), so no
    /// two replicas agree on the time (prepare timestamps must stay monotonic regardless).
    clocks: Vec<(i64, i64)>,
    /// The first message a replica addressed to no node (itself, or an unknown client).
    misaddressed_first: Option<(usize, Destination)>,
    metrics: ClusterMetrics,
    /// The metrics of replicas that crashed (a restart starts from zero): with the running
    /// replicas', what the run's replicas did, for the coverage report.
    replica_metrics_retired: Metrics,
    /// Recent messages between replicas, for replays.
    replayable: Vec<Vec<u8>>,
    /// Messages that arrived for a paused replica, delivered in order when it resumes.
    held: Vec<Packet>,
    /// Grid blocks the run damaged, as (replica, address), until found sound again: at most
    /// one replica holds a damaged copy of a block at a time.
    grid_faults: Vec<(usize, u64)>,
    /// Whether a crash may damage the crashed replica's WAL or grid (always, but in tests
    /// that stop a replica cleanly).
    crash_damages: bool,
    /// What replicas sent to `CLIENT_OUTSIDE`, in order, until taken.
    #[cfg(test)]
    outside_replies: Vec<Vec<u8>>,
}

/// A client that is not one of the workload's: a test sends its requests with
/// `message_deliver` and takes the answers with `outside_replies_take`.
#[cfg(test)]
pub(crate) const CLIENT_OUTSIDE: crate::vsr::header::ClientId =
    crate::vsr::header::ClientId(u64::MAX - 7);

/// Seeds for the run's independent PRNGs, all derived from the run's seed.
fn seed_derive(seed: u64, purpose: u64) -> u64 {
    Prng::new(seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64()
}

impl Cluster {
    pub fn new(options: ClusterOptions) -> Cluster {
        let replica_count = options.config.replica_count;
        assert!(options.config.invalid().is_none());
        assert!(options.client_count > 0);
        let replicas = (0..replica_count)
            .map(|replica| replica_node(&options, ReplicaIndex(replica)))
            .collect();
        let network = Network::new(
            NetworkOptions {
                node_count: usize::from(replica_count) + options.client_count,
                latency: options.network_latency,
                loss_per_mille: options.loss_per_mille,
                duplicate_per_mille: options.duplicate_per_mille,
                packets_max: 4096,
            },
            seed_derive(options.seed, 1),
        );
        let workload = Workload::new(
            WorkloadOptions {
                client_count: options.client_count,
                replica_count,
                cluster: options.config.cluster,
                message_size_max: options.config.message_size_max as usize,
                request_timeout_ticks: options.request_timeout_ticks,
                think_ticks_max: options.think_ticks_max,
                read_wait_ticks_max: options.read_wait_ticks_max,
                read_linearizable: options.read_linearizable,
                events_per_append_max: options.events_per_append_max,
                event_size_max: options.event_size_max,
                clients_max: options.config.clients_max,
            },
            seed_derive(options.seed, 2),
        );
        let mut cluster = Cluster {
            options,
            tick: 0,
            prng: Prng::new(seed_derive(options.seed, 3)),
            replicas,
            network,
            workload,
            checker: Checker::new(options.config.cluster, usize::from(replica_count)),
            trace: Trace::new(),
            faulting: true,
            completions: Vec::with_capacity(COMPLETIONS_MAX),
            client_sends: Vec::new(),
            replies: Vec::new(),
            acknowledged_checked: 0,
            faults: Vec::new(),
            clocks: Vec::new(),
            misaddressed_first: None,
            replayable: Vec::with_capacity(REPLAYABLE_MAX),
            held: Vec::new(),
            metrics: ClusterMetrics::default(),
            replica_metrics_retired: Metrics::default(),
            grid_faults: Vec::new(),
            crash_damages: true,
            #[cfg(test)]
            outside_replies: Vec::new(),
        };
        let mut clock_prng = Prng::new(seed_derive(options.seed, 4));
        for _ in 0..replica_count {
            let offset_ns = (clock_prng.next_u64() % 10_000_000_000) as i64 - 5_000_000_000;
            let drift_ns_per_tick = (clock_prng.next_u64() % 200_001) as i64 - 100_000;
            cluster.clocks.push((offset_ns, drift_ns_per_tick));
        }
        for index in 0..usize::from(replica_count) {
            cluster.replica_start(index);
        }
        cluster
    }

    pub fn tick(&self) -> u64 {
        self.tick
    }

    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    pub fn metrics(&self) -> ClusterMetrics {
        self.metrics
    }

    /// Every crash, restart and partition so far, in order.
    pub fn faults(&self) -> &[Fault] {
        &self.faults
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    pub fn checker(&self) -> &Checker {
        &self.checker
    }

    /// The replica at `index`, unless it is crashed.
    pub fn replica(&self, index: usize) -> Option<&Replica> {
        self.replicas[index].replica.as_ref()
    }

    pub fn replica_count(&self) -> usize {
        self.replicas.len()
    }

    /// A test damaged grid block `address` of replica `index`: the checks treat it as the
    /// run's own damage (to be repaired, not an overwrite).
    #[cfg(test)]
    pub(crate) fn grid_damage_note(&mut self, index: usize, address: u64) {
        if !self.grid_faults.contains(&(index, address)) {
            self.grid_faults.push((index, address));
        }
    }

    /// Replica `index`'s data file, for tests that look at it.
    pub fn storage(&self, index: usize) -> &MemoryStorage {
        &self.replicas[index].storage
    }

    /// Replica `index`'s data file, for tests that damage it beyond the fault model.
    pub fn storage_mut(&mut self, index: usize) -> &mut MemoryStorage {
        &mut self.replicas[index].storage
    }

    /// Delivers `bytes` (a whole message, checksummed) to running replica `index`, as if from
    /// the network, and moves what it sends in answer onto the network; for tests that craft
    /// a message no correct peer would send at that moment.
    #[cfg(test)]
    pub(crate) fn message_deliver(&mut self, index: usize, bytes: &[u8]) {
        let node = &mut self.replicas[index];
        let replica = node.replica.as_mut().expect("running");
        let mut message = node.pool.get();
        message.buffer_mut_unique()[..bytes.len()].copy_from_slice(bytes);
        let config = &self.options.config;
        let accepted = accept(message, config.cluster, config.message_size_max as usize);
        replica.on_message(&mut node.storage, accepted.expect("a valid message"));
        self.outbox_drain(index);
    }

    /// What replicas sent to `CLIENT_OUTSIDE` since the last call.
    #[cfg(test)]
    pub(crate) fn outside_replies_take(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.outside_replies)
    }

    /// Running replica `index`, for tests that call into it directly.
    #[cfg(test)]
    pub(crate) fn replica_mut(&mut self, index: usize) -> &mut Replica {
        self.replicas[index].replica.as_mut().expect("running")
    }

    /// Runs the fault phase, then the liveness phase.
    pub fn run(&mut self) -> Result<(), Violation> {
        while self.tick < self.options.ticks_faults {
            self.step()?;
        }
        self.faults_stop();
        let deadline = self.tick + self.options.ticks_convergence_max;
        while self.tick < deadline {
            self.step()?;
            if self.convergence_gap().is_none() {
                return self.grids_check();
            }
        }
        let reason = self.convergence_gap().expect("not converged");
        Err(Violation::Liveness { reason: format!("after {} ticks: {reason}", self.tick) })
    }

    /// Advances the simulation by one tick, then checks it.
    pub fn step(&mut self) -> Result<(), Violation> {
        self.tick += 1;
        self.trace.record(Event::Tick, &[self.tick]);
        self.network_deliver();
        for index in 0..self.replicas.len() {
            self.storage_complete(index);
        }
        for index in 0..self.replicas.len() {
            self.replica_tick(index);
        }
        self.clients_tick();
        if self.faulting {
            self.faults_inject();
        }
        self.restarts_due();
        if self.tick.is_multiple_of(GRID_FAULTS_PRUNE_TICKS) {
            self.grid_faults_prune();
        }
        self.check()
    }

    fn realtime_ns(&self) -> u64 {
        REALTIME_START_NS + self.tick * TICK_MS * 1_000_000
    }
}

/// Formats replica `replica`'s data file in memory and gives it its pool.
fn replica_node(options: &ClusterOptions, replica: ReplicaIndex) -> ReplicaNode {
    let config = Config { replica, ..options.config };
    let layout = Layout::new(&config);
    let mut storage = MemoryStorage::new(layout.file_size());
    // `format` writes these bytes; the grid is all zero, which a new disk already is.
    let grid_offset = layout.zone_offset(Zone::Grid) as usize;
    fill_range(&config, 0, &mut storage.bytes_mut()[..grid_offset]);
    let seed = seed_derive(options.seed, 100 + u64::from(replica.get()));
    storage.shuffle_completions(seed);
    storage.set_latency(options.storage_latency, seed_derive(seed, 1));
    // A volatile write cache that holds several grid blocks and every session's reply: what
    // was written cached and not yet synced may be lost at a crash.
    storage.cache_model(DISK_CACHE_SIZE);
    let pool = replica_pool(config.message_size_max as usize, config.clients_max as usize);
    ReplicaNode {
        config,
        storage,
        pool,
        replica: None,
        restart_tick: 0,
        paused_until: 0,
        wal_damaged: false,
        log_lost_down: false,
        allocations: 0,
        checkpoint_blocks: (Op(0), Vec::new()),
        sync_installed: false,
    }
}

/// Delivery: the network, the disks, ticks.
impl Cluster {
    fn network_deliver(&mut self) {
        let replica_count = self.replicas.len();
        if !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            for packet in held {
                if self.paused(packet.to) {
                    self.held.push(packet);
                } else {
                    self.replica_deliver(packet);
                }
            }
        }
        while let Some(packet) = self.network.poll_delivery(&mut self.trace, self.tick) {
            if packet.to < replica_count && self.paused(packet.to) {
                self.metrics.messages_held_by_pauses += 1;
                self.held.push(packet);
            } else if packet.to < replica_count {
                self.replica_deliver(packet);
            } else {
                self.client_deliver(packet);
            }
        }
    }

    fn replica_deliver(&mut self, mut packet: Packet) {
        let index = packet.to;
        let replica_count = self.replicas.len();
        let node = &mut self.replicas[index];
        let Some(replica) = node.replica.as_mut() else {
            let reason = DropReason::ReceiverDown;
            return self.network.packet_drop(&mut self.trace, self.tick, packet, reason);
        };
        let mutation_per_mille = self.options.mutation_per_mille;
        if packet.from < replica_count && mutation_per_mille > 0 {
            if self.replayable.len() < REPLAYABLE_MAX {
                self.replayable.push(packet.bytes.clone());
            } else {
                let slot = self.prng.index(REPLAYABLE_MAX);
                self.replayable[slot].clone_from(&packet.bytes);
            }
            let mutation = if !self.prng.chance(mutation_per_mille, 1000) {
                None
            } else if self.prng.chance(1, 5) {
                // A genuine older message, delivered again instead.
                let old = &self.replayable[self.prng.index(self.replayable.len())];
                packet.bytes.clone_from(old);
                Some(Mutation::Replay)
            } else {
                mutate(&mut self.prng, &mut packet.bytes, replica)
            };
            if let Some(mutation) = mutation {
                self.metrics.mutations += 1;
                let fields = [self.tick, packet.from as u64, index as u64, mutation as u64];
                self.trace.record(Event::Mutate, &fields);
            }
        } else if mutation_per_mille > 0
            && self.prng.chance(mutation_per_mille, 1000)
            && mutate_client(&mut self.prng, &mut packet.bytes).is_some()
        {
            self.metrics.client_reads_garbled += 1;
            let mutation = Mutation::ClientReadGarbled as u64;
            self.trace
                .record(Event::Mutate, &[self.tick, packet.from as u64, index as u64, mutation]);
        }
        let (cluster, message_size_max) = (node.config.cluster, node.config.message_size_max);
        if accept_bytes(&packet.bytes, cluster, message_size_max as usize).is_err() {
            let reason = DropReason::Rejected;
            return self.network.packet_drop(&mut self.trace, self.tick, packet, reason);
        }
        let pool = &node.pool;
        let tick = self.tick;
        // As the bus receives: a client's message into a small buffer, a replica's into a
        // full-size one.
        let small = packet.from >= usize::from(node.config.replica_count);
        let message = self.network.packet_into_message(&mut self.trace, tick, packet, pool, small);
        if let Some(message) = message {
            let accepted = accept(message, cluster, message_size_max as usize)
                .expect("the bytes accept_bytes let through");
            let armed = replica.status().is_open();
            allocations_counted(armed, &mut node.allocations, || {
                replica.on_message(&mut node.storage, accepted)
            });
            self.outbox_drain(index);
        }
    }

    fn client_deliver(&mut self, packet: Packet) {
        let client = packet.to - self.replicas.len();
        let pool = self.workload.client_pool(client).clone();
        let tick = self.tick;
        let Some(message) =
            self.network.packet_into_message(&mut self.trace, tick, packet, &pool, false)
        else {
            return;
        };
        let header = *message.header();
        if self.workload.on_message(client, tick, &message) {
            let event = match header.command() {
                Some(Command::Eviction) => Event::Eviction,
                _ => Event::Reply,
            };
            let fields = [tick, client as u64, header.client.get(), u64::from(header.request)];
            self.trace.record(event, &fields);
        }
    }

    /// Whether replica `index` is paused now.
    fn paused(&self, index: usize) -> bool {
        self.replicas[index].paused_until > self.tick
    }

    /// Completes replica `index`'s disk operations that are due.
    fn storage_complete(&mut self, index: usize) {
        if self.paused(index) {
            return;
        }
        let tick = self.tick;
        self.replicas[index].storage.set_tick(tick);
        for _ in 0..COMPLETION_ROUNDS_MAX {
            let node = &mut self.replicas[index];
            node.storage.poll(&mut self.completions, COMPLETIONS_MAX);
            if self.completions.is_empty() {
                return;
            }
            let replica = node.replica.as_mut().expect("a crashed replica has no I/O in flight");
            for completion in self.completions.drain(..) {
                let request = completion.request;
                let kind = u64::from(request.kind.is_write());
                let fields = [tick, index as u64, request.offset, request.length as u64, kind];
                self.trace.record(Event::Completion, &fields);
                let armed = replica.status().is_open();
                allocations_counted(armed, &mut node.allocations, || {
                    replica.on_storage_completion(&mut node.storage, completion)
                });
            }
            self.outbox_drain(index);
        }
    }

    fn replica_tick(&mut self, index: usize) {
        if self.paused(index) {
            return;
        }
        let (offset_ns, drift_ns_per_tick) = self.clocks[index];
        let skew_ns = offset_ns + drift_ns_per_tick * self.tick as i64;
        let realtime_ns = self.realtime_ns().saturating_add_signed(skew_ns);
        let node = &mut self.replicas[index];
        if let Some(replica) = node.replica.as_mut() {
            let armed = replica.status().is_open();
            allocations_counted(armed, &mut node.allocations, || {
                replica.on_tick(&mut node.storage, realtime_ns)
            });
            self.outbox_drain(index);
        }
    }

    /// Moves what replica `index` sends onto the network.
    fn outbox_drain(&mut self, index: usize) {
        let replica_count = self.replicas.len();
        let node = &mut self.replicas[index];
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        loop {
            let armed = replica.status().is_open();
            let sent = allocations_counted(armed, &mut node.allocations, || replica.poll_send());
            let Some((destination, message)) = sent else {
                break;
            };
            let to: Option<NodeIndex> = match destination {
                Destination::Replica(to) => {
                    let to = usize::from(to);
                    (to < replica_count && to != index).then_some(to)
                }
                #[cfg(test)]
                Destination::Client(CLIENT_OUTSIDE) => {
                    self.outside_replies.push(message.bytes().to_vec());
                    continue;
                }
                Destination::Client(client) => {
                    self.workload.client_index(client).map(|client| replica_count + client)
                }
            };
            let late = to.is_some_and(|to| to >= replica_count)
                && self.options.reply_late_per_mille > 0
                && self.prng.chance(self.options.reply_late_per_mille, 1000);
            if late && let Some(to) = to {
                let timeout = self.options.request_timeout_ticks;
                let delay_ticks = timeout + self.prng.next_u64() % (2 * timeout + 1);
                let (trace, tick) = (&mut self.trace, self.tick);
                self.network.send_late(trace, tick, index, to, &message, delay_ticks);
            }
            match to {
                Some(to) => self.network.send(&mut self.trace, self.tick, index, to, &message),
                None => {
                    self.misaddressed_first.get_or_insert((index, destination));
                }
            }
        }
    }

    fn clients_tick(&mut self) {
        let replica_count = self.replicas.len();
        self.workload.tick(self.tick, &mut self.client_sends);
        for (client, replica, message) in self.client_sends.drain(..) {
            let from = replica_count + client;
            let header = message.header();
            let fields = [self.tick, client as u64, header.client.get(), u64::from(header.request)];
            self.trace.record(Event::Request, &fields);
            let to = usize::from(replica);
            self.network.send(&mut self.trace, self.tick, from, to, &message);
        }
    }
}

/// Runs `call` (one call into a replica) with the allocation guard armed if `armed`, as the
/// server arms it once its replica is open, and adds what it allocated to `allocations`.
fn allocations_counted<T>(armed: bool, allocations: &mut u64, call: impl FnOnce() -> T) -> T {
    if !armed {
        return call();
    }
    allocation_guard::arm();
    let result = call();
    *allocations += allocation_guard::allocations_since_armed();
    allocation_guard::disarm();
    result
}

/// Whether grid block `address` of a data file fails its own checks.
fn grid_block_damaged(config: &Config, storage: &MemoryStorage, address: u64) -> bool {
    grid_block_invalid(grid_block(config, storage, address), config.cluster, address).is_some()
}

/// The checksum of the bytes of grid block `address` as they are.
fn grid_block_checksum(config: &Config, storage: &MemoryStorage, address: u64) -> Checksum {
    block_checksum(grid_block(config, storage, address))
}

fn grid_block<'a>(config: &Config, storage: &'a MemoryStorage, address: u64) -> &'a [u8] {
    let layout = Layout::new(config);
    let offset = layout.offset(Zone::Grid, address * BLOCK_SIZE as u64) as usize;
    &storage.bytes()[offset..offset + BLOCK_SIZE]
}

/// Faults: crashes, restarts, partitions.
impl Cluster {
    /// The newest view any running replica is in.
    pub fn view_newest(&self) -> View {
        let views = self.replicas.iter().filter_map(|node| node.replica.as_ref());
        views.map(Replica::view).max().unwrap_or(View(0))
    }

    /// The primary of the newest view.
    pub fn primary_index(&self) -> usize {
        usize::from(self.view_newest().primary(self.options.config.replica_count))
    }

    /// How many replicas may be down at once: `f`, but at least one.
    fn crashed_max(&self) -> usize {
        ((self.replicas.len() - 1) / 2).max(1)
    }

    fn faults_inject(&mut self) {
        let faults = self.options.faults;
        let slow_mean = faults.slow_disk_interval_mean_ticks;
        if slow_mean > 0 && self.prng.chance(1, slow_mean) {
            self.slow_disk_random();
        }
        let crash_mean = faults.crash_interval_mean_ticks;
        if crash_mean > 0 && self.prng.chance(1, crash_mean) {
            self.crash_random();
        }
        let partition_mean = faults.partition_interval_mean_ticks;
        if partition_mean > 0 && self.prng.chance(1, partition_mean) {
            self.partition_random();
        }
        let pause_mean = faults.pause_interval_mean_ticks;
        if pause_mean > 0 && self.prng.chance(1, pause_mean) {
            self.pause_random();
        }
    }

    /// Pauses one running replica that is not paused for 1 to `pause_ticks_max` ticks.
    fn pause_random(&mut self) {
        let running =
            |index: &usize| self.replicas[*index].replica.is_some() && !self.paused(*index);
        let candidates: Vec<usize> = (0..self.replicas.len()).filter(running).collect();
        if candidates.is_empty() {
            return;
        }
        let index = candidates[self.prng.index(candidates.len())];
        let until_tick =
            self.tick + 1 + self.prng.next_u64() % self.options.faults.pause_ticks_max.max(1);
        self.pause(index, until_tick);
    }

    /// Replica `index` processes nothing until `until_tick`.
    pub(crate) fn pause(&mut self, index: usize, until_tick: u64) {
        assert!(self.replicas[index].replica.is_some());
        self.metrics.pauses += 1;
        self.replicas[index].paused_until = until_tick;
        self.trace.record(Event::Pause, &[self.tick, index as u64, until_tick]);
        self.faults.push(Fault::Pause { tick: self.tick, replica: index, until_tick });
    }

    /// Whether a replica other than `index` has a faulty WAL.
    fn wal_faulty_elsewhere(&self, index: usize) -> bool {
        let others = self.replicas.iter().enumerate().filter(|(other, _)| *other != index);
        others.filter(|(_, node)| node.wal_faulty()).count() > 0
    }

    /// Replicas down, or rejoining after the loss of their data file: both count against `f`.
    /// A replica whose WAL has faulty entries does not: it still takes part in view changes
    /// (its nacks count only above what it may have acknowledged), and must not cost the
    /// cluster its liveness as a crash would.
    fn failed_count(&self) -> usize {
        let failed = |node: &ReplicaNode| {
            node.replica
                .as_ref()
                .is_none_or(|replica| !replica.status().is_open() || replica.log_lost_pending())
        };
        self.replicas.iter().filter(|node| failed(node)).count()
    }

    /// Starts a slow-disk spell on one running replica, preferably one in a superblock update
    /// or a state sync; half the time also isolates the primary for a while, so that a view
    /// change lands inside the spell.
    fn slow_disk_random(&mut self) {
        let faults = self.options.faults;
        let busy = |node: &ReplicaNode| {
            node.replica.as_ref().is_some_and(|replica| {
                replica.superblock_updating().is_some() || replica.state_syncing()
            })
        };
        let mut candidates: Vec<usize> = (0..self.replicas.len())
            .filter(|index| self.replicas[*index].replica.is_some())
            .filter(|index| !self.replicas[*index].storage.stalled())
            .collect();
        if candidates.iter().any(|index| busy(&self.replicas[*index])) {
            candidates.retain(|index| busy(&self.replicas[*index]));
        }
        if candidates.is_empty() {
            return;
        }
        let index = candidates[self.prng.index(candidates.len())];
        let until_tick = self.tick + 1 + self.prng.next_u64() % faults.slow_disk_ticks_max.max(1);
        self.metrics.slow_disk_spells += 1;
        self.metrics.slow_disk_spells_during_superblock_update +=
            u64::from(busy(&self.replicas[index]));
        self.replicas[index].storage.stall_until(until_tick);
        self.trace.record(Event::SlowDisk, &[self.tick, index as u64, until_tick]);
        self.faults.push(Fault::SlowDisk { tick: self.tick, replica: index, until_tick });
        let replica_count = self.replicas.len();
        let primary = self.primary_index();
        if replica_count >= 3 && primary != index && self.prng.chance(1, 2) {
            let until_tick = self.tick + 200 + self.prng.next_u64() % 300;
            for other in (0..replica_count).filter(|other| *other != primary) {
                self.link_cut(primary, other, LinkDirection::Both, until_tick);
            }
            let (node, direction) = (Node::Replica(primary), LinkDirection::Both);
            let tick = self.tick;
            self.metrics.partitions += 1;
            self.faults.push(Fault::Partition { tick, node, peer: None, direction, until_tick });
        }
    }

    fn crash_random(&mut self) {
        if self.failed_count() >= self.crashed_max() {
            return;
        }
        let primary = self.primary_index();
        let single = self.replicas.len() == 1;
        let primary_crashes = self.options.faults.crash_primary;
        let mut candidates: Vec<usize> = (0..self.replicas.len())
            .filter(|index| self.replicas[*index].replica.is_some())
            .filter(|index| single || primary_crashes || *index != primary)
            .collect();
        // Half the time, a replica in the middle of a view change, if one is.
        let in_view_change = |index: &usize| {
            let replica = self.replicas[*index].replica.as_ref();
            replica.is_some_and(|replica| replica.status() == Status::ViewChange)
        };
        if candidates.iter().any(in_view_change) && self.prng.chance(1, 2) {
            candidates.retain(in_view_change);
        }
        if candidates.is_empty() {
            return;
        }
        let index = candidates[self.prng.index(candidates.len())];
        let faults = self.options.faults;
        let mut down_ticks = faults.crash_down_ticks_min
            + self.prng.next_u64()
                % (faults.crash_down_ticks_max - faults.crash_down_ticks_min + 1);
        let torn = faults.crash_torn_writes && self.prng.chance(1, 2);
        if index == primary && !single && self.prng.chance(1, 2) {
            // A primary process restarted at once, back inside its view before its backups
            // miss it, with prepares they acknowledged whose own writes the crash lost: it must
            // not lead that view again.
            down_ticks = 1 + self.prng.next_u64() % 20;
            self.metrics.primary_quick_restarts += 1;
        } else if index != primary && !single && self.prng.chance(1, 16) {
            // Long enough for the others to checkpoint twice and reuse the blocks of its
            // checkpoint: if one of its own rots meanwhile, no peer holds it any more.
            down_ticks = 2_000 + self.prng.next_u64() % 4_000;
            self.metrics.crash_long_outages += 1;
        }
        self.crash(index, torn, self.tick + down_ticks);
        // Within the fault model: not while another replica's grid block or WAL is damaged, for
        // the lost replica may hold the only other good copy of it.
        let grid_damaged_elsewhere = self.grid_faults.iter().any(|(damaged, _)| *damaged != index);
        let wal_damaged_elsewhere = self.wal_faulty_elsewhere(index);
        let damaged_elsewhere = grid_damaged_elsewhere || wal_damaged_elsewhere;
        // Growing a grid replaces replicas one by one; the usual rate would rarely get to all.
        let growing = self.options.faults.grid_grow_size > self.replicas[index].config.grid_size;
        let rejoins = if growing { self.prng.chance(1, 2) } else { self.prng.chance(1, 8) };
        if self.replicas.len() > 1 && rejoins && !damaged_elsewhere {
            self.rejoin(index);
        }
    }

    /// The crashed replica `index` loses its data file and is formatted again to rejoin. Half
    /// the time it comes back able to reach only one peer for a while (perhaps a stale primary
    /// that others left), so that old views meet the rejoined replica.
    fn rejoin(&mut self, index: usize) {
        self.reformat_for_rejoin(index);
        self.metrics.rejoins += 1;
        self.trace.record(Event::Rejoin, &[self.tick, index as u64]);
        self.faults.push(Fault::Rejoin { tick: self.tick, replica: index });
        let replica_count = self.replicas.len();
        if replica_count < 3 || self.prng.chance(1, 2) {
            return;
        }
        let reachable = (index + 1 + self.prng.index(replica_count - 1)) % replica_count;
        let restart_tick = self.replicas[index].restart_tick;
        let until_tick = restart_tick + 200 + self.prng.next_u64() % 1_800;
        for other in (0..replica_count).filter(|other| *other != index && *other != reachable) {
            self.link_cut(index, other, LinkDirection::Both, until_tick);
            let fields = [self.tick, 5, index as u64, LinkDirection::Both as u64, until_tick];
            self.trace.record(Event::Partition, &fields);
            let (node, peer) = (Node::Replica(index), Some(Node::Replica(other)));
            let (tick, direction) = (self.tick, LinkDirection::Both);
            self.faults.push(Fault::Partition { tick, node, peer, direction, until_tick });
        }
    }

    /// Crashes replica `index`: its writes in flight are lost (or torn), its memory is gone, and
    /// it restarts from its disk at `restart_tick`.
    pub fn crash(&mut self, index: usize, torn: bool, restart_tick: u64) {
        let node = &mut self.replicas[index];
        assert!(node.replica.is_some(), "replica {index} is already down");
        let in_flight = node.storage.in_flight() as u64;
        let metrics = node.replica.as_ref().expect("running").metrics();
        self.replica_metrics_retired.add(&metrics);
        if torn {
            let landed = node.storage.crash_tearing_writes_randomly(&mut self.prng);
            self.metrics.sectors_torn_landed += landed as u64;
        } else {
            node.storage.crash();
        }
        let replica = node.replica.take().expect("checked above");
        node.log_lost_down = replica.log_lost_pending();
        let grid_head = replica.checkpoint_state().grid_head;
        drop(replica);
        node.restart_tick = restart_tick.max(self.tick + 1);
        // Within the fault model: a replicated cluster's crashed backup may also come back with
        // one rotten WAL sector, which it must repair from a peer rather than trust.
        let replicated = node.config.replica_count > 1;
        let within_f = self.failed_count() <= self.crashed_max();
        // A faulty WAL does not count against f, but two replicas' faults must not meet: not
        // while another replica's WAL is faulty or its data file lost, for this one may hold
        // the only other good copy of what that one lacks.
        let wal_within_model = !self.wal_faulty_elsewhere(index)
            && !self.replicas.iter().any(ReplicaNode::log_lost_pending);
        let damages = self.crash_damages;
        if damages && replicated && within_f && wal_within_model && self.prng.chance(1, 2) {
            self.wal_sector_damage(index);
        }
        if damages && replicated && within_f && self.prng.chance(1, 3) {
            self.grid_block_damage(index, grid_head);
        }
        if damages && self.options.faults.replies_unreadable && self.prng.chance(1, 2) {
            self.client_replies_damage(index);
        }
        let node = &mut self.replicas[index];
        // With the replica and its disk's queue gone, nothing may hold a buffer of its pool:
        // the network copies messages, it never keeps a replica's buffer.
        assert_eq!(node.pool.free_count(), node.pool.count(), "replica {index} leaked buffers");
        self.metrics.crashes += 1;
        let restart_tick = node.restart_tick;
        let fields = [self.tick, index as u64, u64::from(torn), in_flight, restart_tick];
        self.trace.record(Event::Crash, &fields);
        let tick = self.tick;
        self.faults.push(Fault::Crash { tick, replica: index, torn, restart_tick });
    }

    /// Within the fault model: crashed replica `index` comes back with one rotten or
    /// misdirected sector in its WAL, which it must repair from a peer rather than trust.
    fn wal_sector_damage(&mut self, index: usize) {
        let node = &mut self.replicas[index];
        node.wal_damaged = true;
        let layout = Layout::new(&node.config);
        let zone = if self.prng.chance(1, 2) { Zone::WalHeaders } else { Zone::WalPrepares };
        let sectors = layout.zone_size(zone) / SECTOR_SIZE as u64;
        let sector = self.prng.next_u64() % sectors;
        let offset = layout.zone_offset(zone) + sector * SECTOR_SIZE as u64;
        if self.prng.chance(1, 2) {
            node.storage.corrupt_sector(offset);
            self.metrics.sectors_corrupted += 1;
            self.trace.record(Event::Corrupt, &[self.tick, index as u64, offset]);
        } else {
            // A misdirected write: another sector of the zone's bytes, landed here (for
            // the prepare ring, the first sector of another slot over this slot's).
            let step = match zone {
                Zone::WalPrepares => layout.message_size_max,
                _ => SECTOR_SIZE as u64,
            };
            let units = layout.zone_size(zone) / step;
            let target = layout.zone_offset(zone) + (self.prng.next_u64() % units) * step;
            let source = layout.zone_offset(zone) + (self.prng.next_u64() % units) * step;
            let bytes = node.storage.bytes_mut();
            let (source, target) = (source as usize, target as usize);
            bytes.copy_within(source..source + SECTOR_SIZE, target);
            self.metrics.sectors_misdirected += 1;
            self.trace.record(Event::Corrupt, &[self.tick, index as u64, target as u64]);
        }
    }

    /// An unreadable sector in crashed replica `index`'s client_replies zone: a media error
    /// only costs the replies that sector held (their retries get evictions), so it is
    /// within the fault model on any replica, at any time.
    fn client_replies_damage(&mut self, index: usize) {
        let node = &mut self.replicas[index];
        let layout = Layout::new(&node.config);
        let sectors = layout.zone_size(Zone::ClientReplies) / SECTOR_SIZE as u64;
        let sector = self.prng.next_u64() % sectors;
        let offset = layout.zone_offset(Zone::ClientReplies) + sector * SECTOR_SIZE as u64;
        node.storage.unreadable(offset..offset + SECTOR_SIZE as u64);
        self.workload.replies_may_be_lost();
        self.metrics.sectors_unreadable += 1;
        self.trace.record(Event::Corrupt, &[self.tick, index as u64, offset]);
    }

    /// Crashes replica `index` like `crash` (its writes in flight lost), but its disk keeps
    /// every write that landed: no WAL sector or grid block is damaged with it.
    #[cfg(test)]
    pub(crate) fn crash_clean(&mut self, index: usize, restart_tick: u64) {
        self.crash_damages = false;
        self.crash(index, false, restart_tick);
        self.crash_damages = true;
    }

    /// Within the fault model: a block below crashed replica `index`'s durable grid head rots
    /// (a flipped bit in one of its sectors) or takes another block's bytes (a misdirected
    /// write), unless another replica's copy of it is damaged and not yet repaired. Event
    /// blocks and streams-table blocks alike: the replica repairs it from a peer at open, on a
    /// read, or by its scrubber. With two replicas, only a block the other one holds too: a
    /// block no peer has written yet is lost with it, and a cluster of two, which needs both to
    /// commit, could never write it again (a failure beyond what two replicas tolerate).
    fn grid_block_damage(&mut self, index: usize, grid_head: u64) {
        let grid_head = if self.replicas.len() == 2 {
            let peer = &self.replicas[1 - index].replica;
            grid_head.min(peer.as_ref().map_or(0, |peer| peer.checkpoint_state().grid_head))
        } else {
            grid_head
        };
        if grid_head == 0 {
            return;
        }
        let mut address = self.prng.next_u64() % grid_head;
        // Half the time one of its checkpoint's blocks (the open must repair those). Not with
        // two replicas: the peer may hold an older block at that address (it cannot get two
        // checkpoints ahead, so aiming there gains nothing but a fault beyond the model).
        let checkpoint_blocks = &self.replicas[index].checkpoint_blocks.1;
        let aimed = self.replicas.len() > 2 && !checkpoint_blocks.is_empty();
        let checkpoint_block = aimed && self.prng.chance(1, 2);
        if checkpoint_block {
            address = checkpoint_blocks[self.prng.index(checkpoint_blocks.len())].0;
            if address >= grid_head {
                return;
            }
        }
        if self.grid_faults.iter().any(|(_, damaged)| *damaged == address) {
            return;
        }
        self.metrics.grid_checkpoint_blocks_damaged += u64::from(checkpoint_block);
        let layout = Layout::new(&self.replicas[index].config);
        let block_size = BLOCK_SIZE as u64;
        let offset = layout.offset(Zone::Grid, address * block_size);
        let storage = &mut self.replicas[index].storage;
        if grid_head == 1 || self.prng.chance(2, 3) {
            let sector = self.prng.next_u64() % (block_size / SECTOR_SIZE as u64);
            storage.corrupt_sector(offset + sector * SECTOR_SIZE as u64);
            self.metrics.grid_blocks_corrupted += 1;
        } else {
            let source = (address + 1 + self.prng.next_u64() % (grid_head - 1)) % grid_head;
            let source = layout.offset(Zone::Grid, source * block_size) as usize;
            let target = offset as usize;
            storage.bytes_mut().copy_within(source..source + BLOCK_SIZE, target);
            self.metrics.grid_blocks_misdirected += 1;
        }
        self.grid_faults.push((index, address));
        self.trace.record(Event::Corrupt, &[self.tick, index as u64, offset]);
    }

    /// Forgets damaged grid blocks that are sound again.
    fn grid_faults_prune(&mut self) {
        let replicas = &self.replicas;
        self.grid_faults.retain(|(index, address)| {
            grid_block_damaged(&replicas[*index].config, &replicas[*index].storage, *address)
        });
    }

    /// Replaces crashed replica `index`'s data file with a new one formatted for rejoining
    /// (`kimberlite format --rejoin`): everything it held is gone.
    pub fn reformat_for_rejoin(&mut self, index: usize) {
        self.checker.replica_reformatted(index);
        self.grid_faults.retain(|(damaged, _)| *damaged != index);
        let grow_size = self.options.faults.grid_grow_size;
        let node = &mut self.replicas[index];
        assert!(node.replica.is_none(), "replica {index} must be down");
        if grow_size > node.config.grid_size {
            self.grid_resize(index, grow_size);
            self.metrics.grid_grows += 1;
        }
        let node = &mut self.replicas[index];
        node.log_lost_down = true;
        node.checkpoint_blocks = (Op(0), Vec::new());
        node.sync_installed = false;
        let layout = Layout::new(&node.config);
        let grid_offset = layout.zone_offset(Zone::Grid) as usize;
        node.storage.bytes_mut().fill(0);
        fill_range(&node.config, 0, &mut node.storage.bytes_mut()[..grid_offset]);
        // The superblock `format --rejoin` leaves: the formatted one, marked log_lost (written
        // straight into the in-memory disk, whose I/O only completes as ticks pass).
        let mut superblock = SuperBlockHeader::format(&node.config);
        superblock.vsr_state.log_lost = 1;
        superblock.set_checksum();
        let superblock_offset = layout.zone_offset(Zone::Superblock) as usize;
        for copy in 0..SUPERBLOCK_COPIES {
            superblock.copy = copy as u16;
            let offset = superblock_offset + copy * SUPERBLOCK_COPY_SIZE;
            let bytes = &mut node.storage.bytes_mut()[offset..offset + SUPERBLOCK_HEADER_SIZE];
            bytes.copy_from_slice(superblock.as_bytes());
        }
    }

    /// Gives replica `index`, which is down, a data file with a grid of `grid_size` bytes, to
    /// be formatted (`reformat_for_rejoin`).
    pub(crate) fn grid_resize(&mut self, index: usize, grid_size: u64) {
        let node = &mut self.replicas[index];
        assert!(node.replica.is_none(), "replica {index} must be down");
        node.config.grid_size = grid_size;
        node.storage.resize(Layout::new(&node.config).file_size());
    }

    fn restarts_due(&mut self) {
        for index in 0..self.replicas.len() {
            let node = &self.replicas[index];
            if node.replica.is_none() && node.restart_tick <= self.tick {
                self.replica_start(index);
            }
        }
    }

    /// Starts (or restarts) replica `index` from its disk, as a new process would.
    pub(crate) fn replica_start(&mut self, index: usize) {
        let node = &mut self.replicas[index];
        assert!(node.replica.is_none());
        let seed = seed_derive(self.options.seed, 200 + index as u64 + (self.tick << 8));
        let mut replica = Replica::new(&node.config, node.pool.clone(), seed);
        replica.open(&mut node.storage);
        node.replica = Some(replica);
        node.wal_damaged = false;
        node.paused_until = 0;
        if self.tick > 0 {
            self.metrics.restarts += 1;
            self.checker.replica_restarted(index);
            self.faults.push(Fault::Restart { tick: self.tick, replica: index });
        }
        self.trace.record(Event::Restart, &[self.tick, index as u64]);
        self.outbox_drain(index);
    }

    fn partition_random(&mut self) {
        let faults = self.options.faults;
        let spread = faults.partition_ticks_max - faults.partition_ticks_min + 1;
        let until_tick = self.tick + faults.partition_ticks_min + self.prng.next_u64() % spread;
        let replica_count = self.replicas.len();
        let client_count = self.options.client_count;
        let direction = match self.prng.index(3) {
            0 => LinkDirection::Both,
            1 => LinkDirection::Outgoing,
            _ => LinkDirection::Incoming,
        };
        let mode = if replica_count > 1 { self.prng.index(4) } else { 2 };
        let (node, peer) = match mode {
            // Isolate a backup from every other replica.
            0 => {
                let primary = self.primary_index();
                let backup = (primary + 1 + self.prng.index(replica_count - 1)) % replica_count;
                for other in (0..replica_count).filter(|other| *other != backup) {
                    self.link_cut(backup, other, direction, until_tick);
                }
                (Node::Replica(backup), None)
            }
            // Cut one link between two replicas.
            1 => {
                let from = self.prng.index(replica_count);
                let to = (from + 1 + self.prng.index(replica_count - 1)) % replica_count;
                self.link_cut(from, to, direction, until_tick);
                (Node::Replica(from), Some(Node::Replica(to)))
            }
            // Isolate the primary of the newest view from every other replica.
            3 => {
                let primary = self.primary_index();
                for other in (0..replica_count).filter(|other| *other != primary) {
                    self.link_cut(primary, other, direction, until_tick);
                }
                (Node::Replica(primary), None)
            }
            // Cut a client off from one replica.
            _ => {
                let client = self.prng.index(client_count);
                let replica = self.prng.index(replica_count);
                self.link_cut(replica_count + client, replica, direction, until_tick);
                (Node::Client(client), Some(Node::Replica(replica)))
            }
        };
        self.metrics.partitions += 1;
        let node_index = match node {
            Node::Replica(index) => index,
            Node::Client(index) => replica_count + index,
        };
        let fields = [self.tick, mode as u64, node_index as u64, direction as u64, until_tick];
        self.trace.record(Event::Partition, &fields);
        let tick = self.tick;
        self.faults.push(Fault::Partition { tick, node, peer, direction, until_tick });
    }

    /// Cuts the links between `node` and `other` in `direction` (seen from `node`).
    pub(crate) fn link_cut(
        &mut self,
        node: NodeIndex,
        other: NodeIndex,
        direction: LinkDirection,
        until_tick: u64,
    ) {
        if direction != LinkDirection::Incoming {
            self.network.link_cut(node, other, until_tick);
        }
        if direction != LinkDirection::Outgoing {
            self.network.link_cut(other, node, until_tick);
        }
    }

    /// Heals the links between `node` and `other` in `direction` (seen from `node`) now.
    #[cfg(test)]
    pub(crate) fn link_heal(
        &mut self,
        node: NodeIndex,
        other: NodeIndex,
        direction: LinkDirection,
    ) {
        if direction != LinkDirection::Incoming {
            self.network.link_heal(node, other);
        }
        if direction != LinkDirection::Outgoing {
            self.network.link_heal(other, node);
        }
    }

    /// Ends the fault phase: every link heals, every crashed replica restarts, and clients only
    /// finish what they have in flight.
    pub fn faults_stop(&mut self) {
        self.faulting = false;
        self.network.heal_all();
        for index in 0..self.replicas.len() {
            self.replicas[index].storage.stall_end();
            if self.replicas[index].replica.is_none() {
                self.replica_start(index);
            }
        }
        self.workload.stop_issuing();
    }
}

/// Checks.
impl Cluster {
    /// Runs the checker over what changed in this step.
    fn check(&mut self) -> Result<(), Violation> {
        for index in 0..self.replicas.len() {
            self.check_replica(index)?;
            self.check_checkpoint_blocks(index)?;
            let node = &self.replicas[index];
            if node.replica.as_ref().is_some_and(|replica| replica.metrics().state_syncs > 0) {
                self.workload.replies_may_be_lost();
            }
        }
        self.workload.replies_received_take(&mut self.replies);
        for reply in self.replies.drain(..) {
            self.checker.reply(&reply)?;
        }
        for reply in &self.workload.acknowledged()[self.acknowledged_checked..] {
            self.checker.acknowledged(reply);
        }
        self.acknowledged_checked = self.workload.acknowledged().len();
        if let Some((replica, destination)) = self.misaddressed_first {
            return Err(Violation::Misaddressed { replica, destination });
        }
        if let Some(violation) = self.workload.violations().first() {
            return Err(Violation::StateMachine {
                client: violation.client,
                request: violation.request,
                op: violation.op,
                reason: violation.reason,
            });
        }
        Ok(())
    }

    fn check_replica(&mut self, index: usize) -> Result<(), Violation> {
        let Some(replica) = self.replicas[index].replica.as_ref() else {
            return Ok(());
        };
        if replica.status() == Status::Failed {
            let reason = replica.failure().unwrap_or("no reason given");
            return Err(Violation::ReplicaFailed { replica: index, reason });
        }
        let allocations = self.replicas[index].allocations;
        if allocations > 0 {
            return Err(Violation::Allocation { replica: index, allocations });
        }
        if replica.status().is_open() {
            self.checker.replica_checkpoint(index, replica.checkpoint_op())?;
        }
        if replica.status() != Status::Normal {
            // Opening: the journal is still being recovered, and what the replay commits is
            // checked once it is done.
            return Ok(());
        }
        let tick = self.tick;
        let trace = &mut self.trace;
        let nodes = &self.replicas;
        self.checker.replica_commits(
            index,
            replica.commit_min(),
            replica.checkpoint_op(),
            |op| replica.prepare_header(op),
            |header| packed_members(nodes, header),
            |op, header| {
                trace.record(
                    Event::Commit,
                    &[tick, index as u64, op.get(), header.checksum.get() as u64],
                )
            },
        )?;
        // Only the primary of the newest view: a stale primary cut off from a view change may
        // lack what its successor acknowledged.
        if self.primary_index() == index && replica.view() == self.view_newest() {
            self.checker.primary_head(index, replica.op())?;
        }
        Ok(())
    }

    /// Once a replica's checkpoint advanced by a checkpoint of its own: the blocks of the one
    /// before are as they were when it became durable (but for blocks the run damaged), since
    /// until the moment the new one became durable a crash would have opened that one; then
    /// records the new one's blocks.
    fn check_checkpoint_blocks(&mut self, index: usize) -> Result<(), Violation> {
        let installing =
            self.replicas[index].replica.as_ref().is_some_and(Replica::sync_installing);
        if installing && !self.replicas[index].sync_installed {
            // Every block state sync fetched has landed, none below the old checkpoint's head:
            // until now, that checkpoint's blocks must be as they were.
            self.checkpoint_blocks_unchanged(index)?;
            self.replicas[index].sync_installed = true;
        }
        let node = &self.replicas[index];
        let Some(replica) = node.replica.as_ref().filter(|replica| replica.status().is_open())
        else {
            return Ok(());
        };
        let Some(blocks) = replica.checkpoint_blocks() else {
            return Ok(());
        };
        let checkpoint_op = replica.checkpoint_op();
        let recorded_op = node.checkpoint_blocks.0;
        if recorded_op == checkpoint_op && !node.checkpoint_blocks.1.is_empty() {
            return Ok(());
        }
        // A checkpoint state sync installed replaces the old one at once: its blocks, which
        // the cluster may have put where the old one's were, are fetched after the install.
        if checkpoint_op > recorded_op && !node.sync_installed {
            self.checkpoint_blocks_unchanged(index)?;
        }
        let node = &self.replicas[index];
        let blocks = blocks.iter().map(|address| {
            let address = u64::from(*address);
            (address, grid_block_checksum(&node.config, &node.storage, address))
        });
        let blocks = blocks.collect();
        self.replicas[index].checkpoint_blocks = (checkpoint_op, blocks);
        self.replicas[index].sync_installed = false;
        Ok(())
    }

    /// The blocks recorded of replica `index`'s last durable checkpoint still hold what they
    /// held then, but for blocks the run damaged.
    fn checkpoint_blocks_unchanged(&self, index: usize) -> Result<(), Violation> {
        let node = &self.replicas[index];
        let (recorded_op, recorded) = &node.checkpoint_blocks;
        for (address, checksum) in recorded {
            let damaged = self.grid_faults.contains(&(index, *address));
            if !damaged && grid_block_checksum(&node.config, &node.storage, *address) != *checksum {
                let (replica, checkpoint_op, address) = (index, *recorded_op, *address);
                return Err(Violation::CheckpointBlockOverwritten {
                    replica,
                    checkpoint_op,
                    address,
                });
            }
        }
        Ok(())
    }

    /// Why the cluster has not converged yet, or `None` once it has: every replica is running
    /// and normal with the same commit number and nothing uncommitted, every client request is
    /// answered, and the checker has verified every commit and reply.
    pub fn convergence_gap(&self) -> Option<String> {
        let mut commits: Vec<Op> = Vec::with_capacity(self.replicas.len());
        for (index, node) in self.replicas.iter().enumerate() {
            let Some(replica) = node.replica.as_ref() else {
                return Some(format!("replica {index} is down"));
            };
            if replica.status() != Status::Normal {
                let states = self.replica_states();
                return Some(format!("replica {index} is {:?}: {states:?}", replica.status()));
            }
            if replica.needs_state_sync() {
                let state = replica.debug_state();
                return Some(format!(
                    "replica {index} is behind the WAL window of its peers and still in state \
                     sync: {state}"
                ));
            }
            if replica.op() != replica.commit_min() {
                let (op, commit) = (replica.op(), replica.commit_min());
                let state = replica.debug_state();
                return Some(format!("replica {index} has op {op} but commit {commit}: {state}"));
            }
            commits.push(replica.commit_min());
        }
        if commits.iter().any(|commit| *commit != commits[0]) {
            let states = self.replica_states();
            return Some(format!("replicas differ in commit number: {commits:?}: {states:?}"));
        }
        if let Some(gap) = self.grid_gap() {
            return Some(gap);
        }
        if !self.workload.idle() {
            let count = self.workload.in_flight_count();
            return Some(format!("{count} client request(s) still unanswered"));
        }
        self.checker.converged(&commits).err()
    }

    /// A grid block found bad, or damaged by the run, that is not repaired yet.
    fn grid_gap(&self) -> Option<String> {
        for (index, node) in self.replicas.iter().enumerate() {
            let pending = node.replica.as_ref().map_or(0, Replica::grid_faults_pending);
            if pending > 0 {
                return Some(format!("replica {index} has {pending} grid block(s) to repair"));
            }
        }
        let unrepaired = self.grid_faults.iter().find(|(index, address)| {
            let node = &self.replicas[*index];
            // A free block holds nothing any checkpoint needs: it is never repaired.
            let free =
                node.replica.as_ref().is_some_and(|replica| !replica.grid_block_settled(*address));
            !free && grid_block_damaged(&node.config, &node.storage, *address)
        });
        let (index, address) = unrepaired?;
        Some(format!("replica {index}'s grid block {address} is still damaged"))
    }

    /// Once converged: replicas that checkpointed the same op hold the same grid bytes below
    /// that checkpoint's grid head, but in free blocks (a replica that state-synced holds
    /// there what it had before).
    fn grids_check(&self) -> Result<(), Violation> {
        let running = self.replicas.iter().enumerate().filter_map(|(index, node)| {
            node.replica.as_ref().map(|replica| (index, replica.checkpoint_op(), node))
        });
        let running: Vec<_> = running.collect();
        for (position, (index, checkpoint_op, node)) in running.iter().enumerate() {
            let Some((other, _, other_node)) =
                running[..position].iter().find(|(_, op, _)| op == checkpoint_op)
            else {
                continue;
            };
            let replica = node.replica.as_ref().expect("running");
            let other_replica = other_node.replica.as_ref().expect("running");
            let (replica_index, other, checkpoint_op) = (*index, *other, *checkpoint_op);
            let diverged = |address| Violation::GridDiverged {
                replica: replica_index,
                other,
                checkpoint_op,
                address,
            };
            if let (Some(free), Some(other_free)) =
                (replica.grid_free_blocks(), other_replica.grid_free_blocks())
                && free != other_free
            {
                // The free list is a function of the committed log too.
                let differing = free.iter().zip(other_free).find(|(a, b)| a != b);
                let address = differing.map_or(0, |(a, _)| u64::from(*a));
                return Err(diverged(address));
            }
            for address in 0..replica.checkpoint_state().grid_head {
                // A free block's bytes matter to no checkpoint; while a checkpoint is written,
                // its blocks and the last one's are in flux.
                let settled = replica.grid_block_settled(address)
                    && other_replica.grid_block_settled(address);
                if settled
                    && grid_block(&node.config, &node.storage, address)
                        != grid_block(&other_node.config, &other_node.storage, address)
                {
                    return Err(diverged(address));
                }
            }
        }
        Ok(())
    }

    /// Every running replica's one-line state, for a convergence report.
    fn replica_states(&self) -> Vec<String> {
        let replicas = self.replicas.iter().filter_map(|node| node.replica.as_ref());
        replicas.map(Replica::debug_state).collect()
    }

    /// The run's figures, for the summary line.
    pub fn summary(&self) -> Summary {
        let network = self.network.metrics();
        let workload = self.workload.metrics();
        Summary {
            ticks: self.tick,
            ops_committed: self.checker.history_op_max().get(),
            messages_sent: network.sent,
            messages_delivered: network.delivered,
            messages_dropped: network.dropped(),
            messages_duplicated: network.duplicated,
            requests_sent: workload.requests_sent,
            replies_acknowledged: self.workload.acknowledged().len() as u64,
            evictions: workload.evictions,
            events_appended: workload.events_appended,
            storage_full: workload.storage_full,
            crashes: self.metrics.crashes,
            mutations: self.metrics.mutations,
            partitions: self.metrics.partitions,
            trace_hash: self.trace.hash(),
            trace_events: self.trace.event_count(),
            replica_metrics: self.replica_metrics(),
            cluster_metrics: self.metrics,
            disk_cache_metrics: self.disk_cache_metrics(),
            workload_metrics: workload,
            replies_late: network.late,
            packed_members_unknown: self.checker.packed_members_unknown(),
            client_reply_duplicate_dropped: workload.client_reply_duplicate_dropped,
            client_requests_resent: workload.client_requests_resent,
            client_redirects: workload.client_redirects,
            reads_checked: workload.reads_checked,
            read_events_checked: workload.read_events_checked,
        }
    }

    /// What the disks' cache models saw, summed over the replicas.
    pub fn disk_cache_metrics(&self) -> CacheMetrics {
        let mut metrics = CacheMetrics::default();
        for node in &self.replicas {
            metrics.add(&node.storage.cache_metrics());
        }
        metrics
    }

    /// The metrics of every replica the run started, summed.
    pub fn replica_metrics(&self) -> Metrics {
        let mut metrics = self.replica_metrics_retired;
        for replica in self.replicas.iter().filter_map(|node| node.replica.as_ref()) {
            metrics.add(&replica.metrics());
        }
        metrics
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub ticks: u64,
    pub ops_committed: u64,
    pub messages_sent: u64,
    pub messages_delivered: u64,
    pub messages_dropped: u64,
    pub messages_duplicated: u64,
    pub requests_sent: u64,
    pub replies_acknowledged: u64,
    pub evictions: u64,
    pub events_appended: u64,
    /// Writes refused for lack of grid space (`storage_full`, `streams_full`).
    pub storage_full: u64,
    pub crashes: u64,
    pub partitions: u64,
    /// Messages between replicas mutated into ones a correct replica must reject.
    pub mutations: u64,
    pub trace_hash: u64,
    pub trace_events: u64,
    /// Summed over every replica the run started, crashed ones included.
    pub replica_metrics: Metrics,
    pub cluster_metrics: ClusterMetrics,
    /// Cached writes synced, written back, and lost or kept at crashes, over every disk.
    pub disk_cache_metrics: CacheMetrics,
    pub workload_metrics: WorkloadMetrics,
    /// Late duplicates of messages to clients (`reply_late_per_mille`).
    pub replies_late: u64,
    /// Packed prepares whose requests the checker could not read from any replica's WAL.
    pub packed_members_unknown: u64,
    /// Replies the client core dropped as answers to another request than the one in flight.
    pub client_reply_duplicate_dropped: u64,
    pub client_requests_resent: u64,
    pub client_redirects: u64,
    /// Read replies accepted by clients and checked against their stream models.
    pub reads_checked: u64,
    pub read_events_checked: u64,
}

/// The requests an `append_packed` prepare holds, read from its body in the WAL of a replica
/// whose copy is intact; `None` if no replica's copy is (every copy corrupted or overwritten
/// before the checker looked).
fn packed_members(nodes: &[ReplicaNode], header: &Header) -> Option<Vec<PackedMember>> {
    for node in nodes {
        let layout = Layout::new(&node.config);
        let slot = header.op.get() % u64::from(node.config.journal_slot_count);
        let slot_offset = slot * u64::from(node.config.message_size_max);
        let bytes = &node.storage.bytes()[layout.offset(Zone::WalPrepares, slot_offset) as usize..];
        let Ok((held, _)) = Header::read_from_prefix(bytes) else {
            continue;
        };
        if held != *header {
            continue;
        }
        let body = &bytes[HEADER_SIZE..held.size as usize];
        if !held.valid_checksum_body(body) {
            continue;
        }
        let Ok((entries, _)) = packed_split(body) else {
            continue;
        };
        let member = |entry: PackedRequest| PackedMember {
            client: ClientId(entry.client),
            request: entry.request,
            request_checksum: Checksum::from(entry.request_checksum),
        };
        return Some(entries.map(member).collect());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::HEADER_SIZE;
    use crate::sim::scenario::{
        clients_cut_off, options_quiet, run_until, run_until_open, wal_prepare_rot,
    };
    use crate::vsr::header::views;
    use crate::vsr::header::{Checksum, Header};

    #[test]
    fn formatted_in_memory_disk_matches_format() {
        // Goal: the simulator's shortcut (format bytes without the grid) gives the bytes that
        // `format` writes through `Storage`.
        let options = options_quiet(1, 1);
        let node = replica_node(&options, ReplicaIndex(0));
        let mut formatted = MemoryStorage::new(node.storage.size());
        let pool = MessagePool::new(
            crate::constants::FORMAT_WRITES_IN_FLIGHT,
            crate::constants::FORMAT_WRITE_SIZE,
        );
        crate::vsr::format::format(&mut formatted, &pool, &node.config).unwrap();
        assert!(formatted.bytes() == node.storage.bytes());
    }

    #[test]
    fn disk_that_forgets_acknowledged_writes_is_caught() {
        // Goal: end to end, the checker notices a replica that comes back without writes it
        // acknowledged: here its WAL is wiped while it is down, beyond the fault model.
        let seed = 5;
        println!("seed={seed}");
        let mut cluster = Cluster::new(options_quiet(seed, 1));
        while cluster.workload().acknowledged().len() < 20 {
            cluster.step().unwrap();
        }
        let restart_tick = cluster.tick() + 5;
        cluster.crash(0, false, restart_tick);
        let config = Config { replica: ReplicaIndex(0), ..cluster.options().config };
        let layout = Layout::new(&config);
        let start = layout.zone_offset(Zone::WalHeaders) as usize;
        let end = layout.zone_offset(Zone::ClientReplies) as usize;
        fill_range(&config, start as u64, &mut cluster.storage_mut(0).bytes_mut()[start..end]);
        let violation = loop {
            if let Err(violation) = cluster.step() {
                break violation;
            }
            assert!(cluster.tick() < restart_tick + 1_000, "the lost writes went unnoticed");
        };
        assert!(matches!(violation, Violation::AcknowledgedWriteLost { replica: 0, .. }));
    }

    #[test]
    fn quiet_cluster_converges_with_every_request_answered() {
        // Goal: with no faults the run passes, and clients got replies for what they sent.
        let seed = 11;
        println!("seed={seed}");
        let mut cluster = Cluster::new(options_quiet(seed, 1));
        cluster.run().unwrap();
        assert!(cluster.workload().idle());
        assert!(cluster.checker().history_op_max() > Op(50));
        assert_eq!(cluster.summary().messages_dropped, 0);
        let acknowledged = cluster.workload().acknowledged().len() as u64;
        assert_eq!(acknowledged, cluster.checker().history_op_max().get());
    }

    #[test]
    fn replicated_clusters_converge_without_faults() {
        // Goal: the replicated normal path under latency and reordering alone: every backup
        // keeps up, and the run passes every check, for 2, 3 and 5 replicas.
        for replica_count in [2, 3, 5] {
            let seed = 21 + u64::from(replica_count);
            println!("seed={seed} replicas={replica_count}");
            let mut cluster = Cluster::new(options_quiet(seed, replica_count));
            cluster.run().unwrap();
            // Clients read a third of the time: reads commit no op.
            assert!(cluster.checker().history_op_max() > Op(30));
        }
    }

    #[test]
    fn primary_crash_elects_a_new_primary_that_keeps_every_acknowledged_write() {
        // Goal: the view change under load: the primary crashes for good, a backup takes over
        // with every acknowledged write, the clients carry on, and once the old primary comes
        // back it rejoins as a backup; for 3 and 5 replicas.
        for replica_count in [3, 5] {
            let seed = 31 + u64::from(replica_count);
            println!("seed={seed} replicas={replica_count}");
            let mut options = options_quiet(seed, replica_count);
            options.ticks_faults = 2_000;
            options.ticks_convergence_max = 3_000;
            let mut cluster = Cluster::new(options);
            while cluster.tick() < 300 {
                cluster.step().unwrap();
            }
            let acknowledged = cluster.checker().acknowledged_op_max();
            assert!(acknowledged > Op(10));
            cluster.crash(0, false, 1_500);
            while cluster.tick() < 1_400 {
                cluster.step().unwrap();
            }
            let states: Vec<String> = (1..replica_count as usize)
                .filter_map(|index| cluster.replica(index).map(Replica::debug_state))
                .collect();
            assert!(cluster.view_newest() > View(0), "{states:?}");
            assert!(cluster.checker().acknowledged_op_max() > acknowledged + 10, "{states:?}");
            cluster.run().unwrap();
        }
    }

    #[test]
    fn backups_elect_a_new_primary_soon_after_it_dies_while_one_of_them_repairs() {
        // Goal: a backup votes to leave the view when the primary itself falls silent, however
        // busy it is repairing: prepares the primary authored but the other backup relays are
        // no sign of the primary's life. R2 comes back far behind and repairs from R1 while R0,
        // the primary, dies: the survivors must start a view change within the heartbeat
        // timeout (plus jitter and a margin), not once R2 has caught up.
        let seed = 61;
        println!("seed={seed}");
        let mut options = options_quiet(seed, 3);
        options.ticks_faults = 5_000;
        options.client_count = 4;
        options.think_ticks_max = 0;
        let mut cluster = Cluster::new(options);
        while cluster.tick() < 100 {
            cluster.step().unwrap();
        }
        cluster.crash(2, false, 4_300);
        while cluster.tick() < 4_300 {
            cluster.step().unwrap();
        }
        let behind = cluster.checker().acknowledged_op_max();
        assert!(behind > Op(300), "R2 is far behind: {behind}");
        while cluster.replica(2).is_none_or(|replica| replica.commit_min() < Op(20)) {
            cluster.step().unwrap();
        }
        let crash_tick = cluster.tick();
        cluster.crash(0, false, 100_000);
        let timeout = crate::constants::NORMAL_HEARTBEAT_TIMEOUT_TICKS + 50 + 60;
        while cluster.view_newest() == View(0) {
            cluster.step().unwrap();
            let waited = cluster.tick() - crash_tick;
            let states = cluster.replica_states();
            assert!(waited < timeout, "no view change {waited} ticks after: {states:?}");
        }
    }

    #[test]
    fn late_and_duplicated_replies_never_answer_a_later_request() {
        // Goal: with replies to clients duplicated and delivered again late (after the client
        // moved on), every copy that names an earlier request is dropped by the client core,
        // the clients' reads check out against their stream models, and the run passes.
        let seed = 61;
        println!("seed={seed}");
        let mut options = options_quiet(seed, 3);
        options.duplicate_per_mille = 100;
        options.reply_late_per_mille = 200;
        options.ticks_faults = 2_000;
        let mut cluster = Cluster::new(options);
        cluster.run().unwrap();
        let summary = cluster.summary();
        assert!(summary.replies_late > 20, "{summary:?}");
        assert!(summary.client_reply_duplicate_dropped > 20, "{summary:?}");
        assert!(summary.reads_checked > 20 && summary.read_events_checked > 0, "{summary:?}");
    }

    #[test]
    fn replica_whose_data_file_is_lost_rejoins_after_a_rejoin_format() {
        // Goal: a replica loses its data file; formatted again with log_lost, it restarts, does
        // not vote with its empty log, recovers the cluster's log from its peers, and the
        // cluster converges with every acknowledged write.
        let seed = 51;
        println!("seed={seed}");
        let mut options = options_quiet(seed, 3);
        options.ticks_faults = 1_500;
        let mut cluster = Cluster::new(options);
        while cluster.tick() < 300 {
            cluster.step().unwrap();
        }
        cluster.crash(2, false, 400);
        cluster.reformat_for_rejoin(2);
        while cluster.replica(2).is_none_or(|replica| !replica.status().is_open()) {
            cluster.step().unwrap();
        }
        let rejoined = cluster.replica(2).expect("restarted");
        assert!(rejoined.log_faulty(), "a rejoining replica must not vote with its empty log");
        cluster.run().unwrap();
        let rejoined = cluster.replica(2).expect("running");
        assert!(!rejoined.log_faulty());
        assert_eq!(rejoined.commit_min(), cluster.replica(0).unwrap().commit_min());
    }

    #[test]
    fn rejoined_replica_never_lets_a_stale_primary_commit_in_an_old_view() {
        // Goal: the agreement violation of a rejoin that forgets its view. R0, primary of view
        // 0, is cut off from R1 and R2 and prepares ops that never commit; R1 and R2 move to
        // view 1 and commit more. R2 then loses its data file, is rejoined, and can reach only
        // R0: it must not install R0's view-0 log and acknowledge it (R0 would commit its
        // stale ops against view 1's). Once the partition heals it rejoins the cluster's view.
        let seed = 52;
        println!("seed={seed}");
        let mut options = options_quiet(seed, 3);
        options.ticks_faults = 4_000;
        options.ticks_convergence_max = 6_000;
        let mut cluster = Cluster::new(options);
        while cluster.tick() < 300 {
            cluster.step().unwrap();
        }
        let acknowledged = cluster.checker().acknowledged_op_max();
        let restart_tick = 1_500;
        cluster.link_cut(0, 1, LinkDirection::Both, 3_500);
        cluster.link_cut(0, 2, LinkDirection::Both, restart_tick);
        while cluster.tick() < restart_tick - 100 {
            cluster.step().unwrap();
        }
        let view_one = cluster.replica(1).map(Replica::view).unwrap_or(View(0));
        assert!(view_one > View(0), "R1 and R2 moved to a new view");
        assert!(cluster.checker().acknowledged_op_max() > acknowledged + 10);
        cluster.crash(2, false, restart_tick);
        cluster.reformat_for_rejoin(2);
        cluster.link_cut(1, 2, LinkDirection::Both, 3_500);
        while cluster.tick() < 3_400 {
            cluster.step().unwrap();
        }
        cluster.run().unwrap();
        let rejoined = cluster.replica(2).expect("running");
        assert!(!rejoined.log_faulty());
        assert!(rejoined.view() > view_one);
        assert_eq!(rejoined.metrics().rejoin_views_learned, 1);
        assert_eq!(rejoined.commit_min(), cluster.replica(1).unwrap().commit_min());
    }

    #[test]
    fn intact_entries_above_a_faulty_slot_survive_recovery() {
        // Goal: recovery keeps the intact entries above a rotten slot (they may be acknowledged
        // ops no other replica holds) instead of truncating the WAL at the first fault, so
        // that what the replica may have acknowledged is the same at every restart until a
        // primary's log replaces its own. R1 is cut off from its peers so that it cannot.
        let seed = 74;
        println!("seed={seed}");
        let mut cluster = Cluster::new(options_quiet(seed, 3));
        while cluster.tick() < 300 {
            cluster.step().unwrap();
        }
        // Quiet, so that every prepare R1 holds is durable and acknowledged.
        clients_cut_off(&mut cluster, 2_000);
        let quiet_tick = cluster.tick() + 100;
        run_until(&mut cluster, "quiet", 200, |cluster| cluster.tick() >= quiet_tick);
        let backup = cluster.replica(1).expect("running");
        let (head, op) = (backup.op(), backup.commit_min() - 2);
        assert!(op > backup.checkpoint_op() && head > op + 1);
        let above = backup.prepare_header(op + 1).expect("held");
        for peer in [0, 2] {
            cluster.link_cut(1, peer, LinkDirection::Both, 1_000);
        }
        cluster.crash(1, false, cluster.tick() + 10);
        wal_prepare_rot(&mut cluster, 1, op);
        for restart in 0..2 {
            run_until_open(&mut cluster, 1, 300);
            let backup = cluster.replica(1).expect("running");
            assert!(backup.log_faulty(), "restart {restart}");
            assert_eq!(backup.op(), op - 1, "restart {restart}: its chain stops below the fault");
            assert_eq!(backup.prepare_header(op + 1), Some(above), "restart {restart}");
            assert!(backup.op_acknowledged_max() >= head, "restart {restart}");
            cluster.crash(1, false, cluster.tick() + 10);
        }
        cluster.run().unwrap();
    }

    /// Writes into crashed replica `index`'s WAL, both rings, a prepare of the op after
    /// `below` that chains onto it (`below`'s bytes with another timestamp): an entry of a log
    /// that a view change cut.
    fn wal_stale_prepare_put(cluster: &mut Cluster, index: usize, below: &Header) -> Header {
        let node = &mut cluster.replicas[index];
        assert!(node.replica.is_none(), "replica {index} must be down");
        let layout = Layout::new(&node.config);
        let slot_count = u64::from(node.config.journal_slot_count);
        let prepares = layout.zone_offset(Zone::WalPrepares);
        let at = |op: Op| (prepares + (op.get() % slot_count) * layout.message_size_max) as usize;
        let length = (below.size as usize).next_multiple_of(SECTOR_SIZE);
        let mut bytes = node.storage.bytes()[at(below.op)..][..length].to_vec();
        let mut header = *below;
        header.op = below.op + 1;
        header.parent = below.checksum;
        header.timestamp = below.timestamp + 1;
        header.set_checksum();
        bytes[..HEADER_SIZE].copy_from_slice(header.as_bytes());
        node.storage.bytes_mut()[at(header.op)..][..length].copy_from_slice(&bytes);
        let ring = layout.zone_offset(Zone::WalHeaders) as usize
            + header.op.slot(slot_count) * HEADER_SIZE;
        node.storage.bytes_mut()[ring..][..HEADER_SIZE].copy_from_slice(header.as_bytes());
        header
    }

    #[test]
    fn installing_a_views_log_truncates_entries_of_another_log_kept_above_a_fault() {
        // Goal: a replica whose WAL is faulty keeps the intact entries above the fault, but
        // once it installs a view's log none the log does not hold may stay: one that chains
        // onto the log's head (a prepare of the next op that a view change cut) would be taken
        // into the chain at the next open as if it were the view's. R1 comes back with a rotten
        // committed op below its head and such an entry above it, installs the log of view 1
        // (R0 and R2 started it while R1 was down; its head is below that entry), and
        // restarts: its log ends at the view's head.
        let seed = 75;
        println!("seed={seed}");
        let mut cluster = Cluster::new(options_quiet(seed, 3));
        while cluster.tick() < 300 {
            cluster.step().unwrap();
        }
        clients_cut_off(&mut cluster, 3_000);
        let quiet_tick = cluster.tick() + 100;
        run_until(&mut cluster, "quiet", 200, |cluster| cluster.tick() >= quiet_tick);
        let backup = cluster.replica(1).expect("running");
        let head = backup.op();
        assert_eq!(backup.commit_min(), head);
        assert!(head - 2 > backup.checkpoint_op());
        let below = backup.prepare_header(head).expect("held");
        cluster.crash(1, false, cluster.tick() + 300);
        wal_prepare_rot(&mut cluster, 1, head - 2);
        let stale = wal_stale_prepare_put(&mut cluster, 1, &below);
        // R0 restarts too, so that R0 and R2 move to view 1 (log head `head`) while R1 is down.
        cluster.crash(0, false, cluster.tick() + 10);
        run_until(&mut cluster, "R1 installs view 1's log", 700, |cluster| {
            cluster.replica(1).is_some_and(|replica| {
                replica.view() > View(0)
                    && replica.status() == Status::Normal
                    && !replica.log_faulty()
            })
        });
        assert_eq!(cluster.replica(1).expect("running").metrics().logs_faulty_recovered, 1);
        cluster.crash(1, false, cluster.tick() + 10);
        run_until_open(&mut cluster, 1, 400);
        let backup = cluster.replica(1).expect("running");
        assert_eq!(backup.op(), head, "R1's log holds an op the view's does not");
        assert_ne!(backup.prepare_header(head + 1), Some(stale));
        cluster.run().unwrap();
    }

    #[test]
    fn restarted_replica_that_becomes_primary_keeps_timestamps_increasing() {
        // Goal: prepare timestamps strictly increase across a restart and a view change, even
        // when the new primary's clock is two minutes behind the old one's: a backup restarts (its
        // memory of the last timestamp is gone, only its log has it), then the primary crashes
        // and the restarted backup leads the next view. The checker fails the run if a
        // committed prepare's timestamp is not above its parent's.
        let seed = 61;
        println!("seed={seed}");
        let mut options = options_quiet(seed, 3);
        options.ticks_faults = 2_500;
        options.ticks_convergence_max = 3_000;
        let mut cluster = Cluster::new(options);
        cluster.clocks = vec![(60_000_000_000, 0), (-60_000_000_000, 0), (0, 0)];
        while cluster.tick() < 400 {
            cluster.step().unwrap();
        }
        assert!(cluster.checker().acknowledged_op_max() > Op(10));
        clients_cut_off(&mut cluster, 1_300);
        let quiet_tick = cluster.tick() + 100;
        run_until(&mut cluster, "quiet", 200, |cluster| cluster.tick() >= quiet_tick);
        cluster.crash(1, false, cluster.tick() + 5);
        run_until(&mut cluster, "replica 1 back", 500, |cluster| {
            cluster.replica(1).is_some_and(|replica| replica.status() == Status::Normal)
        });
        cluster.crash(0, false, 2_000);
        run_until(&mut cluster, "view 1", 1_000, |cluster| {
            let primary = cluster.replica(1).expect("running");
            primary.view() == View(1) && primary.status() == Status::Normal
        });
        cluster.run().unwrap();
        assert!(
            cluster.checker().acknowledged_op_max().get() > cluster.checker().checked(1).get() / 2
        );
        let raised = cluster.replica(1).expect("running").metrics().timestamps_raised;
        assert!(raised > 0, "the new primary's clock is behind: its timestamps were raised");
    }

    /// Delivers to replica `index` a commit heartbeat from its primary for `commit`, naming
    /// `checksum` as the prepare executed there.
    fn commit_heartbeat_deliver(
        cluster: &mut Cluster,
        index: usize,
        commit: Op,
        checksum: Checksum,
    ) {
        let node = &mut cluster.replicas[index];
        let replica = node.replica.as_mut().expect("running");
        let mut header = Header::new(Command::Commit, cluster.options.config.cluster);
        header.view = replica.view();
        header.replica = replica.primary_index();
        header.commit = commit;
        views::Commit::of(&mut header).set_commit_checksum(checksum);
        header.timestamp = cluster.tick;
        header.size = HEADER_SIZE as u32;
        header.set_checksum_body(&[]);
        header.set_checksum();
        let mut message = node.pool.get();
        *message.header_mut() = header;
        let config = &cluster.options.config;
        let accepted = accept(message, config.cluster, config.message_size_max as usize);
        replica.on_message(&mut node.storage, accepted.expect("a valid commit heartbeat"));
    }

    #[test]
    fn backup_stops_rather_than_diverge_when_the_primary_committed_another_prepare() {
        // Goal: a commit heartbeat names the checksum of the prepare the primary executed at
        // its commit number; a backup that executed another prepare at that op stops rather
        // than go on diverging, and one that agrees carries on.
        let seed = 81;
        println!("seed={seed}");
        let mut cluster = Cluster::new(options_quiet(seed, 3));
        while cluster.tick() < 400 {
            cluster.step().unwrap();
        }
        clients_cut_off(&mut cluster, 10_000);
        let quiet_tick = cluster.tick() + 150;
        run_until(&mut cluster, "quiet", 200, |cluster| cluster.tick() >= quiet_tick);
        let backup = (cluster.primary_index() + 1) % 3;
        let replica = cluster.replica(backup).expect("running");
        let commit = replica.commit_min();
        assert!(commit > Op(5), "{}", replica.debug_state());
        let held = replica.prepare_header(commit).expect("held").checksum;
        commit_heartbeat_deliver(&mut cluster, backup, commit, held);
        assert_eq!(cluster.replica(backup).unwrap().status(), Status::Normal);
        commit_heartbeat_deliver(&mut cluster, backup, commit, held ^ 1);
        let replica = cluster.replica(backup).unwrap();
        assert_eq!(replica.status(), Status::Failed);
        assert_eq!(replica.metrics().commits_refused_checksum, 1);
    }
}
