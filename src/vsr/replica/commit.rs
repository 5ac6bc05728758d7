//! Commit: ops become durable, commit in op order, are executed against the event store, and
//! answered.
//!
//! - The journal reports each prepare durable; the primary commits, in op order, each op a
//!   replication quorum (a majority, itself included) holds durably.
//! - Backups learn the commit number from later prepares and from `commit` heartbeats (and the
//!   primary their commit numbers from pings and prepare_oks), and execute exactly the ops the
//!   primary committed, reading each back from the WAL: their log is a prefix of the
//!   primary's (the chain guarantees it within a view), and a commit number is taken only
//!   where the committed prepare's checksum agrees with their log.
//! - Executing an op applies it to the event store; the reply goes to the client and stays in
//!   memory in the session's sector, from which a retry is answered again (`replies`). The
//!   client_replies zone gets it only at the next checkpoint: a reply of an op after the durable
//!   checkpoint is rebuilt by the replay at open, so writing every reply as it is made (three
//!   4 KiB writes per op across three replicas, half of the disk writes of a one-event append)
//!   bought nothing.

use super::{
    CheckpointPhase, Destination, JournalRead, JournalReadPurpose, OpenPhase, Replica, ReplyFields,
    Status,
};
use crate::constants::{
    BACKUP_LIVENESS_TICKS, HEADER_SIZE, JOURNAL_IOPS_READ_MAX, REPAIR_WINDOW_MAX,
};
use crate::state_machine::GRID_TOO_SMALL;
use crate::state_machine::types::{AppendResult, packed_split};
use crate::vsr::header::ReplicaIndex;
use crate::vsr::header::views;
use crate::vsr::header::{Checksum, ClientId, Command, EvictionReason, Header, Op, Operation};
use crate::vsr::journal;
use crate::vsr::message_pool::Message;
use crate::vsr::storage::Storage;
use crate::vsr::timeout::TimeoutKind;

/// The journal, commits and replies.
impl Replica {
    pub(super) fn journal_events<S: Storage>(&mut self, storage: &mut S) {
        while let Some(event) = self.journal.poll_event() {
            match event {
                journal::Event::PrepareDurable { op, checksum } => {
                    self.prepare_durable(storage, op, checksum)
                }
                journal::Event::PrepareRead { op, checksum, result } => {
                    self.journal_read_complete(storage, op, checksum, result)
                }
                journal::Event::Recovered { usable } => self.journal_recovered(storage, usable),
                journal::Event::Truncated if self.status == Status::Recovering => {
                    self.journal_truncated(storage)
                }
                journal::Event::Truncated => self.repair_progress(storage),
                journal::Event::WriteFailed { .. } => self.fail("a journal write failed"),
            }
        }
    }

    pub(super) fn prepare_durable<S: Storage>(
        &mut self,
        storage: &mut S,
        op: Op,
        checksum: Checksum,
    ) {
        let Some(index) = self.pipeline_index(op) else {
            // A repaired entry written ahead of the chain, or a rewritten faulty one.
            return self.repair_progress(storage);
        };
        let prepared = &mut self.pipeline[index];
        assert_eq!(prepared.message.header().op, op);
        if prepared.message.header().checksum != checksum {
            return;
        }
        prepared.durable = true;
        prepared.ok_from |= self.config.replica.bit();
        if self.status == Status::Normal && self.is_primary() {
            self.commit_advance_primary(storage);
        } else {
            self.prepare_oks_send();
            self.commit_pipeline(storage);
            self.repair_progress(storage);
        }
    }

    /// A backup acknowledges its prepares in op order, each once every earlier one is durable
    /// too: then a crash can only lose prepares it never acknowledged, and the head of the
    /// hash chain recovered at restart covers every op it acknowledged. Only once its log is
    /// the current view's (log_view durable and no faulty entries).
    pub(super) fn prepare_oks_send(&mut self) {
        if self.status != Status::Normal || self.is_primary() || !self.log_synced() {
            return;
        }
        for index in 0..self.pipeline.len() {
            let prepared = &self.pipeline[index];
            if !prepared.durable {
                return;
            }
            if prepared.acknowledged {
                continue;
            }
            let header = *prepared.message.header();
            assert!(header.view <= self.view);
            self.pipeline[index].acknowledged = true;
            self.send_prepare_ok(&header);
        }
    }

    /// This replica's log is the current view's, durably: it may acknowledge prepares.
    pub(super) fn log_synced(&self) -> bool {
        self.log_view == self.view
            && self.log_view_durable == self.view
            && self.view_durable == self.view
            && !self.log_faulty
            && !self.target.active()
    }

    /// The pipeline index of `op`, if the pipeline holds it.
    pub(super) fn pipeline_index(&self, op: Op) -> Option<usize> {
        let first = self.pipeline.front()?.message.header().op;
        let index = usize::try_from(op.get().checked_sub(first.get())?).ok()?;
        let found = (index < self.pipeline.len()).then_some(index);
        // The pipeline is a run of consecutive ops.
        assert!(found.is_none_or(|index| self.pipeline[index].message.header().op == op));
        found
    }

    /// The primary commits, in op order, every prepare a replication quorum holds.
    pub(super) fn commit_advance_primary<S: Storage>(&mut self, storage: &mut S) {
        assert!(self.is_primary());
        assert_eq!(self.status, Status::Normal);
        let quorum = self.quorum_replication();
        let commit_max_before = self.commit_max;
        while let Some(index) = self.pipeline_index(self.commit_max + 1) {
            let prepared = &self.pipeline[index];
            if (prepared.ok_from.count_ones() as usize) < quorum || !prepared.durable {
                break;
            }
            self.commit_max += 1;
        }
        assert!(self.commit_max <= self.head.op(), "the primary commits what it prepared");
        let timeout = &mut self.timeouts[TimeoutKind::Prepare];
        if self.commit_max > commit_max_before && timeout.ticking() {
            // The pipeline moves: resends start again from the base timeout.
            timeout.reset();
        }
        self.commit_pipeline(storage);
    }

    /// How far this replica may execute its own log. `commit_max` is what the cluster
    /// committed, but this replica's log is only known to be the cluster's (canonical) log when
    /// it is the current view's, or, while installing a log, up to where it was checked
    /// against the target: beyond that its entries may be an older view's that were replaced.
    pub(super) fn commit_limit(&self) -> Op {
        if self.status == Status::Recovering {
            return self.commit_max;
        }
        if self.target.active() {
            return if self.target.verified() {
                self.commit_max.min(self.head.op())
            } else {
                self.commit_min
            };
        }
        if self.log_view == self.view { self.commit_max } else { self.commit_min }
    }

    /// Executes committed prepares in op order, as far as the event store and the checkpoint
    /// allow. A prepare no longer in memory (at open, or on a backup that restarted) is read
    /// back from the WAL first.
    pub(super) fn commit_pipeline<S: Storage>(&mut self, storage: &mut S) {
        self.commit_pipeline_run(storage);
        self.reads_linearizable_serve(storage);
        self.reads_parked_wake(storage);
    }

    fn commit_pipeline_run<S: Storage>(&mut self, storage: &mut S) {
        loop {
            let replaying =
                self.status == Status::Recovering && self.open_phase == OpenPhase::Replay;
            // Between views too: every op up to commit_max is committed, whatever the view.
            if !(self.status.is_open() || replaying) {
                return;
            }
            if self.commit_min >= self.commit_limit() {
                break;
            }
            if self.sync.active() {
                // The event store is about to be replaced by a newer checkpoint's: an op
                // executed now would be lost in it, or keep it busy when it is closed.
                self.metrics.commits_frozen_by_state_sync += 1;
                return;
            }
            if self.checkpoint != CheckpointPhase::Idle || !self.state_machine.commit_ready() {
                return;
            }
            let next = self.commit_min + 1;
            // Never beyond what the cluster committed (`commit_limit`).
            assert!(next <= self.commit_max);
            match self.pipeline.front() {
                Some(front) if front.message.header().op == next => {
                    let header = *front.message.header();
                    if !front.durable || !self.grid_holds(&header) {
                        return;
                    }
                    let prepared = self.pipeline.pop_front().expect("front exists");
                    let send_reply = self.status == Status::Normal && self.is_primary();
                    self.execute(storage, &prepared.message, send_reply);
                    assert_eq!(self.commit_min, next);
                    self.checkpoint_maybe(storage);
                }
                _ => return self.commit_from_journal(storage, next),
            }
        }
        if self.status == Status::Recovering {
            return self.replay_done(storage);
        }
        if self.status == Status::Normal && self.is_primary() {
            self.request_queue_drain(storage);
        }
    }

    /// Reads the prepare of `op` (the next to commit) back from the WAL, if this replica has
    /// it in its chain; otherwise asks the primary for it.
    pub(super) fn commit_from_journal<S: Storage>(&mut self, storage: &mut S, op: Op) {
        assert_eq!(op, self.commit_min + 1, "the next op to execute");
        assert!(op <= self.commit_max);
        if self.journal_reads.iter().any(|read| read.purpose == JournalReadPurpose::Commit) {
            return;
        }
        if self.journal_reads.len() >= JOURNAL_IOPS_READ_MAX {
            // Repair and pipeline_fill leave one read for commits; this is the next tick's.
            return;
        }
        if op > self.head.op() {
            // Not in this replica's chain yet (a repair may have written it ahead).
            return self.repair_request(self.head.op() + 1);
        }
        let chained = self
            .journal
            .header_with_op(op)
            .filter(|header| header.parent == self.commit_checksum)
            .copied();
        let Some(header) = chained else {
            if self.status == Status::Recovering {
                return self.replay_done(storage);
            }
            return self.repair_request(op);
        };
        let purpose = JournalReadPurpose::Commit;
        self.journal_reads.push(JournalRead { op, checksum: header.checksum, purpose });
        self.journal.read_prepare(storage, op, header.checksum, self.pool.get());
    }

    pub(super) fn journal_read_complete<S: Storage>(
        &mut self,
        storage: &mut S,
        op: Op,
        checksum: Checksum,
        result: Result<Message, journal::ReadError>,
    ) {
        let Some(index) =
            self.journal_reads.iter().position(|read| read.op == op && read.checksum == checksum)
        else {
            panic!("journal read completed that was never started");
        };
        let read = self.journal_reads.swap_remove(index);
        match (read.purpose, result) {
            (JournalReadPurpose::Commit, Ok(message)) => {
                // Paired with `read_prepare`: the journal read back the prepare asked for.
                assert_eq!((message.header().op, message.header().checksum), (op, checksum));
                let frozen = self.sync.active() || self.checkpoint != CheckpointPhase::Idle;
                if op != self.commit_min + 1 || frozen {
                    return self.commit_pipeline(storage);
                }
                if !self.grid_holds(message.header()) {
                    return;
                }
                let send_reply = false;
                self.execute(storage, &message, send_reply);
                assert_eq!(self.commit_min, op);
                self.metrics.ops_replayed += u64::from(self.status == Status::Recovering);
                self.checkpoint_maybe(storage);
                self.commit_pipeline(storage);
            }
            (JournalReadPurpose::Commit, Err(_)) => {
                if self.status == Status::Recovering && self.config.replica_count == 1 {
                    return self.fail("a WAL prepare could not be read back during replay");
                }
                // The copy on disk is bad: a peer has it.
                self.repair_request(op);
            }
            (JournalReadPurpose::Repair { replica }, Ok(message)) => {
                assert_eq!((message.header().op, message.header().checksum), (op, checksum));
                self.send(Destination::Replica(replica), message);
            }
            (JournalReadPurpose::Repair { .. }, Err(_)) => {}
            (JournalReadPurpose::Pipeline, Ok(message)) => {
                assert_eq!((message.header().op, message.header().checksum), (op, checksum));
                self.pipeline_fill_complete(storage, message)
            }
            // The WAL copy is bad: this view change cannot start with this primary; it times
            // out into the next view.
            (JournalReadPurpose::Pipeline, Err(_)) => {}
        }
    }

    /// True if this replica's grid holds the cluster's grid that committed `prepare` stamps;
    /// otherwise fails the replica, which the operator formatted smaller than its peers (it
    /// could not take the state they may build).
    fn grid_holds(&mut self, prepare: &Header) -> bool {
        if views::Prepare::of(prepare).grid_blocks() > self.state_machine.limits().grid_blocks {
            self.fail(GRID_TOO_SMALL);
            return false;
        }
        true
    }

    /// Applies one committed prepare: sessions, the event store, the reply (sent only when
    /// `send_reply`, i.e. not while replaying the WAL at open).
    pub(super) fn execute<S: Storage>(
        &mut self,
        storage: &mut S,
        prepare: &Message,
        send_reply: bool,
    ) {
        let header = *prepare.header();
        assert_eq!(header.op, self.commit_min + 1);
        assert_eq!(header.command(), Some(Command::Prepare));
        assert_eq!(header.parent, self.commit_checksum, "execution follows the hash chain");
        assert!(header.op <= self.commit_max, "only committed ops are executed");
        assert_eq!(self.checkpoint, CheckpointPhase::Idle);
        assert!(!self.sync.active());
        let operation = header.operation().expect("prepares are validated");
        // The caller checked `grid_holds`.
        let grid_limit = self.state_machine.grid_blocks_limit();
        self.state_machine.grid_limit_raise(views::Prepare::of(&header).grid_blocks());
        let grown = grid_limit > 0 && self.state_machine.grid_blocks_limit() > grid_limit;
        self.metrics.grid_limit_grown += u64::from(grown);
        // A write's reply fits a small buffer (`REPLY_SIZE_MAX`); a packed op's results, one
        // per batch of all its requests, need a full one before they are split.
        let mut reply = match operation {
            Operation::AppendPacked => self.pool.get(),
            _ => self.pool.get_small(),
        };
        let body_size = match operation {
            Operation::Register => 0,
            Operation::Noop => 0,
            _ => {
                let body_max = reply.buffer().len() - HEADER_SIZE;
                let reply_body = &mut reply.buffer_mut_unique()[HEADER_SIZE..][..body_max];
                self.state_machine.commit(
                    storage,
                    header.op,
                    header.timestamp,
                    operation,
                    prepare.body(),
                    reply_body,
                )
            }
        };
        self.commit_min = header.op;
        self.commit_checksum = header.checksum;
        self.metrics.ops_committed += 1;
        if operation == Operation::Noop {
            return;
        }
        if operation == Operation::AppendPacked {
            return self.execute_packed(prepare, &reply, send_reply);
        }
        self.reply_build(&mut reply, &header, body_size);
        let slot = if operation == Operation::Register {
            self.register_commit(header.client, header.op, send_reply)
        } else {
            match self.sessions.slot(header.client) {
                Some(slot) => slot,
                // Evicted between prepare and commit: the op is applied, the reply has no home.
                None => return,
            }
        };
        self.reply_store(slot, &reply);
        if send_reply {
            self.send(Destination::Client(header.client), reply);
        }
    }

    /// Opens `client`'s session at `op` (its register committed), evicting the session whose
    /// latest commit is oldest if the table is full. Returns the session's slot.
    fn register_commit(&mut self, client: ClientId, op: Op, send_reply: bool) -> usize {
        let (slot, evicted) = self.sessions.register(client, op);
        if let Some(evicted) = evicted
            && send_reply
        {
            self.send_eviction(evicted, EvictionReason::SessionEvicted);
        }
        slot
    }

    /// The replies of an executed `append_packed` prepare: the event store answered its
    /// requests' batches in order in `results`' body; each request gets its own share, as if
    /// it had been prepared alone (a session evicted since gets none). A packed register opens
    /// its session here and is answered with no body.
    fn execute_packed(&mut self, prepare: &Message, results: &Message, send_reply: bool) {
        let header = *prepare.header();
        let (entries, _) = packed_split(prepare.body()).expect("validated by the primary");
        let result_size = size_of::<AppendResult>();
        let mut offset = HEADER_SIZE;
        for entry in entries {
            let size = entry.batch_count as usize * result_size;
            let own = offset..offset + size;
            offset += size;
            let client = ClientId(entry.client);
            let register = entry.request == 0;
            let slot = if register {
                self.register_commit(client, header.op, send_reply)
            } else {
                let Some(slot) = self.sessions.slot(client) else {
                    continue;
                };
                slot
            };
            let mut reply = self.pool.get_small();
            reply.buffer_mut_unique()[HEADER_SIZE..][..size]
                .copy_from_slice(&results.buffer()[own]);
            let fields = ReplyFields {
                op: header.op,
                commit: header.op,
                timestamp: header.timestamp,
                client,
                request: entry.request,
                operation: if register { Operation::Register } else { Operation::Append } as u8,
                request_checksum: Checksum::from(entry.request_checksum),
            };
            self.reply_header_write(&mut reply, &fields, size);
            self.reply_store(slot, &reply);
            if send_reply {
                self.send(Destination::Client(client), reply);
            }
        }
    }

    pub(super) fn reply_build(&self, reply: &mut Message, prepare: &Header, body_size: usize) {
        assert_eq!(prepare.command(), Some(Command::Prepare));
        let fields = ReplyFields {
            op: prepare.op,
            commit: prepare.op,
            timestamp: prepare.timestamp,
            client: prepare.client,
            request: prepare.request,
            operation: prepare.operation,
            request_checksum: views::Prepare::of(prepare).request_checksum(),
        };
        self.reply_header_write(reply, &fields, body_size);
    }

    /// Writes a reply's header in front of the `body_size` bytes already in `reply`'s body.
    pub(super) fn reply_header_write(
        &self,
        reply: &mut Message,
        fields: &ReplyFields,
        body_size: usize,
    ) {
        let size = HEADER_SIZE + body_size;
        assert!(size <= self.config.message_size_max as usize);
        let body_checksum = crate::vsr::header::checksum(&reply.buffer()[HEADER_SIZE..size]);
        let mut header = self.header_new(Command::Reply);
        header.size = size as u32;
        header.checksum_body = body_checksum;
        header.op = fields.op;
        header.commit = fields.commit;
        header.timestamp = fields.timestamp;
        header.client = fields.client;
        header.request = fields.request;
        header.operation = fields.operation;
        views::Reply::of(&mut header).set_request_checksum(fields.request_checksum);
        header.set_checksum();
        assert_eq!(header.invalid(), None);
        *reply.header_mut() = header;
    }
}

/// Commit numbers between the primary and its backups: heartbeats and pings.
impl Replica {
    /// The lowest commit number among the backups heard from lately whose commit is still
    /// inside this WAL's window (this replica's own op if none): how far the primary may run
    /// ahead and still repair them from its WAL. A backup already outside the window needs
    /// state sync and is not waited for.
    pub(super) fn backups_commit_min(&self) -> Op {
        assert!(self.is_primary());
        let slot_count = u64::from(self.config.journal_slot_count);
        let window_start = self.head.op().saturating_sub(slot_count - REPAIR_WINDOW_MAX as u64);
        let mut commit_min = self.head.op();
        for replica in 0..self.config.replica_count {
            let index = usize::from(replica);
            let heard = self.backup_heard_tick[index];
            let live = heard > 0 && self.ticks < heard + BACKUP_LIVENESS_TICKS;
            let commit = self.backup_commit[index];
            if replica != self.config.replica.get() && live && commit >= window_start {
                commit_min = commit_min.min(commit);
            }
        }
        commit_min
    }

    /// A backup's ping says it is alive (`on_message` noted when) and how far it committed.
    pub(super) fn on_ping(&mut self, header: &Header) {
        assert_ne!(header.replica, self.config.replica);
        assert_eq!(header.command(), Some(Command::Ping));
        assert_eq!(header.view, self.view);
        if self.is_primary() {
            self.backup_commit[usize::from(header.replica)] = header.commit;
        }
    }

    /// Backup: pings the primary every `PING_TICKS`, counted from when this replica first
    /// ticked as a backup, so that replicas do not ping in phase.
    pub(super) fn ping_tick(&mut self) {
        assert!(!self.is_primary());
        assert_eq!(self.status, Status::Normal);
        let timeout = &mut self.timeouts[TimeoutKind::Ping];
        if !timeout.ticking() {
            timeout.start();
        }
        if timeout.fired() {
            timeout.reset();
            self.send_ping();
        }
    }

    /// Tells the primary this backup is alive and how far it has committed.
    pub(super) fn send_ping(&mut self) {
        assert!(!self.is_primary());
        let mut header = self.header_new(Command::Ping);
        header.timestamp = self.ticks.max(1);
        header.commit = self.commit_min;
        header.checkpoint_op = self.checkpoint_op;
        let primary = self.primary_index();
        self.send_header(Destination::Replica(primary), header);
    }

    pub(super) fn on_commit<S: Storage>(&mut self, storage: &mut S, header: &Header) {
        assert_eq!(header.command(), Some(Command::Commit));
        assert_eq!(header.view, self.view);
        assert_eq!(self.status, Status::Normal);
        if self.is_primary() || header.replica != self.primary_index() {
            return;
        }
        self.primary_heard();
        if !self.commit_agrees(header.commit, views::Commit::of(header).commit_checksum()) {
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
    pub(super) fn commit_agrees(&mut self, op: Op, checksum: Checksum) -> bool {
        assert!(!self.is_primary(), "a backup checks its primary's commit number");
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

    /// Tells backups the commit number: as soon as it moves, and every
    /// `COMMIT_HEARTBEAT_TICKS` otherwise.
    pub(super) fn commit_heartbeat(&mut self) {
        assert!(self.is_primary());
        assert_eq!(self.status, Status::Normal);
        if self.config.replica_count == 1 || self.view_change.abdicating {
            // An abdicating primary falls silent so that its backups time out and elect another.
            return;
        }
        let timeout = &mut self.timeouts[TimeoutKind::CommitHeartbeat];
        if self.commit_heartbeat_sent == self.commit_min && timeout.counting_down() {
            return;
        }
        timeout.start();
        self.commit_heartbeat_sent = self.commit_min;
        for replica in 0..self.config.replica_count {
            if replica == self.config.replica.get() {
                continue;
            }
            let mut header = self.header_new(Command::Commit);
            header.commit = self.commit_min;
            views::Commit::of(&mut header).set_commit_checksum(self.commit_checksum);
            header.checkpoint_op = self.checkpoint_op;
            header.timestamp = self.ticks;
            self.send_header(Destination::Replica(ReplicaIndex(replica)), header);
        }
    }
}
