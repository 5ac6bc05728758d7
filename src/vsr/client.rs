//! The client core: the session rules every client runs, with no I/O and no clock. The TCP
//! client (`crate::client`) and the simulator's clients (`crate::sim::workload`) both drive
//! it: they move bytes, it decides what the bytes mean.
//!
//! # Rules
//!
//! - A session starts with a `register` (request 0); its reply's op is the session number.
//!   Writes are numbered 1, 2, 3, ... and each names, in `parent`, the session chain after the
//!   reply to the previous one (`session_chain`), so the primary prepares a request only if it
//!   follows the session's latest reply.
//! - One request is in flight at a time. A reply is taken as its answer only if it names the
//!   request's checksum (`context`), operation and number; anything else (a duplicate, a late
//!   copy of an earlier reply, a reply to an earlier read) is dropped and counted in
//!   `client_reply_duplicate_dropped`. Reads do not use up a number; each carries a nonce in
//!   `parent` so that no two reads share a checksum, and the commit of the latest reply in
//!   `commit`, so that it reads the client's own writes.
//! - A request goes first to the replica the client believes is primary (`view % replicas`):
//!   a read could go to any replica, but one behind the client's latest commit drops it, and
//!   the primary is the least likely to be behind. On a timeout it is sent again, unchanged, to
//!   the next replica in turn, with an exponential backoff (capped) and jitter: a paused or
//!   partitioned primary is left behind after one timeout. A `pong_client` from a backup names
//!   its view, and so the primary, where the request goes next. A replica that cannot be
//!   reached (a refused connection, a closed one) is skipped at once, and does not grow the
//!   backoff: it kept no copy waiting. Only a whole round of unreachable replicas slows the
//!   copies down.
//! - A write whose outcome is unknown stays in flight until it is answered. The driver may
//!   give up waiting (the TCP client's deadline), but it must send the same request again
//!   before any other (`in_flight` stays set, and `request_start` refuses to start another):
//!   retrying is safe (the cluster answers a retry of a committed request with its stored
//!   reply, and prepares an uncommitted one at most once), whereas a new write with the same
//!   number would be answered with the old write's reply if that one committed, and never
//!   applied. Ending the session instead would leave the old write to commit, or not, behind
//!   the caller's back, and evict other clients to make room for the new session. Only a read
//!   may be abandoned.
//! - A `busy` answer (the replica had no room for the request: a full request queue, a full
//!   table of reads) sends the same request to the same replica again after a short backoff,
//!   doubled with each busy answer and jittered; it does not grow the timeout's backoff. Once
//!   that backoff reaches the request timeout, the replica is left as an unresponsive one would
//!   be: a primary whose pipeline never drains cannot hold its clients.
//! - An eviction ends the session: whatever was in flight has an unknown outcome, and the
//!   driver starts a new session with a new client id (`session_new`), numbered from 0 again.
//!   A new id, because a late copy of the old session's register reply would answer the new
//!   register (same id, same number, same empty body: the same checksum) with the old session
//!   number, after which the primary would drop every request of the new session.
//!
//! Time is the driver's (ticks in the simulator, milliseconds in the TCP client): every
//! duration in `ClientOptions` is in the unit of the `now` the driver passes.

use crate::constants::PRIMARY_BUSY_RETRIES_MAX;
use crate::stdx::prng::Prng;
use crate::vsr::client_sessions::session_chain;
use crate::vsr::header::views;
use crate::vsr::header::{
    self, Checksum, ClientId, ClusterId, Command, Header, Op, Operation, READ_MODE_LINEARIZABLE,
    ReplicaIndex, View,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    pub cluster: ClusterId,
    pub replica_count: u8,
    /// How long the first copy of a request waits for its reply before it is sent again.
    pub request_timeout: u64,
    /// The longest wait between two copies, however many timed out (the backoff's cap).
    pub request_timeout_max: u64,
    /// How long after a backup names the primary, or a replica proves unreachable, the
    /// request goes again.
    pub redirect_delay: u64,
    /// How long after the primary answers that it is between views (its view change is under
    /// way) the request goes to it again: a view change takes milliseconds once it starts, so
    /// the client asks again soon rather than wait out a timeout.
    pub primary_busy_delay: u64,
    /// How long after a `busy` answer (the replica had no room for the request) the same
    /// request goes to the same replica again; doubled with each busy answer in a row, up to
    /// `request_timeout`, with jitter so that clients turned away together do not come back
    /// together.
    pub busy_delay: u64,
}

/// The request in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight {
    pub request: u32,
    pub operation: Operation,
    /// The request header's checksum: what its reply names in `context`.
    pub checksum: Checksum,
    /// Copies sent so far.
    pub sends: u32,
    /// Copies whose wait ran out: the backoff doubles with each, not with redirects nor with
    /// unreachable replicas.
    timeouts: u32,
    /// The next copy is due to a redirect, a busy primary or an unreachable replica, not to a
    /// timeout.
    redirected: bool,
    /// Copies in a row whose replica proved unreachable (reset by a pong).
    unreachable: u32,
    /// Pongs from the primary itself between views, each answered by a quick retry, up to
    /// `PRIMARY_BUSY_RETRIES_MAX` (a primary stuck between views, cut off from its peers,
    /// must not hold the client: the timeouts move it on).
    busy_count: u32,
    /// `busy` answers to this request so far: the backoff after the next one. Once that backoff
    /// reaches the request timeout, a busy answer counts as a timeout and the request moves on
    /// to the next replica.
    busy_answers: u32,
    /// The replica the latest copy went to.
    pub target: ReplicaIndex,
    /// Where the next copy goes, and when.
    target_next: ReplicaIndex,
    send_at: u64,
    /// How the read in flight is served (default for a write).
    read: ReadOptions,
}

/// How a read is served (`ClientCore::request_start_with`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// How much longer than a request's timeout each copy is waited for, in the units of `now`:
    /// the time the replica may hold the read for events to commit (its body's `wait_ms`).
    pub patience: u64,
    /// Served only by the primary, once an op it prepared after the read arrived has committed
    /// (`READ_MODE_LINEARIZABLE`): a backup or a replica between views redirects it.
    pub linearizable: bool,
}

/// What a message from the cluster meant to this client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The reply to the request in flight: the request is done.
    Reply,
    /// A replica named the primary: the request goes there next.
    Redirect,
    /// The replica had no room for the request: it goes to the same replica again after a
    /// backoff.
    Busy,
    /// The cluster ended the session (`EvictionReason` as a number); nothing is in flight any
    /// more, and `session_new` must be called before the next request.
    Evicted(u32),
    /// Not an answer to the request in flight (why, for logs and tests).
    Dropped(&'static str),
}

crate::vsr::counters::counters! {
/// Counters of the paths the core took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientMetrics {
    pub client_requests_started: u64,
    /// Copies sent again after a timeout, a redirect, a busy answer or an unreachable replica.
    pub client_requests_resent: u64,
    /// Of those, copies sent because the previous one's wait for a reply ran out.
    pub client_timeouts: u64,
    /// Replies that named another request than the one in flight (duplicates, late copies).
    pub client_reply_duplicate_dropped: u64,
    pub client_redirects: u64,
    /// Pongs from the primary itself while it was between views: asked again soon.
    pub client_primary_busy: u64,
    /// `busy` answers: requests sent again after a backoff.
    pub client_busy: u64,
    pub client_unreachable: u64,
    pub client_evictions: u64,
    pub client_reads_abandoned: u64,
}
}

pub struct ClientCore {
    options: ClientOptions,
    id: ClientId,
    /// The register's reply was accepted (and no eviction since).
    registered: bool,
    /// An eviction ended the session: `session_new` comes next.
    evicted: bool,
    /// The number of the latest write whose reply was accepted (0 = the register).
    request_latest: u32,
    /// `parent` of the next write: the session chain after that reply.
    parent: Checksum,
    /// The highest commit number seen in a reply (reads ask for at least this).
    commit_latest: Op,
    /// The newest view seen in a reply or pong.
    view: View,
    /// Distinguishes reads (their `parent`); never zero.
    read_nonce: u128,
    in_flight: Option<InFlight>,
    /// Jitter for retries (seeded by the driver).
    prng: Prng,
    metrics: ClientMetrics,
}

impl ClientCore {
    pub fn new(options: ClientOptions, id: ClientId, seed: u64) -> ClientCore {
        assert!(options.replica_count > 0);
        assert!(options.request_timeout > 0);
        assert!(options.request_timeout_max >= options.request_timeout);
        assert!(options.busy_delay > 0 && options.busy_delay <= options.request_timeout);
        assert_ne!(id, ClientId::NONE);
        ClientCore {
            options,
            id,
            registered: false,
            evicted: false,
            request_latest: 0,
            parent: Checksum(0),
            commit_latest: Op(0),
            view: View(0),
            read_nonce: 0,
            in_flight: None,
            prng: Prng::new(seed),
            metrics: ClientMetrics::default(),
        }
    }

    pub fn id(&self) -> ClientId {
        self.id
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    pub fn registered(&self) -> bool {
        self.registered
    }

    pub fn evicted(&self) -> bool {
        self.evicted
    }

    pub fn request_latest(&self) -> u32 {
        self.request_latest
    }

    pub fn commit_latest(&self) -> Op {
        self.commit_latest
    }

    pub fn view(&self) -> View {
        self.view
    }

    pub fn metrics(&self) -> ClientMetrics {
        self.metrics
    }

    pub fn in_flight(&self) -> Option<&InFlight> {
        self.in_flight.as_ref()
    }

    /// Reads will be served only by a replica that has executed at least `commit`.
    pub fn observe_commit(&mut self, commit: Op) {
        self.commit_latest = self.commit_latest.max(commit);
    }

    /// The replica this client believes is primary.
    pub fn primary(&self) -> ReplicaIndex {
        self.view.primary(self.options.replica_count)
    }

    /// After an eviction: a new session under the new client id `id`, numbered from the
    /// register again.
    pub fn session_new(&mut self, id: ClientId) {
        assert!(self.evicted);
        assert!(self.in_flight.is_none());
        assert_ne!(id, ClientId::NONE);
        assert_ne!(id, self.id);
        self.id = id;
        self.evicted = false;
        self.registered = false;
        self.request_latest = 0;
        self.parent = Checksum(0);
    }

    /// Starts `operation` with `body`: returns the request's header, ready to send in front
    /// of the body. Nothing may be in flight; a write needs the session registered first.
    pub fn request_start(&mut self, operation: Operation, body: &[u8], now: u64) -> Header {
        self.request_start_with(operation, body, now, ReadOptions::default())
    }

    /// As `request_start`, a read served as `read` says (the default for a write).
    pub fn request_start_with(
        &mut self,
        operation: Operation,
        body: &[u8],
        now: u64,
        read: ReadOptions,
    ) -> Header {
        assert!(operation.is_read() || read == ReadOptions::default());
        assert!(self.in_flight.is_none(), "one request in flight at a time");
        assert!(!self.evicted, "an evicted session needs session_new first");
        assert!(operation.is_client_request());
        let mut header = Header::new(Command::Request, self.options.cluster);
        header.size = (crate::constants::HEADER_SIZE + body.len()) as u32;
        header.client = self.id;
        header.operation = operation as u8;
        header.view = self.view;
        if operation == Operation::Register {
            assert!(!self.registered);
            header.request = 0;
        } else if operation.is_read() {
            self.read_nonce = self.read_nonce.wrapping_add(1).max(1);
            header.request = self.request_latest + 1;
            header.commit = self.commit_latest;
            header.parent = Checksum(self.read_nonce);
            let mode = if read.linearizable { READ_MODE_LINEARIZABLE } else { 0 };
            views::Request::of(&mut header).set_read_mode(mode);
        } else {
            assert!(self.registered, "a write needs a session");
            header.request = self.request_latest + 1;
            header.parent = self.parent;
        }
        header.checksum_body = header::checksum(body);
        header.set_checksum();
        assert_eq!(header.invalid(), None);
        let target = self.primary();
        self.in_flight = Some(InFlight {
            request: header.request,
            operation,
            checksum: header.checksum,
            sends: 0,
            timeouts: 0,
            redirected: false,
            unreachable: 0,
            busy_count: 0,
            busy_answers: 0,
            target,
            target_next: target,
            send_at: now,
            read,
        });
        self.metrics.client_requests_started += 1;
        header
    }

    /// Abandons the read in flight (its caller stopped waiting). A write cannot be abandoned:
    /// see the module doc.
    pub fn read_abandon(&mut self) {
        let in_flight = self.in_flight.take().expect("a request in flight");
        assert!(in_flight.operation.is_read(), "a write in doubt stays in flight");
        self.metrics.client_reads_abandoned += 1;
    }

    /// When the next copy of the request in flight is due, if one is in flight.
    pub fn send_due(&self) -> Option<u64> {
        self.in_flight.as_ref().map(|in_flight| in_flight.send_at)
    }

    /// If a copy of the request in flight is due at `now`: the replica to send it to. The
    /// driver sends it (or reports `on_unreachable`); the reply is due before the timeout.
    pub fn poll_send(&mut self, now: u64) -> Option<ReplicaIndex> {
        let in_flight = self.in_flight.as_ref()?;
        if now < in_flight.send_at {
            return None;
        }
        let timed_out = in_flight.sends > 0 && !in_flight.redirected;
        let shift = (in_flight.timeouts + u32::from(timed_out)).min(16);
        let timeout = (self.options.request_timeout << shift).min(self.options.request_timeout_max);
        let jitter = self.prng_next() % (timeout / 2 + 1);
        let replica_count = self.options.replica_count;
        let in_flight = self.in_flight.as_mut().expect("checked above");
        if in_flight.sends > 0 {
            self.metrics.client_requests_resent += 1;
        }
        if timed_out {
            self.metrics.client_timeouts += 1;
        }
        let target = in_flight.target_next;
        assert!(target < ReplicaIndex(replica_count));
        in_flight.sends += 1;
        in_flight.timeouts = shift;
        in_flight.redirected = false;
        in_flight.target = target;
        // Unless a reply or a redirect comes first, the next copy goes to the next replica.
        in_flight.target_next = target.next(replica_count);
        in_flight.send_at = now + in_flight.read.patience + timeout + jitter;
        Some(target)
    }

    /// The driver could not reach the replica the latest copy went to (a refused connection,
    /// a broken socket): the next copy goes to the next replica soon.
    pub fn on_unreachable(&mut self, now: u64) {
        let options = self.options;
        let Some(in_flight) = self.in_flight.as_mut() else {
            return;
        };
        self.metrics.client_unreachable += 1;
        // Not a timeout: the backoff of the wait for a reply is left alone. After a failover,
        // every backup still in the old view sends the client back to the dead primary until
        // the view changes; counted as timeouts, that second of refused connections ran the
        // backoff to its cap, and a copy the new primary then left unanswered waited seconds.
        in_flight.redirected = true;
        in_flight.unreachable += 1;
        // Each replica once at the redirect delay; then the delay doubles with each round of
        // replicas that all proved unreachable, up to the first timeout: a cluster that is down
        // is not dialed as fast as connections are refused, nor left alone for longer than a
        // timeout once it is back.
        let rounds = ((in_flight.unreachable - 1) / u32::from(options.replica_count)).min(16);
        let delay = (options.redirect_delay << rounds).min(options.request_timeout);
        in_flight.target_next = in_flight.target.next(options.replica_count);
        in_flight.send_at = in_flight.send_at.min(now + delay);
    }

    /// A message from the cluster, already validated by the driver (`Header::decode`, body
    /// checksum).
    pub fn on_message(&mut self, header: &Header, now: u64) -> Outcome {
        if header.cluster != self.options.cluster {
            return Outcome::Dropped("another cluster's message");
        }
        if header.client != self.id {
            return Outcome::Dropped("another client id's message");
        }
        match header.command() {
            Some(Command::Reply) => self.on_reply(header),
            Some(Command::PongClient) => self.on_pong(header, now),
            Some(Command::Eviction) => self.on_eviction(header),
            Some(Command::Busy) => self.on_busy(header, now),
            _ => Outcome::Dropped("not a message for a client"),
        }
    }

    /// Whether a reply or busy answer naming `request_checksum` is about the request in flight.
    fn answers(&self, header: &Header, request_checksum: Checksum) -> bool {
        self.in_flight.as_ref().is_some_and(|in_flight| {
            request_checksum == in_flight.checksum
                && header.operation == in_flight.operation as u8
                && header.request == in_flight.request
        })
    }

    fn on_reply(&mut self, header: &Header) -> Outcome {
        if !self.answers(header, views::Reply::of(header).request_checksum()) {
            self.metrics.client_reply_duplicate_dropped += 1;
            return Outcome::Dropped("a reply to another request than the one in flight");
        }
        let in_flight = self.in_flight.take().expect("answered request");
        self.view = self.view.max(header.view);
        self.commit_latest = self.commit_latest.max(header.commit);
        if !in_flight.operation.is_read() {
            assert_eq!(in_flight.request, self.request_latest + u32::from(self.registered));
            self.request_latest = in_flight.request;
            self.parent = session_chain(self.id, header.op);
            self.registered = true;
        }
        Outcome::Reply
    }

    fn on_pong(&mut self, header: &Header, now: u64) -> Outcome {
        let view_newer = header.view > self.view;
        self.view = self.view.max(header.view);
        if view_newer && let Some(in_flight) = self.in_flight.as_mut() {
            // The cluster moved to a new view (a failover): the timeouts of the old one say
            // nothing about the new primary, so the backoff starts over.
            in_flight.timeouts = 0;
            in_flight.busy_count = 0;
        }
        let primary = self.primary();
        let redirect_delay = self.options.redirect_delay;
        let busy_delay = self.options.primary_busy_delay;
        let Some(in_flight) = self.in_flight.as_mut() else {
            return Outcome::Dropped("a pong with no request in flight");
        };
        // A replica answered: the cluster is up.
        in_flight.unreachable = 0;
        if in_flight.operation.is_read() && !in_flight.read.linearizable {
            // A read is served by any replica, but for a linearizable one.
            return Outcome::Dropped("a pong that names no other primary");
        }
        if in_flight.target == primary && in_flight.busy_count < PRIMARY_BUSY_RETRIES_MAX {
            // The primary itself, between views: asked again soon, without backoff.
            self.metrics.client_primary_busy += 1;
            in_flight.busy_count += 1;
            in_flight.target_next = primary;
            in_flight.redirected = true;
            in_flight.send_at = in_flight.send_at.min(now + busy_delay);
            return Outcome::Dropped("the primary is between views");
        }
        if in_flight.target == primary {
            return Outcome::Dropped("the primary is between views, again");
        }
        self.metrics.client_redirects += 1;
        in_flight.redirected = true;
        in_flight.target_next = primary;
        in_flight.send_at = in_flight.send_at.min(now + redirect_delay);
        Outcome::Redirect
    }

    fn on_busy(&mut self, header: &Header, now: u64) -> Outcome {
        if !self.answers(header, views::Busy::of(header).request_checksum()) {
            return Outcome::Dropped("a busy answer to another request than the one in flight");
        }
        self.view = self.view.max(header.view);
        self.metrics.client_busy += 1;
        let in_flight = self.in_flight.as_ref().expect("answered request");
        let shift = in_flight.busy_answers.min(16);
        let uncapped = self.options.busy_delay << shift;
        let delay = uncapped.min(self.options.request_timeout);
        let jitter = self.prng_next() % (delay / 2 + 1);
        let replica_count = self.options.replica_count;
        let in_flight = self.in_flight.as_mut().expect("answered request");
        in_flight.busy_answers += 1;
        in_flight.unreachable = 0;
        in_flight.send_at = in_flight.send_at.min(now + delay / 2 + jitter);
        if uncapped < self.options.request_timeout {
            // Not a timeout: the replica is up and answered at once.
            in_flight.redirected = true;
            in_flight.target_next = in_flight.target;
        } else {
            // Busy for as long as a timeout: a primary whose pipeline never drains (cut off
            // from its backups, say) is left as an unresponsive one would be.
            in_flight.redirected = false;
            in_flight.target_next = in_flight.target.next(replica_count);
        }
        Outcome::Busy
    }

    fn on_eviction(&mut self, header: &Header) -> Outcome {
        if self.evicted {
            return Outcome::Dropped("a second eviction of an ended session");
        }
        self.metrics.client_evictions += 1;
        self.evicted = true;
        self.registered = false;
        self.in_flight = None;
        Outcome::Evicted(views::Eviction::of(header).reason())
    }

    fn prng_next(&mut self) -> u64 {
        self.prng.next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vsr::header::EvictionReason;

    fn options() -> ClientOptions {
        ClientOptions {
            cluster: ClusterId(7),
            replica_count: 3,
            request_timeout: 10,
            request_timeout_max: 40,
            redirect_delay: 1,
            primary_busy_delay: 2,
            busy_delay: 2,
        }
    }

    /// The reply a replica would send to `request` at `op`.
    fn reply_to(request: &Header, op: Op) -> Header {
        let mut reply = Header::new(Command::Reply, request.cluster);
        reply.client = request.client;
        reply.request = request.request;
        reply.operation = request.operation;
        views::Reply::of(&mut reply).set_request_checksum(request.checksum);
        reply.op = op;
        reply.commit = op;
        reply
    }

    /// The busy answer a replica would send to `request`.
    fn busy_to(request: &Header) -> Header {
        let mut busy = Header::new(Command::Busy, request.cluster);
        (busy.client, busy.request, busy.operation) =
            (request.client, request.request, request.operation);
        views::Busy::of(&mut busy).set_request_checksum(request.checksum);
        busy
    }

    fn registered_core() -> ClientCore {
        let mut core = ClientCore::new(options(), ClientId(5), 1);
        let register = core.request_start(Operation::Register, &[], 0);
        assert_eq!(core.poll_send(0), Some(ReplicaIndex(0)));
        assert_eq!(core.on_message(&reply_to(&register, Op(1)), 1), Outcome::Reply);
        assert!(core.registered());
        core
    }

    #[test]
    fn late_reply_to_a_read_never_answers_the_next_write() {
        // Goal: the bug of the old client: a read and the next write share a number, so a
        // late copy of the read's reply looked like the write's. Matching by checksum and
        // operation drops it, counts it, and the write's own reply still completes it.
        let mut core = registered_core();
        let read = core.request_start(Operation::StreamInfo, &[1, 2, 3, 4, 5, 6, 7, 8], 2);
        core.poll_send(2);
        let read_reply = reply_to(&read, Op(0));
        assert_eq!(core.on_message(&read_reply, 3), Outcome::Reply);
        let write = core.request_start(Operation::Append, &[9; 24], 4);
        assert_eq!(write.request, read.request, "a read does not use up a number");
        core.poll_send(4);
        assert!(matches!(core.on_message(&read_reply, 5), Outcome::Dropped(_)));
        assert_eq!(core.request_latest(), 0);
        assert_eq!(core.metrics().client_reply_duplicate_dropped, 1);
        assert_eq!(core.on_message(&reply_to(&write, Op(2)), 6), Outcome::Reply);
        assert_eq!(core.request_latest(), 1);
        assert!(matches!(core.on_message(&reply_to(&write, Op(2)), 7), Outcome::Dropped(_)));
    }

    #[test]
    fn two_identical_reads_have_different_checksums() {
        // Goal: a late reply to one read cannot answer a later read of the same body.
        let mut core = registered_core();
        let first = core.request_start(Operation::StreamInfo, &[1; 8], 2);
        core.poll_send(2);
        assert_eq!(core.on_message(&reply_to(&first, Op(0)), 3), Outcome::Reply);
        let second = core.request_start(Operation::StreamInfo, &[1; 8], 4);
        assert_ne!(first.checksum, second.checksum);
        core.poll_send(4);
        assert!(matches!(core.on_message(&reply_to(&first, Op(0)), 5), Outcome::Dropped(_)));
    }

    #[test]
    fn a_busy_answer_sends_the_request_again_to_the_same_replica_with_a_growing_backoff() {
        // Goal: `busy` (the replica had no room) brings the same request back to the same
        // replica after `busy_delay`, doubled with each busy answer and jittered within its
        // upper half; it neither rotates the replica nor grows the timeout's backoff (while the
        // delay is below the request timeout); a busy answer naming another request changes
        // nothing.
        let mut core = registered_core();
        let write = core.request_start(Operation::Append, &[9; 24], 10);
        assert_eq!(core.poll_send(10), Some(ReplicaIndex(0)));
        let busy = busy_to(&write);
        let mut other = busy;
        views::Busy::of(&mut other).set_request_checksum(Checksum(1));
        let due = core.send_due();
        assert!(matches!(core.on_message(&other, 11), Outcome::Dropped(_)));
        assert_eq!(core.send_due(), due);
        let mut now = 11;
        let mut delays = Vec::new();
        for _ in 0..3 {
            assert_eq!(core.on_message(&busy, now), Outcome::Busy);
            let due = core.send_due().unwrap();
            delays.push(due - now);
            assert_eq!(core.poll_send(due - 1), None);
            assert_eq!(core.poll_send(due), Some(ReplicaIndex(0)), "the same replica");
            now = due + 1;
        }
        let bounds = [(1, 2), (2, 4), (4, 8)];
        for (delay, (low, high)) in delays.iter().zip(bounds) {
            assert!((low..=high).contains(delay), "{delays:?}");
        }
        assert_eq!(core.metrics().client_busy, 3);
        assert_eq!(core.metrics().client_requests_resent, 3);
        assert_eq!(core.metrics().client_timeouts, 0, "no copy waited out a timeout");
        assert_eq!(core.in_flight().unwrap().timeouts, 0);
        assert_eq!(core.on_message(&reply_to(&write, Op(2)), now), Outcome::Reply);
    }

    #[test]
    fn a_replica_busy_for_as_long_as_a_timeout_is_left_for_the_next() {
        // Goal: a replica that answers busy again and again (a primary whose pipeline never
        // drains) holds a request no longer than a timeout would: once the busy backoff reaches
        // the request timeout, the next copy goes to the next replica, as after a timeout.
        let mut core = registered_core();
        let write = core.request_start(Operation::Append, &[9; 24], 10);
        assert_eq!(core.poll_send(10), Some(ReplicaIndex(0)));
        let busy = busy_to(&write);
        let mut now = 11;
        let mut targets = Vec::new();
        for _ in 0..5 {
            assert_eq!(core.on_message(&busy, now), Outcome::Busy);
            now = core.send_due().unwrap();
            targets.push(core.poll_send(now).unwrap());
            now += 1;
        }
        let r = ReplicaIndex;
        assert_eq!(targets, [r(0), r(0), r(0), r(1), r(2)], "busy thrice, then moved on");
        assert_eq!(core.metrics().client_timeouts, 2);
    }

    #[test]
    fn timeouts_rotate_through_the_replicas_with_backoff() {
        // Goal: a request that times out goes, unchanged, to the next replica each time, and
        // the wait between copies doubles up to its cap.
        let mut core = registered_core();
        let write = core.request_start(Operation::Append, &[9; 24], 10);
        let mut targets = Vec::new();
        let mut sent_at = Vec::new();
        for now in 10..400 {
            if let Some(target) = core.poll_send(now) {
                targets.push(target);
                sent_at.push(now);
            }
        }
        assert_eq!(targets[..6], [0, 1, 2, 0, 1, 2].map(ReplicaIndex));
        let waits: Vec<u64> = sent_at.windows(2).map(|pair| pair[1] - pair[0]).collect();
        assert!((10..=15).contains(&waits[0]) && (20..=30).contains(&waits[1]), "{waits:?}");
        assert!(waits.iter().all(|wait| *wait <= 60), "{waits:?}");
        assert_eq!(core.in_flight().unwrap().checksum, write.checksum);
        assert!(core.metrics().client_requests_resent >= 5);
        assert_eq!(core.metrics().client_timeouts, core.metrics().client_requests_resent);
    }

    #[test]
    fn a_pong_redirects_to_the_primary_and_an_unreachable_replica_is_skipped() {
        // Goal: a backup's pong names the view's primary, where the next copy goes at once;
        // a replica that cannot be reached is skipped without waiting for the timeout.
        let mut core = registered_core();
        core.request_start(Operation::Append, &[9; 24], 10);
        assert_eq!(core.poll_send(10), Some(ReplicaIndex(0)));
        core.on_unreachable(11);
        assert_eq!(core.poll_send(12), Some(ReplicaIndex(1)));
        let mut pong = Header::new(Command::PongClient, ClusterId(7));
        pong.client = core.id();
        pong.view = View(5);
        assert_eq!(core.on_message(&pong, 13), Outcome::Redirect);
        assert_eq!(core.poll_send(14), Some(ReplicaIndex(2)));
        assert_eq!(core.primary(), ReplicaIndex(2));
    }

    #[test]
    fn unreachable_replicas_do_not_grow_the_wait_for_a_live_one() {
        // Goal: after a failover the client bounces between a backup still in the old view
        // (whose pong names the dead primary) and the dead primary (refused) until the view
        // changes. However long that lasts, the copy that then reaches a live replica waits
        // only the first timeout for its reply, not the backoff's cap; and only a whole round
        // of unreachable replicas slows the copies down, each round twice as much, up to the
        // first timeout.
        let mut core = registered_core();
        core.request_start(Operation::Append, &[9; 24], 10);
        assert_eq!(core.poll_send(10), Some(ReplicaIndex(0)));
        let mut pong = Header::new(Command::PongClient, ClusterId(7));
        pong.client = core.id();
        let mut now = 10;
        for _ in 0..50 {
            core.on_unreachable(now);
            now += 1;
            assert_eq!(core.poll_send(now), Some(ReplicaIndex(1)), "the next replica, at once");
            assert_eq!(core.on_message(&pong, now), Outcome::Redirect);
            now += 1;
            assert_eq!(
                core.poll_send(now),
                Some(ReplicaIndex(0)),
                "back to the old view's primary"
            );
        }
        core.on_unreachable(now);
        now += 1;
        assert_eq!(core.poll_send(now), Some(ReplicaIndex(1)));
        let wait = core.send_due().unwrap() - now;
        assert!((10..=15).contains(&wait), "the first timeout, not the cap: {wait}");
        assert_eq!(core.metrics().client_unreachable, 51);
        let mut delays = Vec::new();
        for _ in 0..14 {
            core.on_unreachable(now);
            let due = core.send_due().unwrap();
            delays.push(due - now);
            now = due;
            assert!(core.poll_send(now).is_some());
        }
        assert_eq!(delays, [1, 1, 2, 2, 2, 4, 4, 4, 8, 8, 8, 10, 10, 10]);
    }

    #[test]
    fn a_primary_between_views_is_asked_again_soon_and_redirects_do_not_grow_the_backoff() {
        // Goal: after a failover the client reaches the new primary without waiting out
        // doubled timeouts: a redirect does not double the wait, and the new primary that
        // answers it is between views is asked again after `primary_busy_delay`, a bounded
        // number of times, after which timeouts move the request on; a newer view starts the
        // backoff over.
        let mut core = registered_core();
        core.request_start(Operation::Append, &[9; 24], 10);
        assert_eq!(core.poll_send(10), Some(ReplicaIndex(0)));
        let mut now = 11;
        while core.poll_send(now).is_none() {
            now += 1;
        }
        assert_eq!(
            core.in_flight().unwrap().target,
            ReplicaIndex(1),
            "timed out: the next replica"
        );
        let mut pong = Header::new(Command::PongClient, ClusterId(7));
        pong.client = core.id();
        pong.view = View(2);
        assert_eq!(core.on_message(&pong, now), Outcome::Redirect);
        now += 1;
        assert_eq!(core.poll_send(now), Some(ReplicaIndex(2)));
        let mut busy_sends = 0;
        while busy_sends < PRIMARY_BUSY_RETRIES_MAX {
            assert!(matches!(core.on_message(&pong, now), Outcome::Dropped(_)));
            now += 2;
            assert_eq!(
                core.poll_send(now),
                Some(ReplicaIndex(2)),
                "asked again after the busy delay"
            );
            busy_sends += 1;
        }
        assert_eq!(core.metrics().client_primary_busy, u64::from(PRIMARY_BUSY_RETRIES_MAX));
        // The redirect named a newer view: the backoff of the old one started over.
        let in_flight = core.in_flight().unwrap();
        assert_eq!(in_flight.timeouts, 0);
        core.on_message(&pong, now);
        assert_eq!(core.poll_send(now + 2), None, "no more quick retries");
        let due = core.send_due().unwrap();
        assert!(due > now + 2 && due <= now + 30, "{due} {now}");
    }

    #[test]
    fn a_write_in_doubt_stays_in_flight_and_an_eviction_starts_over_at_zero() {
        // Goal: a write is never abandoned (no later write may reuse its number); an eviction
        // ends the session, and the new one (new id) numbers from the register again.
        let mut core = registered_core();
        let write = core.request_start(Operation::Append, &[9; 24], 10);
        core.poll_send(10);
        assert_eq!(core.in_flight().unwrap().checksum, write.checksum);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            core.request_start(Operation::Append, &[8; 24], 11)
        }));
        assert!(result.is_err(), "a second write started while one was in doubt");
        let mut core = registered_core();
        let write = core.request_start(Operation::Append, &[9; 24], 10);
        core.poll_send(10);
        assert_eq!(core.on_message(&reply_to(&write, Op(2)), 11), Outcome::Reply);
        core.request_start(Operation::Append, &[9; 24], 12);
        let mut eviction = Header::new(Command::Eviction, ClusterId(7));
        eviction.client = core.id();
        views::Eviction::of(&mut eviction).set_reason(EvictionReason::NoSession as u32);
        assert_eq!(
            core.on_message(&eviction, 13),
            Outcome::Evicted(EvictionReason::NoSession as u32)
        );
        assert!(core.in_flight().is_none() && core.evicted());
        core.session_new(ClientId(6));
        let register = core.request_start(Operation::Register, &[], 14);
        assert_eq!(
            (register.request, register.parent, register.client),
            (0, Checksum::ZERO, ClientId(6))
        );
        core.poll_send(14);
        assert_eq!(core.on_message(&reply_to(&register, Op(9)), 15), Outcome::Reply);
        let write = core.request_start(Operation::Append, &[9; 24], 16);
        assert_eq!(write.request, 1);
        assert_eq!(write.parent, session_chain(ClientId(6), Op(9)));
    }
}
