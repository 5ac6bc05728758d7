//! What holds between any two inputs: checked after every `on_message`, `on_tick` and
//! `on_storage_completion` (TigerBeetle's `defer self.invariants()`), so that a broken
//! relation between the replica's fields stops the simulator at the input that broke it,
//! not thousands of ticks later where its effect shows.

use super::{CheckpointPhase, Replica, Status};
use crate::constants::{
    JOURNAL_IOPS_READ_MAX, OUTBOX_LARGE_MAX, PIPELINE_BACKUP_MAX, REQUEST_QUEUE_LARGE_MAX,
    checkpoint_interval_ops, outbox_max, request_queue_max,
};
use crate::vsr::journal::op_prepare_max;

impl Replica {
    pub(super) fn invariants(&self) {
        // `fail` sets both; nothing clears either.
        assert_eq!(self.status == Status::Failed, self.failure.is_some());
        if self.status == Status::Failed {
            return;
        }
        self.invariants_views();
        if !self.status.is_open() {
            return;
        }
        self.invariants_log();
        self.invariants_pipeline();
        assert!(self.pipeline.len() <= PIPELINE_BACKUP_MAX);
        assert!(self.journal_reads.len() <= JOURNAL_IOPS_READ_MAX);
        let clients_max = self.config.clients_max as usize;
        assert!(self.outbox.len() <= outbox_max(clients_max));
        assert!(self.request_queue.len() <= request_queue_max(clients_max));
        assert!(self.request_queue_large <= REQUEST_QUEUE_LARGE_MAX);
        assert!(self.outbox_large <= OUTBOX_LARGE_MAX);
        if !matches!(self.checkpoint, CheckpointPhase::ClientReplies { .. }) {
            // The zone is read while opening, and written by a checkpoint's first phase.
            assert_eq!(self.replies.ios, 0);
        }
        if self.status == Status::ViewChange || self.target.active() || self.sync.active() {
            assert!(self.config.replica_count > 1, "a lone replica has no view change or peer");
        }
        self.invariants_checkpoint();
        let slot_count = u64::from(self.config.journal_slot_count);
        let op_max = op_prepare_max(self.checkpoint_op, slot_count);
        assert!(
            self.head.op() <= op_max,
            "the head {} beyond what the WAL holds {op_max}",
            self.head.op()
        );
    }

    /// Views only grow, and what the superblock holds is never ahead of memory.
    fn invariants_views(&self) {
        assert!(self.log_view <= self.view, "log_view {} view {}", self.log_view, self.view);
        assert!(self.view_durable <= self.view);
        assert!(self.log_view_durable <= self.log_view);
        assert!(self.log_view_durable <= self.view_durable);
        if let Some((view, log_view)) = self.superblock_writing {
            assert!(view <= self.view && log_view <= self.log_view && log_view <= view);
        }
    }

    /// A checkpoint in progress is of `commit_min`, which stays put (commits wait for it), one
    /// interval past the durable checkpoint; the event store's part is held between its phases.
    fn invariants_checkpoint(&self) {
        let phase_op = match self.checkpoint {
            CheckpointPhase::Idle => None,
            CheckpointPhase::StateMachine { op, .. }
            | CheckpointPhase::ClientReplies { op, .. }
            | CheckpointPhase::Superblock { op } => Some(op),
        };
        if let Some(op) = phase_op {
            let interval = checkpoint_interval_ops(self.layout.journal_slot_count);
            assert_eq!(op, self.commit_min, "commits wait for the checkpoint in progress");
            assert_eq!(op, self.checkpoint_op + interval, "a checkpoint is one interval on");
        }
        let client_replies = matches!(self.checkpoint, CheckpointPhase::ClientReplies { .. });
        assert_eq!(client_replies, self.checkpoint_state.is_some());
        if matches!(self.checkpoint, CheckpointPhase::Superblock { .. }) {
            assert!(self.superblock_writing.is_some(), "the checkpoint's superblock update");
            assert!(!self.sync.superblock_writing(), "one superblock update at a time");
        }
        if self.sync.superblock_writing() {
            assert!(self.superblock_writing.is_some(), "state sync's superblock update");
        }
    }

    /// The head, the commit numbers and the checkpoint keep their order.
    fn invariants_log(&self) {
        assert!(self.checkpoint_op <= self.commit_min, "checkpoint above commit_min");
        assert!(self.commit_min <= self.commit_max, "commit_min above commit_max");
        assert!(self.commit_min <= self.head.op() || self.sync.active(), "commit_min above op");
        assert!(
            self.log_chained_from <= self.checkpoint_op,
            "the chain starts above the checkpoint"
        );
        if self.rejoin.learning {
            assert!(self.log_faulty, "a rejoining replica's log is lost");
            assert_eq!(self.status, Status::ViewChange, "a rejoining replica is in no view");
            assert_ne!(self.log_lost(), 0, "the superblock says the log is lost");
        }
        if self.commit_min == self.head.op() {
            // The op executed last is the head of the hash chain.
            assert_eq!(self.commit_checksum, self.head.checksum(), "commit_min's checksum");
        }
        if !(self.status == Status::Normal && self.is_primary()) {
            assert!(self.request_queue.is_empty(), "only a normal primary queues requests");
        }
        if self.view_change.log_chosen {
            assert!(self.is_primary(), "only the view's primary chooses its log");
        }
        if self.target.active() && self.status == Status::ViewChange {
            assert!(self.is_primary(), "a backup installs a log once normal (start_view)");
            assert!(self.view_change.log_chosen, "a new primary installs the log it chose");
        }
        if self.status == Status::Normal && self.is_primary() {
            assert_eq!(self.log_view, self.view, "a normal primary leads its own log's view");
            assert!(!self.log_faulty, "a normal primary's log is sound");
            assert!(!self.target.active(), "a normal primary installs no log");
            assert!(self.commit_max <= self.head.op(), "a primary commits only what it holds");
        }
        if let Some(field) = self.superblock_stale() {
            panic!("the superblock lags the replica's {field} with no update in flight");
        }
    }

    /// The pipeline is a run of consecutive, hash-chained prepares ending at the head.
    fn invariants_pipeline(&self) {
        let Some(last) = self.pipeline.back() else {
            return;
        };
        let first = self.pipeline.front().expect("not empty").message.header().op;
        if self.status == Status::Normal && self.is_primary() {
            assert!(
                first > self.commit_min,
                "pipeline front {first} commit_min {}",
                self.commit_min
            );
        }
        assert_eq!(last.message.header().op, self.head.op(), "the pipeline ends at the head");
        assert_eq!(last.message.header().checksum, self.head.checksum(), "the head's checksum");
        let mut previous: Option<&super::Prepared> = None;
        for prepared in &self.pipeline {
            let header = prepared.message.header();
            if let Some(previous) = previous {
                let below = previous.message.header();
                assert_eq!(header.op, below.op + 1, "pipeline ops are consecutive");
                assert_eq!(header.parent, below.checksum, "pipeline prepares chain");
            }
            previous = Some(prepared);
        }
    }
}
