//! The replicated normal path: how the primary and the backups of one view exchange prepares,
//! acknowledgements, commit numbers and repairs.
//!
//! - The primary (replica `view mod replica_count`) broadcasts each prepare and commits, in op
//!   order, once a replication quorum (a majority, itself included) holds it durably.
//! - A backup accepts the prepare that extends its hash chain (`parent` is its head's checksum),
//!   writes it, and sends `prepare_ok` only once it is durable.
//! - Backups learn the commit number from later prepares and from `commit` heartbeats, and
//!   execute exactly the ops the primary committed: their log is a prefix of the primary's (the
//!   chain guarantees it within a view), so any op up to a commit number the primary announced
//!   is committed.
//! - A backup missing ops (it was partitioned, or restarted) asks the primary with
//!   `request_prepare`, one op at a time; the primary answers from memory or from its WAL.
//! - The primary sends unacknowledged prepares again after `PREPARE_TIMEOUT_TICKS`.

use super::{Destination, JournalRead, JournalReadPurpose, Prepared, Replica, Status};
use crate::constants::{
    BACKUP_LIVENESS_TICKS, COMMIT_HEARTBEAT_TICKS, JOURNAL_IOPS_READ_MAX, JOURNAL_IOPS_WRITE_MAX,
    PIPELINE_BACKUP_MAX, PREPARE_TIMEOUT_TICKS, REPAIR_REQUEST_OPS_MAX, REPAIR_TIMEOUT_TICKS,
    REPAIR_WINDOW_MAX, SECTOR_SIZE, op_prepare_max,
};
use crate::vsr::header::{Checksum, Command, Header, Op};
use crate::vsr::message_pool::Message;
use crate::vsr::storage::Storage;

impl Replica {
    pub(super) fn on_prepare<S: Storage>(&mut self, storage: &mut S, message: Message) {
        let header = *message.header();
        if header.view > self.view {
            // Only a normal primary of a newer view prepares in it.
            return self.view_jump(storage, header.view);
        }
        let from_primary = self.prepare_commit_observe(&header);
        if self.status == Status::Normal && self.is_primary() {
            return;
        }
        let op = header.op;
        if op <= self.head.op() {
            self.on_prepare_held(storage, message);
            return self.commit_pipeline(storage);
        }
        if self.log_wal_faulty() && !self.target.active() {
            // Its WAL keeps entries above its fault that a view change may have cut: written
            // outside a log install (whose truncation removes them first), this prepare could
            // fill the fault and let the next open chain through them.
            return;
        }
        if self.sync.active() {
            // The log is about to restart at a newer checkpoint: nothing is added to it
            // until then (the target is repaired after the sync).
            return;
        }
        // The prepare must extend this replica's chain, and be known to belong to the log this
        // replica follows: the canonical log of a view change or start_view, or, past its head,
        // the current view's (which only its primary prepares).
        let chained = op == self.head.op() + 1 && header.parent == self.head.checksum();
        let target_checksum = self.target.header(op).map(|target| target.checksum);
        let canonical = match target_checksum {
            Some(checksum) => checksum == header.checksum,
            None => from_primary && self.status == Status::Normal && !self.target.active(),
        };
        if !chained && target_checksum == Some(header.checksum) && op <= self.commit_max {
            // A committed op of the target, ahead of the chain's head: written now, taken into
            // the chain once the ops below it are (`target_advance`), so that repair replies
            // that arrive out of order are not wasted.
            return self.repair_write_ahead(storage, message);
        }
        if !chained || !canonical {
            self.repair_request(self.head.op() + 1);
            return self.commit_pipeline(storage);
        }
        self.prepare_append(storage, message);
        self.commit_pipeline(storage);
    }

    /// A prepare the primary authored says what it committed, whoever relays it. It is no sign
    /// that the primary is alive: the other backup relays its prepares in repair long after it
    /// died. Only its own commit heartbeats (`on_commit`) are. Returns whether the primary of
    /// this view authored it.
    fn prepare_commit_observe(&mut self, header: &Header) -> bool {
        let from_primary = header.view == self.view && header.replica == self.primary_index();
        if from_primary && self.status == Status::Normal && !self.is_primary() {
            // Its commit number covers ops below it: taken unless this replica's log is known
            // to differ from the primary's there (its entry below is not the prepare's parent).
            let differs = self.own_checksum(header.op - 1).is_some_and(|own| own != header.parent);
            if differs {
                self.metrics.commits_refused_checksum += 1;
            } else {
                self.commit_max = self.commit_max.max(header.commit);
            }
        }
        from_primary
    }

    /// Appends the prepare that extends this replica's chain and log, if the WAL window, the
    /// backup's pipeline and the journal have room for it now; otherwise the primary sends it
    /// again (`PREPARE_TIMEOUT_TICKS`).
    fn prepare_append<S: Storage>(&mut self, storage: &mut S, message: Message) {
        let header = *message.header();
        assert_eq!(header.op, self.head.op() + 1);
        assert_eq!(header.parent, self.head.checksum());
        let slot_count = u64::from(self.config.journal_slot_count);
        if header.op > op_prepare_max(self.checkpoint_op, slot_count) {
            return;
        }
        if self.pipeline.len() >= PIPELINE_BACKUP_MAX || self.journal.truncating() {
            return;
        }
        if !self.journal.write_available() {
            self.metrics.prepares_deferred_journal_busy += 1;
            return;
        }
        let message = padding_zeroed(message);
        self.head.extend(&header);
        self.timestamp_observe(&header);
        let prepared =
            Prepared { message: message.clone(), durable: false, ok_from: 0, acknowledged: false };
        self.pipeline.push_back(prepared);
        self.journal.write_prepare(storage, message);
        self.target_advance();
        assert_eq!(self.head.op(), header.op);
    }

    /// A prepare at or below this replica's head: a retransmission, acknowledged again if
    /// this very prepare is durable here (and every one below it), or the intact copy of an
    /// entry a read found corrupt, written over it.
    fn on_prepare_held<S: Storage>(&mut self, storage: &mut S, message: Message) {
        let header = *message.header();
        let op = header.op;
        let held = self.journal.header_with_op(op).is_some_and(|held| *held == header);
        let slot = self.journal.slot_for_op(op);
        if held && self.journal.faulty(slot) && !self.journal.truncating() {
            if self.journal.write_available() {
                self.journal.write_prepare(storage, padding_zeroed(message));
            }
            return;
        }
        let durable_below = self
            .pipeline
            .iter()
            .take_while(|prepared| prepared.message.header().op <= op)
            .all(|prepared| prepared.durable);
        let ack = held && !self.journal.dirty(slot) && self.log_synced() && durable_below;
        if ack && self.status == Status::Normal && op > self.commit_min {
            self.send_prepare_ok(&header);
        }
    }

    fn repair_write_ahead<S: Storage>(&mut self, storage: &mut S, message: Message) {
        let header = *message.header();
        let slot_count = u64::from(self.config.journal_slot_count);
        if self.journal.header_with_op(header.op).is_some_and(|held| *held == header) {
            return;
        }
        if header.op > op_prepare_max(self.checkpoint_op, slot_count) || self.journal.truncating() {
            return;
        }
        // Keep room for the pipeline's own writes.
        if self.journal.writes_in_flight() + PIPELINE_BACKUP_MAX + 1 >= JOURNAL_IOPS_WRITE_MAX {
            return;
        }
        self.journal.write_prepare(storage, padding_zeroed(message));
    }

    /// Extends the chain over target entries already durable in the journal (written ahead),
    /// while the pipeline is empty so that it stays a run of consecutive ops.
    pub(super) fn target_advance(&mut self) {
        if !self.pipeline.is_empty() {
            return;
        }
        while let Some(target) = self.target.header(self.head.op() + 1).copied() {
            let slot = self.journal.slot_for_op(target.op);
            let held = self.journal.header_with_op(target.op).is_some_and(|held| *held == target);
            if !held || self.journal.dirty(slot) || target.op > self.commit_max {
                return;
            }
            self.head.extend(&target);
            self.timestamp_observe(&target);
        }
    }

    pub(super) fn send_prepare_ok(&mut self, prepare: &Header) {
        let mut header = self.header_new(Command::PrepareOk);
        header.op = prepare.op;
        header.commit = self.commit_min;
        header.timestamp = prepare.timestamp;
        header.client = prepare.client;
        header.request = prepare.request;
        header.operation = prepare.operation;
        header.parent = prepare.parent;
        header.context = prepare.checksum;
        let primary = self.primary_index();
        self.send_header(Destination::Replica(primary), header);
    }

    pub(super) fn on_prepare_ok<S: Storage>(&mut self, storage: &mut S, header: &Header) {
        if !self.is_primary() {
            return;
        }
        // The backup's commit number as of now (after a restart it may be lower than before).
        self.backup_commit[usize::from(header.replica)] = header.commit;
        let Some(index) = self.pipeline_index(header.op) else {
            return;
        };
        let prepared = &mut self.pipeline[index];
        if prepared.message.header().checksum != header.context {
            return;
        }
        prepared.ok_from |= 1 << header.replica;
        self.commit_advance_primary(storage);
    }

    /// The lowest commit number among the backups heard from lately whose commit is still
    /// inside this WAL's window (this replica's own op if none): how far the primary may run
    /// ahead and still repair them from its WAL. A backup already outside the window needs
    /// state sync and is not waited for.
    pub(super) fn backups_commit_min(&self) -> Op {
        let slot_count = u64::from(self.config.journal_slot_count);
        let window_start = self.head.op().saturating_sub(slot_count - REPAIR_WINDOW_MAX as u64);
        let mut commit_min = self.head.op();
        for replica in 0..self.config.replica_count {
            let index = usize::from(replica);
            let heard = self.backup_heard_tick[index];
            let live = heard > 0 && self.ticks < heard + BACKUP_LIVENESS_TICKS;
            let commit = self.backup_commit[index];
            if replica != self.config.replica && live && commit >= window_start {
                commit_min = commit_min.min(commit);
            }
        }
        commit_min
    }

    /// A backup's ping says it is alive (`on_message` noted when) and how far it committed.
    pub(super) fn on_ping(&mut self, header: &Header) {
        assert_ne!(header.replica, self.config.replica);
        if self.is_primary() {
            self.backup_commit[usize::from(header.replica)] = header.commit;
        }
    }

    /// Tells the primary this backup is alive and how far it has committed.
    pub(super) fn send_ping(&mut self) {
        let mut header = self.header_new(Command::Ping);
        header.timestamp = self.ticks.max(1);
        header.commit = self.commit_min;
        header.checkpoint_op = self.checkpoint_op;
        let primary = self.primary_index();
        self.send_header(Destination::Replica(primary), header);
    }

    pub(super) fn on_commit<S: Storage>(&mut self, storage: &mut S, header: &Header) {
        if self.is_primary() || header.replica != self.primary_index() {
            return;
        }
        self.primary_heard_tick_set();
        if !self.commit_agrees(header.commit, header.context) {
            return;
        }
        self.commit_max = self.commit_max.max(header.commit);
        self.commit_pipeline(storage);
    }

    /// Whether this replica's log may take the primary's commit number `op`, at which the
    /// primary executed the prepare whose checksum is `checksum`. If this replica holds
    /// another prepare at `op`, its log is not the view's there: it must not execute it, and
    /// asks for the view's log instead; if it executed another one already, it stops rather
    /// than diverge.
    fn commit_agrees(&mut self, op: Op, checksum: Checksum) -> bool {
        if op < self.commit_min {
            return true;
        }
        let held = if op == self.commit_min {
            Some(self.commit_checksum)
        } else {
            self.log_header(op).map(|header| header.checksum)
        };
        if held.is_none_or(|held| held == checksum) {
            return true;
        }
        self.metrics.commits_refused_checksum += 1;
        if op == self.commit_min {
            self.fail("executed a prepare other than the one the primary committed at its op");
        } else if !self.target.active() {
            self.send_request_start_view();
        }
        false
    }

    /// Serves a prepare to a replica that lacks it, from memory or from the WAL: the prepare
    /// of `op` whose checksum is `context`, or, if `context` is zero, the one this replica's
    /// log holds at `op`. A replica never answers with an entry it cannot read back intact
    /// (the journal verifies both checksums before the read completes).
    pub(super) fn on_request_prepare<S: Storage>(&mut self, storage: &mut S, header: &Header) {
        let op = header.op;
        if op == 0 || op > self.head.op() {
            return;
        }
        let wanted = |checksum| header.context == 0 || header.context == checksum;
        let replica = header.replica;
        if let Some(index) = self.pipeline_index(op) {
            let message = self.pipeline[index].message.clone();
            if wanted(message.header().checksum) {
                self.send(Destination::Replica(replica), message);
            }
            return;
        }
        let Some(held) = self.journal.header_with_op(op).copied() else {
            return;
        };
        if !wanted(held.checksum) || self.journal.faulty(self.journal.slot_for_op(op)) {
            return;
        }
        // Keep one journal read for this replica's own commits: repair has a budget.
        if self.journal_reads.len() + 1 >= JOURNAL_IOPS_READ_MAX {
            return;
        }
        let duplicate = self.journal_reads.iter().any(|read| read.op == op);
        if duplicate || self.pool.free_count() < 2 * JOURNAL_IOPS_READ_MAX {
            return;
        }
        let purpose = JournalReadPurpose::Repair { replica };
        self.journal_reads.push(JournalRead { op, checksum: held.checksum, purpose });
        self.journal.read_prepare(storage, op, held.checksum, self.pool.get());
    }

    /// Asks for the prepares from `op` on: a window of up to `REPAIR_REQUEST_OPS_MAX`
    /// consecutive ops (they are accepted in order as they arrive), at once if `op` is past the
    /// window asked for last (it has arrived), else at most once per `REPAIR_TIMEOUT_TICKS`. Ops
    /// of a log target are asked for by checksum from the replicas that hold them; past it,
    /// from the primary of the view, by op.
    pub(super) fn repair_request(&mut self, op: Op) {
        // The replies pace the windows: a replica far behind (restarted under load) catches up
        // at the round trip's pace rather than one window per tick, which left it hundreds of
        // ops behind for a second, and a view change that needs its acknowledgements waiting.
        let window_arrived = op > self.repair_requested_end;
        if !window_arrived && self.ticks < self.repair_requested_tick + REPAIR_TIMEOUT_TICKS {
            return;
        }
        let normal_backup = self.status == Status::Normal && !self.is_primary();
        if !normal_backup && !self.target.active() {
            return;
        }
        self.repair_requested_tick = self.ticks;
        let wanted_max =
            if self.target.active() { self.target.head() } else { self.commit_max.max(op) };
        let window_end = wanted_max.min(op + REPAIR_REQUEST_OPS_MAX as u64 - 1);
        self.repair_requested_end = window_end;
        let primary = self.primary_index();
        for wanted in op..=window_end {
            let mut header = self.header_new(Command::RequestPrepare);
            header.op = wanted;
            let target_checksum = self.target.header(wanted).map(|target| target.checksum);
            let written_ahead = target_checksum.is_some_and(|checksum| {
                self.journal.header_with_op(wanted).is_some_and(|held| held.checksum == checksum)
            });
            if written_ahead && wanted > op {
                continue;
            }
            let destination = match target_checksum {
                Some(checksum) => {
                    header.context = checksum;
                    let Some(source) = self.target_source() else {
                        continue;
                    };
                    source
                }
                None if normal_backup && !self.target.active() => primary,
                None => continue,
            };
            if destination == self.config.replica {
                continue;
            }
            self.send_header(Destination::Replica(destination), header);
        }
    }

    /// Sends prepares that still lack a quorum again, to the backups that have not
    /// acknowledged them.
    pub(super) fn prepare_timeout(&mut self) {
        if !self.ticks.is_multiple_of(PREPARE_TIMEOUT_TICKS) || self.view_change.abdicating {
            return;
        }
        let quorum = self.quorum_replication();
        for index in 0..self.pipeline.len() {
            let prepared = &self.pipeline[index];
            if prepared.ok_from.count_ones() as usize >= quorum {
                continue;
            }
            let (ok_from, message) = (prepared.ok_from, prepared.message.clone());
            for replica in 0..self.config.replica_count {
                if replica != self.config.replica && ok_from & (1 << replica) == 0 {
                    self.send(Destination::Replica(replica), message.clone());
                }
            }
        }
    }

    /// Tells backups the commit number: as soon as it moves, and every
    /// `COMMIT_HEARTBEAT_TICKS` otherwise.
    pub(super) fn commit_heartbeat(&mut self) {
        if self.config.replica_count == 1 || self.view_change.abdicating {
            // An abdicating primary falls silent so that its backups time out and elect another.
            return;
        }
        let (commit_sent, tick_sent) = self.commit_heartbeat_sent;
        if commit_sent == self.commit_min && self.ticks < tick_sent + COMMIT_HEARTBEAT_TICKS {
            return;
        }
        self.commit_heartbeat_sent = (self.commit_min, self.ticks);
        for replica in 0..self.config.replica_count {
            if replica == self.config.replica {
                continue;
            }
            let mut header = self.header_new(Command::Commit);
            header.commit = self.commit_min;
            header.context = self.commit_checksum;
            header.checkpoint_op = self.checkpoint_op;
            header.timestamp = self.ticks;
            self.send_header(Destination::Replica(replica), header);
        }
    }
}

/// A prepare from a peer, ready for the journal, which writes whole sectors: the padding after
/// the message (whatever the bus left there) zeroed. Before the buffer is shared.
fn padding_zeroed(mut message: Message) -> Message {
    let size = message.header().size as usize;
    message.buffer_mut_unique()[size..size.next_multiple_of(SECTOR_SIZE)].fill(0);
    message
}
