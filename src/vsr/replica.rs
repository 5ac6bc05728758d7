//! The replica: the VSR state machine that turns client requests into a durable, totally ordered
//! log, commits it, applies it to the event store, and replies. Sans-IO: it never touches a disk,
//! a socket or a clock. This file holds its state, its entry points and their dispatch; each
//! step of the protocol has its own file in `replica/`: `prepare`, `commit`, `checkpoint`,
//! `read`, `view_change`, `repair`, `sync`, `grid_repair`, `open`, `rejoin`, and the
//! `invariants` checked after every input.
//!
//! # Call order
//!
//! 1. `Replica::new(config, pool)` allocates everything the replica will ever use.
//! 2. `open(storage)`, then feed every storage completion to `on_storage_completion` until
//!    `status()` is `Normal` (or `Failed`). Opening reads the superblock, recovers the journal,
//!    opens the event store at the checkpoint, reads the stored client replies, and replays the
//!    WAL from the checkpoint.
//! 3. Then, in any order: `on_message` for each validated message from the bus, `on_tick`
//!    every `TICK_MS` with the driver's realtime clock, and `on_storage_completion`.
//! 4. After each call, drain `poll_send` (messages for clients and peers).
//!
//! # The normal path (one replica)
//!
//! request → (session dedup) → prepare: op + 1, timestamp, `parent` = the previous prepare's
//! checksum, the request's message reused in place → journal write (prepare, then its redundant
//! header) → durable → commit in op order → execute against the event store → reply, stored in
//! the session's client_replies slot. Up to `PIPELINE_PREPARE_QUEUE_MAX` prepares are in flight;
//! requests beyond that wait in a bounded queue. Every `checkpoint_interval_ops` ops the event
//! store writes its checkpoint and the superblock records it, which frees the WAL slots behind
//! it for the ring to wrap.

use std::collections::VecDeque;

use crate::constants::{
    GRID_READS_MAX, HEADER_SIZE, JOURNAL_IOPS_READ_MAX, OUTBOX_LARGE_MAX, PIPELINE_BACKUP_MAX,
    REPAIR_REQUEST_OPS_MAX, REPLICAS_MAX, outbox_max, request_queue_max,
};
use crate::state_machine::{CheckpointState, ReadId, StateMachine};
use crate::stdx::prng::Prng;
use crate::vsr::accept::Accepted;
use crate::vsr::client_sessions::ClientSessions;
use crate::vsr::header::{Checksum, ClientId, Command, Header, Op, ReplicaIndex, View};
use crate::vsr::journal::{self, Journal};
use crate::vsr::layout::{Config, Layout};
use crate::vsr::message_pool::{Message, MessagePool};
use crate::vsr::storage::{Completion, IoOwner, Storage};
use crate::vsr::superblock::SuperBlock;
use crate::vsr::timeout::Timeouts;
use replies::ReplyStore;

mod checkpoint;
mod commit;
mod grid_repair;
mod invariants;
mod open;
mod prepare;
mod read;
mod rejoin;
mod repair;
mod replies;
mod sync;
#[cfg(test)]
mod tests;
mod view_change;

// A window a peer cannot serve whole is never done: its last op waits for the next round.
static_assertions::const_assert!(REPAIR_REQUEST_OPS_MAX < JOURNAL_IOPS_READ_MAX);
static_assertions::const_assert!(REPAIR_REQUEST_OPS_MAX > 0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// `new` done, `open` not called.
    Init,
    /// Opening: see `OpenPhase`.
    Recovering,
    Normal,
    /// Replicated clusters only: between views. The replica has voted to leave its view (or
    /// learned of a newer one) and takes part in the view change: it sends its log to the new
    /// primary, or, as that primary, gathers the logs and installs the canonical one.
    ViewChange,
    /// The replica stopped rather than diverge (a disk write failed, or the data file cannot be
    /// recovered). `failure()` says why.
    Failed,
}

impl Status {
    /// Open and serving its role: normal, or between views.
    pub fn is_open(self) -> bool {
        matches!(self, Status::Normal | Status::ViewChange)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpenPhase {
    Superblock,
    Journal,
    StateMachine,
    ClientReplies,
    Replay,
    /// The journal truncates what the replay did not follow.
    Truncate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CheckpointPhase {
    Idle,
    StateMachine { op: Op, checksum: Checksum },
    ClientReplies { op: Op, checksum: Checksum },
    Superblock { op: Op },
}

/// What a superblock update in flight is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuperblockUpdate {
    Checkpoint,
    StateSync,
    /// A view or log_view (or `log_lost`) change.
    View,
}

/// Where a message from `poll_send` goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    Client(ClientId),
    Replica(ReplicaIndex),
}

/// The head of this replica's log: its highest op and that prepare's checksum (the next
/// prepare's parent). It moves one op at a time along the hash chain (`extend`), or jumps where
/// the log is reopened, cut back or restarted at a checkpoint (`reset`).
#[derive(Clone, Copy, Debug)]
struct LogHead {
    op: Op,
    checksum: Checksum,
}

impl LogHead {
    fn op(&self) -> Op {
        self.op
    }

    fn checksum(&self) -> Checksum {
        self.checksum
    }

    /// Moves to `header`, the prepare after the head in the hash chain.
    fn extend(&mut self, header: &Header) {
        assert_eq!(header.command(), Some(Command::Prepare), "only prepares make up the log");
        assert_eq!(header.op, self.op + 1, "the head moves one op at a time");
        assert_eq!(header.parent, self.checksum, "the next prepare chains to the head");
        self.op = header.op;
        self.checksum = header.checksum;
    }

    /// Moves to the prepare (`op`, `checksum`) outside the chain's order: the log reopened at
    /// a checkpoint, or cut back to where it agrees with a canonical log.
    fn reset(&mut self, op: Op, checksum: Checksum) {
        self.op = op;
        self.checksum = checksum;
    }
}

/// A request the primary queued: which client, which request number, in which epoch of the
/// queue (`Replica::request_marks`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct RequestMark {
    client: ClientId,
    request: u32,
    epoch: u32,
}

struct Prepared {
    message: Message,
    /// This replica's own copy is in its WAL.
    durable: bool,
    /// Replicas known to hold it durably (bit i: replica i), this one included once durable.
    ok_from: u8,
    /// Backup: this replica sent its prepare_ok for it in the current view.
    acknowledged: bool,
}

/// Why the replica asked the journal for a prepare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JournalReadPurpose {
    /// To execute it: replay at open, or a commit whose prepare is no longer in memory.
    Commit,
    /// To send it to a replica that asked for it (`request_prepare`).
    Repair { replica: ReplicaIndex },
    /// A new primary's uncommitted op that only its WAL holds, for its pipeline.
    Pipeline,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct JournalRead {
    op: Op,
    checksum: Checksum,
    purpose: JournalReadPurpose,
}

/// The fields of a reply that come from its request or prepare.
struct ReplyFields {
    op: Op,
    commit: Op,
    timestamp: u64,
    client: ClientId,
    request: u32,
    operation: u8,
    request_checksum: Checksum,
}

/// Where the replica stands, for the metrics endpoint: what a scrape reads besides `Metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    pub primary: bool,
    /// State sync is fetching a checkpoint (or waiting for one, its own being lost).
    pub syncing: bool,
    /// The replica lost its data file and has not caught up with the cluster yet.
    pub rejoining: bool,
    pub view: u64,
    pub op: u64,
    pub commit_min: u64,
    /// The highest commit this replica knows the cluster reached.
    pub commit_max: u64,
    pub checkpoint_op: u64,
    /// WAL entries to repair: ones whose prepare this replica lacks or holds a wrong version of
    /// (dirty), and ones whose bytes on disk are bad (faulty).
    pub journal_dirty: u64,
    pub journal_faulty: u64,
    /// The grid block state sync fetches next, and the grid head it fetches up to (0 and 0 when
    /// it is not syncing).
    pub sync_block_next: u64,
    pub sync_block_end: u64,
    /// Bytes of grid in use, and left for events before `storage_full`.
    pub grid_used_bytes: u64,
    pub grid_room_bytes: u64,
    /// The cluster's grid, in blocks.
    pub grid_limit_blocks: u64,
    pub client_sessions: u64,
}

crate::vsr::counters::counters! {
/// Counters for operators and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    pub requests_received: u64,
    pub requests_dropped: u64,
    /// State-sync chunks of a block fetched again that waited for the writes of its failed
    /// attempt to land (which may otherwise complete after the new ones).
    pub sync_chunks_deferred_behind_writes: u64,
    /// Chunks of the client_replies zone whose read failed at open, read again a sector at a
    /// time.
    pub client_replies_chunks_unreadable: u64,
    /// Messages the replica dropped because its outbox was full (the bus was not draining it).
    pub messages_dropped_outbox_full: u64,
    /// Requests answered `busy` because there was no room for them (the primary's request
    /// queue, or the table of reads in flight, was full): the client sends them again soon.
    pub requests_busy: u64,
    pub replies_resent: u64,
    pub evictions_sent: u64,
    pub ops_committed: u64,
    pub ops_replayed: u64,
    pub checkpoints: u64,
    pub reads_served: u64,
    /// Views this replica became normal in (as primary or backup).
    pub views_started: u64,
    /// Messages from peers dropped because their body contradicts their header.
    pub messages_invalid: u64,
    /// Log entries truncated because a newer view's log does not hold them.
    pub ops_truncated: u64,
    /// Ops a new primary cut from the canonical log's head because a nack quorum lacks them
    /// (they cannot have committed); the replicas that hold them truncate them later.
    pub ops_truncated_by_nacks: u64,
    /// Checkpoints installed by state sync.
    pub state_syncs: u64,
    /// Blocks whose state-sync chunks were dropped, half gathered, because their one source
    /// left `BLOCK_SOURCE_UNANSWERED_MAX` requests unanswered: another peer is asked.
    pub sync_sources_silent: u64,
    /// Rejoins after a lost data file that learned the cluster's view and joined above it.
    pub rejoin_views_learned: u64,
    /// Views entered while a superblock update (checkpoint, state sync or view) was in flight:
    /// the new view is persisted by a second update once that one completes.
    pub view_change_during_superblock_update: u64,
    /// Views entered while state sync was under way.
    pub view_change_during_state_sync: u64,
    /// Commit numbers refused because the checksum the primary committed at that op is not
    /// the prepare this replica holds there (it repairs instead of executing its own).
    pub commits_refused_checksum: u64,
    /// Commits held back because state sync was under way (the event store is about to be
    /// replaced by the checkpoint's).
    pub commits_frozen_by_state_sync: u64,
    /// Prepare timestamps raised above the wall clock to stay above the log's head (a clock
    /// behind the previous primary's, or a replica that restarted).
    pub timestamps_raised: u64,
    /// WAL entries passed over when this replica listed its log's headers (do_view_change,
    /// start_view, headers), because they do not chain with its log: stale entries of another
    /// view, such as the one at the checkpoint op after state sync.
    pub log_headers_stale: u64,
    /// Grid blocks fetched again from a peer because the open found them bad (the
    /// checkpoint's streams table).
    pub grid_blocks_repaired_open: u64,
    /// Blocks of a checkpoint state sync installed fetched by its open: the sync copied only
    /// the blocks above this replica's grid head, and the checkpoint's own were below it.
    pub grid_blocks_repaired_sync_open: u64,
    /// Grid blocks fetched again from a peer because a read found them bad.
    pub grid_blocks_repaired_read: u64,
    /// Grid blocks fetched again from a peer because the scrubber found them bad.
    pub grid_blocks_repaired_scrub: u64,
    /// Grid blocks the scrubber read and verified (sound or not).
    pub grid_blocks_scrubbed: u64,
    /// Grid blocks the scrubber found bad.
    pub grid_blocks_scrub_faulty: u64,
    /// Blocks checkpoints wrote into the blocks of an older checkpoint.
    pub grid_blocks_reused: u64,
    /// Committed prepares that grew the cluster's grid (the first op's setting it excluded).
    pub grid_limit_grown: u64,
    /// Reads held for events to commit (`wait_ms`); answered once one did, or once their wait
    /// ran out; answered at once for want of a free entry in the table.
    pub reads_parked: u64,
    pub reads_parked_woken: u64,
    pub reads_parked_expired: u64,
    pub reads_parked_full: u64,
    /// Linearizable reads answered; dropped as their primary left its view; noops prepared
    /// for them with nothing else to prepare.
    pub reads_linearizable: u64,
    pub reads_linearizable_dropped: u64,
    pub reads_linearizable_noops: u64,
    /// Checkpoints that copied a partly filled open block into a tail instead of sealing it.
    pub checkpoint_tails: u64,
    /// Blocks from peers refused for grid repair (torn in transit, or not the block asked for).
    pub grid_repair_blocks_refused: u64,
    /// Opens of a checkpoint given up because a block it names is held by no peer any more
    /// (they reused it): state sync fetches a newer checkpoint instead. At startup, and of a
    /// checkpoint state sync had just installed.
    pub checkpoint_opens_abandoned: u64,
    pub sync_opens_abandoned: u64,
    /// Prepares not taken (backup) or not started (primary) because every journal write was
    /// in flight: a slow disk.
    pub prepares_deferred_journal_busy: u64,
    /// Client appends the primary packed with others into one `append_packed` prepare.
    pub requests_packed: u64,
    /// Prepares a backup dropped because they lay beyond its WAL window (it had not yet
    /// checkpointed far enough): it fetches them again through repair.
    pub prepares_dropped_window: u64,
    /// Prepares a backup dropped because its pipeline was full (`PIPELINE_BACKUP_MAX`).
    pub prepares_dropped_pipeline_full: u64,
    /// Opens whose WAL had faulty entries that may hide acknowledged prepares (the intact
    /// entries above them are kept, and the replica still votes in view changes).
    pub logs_faulty_recovered: u64,
    /// do_view_change messages sent with a faulty WAL (nacks only above what it may have
    /// acknowledged).
    pub view_change_votes_with_faulty_slots: u64,
    /// View-change quorums a new primary could not decide on yet: a faulty replica in it may
    /// have acknowledged ops beyond every sound log in it, so it waited for more logs.
    pub view_change_waits_for_faulty: u64,
    /// start_view messages of a faulty log's own view, below what it may have acknowledged,
    /// installed because they answered its own request_start_view.
    pub start_views_below_acknowledged: u64,
    /// View changes whose canonical log was a faulty one (no sound log could be, and nothing
    /// above its head can have committed).
    pub view_change_canonical_faulty: u64,
    /// do_view_change quorums a restarted primary declined for the view whose log it had.
    pub view_change_refused_own_log_view: u64,
    /// Intact entries above the match point that a log truncation kept because the log being
    /// installed holds them.
    pub log_entries_kept_at_truncation: u64,
    /// Requests of a client with no session yet, whose register a new primary's pipeline was
    /// committing again: answered with a pong instead of an eviction.
    pub requests_awaiting_register: u64,
    /// Writes of a client with no session here dropped rather than evicted, because the client
    /// knew of a newer view than this replica.
    pub requests_from_newer_view: u64,
    /// Times a primary whose prepares stopped committing fell silent so that its backups elect
    /// another.
    pub abdications: u64,
}
}

pub struct Replica {
    config: Config,
    layout: Layout,
    pool: MessagePool,
    status: Status,
    failure: Option<&'static str>,
    open_phase: OpenPhase,
    superblock: SuperBlock,
    journal: Journal,
    state_machine: StateMachine,
    sessions: ClientSessions,
    replies: ReplyStore,
    view: View,
    /// The latest view in which this replica's log was normal (it accepted that view's log).
    log_view: View,
    /// What the superblock holds (view, log_view): the replica sends nothing that claims a
    /// view, or a log of a view, before it is durable.
    view_durable: View,
    log_view_durable: View,
    /// The (view, log_view) of the superblock update in flight, if any.
    superblock_writing: Option<(View, View)>,
    /// The log holds entries that recovery found faulty (or it was lost, `log_lost`): until a
    /// primary's log replaces them, this replica acknowledges nothing. With faulty entries it
    /// still sends a do_view_change, whose nacks count only above `op_acknowledged_max`.
    log_faulty: bool,
    /// While `log_faulty`: the highest op this replica may have acknowledged in `log_view`,
    /// what faulty WAL entries may hide (`RecoveryReport::op_acknowledged_max`). Cleared once
    /// a log replaces them: a newer view's, or its view's from a start_view that answers its
    /// own request (`ViewChangeState::start_view_nonce`).
    op_acknowledged_max: Op,
    /// The lowest op from which the WAL's entries hash-chain up to the checkpoint's prepare.
    /// Below it an entry may be another log's (an older view's prepare that state sync skipped
    /// over): this replica neither reports nor serves it as its log's.
    log_chained_from: Op,
    view_change: view_change::ViewChangeState,
    rejoin: rejoin::RejoinState,
    target: repair::LogTarget,
    sync: sync::SyncState,
    grid_repair: grid_repair::GridRepair,
    /// The replica's one source of randomness (jitter, nonces, where the scrubber starts),
    /// seeded by the driver.
    prng: Prng,
    /// Every timer (`timeout.rs`).
    timeouts: Timeouts,
    /// Why the last dropped peer message was invalid.
    invalid_last: Option<&'static str>,
    /// The head of the log: the highest op prepared, and its checksum.
    head: LogHead,
    /// The highest op executed.
    commit_min: Op,
    /// The highest op known committed.
    commit_max: Op,
    /// The checksum of the prepare at `commit_min`.
    commit_checksum: Checksum,
    checkpoint_op: Op,
    checkpoint: CheckpointPhase,
    /// The event store's part of the checkpoint in progress, once written.
    checkpoint_state: Option<CheckpointState>,
    timestamp_last: u64,
    realtime_ns: u64,
    ticks: u64,
    pipeline: VecDeque<Prepared>,
    request_queue: VecDeque<Message>,
    /// Queued requests in full-size buffers (at most `REQUEST_QUEUE_LARGE_MAX`).
    request_queue_large: usize,
    /// Per session slot, the latest request the primary queued in this epoch of its queue (see
    /// `request_in_flight`), so that telling a retry from a new request scans nothing.
    request_marks: Vec<RequestMark>,
    /// Starts again (and outdates every mark) whenever the queue is dropped, at a view change.
    request_epoch: u32,
    /// The first op this primary prepared in the current epoch: prepares below it in the
    /// pipeline came from an earlier view and have no marks.
    request_epoch_op: Option<Op>,
    outbox: VecDeque<(Destination, Message)>,
    /// Messages in `outbox` in full-size buffers (at most `OUTBOX_LARGE_MAX`).
    outbox_large: usize,
    reads: Vec<Option<(ReadId, Header)>>,
    /// Reads held until an event they ask for commits (`read::read_park`): one entry per
    /// client, `clients_max` of them; `reads_parked_count` are taken.
    reads_parked: Vec<Option<read::ParkedRead>>,
    reads_parked_count: usize,
    /// The log's next position and the number of streams when parked reads were last woken.
    reads_parked_seen: (u64, u32),
    /// Primary: linearizable reads waiting for an op prepared after them to commit, one entry
    /// per client, `clients_max` of them (`read::read_linearizable_start`).
    reads_linearizable: Vec<Option<read::LinearizableRead>>,
    reads_linearizable_count: usize,
    journal_reads: Vec<JournalRead>,
    /// Primary: per replica, its commit number as it last reported it (in prepare_ok and
    /// ping), and the tick it was last heard.
    backup_commit: [Op; REPLICAS_MAX],
    backup_heard_tick: [u64; REPLICAS_MAX],
    /// Per replica, its own grid in blocks as it last announced it in a prepare_ok (0: not
    /// heard since this replica started): what the primary stamps in prepares is the smallest.
    grid_blocks_announced: [u64; REPLICAS_MAX],
    /// The commit number last announced to backups (`TimeoutKind::CommitHeartbeat` since).
    commit_heartbeat_sent: Op,
    /// The last op of the window `repair_request` asked for last.
    repair_requested_end: Op,
    metrics: Metrics,
    /// `Metrics::log_headers_stale`, counted where the replica is only read.
    log_headers_stale: std::cell::Cell<u64>,
}

impl Replica {
    /// Allocates every table, pool and queue the replica will ever use. `pool` holds buffers of
    /// `message_size_max` bytes, shared with the message bus.
    pub fn new(config: &Config, pool: MessagePool, seed: u64) -> Replica {
        assert!(config.invalid().is_none());
        assert!(pool.buffer_size() >= config.message_size_max as usize);
        // Votes, acknowledgements and the per-replica tables are sized for `REPLICAS_MAX`.
        assert!(usize::from(config.replica_count) <= REPLICAS_MAX);
        assert!(config.replica.get() < config.replica_count);
        let clients_max = config.clients_max as usize;
        Replica {
            config: *config,
            layout: Layout::new(config),
            pool,
            status: Status::Init,
            failure: None,
            open_phase: OpenPhase::Superblock,
            superblock: SuperBlock::new(),
            journal: Journal::new(config),
            state_machine: StateMachine::new(config),
            sessions: ClientSessions::new(clients_max),
            replies: ReplyStore::new(clients_max, config.message_size_max as usize),
            view: View(0),
            log_view: View(0),
            view_durable: View(0),
            log_view_durable: View(0),
            superblock_writing: None,
            log_faulty: false,
            op_acknowledged_max: Op(0),
            log_chained_from: Op(0),
            view_change: view_change::ViewChangeState::new(),
            rejoin: rejoin::RejoinState::new(),
            target: repair::LogTarget::new(config.journal_slot_count as usize),
            sync: sync::SyncState::new(clients_max),
            grid_repair: grid_repair::GridRepair::new(),
            prng: Prng::new(seed),
            timeouts: Timeouts::new(),
            invalid_last: None,
            head: LogHead { op: Op(0), checksum: Checksum(0) },
            commit_min: Op(0),
            commit_max: Op(0),
            commit_checksum: Checksum(0),
            checkpoint_op: Op(0),
            checkpoint: CheckpointPhase::Idle,
            checkpoint_state: None,
            timestamp_last: 0,
            realtime_ns: 0,
            ticks: 0,
            pipeline: VecDeque::with_capacity(PIPELINE_BACKUP_MAX),
            request_queue: VecDeque::with_capacity(request_queue_max(clients_max)),
            request_queue_large: 0,
            request_marks: vec![RequestMark::default(); clients_max],
            request_epoch: 1,
            request_epoch_op: None,
            outbox: VecDeque::with_capacity(outbox_max(clients_max)),
            outbox_large: 0,
            reads: (0..GRID_READS_MAX).map(|_| None).collect(),
            reads_parked: vec![None; clients_max],
            reads_parked_count: 0,
            reads_parked_seen: (0, 0),
            reads_linearizable: vec![None; clients_max],
            reads_linearizable_count: 0,
            journal_reads: Vec::with_capacity(JOURNAL_IOPS_READ_MAX),
            backup_commit: [Op(0); REPLICAS_MAX],
            backup_heard_tick: [0; REPLICAS_MAX],
            grid_blocks_announced: [0; REPLICAS_MAX],
            commit_heartbeat_sent: Op(0),
            repair_requested_end: Op(0),
            metrics: Metrics::default(),
            log_headers_stale: std::cell::Cell::new(0),
        }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn failure(&self) -> Option<&'static str> {
        self.failure
    }

    pub fn metrics(&self) -> Metrics {
        Metrics { log_headers_stale: self.log_headers_stale.get(), ..self.metrics }
    }

    pub fn gauges(&self) -> Gauges {
        let (sync_block_next, sync_block_end) = self.sync.progress();
        let (grid_used_bytes, grid_room_bytes) = self.state_machine.grid_use();
        Gauges {
            primary: self.status == Status::Normal && self.is_primary(),
            syncing: self.sync.active(),
            rejoining: self.rejoin.learning || self.log_faulty,
            view: u64::from(self.view.get()),
            op: self.head.op().get(),
            commit_min: self.commit_min.get(),
            commit_max: self.commit_max.get(),
            checkpoint_op: self.checkpoint_op.get(),
            journal_dirty: self.journal.dirty_count() as u64,
            journal_faulty: self.journal.faulty_count() as u64,
            sync_block_next,
            sync_block_end,
            grid_used_bytes,
            grid_room_bytes,
            grid_limit_blocks: self.state_machine.grid_blocks_limit(),
            client_sessions: self.sessions.count() as u64,
        }
    }

    pub fn op(&self) -> Op {
        self.head.op()
    }

    pub fn commit_min(&self) -> Op {
        self.commit_min
    }

    /// The grid blocks of the durable checkpoint's streams table and tail, once no checkpoint,
    /// state sync or open is in progress.
    pub fn checkpoint_blocks(&self) -> Option<&[u32]> {
        if self.checkpoint != CheckpointPhase::Idle || self.sync.active() {
            return None;
        }
        self.state_machine.checkpoint_blocks()
    }

    /// False for a grid block of the free list or of a checkpoint being written, whose bytes
    /// matter to no checkpoint (and may differ between replicas).
    pub fn grid_block_settled(&self, address: u64) -> bool {
        self.state_machine.block_settled(address)
    }

    /// Event blocks the event store sealed so far.
    pub fn event_blocks(&self) -> u64 {
        self.state_machine.event_blocks()
    }

    /// The event store's part of the durable checkpoint (where its grid ends, and its streams
    /// table); all zero until the superblock is open.
    pub fn checkpoint_state(&self) -> CheckpointState {
        if self.open_phase == OpenPhase::Superblock {
            return CheckpointState::default();
        }
        self.superblock.working().vsr_state().checkpoint_state()
    }

    /// Opening, and waiting for a peer's copy of a grid block of the checkpoint (the driver
    /// keeps the bus and the ticks running meanwhile).
    pub fn open_waits_for_peers(&self) -> bool {
        self.status == Status::Recovering
            && self.open_phase == OpenPhase::StateMachine
            && self.grid_repair.pending_count() > 0
    }

    /// Queues grid block `address` for repair as the scrubber would (for tests that make a
    /// replica fetch a block whose own copy is sound). Returns whether it is queued.
    #[cfg(test)]
    pub(crate) fn grid_fault_queue_scrub(&mut self, address: u64) -> bool {
        let block = crate::state_machine::BlockFault { address, checksum: None };
        self.grid_fault_queue(block, grid_repair::RepairCause::Scrub)
    }

    /// The start_view this primary would send `replica` now (for tests that deliver it
    /// late); whatever else it had to send is dropped.
    #[cfg(test)]
    pub(crate) fn start_view_take(&mut self, replica: ReplicaIndex) -> Message {
        self.send_start_view(replica, 0);
        let mut found = None;
        while let Some((_, message)) = self.poll_send() {
            if message.header().command() == Some(Command::StartView) {
                found = Some(message);
            }
        }
        found.expect("a start_view")
    }

    /// Grid blocks found bad and not yet repaired from a peer.
    pub fn grid_faults_pending(&self) -> usize {
        self.grid_repair.pending_count()
    }

    pub fn checkpoint_op(&self) -> Op {
        self.checkpoint_op
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn view(&self) -> View {
        self.view
    }

    /// Recovery found faulty entries that a primary's log has not replaced yet (or the log was
    /// lost): until then this replica acknowledges nothing.
    pub fn log_faulty(&self) -> bool {
        self.log_faulty
    }

    /// The highest op this replica may have acknowledged: its log's head, or, while its WAL
    /// has faulty entries, what they may hide (`RecoveryReport::op_acknowledged_max`).
    pub fn op_acknowledged_max(&self) -> Op {
        if self.log_faulty { self.head.op().max(self.op_acknowledged_max) } else { self.head.op() }
    }

    /// The data file was lost and formatted again (`format --rejoin`), and the superblock does
    /// not yet say that the replica holds the cluster's log: it takes no part in view changes,
    /// and if it restarts it learns the cluster's view again.
    pub fn log_lost_pending(&self) -> bool {
        self.superblock.opened() && self.superblock.working().vsr_state.log_lost != 0
    }

    /// Which part of the superblock lags what the replica holds with no update in flight to
    /// bring it up to date (`None` if none does): a restart would forget it.
    fn superblock_stale(&self) -> Option<&'static str> {
        if !self.status.is_open() || self.superblock_writing.is_some() {
            return None;
        }
        let working = self.superblock.working();
        if self.log_lost() != working.vsr_state.log_lost {
            return Some("log_lost");
        }
        None
    }

    /// The log this replica is installing reaches further back than its peers' WAL window, or
    /// its checkpoint could not be opened: it catches up by state sync.
    pub fn needs_state_sync(&self) -> bool {
        self.target.beyond_window() || self.sync.state_lost()
    }

    /// The cluster's grid in blocks, as of the last executed op (0 before any): what the
    /// committed log may use, the smallest of the replicas' own grids once all were heard.
    pub fn grid_blocks_limit(&self) -> u64 {
        self.state_machine.grid_blocks_limit()
    }

    /// The grid's free list (blocks no checkpoint needs), while no checkpoint is written.
    pub fn grid_free_blocks(&self) -> Option<&[u32]> {
        self.checkpoint_blocks()?;
        Some(self.state_machine.free_blocks())
    }

    /// The superblock update in flight, if any (for the simulator's slow-disk spells).
    pub fn superblock_updating(&self) -> Option<SuperblockUpdate> {
        self.superblock_writing?;
        Some(if matches!(self.checkpoint, CheckpointPhase::Superblock { .. }) {
            SuperblockUpdate::Checkpoint
        } else if self.sync.superblock_writing() {
            SuperblockUpdate::StateSync
        } else {
            SuperblockUpdate::View
        })
    }

    /// State sync is under way (from asking for a checkpoint to reopening the event store).
    pub fn state_syncing(&self) -> bool {
        self.sync.active()
    }

    /// State sync is writing the checkpoint it fetched into the superblock, or opening it.
    pub fn sync_installing(&self) -> bool {
        self.sync.superblock_writing() || self.sync.reopening()
    }

    /// New primary in a view change: it chose the canonical log and is installing it.
    #[cfg(test)]
    pub(crate) fn view_change_log_chosen(&self) -> bool {
        self.status == Status::ViewChange && self.view_change.log_chosen
    }

    /// The durable view: what the superblock holds.
    pub fn view_durable(&self) -> View {
        self.view_durable
    }

    /// Why the last peer message this replica dropped as invalid was, if any was.
    pub fn invalid_last(&self) -> Option<&'static str> {
        self.invalid_last
    }

    /// The WAL still holds entries found faulty (rotten sectors not yet overwritten).
    pub fn journal_faulty(&self) -> bool {
        self.journal.status() == journal::Status::Recovered && self.journal.faulty_count() > 0
    }

    /// The header of the prepare this replica holds at `op`, if its WAL still has it (for
    /// checkers and tests).
    pub fn prepare_header(&self, op: Op) -> Option<Header> {
        if self.journal.status() != journal::Status::Recovered || op < self.log_chained_from {
            return None;
        }
        self.journal.header_with_op(op).copied()
    }

    /// A one-line summary of the replica's progress, for failure reports.
    pub fn debug_state(&self) -> String {
        format!(
            "replica {} {:?} ({:?}) view {} log_view {} op {} commit_min {} commit_max {} \
             checkpoint {} pipeline {} reads {} target {} durable {}/{} faulty {} dvc {} chosen {}",
            self.config.replica,
            self.status,
            self.open_phase,
            self.view,
            self.log_view,
            self.head.op(),
            self.commit_min,
            self.commit_max,
            self.checkpoint_op,
            self.pipeline.len(),
            self.journal_reads.len(),
            self.target.describe(),
            self.view_durable,
            self.log_view_durable,
            self.log_faulty,
            self.view_change.records.iter().filter(|record| record.received).count(),
            self.view_change.log_chosen,
        )
    }

    /// The primary of the current view.
    pub fn primary_index(&self) -> ReplicaIndex {
        self.view.primary(self.config.replica_count)
    }

    pub fn is_primary(&self) -> bool {
        self.primary_index() == self.config.replica
    }

    /// The primary of `view`.
    pub fn primary_index_of(&self, view: View) -> ReplicaIndex {
        view.primary(self.config.replica_count)
    }

    /// Replicas that must hold a prepare durably before it commits: a majority.
    pub fn quorum_replication(&self) -> usize {
        usize::from(self.config.replica_count) / 2 + 1
    }

    /// Replicas whose logs a new primary gathers: any such quorum intersects every
    /// replication quorum, so it holds every committed op.
    pub fn quorum_view_change(&self) -> usize {
        usize::from(self.config.replica_count) - self.quorum_replication() + 1
    }

    /// Replicas that must lack an op for it to be certainly uncommitted: the others are too
    /// few to have formed a replication quorum.
    pub fn quorum_nack(&self) -> usize {
        usize::from(self.config.replica_count) - self.quorum_replication() + 1
    }

    fn prng_next(&mut self) -> u64 {
        self.prng.next_u64()
    }

    /// The next message to send, if any.
    pub fn poll_send(&mut self) -> Option<(Destination, Message)> {
        let (destination, message) = self.outbox.pop_front()?;
        if self.pool.is_large(&message) {
            self.outbox_large -= 1;
        }
        Some((destination, message))
    }

    fn fail(&mut self, reason: &'static str) {
        assert_eq!(self.status == Status::Failed, self.failure.is_some());
        if self.status != Status::Failed {
            self.status = Status::Failed;
            self.failure = Some(reason);
        }
    }

    fn send(&mut self, destination: Destination, message: Message) {
        assert!(message.header().valid_checksum(), "only finished messages are sent");
        assert_eq!(message.header().cluster, self.config.cluster);
        if let Destination::Replica(replica) = destination {
            assert_ne!(replica, self.config.replica, "a replica sends nothing to itself");
            assert!(replica.get() < self.config.replica_count);
        }
        // A full outbox means the bus is not draining: dropping is safe (clients retry, and so
        // does the protocol) and keeps memory bounded.
        let large = self.pool.is_large(&message);
        let outbox_max = outbox_max(self.config.clients_max as usize);
        if self.outbox.len() < outbox_max && !(large && self.outbox_large >= OUTBOX_LARGE_MAX) {
            self.outbox.push_back((destination, message));
            self.outbox_large += usize::from(large);
        } else {
            self.metrics.messages_dropped_outbox_full += 1;
        }
    }

    /// Advances time. `realtime_ns` is the driver's wall clock, used for prepare timestamps.
    pub fn on_tick<S: Storage>(&mut self, storage: &mut S, realtime_ns: u64) {
        self.tick_step(storage, realtime_ns);
        self.invariants();
    }

    /// A message from the network, as `accept` let it through (`src/vsr/accept.rs`): its
    /// header's checksum and `invalid()`, its cluster, size, command and body checksum checked.
    pub fn on_message<S: Storage>(&mut self, storage: &mut S, accepted: Accepted) {
        assert_eq!(accepted.header().cluster, self.config.cluster);
        self.message_step(storage, accepted.into_message());
        self.invariants();
    }

    /// A finished disk operation.
    pub fn on_storage_completion<S: Storage>(&mut self, storage: &mut S, completion: Completion) {
        assert_ne!(self.status, Status::Init, "no I/O is submitted before open");
        self.completion_step(storage, completion);
        self.invariants();
    }

    fn tick_step<S: Storage>(&mut self, storage: &mut S, realtime_ns: u64) {
        self.ticks += 1;
        self.timeouts.tick();
        self.realtime_ns = realtime_ns;
        if self.status == Status::Recovering && self.open_phase == OpenPhase::StateMachine {
            // The open may wait for a block of the streams table from a peer.
            return self.grid_repair_tick(storage);
        }
        if !self.status.is_open() {
            return;
        }
        if self.rejoin.learning {
            return self.rejoin_tick();
        }
        self.grid_repair_tick(storage);
        self.reads_parked_wake(storage);
        self.reads_linearizable_serve(storage);
        if self.sync.state_lost() && !self.target.active() {
            // No log target drives it (`repair_progress`): the checkpoint is what it lacks.
            self.sync_progress(storage);
        }
        if self.config.replica_count > 1 {
            self.view_change_tick(storage);
        }
        if self.status == Status::ViewChange {
            self.repair_tick(storage);
            return;
        }
        if self.is_primary() {
            self.request_queue_drain(storage);
            self.prepare_timeout();
            self.commit_heartbeat();
        } else {
            self.ping_tick();
            self.repair_tick(storage);
            if self.commit_max > self.commit_min || self.commit_max > self.head.op() {
                self.commit_pipeline(storage);
            }
        }
    }

    fn message_step<S: Storage>(&mut self, storage: &mut S, message: Message) {
        let header = *message.header();
        assert!(header.valid_checksum());
        assert_eq!(header.cluster, self.config.cluster);
        let command = header.command().expect("accept checked the command");
        let opening =
            self.status == Status::Recovering && self.open_phase == OpenPhase::StateMachine;
        if opening
            && command == Command::Block
            && header.replica < ReplicaIndex(self.config.replica_count)
        {
            // The open waits for a block of the streams table that failed its checks.
            return self.on_block(storage, &message);
        }
        if command == Command::PingClient && self.status == Status::Recovering {
            // `kimberlite status` asks an opening replica too.
            return self.on_ping_client(&header);
        }
        if !self.status.is_open() {
            return;
        }
        if self.rejoin.learning {
            // It acts in no view, and claims none, until it knows the cluster's (`rejoin.rs`).
            let peer = header.replica < ReplicaIndex(self.config.replica_count)
                && header.replica != self.config.replica;
            if command == Command::Pong && peer {
                self.on_pong(storage, &header);
            }
            return;
        }
        if matches!(command, Command::Request | Command::PingClient) {
            return match command {
                Command::Request => self.on_request(storage, message),
                _ => self.on_ping_client(&header),
            };
        }
        // From a peer: it must name a replica of this cluster other than this one. A prepare
        // names the primary that made it, which need not be the sender (repair, or a new
        // primary sending an older view's prepare again); it is trusted for its checksum.
        let replica_count = self.config.replica_count;
        if header.replica >= ReplicaIndex(replica_count) {
            return;
        }
        if command == Command::Prepare {
            // Possibly this replica's own, from a view it led, sent back by repair.
            return self.on_prepare(storage, message);
        }
        if header.replica == self.config.replica {
            return;
        }
        match command {
            Command::Ping if self.on_view_query(&header) => return,
            Command::Pong => return self.on_pong(storage, &header),
            Command::StartViewChange => return self.on_start_view_change(storage, &header),
            Command::DoViewChange => return self.on_do_view_change(storage, &message),
            Command::StartView => return self.on_start_view(storage, &message),
            Command::RequestStartView => return self.on_request_start_view(&header),
            Command::RequestHeaders => return self.on_request_headers(&header),
            Command::Headers => return self.on_headers(storage, &message),
            Command::RequestPrepare => return self.on_request_prepare(storage, &header),
            Command::RequestSyncCheckpoint => return self.on_request_sync_checkpoint(&header),
            Command::SyncCheckpoint => return self.on_sync_checkpoint(storage, &message),
            Command::RequestBlocks => return self.on_request_blocks(storage, &message),
            Command::Block => return self.on_block(storage, &message),
            _ => {}
        }
        if header.view > self.view {
            // A normal replica of a newer view: this one missed that view change.
            return self.view_jump(storage, header.view);
        }
        if header.view < self.view || self.status != Status::Normal {
            return;
        }
        self.backup_heard_tick[usize::from(header.replica)] = self.ticks;
        match command {
            Command::PrepareOk => self.on_prepare_ok(storage, &header),
            Command::Commit => self.on_commit(storage, &header),
            Command::Ping => self.on_ping(&header),
            _ => {}
        }
    }

    /// Routes a finished disk operation to its owner.
    fn completion_step<S: Storage>(&mut self, storage: &mut S, completion: Completion) {
        match completion.request.token.owner {
            IoOwner::Superblock => {
                self.superblock.on_completion(storage, completion);
                self.superblock_progress(storage);
            }
            IoOwner::JournalPrepare | IoOwner::JournalHeaders | IoOwner::JournalRead => {
                self.journal.on_completion(storage, completion);
                self.journal_events(storage);
            }
            IoOwner::Grid => {
                self.state_machine.on_completion(storage, completion);
                self.state_machine_progress(storage);
            }
            IoOwner::ClientReplies => self.client_replies_complete(storage, completion),
            IoOwner::Sync => self.sync_storage_complete(storage, completion),
            IoOwner::Format | IoOwner::Benchmark => {
                panic!("replica received a completion it did not submit")
            }
        }
    }

    fn on_ping_client(&mut self, header: &Header) {
        assert_eq!(header.command(), Some(Command::PingClient));
        self.send_pong_client(header);
    }

    /// A pong carries this replica's view, from which a client finds the primary.
    fn send_pong_client(&mut self, header: &Header) {
        assert!(matches!(header.command(), Some(Command::Request | Command::PingClient)));
        let mut pong = self.header_new(Command::PongClient);
        pong.client = header.client;
        pong.timestamp = header.timestamp;
        // Where it stands, for `kimberlite status`.
        use crate::vsr::header as wire;
        let status = match self.status {
            Status::Recovering => wire::PONG_STATUS_RECOVERING,
            Status::Normal => wire::PONG_STATUS_NORMAL,
            Status::ViewChange => wire::PONG_STATUS_VIEW_CHANGE,
            Status::Init | Status::Failed => unreachable!("it does not take messages"),
        };
        let syncing = if self.sync.active() { wire::PONG_STATUS_SYNCING } else { 0 };
        let rejoining = self.rejoin.learning || self.log_faulty;
        let rejoining = if rejoining { wire::PONG_STATUS_REJOINING } else { 0 };
        let mut view = crate::vsr::header::views::PongClient::of(&mut pong);
        view.set_op(self.head.op());
        view.set_commit_min(self.commit_min);
        view.set_checkpoint_op(self.checkpoint_op);
        view.set_status(status + syncing + rejoining);
        self.send_header(Destination::Client(header.client), pong);
    }

    /// A header of this cluster, view and replica, for a message this replica sends.
    pub(super) fn header_new(&self, command: Command) -> Header {
        // A prepare takes the view and replica of its primary (`prepare`), a request its
        // client's: neither is built here.
        assert!(!matches!(command, Command::Prepare | Command::Request));
        let mut header = Header::new(command, self.config.cluster);
        header.view = self.view;
        header.replica = self.config.replica;
        header
    }

    /// Sends a message of just `header` (an empty body), checksummed here.
    pub(super) fn send_header(&mut self, destination: Destination, header: Header) {
        assert_eq!(header.replica, self.config.replica, "a message names its sender");
        assert_eq!(header.cluster, self.config.cluster);
        let message = message_finish(self.pool.get_small(), header, 0);
        self.send(destination, message);
    }

    /// `message` in a full-size buffer (a copy, unless it is in one already): what a prepare
    /// needs, built in place from its request.
    pub(super) fn message_large(&self, message: Message) -> Message {
        if message.buffer().len() >= self.config.message_size_max as usize {
            return message;
        }
        let size = message.header().size as usize;
        let mut large = self.pool.get();
        large.buffer_mut_unique()[..size].copy_from_slice(&message.buffer()[..size]);
        large
    }
}

/// Puts `header` on `message`, whose first `body_size` bytes after the header are its body:
/// sets the size and both checksums, and checks the result is a valid header.
fn message_finish(mut message: Message, mut header: Header, body_size: usize) -> Message {
    let size = HEADER_SIZE + body_size;
    assert!(size <= message.buffer().len());
    assert!(header.command().is_some());
    header.size = size as u32;
    header.set_checksum_body(&message.buffer()[HEADER_SIZE..size]);
    header.set_checksum();
    assert_eq!(header.invalid(), None);
    *message.header_mut() = header;
    message
}
