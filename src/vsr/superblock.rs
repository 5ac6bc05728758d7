//! The superblock: the root of a replica's durable state, kept in four redundant copies at the
//! start of the data file, and the sans-IO state machine that opens and updates them.
//!
//! A copy is a `SuperBlockHeader` and then a trailer with the checkpointed client sessions (the
//! session slots up to the last one in use, whose count and checksum the header's VSR state
//! holds), written together. A copy whose trailer does not match that checksum counts as
//! corrupt, like a torn header.
//!
//! **Open** reads all copies, keeps the valid ones (checksum, position, version, config), and
//! chooses the newest update held by `SUPERBLOCK_QUORUM_OPEN` identical copies. Forks, broken
//! parent chains and VSR state that goes backwards are errors, never silently resolved. Copies
//! that differ from the chosen one are then rewritten, and the open finishes once they are.
//!
//! **Update** first syncs the data file (`IoKind::Sync`): the grid blocks and client replies
//! the new superblock may make reachable were written cached, and must be on the media before
//! anything points at them. It then writes the next superblock (sequence + 1, `parent` = the
//! working checksum) to the copies one after another, reads all of them back, and rewrites
//! those that do not read back identical; it succeeds once `SUPERBLOCK_QUORUM_VERIFY` copies
//! match. Since the verify quorum plus the open quorum exceed the copy count, an open after any
//! crash sees the newest update that completed, or the one in flight if it reached an open
//! quorum, never a mix.
//!
//! Call order: `new` once; then `open` (or `open_read_only`); pass every completion whose
//! token names `IoOwner::Superblock` to `on_completion`; the operation is over when
//! `poll_result` returns `Some`. Then `update`, one at a time. After a failed open or update,
//! only `open` may follow (the disk may hold a half-written update). `open_blocking`,
//! `update_blocking` and `complete_blocking` drive a storage that only the superblock uses.

use static_assertions::const_assert_eq;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::constants::{
    CLIENTS_MAX, GRID_BLOCKS_MAX, SUPERBLOCK_COPIES, SUPERBLOCK_COPY_SIZE, SUPERBLOCK_HEADER_SIZE,
    SUPERBLOCK_QUORUM_OPEN, SUPERBLOCK_QUORUM_VERIFY, SUPERBLOCK_UPDATE_REWRITES_MAX,
    SUPERBLOCK_VERSION, VIEW_HEADERS_MAX, superblock_copy_size,
};
use crate::state_machine::CheckpointState;
use crate::vsr::client_sessions::ClientSessionRecord;
use crate::vsr::header::ReplicaIndex;
use crate::vsr::header::{self, Checksum, ClusterId, Header, Op, View};
use crate::vsr::layout::{Config, Zone};
use crate::vsr::message_pool::{Message, MessagePool};
use crate::vsr::storage::{Completion, IoError, IoKind, IoOwner, IoRequest, IoToken, Storage};

#[cfg(test)]
mod tests;

/// The first byte `SuperBlockHeader::checksum` covers: everything after `checksum` and `copy`.
const CHECKSUM_COVERS_FROM: usize = 18;

/// The header of one superblock copy, exactly `SUPERBLOCK_HEADER_SIZE` bytes. `checksum` covers
/// bytes 18..8192: everything but itself and `copy`, so the four copies of one update share a
/// checksum.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct SuperBlockHeader {
    pub checksum: Checksum,
    /// This copy's index (0..4), so a copy written to the wrong place is detected.
    pub copy: u16,
    pub version: u16,
    pub replica: u8,
    pub replica_count: u8,
    pub reserved_replica: [u8; 2],
    pub cluster: ClusterId,
    /// Incremented by every update; copies of the newest update have the highest sequence.
    pub sequence: u64,
    pub journal_slot_count: u32,
    pub message_size_max: u32,
    pub clients_max: u32,
    pub streams_max: u32,
    pub grid_size: u64,
    /// The checksum of the update this one replaced (0 for the first).
    pub parent: Checksum,
    pub reserved_header: [u8; 48],
    /// What an update changes.
    pub vsr_state: VsrState,
    pub reserved: [u8; SUPERBLOCK_RESERVED_SIZE],
}

const SUPERBLOCK_RESERVED_SIZE: usize = 5632;

const_assert_eq!(std::mem::size_of::<SuperBlockHeader>(), SUPERBLOCK_HEADER_SIZE);
const_assert_eq!(std::mem::offset_of!(SuperBlockHeader, parent), 64);
const_assert_eq!(std::mem::offset_of!(SuperBlockHeader, vsr_state), 128);
const_assert_eq!(std::mem::offset_of!(SuperBlockHeader, reserved), 2560);
const_assert_eq!(std::mem::offset_of!(VsrState, view), 48);
const_assert_eq!(std::mem::offset_of!(VsrState, log_lost), 96);
const_assert_eq!(std::mem::offset_of!(VsrState, view_headers), 128);
const_assert_eq!(std::mem::offset_of!(VsrState, client_sessions_count), 100);
const_assert_eq!(std::mem::offset_of!(VsrState, client_sessions_checksum), 112);
const_assert_eq!(std::mem::size_of::<VsrState>(), 2432);
const_assert_eq!(std::mem::offset_of!(SuperBlockHeader, version), CHECKSUM_COVERS_FROM);
const_assert_eq!(SUPERBLOCK_HEADER_SIZE % std::mem::align_of::<SuperBlockHeader>(), 0);

impl SuperBlockHeader {
    /// The first superblock of a freshly formatted data file: sequence 1, view 0, checkpoint at
    /// the root prepare (op 0).
    pub fn format(config: &Config) -> SuperBlockHeader {
        assert!(config.invalid().is_none());
        let mut superblock = SuperBlockHeader::new_zeroed();
        superblock.version = SUPERBLOCK_VERSION;
        superblock.cluster = config.cluster;
        superblock.sequence = 1;
        superblock.replica = config.replica.get();
        superblock.replica_count = config.replica_count;
        superblock.journal_slot_count = config.journal_slot_count;
        superblock.message_size_max = config.message_size_max;
        superblock.clients_max = config.clients_max;
        superblock.streams_max = config.streams_max;
        superblock.grid_size = config.grid_size;
        superblock.vsr_state.checkpoint_checksum = Header::root_prepare(config.cluster).checksum;
        superblock.vsr_state.client_sessions_checksum = sessions_checksum(&[]);
        superblock.set_checksum();
        assert!(superblock.invalid().is_none());
        superblock
    }

    pub fn calculate_checksum(&self) -> Checksum {
        header::checksum(&self.as_bytes()[CHECKSUM_COVERS_FROM..])
    }

    pub fn set_checksum(&mut self) {
        self.checksum = self.calculate_checksum();
    }

    pub fn valid_checksum(&self) -> bool {
        self.checksum == self.calculate_checksum()
    }

    /// The configuration recorded at format.
    pub fn config(&self) -> Config {
        Config {
            cluster: self.cluster,
            replica: ReplicaIndex(self.replica),
            replica_count: self.replica_count,
            journal_slot_count: self.journal_slot_count,
            message_size_max: self.message_size_max,
            clients_max: self.clients_max,
            grid_size: self.grid_size,
            streams_max: self.streams_max,
        }
    }

    /// Why a copy whose checksum verifies still cannot be used, or `None`: the fields whose
    /// range does not depend on the other copies. Does not check the checksum, nor the VSR
    /// state (see `vsr_state_invalid`), which open reports as an error rather than a bad copy.
    pub fn invalid(&self) -> Option<&'static str> {
        if self.version != SUPERBLOCK_VERSION {
            return Some("superblock version unknown");
        }
        if let Some(reason) = self.config().invalid() {
            return Some(reason);
        }
        if self.sequence == 0 || self.sequence == u64::MAX {
            return Some("sequence out of range");
        }
        if self.vsr_state.view_headers_count as usize > VIEW_HEADERS_MAX {
            return Some("view_headers_count larger than VIEW_HEADERS_MAX");
        }
        if self.vsr_state.log_lost > 1 {
            return Some("log_lost must be 0 or 1");
        }
        if self.vsr_state.client_sessions_count > self.clients_max {
            return Some("client_sessions_count larger than clients_max");
        }
        let reserved_zero = self.reserved_replica == [0; 2]
            && self.reserved_header == [0; 48]
            && self.vsr_state.reserved_log_lost == [0; 3]
            && self.reserved.iter().all(|byte| *byte == 0);
        if !reserved_zero {
            return Some("reserved bytes not zero");
        }
        None
    }

    /// Why this superblock's VSR state is impossible on its own, or `None`.
    pub fn vsr_state_invalid(&self) -> Option<&'static str> {
        if self.vsr_state.log_view > self.vsr_state.view {
            return Some("log_view is newer than view");
        }
        if self.vsr_state.checkpoint_op > self.vsr_state.commit_max {
            return Some("checkpoint_op is past commit_max");
        }
        if self.vsr_state.grid_blocks_limit > GRID_BLOCKS_MAX {
            return Some("grid_blocks_limit is beyond the largest grid");
        }
        None
    }

    /// Why `child` cannot be the update that follows `self`, or `None`: the configuration is
    /// fixed at format, and view, log_view, commit_max and checkpoint_op never go backwards.
    pub fn transition_invalid(&self, child: &SuperBlockHeader) -> Option<&'static str> {
        if child.config() != self.config() {
            return Some("config changed");
        }
        if child.vsr_state.view < self.vsr_state.view {
            return Some("view went backwards");
        }
        if child.vsr_state.log_view < self.vsr_state.log_view {
            return Some("log_view went backwards");
        }
        if child.vsr_state.commit_max < self.vsr_state.commit_max {
            return Some("commit_max went backwards");
        }
        if child.vsr_state.checkpoint_op < self.vsr_state.checkpoint_op {
            return Some("checkpoint_op went backwards");
        }
        child.vsr_state_invalid()
    }

    /// The part of the superblock that `SuperBlock::update` changes.
    pub fn vsr_state(&self) -> VsrState {
        self.vsr_state
    }

    fn set_vsr_state(&mut self, state: &VsrState) {
        self.vsr_state = *state;
    }

    /// True if `self`, read from position `copy`, is exactly `target` written there.
    fn identical_at(&self, target: &SuperBlockHeader, copy: usize) -> bool {
        usize::from(self.copy) == copy
            && self.checksum == target.checksum
            && self.as_bytes()[CHECKSUM_COVERS_FROM..] == target.as_bytes()[CHECKSUM_COVERS_FROM..]
    }
}

/// The replica's durable protocol state: what an update writes, nested as is in every
/// superblock copy. View, log_view and commit_max never go backwards, and `log_view <= view`,
/// `checkpoint_op <= commit_max`.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct VsrState {
    /// The checksum of the prepare at `checkpoint_op`.
    pub checkpoint_checksum: Checksum,
    /// The checksum of the checkpointed state-machine root (the streams table blocks).
    pub checkpoint_state_checksum: Checksum,
    /// The hash chain over the checksums of the streams table's blocks.
    pub streams_table_checksum: Checksum,
    /// The replica's view; never goes backwards.
    pub view: View,
    /// The latest view in which the replica was in normal status; never goes backwards.
    pub log_view: View,
    /// The highest op known committed; never goes backwards.
    pub commit_max: Op,
    /// The op whose state the checkpoint holds; the WAL is replayed from here.
    pub checkpoint_op: Op,
    /// The next grid block the state machine appends to.
    pub grid_head: u64,
    /// Where the checkpointed streams table starts in the grid, and how many blocks it spans.
    pub streams_table_address: u64,
    pub streams_table_blocks: u32,
    /// How many of `view_headers` are in use (the log suffix kept for a view change).
    pub view_headers_count: u32,
    /// 1 if the replica's data file was formatted again to replace one that was lost
    /// (`kimberlite format --rejoin`): its log is not evidence of what it acknowledged before,
    /// so it takes no part in view changes until it holds the cluster's log.
    pub log_lost: u8,
    pub reserved_log_lost: [u8; 3],
    /// The session slots the trailer holds: up to the last one in use (those after it are
    /// free), so that a copy costs what the sessions in use need, not `clients_max`.
    pub client_sessions_count: u32,
    /// The cluster's grid in blocks as of the checkpoint (`CheckpointState`).
    pub grid_blocks_limit: u64,
    /// The checksum of the trailer's `client_sessions_count` records (the client sessions as of
    /// the checkpoint, free entries all zero).
    pub client_sessions_checksum: Checksum,
    pub view_headers: [Header; VIEW_HEADERS_MAX],
}

/// The checksum of a trailer's session records, as `VsrState::client_sessions_checksum`
/// holds it.
pub fn sessions_checksum(records: &[ClientSessionRecord]) -> Checksum {
    header::checksum(records.as_bytes())
}

/// The slots of `records` up to the last one in use: what a trailer holds of them.
fn sessions_used(records: &[ClientSessionRecord]) -> usize {
    let last = records.iter().rposition(|record| *record != ClientSessionRecord::FREE);
    last.map_or(0, |last| last + 1)
}

impl VsrState {
    /// The event store's part of the state.
    pub fn checkpoint_state(&self) -> CheckpointState {
        CheckpointState {
            grid_head: self.grid_head,
            streams_table_address: self.streams_table_address,
            streams_table_blocks: self.streams_table_blocks,
            streams_table_checksum: self.streams_table_checksum,
            checkpoint_state_checksum: self.checkpoint_state_checksum,
            grid_blocks_limit: self.grid_blocks_limit,
        }
    }

    pub fn checkpoint_state_set(&mut self, checkpoint: &CheckpointState) {
        self.grid_head = checkpoint.grid_head;
        self.streams_table_address = checkpoint.streams_table_address;
        self.streams_table_blocks = checkpoint.streams_table_blocks;
        self.streams_table_checksum = checkpoint.streams_table_checksum;
        self.checkpoint_state_checksum = checkpoint.checkpoint_state_checksum;
        self.grid_blocks_limit = checkpoint.grid_blocks_limit;
    }
}

impl VsrState {
    /// The view headers in use.
    pub fn view_headers(&self) -> &[Header] {
        assert!(self.view_headers_count as usize <= VIEW_HEADERS_MAX);
        &self.view_headers[..self.view_headers_count as usize]
    }
}

/// What open or the last update's read-back found in one copy, for `kimberlite inspect`. After
/// an open that repaired the copies, every copy that is not `Valid` was rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyHealth {
    /// Not read yet.
    Unread,
    /// Valid; identical to the working superblock once an open or update has chosen one.
    Valid { sequence: u64 },
    /// Valid but not the working superblock: an older update, or a newer one that never reached
    /// a quorum.
    Stale { sequence: u64 },
    /// The checksum does not verify: a torn write or a rotten sector.
    CorruptChecksum,
    /// The header is valid, but the client sessions after it do not match its checksum: a torn
    /// write or a rotten sector.
    CorruptSessions,
    /// A valid copy of another position (its `copy` field): a misdirected write.
    Misdirected { copy: u16 },
    /// The checksum verifies, but a field is out of range (version, config, ...).
    Invalid { reason: &'static str },
    /// The disk failed the read; counted as a corrupt copy.
    ReadError { error: IoError },
    /// Not a copy of this version: it reads as a copy of an older data-file format.
    VersionOther { version: u16 },
}

impl std::fmt::Display for CopyHealth {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyHealth::Unread => write!(formatter, "not read"),
            CopyHealth::Valid { sequence } => write!(formatter, "valid, sequence {sequence}"),
            CopyHealth::Stale { sequence } => write!(formatter, "stale, sequence {sequence}"),
            CopyHealth::CorruptChecksum => write!(formatter, "corrupt (checksum)"),
            CopyHealth::CorruptSessions => write!(formatter, "corrupt (client sessions)"),
            CopyHealth::Misdirected { copy } => {
                write!(formatter, "misdirected (holds copy {copy})")
            }
            CopyHealth::Invalid { reason } => write!(formatter, "invalid: {reason}"),
            CopyHealth::ReadError { error } => write!(formatter, "read error: {error}"),
            CopyHealth::VersionOther { version } => {
                write!(formatter, "a copy of data-file format version {version}")
            }
        }
    }
}

/// Why an open or an update failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuperBlockError {
    /// No copy is valid.
    NotFound,
    /// No copy is valid, and some read as copies of an older data-file format.
    VersionOther { version: u16 },
    /// Some copies are valid, but no update is held by `SUPERBLOCK_QUORUM_OPEN` of them.
    QuorumLost { copies_valid: u8 },
    /// Two valid copies hold different superblocks with the same sequence.
    Fork { sequence: u64 },
    /// A valid copy newer than the chosen superblock skips a sequence.
    ParentSkipped { sequence: u64 },
    /// A valid copy one sequence newer than the chosen superblock does not descend from it.
    ParentNotConnected { sequence: u64 },
    /// The superblock of `sequence` has a VSR state that goes backwards from its parent, or is
    /// impossible on its own.
    VsrStateNotMonotonic { sequence: u64, reason: &'static str },
    /// Writing a copy failed.
    WriteFailed { copy: u8, error: IoError },
    /// The sync before an update's first write failed.
    SyncFailed { error: IoError },
    /// After every rewrite, fewer than `SUPERBLOCK_QUORUM_VERIFY` copies read back identical.
    VerifyFailed { copies_matching: u8 },
}

impl std::fmt::Display for SuperBlockError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SuperBlockError::NotFound => {
                write!(
                    formatter,
                    "superblock not found: none of {SUPERBLOCK_COPIES} copies is valid"
                )
            }
            SuperBlockError::VersionOther { version } => write!(
                formatter,
                "data file of format version {version}: this build reads version \
                 {SUPERBLOCK_VERSION} only (the checksums and headers changed); run the build that \
                 wrote it, or format a new data file and rejoin it to the cluster"
            ),
            SuperBlockError::QuorumLost { copies_valid } => write!(
                formatter,
                "superblock quorum lost: {copies_valid} of {SUPERBLOCK_COPIES} copies valid, and \
                 no update is held by {SUPERBLOCK_QUORUM_OPEN} identical copies"
            ),
            SuperBlockError::Fork { sequence } => {
                write!(formatter, "superblock fork: valid copies of sequence {sequence} differ")
            }
            SuperBlockError::ParentSkipped { sequence } => write!(
                formatter,
                "superblock copy of sequence {sequence} skips a sequence after the working one"
            ),
            SuperBlockError::ParentNotConnected { sequence } => write!(
                formatter,
                "superblock copy of sequence {sequence} does not descend from the working one"
            ),
            SuperBlockError::VsrStateNotMonotonic { sequence, reason } => {
                write!(formatter, "superblock sequence {sequence} has a bad VSR state: {reason}")
            }
            SuperBlockError::WriteFailed { copy, error } => {
                write!(formatter, "superblock copy {copy} write failed: {error}")
            }
            SuperBlockError::SyncFailed { error } => {
                write!(formatter, "superblock update: the data file's sync failed: {error}")
            }
            SuperBlockError::VerifyFailed { copies_matching } => write!(
                formatter,
                "superblock update not verified: {copies_matching} of {SUPERBLOCK_COPIES} copies \
                 read back identical, {SUPERBLOCK_QUORUM_VERIFY} needed"
            ),
        }
    }
}

impl std::error::Error for SuperBlockError {}

/// Where the superblock is in its current operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Open: reading every copy.
    OpenRead,
    /// Open: rewriting the copies that differ from the chosen superblock, one at a time.
    OpenRepair,
    /// Update: syncing the data file, so that what `staging` points at is durable first.
    UpdateSync,
    /// Update: writing `staging` to the copies left to write, one at a time, in copy order.
    UpdateWrite,
    /// Update: reading every copy back.
    UpdateVerify,
}

/// The sans-IO superblock: owns its buffers, submits requests to a `Storage`, and advances on
/// completions. See the module docs for the call order.
pub struct SuperBlock {
    /// One buffer per copy, allocated in `new`.
    pool: MessagePool,
    /// The superblock as of the last successful open or update (sequence 0 before any).
    working: SuperBlockHeader,
    /// The client sessions of `working` (its copies' trailer): `clients_max` records.
    working_sessions: Vec<ClientSessionRecord>,
    /// What is being written: the next update, or the working superblock during a repair.
    staging: SuperBlockHeader,
    staging_sessions: Vec<ClientSessionRecord>,
    phase: Phase,
    /// Whether the open in progress rewrites bad copies.
    open_repair: bool,
    /// Whether `update` may run: after an open that repaired, until an operation fails.
    updatable: bool,
    io_in_flight: [Option<IoKind>; SUPERBLOCK_COPIES],
    read_buffers: [Option<Message>; SUPERBLOCK_COPIES],
    read_results: [Result<(), IoError>; SUPERBLOCK_COPIES],
    copies_to_write: [bool; SUPERBLOCK_COPIES],
    /// Rewrite rounds the current update has used.
    rewrites: u8,
    copies_health: [CopyHealth; SUPERBLOCK_COPIES],
    result: Option<Result<(), SuperBlockError>>,
    /// Reused by the blocking drivers, so that they never allocate.
    completions: Vec<Completion>,
}

impl Default for SuperBlock {
    fn default() -> SuperBlock {
        SuperBlock::new()
    }
}

impl SuperBlock {
    /// Allocates the superblock's buffers: the only allocation it makes.
    pub fn new() -> SuperBlock {
        let zeroed = SuperBlockHeader::new_zeroed();
        SuperBlock {
            pool: MessagePool::new(SUPERBLOCK_COPIES, SUPERBLOCK_COPY_SIZE),
            working: zeroed,
            working_sessions: Vec::with_capacity(CLIENTS_MAX),
            staging: zeroed,
            staging_sessions: Vec::with_capacity(CLIENTS_MAX),
            phase: Phase::Idle,
            open_repair: false,
            updatable: false,
            io_in_flight: [None; SUPERBLOCK_COPIES],
            read_buffers: Default::default(),
            read_results: [Ok(()); SUPERBLOCK_COPIES],
            copies_to_write: [false; SUPERBLOCK_COPIES],
            rewrites: 0,
            copies_health: [CopyHealth::Unread; SUPERBLOCK_COPIES],
            result: None,
            completions: Vec::with_capacity(SUPERBLOCK_COPIES),
        }
    }

    /// Starts an open: reads every copy, chooses the working superblock, and rewrites the
    /// copies that differ from it.
    pub fn open<S: Storage>(&mut self, storage: &mut S) {
        self.open_start(storage, true);
    }

    /// Like `open`, but writes nothing (for `kimberlite inspect`); `update` may not follow.
    pub fn open_read_only<S: Storage>(&mut self, storage: &mut S) {
        self.open_start(storage, false);
    }

    /// Opens the superblock of a storage that only the superblock uses, waiting for each
    /// completion.
    pub fn open_blocking<S: Storage>(storage: &mut S) -> Result<SuperBlock, SuperBlockError> {
        let mut superblock = SuperBlock::new();
        superblock.open(storage);
        superblock.complete_blocking(storage)?;
        Ok(superblock)
    }

    /// Starts an update: the working superblock with `state`, sequence + 1, and the working
    /// checksum as parent, and with the client session table `sessions` (`clients_max`
    /// records), or the working one for `None`; `state.client_sessions_checksum` is set here.
    /// Panics if `state` would take view, log_view or commit_max backwards: the caller's own
    /// invariant.
    pub fn update<S: Storage>(
        &mut self,
        storage: &mut S,
        state: &VsrState,
        sessions: Option<&[ClientSessionRecord]>,
    ) {
        assert_eq!(self.phase, Phase::Idle, "one superblock operation at a time");
        assert!(self.result.is_none(), "the previous superblock result was not taken");
        assert!(self.updatable, "superblock update needs a repairing open and no failure since");
        assert!(self.copies_to_write.iter().all(|write| !write));
        let sessions = sessions.unwrap_or(&self.working_sessions);
        assert_eq!(sessions.len(), self.working.clients_max as usize);
        self.staging_sessions.clear();
        self.staging_sessions.extend_from_slice(sessions);
        let mut staging = self.working;
        staging.sequence = self.working.sequence + 1;
        staging.parent = self.working.checksum;
        staging.set_vsr_state(state);
        let used = sessions_used(&self.staging_sessions);
        staging.vsr_state.client_sessions_count = used as u32;
        staging.vsr_state.client_sessions_checksum =
            sessions_checksum(&self.staging_sessions[..used]);
        staging.copy = 0;
        staging.set_checksum();
        if let Some(reason) = staging.invalid() {
            panic!("superblock update: {reason}");
        }
        if let Some(reason) = self.working.transition_invalid(&staging) {
            panic!("superblock update: {reason}");
        }
        self.staging = staging;
        self.copies_to_write = [true; SUPERBLOCK_COPIES];
        self.rewrites = 0;
        self.phase = Phase::UpdateSync;
        let buffer = self.pool.get();
        self.submit(storage, IoKind::Sync, 0, buffer);
    }

    fn update_sync_complete<S: Storage>(&mut self, storage: &mut S, result: Result<(), IoError>) {
        assert_eq!(self.phase, Phase::UpdateSync);
        assert!(self.copies_to_write.iter().all(|write| *write));
        if let Err(error) = result {
            self.copies_to_write = [false; SUPERBLOCK_COPIES];
            self.updatable = false;
            return self.finish(Err(SuperBlockError::SyncFailed { error }));
        }
        self.phase = Phase::UpdateWrite;
        self.write_copy(storage);
    }

    /// `update`, then waits for it on a storage that only the superblock uses.
    pub fn update_blocking<S: Storage>(
        &mut self,
        storage: &mut S,
        state: &VsrState,
        sessions: Option<&[ClientSessionRecord]>,
    ) -> Result<(), SuperBlockError> {
        self.update(storage, state, sessions);
        self.complete_blocking(storage)
    }

    /// Polls `storage` and routes completions until the current operation finishes, and
    /// returns its result. Every completion must belong to the superblock.
    pub fn complete_blocking<S: Storage>(
        &mut self,
        storage: &mut S,
    ) -> Result<(), SuperBlockError> {
        let mut completions = std::mem::take(&mut self.completions);
        let result = loop {
            if let Some(result) = self.poll_result() {
                break result;
            }
            assert_ne!(self.phase, Phase::Idle, "no superblock operation to complete");
            assert!(storage.in_flight() > 0, "superblock operation waits on no I/O");
            assert!(completions.is_empty());
            storage.poll(&mut completions, SUPERBLOCK_COPIES);
            for completion in completions.drain(..) {
                self.on_completion(storage, completion);
            }
        };
        assert!(completions.capacity() >= SUPERBLOCK_COPIES);
        self.completions = completions;
        result
    }

    /// Takes the result of the operation that finished, if one has.
    pub fn poll_result(&mut self) -> Option<Result<(), SuperBlockError>> {
        let result = self.result.take();
        assert!(result.is_none() || self.phase == Phase::Idle);
        result
    }

    /// An open succeeded: `working` holds what the disk does.
    pub fn opened(&self) -> bool {
        self.working.sequence > 0
    }

    /// The superblock as of the last successful open or update.
    pub fn working(&self) -> &SuperBlockHeader {
        assert!(self.working.sequence > 0, "superblock not opened");
        &self.working
    }

    /// The client sessions of the working superblock: `clients_max` records.
    pub fn working_sessions(&self) -> &[ClientSessionRecord] {
        assert!(self.working.sequence > 0, "superblock not opened");
        assert_eq!(self.working_sessions.len(), self.working.clients_max as usize);
        &self.working_sessions
    }

    /// What the last open, or the last update's read-back, found in each copy.
    pub fn copies_health(&self) -> &[CopyHealth; SUPERBLOCK_COPIES] {
        &self.copies_health
    }

    /// Advances the operation with one of its completions (owner `IoOwner::Superblock`); may
    /// submit the next request.
    pub fn on_completion<S: Storage>(&mut self, storage: &mut S, completion: Completion) {
        let Completion { request, buffer, result } = completion;
        assert_eq!(request.token.owner, IoOwner::Superblock);
        assert_eq!(request.zone, Zone::Superblock);
        let copy = request.token.index as usize;
        assert!(copy < SUPERBLOCK_COPIES);
        assert_eq!(request.offset, copy_offset(copy));
        assert_eq!(self.io_in_flight[copy], Some(request.kind), "unexpected completion");
        self.io_in_flight[copy] = None;
        match (self.phase, request.kind) {
            (Phase::OpenRead | Phase::UpdateVerify, IoKind::Read) => {
                self.read_copy_complete(storage, copy, buffer, result);
            }
            (Phase::OpenRepair | Phase::UpdateWrite, IoKind::Write) => {
                drop(buffer);
                self.write_copy_complete(storage, copy, result);
            }
            (Phase::UpdateSync, IoKind::Sync) => {
                assert_eq!(copy, 0);
                drop(buffer);
                self.update_sync_complete(storage, result);
            }
            (phase, kind) => panic!("superblock: {kind:?} completion during {phase:?}"),
        }
    }

    fn open_start<S: Storage>(&mut self, storage: &mut S, repair: bool) {
        assert_eq!(self.phase, Phase::Idle, "one superblock operation at a time");
        assert!(self.result.is_none(), "the previous superblock result was not taken");
        self.open_repair = repair;
        self.updatable = false;
        self.copies_health = [CopyHealth::Unread; SUPERBLOCK_COPIES];
        self.phase = Phase::OpenRead;
        self.read_copies(storage);
    }

    /// Reads every copy at once, each into its own buffer.
    fn read_copies<S: Storage>(&mut self, storage: &mut S) {
        assert!(matches!(self.phase, Phase::OpenRead | Phase::UpdateVerify));
        assert_eq!(self.pool.free_count(), SUPERBLOCK_COPIES);
        for copy in 0..SUPERBLOCK_COPIES {
            assert!(self.read_buffers[copy].is_none());
            let buffer = self.pool.get();
            self.submit(storage, IoKind::Read, copy, buffer);
        }
    }

    fn read_copy_complete<S: Storage>(
        &mut self,
        storage: &mut S,
        copy: usize,
        buffer: Message,
        result: Result<(), IoError>,
    ) {
        assert!(self.read_buffers[copy].is_none());
        self.read_buffers[copy] = Some(buffer);
        self.read_results[copy] = result;
        if self.io_in_flight.iter().any(Option::is_some) {
            return;
        }
        assert!(self.read_buffers.iter().all(Option::is_some));
        match self.phase {
            Phase::OpenRead => self.open_read_complete(storage),
            Phase::UpdateVerify => self.update_verify_complete(storage),
            phase => unreachable!("reads complete during {phase:?}"),
        }
    }

    /// Every copy has been read: classify them, choose the working superblock, and repair.
    fn open_read_complete<S: Storage>(&mut self, storage: &mut S) {
        let mut copies: [Option<&SuperBlockHeader>; SUPERBLOCK_COPIES] = [None; SUPERBLOCK_COPIES];
        for (copy, valid) in copies.iter_mut().enumerate() {
            let buffer = self.read_buffers[copy].as_ref().expect("every copy was read");
            let health = copy_health(copy, buffer, self.read_results[copy], SUPERBLOCK_COPY_SIZE);
            if let CopyHealth::Valid { .. } = health {
                *valid = Some(header_of(buffer));
            }
            self.copies_health[copy] = health;
        }
        let version_other = self.copies_health.iter().find_map(|health| match health {
            CopyHealth::VersionOther { version } => Some(*version),
            _ => None,
        });
        let chosen = match quorum_choose(&copies) {
            Err(SuperBlockError::NotFound) if let Some(version) = version_other => {
                Err(SuperBlockError::VersionOther { version })
            }
            chosen => chosen.map(|index| {
                let buffer = self.read_buffers[index].as_ref().expect("every copy was read");
                let working = copies[index].expect("chosen is valid");
                self.working_sessions.clear();
                self.working_sessions.extend_from_slice(sessions_of(buffer, working));
                let clients_max = working.clients_max as usize;
                self.working_sessions.resize(clients_max, ClientSessionRecord::FREE);
                *working
            }),
        };
        if let Ok(working) = &chosen {
            for (copy, valid) in copies.iter().enumerate() {
                if let (Some(header), CopyHealth::Valid { sequence }) =
                    (valid, self.copies_health[copy])
                    && header.checksum != working.checksum
                {
                    self.copies_health[copy] = CopyHealth::Stale { sequence };
                }
            }
        }
        self.read_buffers = Default::default();
        match chosen {
            Err(error) => self.finish(Err(error)),
            Ok(working) => self.open_repair(storage, working),
        }
    }

    fn open_repair<S: Storage>(&mut self, storage: &mut S, working: SuperBlockHeader) {
        assert_eq!(self.phase, Phase::OpenRead);
        assert!(working.valid_checksum());
        self.working = working;
        self.working.copy = 0;
        self.staging = self.working;
        self.staging_sessions.clear();
        self.staging_sessions.extend_from_slice(&self.working_sessions);
        for (copy, health) in self.copies_health.iter().enumerate() {
            let valid = matches!(health, CopyHealth::Valid { .. });
            self.copies_to_write[copy] = self.open_repair && !valid;
        }
        if self.copies_to_write.iter().any(|write| *write) {
            self.phase = Phase::OpenRepair;
            self.write_copy(storage);
        } else {
            self.updatable = self.open_repair;
            self.finish(Ok(()));
        }
    }

    /// The update's copies have been read back: done if enough match, else rewrite the others.
    fn update_verify_complete<S: Storage>(&mut self, storage: &mut S) {
        let mut copies_matching: usize = 0;
        for copy in 0..SUPERBLOCK_COPIES {
            let buffer = self.read_buffers[copy].as_ref().expect("every copy was read");
            let result = self.read_results[copy];
            let length = self.io_length(IoKind::Read);
            let mut health = copy_health(copy, buffer, result, length);
            // A valid copy's trailer matches the checksum its header holds.
            let identical = matches!(health, CopyHealth::Valid { .. })
                && header_of(buffer).identical_at(&self.staging, copy);
            if let CopyHealth::Valid { sequence } = health
                && !identical
            {
                health = CopyHealth::Stale { sequence };
            }
            self.copies_health[copy] = health;
            self.copies_to_write[copy] = !identical;
            copies_matching += usize::from(identical);
        }
        self.read_buffers = Default::default();
        let rewrites_left = self.rewrites < SUPERBLOCK_UPDATE_REWRITES_MAX;
        let verified = copies_matching == SUPERBLOCK_COPIES
            || (!rewrites_left && copies_matching >= SUPERBLOCK_QUORUM_VERIFY);
        if verified {
            self.copies_to_write = [false; SUPERBLOCK_COPIES];
            self.working = self.staging;
            self.working.copy = 0;
            std::mem::swap(&mut self.working_sessions, &mut self.staging_sessions);
            self.finish(Ok(()));
        } else if rewrites_left {
            self.rewrites += 1;
            self.phase = Phase::UpdateWrite;
            self.write_copy(storage);
        } else {
            self.copies_to_write = [false; SUPERBLOCK_COPIES];
            self.updatable = false;
            let copies_matching = copies_matching as u8;
            self.finish(Err(SuperBlockError::VerifyFailed { copies_matching }));
        }
    }

    /// Writes `staging` to the lowest copy left to write. Writes go one at a time so that a
    /// crash can tear at most one copy.
    fn write_copy<S: Storage>(&mut self, storage: &mut S) {
        assert!(matches!(self.phase, Phase::OpenRepair | Phase::UpdateWrite));
        assert!(self.io_in_flight.iter().all(Option::is_none));
        assert!(self.staging.valid_checksum());
        let copy = self.copies_to_write.iter().position(|write| *write).expect("a copy to write");
        self.staging.copy = copy as u16;
        let mut buffer = self.pool.get();
        let bytes = buffer.buffer_mut_unique();
        bytes[..SUPERBLOCK_HEADER_SIZE].copy_from_slice(self.staging.as_bytes());
        let used = self.staging.vsr_state.client_sessions_count as usize;
        let sessions = self.staging_sessions[..used].as_bytes();
        let sessions_end = SUPERBLOCK_HEADER_SIZE + sessions.len();
        bytes[SUPERBLOCK_HEADER_SIZE..sessions_end].copy_from_slice(sessions);
        bytes[sessions_end..self.io_length(IoKind::Write)].fill(0);
        self.submit(storage, IoKind::Write, copy, buffer);
    }

    /// The bytes of a copy that an I/O of `kind` covers now.
    fn io_length(&self, kind: IoKind) -> usize {
        match (kind, self.phase) {
            (IoKind::Sync, _) => 0,
            // At open the configuration is not known yet: the largest copy is read. A repair
            // writes all of a copy's place, so that a sector past the copy's end that fails
            // every read (written by nothing since the format) is written again, not left to
            // spoil every open.
            (IoKind::Read, Phase::OpenRead) | (IoKind::Write, Phase::OpenRepair) => {
                SUPERBLOCK_COPY_SIZE
            }
            _ => superblock_copy_size(self.staging.vsr_state.client_sessions_count as usize),
        }
    }

    fn write_copy_complete<S: Storage>(
        &mut self,
        storage: &mut S,
        copy: usize,
        result: Result<(), IoError>,
    ) {
        assert!(self.copies_to_write[copy]);
        self.copies_to_write[copy] = false;
        if let Err(error) = result {
            self.copies_to_write = [false; SUPERBLOCK_COPIES];
            self.updatable = false;
            let copy = copy as u8;
            self.finish(Err(SuperBlockError::WriteFailed { copy, error }));
        } else if self.copies_to_write.iter().any(|write| *write) {
            self.write_copy(storage);
        } else if self.phase == Phase::OpenRepair {
            self.updatable = true;
            self.finish(Ok(()));
        } else {
            assert_eq!(self.phase, Phase::UpdateWrite);
            self.phase = Phase::UpdateVerify;
            self.read_copies(storage);
        }
    }

    fn submit<S: Storage>(&mut self, storage: &mut S, kind: IoKind, copy: usize, buffer: Message) {
        assert!(copy < SUPERBLOCK_COPIES);
        assert!(self.io_in_flight[copy].is_none());
        self.io_in_flight[copy] = Some(kind);
        let length = self.io_length(kind);
        let request = IoRequest {
            token: IoToken { owner: IoOwner::Superblock, index: copy as u32 },
            kind,
            zone: Zone::Superblock,
            offset: copy_offset(copy),
            length,
            buffer_offset: 0,
        };
        storage.submit(request, buffer);
    }

    fn finish(&mut self, result: Result<(), SuperBlockError>) {
        assert_ne!(self.phase, Phase::Idle);
        assert!(self.result.is_none());
        assert!(self.io_in_flight.iter().all(Option::is_none));
        assert!(self.copies_to_write.iter().all(|write| !write));
        assert!(self.read_buffers.iter().all(Option::is_none));
        assert!(result.is_ok() || !self.updatable);
        self.phase = Phase::Idle;
        self.result = Some(result);
    }
}

/// The absolute offset of `copy`. The superblock zone comes first in every layout, so this does
/// not depend on the configuration (which is only known once a copy has been read).
fn copy_offset(copy: usize) -> u64 {
    assert!(copy < SUPERBLOCK_COPIES);
    (copy * SUPERBLOCK_COPY_SIZE) as u64
}

/// The copy's header in a buffer of the superblock's pool. Any bytes are a `SuperBlockHeader`;
/// only the buffer's size and alignment, which are ours, are asserted.
fn header_of(buffer: &Message) -> &SuperBlockHeader {
    SuperBlockHeader::ref_from_bytes(&buffer.buffer()[..SUPERBLOCK_HEADER_SIZE])
        .expect("superblock buffers are sector aligned and one copy long")
}

/// The session records of a copy whose `header` is valid (its count in range).
fn sessions_of<'a>(buffer: &'a Message, header: &SuperBlockHeader) -> &'a [ClientSessionRecord] {
    let count = header.vsr_state.client_sessions_count as usize;
    let end = SUPERBLOCK_HEADER_SIZE + count * size_of::<ClientSessionRecord>();
    <[ClientSessionRecord]>::ref_from_bytes(&buffer.buffer()[SUPERBLOCK_HEADER_SIZE..end])
        .expect("superblock buffers are sector aligned")
}

/// Whether the trailer of a copy whose `header` is valid matches the checksum the header
/// holds, with zero padding to the end of its last sector.
fn sessions_valid(buffer: &Message, header: &SuperBlockHeader) -> bool {
    let sessions = sessions_of(buffer, header);
    let end = SUPERBLOCK_HEADER_SIZE + sessions.as_bytes().len();
    let padding = &buffer.buffer()[end..superblock_copy_size(sessions.len())];
    sessions_checksum(sessions) == header.vsr_state.client_sessions_checksum
        && padding.iter().all(|byte| *byte == 0)
}

/// What a copy read from position `copy` (`length` bytes of it) is worth on its own (untrusted
/// bytes: never panics).
fn copy_health(
    copy: usize,
    buffer: &Message,
    result: Result<(), IoError>,
    length: usize,
) -> CopyHealth {
    if let Err(error) = result {
        return CopyHealth::ReadError { error };
    }
    let header = header_of(buffer);
    if !header.valid_checksum() {
        return match version_1_copy(buffer.buffer()) {
            true => CopyHealth::VersionOther { version: 1 },
            false => CopyHealth::CorruptChecksum,
        };
    }
    if usize::from(header.copy) != copy {
        return CopyHealth::Misdirected { copy: header.copy };
    }
    if let Some(reason) = header.invalid() {
        return CopyHealth::Invalid { reason };
    }
    if superblock_copy_size(header.vsr_state.client_sessions_count as usize) > length {
        // Read back after an update of a smaller table: not the copy that was written.
        return CopyHealth::Invalid { reason: "copy larger than the update written" };
    }
    if !sessions_valid(buffer, header) {
        return CopyHealth::CorruptSessions;
    }
    CopyHealth::Valid { sequence: header.sequence }
}

/// Whether `bytes` start like a version-1 copy (one sector each, 4-byte checksum, then `copy`
/// and `version` at bytes 4 and 6). Asked only of a copy whose checksum fails, to name the
/// format of a data file no copy of which is valid.
fn version_1_copy(bytes: &[u8]) -> bool {
    let copy = u16::from_le_bytes([bytes[4], bytes[5]]);
    let version = u16::from_le_bytes([bytes[6], bytes[7]]);
    version == 1 && usize::from(copy) < SUPERBLOCK_COPIES
}

/// Chooses the working superblock among the valid copies (`None`: not valid): the newest held by
/// an open quorum of identical copies. Returns the index of one of its copies.
fn quorum_choose(
    copies: &[Option<&SuperBlockHeader>; SUPERBLOCK_COPIES],
) -> Result<usize, SuperBlockError> {
    let copies_valid = copies.iter().flatten().count();
    if copies_valid == 0 {
        return Err(SuperBlockError::NotFound);
    }
    for (index, a) in copies.iter().enumerate() {
        for b in &copies[index + 1..] {
            if let (Some(a), Some(b)) = (a, b)
                && a.sequence == b.sequence
                && a.checksum != b.checksum
            {
                return Err(SuperBlockError::Fork { sequence: a.sequence });
            }
        }
    }
    let mut chosen: Option<(usize, u64)> = None;
    for (index, copy) in copies.iter().enumerate() {
        let Some(copy) = copy else { continue };
        let count = copies.iter().flatten().filter(|other| other.checksum == copy.checksum).count();
        if count >= SUPERBLOCK_QUORUM_OPEN
            && chosen.is_none_or(|(_, sequence)| copy.sequence > sequence)
        {
            chosen = Some((index, copy.sequence));
        }
    }
    let Some((index, _)) = chosen else {
        return Err(SuperBlockError::QuorumLost { copies_valid: copies_valid as u8 });
    };
    let working = copies[index].expect("the chosen copy is valid");
    quorum_check_chain(copies, working)?;
    Ok(index)
}

/// Checks the chosen superblock against its neighbours in the hash chain: a newer copy (an
/// update that did not reach a quorum) must be its child, and its parent, if present, must
/// precede it; neither step may take the VSR state backwards.
fn quorum_check_chain(
    copies: &[Option<&SuperBlockHeader>; SUPERBLOCK_COPIES],
    working: &SuperBlockHeader,
) -> Result<(), SuperBlockError> {
    if let Some(reason) = working.vsr_state_invalid() {
        return Err(SuperBlockError::VsrStateNotMonotonic { sequence: working.sequence, reason });
    }
    for copy in copies.iter().flatten() {
        if copy.sequence > working.sequence {
            if working.sequence.checked_add(1) != Some(copy.sequence) {
                return Err(SuperBlockError::ParentSkipped { sequence: copy.sequence });
            }
            if copy.parent != working.checksum {
                return Err(SuperBlockError::ParentNotConnected { sequence: copy.sequence });
            }
            if let Some(reason) = working.transition_invalid(copy) {
                let sequence = copy.sequence;
                return Err(SuperBlockError::VsrStateNotMonotonic { sequence, reason });
            }
        } else if copy.checksum == working.parent
            && copy.sequence.checked_add(1) == Some(working.sequence)
            && let Some(reason) = copy.transition_invalid(working)
        {
            let sequence = working.sequence;
            return Err(SuperBlockError::VsrStateNotMonotonic { sequence, reason });
        }
    }
    Ok(())
}
