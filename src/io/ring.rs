//! The io_uring event loop: one ring, a fixed table of operation slots allocated at init, and a
//! queue of finished operations that the driver hands back to their owners.
//!
//! An operation lives in a slot from `submit` until the owner takes it back with
//! `pop_completed`; the slot keeps the operation's buffer handle (`Message`) for that whole time,
//! so the memory the kernel reads or fills stays alive. `user_data` carries the slot index and
//! the slot's generation, which changes every time the slot is reused, so a completion for an
//! earlier occupant cannot be mistaken for the current one. Completions are copied out of the
//! ring into a fixed array first and processed afterwards: processing may queue resubmissions
//! (short transfers, `EINTR`, `EAGAIN`) but never recurses into the ring. Nothing allocates after
//! `Io::new`.
//!
//! Submission is lazy: `submit` only records the operation; `run` pushes entries to the ring,
//! enters the kernel once for the whole batch and, depending on its `Wait`, blocks for a
//! completion or a timeout (`IORING_ENTER_EXT_ARG`, so the replica loop can tick every 10 ms
//! without a timeout entry in the ring).
//!
//! One ring serves the data file and the sockets. Disk operations (`Read`, `Write`, `Sync`)
//! belong to `IoStorage`, network operations (`Accept`, `Connect`, `Receive`, `Send`, `Close`)
//! to the `MessageBus`; the driver routes each completion by `Operation::is_network`.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, squeue, types};

use crate::constants::{IO_COMPLETIONS_BATCH_MAX, IO_ENTRIES, IO_OPERATIONS_MAX};
use crate::vsr::message_pool::Message;
use crate::vsr::storage::{IoError, IoRequest, IoToken};

/// The granularity of an `O_DIRECT` transfer on the data file's filesystem (statx DIOALIGN
/// reports 512 here). A short read that stops off this boundary can only have met the end of
/// the file.
const DIRECT_IO_ALIGNMENT: usize = 512;

/// Identifies a network operation to the connection that owns it: opaque to the ring, returned
/// unchanged in the completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionToken {
    pub index: u32,
    pub generation: u32,
}

/// A socket address in the kernel's layout, kept inside the operation so that it stays in place
/// until a `Connect` completes.
#[derive(Clone, Copy)]
pub struct SocketAddress {
    pub storage: libc::sockaddr_storage,
    pub length: libc::socklen_t,
}

impl std::fmt::Debug for SocketAddress {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("SocketAddress").field("length", &self.length).finish()
    }
}

/// What an operation does, and everything it needs until it completes.
#[derive(Debug)]
pub enum Operation {
    /// Reads `request.length` bytes at `request.offset` into the buffer at
    /// `request.buffer_offset`.
    Read { fd: RawFd, request: IoRequest, buffer: Message },
    /// Writes the buffer range to the file; with `durable`, the write carries `RWF_DSYNC` and
    /// completes only once it is on stable storage.
    Write { fd: RawFd, request: IoRequest, buffer: Message, durable: bool },
    /// `fdatasync` (`data_only`) or `fsync` of the file.
    Sync { fd: RawFd, token: IoToken, data_only: bool },
    /// `fdatasync` of the file for a storage request of kind `Sync`, whose buffer rides along
    /// untouched so that the completion hands it back like any other.
    Flush { fd: RawFd, request: IoRequest, buffer: Message },
    /// Accepts one connection on the listening socket `fd`; the result is the new descriptor
    /// (opened with `SOCK_CLOEXEC`).
    Accept { fd: RawFd },
    /// Connects the socket `fd` to `address`.
    Connect { fd: RawFd, token: ConnectionToken, address: SocketAddress },
    /// Receives at most `length` bytes into the buffer at `offset`. Completes on any bytes;
    /// `Ok(0)` means the peer closed its side.
    Receive { fd: RawFd, token: ConnectionToken, buffer: Message, offset: usize, length: usize },
    /// Sends the buffer's `offset..offset + length` with `MSG_NOSIGNAL`, resubmitting the rest
    /// after a short send, so that it completes with all of it or an error.
    Send { fd: RawFd, token: ConnectionToken, buffer: Message, offset: usize, length: usize },
    /// Closes the descriptor.
    Close { fd: RawFd, token: ConnectionToken },
}

impl Operation {
    /// Whether the message bus owns this operation (the storage owns the rest).
    pub fn is_network(&self) -> bool {
        match self {
            Operation::Read { .. }
            | Operation::Write { .. }
            | Operation::Sync { .. }
            | Operation::Flush { .. } => false,
            Operation::Accept { .. }
            | Operation::Connect { .. }
            | Operation::Receive { .. }
            | Operation::Send { .. }
            | Operation::Close { .. } => true,
        }
    }
}

/// A finished operation, handed back with everything it held.
#[derive(Debug)]
pub struct Completed {
    pub operation: Operation,
    /// Bytes transferred (the whole request for a read, write or send, what arrived for a
    /// receive, 0 for a sync, connect or close), the new descriptor of an accept, or the error.
    pub result: Result<usize, IoError>,
    /// From `submit` to `pop_completed`: what the operation cost its owner (for the metrics).
    pub duration: Duration,
}

/// How long `Io::run` may block once its submissions are in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Submit and collect what has already completed.
    NonBlocking,
    /// Block until at least one operation has completed, unless none is in flight.
    UntilCompletion,
    /// Block until at least one operation has completed or `timeout_ns` has passed, even when
    /// nothing is in flight (the replica loop's tick).
    Timeout { timeout_ns: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free,
    /// Waiting for room in the submission queue.
    Queued,
    /// In the submission queue or in the kernel.
    Submitted,
    /// Finished, waiting for `pop_completed`.
    Completed,
}

struct Slot {
    generation: u32,
    state: SlotState,
    operation: Option<Operation>,
    transferred_bytes: usize,
    result: Result<usize, IoError>,
    submitted: Instant,
}

#[derive(Clone, Copy)]
struct CompletionRecord {
    user_data: u64,
    result: i32,
}

/// What a completion entry means for its operation.
enum Progress {
    Resubmit,
    Finished(Result<usize, IoError>),
}

/// How `enter` may block.
enum EnterWait {
    None,
    Forever,
    Timeout(Duration),
}

/// The event loop. See the module documentation.
pub struct Io {
    ring: IoUring,
    slots: Box<[Slot]>,
    slots_free: Vec<u32>,
    /// Slots waiting for a submission queue entry, in order.
    queued: VecDeque<u32>,
    /// Slots finished and not yet popped, in completion order.
    completed: VecDeque<u32>,
    batch: [CompletionRecord; IO_COMPLETIONS_BATCH_MAX],
    /// Slots queued or submitted.
    in_flight_count: usize,
}

impl Io {
    /// Sets up the ring and the slot table: every allocation the loop will ever make.
    pub fn new() -> std::io::Result<Io> {
        // Cooperative task work: the kernel runs a completion's task work when this thread next
        // enters it (every turn of the loop does), instead of interrupting the thread for it,
        // which under network load cost more than the work itself.
        let ring = IoUring::builder().setup_coop_taskrun().build(IO_ENTRIES)?;
        if !ring.params().is_feature_ext_arg() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "io_uring lacks IORING_FEAT_EXT_ARG: Linux 5.11 or newer is required",
            ));
        }
        let mut slots = Vec::with_capacity(IO_OPERATIONS_MAX);
        for _ in 0..IO_OPERATIONS_MAX {
            slots.push(Slot {
                generation: 0,
                state: SlotState::Free,
                operation: None,
                transferred_bytes: 0,
                result: Ok(0),
                submitted: Instant::now(),
            });
        }
        // Popped from the back: hand out low indices first, which reads better in traces.
        let slots_free: Vec<u32> = (0..IO_OPERATIONS_MAX as u32).rev().collect();
        assert_eq!(slots_free.len(), IO_OPERATIONS_MAX);
        Ok(Io {
            ring,
            slots: slots.into_boxed_slice(),
            slots_free,
            queued: VecDeque::with_capacity(IO_OPERATIONS_MAX),
            completed: VecDeque::with_capacity(IO_OPERATIONS_MAX),
            batch: [CompletionRecord { user_data: 0, result: 0 }; IO_COMPLETIONS_BATCH_MAX],
            in_flight_count: 0,
        })
    }

    /// Slots free for new operations. Owners size their concurrency so that the sum of their
    /// limits fits `IO_OPERATIONS_MAX`; running out is a bug in that accounting.
    pub fn operations_free(&self) -> usize {
        self.slots_free.len()
    }

    /// Operations submitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight_count
    }

    /// Operations finished and waiting for `pop_completed`.
    pub fn completed_count(&self) -> usize {
        self.completed.len()
    }

    /// Records `operation`; the next `run` hands it to the kernel.
    pub fn submit(&mut self, operation: Operation) {
        operation_assert_valid(&operation);
        let index = self.slots_free.pop().expect("io operation slots exhausted");
        let slot = &mut self.slots[index as usize];
        assert_eq!(slot.state, SlotState::Free);
        assert!(slot.operation.is_none());
        slot.generation = slot.generation.wrapping_add(1);
        slot.state = SlotState::Queued;
        slot.operation = Some(operation);
        slot.transferred_bytes = 0;
        slot.result = Ok(0);
        slot.submitted = Instant::now();
        assert!(self.queued.len() < self.queued.capacity());
        self.queued.push_back(index);
        self.in_flight_count += 1;
    }

    /// The oldest finished operation, with its result; frees its slot.
    pub fn pop_completed(&mut self) -> Option<Completed> {
        let index = self.completed.pop_front()?;
        let slot = &mut self.slots[index as usize];
        assert_eq!(slot.state, SlotState::Completed);
        let operation = slot.operation.take().expect("a completed slot holds its operation");
        slot.state = SlotState::Free;
        assert!(self.slots_free.len() < IO_OPERATIONS_MAX);
        self.slots_free.push(index);
        Some(Completed { operation, result: slot.result, duration: slot.submitted.elapsed() })
    }

    /// Submits every recorded operation, waits as `wait` allows, and moves finished operations
    /// to the completed queue. Returns with nothing left unsubmitted.
    pub fn run(&mut self, wait: Wait) {
        let deadline = match wait {
            Wait::Timeout { timeout_ns } => Some(Instant::now() + Duration::from_nanos(timeout_ns)),
            Wait::NonBlocking | Wait::UntilCompletion => None,
        };
        loop {
            self.fill_submission_queue();
            let enter_wait = self.enter_wait(wait, deadline);
            self.enter(enter_wait);
            self.reap();
            let submitted_all = self.queued.is_empty() && self.ring.submission().is_empty();
            let satisfied = match wait {
                Wait::NonBlocking => true,
                Wait::UntilCompletion => !self.completed.is_empty() || self.in_flight_count == 0,
                Wait::Timeout { .. } => {
                    !self.completed.is_empty()
                        || Instant::now() >= deadline.expect("a timeout has a deadline")
                }
            };
            if submitted_all && satisfied {
                break;
            }
        }
    }

    /// Blocks only when there is nothing else to do: no completion to hand out and every
    /// recorded operation in the submission queue.
    fn enter_wait(&mut self, wait: Wait, deadline: Option<Instant>) -> EnterWait {
        if !self.completed.is_empty() || !self.queued.is_empty() {
            return EnterWait::None;
        }
        match wait {
            Wait::NonBlocking => EnterWait::None,
            Wait::UntilCompletion if self.in_flight_count == 0 => EnterWait::None,
            Wait::UntilCompletion => EnterWait::Forever,
            Wait::Timeout { .. } => {
                let deadline = deadline.expect("a timeout has a deadline");
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() { EnterWait::None } else { EnterWait::Timeout(remaining) }
            }
        }
    }

    /// Pushes queued operations into the submission queue until it is full.
    fn fill_submission_queue(&mut self) {
        let mut submission = self.ring.submission();
        while let Some(&index) = self.queued.front() {
            if submission.is_full() {
                break;
            }
            let slot = &mut self.slots[index as usize];
            assert_eq!(slot.state, SlotState::Queued);
            let entry = slot_entry(slot).user_data(user_data(index, slot.generation));
            // SAFETY: the entry points into the `Message` held by this slot, at an offset and
            // length checked against the buffer at `submit`, or (a connect) at the address
            // stored in the slot's operation, inside the boxed slot table, which never moves.
            // The slot keeps both (and the heap memory behind the handle, which does not move)
            // until the completion is reaped: the operation is only taken out in
            // `pop_completed`, after its final completion, and `Drop for Io` waits for every
            // operation in flight. The buffer of a read or receive has no other handle
            // (asserted at `submit`), so nothing else reads or writes it meanwhile.
            let pushed = unsafe { submission.push(&entry) };
            assert!(pushed.is_ok(), "the submission queue was checked for room");
            slot.state = SlotState::Submitted;
            self.queued.pop_front();
        }
    }

    /// One `io_uring_enter`: submits the submission queue and maybe waits for one completion.
    fn enter(&mut self, wait: EnterWait) {
        let result = match wait {
            EnterWait::None => self.ring.submit(),
            EnterWait::Forever => self.ring.submit_and_wait(1),
            EnterWait::Timeout(duration) => {
                let timespec = types::Timespec::from(duration);
                let arguments = types::SubmitArgs::new().timespec(&timespec);
                self.ring.submitter().submit_with_args(1, &arguments)
            }
        };
        if let Err(error) = result {
            match error.raw_os_error() {
                // The timeout passed, or a signal arrived: entries were still submitted.
                Some(libc::ETIME) | Some(libc::EINTR) => {}
                // The completion queue is overcommitted or the kernel is short of memory: the
                // caller reaps completions and enters again.
                Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
                _ => panic!("io_uring_enter failed: {error}"),
            }
        }
    }

    /// Drains the completion queue in batches and processes each batch.
    fn reap(&mut self) {
        loop {
            let count = self.drain_completion_queue();
            for position in 0..count {
                let record = self.batch[position];
                self.complete(record);
            }
            if count < IO_COMPLETIONS_BATCH_MAX {
                break;
            }
        }
    }

    /// Copies up to a batch of completion entries out of the ring, freeing their ring space.
    fn drain_completion_queue(&mut self) -> usize {
        let mut count = 0;
        for entry in self.ring.completion().take(IO_COMPLETIONS_BATCH_MAX) {
            self.batch[count] =
                CompletionRecord { user_data: entry.user_data(), result: entry.result() };
            count += 1;
        }
        assert!(count <= IO_COMPLETIONS_BATCH_MAX);
        count
    }

    fn complete(&mut self, record: CompletionRecord) {
        if record.user_data == CANCEL_USER_DATA {
            // The result of a cancellation itself: the cancelled operation completes on its own.
            return;
        }
        let index = (record.user_data & u64::from(u32::MAX)) as u32;
        let generation = (record.user_data >> 32) as u32;
        assert!((index as usize) < self.slots.len(), "completion for no slot");
        let slot = &mut self.slots[index as usize];
        assert_eq!(slot.generation, generation, "stale completion for slot {index}");
        assert_eq!(slot.state, SlotState::Submitted);
        match slot_progress(slot, record.result) {
            Progress::Resubmit => {
                slot.state = SlotState::Queued;
                assert!(self.queued.len() < self.queued.capacity());
                self.queued.push_back(index);
            }
            Progress::Finished(result) => {
                slot.state = SlotState::Completed;
                slot.result = result;
                assert!(self.completed.len() < self.completed.capacity());
                self.completed.push_back(index);
                self.in_flight_count -= 1;
            }
        }
    }
}

impl Io {
    /// Asks the kernel to cancel every network operation it holds (used only by `drop`: the bus
    /// ends its own operations with `shutdown`). Each cancelled operation still completes,
    /// with `ECANCELED`.
    fn cancel_network_operations(&mut self) {
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            // A close finishes on its own, and must: cancelling it could leak the descriptor.
            let parked = slot.operation.as_ref().is_some_and(|operation| {
                operation.is_network() && !matches!(operation, Operation::Close { .. })
            });
            if slot.state != SlotState::Submitted || !parked {
                continue;
            }
            let target = user_data(index as u32, slot.generation);
            let entry = opcode::AsyncCancel::new(target).build().user_data(CANCEL_USER_DATA);
            if self.ring.submission().is_full() {
                self.enter(EnterWait::None);
            }
            // SAFETY: a cancellation entry points to no memory; it names its target only by
            // `user_data`.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            assert!(pushed.is_ok(), "the submission queue was checked for room");
        }
        self.enter(EnterWait::None);
    }
}

impl Drop for Io {
    /// The kernel may still be reading or filling buffers that the slots keep alive: wait for
    /// every operation before the buffers go back to their pool. A network operation may wait
    /// forever (a receive from a silent peer, an accept), so each one in the kernel is
    /// cancelled first.
    fn drop(&mut self) {
        while self.in_flight_count > 0 || !self.completed.is_empty() {
            self.run(Wait::NonBlocking);
            self.cancel_network_operations();
            self.run(Wait::UntilCompletion);
            while self.pop_completed().is_some() {}
        }
    }
}

/// The `user_data` of cancellation entries: no slot has index `u32::MAX`.
const CANCEL_USER_DATA: u64 = u64::MAX;

fn user_data(index: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(index)
}

fn operation_assert_valid(operation: &Operation) {
    match operation {
        Operation::Read { fd, request, buffer } | Operation::Write { fd, request, buffer, .. } => {
            assert!(*fd >= 0);
            request.assert_valid(buffer);
            assert!(request.length <= u32::MAX as usize);
            let is_read = matches!(operation, Operation::Read { .. });
            assert_eq!(is_read, request.kind == crate::vsr::storage::IoKind::Read);
        }
        Operation::Flush { fd, request, buffer } => {
            assert!(*fd >= 0);
            request.assert_valid(buffer);
            assert_eq!(request.kind, crate::vsr::storage::IoKind::Sync);
        }
        Operation::Receive { fd, buffer, offset, length, .. }
        | Operation::Send { fd, buffer, offset, length, .. } => {
            assert!(*fd >= 0);
            assert!(*length > 0);
            assert!(*length <= u32::MAX as usize);
            assert!(offset + length <= buffer.buffer().len());
            if matches!(operation, Operation::Receive { .. }) {
                assert_eq!(buffer.references(), 1, "a receive needs its buffer unshared");
            }
        }
        Operation::Connect { fd, address, .. } => {
            assert!(*fd >= 0);
            assert!(address.length as usize <= std::mem::size_of::<libc::sockaddr_storage>());
        }
        Operation::Sync { fd, .. } | Operation::Accept { fd } | Operation::Close { fd, .. } => {
            assert!(*fd >= 0)
        }
    }
}

/// The submission entry for the rest of the slot's operation (all of it on first submission).
fn slot_entry(slot: &mut Slot) -> squeue::Entry {
    let transferred_bytes = slot.transferred_bytes;
    match slot.operation.as_mut().expect("a submitted slot holds its operation") {
        Operation::Read { fd, request, buffer } => {
            assert!(transferred_bytes < request.length);
            let start = request.buffer_offset + transferred_bytes;
            let length = request.length - transferred_bytes;
            let target = &mut buffer.buffer_mut_unique()[start..start + length];
            let offset = request.offset + transferred_bytes as u64;
            opcode::Read::new(types::Fd(*fd), target.as_mut_ptr(), length as u32)
                .offset(offset)
                .build()
        }
        Operation::Write { fd, request, buffer, durable } => {
            assert!(transferred_bytes < request.length);
            let start = request.buffer_offset + transferred_bytes;
            let length = request.length - transferred_bytes;
            let source = &buffer.buffer()[start..start + length];
            let offset = request.offset + transferred_bytes as u64;
            let flags = if *durable { libc::RWF_DSYNC } else { 0 };
            opcode::Write::new(types::Fd(*fd), source.as_ptr(), length as u32)
                .offset(offset)
                .rw_flags(flags)
                .build()
        }
        Operation::Sync { fd, data_only, .. } => {
            let flags =
                if *data_only { types::FsyncFlags::DATASYNC } else { types::FsyncFlags::empty() };
            opcode::Fsync::new(types::Fd(*fd)).flags(flags).build()
        }
        Operation::Flush { fd, .. } => {
            opcode::Fsync::new(types::Fd(*fd)).flags(types::FsyncFlags::DATASYNC).build()
        }
        operation => network_entry(operation, transferred_bytes),
    }
}

/// The submission entry for a network operation (the rest of a send).
fn network_entry(operation: &mut Operation, transferred_bytes: usize) -> squeue::Entry {
    match operation {
        Operation::Accept { fd } => {
            opcode::Accept::new(types::Fd(*fd), std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        }
        Operation::Connect { fd, address, .. } => {
            let pointer = (&raw const address.storage).cast::<libc::sockaddr>();
            opcode::Connect::new(types::Fd(*fd), pointer, address.length).build()
        }
        Operation::Receive { fd, buffer, offset, length, .. } => {
            assert_eq!(transferred_bytes, 0, "a receive completes on its first bytes");
            let target = &mut buffer.buffer_mut_unique()[*offset..*offset + *length];
            opcode::Recv::new(types::Fd(*fd), target.as_mut_ptr(), *length as u32).build()
        }
        Operation::Send { fd, buffer, offset, length, .. } => {
            assert!(transferred_bytes < *length);
            let start = *offset + transferred_bytes;
            let source = &buffer.buffer()[start..*offset + *length];
            opcode::Send::new(types::Fd(*fd), source.as_ptr(), source.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        }
        Operation::Close { fd, .. } => opcode::Close::new(types::Fd(*fd)).build(),
        Operation::Read { .. }
        | Operation::Write { .. }
        | Operation::Sync { .. }
        | Operation::Flush { .. } => {
            unreachable!("disk operations are built by slot_entry")
        }
    }
}

/// Applies one completion entry's result to the slot's operation.
fn slot_progress(slot: &mut Slot, result: i32) -> Progress {
    let operation = slot.operation.as_ref().expect("a slot holds its operation");
    if let Operation::Close { .. } = operation {
        // The descriptor is released even when close reports an error (EINTR included):
        // retrying could close a descriptor that was reused meanwhile.
        return Progress::Finished(Ok(0));
    }
    if result < 0 {
        let errno = -result;
        if errno == libc::EINTR || errno == libc::EAGAIN {
            return Progress::Resubmit;
        }
        return Progress::Finished(Err(IoError::Errno(errno)));
    }
    let (is_read, length) = match operation {
        Operation::Read { request, .. } => (true, request.length),
        Operation::Write { request, .. } => (false, request.length),
        Operation::Send { length, .. } => (false, *length),
        Operation::Sync { .. } | Operation::Flush { .. } | Operation::Connect { .. } => {
            return Progress::Finished(Ok(0));
        }
        Operation::Accept { .. } | Operation::Receive { .. } => {
            return Progress::Finished(Ok(result as usize));
        }
        Operation::Close { .. } => unreachable!("handled above"),
    };
    let is_send = matches!(operation, Operation::Send { .. });
    let transferred_bytes = result as usize;
    if transferred_bytes == 0 {
        // A read of nothing is the end of the file. A write or send of nothing would make no
        // progress however often it is retried: report it as the error it must be.
        let error = if is_read {
            IoError::EndOfFile
        } else if is_send {
            IoError::Errno(libc::EPIPE)
        } else {
            IoError::Errno(libc::EIO)
        };
        return Progress::Finished(Err(error));
    }
    slot.transferred_bytes += transferred_bytes;
    assert!(slot.transferred_bytes <= length, "the kernel transferred more than asked");
    if slot.transferred_bytes == length {
        Progress::Finished(Ok(length))
    } else if is_read && !slot.transferred_bytes.is_multiple_of(DIRECT_IO_ALIGNMENT) {
        Progress::Finished(Err(IoError::EndOfFile))
    } else {
        Progress::Resubmit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::SECTOR_SIZE;
    use crate::io::scratch::{ScratchDirectory, request};
    use crate::io::socket;
    use crate::vsr::message_pool::MessagePool;
    use crate::vsr::storage::{IoKind, IoOwner};
    use std::os::fd::AsRawFd;

    #[test]
    fn timeout_wait_returns_after_the_timeout_with_nothing_in_flight() {
        // Goal: the tick wait sleeps for its timeout (ETIME is not an error) and returns.
        let mut io = Io::new().unwrap();
        let start = Instant::now();
        io.run(Wait::Timeout { timeout_ns: 10_000_000 });
        assert!(start.elapsed() >= Duration::from_millis(9));
        assert_eq!(io.completed_count(), 0);
        io.run(Wait::UntilCompletion);
        io.run(Wait::NonBlocking);
    }

    #[test]
    fn more_operations_than_submission_entries_all_complete() {
        // Goal: with more operations recorded than the submission queue holds, `run` submits
        // them in rounds, each completes exactly once, and every slot is reused afterwards.
        let scratch = ScratchDirectory::new("ring-many");
        let path = scratch.path.join("file");
        let count = IO_ENTRIES as usize + 44;
        let file = std::fs::File::create(&path).unwrap();
        file.set_len((count * SECTOR_SIZE) as u64).unwrap();
        let pool = MessagePool::new(count, SECTOR_SIZE);
        let mut io = Io::new().unwrap();
        for index in 0..count {
            let mut buffer = pool.get();
            buffer.buffer_mut_unique().fill(index as u8);
            let offset = (index * SECTOR_SIZE) as u64;
            let request = request(IoKind::Write, index as u32, offset, SECTOR_SIZE);
            io.submit(Operation::Write { fd: file.as_raw_fd(), request, buffer, durable: false });
        }
        let mut seen = vec![false; count];
        while io.in_flight() > 0 || io.completed_count() > 0 {
            io.run(Wait::UntilCompletion);
            while let Some(completed) = io.pop_completed() {
                assert_eq!(completed.result, Ok(SECTOR_SIZE));
                let Operation::Write { request, .. } = completed.operation else { panic!() };
                assert!(!seen[request.token.index as usize]);
                seen[request.token.index as usize] = true;
            }
        }
        assert!(seen.iter().all(|seen| *seen));
        assert_eq!(io.operations_free(), IO_OPERATIONS_MAX);
        let bytes = std::fs::read(&path).unwrap();
        for (index, sector) in bytes.chunks_exact(SECTOR_SIZE).enumerate() {
            assert!(sector.iter().all(|byte| *byte == index as u8));
        }
    }

    #[test]
    fn sync_completes_and_bad_fd_surfaces_as_errno() {
        // Goal: fsync and fdatasync complete with Ok(0); an OS error (a closed descriptor) comes
        // back as `IoError::Errno`, not a panic.
        let scratch = ScratchDirectory::new("ring-sync");
        let file = std::fs::File::create(scratch.path.join("file")).unwrap();
        let mut io = Io::new().unwrap();
        let token = IoToken { owner: IoOwner::Format, index: 0 };
        let fd = file.as_raw_fd();
        io.submit(Operation::Sync { fd, token, data_only: true });
        io.submit(Operation::Sync { fd, token, data_only: false });
        // Tests run in parallel threads that open files: a closed descriptor's number may be
        // reused at once, so use one far above any in use.
        io.submit(Operation::Sync { fd: 1_000_000, token, data_only: true });
        let mut results = Vec::new();
        while io.in_flight() > 0 {
            io.run(Wait::UntilCompletion);
            while let Some(completed) = io.pop_completed() {
                let Operation::Sync { fd, .. } = completed.operation else { panic!() };
                results.push((fd, completed.result));
            }
        }
        results.sort_by_key(|(fd, _)| *fd);
        assert_eq!(results[0].1, Ok(0));
        assert_eq!(results[1].1, Ok(0));
        assert_eq!(results[2], (1_000_000, Err(IoError::Errno(libc::EBADF))));
    }

    /// Runs the ring until `count` operations have completed; returns them.
    fn complete_count(io: &mut Io, count: usize) -> Vec<Completed> {
        let mut completed = Vec::new();
        while completed.len() < count {
            io.run(Wait::UntilCompletion);
            while let Some(operation) = io.pop_completed() {
                completed.push(operation);
            }
        }
        completed
    }

    #[test]
    fn network_operations_round_trip_over_loopback() {
        // Goal: accept, connect, send (MSG_NOSIGNAL, whole), receive (any bytes) and close all
        // run through the ring, report their results, and are routed as network operations.
        let listener = socket::listen("127.0.0.1:0".parse().unwrap(), 64).unwrap();
        let address = socket::local_address(listener.as_raw_fd()).unwrap();
        let client = socket::stream_socket(&address).unwrap();
        let token = ConnectionToken { index: 3, generation: 9 };
        let mut io = Io::new().unwrap();
        io.submit(Operation::Accept { fd: listener.as_raw_fd() });
        let connect_address = socket::socket_address(&address);
        io.submit(Operation::Connect { fd: client.as_raw_fd(), token, address: connect_address });
        let mut accepted_fd = -1;
        for completed in complete_count(&mut io, 2) {
            assert!(completed.operation.is_network());
            match completed.operation {
                Operation::Accept { .. } => accepted_fd = completed.result.unwrap() as RawFd,
                Operation::Connect { token: returned, .. } => {
                    assert_eq!(returned, token);
                    assert_eq!(completed.result, Ok(0));
                }
                operation => panic!("unexpected {operation:?}"),
            }
        }
        assert!(accepted_fd >= 0);
        let pool = MessagePool::new(2, SECTOR_SIZE);
        let mut buffer = pool.get();
        buffer.buffer_mut_unique()[..100].fill(0x5A);
        let length = 100;
        io.submit(Operation::Send { fd: client.as_raw_fd(), token, buffer, offset: 0, length });
        let buffer = pool.get();
        let length = SECTOR_SIZE - 8;
        io.submit(Operation::Receive { fd: accepted_fd, token, buffer, offset: 8, length });
        let mut received = 0;
        while received < 100 {
            for completed in complete_count(&mut io, 1) {
                match completed.operation {
                    Operation::Send { .. } => assert_eq!(completed.result, Ok(100)),
                    Operation::Receive { buffer, fd, .. } => {
                        let count = completed.result.unwrap();
                        assert!(buffer.buffer()[8..8 + count].iter().all(|byte| *byte == 0x5A));
                        received += count;
                        if received < 100 {
                            let (offset, length) = (8 + received, SECTOR_SIZE - 8 - received);
                            io.submit(Operation::Receive { fd, token, buffer, offset, length });
                        }
                    }
                    operation => panic!("unexpected {operation:?}"),
                }
            }
        }
        io.submit(Operation::Close { fd: accepted_fd, token });
        let completed = complete_count(&mut io, 1);
        assert!(matches!(completed[0].operation, Operation::Close { .. }));
        assert_eq!(completed[0].result, Ok(0));
        assert_eq!(io.operations_free(), IO_OPERATIONS_MAX);
    }

    #[test]
    fn drop_cancels_parked_network_operations() {
        // Goal: dropping the ring with an accept and a receive parked in the kernel (no peer
        // will ever wake them) returns, and the receive's buffer goes back to its pool.
        let listener = socket::listen("127.0.0.1:0".parse().unwrap(), 64).unwrap();
        let address = socket::local_address(listener.as_raw_fd()).unwrap();
        let silent = std::net::TcpStream::connect(address).unwrap();
        let idle_listener = socket::listen("127.0.0.1:0".parse().unwrap(), 64).unwrap();
        let pool = MessagePool::new(1, SECTOR_SIZE);
        let mut io = Io::new().unwrap();
        let token = ConnectionToken { index: 0, generation: 0 };
        let fd = silent.as_raw_fd();
        io.submit(Operation::Receive { fd, token, buffer: pool.get(), offset: 0, length: 64 });
        io.submit(Operation::Accept { fd: idle_listener.as_raw_fd() });
        io.run(Wait::NonBlocking);
        assert_eq!(io.in_flight(), 2);
        let start = Instant::now();
        drop(io);
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(pool.free_count(), 1);
    }
}
