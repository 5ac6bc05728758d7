//! Reads: served by the primary from committed state, without consensus. A read carries the
//! commit number it was served at; it is dropped while state sync replaces the event store,
//! and answered `busy` while every read slot is taken.

use super::{Destination, Replica, ReplyFields};
use crate::state_machine::ReadReply;
use crate::vsr::header::{Command, Op};
use crate::vsr::message_pool::Message;
use crate::vsr::storage::Storage;

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
        // A malformed read body gets a body_invalid result from the event store.
        let operation = header.operation().expect("accept checked the operation");
        assert!(operation.is_read());
        let Some(free) = self.reads.iter().position(Option::is_none) else {
            return self.send_busy(&header);
        };
        let reply = self.pool.get();
        match self.state_machine.read_start(storage, operation, message.body(), reply) {
            Ok(read) => self.reads[free] = Some((read, header)),
            Err(_) => self.send_busy(&header),
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
