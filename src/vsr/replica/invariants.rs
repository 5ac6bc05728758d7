//! What holds between any two inputs: checked after every `on_message`, `on_tick` and
//! `on_storage_completion` (TigerBeetle's `defer self.invariants()`), so that a broken
//! relation between the replica's fields stops the simulator at the input that broke it,
//! not thousands of ticks later where its effect shows.

use super::{Replica, Status};
use crate::constants::{JOURNAL_IOPS_READ_MAX, OUTBOX_MAX, PIPELINE_BACKUP_MAX};
use crate::vsr::journal::op_prepare_max;

impl Replica {
    pub(super) fn invariants(&self) {
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
        assert!(self.outbox.len() <= OUTBOX_MAX);
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
        }
        if self.status == Status::Normal && self.is_primary() {
            assert_eq!(self.log_view, self.view, "a normal primary leads its own log's view");
            assert!(!self.log_faulty, "a normal primary's log is sound");
            assert!(!self.target.active(), "a normal primary installs no log");
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
