//! The view change: how a replicated cluster replaces a primary that failed or cannot reach a
//! quorum, without losing a committed op.
//!
//! - **Leaving a view.** A backup that hears no commit heartbeat from its primary (prepares do
//!   not count: another backup relays them in repair) for `NORMAL_HEARTBEAT_TIMEOUT_TICKS`
//!   (plus jitter) votes to leave: it sends
//!   `start_view_change` for `view + 1` to every replica. A replica that counts a view-change
//!   quorum of votes for a newer view enters it (`Status::ViewChange`). A lone replica that
//!   cannot hear the primary therefore cannot disturb a cluster that works.
//! - **do_view_change.** Once its view is durable in the superblock, a replica in a view change
//!   sends the new primary its log: `log_view` (the last view it was normal in), `op`, its
//!   commit number, the headers of its log's suffix, and `op_min`, the lowest op it can deny
//!   ever having acknowledged: `op + 1`, or, if its WAL has faulty entries that may hide
//!   prepares it acknowledged, one above `op_acknowledged_max` (Protocol-Aware Recovery: a
//!   fault is never taken for a nack). A replica that lost its data file does not send one.
//! - **The canonical log.** The new primary waits for a view-change quorum of logs, its own
//!   included. The canonical one is the sound log (`op_min = op + 1`) with the highest
//!   `log_view`, then the highest op: it holds every committed op (the quorum intersects every
//!   replication quorum, and a replica only takes a view's log_view once it holds that view's
//!   whole starting log). A faulty log counts toward the quorum but is canonical only as a
//!   last resort (below): its chain stops below what it may have acknowledged. So the primary
//!   decides only once no faulty log could hold a committed op the canonical lacks: each has
//!   an older `log_view` than the canonical, or the same one and nothing it may have
//!   acknowledged above the canonical's op, or a newer one while too few replicas (logs of
//!   newer views, and replicas not heard from) remain to have formed a replication quorum in a
//!   view after the canonical's. When no sound log qualifies, the highest log of all (faulty
//!   ones included) is canonical if too few replicas may have acknowledged an op above its
//!   head to have committed one: its chain up to its head is its view's log. Otherwise the
//!   primary waits for more logs (`view_change_waits_for_faulty`). An op above every reported
//!   commit number that a nack quorum lacks (below their `op_min`, nothing counts as a nack
//!   unless it differs from a header the replica holds) cannot have committed and is cut off,
//!   so the view can start even if no intact copy of it survives.
//! - **Installing it.** The primary makes its own log the canonical one (`repair.rs`: find where
//!   they agree, truncate the rest, fetch the missing prepares by checksum), persists
//!   `log_view = view`, becomes normal and sends `start_view` with the suffix. Uncommitted ops
//!   are in its pipeline and commit once a replication quorum acknowledges them in this view.
//! - **start_view.** A backup takes the view, installs the same log the same way, persists
//!   `log_view` and only then acknowledges prepares.
//! - **Stale and newer views.** Messages of older views are ignored. A replica that sees a
//!   normal replica of a newer view (a prepare, commit or ping of that view) joins it and asks
//!   its primary for the log with `request_start_view`.
//! - **Abdication.** A primary whose uncommitted prepares make no progress for
//!   `PRIMARY_ABDICATE_TICKS` falls silent (no heartbeats, no prepares), so that a partition that
//!   lets small messages through but not prepares cannot stall the cluster: its backups time
//!   out and elect another.
//! - A view change that does not finish within `VIEW_CHANGE_TIMEOUT_TICKS` moves on to the next
//!   view (another primary).

use super::{Destination, Replica, Status, message_finish};
use crate::constants::{
    BACKUP_LIVENESS_TICKS, COMMIT_HEARTBEAT_TICKS, HEADER_SIZE, NORMAL_HEARTBEAT_TIMEOUT_TICKS,
    PRIMARY_ABDICATE_TICKS, REPAIR_WINDOW_MAX, REPLICAS_MAX, TIMEOUT_JITTER_TICKS,
    VIEW_CHANGE_HEADERS_MAX,
};
use crate::vsr::header::views;
use crate::vsr::header::{Command, Header, Op, ReplicaIndex, View};
use crate::vsr::message_pool::Message;
use crate::vsr::storage::Storage;
use crate::vsr::timeout::TimeoutKind;
use zerocopy::IntoBytes;

static_assertions::const_assert!(NORMAL_HEARTBEAT_TIMEOUT_TICKS >= 4 * COMMIT_HEARTBEAT_TICKS);

/// One replica's do_view_change, as the new primary keeps it.
#[derive(Clone, Copy)]
pub(super) struct DoViewChangeRecord {
    pub received: bool,
    pub log_view: View,
    pub op: Op,
    /// The lowest op above `op` it can deny holding: `op + 1` for a sound log.
    pub op_min: Op,
    pub commit: Op,
    pub headers_count: usize,
    /// The suffix of its log, ascending, ending at `op`.
    pub headers: [Header; VIEW_CHANGE_HEADERS_MAX],
}

impl DoViewChangeRecord {
    const EMPTY: DoViewChangeRecord = DoViewChangeRecord {
        received: false,
        log_view: View(0),
        op: Op(0),
        op_min: Op(0),
        commit: Op(0),
        headers_count: 0,
        headers: [Header::zeroed(); VIEW_CHANGE_HEADERS_MAX],
    };

    /// Its log is sound: its chain reaches every op it may have acknowledged.
    pub fn sound(&self) -> bool {
        self.op_min == self.op + 1
    }

    /// Whether it lacks the prepare `entry` (at `entry.op`, above its commit): it can deny
    /// holding that op, or its log holds another prepare there.
    fn nacks(&self, entry: &Header) -> bool {
        assert!(self.received);
        assert!(entry.op > self.commit, "only an uncommitted op can be nacked");
        entry.op >= self.op_min
            || self.header(entry.op).is_some_and(|held| held.checksum != entry.checksum)
    }

    /// Its header at `op`, if its suffix reaches that far down.
    pub fn header(&self, op: Op) -> Option<&Header> {
        let first = self.headers[..self.headers_count].first()?.op;
        let index = usize::try_from(op.get().checked_sub(first.get())?).ok()?;
        self.headers[..self.headers_count].get(index)
    }
}

pub(super) struct ViewChangeState {
    /// Votes (start_view_change) to leave for `vote_view`: bit i for replica i.
    vote_view: View,
    votes: u8,
    pub abdicating: bool,
    /// Primary: the commit number when it last moved or had nothing to do
    /// (`TimeoutKind::PrimaryAbdicate` restarts then).
    progress_commit: Op,
    pub records: Vec<DoViewChangeRecord>,
    /// The new primary chose its log (the target is set) for the view.
    pub log_chosen: bool,
    /// Backup with a faulty WAL: the nonce its request_start_view messages carry since it
    /// opened (0: none), and whether the start_view being installed answered one.
    pub start_view_nonce: u128,
    pub start_view_answered: bool,
}

impl ViewChangeState {
    pub fn new() -> ViewChangeState {
        ViewChangeState {
            vote_view: View(0),
            votes: 0,
            abdicating: false,
            progress_commit: Op(0),
            records: vec![DoViewChangeRecord::EMPTY; REPLICAS_MAX],
            log_chosen: false,
            start_view_nonce: 0,
            start_view_answered: false,
        }
    }
}

/// Why the headers of a do_view_change or start_view body contradict its header, or `None`:
/// they must be valid prepares of this cluster with ascending, consecutive, hash-chained ops
/// that end at the header's op, none of a view newer than the log's.
pub fn view_headers_invalid(message: &Message, log_view: View) -> Option<&'static str> {
    let header = message.header();
    let body = message.body();
    if !body.len().is_multiple_of(HEADER_SIZE) || body.is_empty() {
        return Some("body is not a list of headers");
    }
    let count = body.len() / HEADER_SIZE;
    if count > VIEW_CHANGE_HEADERS_MAX {
        return Some("more headers than a view change carries");
    }
    let mut previous: Option<Header> = None;
    for index in 0..count {
        let Some(entry) = Header::from_prefix(&body[index * HEADER_SIZE..]) else {
            return Some("header unreadable");
        };
        if !entry.valid_checksum() || entry.invalid().is_some() {
            return Some("header invalid");
        }
        if entry.cluster != header.cluster || entry.command() != Some(Command::Prepare) {
            return Some("header is not a prepare of this cluster");
        }
        if entry.view > log_view {
            return Some("header of a view newer than the log");
        }
        if let Some(previous) = previous
            && (entry.op != previous.op + 1 || entry.parent != previous.checksum)
        {
            return Some("headers do not form a hash chain");
        }
        previous = Some(*entry);
    }
    let last = previous.expect("at least one header");
    if last.op != header.op {
        return Some("headers do not end at the op claimed");
    }
    if header.commit > header.op {
        return Some("commit above op");
    }
    None
}

/// The replica whose log is canonical among the do_view_changes received (see the module
/// docs): the sound log with the highest (log_view, op) if no faulty log may hold an op
/// committed beyond it, else the highest log of all if too few replicas may have acknowledged
/// an op above its head to have committed one; `None` if none can be chosen yet. `records`
/// has one entry per replica of the cluster.
fn canonical_choose(
    records: &[DoViewChangeRecord],
    quorum_replication: usize,
) -> Option<ReplicaIndex> {
    assert!(quorum_replication <= records.len());
    assert!(quorum_replication > records.len() / 2, "a replication quorum is a majority");
    let chosen = canonical_sound(records, quorum_replication)
        .or_else(|| canonical_highest(records, quorum_replication));
    assert!(chosen.is_none_or(|best| records[usize::from(best)].received));
    chosen
}

fn canonical_sound(
    records: &[DoViewChangeRecord],
    quorum_replication: usize,
) -> Option<ReplicaIndex> {
    let quorum_nack = records.len() - quorum_replication + 1;
    let received = || records.iter().enumerate().filter(|(_, record)| record.received);
    let (best, canonical) = received()
        .filter(|(_, record)| record.sound())
        .max_by_key(|(index, record)| (record.log_view, record.op, std::cmp::Reverse(*index)))?;
    // An op committed in a view newer than the canonical log's had a replication quorum of
    // replicas whose logs are now of a newer view, or that are not heard from: with too few
    // of those, a faulty log of a newer view holds nothing committed beyond the canonical.
    let newer = received().filter(|(_, record)| record.log_view > canonical.log_view).count();
    let unheard = records.len() - received().count();
    let newer_views_uncommitted = newer + unheard < quorum_replication;
    // Ops commit in order: if a nack quorum lacks the op after the canonical head, no op
    // above the head committed, whatever a faulty log of the same view may have acknowledged.
    let after_head_nacks =
        received().filter(|(_, record)| record.op_min <= canonical.op + 1).count();
    let beyond_head_uncommitted = after_head_nacks >= quorum_nack;
    let covered = |record: &DoViewChangeRecord| {
        record.sound()
            || record.log_view < canonical.log_view
            || (record.log_view == canonical.log_view
                && (record.op_min <= canonical.op + 1 || beyond_head_uncommitted))
            || (record.log_view > canonical.log_view && newer_views_uncommitted)
    };
    if !received().all(|(_, record)| covered(record)) {
        return None;
    }
    Some(ReplicaIndex(best as u8))
}

/// The log with the highest (log_view, op), sound or faulty, when every sound one may lack a
/// committed op. Its chain up to its head is its view's log, which holds every op committed
/// before that view; but a fault may have cut ops above its head that committed in its view
/// or an older one. Such an op was acknowledged only by replicas that cannot deny the op
/// after its head (their `op_min` is above it, whatever their view) or are not heard from:
/// too few of those, and nothing above its head committed. (Nothing committed in a newer view
/// either: no log of one was received, and the unheard are fewer than a replication quorum.)
fn canonical_highest(
    records: &[DoViewChangeRecord],
    quorum_replication: usize,
) -> Option<ReplicaIndex> {
    let received = || records.iter().enumerate().filter(|(_, record)| record.received);
    let (best, canonical) = received().max_by_key(|(index, record)| {
        (record.log_view, record.op, record.sound(), std::cmp::Reverse(*index))
    })?;
    let beyond_head = |record: &DoViewChangeRecord| record.op_min > canonical.op + 1;
    let acknowledgers = received().filter(|(_, record)| beyond_head(record)).count();
    let unheard = records.len() - received().count();
    (acknowledgers + unheard < quorum_replication).then_some(ReplicaIndex(best as u8))
}

/// Timeouts and votes.
impl Replica {
    /// Backup: it heard its primary (or, in a view change, the view change began): both
    /// timeouts that end in a vote count from now, each with a new jitter.
    pub(super) fn primary_heard(&mut self) {
        for kind in [TimeoutKind::NormalHeartbeat, TimeoutKind::ViewChangeStatus] {
            let timeout = &mut self.timeouts[kind];
            if !timeout.ticking() {
                timeout.start();
            }
            timeout.reset_with_jitter(&mut self.prng, TIMEOUT_JITTER_TICKS);
        }
    }

    /// Once per tick, replicated clusters only.
    pub(super) fn view_change_tick<S: Storage>(&mut self, storage: &mut S) {
        assert!(self.config.replica_count > 1);
        if !self.timeouts[TimeoutKind::NormalHeartbeat].ticking() {
            self.primary_heard();
        }
        let message = &mut self.timeouts[TimeoutKind::ViewChangeMessage];
        let resend = message.due_restart();
        match self.status {
            Status::Normal if self.is_primary() => {
                self.abdicate_maybe();
                if self.view_change.abdicating && resend {
                    // It votes to leave too: with its vote, backups that time out make a
                    // quorum sooner, and it learns of the next view when it starts.
                    self.vote(storage, self.view.next(), resend);
                }
            }
            Status::Normal => {
                if self.timeouts[TimeoutKind::NormalHeartbeat].fired() {
                    self.vote(storage, self.view.next(), resend);
                } else if resend && !self.target.active() {
                    let lagging = self.commit_max > self.head.op() + REPAIR_WINDOW_MAX as u64;
                    if self.log_faulty || lagging || self.log_view < self.view {
                        self.send_request_start_view();
                    }
                }
            }
            Status::ViewChange => {
                if resend {
                    // Its log to the new primary, or a request for the view's log: a primary
                    // already normal in this view answers either with start_view.
                    self.view_change_resend(storage);
                }
                if self.status == Status::ViewChange
                    && self.timeouts[TimeoutKind::ViewChangeStatus].fired()
                {
                    // Always the next view: a replica that cannot reach a quorum must not run
                    // its vote up, or the votes of the others would never meet.
                    self.vote(storage, self.view.next(), resend);
                }
            }
            _ => {}
        }
    }

    /// A primary whose uncommitted prepares have not moved for `PRIMARY_ABDICATE_TICKS`
    /// cannot reach a quorum: it falls silent so that its backups elect another.
    fn abdicate_maybe(&mut self) {
        assert!(self.is_primary());
        assert_eq!(self.status, Status::Normal);
        let uncommitted = self.head.op() > self.commit_max;
        let progress = &mut self.timeouts[TimeoutKind::PrimaryAbdicate];
        if !uncommitted
            || self.commit_max != self.view_change.progress_commit
            || !progress.ticking()
        {
            self.view_change.progress_commit = self.commit_max;
            progress.start();
            return;
        }
        if !progress.fired() {
            return;
        }
        let stalled_ticks = progress.elapsed();
        // It abdicates if it does not hear from a replication quorum; if it does (a backup
        // still catching up, say), only once the stall lasts four times as long, which covers
        // a partition that lets small messages through but not prepares.
        let heard = (0..self.config.replica_count)
            .filter(|replica| {
                let heard_tick = self.backup_heard_tick[usize::from(*replica)];
                let live = heard_tick > 0 && self.ticks < heard_tick + BACKUP_LIVENESS_TICKS;
                *replica == self.config.replica.get() || live
            })
            .count();
        let abdicate =
            heard < self.quorum_replication() || stalled_ticks > 4 * PRIMARY_ABDICATE_TICKS;
        if abdicate && !self.view_change.abdicating {
            self.view_change.abdicating = true;
            self.metrics.abdications += 1;
        }
    }

    /// Votes to leave for `view`, telling every replica (at most once per resend interval).
    fn vote<S: Storage>(&mut self, storage: &mut S, view: View, send: bool) {
        assert!(view > self.view);
        self.votes_expire();
        if view > self.view_change.vote_view {
            self.view_change.vote_view = view;
            self.view_change.votes = 0;
        }
        if self.view_change.votes == 0 {
            self.timeouts[TimeoutKind::VoteWindow].start();
        }
        let bit = self.config.replica.bit();
        let new = self.view_change.votes & bit == 0;
        self.view_change.votes |= bit;
        if new || send {
            self.send_start_view_change(self.view_change.vote_view);
        }
        assert!(self.view_change.vote_view >= view);
        self.votes_count(storage);
        // Its own vote stands, whether or not the quorum made it enter the view.
        assert_ne!(self.view_change.votes & bit, 0);
    }

    pub(super) fn on_start_view_change<S: Storage>(&mut self, storage: &mut S, header: &Header) {
        assert_eq!(header.command(), Some(Command::StartViewChange));
        assert_ne!(header.replica, self.config.replica);
        let view = header.view;
        if view <= self.view {
            return;
        }
        if views::StartViewChange::of(header).entered() != 0 {
            // Its sender counted a quorum of votes for `view`, so this replica joins it: else a
            // few replicas that entered a view whose votes the others missed would be left
            // behind in it. Or its sender is rejoining after the loss of its data file and
            // needs a view above every one it may have been in (`rejoin.rs`).
            return self.view_change_start(storage, view);
        }
        if view < self.view_change.vote_view {
            return;
        }
        self.votes_expire();
        if view > self.view_change.vote_view {
            self.view_change.vote_view = view;
            self.view_change.votes = 0;
        }
        if self.view_change.votes == 0 {
            self.timeouts[TimeoutKind::VoteWindow].start();
        }
        self.view_change.votes |= header.replica.bit();
        self.votes_count(storage);
    }

    /// Votes count toward a quorum only within `VOTE_WINDOW_TICKS` of the first: a quorum must
    /// be of replicas that lost the primary at about the same time, not across incidents.
    fn votes_expire(&mut self) {
        if self.view_change.votes != 0 && self.timeouts[TimeoutKind::VoteWindow].fired() {
            self.view_change.votes = 0;
            self.timeouts[TimeoutKind::VoteWindow].stop();
        }
    }

    fn votes_count<S: Storage>(&mut self, storage: &mut S) {
        let view = self.view_change.vote_view;
        let votes = self.view_change.votes.count_ones() as usize;
        assert!(votes <= usize::from(self.config.replica_count), "a vote per replica");
        if view > self.view && votes >= self.quorum_view_change() {
            self.view_change_start(storage, view);
        }
    }

    fn send_start_view_change(&mut self, view: View) {
        assert!(view >= self.view, "a replica votes only for views ahead");
        assert!(self.config.replica_count > 1);
        let mut header = Header::new(Command::StartViewChange, self.config.cluster);
        header.view = view;
        header.replica = self.config.replica;
        // Whether this replica entered that view: it counted a quorum of votes for it, or it
        // entered it to rejoin.
        let entered = self.view == view && self.status == Status::ViewChange;
        let entered = if !entered || self.log_view >= view {
            0
        } else if self.log_lost() != 0 {
            super::rejoin::START_VIEW_CHANGE_REJOINING
        } else {
            1
        };
        views::StartViewChange::of(&mut header).set_entered(entered);
        for replica in 0..self.config.replica_count {
            if replica != self.config.replica.get() {
                self.send_header(Destination::Replica(ReplicaIndex(replica)), header);
            }
        }
    }
}

/// Entering a view.
impl Replica {
    /// Enters the view change for `view`: a quorum voted for it, or a do_view_change for it
    /// arrived (which only a replica that counted such a quorum sends).
    pub(super) fn view_change_start<S: Storage>(&mut self, storage: &mut S, view: View) {
        assert!(view > self.view);
        self.view_enter(storage, view);
        // Tell the others: this replica's vote may complete their quorum.
        self.view_change.vote_view = view;
        self.view_change.votes |= self.config.replica.bit();
        self.send_start_view_change(view);
        self.view_change_resend(storage);
        assert_eq!(self.view, view);
    }

    /// Joins `view`, in which some replica is already normal, and asks its primary for the log.
    pub(super) fn view_jump<S: Storage>(&mut self, storage: &mut S, view: View) {
        if view <= self.view || self.config.replica_count == 1 {
            return;
        }
        self.view_enter(storage, view);
        self.send_request_start_view();
    }

    /// What entering any newer view resets: the pipeline's acknowledgements belong to the old
    /// view, queued requests are dropped (clients retry), a log target is abandoned.
    fn view_enter<S: Storage>(&mut self, storage: &mut S, view: View) {
        assert!(view > self.view);
        assert!(self.config.replica_count > 1, "a lone replica stays in its view");
        self.metrics.view_change_during_superblock_update +=
            u64::from(self.superblock_writing.is_some());
        self.metrics.view_change_during_state_sync += u64::from(self.sync.active());
        self.view = view;
        self.status = Status::ViewChange;
        self.primary_heard();
        self.timeouts[TimeoutKind::ViewChangeMessage].start();
        self.view_change.abdicating = false;
        self.view_change.log_chosen = false;
        for record in self.view_change.records.iter_mut() {
            record.received = false;
        }
        if self.view_change.vote_view < view {
            self.view_change.vote_view = view;
            self.view_change.votes = 0;
        }
        self.request_queue_clear();
        let bit = self.config.replica.bit();
        for prepared in self.pipeline.iter_mut() {
            prepared.acknowledged = false;
            prepared.ok_from = if prepared.durable { bit } else { 0 };
        }
        self.target.clear();
        self.view_persist(storage);
    }

    /// Sends what a replica in a view change owes: its do_view_change (to itself, if it is the
    /// new primary), or a request for the view's log if it cannot vote with its own.
    pub(super) fn view_change_resend<S: Storage>(&mut self, storage: &mut S) {
        if self.status != Status::ViewChange {
            return;
        }
        assert!(self.config.replica_count > 1);
        if self.log_view < self.view {
            // So that replicas that missed the votes join this view too. (A restarted primary
            // stepping aside waits in its own view, whose log is already its own.)
            self.send_start_view_change(self.view);
        }
        let can_vote =
            self.log_view < self.view && self.log_lost() == 0 && !self.journal.truncating();
        if !can_vote || self.view_durable != self.view {
            if !self.is_primary() {
                self.send_request_start_view();
            }
            return;
        }
        let Some(message) = self.do_view_change_build() else {
            return;
        };
        self.metrics.view_change_votes_with_faulty_slots += u64::from(self.log_faulty);
        if self.is_primary() {
            self.do_view_change_record(storage, &message);
        } else {
            let primary = self.primary_index();
            self.send(Destination::Replica(primary), message);
        }
    }

    /// The header of this replica's log at `op`, if it holds one.
    pub(super) fn log_header(&self, op: Op) -> Option<Header> {
        if op == Op(0) {
            return Some(Header::root_prepare(self.config.cluster));
        }
        if op > self.head.op() || op < self.log_chained_from {
            return None;
        }
        if op == self.checkpoint_op
            && let Some(checkpoint) = self.checkpoint_header().filter(|header| header.op == op)
        {
            // After state sync the checkpoint's prepare need not be in the WAL, and the entry
            // its slot holds may be a stale one of the same op (an older view's).
            return Some(checkpoint);
        }
        let held = self.journal.header_with_op(op).copied()?;
        // Where this replica knows the checksum of its log's entry, a WAL entry that differs
        // is not its log's (a stale one the chain did not take).
        let known = if op == self.head.op() {
            Some(self.head.checksum())
        } else if op == self.commit_min {
            Some(self.commit_checksum)
        } else {
            None
        };
        if known.is_some_and(|checksum| checksum != held.checksum) {
            self.metrics_stale_header_seen();
            return None;
        }
        Some(held)
    }

    /// Counts a stale WAL entry that `log_header` passed over (it takes `&self`: the counter
    /// is a `Cell`).
    fn metrics_stale_header_seen(&self) {
        self.log_headers_stale.set(self.log_headers_stale.get() + 1);
    }

    /// Walks down from the checkpoint's prepare while the WAL's entries hash-chain to it; the
    /// lowest op reached (the checkpoint op if its prepare is unknown or the entry below it
    /// is not its parent).
    pub(super) fn log_chained_from_find(&self) -> Op {
        let Some(checkpoint) = self.checkpoint_header() else {
            return self.checkpoint_op;
        };
        assert_eq!(checkpoint.op, self.checkpoint_op);
        let slot_count = self.journal.slot_count() as u64;
        let (mut low, mut parent) = (checkpoint.op, checkpoint.parent);
        while low > Op(0) && checkpoint.op - (low - 1) < slot_count {
            match self.journal.header_with_op(low - 1) {
                Some(below) if below.checksum == parent => {
                    low -= 1;
                    parent = below.parent;
                }
                _ => break,
            }
        }
        assert!(low <= self.checkpoint_op);
        low
    }

    /// The headers this replica's log holds for the top of `op_low..=op_high` (a run ending at
    /// `op_high`), ascending, into `message`'s body; returns the first op and the count, or
    /// `None` if the log has no header at `op_high`.
    pub(super) fn log_headers_write(
        &self,
        message: &mut Message,
        op_low: Op,
        op_high: Op,
    ) -> Option<(Op, usize)> {
        assert!(op_low <= op_high);
        assert!(op_high - op_low < VIEW_CHANGE_HEADERS_MAX as u64);
        let mut lowest = self.log_header(op_high)?;
        let mut first = op_high;
        // Down as far as the entries hash-chain: a WAL entry below that does not is another
        // log's (stale), and a body with it would fail every receiver's chain check.
        while first > op_low {
            match self.log_header(first - 1) {
                Some(below) if below.checksum == lowest.parent => {
                    lowest = below;
                    first -= 1;
                }
                Some(_) => {
                    self.metrics_stale_header_seen();
                    break;
                }
                None => break,
            }
        }
        assert!(first >= op_low && first <= op_high);
        let body = &mut message.buffer_mut_unique()[HEADER_SIZE..];
        for (index, op) in first.through(op_high).enumerate() {
            let header = self.log_header(op).expect("the run was checked above");
            body[index * HEADER_SIZE..][..HEADER_SIZE].copy_from_slice(header.as_bytes());
        }
        Some((first, (op_high - first + 1) as usize))
    }

    /// The suffix of this replica's log (up to `VIEW_CHANGE_HEADERS_MAX` headers, ending at
    /// `op`) into `message`'s body; returns the count (0 if the log lacks its head's header).
    fn log_suffix_write(&self, message: &mut Message) -> usize {
        let low = self.head.op().saturating_sub(VIEW_CHANGE_HEADERS_MAX as u64 - 1);
        let count =
            self.log_headers_write(message, low, self.head.op()).map_or(0, |(_, count)| count);
        assert!(count <= VIEW_CHANGE_HEADERS_MAX);
        count
    }

    fn do_view_change_build(&self) -> Option<Message> {
        // A vote: of a replica between views, with its new view durable, and a log of an
        // older one that it has not lost.
        assert_eq!(self.status, Status::ViewChange);
        assert!(self.log_view < self.view);
        assert_eq!(self.view_durable, self.view);
        assert_eq!(self.log_lost(), 0);
        let mut message = self.pool.get();
        let count = self.log_suffix_write(&mut message);
        if count == 0 {
            return None;
        }
        let mut header = self.header_new(Command::DoViewChange);
        header.op = self.head.op();
        header.op_min = self.op_acknowledged_max() + 1;
        header.commit = self.commit_max.min(self.head.op());
        header.checkpoint_op = self.checkpoint_op;
        header.log_view = self.log_view;
        // Paired with `view_headers_invalid` and `DoViewChangeRecord::sound`.
        assert!(header.commit <= header.op && header.op_min > header.op);
        Some(message_finish(message, header, count * HEADER_SIZE))
    }

    pub(super) fn send_request_start_view(&mut self) {
        let primary = self.primary_index();
        if primary == self.config.replica {
            return;
        }
        let mut header = self.header_new(Command::RequestStartView);
        views::RequestStartView::of(&mut header).set_nonce(self.view_change.start_view_nonce);
        self.send_header(Destination::Replica(primary), header);
    }

    /// The view (and log_view) this replica acts in became durable.
    pub(super) fn view_durable_progress<S: Storage>(&mut self, storage: &mut S) {
        match self.status {
            Status::ViewChange if self.view_durable == self.view => {
                if self.view_change.log_chosen {
                    self.repair_progress(storage);
                } else {
                    self.view_change_resend(storage);
                }
            }
            Status::Normal => self.prepare_oks_send(),
            _ => {}
        }
    }
}

/// The new primary.
impl Replica {
    pub(super) fn on_do_view_change<S: Storage>(&mut self, storage: &mut S, message: &Message) {
        let header = *message.header();
        assert_eq!(header.command(), Some(Command::DoViewChange));
        assert_ne!(header.replica, self.config.replica);
        if header.view < self.view || self.primary_index_of(header.view) != self.config.replica {
            return;
        }
        // Its log may hold entries of views after its log_view: it was installing a newer
        // view's log (even this view's, before it restarted), never of a later view.
        if let Some(reason) = view_headers_invalid(message, header.view) {
            return self.message_invalid(&header, reason);
        }
        if header.view == self.view && self.status == Status::Normal {
            // The view started without it: send it the log.
            return self.send_start_view(header.replica, 0);
        }
        if header.view > self.view {
            self.view_change_start(storage, header.view);
        }
        if self.status == Status::ViewChange {
            self.do_view_change_record(storage, message);
        }
    }

    /// A peer's message whose body contradicts its header: dropped, counted, and its reason
    /// kept for the driver's log (`invalid_last`).
    pub(super) fn message_invalid(&mut self, header: &Header, reason: &'static str) {
        assert!(header.valid_checksum());
        self.metrics.messages_invalid += 1;
        self.invalid_last = Some(reason);
    }

    fn do_view_change_record<S: Storage>(&mut self, storage: &mut S, message: &Message) {
        let header = *message.header();
        assert_eq!(header.view, self.view);
        assert!(self.is_primary());
        assert_eq!(self.status, Status::ViewChange);
        let body = message.body();
        let count = body.len() / HEADER_SIZE;
        assert!(count > 0 && count <= VIEW_CHANGE_HEADERS_MAX, "validated");
        let record = &mut self.view_change.records[usize::from(header.replica)];
        let fresh = !record.received;
        record.received = true;
        record.log_view = header.log_view;
        record.op = header.op;
        record.op_min = header.op_min;
        record.commit = header.commit;
        record.headers_count = count;
        for index in 0..count {
            let entry = *Header::from_prefix(&body[index * HEADER_SIZE..]).expect("validated");
            record.headers[index] = entry;
        }
        // A later do_view_change may let the primary cut an op no one can supply.
        // Validated: the suffix ends at the op claimed.
        assert_eq!(record.headers[count - 1].op, record.op);
        if fresh || !self.view_change.log_chosen {
            self.do_view_change_quorum(storage);
        }
    }

    /// With a view-change quorum of logs: chooses the canonical log and starts installing it.
    fn do_view_change_quorum<S: Storage>(&mut self, storage: &mut S) {
        assert!(self.is_primary());
        assert_eq!(self.status, Status::ViewChange);
        if self.log_view == self.view {
            // A primary back from a crash, in the view whose log it had: peers still in that
            // view change must not make it primary of the view again, with a log that may lack
            // what its backups acknowledged since. It times out into the next view.
            self.metrics.view_change_refused_own_log_view += 1;
            return;
        }
        let records = &self.view_change.records;
        let received = records.iter().filter(|record| record.received).count();
        if received < self.quorum_view_change() {
            return;
        }
        let replica_count = usize::from(self.config.replica_count);
        let Some(best) = canonical_choose(&records[..replica_count], self.quorum_replication())
        else {
            self.metrics.view_change_waits_for_faulty += 1;
            return;
        };
        let canonical = records[usize::from(best)];
        self.metrics.view_change_canonical_faulty += u64::from(!canonical.sound());
        let mut commit = self.commit_max.max(self.commit_min);
        for record in records.iter().filter(|record| record.received) {
            commit = commit.max(record.commit);
        }
        for entry in &canonical.headers[..canonical.headers_count] {
            // A prepare carries its primary's commit number: those ops are committed.
            commit = commit.max(entry.commit);
        }
        if commit > canonical.op {
            // No correct quorum reports a commit beyond the canonical head.
            return self.message_invalid(&canonical.headers[0], "commit beyond the canonical log");
        }
        let head = self.head_after_nacks(&canonical, commit);
        // Committed ops are never cut.
        assert!(head >= commit && head <= canonical.op);
        self.commit_max = self.commit_max.max(commit);
        self.view_change.log_chosen = true;
        let headers = &canonical.headers[..canonical.headers_count];
        self.target.set(head, headers.iter().copied(), best);
        self.timeouts[TimeoutKind::RepairTarget].stop();
        self.repair_progress(storage);
    }

    /// The canonical head, lowered below the first op above `commit` that a nack quorum lacks.
    fn head_after_nacks(&mut self, canonical: &DoViewChangeRecord, commit: Op) -> Op {
        assert!(commit <= canonical.op);
        assert!(canonical.received);
        let quorum_nack = self.quorum_nack();
        for op in (commit + 1).through(canonical.op) {
            let Some(entry) = canonical.header(op) else {
                continue;
            };
            let records = self.view_change.records.iter().filter(|record| record.received);
            let nacks = records.filter(|record| record.nacks(entry)).count();
            if nacks >= quorum_nack {
                self.metrics.ops_truncated += canonical.op - op + 1;
                self.metrics.ops_truncated_by_nacks += canonical.op - op + 1;
                return op - 1;
            }
        }
        canonical.op
    }

    /// The primary's log is the canonical one and durable: it persists the view as its log's,
    /// then becomes normal (`view_durable_progress` → `repair_progress` → here again).
    pub(super) fn primary_log_installed<S: Storage>(&mut self, storage: &mut S) {
        assert!(self.is_primary());
        assert_eq!(self.status, Status::ViewChange);
        assert!(self.target.active() && self.view_change.log_chosen);
        assert_eq!(self.head.op(), self.target.head(), "the canonical log is installed");
        if self.log_view != self.view {
            self.log_view = self.view;
            self.op_acknowledged_max = Op(0);
            self.view_persist(storage);
        }
        if self.log_view_durable != self.view || self.view_durable != self.view {
            return;
        }
        // Its log's head is the highest prepare of the view's log: the view's first prepare
        // is timestamped above it.
        if let Some(head) = self.log_header(self.head.op()) {
            self.timestamp_observe(&head);
        }
        self.status = Status::Normal;
        self.log_faulty = false;
        // A rejoined replica that leads holds the cluster's log now: `log_lost` is cleared on
        // disk too, or after a restart it would take itself for lost and withhold its log from
        // every view change (with two replicas and the other's WAL faulty, for good).
        self.view_persist(storage);
        self.target.clear();
        self.metrics.views_started += 1;
        self.timeouts[TimeoutKind::PrimaryAbdicate].start();
        self.view_change.progress_commit = self.commit_max;
        self.backup_heard_tick = [0; REPLICAS_MAX];
        self.commit_heartbeat_sent = Op(0);
        self.timeouts[TimeoutKind::CommitHeartbeat].stop();
        self.timeouts[TimeoutKind::Prepare].stop();
        let bit = self.config.replica.bit();
        for prepared in self.pipeline.iter_mut() {
            assert!(prepared.durable);
            prepared.ok_from = bit;
        }
        for replica in 0..self.config.replica_count {
            if replica != self.config.replica.get() {
                self.send_start_view(ReplicaIndex(replica), 0);
            }
        }
        assert!(self.commit_max <= self.head.op(), "the canonical head covers every commit");
        self.commit_advance_primary(storage);
    }

    /// The view's log to `replica`; `nonce` echoes the request_start_view it answers, if any.
    pub(super) fn send_start_view(&mut self, replica: ReplicaIndex, nonce: u128) {
        assert!(self.is_primary());
        assert_eq!(self.status, Status::Normal);
        assert_eq!(self.log_view, self.view, "a primary sends its own view's log");
        assert_ne!(replica, self.config.replica);
        let mut message = self.pool.get();
        let count = self.log_suffix_write(&mut message);
        if count == 0 {
            return;
        }
        let mut header = self.header_new(Command::StartView);
        let mut start_view = views::StartView::of(&mut header);
        start_view.set_head(self.head.op());
        start_view.set_nonce(nonce);
        start_view.set_commit_max(self.commit_max.min(self.head.op()));
        header.checkpoint_op = self.checkpoint_op.min(header.commit);
        let message = message_finish(message, header, count * HEADER_SIZE);
        self.send(Destination::Replica(replica), message);
    }

    pub(super) fn on_request_start_view(&mut self, header: &Header) {
        assert_eq!(header.command(), Some(Command::RequestStartView));
        assert_ne!(header.replica, self.config.replica);
        if header.view == self.view && self.status == Status::Normal && self.is_primary() {
            self.send_start_view(header.replica, views::RequestStartView::of(header).nonce());
        }
    }
}

/// Backups.
impl Replica {
    pub(super) fn on_start_view<S: Storage>(&mut self, storage: &mut S, message: &Message) {
        let header = *message.header();
        assert_eq!(header.command(), Some(Command::StartView));
        assert_ne!(header.replica, self.config.replica);
        let view = header.view;
        if view < self.view || header.replica != self.primary_index_of(view) {
            return;
        }
        if let Some(reason) = view_headers_invalid(message, view) {
            return self.message_invalid(&header, reason);
        }
        if header.op < self.commit_min {
            // An older start_view of this view, overtaken on the way: this replica already
            // executed past its head. A fresher one follows (request_start_view).
            return;
        }
        if view == self.log_view && self.log_faulty && header.op < self.op_acknowledged_max() {
            let nonce = self.view_change.start_view_nonce;
            if nonce == 0 || views::StartView::of(&header).nonce() != nonce {
                // An older start_view of the view this faulty log is of, overtaken on the way:
                // it may predate prepares this replica acknowledged. Installed, its truncation
                // would erase them, and with them the evidence its bound is drawn from at the
                // next open. The answer to its request_start_view follows.
                return;
            }
            // The answer to a request_start_view it sent since it opened: within a view the
            // primary's log only grows, so it holds every prepare this replica acknowledged.
            // The bound is loose (a rotten header sector hides up to a sector of ops, which a
            // quiet cluster may never reach), and goes once this log is installed.
            self.metrics.start_views_below_acknowledged += 1;
            self.view_change.start_view_answered = true;
        }
        if view == self.view && self.status == Status::Normal {
            // A duplicate, or the log this replica follows: taken as a target only to repair a
            // faulty log, or one far behind (headers let it fetch in bulk, out of order).
            self.primary_heard();
            let lagging = header.op > self.head.op() + REPAIR_WINDOW_MAX as u64;
            let installed = self.log_view == self.view && !self.log_faulty;
            if self.target.active() || (installed && !lagging) {
                return;
            }
        }
        if view > self.view {
            self.view_enter(storage, view);
        }
        assert_eq!(self.view, view);
        assert!(!self.is_primary(), "a start_view comes from the view's primary");
        self.status = Status::Normal;
        self.view_change.votes = 0;
        self.primary_heard();
        self.commit_max = self.commit_max.max(header.commit);
        let body = message.body();
        let count = body.len() / HEADER_SIZE;
        let headers = (0..count)
            .map(|index| *Header::from_prefix(&body[index * HEADER_SIZE..]).expect("validated"));
        self.target.set(header.op, headers, header.replica);
        self.timeouts[TimeoutKind::RepairTarget].stop();
        self.view_persist(storage);
        self.repair_progress(storage);
    }

    /// A backup's log is the view's and durable: it persists the view as its log's, then
    /// acknowledges what it holds.
    pub(super) fn backup_log_installed<S: Storage>(&mut self, storage: &mut S) {
        assert!(!self.is_primary());
        assert_eq!(self.status, Status::Normal);
        assert!(self.target.active());
        assert_eq!(self.head.op(), self.target.head(), "the view's log is installed");
        self.target.clear();
        self.log_faulty = false;
        if self.log_view != self.view || self.view_change.start_view_answered {
            self.op_acknowledged_max = Op(0);
            self.view_change.start_view_answered = false;
        }
        if self.log_view != self.view {
            self.log_view = self.view;
            self.metrics.views_started += 1;
        }
        self.view_persist(storage);
        self.prepare_oks_send();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(log_view: View, op: Op, op_min: Op) -> DoViewChangeRecord {
        DoViewChangeRecord { received: true, log_view, op, op_min, ..DoViewChangeRecord::EMPTY }
    }

    #[test]
    fn a_faulty_log_of_a_newer_view_is_covered_only_when_no_quorum_could_commit_there() {
        // Goal: R0's WAL is faulty and of view 28; R2's is sound and of view 27. With R1's log
        // of view 26, nothing committed in view 28 (it needed two replicas of view 28), so
        // R2's log is canonical; with R1 not heard from, R0 and R1 could have committed there,
        // and the primary must wait.
        let faulty = record(View(28), Op(143), Op(160));
        let sound = record(View(27), Op(141), Op(142));
        let older = record(View(26), Op(141), Op(142));
        assert_eq!(canonical_choose(&[faulty, older, sound], 2), Some(ReplicaIndex(2)));
        assert_eq!(canonical_choose(&[faulty, DoViewChangeRecord::EMPTY, sound], 2), None);
        let newer_sound = record(View(28), Op(143), Op(144));
        assert_eq!(canonical_choose(&[faulty, newer_sound, sound], 2), Some(ReplicaIndex(1)));
    }

    #[test]
    fn the_highest_log_is_canonical_when_no_sound_one_can_be_and_nothing_above_it_committed() {
        // Goal: two replicas, R0 faulty of view 28 (it may have acknowledged up to 159), R1 of
        // view 27 that may have acknowledged 142 beyond its head 141: neither is sound, and
        // the view change waited forever (VOPR seed 8113176848143068660). Nothing above R0's
        // head can have committed in view 28 (R1 never was of that view), so R0's log is
        // canonical. With a third replica of view 28 not heard from, it could have: wait.
        let faulty = record(View(28), Op(143), Op(160));
        let bound = record(View(27), Op(141), Op(143));
        assert_eq!(canonical_choose(&[faulty, bound], 2), Some(ReplicaIndex(0)));
        assert_eq!(canonical_choose(&[faulty, bound, DoViewChangeRecord::EMPTY], 2), None);
        let intact = record(View(28), Op(143), Op(144));
        assert_eq!(canonical_choose(&[faulty, bound, intact], 2), Some(ReplicaIndex(2)));
        // R1 of view 27 holds ops up to 150, which may have committed in view 27 with R0's
        // acknowledgement and then been cut from R0's chain by its fault: with R2 unheard,
        // neither log may be taken.
        let longer = record(View(27), Op(150), Op(151));
        assert_eq!(canonical_choose(&[faulty, longer, DoViewChangeRecord::EMPTY], 2), None);
        // With two replicas, R0 alone could not have committed in view 28: R1's log holds
        // everything committed.
        assert_eq!(canonical_choose(&[faulty, longer], 2), Some(ReplicaIndex(1)));
    }
}
