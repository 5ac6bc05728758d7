//! A fixed pool of sector-aligned buffers, allocated once at startup and handed out as
//! reference-counted `Message` handles.
//!
//! A handle is a counted reference to one buffer. Cloning it never allocates; dropping the last
//! handle puts the buffer back on the pool's free list (whose capacity was reserved at init, so
//! that push never allocates either). A buffer can only be written through a handle that is its
//! only reference (`buffer_mut` returns `None` otherwise), which is what makes it safe to give a
//! clone to the disk or the network while the protocol keeps reading its own.
//!
//! # Sizing
//!
//! The replica's pool (`replica_pool`) holds `messages_max_replica()` buffers of
//! `message_size_max` bytes and `messages_small_max_replica(clients_max)` of
//! `MESSAGE_SIZE_SMALL` bytes: only small ones grow with the client sessions.
//! Client connections receive into small buffers (a larger request moves to a full one, up to
//! `CLIENT_RECEIVES_LARGE_MAX` at a time), and every message that is a header or a write's
//! reply is built in one, so that a client connection costs small buffers only. The worst case
//! each set must cover, when every user holds as many messages as its own limit allows:
//!
//! ```text
//! full size:
//!   journal writes in flight                     JOURNAL_IOPS_WRITE_MAX
//! + journal reads in flight (replay, repair)     JOURNAL_IOPS_READ_MAX
//! + uncommitted prepares (a backup keeps up to PIPELINE_BACKUP_MAX, the primary fewer)
//!                                                PIPELINE_BACKUP_MAX
//! + queued client requests larger than a small buffer   REQUEST_QUEUE_LARGE_MAX
//! + client_replies zone chunks read or written   CLIENT_REPLIES_IOS_MAX
//! + event-store reads in flight                  GRID_READS_MAX
//! + messages built and not yet taken by the bus  OUTBOX_LARGE_MAX
//! + per peer replica: a receive buffer and a send queue
//!                                                REPLICAS_MAX * (1 + REPLICA_SEND_QUEUE_MAX)
//! + client connections receiving a large request CLIENT_RECEIVES_LARGE_MAX
//! + large messages (read replies) queued to clients  CLIENT_SENDS_LARGE_MAX
//! + messages received and not yet handled (the bus inbox)   INBOX_LARGE_MAX
//! + one do_view_change per replica               REPLICAS_MAX
//! + state sync: chunk reads served, chunk writes  SYNC_READS_MAX + SYNC_WRITES_MAX
//! + the grid scrubber's chunk reads             GRID_SCRUB_READS_MAX
//! + slack for messages built and sent in one step  MESSAGES_SLACK
//!
//! small:
//!   per connection: a receive buffer and a send queue
//!                          connections_max(clients_max) * (1 + CONNECTION_SEND_QUEUE_MAX)
//! + the larger send queues of peer replicas
//!                        (REPLICAS_MAX - 1) * (REPLICA_SEND_QUEUE_MAX - CONNECTION_SEND_QUEUE_MAX)
//! + the inbox, the request queue and the outbox   inbox_max(clients_max)
//!                              + request_queue_max(clients_max) + outbox_max(clients_max)
//! + slack                                        MESSAGES_SLACK
//! ```
//!
//! An empty pool is therefore a bug in that accounting: `get` asserts.

use std::cell::RefCell;
use std::rc::Rc;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::constants::{
    CLIENT_RECEIVES_LARGE_MAX, CLIENT_REPLIES_IOS_MAX, CLIENT_SENDS_LARGE_MAX,
    CONNECTION_SEND_QUEUE_MAX, GRID_READS_MAX, GRID_SCRUB_READS_MAX, HEADER_SIZE, INBOX_LARGE_MAX,
    JOURNAL_IOPS_READ_MAX, JOURNAL_IOPS_WRITE_MAX, MESSAGE_SIZE_SMALL, MESSAGES_SLACK,
    OUTBOX_LARGE_MAX, PIPELINE_BACKUP_MAX, REPLICA_SEND_QUEUE_MAX, REPLICAS_MAX,
    REQUEST_QUEUE_LARGE_MAX, SECTOR_SIZE, SYNC_READS_MAX, SYNC_WRITES_MAX, connections_max,
    inbox_max, outbox_max, request_queue_max,
};
use crate::vsr::header::Header;

/// A replica's message pool for `clients_max` sessions: both sets of buffers (see the module
/// docs).
pub fn replica_pool(message_size_max: usize, clients_max: usize) -> MessagePool {
    assert!(message_size_max > MESSAGE_SIZE_SMALL);
    MessagePool::with_small(
        messages_max_replica(),
        message_size_max,
        messages_small_max_replica(clients_max),
        MESSAGE_SIZE_SMALL,
    )
}

/// The number of small buffers a replica's message pool holds (see the module docs).
pub const fn messages_small_max_replica(clients_max: usize) -> usize {
    connections_max(clients_max) * (1 + CONNECTION_SEND_QUEUE_MAX)
        + (REPLICAS_MAX - 1) * (REPLICA_SEND_QUEUE_MAX - CONNECTION_SEND_QUEUE_MAX)
        + inbox_max(clients_max)
        + request_queue_max(clients_max)
        + outbox_max(clients_max)
        + MESSAGES_SLACK
}

/// The number of full-size buffers a replica's message pool holds (see the module docs).
pub const fn messages_max_replica() -> usize {
    JOURNAL_IOPS_WRITE_MAX
        + JOURNAL_IOPS_READ_MAX
        + PIPELINE_BACKUP_MAX
        + REQUEST_QUEUE_LARGE_MAX
        + CLIENT_REPLIES_IOS_MAX
        + GRID_READS_MAX
        + OUTBOX_LARGE_MAX
        + REPLICAS_MAX * (1 + REPLICA_SEND_QUEUE_MAX)
        + CLIENT_RECEIVES_LARGE_MAX
        + CLIENT_SENDS_LARGE_MAX
        + INBOX_LARGE_MAX
        + REPLICAS_MAX
        + SYNC_READS_MAX
        + SYNC_WRITES_MAX
        + GRID_SCRUB_READS_MAX
        + MESSAGES_SLACK
}

/// One disk sector: the unit of alignment for every buffer that meets `O_DIRECT`.
#[repr(C, align(4096))]
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct Sector(pub [u8; SECTOR_SIZE]);

static_assertions::assert_eq_size!(Sector, [u8; SECTOR_SIZE]);
static_assertions::const_assert_eq!(std::mem::align_of::<Sector>(), SECTOR_SIZE);

struct Buffer {
    sectors: Box<[Sector]>,
}

struct FreeList {
    buffers: Vec<Rc<Buffer>>,
    size_bytes: usize,
    count: usize,
}

/// A fixed set of equally sized, sector-aligned buffers, and optionally a second set of small
/// ones (`with_small`) for the many messages that are only a header or a little more: client
/// requests and replies, pongs, acknowledgements. A `Message` goes back to the set it came
/// from.
#[derive(Clone)]
pub struct MessagePool {
    free: Rc<RefCell<FreeList>>,
    small: Option<Rc<RefCell<FreeList>>>,
}

impl FreeList {
    fn new(count: usize, size_bytes: usize) -> FreeList {
        assert!(count > 0);
        assert!(size_bytes > 0);
        assert_eq!(size_bytes % SECTOR_SIZE, 0);
        let mut buffers = Vec::with_capacity(count);
        for _ in 0..count {
            let sectors = vec![Sector([0; SECTOR_SIZE]); size_bytes / SECTOR_SIZE];
            let sectors = sectors.into_boxed_slice();
            buffers.push(Rc::new(Buffer { sectors }));
        }
        FreeList { buffers, size_bytes, count }
    }
}

impl MessagePool {
    /// Allocates `count` buffers of `size_bytes` each. This is the only allocation the pool makes.
    pub fn new(count: usize, size_bytes: usize) -> MessagePool {
        MessagePool { free: Rc::new(RefCell::new(FreeList::new(count, size_bytes))), small: None }
    }

    /// Allocates `count` buffers of `size_bytes` each and `small_count` of `small_size_bytes`.
    pub fn with_small(
        count: usize,
        size_bytes: usize,
        small_count: usize,
        small_size_bytes: usize,
    ) -> MessagePool {
        assert!(small_size_bytes < size_bytes);
        let small = FreeList::new(small_count, small_size_bytes);
        MessagePool {
            free: Rc::new(RefCell::new(FreeList::new(count, size_bytes))),
            small: Some(Rc::new(RefCell::new(small))),
        }
    }

    /// Takes a buffer from the pool. Its contents are whatever its last user left: callers
    /// write before they read.
    ///
    /// Panics if the pool is empty: pools are sized for their worst case, so that is a bug.
    pub fn get(&self) -> Message {
        Self::take(&self.free).expect("message pool exhausted")
    }

    /// Takes a buffer if one is free.
    pub fn try_get(&self) -> Option<Message> {
        Self::take(&self.free)
    }

    /// Takes a small buffer (`small_size` bytes; a full-size one if the pool has no small
    /// set). Panics if none is free: the small set is sized for its worst case too.
    pub fn get_small(&self) -> Message {
        self.try_get_small().expect("message pool exhausted (small buffers)")
    }

    /// Takes a small buffer if one is free.
    pub fn try_get_small(&self) -> Option<Message> {
        Self::take(self.small.as_ref().unwrap_or(&self.free))
    }

    fn take(free: &Rc<RefCell<FreeList>>) -> Option<Message> {
        let buffer = free.borrow_mut().buffers.pop()?;
        assert_eq!(Rc::strong_count(&buffer), 1);
        Some(Message { buffer: Some(buffer), pool: free.clone() })
    }

    /// Whether `message`'s buffer is a full-size one (larger than this pool's small ones).
    pub fn is_large(&self, message: &Message) -> bool {
        message.buffer().len() > self.small_size()
    }

    /// Whether the pool has a set of small buffers.
    pub fn has_small(&self) -> bool {
        self.small.is_some()
    }

    /// The size of a small buffer (of a full one if the pool has no small set).
    pub fn small_size(&self) -> usize {
        self.small.as_ref().unwrap_or(&self.free).borrow().size_bytes
    }

    pub fn small_free_count(&self) -> usize {
        self.small.as_ref().unwrap_or(&self.free).borrow().buffers.len()
    }

    pub fn free_count(&self) -> usize {
        self.free.borrow().buffers.len()
    }

    pub fn count(&self) -> usize {
        self.free.borrow().count
    }

    pub fn buffer_size(&self) -> usize {
        self.free.borrow().size_bytes
    }
}

/// A counted reference to one buffer of a `MessagePool`.
pub struct Message {
    buffer: Option<Rc<Buffer>>,
    pool: Rc<RefCell<FreeList>>,
}

impl Clone for Message {
    fn clone(&self) -> Message {
        Message { buffer: self.buffer.clone(), pool: self.pool.clone() }
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        let buffer = self.buffer.take().expect("message buffer present until drop");
        if Rc::strong_count(&buffer) == 1 {
            let mut free = self.pool.borrow_mut();
            assert!(free.buffers.len() < free.count);
            free.buffers.push(buffer);
        }
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Message")
            .field("references", &self.references())
            .field("header", self.header())
            .finish()
    }
}

impl Message {
    fn inner(&self) -> &Buffer {
        self.buffer.as_ref().expect("message buffer present until drop")
    }

    /// The whole buffer.
    pub fn buffer(&self) -> &[u8] {
        self.inner().sectors.as_bytes()
    }

    /// The whole buffer, writable, if this handle is its only reference.
    pub fn buffer_mut(&mut self) -> Option<&mut [u8]> {
        let buffer = self.buffer.as_mut().expect("message buffer present until drop");
        Rc::get_mut(buffer).map(|buffer| buffer.sectors.as_mut_bytes())
    }

    /// The whole buffer, writable. Panics if the handle is shared: a caller that writes owns
    /// the message by construction.
    pub fn buffer_mut_unique(&mut self) -> &mut [u8] {
        self.buffer_mut().expect("message written while shared")
    }

    pub fn references(&self) -> usize {
        Rc::strong_count(self.buffer.as_ref().expect("message buffer present until drop"))
    }

    pub fn header(&self) -> &Header {
        Header::from_prefix(self.buffer()).expect("buffers are sector aligned")
    }

    pub fn header_mut(&mut self) -> &mut Header {
        let bytes = &mut self.buffer_mut_unique()[..HEADER_SIZE];
        Header::mut_from_bytes(bytes).expect("buffers are sector aligned")
    }

    /// The body, as far as the header's `size` says (which must be trusted already).
    pub fn body(&self) -> &[u8] {
        let size = self.header().size as usize;
        assert!(size >= HEADER_SIZE && size <= self.buffer().len());
        &self.buffer()[HEADER_SIZE..size]
    }

    /// Header plus body.
    pub fn bytes(&self) -> &[u8] {
        let size = self.header().size as usize;
        assert!(size >= HEADER_SIZE && size <= self.buffer().len());
        &self.buffer()[..size]
    }

    /// True if both handles reference the same buffer.
    pub fn same_buffer(&self, other: &Message) -> bool {
        Rc::ptr_eq(self.buffer.as_ref().unwrap(), other.buffer.as_ref().unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constants::PIPELINE_PREPARE_QUEUE_MAX;

    #[test]
    fn buffers_are_sector_aligned_and_sized() {
        // Goal: every buffer meets O_DIRECT alignment and has the requested size.
        let pool = MessagePool::new(3, 2 * SECTOR_SIZE);
        let messages = [pool.get(), pool.get(), pool.get()];
        for message in &messages {
            assert_eq!(message.buffer().as_ptr() as usize % SECTOR_SIZE, 0);
            assert_eq!(message.buffer().len(), 2 * SECTOR_SIZE);
        }
        assert_eq!(pool.free_count(), 0);
        assert!(pool.try_get().is_none());
    }

    #[test]
    fn last_reference_returns_buffer_to_pool() {
        // Goal: clones share a buffer, and only the last drop frees it.
        let pool = MessagePool::new(1, SECTOR_SIZE);
        let message = pool.get();
        let clone = message.clone();
        assert_eq!(message.references(), 2);
        assert!(message.same_buffer(&clone));
        drop(message);
        assert_eq!(pool.free_count(), 0);
        drop(clone);
        assert_eq!(pool.free_count(), 1);
    }

    #[test]
    fn shared_buffer_is_read_only() {
        // Goal: a buffer cannot be written while another handle can read it.
        let pool = MessagePool::new(1, SECTOR_SIZE);
        let mut message = pool.get();
        message.buffer_mut_unique()[0] = 7;
        let clone = message.clone();
        assert!(message.buffer_mut().is_none());
        assert_eq!(clone.buffer()[0], 7);
        drop(clone);
        assert!(message.buffer_mut().is_some());
    }

    #[test]
    fn small_buffers_come_from_their_own_set_and_go_back_to_it() {
        // Goal: a pool with a small set hands out small buffers on request, tells them apart, and
        // each buffer returns to the set it came from; without a small set, "small" is full size.
        let pool = MessagePool::with_small(1, 4 * SECTOR_SIZE, 2, SECTOR_SIZE);
        let small = pool.get_small();
        assert_eq!(small.buffer().len(), SECTOR_SIZE);
        assert!(!pool.is_large(&small));
        let large = pool.get();
        assert_eq!(large.buffer().len(), 4 * SECTOR_SIZE);
        assert!(pool.is_large(&large));
        assert_eq!((pool.free_count(), pool.small_free_count()), (0, 1));
        drop(small);
        drop(large);
        assert_eq!((pool.free_count(), pool.small_free_count()), (1, 2));
        let plain = MessagePool::new(1, 2 * SECTOR_SIZE);
        assert_eq!(plain.get_small().buffer().len(), 2 * SECTOR_SIZE);
        assert_eq!(plain.small_size(), 2 * SECTOR_SIZE);
    }

    #[test]
    fn replica_pool_formula_covers_every_user() {
        // Goal: the documented formula stays at least the sum of its named users.
        let users = JOURNAL_IOPS_WRITE_MAX + JOURNAL_IOPS_READ_MAX + PIPELINE_PREPARE_QUEUE_MAX;
        assert!(messages_max_replica() > users + REPLICAS_MAX * REPLICA_SEND_QUEUE_MAX);
        let clients_max = 1024;
        let small_users = crate::constants::connections_max(clients_max)
            * (1 + CONNECTION_SEND_QUEUE_MAX)
            + crate::constants::inbox_max(clients_max);
        assert!(messages_small_max_replica(clients_max) > small_users);
    }
}
