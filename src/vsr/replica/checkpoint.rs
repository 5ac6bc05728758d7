//! Checkpoint: every `checkpoint_interval_ops` ops the event store seals its blocks and writes
//! its streams table, the client replies are flushed, and the superblock records the
//! checkpoint (with the view, log_view and `log_lost`, which the same updates persist), so the
//! WAL slots behind it can be reused.

use super::{CheckpointPhase, OpenPhase, Replica, Status};
use crate::constants::checkpoint_interval_ops;
use crate::vsr::storage::Storage;
use crate::vsr::superblock::VsrState;

/// Which client session table a superblock update writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SessionsWritten {
    /// The one the superblock holds (a view update).
    Checkpointed,
    /// The replica's table as of now (a checkpoint).
    Current,
    /// The one state sync fetched with its checkpoint.
    Synced,
}

impl Replica {
    /// Starts a checkpoint if `commit_min` is a checkpoint op.
    pub(super) fn checkpoint_maybe<S: Storage>(&mut self, storage: &mut S) {
        let interval = checkpoint_interval_ops(self.layout.journal_slot_count);
        // Called after each op executed, which only happens with no checkpoint or state sync in
        // progress: no checkpoint op is ever passed over.
        assert!(self.commit_min <= self.checkpoint_op + interval, "a checkpoint was skipped");
        assert!(!self.sync.active());
        if self.commit_min < self.checkpoint_op + interval {
            return;
        }
        assert_eq!(self.commit_min, self.checkpoint_op + interval);
        assert_eq!(self.checkpoint, CheckpointPhase::Idle);
        self.checkpoint =
            CheckpointPhase::StateMachine { op: self.commit_min, checksum: self.commit_checksum };
        // It reuses the blocks of its checkpoint before the last: op `commit_min` committed, so
        // a replication quorum holds the last checkpoint durable (`state_machine::checkpoint`).
        self.state_machine.checkpoint(storage);
        self.state_machine_progress(storage);
    }

    pub(super) fn state_machine_progress<S: Storage>(&mut self, storage: &mut S) {
        self.state_machine_progress_reads();
        if self.status == Status::Recovering
            && self.open_phase == OpenPhase::StateMachine
            && let Some(result) = self.state_machine.poll_open()
        {
            return self.state_machine_opened(storage, result);
        }
        if self.sync.reopening()
            && let Some(result) = self.state_machine.poll_open()
        {
            self.sync_reopened(result);
        }
        if let CheckpointPhase::StateMachine { op, checksum } = self.checkpoint
            && let Some(state) = self.state_machine.poll_checkpoint()
        {
            assert_eq!(op, self.commit_min);
            assert!(self.checkpoint_state.is_none());
            let (reused, tails) = self.state_machine.checkpoint_counts();
            (self.metrics.grid_blocks_reused, self.metrics.checkpoint_tails) = (reused, tails);
            self.checkpoint_state = Some(state);
            self.checkpoint = CheckpointPhase::ClientReplies { op, checksum };
            self.checkpoint_progress(storage);
        }
        if self.status == Status::Normal {
            self.commit_pipeline(storage);
        }
    }

    /// Writes the client replies that changed since the last checkpoint, then, once the event
    /// store's checkpoint and those writes are done, records the checkpoint in the superblock
    /// (whose update syncs them first).
    pub(super) fn checkpoint_progress<S: Storage>(&mut self, storage: &mut S) {
        let CheckpointPhase::ClientReplies { op, checksum } = self.checkpoint else {
            return;
        };
        if !self.client_replies_write(storage) {
            return;
        }
        if self.superblock_writing.is_some() {
            // A view update is in flight: this runs again when it completes.
            return;
        }
        let state_machine = self.checkpoint_state.take().expect("event store checkpoint done");
        assert_eq!(op, self.commit_min, "commits wait for the checkpoint");
        assert!(op > self.checkpoint_op);
        let mut state = self.vsr_state_next();
        state.checkpoint_op = op;
        state.checkpoint_checksum = checksum;
        state.checkpoint_state_set(&state_machine);
        self.checkpoint = CheckpointPhase::Superblock { op };
        self.superblock_write(storage, &state, SessionsWritten::Current);
    }

    pub(super) fn superblock_progress<S: Storage>(&mut self, storage: &mut S) {
        let Some(result) = self.superblock.poll_result() else {
            return;
        };
        if self.status == Status::Recovering && self.open_phase == OpenPhase::Superblock {
            return self.superblock_opened(storage, result.is_ok());
        }
        let (view, log_view) = self.superblock_writing.take().expect("superblock update");
        if result.is_err() {
            return self.fail("a superblock update failed");
        }
        assert!(view >= self.view_durable && log_view >= self.log_view_durable);
        // Paired with `superblock_write`: the superblock now holds what was written.
        let written = self.superblock.working().vsr_state;
        assert_eq!((written.view, written.log_view), (view, log_view));
        self.view_durable = view;
        self.log_view_durable = log_view;
        if let CheckpointPhase::Superblock { op } = self.checkpoint {
            assert!(op >= self.checkpoint_op);
            assert_eq!(written.checkpoint_op, op, "the superblock holds the new checkpoint");
            assert_eq!(op, self.commit_min, "commits wait for the checkpoint");
            self.checkpoint_op = op;
            self.checkpoint = CheckpointPhase::Idle;
            self.metrics.checkpoints += 1;
        } else if self.sync.superblock_writing() {
            self.sync_superblock_done(storage);
        }
        self.checkpoint_progress(storage);
        // Whatever this update was for (a checkpoint, state sync, a view), a view change may
        // have arrived while it was in flight and waited for it to finish: its view is written
        // now, by the next update.
        self.view_persist(storage);
        self.view_durable_progress(storage);
        self.commit_pipeline(storage);
    }

    /// The superblock's `log_lost` as it should be now: it stays set until the replica holds
    /// the cluster's log (its log is not faulty any more).
    pub(super) fn log_lost(&self) -> u8 {
        u8::from(self.log_faulty && self.superblock.working().vsr_state.log_lost != 0)
    }

    /// Writes view and log_view to the superblock if they changed, unless an update is in
    /// flight (then `superblock_progress` calls this again).
    pub(super) fn view_persist<S: Storage>(&mut self, storage: &mut S) {
        if self.superblock_writing.is_some() {
            return;
        }
        if matches!(self.checkpoint, CheckpointPhase::Superblock { .. }) {
            return;
        }
        let unchanged = self.view == self.view_durable && self.log_view == self.log_view_durable;
        if unchanged && self.log_lost() == self.superblock.working().vsr_state.log_lost {
            return;
        }
        let state = self.vsr_state_next();
        self.superblock_write(storage, &state, SessionsWritten::Checkpointed);
    }

    /// The superblock's state as this replica now stands: view, log_view, log_lost and the
    /// commit number it knows, over the checkpoint the superblock holds.
    pub(super) fn vsr_state_next(&self) -> VsrState {
        assert!(self.log_view <= self.view);
        let mut state: VsrState = self.superblock.working().vsr_state();
        // Memory is never behind the superblock (and the checkpoint it holds is never behind
        // memory's: state sync writes it first).
        assert!(self.view >= state.view && self.log_view >= state.log_view);
        assert!(state.checkpoint_op >= self.checkpoint_op);
        state.view = self.view;
        state.log_view = self.log_view;
        state.log_lost = self.log_lost();
        state.commit_max = state.commit_max.max(self.commit_max);
        state
    }

    /// Starts a superblock update to `state` and the client session table `sessions` names;
    /// `superblock_progress` takes its completion.
    pub(super) fn superblock_write<S: Storage>(
        &mut self,
        storage: &mut S,
        state: &VsrState,
        sessions: SessionsWritten,
    ) {
        assert!(self.superblock_writing.is_none());
        assert!(state.log_view <= state.view);
        // No view is persisted before memory holds it.
        assert!(state.view <= self.view && state.log_view <= self.log_view);
        self.superblock_writing = Some((state.view, state.log_view));
        let sessions = match sessions {
            SessionsWritten::Checkpointed => None,
            SessionsWritten::Current => Some(self.sessions.records()),
            SessionsWritten::Synced => Some(self.sync.sessions()),
        };
        self.superblock.update(storage, state, sessions);
    }
}
