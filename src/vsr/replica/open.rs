//! Opening a replica from its data file: superblock, journal recovery, the event store at the
//! checkpoint, the stored client replies, then a replay of the WAL from the checkpoint up to the
//! head of the hash chain.
//!
//! With one replica, every prepare that reached the WAL durably may have been committed and
//! acknowledged, so the replay follows the chain of `parent` checksums from the checkpoint as far
//! as it goes. It stops at the first op that is missing or does not chain: prepares are written
//! concurrently, so a crash can leave a later op durable behind a lost earlier one, and such an
//! op was never committed (commits go in op order) and so never acknowledged. The journal
//! entries beyond the head are then truncated durably, before the replica serves.

use super::checkpoint::SessionsWritten;
use super::{OpenPhase, Replica, Status};
use crate::state_machine::GRID_TOO_SMALL;
use crate::vsr::header::Op;
use crate::vsr::journal::{Case, Decision, EntrySummary, Journal};
use crate::vsr::message_pool::MessagePool;
use crate::vsr::storage::Storage;

use crate::constants::JOURNAL_IOPS_READ_MAX;

impl Replica {
    /// Starts opening the data file. Feed completions to `on_storage_completion` until
    /// `status()` is `Normal` or `Failed`.
    pub fn open<S: Storage>(&mut self, storage: &mut S) {
        assert_eq!(self.status, Status::Init);
        assert!(self.pipeline.is_empty() && self.outbox.is_empty());
        self.status = Status::Recovering;
        self.open_phase = OpenPhase::Superblock;
        self.superblock.open(storage);
    }

    pub(super) fn superblock_opened<S: Storage>(&mut self, storage: &mut S, ok: bool) {
        assert_eq!(self.status, Status::Recovering);
        assert_eq!(self.open_phase, OpenPhase::Superblock);
        if !ok {
            return self.fail("the superblock has no valid quorum (see kimberlite inspect)");
        }
        let working = *self.superblock.working();
        if working.config() != self.config {
            return self.fail("the data file's configuration differs from the replica's");
        }
        if self.sessions.restore(self.superblock.working_sessions()).is_err() {
            return self.fail("the checkpointed client session table is invalid");
        }
        self.view = working.vsr_state.view;
        self.log_view = working.vsr_state.log_view;
        self.view_durable = working.vsr_state.view;
        self.log_view_durable = working.vsr_state.log_view;
        self.checkpoint_op = working.vsr_state.checkpoint_op;
        self.commit_min = working.vsr_state.checkpoint_op;
        self.commit_max = working.vsr_state.checkpoint_op;
        self.head.reset(working.vsr_state.checkpoint_op, working.vsr_state.checkpoint_checksum);
        self.commit_checksum = working.vsr_state.checkpoint_checksum;
        // The superblock was validated as it was read (`vsr_state_invalid`).
        assert!(self.log_view <= self.view);
        assert!(self.checkpoint_op <= working.vsr_state.commit_max);
        self.open_phase = OpenPhase::Journal;
        let read_pool = self.recovery_read_pool();
        self.journal.recover(
            storage,
            working.vsr_state.checkpoint_op,
            self.config.replica_count,
            &read_pool,
        );
        self.journal_events(storage);
    }

    /// Recovery reads prepares into buffers of the replica's pool: a view of it that the journal
    /// can draw `JOURNAL_IOPS_READ_MAX` from.
    fn recovery_read_pool(&self) -> MessagePool {
        assert!(self.pool.free_count() >= JOURNAL_IOPS_READ_MAX);
        self.pool.clone()
    }

    pub(super) fn journal_recovered<S: Storage>(&mut self, storage: &mut S, usable: bool) {
        assert_eq!(self.open_phase, OpenPhase::Journal);
        assert_eq!(self.status, Status::Recovering);
        if !usable {
            return self.fail("the journal has entries that only a peer could repair");
        }
        // Faulty entries may hide prepares this replica acknowledged: until a primary's log
        // replaces them, its own log is no evidence in a view change.
        let checkpoint_op = self.checkpoint_op;
        let log_lost = self.superblock.working().vsr_state.log_lost != 0;
        self.log_faulty = self.config.replica_count > 1
            && (log_lost || journal_hides_acknowledged(&self.journal, checkpoint_op));
        let checkpoint = self.superblock.working().vsr_state.checkpoint_state();
        self.open_phase = OpenPhase::StateMachine;
        self.state_machine.open(storage, &checkpoint);
        self.state_machine_progress(storage);
    }

    pub(super) fn state_machine_opened<S: Storage>(
        &mut self,
        storage: &mut S,
        result: Result<(), &'static str>,
    ) {
        assert_eq!(self.status, Status::Recovering);
        assert_eq!(self.open_phase, OpenPhase::StateMachine);
        if let Err(reason) = result {
            if reason == GRID_TOO_SMALL {
                return self.fail(GRID_TOO_SMALL);
            }
            if self.grid_repair_open() {
                // A block of the streams table is bad: the open resumes once a peer's copy is
                // in place (`grid_repair`).
                return;
            }
            return self.fail("the event store checkpoint could not be read");
        }
        self.open_phase = OpenPhase::ClientReplies;
        assert_eq!(self.replies.ios, 0);
        self.client_replies_read_progress(storage);
    }

    /// Reads the stored client replies (`replies`), then replays the WAL.
    pub(super) fn client_replies_read_progress<S: Storage>(&mut self, storage: &mut S) {
        assert_eq!(self.open_phase, OpenPhase::ClientReplies);
        assert_eq!(self.status, Status::Recovering);
        if self.client_replies_read(storage) {
            self.replay_start(storage);
        }
    }

    /// Finds the head of the hash chain from the checkpoint, then executes every op known
    /// committed, reading each prepare back from the WAL (`commit_pipeline`).
    fn replay_start<S: Storage>(&mut self, storage: &mut S) {
        assert_eq!(self.open_phase, OpenPhase::ClientReplies);
        assert_eq!(self.replies.ios, 0);
        // Nothing was executed yet: the log starts at the checkpoint.
        assert_eq!(self.commit_min, self.checkpoint_op);
        assert_eq!(self.head.op(), self.checkpoint_op);
        self.open_phase = OpenPhase::Replay;
        // Timestamps go on from the highest prepare this replica knows: the head of its chain,
        // or the checkpoint's prepare.
        if let Some(checkpoint) = self.checkpoint_header() {
            self.timestamp_observe(&checkpoint);
        }
        self.log_chained_from = self.log_chained_from_find();
        while let Some(header) = self.journal.header_with_op(self.head.op() + 1).copied() {
            if header.parent != self.head.checksum() {
                break;
            }
            self.head.extend(&header);
            self.timestamp_observe(&header);
        }
        // With one replica every durable prepare may have been acknowledged, and it is
        // committed: the replica is the whole quorum. With more, only what the superblock
        // recorded as committed is known; the primary tells the rest.
        let commit_known = self.superblock.working().vsr_state.commit_max;
        self.commit_max = if self.sync.state_lost() {
            // Without an event store nothing is executed: state sync replaces the checkpoint.
            self.checkpoint_op
        } else if self.config.replica_count == 1 {
            self.head.op()
        } else if self.log_view < self.view {
            // The commit number may be a newer view's, and this log an older view's: only what
            // the checkpoint holds is known to be the cluster's. The view's log tells the rest.
            self.checkpoint_op
        } else {
            commit_known.clamp(self.checkpoint_op, self.head.op())
        };
        assert!(self.commit_max >= self.checkpoint_op && self.commit_max <= self.head.op());
        self.commit_pipeline(storage);
    }

    /// The replay is over: truncates the journal entries beyond the head of the chain before
    /// any new op may be prepared or accepted into their slots (see "Truncating after replay" in
    /// the journal's docs).
    ///
    /// Not when faulty entries may hide prepares this replica acknowledged: the chain stops at
    /// the first of them, and the intact entries above it may be acknowledged ops that only
    /// this replica still holds, and are the evidence `op_acknowledged_max` is drawn from at
    /// every restart. They stay until a primary's log replaces them (`log_truncate` keeps the
    /// ones that log holds).
    pub(super) fn replay_done<S: Storage>(&mut self, storage: &mut S) {
        assert_eq!(self.open_phase, OpenPhase::Replay);
        assert_eq!(self.status, Status::Recovering);
        if self.config.replica_count == 1 {
            assert_eq!(self.commit_min, self.head.op());
        }
        assert!(self.commit_min <= self.head.op());
        self.open_phase = OpenPhase::Truncate;
        self.op_acknowledged_max = self.head.op();
        if self.log_wal_faulty() {
            let report = self.journal.recovery_report();
            self.op_acknowledged_max = report.op_acknowledged_max(self.head.op());
            assert!(self.op_acknowledged_max >= self.head.op());
            self.view_change.start_view_nonce = u128::from((self.prng_next() as u32).max(1));
            self.metrics.logs_faulty_recovered += 1;
            return self.journal_truncated(storage);
        }
        self.journal.truncate_after(storage, self.head.op());
        self.journal_events(storage);
    }

    /// The log is faulty because its WAL is (not because the data file was lost).
    pub(super) fn log_wal_faulty(&self) -> bool {
        self.log_faulty && self.superblock.working().vsr_state.log_lost == 0
    }

    /// Opening is over: this replica serves.
    pub(super) fn journal_truncated<S: Storage>(&mut self, storage: &mut S) {
        assert_eq!(self.open_phase, OpenPhase::Truncate);
        if self.status == Status::Failed {
            return;
        }
        assert_eq!(self.status, Status::Recovering);
        assert!(self.log_wal_faulty() || self.journal.header_with_op(self.head.op() + 1).is_none());
        // Nothing is prepared or queued while opening.
        assert!(self.pipeline.is_empty() && self.request_queue.is_empty());
        self.status = Status::Normal;
        self.primary_heard();
        if self.config.replica_count > 1 && self.superblock.working().vsr_state.log_lost != 0 {
            // It lost its data file: it learns the cluster's view first (`rejoin.rs`).
            return self.rejoin_start();
        }
        // A primary that opened this data file before may have prepared ops that its backups
        // acknowledged and that its own crash lost (writes in flight): it cannot know their
        // numbers, so it must not prepare them again in this view. (A data file's first open
        // writes the superblock before the primary prepares anything, so a superblock still as
        // `format` left it means this is the first.)
        let opened_before = self.superblock.working().sequence > 1;
        let pipeline_lost = self.is_primary()
            && (opened_before || self.head.op() > self.commit_max || self.log_faulty);
        if self.config.replica_count > 1 && (self.log_view < self.view || pipeline_lost) {
            // It crashed during a view change, or it was the primary: it waits for, or times
            // out into, the next view instead of leading this one.
            self.status = Status::ViewChange;
        }
        if self.config.replica_count > 1 && !opened_before {
            let state = self.vsr_state_next();
            self.superblock_write(storage, &state, SessionsWritten::Checkpointed);
        }
        self.commit_pipeline(storage);
    }
}

/// Whether recovery found a slot that may have held a prepare this replica acknowledged and
/// that it can no longer read: the header ring names a prepare (or is unreadable) and the
/// prepare ring does not hold it intact. A backup acknowledges a prepare only once its header
/// is durable too, and in op order, so a slot whose header ring is reserved (@B) or whose
/// prepare is intact hides nothing acknowledged, and the hash chain recovered from the
/// checkpoint reaches every acknowledged op.
/// Ops at or below the checkpoint are in the grid already: a slot whose header names one
/// hides nothing.
fn journal_hides_acknowledged(journal: &Journal, checkpoint_op: Op) -> bool {
    let report = journal.recovery_report();
    report.slots.iter().any(|slot| {
        let hazard = matches!(
            slot.case,
            Case::A | Case::C | Case::D | Case::E | Case::K | Case::N | Case::O
        );
        let above_checkpoint = match slot.header {
            EntrySummary::Prepare { op, .. } => op > checkpoint_op,
            _ => true,
        };
        slot.decision == Decision::Repair && hazard && above_checkpoint
    })
}
