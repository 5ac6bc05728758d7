//! Installing a log: how a replica makes its own log equal to a canonical one it learned of (a
//! new primary from the do_view_change quorum, a backup from start_view), and the header repair
//! that serves it.
//!
//! The target is the canonical log's head and the headers of its suffix, extended downwards by
//! `request_headers` (each batch must hash-chain onto the lowest header known, so a header is
//! only ever taken for what the canonical log holds). Then:
//!
//! 1. **Match**: the highest op at which this replica's log and the target agree (same
//!    checksum). By the hash chain everything below agrees too. Ops up to `commit_min` are
//!    committed and so canonical; if the target says otherwise the replica stops rather than
//!    diverge.
//! 2. **Truncate** what lies above the match, durably (`Journal::truncate_after_keeping`), once
//!    no write is in flight: such an op is not in the canonical log, so it was never committed.
//!    WAL entries above the replica's own head that are the target's are kept: a replica whose
//!    WAL has a faulty entry holds the intact ones above it there, and they may be acknowledged
//!    ops that no other replica holds yet (and its evidence of them, `op_acknowledged_max`).
//! 3. **Fetch** the missing prepares with `request_prepare` by op and checksum, from the
//!    replica the target came from and, on alternate attempts, the others. A prepare is taken
//!    only if it is the target's and extends the chain.
//! 4. **Done** once the head is reached and every prepare is durable: the primary persists its
//!    log_view and starts the view; a backup persists its log_view and acknowledges.
//!
//! Repair has a budget: one round of requests per `REPAIR_TIMEOUT_TICKS`, a window of
//! `REPAIR_WINDOW_MAX` prepares or one batch of headers, and a replica serves repair from its
//! WAL only while it keeps a journal read free for its own commits.

use super::prepare::padding_zeroed;
use super::{
    Destination, JournalRead, JournalReadPurpose, Prepared, Replica, Status, message_finish,
};
use crate::constants::{
    HEADER_SIZE, JOURNAL_IOPS_READ_MAX, JOURNAL_IOPS_WRITE_MAX, PIPELINE_BACKUP_MAX,
    REPAIR_REQUEST_OPS_MAX, REPAIR_WINDOW_MAX, REPAIR_WINDOW_ROTATE, VIEW_CHANGE_HEADERS_MAX,
};
use crate::vsr::header::views;
use crate::vsr::header::{Checksum, Command, Header, Op, ReplicaIndex, View};
use crate::vsr::journal::op_prepare_max;
use crate::vsr::message_pool::Message;
use crate::vsr::replica::view_change::view_headers_invalid;
use crate::vsr::storage::Storage;
use crate::vsr::timeout::TimeoutKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Match,
    Fetch,
}

/// The canonical log a replica is installing.
pub(super) struct LogTarget {
    active: bool,
    phase: Phase,
    head: Op,
    /// The lowest op whose canonical header is known; `parent_low` is the checksum of the op
    /// below it.
    known_min: Op,
    parent_low: Checksum,
    /// Indexed by op mod the slot count; valid for `known_min..=head`.
    headers: Vec<Header>,
    /// Where the target came from: asked first.
    source: ReplicaIndex,
    attempts: u64,
    /// The target reaches further back than the WAL window: only state sync could help.
    beyond_window: bool,
}

impl LogTarget {
    pub fn new(slot_count: usize) -> LogTarget {
        assert!(slot_count >= VIEW_CHANGE_HEADERS_MAX, "a target's suffix fits its ring");
        LogTarget {
            active: false,
            phase: Phase::Match,
            head: Op(0),
            known_min: Op(1),
            parent_low: Checksum(0),
            headers: vec![Header::zeroed(); slot_count],
            source: ReplicaIndex(0),
            attempts: 0,
            beyond_window: false,
        }
    }

    pub fn active(&self) -> bool {
        self.active
    }

    /// The replica's log was matched against the target (and cut where it differed): every
    /// entry it holds up to its head is the target's.
    pub fn verified(&self) -> bool {
        self.active && self.phase == Phase::Fetch
    }

    pub fn beyond_window(&self) -> bool {
        self.active && self.beyond_window
    }

    /// State sync installed a checkpoint: the log now starts there; match it again.
    pub fn sync_done(&mut self) {
        self.beyond_window = false;
        self.phase = Phase::Match;
    }

    pub fn source(&self) -> ReplicaIndex {
        assert!(self.active);
        self.source
    }

    pub fn head(&self) -> Op {
        assert!(self.active);
        self.head
    }

    pub fn clear(&mut self) {
        self.active = false;
        self.beyond_window = false;
    }

    /// Targets the log that ends at `head`, given (ascending, hash-chained) headers of its
    /// suffix; those above `head` are ignored (a view change cut them).
    pub fn set(&mut self, head: Op, headers: impl Iterator<Item = Header>, source: ReplicaIndex) {
        self.active = true;
        self.phase = Phase::Match;
        self.head = head;
        self.source = source;
        self.attempts = 0;
        self.beyond_window = false;
        let mut first = true;
        for header in headers {
            if first {
                self.known_min = header.op;
                self.parent_low = header.parent;
                first = false;
            }
            if header.op > head {
                break;
            }
            let slot = self.slot(header.op);
            self.headers[slot] = header;
        }
        assert!(!first, "a target has at least one header");
        assert!(self.known_min <= head + 1);
        // Every known op has a slot of its own in the ring.
        assert!(head + 1 - self.known_min <= self.headers.len() as u64);
    }

    fn slot(&self, op: Op) -> usize {
        op.slot(self.headers.len() as u64)
    }

    /// The target's header at `op`, if known.
    pub fn header(&self, op: Op) -> Option<&Header> {
        if !self.active || op < self.known_min || op > self.head {
            return None;
        }
        let header = &self.headers[self.slot(op)];
        assert_eq!(header.op, op);
        Some(header)
    }

    /// The canonical checksum of `op`, if known.
    fn checksum(&self, op: Op) -> Option<Checksum> {
        assert!(self.active);
        if op + 1 == self.known_min {
            return Some(self.parent_low);
        }
        self.header(op).map(|header| header.checksum)
    }

    /// Takes a header just below the known range if it is the one the chain names.
    fn extend_down(&mut self, header: &Header) -> bool {
        assert!(self.active);
        assert_eq!(header.command(), Some(Command::Prepare));
        if header.op + 1 != self.known_min || header.checksum != self.parent_low {
            return false;
        }
        if self.head - header.op + 1 >= self.headers.len() as u64 {
            self.beyond_window = true;
            return false;
        }
        let slot = self.slot(header.op);
        self.headers[slot] = *header;
        self.known_min = header.op;
        self.parent_low = header.parent;
        assert!(self.known_min <= self.head);
        true
    }

    /// For failure reports.
    pub fn describe(&self) -> String {
        if !self.active {
            return "none".to_string();
        }
        let beyond = if self.beyond_window { " (beyond the WAL window)" } else { "" };
        format!("{:?} {}..={} from {}{beyond}", self.phase, self.known_min, self.head, self.source)
    }
}

enum Match {
    At(Op),
    NeedHeaders,
    Diverged,
}

impl Replica {
    /// The checksum of the prepare at `op` in this replica's own log, if it knows it.
    pub(super) fn own_checksum(&self, op: Op) -> Option<Checksum> {
        if op == self.head.op() {
            return Some(self.head.checksum());
        }
        if op == self.commit_min {
            return Some(self.commit_checksum);
        }
        self.log_header(op).map(|header| header.checksum)
    }

    fn target_match(&self) -> Match {
        assert!(self.target.active());
        assert!(!self.journal.truncating());
        let target = &self.target;
        let top = self.head.op().min(target.head);
        let floor = target.known_min.saturating_sub(1).max(self.commit_min);
        let mut op = top;
        while op >= floor {
            let canonical = target.checksum(op);
            if canonical.is_some() && canonical == self.own_checksum(op) {
                return Match::At(op);
            }
            if op == self.commit_min {
                // Committed, so canonical: the target must agree where it knows this op.
                return if canonical.is_some() { Match::Diverged } else { Match::At(op) };
            }
            if op == Op(0) {
                break;
            }
            op -= 1;
        }
        if self.commit_min > target.head {
            return Match::Diverged;
        }
        Match::NeedHeaders
    }

    /// Moves the log target on as far as it can go now; called again by every event that may
    /// unblock it (a tick, a durable prepare, a finished truncation, headers).
    pub(super) fn repair_progress<S: Storage>(&mut self, storage: &mut S) {
        if !self.target.active() || !self.status.is_open() || self.view_durable != self.view {
            return;
        }
        if self.journal.truncating() {
            return;
        }
        assert!(self.config.replica_count > 1, "a log target comes from a peer");
        let slot_count = u64::from(self.config.journal_slot_count);
        if self.commit_max.max(self.target.head())
            >= self.head.op() + slot_count - REPAIR_WINDOW_MAX as u64
        {
            // Its peers have moved on so far that the ops after this log's head are gone
            // from their WALs (they checkpointed and the ring wrapped).
            self.target.beyond_window = true;
        }
        if self.target.beyond_window() || self.sync.active() {
            // What lies between this log and the target is gone from every peer's WAL.
            return self.sync_progress(storage);
        }
        if self.target.phase == Phase::Match {
            match self.target_match() {
                Match::Diverged => {
                    return self.fail("a committed op differs from the log of a newer view");
                }
                Match::NeedHeaders => return self.request_headers_send(),
                Match::At(op) if op < self.head.op() || self.journal_holds_other_log_above(op) => {
                    if self.journal.writing() {
                        return;
                    }
                    return self.log_truncate(storage, op);
                }
                Match::At(_) => self.target.phase = Phase::Fetch,
            }
        }
        self.target_advance();
        if self.head.op() < self.target.head() {
            return self.repair_request(self.head.op() + 1);
        }
        // The match cut whatever lay above the target's head.
        assert_eq!(self.head.op(), self.target.head());
        if self.pipeline.iter().any(|prepared| !prepared.durable) || self.journal.writing() {
            return;
        }
        if self.status == Status::ViewChange {
            assert!(self.view_change.log_chosen);
            if self.pipeline_fill(storage) {
                self.primary_log_installed(storage);
            }
        } else {
            self.backup_log_installed(storage);
        }
    }

    /// A new primary must hold every op above the commit number in its pipeline, to drive it to
    /// commit and to recognize client retries of it. Ops it holds only in its WAL (it restarted
    /// since it wrote them) are read back, highest first, onto the pipeline's front. True once
    /// the pipeline covers them all.
    fn pipeline_fill<S: Storage>(&mut self, storage: &mut S) -> bool {
        assert!(self.is_primary());
        assert_eq!(self.status, Status::ViewChange);
        let first =
            self.pipeline.front().map_or(self.head.op() + 1, |front| front.message.header().op);
        if first <= self.commit_max + 1 {
            return true;
        }
        let op = first - 1;
        let reading =
            self.journal_reads.iter().any(|read| read.purpose == JournalReadPurpose::Pipeline);
        if reading || self.pipeline.len() >= PIPELINE_BACKUP_MAX {
            return false;
        }
        // Keep one journal read for this replica's own commits, as repair does.
        if self.journal_reads.len() + 1 >= JOURNAL_IOPS_READ_MAX {
            return false;
        }
        let Some(header) = self.log_header(op) else {
            return false;
        };
        assert_eq!(header.op, op);
        if self.journal.dirty(self.journal.slot_for_op(op)) {
            return false;
        }
        let purpose = JournalReadPurpose::Pipeline;
        self.journal_reads.push(JournalRead { op, checksum: header.checksum, purpose });
        self.journal.read_prepare(storage, op, header.checksum, self.pool.get());
        false
    }

    /// A prepare `pipeline_fill` read back: onto the pipeline's front, if it still fits there.
    pub(super) fn pipeline_fill_complete<S: Storage>(&mut self, storage: &mut S, message: Message) {
        let op = message.header().op;
        let first =
            self.pipeline.front().map_or(self.head.op() + 1, |front| front.message.header().op);
        let fits = self.status == Status::ViewChange
            && op + 1 == first
            && op > self.commit_max
            && self.pipeline.len() < PIPELINE_BACKUP_MAX;
        if fits {
            // The read-back prepare chains onto the pipeline's front.
            let chains =
                |front: &Prepared| front.message.header().parent == message.header().checksum;
            assert!(self.pipeline.front().is_none_or(chains));
            let ok_from = self.config.replica.bit();
            let prepared = Prepared { message, durable: true, ok_from, acknowledged: false };
            self.pipeline.push_front(prepared);
        }
        self.repair_progress(storage);
    }

    /// Whether the WAL holds, above `op`, a prepare the target does not: an entry a faulty WAL
    /// kept above its fault (`replay_done`) that a view change cut. Even above the log's head it
    /// must go before the log is the view's, for if it chains onto the head the next open would
    /// take it into the log as the view's.
    fn journal_holds_other_log_above(&self, op: Op) -> bool {
        assert!(self.target.active());
        let target = &self.target;
        let other =
            |held: &Header| target.header(held.op).is_none_or(|canonical| canonical != held);
        self.journal.holds_above(op, other)
    }

    /// Cuts this replica's log back to `op`, where it agrees with the target, and the WAL's
    /// entries above it that the target does not hold.
    fn log_truncate<S: Storage>(&mut self, storage: &mut S, op: Op) {
        assert!(op <= self.head.op());
        assert!(op >= self.commit_min);
        assert!(!self.journal.writing());
        assert!(self.target.active());
        let parent = self.own_checksum(op).expect("the match point is known");
        self.pipeline.retain(|prepared| prepared.message.header().op <= op);
        // What is left of the pipeline still ends at the new head.
        assert!(self.pipeline.back().is_none_or(|back| back.message.header().op == op));
        self.metrics.ops_truncated += self.head.op() - op;
        self.head.reset(op, parent);
        self.target.phase = Phase::Fetch;
        let target = &self.target;
        let keep =
            |held: &Header| target.header(held.op).is_some_and(|canonical| canonical == held);
        let kept = self.journal.truncate_after_keeping(storage, op, keep);
        self.metrics.log_entries_kept_at_truncation += kept;
    }

    /// The replica to ask for the target's entries: its source, and on alternate attempts
    /// another replica, so that one that cannot answer does not stall the repair.
    pub(super) fn target_source(&mut self) -> Option<ReplicaIndex> {
        if self.config.replica_count < 2 {
            return None;
        }
        assert!(self.target.active());
        self.target.attempts += 1;
        let attempt = self.target.attempts / REPAIR_WINDOW_ROTATE;
        Some(self.peer_rotation(self.target.source, attempt))
    }

    /// For the `attempt`-th round of asking: `source` on even rounds (unless it is this
    /// replica), else the other replicas in turn.
    pub(super) fn peer_rotation(&self, source: ReplicaIndex, attempt: u64) -> ReplicaIndex {
        let replica_count = u64::from(self.config.replica_count);
        assert!(replica_count >= 2);
        if attempt.is_multiple_of(2) && source != self.config.replica {
            return source;
        }
        let offset = 1 + (attempt / 2) % (replica_count - 1);
        let peer =
            ReplicaIndex(((u64::from(self.config.replica.get()) + offset) % replica_count) as u8);
        assert_ne!(peer, self.config.replica, "a replica asks a peer, never itself");
        peer
    }

    fn request_headers_send(&mut self) {
        assert!(self.target.active());
        let timeout = &self.timeouts[TimeoutKind::RepairTarget];
        if timeout.counting_down() {
            return;
        }
        let slot_count = u64::from(self.config.journal_slot_count);
        if self.target.head >= self.head.op() + slot_count - REPAIR_WINDOW_MAX as u64 {
            // The ops between its head and the target's are no longer in any peer's WAL.
            self.target.beyond_window = true;
        }
        if self.target.beyond_window {
            return;
        }
        self.timeouts[TimeoutKind::RepairTarget].start();
        let op_max = self.target.known_min - 1;
        let op_min = op_max
            .saturating_sub(VIEW_CHANGE_HEADERS_MAX as u64 - 1)
            .max(self.commit_min.min(op_max));
        let Some(source) = self.target_source() else {
            return;
        };
        if source == self.config.replica {
            return;
        }
        let mut header = self.header_new(Command::RequestHeaders);
        header.op_min = op_min;
        header.op = op_max;
        self.send_header(Destination::Replica(source), header);
    }

    /// Sends the headers this replica holds for `op_min..=op` (the top of that range that its
    /// log holds, ascending).
    pub(super) fn on_request_headers(&mut self, header: &Header) {
        assert_eq!(header.command(), Some(Command::RequestHeaders));
        assert_ne!(header.replica, self.config.replica);
        let op_max = header.op.min(self.head.op());
        if header.op_min > op_max {
            return;
        }
        let op_low = header.op_min.max(op_max.saturating_sub(VIEW_CHANGE_HEADERS_MAX as u64 - 1));
        let mut message = self.pool.get();
        let Some((first, count)) = self.log_headers_write(&mut message, op_low, op_max) else {
            return;
        };
        // Paired with `view_headers_invalid` at the receiver: a run of at most a view change's.
        assert!(count > 0 && count <= VIEW_CHANGE_HEADERS_MAX);
        let mut reply = self.header_new(Command::Headers);
        reply.op_min = first;
        reply.op = op_max;
        let message = message_finish(message, reply, count * HEADER_SIZE);
        self.send(Destination::Replica(header.replica), message);
    }

    /// Headers for the target: taken downwards from the lowest known, as far as they chain.
    pub(super) fn on_headers<S: Storage>(&mut self, storage: &mut S, message: &Message) {
        let header = *message.header();
        if !self.target.active() {
            return;
        }
        if let Some(reason) = view_headers_invalid(message, View::MAX) {
            return self.message_invalid(&header, reason);
        }
        assert_eq!(header.command(), Some(Command::Headers));
        let body = message.body();
        let count = body.len() / HEADER_SIZE;
        assert!(count > 0 && count <= VIEW_CHANGE_HEADERS_MAX, "validated");
        let mut extended = false;
        for index in (0..count).rev() {
            let entry = *Header::from_prefix(&body[index * HEADER_SIZE..]).expect("validated");
            if !self.target.extend_down(&entry) {
                break;
            }
            extended = true;
        }
        if extended {
            self.timeouts[TimeoutKind::RepairTarget].stop();
            self.repair_progress(storage);
        }
    }

    /// Once per tick: keeps a log target, or a backup's normal-path repair, moving.
    pub(super) fn repair_tick<S: Storage>(&mut self, storage: &mut S) {
        assert!(self.status.is_open());
        if self.target.active() {
            self.repair_progress(storage);
        }
    }
}

/// Repair of single prepares: asked for by op or checksum, served from memory or the WAL, and
/// written ahead of the chain while the ops below them arrive.
impl Replica {
    pub(super) fn repair_write_ahead<S: Storage>(&mut self, storage: &mut S, message: Message) {
        let header = *message.header();
        // A committed op of the target, above the chain's head (`on_prepare`).
        assert!(header.op > self.head.op());
        assert!(header.op <= self.commit_max);
        assert!(
            self.target.header(header.op).is_some_and(|target| target.checksum == header.checksum)
        );
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

    /// Serves a prepare to a replica that lacks it, from memory or from the WAL: the prepare
    /// of `op` whose checksum is `context`, or, if `context` is zero, the one this replica's
    /// log holds at `op`. A replica never answers with an entry it cannot read back intact
    /// (the journal verifies both checksums before the read completes).
    pub(super) fn on_request_prepare<S: Storage>(&mut self, storage: &mut S, header: &Header) {
        assert_eq!(header.command(), Some(Command::RequestPrepare));
        let op = header.op;
        if op == Op(0) || op > self.head.op() {
            return;
        }
        let asked = views::RequestPrepare::of(header).prepare_checksum();
        let wanted = |checksum| asked == Checksum::ZERO || asked == checksum;
        let replica = header.replica;
        if let Some(index) = self.pipeline_index(op) {
            let message = self.pipeline[index].message.clone();
            assert_eq!(message.header().op, op);
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
        assert_eq!(held.op, op);
        assert_ne!(replica, self.config.replica);
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
        let timeout = &self.timeouts[TimeoutKind::Repair];
        if !window_arrived && timeout.counting_down() {
            return;
        }
        let normal_backup = self.status == Status::Normal && !self.is_primary();
        if !normal_backup && !self.target.active() {
            return;
        }
        self.timeouts[TimeoutKind::Repair].start();
        let wanted_max =
            if self.target.active() { self.target.head() } else { self.commit_max.max(op) };
        let window_end = wanted_max.min(op + REPAIR_REQUEST_OPS_MAX as u64 - 1);
        self.repair_requested_end = window_end;
        let primary = self.primary_index();
        for wanted in op.through(window_end) {
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
                    views::RequestPrepare::of(&mut header).set_prepare_checksum(checksum);
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
}
