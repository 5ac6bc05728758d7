//! The safety and liveness oracle of the simulator. It keeps the cluster's one committed
//! history (the prepare headers at ops 0, 1, 2, ..., hash-chained through `parent`) and checks
//! every replica's commits and every client's replies against it, after every step:
//!
//! - agreement: no two replicas commit different prepares (checksums) at one op;
//! - prefix and total order: each replica commits the history in op order, so its committed
//!   sequence is a prefix of the longest one; the history only grows by a prepare whose parent
//!   is the previous op's checksum, so the chain is continuous;
//! - no acknowledged write lost: every acknowledged reply's op ends up in the history with the
//!   prepare of that client and request; a primary in normal status holds every acknowledged op;
//!   at the end every replica has committed them all;
//! - replies consistent with the log: the prepare at a reply's op has the reply's client,
//!   request, operation and request checksum (for an `append_packed` prepare, one of the
//!   requests its body names has them), and one request is never answered two ways;
//! - client dedup: no (client, request) pair is committed at two ops (a register may be: see
//!   `dedup_exempt`);
//! - timestamps: every committed prepare's timestamp is above its parent's, across views and
//!   restarts (events carry them);
//! - checkpoints: a replica's checkpoint op never moves back, restarts included.
//!
//! The checker sees the cluster only through these calls, so a test can feed it a fabricated
//! history and see it object.

use std::collections::{BTreeMap, VecDeque};

use crate::sim::workload::ReplyRecord;
use crate::vsr::header::views;
use crate::vsr::header::{Checksum, ClientId, ClusterId, Header, Op, Operation};
use crate::vsr::replica::Destination;

/// A broken rule, with what the checker saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// `replica` committed a prepare at `op` other than the one in the history.
    Agreement { replica: usize, op: Op, history: Checksum, committed: Checksum },
    /// `replica` committed, as the next op of the history, a prepare that does not chain to
    /// the previous op.
    Chain { replica: usize, op: Op, parent: Checksum, expected: Checksum },
    /// `replica` gave a header for `op` whose own op differs.
    HeaderOp { replica: usize, op: Op, header_op: Op },
    /// `replica`'s commit number went back without a restart.
    CommitBackwards { replica: usize, commit: Op, checked: Op },
    /// One request committed at two ops.
    RequestCommittedTwice { client: ClientId, request: u32, first: Op, second: Op },
    /// The prepare at a reply's op is not the request the reply answers.
    ReplyInconsistent { client: ClientId, request: u32, op: Op, reason: &'static str },
    /// One request was answered with two different replies.
    ReplyDiverged { client: ClientId, request: u32, first_op: Op, second_op: Op },
    /// A primary in normal status does not hold an acknowledged op.
    AcknowledgedWriteLost { replica: usize, op: Op, head: Op },
    /// A client's model of its stream was contradicted by a reply.
    StateMachine { client: ClientId, request: u32, op: Op, reason: &'static str },
    /// A replica sent a message to itself, to a replica out of range, or to an unknown client.
    Misaddressed { replica: usize, destination: Destination },
    /// A replica allocated on the heap in calls made after it opened.
    Allocation { replica: usize, allocations: u64 },
    /// A committed prepare's timestamp is not above its parent's.
    TimestampBackwards { op: Op, timestamp: u64, parent_timestamp: u64 },
    /// `replica`'s checkpoint moved back (its superblock's checkpoint is durable, restarts
    /// included).
    CheckpointBackwards { replica: usize, checkpoint_op: Op, before: Op },
    /// A replica stopped (`Status::Failed`) with this reason.
    ReplicaFailed { replica: usize, reason: &'static str },
    /// Two replicas that checkpointed the same op hold different bytes in a grid block below
    /// that checkpoint's grid head (after repair): the grid is not the function of the log it
    /// must be, or a repair wrote a wrong block.
    GridDiverged { replica: usize, other: usize, checkpoint_op: Op, address: u64 },
    /// A block of `replica`'s durable checkpoint changed before its next checkpoint was
    /// durable (and not by an injected fault): a crash then would open a broken checkpoint.
    CheckpointBlockOverwritten { replica: usize, checkpoint_op: Op, address: u64 },
    /// The run did not converge within its tick budget after the faults stopped.
    Liveness { reason: String },
}

impl std::fmt::Display for Violation {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::Agreement { replica, op, history, committed } => write!(
                formatter,
                "agreement: replica {replica} committed prepare {committed:08x} at op {op}, \
                 the history has {history:08x}"
            ),
            Violation::Chain { replica, op, parent, expected } => write!(
                formatter,
                "chain: replica {replica} committed op {op} with parent {parent:08x}, the \
                 previous op is {expected:08x}"
            ),
            Violation::HeaderOp { replica, op, header_op } => {
                write!(formatter, "replica {replica} holds a header of op {header_op} for op {op}")
            }
            Violation::CommitBackwards { replica, commit, checked } => write!(
                formatter,
                "replica {replica} commit went back from {checked} to {commit} without a restart"
            ),
            Violation::RequestCommittedTwice { .. }
            | Violation::ReplyInconsistent { .. }
            | Violation::ReplyDiverged { .. }
            | Violation::StateMachine { .. } => self.fmt_client(formatter),
            Violation::AcknowledgedWriteLost { replica, op, head } => write!(
                formatter,
                "acknowledged op {op} lost: primary {replica} is normal with head op {head}"
            ),
            Violation::Misaddressed { replica, destination } => {
                write!(formatter, "replica {replica} sent a message to {destination:?}")
            }
            Violation::Allocation { replica, allocations } => write!(
                formatter,
                "static allocation: replica {replica} allocated {allocations} time(s) after it \
                 opened"
            ),
            Violation::TimestampBackwards { op, timestamp, parent_timestamp } => write!(
                formatter,
                "timestamps: the prepare committed at op {op} has timestamp {timestamp}, not \
                 above its parent's {parent_timestamp}"
            ),
            Violation::CheckpointBackwards { replica, checkpoint_op, before } => write!(
                formatter,
                "replica {replica} checkpoint went back from op {before} to op {checkpoint_op}"
            ),
            Violation::ReplicaFailed { replica, reason } => {
                write!(formatter, "replica {replica} stopped: {reason}")
            }
            Violation::GridDiverged { replica, other, checkpoint_op, address } => write!(
                formatter,
                "grid: replicas {replica} and {other} checkpointed op {checkpoint_op} but differ \
                 in grid block {address}"
            ),
            Violation::CheckpointBlockOverwritten { replica, checkpoint_op, address } => write!(
                formatter,
                "grid: block {address} of replica {replica}'s checkpoint at op {checkpoint_op} \
                 was overwritten while that checkpoint was its durable one"
            ),
            Violation::Liveness { reason } => write!(formatter, "no liveness: {reason}"),
        }
    }
}

impl Violation {
    /// The violations seen from a client's side: its requests, replies and stream model.
    fn fmt_client(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::RequestCommittedTwice { client, request, first, second } => write!(
                formatter,
                "dedup: client {client:016x} request {request} committed at ops {first} and \
                 {second}"
            ),
            Violation::ReplyInconsistent { client, request, op, reason } => write!(
                formatter,
                "reply to client {client:016x} request {request} at op {op}: {reason}"
            ),
            Violation::ReplyDiverged { client, request, first_op, second_op } => write!(
                formatter,
                "client {client:016x} request {request} answered twice differently (ops \
                 {first_op} and {second_op})"
            ),
            Violation::StateMachine { client, request, op, reason } => write!(
                formatter,
                "state machine: client {client:016x} request {request} at op {op}: {reason}"
            ),
            _ => unreachable!("not a client's violation"),
        }
    }
}

pub struct Checker {
    /// The committed prepare at each op, from the root prepare at op 0.
    history: Vec<Header>,
    /// Per replica: the highest op of its commits checked against the history.
    checked: Vec<Op>,
    /// Per replica: restarted, and not yet back at the op it had been checked up to.
    restarted: Vec<bool>,
    /// Per replica: the highest checkpoint op seen.
    checkpoints: Vec<Op>,
    /// The requests each committed `append_packed` prepare holds, by op (`None`: no replica's
    /// copy was intact when the checker looked, so its replies are checked less).
    packed: BTreeMap<Op, Option<Vec<PackedMember>>>,
    packed_members_unknown: u64,
    /// The op of each committed client request.
    requests: BTreeMap<(ClientId, u32), Op>,
    /// The first reply seen for each request.
    replies: BTreeMap<(ClientId, u32), ReplyRecord>,
    /// Replies whose op the history does not reach yet, in arrival order.
    replies_unverified: VecDeque<ReplyRecord>,
    acknowledged_op_max: Op,
}

impl Checker {
    pub fn new(cluster: ClusterId, replica_count: usize) -> Checker {
        assert!(replica_count > 0);
        Checker {
            history: vec![Header::root_prepare(cluster)],
            checked: vec![Op(0); replica_count],
            restarted: vec![false; replica_count],
            checkpoints: vec![Op(0); replica_count],
            packed: BTreeMap::new(),
            packed_members_unknown: 0,
            requests: BTreeMap::new(),
            replies: BTreeMap::new(),
            replies_unverified: VecDeque::new(),
            acknowledged_op_max: Op(0),
        }
    }

    /// The highest op committed by any replica (and checked).
    pub fn history_op_max(&self) -> Op {
        Op(self.history.len() as u64) - 1
    }

    /// The prepare committed at `op`, if any replica committed it.
    pub fn history_header(&self, op: Op) -> Option<&Header> {
        self.history.get(usize::try_from(op.get()).ok()?)
    }

    pub fn checked(&self, replica: usize) -> Op {
        self.checked[replica]
    }

    /// Packed prepares whose requests the checker could not read (see `packed`).
    pub fn packed_members_unknown(&self) -> u64 {
        self.packed_members_unknown
    }

    pub fn acknowledged_op_max(&self) -> Op {
        self.acknowledged_op_max
    }

    pub fn replies_unverified_count(&self) -> usize {
        self.replies_unverified.len()
    }

    /// `replica` restarted from its disk: it will commit again from its checkpoint, which
    /// moves its commit number back for a while.
    pub fn replica_restarted(&mut self, replica: usize) {
        self.restarted[replica] = true;
    }

    /// `replica` (open) stands at `checkpoint_op`: a checkpoint is durable, so it never moves
    /// back, across restarts too.
    pub fn replica_checkpoint(
        &mut self,
        replica: usize,
        checkpoint_op: Op,
    ) -> Result<(), Violation> {
        let before = self.checkpoints[replica];
        if checkpoint_op < before {
            return Err(Violation::CheckpointBackwards { replica, checkpoint_op, before });
        }
        self.checkpoints[replica] = checkpoint_op;
        Ok(())
    }

    /// `replica` lost its data file and was formatted again: it starts from no checkpoint.
    pub fn replica_reformatted(&mut self, replica: usize) {
        self.checkpoints[replica] = Op(0);
    }

    /// Checks `replica`'s commits up to `commit_min`, in op order, each from the header it
    /// holds at that op (`prepare_header`); calls `committed` with each op that extends what was
    /// checked for it. A header it does not hold yet stops the walk until a later call, unless
    /// its checkpoint covers that op (a replica that jumped ahead by state sync): then the walk
    /// goes on after the checkpoint, if the history reaches it. While a restarted replica
    /// replays ops it had committed before, the op it is at is compared with the history.
    /// `packed_members` gives the requests of an `append_packed` prepare (from its body).
    pub fn replica_commits(
        &mut self,
        replica: usize,
        commit_min: Op,
        checkpoint_op: Op,
        prepare_header: impl Fn(Op) -> Option<Header>,
        packed_members: impl Fn(&Header) -> Option<Vec<PackedMember>>,
        mut committed: impl FnMut(Op, &Header),
    ) -> Result<Op, Violation> {
        let checked = self.checked[replica];
        if commit_min < checked {
            if !self.restarted[replica] {
                return Err(Violation::CommitBackwards { replica, commit: commit_min, checked });
            }
            if commit_min > Op(0)
                && let Some(header) = prepare_header(commit_min)
            {
                self.commit(replica, commit_min, &header, &packed_members)?;
            }
            return Ok(checked);
        }
        self.restarted[replica] = false;
        let mut op = checked;
        while op < commit_min {
            match prepare_header(op + 1) {
                Some(header) => {
                    self.commit(replica, op + 1, &header, &packed_members)?;
                    op += 1;
                    committed(op, &header);
                }
                None if op < checkpoint_op && checkpoint_op <= self.history_op_max() => {
                    op = checkpoint_op;
                }
                None => break,
            }
        }
        self.checked[replica] = op;
        Ok(op)
    }

    /// `replica` committed `header` at `op`, the op after the ones already checked for it.
    pub fn commit(
        &mut self,
        replica: usize,
        op: Op,
        header: &Header,
        packed_members: impl Fn(&Header) -> Option<Vec<PackedMember>>,
    ) -> Result<(), Violation> {
        if header.op != op {
            return Err(Violation::HeaderOp { replica, op, header_op: header.op });
        }
        let history_length = Op(self.history.len() as u64);
        assert!(op >= Op(1) && op <= history_length, "op {op} checked out of order");
        if op < history_length {
            let history = self.history[op.get() as usize].checksum;
            if header.checksum != history {
                return Err(Violation::Agreement {
                    replica,
                    op,
                    history,
                    committed: header.checksum,
                });
            }
            return Ok(());
        }
        let previous = self.history[op.get() as usize - 1];
        if header.parent != previous.checksum {
            let (parent, expected) = (header.parent, previous.checksum);
            return Err(Violation::Chain { replica, op, parent, expected });
        }
        if header.timestamp <= previous.timestamp {
            let (timestamp, parent_timestamp) = (header.timestamp, previous.timestamp);
            return Err(Violation::TimestampBackwards { op, timestamp, parent_timestamp });
        }
        let keys = if header.operation == Operation::AppendPacked as u8 {
            let members = packed_members(header);
            self.packed_members_unknown += u64::from(members.is_none());
            // Packed registers, like registers alone, are exempt from the dedup check.
            let appends = members.iter().flatten().filter(|member| member.request != 0);
            let keys = appends.map(|member| (member.client, member.request));
            let keys = keys.collect();
            self.packed.insert(op, members);
            keys
        } else if dedup_exempt(header.operation) {
            Vec::new()
        } else {
            vec![(header.client, header.request)]
        };
        for key in keys {
            if let Some(first) = self.requests.insert(key, op) {
                let (client, request) = key;
                return Err(Violation::RequestCommittedTwice {
                    client,
                    request,
                    first,
                    second: op,
                });
            }
        }
        self.history.push(*header);
        self.replies_verify()
    }

    /// A reply reached a client. It must agree with every other reply to the same request,
    /// and (now or once the history reaches its op) with the prepare at its op.
    pub fn reply(&mut self, reply: &ReplyRecord) -> Result<(), Violation> {
        self.replies_unverified.push_back(*reply);
        if dedup_exempt(reply.operation) {
            return self.replies_verify();
        }
        let key = (reply.client, reply.request);
        let first = *self.replies.entry(key).or_insert(*reply);
        let same = first.op == reply.op
            && first.operation == reply.operation
            && first.request_checksum == reply.request_checksum
            && first.body_checksum == reply.body_checksum;
        if !same {
            let (client, request) = key;
            return Err(Violation::ReplyDiverged {
                client,
                request,
                first_op: first.op,
                second_op: reply.op,
            });
        }
        self.replies_verify()
    }

    /// A client accepted `reply` as the answer to its request: its op is acknowledged.
    pub fn acknowledged(&mut self, reply: &ReplyRecord) {
        self.acknowledged_op_max = self.acknowledged_op_max.max(reply.op);
    }

    /// A primary in normal status must hold every acknowledged op.
    pub fn primary_head(&self, replica: usize, head: Op) -> Result<(), Violation> {
        if head < self.acknowledged_op_max {
            return Err(Violation::AcknowledgedWriteLost {
                replica,
                op: self.acknowledged_op_max,
                head,
            });
        }
        Ok(())
    }

    fn replies_verify(&mut self) -> Result<(), Violation> {
        let history_length = Op(self.history.len() as u64);
        let mut index = 0;
        while index < self.replies_unverified.len() {
            let reply = self.replies_unverified[index];
            if reply.op >= history_length {
                index += 1;
                continue;
            }
            self.replies_unverified.remove(index);
            let prepare = &self.history[reply.op.get() as usize];
            let members = self.packed.get(&reply.op).and_then(Option::as_deref);
            reply_matches(prepare, members, &reply).map_err(|reason| {
                Violation::ReplyInconsistent {
                    client: reply.client,
                    request: reply.request,
                    op: reply.op,
                    reason,
                }
            })?;
        }
        Ok(())
    }

    /// The end of a run, once the cluster should have converged: every reply verified, and
    /// each replica (given as its commit number) has committed, and been checked up to, every
    /// acknowledged op.
    pub fn converged(&self, commits: &[Op]) -> Result<(), String> {
        assert_eq!(commits.len(), self.checked.len());
        if let Some(reply) = self.replies_unverified.front() {
            return Err(format!(
                "the reply to client {:016x} request {} names op {}, which no replica committed",
                reply.client, reply.request, reply.op
            ));
        }
        for (replica, commit) in commits.iter().enumerate() {
            if *commit < self.acknowledged_op_max {
                return Err(format!(
                    "replica {replica} committed up to op {commit}, below the acknowledged op {}",
                    self.acknowledged_op_max
                ));
            }
            if self.checked[replica] != *commit {
                return Err(format!(
                    "replica {replica} committed up to op {commit} but holds headers only up to \
                     op {}",
                    self.checked[replica]
                ));
            }
        }
        Ok(())
    }
}

/// Operations that may legitimately commit twice for one (client, request): a noop has no
/// client, and a register retried after its first session was evicted (before the client heard
/// of either) registers again, for the same client id and request 0.
fn dedup_exempt(operation: u8) -> bool {
    operation == Operation::Noop as u8 || operation == Operation::Register as u8
}

/// One request of an `append_packed` prepare, as its body names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedMember {
    pub client: ClientId,
    pub request: u32,
    pub request_checksum: Checksum,
}

/// Whether `prepare` (whose body names `members` if it is packed and they could be read) is
/// what `reply` answers.
fn reply_matches(
    prepare: &Header,
    members: Option<&[PackedMember]>,
    reply: &ReplyRecord,
) -> Result<(), &'static str> {
    if prepare.operation == Operation::AppendPacked as u8 {
        let packable = [Operation::Append as u8, Operation::Register as u8];
        if !packable.contains(&reply.operation) {
            return Err("the packed prepare at its op holds appends and registers only");
        }
        let Some(members) = members else {
            return Ok(());
        };
        let Some(member) = members.iter().find(|member| member.client == reply.client) else {
            return Err("the packed prepare at its op holds no request of this client");
        };
        let operation = if member.request == 0 { Operation::Register } else { Operation::Append };
        if member.request != reply.request || reply.operation != operation as u8 {
            return Err("the packed prepare at its op holds another request of this client");
        }
        if member.request_checksum != reply.request_checksum {
            return Err("the packed prepare at its op has another request checksum");
        }
        return Ok(());
    }
    if prepare.client != reply.client {
        return Err("the prepare at its op belongs to another client");
    }
    if prepare.request != reply.request {
        return Err("the prepare at its op is another request");
    }
    if prepare.operation != reply.operation {
        return Err("the prepare at its op is another operation");
    }
    if views::Prepare::of(prepare).request_checksum() != reply.request_checksum {
        return Err("the prepare at its op has another request checksum");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vsr::header::ReplicaIndex;
    use crate::vsr::header::{Command, View};

    const CLUSTER: ClusterId = ClusterId(7);

    /// A prepare of `client`'s `request` at `op`, chained to `parent`.
    fn prepare(op: Op, parent: Checksum, client: ClientId, request: u32) -> Header {
        let mut header = Header::new(Command::Prepare, CLUSTER);
        header.op = op;
        header.parent = parent;
        header.client = client;
        header.request = request;
        header.operation = Operation::Append as u8;
        header.context = 0x1000 + u128::from(request);
        header.op_min = Op(1); // grid_blocks
        header.timestamp = op.get();
        header.set_checksum_body(&[]);
        header.set_checksum();
        header
    }

    /// A chain of `count` prepares after the root, one request each of client 9.
    fn chain(count: u64) -> Vec<Header> {
        let mut headers = vec![Header::root_prepare(CLUSTER)];
        for op in 1..=count {
            let parent = headers[op as usize - 1].checksum;
            headers.push(prepare(Op(op), parent, ClientId(9), op as u32));
        }
        headers
    }

    /// Feeds `replica`'s commits up to `commit_min` from `log`.
    fn commits(
        checker: &mut Checker,
        replica: usize,
        commit_min: Op,
        log: &[Header],
    ) -> Result<Op, Violation> {
        let header = |op: Op| log.get(op.get() as usize).copied();
        checker.replica_commits(replica, commit_min, Op(0), header, |_| None, |_, _| {})
    }

    fn reply_to(prepare: &Header) -> ReplyRecord {
        ReplyRecord {
            client: prepare.client,
            request: prepare.request,
            op: prepare.op,
            operation: prepare.operation,
            request_checksum: Checksum(prepare.context),
            body_checksum: Checksum(0xB0D1),
            view: View(0),
            replica: ReplicaIndex(0),
        }
    }

    #[test]
    fn replicas_that_commit_the_same_chain_pass() {
        // Goal: the checker accepts agreeing replicas, at different speeds, and their replies.
        let log = chain(10);
        let mut checker = Checker::new(CLUSTER, 3);
        assert_eq!(commits(&mut checker, 0, Op(10), &log), Ok(Op(10)));
        assert_eq!(commits(&mut checker, 1, Op(4), &log), Ok(Op(4)));
        assert_eq!(commits(&mut checker, 2, Op(0), &log), Ok(Op(0)));
        for prepare in &log[1..] {
            checker.reply(&reply_to(prepare)).unwrap();
            checker.acknowledged(&reply_to(prepare));
        }
        assert_eq!(checker.primary_head(0, Op(10)), Ok(()));
        assert!(checker.converged(&[Op(10), Op(4), Op(0)]).is_err());
        assert_eq!(commits(&mut checker, 1, Op(10), &log), Ok(Op(10)));
        assert_eq!(commits(&mut checker, 2, Op(10), &log), Ok(Op(10)));
        assert_eq!(checker.converged(&[Op(10), Op(10), Op(10)]), Ok(()));
    }

    #[test]
    fn divergent_commit_at_one_op_breaks_agreement() {
        // Goal: a second replica committing another prepare at an op is caught.
        let log = chain(5);
        let mut divergent = log.clone();
        divergent[3] = prepare(Op(3), log[2].checksum, ClientId(10), 1);
        let mut checker = Checker::new(CLUSTER, 2);
        commits(&mut checker, 0, Op(5), &log).unwrap();
        let result = commits(&mut checker, 1, Op(5), &divergent);
        assert!(matches!(result, Err(Violation::Agreement { replica: 1, op: Op(3), .. })));
    }

    #[test]
    fn commit_that_does_not_chain_breaks_the_prefix() {
        // Goal: the history grows only by a prepare whose parent is the previous op.
        let mut log = chain(4);
        log[4] = prepare(Op(4), Checksum(0xDEAD), ClientId(9), 4);
        let mut checker = Checker::new(CLUSTER, 1);
        let result = commits(&mut checker, 0, Op(4), &log);
        assert!(matches!(result, Err(Violation::Chain { replica: 0, op: Op(4), .. })));
        let mut checker = Checker::new(CLUSTER, 1);
        let mut misplaced = chain(4);
        misplaced[2] = misplaced[3];
        let result = commits(&mut checker, 0, Op(4), &misplaced);
        assert!(matches!(result, Err(Violation::HeaderOp { op: Op(2), header_op: Op(3), .. })));
    }

    #[test]
    fn commit_number_going_back_needs_a_restart() {
        // Goal: un-committing is a violation, except while a restarted replica replays; a
        // restarted replica that re-commits another prepare is caught.
        let log = chain(6);
        let mut checker = Checker::new(CLUSTER, 1);
        commits(&mut checker, 0, Op(6), &log).unwrap();
        let result = commits(&mut checker, 0, Op(3), &log);
        assert!(matches!(
            result,
            Err(Violation::CommitBackwards { commit: Op(3), checked: Op(6), .. })
        ));
        checker.replica_restarted(0);
        assert_eq!(commits(&mut checker, 0, Op(3), &log), Ok(Op(6)));
        let mut forked = log.clone();
        forked[4] = prepare(Op(4), log[3].checksum, ClientId(11), 1);
        let result = commits(&mut checker, 0, Op(4), &forked);
        assert!(matches!(result, Err(Violation::Agreement { op: Op(4), .. })));
    }

    #[test]
    fn request_committed_at_two_ops_breaks_dedup() {
        // Goal: one (client, request) at two ops is caught; a register may repeat.
        let mut log = chain(3);
        log[3] = prepare(Op(3), log[2].checksum, ClientId(9), 2);
        let mut checker = Checker::new(CLUSTER, 1);
        let result = commits(&mut checker, 0, Op(3), &log);
        let expected = Violation::RequestCommittedTwice {
            client: ClientId(9),
            request: 2,
            first: Op(2),
            second: Op(3),
        };
        assert_eq!(result, Err(expected));
        let mut registers = chain(2);
        for op in 1..=2u64 {
            let mut register = prepare(Op(op), registers[op as usize - 1].checksum, ClientId(9), 0);
            register.operation = Operation::Register as u8;
            register.set_checksum();
            registers[op as usize] = register;
        }
        let mut checker = Checker::new(CLUSTER, 1);
        assert_eq!(commits(&mut checker, 0, Op(2), &registers), Ok(Op(2)));
    }

    #[test]
    fn reply_must_match_the_prepare_at_its_op() {
        // Goal: a reply naming an op that holds another client's request is caught, whether
        // the reply comes before or after the commit.
        let log = chain(3);
        let mut checker = Checker::new(CLUSTER, 1);
        let mut reply = reply_to(&log[2]);
        reply.client = ClientId(77);
        checker.reply(&reply).unwrap();
        assert_eq!(checker.replies_unverified_count(), 1);
        let result = commits(&mut checker, 0, Op(3), &log);
        assert!(matches!(
            result,
            Err(Violation::ReplyInconsistent { client: ClientId(77), op: Op(2), .. })
        ));
        let mut checker = Checker::new(CLUSTER, 1);
        commits(&mut checker, 0, Op(3), &log).unwrap();
        let mut reply = reply_to(&log[3]);
        reply.request_checksum ^= 1;
        assert!(matches!(checker.reply(&reply), Err(Violation::ReplyInconsistent { .. })));
    }

    #[test]
    fn one_request_answered_two_ways_is_caught() {
        // Goal: a retry must get the reply the first attempt got.
        let log = chain(2);
        let mut checker = Checker::new(CLUSTER, 1);
        commits(&mut checker, 0, Op(2), &log).unwrap();
        checker.reply(&reply_to(&log[1])).unwrap();
        checker.reply(&reply_to(&log[1])).unwrap();
        let mut other = reply_to(&log[1]);
        other.body_checksum ^= 1;
        assert!(matches!(checker.reply(&other), Err(Violation::ReplyDiverged { .. })));
    }

    #[test]
    fn acknowledged_write_missing_from_the_primary_or_the_log_is_caught() {
        // Goal: an acknowledged op the primary no longer holds, or that no replica ever
        // committed, or that a replica has not reached at the end, fails the run.
        let log = chain(5);
        let mut checker = Checker::new(CLUSTER, 2);
        commits(&mut checker, 0, Op(5), &log).unwrap();
        checker.acknowledged(&reply_to(&log[5]));
        let result = checker.primary_head(0, Op(3));
        assert_eq!(
            result,
            Err(Violation::AcknowledgedWriteLost { replica: 0, op: Op(5), head: Op(3) })
        );
        commits(&mut checker, 1, Op(4), &log).unwrap();
        assert!(
            checker.converged(&[Op(5), Op(4)]).unwrap_err().contains("below the acknowledged op")
        );
        let mut never = reply_to(&log[5]);
        never.op = Op(6);
        never.request = 6;
        checker.reply(&never).unwrap();
        commits(&mut checker, 1, Op(5), &log).unwrap();
        assert!(
            checker.converged(&[Op(5), Op(5)]).unwrap_err().contains("which no replica committed")
        );
    }

    #[test]
    fn committed_timestamp_not_above_its_parent_is_caught() {
        // Goal: the history grows only by a prepare timestamped above its parent.
        let mut log = chain(4);
        let mut early = prepare(Op(4), log[3].checksum, ClientId(9), 4);
        early.timestamp = log[3].timestamp;
        early.set_checksum();
        log[4] = early;
        let mut checker = Checker::new(CLUSTER, 1);
        let result = commits(&mut checker, 0, Op(4), &log);
        let expected =
            Violation::TimestampBackwards { op: Op(4), timestamp: 3, parent_timestamp: 3 };
        assert_eq!(result, Err(expected));
    }

    #[test]
    fn checkpoint_moving_back_is_caught_unless_the_replica_was_reformatted() {
        // Goal: a replica's checkpoint never moves back, restarts included; a replica formatted
        // again (its data file lost) starts from none.
        let mut checker = Checker::new(CLUSTER, 2);
        assert_eq!(checker.replica_checkpoint(0, Op(48)), Ok(()));
        assert_eq!(checker.replica_checkpoint(0, Op(48)), Ok(()));
        checker.replica_restarted(0);
        let result = checker.replica_checkpoint(0, Op(0));
        let expected =
            Violation::CheckpointBackwards { replica: 0, checkpoint_op: Op(0), before: Op(48) };
        assert_eq!(result, Err(expected));
        checker.replica_reformatted(0);
        assert_eq!(checker.replica_checkpoint(0, Op(0)), Ok(()));
        assert_eq!(checker.replica_checkpoint(1, Op(96)), Ok(()));
    }
}
