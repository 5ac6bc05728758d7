//! Reads: served by any replica from committed state, without consensus. A read carries the
//! commit number it was served at; it is dropped while state sync replaces the event store,
//! and answered `busy` while every read slot is taken. A read_stream or read_log that asks to
//! wait (`wait_ms`) and has no event to return yet is parked until one commits or the wait
//! runs out (`read_park`, `reads_parked_wake`): how subscriptions follow a stream or the log.

use static_assertions::const_assert;

use super::{Destination, Replica, ReplyFields, Status};
use crate::constants::{READS_WAKE_PER_STEP_MAX, TICK_MS};
use crate::state_machine::ReadReply;
use crate::state_machine::types::{ReadLog, ReadStream};
use crate::vsr::header::views;
use crate::vsr::header::{ClientId, Command, Header, Op, Operation, READ_MODE_LINEARIZABLE, View};
use crate::vsr::message_pool::Message;
use crate::vsr::storage::Storage;

/// A read held until an event it asks for commits, or its wait runs out (`read_park`).
#[derive(Clone, Copy, Debug)]
pub(super) struct ParkedRead {
    header: Header,
    /// The read's body (a `ReadStream` or a `ReadLog`), `body_size` bytes.
    body: [u8; PARKED_BODY_SIZE],
    body_size: usize,
    deadline_tick: u64,
}

const PARKED_BODY_SIZE: usize = 24;

impl ParkedRead {
    fn new(header: &Header, body: &[u8], deadline_tick: u64) -> ParkedRead {
        assert!(body.len() <= PARKED_BODY_SIZE);
        let mut parked = ParkedRead {
            header: *header,
            body: [0; PARKED_BODY_SIZE],
            body_size: body.len(),
            deadline_tick,
        };
        parked.body[..body.len()].copy_from_slice(body);
        parked
    }
}

/// The entry of a table of held reads (one per client) for `client`'s: the one it holds, else
/// a free one, counted in the table's count of entries taken; `None` if the table is full.
fn client_entry<T>(
    (table, taken): (&[Option<T>], &mut usize),
    client: ClientId,
    client_of: impl Fn(&T) -> ClientId,
) -> Option<usize> {
    let held = |entry: &Option<T>| entry.as_ref().is_some_and(|entry| client_of(entry) == client);
    if let Some(index) = table.iter().position(held) {
        return Some(index);
    }
    let free = table.iter().position(Option::is_none)?;
    *taken += 1;
    Some(free)
}

/// A linearizable read waiting for `op`, prepared in `view` after it arrived, to commit.
#[derive(Clone, Copy, Debug)]
pub(super) struct LinearizableRead {
    parked: ParkedRead,
    op: Op,
    view: View,
}
const_assert!(size_of::<ReadStream>() <= PARKED_BODY_SIZE);
const_assert!(size_of::<ReadLog>() <= PARKED_BODY_SIZE);

impl Replica {
    pub(super) fn read_start<S: Storage>(&mut self, storage: &mut S, message: Message) {
        let header = *message.header();
        assert_eq!(header.command(), Some(Command::Request));
        assert!(self.status.is_open());
        if self.sync.active() {
            // The event store is being replaced by a newer checkpoint's.
            self.metrics.requests_dropped += 1;
            return;
        }
        if header.commit > self.commit_min {
            // The client has seen a newer commit than this replica executed; it retries.
            self.metrics.requests_dropped += 1;
            return;
        }
        if views::Request::of(&header).read_mode() == READ_MODE_LINEARIZABLE {
            return self.read_linearizable_start(storage, &header, message.body());
        }
        self.read_begin(storage, &header, message.body());
    }

    /// Parks the read if it waits for an event (`read_park`), else serves it.
    fn read_begin<S: Storage>(&mut self, storage: &mut S, header: &Header, body: &[u8]) {
        let operation = header.operation().expect("accept checked the operation");
        assert!(operation.is_read());
        if let Some(wait_ms) = self.state_machine.read_wait(operation, body)
            && self.read_park(header, body, wait_ms)
        {
            return;
        }
        self.read_serve(storage, header, body);
    }

    /// A linearizable read: only the primary of a view that has started answers it, once an op
    /// it prepared after the read arrived has committed. That commit shows a quorum still
    /// followed it then (no newer view had started), and it covers every op its log held when
    /// the read arrived, so every write acknowledged before the read was sent (ReadIndex, with
    /// the op as the heartbeat). With nothing else to prepare, it prepares a noop for it.
    fn read_linearizable_start<S: Storage>(
        &mut self,
        storage: &mut S,
        header: &Header,
        body: &[u8],
    ) {
        if !self.is_primary() || self.status != Status::Normal {
            // The pong names the primary.
            return self.send_pong_client(header);
        }
        if body.len() > PARKED_BODY_SIZE {
            // No read has so large a body: the event store answers body_invalid.
            return self.read_serve(storage, header, body);
        }
        let table = (&self.reads_linearizable[..], &mut self.reads_linearizable_count);
        let Some(index) = client_entry(table, header.client, |read| read.parked.header.client)
        else {
            return self.send_busy(header);
        };
        let parked = ParkedRead::new(header, body, 0);
        let op = self.head.op() + 1;
        self.reads_linearizable[index] = Some(LinearizableRead { parked, op, view: self.view });
        self.read_linearizable_noop(storage);
    }

    /// Prepares a noop for the linearizable reads that wait for an op to be prepared, if
    /// nothing else is queued or in the pipeline: one at a time, so that reads arriving while
    /// it is replicated share the next one, and a flood of reads makes one op per round trip.
    fn read_linearizable_noop<S: Storage>(&mut self, storage: &mut S) {
        let idle = self.request_queue.is_empty() && self.pipeline.is_empty();
        if !idle || !self.is_primary() || self.status != Status::Normal {
            return;
        }
        let head = self.head.op();
        let waiting = |read: &Option<LinearizableRead>| read.is_some_and(|read| read.op > head);
        if self.reads_linearizable.iter().any(waiting) {
            let noop = self.noop_request();
            self.request_queue.push_back(noop);
            self.metrics.reads_linearizable_noops += 1;
            self.request_queue_drain(storage);
        }
    }

    /// A request of no client for a noop op.
    fn noop_request(&mut self) -> Message {
        let mut message = self.pool.get_small();
        let header = message.header_mut();
        *header = Header::new(Command::Request, self.config.cluster);
        header.operation = Operation::Noop as u8;
        header.set_checksum_body(&[]);
        header.set_checksum();
        message
    }

    /// Answers the linearizable reads whose op has committed; drops those of a view this
    /// replica no longer leads (their clients ask the new primary).
    pub(super) fn reads_linearizable_serve<S: Storage>(&mut self, storage: &mut S) {
        if self.reads_linearizable_count == 0 {
            return;
        }
        let leading = self.is_primary() && self.status == Status::Normal;
        let mut served = 0;
        for index in 0..self.reads_linearizable.len() {
            let Some(read) = self.reads_linearizable[index] else { continue };
            let current = leading && read.view == self.view;
            let slot_free = self.reads.iter().any(Option::is_none);
            let later = served == READS_WAKE_PER_STEP_MAX || !slot_free;
            if current && (self.commit_min < read.op || later) {
                continue;
            }
            self.reads_linearizable[index] = None;
            self.reads_linearizable_count -= 1;
            if !current {
                self.metrics.reads_linearizable_dropped += 1;
                continue;
            }
            self.metrics.reads_linearizable += 1;
            served += 1;
            let parked = read.parked;
            self.read_begin(storage, &parked.header, &parked.body[..parked.body_size]);
        }
        self.read_linearizable_noop(storage);
    }

    /// Holds a read that has no event to return yet, one per client (a client's newer read
    /// replaces its older one); false if the table is full (the read is answered at once).
    fn read_park(&mut self, header: &Header, body: &[u8], wait_ms: u32) -> bool {
        let table = (&self.reads_parked[..], &mut self.reads_parked_count);
        let Some(index) = client_entry(table, header.client, |parked| parked.header.client) else {
            self.metrics.reads_parked_full += 1;
            return false;
        };
        let deadline_tick = self.ticks + u64::from(wait_ms).div_ceil(TICK_MS);
        self.reads_parked[index] = Some(ParkedRead::new(header, body, deadline_tick));
        self.metrics.reads_parked += 1;
        true
    }

    /// Answers the parked reads that now have an event to return (after commits, or a state
    /// sync), or whose wait ran out. Cheap when nothing committed: a read wakes only once the
    /// log's next position or the number of streams moved.
    pub(super) fn reads_parked_wake<S: Storage>(&mut self, storage: &mut S) {
        if self.reads_parked_count == 0 || !self.status.is_open() || self.sync.active() {
            return;
        }
        let seen = (self.state_machine.position_next(), self.state_machine.stream_count());
        let moved = seen != self.reads_parked_seen;
        let mut served = 0;
        for index in 0..self.reads_parked.len() {
            let Some(parked) = self.reads_parked[index] else { continue };
            let expired = self.ticks >= parked.deadline_tick;
            let body = &parked.body[..parked.body_size];
            let operation = parked.header.operation().expect("a parked read");
            let ready = moved && self.state_machine.read_wait(operation, body).is_none();
            if !expired && !ready {
                continue;
            }
            if served == READS_WAKE_PER_STEP_MAX || self.reads.iter().all(Option::is_some) {
                // The rest wake on a later tick (`seen` is left as it was, so that those ready
                // are looked at again).
                return;
            }
            served += 1;
            self.reads_parked[index] = None;
            self.reads_parked_count -= 1;
            if expired {
                self.metrics.reads_parked_expired += 1;
            } else {
                self.metrics.reads_parked_woken += 1;
            }
            self.read_serve(storage, &parked.header, body);
        }
        self.reads_parked_seen = seen;
    }

    /// Starts serving a read from committed state; a malformed body gets a body_invalid
    /// result from the event store.
    fn read_serve<S: Storage>(&mut self, storage: &mut S, header: &Header, body: &[u8]) {
        let operation = header.operation().expect("accept checked the operation");
        let Some(free) = self.reads.iter().position(Option::is_none) else {
            return self.send_busy(header);
        };
        let reply = self.pool.get();
        match self.state_machine.read_start(storage, operation, body, reply) {
            Ok(read) => self.reads[free] = Some((read, *header)),
            Err(_) => self.send_busy(header),
        }
        self.state_machine_progress_reads();
    }

    pub(super) fn state_machine_progress_reads(&mut self) {
        while let Some(read) = self.state_machine.poll_read() {
            self.read_complete(read);
        }
        self.grid_fault_take();
    }

    pub(super) fn read_complete(&mut self, read: ReadReply) {
        let ReadReply { id: read, message: mut reply, body_size } = read;
        let Some(index) =
            self.reads.iter().position(|entry| matches!(entry, Some((id, _)) if *id == read))
        else {
            panic!("read completed that was never started");
        };
        let (_, request) = self.reads[index].take().expect("read in flight");
        // Paired with `read_start`: a read id is in flight once, for a read request.
        assert!(self.reads.iter().flatten().all(|(id, _)| *id != read));
        assert!(request.operation().is_some_and(|operation| operation.is_read()));
        let fields = ReplyFields {
            op: Op(0),
            commit: self.commit_min,
            timestamp: 0,
            client: request.client,
            request: request.request,
            operation: request.operation,
            request_checksum: request.checksum,
        };
        self.reply_header_write(&mut reply, &fields, body_size);
        assert_eq!(reply.header().request, request.request);
        self.metrics.reads_served += 1;
        self.send(Destination::Client(request.client), reply);
    }
}
