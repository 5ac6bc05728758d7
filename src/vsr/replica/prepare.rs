//! Prepare: a request becomes the next op of the log, and each backup makes it durable.
//!
//! - The primary (replica `view mod replica_count`) takes a client's request (after session
//!   dedup), gives it the next op, its timestamp and its `parent` (the head's checksum), writes
//!   it to its WAL and broadcasts it; requests beyond `PIPELINE_PREPARE_QUEUE_MAX` in flight wait
//!   in a bounded queue.
//! - A backup accepts the prepare that extends its hash chain, writes it, and sends
//!   `prepare_ok` only once it is durable (and every prepare below it is).
//! - The primary sends prepares that still lack a quorum again after `PREPARE_TIMEOUT_TICKS`,
//!   backing off while they go unanswered (`TimeoutKind::Prepare`).
//!
//! What follows, commit and reply, is in `commit.rs`.

use super::{Destination, Prepared, Replica, RequestMark, Status};
use crate::constants::{
    HEADER_SIZE, PIPELINE_BACKUP_MAX, PIPELINE_PREPARE_QUEUE_MAX, REPAIR_WINDOW_MAX,
    REQUEST_QUEUE_LARGE_MAX, SECTOR_SIZE, request_queue_max,
};
use crate::state_machine::request_invalid;
use crate::state_machine::types::{
    PackedHead, PackedRequest, append_batch_count, packed_encode, packed_split,
};
use crate::vsr::client_sessions::{RequestDisposition, session_chain};
use crate::vsr::header::ReplicaIndex;
use crate::vsr::header::views;
use crate::vsr::header::{self, Checksum};
use crate::vsr::header::{ClientId, Command, EvictionReason, Header, Op, Operation};
use crate::vsr::journal::op_prepare_max;
use crate::vsr::message_pool::Message;
use crate::vsr::storage::Storage;
use crate::vsr::timeout::TimeoutKind;

/// The primary: requests and prepares.
impl Replica {
    pub(super) fn on_request<S: Storage>(&mut self, storage: &mut S, message: Message) {
        self.metrics.requests_received += 1;
        let header = *message.header();
        assert_eq!(header.command(), Some(Command::Request));
        assert!(self.status.is_open());
        let operation = header.operation().expect("accept checked the operation");
        if operation.is_read() {
            return self.read_start(storage, message);
        }
        if !self.is_primary() || self.status != Status::Normal {
            // Only the primary prepares: tell the client which replica that is.
            return self.send_pong_client(&header);
        }
        let register = operation == Operation::Register;
        let disposition = self.sessions.disposition(header.client, header.request, register);
        if self.request_early(disposition, header.client) {
            // The pong tells the client it is between views, so that it asks again soon instead
            // of waiting out a timeout.
            self.metrics.requests_dropped += 1;
            if disposition == RequestDisposition::Evict {
                self.metrics.requests_awaiting_register += 1;
            }
            return self.send_pong_client(&header);
        }
        match disposition {
            RequestDisposition::Prepare => {
                if request_invalid(operation, message.body()).is_some() {
                    // A malformed body is a client bug: its session cannot be trusted.
                    return self.send_eviction(header.client, EvictionReason::InvalidRequest);
                }
                if !register && !self.request_chained(&header) {
                    // Not the request after this session's latest reply: a stale copy.
                    self.metrics.requests_dropped += 1;
                    return;
                }
            }
            RequestDisposition::ReplyAgain { slot } => return self.reply_again(slot, &header),
            // `Ahead` with every op held executed: a client bug.
            RequestDisposition::Drop | RequestDisposition::Ahead => {
                self.metrics.requests_dropped += 1;
                return;
            }
            RequestDisposition::Evict if header.view > self.view => {
                // The client heard from a newer view (a reply or a redirect) than this replica
                // knows: a primary cut off from that view's majority still thinks it leads,
                // and its table may lack the session the newer view opened. Evicting would
                // end a live session; dropped, the request goes on to the next replica. (Only
                // here: the client's view may be one the cluster never settled in, announced
                // by a replica that crashed before it persisted it.)
                self.metrics.requests_from_newer_view += 1;
                return;
            }
            RequestDisposition::Evict => {
                return self.send_eviction(header.client, EvictionReason::NoSession);
            }
        }
        self.request_enqueue(storage, message);
    }

    /// Queues a new request the session table accepted, unless a copy of it is in flight
    /// already or the queue has no room for it (a busy answer), and prepares what it can.
    fn request_enqueue<S: Storage>(&mut self, storage: &mut S, message: Message) {
        let header = *message.header();
        if self.request_in_flight(&header) {
            // One request in flight per client: this is a retry of one already in the pipeline.
            self.metrics.requests_dropped += 1;
            return;
        }
        let large = self.pool.is_large(&message);
        let queue_max = request_queue_max(self.config.clients_max as usize);
        if self.request_queue.len() >= queue_max
            || (large && self.request_queue_large >= REQUEST_QUEUE_LARGE_MAX)
        {
            return self.send_busy(&header);
        }
        if let Some(slot) = self.sessions.slot(header.client) {
            let mark = RequestMark {
                client: header.client,
                request: header.request,
                epoch: self.request_epoch,
            };
            self.request_marks[slot] = mark;
        }
        self.request_queue_large += usize::from(large);
        self.request_queue.push_back(message);
        self.request_queue_drain(storage);
    }

    /// Drops every queued request (a view change): their clients send them again to the next
    /// primary. Their marks are outdated with the epoch.
    pub(super) fn request_queue_clear(&mut self) {
        self.request_queue.clear();
        self.request_queue_large = 0;
        self.request_epoch = self.request_epoch.wrapping_add(1);
        self.request_epoch_op = None;
    }

    fn request_queue_pop(&mut self) -> Message {
        let request = self.request_queue.pop_front().expect("queue not empty");
        self.request_queue_large -= usize::from(self.pool.is_large(&request));
        request
    }

    /// Whether the primary cannot judge a request of this `disposition` until it has executed
    /// ops it already holds, as a new primary must after a view change.
    pub(super) fn request_early(&self, disposition: RequestDisposition, client: ClientId) -> bool {
        assert!(self.is_primary());
        assert_eq!(self.status, Status::Normal);
        let pipeline_first =
            self.pipeline.front().map_or(self.head.op() + 1, |front| front.message.header().op);
        if pipeline_first > self.commit_min + 1 {
            // Committed ops that only its WAL holds are still to execute: neither its session
            // table nor its pipeline knows their requests yet, so it could not tell a retry of
            // one from a new request.
            return true;
        }
        // The client was answered the request before this one, so that one committed; the
        // session table does not hold it yet, so it is among the ops still to execute (the
        // predecessor's last ops, which the new view commits again). Dropped in silence, this
        // request would wait out the client's timeout, though it can be taken once they commit.
        if disposition == RequestDisposition::Ahead {
            return self.head.op() > self.commit_min;
        }
        // A client with no session whose register the new view is committing again: the old
        // primary answered that register, and the client went on to its first request. Its
        // session exists once the pipeline commits; evicted now, it would lose it for nothing.
        disposition == RequestDisposition::Evict
            && self.pipeline.iter().any(|prepared| prepare_registers(&prepared.message, client))
    }

    /// Whether `request` names the reply to its session's latest request (`session_chain`).
    pub(super) fn request_chained(&self, request: &Header) -> bool {
        assert_eq!(request.command(), Some(Command::Request));
        let Some(slot) = self.sessions.slot(request.client) else {
            return false;
        };
        let record = self.sessions.get(slot);
        request.parent == session_chain(request.client, record.reply_op)
    }

    /// Whether a request of `request`'s client is queued or in the pipeline: `request` is then
    /// a retry of it (one request in flight per client). A session's queued request is known
    /// by its mark; only a register (no session yet) and the prepares inherited from an earlier
    /// view, which have no marks, are looked for in the pipeline and the queue.
    pub(super) fn request_in_flight(&self, request: &Header) -> bool {
        assert!(self.is_primary());
        let client = request.client;
        let Some(slot) = self.sessions.slot(client) else {
            let queued = self.request_queue.iter().any(|queued| queued.header().client == client);
            return queued || self.pipeline_serves(client, None);
        };
        let mark = RequestMark { client, request: request.request, epoch: self.request_epoch };
        self.request_marks[slot] == mark || self.pipeline_serves(client, self.request_epoch_op)
    }

    /// Whether an uncommitted prepare in the pipeline below `op_end` (or anywhere) holds a
    /// request of `client`.
    fn pipeline_serves(&self, client: ClientId, op_end: Option<Op>) -> bool {
        self.pipeline
            .iter()
            .take_while(|prepared| op_end.is_none_or(|end| prepared.message.header().op < end))
            .any(|prepared| {
                prepared.message.header().op > self.commit_min
                    && prepare_serves(&prepared.message, client)
            })
    }

    /// Prepares queued requests while the pipeline and the WAL have room.
    pub(super) fn request_queue_drain<S: Storage>(&mut self, storage: &mut S) {
        assert!(self.is_primary());
        assert_eq!(self.status, Status::Normal);
        if self.config.replica_count > 1 && self.superblock.working().sequence == 1 {
            // A data file's first open: the primary prepares once the superblock says it was
            // opened (see `journal_truncated`).
            return;
        }
        while self.status == Status::Normal && !self.request_queue.is_empty() {
            if self.pipeline.len() >= PIPELINE_PREPARE_QUEUE_MAX {
                return;
            }
            let slot_count = self.layout.journal_slot_count;
            if self.head.op() + 1 > op_prepare_max(self.checkpoint_op, slot_count) {
                // The ring would overwrite an op the checkpoint does not cover yet.
                return;
            }
            if self.head.op() + 1
                > self.backups_commit_min() + slot_count - REPAIR_WINDOW_MAX as u64
            {
                // A live backup would fall out of this WAL's window and could no longer be
                // repaired from it: let it catch up first.
                return;
            }
            if !self.journal.write_available() {
                // A slow disk still writes prepares that committed on the backups' copies.
                self.metrics.prepares_deferred_journal_busy += 1;
                return;
            }
            if let Some(packed) = self.request_queue_pack() {
                self.prepare(storage, packed);
                continue;
            }
            let request = self.request_queue_pop();
            self.prepare(storage, request);
        }
    }

    /// Packs the appends and registers at the front of the queue into one `append_packed`
    /// request of no client, if at least two are there, for `prepare`: one op, one journal
    /// write and one flush on each replica, and one replication round, for all of them (a
    /// thousand clients that start together register in a few ops, not a thousand). Only the
    /// run at the front, so that a create_stream behind it is prepared next, in queue order:
    /// taking appends from behind it would starve it for as long as appends keep coming.
    fn request_queue_pack(&mut self) -> Option<Message> {
        let packable = |request: &&Message| {
            let operation = request.header().operation;
            operation == Operation::Append as u8 || operation == Operation::Register as u8
        };
        let body_max = self.config.message_size_max as usize - HEADER_SIZE;
        let mut count = 0;
        let mut size = size_of::<PackedHead>();
        for request in self.request_queue.iter().take_while(packable) {
            let entry_size = size_of::<PackedRequest>() + request.body().len();
            if size + entry_size > body_max {
                break;
            }
            count += 1;
            size += entry_size;
        }
        if count < 2 {
            return None;
        }
        let mut packed = self.pool.get();
        let requests = self.request_queue.iter().take(count).map(|request| {
            let header = request.header();
            let entry = PackedRequest {
                client: header.client.0,
                request: header.request,
                batch_count: append_batch_count(request.body()) as u32,
                request_checksum: header.checksum.into(),
                body_size: request.body().len() as u32,
                reserved: 0,
                reserved_end: 0,
            };
            (entry, request.body())
        });
        let body_size =
            packed_encode(&mut packed.buffer_mut_unique()[HEADER_SIZE..], count, requests);
        assert_eq!(body_size, size);
        for _ in 0..count {
            let request = self.request_queue_pop();
            assert!(packable(&&request));
        }
        let checksum_body = header::checksum(&packed.buffer()[HEADER_SIZE..][..body_size]);
        let header = packed.header_mut();
        *header = Header::new(Command::Request, self.config.cluster);
        header.size = (HEADER_SIZE + body_size) as u32;
        header.operation = Operation::AppendPacked as u8;
        header.checksum_body = checksum_body;
        self.metrics.requests_packed += count as u64;
        Some(packed)
    }

    /// Turns `request` (a client's, or a packed one: `request_queue_pack`) into the prepare for
    /// the next op, in place, and writes it.
    pub(super) fn prepare<S: Storage>(&mut self, storage: &mut S, message: Message) {
        let mut message = self.message_large(message);
        let request = *message.header();
        assert_eq!(request.command(), Some(Command::Request));
        assert!(self.is_primary());
        assert_eq!(self.status, Status::Normal);
        assert_eq!(self.log_view, self.view, "a primary prepares only on its own view's log");
        assert!(self.pipeline.len() < PIPELINE_PREPARE_QUEUE_MAX);
        let op = self.head.op() + 1;
        assert!(op <= op_prepare_max(self.checkpoint_op, self.layout.journal_slot_count));
        assert!(op > self.commit_max, "a new op is not committed yet");
        let timestamp = self.realtime_ns.max(self.timestamp_last + 1);
        self.metrics.timestamps_raised += u64::from(timestamp > self.realtime_ns);
        let size = request.size as usize;
        let prepare = message.header_mut();
        *prepare = Header::new(Command::Prepare, self.config.cluster);
        prepare.size = request.size;
        prepare.checksum_body = request.checksum_body;
        prepare.view = self.view;
        prepare.op = op;
        prepare.commit = self.commit_max;
        prepare.timestamp = timestamp;
        prepare.client = request.client;
        prepare.request = request.request;
        prepare.operation = request.operation;
        prepare.parent = self.head.checksum();
        // A packed request, or a noop the primary made (`noop_request`), has no client.
        let no_client = request.client == ClientId(0);
        let request_checksum = if no_client { Checksum::ZERO } else { request.checksum };
        views::Prepare::of(&mut *prepare).set_request_checksum(request_checksum);
        views::Prepare::of(&mut *prepare).set_grid_blocks(self.grid_blocks_stamp());
        prepare.replica = self.config.replica;
        prepare.set_checksum();
        let prepare = *prepare;
        assert_eq!(prepare.invalid(), None);
        // The journal writes whole sectors: the padding after the message must be zero.
        message.buffer_mut_unique()[size..size.next_multiple_of(SECTOR_SIZE)].fill(0);
        // One request in flight per client (`request_in_flight`). Checked for a single
        // request only: for each member of a packed one it would cost a scan of the pipeline.
        if request.client != ClientId(0) {
            let in_flight = |prepared: &Prepared| prepare_serves(&prepared.message, request.client);
            assert!(!self.pipeline.iter().any(in_flight), "one request per client in flight");
        }
        self.request_epoch_op.get_or_insert(op);
        self.head.extend(&prepare);
        self.timestamp_last = timestamp;
        let prepared =
            Prepared { message: message.clone(), durable: false, ok_from: 0, acknowledged: false };
        self.pipeline.push_back(prepared);
        let back = self.pipeline.back().expect("just pushed").message.header();
        assert_eq!((back.op, back.checksum), (self.head.op(), self.head.checksum()));
        for replica in 0..self.config.replica_count {
            if replica != self.config.replica.get() {
                self.send(Destination::Replica(ReplicaIndex(replica)), message.clone());
            }
        }
        self.journal.write_prepare(storage, message);
    }

    /// Takes note of a prepare's timestamp in this replica's log: a prepare it makes later as
    /// primary is timestamped above it, whatever its clock says, so timestamps increase along
    /// the log across views and restarts.
    pub(super) fn timestamp_observe(&mut self, prepare: &Header) {
        assert_eq!(prepare.command(), Some(Command::Prepare));
        assert_eq!(prepare.cluster, self.config.cluster);
        self.timestamp_last = self.timestamp_last.max(prepare.timestamp);
    }

    pub(super) fn send_eviction(&mut self, client: ClientId, reason: EvictionReason) {
        self.metrics.evictions_sent += 1;
        let mut header = self.header_new(Command::Eviction);
        header.client = client;
        views::Eviction::of(&mut header).set_reason(reason as u32);
        self.send_header(Destination::Client(client), header);
    }

    /// Tells a client its request found no room here now (a full request queue or reads
    /// table): it sends the request again after a short backoff, where a request dropped in
    /// silence would wait out the client's timeout.
    pub(super) fn send_busy(&mut self, request: &Header) {
        assert_eq!(request.command(), Some(Command::Request));
        self.metrics.requests_busy += 1;
        let mut header = self.header_new(Command::Busy);
        header.client = request.client;
        header.request = request.request;
        header.operation = request.operation;
        views::Busy::of(&mut header).set_request_checksum(request.checksum);
        self.send_header(Destination::Client(request.client), header);
    }
}

/// The backups: prepares from the primary, and their acknowledgements.
impl Replica {
    pub(super) fn on_prepare<S: Storage>(&mut self, storage: &mut S, message: Message) {
        let header = *message.header();
        assert_eq!(header.command(), Some(Command::Prepare));
        assert!(self.status.is_open());
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
    pub(super) fn prepare_commit_observe(&mut self, header: &Header) -> bool {
        assert!(header.view <= self.view, "a newer view's prepare makes it jump first");
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
    pub(super) fn prepare_append<S: Storage>(&mut self, storage: &mut S, message: Message) {
        let header = *message.header();
        assert_eq!(header.op, self.head.op() + 1);
        assert_eq!(header.parent, self.head.checksum());
        assert!(!self.sync.active(), "the log waits for state sync to restart it");
        assert!(!(self.status == Status::Normal && self.is_primary()), "backups only");
        let slot_count = u64::from(self.config.journal_slot_count);
        if header.op > op_prepare_max(self.checkpoint_op, slot_count) {
            self.metrics.prepares_dropped_window += 1;
            return;
        }
        if self.journal.truncating() {
            return;
        }
        if self.pipeline.len() >= PIPELINE_BACKUP_MAX {
            self.metrics.prepares_dropped_pipeline_full += 1;
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
        assert_eq!(self.head.checksum(), header.checksum);
    }

    /// A prepare at or below this replica's head: a retransmission, acknowledged again if
    /// this very prepare is durable here (and every one below it), or the intact copy of an
    /// entry a read found corrupt, written over it.
    pub(super) fn on_prepare_held<S: Storage>(&mut self, storage: &mut S, message: Message) {
        let header = *message.header();
        let op = header.op;
        assert!(op <= self.head.op());
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

    pub(super) fn send_prepare_ok(&mut self, prepare: &Header) {
        // A backup acknowledges only a prepare it holds, on the view's log, durably.
        assert!(!self.is_primary());
        assert_eq!(self.status, Status::Normal);
        assert!(self.log_synced());
        assert!(prepare.op <= self.head.op());
        assert!(prepare.view <= self.view);
        let mut header = self.header_new(Command::PrepareOk);
        header.op = prepare.op;
        header.commit = self.commit_min;
        header.timestamp = prepare.timestamp;
        header.client = prepare.client;
        header.request = prepare.request;
        header.operation = prepare.operation;
        header.parent = prepare.parent;
        views::PrepareOk::of(&mut header).set_prepare_checksum(prepare.checksum);
        views::PrepareOk::of(&mut header).set_grid_blocks(self.state_machine.limits().grid_blocks);
        let primary = self.primary_index();
        self.send_header(Destination::Replica(primary), header);
    }

    pub(super) fn on_prepare_ok<S: Storage>(&mut self, storage: &mut S, header: &Header) {
        assert_eq!(header.command(), Some(Command::PrepareOk));
        assert_eq!(header.view, self.view);
        assert_eq!(self.status, Status::Normal);
        assert_ne!(header.replica, self.config.replica);
        if !self.is_primary() {
            return;
        }
        // The backup's commit number as of now (after a restart it may be lower than before).
        self.backup_commit[usize::from(header.replica)] = header.commit;
        self.grid_blocks_announced[usize::from(header.replica)] =
            views::PrepareOk::of(header).grid_blocks();
        let Some(index) = self.pipeline_index(header.op) else {
            return;
        };
        let prepared = &mut self.pipeline[index];
        if prepared.message.header().checksum != views::PrepareOk::of(header).prepare_checksum() {
            return;
        }
        assert_eq!(prepared.message.header().op, header.op);
        prepared.ok_from |= header.replica.bit();
        self.commit_advance_primary(storage);
    }

    /// The cluster's grid, in blocks, as this primary knows it: the smallest of its own and
    /// what each peer announced. A peer not heard from since this replica started could have
    /// any grid, so then it stamps no more than its log proves safe: the grid its head prepare
    /// carries (stamped by this rule in turn) or its committed limit. Only a new cluster (no
    /// op yet) takes this replica's own grid. A replica with an empty state (rejoined, or not
    /// yet replayed) may lead a view: its committed limit is 0, which proves nothing. Executing
    /// a prepare never lowers the limit, so a low stamp costs nothing.
    fn grid_blocks_stamp(&self) -> u64 {
        let own = self.state_machine.limits().grid_blocks;
        let peers = (0..self.config.replica_count).filter(|&peer| peer != self.config.replica.0);
        let mut smallest = own;
        for peer in peers {
            match self.grid_blocks_announced[usize::from(peer)] {
                0 => return self.grid_blocks_proven(own),
                announced => smallest = smallest.min(announced),
            }
        }
        smallest
    }

    /// The largest grid this replica's log proves every replica holds (`grid_blocks_stamp`),
    /// at least 1 (a stamp every grid holds).
    fn grid_blocks_proven(&self, own: u64) -> u64 {
        let head = self.head.op();
        if head == Op(0) {
            return own;
        }
        let newest = match self.pipeline.back() {
            Some(prepared) => Some(*prepared.message.header()),
            None => self.journal.header_with_op(head).copied(),
        };
        let stamped = newest.map_or(0, |header| views::Prepare::of(&header).grid_blocks());
        stamped.max(self.state_machine.grid_blocks_limit()).max(1)
    }

    /// Sends prepares that still lack a quorum again, to the backups that have not
    /// acknowledged them.
    /// The timer runs from the first tick of the primary's view; once it fires, the resends
    /// back off while they go unanswered, and a commit resets it.
    pub(super) fn prepare_timeout(&mut self) {
        assert!(self.is_primary());
        assert_eq!(self.status, Status::Normal);
        let timeout = &mut self.timeouts[TimeoutKind::Prepare];
        if !timeout.ticking() {
            timeout.start();
        }
        if !timeout.fired() || self.view_change.abdicating {
            return;
        }
        let quorum = self.quorum_replication();
        let mut resent = false;
        for index in 0..self.pipeline.len() {
            let prepared = &self.pipeline[index];
            if prepared.ok_from.count_ones() as usize >= quorum {
                continue;
            }
            let (ok_from, message) = (prepared.ok_from, prepared.message.clone());
            for replica in 0..self.config.replica_count {
                if replica != self.config.replica.get() && ok_from & (1 << replica) == 0 {
                    self.send(Destination::Replica(ReplicaIndex(replica)), message.clone());
                    resent = true;
                }
            }
        }
        let timeout = &mut self.timeouts[TimeoutKind::Prepare];
        if resent {
            timeout.backoff(&mut self.prng);
        } else {
            timeout.reset();
        }
    }
}

/// The clients whose requests `prepare` (or a request about to become one) holds: its own
/// client, or those its packed body names.
pub(super) fn prepare_clients(prepare: &Message) -> impl Iterator<Item = ClientId> + Clone + '_ {
    let packed = prepare.header().operation == Operation::AppendPacked as u8;
    let entries = packed.then(|| packed_split(prepare.body()).expect("validated").0);
    let own =
        (!packed && prepare.header().client != ClientId(0)).then_some(prepare.header().client);
    own.into_iter().chain(entries.into_iter().flatten().map(|entry| ClientId(entry.client)))
}

/// Whether `prepare` holds a register of `client`: its own, or a packed one.
pub(super) fn prepare_registers(prepare: &Message, client: ClientId) -> bool {
    let header = prepare.header();
    if header.operation == Operation::AppendPacked as u8 {
        let entries = packed_split(prepare.body()).expect("validated").0;
        return entries.into_iter().any(|entry| entry.client == client.0 && entry.request == 0);
    }
    header.client == client && header.operation == Operation::Register as u8
}

/// Whether `prepare` holds a request of `client`.
pub(super) fn prepare_serves(prepare: &Message, client: ClientId) -> bool {
    prepare_clients(prepare).any(|served| served == client)
}

/// A prepare from a peer, ready for the journal, which writes whole sectors: the padding after
/// the message (whatever the bus left there) zeroed. Before the buffer is shared.
pub(super) fn padding_zeroed(mut message: Message) -> Message {
    let size = message.header().size as usize;
    assert_eq!(message.header().command(), Some(Command::Prepare));
    assert!(size.next_multiple_of(SECTOR_SIZE) <= message.buffer().len());
    message.buffer_mut_unique()[size..size.next_multiple_of(SECTOR_SIZE)].fill(0);
    message
}
